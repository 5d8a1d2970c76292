"""Slot digests (the boot check's reference, ``entities.firmware_consumer.slot_digest``) and where
an install would start (``Device.install_offset``): real device folders on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from entities.firmware_consumer import (
    BadInstallRequest,
    BootKind,
    ComponentState,
    Device,
    ImageHashMismatch,
    NotInSafeMode,
    SlotStatus,
    TrialInProgress,
    slot_digest,
)
from entities.firmware_consumer import state as S
from entities.firmware_consumer.store import read_state_copies, write_state_copies
from tests.unit.test_consumer_state import (  # noqa: F401 - devdir: the fixture (a device folder)
    V1,
    V2,
    devdir,
    hh,
    install,
    ok,
)


def test_the_device_records_blake3_slot_digests_and_checks_them_at_boot(devdir: Path) -> None:  # noqa: F811
    """The reference of the boot-time slot check (R10.c.ii) is the device's own BLAKE3 of the
    image it wrote, made as it wrote it; a slot damaged afterwards fails the check and the
    component falls back to its confirmed slot."""
    with Device(devdir, health_check=ok) as dev:
        assert dev.state("main").slot("a").digest == slot_digest.digest_of(V1)  # the factory image too
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        s.write_chunk(0, V2)
        st = s.finish(None)
        assert st.slot("b").digest == slot_digest.digest_of(V2) and st.slot("b").digest.startswith("blake3:")
    path = devdir / "components/main/slot_b"
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x40
    path.write_bytes(bytes(raw))
    with Device(devdir, health_check=ok) as dev:
        out = dev.boot_component("main")
        assert (out.slot, out.version, out.digest) == ("a", "1.0.0", slot_digest.digest_of(V1))
        assert dev.state("main").slot("b").status is SlotStatus.BAD


def test_a_digest_given_to_finish_is_checked_in_its_own_algorithm(devdir: Path) -> None:  # noqa: F811
    """A caller's digest is checked as given: a bare one is a SHA-256 (the slot is read back and
    hashed with it, and the state records it so); a wrong one abandons the install."""
    with Device(devdir) as dev:
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        s.write_chunk(0, V2)
        st = s.finish(hashlib.sha256(V2).hexdigest())
        assert st.slot("b").digest == "sha256:" + hashlib.sha256(V2).hexdigest()
        assert dev.boot_component("main").slot == "b"
        dev.confirm("main")
        s = dev.begin_install("main", "3.0.0", hh("3.0.0"), len(V1))
        s.write_chunk(0, V1)
        with pytest.raises(ImageHashMismatch):
            s.finish(slot_digest.digest_of(V2))
        assert dev.state("main").slot("a").status is SlotStatus.EMPTY


def test_a_state_written_before_slot_digests_still_boots(devdir: Path) -> None:  # noqa: F811
    """States written before slot digests kept a bare SHA-256 in ``sha256`` (the unverified mark
    too): they read as ``sha256:HEX`` and the boot check hashes those slots with SHA-256."""
    p0, p1 = devdir / "components/main/state.0.json", devdir / "components/main/state.1.json"
    copies = read_state_copies((p0, p1), ComponentState.from_json)
    gen, _, body = copies.newest()
    slot = body["slots"]["a"]
    del slot["digest"]
    slot["sha256"] = hashlib.sha256(V1).hexdigest()
    body["unverified"] = {"slot": "a", "sha256": hashlib.sha256(V1).hexdigest()}
    write_state_copies((p0, p1), gen + 1, body, current=copies)
    with Device(devdir, health_check=ok) as dev:
        st = dev.state("main")
        assert st.slot("a").digest == "sha256:" + hashlib.sha256(V1).hexdigest()
        assert S.unverified_slot(st) == "a"
        out = dev.boot_component("main")
        assert (out.slot, out.kind) == ("a", BootKind.NORMAL) and out.digest == st.slot("a").digest
    (devdir / "components/main/slot_a").write_bytes(b"x" * len(V1))  # damaged: SHA-256 sees it
    with Device(devdir, health_check=ok) as dev:
        assert dev.boot_component("main").kind is BootKind.SAFE


@pytest.mark.parametrize("bad", ["", "md5:" + "0" * 64, "blake3:" + "0" * 63, "sha256:" + "g" * 64, b"\x00" * 31])
def test_a_malformed_slot_digest_is_refused(bad: str | bytes) -> None:
    with pytest.raises(BadInstallRequest, match="slot digest"):
        slot_digest.normalize(bad)


def test_install_offset_says_where_begin_would_start_and_writes_nothing(devdir: Path) -> None:  # noqa: F811
    """0 for a new install, the durable offset for the same install interrupted, 0 for another
    one (begin supersedes it); refused like begin_install, with nothing written either way."""
    with Device(devdir, health_check=None, checkpoint_bytes=10_000) as dev:
        dev.boot()
        assert dev.install_offset("main", "2.0.0", hh("2.0.0"), len(V2)) == 0
        assert not (devdir / "journal/main.json").exists()
        s = dev.begin_install("main", "2.0.0", hh("2.0.0"), len(V2))
        s.write_chunk(0, V2[:25_000])
        s.close()
        before = (devdir / "journal/main.json").read_bytes()
        assert dev.install_offset("main", "2.0.0", hh("2.0.0"), len(V2)) == 25_000  # checkpointed at once
        assert dev.install_offset("main", "2.1.0", hh("2.1.0"), len(V2)) == 0
        with pytest.raises(NotInSafeMode):
            dev.install_offset("main", "2.0.0", hh("2.0.0"), len(V2), recover=True)
        assert (devdir / "journal/main.json").read_bytes() == before
        install(dev, "2.0.0", V2)
        assert dev.boot_component("main").kind is BootKind.TRIAL
        with pytest.raises(TrialInProgress):
            dev.install_offset("main", "3.0.0", hh("3.0.0"), len(V2))
