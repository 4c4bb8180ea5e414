"""scripts/report.py end to end on a tiny random llama: every kind of row is made, measured (PPL, KLD and same
top-1 against the F16) and plotted; a second run reuses every cached measurement and adds a `--slim` file."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import os
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
    common = [sys.executable, str(REPO / "scripts" / "report.py"), "--model", str(tiny_llama_dir), "--tag", "tiny",
              "--out", str(out), "--workdir", str(tmp_path / "work"), "--calib", str(tiny_text_file),
              "--ctx", "128", "--chunks", "4", "--imatrix-chunks", "2", "--nsamples", "4", "--seqlen", "64",
              "--bits", "2", "--threads", str(min(4, os.cpu_count() or 1))]
    res = subprocess.run(common + ["--quick"], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "tiny.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    for label in ("F16", "Q8_0", "Q4_0", "Q4_0 +imatrix", "RTN 2-bit", "SliM 2-bit"):
        assert label in rows, sorted(rows)
        r = rows[label]
        assert r["ppl"] is not None and math.isfinite(r["ppl"]) and r["ppl"] > 1, r
        assert r["bpw"] > 0 and r["file_bytes"] > 0
    # KL divergence and same top-1 are measured against F16 for every other row; F16 is the reference
    assert rows["F16"]["kld"] is None and rows["F16"]["same_top"] is None
    for label in ("Q8_0", "Q4_0", "Q4_0 +imatrix", "RTN 2-bit", "SliM 2-bit"):
        r = rows[label]
        assert r["kld"] is not None and math.isfinite(r["kld"]) and r["kld"] >= 0, r
        assert r["same_top"] is not None and 0 <= r["same_top"] <= 100, r
    # Q8_0 is close to F16, RTN 2-bit on a random tiny model is not
    assert rows["Q8_0"]["kld"] < rows["RTN 2-bit"]["kld"]
    assert rows["Q8_0"]["same_top"] >= rows["RTN 2-bit"]["same_top"]
    # the SLIM rows really hold SLIM tensors, and the type mix is read from the file
    assert any(t.startswith("SLIM2") for t in rows["SliM 2-bit"]["types"]), rows["SliM 2-bit"]["types"]
    assert rows["Q8_0"]["bpw"] > rows["Q4_0"]["bpw"] > rows["SliM 2-bit"]["blk_bpw"]
    assert data["settings"]["ctx"] == 128 and data["settings"]["chunks"] == 4
    assert (tmp_path / "work" / "imatrix.gguf").is_file() and (tmp_path / "work" / "imatrix.key.json").is_file()
    md = (out / "tiny.md").read_text()
    assert "| SliM 2-bit" in md and "Pareto" in md
    q8 = next(ln for ln in md.splitlines() if ln.startswith("| Q8_0"))
    cells = [c.strip() for c in q8.strip("|").split("|")]
    assert float(cells[7]) == pytest.approx(rows["Q8_0"]["kld"], abs=1e-4), q8         # KLD column
    assert float(cells[8]) == pytest.approx(rows["Q8_0"]["same_top"], abs=0.01), q8    # same top-1 % column
    png = out / "tiny.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # second run: one stock type with its own token_embd/output type, no slim2gguf variants, one file made
    # elsewhere; F16 and the imatrix come from the cache
    slim_file = tmp_path / "work" / rows["SliM 2-bit"]["file"]
    cached = [tmp_path / "work" / "logs" / n for n in ("perplexity-f16.log", "imatrix.log")]
    mtimes = [f.stat().st_mtime_ns for f in cached]
    res = subprocess.run(common + ["--stock-types", "Q4_0:Q5_0", "--variants", "--slim", f"my SLIM file={slim_file}"],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [f.stat().st_mtime_ns for f in cached] == mtimes
    data2 = json.loads((out / "tiny.json").read_text())
    rows2 = {r["label"]: r for r in data2["rows"]}
    assert sorted(rows2) == ["F16", "Q4_0, embd/output Q5_0", "Q4_0, embd/output Q5_0 +imatrix", "my SLIM file"], \
        sorted(rows2)
    for label in ("Q4_0, embd/output Q5_0", "Q4_0, embd/output Q5_0 +imatrix"):
        assert "Q5_0" in rows2[label]["types"] and rows2[label]["kld"] is not None, rows2[label]
    assert rows2["F16"]["ppl"] == rows["F16"]["ppl"]
    # the same file under another name measures the same
    assert rows2["my SLIM file"]["ppl"] == pytest.approx(rows["SliM 2-bit"]["ppl"], rel=1e-6)
    assert rows2["my SLIM file"]["kld"] == pytest.approx(rows["SliM 2-bit"]["kld"], abs=1e-5)

    # third run, from the cache alone: cached rows come back, the rest are listed as not measured yet
    res = subprocess.run(common + ["--cached-only", "--stock-types", "Q4_0", "Q2_K:Q8_0", "--variants"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows3 = {r["label"]: r for r in json.loads((out / "tiny.json").read_text())["rows"]}
    assert rows3["Q4_0 +imatrix"]["kld"] == rows["Q4_0 +imatrix"]["kld"]
    assert rows3["Q2_K, embd/output Q8_0 +imatrix"]["ppl"] is None
    assert "not measured yet" in rows3["Q2_K, embd/output Q8_0"]["note"]
    assert not list((tmp_path / "work").glob("q2_k-embd*"))


def _row(label, ppl, family="slim"):
    return {"label": label, "family": family, "file": f"{label}.gguf", "file_bytes": 1000, "bpw": 3.9,
            "blk_bpw": 2.25, "types": {"SLIM2_G128": 10}, "ppl": ppl, "ppl_err": 0.5, "kld": 1.0, "same_top": 40.0,
            "note": ""}


def test_report_merge(tmp_path):
    """--merge adds another run's rows (same label: replaced), keeps the first run's settings and records the other."""
    out = tmp_path / "results"
    out.mkdir()
    settings = {"date": "d0", "ctx": 512, "chunks": 16, "slim2gguf_commit": "aaa"}
    (out / "m.json").write_text(json.dumps({"settings": settings, "rows": [
        _row("F16", 10.0, "f16") | {"kld": None, "same_top": None}, _row("SliM 2-bit", 40.0)]}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {"date": "d1", "slim2gguf_commit": "bbb", "machine": "gpu"},
                                 "rows": [_row("SliM 2-bit", 38.0), _row("SliM+ 2-bit", 35.0)]}))
    cmd = [sys.executable, str(REPO / "scripts" / "report.py"), "--model", "demo", "--tag", "m", "--out", str(out)]
    res = subprocess.run(cmd + ["--merge", str(other)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    data = json.loads((out / "m.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    assert sorted(rows) == ["F16", "SliM 2-bit", "SliM+ 2-bit"]
    assert rows["SliM 2-bit"]["ppl"] == 38.0 and rows["SliM+ 2-bit"]["ppl"] == 35.0
    assert data["settings"]["date"] == "d0" and "bbb" in data["settings"]["merged_from"][0]
    assert "| SliM+ 2-bit" in (out / "m.md").read_text() and (out / "m.png").stat().st_size > 0
    # rows measured with other settings are refused
    other.write_text(json.dumps({"settings": {"ctx": 256}, "rows": []}))
    res = subprocess.run(cmd + ["--merge", str(other)], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "ctx 256" in res.stderr and "Traceback" not in res.stderr
    # a missing file is a one-line error, no traceback
    res = subprocess.run(cmd + ["--merge", str(tmp_path / "none.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "not found" in res.stderr and "Traceback" not in res.stderr


def test_variant_rows_have_distinct_file_names():
    """The workdir names a row's files by slug(label), which drops punctuation ('SliM+' -> 'slim'): two variants
    on one name would overwrite each other's files when converted side by side (it happened on the GPU machine)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import report

    tags = [report.slug(label.format(b=b)) for label, _ in report.SLIM_VARIANTS.values() for b in (2, 3)]
    assert len(tags) == len(set(tags)), sorted(t for t in tags if tags.count(t) > 1)
    assert report.slug("SliM+ 2-bit") == report.slug("SliM 2-bit")   # why the labels must differ by more


def test_slim_file_cache_follows_its_settings(tmp_path, monkeypatch):
    """A row's SLIM file is reused only under the settings it was made with: a changed --nsamples converts again
    (it used to be keyed by the row's name alone and silently reused)."""
    import argparse

    sys.path.insert(0, str(REPO / "scripts"))
    import report

    calls = []

    def fake_run(cmd, log, env=None):
        calls.append([str(c) for c in cmd])
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"gguf")

    monkeypatch.setattr(report, "run", fake_run)
    calib = tmp_path / "calib.txt"
    calib.write_text("words " * 100)
    args = argparse.Namespace(workdir=str(tmp_path / "work"), threads=1, keep_rows=False, model=str(tmp_path / "m"),
                              calib=str(calib), nsamples=4, seqlen=64, cached_only=False)
    rep = report.Report(args)
    rep.slim(2, ["--method", "slim"], "slim-2-bit")
    rep.slim(2, ["--method", "slim"], "slim-2-bit")
    assert len(calls) == 1
    args.nsamples = 8
    rep.slim(2, ["--method", "slim"], "slim-2-bit")
    assert len(calls) == 2 and calls[1][calls[1].index("--nsamples") + 1] == "8"
    rep.slim(2, ["--method", "slim", "--joint-qkv"], "slim-2-bit")
    assert len(calls) == 3
