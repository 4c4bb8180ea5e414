"""CPU speed of the SLIM files next to stock Q4_0 and Q8_0 of the same model, in ONE llama-bench run.

    .venv/bin/python scripts/bench_cpu.py smollm2-slim2.gguf smollm2-slim3.gguf [--threads 2] [--out docs/bench_cpu.md]

Q8_0 and Q4_0 are made with the patched llama-quantize from the demo model (SmolLM2-135M-Instruct, a Q4_1 GGUF:
--allow-requantize; for a speed comparison only the tensor types matter) and cached in .cache/bench/.
Prints llama-bench's markdown table (pp = prompt processing, tg = decode, tokens/s).
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


def stock_file(kind: str) -> Path:
    out = REPO / ".cache" / "bench" / f"smollm2-{kind.lower()}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        q = llama_build.tool_path("llama-quantize")
        subprocess.run([str(q), "--allow-requantize", str(demo_model_path()), str(out), kind], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="SLIM GGUF files")
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
    models = [stock_file("Q8_0"), stock_file("Q4_0"), *args.files]
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
