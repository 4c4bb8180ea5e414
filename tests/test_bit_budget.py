"""The whole-file bit budget (`convert --target-bpw`): the allocation (quant/bit_budget.py), llama.cpp's own
quantizers for the stock tensors (slim2gguf/ggml_quants.py), and a tiny conversion whose file lands on the
budget and decodes to exactly what the quantized torch model computes with."""
from __future__ import annotations

import itertools
import random
import re

import numpy as np
import torch
import pytest

from quant.bit_budget import Option, allocate, convex_hull
from slim2gguf import ggml_quants

needs_ggml = pytest.mark.skipif(not ggml_quants.available(), reason="the patched ggml is not built")


def random_options(rng: random.Random, n_tensors: int) -> dict[str, list[Option]]:
    out = {}
    for i in range(n_tensors):
        size = rng.randint(1, 50) * 100
        losses = sorted((rng.random() * 10 for _ in range(4)), reverse=True)
        out[f"t{i}"] = [Option(t, int(size * b), loss) for t, b, loss in zip("abcd", (2.25, 3.25, 4.5, 8.5), losses)]
    return out


def test_convex_hull_drops_dominated_and_concave_options():
    opts = [Option("a", 100, 10.0), Option("b", 200, 9.9), Option("c", 300, 1.0), Option("d", 250, 12.0),
            Option("e", 400, 0.9)]
    hull = convex_hull(opts)
    assert [o.type for o in hull] == ["a", "c", "e"]   # d is dominated, b lies above the a -> c segment


def test_allocation_respects_the_budget_and_spends_it():
    rng = random.Random(0)
    for _ in range(20):
        opts = random_options(rng, 12)
        lo = sum(min(o.nbytes for o in v) for v in opts.values())
        hi = sum(max(o.nbytes for o in v) for v in opts.values())
        budget = rng.uniform(lo, hi)
        chosen = allocate(opts, budget)
        spent = sum(o.nbytes for o in chosen.values())
        assert spent <= budget
        # no single tensor could still be upgraded to a lower loss within the budget (the fill pass)
        for name, o in chosen.items():
            for alt in opts[name]:
                if alt.loss < o.loss:
                    assert spent - o.nbytes + alt.nbytes > budget


def test_allocation_is_near_the_exhaustive_optimum():
    rng = random.Random(1)
    worst = 0.0
    for _ in range(30):
        opts = random_options(rng, 5)
        lo = sum(min(o.nbytes for o in v) for v in opts.values())
        hi = sum(max(o.nbytes for o in v) for v in opts.values())
        budget = rng.uniform(lo, hi)
        best = min(sum(o.loss for o in combo) for combo in itertools.product(*opts.values())
                   if sum(o.nbytes for o in combo) <= budget)
        got = sum(o.loss for o in allocate(opts, budget).values())
        assert got >= best - 1e-9
        worst = max(worst, got - best)
    assert worst < 3.0     # a greedy is not exact; it must stay close to the knapsack optimum


def test_more_budget_never_predicts_more_loss():
    opts = random_options(random.Random(2), 30)
    lo = sum(min(o.nbytes for o in v) for v in opts.values())
    hi = sum(max(o.nbytes for o in v) for v in opts.values())
    losses = [sum(o.loss for o in allocate(opts, b).values()) for b in np.linspace(lo, hi, 25)]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))


@needs_ggml
@pytest.mark.parametrize("t", ["q4_k", "q6_k", "q3_k", "q4_0", "q8_0"])
def test_ggml_quantizer_roundtrip(t):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, 512)).astype(np.float32)
    imp = rng.random(512).astype(np.float32) + 0.1
    for imatrix in (None, imp):
        data = ggml_quants.quantize(t, W, imatrix)
        assert data.shape == (8, ggml_quants.row_bytes(t, 512))
        err = np.abs(ggml_quants.dequantize(t, data) - W).max()
        assert err < {"q3_k": 1.0, "q4_k": 0.5, "q4_0": 0.5, "q6_k": 0.15, "q8_0": 0.05}[t]
    # the importance vector changes what is written (it is used, as by llama-quantize with an imatrix)
    if t != "q8_0":
        assert not np.array_equal(ggml_quants.quantize(t, W, imp), ggml_quants.quantize(t, W, None))


@needs_ggml
@pytest.mark.parametrize("t", ["q4_k", "q2_k", "q8_0"])
def test_quantizing_on_threads_writes_the_bytes_of_one_call(t, monkeypatch):
    """ggml_quantize_chunk on disjoint row ranges at once = one call over all rows (and the same decode)."""
    import os

    rng = np.random.default_rng(3)
    W = rng.standard_normal((1000, 256)).astype(np.float32)
    imp = rng.random(256).astype(np.float32)
    monkeypatch.setattr(ggml_quants, "MIN_ROWS_PER_THREAD", 10**9)
    one = ggml_quants.quantize(t, W, imp)
    assert len(ggml_quants._row_ranges(1000)) == 1
    monkeypatch.setattr(ggml_quants, "MIN_ROWS_PER_THREAD", 64)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert len(ggml_quants._row_ranges(1000)) == 6
    many = ggml_quants.quantize(t, W, imp)
    assert np.array_equal(one, many)
    assert np.array_equal(ggml_quants.dequantize(t, many), ggml_quants.dequantize(t, one))


def test_row_bytes_refuses_widths_a_type_cannot_hold():
    assert ggml_quants.row_bytes("q4_k", 576) is None
    assert ggml_quants.row_bytes("q4_0", 576) == 576 // 32 * 18


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from slim_synth import demo_tokenizer_dir, make_tiny_llama
    # 256-wide rows: K types and SLIM g128 both fit; untied output, so token_embd and output are both planned
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", demo_tokenizer_dir(), hidden=256,
                           intermediate=512, layers=2, heads=4, kv_heads=2)


@needs_ggml
@pytest.mark.parametrize("target,lands", [(2.45, False), (2.9, True)])
def test_target_bpw_file_lands_on_budget_and_decodes(tiny_llama, tmp_path, target, lands):
    """lands: the target is one the tiny model can reach within 0.02 (its embedding and output are 93 % of its
    weights, so some targets fall between two of their types)."""
    import torch

    from slim2gguf.file_report import analyze
    from slim2gguf.format import Keys, is_slim
    from slim2gguf.gguf_in import metadata, open_gguf
    from slim2gguf.reference_decoder import decode
    from test_convert import convert_args
    from slim2gguf.convert import convert

    out = tmp_path / "tiny.gguf"
    res = convert(convert_args(tiny_llama, out, 2, "--target-bpw", str(target), "--fisher-samples", "2",
                               keep_model=True))
    rep = analyze(out)
    bpw = rep["totals"]["bpw_tensors"]
    assert bpw <= target + 1e-9
    assert target - bpw < 0.02 or not lands
    kv = metadata(open_gguf(out))
    types = {e["name"]: e["type"] for e in rep["tensors"]}
    planned = dict(zip(kv[Keys.Plan.TENSORS], kv[Keys.Plan.TYPES]))
    assert kv[Keys.Plan.TARGET_BPW] == pytest.approx(target)
    for name, t in planned.items():    # the plan in the metadata is what the file holds (q/k/v of a fused
        held = types.get(name) or types[re.sub(r"\.attn_[qkv]\.", ".attn_qkv.", name)]   # layer: attn_qkv)
        assert held.lower() == t.lower() or (t.startswith("slim") and held.lower().startswith(t))
    assert len(set(planned.values())) > 1
    # every planned tensor decodes to the weight the quantized torch model holds (stock ones through gguf-py)
    sd = res.model.state_dict()
    reader = open_gguf(out)
    for t in reader.tensors:
        written = {w.name: w for w in res.report.tensors}[t.name]
        if written.parts:     # fused q/k/v: the parts stacked, in the file's row order
            got = decode(t.data, int(t.shape[0]), t.tensor_type).reshape(-1, int(t.shape[0]))
            want = np.concatenate([sd[n].float().numpy() for n, _ in written.parts])[res.report.row_perm[t.name]]
            assert np.array_equal(got, want), t.name
            continue
        if t.name not in planned:
            continue
        if is_slim(t.tensor_type):
            got = decode(t.data, int(t.shape[0]), t.tensor_type).reshape(-1, int(t.shape[0]))
        else:
            got = ggml_quants.dequantize(t.tensor_type.name, np.asarray(t.data))
        want = sd[written.hf_name].float().numpy()
        perm = res.report.row_perm.get(t.name)
        if perm is not None:
            want = want[perm]
        elif t.name.startswith("blk.") and ("attn_q" in t.name or "attn_k" in t.name):
            continue      # stock q/k rows are in the converter's RoPE order; checked through SLIM tensors
        assert np.array_equal(got, want.astype(np.float32)), t.name


def test_linear_loss_is_half_fisher_times_output_error():
    import torch

    from quant.hessian import HessianAccumulator
    from quant.sensitivity import OutputFisher

    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 64, generator=g)
    dW = torch.randn(32, 64, generator=g) * 0.01
    f = torch.rand(32, generator=g)
    acc = HessianAccumulator(64)
    acc.add_batch(X)
    fisher = OutputFisher()
    fisher.linear["lin"] = f
    want = 0.5 * float((f * (X @ dW.t()).pow(2).mean(dim=0)).sum())
    assert fisher.linear_loss("lin", dW, acc.H) == pytest.approx(want, rel=1e-4)
    # a row sample scales to the whole matrix: all rows given = the full sum
    rows = torch.arange(32)
    assert fisher.linear_loss("lin", dW[rows], acc.H, rows) == pytest.approx(want, rel=1e-4)


@needs_ggml
@pytest.mark.parametrize("target", ["1.5", "9.5"])
def test_unreachable_target_is_one_line_error_before_measuring(capsys, tiny_llama, tmp_path, target):
    from test_convert import _cli

    rc, err = _cli(capsys, "convert", tiny_llama, "--bits", "2", "--target-bpw", target, "-o", tmp_path / "o.gguf",
                   "--nsamples", "2", "--seqlen", "32")
    assert rc == 2 and len(err) == 1 and f"--target-bpw {target} is outside what this model can be made at" in err[0]
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "o.gguf.ckpt").exists()


@needs_ggml
def test_plan_file_reuses_the_types(tiny_llama, tmp_path, capsys, monkeypatch):
    """--plan: the per-tensor types of an earlier run (kept checkpoints), here with other SliM settings;
    --save-plan then --plan FILE --target-bpw Y: the measured losses allocated again at Y (no second measuring
    pass); at the plan's own target the same types come back."""
    import json
    import shutil

    import quant.plan
    from slim2gguf.bit_plan import Plan, retarget
    from slim2gguf.convert import convert
    from slim2gguf.file_report import analyze
    from test_convert import _cli, convert_args

    first, saved = tmp_path / "a.gguf", tmp_path / "saved.json"
    settings = convert_args(tiny_llama, first, 2, "--target-bpw", "2.9", "--fisher-samples", "2",
                            "--keep-checkpoints", "--save-plan", str(saved), keep_model=True)
    res = convert(settings)
    plan = tmp_path / "plan.json"
    shutil.copy(tmp_path / "a.gguf.ckpt" / "plan.json", plan)
    second = tmp_path / "b.gguf"
    convert(convert_args(tiny_llama, second, 2, "--plan", str(plan), "--no-sba"))
    types = [{e["name"]: e["type"] for e in analyze(p)["tensors"]} for p in (first, second)]
    assert types[0] == types[1]

    kept = Plan.from_state(json.loads(saved.read_text()))
    assert kept.alternatives and all(len(v) > 1 for v in kept.alternatives.values())
    assert retarget(kept, res.model, 2.9, settings.quant.group_size, settings.stock.fallback).types == kept.types

    def no_measuring(*a, **k):
        raise AssertionError("measured again")
    monkeypatch.setattr(quant.plan, "measure_candidates", no_measuring)
    third = tmp_path / "c.gguf"
    convert(convert_args(tiny_llama, third, 2, "--plan", str(saved), "--target-bpw", "2.6"))
    bpw = [analyze(p)["totals"]["bpw_tensors"] for p in (first, third)]
    assert bpw[1] <= 2.6 + 1e-9 < bpw[0]

    rc, err = _cli(capsys, "convert", tiny_llama, "--bits", "2", "--plan", tmp_path / "none.json", "-o",
                   tmp_path / "c.gguf")
    assert rc == 2 and err == [f"slim2gguf: error: --plan: file not found: {tmp_path / 'none.json'}"]


def test_bits_or_target_is_required(capsys, tiny_llama, tmp_path):
    from test_convert import _cli

    rc, err = _cli(capsys, "convert", tiny_llama, "-o", tmp_path / "o.gguf")
    assert rc == 2 and err == ["slim2gguf: error: give --bits 2|3, or --target-bpw X to let the tool choose each "
                               "tensor's type"]


@needs_ggml
@pytest.mark.parametrize("tied", [True, False])
def test_reachable_range_of_a_meta_model_is_that_of_the_loaded_model(tied):
    """A streamed conversion checks --target-bpw before any layer loads, on a model whose parameters are on the
    meta device (every data_ptr 0): the range must be the loaded model's (it once came out as 13.5 to 39.9 bpw
    for SmolLM2, and an untied head counted as tied)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from conftest import build_tiny_llama
    from quant.plan import tied_output
    from slim2gguf.bit_plan import reachable_range

    model = build_tiny_llama(256, tie_word_embeddings=tied)
    with init_empty_weights(include_buffers=False):
        meta = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    assert all(p.is_meta for p in meta.parameters())
    assert tied_output(model) == tied_output(meta) == tied
    lo, hi = reachable_range(model, 128, "q8_0")
    assert 2 < lo < 4 < 8 < hi <= 32
    assert reachable_range(meta, 128, "q8_0") == pytest.approx((lo, hi), rel=1e-12)


@needs_ggml
def test_unequal_q_k_v_types_stay_separate_tensors(tiny_llama, tmp_path):
    """--joint-qkv under a plan that gives layer 0's q, k, v different types (SLIM2, SLIM3, Q8_0): that layer is
    quantized with per-tensor SBA and written as three tensors, layer 1 (all SLIM2) with one map as one attn_qkv;
    the plan in the metadata keeps the q/k/v names; the file decodes to the quantized model's weights and
    llama.cpp runs it."""
    from slim2gguf.bit_plan import Plan, save_plan_file
    from slim2gguf.convert import convert
    from slim2gguf.file_report import analyze
    from slim2gguf.format import Keys
    from slim2gguf.gguf_in import metadata, open_gguf
    from slim2gguf.gguf_torch import load_gguf_weights
    from slim2gguf.model_io import load_model
    from test_convert import convert_args

    name = "model.layers.{}.self_attn.{}_proj.weight".format
    types = {name(0, "q"): "slim2", name(0, "k"): "slim3", name(0, "v"): "q8_0",
             **{name(1, n): "slim2" for n in "qkv"}}
    plan_file = tmp_path / "plan.json"
    save_plan_file(Plan(2.5, types, {n: 0.0 for n in types}, {n: None for n in types}, {n: 0 for n in types}, 0, 1),
                   plan_file)
    out = tmp_path / "mixed.gguf"
    res = convert(convert_args(tiny_llama, out, 2, "--plan", str(plan_file), "--no-sqc", "--joint-qkv",
                               keep_model=True))
    got = {e["name"]: e["type"] for e in analyze(out)["tensors"]}
    assert (got["blk.0.attn_q.weight"], got["blk.0.attn_k.weight"], got["blk.0.attn_v.weight"]) == \
        ("SLIM2_G128", "SLIM3_G128", "Q8_0")
    assert "blk.0.attn_qkv.weight" not in got and "blk.1.attn_q.weight" not in got
    assert got["blk.1.attn_qkv.weight"] == "SLIM2_G128"
    planned = metadata(open_gguf(out))[Keys.Plan.TENSORS]
    assert {f"blk.{i}.attn_{n}.weight" for i in range(2) for n in "qkv"} <= set(planned)
    model, _, _ = load_model(str(tiny_llama))
    load_gguf_weights(model, out)
    want = dict(res.model.named_parameters())
    for n, p in model.named_parameters():
        if "_proj.weight" in n:
            assert torch.equal(p, want[n]), n
    import llama_env
    llama_env.require_llama_cpp_python()
    from llama_cpp import Llama
    llm = Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False, seed=0, n_threads=2)
    llm.eval([1, 200, 300, 400, 500])
    assert np.isfinite(np.array(llm.scores[:5])).all()
