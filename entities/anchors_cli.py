"""Rotating the devices' trust anchors from the command line (:mod:`entities.protocol.anchor_rotation`).

- ``fwledger device anchors ... --serial N -o new.json``  (device_cli): the new anchors;
- ``fwledger fleet anchors-sign new.json --key-file TRACKER.key -o statement.json``: one tracker
  key's signature (run once per key: the current trackers' k and the new ones' k'; the input may
  be the anchors file or a statement already signed by other keys);
- ``fwledger tracker anchors-push statement.json --tracker URL``: the server module serves it to
  devices (``GET /v1/anchors``), whose agents apply it at their next pass;
- ``fwledger device anchors-update --dir D statement.json``: the same, by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ledger_node.errors import ConfigError

from .cli import (
    _TRACKER_KEY,
    _TRACKER_URL,
    _ctx,
    _tracker_call,
    emit,
    fleet,
    json_option,
    load_key,
    out_console,
    tracker,
)
from .device_cli import _device_errors, device

__all__: list[str] = []  # click commands registered on their groups


def _read_statement(path: Path) -> Any:
    """A statement or anchors file, bounded; not JSON is ``anchors_malformed``."""
    from .protocol.anchor_rotation import MAX_STATEMENT_BYTES, AnchorsError

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_STATEMENT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_STATEMENT_BYTES:
        raise AnchorsError("anchors_malformed", f"{path} is larger than {MAX_STATEMENT_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise AnchorsError("anchors_malformed", f"{path} is not JSON: {exc}") from None


def _summary(stmt: Any) -> dict[str, Any]:
    signed = stmt.signers()
    return {"serial": stmt.serial, "chain_id": stmt.chain_id, "trackers": list(stmt.trackers), "quorum": stmt.quorum,
            "signers": sorted(signed), "new_signers": len(signed & set(stmt.trackers)),
            "new_quorum_met": len(signed & set(stmt.trackers)) >= stmt.quorum}


@device.command("anchors-update")
@click.option("--dir", "root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("statement_file", metavar="STATEMENT.json", type=click.Path(exists=True, dir_okay=False,
                                                                            path_type=Path))
@json_option
@_device_errors
def device_anchors_update(root: Path, statement_file: Path) -> None:
    """Rotate a device's trust anchors by hand: the statement must carry signatures of k of its
    current tracker keys and k' of the new ones, a serial above its own and its chain id."""
    from .firmware_consumer.anchors import apply_statement

    done = apply_statement(root, _read_statement(statement_file))
    emit(done, lambda: out_console.print(
        f"trust anchors of {root}: serial {done['previous']} -> {done['serial']}; trackers "
        f"{', '.join(done['trackers'])} (quorum {done['quorum']})", markup=False))


@fleet.command("anchors-sign")
@click.argument("input_file", metavar="ANCHORS_OR_STATEMENT.json",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key-file", "key_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A tracker's key (a server module keeps it in <data>/tracker.key).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The statement with this key's signature added (may be the input file).")
@json_option
@_device_errors
def fleet_anchors_sign(input_file: Path, key_file: Path, output: Path) -> None:
    """Add one tracker key's signature to an anchors statement (from new anchors written by
    fwledger device anchors --serial N, or a statement other keys signed already)."""
    from ledger_node.fsutil import atomic_write_json

    from .firmware_consumer.anchors import serial_of
    from .firmware_consumer.verify import TrustAnchors
    from .protocol.anchor_rotation import ANCHORS_KIND, AnchorsError, new_statement, parse_statement, sign_statement

    doc = _read_statement(input_file)
    if isinstance(doc, dict) and doc.get("kind") == ANCHORS_KIND:
        stmt = doc
    elif isinstance(doc, dict):
        serial = serial_of(doc, str(input_file))
        if serial < 1:
            raise AnchorsError("anchors_malformed", f"{input_file} has no serial: write the new anchors with "
                                                    "fwledger device anchors --serial N (above the devices')")
        try:
            anchors = TrustAnchors.from_json(doc)
        except ConfigError as exc:
            raise AnchorsError("anchors_malformed", str(exc)) from None
        stmt = new_statement(anchors.to_json(), serial)
    else:
        raise AnchorsError("anchors_malformed", f"{input_file} is neither trust anchors nor an anchors statement")
    account = load_key(key_file, passphrase_file=_ctx().settings.passphrase_file)
    signed = sign_statement(account, stmt)
    atomic_write_json(output, signed)
    out = {"statement": str(output), "signer": account.address, **_summary(parse_statement(signed))}
    emit(out, lambda: out_console.print(
        f"serial {out['serial']} signed by {account.address}: {len(out['signers'])} signature(s), "
        f"{out['new_signers']} of the new trackers (needs {out['quorum']}) in {output}", markup=False))


@tracker.command("anchors-push")
@click.argument("statement_file", metavar="STATEMENT.json", type=click.Path(exists=True, dir_okay=False,
                                                                            path_type=Path))
@_TRACKER_URL
@_TRACKER_KEY
@json_option
@_device_errors
def tracker_anchors_push(statement_file: Path, tracker_url: str, tracker_key: str | None) -> None:
    """Hand a server module a signed anchors statement to serve to devices (GET /v1/anchors); signed
    with an administrator key of that module (--key-file, else <home>/keys/admin.key)."""
    from .protocol.anchor_rotation import parse_statement

    stmt = parse_statement(_read_statement(statement_file))  # refused here before anything is sent
    out = _tracker_call(tracker_url, "POST", "/v1/anchors", stmt.to_json(), tracker_key=tracker_key)
    emit(out, lambda: out_console.print(
        f"{tracker_url} serves anchors serial {out['serial']} (trackers {', '.join(out['trackers'])}, "
        f"quorum {out['quorum']})", markup=False))
