"""Perplexity of a causal LM on a token stream, the way this project reports it.

The first max_tokens tokens are cut into non-overlapping windows of ctx tokens (a short tail is dropped);
each window is scored on its own (no context carried over), every token but the window's first is
predicted, and ppl = exp(mean NLL over all predicted tokens of all windows).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFINITION = ("exp(mean NLL over all predicted tokens); first max_tokens tokens of the text in non-overlapping "
              "windows of ctx tokens, each scored independently (ctx-1 predictions per window)")


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, ctx: int = 512, max_tokens: int | None = None, batch_size: int = 4,
               progress: bool = True) -> dict:
    ids = ids.reshape(-1)
    if max_tokens:
        ids = ids[:max_tokens]
    nwin = ids.numel() // ctx
    if nwin == 0:
        raise ValueError(f"evaluation text has {ids.numel()} tokens, fewer than ctx={ctx}")
    wins = ids[:nwin * ctx].reshape(nwin, ctx)
    device = next(model.parameters()).device
    nll_sum, count = 0.0, 0
    it = range(0, nwin, batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="perplexity", unit="batch")
    for i in it:
        x = wins[i:i + batch_size].to(device)
        logits = model(input_ids=x, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                               reduction="sum")
        nll_sum += float(loss)
        count += x[:, 1:].numel()
    nll = nll_sum / count
    return {"ppl": math.exp(nll), "nll": nll, "ctx": ctx, "windows": nwin, "tokens": nwin * ctx,
            "predicted_tokens": count, "ppl_definition": DEFINITION}
