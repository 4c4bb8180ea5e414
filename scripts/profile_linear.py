"""Profile one linear's quantization (SBA + SQC + weighted fit + GPTQ) at a given shape on the GPU or CPU:
the phase seconds (quant.phase_clock) and cProfile's top functions, to find where a layer's time goes.

    python scripts/profile_linear.py --rows 11008 --cols 4096 [--device cuda] [--top 25]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quant.config import QuantConfig  # noqa: E402
from quant.hessian import HessianAccumulator  # noqa: E402
from quant.layer import quantize_linear  # noqa: E402
from quant.phase_clock import PhaseClock  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=16384, help="calibration tokens behind H")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=2, help="runs; the first warms up (Triton compiles)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator(device=dev).manual_seed(0)
    acc = HessianAccumulator(a.cols, dev)
    for _ in range(a.tokens // 2048):
        acc.add_batch(torch.randn(2048, a.cols, device=dev, generator=g))
    W = torch.randn(a.rows, a.cols, device=dev, generator=g) * 0.02
    X_kl = torch.randn(cfg_tokens := QuantConfig().kl_tokens, a.cols, device=dev, generator=g)
    cfg = QuantConfig(method="slim", bits=2)
    for r in range(a.repeat):
        clock = PhaseClock(dev)
        prof = cProfile.Profile() if r == a.repeat - 1 else None
        t0 = time.time()
        if prof:
            prof.enable()
        quantize_linear(W, acc.H, X_kl, cfg, 128, clock=clock)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if prof:
            prof.disable()
        print(f"run {r}: {time.time() - t0:.2f} s  {clock.rounded()}", flush=True)
    pstats.Stats(prof).sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
