"""Validation of SLIM rows (issue 11): ggml's checks and the Numba reference validator refuse the same bytes.

- ggml_slim_check_rows (what llama's loader runs on every SLIM tensor) and reference_decoder.validate agree on
  valid rows and on hundreds of randomly damaged copies; the error names row and group;
- ggml_validate_row_data (bytes only, no ne0) checks every header, not only the first: damage in the last row
  is refused;
- ggml_slim_gather_header_planes + ggml_slim_check_header_planes (the loader's path for tensors that arrive in
  chunks, e.g. --no-mmap uploads to a GPU) decide exactly as the whole-tensor check, wherever the chunks split;
- degenerate shapes (ne0 = 0, ne0 not a multiple of g, no rows, partial rows) are one-line errors, and decode
  validates first; decode_row never reads past a row whose tags point beyond it (NaN instead).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from slim2gguf import reference_decoder as rd
from slim2gguf.errors import SlimError
from slim2gguf.format import SLIM_TYPES, pack_rows

TYPES = list(SLIM_TYPES.values())
IDS = [t.name for t in TYPES]


def _lib():
    import ggml_lib

    lib = ggml_lib.load()
    if lib is None:
        pytest.skip("patched llama.cpp CPU build absent (run `slim2gguf build-llama`)")
    b = lib.base
    b.ggml_slim_check_rows.restype = ctypes.c_bool
    b.ggml_slim_check_rows.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64,
                                       ctypes.c_char_p, ctypes.c_size_t]
    b.ggml_slim_check_header_planes.restype = ctypes.c_bool
    b.ggml_slim_check_header_planes.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_char_p, ctypes.c_size_t]
    b.ggml_slim_header_plane_size.restype = ctypes.c_size_t
    b.ggml_slim_header_plane_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    b.ggml_slim_gather_header_planes.restype = None
    b.ggml_slim_gather_header_planes.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t,
                                                 ctypes.c_size_t, ctypes.c_void_p]
    return lib


def check_rows(lib, st, data: np.ndarray, ne0: int) -> tuple[bool, str]:
    data = np.ascontiguousarray(data, dtype=np.uint8)
    err = ctypes.create_string_buffer(256)
    ok = lib.base.ggml_slim_check_rows(int(st.ggml_type), data.ctypes.data, data.nbytes, ne0, err, len(err))
    return bool(ok), err.value.decode()


def reference_ok(data: np.ndarray, ne0: int, st) -> bool:
    try:
        rd.validate(data, ne0, st)
        return True
    except SlimError:
        return False


def make_rows(st, rows: int, ne0: int, seed: int, bits=None) -> np.ndarray:
    """Valid SLIM rows: random codes, random scales on the tag grid, widths st.b+1 / b-1 / b."""
    rng = np.random.default_rng(seed)
    G = ne0 // st.group_size
    if bits is None:
        bits = np.full(G, st.avg_bits)
        k = rng.integers(0, G // 2 + 1)
        order = rng.permutation(G)
        bits[order[:k]] += 1
        bits[order[k:2 * k]] -= 1
    bits = np.asarray(bits)
    q = np.concatenate([rng.integers(0, 1 << b, size=(rows, st.group_size)) for b in bits], axis=1).astype(np.uint8)
    dh = (rng.uniform(1e-3, 1e-1, size=(rows, G)).astype(np.float16).view(np.uint16) & 0xFFFE) | ((bits - 1) & 1)
    m = rng.uniform(-0.2, 0.0, size=(rows, G)).astype(np.float16)
    return pack_rows(bits, q, dh.astype(np.uint16).view(np.float16), m, st)


def damage(data: np.ndarray, ne0: int, st, rng) -> np.ndarray:
    """One random header word (d or m) of one random row replaced by a random 16-bit value."""
    bad = data.copy()
    r = int(rng.integers(0, bad.shape[0]))
    j = int(rng.integers(0, ne0 // st.group_size))
    half = int(rng.integers(0, 2))
    bad[r, 4 * j + 2 * half: 4 * j + 2 * half + 2] = np.array([rng.integers(0, 1 << 16)], dtype="<u2").view(np.uint8)
    return bad


@pytest.mark.llama
@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_ggml_and_reference_agree(st):
    lib = _lib()
    rng = np.random.default_rng(int(st.ggml_type))
    refused = 0
    for ne0 in (st.group_size, 3 * st.group_size, 9 * st.group_size):
        data = make_rows(st, 16, ne0, seed=ne0)
        assert check_rows(lib, st, data, ne0) == (True, "") and reference_ok(data, ne0, st)
        assert lib.base.ggml_validate_row_data(int(st.ggml_type), data.ctypes.data, data.nbytes)
        for _ in range(150):
            bad = damage(data, ne0, st, rng)
            ok, err = check_rows(lib, st, bad, ne0)
            assert ok == reference_ok(bad, ne0, st), (ne0, err)
            if not ok:
                refused += 1
                assert err.startswith("row ") and len(err.splitlines()) == 1
                # bytes only: every header checked, whatever row length it tries
                assert not lib.base.ggml_validate_row_data(int(st.ggml_type), bad.ctypes.data, bad.nbytes)
    assert refused > 100  # most random words are illegal tags, other tags, inf/nan


@pytest.mark.llama
def test_messages_name_row_and_group():
    lib = _lib()
    st = SLIM_TYPES[100]  # SLIM2_G64
    ne0 = 4 * 64
    data = make_rows(st, 8, ne0, seed=1, bits=[3, 1, 2, 2])
    bad = data.copy()
    bad[5, 4 * 2: 4 * 2 + 2] = np.array([0x3C00], dtype="<u2").view(np.uint8)   # group 2: tag 1 -> 0 (2 -> 1 bit)
    ok, err = check_rows(lib, st, bad, ne0)
    assert not ok and err == "row 5 group 2: bit-width 1 differs from row 0's 2", err
    bad = data.copy()
    bad[0, 0:2] = np.array([0x8001 | 0x3C00], dtype="<u2").view(np.uint8)          # tag 3: 4 bits
    assert check_rows(lib, st, bad, ne0) == (False, "row 0 group 0: bit-width 4 outside 1..3")
    bad = data.copy()
    bad[:, 4 * 1: 4 * 1 + 2] |= np.array([0x0001], dtype="<u2").view(np.uint8)   # group 1: 1 -> 2 bits, all rows
    assert check_rows(lib, st, bad, ne0) == (False, "row 0: bit-widths sum to 9, not 8 (4 groups x 2 bits)")
    bad = data.copy()
    bad[7, 4 * 3 + 2: 4 * 3 + 4] = np.array([0xFC00], dtype="<u2").view(np.uint8)  # m = -inf
    assert check_rows(lib, st, bad, ne0) == (False, "row 7 group 3: offset m is inf or nan")
    bad = data.copy()
    bad[6, 4 * 0: 4 * 0 + 2] |= np.array([0x7C00], dtype="<u2").view(np.uint8)    # d: exponent all ones
    assert check_rows(lib, st, bad, ne0) == (False, "row 6 group 0: scale d is inf or nan")
    # degenerate shapes
    assert check_rows(lib, st, data, 0) == (False, "row length ne0 = 0 is not a positive multiple of the group size 64")
    assert check_rows(lib, st, data, 96)[0] is False
    assert check_rows(lib, st, data[:, :0], ne0) == (False, "0 bytes is not a positive whole number of 80-byte rows")
    assert check_rows(lib, st, data.reshape(-1)[:-20], ne0)[0] is False


@pytest.mark.llama
def test_validate_row_data_checks_every_header():
    """The span check (no ne0) refuses damage anywhere, not only in the first header, for uniform tags too."""
    lib = _lib()
    for st in TYPES:
        for bits in ([st.avg_bits] * 6, [st.avg_bits + 1, st.avg_bits - 1] * 3):
            ne0 = 6 * st.group_size
            data = make_rows(st, 32, ne0, seed=7, bits=bits)
            t = int(st.ggml_type)
            assert lib.base.ggml_validate_row_data(t, data.ctypes.data, data.nbytes)
            assert not lib.base.ggml_validate_row_data(t, data.ctypes.data, data.nbytes - 1)
            for row, group, word in ((31, 5, 0x7E00), (17, 3, 0x8001 if st.avg_bits == 2 else 0x0000)):
                bad = data.copy()
                # NaN scale (tag kept), or an illegal tag: 4 bits for SLIM2, 1 bit for SLIM3
                old = int(bad[row, 4 * group: 4 * group + 2].view("<u2")[0])
                new = (old & 0x8001) | word if word == 0x7E00 else (old & 0x7FFE) | word
                bad[row, 4 * group: 4 * group + 2] = np.array([new], dtype="<u2").view(np.uint8)
                assert not check_rows(lib, st, bad, ne0)[0]
                assert not lib.base.ggml_validate_row_data(t, bad.ctypes.data, bad.nbytes), (st.name, bits, row)


@pytest.mark.llama
@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_header_planes_gathered_from_chunks(st):
    lib = _lib()
    t = int(st.ggml_type)
    rng = np.random.default_rng(3)
    ne0 = 5 * st.group_size
    hp = int(lib.base.ggml_slim_header_plane_size(t, ne0))
    assert hp == 4 * 5
    data = make_rows(st, 40, ne0, seed=2)
    cases = [data] + [damage(data, ne0, st, rng) for _ in range(30)]
    for buf in cases:
        flat = np.ascontiguousarray(buf).reshape(-1)
        want = check_rows(lib, st, buf, ne0)
        for _ in range(5):
            cuts = np.sort(rng.choice(np.arange(1, flat.size), size=int(rng.integers(1, 12)), replace=False))
            planes = np.full(buf.shape[0] * hp, 0xAA, dtype=np.uint8)
            for lo, hi in zip([0, *cuts], [*cuts, flat.size]):
                chunk = np.ascontiguousarray(flat[lo:hi])
                lib.base.ggml_slim_gather_header_planes(t, ne0, chunk.ctypes.data, int(lo), int(hi - lo),
                                                        planes.ctypes.data)
            assert np.array_equal(planes.reshape(buf.shape[0], hp), buf[:, :hp])
            err = ctypes.create_string_buffer(256)
            ok = lib.base.ggml_slim_check_header_planes(t, planes.ctypes.data, hp, buf.shape[0], ne0, err, 256)
            assert (bool(ok), err.value.decode()) == want
    err = ctypes.create_string_buffer(256)
    assert not lib.base.ggml_slim_check_header_planes(t, data.ctypes.data, hp, 0, ne0, err, 256)
    assert err.value == b"no rows"


# --------------------------------------------------------------------------------------------------------------
# the reference decoder (no llama.cpp build needed)

@pytest.mark.parametrize("ne0,nbytes,msg", [
    (0, 0, "row length ne0 = 0 is not a positive multiple of the group size 64"),
    (96, 60, "row length ne0 = 96"),
    (-64, 20, "row length ne0 = -64"),
    (128, 0, "no rows (0 bytes)"),
    (128, 60, "60 bytes are not whole rows of 128 weights (40 bytes)"),
])
def test_degenerate_shapes_are_one_line_errors(ne0, nbytes, msg):
    st = SLIM_TYPES[100]
    data = np.zeros(nbytes, dtype=np.uint8)
    for fn in (rd.validate, rd.decode):
        with pytest.raises(SlimError) as e:
            fn(data, ne0, st, "blk.0.attn_q.weight")
        assert msg in str(e.value) and "blk.0.attn_q.weight (SLIM2_G64)" in str(e.value)
        assert len(str(e.value).splitlines()) == 1


def test_decode_validates_first():
    st = SLIM_TYPES[101]  # SLIM2_G128
    data = make_rows(st, 6, 3 * 128, seed=4, bits=[3, 1, 2])
    bad = data.copy()
    bad[4, 4 * 1] ^= 1                 # group 1 of row 4: 1 -> 2 bits
    with pytest.raises(SlimError, match=r"invalid SLIM data in w \(SLIM2_G128\) row 4: group bit-widths sum to 7"):
        rd.decode(bad, 3 * 128, st, "w")
    assert np.isfinite(rd.decode(data, 3 * 128, st)).all()


def test_decode_row_stops_at_the_row_end():
    """Tags that claim more code bytes than the row holds: NaN from that group on, no read past the row."""
    st = SLIM_TYPES[100]
    ne0 = 4 * 64
    row = make_rows(st, 1, ne0, seed=5, bits=[2, 2, 2, 2])
    bad = row.copy()
    bad[0, 1:16:4] |= 0x80             # every tag 1 -> 3: 2 -> 4 bits, 4 x 32 code bytes in an 80-byte row
    bad[0, 0:16:4] |= 0x01
    with pytest.raises(SlimError, match="bit-width 4 is not allowed"):
        rd.decode(bad, ne0, st)
    out = rd.decode(bad, ne0, st, validate=False)[0]
    assert np.isfinite(out[:128]).all()           # groups 0, 1: codes at bytes 16..48, 48..80 still fit
    assert np.isnan(out[128:]).all()              # group 2 would read bytes 80..112: past the row
    want = rd.decode(row, ne0, st)[0]
    assert not np.array_equal(out[:64], want[:64])  # group 0 decoded with its (corrupt) 4-bit width
