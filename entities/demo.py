"""`fwledger demo`: X.1368 Figure 1 end to end, in one process, with the real components.

Runs on the embedded chain (the Vyper registry compiled from ``contracts/``): 2 of 3
administrators register a vendor, two hardware classes (two revisions, real X25519 keys) and a
policy. Three services listen on loopback ports, each in a thread: a firmware server, a status
tracker's server module (full node, inventory, rollouts in waves, signed update commands) and an
intermediate module whose upstream is the server module, its key pinned (the hierarchical
deployment: every third device talks to the intermediate, which relays heartbeats and results
and caches attestations and evidence; the others talk to the server module: client-server).
N provisioned device folders (the server module's key in their anchors, quorum 1; the
intermediate's key as a relay for those behind it) register with their tracker; then the author
builds, encrypts, signs, uploads and publishes releases (``build_bundle``, ``publish_bundle``).

The fleet updates through the server module's signed update commands only (``follow="commands"``):
each release has a rollout in two waves (a 25% canary, then the rest), and the demo checks that
every canary device installed and reported before any device of the next wave got its command.
Each step states the outcome it expects; the demo succeeds only if every one happened.

Shown on the way: a tampered copy served by the server (a byte of its stored object flipped) is
refused; a location-denied device is refused; a device loses power mid-install (the install is
stopped in process at a durable-write boundary by a device probe raising :class:`PowerCut`, which
no handler catches; ``tests/integration/test_power_loss.py`` does it with SIGKILL on real
processes), reboots on its old slot, byte-identical, and completes the interrupted install when
its command comes; a device of the other revision gets only what its policy and dependencies
allow; a revoked release is installed nowhere. Figures: gas, bytes served, the chain queries of
each party (counted on the JSON-RPC provider; the intermediate and the devices have no chain
connection), the intermediate's counters, time.

This module runs the plan and reports; the steps are in :mod:`entities.demo_steps`, the state
they share (:class:`~entities.demo_world.DemoRun`) and the small helpers in :mod:`entities.demo_world`.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from entities.demo_steps import PLAN
from entities.demo_world import WAIT, DemoRun, PowerCut

__all__ = ["PowerCut", "run_demo"]


def run_demo(*, devices: int = 12, quiet: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the report (``ok`` true only if every expected outcome happened)."""
    run = DemoRun(devices=devices, quiet=quiet, console=console)
    console, quiet, steps, figures, t0, tmpdir, stoppers, quieted = (
        run.console, run.quiet, run.steps, run.figures, run.t0, run.tmpdir, run.stoppers, run.quieted)
    w3, state, fleet, chain_calls, step = run.w3, run.state, run.fleet, run.chain_calls, run.step
    try:
        for name, fn in PLAN:
            if steps and not steps[-1]["ok"]:
                steps.append({"step": name, "ok": False, "detail": "skipped after a failure", "seconds": 0})
                continue
            step(name, partial(fn, run))
        if "srv" in state:
            served = requests.get(state["srv"] + "/v1/downloads", params={"limit": 10_000}, timeout=WAIT,
                                  headers={"Authorization": f"Bearer {state['token']}"}).json()
            figures["bytes_served"] = sum(int(d["bytes"]) for d in served if d["outcome"] == "served")
            figures["downloads_refused"] = sum(1 for d in served if d["outcome"] != "served")
        if "tracker" in state:
            figures["rollouts"] = [{k: r[k] for k in ("id", "product", "to_version", "state", "open_wave", "devices",
                                                      "succeeded", "failed")} for r in state["tracker"].rollouts()]
    finally:
        for stop in reversed(stoppers):
            stop()
        for logger, level in quieted:
            logger.setLevel(level)
        tmpdir.cleanup()

    figures["chain_queries"] = {
        "tracker": sum(chain_calls.get("tracker", {}).values()),
        "firmware_server": sum(chain_calls.get("firmware_server", {}).values()),
        "intermediate": 0,  # no chain connection: it asks its upstream
        "devices": 0,       # no chain connection: they verify the proofs the trackers serve
        "tracker_by_method": dict(sorted(chain_calls.get("tracker", {}).items())),
    }
    figures["blocks"] = int(w3.eth.block_number)
    figures["seconds"] = round(time.monotonic() - t0, 2)
    figures["devices"] = [{k: d[k] for k in ("device", "class", "via", "before", "after", "result")} for d in fleet]
    ok = all(s["ok"] for s in steps)
    if not quiet:
        table = Table(title="fwledger demo: the fleet")
        for col in ("device", "class", "tracker", "before -> after (main-fw/sensor-drv)", "result"):
            table.add_column(col)
        for d in fleet:
            table.add_row(d["device"], d["class"], d["via"], f"{d['before']} -> {d['after']}", d["result"])
        console.print(table)
        cq, inter = figures["chain_queries"], figures.get("intermediate", {})
        console.print(
            f"gas: {figures['gas']}; bytes served: {figures.get('bytes_served', 0):,}; chain queries: tracker "
            f"{cq['tracker']:,}, firmware server {cq['firmware_server']:,}, intermediate 0, devices 0; intermediate: "
            f"{inter.get('cache_hits', 0)} cache hits, {inter.get('upstream_requests', 0)} upstream requests; "
            f"blocks: {figures['blocks']}; time: {figures['seconds']} s; "
            f"{'[green]all expected outcomes happened[/]' if ok else '[red]FAILED[/]'}")
    return {"ok": ok, "steps": steps, "figures": figures}
