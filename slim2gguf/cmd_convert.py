"""`slim2gguf convert MODEL --bits {2,3}`: quantize with SliM-LLM and write a GGUF for the patched llama.cpp.

Steps: load MODEL (HF folder, GGUF of higher precision, or `demo`) -> calibration tokens -> quant.pipeline,
one decoder layer at a time, each finished layer checkpointed to OUT.ckpt/ -> llama.cpp's own converter writes
OUT.partial with SLIM rows for the quantized linears (gguf_out) -> renamed to OUT -> summary measured from the
file. `--resume` continues from OUT.ckpt/ after an interruption and gives a byte-identical file.
The last line printed is the summary as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SlimError
from .quant_options import add_quant_options, peak_rss_mib

METHODS = ("slim", "gptq", "rtn")
KILL_ENV = "SLIM2GGUF_TEST_KILL_AFTER_LAYER"   # test hook: SIGKILL self after checkpointing this layer


def configure(p: argparse.ArgumentParser) -> None:
    from .gguf_out import DEFAULT_EMBD_TYPE, DEFAULT_FALLBACK_TYPE, DEFAULT_OUTPUT_TYPE, STOCK_TYPES

    p.add_argument("model", metavar="MODEL", help="Hugging Face folder, GGUF file of higher precision, or 'demo'")
    p.add_argument("--bits", type=int, choices=(2, 3), required=True, help="average bits per weight")
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="output GGUF (default: <model name>-SLIM<bits>.gguf in the current directory)")
    p.add_argument("--method", choices=METHODS, default="slim",
                   help="slim (SBA+SQC+GPTQ), gptq (uniform bits) or rtn (default: slim)")
    add_quant_options(p)
    stock = ", ".join(STOCK_TYPES)
    p.add_argument("--embd-type", default=DEFAULT_EMBD_TYPE, type=str.lower, choices=STOCK_TYPES, metavar="TYPE",
                   help=f"type of token_embd ({stock}; default {DEFAULT_EMBD_TYPE})")
    p.add_argument("--output-type", default=DEFAULT_OUTPUT_TYPE, type=str.lower, choices=STOCK_TYPES,
                   metavar="TYPE", help=f"type of the output (lm_head) tensor when not tied (default {DEFAULT_OUTPUT_TYPE})")
    p.add_argument("--fallback-type", default=DEFAULT_FALLBACK_TYPE, type=str.lower, choices=STOCK_TYPES,
                   metavar="TYPE", help="type of linear weights SLIM cannot hold, width not divisible by 64 "
                                        f"(default {DEFAULT_FALLBACK_TYPE}; F16 where the width is not a multiple of 32)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.ckpt/")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep OUT.ckpt/ after a successful run")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp converter's log")


# --------------------------------------------------------------------------------------------------------------


def _fingerprint(paths: list[Path]) -> list[list]:
    out = []
    for p in sorted(paths):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def _model_fingerprint(model: str) -> dict[str, Any]:
    from .model_io import resolve_model
    folder, gguf_file = resolve_model(model)
    if gguf_file:
        files = [folder / gguf_file]
    else:
        files = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".model")]
    return {"path": str(folder.resolve() / (gguf_file or "")), "files": _fingerprint(files)}


def _default_output(model: str, bits: int) -> Path:
    from .model_io import resolve_model
    folder, gguf_file = resolve_model(model)
    stem = Path(gguf_file).stem if gguf_file else folder.resolve().name
    for suffix in (".F16", ".F32", ".BF16", ".Q8_0", ".Q4_1", ".Q4_0", ".Q5_0", ".Q5_1", ".Q6_K", ".Q4_K", ".Q5_K"):
        stem = stem.removesuffix(suffix)
    return Path(f"{stem}-SLIM{bits}.gguf")


def _source_general(gguf_path: Path) -> dict[str, Any]:
    """general.* descriptive fields of a GGUF source, carried into the output (a converter metadata override)."""
    from gguf import GGUFReader
    keep = ("general.name", "general.author", "general.version", "general.organization", "general.finetune",
            "general.basename", "general.description", "general.license", "general.license.name",
            "general.license.link", "general.url", "general.repo_url", "general.languages", "general.tags")
    r = GGUFReader(gguf_path)
    out = {}
    for k in keep:
        f = r.fields.get(k)
        if f is not None:
            out[k] = f.contents()
    return out


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): wall time is inflated on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _fmt_mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


@dataclass
class ConvertResult:
    summary: dict[str, Any]      # what the last (JSON) line prints
    text: str                    # the human-readable summary
    model: Any                   # the torch model, its quantized linears holding the fake-quant weights
    results: dict[str, Any]      # hf name -> QuantizedLinear
    report: Any                  # gguf_out.WriteReport (names, types, row permutations)
    hf_dir: Path                 # the HF folder llama.cpp's converter read (gone for GGUF sources: it lived in
                                 # OUT.ckpt/ unless --keep-checkpoints)
    tokenizer: Any = None
    model_name: str | None = None          # converter's --model-name (GGUF sources)
    general: dict[str, Any] | None = None  # converter's --metadata override (GGUF sources: their general.*)


def run(args: argparse.Namespace) -> int:
    res = convert(args)
    print(res.text)
    print(json.dumps(res.summary))
    sys.stdout.flush()
    return 0


def convert(args: argparse.Namespace) -> ConvertResult:
    """The whole conversion (see the module docstring); raises SlimError for user errors."""
    t0 = time.time()
    for name in ("nsamples", "seqlen"):
        if getattr(args, name) <= 0:
            raise SlimError(f"--{name} must be positive")
    if args.calib and not Path(args.calib).is_file():
        raise SlimError(f"calibration file not found: {args.calib}")

    from .checkpoint import Checkpoints, checkpoint_dir
    from .gguf_out import StockTypes, check_writable
    from .model_io import resolve_model

    from .model_io import check_architecture
    check_architecture(*resolve_model(args.model))   # missing model / architecture: fail before anything else
    out = args.output or _default_output(args.model, args.bits)
    check_writable(out)
    stock = StockTypes(args.embd_type, args.output_type, args.fallback_type)
    sba = args.method == "slim" and not args.no_sba
    sqc = args.method == "slim" and not args.no_sqc

    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = {
        "model": _model_fingerprint(args.model), "method": args.method, "bits": args.bits, "sba": sba, "sqc": sqc,
        "group_size": args.group_size, "seed": args.seed, "device": torch.device(device).type,
        "calibration": None if args.method == "rtn" else {
            "file": _model_fingerprint_file(args.calib) if args.calib else "self-generated",
            "nsamples": args.nsamples, "seqlen": args.seqlen},
    }
    ck = Checkpoints(checkpoint_dir(out), settings)
    n_done = ck.open(args.resume)
    if args.resume:
        print(f"resume: {n_done} finished layer(s) in {ck.path}", file=sys.stderr, flush=True)
    try:
        return _convert(args, t0, out, stock, sba, sqc, device, ck)
    except SlimError:
        if not ck.finished_layers():   # nothing worth resuming: leave no OUT.ckpt/ behind
            ck.remove()
        raise


def _convert(args, t0, out, stock, sba, sqc, device, ck) -> ConvertResult:
    import torch

    from .gguf_out import atomic_output

    from quant.calibration import self_generated, windows_from_ids
    from quant.pipeline import quantize_model
    from .model_io import load_model, tokenize_file

    torch.manual_seed(args.seed)
    t_load = time.time()
    model, tok, desc = load_model(args.model)
    n_layers = int(model.config.num_hidden_layers)
    model_name = None
    metadata_override = None
    general = None
    if desc.get("gguf_file"):
        src = Path(desc["folder"]) / desc["gguf_file"]
        general = _source_general(src)
        model_name = general.get("general.name") or src.stem
        if not ck.hf_dir_complete():
            from .gguf_out import export_hf_folder
            export_hf_folder(model, tok, ck.hf_dir)
            (ck.hf_dir / "slim2gguf-metadata.json").write_text(json.dumps(general, indent=1, sort_keys=True))
            ck.mark_hf_dir_complete()
        hf_dir = ck.hf_dir
        metadata_override = ck.hf_dir / "slim2gguf-metadata.json"
    else:
        hf_dir = Path(desc["folder"])

    # calibration: from the checkpoint when resuming, so self-generated text is not sampled again
    t_load = time.time() - t_load   # loading + (GGUF sources) exporting the HF folder for llama.cpp's converter
    t_cal = time.time()
    calib_ids, calib_summary = None, None
    if args.method != "rtn":
        saved = ck.load_calibration() if args.resume else None
        if saved is not None:
            calib_ids, calib_summary = saved
        else:
            if args.calib:
                ids = tokenize_file(tok, args.calib)
                if ids.numel() <= args.seqlen:
                    raise SlimError(f"{args.calib}: {ids.numel()} tokens, not more than --seqlen {args.seqlen}")
                cal = windows_from_ids(ids, args.nsamples, args.seqlen, args.seed, source=Path(args.calib).name)
            else:
                print(f"calibration: generating {args.nsamples} x {args.seqlen} tokens with the model "
                      f"(give --calib FILE to use a text)", file=sys.stderr, flush=True)
                cal = self_generated(model, args.nsamples, args.seqlen, args.seed, tok.bos_token_id)
            calib_ids, calib_summary = cal.input_ids, dict(cal.summary)
            ck.save_calibration(calib_ids, calib_summary)
    t_cal = time.time() - t_cal

    done = ck.load_layers() if args.resume else {}
    kill_after = int(os.environ.get(KILL_ENV, "-1"))

    def on_layer_done(i: int, qls: dict) -> None:
        if i not in done:
            ck.save_layer(i, qls)
        if i == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    t_q = time.time()
    res = quantize_model(model, calib_ids if calib_ids is not None else torch.zeros(0, 1, dtype=torch.long),
                         method=args.method, bits=args.bits, sba=sba, sqc=sqc, device=device,
                         done_layers=done, on_layer_done=on_layer_done, group_size=args.group_size,
                         seed=args.seed)
    t_q = time.time() - t_q
    quantized = {k: v for k, v in res.items() if int(v.group_size) in (64, 128)}
    not_slim = sorted(set(res) - set(quantized))

    from .gguf_out import write_slim_gguf
    slim_meta: dict[str, Any] = {
        "slim.format_version": 1,
        "slim.bits": args.bits,
        "slim.group_size": args.group_size,
        "slim.group_sizes": sorted({int(v.group_size) for v in quantized.values()}),
        "slim.method": args.method,
        "slim.sba": sba,
        "slim.sqc": sqc,
        "slim.seed": args.seed,
        "slim.source": desc.get("gguf_file") or Path(desc["folder"]).name,
    }
    if calib_summary:
        for key in ("source", "nsamples", "seqlen", "tokens", "seed"):
            if key in calib_summary:
                slim_meta[f"slim.calibration.{key}"] = calib_summary[key]
    else:
        slim_meta["slim.calibration.source"] = "none (rtn)"
    t_w = time.time()
    tmp = atomic_output(out)
    try:
        report = write_slim_gguf(hf_dir, tmp, quantized, avg_bits=args.bits, stock=stock, slim_meta=slim_meta,
                                 model_name=model_name, metadata_override=metadata_override,
                                 verbose=args.verbose)
        os.replace(tmp, out)
    except OSError as e:
        raise SlimError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    t_w = time.time() - t_w

    from .cmd_inspect import analyze
    rep = analyze(out)
    if not args.keep_checkpoints:
        ck.remove()
    total = time.time() - t0
    t = rep["totals"]
    gpu_peak = None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    stock_written = {w.name: w.type for w in report.tensors if not w.type.startswith("SLIM") and len(w.shape) > 1}
    fallbacks = sorted(set(report.fallbacks) | set(not_slim))
    summary = {
        "output": str(out), "model": args.model, "bits": args.bits, "method": args.method, "sba": sba, "sqc": sqc,
        "layers": n_layers, "resumed_layers": len(done),
        "file_bytes": t["file_bytes"], "bpw_file": round(t["bpw_file"], 4), "bpw_slim": round(t["bpw_slim"], 4),
        "slim_tensors": t["slim_tensors"], "slim_weights": t["slim_elements"], "weights": t["elements"],
        "groups": t["slim_groups"], "by_type": {k: v["tensors"] for k, v in t["by_type"].items()},
        "stock_tensors": stock_written, "not_slim": fallbacks,
        "seconds": round(total, 1), "cpu_seconds": round(cpu_seconds(), 1),
        "load_seconds": round(t_load, 1), "calibration_seconds": round(t_cal, 1), "quantize_seconds": round(t_q, 1),
        "write_seconds": round(t_w, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_gpu_mib": round(gpu_peak, 1) if gpu_peak is not None else None, "device": device,
        "calibration": calib_summary,
    }
    groups = ", ".join(f"{b}-bit {n:,d}" for b, n in t["slim_groups"].items())
    types = ", ".join(f"{k} x{v['tensors']}" for k, v in t["by_type"].items())
    lines = [
        f"wrote {out}",
        f"  file size    {_fmt_mib(t['file_bytes'])} ({t['file_bytes']:,d} bytes), {t['tensors']} tensors: {types}",
        f"  bpw          {t['bpw_file']:.4f} whole file ({t['elements']:,d} weights), "
        f"{t['bpw_slim']:.4f} SLIM tensors ({t['slim_elements']:,d} weights)",
        f"  groups       {groups} (row groups in SLIM tensors)",
        "  stock types  " + (", ".join(f"{k} {v}" for k, v in stock_written.items()) or "none")
        + "; norms F32",
    ]
    if fallbacks:
        lines.append(f"  not SLIM     {len(fallbacks)} linear weight(s) written as {args.fallback_type.upper()}"
                     f" (width not divisible by 64): {', '.join(fallbacks[:4])}{' ...' if len(fallbacks) > 4 else ''}")
    lines += [
        f"  time         {total:.1f} s (loading {t_load:.1f} s, calibration {t_cal:.1f} s, quantization {t_q:.1f} s for "
        f"{n_layers - len(done)} of {n_layers} layers, writing {t_w:.1f} s); CPU time {cpu_seconds():.1f} s",
        f"  peak memory  {peak_rss_mib():.0f} MiB RSS" + (f", {gpu_peak:.0f} MiB GPU" if gpu_peak is not None else ""),
    ]
    return ConvertResult(summary, "\n".join(lines), model, dict(res), report, hf_dir, tok, model_name, general)


def _model_fingerprint_file(path: str) -> dict[str, Any]:
    p = Path(path)
    return {"path": str(p.resolve()), "files": _fingerprint([p])}
