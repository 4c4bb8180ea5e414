"""Where things live in the repository checkout (all build products are gitignored)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PATCH_DIR = REPO_ROOT / "ggml_patch"     # the patch on the vendored llama.cpp
CACHE_DIR = REPO_ROOT / ".cache"         # the llama-cpp-python sdist and its unpacked, untouched tree
BUILD_DIR = REPO_ROOT / "build"
SOURCE_DIR = BUILD_DIR / "llama.cpp"     # the patched llama.cpp tree (its converter is what writes GGUFs)
