"""`slim2gguf convert MODEL --bits {2,3}`: quantize with SliM-LLM and write a GGUF for the patched llama.cpp.

The command line only: options -> ConvertSettings -> convert.convert (the library entry point, which documents
the steps). Prints the summary, then the summary as one JSON line (the last line).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quant.config import AVERAGE_BITS, METHODS

from .quant_options import add_layout_options, add_quant_options, calibration_spec, quant_config


def configure(p: argparse.ArgumentParser) -> None:
    from .gguf_out import DEFAULT_EMBD_TYPE, DEFAULT_FALLBACK_TYPE, DEFAULT_OUTPUT_TYPE, STOCK_TYPES

    p.add_argument("model", metavar="MODEL", help="Hugging Face folder, GGUF file of higher precision, or 'demo'")
    p.add_argument("--bits", type=int, choices=AVERAGE_BITS,
                   help="average bits per weight of every SLIM tensor (required unless --target-bpw or --plan "
                        "chooses the types: then 2, the file type's name and SBA's centre for SLIM2 tensors)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="output GGUF (default: <model name>-SLIM<bits>.gguf in the current directory)")
    p.add_argument("--method", choices=METHODS, default="slim",
                   help="slim (SBA+SQC+GPTQ), slim+ (SBA + block-wise trained quantizers, SliM-LLM+), gptq "
                        "(uniform bits) or rtn (default: slim)")
    add_quant_options(p)
    add_layout_options(p)
    p.add_argument("--target-bpw", type=float, metavar="X",
                   help="whole-file bit budget: choose per tensor SLIM2, SLIM3 or a stock type (Q4_K..Q8_0, and "
                        "Q2_K.. for token_embd/output) so that the tensors average X bits per weight with the "
                        "smallest predicted loss; --bits then sets general.file_type and the SLIM default")
    p.add_argument("--plan", type=Path, metavar="PLAN.json",
                   help="a plan an earlier --target-bpw run measured (--save-plan, or OUT.ckpt/plan.json kept with "
                        "--keep-checkpoints), not measured again: alone, its per-tensor types (other settings at "
                        "the same plan); with --target-bpw, its measured losses allocated at the new target")
    p.add_argument("--save-plan", type=Path, metavar="PLAN.json",
                   help="write the plan (types and every measured alternative) here, for --plan later")
    p.add_argument("--fisher-samples", type=int, default=8, metavar="N",
                   help="calibration sequences of --target-bpw's sensitivity pass (one backward pass each; default 8)")
    stock = ", ".join(STOCK_TYPES)
    p.add_argument("--embd-type", default=DEFAULT_EMBD_TYPE, type=str.lower, choices=STOCK_TYPES, metavar="TYPE",
                   help=f"type of token_embd ({stock}; default {DEFAULT_EMBD_TYPE})")
    p.add_argument("--output-type", default=DEFAULT_OUTPUT_TYPE, type=str.lower, choices=STOCK_TYPES,
                   metavar="TYPE", help=f"type of the output (lm_head) tensor when not tied (default {DEFAULT_OUTPUT_TYPE})")
    p.add_argument("--fallback-type", default=DEFAULT_FALLBACK_TYPE, type=str.lower, choices=STOCK_TYPES,
                   metavar="TYPE", help="type of linear weights SLIM cannot hold, width not divisible by 64 "
                                        f"(default {DEFAULT_FALLBACK_TYPE}; F16 where the width is not a multiple of 32)")
    p.add_argument("--tune-epochs", type=int, default=0, metavar="N",
                   help="then train the written file's group scales end to end for N passes over the calibration "
                        "windows, codes fixed (as `slim2gguf tune`; holds the model twice in memory; default 0: off)")
    p.add_argument("--tune-lr", type=float, default=None, metavar="LR",
                   help="AdamW learning rate of --tune-epochs (default 1e-3)")
    p.add_argument("--tune-heldout", type=int, default=None, metavar="N",
                   help="calibration windows --tune-epochs does not train on; the epoch with the lowest KL on them "
                        "is kept (default: one in eight; 0: train on all)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.ckpt/")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep OUT.ckpt/ after a successful run")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp converter's log")


def settings(args: argparse.Namespace):
    """The parsed options as convert.ConvertSettings (SlimError for values the parser cannot check)."""
    from .convert import ConvertSettings
    from .gguf_out import StockTypes
    from .errors import SlimError

    if args.bits is None:
        if args.target_bpw is None and args.plan is None:
            raise SlimError("give --bits 2|3, or --target-bpw X to let the tool choose each tensor's type")
        args.bits = 2

    return ConvertSettings(model=args.model, quant=quant_config(args), calibration=calibration_spec(args),
                           output=args.output, stock=StockTypes(args.embd_type, args.output_type, args.fallback_type),
                           target_bpw=_positive(args.target_bpw, "--target-bpw"), fisher_samples=args.fisher_samples,
                           plan_file=_existing(args.plan, "--plan"), save_plan=args.save_plan,
                           device=args.device, resume=args.resume, keep_checkpoints=args.keep_checkpoints,
                           verbose=args.verbose, tune_epochs=_tune_epochs(args), tune_lr=args.tune_lr,
                           tune_heldout=args.tune_heldout)


def _tune_epochs(args) -> int:
    from .errors import SlimError
    if args.tune_epochs < 0:
        raise SlimError(f"--tune-epochs must be >= 0, got {args.tune_epochs}")
    if args.tune_epochs and args.method == "rtn":
        raise SlimError("--tune-epochs trains on the calibration windows, which --method rtn does not read")
    if args.tune_epochs:   # checked now, not after the conversion
        from .tune import heldout_count
        heldout_count(args.nsamples, args.tune_heldout, "--tune-heldout")
    return args.tune_epochs


def _existing(path, flag):
    from .errors import SlimError
    if path is not None and not path.is_file():
        raise SlimError(f"{flag}: file not found: {path}")
    return path


def _positive(value, flag):
    from .errors import SlimError
    if value is not None and not (value > 0 and value < 32):
        raise SlimError(f"{flag} must be a number of bits per weight between 0 and 32, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from .convert import convert

    res = convert(settings(args))
    print(res.text)
    print(json.dumps(res.summary))
    sys.stdout.flush()
    return 0
