"""Single-thread CPU-time throughput of llama-bench: a before/after comparison that survives a loaded machine.

    .venv/bin/python scripts/bench_cpu_time.py --bin OLD/bin --bin NEW/bin FILE.gguf... [--rounds 3]

For each round, each bin/ folder (a llama.cpp build's tools + libraries), each model (the Q8_0/Q4_0 files of
scripts/bench_cpu.py first, then FILEs) and each test (pp128: `-p 128 -n 0`, tg32: `-p 0 -n 32`), runs
`llama-bench -t 1` with `-r 1` and with `-r 6`: the difference of the two runs' CPU seconds (getrusage of the
child, user + sys) is the work of 5 repetitions (load, warm-up and the first repetition cancel), t/s = 5 x
tokens / that. One thread, so neither time slices lost to other jobs nor 2-thread barriers count; wall-clock
llama-bench numbers on a shared 2-core box swing by 10x. Prints `round  bin  model  test  t/s` lines (TSV).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu import stock_file  # noqa: E402

TESTS = {"pp128": (["-p", "128", "-n", "0"], 128), "tg32": (["-p", "0", "-n", "32"], 32)}


def cpu_seconds(cmd: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="SLIM GGUF files")
    ap.add_argument("--bin", action="append", required=True, type=Path, help="a build's bin/ (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    models = [stock_file("Q8_0"), stock_file("Q4_0"), *args.files]
    for rnd in range(args.rounds):
        for b in args.bin:
            for m in models:
                for tname, (targs, tokens) in TESTS.items():
                    base = [str(b / "llama-bench"), "-t", "1", "-m", str(m), *targs]
                    c1 = cpu_seconds([*base, "-r", "1"])
                    c6 = cpu_seconds([*base, "-r", "6"])
                    print(f"{rnd}\t{b}\t{m.name}\t{tname}\t{5 * tokens / (c6 - c1):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
