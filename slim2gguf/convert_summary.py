"""The closing summary of a conversion: a dict (printed as the last line, JSON) and the human-readable text.

Every size and bpw in it is measured from the written file (file_report.analyze, bpw.py's definitions); times
are per stage (StageTimes), memory and CPU time from resources.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from quant.phase_clock import PhaseClock

from .resources import cpu_seconds, peak_gpu_mib, peak_rss_mib


class StageTimes(PhaseClock):
    """Wall seconds per named stage of `convert` (`with times.stage("load"): ...`) and since the start of the run;
    nothing is synchronised (a stage ends with its results on the host)."""

    def __init__(self):
        super().__init__()
        self.start = time.time()

    stage = PhaseClock.__call__

    def total(self) -> float:
        return time.time() - self.start


def build_summary(*, out: Path, model: str, config, n_layers: int, resumed_layers: int, totals: dict[str, Any],
                  written, times: StageTimes, device: str, calibration: dict | None,
                  layers_held: int | None = None, phase_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The summary dict. config: the QuantConfig; totals: analyze(out)["totals"]; written: gguf_out.WriteReport;
    layers_held: the most decoder layers the loader held at once (weights.LayerStream); phase_seconds: where the
    quantization stage's time went (quant.phase_clock: load, capture, cholesky, sba, gptq, forward, train)."""
    gpu_peak = peak_gpu_mib(device)
    stock_written = {w.name: w.type for w in written.tensors if not w.type.startswith("SLIM") and len(w.shape) > 1}
    return {
        "output": str(out), "model": model, "bits": config.bits, "method": config.method, "sba": config.sba,
        "sqc": config.sqc, "layers": n_layers, "resumed_layers": resumed_layers,
        "fuse_qkv": config.fuse_qkv, "joint_qkv": config.joint_qkv,
        # per-tensor SBA maps fuse only where they coincide: how many did is worth seeing (GPU decode speed)
        "qkv_fused_layers": sum(w.name.endswith(".attn_qkv.weight") for w in written.tensors),
        "file_bytes": totals["file_bytes"], "bpw_file": round(totals["bpw_file"], 4),
        "bpw_slim": round(totals["bpw_slim"], 4), "slim_tensors": totals["slim_tensors"],
        "slim_weights": totals["slim_elements"], "weights": totals["elements"], "groups": totals["slim_groups"],
        "by_type": {k: v["tensors"] for k, v in totals["by_type"].items()},
        "stock_tensors": stock_written, "not_slim": sorted(set(written.fallbacks)),
        "seconds": round(times.total(), 1), "cpu_seconds": round(cpu_seconds(), 1),
        "load_seconds": round(times.seconds["load"], 1),
        "calibration_seconds": round(times.seconds["calibration"], 1),
        "quantize_seconds": round(times.seconds["quantize"], 1), "write_seconds": round(times.seconds["write"], 1),
        "plan_seconds": round(times.seconds.get("plan", 0.0), 1),   # --target-bpw's measuring pass
        "peak_rss_mib": round(peak_rss_mib(), 1), "peak_gpu_mib": round(gpu_peak, 1) if gpu_peak is not None else None,
        "layers_held": layers_held, "phase_seconds": phase_seconds or {}, "device": device,
        "calibration": calibration,
    }


def format_summary(s: dict[str, Any], fallback_type: str) -> str:
    """The text `convert` prints before the JSON line. fallback_type: the stock type of linears SLIM cannot hold."""
    groups = ", ".join(f"{b}-bit {n:,d}" for b, n in s["groups"].items())
    types = ", ".join(f"{k} x{n}" for k, n in s["by_type"].items())
    n_tensors = sum(s["by_type"].values())
    lines = [
        f"wrote {s['output']}",
        f"  file size    {s['file_bytes'] / 2**20:.2f} MiB ({s['file_bytes']:,d} bytes), {n_tensors} tensors: {types}",
        f"  bpw          {s['bpw_file']:.4f} whole file ({s['weights']:,d} weights), "
        f"{s['bpw_slim']:.4f} SLIM tensors ({s['slim_weights']:,d} weights)",
        f"  groups       {groups} (row groups in SLIM tensors)",
        "  stock types  " + (", ".join(f"{k} {v}" for k, v in s["stock_tensors"].items()) or "none")
        + "; norms F32",
    ]
    if s.get("fuse_qkv"):
        how = ("one SBA map for the three, --joint-qkv" if s["joint_qkv"]
               else "where their own SBA maps coincide; --joint-qkv shares one map")
        lines.append(f"  q/k/v        one attn_qkv tensor in {s['qkv_fused_layers']} of {s['layers']} layers ({how})")
    fallbacks = s["not_slim"]
    if fallbacks:
        lines.append(f"  not SLIM     {len(fallbacks)} linear weight(s) written as {fallback_type.upper()}"
                     f" (width not divisible by 64): {', '.join(fallbacks[:4])}{' ...' if len(fallbacks) > 4 else ''}")
    lines += [
        f"  time         {s['seconds']:.1f} s (loading {s['load_seconds']:.1f} s, calibration "
        f"{s['calibration_seconds']:.1f} s, "
        + (f"bit budget measuring {s['plan_seconds']:.1f} s, " if s["plan_seconds"] else "")
        + f"quantization {s['quantize_seconds']:.1f} s for "
        f"{s['layers'] - s['resumed_layers']} of {s['layers']} layers, writing {s['write_seconds']:.1f} s); "
        f"CPU time {s['cpu_seconds']:.1f} s",
    ]
    if s.get("phase_seconds"):
        lines.append("  layer loop   " + ", ".join(f"{k} {v:.1f} s" for k, v in s["phase_seconds"].items()))
    if s.get("tune"):
        t = s["tune"]
        from .tune import heldout_note
        lines.append(f"  tune         {t['epochs']} epoch(s) end to end, calibration KL {t['loss_before']:.4f} -> "
                     f"{t['loss_after']:.4f}{heldout_note(t)}, {t['seconds']:.1f} s")
    lines += [
        f"  peak memory  {s['peak_rss_mib']:.0f} MiB RSS"
        + (f", {s['peak_gpu_mib']:.0f} MiB GPU" if s["peak_gpu_mib"] is not None else "")
        + (f"; at most {s['layers_held']} of {s['layers']} decoder layers loaded at once"
           if s.get("layers_held") else ""),
    ]
    return "\n".join(lines)
