"""A GGUF's weights back in torch (slim2gguf.gguf_torch), ggml's activation rounding in torch
(slim2gguf.ggml_numerics) and `slim2gguf eval --weights`, on a tiny random llama (fast, CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slim2gguf import cli
from slim2gguf.ggml_numerics import ggml_cpu_activations, q8_round
from slim2gguf.gguf_out import write_stock
from slim2gguf.gguf_torch import head_activation_kind, load_gguf_weights
from slim2gguf.model_io import load_model

from slim_synth import demo_tokenizer_dir, make_tiny_llama
from test_convert import FAST, convert_args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 4 heads / 2 kv heads of width 32: the q/k row permutation is not the identity
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", demo_tokenizer_dir(), hidden=128,
                           intermediate=256, layers=2, heads=4, kv_heads=2)


def _scrambled(model_dir):
    """The model's architecture with every parameter overwritten, so a loader that misses one shows."""
    model, _, _ = load_model(str(model_dir))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.123)
    return model


def test_q8_round_equals_gguf_py_q8_0():
    import gguf

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 256)).astype(np.float32) * np.array([1e-3, 0.1, 1, 10, 100, 0])[:, None]
    x[2, :32] = 0.0                        # an all-zero block: d = 0, codes 0
    x[3, 40] = 1e4                         # one outlier dominating its block
    want = gguf.quants.dequantize(gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                                  gguf.GGMLQuantizationType.Q8_0)
    got = q8_round(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError):
        q8_round(torch.zeros(3, 48))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("fuse_qkv", [False, True])
def test_f32_file_loads_back_exactly(tiny, tmp_path, monkeypatch, arch, fuse_qkv):
    """llama.cpp's converter permutes a llama file's q/k rows (not a qwen2 file's) and with --fuse-qkv writes q, k,
    v (and qwen2's biases) as one attn_qkv tensor; loading must undo both: every parameter back bit for bit."""
    from slim2gguf.gguf_in import open_gguf
    from slim2gguf.llama_converter import import_conversion

    if arch == "qwen2":   # SmolLM2's tokenizer is not in the qwen2 converter's table (test_convert's sharded test)
        monkeypatch.setattr(import_conversion().TextModel, "get_vocab_base_pre", lambda self, tokenizer: "smollm")
        src = make_tiny_llama(tmp_path / "qwen2", demo_tokenizer_dir(), hidden=128, intermediate=256, layers=2,
                              heads=4, kv_heads=2, arch="qwen2")
    else:
        src = tiny
    ref, _, _ = load_model(str(src))
    f32 = write_stock(src, tmp_path / "tiny-f32.gguf", "f32", fuse_qkv=fuse_qkv)
    names = {t.name for t in open_gguf(f32).tensors}
    assert ("blk.0.attn_qkv.weight" in names) == fuse_qkv and ("blk.0.attn_q.weight" in names) != fuse_qkv
    model = _scrambled(src)
    assert load_gguf_weights(model, f32) == len(dict(ref.named_parameters()))
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
    assert head_activation_kind(f32) is None


def test_slim_file_loads_the_fake_quant_weights(tiny, tmp_path):
    out = tmp_path / "tiny-slim2.gguf"
    res = cli_convert(tiny, out)
    model = _scrambled(tiny)
    load_gguf_weights(model, out)
    fq = dict(res.model.named_parameters())
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n]
    assert len(linears) == 7 * 2
    for n in linears:   # SLIM tensors: decoded == the conversion's d*q + m, bit for bit
        assert torch.equal(model.get_submodule(n).weight, fq[n + ".weight"]), n
    # Q8_0 embedding: within Q8 rounding of the fp32 source
    emb, src = model.model.embed_tokens.weight, fq["model.embed_tokens.weight"]
    assert (emb - src).abs().max() <= src.abs().max() / 127
    assert head_activation_kind(out) == "q8"


def cli_convert(model_dir, out):
    from slim2gguf.convert import convert

    return convert(convert_args(model_dir, out, 2, "--method", "rtn", keep_model=True))


def test_ggml_activation_hooks_round_inputs_and_go_away(tiny):
    model, _, _ = load_model(str(tiny))
    lin = model.model.layers[0].self_attn.q_proj
    raw, rounded = [], []
    ids = torch.tensor([[1, 5, 9, 200, 7, 3]])
    with torch.no_grad():
        h = lin.register_forward_pre_hook(lambda m, a: raw.append(a[0].clone()))
        base = model(input_ids=ids).logits
        h.remove()
        with ggml_cpu_activations(model, layers="q8", output="f16"):
            h = lin.register_forward_pre_hook(lambda m, a: rounded.append(a[0].clone()))  # runs after ours
            emu = model(input_ids=ids).logits
            h.remove()
        again = model(input_ids=ids).logits
    # q_proj's input was rounded to Q8 values inside the block only
    assert torch.equal(rounded[0], q8_round(raw[0])) and not torch.equal(rounded[0], raw[0])
    assert torch.equal(base, again) and not torch.equal(base, emu)
    assert (emu - base).abs().max() < 0.05 * base.abs().max()


def test_eval_weights_cli(tiny, tmp_path, capsys):
    out = tmp_path / "tiny-slim2.gguf"
    cli_convert(tiny, out)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"word{i % 37} and more text" for i in range(400)))
    rows = []
    for extra in ([], ["--ggml-activations"]):
        capsys.readouterr()
        rc = cli.main(["eval", str(tiny), "--weights", str(out), "--eval-text", str(text), "--ctx", "64",
                       "--max-tokens", "256", *extra])
        assert rc == 0
        rows.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    plain, emu = rows
    assert plain["tensors"] == 2 + 2 * 9 + 1 and not plain["ggml_activations"] and emu["head_activations"] == "q8"
    assert np.isfinite(plain["ppl"]) and plain["ppl"] != emu["ppl"]
    assert abs(emu["ppl"] / plain["ppl"] - 1) < 0.05
    # bad input: one line, exit 2
    capsys.readouterr()
    rc = cli.main(["eval", str(tiny), "--weights", str(tmp_path / "missing.gguf"), "--eval-text", str(text)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.gguf" in err[0]
    assert FAST  # the conversions above use the convert tests' fast calibration settings
