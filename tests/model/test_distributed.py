"""Two gloo processes: codebook EMA statistics are all-reduced, so both ranks end with identical codebooks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evotok.model.config import QuantizerConfig
from evotok.model.quantizer import ResidualQuantizer


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial codebooks on both ranks
    q = ResidualQuantizer(QuantizerConfig(num_depths=4, codebook_size=64, dim=8, warmup_steps=2, restart_threshold=0.5))
    q.train()
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(12):
        q(torch.randn(4, 4, 4, 8, generator=g) * (1 + rank))
    torch.save({k: v.clone() for k, v in q.state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_codebooks_are_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
    # and training moved them away from the shared initial state
    torch.manual_seed(0)
    init = ResidualQuantizer(QuantizerConfig(num_depths=4, codebook_size=64, dim=8)).state_dict()
    assert not torch.equal(init["codebooks.0.weight"], s0["codebooks.0.weight"])
