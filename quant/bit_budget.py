"""Whole-file bit budget: which type each tensor gets so that the file has a given size and the predicted loss
(quant/sensitivity.py) is smallest. This is where a *tensor's* width is chosen; SBA (quant/sba.py) then chooses
each *group's* width inside a SLIM tensor around it.

A multiple-choice knapsack solved the classic greedy way: every tensor starts at its cheapest option; the
options that are worth buying lie on the lower convex hull of (bytes, loss), and the upgrade with the largest
loss saved per extra byte is bought next until the budget is spent. A last pass buys whatever single upgrade
still fits and saves the most, so the file lands just under the budget.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    type: str        # e.g. "slim2", "slim3", "q4_k", "q8_0"
    nbytes: int
    loss: float      # predicted loss increase (any unit shared by all tensors)


def convex_hull(options: list[Option]) -> list[Option]:
    """The options worth buying, cheapest first: each costs more and loses less than the one before, at a
    falling loss saved per byte (dominated and non-convex options dropped)."""
    pts = sorted(options, key=lambda o: (o.nbytes, o.loss))
    front = []
    for o in pts:                     # Pareto: strictly less loss for more bytes
        if not front or o.loss < front[-1].loss:
            if front and o.nbytes == front[-1].nbytes:
                front[-1] = o
            else:
                front.append(o)
    hull: list[Option] = []
    for o in front:                   # lower convex hull
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the segment a -> o: drop it
            if (b.loss - a.loss) * (o.nbytes - a.nbytes) >= (o.loss - a.loss) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def allocate(options: dict[str, list[Option]], budget_bytes: float) -> dict[str, Option]:
    """The chosen option per tensor: total bytes <= budget_bytes (if the cheapest choice already exceeds it,
    the cheapest choice), smallest total predicted loss the greedy finds."""
    hulls = {name: convex_hull(opts) for name, opts in options.items()}
    choice = {name: 0 for name in hulls}
    spent = sum(h[0].nbytes for h in hulls.values())
    heap = []

    def push(name):
        h, i = hulls[name], choice[name]
        if i + 1 < len(h):
            gain = (h[i].loss - h[i + 1].loss) / (h[i + 1].nbytes - h[i].nbytes)
            heapq.heappush(heap, (-gain, name, i))

    for name in hulls:
        push(name)
    while heap:
        _, name, i = heapq.heappop(heap)
        if choice[name] != i:
            continue
        h = hulls[name]
        extra = h[i + 1].nbytes - h[i].nbytes
        if spent + extra > budget_bytes:
            continue              # may still fit after others: the filling pass looks again
        choice[name] = i + 1
        spent += extra
        push(name)
    # fill: single upgrades (any option of the tensor, not only the hull's next) that still fit, best saving first
    chosen = {name: hulls[name][i] for name, i in choice.items()}
    while True:
        best = None
        for name, opts in options.items():
            cur = chosen[name]
            for o in opts:
                extra = o.nbytes - cur.nbytes
                if extra > 0 and spent + extra <= budget_bytes and o.loss < cur.loss:
                    if best is None or cur.loss - o.loss > best[0]:
                        best = (cur.loss - o.loss, name, o, extra)
        if best is None:
            return chosen
        _, name, o, extra = best
        chosen[name] = o
        spent += extra
