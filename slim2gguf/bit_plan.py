"""`convert --target-bpw X`: which type each tensor of the file gets.

quant/plan.py scores every candidate of every tensor (SLIM2/SLIM3 for the decoder linears, llama.cpp's stock
types for them and for token_embd/output), quant/bit_budget.py picks the cheapest-loss mix that fits
X bits per weight (tensor bpw: 8 x tensor bytes / weights, slim2gguf.bpw, the report's axis). This module knows
the file side: which stock types can hold which widths, bytes per type, the budget left after the tensors that
are not chosen (norms, biases: F32; linears SLIM cannot hold: the fallback type), and the plan's table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quant.bit_budget import Option, allocate
from quant.plan import EMBEDDING, OUTPUT, PlanStats, tied_output

from . import ggml_quants
from .errors import SlimError
from .format import slim_type

# candidates, best first where two can hold a width; K types need rows of 256
LINEAR_STOCK = (("q4_k", "q4_0"), ("q5_k", "q5_0"), ("q6_k",), ("q8_0",))
TABLE_STOCK = (("q2_k",), ("q3_k",), ("q4_k", "q4_0"), ("q5_k", "q5_0"), ("q6_k",), ("q8_0",))
FIXED_BYTES_PER_WEIGHT = {"f32": 4, "f16": 2}


def stock_candidates(name: str, rows: int, cols: int) -> list[str]:
    table = TABLE_STOCK if name in (EMBEDDING, OUTPUT) else LINEAR_STOCK
    out = []
    for alternatives in table:
        t = next((t for t in alternatives if ggml_quants.row_bytes(t, cols) is not None), None)
        if t is not None:
            out.append(t)
    return out


def stock_fake(t: str, W, importance):
    import torch
    imp = None if importance is None else importance.float().cpu().numpy()
    return torch.from_numpy(ggml_quants.fake_quant(t, W.float().cpu().numpy(), imp)).to(W.device)


def type_bytes(t: str, shape: tuple[int, int], group_size: int | None) -> int:
    rows, cols = shape
    if t.startswith("slim"):
        return rows * slim_type(int(t[4:]), group_size).row_bytes(cols)
    return rows * ggml_quants.row_bytes(t, cols)


@dataclass
class Plan:
    target_bpw: float
    types: dict[str, str]                      # hf weight name -> slim2 | slim3 | stock type
    losses: dict[str, float]                   # predicted loss per token of the chosen type
    importance: dict[str, np.ndarray | None]   # the stock quantizers' importance vector (imatrix) per tensor
    nbytes: dict[str, int]
    fixed_bytes: int
    weights: int
    alternatives: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def bpw(self) -> float:
        return 8 * (sum(self.nbytes.values()) + self.fixed_bytes) / self.weights

    def slim_bits(self) -> dict[str, int]:
        return {n: int(t[4:]) for n, t in self.types.items() if t.startswith("slim")}

    def stock(self) -> dict[str, str]:
        return {n: t for n, t in self.types.items() if not t.startswith("slim")}

    def state(self) -> dict:
        return {"target_bpw": self.target_bpw, "types": self.types, "losses": self.losses,
                "importance": {k: (None if v is None else np.asarray(v).tolist()) for k, v in self.importance.items()},
                "nbytes": self.nbytes, "fixed_bytes": self.fixed_bytes, "weights": self.weights,
                "alternatives": self.alternatives}

    @classmethod
    def from_state(cls, s: dict) -> "Plan":
        imp = {k: (None if v is None else np.asarray(v, dtype=np.float32)) for k, v in s["importance"].items()}
        return cls(s["target_bpw"], s["types"], s["losses"], imp, s["nbytes"], s["fixed_bytes"], s["weights"],
                   s.get("alternatives", {}))

    def table(self) -> str:
        """Counts per (tensor kind, type) and the budget line: what the user reads after the plan is made."""
        from collections import Counter
        kinds = Counter()
        for n, t in self.types.items():
            kind = n.removeprefix("model.").split(".", 2)[-1] if n.startswith("model.layers.") else n
            kinds[(kind.removesuffix(".weight"), t)] += 1
        lines = [f"bit budget: target {self.target_bpw:.3f} bpw, planned {self.bpw:.3f} bpw (tensor bytes / weights)",
                 f"  {'tensor':28s} {'type':7s} count"]
        for (kind, t), c in sorted(kinds.items()):
            lines.append(f"  {kind:28s} {t:7s} {c}")
        return "\n".join(lines)


def fixed_bytes_and_weights(model, planned: set[str], fallback: str) -> tuple[int, int]:
    """Bytes of the tensors the plan does not choose (1-D: F32; 2-D: the fallback type) and all weights.
    Shapes only: the parameters may still be on the meta device (a streamed conversion), where every tensor's
    data_ptr is 0, so a tensor counts once per Parameter object, and a tied output head not at all."""
    fixed, weights, seen = 0, 0, set()
    head = model.get_output_embeddings()
    tied_copy = head.weight if tied_output(model) and head.weight is not model.get_input_embeddings().weight else None
    for name, p in model.named_parameters(remove_duplicate=False):
        key = ("meta", id(p)) if p.is_meta else ("ptr", p.data_ptr())
        if key in seen or p is tied_copy:
            continue
        seen.add(key)
        weights += p.numel()
        if name in planned:
            continue
        if p.dim() < 2:
            fixed += 4 * p.numel()
        else:
            rb = ggml_quants.row_bytes(fallback, p.shape[1]) if fallback not in FIXED_BYTES_PER_WEIGHT else None
            fixed += p.shape[0] * rb if rb else p.numel() * FIXED_BYTES_PER_WEIGHT.get(fallback, 2)
    return fixed, weights


def reachable_range(model, preferred_group: int, fallback: str) -> tuple[float, float]:
    """(lowest, highest) tensor bpw the candidates of quant/plan.py can give this model, from shapes alone: a
    target outside it is refused before minutes of measuring."""
    from quant.pipeline import LINEAR_NAMES
    from quant.quantizer import pick_group_size

    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = tied_output(model)
    shapes = {f"model.layers.{li}.{n}.weight": tuple(model.get_submodule(f"model.layers.{li}.{n}").weight.shape)
              for li in range(model.config.num_hidden_layers) for n in LINEAR_NAMES}
    shapes = {n: s for n, s in shapes.items() if pick_group_size(s[1], preferred_group) is not None}
    shapes[EMBEDDING] = tuple(embed.weight.shape)
    if not tied:
        shapes[OUTPUT] = tuple(head.weight.shape)
    lo = hi = 0
    for n, (rows, cols) in shapes.items():
        g = pick_group_size(cols, preferred_group)
        sizes = [type_bytes(t, (rows, cols), None) for t in stock_candidates(n, rows, cols)]
        if g is not None and (n not in (EMBEDDING, OUTPUT) or not tied):
            sizes += [type_bytes(f"slim{b}", (rows, cols), g) for b in (2, 3)]
        lo, hi = lo + min(sizes), hi + max(sizes)
    fixed, weights = fixed_bytes_and_weights(model, set(shapes), fallback)
    return 8 * (lo + fixed) / weights, 8 * (hi + fixed) / weights


def check_target(model, target_bpw: float, preferred_group: int, fallback: str) -> None:
    lo, hi = reachable_range(model, preferred_group, fallback)
    if not lo <= target_bpw <= hi:
        raise SlimError(f"--target-bpw {target_bpw:g} is outside what this model can be made at ({lo:.3f} to "
                        f"{hi:.3f} bpw: every tensor at its smallest or largest candidate type)")


def make_plan(stats: PlanStats, model, target_bpw: float, fallback: str) -> Plan:
    imp = {n: (None if v is None else v.numpy()) for n, v in stats.importance.items()}
    return _allocate(stats.losses, stats.shapes, stats.group_size, imp, model, target_bpw, fallback)


def retarget(plan: Plan, model, target_bpw: float, preferred_group: int, fallback: str) -> Plan:
    """The plan's measured losses (every candidate of every tensor) allocated again at another target: one
    measuring pass serves files of several sizes (`convert --plan PLAN.json --target-bpw Y`)."""
    from quant.quantizer import pick_group_size

    if not plan.alternatives:
        raise SlimError("this plan holds no measured alternatives (made before they were kept): measure again "
                        "with --target-bpw alone")
    params = dict(model.named_parameters(remove_duplicate=False))
    shapes = {n: tuple(params[n].shape) for n in plan.alternatives}
    groups = {n: g for n, (_, cols) in shapes.items() if (g := pick_group_size(cols, preferred_group)) is not None}
    return _allocate(plan.alternatives, shapes, groups, plan.importance, model, target_bpw, fallback)


def _allocate(losses: dict[str, dict[str, float]], shapes: dict, groups: dict, importance: dict, model,
              target_bpw: float, fallback: str) -> Plan:
    """The cheapest-loss choice of one candidate per tensor within target_bpw (quant/bit_budget.allocate)."""
    names = set(losses)
    fixed, weights = fixed_bytes_and_weights(model, names, fallback)
    options = {n: [Option(t, type_bytes(t, shapes[n], groups.get(n)), loss) for t, loss in losses[n].items()]
               for n in names}
    budget = target_bpw * weights / 8 - fixed
    cheapest = sum(min(o.nbytes for o in opts) for opts in options.values())
    if cheapest > budget:
        low = 8 * (cheapest + fixed) / weights
        raise SlimError(f"--target-bpw {target_bpw:g} is below what this model can be made at ({low:.3f} bpw: "
                        "every linear SLIM2 and the smallest token_embd/output types)")
    chosen = allocate(options, budget)
    return Plan(target_bpw, {n: o.type for n, o in chosen.items()}, {n: o.loss for n, o in chosen.items()},
                {n: importance.get(n) for n in names}, {n: o.nbytes for n, o in chosen.items()}, fixed, weights,
                {n: dict(losses[n]) for n in names})


def load_plan_file(path, model) -> Plan:
    """`convert --plan FILE`: a plan measured before (written by --save-plan, or an OUT.ckpt/plan.json kept with
    --keep-checkpoints), checked against this model's tensors."""
    import json
    try:
        plan = Plan.from_state(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SlimError(f"cannot read the plan {path}: {e}") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(n for n in plan.types if n not in params)
    if unknown:
        raise SlimError(f"the plan {path} names tensors this model does not have: {', '.join(unknown[:3])}")
    return plan


def save_plan_file(plan: Plan, path) -> None:
    """The plan with every measured alternative (`convert --save-plan FILE`, and the checkpoint's plan.json)."""
    import json
    from pathlib import Path

    from .checkpoint import atomic_write_bytes
    atomic_write_bytes(Path(path), json.dumps(plan.state()).encode())
