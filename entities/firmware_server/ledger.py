"""The server's view of the ledger: its node's index, and the proofs that check it (X.1368 Figure II.2).

The full node follows the registry into ``<data>/ledger.sqlite``; the server reads vendor
status, hardware classes, policies and release records (with their revoked / flagged status)
from that index. That index is only the node's word: the firmware server is a light node, and
what it stores, serves, withdraws and bars on is proven first (:attr:`LedgerView.prover`, a
:class:`.prover.LedgerProver` at headers from the configured source; the server's own embedded
or loopback node when none is given; judged by :mod:`.proven`).

The embedded chain (eth-tester) lives in the caller's process and is not thread-safe: when the
view is given an :class:`~ledger_node.providers.EmbeddedProvider`, every JSON-RPC request to it
is serialised behind one lock (installed on the provider, so the caller's own transactions on
the same ``Web3`` take it too).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from entities.header_sources import HeaderSource, OwnNode
from ledger_node.fullnode import FullNode, HardwareInfo, Index, IndexedRelease, PolicyInfo, SyncReport, VendorInfo
from ledger_node.providers import serialise_embedded
from ledger_node.registry import Deployment

from .prover import LedgerProver

__all__ = ["LedgerView", "serialise_embedded"]


class LedgerView:
    """The server's full node over one registry, the queries the server makes of it, and the prover
    of their answers (``source``: where trusted headers come from; None: the server's own node).

    Raises:
        ConfigError: the node is on another chain, the registry code differs, the index belongs
            to another registry.
        ChainError: the node failed to answer.
        IndexCorruption: the index is damaged.
    """

    def __init__(self, w3: Web3, deployment: Deployment, index_path: Path, *, confirmations: int = 0,
                 batch_blocks: int = 500, source: HeaderSource | None = None, proof_max_age: float = 5.0) -> None:
        serialise_embedded(w3)
        self.w3 = w3
        self.deployment = deployment
        self.index = Index(index_path)
        try:
            self.node = FullNode(w3, deployment, self.index, confirmations=confirmations, batch_blocks=batch_blocks)
        except BaseException:
            self.index.close()
            raise
        self.chain_id = int(deployment.chain_id)
        self.registry = to_checksum_address(deployment.address)
        try:
            self.prover = LedgerProver(w3, deployment, source or OwnNode("the server's own node"),
                                       max_age=proof_max_age)
        except BaseException:
            self.index.close()
            raise
        self._vendors: tuple[Any, dict[str, VendorInfo]] = (None, {})
        self._lock = threading.Lock()

    def close(self) -> None:
        self.index.close()

    def sync(self) -> SyncReport:
        """Ingest new registry events; when the chain reorganised or was reset below the cursor,
        the index is first rolled back to the newest block it shares with the chain (the report
        says so: ``rolled_back``) and records of the lost blocks are gone from it.

        Raises:
            ChainError: reorganisation below every block the index remembers, or an unusable
                answer.
            ChainUnreachable: the node cannot be reached.
            ConfigError, IndexCorruption: as :meth:`FullNode.sync_once`.
        """
        return self.node.sync_once()

    def block(self) -> int | None:
        """The last ingested block (None before the first sync)."""
        cur = self.index.cursor()
        return None if cur is None else cur.block

    # ------------------------------------------------------------------ queries

    def _vendor_map(self) -> dict[str, VendorInfo]:
        cursor = self.index.cursor()
        with self._lock:
            key, cached = self._vendors
            if key == cursor and cached:
                return cached
        fresh = {v.address: v for v in self.index.vendors()}
        with self._lock:
            self._vendors = (cursor, fresh)
        return fresh

    def vendor(self, address: str) -> VendorInfo | None:
        """The vendor entry of a signing address (active or not), or None."""
        try:
            key = to_checksum_address(address)
        except ValueError:
            return None
        return self._vendor_map().get(key)

    def vendors(self) -> list[VendorInfo]:
        return list(self._vendor_map().values())

    def hardware(self) -> dict[str, HardwareInfo]:
        return {h.hw_id: h for h in self.index.hardware()}

    def policy(self, hw_id: str, vendor_name: str, product: str) -> PolicyInfo | None:
        for p in self.index.policies():
            if p.hw_id == hw_id and p.vendor_name == vendor_name and p.product == product:
                return p
        return None

    def release(self, header_hash: bytes) -> IndexedRelease | None:
        return self.index.release(header_hash)

    def revoked_by(self, header_hash: bytes) -> str | None:
        """The sender of the ``Revoked`` event of a release (its vendor's key, or the administrator
        whose approval was the k-th), from the full node's audit log; None if not revoked.

        Raises:
            IndexCorruption: the index is damaged.
        """
        target = "0x" + bytes(header_hash).hex()
        for _block, _log, _tx, _name, args in reversed(self.index.events("Revoked")):
            if str(args.get("header_hash", "")).lower() == target:
                by = args.get("by")
                return str(by) if by else None
        return None

    def releases_of(self, vendor_name: str, product: str) -> list[IndexedRelease]:
        """Unflagged releases of one product line, in line order."""
        return self.index.releases(product=product, vendor=vendor_name)
