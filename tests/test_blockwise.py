"""SliM+'s block-wise training (quant/blockwise.py) on one block of a tiny random llama: the loss it trains
goes down against the untrained quantizers, every mode ends in legal storage-grid (d, m, q), and the block's
weights are exactly the QuantizedLinears' d*q + m."""
from __future__ import annotations

import copy

import pytest
import torch

from one_thread import one_torch_thread  # noqa: F401  (autouse)

from conftest import build_tiny_llama
from quant.blockwise import TRAIN_MODES, GroupQuantizer, layer_forward, output_error, train_block
from quant.config import QuantConfig
from quant.group_fit import fit_group_params
from quant.pipeline import LINEAR_NAMES, capture_layer0_inputs
from quant.quantizer import group_view, scale_tag_bits
from quant.sba import candidate_bits


@pytest.fixture(scope="module")
def block_and_data():
    """Layer 0 of a tiny llama (hidden 192 -> g64, FFN 512 -> g128), its inputs and full-precision outputs."""
    model = build_tiny_llama(vocab_size=300, seed=3)
    ids = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    batches = capture_layer0_inputs(model, ids, 2, "cpu")
    layer = model.model.layers[0]
    with torch.no_grad():
        targets = [layer_forward(layer, hs, kw) for hs, kw in batches]
    return layer, batches, targets


def start_params(layer, mixed: bool):
    """{name: (bits, g, d0, m0)}: a mixed 1/2/3-bit SBA-shaped map (or uniform 2) and the weighted fit at it."""
    out = {}
    for n in LINEAR_NAMES:
        W = layer.get_submodule(n).weight.data.float()
        g = 64 if W.shape[1] % 128 else 128
        G = W.shape[1] // g
        bits = candidate_bits(torch.arange(G), 1, 2) if mixed else torch.full((G,), 2, dtype=torch.int8)
        wg = group_view(W, g)
        d, m = fit_group_params(wg, torch.ones_like(wg), bits.unsqueeze(0).expand(wg.shape[:2]))
        out[n] = (bits, g, d, m)
    return out


def trained(block_and_data, mode, epochs, mixed=True, lr=None, loss="mse"):
    layer, batches, targets = block_and_data
    layer = copy.deepcopy(layer)
    lr = lr if lr is not None else QuantConfig(method="slim+", train=mode).lr
    qls, info = train_block(layer, start_params(layer, mixed), batches, [targets], mode, epochs, lr, seed=0,
                            loss=loss)
    return layer, qls, info


def test_token_rms_loss_weighs_every_token_alike():
    """A token hundreds of times larger than the rest (an attention sink) dominates the plain MSE of a block
    output; relative to each token's RMS it counts like any other token."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 6, 32, generator=g)
    out = target + 0.1 * torch.randn(2, 6, 32, generator=g)
    sink_target, sink_out = target.clone(), out.clone()
    sink_target[:, 0] *= 300
    sink_out[:, 0] *= 300
    assert output_error(sink_out, sink_target) > 1000 * output_error(out, target)
    assert torch.allclose(output_error(sink_out, sink_target, "token_rms"), output_error(out, target, "token_rms"),
                          rtol=1e-4)


def test_training_lowers_the_token_rms_loss(block_and_data):
    _, _, untrained = trained(block_and_data, "weights", epochs=0, loss="token_rms")
    _, _, info = trained(block_and_data, "weights", epochs=6, loss="token_rms")
    assert info["loss"] == "token_rms"
    assert info["loss_after"] < 0.95 * untrained["loss_after"], (info, untrained)


@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_training_lowers_block_output_mse(block_and_data, mode):
    _, _, untrained = trained(block_and_data, mode, epochs=0)
    _, _, info = trained(block_and_data, mode, epochs=6)
    assert info["steps"] == 6 * len(block_and_data[1])
    assert info["loss_after"] < 0.95 * untrained["loss_after"], (info, untrained)


@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_trained_block_holds_storage_grid_weights(block_and_data, mode):
    before = {n: p.requires_grad for n, p in block_and_data[0].named_parameters()}
    layer, qls, _ = trained(block_and_data, mode, epochs=2)
    assert set(qls) == set(LINEAR_NAMES)
    for n, ql in qls.items():
        mod = layer.get_submodule(n)
        assert not hasattr(mod, "parametrizations")                    # the parametrization is gone
        assert torch.equal(mod.weight.data, ql.dequantize())             # the block computes with the file's weights
        assert ql.d.dtype == torch.float16 and ql.m.dtype == torch.float16 and ql.q.dtype == torch.uint8
        bits_rows = ql.bits.long().unsqueeze(0).expand_as(ql.d)
        assert (scale_tag_bits(ql.d) == ((bits_rows - 1) & 1)).all()    # the width tag in every scale
        cols_bits = ql.bits.long().repeat_interleave(ql.group_size)
        assert (ql.q.long() < (1 << cols_bits)).all()
        assert sorted(set(ql.bits.tolist())) == [1, 2, 3]               # SBA's mixed map is kept
    assert {n: p.requires_grad for n, p in layer.named_parameters()} == before   # left as it was


def test_lwc_starts_at_the_fit():
    """The clipping logits are initialised so that the untrained (d, m) is the weighted fit where a clip in (0, 1]
    of the group's min/max can express it."""
    torch.manual_seed(0)
    W = torch.randn(16, 256)
    bits = torch.tensor([2, 1, 3, 2], dtype=torch.int8)
    wg = group_view(W, 64)
    d0, m0 = fit_group_params(wg, torch.ones_like(wg), bits.unsqueeze(0).expand(16, 4))
    qz = GroupQuantizer(W, bits, 64, "lwc", d0, m0)
    d, m = qz.scale_offset()
    hi0 = m0.float() + d0.float() * (2.0 ** bits.float() - 1)
    inside = (m0.float() < 0) & (m0.float() >= wg.amin(-1)) & (hi0 > 0) & (hi0 <= wg.amax(-1))
    assert inside.float().mean() > 0.9
    assert torch.allclose(d[inside], d0.float()[inside], rtol=1e-2, atol=1e-4)
    assert torch.allclose(m[inside], m0.float()[inside], rtol=1e-2, atol=1e-4)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="train"):
        QuantConfig(method="slim+", train="magic")


def test_gptq_init_without_training_is_slim():
    """--train-init gptq starts every block at SliM's own result: with no epochs the codes, scales and offsets are
    exactly those of `--method slim` (same calibration batches)."""
    from quant.pipeline import quantize_model
    ids = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(1))
    out = {}
    for name, cfg in (("slim", QuantConfig(method="slim", batch_size=4)),
                      ("plus", QuantConfig(method="slim+", train="weights", train_init="gptq", epochs=0,
                                           train_batch=4))):
        out[name] = quantize_model(build_tiny_llama(vocab_size=300, seed=5), ids, cfg, device="cpu",
                                   progress=False)
    assert set(out["slim"]) == set(out["plus"]) and len(out["slim"]) == 14
    for k, a in out["slim"].items():
        b = out["plus"][k]
        assert torch.equal(a.bits, b.bits) and torch.equal(a.q, b.q), k
        assert torch.equal(a.d, b.d) and torch.equal(a.m, b.m), k
