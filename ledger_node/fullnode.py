"""The full node (X.1368 Appendix II): follows the registry's events into a local SQLite index.

Status trackers are built on it. The node reads the registry's logs in bounded block ranges
(``eth_getLogs``), decodes them with the deployment's ABI and applies each range to the
:class:`Index` in **one** SQLite transaction that also moves the cursor (the last fully ingested
block and its hash). A process killed at any instant therefore leaves the index at the end of
some range: nothing is lost (the next run starts at cursor + 1) and nothing is doubled.

The node does not take the chain's word for release records. For every ``Published`` event it
rebuilds the Table II.1 record from the event's data (:meth:`ReleaseRecord.from_event` rules:
canonical data, header hash recomputed, product line recomputed) and re-verifies, against its own
index, what the registry contract enforces: an active vendor, registered hardware classes, a
previous header hash equal to the head of the product line (zero for a line's first record) and
a version strictly above the head's. A record failing any check is stored *flagged* with the
reasons: it is never served by default and never becomes a head. A data section that cannot be
decoded at all, or repeats a header hash already indexed, is kept in the ``rejected`` table.

Reorganisations: before a range is ingested, the chain's block above the cursor must name the
stored cursor hash as its parent (and the cursor block must still be the chain's when nothing is
new). When it does not (a reorganisation, or a node restarted from an older state), the node
rolls the index back to the newest block whose hash it knows and the chain still has at that
height -- the *checkpoints*: the last :data:`CHECKPOINTS` range ends plus every block that had a
registry event -- and syncs forward from there; the rollback (events above that block removed,
every table derived from events rebuilt from the remaining audit log, cursor moved) is one
transaction. When no checkpoint is on the chain any more, :class:`ChainError` is raised (the
index never silently diverges from the chain). ``confirmations`` keeps the node that many blocks
behind the head so that shallow reorganisations never reach the index.

The index itself: :mod:`ledger_node.index` (writes) on :mod:`ledger_node.index_queries` (opening
and reads); its schema and value types: :mod:`ledger_node.index_types`; log decoding:
:mod:`ledger_node.event_decoder`. This module keeps the node and its command line and re-exports
the public names of those modules.

Run it as ``python -m ledger_node.fullnode --rpc URL --home DIR --db PATH``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from .errors import ChainError, ChainUnreachable, ConfigError, FwledgerError
from .event_decoder import EventDecoder
from .index import CHECKPOINTS, Index
from .index_types import (
    SCHEMA_VERSION,
    AdminInfo,
    ChainEvent,
    Cursor,
    HardwareInfo,
    IndexedRelease,
    PolicyInfo,
    RangeResult,
    RejectedRecord,
    Rollback,
    SyncProgress,
    SyncReport,
    VendorInfo,
    _hex,
    _one_line,
)

if TYPE_CHECKING:
    from .registry import Deployment

__all__ = [
    "CHECKPOINTS",
    "SCHEMA_VERSION",
    "AdminInfo",
    "ChainEvent",
    "Cursor",
    "EventDecoder",
    "FullNode",
    "HardwareInfo",
    "Index",
    "IndexedRelease",
    "PolicyInfo",
    "RangeResult",
    "RejectedRecord",
    "Rollback",
    "SyncProgress",
    "SyncReport",
    "VendorInfo",
    "main",
]

#: rollbacks one :meth:`FullNode.sync_once` may make before it gives up (a chain still moving)
_MAX_ROLLBACKS = 3


# ----------------------------------------------------------------------------- the node


class _Reorganised(Exception):  # an internal signal: never escapes sync_once
    """The chain's block above the cursor does not follow the cursor block."""


#: ranges accepted in a row before the ``eth_getLogs`` span doubles again
_GROW_AFTER = 4


class _RangeRefused(Exception):  # an internal signal: never escapes sync_once
    """The node refused an ``eth_getLogs`` range as too wide or too large an answer."""


#: what nodes and RPC providers answer when an ``eth_getLogs`` range spans too many blocks or
#: would return too many logs (geth, Infura, Alchemy, QuickNode, Erigon, anvil's forks...)
_TOO_MUCH = re.compile(
    r"more than \d+ (results|logs)|too many (results|logs|blocks)|range (is )?too (large|wide|big)"
    r"|exceed(s|ed)? (the )?(max(imum)?|limit)|limit exceeded|response size|response is too big"
    r"|block range|query timeout|10,?000 range",
    re.IGNORECASE,
)


def _range_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a node's "this ``eth_getLogs`` range is too much" (JSON-RPC -32005
    "limit exceeded", or a message saying so), not a failure of the node."""
    response = getattr(exc, "rpc_response", None)
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict) and error.get("code") == -32005:
        return True
    text = str(error.get("message", "")) if isinstance(error, dict) else str(exc)
    return bool(_TOO_MUCH.search(text))


def _transport(exc: BaseException, what: str) -> ChainError:
    if isinstance(
        exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError
    ):
        return ChainUnreachable(f"cannot reach the Ethereum node while {what}")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ChainError(_one_line(f"chain error while {what}: {text}"))


class FullNode:
    """Follows one registry into an :class:`Index`.

    Args:
        w3: a connected ``Web3`` (:func:`ledger_node.providers.connect`).
        deployment: the registry's deployment record (address, chain id, deploy block, ABI,
            code hash).
        index: the local index; bound to the deployment on construction.
        confirmations: stay this many blocks behind the head (reorganisations shallower than
            this never reach the index).
        batch_blocks: at most this many blocks per ``eth_getLogs`` call and per transaction.
        check_code: require the code at the registry address to hash to the deployment's code hash.

    Raises:
        ConfigError: bad arguments, the node is on another chain, no registry code at the
            address, or the index belongs to another registry.
        ChainError: the node failed to answer (ChainUnreachable: could not be reached).
        IndexCorruption: the index is damaged.
    """

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        index: Index,
        *,
        confirmations: int = 0,
        batch_blocks: int = 500,
        check_code: bool = True,
    ) -> None:
        if not isinstance(confirmations, int) or confirmations < 0:
            raise ConfigError(
                f"confirmations must be a non-negative integer, not {confirmations!r}"
            )
        if not isinstance(batch_blocks, int) or batch_blocks < 1:
            raise ConfigError(
                f"batch size must be a positive number of blocks, not {batch_blocks!r}"
            )
        self.w3 = w3
        self.deployment = deployment
        self.index = index
        self.confirmations = confirmations
        self.batch_blocks = batch_blocks
        #: the blocks per ``eth_getLogs`` call now: halved while the node refuses a range as
        #: too much (public RPC providers cap ranges and answer sizes), doubled back towards
        #: ``batch_blocks`` after every _GROW_AFTER ranges accepted in a row
        self.span = batch_blocks
        self._accepted = 0
        self.address = to_checksum_address(deployment.address)
        self.decoder = EventDecoder(w3, self.address, deployment.abi)
        chain_id = int(self._rpc("reading the chain id", lambda: w3.eth.chain_id))
        if chain_id != int(deployment.chain_id):
            raise ConfigError(
                f"the node is on chain {chain_id}, the deployment record is for chain "
                f"{deployment.chain_id}"
            )
        if check_code:
            code = bytes(
                self._rpc("reading the registry's code", lambda: w3.eth.get_code(self.address))
            )
            if _hex(keccak(code)) != str(deployment.code_hash).lower():
                raise ConfigError(
                    f"no release registry with the recorded code at {self.address} on chain "
                    f"{chain_id} (chain reset, or the deployment record is stale)"
                )
        index.bind(chain_id, self.address, int(deployment.block))

    # -------------------------------------------------------------- chain access

    def _rpc(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except FwledgerError:
            raise
        except (Web3Exception, requests.exceptions.RequestException, ValueError, OSError) as exc:
            raise _transport(exc, what) from exc

    def _block(self, number: int) -> Mapping[str, Any]:
        block = self._rpc(f"reading block {number}", lambda: self.w3.eth.get_block(number))
        if block is None:
            raise ChainError(f"the node has no block {number}")
        return block  # type: ignore[no-any-return]

    def chain_head(self) -> int:
        """The node's newest block number.

        Raises:
            ChainError: the node failed to answer.
        """
        return int(self._rpc("reading the block number", lambda: self.w3.eth.block_number))

    def _block_hash(self, number: int) -> str:
        return _hex(bytes(self._block(number)["hash"]))

    def _agreement(self, points: Sequence[Cursor], head: int) -> int:
        """The position in ``points`` (oldest first) of the newest one the chain still has, or -1.

        A block the chain has at its height vouches for every older one (each block names its
        parent's hash), so the search gallops down from the newest and then bisects.
        """
        seen: dict[int, bool] = {}

        def on_chain(i: int) -> bool:
            if i not in seen:
                p = points[i]
                seen[i] = p.block <= head and self._block_hash(p.block) == p.block_hash
            return seen[i]

        hi, step, lo = len(points), 1, -1  # points[hi:] are off the chain
        while hi > 0:
            i = max(hi - step, 0)
            if on_chain(i):
                lo = i
                break
            hi, step = i, step * 2
        if lo < 0:
            return -1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if on_chain(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def _roll_back(self, cursor: Cursor, head: int) -> Rollback:
        """Roll the index back to the newest checkpoint still on the chain.

        Raises:
            ChainError: no checkpoint is on the chain any more (history deeper than kept).
        """
        points = self.index.checkpoints()
        i = self._agreement(points, head)
        if i < 0:
            raise ChainError(
                f"the chain was reset or reorganised below the index cursor {cursor.block} "
                f"(head {head}) and none of the {len(points)} blocks the index remembers is on it "
                f"any more: resync into a new index (confirmations now {self.confirmations})"
            )
        return self.index.roll_back(points[i], expect=cursor)

    # -------------------------------------------------------------- syncing

    def sync_once(
        self,
        progress: Callable[[SyncProgress], None] | None = None,
        *,
        stop: threading.Event | None = None,
        on_rollback: Callable[[Rollback], None] | None = None,
    ) -> SyncReport:
        """Ingest every block from the cursor + 1 up to head - confirmations, range by range.

        Each range is committed with the cursor in one transaction; ``progress`` is called after
        each commit. A ``stop`` event set meanwhile ends the sync after the current range.

        When the chain no longer holds the cursor block (a reorganisation, or a node restarted
        from an older state), the index is first rolled back to the newest block it shares with
        the chain (:meth:`Index.roll_back`; ``on_rollback`` hears of it) and the sync goes on
        from there; the report says so (``rolled_back_from``, ``rolled_back_to``,
        ``events_removed``).

        Raises:
            ChainError: the chain was reorganised below every block the index remembers, kept
                reorganising, or answered something unusable.
            ChainUnreachable: the node could not be reached.
            ConfigError: another process moved the index's cursor.
            IndexCorruption: the index is damaged.
        """
        head = self.chain_head()
        target = head - self.confirmations
        cursor = self.index.cursor()
        rollbacks: list[Rollback] = []

        def roll_back(at: Cursor) -> Cursor:
            if len(rollbacks) >= _MAX_ROLLBACKS:
                raise ChainError(
                    f"the chain kept reorganising below the cursor ({len(rollbacks)} rollbacks "
                    f"in one sync): raise confirmations (now {self.confirmations})"
                )
            rb = self._roll_back(at, head)
            rollbacks.append(rb)
            if on_rollback is not None:
                on_rollback(rb)
            return Cursor(rb.to_block, rb.to_hash)

        if cursor is not None and (
            cursor.block > head
            # nothing new: still make sure the indexed block is on the chain
            or (cursor.block >= target and self._block_hash(cursor.block) != cursor.block_hash)
        ):
            cursor = roll_back(cursor)
        start = cursor.block + 1 if cursor is not None else int(self.deployment.block)
        events = releases = flagged = ranges = 0
        first = start
        while first <= target and not (stop is not None and stop.is_set()):
            last = min(first + self.span - 1, target)
            try:
                result, cursor = self._ingest_range(first, last, cursor)
            except _Reorganised:
                assert cursor is not None  # only a range after the cursor can be reorganised
                cursor = roll_back(cursor)
                first = cursor.block + 1
                start = min(start, first)
                continue
            except _RangeRefused as refused:
                if last == first:
                    raise ChainError(_one_line(
                        f"the node refuses the logs of block {first} alone as too much: {refused}")) from None
                self.span, self._accepted = max(1, (last - first + 1) // 2), 0
                continue
            self._accepted += 1
            if self._accepted >= _GROW_AFTER and self.span < self.batch_blocks:
                self.span, self._accepted = min(self.batch_blocks, self.span * 2), 0
            events += result.events
            releases += result.releases
            flagged += result.flagged
            ranges += 1
            if progress is not None:
                progress(
                    SyncProgress(
                        first, last, target, result.events, result.releases, result.flagged
                    )
                )
            first = last + 1
        return SyncReport(
            start,
            first - 1,
            events,
            releases,
            flagged,
            ranges,
            rolled_back_from=rollbacks[0].from_block if rollbacks else None,
            rolled_back_to=rollbacks[-1].to_block if rollbacks else None,
            events_removed=sum(rb.events for rb in rollbacks),
            releases_removed=sum(rb.releases for rb in rollbacks),
        )

    def _ingest_range(
        self, first: int, last: int, cursor: Cursor | None
    ) -> tuple[RangeResult, Cursor]:
        last_block = self._block(last)
        last_hash = _hex(bytes(last_block["hash"]))
        first_block = last_block if first == last else self._block(first)
        if cursor is not None and _hex(bytes(first_block["parentHash"])) != cursor.block_hash:
            raise _Reorganised(cursor.block)
        try:
            logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": first, "toBlock": last})
        except FwledgerError:
            raise
        except (Web3Exception, requests.exceptions.RequestException, ValueError, OSError) as exc:
            if _range_refused(exc):
                raise _RangeRefused(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
            raise _transport(exc, f"reading logs of blocks {first}-{last}") from exc
        known = {first: _hex(bytes(first_block["hash"])), last: last_hash}
        events: list[ChainEvent] = []
        for log in logs:
            if log.get("removed"):
                raise ChainError(
                    f"the node returned a removed log in blocks {first}-{last}: chain reorganising"
                )
            ev = self.decoder.decode(log)
            if not first <= ev.block <= last:
                raise ChainError(
                    f"the node returned a log of block {ev.block} for blocks {first}-{last}"
                )
            if ev.block in known and ev.block_hash != known[ev.block]:
                raise ChainError(
                    f"block {ev.block} changed while it was read: chain reorganising, "
                    f"raise confirmations (now {self.confirmations})"
                )
            events.append(ev)
        return self.index.ingest(first, last, last_hash, events), Cursor(last, last_hash)

    def follow(
        self,
        stop: threading.Event,
        interval: float = 1.0,
        progress: Callable[[SyncProgress], None] | None = None,
        on_error: Callable[[ChainUnreachable], None] | None = None,
        on_rollback: Callable[[Rollback], None] | None = None,
    ) -> int:
        """Call :meth:`sync_once` every ``interval`` seconds until ``stop`` is set.

        An unreachable node is waited for (``on_error`` hears about each failure); a rollback is
        reported to ``on_rollback``; every other error ends the loop. Returns the number of
        rounds run.

        Raises:
            ChainError: as :meth:`sync_once` (a reorganisation below every checkpoint included).
            ConfigError, IndexCorruption: as :meth:`sync_once`.
        """
        rounds = 0
        while not stop.is_set():
            try:
                self.sync_once(progress, stop=stop, on_rollback=on_rollback)
            except ChainUnreachable as exc:
                if on_error is not None:
                    on_error(exc)
            rounds += 1
            stop.wait(interval)
        return rounds

    # -------------------------------------------------------------- queries (the index's)

    def releases(
        self, product: str | None = None, vendor: str | None = None, include_flagged: bool = False
    ) -> list[IndexedRelease]:
        """:meth:`Index.releases`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.releases(product, vendor, include_flagged)

    def release(self, header_hash: bytes | str) -> IndexedRelease | None:
        """:meth:`Index.release`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.release(header_hash)

    def head(self, vendor: str, product: str) -> IndexedRelease | None:
        """:meth:`Index.head`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.head(vendor, product)

    def vendors(self) -> list[VendorInfo]:
        """:meth:`Index.vendors`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.vendors()

    def hardware(self) -> list[HardwareInfo]:
        """:meth:`Index.hardware`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.hardware()

    def policies(self) -> list[PolicyInfo]:
        """:meth:`Index.policies`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.policies()

    def cursor(self) -> Cursor | None:
        """:meth:`Index.cursor`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.cursor()

    def stats(self) -> dict[str, Any]:
        """:meth:`Index.stats` plus the chain head and how far behind it the cursor is.

        Raises:
            IndexCorruption: the index is damaged.
            ChainError: the node failed to answer.
        """
        out = self.index.stats()
        head = self.chain_head()
        out["chain_head"] = head
        out["confirmations"] = self.confirmations
        out["behind"] = head - out["cursor_block"] if out["cursor_block"] is not None else None
        return out

    def dump_canonical(self) -> list[tuple[Any, ...]]:
        """:meth:`Index.dump_canonical`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.dump_canonical()


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ledger_node.fullnode",
        description="Follow the release registry into a local SQLite index.",
    )
    p.add_argument("--rpc", required=True, help="node URL (http://...) or 'embedded'")
    p.add_argument(
        "--home", required=True, type=Path, help="fwledger home holding deployments/<chain>.json"
    )
    p.add_argument("--db", required=True, type=Path, help="the index file (created if missing)")
    p.add_argument(
        "--batch", type=int, default=500, help="blocks per range and transaction (default 500)"
    )
    p.add_argument(
        "--confirmations", type=int, default=0, help="stay N blocks behind the head (default 0)"
    )
    p.add_argument("--follow", action="store_true", help="keep following until SIGINT/SIGTERM")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between rounds with --follow"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Sync (or follow) an index; progress lines go to stderr, a JSON summary to stdout.

    Returns the exit code: 0, or the failing error's ``exit_code``.
    """
    args = _parser().parse_args(argv)

    def say(p: SyncProgress | Rollback) -> None:
        print(p.line(), file=sys.stderr, flush=True)

    from .providers import connect
    from .registry import load_deployment

    index: Index | None = None
    try:
        w3 = connect(args.rpc)
        chain_id = int(w3.eth.chain_id)
        dep = load_deployment(args.home, chain_id)
        index = Index(args.db)
        node = FullNode(w3, dep, index, confirmations=args.confirmations, batch_blocks=args.batch)
        if args.follow:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            node.follow(
                stop,
                args.interval,
                say,
                on_error=lambda e: print(f"fullnode: {e} (retrying)", file=sys.stderr, flush=True),
                on_rollback=say,
            )
        else:
            report = node.sync_once(say, on_rollback=say)
            print(json.dumps(report.to_json()))
        return 0
    except FwledgerError as exc:
        print(f"fullnode: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if index is not None:
            index.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
