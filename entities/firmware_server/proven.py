"""The firmware server as a light node (X.1368 Figure II.2): its node's answers judged against proofs. Pure.

The server's full node (:class:`.ledger.LedgerView`) says which vendor a key is, which release a
record is and whether it is revoked, which policy binds a class: that is where to look. What the
server decides on is what storage proofs show at a trusted block header
(:class:`.prover.LedgerProver`): the node's answer is taken only when the proven fact agrees.

Every function here takes the proven facts (:class:`~ledger_node.lightnode.VerifiedRelease`,
:class:`~ledger_node.lightnode.ProvenAuthorView`), the node's answer and two block numbers, and
returns or raises :class:`.policy.Refusal` with one of two codes:

- ``ledger_mismatch``: the trusted header is the block the node's index stands at, and the proof
  contradicts the node: the node (or something in front of it) lies;
- ``ledger_unproven``: the proof does not show the node's answer, but the header and the index
  stand at different blocks (the trackers attest blocks behind the head, the index lags the chain):
  not provable now, perhaps later. The I/O side raises it too when no header can be trusted or the
  proof does not verify.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger_node.fullnode import IndexedRelease
from ledger_node.lightnode import ProvenAuthorView, VerifiedRelease

from .policy import Refusal

__all__ = [
    "HTTP_STATUS",
    "judge_classes",
    "judge_release",
    "judge_revocation",
    "judge_served",
    "judge_vendor",
    "judge_vendor_revoked",
    "not_proven",
]

#: the codes this module refuses with, and their HTTP status
HTTP_STATUS = {"ledger_unproven": 503, "ledger_mismatch": 502}


def not_proven(fact: str, *, proven_at: int, node_at: int | None) -> Refusal:
    """The refusal for a node's answer ``fact`` that the proof at block ``proven_at`` does not show,
    the node's index standing at ``node_at``: a mismatch when both are the same block."""
    if node_at is not None and proven_at == node_at:
        return Refusal("ledger_mismatch", f"the ledger node's answer is false: {fact} (proven at block {proven_at}, "
                                          "the block the node's index is at); nothing is stored or served on it")
    where = "not indexed yet" if node_at is None else f"the node's index is at block {node_at}"
    return Refusal("ledger_unproven", f"not proven: {fact} (proofs at trusted block {proven_at}, {where}); "
                                      "nothing is stored or served on it")


def judge_vendor(view: ProvenAuthorView, address: str, vendor_name: str, *, node_at: int | None) -> None:
    """C11.3.a: the node said ``address`` is the active key of ``vendor_name``; so must the proof.

    Raises:
        Refusal: ``ledger_mismatch``, ``ledger_unproven``.
    """
    if view.vendor_address is None or view.vendor_address.lower() != address.lower() or not view.vendor_active:
        raise not_proven(f"{address} is the active key of vendor {vendor_name!r} (the ledger's is "
                         f"{view.vendor_address or 'none'}{'' if view.vendor_active else ', not active'})",
                         proven_at=view.block.number, node_at=node_at)


def judge_vendor_revoked(view: ProvenAuthorView, address: str, vendor_name: str, *, node_at: int | None) -> None:
    """C11.3.c: before barring a vendor the node says the ledger revoked, the proof shows ``address``
    is still the name's key and no longer active (a rotated key is not a revoked vendor).

    Raises:
        Refusal: ``ledger_mismatch``, ``ledger_unproven``.
    """
    if view.vendor_address is None or view.vendor_address.lower() != address.lower() or view.vendor_active:
        raise not_proven(f"vendor {vendor_name!r} ({address}) is revoked", proven_at=view.block.number,
                         node_at=node_at)


def judge_classes(view: ProvenAuthorView, hardware: Sequence[str], *, node_at: int | None) -> None:
    """R10.a.iii: the hardware classes the node said are registered are.

    Raises:
        Refusal: ``ledger_mismatch``, ``ledger_unproven``.
    """
    for hw in hardware:
        got = view.classes.get(hw)
        if got is None or not got.registered:
            raise not_proven(f"hardware class {hw} is registered", proven_at=view.block.number, node_at=node_at)


def judge_release(proven: VerifiedRelease, rel: IndexedRelease, *, node_at: int | None) -> None:
    """C11.3.c: the release the node said is published (and not revoked) is, at the trusted header.

    Raises:
        Refusal: ``ledger_mismatch``, ``ledger_unproven``.
    """
    e, hh = proven.entry, "0x" + rel.header_hash.hex()
    if not e.exists:
        raise not_proven(f"release {hh} is on the ledger", proven_at=proven.block.number, node_at=node_at)
    if e.revoked:
        raise not_proven(f"release {hh} is not revoked (it is, proven)", proven_at=proven.block.number,
                         node_at=node_at)


def judge_revocation(proven: VerifiedRelease, rel: IndexedRelease, *, node_at: int | None) -> None:
    """C11.3.c: before withdrawing an image the node says is revoked, the proof shows it is.

    Raises:
        Refusal: ``ledger_mismatch``, ``ledger_unproven``.
    """
    if not (proven.entry.exists and proven.entry.revoked):
        raise not_proven(f"release 0x{rel.header_hash.hex()} is revoked", proven_at=proven.block.number,
                         node_at=node_at)


def judge_served(proven: VerifiedRelease, rel: IndexedRelease, hw: str, *, node_at: int | None) -> None:
    """P4: what serving ``rel`` to a device of class ``hw`` rests on, proven: the release is on the
    ledger and not revoked, its vendor name has an active key, and the ledger's policy for ``hw``
    and its line (proven, set or not) permits its version.

    Raises:
        Refusal: ``ledger_mismatch``, ``ledger_unproven``.
    """
    judge_release(proven, rel, node_at=node_at)
    at = proven.block.number
    if not proven.vendor_active:
        raise not_proven(f"vendor {rel.record.data.vendor_name!r} is active", proven_at=at, node_at=node_at)
    policy = proven.policy
    if policy is not None and not policy.permits(rel.record.data.version):
        says = "forbids the line" if not policy.allowed else f"allows {policy.min_version}..{policy.max_version}"
        raise not_proven(f"the policy of {hw} permits {rel.record.data.version} (the ledger's {says})",
                         proven_at=at, node_at=node_at)
