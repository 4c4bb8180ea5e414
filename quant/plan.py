"""The measuring pass of a whole-file bit budget: every candidate type of every tensor, scored by its predicted
loss (quant/sensitivity.py), before anything is quantized for real.

One pass through the full-precision model, a decoder layer at a time as in quant/pipeline.py (but without
quantizing: each layer's inputs are the full-precision ones): each linear's Hessian, then its weight error at
each candidate type -- SLIM b bits by GPTQ with the weighted group fit (uniform b, SBA left to the real pass) and
each stock type by the caller's quantizer (llama.cpp's own, with diag(H) as the importance vector, as
llama-quantize with an imatrix) -- scored with the output Fisher of one backward pass per Fisher sequence. The
token embedding and the output head get the stock candidates, and SLIM too when they are not tied (the head by
GPTQ on the final norm's output; the embedding, which has no Hessian, by the weighted fit alone). quant/ knows no file types: the caller names
the stock candidates and supplies their fake-quant function.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .config import QuantConfig
from .hessian import inverse_hessian_cholesky
from .layer import quantize_linear
from .pipeline import (EMBEDDING, HEAD as OUTPUT, LINEAR_NAMES, _capture_inputs, capture_layer0_inputs, decoder_layers,
                       head_hessian)
from .blockwise import layer_forward
from .quantizer import pick_group_size
from .rtn import fit_groups
from .sensitivity import output_fisher

SLIM_BITS = (2, 3)

# stock_candidates(hf name, rows, cols) -> stock type names to try (none: SLIM only)
StockCandidates = Callable[[str, int, int], list]
# stock_fake(type, W [rows, cols] fp32, importance [cols] or None) -> what the file's tensor decodes to
StockFake = Callable[[str, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class PlanStats:
    """losses[hf name][type] (predicted loss per token), importance[hf name] (mean x^2 per input column, the
    imatrix of the stock quantizers), group_size[hf name] (the SLIM tensors' group), shapes."""

    losses: dict[str, dict[str, float]] = field(default_factory=dict)
    importance: dict[str, torch.Tensor] = field(default_factory=dict)
    group_size: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    tied_output: bool = False


def tied_output(model) -> bool:
    """Whether the output head shares the token embedding's weight. A model whose weights are still on the meta
    device (a streamed conversion before its layers load) has no storage to compare: its config says."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None:
        return False
    a, b = head.weight, embed.weight
    if a is b:
        return True
    if a.is_meta or b.is_meta:
        return bool(getattr(model.config, "tie_word_embeddings", False))
    return a.data_ptr() == b.data_ptr()


def measure_candidates(model, input_ids: torch.Tensor, config: QuantConfig, stock_candidates: StockCandidates,
                       stock_fake: StockFake, *, fisher_samples: int = 8, sample_rows: int = 512, device=None,
                       progress: bool = True) -> PlanStats:
    """PlanStats of every decoder linear, the token embedding and the output head (see the module docstring).

    sample_rows: GPTQ's rows are independent given H, so a SLIM candidate's loss is estimated from this many
    uniformly sampled output rows (seeded by config.seed), scaled to the whole matrix: the measuring pass then
    costs a fraction of a conversion on wide models. Stock candidates are exact (ggml quantizes fast)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    layers = decoder_layers(model)
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    tied = tied_output(model)
    names = [f"model.layers.{li}.{n}" for li in range(len(layers)) for n in LINEAR_NAMES] + ["lm_head"]
    fisher = output_fisher(model, input_ids[:fisher_samples], names, device, progress)
    stats = PlanStats(tied_output=tied)
    slim_config = replace(config, sba=False, method="slim" if config.method == "slim+" else config.method)

    def score_stock(key: str, fisher_name: str | None, W: torch.Tensor, H: torch.Tensor | None, imp, rows_seen=None):
        for t in stock_candidates(key, *W.shape):
            dW = stock_fake(t, W, imp) - W
            loss = 0.0
            if fisher_name is not None:
                loss += fisher.linear_loss(fisher_name, dW.to(device), H)
            if rows_seen is not None:
                loss += fisher.embedding_loss(dW[rows_seen])
            stats.losses.setdefault(key, {})[t] = loss

    row_gen = torch.Generator().manual_seed(config.seed + 1)

    def score_slim(key: str, fisher_name: str, W: torch.Tensor, H: torch.Tensor, g: int):
        """SLIM b for b in SLIM_BITS: GPTQ with the weighted fit, on sample_rows rows when W has more."""
        rows = None
        if W.shape[0] > sample_rows:
            rows = torch.randperm(W.shape[0], generator=row_gen)[:sample_rows].sort().values
        Ws = W if rows is None else W[rows.to(W.device)]
        factor = inverse_hessian_cholesky(H, slim_config.percdamp)     # once for every width tried
        for b in SLIM_BITS:
            ql, _ = quantize_linear(Ws, H, None, replace(slim_config, bits=b), g, factor)
            stats.losses.setdefault(key, {})[f"slim{b}"] = fisher.linear_loss(
                fisher_name, ql.dequantize().to(W.device) - Ws, H, rows)

    batches = capture_layer0_inputs(model, input_ids, config.batch_size, device)
    it = range(len(layers))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="measure types per tensor", unit="layer")
    kl_gen = torch.Generator().manual_seed(config.seed)
    for li in it:
        layer = layers[li].to(device)
        mods = {n: layer.get_submodule(n) for n in LINEAR_NAMES}
        hs = _capture_inputs(layer, mods, batches, slim_config, kl_gen, device)
        for n, mod in mods.items():
            key = f"model.layers.{li}.{n}.weight"
            W = mod.weight.data.float()
            H = hs[n][0]
            g = pick_group_size(W.shape[1], config.group_size)
            if g is None:
                continue          # not SLIM-able: the fallback type, outside the budget's choice
            imp = torch.diag(H).float().cpu() / 2
            stats.importance[key], stats.group_size[key], stats.shapes[key] = imp, g, tuple(W.shape)
            fname = f"model.layers.{li}.{n}"
            score_slim(key, fname, W, H, g)
            score_stock(key, fname, W.cpu(), H, imp)
        del hs
        with torch.no_grad():
            batches = [(layer_forward(layer, h, kw), kw) for h, kw in batches]
        layers[li] = layer.to("cpu") if device.type != "cpu" else layer
    H_out, _ = head_hessian(model, batches, device)       # the head reads the final norm's output
    imp_out = torch.diag(H_out).float().cpu() / 2
    seen = fisher.embedding_rows
    E = embed.weight.data.float()
    if tied:
        stats.importance[EMBEDDING], stats.shapes[EMBEDDING] = imp_out, tuple(E.shape)
        score_stock(EMBEDDING, "lm_head", E, H_out, imp_out, rows_seen=seen)
    else:
        # untied: each may also be SLIM (the embedding by the weighted fit alone: it has no Hessian; the head by
        # GPTQ on the final norm's output, like a decoder linear)
        stats.importance[EMBEDDING], stats.shapes[EMBEDDING] = None, tuple(E.shape)
        # only the looked-up rows change the calibration loss: score them alone (the types quantize by row)
        for t in stock_candidates(EMBEDDING, *E.shape):
            dE = stock_fake(t, E[seen], None) - E[seen]
            stats.losses.setdefault(EMBEDDING, {})[t] = fisher.embedding_loss(dE)
        g = pick_group_size(E.shape[1], config.group_size)
        if g is not None:
            stats.group_size[EMBEDDING] = g
            for b in SLIM_BITS:
                dE = fit_groups(E[seen], b, g).dequantize() - E[seen]
                stats.losses[EMBEDDING][f"slim{b}"] = fisher.embedding_loss(dE)
        Wo = head.weight.data.float()
        stats.importance[OUTPUT], stats.shapes[OUTPUT] = imp_out, tuple(Wo.shape)
        score_stock(OUTPUT, "lm_head", Wo, H_out, imp_out)
        g = pick_group_size(Wo.shape[1], config.group_size)
        if g is not None:
            stats.group_size[OUTPUT] = g
            score_slim(OUTPUT, "lm_head", Wo.to(device), H_out, g)
    return stats
