"""ctypes access to the patched ggml's type functions (libggml-base / libggml-cpu of `slim2gguf build-llama`).

    lib = load()                         None when the CPU build is absent
    lib.to_float(type, row_bytes, ne0)   type_traits[type].to_float of ONE row -> float32[ne0]
    lib.from_float_ref(type, x)          type_traits[type].from_float_ref of one row -> uint8 bytes
    lib.vec_dot(type, row, y_q8, n)      type_traits_cpu[type].vec_dot (the dispatched fast path)
    lib.sym(name)                        any exported function (e.g. ggml_vec_dot_slim2_g64_q8_1_generic)
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from slim2gguf import llama_build

TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


class TypeTraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


GGML_TYPE_Q8_1 = 9


def lib_dir() -> Path:
    return llama_build.build_dir(False) / "bin"


class GgmlLib:
    def __init__(self, directory: Path):
        mode = ctypes.RTLD_GLOBAL
        self.base = ctypes.CDLL(str(directory / "libggml-base.so"), mode=mode)
        self.cpu = ctypes.CDLL(str(directory / "libggml-cpu.so"), mode=mode)
        self.base.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
        self.base.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TypeTraitsCpu)
        self.cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
        self.base.ggml_validate_slim_rows.restype = ctypes.c_bool
        self.base.ggml_validate_slim_rows.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
        self.base.ggml_validate_row_data.restype = ctypes.c_bool
        self.base.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        self.base.ggml_type_name.restype = ctypes.c_char_p
        self.base.ggml_type_name.argtypes = [ctypes.c_int]
        self.base.ggml_row_size.restype = ctypes.c_size_t
        self.base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        self.cpu.ggml_cpu_init()

    def traits(self, t: int) -> TypeTraits:
        return self.base.ggml_get_type_traits(int(t)).contents

    def traits_cpu(self, t: int) -> TypeTraitsCpu:
        return self.cpu.ggml_get_type_traits_cpu(int(t)).contents

    def sym(self, name: str):
        for lib in (self.cpu, self.base):
            try:
                return getattr(lib, name)
            except AttributeError:
                pass
        raise AttributeError(name)

    def to_float(self, t: int, row: np.ndarray, ne0: int) -> np.ndarray:
        row = np.ascontiguousarray(row, dtype=np.uint8)
        out = np.empty(ne0, dtype=np.float32)
        TO_FLOAT(self.traits(t).to_float)(row.ctypes.data, out.ctypes.data, ne0)
        return out

    def from_float_ref(self, t: int, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(int(self.base.ggml_row_size(int(t), x.size)), dtype=np.uint8)
        FROM_FLOAT(self.traits(t).from_float_ref)(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def quantize_q8_1(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(int(self.base.ggml_row_size(GGML_TYPE_Q8_1, x.size)), dtype=np.uint8)
        FROM_FLOAT(self.traits_cpu(GGML_TYPE_Q8_1).from_float)(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def vec_dot_2x2(self, t: int, rows: np.ndarray, ys: np.ndarray, n: int, fn=None) -> np.ndarray:
        """nrc = 2 (what ggml-cpu's mul_mat does for even batches): out[c, r] = dot(rows[r], ys[c])."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        ys = np.ascontiguousarray(ys, dtype=np.uint8)
        out = np.full((2, 2), np.nan, dtype=np.float32)  # s[r + c*bs] with bs = 2
        f = VEC_DOT(self.traits_cpu(t).vec_dot) if fn is None else fn
        f(n, out.ctypes.data, 2, rows.ctypes.data, rows.shape[1], ys.ctypes.data, ys.shape[1], 2)
        return out

    def vec_dot(self, t: int, row: np.ndarray, y: np.ndarray, n: int, fn=None) -> float:
        row = np.ascontiguousarray(row, dtype=np.uint8)
        y = np.ascontiguousarray(y, dtype=np.uint8)
        s = ctypes.c_float(0.0)
        f = VEC_DOT(self.traits_cpu(t).vec_dot) if fn is None else fn
        f(n, ctypes.addressof(s), 0, row.ctypes.data, 0, y.ctypes.data, 0, 1)
        return float(s.value)


def load() -> GgmlLib | None:
    d = lib_dir()
    if not (d / "libggml-cpu.so").exists():
        return None
    return GgmlLib(d)


def q8_1_blocks(data: np.ndarray):
    """Q8_1 bytes -> (d fp32 [nb], s fp32 [nb], qs int8 [nb, 32]) as stored."""
    blk = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.dtype(
        [("d", "<f2"), ("s", "<f2"), ("qs", "i1", (32,))]))
    return blk["d"].astype(np.float32), blk["s"].astype(np.float32), blk["qs"].astype(np.int64)


def assert_file_to_float_matches_reference(lib: GgmlLib, path) -> int:
    """ggml's to_float of every row of every SLIM tensor of a GGUF == reference_decoder.decode, bit for bit.
    Returns the number of SLIM tensors checked."""
    from gguf import GGUFReader

    from slim2gguf import reference_decoder
    from slim2gguf.format import SLIM_TYPES, is_slim

    n = 0
    for t in GGUFReader(str(path)).tensors:
        if not is_slim(t.tensor_type):
            continue
        ne0 = int(t.shape[0])
        rows = np.ascontiguousarray(t.data).reshape(-1, SLIM_TYPES[int(t.tensor_type)].row_bytes(ne0))
        ref = reference_decoder.decode(rows, ne0, int(t.tensor_type))
        got = np.stack([lib.to_float(int(t.tensor_type), r, ne0) for r in rows])
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), t.name
        n += 1
    return n
