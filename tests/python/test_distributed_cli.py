"""The CLI's distributed conversions under a real torchrun (``--no-python``): N workers write the
folder one process writes, byte for byte, for a plain conversion and for every EP rank's folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import trials

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MOECKPT_CLI", ROOT / "build" / "moeckpt"))

needs_cli = pytest.mark.skipif(not CLI.exists(), reason=f"the CLI is not built at {CLI}")


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def torchrun(nproc: int, port: int, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--no-python",
                        "--nproc-per-node", str(nproc), "--master-port", str(port), str(CLI), *args],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("wrote") >= nproc, r.stdout


@needs_cli
@pytest.mark.parametrize("nproc", trials([1, 2, 3, 4], [3]))
def test_torchrun_workers_write_what_one_process_writes(tiny_dir, tmp_path, nproc):
    # Every conversion command: one process, then nproc torchrun workers; the same bytes.
    shard = ["--shard-size", "250000", "--quiet"]
    native, bf16 = tmp_path / "native", tmp_path / "bf16"
    subprocess.run([str(CLI), "from-hf", str(tiny_dir), str(native), *shard], check=True)
    subprocess.run([str(CLI), "dequantize", str(tiny_dir), str(bf16), *shard], check=True)
    for i, (command, src) in enumerate([("from-hf", tiny_dir), ("to-hf", native), ("dequantize", tiny_dir),
                                        ("quantize", bf16)]):
        one, dist = tmp_path / f"{command}-one", tmp_path / f"{command}-dist"
        subprocess.run([str(CLI), command, str(src), str(one), *shard], check=True)
        torchrun(nproc, 29700 + 10 * nproc + i, command, str(src), str(dist), *shard, "--distributed",
                 "--wait", "120")
        assert files(dist) == files(one), command  # no hidden records left either


@needs_cli
def test_torchrun_every_ep_rank_folder(tiny_dir, tmp_path):
    ranks = tmp_path / "ranks"
    for r in range(3):
        subprocess.run([str(CLI), "from-hf", str(tiny_dir), str(ranks / f"ep-rank-{r}-of-3"), "--ep-size", "3",
                        "--ep-rank", str(r), "--shard-size", "250000", "--quiet"], check=True)
    dst = tmp_path / "dist"
    torchrun(2, 29790, "from-hf", str(tiny_dir), str(dst), "--ep-size", "3", "--shard-size", "250000",
             "--quiet", "--distributed", "--wait", "120")
    assert files(dst) == files(ranks)


@pytest.mark.parametrize("nproc", trials([2, 4], [4]))
def test_distributed_export_from_dtensor_shards(tiny_dir, tmp_path, nproc):
    # moeckpt.to_hf_dir(..., device_mesh=mesh) on every rank of a torchrun job (gloo, CPU): one
    # folder, byte-identical to the single-process export (checked on rank 0).
    worker = os.path.join(os.path.dirname(__file__), "export_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                        "--master-port", str(29780 + nproc), worker, str(tiny_dir), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    assert "identical over" in r.stdout
