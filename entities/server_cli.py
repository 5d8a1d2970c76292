"""``fwledger server ...``: the firmware server's commands (run, and the operator's view and controls)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ledger_node.errors import ConfigError, FwledgerError

from .cli import (
    _admission_options,
    _client_tls,
    _ctx,
    cli,
    emit,
    err_console,
    json_option,
    out_console,
)

__all__: list[str] = []  # click commands registered on their groups

#: blocks the server's node may be behind its --verify-rpc node (a node freezing its head)
SECOND_NODE_MAX_LAG = 8

# ----------------------------------------------------------------------------- firmware server

@cli.group()
def server() -> None:
    """The firmware server: untrusted storage that still protects devices (X.1368 C11.3)."""


@server.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder (objects, temp files, databases) [env FWLEDGER_SERVER_DATA; <home>/server].")
@click.option("--max-upload", "max_upload_bytes", type=click.IntRange(min=1), default=None,
              help="Largest bundle accepted, bytes [env FWLEDGER_SERVER_MAX_UPLOAD; 1 GiB].")
@click.option("--max-total", "max_total_bytes", type=click.IntRange(min=1), default=None,
              help="Largest total of stored payloads, bytes [env FWLEDGER_SERVER_MAX_TOTAL; 20 GiB].")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=None,
              help="Seconds between ledger syncs [env FWLEDGER_SERVER_POLL; 1.0].")
@click.option("--notify", "notify", multiple=True,
              help="Tracker notification URL for new releases, T9.b (repeat) [env FWLEDGER_SERVER_NOTIFY].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), envvar="FWLEDGER_SERVER_TLS_CERT",
              default=None, help="Serve HTTPS with this certificate (fwledger fleet issue --role firmware-server) "
                                 "[env FWLEDGER_SERVER_TLS_CERT]; without TLS the server listens on loopback only.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), envvar="FWLEDGER_SERVER_TLS_KEY",
              default=None, help="Its private key [env FWLEDGER_SERVER_TLS_KEY].")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), envvar="FWLEDGER_SERVER_TLS_CA",
              default=None, help="The fleet CA client certificates must chain to [env FWLEDGER_SERVER_TLS_CA].")
@click.option("--tls-client", type=click.Choice(["optional", "required"]), default="optional", show_default=True,
              help="'required': only clients with a fleet certificate (devices given one, vendors, operators).")
@_admission_options("SERVER", "else the home's signing key")
@click.option("--anchors", "anchors", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Trust anchors (fwledger device anchors): prove the ledger at a header k of their n trackers "
                   "attest [env FWLEDGER_SERVER_ANCHORS].")
@click.option("--tracker", "trackers", multiple=True,
              help="Tracker module URL to ask for attestations, with --anchors (repeat) "
                   "[env FWLEDGER_SERVER_TRACKERS].")
@click.option("--verify-rpc", "verify_rpc", default=None,
              help="A second, independent JSON-RPC node whose block hash must agree with the header "
                   "[env FWLEDGER_SERVER_VERIFY_RPC]. Without these, the node (--rpc) must be embedded or on loopback.")
@json_option
def server_run(host: str, port: int, data_dir: Path | None, max_upload_bytes: int | None,
               max_total_bytes: int | None, poll_interval: float | None, notify: tuple[str, ...],
               tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, tls_client: str,
               admission: str | None, operator_keys: tuple[str, ...], manufacturer_cas: tuple[Path, ...],
               anchors: Path | None, trackers: tuple[str, ...], verify_rpc: str | None) -> None:
    """Serve firmware over HTTP(S) until SIGINT/SIGTERM; OpenAPI at /openapi.json."""
    from .asgi import ServerTLS
    from .firmware_server.config import load_server_config
    from .firmware_server.runner import build_app, check_listen, serve

    c = _ctx()
    given = [p for p in (tls_cert, tls_key, tls_ca) if p is not None]
    if given and len(given) != 3:
        raise click.UsageError("--tls-cert, --tls-key and --tls-ca go together")
    tls = ServerTLS(tls_cert, tls_key, tls_ca, tls_client == "required") if tls_cert and tls_key and tls_ca else None
    check_listen(host, port, tls)
    cfg = load_server_config(c.settings.home, data_dir=data_dir, max_upload_bytes=max_upload_bytes,
                             max_total_bytes=max_total_bytes, poll_interval=poll_interval,
                             tracker_notify_urls=list(notify) or None, admission=admission,
                             operator_keys=list(operator_keys) or None, manufacturer_cas=list(manufacturer_cas) or None,
                             anchors=anchors, trackers=list(trackers) or None, verify_rpc=verify_rpc)
    if not cfg.operator_keys:
        from dataclasses import replace

        try:
            cfg = replace(cfg, operator_keys=(c.settings.signing_account().address,))
        except ConfigError:
            pass  # no operator key: admission records are refused (unknown_operator)
    import requests

    from .header_sources import header_source

    session = requests.Session()
    if tls is not None:  # trackers across hosts: the fleet CA, and the server's own certificate as a client's
        session.verify, session.cert = str(tls.ca_certs), (str(tls.certfile), str(tls.keyfile))
        session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment would replace the fleet CA
    source = header_source(c.settings.rpc, anchors=cfg.anchors, trackers=cfg.trackers, verify_rpc=cfg.verify_rpc,
                           session=session, timeout=c.settings.timeout, who="server", max_lag=SECOND_NODE_MAX_LAG)
    app = build_app(cfg, c.w3(), c.deployment(), confirmations=c.settings.confirmations,
                    batch_blocks=c.settings.batch_blocks, source=source)
    info = {"url": f"{'https' if tls else 'http'}://{host}:{port}", "pid": os.getpid(), "data": str(cfg.data_dir),
            "admin_token_file": None if cfg.admin_token else str(cfg.data_dir / "admin.token"),
            "registry": app.state.service.ledger.registry, "admission": cfg.admission,
            "operator_keys": list(cfg.operator_keys), "ledger_headers": app.state.service.ledger.prover.describe}
    emit(info, lambda: err_console.print(f"firmware server on {info['url']} (pid {info['pid']}), data {cfg.data_dir}"))
    sys.stdout.flush()
    serve(app, host, port, tls=tls)


def _operator_token(data_dir: Path | None) -> str:
    """The firmware server's operator token from its config, else ``<data>/admin.token``.

    Raises:
        ConfigError: neither has one.
    """
    from .firmware_server.config import load_server_config

    cfg = load_server_config(_ctx().settings.home, data_dir=data_dir)
    path_file = cfg.data_dir / "admin.token"
    if cfg.admin_token:
        return str(cfg.admin_token)
    if path_file.is_file():
        return path_file.read_text().strip()
    raise ConfigError(f"no operator token: give --token (or FWLEDGER_SERVER_TOKEN); no {path_file}")


def _server_admin(url: str, token: str | None, data_dir: Path | None, method: str, path: str,
                  body: Any = None, *, public: bool = False) -> Any:
    """One operator request to a firmware server (``Authorization: Bearer``); the token is
    ``--token`` / FWLEDGER_SERVER_TOKEN, else the server's config, else ``<data>/admin.token``
    (a server on this machine). ``public``: a public route, asked without a token when there is
    none. Refusals become one-line errors."""
    import requests

    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--server must be an http(s) URL, not {url!r}")
    if not token:
        try:
            token = _operator_token(data_dir)
        except ConfigError:
            if not public:
                raise
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with requests.Session() as session:
            _client_tls(session)
            resp = session.request(method, url.rstrip("/") + path, json=body, timeout=30, headers=headers)
    except requests.RequestException as exc:
        raise FwledgerError(f"cannot reach the firmware server at {url}: {type(exc).__name__}") from exc
    try:
        obj = resp.json()
    except ValueError as exc:
        raise FwledgerError(f"the firmware server answered {resp.status_code} with no JSON") from exc
    if resp.status_code >= 400:
        err = obj.get("error", {}) if isinstance(obj, dict) else {}
        raise FwledgerError(f"firmware server refused ({resp.status_code} {err.get('code', '?')}): "
                            f"{err.get('message', '')}")
    return obj


@server.command("unbar")
@click.argument("name")
@click.option("--reason", required=True, help="Why the bar is lifted (printable, up to 256 characters; logged).")
@click.option("--server", "server_url", envvar="FWLEDGER_SERVER", default="http://127.0.0.1:8080",
              show_default=True, help="Firmware server base URL [env FWLEDGER_SERVER].")
@click.option("--token", envvar="FWLEDGER_SERVER_TOKEN", default=None,
              help="Operator token [env FWLEDGER_SERVER_TOKEN; else the server config's, else <data>/admin.token].")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The server's data folder, to read admin.token from [env FWLEDGER_SERVER_DATA; <home>/server].")
@json_option
def server_unbar(name: str, reason: str, server_url: str, token: str | None, data_dir: Path | None) -> None:
    """Lift the firmware server's bar of vendor NAME (C11.3.c), for a reason it logs and keeps.

    Refused for a vendor revoked on the ledger (vendor_revoked) or not barred (not_barred)."""
    from urllib.parse import quote

    out = _server_admin(server_url, token, data_dir, "POST", f"/v1/admin/vendors/{quote(name, safe='')}/unbar",
                        {"reason": reason})
    emit(out, lambda: err_console.print(f"vendor {name}: bar lifted ({out['lifted'].get('reason')}); "
                                        f"reason logged: {reason}"))




# ----------------------------------------------------------------------------- the operator's read views

_SERVER_URL = click.option("--server", "server_url", envvar="FWLEDGER_SERVER", default="http://127.0.0.1:8080",
                           show_default=True, help="Firmware server base URL [env FWLEDGER_SERVER].")
_TOKEN = click.option("--token", envvar="FWLEDGER_SERVER_TOKEN", default=None,
                      help="Operator token [env FWLEDGER_SERVER_TOKEN; else the server config's, else "
                           "<data>/admin.token].")
_DATA = click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="The server's data folder, to read admin.token from [env FWLEDGER_SERVER_DATA; "
                          "<home>/server].")


def _when(t: Any) -> str:
    import datetime as dt

    if not isinstance(t, int | float):
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_table(title: str, columns: list[str], rows: list[list[Any]], empty: str,
                 hashes: Sequence[tuple[str, str]] = ()) -> None:
    """A rich table (cells plain text: no markup from the server's data), then ``hashes`` as
    ``label: 0x...`` lines that are never cut or folded (a user copies them back)."""
    from rich.table import Table
    from rich.text import Text

    if not rows:
        out_console.print(empty, markup=False)
        return
    t = Table(title=title)
    for name in columns:
        t.add_column(name, overflow="fold")
    for row in rows:
        t.add_row(*(Text("-" if v is None else str(v)) for v in row))
    out_console.print(t)
    for label, value in hashes:
        out_console.print(f"{label}: {value}", markup=False, soft_wrap=True)


def _query(**params: Any) -> str:
    from urllib.parse import urlencode

    given = {k: v for k, v in params.items() if v is not None}
    return f"?{urlencode(given)}" if given else ""


@server.command("images")
@click.option("--product", default=None, help="Only this product line.")
@click.option("--state", type=click.Choice(["unpublished", "published", "withdrawn"]), default=None,
              help="Only images in this state.")
@_SERVER_URL
@_TOKEN
@_DATA
@json_option
def server_images(product: str | None, state: str | None, server_url: str, token: str | None,
                  data_dir: Path | None) -> None:
    """The server's images per product line with their ledger standing (C11.3.e); full hashes."""
    rows = _server_admin(server_url, token, data_dir, "GET", "/v1/images" + _query(product=product, state=state),
                         public=True)

    def standing(img: dict[str, Any]) -> str:
        led = img.get("ledger") or {}
        return ", ".join(w for w, on in (("head", led.get("head")), ("revoked", led.get("revoked")),
                                         ("vulnerable", led.get("vulnerable"))) if on) or ("on ledger" if led else "-")

    emit(rows, lambda: _print_table(
        f"images ({len(rows)})", ["vendor", "product", "version", "state", "ledger", "size"],
        [[i["vendor_name"], i["product"], i["version"], i["state"] + (f" ({i['withdraw_reason']})"
                                                                         if i.get("withdraw_reason") else ""),
          standing(i), i["size"]] for i in rows], "no images",
        [(f"{i['vendor_name']}/{i['product']} {i['version']} " + ("header hash" if i["header_hash"] else
                                                                  "digest (unpublished)"),
          i["header_hash"] or i["digest"]) for i in rows]))


@server.command("bars")
@click.option("--vendor", default=None, help="Only this vendor's bars and lifts.")
@_SERVER_URL
@_TOKEN
@_DATA
@json_option
def server_bars(vendor: str | None, server_url: str, token: str | None, data_dir: Path | None) -> None:
    """Every bar of a vendor and every lift of one, oldest first, with its reason (C11.3.c)."""
    rows = _server_admin(server_url, token, data_dir, "GET", "/v1/admin/bars" + _query(vendor=vendor))
    emit(rows, lambda: _print_table(
        f"bars and lifts ({len(rows)})", ["at", "vendor", "action", "address", "reason"],
        [[_when(r["at"]), r["vendor_name"], r["action"], r["address"], r["reason"]] for r in rows],
        "no vendor was ever barred"))


@server.command("downloads")
@click.option("--device", default=None, help="Only this device (its id or address).")
@click.option("--image", default=None, help="Only this image (its header hash, 0x + 64 hex).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Newest rows.")
@_SERVER_URL
@_TOKEN
@_DATA
@json_option
def server_downloads(device: str | None, image: str | None, limit: int, server_url: str, token: str | None,
                     data_dir: Path | None) -> None:
    """The download log, newest first: served and refused, with the refusal code and rule (C11.3.f, h)."""
    import re

    if image is not None and not re.fullmatch(r"0x[0-9a-fA-F]{64}", image):
        raise click.BadParameter(f"{image!r} is not a header hash (0x + 64 hex)", param_hint="--image")
    rows = _server_admin(server_url, token, data_dir, "GET",
                         "/v1/downloads" + _query(device=device, image=image and image.lower(), limit=limit))
    emit(rows, lambda: _print_table(
        f"downloads ({len(rows)}, newest first)", ["at", "device", "what", "release", "outcome", "bytes"],
        [[_when(r["at"]), r["device_id"] or r["address"], r["what"],
          f"{r['product']} {r['version']}" if r.get("product") else r["target"],
          r["outcome"] + (f" ({r['code']})" if r.get("code") else ""), r["bytes"]] for r in rows],
        "no downloads", sorted({(f"{r['product']} {r['version']} header hash", r["header_hash"])
                                for r in rows if r.get("header_hash")})))


@server.command("devices")
@_SERVER_URL
@_TOKEN
@_DATA
@json_option
def server_devices(server_url: str, token: str | None, data_dir: Path | None) -> None:
    """The devices registered with the server (C11.3.d): id, key, hardware, declared and assigned region."""
    rows = _server_admin(server_url, token, data_dir, "GET", "/v1/devices")
    emit(rows, lambda: _print_table(
        f"devices ({len(rows)})", ["device", "address", "hardware", "location", "assigned region"],
        [[d["device_id"], d["address"], d["hardware"], d.get("location"), d.get("assigned_region")] for d in rows],
        "no device registered"))


@server.command("known-bad")
@_SERVER_URL
@_TOKEN
@_DATA
@json_option
def server_known_bad(server_url: str, token: str | None, data_dir: Path | None) -> None:
    """The known-bad payload hashes the server refuses (C11.3.c), with their reasons; full hashes."""
    rows = _server_admin(server_url, token, data_dir, "GET", "/v1/admin/known-bad")
    emit(rows, lambda: _print_table(
        f"known-bad payloads ({len(rows)})", ["#", "at", "reason"],
        [[n, _when(r["at"]), r["reason"]] for n, r in enumerate(rows, 1)], "no known-bad payload",
        [(f"#{n} file hash", r["file_hash"]) for n, r in enumerate(rows, 1)]))


@server.command("concerned")
@click.argument("header_hash")
@_SERVER_URL
@_TOKEN
@_DATA
@json_option
def server_concerned(header_hash: str, server_url: str, token: str | None, data_dir: Path | None) -> None:
    """The devices release HEADER_HASH concerns (C11.3.g): they took an older version of its line from
    this server and their hardware class is one it supports; and the trackers told of them (T9.b)."""
    import re

    if not re.fullmatch(r"0x[0-9a-fA-F]{64}", header_hash):
        raise click.BadParameter(f"{header_hash!r} is not a header hash (0x + 64 hex)", param_hint="HEADER_HASH")
    out = _server_admin(server_url, token, data_dir, "GET", f"/v1/admin/concerned/{header_hash.lower()}")

    def show() -> None:
        _print_table(f"{out['vendor']}/{out['product']} {out['version']}: devices concerned ({len(out['devices'])})",
                     ["device", "hardware", "last version taken here"],
                     [[d["device_id"], d["hardware"], d["version"]] for d in out["devices"]],
                     f"{out['vendor']}/{out['product']} {out['version']}: no device of this server is concerned")
        _print_table("trackers told", ["at", "tracker", "status", "devices named"],
                     [[_when(n["at"]), n["url"], n["status"], n["devices"]] for n in out["notified"]],
                     "no tracker was told of this release")

    emit(out, show)
