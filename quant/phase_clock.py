"""Wall seconds per phase of the layer loop (loading a layer, capturing its inputs, bit allocation, GPTQ, ...).

On a GPU the work of a phase runs after Python has moved on, so each phase boundary synchronises the device:
the seconds are the phase's own, not whichever phase happened to wait for it. That costs one sync per phase and
linear (a few hundred per model), nothing next to the work.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseClock:
    """`with clock("sba"): ...` adds the block's wall seconds to clock.seconds["sba"]. Without a device (or on a
    CPU) nothing is synchronised: the clock costs two perf_counter calls per block."""

    def __init__(self, device: torch.device | str | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self._cuda = torch.device(device).type == "cuda" if device is not None else False

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def __call__(self, phase: str):
        t0 = self._now()
        try:
            yield
        finally:
            self.seconds[phase] += self._now() - t0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.seconds.items()}

