#!/usr/bin/env python3
"""Golden outputs of NeMo Automodel 0.7.0 on a MiMo-V2.6-layout checkpoint (MiMoV2FlashStateDictAdapter) or, with
--v25, a MiMo-V2.5-Pro one (the mimo_v25 package's MiMoV2StateDictAdapter).

    python tools/make_v26_goldens.py HF_DIR OUT_DIR [--ep SIZE ...] [--v25]

HF_DIR: a tools/make_v26_fixture.py folder (fused QKV over metadata.tp_size, MXFP4 experts). The adapter is built as
MiMoV2ForCausalLM builds it (MiMoV2Config: attention_projection_layout "fused_qkv"), with the config's
_name_or_path at HF_DIR so that the adapter reads the index's tp_size as it does for a real checkpoint. Writes into
OUT_DIR, for tools/digest_goldens.py:
  from_hf_ep1_rank0.safetensors       from_hf, no device mesh
  from_hf_ep{W}_rank{r}.safetensors   from_hf with an EP mesh of size W (every rank; fake process group)
  to_hf_noquant.safetensors           to_hf(EP1 native) with quantization=False (the default)
  to_hf_exclude.json                  {} (not exercised here)
  GOLDENS.json                        versions, command, hf_dir, output orders, expert ranges, and the error the
                                      adapter raises for a quantized export (to_hf(quantization=True))
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from importlib.metadata import version as pkg_version

import torch
import safetensors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402

from nemo_automodel.components.models.common import BackendConfig  # noqa: E402
from nemo_automodel.components.models.mimo_v2_flash.config import MiMoV2Config  # noqa: E402
from nemo_automodel.components.models.mimo_v2_flash.state_dict_adapter import MiMoV2FlashStateDictAdapter  # noqa: E402
from nemo_automodel.components.moe.config import MoEConfig  # noqa: E402


def make_adapter(hf_dir: str, attn: str = "sdpa", v25: bool = False):
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    if v25:
        from nemo_automodel.components.models.mimo_v25.config import MiMoV2Config as V25Config
        config = V25Config(**cfg)
    else:
        config = MiMoV2Config(**cfg)
    config._name_or_path = hf_dir
    moe = MoEConfig(
        dim=config.hidden_size, inter_dim=config.intermediate_size, moe_inter_dim=config.moe_intermediate_size,
        n_routed_experts=int(config.n_routed_experts), n_shared_experts=0,
        n_activated_experts=config.num_experts_per_tok, n_expert_groups=config.n_group,
        n_limited_groups=config.topk_group, train_gate=True, gate_bias_update_factor=0.0,
        score_func="sigmoid_with_bias", route_scale=config.routed_scaling_factor, aux_loss_coeff=0.0,
        norm_topk_prob=config.norm_topk_prob, router_bias=False, expert_bias=False, expert_activation="swiglu",
        apply_router_weight_after_down=getattr(config, "apply_router_weight_after_down", False),
        softmax_before_topk=False, force_e_score_correction_bias=True, dtype=torch.bfloat16)
    backend = BackendConfig(attn=attn, experts="torch", dispatcher="torch", linear="torch")
    if v25:
        from nemo_automodel.components.models.mimo_v25.state_dict_adapter import MiMoV2StateDictAdapter
        return MiMoV2StateDictAdapter(config, moe, backend, dtype=torch.bfloat16)
    return MiMoV2FlashStateDictAdapter(config, moe, backend, dtype=torch.bfloat16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--ep", type=int, action="append", default=[])
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "te"))
    ap.add_argument("--v25", action="store_true", help="a MiMo-V2.5-Pro checkpoint (mimo_v25 adapter)")
    args = ap.parse_args(argv)
    hf_dir = os.path.abspath(args.hf_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    adapter = make_adapter(hf_dir, args.attn, args.v25)
    hf = mg.load_hf_dir(hf_dir)
    files: dict = {}

    def record(stem, sd, experts=None):
        mg.save(sd, os.path.join(args.out_dir, stem + ".safetensors"))
        files[stem + ".safetensors"] = {"order": list(sd.keys())}
        if experts is not None:
            files[stem + ".safetensors"]["experts"] = experts

    native = mg.from_hf(adapter, hf)
    n = int(adapter.config.n_routed_experts)
    record("from_hf_ep1_rank0", native, [0, n])
    for w in args.ep:
        for r in range(w):
            with mg.EPContext(w, r, "fakepg") as mesh:
                out = mg.from_hf(make_adapter(hf_dir, args.attn, args.v25), hf, mesh)
            q, rem = divmod(n, w)
            first = r * (q + 1) if r < rem else r * q + rem
            record(f"from_hf_ep{w}_rank{r}", out, [first, first + q + (r < rem)])
    record("to_hf_noquant", adapter.to_hf(mg.to_plain(native)))
    try:
        adapter.to_hf(mg.to_plain(native), quantization=True)
        files["to_hf.safetensors"] = {"error": "none raised"}
    except Exception as e:  # the reason 0.7.0 gives
        files["to_hf.safetensors"] = {"error": f"{type(e).__name__}: {e}"}
    with open(os.path.join(args.out_dir, "to_hf_exclude.json"), "w", encoding="utf-8") as f:
        json.dump({}, f)
    g = {
        "python": platform.python_version(), "torch": torch.__version__, "safetensors": safetensors.__version__,
        "nemo_automodel": pkg_version("nemo_automodel"), "transformers": pkg_version("transformers"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "ep_mode": "fakepg",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "hf_dir": hf_dir, "files": files,
    }
    with open(os.path.join(args.out_dir, "GOLDENS.json"), "w", encoding="utf-8") as f:
        json.dump(g, f, indent=1)
    print(f"wrote {args.out_dir}: {sorted(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
