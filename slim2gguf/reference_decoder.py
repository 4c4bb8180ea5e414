"""Reference decoder and validator for the SLIM tensor types (docs/format.md), in Numba.

This is the yardstick the other decoders (torch fake-quant, ggml CPU, ggml CUDA) are compared with, so it is
written to be read against the format page: one row at a time, one group at a time, one weight at a time, with
no tables or tricks. Parallelism is added on top (rows are independent) and changes nothing in the arithmetic.

    decode_row(row, ne0, g, out)     bytes of one row -> fp32 weights (NaN from a group whose codes would
                                     run past the row's end: corrupt tags never read out of bounds)
    decode(data, ne0, st, name)      [rows, row_bytes] bytes -> fp32 [rows, ne0]   (parallel over rows);
                                     validates first (validate=False skips it, for data known to be valid)
    validate(data, ne0, st, name)    raise SlimError (one line) on a degenerate shape (ne0 <= 0 or not a
                                     multiple of g, no rows, partial rows), an illegal tag, an inexact
                                     average, a non-finite scale/offset or rows whose tags differ
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import format as fmt
from .errors import SlimError
from .format import HEADER_BYTES, SCALE_MASK, SlimType, as_slim_type

# validation codes (validate_rows' first result)
OK = 0
BAD_TAG = 1          # a group's bit-width is outside the type's set
BAD_AVERAGE = 2      # the row's widths do not sum to G*b
BAD_SCALE = 3        # d (tag masked off) is Inf or NaN
BAD_OFFSET = 4       # m is Inf or NaN
TAGS_DIFFER = 5      # a row's tags differ from row 0's (SBA gives every row the same tags)
_MESSAGES = {
    BAD_TAG: "group bit-width {bits} is not allowed for {type} (allowed {allowed})",
    BAD_AVERAGE: "group bit-widths sum to {bits}, not {expected} (average must be exactly {avg})",
    BAD_SCALE: "scale d is not finite",
    BAD_OFFSET: "offset m is not finite",
    TAGS_DIFFER: "tags differ from row 0's",
}


# --------------------------------------------------------------------------------------------------------------
# decoding


@numba.njit(cache=True)
def half_to_float(h):
    """IEEE fp16 bits (an integer 0..65535) -> the same value as float32 (exact: fp32 holds every fp16)."""
    sign = (h >> 15) & 1
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0:                      # zero or subnormal: mantissa * 2^-24
        value = math.ldexp(float(mantissa), -24)
    elif exponent == 31:                   # Inf or NaN
        value = math.inf if mantissa == 0 else math.nan
    else:                                  # normal: 1.mantissa * 2^(exponent-15)
        value = math.ldexp(float(1024 + mantissa), exponent - 25)
    if sign:
        value = -value
    return np.float32(value)


@numba.njit(cache=True)
def _u16(row, offset):
    """Little-endian 16-bit word at a byte offset."""
    return int(row[offset]) | (int(row[offset + 1]) << 8)


# the format's one tag rule, compiled (Numba freezes the constants it reads)
group_bits = numba.njit(cache=True)(fmt.group_bits)


@numba.njit(cache=True)
def decode_row(row, ne0, g, out):
    """Decode one SLIM row (uint8[row_bytes]) of ne0 weights with group size g into out (float32[ne0])."""
    n_groups = ne0 // g
    plane_bytes = g // 8
    codes = HEADER_BYTES * n_groups        # the code plane starts after the G headers
    for j in range(n_groups):
        if codes > row.shape[0]:           # corrupt tags (or a short row): never read past the row's end
            for i in range(j * g, ne0):
                out[i] = np.float32(np.nan)
            return
        dh = _u16(row, HEADER_BYTES * j)
        mh = _u16(row, HEADER_BYTES * j + 2)
        bits = group_bits(dh)
        d = half_to_float(dh & SCALE_MASK)  # the tag's high bit is d's sign bit: mask it off
        m = half_to_float(mh)
        if codes + bits * plane_bytes > row.shape[0]:
            for i in range(j * g, ne0):
                out[i] = np.float32(np.nan)
            return
        for i in range(g):
            q = 0
            for p in range(bits):          # bit-plane p holds bit p of every weight's code
                byte = int(row[codes + p * plane_bytes + (i >> 3)])
                q |= ((byte >> (i & 7)) & 1) << p
            out[j * g + i] = d * np.float32(q) + m
        codes += bits * plane_bytes


@numba.njit(cache=True, parallel=True)
def decode_rows(data, ne0, g, out):
    """decode_row for every row of data (uint8[rows, row_bytes]) into out (float32[rows, ne0]), in parallel."""
    for r in numba.prange(data.shape[0]):
        decode_row(data[r], ne0, g, out[r])


def _as_rows(data: np.ndarray, ne0: int, st: SlimType, name: str = "tensor") -> np.ndarray:
    """The bytes as [rows, row_bytes]; SlimError (one line) for a shape no SLIM tensor can have."""
    ne0 = int(ne0)
    if ne0 <= 0 or ne0 % st.group_size:
        raise SlimError(f"invalid SLIM tensor {name} ({st.name}): row length ne0 = {ne0} is not a positive "
                        f"multiple of the group size {st.group_size}")
    data = np.ascontiguousarray(np.asarray(data).view(np.uint8)).reshape(-1)
    row_bytes = st.row_bytes(ne0)
    if data.size % row_bytes:
        raise SlimError(f"invalid SLIM tensor {name} ({st.name}): {data.size} bytes are not whole rows of "
                        f"{ne0} weights ({row_bytes} bytes)")
    if data.size == 0:
        raise SlimError(f"invalid SLIM tensor {name} ({st.name}): no rows (0 bytes)")
    return data.reshape(-1, row_bytes)


def decode(data: np.ndarray, ne0: int, st: SlimType | int, name: str = "tensor", *,
           validate: bool = True) -> np.ndarray:
    """File bytes of a SLIM tensor -> fp32 [rows, ne0]. `st` is a SlimType or a ggml type id.

    The bytes are validated first (SlimError naming `name`, row and group); validate=False skips that for
    bytes already validated (decode_row never reads past a row either way: corrupt tags give NaN)."""
    st = as_slim_type(st)
    rows = _as_rows(data, ne0, st, name)
    if validate:
        _validate_rows(rows, ne0, st, name)
    out = np.empty((rows.shape[0], ne0), dtype=np.float32)
    decode_rows(rows, ne0, st.group_size, out)
    return out


# --------------------------------------------------------------------------------------------------------------
# validation


@numba.njit(cache=True)
def validate_row(row, ne0, g, avg_bits):
    """Check one row: returns (code, group) with code OK/BAD_TAG/BAD_AVERAGE/BAD_SCALE/BAD_OFFSET."""
    n_groups = ne0 // g
    total = 0
    for j in range(n_groups):
        dh = _u16(row, HEADER_BYTES * j)
        bits = group_bits(dh)
        if bits < avg_bits - 1 or bits > avg_bits + 1:
            return BAD_TAG, j
        if not math.isfinite(half_to_float(dh & SCALE_MASK)):
            return BAD_SCALE, j
        if not math.isfinite(half_to_float(_u16(row, HEADER_BYTES * j + 2))):
            return BAD_OFFSET, j
        total += bits
    if total != n_groups * avg_bits:
        return BAD_AVERAGE, -1
    return OK, -1


@numba.njit(cache=True)
def validate_rows(data, ne0, g, avg_bits):
    """Check every row and that all rows carry row 0's tags: returns (code, row, group), code OK if all pass."""
    n_groups = ne0 // g
    for r in range(data.shape[0]):
        code, j = validate_row(data[r], ne0, g, avg_bits)
        if code != OK:
            return code, r, j
        if r > 0:
            for k in range(n_groups):
                if group_bits(_u16(data[r], HEADER_BYTES * k)) != group_bits(_u16(data[0], HEADER_BYTES * k)):
                    return TAGS_DIFFER, r, k
    return OK, -1, -1


def validate(data: np.ndarray, ne0: int, st: SlimType | int, name: str = "tensor") -> None:
    """Raise SlimError with a one-line reason if the bytes are not a valid SLIM tensor."""
    st = as_slim_type(st)
    _validate_rows(_as_rows(data, ne0, st, name), ne0, st, name)


def _validate_rows(rows: np.ndarray, ne0: int, st: SlimType, name: str) -> None:
    code, r, j = validate_rows(rows, ne0, st.group_size, st.avg_bits)
    if code == OK:
        return
    where = f"{name} ({st.name}) row {r}" + (f" group {j}" if j >= 0 else "")
    info = {"type": st.name, "allowed": list(st.allowed_bits), "avg": st.avg_bits,
            "expected": ne0 // st.group_size * st.avg_bits}
    if code == BAD_TAG:
        info["bits"] = int(fmt.row_bits(rows[r], ne0, st)[j])
    elif code == BAD_AVERAGE:
        info["bits"] = int(fmt.row_bits(rows[r], ne0, st).sum())
    raise SlimError(f"invalid SLIM data in {where}: " + _MESSAGES[code].format(**info))

