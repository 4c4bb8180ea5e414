"""A tiny random Llama written with SLIM tensors runs in llama-cpp-python (patched build) and matches torch.

- loads (file type = MOSTLY_SLIM2/3), generates text through `slim2gguf run` and the Python API;
- logits of llama.cpp (CPU, Q8_1 activations) against torch with the same fake-quant weights: top-1 agreement
  and close logits;
- a stock (unpatched) ggml refuses the file with an "invalid ggml type" error, not a crash;
- llama-quantize refuses to requantize a SLIM file with a clear error.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import llama_env
from slim_synth import demo_tokenizer_dir, make_tiny_llama, rtn_folder

pytestmark = pytest.mark.llama

BITS = (2, 3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from slim2gguf.gguf_out import StockTypes, write_slim_gguf

    root = tmp_path_factory.mktemp("tiny")
    hf = make_tiny_llama(root / "hf", demo_tokenizer_dir(), hidden=128, intermediate=320, layers=2, heads=4,
                         kv_heads=2)
    out = {}
    for bits in BITS:
        q = rtn_folder(hf, bits)  # g128 for 128-wide inputs, g64 for down_proj's 320
        path = root / f"tiny-slim{bits}.gguf"
        write_slim_gguf(hf, path, q, avg_bits=bits, stock=StockTypes("f32", "f32", "f32"))
        out[bits] = (path, q)
    return hf, out


def torch_model(hf, quantized):
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for name, ql in quantized.items():
            params[name].copy_(ql.dequantize())
    return m.eval()


@pytest.mark.parametrize("bits", BITS)
def test_llama_cpp_python_matches_torch(tiny, bits):
    llama_env.require_llama_cpp_python()
    from llama_cpp import Llama

    hf, files = tiny
    path, quantized = files[bits]
    llm = Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, seed=0, n_threads=2)
    assert int(llm.metadata["general.file_type"]) == 100 + bits - 2
    rng = np.random.default_rng(bits)
    ids = [1] + rng.integers(3, 49152, size=127).tolist()
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        ref = torch_model(hf, quantized)(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    top1 = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    print(f"SLIM{bits} tiny: top-1 agreement {top1:.4f}, relative logit error {rel:.2e}")
    # The difference is llama.cpp's Q8_1 rounding of the activations (the kernels themselves match fp64 within
    # it: test_ggml_slim.py). This random tiny model is touchy: stock Q8_0 weights give 2.2e-2 / 93 % against
    # its fp32 torch logits, F32 weights 3e-4 / 100 %. The SmolLM2 test asks for >= 99 % top-1.
    assert rel < 3e-2
    assert top1 >= 0.9
    # generation through the Python API
    llm2 = Llama(model_path=str(path), n_ctx=256, verbose=False, seed=0, n_threads=2)
    out = llm2("the quick brown", max_tokens=16, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0


def test_to_float_of_every_tensor_equals_reference(tiny):
    import ggml_lib

    lib = ggml_lib.load()
    if lib is None:
        pytest.skip(llama_env.NOT_BUILT)
    _, files = tiny
    for bits in BITS:
        # q/k/v read 128 columns: one group, one (uniform) bit map, so the writer fuses them into attn_qkv
        assert ggml_lib.assert_file_to_float_matches_reference(lib, files[bits][0]) == 2 * 5


def test_slim2gguf_run(tiny):
    llama_env.require_llama_cpp_python()
    _, files = tiny
    res = subprocess.run([sys.executable, "-m", "slim2gguf.cli", "run", str(files[2][0]), "-p", "the quick",
                          "-n", "8", "-c", "128"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("the quick") and len(res.stdout) > len("the quick")
    assert "tokens/s" in res.stderr


def test_run_missing_file(tmp_path):
    res = subprocess.run([sys.executable, "-m", "slim2gguf.cli", "run", str(tmp_path / "nope.gguf"), "-p", "x"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no such file" in res.stderr


STOCK_PROBE = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
class P(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]
lib.gguf_init_from_file.restype = ctypes.c_void_p
lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, P]
ctx = lib.gguf_init_from_file(sys.argv[2].encode(), P(True, None))
print("LOADED" if ctx else "REFUSED")
"""


def test_stock_llama_cpp_refuses(tiny):
    """gguf_init_from_file of the unpatched vendored ggml (the first thing llama_model_load does) returns NULL
    with "invalid ggml type", and the process exits normally."""
    if not llama_env.STOCK_LIB.exists():
        pytest.skip(f"stock ggml-base absent: {llama_env.NOT_BUILT}")
    _, files = tiny
    res = subprocess.run([sys.executable, "-c", STOCK_PROBE, str(llama_env.STOCK_LIB), str(files[2][0])],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "REFUSED"
    assert "invalid ggml type 10" in res.stderr, res.stderr  # e.g. "... has invalid ggml type 101 ..."
    print(res.stderr.strip().splitlines()[0])


def test_llama_quantize_refuses_requantizing(tiny, tmp_path):
    quantize = llama_env.tool("llama-quantize")
    _, files = tiny
    res = subprocess.run([str(quantize), "--allow-requantize", str(files[2][0]), str(tmp_path / "out.gguf"), "Q8_0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and res.returncode > 0  # an error exit, not a signal
    assert "requantizing a slim" in (res.stdout + res.stderr).lower()
