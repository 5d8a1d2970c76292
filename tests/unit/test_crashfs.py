"""The crash-state model (tests/crashfs.py) catches missing fsyncs, and ledger_node.fsutil's writes have none.

Each writer below runs for real on tmp_path through ``ledger_node.fsutil``'s primitives while the
recorder watches (it records, it does not change what happens); the deliberately broken ones
must produce a crash state that loses data, the correct ones never may.
"""

from __future__ import annotations

import os
from pathlib import Path

from ledger_node import fsutil
from tests.crashfs import Recorder, crash_states, durable_states, everything_state

OLD, NEW = b"old contents\n", os.urandom(3 * 4096 + 100)


def recorded(root: Path, write: object) -> Recorder:
    rec = Recorder(root)
    with fsutil.observe(rec):
        write()  # type: ignore[operator]
    return rec


def disk(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def replace_without_fsync(root: Path) -> None:
    fd, tmp = fsutil.make_temp(root, ".f.", ".tmp")
    fsutil.write_all(fd, NEW)
    fsutil.close_fd(fd)  # no fsync of the data
    fsutil.replace(tmp, root / "f")
    fsutil.sync_dir(root)


def replace_without_dir_sync(root: Path) -> None:
    fd, tmp = fsutil.make_temp(root, ".f.", ".tmp")
    fsutil.write_all(fd, NEW)
    fsutil.fsync_fd(fd)
    fsutil.close_fd(fd)
    fsutil.replace(tmp, root / "f")  # no fsync of the folder


def test_a_rename_before_the_data_is_synced_can_leave_an_empty_or_torn_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(OLD)
    rec = recorded(tmp_path, lambda: replace_without_fsync(tmp_path))
    seen = {s.files["f"] for s in crash_states(rec, limit=1000)}
    assert OLD in seen and NEW in seen
    assert b"" in seen  # the classic zero-length file after a crash
    assert any(0 < len(f) and f not in (OLD, NEW) for f in seen)  # torn at a block boundary


def test_a_rename_without_a_folder_sync_is_not_durable(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(OLD)
    rec = recorded(tmp_path, lambda: replace_without_dir_sync(tmp_path))
    final, _ = list(durable_states(rec))[-1]
    assert final["f"] == OLD  # the call returned, yet a power cut brings the old file back
    assert {s.files["f"] for s in crash_states(rec)} == {OLD, NEW}  # never torn: its data was synced


def test_atomic_write_shows_old_or_new_and_is_durable_on_return(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(OLD)
    rec = recorded(tmp_path, lambda: fsutil.atomic_write_bytes(tmp_path / "f", NEW))
    states = list(crash_states(rec, limit=1000))
    assert len(states) >= 5 and {s.files["f"] for s in states} == {OLD, NEW}
    assert list(durable_states(rec))[-1][0]["f"] == NEW
    assert everything_state(rec)[0] == disk(tmp_path)  # the recorder missed nothing


def test_a_file_in_new_folders_is_durable_on_return(tmp_path: Path) -> None:
    """Regression (issue 13.4): make_dirs syncs each new folder's entry in its parent; without that
    the file survived a power cut only if the folders' entries happened to reach the disk."""
    rec = recorded(tmp_path, lambda: fsutil.atomic_write_bytes(tmp_path / "a" / "b" / "f", NEW))
    files, dirs = list(durable_states(rec))[-1]
    assert files == {"a/b/f": NEW} and {"a", "a/b"} <= dirs
    for s in crash_states(rec, limit=1000):  # before the end: nothing, or folders, or the whole file
        assert s.files.get("a/b/f", NEW) == NEW



def test_starting_write_back_changes_nothing_and_promises_nothing(tmp_path: Path) -> None:
    """fsutil.start_writeback (an install asks the disk to start writing while it decrypts the next
    chunks) leaves the bytes as written and is no sync: the recorder is not told of it, so crash
    states still lose what no fsync covered (the torn file), and an fsync still makes it durable."""
    def written_then_started(root: Path) -> None:
        fd = fsutil.open_fd(root / "slot", os.O_WRONLY | os.O_CREAT, 0o600)
        fsutil.write_all(fd, NEW, 0)
        fsutil.start_writeback(fd, 0, len(NEW))
        fsutil.start_writeback(fd, 0, 0)  # nothing to start: no call
        fsutil.close_fd(fd)

    rec = recorded(tmp_path, lambda: written_then_started(tmp_path))
    assert [op.kind for op in rec.ops] == ["create", "write"]  # no fsync recorded, nor anything else
    assert (tmp_path / "slot").read_bytes() == NEW
    assert list(durable_states(rec))[-1][0].get("slot", b"") == b""  # not durable without an fsync
