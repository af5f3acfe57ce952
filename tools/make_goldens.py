#!/usr/bin/env python3
"""Generate golden outputs from the reference oracle (NeMo Automodel's MiMoV2FlashStateDictAdapter).

Runs inside the oracle venv (tools/setup_oracle.sh):

    .venv-oracle/bin/python tools/make_goldens.py HF_DIR OUT_DIR [--ep SIZE ...] [--ep-mode fakepg|mock]

Writes into OUT_DIR:
  from_hf_ep1_rank0.safetensors          from_hf(all tensors), no device mesh
  from_hf_ep{W}_rank{r}.safetensors      from_hf with an EP mesh of size W, rank r (every r, every --ep W)
  to_hf.safetensors                      to_hf(EP1 native, quantization=True)   (FP8 raw cast + ones scales)
  to_hf_noquant.safetensors              to_hf(EP1 native) with Automodel's default quantization=False: BF16 in 0.7,
                                         FP8 + ones scales (same as to_hf) in 0.6, which ignores the flag
  to_hf_special_input.safetensors        native EP1 state dict with special BF16 values planted
                                         (--special-input targets: only the tensors that got them)
  to_hf_special.safetensors              to_hf(special input, quantization=True)
  to_hf_ep{W}_rank{r}.safetensors        (--ep-mode fakepg only) to_hf(rank's DTensor shard, quantization=True);
                                         when W does not divide n_experts Automodel raises: recorded in GOLDENS.json
  to_hf_exclude.json                     sorted key lists of to_hf with exclude_key_regex, labelled by the argument
                                         passed ("quantization=True" / "quantization=False"; 0.6 quantizes both)
  GOLDENS.json                           versions (nemo_automodel), quantization_honoured (does to_hf(sd) with the
                                         default quantization=False differ from quantization=True: True from 0.7,
                                         False in 0.6.x), command, CPU capability, special-value positions, notes

Only for small fixtures: everything is held in memory, and from_hf dequantizes every expert on every EP rank
(as Automodel does).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
from importlib.metadata import version as pkg_version

import torch
import safetensors
import safetensors.torch
from safetensors import safe_open

from nemo_automodel.components.models.common import BackendConfig
from nemo_automodel.components.models.mimo_v2_flash.config import MiMoV2FlashConfig
from nemo_automodel.components.models.mimo_v2_flash.state_dict_adapter import MiMoV2FlashStateDictAdapter
from nemo_automodel.components.moe import state_dict_mixin as _mixin
from nemo_automodel.components.moe.config import MoEConfig
from nemo_automodel.shared.utils import dtype_from_str as get_dtype

# ----------------------------------------------------------------------------------------------------------------
# Loading and adapter construction
# ----------------------------------------------------------------------------------------------------------------


def load_hf_dir(hf_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint folder, keys sorted (deterministic input order for from_hf)."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        files = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))
    if not files:
        raise SystemExit(f"no safetensors files in {hf_dir}")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(os.path.join(hf_dir, name), framework="pt") as f:
            for k in f.keys():
                if k in out:
                    raise SystemExit(f"duplicate tensor {k} in {name}")
                out[k] = f.get_tensor(k)
    return dict(sorted(out.items()))


def make_adapter(config_json: dict, attn: str = "sdpa") -> MiMoV2FlashStateDictAdapter:
    """Construct the adapter exactly as MiMoV2FlashForCausalLM.__init__ / MiMoV2FlashModel.__init__ do."""
    cfg = dict(config_json)
    cfg.pop("quantization_config", None)  # not read by the adapter; keeps PretrainedConfig quiet
    config = MiMoV2FlashConfig(**cfg)
    moe_config = MoEConfig(
        dim=config.hidden_size,
        inter_dim=config.intermediate_size,
        moe_inter_dim=config.moe_intermediate_size,
        n_routed_experts=int(config.n_routed_experts or 0),
        n_shared_experts=int(config.n_shared_experts or 0),
        n_activated_experts=config.num_experts_per_tok,
        n_expert_groups=config.n_group,
        n_limited_groups=config.topk_group,
        train_gate=True,
        gate_bias_update_factor=0.0,
        score_func="sigmoid_with_bias" if config.scoring_func == "sigmoid" else config.scoring_func,
        route_scale=config.routed_scaling_factor,
        aux_loss_coeff=0.0,
        norm_topk_prob=config.norm_topk_prob,
        router_bias=False,
        expert_bias=False,
        expert_activation="swiglu",
        apply_router_weight_after_down=getattr(config, "apply_router_weight_after_down", False),  # absent in 0.6.0
        softmax_before_topk=False,
        force_e_score_correction_bias=True,
        dtype=get_dtype(config.torch_dtype, torch.bfloat16),
    )
    # attn="sdpa" (the CPU default): with attn="te" the adapter renames attention_sink_bias -> attn_module.softmax_offset
    backend = BackendConfig(attn=attn, experts="torch", dispatcher="torch", linear="torch")
    return MiMoV2FlashStateDictAdapter(config, moe_config, backend, dtype=get_dtype(config.torch_dtype, torch.bfloat16))


# ----------------------------------------------------------------------------------------------------------------
# Expert parallelism without a real distributed job
# ----------------------------------------------------------------------------------------------------------------


class MockEPMesh:
    """Duck-typed stand-in for a 1-D DeviceMesh named ("ep",): all the mixin reads is
    mesh_dim_names, mesh["ep"], size(), get_local_rank(), get_rank()."""

    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank
        self.mesh_dim_names = ("ep",)

    def __getitem__(self, dims):
        return self

    def size(self, dim=None):
        return self._size

    def get_local_rank(self, mesh_dim=None):
        return self._rank

    def get_rank(self):
        return self._rank


class EPContext:
    """`with EPContext(W, r, mode) as mesh:` gives a mesh for from_hf(device_mesh=mesh).

    fakepg: torch's single-process "fake" process group + a real init_device_mesh("cpu", (W,), ("ep",)); the grouped
            expert tensors come back as DTensors (Shard(0)); .to_local() is the rank's data. Exercises the real code.
    mock:   MockEPMesh and create_dtensor_from_local patched to return the local tensor.
    """

    def __init__(self, size: int, rank: int, mode: str):
        self.size, self.rank, self.mode = size, rank, mode
        self._saved = None

    def __enter__(self):
        if self.mode == "mock":
            self._saved = _mixin.create_dtensor_from_local
            _mixin.create_dtensor_from_local = lambda t, mesh, rank=None: t
            return MockEPMesh(self.size, self.rank)
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=self.rank, world_size=self.size)
        return init_device_mesh("cpu", (self.size,), mesh_dim_names=("ep",))

    def __exit__(self, *exc):
        if self.mode == "mock":
            _mixin.create_dtensor_from_local = self._saved
        else:
            import torch.distributed as dist

            dist.destroy_process_group()
        return False


def to_plain(sd: dict) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if hasattr(v, "to_local"):
            v = v.to_local()
        out[k] = v.detach().contiguous()
    return out


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def save(sd: dict[str, torch.Tensor], path: str) -> None:
    safetensors.torch.save_file(to_plain(sd), path, metadata={"format": "pt"})


def from_hf(adapter, hf_sd, mesh=None) -> dict:
    # from_hf mutates (pops from) its input: give it a shallow copy each time.
    return adapter.from_hf(dict(hf_sd), device_mesh=mesh)


# ----------------------------------------------------------------------------------------------------------------
# Special values for to_hf (FP8 cast behaviour)
# ----------------------------------------------------------------------------------------------------------------

_BASE_SPECIALS = (
    [float(v) for v in range(447, 467)]
    + [480.0, math.inf, -math.inf, 2.0**-10, 1.5 * 2.0**-10, -(2.0**-10), -0.0, math.nan]
)
BF16_QNAN, BF16_NEG_QNAN = 0x7FC0, 0xFFC0  # NaNs are planted by bit pattern (a float->bf16 cast of NaN is CPU-dependent)


def special_bits() -> list[int]:
    """BF16 bit patterns: the base list, then the negation of each entry (NaN -> 0xFFC0, -0.0 -> +0.0)."""
    bits = []
    for sign in (1.0, -1.0):
        for v in _BASE_SPECIALS:
            if math.isnan(v):
                bits.append(BF16_QNAN if sign > 0 else BF16_NEG_QNAN)
            else:
                b = torch.tensor([sign * v], dtype=torch.float32).to(torch.bfloat16).view(torch.int16).item()
                bits.append(b & 0xFFFF)
    return bits


def special_targets(native: dict[str, torch.Tensor], cfg: dict) -> list[str]:
    """Tensors that get the special values: expert grouped tensors, quantized non-expert weights, a padded k_proj,
    an MTP weight and a non-quantized BF16 weight (o_proj), whichever exist."""
    want = []
    moe_layers = [k for k in native if k.endswith(".mlp.experts.gate_and_up_projs")]
    down = [k for k in native if k.endswith(".mlp.experts.down_projs")]
    want += moe_layers[:1] + down[-1:]
    for suffix in (".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.o_proj.weight"):
        want += [k for k in native if k.endswith(suffix) and ".mtp." not in k][:1]
    full_k_rows = int(cfg["num_key_value_heads"]) * int(cfg["head_dim"])
    want += [k for k in native if k.endswith(".self_attn.k_proj.weight") and native[k].shape[0] == full_k_rows][:1]
    want += [k for k in native if ".mtp." in k and k.endswith(".eh_proj.weight")][:1]
    want += [k for k in native if k.endswith(".mlp.down_proj.weight") and ".mtp." not in k][:1]
    seen, out = set(), []
    for k in want:
        if k not in seen and native[k].dtype == torch.bfloat16:
            seen.add(k)
            out.append(k)
    return out


def plant_specials(native: dict[str, torch.Tensor], targets: list[str]) -> tuple[dict, dict]:
    bits = special_bits()
    planted = {k: v for k, v in native.items()}
    where = {}
    for k in targets:
        t = native[k].detach().clone().contiguous()
        flat = t.view(-1).view(torch.int16)
        n = flat.numel()
        # Fixed, spread-out flat positions (distinct blocks where the tensor is large enough).
        idx = [(i * 997 + 5) % n for i in range(len(bits))]
        if len(set(idx)) != len(idx):
            idx = list(range(len(bits)))
        for i, b in zip(idx, bits):
            flat[i] = b - 0x10000 if b >= 0x8000 else b
        planted[k] = t
        where[k] = {"shape": list(t.shape), "flat_index": idx}
    return planted, {"bf16_bits": [f"0x{b:04X}" for b in bits], "tensors": where}


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--ep", type=int, action="append", default=[], help="EP size (repeatable); EP 1 is always done")
    ap.add_argument("--ep-mode", choices=("fakepg", "mock"), default="fakepg")
    ap.add_argument("--attn", choices=("sdpa", "te"), default="sdpa",
                    help="the backend's attention (te: the sink is named attn_module.softmax_offset, F32)")
    ap.add_argument("--check-mock", action="store_true", help="also run every EP rank in mock mode and compare")
    ap.add_argument("--special-input", choices=("all", "targets"), default="all",
                    help="to_hf_special input: the whole native state dict (default) or only the planted tensors "
                         "(to_hf is per tensor, so the planted tensors' outputs are the same; keeps committed data small)")
    ap.add_argument("--special-targets", default=None,
                    help="comma-separated native keys to plant the special values in (default: chosen automatically)")
    args = ap.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.hf_dir, "config.json"), encoding="utf-8") as f:
        cfg_json = json.load(f)
    hf = load_hf_dir(args.hf_dir)
    adapter = make_adapter(cfg_json, args.attn)
    n_experts = adapter.moe_config.n_routed_experts
    record: dict = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "nemo_automodel": pkg_version("nemo-automodel"),
        "quantization_honoured": None,  # set after the to_hf calls below
        "transformers": pkg_version("transformers"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "hf_dir": os.path.abspath(args.hf_dir),
        "hf_tensor_count": len(hf),
        "ep_mode": args.ep_mode,
        "files": {},
    }

    # ---- from_hf, EP 1 (no mesh) -------------------------------------------------------------------------------
    native = from_hf(adapter, hf)
    native = to_plain(native)
    save(native, os.path.join(args.out_dir, "from_hf_ep1_rank0.safetensors"))
    record["files"]["from_hf_ep1_rank0.safetensors"] = {"keys": len(native), "order": list(native)}

    # ---- from_hf, EP W ranks ---------------------------------------------------------------------------------------
    for W in sorted(set(w for w in args.ep if w > 1)):
        for r in range(W):
            with EPContext(W, r, args.ep_mode) as mesh:
                raw = from_hf(adapter, hf, mesh)
                sd = to_plain(raw)
                record["files"][f"from_hf_ep{W}_rank{r}.safetensors"] = {}
                if args.ep_mode == "fakepg":
                    # to_hf of the rank's native shard (grouped tensors are Shard(0) DTensors here, so Automodel
                    # offsets the expert ids). DTensor.from_local assumes an even split, so uneven W raises.
                    tname = f"to_hf_ep{W}_rank{r}.safetensors"
                    try:
                        th = adapter.to_hf(raw, quantization=True)
                        save(th, os.path.join(args.out_dir, tname))
                        record["files"][tname] = {"call": "to_hf(from_hf(ep mesh), quantization=True)", "order": list(th)}
                    except Exception as exc:  # noqa: BLE001 - recorded as the oracle's behaviour
                        record["files"][tname] = {"error": f"{type(exc).__name__}: {exc}"}
            if args.check_mock and args.ep_mode != "mock":
                with EPContext(W, r, "mock") as mesh:
                    sd2 = to_plain(from_hf(adapter, hf, mesh))
                assert list(sd) == list(sd2), f"EP{W} rank {r}: key order differs between fakepg and mock"
                for k in sd:
                    assert sd[k].dtype == sd2[k].dtype and torch.equal(_bytes(sd[k]), _bytes(sd2[k])), k
            name = f"from_hf_ep{W}_rank{r}.safetensors"
            save(sd, os.path.join(args.out_dir, name))
            q, rem = divmod(n_experts, W)
            start = r * (q + 1) if r < rem else r * q + rem
            record["files"][name].update(keys=len(sd), experts=[start, start + q + (r < rem)], order=list(sd))

    # ---- to_hf of EP1 native --------------------------------------------------------------------------------------
    hf_q = adapter.to_hf(dict(native), quantization=True)
    save(hf_q, os.path.join(args.out_dir, "to_hf.safetensors"))
    record["files"]["to_hf.safetensors"] = {"call": "to_hf(native_ep1, quantization=True)", "order": list(hf_q)}
    hf_nq = adapter.to_hf(dict(native))
    save(hf_nq, os.path.join(args.out_dir, "to_hf_noquant.safetensors"))
    record["files"]["to_hf_noquant.safetensors"] = {
        "call": "to_hf(native_ep1) with Automodel's default quantization=False: BF16 in 0.7, "
                "FP8 in 0.6 which ignores the flag",
        "order": list(hf_nq),
    }
    # Observed, not inferred from the version: 0.6.x always quantizes (to_hf's docstring says the flag is ignored).
    record["quantization_honoured"] = list(hf_nq) != list(hf_q) or any(
        hf_nq[k].dtype != hf_q[k].dtype for k in hf_q)

    # ---- to_hf of special values ----------------------------------------------------------------------------------
    if args.special_targets:
        targets = [k for k in args.special_targets.split(",") if k]
        for k in targets:
            if k not in native or native[k].dtype != torch.bfloat16:
                raise SystemExit(f"--special-targets: {k} is not a BF16 tensor of the native state dict")
    else:
        targets = special_targets(native, cfg_json)
    planted, where = plant_specials(native, targets)
    if args.special_input == "targets":
        planted = {k: planted[k] for k in targets}
    where["input"] = args.special_input
    save(planted, os.path.join(args.out_dir, "to_hf_special_input.safetensors"))
    hf_s = adapter.to_hf(dict(planted), quantization=True)
    save(hf_s, os.path.join(args.out_dir, "to_hf_special.safetensors"))
    record["files"]["to_hf_special_input.safetensors"] = {"keys": len(planted), "order": list(planted)}
    record["files"]["to_hf_special.safetensors"] = {"call": "to_hf(to_hf_special_input, quantization=True)",
                                                    "order": list(hf_s)}
    record["special_values"] = where

    # ---- exclude_key_regex ----------------------------------------------------------------------------------------
    excl = {}
    for rx in (r"model\.layers\.1\..*", r"lm_head"):
        excl[rx] = {
            "quantization=True": sorted(adapter.to_hf(dict(native), exclude_key_regex=rx, quantization=True)),
            "quantization=False": sorted(adapter.to_hf(dict(native), exclude_key_regex=rx)),
        }
    with open(os.path.join(args.out_dir, "to_hf_exclude.json"), "w", encoding="utf-8") as f:
        json.dump(excl, f, indent=1)
        f.write("\n")

    with open(os.path.join(args.out_dir, "GOLDENS.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote goldens to {args.out_dir}: torch {torch.__version__}, nemo-automodel {record['nemo_automodel']}, "
          f"cpu {record['cpu_capability']}, {len(native)} native keys, {len(hf_q)} to_hf keys, "
          f"quantization honoured: {record['quantization_honoured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
