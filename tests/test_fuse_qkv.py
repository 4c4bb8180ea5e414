"""q, k and v written as one `blk.N.attn_qkv` tensor against the three separate tensors (`--no-fuse-qkv`), on tiny
random llama and qwen2 models (RTN: one uniform bit map for all, so every layer fuses and both layouts hold the
same weights): the names, the weights read back into torch, and llama.cpp's logits (the CPU build) must agree. A
wrong row order in either part (q/k RoPE permutation, k/v offsets, qwen2's fused bias) changes both.

Then when they fuse: the writer fuses a layer exactly where q, k and v have one bit map; SBA's default gives each
its own map (fused where they happen to coincide), `--joint-qkv` one map for the three (every layer fused), and
`--joint-qkv --no-fuse-qkv` is refused, and eval (no file) has no --no-fuse-qkv."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import llama_env
from slim2gguf.gguf_in import metadata, open_gguf
from slim2gguf.gguf_torch import load_gguf_weights
from slim2gguf.model_io import load_model

from slim_synth import demo_tokenizer_dir, fused_blocks, make_tiny_llama
from test_convert import convert_args

LAYERS = 2


def _llama_logits(Llama, path, ids: list[int], n_ctx: int) -> np.ndarray:
    """llama.cpp's logits for every position of ids (float64), the model freed afterwards."""
    llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0, n_threads=2)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    del llm
    return out


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tmp_path_factory):
    """(arch, HF folder, fused file, separate file, the fused conversion's result with its fake-quant model)."""
    from slim2gguf.convert import convert
    from slim2gguf.llama_converter import import_conversion

    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    # 4 heads / 2 kv heads of 32: q 128 rows, k and v 64 each; the llama q/k rows are permuted in the file
    hf = make_tiny_llama(root / "hf", demo_tokenizer_dir(), hidden=128, intermediate=256, layers=LAYERS, heads=4,
                         kv_heads=2, arch=arch)
    fused, separate = root / "fused.gguf", root / "separate.gguf"
    with pytest.MonkeyPatch.context() as mp:
        # the qwen2 converter does not know SmolLM2's tokenizer by its hash (test_convert's sharded-folder test)
        mp.setattr(import_conversion().TextModel, "get_vocab_base_pre", lambda self, tokenizer: "smollm")
        res = convert(convert_args(hf, fused, 2, "--method", "rtn", keep_model=True))
        convert(convert_args(hf, separate, 2, "--method", "rtn", "--no-fuse-qkv"))
    return arch, hf, fused, separate, res


def test_fused_file_holds_attn_qkv_and_separate_file_the_old_names(pair):
    arch, _, fused, separate, res = pair
    a = {t.name: t for t in open_gguf(fused).tensors}
    b = {t.name: t for t in open_gguf(separate).tensors}
    kinds = ("weight", "bias") if arch == "qwen2" else ("weight",)
    for i in range(LAYERS):
        for kind in kinds:
            assert f"blk.{i}.attn_qkv.{kind}" in a and f"blk.{i}.attn_qkv.{kind}" not in b
            for n in "qkv":
                assert f"blk.{i}.attn_{n}.{kind}" not in a and f"blk.{i}.attn_{n}.{kind}" in b
        assert [int(x) for x in a[f"blk.{i}.attn_qkv.weight"].shape] == [128, 128 + 64 + 64]
        assert a[f"blk.{i}.attn_qkv.weight"].tensor_type.name == "SLIM2_G128"
    assert set(a) - {n for n in a if "attn_qkv" in n} == set(b) - {n for n in b if ".attn_q." in n or ".attn_k."
                                                                 in n or ".attn_v." in n}
    assert metadata(open_gguf(fused))["slim.fuse_qkv"] is True
    assert metadata(open_gguf(separate))["slim.fuse_qkv"] is False
    # the write report: the fused tensor's parts and the source row of each of its rows
    w = {t.name: t for t in res.report.tensors}["blk.0.attn_qkv.weight"]
    assert w.hf_name is None and [r for _, r in w.parts] == [128, 64, 64]
    assert [n.split(".")[-2] for n, _ in w.parts] == ["q_proj", "k_proj", "v_proj"]
    perm = res.report.row_perm["blk.0.attn_qkv.weight"]
    assert sorted(perm) == list(range(256)) and np.array_equal(perm[192:], np.arange(192, 256))   # v as it is
    permuted = arch == "llama"     # the converter's LlamaModel.permute; qwen2 keeps the model's q/k rows
    assert np.array_equal(perm[:128], np.arange(128)) != permuted
    assert np.array_equal(perm[128:192], np.arange(128, 192)) != permuted


def test_fused_and_separate_files_load_the_same_torch_weights(pair):
    """Both files, read back into the model (gguf_torch splits attn_qkv and undoes the permutation), hold the
    conversion's fake-quant weights bit for bit."""
    _, hf, fused, separate, res = pair
    want = dict(res.model.named_parameters())
    models = []
    for path in (fused, separate):
        model, _, _ = load_model(str(hf))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.123)
        assert load_gguf_weights(model, path) == len(want)
        models.append(dict(model.named_parameters()))
    for name, p in want.items():
        assert torch.equal(models[0][name], models[1][name]), name
        if "_proj.weight" in name:      # the SLIM linears
            assert torch.equal(models[0][name], p), name


@pytest.mark.llama
def test_llama_cpp_gives_the_same_logits_for_both_layouts(pair):
    """One mat-vec for q/k/v (and one bias add) against three: the same numbers in llama.cpp (CPU)."""
    llama_env.require_llama_cpp_python()
    from llama_cpp import Llama

    _, _, fused, separate, _ = pair
    ids = [1] + np.random.default_rng(0).integers(3, 49152, size=63).tolist()
    logits = [_llama_logits(Llama, path, ids, 128) for path in (fused, separate)]
    diff = float(np.abs(logits[0] - logits[1]).max())
    print(f"fused vs separate: max |logit difference| {diff:.3g} (logits up to {np.abs(logits[1]).max():.3g})")
    assert np.isfinite(logits[0]).all() and diff <= 1e-5 * max(1.0, float(np.abs(logits[1]).max()))


# ------------------------------------------------- when q/k/v fuse: the writer's rule and the SBA defaults
def _qkv(i: int) -> list[str]:
    return [f"model.layers.{i}.self_attn.{n}_proj.weight" for n in "qkv"]


def test_writer_fuses_exactly_the_layers_whose_q_k_v_maps_coincide(tmp_path):
    """The writer's decision on hand-made bit maps (RTN rows, so nothing else varies): layer 0 one mixed map for
    all three -> fused; layer 1 k with another map -> three tensors; layer 2 uniform maps -> fused; fuse_qkv=False
    -> three tensors everywhere. Either way the file holds the given weights."""
    from safetensors.torch import load_file

    from slim2gguf.gguf_out import StockTypes, write_slim_gguf
    from slim_synth import LINEAR_SUFFIXES, rtn

    # kv_heads = heads: q, k, v have the same shape (hidden 128 at g64: 2 groups)
    hf = make_tiny_llama(tmp_path / "hf", demo_tokenizer_dir(), hidden=128, intermediate=192, layers=3, heads=4,
                         kv_heads=4)
    maps = {0: ([3, 1], [3, 1], [3, 1]), 1: ([3, 1], [1, 3], [3, 1]), 2: ([2, 2], [2, 2], [2, 2])}
    quantized = {}
    for name, w in load_file(str(hf / "model.safetensors")).items():
        if name.endswith(LINEAR_SUFFIXES):
            i = int(name.split(".")[2])
            bits = maps[i]["qkv".index(name.split(".")[4][0])] if "self_attn" in name and "o_proj" not in name \
                else [2] * (w.shape[1] // 64)
            quantized[name] = rtn(w.float(), 2, 64, bits=np.array(bits, dtype=np.int8))
    stock = StockTypes("q8_0", "q8_0", "q8_0")
    for fuse, want in ((True, {0, 2}), (False, set())):
        out = tmp_path / f"fuse-{fuse}.gguf"
        report = write_slim_gguf(hf, out, quantized, avg_bits=2, stock=stock, fuse_qkv=fuse)
        assert fused_blocks(out) == want
        assert {w.name for w in report.tensors if w.parts} == {f"blk.{i}.attn_qkv.weight" for i in want}
        names = {t.name for t in open_gguf(out).tensors}
        for i in set(maps) - want:
            assert {f"blk.{i}.attn_{n}.weight" for n in "qkv"} <= names
        model, _, _ = load_model(str(hf))
        load_gguf_weights(model, out)
        for name, ql in quantized.items():
            assert torch.equal(model.get_parameter(name).detach(), ql.dequantize()), name


@pytest.fixture(scope="module")
def salient_model(tmp_path_factory):
    """A tiny llama (q, k, v all 256 x 256: 4 groups of 64) where per-tensor SBA must give layer 0's q, k, v one
    map (they are the same matrix, with one salient column group) and layer 1's three different ones (each its own
    salient group)."""
    root = tmp_path_factory.mktemp("salient")
    hf = make_tiny_llama(root / "src", demo_tokenizer_dir(), hidden=256, intermediate=384, layers=2, heads=4,
                         kv_heads=4)
    model, tok, _ = load_model(str(hf))
    with torch.no_grad():
        attn = [layer.self_attn for layer in model.model.layers]
        attn[0].q_proj.weight[:, 64:128] *= 8
        attn[0].k_proj.weight.copy_(attn[0].q_proj.weight)
        attn[0].v_proj.weight.copy_(attn[0].q_proj.weight)
        for n, hot in zip("qkv", (0, 2, 3)):
            getattr(attn[1], f"{n}_proj").weight[:, hot * 64:(hot + 1) * 64] *= 8
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    return root / "hf"


def _convert_salient(hf, out, *extra):
    from slim2gguf.convert import convert

    return convert(convert_args(hf, out, 2, "--group-size", "64", "--no-sqc", *extra, keep_model=True))


def test_default_keeps_per_tensor_maps_and_fuses_where_they_coincide(salient_model, tmp_path):
    res = _convert_salient(salient_model, tmp_path / "default.gguf")
    bits = {i: [res.results[n].bits for n in _qkv(i)] for i in range(2)}
    # per-tensor SBA: layer 0's identical matrices one (mixed) map, layer 1's three different maps
    assert all(torch.equal(b, bits[0][0]) for b in bits[0]) and len(set(bits[0][0].tolist())) > 1
    assert len({tuple(b.tolist()) for b in bits[1]}) == 3
    assert fused_blocks(tmp_path / "default.gguf") == {0} and res.summary["qkv_fused_layers"] == 1
    kv = metadata(open_gguf(tmp_path / "default.gguf"))
    assert kv["slim.fuse_qkv"] is True and kv["slim.joint_qkv"] is False
    model, _, _ = load_model(str(salient_model))
    load_gguf_weights(model, tmp_path / "default.gguf")
    for i in range(2):
        for n in _qkv(i):
            assert torch.equal(model.get_parameter(n).detach(), res.model.get_parameter(n).detach()), n


def test_joint_qkv_gives_one_map_and_fuses_every_layer(salient_model, tmp_path):
    out = tmp_path / "joint.gguf"
    res = _convert_salient(salient_model, out, "--joint-qkv")
    for i in range(2):
        bits = [res.results[n].bits for n in _qkv(i)]
        assert all(torch.equal(b, bits[0]) for b in bits)
    assert len(set(res.results[_qkv(1)[0]].bits.tolist())) > 1   # a real (mixed) map, not a uniform one
    assert fused_blocks(out) == {0, 1} and res.summary["qkv_fused_layers"] == 2
    kv = metadata(open_gguf(out))
    assert kv["slim.fuse_qkv"] is True and kv["slim.joint_qkv"] is True
    model, _, _ = load_model(str(salient_model))
    load_gguf_weights(model, out)
    for n in _qkv(0) + _qkv(1):
        assert torch.equal(model.get_parameter(n).detach(), res.model.get_parameter(n).detach()), n


@pytest.mark.llama
def test_llama_cpp_runs_a_file_fused_in_some_layers_like_the_separate_one(salient_model, tmp_path):
    """The default file (layer 0 fused, layer 1 not) and --no-fuse-qkv's (same weights, three tensors each):
    the same logits in llama.cpp (CPU)."""
    llama_env.require_llama_cpp_python()
    from llama_cpp import Llama

    mixed, separate = tmp_path / "mixed.gguf", tmp_path / "separate.gguf"
    _convert_salient(salient_model, mixed)
    _convert_salient(salient_model, separate, "--no-fuse-qkv")
    assert fused_blocks(mixed) == {0} and fused_blocks(separate) == set()
    ids = [1] + np.random.default_rng(1).integers(3, 49152, size=31).tolist()
    logits = [_llama_logits(Llama, path, ids, 64) for path in (mixed, separate)]
    scale = max(1.0, float(np.abs(logits[1]).max()))
    assert np.isfinite(logits[0]).all() and float(np.abs(logits[0] - logits[1]).max()) <= 1e-5 * scale


def test_joint_qkv_with_no_fuse_qkv_is_a_one_line_error(salient_model, tmp_path, capsys):
    from slim2gguf import cli

    out = tmp_path / "x.gguf"
    capsys.readouterr()
    rc = cli.main(["convert", str(salient_model), "--bits", "2", "--joint-qkv", "--no-fuse-qkv", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--joint-qkv" in err[0] and "--no-fuse-qkv" in err[0], err
    assert not out.exists() and not list(tmp_path.glob("x.gguf.*"))


def test_eval_has_no_layout_option(salient_model, tmp_path, capsys):
    """eval writes no file, so the writer's layout switch is not one of its options (it used to be accepted and
    ignored)."""
    from slim2gguf import cli

    text = tmp_path / "text.txt"
    text.write_text("some words to measure on " * 50)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", str(salient_model), "--bits", "2", "--no-fuse-qkv", "--eval-text", str(text)])
    assert exc.value.code == 2 and "unrecognized arguments: --no-fuse-qkv" in capsys.readouterr().err


def test_checkpoint_key_ignores_the_writers_layout(tiny_llama_dir):
    """fuse_qkv only decides how rows are written, so a resume may change it; joint_qkv changes the bit maps, and is
    keyed only when on, so checkpoints written before the option existed (per-tensor maps) still resume."""
    from quant.config import QuantConfig
    from slim2gguf.convert import ConvertSettings, checkpoint_key

    def key(**quant):
        return checkpoint_key(ConvertSettings(model=str(tiny_llama_dir), quant=QuantConfig(bits=2, **quant)), "cpu")

    assert key(fuse_qkv=False) == key()
    assert "fuse_qkv" not in key() and "joint_qkv" not in key()
    assert key(joint_qkv=True) != key() and key(joint_qkv=True)["joint_qkv"] is True
