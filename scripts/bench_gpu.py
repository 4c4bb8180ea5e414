"""GPU speed benchmark (the fixed speed set-up the results in docs/bench/ use): a LLaMA-7B-shaped model with random
weights in F16, Q4_0, Q3_K_S, Q2_K, IQ2_XS and IQ2_S (with an imatrix) and SLIM 2-bit / 3-bit (g128), all in ONE
`llama-bench -ngl 99 -p 512 -n 128 -r 3` run.

    python scripts/bench_gpu.py make  --bin BIN --vocab ggml-vocab-llama-spm.gguf --dir MODELS [--imatrix-text T] [--types T,..]
    python scripts/bench_gpu.py bench --bin BIN --dir MODELS --out OUT_DIR [--tune] [--reverse]
    python scripts/bench_gpu.py layers --bin BIN --dir MODELS --out OUT_DIR [--types q4_0,slim2] [--counts 1,8,16,32]

`make`: F16 via gguf-py (random N(0, 0.02) weights; one random matrix per shape, shared by the 32 layers: speed
does not depend on values, and 13.5 GB of fresh randoms would cost minutes of device time), tokenizer copied from
the vocab file; Q4_0 / Q3_K_S / Q2_K by llama-quantize; SLIM by round-to-nearest of the SAME random weights with a
random SBA-shaped bit map per shape (a quarter of the groups up, a quarter down), by slim2gguf.rtn_rows, with q/k/v
in one attn_qkv tensor as `slim2gguf convert` writes them (slim2-sep: apart, on request). The SLIM files take token_embd
(CPU-side) and output (Q6_K) from the Q4_0 file, as llama-quantize chose them, so only the linear layers differ.
IQ2_XS / IQ2_S need an importance matrix: `llama-imatrix` over --imatrix-text (16 chunks of 512 tokens, on the GPU
when BIN is a CUDA build) on the F16 file; without --imatrix-text they are left out. Quantizing a 7B shape to
IQ2_XS takes minutes on 16 cores (the lattice search), the other types seconds.
`bench`: the one llama-bench run (--reverse: the same files in the opposite order, the order check); writes
OUT_DIR/bench.md (the table, device, date and issue 16's ratios) and bench.json.
`layers`: how much of a decoded token's time the layers take. Copies of made files cut to the first n layers (the
same embedding, output head and per-layer tensors) in one llama-bench tg128 run, and per type a least-squares line
t(n) = fixed + n * per_layer (ms per token). `fixed` is what no layer kernel changes (output head, embedding, host
work per token); per_layer ratios say what the layer kernels achieve against each other, and the table says what
tg128 ratio a given per-layer time reaches. Writes OUT_DIR/layers.md and layers.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_VOCAB, N_EMBD, N_LAYER, N_HEAD, N_FF, N_CTX = 32000, 4096, 32, 32, 11008, 4096
if os.environ.get("SLIM_BENCH_TINY"):  # smoke test of the script itself (CPU): a 2-layer model
    N_EMBD, N_LAYER, N_HEAD, N_FF = 256, 2, 4, 768
LAYER_MATS = {  # name: (rows, cols) = (ne1, ne0)
    "attn_q": (N_EMBD, N_EMBD), "attn_k": (N_EMBD, N_EMBD), "attn_v": (N_EMBD, N_EMBD),
    "attn_output": (N_EMBD, N_EMBD),
    "ffn_gate": (N_FF, N_EMBD), "ffn_up": (N_FF, N_EMBD), "ffn_down": (N_EMBD, N_FF),
}
STOCK = ["Q4_0", "Q3_K_S", "Q2_K"]
IMATRIX_TYPES = ["IQ2_XS", "IQ2_S"]   # llama-quantize refuses these without an importance matrix
IMATRIX_CHUNKS = 16
# name: (average bits, group size, q/k/v as one attn_qkv tensor). slim2gguf convert writes the fused layout (one
# mat-vec launch and one activation quantization instead of three); slim2-sep is the same SLIM2 file with
# attn_q/k/v apart, to measure what the fusion does (only on request: `make --types slim2-sep`)
SLIM = {"slim2": (2, 128, True), "slim3": (3, 128, True), "slim2-sep": (2, 128, False)}
SLIM_DEFAULT = ["slim2", "slim3"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def llama_kv(w, vocab_path: Path, ftype: int, name: str = "llama-7b-shaped-random", hidden: int = N_EMBD,
             ffn: int = N_FF, layers: int = N_LAYER, heads: int = N_HEAD, kv_heads: int = N_HEAD) -> None:
    import gguf

    w.add_name(name)
    w.add_context_length(N_CTX)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_rope_dimension_count(hidden // heads)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    copy_tokenizer(w, vocab_path)


def copy_tokenizer(w, vocab_path: Path) -> None:
    """Every tokenizer.* field of a llama.cpp vocab file into the writer (the models' random weights need a real
    tokenizer to run in the tools)."""
    import gguf

    for field in gguf.GGUFReader(vocab_path).fields.values():
        if field.name.startswith("tokenizer."):
            copy_field(w, field)


def copy_field(w, field) -> None:
    """One key/value field of a GGUFReader into a writer, in its own value type."""
    import gguf

    vtype = field.types[0]
    sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)


def copy_tensor(w, t) -> None:
    """One tensor of a GGUFReader into a writer, in its own type (quantized ones as rows of raw bytes: gguf-py derives
    the element shape from the type's block size)."""
    import gguf

    data = np.asarray(t.data)
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        w.add_tensor(t.name, data)
    else:
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        w.add_tensor(t.name, data.view(np.uint8).reshape(rows, -1), raw_dtype=t.tensor_type)


def write_out(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_mats(shapes: set[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """One N(0, 0.02) fp16 matrix per shape, the same on every call (a later `make` rebuilds what the F16 file holds)."""
    rng = np.random.default_rng(7)
    return {shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
            for shape in sorted(shapes)}


def write_random_llama(path: Path, vocab: Path, layer_mats: dict[str, tuple[int, int]], n_vocab: int, hidden: int,
                       layers: int, **kv) -> dict[tuple[int, int], np.ndarray]:
    """An F16 llama GGUF: one random N(0, 0.02) matrix per weight shape, shared by every layer (speed and memory do
    not depend on the values; fresh randoms for every layer would cost minutes), norms of ones, the tokenizer of
    `vocab`. kv: llama_kv's shape arguments. Returns the matrices by shape."""
    import gguf

    mats = random_mats({(n_vocab, hidden), *layer_mats.values()})
    norm = np.ones(hidden, dtype=np.float32)
    w = gguf.GGUFWriter(str(path), "llama")
    llama_kv(w, vocab, int(gguf.LlamaFileType.MOSTLY_F16), hidden=hidden, layers=layers, **kv)
    w.add_tensor("token_embd.weight", mats[(n_vocab, hidden)])
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        for name, shape in layer_mats.items():
            w.add_tensor(f"blk.{i}.{name}.weight", mats[shape])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
    w.add_tensor("output_norm.weight", norm)
    w.add_tensor("output.weight", mats[(n_vocab, hidden)])
    write_out(w)
    return mats


def make_f16(path: Path, vocab: Path) -> dict[tuple[int, int], np.ndarray]:
    return write_random_llama(path, vocab, LAYER_MATS, N_VOCAB, N_EMBD, N_LAYER)


def slim_rtn(wt: np.ndarray, st, rng: np.random.Generator) -> np.ndarray:
    """Round-to-nearest of a [rows, cols] weight with a random SBA-shaped bit map -> packed SLIM rows."""
    from slim2gguf.rtn_rows import random_sba_bits, rtn_rows

    n_groups = wt.shape[1] // st.group_size
    bits = random_sba_bits(n_groups, st.avg_bits, rng, k=n_groups // 4)   # a quarter of the groups up, a quarter down
    return rtn_rows(wt, st, bits)


def make_slim(path: Path, name: str, q4_path: Path, mats, vocab: Path) -> None:
    import gguf
    from slim2gguf.format import slim_type

    avg, g, fused_qkv = SLIM[name]
    st = slim_type(avg, g)
    rng = np.random.default_rng(11 + avg)
    packed = {shape: slim_rtn(mats[shape], st, rng) for shape in set(LAYER_MATS.values())}
    q4 = {t.name: t for t in gguf.GGUFReader(q4_path).tensors}
    ftype = gguf.LlamaFileType.MOSTLY_SLIM2 if avg == 2 else gguf.LlamaFileType.MOSTLY_SLIM3
    w = gguf.GGUFWriter(str(path), "llama")
    llama_kv(w, vocab, int(ftype))

    def copy(tname: str) -> None:  # a tensor as llama-quantize wrote it into the Q4_0 file
        copy_tensor(w, q4[tname])

    copy("token_embd.weight")
    for i in range(N_LAYER):
        copy(f"blk.{i}.attn_norm.weight")
        for lname, shape in LAYER_MATS.items():
            if fused_qkv and lname in ("attn_k", "attn_v"):
                continue
            if fused_qkv and lname == "attn_q":   # q, k, v rows one after the other, as convert writes them
                qkv = np.concatenate([packed[LAYER_MATS[n]] for n in ("attn_q", "attn_k", "attn_v")])
                w.add_tensor(f"blk.{i}.attn_qkv.weight", qkv, raw_dtype=st.ggml_type)
                continue
            w.add_tensor(f"blk.{i}.{lname}.weight", packed[shape], raw_dtype=st.ggml_type)
        copy(f"blk.{i}.ffn_norm.weight")
    copy("output_norm.weight")
    copy("output.weight")
    write_out(w)


def cmd_make(args) -> None:
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    wanted = args.types.split(",") if args.types else STOCK + IMATRIX_TYPES + SLIM_DEFAULT
    unknown = set(wanted) - set(STOCK + IMATRIX_TYPES + list(SLIM))
    if unknown:
        raise SystemExit(f"unknown --types {sorted(unknown)}: choose from {STOCK + IMATRIX_TYPES + list(SLIM)}")
    f16 = d / "llama7b-f16.gguf"
    mats = None
    if f16.is_file():   # an earlier `make` call: files that exist are kept
        log(f"F16 kept: {f16}")
    else:
        log("F16 model (gguf-py)")
        mats = make_f16(f16, Path(args.vocab))
        log(f"F16 written: {f16.stat().st_size / 1e9:.2f} GB, {time.time() - t0:.0f} s")
    imatrix = d / "llama7b-f16.imatrix"
    want_iq = [qt for qt in IMATRIX_TYPES if qt in wanted and not (d / f"llama7b-{qt.lower()}.gguf").is_file()]
    if want_iq and not args.imatrix_text:
        log(f"{', '.join(want_iq)} left out: no --imatrix-text")
        want_iq = []
    if want_iq and not imatrix.is_file():
        t1 = time.time()
        subprocess.run([str(Path(args.bin) / "llama-imatrix"), "-m", str(f16), "-f", args.imatrix_text, "-o",
                        str(imatrix), "-c", "512", "--chunks", str(IMATRIX_CHUNKS), "-ngl", "99", "--no-ppl"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log(f"imatrix ({IMATRIX_CHUNKS} x 512 tokens): {time.time() - t1:.0f} s")
    for qt in [q for q in STOCK if q in wanted] + want_iq:
        out = d / f"llama7b-{qt.lower()}.gguf"
        if out.is_file():
            continue
        t1 = time.time()
        extra = ["--imatrix", str(imatrix)] if qt in IMATRIX_TYPES else []
        subprocess.run([str(Path(args.bin) / "llama-quantize"), *extra, str(f16), str(out), qt, str(os.cpu_count())],
                       check=True, stdout=subprocess.DEVNULL)
        log(f"{qt}{' +imatrix' if extra else ''}: {out.stat().st_size / 1e9:.2f} GB, {time.time() - t1:.0f} s")
    for name in [n for n in SLIM if n in wanted]:
        out = d / f"llama7b-{name}.gguf"
        if out.is_file():
            continue
        if not (d / "llama7b-q4_0.gguf").is_file():
            raise SystemExit(f"{name} takes token_embd/output from the Q4_0 file: add Q4_0 to --types")
        if mats is None:
            mats = random_mats({(N_VOCAB, N_EMBD), *LAYER_MATS.values()})
        t1 = time.time()
        make_slim(out, name, d / "llama7b-q4_0.gguf", mats, Path(args.vocab))
        log(f"{name}: {out.stat().st_size / 1e9:.2f} GB, {time.time() - t1:.0f} s")
    log(f"models ready in {time.time() - t0:.0f} s")


def truncate_layers(src: Path, dst: Path, n_layers: int) -> None:
    """A copy of GGUF `src` that keeps blocks 0..n_layers-1 (block_count set to match) and everything outside the
    blocks; tensors are copied as raw bytes in their own types."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    block_count_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    w = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue   # written by GGUFWriter itself
        if field.name == block_count_key:
            w.add_uint32(field.name, n_layers)
        else:
            copy_field(w, field)
    for t in reader.tensors:
        if not (t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers):
            copy_tensor(w, t)
    write_out(w)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x -> (a, b)."""
    b, a = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)
    return float(a), float(b)


def cmd_layers(args) -> None:
    d, out = Path(args.dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    types = args.types.split(",")
    counts = sorted({int(c) for c in args.counts.split(",")})
    if any(c < 1 or c > N_LAYER for c in counts) or len(counts) < 2:
        raise SystemExit(f"--counts: at least two layer counts in 1..{N_LAYER}")
    cut = d / "layers"
    cut.mkdir(exist_ok=True)
    models = []
    for name in types:
        src = d / f"llama7b-{name}.gguf"
        if not src.is_file():
            raise SystemExit(f"{src} not found: make it first (bench_gpu.py make --types ...)")
        for n in counts:
            path = src if n == N_LAYER else cut / f"llama7b-{name}-l{n}.gguf"
            if not path.is_file():
                truncate_layers(src, path, n)
            models.append((name, n, path))
    bench = str(Path(args.bin) / "llama-bench")
    cmd = [bench] + [a for _, _, m in models for a in ("-m", str(m))] + ["-ngl", "99", "-p", "0", "-n", "128",
                                                                         "-r", "3", "-o", "json"]
    log(" ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr[-4000:])
        raise SystemExit(f"llama-bench failed ({res.returncode})")
    rows = json.loads(res.stdout)
    tg = {Path(r["model_filename"]).resolve(): r["avg_ts"] for r in rows}
    ms = {(name, n): 1000.0 / tg[p.resolve()] for name, n, p in models}
    fits = {name: fit_line(counts, [ms[(name, n)] for n in counts]) for name in types}

    lines = [f"# Per-token fixed time and per-layer time, tg128 on {gpu_name()}", "",
             f"Date {dt.date.today().isoformat()}; one run: `llama-bench -ngl 99 -p 0 -n 128 -r 3` over the "
             f"LLaMA-7B-shaped files cut to {', '.join(map(str, counts))} layers (scripts/bench_gpu.py layers).", "",
             "| type | " + " | ".join(f"{n} layers (ms)" for n in counts) + " | fixed (ms) | per layer (us) |",
             "|---|" + "---:|" * (len(counts) + 2)]
    for name in types:
        a, b = fits[name]
        lines.append(f"| {name} | " + " | ".join(f"{ms[(name, n)]:.3f}" for n in counts) +
                     f" | {a:.3f} | {1000 * b:.1f} |")
    if "q4_0" in fits:
        aq, bq = fits["q4_0"]
        lines += ["", f"tg at {N_LAYER} layers against Q4_0, and what it needs:", ""]
        for name in types:
            if name == "q4_0":
                continue
            a, b = fits[name]
            now = (aq + N_LAYER * bq) / (a + N_LAYER * b)
            # per-layer time at which the whole token reaches 1.6x Q4_0 (same fixed time)
            need = ((aq + N_LAYER * bq) / 1.6 - a) / N_LAYER
            reach = (f"1.6x overall needs {1000 * need:.1f} us per layer ({100 * (1 - need / b):.1f} % less)"
                     if need > 0 else "1.6x overall is out of reach: the fixed time alone exceeds Q4_0's token / 1.6")
            lines.append(f"- {name}: {now:.2f}x Q4_0 (fit); per layer {bq / b:.2f}x Q4_0's; {reach}")
    text = "\n".join(lines) + "\n"
    (out / "layers.md").write_text(text)
    (out / "layers.json").write_text(json.dumps({"counts": counts, "ms_per_token": {f"{k[0]}@{k[1]}": v
                                                 for k, v in ms.items()}, "fits": fits, "llama_bench": rows}, indent=1))
    print(text)


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown GPU"


def cmd_bench(args) -> None:
    d, out = Path(args.dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = str(Path(args.bin) / "llama-bench")
    names = [n for n in ["f16"] + [q.lower() for q in STOCK + IMATRIX_TYPES] + list(SLIM)
             if (d / f"llama7b-{n}.gguf").is_file() and n not in (args.skip or "").split(",")]
    if args.reverse:
        names.reverse()
    models = [d / f"llama7b-{n}.gguf" for n in names]
    cmd = [bench] + [a for m in models for a in ("-m", str(m))] + ["-ngl", "99", "-p", "512", "-n", "128",
                                                                   "-r", "3", "-o", "json"]
    log(" ".join(cmd))
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    (out / "bench_stderr.log").write_text(res.stderr)
    if res.returncode != 0:
        print(res.stderr[-4000:])
        raise SystemExit(f"llama-bench failed ({res.returncode})")
    rows = json.loads(res.stdout)
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    log(f"llama-bench: {time.time() - t0:.0f} s")

    by = {}
    for r in rows:
        test = "pp512" if r["n_prompt"] else "tg128"
        by.setdefault(Path(r["model_filename"]).stem.replace("llama7b-", ""), {})[test] = (r["avg_ts"], r["stddev_ts"])
    first = rows[0]
    lines = [
        f"# LLaMA-7B-shaped model, random weights: llama-bench on {gpu_name()}",
        "",
        f"Date {dt.date.today().isoformat()}; one run: `llama-bench -ngl 99 -p 512 -n 128 -r 3` over these files "
        f"in this order{' (reversed)' if args.reverse else ''} "
        f"(scripts/bench_gpu.py, scripts/device_cuda.sh); build {first.get('build_commit', '?')}, "
        f"backend {first.get('backends', '?')}, GPU {first.get('gpu_info', '?')}.",
        "",
        "| type | size (GiB) | bpw (file) | pp512 t/s | tg128 t/s |",
        "|---|---:|---:|---:|---:|",
    ]
    nparams = None
    for r in rows:
        nparams = r.get("model_n_params", nparams)
    for name in names:
        r = next(x for x in rows if Path(x["model_filename"]).stem == f"llama7b-{name}")
        size = r["model_size"]
        pp, tg = by[name].get("pp512", (0, 0)), by[name].get("tg128", (0, 0))
        label = r['model_type'].split(' ', 2)[-1] if 'model_type' in r else name
        if name in SLIM:
            label += ", q/k/v fused" if SLIM[name][2] else ", q/k/v apart"
        lines.append(f"| {label} | {size / 2**30:.2f} | "
                     f"{8 * size / nparams:.2f} | {pp[0]:.0f} ± {pp[1]:.0f} | {tg[0]:.1f} ± {tg[1]:.1f} |")
    lines += ["", "Issue 16's targets: SLIM2 tg128 >= 1.6x Q4_0 and >= 1.6x IQ2_XS; SLIM3 tg128 >= 1.2x Q4_0; "
                  "SLIM2 pp512 >= 1.3x Q4_0.", ""]
    for a, b, test in (("slim2", "q4_0", "tg128"), ("slim2", "iq2_xs", "tg128"), ("slim2", "q2_k", "tg128"),
                       ("slim3", "q4_0", "tg128"), ("slim2", "q4_0", "pp512"), ("slim3", "q4_0", "pp512")):
        if a in by and b in by:
            lines.append(f"- {a.upper()} {test} / {b.upper()} {test} = {by[a][test][0] / by[b][test][0]:.2f}")
    text = "\n".join(lines) + "\n"
    (out / "bench.md").write_text(text)
    print(text)

    if args.tune:  # gate/up fusion on and off (SLIM's own, and ggml-cuda's for Q4_0), tg only
        tune_models = ["slim2", "slim3", "q4_0"]
        for env in ({}, {"GGML_CUDA_SLIM_FUSE": "0"}, {"GGML_CUDA_DISABLE_FUSION": "1"}):
            cmd = [bench] + [a for n in tune_models for a in ("-m", str(d / f"llama7b-{n}.gguf"))] + [
                "-ngl", "99", "-p", "0", "-n", "128", "-r", "3", "-o", "md"]
            r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env))
            tg = [ln.split("|")[-2].strip() for ln in r.stdout.splitlines() if "tg128" in ln]
            print(f"tune {env or 'defaults'}: tg128 {' / '.join(tune_models)} = {' / '.join(tg)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--bin", required=True)
    m.add_argument("--vocab", required=True)
    m.add_argument("--dir", required=True)
    m.add_argument("--imatrix-text", help="text for llama-imatrix (IQ2_XS / IQ2_S files; left out without it)")
    m.add_argument("--types", help="comma list of the files to make besides F16 (default all: "
                   + ",".join(STOCK + IMATRIX_TYPES + SLIM_DEFAULT) + "; also slim2-sep); files that exist are kept")
    b = sub.add_parser("bench")
    b.add_argument("--bin", required=True)
    b.add_argument("--dir", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--tune", action="store_true")
    b.add_argument("--reverse", action="store_true", help="the files in the opposite order (the order check)")
    b.add_argument("--skip", help="comma list of files left out of the run (e.g. f16)")
    lay = sub.add_parser("layers")
    lay.add_argument("--bin", required=True)
    lay.add_argument("--dir", required=True)
    lay.add_argument("--out", required=True)
    lay.add_argument("--types", default="q4_0,slim2,slim3", help="made files to cut (default q4_0,slim2,slim3)")
    default_counts = ",".join(str(c) for c in sorted({1, N_LAYER // 4, N_LAYER // 2, N_LAYER}) if c >= 1)
    lay.add_argument("--counts", default=default_counts, help=f"layer counts (default {default_counts})")
    args = ap.parse_args()
    {"make": cmd_make, "bench": cmd_bench, "layers": cmd_layers}[args.cmd](args)


if __name__ == "__main__":
    main()
