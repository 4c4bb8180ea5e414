"""CUDA SLIM kernels (ggml_patch/files/ggml/src/ggml-cuda/slim.cu).

Without a GPU: a derivation check of the identity the mat-vec kernel is built on (bit-plane expansion to code
bytes, the permuted activation layout, unsigned x signed dp4a, the `hi >> 4`), written out in numpy: it shows the
arithmetic is right, not that slim.cu implements it (nothing here runs slim.cu); the case files of the device
check; and the harness itself built without CUDA (ggml-cpu against Numba, and a corrupted case must fail). With a
GPU and a CUDA build (build/cuda, `slim2gguf build-llama --cuda`): the exactness harness
scripts/cuda_slim_check.cpp drives the real kernels (CUDA == Numba == CPU bit for bit; mat-vec within Q8
rounding). The H100/H200 runs of the same harness are in docs/bench/.
"""
from __future__ import annotations

import re
import shutil
import sys
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_BIN = ROOT / "build" / "cuda" / "bin"


def act_pos(e: int) -> int:
    """slim_act_pos: position of value e of a 32-block in the permuted activation layout."""
    s8 = e & 7
    return (s8 >> 2) * 16 + (s8 & 3) * 4 + (e >> 3)


def expand_planewise(w: list[int], B: int) -> list[int]:
    """The first slim_expand<B>: one 32-bit word of each plane -> 8 words of code bytes (lo_s, then hi_s), plane by
    plane (a shift and two masks per plane and shift)."""
    q = [0] * 8
    for s in range(4):
        lo = hi = 0
        for p in range(B):
            t = (w[p] >> (s - p)) if s >= p else (w[p] << (p - s)) & 0xFFFFFFFF
            lo |= t & (0x01010101 << p)
            hi |= t & (0x10101010 << p)
        q[s], q[4 + s] = lo, hi
    return q


def bitsel(a: int, b: int, m: int) -> int:
    """slim_bitsel: bits of a where m is set, of b elsewhere (lop3 0xCA)."""
    return ((a & m) | (b & ~m)) & 0xFFFFFFFF


def expand(w: list[int], B: int) -> list[int]:
    """slim_expand<B> as slim.cu writes it now: planes merged by bit-selects before masking."""
    q = [0] * 8
    if B == 1:
        for s in range(4):
            q[s], q[4 + s] = (w[0] >> s) & 0x01010101, (w[0] >> s) & 0x10101010
    elif B == 2:
        z_even = bitsel(w[0], (w[1] << 1) & 0xFFFFFFFF, 0x55555555)
        z_odd = bitsel(w[0] >> 1, w[1], 0x55555555)
        for s, z in enumerate([z_even, z_odd, z_even >> 2, z_odd >> 2]):
            q[s], q[4 + s] = z & 0x03030303, z & 0x30303030
    else:
        lo_mask = 0x01010101 * ((1 << B) - 1)
        for s in range(4):
            z = w[0] >> s
            for p in range(1, B):
                t = (w[p] >> (s - p)) if s >= p else (w[p] << (p - s)) & 0xFFFFFFFF
                z = bitsel(z, t, 0x11111111 * ((1 << p) - 1))
            q[s], q[4 + s] = z & lo_mask, z & (lo_mask << 4)
    return q


@pytest.mark.parametrize("B", [1, 2, 3, 4])
def test_bitselect_expansion_equals_planewise(B):
    """The bit-select expansion gives the same code bytes as the plane-by-plane one it replaced (random words)."""
    rng = np.random.default_rng(100 + B)
    for _ in range(2000):
        w = [int(v) for v in rng.integers(0, 1 << 32, B, dtype=np.uint64)]
        assert expand(w, B) == expand_planewise(w, B)


def dp4a_us(a: int, b: int, c: int) -> int:
    """dp4a.u32.s32: unsigned bytes of a times signed bytes of b, plus c."""
    ab = np.frombuffer(np.uint32(a).tobytes(), dtype=np.uint8).astype(np.int64)
    bb = np.frombuffer(np.uint32(b & 0xFFFFFFFF).tobytes(), dtype=np.int8).astype(np.int64)
    return int(c + (ab * bb).sum())


@pytest.mark.parametrize("B", [1, 2, 3, 4])
def test_matvec_derivation_expansion_equals_direct_dot(B):
    """Derivation check (numpy model of the algorithm, not the kernel): expanding B bit-planes into code bytes and
    dotting them with the permuted activations by dp4a (lo, and hi >> 4) gives the direct sum of q * x."""
    rng = np.random.default_rng(B)
    assert sorted(act_pos(e) for e in range(32)) == list(range(32))
    for _ in range(50):
        q = rng.integers(0, 1 << B, 32)
        x = rng.integers(-127, 128, 32)
        planes = [int(sum(((int(q[i]) >> p) & 1) << i for i in range(32))) for p in range(B)]
        xp = np.zeros(32, dtype=np.int8)
        for e in range(32):
            xp[act_pos(e)] = x[e]
        xw = [int(v) for v in xp.view(np.uint32)]
        qw = expand(planes, B)
        lo = hi = 0
        for k in range(4):
            lo = dp4a_us(qw[k], xw[k], lo)
            hi = dp4a_us(qw[4 + k], xw[4 + k], hi)
        assert hi % 16 == 0
        assert lo + (hi >> 4) == int((q * x).sum())


def test_case_files(tmp_path):
    """scripts/cuda_slim_cases.py writes rows + Numba decode that agree with the numpy unpacker."""
    from slim2gguf.format import SLIM_TYPES, unpack_rows

    subprocess.run([sys.executable, str(ROOT / "scripts" / "cuda_slim_cases.py"), str(tmp_path)], check=True,
                   cwd=ROOT, capture_output=True)
    files = sorted(tmp_path.glob("*.bin"))
    assert len(files) == 16
    for f in files[:4]:
        raw = f.read_bytes()
        assert raw[:8] == b"SLIMCASE"
        typ, ne00, nrows, nbytes = np.frombuffer(raw[8:40], dtype=np.int64)
        st = SLIM_TYPES[int(typ)]
        data = np.frombuffer(raw[40:40 + nbytes], dtype=np.uint8)
        ref = np.frombuffer(raw[40 + nbytes:], dtype=np.float32).reshape(nrows, ne00)
        bits, q, d, m = unpack_rows(data, int(ne00), st)
        w = (np.repeat(d.astype(np.float32), st.group_size, axis=1) * q
             + np.repeat(m.astype(np.float32), st.group_size, axis=1))
        assert np.array_equal(w, ref)
    for f in files:  # every gate has an up matrix of its type and shape, with other bytes (its own bit map)
        up = f.with_suffix(".up").read_bytes()
        gate = f.read_bytes()
        assert up[:40] == gate[:40] and up != gate


def _build_harness(tmp_path: Path, lib_dir: Path, cuda: bool) -> Path:
    """scripts/cuda_slim_check.cpp linked against the ggml libraries in lib_dir (without CUDA: the CPU checks only)."""
    exe = tmp_path / "cuda_slim_check"
    subprocess.run(["g++", "-O2", "-std=c++17", *([] if cuda else ["-DSLIM_CHECK_NO_CUDA"]),
                    str(ROOT / "scripts" / "cuda_slim_check.cpp"),
                    f"-I{ROOT / 'build' / 'llama.cpp' / 'ggml' / 'include'}", f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}",
                    "-lggml", "-lggml-base", "-lggml-cpu", *(["-lggml-cuda"] if cuda else []), "-o", str(exe)],
                   check=True)
    return exe


@pytest.mark.llama
def test_exactness_harness_cpu(tmp_path):
    """The harness without CUDA: ggml-cpu's GET_ROWS equals the Numba decode bit for bit, its mat-vecs and the
    SwiGLU pair are within the bounds; the same run on a case whose codes were changed (its Numba decode not) fails."""
    cases = tmp_path / "cases"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "cuda_slim_cases.py"), str(cases)], check=True, cwd=ROOT,
                   capture_output=True)
    from llama_env import tool

    exe = _build_harness(tmp_path, tool("libggml-cpu.so").parent, cuda=False)
    res = subprocess.run([str(exe), *map(str, sorted(cases.glob("*.bin")))], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "PASS: 0 failed checks" in res.stdout
    assert res.stdout.count("SwiGLU pair batch") == 2 * 16

    case = cases / "slim2_g128_1536x64.bin"
    raw = bytearray(case.read_bytes())
    nbytes = int(np.frombuffer(bytes(raw[32:40]), dtype=np.int64)[0])
    raw[40 + nbytes - 1] ^= 0xFF   # the last code byte of the last row
    case.write_bytes(bytes(raw))
    res = subprocess.run([str(exe), str(case)], capture_output=True, text=True)
    assert res.returncode == 1
    assert re.search(r"GET_ROWS CPU  == Numba \(bits\) +FAIL", res.stdout), res.stdout[-2000:]


def _have_gpu() -> bool:
    if not (CUDA_BIN / "libggml-cuda.so").exists() or shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _have_gpu(), reason="needs a GPU and a CUDA build (slim2gguf build-llama --cuda)")
def test_cuda_exactness_harness(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "cuda_slim_cases.py"), str(tmp_path / "cases")], check=True,
                   cwd=ROOT)
    exe = _build_harness(tmp_path, CUDA_BIN, cuda=True)
    res = subprocess.run([str(exe), *map(str, sorted((tmp_path / "cases").glob("*.bin")))],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "PASS" in res.stdout
