"""The real demo model (SmolLM2-135M, Q4_1 GGUF): loading and the first layers of the SliM pipeline."""
from __future__ import annotations

import pytest
import torch

from quant.calibration import windows_from_ids
from quant.config import QuantConfig
from quant.pipeline import quantize_model
from slim2gguf.model_io import load_model, tokenize_file

pytestmark = pytest.mark.slow
CALIB = "/work/shared/data/brown.txt"


from one_thread import one_torch_thread  # noqa: F401  (autouse)


def _first_layers(model, n):
    model.model.layers = model.model.layers[:n]
    model.config.num_hidden_layers = n
    return model


def test_demo_two_layers_slim_beats_gptq(demo_model_path, tmp_path):
    from pathlib import Path
    calib_path = Path(CALIB)
    if not calib_path.is_file():
        pytest.skip("shared calibration text not present")
    model, tok, desc = load_model("demo")
    assert desc["arch"] == "llama" and model.config.tie_word_embeddings
    text = tmp_path / "calib.txt"
    text.write_text(calib_path.read_text()[:200_000])
    calib = windows_from_ids(tokenize_file(tok, str(text)), 8, 256, seed=0)
    x = calib.input_ids[:2]
    _first_layers(model, 2)
    with torch.no_grad():
        ref = model.model(input_ids=x).last_hidden_state
    state = {k: v.clone() for k, v in model.state_dict().items()}
    errs = {}
    for method in ("gptq", "slim"):
        model.load_state_dict(state)
        res = quantize_model(model, calib, QuantConfig(method=method, bits=2), progress=False)
        for name, ql in res.items():
            assert ql.group_size == (64 if ql.shape[1] == 576 else 128)
            assert int(ql.bits.sum()) == 2 * ql.bits.numel()
        with torch.no_grad():
            out = model.model(input_ids=x).last_hidden_state
        errs[method] = float(((out - ref) ** 2).mean())
    assert errs["slim"] < errs["gptq"]
