"""Residual quantizer invariants: exact code->latent, residual falls with depth, EMA and restart rules."""

from __future__ import annotations

import itertools

import torch

from evotok.model.config import QuantizerConfig
from evotok.model.quantizer import ResidualQuantizer, VQCodebook


def _data(n: int = 2048, dim: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(16, dim, generator=g) * 3
    return centers[torch.randint(0, 16, (n,), generator=g)] + torch.randn(n, dim, generator=g)


def test_decoding_codes_gives_the_quantized_latent_exactly() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer(QuantizerConfig(num_depths=6, codebook_size=64, dim=8, warmup_steps=0)).eval()
    latent = torch.randn(3, 4, 4, 8)
    out = q(latent)
    for d in range(1, 7):
        assert torch.equal(q.codes_to_latent(out.codes[..., :d]), out.cumulative[d - 1])


def test_null_code_is_zero_vector() -> None:
    q = ResidualQuantizer(QuantizerConfig(num_depths=2, codebook_size=16, dim=4)).eval()
    codes = torch.full((1, 2, 2, 2), 16)
    assert torch.equal(q.codes_to_latent(codes), torch.zeros(1, 2, 2, 4))


def test_residual_norm_falls_with_every_depth_after_ema_fitting() -> None:
    torch.manual_seed(0)
    cfg = QuantizerConfig(num_depths=8, codebook_size=32, dim=8, warmup_steps=0, decay=0.9)
    q = ResidualQuantizer(cfg)
    data = _data()
    q.train()
    for _ in range(40):
        q(data[torch.randperm(len(data))[:512]].reshape(8, 8, 8, 8))
    q.eval()
    x = data[:512].reshape(8, 8, 8, 8)
    out = q(x)
    norms = [float((x - out.cumulative[d]).norm(dim=-1).mean()) for d in range(cfg.num_depths)]
    base = float(x.norm(dim=-1).mean())
    assert norms[0] < base
    assert all(b < a for a, b in itertools.pairwise(norms)), norms


def test_nearest_matches_brute_force_and_first_index_on_ties() -> None:
    torch.manual_seed(0)
    book = VQCodebook(50, 6)
    r = torch.randn(300, 6)
    brute = ((r[:, None, :] - book.codes[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(book.nearest(r), brute)
    book.weight[7] = book.weight[3]  # exact duplicate: ties go to the first index
    r2 = book.weight[3].repeat(5, 1)
    assert torch.equal(book.nearest(r2), torch.full((5,), 3))


def test_ema_update_follows_the_reference_formulas() -> None:
    torch.manual_seed(0)
    k, dim = 8, 4
    cfg = QuantizerConfig(num_depths=1, codebook_size=k, dim=dim, decay=0.9, warmup_steps=0, restart_unused=False)
    book = VQCodebook(k, dim)
    book.cluster_size_ema.fill_(2.0)
    ema0, cs0 = book.embed_ema.clone(), book.cluster_size_ema.clone()
    r = torch.randn(20, dim)
    idx = book.nearest(r)
    book.ema_update(r, idx, cfg)
    counts = torch.bincount(idx, minlength=k).float()
    sums = torch.zeros(k, dim).index_add_(0, idx, r)
    cs = 0.9 * cs0 + 0.1 * counts
    ema = 0.9 * ema0 + 0.1 * sums
    assert torch.allclose(book.cluster_size_ema, cs)
    assert torch.allclose(book.embed_ema, ema)
    n = cs.sum()
    norm = (n * (cs + cfg.eps) / (n + k * cfg.eps)).clamp(min=1.0)
    assert torch.allclose(book.weight[:k], ema / norm[:, None])
    assert torch.equal(book.weight[k], torch.zeros(dim))  # null row untouched
    assert int(book.step) == 1


def test_warmup_freezes_the_sum_ema() -> None:
    cfg = QuantizerConfig(num_depths=1, codebook_size=8, dim=4, warmup_steps=3, restart_unused=False)
    book = VQCodebook(8, 4)
    ema0 = book.embed_ema.clone()
    r = torch.randn(32, 4)
    for _ in range(3):
        book.ema_update(r, book.nearest(r), cfg)
        assert torch.equal(book.embed_ema, ema0)
    book.ema_update(r, book.nearest(r), cfg)
    assert not torch.equal(book.embed_ema, ema0)


def test_dead_code_restart_reseeds_only_unused_codes_from_residuals() -> None:
    torch.manual_seed(0)
    k, dim = 16, 4
    cfg = QuantizerConfig(num_depths=1, codebook_size=k, dim=dim, decay=0.99, warmup_steps=0, restart_threshold=1.0)
    book = VQCodebook(k, dim)
    book.cluster_size_ema.fill_(5.0)
    book.cluster_size_ema[:4] = 0.0  # codes 0..3 are dead
    r = torch.randn(64, dim) + 100.0  # residuals far from every code: nearest assignment is arbitrary
    idx = book.nearest(r)
    alive_before = book.embed_ema[4:].clone()
    book.ema_update(r, idx, cfg)
    dead = torch.arange(4)
    # restarted codes hold one of the current residuals exactly and have count 1
    for i in dead.tolist():
        if int((idx == i).sum()) == 0:
            assert torch.isclose(book.cluster_size_ema[i], torch.tensor(1.0))
            assert bool((book.embed_ema[i] - r).abs().sum(1).min() < 1e-5)
    # live codes followed the EMA, not the restart
    untouched = [i for i in range(4, k) if int((idx == i).sum()) == 0]
    for i in untouched:
        assert torch.allclose(book.embed_ema[i], 0.99 * alive_before[i - 4])


def test_commitment_loss_averages_all_depths() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer(QuantizerConfig(num_depths=3, codebook_size=16, dim=4)).eval()
    x = torch.randn(2, 2, 2, 4)
    out = q(x)
    expected = sum(((x - out.cumulative[d]) ** 2).mean() for d in range(3)) / 3
    assert torch.allclose(out.commit_loss, expected)


def test_count_floor_zero_gives_the_plain_ema_mean() -> None:
    k, dim = 4, 2
    cfg = QuantizerConfig(num_depths=1, codebook_size=k, dim=dim, decay=0.5, warmup_steps=0, restart_unused=False,
                          count_floor=0.0, eps=0.0)
    book = VQCodebook(k, dim)
    book.cluster_size_ema.fill_(0.0)
    book.embed_ema.fill_(0.0)
    r = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    idx = torch.tensor([0, 0])
    book.ema_update(r, idx, cfg)
    # count 2 -> ema 1.0; sum (4, 6) -> ema (2, 3); mean = (2, 3) even though the count is below 1 elsewhere
    assert torch.allclose(book.weight[0], torch.tensor([2.0, 3.0]))
