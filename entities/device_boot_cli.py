"""``fwledger device confirm|revert``, and what ``device init`` and ``device anchors`` need beyond
the device group's module: factory images at provisioning, and the header-age check of anchors.

Registered on import by ``entities.device_cli``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ledger_node.errors import ConfigError, FwledgerError

from .cli import _ctx, emit, json_option, out_console
from .device_cli import _device_errors, _read_evidence, device

__all__ = ["board_class_keys", "factory_images", "header_age_warnings", "provisioning_cleanup", "read_class_key"]


# ----------------------------------------------------------------------------- class keys at provisioning


def read_class_key(path: Path) -> bytes:
    """The hardware class's X25519 private key: 64 hex digits (``0x`` optional) or the 32 raw bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the class key {path}: {exc.strerror or exc}") from exc
    if len(data) == 32:
        return data
    try:
        key = bytes.fromhex(data.decode("ascii").strip().removeprefix("0x"))
    except ValueError:  # UnicodeDecodeError included
        key = b""
    if len(key) != 32:
        raise ConfigError(f"the class key {path} must be an X25519 private key: 64 hex digits or 32 raw bytes "
                          f"(the file holds {len(data)} bytes)")
    return key


def board_class_keys(specs: Sequence[str]) -> dict[str, bytes]:
    """``--addon-class-key BOARD=FILE`` (repeat): each add-on board's class key, read as ``--class-key``.

    Raises:
        click.UsageError: not BOARD=FILE, or a board given twice.
        ConfigError: a file is not an X25519 private key.
    """
    keys: dict[str, bytes] = {}
    for spec in specs:
        board, sep, path = spec.partition("=")
        if not sep or not board or not path or board in keys:
            raise click.UsageError(f"--addon-class-key {spec!r}: BOARD=FILE, once per board")
        keys[board] = read_class_key(Path(path))
    return keys


# ----------------------------------------------------------------------------- confirm / revert


@device.command("confirm")
@click.option("--dir", "root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("component")
@json_option
@_device_errors
def device_confirm(root: Path, component: str) -> None:
    """Confirm the image COMPONENT runs on trial (an image installed by hand on a device without a
    health check; the agent does it itself once it reached a tracker): the anti-rollback counter
    rises to it (C11.1.a.i). Refused (not_in_trial) when nothing runs on trial."""
    from .firmware_consumer import Device

    with Device(root) as dev:
        st = dev.confirm(component)
        out = {"dir": str(root), "component": component, "confirmed": st.confirmed,
               "version": st.slot(st.confirmed).version if st.confirmed else None, "counter": st.counter}
    emit(out, lambda: out_console.print(f"{component}: {out['version']} confirmed in slot {out['confirmed']}; "
                                        f"anti-rollback counter {out['counter']}", markup=False))


@device.command("revert")
@click.option("--dir", "root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("component")
@json_option
@_device_errors
def device_revert(root: Path, component: str) -> None:
    """Give up the image COMPONENT has on trial and boot the confirmed one again, or safe mode when
    there is none (R10.c.ii). Refused (not_in_trial) when nothing is on trial."""
    from .firmware_consumer import Device

    with Device(root) as dev:
        boot = dev.revert(component)
    out = {"dir": str(root), **boot.to_json()}
    emit(out, lambda: out_console.print(
        f"{component}: trial given up; running {boot.version or 'nothing'} ({boot.kind.value})", markup=False))


# ----------------------------------------------------------------------------- device init: factory images


def _pairs(values: Sequence[str], option: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise click.UsageError(f"{option} takes COMPONENT=VALUE, not {v!r}")
        out.append((name, rest))
    return out


def factory_images(*, factory: Sequence[str], evidence: Sequence[Path], factory_image: Sequence[str],
                   factory_version: Sequence[str], anchors: Any, hardware: str, class_key: bytes,
                   bindings: Mapping[str, Any], board_keys: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """The factory images of ``device init``, every verified one checked before anything is written.

    ``--factory COMPONENT=BUNDLE`` with ``--evidence FILE`` (one per ``--factory``, in order; else
    BUNDLE.evidence.json): verified like an update. ``--factory-image COMPONENT=FILE`` with
    ``--factory-version X.Y.Z`` (or ``COMPONENT=X.Y.Z``, one per image): placed unverified.

    Raises:
        click.UsageError: options that do not pair up.
        UpdateRefused: a verified image failed a check (the code ``device update`` gives).
        ConfigError: an unreadable file, a component that is not one of the device's.
    """
    from .firmware_consumer.factory import unverified_factory_image, verified_factory_image

    verified = _pairs(factory, "--factory")
    if evidence and len(evidence) != len(verified):
        raise click.UsageError("give one --evidence per --factory (in the same order), or none "
                               "(each BUNDLE.evidence.json then)")
    images = _pairs(factory_image, "--factory-image")
    versions: dict[str, str] = {}
    for v in factory_version:
        name, sep, version = v.rpartition("=")
        if not sep:
            if len(images) != 1:
                raise click.UsageError("--factory-version X.Y.Z goes with one --factory-image; with several, "
                                       "give COMPONENT=X.Y.Z for each")
            name, version = images[0][0], v
        versions[name] = version
    if set(versions) != {n for n, _ in images}:
        raise click.UsageError("each --factory-image COMPONENT=FILE needs its --factory-version")
    names = [n for n, _ in verified] + [n for n, _ in images]
    if len(set(names)) != len(names):
        raise click.UsageError("one factory image per component")
    out: dict[str, Any] = {}
    for name, _ in images:
        if name not in bindings:
            raise ConfigError(f"--factory-image names {name!r}, not a --component of this device")
    for i, (name, bundle) in enumerate(verified):
        path = Path(bundle)
        ev = _read_evidence(evidence[i] if evidence else None, path)
        out[name] = verified_factory_image(anchors, hardware, class_key, bindings, name, path, ev,
                                           board_keys=board_keys)
    for name, file in images:
        out[name] = unverified_factory_image(Path(file), versions[name])
    return out


class provisioning_cleanup:
    """Remove a device folder this command created when provisioning fails half-way (a folder
    that existed before is left alone: provision_device refuses to overwrite a device)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created = not root.exists()

    def __enter__(self) -> provisioning_cleanup:
        return self

    def __exit__(self, exc_type: Any, *_: object) -> None:
        if exc_type is not None and self.created and self.root.is_dir():
            shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- device anchors: header age


def header_age_warnings(max_age: float, block_time: float | None) -> tuple[list[str], dict[str, Any]]:
    """Warnings when ``max_age`` is below what the chain's settings imply (``[fullnode] confirmations``
    / FWLEDGER_CONFIRMATIONS, and ``block_time`` given or measured from the chain's last blocks)."""
    from ledger_node.freshness import max_age_problem, measure_block_time

    c = _ctx()
    confirmations = c.settings.confirmations
    measured = False
    if block_time is None:
        try:
            block_time = measure_block_time(c.w3())
            measured = block_time is not None
        except FwledgerError:  # no node to measure: no warning
            block_time = None
    facts = {"confirmations": confirmations, "block_time": block_time, "block_time_measured": measured}
    problem = max_age_problem(max_age, confirmations, block_time)
    return ([problem] if problem else []), facts
