"""`slim2gguf build-llama`: fetch llama-cpp-python's sdist, apply ggml_patch/, build llama.cpp's tools and
install a patched llama-cpp-python into this environment (logic: slim2gguf/llama_build.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import llama_build


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cuda", action="store_true", help="build with CUDA (GGML_CUDA=ON, sm_90a by default; "
                        "SLIM2GGUF_CUDA_ARCH overrides)")
    parser.add_argument("--prefix", type=Path, default=None,
                        help="also copy the tools and shared libraries into PREFIX/bin")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    parser.add_argument("--no-tests", action="store_true", help="skip test-backend-ops")
    parser.add_argument("--no-python", action="store_true", help="skip installing llama-cpp-python")


def run(args: argparse.Namespace) -> int:
    bdir = llama_build.build(cuda=args.cuda, prefix=args.prefix, jobs=args.jobs, tests=not args.no_tests,
                             python=not args.no_python)
    print(f"tools: {bdir / 'bin'} ({', '.join(llama_build.TOOLS)})")
    return 0
