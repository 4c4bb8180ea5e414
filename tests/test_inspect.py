"""`slim2gguf inspect`: per-tensor bit allocation and bpw, JSON, heat map, and one-line errors for bad files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from slim2gguf import cli
from slim2gguf.file_report import analyze
from slim2gguf.gguf_in import open_gguf
from slim2gguf.gguf_out import write_slim_gguf

from slim_synth import demo_tokenizer_dir, make_tiny_llama, rtn_folder


@pytest.fixture(scope="module")
def slim_file(tmp_path_factory):
    """A 2-bit SLIM GGUF of a tiny random llama (RTN with random SBA-shaped bit maps, written by gguf_out)."""
    tmp = tmp_path_factory.mktemp("inspect")
    hf = make_tiny_llama(tmp / "tiny", demo_tokenizer_dir(), hidden=256, intermediate=384, layers=2)
    quantized = rtn_folder(hf, 2)
    out = tmp / "tiny-slim2.gguf"
    write_slim_gguf(hf, out, quantized, avg_bits=2, slim_meta={"slim.bits": 2, "slim.method": "rtn"})
    return out, quantized


def _cli(capsys, *argv):
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err.strip().splitlines()


def test_report_counts_groups_and_bpw(slim_file):
    path, quantized = slim_file
    rep = analyze(path)
    by_name = {e["name"]: e for e in rep["tensors"]}
    q = by_name["blk.1.ffn_down.weight"]
    ql = quantized["model.layers.1.mlp.down_proj.weight"]
    assert q["type"] == "SLIM2_G128" and q["group_size"] == 128 and q["shape"] == [384, 256]
    assert q["bits"] == ql.bits.tolist()
    assert q["groups"] == {str(b): int((ql.bits == b).sum()) for b in (1, 2, 3)}
    assert q["bpw"] == pytest.approx(2.25)
    t = rep["totals"]
    assert t["file_bytes"] == path.stat().st_size
    assert t["bpw_file"] == pytest.approx(8 * t["file_bytes"] / t["elements"])
    slim_bits = sum(e["rows"] * sum(e["bits"]) * e["group_size"] for e in rep["tensors"] if "bits" in e)
    assert slim_bits == t["slim_elements"] * 2                      # average exactly 2 code bits
    assert t["bpw_slim"] == pytest.approx(2.25)
    assert sum(t["slim_groups"].values()) == sum(e["rows"] * e["groups_per_row"] for e in rep["tensors"]
                                                 if "bits" in e)
    assert rep["metadata"]["general.file_type"] == 100 and rep["metadata"]["slim.bits"] == 2


def test_cli_text_json_and_plot(slim_file, tmp_path, capsys):
    path, _ = slim_file
    rc, out, err = _cli(capsys, "inspect", path)
    assert rc == 0 and "SLIM2_G128" in out and "bpw" in out
    png = tmp_path / "alloc.png"
    rc, out, err = _cli(capsys, "inspect", path, "--json", "--plot", png)
    assert rc == 0
    rep = json.loads(out)
    assert rep["totals"]["slim_tensors"] == 14
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncated_file(slim_file, tmp_path, capsys):
    path, _ = slim_file
    data = path.read_bytes()
    for n in (len(data) - 1000, 5000, 20):
        bad = tmp_path / f"trunc{n}.gguf"
        bad.write_bytes(data[:n])
        rc, out, err = _cli(capsys, "inspect", bad)
        assert rc == 2 and len(err) == 1 and err[0].startswith(f"slim2gguf: error: {bad}:"), err
        assert "truncated" in err[0] or "corrupt" in err[0]


def test_not_a_gguf_and_missing(tmp_path, capsys):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    rc, _, err = _cli(capsys, "inspect", junk)
    assert rc == 2 and len(err) == 1 and "not a GGUF file" in err[0]
    rc, _, err = _cli(capsys, "inspect", tmp_path / "missing.gguf")
    assert rc == 2 and len(err) == 1 and "no such file" in err[0]


def test_tampered_tag_byte(slim_file, tmp_path, capsys):
    path, _ = slim_file
    t = next(t for t in open_gguf(path).tensors if t.name == "blk.0.attn_v.weight")
    bad = tmp_path / "tampered.gguf"
    shutil.copy(path, bad)
    off = int(t.data_offset) + 3 * t.data.shape[1] + 4     # row 3, group 1: the high byte of d is at +1
    with open(bad, "r+b") as f:
        f.seek(off)
        lo, hi = f.read(2)
        f.seek(off)
        f.write(bytes([lo | 0x01, hi | 0x80]))           # tag 3 -> 4 bits: not a SLIM2 width
    rc, _, err = _cli(capsys, "inspect", bad)
    assert rc == 2 and len(err) == 1
    assert "invalid SLIM data in blk.0.attn_v.weight (SLIM2_G128) row 3 group 1" in err[0]


def test_unknown_type_id(slim_file, tmp_path, capsys):
    path, _ = slim_file
    reader = open_gguf(path)
    t = reader.tensors[0]
    type_field = t.field.parts[4]                               # the tensor info's ggml type (uint32)
    off = int(t.field.offset) + sum(int(p.nbytes) for p in t.field.parts[:4])
    assert np.frombuffer(path.read_bytes()[off:off + 4], "<u4")[0] == type_field[0]
    bad = tmp_path / "badtype.gguf"
    data = bytearray(path.read_bytes())
    data[off:off + 4] = np.uint32(77).tobytes()
    bad.write_bytes(bytes(data))
    rc, _, err = _cli(capsys, "inspect", bad)
    assert rc == 2 and len(err) == 1 and "corrupt" in err[0]
