"""The status tracker's fleet dashboard (issue 6): read-only web pages and the JSON they poll.

Served by the server module on its own listener, next to the API of :mod:`.app`:

==========================================  ==============================================================
``GET /dashboard``                          the fleet page: counts, devices, release chains, rollouts
``GET /dashboard/devices/{device_id}``      one device: components, readiness, last result, its log
``GET /dashboard/static/{name}``            the pages' script and style sheet (fixed list of files)
``GET /v1/dashboard/overview``              counts (up to date, outdated, failed, at risk, unreachable...)
                                            and one row per device (the first :data:`MAX_ROWS`)
``GET /v1/dashboard/releases``              each product line's chain as the full node indexed it
``GET /v1/dashboard/rollouts``              rollouts with per-wave progress, when the tracker has them
``GET /v1/dashboard/devices/{device_id}``   :meth:`~.daemon.Tracker.device_detail`
==========================================  ==============================================================

**No authentication, on purpose.** Every route here is a ``GET`` that reads and never changes
anything, and the tracker listens on loopback only (:func:`.app.check_listen`), so only someone
already on the tracker's machine can read it. It shows no more than the inventory and the public
ledger hold (device ids, versions, last results), never a key or a signature. A tracker exposed
beyond loopback must not serve these routes without adding authentication first.

Rendering: plain HTML and a small vanilla script in ``static/`` (no build step, nothing fetched
from anywhere but this tracker). The pages poll the JSON every 1.5 s and update in place. Every
string that comes from devices or the ledger (device ids, hardware, product names, versions,
error messages) is inserted with ``textContent`` only, never as HTML, and the pages are sent with a
Content-Security-Policy that allows scripts and styles from this origin only, so an inventory
string cannot run code even if a future change forgot to escape it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from .web import error_response

if TYPE_CHECKING:
    from .daemon import Tracker

__all__ = ["MAX_ROWS", "POLL_SECONDS", "dashboard_router", "fleet_overview", "release_chains", "rollouts"]

#: device rows sent per overview poll (the counts always cover the whole fleet)
MAX_ROWS = 500
#: how often the pages poll (the script reads it from the page's ``data-poll-ms``)
POLL_SECONDS = 1.5

_STATIC: dict[str, str] = {  # name -> media type; nothing else is served
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _short(hex_hash: str, keep: int = 10) -> str:
    return hex_hash if len(hex_hash) <= keep + 6 else f"{hex_hash[:keep]}…{hex_hash[-4:]}"


# ----------------------------------------------------------------------------- the data (pure over the tracker)


def fleet_overview(tracker: Tracker, max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """Counts over the whole fleet and one summary row per device (the first ``max_rows`` by id).

    One pass over :meth:`~.daemon.Tracker.devices` (the same verdicts as ``outdated_lists``):
    ``up_to_date`` / ``outdated`` from the latest assessment, ``failed`` when the last update
    result is not ok, ``at_risk`` when running a revoked, vulnerable or flagged release,
    ``unreachable`` when not heard from within ``stale_after``, ``unassessed`` before the
    tracker's first verdict.
    """
    devices = tracker.devices()
    counts = {"devices": len(devices), "up_to_date": 0, "outdated": 0, "failed": 0, "at_risk": 0,
              "unreachable": 0, "unknown_versions": 0, "unassessed": 0, "update_needed": 0}
    rows: list[dict[str, Any]] = []
    for d in devices:
        a = d.get("assessment")
        last: dict[str, Any] | None = d.get("last_result")
        failed = last is not None and not last.get("ok", True)
        flags = {"outdated": bool(a and a["outdated"]), "up_to_date": bool(a and not a["outdated"]),
                 "at_risk": bool(a and a["at_risk"]), "unknown_versions": bool(a and a["unknown"]),
                 "unassessed": a is None, "failed": failed, "unreachable": d["readiness"] == "unreachable",
                 "update_needed": bool(d.get("update_needed"))}
        for name, on in flags.items():
            counts[name] += int(on)
        if len(rows) < max_rows:
            rows.append({"device_id": d["device_id"], "hardware": d["hardware"], "location": d.get("location"),
                         "readiness": d["readiness"], "last_seen": d["last_seen"],
                         "components": [{"product": p, "vendor": c.get("vendor"), "version": c.get("version"),
                                         "slot": c.get("slot")} for p, c in sorted(d["components"].items())],
                         "last_result": last, "status": [k for k, on in flags.items() if on]})
    counts.update(tracker.inventory.counts() | {"devices": len(devices)})
    return {"ledger_block": tracker.ledger_block(), "tracker": tracker.address, "counts": counts,
            "devices": rows, "shown": len(rows), "last_sync_error": tracker.last_sync_error}


def release_chains(tracker: Tracker) -> dict[str, Any]:
    """Every product line's releases in chain order, as the tracker's full node indexed them,
    with their standing (head, revoked, vulnerable, flagged) and how many devices run each."""
    running: dict[tuple[str, str, str], int] = {}
    for row in tracker.inventory.devices():
        for product, comp in row.components.items():
            k = (str(comp.get("vendor")), product, str(comp.get("version")))
            running[k] = running.get(k, 0) + 1
    lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in tracker.index.releases(include_flagged=True):
        hh = "0x" + r.header_hash.hex()
        version = str(r.version)
        lines.setdefault((r.vendor_name, r.product), []).append({
            "version": version, "header_hash": hh, "short_hash": _short(hh), "position": r.position,
            "block": r.block, "publish_time": r.record.data.publish_time, "head": r.head,
            "revoked": r.revoked, "revoke_reason": r.revoke_reason, "vulnerable": r.vulnerable,
            "vulnerable_note": r.vulnerable_note, "flagged": r.flagged, "flag_reason": r.flag_reason,
            "hardware": list(r.record.data.supported_hardware),
            "devices": running.get((r.vendor_name, r.product, version), 0)})
    return {"ledger_block": tracker.ledger_block(),
            "lines": [{"vendor": v, "product": p, "releases": rs} for (v, p), rs in sorted(lines.items())]}


def rollouts(tracker: Tracker) -> dict[str, Any]:
    """The tracker's rollouts with per-wave progress; ``available`` is False on a tracker that has
    no rollouts yet (the method arrives with the command slice)."""
    method: Callable[[], Any] | None = getattr(tracker, "rollouts", None)
    if not callable(method):
        return {"available": False, "rollouts": []}
    return {"available": True, "rollouts": list(method())}


# ----------------------------------------------------------------------------- the routes


def dashboard_router(tracker: Tracker) -> APIRouter:
    """The dashboard's routes over ``tracker`` (mounted by :func:`.app.create_app`)."""
    router = APIRouter(tags=["dashboard"])

    def page(name: str) -> Response:
        return Response(_static(name), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)

    def data(value: dict[str, Any]) -> JSONResponse:
        return JSONResponse(value, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @router.get("/dashboard", include_in_schema=False)
    async def overview_page() -> Response:
        return page("index.html")

    @router.get("/dashboard/devices/{device_id}", include_in_schema=False)
    async def device_page(device_id: str) -> Response:
        return page("device.html")  # the script reads the id from the address and asks the JSON

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        media = _STATIC.get(name)
        if media is None:
            return error_response("not_found", "no such file")
        return Response(_static(name), media_type=media, headers=_SECURITY_HEADERS)

    @router.get("/v1/dashboard/overview")
    async def overview() -> JSONResponse:
        """Fleet counts and device rows (read-only, unauthenticated, loopback only)."""
        return data(await anyio.to_thread.run_sync(fleet_overview, tracker))

    @router.get("/v1/dashboard/releases")
    async def releases() -> JSONResponse:
        """Each product line's release chain as the tracker's full node indexed it."""
        return data(await anyio.to_thread.run_sync(release_chains, tracker))

    @router.get("/v1/dashboard/rollouts")
    async def rollout_list() -> JSONResponse:
        """Rollouts with per-wave counts (``available`` false when the tracker has none yet)."""
        return data(await anyio.to_thread.run_sync(rollouts, tracker))

    @router.get("/v1/dashboard/devices/{device_id}")
    async def device(device_id: str) -> JSONResponse:
        """One device: components, readiness, verdict, last result and its communication log."""
        return data(await anyio.to_thread.run_sync(tracker.device_detail, device_id))

    return router
