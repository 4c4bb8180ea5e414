"""Synthetic SLIM-quantized tensors for the format/decoder/writer tests (no quant/ pipeline needed).

A quick round-to-nearest with SBA-shaped random bit allocations and scales on the SLIM grid (bit 0 of fp16 d
fixed by the group's bit-width), producing quant.result.QuantizedLinear like the real pipeline does.
"""
from __future__ import annotations

import numpy as np
import torch

from quant.result import QuantizedLinear


def sba_bits(n_groups: int, avg_bits: int, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """k groups at avg+1, k at avg-1, the rest at avg (random positions): the average is exactly avg."""
    k = int(rng.integers(0, n_groups // 2 + 1)) if k is None else k
    bits = np.full(n_groups, avg_bits, dtype=np.int8)
    order = rng.permutation(n_groups)
    bits[order[:k]] = avg_bits + 1
    bits[order[k:2 * k]] = avg_bits - 1
    return bits


def scale_on_grid(d: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """fp16 scales >= 0 with the lowest mantissa bit set to (bits-1) & 1, as quant's round_scale_fp16 does."""
    dh = np.abs(np.asarray(d, dtype=np.float32)).astype(np.float16).view(np.uint16)
    low = ((np.asarray(bits, dtype=np.uint16) - 1) & 1)[None, :]
    return ((dh & np.uint16(0xFFFE)) | low).astype(np.uint16).view(np.float16)


def rtn(weight: torch.Tensor, avg_bits: int, group_size: int, seed: int = 0,
        bits: np.ndarray | None = None) -> QuantizedLinear:
    """Round-to-nearest of a [rows, cols] weight with an SBA-shaped random bit map."""
    rng = np.random.default_rng(seed)
    w = weight.detach().float().cpu().numpy()
    rows, cols = w.shape
    n_groups = cols // group_size
    bits = sba_bits(n_groups, avg_bits, rng) if bits is None else np.asarray(bits, dtype=np.int8)
    wg = w.reshape(rows, n_groups, group_size)
    lo, hi = wg.min(-1), wg.max(-1)
    levels = (1 << bits.astype(np.int64)) - 1
    d = scale_on_grid((hi - lo) / levels[None, :], bits)
    m = lo.astype(np.float16)
    df = np.where(d.astype(np.float32) > 0, d.astype(np.float32), 1.0)
    q = np.rint((wg - m.astype(np.float32)[..., None]) / df[..., None])
    q = np.clip(q, 0, levels[None, :, None]).astype(np.uint8).reshape(rows, cols)
    return QuantizedLinear(torch.from_numpy(bits), torch.from_numpy(q), torch.from_numpy(d),
                           torch.from_numpy(m), group_size)


def random_quantized(rows: int, cols: int, avg_bits: int, group_size: int, seed: int = 0) -> QuantizedLinear:
    """RTN of a random normal weight (scaled like a real layer)."""
    g = torch.Generator().manual_seed(seed)
    return rtn(torch.randn(rows, cols, generator=g) * 0.05, avg_bits, group_size, seed)
