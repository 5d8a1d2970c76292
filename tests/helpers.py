"""Small builders shared by tests (records with sensible defaults); waiting for a server process and stopping it."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import requests

from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version


def make_record(version: str = "1.0.0", *, prev: bytes = ZERO_HASH, vendor: str = "acme",
                product: str = "main-fw", hardware: tuple[str, ...] = ("cam-r1",),
                deps: tuple[Dependency, ...] = (), size: int = 1024, link: str | None = None) -> ReleaseRecord:
    v = Version.parse(version)
    seed = f"{vendor}/{product}/{version}".encode()
    data = ReleaseData(
        merkle_root=hashlib.sha256(b"merkle:" + seed).digest(), vendor_name=vendor, publish_time=0,
        product=product, version=v, file_hash=hashlib.sha256(b"file:" + seed).digest(),
        file_link=link if link is not None else f"https://fw.example.org/{vendor}/{product}-{version}.bin",
        file_name=f"{product}-{version}.bin", file_size=size, supported_hardware=hardware, dependencies=deps,
    )
    return ReleaseRecord(prev_hash=prev, data=data)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process by its PID: SIGTERM, then SIGKILL if it is still there after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, log: Path | None, timeout: float = 60.0) -> None:
    """Wait until ``url/health`` answers 200; fail at once, with the process's log, if it exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url} exited {proc.returncode}: {log.read_text() if log else ''}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered /health")
