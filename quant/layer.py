"""Quantize one linear layer's weight with RTN, GPTQ or SliM-LLM (SBA + SQC + GPTQ): plain tensors in and out."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .config import QuantConfig
from .gptq import ParamsFn, gptq_quantize, minmax_params
from .group_fit import fit_group_params
from .hessian import inverse_hessian_cholesky
from .phase_clock import PhaseClock
from .quantizer import affine_params, dequant, group_view, quantize_codes
from .result import QuantizedLinear
from .rtn import quantize_groups, rtn_fake_weight
from .salience import element_salience, group_salience
from .sba import OutputKLScore, allocate_group_bits
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


def group_params_fn(config: QuantConfig, hdiag: torch.Tensor, sqc: bool) -> ParamsFn:
    """GPTQ's per-group (d, m), chosen from the group's weights as error feedback has updated them.

    weighted: quant/group_fit.py with importance diag(H) (or the OBS weight) per column, times SQC's weight on
    locally salient weights when SQC is on. minmax: SQC's salience-weighted clipping search, or plain min/max."""
    def salient(wg, u_diag):
        return salient_mask(wg ** 2 / u_diag.pow(2).unsqueeze(0), config.sqc_z)

    if config.fit == "weighted":
        def fit(wg, bits, u_diag, col):
            a = column_importance(config, hdiag[col:col + wg.shape[1]], u_diag).unsqueeze(0).expand_as(wg)
            if sqc:
                a = a * salience_weight(config, salient(wg, u_diag))
            return fit_group_params(wg, a, bits)
        return fit
    if sqc:
        return lambda wg, bits, u_diag, col: affine_params(
            *sqc_range(wg, salient(wg, u_diag), bits, config.sqc_taus, config.sqc_alpha), bits)
    return minmax_params


def column_importance(config: QuantConfig, hdiag: torch.Tensor, u_diag: torch.Tensor) -> torch.Tensor:
    """How strongly each input column drives the output: diag(H) (llama.cpp's imatrix) or 1/[chol(H^-1)]_jj^2."""
    return hdiag if config.importance == "hdiag" else 1.0 / u_diag.pow(2)


def salience_weight(config: QuantConfig, mask: torch.Tensor) -> torch.Tensor:
    """SQC's extra weight (alpha) on locally salient weights, 1 elsewhere."""
    return 1.0 + (config.sqc_alpha - 1.0) * mask.float()


def static_group_order(hdiag: torch.Tensor, group_size: int) -> torch.Tensor:
    """Act-order with static groups: a column permutation that moves whole groups (the file keeps its layout),
    strongest summed diag(H) first, so GPTQ settles the groups that matter most while most columns can still
    absorb their error."""
    G = hdiag.numel() // group_size
    order = torch.argsort(hdiag.reshape(G, group_size).sum(dim=1), descending=True, stable=True)
    return (order.unsqueeze(1) * group_size + torch.arange(group_size, device=order.device)).reshape(-1)


def group_fit_weights(wg: torch.Tensor, U: torch.Tensor, hdiag: torch.Tensor, config: QuantConfig, mask
                      ) -> torch.Tensor:
    """The weighted fit's a [rows, G, g] for a whole matrix's groups wg: column importance, times SQC's weight on
    the locally salient weights (mask [rows, G, g], or None)."""
    a = column_importance(config, hdiag, torch.diag(U)).reshape(1, -1, wg.shape[-1]).expand_as(wg)
    return a * salience_weight(config, mask) if mask is not None else a


def candidate_weights(W, U, hdiag, config: QuantConfig, group_size: int, mask) -> dict:
    """SBA's candidates: the fake-quant weight at each width b-1, b, b+1 for every group (round to nearest with
    the same group fit GPTQ will use), computed once; a candidate bit map picks its groups' columns."""
    wg = group_view(W, group_size)
    if config.fit == "weighted":
        a = group_fit_weights(wg, U, hdiag, config, mask)
    fake = {}
    for b in (config.bits - 1, config.bits, config.bits + 1):
        if config.fit == "weighted":
            d, m = fit_group_params(wg, a, b)
            fake[b] = dequant(quantize_codes(wg, d.unsqueeze(-1), m.unsqueeze(-1), b),
                              d.unsqueeze(-1), m.unsqueeze(-1)).reshape(W.shape)
        elif mask is not None:
            lo, hi = sqc_range(wg, mask, b, config.sqc_taus, config.sqc_alpha)
            fake[b] = rtn_fake_weight(W, torch.full((wg.shape[1],), b, dtype=torch.int8), group_size, lo, hi)
        else:
            fake[b] = rtn_fake_weight(W, torch.full((wg.shape[1],), b, dtype=torch.int8), group_size)
    return fake


def rtn_group_fit(W: torch.Tensor, U: torch.Tensor, hdiag: torch.Tensor, group_bits: torch.Tensor,
                  config: QuantConfig, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Storage-grid (d, m) [rows, G] of each group at its width, by the weighted fit on the weights as they are
    (no error feedback): where SliM+'s block-wise training starts."""
    wg = group_view(W, group_size)
    mask = salient_mask(group_view(element_salience(W, U), group_size), config.sqc_z) if config.sqc else None
    return fit_group_params(wg, group_fit_weights(wg, U, hdiag, config, mask),
                            group_bits.to(W.device).unsqueeze(0).expand(wg.shape[:2]))


def sba_group_bits(W: torch.Tensor, U: torch.Tensor, hdiag: torch.Tensor, X_kl: torch.Tensor, config: QuantConfig,
                   group_size: int) -> tuple[torch.Tensor, dict]:
    """SBA's bit map [G] for W (uniform config.bits when SBA is off) and its info (chosen k, KL scores)."""
    bits = config.bits
    if not config.sba:
        return torch.full((W.shape[1] // group_size,), bits, dtype=torch.int8), {}
    s = element_salience(W, U)
    mask = salient_mask(group_view(s, group_size), config.sqc_z) if config.sqc else None
    fake = candidate_weights(W, U, hdiag, config, group_size, mask)
    score = OutputKLScore(X_kl, W, fake, group_size, torch.full((W.shape[1] // group_size,), bits, dtype=torch.int8))
    return allocate_group_bits(group_salience(s, group_size), bits, score)


def joint_sba_bits(Ws: list[torch.Tensor], U: torch.Tensor, hdiag: torch.Tensor, X_kl: torch.Tensor,
                   config: QuantConfig, group_size: int) -> tuple[torch.Tensor, dict]:
    """SBA's one bit map [G] for several matrices that read the same input (q/k/v: one H, one set of KL rows),
    chosen for their rows stacked [W_0; W_1; ...] as if they were one matrix: group salience summed over all rows,
    the KL score over the stacked outputs. Each matrix is then quantized with it (quantize_linear's group_bits),
    so all carry the same tags and the file can hold them as one tensor."""
    return sba_group_bits(torch.cat([W.float() for W in Ws], dim=0), U, hdiag, X_kl, config, group_size)


def quantize_linear(W: torch.Tensor, H: torch.Tensor | None, X_kl: torch.Tensor | None, config: QuantConfig,
                    group_size: int, factor: tuple[torch.Tensor, torch.Tensor] | None = None,
                    clock: PhaseClock | None = None, group_bits: torch.Tensor | None = None
                    ) -> tuple[QuantizedLinear, dict]:
    """W [rows, cols]; H [cols, cols] (not needed for rtn); X_kl [tokens, cols] calibration inputs for SBA's
    KL score; group_size: this tensor's (config.group_size is the preference); factor: H's
    inverse_hessian_cholesky(H, config.percdamp) when the caller already has it (several quantizations of one H).
    clock: adds the seconds of the factorisation ("cholesky"), bit allocation ("sba") and GPTQ ("gptq").
    group_bits: a bit map [G] chosen elsewhere (SBA over several matrices that read the same input, e.g. q/k/v
    concatenated: joint_sba_bits): used as it is, SBA does not run (X_kl is then not needed).
    Returns the QuantizedLinear and a small info dict (chosen k, KL scores; empty when group_bits is given)."""
    W = W.float()
    if config.method == "rtn":
        if group_bits is None:
            group_bits = torch.full((W.shape[1] // group_size,), config.bits, dtype=torch.int8)
        return quantize_groups(W, group_bits, group_size), {}
    phase = clock if clock is not None else PhaseClock()
    hdiag = torch.diag(H).float()
    with phase("cholesky"):
        U, dead = factor if factor is not None else inverse_hessian_cholesky(H, config.percdamp)   # all threads
    info = {}
    if group_bits is None:
        with phase("sba"):
            group_bits, info = sba_group_bits(W, U, hdiag, X_kl, config, group_size)
    with phase("gptq"):
        return _gptq(W, H, U, dead, hdiag, group_bits, config, group_size), info


def _gptq(W, H, U, dead, hdiag, group_bits, config: QuantConfig, group_size: int) -> QuantizedLinear:
    """GPTQ with SBA's bit map, in the natural column order or act-order with static groups."""
    if not config.act_order:
        with single_thread():
            return gptq_quantize(W, U, group_bits, group_size, group_params_fn(config, hdiag, config.sqc),
                                 dead)
    # the permutation lives on the CPU like the bit map and GPTQ's result; W and H are indexed on their device
    perm = static_group_order(hdiag.cpu(), group_size)
    gperm = perm[::group_size] // group_size
    perm_dev = perm.to(W.device)
    Up, deadp = inverse_hessian_cholesky(H[perm_dev][:, perm_dev], config.percdamp)
    with single_thread():
        ql = gptq_quantize(W[:, perm_dev], Up, group_bits[gperm], group_size,
                           group_params_fn(config, hdiag[perm_dev], config.sqc), deadp)
    inv, ginv = torch.argsort(perm), torch.argsort(gperm)
    return QuantizedLinear(ql.bits[ginv], ql.q[:, inv], ql.d[:, ginv], ql.m[:, ginv], group_size)
