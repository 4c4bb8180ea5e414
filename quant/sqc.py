"""SQC, Salience-Weighted Quantizer Calibration: pick each (row, group)'s clipping range.

Inside a group a few weights carry most of the salience (|z-score| of s above a threshold). A plain min/max
range wastes levels on outliers that are often *not* the salient weights, while clipping too hard destroys
the salient ones. SQC scales the group's range about its centre by tau (tau = 1 is plain min/max) and keeps
the tau with the smallest salience-weighted error: sum over non-salient e^2 + alpha * sum over salient e^2,
with e measured after d and m are rounded to the storage grid.

When a (row, group) has no salient weight, there is nothing to weigh and SQC keeps plain min/max (tau = 1);
so `sqc_range` with an empty mask is exactly `minmax_range`.
"""
from __future__ import annotations

import torch

from .quantizer import affine_params, fake_quant, minmax_range

# tau grid: 1.0 first so that ties keep plain min/max; down to 0.2 because a 1-bit (binary) group's best
# levels sit near +-0.8 sigma, far inside its min/max; up to 1.1 because rounding d to fp16 can favour it.
DEFAULT_TAUS = (1.0,) + tuple(round(0.2 + 0.05 * i, 2) for i in range(19) if round(0.2 + 0.05 * i, 2) != 1.0)
DEFAULT_Z = 2.0        # |z| above which a weight is locally salient (~2-4% of a group on real layers)
DEFAULT_ALPHA = 2.0    # weight of the salient weights' error


def salient_mask(s: torch.Tensor, z_threshold: float = DEFAULT_Z) -> torch.Tensor:
    """Bool [..., g]: |s - mean| / std > z over each group's last dim; a flat group (std 0) has none."""
    mean = s.mean(dim=-1, keepdim=True)
    std = s.std(dim=-1, keepdim=True, unbiased=False)
    z = (s - mean).abs() / torch.where(std > 0, std, torch.ones_like(std))
    return (z > z_threshold) & (std > 0)


# elements of one tau-batch tensor [taus, ..., g]; bounds memory on big layers (64M floats = 256 MiB)
TAU_BATCH_ELEMENTS = 1 << 26


def sqc_range(wg: torch.Tensor, mask: torch.Tensor, bits, taus=DEFAULT_TAUS, alpha: float = DEFAULT_ALPHA
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped (lo, hi) [...] for groups wg [..., g] with salient mask [..., g]; bits broadcasts to [...].

    Returns exactly minmax_range(wg) where the mask is empty. The taus are scored in batches (one tensor op
    for many taus instead of one per tau: this search runs once per group inside GPTQ, so op count matters);
    the first tau with the lowest error wins, so ties keep plain min/max (tau = 1 comes first).
    """
    lo0, hi0 = minmax_range(wg)
    centre, half = (lo0 + hi0) / 2, (hi0 - lo0) / 2
    bits_t = torch.as_tensor(bits, device=wg.device).expand_as(lo0)
    weight = 1.0 + (alpha - 1.0) * mask.float()
    taus_t = torch.tensor(taus, dtype=torch.float32, device=wg.device)
    per_batch = max(1, TAU_BATCH_ELEMENTS // max(wg.numel(), 1))
    errs, los, his = [], [], []
    for i in range(0, len(taus), per_batch):
        t = taus_t[i:i + per_batch].reshape(-1, *([1] * lo0.dim()))        # [T, 1, ...]
        lo, hi = centre - t * half, centre + t * half                       # [T, ...]
        exact = t == 1.0                 # exact min/max, not centre -+ half (which can differ in the last bit)
        lo, hi = torch.where(exact, lo0, lo), torch.where(exact, hi0, hi)
        d, m = affine_params(lo, hi, bits_t)
        err = (weight * (fake_quant(wg, d.unsqueeze(-1), m.unsqueeze(-1), bits_t.unsqueeze(-1)) - wg) ** 2
               ).sum(dim=-1)
        errs.append(err), los.append(lo), his.append(hi)
    err, lo, hi = torch.cat(errs), torch.cat(los), torch.cat(his)
    best = err.argmin(dim=0, keepdim=True)                                  # first minimum: ties keep tau 1
    best_lo, best_hi = lo.gather(0, best).squeeze(0), hi.gather(0, best).squeeze(0)
    has_salient = mask.any(dim=-1)
    return torch.where(has_salient, best_lo, lo0), torch.where(has_salient, best_hi, hi0)
