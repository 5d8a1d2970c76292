"""Device identity and admission against real processes (X.1368 P4, C11.3 d and h, C11.2 a-c).

A firmware server (``fwledger server run``) and a tracker server module (``fwledger tracker run``)
run as processes on an anvil chain with ``--admission required``; the operator is the home's
admin key and admits devices with the CLI (``fwledger fleet ...``), which pushes its signed
records to both. Every attack of the issue "Device identity and admission" is here:

- fake devices (fresh keys, ids of their choosing) are refused, never enrolled, commanded or
  counted, so they can neither halt a rollout nor pass its canary; their results are refused;
- squatting: a fresh key presenting an admitted device's id is refused and the genuine device
  keeps working;
- a self-declared region or hardware class grants nothing: the admission's labels decide;
- a key replacement and a decommissioning by the operator reach both services at once;
- the pending queue: an unannounced device waits there until the operator accepts or rejects it;
- a manufacture certificate from a pinned CA admits its device on first contact, a rogue CA's does not;
- a signed request names its audience: captured at one tracker or firmware server, it is refused
  by another of the same operator, and nothing is recorded there.
"""

from __future__ import annotations

import json
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities import stack
from entities.protocol.http_auth import sign_request
from tests.integration import test_deployments as deployments
from tests.integration.procs import Proc, wait_for
from tests.integration.test_deployments import ADMIN, HW_A, HW_B, MAIN, World, set_waves

anvil_rpc, world = deployments.anvil_rpc, deployments.world  # the deployment tests' fixtures: one test world

GENUINE = Account.from_key(b"\x61" * 32)
NEW_KEY = Account.from_key(b"\x62" * 32)
FAKES = [Account.from_key(bytes([0x70 + i]) * 32) for i in range(3)]


# ----------------------------------------------------------------------------- the services and requests


def services(world: World, *extra: str, name: str = "") -> tuple[Proc, Proc]:
    """The firmware server and the tracker's server module, admission required, the operator ADMIN
    (``name``: a suffix of their data folders, for a second pair)."""
    srv = world.procs.service("server" + name, ["server", "run", "--host", "127.0.0.1", "--port", "{port}", "--data",
                                                str(world.tmp / f"server{name}"), "--poll-interval", "0.2",
                                                "--admission", "required", "--operator-key", ADMIN.address, *extra])
    data = world.tmp / f"tracker{name}"
    trk = world.procs.service("tracker" + name, ["tracker", "run", "--role", "server", "--listen", "127.0.0.1:{port}",
                                          "--data", str(data), "--poll-interval", "0.2", "--admin-key",
                                          ADMIN.address, "--admission", "required", *extra],
                              address=stack._service_key(data / "tracker.key"))
    world.procs.wait_healthy(srv, trk, check=lambda h: h.get("ledger_block") is not None)
    return srv, trk


def beat(trk: Proc, account: LocalAccount, device_id: str, *, version: str = "1.0.0", hardware: str = HW_A,
         location: str | None = None, certificate: str | None = None) -> requests.Response:
    body: dict[str, Any] = {"device_id": device_id, "hardware": hardware, "addons": {}, "location": location,
                            "components": {MAIN: {"vendor": "acme", "version": version, "slot": "a"}},
                            "ready": True, "last_result": None}
    if certificate is not None:
        body["certificate"] = certificate
    return trk.request("POST", "/v1/devices/heartbeat", account, body)


def register(srv: Proc, account: LocalAccount, device_id: str, *, hardware: str = HW_A,
             location: str | None = None, certificate: str | None = None) -> requests.Response:
    body: dict[str, Any] = {"device_id": device_id, "hardware": hardware}
    if location is not None:
        body["location"] = location
    if certificate is not None:
        body["certificate"] = certificate
    return srv.request("POST", "/v1/devices", account, body)


def code(resp: requests.Response) -> str:
    return str(resp.json().get("error", {}).get("code"))


def operator_get(srv: Proc, world: World, path: str, *, name: str = "") -> Any:
    token = (world.tmp / f"server{name}" / "admin.token").read_text().strip()
    resp = requests.get(str(srv.url) + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def fleet(world: World, *args: str) -> dict[str, Any]:
    """``fwledger fleet ARGS --json`` as the operator; it must succeed."""
    res = world.fwledger("fleet", *args, "--json")
    assert res.returncode == 0, f"fleet {args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def admit(world: World, srv: Proc, trk: Proc, device_id: str, key: str, *labels: str, hardware: str = HW_A) -> None:
    out = fleet(world, "admit", device_id, "--key", key, "--hardware", hardware,
                *(a for lb in labels for a in ("--label", lb)), "--service", str(srv.url), "--service", str(trk.url))
    assert out["ok"] and all(r == {"applied": 1, "stale": 0} for r in out["services"].values()), out


# ----------------------------------------------------------------------------- the attacks


def test_fake_devices_and_a_squatter_are_refused_and_cannot_steer_a_rollout(world: World) -> None:
    set_waves(world, [0.5, 1.0])
    srv, trk = services(world)
    admit(world, srv, trk, "dev-01", GENUINE.address, "region=lab")
    assert beat(trk, GENUINE, "dev-01").status_code == 200

    # fresh keys with ids of their choosing, and one squatting the genuine device's id
    for i, fake in enumerate(FAKES):
        resp = beat(trk, fake, f"fake-{i}")
        assert (resp.status_code, code(resp)) == (403, "not_admitted"), resp.text
        resp = register(srv, fake, f"fake-{i}")
        assert (resp.status_code, code(resp)) == (403, "not_admitted"), resp.text
    squat = beat(trk, FAKES[0], "dev-01")
    assert (squat.status_code, code(squat)) == (403, "device_key_mismatch")
    squat = register(srv, FAKES[0], "dev-01")
    assert (squat.status_code, code(squat)) == (403, "device_key_mismatch")

    rel = world.publish(srv, MAIN, "1.1.0")
    block = int(world.w3.eth.block_number)
    wait_for(lambda: (trk.health().get("ledger_block") or -1) >= block, 60, "the tracker indexed the release")

    def command() -> dict[str, Any] | None:
        resp = beat(trk, GENUINE, "dev-01")
        assert resp.status_code == 200, resp.text
        cmds = resp.json()["commands"]
        return cmds[0] if cmds else None

    cmd = wait_for(command, 60, "the genuine device is commanded")
    # the fakes keep trying: heartbeats with the release's version, failures for the genuine command
    failure = {"command_id": cmd["command"]["command_id"], "results": [
        {"header_hash": rel.header_hash, "product": MAIN, "to_version": "1.1.0", "ok": False,
         "code": "trial_boot_failed", "message": "watchdog"}]}
    for i, fake in enumerate(FAKES):
        resp = trk.request("POST", f"/v1/devices/fake-{i}/results", fake, failure)
        assert (resp.status_code, code(resp)) == (403, "not_admitted"), resp.text
        resp = trk.request("POST", "/v1/devices/dev-01/results", fake, failure)
        assert (resp.status_code, code(resp)) == (403, "device_key_mismatch"), resp.text
        assert code(beat(trk, fake, f"fake-{i}", version="1.1.0")) == "not_admitted"

    rollouts = trk.signed("GET", "/v1/rollouts", ADMIN)
    assert [(r["header_hash"], r["state"], r["failed"]) for r in rollouts] == [(rel.header_hash, "running", 0)]
    members = trk.signed("GET", f"/v1/rollouts/{rollouts[0]['id']}", ADMIN)["members"]
    assert [m["device_id"] for m in members] == ["dev-01"]
    assert [d["device_id"] for d in trk.signed("GET", "/v1/devices", ADMIN)] == ["dev-01"]
    pending = trk.signed("GET", "/v1/admissions/pending", ADMIN)
    assert sorted((p["device_id"], p["address"]) for p in pending) == \
        [(f"fake-{i}", f.address) for i, f in enumerate(FAKES)]
    assert [d["device_id"] for d in operator_get(srv, world, "/v1/devices")] == []  # nobody registered

    # the genuine device still reports, once per command
    ok = {**failure, "results": [{**failure["results"][0], "ok": True, "code": None, "message": None}]}
    assert trk.request("POST", "/v1/devices/dev-01/results", GENUINE, ok).status_code == 200
    again = trk.request("POST", "/v1/devices/dev-01/results", GENUINE, ok)
    assert (again.status_code, code(again)) == (409, "already_reported")
    ro = trk.signed("GET", f"/v1/rollouts/{rollouts[0]['id']}", ADMIN)
    assert (ro["state"], ro["succeeded"], ro["failed"]) == ("completed", 1, 0)


def test_a_self_declared_region_or_class_grants_nothing(world: World) -> None:
    srv, trk = services(world)
    token = (world.tmp / "server" / "admin.token").read_text().strip()
    rules = requests.post(str(srv.url) + "/v1/admin/location-rules", timeout=30,
                          headers={"Authorization": f"Bearer {token}"},
                          json={"rules": [{"action": "allow", "region": "eu-*"}, {"action": "deny"}]})
    assert rules.status_code == 200, rules.text
    eu, us = Account.from_key(b"\x63" * 32), Account.from_key(b"\x64" * 32)
    admit(world, srv, trk, "dev-eu", eu.address, "region=eu-west")
    admit(world, srv, trk, "dev-us", us.address, "region=us-east")
    rel = world.publish(srv, MAIN, "1.1.0")
    path = f"/v1/images/{rel.header_hash}/header"
    wait_for(lambda: srv.request("GET", path, eu).status_code == 200, 60, "dev-eu is served")
    # dev-us declares the allowed region and the other class: the admission decides
    reg = register(srv, us, "dev-us", hardware=HW_B, location="eu-west")
    assert reg.status_code == 201 and (reg.json()["hardware"], reg.json()["location"]) == (HW_A, "us-east"), reg.text
    resp = srv.request("GET", path, us)
    assert (resp.status_code, code(resp)) == (403, "location_denied"), resp.text
    hb = beat(trk, us, "dev-us", hardware=HW_B, location="eu-west")
    assert hb.status_code == 200
    row = trk.signed("GET", "/v1/devices/dev-us", ADMIN)
    assert (row["hardware"], row["location"]) == (HW_A, "us-east")
    assert any(e["detail"].get("declared") == {"hardware": HW_B, "location": "eu-west"} for e in row["log"])
    # a key nobody admitted gets nothing, whatever it declares
    stranger = Account.from_key(b"\x65" * 32)
    resp = srv.request("GET", path, stranger)
    assert (resp.status_code, code(resp)) == (403, "not_admitted")
    downloads = operator_get(srv, world, "/v1/downloads")
    assert {(d["address"], d["outcome"], d["code"]) for d in downloads if d["address"] != eu.address} == \
        {(us.address, "refused", "location_denied"), (stranger.address, "refused", "not_admitted")}


def test_a_key_replacement_and_a_decommissioning_reach_both_services(world: World) -> None:
    srv, trk = services(world)
    admit(world, srv, trk, "dev-01", GENUINE.address, "region=lab")
    assert beat(trk, GENUINE, "dev-01").status_code == 200
    assert register(srv, GENUINE, "dev-01").status_code == 201

    fleet(world, "rekey", "dev-01", "--key", NEW_KEY.address, "--service", str(srv.url), "--service", str(trk.url))
    for resp in (beat(trk, GENUINE, "dev-01"), register(srv, GENUINE, "dev-01")):
        assert (resp.status_code, code(resp)) == (403, "device_key_mismatch"), resp.text
    assert beat(trk, NEW_KEY, "dev-01").status_code == 200
    assert register(srv, NEW_KEY, "dev-01").status_code == 201
    assert trk.signed("GET", "/v1/devices/dev-01", ADMIN)["address"] == NEW_KEY.address

    out = fleet(world, "decommission", "dev-01", "--service", str(srv.url), "--service", str(trk.url))
    assert out["records"][0]["status"] == "decommissioned"
    for resp in (beat(trk, NEW_KEY, "dev-01"), register(srv, NEW_KEY, "dev-01")):
        assert (resp.status_code, code(resp)) == (403, "decommissioned"), resp.text
    listing = fleet(world, "list")
    assert [(r["device_id"], r["status"], r["address"]) for r in listing] == \
        [("dev-01", "decommissioned", NEW_KEY.address)]
    # a replay of the old admission changes nothing anywhere
    old = json.loads((world.home / "fleet" / "admissions.json").read_text())["records"]["dev-01"]
    stale = {**old, "status": "admitted"}
    for svc in (srv, trk):
        resp = requests.post(str(svc.url) + "/v1/admissions", json={"records": [stale]}, timeout=30)
        assert (resp.status_code, code(resp)) in ((401, "bad_signature"), (422, "bad_signature")), resp.text
    assert code(beat(trk, NEW_KEY, "dev-01")) == "decommissioned"
    # records signed by anyone but the operator are refused whole
    forged = requests.post(str(trk.url) + "/v1/admissions", timeout=30, json={"records": [
        {**old, "issuer": FAKES[0].address}]})
    assert forged.status_code in (401, 403) and code(forged) in ("bad_signature", "unknown_operator")


def test_the_pending_queue_accept_and_reject(world: World) -> None:
    srv, trk = services(world)
    newcomer, unwanted = Account.from_key(b"\x66" * 32), Account.from_key(b"\x67" * 32)
    assert code(beat(trk, newcomer, "dev-02")) == "not_admitted"
    assert code(beat(trk, unwanted, "dev-03")) == "not_admitted"
    env = {"FWLEDGER_TRACKER": str(trk.url)}
    res = world.fwledger("fleet", "pending", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert sorted(p["device_id"] for p in json.loads(res.stdout)) == ["dev-02", "dev-03"]
    res = world.fwledger("fleet", "accept", "dev-02", "--label", "region=lab", "--service", str(srv.url), "--json",
                         env=env)
    assert res.returncode == 0, res.stderr
    assert beat(trk, newcomer, "dev-02").status_code == 200
    reg = register(srv, newcomer, "dev-02")
    assert reg.status_code == 201 and reg.json()["location"] == "lab"
    res = world.fwledger("fleet", "reject", "dev-03", "--json", env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["rejected"] == 1, res.stderr
    resp = beat(trk, unwanted, "dev-03")
    assert (resp.status_code, code(resp)) == (403, "rejected")
    assert trk.signed("GET", "/v1/admissions/pending", ADMIN) == []
    res = world.fwledger("fleet", "reject", "dev-09", env=env)
    assert res.returncode == 1 and "no pending device dev-09" in res.stderr


def test_a_manufacture_certificate_admits_its_device_on_first_contact(world: World) -> None:
    mca, rogue = world.tmp / "mca", world.tmp / "rogue"
    for folder in (mca, rogue):
        assert world.fwledger("fleet", "ca-init", "--dir", str(folder), "--name", "acme factory CA").returncode == 0
    srv, trk = services(world, "--manufacturer-ca", str(mca / "ca.crt"))
    root = world.provision("dev-cert", HW_A, trackers=[trk.address])
    res = world.fwledger("fleet", "certify", str(root), "--ca-dir", str(mca), "--label", "region=eu-west", "--json")
    assert res.returncode == 0, res.stderr
    cert = (root / "keys" / "device.crt").read_text()
    agent = world.procs.device("dev-cert", root, "--tracker", str(trk.url), "--server", str(srv.url))
    world.procs.wait_passes(agent)
    row = trk.signed("GET", "/v1/devices/dev-cert", ADMIN)
    assert (row["hardware"], row["location"]) == (HW_A, "eu-west")
    listing = trk.signed("GET", "/v1/admissions", ADMIN)
    assert [(a["device_id"], a["source"]) for a in listing["admissions"]] == [("dev-cert", "certificate")]
    identity = Account.from_key(bytes.fromhex((root / "keys" / "identity.key").read_text().strip()))
    assert register(srv, identity, "dev-cert", certificate=cert).status_code == 201
    # the certificate is bound to its key and id; a rogue CA's certificate admits nothing
    thief = Account.from_key(b"\x68" * 32)
    assert code(beat(trk, thief, "dev-cert", certificate=cert)) == "device_key_mismatch"
    assert code(beat(trk, thief, "dev-thief", certificate=cert)) == "bad_certificate"
    other = world.provision("dev-rogue", HW_A, trackers=[trk.address])
    assert world.fwledger("fleet", "certify", str(other), "--ca-dir", str(rogue)).returncode == 0
    rogue_id = Account.from_key(bytes.fromhex((other / "keys" / "identity.key").read_text().strip()))
    resp = beat(trk, rogue_id, "dev-rogue", certificate=(other / "keys" / "device.crt").read_text())
    assert (resp.status_code, code(resp)) == (403, "bad_certificate")
    resp = register(srv, rogue_id, "dev-rogue", certificate=(other / "keys" / "device.crt").read_text())
    assert (resp.status_code, code(resp)) == (403, "bad_certificate")
    assert [d["device_id"] for d in trk.signed("GET", "/v1/devices", ADMIN)] == ["dev-cert"]


def test_a_request_captured_at_one_service_is_refused_by_another(world: World) -> None:
    """P4, C11.2 a, C11.3 d: signed requests name the service they are for (its key, learnt from
    ``GET /v1/identity``). The same device is admitted at two trackers and two firmware servers of
    one operator; its heartbeat, its registration and an operator's request, each captured at the
    first service, are refused ``wrong_audience`` by the second, which records nothing, and are
    accepted where they were meant to go."""
    srv_a, trk_a = services(world)
    srv_b, trk_b = services(world, name="-b")
    admit(world, srv_a, trk_a, "dev-gen", GENUINE.address)
    admit(world, srv_b, trk_b, "dev-gen", GENUINE.address)
    assert trk_a.audience() != trk_b.audience() and srv_a.audience() != srv_b.audience()

    def capture(proc: Proc, signer: LocalAccount, method: str, path: str, body: Any = None) -> tuple[bytes, dict[str, str]]:
        data = b"" if body is None else json.dumps(body).encode()
        headers = {**sign_request(signer, method, path, data, audience=proc.audience()),
                   "Content-Type": "application/json"}
        return data, headers

    def send(proc: Proc, method: str, path: str, data: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.request(method, str(proc.url) + path, data=data or None, headers=headers, timeout=30)

    hb = {"device_id": "dev-gen", "hardware": HW_A, "addons": {}, "location": None,
          "components": {MAIN: {"vendor": "acme", "version": "1.0.0", "slot": "a"}}, "ready": True,
          "last_result": None}
    data, headers = capture(trk_a, GENUINE, "POST", "/v1/devices/heartbeat", hb)
    replayed = send(trk_b, "POST", "/v1/devices/heartbeat", data, headers)
    assert (replayed.status_code, code(replayed)) == (401, "wrong_audience")
    assert trk_a.address in replayed.json()["error"]["message"]
    assert trk_b.signed("GET", "/v1/devices", ADMIN) == []
    assert send(trk_a, "POST", "/v1/devices/heartbeat", data, headers).status_code == 200

    reg = {"device_id": "dev-gen", "hardware": HW_A}
    data, headers = capture(srv_a, GENUINE, "POST", "/v1/devices", reg)
    replayed = send(srv_b, "POST", "/v1/devices", data, headers)
    assert (replayed.status_code, code(replayed)) == (401, "wrong_audience")
    assert [d["device_id"] for d in operator_get(srv_b, world, "/v1/devices", name="-b")] == []
    assert send(srv_a, "POST", "/v1/devices", data, headers).status_code == 201

    data, headers = capture(trk_a, ADMIN, "GET", "/v1/admissions")
    replayed = send(trk_b, "GET", "/v1/admissions", data, headers)
    assert (replayed.status_code, code(replayed)) == (401, "wrong_audience")
    assert send(trk_a, "GET", "/v1/admissions", data, headers).status_code == 200
