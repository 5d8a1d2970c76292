"""The payload request sent ahead: a new install asks the firmware server for its payload while
the device makes the slot ready (journal, state, truncation), never before the bundle's header is
verified and the device accepted the install, never for a resumed install (it asks for the rest
only, with ``Range``), and an answer sent ahead that is never read is closed.

The server is :class:`~tests.security.test_update_attacks.LyingServer` (a mocked transport), here
honest but for the refusals and cuts a real server does not make on request; it records which
thread sent each request.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from entities.firmware_consumer import NotInSafeMode, read_status
from entities.firmware_consumer.client import NetConfig, ServerClient, ServerUnreachable
from entities.firmware_consumer.provision import ComponentBinding
from entities.firmware_consumer.transport import ConnectionLost
from tests.security.conftest import AttackWorld
from tests.security.test_update_attacks import LyingServer
from tests.security.world import Release, boot_state

COMP = "pf-fw"
_names = itertools.count()


@pytest.fixture(scope="module")
def rel(attack_world: AttackWorld) -> Release:
    return attack_world.world.release(COMP, "1.0.0", size=300_000)


class _Server(LyingServer):
    """Also records the thread that sent each request, and can refuse the payload's connection."""

    def __init__(self, *args: Any, unreachable: bool = False) -> None:
        super().__init__(*args)
        self.threads: list[str] = []
        self.unreachable = unreachable

    def send(self, method: str, url: str, headers: Any, body: bytes) -> Any:
        if not url.endswith("/identity"):
            self.threads.append(threading.current_thread().name)
        if self.unreachable and not url.endswith(("/identity", "/header")):
            self.requests.append(("/" + url.split("/", 3)[3], headers.get("Range")))
            raise ConnectionLost("connection refused")
        return super().send(method, url, headers, body)


def _payload(rel: Release) -> bytes:
    return rel.path.read_bytes()[rel.header.payload_offset:]


def _client(server: LyingServer) -> ServerClient:
    return ServerClient("http://fw.local", Account.create(), transport=server,
                        config=NetConfig(resume_backoff=0.0, max_resumes=0))  # type: ignore[arg-type]


def _device(aw: AttackWorld) -> Path:
    return aw.world.device(f"prefetch{next(_names)}", {COMP: (ComponentBinding(COMP, "acme"), "0.1.0")})


def test_a_new_install_sends_its_payload_request_while_the_slot_is_made_ready(attack_world: AttackWorld,
                                                                            rel: Release) -> None:
    """One payload request, whole (no Range), sent from the request-ahead thread; the image is
    installed byte for byte and confirmed."""
    root = _device(attack_world)
    server = _Server(rel.header.canonical_json(), [_payload(rel)])
    client = _client(server)
    hh = rel.record.header_hash
    with attack_world.world.updater(root) as up:
        report = up.update(client.bundle(hh, client.header(hh)), attack_world.world.evidence(rel.record),  # type: ignore[arg-type]
                           component=COMP)
    image = f"/v1/images/0x{hh.hex()}"
    assert server.requests == [(image + "/header", None), (image, None)]
    assert server.threads[-1] == "payload-request"
    assert report.outcome == "confirmed"
    assert (root / "components" / COMP / f"slot_{report.slot}").read_bytes() == rel.image


def test_an_install_the_device_refuses_sends_no_payload_request(attack_world: AttackWorld, rel: Release) -> None:
    """The device's own refusal (here: a recovery install asked outside safe mode) comes before
    any payload request; nothing is written (C11.1.b)."""
    root = _device(attack_world)
    before = boot_state(root)
    server = _Server(rel.header.canonical_json(), [_payload(rel)])
    client = _client(server)
    hh = rel.record.header_hash
    with attack_world.world.updater(root) as up, pytest.raises(NotInSafeMode):
        up.update(client.bundle(hh, client.header(hh)), attack_world.world.evidence(rel.record),  # type: ignore[arg-type]
                  component=COMP, recover=True)
    assert server.requests == [(f"/v1/images/0x{hh.hex()}/header", None)]
    assert boot_state(root) == before and read_status(root)["components"][0]["install"] is None


def test_a_request_sent_ahead_fails_like_one_sent_when_read(attack_world: AttackWorld, rel: Release) -> None:
    """The server cannot be reached for the payload: the updater gets the same error (and code)
    as without the request sent ahead; the install stays journaled at offset 0, the running image untouched."""
    root = _device(attack_world)
    running = (root / "components" / COMP / "slot_a").read_bytes()
    server = _Server(rel.header.canonical_json(), [_payload(rel)], unreachable=True)
    client = _client(server)
    hh = rel.record.header_hash
    with attack_world.world.updater(root) as up, pytest.raises(ServerUnreachable) as err:
        up.update(client.bundle(hh, client.header(hh)), attack_world.world.evidence(rel.record),  # type: ignore[arg-type]
                  component=COMP)
    assert err.value.code == "server_unreachable"
    assert server.threads[-1] == "payload-request"
    (comp,) = read_status(root)["components"]
    assert (comp["install"]["durable"], comp["confirmed"], comp["slots"]["a"]["version"]) == (0, "a", "0.1.0")
    assert (root / "components" / COMP / "slot_a").read_bytes() == running


def test_a_request_sent_ahead_and_never_read_is_closed(rel: Release) -> None:
    """A stream dropped after its payload request was sent ahead (the device failed to make its
    slot ready) closes that answer; it can no longer skip ahead; a second prefetch sends nothing."""
    closed: list[bool] = []

    class Tracked(_Server):
        def send(self, method: str, url: str, headers: Any, body: bytes) -> Any:
            answer = super().send(method, url, headers, body)
            if not url.endswith(("/identity", "/header")):
                real = answer.close

                def close() -> None:
                    closed.append(True)
                    real()
                answer.close = close
            return answer

    server = Tracked(rel.header.canonical_json(), [_payload(rel)])
    client = _client(server)
    hh = rel.record.header_hash
    stream = client.bundle(hh, client.header(hh))
    stream.prefetch()
    stream.prefetch()
    with pytest.raises(ValueError, match="skips forward"):
        stream.seek(10)
    stream.close()
    assert closed == [True] and [r for r in server.requests if not r[0].endswith("/header")] == [
        (f"/v1/images/0x{hh.hex()}", None)]
