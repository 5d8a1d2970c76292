"""The full node's index on crafted registry events: no chain involved.

Covers the hash-chain and version-order re-verification (a chain-breaking record is flagged and
never served), status events, vendor rotation, atomic ranges with the cursor, binding to one
registry, corruption handling, canonical dumps, and log decoding with the registry's ABI.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import eth_abi
import pytest
from eth_utils import event_abi_to_log_topic, keccak
from web3 import Web3

from ledger_node.compiler import registry_contract
from ledger_node.errors import ConfigError, IndexCorruption
from ledger_node.fullnode import (
    CHECKPOINTS,
    SCHEMA_VERSION,
    ChainEvent,
    Cursor,
    EventDecoder,
    Index,
)
from ledger_node.record import ZERO_HASH, ReleaseData, ReleaseRecord, Version

CHAIN_ID = 31337
REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OTHER = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
ADMIN = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
ACME = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ACME2 = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
GLOBEX = "0x90f79bF6eb2c4f970365E785982e1f101E93b906"
DEPLOY_BLOCK = 1


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def record(
    vendor: str, product: str, version: str, prev: bytes, hardware: tuple[str, ...] = ("hw-a",)
) -> ReleaseRecord:
    tag = f"{vendor}/{product}/{version}"
    return ReleaseRecord(
        prev_hash=prev,
        data=ReleaseData(
            merkle_root=digest("m" + tag),
            vendor_name=vendor,
            publish_time=1_700_000_000,
            product=product,
            version=Version.parse(version),
            file_hash=digest("f" + tag),
            file_link=f"https://x/{tag}",
            file_name=f"{product}.bin",
            file_size=1000,
            supported_hardware=hardware,
        ),
    )


class Chain:
    """Builds events block by block (one event per block unless told otherwise)."""

    def __init__(self) -> None:
        self.block = DEPLOY_BLOCK
        self.log_index = 0
        self.pending: list[ChainEvent] = []
        self.started = False

    def ev(self, event: str | None, /, same_block: bool = False, **args: Any) -> ChainEvent:
        if not same_block and self.started:
            self.block += 1
            self.log_index = 0
        self.started = True
        e = ChainEvent(
            self.block,
            self.log_index,
            "0x" + digest(f"tx{self.block}").hex(),
            event,
            args,
            "0x" + digest(f"block{self.block}").hex(),
        )
        self.log_index += 1
        self.pending.append(e)
        return e

    def published(
        self,
        rec: ReleaseRecord,
        *,
        header_hash: bytes | None = None,
        line: bytes | None = None,
        data: bytes | None = None,
    ) -> ChainEvent:
        return self.ev(
            "Published",
            line=line or rec.line,
            header_hash=header_hash or rec.header_hash,
            prev_hash=rec.prev_hash,
            data=rec.data_bytes if data is None else data,
        )

    def setup(self) -> None:
        self.ev("AdminAdded", admin=ADMIN, epoch=0)
        self.ev("ThresholdChanged", threshold=1, epoch=0, same_block=True)
        self.ev("VendorAdded", vendor=ACME, name_hash=keccak(b"acme"), name="acme")
        self.ev("VendorAdded", vendor=GLOBEX, name_hash=keccak(b"globex"), name="globex")
        self.ev(
            "HardwareAdded", hw_key=keccak(b"hw-a"), hw_id="hw-a", revision=1, enc_key=b"\xaa" * 32
        )

    def flush(self, index: Index) -> None:
        """Ingest everything pending as one range ending at the current block."""
        cur = index.cursor()
        first = cur.block + 1 if cur else DEPLOY_BLOCK
        index.ingest(first, self.block, digest(f"block{self.block}"), self.pending)
        self.pending = []


@pytest.fixture
def index(tmp_path: Path) -> Index:
    idx = Index(tmp_path / "index.db")
    idx.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
    return idx


def test_chain_breaking_records_are_flagged_and_never_served(index: Index) -> None:
    c = Chain()
    c.setup()
    r1 = record("acme", "fw", "1.0.0", ZERO_HASH)
    c.published(r1)
    fork = record("acme", "fw", "1.1.0", digest("elsewhere"))
    c.published(fork)
    second_first = record("acme", "fw", "2.0.0", ZERO_HASH)  # a second "first" record
    c.published(second_first)
    older = record("acme", "fw", "0.9.0", r1.header_hash)
    c.published(older)
    same = record("acme", "fw", "1.0.0", r1.header_hash)  # version not strictly above
    c.published(same)
    r2 = record("acme", "fw", "1.1.0", r1.header_hash)
    c.published(r2)
    c.flush(index)

    assert [r.header_hash for r in index.releases()] == [r1.header_hash, r2.header_hash]
    assert [(r.position, r.head) for r in index.releases()] == [(1, False), (2, True)]
    assert index.head("acme", "fw").header_hash == r2.header_hash
    flagged = {r.header_hash: r for r in index.releases(include_flagged=True) if r.flagged}
    assert set(flagged) == {
        fork.header_hash,
        second_first.header_hash,
        older.header_hash,
        same.header_hash,
    }
    assert "is not the head of the product line" in flagged[fork.header_hash].flag_reason
    assert "is not the head of the product line" in flagged[second_first.header_hash].flag_reason
    assert "version 0.9.0 is not above the head's 1.0.0" in flagged[older.header_hash].flag_reason
    assert "version 1.0.0 is not above" in flagged[same.header_hash].flag_reason
    for r in flagged.values():
        assert r.position is None and not r.head and "\n" not in r.flag_reason
        assert index.release(r.header_hash).flagged  # reachable by hash, with its flag
        assert r.to_json()["flagged"] is True
    # listing with flagged ones: the line's chain first, then the flagged in chain order
    assert [r.header_hash for r in index.releases(include_flagged=True)] == [
        r1.header_hash,
        r2.header_hash,
        fork.header_hash,
        second_first.header_hash,
        older.header_hash,
        same.header_hash,
    ]
    stats = index.stats()
    assert (stats["releases"], stats["flagged"], stats["lines"]) == (2, 4, 1)


def test_hash_line_vendor_and_hardware_are_rechecked(index: Index) -> None:
    c = Chain()
    c.setup()
    good = record("acme", "fw", "1.0.0", ZERO_HASH)
    c.published(good, header_hash=digest("claimed"))  # event hash differs from the data's
    wrong_line = record("acme", "boot", "1.0.0", ZERO_HASH)
    c.published(wrong_line, line=good.line)
    stranger = record("nobody", "fw", "1.0.0", ZERO_HASH)
    c.published(stranger)
    odd_hw = record("globex", "fw", "1.0.0", ZERO_HASH, hardware=("hw-a", "hw-z"))
    c.published(odd_hw)
    c.published(good, header_hash=digest("junk"), data=b"\x00" * 31)  # undecodable
    ok = record("globex", "tool", "1.0.0", ZERO_HASH)
    c.published(ok)
    c.published(ok)  # the same record again
    c.flush(index)

    flagged = {
        r.header_hash: r.flag_reason for r in index.releases(include_flagged=True) if r.flagged
    }
    assert "differs from the recomputed 0x" + good.header_hash.hex() in flagged[good.header_hash]
    assert "event product line" in flagged[wrong_line.header_hash]
    assert "vendor 'nobody' is not an active registered vendor" in flagged[stranger.header_hash]
    assert "hardware class 'hw-z' is not registered" in flagged[odd_hw.header_hash]
    assert [r.header_hash for r in index.releases()] == [ok.header_hash]
    rejected = index.rejected()
    assert [("undecodable" in r.reason, "repeats the record" in r.reason) for r in rejected] == [
        (True, False),
        (False, True),
    ]
    assert index.head("acme", "fw") is None  # a flagged record never becomes a head


def test_status_events_vendor_rotation_admins(index: Index) -> None:
    c = Chain()
    c.setup()
    r1 = record("acme", "fw", "1.0.0", ZERO_HASH)
    c.published(r1)
    r2 = record("acme", "fw", "1.1.0", r1.header_hash)
    c.published(r2)
    c.ev("Revoked", line=r1.line, header_hash=r1.header_hash, by=ACME, reason="recalled")
    c.ev(
        "Revoked",
        line=digest("other line"),
        header_hash=r2.header_hash,
        by=ACME,
        reason="wrong line",
    )
    c.ev("MarkedVulnerable", line=r2.line, header_hash=r2.header_hash, by=ADMIN, note="CVE-1")
    c.ev("VendorRotated", old=ACME, new=ACME2, name_hash=keccak(b"acme"))
    r3 = record("acme", "fw", "1.2.0", r2.header_hash)
    c.published(r3)  # the line continues under the new key
    c.ev("VendorRevoked", vendor=GLOBEX, name_hash=keccak(b"globex"))
    g = record("globex", "fw", "1.0.0", ZERO_HASH)
    c.published(g)  # a revoked vendor's record
    c.ev(
        "PolicySet",
        hw_key=keccak(b"hw-a"),
        line=r1.line,
        hw_id="hw-a",
        vendor_name="acme",
        product="fw",
        allowed=True,
        min_version=Version(1, 1, 0).packed,
        max_version=2**64 - 1,
    )
    c.ev("AdminAdded", admin=ACME, epoch=1)
    c.ev("ThresholdChanged", threshold=2, epoch=2)
    c.ev("AdminRemoved", admin=ACME, epoch=3)
    c.ev("Approved", op=digest("op"), admin=ADMIN, approvals=1, threshold=2)
    c.ev(None, topics=["0x" + "ab" * 32], data="0x")
    c.flush(index)

    assert (
        index.release(r1.header_hash).revoked
        and index.release(r1.header_hash).revoke_reason == "recalled"
    )
    rel2 = index.release(r2.header_hash)
    assert not rel2.revoked and rel2.vulnerable and rel2.vulnerable_note == "CVE-1"
    assert index.head("acme", "fw").header_hash == r3.header_hash
    assert "vendor 'globex' is not an active" in index.release(g.header_hash).flag_reason
    vendors = {v.address: v for v in index.vendors()}
    assert (vendors[ACME].active, vendors[ACME].rotated_to) == (False, ACME2)
    assert (vendors[ACME2].name, vendors[ACME2].active) == ("acme", True)
    assert (vendors[GLOBEX].active, vendors[GLOBEX].revoked) == (False, True)
    (p,) = index.policies()
    assert (str(p.min_version), str(p.max_version)) == ("1.1.0", "65535.65535.65535")
    assert p.permits(Version(1, 5, 0)) and not p.permits(Version(1, 0, 0))
    admins, k = index.admins()
    assert [a.address for a in admins] == [ADMIN] and k == 2
    assert index.stats()["unknown_events"] == 1
    assert len(index.events()) == len(index.events("Published")) + 11 + 5  # all events kept

    # rotating back to a key that was a vendor before reactivates it
    c.ev("VendorRotated", old=ACME2, new=ACME, name_hash=keccak(b"acme"))
    c.flush(index)
    vendors = {v.address: v for v in index.vendors()}
    assert (vendors[ACME].active, vendors[ACME].rotated_to, vendors[ACME2].active) == (
        True,
        None,
        False,
    )


def test_a_range_is_all_or_nothing(index: Index) -> None:
    c = Chain()
    c.setup()
    c.flush(index)
    before = index.dump_canonical()
    cursor = index.cursor()
    r1 = record("acme", "fw", "1.0.0", ZERO_HASH)
    good = c.published(r1)
    bad = ChainEvent(cursor.block + 50, 0, "0x00", "AdminAdded", {"admin": ADMIN, "epoch": 9})
    with pytest.raises(IndexCorruption, match="outside range"):
        index.ingest(cursor.block + 1, good.block, digest("x"), [good, bad])
    assert index.dump_canonical() == before and index.cursor() == cursor
    # a duplicate event in one range: refused, nothing written
    with pytest.raises(IndexCorruption, match="already indexed"):
        index.ingest(cursor.block + 1, good.block, digest("x"), [good, good])
    assert index.dump_canonical() == before
    # a range that does not start at cursor + 1 (another writer, or a bug): refused
    with pytest.raises(ConfigError, match=f"expects block {cursor.block + 1} next"):
        index.ingest(cursor.block + 2, good.block + 1, digest("x"), [])
    c.flush(index)
    assert index.cursor().block == good.block and len(index.releases()) == 1


def test_range_split_does_not_change_the_result(tmp_path: Path) -> None:
    c = Chain()
    c.setup()
    prev = ZERO_HASH
    for i in range(6):
        r = record("acme", "fw", f"1.{i}.0", prev)
        c.published(r)
        prev = r.header_hash
    c.published(record("acme", "fw", "0.1.0", prev))  # flagged
    events, last = list(c.pending), c.block

    one = Index(tmp_path / "one.db")
    one.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
    one.ingest(DEPLOY_BLOCK, last, digest(f"block{last}"), events)
    many = Index(tmp_path / "many.db")
    many.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
    for b in range(DEPLOY_BLOCK, last + 1):
        h = digest(f"block{b}") if b == last else digest(f"mid{b}")
        many.ingest(b, b, h, [e for e in events if e.block == b])
    assert one.dump_canonical() == many.dump_canonical()
    assert [t[0] for t in one.dump_canonical()].count("releases") == 7


def _rich_chain() -> Chain:
    """Every kind of event the index derives state from, one block each, on blocks 1..N."""
    c = Chain()
    c.setup()
    r1 = record("acme", "fw", "1.0.0", ZERO_HASH)
    c.published(r1)
    r2 = record("acme", "fw", "1.1.0", r1.header_hash)
    c.published(r2)
    c.published(record("acme", "fw", "0.5.0", r2.header_hash))  # flagged
    c.published(record("acme", "fw", "9.0.0", ZERO_HASH), data=b"\x00 not a record")  # rejected
    c.ev("Revoked", line=r1.line, header_hash=r1.header_hash, by=ACME, reason="recalled")
    c.ev("MarkedVulnerable", line=r2.line, header_hash=r2.header_hash, by=ADMIN, note="CVE-1")
    c.ev("VendorRotated", old=ACME, new=ACME2, name_hash=keccak(b"acme"))
    r3 = record("acme", "fw", "1.2.0", r2.header_hash)
    c.published(r3)
    c.ev("HardwareAdded", hw_key=keccak(b"hw-b"), hw_id="hw-b", revision=2, enc_key=b"\xbb" * 32)
    c.ev(
        "PolicySet",
        hw_key=keccak(b"hw-a"),
        line=r1.line,
        hw_id="hw-a",
        vendor_name="acme",
        product="fw",
        allowed=True,
        min_version=Version(1, 1, 0).packed,
        max_version=2**64 - 1,
    )
    c.ev("VendorRevoked", vendor=GLOBEX, name_hash=keccak(b"globex"))
    c.ev("AdminAdded", admin=ACME, epoch=1)
    c.ev("ThresholdChanged", threshold=2, epoch=2)
    c.ev("AdminRemoved", admin=ACME, epoch=3)
    c.ev(None, topics=["0x" + "ab" * 32], data="0x")
    c.published(record("acme", "fw", "1.3.0", r3.header_hash))
    return c


def _ingest_blocks(index: Index, events: list[ChainEvent], last: int) -> None:
    """One range per block, each ending on that block's hash."""
    cur = index.cursor()
    for b in range(cur.block + 1 if cur else DEPLOY_BLOCK, last + 1):
        index.ingest(b, b, digest(f"block{b}"), [e for e in events if e.block == b])


def test_roll_back_equals_an_index_synced_to_that_block(tmp_path: Path) -> None:
    c = _rich_chain()
    events, last = list(c.pending), c.block
    rolled = Index(tmp_path / "rolled.db")
    rolled.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
    _ingest_blocks(rolled, events, last)
    for n in (last, last - 1, 12, 9, 5, DEPLOY_BLOCK):
        cursor = rolled.cursor()
        rb = rolled.roll_back(Cursor(n, "0x" + digest(f"block{n}").hex()), expect=cursor)
        kept = [e for e in events if e.block <= n]
        assert (rb.from_block, rb.to_block) == (cursor.block, n)
        assert rb.events == len([e for e in events if cursor.block >= e.block > n])
        fresh = Index(tmp_path / f"fresh{n}.db")
        fresh.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
        _ingest_blocks(fresh, kept, n)
        assert rolled.dump_canonical() == fresh.dump_canonical(), n
        assert rolled.cursor() == fresh.cursor() and rolled.stats() == fresh.stats()
        fresh.close()
    # and syncing forward again gives the whole chain's index
    _ingest_blocks(rolled, events, last)
    whole = Index(tmp_path / "whole.db")
    whole.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
    _ingest_blocks(whole, events, last)
    assert rolled.dump_canonical() == whole.dump_canonical()


def test_roll_back_refusals_leave_the_index_alone(index: Index) -> None:
    c = _rich_chain()
    c.flush(index)
    before, cursor = index.dump_canonical(), index.cursor()
    with pytest.raises(ConfigError, match="meanwhile"):
        index.roll_back(Cursor(3, "0x" + digest("block3").hex()), expect=Cursor(2, cursor.block_hash))
    with pytest.raises(ConfigError, match="cannot roll"):
        index.roll_back(Cursor(cursor.block + 1, "0x00"))
    with pytest.raises(ConfigError, match="cannot roll"):
        index.roll_back(Cursor(DEPLOY_BLOCK - 1, "0x00"))
    assert index.dump_canonical() == before and index.cursor() == cursor


def test_checkpoints_are_bounded_but_keep_every_event_block(index: Index) -> None:
    c = Chain()
    c.setup()
    events, last = list(c.pending), c.block
    _ingest_blocks(index, events, last + CHECKPOINTS + 40)  # empty blocks after the events
    points = index.checkpoints()
    top = index.cursor().block
    assert points[-1] == index.cursor()
    assert [p.block for p in points] == [e.block for e in events if e.log_index == 0] + list(
        range(top - CHECKPOINTS + 1, top + 1)
    )
    assert all(p.block_hash == "0x" + digest(f"block{p.block}").hex() for p in points)


def test_binding_refuses_another_registry(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    idx = Index(path)
    assert idx.binding() is None and idx.cursor() is None
    idx.bind(CHAIN_ID, REGISTRY.lower(), DEPLOY_BLOCK)
    idx.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)  # the same registry again: fine
    idx.close()
    idx = Index(path)
    for chain, reg, block in (
        (CHAIN_ID + 1, REGISTRY, 1),
        (CHAIN_ID, OTHER, 1),
        (CHAIN_ID, REGISTRY, 9),
    ):
        with pytest.raises(ConfigError, match="was made for registry") as exc:
            idx.bind(chain, reg, block)
        assert "\n" not in str(exc.value)
    assert idx.binding() == (CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
    with pytest.raises(ConfigError, match="not bound"):
        Index(tmp_path / "unbound.db").ingest(1, 1, digest("x"), [])


def test_corrupt_or_foreign_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database at all" * 200)
    with pytest.raises(IndexCorruption, match="damaged") as exc:
        Index(garbage)
    assert "\n" not in str(exc.value)

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(IndexCorruption, match="not an fwledger index"):
        Index(foreign)

    future = tmp_path / "future.db"
    Index(future).close()
    conn = sqlite3.connect(future)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
    )
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="schema version"):
        Index(future)

    # a stored record whose bytes were altered is reported, not served
    c = Chain()
    c.setup()
    c.published(record("acme", "fw", "1.0.0", ZERO_HASH))
    damaged = tmp_path / "damaged.db"
    idx = Index(damaged)
    idx.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
    c.flush(idx)
    idx.close()
    conn = sqlite3.connect(damaged)
    conn.execute("UPDATE releases SET data = ?", (b"\x00" * 64,))
    conn.commit()
    conn.close()
    with pytest.raises(IndexCorruption, match="does not decode"):
        Index(damaged).releases()


def test_index_persists_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    c = Chain()
    c.setup()
    r1 = record("acme", "fw", "1.0.0", ZERO_HASH)
    c.published(r1)
    with Index(path) as idx:
        idx.bind(CHAIN_ID, REGISTRY, DEPLOY_BLOCK)
        c.flush(idx)
        dump = idx.dump_canonical()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with Index(path) as idx:
        assert idx.dump_canonical() == dump
        assert idx.cursor().block == c.block
        assert idx.cursor().block_hash == "0x" + digest(f"block{c.block}").hex()
        assert idx.release("0x" + r1.header_hash.hex()).header_hash == r1.header_hash
        assert idx.release(digest("absent")) is None
    with pytest.raises(ConfigError, match="cannot be used"):
        idx.cursor()  # closed


# ----------------------------------------------------------------------------- decoding


def _log(topics: list[bytes], data: bytes, block: int = 5, log_index: int = 0) -> dict[str, Any]:
    return {
        "address": REGISTRY,
        "topics": topics,
        "data": data,
        "blockNumber": block,
        "logIndex": log_index,
        "transactionHash": digest("tx"),
        "blockHash": digest("b"),
        "transactionIndex": 0,
        "removed": False,
    }


def test_decoder_known_unknown_and_malformed_logs() -> None:
    abi = registry_contract().abi
    decoder = EventDecoder(Web3(), REGISTRY, abi)
    published = next(e for e in abi if e.get("type") == "event" and e["name"] == "Published")
    topic = event_abi_to_log_topic(published)
    r1 = record("acme", "fw", "1.0.0", ZERO_HASH)
    data = eth_abi.encode(["bytes32", "bytes"], [r1.prev_hash, r1.data_bytes])
    ev = decoder.decode(_log([topic, r1.line, r1.header_hash], data))
    assert ev.name == "Published" and ev.args["data"] == r1.data_bytes
    assert ev.args["header_hash"] == r1.header_hash and (ev.block, ev.log_index) == (5, 0)

    unknown = decoder.decode(_log([keccak(b"Other(uint256)")], b"\x00" * 32, log_index=1))
    assert unknown.name is None and unknown.args["topics"] == [
        "0x" + keccak(b"Other(uint256)").hex()
    ]
    malformed = decoder.decode(_log([topic, r1.line], b"\x01"))  # topic known, layout wrong
    assert malformed.name is None and malformed.topic0 == "0x" + topic.hex()
