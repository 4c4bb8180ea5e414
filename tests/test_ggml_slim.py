"""The patched ggml's SLIM type functions (CPU build, via ctypes) against the Numba reference decoder.

- to_float of every row == reference_decoder.decode, bit for bit (rows from format.pack_rows and from ggml's own
  quantize_row_*_ref), SmolLM2's row widths included;
- ggml's quantize_row_*_ref and slim2gguf's RTN row builder (rtn_rows) write the same bytes for the same input
  and bit map: one scale-rounding rule (docs/format.md) in C and Python;
- vec_dot (dispatched AVX2 path and the _generic scalar reference) against fp64 dots: tight against the dot with
  the Q8_1-rounded activations, and within the Q8 rounding bound against the exact activations;
- ggml_validate_slim_rows / ggml_validate_row_data accept good rows and refuse bad tags, and corrupt tags never
  make to_float/vec_dot read past the row (NaN instead).
"""
from __future__ import annotations

import numpy as np
import pytest

from slim2gguf import reference_decoder
from slim2gguf.format import SLIM_TYPES, pack_rows, row_bits
import ggml_lib
from slim2gguf.rtn_rows import random_sba_bits, rtn_rows
from slim_synth import rtn

import torch

pytestmark = pytest.mark.llama

LIB = ggml_lib.load()
if LIB is None:
    pytest.skip("patched llama.cpp CPU build absent (run `slim2gguf build-llama`)", allow_module_level=True)

TYPES = list(SLIM_TYPES.values())
IDS = [t.name for t in TYPES]


def widths(st):
    g = st.group_size
    # one group, a few, SmolLM2's 576 (g64) / 1536 (g128), odd group counts, a wide row
    return sorted({g, 3 * g, 5 * g, 576 if g == 64 else 1536, 4096})


def make_rows(st, rows, ne0, seed, k=None):
    rng = np.random.default_rng(seed)
    w = torch.from_numpy((rng.standard_normal((rows, ne0)) * 0.05).astype(np.float32))
    # some outlier columns so groups differ in range, like real weights
    w[:, rng.integers(0, ne0, size=max(1, ne0 // 100))] *= 8
    bits = random_sba_bits(ne0 // st.group_size, st.avg_bits, rng, k)
    ql = rtn(w, st.avg_bits, st.group_size, seed=seed, bits=bits)
    data = pack_rows(ql.bits.numpy(), ql.q.numpy(), ql.d.numpy(), ql.m.numpy(), st)
    return data, w.numpy()


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_to_float_bit_exact(st):
    for ne0 in widths(st):
        G = ne0 // st.group_size
        for k in sorted({0, G // 4, G // 2}):
            data, _ = make_rows(st, 7, ne0, seed=ne0 * 10 + k, k=k)
            ref = reference_decoder.decode(data, ne0, st)
            got = np.stack([LIB.to_float(st.ggml_type, row, ne0) for row in data])
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (st.name, ne0, k)


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_quantize_row_ref_is_valid(st):
    """ggml's own reference quantizer writes rows the reference decoder validates and decodes identically."""
    rng = np.random.default_rng(1)
    for ne0 in widths(st):
        x = (rng.standard_normal((3, ne0)) * 0.05).astype(np.float32)
        data = np.stack([LIB.from_float_ref(st.ggml_type, r) for r in x])
        assert data.shape[1] == st.row_bytes(ne0)
        reference_decoder.validate(data, ne0, st)
        bits = row_bits(data, ne0, st)
        assert bits.sum() == len(bits) * st.avg_bits
        if len(bits) >= 4:
            assert set(bits.tolist()) == set(st.allowed_bits)
        ref = reference_decoder.decode(data, ne0, st)
        got = np.stack([LIB.to_float(st.ggml_type, r, ne0) for r in data])
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
        # min/max RTN: error within half a step of the coarsest group
        assert np.abs(got - x).max() < 0.5 * (x.max() - x.min())
        assert LIB.base.ggml_validate_slim_rows(int(st.ggml_type), data.ctypes.data, data.nbytes, ne0)


def ggml_reference_bits(n_groups: int, b: int) -> np.ndarray:
    """The fixed bit map of ggml's quantize_row_*_ref (ggml-slim.c: slim_ref_bits): j%4 == 0 -> b+1 (b for an
    unpaired last group), j%4 == 1 -> b-1, else b."""
    j = np.arange(n_groups)
    bits = np.full(n_groups, b)
    bits[j % 4 == 0] = b + 1
    bits[j % 4 == 1] = b - 1
    if (n_groups - 1) % 4 == 0:
        bits[n_groups - 1] = b
    return bits


def rounding_edge_rows(st, ne0: int, rng) -> np.ndarray:
    """Rows that hit the edges of the scale rule: flat groups (d 0, or the least scale of odd parity), tiny ranges
    (subnormal d), and ranges whose d is exactly an fp16 of the wrong parity (a tie between its two neighbours)."""
    g, G = st.group_size, ne0 // st.group_size
    bits = ggml_reference_bits(G, st.avg_bits)
    flat = np.repeat(rng.standard_normal(G).astype(np.float32), g)
    tiny = flat + (rng.standard_normal(ne0) * 1e-6).astype(np.float32)
    tie = np.zeros((G, g), dtype=np.float32)
    for j, b in enumerate(bits):
        h = (int(rng.integers(0x1000, 0x2C00)) & ~1) | (1 - ((b - 1) & 1))    # parity opposite to the tag's
        d = np.uint16(h).view(np.float16).astype(np.float32)
        tie[j] = rng.uniform(0, d * ((1 << b) - 1), g).astype(np.float32)
        tie[j, 0], tie[j, 1] = 0.0, d * ((1 << b) - 1)                       # (max - min) / levels == d exactly
    return np.stack([flat, tiny, tie.reshape(-1)])


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_quantize_row_ref_bytes_equal_python_rtn(st):
    """One scale-rounding rule in C and Python: ggml's reference quantizer and slim2gguf.rtn_rows (quant/'s RTN,
    round_scale_fp16) give identical bytes for the same rows and bit map, ties and subnormal scales included."""
    rng = np.random.default_rng(4)
    for ne0 in widths(st):
        x = (rng.standard_normal((6, ne0)) * 0.05).astype(np.float32)
        x[:, rng.integers(0, ne0, size=max(1, ne0 // 100))] *= 8            # outlier columns
        x = np.concatenate([x, rounding_edge_rows(st, ne0, rng)])
        c_rows = np.stack([LIB.from_float_ref(st.ggml_type, r) for r in x])
        py_rows = rtn_rows(x, st, ggml_reference_bits(ne0 // st.group_size, st.avg_bits))
        assert np.array_equal(c_rows, py_rows), (st.name, ne0, np.argwhere(c_rows != py_rows)[:5].tolist())


def _vec_dot_check(st, fn=None):
    rng = np.random.default_rng(7)
    for ne0 in widths(st):
        data, _ = make_rows(st, 5, ne0, seed=ne0)
        w = reference_decoder.decode(data, ne0, st).astype(np.float64)
        x = rng.standard_normal(ne0).astype(np.float32)
        x[rng.integers(0, ne0, 4)] *= 20  # activation outliers
        yq = LIB.quantize_q8_1(x)
        d8, s8, q8 = ggml_lib.q8_1_blocks(yq)
        xq = (d8[:, None].astype(np.float64) * q8).reshape(-1)  # activations as Q8_1 holds them
        g, nq = st.group_size, st.group_size // 32
        G = ne0 // g
        for r in range(data.shape[0]):
            got = LIB.vec_dot(st.ggml_type, data[r], yq, ne0, fn)
            # the same dot in fp64, with Q8_1's s carrying the m term exactly as the kernel uses it
            hdr = data[r, : 4 * G].copy().view("<u2").reshape(G, 2)
            dgrp = (hdr[:, 0] & 0x7FFF).view(np.float16).astype(np.float64)
            mgrp = hdr[:, 1].view(np.float16).astype(np.float64)
            qgrp = (w[r].reshape(G, g) - mgrp[:, None]) / np.where(dgrp > 0, dgrp, 1)[:, None]
            emul = float(np.sum(dgrp[:, None] * qgrp * xq.reshape(G, g))
                         + np.sum(mgrp * s8.reshape(G, nq).astype(np.float64).sum(1)))
            scale = float(np.abs(w[r] * xq).sum() + np.abs(mgrp).sum() * np.abs(s8).max() * nq) + 1e-30
            assert abs(got - emul) <= 2e-6 * scale, (st.name, ne0, r, got, emul)
            # against the exact activations: Q8 rounding (|x - xq| <= d8/2 per element, plus fp16 d8/s8)
            exact = float(w[r] @ x.astype(np.float64))
            bound = float(np.abs(w[r]) @ np.repeat(d8.astype(np.float64) * (0.5 + 127 * 2.0 ** -11), 32)
                          + np.abs(mgrp) @ (np.abs(s8).reshape(G, nq).sum(1) * 2.0 ** -11)) + 2e-6 * scale
            assert abs(got - exact) <= bound, (st.name, ne0, r, got, exact, bound)


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_vec_dot_fast(st):
    _vec_dot_check(st)


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_vec_dot_generic(st):
    fn = ggml_lib.VEC_DOT(ctypes_addr(f"ggml_vec_dot_{st.name.lower()}_q8_1_generic"))
    _vec_dot_check(st, fn)


def ctypes_addr(name):
    import ctypes
    return ctypes.cast(LIB.sym(name), ctypes.c_void_p).value


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_fast_equals_generic(st):
    """The AVX2 path and the scalar reference differ only by float summation order."""
    fn = ggml_lib.VEC_DOT(ctypes_addr(f"ggml_vec_dot_{st.name.lower()}_q8_1_generic"))
    rng = np.random.default_rng(3)
    ne0 = 576 if st.group_size == 64 else 1536
    data, _ = make_rows(st, 16, ne0, seed=11)
    for r in range(data.shape[0]):
        yq = LIB.quantize_q8_1(rng.standard_normal(ne0).astype(np.float32))
        a, b = LIB.vec_dot(st.ggml_type, data[r], yq, ne0), LIB.vec_dot(st.ggml_type, data[r], yq, ne0, fn)
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_vec_dot_two_rows_two_columns(st):
    """nrc = 2 (type_traits_cpu.nrows = 2: mul_mat hands 2 rows x 2 columns for even prompt batches) gives the
    same numbers as four nrc = 1 calls, on the AVX2 path and the scalar reference."""
    assert LIB.traits_cpu(st.ggml_type).nrows == 2
    generic = ggml_lib.VEC_DOT(ctypes_addr(f"ggml_vec_dot_{st.name.lower()}_q8_1_generic"))
    rng = np.random.default_rng(9)
    for ne0 in widths(st):
        data, _ = make_rows(st, 2, ne0, seed=ne0 + 1)
        ys = np.stack([LIB.quantize_q8_1(rng.standard_normal(ne0).astype(np.float32)) for _ in range(2)])
        for fn in (None, generic):
            got = LIB.vec_dot_2x2(st.ggml_type, data, ys, ne0, fn)
            want = np.array([[LIB.vec_dot(st.ggml_type, data[r], ys[c], ne0, fn) for r in range(2)]
                             for c in range(2)], dtype=np.float32)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_validation_and_corrupt_tags(st):
    ne0 = 8 * st.group_size
    data, _ = make_rows(st, 3, ne0, seed=5, k=2)
    t = int(st.ggml_type)
    assert LIB.base.ggml_validate_slim_rows(t, data.ctypes.data, data.nbytes, ne0)
    assert LIB.base.ggml_validate_row_data(t, data.ctypes.data, data.nbytes)
    assert not LIB.base.ggml_validate_row_data(t, data.ctypes.data, data.nbytes - 1)
    # every group at the widest width: tags valid one by one, sum too large
    bad = data.copy()
    hdr = bad[:, : 4 * 8].view("<u2").reshape(3, 8, 2)
    tag = st.avg_bits  # bits = b + 1
    hdr[:, :, 0] = (hdr[:, :, 0] & 0x7FFE) | ((tag >> 1) << 15) | (tag & 1)
    assert not LIB.base.ggml_validate_slim_rows(t, bad.ctypes.data, bad.nbytes, ne0)
    y = LIB.to_float(t, bad[0], ne0)  # must not read past the row: trailing groups decode to NaN
    assert np.isnan(y[-st.group_size:]).all()
    yq = LIB.quantize_q8_1(np.ones(ne0, dtype=np.float32))
    assert np.isnan(LIB.vec_dot(t, bad[0], yq, ne0))
    assert np.isnan(LIB.vec_dot_2x2(t, bad[:2], np.stack([yq, yq]), ne0)).all()
    # rows whose tags differ
    other, _ = make_rows(st, 1, ne0, seed=6, k=1)
    mixed = np.concatenate([data[:1], other])
    assert not LIB.base.ggml_validate_slim_rows(t, mixed.ctypes.data, mixed.nbytes, ne0)


def test_type_table():
    for st in TYPES:
        tr = LIB.traits(st.ggml_type)
        assert tr.type_name.decode() == st.name.lower()
        assert (tr.blck_size, tr.type_size, tr.is_quantized) == (st.group_size, st.type_size, True)
        assert LIB.traits_cpu(st.ggml_type).vec_dot_type == ggml_lib.GGML_TYPE_Q8_1
    for t in range(43, 100):  # the gap below the SLIM ids: zero entries, like upstream's removed ids
        tr = LIB.traits(t)
        assert tr.blck_size == 0 and tr.type_name is None
