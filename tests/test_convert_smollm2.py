"""`slim2gguf convert demo` (SmolLM2-135M) at 2 and 3 bits: bit-exact SLIM tensors (g64 for the 576-wide
projections, g128 for the 1536-wide down_proj) and llama.cpp's metadata. Slow: one conversion per bit-width
with small calibration, shared by the tests of this module. The file layout does not depend on how (d, m) were
chosen, so these conversions use the min/max fit (a fifth of the weighted fit's time on the 2-core box); the
weighted fit's files are decoded and run by test_llama_smollm2.py."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from slim2gguf import cli, cmd_convert
from slim2gguf.convert import convert
from slim2gguf.file_report import analyze
from slim2gguf.gguf_in import metadata, open_gguf
from slim2gguf.gguf_out import write_stock
from slim2gguf.hf_export import export_hf_folder
from slim2gguf.model_io import demo_model_path

from slim_synth import assert_decode_equals_reference, fused_blocks, qkv_maps_coincide

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CALIB = REPO.parent / "shared" / "data" / "brown.txt"


@pytest.fixture(scope="module", params=[2, 3])
def converted(request, tmp_path_factory):
    """(bits, SLIM file, F32 and F16 files written by llama.cpp's converter from the fake-quant model)."""
    bits = request.param
    tmp = tmp_path_factory.mktemp(f"smol{bits}")
    ap = cli.argparse.ArgumentParser()
    cmd_convert.configure(ap)
    calib = ["--calib", str(CALIB)] if CALIB.exists() else []
    out = tmp / f"smollm2-slim{bits}.gguf"
    # SBA on (mixed tags, the part the writer and decoder care about); SQC off: it is most of SliM's CPU time
    # and changes only the values of d and m, not how they are stored
    s = cmd_convert.settings(ap.parse_args(["demo", "--bits", str(bits), "-o", str(out), "--nsamples", "8",
                                            "--seqlen", "128", "--no-sqc", "--fit", "minmax",
                                            *calib]))
    res = convert(dataclasses.replace(s, keep_model=True))
    fq = export_hf_folder(res.model, res.tokenizer, tmp / "fq")
    override = tmp / "general.json"
    override.write_text(json.dumps(res.general or {}))
    names = {"model_name": res.model_name, "metadata_override": override}
    f32 = write_stock(fq, tmp / "fq-f32.gguf", "f32", **names)
    # the layers convert fused (their q/k/v bit maps coincide) are compared with the converter's fused tensors
    f32_fused = write_stock(fq, tmp / "fq-f32-fused.gguf", "f32", fuse_qkv=True, **names)
    f16 = write_stock(fq, tmp / "fq-f16.gguf", "f16", **names)
    return bits, out, (f32, f32_fused), f16, res


def test_smollm2_decodes_to_fake_quant_weights(converted):
    """Per-tensor SBA maps (the default): q/k/v are one attn_qkv tensor in exactly the layers where their maps
    coincide, three tensors in the others; this model has both kinds."""
    bits, out, (f32, f32_fused), _, res = converted
    fused = fused_blocks(out)
    assert fused == qkv_maps_coincide(res.results, 30) and 0 < len(fused) < 30
    n = assert_decode_equals_reference(out, f32, f32_fused)
    assert n == 30 * 7 - 2 * len(fused)
    types = {e["name"]: e["type"] for e in analyze(out)["tensors"]}
    for i in (min(fused), min(set(range(30)) - fused)):
        qkv = [f"blk.{i}.attn_qkv.weight"] if i in fused else [f"blk.{i}.attn_{n}.weight" for n in "qkv"]
        assert all(types[n] == f"SLIM{bits}_G64" for n in qkv)     # 576 = 4.5 * 128
    assert types["blk.0.ffn_down.weight"] == f"SLIM{bits}_G128"     # 1536 = 12 * 128
    assert types["token_embd.weight"] == "Q8_0" and "output.weight" not in types   # tied
    s = res.summary
    assert s["not_slim"] == [] and s["slim_tensors"] == n and s["qkv_fused_layers"] == len(fused)
    # 6 of 7 projections at g64 (2.5 / 3.5 bpw), down at g128
    assert bits + 0.25 < s["bpw_slim"] < bits + 0.5
    print(res.text)


def test_smollm2_metadata_matches_llama_cpp_f16(converted):
    bits, out, _, f16, _ = converted
    ours, ref = metadata(open_gguf(out)), metadata(open_gguf(f16))
    assert not sorted(set(ref) - set(ours))
    differ = sorted(k for k in ref if k != "general.file_type" and ours[k] != ref[k])
    assert not differ, differ
    assert ours["general.file_type"] == 98 + bits
    assert ours["tokenizer.ggml.pre"] == "smollm" and "tokenizer.chat_template" in ours
    # the vocabulary the file runs with is the source GGUF's, entry for entry (it travels through transformers'
    # GGUF tokenizer and llama.cpp's converter, whose output can change with their versions)
    src = metadata(open_gguf(demo_model_path()))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert ours[key] == src[key], key
    assert ours["slim.bits"] == bits and ours["slim.method"] == "slim" and ours["slim.sba"] is True
    assert ours["slim.sqc"] is False
    assert ours["slim.group_sizes"] == [64, 128]
    assert ours["slim.calibration.nsamples"] == 8 and ours["slim.calibration.seqlen"] == 128
