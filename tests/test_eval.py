"""End-to-end: the eval command and quantize_model on a tiny random llama (built in conftest, no downloads)."""
from __future__ import annotations

import json

import pytest
import torch


from one_thread import one_torch_thread  # noqa: F401  (autouse)

from quant.calibration import self_generated, windows_from_ids
from quant.config import QuantConfig
from quant.pipeline import LINEAR_NAMES, average_bits, quantize_model
from slim2gguf.cli import main
from slim2gguf.model_io import load_model, tokenize_file

FAST = ["--nsamples", "4", "--seqlen", "64", "--ctx", "64", "--max-tokens", "512"]


def _eval(capsys, model, *extra):
    rc = main(["eval", str(model), *FAST, *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


@pytest.mark.parametrize("method,bits,extra", [("fp", 2, []), ("rtn", 2, []), ("gptq", 3, []), ("slim", 2, []),
                                               ("slim", 3, ["--no-sba"]), ("slim", 2, ["--no-sqc"])])
def test_eval_cli_tiny_llama(capsys, tiny_llama_dir, tiny_text_file, method, bits, extra):
    res = _eval(capsys, tiny_llama_dir, "--method", method, "--bits", str(bits), "--calib", str(tiny_text_file),
                "--eval-text", str(tiny_text_file), *extra)
    for key in ("method", "bits", "ppl", "ctx", "tokens", "avg_bits", "bpw", "seconds"):
        assert key in res
    assert res["tokens"] == 512 and res["ctx"] == 64 and res["ppl"] > 1
    if method != "fp":
        assert res["avg_bits"] == bits
        assert res["bpw"] > bits


def test_eval_self_generated_calibration_is_seeded(capsys, tiny_llama_dir, tiny_text_file):
    args = ("--method", "slim", "--calib", "self", "--nsamples", "4", "--seqlen", "32", "--eval-text",
            str(tiny_text_file))
    a = _eval(capsys, tiny_llama_dir, *args)
    b = _eval(capsys, tiny_llama_dir, *args)
    assert a["ppl"] == b["ppl"] and a["calibration"]["source"] == "self-generated"


def test_default_calibration_is_the_builtin_excerpt(capsys, tiny_llama_dir, tiny_text_file):
    """No --calib: windows of the packaged Brown excerpt (it ships with the package and is long enough)."""
    from slim2gguf.calibration import BUILTIN_CALIB
    assert BUILTIN_CALIB.is_file() and BUILTIN_CALIB.stat().st_size > 100_000
    res = _eval(capsys, tiny_llama_dir, "--method", "gptq", "--nsamples", "4", "--seqlen", "32", "--eval-text",
                str(tiny_text_file))
    assert res["calibration"]["source"] == BUILTIN_CALIB.name and res["calibration"]["nsamples"] == 4


def test_quantize_model_api_resume_and_fake_weights(tiny_llama_dir, tiny_text_file):
    model, tok, _ = load_model(str(tiny_llama_dir))
    calib = windows_from_ids(tokenize_file(tok, str(tiny_text_file)), 4, 64, seed=1)
    emb = model.model.embed_tokens.weight.clone()
    seen = {}
    res = quantize_model(model, calib, QuantConfig(method="slim", bits=2), progress=False,
                         on_layer_done=lambda i, q: seen.setdefault(i, q))
    assert sorted(seen) == [0, 1]
    assert set(res) == {f"model.layers.{i}.{n}.weight" for i in range(2) for n in LINEAR_NAMES}
    assert res.info["calibration"]["tokens"] == 256
    for name, ql in res.items():
        assert torch.equal(model.get_parameter(name).data, ql.dequantize())
        assert ql.group_size == (64 if ql.shape[1] == 192 else 128)
        assert ql.bits.sum() == 2 * ql.bits.numel()
    assert torch.equal(model.model.embed_tokens.weight, emb)
    assert average_bits(res)[0] == 2.0

    # resume: layer 0 given from the first run -> identical results for layer 1
    model2, _, _ = load_model(str(tiny_llama_dir))
    res2 = quantize_model(model2, calib, QuantConfig(method="slim", bits=2), progress=False,
                          done_layers={0: seen[0]})
    for name in res:
        assert torch.equal(res[name].q, res2[name].q) and torch.equal(res[name].d, res2[name].d)


def test_self_generated_calibration_deterministic(tiny_llama_dir):
    model, tok, _ = load_model(str(tiny_llama_dir))
    a = self_generated(model, 3, 20, seed=5, bos_token_id=tok.bos_token_id)
    b = self_generated(model, 3, 20, seed=5, bos_token_id=tok.bos_token_id)
    assert torch.equal(a.input_ids, b.input_ids) and a.input_ids.shape == (3, 20)


def test_eval_errors_are_one_line(capsys, tmp_path, tiny_text_file):
    rc = main(["eval", str(tmp_path / "missing"), "--eval-text", str(tiny_text_file)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not found" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    rc = main(["eval", str(bad), "--eval-text", str(tiny_text_file)])
    err = capsys.readouterr().err
    assert rc == 2 and "gpt2" in err and err.count("\n") == 1


def test_eval_rejects_nan_weights(capsys, tmp_path, tiny_text_file):
    from conftest import build_tiny_llama, build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    m = build_tiny_llama(len(tok), num_hidden_layers=1)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[3, 3] = float("nan")
    m.save_pretrained(tmp_path / "nan")
    tok.save_pretrained(tmp_path / "nan")
    capsys.readouterr()
    rc = main(["eval", str(tmp_path / "nan"), "--eval-text", str(tiny_text_file)])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("slim2gguf: error:") and "NaN" in last
