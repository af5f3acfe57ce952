#!/usr/bin/env python3
"""Writes the "ragged" MiMo-V2-Flash-shaped HF checkpoint fixture (numpy + standard library only).

    python tools/make_ragged_fixture.py [OUT_DIR] [--nonan-dir DIR]

Defaults: OUT_DIR = tests/data/ragged/hf, the NaN-free twin in tests/data/ragged/hf_nonan (next to OUT_DIR).
Run from anywhere; relative paths are taken from the current directory. Byte-for-byte deterministic: the random
values come from integer-only arithmetic (numpy's legacy RandomState.randint, whose stream is frozen, summed as an
Irwin-Hall approximation of a normal), so no libm call can change a bit between machines.

What makes it "ragged" (the tiny preset has every dimension a multiple of 128; this one has none):
  hidden 200, intermediate 300, moe_intermediate 72, head_dim 48, v_head_dim 32: every 128x128 scale grid has a
  partial edge block in both directions. 3 layers: 0 = full attention + dense FFN, 1 = SWA + MoE (6 experts),
  2 = full attention + MoE; one MTP layer.

Planted features (readers must handle them; the goldens come from Automodel's adapter on exactly these bytes):
  * model.layers.{0,2}.self_attn.k_proj.weight_scale_inv: [8, 2] although the plain grid over 96 rows is [1, 2];
    rows 1..7 hold 1e30 (never read by a plain-grid reader; a reader that uses them is visibly wrong).
  * model.layers.1.mlp.experts.2.up_proj.weight_scale_inv stored as BF16 (the weight was quantized with that
    BF16-representable scale).
  * model.layers.2.mlp.experts.4.down_proj.weight_scale_inv: [2, 2] where the plain grid is [2, 1]; column 1 is
    1e30 (extra trailing column, ignored).
  * model.layers.1.mlp.experts.3.gate_proj.weight flat positions 0..8 = FP8 codes
    0x00 0x80 0x7E 0xFE 0x01 0x81 0x08 0x88 0x77 (zero, -zero, +-max, +-min subnormal, +-min normal, 0x77 = 240).
  * model.layers.2.self_attn.q_proj.weight flat positions 5, 6 = 0x7F, 0xFF (the two NaN codes); absent from the
    hf_nonan twin, which is otherwise byte-identical.
  * two shards; model.layers.1.mlp.experts.5.down_proj.weight_scale_inv lives in shard 2 (its weight in shard 1)
    and model.layers.2.self_attn.q_proj.weight_scale_inv in shard 1 (its weight in shard 2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

SEED = 20240607
BLOCK = 128

CONFIG = {
    "architectures": ["MiMoV2FlashForCausalLM"],
    "model_type": "mimo_v2_flash",
    "vocab_size": 100,
    "hidden_size": 200,
    "intermediate_size": 300,
    "moe_intermediate_size": 72,
    "num_hidden_layers": 3,
    "hybrid_layer_pattern": [0, 1, 0],
    "moe_layer_freq": [0, 1, 1],
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 48,
    "v_head_dim": 32,
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 4,
    "swa_head_dim": 48,
    "swa_v_head_dim": 32,
    "sliding_window": 128,
    "sliding_window_size": 128,
    "add_swa_attention_sink_bias": True,
    "add_full_attention_sink_bias": False,
    "attention_value_scale": 0.707,
    "attention_bias": False,
    "partial_rotary_factor": 0.334,
    "rope_theta": 5000000,
    "swa_rope_theta": 10000,
    "max_position_embeddings": 4096,
    "layernorm_epsilon": 1e-5,
    "hidden_act": "silu",
    "n_routed_experts": 6,
    "num_experts_per_tok": 2,
    "n_shared_experts": None,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK],
        "ignored_layers": [f"model.layers.{i}.self_attn.o_proj" for i in range(3)],
    },
}

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
# Scales deliberately stored in the other shard than their weight.
CROSS_SHARD = {
    "model.layers.1.mlp.experts.5.down_proj.weight_scale_inv": 1,
    "model.layers.2.self_attn.q_proj.weight_scale_inv": 0,
}
PADDED_K_SCALE_ROWS = 8
PAD_VALUE = 1e30
BF16_SCALE = "model.layers.1.mlp.experts.2.up_proj.weight_scale_inv"
EXTRA_COL_SCALE = "model.layers.2.mlp.experts.4.down_proj.weight_scale_inv"
SPECIAL_CODES_TENSOR = "model.layers.1.mlp.experts.3.gate_proj.weight"
SPECIAL_CODES = [0x00, 0x80, 0x7E, 0xFE, 0x01, 0x81, 0x08, 0x88, 0x77]
NAN_TENSOR = "model.layers.2.self_attn.q_proj.weight"
NAN_CODES = {5: 0x7F, 6: 0xFF}


# ---------------------------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------------------------


class Rand:
    """Integer-only deterministic source (legacy RandomState: its stream is frozen by numpy's policy)."""

    def __init__(self, seed: int):
        self.rs = np.random.RandomState(seed)

    def normal(self, n: int) -> np.ndarray:
        """Approximately standard normal (Irwin-Hall, 12 uniforms), exact dyadic float64 arithmetic."""
        u = self.rs.randint(0, 1 << 24, size=(12, n), dtype=np.int64)
        return (u.sum(axis=0) - 6 * (1 << 24)).astype(np.float64) / float(1 << 24)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> BF16 bits, round to nearest even (no NaN expected here)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    assert not np.isnan(x).any()
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _fp8_table() -> np.ndarray:
    """Values of the non-negative finite E4M3FN codes 0x00..0x7E (monotonic in the code)."""
    vals = []
    for c in range(0x7F):
        e, m = c >> 3, c & 7
        vals.append(m * 2.0**-9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return np.array(vals, dtype=np.float64)


FP8_POS = _fp8_table()
assert FP8_POS[-1] == 448.0 and np.all(np.diff(FP8_POS) > 0)


def fp8_encode(x: np.ndarray) -> np.ndarray:
    """float32 -> E4M3FN codes: round to nearest, ties to even code, saturating to +-448 (never a NaN code)."""
    x = np.asarray(x, dtype=np.float32)
    assert np.isfinite(x).all()
    a = np.abs(x).astype(np.float64)
    hi = np.clip(np.searchsorted(FP8_POS, a, side="left"), 0, len(FP8_POS) - 1)  # FP8_POS[hi] >= a (unless saturated)
    lo = np.maximum(hi - 1, 0)
    d_lo = a - FP8_POS[lo]
    d_hi = FP8_POS[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo)
    code = np.where(a >= 448.0, 0x7E, code)
    sign = np.signbit(x).astype(np.int64) << 7
    return (code | sign).astype(np.uint8)


def fp8_decode(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.uint8)
    mag = FP8_POS[np.minimum(c & 0x7F, 0x7E)]
    out = np.where(c & 0x80, -mag, mag)
    return np.where((c & 0x7F) == 0x7F, np.nan, out)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------------------------
# Tensor builders
# ---------------------------------------------------------------------------------------------------------------

# (dtype name, numpy array of the stored element type or raw bytes-compatible view)
Tensor = tuple[str, np.ndarray]


class Builder:
    def __init__(self, seed: int):
        self.rnd = Rand(seed)
        self.t: dict[str, Tensor] = {}

    def bf16_values(self, shape, sigma=0.02, band=True) -> np.ndarray:
        """Random BF16-representable float32 values; with band=True the magnitude changes every 32 rows."""
        n = int(np.prod(shape))
        v = self.rnd.normal(n).reshape(shape) * sigma
        if band and len(shape) == 2:
            factors = np.array([2.0 ** ((b % 5) - 2) for b in range(cdiv(shape[0], 32))])
            v = v * np.repeat(factors, 32)[: shape[0]][:, None]
        return bf16_bits_to_f32(f32_to_bf16_bits(v.astype(np.float32)))

    def bf16(self, name, shape, sigma=0.02, offset=0.0):
        v = self.bf16_values(shape, sigma, band=False) + np.float32(offset)
        self.t[name] = ("BF16", f32_to_bf16_bits(v.astype(np.float32)))

    def f32(self, name, shape, sigma=0.02):
        n = int(np.prod(shape))
        self.t[name] = ("F32", (self.rnd.normal(n).reshape(shape) * sigma).astype(np.float32))

    def fp8(self, name, rows, cols, scale_dtype="F32", scale_shape=None):
        """Quantize random BF16 values with per-128x128-block scale amax/448 (plain grid)."""
        x = self.bf16_values((rows, cols))
        gr, gc = cdiv(rows, BLOCK), cdiv(cols, BLOCK)
        scale = np.zeros((gr, gc), dtype=np.float32)
        codes = np.zeros((rows, cols), dtype=np.uint8)
        for i in range(gr):
            for j in range(gc):
                blk = x[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
                amax = np.float32(np.abs(blk).max())
                s = amax / np.float32(448.0) if amax > 0 else np.float32(2.0**-126)
                if scale_dtype == "BF16":
                    s = bf16_bits_to_f32(f32_to_bf16_bits(np.array([s], dtype=np.float32)))[0]
                scale[i, j] = s
                codes[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = fp8_encode(blk / s)
        if scale_shape is not None:
            big = np.full(scale_shape, np.float32(PAD_VALUE), dtype=np.float32)
            big[:gr, :gc] = scale
            scale = big
        self.t[name] = ("F8_E4M3", codes)
        sname = name + "_scale_inv"
        if scale_dtype == "BF16":
            self.t[sname] = ("BF16", f32_to_bf16_bits(scale))
        else:
            self.t[sname] = ("F32", scale)


def build(cfg: dict, seed: int) -> dict[str, Tensor]:
    b = Builder(seed)
    D, V = cfg["hidden_size"], cfg["vocab_size"]
    I, Ie, E = cfg["intermediate_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"]

    def norm(name):
        b.bf16(name, (D,), sigma=0.05, offset=1.0)

    def attn(p, swa: bool, padded_k: bool):
        nh = cfg["swa_num_attention_heads" if swa else "num_attention_heads"]
        kv = cfg["swa_num_key_value_heads" if swa else "num_key_value_heads"]
        hd = cfg["swa_head_dim" if swa else "head_dim"]
        vd = cfg["swa_v_head_dim" if swa else "v_head_dim"]
        b.fp8(f"{p}.self_attn.q_proj.weight", nh * hd, D)
        kshape = (PADDED_K_SCALE_ROWS, cdiv(D, BLOCK)) if padded_k else None
        b.fp8(f"{p}.self_attn.k_proj.weight", kv * hd, D, scale_shape=kshape)
        b.fp8(f"{p}.self_attn.v_proj.weight", kv * vd, D)
        b.bf16(f"{p}.self_attn.o_proj.weight", (D, nh * vd))
        if (swa and cfg["add_swa_attention_sink_bias"]) or (not swa and cfg["add_full_attention_sink_bias"]):
            b.bf16(f"{p}.self_attn.attention_sink_bias", (nh,), sigma=0.5)

    def dense_mlp(p):
        b.fp8(f"{p}.mlp.gate_proj.weight", I, D)
        b.fp8(f"{p}.mlp.up_proj.weight", I, D)
        b.fp8(f"{p}.mlp.down_proj.weight", D, I)

    b.bf16("model.embed_tokens.weight", (V, D))
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}"
        swa = cfg["hybrid_layer_pattern"][L] == 1
        norm(f"{p}.input_layernorm.weight")
        norm(f"{p}.post_attention_layernorm.weight")
        attn(p, swa, padded_k=not swa)
        if cfg["moe_layer_freq"][L]:
            b.f32(f"{p}.mlp.gate.weight", (E, D), sigma=0.05)
            b.f32(f"{p}.mlp.gate.e_score_correction_bias", (E,), sigma=0.01)
            for e in range(E):
                q = f"{p}.mlp.experts.{e}"
                up_dtype = "BF16" if f"{q}.up_proj.weight_scale_inv" == BF16_SCALE else "F32"
                dshape = (cdiv(D, BLOCK), cdiv(Ie, BLOCK) + 1) if f"{q}.down_proj.weight_scale_inv" == EXTRA_COL_SCALE else None
                b.fp8(f"{q}.gate_proj.weight", Ie, D)
                b.fp8(f"{q}.up_proj.weight", Ie, D, scale_dtype=up_dtype)
                b.fp8(f"{q}.down_proj.weight", D, Ie, scale_shape=dshape)
        else:
            dense_mlp(p)
    m = "model.mtp.layers.0"
    for n in ("enorm", "hnorm", "input_layernorm", "pre_mlp_layernorm", "final_layernorm"):
        norm(f"{m}.{n}.weight")
    b.bf16(f"{m}.eh_proj.weight", (D, 2 * D))
    attn(m, swa=True, padded_k=False)
    dense_mlp(m)
    norm("model.norm.weight")
    b.bf16("lm_head.weight", (V, D))

    # Planted FP8 codes.
    dt, codes = b.t[SPECIAL_CODES_TENSOR]
    codes.reshape(-1)[: len(SPECIAL_CODES)] = np.array(SPECIAL_CODES, dtype=np.uint8)
    for k in (BF16_SCALE, EXTRA_COL_SCALE, SPECIAL_CODES_TENSOR, NAN_TENSOR):
        assert k in b.t, k
    return b.t


def expected_tensor_count(cfg: dict) -> int:
    n = 3
    for L in range(cfg["num_hidden_layers"]):
        swa = cfg["hybrid_layer_pattern"][L] == 1
        sink = (cfg["add_swa_attention_sink_bias"] if swa else cfg["add_full_attention_sink_bias"])
        n += 2 + 7 + int(sink) + (2 + 6 * cfg["n_routed_experts"] if cfg["moe_layer_freq"][L] else 6)
    return n + 20


# ---------------------------------------------------------------------------------------------------------------
# safetensors writer
# ---------------------------------------------------------------------------------------------------------------


def tensor_bytes(dtype: str, arr: np.ndarray) -> bytes:
    want = {"F8_E4M3": np.uint8, "U8": np.uint8, "BF16": np.uint16, "F32": np.float32}[dtype]
    assert arr.dtype == want, (dtype, arr.dtype)
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def write_safetensors(path: str, tensors: dict[str, Tensor]) -> int:
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        data = tensor_bytes(dtype, arr)
        assert len(data) % 4 == 0, name  # keeps every tensor 4-byte aligned without holes
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for d in blobs:
            f.write(d)
    return off


def shard_of(name: str) -> int:
    if name in CROSS_SHARD:
        return CROSS_SHARD[name]
    if name.startswith(("model.embed_tokens.", "model.layers.0.", "model.layers.1.")):
        return 0
    return 1  # layer 2, MTP, final norm, lm_head


def write_checkpoint(out_dir: str, cfg: dict, tensors: dict[str, Tensor]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for n in os.listdir(out_dir):
        if n.endswith(".safetensors") or n in ("config.json", "model.safetensors.index.json"):
            os.remove(os.path.join(out_dir, n))
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    parts: list[dict[str, Tensor]] = [{} for _ in SHARDS]
    for k, v in tensors.items():
        parts[shard_of(k)][k] = v
    total = 0
    weight_map = {}
    for fname, part in zip(SHARDS, parts):
        total += write_safetensors(os.path.join(out_dir, fname), part)
        weight_map.update({k: fname for k in part})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", default=os.path.join("tests", "data", "ragged", "hf"))
    ap.add_argument("--nonan-dir", default=None, help="NaN-free twin (default: OUT_DIR/../hf_nonan)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    nonan_dir = args.nonan_dir or os.path.join(os.path.dirname(os.path.abspath(args.out_dir)), "hf_nonan")

    tensors = build(CONFIG, args.seed)
    assert len(tensors) == expected_tensor_count(CONFIG), (len(tensors), expected_tensor_count(CONFIG))
    write_checkpoint(nonan_dir, CONFIG, tensors)

    dt, codes = tensors[NAN_TENSOR]
    nan_codes = codes.copy()
    for pos, c in NAN_CODES.items():
        nan_codes.reshape(-1)[pos] = c
    with_nan = dict(tensors)
    with_nan[NAN_TENSOR] = (dt, nan_codes)
    write_checkpoint(args.out_dir, CONFIG, with_nan)
    n_bytes = sum(len(tensor_bytes(d, a)) for d, a in tensors.values())
    print(f"wrote {args.out_dir} and {nonan_dir}: {len(tensors)} tensors, {n_bytes} bytes of tensor data, "
          f"{len(SHARDS)} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
