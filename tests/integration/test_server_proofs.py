"""The firmware server as a light node (X.1368 Figure II.2) against a LYING JSON-RPC node.

The server reads the chain through a real HTTP proxy on 127.0.0.1
(:class:`tests.integration.lying_rpc.LyingRpc`) in front of the embedded chain or anvil, which
hides chosen registry events from the server's full node (a revocation, a policy, a vendor's
revocation), rewrites ``eth_getProof`` values or forges block headers. On the embedded chain the
server runs in this process; on anvil it is the real ``fwledger server run`` process with
``--rpc`` the proxy (and ``--verify-rpc`` the node itself). Every refusal asserts the HTTP status,
the exact code and that nothing was stored or served; through the honest proxy the server stores,
publishes and serves as before. Reuses the world and clients of tests/integration/server_world.py.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests

from entities.author.publish import publish_bundle
from entities.firmware_server.app import create_app
from entities.firmware_server.config import ServerConfig
from entities.firmware_server.ledger import LedgerView
from entities.firmware_server.runner import ServerThread
from entities.header_sources import OwnNode, SecondNode, header_source
from ledger_node.compiler import registry_contract
from ledger_node.errors import ConfigError
from ledger_node.proofs import vyper_hashmap_slot
from ledger_node.providers import connect
from ledger_node.record import line_id
from ledger_node.registry import save_deployment
from ledger_node.registry_types import REVOKED
from tests.integration.lying_rpc import LyingRpc
from tests.integration.procs import wait_for
from tests.integration.server_world import (  # noqa: F401
    Server,
    World,
    code_of,
    digest_of,
    fetch,
    new_device,
    payload_of,
    register,
    start_process,
    upload,
    world,
)

WAIT = 60.0


def proxied(world: World, proxy: LyingRpc, tmp: Path, name: str = "srv", *, verify_rpc: bool = False,  # noqa: F811
            proof_max_age: float = 5.0) -> Server:
    """A firmware server whose node is ``proxy`` (a thread on the embedded chain, a process on anvil);
    ``verify_rpc``: headers must be agreed by the chain's own node as a second node."""
    data = tmp / name
    if world.chain.backend == "embedded":
        config = ServerConfig(data_dir=data, poll_interval=0.1, admission="open", proof_max_age=proof_max_age)
        source = SecondNode("the embedded chain", world.chain.w3, max_lag=8) if verify_rpc else None
        ledger = LedgerView(connect(proxy.url), world.registry.deployment, config.ledger_index_path,
                            source=source, proof_max_age=config.proof_max_age)
        app = create_app(config, ledger)
        thread = ServerThread(app).start()
        return Server(thread.url, data, thread.stop, app=app)
    home = tmp / f"{name}-home"
    save_deployment(home, world.registry.deployment)
    through = dataclasses.replace(world, chain=dataclasses.replace(world.chain, rpc=proxy.url))
    flags = ["--verify-rpc", world.chain.rpc] if verify_rpc else []
    with mock.patch.dict(os.environ, {"FWLEDGER_SERVER_PROOF_MAX_AGE": str(proof_max_age)}):
        return start_process(through, home, data, *flags, log=tmp / f"{name}.log")


def upstream(world: World) -> Any:  # noqa: F811
    return world.chain.w3 if world.chain.backend == "embedded" else world.chain.rpc


def wait_synced(srv: Server, block: int) -> dict[str, Any]:
    """Until the server's index and its trusted header both stand at ``block`` or later."""
    end = time.monotonic() + WAIT
    while True:
        health = requests.get(srv.url + "/health", timeout=10).json()
        if (health["ledger_block"] or 0) >= block and (health["proven_block"] or 0) >= block:
            return health  # type: ignore[no-any-return]
        if time.monotonic() > end:
            raise AssertionError(f"server never reached block {block}: {health}")
        time.sleep(0.05)


def last_download(srv: Server) -> tuple[str, str | None]:
    rows = srv.rows("SELECT outcome, code FROM downloads ORDER BY id DESC LIMIT 1")
    return rows[0][0], rows[0][1]


def published_and_served(world: World, srv: Server, tmp: Path, version: str = "1.0.0") -> tuple[str, Any, Any]:  # noqa: F811
    """The honest path: upload, publish, the device gets the payload. Returns (header hash, header, device)."""
    bundle, header, _ = world.bundle(tmp, version)
    receipt = publish_bundle(bundle, [srv.url], world.as_vendor(world.chain.vendor))
    srv.wait_state(digest_of(world, header), "published")
    device = new_device()
    assert register(srv, device, f"cam-{version}").status_code == 201
    hh = "0x" + receipt.header_hash.hex()
    got = fetch(srv, device, f"/v1/images/{hh}")
    assert got.status_code == 200 and got.content == payload_of(bundle)
    return hh, header, device


# ------------------------------------------------------------------------------ downloads


def test_a_hidden_revocation_is_never_served(world: World, tmp_path: Path) -> None:  # noqa: F811
    """The node hides the ``Revoked`` event: its index still says the release is fine, the proof at the
    header of the index's block says revoked: ``ledger_mismatch``; with the proof's value forged too, the
    proof does not verify: ``ledger_unproven``. Nothing is served either way."""
    with LyingRpc(upstream(world)) as proxy:
        srv = proxied(world, proxy, tmp_path)
        try:
            hh, header, device = published_and_served(world, srv, tmp_path)
            assert proxy.calls.get("eth_getProof", 0) >= 1  # the honest path was proven too

            proxy.hide_events = {"Revoked"}
            entry = vyper_hashmap_slot(registry_contract().slot("releases"), line_id("acme", "cam-fw"),
                                       bytes.fromhex(hh[2:]))  # the record on chain: its publish time is the block's
            word = int.from_bytes(world.chain.w3.eth.get_storage_at(world.registry.address, entry), "big")
            proxy.forge_slots = {entry: word & ~REVOKED}  # "not revoked" over the real proof nodes
            res = world.registry.revoke("acme", "cam-fw", bytes.fromhex(hh[2:]), "bricks cameras")
            wait_synced(srv, res.block)
            before = srv.snapshot()
            got = fetch(srv, device, f"/v1/images/{hh}")
            assert (got.status_code, code_of(got)) == (503, "ledger_unproven")
            assert "cannot prove the ledger at block" in got.json()["error"]["message"]
            assert srv.snapshot() == before and last_download(srv) == ("refused", "ledger_unproven")

            proxy.forge_slots = {}
            got = fetch(srv, device, f"/v1/images/{hh}/header")
            assert (got.status_code, code_of(got)) == (502, "ledger_mismatch")
            assert f"release {hh} is not revoked (it is, proven)" in got.json()["error"]["message"]
            assert srv.snapshot() == before and last_download(srv) == ("refused", "ledger_mismatch")
            assert srv.image_state(digest_of(world, header)) == "published"  # the server's index never knew
        finally:
            srv.stop()


def test_a_hidden_policy_grants_no_entitlement(world: World, tmp_path: Path) -> None:  # noqa: F811
    """The administrator forbids the line for cam-r1; the node hides the ``PolicySet`` event, so its
    index has no policy and would serve: the proven policy word refuses (``ledger_mismatch``)."""
    with LyingRpc(upstream(world)) as proxy:
        srv = proxied(world, proxy, tmp_path)
        try:
            hh, _, device = published_and_served(world, srv, tmp_path)
            proxy.hide_events = {"PolicySet"}
            res = world.registry.set_policy("cam-r1", "acme", "cam-fw", allowed=False)
            wait_synced(srv, res.block)
            before = srv.snapshot()
            got = fetch(srv, device, f"/v1/images/{hh}")
            assert (got.status_code, code_of(got)) == (502, "ledger_mismatch")
            assert "the policy of cam-r1 permits 1.0.0 (the ledger's forbids the line)" in got.json()["error"]["message"]
            assert srv.snapshot() == before and last_download(srv) == ("refused", "ledger_mismatch")
        finally:
            srv.stop()


# ------------------------------------------------------------------------------ uploads


def test_uploads_on_hidden_revocations_are_not_stored(world: World, tmp_path: Path) -> None:  # noqa: F811
    """A vendor revoked on the ledger whose ``VendorRevoked`` the node hides is refused before a byte
    of its body is read; a release revoked on the ledger whose ``Revoked`` the node hides is refused
    once its record is matched. Both ``ledger_mismatch``; nothing stored, no temp file left."""
    with LyingRpc(upstream(world)) as proxy:
        proxy.hide_events = {"Revoked", "VendorRevoked"}
        srv = proxied(world, proxy, tmp_path)
        try:
            globex, _, _ = world.bundle(tmp_path, "1.0.0", account=world.chain.vendor2, vendor="globex")
            world.registry.revoke_vendor(world.chain.vendor2.address)
            acme, header, _ = world.bundle(tmp_path, "1.0.0")
            world.publish_bundle(header)
            res = world.registry.revoke("acme", "cam-fw", world.heads[("acme", "cam-fw")], "withdrawn")
            wait_synced(srv, res.block)
            before = srv.snapshot()

            got = upload(srv, world.chain.vendor2, globex.read_bytes())
            assert (got.status_code, code_of(got)) == (502, "ledger_mismatch")
            assert "is the active key of vendor 'globex'" in got.json()["error"]["message"]
            got = upload(srv, world.chain.vendor, acme.read_bytes())
            assert (got.status_code, code_of(got)) == (502, "ledger_mismatch")
            assert "is not revoked (it is, proven)" in got.json()["error"]["message"]
            assert srv.snapshot() == before and before["images"] == [] and before["tmp"] == []
            assert "acme" not in srv.barred() and "globex" not in srv.barred()
        finally:
            srv.stop()


# ------------------------------------------------------------------------------ headers


def test_a_forged_header_is_refused_by_the_second_node(world: World, tmp_path: Path) -> None:  # noqa: F811
    """Headers must be agreed by a second node (``--verify-rpc``): through the honest proxy the server
    serves; once the proxy forges its headers' state root, every decision is ``ledger_unproven``."""
    with LyingRpc(upstream(world)) as proxy:
        srv = proxied(world, proxy, tmp_path, verify_rpc=True, proof_max_age=0.05)
        try:
            hh, _, device = published_and_served(world, srv, tmp_path)
            proxy.forge_state_root = True
            time.sleep(0.1)  # older than proof_max_age: the next decision takes a new header
            before = srv.snapshot()
            got = fetch(srv, device, f"/v1/images/{hh}")
            assert (got.status_code, code_of(got)) == (503, "ledger_unproven")
            assert "untrusted header: the RPC node and the verifying node" in got.json()["error"]["message"]
            assert srv.snapshot() == before and last_download(srv) == ("refused", "ledger_unproven")
            proxy.forge_state_root = False
            # the forged headers hash differently: the server's follower may have taken them for a
            # reorganisation and rolled the release back (409 not_published) until it follows the
            # honest chain again, so it serves again once it has, not necessarily at once
            wait_for(lambda: fetch(srv, device, f"/v1/images/{hh}").status_code == 200, 30,
                     "the server serves again once its headers are honest")
        finally:
            srv.stop()


def test_a_remote_node_needs_a_source_of_trusted_headers(tmp_path: Path) -> None:
    """Without anchors or a second node, only the embedded chain or a loopback node is the server's own;
    trackers without anchors are a configuration error (checked before anything is contacted)."""
    with requests.Session() as session:
        with pytest.raises(ConfigError, match=r"^the node http://node\.example:8545 is not the server's own"):
            header_source("http://node.example:8545", anchors=None, trackers=(), verify_rpc=None, session=session,
                          timeout=5.0, who="server")
        with pytest.raises(ConfigError, match=r"^--tracker needs --anchors FILE"):
            header_source("embedded", anchors=None, trackers=("http://127.0.0.1:1",), verify_rpc=None,
                          session=session, timeout=5.0, who="server")
        assert isinstance(header_source("http://127.0.0.1:8545", anchors=None, trackers=(), verify_rpc=None,
                                        session=session, timeout=5.0, who="server"), OwnNode)
