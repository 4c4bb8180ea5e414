"""Calibration tokens for the quantizer, chosen the same way by `convert` and `eval`: seeded windows of a text
file's tokens (the built-in excerpt of the Brown corpus by default), or with `--calib self` text the model writes
itself (quant.calibration has both samplers).

Why the Brown excerpt is the default: on SmolLM2-135M 2-bit, 32 x 512 tokens of brown.txt gave torch perplexity
90.5 on pride_and_prejudice, the model's own text 130.5 (docs/results/2026-12-02-smollm2-levers.md), and the
self-generated text also costs minutes of sampling. The excerpt (slim2gguf/data/calib-brown-excerpt.txt, every
18th document of ../shared/data/brown.txt, 338 kB, MIT, redistribution permitted) ships with the package.
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
SELF = "self"                       # --calib self: the model's own text
BUILTIN_CALIB = Path(__file__).resolve().parent / "data" / "calib-brown-excerpt.txt"


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CalibrationSpec:
    """Which calibration to use: a text file (None: the built-in excerpt; "self": self-generated), nsamples x seqlen
    tokens, the seed."""

    file: str | None = None
    nsamples: int = DEFAULT_NSAMPLES
    seqlen: int = DEFAULT_SEQLEN
    seed: int = 0

    def __post_init__(self):
        # checked before any model is loaded: these mistakes should cost no minutes
        for name in ("nsamples", "seqlen"):
            if getattr(self, name) <= 0:
                raise SlimError(f"--{name} must be positive")
        if self.file is None:
            object.__setattr__(self, "file", str(BUILTIN_CALIB))
        if self.file != SELF and not Path(self.file).is_file():
            raise SlimError(f"calibration file not found: {self.file}")

    def key(self) -> dict[str, Any]:
        """What identifies these tokens across runs (checkpoints): the file (path, size, mtime), sizes, seed."""
        from .checkpoint import file_fingerprint

        return {"file": file_fingerprint(Path(self.file)) if self.file != SELF else SELF_GENERATED,
                "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed}


def calibration_set(spec: CalibrationSpec, model, tokenizer, log: Callable[[str], None] = log_stderr):
    """The quant.calibration.CalibrationSet for spec; its summary names the file (not its path) as the source."""
    from quant.calibration import self_generated, windows_from_ids

    from .model_io import tokenize_file

    if spec.file != SELF:
        ids = tokenize_file(tokenizer, spec.file)
        if ids.numel() <= spec.seqlen:
            raise SlimError(f"{spec.file}: {ids.numel()} tokens, not more than --seqlen {spec.seqlen}")
        return windows_from_ids(ids, spec.nsamples, spec.seqlen, spec.seed, source=Path(spec.file).name)
    log(f"calibration: generating {spec.nsamples} x {spec.seqlen} tokens with the model")
    return self_generated(model, spec.nsamples, spec.seqlen, spec.seed, tokenizer.bos_token_id)
