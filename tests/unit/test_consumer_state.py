"""Firmware consumer: state model, boot decisions, install machinery (pure logic + real device folders).

Each test names the X.1368 clause it covers. The pure tests call :mod:`entities.firmware_consumer.state`
and :mod:`entities.firmware_consumer.boot` directly; the device tests use real folders under
``tmp_path`` (no mocks). Power cuts are in ``tests/integration/test_power_loss.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from entities.firmware_consumer import (
    BadInstallRequest,
    BootKind,
    CommandHealthCheck,
    ComponentState,
    Device,
    DeviceBusy,
    DeviceError,
    DeviceExists,
    FactoryImage,
    ImageHashMismatch,
    InstallNotActive,
    NotADevice,
    NotInSafeMode,
    NotInTrial,
    RollbackRefused,
    SafeModeActive,
    SlotInfo,
    SlotStatus,
    StateCorrupt,
    TrialInProgress,
    UnknownComponent,
    init_device,
    read_status,
    slot_digest,
)
from entities.firmware_consumer import boot as bootlogic
from entities.firmware_consumer import device as device_module
from entities.firmware_consumer import install_session as session_module
from entities.firmware_consumer import state as S
from entities.firmware_consumer.device import EVENT_AWAITING_REPROOF
from entities.firmware_consumer.store import read_state_copies
from ledger_node.errors import FwledgerError, VerificationError

V1 = b"image one " * 3000          # ~30 KB
V2 = b"image two!" * 3100
V3 = b"image 3" * 4000
NOW = 1_700_000_000.0


def hh(version: str) -> str:
    return "0x" + hashlib.sha256(f"header:{version}".encode()).hexdigest()


def sha(data: bytes) -> str:
    """The slot digest the device makes of ``data`` (BLAKE3, ``blake3:HEX``)."""
    return slot_digest.digest_of(data)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a device folder (except the lock file): for byte-for-byte comparisons."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "device.lock"}


@pytest.fixture
def devdir(tmp_path: Path) -> Path:
    root = tmp_path / "dev"
    init_device(root, device_id="cam-0001", hardware="cam-r1",
                components={"main": FactoryImage("1.0.0", hh("1.0.0"), V1), "sensor": None})
    return root


def install(dev: Device, version: str, data: bytes, *, chunk: int = 4096, component: str = "main",
            recover: bool = False) -> None:
    begin = dev.recover if recover else dev.begin_install
    s = begin(component, version, hh(version), len(data))
    for off in range(s.offset, len(data), chunk):
        s.write_chunk(off, data[off:off + chunk])
    s.finish(sha(data))


def ok(ctx: object) -> bool:
    return True


def bad(ctx: object) -> bool:
    return False


# ----------------------------------------------------------------------------- pure: state model and codec


def confirmed_state(version: str = "1.0.0", data: bytes = V1) -> ComponentState:
    return S.factory_state("main", version=version, header_hash=hh(version), digest=sha(data), size=len(data))


def pending(st: ComponentState, version: str, data: bytes) -> ComponentState:
    slot, st = S.plan_install(st, version=version, header_hash=hh(version), size=len(data), install_id="i1")
    return S.complete_install(st, slot=slot, install_id="i1", digest=sha(data), now=NOW)


def test_envelope_detects_any_damage_and_wrong_kind() -> None:
    """A damaged state file is detected (checksum), never half-trusted (R10.c.ii)."""
    body = confirmed_state().to_json()
    data = S.encode_envelope("component-state", 7, body)
    gen, back = S.decode_envelope(data, "component-state")
    assert gen == 7 and ComponentState.from_json(back) == confirmed_state()
    text = data.decode()
    i = text.index('"counter"') + 14
    flipped = (text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:]).encode()
    for damaged in (flipped, data[: len(data) // 2], b"", b"\x00" * 40, data.replace(b'"format": 1', b'"format": 2')):
        with pytest.raises(StateCorrupt):
            S.decode_envelope(damaged, "component-state")
    with pytest.raises(StateCorrupt):
        S.decode_envelope(data, "install-journal")


def test_choose_newest_valid_copy() -> None:
    assert S.choose_newest([(3, "x"), (4, "y")]) == (1, 4, "y")
    assert S.choose_newest([(4, "x"), None]) == (0, 4, "x")
    assert S.choose_newest([None, (2, "y")]) == (1, 2, "y")
    assert S.choose_newest([(5, "x"), (5, "x")])[0] == 0
    with pytest.raises(StateCorrupt):
        S.choose_newest([None, None])


def test_state_invariants_refuse_inconsistent_bodies() -> None:
    """A checksum-valid body that breaks an invariant is still refused (two confirmed slots, etc.)."""
    st = confirmed_state()
    body = st.to_json()
    body["slots"]["b"] = dict(body["slots"]["a"])
    with pytest.raises(StateCorrupt, match="two confirmed"):
        ComponentState.from_json(body)
    body = st.to_json()
    body["attempts"] = 2
    with pytest.raises(StateCorrupt, match="attempts"):
        ComponentState.from_json(body)
    body = st.to_json()
    body["slots"]["a"]["digest"] = "blake3:zz"
    with pytest.raises(StateCorrupt):
        ComponentState.from_json(body)
    body = st.to_json()
    body["active"] = "b"  # empty slot
    with pytest.raises(StateCorrupt):
        ComponentState.from_json(body)


def test_versions_pack_like_the_ledger() -> None:
    from ledger_node.record import Version

    for text in ("0.0.0", "1.2.3", "65535.65535.65535", "2.0.10"):
        assert S.pack_version(text) == Version.parse(text).packed
    for bad_text in ("1.2", "01.2.3", "1.2.65536", "", "v1.2.3"):
        with pytest.raises(BadInstallRequest):
            S.pack_version(bad_text)


# ----------------------------------------------------------------------------- pure: install decisions


def test_install_targets_the_inactive_slot_never_the_confirmed_one() -> None:
    """Installs write only the inactive slot (R10.c.ii)."""
    st = confirmed_state()
    slot, new = S.plan_install(st, version="2.0.0", header_hash=hh("2.0.0"), size=10, install_id="x")
    assert slot == "b" and new.slot("a") == st.slot("a")
    assert new.slot("b").status is SlotStatus.WRITING
    # confirmed in b: the target is a
    st2 = bootlogic.confirm(bootlogic.plan_boot(pending(st, "2.0.0", V2), {"a": True, "b": True},
                                                max_attempts=3, now=NOW).state, now=NOW)
    assert st2.confirmed == "b"
    assert S.plan_install(st2, version="3.0.0", header_hash=hh("3.0.0"), size=10, install_id="y")[0] == "a"
    # a pending (never booted) image is superseded in place
    p = pending(st, "2.0.0", V2)
    assert S.plan_install(p, version="2.1.0", header_hash=hh("2.1.0"), size=10, install_id="z")[0] == "b"
    # a fresh component installs into a
    assert S.plan_install(S.fresh_state("x"), version="1.0.0", header_hash=hh("1"), size=1, install_id="q")[0] == "a"


def test_install_below_counter_is_rollback() -> None:
    """Anti-rollback: a version below the counter is refused (R10.d.i, C11.1.a.i)."""
    st = confirmed_state("2.0.0", V2)
    with pytest.raises(RollbackRefused) as ei:
        S.plan_install(st, version="1.9.9", header_hash=hh("1.9.9"), size=10, install_id="x")
    assert ei.value.code == "rollback"
    # equal is the verification pipeline's call (it wants strictly newer than installed); not below
    S.plan_install(st, version="2.0.0", header_hash=hh("2.0.0"), size=10, install_id="x")


def test_install_refused_during_trial_and_in_safe_mode() -> None:
    """While a trial runs nothing else installs; safe mode takes only recover (C11.1.b)."""
    st = bootlogic.plan_boot(pending(confirmed_state(), "2.0.0", V2), {"a": True, "b": True},
                             max_attempts=3, now=NOW).state
    with pytest.raises(TrialInProgress):
        S.plan_install(st, version="3.0.0", header_hash=hh("3.0.0"), size=10, install_id="x")
    safe = bootlogic.plan_boot(S.fresh_state("main"), {}, max_attempts=3, now=NOW).state
    assert safe.safe_mode
    with pytest.raises(SafeModeActive) as ei:
        S.plan_install(safe, version="1.0.0", header_hash=hh("1.0.0"), size=10, install_id="x")
    assert ei.value.code == "safe_mode"
    S.plan_install(safe, version="1.0.0", header_hash=hh("1.0.0"), size=10, install_id="x", recover=True)
    with pytest.raises(NotInSafeMode):
        S.plan_install(confirmed_state(), version="2.0.0", header_hash=hh("2"), size=10, install_id="x",
                       recover=True)


def test_reconcile_keeps_only_an_install_both_sides_agree_on() -> None:
    """Journal and state disagreeing after a cut: the install is abandoned cleanly, never half-used."""
    st = confirmed_state()
    slot, writing = S.plan_install(st, version="2.0.0", header_hash=hh("2.0.0"), size=100, install_id="i9")
    entry = S.JournalEntry("main", "i9", slot, "2.0.0", hh("2.0.0"), 100, 40)
    assert S.reconcile(writing, entry, now=NOW) == (writing, True)
    # journal without its writing slot (cut before the state was marked, or after finish): stale
    assert S.reconcile(st, entry, now=NOW) == (st, False)
    # writing slot without a journal (or another install's journal): abandoned, slot empty
    for j in (None, S.JournalEntry("main", "other", slot, "2.0.0", hh("2.0.0"), 100, 40)):
        new, keep = S.reconcile(writing, j, now=NOW)
        assert not keep and new.slot(slot).status is SlotStatus.EMPTY
        assert new.last_result is not None and new.last_result.code == "install_interrupted"
        assert new.slot("a") == st.slot("a")


# ----------------------------------------------------------------------------- pure: boot decisions


def test_pending_trial_boots_with_attempts_plus_one() -> None:
    """A pending image boots on trial, the attempt counted before it runs (R10.c.ii)."""
    st = pending(confirmed_state(), "2.0.0", V2)
    plan = bootlogic.plan_boot(st, {"a": True, "b": True}, max_attempts=3, now=NOW)
    assert (plan.kind, plan.slot, plan.state.attempts, plan.state.active) == (BootKind.TRIAL, "b", 1, "b")
    assert plan.state.slot("b").status is SlotStatus.TRIAL
    assert plan.state.counter == "1.0.0"  # not raised by a trial (C11.1.a.i)
    plan2 = bootlogic.plan_boot(plan.state, {"a": True, "b": True}, max_attempts=3, now=NOW)
    assert plan2.state.attempts == 2


def test_too_many_attempts_reverts_to_the_confirmed_slot() -> None:
    """attempts > max -> automatic revert to the previous confirmed slot (R10.c.ii)."""
    st = pending(confirmed_state(), "2.0.0", V2)
    for n in (1, 2, 3):
        plan = bootlogic.plan_boot(st, {"a": True, "b": True}, max_attempts=3, now=NOW)
        assert plan.kind is BootKind.TRIAL and plan.state.attempts == n
        st = plan.state
    plan = bootlogic.plan_boot(st, {"a": True, "b": True}, max_attempts=3, now=NOW)
    assert (plan.kind, plan.slot) == (BootKind.NORMAL, "a")
    assert plan.events == ("too_many_boot_attempts",)
    assert plan.state.slot("b").status is SlotStatus.BAD and plan.state.attempts == 0
    assert plan.state.counter == "1.0.0"
    assert plan.state.last_result is not None and plan.state.last_result.code == "too_many_boot_attempts"


def test_confirm_raises_counter_only_then() -> None:
    """The anti-rollback counter rises only when the trial is confirmed (C11.1.a.i)."""
    st = bootlogic.plan_boot(pending(confirmed_state(), "2.0.0", V2), {"a": True, "b": True},
                             max_attempts=3, now=NOW).state
    assert st.counter == "1.0.0"
    done = bootlogic.confirm(st, now=NOW)
    assert done.counter == "2.0.0" and done.confirmed == "b"
    assert done.slot("a").status is SlotStatus.SUPERSEDED and done.attempts == 0
    with pytest.raises(NotInTrial):
        bootlogic.confirm(done, now=NOW)
    with pytest.raises(NotInTrial):  # a pending image must boot before it can be confirmed
        bootlogic.confirm(pending(confirmed_state(), "2.0.0", V2), now=NOW)


def test_corrupt_slot_is_never_booted() -> None:
    """A slot whose bytes do not hash to the state's record does not boot (R10.a.ii, R10.c.ii)."""
    st = pending(confirmed_state(), "2.0.0", V2)
    plan = bootlogic.plan_boot(st, {"a": True, "b": False}, max_attempts=3, now=NOW)
    assert (plan.kind, plan.slot, plan.events) == (BootKind.NORMAL, "a", ("image_corrupt",))
    assert plan.state.slot("b").status is SlotStatus.BAD
    plan = bootlogic.plan_boot(confirmed_state(), {"a": False}, max_attempts=3, now=NOW)
    assert plan.kind is BootKind.SAFE and plan.slot is None and plan.state.safe_mode
    assert plan.events == ("image_corrupt", "no_bootable_slot")
    assert plan.state.slot("a").status is SlotStatus.BAD
    # an unhashed slot is not intact
    assert bootlogic.plan_boot(confirmed_state(), {}, max_attempts=3, now=NOW).kind is BootKind.SAFE


def test_superseded_slot_below_counter_never_boots() -> None:
    """After v2 is confirmed, v1 (below the counter) is not a fallback: safe mode instead (R10.d.i)."""
    st = bootlogic.confirm(bootlogic.plan_boot(pending(confirmed_state(), "2.0.0", V2), {"a": True, "b": True},
                                               max_attempts=3, now=NOW).state, now=NOW)
    assert bootlogic.slots_to_check(st) == ("b",)
    plan = bootlogic.plan_boot(st, {"a": True, "b": False}, max_attempts=3, now=NOW)
    assert plan.kind is BootKind.SAFE


def test_trial_of_recovered_image_ends_safe_mode_only_on_confirm() -> None:
    """Safe mode -> recover -> trial -> confirm restores service (C11.1.b)."""
    safe = bootlogic.plan_boot(S.fresh_state("main"), {}, max_attempts=3, now=NOW).state
    slot, st = S.plan_install(safe, version="1.0.0", header_hash=hh("1.0.0"), size=len(V1), install_id="r",
                              recover=True)
    st = S.complete_install(st, slot=slot, install_id="r", digest=sha(V1), now=NOW)
    assert st.last_result is not None and st.last_result.op == "recover"
    trial = bootlogic.plan_boot(st, {slot: True}, max_attempts=3, now=NOW)
    assert trial.kind is BootKind.TRIAL and trial.state.safe_mode and trial.state.mode == "trial"
    done = bootlogic.confirm(trial.state, now=NOW)
    assert not done.safe_mode and done.mode == "normal" and done.counter == "1.0.0"
    # a failing recovered image falls back into safe mode
    back = bootlogic.plan_boot(bootlogic.revert(trial.state, code="health_check_failed", message="", now=NOW),
                               {}, max_attempts=3, now=NOW)
    assert back.kind is BootKind.SAFE and back.state.last_result is not None
    assert back.state.last_result.code == "health_check_failed"


# ----------------------------------------------------------------------------- device folder


def test_init_layout_and_status(devdir: Path) -> None:
    """Layout and `device status` fields: versions, active slot, trial, last result (C11.1.a.ii)."""
    for rel in ("device.json", "safe/image", "journal", "components/main/slot_a", "components/main/slot_b",
                "components/main/state.0.json", "components/main/state.1.json", "components/sensor/slot_a"):
        assert (devdir / rel).exists(), rel
    assert (devdir / "components/main/slot_a").read_bytes() == V1
    with pytest.raises(DeviceExists):
        init_device(devdir, device_id="x", hardware="y", components=["main"])
    status = read_status(devdir)
    assert status["device"] == {"id": "cam-0001", "hardware": "cam-r1", "mode": "off", "max_boot_attempts": 3}
    main = status["components"][0]
    assert (main["name"], main["mode"], main["confirmed"], main["counter"]) == ("main", "off", "a", "1.0.0")
    with Device(devdir, health_check=ok) as dev:
        outs = dev.boot()
        assert [(o.component, o.kind, o.slot) for o in outs] == [("main", BootKind.NORMAL, "a"),
                                                                   ("sensor", BootKind.SAFE, None)]
        assert outs[1].safe_image_ok is True
        st = dev.status()
    json.dumps(st)
    assert st["device"]["mode"] == "safe"
    main, sensor = st["components"]
    assert (main["mode"], main["active"], main["version"], main["header_hash"]) == ("normal", "a", "1.0.0",
                                                                                    hh("1.0.0"))
    assert sensor["last_result"]["code"] == "no_bootable_slot"
    assert read_status(devdir) == st


def test_device_is_locked_against_a_second_writer(devdir: Path) -> None:
    with Device(devdir) as dev:
        with pytest.raises(DeviceBusy) as ei:
            Device(devdir)
        assert ei.value.code == "device_busy"
        with pytest.raises(UnknownComponent):
            dev.state("nope")
    Device(devdir).close()
    with pytest.raises(NotADevice):
        Device(devdir.parent / "nowhere")


def test_install_trial_confirm_never_touches_active_slot(devdir: Path) -> None:
    """Install -> pending -> trial -> confirm; slot a (active) byte-identical throughout (R10.c.ii, C11.1.a.i)."""
    with Device(devdir, health_check=None) as dev:
        dev.boot()
        a_before = dev.slot_path("main", "a").read_bytes()
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        assert s.slot == "b" and (devdir / "journal/main.json").exists()
        for off in range(0, len(V2), 5000):
            s.write_chunk(off, V2[off:off + 5000])
            assert dev.slot_path("main", "a").read_bytes() == a_before
        st = s.finish(sha(V2))
        assert not (devdir / "journal/main.json").exists()
        assert st.slot("b").status is SlotStatus.PENDING and st.counter == "1.0.0" and st.active == "a"
        out = dev.boot_component("main")
        assert (out.kind, out.slot, out.attempt, out.confirmed) == (BootKind.TRIAL, "b", 1, False)
        assert dev.state("main").counter == "1.0.0"
        dev.confirm("main")
        st = dev.state("main")
        assert (st.confirmed, st.counter, st.mode) == ("b", "2.0.0", "normal")
        assert dev.slot_path("main", "a").read_bytes() == a_before
        assert st.last_result is not None and (st.last_result.op, st.last_result.ok) == ("confirm", True)


def test_failed_trial_reverts_automatically(devdir: Path) -> None:
    """A trial whose health check fails reverts to the confirmed image (R10.c.ii, R10.c.i)."""
    with Device(devdir, health_check=bad) as dev:
        install(dev, "2.0.0", V2)
        out = dev.boot_component("main")
        assert (out.kind, out.slot, out.version, out.reverted) == (BootKind.NORMAL, "a", "1.0.0", True)
        assert out.events == ("health_check_failed",)
        st = dev.state("main")
        assert st.slot("b").status is SlotStatus.BAD and st.counter == "1.0.0"
        assert st.last_result is not None and st.last_result.code == "health_check_failed"
        assert dev.status()["components"][0]["last_result"]["code"] == "health_check_failed"
        # a later install may reuse the bad slot
        install(dev, "2.0.1", V3)
        assert dev.state("main").slot("b").status is SlotStatus.PENDING


def test_trial_health_hook_exception_is_a_failure(devdir: Path) -> None:
    def boom(ctx: object) -> bool:
        raise RuntimeError("no network")

    with Device(devdir, health_check=boom) as dev:
        install(dev, "2.0.0", V2)
        out = dev.boot_component("main")
        assert out.reverted and out.slot == "a" and "health_check_error" in out.events


def test_too_many_boot_attempts_reverts(devdir: Path) -> None:
    """A trial that never gets confirmed (crashes/hangs) reverts after max attempts (R10.c.ii)."""
    with Device(devdir, health_check=None, max_boot_attempts=2) as dev:
        install(dev, "2.0.0", V2)
        assert dev.boot_component("main").attempt == 1
        assert dev.boot_component("main").attempt == 2
        out = dev.boot_component("main")
        assert (out.kind, out.slot, out.events) == (BootKind.NORMAL, "a", ("too_many_boot_attempts",))
        with pytest.raises(NotInTrial):
            dev.confirm("main")


def test_manual_revert(devdir: Path) -> None:
    with Device(devdir) as dev:
        install(dev, "2.0.0", V2)
        dev.boot_component("main")
        out = dev.revert("main")
        assert (out.slot, out.reverted, out.events) == ("a", True, ("manual_revert",))
        with pytest.raises(NotInTrial):
            dev.revert("main")


def test_both_slots_bad_safe_mode_then_recover_restores_service(devdir: Path) -> None:
    """Both slots unbootable -> safe mode, normal installs refused, recover restores service (C11.1.b)."""
    with Device(devdir, health_check=bad) as dev:
        install(dev, "2.0.0", V2)
        dev.slot_path("main", "a").write_bytes(b"bit rot" + V1[7:])  # the confirmed image rots
        out = dev.boot_component("main")  # v2 trial fails, v1 no longer matches
        assert out.kind is BootKind.SAFE and out.reverted and out.safe_image_ok
        assert out.events == ("health_check_failed", "image_corrupt", "no_bootable_slot")
        st = dev.state("main")
        assert st.safe_mode and st.active is None
        assert {st.slot("a").status, st.slot("b").status} == {SlotStatus.BAD}
        snapshot = tree_bytes(devdir)
        with pytest.raises(SafeModeActive):
            dev.begin_install("main", "3.0.0", hh("3.0.0"), len(V3))
        with pytest.raises(RollbackRefused):
            dev.recover("main", "0.9.0", hh("0.9.0"), len(V1))
        assert tree_bytes(devdir) == snapshot  # refusals change nothing
        assert dev.boot_component("main").kind is BootKind.SAFE  # stays safe
        dev.health_check = ok
        install(dev, "3.0.0", V3, recover=True)
        out = dev.boot_component("main")
        assert (out.kind, out.confirmed, out.version) == (BootKind.NORMAL, True, "3.0.0")
        st = dev.state("main")
        assert not st.safe_mode and st.counter == "3.0.0" and st.mode == "normal"
        with pytest.raises(NotInSafeMode):
            dev.recover("main", "4.0.0", hh("4.0.0"), 10)


def test_fresh_component_recovers_from_safe_mode(devdir: Path) -> None:
    with Device(devdir, health_check=ok) as dev:
        assert dev.boot_component("sensor").kind is BootKind.SAFE
        install(dev, "0.1.0", V3, component="sensor", recover=True)
        assert dev.boot_component("sensor").confirmed
        assert dev.state("sensor").mode == "normal"


def test_rollback_refused_changes_nothing(devdir: Path) -> None:
    """Installing below the anti-rollback counter is refused; every byte of the device unchanged (R10.d.i)."""
    with Device(devdir, health_check=ok) as dev:
        install(dev, "2.0.0", V2)
        dev.boot_component("main")
        before = tree_bytes(devdir)
        for v in ("1.0.0", "1.9.9"):
            with pytest.raises(RollbackRefused):
                dev.begin_install("main", v, hh(v), len(V1))
        assert tree_bytes(devdir) == before


def test_trial_in_progress_refuses_install(devdir: Path) -> None:
    with Device(devdir) as dev:
        install(dev, "2.0.0", V2)
        dev.boot_component("main")
        with pytest.raises(TrialInProgress) as ei:
            dev.begin_install("main", "3.0.0", hh("3.0.0"), len(V3))
        assert ei.value.code == "trial_in_progress"


def test_hash_mismatch_at_finish_abandons_install(devdir: Path) -> None:
    """Bytes that do not hash as announced are never marked installable (R10.a.ii)."""
    with Device(devdir, health_check=ok) as dev:
        dev.boot()
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        s.write_chunk(0, V2[:-1] + b"?")
        with pytest.raises(ImageHashMismatch) as ei:
            s.finish(sha(V2))
        assert ei.value.code == "hash_mismatch" and isinstance(ei.value, VerificationError)
        st = dev.state("main")
        assert st.slot("b").status is SlotStatus.EMPTY and st.active == "a" and st.confirmed == "a"
        assert st.last_result is not None and st.last_result.code == "hash_mismatch"
        assert not (devdir / "journal/main.json").exists()
        with pytest.raises(InstallNotActive):
            s.write_chunk(0, b"x")
        assert dev.boot_component("main").slot == "a"


def test_write_chunk_bounds_gaps_and_idempotence(devdir: Path) -> None:
    with Device(devdir) as dev:
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), 100)
        with pytest.raises(BadInstallRequest, match="gap"):
            s.write_chunk(10, b"x" * 10)
        with pytest.raises(BadInstallRequest, match="beyond"):
            s.write_chunk(0, b"x" * 101)
        assert s.write_chunk(0, b"a" * 60) == 60
        assert s.write_chunk(20, b"a" * 40) == 60  # rewrite of a written range: harmless
        assert s.write_chunk(60, b"") == 60
        with pytest.raises(BadInstallRequest, match="60 of 100"):
            s.finish(sha(b"a" * 100))
        assert s.write_chunk(60, b"a" * 40) == 100
        s.finish(sha(b"a" * 100))


def test_install_resumes_from_durable_offset_after_restart(devdir: Path) -> None:
    """A restart resumes an install from its last durable checkpoint (R10.c.ii)."""
    with Device(devdir, checkpoint_bytes=10_000) as dev:
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        for off in range(0, 25_000, 5000):
            s.write_chunk(off, V2[off:off + 5000])
        assert (s.offset, s.durable) == (25_000, 20_000)
        assert read_status(devdir)["components"][0]["install"]["durable"] == 20_000
    # "power cut": a new process opens the device
    with Device(devdir, checkpoint_bytes=10_000, health_check=ok) as dev:
        s2 = dev.resume_install("main")
        assert s2 is not None and s2.resumed and s2.offset == 20_000 and s2.slot == "b"
        assert dev.slot_path("main", "b").stat().st_size == 20_000  # undurable tail dropped
        s2.close()
        s3 = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))  # same install: resumes too
        assert s3.resumed_from == 20_000
        for off in range(s3.offset, len(V2), 5000):
            s3.write_chunk(off, V2[off:off + 5000])
        s3.finish(sha(V2))
        assert dev.boot_component("main").confirmed


def test_other_install_supersedes_interrupted_one_and_abandon_is_clean(devdir: Path) -> None:
    with Device(devdir) as dev:
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        s.write_chunk(0, V2[:4096])
        s.close()
        s2 = dev.begin_install("main", "2.1.0", hh("2.1.0"), len(V3))
        assert not s2.resumed and s2.offset == 0
        assert dev.state("main").last_result.code == "superseded"  # type: ignore[union-attr]
        s2.abandon()
        st = dev.state("main")
        assert st.slot("b").status is SlotStatus.EMPTY and st.last_result is not None
        assert st.last_result.code == "abandoned"
        assert dev.resume_install("main") is None
        assert not (devdir / "journal/main.json").exists()


def test_stale_journal_and_orphan_writing_slot_cleaned_at_open(devdir: Path) -> None:
    """Journal/state left disagreeing by a cut are reconciled when the device is opened."""
    with Device(devdir) as dev:
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        s.write_chunk(0, V2[:8192])
    (devdir / "journal/main.json").write_bytes(b"{ torn")  # a damaged journal is no journal
    with Device(devdir) as dev:
        st = dev.state("main")
        assert st.slot("b").status is SlotStatus.EMPTY
        assert st.last_result is not None and st.last_result.code == "install_interrupted"
        assert not (devdir / "journal/main.json").exists()
        assert dev.slot_path("main", "b").stat().st_size == 0


def test_damaged_state_copy_falls_back_to_the_other(devdir: Path) -> None:
    """A damaged state file is detected and the other copy used; the next commit repairs it (R10.c.ii)."""
    with Device(devdir, health_check=ok) as dev:
        install(dev, "2.0.0", V2)
        dev.boot_component("main")
        expected = dev.state("main")
    p0, p1 = devdir / "components/main/state.0.json", devdir / "components/main/state.1.json"
    for damaged in (p0, p1):
        raw = bytearray(damaged.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        damaged.write_bytes(bytes(raw))
        status = read_status(devdir)["components"][0]
        assert status["state"]["copies_valid"] == [damaged is p1, damaged is p0]
        with Device(devdir, health_check=ok) as dev:
            assert dev.state("main") == expected
            assert dev.boot_component("main").slot == "b"
            dev.record_result("main", "verify", "bad_signature", "signature by another key")
        copies = read_state_copies((p0, p1), ComponentState.from_json)
        assert copies.valid == (True, True)
        expected = ComponentState.from_json(copies.newest()[2])
        assert expected.last_result is not None and expected.last_result.code == "bad_signature"


def test_newest_copy_wins_when_a_commit_was_cut_between_copies(devdir: Path) -> None:
    """A cut between the two copies of a commit: the newer generation is used."""
    p1 = devdir / "components/main/state.1.json"
    old = p1.read_bytes()
    with Device(devdir, health_check=ok) as dev:
        dev.boot()
        install(dev, "2.0.0", V2)
        want = dev.state("main")
    p1.write_bytes(old)  # copy 1 still holds an older generation
    with Device(devdir) as dev:
        assert dev.state("main") == want


def test_both_state_copies_damaged_resets_into_safe_mode(devdir: Path) -> None:
    """No valid state: the component goes to safe mode (never boots unverified bytes); damaged files kept."""
    for p in (devdir / "components/main/state.0.json", devdir / "components/main/state.1.json"):
        p.write_bytes(b"garbage")
    assert read_status(devdir)["components"][0]["error"]["code"] == "state_corrupt"
    with Device(devdir, health_check=ok) as dev:
        with pytest.raises(StateCorrupt):
            dev.state("main")
        out = dev.boot_component("main")
        assert out.kind is BootKind.SAFE
        st = dev.state("main")
        assert st.safe_mode and st.last_result is not None and st.last_result.code == "state_corrupt"
        assert (devdir / "components/main/state.0.json.damaged").read_bytes() == b"garbage"
        install(dev, "1.0.0", V1, recover=True)
        assert dev.boot_component("main").confirmed


def test_corrupt_trial_slot_not_booted_on_device(devdir: Path) -> None:
    """Hash mismatch of a slot -> that slot is not booted (R10.a.ii)."""
    with Device(devdir, health_check=ok) as dev:
        install(dev, "2.0.0", V2)
        path = dev.slot_path("main", "b")
        raw = bytearray(path.read_bytes())
        raw[12345] ^= 0x80
        path.write_bytes(bytes(raw))
        out = dev.boot_component("main")
        assert (out.slot, out.version, out.events) == ("a", "1.0.0", ("image_corrupt",))
        assert dev.state("main").slot("b").status is SlotStatus.BAD
        path.write_bytes(V2[:-1])  # truncated also counts
        install(dev, "2.0.1", V2)
        dev.slot_path("main", "b").write_bytes(V2 + b"x")
        assert dev.boot_component("main").slot == "a"


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The slots read and hashed, in order (they are hashed as before): the boot's (device.py) and
    an install's read-back (install_session.py; rare: a session hashes the image as it writes it)."""
    reads: list[Path] = []
    real_hash_file = device_module.hash_file

    def counting(path: Path, size: int, algorithm: str = slot_digest.SLOT_ALGORITHM) -> str | None:
        reads.append(Path(path))
        return real_hash_file(path, size, algorithm)

    monkeypatch.setattr(device_module, "hash_file", counting)
    monkeypatch.setattr(session_module, "hash_file", counting)
    return reads


def test_a_trial_boot_hashes_its_fallback_only_when_a_revert_needs_it(devdir: Path, hashed: list[Path]) -> None:
    """R10.a.ii, R10.c.ii: a trial that passes never reads the confirmed slot (one hash pass, not
    two, per trial boot); a trial that fails has its fallback hashed after its health check, so an
    image on trial that damaged the confirmed slot before failing gets no boot of the damaged
    slot: it is marked bad and the component enters safe mode."""
    with Device(devdir, health_check=ok) as dev:
        install(dev, "2.0.0", V2)
    with Device(devdir, health_check=ok) as dev:  # a boot after a restart reads the trial slot back
        out = dev.boot_component("main")
        assert (out.kind, out.slot, out.confirmed) == (BootKind.NORMAL, "b", True)
        assert hashed == [dev.slot_path("main", "b")]

    def damage_fallback_then_fail(ctx: object) -> bool:
        fallback = devdir / "components" / "main" / "slot_b"
        raw = bytearray(fallback.read_bytes())
        raw[0] ^= 0xFF
        fallback.write_bytes(bytes(raw))
        return False

    hashed.clear()
    with Device(devdir, health_check=damage_fallback_then_fail) as dev:
        install(dev, "3.0.0", V3)
        out = dev.boot_component("main")
        # the trial was written and hashed by this object (no re-read), then (health check
        # failed) its fallback is read, then the safe image that now runs
        assert hashed == [dev.slot_path("main", "b"), dev.layout.safe_image]
        assert (out.kind, out.slot, out.reverted) == (BootKind.SAFE, None, True)
        assert out.events == ("health_check_failed", "image_corrupt", "no_bootable_slot")
        st = dev.state("main")
        assert st.slot("a").status is SlotStatus.BAD and st.slot("b").status is SlotStatus.BAD
        assert st.safe_mode and st.counter == "2.0.0"


def test_a_slot_just_installed_is_booted_without_a_re_read_unless_touched(devdir: Path,
                                                                         hashed: list[Path]) -> None:
    """R10.a.ii: the first boot of a slot the same Device object has just written, hashed and
    synced takes the install's digest instead of reading the slot again, as long as the file is
    the same one, untouched (device, inode, size, mtime and ctime); any write to it, even one that
    restores its size and mtime, moves its ctime, and the boot then hashes it and refuses it."""
    with Device(devdir, health_check=ok) as dev:
        install(dev, "2.0.0", V2)
        assert dev.boot_component("main").confirmed and hashed == []

        install(dev, "3.0.0", V3)
        path = dev.slot_path("main", "a")
        before = path.stat()
        with open(path, "r+b") as fh:  # same size, same mtime afterwards: only the ctime tells
            fh.seek(100)
            fh.write(bytes([V3[100] ^ 0x01]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        out = dev.boot_component("main")
        assert hashed == [path, dev.slot_path("main", "b")]  # the trial, then its fallback (booted before)
        assert (out.slot, out.version, out.events) == ("b", "2.0.0", ("image_corrupt",))
        assert dev.state("main").slot("a").status is SlotStatus.BAD


def test_a_power_on_without_the_agent_confirms_nothing(devdir: Path) -> None:
    """R10.a.i, R10.d.ii: ``Device.boot()`` (a power-on, no agent, no ledger) never confirms. An
    image whose trial was cut by a power loss boots on trial again, its attempt counted; a passing
    health check leaves it on trial (``awaiting_reproof``), the counter where it was, for the agent
    to prove its release's standing again and confirm; a failing one still reverts."""
    class PowerCut(BaseException):
        pass

    def cut(ctx: object) -> bool:
        raise PowerCut

    with Device(devdir, health_check=cut) as dev:
        install(dev, "2.0.0", V2)
        with pytest.raises(PowerCut):  # the first trial boot persisted its attempt, then the power went
            dev.boot_component("main")
        assert dev.state("main").slot("b").status is SlotStatus.TRIAL
    with Device(devdir, health_check=ok) as dev:
        (main, _sensor) = dev.boot()
        assert (main.kind, main.slot, main.confirmed, main.reverted) == (BootKind.TRIAL, "b", False, False)
        assert main.events == (EVENT_AWAITING_REPROOF,) and main.attempt == 2
        st = dev.state("main")
        assert (st.trial, st.slot("b").status, st.counter, st.confirmed) == ("b", SlotStatus.TRIAL, "1.0.0", "a")
        (again, _sensor) = dev.boot()  # powered on again, still no agent: one more attempt, still unconfirmed
        assert (again.kind, again.confirmed, again.attempt) == (BootKind.TRIAL, False, 3)
        out = dev.boot_component("main")  # the agent's boot (here without its re-proof): the attempts are used up
        assert (out.kind, out.slot, out.events) == (BootKind.NORMAL, "a", ("too_many_boot_attempts",))
        assert dev.state("main").slot("b").status is SlotStatus.BAD and dev.state("main").counter == "1.0.0"

    with Device(devdir, health_check=cut) as dev:
        install(dev, "2.0.1", V3)
        with pytest.raises(PowerCut):
            dev.boot_component("main")
    with Device(devdir, health_check=bad) as dev:  # a failing health check reverts at a power-on too
        (main, _sensor) = dev.boot()
        assert main.reverted and main.slot == "a" and "health_check_failed" in main.events


def test_command_health_check(devdir: Path, tmp_path: Path) -> None:
    """The health check may be a command line (exit 0 = healthy; timeout = failure)."""
    script = tmp_path / "check.py"
    script.write_text("import os, sys\n"
                      "sys.exit(0 if os.environ['FWLEDGER_VERSION'] == '2.0.0'"
                      " and os.path.getsize(os.environ['FWLEDGER_IMAGE']) > 0 else 1)\n")
    with Device(devdir, health_check=CommandHealthCheck([sys.executable, str(script)])) as dev:
        install(dev, "2.0.0", V2)
        assert dev.boot_component("main").confirmed
        install(dev, "2.0.1", V3)
        out = dev.boot_component("main")
        assert out.reverted and "health_check_failed" in out.events
    with Device(devdir, health_check=CommandHealthCheck([sys.executable, "-c", "import time; time.sleep(5)"],
                                                        timeout=0.2)) as dev:
        install(dev, "2.0.2", V1)
        out = dev.boot_component("main")
        assert out.reverted and "health_check_timeout" in out.events


def test_health_command_from_device_json(tmp_path: Path) -> None:
    root = tmp_path / "d"
    init_device(root, device_id="d1", hardware="hw", components={"main": FactoryImage("1.0.0", hh("1"), V1)},
                health_command=[sys.executable, "-c", "raise SystemExit(1)"], max_boot_attempts=5)
    with Device(root) as dev:
        assert isinstance(dev.health_check, CommandHealthCheck) and dev.max_boot_attempts == 5
        install(dev, "2.0.0", V2)
        assert dev.boot_component("main").reverted


def test_errors_are_fwledger_errors_with_stable_codes() -> None:
    import entities.firmware_consumer.errors as E

    codes = {}
    for name in E.__all__:
        cls = getattr(E, name)
        assert issubclass(cls, DeviceError) and issubclass(cls, FwledgerError)
        codes[cls.code] = name
    assert len(codes) == len(E.__all__)  # one code per class
    assert codes["rollback"] == "RollbackRefused" and codes["safe_mode"] == "SafeModeActive"


def test_bad_arguments(devdir: Path) -> None:
    with Device(devdir) as dev:
        for args in (("2.0", hh("2"), 10), ("2.0.0", "0x12", 10), ("2.0.0", hh("2"), 0),
                     ("2.0.0", hh("2"), -1), ("2.0.0", b"\x00" * 31, 10)):
            with pytest.raises(BadInstallRequest):
                dev.begin_install("main", *args)  # type: ignore[arg-type]
    with pytest.raises(BadInstallRequest):
        init_device(devdir.parent / "x", device_id="a b", hardware="hw", components=["main"])
    with pytest.raises(BadInstallRequest):
        init_device(devdir.parent / "y", device_id="ab", hardware="hw", components=["../etc"])
    assert not os.path.exists(devdir.parent / "y" / "device.json")


def test_slot_info_roundtrip() -> None:
    info = SlotInfo(SlotStatus.PENDING, "1.2.3", hh("1.2.3"), sha(b"x"), 1)
    assert SlotInfo.from_json(info.to_json()) == info
    with pytest.raises(StateCorrupt):
        SlotInfo.from_json({**info.to_json(), "status": "weird"})


def test_interrupted_update_does_not_resume_in_safe_mode(devdir: Path) -> None:
    """Once in safe mode only recover installs proceed, also for an update interrupted before (C11.1.b)."""
    with Device(devdir, health_check=ok) as dev:
        dev.boot()
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        s.write_chunk(0, V2[:4096])
        s.close()
        dev.slot_path("main", "a").write_bytes(b"rot")
        assert dev.boot_component("main").kind is BootKind.SAFE
        with pytest.raises(SafeModeActive):
            dev.resume_install("main")
        with pytest.raises(SafeModeActive):
            dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        r = dev.recover("main", "2.0.0", hh("2.0.0"), len(V2))  # supersedes the normal install
        assert not r.resumed
        for off in range(0, len(V2), 8192):
            r.write_chunk(off, V2[off:off + 8192])
        r.finish(sha(V2))
        assert dev.boot_component("main").confirmed


def test_power_on_leaves_a_staged_image_staged(devdir: Path) -> None:
    """A power-on (:meth:`Device.boot`) never trial-boots a staged image: its release's standing
    has not been proven again since the download (R10.a.i, R10.d.ii). The confirmed image boots,
    the health check never runs, the staged image waits for the agent's re-proof
    (``Updater.boot_staged``); booting that component explicitly then runs its trial."""
    trials: list[str] = []

    def counting(ctx: object) -> bool:
        trials.append("trial")
        return True

    with Device(devdir, health_check=counting) as dev:
        install(dev, "2.0.0", V2)
        before = dev.state("main")
        outs = {o.component: o for o in dev.boot()}
        main = outs["main"]
        assert (main.kind, main.slot, main.version, main.confirmed) == (BootKind.NORMAL, "a", "1.0.0", False)
        st = dev.state("main")
        assert trials == []
        assert (st.active, st.confirmed, st.trial, st.counter, st.attempts) == ("a", "a", "b", "1.0.0", 0)
        assert st.slot("b") == before.slot("b") and st.slot("b").status is SlotStatus.PENDING
        assert dev.boot_component("main").confirmed and trials == ["trial"]

