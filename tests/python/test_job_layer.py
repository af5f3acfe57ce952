"""The Python folder functions go through the CLI's job layer: refusal of a destination holding a
checkpoint (overwrite=True replaces it), cleanup on any error, SIGKILL at random moments never
leaving a broken checkpoint, resume=True completing byte-identically; dequantize_dir /
quantize_dir; repo ids from the local Hugging Face cache."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import moeckpt

import preloaded_child
from conftest import trials
from test_dir import load_dir
from test_parity import assert_same


def final_files(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d)) if not n.startswith(".")} if d.exists() else {}


def test_overwrite_and_refusal(case_tiny, tmp_path):
    native = moeckpt.from_hf_dir(case_tiny.path)
    moeckpt.to_hf_dir(native, tmp_path / "out", case_tiny.config, quant="none")
    before = final_files(tmp_path / "out")
    with pytest.raises(moeckpt.Error, match="already holds a checkpoint"):
        moeckpt.to_hf_dir(native, tmp_path / "out", case_tiny.config)
    assert final_files(tmp_path / "out") == before  # the refusal touched nothing
    moeckpt.to_hf_dir(native, tmp_path / "out", case_tiny.config, overwrite=True)
    moeckpt.to_hf_dir(native, tmp_path / "fresh", case_tiny.config)
    assert final_files(tmp_path / "out") == final_files(tmp_path / "fresh")
    with pytest.raises(ValueError):
        moeckpt.to_hf_dir(native, tmp_path / "x", case_tiny.config, overwrite=True, resume=True)


@pytest.mark.parametrize("where", ["model.layers.1.mlp.experts.down_projs", "model.layers.3.self_attn.v_proj.weight",
                                   "model.layers.2.mlp.experts.gate_and_up_projs"])
def test_an_error_leaves_nothing_under_a_final_name(case_tiny, tmp_path, where):
    native = moeckpt.from_hf_dir(case_tiny.path)
    t = native[where].clone()
    t.view(-1)[t.numel() - 3] = float("nan")  # block quantization refuses it, late in the tensor
    native[where] = t
    with pytest.raises(moeckpt.Error, match="finite"):
        moeckpt.to_hf_dir(native, tmp_path / "out", case_tiny.config, max_shard_bytes=1 << 20)
    assert final_files(tmp_path / "out") == {}
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


KILL_CHILD = r'''
import sys, torch, moeckpt
from safetensors.torch import load_file
native = load_file(sys.argv[1])
print("ready", flush=True)
moeckpt.to_hf_dir(native, sys.argv[2], sys.argv[3], max_shard_bytes=1 << 20, threads=1,
                  resume=len(sys.argv) > 4)
print("done", flush=True)
'''


def test_sigkill_at_random_moments_then_resume(case_tiny, tmp_path):
    save_file(moeckpt.from_hf_dir(case_tiny.path), str(tmp_path / "native.safetensors"))
    native = load_file(str(tmp_path / "native.safetensors"))  # the child's key order
    clean = tmp_path / "clean"
    moeckpt.to_hf_dir(native, clean, case_tiny.path, max_shard_bytes=1 << 20)
    want = final_files(clean)
    assert len([n for n in want if n.endswith(".safetensors")]) > 5
    # How long the child's conversion takes after "ready", to spread the kills over it.
    p = preloaded_child.Child(KILL_CHILD, tmp_path / "native.safetensors", tmp_path / "timing", case_tiny.path)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    assert p.stdout.readline().strip() == "done"
    span = time.perf_counter() - t0
    p.wait()
    p.close()
    assert final_files(tmp_path / "timing") == want
    rng = random.Random(12345)
    outcomes = {"before": 0, "partial": 0, "complete": 0}
    n = trials(16, 4)
    # Random moments over the span; under a loaded machine (pytest -n) the runs may be slower than
    # the timing run, so if no kill has landed after the first shard, later moments are tried (up to
    # 4 more): the check below is of the test's own coverage.
    trial = 0
    while trial < n or (outcomes["partial"] + outcomes["complete"] == 0 and trial < n + 4):
        delay = rng.uniform(0, span * 1.3) if trial < n else span * (1.0 + 0.5 * (trial - n))
        out = tmp_path / f"k{trial}"
        trial += 1
        args = [tmp_path / "native.safetensors", out, case_tiny.path]
        p = preloaded_child.Child(KILL_CHILD, *args)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.kill()
        p.wait()
        p.close()
        got = final_files(out)
        index = "model.safetensors.index.json"
        if index in got:
            assert got == want, "an index appeared with other contents than a clean run's"
            outcomes["complete"] += 1
            with pytest.raises(moeckpt.Error, match="nothing to resume"):  # a finished folder stays
                moeckpt.to_hf_dir(native, out, case_tiny.path, max_shard_bytes=1 << 20, resume=True)
            assert final_files(out) == want
            continue
        else:
            for name, data in got.items():  # every final-named file is a clean run's
                assert want.get(name) == data, name
            outcomes["partial" if any(n.endswith(".safetensors") for n in got) else "before"] += 1
        r = preloaded_child.run(KILL_CHILD, *args, "resume")
        assert r.returncode == 0, r.stderr
        assert final_files(out) == want
        assert not [n for n in os.listdir(out) if n.startswith(".") and n != ".moeckpt.lock"], os.listdir(out)
    print("kill outcomes", outcomes, "span", span)
    assert outcomes["partial"] + outcomes["complete"] > 0, outcomes  # some kills landed mid-write


def test_dequantize_and_quantize_dir(case_tiny, tmp_path):
    moeckpt.dequantize_dir(case_tiny.path, tmp_path / "bf16")
    ad = case_tiny.ours()
    want = ad.to_hf(ad.from_hf(case_tiny.hf), quantization=False)
    assert_same(want, load_dir(tmp_path / "bf16"), "dequantize_dir", order=False)
    assert "quantization_config" not in json.load(open(tmp_path / "bf16" / "config.json"))
    moeckpt.quantize_dir(tmp_path / "bf16", tmp_path / "fp8")
    assert_same(case_tiny.hf, load_dir(tmp_path / "fp8"), "quantize_dir", order=False)
    with pytest.raises(moeckpt.Error, match="already FP8"):
        moeckpt.quantize_dir(case_tiny.path, tmp_path / "x")
    assert not (tmp_path / "x").exists() or not os.listdir(tmp_path / "x")


def test_repo_id_from_the_hub_cache(case_tiny, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--XiaomiMiMo--MiMo-V2-Flash"
    commit = "a" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for i, name in enumerate(sorted(os.listdir(case_tiny.path))):
        (repo / "blobs" / f"b{i}").write_bytes((case_tiny.path / name).read_bytes())
        os.symlink(f"../../blobs/b{i}", repo / "snapshots" / commit / name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    got = moeckpt.from_hf_dir("XiaomiMiMo/MiMo-V2-Flash")
    assert_same(moeckpt.from_hf_dir(case_tiny.path), got, "repo id", order=False)
    with pytest.raises(moeckpt.Error, match="local Hugging Face cache"):
        moeckpt.from_hf_dir("XiaomiMiMo/MiMo-V2-Flash", revision="v2")
    with pytest.raises(moeckpt.Error, match="neither a folder nor a repo id"):
        moeckpt.dequantize_dir("XiaomiMiMo/Other", tmp_path / "d")


SIGINT_CHILD = r'''
import sys, torch, moeckpt
from safetensors.torch import load_file
native = load_file(sys.argv[1])
print("ready", flush=True)
try:
    moeckpt.to_hf_dir(native, sys.argv[2], sys.argv[3], max_shard_bytes=1 << 20, threads=1)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("done", flush=True)
'''


def test_ctrl_c_stops_at_the_next_task_and_resume_completes(case_tiny, tmp_path):
    import signal

    save_file(moeckpt.from_hf_dir(case_tiny.path), str(tmp_path / "native.safetensors"))
    native = load_file(str(tmp_path / "native.safetensors"))
    moeckpt.to_hf_dir(native, tmp_path / "clean", case_tiny.path, max_shard_bytes=1 << 20)
    want = final_files(tmp_path / "clean")
    out = tmp_path / "out"
    p = preloaded_child.Child(SIGINT_CHILD, tmp_path / "native.safetensors", out, case_tiny.path)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    rest = p.stdout.read()
    p.wait()
    p.close()
    if "done" in rest:  # finished before the signal arrived: nothing to check
        assert final_files(out) == want
        return
    assert p.returncode == 130 and "interrupted" in rest
    got = final_files(out)
    assert "model.safetensors.index.json" not in got
    assert all(want.get(n) == d for n, d in got.items())
    if out.exists():  # the interrupt may land before the folder exists (hashing, planning)
        assert not [n for n in os.listdir(out) if n.startswith(".") and ".tmp" in n]  # temporaries gone
    moeckpt.to_hf_dir(native, out, case_tiny.path, max_shard_bytes=1 << 20, resume=True)
    assert final_files(out) == want
