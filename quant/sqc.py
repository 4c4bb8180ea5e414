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


def sqc_range(wg: torch.Tensor, mask: torch.Tensor, bits, taus=DEFAULT_TAUS, alpha: float = DEFAULT_ALPHA
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped (lo, hi) [...] for groups wg [..., g] with salient mask [..., g]; bits broadcasts to [...].

    Returns exactly minmax_range(wg) where the mask is empty.
    """
    lo0, hi0 = minmax_range(wg)
    centre, half = (lo0 + hi0) / 2, (hi0 - lo0) / 2
    bits_e = torch.as_tensor(bits, device=wg.device).expand_as(lo0).unsqueeze(-1)
    weight = 1.0 + (alpha - 1.0) * mask.float()
    best_err = None
    best_lo, best_hi = lo0.clone(), hi0.clone()
    for tau in taus:
        if tau == 1.0:
            lo, hi = lo0, hi0        # exact min/max, not centre -+ half (which can differ in the last bit)
        else:
            lo, hi = centre - tau * half, centre + tau * half
        d, m = affine_params(lo, hi, bits_e.squeeze(-1))
        err = (weight * (fake_quant(wg, d.unsqueeze(-1), m.unsqueeze(-1), bits_e) - wg) ** 2).sum(dim=-1)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    has_salient = mask.any(dim=-1)
    return torch.where(has_salient, best_lo, lo0), torch.where(has_salient, best_hi, hi0)
