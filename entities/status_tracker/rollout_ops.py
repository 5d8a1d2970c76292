"""The tracker's rollout side (docs/MODULES.md section 4): the gate every command and every plan
passes, and the operator's steering (T9.c). A mixin of :class:`~.daemon.Tracker`.

The gate (:meth:`TrackerRollouts._gate`) holds an upgrade back, with a stable ``reason`` and a
one-line ``message`` an operator can act on:

==================  ==================================================================
``not_enrolled``    no rollout has the device yet (the next assessment enrols it)
``not_targeted``    the rollout's target leaves the device out: "not targeted by rollout N"
``rollout_cancelled`` the rollout was cancelled (who, when, why)
``rollout_halted``  halted (the threshold crossed or an operator), with the resume command
``wave_not_open``   the device's wave is not open yet
``not_started``     the rollout's start time is ahead
``outside_window``  outside the device's maintenance window (UTC)
``not_waiting``     the device settled in this rollout already (succeeded or failed)
``dependency_held`` an upgrade it depends on is held
==================  ==================================================================

Operator actions: ``halt`` (with a reason), ``resume``, ``advance``, ``retry``, ``cancel``
(with a reason; terminal), ``create`` (a rollout for a header hash before devices need it,
with its target, waves and schedule), ``target`` and ``schedule`` (change them later).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ledger_node.errors import ConfigError

from .inventory import Inventory, TrackerRefusal
from .rollout import DeviceState, RolloutError, RolloutSettings, RolloutState, Schedule, Target

if TYPE_CHECKING:
    from ledger_node.fullnode import Index

__all__ = ["HOLD_REASONS", "TrackerRollouts", "hold_message"]

HOLD_REASONS = ("not_enrolled", "not_targeted", "rollout_cancelled", "rollout_halted", "wave_not_open", "not_started",
                "outside_window", "not_waiting", "dependency_held")
_WAITING = {DeviceState.NEEDED, DeviceState.COMMANDED, DeviceState.SILENT}


def hold_message(reason: str, g: Mapping[str, Any] | None) -> str:
    """One line saying why an upgrade is held and, when an operator can change it, how."""
    if g is None:
        return "no rollout has this device yet"
    rid = g["rollout"]
    if reason == "not_targeted":
        return f"not targeted by rollout {rid} ({g['target']})"
    if reason == "rollout_cancelled":
        c = g.get("cancelled") or {}
        return f"rollout {rid} was cancelled by {c.get('by', '?')}" + (f": {c['reason']}" if c.get("reason") else "")
    if reason == "rollout_halted":
        h = g.get("halt") or {}
        return (f"rollout {rid} is halted ({h.get('message', 'halted')}); "
                f"resume: fwledger tracker rollout resume {rid}")
    if reason == "wave_not_open":
        return f"rollout {rid} has opened waves up to {g['open_wave']}, the device is in wave {g['wave']}"
    if reason in ("not_started", "outside_window"):
        return f"rollout {rid}: {g['blocked'][1]}"
    if reason == "not_waiting":
        return f"the device is {g['device_state']} in rollout {rid}"
    return f"rollout {rid}: an upgrade it depends on is held"


class TrackerRollouts:
    """See the module docstring (needs the tracker's ``inventory``, ``index``, ``clock``,
    ``rollout_settings`` and ``_event``)."""

    inventory: Inventory
    index: Index
    clock: Callable[[], float]
    rollout_settings: RolloutSettings
    log: logging.Logger

    if TYPE_CHECKING:
        def _event(self, name: str, **fields: Any) -> None: ...

    def _gate(self, device_id: str, plan: Sequence[Mapping[str, Any]], now: float | None = None
              ) -> tuple[list[int], list[dict[str, Any] | None], list[dict[str, Any]]]:
        """Which upgrades of a device's plan its rollouts admit now.

        Admitted: the device is enrolled in the release's rollout (so targeted by it), the
        rollout is neither halted nor cancelled, the device's wave is open, the schedule lets a
        command go now, the device still waits for the release (needed, commanded or silent),
        and every upgrade of the plan it depends on (``after``) is admitted too (to a fixpoint:
        a dependency cycle goes whole or not at all). Each release's rollout progresses on its
        own. Returns the admitted indexes in plan order, the gate of each upgrade
        (:meth:`.RolloutStore.admission`), and the held upgrades, each with ``reason`` (see the
        module docstring), ``message`` and its rollout's figures.
        """
        now = self.clock() if now is None else now
        gates = self.inventory.admission(device_id, [str(u["header_hash"]) for u in plan], now)
        why: dict[int, str] = {}
        for i, g in enumerate(gates):
            if g is None:
                why[i] = "not_enrolled"
            elif g["state"] == RolloutState.CANCELLED:
                why[i] = "rollout_cancelled"
            elif not g["enrolled"]:
                why[i] = "not_enrolled" if g["targeted"] else "not_targeted"
            elif g["state"] == RolloutState.HALTED:
                why[i] = "rollout_halted"
            elif g["wave"] > g["open_wave"]:
                why[i] = "wave_not_open"
            elif g["device_state"] not in _WAITING:
                why[i] = "not_waiting"
            elif g["blocked"]:
                why[i] = str(g["blocked"][0])
        keep = set(range(len(plan))) - set(why)
        in_plan = {u["product"] for u in plan}
        while True:
            kept = {plan[i]["product"] for i in keep}
            drop = {i for i in keep if (set(plan[i].get("after", ())) & in_plan) - kept}
            if not drop:
                break
            keep -= drop
            why.update(dict.fromkeys(drop, "dependency_held"))
        held = []
        for i in sorted(why):
            g = gates[i]
            held.append({"product": plan[i]["product"], "to_version": plan[i]["to_version"],
                         "header_hash": plan[i]["header_hash"], "reason": why[i], "message": hold_message(why[i], g),
                         **({k: g[k] for k in ("rollout", "state", "open_wave", "wave", "device_state")} if g else {})})
        return sorted(keep), gates, held

    # ================================================================ reading

    def rollouts(self) -> list[dict[str, Any]]:
        """Every rollout, newest first: id, header_hash, product, to_version, state, open_wave,
        settings, target, schedule, halt (why, with the resume command), cancelled (who, when,
        why), totals and ``waves`` [{wave, share, devices, needed, commanded, succeeded, failed,
        silent, reported, open, status}] (JSON-ready)."""
        return self.inventory.rollouts()

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        """One rollout as in :meth:`rollouts`, with its ``members`` (device, wave, state, command).

        Raises:
            TrackerRefusal: ``unknown_rollout``.
        """
        out = self.inventory.rollout(rollout_id)
        if out is None:
            raise TrackerRefusal("unknown_rollout", f"no rollout {rollout_id}")
        return out

    # ================================================================ operator actions (T9.c)

    def _operator(self, what: str, rollout_id: int | None, signer: str, call: Callable[[], dict[str, Any]]
                  ) -> dict[str, Any]:
        now = self.clock()
        try:
            out = call()
        except TrackerRefusal as refusal:
            self.inventory.log(now, None, "rollout_refused", {"rollout": rollout_id, "action": what,
                                                              "signer": signer, "code": refusal.code})
            self._event("rollout_refused", rollout=rollout_id, action=what, signer=signer, code=refusal.code)
            raise
        self._event("rollout_" + what, rollout=out["id"], signer=signer, state=out["state"],
                    open_wave=out["open_wave"])
        return out

    def rollout_action(self, rollout_id: int, action: str, signer: str, reason: str | None = None) -> dict[str, Any]:
        """An administrator (T9.c) halts (``reason`` kept), resumes, opens the next wave of a
        rollout, has its failed devices tried again, or cancels it (``reason`` kept; terminal:
        its outstanding unreported commands are superseded); logged, refused or not.

        Raises:
            TrackerRefusal: ``unknown_rollout``, ``rollout_completed``, ``rollout_not_halted``,
                ``rollout_halted``, ``rollout_fully_open``, ``rollout_no_failures``,
                ``rollout_cancelled``, ``bad_action``.
        """
        return self._operator(action, rollout_id, signer, lambda: self.inventory.rollout_action(
            rollout_id, action, self.clock(), signer, reason))

    def rollout_create(self, header_hash: str, signer: str, *, labels: Any = (), devices: Sequence[str] = (),
                       waves: Sequence[float] | None = None, start: str | float | None = None,
                       windows: Sequence[str] = ()) -> dict[str, Any]:
        """An operator's rollout for a release before devices need it (or before the tracker has
        indexed it): its target, waves and schedule.

        Raises:
            TrackerRefusal: ``rollout_exists``, ``bad_target``, ``bad_schedule``, ``bad_settings``.
        """
        hh = header_hash.lower()

        def call() -> dict[str, Any]:
            target, schedule = self._steering(labels, devices, start, windows)
            s = self.rollout_settings
            try:
                settings = RolloutSettings(tuple(float(w) for w in waves), s.halt_failure_rate,
                                           s.halt_min_failures) if waves else s
            except (ConfigError, TypeError, ValueError) as exc:
                raise TrackerRefusal("bad_settings", str(exc)) from None
            rel = self.index.release(hh)
            product, version = ("", "") if rel is None else (rel.record.data.product, str(rel.record.data.version))
            return self.inventory.create_rollout(hh, product, version, settings, target, schedule, self.clock(),
                                                 signer)

        return self._operator("create", None, signer, call)

    def rollout_steer(self, rollout_id: int, signer: str, *, target: Mapping[str, Any] | None = None,
                      schedule: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """An operator changes a rollout's target (``{"labels", "devices"}``; neither: every
        device) or schedule (``{"start", "windows"}``).

        Raises:
            TrackerRefusal: ``unknown_rollout``, ``rollout_cancelled``, ``bad_target``, ``bad_schedule``.
        """
        def call() -> dict[str, Any]:
            t, s = self._steering((target or {}).get("labels") or (), (target or {}).get("devices") or (),
                                  (schedule or {}).get("start"), (schedule or {}).get("windows") or ())
            return self.inventory.steer_rollout(rollout_id, self.clock(), signer,
                                                target=t if target is not None else None,
                                                schedule=s if schedule is not None else None)

        return self._operator("target" if target is not None else "schedule", rollout_id, signer, call)

    @staticmethod
    def _steering(labels: Any, devices: Sequence[str], start: str | float | None, windows: Sequence[str]
                  ) -> tuple[Target, Schedule]:
        try:
            return Target.parse(labels, list(devices)), Schedule.parse(start, list(windows))
        except RolloutError as exc:
            raise TrackerRefusal(exc.code, str(exc)) from None
