"""scripts/bench_gpu.py's `layers` helpers: the layer-cut copy of a GGUF and the line fit (CPU, no llama.cpp)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


def _bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_llama(path: Path, layers: int) -> dict[str, np.ndarray]:
    """A llama GGUF with `layers` blocks: f32 norms, one Q8_0 matrix per block, a tokenizer field."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(64)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
    tensors = {"token_embd.weight": rng.standard_normal((4, 64), dtype=np.float32)}
    for i in range(layers):
        tensors[f"blk.{i}.attn_norm.weight"] = rng.standard_normal(64, dtype=np.float32)
        q = gguf.quants.quantize(rng.standard_normal((8, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
        tensors[f"blk.{i}.attn_q.weight"] = q
    tensors["output_norm.weight"] = np.ones(64, dtype=np.float32)
    for name, data in tensors.items():
        if name.endswith("attn_q.weight"):
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_truncate_layers_keeps_first_blocks_and_everything_else(tmp_path):
    bench = _bench_gpu()
    src, dst = tmp_path / "full.gguf", tmp_path / "cut.gguf"
    tensors = _tiny_llama(src, layers=3)
    bench.truncate_layers(src, dst, 2)

    r = gguf.GGUFReader(dst)
    assert r.fields["llama.block_count"].contents() == 2
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["<s>", "</s>", "a", "b"]
    names = [t.name for t in r.tensors]
    assert names == [n for n in tensors if not n.startswith("blk.2.")]
    for t in r.tensors:
        assert np.asarray(t.data).tobytes() == np.asarray(tensors[t.name]).tobytes(), t.name
        if t.name.endswith("attn_q.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            assert [int(x) for x in t.shape] == [64, 8]


def test_fit_line_separates_fixed_and_per_layer_time():
    bench = _bench_gpu()
    counts = [1, 8, 16, 32]
    fixed, per_layer = bench.fit_line(counts, [0.25 + 0.05 * n for n in counts])
    assert fixed == pytest.approx(0.25)
    assert per_layer == pytest.approx(0.05)
