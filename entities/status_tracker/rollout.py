"""Rollouts in waves (docs/MODULES.md section 4; X.1368 P2, R10.e.i): pure decisions, no I/O.

A rollout exists per target release (``header_hash``). Each device that needs the release
falls in a stable wave: ``bucket = int(sha256(f"{header_hash}:{device_id}")[:8], 16) / 2**32``
and the device is in the first wave ``w`` with ``bucket < waves[w]`` (``waves`` are cumulative
fleet shares ending at 1.0). The rollout opens wave 0 at creation; :func:`decide` then says,
from per-wave counts, whether to halt, to open the next wave(s), or that it is complete;
:func:`manual` applies an administrator's halt, resume or advance (T9.c).

States: ``running`` (commands flow to the open waves), ``halted`` (no command at all until an
administrator resumes), ``completed`` (every wave open and every device reported; a device
that needs the release later is still admitted and turns it back to ``running``).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ledger_node.errors import ConfigError, FwledgerError

__all__ = [
    "TRANSIENT_CODES",
    "Decision",
    "DeviceState",
    "RolloutError",
    "RolloutSettings",
    "RolloutState",
    "WaveCounts",
    "admits",
    "bucket",
    "decide",
    "manual",
    "result_state",
    "wave_of",
]


class RolloutState(StrEnum):
    RUNNING = "running"
    HALTED = "halted"
    COMPLETED = "completed"


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
    action: str   # "hold", "halt", "advance", "complete", "reopen", "resume"
    reason: str

    def changed(self, state: str, open_wave: int) -> bool:
        return (str(self.state), self.open_wave) != (str(state), open_wave)


#: result codes that say an update could not be tried now (a module, a server or the chain node
#: did not answer), not that it failed on the device: such a result sends the device back to
#: "needed" (a new command later) and never counts towards halting the rollout
TRANSIENT_CODES = frozenset({
    "unavailable", "not_synced", "block_not_synced",                     # a tracker could not answer
    "tracker_unreachable", "server_unreachable", "network_error",        # no answer at all
    "connection_lost", "download_interrupted",
    "unknown_image", "not_published",   # the firmware server has not indexed a release the device proved yet
})


def result_state(ok: bool, code: str | None) -> DeviceState:
    """A device's standing in a rollout after it reported one upgrade's result."""
    if ok:
        return DeviceState.SUCCEEDED
    return DeviceState.NEEDED if code in TRANSIENT_CODES else DeviceState.FAILED


def admits(state: str, open_wave: int, wave: int) -> bool:
    """Whether a rollout lets a command reach a device of ``wave`` (its wave is open, not halted)."""
    return RolloutState(state) is not RolloutState.HALTED and wave <= open_wave


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
    - ``advance=False`` (a device just joined): never opens a wave, so a fleet that registers one
      device at a time cannot skip the canary; it may still halt or reopen.

    ``counts`` lists the waves (missing ones count as empty).
    """
    st = RolloutState(state)
    if st is RolloutState.HALTED:
        return Decision(st, open_wave, "hold", "halted: waiting for an administrator")
    failed, reported, pending = _totals(counts, open_wave)
    f, r = failed - baseline[0], reported - baseline[1]
    if _should_halt(settings, f, r):
        return Decision(RolloutState.HALTED, open_wave, "halt",
                        f"{f} of {r} reported updates failed (threshold {settings.halt_failure_rate:g}, "
                        f"at least {settings.halt_min_failures})")
    if pending:
        if st is RolloutState.COMPLETED:
            return Decision(RolloutState.RUNNING, open_wave, "reopen", f"{pending} device(s) joined the rollout")
        return Decision(st, open_wave, "hold", f"{pending} device(s) of the open waves have not reported")
    if st is RolloutState.COMPLETED:
        return Decision(st, open_wave, "hold", "completed")
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
           baseline: tuple[int, int] = (0, 0)) -> tuple[Decision, tuple[int, int]]:
    """An administrator's ``halt``, ``resume``, ``advance`` or ``retry`` (T9.c); returns the
    decision and the new baseline (a resume acknowledges the failures so far: the halt rule
    counts from there).

    ``retry``: the caller has sent the rollout's failed devices back to "needed" (``counts`` are
    those after it); the rollout runs again (from halted or completed) with its failures
    acknowledged, and those devices get new commands.

    Raises:
        RolloutError: ``rollout_completed`` (halt or advance a completed rollout),
            ``rollout_not_halted`` (resume), ``rollout_halted`` (advance a halted rollout: resume
            first), ``rollout_fully_open`` (advance with every wave open), ``bad_action``.
    """
    st = RolloutState(state)
    failed, reported, _pending = _totals(counts, settings.last_wave)
    if action == "halt":
        if st is RolloutState.COMPLETED:
            raise RolloutError("rollout_completed", "the rollout is completed: nothing to halt")
        return Decision(RolloutState.HALTED, open_wave, "halt", "halted by an administrator"), baseline
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
