"""One scenario per attack on a device's update, each refused with its code before harm is done.

Every scenario runs the real pipeline (:class:`Updater` over a provisioned device folder, ledger
proofs from the embedded chain) and asserts three things: the refusal's code; that the device
folder is byte-for-byte what it was (slot files, device.json, safe image, journal, provisioning
files, and each component's state apart from ``last_result``); and that the code was recorded as
the component's last result, for the tracker (X.1368 R10.c.i). Payload attacks (endless data,
flipped bit, truncation, mix-and-match, wrong key) get past verification and begin an install in
the inactive slot: the install is abandoned and the slot emptied, so the folder is again as before.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from entities.author.bundle import CIPHER_CHUNK, Recipient, sign_release
from entities.firmware_consumer import UpdateRefused
from entities.firmware_consumer.provision import ComponentBinding
from entities.firmware_consumer.verify import Evidence
from ledger_node.attestation import attest
from ledger_node.header import decode_header
from ledger_node.lightnode import release_slots
from tests.security.conftest import AttackWorld
from tests.security.world import HW, OTHER_HW, Release, boot_state, last_result

_counter = iter(range(10**6))


def components(main_version: str = "1.0.0") -> dict[str, tuple[ComponentBinding, str | None]]:
    return {
        "main-fw": (ComponentBinding("main-fw", "acme"), main_version),
        "rev-fw": (ComponentBinding("rev-fw", "acme"), "0.1.0"),
        "vuln-fw": (ComponentBinding("vuln-fw", "acme"), "0.1.0"),
        "evil-fw": (ComponentBinding("evil-fw", "evil"), "0.1.0"),
        "app-fw": (ComponentBinding("app-fw", "acme"), "0.1.0"),
        "b-fw": (ComponentBinding("b-fw", "acme"), "0.1.0"),
    }


def refused(aw: AttackWorld, bundle: Path | io.RawIOBase | io.BytesIO, evidence: Evidence, code: str, *,
            component: str = "main-fw", main_version: str = "1.0.0",
            clock: Callable[[], float] | None = None) -> UpdateRefused:
    """Run the update on a fresh device; assert the code, the unchanged folder and the recorded result."""
    root = aw.world.device(f"dev{next(_counter)}", components(main_version))
    before = boot_state(root)
    with aw.world.updater(root, clock=clock) as up, pytest.raises(UpdateRefused) as err:
        up.update(bundle, evidence, component=component)  # type: ignore[arg-type]
    assert err.value.code == code, str(err.value)
    assert boot_state(root) == before
    result = last_result(root, component)
    assert result is not None and (result["op"], result["ok"], result["code"]) == ("update", False, code)
    return err.value


def bundle_bytes(rel: Release) -> bytes:
    return rel.path.read_bytes()


# ----------------------------------------------------------------------------- the header


def test_header_attested_by_fewer_than_k_trackers(attack_world: AttackWorld) -> None:
    """R10.a.ii, C11.1.a.v: a header counts only with k = 2 distinct provisioned trackers; one tracker
    attesting twice, or a key the device was not provisioned with, does not make a quorum."""
    w = attack_world.world
    ev = w.evidence(attack_world.head.record, trackers=w.trackers[:1])
    header = decode_header(ev.header_rlp)
    outsider = attest(Account.create(), header, chain_id=w.anchors.chain_id, registry=w.anchors.registry)
    ev = dataclasses.replace(ev, attestations=(ev.attestations[0], ev.attestations[0], outsider))
    refused(attack_world, attack_world.head.path, ev, "quorum_not_met")


def test_stale_header(attack_world: AttackWorld) -> None:
    """Freeze attack: a once-true header older than the maximum age (hiding newer releases and
    revocations) is refused even with a full quorum of attestations."""
    w = attack_world.world
    ev = w.evidence(attack_world.head.record)
    later = time.time() + w.anchors.max_header_age + 60
    refused(attack_world, attack_world.head.path, ev, "stale_header", clock=lambda: later)


def test_forged_storage_proof(attack_world: AttackWorld) -> None:
    """R10.a.ii: an untrusted node claims an unpublished release exists and is the head (forged slot
    value), or tampers with a proof node: the Merkle-Patricia proofs do not verify (bad_proof)."""
    w = attack_world.world
    rec = attack_world.unpublished.header.record
    published_like = dataclasses.replace(rec, data=dataclasses.replace(rec.data, publish_time=int(time.time())))
    ev = w.evidence(published_like)
    entry = release_slots(w.anchors.layout, published_like, HW).entry
    proof: dict[str, Any] = dict(ev.proof)
    proof["storageProof"] = [
        {**p, "value": hex(rec.data.version.packed << 8 | 8 | 1)} if int(p["key"], 16) == entry else p
        for p in proof["storageProof"]]
    refused(attack_world, attack_world.unpublished.path, dataclasses.replace(ev, proof=proof), "bad_proof")

    honest = w.evidence(attack_world.head.record)
    proof = dict(honest.proof)
    node = bytearray(bytes.fromhex(proof["accountProof"][-1][2:]))
    node[-1] ^= 0x01
    proof["accountProof"] = [*proof["accountProof"][:-1], "0x" + node.hex()]
    refused(attack_world, attack_world.head.path, dataclasses.replace(honest, proof=proof), "bad_proof")


# ----------------------------------------------------------------------------- the release on the ledger


def test_record_not_on_chain(attack_world: AttackWorld) -> None:
    """R10.d.ii: a bundle the vendor signed but never published (a leaked build) has no entry on the ledger."""
    w = attack_world.world
    rec = attack_world.unpublished.header.record
    claimed = dataclasses.replace(rec, data=dataclasses.replace(rec.data, publish_time=int(time.time())))
    refused(attack_world, attack_world.unpublished.path, w.evidence(claimed), "not_on_chain")


def test_revoked_release(attack_world: AttackWorld) -> None:
    """R10.a.i: the administrator revoked the release after publication."""
    rel = attack_world.revoked
    refused(attack_world, rel.path, attack_world.world.evidence(rel.record), "revoked", component="rev-fw")


def test_vulnerable_release(attack_world: AttackWorld) -> None:
    """R10.b.ii: a release flagged vulnerable is not installed."""
    rel = attack_world.vulnerable
    refused(attack_world, rel.path, attack_world.world.evidence(rel.record), "vulnerable", component="vuln-fw")


def test_older_release_while_a_newer_one_is_usable(attack_world: AttackWorld) -> None:
    """R10.d.i: only the newest versions: 1.0.0 is outdated by 1.1.0, usable by this class."""
    rel = attack_world.old
    refused(attack_world, rel.path, attack_world.world.evidence(rel.record), "not_newest", main_version="0.1.0")


@pytest.mark.parametrize("installed", ["1.1.0", "2.0.0"], ids=["equal", "older"])
def test_older_or_equal_version_is_a_rollback(attack_world: AttackWorld, installed: str) -> None:
    """R10.d.i, anti-rollback: the head 1.1.0 is refused on a device already at 1.1.0 or at 2.0.0."""
    rel = attack_world.head
    refused(attack_world, rel.path, attack_world.world.evidence(rel.record), "rollback", main_version=installed)


def test_record_from_a_revoked_vendor(attack_world: AttackWorld) -> None:
    """R10.a.iii: the vendor was revoked after publishing; its releases are no longer installed."""
    rel = attack_world.evil
    refused(attack_world, rel.path, attack_world.world.evidence(rel.record), "vendor_inactive", component="evil-fw")


# ----------------------------------------------------------------------------- the bundle


def test_signature_by_another_key(attack_world: AttackWorld) -> None:
    """R10.a.iii: the record is the published one, but the signature is not the proven vendor key's."""
    w = attack_world.world
    rel = attack_world.head
    forged = dataclasses.replace(rel.header, signature=sign_release(rel.header.record, Account.create(),
                                                                    w.anchors.chain_id, w.anchors.registry))
    data = forged.to_bytes() + bundle_bytes(rel)[rel.header.payload_offset:]
    refused(attack_world, io.BytesIO(data), w.evidence(rel.record), "bad_signature")


@pytest.mark.parametrize("how", ["payload", "record"])
def test_mix_and_match(attack_world: AttackWorld, how: str) -> None:
    """R10.a.ii: the head's genuine header with the payload of release 1.0.0 (same size) fails the
    first chunk's authentication; evidence of the head with the (genuine, signed) bundle of another
    release fails the record match."""
    w = attack_world.world
    head, old = attack_world.head, attack_world.old
    if how == "payload":
        assert head.header.record.data.file_size == old.header.record.data.file_size
        data = head.header.to_bytes() + bundle_bytes(old)[old.header.payload_offset:]
        refused(attack_world, io.BytesIO(data), w.evidence(head.record), "chunk_auth_failed")
    else:
        refused(attack_world, attack_world.unpublished.path, w.evidence(head.record), "record_mismatch")


def test_wrong_hardware_class(attack_world: AttackWorld) -> None:
    """Appendix II: b-fw is published for cls-b only; a cls-a device refuses it."""
    rel = attack_world.other_class
    assert rel.record.data.supported_hardware == (OTHER_HW,)
    refused(attack_world, rel.path, attack_world.world.evidence(rel.record), "wrong_hardware", component="b-fw")


def test_unmet_dependency(attack_world: AttackWorld) -> None:
    """Appendix II: app-fw 1.0.0 needs main-fw >= 2.0.0; the device runs main-fw 1.0.0."""
    rel = attack_world.needs_main2
    refused(attack_world, rel.path, attack_world.world.evidence(rel.record), "dependency_unmet", component="app-fw")


class Endless(io.RawIOBase):
    """The genuine bundle, then random bytes for ever; counts what the reader took."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = len(buf)
        head = self.data[self.pos:self.pos + n]
        chunk = head + os.urandom(n - len(head))
        buf[:n] = chunk
        self.pos += n
        return n


def test_payload_longer_than_the_record_says(attack_world: AttackWorld) -> None:
    """Endless-data attack: the device reads the record's file_size bytes and one more, then stops."""
    rel = attack_world.head
    stream = Endless(bundle_bytes(rel))
    refused(attack_world, stream, attack_world.world.evidence(rel.record), "trailing_bytes")
    assert stream.pos == rel.header.payload_offset + rel.header.record.data.file_size + 1


def test_one_flipped_bit_in_one_chunk(attack_world: AttackWorld) -> None:
    """R10.a.ii: one bit of chunk 2 flipped in transit: that chunk fails authentication, nothing of it
    is written, the install is abandoned."""
    rel = attack_world.head
    data = bytearray(bundle_bytes(rel))
    data[rel.header.payload_offset + 2 * CIPHER_CHUNK + 100] ^= 0x10
    refused(attack_world, io.BytesIO(bytes(data)), attack_world.world.evidence(rel.record), "chunk_auth_failed")


def test_truncated_payload(attack_world: AttackWorld) -> None:
    """A payload cut short (in a chunk, or at a chunk boundary) is refused."""
    rel = attack_world.head
    data = bundle_bytes(rel)
    ev = attack_world.world.evidence(rel.record)
    refused(attack_world, io.BytesIO(data[:-1000]), ev, "truncated")
    refused(attack_world, io.BytesIO(data[: rel.header.payload_offset + 2 * CIPHER_CHUNK]), ev, "truncated")


def test_content_key_wrapped_for_another_class(attack_world: AttackWorld) -> None:
    """R10.f: a server relabels the content key wrapped for cls-b as cls-a's (the encryption block is
    not signed): the class binding in the key derivation makes it unwrap to nothing."""
    rel = attack_world.head
    enc = rel.header.encryption
    theirs = next(r for r in enc.recipients if r.hardware == OTHER_HW)
    relabelled = Recipient(HW, theirs.ephemeral_public, theirs.wrapped_key)
    header = dataclasses.replace(rel.header, encryption=dataclasses.replace(
        enc, recipients=tuple(relabelled if r.hardware == HW else r for r in enc.recipients)))
    data = header.to_bytes() + bundle_bytes(rel)[rel.header.payload_offset:]
    refused(attack_world, io.BytesIO(data), attack_world.world.evidence(rel.record), "unwrap_failed")


def test_control_the_genuine_update_installs(attack_world: AttackWorld) -> None:
    """The control for every scenario above: the genuine bundle and evidence install and confirm."""
    rel = attack_world.head
    root = attack_world.world.device(f"dev{next(_counter)}", components())
    with attack_world.world.updater(root) as up:
        report = up.update(rel.path, attack_world.world.evidence(rel.record), component="main-fw")
    assert (report.outcome, str(report.verified.version), report.code) == ("confirmed", "1.1.0", None)
    assert (root / "components" / "main-fw" / f"slot_{report.slot}").read_bytes() == rel.image
