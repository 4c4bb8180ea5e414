"""Affine group quantizer w ~ d*q + m on the storage grid (docs/format.md): the one place that rounds d and m.

Every quantized weight in this project is produced by `fake_quant` with d and m that already went through
`round_scale_fp16` / fp16, so the torch weight is bit-for-bit what a decoder of the file reconstructs.
"""
from __future__ import annotations

import torch

FP16_MAX_FINITE_BITS = 0x7BFF  # largest finite fp16 pattern; d never reaches it for real weights


def round_scale_fp16(d: torch.Tensor, bits) -> torch.Tensor:
    """Round d >= 0 to the nearest fp16 whose lowest mantissa bit equals (bits-1) & 1.

    The file stores the group's bit-width tag in that bit (docs/format.md), so only every other fp16 value is
    a legal scale. We round to fp16 first; if the parity is wrong, the two neighbours h-1 and h+1 both have the
    right parity and we take the one nearer to d (ties: the smaller, which never overflows).
    """
    d = d.float().clamp(min=0.0, max=60000.0)
    tag = ((torch.as_tensor(bits, device=d.device).to(torch.int32) - 1) & 1).expand_as(d)
    h = d.half().view(torch.int16).to(torch.int32)
    wrong = (h & 1) != tag
    lo = (h - 1).clamp(min=0)        # h == 0 has parity 0, so it is only "wrong" for tag 1: lo is unused then
    hi = (h + 1).clamp(max=FP16_MAX_FINITE_BITS)
    as_f = lambda x: x.to(torch.int16).view(torch.float16).float()
    lo_ok = (lo & 1) == tag
    pick_lo = lo_ok & ((d - as_f(lo)).abs() <= (as_f(hi) - d).abs())
    h = torch.where(wrong, torch.where(pick_lo, lo, hi), h)
    return h.to(torch.int16).view(torch.float16)


def scale_tag_bits(d: torch.Tensor) -> torch.Tensor:
    """The (bits-1)&1 tag a rounded scale carries (for tests and the format writer)."""
    return d.view(torch.int16).to(torch.int32) & 1


def affine_params(lo: torch.Tensor, hi: torch.Tensor, bits) -> tuple[torch.Tensor, torch.Tensor]:
    """Storage-grid (d, m) for the range [lo, hi] with 2^bits levels: d = (hi-lo)/(2^bits-1), m = lo.

    bits broadcasts against lo/hi (per group). A 1-bit range gives the two levels m and m+d.
    """
    bits = torch.as_tensor(bits, device=lo.device)
    maxq = (2 ** bits.to(torch.int32) - 1).float()
    d = round_scale_fp16((hi - lo).clamp(min=0) / maxq, bits)
    m = lo.float().half()
    return d, m


def quantize_codes(w: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits) -> torch.Tensor:
    """Nearest code q in [0, 2^bits-1] for w given fp16 d, m (broadcasting). d == 0 (flat group) -> q = 0."""
    bits = torch.as_tensor(bits, device=w.device)
    maxq = (2 ** bits.to(torch.int32) - 1).float()
    d32 = d.float()
    # a flat group's code is 0: dividing by inf gives (-)0 there without a second pass over the weights
    d_div = torch.where(d32 > 0, d32, torch.full_like(d32, float("inf")))
    q = torch.div(w.float() - m.float(), d_div).round_().clamp_(min=0)
    return torch.minimum(q, maxq)


def dequant(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """d*q + m in fp32: d*q is exact (11-bit d, 4-bit q), so there is a single rounding, as in every decoder."""
    return d.float() * q.float() + m.float()


def fake_quant(w: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits) -> torch.Tensor:
    return dequant(quantize_codes(w, d, m, bits), d, m)


def minmax_range(wg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain min/max calibration of groups [..., g] -> (lo, hi) [...]."""
    return wg.amin(dim=-1), wg.amax(dim=-1)


def group_view(W: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, cols = W.shape
    if cols % group_size:
        raise ValueError(f"input width {cols} is not a multiple of the group size {group_size}")
    return W.reshape(rows, cols // group_size, group_size)


def pick_group_size(cols: int, preferred: int = 128) -> int | None:
    """128 by default, 64 where the input width is not divisible by 128 (SmolLM2: 576 = 9*64), per tensor.

    None when neither divides the width: such a weight stays unquantized (the storage types hold g64/g128
    only, and a weight the file cannot hold must not be fake-quantized in torch either)."""
    for g in (preferred, 64):
        if cols % g == 0:
            return g
    return None
