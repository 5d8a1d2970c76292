"""Browser fixtures: Debian's Chromium driven by Playwright, a real tracker on an embedded chain.

Chromium is the system's ``/usr/bin/chromium`` (``scripts/setup`` installs Debian's package);
Playwright never downloads a browser here. Without it the browser tests fail in CI (``CI`` set)
with the reason, and skip on a developer's machine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.protocol.http_auth import sign_request
from entities.service_identity import fetch_identity
from entities.status_tracker.app import TrackerThread, create_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from ledger_node.devnet import free_port
from ledger_node.providers import connect, dev_accounts
from tests.conftest import Chain
from tests.world import LedgerWorld

CHROMIUM = Path("/usr/bin/chromium")
#: the flags this machine needs (no sandbox as root, no network beyond loopback, no first-run work)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT = 30.0


def require_chromium(path: Path = CHROMIUM, ci: bool | None = None) -> Path:
    """The Chromium to drive; fails (CI) or skips (elsewhere) with a clear message when missing."""
    ci = bool(os.environ.get("CI")) if ci is None else ci
    problem = None
    if not (path.is_file() and os.access(path, os.X_OK)):
        problem = (f"{path} not found: the browser tests need Debian's chromium "
                   "(scripts/setup installs it: apt-get install -y --no-install-recommends chromium)")
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed: run scripts/setup (pip install -e '.[test]')"
    if problem is not None:
        if ci:
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return path


@pytest.fixture(scope="module")  # closed with its module: no Playwright loop outlives the browser tests
def chromium_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium per test module, with a fresh empty profile (``--user-data-dir``)."""
    exe = require_chromium()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        # launch_persistent_context is Playwright's way of passing --user-data-dir (launch() refuses the flag)
        context = pw.chromium.launch_persistent_context(str(profile), executable_path=str(exe), headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(WAIT * 1000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(chromium_context: Any) -> Iterator[Any]:
    pg = chromium_context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        pg.close()


# ----------------------------------------------------------------------------- the ledger and the tracker


def key(n: int) -> LocalAccount:
    return Account.from_key(bytes([n]) * 32)


ADMIN = key(0x51)


World = LedgerWorld  # the shared world (tests/world.py)


def new_world() -> World:
    """A fresh embedded chain and registry (the ``world`` fixture; other suites call it too): vendor
    acme, hardware classes cam-r1, cam-r2, therm-b1."""
    w3 = connect("embedded")
    chain = Chain("embedded", w3, dev_accounts(w3, 6), "embedded")
    return LedgerWorld.create(chain, vendors={"acme": chain.vendor})


@pytest.fixture
def world() -> World:
    return new_world()


class Clock:
    """The tracker's clock: real time plus an offset a test moves (to age a device's last heartbeat)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Running:
    """A server-module tracker serving its API and dashboard on 127.0.0.1 (a uvicorn thread)."""

    url: str
    tracker: Tracker
    clock: Clock
    thread: TrackerThread

    @property
    def token(self) -> str:
        """The operator's dashboard token (``<data>/dashboard.token``, made when the app was built)."""
        return self.tracker.config.dashboard_token_path.read_text().strip()

    @property
    def operator(self) -> dict[str, str]:
        """The headers of the operator's JSON requests to ``/v1/dashboard/*``."""
        return {"Authorization": f"Bearer {self.token}"}

    def login(self, page: Any) -> None:
        """Log ``page``'s browser in as the operator, the way a person does: open the login address
        (token in the fragment); the login page posts it and lands on the dashboard."""
        page.goto(f"{self.url}/dashboard/login#{self.token}")
        page.wait_for_url(self.url + "/dashboard")
        assert "#" not in page.url and self.token not in page.url

    def health(self) -> dict[str, Any]:
        return requests.get(self.url + "/health", timeout=WAIT).json()  # type: ignore[no-any-return]

    def wait_block(self, block: int) -> None:
        end = time.monotonic() + WAIT
        while (self.health().get("ledger_block") or -1) < block:
            assert time.monotonic() < end, f"tracker never reached block {block}: {self.health()}"
            time.sleep(0.05)

    def heartbeat(self, device: LocalAccount, device_id: str, components: dict[str, str], *,
                  hardware: str = "cam-r1", ready: bool = True, last_result: dict[str, Any] | None = None,
                  slot: str = "A", location: str | None = "lab-1") -> dict[str, Any]:
        """A device's signed heartbeat, as the firmware consumer sends it."""
        body = {"device_id": device_id, "hardware": hardware, "addons": {}, "location": location,
                "components": {p: {"vendor": "acme", "version": v, "slot": slot} for p, v in components.items()},
                "ready": ready, "last_result": last_result}
        data = json.dumps(body).encode()
        headers = {**sign_request(device, "POST", "/v1/devices/heartbeat", data,
                                  audience=fetch_identity(self.url)), "Content-Type": "application/json"}
        resp = requests.post(self.url + "/v1/devices/heartbeat", data=data, headers=headers, timeout=WAIT)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]


def serve_tracker(world: World, data: Path, *, listen: bool = False, **settings: Any) -> Running:
    """A server-module tracker over ``world`` with its data in ``data``, served by uvicorn in a
    thread on 127.0.0.1 (stop it with ``.thread.stop()``). ``listen``: tell the app its port (the
    dashboard's Host rule then holds that port); else it learns none (loopback names, any port)."""
    clock = Clock()
    cfg = TrackerConfig(data_dir=data, poll_interval=0.2, admin_keys=(ADMIN.address,), **{"admission": "open", **settings})
    tracker = Tracker(cfg, world.registry.w3, world.registry.deployment, clock=clock)
    port = free_port() if listen else 0  # 0: a free loopback port
    app = create_app(tracker, listen=("127.0.0.1", port) if listen else None)
    thread = TrackerThread(app, port=port).start()
    return Running(thread.url, tracker, clock, thread)


@pytest.fixture
def make_tracker(world: World, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def make(**settings: Any) -> Running:
        trk = serve_tracker(world, tmp_path / f"tracker-{len(running)}", **settings)
        running.append(trk)
        return trk

    yield make
    for trk in running:
        trk.thread.stop()  # the app's lifespan closes the tracker


@pytest.fixture
def tracker(make_tracker: Callable[..., Running]) -> Running:
    return make_tracker()
