"""Where the device takes the fresh evidence that proves a release's standing again (R10.a.i,
R10.d.ii; :meth:`entities.firmware_consumer.agent.Agent.fresh_evidence`): one request to the
first tracker, then, when that one cannot answer or its evidence does not carry k attestations,
the newest block k of the provisioned trackers attest.

The world of ``tests/integration/test_device_network.py`` (its ``net`` fixture: real trackers and
a firmware server, threads on the embedded chain, processes on anvil); two trackers, the first
stopped, or both up with k = 2.
"""

from __future__ import annotations

import time
from pathlib import Path

from entities.firmware_consumer.agent import Agent, AgentConfig
from entities.firmware_consumer.provision import load_provisioning
from entities.firmware_consumer.status import reprove
from ledger_node.attestation import attestation_signer
from tests.integration import test_device_network
from tests.integration.test_device_network import HW, Net, Release, Service

net = test_device_network.net  # the shared world fixture


def _setup(net: Net, quorum: int) -> tuple[Service, Service, Release, Path]:
    t0, t1, srv = net.tracker(0, wait=False), net.tracker(1, wait=False), net.server(wait=False)
    net.up(t0, t1, srv)
    cam = net.device(f"cam-k{quorum}", [t0, t1], quorum=quorum)
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, t0, t1, rel=rel)
    return t0, t1, rel, cam


def test_first_tracker_down_the_reproof_is_proven_from_the_second(net: Net) -> None:
    """k = 1 of trackers {T0, T1}; T0 (the first asked) is stopped: the one-request try fails,
    the fallback proves the release from T1's evidence, which carries T1's attestation only."""
    t0, t1, rel, cam = _setup(net, 1)
    t0.stop()
    with Agent(cam, AgentConfig(trackers=(t0.url, t1.url))) as agent:
        fetch = agent.fresh_evidence(agent.trackers)  # the pass's live trackers: T0 first
        ev = fetch(rel.header_hash, HW)
        assert {attestation_signer(a) for a in ev.attestations} == {t1.address}  # T1 answered
        standing = reprove(load_provisioning(cam).anchors, HW, rel.header_hash, fetch, clock=time.time)
    assert standing.ok and standing.code is None, standing.message
    assert standing.proven is not None
    assert {a.block_number for a in ev.attestations} == {standing.proven.block.number}


def test_k_of_two_gathers_both_attestations_and_one_tracker_down_proves_nothing(net: Net) -> None:
    """k = 2 of {T0, T1}: T0's evidence carries T0's attestation only, so the fallback gathers the
    newest block both attest: the evidence carries both and the standing is proven. With T1
    stopped no k attestations can be had: ``status_unproven`` (no verdict, nothing given up)."""
    t0, t1, rel, cam = _setup(net, 2)
    anchors = load_provisioning(cam).anchors
    with Agent(cam, AgentConfig(trackers=(t0.url, t1.url))) as agent:
        fetch = agent.fresh_evidence(agent.trackers)
        ev = fetch(rel.header_hash, HW)
        assert {attestation_signer(a) for a in ev.attestations} >= {t0.address, t1.address}
        standing = reprove(anchors, HW, rel.header_hash, fetch, clock=time.time)
        assert standing.ok, standing.message
        t1.stop()
        down = reprove(anchors, HW, rel.header_hash, agent.fresh_evidence(agent.trackers), clock=time.time)
    assert (down.code, down.final, down.proven) == ("status_unproven", False, None), down.message
    assert "tracker" in down.message
