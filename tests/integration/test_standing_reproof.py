"""Before a trial is confirmed, the device proves its release's standing again (R10.a.i, R10.d.ii;
``entities/firmware_consumer/status.py``): a release revoked on chain after the trial boot is
reverted, never confirmed; no fresh evidence confirms nothing and leaves the trial running.

The device world of ``tests/integration/test_device_update.py`` (its ``world`` fixture: embedded
chain and anvil); a device without a health check, so its trial waits for :meth:`confirm_trial`.
"""

from __future__ import annotations

from pathlib import Path

from entities.firmware_consumer.client import TrackerUnreachable
from tests.integration.test_device_update import MAIN, status_of, world  # noqa: F401 - the shared device world
from tests.security.world import DeviceWorld, Release


def _trial(world: DeviceWorld, root: Path) -> Release:  # noqa: F811
    rel = world.release("main-fw", "1.1.0")
    with world.updater(root, health=None) as up:
        report = up.update(rel.path, world.evidence(rel.record))
    assert report.outcome == "trial", report.to_json()
    return rel


def test_a_release_revoked_after_its_trial_boot_is_reverted_not_confirmed(world: DeviceWorld) -> None:  # noqa: F811
    root = world.device("cam-1", MAIN)
    rel = _trial(world, root)
    world.admin.revoke("acme", "main-fw", rel.record.header_hash, "recalled after the trial boot")
    with world.updater(root, health=None) as up:
        standing = up.confirm_trial("main-fw", lambda h, hw: world.evidence(rel.record))
    assert standing.code == "revoked" and standing.final
    st = status_of(root)
    assert (st["version"], st["active"], st["counter"]) == ("1.0.0", "a", "1.0.0")  # back on the confirmed slot
    assert st["last_result"]["code"] == "revoked"  # type: ignore[index]


def test_no_fresh_evidence_confirms_nothing_and_keeps_the_trial(world: DeviceWorld) -> None:  # noqa: F811
    root = world.device("cam-2", MAIN)
    _trial(world, root)

    def unreachable(h: bytes, hw: str) -> object:
        raise TrackerUnreachable("no tracker answers", url="http://127.0.0.1:9")

    with world.updater(root, health=None) as up:
        standing = up.confirm_trial("main-fw", unreachable)  # type: ignore[arg-type]
    assert standing.code == "status_unproven" and not standing.final
    st = status_of(root)
    assert st["version"] == "1.1.0" and st["counter"] == "1.0.0"  # still on trial: not confirmed, not reverted
    assert st["last_result"]["code"] == "status_unproven"  # type: ignore[index]
