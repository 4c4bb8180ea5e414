"""Bits per weight of a GGUF: the one definition, used by `inspect`, `convert`'s summary and scripts/report.py.

Two denominators are the same everywhere (the number of weights of the tensors counted); the numerators differ,
so both are named:

- file bpw   (`bpw_file`):    8 * file bytes / all weights. What the file costs on disk: header, metadata
                              (tokenizer included) and alignment padding count too. `inspect` and `convert`
                              report this one as "whole file".
- tensor bpw (`bpw_tensors`): 8 * tensor data bytes / weights. What the weights alone cost; the report's x axis
                              (a small model's tokenizer would otherwise dominate the comparison).

Subsets use tensor bytes: `bpw_slim` (the SLIM tensors) and `bpw_blocks` (2-D weights of the transformer blocks,
the only tensors the quantizers being compared treat differently).
"""
from __future__ import annotations

from dataclasses import dataclass, field


def bits_per_weight(nbytes: int, weights: int) -> float:
    return 8 * nbytes / weights if weights else 0.0


def is_block_weight(name: str, shape) -> bool:
    """A 2-D weight matrix of a transformer block (blk.N.*), not a norm or a 1-wide tensor."""
    return name.startswith("blk.") and len(shape) == 2 and int(min(shape)) > 1


@dataclass
class BpwTotals:
    """Byte and weight counts of a GGUF's tensors; the bpw definitions above are properties."""

    file_bytes: int = 0
    tensor_bytes: int = 0
    weights: int = 0
    slim_bytes: int = 0
    slim_weights: int = 0
    block_bytes: int = 0
    block_weights: int = 0
    weights_by_type: dict[str, int] = field(default_factory=dict)   # ggml type name -> weights

    def add(self, name: str, type_name: str, shape, weights: int, nbytes: int, slim: bool) -> None:
        self.tensor_bytes += nbytes
        self.weights += weights
        self.weights_by_type[type_name] = self.weights_by_type.get(type_name, 0) + weights
        if slim:
            self.slim_bytes += nbytes
            self.slim_weights += weights
        if is_block_weight(name, shape):
            self.block_bytes += nbytes
            self.block_weights += weights

    @property
    def bpw_file(self) -> float:
        return bits_per_weight(self.file_bytes, self.weights)

    @property
    def bpw_tensors(self) -> float:
        return bits_per_weight(self.tensor_bytes, self.weights)

    @property
    def bpw_slim(self) -> float:
        return bits_per_weight(self.slim_bytes, self.slim_weights)

    @property
    def bpw_blocks(self) -> float:
        return bits_per_weight(self.block_bytes, self.block_weights)


def measure(reader, file_bytes: int) -> BpwTotals:
    """BpwTotals of every tensor a gguf-py reader lists (file_bytes: the file's size on disk)."""
    from .format import is_slim

    totals = BpwTotals(file_bytes=file_bytes)
    for t in reader.tensors:
        totals.add(t.name, t.tensor_type.name, [int(x) for x in t.shape], int(t.n_elements), int(t.n_bytes),
                   is_slim(t.tensor_type))
    return totals
