"""`slim2gguf convert` on a tiny random llama: bit-exact SLIM tensors, metadata, errors, --resume.

The reference for "what llama.cpp's converter writes" is the converter itself: an F32 GGUF of the same HF folder
holding the fake-quant weights has the same tensor names and row order, and its values must equal the Numba
decode of the SLIM file bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slim2gguf import cli, cmd_convert
from slim2gguf.convert import convert
from slim2gguf.file_report import analyze
from slim2gguf.gguf_in import metadata, open_gguf
from slim2gguf.gguf_out import write_stock

from slim_synth import (assert_decode_equals_reference, demo_tokenizer_dir, fused_blocks, make_tiny_llama,
                        qkv_maps_coincide)

REPO = Path(__file__).resolve().parents[1]
CALIB = REPO.parent / "shared" / "data" / "brown.txt"
FAST = ["--nsamples", "4", "--seqlen", "64"] + (["--calib", str(CALIB)] if CALIB.exists() else [])


@pytest.fixture(scope="session")
def tokenizer_dir():
    return demo_tokenizer_dir()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer_dir):
    """3 layers; q/k/v/o/gate/up read 256 columns (g128: 2 groups, g64: 4), down reads 384 (3 or 6 groups)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer_dir, hidden=256,
                           intermediate=384, layers=3, heads=4, kv_heads=2)


def convert_args(model, out, bits, *extra, keep_model: bool = False):
    """ConvertSettings as the command line makes them (keep_model: ConvertResult.model keeps every layer's
    fake-quant weights, for tests that compare the file with them; the command line drops finished layers)."""
    ap = cli.argparse.ArgumentParser()
    cmd_convert.configure(ap)
    s = cmd_convert.settings(ap.parse_args([str(model), "--bits", str(bits), "-o", str(out), *FAST, *extra]))
    return dataclasses.replace(s, keep_model=keep_model)


def kv(path):
    return metadata(open_gguf(path))


@pytest.mark.parametrize("bits,group,extra", [(2, 128, []), (2, 64, ["--no-sqc"]), (3, 128, ["--no-sqc"]),
                                              (3, 64, ["--no-sqc", "--no-fuse-qkv"]),
                                              (2, 64, ["--no-sqc", "--act-order", "--true-sequential"]),
                                              (2, 64, ["--no-sqc", "--true-sequential", "--joint-qkv"]),
                                              (2, 128, ["--fit", "minmax"]),
                                              (2, 64, ["--no-sqc", "--method", "slim+", "--epochs", "1"]),
                                              (3, 128, ["--no-sqc", "--method", "slim+", "--train", "round",
                                                        "--train-target", "both", "--train-loss", "token_rms",
                                                        "--epochs", "1"]),
                                              (2, 128, ["--no-sqc", "--method", "slim+", "--train", "lwc",
                                                        "--train-init", "fit", "--epochs", "1"]),
                                              (2, 64, ["--no-sqc", "--method", "slim+", "--train-init", "fit",
                                                       "--epochs", "1", "--joint-qkv"])])
def test_tiny_llama_decodes_to_fake_quant_weights(tiny_llama, tmp_path, bits, group, extra):
    """(SQC, the slow part of SliM, is on in one case: the writer does not care where q/d/m come from.)
    q/k/v are one attn_qkv tensor exactly in the layers where their bit maps coincide: by default (per-tensor SBA)
    wherever that happens, with --joint-qkv (one map for the three) in every layer, with --no-fuse-qkv nowhere.
    The reference: the converter's F32 files of the fake-quant model, separate and --fuse-qkv."""
    out = tmp_path / "tiny.gguf"
    res = convert(convert_args(tiny_llama, out, bits, "--group-size", str(group), *extra, keep_model=True))
    assert out.is_file() and not (tmp_path / "tiny.gguf.ckpt").exists() and not (tmp_path / "tiny.gguf.partial").exists()
    if "--no-fuse-qkv" in extra:
        want_fused = set()
    elif "--joint-qkv" in extra:
        want_fused = {0, 1, 2}
        assert qkv_maps_coincide(res.results, 3) == want_fused
    else:
        want_fused = qkv_maps_coincide(res.results, 3)
    assert fused_blocks(out) == want_fused and res.summary["qkv_fused_layers"] == len(want_fused)
    # the fake-quant torch model, written by llama.cpp's converter as F32: same names, same q/k row order
    fq = tmp_path / "fq"
    res.model.save_pretrained(fq)
    for f in tiny_llama.iterdir():
        if f.name.startswith(("tokenizer", "chat_template")):
            (fq / f.name).write_bytes(f.read_bytes())
    ref = write_stock(fq, tmp_path / "fq.gguf", "f32")
    fused_ref = write_stock(fq, tmp_path / "fq-fused.gguf", "f32", fuse_qkv=True)
    n = assert_decode_equals_reference(out, ref, fused_ref)
    assert n == 7 * 3 - 2 * len(want_fused)
    # the permutation really happened for q/k (the converter's own LlamaModel.permute)
    qname = "blk.0.attn_qkv.weight" if 0 in want_fused else "blk.0.attn_q.weight"
    assert not np.array_equal(res.report.row_perm[qname][:256], np.arange(256))
    # types: g64 where asked or where 384 = 3*128 is not the issue; bpw measured from the file
    rep = analyze(out)
    types = {e["name"]: e["type"] for e in rep["tensors"]}
    assert types[qname] == f"SLIM{bits}_G{group}"
    assert types["blk.0.ffn_down.weight"] == f"SLIM{bits}_G{group}"
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert rep["totals"]["bpw_slim"] == pytest.approx(bits + 32 / group)
    # SBA mixed the widths somewhere (average exact by construction)
    widths = {int(b) for e in rep["tensors"] if "bits" in e for b in e["bits"]}
    assert widths <= {bits - 1, bits, bits + 1}
    s = res.summary
    assert s["bpw_slim"] == pytest.approx(bits + 32 / group) and s["file_bytes"] == out.stat().st_size
    assert s["peak_rss_mib"] > 0 and s["seconds"] > 0


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_convert_holds_one_decoder_layer_whatever_the_depth(source, tokenizer_dir, tmp_path):
    """The loader's own count (not memory): a 2-layer and an 8-layer model are both converted holding one decoder
    layer at a time; every quantized weight is read from the source exactly once (no whole-model copy, and the
    writer never reads it again: its SLIM rows replace it); a GGUF source exports no weights for the converter."""
    for layers in (2, 8):
        hf = make_tiny_llama(tmp_path / f"l{layers}", tokenizer_dir, hidden=128, intermediate=192, layers=layers,
                             heads=4, kv_heads=2)
        src = hf if source == "hf" else write_stock(hf, tmp_path / f"l{layers}.F32.gguf", "f32")
        res = convert(convert_args(src, tmp_path / f"l{layers}.gguf", 2, "--keep-checkpoints"))
        st = res.stream
        assert st.peak_resident == 1 and not st.resident
        decoder = [n for n, _ in res.model.named_parameters() if n.startswith("model.layers.")]
        assert len(decoder) == 9 * layers
        assert all(res.model.get_parameter(n).device.type == "meta" for n in decoder)   # dropped when done
        quantized = set(res.results)      # read back from OUT.ckpt/ (kept here), not held by the run
        assert len(quantized) == 7 * layers and all(st.weights.reads[n] == 1 for n in quantized)
        last = f"model.layers.{layers - 1}.mlp.down_proj.weight"
        assert res.results[last].shape == (128, 192) and res.model.get_parameter(last).device.type == "meta"
        assert all(st.weights.reads[n] >= 1 for n in st.weights.names)
        if source == "gguf":   # config and tokenizer only: the tensors come from the GGUF's memory map
            # and the map's pages of every tensor checked (NaN/Inf pass) or read went back to the kernel
            assert st.weights.pages_dropped == len(st.weights.names) + sum(st.weights.reads.values())
            exported = tmp_path / f"l{layers}.gguf.ckpt" / "hf"
            assert (exported / "config.json").is_file() and not list(exported.glob("*.safetensors"))


@pytest.mark.parametrize("arch,gguf_arch", [("llama", "llama"), ("mistral", "llama"), ("qwen2", "qwen2")])
def test_sharded_hf_folder_and_gguf_source_give_the_same_file(arch, gguf_arch, tokenizer_dir, tmp_path,
                                                              monkeypatch):
    """The LLaMA family the tool reads, from a sharded safetensors folder: the SLIM tensors decode to the
    fake-quant weights (llama.cpp's converter as the reference for names and row order), and converting an F32
    GGUF of the same weights gives the same SLIM bytes (RTN: no calibration text, so the sources' tokenizers
    cannot make a difference)."""
    from slim2gguf.format import is_slim
    from slim2gguf.llama_converter import import_conversion

    # the qwen2 converter identifies a BPE tokenizer by a hash of its output; this test's tokenizer (SmolLM2's, as
    # transformers rebuilds it from the demo GGUF) is not in llama.cpp's table (test_error_unknown_tokenizer)
    monkeypatch.setattr(import_conversion().TextModel, "get_vocab_base_pre", lambda self, tokenizer: "smollm")

    hf = make_tiny_llama(tmp_path / arch, tokenizer_dir, hidden=256, intermediate=384, layers=2, heads=4,
                         kv_heads=2, arch=arch, max_shard_size="400KB")
    assert len(list(hf.glob("*.safetensors"))) > 1
    out_hf, out_gguf = tmp_path / "from-hf.gguf", tmp_path / "from-gguf.gguf"
    res = convert(convert_args(hf, out_hf, 2, "--method", "rtn", keep_model=True))
    assert kv(out_hf)["general.architecture"] == gguf_arch
    fq = tmp_path / "fq"
    res.model.save_pretrained(fq)
    for f in hf.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            (fq / f.name).write_bytes(f.read_bytes())
    assert assert_decode_equals_reference(out_hf, write_stock(fq, tmp_path / "fq.gguf", "f32", fuse_qkv=True)) == 5 * 2

    src = write_stock(hf, tmp_path / f"{arch}.F32.gguf", "f32")
    convert(convert_args(src, out_gguf, 2, "--method", "rtn"))
    a = {t.name: t for t in open_gguf(out_hf).tensors}
    b = {t.name: t for t in open_gguf(out_gguf).tensors}
    assert set(a) == set(b)
    slim = [n for n, t in a.items() if is_slim(t.tensor_type)]
    assert len(slim) == 5 * 2 and "blk.1.attn_qkv.weight" in slim
    if arch == "qwen2":     # and its biases, fused the same way
        assert "blk.1.attn_qkv.bias" in a and "blk.1.attn_q.bias" not in a
    for n in slim:
        assert b[n].tensor_type == a[n].tensor_type and np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)), n


def test_metadata_matches_llama_cpp_f16(tiny_llama, tmp_path):
    out = tmp_path / "tiny-slim2.gguf"
    convert(convert_args(tiny_llama, out, 2, "--method", "rtn"))
    f16 = write_stock(tiny_llama, tmp_path / "tiny-f16.gguf", "f16", fuse_qkv=True)
    ours, ref = kv(out), kv(f16)
    missing = sorted(set(ref) - set(ours))
    assert not missing
    differ = sorted(k for k in ref if k != "general.file_type" and ours[k] != ref[k])
    assert not differ, differ
    assert ours["general.file_type"] == 100 and ref["general.file_type"] == 1
    assert ours["slim.bits"] == 2 and ours["slim.method"] == "rtn" and ours["slim.sba"] is False
    assert ours["slim.fuse_qkv"] is True and ours["slim.joint_qkv"] is False
    assert ours["slim.group_sizes"] == [128]
    assert {t.name for t in open_gguf(out).tensors} == {t.name for t in open_gguf(f16).tensors}
    assert "tokenizer.ggml.tokens" in ours and "tokenizer.chat_template" in ours


def test_stock_type_options(tiny_llama, tmp_path):
    out = tmp_path / "t.gguf"
    convert(convert_args(tiny_llama, out, 3, "--method", "rtn", "--embd-type", "f16", "--output-type", "q4_0"))
    types = {e["name"]: e["type"] for e in analyze(out)["tensors"]}
    assert types["token_embd.weight"] == "F16" and types["output.weight"] == "Q4_0"


def _cli(capsys, *argv):
    capsys.readouterr()   # drop what fixtures printed (progress bars)
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_error_missing_model(capsys, tmp_path):
    rc, err = _cli(capsys, "convert", tmp_path / "nope", "--bits", "2", "-o", tmp_path / "o.gguf")
    assert rc == 2 and err == [f"slim2gguf: error: model not found: {tmp_path / 'nope'}"]


def test_error_unsupported_architecture(capsys, tmp_path):
    d = tmp_path / "gpt2ish"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    rc, err = _cli(capsys, "convert", d, "--bits", "2", "-o", tmp_path / "o.gguf")
    assert rc == 2 and len(err) == 1 and "architecture 'gpt2' is not supported" in err[0]


def test_error_unknown_tokenizer_is_one_line_before_quantizing(capsys, tmp_path, tokenizer_dir):
    d = make_tiny_llama(tmp_path / "qwen2", tokenizer_dir, layers=1, arch="qwen2")
    out = tmp_path / "o.gguf"
    rc, err = _cli(capsys, "convert", d, "--bits", "2", "-o", out)
    assert rc == 2 and len(err) == 1 and "converter cannot write this model" in err[0] and "pre-tokenizer" in err[0]
    assert not out.exists() and not list(tmp_path.glob("o.gguf.*"))   # refused before any layer was quantized


def test_error_nan_weight(capsys, tmp_path, tokenizer_dir):
    d = make_tiny_llama(tmp_path / "nan", tokenizer_dir, layers=1,
                        nan_weight="model.layers.0.mlp.up_proj.weight")
    rc, err = _cli(capsys, "convert", d, "--bits", "2", "-o", tmp_path / "o.gguf")
    assert rc == 2 and len(err) == 1 and "NaN or Inf" in err[0] and "up_proj" in err[0]


def test_error_output_not_writable(capsys, tiny_llama, tmp_path):
    rc, err = _cli(capsys, "convert", tiny_llama, "--bits", "2", "-o", tmp_path / "no" / "such" / "dir.gguf")
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that ignores directory permissions")
        rc, err = _cli(capsys, "convert", tiny_llama, "--bits", "2", "-o", ro / "x.gguf")
        assert rc == 2 and len(err) == 1 and "not writable" in err[0]
    finally:
        ro.chmod(0o700)


def _run_cli(args, kill_after_layer=None):
    """The CLI in a fresh process; kill_after_layer=N: SIGKILLed right after layer N's checkpoint is written."""
    entry = ["-m", "slim2gguf.cli"] if kill_after_layer is None else \
        [str(REPO / "tests" / "kill_after_layer.py"), str(kill_after_layer)]
    return subprocess.run([sys.executable, *entry, *map(str, args)], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("method", [[], ["--method", "slim+", "--epochs", "1"]], ids=["slim", "slim+"])
def test_resume_after_kill_is_byte_identical(tiny_llama, tmp_path, method):
    """slim+ too: a resumed layer's full-precision targets come from the original weights, its quantized-path
    inputs from the checkpointed layers."""
    ref = tmp_path / "ref" / "m.gguf"
    ref.parent.mkdir()
    out = tmp_path / "m.gguf"
    args = ["convert", tiny_llama, "--bits", "2", "--no-sqc", *FAST, *method]
    r = _run_cli([*args, "-o", ref])
    assert r.returncode == 0, r.stderr[-2000:]
    # killed (SIGKILL, no clean-up) right after layer 1's checkpoint was written
    r = _run_cli([*args, "-o", out], kill_after_layer=1)
    assert r.returncode == -9, r.stderr[-2000:]
    ck = tmp_path / "m.gguf.ckpt"
    assert sorted(p.name for p in ck.glob("layer_*.pt")) == ["layer_00000.pt", "layer_00001.pt"]
    assert not out.exists()
    # different settings are refused
    for other in (["--seed", "1"], ["--joint-qkv"]):   # --joint-qkv: other bit maps for q/k/v
        r = _run_cli([*args, *other, "-o", out, "--resume"])
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("slim2gguf: error: cannot resume:")
    r = _run_cli([*args, "-o", out, "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resume: 2 finished layer(s)" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["resumed_layers"] == 2
    assert out.read_bytes() == ref.read_bytes()
    assert not ck.exists()


def test_resume_may_change_the_qkv_layout(tiny_llama, tmp_path):
    """--no-fuse-qkv only lays out rows (the checkpoint key leaves it out): a run killed with the default layout and
    resumed with --no-fuse-qkv writes the same bytes as a --no-fuse-qkv run made in one go. RTN gives q/k/v one
    bit map, so the default file fuses every layer and the two layouts really differ."""
    from gguf import GGUFReader

    args = ["convert", tiny_llama, "--bits", "2", "--method", "rtn", *FAST]
    ref = tmp_path / "ref" / "m.gguf"
    ref.parent.mkdir()
    r = _run_cli([*args, "--no-fuse-qkv", "-o", ref])
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "m.gguf"
    r = _run_cli([*args, "-o", out], kill_after_layer=0)
    assert r.returncode == -9, r.stderr[-2000:]
    r = _run_cli([*args, "--no-fuse-qkv", "-o", out, "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resume: 1 finished layer(s)" in r.stderr
    assert out.read_bytes() == ref.read_bytes()
    names = {t.name for t in GGUFReader(out).tensors}
    assert "blk.0.attn_q.weight" in names and not any("attn_qkv" in n for n in names)
    fused = tmp_path / "fused.gguf"
    assert _run_cli([*args, "-o", fused]).returncode == 0
    assert any("attn_qkv" in t.name for t in GGUFReader(fused).tensors)
