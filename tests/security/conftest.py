"""One ledger world for all attack scenarios (embedded chain, built once per session).

The attacks only read the ledger, so they share it: a registry with vendors ``acme`` and ``evil``
(revoked after publishing), two hardware classes with real X25519 keys, three tracker keys with
quorum 2, and the releases each scenario needs. Each test gets a freshly provisioned device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger_node.providers import connect, dev_accounts
from ledger_node.record import Dependency, Version
from ledger_node.registry import Registry, deploy
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
    w3 = connect("embedded")
    accts = dev_accounts(w3, 4)
    admin = Registry(w3, deploy(w3, accts[0]), accts[0])
    world = DeviceWorld.create(w3, admin, {"acme": accts[1], "evil": accts[2]}, Path(tmp_path_factory.mktemp("attacks")))
    old = world.release("main-fw", "1.0.0")
    head = world.release("main-fw", "1.1.0")
    unpublished = world.build("main-fw", "1.2.0")
    revoked = world.release("rev-fw", "1.0.0", size=5_000)
    admin.revoke("acme", "rev-fw", revoked.record.header_hash, "bricks cameras")
    vulnerable = world.release("vuln-fw", "1.0.0", size=5_000)
    admin.mark_vulnerable("acme", "vuln-fw", vulnerable.record.header_hash, "CVE-2099-0001")
    evil = world.release("evil-fw", "1.0.0", vendor="evil", size=5_000)
    admin.revoke_vendor(accts[2].address)
    needs_main2 = world.release("app-fw", "1.0.0", size=5_000, deps=[Dependency("main-fw", Version(2, 0, 0))])
    other_class = world.release("b-fw", "1.0.0", size=5_000, hardware=[OTHER_HW])
    assert HW != OTHER_HW
    return AttackWorld(world, old, head, unpublished, revoked, vulnerable, evil, needs_main2, other_class)
