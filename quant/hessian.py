"""H = 2/N * sum x^T x over calibration tokens (GPTQ), and the damped Cholesky factor of H^-1."""
from __future__ import annotations

import torch


class HessianAccumulator:
    """Running H for one linear layer; inputs x [..., cols] arrive batch by batch (a forward hook feeds it).

    Kept as a running mean (rescale, then add) so H has the same scale whatever the number of batches.
    """

    def __init__(self, cols: int, device=None):
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=device)
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        n = x.shape[0]
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = x * (2.0 / self.nsamples) ** 0.5
        self.H.addmm_(x.t(), x)


def inverse_hessian_cholesky(H: torch.Tensor, percdamp: float = 0.01, max_tries: int = 6
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor U of (H + damp*I)^-1, as GPTQ uses it; returns (U, dead columns mask).

    Dead columns (no activation ever reached them) get H_jj = 1 so H stays invertible; their weights cannot
    influence the output and the caller may zero them. damp = percdamp * mean(diag H); if H is still not
    positive definite (rank-deficient calibration), the damping is multiplied by 10 and we try again.
    """
    H = H.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    base = percdamp * torch.mean(torch.diag(H)).clamp(min=1e-8)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = base
    for _ in range(max_tries):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0 and torch.isfinite(U).all():
                return U, dead
        damp = damp * 10
    raise RuntimeError("Hessian is not positive definite even with heavy damping")
