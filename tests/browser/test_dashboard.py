"""The tracker's fleet dashboard (issue 6) in a real headless Chromium, driven by Playwright.

A real server-module tracker runs on an embedded chain on 127.0.0.1 (uvicorn in a thread,
port chosen free); releases are published and revoked on the chain, devices send signed
heartbeats over HTTP, and the test looks at the page as a person would: the counts, the
release chains, a device's page. Changes must appear without a reload (the page polls).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from entities.protocol.http_auth import sign_request
from entities.service_identity import fetch_identity
from entities.status_tracker.inventory import ComponentIn, HeartbeatIn, LastResultIn
from tests.browser.conftest import WAIT, Running, World, key, require_chromium

try:
    from playwright.sync_api import expect
except ImportError:  # the chromium_context fixture fails (CI) or skips with the reason
    expect = None  # type: ignore[assignment]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
STATIC = Path(__file__).resolve().parents[2] / "entities" / "status_tracker" / "static"
PNG = b"\x89PNG\r\n\x1a\n"
MS = WAIT * 1000


def count(page: Any, name: str) -> Any:
    return page.locator(f'[data-count="{name}"] .n')


def expect_counts(page: Any, **counts: int) -> None:
    for name, n in counts.items():
        expect(count(page, name)).to_have_text(str(n), timeout=MS)


def mark_document(page: Any) -> None:
    """Tag the loaded document: a reload or navigation would lose the tag."""
    page.evaluate("window.__fwledgerSameDocument = 'yes'")


def assert_same_document(page: Any) -> None:
    assert page.evaluate("window.__fwledgerSameDocument") == "yes", "the page reloaded"


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000, f"{path} is not a PNG screenshot"
    return path


def release_item(page: Any, product: str, version: str) -> Any:
    return page.locator(f'article.line[data-line="acme/{product}"] li.release[data-version="{version}"]')


# ============================================================================= the fleet page


@pytest.mark.browser
def test_fleet_counts_follow_heartbeats_releases_and_revocations_live(world: World, tracker: Running,
                                                                     page: Any) -> None:
    """A person opens the dashboard and reads the counts; devices installing the new version, a
    newer release and a revocation change them in place, without a reload."""
    world.publish("main-fw", "1.0.0")
    world.publish("main-fw", "1.1.0")
    tracker.wait_block(world.block())
    a, b, c, d = (key(0x10 + i) for i in range(4))
    tracker.heartbeat(a, "cam-a", {"main-fw": "1.0.0"})
    tracker.heartbeat(b, "cam-b", {"main-fw": "1.1.0"})
    tracker.heartbeat(c, "cam-c", {"main-fw": "1.1.0"},
                      last_result={"ok": False, "code": "hash_mismatch", "component": "main-fw", "version": "1.1.0"})
    tracker.clock.offset = -3600.0  # cam-d last reported an hour ago: unreachable (stale_after 600 s)
    tracker.heartbeat(d, "cam-d", {"main-fw": "1.0.0"})
    tracker.clock.offset = 0.0

    tracker.login(page)
    page.goto(tracker.url + "/dashboard")
    expect(page).to_have_title("fwledger fleet")
    expect_counts(page, devices=4, up_to_date=2, outdated=2, failed=1, at_risk=0, unreachable=1)
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator("#ledger-block")).to_have_text(str(world.block()))
    row = page.locator('#devices tr[data-device="cam-c"]')
    expect(row.locator(".error-code")).to_have_text("hash_mismatch")
    expect(page.locator('#devices tr[data-device="cam-d"]')).to_contain_text("unreachable")
    mark_document(page)

    # cam-a installs 1.1.0 and says so
    tracker.heartbeat(a, "cam-a", {"main-fw": "1.1.0"}, last_result={"ok": True, "component": "main-fw",
                                                                     "version": "1.1.0"})
    expect_counts(page, up_to_date=3, outdated=1, failed=1)

    # a newer release: every device is outdated now, the chain's head moves
    world.publish("main-fw", "1.2.0")
    expect_counts(page, devices=4, up_to_date=0, outdated=4)
    expect(page.locator('article.line[data-line="acme/main-fw"] li.release.head')).to_have_attribute(
        "data-version", "1.2.0")

    # 1.0.0 is revoked: cam-d still runs it and is at risk; the chain shows the revocation
    world.revoke("main-fw", "1.0.0", "CVE-2026-0001")
    expect_counts(page, at_risk=1)
    expect(release_item(page, "main-fw", "1.0.0").locator(".badge")).to_have_text(["revoked"])
    expect(release_item(page, "main-fw", "1.0.0").locator(".badge")).to_have_attribute("title", "CVE-2026-0001")
    assert_same_document(page)
    screenshot(page, "fleet")
    assert page.js_errors == []


@pytest.mark.browser
def test_release_chains_show_each_line_as_the_full_node_indexed_it(world: World, tracker: Running,
                                                                   page: Any) -> None:
    """Each product line in chain order: versions, shortened header hashes, publish blocks, the
    head marked, revoked and vulnerable releases badged, and how many devices run each."""
    blocks: dict[str, int] = {}
    for product, version in (("main-fw", "1.0.0"), ("main-fw", "1.1.0"), ("main-fw", "2.0.0"),
                             ("boot-fw", "0.9.0")):
        world.publish(product, version)
        blocks[f"{product}@{version}"] = world.block()
    world.revoke("main-fw", "1.1.0", "bricks cam-r1 rev A")
    world.mark_vulnerable("main-fw", "1.0.0", "CVE-2026-0002")
    tracker.wait_block(world.block())
    tracker.heartbeat(key(0x20), "cam-1", {"main-fw": "1.0.0", "boot-fw": "0.9.0"})
    tracker.heartbeat(key(0x21), "cam-2", {"main-fw": "1.0.0"})

    tracker.login(page)
    page.goto(tracker.url + "/dashboard")
    lines = page.locator("article.line")
    expect(lines).to_have_count(2)
    expect(lines.locator("h3")).to_have_text(["acme / boot-fw", "acme / main-fw"])
    main = page.locator('article.line[data-line="acme/main-fw"] li.release')
    expect(main).to_have_count(3)
    expect(main.locator(".version")).to_have_text(["2.0.0", "1.1.0", "1.0.0"])  # newest first
    for version, badges in (("2.0.0", ["head"]), ("1.1.0", ["revoked"]), ("1.0.0", ["vulnerable"])):
        item = release_item(page, "main-fw", version)
        expect(item.locator(".badge")).to_have_text(badges)
        hh = "0x" + world.records[("main-fw", version)].header_hash.hex()
        expect(item).to_have_attribute("data-hash", hh)
        expect(item.locator("code.hash")).to_have_text(f"{hh[:10]}…{hh[-4:]}")
        expect(item.locator("code.hash")).to_have_attribute("title", hh)
        expect(item.locator(".block")).to_have_text(f"block {blocks[f'main-fw@{version}']}")
    expect(release_item(page, "main-fw", "1.0.0")).to_contain_text("2 devices")
    expect(release_item(page, "main-fw", "1.0.0")).to_contain_text("vulnerable")
    expect(release_item(page, "boot-fw", "0.9.0").locator(".badge")).to_have_text(["head"])
    expect(release_item(page, "boot-fw", "0.9.0")).to_contain_text("1 device")
    expect_counts(page, at_risk=2)  # both run the vulnerable 1.0.0
    screenshot(page, "chains")
    assert page.js_errors == []


@pytest.mark.browser
def test_rollouts_show_progress_per_wave(world: World, tracker: Running, page: Any) -> None:
    """No rollouts: said so. Devices needing a release start its rollout on the tracker: it
    appears live with its waves. Per wave: devices, commands, successes, failures, progress."""
    tracker.login(page)
    page.goto(tracker.url + "/dashboard")
    expect(page.locator("#rollouts")).to_contain_text("no rollouts")
    expect_counts(page, devices=0)
    mark_document(page)

    if callable(getattr(tracker.tracker, "rollouts", None)):  # the tracker's own rollouts (commands slice)
        world.publish("main-fw", "1.0.0")
        world.publish("main-fw", "1.1.0")
        tracker.wait_block(world.block())
        for i in range(5):
            tracker.heartbeat(key(0x60 + i), f"cam-{i}", {"main-fw": "1.0.0"})
        real = page.locator("article.rollout")
        expect(real).to_have_count(1)
        expect(real.locator("h3")).to_contain_text("main-fw → 1.1.0")
        expect(real.locator("code.hash")).to_have_text("0x" + world.records[("main-fw", "1.1.0")].header_hash.hex())
        expect(real.locator("tbody tr")).to_have_count(3)  # waves 10 %, 50 %, 100 %
        cells = real.locator("tbody tr td:nth-child(3)").all_text_contents()
        assert sum(int(c) for c in cells) == 5, cells
        # the canary wave: open, or "empty" while a small fleet's 10 % holds no device yet
        canary = tracker.tracker.rollouts()[0]["waves"][0]
        expect(real.locator("tbody tr").first).to_contain_text("open" if canary["devices"] else "empty")

    hh = "0x" + "ab" * 32
    waves = [{"wave": 0, "share": 0.1, "devices": 2, "commanded": 2, "succeeded": 1, "failed": 1},
             {"wave": 1, "share": 0.5, "devices": 8, "commanded": 0, "succeeded": 0, "failed": 0}]
    state: dict[str, Any] = {"id": 7, "header_hash": hh, "product": "main-fw", "to_version": "1.2.0",
                             "state": "running", "open_wave": 0, "waves": waves}
    tracker.tracker.rollouts = lambda: [dict(state)]  # type: ignore[method-assign]
    ro = page.locator('article.rollout[data-rollout="7"]')
    expect(ro.locator("h3")).to_contain_text("main-fw → 1.2.0")
    expect(ro.locator("h3 .badge")).to_have_text("running")
    expect(ro.locator('tr[data-wave="0"] td.succeeded')).to_have_text("1")
    expect(ro.locator('tr[data-wave="0"] td.failed')).to_have_text("1")
    expect(ro.locator('tr[data-wave="0"]')).to_contain_text("10%")
    expect(ro.locator('tr[data-wave="0"]')).to_contain_text("2/2")
    expect(ro.locator('tr[data-wave="0"].open')).to_have_count(1)
    expect(ro.locator('tr[data-wave="1"]')).to_contain_text("0/8")
    expect(ro.locator('tr[data-wave="1"].open')).to_have_count(0)
    state["state"] = "halted"
    expect(ro.locator("h3 .badge")).to_have_text("halted")
    assert_same_document(page)
    screenshot(page, "rollouts")
    assert page.js_errors == []


# ============================================================================= the device page


@pytest.mark.browser
def test_device_page_shows_components_last_error_and_log_live(world: World, tracker: Running, page: Any) -> None:
    """From the fleet page to a device's page: its components with versions and slots, its
    readiness, its last update result with the error code, its communication log."""
    world.publish("main-fw", "1.0.0")
    world.publish("main-fw", "1.1.0")
    world.publish("boot-fw", "2.0.0")
    tracker.wait_block(world.block())
    dev = key(0x30)
    tracker.heartbeat(dev, "cam-x", {"main-fw": "1.0.0", "boot-fw": "2.0.0"}, slot="B",
                      last_result={"ok": False, "code": "signature_invalid", "message": "bundle signature did not "
                                   "verify", "component": "main-fw", "version": "1.1.0"})
    tracker.heartbeat(key(0x31), "cam-y", {"main-fw": "1.1.0"})

    tracker.login(page)
    page.goto(tracker.url + "/dashboard")
    page.locator('#devices tr[data-device="cam-x"] a.device-link').click()
    page.wait_for_url(re.compile(r"/dashboard/devices/cam-x$"))
    expect(page.locator("#device-id")).to_have_text("cam-x")
    comps = page.locator("#components tbody tr")
    expect(comps).to_have_count(2)
    expect(comps.nth(0).locator("td")).to_have_text(["boot-fw", "acme", "2.0.0", "B"])
    expect(comps.nth(1).locator("td")).to_have_text(["main-fw", "acme", "1.0.0", "B"])
    expect(page.locator('#summary dd[data-field="readiness"]')).to_have_text("ready")
    expect(page.locator('#summary dd[data-field="hardware"]')).to_have_text("cam-r1")
    expect(page.locator('#summary dd[data-field="verdict"]')).to_contain_text("outdated")
    expect(page.locator('#last-result dd[data-field="result"]')).to_have_text("failed")
    expect(page.locator('#last-result dd[data-field="error code"]')).to_have_text("signature_invalid")
    expect(page.locator('#last-result dd[data-field="message"]')).to_have_text("bundle signature did not verify")
    expect(page.locator("#needs tbody tr td").first).to_have_text("main-fw")
    expect(page.locator('#log tbody tr[data-kind="heartbeat"]')).to_have_count(1)
    expect(page.locator('#log tbody tr[data-kind="update_needed"]')).to_have_count(1)
    expect(page.locator('#log tbody tr[data-kind="heartbeat"] .detail')).to_contain_text('"registered":true')
    mark_document(page)

    # the device retries, succeeds and is busy: the page follows
    tracker.heartbeat(dev, "cam-x", {"main-fw": "1.1.0", "boot-fw": "2.0.0"}, slot="A", ready=False,
                      last_result={"ok": True, "component": "main-fw", "version": "1.1.0"})
    expect(page.locator('#summary dd[data-field="heartbeats"]')).to_have_text("2")
    expect(page.locator('#summary dd[data-field="readiness"]')).to_have_text("busy")
    expect(page.locator('#summary dd[data-field="verdict"]')).to_contain_text("up to date")
    expect(comps.nth(1).locator("td")).to_have_text(["main-fw", "acme", "1.1.0", "A"])
    expect(page.locator('#last-result dd[data-field="result"]')).to_have_text("ok")
    expect(page.locator('#log tbody tr[data-kind="heartbeat"]')).to_have_count(2)
    expect(page.locator("#needs tbody tr")).to_have_count(0)
    # its update history: registered with a failed result, the version change, the result now ok
    history = page.locator("#history tbody")
    expect(history.locator('tr[data-event="registered"]')).to_have_count(1)
    expect(history.locator('tr[data-event="device_result"]')).to_have_count(2)
    expect(history.locator('tr[data-event="device_result"]').last).to_contain_text("signature_invalid")
    expect(history.locator('tr[data-event="version_changed"] td')).to_contain_text(["", "version changed", "main-fw",
                                                                                    "1.0.0", "1.1.0"])
    expect(history.locator("tr").first).to_have_attribute("data-event", "device_result")
    expect(page.locator('#summary dd[data-field="labels"]')).to_have_text("-")  # open admission: no labels
    assert_same_document(page)
    screenshot(page, "device")

    page.goto(tracker.url + "/dashboard/devices/no-such-device")
    expect(page.locator("#missing")).to_have_text("No device no-such-device in this tracker's inventory.")
    assert page.js_errors == []


# ============================================================================= inventory strings are text


EVIL_ID = "<img src=x onerror=window.__xss=1>"
EVIL_HW = "<script>window.__xss=2</script>"
EVIL_PRODUCT = "<img src=y onerror=window.__xss=3>"
EVIL_MSG = "<b>bold</b><iframe src=javascript:window.__xss=4></iframe>"


@pytest.mark.browser
def test_inventory_strings_render_as_text_never_as_html(world: World, tracker: Running, page: Any) -> None:
    """Device ids, hardware, product names and error messages come from devices: the pages show
    them character for character and no element or script from them ever exists."""
    world.publish("main-fw", "1.0.0")
    tracker.wait_block(world.block())
    # a signed heartbeat can carry markup in every printable-ASCII field...
    tracker.heartbeat(key(0x40), "cam-evil", {EVIL_PRODUCT: "1.0.0"}, hardware=EVIL_HW,
                      last_result={"ok": False, "code": "bad_bundle", "message": EVIL_MSG})
    # ...and the id itself, which the API refuses, as a damaged or older inventory could hold it
    hb = HeartbeatIn.model_construct(
        device_id=EVIL_ID, hardware="cam-r1", addons={}, location=None, ready=True,
        components={"main-fw": ComponentIn(vendor="acme", version="1.0.0", slot="A")},
        last_result=LastResultIn(ok=False, code="x", message=EVIL_MSG))
    tracker.tracker.heartbeat(key(0x41).address, hb)

    tracker.login(page)
    page.goto(tracker.url + "/dashboard")
    expect_counts(page, devices=2, failed=2)
    links = page.locator("#devices a.device-link")
    expect(links).to_have_text(["<img src=x onerror=window.__xss=1>", "cam-evil"])
    evil_row = page.locator("#devices tbody tr").nth(0)
    expect(evil_row.locator(".note")).to_contain_text(EVIL_MSG)
    expect(page.locator('#devices tr[data-device="cam-evil"]')).to_contain_text(EVIL_HW)
    expect(page.locator('#devices tr[data-device="cam-evil"] .product')).to_have_text(EVIL_PRODUCT)
    assert_no_injection(page)
    assert links.nth(0).get_attribute("href") == "/dashboard/devices/" + quote(EVIL_ID, safe="")

    links.nth(0).click()
    expect(page.locator("#device-id")).to_have_text(EVIL_ID)
    expect(page.locator('#last-result dd[data-field="message"]')).to_have_text(EVIL_MSG)
    expect(page.locator("#components tbody tr td").first).to_have_text("main-fw")
    assert page.title() == "fwledger device " + EVIL_ID
    assert_no_injection(page)

    page.goto(tracker.url + "/dashboard/devices/cam-evil")
    expect(page.locator('#summary dd[data-field="hardware"]')).to_have_text(EVIL_HW)
    expect(page.locator("#components tbody tr td").first).to_have_text(EVIL_PRODUCT)
    expect(page.locator('#last-result dd[data-field="message"]')).to_have_text(EVIL_MSG)
    assert_no_injection(page)
    screenshot(page, "escaped")
    assert page.js_errors == []


def assert_no_injection(page: Any) -> None:
    page.wait_for_timeout(300)  # an injected onerror would have fired by now
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main iframe, main b, main script").count() == 0
    assert page.locator("script").count() == 1  # only the page's own dashboard.js


# ============================================================================= the JSON and headers (no browser)


def test_dashboard_json_and_headers(world: World, tracker: Running) -> None:
    """The JSON the pages poll needs the operator's token (no signature); the pages carry a strict
    CSP; only the dashboard's own static files are served; an unknown device is a 404 with its code.
    (Strangers, other Hosts and the cookie: tests/security/test_operator_surfaces.py.)"""
    world.publish("main-fw", "1.0.0")
    world.publish("main-fw", "1.1.0")
    tracker.wait_block(world.block())
    tracker.heartbeat(key(0x50), "cam-1", {"main-fw": "1.0.0"}, last_result={"ok": False, "code": "timeout"})
    tracker.heartbeat(key(0x51), "cam-2", {"main-fw": "1.1.0"})

    op = tracker.operator
    page = requests.get(tracker.url + "/dashboard", headers=op, timeout=WAIT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert "/dashboard/static/dashboard.js" in page.text and "http" not in page.text.split("<body", 1)[1]

    overview = requests.get(tracker.url + "/v1/dashboard/overview", headers=op, timeout=WAIT).json()
    c = overview["counts"]
    assert (c["devices"], c["up_to_date"], c["outdated"], c["failed"], c["at_risk"], c["unreachable"]) == (
        2, 1, 1, 1, 0, 0)
    lists = tracker.tracker.outdated_lists()  # the same verdicts as the operator API's
    assert c["outdated"] == len(lists["outdated"]) and c["up_to_date"] == len(lists["up_to_date"])
    assert [d["device_id"] for d in overview["devices"]] == ["cam-1", "cam-2"]
    assert overview["ledger_block"] == world.block()

    chains = requests.get(tracker.url + "/v1/dashboard/releases", headers=op, timeout=WAIT).json()
    (line,) = chains["lines"]
    assert [(r["version"], r["head"], r["devices"]) for r in line["releases"]] == [("1.0.0", False, 1),
                                                                                  ("1.1.0", True, 1)]
    rollouts = requests.get(tracker.url + "/v1/dashboard/rollouts", headers=op, timeout=WAIT).json()
    assert rollouts["available"] == callable(getattr(tracker.tracker, "rollouts", None))

    detail = requests.get(tracker.url + "/v1/dashboard/devices/cam-1", headers=op, timeout=WAIT).json()
    assert detail["last_result"]["code"] == "timeout" and detail["log"]
    missing = requests.get(tracker.url + "/v1/dashboard/devices/nope", headers=op, timeout=WAIT)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_device"
    for odd in ("%00", "%FF", "%F0%9F%92%A9", "x" * 5000, "%3Cscript%3E"):
        resp = requests.get(tracker.url + "/v1/dashboard/devices/" + odd, headers=op, timeout=WAIT)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_device", (odd, resp.text)
    for name in ("index.html", "..%2Fapp.py", "dashboard.py"):
        assert requests.get(tracker.url + "/dashboard/static/" + name, timeout=WAIT).status_code == 404
    js = requests.get(tracker.url + "/dashboard/static/dashboard.js", timeout=WAIT)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")


def test_the_script_never_writes_html() -> None:
    """The rendering rule, checked on the source: strings enter the page as text nodes only."""
    source = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in source.replace("never assigns HTML", ""), sink
    for page in ("index.html", "device.html", "login.html"):
        html = (STATIC / page).read_text()
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/dashboard/static/dashboard.js" defer>']
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "nothing but this tracker is reachable"


def test_missing_chromium_fails_in_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    nowhere = tmp_path / "chromium"
    with pytest.raises(pytest.fail.Exception, match="apt-get install"):
        require_chromium(nowhere, ci=True)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        require_chromium(nowhere, ci=False)


def test_the_pending_queue_shows_unadmitted_devices(world: World, make_tracker: Any, page: Any) -> None:
    """With admission required, a device nobody admitted is refused and appears, with its key, in
    the dashboard's pending queue (issue: the operator sees the pending queue on the dashboard)."""
    trk = make_tracker(admission="required")
    stranger = key(0x66)
    body = json.dumps({"device_id": "cam-new", "hardware": "cam-r1", "addons": {}, "location": None,
                       "components": {"main-fw": {"vendor": "acme", "version": "1.0.0", "slot": "A"}},
                       "ready": True, "last_result": None}).encode()
    headers = {**sign_request(stranger, "POST", "/v1/devices/heartbeat", body,
                                 audience=fetch_identity(trk.url)), "Content-Type": "application/json"}
    resp = requests.post(trk.url + "/v1/devices/heartbeat", data=body, headers=headers, timeout=WAIT)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "not_admitted"
    trk.login(page)
    row = page.locator('#pending tr[data-pending="cam-new"]')
    row.wait_for(timeout=WAIT * 1000)
    assert stranger.address in row.inner_text()
    assert "admission required: 0 admitted" in page.locator("#admission").inner_text()
    assert page.locator('#devices tr[data-device="cam-new"]').count() == 0
    assert not page.js_errors

