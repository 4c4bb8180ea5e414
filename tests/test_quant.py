"""Unit tests of the quantization pieces on tiny tensors with known answers."""
from __future__ import annotations

import pytest
import torch


from one_thread import one_torch_thread  # noqa: F401  (autouse)

from quant.config import QuantConfig
from quant.gptq import gptq_quantize, minmax_params
from quant.hessian import HessianAccumulator, inverse_hessian_cholesky
from quant.layer import quantize_linear
from quant.quantizer import (affine_params, fake_quant, minmax_range, pick_group_size, round_scale_fp16,
                             scale_tag_bits)
from quant.rtn import quantize_groups
from quant.salience import element_salience, group_salience
from quant.sba import OutputKLScore, allocate_group_bits, candidate_bits, output_kl
from quant.sqc import salient_mask, sqc_range


def correlated_inputs(n=2048, cols=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(cols, cols, generator=g) / cols ** 0.5
    scale = torch.rand(cols, generator=g) * 3 + 0.1
    return (torch.randn(n, cols, generator=g) @ A + 0.3 * torch.randn(n, cols, generator=g)) * scale


# ---------------------------------------------------------------- storage grid
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_round_scale_fp16_sets_tag_and_is_nearest_on_grid(bits):
    d = torch.cat([torch.rand(4000) * 0.2, torch.tensor([0.0, 1e-9, 0.01, 50000.0])])
    r = round_scale_fp16(d, bits)
    assert r.dtype == torch.float16
    assert (scale_tag_bits(r) == ((bits - 1) & 1)).all()
    assert (r.float() >= 0).all() and torch.isfinite(r.float()).all()
    # nearest among the grid values: the two grid neighbours are 2 fp16 ulps apart
    h = r.view(torch.int16).int()
    for nb in (h - 2, h + 2):
        ok = (nb >= 0) & (nb <= 0x7BFF)
        nbv = nb.clamp(0, 0x7BFF).short().view(torch.float16).float()
        assert ((d - r.float()).abs() <= (d - nbv).abs() + 1e-12)[ok].all()


def test_round_scale_fp16_worked_example_from_format_doc():
    # docs/format.md: d0 = 0.01 -> fp16 0x211F -> bit 0 forced to 0 (3 bits) -> 0x211E
    r = round_scale_fp16(torch.tensor([0.01]), 3)
    assert int(r.view(torch.int16)[0]) == 0x211E


def test_affine_params_rounds_d_and_m_to_fp16_before_use():
    w = torch.tensor([[0.1234567, -0.3333333, 0.7777777, 0.05]])
    lo, hi = minmax_range(w)
    d, m = affine_params(lo, hi, 2)
    assert d.dtype == torch.float16 and m.dtype == torch.float16
    assert float(m) == float(torch.tensor(-0.3333333).half())
    assert float(d) == float(round_scale_fp16((hi - lo) / 3, 2))
    # fake weights live exactly on d*q + m with the fp16 values, q in 0..3
    wq = fake_quant(w, d.unsqueeze(-1), m.unsqueeze(-1), 2)
    q = (wq - m.float()) / d.float()
    assert torch.allclose(q, q.round()) and q.min() >= 0 and q.max() <= 3


def test_one_bit_group_is_binary():
    w = torch.randn(3, 64)
    ql = quantize_groups(w, torch.tensor([1], dtype=torch.int8), 64)
    wq = ql.dequantize()
    for r in range(3):
        assert len(torch.unique(wq[r])) <= 2
        assert set(ql.q[r].tolist()) <= {0, 1}


def test_quantized_linear_dequantize_is_d_q_plus_m_in_fp32():
    w = torch.randn(8, 128)
    ql = quantize_groups(w, torch.tensor([1, 3], dtype=torch.int8), 64)
    ref = torch.empty(8, 128)
    for g in range(2):
        ref[:, g * 64:(g + 1) * 64] = ql.d[:, g:g + 1].float() * ql.q[:, g * 64:(g + 1) * 64].float() \
            + ql.m[:, g:g + 1].float()
    assert torch.equal(ql.dequantize(), ref)
    assert ql.q[:, :64].max() <= 1 and ql.q[:, 64:].max() <= 7


def test_group_size_rule():
    assert pick_group_size(576) == 64 and pick_group_size(1536) == 128 and pick_group_size(256) == 128
    assert pick_group_size(96) is None  # no SLIM type for g32: such a weight stays unquantized


# ---------------------------------------------------------------- Hessian, salience
def test_hessian_running_mean_equals_batch_formula():
    x = torch.randn(300, 16)
    acc = HessianAccumulator(16)
    for chunk in x.split(70):
        acc.add_batch(chunk)
    assert torch.allclose(acc.H, 2 / 300 * x.t() @ x, atol=1e-5)


def test_inverse_hessian_cholesky_handles_dead_and_singular_columns():
    x = torch.randn(10, 32)          # rank 10 < 32: needs damping
    x[:, 5] = 0                      # a dead column
    acc = HessianAccumulator(32)
    acc.add_batch(x)
    U, dead = inverse_hessian_cholesky(acc.H)
    assert dead[5] and dead.sum() == 1
    assert torch.isfinite(U).all() and torch.allclose(U, torch.triu(U))


def test_salience_known_answer():
    W = torch.tensor([[1.0, 2.0, 0.0, 3.0]])
    U = torch.diag(torch.tensor([1.0, 2.0, 1.0, 0.5]))
    s = element_salience(W, U)
    assert torch.allclose(s, torch.tensor([[1.0, 1.0, 0.0, 36.0]]))
    assert torch.allclose(group_salience(s, 2), torch.tensor([2.0, 36.0]))


# ---------------------------------------------------------------- SBA
def test_sba_candidates_keep_average_exact():
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    for b in (2, 3):
        for k in range(4):
            bits = candidate_bits(order, k, b)
            assert bits.sum() == 6 * b
            assert (bits[order[:k]] == b + 1).all() and (bits[order[6 - k:]] == b - 1).all()


def test_sba_picks_best_candidate_and_keeps_average():
    sal = torch.tensor([5.0, 1.0, 9.0, 0.5, 3.0, 2.0, 7.0, 0.1])
    # a score that prefers k = 2 exactly
    chosen, info = allocate_group_bits(sal, 2, lambda bits: abs(int((bits == 3).sum()) - 2))
    assert info["k"] == 2 and info["scores"] == [2, 1, 0, 1, 2]
    assert chosen.sum() == 16
    assert chosen.tolist() == [2, 2, 3, 1, 2, 2, 3, 1]   # 9 and 7 get 3 bits; 0.1 and 0.5 get 1 bit


def test_sba_uniform_salience_is_noop():
    calls = []
    chosen, info = allocate_group_bits(torch.full((6,), 2.5), 3, lambda b: calls.append(b) or 0.0)
    assert chosen.tolist() == [3] * 6 and not calls


def test_output_kl_zero_for_same_weight_and_positive_otherwise():
    X, W = torch.randn(64, 32), torch.randn(16, 32)
    assert output_kl(X, W, W) == pytest.approx(0.0, abs=1e-6)
    assert output_kl(X, W, W + 0.1 * torch.randn_like(W)) > 0



def test_incremental_kl_score_equals_the_direct_score_along_and_off_the_walk():
    """OutputKLScore updates the logits by the groups that changed; every score must match output_kl of the
    assembled W_hat, on SBA's walk (two groups per step) and on an arbitrary jump back."""
    torch.manual_seed(0)
    g, G, b = 16, 10, 2
    X, W = torch.randn(96, g * G), torch.randn(24, g * G)
    fake = {w: W + (0.3 / w) * torch.randn_like(W) for w in (b - 1, b, b + 1)}
    score = OutputKLScore(X, W, fake, g, torch.full((G,), b, dtype=torch.int8))
    order = torch.randperm(G)
    walk = [candidate_bits(order, k, b) for k in range(G // 2 + 1)] + [candidate_bits(order, 1, b)]
    for bits in walk:
        W_hat = torch.cat([fake[int(w)][:, j * g:(j + 1) * g] for j, w in enumerate(bits.tolist())], dim=1)
        assert score(bits) == pytest.approx(output_kl(X, W, W_hat), rel=1e-4, abs=1e-7)


# ---------------------------------------------------------------- SQC
def test_sqc_empty_mask_equals_minmax():
    wg = torch.randn(5, 3, 64)
    lo, hi = sqc_range(wg, torch.zeros(5, 3, 64, dtype=torch.bool), torch.tensor([1, 2, 3]))
    lo0, hi0 = minmax_range(wg)
    assert torch.equal(lo, lo0) and torch.equal(hi, hi0)


def test_salient_mask_finds_outliers():
    s = torch.ones(2, 64)
    s[0, 7] = 100.0
    m = salient_mask(s, 2.0)
    assert m[0].nonzero().flatten().tolist() == [7] and not m[1].any()


def test_sqc_lowers_salience_weighted_error():
    torch.manual_seed(0)
    wg = torch.randn(200, 1, 64)
    wg[:, 0, 0] = 6.0                               # an outlier that is not salient
    s = wg ** 2
    s[:, 0, 0] = 0.0
    s[:, 0, 1] = 50.0                               # a salient weight
    mask = salient_mask(s)
    assert mask.any(dim=-1).all()
    for bits in (1, 2, 3):
        lo, hi = sqc_range(wg, mask, bits)
        lo0, hi0 = minmax_range(wg)
        def err(lo, hi):
            d, m = affine_params(lo, hi, bits)
            e = (fake_quant(wg, d.unsqueeze(-1), m.unsqueeze(-1), bits) - wg) ** 2
            return float(((1 + mask.float()) * e).sum())
        assert err(lo, hi) < err(lo0, hi0)


# ---------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("bits", [2, 3])
def test_gptq_error_below_rtn_on_random_layer(bits):
    X = correlated_inputs()
    W = torch.randn(64, 128) * 0.05
    acc = HessianAccumulator(128)
    acc.add_batch(X)
    U, dead = inverse_hessian_cholesky(acc.H)
    uni = torch.full((2,), bits, dtype=torch.int8)
    g = gptq_quantize(W, U, uni, 64, minmax_params, dead).dequantize()
    r = quantize_groups(W, uni, 64).dequantize()
    out_err = lambda Wq: float(((X @ (Wq - W).t()) ** 2).mean())
    assert out_err(g) < 0.8 * out_err(r)


def test_gptq_codes_respect_per_group_bits_and_grid():
    X = correlated_inputs(cols=192)
    W = torch.randn(32, 192)
    acc = HessianAccumulator(192)
    acc.add_batch(X)
    U, dead = inverse_hessian_cholesky(acc.H)
    bits = torch.tensor([3, 1, 2], dtype=torch.int8)
    ql = gptq_quantize(W, U, bits, 64, minmax_params, dead)
    for gi, b in enumerate(bits.tolist()):
        assert int(ql.q[:, gi * 64:(gi + 1) * 64].max()) <= 2 ** b - 1
        assert (scale_tag_bits(ql.d[:, gi]) == ((b - 1) & 1)).all()
    assert ql.d.dtype == torch.float16 and ql.m.dtype == torch.float16


@pytest.mark.parametrize("bits", [2, 3])
def test_quantize_linear_methods(bits):
    X = correlated_inputs(cols=256)
    W = torch.randn(96, 256) * 0.05
    W[:, :64] *= 4                                  # a salient group
    acc = HessianAccumulator(256)
    acc.add_batch(X)
    errs = {}
    for name, method, sba, sqc, fit in [("rtn", "rtn", 1, 1, "weighted"), ("gptq", "gptq", 1, 1, "weighted"),
                                        ("slim", "slim", 1, 1, "weighted"), ("slim-none", "slim", 0, 0, "minmax"),
                                        ("fit-only", "slim", 0, 0, "weighted")]:
        ql, _ = quantize_linear(W, acc.H, X[:256], QuantConfig(method=method, bits=bits, sba=bool(sba),
                                                               sqc=bool(sqc), fit=fit), group_size=64)
        assert ql.bits.float().mean() == bits and ql.bits.min() >= bits - 1 and ql.bits.max() <= bits + 1
        errs[name] = float(((X @ (ql.dequantize() - W).t()) ** 2).mean())
    assert errs["slim-none"] == errs["gptq"]       # every SliM part off (SBA, SQC, the weighted fit) is GPTQ
    assert errs["fit-only"] < errs["gptq"]         # the importance-weighted group fit alone helps GPTQ
    if bits == 3:   # min/max GPTQ at 2 bits can lose to RTN on a layer this small (error feedback widens ranges)
        assert errs["gptq"] < errs["rtn"]
    assert errs["slim"] < errs["gptq"] and errs["slim"] < errs["rtn"]


# ---------------------------------------------------------------- q/k/v: one SBA map (fused attn_qkv)
def test_joint_sba_map_serves_every_matrix_and_quantize_linear_takes_it():
    """joint_sba_bits is SBA over the stacked [Wq; Wk; Wv] (one map, exact average); quantize_linear with that map
    runs GPTQ only (no SBA, no info), and with the map SBA gives one matrix alone it is exactly quantize_linear's
    own result: the shared-map path changes the map, nothing else."""
    from quant.layer import joint_sba_bits, sba_group_bits

    X = correlated_inputs(cols=256)
    acc = HessianAccumulator(256)
    acc.add_batch(X)
    H, X_kl = acc.H, X[:256]
    g = torch.Generator().manual_seed(3)
    Ws = [torch.randn(rows, 256, generator=g) * 0.05 for rows in (96, 32, 32)]
    for W, hot in zip(Ws, (0, 2, 3)):        # each matrix its own salient group
        W[:, hot * 64:(hot + 1) * 64] *= 6
    config = QuantConfig(method="slim", bits=2)
    U, dead = inverse_hessian_cholesky(H, config.percdamp)
    hdiag = torch.diag(H).float()
    own = [sba_group_bits(W, U, hdiag, X_kl, config, 64)[0] for W in Ws]
    bits, info = joint_sba_bits(Ws, U, hdiag, X_kl, config, 64)
    # group 1 is salient in none of the three: fewest bits; group 0 in the largest (q, 96 rows): most
    assert bits[1] == bits.min() < 2 < bits.max() == bits[0]
    assert bits.float().mean() == 2 and info["k"] > 0 and len({tuple(b.tolist()) for b in own}) > 1
    for W, b in zip(Ws, own):
        ql, qinfo = quantize_linear(W, H, None, config, 64, factor=(U, dead), group_bits=bits)
        assert torch.equal(ql.bits, bits) and qinfo == {}
        assert (ql.q[:, (bits.repeat_interleave(64) == 1)] <= 1).all()
        ref, _ = quantize_linear(W, H, X_kl, config, 64)
        same, _ = quantize_linear(W, H, None, config, 64, group_bits=b)
        assert torch.equal(ref.bits, b)
        for f in ("q", "d", "m"):
            assert torch.equal(getattr(ref, f), getattr(same, f)), f
    # rtn takes a given map too
    ql, _ = quantize_linear(Ws[0], None, None, QuantConfig(method="rtn", bits=2), 64, group_bits=bits)
    assert torch.equal(ql.bits, bits)


@pytest.mark.parametrize("method", ["slim", "slim+"])
def test_quantize_model_gives_q_k_v_their_own_maps_unless_joint_qkv(tiny_llama_dir, tiny_text_file, method):
    """By default SBA maps q, k and v on their own (their maps differ here: each has its own salient column group);
    joint_qkv gives the three one map (the one joint_sba_bits gives), recorded in .info."""
    from quant.calibration import windows_from_ids
    from quant.pipeline import quantize_model
    from slim2gguf.model_io import load_model, tokenize_file

    maps, ks = {}, {}
    for joint in (False, True):
        model, tok, _ = load_model(str(tiny_llama_dir))
        with torch.no_grad():   # q, k, v each with its own salient column group (hidden 192: 3 groups of 64)
            for layer in model.model.layers:
                for n, hot in zip("qkv", (0, 2, 1)):
                    layer.self_attn.get_submodule(f"{n}_proj").weight[:, hot * 64:(hot + 1) * 64] *= 8
        calib = windows_from_ids(tokenize_file(tok, str(tiny_text_file)), 2, 64, seed=1)
        config = QuantConfig(method=method, bits=2, joint_qkv=joint, epochs=1, train_init="fit")
        assert config.fuse_qkv
        res = quantize_model(model, calib, config, progress=False)
        maps[joint] = {(i, n): res[f"model.layers.{i}.self_attn.{n}_proj.weight"].bits for i in range(2) for n in "qkv"}
        ks[joint] = res.info["sba_k"]
        assert res.info["joint_qkv"] is joint and set(ks[joint]) == set(res)   # SBA's k for every linear
    for i in range(2):
        qkv = [f"model.layers.{i}.self_attn.{n}_proj.weight" for n in "qkv"]
        assert len({ks[True][n] for n in qkv}) == 1      # one joint choice, recorded for each of the three
        for n in "kv":
            assert torch.equal(maps[True][i, n], maps[True][i, "q"])
    assert any(not torch.equal(maps[False][i, n], maps[False][i, "q"]) for i in range(2) for n in "kv")


def test_joint_qkv_is_opt_in_needs_fusing_and_is_off_without_sba():
    assert QuantConfig().joint_qkv is False and QuantConfig().fuse_qkv is True
    with pytest.raises(ValueError, match="--joint-qkv .* --no-fuse-qkv"):
        QuantConfig(joint_qkv=True, fuse_qkv=False)
    # no SBA (or a method without it): every map is uniform, there is nothing to share
    for kw in ({"sba": False}, {"method": "gptq"}, {"method": "rtn"}):
        assert QuantConfig(joint_qkv=True, **kw).joint_qkv is False
    assert QuantConfig(joint_qkv=True).key()["joint_qkv"] is True
    assert QuantConfig(joint_qkv=True).key() != QuantConfig().key()   # a checkpoint's settings tell them apart
