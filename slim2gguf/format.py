"""The SLIM tensor types: constants, row layout, tag decoding and packing (docs/format.md). numpy in, numpy out.

A row of G groups is [G headers of 4 bytes][codes of group 0][codes of group 1]...; group j's codes are
bits_j bit-planes of g/8 bytes. The header's fp16 d carries the tag t = bits - 1 in its sign bit (t >> 1)
and its lowest mantissa bit (t & 1).

This module is the one place for the format's constants (type ids, header layout, `slim.*` metadata keys) and
for the tag rule (`group_bits`); the Numba reference decoder compiles the same `group_bits`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SlimError

try:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    _SLIM_IDS = (GGMLQuantizationType.SLIM2_G64, GGMLQuantizationType.SLIM2_G128,
                 GGMLQuantizationType.SLIM3_G64, GGMLQuantizationType.SLIM3_G128)
except AttributeError as e:  # stock gguf-py from PyPI
    raise ImportError("the installed gguf-py does not know the SLIM types; run `bash scripts/setup.sh`") from e

HEADER_BYTES = 4           # fp16 d (with the tag) + fp16 m
TAG_HIGH_BIT = 0x8000      # sign bit of d: t >> 1 (d is never negative)
TAG_LOW_BIT = 0x0001       # lowest mantissa bit of d: t & 1 (stays part of d's value)
SCALE_MASK = 0x7FFF        # d = fp16(dh & SCALE_MASK)
MAX_GROUP_BITS = 4         # the 2-bit tag holds widths 1..4
FORMAT_VERSION = 1         # slim.format_version: the layout of docs/format.md


class Keys:
    """`slim.*` metadata keys (docs/format.md), in the style of gguf-py's Keys."""

    PREFIX = "slim."
    FORMAT_VERSION = "slim.format_version"
    BITS = "slim.bits"
    GROUP_SIZE = "slim.group_size"
    GROUP_SIZES = "slim.group_sizes"
    METHOD = "slim.method"
    SBA = "slim.sba"
    SQC = "slim.sqc"
    FUSE_QKV = "slim.fuse_qkv"      # q/k/v as one attn_qkv tensor where their types and bit maps coincide
    JOINT_QKV = "slim.joint_qkv"    # SBA chose one bit map for q/k/v together (--joint-qkv): every layer fuses
    SEED = "slim.seed"
    SOURCE = "slim.source"

    class Plan:
        """A whole-file bit budget's choice (`convert --target-bpw`): parallel arrays, one entry per tensor."""
        TARGET_BPW = "slim.plan.target_bpw"
        TENSORS = "slim.plan.tensors"               # GGUF tensor names
        TYPES = "slim.plan.types"                   # the type chosen for each
        PREDICTED_LOSS = "slim.plan.predicted_loss"  # its predicted loss increase per token (nats)

    class Calibration:
        PREFIX = "slim.calibration."
        SOURCE = "slim.calibration.source"
        NSAMPLES = "slim.calibration.nsamples"
        SEQLEN = "slim.calibration.seqlen"
        TOKENS = "slim.calibration.tokens"
        SEED = "slim.calibration.seed"


@dataclass(frozen=True)
class SlimType:
    """One SLIM ggml type: an average bit-width and a group size."""

    ggml_type: GGMLQuantizationType
    avg_bits: int
    group_size: int

    @property
    def name(self) -> str:
        return self.ggml_type.name

    @property
    def type_size(self) -> int:
        """Bytes of one nominal group (ggml's type_size): header + g*b bits."""
        return HEADER_BYTES + self.group_size * self.avg_bits // 8

    @property
    def allowed_bits(self) -> tuple[int, ...]:
        return (self.avg_bits - 1, self.avg_bits, self.avg_bits + 1)

    @property
    def bpw(self) -> float:
        return 8 * self.type_size / self.group_size

    def row_bytes(self, ne0: int) -> int:
        return ne0 // self.group_size * self.type_size


SLIM_TYPES: dict[GGMLQuantizationType, SlimType] = {
    t: SlimType(t, avg_bits=int(t.name[4]), group_size=int(t.name.split("_G")[1])) for t in _SLIM_IDS
}
for _t in SLIM_TYPES.values():  # the patched gguf-py and this module must agree on the sizes
    assert GGML_QUANT_SIZES[_t.ggml_type] == (_t.group_size, _t.type_size), _t
_SLIM_TYPE_IDS = frozenset(int(t) for t in SLIM_TYPES)


def slim_type(avg_bits: int, group_size: int) -> SlimType:
    for t in SLIM_TYPES.values():
        if t.avg_bits == avg_bits and t.group_size == group_size:
            return t
    raise SlimError(f"no SLIM type for {avg_bits}-bit average with group size {group_size} "
                    f"(have bits 2/3, groups 64/128)")


def is_slim(ggml_type: int) -> bool:
    """Whether a ggml type id (int or GGMLQuantizationType) is one of the SLIM types."""
    return int(ggml_type) in _SLIM_TYPE_IDS


def as_slim_type(st: SlimType | int) -> SlimType:
    """A SlimType, or the SlimType of a ggml type id."""
    return st if isinstance(st, SlimType) else SLIM_TYPES[int(st)]


def group_bits(dh):
    """The bit-width a header's d word carries: tag t = (sign bit << 1) | lowest mantissa bit, width t + 1.

    Plain integer arithmetic, so this one definition serves Python ints, numpy integer arrays (pass a signed
    dtype wider than 16 bits, e.g. int64) and the Numba reference decoder, which compiles this function."""
    return (((dh >> 15) & 1) << 1 | (dh & TAG_LOW_BIT)) + 1


def code_offsets(bits: np.ndarray, group_size: int) -> np.ndarray:
    """Byte offset of each group's codes from the row start ([G] int64)."""
    bits = np.asarray(bits, dtype=np.int64)
    plane_bytes = group_size // 8
    starts = np.concatenate([[0], np.cumsum(bits)[:-1]]) * plane_bytes
    return HEADER_BYTES * len(bits) + starts


def encode_d(d: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """fp16 d [rows, G] (already on the tag grid) -> uint16 header words with the tag's high bit set."""
    dh = np.ascontiguousarray(d, dtype=np.float16).view(np.uint16)
    tag = (np.asarray(bits, dtype=np.uint16) - 1)[None, :]
    if np.any(dh & TAG_HIGH_BIT):
        raise SlimError("negative scale d: the quantizer must produce d >= 0")
    if np.any((dh & TAG_LOW_BIT) != (tag & 1)):
        raise SlimError("scale d is not on the SLIM grid (its lowest mantissa bit must be (bits-1) & 1)")
    return dh | ((tag >> 1) << 15).astype(np.uint16)


def row_bits(data: np.ndarray, ne0: int, st: SlimType | int) -> np.ndarray:
    """The group bit-widths of a tensor, read from its first row's headers ([G] int64).

    The other rows carry the same tags in a valid tensor; checking that is reference_decoder.validate's job."""
    st = as_slim_type(st)
    n_groups = ne0 // st.group_size
    head = np.ascontiguousarray(np.asarray(data).view(np.uint8).reshape(-1)[: HEADER_BYTES * n_groups])
    return group_bits(head.view("<u2")[0::2].astype(np.int64))


def check_bits(bits: np.ndarray, st: SlimType) -> None:
    bits = np.asarray(bits)
    bad = sorted(set(bits.tolist()) - set(st.allowed_bits))
    if bad:
        raise SlimError(f"{st.name}: group bit-widths {bad} outside {st.allowed_bits}")
    if int(bits.sum()) != len(bits) * st.avg_bits:
        raise SlimError(f"{st.name}: group bit-widths average {bits.mean():.4f}, not exactly {st.avg_bits}")


def pack_rows(bits: np.ndarray, q: np.ndarray, d: np.ndarray, m: np.ndarray, st: SlimType) -> np.ndarray:
    """Pack a quantized matrix into SLIM rows.

    bits [G] widths (shared by all rows), q [rows, cols] codes, d/m [rows, G] fp16. Returns uint8
    [rows, row_bytes]; row_bytes == st.row_bytes(cols).
    """
    bits = np.asarray(bits, dtype=np.int64)
    q = np.asarray(q, dtype=np.uint8)
    rows, cols = q.shape
    g = st.group_size
    n_groups = cols // g
    if cols % g or len(bits) != n_groups:
        raise SlimError(f"{st.name}: {cols} columns do not split into {len(bits)} groups of {g}")
    check_bits(bits, st)
    if q.size and int(q.max(initial=0)) >= (1 << MAX_GROUP_BITS):
        raise SlimError("code out of range")
    out = np.empty((rows, st.row_bytes(cols)), dtype=np.uint8)
    header = np.empty((rows, n_groups, 2), dtype=np.uint16)
    header[:, :, 0] = encode_d(d, bits)
    header[:, :, 1] = np.ascontiguousarray(m, dtype=np.float16).view(np.uint16)
    out[:, : HEADER_BYTES * n_groups] = header.reshape(rows, -1).astype("<u2").view(np.uint8)
    groups = q.reshape(rows, n_groups, g)
    for j, (off, b) in enumerate(zip(code_offsets(bits, g), bits)):
        codes = groups[:, j, :]
        if int(codes.max(initial=0)) >= (1 << b):
            raise SlimError(f"group {j}: code exceeds {b} bits")
        for p in range(b):
            plane = np.packbits((codes >> p) & 1, axis=-1, bitorder="little")
            out[:, off + p * (g // 8): off + (p + 1) * (g // 8)] = plane
    return out


def pack_quantized(ql, st: SlimType, row_order: np.ndarray | None = None) -> np.ndarray:
    """pack_rows of a quant.result.QuantizedLinear (torch tensors), its rows taken in row_order when given."""
    q, d, m = (t.cpu().numpy() for t in (ql.q, ql.d, ql.m))
    if row_order is not None:
        q, d, m = q[row_order], d[row_order], m[row_order]
    return pack_rows(ql.bits.cpu().numpy(), q, d, m, st)


def unpack_rows(data: np.ndarray, ne0: int, st: SlimType):
    """Inverse of pack_rows (numpy, vectorized per group): returns bits [G], q, d (fp16), m (fp16).

    Bits are read from the first row; validation of the other rows is reference_decoder's job.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, st.row_bytes(ne0))
    rows = data.shape[0]
    g = st.group_size
    n_groups = ne0 // g
    header = data[:, : HEADER_BYTES * n_groups].copy().view("<u2").reshape(rows, n_groups, 2)
    bits = group_bits(header[0, :, 0].astype(np.int64))
    d = (header[:, :, 0] & SCALE_MASK).view(np.float16)
    m = header[:, :, 1].view(np.float16)
    q = np.zeros((rows, n_groups, g), dtype=np.uint8)
    for j, (off, b) in enumerate(zip(code_offsets(bits, g), bits)):
        for p in range(b):
            plane = data[:, off + p * (g // 8): off + (p + 1) * (g // 8)]
            q[:, j, :] |= np.unpackbits(plane, axis=-1, bitorder="little") << p
    return bits, q.reshape(rows, ne0), d, m
