"""End-to-end scale training (quant/e2e.py) and `slim2gguf tune` on a tiny random llama (CPU, fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quant.e2e import ScaledCodes, kl_to_teacher, train_scales
from quant.quantizer import scale_tag_bits
from quant.result import QuantizedLinear
from slim2gguf import cli, reference_decoder
from slim2gguf.format import as_slim_type, is_slim, unpack_rows
from slim2gguf.gguf_in import open_gguf
from slim2gguf.gguf_torch import load_gguf_weights
from slim2gguf.model_io import load_model

from slim_synth import demo_tokenizer_dir, make_tiny_llama
from test_convert import CALIB
from test_gguf_torch import cli_convert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 4 heads / 2 kv heads: the file's q/k rows are permuted, which tune must undo and redo
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", demo_tokenizer_dir(), hidden=128,
                           intermediate=256, layers=2, heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def tiny_slim(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("slim") / "tiny-slim2.gguf"
    cli_convert(tiny, out)
    return out


def _slim_linears(path, model):
    from slim2gguf.tune import read_slim_linears
    return read_slim_linears(path, model)


def test_scaled_codes_start_at_the_file_weight_and_finalize_on_the_grid():
    g = torch.Generator().manual_seed(0)
    rows, groups, gs = 6, 3, 64
    bits = torch.tensor([1, 2, 3], dtype=torch.int8)
    q = torch.stack([torch.randint(0, 2 ** int(b), (rows, gs), generator=g) for b in bits], 1)
    q = q.reshape(rows, groups * gs).to(torch.uint8)
    from quant.quantizer import round_scale_fp16
    d = round_scale_fp16(torch.rand(rows, groups, generator=g) * 0.01 + 1e-3, bits.to(torch.int32).unsqueeze(0))
    m = (torch.randn(rows, groups, generator=g) * 0.01).half()
    ql = QuantizedLinear(bits, q, d, m, gs)
    p = ScaledCodes(ql, torch.device("cpu"))
    w = torch.zeros(rows, groups * gs)
    assert torch.equal(p(w), ql.dequantize())          # s = t = 0: exactly the stored weight
    with torch.no_grad():
        p.s.add_(0.05)
        p.t.sub_(0.3)
    fin = p.finalize()
    assert torch.equal(fin.q, ql.q) and torch.equal(fin.bits, ql.bits)
    assert torch.equal(scale_tag_bits(fin.d), ((bits.to(torch.int32) - 1) & 1).expand(rows, groups))
    assert torch.allclose(fin.d.float(), ql.d.float() * np.exp(0.05), rtol=2e-3)
    assert torch.allclose(fin.m.float(), (ql.m.float() - 0.3 * ql.d.float()), atol=1e-4)


def test_training_lowers_the_kl_and_keeps_the_codes(tiny, tiny_slim):
    teacher, tok, _ = load_model(str(tiny))
    student, _, _ = load_model(str(tiny))
    load_gguf_weights(student, tiny_slim)
    linears = {n: v[0] for n, v in _slim_linears(tiny_slim, student).items()}
    assert len(linears) == 7 * 2
    windows = torch.randint(2, len(tok), (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = float(kl_to_teacher(student(input_ids=windows).logits, teacher(input_ids=windows).logits))
    tuned, info = train_scales(student, teacher, linears, windows, epochs=3, lr=3e-3, progress=False)
    assert info["loss_before"] == pytest.approx(before, rel=1e-5)
    assert info["loss_after"] < 0.9 * info["loss_before"]
    for n, ql in tuned.items():
        assert torch.equal(ql.q, linears[n].q) and torch.equal(ql.bits, linears[n].bits)
        assert not torch.equal(ql.d, linears[n].d)
        # the student now holds exactly the storage-grid weights of the result
        assert torch.equal(student.get_parameter(n).data, ql.dequantize())
    assert not any(hasattr(m, "parametrizations") and m.parametrizations for m in student.modules())


def test_heldout_windows_choose_the_epoch(tiny, tiny_slim):
    """The held-out KL is measured before training and after each epoch and the best state is kept; when every
    epoch makes it worse the file's own scales come back unchanged."""
    teacher, tok, _ = load_model(str(tiny))
    gen = torch.Generator().manual_seed(2)
    windows = torch.randint(2, len(tok), (4, 32), generator=gen)
    unseen = torch.randint(2, len(tok), (2, 32), generator=gen)
    # held-out windows the training fits (two of its own) pick a trained epoch; unseen ones with a learning rate
    # far too high pick none
    for lr, heldout, improves in ((3e-3, windows[:2], True), (1.0, unseen, False)):
        student, _, _ = load_model(str(tiny))
        load_gguf_weights(student, tiny_slim)
        linears = {n: v[0] for n, v in _slim_linears(tiny_slim, student).items()}
        tuned, info = train_scales(student, teacher, linears, windows, epochs=2, lr=lr, progress=False,
                                   heldout=heldout)
        assert info["heldout_windows"] == 2 and len(info["heldout"]) == 3, info
        k = info["kept_epoch"]
        assert info["heldout"][k] == min(info["heldout"]), info
        # the kept state, on the storage grid, is what the student holds and what heldout_after measured
        assert info["heldout_after"] == pytest.approx(info["heldout"][k], rel=0.05)
        if improves:
            assert k > 0 and info["heldout_after"] < info["heldout"][0]
        else:
            assert k == 0 and min(info["heldout"][1:]) > info["heldout"][0], info
            for n, ql in tuned.items():
                assert torch.equal(ql.dequantize(), linears[n].dequantize()), n
            assert info["heldout_after"] == pytest.approx(info["heldout"][0], rel=1e-5)


def test_isolated_windows_share_no_tokens_with_the_others():
    """Held-out windows are the last ones that overlap no other window of the set (windows of one stream are drawn
    at independent offsets and can overlap)."""
    from quant.calibration import isolated_windows, windows_from_ids

    stream = torch.randperm(5000, generator=torch.Generator().manual_seed(0))   # no repeated token: runs are offsets
    ws = windows_from_ids(stream, 24, 256, seed=3).input_ids
    starts = [int((stream == w[0]).nonzero()) for w in ws]
    overlaps = [any(abs(starts[i] - starts[j]) < 256 for j in range(len(ws)) if j != i) for i in range(len(ws))]
    assert any(overlaps) and not all(overlaps)          # the draw has both kinds
    held = isolated_windows(ws, 3)
    assert held == sorted([i for i in range(len(ws)) if not overlaps[i]][-3:])
    assert isolated_windows(ws, 0) == [] and len(isolated_windows(ws, 100)) == overlaps.count(False)


def test_tune_cli_rewrites_headers_only(tiny, tiny_slim, tmp_path, capsys):
    text = CALIB if CALIB.exists() else None
    if text is None:
        text = tmp_path / "t.txt"
        text.write_text(" ".join(f"word{i % 37} and more text" for i in range(2000)))
    out = tmp_path / "tuned.gguf"
    rc = cli.main(["tune", str(tiny_slim), "--model", str(tiny), "-o", str(out), "--calib", str(text),
                   "--nsamples", "4", "--seqlen", "64", "--epochs", "2", "--lr", "3e-3"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["tensors_changed"] == info["tensors"] == 14
    assert info["loss_after"] < info["loss_before"]
    assert out.stat().st_size == tiny_slim.stat().st_size
    a, b = open_gguf(tiny_slim), open_gguf(out)
    assert [f.name for f in a.fields.values()] == [f.name for f in b.fields.values()]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and ta.tensor_type == tb.tensor_type
        da, db = np.asarray(ta.data), np.asarray(tb.data)
        if not is_slim(int(ta.tensor_type)):
            assert np.array_equal(da, db), ta.name
            continue
        st, ne0 = as_slim_type(int(ta.tensor_type)), int(ta.shape[0])
        reference_decoder.validate(db, ne0, st, tb.name)
        bits_a, q_a, _, _ = unpack_rows(da, ne0, st)
        bits_b, q_b, _, _ = unpack_rows(db, ne0, st)
        assert np.array_equal(bits_a, bits_b) and np.array_equal(q_a, q_b), ta.name   # codes untouched
        assert not np.array_equal(da, db), ta.name
    # the tuned file, loaded back, is what the training ended with: its KL to the teacher is the reported one
    from quant.calibration import windows_from_ids
    from slim2gguf.model_io import tokenize_file
    teacher, tok, _ = load_model(str(tiny))
    student, _, _ = load_model(str(tiny))
    load_gguf_weights(student, out)
    windows = windows_from_ids(tokenize_file(tok, str(text)), 4, 64, 0).input_ids
    with torch.no_grad():
        kl = [float(kl_to_teacher(student(input_ids=w[None]).logits, teacher(input_ids=w[None]).logits))
              for w in windows]
    assert np.mean(kl) == pytest.approx(info["loss_after"], rel=1e-4)
    assert not list(tmp_path.glob(".tuned.gguf.tmp-*"))


def test_tune_cli_bad_input_is_one_line(tiny, tiny_slim, tmp_path, capsys):
    rc = cli.main(["tune", str(tmp_path / "missing.gguf"), "--model", str(tiny), "-o", str(tmp_path / "o.gguf"),
                   "--calib", str(tmp_path / "t.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.gguf" in err[0]
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"word{i % 37} and more text" for i in range(2000)))
    rc = cli.main(["tune", str(tiny_slim), "--model", str(tiny), "-o", str(tmp_path / "o.gguf"), "--calib", str(text),
                   "--nsamples", "4", "--seqlen", "32", "--heldout", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--heldout 4" in err[0], err
    assert not (tmp_path / "o.gguf").exists()


def test_convert_tune_epochs_tunes_the_written_file(tiny, tmp_path):
    from slim2gguf.convert import convert
    from test_convert import convert_args

    plain, tuned = tmp_path / "plain.gguf", tmp_path / "tuned.gguf"
    convert(convert_args(tiny, plain, 2))
    res = convert(convert_args(tiny, tuned, 2, "--tune-epochs", "2", "--tune-lr", "3e-3"))
    t = res.summary["tune"]
    assert t["epochs"] == 2 and t["loss_after"] < t["loss_before"]
    assert "tune         2 epoch(s)" in res.text
    assert tuned.stat().st_size == plain.stat().st_size
    for ta, tb in zip(open_gguf(plain).tensors, open_gguf(tuned).tensors):
        if is_slim(int(ta.tensor_type)):   # the same conversion, then only the group headers moved
            st, ne0 = as_slim_type(int(ta.tensor_type)), int(ta.shape[0])
            _, q_a, d_a, _ = unpack_rows(np.asarray(ta.data), ne0, st)
            _, q_b, d_b, _ = unpack_rows(np.asarray(tb.data), ne0, st)
            assert np.array_equal(q_a, q_b) and not np.array_equal(d_a, d_b), ta.name


def test_convert_tune_epochs_refuses_rtn(tiny, tmp_path, capsys):
    rc = cli.main(["convert", str(tiny), "--bits", "2", "--method", "rtn", "--tune-epochs", "1",
                   "-o", str(tmp_path / "o.gguf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--tune-epochs" in err[0]
    assert not (tmp_path / "o.gguf").exists()
    # a held-out count that leaves nothing to train on is refused before the conversion starts
    rc = cli.main(["convert", str(tiny), "--bits", "2", "--nsamples", "4", "--tune-epochs", "1", "--tune-heldout", "4",
                   "-o", str(tmp_path / "o.gguf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--tune-heldout 4" in err[0], err
    assert not (tmp_path / "o.gguf").exists()
