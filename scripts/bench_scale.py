"""Scale benchmark of `convert` (issue 15): wall time per stage, seconds per layer, peak host RSS and peak GPU
memory for LLaMA-shaped models with random weights, and whether memory grows with depth.

    python scripts/bench_scale.py make --shape 70b --layers 2 --vocab VOCAB.gguf --out D/llama70b-2l.gguf
    python scripts/bench_scale.py run --models D/llama7b-32l.gguf D/llama70b-2l.gguf D/llama70b-4l.gguf \
        --calib brown.txt --nsamples 32 --md docs/bench/DATE-scale.md

`make`: an F16 GGUF written by gguf-py with the shape's real widths and `--layers` decoder layers; one random
N(0, 0.02) matrix per weight shape shared by all layers (the time and memory of a conversion do not depend on
the values, and fresh randoms for 80 layers would cost more than the conversion); norms are ones; the tokenizer is
copied from a llama.cpp vocab file (VOCAB.gguf: the vendored tree's models/ggml-vocab-llama-spm.gguf, 32000 tokens),
so real calibration text goes through a real vocabulary.
`run`: `slim2gguf convert MODEL --bits 2` per model, one after the other, each in its own process (peak RSS is
per process); the table comes from each run's JSON summary: stage times, seconds per layer, peak RSS, peak GPU,
decoder layers held at once, and for the 70B shape the projected 80-layer time (seconds per layer x 80 + load +
write). Memory must not grow with the number of layers: compare the 2- and 4-layer rows.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_gpu import write_random_llama  # noqa: E402

# (hidden, FFN, heads, KV heads, vocab): the published LLaMA widths
SHAPES = {"7b": (4096, 11008, 32, 32, 32000), "70b": (8192, 28672, 64, 8, 32000),
          "1b": (2048, 5632, 32, 4, 32000),     # TinyLlama-1.1B's widths: the depth check on a CPU
          "tiny": (256, 768, 4, 2, 32000)}   # tiny: a smoke test of this script on the CPU
FULL_DEPTH = {"7b": 32, "70b": 80, "1b": 22}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make(shape: str, layers: int, vocab: Path, out: Path) -> None:
    hidden, ffn, heads, kv_heads, n_vocab = SHAPES[shape]
    kv = hidden // heads * kv_heads
    mats = {"attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden),
            "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden),
            "ffn_down": (hidden, ffn)}     # (rows, cols) = (ne1, ne0)
    write_random_llama(out, vocab, mats, n_vocab, hidden, layers, name=f"llama-{shape}-shaped-random-{layers}l",
                       ffn=ffn, heads=heads, kv_heads=kv_heads)


def convert_once(model: Path, out_dir: Path, extra: list[str]) -> dict:
    out = out_dir / (model.stem + "-slim2.gguf")
    cmd = [str(ROOT / ".venv" / "bin" / "slim2gguf"), "convert", str(model), "--bits", "2", "-o", str(out), *extra]
    if not Path(cmd[0]).exists():
        cmd = [sys.executable, "-m", "slim2gguf.cli", *cmd[1:]]
    log(" ".join(cmd))
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"bench_scale: convert failed on {model} (exit {p.returncode})")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    summary["wall"] = time.time() - t0
    out.unlink(missing_ok=True)
    return summary


def shape_of(model: Path) -> str:
    from slim2gguf.gguf_in import metadata, open_gguf

    kv = metadata(open_gguf(model))
    hidden = kv["llama.embedding_length"]
    return next((k for k, v in SHAPES.items() if v[0] == hidden), f"{hidden}-wide")


def phases_per_layer(s: dict) -> str:
    """Where a layer's time goes (the summary's phase_seconds: load, capture, cholesky, sba, gptq, forward)."""
    return ", ".join(f"{k} {v / s['layers']:.2f}" for k, v in s.get("phase_seconds", {}).items()) or "-"


def table(rows: list[tuple[Path, str, dict]]) -> str:
    lines = ["| model | layers | wall s | load s | calibration s | quantize s | s per layer | write s | "
             "peak RSS MiB | peak GPU MiB | layers held | projected full depth | layer loop s per layer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for model, shape, s in rows:
        per_layer = s["quantize_seconds"] / s["layers"]
        full = FULL_DEPTH.get(shape)
        proj = (f"{full} layers: {(per_layer * full + s['load_seconds'] + s['write_seconds']) / 60:.1f} min"
                if full and full != s["layers"] else "")
        gpu = f"{s['peak_gpu_mib']:.0f}" if s.get("peak_gpu_mib") is not None else "-"
        lines.append(f"| {model.name} | {s['layers']} | {s['seconds']:.1f} | {s['load_seconds']:.1f} | "
                     f"{s['calibration_seconds']:.1f} | {s['quantize_seconds']:.1f} | {per_layer:.1f} | "
                     f"{s['write_seconds']:.1f} | {s['peak_rss_mib']:.0f} | {gpu} | {s.get('layers_held', '-')} | "
                     f"{proj} | {phases_per_layer(s)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write a random LLaMA-shaped F16 GGUF")
    mk.add_argument("--shape", choices=sorted(SHAPES), required=True)
    mk.add_argument("--layers", type=int, required=True)
    mk.add_argument("--vocab", type=Path, required=True, help="a llama.cpp vocab GGUF (tokenizer.* fields)")
    mk.add_argument("--out", type=Path, required=True)
    rn = sub.add_parser("run", help="convert each model, print the table")
    rn.add_argument("--models", type=Path, nargs="+", required=True)
    rn.add_argument("--calib", default=None, help="calibration text (not for --method rtn)")
    rn.add_argument("--method", default="slim", choices=("slim", "rtn"),
                    help="rtn: no calibration, the quickest check that memory does not grow with depth")
    rn.add_argument("--nsamples", type=int, default=32)
    rn.add_argument("--seqlen", type=int, default=512)
    rn.add_argument("--out-dir", type=Path, default=Path("/tmp"))
    rn.add_argument("--md", type=Path, default=None, help="also write the table (and a JSON beside it) here")
    a = ap.parse_args()
    if a.cmd == "run" and a.method != "rtn" and not a.calib:
        ap.error("run: --calib is needed unless --method rtn")
    if a.cmd == "make":
        t0 = time.time()
        make(a.shape, a.layers, a.vocab, a.out)
        log(f"{a.out}: {a.out.stat().st_size / 2**30:.2f} GiB in {time.time() - t0:.0f} s")
        return
    rows = []
    for m in a.models:
        extra = ["--method", "rtn"] if a.method == "rtn" else \
            ["--calib", a.calib, "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen)]
        s = convert_once(m, a.out_dir, extra)
        rows.append((m, shape_of(m), s))
        log(f"{m.name}: {s['seconds']:.1f} s, peak RSS {s['peak_rss_mib']:.0f} MiB")
    md = table(rows)
    print(md)
    if a.md:
        a.md.write_text(f"# convert at scale ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
                        f"`{' '.join(sys.argv)}`\n\n{md}\n")
        a.md.with_suffix(".json").write_text(json.dumps([{"model": m.name, "shape": sh, **s} for m, sh, s in rows],
                                                        indent=1))


if __name__ == "__main__":
    main()
