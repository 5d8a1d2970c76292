"""What an author reads from the ledger, and checks there, before it builds or publishes a bundle.

Reads only: the registry's chain id and address (the EIP-712 domain), the hardware classes' X25519
keys (R10.f.i: the author encrypts to them), the head of the product line (``prev_hash``) and the
vendor's name. The same checks run again just before publishing, so a bundle the registry would
refuse is never uploaded (nothing half-done a device could be offered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger_node.errors import FwledgerError
from ledger_node.record import ZERO_HASH, ReleaseRecord, Version, line_id
from ledger_node.registry import Registry

__all__ = ["LedgerInputs", "PreflightError", "gather_inputs", "preflight"]


class PreflightError(FwledgerError):
    """The ledger would refuse this release (not a vendor, unknown hardware, line moved on)."""


@dataclass(frozen=True)
class LedgerInputs:
    """Everything :func:`entities.bundle.build_bundle` needs from the ledger."""

    vendor_name: str
    prev_hash: bytes
    head_version: Version | None
    class_keys: dict[str, bytes]
    chain_id: int
    registry: str


def _vendor_name(index: Any, address: str) -> str:
    for v in index.vendors():
        if v.address.lower() == address.lower() and v.active:
            return str(v.name)
    raise PreflightError(f"signing key {address} is not an active vendor on the ledger")


def gather_inputs(registry: Registry, index: Any, address: str, *, vendor_name: str | None, product: str,
                  version: Version, hardware: Sequence[str]) -> LedgerInputs:
    """Read the build inputs from the registry and a synced full-node index.

    Args:
        index: a synced :class:`ledger_node.fullnode.Index` (for the line's head and vendor names).
        address: the signing key's address.
        vendor_name: the vendor name to sign for; by default the one the ledger has for ``address``.

    Raises:
        PreflightError: the key is not that active vendor, a class is not registered, or the version
            is not above the line's head.
        ChainError: the chain cannot be read.
        IndexCorruption: the index is damaged.
    """
    name = vendor_name if vendor_name is not None else _vendor_name(index, address)
    if not registry.is_vendor(address, name):
        raise PreflightError(f"signing key {address} is not the active vendor {name!r} on the ledger")
    keys: dict[str, bytes] = {}
    for hw in hardware:
        hc = registry.hardware(hw)
        if not hc.registered:
            raise PreflightError(f"hardware class {hw} is not registered on the ledger")
        keys[hw] = hc.enc_key
    head = index.head(name, product)
    prev = head.header_hash if head is not None else ZERO_HASH
    head_version = head.version if head is not None else None
    if head_version is not None and version <= head_version:
        raise PreflightError(f"version {version} is not above the head of {name}/{product} ({head_version})")
    return LedgerInputs(name, prev, head_version, keys, registry.deployment.chain_id, registry.address)


def preflight(registry: Registry, record: ReleaseRecord, address: str) -> None:
    """Check on chain, just before uploading, that the registry would accept ``record`` from ``address``.

    Raises:
        PreflightError: not the active vendor, an unregistered hardware class, ``prev_hash`` no
            longer the head of the line, or a version not above the head's.
        ChainError: the chain cannot be read.
    """
    d = record.data
    if not registry.is_vendor(address, d.vendor_name):
        raise PreflightError(f"signing key {address} is not the active vendor {d.vendor_name!r} on the ledger")
    for hw in d.supported_hardware:
        if not registry.hardware(hw).registered:
            raise PreflightError(f"hardware class {hw} is not registered on the ledger")
    line = line_id(d.vendor_name, d.product)
    if record.prev_hash == ZERO_HASH:
        if registry.line_started(d.vendor_name, d.product):
            raise PreflightError(f"{d.vendor_name}/{d.product} already has releases: rebuild the bundle "
                                 "on the current head")
        return
    entry = registry.release_entry(line, record.prev_hash)
    if not entry.exists or not entry.head:
        raise PreflightError(f"the bundle's prev_hash is not the head of {d.vendor_name}/{d.product} any more: "
                             "rebuild the bundle on the current head")
    if entry.version is not None and d.version <= entry.version:
        raise PreflightError(f"version {d.version} is not above the head's version {entry.version}")

