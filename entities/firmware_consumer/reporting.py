"""What the device agent tells its trackers and asks them (steps 1 and 2 of
:meth:`.agent.Agent.check_and_update`): the heartbeat's body (:func:`heartbeat_body`; C11.1.a.ii,
a.iv; C11.2.b i-iii), its delivery to every tracker, which also collects the signed commands the
answers carry (:func:`report_status`), and the plan (:func:`ask_plan`, P2).

The body is built from the device's state (read through an :class:`.updater.Updater`) and the
agent's memory; the answers are trusted as far as :class:`.client.TrackerClient` verified them
(signed by a provisioned module). Commands are judged later, by :mod:`.inbox`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from entities.protocol.heartbeat import NEEDS_SAFE_MODE, addons_entry, component_entry

from .client import NetworkError, TrackerClient
from .factory import wire_state
from .provision import Provisioning
from .report import PassReport
from .updater import Updater

__all__ = ["ask_plan", "heartbeat_body", "report_status"]


def heartbeat_body(up: Updater, memory: Mapping[str, Any], prov: Provisioning, location: str | None,
                   clock: Callable[[], float]) -> dict[str, Any]:
    """The heartbeat: components (by product: vendor, version, active slot, state), readiness,
    the newest last result of any component (C11.1.a.ii, a.iv; C11.2.b i-iii); ``memory`` is the
    agent's (:class:`.memory.AgentMemory`: the vendors it installed, the last refused command).

    Every component whose vendor the device knows (pinned by provisioning, or installed by
    the agent) is listed, with its state (``entities.protocol.heartbeat``): ``empty`` (no firmware,
    version null), ``unverified`` (an unverified factory image), ``trial`` or ``confirmed``; a
    component in safe mode says it needs an update (``"needs": "safe_mode"``, C11.1.a.iv) and
    keeps the device ready (for a recovery install). ``addons`` maps each add-on board to the
    products of the listed components running on it (Appendix II). A refused command newer than
    every component's last result is the device's last result.
    """
    dev = up.device
    vendors = memory.get("vendors", {})
    comps: dict[str, dict[str, Any]] = {}
    boards: dict[str, str] = {}
    busy = False
    last: tuple[float, str, Any] | None = None
    for c in up.facts().components:
        st = dev.state(c.name)
        busy = busy or st.trial is not None  # safe mode is ready: for a recovery install (C11.1.b)
        if st.last_result is not None and (last is None or st.last_result.at >= last[0]):
            last = (st.last_result.at, c.name, st.last_result)
        vendor = c.vendor or vendors.get(c.name)
        if not vendor or c.product in comps:
            continue
        state, version, trial = wire_state(st)
        comps[c.product] = component_entry(vendor, version, st.active or st.confirmed, state, trial,
                                           NEEDS_SAFE_MODE if st.safe_mode else None)  # C11.1.a.iv
        if c.board is not None:
            boards[c.product] = c.board
    last_result = None
    if last is not None:
        _, name, r = last
        last_result = {"ok": r.ok, "code": r.code, "message": r.message[:256] or None, "component": name,
                       "version": r.version, "at": r.at}
    refused = memory.get("last_refusal")
    if isinstance(refused, dict) and isinstance(refused.get("at"), (int, float)) \
            and (last_result is None or refused["at"] >= last_result["at"]):
        last_result = {"ok": False, "code": str(refused.get("code")), "message": refused.get("message") or None,
                       "component": None, "version": None, "at": refused["at"]}
    out = {"device_id": dev.info.device_id, "hardware": dev.info.hardware, "addons": addons_entry(boards, comps),
           "location": location, "components": comps,
           "ready": not busy and up.policy.in_window(clock()), "last_result": last_result}
    if prov.certificate is not None:  # admission by manufacture certificate (entities/admission.py)
        out["certificate"] = prov.certificate
    return out


def report_status(trackers: Sequence[TrackerClient], body: dict[str, Any], up: Updater, report: PassReport, *,
                  final: bool = False) -> list[TrackerClient]:
    """Heartbeat ``body`` to each of ``trackers``; returns those that answered. A first report
    of a pass (not ``final``) also notes each component whose last update failed
    (``report.last_failures``), each tracker's answer (``report.trackers``) and the commands the
    answers carry (``report.inbox``); a final one, sent after an upgrade or a refusal, is best
    effort.

    Raises:
        NetworkError: none answered (only when not ``final``).
    """
    if not final:
        report.last_failures = [
            {"component": c.name, "product": c.product, "version": r.version, "code": r.code,
             "message": " ".join(r.message.split())[:256]}
            for c in up.facts().components if (r := up.device.state(c.name).last_result) is not None
            and not r.ok and r.op == "update"]
    live: list[TrackerClient] = []
    errors: list[NetworkError] = []
    for t in trackers:
        entry: dict[str, Any] = {"url": t.url, "address": t.address, "ok": False, "error": None}
        try:
            answer = t.heartbeat(body)
            entry.update(ok=True, address=t.address)
            report.outdated = bool(answer.get("outdated")) if answer.get("outdated") is not None else None
            live.append(t)
            if not final:  # a final report's answer may repeat them: they are taken at the next pass
                report.inbox.extend((t, envelope) for envelope in answer["commands"])
        except NetworkError as exc:
            errors.append(exc)
            entry["error"] = {"code": exc.code, "message": str(exc)}
        if not final:
            report.trackers.append(entry)
    if not live and errors and not final:
        raise errors[0]
    return live


def ask_plan(live: Sequence[TrackerClient], report: PassReport) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """P2: the first tracker that answers gives the plan. Returns its upgrades (dependencies
    first) but those its rollouts hold back (``report.held``), and, per product, the other
    products of its install group (a dependency cycle).

    Raises:
        NetworkError: no tracker gave a plan.
    """
    first: NetworkError | None = None
    for t in live:
        try:
            answer = t.plan(report.device_id)
        except NetworkError as exc:
            first = first or exc
            continue
        plan = answer["plan"]
        report.held = [dict(h) for h in answer["held"]]
        held = {h["header_hash"].lower() for h in report.held}
        report.plan = [dict(u) for u in plan["upgrades"] if u["header_hash"].lower() not in held]
        report.reasons = [str(r) for r in answer.get("reasons", []) if isinstance(r, str)]
        if answer.get("outdated") is not None:
            report.outdated = bool(answer["outdated"])
        groups: dict[str, list[str]] = {}
        for g in plan.get("groups", []) or []:
            if isinstance(g, list):
                for p in g:
                    groups[str(p)] = [str(q) for q in g if q != p]
        return report.plan, groups
    assert first is not None
    raise first
