"""The resolver's catalog (:mod:`entities.status_tracker.resolver`): rules 1-4, once. Pure.

:class:`Catalog` holds every release per product line and the policies per (hardware class,
line), and computes on first use, per (hardware class, line), the candidate list (releases
passing rules 1-4: not revoked, vulnerable or flagged, supporting the class, permitted by the
policy) newest first with a verdict for each rejected release; every resolver over the catalog
shares them. :func:`catalog_from_index` builds one from the full node's index. The internal
values (``_Val``, ``_Line``, ``_Table``) are what the search works on.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from .resolver_types import (
    _NOTHING,
    CatalogRelease,
    LinePolicy,
    Reason,
    ReasonKind,
    ResolverError,
    Verdict,
)

if TYPE_CHECKING:
    from ledger_node.fullnode import HardwareInfo, IndexedRelease, PolicyInfo
    from ledger_node.record import Version

__all__ = ["Catalog", "IndexLike", "catalog_from_index"]


class _Val:
    """A choice for one component: a release (``release`` set) or keeping the installed one.

    ``deps`` maps a required product to its inclusive packed range (several dependencies on one
    product intersected); for "keep", only the installed release's dependencies met today.
    """

    __slots__ = ("deps", "depset", "packed", "release")

    def __init__(self, packed: int, deps: dict[str, tuple[int, int]], release: CatalogRelease | None) -> None:
        self.packed = packed
        self.deps = deps
        self.depset = frozenset(deps) if deps else _NOTHING
        self.release = release


def _deps_of(release: CatalogRelease) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for d in release.dependencies:
        lo, hi = d.min_version.packed, d.max_version.packed
        if d.product in out:
            plo, phi = out[d.product]
            lo, hi = max(lo, plo), min(hi, phi)
        out[d.product] = (lo, hi)
    return out


class _Line:
    """Every release of one product line, newest first (flagged after good at equal versions)."""

    __slots__ = ("by_version", "neg", "newest_good", "vals")

    def __init__(self, releases: Sequence[CatalogRelease]) -> None:
        ordered = sorted(releases, key=lambda r: (-r.version.packed, r.flagged, r.header_hash))
        self.vals = [_Val(r.version.packed, _deps_of(r), r) for r in ordered]
        self.neg = [-v.packed for v in self.vals]
        self.by_version: dict[int, _Val] = {}
        for v in reversed(self.vals):  # the first (unflagged) release of a version wins
            self.by_version[v.packed] = v
        self.newest_good = next(
            (v for v in self.vals if v.release is not None
             and not (v.release.revoked or v.release.vulnerable or v.release.flagged)), None)

    def newer_than(self, packed: int) -> int:
        """How many releases (a prefix of ``vals``) are newer than ``packed``."""
        return bisect_left(self.neg, -packed)


_EMPTY_LINE = _Line(())


class _Table:
    """Rules 1-4 for one (hardware class, line): the candidates, and a verdict per rejected release."""

    __slots__ = ("ok", "ok_neg", "refs", "static")

    def __init__(self, ok: list[_Val], static: list[Verdict | None]) -> None:
        self.ok = ok
        self.ok_neg = [-v.packed for v in ok]
        self.static = static
        # refs[k]: every product the first k candidates depend on
        self.refs: list[frozenset[str]] = [frozenset()]
        for v in ok:
            self.refs.append(self.refs[-1] | v.depset)

    def domain(self, installed: int, present: frozenset[str]) -> tuple[list[_Val], frozenset[str]]:
        """Candidates strictly newer than ``installed``, newest first, whose dependencies name
        only products in ``present``; and the products they depend on."""
        k = bisect_left(self.ok_neg, -installed)
        refs = self.refs[k]
        if refs <= present:
            return self.ok[:k], refs
        return [v for v in self.ok[:k] if v.depset <= present], refs & present


class Catalog:
    """Releases per product line and policies per (hardware class, line). Immutable once built.

    Candidate lists per (hardware class, line) are computed on first use and kept (they depend
    on nothing else), so every resolver over the same catalog shares them.

    Args:
        releases: every release (flagged ones included: they are explained, never planned).
        policies: at most one per (hardware class, vendor, product).
        hardware: registered hardware classes and their revisions, when known (explanations
            then say so when a device's class is not registered).

    Raises:
        ResolverError: two policies for the same hardware class and line.
    """

    def __init__(self, releases: Iterable[CatalogRelease], policies: Iterable[LinePolicy] = (),
                 hardware: Mapping[str, int] | None = None) -> None:
        grouped: dict[tuple[str, str], list[CatalogRelease]] = {}
        for r in releases:
            grouped.setdefault((r.vendor, r.product), []).append(r)
        self._lines = {k: _Line(v) for k, v in grouped.items()}
        self._policies: dict[tuple[str, str, str], LinePolicy] = {}
        for p in policies:
            k = (p.hardware_class, p.vendor, p.product)
            if k in self._policies:
                raise ResolverError(f"two policies for hardware class {k[0]!r} and line {k[1]}/{k[2]}")
            self._policies[k] = p
        self._hardware = dict(hardware) if hardware is not None else None
        self._tables: dict[tuple[str, str, str], _Table] = {}

    @property
    def releases(self) -> tuple[CatalogRelease, ...]:
        """Every release, by line (vendor, product), newest first."""
        return tuple(v.release for k in sorted(self._lines) for v in self._lines[k].vals
                     if v.release is not None)

    @property
    def policies(self) -> tuple[LinePolicy, ...]:
        return tuple(self._policies[k] for k in sorted(self._policies))

    @property
    def hardware(self) -> Mapping[str, int] | None:
        return None if self._hardware is None else dict(self._hardware)

    def line(self, vendor: str, product: str) -> tuple[CatalogRelease, ...]:
        """The releases of a line, newest first."""
        return tuple(v.release for v in self._line(vendor, product).vals if v.release is not None)

    def policy(self, hardware_class: str, vendor: str, product: str) -> LinePolicy | None:
        return self._policies.get((hardware_class, vendor, product))

    def release(self, vendor: str, product: str, version: Version) -> CatalogRelease | None:
        """The release of a line at ``version`` (an unflagged one if there are several)."""
        v = self._line(vendor, product).by_version.get(version.packed)
        return None if v is None else v.release

    def candidates(self, hardware_class: str, vendor: str, product: str) -> tuple[CatalogRelease, ...]:
        """Releases passing rules 1-4 but the version rule for a class and line, newest first."""
        return tuple(v.release for v in self._table(hardware_class, vendor, product).ok if v.release is not None)

    # -------------------------------------------------------------- internals

    def _line(self, vendor: str, product: str) -> _Line:
        return self._lines.get((vendor, product), _EMPTY_LINE)

    def _table(self, hardware_class: str, vendor: str, product: str) -> _Table:
        key = (hardware_class, vendor, product)
        t = self._tables.get(key)
        if t is None:
            t = self._tables[key] = self._build_table(hardware_class, vendor, product)
        return t

    def _build_table(self, hardware_class: str, vendor: str, product: str) -> _Table:
        ok: list[_Val] = []
        static: list[Verdict | None] = []
        policy = self._policies.get((hardware_class, vendor, product))
        for v in self._line(vendor, product).vals:
            assert v.release is not None  # line values are releases
            reasons = self._static_reasons(v.release, hardware_class, policy)
            if reasons:
                static.append(Verdict(v.release.version, v.release.header_hash, reasons))
            else:
                static.append(None)
                ok.append(v)
        return _Table(ok, static)

    def _static_reasons(self, r: CatalogRelease, hardware_class: str,
                        policy: LinePolicy | None) -> tuple[Reason, ...]:
        out: list[Reason] = []
        note = f": {r.note}" if r.note else ""
        if r.revoked:
            out.append(Reason(ReasonKind.REVOKED, f"{r.product} {r.version} is revoked{note}"))
        if r.vulnerable:
            out.append(Reason(ReasonKind.VULNERABLE, f"{r.product} {r.version} is flagged vulnerable{note}"))
        if r.flagged:
            out.append(Reason(ReasonKind.FLAGGED, f"{r.product} {r.version} failed the full node's checks{note}"))
        if hardware_class not in r.hardware:
            known = self._hardware
            if known is not None and hardware_class not in known:
                what = f"hardware class {hardware_class} is not registered"
            else:
                rev = f" (revision {known[hardware_class]})" if known is not None else ""
                what = f"{r.product} {r.version} does not support hardware class {hardware_class}{rev}"
            out.append(Reason(ReasonKind.HARDWARE, f"{what}; it lists {', '.join(r.hardware)}"))
        if policy is not None and not policy.allowed:
            out.append(Reason(ReasonKind.POLICY_FORBIDDEN,
                              f"the policy of {hardware_class} forbids the line {r.vendor}/{r.product}"))
        elif policy is not None and not policy.permits(r.version):
            out.append(Reason(ReasonKind.POLICY_RANGE,
                              f"the policy of {hardware_class} allows {r.vendor}/{r.product} "
                              f"{policy.min_version}..{policy.max_version} only"))
        return tuple(out)


class IndexLike(Protocol):
    """What :func:`catalog_from_index` reads: a full node :class:`~ledger_node.fullnode.Index`
    (or a :class:`~ledger_node.fullnode.FullNode`)."""

    def releases(self, product: str | None = None, vendor: str | None = None,
                 include_flagged: bool = False) -> list[IndexedRelease]: ...

    def policies(self) -> list[PolicyInfo]: ...

    def hardware(self) -> list[HardwareInfo]: ...


def catalog_from_index(index: IndexLike) -> Catalog:
    """Build a :class:`Catalog` from the full node's index (flagged records included, to explain).

    Raises:
        IndexCorruption: the index is damaged.
    """
    releases = []
    for r in index.releases(include_flagged=True):
        data = r.record.data
        note = "; ".join(t for t in (r.revoke_reason, r.vulnerable_note, r.flag_reason) if t)
        releases.append(CatalogRelease(
            vendor=data.vendor_name, product=data.product, version=data.version, header_hash=r.header_hash,
            hardware=tuple(data.supported_hardware), dependencies=tuple(data.dependencies),
            revoked=r.revoked, vulnerable=r.vulnerable, flagged=r.flagged, note=note))
    policies = [LinePolicy(p.hw_id, p.vendor_name, p.product, p.allowed, p.min_version, p.max_version)
                for p in index.policies()]
    hardware = {h.hw_id: h.revision for h in index.hardware()}
    return Catalog(releases, policies, hardware)
