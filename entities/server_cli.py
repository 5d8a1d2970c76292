"""``fwledger server ...``: the firmware server's commands (run, and the operator's view and controls)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ledger_node.errors import ConfigError, FwledgerError

from .cli import _admission_options, _ctx, cli, emit, err_console, json_option, load_key

__all__: list[str] = []  # click commands registered on their groups

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
@json_option
def server_run(host: str, port: int, data_dir: Path | None, max_upload_bytes: int | None,
               max_total_bytes: int | None, poll_interval: float | None, notify: tuple[str, ...],
               tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, tls_client: str,
               admission: str | None, operator_keys: tuple[str, ...], manufacturer_cas: tuple[Path, ...]) -> None:
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
                             operator_keys=list(operator_keys) or None, manufacturer_cas=list(manufacturer_cas) or None)
    if not cfg.operator_keys:
        from dataclasses import replace

        try:
            cfg = replace(cfg, operator_keys=(load_key(c.settings.signing_key_file()).address,))
        except ConfigError:
            pass  # no operator key: admission records are refused (unknown_operator)
    app = build_app(cfg, c.w3(), c.deployment(), confirmations=c.settings.confirmations,
                    batch_blocks=c.settings.batch_blocks)
    info = {"url": f"{'https' if tls else 'http'}://{host}:{port}", "pid": os.getpid(), "data": str(cfg.data_dir),
            "admin_token_file": None if cfg.admin_token else str(cfg.data_dir / "admin.token"),
            "registry": app.state.service.ledger.registry, "admission": cfg.admission,
            "operator_keys": list(cfg.operator_keys)}
    emit(info, lambda: err_console.print(f"firmware server on {info['url']} (pid {info['pid']}), data {cfg.data_dir}"))
    sys.stdout.flush()
    serve(app, host, port, tls=tls)


def _server_admin(url: str, token: str | None, data_dir: Path | None, method: str, path: str,
                  body: Any = None) -> Any:
    """One operator request to a firmware server (``Authorization: Bearer``); the token is
    ``--token`` / FWLEDGER_SERVER_TOKEN, else the server's config, else ``<data>/admin.token``
    (a server on this machine). Refusals become one-line errors."""
    import requests

    if not token:
        from .firmware_server.config import load_server_config

        cfg = load_server_config(_ctx().settings.home, data_dir=data_dir)
        path_file = cfg.data_dir / "admin.token"
        if cfg.admin_token:
            token = cfg.admin_token
        elif path_file.is_file():
            token = path_file.read_text().strip()
        else:
            raise ConfigError(f"no operator token: give --token (or FWLEDGER_SERVER_TOKEN); no {path_file}")
    try:
        resp = requests.request(method, url.rstrip("/") + path, json=body, timeout=30,
                                headers={"Authorization": f"Bearer {token}"})
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


