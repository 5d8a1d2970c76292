"""The signed update commands a heartbeat's answers carry (docs/MODULES.md sections 2-3), from the
device's side: step 2 of :meth:`.agent.Agent.check_and_update` when the answers carry some.

- :func:`receive` judges one (:func:`entities.protocol.commands.verify_command`: signed by a
  provisioned server module, for this device, chain and registry, not expired, never accepted
  before) and records its id in ``DIR/agent/commands.json`` *before* anything is done for it, so
  the same command can never act twice, not even after a crash or a restart. A command accepted
  before the device stopped and not done, sent again, resumes (every other check still applies).
- :func:`execute` runs an accepted command's upgrades (step 3) and posts their results to the
  module that delivered it (``POST /v1/devices/{id}/results``); results it cannot take now are
  kept in the agent's memory and posted at a later pass (:func:`post_pending`).

A refused command installs nothing; its code (``command_*``) is in the pass report, in the
command log and, as the device's last result, in the next heartbeat. (A command re-sent by its
tracker after the device acted on it, because the results did not reach it yet, is refused as
``command_replayed`` too, but is not a failure: the kept results are posted.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from entities.protocol.commands import Command, CommandError, CommandLog, verify_command

from .client import NetworkError, TrackerClient, TrackerRefused
from .memory import COMMAND_LOG_FILE, PENDING_KEEP, AgentMemory, done_ids, pending_results
from .report import PassReport
from .updater import Updater
from .upgrade import result_of

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["execute", "post_pending", "receive"]

_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def receive(agent: Agent, origin: TrackerClient, envelope: Any, report: PassReport) -> Command | None:
    """Judge one command a heartbeat answer carried; an accepted one's id is recorded (durably)
    before it is returned, so it can never be acted on twice. A refused one is logged, becomes
    the device's last result (unless it is a command already acted on, re-sent), and None is
    returned. Either way it has an entry in ``report.commands``.

    Raises:
        ConfigError: the command log cannot be read or written (nothing is acted on).
    """
    claimed = _claimed_id(envelope)
    if claimed is not None and any(c["command_id"] == claimed for c in report.commands):
        return None  # the same command from another module of this pass
    entry: dict[str, Any] = {"command_id": claimed, "tracker": origin.url, "accepted": False, "code": None,
                             "message": None, "rollout": None, "wave": None, "block": None}
    report.commands.append(entry)
    memory, anchors, now = agent.memory, agent.prov.anchors, agent.clock()
    log = CommandLog(agent.root / COMMAND_LOG_FILE, clock=agent.clock)
    try:
        cmd = verify_command(envelope, issuers=anchors.trackers, device_id=report.device_id,
                             device_address=agent.prov.identity.address, chain_id=anchors.chain_id,
                             registry=anchors.registry, now=now, max_skew=anchors.max_clock_skew, seen=log.seen)
    except CommandError as exc:
        state = memory.read()
        if exc.code == "command_replayed" and claimed not in done_ids(state):
            # accepted, then the device stopped before it finished (a power cut): the same
            # signed command, re-sent, resumes it (every other check still applies); once
            # done, a replay is refused
            resumed = _resume(agent, envelope, report, now)
            if resumed is not None:
                entry.update(accepted=True, rollout=resumed.rollout, wave=resumed.wave, block=resumed.block,
                             resumed=True)
                memory.log_command(state, "resumed", resumed.command_id, origin.url, now=now)
                memory.save(state)
                return resumed
        message = " ".join(str(exc).split())[:256]
        resent = exc.code == "command_replayed" and claimed in done_ids(state)
        entry.update(code=exc.code, message=message, resent=resent)
        memory.log_command(state, "refused", claimed, origin.url, code=exc.code, message=message, now=now,
                           resent=resent)
        if not resent:
            state["last_refusal"] = {"command_id": claimed, "code": exc.code, "message": message, "at": now,
                                     "tracker": origin.url}
        memory.save(state)
        return None
    log.accept(cmd)                              # before acting: a replay, even after a crash, is refused
    entry.update(accepted=True, rollout=cmd.rollout, wave=cmd.wave, block=cmd.block)
    state = memory.read()
    memory.log_command(state, "accepted", cmd.command_id, origin.url, now=now)
    memory.save(state)
    return cmd


def _resume(agent: Agent, envelope: Any, report: PassReport, now: float) -> Command | None:
    """The command again with every check but "never seen", if it passes them all."""
    anchors = agent.prov.anchors
    try:
        return verify_command(envelope, issuers=anchors.trackers, device_id=report.device_id,
                              device_address=agent.prov.identity.address, chain_id=anchors.chain_id,
                              registry=anchors.registry, now=now, max_skew=anchors.max_clock_skew,
                              seen=lambda _id: False)
    except CommandError:
        return None


def execute(agent: Agent, up: Updater, live: Sequence[TrackerClient], report: PassReport, origin: TrackerClient,
            cmd: Command) -> None:
    """Run an accepted command's upgrades (step 3, evidence at a block not older than the
    command's), then post their results to the module that delivered it (kept for a later
    pass if it cannot take them now)."""
    upgrades = [{"product": u.product, "vendor": u.vendor, "to_version": u.to_version,
                 "header_hash": u.header_hash.lower()} for u in cmd.upgrades]
    report.plan.extend(upgrades)
    # a resumed command may carry upgrades installed before the device stopped: those are done
    running = {c.product: str(c.installed) for c in up.facts().components if c.installed is not None}
    todo = [u for u in upgrades if running.get(u["product"]) != u["to_version"]]
    ran = iter(agent.run_upgrades(up, live, report, todo, {}, at_least=cmd.block) if todo else [])
    results = [next(ran) if u in todo else
               dataclasses.replace(result_of(agent.prov, u), ok=True, outcome="already_installed") for u in upgrades]
    body: list[dict[str, Any]] = [  # named as the command names them (the tracker matches them)
        {"header_hash": u["header_hash"], "product": u["product"], "to_version": u["to_version"], "ok": r.ok,
         "code": None if r.ok else (r.code or "update_failed"),
         "message": (" ".join(r.message.split())[:256] or None)} for u, r in zip(upgrades, results, strict=True)]
    pending = {"tracker": origin.url, "device_id": report.device_id, "command_id": cmd.command_id,
               "results": body, "at": agent.clock()}
    memory = agent.memory
    state = memory.read()
    state["pending_results"] = [*pending_results(state), pending][-PENDING_KEEP:]
    failed = [r.code or "update_failed" for r in results if not r.ok]
    memory.log_command(state, "done", cmd.command_id, origin.url, code=failed[0] if failed else None)
    memory.save(state)
    _post(memory, origin, pending, report)


def post_pending(memory: AgentMemory, trackers: Sequence[TrackerClient], live: Sequence[TrackerClient],
                 report: PassReport) -> None:
    """Post the command results kept from earlier passes, each to the module it came from (one of
    ``trackers``) if that one answered this pass (else to the first module that did, if its URL
    is not configured any more)."""
    pending = pending_results(memory.read())
    urls = {t.url: t for t in trackers}
    for item in pending:
        target = urls.get(item["tracker"]) or (live[0] if live else None)
        if target is not None and target in live:
            _post(memory, target, item, report)


def _post(memory: AgentMemory, client: TrackerClient, item: Mapping[str, Any], report: PassReport) -> None:
    """One results report: taken or refused for good (an unknown command) drops it from the
    kept results; no answer, or a server error, keeps it. ``already_reported`` counts as taken:
    only this device can sign its results, so the tracker took an earlier post whose answer
    was lost (a module stopped between recording it and answering)."""
    entry: dict[str, Any] = {"command_id": item["command_id"], "tracker": client.url, "ok": False, "code": None,
                             "kept": False}
    report.posted.append(entry)
    try:
        client.results(str(item["device_id"]), str(item["command_id"]), list(item["results"]))
        entry["ok"] = True
        event, code = "reported", None
    except TrackerRefused as exc:
        entry["code"] = exc.code
        if exc.code == "already_reported":
            entry["ok"] = True
            event, code = "reported", exc.code
        else:
            entry["kept"] = exc.status is None or exc.status >= 500
            event, code = "report_refused", exc.code
    except NetworkError as exc:
        entry.update(code=exc.code, kept=True)
        event, code = "report_failed", exc.code
    state = memory.read()
    if not entry["kept"]:
        state["pending_results"] = [p for p in pending_results(state) if p["command_id"] != item["command_id"]]
    memory.log_command(state, event, str(item["command_id"]), client.url, code=code)
    memory.save(state)


def _claimed_id(envelope: Any) -> str | None:
    """The command id an envelope claims (unverified), if it looks like one."""
    cmd = envelope.get("command") if isinstance(envelope, dict) else None
    cid = cmd.get("command_id") if isinstance(cmd, dict) else None
    return cid if isinstance(cid, str) and _ID_RE.match(cid) else None
