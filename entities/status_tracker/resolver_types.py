"""The resolver's inputs and outputs (:mod:`entities.status_tracker.resolver`). Pure.

Inputs: :class:`CatalogRelease` (a release and its status), :class:`LinePolicy` (an
administrator's policy for a hardware class and line), :class:`Component` and
:class:`DeviceProfile` (what the tracker knows of a device). Outputs: :class:`Plan` with its
:class:`Upgrade`, :class:`Blocked` (one :class:`Verdict` per newer release, each with its
:class:`Reason`) and :class:`UnmetDependency` entries, and :class:`OutdatedReport` with its
:class:`Finding` entries. Also :class:`ResolverError` and the texts of version ranges.
``entities.status_tracker.resolver`` re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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

__all__ = [
    "Blocked",
    "CatalogRelease",
    "Component",
    "DeviceProfile",
    "Finding",
    "FindingKind",
    "LinePolicy",
    "OutdatedReport",
    "Plan",
    "Reason",
    "ReasonKind",
    "ResolverError",
    "UnmetDependency",
    "Upgrade",
    "Verdict",
]

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
