"""Proving a release's standing again before an install commits (R10.a.i, R10.d.ii).

The device proves a release on chain before it downloads it (:func:`.verify.check_release`). A
large payload takes time, and meanwhile the release may be revoked, flagged vulnerable or
superseded, or its vendor revoked. So before each of the two commits of an install, the trial
boot and the confirm, the device proves the release's standing again from fresh evidence of the
same release (its header hash), at a header no older than the anchors' maximum header age (the
freshness rule every proof obeys), and judges it with the same checks (steps 1-8 of
:mod:`.verify`). The verdict (:class:`Standing`):

- proven usable (``code`` None): the commit goes ahead;
- the release's standing changed (a code of :data:`STANDING_CODES`: ``revoked``, ``vulnerable``,
  ``not_newest``, ``policy_denied``, ``vendor_inactive``, ``not_on_chain``): the install is given
  up with that code, a staged image dropped without a trial boot, a trial reverted to the
  confirmed slot; nothing is confirmed;
- no verdict (``status_unproven``): no fresh evidence could be had (a tracker unreachable or
  refusing), or what came does not verify (a stale or future header, k attestations missing, a
  bad proof): nothing is committed; the image stays staged for the next pass (an untrusted party
  can delay an install this way, never make the device drop or commit one).

Pure but for the two callables it is given: the source of fresh evidence and the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ledger_node.errors import FwledgerError

from .errors import UpdateRefused
from .verify import Evidence, ProvenRelease, TrustAnchors, check_release

__all__ = ["STANDING_CODES", "STATUS_UNPROVEN", "FreshEvidence", "Standing", "reprove"]

#: evidence of the release ``header_hash`` for a hardware class, at a header as new as can be had
#: (raises a :class:`~ledger_node.errors.FwledgerError` when none can be had now)
FreshEvidence = Callable[[bytes, str], Evidence]

#: refusals of a fresh proof that say the release itself may not be installed any more
STANDING_CODES = frozenset({"not_on_chain", "revoked", "vulnerable", "not_newest", "policy_denied",
                            "vendor_inactive"})
#: the code of no verdict: nothing committed, tried again at the next pass
STATUS_UNPROVEN = "status_unproven"


@dataclass(frozen=True)
class Standing:
    """One re-proof's verdict: ``code`` None (proven usable, ``proven`` says at which block), a
    code of :data:`STANDING_CODES` (given up), or :data:`STATUS_UNPROVEN` (no verdict now)."""

    code: str | None
    message: str
    proven: ProvenRelease | None = None

    @property
    def ok(self) -> bool:
        return self.code is None

    @property
    def final(self) -> bool:
        """The release's standing changed: the install ends with :attr:`code`."""
        return self.code in STANDING_CODES


def reprove(anchors: TrustAnchors, hardware: str, header_hash: bytes, fetch: FreshEvidence, *,
            clock: Callable[[], float]) -> Standing:
    """The standing of release ``header_hash`` for ``hardware``, proven from ``fetch``'s evidence
    judged at ``clock()`` (so never at a header older than ``anchors.max_header_age``). Never
    raises for a refusal or a failed fetch: the verdict says it."""
    try:
        ev = fetch(header_hash, hardware)
    except FwledgerError as exc:
        code = getattr(exc, "code", None) or "error"
        return Standing(STATUS_UNPROVEN, f"no fresh evidence of the release could be had ({code}: "
                                         f"{' '.join(str(exc).split())})")
    if ev.record.header_hash != header_hash:
        return Standing(STATUS_UNPROVEN, "the fresh evidence is of another release")
    try:
        proven = check_release(anchors, hardware, ev, now=clock())
    except UpdateRefused as exc:
        if exc.code in STANDING_CODES:
            return Standing(exc.code, f"{exc} (proven again before the install commits)")
        return Standing(STATUS_UNPROVEN, f"the fresh evidence does not prove the release's standing "
                                         f"({exc.code}: {exc})")
    return Standing(None, f"proven usable at block {proven.block.number}", proven)

