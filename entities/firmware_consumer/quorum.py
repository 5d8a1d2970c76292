"""The block a pass proves releases at, attested by k of the n provisioned trackers (step 3a of
:meth:`.agent.Agent.check_and_update`), and the evidence of a release at it; also where the updater
takes fresh evidence from to prove a release's standing again (:func:`fresh_evidence`, :mod:`.status`).

Only the anchors (``trackers``, ``quorum``) and the tracker clients of the pass are used: the
evidence itself is judged later, by :mod:`.verify`. Attestations count for the key that signed
them and only for a key in ``anchors.trackers``; a relay's (intermediate's) answers are
accepted, its key never counts towards k.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ledger_node.attestation import Attestation, attestation_signer

from .client import NetworkError, TrackerClient, TrackerRefused, TrackerUnreachable
from .errors import UpdateRefused
from .status import FreshEvidence
from .verify import Evidence, TrustAnchors

__all__ = ["Block", "attested_block", "evidence_at", "fresh_evidence"]

_MAX_ATTESTATIONS = 64
_MAX_CANDIDATE_BLOCKS = 4
#: codes of a tracker that answered "not now" (a module not synced, busy): it could not be asked
_NOT_NOW = frozenset({"unavailable", "not_synced", "block_not_synced"})


@dataclass
class Block:
    """The block of this pass: its number, the tracker serving evidence, every attestation of it."""

    number: int
    source: TrackerClient
    attestations: tuple[Attestation, ...]


def attested_block(anchors: TrustAnchors, live: Sequence[TrackerClient], *, at_least: int | None = None) -> Block:
    """The block a pass proves releases at (3a): the newest one that k distinct provisioned
    server modules attest (not older than ``at_least``), with every attestation of it found.

    Each reachable module is asked for its newest attestation; an attestation counts for the
    key that signed it (an intermediate hands on its upstream's), and only for a key in
    ``anchors.trackers``. When fewer than k keys attest a candidate block that way (a device
    behind one intermediate, or given fewer URLs than k), ``GET /v1/attestations/{block}``
    gathers the attestations the modules know of it.

    Raises:
        UpdateRefused: ``quorum_not_met`` (no block is attested by k distinct trackers, every
            module asked answered).
        TrackerUnreachable: no block was found and a module could not be asked (no answer,
            or "not now"): the update could not be tried now, it did not fail (its code is
            that module's: ``tracker_unreachable``, ``block_not_synced``...).
    """
    k = anchors.quorum
    attesters = set(anchors.trackers)
    heads: dict[str, tuple[TrackerClient, Attestation]] = {}
    missed: list[NetworkError] = []
    for t in live:
        try:
            _, att = t.attestation()
        except NetworkError as exc:
            missed.append(exc)
            continue
        who = attestation_signer(att)
        if who in attesters and who not in heads:
            heads[who] = (t, att)
    numbers = sorted({a.block_number for _, a in heads.values()
                      if at_least is None or a.block_number >= at_least}, reverse=True)
    if len(heads) >= k:  # the newest block k of them have indexed first
        kth = sorted((a.block_number for _, a in heads.values()), reverse=True)[k - 1]
        numbers = [kth, *[n for n in numbers if n != kth]] if at_least is None or kth >= at_least else numbers
    candidates = numbers[:_MAX_CANDIDATE_BLOCKS]
    if at_least is not None and at_least not in candidates:
        # an intermediate's head may lag the block the server module issued the command at (it asks
        # its upstream's head at most once per poll interval, per level): ask for that block itself
        candidates.append(at_least)
    for number in candidates:
        found = _attestations_of(anchors, number, live, heads, missed)
        if found is not None:
            return found
    newest = max((a.block_number for _, a in heads.values()), default=None)
    floor = f" at or after block {at_least} (the command's)" if at_least is not None else ""
    why = (f"{len(heads)} distinct provisioned tracker(s) answered"
           + (f" (newest block {newest})" if newest is not None else "")
           + f"; the device needs attestations of one block{floor} from {k}")
    down = [e for e in missed if isinstance(e, TrackerUnreachable)
            or (isinstance(e, TrackerRefused) and (e.status is None or e.status >= 500 or e.code in _NOT_NOW))]
    if down:  # a module that did not answer now: try later, this is no failure of the update
        raise TrackerUnreachable(f"{down[0]}; {why}", url=down[0].url, code=down[0].code, status=down[0].status)
    raise UpdateRefused("quorum_not_met", why)


def _attestations_of(anchors: TrustAnchors, number: int, live: Sequence[TrackerClient],
                     heads: Mapping[str, tuple[TrackerClient, Attestation]],
                     missed: list[NetworkError]) -> Block | None:
    """Block ``number`` with at least k distinct provisioned attesters, or None (the modules
    that could not be asked are added to ``missed``)."""
    k = anchors.quorum
    attesters = set(anchors.trackers)
    atts: dict[str, Attestation] = {}
    source: TrackerClient | None = None
    for who, (t, att) in heads.items():
        if att.block_number < number:
            continue
        if att.block_number != number:
            try:
                _, att = t.attestation(number)
            except NetworkError as exc:
                missed.append(exc)
                continue
        if attestation_signer(att) == who:
            atts[who] = att
            source = source or t
    if len(atts) < k:
        for t in live:
            try:
                _, more = t.attestations(number)
            except NetworkError as exc:
                missed.append(exc)
                continue
            for att in more:
                signer = attestation_signer(att)
                if signer is not None and signer in attesters and signer not in atts:
                    atts[signer] = att
                    source = source or t
            if len(atts) >= k:
                break
    if source is None or len(atts) < k:
        return None
    return Block(number, source, tuple(atts.values())[:_MAX_ATTESTATIONS])


def evidence_at(block: Block, header_hash: bytes, hardware: str) -> Evidence:
    """The evidence of release ``header_hash`` for ``hardware`` at ``block``, from its source,
    with every tracker's attestation of the block.

    Raises:
        NetworkError, UpdateRefused (``bad_evidence``).
    """
    ev = block.source.evidence(header_hash, hardware, block.number)
    mine = {a.signature for a in ev.attestations}
    more = tuple(a for a in block.attestations if a.signature not in mine)
    return dataclasses.replace(ev, attestations=(ev.attestations + more)[:_MAX_ATTESTATIONS])


def fresh_evidence(anchors: TrustAnchors, live: Sequence[TrackerClient], block: Block | None = None) -> FreshEvidence:
    """Where the updater takes fresh evidence of a release from, to prove its standing again
    before a trial boot and a confirm (:mod:`.status`). The cheapest way first: one request,
    the evidence at a tracker's newest block (``block``'s source first, then the trackers
    that answered), which carries the attestation of a server module; when k such
    attestations are needed and that one does not carry them, the newest block k of them
    attest now (:func:`attested_block`). A fetch raises :class:`.client.NetworkError` (or
    ``UpdateRefused``) when nothing could be had."""
    def fetch(header_hash: bytes, hardware: str) -> Evidence:
        sources = list(dict.fromkeys([*([block.source] if block is not None else []), *live]))
        for t in sources[:1]:
            with contextlib.suppress(NetworkError):
                ev = t.evidence(header_hash, hardware)
                signers = {attestation_signer(a) for a in ev.attestations} & set(anchors.trackers)
                if len(signers) >= anchors.quorum:
                    return ev
        newest = attested_block(anchors, sources)
        return evidence_at(newest, header_hash, hardware)
    return fetch
