"""`slim2gguf inspect FILE [--json] [--plot out.png]`: the SLIM tensors of a GGUF, their bit allocation and bpw.

Every SLIM tensor is validated (tags legal, average exact, scales finite, the same tags on every row); a file
that gguf-py cannot parse, a truncated file or a failed validation is a one-line error (exit 2).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlimError

SLIM_KEY_PREFIX = "slim."
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight)?$")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="GGUF file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write a heat map of the bit allocation per layer/tensor")
    p.add_argument("--tensors", action="store_true", help="list every tensor, not only the SLIM ones")


# --------------------------------------------------------------------------------------------------------------
# reading


def open_gguf(path: Path):
    """GGUFReader for path; SlimError (one line) for a missing, unreadable, corrupt or truncated file."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise SlimError(f"{path}: no such file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise SlimError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise SlimError(f"{path}: not a GGUF file (bad magic {magic!r})")
    try:
        reader = GGUFReader(path)
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cannot reshape" in msg or "exceeds remaining" in msg:
            raise SlimError(f"{path}: truncated or corrupt GGUF ({msg})") from None
        raise SlimError(f"{path}: corrupt GGUF ({msg})") from None
    except (IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError) as e:
        raise SlimError(f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {e})") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise SlimError(f"{path}: truncated GGUF: tensor {t.name} ends at byte {end}, file has {size}")
    return reader


def field_value(field) -> Any:
    """A reader field as a plain Python value (str, number, bool or list)."""
    v = field.contents()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def metadata(reader) -> dict[str, Any]:
    return {k: field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


# --------------------------------------------------------------------------------------------------------------
# analysis


def analyze(path: Path, *, validate: bool = True) -> dict[str, Any]:
    """Per-tensor and whole-file report of a GGUF (what `inspect --json` prints)."""
    from . import reference_decoder
    from .format import SLIM_TYPES

    path = Path(path)
    reader = open_gguf(path)
    file_size = path.stat().st_size
    meta = metadata(reader)
    tensors = []
    by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "elements": 0, "bytes": 0})
    slim_groups: Counter[int] = Counter()       # (row, group) blocks at each width, over all SLIM tensors
    slim_col_groups: Counter[int] = Counter()   # column groups at each width
    for t in reader.tensors:
        ttype = t.tensor_type
        shape = [int(x) for x in t.shape]   # ggml order: ne0 (row length) first
        n = int(t.n_elements)
        nbytes = int(t.n_bytes)
        entry: dict[str, Any] = {"name": t.name, "type": ttype.name, "shape": shape, "elements": n,
                                 "bytes": nbytes, "bpw": 8 * nbytes / n if n else 0.0}
        if int(ttype) in {int(k) for k in SLIM_TYPES}:
            st = SLIM_TYPES[int(ttype)]
            ne0 = shape[0]
            rows = n // ne0
            if validate:
                reference_decoder.validate(t.data, ne0, st, t.name)
            bits = reference_decoder.row_bits(t.data, ne0, st)
            counts = Counter(int(b) for b in bits)
            entry.update({"group_size": st.group_size, "avg_bits": st.avg_bits, "rows": rows,
                          "groups_per_row": len(bits),
                          "groups": {str(b): counts.get(b, 0) for b in st.allowed_bits},
                          "bits": bits.tolist()})
            for b, c in counts.items():
                slim_col_groups[b] += c
                slim_groups[b] += c * rows
        tensors.append(entry)
        bt = by_type[ttype.name]
        bt["tensors"] += 1
        bt["elements"] += n
        bt["bytes"] += nbytes
    slim = [e for e in tensors if "group_size" in e]
    total_elems = sum(e["elements"] for e in tensors)
    slim_elems = sum(e["elements"] for e in slim)
    slim_bytes = sum(e["bytes"] for e in slim)
    totals = {
        "file_bytes": file_size,
        "tensors": len(tensors),
        "elements": total_elems,
        "tensor_bytes": sum(e["bytes"] for e in tensors),
        "bpw_file": 8 * file_size / total_elems if total_elems else 0.0,
        "slim_tensors": len(slim),
        "slim_elements": slim_elems,
        "slim_bytes": slim_bytes,
        "bpw_slim": 8 * slim_bytes / slim_elems if slim_elems else 0.0,
        "slim_groups": {str(b): slim_groups[b] for b in sorted(slim_groups)},
        "slim_column_groups": {str(b): slim_col_groups[b] for b in sorted(slim_col_groups)},
        "by_type": {k: dict(v, bpw=8 * v["bytes"] / v["elements"] if v["elements"] else 0.0)
                    for k, v in sorted(by_type.items())},
    }
    info = {k: v for k, v in meta.items()
            if k.startswith(SLIM_KEY_PREFIX) or k in ("general.architecture", "general.name", "general.file_type")}
    return {"file": str(path), "metadata": info, "totals": totals, "tensors": tensors}


# --------------------------------------------------------------------------------------------------------------
# output


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_report(rep: dict[str, Any], all_tensors: bool = False) -> str:
    lines = [f"{rep['file']}"]
    for k, v in rep["metadata"].items():
        lines.append(f"  {k} = {v}")
    shown = [e for e in rep["tensors"] if all_tensors or "group_size" in e]
    if shown:
        widths = sorted({int(b) for e in rep["tensors"] if "groups" in e for b in e["groups"]})
        head = f"{'tensor':<32} {'type':<11} {'shape':>13} {'g':>4} " + \
            " ".join(f"{str(b) + 'b':>5}" for b in widths) + f" {'bpw':>6}"
        lines += ["", head, "-" * len(head)]
        for e in shown:
            shape = "x".join(str(s) for s in e["shape"])
            g = str(e.get("group_size", ""))
            counts = " ".join(f"{e['groups'].get(str(b), 0) if 'groups' in e else '':>5}" for b in widths)
            lines.append(f"{e['name']:<32} {e['type']:<11} {shape:>13} {g:>4} {counts} {e['bpw']:6.3f}")
    t = rep["totals"]
    lines += ["", "by type:"]
    for name, v in t["by_type"].items():
        lines.append(f"  {name:<11} {v['tensors']:4d} tensors {v['elements']:>13,d} weights "
                     f"{_fmt_bytes(v['bytes']):>12} {v['bpw']:7.3f} bpw")
    grp = ", ".join(f"{b}-bit {n:,d}" for b, n in t["slim_groups"].items())
    lines += ["",
              f"file: {_fmt_bytes(t['file_bytes'])} ({t['file_bytes']:,d} bytes), {t['tensors']} tensors, "
              f"{t['elements']:,d} weights, {t['bpw_file']:.4f} bpw",
              f"SLIM: {t['slim_tensors']} tensors, {t['slim_elements']:,d} weights, "
              f"{_fmt_bytes(t['slim_bytes'])}, {t['bpw_slim']:.4f} bpw" + (f"; groups: {grp}" if grp else "")]
    return "\n".join(lines)


def plot_allocation(rep: dict[str, Any], out_png: Path) -> Path:
    """Heat map: one panel per tensor kind (attn_q, ffn_down, ...), layers down, column groups across."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    kinds: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for e in rep["tensors"]:
        m = _BLOCK_RE.match(e["name"])
        if m and "bits" in e:
            kinds[m.group(2)][int(m.group(1))] = e["bits"]
    if not kinds:
        raise SlimError(f"{rep['file']}: no SLIM tensors to plot")
    order = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    names = sorted(kinds, key=lambda k: (order.index(k) if k in order else len(order), k))
    n_layers = 1 + max(b for k in kinds.values() for b in k)
    widths = [max(len(v) for v in kinds[k].values()) for k in names]
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
             f"(avg {meta.get('slim.bits', '?')} bits; SLIM {t['bpw_slim']:.3f} bpw, file {t['bpw_file']:.3f} bpw)")
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
