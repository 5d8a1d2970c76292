"""One scenario per attack on a device's update, each refused with its code before harm is done.

Every update scenario runs the real pipeline (:class:`Updater` over a provisioned device folder, ledger
proofs from the embedded chain) and asserts three things: the refusal's code; that the device
folder is byte-for-byte what it was (slot files, device.json, safe image, journal, provisioning
files, and each component's state apart from ``last_result``); and that the code was recorded as
the component's last result, for the tracker (X.1368 R10.c.i). Payload attacks (endless data,
flipped bit, truncation, mix-and-match, wrong key) get past verification and begin an install in
the inactive slot: the install is abandoned and the slot emptied, so the folder is again as before.

The command scenarios at the end (forged, altered in transit, expired, for another device or
chain, replayed) run the device agent against a real tracker behind a hostile relay and assert
the exact ``command_*`` code, no install, and the refusal logged and reported.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.bundle import CIPHER_CHUNK, Recipient, sign_release
from entities.firmware_consumer import Device, UpdateRefused
from entities.firmware_consumer.agent import COMMAND_LOG_FILE, Agent, AgentConfig, PassReport
from entities.firmware_consumer.client import NetConfig, ServerClient
from entities.firmware_consumer.provision import ComponentBinding, load_provisioning, provision_device
from entities.firmware_consumer.updater import Updater
from entities.firmware_consumer.verify import Evidence
from entities.protocol.commands import CommandLog, new_command, parse_command, sign_command
from entities.protocol.http_auth import IDENTITY_PATH, sign_request, sign_response
from entities.service_identity import fetch_identity
from entities.status_tracker.app import TrackerThread
from entities.status_tracker.app import create_app as create_tracker_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from ledger_node.attestation import attest
from ledger_node.header import decode_header
from ledger_node.lightnode import release_slots
from tests.integration.test_device_commands import Relay
from tests.security.conftest import AttackWorld
from tests.security.world import HW, OTHER_HW, Release, boot_state, factory_image, last_result

_ADMIN = Account.from_key(b"\x52" * 32)

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


class LyingServer:
    """A :class:`~entities.firmware_consumer.client.Transport` mocking a lying firmware server: it
    answers the header request with ``header``'s genuine bytes, then each payload request with the
    next of ``payloads`` (from the offset its ``Range`` asks for, 206 then); a payload given as
    ``(bytes, n)`` is cut after ``n`` bytes (the connection drops). ``requests`` logs
    ``(path, Range)`` of every request."""

    def __init__(self, header: bytes, payloads: list[bytes | tuple[bytes, int]]) -> None:
        self.header, self.payloads = header, list(payloads)
        self.requests: list[tuple[str, str | None]] = []
        self.key = Account.create()

    def send(self, method: str, url: str, headers: Any, body: bytes) -> Any:
        path = "/" + url.split("/", 3)[3]
        if path == IDENTITY_PATH:  # who answers (any key: a lying server proves only itself)
            me = json.dumps({"address": self.key.address}).encode()
            return _Answer(200, sign_response(self.key, 200, path, me, headers), me)
        rng = headers.get("Range")
        self.requests.append((path, rng))
        if path.endswith("/header"):
            return _Answer(200, {}, self.header)
        item = self.payloads.pop(0)
        data, cut = item if isinstance(item, tuple) else (item, len(item))
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        hdrs = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if rng else {}
        return _Answer(206 if rng else 200, hdrs, data[start:cut])

    def close(self) -> None:
        pass


class _Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self._body = status, headers, io.BytesIO(body)

    def read(self, n: int) -> bytes:
        return self._body.read(n)

    def close(self) -> None:
        pass


def _payload(rel: Release) -> bytes:
    return bundle_bytes(rel)[rel.header.payload_offset:]


@pytest.mark.parametrize("how", ["path_replaced", "file_rewritten", "server_payload", "server_resumed_range"])
def test_bundle_changed_between_check_and_use(attack_world: AttackWorld, tmp_path: Path, how: str) -> None:
    """TUF/Uptane "metadata changed between check and use": once the head's bundle is verified,
    the attacker swaps in another bundle the vendor validly signed (main-fw 1.0.0, same payload
    size) before the install reads the payload.

    The updater reads a bundle once, front to back, from one stream: the header is parsed and
    verified, then the payload is streamed from the same stream and checked against the
    *verified* header (per-chunk AES-GCM under its content key, then the record's size, hash and
    Merkle root). A bundle given as a path is opened once (one file descriptor); a networked
    bundle is the header fetched once, then the payload of *that* header hash (P4).

    - ``path_replaced``: the path is atomically replaced (rename) the moment the install begins
      (the Device probe's first journal write, after verification and consent): no effect, the
      open descriptor still reads the verified file; the verified release is what is installed.
    - ``file_rewritten``: the same file is overwritten in place with the other bundle at that
      moment: the payload no longer authenticates under the verified header
      (``chunk_auth_failed``); nothing installed.
    - ``server_payload`` (a lying server, mocked by a transport): the genuine header, then the
      other release's payload for the payload request: ``chunk_auth_failed``; nothing installed.
    - ``server_resumed_range``: the genuine payload for two chunks, a cut connection, then the
      other release's payload for the ``Range`` resume: ``chunk_auth_failed``; nothing installed.
    """
    w = attack_world.world
    head, old = attack_world.head, attack_world.old
    assert head.header.record.data.file_size == old.header.record.data.file_size
    ev = w.evidence(head.record)
    if how.startswith("server"):
        payloads: list[bytes | tuple[bytes, int]] = (
            [_payload(old)] if how == "server_payload"
            else [(_payload(head), 2 * CIPHER_CHUNK), _payload(old)])
        server = LyingServer(head.header.canonical_json(), payloads)
        client = ServerClient("http://fw.local", Account.create(), transport=server,
                              config=NetConfig(resume_backoff=0.0))
        header = client.header(head.record.header_hash)                      # the check: the header, once
        refused(attack_world, client.bundle(head.record.header_hash, header), ev,  # type: ignore[arg-type]
                "chunk_auth_failed")
        image = f"/v1/images/0x{head.record.header_hash.hex()}"
        assert server.requests == [(image + "/header", None), (image, None)] + (
            [(image, f"bytes={2 * CIPHER_CHUNK}-")] if how == "server_resumed_range" else [])
        return

    path = tmp_path / "update.fwb"
    shutil.copyfile(head.path, path)
    swapped: list[str] = []

    def swap(label: str) -> None:  # the first durable step of the install: verification is over
        if swapped or not label.startswith("journal main-fw begin"):
            return
        if how == "path_replaced":
            os.replace(shutil.copyfile(old.path, tmp_path / "other.fwb"), path)
        else:
            with path.open("r+b") as fh:
                fh.write(bundle_bytes(old))
                fh.truncate()
        swapped.append(label)

    root = w.device(f"dev{next(_counter)}", components())
    before = boot_state(root)
    with Device(root, health_check=lambda ctx: True, probe=swap) as dev:
        up = Updater.from_provisioning(dev, load_provisioning(root))
        if how == "path_replaced":
            report = up.update(path, ev, component="main-fw")
        else:
            with pytest.raises(UpdateRefused) as err:
                up.update(path, ev, component="main-fw")
    assert swapped and path.read_bytes() == bundle_bytes(old)  # the swap happened, after the check
    if how == "path_replaced":
        assert (report.outcome, str(report.verified.version)) == ("confirmed", "1.1.0")
        assert (root / "components" / "main-fw" / f"slot_{report.slot}").read_bytes() == head.image
    else:
        assert err.value.code == "chunk_auth_failed", str(err.value)
        assert boot_state(root) == before
        result = last_result(root, "main-fw")
        assert result is not None and (result["ok"], result["code"]) == (False, "chunk_auth_failed")


def test_control_the_genuine_update_installs(attack_world: AttackWorld) -> None:
    """The control for every scenario above: the genuine bundle and evidence install and confirm."""
    rel = attack_world.head
    root = attack_world.world.device(f"dev{next(_counter)}", components())
    with attack_world.world.updater(root) as up:
        report = up.update(rel.path, attack_world.world.evidence(rel.record), component="main-fw")
    assert (report.outcome, str(report.verified.version), report.code) == ("confirmed", "1.1.0", None)
    assert (root / "components" / "main-fw" / f"slot_{report.slot}").read_bytes() == rel.image


# ----------------------------------------------------------------------------- update commands (MODULES.md 1-3)
#
# A real server-module tracker (key: the world's first tracker key) behind a relay that stands in
# for a hostile intermediate module: it re-signs every answer with its own key (which the device
# accepts as an answer signer, anchors.relays) and replaces the commands of heartbeat answers with
# the scenario's. Each scenario asserts the exact ``command_*`` code, that nothing was installed
# (the device folder as before, the agent's own memory aside), and that the refusal is logged
# (the agent's command log) and reported as the device's last result to the tracker.


@dataclass
class CommandWorld:
    aw: AttackWorld
    issuer: LocalAccount
    tracker_url: str
    relay: Relay


@pytest.fixture(scope="module")
def command_world(attack_world: AttackWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommandWorld]:
    w = attack_world.world
    issuer = w.trackers[0]
    data = tmp_path_factory.mktemp("cmd-tracker")
    (data / "tracker.key").write_text(issuer.key.hex())
    relay_key = Account.from_key(b"\x6f" * 32)
    cfg = TrackerConfig(data_dir=data, poll_interval=0.05, admission="open", admin_keys=(_ADMIN.address,),
                        module_keys=(relay_key.address,))  # the relay in front of it
    thread = TrackerThread(create_tracker_app(Tracker(cfg, w.w3, w.admin.deployment))).start()
    relay = Relay([thread.url], relay_key)
    try:
        yield CommandWorld(attack_world, issuer, thread.url, relay)
    finally:
        relay.close()
        thread.stop()


def command_device(cw: CommandWorld) -> Path:
    """A fresh device whose only tracker URL is the relay; it trusts the tracker (k = 1) and the relay."""
    w = cw.aw.world
    root = w.tmp / "devices" / f"cmd{next(_counter)}"
    anchors = dataclasses.replace(w.anchors, trackers=(cw.issuer.address,), quorum=1, relays=(cw.relay.address,))
    provision_device(root, device_id=root.name, hardware=HW, components={c: b for c, (b, _) in components().items()},
                     anchors=anchors, class_private_key=w.class_keys[HW].private_bytes_raw(),
                     factory={c: factory_image(c, v) for c, (_, v) in components().items() if v is not None},
                     health_command=["true"])
    return root


def make_command(cw: CommandWorld, root: Path, rel: Release | None = None, *, signer: LocalAccount | None = None,
                 from_version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    """A command for ``root`` to install ``rel`` (default: main-fw's head), signed by ``signer``
    (default: the tracker), with ``fields`` of the command set before signing."""
    rel = rel or cw.aw.head
    signer = signer or cw.issuer
    prov = load_provisioning(root)
    d = rel.record.data
    cmd = new_command(issuer=signer.address, device_id=root.name, device_address=prov.identity.address,
                      chain_id=prov.anchors.chain_id, registry=prov.anchors.registry, issued_at=int(time.time()),
                      ttl=600, block=int(cw.aw.world.w3.eth.block_number),
                      upgrades=[{"product": d.product, "vendor": d.vendor_name, "from_version": from_version,
                                 "to_version": str(d.version), "header_hash": "0x" + rel.record.header_hash.hex(),
                                 "link": d.file_link}])
    cmd.update(fields)
    return sign_command(signer, cmd)


def deliver(cw: CommandWorld, root: Path, *envelopes: Any) -> PassReport:
    """One agent pass (a fresh agent: a restart) whose heartbeat answer carries ``envelopes``."""
    cw.relay.inject = lambda _real: list(envelopes)
    with Agent(root, AgentConfig(trackers=(cw.relay.url,), follow="commands")) as agent:
        return agent.check_and_update()


def untouched(root: Path) -> dict[str, Any]:
    return {k: v for k, v in boot_state(root).items() if not k.startswith("agent/")}


def tracker_view(cw: CommandWorld, device_id: str) -> dict[str, Any]:
    path = f"/v1/devices/{device_id}"
    resp = requests.get(cw.tracker_url + path, headers=sign_request(_ADMIN, "GET", path, audience=fetch_identity(cw.tracker_url)),
                        timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def command_refused(cw: CommandWorld, root: Path, envelope: Any, code: str) -> None:
    """Deliver ``envelope``: refused with ``code``, nothing installed, the refusal logged and reported."""
    before = untouched(root)
    report = deliver(cw, root, envelope)
    (entry,) = report.commands
    assert (entry["accepted"], entry["code"]) == (False, code), entry
    assert report.results == [] and report.plan == [] and not report.ok and report.refusals == [entry]
    assert untouched(root) == before
    state = json.loads((root / "agent" / "agent.json").read_text())
    last = state["command_log"][-1]
    assert (last["event"], last["code"], last.get("resent")) == ("refused", code, None)
    assert state["last_refusal"]["code"] == code
    assert tracker_view(cw, root.name)["last_result"]["code"] == code  # the final heartbeat carried it


def test_command_forged_with_an_unknown_key(command_world: CommandWorld) -> None:
    """MODULES.md 1: only a provisioned server module issues orders. A key the device does not know
    signs a well-formed command for it (``command_unknown_issuer``); so does the relay, whose key
    the device trusts for answers only; a command naming the tracker as issuer but signed by
    another key does not verify (``command_bad_signature``)."""
    cw = command_world
    root = command_device(cw)
    command_refused(cw, root, make_command(cw, root, signer=Account.create()), "command_unknown_issuer")
    command_refused(cw, root, make_command(cw, root, signer=cw.relay.key), "command_unknown_issuer")
    forged = make_command(cw, root, signer=Account.create())
    forged["command"]["issuer"] = cw.issuer.address
    command_refused(cw, root, forged, "command_bad_signature")
    command_refused(cw, root, {"command": {"type": "update"}, "signature": "0x00"}, "command_malformed")


def test_command_altered_in_transit(command_world: CommandWorld) -> None:
    """MODULES.md 1: an intermediate relays a command byte for byte; one that changes the target
    version or the release's header hash (to push another build) breaks the issuer's signature."""
    cw = command_world
    root = command_device(cw)
    env = make_command(cw, root)
    env["command"]["upgrades"][0]["to_version"] = "9.9.9"
    command_refused(cw, root, env, "command_bad_signature")
    env = make_command(cw, root)
    env["command"]["upgrades"][0]["header_hash"] = "0x" + cw.aw.old.record.header_hash.hex()
    command_refused(cw, root, env, "command_bad_signature")
    env = make_command(cw, root)
    env["command"]["expires_at"] += 3600  # stretching its life
    command_refused(cw, root, env, "command_bad_signature")


def test_command_expired(command_world: CommandWorld) -> None:
    """MODULES.md 2: a command held back past its expiry (beyond the clock skew) is refused; so is one
    dated in the future."""
    cw = command_world
    root = command_device(cw)
    now = int(time.time())
    command_refused(cw, root, make_command(cw, root, issued_at=now - 3600, expires_at=now - 3000), "command_expired")
    command_refused(cw, root, make_command(cw, root, issued_at=now + 3600, expires_at=now + 4000),
                    "command_not_yet_valid")


def test_command_for_another_device_or_chain(command_world: CommandWorld) -> None:
    """MODULES.md 2: a genuine command for another device (its id, or this id with another key) or
    for another chain or registry is refused."""
    cw = command_world
    root = command_device(cw)
    other = command_device(cw)
    command_refused(cw, root, make_command(cw, other), "command_wrong_device")
    command_refused(cw, root, make_command(cw, root, device_address=Account.create().address),
                    "command_wrong_device")
    chain_id = load_provisioning(root).anchors.chain_id
    command_refused(cw, root, make_command(cw, root, chain_id=chain_id + 1), "command_wrong_chain")


def test_command_replayed_also_after_a_restart(command_world: CommandWorld) -> None:
    """MODULES.md 2-3: a command's id is recorded before it is acted on. Delivered again (to the same
    agent, or after a restart), it is refused ``command_replayed`` and nothing runs twice; the one
    acted on is logged as a re-send (its results are what the tracker gets). A command whose id was
    recorded but not acted on (a crash right after) is resumed when re-sent, then refused."""
    cw = command_world
    root = command_device(cw)
    env = make_command(cw, root, cw.aw.revoked, from_version="0.1.0")  # acted on: refused by the ledger proofs
    first = deliver(cw, root, env)
    assert first.commands[0]["accepted"] and [r.ok for r in first.results] == [False]
    assert [r.download for r in first.results] == [None]
    before = untouched(root)
    cw.relay.inject = lambda _real: [env]
    with Agent(root, AgentConfig(trackers=(cw.relay.url,), follow="commands")) as agent:
        for _ in range(2):  # the same agent, twice
            again = agent.check_and_update()
            (entry,) = again.commands
            assert (entry["accepted"], entry["code"], entry["resent"]) == (False, "command_replayed", True)
            assert again.results == [] and again.refusals == []
    restarted = deliver(cw, root, env)
    assert [(c["code"], c["resent"]) for c in restarted.commands] == [("command_replayed", True)]
    assert restarted.results == [] and untouched(root) == before
    log = json.loads((root / "agent" / "agent.json").read_text())["command_log"]
    assert [(e["event"], e.get("resent")) for e in log if e["command_id"] == env["command"]["command_id"]][-3:] == [
        ("refused", True)] * 3

    # recorded, then the device stopped before acting (a power cut): the same signed command,
    # re-sent, resumes and completes it; once done, it is a replay like any other
    crashed = make_command(cw, root)
    CommandLog(root / COMMAND_LOG_FILE).accept(parse_command(crashed["command"]))
    resumed = deliver(cw, root, crashed)
    (entry,) = resumed.commands
    assert (entry["accepted"], entry.get("resumed")) == (True, True), entry
    # acted on: the release proves fine and the download is attempted (this world serves no payload)
    assert [(r.product, r.code) for r in resumed.results] == [("main-fw", "server_unreachable")]
    replay = deliver(cw, root, crashed)
    assert [(c["code"], c["resent"]) for c in replay.commands] == [("command_replayed", True)]
    assert replay.results == []
    # a tampered copy of an unfinished command is still refused: resuming re-checks everything
    unfinished = make_command(cw, root, cw.aw.revoked, from_version="0.1.0")
    CommandLog(root / COMMAND_LOG_FILE).accept(parse_command(unfinished["command"]))
    unfinished["command"]["expires_at"] += 60
    command_refused(cw, root, unfinished, "command_bad_signature")
