"""ggml-cpu's SLIM extra buffer (slim-repack.cpp): tiles of 8 rows and the tiled gemm of prompt processing and
decode, driven through ctypes like test_ggml_slim.py drives vec_dot.

- the tile layout is a bijection of the file's bytes (ggml_slim_unrepack_8 gives them back) and decodes, read as
  docs say (slim.c), to exactly reference_decoder.decode: whatever path runs, the weights are the file's;
- ggml_slim_repack_8 refuses rows without one legal tag set (row counts not a multiple of 8, mixed tags);
- the scalar gemm (_generic) gives the same floats as the scalar vec_dot, bit for bit, for every (row, column);
- the dispatched gemm (AVX2 where built) is within fp32 summation noise of the fp64 dot with the Q8_1
  activations and within the Q8 rounding bound of the exact activations, for SmolLM2's widths, odd group
  counts, 1..65 activation columns (partial column tiles) and 8..40 rows (one to five tiles).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

import ggml_lib
from slim2gguf import reference_decoder
from slim2gguf.format import SLIM_TYPES, pack_rows
from slim2gguf.rtn_rows import random_sba_bits
from slim_synth import rtn

pytestmark = pytest.mark.llama

LIB = ggml_lib.load()
if LIB is None:
    pytest.skip("patched llama.cpp CPU build absent (run `slim2gguf build-llama`)", allow_module_level=True)

TYPES = list(SLIM_TYPES.values())
IDS = [t.name for t in TYPES]

GEMM = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_int, ctypes.c_int)
LIB.cpu.ggml_slim_repack_8.restype = ctypes.c_int
LIB.cpu.ggml_slim_repack_8.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                       ctypes.c_void_p]
LIB.cpu.ggml_slim_unrepack_8.restype = None
LIB.cpu.ggml_slim_unrepack_8.argtypes = LIB.cpu.ggml_slim_repack_8.argtypes


def widths(st):
    g = st.group_size
    # one group, odd group counts, SmolLM2's 576 (g64) / 1536 (g128), a wide row
    return sorted({g, 3 * g, 9 * g, 576 if g == 64 else 1536, 4096 if g == 128 else 2880})


def make_rows(st, rows, ne0, seed, k=None):
    """rows x ne0 SLIM rows with one SBA-shaped bit map (every row of a tensor has the same tags)."""
    rng = np.random.default_rng(seed)
    w = torch.from_numpy((rng.standard_normal((rows, ne0)) * 0.05).astype(np.float32))
    w[:, rng.integers(0, ne0, size=max(1, ne0 // 100))] *= 8
    bits = random_sba_bits(ne0 // st.group_size, st.avg_bits, rng, k)
    ql = rtn(w, st.avg_bits, st.group_size, seed=seed, bits=bits)
    return pack_rows(ql.bits.numpy(), ql.q.numpy(), ql.d.numpy(), ql.m.numpy(), st)


def repack(st, data, ne0):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.zeros_like(data)
    rc = LIB.cpu.ggml_slim_repack_8(int(st.ggml_type), ne0, data.shape[0], data.ctypes.data, out.ctypes.data)
    return rc, out


def unrepack(st, tiles, ne0):
    out = np.zeros_like(tiles)
    LIB.cpu.ggml_slim_unrepack_8(int(st.ggml_type), ne0, tiles.shape[0], tiles.ctypes.data, out.ctypes.data)
    return out


def decode_tiles(st, tiles, ne0):
    """The tile layout read as slim.c documents it (independent of the C code): fp32 weights [rows, ne0]."""
    g, nq = st.group_size, st.group_size // 32
    rows = tiles.shape[0]
    flat = tiles.reshape(rows // 8, -1)
    out = np.empty((rows, ne0), dtype=np.float32)
    i = np.arange(32)
    pos = 8 * (i & 3) + (i >> 2)                      # weight 4s+k of a chunk sits at bit 8k+s
    for t in range(rows // 8):
        p = 0
        for j in range(ne0 // g):
            dh = flat[t, p:p + 16].view("<u2")
            mh = flat[t, p + 16:p + 32].view("<u2")
            bits = int((((dh[0] >> 15) & 1) << 1) | (dh[0] & 1)) + 1
            d = (dh & 0x7FFF).view(np.float16).astype(np.float32)
            m = mh.view(np.float16).astype(np.float32)
            p += 32
            for c in range(nq):
                q = np.zeros((8, 32), dtype=np.int64)
                for pl in range(bits):
                    w = flat[t, p:p + 32].view("<u4").astype(np.int64)   # lane r = row r
                    q |= ((w[:, None] >> pos[None, :]) & 1) << pl
                    p += 32
                cols = slice(j * g + 32 * c, j * g + 32 * c + 32)
                out[8 * t:8 * t + 8, cols] = d[:, None] * q.astype(np.float32) + m[:, None]
        assert p == flat.shape[1]
    return out


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_tiles_are_the_files_bytes(st):
    for ne0 in widths(st):
        for nrows in (8, 24):
            data = make_rows(st, nrows, ne0, seed=ne0 + nrows)
            rc, tiles = repack(st, data, ne0)
            assert rc == 0
            assert tiles.shape == data.shape
            assert np.array_equal(unrepack(st, tiles, ne0), data), (st.name, ne0)
            ref = reference_decoder.decode(data, ne0, st)
            got = decode_tiles(st, tiles, ne0)
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (st.name, ne0)


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_repack_refuses(st):
    ne0 = 4 * st.group_size
    data = make_rows(st, 16, ne0, seed=3, k=1)
    assert repack(st, data[:12], ne0)[0] == -1                  # not whole tiles
    other = make_rows(st, 8, ne0, seed=4, k=2)                  # other tags
    assert repack(st, np.concatenate([data[:8], other]), ne0)[0] == -1
    bad = data.copy()
    bad[5, 0:2] = np.frombuffer(np.uint16(0x7E00 | 0x8001).tobytes(), np.uint8)   # NaN d
    assert repack(st, bad, ne0)[0] == -1


def gemm_fn(st, generic):
    name = f"ggml_gemm_{st.name.lower()}_8_q8_1" + ("_generic" if generic else "")
    return GEMM(ctypes.cast(LIB.sym(name), ctypes.c_void_p).value)


def run_gemm(fn, tiles, ys, ne0, nrows):
    """s[col, row] for nrows rows (tiles) x ys.shape[0] Q8_1 columns."""
    ys = np.ascontiguousarray(ys, dtype=np.uint8)
    s = np.full((ys.shape[0], nrows), np.nan, dtype=np.float32)
    fn(ne0, s.ctypes.data, nrows, tiles.ctypes.data, ys.ctypes.data, ys.shape[0], nrows)
    return s


def activations(ne0, ncols, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ncols, ne0)).astype(np.float32)
    x[:, rng.integers(0, ne0, 4)] *= 20  # activation outliers
    return x, np.stack([LIB.quantize_q8_1(r) for r in x])


vec_dot_generic = {st.name: ggml_lib.VEC_DOT(ctypes.cast(LIB.sym(f"ggml_vec_dot_{st.name.lower()}_q8_1_generic"),
                                                          ctypes.c_void_p).value) for st in TYPES}


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_gemm_generic_is_vec_dot_generic(st):
    """The scalar tile gemm sums like the scalar vec_dot: identical floats."""
    fn = gemm_fn(st, True)
    for ne0 in widths(st):
        data = make_rows(st, 16, ne0, seed=ne0 + 5)
        _, tiles = repack(st, data, ne0)
        _, ys = activations(ne0, 5, seed=ne0)
        got = run_gemm(fn, tiles, ys, ne0, 16)
        want = np.array([[LIB.vec_dot(st.ggml_type, data[r], ys[c], ne0, vec_dot_generic[st.name])
                          for r in range(16)] for c in range(5)], dtype=np.float32)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (st.name, ne0)


@pytest.mark.parametrize("st", TYPES, ids=IDS)
def test_gemm_fast(st):
    """The dispatched gemm against fp64: tight with the Q8_1-held activations (m term through Q8_1's s, as every
    CPU path computes it), within Q8 rounding of the exact ones. Column counts cover the 4-column tiles and
    every remainder; row counts one to five tiles."""
    fn = gemm_fn(st, False)
    g, nq = st.group_size, st.group_size // 32
    cases = [(ne0, 8, 1) for ne0 in widths(st)] + [(ne0, 40, 9) for ne0 in widths(st)]
    cases += [(576 if g == 64 else 1536, 16, nc) for nc in (2, 3, 4, 5, 7, 8, 16, 33, 64, 65)]
    for ne0, nrows, ncols in cases:
        G = ne0 // g
        data = make_rows(st, nrows, ne0, seed=ne0 + nrows)
        _, tiles = repack(st, data, ne0)
        x, ys = activations(ne0, ncols, seed=ncols)
        got = run_gemm(fn, tiles, ys, ne0, nrows)
        w = reference_decoder.decode(data, ne0, st).astype(np.float64)
        hdr = data[:, :4 * G].copy().view("<u2").reshape(nrows, G, 2)
        mgrp = hdr[:, :, 1].view(np.float16).astype(np.float64)
        for c in range(ncols):
            d8, s8, q8 = ggml_lib.q8_1_blocks(ys[c])
            xq = (d8[:, None].astype(np.float64) * q8).reshape(-1)
            ssum = s8.reshape(G, nq).astype(np.float64).sum(1)
            # sum (d q + m) xq with the m term as m * s8 (Q8_1's fp16 sum), as the kernels compute it
            emul = ((w - np.repeat(mgrp, g, axis=1)) @ xq) + mgrp @ ssum
            scale = np.abs(w) @ np.abs(xq) + np.abs(mgrp) @ np.abs(ssum) + 1e-30
            assert np.all(np.abs(got[c] - emul) <= 2e-6 * scale), (st.name, ne0, nrows, ncols, c)
            exact = w @ x[c].astype(np.float64)
            bound = (np.abs(w) @ np.repeat(d8.astype(np.float64) * (0.5 + 127 * 2.0 ** -11), 32)
                     + np.abs(mgrp) @ (np.abs(s8).reshape(G, nq).sum(1) * 2.0 ** -11)) + 2e-6 * scale
            assert np.all(np.abs(got[c] - exact) <= bound), (st.name, ne0, nrows, ncols, c)


def test_llama_uses_tiles_and_agrees_with_vec_dot(tmp_path):
    """End to end: llama.cpp puts a tiny SLIM model's linears in the CPU_SLIM buffer (with k/v rows of 64 and
    down_proj's 5 groups of 64) and its perplexity matches the vec_dot path (`--no-repack`)."""
    import re
    import subprocess

    import llama_env
    from slim2gguf.gguf_out import StockTypes, write_slim_gguf
    from slim_synth import demo_tokenizer_dir, make_tiny_llama, rtn_folder

    ppl_tool = llama_env.tool("llama-perplexity")
    hf = make_tiny_llama(tmp_path / "hf", demo_tokenizer_dir(), hidden=128, intermediate=320, layers=2, heads=4,
                         kv_heads=2)
    words = ("the of and to in is was that for on with as by at from his her they which this be had it "
             "not are but have one all were when there an their been who would more will").split()
    text = " ".join(words[i * 7 % len(words)] for i in range(3000))
    (tmp_path / "t.txt").write_text(text)
    for bits in (2, 3):
        path = tmp_path / f"tiny-slim{bits}.gguf"
        write_slim_gguf(hf, path, rtn_folder(hf, bits), avg_bits=bits, stock=StockTypes("f32", "f32", "f32"))
        ppl = {}
        for flag in ("", "-nr"):
            cmd = [str(ppl_tool), "-m", str(path), "-f", str(tmp_path / "t.txt"), "-c", "128", "--chunks", "4",
                   "-t", "2", "-b", "128", "-v"] + ([flag] if flag else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, res.stderr[-2000:]
            assert ("CPU_SLIM model buffer size" in res.stderr) == (flag == ""), flag
            ppl[flag] = float(re.search(r"Final estimate: PPL = ([0-9.]+)", res.stderr).group(1))
        # fp32 order differs, so an activation that sits on a Q8_1 rounding edge in the next layer can round the
        # other way: the paths agree within Q8 activation rounding, not bit for bit (measured 1.4e-4 relative)
        assert abs(ppl[""] - ppl["-nr"]) <= 1e-3 * ppl["-nr"], (bits, ppl)
