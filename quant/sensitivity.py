"""How much the calibration loss grows when one tensor is quantized: the second-order estimate that drives the
whole-file bit budget (`--target-bpw`, quant/bit_budget.py).

For a linear y = W x, a weight error dW changes the outputs by dy = dW x. With the loss L (token cross-entropy,
summed over a sequence) near a minimum, dL ~ 1/2 sum_i F_i E[dy_i^2], where F_i = E[(dL/dy_i)^2] is the
empirical Fisher of output channel i and E[dy_i^2] = [dW H dW^T]_ii / N with H = sum over tokens of x x^T
(GPTQ's Hessian; quant/hessian.py keeps 2 H / N). So one backward pass per calibration sequence (F, a vector per linear) and the Hessians GPTQ
builds anyway score every candidate type of every tensor on one scale, the predicted loss per token: the input
side (H) sees GPTQ's error compensation, the output side (F) sees how much the rest of the network cares.

The token embedding has no input side: its rows are looked up, so dL ~ 1/2 sum_t sum_j g_tj^2 dE[token_t, j]^2
with g the gradient at the embedding output, kept per vocabulary row seen in the calibration text.
"""
from __future__ import annotations

import torch


class OutputFisher:
    """F per linear (mean over tokens of the squared loss gradient at its output) and the embedding's squared
    gradients per seen token id."""

    def __init__(self):
        self.linear: dict[str, torch.Tensor] = {}     # module name -> [out_features]
        self.embedding_rows: torch.Tensor | None = None   # [n_seen] token ids
        self.embedding_sq: torch.Tensor | None = None     # [n_seen, hidden]: sum of g^2 over the id's tokens
        self.tokens = 0

    def linear_loss(self, name: str, dW: torch.Tensor, H: torch.Tensor, rows: torch.Tensor | None = None) -> float:
        """Predicted loss increase per token for weight error dW [out, in] of linear `name`; H its input
        Hessian as HessianAccumulator keeps it (2/N sum x x^T). rows: dW holds only these output rows (a
        uniform sample): the sum over them is scaled up to all rows."""
        dW = dW.float()
        e = ((dW @ H.float().to(dW.device)) * dW).sum(dim=1) / 2    # E[dy_i^2]
        f = self.linear[name].to(e.device)
        if rows is None:
            return 0.5 * float((f * e).sum())
        return 0.5 * float((f[rows.to(e.device)] * e).sum()) * f.numel() / rows.numel()

    def embedding_loss(self, dE_rows: torch.Tensor) -> float:
        """Predicted loss increase per token for the embedding error of the seen rows (dE_rows [n_seen, hidden],
        in the order of embedding_rows)."""
        return 0.5 * float((self.embedding_sq * dE_rows.float() ** 2).sum()) / self.tokens


def output_fisher(model, input_ids: torch.Tensor, linear_names: list[str], device=None,
                  progress: bool = False) -> OutputFisher:
    """One forward and backward pass per sequence of input_ids [n, seqlen] through the full-precision model
    (weights frozen, on `device`), collecting OutputFisher for the named nn.Linear modules (e.g.
    "model.layers.0.mlp.down_proj", "lm_head") and the input embedding."""
    device = torch.device(device or "cpu")
    fisher = OutputFisher()
    sums = {n: None for n in linear_names}
    emb_sq: dict[int, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    current_ids: list[torch.Tensor] = []

    def linear_hook(name):
        def fwd(mod, args, out):
            def grad_hook(g):
                s = g.detach().float().pow(2).reshape(-1, g.shape[-1]).sum(dim=0)
                sums[name] = s if sums[name] is None else sums[name] + s
            out.register_hook(grad_hook)
        return fwd

    def embed_hook(mod, args, out):
        out = out.detach().requires_grad_(True)   # the frozen model's graph starts here

        def grad_hook(g):
            ids = current_ids[0].reshape(-1)
            sq = g.detach().float().pow(2).reshape(ids.numel(), -1).cpu()
            uniq, inv = torch.unique(ids.cpu(), return_inverse=True)
            acc = torch.zeros(uniq.numel(), sq.shape[1]).index_add_(0, inv, sq)
            for tid, row in zip(uniq.tolist(), acc):
                emb_sq[tid] = row if tid not in emb_sq else emb_sq[tid] + row
        out.register_hook(grad_hook)
        return out

    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    try:
        for n in linear_names:
            handles.append(modules[n].register_forward_hook(linear_hook(n)))
        handles.append(model.get_input_embeddings().register_forward_hook(embed_hook))
        seqs = range(input_ids.shape[0])
        if progress:
            from tqdm import tqdm
            seqs = tqdm(seqs, desc="output Fisher (backward passes)", unit="seq")
        for i in seqs:
            ids = input_ids[i:i + 1].to(device)
            current_ids[:] = [ids]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                     reduction="sum")
            loss.backward()
            fisher.tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
        model.to("cpu")
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    fisher.linear = {n: s / fisher.tokens for n, s in sums.items() if s is not None}
    ids = sorted(emb_sq)
    fisher.embedding_rows = torch.tensor(ids, dtype=torch.long)
    fisher.embedding_sq = torch.stack([emb_sq[i] for i in ids]) if ids else torch.zeros(0)
    return fisher
