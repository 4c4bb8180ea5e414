"""`slim2gguf inspect FILE [--json] [--plot out.png]`: the SLIM tensors of a GGUF, their bit allocation and bpw.

Every SLIM tensor is validated (tags legal, average exact, scales finite, the same tags on every row); a file
that gguf-py cannot parse, a truncated file or a failed validation is a one-line error (exit 2).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlimError
from .format import Keys
from .file_report import BLOCK_RE, analyze, format_report



def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="GGUF file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write a heat map of the bit allocation per layer/tensor")
    p.add_argument("--tensors", action="store_true", help="list every tensor, not only the SLIM ones")


def plot_allocation(rep: dict[str, Any], out_png: Path) -> Path:
    """Heat map: one panel per tensor kind (attn_qkv or attn_q/k/v, ffn_down, ...), layers down, column groups
    across."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    kinds: dict[str, dict[int, list[int]]] = defaultdict(dict)
    stock: dict[str, dict[int, str]] = defaultdict(dict)   # block tensors in a stock type (a bit budget's plan)
    for e in rep["tensors"]:
        m = BLOCK_RE.match(e["name"])
        if m and "bits" in e:
            kinds[m.group(2)][int(m.group(1))] = e["bits"]
        elif m and len(e["shape"]) == 2 and min(e["shape"]) > 1:
            stock[m.group(2)][int(m.group(1))] = e["type"]
    if not kinds:
        raise SlimError(f"{rep['file']}: no SLIM tensors to plot")
    if not any(k in kinds for k in stock):
        stock = {}     # a plain SLIM file: its fallback tensors are not part of the picture
    for k in stock:
        kinds.setdefault(k, {})
    # attn_qkv: q, k and v fused (one bit map); a bit budget's file may hold some layers fused, some not
    order = ["attn_qkv", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    names = sorted(kinds, key=lambda k: (order.index(k) if k in order else len(order), k))
    n_layers = 1 + max([b for k in kinds.values() for b in k] + [b for k in stock.values() for b in k])
    widths = [max([len(v) for v in kinds[k].values()] + [1]) for k in names]
    all_bits = sorted({b for k in kinds.values() for v in k.values() for b in v})
    lo, hi = min(all_bits), max(all_bits)
    levels = list(range(lo, hi + 1))
    palette = {1: "#313695", 2: "#74add1", 3: "#fdae61", 4: "#a50026"}
    cmap = ListedColormap([palette[b] for b in levels]).with_extremes(bad="#dddddd")
    norm = BoundaryNorm([b - 0.5 for b in levels] + [hi + 0.5], cmap.N)
    fig_w = min(24.0, 2.0 + 0.09 * sum(widths) + 0.6 * len(names))
    fig_h = min(16.0, 2.2 + 0.22 * n_layers)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(names), figsize=(fig_w, fig_h), squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": [max(w, 3) for w in widths]})
    im = None
    for ax, name, w in zip(axes[0], names, widths):
        grid = np.full((n_layers, w), np.nan)
        for layer, bits in kinds[name].items():
            grid[layer, : len(bits)] = bits
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        for layer, t in stock.get(name, {}).items():   # grey row, labelled with its stock type
            ax.text((w - 1) / 2, layer, t, ha="center", va="center", fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("group", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xticks(range(0, w, max(1, -(-w // 4))))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if ax is axes[0][0]:
            ax.set_ylabel("layer")
        else:
            ax.set_yticklabels([])
    meta = rep["metadata"]
    t = rep["totals"]
    title = (f"{Path(rep['file']).name}: SLIM bit allocation per layer and tensor\n"
             + (f"(bit budget {meta[Keys.Plan.TARGET_BPW]:.3f} bpw: SLIM2/SLIM3/stock per tensor; "
                if Keys.Plan.TARGET_BPW in meta else f"(avg {meta.get('slim.bits', '?')} bits; ")
             + f"SLIM {t['bpw_slim']:.3f} bpw, file {t['bpw_file']:.3f} bpw)")
    fig.suptitle(title, fontsize=10)
    cbar = fig.colorbar(im, ax=axes[0].tolist(), ticks=levels, fraction=0.03, pad=0.01)
    cbar.set_label("bits per weight of the group")
    out_png = Path(out_png)
    try:
        fig.savefig(out_png, dpi=110)
    except OSError as e:
        raise SlimError(f"cannot write {out_png}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out_png


def run(args: argparse.Namespace) -> int:
    rep = analyze(args.file)
    if args.plot:
        plot_allocation(rep, args.plot)
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(rep, all_tensors=args.tensors))
        if args.plot:
            print(f"bit allocation heat map: {args.plot}")
    return 0
