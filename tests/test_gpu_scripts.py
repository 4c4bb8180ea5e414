"""Helpers of the GPU-machine scripts that run here: bench_gpu.py's `layers` (the layer-cut copy of a GGUF, the line fit)
and device_prebuilt_key.sh (what ties prebuilt tools to their source). CPU, no llama.cpp."""
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


def _xz_tar(path: Path, files: dict[str, bytes], mtime: int) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))


def test_prebuilt_key_follows_file_contents_not_archive_bytes(tmp_path):
    """scripts/device_prebuilt_key.sh: the same files (other times, other order) give the same key; one changed
    byte or one renamed file gives another."""
    import subprocess

    key_script = SCRIPT.parent / "device_prebuilt_key.sh"

    def key(files, mtime, name):
        path = tmp_path / name
        _xz_tar(path, files, mtime)
        return subprocess.run(["bash", str(key_script), str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()

    files = {"ggml/src/a.cu": b"kernel", "tests/b.cpp": b"test"}
    k0 = key(files, 1, "a.tar.xz")
    assert len(k0) == 32
    assert key(dict(reversed(list(files.items()))), 99, "b.tar.xz") == k0
    assert key({**files, "tests/b.cpp": b"tesT"}, 1, "c.tar.xz") != k0
    assert key({"ggml/src/a.cu": b"kernel", "tests/c.cpp": b"test"}, 1, "d.tar.xz") != k0
