"""Updates observed elsewhere whose release the tracker has not indexed yet (T9.e), kept pending.

A device reporting a version the tracker's index does not have wakes the tracker's loop (T9.e).
With ``confirmations`` > 0 that sync may not find the release yet: its block is on the chain but
not yet that many blocks deep. The tracker then keeps the observation pending and, while any
observation is pending, syncs every ``observation_retry`` seconds (whatever ``poll_interval``),
so the release is found in the first cycle after its block is confirmed and the line's other
devices are planned as usual.

Bounds (a device key is all it takes to report a version, and in open admission anyone has one):

- only an observation that could be a release worth following is kept: the version parses, its
  vendor is an active vendor on the ledger, its line has releases in the index and it is newer
  than all of them (an older unknown version would update no other device; a line with no release
  yet is what devices running factory images before the first release report);
- at most ``capacity`` observations (``max_observations``), the least recently reported dropped
  first; each keeps at most :data:`MAX_OBSERVERS` device ids (and a count);
- a new observation from a device key is kept at most :data:`OBSERVATION_RATE` times a minute per
  key (token bucket, :class:`.ratelimit.RateLimiter`, itself bounded);
- an observation is dropped once the tracker's confirmed cursor is ``confirmations`` +
  ``margin`` blocks past the chain's head at the first sync after it (the release would have
  been indexed by then) or :data:`OBSERVATION_TTL` seconds after it was first reported (a chain
  that stopped), whichever comes first;
- the retry is one sync of the full node per ``observation_retry`` seconds, however many
  observations are pending: a flood costs at most that polling rate until its entries expire.

Pure apart from its clock and the index it reads; thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger_node.errors import RecordError
from ledger_node.fullnode import Index
from ledger_node.record import Version

from .ratelimit import RateLimiter

__all__ = ["MAX_OBSERVERS", "OBSERVATION_RATE", "OBSERVATION_TTL", "Observation", "PendingObservations"]

OBSERVATION_TTL = 3600.0  # seconds an observation stays pending at most
OBSERVATION_RATE = 6.0    # new observations kept per device key a minute (bursts of that many)
MAX_OBSERVERS = 16        # device ids kept per observation


@dataclass
class Observation:
    """A version some devices run that the tracker's index does not have yet."""

    vendor: str
    product: str
    version: str
    first_seen: float
    last_seen: float
    devices: list[str] = field(default_factory=list)
    reports: int = 1
    until_block: int | None = None  # dropped once the cursor reaches it (set at the first sync after)

    def to_json(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "product": self.product, "version": self.version,
                "first_seen": self.first_seen, "last_seen": self.last_seen, "devices": list(self.devices),
                "reports": self.reports, "until_block": self.until_block}


def _version(text: str) -> Version | None:
    try:
        return Version.parse(text)
    except (RecordError, ValueError, TypeError):
        return None


class PendingObservations:
    """The tracker's pending T9.e observations (module docstring). ``capacity`` 0: none kept."""

    def __init__(self, capacity: int, *, confirmations: int, margin: int, ttl: float = OBSERVATION_TTL,
                 rate: float = OBSERVATION_RATE, clock: Callable[[], float]) -> None:
        self.capacity = max(0, capacity)
        self.confirmations = confirmations
        self.margin = margin
        self.ttl = ttl
        self.limiter = RateLimiter(rate, clock=clock)
        self._items: OrderedDict[tuple[str, str, str], Observation] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0  # dropped to make room (a flood may push a real observation out: THREATS.md)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def entries(self) -> list[dict[str, Any]]:
        """The pending observations, oldest report first (JSON-ready)."""
        with self._lock:
            return [o.to_json() for o in self._items.values()]

    def observe(self, index: Index, signer: str, device_id: str, vendor: str, product: str, version: str,
                now: float) -> str:
        """Keep ``device_id``'s report of running ``vendor``/``product`` ``version`` pending.

        Returns what became of it: ``pending`` (a new observation), ``again`` (one already
        pending), ``off`` (retries disabled), ``bad_version``, ``unknown_vendor``,
        ``unknown_line`` (no release of it indexed), ``not_newer`` (the index has this line at
        this version or newer), ``rate_limited`` (the key's bucket is empty: nothing kept).
        """
        if self.capacity == 0:
            return "off"
        seen = _version(version)
        if seen is None:
            return "bad_version"
        key = (vendor, product, str(seen))
        with self._lock:
            obs = self._items.get(key)
            if obs is not None:
                obs.last_seen, obs.reports = now, obs.reports + 1
                if device_id not in obs.devices and len(obs.devices) < MAX_OBSERVERS:
                    obs.devices.append(device_id)
                self._items.move_to_end(key)
                return "again"
        if not any(v.name == vendor and v.active for v in index.vendors()):
            return "unknown_vendor"
        line = index.releases(product=product, vendor=vendor, include_flagged=True)
        if not line:
            return "unknown_line"  # e.g. a factory image before the line's first release
        if any(r.record.data.version >= seen for r in line):
            return "not_newer"
        if self.limiter.take(signer) > 0:
            return "rate_limited"
        with self._lock:
            if key not in self._items:
                self._items[key] = Observation(vendor, product, str(seen), now, now, [device_id])
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evicted += 1
        return "pending"

    def settle(self, index: Index, cursor: int, now: float) -> tuple[list[Observation], list[Observation]]:
        """After a successful sync up to ``cursor``: the observations whose release the index now
        has (settled: the caller assesses the fleet with cause T9.e) and those given up (expired).
        An observation seen for the first time here gets its last block: ``cursor`` (head minus
        confirmations) + confirmations + margin."""
        with self._lock:
            items = list(self._items.items())
        found: list[Observation] = []
        expired: list[Observation] = []
        for key, obs in items:
            if any(str(r.record.data.version) == obs.version
                   for r in index.releases(product=obs.product, vendor=obs.vendor, include_flagged=True)):
                found.append(obs)
            elif obs.until_block is None:
                obs.until_block = cursor + self.confirmations + self.margin
                continue
            elif cursor >= obs.until_block or now >= obs.first_seen + self.ttl:
                expired.append(obs)
            else:
                continue
            with self._lock:
                if self._items.get(key) is obs:
                    del self._items[key]
        return found, expired
