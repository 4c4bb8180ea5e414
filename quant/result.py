"""The result of quantizing one linear layer: what every storage format and decoder starts from."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedLinear:
    """Group-wise affine quantization with one bit-width per column group, shared by every row.

    bits:  int8  [G]           bit-width of each column group (1..4), identical for all rows (SBA)
    q:     uint8 [rows, cols]  integer codes, 0 <= q < 2**bits of the column's group
    d:     fp16  [rows, G]     scale, already on the storage grid (quantizer.round_scale_fp16)
    m:     fp16  [rows, G]     offset (the group's clipped minimum)
    group_size: columns per group; cols == G * group_size

    The weight is exactly d*q + m computed in fp32 (d*q is exact: 11-bit d times a 4-bit q).
    """

    bits: torch.Tensor
    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def avg_bits(self) -> float:
        return float(self.bits.float().mean())

    def dequantize(self) -> torch.Tensor:
        """fp32 weight [rows, cols]: d*q + m, the value every decoder must reproduce bit for bit."""
        g = self.group_size
        d = self.d.float().repeat_interleave(g, dim=1)
        m = self.m.float().repeat_interleave(g, dim=1)
        return d * self.q.float() + m

    def to(self, device) -> "QuantizedLinear":
        return QuantizedLinear(self.bits.to(device), self.q.to(device), self.d.to(device),
                               self.m.to(device), self.group_size)

    # ------------------------------------------------------------------------------------------- persistence
    def state(self) -> dict:
        """Plain tensors and ints (CPU), what torch.save(weights_only) stores and `from_state` reads back."""
        return {"bits": self.bits.cpu(), "q": self.q.cpu(), "d": self.d.cpu(), "m": self.m.cpu(),
                "group_size": int(self.group_size)}

    @classmethod
    def from_state(cls, state: dict) -> "QuantizedLinear":
        return cls(state["bits"], state["q"], state["d"], state["m"], int(state["group_size"]))
