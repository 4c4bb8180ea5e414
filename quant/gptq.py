"""GPTQ with a bit-width per column group: quantize column by column, push each column's error onto the
columns not yet quantized through the Cholesky factor of H^-1 (Frantar et al., reference gptq.py).

A group's (d, m) are chosen when GPTQ reaches its first column, from the weights *as updated by the error
feedback so far* (like the reference with groupsize), and they are rounded onto the storage grid before any
column uses them: the torch result is exactly what a decoder reconstructs.
"""
from __future__ import annotations

from typing import Callable

import torch

from .quantizer import affine_params, dequant, minmax_range, quantize_codes
from .result import QuantizedLinear

# params_fn(w_group [rows, g], bits, u_diag [g], first column) -> storage-grid (d, m) [rows]: min/max, SQC's
# salience-weighted range, or the importance-weighted fit (quant/group_fit.py)
ParamsFn = Callable[[torch.Tensor, int, torch.Tensor, int], tuple]


def minmax_params(wg: torch.Tensor, bits: int, u_diag: torch.Tensor, col: int):
    return affine_params(*minmax_range(wg), bits)


def gptq_quantize(W: torch.Tensor, U: torch.Tensor, bits: torch.Tensor, group_size: int,
                  params_fn: ParamsFn = minmax_params, dead: torch.Tensor | None = None,
                  blocksize: int = 128) -> QuantizedLinear:
    """W [rows, cols] fp32, U = upper chol of damped H^-1 [cols, cols], bits [G] -> QuantizedLinear."""
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
    blocksize = max(g, (blocksize // g) * g)   # blocks hold whole groups: a group's params see its block
    udiag = torch.diag(U)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            gi = col // g
            if col % g == 0:
                b = bits_l[gi]
                d, m = params_fn(W1[:, i:i + g], b, udiag[col:col + g], col)
                D[:, gi], M[:, gi] = d, m
                d32, m32 = d, m
            w = W1[:, i]
            q = quantize_codes(w, d32, m32, b)
            Q[:, col] = q.to(torch.uint8)
            err = (w - dequant(q, d32, m32)) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return QuantizedLinear(bits.to(torch.int8).cpu(), Q.cpu(), D.cpu(), M.cpu(), g)
