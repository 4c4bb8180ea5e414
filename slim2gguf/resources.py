"""What a run cost this process: CPU time and peak memory (the summaries of `convert` and `eval` report them)."""
from __future__ import annotations

import resource


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): wall time is inflated on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mib(device: str) -> float | None:
    """torch's peak allocated CUDA memory, None when the run was not on CUDA."""
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None
