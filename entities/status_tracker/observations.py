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

A firmware server's signed T9.b trigger for a release the index does not have yet is kept the
same way (:meth:`PendingObservations.hold_trigger`: same capacity, rate per signing key, expiry),
keyed by the trigger itself, and acted on as an accepted trigger once its header hash is
indexed (:mod:`.triggers`).

Persistence: with a ``store`` (the inventory), every pending entry is also a row of the
``observations`` table in the inventory's SQLite file (created on open: an inventory without it
gains it, as the ``concerned`` table), written in the same call that changes it and reloaded
when the tracker starts, least recently reported first, so a crash or restart loses none; a
row that no longer parses is dropped on load. The rate limiter's buckets are not persisted.

Pure apart from its clock, its store and the index it reads; thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ledger_node.errors import RecordError
from ledger_node.fullnode import Index
from ledger_node.record import Version

from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .inventory import Inventory

__all__ = ["MAX_OBSERVERS", "OBSERVATION_RATE", "OBSERVATION_TTL", "Observation", "ObservationStore",
           "PendingObservations"]

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
    source: str = "device"          # "device" (a heartbeat, T9.e) or "server" (a signed T9.b trigger)
    header_hash: str | None = None  # source server: the trigger's release (vendor and product unknown yet)
    signer: str | None = None       # source server: the server key that signed the trigger
    trigger: dict[str, Any] | None = None  # source server: the trigger's body, acted on once indexed

    @property
    def key(self) -> tuple[str, ...]:
        if self.source == "server":
            body = json.dumps([self.signer, self.trigger], sort_keys=True, separators=(",", ":"))
            return ("server", str(self.header_hash), hashlib.sha256(body.encode()).hexdigest()[:32])
        return (self.vendor, self.product, self.version)

    def to_json(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "product": self.product, "version": self.version,
                "first_seen": self.first_seen, "last_seen": self.last_seen, "devices": list(self.devices),
                "reports": self.reports, "until_block": self.until_block, "source": self.source,
                "header_hash": self.header_hash, "signer": self.signer}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    key TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID
"""
_FIELDS = frozenset(f.name for f in fields(Observation))


class ObservationStore:
    """The ``observations`` table of a tracker's inventory (module docstring).

    Raises (constructor):
        IndexCorruption: the inventory is damaged.
    """

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        with inventory._tx() as conn:
            conn.execute(_SCHEMA)

    @staticmethod
    def _key(key: tuple[str, ...]) -> str:
        return json.dumps(list(key), separators=(",", ":"))

    def load(self) -> list[Observation]:
        """Every stored observation, least recently reported first; rows that do not parse are deleted."""
        with self.inventory._read() as conn:
            rows = conn.execute("SELECT key, body FROM observations ORDER BY last_seen, key").fetchall()
        out, bad = [], []
        for key, body in rows:
            try:
                data = json.loads(body)
                obs = Observation(**{k: v for k, v in data.items() if k in _FIELDS})
                if _version(obs.version) is None or not isinstance(obs.devices, list):
                    raise ValueError(obs.version)
                out.append(obs)
            except (ValueError, TypeError, AttributeError):
                bad.append((key,))
        if bad:
            with self.inventory._tx() as conn:
                conn.executemany("DELETE FROM observations WHERE key = ?", bad)
        return out

    def save(self, obs: Observation) -> None:
        with self.inventory._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO observations (key, last_seen, body) VALUES (?, ?, ?)",
                         (self._key(obs.key), obs.last_seen, json.dumps(asdict(obs), sort_keys=True)))

    def delete(self, *observations: Observation) -> None:
        if observations:
            with self.inventory._tx() as conn:
                conn.executemany("DELETE FROM observations WHERE key = ?",
                                 [(self._key(o.key),) for o in observations])


def _version(text: str) -> Version | None:
    try:
        return Version.parse(text)
    except (RecordError, ValueError, TypeError):
        return None


class PendingObservations:
    """The tracker's pending T9.e observations (module docstring). ``capacity`` 0: none kept;
    ``store``: where they persist (none: in memory only)."""

    def __init__(self, capacity: int, *, confirmations: int, margin: int, ttl: float = OBSERVATION_TTL,
                 rate: float = OBSERVATION_RATE, clock: Callable[[], float],
                 store: ObservationStore | None = None) -> None:
        self.capacity = max(0, capacity)
        self.confirmations = confirmations
        self.margin = margin
        self.ttl = ttl
        self.limiter = RateLimiter(rate, clock=clock)
        self.store = store
        self._items: OrderedDict[tuple[str, ...], Observation] = OrderedDict()
        self._lock = threading.RLock()  # taken before the inventory's (it writes the store holding it)
        self.evicted = 0  # dropped to make room (a flood may push a real observation out: THREATS.md)
        if store is not None:
            for obs in store.load():
                self._items[obs.key] = obs
            with self._lock:
                self._trim()

    def held(self) -> AbstractContextManager[Any]:
        """This object's lock, for a caller about to open an inventory batch (which may observe
        inside): the lock order is this lock, then the inventory's."""
        return self._lock

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def entries(self) -> list[dict[str, Any]]:
        """The pending observations, oldest report first (JSON-ready)."""
        with self._lock:
            return [o.to_json() for o in self._items.values()]

    def _trim(self) -> None:
        """Drop the least recently reported beyond ``capacity`` (holding the lock)."""
        dropped = []
        while len(self._items) > self.capacity:
            dropped.append(self._items.popitem(last=False)[1])
            self.evicted += 1
        if self.store is not None:
            self.store.delete(*dropped)

    def _add(self, obs: Observation) -> None:
        """Keep ``obs`` (new), then trim (holding the lock)."""
        self._items[obs.key] = obs
        if self.store is not None:
            self.store.save(obs)
        self._trim()

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
                if self.store is not None:
                    self.store.save(obs)
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
                self._add(Observation(vendor, product, str(seen), now, now, [device_id]))
        return "pending"

    def hold_trigger(self, signer: str, trigger: dict[str, Any], now: float) -> str:
        """Keep a firmware server's signed trigger (its JSON body, already judged: a configured
        server key, its release not indexed yet) until its release is. Returns ``pending``,
        ``again`` (the same trigger already pending), ``off`` or ``rate_limited`` (nothing kept)."""
        if self.capacity == 0:
            return "off"
        devices = [str(d["device_id"]) for d in trigger.get("devices", [])][:MAX_OBSERVERS]
        obs = Observation("", "", str(trigger["version"]), now, now, devices, source="server",
                          header_hash=str(trigger["header_hash"]).lower(), signer=signer, trigger=dict(trigger))
        with self._lock:
            old = self._items.get(obs.key)
            if old is not None:
                old.last_seen, old.reports = now, old.reports + 1
                self._items.move_to_end(obs.key)
                if self.store is not None:
                    self.store.save(old)
                return "again"
        if self.limiter.take(signer) > 0:
            return "rate_limited"
        with self._lock:
            if obs.key not in self._items:
                self._add(obs)
        return "pending"

    def _found(self, index: Index, obs: Observation) -> bool:
        if obs.source == "server":
            return index.release(str(obs.header_hash)) is not None
        return any(str(r.record.data.version) == obs.version
                   for r in index.releases(product=obs.product, vendor=obs.vendor, include_flagged=True))

    def settle(self, index: Index, cursor: int, now: float) -> tuple[list[Observation], list[Observation]]:
        """After a successful sync up to ``cursor``: the observations whose release the index now
        has (settled: the caller assesses the fleet with cause T9.e, or acts on the trigger, then
        calls :meth:`forget`: a crash in between acts on it again after the restart) and those
        given up (expired). An observation seen for the first time here gets its last block:
        ``cursor`` (head minus confirmations) + confirmations + margin."""
        with self._lock:
            items = list(self._items.items())
        found: list[Observation] = []
        expired: list[Observation] = []
        for key, obs in items:
            if self._found(index, obs):
                found.append(obs)
            elif obs.until_block is None:
                with self._lock:  # saved only while still kept: an observation evicted meanwhile stays gone
                    if self._items.get(key) is obs:
                        obs.until_block = cursor + self.confirmations + self.margin
                        if self.store is not None:
                            self.store.save(obs)
                continue
            elif cursor >= obs.until_block or now >= obs.first_seen + self.ttl:
                expired.append(obs)
            else:
                continue
            with self._lock:
                if self._items.get(key) is obs:
                    del self._items[key]
        if self.store is not None:
            self.store.delete(*expired)
        return found, expired

    def forget(self, obs: Observation) -> None:
        """A settled observation was acted on: its row goes (unless reported again since)."""
        with self._lock:
            if self.store is not None and obs.key not in self._items:
                self.store.delete(obs)
