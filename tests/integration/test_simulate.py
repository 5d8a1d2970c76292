"""`fwledger simulate`: the in-process fleet against a real server-module tracker (issue 6).

A small fleet per run (the 10,000-device figures are in docs/PERFORMANCE.md); each assertion is
an outcome the simulation must reach, not a speed.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from entities.cli import cli
from entities.simulate import run_simulation


def test_flat_and_hierarchical_fleets_update_only_entitled_devices() -> None:
    flat = run_simulation(devices=40, depth=1, quiet=True)
    tree = run_simulation(devices=40, depth=2, fanout=10, quiet=True)
    for rep in (flat, tree):
        assert rep["ok"], rep
        assert rep["updated"] == rep["entitled"] > 0
        assert rep["not_entitled"] > 0 and rep["not_entitled_untouched"]
        assert rep["not_entitled_listed_with_reason"] == rep["not_entitled"]
        assert rep["chain_queries"]["devices"] == 0  # R10.e.ii: devices never query the chain
        assert rep["rollouts"][0]["state"] == "completed"
        assert rep["downloads"] == rep["entitled"]
    assert tree["intermediates"] == 4
    # the server module keeps evidence per release, class and block, and intermediates answer from
    # their own cache: either way a fleet at one head costs the chain a few proofs, not some per device
    for rep in (flat, tree):
        assert rep["chain_queries"]["trackers"] < rep["entitled"] / 2, rep["chain_queries"]
    assert tree["chain_queries"]["trackers"] <= flat["chain_queries"]["trackers"]
    assert tree["server_module_bytes_per_device"] < flat["server_module_bytes_per_device"]
    assert sum(t["cache_hits"] for t in tree["tiers"][1:]) > 0


def test_failing_canary_halts_the_rollout() -> None:
    rep = run_simulation(devices=40, depth=1, fail_rate=0.6, quiet=True)
    (rollout,) = rep["rollouts"]
    assert rollout["state"] == "halted"
    assert rep["failure_causes"].get("health_check_failed", 0) >= 1
    assert rep["updated"] < rep["entitled"]  # the later waves never got a command
    assert not rollout["waves"][-1]["open"]


def test_cli_json_is_one_document() -> None:
    res = CliRunner().invoke(cli, ["simulate", "--devices", "12", "--depth", "2", "--fanout", "4", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["depth"] == 2 and doc["devices"] == 12


def test_cli_refuses_bad_waves() -> None:
    res = CliRunner().invoke(cli, ["simulate", "--devices", "5", "--waves", "0.5,x"])
    assert res.exit_code == 2 and "--waves" in res.output


def test_progress_is_reported_on_the_console_as_it_goes() -> None:
    """Not a terminal: one line per phase and the count reached in each round (a live bar on a terminal)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    rep = run_simulation(devices=12, depth=1, quiet=True, progress=True, console=Console(file=buf, width=200))
    lines = buf.getvalue().splitlines()
    assert all(line.startswith("simulate: ") for line in lines) and len(lines) >= 6
    assert lines[0].startswith("simulate: deploying the registry")
    assert "simulate: registering 12 devices (first heartbeats, main-fw 1.0.0): 12/12" in lines
    n = rep["entitled"]
    assert lines[-1] == f"simulate: round {rep['rounds']}: devices updated to 1.1.0: {n}/{n}"
    assert "fwledger simulate" not in buf.getvalue()  # quiet: no final table


def test_cli_json_keeps_progress_off_stdout() -> None:
    res = CliRunner().invoke(cli, ["simulate", "--devices", "6", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["devices"] == 6  # exactly one JSON document on stdout
    assert "simulate: deploying the registry" in res.stderr and "devices updated to 1.1.0" in res.stderr
