"""Signed update commands from a status tracker's server module to a device (docs/MODULES.md section 2).

Pure: no network, no disk, except :class:`CommandLog` (the device's record of accepted command
ids, one JSON file written atomically). The tracker builds a command with :func:`new_command`
and signs it with :func:`sign_command`; intermediates relay the envelope byte for byte; the
device runs :func:`verify_command` before acting on it and remembers its id in a
:class:`CommandLog` so that nobody on the path can replay it.

Envelope (JSON): ``{"command": {...}, "signature": "0x<65 bytes>"}``. The signature is EIP-191
``personal_sign`` by ``command.issuer`` over::

    b"fwledger-command-v1\\n" + sha256(canonical(command)).hexdigest().encode()

with ``canonical(x) = json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``.

Checks of :func:`verify_command`, in this order, each with its stable code (``CommandError.code``):
``command_malformed``, ``command_bad_signature``, ``command_unknown_issuer``,
``command_wrong_device``, ``command_wrong_chain``, ``command_not_yet_valid``, ``command_expired``,
``command_replayed``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger_node.codec.ecdsa import KeyHolder, SignatureError, recover_personal, sign_personal
from ledger_node.codec.hashing import is_checksum_address, to_checksum_address
from ledger_node.errors import ConfigError, RecordError, VerificationError
from ledger_node.fsutil import atomic_write_json, read_json
from ledger_node.record import Version

__all__ = [
    "COMMAND_DOMAIN",
    "COMMAND_FORMAT",
    "MAX_COMMAND_BYTES",
    "MAX_TTL",
    "MAX_UPGRADES",
    "Command",
    "CommandError",
    "CommandLog",
    "CommandUpgrade",
    "canonical",
    "command_message",
    "new_command",
    "parse_command",
    "recover_signer",
    "sign_command",
    "verify_command",
]

COMMAND_FORMAT = 1
COMMAND_DOMAIN = b"fwledger-command-v1\n"
MAX_TTL = 86_400          # expires_at <= issued_at + MAX_TTL
MAX_UPGRADES = 32
MAX_COMMAND_BYTES = 32 * 1024  # canonical size of a command; 32 upgrades with 256-byte links fit
_MAX_INT = (1 << 63) - 1
_MAX_TIME = 1 << 40       # seconds: year ~36800, plenty and bounded
_MAX_WAVE = 64

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_ADDR_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HASH_RE = re.compile(r"^0x[0-9a-f]{64}$")
_SIG_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # inventory.DEVICE_ID_PATTERN
_TEXT_RE = re.compile(r"^[\x20-\x7e]{1,64}$")
_LINK_RE = re.compile(r"^[\x20-\x7e]{0,256}$")
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_COMMAND_KEYS = frozenset({"format", "type", "command_id", "issuer", "device_id", "device_address", "chain_id",
                           "registry", "issued_at", "expires_at", "block", "rollout", "wave", "upgrades"})
_UPGRADE_KEYS = frozenset({"product", "vendor", "from_version", "to_version", "header_hash", "link"})


class CommandError(VerificationError):
    """An update command the device must not act on; ``code`` is one of the module docstring's."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class CommandUpgrade:
    """One release to install, in the command's order (dependencies first)."""

    product: str
    vendor: str
    from_version: str
    to_version: str
    header_hash: str
    link: str

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "vendor": self.vendor, "from_version": self.from_version,
                "to_version": self.to_version, "header_hash": self.header_hash, "link": self.link}


@dataclass(frozen=True)
class Command:
    """A verified (or at least well-formed) update command, mirroring the JSON fields."""

    format: int
    type: str
    command_id: str
    issuer: str
    device_id: str
    device_address: str
    chain_id: int
    registry: str
    issued_at: int
    expires_at: int
    block: int
    rollout: int | None
    wave: int | None
    upgrades: tuple[CommandUpgrade, ...]

    def to_json(self) -> dict[str, Any]:
        """The command dict exactly as signed."""
        return {"format": self.format, "type": self.type, "command_id": self.command_id, "issuer": self.issuer,
                "device_id": self.device_id, "device_address": self.device_address, "chain_id": self.chain_id,
                "registry": self.registry, "issued_at": self.issued_at, "expires_at": self.expires_at,
                "block": self.block, "rollout": self.rollout, "wave": self.wave,
                "upgrades": [u.to_json() for u in self.upgrades]}


# ----------------------------------------------------------------------------- canonical form and shape


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def command_message(command: Mapping[str, Any]) -> bytes:
    """The bytes the issuer signs (EIP-191) for ``command``."""
    return COMMAND_DOMAIN + hashlib.sha256(canonical(dict(command))).hexdigest().encode()


def _bad(message: str) -> CommandError:
    return CommandError("command_malformed", message)


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = obj[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(f"{key} must be an integer in {lo}..{hi}")
    return v


def _str(obj: Mapping[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    v = obj[key]
    if not isinstance(v, str) or not pattern.match(v):
        raise _bad(f"{key} is not a valid value")
    return v


def _address(obj: Mapping[str, Any], key: str) -> str:
    v = _str(obj, key, _ADDR_RE)
    if not is_checksum_address(v):
        raise _bad(f"{key} must be a checksummed address")
    return v


def _version(obj: Mapping[str, Any], key: str) -> Version:
    v = obj[key]
    try:
        parsed = Version.parse(v) if isinstance(v, str) else None
    except RecordError:
        parsed = None
    if parsed is None or str(parsed) != v:
        raise _bad(f"{key} must be a MAJOR.MINOR.PATCH version")
    return parsed


def _upgrade(obj: Any, i: int) -> CommandUpgrade:
    if not isinstance(obj, dict) or set(obj) != _UPGRADE_KEYS:
        raise _bad(f"upgrades[{i}] must have exactly the keys {sorted(_UPGRADE_KEYS)}")
    frm, to = _version(obj, "from_version"), _version(obj, "to_version")
    if to <= frm:
        raise _bad(f"upgrades[{i}]: to_version {to} is not above from_version {frm}")
    return CommandUpgrade(product=_str(obj, "product", _TEXT_RE), vendor=_str(obj, "vendor", _TEXT_RE),
                          from_version=str(frm), to_version=str(to), header_hash=_str(obj, "header_hash", _HASH_RE),
                          link=_str(obj, "link", _LINK_RE))


def parse_command(obj: Any) -> Command:
    """Check ``obj`` has exactly the command's shape (types, patterns, sizes, keys) and return it.

    Raises:
        CommandError: ``command_malformed``.
    """
    if not isinstance(obj, dict) or set(obj) != _COMMAND_KEYS:
        raise _bad(f"a command has exactly the keys {sorted(_COMMAND_KEYS)}")
    try:
        size = len(canonical(obj))
    except (TypeError, ValueError) as exc:
        raise _bad(f"not JSON: {exc}") from None
    if size > MAX_COMMAND_BYTES:
        raise _bad(f"command is larger than {MAX_COMMAND_BYTES} bytes")
    if _int(obj, "format", 0, _MAX_INT) != COMMAND_FORMAT:
        raise _bad(f"format must be {COMMAND_FORMAT}")
    if obj["type"] != "update":
        raise _bad("type must be 'update'")
    issued, expires = _int(obj, "issued_at", 0, _MAX_TIME), _int(obj, "expires_at", 0, _MAX_TIME)
    if not issued < expires <= issued + MAX_TTL:
        raise _bad(f"expires_at must be after issued_at and at most {MAX_TTL} s later")
    rollout = None if obj["rollout"] is None else _int(obj, "rollout", 0, _MAX_INT)
    wave = None if obj["wave"] is None else _int(obj, "wave", 0, _MAX_WAVE)
    if (rollout is None) != (wave is None):
        raise _bad("rollout and wave are both null or both integers")
    ups = obj["upgrades"]
    if not isinstance(ups, list) or not 1 <= len(ups) <= MAX_UPGRADES:
        raise _bad(f"upgrades must be a list of 1..{MAX_UPGRADES} entries")
    upgrades = tuple(_upgrade(u, i) for i, u in enumerate(ups))
    if len({u.header_hash for u in upgrades}) != len(upgrades) or len({u.product for u in upgrades}) != len(upgrades):
        raise _bad("upgrades name a release or a product twice")
    return Command(format=COMMAND_FORMAT, type="update", command_id=_str(obj, "command_id", _ID_RE),
                   issuer=_address(obj, "issuer"), device_id=_str(obj, "device_id", _DEVICE_RE),
                   device_address=_address(obj, "device_address"), chain_id=_int(obj, "chain_id", 1, _MAX_INT),
                   registry=_address(obj, "registry"), issued_at=issued, expires_at=expires,
                   block=_int(obj, "block", 0, _MAX_INT), rollout=rollout, wave=wave, upgrades=upgrades)


# ----------------------------------------------------------------------------- issuing


def new_command(*, issuer: str, device_id: str, device_address: str, chain_id: int, registry: str, issued_at: int,
                ttl: int, block: int, upgrades: Sequence[Mapping[str, Any]], rollout: int | None = None,
                wave: int | None = None, command_id: str | None = None) -> dict[str, Any]:
    """A format-1 update command dict with a fresh 32-hex ``command_id`` (unless given).

    ``upgrades`` are dicts with the keys ``product, vendor, from_version, to_version,
    header_hash, link`` (others are dropped), dependencies first. Addresses are checksummed.

    Raises:
        CommandError: ``command_malformed`` (the result would not verify).
    """
    keys = sorted(_UPGRADE_KEYS)
    try:
        cmd: dict[str, Any] = {
            "format": COMMAND_FORMAT, "type": "update", "command_id": command_id or secrets.token_hex(16),
            "issuer": to_checksum_address(issuer), "device_id": device_id,
            "device_address": to_checksum_address(device_address), "chain_id": int(chain_id),
            "registry": to_checksum_address(registry), "issued_at": int(issued_at),
            "expires_at": int(issued_at) + int(ttl), "block": int(block), "rollout": rollout, "wave": wave,
            "upgrades": [{k: (u[k].lower() if k == "header_hash" else u[k]) for k in keys} for u in upgrades]}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(f"cannot build a command: {type(exc).__name__}: {exc}") from None
    parse_command(cmd)
    return cmd


def sign_command(account: KeyHolder, command: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope ``{"command", "signature"}`` for ``command``, signed by ``account``.

    Raises:
        CommandError: ``command_malformed`` (bad shape), ``command_unknown_issuer`` (``issuer``
            is not ``account``'s address).
    """
    cmd = parse_command(dict(command))
    if cmd.issuer != account.address:
        raise CommandError("command_unknown_issuer", f"the command's issuer {cmd.issuer} is not {account.address}")
    body = cmd.to_json()
    sig = sign_personal(account, command_message(body))
    return {"command": body, "signature": "0x" + sig.hex()}


# ----------------------------------------------------------------------------- verifying (device side)


def recover_signer(message: bytes, signature: str) -> str | None:
    """The address whose EIP-191 (``personal_sign``) signature of ``message`` is ``signature``
    (``0x`` and 65 bytes in hex), or None: unusable, or a malleated twin (high s, v not 27/28),
    so that a message has one valid signature per key. Shared by every signed format here."""
    if not isinstance(signature, str) or not _SIG_RE.match(signature):
        return None
    raw = bytes.fromhex(signature[2:])
    s, v = int.from_bytes(raw[32:64], "big"), raw[64]
    if v not in (27, 28) or not 0 < s <= _SECP256K1_N // 2:  # one signature per message: no malleated twin
        return None
    try:
        return recover_personal(message, raw)
    except SignatureError:
        return None


def _recover(command: Mapping[str, Any], signature: str) -> str | None:
    return recover_signer(command_message(command), signature)


def verify_command(envelope: Any, *, issuers: Iterable[str], device_id: str, device_address: str, chain_id: int,
                   registry: str, now: float, max_skew: float = 120.0,
                   seen: Callable[[str], bool] = lambda command_id: False) -> Command:
    """The device's checks of an update command envelope, in the module docstring's order.

    Args:
        envelope: the decoded JSON ``{"command", "signature"}``.
        issuers: the server modules' addresses the device trusts (``anchors.trackers``).
        device_id, device_address: this device's id and identity key address.
        chain_id, registry: this device's chain and registry.
        now: the device's clock (unix seconds); ``max_skew`` the clock difference tolerated.
        seen: whether a command id was already accepted (:meth:`CommandLog.seen`).

    Raises:
        CommandError: ``command_malformed``, ``command_bad_signature``, ``command_unknown_issuer``,
            ``command_wrong_device``, ``command_wrong_chain``, ``command_not_yet_valid``,
            ``command_expired``, ``command_replayed``.
    """
    if not isinstance(envelope, dict) or set(envelope) != {"command", "signature"}:
        raise _bad("an envelope has exactly the keys command and signature")
    sig = envelope["signature"]
    if not isinstance(sig, str) or not _SIG_RE.match(sig):
        raise _bad("signature must be 0x and 65 bytes in hex")
    cmd = parse_command(envelope["command"])
    signer = _recover(envelope["command"], sig)
    if signer is None or signer != cmd.issuer:
        raise CommandError("command_bad_signature", "the command's signature is not by its issuer")
    trusted = {a.lower() for a in issuers}
    if cmd.issuer.lower() not in trusted:
        raise CommandError("command_unknown_issuer", f"{cmd.issuer} is not one of this device's trackers")
    if cmd.device_id != device_id or cmd.device_address.lower() != str(device_address).lower():
        raise CommandError("command_wrong_device", f"the command is for device {cmd.device_id} "
                                                   f"({cmd.device_address}), not this one")
    if cmd.chain_id != int(chain_id) or cmd.registry.lower() != str(registry).lower():
        raise CommandError("command_wrong_chain", f"the command is for chain {cmd.chain_id} registry {cmd.registry}")
    if cmd.issued_at > now + max_skew:
        raise CommandError("command_not_yet_valid", f"the command is issued at {cmd.issued_at}, in the future")
    if cmd.expires_at < now - max_skew:
        raise CommandError("command_expired", f"the command expired at {cmd.expires_at}")
    if seen(cmd.command_id):
        raise CommandError("command_replayed", f"command {cmd.command_id} was already accepted")
    return cmd


# ----------------------------------------------------------------------------- the device's log of ids


class CommandLog:
    """Command ids a device accepted, each kept until its ``expires_at`` plus ``grace`` seconds
    (longer than any clock skew a verifier tolerates), in one JSON file written atomically
    (``DIR/agent/commands.json``). Survives restarts; safe to share between threads.

    Raises (constructor):
        ConfigError: the file exists but is unreadable or not a command log (refusing to start
            beats forgetting ids and accepting replays).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, grace: float = 3600.0) -> None:
        self.path = Path(path)
        self.clock = clock
        self.grace = grace
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        if self.path.exists():
            data = read_json(self.path)
            ids = data.get("accepted") if isinstance(data, dict) and data.get("format") == 1 else None
            if not isinstance(ids, dict) or not all(
                    isinstance(k, str) and _ID_RE.match(k) and isinstance(v, int) and not isinstance(v, bool)
                    for k, v in ids.items()):
                raise ConfigError(f"{self.path} is not a command log")
            self._ids = dict(ids)

    def seen(self, command_id: str) -> bool:
        """Whether ``command_id`` was accepted and is still remembered."""
        with self._lock:
            return command_id in self._ids

    def accept(self, cmd: Command) -> None:
        """Remember ``cmd``'s id until it expires (plus grace); prune expired ids; write the file.

        Raises:
            ConfigError: the file cannot be written.
        """
        with self._lock:
            ids = dict(self._ids)
            ids[cmd.command_id] = int(cmd.expires_at)
            horizon = self.clock() - self.grace
            ids = {k: v for k, v in ids.items() if v >= horizon}
            atomic_write_json(self.path, {"format": 1, "accepted": ids}, mode=0o600)
            self._ids = ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)
