"""Numba reference decoder and validator against the numpy packer and torch's d*q + m."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from quant.quantizer import round_scale_fp16
from slim2gguf import reference_decoder as rd
from slim2gguf.errors import SlimError
from slim2gguf.format import SLIM_TYPES, pack_rows, row_bits, slim_type, unpack_rows

from slim_synth import random_quantized

TYPES = list(SLIM_TYPES.values())


def scale_on_grid(d, bits) -> np.ndarray:
    """fp16 scales on the tag grid of bits, by the one scale-rounding rule (quant.quantizer.round_scale_fp16)."""
    return round_scale_fp16(torch.from_numpy(np.asarray(d, dtype=np.float32)), torch.from_numpy(bits)).numpy()


def pack(ql, st):
    return pack_rows(ql.bits.numpy(), ql.q.numpy(), ql.d.numpy(), ql.m.numpy(), st)


def test_half_to_float_all_values():
    h = np.arange(1 << 16, dtype=np.uint16)
    want = h.view(np.float16).astype(np.float32)
    got = np.array([rd.half_to_float(int(x)) for x in h], dtype=np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("st", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,groups", [(1, 2), (7, 3), (33, 9)])
def test_decode_matches_torch_bit_for_bit(st, rows, groups):
    ql = random_quantized(rows, groups * st.group_size, st.avg_bits, st.group_size, seed=rows * groups)
    data = pack(ql, st)
    got = rd.decode(data, ql.shape[1], st)
    want = ql.dequantize().numpy()
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    rd.validate(data, ql.shape[1], st)
    assert np.array_equal(row_bits(data, ql.shape[1], st), ql.bits.numpy())


@pytest.mark.parametrize("st", TYPES, ids=lambda t: t.name)
def test_numpy_unpack_roundtrip(st):
    ql = random_quantized(5, 4 * st.group_size, st.avg_bits, st.group_size, seed=3)
    bits, q, d, m = unpack_rows(pack(ql, st), ql.shape[1], st)
    assert np.array_equal(bits, ql.bits.numpy())
    assert np.array_equal(q, ql.q.numpy())
    assert np.array_equal(d.view(np.uint16), ql.d.numpy().view(np.uint16))
    assert np.array_equal(m.view(np.uint16), ql.m.numpy().view(np.uint16))


def test_worked_example_from_format_md():
    st = slim_type(2, 64)
    bits = np.array([3, 1, 2])
    d = scale_on_grid(np.array([[0.01, 0.02, 0.03]]), bits)
    m = np.array([[-0.03, 0.0, 0.5]], dtype=np.float16)
    q = np.zeros((1, 192), dtype=np.uint8)
    q[0, 0] = 5
    row = pack_rows(bits, q, d, m, st)[0]
    assert row.size == 60
    assert row[0:2].view("<u2")[0] == 0xA11E
    assert row[12] & 1 and not row[20] & 1 and row[28] & 1          # planes 0,1,2 of weight 0: bits 1,0,1
    w = rd.decode(row, 192, st)[0]
    assert w[0] == np.float32(np.float16(0.009995)) * 5 + np.float32(-0.03).astype(np.float16).astype(np.float32)


def _tamper(data, row, byte, value):
    bad = data.copy()
    bad[row, byte] = value
    return bad


def test_validate_rejects_bad_tag():
    st = slim_type(2, 128)
    ql = random_quantized(4, 4 * 128, 2, 128, seed=1)
    data = pack(ql, st)
    # group 0's dh high byte: set the sign bit and bit 0 -> tag 3 -> 4 bits, not allowed in SLIM2
    bad = _tamper(data, 2, 1, data[2, 1] | 0x80)
    bad = _tamper(bad, 2, 0, bad[2, 0] | 0x01)
    with pytest.raises(SlimError, match=r"row 2 group 0: group bit-width 4 is not allowed"):
        rd.validate(bad, ql.shape[1], st, "blk.0.attn_q.weight")


def test_validate_rejects_inexact_average():
    st = slim_type(3, 64)
    bits = np.array([3, 3, 3, 3])
    ql = random_quantized(3, 256, 3, 64, seed=2)
    data = pack_rows(bits, np.minimum(ql.q.numpy(), 7), scale_on_grid(ql.d.numpy(), bits), ql.m.numpy(), st)
    bad = _tamper(data, 0, 0, data[0, 0] ^ 0x01)                    # group 0: 3 bits -> 4 bits
    with pytest.raises(SlimError, match=r"sum to 13, not 12"):
        rd.validate(bad, 256, st)


def test_validate_rejects_rows_with_different_tags():
    st = slim_type(2, 64)
    bits = np.array([1, 3, 2, 2])
    ql = random_quantized(3, 256, 2, 64, seed=4)
    data = pack_rows(bits, np.minimum(ql.q.numpy(), 1), scale_on_grid(ql.d.numpy(), bits), ql.m.numpy(), st)
    bad = data.copy()
    bad[1, 0] ^= 1     # group 0: tag 0 -> 1 (1 -> 2 bits)
    bad[1, 4] ^= 1     # group 1: tag 2 -> 3 ...
    bad[1, 5] &= 0x7F  # ... -> 1 by clearing the sign bit (3 -> 2 bits); the row still sums to 8
    with pytest.raises(SlimError, match=r"row 1 group 0: tags differ"):
        rd.validate(bad, 256, st)


@pytest.mark.parametrize("which,msg", [(0, "scale d is not finite"), (2, "offset m is not finite")])
def test_validate_rejects_non_finite(which, msg):
    st = slim_type(2, 64)
    ql = random_quantized(2, 128, 2, 64, seed=5)
    data = pack(ql, st)
    bad = data.copy()
    word = bad[1, 4 + which: 6 + which].view("<u2")
    word[0] = (word[0] & 0x8001) | 0x7C00 | 0x0200   # exponent 31, non-zero mantissa: NaN, tag kept
    with pytest.raises(SlimError, match=msg):
        rd.validate(bad, 128, st)


def test_decode_rejects_partial_rows():
    st = slim_type(2, 64)
    with pytest.raises(SlimError, match="not whole rows"):
        rd.decode(np.zeros(30, dtype=np.uint8), 128, st)
