"""What `inspect` reports about a GGUF: per tensor (type, shape, group size, groups per bit-width, bpw) and whole
file totals, validating every SLIM tensor on the way; and that report as text. `convert` reads its summary from
the same report of the file it wrote.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .bpw import BpwTotals, bits_per_weight
from .format import SLIM_TYPES, Keys, is_slim, row_bits
from .gguf_in import metadata, open_gguf

BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight)?$")   # blk.N.KIND[.weight]
# metadata shown with the report besides the slim.* keys
_SHOWN_KEYS = ("general.architecture", "general.name", "general.file_type")


def analyze(path: Path, *, validate: bool = True) -> dict[str, Any]:
    """Per-tensor and whole-file report of a GGUF (what `inspect --json` prints)."""
    from . import reference_decoder

    path = Path(path)
    reader = open_gguf(path)
    totals = BpwTotals(file_bytes=path.stat().st_size)
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
                                 "bytes": nbytes, "bpw": bits_per_weight(nbytes, n)}
        if is_slim(ttype):
            st = SLIM_TYPES[int(ttype)]
            ne0 = shape[0]
            if validate:  # first: also refuses degenerate shapes (ne0 = 0, no rows, partial rows)
                reference_decoder.validate(t.data, ne0, st, t.name)
            rows = n // ne0
            bits = row_bits(t.data, ne0, st)
            counts = Counter(int(b) for b in bits)
            entry.update({"group_size": st.group_size, "avg_bits": st.avg_bits, "rows": rows,
                          "groups_per_row": len(bits),
                          "groups": {str(b): counts.get(b, 0) for b in st.allowed_bits},
                          "bits": bits.tolist()})
            for b, c in counts.items():
                slim_col_groups[b] += c
                slim_groups[b] += c * rows
        tensors.append(entry)
        totals.add(t.name, ttype.name, shape, n, nbytes, is_slim(ttype))
        bt = by_type[ttype.name]
        bt["tensors"] += 1
        bt["elements"] += n
        bt["bytes"] += nbytes
    totals_out = {
        "file_bytes": totals.file_bytes,
        "tensors": len(tensors),
        "elements": totals.weights,
        "tensor_bytes": totals.tensor_bytes,
        "bpw_file": totals.bpw_file,
        "bpw_tensors": totals.bpw_tensors,
        "slim_tensors": sum(1 for e in tensors if "group_size" in e),
        "slim_elements": totals.slim_weights,
        "slim_bytes": totals.slim_bytes,
        "bpw_slim": totals.bpw_slim,
        "slim_groups": {str(b): slim_groups[b] for b in sorted(slim_groups)},
        "slim_column_groups": {str(b): slim_col_groups[b] for b in sorted(slim_col_groups)},
        "by_type": {k: dict(v, bpw=bits_per_weight(v["bytes"], v["elements"])) for k, v in sorted(by_type.items())},
    }
    info = {k: v for k, v in metadata(reader).items() if k.startswith(Keys.PREFIX) or k in _SHOWN_KEYS}
    return {"file": str(path), "metadata": info, "totals": totals_out, "tensors": tensors}


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def plan_summary(meta: dict[str, Any]) -> str:
    """A bit budget's plan (`slim.plan.*`): per tensor kind, the type of each layer, runs collapsed."""
    kinds: dict[str, list[tuple[int, str]]] = defaultdict(list)
    other = []
    for name, t in zip(meta[Keys.Plan.TENSORS], meta[Keys.Plan.TYPES]):
        m = BLOCK_RE.match(name)
        if m:
            kinds[m.group(2)].append((int(m.group(1)), t))
        else:
            other.append(f"{name.removesuffix('.weight')} {t}")
    lines = [f"bit budget plan (target {meta.get(Keys.Plan.TARGET_BPW, 0):.3f} bpw): " + ", ".join(other)]
    for kind, per_layer in sorted(kinds.items()):
        per_layer.sort()
        runs, start = [], 0
        for i in range(1, len(per_layer) + 1):
            if i == len(per_layer) or per_layer[i][1] != per_layer[start][1]:
                a, b = per_layer[start][0], per_layer[i - 1][0]
                runs.append(f"{per_layer[start][1]} ({a}" + (f"-{b})" if b > a else ")"))
                start = i
        lines.append(f"  {kind:<12} " + ", ".join(runs))
    return "\n".join(lines)


def format_report(rep: dict[str, Any], all_tensors: bool = False) -> str:
    """The report as `inspect` prints it: metadata, a table of the (SLIM) tensors, totals by type and file."""
    lines = [f"{rep['file']}"]
    meta = rep["metadata"]
    plan_arrays = (Keys.Plan.TENSORS, Keys.Plan.TYPES, Keys.Plan.PREDICTED_LOSS)
    for k, v in meta.items():
        if k in plan_arrays:
            v = f"[{len(v)} entries: see the plan below]"
        lines.append(f"  {k} = {v}")
    if Keys.Plan.TENSORS in meta:
        lines += ["", plan_summary(meta)]
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
                     f"{fmt_bytes(v['bytes']):>12} {v['bpw']:7.3f} bpw")
    grp = ", ".join(f"{b}-bit {n:,d}" for b, n in t["slim_groups"].items())
    lines += ["",
              f"file: {fmt_bytes(t['file_bytes'])} ({t['file_bytes']:,d} bytes), {t['tensors']} tensors, "
              f"{t['elements']:,d} weights, {t['bpw_file']:.4f} bpw (tensors alone: "
              f"{t['bpw_tensors']:.4f} bpw)",
              f"SLIM: {t['slim_tensors']} tensors, {t['slim_elements']:,d} weights, "
              f"{fmt_bytes(t['slim_bytes'])}, {t['bpw_slim']:.4f} bpw" + (f"; groups: {grp}" if grp else "")]
    return "\n".join(lines)
