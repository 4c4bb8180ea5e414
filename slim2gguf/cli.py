"""`slim2gguf` command line: one sub-command per module, each with configure(parser) and run(args)."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import run_cli

# sub-command -> (module, one-line help). Modules are imported only when their command runs, so
# `slim2gguf inspect` does not pay for torch/transformers start-up.
COMMANDS = {
    "convert": ("slim2gguf.cmd_convert", "quantize a model with SliM-LLM and write a GGUF"),
    "eval": ("slim2gguf.cmd_eval", "quantize in memory and report perplexity (fake-quant, torch)"),
    "inspect": ("slim2gguf.cmd_inspect", "show the SLIM tensors of a GGUF: bit allocation, bpw"),
    "tune": ("slim2gguf.cmd_tune", "train a SLIM file's group scales end to end against the full-precision model"),
    "build-llama": ("slim2gguf.cmd_build", "fetch, patch and build llama.cpp and llama-cpp-python"),
    "run": ("slim2gguf.cmd_run", "generate text from a GGUF with the patched llama-cpp-python"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="slim2gguf", description=__doc__)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command's module is imported
            try:
                modules[name] = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name == module:
                    ap.error(f"command '{name}' is not available in this build")
                raise
            modules[name].configure(p)
    args = ap.parse_args(argv)
    return run_cli(modules[args.command].run, args)


if __name__ == "__main__":
    sys.exit(main())
