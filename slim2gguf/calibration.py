"""Calibration tokens for the quantizer, chosen the same way by `convert` and `eval`: seeded windows of a text
file's tokens when a file is given, otherwise text the model writes itself (quant.calibration has both samplers).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import SlimError

DEFAULT_NSAMPLES = 32   # 32 x 512 = 16k tokens: a few minutes for SmolLM2-135M on 2 CPU cores
DEFAULT_SEQLEN = 512
SELF_GENERATED = "self-generated"


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CalibrationSpec:
    """Which calibration to use: a text file (None: self-generated), nsamples x seqlen tokens, the seed."""

    file: str | None = None
    nsamples: int = DEFAULT_NSAMPLES
    seqlen: int = DEFAULT_SEQLEN
    seed: int = 0

    def __post_init__(self):
        # checked before any model is loaded: these mistakes should cost no minutes
        for name in ("nsamples", "seqlen"):
            if getattr(self, name) <= 0:
                raise SlimError(f"--{name} must be positive")
        if self.file and not Path(self.file).is_file():
            raise SlimError(f"calibration file not found: {self.file}")

    def key(self) -> dict[str, Any]:
        """What identifies these tokens across runs (checkpoints): the file (path, size, mtime), sizes, seed."""
        from .checkpoint import file_fingerprint

        return {"file": file_fingerprint(Path(self.file)) if self.file else SELF_GENERATED,
                "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed}


def calibration_set(spec: CalibrationSpec, model, tokenizer, log: Callable[[str], None] = log_stderr):
    """The quant.calibration.CalibrationSet for spec; its summary names the file (not its path) as the source."""
    from quant.calibration import self_generated, windows_from_ids

    from .model_io import tokenize_file

    if spec.file:
        ids = tokenize_file(tokenizer, spec.file)
        if ids.numel() <= spec.seqlen:
            raise SlimError(f"{spec.file}: {ids.numel()} tokens, not more than --seqlen {spec.seqlen}")
        return windows_from_ids(ids, spec.nsamples, spec.seqlen, spec.seed, source=Path(spec.file).name)
    log(f"calibration: generating {spec.nsamples} x {spec.seqlen} tokens with the model "
        f"(give --calib FILE to use a text)")
    return self_generated(model, spec.nsamples, spec.seqlen, spec.seed, tokenizer.bos_token_id)
