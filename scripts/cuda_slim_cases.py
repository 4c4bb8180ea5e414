"""Case files for scripts/cuda_slim_check.cpp: random valid SLIM rows (SBA-shaped random bit maps, codes, scales on
the tag grid) packed by slim2gguf.format and decoded by the Numba reference decoder.

    python scripts/cuda_slim_cases.py OUT_DIR

Each file: b"SLIMCASE", int64 [type, ne00, nrows, nbytes], the row bytes, float32 [nrows, ne00] Numba decode.
Shapes cover odd group counts (4-byte aligned rows), SmolLM2 widths (576, 1536), LLaMA-7B widths (4096, 11008)
and a row count that is not a multiple of the kernels' rows per block.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slim2gguf.format import SLIM_TYPES, pack_rows  # noqa: E402
from slim2gguf.reference_decoder import decode  # noqa: E402


def sba_bits(n_groups: int, avg: int, rng: np.random.Generator) -> np.ndarray:
    """k groups at avg+1, k at avg-1 (random positions), the rest avg: the average is exact."""
    k = int(rng.integers(1, n_groups // 2 + 1)) if n_groups >= 2 else 0
    bits = np.full(n_groups, avg, dtype=np.int64)
    order = rng.permutation(n_groups)
    bits[order[:k]] = avg + 1
    bits[order[k:2 * k]] = avg - 1
    return bits


def random_rows(st, ne00: int, nrows: int, rng: np.random.Generator) -> np.ndarray:
    g = st.group_size
    G = ne00 // g
    bits = sba_bits(G, st.avg_bits, rng)
    q = np.concatenate([rng.integers(0, 1 << int(b), size=(nrows, g)) for b in bits], axis=1).astype(np.uint8)
    d = np.abs(rng.normal(0, 0.01, size=(nrows, G))).astype(np.float16)
    d[rng.random((nrows, G)) < 0.02] = 0                      # a few all-zero scales
    d[rng.random((nrows, G)) < 0.02] = np.float16(3e-7)       # and subnormal ones
    dh = d.view(np.uint16) & np.uint16(0xFFFE) | ((bits - 1) & 1).astype(np.uint16)[None, :]
    m = rng.normal(0, 0.02, size=(nrows, G)).astype(np.float16)
    return pack_rows(bits, q, dh.view(np.float16), m, st)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261122)
    n = 0
    for st in SLIM_TYPES.values():
        g = st.group_size
        shapes = [(5 * g, 33), (576 if g == 64 else 1536, 64), (4096, 64), (11008, 40)]
        for ne00, nrows in shapes:
            data = random_rows(st, ne00, nrows, rng)
            ref = decode(data, ne00, st)
            path = out / f"{st.name.lower()}_{ne00}x{nrows}.bin"
            with open(path, "wb") as f:
                f.write(b"SLIMCASE")
                f.write(np.array([int(st.ggml_type), ne00, nrows, data.size], dtype=np.int64).tobytes())
                f.write(np.ascontiguousarray(data).tobytes())
                f.write(np.ascontiguousarray(ref, dtype=np.float32).tobytes())
            n += 1
    print(f"{n} cases in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
