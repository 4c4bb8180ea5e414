"""`slim2gguf tune FILE.gguf --model MODEL -o OUT.gguf`: train a SLIM file's group scales end to end.

The codes of every SLIM tensor stay as they are; each group's (d, m) is trained through the whole model so that
its next-token distribution matches MODEL's (quant/e2e.py, EfficientQAT's E2E-QP), on calibration windows of a
text (slim2gguf/tune.py). MODEL is the full-precision model the file was converted from (the teacher, and the
student's architecture); the student starts with exactly the file's weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .tune import heldout_note, tune_file


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="SLIM GGUF written by `slim2gguf convert`")
    p.add_argument("--model", required=True, help="the full-precision model FILE was converted from "
                   "(Hugging Face folder, GGUF, or 'demo')")
    p.add_argument("-o", "--output", type=Path, required=True, help="output GGUF")
    p.add_argument("--calib", required=True, help="calibration text file")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the windows and their order (default 0)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the windows (default 2)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate of log d and m/d0 (default 1e-3)")
    p.add_argument("--heldout", type=int, default=None, metavar="N",
                   help="windows (of --nsamples) not trained on; the epoch with the lowest KL on them is kept, the "
                        "file's own scales if none improves (default: one in eight; 0: train on all, keep the last)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args) -> int:
    from quant.calibration import windows_from_ids

    from .errors import SlimError
    from .model_io import load_tokenizer, tokenize_file

    if args.nsamples < 1 or args.seqlen < 2:
        raise SlimError("--nsamples must be >= 1, --seqlen >= 2")
    if not args.file.is_file():
        raise SlimError(f"{args.file}: no such file")
    ids = tokenize_file(load_tokenizer(args.model), args.calib)
    windows = windows_from_ids(ids, args.nsamples, args.seqlen, args.seed, source=Path(args.calib).name)
    info = tune_file(args.file, args.model, args.output, windows, args.epochs, args.lr, args.device, args.seed,
                     args.heldout)
    print(f"tuned {info['tensors_changed']} of {info['tensors']} SLIM tensors: calibration KL "
          f"{info['loss_before']:.4f} -> {info['loss_after']:.4f}{heldout_note(info)}; wrote {args.output}")
    print(json.dumps(info))
    sys.stdout.flush()
    return 0
