#!/usr/bin/env python3
"""Golden outputs of NeMo Automodel 0.7.0's state dict adapters for the plain Hugging Face MoE families, in the same
files and JSON as tools/make_goldens.py (whose main does the work; only the adapter differs):

    qwen3_moe   Qwen3MoeStateDictAdapter   (Qwen3-30B-A3B, Qwen3-235B-A22B, ...)
    glm4_moe    Glm4MoeStateDictAdapter    (GLM-4.5, GLM-4.5-Air, GLM-4.6, ...)
    minimax_m2  MiniMaxM2StateDictAdapter  (MiniMax-M2, MiniMax-M2.1)
    gpt_oss     GPTOSSStateDictAdapter     (gpt-oss-20b, gpt-oss-120b)

    python tools/make_hf_moe_goldens.py HF_DIR OUT_DIR [--family F] [make_goldens options: --ep W ... --special-input targets]

--family defaults to config.json's model_type. The adapter is the one the family's Automodel model class
(Qwen3MoeForCausalLM / Glm4MoeForCausalLM / MiniMaxM2ForCausalLM) builds for itself: the model is built on the meta
device with the CPU/torch backend from the transformers config class of the family; its state_dict_adapter gets the
model's MoEConfig and dtype = the config's torch_dtype (bf16 when absent). Qwen3MoeModel and Glm4MoeModel call
torch.cuda.current_device() in __init__ (for the rotary cache's device only), so without CUDA that call answers 0 while
the model is built.

What the adapters do with make_goldens' calls: Qwen3 and GLM ignore `quantization` (to_hf.safetensors equals
to_hf_noquant.safetensors, quantization_honoured is false) and read no FP8; MiniMax-M2 dequantizes FP8 weights with
their 128x128 weight_scale_inv blocks in from_hf, and to_hf(quantization=True) casts every weight but norms, gate,
embeddings and lm_head to FP8 with all-ones scales. gpt-oss decodes the MXFP4 experts in from_hf and ignores the
device mesh (the EP slice comes later, from DCP's load into the rank's DTensor shards): its from_hf_ep<W>_rank<r>
goldens are its whole result with every expert-axis tensor (gate_and_up_projs, down_projs, the expert biases) sliced
to the rank's experts, as that load does; its to_hf(quantization=True) writes all-ones MXFP4 placeholders (recorded,
and refused by moeckpt's compat mode). Its model is built with attention "flex" where "sdpa" is asked (the only
backend other than TE that holds sinks; the adapter tells only TE apart).

The special BF16 values are planted into the first MoE layer's grouped gate_and_up_projs, its q_proj and o_proj, the
first dense layer's mlp.down_proj (Qwen3 mlp_only_layers / decoder_sparse_step, GLM first_k_dense_replace) and, for
GLM, the first MoE layer's shared_experts.gate_proj. Then tools/digest_goldens.py OUT_DIR tests/data/goldens/<name>.json
condenses it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402

from nemo_automodel.components.models.common import BackendConfig  # noqa: E402

# family -> (transformers config class, Automodel model module, model class)
FAMILIES = {
    "qwen3_moe": ("Qwen3MoeConfig", "nemo_automodel.components.models.qwen3_moe.model", "Qwen3MoeForCausalLM"),
    "glm4_moe": ("Glm4MoeConfig", "nemo_automodel.components.models.glm4_moe.model", "Glm4MoeForCausalLM"),
    "minimax_m2": ("MiniMaxM2Config", "nemo_automodel.components.models.minimax_m2.model", "MiniMaxM2ForCausalLM"),
    "gpt_oss": ("GptOssConfig", "nemo_automodel.components.models.gpt_oss.model", "GptOssForCausalLM"),
}

# gpt-oss's tensors split along the expert axis by an EP rank's DTensor shards.
_GPT_OSS_EXPERT_AXIS = ("mlp.experts.gate_and_up_projs", "mlp.experts.down_projs", "mlp.experts.gate_up_proj_bias",
                        "mlp.experts.down_proj_bias")


def family_of(config_json: dict, family: str | None = None) -> str:
    fam = family or config_json.get("model_type")
    if fam not in FAMILIES:
        raise SystemExit(f"unknown family {fam!r} (config model_type {config_json.get('model_type')!r}); "
                         f"use --family {'|'.join(FAMILIES)}")
    if config_json.get("model_type") not in (None, fam):
        print(f"warning: config.json model_type is {config_json.get('model_type')!r}, building {fam}", file=sys.stderr)
    return fam


@contextlib.contextmanager
def _current_device_without_cuda():
    """Qwen3MoeModel / Glm4MoeModel.__init__ build their RotaryEmbedding with
    device=torch.device(f"cuda:{torch.cuda.current_device()}"), which raises without a CUDA driver. The device is only
    used by the rotary cache at forward time; let the call answer 0 while the model is built."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0
    try:
        yield
    finally:
        torch.cuda.current_device = saved


def make_config(config_json: dict, family: str | None = None):
    """The family's transformers config, from config.json's fields (as AutoConfig.from_pretrained would)."""
    import transformers

    fam = family_of(config_json, family)
    cfg = dict(config_json)
    cfg.pop("quantization_config", None)  # not read by the adapter or the model
    cfg.pop("model_type", None)
    return getattr(transformers, FAMILIES[fam][0])(**cfg)


def build_model(config_json: dict, family: str | None = None, attn: str = "sdpa", device: str = "meta"):
    """The family's Automodel model (ModelClass.from_config(config, backend=...)) on `device` with the CPU backend
    (no TE, no grouped_gemm, no DeepEP). Off the meta device and without CUDA, the rotary cache is moved to `device`
    so that a forward runs."""
    fam = family_of(config_json, family)
    _, module, cls_name = FAMILIES[fam]
    model_cls = getattr(importlib.import_module(module), cls_name)
    if fam == "gpt_oss" and attn == "sdpa":
        attn = "flex"
    backend = BackendConfig(attn=attn, experts="torch", dispatcher="torch", linear="torch", rms_norm="torch",
                            enable_hf_state_dict_adapter=True)
    config = make_config(config_json, fam)
    with _current_device_without_cuda(), torch.device(device):
        model = model_cls.from_config(config, backend=backend)
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if device != "meta" and rotary is not None and getattr(rotary, "device", None) is not None:
        if rotary.device.type == "cuda" and not torch.cuda.is_available():
            rotary.device = torch.device(device)
    return model


def make_adapter(config_json: dict, attn: str = "sdpa", family: str | None = None):
    gpt_oss = family_of(config_json, family) == "gpt_oss"
    # gpt-oss under TE: its attention needs TE >= 2.8 to be built; the adapter (which only reads
    # backend.attn) is made with the TE backend beside a model built with flex attention.
    adapter = build_model(config_json, family, "flex" if gpt_oss and attn == "te" else attn).state_dict_adapter
    if gpt_oss and attn == "te":
        te = BackendConfig(attn="te", experts="torch", dispatcher="torch", linear="torch", rms_norm="torch",
                           enable_hf_state_dict_adapter=True)
        adapter = type(adapter)(adapter.config, adapter.moe_config, te, adapter.dtype)
    if gpt_oss:
        whole = adapter.from_hf

        def from_hf_sliced(hf_state_dict, device_mesh=None, **kwargs):
            """Its from_hf, then (under a mesh) each expert-axis tensor's rows of the rank (even split first)."""
            out = whole(hf_state_dict, device_mesh=device_mesh, **kwargs)
            if device_mesh is None:
                return out
            names = getattr(device_mesh, "mesh_dim_names", None) or ()
            ep = device_mesh["ep"] if "ep" in names else device_mesh
            rank, size = int(ep.get_local_rank()), int(ep.size())
            q, rem = divmod(adapter.moe_config.n_routed_experts, size)
            start = rank * (q + 1) if rank < rem else rank * q + rem
            end = start + q + (rank < rem)
            return {k: (v[start:end].contiguous() if k.endswith(_GPT_OSS_EXPERT_AXIS) else v) for k, v in out.items()}

        adapter.from_hf = from_hf_sliced
    return adapter


def special_targets(hf_dir: str, family: str | None = None) -> str:
    """Native keys to plant the special values in, from the layer types of the model the config builds."""
    from nemo_automodel.components.moe.layers import MoE

    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    fam = family_of(cfg, family)
    layers = build_model(cfg, fam).model.layers
    moe = [int(i) for i, layer in layers.items() if isinstance(layer.mlp, MoE)]
    dense = [int(i) for i, layer in layers.items() if not isinstance(layer.mlp, MoE)]
    if not moe:
        raise SystemExit(f"{hf_dir}: the config builds no MoE layer")
    first = min(moe)
    out = [f"model.layers.{first}.mlp.experts.gate_and_up_projs",
           f"model.layers.{first}.self_attn.q_proj.weight",
           f"model.layers.{first}.self_attn.o_proj.weight"]
    if dense:
        out.append(f"model.layers.{min(dense)}.mlp.down_proj.weight")
    if fam == "glm4_moe" and layers[str(first)].mlp.shared_experts is not None:
        out.append(f"model.layers.{first}.mlp.shared_experts.gate_proj.weight")
    return ",".join(out)


def _strip_family(argv: list[str]) -> tuple[str | None, list[str]]:
    family, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--family" and i + 1 < len(argv):
            family, i = argv[i + 1], i + 2
            continue
        if a.startswith("--family="):
            family = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    if family is not None and family not in FAMILIES:
        raise SystemExit(f"--family: choose from {', '.join(FAMILIES)}")
    return family, rest


def main(argv=None) -> int:
    family, rest = _strip_family(list(sys.argv[1:] if argv is None else argv))
    if "-h" in rest or "--help" in rest:
        print(__doc__)
        return mg.main(["--help"])
    # make_goldens' own arguments, to find HF_DIR and OUT_DIR wherever the options are.
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("hf_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--ep", action="append")
    for opt in ("--ep-mode", "--attn", "--special-input", "--special-targets"):
        ap.add_argument(opt)
    ap.add_argument("--check-mock", action="store_true")
    args, _ = ap.parse_known_args(rest)
    with open(os.path.join(args.hf_dir, "config.json"), encoding="utf-8") as f:
        family = family_of(json.load(f), family)
    if args.special_targets is None:
        rest += ["--special-targets", special_targets(args.hf_dir, family)]
    mg.make_adapter = lambda config_json, attn="sdpa": make_adapter(config_json, attn, family)
    rc = mg.main(rest)
    if rc == 0:  # record which adapter made the goldens
        path = os.path.join(args.out_dir, "GOLDENS.json")
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        record["family"] = family
        record["model_class"] = FAMILIES[family][2]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
