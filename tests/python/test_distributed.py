"""A real 2-process torch.distributed job (gloo, CPU) with a DeviceMesh "ep" of size 2."""
from __future__ import annotations

import torch.multiprocessing as mp

import dist_worker


def test_two_process_ep_mesh_gives_dtensor_shards(tiny_dir, tmp_path):
    # Each process checks its DTensor shards (placement, global shape, local data, all-gather) and
    # parity with the reference adapter under the same mesh; an assertion in either fails the test.
    mp.spawn(dist_worker.run, args=(2, str(tiny_dir), str(tmp_path / "store")), nprocs=2, join=True)
