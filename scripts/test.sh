#!/usr/bin/env bash
# README's test command: set up .venv (with the patched llama.cpp, CPU) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --llama                  # also builds the patched llama.cpp (CPU) + llama-cpp-python
.venv/bin/python -m pytest -ra tests "$@"
