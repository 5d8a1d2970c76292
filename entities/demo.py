"""`fwledger demo`: the ledger side of X.1368 Appendix II end to end, in one process.

Runs on the embedded chain with real components (the Vyper registry compiled from
``contracts/``, the full node's SQLite index, the light node's Merkle-Patricia proofs). Each step
states the outcome it expects; the demo succeeds only if every one happened. The device-side
steps (download, decrypt, install, fall back) join as the entity issues land.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ledger_node.compiler import registry_contract
from ledger_node.errors import ContractRevert, FwledgerError
from ledger_node.fullnode import FullNode, Index
from ledger_node.lightnode import fetch_release_proof, verify_release
from ledger_node.providers import connect, dev_accounts
from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version
from ledger_node.registry import Registry, deploy

__all__ = ["run_demo"]


def _record(version: str, prev: bytes, product: str = "main-fw", hardware: tuple[str, ...] = ("cam-r1", "cam-r2"),
            deps: tuple[Dependency, ...] = ()) -> ReleaseRecord:
    image = f"{product} {version} firmware image".encode() * 512
    return ReleaseRecord(prev_hash=prev, data=ReleaseData(
        merkle_root=hashlib.sha256(b"merkle" + image).digest(), vendor_name="acme", publish_time=0,
        product=product, version=Version.parse(version), file_hash=hashlib.sha256(image).digest(),
        file_link=f"http://127.0.0.1/fw/acme/{product}-{version}.bin", file_name=f"{product}-{version}.bin",
        file_size=len(image), supported_hardware=hardware, dependencies=deps))


def run_demo(*, devices: int = 12, quiet: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the report (``ok`` true only if every expected outcome happened)."""
    console = console or Console(stderr=True)
    steps: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"gas": {}}
    t0 = time.monotonic()

    def step(name: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail, ok = fn(), True
        except AssertionError as exc:
            detail, ok = f"unexpected: {exc}", False
        except FwledgerError as exc:
            detail, ok = f"unexpected error: {exc}", False
        steps.append({"step": name, "ok": ok, "detail": detail, "seconds": round(time.monotonic() - started, 3)})
        if not quiet:
            mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
            console.print(f"{mark} {name}: {detail}")

    w3 = connect("embedded")
    a1, vendor, a2, a3, stranger = dev_accounts(w3, 5)
    compiled = registry_contract()
    state: dict[str, Any] = {}

    def s_deploy() -> str:
        dep = deploy(w3, a1, [a1.address, a2.address, a3.address], threshold=2, compiled=compiled)
        state["dep"] = dep
        state["r1"], state["r2"] = Registry(w3, dep, a1), Registry(w3, dep, a2, check_code=False)
        return f"registry at {dep.address}, 2 of 3 administrators"

    def s_one_key() -> str:
        res = state["r1"].add_vendor(vendor.address, "acme")
        assert not res.executed and not state["r1"].is_vendor(vendor.address), "one key registered a vendor"
        return f"one administrator's approval is not enough ({res.approvals} of {res.threshold})"

    def s_admin() -> str:
        r1, r2 = state["r1"], state["r2"]
        assert r2.add_vendor(vendor.address, "acme").executed
        for hw, rev, key in (("cam-r1", 1, b"\x11" * 32), ("cam-r2", 2, b"\x12" * 32)):
            r1.add_hardware(hw, rev, key)
            assert r2.add_hardware(hw, rev, key).executed
        r1.set_policy("cam-r1", "acme", "main-fw", max_version=Version(1, 1, 65535))
        assert r2.set_policy("cam-r1", "acme", "main-fw", max_version=Version(1, 1, 65535)).executed
        return "vendor acme, hardware cam-r1 (rev 1) and cam-r2 (rev 2), policy: cam-r1 runs main-fw <= 1.1.x"

    def s_publish() -> str:
        v = state["r1"].with_account(vendor)
        m1 = v.publish(_record("1.0.0", ZERO_HASH))
        s1 = v.publish(_record("1.0.0", ZERO_HASH, product="sensor-drv",
                               deps=(Dependency("main-fw", Version(1, 0, 0), Version(1, 65535, 65535)),)))
        m2 = v.publish(_record("1.1.0", m1.header_hash))
        m3 = v.publish(_record("1.2.0", m2.header_hash, hardware=("cam-r2",)))
        state.update(m1=m1, m2=m2, m3=m3, s1=s1)
        figures["gas"] = {"publish_first_of_line": m1.gas_used, "publish_next": m2.gas_used}
        return f"main-fw 1.0.0 -> 1.1.0 -> 1.2.0 and sensor-drv 1.0.0; {m2.gas_used} gas per chained release"

    def s_stranger() -> str:
        try:
            state["r1"].with_account(stranger).publish(_record("9.0.0", state["m3"].header_hash))
        except ContractRevert as exc:
            return f"refused on chain: {exc.reason}"
        raise AssertionError("a non-vendor published")

    def s_rollback() -> str:
        try:
            state["r1"].with_account(vendor).publish(_record("1.0.5", state["m3"].header_hash))
        except ContractRevert as exc:
            return f"refused on chain: {exc.reason}"
        raise AssertionError("a lower version was accepted")

    def s_fullnode() -> str:
        with tempfile.TemporaryDirectory() as tmp:
            fn = FullNode(w3, state["dep"], Index(Path(tmp) / "index.sqlite"), batch_blocks=4)
            report = fn.sync_once()
            rels = fn.index.releases()
            head = fn.index.head("acme", "main-fw")
            state["index_releases"] = len(rels)
            assert len(rels) == 4, f"{len(rels)} releases indexed"
            assert head is not None and head.header_hash == state["m3"].header_hash, "wrong head"
            fn.index.close()
        return f"{len(rels)} records ingested, hash chains and version order re-verified (to block {report.to_block})"

    def verify(record: ReleaseRecord, hw: str) -> Any:
        dep = state["dep"]
        hr, bh, proof = fetch_release_proof(w3, compiled, dep.address, record, hw_id=hw)
        return verify_release(header_rlp=hr, block_hash=bh, registry_address=dep.address,
                              code_hash=compiled.runtime_code_hash, compiled=compiled, record=record,
                              proof=proof, hw_id=hw)

    def s_light() -> str:
        v = verify(state["m3"].record, "cam-r2")
        assert v.entry.exists and v.entry.head and not v.entry.revoked and v.vendor_active
        return f"head main-fw {v.entry.version} proven from block {v.block.number}'s state root"

    def s_tamper() -> str:
        rec = state["m3"].record
        forged = ReleaseRecord(rec.prev_hash, ReleaseData(**{**rec.data.__dict__, "file_hash": b"\x66" * 32}))
        v = verify(forged, "cam-r2")
        assert not v.entry.exists, "a forged record was proven"
        return "a record with a changed file hash is proven absent from the chain"

    def s_devices() -> str:
        results = []
        for i in range(devices):
            hw = "cam-r1" if i % 2 == 0 else "cam-r2"
            # the newest main-fw release the device's class may run, proven per device
            for cand in (state["m3"], state["m2"], state["m1"]):
                if hw not in cand.record.data.supported_hardware:
                    continue
                v = verify(cand.record, hw)
                if v.entry.exists and not v.entry.revoked and (v.policy is None or v.policy.permits(v.entry.version)):
                    results.append({"device": f"dev-{i:03d}", "hardware": hw, "target": str(v.entry.version)})
                    break
        figures["devices"] = results
        r1 = {r["target"] for r in results if r["hardware"] == "cam-r1"}
        r2 = {r["target"] for r in results if r["hardware"] == "cam-r2"}
        assert len(results) == devices, "a device found no release"
        assert r1 <= {"1.1.0"} and r2 <= {"1.2.0"}, f"policy not applied: {r1} {r2}"
        return f"{devices} devices: cam-r1 -> 1.1.0 (policy cap), cam-r2 -> 1.2.0 (head)"

    def s_revoke() -> str:
        v = state["r1"].with_account(vendor)
        res = v.revoke("acme", "main-fw", state["m2"].header_hash, "demo: signing mistake")
        assert res.executed
        proven = verify(state["m2"].record, "cam-r1")
        assert proven.entry.revoked, "revocation not proven"
        return "vendor revoked main-fw 1.1.0; devices now prove it revoked"

    for name, fn in (("deploy", s_deploy), ("k-of-n", s_one_key), ("administration", s_admin),
                     ("publish", s_publish), ("non-vendor refused", s_stranger), ("rollback refused", s_rollback),
                     ("full node", s_fullnode), ("light node", s_light), ("tampered record", s_tamper),
                     ("devices", s_devices), ("revocation", s_revoke)):
        if steps and not steps[-1]["ok"]:
            steps.append({"step": name, "ok": False, "detail": "skipped after a failure", "seconds": 0})
            continue
        step(name, fn)

    figures["seconds"] = round(time.monotonic() - t0, 2)
    ok = all(s["ok"] for s in steps)
    if not quiet:
        table = Table(title="fwledger demo: devices and the release each may install")
        for col in ("device", "hardware", "target"):
            table.add_column(col)
        for r in figures.get("devices", []):
            table.add_row(r["device"], r["hardware"], r["target"])
        console.print(table)
        console.print(f"gas: {figures['gas']}; time: {figures['seconds']} s; "
                      f"{'[green]all expected outcomes happened[/]' if ok else '[red]FAILED[/]'}")
    return {"ok": ok, "steps": steps, "figures": figures}
