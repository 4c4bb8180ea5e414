"""Importance-weighted (d, m) fit of each (row, group): the scale and offset that minimise sum_i a_i (w_i - w^_i)^2.

Min/max (and SQC's clipped min/max) spend the levels on the range; what the layer output feels is the error
weighted by how strongly each input column is driven, a_i = [H]_ii or 1/[chol(H^-1)]_ii^2, times SQC's weight on
locally salient weights. llama.cpp's Q2_K gets most of its quality from this kind of fit (two-bit-levers.md).

For b >= 2 bits, per (row, group):
  1. candidate scales: the range [lo, hi] shrunk about its centre by each tau of a grid (tau = 1: min/max);
  2. codes q by rounding with the candidate's storage-grid (d, m);
  3. (d, m) by weighted least squares given q (a 2x2 solve), rounded to the storage grid, codes re-rounded;
     repeated `refine` times;
  4. the candidate (before or after the solve) with the lowest weighted error on the storage grid wins.
A 1-bit group has two levels m and m + d: the best weighted split is contiguous in sorted order, so every split
point is tried with each side's weighted mean as its level (exact weighted 2-means in 1-D).

The min/max candidate is always scored, so a fit is never worse (weighted) than min/max on the same group.
Shapes: w [..., g], a [..., g] (broadcastable), bits broadcastable to [...]. Returns fp16 d, m [...].
"""
from __future__ import annotations

import torch

from .quantizer import affine_params, dequant, quantize_codes, round_scale_fp16

# shrink factors of the min/max range about its centre; 1.0 first so that ties keep min/max
FIT_TAUS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
FIT_REFINE = 2
# elements of one candidate batch [taus, ..., g]: bounds memory on big layers (64M floats = 256 MiB)
_BATCH_ELEMENTS = 1 << 26


def weighted_error(w: torch.Tensor, a: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits) -> torch.Tensor:
    """sum_i a_i (w_i - fake_quant(w_i))^2 over the last dim, for storage-grid d, m [...]."""
    bits = torch.as_tensor(bits, device=w.device)
    return _codes_error(w, a, quantize_codes(w, d.unsqueeze(-1), m.unsqueeze(-1), bits.unsqueeze(-1)), d, m)


def _codes_error(w, a, q, d, m) -> torch.Tensor:
    """weighted_error for codes q already rounded with d, m [...] (the fit scores and then solves with them)."""
    return (a * (w - dequant(q, d.unsqueeze(-1), m.unsqueeze(-1))) ** 2).sum(dim=-1)


def _storage(d: torch.Tensor, m: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d, m) onto the storage grid: d >= 0 with the width's tag parity, m fp16."""
    return round_scale_fp16(d.clamp(min=0), bits), m.float().clamp(-65504, 65504).half()


def _least_squares(w, a, q, d_old, m_old, sa, sx):
    """Weighted LS (d, m) for fixed codes q; keeps the old pair where the system is singular (one level used).
    sa = sum a, sx = sum a*w: the same for every candidate, computed once by the caller."""
    aq = a * q
    sq, sqq, sqx = aq.sum(-1), (aq * q).sum(-1), (aq * w).sum(-1)
    det = sa * sqq - sq * sq
    ok = det > 1e-12 * (sa * sqq).clamp(min=1e-30)
    safe = torch.where(ok, det, torch.ones_like(det))
    d = (sa * sqx - sq * sx) / safe
    m = (sqq * sx - sq * sqx) / safe
    ok = ok & (d > 0)
    return torch.where(ok, d, d_old.float()), torch.where(ok, m, m_old.float())


def _fit_multibit(w, a, bits, taus, refine):
    lo0, hi0 = w.amin(dim=-1), w.amax(dim=-1)
    centre, half = (lo0 + hi0) / 2, (hi0 - lo0) / 2
    best_d, best_m = affine_params(lo0, hi0, bits)
    best_err = weighted_error(w, a, best_d, best_m, bits)
    sa, sx = a.sum(-1), (a * w).sum(-1)
    per_batch = max(1, _BATCH_ELEMENTS // max(w.numel(), 1))
    for i in range(0, len(taus), per_batch):
        t = torch.tensor(taus[i:i + per_batch], dtype=torch.float32, device=w.device)
        t = t.reshape(-1, *([1] * lo0.dim()))                                  # [T, 1, ...]
        d, m = affine_params(centre - t * half, centre + t * half, bits)       # [T, ...]
        for r in range(refine + 1):     # the candidate, then each least-squares refinement of it
            q = quantize_codes(w, d.unsqueeze(-1), m.unsqueeze(-1), bits.unsqueeze(-1))
            err = _codes_error(w, a, q, d, m)                                  # [T, ...]
            e_min, idx = err.min(dim=0)
            better = e_min < best_err
            pick = lambda x: x.float().gather(0, idx.unsqueeze(0)).squeeze(0)
            best_d = torch.where(better, pick(d).half(), best_d)
            best_m = torch.where(better, pick(m).half(), best_m)
            best_err = torch.where(better, e_min, best_err)
            if r < refine:      # the codes just scored are the ones the solve keeps fixed
                d, m = _storage(*_least_squares(w, a, q, d, m, sa, sx), bits)
    return best_d, best_m


def _fit_one_bit(w, a):
    """Exact weighted 2-means over the sorted group: levels = weighted means left/right of the best split."""
    ws, order = torch.sort(w, dim=-1)
    a_s = torch.gather(a.expand_as(w), -1, order)
    ca, cx, cxx = a_s.cumsum(-1), (a_s * ws).cumsum(-1), (a_s * ws * ws).cumsum(-1)
    ta, tx, txx = ca[..., -1:], cx[..., -1:], cxx[..., -1:]
    la, lx, lxx = ca[..., :-1], cx[..., :-1], cxx[..., :-1]                  # left part: elements 0..k
    ra, rx, rxx = ta - la, tx - lx, txx - lxx
    eps = 1e-30
    sse = (lxx - lx * lx / la.clamp(min=eps)) + (rxx - rx * rx / ra.clamp(min=eps))
    valid = (la > 0) & (ra > 0)
    sse = torch.where(valid, sse, torch.full_like(sse, float("inf")))
    k = sse.argmin(dim=-1, keepdim=True)
    lo = (lx.gather(-1, k) / la.gather(-1, k).clamp(min=eps)).squeeze(-1)
    hi = (rx.gather(-1, k) / ra.gather(-1, k).clamp(min=eps)).squeeze(-1)
    none = ~valid.any(dim=-1)                              # all importance on one side / flat group
    lo = torch.where(none, w.amin(dim=-1), lo)
    hi = torch.where(none, w.amax(dim=-1), hi)
    one = torch.ones_like(lo, dtype=torch.int32)
    return _storage(hi - lo, lo, one)


# groups per chunk: the candidate tensors [taus, chunk, g] of a whole matrix do not fit in cache, and this fit is
# memory-bound; ~0.5M elements per candidate tensor measured fastest on a 2-core EPYC (one thread)
_CHUNK_ELEMENTS = 1 << 19
# on a GPU, small chunks are kernel launches: a 7B gate projection took ~500 chunks of ~200 launches each (2 s of
# a 2.6 s matrix on an H200). 64M elements per candidate tensor (256 MiB, ~2.5 GiB with the temporaries) make it
# a few chunks per matrix
_CHUNK_ELEMENTS_CUDA = 1 << 26


def fit_group_params(w: torch.Tensor, a: torch.Tensor, bits, taus=FIT_TAUS, refine: int = FIT_REFINE
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Storage-grid (d, m) [...] for groups w [..., g] with importance a [..., g] (>= 0) and widths bits."""
    shape = w.shape[:-1]
    g = w.shape[-1]
    w = w.float().reshape(-1, g)
    a = a.float().expand(*shape, g).reshape(-1, g)
    bits = torch.as_tensor(bits, device=w.device).to(torch.int32).expand(shape).reshape(-1)
    n = w.shape[0]
    budget = _CHUNK_ELEMENTS_CUDA if w.is_cuda else _CHUNK_ELEMENTS
    chunk = max(1, budget // (g * max(1, len(taus))))
    d = torch.empty(n, dtype=torch.float16, device=w.device)
    m = torch.empty(n, dtype=torch.float16, device=w.device)
    for i in range(0, n, chunk):
        sl = slice(i, min(i + chunk, n))
        d[sl], m[sl] = _fit_chunk(w[sl], a[sl], bits[sl], taus, refine)
    return d.reshape(shape), m.reshape(shape)


def _fit_chunk(w, a, bits, taus, refine):
    d, m = _fit_multibit(w, a, bits, taus, refine)
    one = bits == 1
    if bool(one.any()):
        d1, m1 = _fit_one_bit(w, a)
        # the two-level fit competes with the scale search's best on the same weighted error
        e_multi = weighted_error(w, a, d, m, bits)
        e_one = weighted_error(w, a, d1, m1, bits)
        use = one & (e_one < e_multi)
        d, m = torch.where(use, d1, d), torch.where(use, m1, m)
    return d, m
