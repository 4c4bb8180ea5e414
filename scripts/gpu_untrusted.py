"""Untrusted SLIM files on the GPU build (issue 11), run by `scripts/device_cuda.sh untrusted`.

    python scripts/gpu_untrusted.py --bin BIN --big LLAMA7B_SLIM2.gguf --small SMALL_SLIM.gguf --out OUT_DIR

1. Load cost on a 7B-shaped SLIM2 file: llama-completion's own "load time" with every layer on the GPU (3 runs),
   and ggml_slim_check_rows (the loader's check) timed alone over all SLIM tensors of the file (page cache warm).
2. Corrupted copies of a small SLIM file (one row's width, every row's width, an illegal width, a NaN scale, a
   truncated file) through llama-completion -ngl 99, memory-mapped and with -lm none (tensors read, not mapped: the chunked upload path):
   each must be refused with a message and an exit code in 1..127 (never a signal); the intact copy must run.
Writes OUT_DIR/untrusted.md; exits 1 if a corrupted copy was accepted or a run ended on a signal.
"""
from __future__ import annotations

import argparse
import ctypes
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET = "blk.0.ffn_down.weight"


def completion(bin_dir: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "llama-completion"), "-m", str(model), "-p", "Once upon a time", "-n", "2",
                           "-ngl", "99", "--temp", "0", "-no-cnv", *extra], capture_output=True, text=True,
                          errors="replace", timeout=600)


def load_cost(bin_dir: Path, big: Path) -> list[str]:
    import gguf

    loads = []
    for _ in range(3):
        r = completion(bin_dir, big)
        m = re.search(r"load time =\s+([\d.]+) ms", r.stderr)
        loads.append(float(m.group(1)) if m else float("nan"))
    lib = ctypes.CDLL(str(bin_dir / "libggml-base.so"))
    check = lib.ggml_slim_check_rows
    check.restype = ctypes.c_bool
    check.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_char_p, ctypes.c_size_t]
    reader = gguf.GGUFReader(big)
    tensors = [t for t in reader.tensors if int(t.tensor_type) >= 100]
    err = ctypes.create_string_buffer(256)
    for t in tensors:   # warm the page cache
        np.asarray(t.data).sum()
    t0 = time.perf_counter()
    ok = all(check(int(t.tensor_type), np.asarray(t.data).ctypes.data, int(t.n_bytes), int(t.shape[0]), err, 256)
             for t in tensors)
    check_ms = (time.perf_counter() - t0) * 1e3
    size = big.stat().st_size / 2**30
    return [f"7B-shaped SLIM2 file ({size:.2f} GiB, {len(tensors)} SLIM tensors): llama-completion -ngl 99 load time "
            f"{' / '.join(f'{x:.0f}' for x in loads)} ms (median {statistics.median(loads):.0f}); "
            f"ggml_slim_check_rows over every SLIM tensor {check_ms:.1f} ms (all valid: {ok})"]


def corrupt(small: Path, work: Path) -> dict[str, Path]:
    import gguf

    t = next(x for x in gguf.GGUFReader(small).tensors if x.name == TARGET)
    group = 64 if int(t.tensor_type) in (100, 102) else 128        # SLIM*_G64 / SLIM*_G128
    off, row_bytes, G = int(t.data_offset), int(t.n_bytes) // int(t.shape[1]), int(t.shape[0]) // group
    raw = small.read_bytes()

    def header(row: int, group: int) -> int:
        return off + row * row_bytes + 4 * group

    def with_width(data: bytearray, pos: int, bits: int) -> None:
        dh = int.from_bytes(data[pos:pos + 2], "little") & 0x7FFE
        tag = bits - 1
        data[pos:pos + 2] = (dh | (tag >> 1) << 15 | (tag & 1)).to_bytes(2, "little")

    def width(data: bytearray, pos: int) -> int:
        dh = int.from_bytes(data[pos:pos + 2], "little")
        return ((dh >> 15) << 1 | (dh & 1)) + 1

    cases = {"intact": bytearray(raw)}
    d = bytearray(raw)
    with_width(d, header(5, 0), 3 if width(d, header(5, 0)) != 3 else 1)
    cases["one row's width"] = d
    d = bytearray(raw)
    for r in range(int(t.shape[1])):
        with_width(d, header(r, 0), 3 if width(d, header(r, 0)) != 3 else 1)
    cases["every row's width"] = d
    d = bytearray(raw)
    with_width(d, header(2, 1), 4)
    cases["illegal width"] = d
    d = bytearray(raw)
    d[header(7, G - 1):header(7, G - 1) + 2] = (0x7E00 | (int.from_bytes(d[header(7, G - 1):header(7, G - 1) + 2],
                                                                        "little") & 0x8001)).to_bytes(2, "little")
    cases["NaN scale"] = d
    cases["truncated"] = bytearray(raw[:off + row_bytes * 3 + 5])
    out = {}
    for name, data in cases.items():
        p = work / (re.sub(r"\W+", "_", name) + ".gguf")
        p.write_bytes(bytes(data))
        out[name] = p
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--big", required=True)
    ap.add_argument("--small", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bin_dir, out = Path(args.bin), Path(args.out)
    work = out / "untrusted_tmp"
    work.mkdir(parents=True, exist_ok=True)
    lines = ["# Untrusted SLIM files on the CUDA build", "", *load_cost(bin_dir, Path(args.big)), "",
             "| file | mmap: exit, message | -lm none: exit, message |", "|---|---|---|"]
    failed = False
    for name, path in corrupt(Path(args.small), work).items():
        cells = []
        for extra in ((), ("-lm", "none")):
            r = completion(bin_dir, path, *extra)
            text = r.stdout + r.stderr
            msg = next((ln.strip() for ln in text.splitlines() if "error loading model" in ln), "")
            ok = r.returncode == 0 if name == "intact" else 0 < r.returncode < 128 and bool(msg)
            failed |= not ok
            cells.append(f"{'ok' if ok else 'FAIL'}: exit {r.returncode}" + (f", `{msg[-150:]}`" if msg else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    shutil.rmtree(work)
    text = "\n".join(lines) + "\n"
    (out / "untrusted.md").write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
