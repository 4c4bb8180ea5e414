"""Where the patched llama.cpp build lives, and skip reasons when it is absent (tests marked `llama`)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from slim2gguf import llama_build

BIN = llama_build.build_dir(False) / "bin"
STOCK_LIB = llama_build.BUILD_DIR / "stock" / "bin" / "libggml-base.so"
NOT_BUILT = "patched llama.cpp CPU build absent: run `slim2gguf build-llama` (or `bash scripts/setup.sh --llama`)"


def tool(name: str):
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name}: {NOT_BUILT}")
    return path


def require_llama_cpp_python():
    """Skip unless `import llama_cpp` works in a fresh interpreter (it loads libllama.so at import)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(f"llama-cpp-python not installed: {NOT_BUILT}")
    res = subprocess.run([sys.executable, "-c", "import llama_cpp"], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"llama_cpp does not import ({res.stderr.strip().splitlines()[-1:]}): {NOT_BUILT}")
