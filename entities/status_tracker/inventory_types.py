"""The status tracker inventory's pure part (no I/O): what devices and triggering parties send,
and the rows the inventory hands out (X.1368 C11.2.a-b, clause 9).

- the messages, validated by pydantic and then by the resolver's own rules: :class:`HeartbeatIn`
  (with :class:`ComponentIn`, :class:`LastResultIn`), :class:`TriggerIn` (with
  :class:`ConcernedIn`), :class:`ResultsIn` (with :class:`ResultIn`); the refusal every check
  raises, :class:`TrackerRefusal`;
- a device's readiness from its report and the communication log (:func:`readiness`, C11.2.b.i);
- the trust decision on a trigger (:func:`check_party`, :func:`judge_trigger`, clause 9: which
  party may ask, and whether the release it names is on the ledger with that version);
- the rows of the store: :class:`DeviceRow`, :class:`Assessment`, :class:`TriggerRow`.

:mod:`.inventory` (the SQLite store) re-exports every name here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from entities.protocol.heartbeat import STATE_CONFIRMED, component_entry, entry_problem, needs_of, state_of
from ledger_node.errors import FwledgerError, IndexCorruption, RecordError
from ledger_node.record import Version

from .resolver import DeviceProfile, ResolverError

__all__ = [
    "CLAUSE",
    "DEVICE_ID_PATTERN",
    "HASH_PATTERN",
    "Assessment",
    "ComponentIn",
    "ConcernedIn",
    "DeviceRow",
    "HeartbeatIn",
    "LastResultIn",
    "LedgerFacts",
    "Readiness",
    "ResultIn",
    "ResultsIn",
    "Source",
    "TrackerRefusal",
    "TriggerIn",
    "TriggerRow",
    "check_party",
    "judge_trigger",
    "readiness",
]

#: device ids travel in URL paths: no '/', '?', '#', '%' or spaces
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
HASH_PATTERN = r"^0x[0-9a-fA-F]{64}$"
_TEXT = r"^[\x20-\x7e]{1,64}$"  # printable ASCII, as the ledger's names (record.py)
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9._ /-]{0,63}$"
_CODE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_VERSION = r"^\d{1,5}\.\d{1,5}\.\d{1,5}$"
_URL = re.compile(r"^https?://[\x21-\x7e]+$")


class TrackerRefusal(FwledgerError):
    """A request the tracker refuses; ``code`` is stable and maps to a 4xx status (web.HTTP_STATUS)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        self.code = code
        self.details = details
        super().__init__(message)


# ----------------------------------------------------------------------------- messages (pure)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ComponentIn(_Strict):
    """One provisioned component as the device reports it (wire format: ``entities.protocol.heartbeat``)."""

    vendor: str = Field(pattern=_TEXT, description="Vendor name on the ledger")
    version: str | None = Field(pattern=_VERSION, description="Confirmed version, MAJOR.MINOR.PATCH (null: none; "
                                                              "unverified: the version the factory claimed)")
    slot: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,16}$", description="Active slot (A/B)")
    state: Literal["empty", "unverified", "trial", "confirmed"] = Field(
        default=STATE_CONFIRMED, description="empty, unverified, trial or confirmed (absent: confirmed)")
    trial: str | None = Field(default=None, pattern=_VERSION, description="The version on trial, if any")
    needs: Literal["safe_mode"] | None = Field(
        default=None, description="The device's statement of need (C11.1.a.iv): safe_mode (a recovery install)")

    @field_validator("version", "trial")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            Version.parse(v)
        except RecordError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _state(self) -> ComponentIn:
        problem = entry_problem(self.version, self.state)
        if problem:
            raise ValueError(problem)
        return self

    def to_json(self) -> dict[str, Any]:
        """As stored and shown: a confirmed component exactly as older devices report it."""
        return component_entry(self.vendor, self.version, self.slot, self.state, self.trial, self.needs)


class LastResultIn(_Strict):
    """The device's last update attempt (C11.2.b.ii)."""

    ok: bool
    code: str | None = Field(default=None, pattern=_CODE, description="Error code when not ok")
    message: str | None = Field(default=None, max_length=256)
    component: str | None = Field(default=None, pattern=_TEXT)
    version: str | None = Field(default=None, pattern=_VERSION)
    at: float | None = Field(default=None, ge=0)


class HeartbeatIn(_Strict):
    """``POST /v1/devices/heartbeat``: registration, heartbeat and status report in one (C11.2.b).

    ``addons`` maps each add-on board (a hardware class id of its own) to the products driving
    it; ``components`` maps each product to its vendor, running version and active slot.
    """

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    hardware: str = Field(pattern=_TEXT, description="Hardware class id on the ledger")
    addons: dict[str, list[str]] = Field(default_factory=dict, max_length=16)
    location: str | None = Field(default=None, pattern=_LABEL, description="Location label")
    components: dict[str, ComponentIn] = Field(max_length=64)
    ready: bool = Field(description="Ready to take an update now")
    last_result: LastResultIn | None = None
    certificate: str | None = Field(default=None, max_length=8192,
                                    description="Manufacture certificate (PEM), for admission by certificate")

    @model_validator(mode="after")
    def _consistent(self) -> HeartbeatIn:
        for product in self.components:
            if not re.match(_TEXT, product):
                raise ValueError(f"component name {product!r} must be 1-64 printable ASCII characters")
        for board, products in self.addons.items():
            if not re.match(_TEXT, board) or len(products) > 64:
                raise ValueError(f"add-on board {board!r}: bad id or too many products")
        self.profile()  # the resolver's rules: a board names installed products, each drives one board
        return self

    def profile(self) -> DeviceProfile:
        """The resolver's view of this report.

        Raises:
            ValueError: the report is inconsistent (a board naming a product not installed...).
        """
        try:
            return DeviceProfile.build(self.device_id, self.hardware,
                                       {p: (c.vendor, c.version, c.state, c.needs)
                                        for p, c in self.components.items()},
                                       {b: list(ps) for b, ps in self.addons.items()})
        except (ResolverError, RecordError) as exc:
            raise ValueError(str(exc)) from None

    def components_json(self) -> dict[str, Any]:
        return {p: c.to_json() for p, c in sorted(self.components.items())}


class Source(StrEnum):
    """Who asks for an update (clause 9); the value is the request's ``source``."""

    AUTHOR = "author"    # T9.a: the author published a new version
    SERVER = "server"    # T9.b: a firmware server received a new version
    ADMIN = "admin"      # T9.c: a device administrator


CLAUSE = {Source.AUTHOR: "T9.a", Source.SERVER: "T9.b", Source.ADMIN: "T9.c"}


class ConcernedIn(_Strict):
    """A device a firmware server says a release concerns (C11.3.g): its class and the last version
    of the line it took from that server."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    hardware: str = Field(pattern=_TEXT)
    version: str = Field(pattern=_VERSION, description="The last version of the line the device took there")


class TriggerIn(_Strict):
    """``POST /v1/triggers``: an update request; it must give the image URL and version (clause 9).
    A firmware server's may name the devices the release concerns (``devices``, C11.3.g)."""

    source: Literal["author", "server", "admin"]
    header_hash: str = Field(pattern=HASH_PATTERN, description="The release record's header hash")
    link: str = Field(max_length=256, description="Where the image is (http or https URL)")
    version: str = Field(pattern=_VERSION)
    devices: list[ConcernedIn] = Field(default_factory=list, max_length=1000,
                                       description="source server only: the devices the release concerns")

    @field_validator("link")
    @classmethod
    def _link(cls, v: str) -> str:
        if not _URL.match(v):
            raise ValueError("link must be an http(s) URL of printable ASCII")
        return v


_COMMAND_ID = r"^[0-9a-f]{32}$"


class ResultIn(_Strict):
    """The outcome of one release of a command on the device."""

    header_hash: str = Field(pattern=HASH_PATTERN)
    product: str = Field(pattern=_TEXT)
    to_version: str = Field(pattern=_VERSION)
    ok: bool
    code: str | None = Field(default=None, pattern=_CODE, description="Error code when not ok")
    message: str | None = Field(default=None, max_length=256)


class ResultsIn(_Strict):
    """``POST /v1/devices/{device_id}/results``: what became of a command (docs/MODULES.md section 3)."""

    command_id: str = Field(pattern=_COMMAND_ID)
    results: list[ResultIn] = Field(min_length=1, max_length=32)


class Readiness(StrEnum):
    """C11.2.b.i: what the tracker knows of a device's readiness."""

    READY = "ready"              # heard from recently, ready for an update
    BUSY = "busy"                # heard from recently, not ready (updating, in use)
    UNREACHABLE = "unreachable"  # not heard from within ``stale_after``


def readiness(ready: bool, last_seen: float, now: float, stale_after: float) -> Readiness:
    """A device's readiness from its last report and when it was last heard from (C11.2.b.i)."""
    if now - last_seen > stale_after:
        return Readiness.UNREACHABLE
    return Readiness.READY if ready else Readiness.BUSY


@dataclass(frozen=True)
class LedgerFacts:
    """What :func:`judge_trigger` needs to know from the full node's index about a release."""

    found: bool
    version: str | None = None
    vendor_name: str | None = None
    file_link: str | None = None
    revoked: bool = False
    vulnerable: bool = False
    flagged: bool = False


def check_party(trigger: TriggerIn, signer: str, *, vendors: Mapping[str, str] | None, server_keys: Iterable[str],
                admin_keys: Iterable[str]) -> None:
    """Clause 9: may ``signer`` send this source of trigger? ``vendors`` (active vendor address ->
    name, from the ledger) None: author triggers are not judged here.

    Raises:
        TrackerRefusal: ``unknown_party``; ``devices_not_allowed`` (only a firmware server names
            the devices a release concerns).
    """
    source = Source(trigger.source)
    if trigger.devices and source is not Source.SERVER:
        raise TrackerRefusal("devices_not_allowed", "only a firmware server's trigger names devices (C11.3.g)")
    if source is Source.AUTHOR and vendors is not None and signer not in vendors:
        raise TrackerRefusal("unknown_party", f"{signer} is not an active vendor on the ledger")
    if source is Source.SERVER and signer not in set(server_keys):
        raise TrackerRefusal("unknown_party", f"{signer} is not a configured firmware server key")
    if source is Source.ADMIN and signer not in set(admin_keys):
        raise TrackerRefusal("unknown_party", f"{signer} is not a configured administrator key")


def judge_trigger(trigger: TriggerIn, signer: str, facts: LedgerFacts, *, vendors: Mapping[str, str],
                  server_keys: Iterable[str], admin_keys: Iterable[str]) -> None:
    """Clause 9: act on an update request only if it is reliable and trustworthy.

    ``vendors`` maps each *active* vendor address on the ledger to its vendor name.

    Raises:
        TrackerRefusal: ``unknown_party`` (the signer may not send this source of trigger),
            ``not_vendor_release`` (an author asking for another vendor's release),
            ``not_on_ledger`` (no such release in the index), ``version_mismatch``,
            ``release_revoked`` / ``release_vulnerable`` / ``flagged_release``.
    """
    source = Source(trigger.source)
    check_party(trigger, signer, vendors=vendors, server_keys=server_keys, admin_keys=admin_keys)
    if not facts.found:
        raise TrackerRefusal("not_on_ledger", f"release {trigger.header_hash} is not on the ledger")
    if source is Source.AUTHOR and vendors[signer] != facts.vendor_name:
        raise TrackerRefusal("not_vendor_release",
                             f"release {trigger.header_hash} is {facts.vendor_name}'s, not {vendors[signer]}'s")
    if facts.version != trigger.version:
        raise TrackerRefusal("version_mismatch",
                             f"release {trigger.header_hash} is version {facts.version} on the ledger, "
                             f"not {trigger.version}")
    if facts.flagged:
        raise TrackerRefusal("flagged_release", f"release {trigger.header_hash} failed the full node's checks")
    if facts.revoked:
        raise TrackerRefusal("release_revoked", f"release {trigger.header_hash} is revoked")
    if facts.vulnerable:
        raise TrackerRefusal("release_vulnerable", f"release {trigger.header_hash} is flagged vulnerable")


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class DeviceRow:
    """A device as the inventory holds it (its latest report)."""

    device_id: str
    address: str
    hardware: str
    addons: dict[str, list[str]]
    location: str | None
    components: dict[str, dict[str, Any]]
    ready: bool
    last_result: dict[str, Any] | None
    first_seen: float
    last_seen: float
    heartbeats: int

    def profile(self) -> DeviceProfile:
        """The resolver's view of the device.

        Raises:
            IndexCorruption: the stored report no longer builds a profile.
        """
        try:
            return DeviceProfile.build(self.device_id, self.hardware,
                                       {p: (c["vendor"], c.get("version"), state_of(c), needs_of(c))
                                        for p, c in self.components.items()}, self.addons)
        except (ResolverError, RecordError, KeyError, TypeError) as exc:
            raise IndexCorruption(f"inventory: device {self.device_id} does not build a profile: {exc}") from exc

    def to_json(self, now: float, stale_after: float) -> dict[str, Any]:
        return {"device_id": self.device_id, "address": self.address, "hardware": self.hardware,
                "addons": self.addons, "location": self.location, "components": self.components,
                "ready": self.ready, "readiness": str(readiness(self.ready, self.last_seen, now, stale_after)),
                "last_result": self.last_result, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "heartbeats": self.heartbeats}


@dataclass(frozen=True)
class Assessment:
    """The resolver's verdict on one device at one ledger block."""

    device_id: str
    block: int
    outdated: bool
    at_risk: bool      # runs a revoked, vulnerable or flagged release (R10.b.ii)
    unknown: bool      # runs a version the ledger does not have (T9.e)
    report: dict[str, Any]
    upgrades: tuple[dict[str, Any], ...] = ()
    at: float = 0.0


@dataclass(frozen=True)
class TriggerRow:
    id: int
    at: float
    source: str
    clause: str
    signer: str
    header_hash: str
    link: str
    version: str
    accepted: bool
    code: str | None
    message: str | None
    devices: int | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)
