"""One device world for all attack scenarios (``DeviceWorld`` over the shared ``LedgerWorld`` on an
embedded chain, built once per package).

The attacks only read the ledger, so they share it: a registry with vendors ``acme`` and ``evil``
(revoked after publishing), two hardware classes with real X25519 keys, three tracker keys with
quorum 2, and the releases each scenario needs. Each test gets a freshly provisioned device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger_node.record import Dependency, Version
from tests.security.world import HW, OTHER_HW, DeviceWorld, Release


@dataclass
class AttackWorld:
    world: DeviceWorld
    old: Release           # main-fw 1.0.0, superseded by head
    head: Release          # main-fw 1.1.0, the head
    unpublished: Release   # main-fw 1.2.0, signed by acme, never published
    revoked: Release       # rev-fw 1.0.0, revoked by the administrator
    vulnerable: Release    # vuln-fw 1.0.0, flagged vulnerable
    evil: Release          # evil-fw 1.0.0 by vendor "evil", revoked afterwards
    needs_main2: Release   # app-fw 1.0.0, depends on main-fw >= 2.0.0
    other_class: Release   # b-fw 1.0.0, for cls-b only


@pytest.fixture(scope="package")
def attack_world(tmp_path_factory: pytest.TempPathFactory) -> AttackWorld:
    world = DeviceWorld.embedded(Path(tmp_path_factory.mktemp("attacks")), vendors=("acme", "evil"))
    ledger = world.ledger
    old = world.release("main-fw", "1.0.0")
    head = world.release("main-fw", "1.1.0")
    unpublished = world.build("main-fw", "1.2.0")
    revoked = world.release("rev-fw", "1.0.0", size=5_000)
    ledger.revoke("rev-fw", "1.0.0", "bricks cameras")
    vulnerable = world.release("vuln-fw", "1.0.0", size=5_000)
    ledger.mark_vulnerable("vuln-fw", "1.0.0", "CVE-2099-0001")
    evil = world.release("evil-fw", "1.0.0", vendor="evil", size=5_000)
    ledger.registry.revoke_vendor(ledger.vendors["evil"].address)
    needs_main2 = world.release("app-fw", "1.0.0", size=5_000, deps=[Dependency("main-fw", Version(2, 0, 0))])
    other_class = world.release("b-fw", "1.0.0", size=5_000, hardware=[OTHER_HW])
    assert HW != OTHER_HW
    return AttackWorld(world, old, head, unpublished, revoked, vulnerable, evil, needs_main2, other_class)
