"""Reading a GGUF source: the NaN/Inf check (slim2gguf.weights._gguf_tensor_finite: float tensors by their
exponent bits in place, quantized ones dequantized; one bad value anywhere is found), and the byte range whose
mapped pages are handed back after a read (GGUFWeights._drop_pages)."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import quantize

from slim2gguf.weights import _gguf_tensor_finite


@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_finite_check_finds_one_bad_value_in_each_stored_type(tmp_path, bad):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, 256)).astype(np.float32)
    if bad is not None:
        base[37, 201] = bad
    path = tmp_path / "t.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_tensor("f32", base)
    w.add_tensor("f16", base.astype(np.float16))
    # a quantized tensor: the bad value lands in a block's scale or values
    q8 = quantize(np.nan_to_num(base, nan=0.0, posinf=0.0, neginf=0.0), GGMLQuantizationType.Q8_0)
    if bad is not None:
        q8.view(np.uint8).reshape(64, -1)[37, 0:2] = np.frombuffer(np.float16(bad).tobytes(), np.uint8)
    w.add_tensor("q8_0", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = {t.name: _gguf_tensor_finite(t) for t in GGUFReader(path).tensors}
    assert got == {"f32": bad is None, "f16": bad is None, "q8_0": bad is None}
    # larger than one step of the check: the bad value in a later step is found too
    big = np.zeros((1 << 13) * 3, dtype=np.float16).reshape(24, -1)
    if bad is not None:
        big[-1, -1] = bad
    p2 = tmp_path / "big.gguf"
    w = GGUFWriter(str(p2), "llama")
    w.add_tensor("big", big)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    import slim2gguf.weights as sw
    old, sw._FINITE_CHUNK = sw._FINITE_CHUNK, 4096
    try:
        assert _gguf_tensor_finite(GGUFReader(p2).tensors[0]) == (bad is None)
    finally:
        sw._FINITE_CHUNK = old


def test_tensor_byte_range_is_where_the_reader_maps_it(tmp_path):
    """_drop_pages releases [data_offset, data_offset + n_bytes) of the reader's map: that range must be the
    tensor's own bytes (a wrong range would release other pages: harmless for the data, useless for memory)."""
    rng = np.random.default_rng(1)
    path = tmp_path / "r.gguf"
    w = GGUFWriter(str(path), "llama")
    for i, shape in enumerate(((3, 64), (5, 128), (1, 32))):
        w.add_tensor(f"t{i}", rng.standard_normal(shape).astype(np.float16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    reader = GGUFReader(path)
    raw = path.read_bytes()
    for t in reader.tensors:
        assert raw[t.data_offset:t.data_offset + t.n_bytes] == np.asarray(t.data).tobytes()
    assert hasattr(reader.data, "_mmap")     # what _drop_pages advises on
