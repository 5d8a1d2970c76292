"""The firmware server's decisions that rest on the ledger, each proven before it is taken (X.1368 Figure II.2).

:class:`LedgerGate` asks the prover (:attr:`.ledger.LedgerView.prover`) for the proofs a decision
needs and :mod:`.proven` for the judgement, and logs what cannot be proven (``ledger_unproven``)
or what the proofs contradict (``ledger_mismatch``). A request's decision is refused with that
code (:meth:`LedgerGate.check`); a decision of the ledger follower is just not taken this round
(:meth:`LedgerGate.holds`), logged once until its outcome changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ledger_node.fullnode import IndexedRelease, VendorInfo
from ledger_node.record import ReleaseData

from .ledger import LedgerView
from .policy import Refusal
from .proven import HTTP_STATUS as PROOF_CODES
from .proven import judge_classes, judge_release, judge_revocation, judge_served, judge_vendor, judge_vendor_revoked

__all__ = ["LedgerGate"]


class LedgerGate:
    """Proven ledger facts for the service's decisions; ``event(name, level, **fields)`` logs."""

    def __init__(self, ledger: LedgerView, event: Callable[..., None]) -> None:
        self.ledger, self.event = ledger, event
        self._notes: dict[tuple[Any, ...], str] = {}

    # ------------------------------------------------------------------ how a decision is taken

    def check(self, decision: str, judge: Callable[[], None], **fields: Any) -> None:
        """Prove and judge what a request's ``decision`` relies on; a refusal is logged and raised.

        Raises:
            Refusal: ``ledger_unproven``, ``ledger_mismatch``.
        """
        try:
            judge()
        except Refusal as refusal:
            if refusal.code in PROOF_CODES:
                self.event(refusal.code, logging.WARNING, decision=decision, error=str(refusal), **fields)
            raise

    def holds(self, decision: str, key: tuple[Any, ...], judge: Callable[[], None], **fields: Any) -> bool:
        """The follower's :meth:`check`: False (logged once per key and code) instead of a refusal."""
        try:
            judge()
        except Refusal as refusal:
            if refusal.code not in PROOF_CODES:
                raise
            if self._notes.get(key) != refusal.code:
                self._notes[key] = refusal.code
                self.event(refusal.code, logging.WARNING, decision=decision, error=str(refusal), **fields)
            return False
        self._notes.pop(key, None)
        return True

    # ------------------------------------------------------------------ the judgements

    def uploader(self, address: str, vendor_name: str, data: ReleaseData | None = None) -> None:
        """C11.3.a: ``address`` is the active key of ``vendor_name`` (and ``data``'s classes are registered)."""
        view = self.ledger.prover.vendor(vendor_name, product=data.product if data else "",
                                         hardware=data.supported_hardware if data else ())
        judge_vendor(view, address, vendor_name, node_at=self.ledger.block())
        if data is not None:
            judge_classes(view, data.supported_hardware, node_at=self.ledger.block())

    def published(self, rel: IndexedRelease) -> None:
        """C11.3.c: ``rel`` is on the ledger and not revoked."""
        judge_release(self.ledger.prover.release(rel, at_least=rel.block), rel, node_at=self.ledger.block())

    def revoked(self, rel: IndexedRelease) -> None:
        """C11.3.c: ``rel`` is revoked."""
        judge_revocation(self.ledger.prover.release(rel, at_least=rel.block), rel, node_at=self.ledger.block())

    def vendor_revoked(self, v: VendorInfo) -> None:
        """C11.3.c: the vendor key ``v`` is revoked (not rotated)."""
        judge_vendor_revoked(self.ledger.prover.vendor(v.name, at_least=v.block), v.address, v.name,
                             node_at=self.ledger.block())

    def served(self, rel: IndexedRelease, hw: str) -> None:
        """P4: ``rel`` may be served for class ``hw`` (on the ledger, not revoked, vendor active, policy)."""
        judge_served(self.ledger.prover.release(rel, hw), rel, hw, node_at=self.ledger.block())

    def refresh(self) -> None:
        """Take a new trusted header (the follower, after each sync); logged once when it cannot."""
        self.holds("header", ("header",), lambda: self._refresh())

    def _refresh(self) -> None:
        self.ledger.prover.refresh()

    def proven_block(self) -> int | None:
        """The block of the trusted header held now."""
        header = self.ledger.prover.current()
        return None if header is None else header.number
