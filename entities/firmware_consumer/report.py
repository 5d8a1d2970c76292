"""What the device agent tells of a pass (:class:`PassReport`) and of each upgrade it tried in it
(:class:`UpgradeResult`): the CLI prints them (``--json``: :meth:`PassReport.to_json`), the demo
and the tests read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .client import TrackerClient

__all__ = ["PassReport", "UpgradeResult"]


@dataclass
class UpgradeResult:
    """What became of one planned upgrade."""

    product: str
    vendor: str
    version: str
    header_hash: str
    component: str | None = None
    ok: bool = False
    outcome: str = "failed"
    code: str | None = None
    message: str = ""
    download: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    #: ``time.monotonic()`` when its image was installed, slot pending (not reported)
    installed_at: float | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "vendor": self.vendor, "version": self.version,
                "header_hash": self.header_hash, "component": self.component, "ok": self.ok,
                "outcome": self.outcome, "code": self.code, "message": self.message, "download": self.download,
                "report": self.report}


@dataclass
class PassReport:
    """One pass of :meth:`.agent.Agent.check_and_update`."""

    device_id: str
    hardware: str
    trackers: list[dict[str, Any]] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    #: upgrades of the tracker's plan its rollouts hold back now (not run): product, to_version, header_hash, reason...
    held: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    block: int | None = None
    results: list[UpgradeResult] = field(default_factory=list)
    outdated: bool | None = None
    seconds: float = 0.0
    #: from the pass's start until its last image was installed (slot pending, before its trial boot,
    #: confirm and report): the check, download, verification and install; None if none was
    installed_seconds: float | None = None
    #: one entry per command received: command_id, tracker, accepted, code, message, rollout, wave, block
    commands: list[dict[str, Any]] = field(default_factory=list)
    #: command results posted this pass (or kept for later): command_id, tracker, ok, code
    posted: list[dict[str, Any]] = field(default_factory=list)
    #: step 0, trust anchors: serial, applied, refused, unreachable (:func:`.anchors.refresh_from_trackers`)
    anchors: dict[str, Any] | None = None
    #: components whose trial this pass confirmed (no health check: booted and reached its tracker)
    confirmed: list[str] = field(default_factory=list)
    #: trials this pass reverted before their confirm, their release's standing changed: component, version, code...
    reverted: list[dict[str, Any]] = field(default_factory=list)
    #: at the pass's start, each component whose last update failed: component, product, version, code, message
    last_failures: list[dict[str, Any]] = field(default_factory=list)
    #: the commands the heartbeat answers carried, with the tracker that delivered each (not reported)
    inbox: list[tuple[TrackerClient, Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """Every upgrade was installed and no command was refused (nothing to do is ok)."""
        return all(r.ok for r in self.results) and not self.refusals

    @property
    def failures(self) -> list[UpgradeResult]:
        return [r for r in self.results if not r.ok]

    @property
    def refusals(self) -> list[dict[str, Any]]:
        """The commands refused this pass (a re-sent command already acted on is not one)."""
        return [c for c in self.commands if not c["accepted"] and not c.get("resent")]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "device": self.device_id, "hardware": self.hardware, "trackers": self.trackers,
                "block": self.block, "plan": self.plan, "held": self.held, "reasons": self.reasons,
                "results": [r.to_json() for r in self.results], "outdated": self.outdated,
                "commands": self.commands, "posted": self.posted, "anchors": self.anchors,
                "confirmed": self.confirmed, "reverted": self.reverted, "last_failures": self.last_failures,
                "seconds": round(self.seconds, 3),
                "installed_seconds": None if self.installed_seconds is None else round(self.installed_seconds, 3)}
