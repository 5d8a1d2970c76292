"""``fwledger server images|bars|downloads|devices|known-bad``: the operator's view of a running
firmware server from the command line.

The world is :mod:`tests.integration.server_world`'s: on the embedded chain the server runs
in this process (uvicorn in a thread), on anvil it is the real ``fwledger server run`` process.
The author's bundles, the device registrations and downloads are real signed requests over HTTP;
the CLI runs in-process (``CliRunner``) against the server's URL with the operator token of its
data folder. What the CLI prints is compared with what the server's own API and database hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from click.testing import CliRunner, Result

from entities.cli import cli
from tests.integration.server_world import (  # noqa: F401 (make_server, world: fixtures)
    Server,
    World,
    _bundle_bytes,
    _split,
    code_of,
    fetch,
    make_server,
    new_device,
    published,
    register,
    upload,
    world,
)


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "server", *args])


def ok(home: Path, *args: str) -> Any:
    res = run(home, *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_the_operator_reads_images_downloads_devices_bars_and_known_bad(
        world: World, make_server: Callable[..., Server], tmp_path: Path) -> None:  # noqa: F811
    """Two published images, two devices, their downloads, a barred vendor lifted again and a
    known-bad hash: each view's JSON is the server's own answer with full 66-character hashes,
    its filters (product, state, device, image, vendor) select, and the tables name the rows with
    every hash whole on its own line."""
    srv = make_server()
    home = tmp_path / "cli-home"
    base = ("--server", srv.url, "--data", str(srv.data))
    hh1, _h1, _ = published(world, srv, tmp_path, "1.0.0")
    hh2, _h2, _ = published(world, srv, tmp_path, "1.1.0")
    a, b = new_device(), new_device()
    assert register(srv, a, "cam-a", location="eu-west").status_code == 201
    assert register(srv, b, "cam-b").status_code == 201
    assert fetch(srv, a, f"/v1/images/{hh1}").status_code == 200
    assert fetch(srv, a, f"/v1/images/{hh2}").status_code == 200
    assert fetch(srv, b, f"/v1/images/{hh2}/header").status_code == 200

    images = ok(home, "images", *base)
    assert images == requests.get(srv.url + "/v1/images", timeout=30).json()
    assert sorted((i["version"], i["header_hash"], i["state"]) for i in images) == [
        ("1.0.0", hh1, "published"), ("1.1.0", hh2, "published")]
    assert all(len(i["header_hash"]) == 66 and len(i["file_hash"]) == 66 for i in images)
    assert ok(home, "images", *base, "--product", "no-such-product") == []
    assert len(ok(home, "images", *base, "--state", "published")) == 2
    table = run(home, "images", *base)
    assert table.exit_code == 0 and f"header hash: {hh1}" in table.stdout and f"header hash: {hh2}" in table.stdout

    everything = ok(home, "downloads", *base)
    assert everything == srv.admin("GET", "/v1/downloads?limit=100").json()
    assert len(everything) == 3 and all(len(r["header_hash"]) == 66 for r in everything)
    of_a = ok(home, "downloads", *base, "--device", "cam-a")
    assert [(r["device_id"], r["header_hash"], r["what"]) for r in of_a] == [("cam-a", hh2, "payload"),
                                                                            ("cam-a", hh1, "payload")]
    assert [r["device_id"] for r in ok(home, "downloads", *base, "--device", b.address)] == ["cam-b"]
    of_hh2 = ok(home, "downloads", *base, "--image", hh2.upper().replace("0X", "0x"))
    assert sorted((r["device_id"], r["what"]) for r in of_hh2) == [("cam-a", "payload"), ("cam-b", "header")]
    assert len(ok(home, "downloads", *base, "--image", hh1, "--device", "cam-b")) == 0
    assert len(ok(home, "downloads", *base, "--limit", "1")) == 1
    table = run(home, "downloads", *base, "--device", "cam-a")
    assert table.exit_code == 0 and "cam-a" in table.stdout and hh1 in table.stdout and hh2 in table.stdout

    devices = ok(home, "devices", *base)
    assert sorted((d["device_id"], d["address"], d["location"]) for d in devices) == sorted(
        [("cam-a", a.address, "eu-west"), ("cam-b", b.address, None)])

    # a malicious upload bars globex; the operator lifts the bar; both are in the history
    globex = world.chain.vendor2
    head, payload = _split(_bundle_bytes(world, tmp_path, "1.0.0", account=globex, vendor="globex")[0])
    bad = upload(srv, globex, head + payload[:-1] + bytes([payload[-1] ^ 1]))
    assert (bad.status_code, code_of(bad)) == (422, "hash_mismatch")
    ok(home, "unbar", "globex", "--reason", "rebuilt their pipeline", *base)
    bars = ok(home, "bars", *base)
    assert [(r["vendor_name"], r["action"]) for r in bars] == [("globex", "barred"), ("globex", "lifted")]
    assert bars[1]["reason"] == "rebuilt their pipeline"
    assert ok(home, "bars", *base, "--vendor", "acme") == []

    bad_hash = "0x" + "ab" * 32
    assert srv.admin("POST", "/v1/admin/known-bad", {"file_hash": bad_hash, "reason": "leaked key"}).status_code == 201
    known = ok(home, "known-bad", *base)
    assert [(k["file_hash"], k["reason"]) for k in known] == [(bad_hash, "leaked key")]
    table = run(home, "known-bad", *base)
    assert table.exit_code == 0 and f"#1 file hash: {bad_hash}" in table.stdout and "leaked key" in table.stdout


def test_views_refuse_without_the_operators_token_and_bad_input(
        world: World, make_server: Callable[..., Server], tmp_path: Path) -> None:  # noqa: F811
    """Operator views with a wrong token: exit 1, one ``error:`` line naming the 401; without any
    token and no data folder to read it from: exit 1; images (public) still answer. Bad filters
    are usage errors (exit 2). The server's state is unchanged by all of it."""
    srv = make_server()
    home = tmp_path / "cli-home"
    before = srv.snapshot()
    for view in ("bars", "downloads", "devices", "known-bad"):
        res = run(home, view, "--server", srv.url, "--token", "x" * 40)
        assert res.exit_code == 1, res.output
        assert res.stderr.startswith("error: ") and "401" in res.stderr and res.stderr.count("\n") == 1
        res = run(home, view, "--server", srv.url, "--data", str(tmp_path / "nowhere"))
        assert res.exit_code == 1 and "no operator token" in res.stderr, res.output
    assert ok(home, "images", "--server", srv.url, "--data", str(tmp_path / "nowhere")) == []
    assert run(home, "downloads", "--server", srv.url, "--image", "0x1234", "--data", str(srv.data)).exit_code == 2
    assert run(home, "downloads", "--server", srv.url, "--limit", "0", "--data", str(srv.data)).exit_code == 2
    assert run(home, "images", "--server", "ftp://x", "--data", str(srv.data)).exit_code == 2
    assert run(home, "images", "--state", "gone", "--server", srv.url).exit_code == 2
    assert srv.snapshot() == before
