"""The dependency resolver of X.1368 Appendix II: which release each component of a device should run. Pure.

Appendix II: devices come in hardware revisions, carry add-on boards that need their own firmware,
and run several components whose releases depend on each other; the ledger resolves this. Given
a :class:`Catalog` (every release of every product line with its status, and the
administrator's policies per hardware class and line) and a :class:`DeviceProfile` (hardware
class, add-on boards, installed components), :func:`plan` returns, for each component, the
newest release that

1. is not revoked, not flagged vulnerable, not flagged by the full node (R10.b.ii, R10.d.ii);
2. lists the component's hardware class: the device's own class, or the add-on board's class
   for a component that drives a board (each board is a hardware class of its own);
3. is permitted by the policy of that class for the line (no policy: any version the records
   list; a policy with ``allowed`` false forbids the line; else ``min..max`` inclusive), the
   registry contract's semantics;
4. is strictly newer than the installed version (never a downgrade, never a reinstall, R10.d.i);
5. has every dependency met **by the device after the plan**: a dependency may be met by
   another component's planned upgrade, and no upgrade may break a dependency that another
   component's release (planned, or installed and met today) has on it.

Rules 1-4 concern one release and one hardware class, so they are decided once per
(hardware class, product line) into a candidate list sorted newest first (:meth:`Catalog.candidates`).
Rule 5 links components: it is a binary constraint between two components' choices. The resolver
searches the choices depth first, components in priority order (product name), each
component's candidates newest first and "keep the installed release" last, with forward
checking (each choice at once narrows the later components' candidates to the compatible ones).
The first complete assignment found is the lexicographically best one: the first component as
new as any consistent plan allows, then the second, and so on. So when the newest A needs a B
that cannot be had, the search falls back to an older A. Keeping every release as installed
always satisfies rule 5, so a plan always exists (possibly empty). The search is bounded
(``max_steps``); past the bound the resolver switches to hill climbing from "keep everything"
(raise one component at a time to its newest release consistent with the rest, until nothing
moves) and marks the plan ``complete=False``. Both results are locally optimal: no single
component can be raised to a newer allowed release without breaking a constraint.

The plan's upgrades are ordered dependencies first (topological order over the new releases'
dependencies on other upgraded components); components whose new releases depend on each other
in a cycle are reported as a group to install together (:attr:`Plan.groups`). Every component
left below the newest release of its line gets a :class:`Blocked` entry: one :class:`Verdict`
per newer release, with the :class:`Reason` (revoked, vulnerable, flagged, hardware, policy,
dependency missing or out of reach, would break another component, conflicts with the best plan).

Fleets: :func:`plan_fleet` shares the candidate lists between devices and memoizes whole plans
on the profile's frozen key (hardware class, boards, components and versions: not the device
id), so devices sharing a profile cost one dictionary look-up. :func:`outdated` tells whether a
device runs anything older than the newest good release of its line, or a revoked, vulnerable or
flagged release, and why it was not upgraded (R10.b.i, R10.b.ii; C11.2.a).

The catalog is built from the full node's index by :func:`catalog_from_index`.

Cost, for R releases, L releases per line, a device of C components and D dependencies per
release: the catalog is built in O(R log R); each (class, line) table once, in O(L). Per distinct
profile: the set-up is O(C log L) (a binary search cuts each candidate list at the installed
version), forward checking filters at most the related later components' candidates per choice,
so a search that needs no backtracking costs O(C * L * D); backtracking is bounded by
``max_steps`` (resolving versions with dependencies is NP-hard in general). The explanations
cost O(L) per component left behind (verdicts on rules 1-4 are shared, precomputed objects).
A device whose profile was already resolved costs one dictionary look-up. ``tests/bench`` plans
100,000 devices (29,045 distinct profiles) over 1,000 releases in about 6 s on one core.

A :class:`Resolver` is bound to one catalog: when the index changes, build a new catalog and a
new resolver (the memo would otherwise answer for the old catalog).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from entities.protocol.heartbeat import (
    NEEDS_SAFE_MODE,
    STATE_CONFIRMED,
    STATE_EMPTY,
    STATE_TRIAL,
    STATE_UNVERIFIED,
)
from ledger_node.record import Version

from .resolver_catalog import Catalog, IndexLike, _Val, catalog_from_index
from .resolver_search import _Exhausted, _hill_climb, _order, _search
from .resolver_types import (
    _MIN,
    _OUTDATED_KINDS,
    _STATE_FINDING,
    Blocked,
    CatalogRelease,
    Component,
    DeviceProfile,
    Finding,
    FindingKind,
    LinePolicy,
    OutdatedReport,
    Plan,
    Reason,
    ReasonKind,
    ResolverError,
    UnmetDependency,
    Upgrade,
    Verdict,
    _range_packed,
)

__all__ = [
    "DEFAULT_MAX_STEPS",
    "Blocked",
    "Catalog",
    "CatalogRelease",
    "Component",
    "DeviceProfile",
    "Finding",
    "FindingKind",
    "IndexLike",
    "LinePolicy",
    "OutdatedReport",
    "Plan",
    "Reason",
    "ReasonKind",
    "Resolver",
    "ResolverError",
    "UnmetDependency",
    "Upgrade",
    "Verdict",
    "catalog_from_index",
    "explain",
    "outdated",
    "plan",
    "plan_fleet",
]

#: search steps (candidate choices tried) per device profile before falling back to hill climbing
DEFAULT_MAX_STEPS = 50_000


# ----------------------------------------------------------------------------- the resolver


@dataclass(frozen=True, slots=True)
class _Core:
    upgrades: tuple[Upgrade, ...]
    groups: tuple[tuple[str, ...], ...]
    blocked: tuple[Blocked, ...]
    unmet: tuple[UnmetDependency, ...]
    complete: bool
    chosen: tuple[_Val, ...]


class _Problem:
    """One device profile set up for the search: components, candidates, "keep" values."""

    __slots__ = ("classes", "comps", "doms", "lines", "pidx", "prods", "refs", "stays", "tables")

    def __init__(self, device: DeviceProfile, catalog: Catalog, shared: bool) -> None:
        comps = device.components
        self.comps = comps
        self.prods = [c.product for c in comps]
        self.pidx = {p: i for i, p in enumerate(self.prods)}
        self.classes = [device.class_of(c) for c in comps]
        self.lines = [catalog._line(c.vendor, c.product) for c in comps]
        table = catalog._table if shared else catalog._build_table
        self.tables = [table(k, c.vendor, c.product) for k, c in zip(self.classes, comps, strict=True)]
        inst = [c.version.packed for c in comps]
        prodset = frozenset(self.prods)
        self.stays: list[_Val] = []
        for i in range(len(comps)):
            cur = self.lines[i].by_version.get(inst[i])
            held: dict[str, tuple[int, int]] = {}
            if cur is not None:
                for p, (lo, hi) in cur.deps.items():
                    j = self.pidx.get(p)
                    if j is not None and lo <= inst[j] <= hi:
                        held[p] = (lo, hi)
            self.stays.append(_Val(inst[i], held, None))
        self.doms: list[list[_Val]] = []
        self.refs: list[frozenset[str]] = []
        for i in range(len(comps)):
            dom, refs = self.tables[i].domain(inst[i], prodset)
            if comps[i].state == STATE_TRIAL:  # being updated: nothing more until its trial ends
                dom, refs = [], frozenset()
            self.doms.append([*dom, self.stays[i]])
            self.refs.append(refs | self.stays[i].depset)


class Resolver:
    """Plans devices over one catalog; remembers plans per profile key.

    Args:
        catalog: the releases and policies.
        max_steps: search bound per profile (then hill climbing, ``Plan.complete`` false).
        shared: use the catalog's shared candidate lists (False recomputes them for every
            device: the naive baseline of the benchmark).
        memo: remember plans per profile key.

    Raises:
        ResolverError: ``max_steps`` below 1.
    """

    def __init__(self, catalog: Catalog, *, max_steps: int = DEFAULT_MAX_STEPS,
                 shared: bool = True, memo: bool = True) -> None:
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ResolverError(f"max_steps must be a positive integer, not {max_steps!r}")
        self.catalog = catalog
        self.max_steps = max_steps
        self.shared = shared
        self.memo = memo
        self._memo: dict[tuple[Any, ...], _Core] = {}
        self.hits = 0

    @property
    def profiles(self) -> int:
        """Distinct profiles resolved so far (with ``memo``)."""
        return len(self._memo)

    def plan(self, device: DeviceProfile) -> Plan:
        """The best consistent plan for a device (module docstring: rules 1-5, search, order)."""
        core = self._core(device)
        return Plan(device.device_id, core.upgrades, core.groups, core.blocked, core.unmet, core.complete)

    def plan_fleet(self, devices: Iterable[DeviceProfile]) -> list[Plan]:
        """Plans for many devices, in input order; devices sharing a profile share the work."""
        out: list[Plan] = []
        append = out.append
        memo = self._memo if self.memo else None
        for d in devices:
            core = memo.get(d.key) if memo is not None else None
            if core is None:
                core = self._resolve(d)
                if memo is not None:
                    memo[d.key] = core
            else:
                self.hits += 1
            append(Plan(d.device_id, core.upgrades, core.groups, core.blocked, core.unmet, core.complete))
        return out

    def outdated(self, device: DeviceProfile) -> OutdatedReport:
        """Whether the device is outdated or runs a revoked/vulnerable/flagged release, and why.

        A component is behind when its line has a newer release that is neither revoked,
        vulnerable nor flagged, whatever its hardware, policy or dependencies: those are the
        reason it is not planned, reported in the finding.
        """
        core = self._core(device)
        p = Plan(device.device_id, core.upgrades, core.groups, core.blocked, core.unmet, core.complete)
        blocked = {b.product: b for b in core.blocked}
        findings: list[Finding] = []
        for i, c in enumerate(device.components):
            line = self.catalog._line(c.vendor, c.product)
            newest = line.newest_good.release if line.newest_good is not None else None
            nv = newest.version if newest is not None else None
            planned_packed = core.chosen[i].packed
            planned = None if planned_packed == c.version.packed else Version.unpack(planned_packed)
            if c.needs == NEEDS_SAFE_MODE and c.state != STATE_TRIAL:
                plan = f"the plan installs {planned} (a recovery install)" if planned else "no release to recover with"
                findings.append(Finding(c.product, FindingKind.SAFE_MODE, c.version, nv, planned,
                                        f"in safe mode, nothing boots (the device says it needs an update); "
                                        f"newest {nv or 'none'}; {plan}"))
                continue
            if c.state != STATE_CONFIRMED:
                findings.append(self._state_finding(c, nv, planned))
                if c.state != STATE_TRIAL or c.version == _MIN:
                    continue  # nothing proven runs: its version says nothing
            cur = line.by_version.get(c.version.packed)
            if cur is None or cur.release is None:
                findings.append(Finding(c.product, FindingKind.UNKNOWN, c.version, nv, planned,
                                        f"installed {c.product} {c.version} is not a release of "
                                        f"{c.vendor}/{c.product} on the ledger"))
            else:
                r = cur.release
                note = f" ({r.note})" if r.note else ""
                for flag, kind, what in ((r.revoked, FindingKind.REVOKED, "revoked"),
                                         (r.vulnerable, FindingKind.VULNERABLE, "flagged vulnerable"),
                                         (r.flagged, FindingKind.FLAGGED, "flagged by the full node")):
                    if flag:
                        fix = f"the plan installs {planned}" if planned else "no allowed release replaces it"
                        findings.append(Finding(c.product, kind, c.version, nv, planned,
                                                f"installed {c.version} is {what}{note}; {fix}"))
            if nv is not None and nv > c.version and c.state == STATE_CONFIRMED:
                detail = f"installed {c.version}, newest {nv}"
                b = blocked.get(c.product)
                if planned is not None:
                    detail += f"; the plan installs {planned}"
                else:
                    detail += "; no upgrade possible"
                top = None if b is None or planned == nv else next((v for v in b.verdicts if v.version == nv), None)
                if top is not None:  # why not the newest good release
                    detail += f"; {top.version}: " + "; ".join(str(x) for x in top.reasons)
                findings.append(Finding(c.product, FindingKind.BEHIND, c.version, nv, planned, detail))
        is_out = any(f.kind in _OUTDATED_KINDS for f in findings)
        return OutdatedReport(device.device_id, is_out, tuple(findings), p)

    @staticmethod
    def _state_finding(c: Component, newest: Version | None, planned: Version | None) -> Finding:
        """The finding of a component that is not confirmed (``Component.state``)."""
        plan = f"the plan installs {planned}" if planned is not None else "no upgrade possible"
        if c.state == STATE_TRIAL:
            detail = "a new image is on trial (not up to date until the device confirms it)"
        elif c.state == STATE_UNVERIFIED:
            detail = f"runs an unverified factory image; newest {newest or 'none'}; {plan}"
        else:
            detail = f"no firmware confirmed; newest {newest or 'none'}; {plan}"
        return Finding(c.product, _STATE_FINDING[c.state], c.version, newest, planned, detail)

    def explain(self, device: DeviceProfile, product: str) -> tuple[Verdict, ...]:
        """A verdict for every release of one component's line, newest first (the planned one
        with no reasons; older ones would downgrade or are superseded by the plan).

        Raises:
            ResolverError: the device has no such component.
        """
        prob = _Problem(device, self.catalog, self.shared)
        i = prob.pidx.get(product)
        if i is None:
            raise ResolverError(f"device {device.device_id!r} has no component {product!r}")
        core = self._core(device)
        chosen = core.chosen
        final = [v.packed for v in chosen]
        inst = prob.comps[i].version.packed
        line, table = prob.lines[i], prob.tables[i]
        out: list[Verdict] = []
        for k, v in enumerate(line.vals):
            r = v.release
            assert r is not None  # line values are releases
            static = table.static[k]
            reasons = list(static.reasons) if static is not None else []
            if v.packed <= inst:
                what = ("is the installed version" if v.packed == inst
                        else f"is older than the installed {Version.unpack(inst)}")
                reasons.insert(0, Reason(ReasonKind.DOWNGRADE, f"{r.product} {r.version} {what}"))
            elif v.packed < final[i] and static is None:
                reasons.append(Reason(ReasonKind.SUPERSEDED,
                                      f"the plan installs the newer {Version.unpack(final[i])}"))
            elif v.packed > final[i] and static is None:
                reasons.extend(self._dynamic_reasons(prob, i, v, chosen))
            out.append(Verdict(r.version, r.header_hash, tuple(reasons)))
        return tuple(out)

    # -------------------------------------------------------------- internals

    def _core(self, device: DeviceProfile) -> _Core:
        if self.memo:
            core = self._memo.get(device.key)
            if core is not None:
                self.hits += 1
                return core
        core = self._resolve(device)
        if self.memo:
            self._memo[device.key] = core
        return core

    def _resolve(self, device: DeviceProfile) -> _Core:
        prob = _Problem(device, self.catalog, self.shared)
        prods, doms, comps = prob.prods, prob.doms, prob.comps
        complete = True
        try:
            chosen = _search(prods, doms, prob.refs, self.max_steps)
        except _Exhausted:
            chosen = _hill_climb(prods, doms)
            complete = False
        order, cycles = _order(prods, chosen)
        upgrades = []
        for i in order:
            r = chosen[i].release
            assert r is not None  # _order lists upgrades only
            after = tuple(sorted(p for p in chosen[i].deps if chosen[prob.pidx[p]].release is not None))
            upgrades.append(Upgrade(r.product, r.vendor, prob.classes[i], comps[i].version, r.version,
                                    r.header_hash, after))
        groups = tuple(tuple(prods[i] for i in c) for c in cycles)
        blocked: list[Blocked] = []
        for i, c in enumerate(comps):
            fin = chosen[i].packed
            line, table = prob.lines[i], prob.tables[i]
            k = line.newer_than(fin)
            if not k or c.state == STATE_TRIAL:  # a trial is not blocked: it is the update under way
                continue
            verdicts: list[Verdict] = []
            for idx in range(k):
                sv = table.static[idx]
                if sv is not None:
                    verdicts.append(sv)
                    continue
                v = line.vals[idx]
                r = v.release
                assert r is not None  # line values are releases
                verdicts.append(Verdict(r.version, r.header_hash, self._dynamic_reasons(prob, i, v, chosen)))
            blocked.append(Blocked(c.product, c.vendor, prob.classes[i], c.version, Version.unpack(fin),
                                   tuple(verdicts)))
        unmet: list[UnmetDependency] = []
        for i, c in enumerate(comps):
            if chosen[i].release is not None or c.state in (STATE_EMPTY, STATE_UNVERIFIED):
                continue
            cur = prob.lines[i].by_version.get(c.version.packed)
            if cur is None or cur.release is None:
                continue
            for dep in cur.release.dependencies:
                j = prob.pidx.get(dep.product)
                if j is None:
                    unmet.append(UnmetDependency(c.product, c.version, dep, None))
                elif not dep.min_version.packed <= chosen[j].packed <= dep.max_version.packed:
                    unmet.append(UnmetDependency(c.product, c.version, dep, Version.unpack(chosen[j].packed)))
        return _Core(tuple(upgrades), groups, tuple(blocked), tuple(unmet), complete, tuple(chosen))

    def _dynamic_reasons(self, prob: _Problem, i: int, x: _Val, chosen: Sequence[_Val]) -> tuple[Reason, ...]:
        """Why a release passing rules 1-4, newer than the plan's choice, is not chosen (rule 5)."""
        prods, doms, pi = prob.prods, prob.doms, prob.prods[i]
        reasons: list[Reason] = []
        for p, (lo, hi) in x.deps.items():
            j = prob.pidx.get(p)
            if j is None:
                reasons.append(Reason(ReasonKind.DEPENDENCY_MISSING,
                                      f"requires {_range_packed(p, lo, hi)}; the device has no {p}"))
            elif not any(lo <= w.packed <= hi for w in doms[j]):
                reach = max(w.packed for w in doms[j])
                reasons.append(Reason(
                    ReasonKind.DEPENDENCY_UNMET,
                    f"requires {_range_packed(p, lo, hi)}; {p} is at {prob.comps[j].version} and can "
                    f"reach at most {Version.unpack(reach)} on this device"))
        for j, pj in enumerate(prods):
            if j == i:
                continue
            ranges = [w.deps.get(pi) for w in doms[j]]
            if all(e is not None and not e[0] <= x.packed <= e[1] for e in ranges):
                e = chosen[j].deps.get(pi) or next(e for e in ranges if e is not None)
                reasons.append(Reason(
                    ReasonKind.BREAKS_DEPENDENT,
                    f"{pj} {Version.unpack(chosen[j].packed)} requires {_range_packed(pi, e[0], e[1])}, "
                    f"and no release of {pj} this device may run accepts {pi} {Version.unpack(x.packed)}"))
        if reasons:
            return tuple(reasons)
        for j, pj in enumerate(prods):
            if j == i:
                continue
            w = chosen[j]
            d = x.deps.get(pj)
            if d is not None and not d[0] <= w.packed <= d[1]:
                hint = f" (see why {pj} is not raised)" if w.packed < d[0] else ""
                return (Reason(ReasonKind.CONFLICT,
                               f"requires {_range_packed(pj, d[0], d[1])}, but the best consistent plan "
                               f"keeps {pj} at {Version.unpack(w.packed)}{hint}"),)
            back = w.deps.get(pi)
            if back is not None and not back[0] <= x.packed <= back[1]:
                return (Reason(ReasonKind.CONFLICT,
                               f"{pj} {Version.unpack(w.packed)} (in the best consistent plan) requires "
                               f"{_range_packed(pi, back[0], back[1])}"),)
        # unreachable for a locally optimal plan: x alone would be consistent with it
        return (Reason(ReasonKind.CONFLICT, "no consistent combination with the rest of the plan"),)  # pragma: no cover


# ----------------------------------------------------------------------------- functions


def plan(device: DeviceProfile, catalog: Catalog, *, max_steps: int = DEFAULT_MAX_STEPS) -> Plan:
    """The best consistent update plan for one device (see the module docstring).

    Raises:
        ResolverError: ``max_steps`` below 1.
    """
    return Resolver(catalog, max_steps=max_steps, memo=False).plan(device)


def plan_fleet(devices: Iterable[DeviceProfile], catalog: Catalog, *,
               max_steps: int = DEFAULT_MAX_STEPS) -> list[Plan]:
    """Plans for many devices in input order, sharing candidate lists and per-profile results.

    Raises:
        ResolverError: ``max_steps`` below 1.
    """
    return Resolver(catalog, max_steps=max_steps).plan_fleet(devices)


def outdated(device: DeviceProfile, catalog: Catalog) -> OutdatedReport:
    """Whether a device is outdated (R10.b.i) or runs a revoked or vulnerable release (R10.b.ii),
    with a reason per component and the plan that would bring it forward."""
    return Resolver(catalog, memo=False).outdated(device)


def explain(device: DeviceProfile, catalog: Catalog, product: str) -> tuple[Verdict, ...]:
    """A verdict for every release of one component's line, newest first.

    Raises:
        ResolverError: the device has no such component.
    """
    return Resolver(catalog, memo=False).explain(device, product)
