"""The intermediate tracker module, the fleet CA's mutual TLS and the modules' reachability table
(X.1368 D8.2.3, R10.e.ii, C11.2 module rules; docs/MODULES.md sections 1, 5, 6).

Embedded chain; the server module and the intermediates run as uvicorn threads on 127.0.0.1
(free ports), the server module and upper intermediates over mutual TLS with certificates from a
fleet CA made per test. Devices are real secp256k1 keys sending raw signed requests
(:func:`entities.protocol.http_auth.sign_request`) and checking every answer's signature
(:func:`entities.protocol.http_auth.verify_response`) against the module they talk to. The only stand-in
is :class:`CompromisedIntermediate`, a mock of an intermediate an attacker controls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.asgi import ServerTLS
from entities.fleet_ca import init_ca, issue_certificate
from entities.protocol.commands import CommandError, new_command, sign_command, verify_command
from entities.protocol.http_auth import HDR_NONCE, sign_request, verify_response
from entities.status_tracker.app import TrackerThread, create_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from entities.status_tracker.evidence import Evidence, verify_evidence
from entities.status_tracker.intermediate import Answer, Intermediate, IntermediateThread, create_intermediate_app
from ledger_node.attestation import Attestation, trusted_header
from ledger_node.compiler import registry_contract
from ledger_node.fsutil import atomic_write_bytes
from ledger_node.providers import connect, dev_accounts
from ledger_node.registry import Registry, deploy
from tests.helpers import make_record

WAIT = 30.0
MAX_AGE = 3600.0


def key(n: int) -> LocalAccount:
    return Account.from_key(bytes([n]) * 32)


ADMIN = key(0x61)
#: the intermediates' identity keys, in the order the fleet makes them: every module of a fleet lists
#: them as its ``module_keys`` (module heartbeats are heard from configured keys only)
RELAY_KEYS = tuple(key(0xA0 + n) for n in range(8))


class Clock:
    """A test clock: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


# ----------------------------------------------------------------------------- the world


@dataclass
class Fleet:
    """A fleet CA, a rogue CA, and an embedded chain with a registry and one release."""

    tmp: Path
    w3: Any
    registry: Registry
    release_hash: str
    started: list[Any] = field(default_factory=list)
    relays_made: int = 0

    @property
    def module_keys(self) -> tuple[str, ...]:
        return tuple(k.address for k in RELAY_KEYS)

    @property
    def ca(self) -> Path:
        return self.tmp / "fleet-ca" / "ca.crt"

    def cert(self, name: str, role: str, ca_dir: str = "fleet-ca") -> tuple[Path, Path]:
        issued = issue_certificate(self.tmp / ca_dir, name, role, ["127.0.0.1"], self.tmp / "certs" / ca_dir)
        return issued.cert, issued.key

    def tls(self, name: str, role: str, *, require_client: bool = True, ca_dir: str = "fleet-ca") -> dict[str, Any]:
        crt, k = self.cert(name, role, ca_dir)
        return {"tls_cert": crt, "tls_key": k, "tls_ca": self.ca, "tls_require_client": require_client}

    def server(self, *, tls: dict[str, Any] | None = None, clock: Callable[[], float] = time.time,
               stale_after: float = 600.0, **settings: Any) -> Server:
        """A server module; ``settings``: more :class:`TrackerConfig` fields (``module_keys``
        defaults to the fleet's intermediates' keys)."""
        data = self.tmp / f"server-{len(self.started)}"
        settings.setdefault("module_keys", self.module_keys)
        cfg = TrackerConfig(data_dir=data, poll_interval=0.05, admission="open", admin_keys=(ADMIN.address,), stale_after=stale_after,
                            **(tls or {}), **settings).validate()
        tracker = Tracker(cfg, self.w3, self.registry.deployment, clock=clock)
        thread = TrackerThread(create_app(tracker), tls=_server_tls(cfg)).start()
        self.started.append(thread)
        srv = Server(thread.url, tracker.address, tracker, self)
        srv.wait_synced(int(self.w3.eth.block_number))
        return srv

    def intermediate(self, upstream: Node, *, tls: dict[str, Any] | None = None, serve_tls: bool = False,
                     pin: str | None = None, data: Path | None = None, poll_interval: float = 30.0,
                     follow: bool = False, cls: type[Intermediate] = Intermediate, **settings: Any) -> Relay:
        """An intermediate below ``upstream``; a new data folder gets the next of :data:`RELAY_KEYS`
        as its identity. ``settings``: more :class:`TrackerConfig` fields (``module_keys``
        defaults to the fleet's intermediates' keys, for cascades)."""
        data = data or self.tmp / f"relay-{len(self.started)}"
        if not (data / "tracker.key").exists():
            account = RELAY_KEYS[self.relays_made]
            self.relays_made += 1
            atomic_write_bytes(data / "tracker.key", (account.key.hex().removeprefix("0x") + "\n").encode(),
                               mode=0o600)
        settings.setdefault("module_keys", self.module_keys)
        cfg = TrackerConfig(data_dir=data, role="intermediate", poll_interval=poll_interval,
                            admin_keys=(ADMIN.address,), upstreams=(upstream.url,),
                            upstream_keys=(pin or upstream.address,), **(tls or {}), **settings).validate()
        module = cls(cfg)
        thread = IntermediateThread(create_intermediate_app(module, follow=follow),
                                    tls=_server_tls(cfg) if serve_tls else None)
        module.url = thread.url
        thread.start()
        self.started.append(thread)
        return Relay(thread.url, module.address, module, self, thread)


def _server_tls(cfg: TrackerConfig) -> ServerTLS | None:
    if cfg.tls_cert is None or cfg.tls_key is None or cfg.tls_ca is None:
        return None
    return ServerTLS(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_require_client)


@dataclass
class Node:
    """A module reachable over HTTP(S); requests present ``client_cert`` when TLS is on."""

    url: str
    address: str
    impl: Any
    fleet: Fleet

    def _tls(self, client_cert: tuple[Path, Path] | None) -> dict[str, Any]:
        if not self.url.startswith("https"):
            return {}
        return {"verify": str(self.fleet.ca), "cert": (str(client_cert[0]), str(client_cert[1])) if client_cert else None}

    def request(self, method: str, path: str, signer: LocalAccount | None = None, body: Any = None, *,
                client_cert: tuple[Path, Path] | None = None, headers: dict[str, str] | None = None
                ) -> requests.Response:
        data = b"" if body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if signer is not None:
            hdrs.update(sign_request(signer, method, path, data, audience=self.address))
        if data:
            hdrs["Content-Type"] = "application/json"
        return requests.request(method, self.url + path, data=data or None, headers=hdrs, timeout=WAIT,
                                **self._tls(client_cert))

    def ok(self, resp: requests.Response, status: int = 200) -> Any:
        """The answer, after checking this module signed it over the request it answers."""
        assert resp.status_code == status, resp.text
        nonce = resp.request.headers.get(HDR_NONCE)
        assert verify_response(resp.headers, resp.status_code, resp.request.path_url, resp.content,
                               request_nonce=nonce, tracker=self.address) == self.address
        return resp.json()


@dataclass
class Server(Node):
    def wait_synced(self, block: int) -> None:
        end = time.monotonic() + WAIT
        while (self.impl.ledger_block() or -1) < block:
            assert time.monotonic() < end, "the server module never synced"
            time.sleep(0.05)


@dataclass
class Relay(Node):
    thread: Any = None

    def health(self) -> dict[str, Any]:
        return self.ok(self.request("GET", "/health"))  # type: ignore[no-any-return]

    def counters(self) -> dict[str, int]:
        return self.health()["counters"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.thread.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    init_ca(tmp_path / "fleet-ca")
    init_ca(tmp_path / "rogue-ca")
    w3 = connect("embedded")
    admin, vendor = dev_accounts(w3, 2)
    reg = Registry(w3, deploy(w3, admin), admin)
    reg.add_vendor(vendor.address, "acme")
    reg.add_hardware("cam-r1", 1, b"\x01" * 32)
    reg.set_policy("cam-r1", "acme", "main-fw", allowed=True)
    res = reg.with_account(vendor).publish(make_record("1.0.0", hardware=("cam-r1",)))
    f = Fleet(tmp_path, w3, reg, "0x" + res.header_hash.hex())
    yield f
    for thread in reversed(f.started):
        thread.stop()


def report(device_id: str, version: str = "1.0.0") -> dict[str, Any]:
    return {"device_id": device_id, "hardware": "cam-r1", "addons": {}, "location": "lab-1",
            "components": {"main-fw": {"vendor": "acme", "version": version, "slot": "A"}}, "ready": True,
            "last_result": None}


def code(resp: requests.Response) -> str:
    return str(resp.json()["error"]["code"])


def wait(pred: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + WAIT
    while not pred():
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.05)


# ============================================================================= relaying and Via


def test_heartbeats_through_one_and_two_intermediates_reach_the_server_with_their_via_chain(fleet: Fleet) -> None:
    """D8.2.3, C11.2.b-c: device B talks to intermediate I1 (over HTTPS without a certificate),
    device A to I2 below I1; both heartbeats reach the server module's inventory, the server
    records each device's route (nearest module first), each module lists the one below it with
    the devices seen, and each device gets its answer signed by the module it talks to."""
    server = fleet.server(tls=fleet.tls("server", "server"))
    i1 = fleet.intermediate(server, tls=fleet.tls("i1", "intermediate", require_client=False), serve_tls=True,
                            poll_interval=0.2, follow=True)
    i2 = fleet.intermediate(i1, tls=fleet.tls("i2", "intermediate"), poll_interval=0.2, follow=True)
    dev_a, dev_b = key(0x71), key(0x72)

    out = i2.ok(i2.request("POST", "/v1/devices/heartbeat", dev_a, report("dev-a")))
    assert out["device_id"] == "dev-a" and out["registered"] is True
    out = i1.ok(i1.request("POST", "/v1/devices/heartbeat", dev_b, report("dev-b")))
    assert out["device_id"] == "dev-b"

    assert {r.device_id: r.address for r in server.impl.inventory.devices()} == {
        "dev-a": dev_a.address, "dev-b": dev_b.address}
    admin_cert = fleet.cert("admin", "client")

    def server_modules() -> dict[str, Any]:
        return server.ok(server.request("GET", "/v1/modules", ADMIN, client_cert=admin_cert))  # type: ignore[no-any-return]

    routes = server_modules()["routes"]
    assert routes["dev-a"]["via"] == [i2.address, i1.address] and routes["dev-a"]["upstream"] == i2.address
    assert routes["dev-b"]["via"] == [i1.address] and routes["dev-b"]["upstream"] == i1.address
    # module heartbeats (every poll_interval): the server knows I1 and its devices, I1 knows I2
    wait(lambda: any(m["address"] == i1.address and set(m["devices"]) == {"dev-a", "dev-b"}
                     for m in server_modules()["modules"]), "I1 in the server's modules with both devices")
    wait(lambda: any(m["address"] == i2.address and m["devices"] == ["dev-a"] and m["reachability"] == "reachable"
                     for m in i1.ok(i1.request("GET", "/v1/modules", ADMIN))["modules"]), "I2 in I1's modules")
    mod = next(m for m in server_modules()["modules"] if m["address"] == i1.address)
    assert mod["role"] == "intermediate" and mod["url"] == i1.url and mod["reachability"] == "reachable"
    assert i2.health()["upstreams"][0]["reachable"] is True
    # a request already relayed by this module (a loop) is refused
    resp = i1.request("POST", "/v1/devices/heartbeat", dev_b, report("dev-b"), headers={"X-Fwledger-Via": i1.address})
    assert i1.ok(resp, 400)["error"]["code"] == "module_loop"
    # operator reads on the modules table need an administrator
    assert code(i1.request("GET", "/v1/modules", dev_a)) == "forbidden"


# ============================================================================= the cache


def test_twenty_devices_cost_one_upstream_fetch_per_answer(fleet: Fleet) -> None:
    """R10.e.ii: 20 devices asking one intermediate, concurrently, for the evidence of a release,
    the attestation and the attestations of the same block (and the newest block's, without a
    block) cost the server module one request per distinct answer: 3 fetches and one newest-block
    query. What the devices get verifies against the server module's key (k = 1)."""
    server = fleet.server(tls=fleet.tls("server", "server"))
    relay = fleet.intermediate(server, tls=fleet.tls("relay", "intermediate"))
    block = int(server.impl.ledger_block())
    hh = fleet.release_hash
    paths = [f"/v1/evidence/{hh}?hardware=cam-r1&block={block}", f"/v1/attestation/{block}",
             f"/v1/attestations/{block}", "/v1/attestation", f"/v1/evidence/{hh}?hardware=cam-r1"]

    def device(n: int) -> list[Any]:
        return [relay.ok(relay.request("GET", p, key(0x80 + n))) for p in paths]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(device, range(20)))
    assert all(a == answers[0] for a in answers)
    ev_json, att, atts, head, ev_head = answers[0]
    assert ev_head == ev_json and head == att and att["attestation"]["block_number"] == block
    counters = relay.counters()
    assert counters["fetched"] == 3 and counters["head_refreshes"] == 1
    assert counters["upstream_requests"] == 4, counters
    assert counters["cache_hits"] == 20 * len(paths) - 3  # the newest block's answers are cached ones too
    assert counters["served_bytes"] >= 19 * counters["upstream_bytes"] > 0

    # what the devices got is the server module's, and verifies with its key only
    compiled = registry_contract()
    dep = fleet.registry.deployment
    proven = verify_evidence(Evidence.from_json(ev_json), chain_id=fleet.w3.eth.chain_id, registry=dep.address,
                             code_hash=compiled.runtime_code_hash, compiled=compiled, trackers=[server.address],
                             quorum=1, now=time.time(), max_age=MAX_AGE, hw_id="cam-r1")
    assert proven.entry.exists and proven.entry.head
    header = trusted_header(bytes.fromhex(atts["header_rlp"][2:]),
                            [Attestation.from_json(a) for a in atts["attestations"]],
                            chain_id=fleet.w3.eth.chain_id, registry=dep.address, trackers=[server.address],
                            quorum=1, now=time.time(), max_age=MAX_AGE)
    assert header.number == block
    # an unknown release is the server's refusal, relayed and not cached
    missing = "0x" + "ab" * 32
    assert relay.ok(relay.request("GET", f"/v1/evidence/{missing}?block={block}"), 404)["error"]["code"] \
        == "unknown_release"
    assert relay.health()["cached_answers"] == 3


def test_restart_keeps_the_cache_and_the_reachability_table(fleet: Fleet) -> None:
    """An intermediate restarted on the same data folder answers cached evidence without asking
    upstream again, and still lists the modules and device routes it knew."""
    server = fleet.server()
    data = fleet.tmp / "relay-data"
    lower = key(0x91)
    relay = fleet.intermediate(server, data=data, module_keys=(lower.address,))
    block = int(server.impl.ledger_block())
    path = f"/v1/evidence/{fleet.release_hash}?hardware=cam-r1&block={block}"
    first = relay.ok(relay.request("GET", path))
    assert relay.ok(relay.request("POST", "/v1/modules/heartbeat", lower,
                                  {"role": "intermediate", "url": "http://127.0.0.1:1", "devices": ["dev-x"]}))[
        "registered"] is True
    relay.ok(relay.request("POST", "/v1/devices/heartbeat", key(0x92), report("dev-y")))
    assert relay.counters()["fetched"] == 1
    relay.stop()

    again = fleet.intermediate(server, data=data, module_keys=(lower.address,))
    assert again.address == relay.address  # same identity key
    assert again.ok(again.request("GET", path)) == first
    counters = again.counters()
    assert (counters["fetched"], counters["upstream_requests"], counters["cache_hits"]) == (0, 0, 1)
    listed = again.ok(again.request("GET", "/v1/modules", ADMIN))
    assert [m["address"] for m in listed["modules"]] == [lower.address]
    assert listed["modules"][0]["devices"] == ["dev-x"]
    assert listed["routes"]["dev-y"]["via"] == []


# ============================================================================= mutual TLS and pinned keys


def test_upstream_with_a_certificate_from_another_ca_is_refused(fleet: Fleet) -> None:
    """C11.2 module rules a-b: an upstream whose certificate the fleet CA did not issue fails the
    TLS handshake; the intermediate forwards nothing, answers ``upstream_untrusted`` and says so
    in its health."""
    rogue = fleet.server(tls={**fleet.tls("rogue", "server", ca_dir="rogue-ca"),
                              "tls_ca": fleet.tmp / "rogue-ca" / "ca.crt", "tls_require_client": False})
    relay = fleet.intermediate(rogue, tls=fleet.tls("relay", "intermediate"))
    resp = relay.request("POST", "/v1/devices/heartbeat", key(0x73), report("dev-r"))
    assert relay.ok(resp, 502)["error"]["code"] == "upstream_untrusted"
    assert "certificate" in resp.json()["error"]["message"]
    block = int(rogue.impl.ledger_block())
    assert code(relay.request("GET", f"/v1/attestation/{block}")) == "upstream_untrusted"
    health = relay.health()
    assert health["upstream_untrusted"] is True and health["status"] == "degraded"
    assert health["upstreams"][0]["last_error_code"] == "upstream_untrusted"
    assert rogue.impl.inventory.devices() == [] and health["cached_answers"] == 0


def test_a_tls_server_module_refuses_a_client_without_a_fleet_certificate(fleet: Fleet) -> None:
    """MODULES.md 5: with tls_require_client, no certificate (or one from another CA): no answer."""
    server = fleet.server(tls=fleet.tls("server", "server"))
    assert server.url.startswith("https://")
    with pytest.raises(requests.exceptions.RequestException):
        server.request("GET", "/health")
    rogue_cert = fleet.cert("rogue-client", "client", ca_dir="rogue-ca")
    with pytest.raises(requests.exceptions.RequestException):
        server.request("GET", "/health", client_cert=rogue_cert)
    assert server.ok(server.request("GET", "/health", client_cert=fleet.cert("ok", "client")))["address"] \
        == server.address


def test_an_upstream_answering_with_an_unpinned_key_is_refused(fleet: Fleet) -> None:
    """C11.2.d: the intermediate pins its upstream's signing key; answers signed by any other
    key (here: the real server module, pinned to another address) are refused, not relayed,
    not cached."""
    server = fleet.server(tls=fleet.tls("server", "server"))
    relay = fleet.intermediate(server, tls=fleet.tls("relay", "intermediate"), pin=key(0x99).address)
    resp = relay.request("POST", "/v1/devices/heartbeat", key(0x74), report("dev-p"))
    body = relay.ok(resp, 502)
    assert body["error"]["code"] == "upstream_untrusted" and "wrong_tracker" in body["error"]["message"]
    block = int(server.impl.ledger_block())
    assert code(relay.request("GET", f"/v1/evidence/{fleet.release_hash}?block={block}")) == "upstream_untrusted"
    health = relay.health()
    assert health["upstream_untrusted"] is True and health["cached_answers"] == 0


# ============================================================================= commands are end to end


class CompromisedIntermediate(Intermediate):
    """A MOCK of a compromised intermediate: it relays a heartbeat, then rewrites the answer's
    commands (retargets the upgrade, or forges one with its own key). The app still signs the
    altered answer with this module's (valid, provisioned as a relay) key."""

    forge = False

    def relay(self, method: str, path: str, headers: Any, body: bytes) -> Answer:
        answer = super().relay(method, path, headers, body)
        out = json.loads(answer.body)
        envelope = out["commands"][0]
        cmd = dict(envelope["command"])
        cmd["upgrades"] = [{**cmd["upgrades"][0], "to_version": "6.6.6", "link": "http://evil.example/fw"}]
        if self.forge:
            envelope = sign_command(self.account, {**cmd, "issuer": self.address})
        else:
            envelope = {**envelope, "command": cmd}
        out["commands"] = [envelope]
        return replace(answer, body=json.dumps(out).encode())


def test_an_intermediate_cannot_alter_or_forge_a_command(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """MODULES.md 1: a command is signed end to end by the server module. Through an honest
    intermediate the server's command arrives byte for byte and verifies; through a compromised
    one (mock), the answer is validly relay-signed but the altered command fails
    ``command_bad_signature`` and a forged one ``command_unknown_issuer``."""
    server = fleet.server()
    device = key(0x75)
    cmd = new_command(issuer=server.address, device_id="dev-c", device_address=device.address,
                      chain_id=int(fleet.w3.eth.chain_id), registry=fleet.registry.address, issued_at=int(time.time()),
                      ttl=600, block=int(server.impl.ledger_block()), upgrades=[{
                          "product": "main-fw", "vendor": "acme", "from_version": "0.9.0", "to_version": "1.0.0",
                          "header_hash": fleet.release_hash, "link": "http://fw.example/fw"}])
    envelope = sign_command(server.impl.account, cmd)
    heartbeat = type(server.impl).heartbeat
    # the server module answers with this command (as its rollout logic would)
    monkeypatch.setattr(type(server.impl), "heartbeat",
                        lambda self, signer, hb, **kw: {**heartbeat(self, signer, hb, **kw), "commands": [envelope]})

    def check(out: dict[str, Any]) -> Any:
        return verify_command(out["commands"][0], issuers=[server.address], device_id="dev-c",
                              device_address=device.address, chain_id=int(fleet.w3.eth.chain_id),
                              registry=fleet.registry.address, now=time.time())

    honest = fleet.intermediate(server)
    out = honest.ok(honest.request("POST", "/v1/devices/heartbeat", device, report("dev-c")))
    assert out["commands"] == [envelope] and check(out).command_id == cmd["command_id"]

    evil = fleet.intermediate(server, cls=CompromisedIntermediate)
    out = evil.ok(evil.request("POST", "/v1/devices/heartbeat", device, report("dev-c")))  # relay signature fine
    with pytest.raises(CommandError) as exc:
        check(out)
    assert exc.value.code == "command_bad_signature"
    evil.impl.forge = True
    out = evil.ok(evil.request("POST", "/v1/devices/heartbeat", device, report("dev-c")))
    with pytest.raises(CommandError) as exc:
        check(out)
    assert exc.value.code == "command_unknown_issuer"


# ============================================================================= reachability


def test_modules_list_an_intermediate_unreachable_after_stale_after(fleet: Fleet) -> None:
    """C11.2 c: the upstream keeps each module's last heartbeat; past ``stale_after`` (test clock)
    without one, the module is listed unreachable, and reachable again after its next one."""
    clock = Clock()
    server = fleet.server(clock=clock, stale_after=60.0)
    relay = fleet.intermediate(server)
    relay.impl.heartbeat_upstreams()

    def state() -> str:
        mods = server.ok(server.request("GET", "/v1/modules", ADMIN))["modules"]
        assert [m["address"] for m in mods] == [relay.address]
        return str(mods[0]["reachability"])

    assert state() == "reachable"
    clock.offset += 61
    assert state() == "unreachable"
    relay.impl.heartbeat_upstreams()
    assert state() == "reachable"
    up = relay.health()["upstreams"][0]
    assert up["reachable"] is True and up["last_ok"] is not None and up["last_error"] is None
    assert relay.counters()["module_heartbeats"] == 2
