"""GPTQ's column loop for one column group as a single Triton kernel (CUDA only; quant/gptq.py calls it).

In torch the loop costs about ten kernel launches per column: 35,000 columns per LLaMA-7B layer make it the
largest part of a conversion on a GPU, while the arithmetic is tiny. Inside a group the (d, m) of every row are
fixed, and the rows are independent: each program holds a tile of rows x group columns in registers and walks the
columns, quantizing column i and pushing its error onto columns i+1.. through row i of the block's factor U.

The arithmetic is the torch loop's, operation for operation, with IEEE division, round-half-to-even and no fused
multiply-add, so the codes and errors are the same bits (tests/test_gptq_triton.py compares them).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:      # the CPU-only install has no Triton: quant/gptq.py keeps the torch loop
    triton = None


# SLIM2GGUF_GPTQ_LOOP=torch keeps the torch loop on a GPU too (a comparison, or a Triton that fails there)
LOOP_ENV = "SLIM2GGUF_GPTQ_LOOP"


def available(t: torch.Tensor) -> bool:
    """Whether the kernel can run on t's device: CUDA with Triton (or Triton's CPU interpreter, for tests)."""
    if triton is None or os.environ.get(LOOP_ENV) == "torch":
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    @triton.jit
    def _round_half_even(x):
        f = tl.floor(x)
        diff = x - f                           # exact for |x| < 2^23 (codes are at most 15 after the clamp)
        odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
        up = (diff > 0.5) | ((diff == 0.5) & odd)
        return tl.where(up, f + 1.0, f)

    @triton.jit
    def _gptq_group_kernel(w_ptr, u_ptr, q_ptr, err_ptr, d_ptr, m_ptr, rows, w_stride, u_stride, maxq,
                           G: tl.constexpr, BLOCK_R: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, G)
        live = r < rows
        tile = tl.load(w_ptr + r[:, None] * w_stride + c[None, :], mask=live[:, None], other=0.0)
        d = tl.load(d_ptr + r, mask=live, other=1.0)
        m = tl.load(m_ptr + r, mask=live, other=0.0)
        d_div = tl.where(d > 0.0, d, float("inf"))      # a flat group's code is 0, as in the torch loop
        for i in range(G):
            w = tl.sum(tl.where(c[None, :] == i, tile, 0.0), axis=1)        # column i as updated so far
            q = _round_half_even(tl.math.div_rn(w - m, d_div))
            q = tl.minimum(tl.maximum(q, 0.0), maxq)
            u_row = tl.load(u_ptr + i * u_stride + c, mask=c >= i, other=0.0)   # U is upper triangular
            u_ii = tl.load(u_ptr + i * u_stride + i)
            err = tl.math.div_rn(w - (m + d * q), u_ii)
            prod = err[:, None] * u_row[None, :]
            tile = tile - prod
            tl.store(q_ptr + r * G + i, q, mask=live)
            tl.store(err_ptr + r * G + i, err, mask=live)


def quantize_group_columns(W1: torch.Tensor, U1: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One group's GPTQ columns: W1 [rows, g] fp32 (the group's weights as updated so far), U1 [g, g] the
    group's block of the factor, d, m [rows] fp32 on the storage grid. Returns the float codes [rows, g] and the
    scaled errors [rows, g] that the torch loop's Err1 holds."""
    rows, g = W1.shape
    Q = torch.empty(rows, g, dtype=torch.float32, device=W1.device)
    E = torch.empty_like(Q)
    block_r = 32
    W1, U1 = W1.contiguous(), U1.contiguous()
    grid = (triton.cdiv(rows, block_r),)
    _gptq_group_kernel[grid](W1, U1, Q, E, d.contiguous(), m.contiguous(), rows, W1.stride(0), U1.stride(0),
                             float(2 ** bits - 1), G=g, BLOCK_R=block_r, enable_fp_fusion=False)
    return Q, E
