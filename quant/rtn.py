"""Round-to-nearest group quantization (the RTN baseline, and the fast quantizer of SBA's search)."""
from __future__ import annotations

import torch

from .quantizer import affine_params, dequant, group_view, minmax_range, quantize_codes
from .result import QuantizedLinear


def _round_to_nearest(W: torch.Tensor, bits: torch.Tensor, group_size: int, lo=None, hi=None):
    """Codes q [rows, G, g] and storage-grid d, m [rows, G] for W over [lo, hi] (plain min/max when not given)."""
    wg = group_view(W.float(), group_size)
    if lo is None:
        lo, hi = minmax_range(wg)
    bits = bits.to(W.device)
    d, m = affine_params(lo, hi, bits)
    return quantize_codes(wg, d.unsqueeze(-1), m.unsqueeze(-1), bits.unsqueeze(-1)), d, m


def quantize_groups(W: torch.Tensor, bits: torch.Tensor, group_size: int, lo=None, hi=None) -> QuantizedLinear:
    """Quantize every (row, group) of W [rows, cols] with bits [G] over the range [lo, hi] [rows, G]
    (plain min/max when not given), rounding to nearest."""
    q, d, m = _round_to_nearest(W, bits, group_size, lo, hi)
    return QuantizedLinear(bits.to(torch.int8).cpu(), q.reshape(W.shape).to(torch.uint8).cpu(),
                           d.cpu(), m.cpu(), group_size)


def rtn_fake_weight(W: torch.Tensor, bits: torch.Tensor, group_size: int, lo=None, hi=None) -> torch.Tensor:
    """fp32 d*q + m of `quantize_groups`, kept on W's device (used inside SBA's candidate loop)."""
    q, d, m = _round_to_nearest(W, bits, group_size, lo, hi)
    return dequant(q, d.unsqueeze(-1), m.unsqueeze(-1)).reshape(W.shape)


def fit_groups(W: torch.Tensor, bits: int, group_size: int, a: torch.Tensor | None = None) -> QuantizedLinear:
    """Every (row, group) of W at `bits`, (d, m) by the weighted fit (quant/group_fit.py) with per-column weights
    a [cols] (least squares when None), rounding to nearest: for tensors without a Hessian (the token embedding,
    whose rows are looked up, not multiplied)."""
    from .group_fit import fit_group_params

    wg = group_view(W.float(), group_size)
    w8 = torch.ones_like(wg) if a is None else a.to(wg).reshape(1, -1, group_size).expand_as(wg)
    d, m = fit_group_params(wg, w8, bits)
    q = quantize_codes(wg, d.unsqueeze(-1), m.unsqueeze(-1), bits)
    G = wg.shape[1]
    return QuantizedLinear(torch.full((G,), bits, dtype=torch.int8), q.reshape(W.shape).to(torch.uint8).cpu(),
                           d.cpu(), m.cpu(), group_size)
