"""A resumed install downloads only what it does not hold, and still checks the whole payload.

The first pass of an update is cut mid-download (the server's connection drops and the device's
network allows no reconnection): the install stays journaled with what was written durable. The
next pass asks the server only for the rest (``Range: bytes=N-``, N the sealed size of the chunks
the slot holds): the slot's plaintext is sealed again under the content key and checked with the
rest against the signed record (size, SHA-256, Merkle root) before the trial boot. Whatever lies
in that pass is refused with its exact code, the install is abandoned (its slot emptied) and the
device is as it was before the first pass (slots, boot state, journal; ``last_result`` aside):

- ``other_bytes``: the server changes a byte of the resumed range: ``chunk_auth_failed``;
- ``own_key``: the server sends a header whose encryption block (unsigned) carries its own
  content key, wrapped for the device's class, and its own image sealed under it for the rest:
  every downloaded chunk authenticates, but the slot's plaintext sealed under that key is not
  the signed payload: ``hash_mismatch``;
- ``slot_tampered``: a byte of the slot's durable plaintext changes between the passes (a bad
  flash block, a local attacker); the genuine rest then does not make the signed payload either:
  ``hash_mismatch``.

The server is :class:`~tests.security.test_update_attacks.LyingServer`, a mocked transport: the
lying answers and the cut are faults a real server does not produce on request.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
from eth_account import Account

from entities.bundle import CIPHER_CHUNK, PLAIN_CHUNK
from entities.firmware_consumer import UpdateRefused, read_status
from entities.firmware_consumer.client import DownloadInterrupted, NetConfig, ServerClient
from entities.firmware_consumer.provision import ComponentBinding
from tests.security.conftest import AttackWorld
from tests.security.test_update_attacks import LyingServer
from tests.security.world import Release, boot_state, last_result

COMP = "big-fw"
#: eleven chunks; the first pass is cut after six arrived (all six are checked and written)
SIZE = 10 * PLAIN_CHUNK + 123
_names = itertools.count()


@pytest.fixture(scope="module")
def big(attack_world: AttackWorld) -> Release:
    return attack_world.world.release(COMP, "1.0.0", size=SIZE)


def _payload(rel: Release) -> bytes:
    return rel.path.read_bytes()[rel.header.payload_offset:]


def _client(server: LyingServer, **config: float) -> ServerClient:
    return ServerClient("http://fw.local", Account.create(), transport=server,
                        config=NetConfig(resume_backoff=0.0, **config))  # type: ignore[arg-type]


def _cut_first_pass(aw: AttackWorld, big: Release) -> tuple[Path, dict[str, object], int]:
    """A fresh device, and its first pass cut after six chunks: (root, its boot state before, the durable offset)."""
    w = aw.world
    root = w.device(f"resume{next(_names)}", {COMP: (ComponentBinding(COMP, "acme"), "0.1.0")})
    before = boot_state(root)
    server = LyingServer(big.header.canonical_json(), [(_payload(big), 6 * CIPHER_CHUNK)])
    client = _client(server, max_resumes=0)
    hh = big.record.header_hash
    with w.updater(root) as up, pytest.raises(DownloadInterrupted):
        up.update(client.bundle(hh, client.header(hh)), w.evidence(big.record), component=COMP)  # type: ignore[arg-type]
    (comp,) = read_status(root)["components"]
    durable = comp["install"]["durable"]
    assert durable == 6 * PLAIN_CHUNK  # every whole chunk that arrived before the line broke is durable
    return root, before, durable


def _second_pass(aw: AttackWorld, big: Release, root: Path, header: bytes, payload: bytes) -> tuple[object, LyingServer]:
    server = LyingServer(header, [payload])
    client = _client(server)
    hh = big.record.header_hash
    with aw.world.updater(root) as up:
        try:
            report: object = up.update(client.bundle(hh, client.header(hh)), aw.world.evidence(big.record),  # type: ignore[arg-type]
                                       component=COMP)
        except UpdateRefused as exc:
            report = exc
    image = f"/v1/images/0x{hh.hex()}"
    assert server.requests == [(image + "/header", None), (image, f"bytes={6 * CIPHER_CHUNK}-")]  # the rest only
    return report, server


def test_resumed_pass_downloads_only_the_rest(attack_world: AttackWorld, big: Release) -> None:
    """The control: the second pass fetches the payload from the first chunk it does not hold, and
    installs the image byte for byte."""
    root, _, durable = _cut_first_pass(attack_world, big)
    report, server = _second_pass(attack_world, big, root, big.header.canonical_json(), _payload(big))
    assert not isinstance(report, UpdateRefused), str(report)
    assert (report.outcome, report.resumed_from) == ("confirmed", durable)  # type: ignore[attr-defined]
    slot = report.slot  # type: ignore[attr-defined]
    assert (root / "components" / COMP / f"slot_{slot}").read_bytes() == big.image


@pytest.mark.parametrize("how", ["other_bytes", "own_key", "slot_tampered"])
def test_a_lie_in_the_resumed_pass_is_refused(attack_world: AttackWorld, big: Release, how: str) -> None:
    w = attack_world.world
    root, before, durable = _cut_first_pass(attack_world, big)
    header, payload = big.header.canonical_json(), bytearray(_payload(big))
    if how == "other_bytes":
        payload[8 * CIPHER_CHUNK + 5] ^= 0x01
        code = "chunk_auth_failed"
    elif how == "own_key":  # its own image, sealed under its own key, wrapped for the device's class
        own = w.build(COMP, "9.9.9", size=SIZE, signer=Account.create())  # (its own file: not big's)
        header = dataclasses.replace(big.header, encryption=own.header.encryption).canonical_json()
        payload = bytearray(_payload(own))
        code = "hash_mismatch"
    else:
        slot = next(s for s, v in read_status(root)["components"][0]["slots"].items() if v["status"] == "writing")
        path = root / "components" / COMP / f"slot_{slot}"
        data = bytearray(path.read_bytes())
        assert len(data) == durable
        data[PLAIN_CHUNK + 7] ^= 0x01
        path.write_bytes(bytes(data))
        code = "hash_mismatch"
    report, _ = _second_pass(attack_world, big, root, header, bytes(payload))
    assert isinstance(report, UpdateRefused) and report.code == code, str(report)
    assert boot_state(root) == before  # abandoned: slot emptied, no journal, the running image untouched
    result = last_result(root, COMP)
    assert result is not None and (result["ok"], result["code"]) == (False, code)
