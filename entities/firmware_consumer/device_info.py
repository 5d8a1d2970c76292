"""A device folder's identity file, ``device.json``, and the creation of a new device folder.

:class:`DeviceInfo` is the parsed ``device.json`` (identity, hardware class, components, boot
settings, the safe-mode image's hash); :func:`init_device` lays out a new folder (safe-mode image,
per component its two slots and mirrored state, optionally a :class:`FactoryImage` confirmed in
slot ``a``) and writes ``device.json`` last. :mod:`.device` opens such a folder.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger_node import fsutil

from . import slot_digest
from .envelope import encode_envelope
from .errors import BadInstallRequest, DeviceError, DeviceExists, DeviceStorageError, NotADevice, StateCorrupt
from .state import check_component_name, factory_state, fresh_state, normalize_sha256
from .store import DEVICE_KIND, Layout, atomic_write, fsync_dir, read_envelope, write_state_copies

__all__ = [
    "DEFAULT_MAX_BOOT_ATTEMPTS",
    "DEFAULT_SAFE_IMAGE",
    "DeviceInfo",
    "FactoryImage",
    "init_device",
    "load_device_info",
]

DEFAULT_MAX_BOOT_ATTEMPTS = 3
DEFAULT_SAFE_IMAGE = b"fwledger safe mode: minimal functions; accepts only a manual recover install\n"

_TEXT_RE = re.compile(r"^[\x21-\x7e]{1,64}$")


@dataclass(frozen=True)
class DeviceInfo:
    """The contents of ``device.json``: identity, hardware class, components, boot settings."""

    device_id: str
    hardware: str
    components: tuple[str, ...]
    max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS
    health_command: tuple[str, ...] | None = None
    safe_image_sha256: str = ""
    safe_image_size: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        body = dict(self.extra)
        body.update({"id": self.device_id, "hardware": self.hardware, "components": list(self.components),
                     "max_boot_attempts": self.max_boot_attempts,
                     "health_command": None if self.health_command is None else list(self.health_command),
                     "safe_image": {"sha256": self.safe_image_sha256, "size": self.safe_image_size}})
        return body

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DeviceInfo:
        """Parse the body of device.json.

        Raises:
            NotADevice: missing or ill-typed fields.
        """
        try:
            comps = tuple(check_component_name(c) for c in obj["components"])
            hc = obj.get("health_command")
            safe = obj["safe_image"]
            info = cls(device_id=str(obj["id"]), hardware=str(obj["hardware"]), components=comps,
                       max_boot_attempts=int(obj["max_boot_attempts"]),
                       health_command=None if hc is None else tuple(str(a) for a in hc),
                       safe_image_sha256=normalize_sha256(safe["sha256"]), safe_image_size=int(safe["size"]),
                       extra={k: v for k, v in obj.items() if k not in {
                           "id", "hardware", "components", "max_boot_attempts", "health_command", "safe_image"}})
        except (KeyError, TypeError, ValueError, DeviceError) as exc:
            raise NotADevice(f"device.json: {exc}") from exc
        if len(set(comps)) != len(comps) or not comps or info.max_boot_attempts < 1:
            raise NotADevice("device.json: components must be distinct and non-empty; max_boot_attempts >= 1")
        return info


@dataclass(frozen=True)
class FactoryImage:
    """An image placed in slot ``a`` as the confirmed image at ``init`` (its version seeds the counter;
    ``verified`` False: placed without ledger evidence, the counter stays 0.0.0, :func:`.state.unverified_slot`)."""

    version: str
    header_hash: bytes | str
    data: bytes
    verified: bool = True


def load_device_info(root: Path) -> DeviceInfo:
    """Read and check ``device.json``.

    Raises:
        NotADevice: absent or damaged.
        DeviceStorageError: unreadable.
    """
    layout = Layout(Path(root))
    try:
        env = read_envelope(layout.device_file, DEVICE_KIND)
    except StateCorrupt as exc:
        raise NotADevice(f"{layout.device_file} is damaged: {exc}") from exc
    if env is None:
        raise NotADevice(f"{root} is not a device folder (no device.json); run device init")
    return DeviceInfo.from_json(env[1])


def init_device(root: Path, *, device_id: str, hardware: str,
                components: Mapping[str, FactoryImage | None] | Sequence[str],
                safe_image: bytes = DEFAULT_SAFE_IMAGE, max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS,
                health_command: Sequence[str] | None = None) -> DeviceInfo:
    """Create a device folder: layout, safe-mode image, per component its slots and state.

    A component given a :class:`FactoryImage` starts with it confirmed in slot ``a``; one given
    None (or named in a plain sequence) starts empty and boots into safe mode until ``recover``.
    ``device.json`` is written last, so a crash during init leaves no half-device.

    Raises:
        DeviceExists: the folder already holds a device.
        BadInstallRequest: a bad id, hardware, component name, version or hash.
        DeviceStorageError: the folder cannot be written.
    """
    layout = Layout(Path(root))
    if layout.device_file.exists():
        raise DeviceExists(f"{root} already holds a device")
    for what, text in (("device id", device_id), ("hardware", hardware)):
        if not isinstance(text, str) or not _TEXT_RE.match(text):
            raise BadInstallRequest(f"bad {what} {text!r}: 1..64 printable characters, no spaces")
    comps: dict[str, FactoryImage | None] = (
        dict(components) if isinstance(components, Mapping) else dict.fromkeys(components))
    if not comps:
        raise BadInstallRequest("a device needs at least one component")
    if max_boot_attempts < 1:
        raise BadInstallRequest("max_boot_attempts must be at least 1")
    states = {}
    for name, image in comps.items():
        check_component_name(name)
        states[name] = fresh_state(name) if image is None else factory_state(
            name, version=image.version, header_hash=image.header_hash,
            digest=slot_digest.digest_of(image.data), size=len(image.data), verified=image.verified)
    try:
        for d in (layout.root, layout.safe_dir, layout.journal_dir, layout.components_dir):
            fsutil.make_dirs(d)  # each new folder's entry synced in its parent
        atomic_write(layout.safe_image, safe_image)
        for name, image in comps.items():
            fsutil.make_dirs(layout.component_dir(name))
            atomic_write(layout.slot_path(name, "a"), image.data if image is not None else b"")
            atomic_write(layout.slot_path(name, "b"), b"")
            write_state_copies(layout.state_paths(name), 1, states[name].to_json(), current=None)
        info = DeviceInfo(device_id, hardware, tuple(comps), max_boot_attempts,
                          None if health_command is None else tuple(health_command),
                          _sha256(safe_image), len(safe_image))
        atomic_write(layout.device_file, encode_envelope(DEVICE_KIND, 1, info.to_json()))
        fsync_dir(layout.root)
    except OSError as exc:
        raise DeviceStorageError(f"cannot create device in {root}: {exc}") from exc
    return info


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
