"""Quantize one linear layer's weight with RTN, GPTQ or SliM-LLM (SBA + SQC + GPTQ): plain tensors in and out."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .config import QuantConfig
from .gptq import gptq_quantize, minmax_range_fn
from .hessian import inverse_hessian_cholesky
from .quantizer import group_view
from .result import QuantizedLinear
from .rtn import quantize_groups, rtn_fake_weight
from .salience import element_salience, group_salience
from .sba import allocate_group_bits, output_kl
from .sqc import salient_mask, sqc_range


@contextmanager
def single_thread():
    """GPTQ's column loop is thousands of small ops: with several OpenMP threads (worse, on a shared machine)
    the synchronisation costs 10-50x the work. One thread is faster for this part."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sqc_range_fn(config: QuantConfig):
    """GPTQ range_fn for SQC: salience of the (already error-updated) group, then the weighted tau search."""
    def fn(wg: torch.Tensor, bits: int, u_diag: torch.Tensor):
        s = wg ** 2 / u_diag.pow(2).unsqueeze(0)
        return sqc_range(wg, salient_mask(s, config.sqc_z), bits, config.sqc_taus, config.sqc_alpha)
    return fn


def quantize_linear(W: torch.Tensor, H: torch.Tensor | None, X_kl: torch.Tensor | None, config: QuantConfig,
                    group_size: int) -> tuple[QuantizedLinear, dict]:
    """W [rows, cols]; H [cols, cols] (not needed for rtn); X_kl [tokens, cols] calibration inputs for SBA's
    KL score; group_size: this tensor's (config.group_size is the preference). Returns the QuantizedLinear and
    a small info dict (chosen k, KL scores)."""
    bits, sba, sqc = config.bits, config.sba, config.sqc
    W = W.float()
    G = W.shape[1] // group_size
    uniform = torch.full((G,), bits, dtype=torch.int8)
    if config.method == "rtn":
        return quantize_groups(W, uniform, group_size), {}
    with single_thread():
        U, dead = inverse_hessian_cholesky(H, config.percdamp)
        if not (sba or sqc):     # GPTQ, or SliM with both of its parts off
            return gptq_quantize(W, U, uniform, group_size, minmax_range_fn, dead), {}

    info = {}
    group_bits = uniform
    if sba:
        s = element_salience(W, U)
        wg = group_view(W, group_size)
        mask = salient_mask(group_view(s, group_size), config.sqc_z) if sqc else None
        # Fake weights of every candidate width once (b-1, b, b+1); a candidate picks its groups' columns.
        fake = {}
        for b in (bits - 1, bits, bits + 1):
            bb = torch.full((G,), b, dtype=torch.int8)
            if sqc:
                lo, hi = sqc_range(wg, mask, b, config.sqc_taus, config.sqc_alpha)
                fake[b] = rtn_fake_weight(W, bb, group_size, lo, hi)
            else:
                fake[b] = rtn_fake_weight(W, bb, group_size)
        X = X_kl.float()
        ref_logp = torch.log_softmax(X @ W.t(), dim=-1)

        def score(cand: torch.Tensor) -> float:
            col_bits = cand.repeat_interleave(group_size).to(W.device)
            W_hat = torch.where(col_bits == bits - 1, fake[bits - 1],
                                torch.where(col_bits == bits + 1, fake[bits + 1], fake[bits]))
            return output_kl(X, W, W_hat, ref_logp)

        group_bits, info = allocate_group_bits(group_salience(s, group_size), bits, score)
    range_fn = sqc_range_fn(config) if sqc else minmax_range_fn
    with single_thread():
        return gptq_quantize(W, U, group_bits, group_size, range_fn, dead), info
