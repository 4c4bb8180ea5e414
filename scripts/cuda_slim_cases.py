"""Case files for scripts/cuda_slim_check.cpp: valid SLIM rows built by round-to-nearest (slim2gguf.rtn_rows, the
library's RTN row builder) of random weights with SBA-shaped random bit maps, and their Numba reference decode.

    python scripts/cuda_slim_cases.py OUT_DIR

Each file: b"SLIMCASE", int64 [type, ne00, nrows, nbytes], the row bytes, float32 [nrows, ne00] Numba decode.
Beside each NAME.bin, NAME.up holds a second matrix of the same type and shape with its own bit map (SBA gives
every tensor its own), in the same format: the up projection of a gate/up + SwiGLU pair whose gate is NAME.bin.
Shapes cover odd group counts (4-byte aligned rows), SmolLM2 widths (576, 1536), LLaMA-7B widths (4096, 11008)
and a row count that is not a multiple of the kernels' rows per block. A few groups are flat (scale 0, or the
smallest scale of the tag's parity) and a few nearly flat (subnormal scales): the kernels' edge cases.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slim2gguf.format import SLIM_TYPES  # noqa: E402
from slim2gguf.reference_decoder import decode  # noqa: E402
from slim2gguf.rtn_rows import random_sba_bits, rtn_rows  # noqa: E402


def random_weights(nrows: int, n_groups: int, g: int, rng: np.random.Generator) -> np.ndarray:
    """Normal weights around a per-group offset, with ~2 % flat groups and ~2 % groups 1e-4 as wide."""
    w = rng.normal(0, 0.02, size=(nrows, n_groups, 1)) + rng.normal(0, 0.01, size=(nrows, n_groups, g))
    flat = rng.random((nrows, n_groups)) < 0.02
    w[flat] = w[flat][:, :1]                                   # max == min: d rounds to 0 (or the least scale)
    narrow = rng.random((nrows, n_groups)) < 0.02
    w[narrow] = w[narrow][:, :1] + 1e-4 * (w[narrow] - w[narrow][:, :1])   # d ~ 1e-6: subnormal in fp16
    return w.reshape(nrows, n_groups * g).astype(np.float32)


def random_rows(st, ne00: int, nrows: int, rng: np.random.Generator) -> np.ndarray:
    G = ne00 // st.group_size
    k = int(rng.integers(1, G // 2 + 1)) if G >= 2 else 0      # at least one pair of mixed widths
    bits = random_sba_bits(G, st.avg_bits, rng, k)
    return rtn_rows(random_weights(nrows, G, st.group_size, rng), st, bits)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261122)
    n = 0
    for st in SLIM_TYPES.values():
        g = st.group_size
        shapes = [(5 * g, 33), (576 if g == 64 else 1536, 64), (4096, 64), (11008, 40)]
        for ne00, nrows in shapes:
            for suffix in (".bin", ".up"):
                write_case(out / f"{st.name.lower()}_{ne00}x{nrows}{suffix}", st, ne00,
                           random_rows(st, ne00, nrows, rng))
            n += 1
    print(f"{n} cases (+ their up matrices) in {out}")


def write_case(path: Path, st, ne00: int, data: np.ndarray) -> None:
    """One case file: the header, the row bytes, their Numba decode."""
    ref = decode(data, ne00, st)
    with open(path, "wb") as f:
        f.write(b"SLIMCASE")
        f.write(np.array([int(st.ggml_type), ne00, data.shape[0], data.size], dtype=np.int64).tobytes())
        f.write(np.ascontiguousarray(data).tobytes())
        f.write(np.ascontiguousarray(ref, dtype=np.float32).tobytes())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
