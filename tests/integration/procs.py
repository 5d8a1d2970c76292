"""Real ``fwledger`` processes for the deployment tests: start on free 127.0.0.1 ports, wait with
deadlines, kill and restart by PID, print their logs' tails.

Built on :mod:`entities.stack` (the functions ``fwledger up`` uses): each process is spawned by
``stack._spawn`` (its own session, stdout and stderr appended to its log), recorded with its PID
and start time, and stopped by ``stack._terminate`` (SIGTERM then SIGKILL to its process group,
only while the PID still has the recorded start time). :class:`Procs` is the per-test registry:
the fixture that makes it calls :meth:`Procs.stop_all` in its finalizer and prints every log's
tail there (pytest shows it when the test failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from eth_account.signers.local import LocalAccount

from entities import stack
from entities.protocol.http_auth import sign_request, verify_response
from entities.service_identity import fetch_identity
from ledger_node.devnet import free_port

__all__ = ["Proc", "Procs", "TLSClient", "ThrottledProxy", "hang_up", "wait_for"]

POLL = 0.2


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, *, procs: Procs | None = None,
             poll: float = POLL) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` s pass
    (AssertionError naming ``what``, the last value, and any process of ``procs`` that died)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (requests.RequestException, OSError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            dead = procs.dead() if procs is not None else []
            raise AssertionError(f"not within {timeout:g} s: {what} (last: {str(last)[:1500]})"
                                 + (f"; exited: {', '.join(dead)}" if dead else ""))
        time.sleep(poll)


@dataclass(frozen=True)
class TLSClient:
    """How to reach a module serving HTTPS: the fleet CA and a client certificate."""

    ca: Path
    cert: Path
    key: Path

    def kwargs(self) -> dict[str, Any]:
        return {"verify": str(self.ca), "cert": (str(self.cert), str(self.key))}


@dataclass
class Proc:
    """One ``fwledger`` process (restartable with the same argv, log, data and port)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None
    url: str | None = None
    address: str = ""
    tls: TLSClient | None = None
    entry: dict[str, Any] = field(default_factory=dict)
    popen: Any = None
    starts: int = 0

    @property
    def pid(self) -> int:
        return int(self.entry["pid"])

    def alive(self) -> bool:
        return bool(self.entry) and stack._is_ours(self.entry)

    # -- HTTP ------------------------------------------------------------------------------------

    def _http(self) -> dict[str, Any]:
        return self.tls.kwargs() if self.tls is not None and (self.url or "").startswith("https") else {}

    def health(self) -> dict[str, Any]:
        assert self.url is not None
        with requests.Session() as s:
            s.trust_env = False
            resp = s.get(self.url + "/health", timeout=5, **self._http())
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    def audience(self) -> str:
        """The address this service signs with (its ``/v1/identity``), the audience of requests to it."""
        assert self.url is not None
        return self.address or fetch_identity(self.url, **self._http())

    def request(self, method: str, path: str, signer: LocalAccount, body: Any = None) -> requests.Response:
        """A request signed by ``signer``, its answer as it came (any status)."""
        assert self.url is not None
        data = b"" if body is None else json.dumps(body).encode()
        headers = dict(sign_request(signer, method, path, data, audience=self.audience()))
        if data:
            headers["Content-Type"] = "application/json"
        with requests.Session() as s:
            s.trust_env = False
            return s.request(method, self.url + path, data=data or None, headers=headers, timeout=30, **self._http())

    def signed(self, method: str, path: str, signer: LocalAccount, body: Any = None) -> Any:
        """A request signed by ``signer``; the answer must be 2xx and signed by this module's key."""
        resp = self.request(method, path, signer, body)
        assert resp.status_code < 300, f"{self.name} {method} {path}: {resp.status_code} {resp.text[:500]}"
        verify_response(resp.headers, resp.status_code, path, resp.content,
                        request_nonce=resp.request.headers["X-Fwledger-Nonce"], tracker=self.address or None)
        return resp.json()

    def log_lines(self, since: int = 0) -> list[str]:
        try:
            with self.log.open("rb") as fh:
                fh.seek(since)
                return fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_lines()[-lines:])


class Procs:
    """The processes of one test: spawned from ``home`` against ``rpc``, logs in ``logs``."""

    def __init__(self, home: Path, rpc: str, logs: Path) -> None:
        self.home, self.rpc, self.logs = home, rpc, logs
        self.all: list[Proc] = []

    # -- starting --------------------------------------------------------------------------------

    def spawn(self, name: str, args: Sequence[str], *, port: int | None = None, url: str | None = None,
              address: str = "", tls: TLSClient | None = None, env: dict[str, str] | None = None,
              home: Path | None = None, rpc: str | None = None) -> Proc:
        """Start ``fwledger --home HOME --rpc RPC ARGS...`` (not waited for: see :meth:`wait_ready`);
        ``rpc``: another node URL than the test's for this process (a relay to it)."""
        h, node = home or self.home, rpc or self.rpc
        admission = {k: os.environ[k] for k in ("FWLEDGER_TRACKER_ADMISSION", "FWLEDGER_SERVER_ADMISSION")
                     if k in os.environ}  # tests/conftest.py: worlds not about identity run "open"
        proc = Proc(name, stack._fwledger_argv(h, node, *args),
                    {**stack._child_env(h, node), **admission, **(env or {})},
                    self.logs / f"{name}.log", port=port, url=url, address=address, tls=tls)
        self.all.append(proc)
        self._start(proc)
        return proc

    def _start(self, proc: Proc) -> None:
        started = stack._spawn(proc.name, "test", proc.argv, proc.env, proc.log)
        proc.entry, proc.popen = started.entry, started.popen
        proc.starts += 1

    def service(self, name: str, args: Sequence[str], *, scheme: str = "http", **kw: Any) -> Proc:
        """A listening service on a free loopback port: ``args`` may contain ``{port}``."""
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in args]
        return self.spawn(name, argv, port=port, url=f"{scheme}://127.0.0.1:{port}", **kw)

    def device(self, name: str, root: Path, *args: str, interval: float = 0.5, **kw: Any) -> Proc:
        """A device agent: ``device run --dir ROOT ARGS --interval I --json`` (JSON pass lines in its log)."""
        return self.spawn(name, ["device", "run", "--dir", str(root), *args, "--interval", f"{interval:g}",
                                 "--json"], **kw)

    # -- waiting ---------------------------------------------------------------------------------

    def dead(self) -> list[str]:
        return [f"{p.name} (exit {p.popen.poll()})" for p in self.all
                if p.popen is not None and p.popen.poll() is not None]

    def _check_running(self, proc: Proc) -> None:
        if proc.popen is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with code {proc.popen.poll()}:\n{proc.tail()}")

    def wait_healthy(self, *procs: Proc, timeout: float = 60.0,
                     check: Callable[[dict[str, Any]], bool] = lambda _h: True) -> None:
        """Each process answers ``/health`` (200, and ``check`` holds on its JSON) within ``timeout``."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            while True:
                self._check_running(proc)
                with contextlib.suppress(requests.RequestException, ValueError):
                    if check(proc.health()):
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{proc.name} not healthy within {timeout:g} s:\n{proc.tail()}")
                time.sleep(POLL)

    def passes(self, proc: Proc) -> list[dict[str, Any]]:
        """A device agent's pass lines (``{"pass": n, ...}``) since its latest start."""
        out: list[dict[str, Any]] = []
        for line in proc.log_lines():
            if line.startswith("[fwledger up"):  # stack._spawn's start marker: a restart
                out = []
            elif line.startswith('{"pass"'):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_passes(self, *procs: Proc, n: int = 1, timeout: float = 60.0) -> None:
        """Each device agent made ``n`` passes since its latest start (it must not exit meanwhile)."""
        for proc in procs:
            def made(p: Proc = proc) -> bool:
                self._check_running(p)
                return len(self.passes(p)) >= n

            wait_for(made, timeout, f"{proc.name} made {n} pass(es)", procs=self)

    # -- stopping --------------------------------------------------------------------------------

    def kill(self, proc: Proc, sig: signal.Signals = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` to the process group (by PID, start time checked) and wait until it is gone."""
        if not proc.alive():
            return
        os.killpg(proc.pid, sig)
        wait_for(lambda: not stack._alive(proc.pid), timeout, f"{proc.name} (pid {proc.pid}) gone after {sig.name}")
        if proc.popen is not None:
            with contextlib.suppress(Exception):
                proc.popen.wait(1)

    def restart(self, proc: Proc) -> None:
        """Start ``proc`` again: same argv, environment, log (appended), data and port."""
        assert not proc.alive(), f"{proc.name} still runs"
        self._start(proc)

    def stop(self, proc: Proc) -> str:
        if not proc.entry:
            return "never started"
        how = stack._terminate(proc.entry)
        if proc.popen is not None:
            with contextlib.suppress(Exception):
                proc.popen.wait(1)
        return how

    def stop_all(self) -> list[str]:
        """Stop every process, newest first; returns the errors (a process that would not die)."""
        errors = []
        for proc in reversed(self.all):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                errors.append(f"{proc.name}: {exc}")
        return errors

    def report(self, lines: int = 25) -> str:
        return "\n".join(f"----- {p.name} (pid {p.entry.get('pid')}, {p.starts} start(s)) {p.log}\n{p.tail(lines)}"
                         for p in self.all)


def hang_up(*socks: socket.socket) -> None:
    """Shut down and close each socket of a relayed connection, whatever state it is in."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()


class ThrottledProxy:
    """A TCP relay on a free 127.0.0.1 port to ``127.0.0.1:target``: a slow link between a device
    and a firmware server, so that a download lasts long enough for a kill to land mid-stream.

    Answers flow back at most ``rate`` bytes/s per connection (None: unthrottled; may be changed
    at any time), through a small receive buffer so the server cannot run far ahead. When the
    server's side ends (closed, or its process killed) the device's side is closed too; when the
    server cannot be reached the device's connection is closed at once. ``forwarded`` counts the
    bytes sent back to devices; :meth:`close` stops it (every relayed connection cut, new ones
    refused); ``port``: listen there (a relay closed before, opened again on its port).
    """

    def __init__(self, target: int, rate: float | None = None, piece: int = 16 * 1024, port: int = 0) -> None:
        self.target, self.rate, self.piece = target, rate, piece
        self.forwarded = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True, name="throttled-proxy").start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks.update(socks)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * self.piece)
            try:
                up.connect(("127.0.0.1", self.target))
            except OSError:
                up.close()
                down.close()
                continue
            self._track(down, up)
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(self.piece)
                if not data:
                    break
                dst.sendall(data)
                if throttled:
                    with self._lock:
                        self.forwarded += len(data)
                    rate = self.rate
                    if rate:
                        time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            hang_up(src, dst)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
