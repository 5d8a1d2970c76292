"""Rollouts in waves (docs/MODULES.md section 4; X.1368 P2, R10.e.i): pure decisions, no I/O.

A rollout exists per target release (``header_hash``). Each device that needs the release
falls in a stable wave: ``bucket = int(sha256(f"{header_hash}:{device_id}")[:8], 16) / 2**32``
and the device is in the first wave ``w`` with ``bucket < waves[w]`` (``waves`` are cumulative
fleet shares ending at 1.0). The rollout opens wave 0 at creation; :func:`decide` then says,
from per-wave counts, whether to halt, to open the next wave(s), or that it is complete;
:func:`manual` applies an administrator's halt, resume or advance (T9.c).

States: ``running`` (commands flow to the open waves), ``halted`` (no command at all until an
administrator resumes; :class:`HaltReason` says why and how to resume), ``completed`` (every
wave open and every device reported; a device that needs the release later is still admitted
and turns it back to ``running``), ``cancelled`` (terminal: an operator cancelled it; no command
is ever issued for it again and it is never revived).

The canary: when the decision would open waves past an empty wave 0 (a small fleet: with three
devices a 10 % wave usually holds none), the store first moves the device of the lowest bucket
into wave 0 (:func:`canary_wanted`), so a non-empty fleet never skips its canary.

Operator steering (issue 15), pure here: a :class:`Target` (all devices, devices by admission
labels, or a list of ids) says which devices the rollout covers; devices outside it are not
enrolled, so they are not offered the release by this rollout (their plan says "not targeted").
A :class:`Schedule` (a start time and daily UTC maintenance windows, optionally per label) says
when commands may be issued (:meth:`Schedule.blocks`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from entities.protocol.admission import DEVICE_ID_RE, LABEL_NAME_RE, LABEL_VALUE_RE
from ledger_node.errors import ConfigError, FwledgerError

__all__ = [
    "TRANSIENT_CODES",
    "Decision",
    "DeviceState",
    "HaltReason",
    "RolloutError",
    "RolloutSettings",
    "RolloutState",
    "Schedule",
    "Target",
    "WaveCounts",
    "Window",
    "admits",
    "bucket",
    "canary_wanted",
    "decide",
    "manual",
    "result_state",
    "wave_of",
    "wave_status",
]


class RolloutState(StrEnum):
    RUNNING = "running"
    HALTED = "halted"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class DeviceState(StrEnum):
    """A device's standing in one rollout."""

    NEEDED = "needed"         # needs the release, no command outstanding
    COMMANDED = "commanded"   # a command carrying the release was issued, no result yet
    SUCCEEDED = "succeeded"   # reported installed (or seen running it)
    FAILED = "failed"         # reported a failure
    SILENT = "silent"         # its command expired without a report: settled for the wave's progress
    #                           (an offline device never blocks a rollout), commanded again when it is back


class RolloutError(FwledgerError):
    """An administrator's action that does not apply to the rollout's state; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class RolloutSettings:
    """A rollout's settings, fixed at its creation (the ``[tracker]`` keys of the same names)."""

    waves: tuple[float, ...] = (0.1, 0.5, 1.0)
    halt_failure_rate: float = 0.25
    halt_min_failures: int = 1

    def __post_init__(self) -> None:
        w = self.waves
        if not w or w[-1] != 1.0 or any(not 0 < x <= 1 for x in w) or any(a >= b for a, b in itertools.pairwise(w)):
            raise ConfigError(f"waves must be increasing fleet shares in (0, 1] ending at 1.0, not {w}")
        if not 0 <= self.halt_failure_rate < 1 or self.halt_min_failures < 1:
            raise ConfigError("halt_failure_rate must be in [0, 1) and halt_min_failures at least 1")

    @property
    def last_wave(self) -> int:
        return len(self.waves) - 1

    def to_json(self) -> dict[str, Any]:
        return {"waves": list(self.waves), "halt_failure_rate": self.halt_failure_rate,
                "halt_min_failures": self.halt_min_failures}

    @classmethod
    def from_json(cls, obj: Any) -> RolloutSettings:
        """Raises:
            ConfigError: not a settings object.
        """
        try:
            return cls(tuple(float(w) for w in obj["waves"]), float(obj["halt_failure_rate"]),
                       int(obj["halt_min_failures"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad rollout settings {obj!r}: {exc}") from exc


def bucket(header_hash: str, device_id: str, key: bytes = b"") -> float:
    """The device's stable position in [0, 1) for this release: HMAC-SHA256 under the tracker's
    secret ``key`` (:attr:`~.daemon.Tracker.wave_key`), so nobody can pick device ids that land in
    a canary wave from public data; an empty key (pure tests) uses plain SHA-256."""
    text = f"{header_hash.lower()}:{device_id}".encode()
    digest = hmac.new(key, text, hashlib.sha256).hexdigest() if key else hashlib.sha256(text).hexdigest()
    return int(digest[:8], 16) / 2**32


def wave_of(header_hash: str, device_id: str, waves: Sequence[float], key: bytes = b"") -> int:
    """The first wave ``w`` with ``bucket < waves[w]``."""
    b = bucket(header_hash, device_id, key)
    for i, share in enumerate(waves):
        if b < share:
            return i
    return len(waves) - 1


@dataclass(frozen=True)
class WaveCounts:
    """The devices of one wave that needed the release, by state."""

    wave: int
    share: float
    devices: int = 0
    commanded: int = 0
    succeeded: int = 0
    failed: int = 0
    silent: int = 0

    @property
    def reported(self) -> int:
        return self.succeeded + self.failed

    @property
    def pending(self) -> int:
        """Not settled yet (needed or commanded; a silent device is settled)."""
        return self.devices - self.reported - self.silent

    def to_json(self) -> dict[str, Any]:
        return {"wave": self.wave, "share": self.share, "devices": self.devices,
                "needed": self.pending - self.commanded, "commanded": self.commanded, "succeeded": self.succeeded,
                "failed": self.failed, "silent": self.silent}


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` or :func:`manual` concluded: the new state and open wave, and why."""

    state: RolloutState
    open_wave: int
    action: str   # "hold", "halt", "advance", "complete", "reopen", "resume", "retry", "cancel"
    reason: str
    halt: HaltReason | None = None  # with state "halted" reached now: why (the store adds codes, who, when)

    def changed(self, state: str, open_wave: int) -> bool:
        return (str(self.state), self.open_wave) != (str(state), open_wave)


@dataclass(frozen=True)
class HaltReason:
    """Why a rollout halted: the failure threshold (``by`` = "threshold": the wave, failures of
    reports counted since the last resume, their codes) or an operator (``by`` = the address,
    ``message`` = the reason given)."""

    by: str
    message: str
    wave: int | None = None
    failed: int | None = None
    reported: int | None = None
    codes: Mapping[str, int] = field(default_factory=dict)
    at: float = 0.0

    def to_json(self, rollout_id: int) -> dict[str, Any]:
        return {"by": self.by, "message": self.message, "wave": self.wave, "failed": self.failed,
                "reported": self.reported, "codes": dict(self.codes), "at": self.at,
                "resume": f"fwledger tracker rollout resume {rollout_id}"}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HaltReason:
        return cls(str(obj["by"]), str(obj["message"]), obj.get("wave"), obj.get("failed"), obj.get("reported"),
                   dict(obj.get("codes") or {}), float(obj.get("at") or 0.0))


#: result codes that say an update could not be tried now (a module, a server or the chain node
#: did not answer), not that it failed on the device: such a result sends the device back to
#: "needed" (a new command later) and never counts towards halting the rollout
TRANSIENT_CODES = frozenset({
    "unavailable", "not_synced", "block_not_synced",                     # a tracker could not answer
    "tracker_unreachable", "server_unreachable", "network_error",        # no answer at all
    "connection_lost", "download_interrupted",
    "unknown_image", "not_published",   # the firmware server has not indexed a release the device proved yet
    "ledger_unproven",  # the firmware server cannot prove the release now (its node down, no trusted header yet)
    "status_unproven",  # the device could not prove the release's standing again before its trial boot
})


def result_state(ok: bool, code: str | None) -> DeviceState:
    """A device's standing in a rollout after it reported one upgrade's result."""
    if ok:
        return DeviceState.SUCCEEDED
    return DeviceState.NEEDED if code in TRANSIENT_CODES else DeviceState.FAILED


def admits(state: str, open_wave: int, wave: int) -> bool:
    """Whether a rollout lets a command reach a device of ``wave`` (its wave is open, not halted
    or cancelled; the schedule is judged apart: :meth:`Schedule.blocks`)."""
    return RolloutState(state) not in (RolloutState.HALTED, RolloutState.CANCELLED) and wave <= open_wave


def wave_status(state: str, open_wave: int, c: WaveCounts) -> str:
    """How a wave reads to an operator: ``empty`` (no device in it), ``done`` (opened and every
    device settled, or the rollout completed), ``waiting`` (not opened yet), ``halted`` /
    ``cancelled`` (opened, devices pending, the rollout stopped), ``open``."""
    st = RolloutState(state)
    if c.devices == 0:
        return "empty"
    if st is RolloutState.COMPLETED or (c.wave <= open_wave and c.pending == 0):
        return "done"
    if c.wave > open_wave:
        return "waiting"
    if st in (RolloutState.HALTED, RolloutState.CANCELLED):
        return str(st)
    return "open"


def canary_wanted(state: str, open_wave: int, counts: Sequence[WaveCounts]) -> bool:
    """A running rollout still at its canary whose wave 0 holds no device while later waves have
    devices pending: the store moves the lowest-bucket one into wave 0 before deciding, so a
    small fleet never passes its canary without one (docs/MODULES.md section 4)."""
    return (RolloutState(state) is RolloutState.RUNNING and open_wave == 0
            and not any(c.devices for c in counts if c.wave == 0)
            and any(c.pending for c in counts if c.wave > 0))


def _totals(counts: Sequence[WaveCounts], open_wave: int) -> tuple[int, int, int]:
    """Failures, reported and pending over the open waves."""
    opened = [c for c in counts if c.wave <= open_wave]
    return (sum(c.failed for c in opened), sum(c.reported for c in opened), sum(c.pending for c in opened))


def _should_halt(settings: RolloutSettings, failed: int, reported: int) -> bool:
    return failed >= settings.halt_min_failures and reported > 0 and failed / reported > settings.halt_failure_rate


def decide(settings: RolloutSettings, state: str, open_wave: int, counts: Sequence[WaveCounts], *,
           baseline: tuple[int, int] = (0, 0), advance: bool = True) -> Decision:
    """The automatic step of a rollout (docs/MODULES.md section 4).

    - A halted rollout stays halted (only an administrator resumes it).
    - Halt as soon as ``failures >= halt_min_failures`` and ``failures / reported >
      halt_failure_rate`` over the open waves (failures and reports counted since the last
      resume: ``baseline`` = (failed, reported) at that moment).
    - Otherwise, when every device of the open waves has reported (or fell silent: its command
      expired unanswered): open the next wave (and the ones after it that have nothing pending),
      or, all waves open, complete.
    - A rollout with no device at all holds (an operator may create one before devices need it).
    - ``advance=False`` (a device just joined): never opens a wave, so a fleet that registers one
      device at a time cannot skip the canary; it may still halt or reopen.

    ``counts`` lists the waves (missing ones count as empty).
    """
    st = RolloutState(state)
    if st is RolloutState.HALTED:
        return Decision(st, open_wave, "hold", "halted: waiting for an administrator")
    if st is RolloutState.CANCELLED:
        return Decision(st, open_wave, "hold", "cancelled")
    failed, reported, pending = _totals(counts, open_wave)
    f, r = failed - baseline[0], reported - baseline[1]
    if _should_halt(settings, f, r):
        why = (f"failure threshold crossed in wave {open_wave}: {f} of {r} reported updates failed "
               f"(threshold {settings.halt_failure_rate:g}, at least {settings.halt_min_failures})")
        return Decision(RolloutState.HALTED, open_wave, "halt", why,
                        HaltReason("threshold", why, wave=open_wave, failed=f, reported=r))
    if pending:
        if st is RolloutState.COMPLETED:
            return Decision(RolloutState.RUNNING, open_wave, "reopen", f"{pending} device(s) joined the rollout")
        return Decision(st, open_wave, "hold", f"{pending} device(s) of the open waves have not reported")
    if st is RolloutState.COMPLETED:
        return Decision(st, open_wave, "hold", "completed")
    if not any(c.devices for c in counts):  # created ahead of its devices (or all left): nothing to complete
        return Decision(st, open_wave, "hold", "no device in the rollout yet")
    wave = open_wave
    if advance:
        while wave < settings.last_wave:
            wave += 1
            if _totals(counts, wave)[2]:
                break
    if wave == settings.last_wave and not _totals(counts, wave)[2]:
        return Decision(RolloutState.COMPLETED, wave, "complete" if wave == open_wave else "advance",
                        f"every device reported ({reported - failed} succeeded, {failed} failed)")
    if wave != open_wave:
        return Decision(RolloutState.RUNNING, wave, "advance",
                        f"waves up to {open_wave} reported with {failed} failure(s): wave {wave} opened")
    return Decision(st, wave, "hold", "waiting for the next evidence")


def manual(settings: RolloutSettings, action: str, state: str, open_wave: int, counts: Sequence[WaveCounts], *,
           baseline: tuple[int, int] = (0, 0), by: str = "an administrator", reason: str | None = None
           ) -> tuple[Decision, tuple[int, int]]:
    """An administrator's ``halt``, ``resume``, ``advance``, ``retry`` or ``cancel`` (T9.c);
    returns the decision and the new baseline (a resume acknowledges the failures so far: the
    halt rule counts from there). ``by`` and ``reason``: who acts and why (kept with a halt or
    a cancel).

    ``cancel``: terminal; from any state but cancelled.

    ``retry``: the caller has sent the rollout's failed devices back to "needed" (``counts`` are
    those after it); the rollout runs again (from halted or completed) with its failures
    acknowledged, and those devices get new commands.

    Raises:
        RolloutError: ``rollout_completed`` (halt or advance a completed rollout),
            ``rollout_not_halted`` (resume), ``rollout_halted`` (advance a halted rollout: resume
            first), ``rollout_fully_open`` (advance with every wave open), ``rollout_cancelled``
            (any action on a cancelled rollout), ``bad_action``.
    """
    st = RolloutState(state)
    if st is RolloutState.CANCELLED:
        raise RolloutError("rollout_cancelled", "the rollout is cancelled: nothing more happens to it")
    failed, reported, _pending = _totals(counts, settings.last_wave)
    said = f": {reason}" if reason else ""
    if action == "cancel":
        why = f"cancelled by {by}{said}"
        return Decision(RolloutState.CANCELLED, open_wave, "cancel", why), baseline
    if action == "halt":
        if st is RolloutState.COMPLETED:
            raise RolloutError("rollout_completed", "the rollout is completed: nothing to halt")
        why = f"halted by {by}{said}"
        return Decision(RolloutState.HALTED, open_wave, "halt", why, HaltReason(by, why)), baseline
    if action == "resume":
        if st is not RolloutState.HALTED:
            raise RolloutError("rollout_not_halted", f"the rollout is {st}, not halted")
        base = (failed, reported)
        after = decide(settings, RolloutState.RUNNING, open_wave, counts, baseline=base)
        return Decision(after.state, after.open_wave, "resume",
                        f"resumed by an administrator ({failed} failure(s) acknowledged); {after.reason}"), base
    if action == "advance":
        if st is RolloutState.HALTED:
            raise RolloutError("rollout_halted", "the rollout is halted: resume it first")
        if open_wave >= settings.last_wave:
            raise RolloutError("rollout_fully_open" if st is RolloutState.RUNNING else "rollout_completed",
                               "every wave of the rollout is open already")
        after = decide(settings, RolloutState.RUNNING, open_wave + 1, counts, baseline=baseline, advance=False)
        return Decision(after.state, after.open_wave, "advance",
                        f"wave {open_wave + 1} opened by an administrator; {after.reason}"), baseline
    if action == "retry":
        base = (failed, reported)
        after = decide(settings, RolloutState.RUNNING, open_wave, counts, baseline=base, advance=False)
        return Decision(after.state, after.open_wave, "retry",
                        f"failed devices to be tried again by an administrator; {after.reason}"), base
    raise RolloutError("bad_action", f"unknown rollout action {action!r}")


# ----------------------------------------------------------------------------- operator steering (issue 15)

MAX_TARGET_DEVICES = 10_000
MAX_WINDOWS = 16


@dataclass(frozen=True)
class Target:
    """Which devices a rollout covers: every device (the default), the devices whose admission
    labels match (``labels``: name -> accepted values; every name must match, one of its values
    suffices), or the devices listed (``devices``). A device outside the target is not enrolled:
    this rollout never offers it the release."""

    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    devices: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "labels" if self.labels else "devices" if self.devices else "all"

    def matches(self, device_id: str, labels: Mapping[str, str]) -> bool:
        if self.devices:
            return device_id in self.devices
        return all(labels.get(name) in values for name, values in self.labels)

    def describe(self) -> str:
        if self.labels:
            return "devices labelled " + " and ".join(f"{n}={'|'.join(vs)}" for n, vs in self.labels)
        if self.devices:
            return f"{len(self.devices)} listed device(s)"
        return "all devices"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": {n: list(vs) for n, vs in self.labels}, "devices": list(self.devices),
                "describe": self.describe()}

    @classmethod
    def parse(cls, labels: Sequence[str] | Mapping[str, Any] = (), devices: Sequence[str] = ()) -> Target:
        """From ``["name=value", ...]`` (or ``{name: value | [values]}``) or device ids; neither: all.

        Raises:
            RolloutError: ``bad_target`` (both given, a malformed label or id, too many).
        """
        if labels and devices:
            raise RolloutError("bad_target", "target either labels or devices, not both")
        pairs: dict[str, list[str]] = {}
        items: list[tuple[Any, Any]] = []
        if isinstance(labels, Mapping):
            for k, v in labels.items():
                items += [(k, x) for x in (v if isinstance(v, list | tuple) else [v])]
        else:
            for item in labels:
                if not isinstance(item, str) or "=" not in item:
                    raise RolloutError("bad_target", f"label {item!r} is not NAME=VALUE")
                items.append(tuple(x.strip() for x in item.split("=", 1)))  # type: ignore[arg-type]
        for k, v in items:
            if not isinstance(k, str) or not LABEL_NAME_RE.match(k):
                raise RolloutError("bad_target", f"label name {k!r} must be lower-case letters, digits, '_.-' (1-32)")
            if not isinstance(v, str) or not LABEL_VALUE_RE.match(v):
                raise RolloutError("bad_target", f"label {k}: value {v!r} must be letters, digits, '._:/-' (1-64)")
            if v not in pairs.setdefault(k, []):
                pairs[k].append(v)
        if len(pairs) > 16 or len(devices) > MAX_TARGET_DEVICES:
            raise RolloutError("bad_target", f"at most 16 label names and {MAX_TARGET_DEVICES} devices")
        for d in devices:
            if not isinstance(d, str) or not DEVICE_ID_RE.match(d):
                raise RolloutError("bad_target", f"{d!r} is not a device id")
        return cls(tuple((k, tuple(sorted(vs))) for k, vs in sorted(pairs.items())), tuple(sorted(set(devices))))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> Target:
        if not obj:
            return cls()
        return cls.parse(dict(obj.get("labels") or {}), list(obj.get("devices") or ()))


_WINDOW = re.compile(r"^(?:([a-z][a-z0-9_.-]{0,31})=([A-Za-z0-9][A-Za-z0-9._:/-]{0,63})@)?"
                     r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Window:
    """A daily maintenance window in UTC, ``[start, end)`` in minutes of the day (it may wrap
    past midnight), for every device or only those labelled ``label`` = (name, value)."""

    start: int
    end: int
    label: tuple[str, str] | None = None

    def contains(self, now: float) -> bool:
        t = datetime.fromtimestamp(now, UTC)
        m = t.hour * 60 + t.minute
        return self.start <= m < self.end if self.start < self.end else (m >= self.start or m < self.end)

    def text(self) -> str:
        span = f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        return f"{self.label[0]}={self.label[1]}@{span}" if self.label else span

    @classmethod
    def parse(cls, text: str) -> Window:
        """``HH:MM-HH:MM`` or ``name=value@HH:MM-HH:MM`` (UTC).

        Raises:
            RolloutError: ``bad_schedule``.
        """
        m = _WINDOW.match(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise RolloutError("bad_schedule", f"window {text!r} is not HH:MM-HH:MM or NAME=VALUE@HH:MM-HH:MM (UTC)")
        start, end = int(m[3]) * 60 + int(m[4]), int(m[5]) * 60 + int(m[6])
        if start == end:
            raise RolloutError("bad_schedule", f"window {text!r} is empty")
        return cls(start, end, (m[1], m[2]) if m[1] else None)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Schedule:
    """When a rollout may issue commands: not before ``start_at`` (seconds since the epoch), and
    only inside the device's maintenance window: the first window whose label the device has,
    else the first window for every device, else at any time."""

    start_at: float | None = None
    windows: tuple[Window, ...] = ()

    def window_for(self, labels: Mapping[str, str]) -> Window | None:
        for w in self.windows:
            if w.label is not None and labels.get(w.label[0]) == w.label[1]:
                return w
        return next((w for w in self.windows if w.label is None), None)

    def blocks(self, now: float, labels: Mapping[str, str]) -> tuple[str, str] | None:
        """``(code, message)`` when no command may go to a device with ``labels`` at ``now``:
        ``not_started`` or ``outside_window``; None when one may."""
        if self.start_at is not None and now < self.start_at:
            return "not_started", f"the rollout starts at {_iso(self.start_at)}"
        w = self.window_for(labels)
        if w is not None and not w.contains(now):
            return "outside_window", f"outside the maintenance window {w.text()} UTC"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"start_at": self.start_at, "start": None if self.start_at is None else _iso(self.start_at),
                "windows": [w.text() for w in self.windows]}

    @classmethod
    def parse(cls, start: str | float | None = None, windows: Sequence[str] = ()) -> Schedule:
        """``start``: ISO 8601 (UTC unless it says otherwise) or seconds since the epoch.

        Raises:
            RolloutError: ``bad_schedule``.
        """
        at: float | None = None
        if isinstance(start, bool):
            raise RolloutError("bad_schedule", "start must be an ISO 8601 time")
        if isinstance(start, int | float):
            at = float(start)
        elif isinstance(start, str):
            try:
                t = datetime.fromisoformat(start.strip())
            except ValueError:
                raise RolloutError("bad_schedule", f"start {start!r} is not an ISO 8601 time") from None
            at = (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
        elif start is not None:
            raise RolloutError("bad_schedule", "start must be an ISO 8601 time")
        if not isinstance(windows, list | tuple) or len(windows) > MAX_WINDOWS:
            raise RolloutError("bad_schedule", f"windows must be a list of at most {MAX_WINDOWS}")
        return cls(at, tuple(Window.parse(w) for w in windows))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> Schedule:
        if not obj:
            return cls()
        return cls.parse(obj.get("start_at"), list(obj.get("windows") or ()))
