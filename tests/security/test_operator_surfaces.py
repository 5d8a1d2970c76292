"""The tracker's operator surfaces: the fleet dashboard and its JSON (``/dashboard``,
``/dashboard/devices/{id}``, ``/v1/dashboard/*``) answer the operator only, and only through a
Host the tracker answers to (DNS rebinding).

Real server-module trackers on an embedded chain, served by uvicorn in threads on 127.0.0.1
(``tests/browser/conftest.py``'s ``serve_tracker``), asked over real HTTP. Tracker A is told its
listen port (the Host rule holds that port); tracker B is not (loopback names, any port) and
serves as "another tracker" whose token and cookie must not open A.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from click.testing import CliRunner
from starlette.responses import Response

from entities import stack
from entities.cli import cli
from entities.status_tracker.dashboard import (
    LOGIN_PATH,
    SESSION_SECONDS,
    HostRule,
    OperatorGate,
    load_or_create_token,
    login_url,
)
from ledger_node.errors import ConfigError
from tests.browser.conftest import WAIT, Running, World, key, new_world, serve_tracker

SECRET_DEVICE = "cam-secret-7f3a"
API = ["/v1/dashboard/overview", "/v1/dashboard/releases", "/v1/dashboard/rollouts",
       f"/v1/dashboard/devices/{SECRET_DEVICE}"]
PAGES = ["/dashboard", f"/dashboard/devices/{SECRET_DEVICE}"]


@dataclass
class Fleet:
    world: World
    a: Running  # told its listen port
    b: Running  # another tracker on the same chain, port unknown to its app

    @property
    def port(self) -> int:
        return int(urlsplit(self.a.url).port or 0)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    world = new_world()
    world.publish("main-fw", "1.0.0")
    root = tmp_path_factory.mktemp("operator")
    a = serve_tracker(world, root / "a", listen=True)
    b = serve_tracker(world, root / "b")
    try:
        for trk in (a, b):
            trk.wait_block(world.block())
            trk.heartbeat(key(0x61), SECRET_DEVICE, {"main-fw": "1.0.0"},
                          last_result={"ok": False, "code": "hash_mismatch"})
        yield Fleet(world, a, b)
    finally:
        a.thread.stop()
        b.thread.stop()


def get(trk: Running, path: str, **kw: Any) -> requests.Response:
    return requests.get(trk.url + path, timeout=WAIT, allow_redirects=False, **kw)


def session_cookie(trk: Running) -> tuple[str, str]:
    """Log in with the form (as the login page does); the cookie's name and value."""
    resp = requests.post(trk.url + LOGIN_PATH, data={"token": trk.token, "next": "/dashboard"}, timeout=WAIT,
                         allow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard", resp.text
    (name, value), = resp.cookies.items()
    assert value
    return name, value


def assert_no_inventory(resp: requests.Response) -> None:
    assert SECRET_DEVICE not in resp.text and "hash_mismatch" not in resp.text, resp.text
    assert SECRET_DEVICE not in resp.headers.get("location", "").replace(f"next=/dashboard/devices/{SECRET_DEVICE}",
                                                                         "")


# ============================================================================= the token file


def test_the_token_file_is_made_once_0600_random_and_reused(tmp_path: Path, fleet: Fleet) -> None:
    path = tmp_path / "sub" / "dashboard.token"
    with pytest.raises(ConfigError, match="first start"):
        load_or_create_token(path, create=False)
    assert not path.exists()
    token = load_or_create_token(path)
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == token == load_or_create_token(path, create=False)
    assert load_or_create_token(tmp_path / "other.token") != token
    path.write_text("not a token\n")
    with pytest.raises(ConfigError, match="64 hex"):
        load_or_create_token(path)
    # the running trackers made theirs at start, each its own, private to the tracker's user
    for trk in (fleet.a, fleet.b):
        made = trk.tracker.config.dashboard_token_path
        assert made == trk.tracker.config.data_dir / "dashboard.token"
        assert stat.S_IMODE(made.stat().st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{64}", trk.token)
    assert fleet.a.token != fleet.b.token
    assert login_url("http://127.0.0.1:8470/", token) == f"http://127.0.0.1:8470/dashboard/login#{token}"


# ============================================================================= strangers


def test_strangers_get_401_on_the_json_and_a_redirect_on_the_pages(fleet: Fleet) -> None:
    """No token, a wrong one, another tracker's token or session, a forged or expired session:
    401 ``operator_required`` on every JSON route and a redirect to the login page on the pages,
    with nothing of the inventory in the answer."""
    a, b = fleet.a, fleet.b
    cookie_name, _ = session_cookie(a)
    b_name, b_session = session_cookie(b)
    expires = 4_000_000_000
    strangers: dict[str, dict[str, Any]] = {
        "nothing": {},
        "wrong token": {"headers": {"Authorization": "Bearer " + "0" * 64}},
        "token prefix": {"headers": {"Authorization": "Bearer " + a.token[:32]}},
        "token as Basic": {"headers": {"Authorization": "Basic " + a.token}},
        "token in a query": {"params": {"token": a.token}},
        "other tracker's token": {"headers": {"Authorization": "Bearer " + b.token}},
        "other tracker's session under its name": {"cookies": {b_name: b_session}},
        "other tracker's session under this name": {"cookies": {cookie_name: b_session}},
        "raw token as the cookie": {"cookies": {cookie_name: a.token}},
        "forged session": {"cookies": {cookie_name: f"{expires}.{'ab' * 32}"}},
        "expired session": {"cookies": {cookie_name: OperatorGate(a.token, cookie_name,
                                                                  clock=lambda: 1_000_000.0).new_session()}},
    }
    assert b_name != cookie_name  # one cookie per tracker: logging in to B does not log out of A
    for who, creds in strangers.items():
        for path in API:
            resp = get(a, path, **creds)
            assert resp.status_code == 401, (who, path, resp.status_code, resp.text)
            assert resp.json()["error"]["code"] == "operator_required", (who, path)
            assert resp.headers["www-authenticate"].startswith("Bearer"), (who, path)
            assert_no_inventory(resp)
        for path in PAGES:
            resp = get(a, path, **creds)
            assert resp.status_code == 303, (who, path, resp.status_code)
            assert resp.headers["location"] == f"{LOGIN_PATH}?next={path}", (who, path)
            assert_no_inventory(resp)
            assert "set-cookie" not in resp.headers, (who, path)
    # the login page and the static files are open (they hold nothing of the inventory)
    login = get(a, LOGIN_PATH)
    assert login.status_code == 200 and 'name="token"' in login.text
    assert_no_inventory(login)
    assert get(a, "/dashboard/static/dashboard.js").status_code == 200


def test_a_wrong_token_does_not_log_in(fleet: Fleet) -> None:
    a = fleet.a
    for body in ({"token": "0" * 64}, {"token": fleet.b.token}, {"token": ""}, {}):
        form = requests.post(a.url + LOGIN_PATH, data=body, timeout=WAIT, allow_redirects=False)
        assert form.status_code == 303 and form.headers["location"].startswith(f"{LOGIN_PATH}?failed=1"), body
        assert "set-cookie" not in form.headers, body
        js = requests.post(a.url + LOGIN_PATH, json=body, timeout=WAIT, allow_redirects=False)
        assert js.status_code == 401 and js.json()["error"]["code"] == "operator_required", body
        assert "set-cookie" not in js.headers, body
    for junk in (b"\xff\xfe", b"[1, 2]", b"token", b"{"):
        resp = requests.post(a.url + LOGIN_PATH, data=junk, headers={"Content-Type": "application/json"},
                             timeout=WAIT, allow_redirects=False)
        assert resp.status_code == 401 and "set-cookie" not in resp.headers, junk


# ============================================================================= Host (DNS rebinding)


def test_a_wrong_host_is_refused_even_with_the_right_token(fleet: Fleet) -> None:
    a, port = fleet.a, fleet.port
    op = a.operator
    name, value = session_cookie(a)
    cookie = {name: value}
    wrong = ["evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}", f"127.0.0.1.nip.io:{port}",
             f"127.0.0.1:{port + 1 if port < 65535 else port - 1}", "127.0.0.1", f"10.0.0.1:{port}",
             f"127.0.0.1:{port}@evil.example", f"evil.example:{port}:{port}"]
    for host in wrong:
        for path in API + PAGES:
            for creds in ({"headers": {**op, "Host": host}}, {"headers": {"Host": host}, "cookies": cookie}):
                resp = get(a, path, **creds)
                assert resp.status_code == 421, (host, path, resp.status_code, resp.text)
                assert resp.json()["error"]["code"] == "bad_host", (host, path)
                assert_no_inventory(resp)
        for path in (LOGIN_PATH, "/dashboard/static/dashboard.js"):
            assert get(a, path, headers={"Host": host}).status_code == 421, (host, path)
        login = requests.post(a.url + LOGIN_PATH, data={"token": a.token}, headers={"Host": host}, timeout=WAIT,
                              allow_redirects=False)
        assert login.status_code == 421 and "set-cookie" not in login.headers, host
    # the names a browser on the tracker's machine uses, with the listen port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        resp = get(a, "/v1/dashboard/overview", headers={**op, "Host": host})
        assert resp.status_code == 200 and SECRET_DEVICE in resp.text, (host, resp.text)
    # the API outside the dashboard is not the dashboard's business
    assert get(a, "/health", headers={"Host": "evil.example"}).status_code == 200


def test_without_a_known_port_the_loopback_names_are_accepted_on_any_port(fleet: Fleet) -> None:
    b = fleet.b
    for host in ("127.0.0.1:1", "localhost:65000", "[::1]:8470", "localhost"):
        assert get(b, "/v1/dashboard/overview", headers={**b.operator, "Host": host}).status_code == 200, host
    for host in ("evil.example", f"evil.example:{urlsplit(b.url).port}", "127.0.0.2:8470"):
        assert get(b, "/v1/dashboard/overview", headers={**b.operator, "Host": host}).status_code == 421, host


def test_the_configured_dashboard_hosts_replace_the_defaults(tmp_path: Path) -> None:
    world = new_world()
    trk = serve_tracker(world, tmp_path / "t", listen=True, dashboard_hosts=("fleet.example.org", "ops.lan:9443"))
    try:
        port = urlsplit(trk.url).port
        for host, status in ((f"fleet.example.org:{port}", 200), ("fleet.example.org", 200), ("ops.lan:9443", 200),
                             ("ops.lan:9444", 421), (f"127.0.0.1:{port}", 421), (f"localhost:{port}", 421),
                             ("evil.example", 421)):
            resp = get(trk, "/v1/dashboard/rollouts", headers={**trk.operator, "Host": host})
            assert resp.status_code == status, (host, resp.text)
    finally:
        trk.thread.stop()


def test_host_rule_parsing() -> None:
    listen = HostRule(("127.0.0.1", 8470))
    assert listen.permits("127.0.0.1:8470") and listen.permits("[::1]:8470") and listen.permits("Localhost:8470")
    for bad in (None, "", "127.0.0.1", "127.0.0.1:8471", "127.0.0.1:08470x", "[::1", "[::1]x", "a b:8470",
                "evil.example:8470", "127.0.0.1:8470/", "user@127.0.0.1:8470", "127.0.0.1:99999"):
        assert not listen.permits(bad), bad
    v6 = HostRule(("::1", 443))
    assert v6.permits("[::1]", default_port=443) and not v6.permits("[::1]", default_port=80)
    anyport = HostRule(None)
    assert anyport.permits("localhost:1") and anyport.permits("127.0.0.1") and not anyport.permits("evil:1")
    with pytest.raises(ConfigError):
        HostRule(None, ["evil example"])


# ============================================================================= the operator


def test_the_token_opens_the_json_by_bearer_and_the_pages_by_the_login_cookie(fleet: Fleet) -> None:
    a = fleet.a
    for path in API:
        resp = get(a, path, headers=a.operator)
        assert resp.status_code == 200, (path, resp.text)
    assert SECRET_DEVICE in get(a, API[0], headers=a.operator).text
    assert get(a, API[-1], headers={"Authorization": "bearer " + a.token.upper()}).json()["device_id"] == SECRET_DEVICE

    # the login page's form: a session cookie, then the dashboard
    resp = requests.post(a.url + LOGIN_PATH, data={"token": a.token, "next": f"/dashboard/devices/{SECRET_DEVICE}"},
                         timeout=WAIT, allow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == f"/dashboard/devices/{SECRET_DEVICE}"
    raw = resp.headers["set-cookie"]
    attrs = {k.strip().lower(): v for k, _, v in (p.partition("=") for p in raw.split(";")[1:])}
    assert "httponly" in attrs and attrs["samesite"].lower() == "strict" and attrs["path"] == "/"
    assert "secure" not in attrs  # plain HTTP on loopback; TLS trackers set it (below)
    assert int(attrs["max-age"]) == SESSION_SECONDS
    (name, value), = resp.cookies.items()
    assert value and name.startswith("fwledger_dashboard_") and a.token not in raw and a.token not in value
    for path in PAGES:
        page = get(a, path, cookies={name: value})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "form-action 'none'" in csp and "unsafe-inline" not in csp
    for path in API:
        assert get(a, path, cookies={name: value}).status_code == 200, path

    # JSON login, and where a login may send the browser: this tracker's dashboard pages only
    js = requests.post(a.url + LOGIN_PATH, json={"token": a.token, "next": "https://evil.example/"}, timeout=WAIT)
    assert js.status_code == 200 and js.json() == {"next": "/dashboard"} and "httponly" in js.headers["set-cookie"].lower()
    for target in ("//evil.example", "/dashboard/../v1/devices", "/dashboardx", "/dashboard/devices/a/b", "\\\\evil"):
        form = requests.post(a.url + LOGIN_PATH, data={"token": a.token, "next": target}, timeout=WAIT,
                             allow_redirects=False)
        assert form.headers["location"] == "/dashboard", target
    # the login page may post its form, and nothing else
    login_csp = get(a, LOGIN_PATH).headers["content-security-policy"]
    assert "form-action 'self'" in login_csp and "script-src 'self'" in login_csp and "connect-src 'self'" in login_csp


def test_sessions_expire_and_belong_to_one_token() -> None:
    now = [1_700_000_000.0]
    gate = OperatorGate("ab" * 32, "c", clock=lambda: now[0])
    value = gate.new_session()
    assert gate.session_ok(value)
    expires, mac = value.split(".")
    assert not gate.session_ok(f"{int(expires) + 1}.{mac}")  # a longer life is a forgery
    assert not OperatorGate("cd" * 32, "c", clock=lambda: now[0]).session_ok(value)
    now[0] += SESSION_SECONDS - 1
    assert gate.session_ok(value)
    now[0] += 1
    assert not gate.session_ok(value)
    for junk in (None, "", ".", "x.y", f"{expires}.", f"-1.{mac}", "1" * 13 + "." + mac):
        assert not gate.session_ok(junk), junk
    secure = OperatorGate("ab" * 32, "c", secure=True)
    resp = Response()
    secure.login(resp)
    assert "; secure" in resp.headers["set-cookie"].lower()


# ============================================================================= the command line


def test_dashboard_url_prints_the_login_address_with_the_token_in_the_fragment(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.a
    env = {"FWLEDGER_HOME": str(tmp_path / "home"), "FWLEDGER_TRACKER": ""}
    data = str(a.tracker.config.data_dir)
    res = CliRunner().invoke(cli, ["tracker", "dashboard-url", "--data", data, "--url", a.url + "/"], env=env,
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"{a.url}/dashboard/login#{a.token}"
    res = CliRunner().invoke(cli, ["tracker", "dashboard-url", "--data", data, "--url", a.url, "--json"], env=env,
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert '"url": "' + login_url(a.url, a.token) + '"' in res.stdout
    # the address logs in: what the page's script posts is what follows the '#'
    token = urlsplit(login_url(a.url, a.token)).fragment
    assert get(a, API[0], headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # no token file there: an error, and none is made (the tracker makes it)
    empty = tmp_path / "empty"
    res = CliRunner().invoke(cli, ["tracker", "dashboard-url", "--data", str(empty), "--url", a.url], env=env)
    assert res.exit_code != 0 and "first start" in (res.output + (res.stderr or ""))
    assert not os.path.exists(empty / "dashboard.token")


def test_up_prints_the_login_address_and_its_record_holds_only_the_command(fleet: Fleet, tmp_path: Path) -> None:
    """``fwledger up``'s record (``stack.json``) names the dashboard and the command that prints its
    login address; the address itself (with the token) is read from the tracker's file to print."""
    a, home = fleet.a, tmp_path / "home"
    setup = {"vendor_key": "k.json", "passphrase_file": "p", "product": "main-fw", "hardware": "cam-r1"}
    record: dict[str, Any] = {"home": str(home), "setup": setup,
                              "urls": {"rpc": "http://127.0.0.1:1", "server": "http://127.0.0.1:2", "tracker": a.url,
                                       "dashboard": a.url + "/dashboard"}}
    assert stack.dashboard_login_url(record) is None  # the tracker has not made its token yet
    tracker_dir = stack.stack_dir(home) / "tracker"
    tracker_dir.mkdir(parents=True)
    (tracker_dir / "dashboard.token").write_text(a.token + "\n")
    assert stack.dashboard_login_url(record) == login_url(a.url, a.token)
    command = stack.commands(record)["dashboard"]
    assert a.token not in command and a.token not in str(record)
    argv = shlex.split(command)
    assert argv[:3] == ["fwledger", "tracker", "dashboard-url"]
    res = CliRunner().invoke(cli, argv[1:], env={"FWLEDGER_HOME": str(home), "FWLEDGER_TRACKER": ""},
                             catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.strip() == login_url(a.url, a.token), res.output
