"""A local anvil devnet: find the binary, run a throwaway node, or keep a daemon per home folder.

Two ways to run a node:

* :class:`AnvilProcess` -- a child process owned by the caller (tests, one-shot CLI commands).
  It dies with :meth:`AnvilProcess.stop` or at the end of the ``with`` block.
* :func:`start` / :func:`stop` / :func:`status` -- a detached daemon that outlives the CLI, with
  its files in ``<home>/devnet/``: ``state.json`` (anvil's chain state, loaded on start, dumped
  every few seconds and on exit), ``devnet.json`` (pid, port, url, ...; written atomically) and
  ``anvil.log``.

This module holds the daemon; finding anvil (:func:`find_anvil`, which resolves the npm wrapper
to the native binary), the process helpers and :class:`AnvilProcess` live in
:mod:`ledger_node.anvil` and are re-exported here.

anvil writes its state file in place (``O_TRUNC``, no rename), so a kill during a dump leaves a
truncated file that anvil then refuses to load. :func:`start` therefore keeps a last-known-good
copy (``state.good.json``, refreshed on every start and stop) and restores it when the state file
does not parse, keeping the damaged file as ``state.json.corrupt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger_node.anvil import (
    _HOST,
    _STARTUP_TIMEOUT,
    _STOP_TIMEOUT,
    ANVIL_NPM_PACKAGE,
    DEFAULT_CHAIN_ID,
    DEFAULT_PORT,
    DEFAULT_STATE_INTERVAL,
    PROJECT_ROOT,
    AnvilProcess,
    _anvil_argv,
    _check_block_time,
    _is_our_anvil,
    _pid_alive,
    _port_in_use,
    _reap,
    _rpc,
    _terminate,
    _wait_ready,
    find_anvil,
    free_port,
)
from ledger_node.anvil import _cmdline as _cmdline  # tests reach these through this module
from ledger_node.anvil import _platform_package as _platform_package
from ledger_node.anvil import proc_stat as proc_stat
from ledger_node.errors import ConfigError, DevnetError
from ledger_node.fsutil import atomic_write_bytes

__all__ = [
    "ANVIL_NPM_PACKAGE",
    "DEFAULT_CHAIN_ID",
    "DEFAULT_PORT",
    "DEFAULT_STATE_INTERVAL",
    "PROJECT_ROOT",
    "AnvilProcess",
    "DevnetInfo",
    "devnet_dir",
    "find_anvil",
    "free_port",
    "start",
    "status",
    "stop",
]

# --------------------------------------------------------------------------- the daemon


@dataclasses.dataclass(frozen=True)
class DevnetInfo:
    """What is known about a home's devnet daemon."""

    pid: int
    port: int
    url: str
    chain_id: int
    started_at: str  #: ISO 8601, UTC
    home: str
    state_path: str
    log_path: str
    anvil: str
    block_time: float | None = None  #: seconds between blocks (interval mining); None: automine only
    block_number: int | None = None  #: filled by :func:`status` (None if it did not answer)
    notes: tuple[str, ...] = ()  #: things the user should hear (e.g. a state restored)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        return data

    def to_json(self) -> str:
        """This record as one JSON document (a string)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DevnetInfo:
        """Rebuild from :meth:`to_dict` output (unknown keys ignored).

        Raises:
            DevnetError: a required field is missing or has the wrong type.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        try:
            kwargs = {key: value for key, value in data.items() if key in names}
            kwargs["notes"] = tuple(kwargs.get("notes", ()))
            info = cls(**kwargs)
        except TypeError as exc:
            raise DevnetError(f"bad devnet record: {exc}") from exc
        if not isinstance(info.pid, int) or not isinstance(info.port, int):
            raise DevnetError("bad devnet record: pid and port must be integers")
        return info


def devnet_dir(home: Path) -> Path:
    """``<home>/devnet``, where the daemon keeps its files."""
    return Path(home).expanduser().resolve() / "devnet"


class _Files:
    """The paths inside ``<home>/devnet``."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser().resolve()
        self.dir = self.home / "devnet"
        self.state = self.dir / "state.json"
        self.good = self.dir / "state.good.json"
        self.corrupt = self.dir / "state.json.corrupt"
        self.record = self.dir / "devnet.json"
        self.log = self.dir / "anvil.log"
        self.lock = self.dir / ".lock"


@contextlib.contextmanager
def _locked(files: _Files) -> Iterator[None]:
    """Hold an exclusive lock on the home's devnet folder (one start/stop at a time)."""
    try:
        files.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DevnetError(f"cannot use {files.dir}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`ledger_node.fsutil.atomic_write_bytes`).

    Raises:
        DevnetError: the file could not be written.
    """
    try:
        atomic_write_bytes(path, data)
    except ConfigError as exc:
        raise DevnetError(str(exc)) from exc


def _read_record(files: _Files) -> DevnetInfo | None:
    """The recorded daemon, or None if there is no (readable) record."""
    try:
        data = json.loads(files.record.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return DevnetInfo.from_dict(data)
    except DevnetError:
        return None


def _remove_record(files: _Files) -> None:
    with contextlib.suppress(FileNotFoundError):
        files.record.unlink()
    _fsync_dir(files.dir)


def _state_parses(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically.

    Raises:
        DevnetError: the copy failed.
    """
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise DevnetError(f"cannot read {src}: {exc.strerror or exc}") from exc
    _atomic_write(dst, data)


def _check_state(files: _Files) -> list[str]:
    """Make sure anvil can load the state file; refresh or restore the last good copy.

    Returns notes for the user.

    Raises:
        DevnetError: the state file is damaged and there is no good copy to restore.
    """
    if not files.state.exists():
        # a fresh chain (or the user removed the state to reset): an old backup must not return
        with contextlib.suppress(FileNotFoundError):
            files.good.unlink()
        return []
    if _state_parses(files.state):
        _copy_atomic(files.state, files.good)
        return []
    if files.good.exists() and _state_parses(files.good):
        try:
            os.replace(files.state, files.corrupt)
        except OSError as exc:
            raise DevnetError(f"cannot move aside {files.state}: {exc.strerror or exc}") from exc
        _copy_atomic(files.good, files.state)
        return [
            f"{files.state.name} was damaged (anvil killed while dumping it?): restored the copy "
            f"from the last start/stop; the damaged file is {files.corrupt}"
        ]
    raise DevnetError(
        f"devnet state {files.state} is damaged and has no good copy: delete it to start a "
        "fresh chain"
    )


def _note_in_log(files: _Files, line: str) -> None:
    with contextlib.suppress(OSError), files.log.open("a", encoding="utf-8") as log:
        log.write(f"[fwledger {datetime.now(UTC).isoformat(timespec='seconds')}] {line}\n")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start(
    home: Path,
    port: int | None = None,
    *,
    chain_id: int = DEFAULT_CHAIN_ID,
    state_interval: int = DEFAULT_STATE_INTERVAL,
    anvil: Path | None = None,
    startup_timeout: float = _STARTUP_TIMEOUT,
    block_time: float | None = None,
) -> DevnetInfo:
    """Start the home's devnet as a detached daemon (its own session; it outlives the caller).

    The chain is loaded from ``<home>/devnet/state.json`` if present, dumped there every
    ``state_interval`` seconds and on :func:`stop`.

    Args:
        home: the fwledger home folder.
        port: the port on 127.0.0.1; default :data:`DEFAULT_PORT` (8545).
        block_time: mine a block every this many seconds as well as one per transaction
            (anvil ``--block-time`` with ``--mixed-mining``), so the head never grows older than a
            device's maximum header age; default None: a block per transaction only.

    Raises:
        DevnetError: a devnet already runs for this home, the port is taken, anvil is missing,
            the state file is damaged beyond repair, or anvil failed to start (with its log tail).
    """
    files = _Files(home)
    port = DEFAULT_PORT if port is None else port
    if not 0 < port < 65536:
        raise DevnetError(f"bad port {port}: must be 1-65535")
    _check_block_time(block_time)
    with _locked(files):
        recorded = _read_record(files)
        if recorded is not None:
            if _is_our_anvil(recorded.pid, Path(recorded.state_path)):
                raise DevnetError(
                    f"a devnet is already running for {files.home} at {recorded.url} "
                    f"(pid {recorded.pid}): stop it first"
                )
            _remove_record(files)
        binary = anvil or find_anvil()
        if _port_in_use(port):
            raise DevnetError(f"port {port} on {_HOST} is already in use: choose another port")
        notes = _check_state(files)
        for note in notes:
            _note_in_log(files, note)
        argv = _anvil_argv(
            binary, port, host=_HOST, chain_id=chain_id, state=files.state,
            state_interval=state_interval, block_time=block_time,
        )
        _note_in_log(files, f"starting: {' '.join(argv)}")
        pid, offset = _spawn_detached(argv, files.log)

        def exited() -> int | None:
            try:
                done, status_ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None if _pid_alive(pid) else -1
            return os.waitstatus_to_exitcode(status_) if done else None

        url = f"http://{_HOST}:{port}"
        try:
            _wait_ready(url, chain_id, exited=exited, log_path=files.log, log_offset=offset,
                        timeout=startup_timeout)
        except DevnetError as exc:
            if _pid_alive(pid):
                _terminate(pid, timeout=5.0)
            if "Address already in use" in str(exc):
                raise DevnetError(
                    f"port {port} on {_HOST} is already in use: choose another port"
                ) from exc
            raise
        info = DevnetInfo(
            pid=pid, port=port, url=url, chain_id=chain_id, started_at=_now_iso(),
            home=str(files.home), state_path=str(files.state), log_path=str(files.log),
            anvil=str(binary), block_time=block_time, notes=tuple(notes),
        )
        record = dataclasses.replace(info, notes=())
        _atomic_write(files.record, (json.dumps(record.to_dict(), indent=2) + "\n").encode())
        return info


def _spawn_detached(argv: list[str], log_path: Path) -> tuple[int, int]:
    """posix_spawn ``argv`` in a new session, stdin /dev/null, stdout+stderr appended to the log.

    Returns (pid, log offset before the spawn). No Popen object is kept: the daemon is meant
    to outlive this process, and :func:`stop` reaps it if we happen to still be its parent.

    Raises:
        DevnetError: the binary could not be run.
    """
    try:
        offset = log_path.stat().st_size if log_path.exists() else 0
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True)
    except OSError as exc:
        raise DevnetError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    return pid, offset


def stop(home: Path, timeout: float = _STOP_TIMEOUT) -> bool:
    """Stop the home's devnet daemon; anvil dumps its state on the way out.

    The recorded PID is signalled only if it still runs anvil with this home's state file, so a
    PID reused by another process is never killed. A stale record is removed.

    Returns:
        True if a running devnet was stopped; False if none was running (stale record cleaned).

    Raises:
        DevnetError: the process could not be signalled or would not die.
    """
    files = _Files(home)
    if not files.dir.exists():
        return False
    with _locked(files):
        recorded = _read_record(files)
        if recorded is None:
            if files.record.exists():
                _remove_record(files)
            return False
        if not _is_our_anvil(recorded.pid, Path(recorded.state_path)):
            _reap(recorded.pid)
            _remove_record(files)
            return False
        _terminate(recorded.pid, timeout=timeout)
        _remove_record(files)
        if files.state.exists() and _state_parses(files.state):
            _copy_atomic(files.state, files.good)
        _note_in_log(files, f"stopped pid {recorded.pid}")
        return True


def status(home: Path) -> DevnetInfo | None:
    """The home's running devnet (with its current block number), or None if none runs.

    Read-only: a stale record is left for :func:`stop` / :func:`start` to clean. A node that
    runs but does not answer is reported with ``block_number=None``.

    Raises:
        DevnetError: not raised for a missing, stale or silent devnet (kept for API symmetry).
    """
    files = _Files(home)
    recorded = _read_record(files)
    if recorded is None or not _is_our_anvil(recorded.pid, Path(recorded.state_path)):
        return None
    try:
        block: int | None = int(str(_rpc(recorded.url, "eth_blockNumber")), 16)
    except (DevnetError, ValueError):
        block = None
    return dataclasses.replace(recorded, block_number=block)
