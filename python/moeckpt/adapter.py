"""Drop-ins for NeMo Automodel's ``MiMoV2FlashStateDictAdapter`` and ``DeepSeekV3StateDictAdapter``
backed by the C++ engine: one implementation, the checkpoint family's rules coming from the config."""
from __future__ import annotations

from typing import Any, Optional

import torch

from . import _core
from . import _tensors as T

def should_quantize_key(key: str, compat: str = "automodel") -> bool:
    """Automodel's MiMo ``_should_quantize_key`` (the module-level function of the reference family):
    the keys its ``to_hf`` casts to FP8 (ends in ``.weight``; not a norm, ``lm_head``, embedding,
    router or ``o_proj``; from 0.7 on, not ``visual.``/``audio.``). ``compat`` names the version
    (``"automodel-0.6"``, ``"automodel-0.7"``; ``"automodel"``: 0.7). Another family's rule is its
    adapter's method (``DeepSeekV3StateDictAdapter(cfg).should_quantize_key(key)``)."""
    return _core.should_quantize_key(key, T.compat_name(compat))


def is_published_fp8_key(key: str) -> bool:
    """The keys the default block quantization writes as FP8 for MiMo-V2-Flash (those the published
    checkpoint stores as FP8: q/k/v projections, dense MLP and expert projections); another family's
    set is its adapter's ``is_published_fp8_key``."""
    return _core.is_published_fp8_key(key)


def is_grouped_expert_key(key: str) -> bool:
    """A native grouped-expert tensor's key (the reference family's names)."""
    return _core.is_grouped_expert_key(key)


def _ep_mesh(device_mesh: Any) -> Any:
    names = getattr(device_mesh, "mesh_dim_names", None) or ()
    return device_mesh["ep"] if "ep" in names else device_mesh


def _mesh_rank_size(device_mesh: Any) -> tuple[int, int]:
    ep = _ep_mesh(device_mesh)
    return int(ep.get_local_rank()), int(ep.size())


class MiMoV2FlashStateDictAdapter:
    """Converts MiMo-V2-Flash state dicts between the Hugging Face layout (per-expert weights, FP8
    with 128x128 block ``_scale_inv``) and the grouped-expert native layout of NeMo Automodel, with
    the methods of Automodel's ``MiMoV2FlashStateDictAdapter``.

    Args:
        config: the checkpoint's config.json as a dict, a path (file or folder) or a
            transformers-style config object.
        ep_rank, ep_size: the expert-parallel rank used when no ``device_mesh`` is given.
        dtype: dtype of dequantized weights and grouped experts (``torch.bfloat16`` or ``torch.float32``).
        compat: ``None`` (default: correct fused K/V scales of the full-attention layers, real block
            scales, NaN/bad scales refused), ``"automodel-0.7"``: byte-for-byte NeMo Automodel 0.7.0 (its
            ``to_hf`` honours ``quantization``), ``"automodel-0.6"``: byte-for-byte 0.6.0 (its ``to_hf``
            always casts to FP8 with ones scales, whatever ``quantization`` says), ``"automodel"``: the
            newest (0.7).
        quant: what ``to_hf(..., quantization=True)`` writes in the default mode: ``"block"`` (real
            ``amax / 448`` 128x128 block scales for the tensors the published checkpoint stores as FP8),
            ``"cast"`` (Automodel's raw cast with ones scales) or ``"none"`` (BF16). Compat mode always casts.
        threads: engine worker threads (0: all cores).
        max_memory: bytes of engine task buffers in flight at once.
        attn_backend: the training model's attention backend, as Automodel's ``backend.attn``: with
            ``"te"`` the native sink is ``self_attn.attn_module.softmax_offset`` (F32) instead of
            ``self_attn.attention_sink_bias``.
        checkpoint_tp_size: the TP degree interleaving a MiMo-V2.6 checkpoint's fused ``qkv_proj``
            rows, read by ``from_hf`` and written by ``to_hf(..., quantization=True)``; default: the
            ``metadata.tp_size`` of the index beside the config (a folder path, or the config object's
            ``_name_or_path``, as Automodel reads it), else 1.

    ``quantization=False`` (the reference's default) returns BF16 without scales in both modes.
    ``exclude_key_regex`` is matched at the key's start (``re.match``), as the reference does.
    """

    def __init__(
        self,
        config: Any,
        ep_rank: int = 0,
        ep_size: int = 1,
        dtype: torch.dtype = torch.bfloat16,
        compat: Optional[str] = None,
        quant: str = "block",
        *,
        threads: int = 0,
        max_memory: int = 1 << 30,
        attn_backend: str = "sdpa",
        checkpoint_tp_size: Optional[int] = None,
    ) -> None:
        self._config = T.parse_config(config)
        if self._config.family != self._FAMILY:
            right = adapter_class(self._config.family).__name__
            raise _core.UnsupportedLayoutError(
                f"moeckpt: {type(self).__name__} converts {self._FAMILY} checkpoints, but the config describes "
                f"{self._config.model} (use moeckpt.{right}, or moeckpt.adapter_for(config))")
        self.attn_backend = T.attn_backend(attn_backend)
        if checkpoint_tp_size is None:
            checkpoint_tp_size = T.checkpoint_tp_size(config)
        if isinstance(checkpoint_tp_size, bool) or int(checkpoint_tp_size) < 1:
            raise _core.InvalidArgumentError(f"moeckpt: checkpoint_tp_size {checkpoint_tp_size!r} is not positive")
        self.checkpoint_tp_size = int(checkpoint_tp_size)
        self.config = config
        self.dtype = dtype
        self._dtype_name = T.out_dtype_name(dtype)
        self.compat = compat
        self._compat_name = T.compat_name(compat)
        self._compat = self._compat_name != "none"
        self.quant = T.quant_mode(quant)
        if ep_size < 1 or not 0 <= ep_rank < ep_size:
            raise _core.InvalidArgumentError(f"moeckpt: ep_rank {ep_rank} is not a rank of ep_size {ep_size}")
        self.ep_rank, self.ep_size = int(ep_rank), int(ep_size)
        self.threads, self.max_memory = int(threads), int(max_memory)
        # As the reference: the expert keys' "model." prefix seen by the last from_hf decides the
        # prefix to_hf writes in compat mode.
        self._uses_model_prefix = True

    _FAMILY = "mimo"

    @property
    def n_routed_experts(self) -> int:
        return self._config.n_routed_experts

    def should_quantize_key(self, key: str) -> bool:
        """What Automodel's cast quantizes for this family and ``compat`` version (its
        ``should_quantize_key``; the newest version when ``compat`` is None)."""
        return self._config.should_quantize_key(key, self._compat_name if self._compat else "automodel")

    def is_published_fp8_key(self, key: str) -> bool:
        """Whether the family's published checkpoints store ``key`` as FP8 (what ``to_hf(...,
        quantization=True)`` block-quantizes in the default mode)."""
        return self._config.is_published_fp8_key(key)

    # ------------------------------------------------------------------------------------------ from_hf

    def from_hf(self, hf_state_dict: dict[str, torch.Tensor], device_mesh: Any = None, **kwargs: Any) -> dict[str, Any]:
        """HF state dict -> native state dict of one EP rank.

        Weights with a ``_scale_inv`` are dequantized to ``dtype``, scales dropped, the rank's experts
        grouped into ``...mlp.experts.gate_and_up_projs [n, D, 2*Ie]`` and ``down_projs [n, Ie, D]``.
        With a ``device_mesh`` (its ``"ep"`` dimension, or the mesh itself) rank and size come from
        the mesh and the grouped tensors are DTensors sharded on dim 0. The input is not modified.
        """
        del kwargs
        for key in hf_state_dict:
            target = self._config.grouped_target(key)
            if target is not None:
                self._uses_model_prefix = target[2].startswith("model.")
                break
        if device_mesh is not None:
            rank, size = _mesh_rank_size(device_mesh)
        else:
            rank, size = self.ep_rank, self.ep_size
        keep: list = []
        rows = T.rows(hf_state_dict.items(), keep)
        out = _core.from_hf(rows, self._config, size, rank, self._dtype_name, self._compat_name, self.threads,
                            self.max_memory, attn=self.attn_backend, tp_size=self.checkpoint_tp_size)
        del keep
        result = {name: T.from_engine(dt, shape, raw) for name, dt, shape, raw in out}
        result = self._reference_order(result, list(hf_state_dict), rank, size)
        device = _input_device(hf_state_dict)
        if device is not None and device.type != "cpu":
            result = {k: v.to(device) for k, v in result.items()}
        if device_mesh is not None:
            result = {k: (self._as_dtensor(v, device_mesh, rank, size) if self._config.is_grouped_expert_key(k) else v)
                      for k, v in result.items()}
        return result

    def _reference_order(self, result: dict, input_keys: list[str], rank: int, size: int) -> dict:
        """Automodel's key order: other keys in input order, a grouped tensor where its last part was;
        keys the family renames (MiniMax-M2's router and experts) moved to the end by the rename, in
        input order."""
        first, count = _core.expert_range(self._config.n_routed_experts, size, rank)
        native = [self._config.native_key(k) for k in input_keys]
        order = [i for i, n in enumerate(native) if n is None] + [i for i, n in enumerate(native) if n is not None]
        input_keys = [input_keys[i] for i in order]
        pos = {native[j] or input_keys[i]: i for i, j in enumerate(order)}
        last: dict[str, int] = {}
        for i, k in enumerate(input_keys):
            target = self._config.grouped_target(k)
            if target is not None and first <= target[1] < first + count:
                last[target[0]] = i
        items = list(result.items())
        order = sorted(range(len(items)), key=lambda j: (_key_pos(items[j][0], pos, last), j))
        return {items[j][0]: items[j][1] for j in order}

    def _as_dtensor(self, local: torch.Tensor, device_mesh: Any, rank: int, size: int) -> Any:
        from torch.distributed.tensor import DTensor, Shard

        ep = _ep_mesh(device_mesh)
        if self._compat:  # exactly the reference's create_dtensor_from_local (assumes an even split)
            return DTensor.from_local(local, ep, [Shard(0)])
        # Uneven splits (E % W != 0): give the true global shape.
        n = self._config.n_routed_experts
        shape = torch.Size([n, *local.shape[1:]])
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(local, ep, [Shard(0)], shape=shape, stride=stride)

    # -------------------------------------------------------------------------------------------- to_hf

    def to_hf(
        self,
        state_dict: dict[str, Any],
        exclude_key_regex: Optional[str] = None,
        quantization: bool = False,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Native state dict -> HF state dict (per-expert ``[out, in]`` weights).

        ``quantization=False``: tensors keep their dtype (BF16), no scales (the reference's default).
        ``quantization=True``: compat mode casts as Automodel (ones scales); the default mode writes
        the adapter's ``quant``. ``compat="automodel-0.6"`` casts whatever ``quantization`` says, as
        Automodel 0.6 did. Grouped DTensors sharded on dim 0 (an EP rank's shard) give that
        rank's experts with their global ids.
        """
        del kwargs
        quant, prefix = self._to_hf_mode(quantization)
        keep: list = []
        items, start, require_all = self._native_items(state_dict)
        rows = T.rows(items, keep)
        out = _core.to_hf(rows, self._config, quant, self._compat_name, T.anchored(exclude_key_regex),
                          prefix, start, require_all, self.threads, self.max_memory, attn=self.attn_backend,
                          tp_size=self.checkpoint_tp_size)
        del keep
        return {name: T.from_engine(dt, shape, raw) for name, dt, shape, raw in out}

    def convert_single_tensor_to_hf(self, fqn: str, tensor: Any, **kwargs: Any) -> list[tuple[str, torch.Tensor]]:
        """One native tensor -> its HF ``(key, tensor)`` pairs, each weight followed by its ``_scale_inv``.
        Keyword arguments: ``exclude_key_regex``, ``quantization`` (as in ``to_hf``)."""
        quant, prefix = self._to_hf_mode(bool(kwargs.get("quantization", False)))
        items, start, _ = self._native_items({fqn: tensor})
        keep: list = []
        (row,) = T.rows(items[:1], keep)
        name = row[0]
        out = _core.convert_single_tensor_to_hf(row, self._config, quant, self._compat_name,
                                                T.anchored(kwargs.get("exclude_key_regex")), prefix, start,
                                                attn=self.attn_backend, tp_size=self.checkpoint_tp_size)
        return [(name, T.from_engine(dt, shape, raw)) for name, dt, shape, raw in out]

    def _to_hf_mode(self, quantization: bool) -> tuple[str, Optional[str]]:
        if self._compat:
            # The reference writes expert keys under "model." or "" (as its last from_hf saw), never
            # the grouped key's own prefix.
            # 0.6 ignores `quantization` and always casts; 0.7 casts only when asked.
            cast = quantization or self._compat_name == "automodel-0.6"
            return ("cast" if cast else "none"), ("model." if self._uses_model_prefix else "")
        return (self.quant if quantization else "none"), None

    def _native_items(self, state_dict: dict[str, Any]) -> tuple[list[tuple[str, torch.Tensor]], int, bool]:
        """Plain tensors (DTensor expert shards -> local), the first expert id they hold, and whether
        every expert must be present."""
        n = self._config.n_routed_experts
        # Grouped experts are all DTensor shards or all plain tensors: a mix (a DTensor
        # gate_and_up_projs beside a plain down_projs) has no consistent expert range, and is refused
        # before anything is converted, the same way on every rank.
        grouped = {k: T.is_dtensor(v) for k, v in state_dict.items() if self._config.is_grouped_expert_key(k)}
        if len(set(grouped.values())) > 1:
            dt = next(k for k, d in grouped.items() if d)
            plain = next(k for k, d in grouped.items() if not d)
            raise _core.InvalidArgumentError(f"tensor '{plain}': is a plain tensor while '{dt}' is a DTensor (expected the "
                              "grouped experts all as DTensor shards, or all as plain tensors)")
        items, starts, partial = [], set(), False
        for k, v in state_dict.items():
            if T.is_dtensor(v):
                if self._config.is_grouped_expert_key(k):
                    local, first = _local_expert_shard(v, n)
                    starts.add(first)
                    partial = True
                    items.append((k, local))
                else:
                    items.append((k, v.full_tensor()))
                continue
            if (self._config.is_grouped_expert_key(k) and isinstance(v, torch.Tensor) and v.dim() in (2, 3)
                    and v.shape[0] != n):
                if self._compat:
                    raise ValueError(f"Expected first dimension to be {n}, got {v.shape[0]}")
                first, count = _core.expert_range(n, self.ep_size, self.ep_rank)
                if v.shape[0] != count:
                    raise ValueError(
                        f"moeckpt: {k} holds {v.shape[0]} experts; expected all {n}, or the {count} of EP rank "
                        f"{self.ep_rank}/{self.ep_size} (or a DTensor shard)")
                starts.add(first)
                partial = True
            items.append((k, v))
        if len(starts) > 1:
            raise _core.InvalidArgumentError(f"moeckpt: grouped expert tensors start at different experts {sorted(starts)}")
        start = starts.pop() if starts else 0
        return items, start, not partial


def _key_pos(key: str, pos: dict[str, int], last: dict[str, int]) -> int:
    if key in pos:
        return pos[key]
    return last.get(key, len(pos))


def _input_device(sd: dict) -> Optional[torch.device]:
    for v in sd.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return None


def _local_expert_shard(t: Any, n_experts: int) -> tuple[torch.Tensor, int]:
    """The local experts of a DTensor and the global id of the first (Automodel's
    get_expert_slice_for_rank: Shard(0) over the EP dimension; otherwise all experts)."""
    from torch.distributed.tensor import Shard

    local = t.to_local()
    for i, p in enumerate(t.placements):
        if isinstance(p, Shard) and p.dim == 0:
            mesh = t.device_mesh
            rank, size = int(mesh.get_local_rank(i)), int(mesh.size(i))
            first, count = _core.expert_range(n_experts, size, rank)
            if local.shape[0] != count:
                raise _core.InvalidArgumentError(f"moeckpt: a DTensor shard holds {local.shape[0]} experts, EP rank {rank}/{size} owns {count}")
            return local, first
    return local, 0


class DeepSeekV3StateDictAdapter(MiMoV2FlashStateDictAdapter):
    """The same conversions for DeepSeek-V3-format checkpoints (DeepSeek-V3, V3.1, R1; Kimi-K2, whose
    config's ``model_type`` is ``kimi_k2``), with the methods of Automodel's ``DeepSeekV3StateDictAdapter``
    (shared by its Kimi-K2 model): ``from_hf`` dequantizes every weight with a ``weight_scale_inv`` and
    groups the routed experts of every MoE layer, the MTP layer's too; ``to_hf`` splits them back;
    ``to_hf(..., quantization=True)`` writes real 128x128 block scales for the tensors the published
    checkpoints store as FP8 (attention, dense MLP, shared and routed experts), or, with
    ``compat="automodel"``, Automodel's cast (every ``.weight`` but norms, embeddings, ``lm_head`` and
    the router, with scales of ones). Arguments as :class:`MiMoV2FlashStateDictAdapter`
    (``attn_backend`` and ``checkpoint_tp_size`` do not apply to this family).
    """

    _FAMILY = "deepseek"


class Qwen3MoeStateDictAdapter(MiMoV2FlashStateDictAdapter):
    """The same conversions for Qwen3-MoE checkpoints (``model_type`` ``qwen3_moe``: Qwen3-30B-A3B,
    Qwen3-235B-A22B, Qwen3-Coder-480B and their FP8 releases), with the methods of Automodel's
    ``Qwen3MoeStateDictAdapter``: ``from_hf`` groups the routed experts (dequantizing an FP8 release
    with its 128x128 ``weight_scale_inv``); ``to_hf`` splits them back and, with
    ``quantization=True``, writes what the checkpoint was: BF16 for a BF16 release, block FP8 with
    real scales for an FP8 one (its config's ``quantization_config``). ``compat="automodel"`` is
    Automodel 0.7.0 byte for byte; it refuses FP8 input (that adapter drops the scales and keeps the
    codes) and never casts (it ignores ``quantization``). Arguments as
    :class:`MiMoV2FlashStateDictAdapter` (``attn_backend`` and ``checkpoint_tp_size`` do not apply).
    """

    _FAMILY = "qwen3_moe"


class Glm4MoeStateDictAdapter(MiMoV2FlashStateDictAdapter):
    """The same conversions for GLM-4.5 checkpoints (``model_type`` ``glm4_moe``: GLM-4.5,
    GLM-4.5-Air, GLM-4.6), with the methods of Automodel's ``Glm4MoeStateDictAdapter``: the routed
    experts of every MoE layer are grouped, the MTP layer's (``layers.<num_hidden_layers>``) too,
    shared experts, the F32 router bias and everything else keep their names. Precision and compat
    as :class:`Qwen3MoeStateDictAdapter`.
    """

    _FAMILY = "glm4_moe"


class MiniMaxM2StateDictAdapter(MiMoV2FlashStateDictAdapter):
    """The same conversions for MiniMax-M2 checkpoints (``model_type`` ``minimax_m2``: MiniMax-M2,
    M2.1), with the methods of Automodel's ``MiniMaxM2StateDictAdapter``: ``from_hf`` dequantizes every
    FP8 weight with its 128x128 ``weight_scale_inv``, renames ``block_sparse_moe.gate`` and its
    ``e_score_correction_bias`` to ``mlp.gate`` and groups the experts (``block_sparse_moe.experts.E.w1 /
    w3 / w2``: gate / up / down); ``to_hf`` renames and splits them back and, with ``quantization=True``,
    writes real block scales for q/k/v/o and the experts (as published), or, with ``compat="automodel"``,
    Automodel's cast (every ``.weight`` but norms, embeddings, ``lm_head`` and the router, ``o_proj``
    included, with scales of ones). Arguments as :class:`MiMoV2FlashStateDictAdapter`.
    """

    _FAMILY = "minimax_m2"


class GPTOSSStateDictAdapter(MiMoV2FlashStateDictAdapter):
    """The same conversions for gpt-oss checkpoints (``model_type`` ``gpt_oss``: gpt-oss-20b,
    gpt-oss-120b), with the methods of Automodel's ``GPTOSSStateDictAdapter``: ``from_hf`` decodes the
    MXFP4 experts (``mlp.experts.gate_up_proj_blocks`` / ``_scales``, ``down_proj_blocks`` / ``_scales``)
    into ``gate_and_up_projs [n, hidden, 2*I]`` (gate and up rows still interleaved, as published)
    and ``down_projs [n, I, hidden]``, keeps the expert biases (the rank's rows), renames
    ``mlp.router`` to ``mlp.gate`` and, with ``attn_backend="te"``, ``self_attn.sinks`` to
    ``self_attn.attn_module.softmax_offset``; an EP rank reads only its experts' bytes. ``to_hf``
    renames back; ``quantization=True`` writes real MXFP4 (an E8M0 scale per 32 inputs, E2M1 codes)
    as published, where Automodel writes all-ones placeholders (``compat="automodel"`` refuses it).
    ``compat="automodel"`` is Automodel 0.7.0's ``from_hf`` byte for byte (E8M0 255 decoded as
    2^128, as its ``torch.ldexp`` does; the result sliced to the rank). Arguments as
    :class:`MiMoV2FlashStateDictAdapter` (``checkpoint_tp_size`` does not apply).
    """

    _FAMILY = "gpt_oss"
    _STACKED = {"gate_up_proj": "gate_and_up_projs", "down_proj": "down_projs"}

    def _stacked_target(self, key: str) -> Optional[str]:
        """The grouped tensor an MXFP4 ``_blocks``/``_scales`` key decodes into."""
        base, _, part = key.rpartition("_")
        head, _, leaf = base.rpartition(".")
        if part not in ("blocks", "scales") or leaf not in self._STACKED or not head.endswith("mlp.experts"):
            return None
        return f"{head}.{self._STACKED[leaf]}"

    def _renamed(self, key: str) -> Optional[str]:
        """The native name of a key Automodel renames (None: kept)."""
        native = self._config.native_key(key)
        if native is None and self.attn_backend == "te" and key.endswith("self_attn.sinks"):
            native = key[: -len("sinks")] + "attn_module.softmax_offset"
        return native

    def _reference_order(self, result: dict, input_keys: list[str], rank: int, size: int) -> dict:
        """Automodel's key order: the keys it keeps in input order, then those it renames (the router,
        TE sinks) in input order, then the decoded experts in the order their blocks/scales came."""
        del rank, size
        kept = [k for k in input_keys if self._stacked_target(k) is None]
        order = [k for k in kept if self._renamed(k) is None and k in result]
        order += [n for k in kept if (n := self._renamed(k)) is not None and n in result]
        for k in input_keys:
            target = self._stacked_target(k)
            if target is not None and target in result and target not in order:
                order.append(target)
        seen = set(order)
        order += [k for k in result if k not in seen]
        return {k: result[k] for k in order}


_ADAPTERS = {
    "mimo": MiMoV2FlashStateDictAdapter,
    "deepseek": DeepSeekV3StateDictAdapter,
    "qwen3_moe": Qwen3MoeStateDictAdapter,
    "glm4_moe": Glm4MoeStateDictAdapter,
    "minimax_m2": MiniMaxM2StateDictAdapter,
    "gpt_oss": GPTOSSStateDictAdapter,
}


def adapter_class(family: str) -> type:
    return _ADAPTERS[family]


def adapter_for(config: Any, **kwargs: Any) -> MiMoV2FlashStateDictAdapter:
    """The adapter of the checkpoint family ``config`` describes (by its ``model_type``), built with
    ``kwargs`` (the adapter's arguments)."""
    return adapter_class(T.parse_config(config).family)(config, **kwargs)
