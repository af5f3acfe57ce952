"""The default mode's improvements over the reference: the published fused K/V scale layout of the
full-attention layers, real amax/448 block scales, refusals instead of silent garbage."""
from __future__ import annotations

import pytest
import torch

import moeckpt
from conftest import assert_same, raw


def _codes(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    c = torch.randint(0, 256, (rows, cols), generator=gen, dtype=torch.int32).to(torch.uint8)
    c[(c & 0x7F) == 0x7F] = 0x3C  # no NaN codes
    return c.view(torch.float8_e4m3fn)


def _dequant(w: torch.Tensor, scale_of_row_block) -> torch.Tensor:
    """bf16(float(fp8) * scale), the scale chosen per (row, 128-column block)."""
    f = w.float()
    out = torch.empty_like(f)
    for r in range(f.shape[0]):
        s = scale_of_row_block(r)
        for cb in range(0, f.shape[1], 128):
            out[r, cb:cb + 128] = f[r, cb:cb + 128] * s[cb // 128]
    return out.to(torch.bfloat16)


def test_fused_kv_scales_are_read_in_the_published_layout(case_tiny):
    # Layer 0 of the tiny preset is full attention: 4 KV heads, head_dim 192, v_head_dim 128, hidden
    # 256. The published k scale [8, 2] holds, per KV head h, rows 2h (K rows 0..127 of the head) and
    # 2h+1 (K rows 128..191 and the first 64 V rows of the head); the v scale row h covers V rows
    # 64..127 of head h. Automodel reads both on the plain grid, which is wrong for V.
    gen = torch.Generator().manual_seed(7)
    p = "model.layers.0.self_attn."
    q, k, v = _codes(gen, 1536, 256), _codes(gen, 768, 256), _codes(gen, 512, 256)
    qs = torch.full((12, 2), 0.01)
    ks = 2.0 + 0.25 * torch.arange(16, dtype=torch.float32).reshape(8, 2)
    vs = 0.001 * torch.arange(1, 9, dtype=torch.float32).reshape(4, 2)
    hf = {p + "q_proj.weight": q, p + "q_proj.weight_scale_inv": qs, p + "k_proj.weight": k,
          p + "k_proj.weight_scale_inv": ks, p + "v_proj.weight": v, p + "v_proj.weight_scale_inv": vs}
    fused = case_tiny.ours().from_hf(hf)
    plain = case_tiny.ours(compat="automodel").from_hf(hf)
    # compat: exactly the reference on this input too.
    assert_same(case_tiny.ref.from_hf(dict(hf)), plain, "compat fused-layout input")

    want_k = _dequant(k, lambda g: ks[2 * (g // 192) + (g % 192) // 128])
    want_v = _dequant(v, lambda g: ks[2 * (g // 128) + 1] if g % 128 < 64 else vs[g // 128])
    assert torch.equal(fused[p + "k_proj.weight"].view(torch.int16), want_k.view(torch.int16))
    assert torch.equal(fused[p + "v_proj.weight"].view(torch.int16), want_v.view(torch.int16))
    assert raw(fused[p + "q_proj.weight"]) == raw(plain[p + "q_proj.weight"])
    # The first 64 V rows of every head differ from Automodel's reading.
    differ = (fused[p + "v_proj.weight"].view(torch.int16) != plain[p + "v_proj.weight"].view(torch.int16))
    rows = differ.any(dim=1).nonzero().flatten().tolist()
    assert set(rows) <= {h * 128 + j for h in range(4) for j in range(64)}
    assert len(rows) > 200


def test_round_trip_gives_back_the_checkpoint(case_tiny):
    # from_hf then to_hf(quantization=True) with real block scales: every key back with the published
    # dtype and shape (fused K/V scales included); F32 natives reproduce every byte, BF16 natives
    # nearly every FP8 code (the rest one step apart: BF16 rounding of the dequantized value).
    hf = case_tiny.hf
    for dtype in (torch.float32, torch.bfloat16):
        ad = case_tiny.ours(dtype=dtype)
        back = ad.to_hf(ad.from_hf(hf), quantization=True)
        assert sorted(back) == sorted(hf)
        for k, v in hf.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back["model.layers.0.self_attn.k_proj.weight_scale_inv"].shape == (8, 2)
        if dtype == torch.float32:
            assert_same(hf, back, "F32 round trip", order=False)
        else:
            fp8 = [k for k, v in hf.items() if v.dtype == torch.float8_e4m3fn]
            total = sum(hf[k].numel() for k in fp8)
            equal = sum(int((hf[k].view(torch.uint8) == back[k].view(torch.uint8)).sum()) for k in fp8)
            assert total > 10_000_000 and equal >= 0.999 * total


def test_block_scales_are_amax_over_448(case_tiny):
    ad = case_tiny.ours()
    native = ad.from_hf(case_tiny.hf)
    key = "model.layers.1.mlp.experts.gate_and_up_projs"
    out = ad.convert_single_tensor_to_hf(key, native[key], quantization=True)
    names = [k for k, _ in out]
    assert names[:4] == ["model.layers.1.mlp.experts.0.gate_proj.weight",
                         "model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv",
                         "model.layers.1.mlp.experts.0.up_proj.weight",
                         "model.layers.1.mlp.experts.0.up_proj.weight_scale_inv"]
    w, s = out[0][1], out[1][1]
    x = native[key][0, :, :w.shape[0]].transpose(0, 1).float()  # expert 0's gate, [out, in]
    amax = x.abs().reshape(x.shape[0] // 128, 128, x.shape[1] // 128, 128).amax(dim=(1, 3))
    assert s.dtype == torch.float32 and torch.equal(s, amax / 448.0)
    assert not torch.equal(s, torch.ones_like(s))
    # Dequantized, each element is within half an FP8 step of the BF16 input.
    deq = w.float() * s.repeat_interleave(128, 0).repeat_interleave(128, 1)
    assert torch.all((deq - x).abs() <= deq.abs() / 16 + s.repeat_interleave(128, 0).repeat_interleave(128, 1) * 2**-9)
    # quantization=False: BF16, no scales, as the reference's default.
    plain = ad.to_hf(native)
    assert not any(k.endswith("_scale_inv") for k in plain)
    assert all(v.dtype != torch.float8_e4m3fn for v in plain.values())


def test_quant_modes(case_tiny):
    native = case_tiny.ours().from_hf(case_tiny.hf)
    cast = case_tiny.ours(quant="cast").to_hf(native, quantization=True)
    # "cast" in the default mode is Automodel's substring rule with ones scales.
    ref = case_tiny.ref.to_hf(dict(case_tiny.ref.from_hf(dict(case_tiny.hf))), quantization=True)
    assert sorted(cast) == sorted(ref)
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in cast.items() if k.endswith("_scale_inv"))
    none = case_tiny.ours(quant="none").to_hf(native, quantization=True)
    assert_same(case_tiny.ours().to_hf(native), none, "quant none")
    block = case_tiny.ours().to_hf(native, quantization=True)
    # Block mode quantizes what the published checkpoint stores as FP8, not eh_proj / dense gate.
    assert sorted(block) == sorted(case_tiny.hf)
    assert all(moeckpt.is_published_fp8_key(k) for k, v in block.items() if v.dtype == torch.float8_e4m3fn)


def test_exclude_key_regex_is_anchored_as_in_the_reference(case_tiny):
    native = case_tiny.ours().from_hf(case_tiny.hf)
    ad = case_tiny.ours()
    assert "lm_head.weight" not in ad.to_hf(native, exclude_key_regex=r"lm_head")
    kept = ad.to_hf(native, exclude_key_regex=r"layers", quantization=True)  # re.match: nothing starts with it
    assert sorted(kept) == sorted(case_tiny.hf)
    dropped = ad.to_hf(native, exclude_key_regex=r"model\.layers\.1\.mlp\.experts\.", quantization=True)
    assert not any(k.startswith("model.layers.1.mlp.experts.") for k in dropped)
    assert "model.layers.2.mlp.experts.0.gate_proj.weight_scale_inv" in dropped


def test_ep_shards_as_plain_tensors(case_tiny):
    # Default mode: a plain-tensor EP shard converts with its global expert ids when the adapter knows
    # its rank (the reference raises).
    full = case_tiny.ours().to_hf(case_tiny.ours().from_hf(case_tiny.hf), quantization=True)
    merged = {}
    for rank in range(3):  # 8 experts: 3, 3, 2
        ad = case_tiny.ours(ep_rank=rank, ep_size=3)
        shard = ad.from_hf(case_tiny.hf)
        assert shard["model.layers.1.mlp.experts.down_projs"].shape[0] == (3 if rank < 2 else 2)
        merged.update(ad.to_hf(shard, quantization=True))
    assert_same(full, merged, "EP 3 shards reassembled", order=False)
