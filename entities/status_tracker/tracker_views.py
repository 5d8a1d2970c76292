"""The tracker's queries (X.1368 C11.2.a): the fleet as operators and dashboards read it. A mixin
of :class:`~.daemon.Tracker`.

- :meth:`TrackerViews.devices` (with status filters), :meth:`TrackerViews.device`,
  :meth:`TrackerViews.device_detail`: each device's report, readiness, verdict, updates needed
  and the releases firmware servers said concern it (C11.3.g);
- :meth:`TrackerViews.plan`: a device's plan against the ledger now, with why each held upgrade
  is held (:mod:`.rollout_ops`);
- :meth:`TrackerViews.outdated_lists`: up-to-date, outdated, revoked or vulnerable, unknown
  versions... by device id (R10.b);
- :meth:`TrackerViews.health`.

Also :func:`_finding_json`, a resolver finding as stored and shown (the daemon's assessments use it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from entities.protocol.heartbeat import FIRMWARE_STATUSES, firmware_status

from .inventory import Assessment, DeviceRow, TrackerRefusal
from .resolver import FindingKind, Resolver
from .rollout_ops import TrackerRollouts

if TYPE_CHECKING:
    from ledger_node.fullnode import FullNode

    from .concerned import ConcernedStore
    from .config import TrackerConfig
    from .observations import PendingObservations

__all__ = ["TrackerViews"]

_AT_RISK = frozenset({FindingKind.REVOKED, FindingKind.VULNERABLE, FindingKind.FLAGGED})


def _finding_json(f: Any) -> dict[str, Any]:
    nothing = f.kind in (FindingKind.NO_FIRMWARE, FindingKind.UNVERIFIED)  # no proven version runs
    return {"product": f.product, "kind": str(f.kind), "installed": None if nothing else str(f.installed),
            "newest": None if f.newest is None else str(f.newest),
            "planned": None if f.planned is None else str(f.planned), "detail": f.detail}


class TrackerViews(TrackerRollouts):
    """See the module docstring (needs the tracker's stores, its catalog and ``assess``)."""

    config: TrackerConfig
    clock: Callable[[], float]
    concerned: ConcernedStore
    observations: PendingObservations
    node: FullNode
    chain_id: int
    registry: str
    last_sync_at: float | None
    last_sync_error: str | None
    _assess_lock: threading.RLock
    _resolver: Resolver | None
    _catalog_block: int

    if TYPE_CHECKING:
        @property
        def address(self) -> str: ...

        def assess(self, devices: Sequence[DeviceRow], cause: str, *,
                   whole_fleet: bool = False) -> list[Assessment]: ...

    # ================================================================ queries (C11.2.a)

    def ledger_block(self) -> int | None:
        cursor = self.index.cursor()
        return None if cursor is None else cursor.block

    def device(self, device_id: str) -> DeviceRow:
        """Raises:
            TrackerRefusal: ``unknown_device``.
        """
        row = self.inventory.device(device_id)
        if row is None:
            raise TrackerRefusal("unknown_device", f"no device {device_id} in the inventory")
        return row

    def _device_json(self, row: DeviceRow, verdict: dict[str, Any] | None, needs: list[dict[str, Any]],
                     now: float, concerned: list[dict[str, Any]]) -> dict[str, Any]:
        out = row.to_json(now, self.config.stale_after)
        out["assessment"] = None if verdict is None else {
            "block": verdict["block"], "outdated": verdict["outdated"], "at_risk": verdict["at_risk"],
            "unknown": verdict["unknown"], "reasons": verdict["report"]["reasons"],
            "findings": verdict["report"].get("findings", [])}
        out["update_needed"] = [{k: n[k] for k in ("product", "from_version", "to_version", "header_hash", "cause",
                                                   "since")} for n in needs]
        out["firmware"] = firmware_status(row.components)
        out["concerned"] = concerned  # C11.3.g: releases firmware servers said concern it
        return out

    def devices(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every device with its status, readiness and verdict; ``status`` filters:
        ``outdated``, ``up-to-date``, ``at-risk``, ``unknown``, ``unreachable``, ``update-needed``,
        ``safe-mode`` (a component the device says is in safe mode, C11.1.a.iv), ``no-firmware``,
        ``unverified``, ``in-trial`` (a component in that state; never up to date), ``concerned`` (a
        firmware server said a release concerns it, C11.3.g, and it does not run that release yet)."""
        now = self.clock()
        verdicts = self.inventory.assessments()
        needs: dict[str, list[dict[str, Any]]] = {}
        for n in self.inventory.needs():
            needs.setdefault(n["device_id"], []).append(n)
        concerned = self.concerned.by_device()
        rows = [self._device_json(r, verdicts.get(r.device_id), needs.get(r.device_id, []), now,
                                  concerned.get(r.device_id, [])) for r in self.inventory.devices()]

        def keep(d: dict[str, Any]) -> bool:
            a = d["assessment"]
            firmware: dict[str | None, bool] = {k: k in d["firmware"] for k in FIRMWARE_STATUSES}
            return {None: True,
                    "outdated": bool(a and a["outdated"]),
                    "up-to-date": bool(a and not a["outdated"]),
                    "at-risk": bool(a and a["at_risk"]),
                    "unknown": bool(a and a["unknown"]),
                    "unreachable": d["readiness"] == "unreachable",
                    "update-needed": bool(d["update_needed"]),
                    "concerned": any(e["state"] != "updated" for e in d["concerned"]),
                    **firmware}[status]

        return [d for d in rows if keep(d)]

    def device_detail(self, device_id: str, log_limit: int = 50) -> dict[str, Any]:
        """One device, its verdict, updates needed and its newest communication log entries.

        Raises:
            TrackerRefusal: ``unknown_device``.
        """
        row = self.device(device_id)
        out = self._device_json(row, self.inventory.assessment(device_id), self.inventory.needs(device_id),
                                self.clock(), self.concerned.entries(device_id=device_id))
        out["log"] = self.inventory.communications(device_id, limit=log_limit)
        return out

    def plan(self, device_id: str) -> dict[str, Any]:
        """The device's plan against the ledger now: upgrades in order, blocked components and why.

        Raises:
            TrackerRefusal: ``unknown_device``, ``not_synced``.
        """
        row = self.device(device_id)
        with self._assess_lock:
            resolver, block = self._resolver, self._catalog_block
            if resolver is None:
                raise TrackerRefusal("not_synced", "the tracker has not synced the ledger yet")
            rep = resolver.outdated(row.profile())
        out = rep.to_json()
        _keep, _gates, held = self._gate(device_id, out["plan"]["upgrades"])
        if any(h["reason"] == "not_enrolled" for h in held):
            # the catalog changed since the device's last assessment: assess it now (it is
            # enrolled in the new releases' rollouts), so the plan and its rollouts agree
            self.assess([row], "heartbeat")
            _keep, _gates, held = self._gate(device_id, out["plan"]["upgrades"])
        return {**out, "findings": [_finding_json(f) for f in rep.findings], "catalog_block": block,
                "ledger_block": self.ledger_block(), "update_needed": self.inventory.needs(device_id), "held": held}

    def outdated_lists(self) -> dict[str, Any]:
        """C11.2.a: up-to-date and outdated devices by id (R10.b.i), those running a revoked,
        vulnerable or flagged release (R10.b.ii), those running versions not on the ledger, those
        not assessed yet, and those with a component in safe mode (the device says it needs an
        update, C11.1.a.iv), with no firmware, an unverified image or an image on trial (never up
        to date); each listed device with its reasons."""
        verdicts = self.inventory.assessments()
        ids = [r.device_id for r in self.inventory.devices()]
        out: dict[str, Any] = {"ledger_block": self.ledger_block(), "devices": len(ids), "up_to_date": [],
                               "outdated": [], "revoked_or_vulnerable": [], "unknown_versions": [],
                               "unassessed": [], "safe_mode": [], "no_firmware": [], "unverified": [],
                               "in_trial": [], "observations_pending": self.observations.entries(),
                               "concerned": [e for e in self.concerned.entries() if e["state"] != "updated"]}
        rows = {r.device_id: r for r in self.inventory.devices()}
        for dev in ids:
            for status in firmware_status(rows[dev].components):  # not up to date, whatever the verdict
                out[status.replace("-", "_")].append(dev)
            v = verdicts.get(dev)
            if v is None:
                out["unassessed"].append(dev)
                continue
            findings = v["report"].get("findings", [])
            if v["outdated"]:
                out["outdated"].append({"device_id": dev, "reasons": v["report"]["reasons"],
                                        "upgrades": v["report"]["plan"]["upgrades"]})
            else:
                out["up_to_date"].append(dev)
            if v["at_risk"]:
                out["revoked_or_vulnerable"].append(
                    {"device_id": dev, "findings": [f for f in findings if f["kind"] in _AT_RISK]})
            if v["unknown"]:
                out["unknown_versions"].append(
                    {"device_id": dev, "findings": [f for f in findings if f["kind"] == FindingKind.UNKNOWN]})
        return out

    def health(self) -> dict[str, Any]:
        cursor = self.index.cursor()
        return {"status": "ok" if self.last_sync_error is None else "degraded", "role": self.config.role,
                "address": self.address, "chain_id": self.chain_id, "registry": self.registry,
                "ledger_block": None if cursor is None else cursor.block,
                "ledger_hash": None if cursor is None else cursor.block_hash,
                "confirmations": self.node.confirmations, "devices": self.inventory.counts()["devices"],
                "last_sync_at": self.last_sync_at, "last_sync_error": self.last_sync_error,
                "observations_pending": len(self.observations)}
