"""Corrupted copies of a small SLIM file against every reader (issue 11).

One tiny random llama is written with SLIM2_G64 tensors (2 and 3 groups per row, every tensor with widths 3, 1
and 2 so tags can be swapped), then copies are damaged one way each: one row's tags, all rows' tags, widths
outside the type's set, NaN/Inf scales and offsets, truncation, changed shapes and type ids. Each copy goes to

- llama-cli (the patched CPU build; mmap, and `-lm none` for the damaged rows) and llama-cpp-python: the load is
  refused with a message naming what is wrong (for SLIM data: tensor, row and group), an exit code < 128 (an
  error, never a signal);
- `slim2gguf inspect` and `slim2gguf eval --weights`: one line on stderr, exit code 2;
- scripts/report.py's measure_file (a few classes): a one-line SlimError.

The intact file is the control: every tool accepts it, so a refusal below is the damage's doing.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import llama_env
from slim_synth import LINEAR_SUFFIXES, demo_tokenizer_dir, make_tiny_llama, rtn

SLIM2_G64, SLIM3_G64 = 100, 102
ROW_BYTES = {128: 2 * 20, 192: 3 * 20}          # SLIM2_G64 rows of 128 / 192 weights
DOWN = "blk.0.ffn_down.weight"                  # 192 x 128: 3 groups per row, 128 rows
ATTN_V = "blk.0.attn_v.weight"                  # 128 x 64: 2 groups per row


@dataclass
class Base:
    hf: Path
    path: Path
    text: Path
    tensors: dict = field(default_factory=dict)   # name -> (data offset, ne0, rows, bits, info offset)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    import torch
    from safetensors.torch import load_file

    from slim2gguf.gguf_in import open_gguf
    from slim2gguf.gguf_out import StockTypes, write_slim_gguf

    root = tmp_path_factory.mktemp("fuzz")
    hf = make_tiny_llama(root / "hf", demo_tokenizer_dir(), hidden=128, intermediate=192, layers=1, heads=4,
                         kv_heads=2, tie=True)
    quantized = {}
    for name, w in sorted(load_file(str(hf / "model.safetensors")).items()):
        if name.endswith(LINEAR_SUFFIXES):
            bits = np.array([3, 1] + [2] * (w.shape[1] // 64 - 2), dtype=np.int8)  # widths 3, 1 (, 2): avg 2
            quantized[name] = rtn(w.to(torch.float32), 2, 64, bits=bits)
    path = root / "tiny-slim2.gguf"
    # q/k/v as three tensors (one bit map would fuse them): the cases damage attn_v on its own
    write_slim_gguf(hf, path, quantized, avg_bits=2, stock=StockTypes("q8_0", "q8_0", "q8_0"), fuse_qkv=False)
    text = root / "text.txt"
    text.write_text(" ".join(f"word{i % 37} and more text" for i in range(300)))
    b = Base(hf, path, text)
    for t in open_gguf(path).tensors:
        if int(t.tensor_type) == SLIM2_G64:
            ne0, rows = int(t.shape[0]), int(t.shape[1])
            head = np.asarray(t.data).reshape(rows, -1)[0, : 4 * (ne0 // 64)].copy().view("<u2")[0::2]
            bits = ((head >> 15) & 1) * 2 + (head & 1) + 1
            dims_at = int(t.field.offset) + sum(int(p.nbytes) for p in t.field.parts[:3])
            type_at = dims_at + int(t.field.parts[3].nbytes)
            b.tensors[t.name] = (int(t.data_offset), ne0, rows, bits.astype(int).tolist(), dims_at, type_at)
    assert len(b.tensors) == 7 and sorted(set(b.tensors[DOWN][3])) == [1, 2, 3]
    return b


# --------------------------------------------------------------------------------------------------------------
# damage

def _word_at(data: bytearray, off: int) -> int:
    return int.from_bytes(data[off: off + 2], "little")


def _put_word(data: bytearray, off: int, value: int) -> None:
    data[off: off + 2] = int(value).to_bytes(2, "little")


def _with_tag(dh: int, bits: int) -> int:
    t = bits - 1
    return (dh & 0x7FFE) | ((t >> 1) << 15) | (t & 1)


def _header(b: Base, name: str, row: int, group: int) -> int:
    off, ne0, rows, _, _, _ = b.tensors[name]
    assert row < rows and group < ne0 // 64
    return off + row * ROW_BYTES[ne0] + 4 * group


def set_width(name: str, rows, group: int, bits: int | Callable[[int], int]):
    def f(b: Base, data: bytearray) -> None:
        for r in (range(b.tensors[name][2]) if rows == "all" else rows):
            at = _header(b, name, r, group)
            old = _word_at(data, at)
            new_bits = bits(((old >> 15) & 1) * 2 + (old & 1) + 1) if callable(bits) else bits
            _put_word(data, at, _with_tag(old, new_bits))
    return f


def swap_widths(name: str, row: int, g1: int, g2: int):
    def f(b: Base, data: bytearray) -> None:
        b1, b2 = b.tensors[name][3][g1], b.tensors[name][3][g2]
        assert b1 != b2
        for g, bits in ((g1, b2), (g2, b1)):
            at = _header(b, name, row, g)
            _put_word(data, at, _with_tag(_word_at(data, at), bits))
    return f


def set_half(name: str, row: int, group: int, which: str, value: int):
    """Overwrite d (keeping the tag bits) or m of one header with an fp16 bit pattern."""
    def f(b: Base, data: bytearray) -> None:
        at = _header(b, name, row, group)
        if which == "d":
            _put_word(data, at, (_word_at(data, at) & 0x8001) | (value & 0x7FFE))
        else:
            _put_word(data, at + 2, value)
    return f


def truncate(where: Callable[[Base, int], int]):
    def f(b: Base, data: bytearray) -> None:
        del data[where(b, len(data)):]
    return f


def set_dims(name: str, ne0: int, ne1: int):
    def f(b: Base, data: bytearray) -> None:
        at = b.tensors[name][4]
        data[at: at + 16] = np.array([ne0, ne1], dtype="<u8").tobytes()
    return f


def set_type(name: str, type_id: int):
    def f(b: Base, data: bytearray) -> None:
        at = b.tensors[name][5]
        data[at: at + 4] = np.uint32(type_id).tobytes()
    return f


@dataclass
class Case:
    damage: Callable[[Base, bytearray], None] | None
    llama: tuple[str, ...]      # substrings of llama-cli's / llama-cpp-python's output (all must appear)
    python: tuple[str, ...]     # substrings of the one line `inspect` and `eval --weights` print
    inspect_knows: bool = True  # False: the damage leaves a file `inspect` alone cannot tell from a valid one


DOWN_SHAPE = f"{DOWN}' (slim2_g64"
CASES = {
    "intact": Case(None, (), ()),
    # one row's tags: widths swapped (the row still sums to 2 bits), or one width changed (it does not)
    "tags_swapped_one_row": Case(swap_widths(DOWN, 5, 0, 1), (DOWN_SHAPE, "row 5 group 0", "differs from row 0"),
                                 (DOWN, "row 5 group 0", "tags differ")),
    "tag_changed_one_row": Case(set_width(DOWN, [77], 2, lambda w: 1 if w != 1 else 3),
                                (DOWN_SHAPE, "row 77 group 2", "differs from row 0"), (DOWN, "row 77")),
    # every row's tag: the same in all rows, but the widths no longer sum to 2 bits per weight
    "tag_changed_all_rows": Case(set_width(DOWN, "all", 2, lambda w: 1 if w != 1 else 3),
                                 (DOWN_SHAPE, "row 0: bit-widths sum to"), (DOWN, "row 0", "sum to")),
    # widths outside {1, 2, 3}: tag 3 = 4 bits
    "illegal_width_one_row": Case(set_width(DOWN, [3], 1, 4), (DOWN_SHAPE, "row 3 group 1", "bit-width 4 outside 1..3"),
                                  (DOWN, "row 3 group 1", "bit-width 4 is not allowed")),
    "illegal_width_all_rows": Case(set_width(ATTN_V, "all", 0, 4), (ATTN_V, "row 0 group 0", "bit-width 4 outside"),
                                   (ATTN_V, "row 0 group 0", "bit-width 4 is not allowed")),
    # non-finite scale d (the tag bits kept) and offset m
    "nan_scale": Case(set_half(DOWN, 4, 2, "d", 0x7E00), (DOWN_SHAPE, "row 4 group 2", "scale d is inf or nan"),
                      (DOWN, "row 4 group 2", "scale d is not finite")),
    "inf_scale": Case(set_half(ATTN_V, 0, 1, "d", 0x7C00), (ATTN_V, "row 0 group 1", "inf or nan"),
                      (ATTN_V, "row 0 group 1", "scale d is not finite")),
    "nan_offset": Case(set_half(DOWN, 127, 0, "m", 0x7E00), (DOWN_SHAPE, "row 127 group 0", "offset m is inf or nan"),
                       (DOWN, "row 127 group 0", "offset m is not finite")),
    "minus_inf_offset": Case(set_half(ATTN_V, 9, 1, "m", 0xFC00), (ATTN_V, "row 9 group 1", "offset m is inf or nan"),
                             (ATTN_V, "row 9 group 1", "offset m is not finite")),
    # truncation: inside the tensor data, inside the metadata
    "truncated_data": Case(truncate(lambda b, n: b.tensors[DOWN][0] + 1000), ("error loading model",),
                           ("truncated",)),
    "truncated_metadata": Case(truncate(lambda b, n: 3000), ("failed to", "gguf"), ("corrupt",)),
    # shapes: ne0 not a multiple of the group size, ne0 = 0, rows of twice the length (same byte count)
    "ne0_not_multiple": Case(set_dims(ATTN_V, 96, 64), ("not a multiple of block size",), ("corrupt",)),
    "ne0_zero": Case(set_dims(ATTN_V, 0, 64), ("has offset",), ("corrupt",)),
    "ne0_doubled": Case(set_dims(ATTN_V, 256, 32), (ATTN_V, "wrong shape"), ("attn_v",), inspect_knows=False),
    # type ids: another SLIM type (other row size), an id in the unused gap, one past every type
    "type_slim3": Case(set_type(ATTN_V, SLIM3_G64), ("has offset",), ("corrupt",)),
    "type_unused_id": Case(set_type(ATTN_V, 77), ("of type 77",), ("corrupt",)),
    "type_out_of_range": Case(set_type(ATTN_V, 1000), ("invalid ggml type",), ("corrupt",)),
}


@pytest.fixture(scope="module")
def files(base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-copies")
    out = {}
    original = base.path.read_bytes()
    for name, case in CASES.items():
        data = bytearray(original)
        if case.damage is not None:
            case.damage(base, data)
            assert bytes(data) != original, name
        out[name] = root / f"{name}.gguf"
        out[name].write_bytes(bytes(data))
    return out


def _check_llama_outcome(name: str, rc: int, output: str, tool: str) -> None:
    case = CASES[name]
    if case.damage is None:
        assert rc == 0, f"{tool} refused the intact file (exit {rc}): {output[-2000:]}"
        return
    assert 0 < rc < 128, f"{tool} on {name}: exit {rc} (0 = accepted, >= 128 or < 0 = a signal): {output[-2000:]}"
    for s in case.llama:
        assert s in output, f"{tool} on {name}: {s!r} not in its output: {output[-3000:]}"


# --------------------------------------------------------------------------------------------------------------
# llama.cpp: llama-cli and llama-cpp-python (the patched CPU build)

def _llama_cli(path: Path, *extra: str) -> subprocess.CompletedProcess:
    cli = llama_env.tool("llama-cli")
    return subprocess.run([str(cli), "-m", str(path), "-p", "the quick brown", "-n", "4", "-st", "-c", "128",
                           "-t", "2", "--no-warmup", "--temp", "0", *extra], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace", timeout=300)


@pytest.mark.llama
@pytest.mark.parametrize("name", list(CASES))
def test_llama_cli(files, name):
    res = _llama_cli(files[name])          # default load mode: mmap, the check reads the mapped header planes
    _check_llama_outcome(name, res.returncode, res.stdout + res.stderr, "llama-cli")


# the damage to SLIM rows (the rest fails in gguf's parser, before any tensor data is read)
ROW_CASES = [n for n, c in CASES.items() if c.damage is None or any(s.startswith("row ") for s in c.llama)]


@pytest.mark.llama
@pytest.mark.parametrize("name", ROW_CASES)
def test_llama_cli_without_mmap(files, name):
    res = _llama_cli(files[name], "-lm", "none")   # the loader's other path: tensors read into buffers
    _check_llama_outcome(name, res.returncode, res.stdout + res.stderr, "llama-cli -lm none")


LLAMA_CPP_PROBE = r"""
import sys
from llama_cpp import Llama
try:
    llm = Llama(model_path=sys.argv[1], n_ctx=128, n_threads=2, verbose=True)
except ValueError as e:
    print(f"REFUSED: {e}", file=sys.stderr)
    sys.exit(3)
out = llm("the quick brown", max_tokens=4, temperature=0.0)
print("LOADED", out["usage"]["completion_tokens"])
"""


@pytest.mark.llama
@pytest.mark.parametrize("name", list(CASES))
def test_llama_cpp_python(files, name):
    llama_env.require_llama_cpp_python()
    res = subprocess.run([sys.executable, "-c", LLAMA_CPP_PROBE, str(files[name])], capture_output=True, text=True,
                         errors="replace", timeout=300)
    out = res.stdout + res.stderr
    _check_llama_outcome(name, res.returncode, out, "llama-cpp-python")
    if CASES[name].damage is not None:
        assert res.returncode == 3 and "REFUSED: Failed to load model" in out, out[-2000:]  # Llama() raised
    else:
        assert "LOADED" in res.stdout


@pytest.mark.llama
@pytest.mark.parametrize("name", ["intact", "tags_swapped_one_row", "nan_scale", "type_out_of_range"])
def test_slim2gguf_run(files, name):
    """`slim2gguf run` (llama-cpp-python, quiet): llama.cpp's reason in one line, exit 2."""
    llama_env.require_llama_cpp_python()
    res = subprocess.run([sys.executable, "-m", "slim2gguf.cli", "run", str(files[name]), "-p", "the quick", "-n",
                          "2", "-c", "128", "-t", "2"], capture_output=True, text=True, errors="replace", timeout=300)
    err = res.stderr.strip().splitlines()
    if CASES[name].damage is None:
        assert res.returncode == 0, res.stderr[-2000:]
        return
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith("slim2gguf: error: llama.cpp cannot load")
    for s in CASES[name].llama:
        assert s in err[0], (name, err[0])


# --------------------------------------------------------------------------------------------------------------
# slim2gguf's readers: inspect and eval --weights (in process: cli.main's return value is the exit code)

def _slim2gguf(capsys, *argv) -> tuple[int, list[str]]:
    from slim2gguf import cli

    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def _check_python_outcome(name: str, rc: int, err: list[str], tool: str, strict: bool = True) -> None:
    case = CASES[name]
    if case.damage is None:
        assert rc == 0, f"{tool} refused the intact file: {err}"
        return
    if not strict:  # may pass (the damage makes another valid file), but never a traceback
        assert rc in (0, 2) and (rc == 0 or len(err) == 1), (tool, name, rc, err)
        return
    assert rc == 2 and len(err) == 1 and err[0].startswith("slim2gguf: error:"), (tool, name, rc, err)
    for s in case.python:
        assert s in err[0], f"{tool} on {name}: {s!r} not in {err[0]!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_inspect(files, name, capsys):
    rc, err = _slim2gguf(capsys, "inspect", files[name])
    _check_python_outcome(name, rc, err, "inspect", strict=CASES[name].inspect_knows)


@pytest.mark.parametrize("name", list(CASES))
def test_eval_weights(base, files, name, capsys):
    rc, err = _slim2gguf(capsys, "eval", base.hf, "--weights", files[name], "--eval-text", base.text, "--ctx", "32",
                         "--max-tokens", "64")
    _check_python_outcome(name, rc, err, "eval --weights")


@pytest.fixture(scope="module")
def report_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("slim_report_script",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("name", ["intact", "tags_swapped_one_row", "nan_offset", "ne0_zero"])
def test_report_measure_file(files, name, report_module):
    """scripts/report.py measures every file it reports on through measure_file, which validates first (the
    same open_gguf + reference_decoder.validate as inspect: a few classes suffice; gguf-py's reader needs ~4 s
    for the 49k-token vocabulary of each copy)."""
    from slim2gguf.errors import SlimError

    report = report_module
    case = CASES[name]
    if case.damage is None:
        size, bpw, blk_bpw, types = report.measure_file(files[name])
        assert size == files[name].stat().st_size and types["SLIM2_G64"] > 0
        return
    try:
        report.measure_file(files[name])
    except SlimError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1
        for s in case.python:
            assert s in msg, (name, msg)
    else:
        assert not case.inspect_knows, f"measure_file accepted {name}"
