"""GPTQ with a bit-width per column group: quantize column by column, push each column's error onto the
columns not yet quantized through the Cholesky factor of H^-1 (Frantar et al., reference gptq.py).

A group's (d, m) are chosen when GPTQ reaches its first column, from the weights *as updated by the error
feedback so far* (like the reference with groupsize), and they are rounded onto the storage grid before any
column uses them: the torch result is exactly what a decoder reconstructs.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import gptq_triton
from .quantizer import affine_params, minmax_range
from .result import QuantizedLinear

# params_fn(w_group [rows, g], bits, u_diag [g], first column) -> storage-grid (d, m) [rows]: min/max, SQC's
# salience-weighted range, or the importance-weighted fit (quant/group_fit.py)
ParamsFn = Callable[[torch.Tensor, int, torch.Tensor, int], tuple]


def minmax_params(wg: torch.Tensor, bits: int, u_diag: torch.Tensor, col: int):
    return affine_params(*minmax_range(wg), bits)


def gptq_quantize(W: torch.Tensor, U: torch.Tensor, bits: torch.Tensor, group_size: int,
                  params_fn: ParamsFn = minmax_params, dead: torch.Tensor | None = None,
                  blocksize: int = 128, fused_loop: bool = True) -> QuantizedLinear:
    """W [rows, cols] fp32, U = upper chol of damped H^-1 [cols, cols], bits [G] -> QuantizedLinear.
    fused_loop: on a GPU with Triton, each group's column loop is one kernel (quant/gptq_triton.py)."""
    W = W.clone().float()
    rows, cols = W.shape
    g = group_size
    G = cols // g
    if dead is not None:
        W[:, dead] = 0           # no input ever reaches these columns: any value is as good, 0 is simplest
    bits_l = [int(b) for b in bits.tolist()]
    Q = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
    D = torch.zeros(rows, G, dtype=torch.float16, device=W.device)
    M = torch.zeros(rows, G, dtype=torch.float16, device=W.device)
    # the fused kernel does one group per launch, so its blocks are groups (the same as the torch loop's for g128;
    # for g64 the lazy update between a block's two groups moves from the loop into the matmul: rounding only)
    fused = gptq_triton.available(W) and fused_loop
    blocksize = g if fused else max(g, (blocksize // g) * g)   # blocks hold whole groups: a group's params see
    group_params = _group_params_into(D, M, params_fn, bits_l, torch.diag(U), g)   # its block
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        if fused:
            d, m, b = group_params(W1, i1)
            Q1, Err1 = gptq_triton.quantize_group_columns(W1, U1, d.float(), m.float(), b)
        else:
            Q1, Err1 = _column_loop(W1, U1, i1, g, group_params)
        Q[:, i1:i2] = Q1.to(torch.uint8)
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return QuantizedLinear(bits.to(torch.int8).cpu(), Q.cpu(), D.cpu(), M.cpu(), g)


def _group_params_into(D, M, params_fn: ParamsFn, bits_l: list[int], udiag, g: int):
    """group_params(w_group, first column) -> (d, m, bits) of that group, stored into D, M as it goes."""
    def group_params(wg: torch.Tensor, col: int):
        gi, b = col // g, bits_l[col // g]
        d, m = params_fn(wg, b, udiag[col:col + g], col)
        D[:, gi], M[:, gi] = d, m
        return d, m, b
    return group_params


def _column_loop(W1: torch.Tensor, U1: torch.Tensor, i1: int, g: int, group_params
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch loop over one block's columns (W1 updated in place): float codes [rows, block] and the scaled
    errors Err1 the lazy update pushes onto the columns after the block."""
    Q1 = torch.empty_like(W1)      # float codes of the block, cast once: fewer small ops per column
    Err1 = torch.empty_like(W1)
    inf = torch.tensor(float("inf"), device=W1.device)
    for i in range(W1.shape[1]):
        if (i1 + i) % g == 0:
            d, m, b = group_params(W1[:, i:i + g], i1 + i)
            d32, m32 = d.float(), m.float()
            # quantize_codes' arithmetic, hoisted out of the column loop: dividing by inf gives the code 0 of a
            # flat group (d == 0)
            d_div = torch.where(d32 > 0, d32, inf)
            maxq = float(2 ** b - 1)
        # the loop runs once per column (4096-28672 times a matrix): each op here is a kernel launch on a GPU
        w = W1[:, i]
        q = torch.div(w - m32, d_div).round_().clamp_(0, maxq)
        Q1[:, i] = q
        err = (w - torch.addcmul(m32, d32, q)).div_(U1[i, i])    # d*q is exact: one rounding, as dequant
        W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
        Err1[:, i] = err
    return Q1, Err1
