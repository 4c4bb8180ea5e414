#!/usr/bin/env bash
# README's test command: set up .venv (with the patched llama.cpp, CPU) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -ra tests "$@"
