"""One error type for everything a user can cause, reported as one line with exit code 2."""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2


class SlimError(Exception):
    """A problem with the user's input or environment: printed as one line, no traceback."""


def run_cli(fn: Callable[..., int], *args) -> int:
    try:
        return fn(*args) or 0
    except SlimError as e:
        print(f"slim2gguf: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("slim2gguf: interrupted", file=sys.stderr)
        return 130
