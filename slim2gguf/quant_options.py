"""Command-line options shared by `convert` and `eval` (the quantizer's settings and its calibration), and the
objects they become: quant.config.QuantConfig and calibration.CalibrationSpec."""
from __future__ import annotations

import argparse

import torch

from quant.blockwise import DEFAULT_LR, TRAIN_INITS, TRAIN_LOSSES, TRAIN_MODES, TRAIN_TARGETS, default_epochs
from quant.config import FITS, GROUP_SIZES, IMPORTANCES, JOINT_WITHOUT_FUSING, QuantConfig

from .calibration import DEFAULT_NSAMPLES, DEFAULT_SEQLEN, CalibrationSpec
from .errors import SlimError


def add_quant_options(p: argparse.ArgumentParser) -> None:
    """SBA/SQC switches, calibration, seed, group size and device: the same flags for convert and eval (the file's
    layout, --no-fuse-qkv, is convert's alone: add_layout_options)."""
    p.add_argument("--no-sba", action="store_true", help="SliM without salience-determined bit allocation")
    p.add_argument("--no-sqc", action="store_true", help="SliM without salience-weighted quantizer calibration")
    p.add_argument("--calib", metavar="FILE",
                   help="calibration text, or 'self' for text the model writes itself (default: the built-in "
                        "excerpt of the Brown corpus)")
    p.add_argument("--nsamples", type=int, default=DEFAULT_NSAMPLES,
                   help=f"calibration samples (default {DEFAULT_NSAMPLES})")
    p.add_argument("--seqlen", type=int, default=DEFAULT_SEQLEN,
                   help=f"tokens per calibration sample (default {DEFAULT_SEQLEN})")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and SBA rows (default 0)")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=QuantConfig.group_size,
                   help="group size; 64 is used per tensor where the input width is not divisible (default 128)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--joint-qkv", action="store_true",
                   help="SBA chooses one bit map for q/k/v together, so every layer's q/k/v fuse (faster GPU "
                        "decode, slightly worse accuracy: docs/results/2026-12-04-fused-qkv.md; SliM with SBA only)")
    lv = p.add_argument_group("2-bit levers (SliM only; docs/results for what each is worth)")
    lv.add_argument("--fit", choices=FITS, default=QuantConfig.fit,
                    help="group (d, m): importance-weighted least squares, or min/max with SQC's clipping search "
                         f"(default {QuantConfig.fit})")
    lv.add_argument("--importance", choices=IMPORTANCES, default=QuantConfig.importance,
                    help="the weighted fit's column weight: diag(H) as llama.cpp's imatrix, or 1/[chol(H^-1)]_jj^2 "
                         f"(default {QuantConfig.importance})")
    lv.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=QuantConfig.act_order,
                    help="GPTQ takes whole groups in order of decreasing diag(H) (static groups; same file layout)")
    lv.add_argument("--true-sequential", action=argparse.BooleanOptionalAction,
                    default=QuantConfig.true_sequential,
                    help="quantize q/k/v, o, gate/up, down in turn, each on inputs through the quantized earlier ones")

    tr = p.add_argument_group("SliM+ (--method slim+: block-wise training, quant/blockwise.py)")
    tr.add_argument("--train", choices=TRAIN_MODES, default=QuantConfig.train,
                    help="lwc: learnable clipping (the paper's SliM-LLM+); round: lwc + learned rounding offsets; "
                         f"weights: weights and (d, m) trained together (default {QuantConfig.train})")
    tr.add_argument("--epochs", type=int, default=None,
                    help=f"epochs over the calibration set per block (default {default_epochs(torch.device('cuda'))} "
                         f"on CUDA, {default_epochs(torch.device('cpu'))} on CPU)")
    tr.add_argument("--lr", type=float, default=None,
                    help="AdamW learning rate (default " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
                         + ")")
    tr.add_argument("--train-init", choices=TRAIN_INITS, default=QuantConfig.train_init,
                    help="start from the weighted fit of the weights (fit) or from SliM's GPTQ result (gptq; "
                         f"costs a SliM run first) (default {QuantConfig.train_init})")
    tr.add_argument("--train-target", choices=TRAIN_TARGETS, default=QuantConfig.train_target,
                    help="the block output to match: the full-precision model's (fp, the paper's), the full-precision "
                         f"block on the quantized inputs (quant), or both (default {QuantConfig.train_target})")
    tr.add_argument("--train-loss", choices=TRAIN_LOSSES, default=QuantConfig.train_loss,
                    help="the block output's error: mean squared (mse, the paper's) or per token relative to the "
                         "target's RMS, as the next RMSNorm sees it (token_rms) "
                         f"(default {QuantConfig.train_loss})")
    tr.add_argument("--train-batch", type=int, default=QuantConfig.train_batch,
                    help=f"calibration sequences per training step (default {QuantConfig.train_batch})")


def add_layout_options(p: argparse.ArgumentParser) -> None:
    """How the writer lays out the quantized rows (convert only: eval writes no file)."""
    p.add_argument("--no-fuse-qkv", action="store_true",
                   help="write q/k/v as three tensors everywhere (default: one fused attn_qkv tensor in the layers "
                        "where their types and SBA bit maps coincide; same weights either way)")


def quant_device(args: argparse.Namespace) -> torch.device:
    """The device quantization runs on: --device, else CUDA when torch sees a GPU."""
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def quant_config(args: argparse.Namespace) -> QuantConfig:
    """The quantizer's settings from the parsed options (--method and --bits are each command's own); SlimError
    for options that contradict each other."""
    no_fuse_qkv = getattr(args, "no_fuse_qkv", False) # eval has no layout options
    if args.joint_qkv and no_fuse_qkv:
        raise SlimError(JOINT_WITHOUT_FUSING)
    epochs = args.epochs if args.epochs is not None else default_epochs(quant_device(args))
    return QuantConfig(method=args.method, bits=args.bits, group_size=args.group_size, sba=not args.no_sba,
                       sqc=not args.no_sqc, seed=args.seed, fit=args.fit, importance=args.importance,
                       act_order=args.act_order, true_sequential=args.true_sequential, train=args.train,
                       epochs=epochs, lr=args.lr or 0.0, train_batch=args.train_batch,
                       train_init=args.train_init, train_target=args.train_target,
                       train_loss=args.train_loss, fuse_qkv=not no_fuse_qkv,
                       joint_qkv=args.joint_qkv)


def calibration_spec(args: argparse.Namespace) -> CalibrationSpec:
    """The calibration from the parsed options; one seed drives calibration sampling and SBA's rows."""
    return CalibrationSpec(file=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
