"""The fused GPTQ group kernel (quant/gptq_triton.py) against the torch column loop: the same codes, scales and
offsets bit for bit. Runs on a GPU with Triton, or on the CPU under Triton's interpreter (TRITON_INTERPRET=1 with
Triton installed); skipped where neither is there (the CPU-only install has no Triton)."""
from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from quant import gptq_triton  # noqa: E402
from quant.config import QuantConfig  # noqa: E402
from quant.gptq import gptq_quantize  # noqa: E402
from quant.hessian import HessianAccumulator, inverse_hessian_cholesky  # noqa: E402
from quant.layer import group_params_fn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU, or TRITON_INTERPRET=1 for Triton's CPU interpreter")


def _layer(rows: int, cols: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4096, cols, generator=g) * (torch.rand(cols, generator=g) * 3 + 0.1)
    X[:, 5] = 0                                           # a dead column
    acc = HessianAccumulator(cols)
    acc.add_batch(X)
    W = torch.randn(rows, cols, generator=g) * 0.02
    W[:3, 64:96] = 0                                      # flat groups in a few rows (d = 0)
    return W, acc.H


@pytest.mark.parametrize("rows,cols,group_size", [(40, 256, 128), (33, 384, 64), (130, 512, 128)])
@pytest.mark.parametrize("fit", ["minmax", "weighted"])
def test_fused_group_loop_matches_torch_loop(rows, cols, group_size, fit):
    W, H = _layer(rows, cols, seed=rows + cols)
    W, H = W.to(DEVICE), H.to(DEVICE)
    U, dead = inverse_hessian_cholesky(H)
    G = cols // group_size
    bits = torch.tensor([(1, 2, 3, 4)[i % 4] for i in range(G)], dtype=torch.int8)
    params = group_params_fn(QuantConfig(method="slim", bits=2, fit=fit), torch.diag(H), sqc=True)
    assert gptq_triton.available(W)
    # the torch loop with blocks of one group, as the kernel path does them
    ref = gptq_quantize(W, U, bits, group_size, params, dead, blocksize=group_size, fused_loop=False)
    got = gptq_quantize(W, U, bits, group_size, params, dead)
    assert torch.equal(got.q, ref.q)
    assert torch.equal(got.d, ref.d) and torch.equal(got.m, ref.m)
