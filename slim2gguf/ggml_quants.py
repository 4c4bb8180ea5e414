"""llama.cpp's own quantizers for the stock types of a mixed file (`--target-bpw`): `ggml_quantize_chunk` of the
patched ggml, the very function llama-quantize calls, so a tensor written here is byte for byte what
llama-quantize writes for the same weights and importance vector. Decoding goes through gguf-py.

    quantize("q4_k", W, imatrix)  -> uint8 [rows, row bytes]
    dequantize("q4_k", data)      -> float32 [rows, cols]
    row_bytes("q4_k", cols)       -> bytes of one row (None where the type cannot hold the width)
"""
from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import SlimError


def qtype(name: str):
    import gguf
    try:
        return gguf.GGMLQuantizationType[name.upper()]
    except KeyError:
        raise SlimError(f"unknown ggml type {name!r}") from None


def row_bytes(name: str, cols: int) -> int | None:
    """Bytes of one row of `cols` weights in type `name`, None when cols is not a multiple of its block."""
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[qtype(name)]
    return None if cols % block else cols // block * size


def _candidate_dirs() -> list[Path]:
    import importlib.util

    from . import llama_build
    dirs = []
    spec = importlib.util.find_spec("llama_cpp")
    if spec and spec.origin:
        dirs.append(Path(spec.origin).parent / "lib")   # the patched llama-cpp-python's own copy
    dirs.append(llama_build.build_dir(False) / "bin")   # `slim2gguf build-llama`
    return dirs


@lru_cache(maxsize=1)
def _lib():
    for d in _candidate_dirs():
        path = d / "libggml-base.so"
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            f = lib.ggml_quantize_chunk
            f.restype = ctypes.c_size_t
            f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                          ctypes.c_int64, ctypes.c_void_p]
            return lib
    raise SlimError("stock types for --target-bpw need the patched ggml (libggml-base.so): run "
                    "`bash scripts/setup.sh --llama` or `slim2gguf build-llama`")


def available() -> bool:
    try:
        _lib()
        return True
    except SlimError:
        return False


def quantize(name: str, W: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """W float32 [rows, cols] -> the type's bytes [rows, row bytes], imatrix float32 [cols] (llama-imatrix's
    mean squared input per column) or None."""
    t = qtype(name)
    W = np.ascontiguousarray(W, dtype=np.float32)
    rows, cols = W.shape
    rb = row_bytes(name, cols)
    if rb is None:
        raise SlimError(f"type {name} cannot hold rows of {cols} weights")
    out = np.empty((rows, rb), dtype=np.uint8)
    imat = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    if imat is not None and imat.shape != (cols,):
        raise SlimError(f"importance vector of {imat.shape} for rows of {cols}")
    imat_ptr = None if imat is None else imat.ctypes.data

    def chunk(first_last: tuple[int, int]) -> int:
        # ggml_quantize_chunk(type, src, dst, start element, rows, row length, imatrix) writes rows from
        # `start / cols` on, at the same offsets in dst: disjoint row ranges can run at once (ctypes drops the GIL)
        first, last = first_last
        return _lib().ggml_quantize_chunk(int(t), W.ctypes.data, out.ctypes.data, first * cols, last - first, cols,
                                          imat_ptr)

    n = sum(_map(chunk, _row_ranges(rows)))
    if n != out.nbytes:
        raise SlimError(f"ggml_quantize_chunk wrote {n} bytes for {name}, expected {out.nbytes}")
    return out


def dequantize(name: str, data: np.ndarray) -> np.ndarray:
    import gguf
    t = qtype(name)
    parts = _map(lambda r: gguf.quants.dequantize(data[r[0]:r[1]], t).astype(np.float32, copy=False),
                 _row_ranges(data.shape[0]) if data.ndim == 2 else [(0, None)])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


MIN_ROWS_PER_THREAD = 256


def _row_ranges(rows: int) -> list[tuple[int, int]]:
    import os
    n = max(1, min(os.cpu_count() or 1, rows // MIN_ROWS_PER_THREAD))
    edges = [rows * i // n for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _map(fn, ranges) -> list:
    """fn over row ranges, on a thread each when there are several (a wide tensor quantizes in seconds, not
    tens of seconds: the bit budget's measuring pass quantizes every tensor at every stock type)."""
    if len(ranges) == 1:
        return [fn(ranges[0])]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(ranges)) as pool:
        return list(pool.map(fn, ranges))


def fake_quant(name: str, W: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """What the file's tensor decodes to: dequantize(quantize(W))."""
    return dequantize(name, quantize(name, W, imatrix))
