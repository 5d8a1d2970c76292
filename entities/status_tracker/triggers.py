"""The tracker's update requests (X.1368 clause 9: T9.a author, T9.b firmware server, T9.c
administrator). A mixin of :class:`~.daemon.Tracker`.

:meth:`TrackerTriggers.trigger` judges a request against the tracker's own ledger
(:func:`.inventory.judge_trigger`) and acts on it: the fleet is re-assessed, "update needed"
recorded per device, and a firmware server's list of concerned devices stored (C11.3.g).

A firmware server's trigger (signed by one of ``server_keys``) for a release the tracker's index
does not have yet (its block not ``confirmations`` deep, or the tracker's last poll before it)
is not refused: it joins the pending observations (:mod:`.observations`: same capacity, per-key
rate and expiry, persisted in the inventory), the answer says ``pending`` (HTTP 202), the
ledger is polled every ``observation_retry`` seconds, and once the release is indexed the
trigger is judged again and acted on as if it had just arrived (:meth:`TrackerTriggers.settled_trigger`).
An author's or administrator's trigger for an unknown release is refused (``not_on_ledger``), as
is a server's one when retries are off or its key's bucket is empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .inventory import (
    CLAUSE,
    Assessment,
    DeviceRow,
    LedgerFacts,
    Source,
    TrackerRefusal,
    TriggerIn,
    check_party,
    judge_trigger,
)

if TYPE_CHECKING:
    from ledger_node.fullnode import Index, IndexedRelease

    from .concerned import ConcernedStore
    from .config import TrackerConfig
    from .daemon import LedgerRound
    from .inventory import Inventory
    from .observations import PendingObservations
    from .ratelimit import RateLimiter

__all__ = ["TrackerTriggers"]


def _facts(release: IndexedRelease | None) -> LedgerFacts:
    if release is None:
        return LedgerFacts(found=False)
    d = release.record.data
    return LedgerFacts(found=True, version=str(d.version), vendor_name=d.vendor_name, file_link=d.file_link,
                       revoked=release.revoked, vulnerable=release.vulnerable, flagged=release.flagged)


class TrackerTriggers:
    """See the module docstring (needs the tracker's index, stores, limiter and ``assess``)."""

    config: TrackerConfig
    clock: Callable[[], float]
    index: Index
    inventory: Inventory
    concerned: ConcernedStore
    observations: PendingObservations
    trigger_limiter: RateLimiter
    _wake: threading.Event

    if TYPE_CHECKING:
        def assess(self, devices: Sequence[DeviceRow], cause: str, *,
                   whole_fleet: bool = False) -> list[Assessment]: ...

        def follow_ledger(self) -> LedgerRound: ...

        def _event(self, name: str, **fields: Any) -> None: ...

    def trigger(self, signer: str, trig: TriggerIn) -> dict[str, Any]:
        """An update request from an author (T9.a), a firmware server (T9.b) or an administrator
        (T9.c): acted on only if the signer may send it and the ledger has that release with that
        version. The ledger is polled before judging, so a release published a moment ago is
        found and one revoked since the last poll is refused. Acting: the fleet is re-assessed
        and "update needed" recorded per device. A server's trigger for a release not indexed
        yet is kept pending (module docstring; the answer has ``pending: true``). Every request
        whose signature verified is logged (a pending one with code ``pending``), refused or not,
        except one over the signer's ``trigger_rate`` (refused first, nothing stored); the
        triggers table keeps the newest ``trigger_limit`` rows.

        Raises:
            TrackerRefusal: ``rate_limited``; as :func:`.inventory.judge_trigger`.
        """
        self.trigger_limiter.check(signer, "triggers")
        now = self.clock()
        hh = trig.header_hash.lower()
        keys = {"server_keys": self.config.server_keys, "admin_keys": self.config.admin_keys}
        try:
            check_party(trig, signer, vendors=None, **keys)  # configured parties: before any chain work
            self.follow_ledger()  # judge against the newest ledger: a release revoked a block ago is refused
            facts = _facts(self.index.release(hh))
            if not facts.found and Source(trig.source) is Source.SERVER:
                kept = self.observations.hold_trigger(signer, trig.model_dump(mode="json"), now)
                if kept in ("pending", "again"):  # T9.b before its release is confirmed: wait for it
                    return self._pending_trigger(signer, trig, now, kept)
            vendors = {v.address: v.name for v in self.index.vendors() if v.active}
            judge_trigger(trig, signer, facts, vendors=vendors, **keys)
        except TrackerRefusal as refusal:
            self.inventory.log_trigger(now, trig, signer, accepted=False, code=refusal.code, message=str(refusal))
            self._event("trigger_refused", source=trig.source, signer=signer, header_hash=hh, code=refusal.code)
            raise
        return self._accept_trigger(signer, trig, facts, now)

    def _pending_trigger(self, signer: str, trig: TriggerIn, now: float, kept: str) -> dict[str, Any]:
        hh = trig.header_hash.lower()
        trigger_id = self.inventory.log_trigger(now, trig, signer, accepted=False, code="pending",
                                                message="release not on the indexed ledger yet: kept pending")
        self._event("trigger_pending", id=trigger_id, signer=signer, header_hash=hh, kept=kept)
        self._wake.set()  # poll every observation_retry seconds from now on
        return {"trigger_id": trigger_id, "accepted": False, "pending": True, "clause": CLAUSE[Source(trig.source)],
                "source": trig.source, "header_hash": hh, "version": trig.version, "link": trig.link,
                "devices": [], "concerned": []}

    def settled_trigger(self, signer: str, body: dict[str, Any]) -> None:
        """A pending server trigger whose release the index now has (the ledger was just synced):
        judged again and acted on, or refused and logged (never raises a refusal)."""
        now = self.clock()
        try:
            trig = TriggerIn.model_validate(body)
            facts = _facts(self.index.release(trig.header_hash.lower()))
            vendors = {v.address: v.name for v in self.index.vendors() if v.active}
            judge_trigger(trig, signer, facts, vendors=vendors, server_keys=self.config.server_keys,
                          admin_keys=self.config.admin_keys)
        except TrackerRefusal as refusal:
            self.inventory.log_trigger(now, trig, signer, accepted=False, code=refusal.code, message=str(refusal))
            self._event("trigger_refused", source=trig.source, signer=signer, header_hash=trig.header_hash.lower(),
                        code=refusal.code, pending=True)
            return
        except ValueError as exc:  # a stored body that no longer validates (pydantic's error is one)
            self._event("trigger_dropped", signer=signer, error=str(exc)[:300])
            return
        self._accept_trigger(signer, trig, facts, now)

    def _accept_trigger(self, signer: str, trig: TriggerIn, facts: LedgerFacts, now: float) -> dict[str, Any]:
        hh = trig.header_hash.lower()
        clause = CLAUSE[Source(trig.source)]
        trigger_id = self.inventory.log_trigger(now, trig, signer, accepted=True)
        rel = self.index.release(hh)
        if trig.devices and rel is not None:  # C11.3.g: the server's attention list (never an order)
            d = rel.record.data  # the ledger's release, not the server's word
            self.concerned.record(now, trigger_id, signer, {"header_hash": hh, "vendor": d.vendor_name,
                                                            "product": d.product, "version": str(d.version)},
                                  trig.devices)
        self.assess(self.inventory.devices(), f"{clause}#{trigger_id}", whole_fleet=True)
        devices = sorted({n["device_id"] for n in self.inventory.needs() if n["header_hash"] == hh})
        self.inventory.set_trigger_devices(trigger_id, len(devices))
        self._event("trigger_accepted", id=trigger_id, clause=clause, header_hash=hh, devices=len(devices),
                    concerned=len(trig.devices))
        named = {x.device_id for x in trig.devices}
        # the link may be a mirror of the record's: devices verify the image by hash either way
        return {"trigger_id": trigger_id, "accepted": True, "pending": False, "clause": clause,
                "source": trig.source, "header_hash": hh, "version": trig.version, "link": trig.link,
                "link_on_ledger": trig.link == facts.file_link, "devices": devices,
                "concerned": [{k: e[k] for k in ("device_id", "state")} for e in self.concerned.entries(header_hash=hh)
                              if e["server"] == signer and e["device_id"] in named]}
