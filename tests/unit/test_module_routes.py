"""Device routes at a module (:meth:`ModuleTable.record_route`, docs/MODULES.md section 6): an
unchanged route is not rewritten (and committed, an fsync) on every heartbeat; its ``last_seen``
stays within ``ROUTE_REFRESH`` seconds of the last heartbeat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_account import Account

from entities.status_tracker.modules import ROUTE_REFRESH, ModuleTable

HOP = Account.from_key(b"\x03" * 32).address


def routes_written(table: ModuleTable) -> list[Any]:
    seen: list[Any] = []
    table._conn.set_trace_callback(lambda sql: seen.append(sql) if "INTO routes" in sql else None)
    return seen


def test_an_unchanged_route_is_not_rewritten_on_every_heartbeat(tmp_path: Path) -> None:
    table = ModuleTable(tmp_path / "modules.sqlite")
    written = routes_written(table)
    assert table.record_route("cam-1", (HOP,), 100.0)
    for i in range(20):  # heartbeats on the same route within ROUTE_REFRESH: no write, no commit
        assert not table.record_route("cam-1", (HOP,), 100.0 + i)
    assert len(written) == 1
    assert table.routes()["cam-1"] == {"via": [HOP], "upstream": HOP, "last_seen": 100.0}
    # last_seen stays within ROUTE_REFRESH of the truth: refreshed once it is that old
    assert table.record_route("cam-1", (HOP,), 100.0 + ROUTE_REFRESH)
    assert table.routes()["cam-1"]["last_seen"] == 100.0 + ROUTE_REFRESH
    # a changed route is written at once (direct now), as is a clock that went back
    assert table.record_route("cam-1", (), 100.0 + ROUTE_REFRESH + 1)
    assert table.routes()["cam-1"] == {"via": [], "upstream": None, "last_seen": 100.0 + ROUTE_REFRESH + 1}
    assert table.record_route("cam-1", (), 50.0)
    assert table.record_route("cam-2", (), 50.0)  # another device: its own row
    assert len(written) == 5 and table.device_ids() == ["cam-1", "cam-2"]
    table.close()
