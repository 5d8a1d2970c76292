"""``fwledger tracker ...``: the status tracker's commands (run, fleet queries, triggers, rollouts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.record import Version

from .cli import (
    _TRACKER_KEY,
    _TRACKER_URL,
    ADDRESS,
    HASH_REF,
    VERSION,
    _admission_options,
    _ctx,
    _tracker_call,
    emit,
    err_console,
    json_option,
    out_console,
    tracker,
)

__all__: list[str] = []  # click commands registered on their groups

@tracker.command("run")
@click.option("--role", type=click.Choice(["server", "intermediate", "client"]), default="server", show_default=True,
              help="Deployment role (clause 8): 'server' (full node) or 'intermediate' (relay and cache, "
                   "--upstream); 'client' runs inside a device.")
@click.option("--listen", default="127.0.0.1:8470", show_default=True, help="HOST:PORT (loopback).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder (index, inventory, identity key) [env FWLEDGER_TRACKER_DATA; <home>/tracker].")
@click.option("--identity", "identity_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The tracker's own key file [<data>/tracker.key, created if missing].")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=None,
              help="Seconds between ledger polls, T9.d [env FWLEDGER_TRACKER_POLL; 1.0].")
@click.option("--admin-key", "admin_keys", multiple=True, type=ADDRESS,
              help="Administrator address: T9.c triggers and inventory reads (repeat) "
                   "[env FWLEDGER_TRACKER_ADMINS; else the home's signing key].")
@click.option("--server-key", "server_keys", multiple=True, type=ADDRESS,
              help="Trusted firmware server address for T9.b triggers (repeat) [env FWLEDGER_TRACKER_SERVERS].")
@click.option("--module-key", "module_keys", multiple=True, type=ADDRESS,
              help="A lower module's (intermediate's) address whose module heartbeats are accepted (repeat); "
                   "others are refused unknown_module [env FWLEDGER_TRACKER_MODULE_KEYS].")
@click.option("--upstream", "upstreams", multiple=True,
              help="Intermediate: the upstream module's URL (repeat for fail-over) [env FWLEDGER_TRACKER_UPSTREAMS].")
@click.option("--upstream-key", "upstream_keys", multiple=True, type=ADDRESS,
              help="Intermediate: the upstream's signing address, one per --upstream (C11.2.d) "
                   "[env FWLEDGER_TRACKER_UPSTREAM_KEYS].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="This module's fleet certificate: serve HTTPS [env FWLEDGER_TRACKER_TLS_CERT].")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Its private key [env FWLEDGER_TRACKER_TLS_KEY].")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The fleet CA certificate peers must chain to [env FWLEDGER_TRACKER_TLS_CA].")
@click.option("--tls-client", type=click.Choice(["required", "optional"]), default=None,
              help="With TLS: 'required' refuses clients without a fleet certificate (modules, operators, "
                   "devices given one); 'optional' lets devices in on the pinned CA and their signed requests "
                   "[env FWLEDGER_TRACKER_TLS_REQUIRE_CLIENT; required].")
@click.option("--public-url", default=None,
              help="Intermediate: the URL lower modules reach it at, for its module heartbeats [from --listen].")
@click.option("--serve-http", is_flag=True,
              help="Intermediate: serve plain HTTP to the devices below while the TLS files still secure the "
                   "upstream connection (mutual TLS); devices' requests and its answers are signed (MODULES.md 5).")
@_admission_options("TRACKER", "else the administrator keys")
@json_option
def tracker_run(role: str, listen: str, data_dir: Path | None, identity_file: Path | None,
                poll_interval: float | None, admin_keys: tuple[str, ...], server_keys: tuple[str, ...],
                module_keys: tuple[str, ...], upstreams: tuple[str, ...], upstream_keys: tuple[str, ...],
                tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, tls_client: str | None,
                public_url: str | None, serve_http: bool, admission: str | None, operator_keys: tuple[str, ...],
                manufacturer_cas: tuple[Path, ...]) -> None:
    """Run the tracker's server module over HTTP until SIGINT/SIGTERM; OpenAPI at /openapi.json."""
    from .status_tracker.app import build_tracker, check_listen, create_app, serve
    from .status_tracker.config import load_tracker_config, parse_listen
    from .status_tracker.modules import server_tls

    c = _ctx()
    require_client = None if tls_client is None else tls_client == "required"
    if serve_http and role != "intermediate":
        raise click.UsageError("--serve-http goes with --role intermediate")
    if role == "intermediate":
        _tracker_run_intermediate(listen, public_url, serve_http, data_dir=data_dir, identity_file=identity_file,
                                  poll_interval=poll_interval, admin_keys=admin_keys, module_keys=module_keys,
                                  upstreams=upstreams, upstream_keys=upstream_keys, tls_cert=tls_cert,
                                  tls_key=tls_key, tls_ca=tls_ca, tls_require_client=require_client)
        return
    if role != "server":
        raise ConfigError(f"tracker role {role!r} is not built yet: only 'server' and 'intermediate' run")
    host, port = parse_listen(listen)
    cfg = load_tracker_config(c.settings.home, role=role, data_dir=data_dir, identity_file=identity_file,
                              poll_interval=poll_interval, admin_keys=admin_keys, server_keys=server_keys,
                              module_keys=module_keys, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                              tls_require_client=require_client, admission=admission, operator_keys=operator_keys,
                              manufacturer_cas=manufacturer_cas)
    tls = server_tls(cfg)
    check_listen(host, port, tls)
    if not cfg.admin_keys:
        try:
            from dataclasses import replace

            home_key = c.settings.signing_account().address
            cfg = replace(cfg, admin_keys=(home_key,), operator_keys=cfg.operator_keys or (home_key,))
        except ConfigError:
            pass  # no administrator: operator reads are refused
    trk = build_tracker(cfg, c.trusted_w3(), c.deployment(), confirmations=c.settings.confirmations,
                        batch_blocks=c.settings.batch_blocks)
    app = create_app(trk, listen=(host, port))
    info = {"url": f"{'https' if tls else 'http'}://{host}:{port}", "pid": os.getpid(), "role": role,
            "address": trk.address, "dashboard_token_file": str(cfg.dashboard_token_path),
            "data": str(cfg.data_dir), "registry": trk.registry, "chain_id": trk.chain_id,
            "admin_keys": list(cfg.admin_keys), "server_keys": list(cfg.server_keys),
            "admission": cfg.admission, "operator_keys": list(cfg.operator_keys)}
    note = _header_age_note(c)  # confirmations x block time: the age of the headers devices get
    if note is not None:
        info["header_age"] = {"note": note[0], "warning": note[1]}
    emit(info, lambda: err_console.print(f"status tracker {trk.address} on {info['url']} (pid {info['pid']}), "
                                         f"data {cfg.data_dir}; dashboard login: fwledger tracker dashboard-url"))
    if note is not None:
        click.echo(("warning: " if note[1] else "note: ") + note[0], err=True)
    sys.stdout.flush()
    serve(app, host, port, tls=tls)


def _header_age_note(c: Any) -> tuple[str, bool] | None:
    """The start-up line on the age of attested headers (ledger_node.freshness), if any."""
    from ledger_node.freshness import measure_block_time, tracker_note

    if c.settings.confirmations <= 0:
        return None
    try:
        return tracker_note(c.settings.confirmations, measure_block_time(c.trusted_w3()))
    except FwledgerError:  # the full node reports an unreachable chain itself
        return None


@tracker.command("dashboard-url")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The tracker's data folder [env FWLEDGER_TRACKER_DATA; <home>/tracker].")
@click.option("--url", "--tracker", "url", envvar="FWLEDGER_TRACKER", default="http://127.0.0.1:8470",
              show_default=True, help="The tracker's address as the browser reaches it [env FWLEDGER_TRACKER].")
@json_option
def tracker_dashboard_url(data_dir: Path | None, url: str) -> None:
    """The operator's dashboard login address, URL/dashboard/login#TOKEN: the token (the tracker's
    dashboard.token, made on its first start) rides in the fragment, which browsers never send."""
    from .status_tracker.config import load_tracker_config
    from .status_tracker.dashboard import load_or_create_token, login_url

    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--url must be an http(s) URL, not {url!r}")
    cfg = load_tracker_config(_ctx().settings.home, data_dir=data_dir)
    link = login_url(url, load_or_create_token(cfg.dashboard_token_path, create=False))
    emit({"url": link, "dashboard": url.rstrip("/") + "/dashboard", "token_file": str(cfg.dashboard_token_path)},
         lambda: click.echo(link))


def _tracker_run_intermediate(listen: str, public_url: str | None, serve_http: bool, **flags: Any) -> None:
    """``tracker run --role intermediate``: no chain; relays and caches for the devices below (MODULES.md 6).
    ``serve_http``: plain HTTP downstream even with TLS files (they then secure the upstream only)."""
    from .status_tracker.app import check_listen, serve
    from .status_tracker.config import load_tracker_config, parse_listen
    from .status_tracker.intermediate import build_intermediate, create_intermediate_app
    from .status_tracker.modules import server_tls

    c = _ctx()
    host, port = parse_listen(listen)
    cfg = load_tracker_config(c.settings.home, role="intermediate", **flags)
    tls = None if serve_http else server_tls(cfg)
    check_listen(host, port, tls)
    url = public_url or f"{'https' if tls else 'http'}://{host}:{port}"
    module = build_intermediate(cfg, url=url)
    app = create_intermediate_app(module)
    info = {"url": url, "pid": os.getpid(), "role": "intermediate", "address": module.address,
            "data": str(cfg.data_dir), "upstreams": list(cfg.upstreams), "upstream_keys": list(cfg.upstream_keys),
            "tls": tls is not None}
    emit(info, lambda: err_console.print(f"intermediate tracker {module.address} on {url} (pid {info['pid']}), "
                                         f"upstream {', '.join(cfg.upstreams)}"))
    sys.stdout.flush()
    serve(app, host, port, tls=tls)


@tracker.command("devices")
@_TRACKER_URL
@_TRACKER_KEY
@click.option("--status", type=click.Choice(["outdated", "up-to-date", "at-risk", "unknown", "unreachable",
                                             "update-needed", "safe-mode", "no-firmware", "unverified",
                                             "in-trial", "concerned"]),
              default=None, help="Only devices in this state.")
@click.option("--label", "labels", multiple=True, metavar="NAME=VALUE",
              help="Only devices whose admission carries this label, e.g. group=pilot (repeat: all of them).")
@json_option
def tracker_devices(tracker_url: str, tracker_key: str | None, status: str | None, labels: tuple[str, ...]) -> None:
    """The tracker's inventory: devices, labels, readiness, versions, verdicts (C11.2.a-b)."""
    from urllib.parse import urlencode

    from .protocol.admission import AdmissionError, parse_labels

    try:
        wanted = parse_labels(list(labels))
    except AdmissionError as exc:
        raise click.BadParameter(str(exc), param_hint="--label") from None
    query = urlencode([*([("status", status)] if status else []), *(("label", f"{k}={v}") for k, v in wanted.items())])
    rows = _tracker_call(tracker_url, "GET", "/v1/devices" + (f"?{query}" if query else ""), tracker_key=tracker_key)

    def human() -> None:
        t = Table(title=f"devices ({len(rows)})")
        for col in ("device", "hardware", "labels", "readiness", "components", "state", "update needed",
                    "concerned by"):
            t.add_column(col, overflow="fold")
        for d in rows:
            a = d.get("assessment") or {}
            firmware = [s.replace("-", " ") for s in d.get("firmware", [])]  # never up to date
            state = ", ".join(firmware) or ("at risk" if a.get("at_risk") else "outdated" if a.get("outdated") else
                                            "up to date" if a else "unassessed")
            board = {p: b for b, ps in (d.get("addons") or {}).items() for p in ps}
            comps = ", ".join(f"{p} {c.get('version') or 'none'}"
                              + (f" ({c['state']})" if c.get("state", "confirmed") != "confirmed" else "")
                              + (" (needs: safe mode)" if c.get("needs") == "safe_mode" else "")
                              + (f" [on {board[p]}]" if p in board else "")
                              for p, c in sorted(d["components"].items()))
            needed = ", ".join(f"{n['product']} {n['to_version']}" for n in d["update_needed"]) or "-"
            tags = "\n".join(f"{k}={v}" for k, v in sorted((d.get("labels") or {}).items())) or "-"
            concerned = "\n".join(f"{e['product']} {e['version']} (reported by server {e['server']}; "
                                  f"{e['state'].replace('_', ' ')})" for e in d.get("concerned", [])) or "-"
            t.add_row(d["device_id"], d["hardware"], tags, d["readiness"], comps, state, needed, concerned)
        out_console.print(t)

    emit(rows, human)


@tracker.command("outdated")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_outdated(tracker_url: str, tracker_key: str | None) -> None:
    """Up-to-date and outdated devices (R10.b.i), and those running revoked or vulnerable releases (R10.b.ii)."""
    out = _tracker_call(tracker_url, "GET", "/v1/outdated", tracker_key=tracker_key)

    def human() -> None:
        out_console.print(f"ledger block {out['ledger_block']}: {out['devices']} devices, "
                          f"{len(out['up_to_date'])} up to date, {len(out['outdated'])} outdated, "
                          f"{len(out['revoked_or_vulnerable'])} on revoked or vulnerable releases"
                          + "".join(f", {len(out.get(k, []))} {k.replace('_', ' ')}"
                                    for k in ("safe_mode", "no_firmware", "unverified", "in_trial") if out.get(k)))
        for d in out["outdated"]:
            out_console.print(f"[bold]{d['device_id']}[/]")
            for r in d["reasons"]:
                out_console.print(f"  {r}")
        for d in out["revoked_or_vulnerable"]:
            out_console.print(f"[red]{d['device_id']}[/]: " + "; ".join(f["detail"] for f in d["findings"]))
        for e in out.get("concerned", []):  # C11.3.g: what firmware servers reported
            out_console.print(f"{e['device_id']}: concerned by {e['product']} {e['version']} (reported by server "
                              f"{e['server']}): {e['state'].replace('_', ' ')}", markup=False)
        for o in out.get("observations_pending", []):  # T9.e / T9.b: release not indexed yet
            what = (f"server {o.get('signer')}'s trigger for release {o.get('header_hash')} ({o['version']})"
                    if o.get("source") == "server" else
                    f"observed {o['vendor']}/{o['product']} {o['version']} on {len(o['devices'])} device(s)")
            out_console.print(f"{what}, not on the indexed ledger yet: polling"
                              + (f" until block {o['until_block']}" if o["until_block"] is not None else ""),
                              markup=False)

    emit(out, human)


def _product_version(text: str) -> tuple[str, str]:
    product, sep, version = text.partition("=")
    try:
        if not sep or not product:
            raise ValueError
        return product, str(Version.parse(version))
    except (ValueError, FwledgerError):
        raise click.BadParameter(f"{text!r}: expected PRODUCT=X.Y.Z") from None


def _running(row: dict[str, Any], product: str) -> str | None:
    """The version of ``product`` a device row says runs confirmed (a trial or an unverified image
    does not count)."""
    comp = (row.get("components") or {}).get(product) or {}
    return comp.get("version") if comp.get("state", "confirmed") == "confirmed" else None


@tracker.command("wait")
@click.option("--version", "wanted", default=None,
              help="PRODUCT=X.Y.Z: the version every device must run [none: wait for --devices only].")
@click.option("--devices", "at_least", type=click.IntRange(min=1), default=1, show_default=True,
              help="Also wait until the tracker knows at least this many devices.")
@click.option("--timeout", type=click.FloatRange(min=1, max=86_400), default=300, show_default=True,
              help="Give up after this many seconds (exit 1, naming the devices still behind).")
@click.option("--interval", type=click.FloatRange(min=0.2, max=600), default=2, show_default=True,
              help="Seconds between two looks at the inventory.")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_wait(wanted: str | None, at_least: int, timeout: float, interval: float, tracker_url: str,
                 tracker_key: str | None) -> None:
    """Wait until every device the tracker knows runs PRODUCT at the version (scripts, CI/CD:
    "the rollout reached the fleet"). Progress goes to stderr; exit 1 on timeout."""
    import functools
    import time

    product, version = _product_version(wanted) if wanted else ("", "")
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        rows = _tracker_call(tracker_url, "GET", "/v1/devices", tracker_key=tracker_key)
        behind = {d["device_id"]: _running(d, product) for d in rows if wanted and _running(d, product) != version}
        line = (f"{len(rows) - len(behind)}/{len(rows)} devices run {product} {version}" if wanted
                else f"the tracker knows {len(rows)} device(s)")
        if len(rows) >= at_least and not behind:
            emit({"product": product or None, "version": version or None, "devices": len(rows), "behind": {}},
                 functools.partial(out_console.print, line))
            return
        if time.monotonic() >= deadline:
            listed = ", ".join(f"{d} ({v or 'none'})" for d, v in sorted(behind.items())[:10])
            raise FwledgerError(f"timed out after {timeout:g} s: {line}" + (f"; behind: {listed}" if listed else
                                                                              f"; the tracker knows {len(rows)} of "
                                                                              f"{at_least} devices"))
        if line != last:
            err_console.print(line)
            last = line
        time.sleep(interval)


@tracker.command("plan")
@click.argument("device_id")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_plan(device_id: str, tracker_url: str, tracker_key: str | None) -> None:
    """A device's update plan (dependencies first) and why newer releases are not in it."""
    from urllib.parse import quote

    out = _tracker_call(tracker_url, "GET", f"/v1/devices/{quote(device_id, safe='')}/plan", tracker_key=tracker_key)

    def human() -> None:
        plan = out["plan"]
        out_console.print(f"device {device_id}: {'outdated' if out['outdated'] else 'up to date'} "
                          f"(ledger block {out['ledger_block']})")
        held = {h["header_hash"]: h for h in out.get("held", [])}
        for u in plan["upgrades"]:
            after = f" after {', '.join(u['after'])}" if u["after"] else ""
            h = held.get(u["header_hash"])
            gate = "" if h is None else f" (held: {h['reason'].replace('_', ' ')}" + (
                f", rollout {h['rollout']} wave {h['wave']}, open {h['open_wave']})" if "rollout" in h else ")") + (
                f": {h['message']}" if h.get("message") else "")
            out_console.print(f"  install {u['product']} {u['from_version']} -> {u['to_version']}{after}{gate}")
        for b in plan["blocked"]:
            for v in b["verdicts"]:
                why = "; ".join(r["detail"] for r in v["reasons"])
                out_console.print(f"  not {b['product']} {v['version']}: {why}")

    emit(out, human)


@tracker.command("history")
@click.argument("device_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Entries to show, newest first.")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_history(device_id: str, limit: int, tracker_url: str, tracker_key: str | None) -> None:
    """A device's update history, newest first: admission, registration, updates needed, commands
    (product, versions, rollout), results (installed, failed with code), trial confirmed or rolled
    back, heartbeats summarised; and its standing in each rollout (administrator key)."""
    import datetime as dt
    from urllib.parse import quote

    out = _tracker_call(tracker_url, "GET", f"/v1/devices/{quote(device_id, safe='')}/history?limit={limit}",
                        tracker_key=tracker_key)

    def when(t: float | None) -> str:
        return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    def human() -> None:
        for r in out["rollouts"]:
            out_console.print(f"rollout #{r['rollout']} ({r['rollout_state']}) {r['product']} {r['to_version']}: "
                              f"wave {r['wave']}, {r['state']}" + (f" ({r['code']})" if r.get("code") else ""),
                              markup=False)
        t = Table(title=f"history of {device_id} ({len(out['entries'])} entries, newest first"
                        + ("" if out["complete"] else "; older ones pruned or not shown") + ")")
        t.add_column("at", overflow="fold")
        t.add_column("event", overflow="fold")
        t.add_column("what (product, versions, rollout, code)", overflow="fold")
        for e in out["entries"]:
            at = when(e["at"]) + (f" .. {when(e['until'])}" if e.get("until") not in (None, e["at"]) else "")
            t.add_row(at, e["event"], Text(e["detail"]))
        out_console.print(t)

    emit(out, human)


@tracker.command("trigger")
@click.argument("header_hash", type=HASH_REF)
@click.option("--version", "version", required=True, type=VERSION, help="The release's version.")
@click.option("--link", required=True, help="Where the image is (http or https URL).")
@click.option("--source", type=click.Choice(["author", "server", "admin"]), default="admin", show_default=True,
              help="Who asks: T9.a author, T9.b firmware server, T9.c administrator (signed with --key-file).")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_trigger(header_hash: str, version: Version, link: str, source: str, tracker_url: str,
                    tracker_key: str | None) -> None:
    """Ask the tracker to act on a release (clause 9); refused unless the ledger has it with that version.
    HASH: the header hash, or a unique prefix of at least 8 hex digits (found in the home's full node)."""
    from .ledger_cli import header_hash_for

    body = {"source": source, "header_hash": "0x" + header_hash_for(header_hash), "link": link, "version": str(version)}
    out = _tracker_call(tracker_url, "POST", "/v1/triggers", body, tracker_key=tracker_key)
    emit(out, lambda: out_console.print(f"trigger #{out['trigger_id']} ({out['clause']}) accepted: "
                                        f"{len(out['devices'])} device(s) need {version}"))


# rollouts: entities/rollout_cli.py
