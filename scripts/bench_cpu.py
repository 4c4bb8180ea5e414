"""CPU speed of the SLIM files next to stock types of the same model, in ONE llama-bench run.

    .venv/bin/python scripts/bench_cpu.py smollm2-slim2.gguf smollm2-slim3.gguf [--threads 2] [--out docs/bench_cpu.md]
    .venv/bin/python scripts/bench_cpu.py --model qwen qwen-slim2.gguf --threads 2      # the 1.5B benchmark model

The stock files are made with the patched llama-quantize and cached in .cache/bench/: from the demo model
(SmolLM2-135M-Instruct, a Q4_1 GGUF: --allow-requantize; for a speed comparison only the tensor types matter),
Q8_0 and Q4_0; from the Qwen2.5-Coder-1.5B F16 (scripts/fetch_qwen.py --f16), Q4_0, Q2_K and IQ2_XS (IQ2_XS needs
an imatrix: --imatrix FILE, e.g. scripts/report.py's; without one it is left out). Prints llama-bench's markdown
table (pp = prompt processing, tg = decode, tokens/s).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slim2gguf import llama_build  # noqa: E402
from slim2gguf.model_io import demo_model_path  # noqa: E402


QWEN_F16 = REPO / ".cache" / "models" / "qwen2.5-coder-1.5b-instruct-f16.gguf"
MODELS = {"demo": ("smollm2", ["Q8_0", "Q4_0"]), "qwen": ("qwen2.5-coder-1.5b", ["Q4_0", "Q2_K", "IQ2_XS"])}


def source_file(model: str) -> Path:
    if model == "demo":
        return demo_model_path()
    if not QWEN_F16.exists():
        sys.exit(f"{QWEN_F16} not found: run scripts/fetch_qwen.py --f16")
    return QWEN_F16


def stock_file(model: str, kind: str, imatrix: Path | None) -> Path | None:
    out = REPO / ".cache" / "bench" / f"{MODELS[model][0]}-{kind.lower()}.gguf"
    if not out.exists():
        if kind.startswith("IQ2") and imatrix is None:
            print(f"{kind}: left out (llama-quantize needs --imatrix for it)", file=sys.stderr)
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        q = llama_build.tool_path("llama-quantize")
        im = ["--imatrix", str(imatrix)] if imatrix else []
        subprocess.run([str(q), "--allow-requantize", *im, str(source_file(model)), str(out), kind], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="SLIM GGUF files")
    ap.add_argument("--model", choices=list(MODELS), default="demo", help="what the stock files are made from")
    ap.add_argument("--imatrix", type=Path, help="imatrix for the IQ2 types (speed does not depend on it)")
    ap.add_argument("--threads", "-t", type=int, default=os.cpu_count())
    ap.add_argument("-p", type=int, default=128, help="prompt tokens (default 128)")
    ap.add_argument("-n", type=int, default=64, help="generated tokens (default 64)")
    ap.add_argument("-r", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--out", type=Path, help="also write the table here")
    ap.add_argument("--llama-bench", type=Path, help="this llama-bench instead of the build's (e.g. a saved "
                    "copy of an earlier build's bin/ for before/after runs)")
    args = ap.parse_args()
    bench = args.llama_bench or llama_build.tool_path("llama-bench")
    if not bench.exists():
        sys.exit("llama-bench not built: run `slim2gguf build-llama`")
    stock = [stock_file(args.model, kind, args.imatrix) for kind in MODELS[args.model][1]]
    models = [m for m in stock if m is not None] + list(args.files)
    cmd = [str(bench), "-t", str(args.threads), "-p", str(args.p), "-n", str(args.n), "-r", str(args.r), "-o", "md"]
    for m in models:
        cmd += ["-m", str(m)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(res.stderr[-3000:])
    table = res.stdout.strip()
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
