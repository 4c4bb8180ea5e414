"""quant/group_fit.py: the importance-weighted (d, m) fit of a group."""
from __future__ import annotations

import itertools

import pytest
import torch

from quant.group_fit import fit_group_params, weighted_error
from quant.quantizer import affine_params, minmax_range, scale_tag_bits


def _groups(rows=64, g=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, g, generator=gen) * 0.02
    w[:, 3] *= 6                                               # an outlier column, as activations make them
    a = torch.rand(rows, g, generator=gen) ** 3 + 1e-3         # importance spread over three decades
    return w, a


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_weighted_fit_never_worse_than_minmax(bits):
    w, a = _groups()
    d, m = fit_group_params(w, a, bits)
    d0, m0 = affine_params(*minmax_range(w), bits)
    e_fit, e_mm = weighted_error(w, a, d, m, bits), weighted_error(w, a, d0, m0, bits)
    assert (e_fit <= e_mm).all()
    assert float(e_fit.sum()) < 0.9 * float(e_mm.sum())       # and it does find something on such groups


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_fit_is_on_the_storage_grid(bits):
    w, a = _groups(rows=16)
    d, m = fit_group_params(w, a, bits)
    assert d.dtype == torch.float16 and m.dtype == torch.float16
    assert torch.isfinite(d.float()).all() and torch.isfinite(m.float()).all() and (d.float() >= 0).all()
    assert (scale_tag_bits(d) == (bits - 1) & 1).all()       # d carries the width's tag bit (docs/format.md)


def test_per_group_widths_broadcast():
    w, a = _groups(rows=8)
    wg, ag = w.reshape(8, 4, 16), a.reshape(8, 4, 16)
    bits = torch.tensor([1, 2, 3, 2])
    d, m = fit_group_params(wg, ag, bits)
    for j, b in enumerate(bits.tolist()):
        dj, mj = fit_group_params(wg[:, j], ag[:, j], b)
        assert torch.equal(d[:, j], dj) and torch.equal(m[:, j], mj)


def test_one_bit_fit_matches_brute_force_two_means():
    """The two-level fit is the exact weighted 2-means: no assignment of 8 weights to two levels does better
    (before the fp16 rounding of the levels, which both sides then share)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(1, 8, generator=gen)
    a = torch.rand(1, 8, generator=gen) + 0.1
    d, m = fit_group_params(w, a, 1)
    best = float("inf")
    for assign in itertools.product([0, 1], repeat=8):
        s = torch.tensor(assign, dtype=torch.bool)
        if s.all() or not s.any():
            continue
        err = 0.0
        for side in (s, ~s):
            mu = float((a[0, side] * w[0, side]).sum() / a[0, side].sum())
            err += float((a[0, side] * (w[0, side] - mu) ** 2).sum())
        best = min(best, err)
    got = float(weighted_error(w, a, d, m, 1))
    assert got <= best * 1.01 + 1e-6                             # fp16 levels cost at most a rounding


def test_flat_and_single_level_groups():
    w = torch.full((2, 16), 0.5)
    w[1, 0] = 0.75
    a = torch.ones_like(w)
    for bits in (1, 2, 3):
        d, m = fit_group_params(w, a, bits)
        assert float(weighted_error(w, a, d, m, bits)[0]) == 0.0
        assert torch.isfinite(d.float()).all()
