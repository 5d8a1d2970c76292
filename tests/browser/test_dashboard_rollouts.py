"""The dashboard's rollouts (issues 6 and 15) in a real headless Chromium, driven by Playwright.

A real server-module tracker on an embedded chain (tests/browser/conftest.py): three devices
need main-fw 1.1.0 and are driven through its rollout with signed heartbeats and their results
(the tracker's own ``results``, as the device's key signed them); the clock is the tracker's,
moved forward so the quiet rollout decides. Then the operator halts, cancels, targets and
schedules rollouts, and the page shows it without a reload.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Running, World, key
from tests.browser.test_dashboard import MS, assert_same_document, mark_document, screenshot

try:
    from playwright.sync_api import expect
except ImportError:  # the chromium_context fixture fails (CI) or skips with the reason
    expect = None  # type: ignore[assignment]

DEVICES = [(key(0x70 + i), f"cam-{i}") for i in range(3)]


def drive(tracker: Running) -> None:
    """Heartbeats until every device got and reported its command (the rollout completes)."""
    t = tracker.tracker
    for _ in range(12):
        for acct, dev in DEVICES:
            for env in tracker.heartbeat(acct, dev, {"main-fw": "1.0.0"})["commands"]:
                cmd = env["command"]
                t.results(acct.address, dev, {"command_id": cmd["command_id"], "results": [
                    {"header_hash": u["header_hash"], "product": u["product"], "to_version": u["to_version"],
                     "ok": True, "code": None, "message": None} for u in cmd["upgrades"]]})
        ro = t.rollouts()[0]
        if ro["state"] == "completed":
            return
        tracker.clock.offset += 400  # quiet for longer than rollout_settle: the rollout decides
        t.inventory.settle_rollouts(tracker.clock(), t.config.rollout_settle)
    raise AssertionError(f"the rollout never completed: {t.rollouts()[0]}")


@pytest.mark.browser
def test_a_completed_rollout_reads_done_with_reported_over_total(world: World, tracker: Running, page: Any) -> None:
    """The bug: a completed rollout showed every wave "open" and progress "3/0" (reported over
    devices still needing it, none). Now its waves read "done" (or "empty" for a wave that held
    no device) and progress is reported/total; the 10 % canary of three devices held one."""
    world.publish("main-fw", "1.0.0")
    world.publish("main-fw", "1.1.0")
    tracker.wait_block(world.block())
    drive(tracker)
    ro = tracker.tracker.rollouts()[0]
    assert ro["waves"][0]["devices"] == 1, ro["waves"]  # the canary held a device
    tracker.login(page)
    page.goto(tracker.url + "/dashboard")
    art = page.locator(f'article.rollout[data-rollout="{ro["id"]}"]')
    expect(art.locator("h3 .badge")).to_have_text("completed", timeout=MS)
    for w in ro["waves"]:
        row = art.locator(f'tr[data-wave="{w["wave"]}"]')
        if w["devices"]:
            expect(row.locator(".badge")).to_have_text("done")
            expect(row.locator("td.progress")).to_have_text(f'{w["devices"]}/{w["devices"]}')
        else:
            expect(row.locator(".badge")).to_have_text("empty")
            expect(row.locator("td.progress")).to_have_text("-")
    expect(art.locator("tr.open")).to_have_count(0)
    expect(art.locator(".badge", has_text="open")).to_have_count(0)
    assert page.js_errors == []


@pytest.mark.browser
def test_rollouts_show_targets_schedules_halt_reasons_and_cancellation(world: World, tracker: Running,
                                                                       page: Any) -> None:
    """An operator's steering, live: the target and the schedule of a rollout created ahead;
    a halt's reason with the exact command to resume; a cancellation with who and why."""
    world.publish("main-fw", "1.0.0")
    rel = world.publish("main-fw", "1.1.0")
    tracker.wait_block(world.block())
    t = tracker.tracker
    admin = t.config.admin_keys[0]
    ro = t.rollout_create("0x" + rel.header_hash.hex(), admin, labels=["region=lab-1"],
                          start="2030-01-01T00:00:00Z", windows=["02:00-04:00"])
    tracker.login(page)
    page.goto(tracker.url + "/dashboard")
    mark_document(page)
    art = page.locator(f'article.rollout[data-rollout="{ro["id"]}"]')
    expect(art.locator(".target")).to_have_text("target: devices labelled region=lab-1", timeout=MS)
    expect(art.locator(".schedule")).to_have_text("schedule: starts 2030-01-01T00:00:00Z; windows 02:00-04:00 UTC")

    t.rollout_action(ro["id"], "halt", admin, "waiting for the field report")
    expect(art.locator("h3 .badge")).to_have_text("halted", timeout=MS)
    expect(art.locator(".halt")).to_contain_text(f"halted by {admin}: waiting for the field report")
    expect(art.locator(".halt code")).to_have_text(f"fwledger tracker rollout resume {ro['id']}")

    t.rollout_action(ro["id"], "cancel", admin, "superseded by 1.1.1")
    expect(art.locator("h3 .badge")).to_have_text("cancelled", timeout=MS)
    expect(art.locator(".cancelled")).to_contain_text(f"cancelled by {admin}: superseded by 1.1.1")
    expect(art.locator(".halt")).to_have_count(0)
    assert_same_document(page)
    screenshot(page, "rollouts-steering")
    assert page.js_errors == []
