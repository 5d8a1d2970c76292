"""anvil itself: find the binary, talk to a node, run one as a child process.

- :func:`find_anvil`: ``FWLEDGER_ANVIL``, then the project's ``.devnet/``, then ``PATH``.
  The npm package ``@foundry-rs/anvil`` installs ``node_modules/.bin/anvil`` as a *Node.js
  wrapper* (``bin.mjs``) that spawns the real binary from the platform package
  ``@foundry-rs/anvil-<os>-<arch>/bin/anvil``; :func:`find_anvil` always resolves to that native
  binary when it can: with the wrapper in between, the recorded PID would be node's, and a
  SIGKILL of node would orphan anvil.
- small helpers: free ports, one JSON-RPC call, anvil's argv, waiting until it answers, the tail
  of its log, and process checks by pid (``/proc``: alive, zombie, is it our anvil, terminate);
- :class:`AnvilProcess`: a node owned by the caller (tests, one-shot CLI commands).

The per-home daemon built on these is :mod:`ledger_node.devnet`, which re-exports every public
name here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from ledger_node.errors import DevnetError

__all__ = [
    "ANVIL_NPM_PACKAGE",
    "DEFAULT_CHAIN_ID",
    "DEFAULT_PORT",
    "DEFAULT_STATE_INTERVAL",
    "PROJECT_ROOT",
    "AnvilProcess",
    "find_anvil",
    "free_port",
    "proc_stat",
]

#: the npm package scripts/setup installs into ``<project>/.devnet``
ANVIL_NPM_PACKAGE = "@foundry-rs/anvil@1.7.1"
#: anvil's own default chain id
DEFAULT_CHAIN_ID = 31337
#: the port the daemon takes when none is given (the CLI's default ``--rpc``)
DEFAULT_PORT = 8545
#: seconds between anvil's periodic state dumps (bounds what a SIGKILL loses)
DEFAULT_STATE_INTERVAL = 2
#: the repository root (``ledger_node/..``); ``.devnet/`` lives here
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_HOST = "127.0.0.1"
_STARTUP_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
_LOG_TAIL_LINES = 8

# `uname -m` / platform.machine() -> the arch suffix of the @foundry-rs platform packages
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


# --------------------------------------------------------------------------- finding anvil


def _platform_package() -> str | None:
    """The ``@foundry-rs/anvil-<os>-<arch>`` directory name for this machine, if one exists."""
    system = {"linux": "linux", "darwin": "darwin"}.get(platform.system().lower())
    arch = _ARCH.get(platform.machine().lower())
    if system is None or arch is None:
        return None
    return f"anvil-{system}-{arch}"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _native_binary(path: Path) -> Path:
    """Resolve the npm wrapper (``.bin/anvil`` -> ``@foundry-rs/anvil/bin.mjs``) to the binary.

    Anything that is not the wrapper, or a wrapper whose platform package is missing, is
    returned unchanged.
    """
    try:
        real = path.resolve()
    except OSError:
        return path
    package = _platform_package()
    if real.name == "bin.mjs" and real.parent.parent.name == "@foundry-rs" and package:
        native = real.parent.parent / package / "bin" / "anvil"
        if _is_executable(native):
            return native
    return path


def find_anvil(project_root: Path | None = None) -> Path:
    """Locate the anvil binary.

    Order: the ``FWLEDGER_ANVIL`` environment variable; then ``<project>/.devnet`` (the
    platform package's binary, then ``node_modules/.bin/anvil``), as installed by
    ``scripts/setup``; then ``anvil`` on ``PATH``. The npm Node.js wrapper is resolved to the
    native binary whenever the platform package is present.

    Args:
        project_root: where to look for ``.devnet/``; default :data:`PROJECT_ROOT`.

    Raises:
        DevnetError: ``FWLEDGER_ANVIL`` names no executable file, or no anvil was found.
    """
    override = os.environ.get("FWLEDGER_ANVIL")
    if override:
        path = Path(override).expanduser()
        if not _is_executable(path):
            raise DevnetError(f"FWLEDGER_ANVIL={override} is not an executable file")
        return _native_binary(path)

    root = project_root if project_root is not None else PROJECT_ROOT
    modules = root / ".devnet" / "node_modules"
    package = _platform_package()
    candidates = [modules / "@foundry-rs" / package / "bin" / "anvil"] if package else []
    candidates.append(modules / ".bin" / "anvil")
    for candidate in candidates:
        if _is_executable(candidate):
            return _native_binary(candidate)

    on_path = shutil.which("anvil")
    if on_path:
        return _native_binary(Path(on_path))
    raise DevnetError(
        f"anvil not found: run scripts/setup (installs {ANVIL_NPM_PACKAGE} into "
        f"{root / '.devnet'}), put anvil on PATH, or set FWLEDGER_ANVIL"
    )


# --------------------------------------------------------------------------- small helpers


def free_port(host: str = _HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now, for a server to be started on.

    Taken below the kernel's ephemeral range (``ip_local_port_range``) where there is one: the OS
    hands ports of that range to outgoing connections, so a port it picked (``bind(0)``) and
    released may be some connection's local port by the time the server binds it (the server then
    fails with "address in use"). A random port below the range is checked free the same way; the
    OS picks one where the range cannot be read.

    Raises:
        DevnetError: no socket could be bound on ``host``.
    """
    low = _ephemeral_low()
    if low > _FIXED_PORTS_FROM + 1000:
        for _ in range(64):
            port = _FIXED_PORTS_FROM + secrets.randbelow(low - _FIXED_PORTS_FROM)
            if not _port_in_use(port, host, reuse=False):
                return port
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    except OSError as exc:
        raise DevnetError(f"cannot find a free port on {host}: {exc.strerror or exc}") from exc


_FIXED_PORTS_FROM = 10000  # below: well-known and registered services more likely


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (0 if unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _port_in_use(port: int, host: str = _HOST, *, reuse: bool = True) -> bool:
    """True when binding ``host:port`` fails (someone listens there; ``reuse=False``: or any socket
    still holds it, a connection closing included)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _rpc(url: str, method: str, params: Sequence[Any] = (), timeout: float = 2.0) -> Any:
    """One JSON-RPC call; proxies from the environment are ignored (the node is local).

    Raises:
        DevnetError: transport failure or a JSON-RPC error answer.
    """
    payload: Any = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    try:
        with requests.Session() as session:
            session.trust_env = False
            response = session.post(url, json=payload, timeout=timeout)
            response.raise_for_status()
            answer = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise DevnetError(f"{method} to {url} failed: {exc}") from exc
    if not isinstance(answer, dict) or "result" not in answer:
        raise DevnetError(f"{method} to {url} answered an error: {answer!r:.200}")
    return answer["result"]


def _log_tail(log_path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of the log written after ``offset``, joined by ' | '."""
    try:
        with log_path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _anvil_argv(
    anvil: Path,
    port: int,
    *,
    host: str,
    chain_id: int,
    state: Path | None,
    state_interval: int | None,
    block_time: float | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    argv = [str(anvil), "--host", host, "--port", str(port), "--chain-id", str(chain_id)]
    argv.append("--silent")
    if state is not None:
        argv += ["--state", str(state)]
        if state_interval:
            argv += ["--state-interval", str(int(state_interval))]
    if block_time:
        # interval mining keeps the head fresh for devices (an idle automining anvil mines nothing,
        # its head ages past a device's maximum header age: `stale_header`); mixed mining still
        # mines each transaction at once, so receipts do not wait for the next interval
        argv += ["--block-time", _seconds(block_time), "--mixed-mining"]
    argv += list(extra_args)
    return argv


def _seconds(value: float) -> str:
    """``2.0`` -> ``"2"``, ``0.5`` -> ``"0.5"`` (anvil's ``--block-time``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _check_block_time(block_time: float | None) -> None:
    """Raises:
        DevnetError: a block time that is not a positive number of seconds.
    """
    if block_time is not None and not 0 < block_time <= 3600:
        raise DevnetError(f"bad block time {block_time}: must be > 0 and <= 3600 seconds")


def _wait_ready(
    url: str,
    chain_id: int,
    *,
    exited: Callable[[], int | None],
    log_path: Path,
    log_offset: int,
    timeout: float,
) -> None:
    """Poll ``eth_chainId`` until the node answers with ``chain_id``.

    Args:
        exited: returns the process's exit code once it has exited, else None.

    Raises:
        DevnetError: the process exited, answered another chain id, or did not answer in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        code = exited()
        if code is not None:
            tail = _log_tail(log_path, log_offset) or "no output"
            raise DevnetError(f"anvil exited with code {code} during startup: {tail}")
        try:
            answer = _rpc(url, "eth_chainId", timeout=0.5)
        except DevnetError:
            answer = None
        if answer is not None:
            try:
                got = int(str(answer), 16)
            except ValueError:
                got = None
            if got != chain_id or exited() is not None:
                raise DevnetError(
                    f"{url} answers (chain id {answer!r}) but not from this anvil: "
                    "another node on the port?"
                )
            return
        if time.monotonic() > deadline:
            tail = _log_tail(log_path, log_offset)
            raise DevnetError(
                f"anvil did not answer at {url} within {timeout:g} s"
                + (f": {tail}" if tail else "")
            )
        time.sleep(0.05)


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first); None if
    the process is gone or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    return stat.rpartition(")")[2].split()


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat (None if unknown or gone)."""
    rest = proc_stat(pid)
    return rest[0] if rest else None


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child (no zombie left behind); else do nothing."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return _proc_state(pid) != "Z"


def _cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid`` (from /proc, or ``ps`` where there is no /proc); None if unknown."""
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            raw = proc.read_bytes()
        except OSError:
            return None
        return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part] or None
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["ps", "-o", "command=", "-p", str(pid)],  # noqa: S607
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split() or None


def _is_our_anvil(pid: int, state_path: Path) -> bool:
    """True when ``pid`` runs anvil with ``--state state_path`` (so a reused PID is never ours)."""
    if pid <= 1 or not _pid_alive(pid):
        return False
    argv = _cmdline(pid)
    if not argv:
        return False
    runs_anvil = any(Path(arg).name in ("anvil", "anvil.exe") for arg in argv[:2])
    return runs_anvil and str(state_path) in argv


def _terminate(pid: int, timeout: float = _STOP_TIMEOUT) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` s for it to exit, then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            _reap(pid)
            return
        except OSError as exc:
            raise DevnetError(f"cannot signal anvil (pid {pid}): {exc.strerror or exc}") from exc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)
    if _pid_alive(pid):
        raise DevnetError(f"anvil (pid {pid}) did not exit after SIGKILL")


# --------------------------------------------------------------------------- AnvilProcess


class AnvilProcess:
    """An anvil node owned by this process; a context manager.

    Example::

        with AnvilProcess() as node:
            web3 = Web3(HTTPProvider(node.url))

    The node listens on 127.0.0.1 at ``port`` (default: a free one). With ``state`` the chain is
    loaded from that file if it exists, dumped to it every ``state_interval`` seconds and on exit.
    Its output goes to ``log_path`` (default: a temporary file removed on :meth:`stop`). With
    ``block_time`` it also mines a block every that many seconds (see :func:`start`).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        state: Path | None = None,
        state_interval: int | None = DEFAULT_STATE_INTERVAL,
        anvil: Path | None = None,
        log_path: Path | None = None,
        host: str = _HOST,
        extra_args: Sequence[str] = (),
        startup_timeout: float = _STARTUP_TIMEOUT,
        block_time: float | None = None,
    ) -> None:
        _check_block_time(block_time)
        self._requested_port = port
        self.block_time = block_time
        self.chain_id = chain_id
        self.state = Path(state).resolve() if state is not None else None
        self.state_interval = state_interval
        self._anvil = anvil
        self._log_path = log_path
        self.host = host
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._port: int | None = None

    # -- properties

    @property
    def port(self) -> int:
        """The port anvil listens on.

        Raises:
            DevnetError: the node was never started.
        """
        if self._port is None:
            raise DevnetError("anvil is not started")
        return self._port

    @property
    def url(self) -> str:
        """The JSON-RPC URL, ``http://127.0.0.1:PORT``.

        Raises:
            DevnetError: the node was never started.
        """
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The anvil process id.

        Raises:
            DevnetError: the node was never started.
        """
        if self._proc is None:
            raise DevnetError("anvil is not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        """Where anvil's output goes.

        Raises:
            DevnetError: the node was never started and no log path was given.
        """
        if self._log_path is None:
            raise DevnetError("anvil is not started")
        return self._log_path

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle

    def start(self) -> AnvilProcess:
        """Start anvil and wait until it answers ``eth_chainId``; returns ``self``.

        A port picked automatically is retried (up to three times) if another process takes it
        between the pick and anvil's bind.

        Raises:
            DevnetError: anvil not found, already started, failed to start (the message carries
                the tail of its log), or did not answer in time.
        """
        if self.running:
            raise DevnetError(f"anvil already started (pid {self.pid})")
        anvil = self._anvil or find_anvil()
        if self._log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fwledger-anvil-")
            self._log_path = Path(self._tmpdir.name) / "anvil.log"
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                if _port_in_use(port, self.host):
                    raise DevnetError(f"port {port} on {self.host} is already in use")
                self._spawn(anvil, port)
                return self
            except DevnetError as exc:
                self._kill()
                if attempt + 1 == attempts or "in use" not in str(exc):
                    self.stop()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, anvil: Path, port: int) -> None:
        log_path = self.log_path
        argv = _anvil_argv(
            anvil, port, host=self.host, chain_id=self.chain_id, state=self.state,
            state_interval=self.state_interval, block_time=self.block_time, extra_args=self.extra_args,
        )
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log:
                offset = log.tell()
                self._proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
        except OSError as exc:
            raise DevnetError(f"cannot run {anvil}: {exc.strerror or exc}") from exc
        self._port = port
        proc = self._proc
        _wait_ready(
            f"http://{self.host}:{port}", self.chain_id, exited=proc.poll,
            log_path=log_path, log_offset=offset, timeout=self.startup_timeout,
        )

    def _kill(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM the process, wait up to ``timeout`` s, then SIGKILL; reaps it.

        Raises:
            DevnetError: the process could not be signalled or would not die.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired as exc:
                raise DevnetError(f"anvil (pid {proc.pid}) did not exit after SIGKILL") from exc
        except OSError as exc:
            raise DevnetError(f"cannot stop anvil (pid {proc.pid}): {exc}") from exc

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop anvil by PID: SIGTERM (anvil dumps its state), wait, then SIGKILL. Idempotent.

        Raises:
            DevnetError: the process could not be signalled or would not die.
        """
        self._kill(timeout)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._log_path = None

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else "not started"
        return f"AnvilProcess({where}, running={self.running})"
