#!/usr/bin/env python3
"""Golden outputs of NeMo Automodel 0.7.0's DeepSeekV3StateDictAdapter (DeepSeek-V3 / Kimi-K2 checkpoints), in the
same files and JSON as tools/make_goldens.py (whose main does the work; only the adapter differs).

    python tools/make_deepseek_goldens.py HF_DIR OUT_DIR [make_goldens options: --ep W ... --special-input targets]

The adapter is the one DeepseekV3ForCausalLM builds for itself (the model is built on the meta device with the CPU
backend; its state_dict_adapter gets the model's MoEConfig and dtype = the config's torch_dtype, bf16). The special
BF16 values are planted into a grouped expert tensor, q_b_proj (or q_proj), o_proj and a dense down_proj.
Then tools/digest_goldens.py OUT_DIR tests/data/goldens/<name>.json condenses it.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402

from nemo_automodel.components.models.common import BackendConfig  # noqa: E402
from nemo_automodel.components.models.deepseek_v3.model import DeepseekV3ForCausalLM  # noqa: E402


def make_adapter(config_json: dict, attn: str = "sdpa"):
    from transformers import DeepseekV3Config

    cfg = dict(config_json)
    cfg.pop("quantization_config", None)  # not read by the adapter
    cfg["model_type"] = "deepseek_v3"  # Kimi-K2's KimiK2Config is a DeepseekV3Config
    config = DeepseekV3Config(**{k: v for k, v in cfg.items() if k != "model_type"})
    backend = BackendConfig(attn=attn, experts="torch", dispatcher="torch", linear="torch", rms_norm="torch",
                            enable_hf_state_dict_adapter=True)
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM.from_config(config, backend=backend)
    return model.state_dict_adapter


def special_targets(hf_dir: str) -> str:
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    first_moe = int(cfg.get("first_k_dense_replace", 0))
    q = "q_b_proj" if cfg.get("q_lora_rank") else "q_proj"
    return ",".join([f"model.layers.{first_moe}.mlp.experts.gate_and_up_projs",
                     f"model.layers.{first_moe}.self_attn.{q}.weight",
                     f"model.layers.{first_moe}.self_attn.o_proj.weight",
                     "model.layers.0.mlp.down_proj.weight"])


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--special-targets" not in argv and len(argv) >= 2:
        argv += ["--special-targets", special_targets(argv[0])]
    mg.make_adapter = make_adapter
    sys.exit(mg.main(argv))
