"""The local stack's processes and its record (:mod:`entities.stack`, ``fwledger up``/``down``).

Spawning a process in its own session with its log (:func:`_spawn`), waiting until every process
is healthy (``/health``, a device's first agent pass) with a deadline (:func:`_wait_all`),
recognising a recorded process by PID *and* start time (``/proc/PID/stat`` field 22) and stopping
its process group (:func:`_terminate`); the ``stack.json`` record and the per-home lock.
``tests/integration/procs.py`` drives its own processes with the same functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from ledger_node import devnet as dn
from ledger_node.errors import FwledgerError
from ledger_node.fsutil import atomic_write_json

__all__ = ["StackError", "read_record", "stack_dir"]

_HOST = "127.0.0.1"
_STOP_TIMEOUT = 15.0


class StackError(FwledgerError):
    """The local stack could not be started or stopped."""


def stack_dir(home: Path) -> Path:
    """``<home>/stack``: the record, logs, service data and device folders."""
    return Path(home).expanduser().resolve() / "stack"


def _record_path(home: Path) -> Path:
    return stack_dir(home) / "stack.json"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- processes


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, ``/proc/PID/stat`` field 22); None if gone."""
    fields = dn.proc_stat(pid)
    if fields is None:
        return None
    try:
        return int(fields[19])  # fields after the command name start at field 3
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaps it if it is our exited child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _is_ours(proc: dict[str, Any]) -> bool:
    """The recorded process still runs: same PID *and* same start time (a reused PID is not ours)."""
    pid = proc.get("pid")
    if not isinstance(pid, int) or pid <= 1 or not _alive(pid):
        return False
    recorded = proc.get("start_time")
    return recorded is not None and _start_ticks(pid) == recorded


def _terminate(proc: dict[str, Any], timeout: float = _STOP_TIMEOUT) -> str:
    """Stop one recorded process (its whole process group: it leads its own session).

    Returns how: ``"SIGTERM"``, ``"SIGKILL"`` or ``"not running"``.

    Raises:
        StackError: it would not die.
    """
    pid = int(proc["pid"])
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not _is_ours(proc):
            return "not running" if sig == signal.SIGTERM else "SIGTERM"
        try:
            if proc.get("group", True):
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return "not running" if sig == signal.SIGTERM else "SIGTERM"
        except PermissionError as exc:
            raise StackError(f"cannot signal {proc['name']} (pid {pid}): {exc.strerror}") from exc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return sig.name
            time.sleep(0.05)
    raise StackError(f"{proc['name']} (pid {pid}) did not exit after SIGKILL")


def _child_env(home: Path, rpc: str) -> dict[str, str]:
    # the stack's processes take their settings from flags and <home>/config.toml only: a FWLEDGER_*
    # variable meant for another network (FWLEDGER_CONFIG, keys, TLS files...) must not leak into them
    keep = ("FWLEDGER_ANVIL", "FWLEDGER_DEBUG")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWLEDGER_") or k in keep}
    env.update(FWLEDGER_HOME=str(home), FWLEDGER_RPC=rpc, PYTHONUNBUFFERED="1")
    return env


def _fwledger_argv(home: Path, rpc: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "entities.cli", "--home", str(home), "--rpc", rpc, *args]


def _log_tail(log: Path, lines: int = 1) -> str:
    """The last line(s) of a log worth showing: its last ``error:`` line if any, else the last ones."""
    try:
        text = log.read_bytes()[-65536:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith("error:")]
    return " | ".join((errors or kept)[-lines:])[:400]


# ----------------------------------------------------------------------------- the record


def read_record(home: Path) -> dict[str, Any] | None:
    """The home's stack record, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(_record_path(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _save(home: Path, record: dict[str, Any]) -> None:
    atomic_write_json(_record_path(home), record)


def _remove_record(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(home).unlink()


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One ``up``/``down`` at a time per home."""
    sdir = stack_dir(home)
    sdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another 'fwledger up' or 'down' is working on {home}: wait for it") from None
        yield
    finally:
        os.close(fd)


def _running(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in record.get("processes", []) if _is_ours(p)]


@dataclasses.dataclass
class _Started:
    """A process ``up`` spawned and has not yet seen healthy."""

    entry: dict[str, Any]
    popen: subprocess.Popen[bytes]
    ready: Callable[[], bool]


def _spawn(name: str, role: str, argv: list[str], env: dict[str, str], log: Path, **fields: Any) -> _Started:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"[fwledger up {_now_iso()}] starting: {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,  # noqa: S603
                                     env=env, start_new_session=True, cwd=str(log.parent))
        except OSError as exc:
            raise StackError(f"{name} could not be started: {exc.strerror or exc}; log: {log}") from exc
    entry = {"name": name, "role": role, "pid": popen.pid, "start_time": _start_ticks(popen.pid), "group": True,
             "log": str(log), "argv": argv, **fields}
    return _Started(entry, popen, lambda: True)


def _tls_session(tls: Mapping[str, str] | None) -> Callable[[Any], None] | None:
    """Configure a requests session for the stack's HTTPS services (``up --tls``): the fleet CA and
    the operator's client certificate."""
    if tls is None:
        return None

    def setup(session: Any) -> None:
        session.trust_env = False
        session.verify = tls["ca"]
        session.cert = (tls["cert"], tls["key"])

    return setup


def _http_ready(url: str, check: Callable[[dict[str, Any]], bool] = lambda _: True,
                tls: Mapping[str, str] | None = None) -> Callable[[], bool]:
    setup = _tls_session(tls)

    def ready() -> bool:
        try:
            with requests.Session() as session:
                session.trust_env = False
                if setup is not None:
                    setup(session)
                resp = session.get(url + "/health", timeout=2)
            return resp.status_code == 200 and check(resp.json())
        except (requests.RequestException, ValueError):
            return False
    return ready


def _first_pass(log: Path, offset: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with log.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return False
        return any(line.startswith('{"pass"') for line in text.splitlines())
    return ready


def _wait_all(started: list[_Started], timeout: float) -> None:
    """Wait until every process is healthy.

    Raises:
        StackError: one exited or was not healthy in time (names it and its log).
    """
    pending = list(started)
    deadline = time.monotonic() + timeout
    while pending:
        for s in list(pending):
            code = s.popen.poll()
            if code is not None:
                e = s.entry
                tail = _log_tail(Path(e["log"])) or "no output"
                raise StackError(f"{e['name']} failed to start (exit code {code}): {tail}; log: {e['log']}")
            if s.ready():
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            late = pending[0].entry
            tail = _log_tail(Path(late["log"]))
            raise StackError(f"{late['name']} was not healthy within {timeout:g} s"
                             + (f" (last log line: {tail})" if tail else "") + f"; log: {late['log']}")
        if pending:
            time.sleep(0.1)
