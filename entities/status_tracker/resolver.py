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

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from entities.protocol.heartbeat import (
    COMPONENT_STATES,
    NEEDS,
    NEEDS_SAFE_MODE,
    STATE_CONFIRMED,
    STATE_EMPTY,
    STATE_TRIAL,
    STATE_UNVERIFIED,
)
from ledger_node.errors import FwledgerError
from ledger_node.record import Dependency, Version

if TYPE_CHECKING:
    from ledger_node.fullnode import HardwareInfo, IndexedRelease, PolicyInfo

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

_MIN = Version(0, 0, 0)
_MAX = Version(0xFFFF, 0xFFFF, 0xFFFF)
_MAX_PACKED = _MAX.packed
_NOTHING: frozenset[str] = frozenset()


class ResolverError(FwledgerError):
    """A device profile or a catalog is inconsistent (duplicate component, unknown board, ...)."""


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class CatalogRelease:
    """One release of a product line, with its status: what the resolver knows of a record.

    ``hardware`` are the hardware class ids the record lists (Table II.1 "supported hardware"),
    ``dependencies`` its software dependencies (by product name, inclusive version range).
    ``note`` carries the revocation reason, vulnerability note or flag reason, if any.
    """

    vendor: str
    product: str
    version: Version
    header_hash: bytes
    hardware: tuple[str, ...]
    dependencies: tuple[Dependency, ...] = ()
    revoked: bool = False
    vulnerable: bool = False
    flagged: bool = False
    note: str = ""


@dataclass(frozen=True, slots=True)
class LinePolicy:
    """The administrator's policy for one hardware class and product line (registry semantics).

    ``allowed`` false forbids the line on the class; otherwise versions ``min..max`` inclusive.
    A class with no policy for a line may run any version its records list.
    """

    hardware_class: str
    vendor: str
    product: str
    allowed: bool
    min_version: Version = _MIN
    max_version: Version = _MAX

    def permits(self, version: Version) -> bool:
        return self.allowed and self.min_version <= version <= self.max_version


@dataclass(frozen=True, slots=True)
class Component:
    """An installed component: a release of the line (vendor, product) at ``version``.

    ``board`` names the add-on board (a hardware class id) this component drives; ``None``: it
    runs on the device's own hardware class. ``state`` is the device's word for it
    (``entities.protocol.heartbeat``): ``confirmed``; ``empty`` or ``unverified`` (nothing proven runs:
    ``version`` is 0.0.0 and the newest compatible release is planned, an install from nothing);
    ``trial`` (being updated: ``version`` is the confirmed one, or 0.0.0, and nothing is planned).
    Only a confirmed component can be up to date. ``needs`` is the device's own statement of need
    (C11.1.a.iv): ``safe_mode`` (nothing boots; unless on trial, ``version`` is 0.0.0 and the
    newest compatible release is planned: a recovery install).
    """

    product: str
    vendor: str
    version: Version
    board: str | None = None
    state: str = STATE_CONFIRMED
    needs: str | None = None


def _profile_key(hardware_class: str, addons: tuple[str, ...],
                 components: tuple[Component, ...]) -> tuple[Any, ...]:
    return (hardware_class, addons,
            tuple((c.product, c.vendor, c.version.packed, c.board, c.state, c.needs) for c in components))


@dataclass(frozen=True)
class DeviceProfile:
    """What the tracker knows of a device: hardware class, add-on boards, installed components.

    Components are kept sorted by product name (that order is also the resolver's priority).
    :attr:`key` is the profile without the device id: devices with equal keys get equal plans.

    Raises:
        ResolverError: empty hardware class, a product installed twice, a component driving a
            board the device does not have, a version that is not a :class:`Version`.
    """

    device_id: str
    hardware_class: str
    components: tuple[Component, ...]
    addons: tuple[str, ...] = ()
    key: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.hardware_class, str) or not self.hardware_class:
            raise ResolverError(f"device {self.device_id!r}: empty hardware class")
        addons = tuple(sorted(set(self.addons)))
        if any(not isinstance(a, str) or not a for a in addons):
            raise ResolverError(f"device {self.device_id!r}: empty add-on board id")
        comps = tuple(sorted(self.components, key=lambda c: c.product))
        seen: set[str] = set()
        for c in comps:
            if c.product in seen:
                raise ResolverError(f"device {self.device_id!r}: component {c.product!r} listed twice")
            seen.add(c.product)
            if not isinstance(c.version, Version):
                raise ResolverError(f"device {self.device_id!r}: version of {c.product!r} is not a Version")
            if c.board is not None and c.board not in addons:
                raise ResolverError(
                    f"device {self.device_id!r}: component {c.product!r} drives board {c.board!r}, "
                    "which is not among the device's add-on boards")
        object.__setattr__(self, "addons", addons)
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "key", _profile_key(self.hardware_class, addons, comps))

    @classmethod
    def build(cls, device_id: str, hardware_class: str,
              components: Mapping[str, tuple[str, Version | str | None] | tuple[str, Version | str | None, str]
                                  | tuple[str, Version | str | None, str, str | None]],
              addons: Mapping[str, Iterable[str]] | None = None) -> DeviceProfile:
        """From ``{product: (vendor, version[, state[, needs]])}`` and ``{board class: products driving
        it}`` (``state``, ``needs`` as :class:`Component`'s; an ``empty`` or ``unverified`` component,
        one in safe mode and not on trial, or one with no version, counts as 0.0.0).

        Raises:
            ResolverError: a board names a product not installed, or a product drives two
                boards; or as the constructor.
            RecordError: a version text is malformed.
        """
        board_of: dict[str, str] = {}
        for board, products in (addons or {}).items():
            for p in products:
                if p not in components:
                    raise ResolverError(f"device {device_id!r}: board {board!r} names {p!r}, not installed")
                if p in board_of:
                    raise ResolverError(f"device {device_id!r}: {p!r} drives two boards")
                board_of[p] = board
        comps = []
        for p, entry in components.items():
            vendor, v = entry[0], entry[1]
            state = entry[2] if len(entry) > 2 else STATE_CONFIRMED  # type: ignore[misc]
            needs = entry[3] if len(entry) > 3 else None  # type: ignore[misc]
            if state not in COMPONENT_STATES:
                raise ResolverError(f"device {device_id!r}: component {p!r} has an unknown state {state!r}")
            if needs not in (None, *NEEDS):
                raise ResolverError(f"device {device_id!r}: component {p!r} states an unknown need {needs!r}")
            if v is None or state in (STATE_EMPTY, STATE_UNVERIFIED) or (needs == NEEDS_SAFE_MODE
                                                                         and state != STATE_TRIAL):
                v = _MIN
            comps.append(Component(p, vendor, v if isinstance(v, Version) else Version.parse(v), board_of.get(p),
                                   state, needs))
        return cls(device_id, hardware_class, tuple(comps), tuple((addons or {}).keys()))

    def class_of(self, component: Component) -> str:
        """The hardware class a component's releases and policies are checked against."""
        return component.board if component.board is not None else self.hardware_class


# ----------------------------------------------------------------------------- outputs


class ReasonKind(StrEnum):
    """Why a release is not planned for a component."""

    REVOKED = "revoked"
    VULNERABLE = "vulnerable"
    FLAGGED = "flagged"
    HARDWARE = "hardware"
    POLICY_FORBIDDEN = "policy-forbidden"
    POLICY_RANGE = "policy-range"
    DOWNGRADE = "downgrade"
    SUPERSEDED = "superseded"
    DEPENDENCY_MISSING = "dependency-missing"
    DEPENDENCY_UNMET = "dependency-unmet"
    BREAKS_DEPENDENT = "breaks-dependent"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason, with a one-line human explanation naming the constraint."""

    kind: ReasonKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One release of a component's line and why it is not planned (``reasons`` empty: planned)."""

    version: Version
    header_hash: bytes
    reasons: tuple[Reason, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {"version": str(self.version), "header_hash": "0x" + self.header_hash.hex(),
                "reasons": [{"kind": str(r.kind), "detail": r.detail} for r in self.reasons]}


@dataclass(frozen=True, slots=True)
class Upgrade:
    """One step of a plan: install ``to_version`` of (vendor, product) over ``from_version``.

    ``after`` names the other upgrades of the plan this release depends on (installed before
    it, or together with it when they form a cycle).
    """

    product: str
    vendor: str
    hardware_class: str
    from_version: Version
    to_version: Version
    header_hash: bytes
    after: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "vendor": self.vendor, "hardware_class": self.hardware_class,
                "from_version": str(self.from_version), "to_version": str(self.to_version),
                "header_hash": "0x" + self.header_hash.hex(), "after": list(self.after)}


@dataclass(frozen=True, slots=True)
class Blocked:
    """A component left below the newest release of its line: each newer release and why not."""

    product: str
    vendor: str
    hardware_class: str
    installed: Version
    planned: Version
    verdicts: tuple[Verdict, ...]

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "vendor": self.vendor, "hardware_class": self.hardware_class,
                "installed": str(self.installed), "planned": str(self.planned),
                "verdicts": [v.to_json() for v in self.verdicts]}


@dataclass(frozen=True, slots=True)
class UnmetDependency:
    """A dependency of a component kept as installed that the device does not meet (before or
    after the plan): ``found`` is the version the device has of the required product, if any."""

    product: str
    version: Version
    requires: Dependency
    found: Version | None

    def __str__(self) -> str:
        has = f"has {self.requires.product} {self.found}" if self.found is not None else \
            f"has no {self.requires.product}"
        return f"{self.product} {self.version} requires {_range_text(self.requires)}; the device {has}"


@dataclass(frozen=True, slots=True)
class Plan:
    """The resolver's answer for one device.

    ``upgrades`` in installation order (dependencies first); ``groups`` lists the products whose
    new releases depend on each other in a cycle (contiguous in ``upgrades``, to install
    together); ``blocked`` every component left below its line's newest release, with the reason
    per newer release; ``unmet`` dependencies already unmet that the plan cannot fix;
    ``complete`` false when the search hit its step bound and the plan comes from hill climbing
    (still consistent and locally optimal, perhaps not the lexicographic best).
    """

    device_id: str
    upgrades: tuple[Upgrade, ...]
    groups: tuple[tuple[str, ...], ...] = ()
    blocked: tuple[Blocked, ...] = ()
    unmet: tuple[UnmetDependency, ...] = ()
    complete: bool = True

    @property
    def needed(self) -> bool:
        """Whether the device has anything to install (R10.e.i: no update when not needed)."""
        return bool(self.upgrades)

    def upgrade(self, product: str) -> Upgrade | None:
        for u in self.upgrades:
            if u.product == product:
                return u
        return None

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "upgrades": [u.to_json() for u in self.upgrades],
                "groups": [list(g) for g in self.groups], "blocked": [b.to_json() for b in self.blocked],
                "unmet": [str(u) for u in self.unmet], "complete": self.complete}


class FindingKind(StrEnum):
    """What :func:`outdated` found about one component."""

    BEHIND = "behind"            # a newer good release of the line exists
    REVOKED = "revoked"          # the installed release is revoked
    VULNERABLE = "vulnerable"    # the installed release is flagged vulnerable
    FLAGGED = "flagged"          # the installed release failed the full node's checks
    UNKNOWN = "unknown"          # the installed version is not on the ledger (informative)
    NO_FIRMWARE = "no-firmware"  # nothing confirmed runs (an empty component)
    UNVERIFIED = "unverified"    # an unverified factory image runs (never up to date)
    IN_TRIAL = "in-trial"        # a new image awaits or runs its trial (not up to date until confirmed)
    SAFE_MODE = "safe-mode"      # the device says the component is in safe mode (C11.1.a.iv): recovery


_OUTDATED_KINDS = frozenset({FindingKind.BEHIND, FindingKind.REVOKED, FindingKind.VULNERABLE,
                             FindingKind.FLAGGED, FindingKind.NO_FIRMWARE, FindingKind.UNVERIFIED,
                             FindingKind.IN_TRIAL, FindingKind.SAFE_MODE})
#: the finding of a component that is not confirmed, by its state
_STATE_FINDING = {STATE_EMPTY: FindingKind.NO_FIRMWARE, STATE_UNVERIFIED: FindingKind.UNVERIFIED,
                  STATE_TRIAL: FindingKind.IN_TRIAL}


@dataclass(frozen=True, slots=True)
class Finding:
    """One component's state: installed, newest good release of its line, what the plan installs."""

    product: str
    kind: FindingKind
    installed: Version
    newest: Version | None
    planned: Version | None
    detail: str

    def __str__(self) -> str:
        return f"{self.product}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class OutdatedReport:
    """Whether a device is outdated (R10.b.i) or runs a revoked/vulnerable release (R10.b.ii), why,
    and the plan that would bring it forward. Truthy when outdated."""

    device_id: str
    outdated: bool
    findings: tuple[Finding, ...]
    plan: Plan

    def __bool__(self) -> bool:
        return self.outdated

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(str(f) for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "outdated": self.outdated, "reasons": list(self.reasons),
                "plan": self.plan.to_json()}


# ----------------------------------------------------------------------------- the catalog


def _range_text(dep: Dependency) -> str:
    return _range_packed(dep.product, dep.min_version.packed, dep.max_version.packed)


def _range_packed(product: str, lo: int, hi: int) -> str:
    if lo == hi:
        return f"{product}=={Version.unpack(lo)}"
    if hi >= _MAX_PACKED:
        return f"{product}>={Version.unpack(lo)}"
    if lo == 0:
        return f"{product}<={Version.unpack(hi)}"
    if lo > hi:
        return f"{product} in an empty range"
    return f"{product}>={Version.unpack(lo)},<={Version.unpack(hi)}"


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


# ----------------------------------------------------------------------------- the search


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
