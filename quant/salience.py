"""OBS salience: how much the layer output suffers if a weight is removed, s_ij = w_ij^2 / [chol(H^-1)]_jj^2.

[U]_jj^2 (U = upper Cholesky of H^-1) is the OBS denominator [H^-1]_jj of column j after the columns before it
are fixed, which is exactly the order GPTQ quantizes in. Salience clusters in columns (activation outliers),
so summing it over a column group ranks groups for SBA.
"""
from __future__ import annotations

import torch


def element_salience(W: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """s [rows, cols] = W^2 / diag(U)^2."""
    return W.float() ** 2 / torch.diag(U).float().pow(2).unsqueeze(0)


def group_salience(s: torch.Tensor, group_size: int) -> torch.Tensor:
    """[G]: salience summed over all rows and the group's columns (the tag is shared by all rows)."""
    rows, cols = s.shape
    return s.reshape(rows, cols // group_size, group_size).sum(dim=(0, 2))
