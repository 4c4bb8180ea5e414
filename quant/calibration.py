"""Calibration token batches: random windows of a text's tokens, or text the model writes itself.

Self-generated calibration (no file given): each sample starts from the BOS token (or, if the tokenizer has
none, a token drawn uniformly from the vocabulary) and the model samples the rest at temperature 1.0 with no
top-k/top-p truncation, from a torch.Generator seeded with `seed`. The first generated token of each sample is
drawn uniformly from the vocabulary (as in LLM-QAT's data-free generation) so the samples do not all begin
alike. Same model, seed and sizes -> same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor                # [nsamples, seqlen] int64
    summary: dict = field(default_factory=dict)   # nsamples, seqlen, source, tokens, seed


def windows_from_ids(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0,
                     source: str = "text") -> CalibrationSet:
    """nsamples windows of seqlen tokens at seeded random offsets of a 1-D token stream (GPTQ's sampler)."""
    ids = ids.reshape(-1)
    if ids.numel() < seqlen + 1:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than seqlen={seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    batch = torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
    return CalibrationSet(batch, {"source": source, "nsamples": nsamples, "seqlen": seqlen,
                                  "tokens": int(batch.numel()), "seed": seed})


def isolated_windows(windows: torch.Tensor, count: int, ngram: int = 16) -> list[int]:
    """Up to `count` indices of windows, taken from the last, that share no run of `ngram` tokens with any other
    window. windows_from_ids draws its offsets independently, so windows can overlap; a window held out of
    training must not be (half) a training window. Content, not offsets (the set does not keep them): two windows
    of one stream overlap exactly when they share a run, and a repeated phrase only makes this stricter."""
    n, seqlen = windows.shape
    if count <= 0 or seqlen < ngram:
        return []
    grams = [set(map(tuple, w.unfold(0, ngram, 1).tolist())) for w in windows]
    picked: list[int] = []
    for i in reversed(range(n)):
        if len(picked) == count:
            break
        if not any(grams[i] & grams[j] for j in range(n) if j != i):
            picked.append(i)
    return sorted(picked)


@torch.no_grad()
def self_generated(model, nsamples: int, seqlen: int, seed: int = 0, bos_token_id: int | None = None,
                   batch_size: int = 16) -> CalibrationSet:
    """nsamples sequences of seqlen tokens sampled from the model itself (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    device = next(model.parameters()).device
    out = []
    for b0 in range(0, nsamples, batch_size):
        n = min(batch_size, nsamples - b0)
        if bos_token_id is not None:
            first = torch.full((n, 1), bos_token_id, dtype=torch.long)
        else:
            first = torch.randint(0, vocab, (n, 1), generator=gen)
        second = torch.randint(0, vocab, (n, 1), generator=gen)
        seq = torch.cat([first, second], dim=1)[:, :seqlen]
        o = model(input_ids=seq.to(device), use_cache=True)
        past = o.past_key_values
        while seq.shape[1] < seqlen:
            probs = torch.softmax(o.logits[:, -1, :].float().cpu(), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            seq = torch.cat([seq, nxt], dim=1)
            o = model(input_ids=nxt.to(device), past_key_values=past, use_cache=True)
            past = o.past_key_values
        out.append(seq)
    batch = torch.cat(out)
    return CalibrationSet(batch, {"source": "self-generated", "nsamples": nsamples, "seqlen": seqlen,
                                  "tokens": int(batch.numel()), "seed": seed,
                                  "sampling": "temperature 1.0, no top-k/top-p, first token after BOS uniform"})
