"""`slim2gguf run FILE -p PROMPT`: generate text from a GGUF (SLIM or stock) with the patched llama-cpp-python.

llama-cpp-python is installed by `slim2gguf build-llama`, with the patched llama.cpp libraries in its default
library folder, so nothing else needs configuring.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
import time
from pathlib import Path

from .errors import SlimError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="GGUF file")
    p.add_argument("-p", "--prompt", required=True, help="prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("-c", "--ctx-size", type=int, default=2048, help="context size (default 2048)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature (default 0: greedy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers to offload (CUDA build only)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template to the prompt")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def load_llama(path: Path, *, n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = 0,
               seed: int = 0, verbose: bool = False):
    """llama_cpp.Llama for a GGUF, with one-line errors for a missing install or an unloadable file."""
    path = Path(path)
    if not path.is_file():
        raise SlimError(f"{path}: no such file")
    try:
        from llama_cpp import Llama
    except (ImportError, FileNotFoundError, RuntimeError, OSError) as e:
        raise SlimError(f"llama-cpp-python is not usable ({e}); run `slim2gguf build-llama`") from e
    errors: list[str] = []
    with _llama_errors_captured(errors):
        try:
            return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                         n_gpu_layers=n_gpu_layers, seed=seed, verbose=verbose, logits_all=False)
        except ValueError as e:  # llama-cpp-python raises ValueError("Failed to load model from file: ...")
            # llama.cpp's own reason (e.g. a corrupt SLIM tensor: tensor, row and group), which a quiet
            # llama-cpp-python sends to /dev/null
            reasons = [m.split("error loading model: ", 1)[1] for m in errors if "error loading model: " in m]
            reasons = [r for r in reasons if not r.startswith("llama_model_loader: failed to load model")]
            why = (reasons or errors or [f"{e} (rerun with --verbose for llama.cpp's log)"])[0]
            raise SlimError(f"llama.cpp cannot load {path}: {why}") from e


GGML_LOG_LEVEL_ERROR = 4  # ggml.h of the vendored llama.cpp (llama-cpp-python's _logger still maps 3 to errors)


@contextlib.contextmanager
def _llama_errors_captured(errors: list[str]):
    """Collect llama.cpp's error-level log lines into `errors` (one line each) while passing every line on to
    llama-cpp-python's own log callback, which prints them or not as it is told."""
    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        if level == GGML_LOG_LEVEL_ERROR:
            line = text.decode("utf-8", errors="replace").strip()
            if line:
                errors.append(line)
        _logger.llama_log_callback(level, text, user_data)

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def run(args: argparse.Namespace) -> int:
    llm = load_llama(args.file, n_ctx=args.ctx_size, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                     seed=args.seed, verbose=args.verbose)
    t0 = time.time()
    n_tokens = 0
    if args.chat:
        stream = llm.create_chat_completion(messages=[{"role": "user", "content": args.prompt}],
                                            max_tokens=args.n_predict, temperature=args.temp, stream=True)
        for chunk in stream:
            text = chunk["choices"][0]["delta"].get("content", "")
            if text:
                n_tokens += 1
                sys.stdout.write(text)
                sys.stdout.flush()
    else:
        sys.stdout.write(args.prompt)
        for chunk in llm(args.prompt, max_tokens=args.n_predict, temperature=args.temp, stream=True):
            n_tokens += 1
            sys.stdout.write(chunk["choices"][0]["text"])
            sys.stdout.flush()
    dt = time.time() - t0
    print(f"\n\n[{n_tokens} tokens in {dt:.2f} s, {n_tokens / max(dt, 1e-9):.1f} tokens/s]", file=sys.stderr)
    return 0
