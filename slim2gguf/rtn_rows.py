"""SLIM rows straight from float weights by round-to-nearest, no calibration: the one builder that tests,
benchmarks and stand-in files use (real files come from `convert`).

    random_sba_bits(n_groups, avg_bits, rng, k)   an SBA-shaped bit map: k groups at b+1, k at b-1, at random
    rtn_quantized(weight, bits, group_size)       the quantizer's own RTN (quant.rtn): min/max ranges, d rounded
                                                  onto the tag grid by quant.quantizer.round_scale_fp16
    rtn_rows(weight, st, bits)                    the same, packed as SLIM rows (format.pack_quantized)

The scale rule is the one every SLIM writer follows (docs/format.md, "Scale rounding"); ggml's
quantize_row_slim*_ref follows it too, so for the same bit map it writes the same bytes as rtn_rows.
"""
from __future__ import annotations

import numpy as np
import torch

from quant.result import QuantizedLinear
from quant.rtn import quantize_groups
from quant.sba import candidate_bits

from .format import SlimType, pack_quantized


def random_sba_bits(n_groups: int, avg_bits: int, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """SBA's shape (quant.sba.candidate_bits) over a random group order: k groups at avg+1, k at avg-1, the
    rest at avg, so the average is exactly avg. k None: drawn from 0..n_groups//2. int8 [n_groups]."""
    k = int(rng.integers(0, n_groups // 2 + 1)) if k is None else k
    return candidate_bits(torch.from_numpy(rng.permutation(n_groups)), k, avg_bits).numpy()


def rtn_quantized(weight, bits, group_size: int) -> QuantizedLinear:
    """Round-to-nearest of a [rows, cols] weight (torch or numpy) with bit-widths bits [G] per column group."""
    w = weight if torch.is_tensor(weight) else torch.from_numpy(np.asarray(weight, dtype=np.float32))
    return quantize_groups(w.detach().float().cpu(), torch.as_tensor(np.asarray(bits)).to(torch.int8), group_size)


def rtn_rows(weight, st: SlimType, bits) -> np.ndarray:
    """rtn_quantized packed as SLIM rows of type st: uint8 [rows, st.row_bytes(cols)]."""
    return pack_quantized(rtn_quantized(weight, bits, st.group_size), st)
