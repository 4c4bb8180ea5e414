"""scripts/report.py end to end on a tiny random llama: every kind of row is made, measured and plotted."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from llama_env import tool
from slim_synth import demo_tokenizer_dir, make_tiny_llama

pytestmark = pytest.mark.llama
REPO = Path(__file__).resolve().parent.parent


def test_report_quick(tiny_text_file, tmp_path):
    for name in ("llama-perplexity", "llama-quantize", "llama-imatrix"):
        tool(name)
    # llama.cpp's converter must recognise the tokenizer: the demo model's, on a tiny random llama
    tiny_llama_dir = make_tiny_llama(tmp_path / "tiny-llama", demo_tokenizer_dir(), hidden=128,
                                     intermediate=192, layers=2)
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "report.py"), "--model", str(tiny_llama_dir), "--quick",
         "--tag", "tiny", "--out", str(out), "--workdir", str(tmp_path / "work"), "--calib", str(tiny_text_file),
         "--ctx", "128", "--chunks", "4", "--imatrix-chunks", "2", "--nsamples", "4", "--seqlen", "64",
         "--bits", "2"],
        capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "tiny.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    for label in ("F16", "Q8_0", "Q4_0", "Q4_0 +imatrix", "RTN 2-bit", "SliM 2-bit"):
        assert label in rows, sorted(rows)
        r = rows[label]
        assert r["ppl"] is not None and math.isfinite(r["ppl"]) and r["ppl"] > 1, r
        assert r["bpw"] > 0 and r["file_bytes"] > 0
    # KL divergence is measured against F16 for every other row, and F16 is the reference (no KLD)
    assert rows["F16"]["kld"] is None
    assert rows["Q8_0"]["kld"] is not None and rows["Q8_0"]["kld"] >= 0
    # the SLIM rows really hold SLIM tensors, and the type mix is read from the file
    assert any(t.startswith("SLIM2") for t in rows["SliM 2-bit"]["types"]), rows["SliM 2-bit"]["types"]
    assert rows["Q8_0"]["bpw"] > rows["Q4_0"]["bpw"] > rows["SliM 2-bit"]["blk_bpw"]
    assert data["settings"]["ctx"] == 128 and data["settings"]["chunks"] == 4
    md = (out / "tiny.md").read_text()
    assert "| SliM 2-bit" in md and "Pareto" in md
    png = out / "tiny.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
