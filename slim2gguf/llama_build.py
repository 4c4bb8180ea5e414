"""Fetch the llama.cpp that llama-cpp-python vendors, apply ggml_patch/, install the patched gguf-py and build.

Source tree life cycle (all under the repo, gitignored):
  .cache/sdist/llama_cpp_python-<ver>.tar.gz      pip download, once
  .cache/pristine/llama_cpp_python-<ver>/          unpacked once, never modified
  build/llama.cpp/                                 patched tree; files are rewritten only when their content
                                                   changes, so cmake/ninja rebuilds stay incremental
"""
from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import SlimError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
REPO_ROOT = Path(__file__).resolve().parent.parent
PATCH_DIR = REPO_ROOT / "ggml_patch"
CACHE_DIR = REPO_ROOT / ".cache"
BUILD_DIR = REPO_ROOT / "build"
SOURCE_DIR = BUILD_DIR / "llama.cpp"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    res = subprocess.run(cmd, **kw)
    if res.returncode != 0:
        raise SlimError(f"command failed (exit {res.returncode}): {' '.join(str(c) for c in cmd)}")


def fetch_sdist() -> Path:
    """The llama-cpp-python sdist, downloaded from the package registry once."""
    sdist_dir = CACHE_DIR / "sdist"
    tarball = sdist_dir / f"{SDIST_NAME}.tar.gz"
    if not tarball.exists():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(sdist_dir)])
    if not tarball.exists():
        raise SlimError(f"pip download did not produce {tarball}")
    return tarball


def pristine_tree() -> Path:
    """The unpacked sdist (read-only by convention)."""
    root = CACHE_DIR / "pristine"
    tree = root / SDIST_NAME
    if not (tree / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        tarball = fetch_sdist()
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tf:
            tf.extractall(root, filter="data")
    return tree


def _patch_files() -> list[Path]:
    return sorted((PATCH_DIR / "patches").glob("*.patch"))


def _sync_tree(src: Path, dst: Path) -> int:
    """Copy src over dst, touching only files whose bytes differ. Returns how many files changed."""
    changed = 0
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if target.exists() and filecmp.cmp(path, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        changed += 1
    return changed


def prepare_source() -> Path:
    """Patched llama.cpp tree in build/llama.cpp: pristine vendor tree + ggml_patch/files + ggml_patch/patches.

    The patched tree is assembled in a scratch directory and synced, so unchanged files keep their mtimes.
    A hunk that does not apply stops everything (patch --forward --batch, non-zero exit).
    """
    vendor = pristine_tree() / "vendor" / "llama.cpp"
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        scratch = Path(tmp) / "llama.cpp"
        shutil.copytree(vendor, scratch, symlinks=True)
        files = PATCH_DIR / "files"
        if files.exists():
            shutil.copytree(files, scratch, dirs_exist_ok=True)
        for patch in _patch_files():
            res = subprocess.run(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
                                  "-i", str(patch)], cwd=scratch, capture_output=True, text=True)
            if res.returncode != 0:
                raise SlimError(f"patch {patch.name} does not apply: {res.stdout.strip().splitlines()[-1:]}")
        SOURCE_DIR.mkdir(parents=True, exist_ok=True)
        n = _sync_tree(scratch, SOURCE_DIR)
    print(f"patched llama.cpp source in {SOURCE_DIR} ({n} files updated)", flush=True)
    return SOURCE_DIR


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def install_gguf_py() -> None:
    """pip install the patched gguf-py into the running interpreter's environment (skip if unchanged)."""
    src = prepare_source() / "gguf-py"
    stamp = BUILD_DIR / "gguf-py.stamp"
    digest = _tree_digest(src)
    if stamp.exists() and stamp.read_text() == digest and _gguf_has_slim():
        return
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(src)])
    stamp.write_text(digest)


def _gguf_has_slim() -> bool:
    res = subprocess.run([sys.executable, "-c", "import gguf; gguf.GGMLQuantizationType.SLIM2_G64"],
                         capture_output=True)
    return res.returncode == 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m slim2gguf.llama_build")
    ap.add_argument("--gguf-py-only", action="store_true", help="patch the source and install gguf-py only")
    args = ap.parse_args(argv)
    if args.gguf_py_only:
        install_gguf_py()
        return 0
    raise SlimError("building llama.cpp is not wired yet; use --gguf-py-only")


if __name__ == "__main__":
    from .errors import run_cli

    sys.exit(run_cli(main))
