#!/usr/bin/env python3
"""Writes tiny MiMo-V2.6- and MiMo-V2.5-Pro-layout HF checkpoints (numpy + standard library only,
deterministic).

    python tools/make_v26_fixture.py OUT_ROOT           # MiMo-V2.6 at TP 2 and 4
    python tools/make_v26_fixture.py --v25 OUT_DIR      # MiMo-V2.5-Pro

MiMo-V2.5-Pro (architectures MiMoV25ForCausalLM, Automodel's mimo_v25 adapter): the same fused, TP-interleaved
qkv_proj with one scale grid per shard, over checkpoint TP = num_key_value_heads (no metadata.tp_size), and FP8
routed experts with 128x128 block scales, as MiMo-V2-Flash.

Writes OUT_ROOT/tp2/hf and OUT_ROOT/tp4/hf: the same model stored with the checkpoint TP degree 2 and 4
(`metadata.tp_size` in the index). The layout NeMo Automodel 0.7.0's MiMoV2FlashStateDictAdapter reads when
`attention_projection_layout` is "fused_qkv" (model_type "mimo_v2"):

  * attention: one `self_attn.qkv_proj.weight` F8_E4M3 [tp * (q + k + v), hidden] per layer, the rows of TP shard t
    being [Q_t, K_t, V_t] (q = heads / tp * head_dim, ...), with one independent 128x128 scale grid per shard:
    `qkv_proj.weight_scale_inv` F32 [tp * ceil((q + k + v) / 128), ceil(hidden / 128)];
  * routed experts in MXFP4: `mlp.experts.E.{gate,up,down}_proj.weight` U8 [out, in / 2] (E2M1 codes, the earlier
    input element in the low nibble) with U8 E8M0 `...weight_scale` [out, in / 32];
  * dense MLP (layer 0) FP8 with plain grids; `visual.*` and `audio.*` tensors (BF16, and one FP8 visual weight with
    its scale) passed through.

Planted: every E2M1 code (all 16) at the start of layer 1 expert 0's gate_proj; E8M0 scales from 2^-20 to 2^4;
full-attention rows per shard that are not a multiple of 128 (ragged scale grids per shard); an SWA layer whose
head counts differ from the full layers'.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_ragged_fixture as rf  # noqa: E402  (numerics, builders, writer)

BLOCK = 128
MX = 32

# The fields that do not shape tensors are the ragged fixture's.
_SHARED = ("sliding_window", "sliding_window_size", "add_swa_attention_sink_bias", "add_full_attention_sink_bias",
           "attention_value_scale", "attention_bias", "partial_rotary_factor", "rope_theta", "swa_rope_theta",
           "max_position_embeddings", "layernorm_epsilon", "hidden_act", "n_shared_experts", "scoring_func",
           "topk_method", "n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor", "tie_word_embeddings",
           "torch_dtype")
CONFIG = {
    "architectures": ["MiMoV2ForCausalLM"],
    "model_type": "mimo_v2",
    "attention_projection_layout": "fused_qkv",
    "vocab_size": 64,
    "hidden_size": 128,
    "intermediate_size": 192,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 3,
    "hybrid_layer_pattern": [0, 1, 0],
    "moe_layer_freq": [0, 1, 1],
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 40,
    "v_head_dim": 24,
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 4,
    "swa_head_dim": 32,
    "swa_v_head_dim": 16,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    **{k: rf.CONFIG[k] for k in _SHARED},
    "quantization_config": {k: v for k, v in rf.CONFIG["quantization_config"].items() if k != "ignored_layers"},
}


def dims(cfg, swa):
    p = "swa_" if swa else ""
    return (cfg[p + "num_attention_heads"], cfg[p + "num_key_value_heads"], cfg[p + "head_dim"],
            cfg[p + "v_head_dim"])


def fused_qkv(b: rf.Builder, name: str, cfg: dict, swa: bool, tp: int) -> None:
    """Per TP shard: [Q_t, K_t, V_t] rows, quantized with the shard's own 128x128 grid."""
    nh, kv, hd, vd = dims(cfg, swa)
    D = cfg["hidden_size"]
    q, k, v = nh * hd, kv * hd, kv * vd
    whole = {p: b.bf16_values((r, D)) for p, r in (("q", q), ("k", k), ("v", v))}
    rps = (q + k + v) // tp
    srps = rf.cdiv(rps, BLOCK)
    codes = np.zeros((tp * rps, D), dtype=np.uint8)
    scale = np.zeros((tp * srps, rf.cdiv(D, BLOCK)), dtype=np.float32)
    for t in range(tp):
        shard = np.concatenate([whole["q"][t * q // tp:(t + 1) * q // tp], whole["k"][t * k // tp:(t + 1) * k // tp],
                                whole["v"][t * v // tp:(t + 1) * v // tp]])
        for i in range(srps):
            for j in range(rf.cdiv(D, BLOCK)):
                blk = shard[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
                amax = np.float32(np.abs(blk).max())
                s = amax / np.float32(448.0) if amax > 0 else np.float32(2.0**-126)
                scale[t * srps + i, j] = s
                codes[t * rps + i * BLOCK:t * rps + i * BLOCK + blk.shape[0], j * BLOCK:j * BLOCK + blk.shape[1]] = \
                    rf.fp8_encode(blk / s)
    b.t[name] = ("F8_E4M3", codes)
    b.t[name + "_scale_inv"] = ("F32", scale)


def mxfp4(b: rf.Builder, name: str, rows: int, cols: int, first_scale: int) -> None:
    """Random E2M1 codes (integer stream) and E8M0 scales cycling over [first_scale, first_scale + 24]."""
    codes = b.rnd.rs.randint(0, 16, size=(rows, cols), dtype=np.int64).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    scales = ((np.arange(rows * (cols // MX)).reshape(rows, cols // MX) % 25) + first_scale).astype(np.uint8)
    b.t[name] = ("U8", packed)
    b.t[name + "_scale"] = ("U8", scales)


def build(cfg: dict, tp: int, seed: int = 20261201, experts: str = "mxfp4") -> dict:
    b = rf.Builder(seed)
    D, V = cfg["hidden_size"], cfg["vocab_size"]
    I, Ie, E = cfg["intermediate_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"]

    def norm(name):
        b.bf16(name, (D,), sigma=0.05, offset=1.0)

    b.bf16("model.embed_tokens.weight", (V, D))
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}"
        swa = cfg["hybrid_layer_pattern"][L] == 1
        nh, kv, hd, vd = dims(cfg, swa)
        norm(f"{p}.input_layernorm.weight")
        norm(f"{p}.post_attention_layernorm.weight")
        fused_qkv(b, f"{p}.self_attn.qkv_proj.weight", cfg, swa, tp)
        b.bf16(f"{p}.self_attn.o_proj.weight", (D, nh * vd))
        if (swa and cfg["add_swa_attention_sink_bias"]) or (not swa and cfg["add_full_attention_sink_bias"]):
            b.bf16(f"{p}.self_attn.attention_sink_bias", (nh,), sigma=0.5)
        if cfg["moe_layer_freq"][L]:
            b.f32(f"{p}.mlp.gate.weight", (E, D), sigma=0.05)
            b.f32(f"{p}.mlp.gate.e_score_correction_bias", (E,), sigma=0.01)
            for e in range(E):
                q = f"{p}.mlp.experts.{e}"
                if experts == "fp8":
                    b.fp8(f"{q}.gate_proj.weight", Ie, D)
                    b.fp8(f"{q}.up_proj.weight", Ie, D)
                    b.fp8(f"{q}.down_proj.weight", D, Ie)
                    continue
                mxfp4(b, f"{q}.gate_proj.weight", Ie, D, 107 + e)
                mxfp4(b, f"{q}.up_proj.weight", Ie, D, 108 + e)
                mxfp4(b, f"{q}.down_proj.weight", D, Ie, 109 + e)
        else:
            b.fp8(f"{p}.mlp.gate_proj.weight", I, D)
            b.fp8(f"{p}.mlp.up_proj.weight", I, D)
            b.fp8(f"{p}.mlp.down_proj.weight", D, I)
    norm("model.norm.weight")
    b.bf16("lm_head.weight", (V, D))
    # Multimodal towers: passed through (one FP8 visual weight is dequantized like any scaled weight).
    b.bf16("visual.patch_embed.proj.weight", (32, 48))
    b.bf16("visual.blocks.0.norm1.weight", (32,), sigma=0.05, offset=1.0)
    b.fp8("visual.blocks.0.mlp.fc1.weight", 64, 32)
    b.bf16("audio.encoder.layers.0.fc1.weight", (16, 32))
    if experts == "mxfp4":  # every E2M1 code at the start of one expert
        g = b.t["model.layers.1.mlp.experts.0.gate_proj.weight"][1]
        g.reshape(-1)[:8] = np.array([0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE], dtype=np.uint8)
    return b.t


def write(out_dir: str, cfg: dict, tensors: dict, tp: int | None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    parts = [{}, {}]
    for k, v in tensors.items():
        parts[0 if k.startswith(("model.embed_tokens.", "model.layers.0.", "model.layers.1.")) else 1][k] = v
    total, weight_map = 0, {}
    for fname, part in zip(shards, parts):
        total += rf.write_safetensors(os.path.join(out_dir, fname), part)
        weight_map.update({k: fname for k in part})
    metadata = {"total_size": total} if tp is None else {"total_size": total, "tp_size": tp}
    index = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


V25_CONFIG = dict(CONFIG, architectures=["MiMoV25ForCausalLM"], swa_num_attention_heads=8)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--v25":
        tp = V25_CONFIG["num_key_value_heads"]
        write(argv[1], V25_CONFIG, build(V25_CONFIG, tp, experts="fp8"), None)
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for tp in (2, 4):
        write(os.path.join(argv[0], f"tp{tp}", "hf"), CONFIG, build(CONFIG, tp), tp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
