"""The resolver's search over candidate values (:mod:`entities.status_tracker.resolver`). Pure.

:func:`_search`: depth first with forward checking, the lexicographically first consistent
assignment, bounded in steps; :func:`_hill_climb`: the fallback past the bound; :func:`_order`:
the installation order of the upgrades (dependencies first) and the cycles among them.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from .resolver_catalog import _Val


class _Exhausted(Exception):
    """The search passed its step bound (internal control flow, never escapes)."""


def _neg(v: _Val) -> int:
    return -v.packed


def _compatible(pi: str, vi: _Val, pj: str, vj: _Val) -> bool:
    d = vi.deps.get(pj)
    if d is not None and not d[0] <= vj.packed <= d[1]:
        return False
    d = vj.deps.get(pi)
    return d is None or d[0] <= vi.packed <= d[1]


def _search(prods: Sequence[str], doms: list[list[_Val]], refs: Sequence[frozenset[str]],
            max_steps: int) -> list[_Val]:
    """Depth-first, values in order, forward checking: the lexicographically first consistent
    assignment (``refs[j]`` holds at least every product a value of ``doms[j]`` depends on).
    Raises _Exhausted past ``max_steps`` choices."""
    n = len(prods)
    # later components constrained together with each component: (j, its product, whether
    # some value of j depends on this component)
    later = [[(j, prods[j], prods[i] in refs[j]) for j in range(i + 1, n)
              if prods[j] in refs[i] or prods[i] in refs[j]] for i in range(n)]
    chosen: list[_Val] = [d[-1] for d in doms]
    steps = 0

    def rec(i: int, doms: list[list[_Val]]) -> bool:
        nonlocal steps
        if i == n:
            return True
        pi = prods[i]
        for v in doms[i]:
            steps += 1
            if steps > max_steps:
                raise _Exhausted
            vdeps = v.deps
            vp = v.packed
            new: list[list[_Val]] | None = None
            ok = True
            for j, pj, back in later[i]:
                d = vdeps.get(pj)
                if d is None and not back:
                    continue
                dj = doms[j]
                if d is None:
                    f = [w for w in dj if (e := w.deps.get(pi)) is None or e[0] <= vp <= e[1]]
                elif not back:  # a version window: a slice, the domain being sorted newest first
                    f = dj[bisect_left(dj, -d[1], key=_neg):bisect_right(dj, -d[0], key=_neg)]
                else:
                    lo, hi = d
                    f = [w for w in dj if lo <= w.packed <= hi
                         and ((e := w.deps.get(pi)) is None or e[0] <= vp <= e[1])]
                if not f:
                    ok = False
                    break
                if len(f) != len(dj):
                    if new is None:
                        new = list(doms)
                    new[j] = f
            if ok:
                chosen[i] = v
                if rec(i + 1, doms if new is None else new):
                    return True
        return False

    if not rec(0, doms):  # pragma: no cover - keeping everything is always consistent
        raise AssertionError("no consistent assignment, not even keeping every release")
    return chosen


def _hill_climb(prods: Sequence[str], doms: list[list[_Val]]) -> list[_Val]:
    """From "keep everything", raise one component at a time to its newest release consistent
    with all the others, in priority order, until nothing moves (versions only grow: it ends)."""
    n = len(prods)
    cur = [d[-1] for d in doms]
    moved = True
    while moved:
        moved = False
        for i in range(n):
            for v in doms[i]:
                if v.packed <= cur[i].packed:
                    break
                if all(j == i or _compatible(prods[i], v, prods[j], cur[j]) for j in range(n)):
                    cur[i] = v
                    moved = True
                    break
    return cur


def _order(prods: Sequence[str], chosen: Sequence[_Val]) -> tuple[list[int], list[list[int]]]:
    """Upgraded components in installation order (dependencies first) and the cycles among them.

    Tarjan's strongly connected components over "new release of i depends on upgraded j": it
    emits a component only after every component it depends on, so its emission order is a
    topological order; roots and successors are visited in priority order (deterministic)."""
    up = [i for i, v in enumerate(chosen) if v.release is not None]
    pos = {prods[i]: i for i in up}
    succ = {i: sorted(pos[p] for p in chosen[i].depset & pos.keys()) for i in up}
    if not any(succ.values()):
        return up, []
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on: set[int] = set()
    order: list[int] = []
    cycles: list[list[int]] = []

    def strong(v: int) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[int] = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comp.sort()
            order.extend(comp)
            if len(comp) > 1:
                cycles.append(comp)

    for i in up:
        if i not in index:
            strong(i)
    return order, cycles
