"""``fwledger fleet admit|import|decommission|rekey|list|sync|pending|accept|reject|certify``: the
operator's device admission (:mod:`entities.protocol.admission`).

The operator's key (``--key-file``, else ``<home>/keys/admin.key``) signs every record. Records are
kept first in the operator's own copy, ``<home>/fleet/admissions.json`` (written atomically: a
crash loses nothing signed), then pushed to every service named by ``--service URL`` (repeat, or
``FWLEDGER_FLEET_SERVICES``, space-separated): tracker server modules and firmware servers, each
``POST /v1/admissions`` in batches of 50. A service that could not be reached is named, the command
exits 1, and ``fwledger fleet sync`` pushes the whole copy again (services ignore what they hold).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ledger_node.errors import ConfigError

from .admission_client import copy_path, push_records, read_copy, save_copy
from .cli import (
    ADDRESS,
    _client_tls,
    _ctx,
    _tracker_call,
    emit,
    err_console,
    fleet,
    json_option,
    out_console,
)
from .protocol.admission import (
    Admission,
    AdmissionError,
    parse_addons,
    parse_admission,
    parse_labels,
    sign_admission,
)

__all__: list[str] = []  # click commands registered on the fleet group

_SERVICES = click.option("--service", "services", multiple=True, envvar="FWLEDGER_FLEET_SERVICES",
                         help="A tracker server module's or firmware server's URL to push the records to "
                              "(repeat) [env FWLEDGER_FLEET_SERVICES, space-separated].")
_TRACKER = click.option("--tracker", "tracker_url", envvar="FWLEDGER_TRACKER", default="http://127.0.0.1:8470",
                        show_default=True, help="The tracker holding the pending queue [env FWLEDGER_TRACKER].")
_LABEL = click.option("--label", "labels", multiple=True, metavar="NAME=VALUE",
                      help="A label entitlement and rollouts use, e.g. region=eu-west, group=pilot (repeat).")
_ADDON = click.option("--addon", "addons", multiple=True, metavar="BOARD",
                      help="An add-on board the device carries, by its hardware class id on the ledger (as "
                           "device init --addon): its firmware is served and planned for the device (repeat).")


def _copy_path() -> Path:
    return copy_path(_ctx().settings.home)


def _read_copy() -> dict[str, dict[str, Any]]:
    return read_copy(_ctx().settings.home)


def _save(records: Sequence[Admission]) -> None:
    save_copy(_ctx().settings.home, records)


def _publish(records: Sequence[Admission], services: Sequence[str], what: str) -> None:
    """Keep, push, report; exit 1 when a service did not take them."""
    _save(records)
    pushed = push_records(services, [r.to_json() for r in records], session_setup=_client_tls) if services else {}
    failed = {u: r["error"] for u, r in pushed.items() if "error" in r}
    info = {"ok": not failed, "records": [r.to_json() for r in records], "services": pushed,
            "copy": str(_copy_path())}

    def human() -> None:
        out_console.print(f"{what}: {len(records)} record(s) signed by {records[0].issuer if records else '-'}, "
                          f"kept in {_copy_path()}")
        for url, r in pushed.items():
            line = f"  {url}: " + (f"[red]{r['error']}[/]" if "error" in r else
                                   f"{r['applied']} applied, {r['stale']} already held")
            out_console.print(line)
        if not services:
            out_console.print("  no --service given: push later with fwledger fleet sync --service URL ...")
    emit(info, human)
    if failed:
        err_console.print(f"error: {len(failed)} service(s) did not take the records "
                          f"({', '.join(failed)}): run fwledger fleet sync when they are back")
        raise SystemExit(1)


def _operator() -> Any:
    return _ctx().signer()


def _labels(labels: Sequence[str]) -> dict[str, str]:
    try:
        return parse_labels(list(labels))
    except AdmissionError as exc:
        raise click.BadParameter(str(exc), param_hint="--label") from None


def _addons(addons: Sequence[str]) -> tuple[str, ...]:
    try:
        return parse_addons([a.strip() for a in addons])
    except AdmissionError as exc:
        raise click.BadParameter(str(exc), param_hint="--addon") from None


def _sign(device_id: str, address: str, hardware: str, labels: dict[str, str], status: str = "admitted", *,
          after: Admission | None = None, addons: Sequence[str] = ()) -> Admission:
    """A record signed by the operator; ``after``: the record it supersedes (its serial is then
    above that one's even if this machine's clock is behind the one that signed it)."""
    try:
        t = time.time()
        serial = max(int(t * 1_000_000), after.serial + 1) if after is not None else None
        return sign_admission(_operator(), device_id, address, hardware, labels, status=status, serial=serial, now=t,
                              addons=addons)
    except AdmissionError as exc:
        raise click.BadParameter(str(exc)) from None


def _current(device_id: str) -> Admission:
    rec = _read_copy().get(device_id)
    if rec is None:
        raise ConfigError(f"device {device_id} is not in the operator's admission copy {_copy_path()}")
    return parse_admission(rec)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> None:
    from rich.table import Table

    if not rows:
        out_console.print(empty)
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


# ----------------------------------------------------------------------------- commands


@fleet.command("admit")
@click.argument("device_id")
@click.option("--key", "address", type=ADDRESS, required=True, help="The device's identity key address.")
@click.option("--hardware", required=True, help="Its hardware class id on the ledger.")
@_ADDON
@_LABEL
@_SERVICES
@json_option
def fleet_admit(device_id: str, address: str, hardware: str, addons: tuple[str, ...], labels: tuple[str, ...],
                services: tuple[str, ...]) -> None:
    """Admit a device (pre-authorisation): its key, hardware class, add-on boards and labels decide what it gets."""
    _publish([_sign(device_id, address, hardware, _labels(labels), addons=_addons(addons))], services,
             f"admitted {device_id}")


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a JSON array: {exc}") from exc
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ConfigError(f"{path}: a JSON array of objects is expected")
        return rows
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"device_id", "key", "hardware"} <= set(reader.fieldnames):
        raise ConfigError(f"{path}: a CSV with the columns device_id,key,hardware[,labels][,addons] is expected")
    return [dict(r) for r in reader]


@fleet.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_SERVICES
@json_option
def fleet_import(file: Path, services: tuple[str, ...]) -> None:
    """Admit devices in bulk from a CSV (device_id,key,hardware,labels,addons with labels as
    "region=eu-west;group=pilot" and add-on boards as "sens-b1;sens-b2") or a JSON array of
    {device_id, key, hardware, labels, addons}. Every row is checked before anything is signed:
    one bad row (named by its line) admits nothing."""
    from eth_utils import is_address, to_checksum_address

    rows = _rows(file)
    account = _operator()
    records, seen = [], set()
    for n, row in enumerate(rows, start=2 if file.suffix != ".json" else 1):
        labels_in = row.get("labels") or {}
        if isinstance(labels_in, str):
            labels_in = [p for p in labels_in.replace(";", " ").split() if p]
        addons_in = row.get("addons") or []
        if isinstance(addons_in, str):
            addons_in = [p for p in addons_in.replace(";", " ").split() if p]
        key = row.get("key") or row.get("address")
        if not isinstance(key, str) or not is_address(key):
            raise ConfigError(f"{file}: row {n}: key {key!r} is not an address")
        if row.get("device_id") in seen:
            raise ConfigError(f"{file}: row {n}: device {row.get('device_id')} appears twice")
        seen.add(row.get("device_id"))
        try:
            records.append(sign_admission(account, str(row.get("device_id")), to_checksum_address(key),
                                          str(row.get("hardware")), parse_labels(labels_in), addons=addons_in))
        except AdmissionError as exc:
            raise ConfigError(f"{file}: row {n}: {exc}") from None
        if len(records) % 1000 == 0:
            err_console.print(f"signed {len(records)} of {len(rows)}")
    if not records:
        raise ConfigError(f"{file}: no device to admit")
    _publish(records, services, f"imported {len(records)} devices")


@fleet.command("decommission")
@click.argument("device_id")
@_SERVICES
@json_option
def fleet_decommission(device_id: str, services: tuple[str, ...]) -> None:
    """Take a device out of the fleet: every service refuses it (decommissioned) and it leaves its rollouts."""
    cur = _current(device_id)
    _publish([_sign(device_id, cur.address, cur.hardware, dict(cur.labels), "decommissioned", after=cur,
                    addons=cur.addons)], services, f"decommissioned {device_id}")


@fleet.command("rekey")
@click.argument("device_id")
@click.option("--key", "address", type=ADDRESS, required=True, help="The device's new identity key address.")
@_SERVICES
@json_option
def fleet_rekey(device_id: str, address: str, services: tuple[str, ...]) -> None:
    """Replace a device's key: the old key is refused (device_key_mismatch) wherever the record reaches."""
    cur = _current(device_id)
    _publish([_sign(device_id, address, cur.hardware, dict(cur.labels), after=cur, addons=cur.addons)], services,
             f"re-keyed {device_id}")


@fleet.command("relabel")
@click.argument("device_id")
@click.option("--hardware", default=None, help="A new hardware class id.")
@_ADDON
@click.option("--no-addons", is_flag=True, help="The device carries no add-on board any more.")
@_LABEL
@_SERVICES
@json_option
def fleet_relabel(device_id: str, hardware: str | None, addons: tuple[str, ...], no_addons: bool,
                  labels: tuple[str, ...], services: tuple[str, ...]) -> None:
    """Change a device's hardware class, add-on boards or labels (the labels given replace all of
    them; the boards given with --addon replace its boards, which are kept otherwise)."""
    if addons and no_addons:
        raise click.UsageError("give --addon BOARD (repeat) or --no-addons, not both")
    boards = () if no_addons else _addons(addons)
    cur = _current(device_id)
    _publish([_sign(device_id, cur.address, hardware or cur.hardware, _labels(labels), after=cur,
                    addons=boards if addons or no_addons else cur.addons)], services, f"relabelled {device_id}")


@fleet.command("label")
@click.argument("device_id")
@click.option("--set", "to_set", multiple=True, metavar="NAME=VALUE",
              help="Add a label or change its value, e.g. group=pilot (repeat).")
@click.option("--unset", "to_unset", multiple=True, metavar="NAME", help="Remove a label (repeat).")
@_SERVICES
@json_option
def fleet_label(device_id: str, to_set: tuple[str, ...], to_unset: tuple[str, ...], services: tuple[str, ...]) -> None:
    """Set or remove some of a device's labels, keeping the others: the device's admission is
    signed again with them (a serial above the current record's, so it supersedes it wherever it
    reaches) and pushed to every --service. Nothing to change: nothing signed."""
    if not to_set and not to_unset:
        raise click.UsageError("give --set NAME=VALUE or --unset NAME (repeat)")
    changes = _labels(to_set)
    both = sorted(set(changes) & set(to_unset))
    if both:
        raise click.UsageError(f"label {both[0]} is both set and unset")
    cur = _current(device_id)
    if not cur.admitted:
        raise ConfigError(f"device {device_id} is {cur.status}: admit it again (fleet admit) before labelling it")
    labels = {k: v for k, v in {**cur.labels, **changes}.items() if k not in set(to_unset)}
    try:
        labels = parse_labels(labels)
    except AdmissionError as exc:
        raise ConfigError(f"device {device_id}: {exc}") from None
    if labels == dict(cur.labels):
        shown = " ".join(f"{k}={v}" for k, v in labels.items()) or "no labels"
        emit({"ok": True, "changed": False, "device_id": device_id, "labels": labels, "records": [], "services": {},
              "copy": str(_copy_path())},
             lambda: out_console.print(f"{device_id}: labels unchanged ({shown}); nothing signed", markup=False))
        return
    _publish([_sign(device_id, cur.address, cur.hardware, labels, after=cur, addons=cur.addons)], services,
             f"labelled {device_id} " + (" ".join(f"{k}={v}" for k, v in labels.items()) or "(no labels)"))


@fleet.command("list")
@json_option
def fleet_list() -> None:
    """The operator's admission copy: every device, its key, hardware, add-on boards, labels and status."""
    copy = _read_copy()
    rows: list[dict[str, Any]] = [
        {**{k: r.get(k) for k in ("device_id", "status", "address", "hardware", "labels", "serial")},
         "addons": list(r.get("addons") or [])} for r in copy.values()]

    emit(rows, lambda: _table(f"admissions ({_copy_path()})",
                              ("device", "status", "key", "hardware", "add-on boards", "labels"),
                              [(str(r["device_id"]), str(r["status"]), str(r["address"]), str(r["hardware"]),
                                " ".join(r["addons"]) or "-",
                                " ".join(f"{k}={v}" for k, v in (r["labels"] or {}).items())) for r in rows],
                              "no device is admitted"))


@fleet.command("sync")
@_SERVICES
@json_option
def fleet_sync(services: tuple[str, ...]) -> None:
    """Push the whole admission copy to the services again (a service that was down catches up)."""
    if not services:
        raise click.UsageError("give the services to push to: --service URL (repeat)")
    records = [parse_admission(r) for r in _read_copy().values()]
    if not records:
        raise ConfigError(f"the admission copy {_copy_path()} holds no record")
    _publish(records, services, "synced")


@fleet.command("pending")
@_TRACKER
@json_option
def fleet_pending(tracker_url: str) -> None:
    """Devices that showed up signed but unannounced, waiting for the operator to accept or reject them."""
    rows = _tracker_call(tracker_url, "GET", "/v1/admissions/pending")

    emit(rows, lambda: _table("pending devices", ("device", "key", "declared hardware", "requests", "first seen"),
                              [(r["device_id"], r["address"], r["hardware"], str(r["requests"]),
                                dt.datetime.fromtimestamp(r["first_seen"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S"))
                               for r in rows], "no device is pending"))


def _pending_one(tracker_url: str, device_id: str, address: str | None) -> dict[str, Any]:
    rows = [r for r in _tracker_call(tracker_url, "GET", "/v1/admissions/pending") if r["device_id"] == device_id
            and (address is None or r["address"].lower() == address.lower())]
    if not rows:
        raise ConfigError(f"no pending device {device_id}" + (f" with key {address}" if address else ""))
    if len(rows) > 1:
        raise ConfigError(f"{len(rows)} keys are pending as {device_id} ({', '.join(r['address'] for r in rows)}): "
                          "choose one with --key")
    return rows[0]


@fleet.command("accept")
@click.argument("device_id")
@click.option("--key", "address", type=ADDRESS, default=None, help="Which pending key, when several claim the id.")
@click.option("--hardware", default=None, help="Its hardware class [what the device declared].")
@_ADDON
@_LABEL
@_TRACKER
@_SERVICES
@json_option
def fleet_accept(device_id: str, address: str | None, hardware: str | None, addons: tuple[str, ...],
                 labels: tuple[str, ...], tracker_url: str, services: tuple[str, ...]) -> None:
    """Admit a pending device as it showed up (its key; its declared hardware unless --hardware;
    the add-on boards given with --addon), pushed to the tracker and to every --service."""
    row = _pending_one(tracker_url, device_id, address)
    adm = _sign(device_id, row["address"], hardware or row["hardware"], _labels(labels), addons=_addons(addons))
    _publish([adm], [tracker_url, *services], f"accepted {device_id}")


@fleet.command("reject")
@click.argument("device_id")
@click.option("--key", "address", type=ADDRESS, default=None,
              help="Reject only this key [every key pending as the id].")
@_TRACKER
@json_option
def fleet_reject(device_id: str, address: str | None, tracker_url: str) -> None:
    """Reject a pending device: refused (rejected) from then on and never queued again."""
    out = _tracker_call(tracker_url, "POST", f"/v1/admissions/pending/{device_id}/reject", {"address": address})
    emit(out, lambda: out_console.print(f"rejected {out['rejected']} key(s) pending as {device_id}"))


@fleet.command("certify")
@click.argument("device_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The manufacturer CA (ca.crt, ca.key; make one with fwledger fleet ca-init --dir DIR --name NAME).")
@_LABEL
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True)
@json_option
def fleet_certify(device_dir: Path, ca_dir: Path, labels: tuple[str, ...], days: int) -> None:
    """At manufacture: issue the device in DEVICE_DIR a certificate over its identity key, with its
    hardware class, its add-on boards (as provisioned: device init --addon) and labels; services
    that pin the CA admit it on first contact."""
    from .firmware_consumer.device import load_device_info
    from .firmware_consumer.provision import DEVICE_CERT, KEYS_DIR, load_provisioning
    from .protocol.admission import issue_device_certificate

    info = load_device_info(device_dir)
    prov = load_provisioning(device_dir)
    out = issue_device_certificate(ca_dir, info.device_id, bytes(prov.identity.key), info.hardware,
                                   device_dir / KEYS_DIR / DEVICE_CERT, labels=_labels(labels), days=days,
                                   addons=sorted(prov.addons))
    res = {"device_id": info.device_id, "address": prov.identity.address, "hardware": info.hardware,
           "addons": sorted(prov.addons), "certificate": str(out)}
    emit(res, lambda: out_console.print(f"certificate for {info.device_id} ({prov.identity.address}, "
                                        f"{info.hardware}) written to {out}"))
