"""SBA, Salience-Determined Bit Allocation: the one place where a column group's bit-width is chosen.

Groups are sorted by salience. Candidate k gives the k most salient groups b+1 bits and the k least salient
b-1 bits (two pointers walking in from both ends of the sorted list), so every candidate averages exactly b
bits and every row has the same byte size. Each candidate is scored by the KL divergence between the layer's
output distribution softmax(X W^T) and softmax(X W_hat^T) on calibration inputs X; the lowest score wins
(ties: the smaller k, i.e. the less mixed allocation). The map holds for every output row.
"""
from __future__ import annotations

from typing import Callable

import torch


def candidate_bits(order: torch.Tensor, k: int, b: int) -> torch.Tensor:
    """bits [G] for candidate k, with `order` the group indices sorted by decreasing salience."""
    G = order.numel()
    bits = torch.full((G,), b, dtype=torch.int8)
    if k:
        bits[order[:k]] = b + 1        # top pointer: the k most salient groups
        bits[order[G - k:]] = b - 1    # bottom pointer: the k least salient groups
    return bits


def allocate_group_bits(group_sal: torch.Tensor, b: int, score: Callable[[torch.Tensor], float],
                        max_k: int | None = None) -> tuple[torch.Tensor, dict]:
    """Choose bits [G] (int8, average exactly b) for groups with salience group_sal [G].

    score(bits) -> float, lower is better (KL on calibration activations). Uniform salience gives nothing to
    rank, so the result is all-b without a search (SBA is a no-op there).
    """
    if not 2 <= b <= 3:
        raise ValueError("SBA needs an average of 2 or 3 bits (group widths b-1..b+1 within 1..4)")
    sal = group_sal.double().cpu()
    G = sal.numel()
    if G < 2 or float(sal.max() - sal.min()) <= 1e-9 * float(sal.abs().mean()):
        return torch.full((G,), b, dtype=torch.int8), {"k": 0, "scores": []}
    order = torch.argsort(sal, descending=True, stable=True)
    kmax = G // 2 if max_k is None else min(max_k, G // 2)
    scores = []
    best_k, best = 0, None
    for k in range(kmax + 1):
        s = float(score(candidate_bits(order, k, b)))
        scores.append(s)
        if best is None or s < best:
            best_k, best = k, s
    return candidate_bits(order, best_k, b), {"k": best_k, "scores": scores}


class OutputKLScore:
    """SBA's score as a callable for allocate_group_bits: output_kl of W against W_hat, where W_hat takes group j's
    columns from fake[bits[j]] (the fake-quant weight at each width, [rows, cols] each).

    The candidate walk changes two groups per step, so the logits X W_hat^T are kept (float64, so a long walk adds
    no drift) and updated by the columns of the groups whose width changed since the last call: all G/2 + 1
    candidates of a matrix cost about two products X W^T instead of G/2 + 1 (the 8960-wide down_proj of a
    1.5B model has 70 groups of 128)."""

    def __init__(self, X: torch.Tensor, W: torch.Tensor, fake: dict[int, torch.Tensor], group_size: int,
                 start_bits: torch.Tensor):
        self.X, self.fake, self.g = X.float(), fake, group_size
        self.ref_logp = torch.log_softmax(self.X @ W.t(), dim=-1)
        self.bits = start_bits.clone()
        cols = start_bits.to(torch.long).repeat_interleave(group_size).to(W.device)
        W_hat = torch.zeros_like(W)
        for b, Wb in fake.items():
            W_hat = torch.where(cols == b, Wb, W_hat)
        self.logits = (self.X @ W_hat.t()).double()

    def __call__(self, bits: torch.Tensor) -> float:
        for j in torch.nonzero(bits != self.bits).flatten().tolist():
            cols = slice(j * self.g, (j + 1) * self.g)
            delta = self.fake[int(bits[j])][:, cols] - self.fake[int(self.bits[j])][:, cols]
            self.logits += (self.X[:, cols] @ delta.t()).double()
        self.bits = bits.clone()
        logq = torch.log_softmax(self.logits, dim=-1).float()
        return float((self.ref_logp.exp() * (self.ref_logp - logq)).sum(dim=-1).mean())


def output_kl(X: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor, ref_logp: torch.Tensor | None = None
              ) -> float:
    """Mean over tokens of KL(softmax(X W^T) || softmax(X W_hat^T)), softmax over output features."""
    if ref_logp is None:
        ref_logp = torch.log_softmax(X @ W.t(), dim=-1)
    logq = torch.log_softmax(X @ W_hat.t(), dim=-1)
    return float((ref_logp.exp() * (ref_logp - logq)).sum(dim=-1).mean())
