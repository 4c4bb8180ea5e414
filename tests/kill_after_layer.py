"""Run the slim2gguf CLI and SIGKILL the process right after layer N's checkpoint is written: the hard
interruption `convert --resume` must recover from (no clean-up code runs), made from outside the package.

    python tests/kill_after_layer.py N convert MODEL ... -o OUT
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slim2gguf import checkpoint, cli  # noqa: E402


def main() -> int:
    kill_after = int(sys.argv[1])
    save_layer = checkpoint.Checkpoints.save_layer

    def save_then_die(self, index, layer):
        save_layer(self, index, layer)
        if index == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpoints.save_layer = save_then_die
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
