"""`slim2gguf eval`: quantize in memory (fake-quant, torch) and report perplexity; last line is JSON.

With --weights FILE.gguf it quantizes nothing: MODEL gives the architecture and tokenizer, the file (a
`slim2gguf convert` output or any GGUF of the same model) every weight, decoded exactly as llama.cpp decodes it;
--ggml-activations adds the 8-bit rounding llama.cpp's CPU applies to matmul inputs, so the number is what
llama.cpp should report, up to summation order."""
from __future__ import annotations

import argparse
import json
import sys
import time

from quant.config import AVERAGE_BITS, METHODS

from .errors import SlimError
from .quant_options import add_quant_options, calibration_spec, quant_config
from .resources import peak_rss_mib

NO_QUANTIZATION = "fp"   # eval's own method: the model as loaded (fp32)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="Hugging Face folder, GGUF file of higher precision, or 'demo'")
    p.add_argument("--method", choices=(NO_QUANTIZATION, *METHODS), default="slim",
                   help=f"{NO_QUANTIZATION} = no quantization (default: slim)")
    p.add_argument("--bits", type=int, choices=AVERAGE_BITS, default=2, help="average bits per weight (default 2)")
    add_quant_options(p)
    p.add_argument("--eval-text", metavar="FILE", required=True, help="text to measure perplexity on")
    p.add_argument("--ctx", type=int, default=512, help="window length (default 512)")
    p.add_argument("--max-tokens", type=int, default=16384, help="first N tokens of the eval text (default 16384)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--weights", metavar="FILE.gguf",
                   help="evaluate the weights this GGUF holds (SLIM types included) instead of quantizing MODEL")
    p.add_argument("--ggml-activations", action="store_true",
                   help="round matmul inputs as llama.cpp's CPU backend does (8-bit blocks; f16 for an F16 head)")


def run(args) -> int:
    import torch

    from quant.perplexity import perplexity
    from quant.pipeline import average_bits, quantize_model
    from .calibration import calibration_set
    from .model_io import load_model, tokenize_file

    t0 = time.time()
    spec = calibration_spec(args)   # checks --nsamples / --seqlen / --calib
    for name in ("ctx", "max_tokens"):
        if getattr(args, name) <= 0:
            raise SlimError(f"--{name.replace('_', '-')} must be positive")
    config = quant_config(args) if args.method != NO_QUANTIZATION else None
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, tok, desc = load_model(args.model)
    if args.weights:
        return _run_file_weights(args, model, tok, desc, t0)
    eval_ids = tokenize_file(tok, args.eval_text, args.max_tokens)
    if eval_ids.numel() < args.ctx:
        raise SlimError(f"{args.eval_text}: {eval_ids.numel()} tokens, fewer than --ctx {args.ctx}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    summary = {"method": args.method, "bits": config.bits if config else None,
               "sba": config.sba if config else False, "sqc": config.sqc if config else False,
               "joint_qkv": config.joint_qkv if config else False}
    quant_seconds = 0.0
    calib = None
    if config is None:
        avg_bits = bpw = 32.0   # the torch model runs in fp32
    else:
        if config.needs_calibration:
            calib = calibration_set(spec, model, tok)
        tq = time.time()
        res = quantize_model(model, calib, config, device=device)
        quant_seconds = time.time() - tq
        avg_bits, bpw = average_bits(res)
        ks = list(res.info.get("sba_k", {}).values())
        if ks:   # how often SBA actually mixed bit-widths, and how far
            summary["sba_mixed_linears"] = f"{sum(k > 0 for k in ks)}/{len(ks)}"
            summary["sba_mean_k"] = round(sum(ks) / len(ks), 2)
    model.to(device)
    pp = perplexity(model, eval_ids, ctx=args.ctx, max_tokens=args.max_tokens)
    print(f"perplexity {pp['ppl']:.4f} ({pp['windows']} windows of {args.ctx} tokens, "
          f"{pp['predicted_tokens']} predicted tokens)")
    summary.update({
        "ppl": round(pp["ppl"], 4), "nll": round(pp["nll"], 6), "ctx": args.ctx, "tokens": pp["tokens"],
        "predicted_tokens": pp["predicted_tokens"], "windows": pp["windows"],
        "avg_bits": round(avg_bits, 4), "bpw": round(bpw, 4), "group_size": args.group_size,
        "calibration": calib.summary if calib is not None else None,
        "quant_seconds": round(quant_seconds, 1), "seconds": round(time.time() - t0, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1), "device": device, "model": desc["model"],
        "eval_text": args.eval_text, "ppl_definition": pp["ppl_definition"],
    })
    print(json.dumps(summary))
    sys.stdout.flush()
    return 0


def _run_file_weights(args, model, tok, desc, t0: float) -> int:
    """eval --weights FILE.gguf: the file's weights in MODEL's torch architecture, no quantization."""
    from contextlib import nullcontext
    from pathlib import Path

    from quant.perplexity import perplexity
    from .gguf_torch import head_activation_kind, load_gguf_weights
    from .ggml_numerics import ggml_cpu_activations
    from .model_io import tokenize_file

    path = Path(args.weights)
    if not path.is_file():
        raise SlimError(f"{path}: no such file")
    n = load_gguf_weights(model, path)
    eval_ids = tokenize_file(tok, args.eval_text, args.max_tokens)
    if eval_ids.numel() < args.ctx:
        raise SlimError(f"{args.eval_text}: {eval_ids.numel()} tokens, fewer than --ctx {args.ctx}")
    head = head_activation_kind(path)
    rounding = ggml_cpu_activations(model, layers="q8", output=head) if args.ggml_activations else nullcontext()
    with rounding:
        pp = perplexity(model.eval(), eval_ids, ctx=args.ctx, max_tokens=args.max_tokens)
    print(f"perplexity {pp['ppl']:.4f} ({pp['windows']} windows of {args.ctx} tokens, "
          f"{pp['predicted_tokens']} predicted tokens)")
    print(json.dumps({
        "weights": str(path), "tensors": n, "ggml_activations": bool(args.ggml_activations),
        "head_activations": head if args.ggml_activations else None,
        "ppl": round(pp["ppl"], 4), "nll": round(pp["nll"], 6), "ctx": args.ctx, "tokens": pp["tokens"],
        "predicted_tokens": pp["predicted_tokens"], "windows": pp["windows"], "model": desc["model"],
        "eval_text": args.eval_text, "ppl_definition": pp["ppl_definition"],
        "seconds": round(time.time() - t0, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
    }))
    sys.stdout.flush()
    return 0
