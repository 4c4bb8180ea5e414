"""Shape sweep on the GPU (issue 17): does every common open model's shape decode with SLIM weights?

    python scripts/shape_sweep.py make --vocab ggml-vocab-llama-spm.gguf --dir MODELS
    python scripts/shape_sweep.py run  --bin BIN --dir MODELS --out OUT_DIR [--pysrc DIR]

`make`: one small LLaMA-architecture file per model shape (the real hidden, FFN and KV widths), four decoder
layers, one SLIM type each (SLIM2_G128, SLIM3_G128, SLIM2_G64, SLIM3_G64; a tensor whose input width 128 does not
divide takes the g64 type of the same average), token_embd and output SLIM2_G64, tokenizer from the vocab file.
Values do not matter here, only launches: each tensor repeats a block of 64 round-to-nearest rows of random
weights with a random SBA-shaped bit map.
`run`: for each file, a few greedy tokens with llama-completion (gate/up fusion on, then off) and with
llama-cpp-python (fusion on), all layers on the GPU. A run passes when it exits 0 and writes text; an abort or
a signal fails it. Writes OUT_DIR/shapes.md and shapes.json and exits 1 if any run failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import copy_tokenizer, write_out  # noqa: E402

# name: (hidden, FFN, heads, KV heads, head size); Mistral-7B and LLaMA-3-70B share LLaMA-3-8B's / LLaMA-2-70B's
MODELS = {
    "SmolLM2-135M": (576, 1536, 9, 3, 64), "SmolLM2-360M": (960, 2560, 15, 5, 64),
    "SmolLM2-1.7B": (2048, 8192, 32, 32, 64), "TinyLlama-1.1B": (2048, 5632, 32, 4, 64),
    "Llama-3.2-1B": (2048, 8192, 32, 8, 64), "Llama-3.2-3B": (3072, 8192, 24, 8, 128),
    "LLaMA-2-7B": (4096, 11008, 32, 32, 128), "LLaMA-3-8B": (4096, 14336, 32, 8, 128),
    "LLaMA-2-13B": (5120, 13824, 40, 40, 128), "LLaMA-2-70B": (8192, 28672, 64, 8, 128),
    "Qwen2.5-0.5B": (896, 4864, 14, 2, 64), "Qwen2.5-1.5B": (1536, 8960, 12, 2, 128),
    "Qwen2.5-3B": (2048, 11008, 16, 2, 128), "Qwen2.5-7B": (3584, 18944, 28, 4, 128),
    "Qwen2.5-14B": (5120, 13824, 40, 8, 128), "Qwen2.5-32B": (5120, 27648, 40, 8, 128),
    "Qwen2.5-72B": (8192, 29568, 64, 8, 128),
}
LAYER_TYPES = [(2, 128), (3, 128), (2, 64), (3, 64)]  # (average bits, group size) of layers 0..3
N_VOCAB = 32000
BLOCK_ROWS = 64
PROMPT = "Once upon a time"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def slim_tensor(rows: int, cols: int, avg_bits: int, group: int, rng: np.random.Generator):
    """Packed SLIM rows [rows, row bytes] and the type: BLOCK_ROWS random RTN rows, repeated."""
    from slim2gguf.format import slim_type
    from slim2gguf.rtn_rows import random_sba_bits, rtn_rows

    if cols % group:
        group = 64
    st = slim_type(avg_bits, group)
    bits = random_sba_bits(cols // group, avg_bits, rng)
    block = rtn_rows((rng.standard_normal((BLOCK_ROWS, cols)) * 0.02).astype(np.float32), st, bits)
    reps = -(-rows // BLOCK_ROWS)
    return np.ascontiguousarray(np.tile(block, (reps, 1))[:rows]), st.ggml_type


def make_model(path: Path, name: str, vocab: Path) -> None:
    import gguf

    hidden, ffn, n_head, n_kv, hd = MODELS[name]
    rng = np.random.default_rng(17)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"{name}-shaped-random")
    w.add_context_length(4096)
    w.add_embedding_length(hidden)
    w.add_block_count(len(LAYER_TYPES))
    w.add_feed_forward_length(ffn)
    w.add_rope_dimension_count(hd)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_SLIM2))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    copy_tokenizer(w, vocab)

    def add(tname: str, rows: int, cols: int, avg_bits: int, group: int) -> None:
        data, qtype = slim_tensor(rows, cols, avg_bits, group, rng)
        w.add_tensor(tname, data, raw_dtype=qtype)

    norm = np.ones(hidden, dtype=np.float32)
    add("token_embd.weight", N_VOCAB, hidden, 2, 64)
    for i, (bits, group) in enumerate(LAYER_TYPES):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        add(f"blk.{i}.attn_q.weight", n_head * hd, hidden, bits, group)
        add(f"blk.{i}.attn_k.weight", n_kv * hd, hidden, bits, group)
        add(f"blk.{i}.attn_v.weight", n_kv * hd, hidden, bits, group)
        add(f"blk.{i}.attn_output.weight", hidden, n_head * hd, bits, group)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden, bits, group)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden, bits, group)
        add(f"blk.{i}.ffn_down.weight", hidden, ffn, bits, group)
    w.add_tensor("output_norm.weight", norm)
    add("output.weight", N_VOCAB, hidden, 2, 64)
    write_out(w)


def cmd_make(args) -> None:
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    for name in args.only or MODELS:
        t0 = time.time()
        path = d / f"{name}.gguf"
        make_model(path, name, Path(args.vocab))
        log(f"{name}: {path.stat().st_size / 2**20:.0f} MiB, {time.time() - t0:.1f} s")


PY_RUN = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_gpu_layers=99, n_ctx=256, verbose=False)
out = llm(sys.argv[2], max_tokens=8, temperature=0.0)
print(repr(out["choices"][0]["text"]))
"""


def run_one(cmd: list[str], env: dict) -> dict:
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=dict(os.environ, **env),
                       timeout=300)  # random weights write random bytes
    tail = (r.stderr.strip().splitlines() or [""])[-1][:160]
    ok = r.returncode == 0 and bool(r.stdout.strip())
    return {"ok": ok, "rc": r.returncode, "s": round(time.time() - t0, 1), "text": r.stdout.strip()[-80:],
            "err": "" if ok else tail}


def cmd_run(args) -> int:
    d, out = Path(args.dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    completion = str(Path(args.bin) / "llama-completion")
    py_env = {"PYTHONPATH": args.pysrc, "LLAMA_CPP_LIB_PATH": args.bin} if args.pysrc else None
    results = {}
    for name in MODELS:
        f = str(d / f"{name}.gguf")
        base = [completion, "-m", f, "-p", PROMPT, "-n", "8", "-ngl", "99", "--temp", "0", "-no-cnv"]
        res = {"fused": run_one(base, {}), "unfused": run_one(base, {"GGML_CUDA_SLIM_FUSE": "0"})}
        if py_env:
            res["python"] = run_one([sys.executable, "-c", PY_RUN, f, PROMPT], py_env)
        results[name] = res
        log(f"{name}: " + ", ".join(f"{k} {'ok' if v['ok'] else 'FAIL rc=' + str(v['rc']) + ' ' + v['err']}"
                                    for k, v in res.items()))
    runs = list(next(iter(results.values())))
    lines = ["| model (hidden x FFN, KV rows) | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for name, res in results.items():
        h, f, _, kv, hd = MODELS[name]
        cells = ["ok" if v["ok"] else f"FAIL (rc {v['rc']})" for v in res.values()]
        lines.append(f"| {name} ({h} x {f}, {kv * hd}) | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "shapes.md").write_text(text)
    (out / "shapes.json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0 if all(v["ok"] for res in results.values() for v in res.values()) else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--vocab", required=True)
    m.add_argument("--dir", required=True)
    m.add_argument("--only", nargs="+", choices=list(MODELS), help="make only these shapes")
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--dir", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--pysrc", help="folder holding the llama_cpp package (and diskcache) to test llama-cpp-python")
    args = ap.parse_args()
    if args.cmd == "make":
        cmd_make(args)
        return 0
    return cmd_run(args)


if __name__ == "__main__":
    raise SystemExit(main())
