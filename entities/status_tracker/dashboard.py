"""The status tracker's fleet dashboard (issue 6): read-only web pages and the JSON they poll.

Served by the server module on its own listener, next to the API of :mod:`.app`:

==========================================  ==============================================================
``GET /dashboard``                          the fleet page: counts, devices, release chains, rollouts
``GET /dashboard/devices/{device_id}``      one device: labels, components, readiness, last result, its
                                            update history and its log
``GET /dashboard/static/{name}``            the pages' script and style sheet (fixed list of files)
``GET /dashboard/login``                    the login page (token from the address's fragment, or typed)
``POST /dashboard/login``                   the token (form field or JSON ``token``) -> session cookie
``GET /v1/dashboard/overview``              counts (up to date, outdated, failed, at risk, unreachable...)
                                            and one row per device (the first :data:`MAX_ROWS`)
``GET /v1/dashboard/releases``              each product line's chain as the full node indexed it
``GET /v1/dashboard/rollouts``              rollouts with per-wave progress, when the tracker has them
``GET /v1/dashboard/devices/{device_id}``   :func:`device_page_data`: the device's detail, labels and history
==========================================  ==============================================================

**Operator only.** The pages and the JSON show the whole inventory (device ids, device keys,
versions, results, each device's communication log), so every route here checks two things:

* **Host.** The request's ``Host`` header must be one the tracker answers to, else 421
  ``bad_host`` (a web page the operator visits cannot rebind its own name to the tracker's
  address and read the dashboard). The allowed set is the config key ``dashboard_hosts`` when set
  (``name`` matches any port, ``name:port`` that port); otherwise the listen address
  (:func:`.app.create_app`'s ``listen``) and ``localhost``, ``127.0.0.1``, ``[::1]`` with the
  listen port; with no known port, those loopback names with any port.
* **The operator token** (all but the login page and the static files). The tracker keeps a
  random token, 32 bytes as hex, in ``<data>/dashboard.token`` (config ``dashboard_token_file``;
  written 0600, atomically, on first start; replacing the file and restarting the tracker ends
  every session). The JSON takes ``Authorization: Bearer <token>``; the pages take a session
  cookie. ``fwledger tracker dashboard-url`` prints ``<tracker>/dashboard/login#<token>``: the
  token is in the fragment, which browsers never send, so it never reaches a server log or a
  ``Referer``; the login page's script moves it into its form, removes it from the address bar
  and posts the form (``POST /dashboard/login``, form field or JSON ``token``; the page also takes
  it typed in). The answer sets the cookie ``fwledger_dashboard_<tracker address prefix>`` (one
  per tracker, so two trackers on one host do not log each other out): ``<expiry>.<HMAC-SHA256
  keyed by the token over the expiry>``, never the token itself, valid :data:`SESSION_SECONDS`,
  ``HttpOnly; SameSite=Strict; Path=/`` and ``Secure`` when the tracker serves TLS. Tokens and
  sessions are compared with :func:`hmac.compare_digest`. Without them the JSON answers 401
  ``operator_required`` (no inventory in the body) and the pages redirect to the login page.

The routes never change anything but the caller's own session cookie.

Rendering: plain HTML and a small vanilla script in ``static/`` (no build step, nothing fetched
from anywhere but this tracker). The pages poll the JSON every 1.5 s and update in place. Every
string that comes from devices or the ledger (device ids, hardware, product names, versions,
error messages) is inserted with ``textContent`` only, never as HTML, and the pages are sent with a
Content-Security-Policy that allows scripts and styles from this origin only, so an inventory
string cannot run code even if a future change forgot to escape it (the login page may also
post its form to this origin: ``form-action 'self'``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from entities.protocol.heartbeat import FIRMWARE_STATUSES
from ledger_node.errors import ConfigError
from ledger_node.fsutil import atomic_write_bytes

from .history import device_history
from .web import error_response

if TYPE_CHECKING:
    from .daemon import Tracker

__all__ = ["LOGIN_PATH", "MAX_ROWS", "POLL_SECONDS", "SESSION_SECONDS", "HostRule", "OperatorGate",
           "dashboard_router", "device_page_data", "fleet_overview", "load_or_create_token", "login_url",
           "release_chains", "rollouts"]

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
#: the login page's headers: the same, except that its form may post to this origin
_LOGIN_HEADERS = _SECURITY_HEADERS | {
    "Content-Security-Policy": _SECURITY_HEADERS["Content-Security-Policy"].replace("form-action 'none'",
                                                                                    "form-action 'self'")}

#: where the pages send a visitor without a session
LOGIN_PATH = "/dashboard/login"
#: lifetime of a session cookie
SESSION_SECONDS = 12 * 3600
#: loopback names the dashboard answers to by default (with the listen port)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_TOKEN_RE = re.compile(r"[0-9a-f]{64}")
_HOST_NAME_RE = re.compile(r"[a-z0-9.\-]{1,253}|\[[0-9a-f:.]{2,45}\]")
_NEXT_RE = re.compile(r"/dashboard(/devices/[A-Za-z0-9%._~!$&'()*+,;=:@-]{1,400})?")
_SESSION_CONTEXT = b"fwledger-dashboard-session-v1:"


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
    tracker's first verdict; ``safe_mode``, ``no_firmware``, ``unverified``, ``in_trial`` when a
    component is in safe mode (the device says so: it needs a recovery install, C11.1.a.iv), has
    no firmware, an unverified factory image or an image on trial (such a device is never up to date);
    ``concerned`` when a firmware server said a release it does not run yet concerns it (C11.3.g;
    each row lists those reports: release, server, state).
    """
    devices = tracker.admissions.with_labels(tracker.devices())
    counts = {"devices": len(devices), "up_to_date": 0, "outdated": 0, "failed": 0, "at_risk": 0,
              "unreachable": 0, "unknown_versions": 0, "unassessed": 0, "update_needed": 0,
              "safe_mode": 0, "no_firmware": 0, "unverified": 0, "in_trial": 0, "concerned": 0}
    rows: list[dict[str, Any]] = []
    for d in devices:
        a = d.get("assessment")
        last: dict[str, Any] | None = d.get("last_result")
        failed = last is not None and not last.get("ok", True)
        flags = {"outdated": bool(a and a["outdated"]), "up_to_date": bool(a and not a["outdated"]),
                 "at_risk": bool(a and a["at_risk"]), "unknown_versions": bool(a and a["unknown"]),
                 "unassessed": a is None, "failed": failed, "unreachable": d["readiness"] == "unreachable",
                 "update_needed": bool(d.get("update_needed")),
                 "concerned": any(e["state"] != "updated" for e in d.get("concerned", ())),
                 **{s.replace("-", "_"): s in d.get("firmware", ()) for s in FIRMWARE_STATUSES}}
        flags["up_to_date"] = flags["up_to_date"] and not d.get("firmware")
        for name, on in flags.items():
            counts[name] += int(on)
        if len(rows) < max_rows:
            rows.append({"device_id": d["device_id"], "hardware": d["hardware"], "location": d.get("location"),
                         "labels": d["labels"],
                         "readiness": d["readiness"], "last_seen": d["last_seen"],
                         "components": [{"product": p, "vendor": c.get("vendor"), "version": c.get("version"),
                                         "slot": c.get("slot"), "state": c.get("state", "confirmed"),
                                         "trial": c.get("trial"), "needs": c.get("needs")}
                                        for p, c in sorted(d["components"].items())],
                         "last_result": last, "status": [k for k, on in flags.items() if on],
                         "concerned": d.get("concerned", [])})
    counts.update(tracker.inventory.counts() | {"devices": len(devices)})
    admission = {"mode": "required" if tracker.admissions.required else "open",
                 "counts": tracker.admissions.store.counts(), "pending": tracker.admissions.pending(limit=max_rows)}
    return {"ledger_block": tracker.ledger_block(), "tracker": tracker.address, "counts": counts,
            "devices": rows, "shown": len(rows), "last_sync_error": tracker.last_sync_error,
            "admission": admission}


def device_page_data(tracker: Tracker, device_id: str, history_limit: int = 50) -> dict[str, Any]:
    """:meth:`~.daemon.Tracker.device_detail` with the admission's ``labels`` and the device's
    ``history`` (:func:`.history.device_history`, newest ``history_limit`` entries).

    Raises:
        TrackerRefusal: ``unknown_device``.
    """
    out = tracker.admissions.with_labels([tracker.device_detail(device_id)])[0]
    out["history"] = device_history(tracker.inventory.path, device_id, limit=history_limit)
    return out


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


# ----------------------------------------------------------------------------- the operator and the Host


def load_or_create_token(path: Path, *, create: bool = True) -> str:
    """The operator's dashboard token (64 lowercase hex characters) from ``path``; created there
    (32 random bytes, mode 0600, written atomically) when the file does not exist and ``create``.

    Raises:
        ConfigError: the file holds something else, cannot be read or written, or is missing
            (``create=False``).
    """
    path = Path(path)
    try:
        text = path.read_text().strip().lower()
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"no dashboard token {path}: the tracker makes it on its first start") from None
        token = secrets.token_hex(32)
        atomic_write_bytes(path, (token + "\n").encode(), mode=0o600)
        return token
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the dashboard token {path}: {exc}") from exc
    if not _TOKEN_RE.fullmatch(text):
        raise ConfigError(f"{path} holds no dashboard token (64 hex characters); delete it to make a new one")
    return text


def login_url(base_url: str, token: str) -> str:
    """The address an operator opens: the login page with the token in the fragment (never sent)."""
    return f"{base_url.rstrip('/')}{LOGIN_PATH}#{token}"


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` / ``[v6][:port]`` -> (lowercase name, port or None); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
    else:
        name, colon, port_text = value.partition(":")
        rest = colon + port_text
    if not _HOST_NAME_RE.fullmatch(name):
        return None
    if not rest:
        return name, None
    port = rest[1:]
    if not rest.startswith(":") or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        return None
    return name, int(port)


class HostRule:
    """The ``Host`` headers the dashboard answers to (see the module's docstring): ``configured``
    entries when given, else the listen address and the loopback names with the listen port,
    else (no port known) the loopback names with any port."""

    def __init__(self, listen: tuple[str, int] | None = None, configured: Sequence[str] = ()) -> None:
        entries: set[tuple[str, int | None]] = set()
        for item in configured:
            parsed = _split_host(item)
            if parsed is None:
                raise ConfigError(f"dashboard host {item!r} is not a host name or host:port")
            entries.add(parsed)
        if not entries:
            port = listen[1] if listen and listen[1] else None
            names = set(LOOPBACK_NAMES)
            if listen:
                host = listen[0].lower()
                names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
            entries = {(name, port) for name in names}
        self.entries = frozenset(entries)

    def permits(self, host_header: str | None, *, default_port: int = 80) -> bool:
        """Whether a request with this ``Host`` header may be answered (no header: no)."""
        if not host_header:
            return False
        parsed = _split_host(host_header)
        if parsed is None:
            return False
        name, port = parsed
        return (name, None) in self.entries or (name, default_port if port is None else port) in self.entries


class OperatorGate:
    """The operator's token and the sessions derived from it (see the module's docstring)."""

    def __init__(self, token: str, cookie_name: str, *, secure: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self._token = token.encode()
        self._key = hashlib.sha256(_SESSION_CONTEXT + self._token).digest()
        self.cookie_name = cookie_name
        self.secure = secure
        self.clock = clock

    def token_ok(self, given: str) -> bool:
        """Constant-time comparison with the operator's token."""
        return hmac.compare_digest(given.strip().lower().encode("utf-8", "replace"), self._token)

    def _mac(self, expires: int) -> str:
        return hmac.new(self._key, _SESSION_CONTEXT + str(expires).encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A cookie value: ``<expiry>.<HMAC over it keyed by the token>``."""
        expires = int(self.clock()) + SESSION_SECONDS
        return f"{expires}.{self._mac(expires)}"

    def session_ok(self, value: str | None) -> bool:
        if not value:
            return False
        expires, _, mac = value.partition(".")
        if not expires.isdigit() or len(expires) > 12:
            return False
        return hmac.compare_digest(mac.encode("utf-8", "replace"), self._mac(int(expires)).encode()) \
            and self.clock() < int(expires)

    def allows(self, request: Request) -> bool:
        """``Authorization: Bearer <token>`` or a valid session cookie."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given and self.token_ok(given):
            return True
        return self.session_ok(request.cookies.get(self.cookie_name))

    def login(self, response: Response) -> None:
        """Set a fresh session cookie on ``response``."""
        response.set_cookie(self.cookie_name, self.new_session(), max_age=SESSION_SECONDS, path="/",
                            httponly=True, samesite="strict", secure=self.secure)


def _next_path(value: Any) -> str:
    """Where to go after logging in: a dashboard page of this tracker, nothing else."""
    return value if isinstance(value, str) and _NEXT_RE.fullmatch(value) else "/dashboard"


# ----------------------------------------------------------------------------- the routes


def dashboard_router(tracker: Tracker, *, listen: tuple[str, int] | None = None) -> APIRouter:
    """The dashboard's routes over ``tracker`` (mounted by :func:`.app.create_app`); ``listen``:
    the tracker's listen host and port when known (the default allowed ``Host`` set).

    Reads (or makes) the operator token now.

    Raises:
        ConfigError: the token file is unusable, or a ``dashboard_hosts`` entry is malformed.
    """
    cfg = tracker.config
    router = APIRouter(tags=["dashboard"])
    hosts = HostRule(listen, cfg.dashboard_hosts)
    gate = OperatorGate(load_or_create_token(cfg.dashboard_token_path),
                        "fwledger_dashboard_" + str(tracker.address)[2:10].lower(), secure=cfg.tls)

    def page(name: str, headers: dict[str, str] = _SECURITY_HEADERS) -> Response:
        return Response(_static(name), media_type="text/html; charset=utf-8", headers=headers)

    def data(value: dict[str, Any]) -> JSONResponse:
        return JSONResponse(value, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    def host_refused(request: Request) -> Response | None:
        default_port = 443 if request.url.scheme == "https" else 80
        if hosts.permits(request.headers.get("host"), default_port=default_port):
            return None
        return error_response("bad_host", "this tracker's dashboard does not answer to that Host header "
                                          "(config dashboard_hosts)")

    def refused(request: Request, *, html: bool) -> Response | None:
        """None when the request comes through the right Host from the operator; else the refusal."""
        bad = host_refused(request)
        if bad is not None or gate.allows(request):
            return bad
        if html:
            return RedirectResponse(f"{LOGIN_PATH}?next={quote(request.url.path, safe='/')}", status_code=303,
                                    headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        resp = error_response("operator_required", "the dashboard needs the operator's token "
                                                   "(Authorization: Bearer, or log in at /dashboard/login)")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="fwledger dashboard"'
        return resp

    @router.get("/dashboard", include_in_schema=False)
    async def overview_page(request: Request) -> Response:
        return refused(request, html=True) or page("index.html")

    @router.get("/dashboard/devices/{device_id}", include_in_schema=False)
    async def device_page(request: Request, device_id: str) -> Response:
        # the script reads the id from the address and asks the JSON
        return refused(request, html=True) or page("device.html")

    @router.get(LOGIN_PATH, include_in_schema=False)
    async def login_page(request: Request) -> Response:
        return host_refused(request) or page("login.html", _LOGIN_HEADERS)

    @router.post(LOGIN_PATH, include_in_schema=False)
    async def login(request: Request) -> Response:
        """The token as a form field (the login page: 303 to the dashboard, or back to the login
        page when wrong) or as JSON ``{"token", "next"?}`` (200 ``{"next"}``, or 401)."""
        bad = host_refused(request)
        if bad is not None:
            return bad
        raw = await request.body()
        form = "json" not in request.headers.get("content-type", "")
        fields: dict[str, Any] = {}
        try:
            if form:
                fields = {k: v[0] for k, v in parse_qs(raw.decode(), max_num_fields=10).items()}
            else:
                parsed = json.loads(raw)
                fields = parsed if isinstance(parsed, dict) else {}
        except (ValueError, UnicodeDecodeError):
            fields = {}
        token, target = fields.get("token"), _next_path(fields.get("next"))
        ok = isinstance(token, str) and gate.token_ok(token)
        resp: Response
        if not ok:
            if form:
                return RedirectResponse(f"{LOGIN_PATH}?failed=1&next={quote(target, safe='/')}", status_code=303,
                                        headers={"Cache-Control": "no-store"})
            return error_response("operator_required", "that is not this tracker's operator token")
        resp = RedirectResponse(target, status_code=303) if form else data({"next": target})
        resp.headers["Cache-Control"] = "no-store"
        gate.login(resp)
        return resp

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def static(request: Request, name: str) -> Response:
        bad = host_refused(request)
        if bad is not None:
            return bad
        media = _STATIC.get(name)
        if media is None:
            return error_response("not_found", "no such file")
        return Response(_static(name), media_type=media, headers=_SECURITY_HEADERS)

    @router.get("/v1/dashboard/overview")
    async def overview(request: Request) -> Response:
        """Fleet counts and device rows (the operator: ``Authorization: Bearer <token>`` or a session)."""
        return refused(request, html=False) or data(await anyio.to_thread.run_sync(fleet_overview, tracker))

    @router.get("/v1/dashboard/releases")
    async def releases(request: Request) -> Response:
        """Each product line's release chain as the tracker's full node indexed it (the operator)."""
        return refused(request, html=False) or data(await anyio.to_thread.run_sync(release_chains, tracker))

    @router.get("/v1/dashboard/rollouts")
    async def rollout_list(request: Request) -> Response:
        """Rollouts with per-wave counts (``available`` false when the tracker has none yet; the operator)."""
        return refused(request, html=False) or data(await anyio.to_thread.run_sync(rollouts, tracker))

    @router.get("/v1/dashboard/devices/{device_id}")
    async def device(request: Request, device_id: str) -> Response:
        """One device: components, readiness, verdict, last result and its communication log (the operator)."""
        return refused(request, html=False) or data(await anyio.to_thread.run_sync(device_page_data, tracker,
                                                                                      device_id))

    return router
