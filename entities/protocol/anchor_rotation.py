"""Rotating a device's trust anchors: the signed anchors statement both sides read (pure).

A device is provisioned with trust anchors (``entities.firmware_consumer.verify.TrustAnchors``:
chain id, registry, tracker keys and quorum k, relays, maximum header age). They change when a
tracker key is compromised or retired, or a tracker joins. Like a TUF root rotation (python-tuf
``trusted_metadata_set.update_root``), a new set is accepted only when the keys the device trusts
now vouch for it *and* the new keys prove they are held: no tracker set can hand itself a device,
and no new key is trusted on the operator's word alone.

The statement (JSON, at most :data:`MAX_STATEMENT_BYTES`)::

    {"kind": "fwledger-anchors", "serial": N, "anchors": {...TrustAnchors JSON...},
     "signatures": [{"signer": "0x<checksummed address>", "signature": "0x<65 bytes>"}, ...]}

Each signature is EIP-191 ``personal_sign`` (the helper the update commands use,
:func:`entities.protocol.commands.recover_signer`: low s, v 27/28) over :func:`statement_message`::

    b"fwledger-anchors-v1\\n" + kind + "\\n" + serial + "\\n" + chain_id + "\\n" + sha256(canonical(anchors)).hex()

``canonical`` is :func:`entities.protocol.commands.canonical` (sorted keys, no spaces, ASCII). The serial and
the chain id are both inside the signed text and inside ``anchors`` (the chain id), so neither can
be changed without every signature failing.

A device at serial ``S`` holding anchors ``A`` accepts a statement only when (:func:`check_rotation`,
the codes in this order):

==============================  =================================================================
``anchors_malformed``           not exactly this shape: unknown or missing fields, wrong types,
                                a serial outside 1..2^63-1, anchors that are not TrustAnchors JSON,
                                a signer twice, more than :data:`MAX_SIGNATURES` signatures
``anchors_chain``               its chain id is not the device's
``anchors_not_newer``           its serial is not above ``S`` (a replayed or older statement)
``anchors_quorum``              fewer than ``A.quorum`` distinct keys of ``A.trackers``, or fewer
                                than its own quorum of distinct keys of its own trackers, signed it
                                (a signature that does not verify counts for nobody)
==============================  =================================================================

Provisioned anchors are serial 0 unless provisioning says otherwise. The tracker side keeps the
statements it was given and serves them (``GET /v1/anchors?after=S``), but is not trusted for any
of this: the device checks the signatures itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from entities.protocol.commands import canonical, recover_signer
from ledger_node.codec.ecdsa import KeyHolder, sign_personal
from ledger_node.codec.hashing import is_checksum_address
from ledger_node.errors import VerificationError

__all__ = [
    "ANCHORS_DOMAIN",
    "ANCHORS_KIND",
    "MAX_SERIAL",
    "MAX_SIGNATURES",
    "MAX_STATEMENT_BYTES",
    "REFUSAL_CODES",
    "AnchorsError",
    "AnchorsStatement",
    "check_rotation",
    "new_statement",
    "parse_statement",
    "sign_statement",
    "statement_message",
]

ANCHORS_KIND = "fwledger-anchors"
ANCHORS_DOMAIN = b"fwledger-anchors-v1\n"
MAX_SERIAL = (1 << 63) - 1
MAX_SIGNATURES = 64
MAX_STATEMENT_BYTES = 64 * 1024
#: the refusal codes of :func:`check_rotation`, in the order the checks run
REFUSAL_CODES = ("anchors_malformed", "anchors_chain", "anchors_not_newer", "anchors_quorum")

_STATEMENT_KEYS = frozenset({"kind", "serial", "anchors", "signatures"})
_SIGNATURE_KEYS = frozenset({"signer", "signature"})
#: the keys of TrustAnchors.to_json() (format 1); a statement's anchors have exactly these
_ANCHORS_KEYS = frozenset({"format", "chain_id", "registry", "registry_block", "code_hash", "slots", "trackers",
                           "quorum", "max_header_age", "max_clock_skew", "relays"})
_MAX_KEYS = 64
_ADDR_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HASH_RE = re.compile(r"^0x[0-9a-f]{64}$")
_SLOT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class AnchorsError(VerificationError):
    """A statement the device (or tracker) does not accept; ``code`` is one of :data:`REFUSAL_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _bad(message: str) -> AnchorsError:
    return AnchorsError("anchors_malformed", message)


@dataclass(frozen=True)
class AnchorsStatement:
    """A well-formed statement (its signatures not yet judged)."""

    serial: int
    anchors: Mapping[str, Any]
    signatures: tuple[tuple[str, str], ...]

    @property
    def chain_id(self) -> int:
        return int(self.anchors["chain_id"])

    @property
    def trackers(self) -> tuple[str, ...]:
        return tuple(self.anchors["trackers"])

    @property
    def quorum(self) -> int:
        return int(self.anchors["quorum"])

    def message(self) -> bytes:
        return statement_message(self.serial, self.anchors)

    def signers(self) -> set[str]:
        """The claimed signers whose signature verifies over this statement."""
        msg = self.message()
        return {who for who, sig in self.signatures if recover_signer(msg, sig) == who}

    def to_json(self) -> dict[str, Any]:
        return {"kind": ANCHORS_KIND, "serial": self.serial, "anchors": dict(self.anchors),
                "signatures": [{"signer": who, "signature": sig} for who, sig in self.signatures]}


def statement_message(serial: int, anchors: Mapping[str, Any]) -> bytes:
    """The bytes each tracker key signs (EIP-191) for a statement (the module docstring)."""
    digest = hashlib.sha256(canonical(dict(anchors))).hexdigest()
    return ANCHORS_DOMAIN + f"{ANCHORS_KIND}\n{int(serial)}\n{int(anchors['chain_id'])}\n{digest}".encode()


# ----------------------------------------------------------------------------- shape


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e12


def _addresses(v: Any, what: str, lo: int) -> list[str]:
    if not isinstance(v, list) or not lo <= len(v) <= _MAX_KEYS:
        raise _bad(f"anchors.{what} must be a list of {lo}..{_MAX_KEYS} addresses")
    if not all(isinstance(a, str) and _ADDR_RE.match(a) and is_checksum_address(a) for a in v):
        raise _bad(f"anchors.{what} must hold checksummed addresses")
    if len(set(v)) != len(v):
        raise _bad(f"anchors.{what} names an address twice")
    return list(v)


def _check_anchors(obj: Any) -> dict[str, Any]:
    """The anchors object of a statement: exactly TrustAnchors JSON (format 1), every type checked
    (the device then also builds its TrustAnchors from it)."""
    if not isinstance(obj, dict) or set(obj) != _ANCHORS_KEYS:
        missing = sorted(_ANCHORS_KEYS - set(obj)) if isinstance(obj, dict) else []
        extra = sorted(str(k) for k in set(obj) - _ANCHORS_KEYS) if isinstance(obj, dict) else []
        raise _bad(f"anchors must have exactly the keys of trust anchors (missing {missing}, unknown {extra[:5]})")
    if obj["format"] != 1 or isinstance(obj["format"], bool):
        raise _bad("anchors.format must be 1")
    for key, lo in (("chain_id", 1), ("registry_block", 0)):
        if not _is_int(obj[key], lo, MAX_SERIAL):
            raise _bad(f"anchors.{key} must be an integer >= {lo}")
    reg = obj["registry"]
    if not isinstance(reg, str) or not _ADDR_RE.match(reg) or not is_checksum_address(reg):
        raise _bad("anchors.registry must be a checksummed address")
    if not isinstance(obj["code_hash"], str) or not _HASH_RE.match(obj["code_hash"]):
        raise _bad("anchors.code_hash must be 0x and 32 bytes in lower-case hex")
    slots = obj["slots"]
    if not isinstance(slots, dict) or not 1 <= len(slots) <= _MAX_KEYS or not all(
            isinstance(k, str) and _SLOT_RE.match(k) and _is_int(v, 0, (1 << 256) - 1) for k, v in slots.items()):
        raise _bad("anchors.slots must map storage variable names to slot numbers")
    trackers = _addresses(obj["trackers"], "trackers", 1)
    relays = _addresses(obj["relays"], "relays", 0)
    if set(relays) & set(trackers):
        raise _bad("anchors.relays must not also be trackers")
    if not _is_int(obj["quorum"], 1, len(trackers)):
        raise _bad(f"anchors.quorum must be an integer in 1..{len(trackers)} (the trackers listed)")
    if not _is_number(obj["max_header_age"]) or obj["max_header_age"] <= 0:
        raise _bad("anchors.max_header_age must be a positive number")
    if not _is_number(obj["max_clock_skew"]) or obj["max_clock_skew"] < 0:
        raise _bad("anchors.max_clock_skew must be a number >= 0")
    return dict(obj)


def parse_statement(obj: Any) -> AnchorsStatement:
    """Check ``obj`` (decoded JSON) has exactly the statement's shape and return it.

    Raises:
        AnchorsError: ``anchors_malformed``.
    """
    if not isinstance(obj, dict) or set(obj) != _STATEMENT_KEYS:
        raise _bad(f"an anchors statement has exactly the keys {sorted(_STATEMENT_KEYS)}")
    try:
        size = len(canonical(obj))
    except (TypeError, ValueError) as exc:
        raise _bad(f"not JSON: {exc}") from None
    if size > MAX_STATEMENT_BYTES:
        raise _bad(f"an anchors statement is at most {MAX_STATEMENT_BYTES} bytes")
    if obj["kind"] != ANCHORS_KIND:
        raise _bad(f"kind must be {ANCHORS_KIND!r}")
    if not _is_int(obj["serial"], 1, MAX_SERIAL):
        raise _bad(f"serial must be an integer in 1..{MAX_SERIAL}")
    anchors = _check_anchors(obj["anchors"])
    sigs = obj["signatures"]
    if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
        raise _bad(f"signatures must be a list of at most {MAX_SIGNATURES}")
    out: list[tuple[str, str]] = []
    for i, s in enumerate(sigs):
        if not isinstance(s, dict) or set(s) != _SIGNATURE_KEYS:
            raise _bad(f"signatures[{i}] must have exactly the keys signer and signature")
        who, sig = s["signer"], s["signature"]
        if not isinstance(who, str) or not _ADDR_RE.match(who) or not is_checksum_address(who):
            raise _bad(f"signatures[{i}].signer must be a checksummed address")
        if not isinstance(sig, str) or not re.fullmatch(r"0x[0-9a-fA-F]{130}", sig):
            raise _bad(f"signatures[{i}].signature must be 0x and 65 bytes in hex")
        out.append((who, sig))
    if len({who for who, _ in out}) != len(out):
        raise _bad("a signer appears twice in signatures")
    return AnchorsStatement(obj["serial"], anchors, tuple(out))


# ----------------------------------------------------------------------------- the operator's side


def new_statement(anchors: Mapping[str, Any], serial: int) -> dict[str, Any]:
    """An unsigned statement of ``anchors`` (TrustAnchors JSON) at ``serial``.

    Raises:
        AnchorsError: ``anchors_malformed`` (not trust anchors, or a serial outside 1..2^63-1).
    """
    stmt = {"kind": ANCHORS_KIND, "serial": serial, "anchors": dict(anchors), "signatures": []}
    return parse_statement(stmt).to_json()


def sign_statement(account: KeyHolder, statement: Any) -> dict[str, Any]:
    """The statement with ``account``'s signature added (replacing an earlier one of the same key).

    Raises:
        AnchorsError: ``anchors_malformed``.
    """
    stmt = parse_statement(statement)
    sig = "0x" + sign_personal(account, stmt.message()).hex()
    others = tuple((who, s) for who, s in stmt.signatures if who != account.address)
    if len(others) >= MAX_SIGNATURES:
        raise _bad(f"the statement already carries {MAX_SIGNATURES} signatures")
    return AnchorsStatement(stmt.serial, stmt.anchors, (*others, (account.address, sig))).to_json()


# ----------------------------------------------------------------------------- the device's decision


def _count(signers: Iterable[str], keys: Sequence[str]) -> int:
    return len(set(signers) & set(keys))


def check_rotation(statement: Any, *, serial: int, chain_id: int, trackers: Sequence[str],
                   quorum: int) -> AnchorsStatement:
    """Whether a device at ``serial`` trusting ``trackers`` with ``quorum`` (its anchors now) on
    ``chain_id`` accepts ``statement`` (decoded JSON); the checks of the module docstring.

    Raises:
        AnchorsError: ``anchors_malformed``, ``anchors_chain``, ``anchors_not_newer``, ``anchors_quorum``.
    """
    stmt = parse_statement(statement)
    if stmt.chain_id != int(chain_id):
        raise AnchorsError("anchors_chain", f"the statement is for chain {stmt.chain_id}, the device's is {chain_id}")
    if stmt.serial <= serial:
        raise AnchorsError("anchors_not_newer", f"statement serial {stmt.serial} is not above the device's "
                                                f"{serial}: an old or replayed statement")
    signed = stmt.signers()
    unverified = len(stmt.signatures) - len(signed)
    note = f" ({unverified} signature(s) do not verify)" if unverified else ""
    old = _count(signed, trackers)
    if old < quorum:
        raise AnchorsError("anchors_quorum", f"{old} of the device's current trackers signed; it needs {quorum}{note}")
    new = _count(signed, stmt.trackers)
    if new < stmt.quorum:
        raise AnchorsError("anchors_quorum", f"{new} of the new trackers signed; the new anchors need "
                                             f"{stmt.quorum}{note}")
    return stmt
