"""Summarize an `ncu --csv --metrics ...` run per kernel: launches, total time, achieved DRAM bandwidth.

    python scripts/ncu_summary.py ncu.csv
"""
from __future__ import annotations

import csv
import sys
from collections import defaultdict


def kernel_key(name: str) -> str:
    """'void f<(ggml_type)101, 1, 2, 16, 2, false>(const char *, ...)' -> 'f<101,1,2,16,2,false>': the template
    arguments tell a kernel's instances apart (the fused gate/up pair, rows per warp, prefetch)."""
    i = name.find("<")
    if i < 0:
        return name.split("(")[0].split()[-1]
    depth = 0
    for j in range(i, len(name)):
        depth += {"<": 1, ">": -1}.get(name[j], 0)
        if depth == 0:
            break
    args = name[i + 1:j].replace("(ggml_type)", "").replace(" ", "")
    return f"{name[:i].split()[-1]}<{args}>"


def main(path: str) -> None:
    rows = list(csv.DictReader(line for line in open(path, errors="replace") if line.startswith('"')))
    per = defaultdict(lambda: defaultdict(list))
    for r in rows:
        name = kernel_key(r["Kernel Name"])
        key = (name, r["ID"])
        try:
            per[name][r["Metric Name"]].append((key, float(r["Metric Value"].replace(",", ""))))
        except ValueError:
            pass
    print(f"{'kernel':44s} {'n':>5s} {'time us':>10s} {'avg us':>8s} {'GB read':>9s} {'GB/s':>7s} {'dram%':>6s} {'sm%':>6s} {'occ%':>6s} {'regs':>5s}")
    for name, m in sorted(per.items(), key=lambda kv: -sum(v for _, v in kv[1].get("gpu__time_duration.sum", []))):
        t = [v for _, v in m.get("gpu__time_duration.sum", [])]  # ns
        by = [v for _, v in m.get("dram__bytes_read.sum", [])]
        avg = lambda k: sum(v for _, v in m.get(k, [])) / max(1, len(m.get(k, [])))  # noqa: E731
        tt = sum(t)
        print(f"{name[:44]:44s} {len(t):5d} {tt / 1e3:10.1f} {tt / max(1, len(t)) / 1e3:8.2f} {sum(by) / 1e9:9.3f} "
              f"{sum(by) / max(tt, 1):7.0f} {avg('dram__throughput.avg.pct_of_peak_sustained_elapsed'):6.1f} "
              f"{avg('sm__throughput.avg.pct_of_peak_sustained_elapsed'):6.1f} "
              f"{avg('sm__warps_active.avg.pct_of_peak_sustained_active'):6.1f} {avg('launch__registers_per_thread'):5.0f}")


if __name__ == "__main__":
    main(sys.argv[1])
