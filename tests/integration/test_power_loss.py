"""Power loss during an update never bricks the device (X.1368 R10.c.ii, C11.1.a.iii, C11.1.b).

A real subprocess (``tests/fixtures/consumer_agent.py``) installs a multi-chunk image into the
inactive slot, boots it on trial, and confirms it, printing ``MARK <step>`` before every durable
step: journal write, each chunk, each slot fsync, each atomic replace of a state copy, the state
switch to ``pending``, the trial boot, the health check, the confirm. The tests SIGKILL its
process group

- at **every** step boundary (``--step``: the agent blocks after each marker until told to go on,
  so the kill lands exactly there), for an install+trial+confirm and for a safe-mode recover;
- at random instants (free-running agent, kill a random delay after a random marker), including
  chains of kills of retried installs;
- while the health check of a trial boot is running, until the attempts run out.

After each kill a new process boots the device (recovery boot) and retries the install. Checked
every time: both state copies parse (atomic replace: never a partial file); the recovery boot runs
a slot whose bytes hash to what the state records, and that is the old image or the new one, never
a mix, and exactly the one the completed steps imply; the anti-rollback counter is raised only by
a completed confirm and never exceeds a confirmed version; an interrupted install resumes from its
last durable checkpoint (or restarts cleanly when its state was never marked); the retried install
completes and boots the new image.

SIGKILL loses no data the kernel accepted (the page cache survives), so these tests prove the
ordering and atomicity of the steps, not the fsync calls themselves; the fsyncs are where a true
power cut needs them (see ``entities/firmware_consumer/store.py``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.context
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from entities.firmware_consumer import (
    ComponentState,
    Device,
    FactoryImage,
    SlotStatus,
    init_device,
    pack_version,
    slot_digest,
)
from entities.firmware_consumer.state import JournalEntry, decode_envelope
from entities.firmware_consumer.store import read_state_copies
from tests.fixtures import consumer_agent

AGENT = Path(__file__).resolve().parents[1] / "fixtures" / "consumer_agent.py"
REPO = Path(__file__).resolve().parents[2]
COMP = "main"

_rng = random.Random(1368)
IMG1 = _rng.randbytes(200 * 1024)
IMG2 = _rng.randbytes(300 * 1024 + 777)  # not a multiple of the chunk size
SHA1 = hashlib.sha256(IMG1).hexdigest()  # the bytes on disk
DIG1, DIG2 = slot_digest.digest_of(IMG1), slot_digest.digest_of(IMG2)  # the slot digests the device records
BY_DIGEST = {DIG1: "1.0.0", DIG2: "2.0.0"}


def header_hash(version: str) -> str:
    return "0x" + hashlib.sha256(f"header:{version}".encode()).hexdigest()


# ----------------------------------------------------------------------------- running the agent


@dataclass
class Run:
    marks: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    killed: bool = False
    returncode: int | None = None
    stderr: str = ""


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """A multiprocessing fork server with the agent preloaded: each agent is a fresh process forked
    from it (a few ms) instead of a new interpreter (~0.15 s)."""
    ctx = multiprocessing.get_context("forkserver")
    # pytest too: started as the ``pytest`` script, every child re-runs that script as __mp_main__
    ctx.set_forkserver_preload(["pytest", "tests.fixtures.consumer_agent"])
    return ctx


def run_agent(args: list[str], *, step: bool = False, kill_at: int | None = None,
              kill_when: Callable[[str], bool] | None = None, delay: float = 0.0, timeout: float = 60.0,
              real_exec: bool = False) -> Run:
    """Run the agent in a new process; SIGKILL it at the ``kill_at``-th marker (1-based) or at the first
    marker matching ``kill_when``, ``delay`` seconds after reading it.

    ``real_exec`` starts ``python consumer_agent.py`` (lines over stdout/stdin, the whole process
    group killed); otherwise the process is forked from the preloaded fork server (lines over a pipe).
    """
    run = Run()

    def wants_kill(mark: str) -> bool:
        return (kill_at is not None and len(run.marks) == kill_at) or (kill_when is not None and kill_when(mark))

    def take(line: str) -> bool:
        """Record one line; True when the agent is to be killed now."""
        tag, _, rest = line.partition(" ")
        if tag != "MARK":
            run.results[tag] = json.loads(rest)
            return False
        run.marks.append(rest)
        return wants_kill(rest)

    if real_exec:
        _run_exec(args, step, take, delay, timeout, run)
    else:
        _run_forked(args, step, take, delay, timeout, run)
    assert run.killed or run.returncode == 0, f"agent {args} exited {run.returncode}:\n{run.stderr}"
    return run


def _run_forked(args: list[str], step: bool, take: Callable[[str], bool], delay: float, timeout: float,
                run: Run) -> None:
    ctx = _forkserver()
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=consumer_agent.child_entry, args=([*args, *(["--step"] if step else [])], theirs))
    proc.start()
    theirs.close()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not ours.poll(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"agent {args} timed out after {run.marks[-3:]}")
            try:
                line = ours.recv()
            except EOFError:
                break
            if take(line):
                if delay:
                    time.sleep(delay)
                proc.kill()
                break
            if step and line.startswith("MARK "):
                ours.send(None)
        proc.join(timeout)
        run.returncode = proc.exitcode
        run.killed = run.returncode == -signal.SIGKILL  # with a delay it may have finished first
    finally:
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        ours.close()
        proc.close()


def _run_exec(args: list[str], step: bool, take: Callable[[str], bool], delay: float, timeout: float,
              run: Run) -> None:
    cmd = [sys.executable, str(AGENT), *args, *(["--step"] if step else [])]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE if step else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        assert proc.stdout is not None

        def kill() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            for raw in proc.stdout:
                line = raw.decode().rstrip("\n")
                if take(line):
                    if delay:
                        time.sleep(delay)
                    kill()
                    break
                if step and line.startswith("MARK "):
                    assert proc.stdin is not None
                    proc.stdin.write(b"\n")
                    proc.stdin.flush()
            run.returncode = proc.wait(timeout)
            run.killed = run.returncode == -signal.SIGKILL
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()
            err.seek(0)
            run.stderr = err.read().decode(errors="replace")


def install_args(d: Path, cmd: str = "install", *, chunk: int = 16384, health: str = "ok") -> list[str]:
    return [cmd, str(d), "--image", str(d.parent / "img2.bin"), "--version", "2.0.0", "--chunk", str(chunk),
            "--health", health]


# ----------------------------------------------------------------------------- checks


def read_disk(d: Path) -> tuple[ComponentState, list[int]]:
    """What any reader sees right after a kill: both state copies must parse (never a partial file)."""
    paths = (d / "components" / COMP / "state.0.json", d / "components" / COMP / "state.1.json")
    copies = read_state_copies(paths, ComponentState.from_json)
    assert copies.valid == (True, True), copies.problems
    gens = [c[0] for c in copies.copies if c is not None]
    assert abs(gens[0] - gens[1]) <= 1
    journal = d / "journal" / f"{COMP}.json"
    if journal.exists():
        JournalEntry.from_json(decode_envelope(journal.read_bytes(), "install-journal")[1])
    return ComponentState.from_json(copies.newest()[2]), gens


def check_counter(st: ComponentState, initial: str = "1.0.0") -> None:
    """The counter is the initial one or a confirmed version, never above a confirmed image (C11.1.a.i)."""
    assert st.counter in (initial, "2.0.0")
    confirmed = [st.slot(s).version or "0.0.0" for s in ("a", "b")
                 if st.slot(s).status in (SlotStatus.CONFIRMED, SlotStatus.SUPERSEDED)]
    assert pack_version(st.counter) <= max([pack_version(initial), *map(pack_version, confirmed)])
    if st.counter == "2.0.0":
        c = st.confirmed
        assert c is not None and st.slot(c).version == "2.0.0"


def recover_and_retry(d: Path, *, chunk: int = 16384, initial: str = "1.0.0") -> tuple[dict[str, Any], dict[str, Any]]:
    """Recovery boot in a new process, then the retried install; generic checks; return (BOOT, FINAL)."""
    run = run_agent(install_args(d, "after-crash", chunk=chunk))
    boot, final = run.results["BOOT"], run.results["FINAL"]
    b = boot["boot"]
    after = boot["after"]
    assert after["copies_valid"] == [True, True]
    check_counter(ComponentState.from_json(after["state"]), initial)
    if b["kind"] != "safe":
        # the booted slot's actual bytes are what the state records, and a whole image: old or new
        assert b["digest"] == after["slots"][b["slot"]]["actual_digest"] == after["slots"][b["slot"]]["digest"]
        assert BY_DIGEST[b["digest"]] == b["version"]
    # the retried install completes and the new image runs, confirmed
    st = ComponentState.from_json(final["after"]["state"])
    c = st.confirmed
    assert c is not None and st.active == c and st.mode == "normal"
    assert (st.slot(c).version, final["after"]["slots"][c]["actual_digest"]) == ("2.0.0", DIG2)
    assert st.counter == "2.0.0" and not st.safe_mode
    assert final["after"]["copies_valid"] == [True, True]
    assert final["status"]["components"][0]["install"] is None
    assert not (d / "journal" / f"{COMP}.json").exists()
    leftovers = [p.name for p in d.rglob(".*.tmp")]
    assert not leftovers, leftovers
    return boot, final


def completed(marks: list[str], pred: Callable[[str], bool]) -> list[str]:
    """Markers whose step finished: all but the last (the process was killed right after printing it)."""
    return [m for m in marks[:-1] if pred(m)]


def replaced(marks: list[str], what: str) -> bool:
    """True when the first copy of state commit ``what`` was atomically replaced before the kill."""
    return bool(completed(marks, lambda m: m.startswith(f"state {COMP} {what} copy") and m.endswith(" replace")))


def durable_offset(marks: list[str]) -> int:
    offs = [int(m.split("durable=")[1].split()[0]) for m in
            completed(marks, lambda m: m.startswith(f"journal {COMP} durable=") and m.endswith(" replace"))]
    return max(offs, default=0)


def scribble_undurable_tail(d: Path, st: ComponentState, rng: random.Random) -> bool:
    """Play the part of a real power cut that SIGKILL cannot: bytes written after the last durable
    checkpoint of an install may be lost or garbage. Overwrite them (and beyond) with junk; the resumed
    install must not trust them."""
    j = d / "journal" / f"{COMP}.json"
    if not j.exists():
        return False
    e = JournalEntry.from_json(decode_envelope(j.read_bytes(), "install-journal")[1])
    if not e.matches(st):
        return False
    with open(d / "components" / COMP / f"slot_{e.slot}", "r+b") as f:
        f.seek(e.durable)
        f.write(rng.randbytes(rng.randint(1, 40_000)))
    return True


# ----------------------------------------------------------------------------- fixtures


def make_base(root: Path, *, safe: bool = False) -> Path:
    """A device with 1.0.0 confirmed and booted (or, ``safe``, with no bootable slot: safe mode)."""
    d = root / "base"
    init_device(d, device_id="cam-0001", hardware="cam-r1",
                components={COMP: None if safe else FactoryImage("1.0.0", header_hash("1.0.0"), IMG1)})
    (root / "img2.bin").write_bytes(IMG2)
    with Device(d) as dev:
        assert dev.boot_component(COMP).kind.value == ("safe" if safe else "normal")
    return d


def fresh_copy(base: Path, name: str) -> Path:
    d = base.parent / name
    shutil.copytree(base, d)
    return d


def full_run_marks(base: Path, args_for: Callable[[Path], list[str]]) -> list[str]:
    d = fresh_copy(base, "uninterrupted")
    run = run_agent(args_for(d))
    assert run.results["RESULT"]["boot"]["confirmed"]
    return run.marks


def each(jobs: Iterable[Callable[[], None]]) -> None:
    """Run the kill scenarios one after the other (multiprocessing's fork server, driven from several
    threads at once, now and then loses a child's exit status: CPython, 3.11)."""
    for job in jobs:
        job()


@pytest.fixture
def killdir(tmp_path: Path) -> Iterator[Path]:
    """Where the killed devices live: ``$FWLEDGER_KILL_DIR`` (``tmp`` = pytest's tmp_path on disk), else
    tmpfs (``/dev/shm``) when there is one, else tmp_path.

    A SIGKILL leaves the page cache intact, so what these runs can observe (the order and atomicity
    of renames and writes) is the same on tmpfs and on ext4; on a busy disk the fsyncs only make the
    run 3-5x slower. ``test_kill_during_trial_boot`` and a sample of the step kills run on disk.
    """
    where = os.environ.get("FWLEDGER_KILL_DIR", "/dev/shm")
    root = Path(where)
    if where == "tmp" or not (root.is_dir() and os.access(root, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="fwledger-kill-", dir=root))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- scenarios


def kill_at_every_step(root: Path, *, chunk: int, checkpoint: int = 0, exec_every: int = 0) -> int:
    """Kill at the N-th marker for every N; every ``exec_every``-th kill uses the real command line agent."""
    base = make_base(root)

    def args(d: Path) -> list[str]:
        return [*install_args(d, chunk=chunk), "--checkpoint", str(checkpoint)]

    marks = full_run_marks(base, args)
    n_chunks = -(-len(IMG2) // chunk)
    assert sum(m.startswith("chunk ") for m in marks) == n_chunks
    for step in ("journal main begin", "state main writing", "fsync main", "state main pending",
                 "boot main trial", "state main boot-trial", "health main", "confirm main", "state main confirm"):
        assert any(m.startswith(step) for m in marks), step

    def one(n: int) -> None:
        d = fresh_copy(base, f"k{n}")
        run = run_agent(args(d), step=True, kill_at=n, real_exec=bool(exec_every) and n % exec_every == 0)
        assert run.killed and run.marks == marks[:n]
        st, _ = read_disk(d)
        # slot a (the active, confirmed image) is never written by the install
        assert hashlib.sha256((d / "components/main/slot_a").read_bytes()).hexdigest() == SHA1
        confirm_done = replaced(run.marks, "confirm")
        trial_done = replaced(run.marks, "boot-trial")
        pending_done = replaced(run.marks, "pending")
        writing_done = replaced(run.marks, "writing")
        assert (st.counter == "2.0.0") == confirm_done  # the counter rises at the confirm, not before
        boot, final = recover_and_retry(d, chunk=chunk)
        b = boot["boot"]
        if confirm_done:
            assert (b["kind"], b["slot"], b["version"], b["confirmed"]) == ("normal", "b", "2.0.0", False)
        elif pending_done:  # a trial boot is due (a second attempt if the first one was cut)
            assert (b["slot"], b["version"], b["confirmed"]) == ("b", "2.0.0", True)
            assert b["attempt"] == (2 if trial_done else 1)
        else:  # the old image keeps running
            assert (b["kind"], b["slot"], b["version"], b["digest"]) == ("normal", "a", "1.0.0", DIG1)
        retry = final["retry"]
        if pending_done:
            assert retry["resumed_from"] is None  # nothing to reinstall
        elif writing_done:
            assert retry["resumed_from"] == durable_offset(run.marks)  # resumed at the last durable offset
        else:
            assert retry["resumed_from"] == 0  # never marked in the state: restarted cleanly
        shutil.rmtree(d)

    each([lambda n=n: one(n) for n in range(1, len(marks) + 1)])
    return len(marks)


def kill_at_random(root: Path, *, kills: int, seed: int, chain: int = 1, chunk: int = 16384) -> int:
    """Free-running agents killed a random delay after a random marker; ``chain`` kills in a row
    (each retried install cut again) before the recovery boot. Returns the kills that landed."""
    base = make_base(root)
    marks = full_run_marks(base, lambda d: install_args(d, chunk=chunk))
    rng = random.Random(seed)
    # the first kill anywhere; a retry resumes further on and has fewer steps left, so cut it early
    plans = [[(rng.randint(1, len(marks) if k == 0 else 30), rng.uniform(0, 0.001)) for k in range(chain)]
             for _ in range(kills // chain)]

    landed = scribbled = 0

    def one(i: int, plan: list[tuple[int, float]]) -> None:
        nonlocal landed, scribbled
        d = fresh_copy(base, f"r{i}")
        for n, delay in plan:
            run = run_agent(install_args(d, chunk=chunk), kill_at=n, delay=delay)
            if not run.killed:  # finished before the kill landed (or a retry had fewer steps left)
                break
            landed += 1
            st, _ = read_disk(d)
            check_counter(st)
            scribbled += scribble_undurable_tail(d, st, random.Random(f"{seed}/{i}/{n}"))
            if st.counter == "1.0.0":
                assert hashlib.sha256((d / "components/main/slot_a").read_bytes()).hexdigest() == SHA1
        boot, _ = recover_and_retry(d, chunk=chunk)
        assert boot["boot"]["kind"] == "normal"
        shutil.rmtree(d)

    each([lambda i=i, p=p: one(i, p) for i, p in enumerate(plans)])
    assert scribbled >= landed // 5, (scribbled, landed)  # most kills land mid-install
    print(f"\n  {scribbled} of {landed} kills left an install mid-way; its undurable tail was overwritten")
    return landed


def kill_every_recover_step(root: Path, *, chunk: int) -> int:
    """Safe mode: the manual recover install is cut at every step; the device stays safe or recovers."""
    base = make_base(root, safe=True)
    marks = full_run_marks(base, lambda d: install_args(d, "recover", chunk=chunk))

    def one(n: int) -> None:
        d = fresh_copy(base, f"s{n}")
        run = run_agent(install_args(d, "recover", chunk=chunk), step=True, kill_at=n)
        st, _ = read_disk(d)
        assert st.counter == ("2.0.0" if replaced(run.marks, "confirm") else "0.0.0")
        assert st.safe_mode != replaced(run.marks, "confirm")
        boot, _ = recover_and_retry(d, chunk=chunk, initial="0.0.0")
        b = boot["boot"]
        if replaced(run.marks, "pending"):
            assert (b["slot"], b["digest"]) == ("a", DIG2) and b["kind"] == "normal"
        else:
            assert (b["kind"], b["safe_image_ok"]) == ("safe", True)  # nothing else ever runs
        shutil.rmtree(d)

    each([lambda n=n: one(n) for n in range(1, len(marks) + 1)])
    return len(marks)


def kill_during_trial(root: Path, max_attempts: int, *, real_exec: bool = True) -> int:
    """Kill the device while its trial's health check runs, again and again: the attempts run out and
    it reverts to the old image (R10.c.ii); then a retried install completes."""
    base = make_base(root)
    d = fresh_copy(base, "trial")
    with Device(d) as dev:  # 2.0.0 installed, pending its trial
        s = dev.begin_install(COMP, "2.0.0", header_hash("2.0.0"), len(IMG2))
        s.write_chunk(0, IMG2)
        s.finish(DIG2)
    boot_args = ["boot", str(d), "--health", "hang", "--max-attempts", str(max_attempts)]
    kills = 0
    for attempt in range(1, max_attempts + 1):
        run = run_agent(boot_args, kill_when=lambda m: m.startswith("health-running"), real_exec=real_exec)
        assert run.killed and run.marks[-1] == f"health-running attempt={attempt}"
        kills += 1
        st, _ = read_disk(d)
        assert (st.trial, st.attempts, st.active, st.counter) == ("b", attempt, "b", "1.0.0")
        assert st.slot("b").status is SlotStatus.TRIAL
        assert hashlib.sha256((d / "components/main/slot_a").read_bytes()).hexdigest() == SHA1
    run = run_agent(boot_args, real_exec=real_exec)  # attempts exhausted: reverts without running the image again
    assert not any(m.startswith("health") for m in run.marks)
    out = run.results["RESULT"]["boot"]
    assert (out["slot"], out["version"], out["digest"], out["events"]) == ("a", "1.0.0", DIG1,
                                                                            ["too_many_boot_attempts"])
    st, _ = read_disk(d)
    assert st.slot("b").status is SlotStatus.BAD and st.counter == "1.0.0" and st.attempts == 0
    recover_and_retry(d)

    # one cut trial, then a healthy boot: confirmed on the second attempt
    d2 = fresh_copy(base, "trial2")
    with Device(d2) as dev:
        s = dev.begin_install(COMP, "2.0.0", header_hash("2.0.0"), len(IMG2))
        s.write_chunk(0, IMG2)
        s.finish(DIG2)
    run = run_agent(["boot", str(d2), "--health", "hang"], kill_when=lambda m: m.startswith("health-running"),
                    real_exec=real_exec)
    assert run.killed
    kills += 1
    boot, _ = recover_and_retry(d2)
    assert (boot["boot"]["confirmed"], boot["boot"]["attempt"]) == (True, 2)
    return kills


# ----------------------------------------------------------------------------- the tests

KILLS: dict[str, int] = {}


def _record(name: str, n: int, t0: float) -> None:
    KILLS[name] = n
    print(f"\npower loss [{name}]: {n} kills in {time.monotonic() - t0:.1f} s")


def test_kill_at_every_step_boundary(killdir: Path) -> None:
    """SIGKILL at every step of install + trial boot + confirm; old or new image, never a mix (R10.c.ii)."""
    t0 = time.monotonic()
    n = kill_at_every_step(killdir, chunk=16384)
    assert n >= 90
    _record("every step", n, t0)


def test_kill_at_step_boundaries_on_disk_real_agent(tmp_path: Path) -> None:
    """Same, on the real filesystem with the command line agent (``python consumer_agent.py``), coarser image."""
    t0 = time.monotonic()
    n = kill_at_every_step(tmp_path, chunk=65536, checkpoint=131072, exec_every=1)
    assert n >= 25
    _record("every step, disk, exec", n, t0)


def test_kill_at_random_points(killdir: Path) -> None:
    """SIGKILL at random instants, single kills and chains of three (retries cut again) (R10.c.ii)."""
    t0 = time.monotonic()
    n = kill_at_random(killdir / "single", kills=80, seed=1)
    n += kill_at_random(killdir / "chain", kills=45, seed=2, chain=3)
    assert n >= 80
    _record("random", n, t0)


def test_kill_at_every_step_of_safe_mode_recover(killdir: Path) -> None:
    """Safe mode recover cut at every step: the device stays in safe mode or runs the recovered image (C11.1.b)."""
    t0 = time.monotonic()
    n = kill_every_recover_step(killdir, chunk=32768)
    assert n >= 30
    _record("recover steps", n, t0)


def test_kill_during_trial_boot(tmp_path: Path) -> None:
    """Kills during a trial's health check count as attempts; when they run out, revert (R10.c.ii).
    (On disk, with the command line agent: its health check hangs until the process group is killed.)"""
    t0 = time.monotonic()
    n = kill_during_trial(tmp_path, max_attempts=3)
    _record("trial", n, t0)


def test_power_loss_kill_total() -> None:
    """The default suite kills the device at least 200 times (issue 4)."""
    if len(KILLS) < 5:
        pytest.skip("run with the other power-loss tests")
    assert sum(KILLS.values()) >= 200, KILLS


# ----------------------------------------------------------------------------- slow: thousands


@pytest.mark.slow
@pytest.mark.parametrize(("chunk", "checkpoint"), [(4096, 0), (4096, 16384), (65536, 0), (1000, 4000)])
def test_slow_kill_at_every_step_other_chunkings(killdir: Path, chunk: int, checkpoint: int) -> None:
    t0 = time.monotonic()
    n = kill_at_every_step(killdir, chunk=chunk, checkpoint=checkpoint)
    _record(f"every step chunk={chunk} checkpoint={checkpoint}", n, t0)


@pytest.mark.slow
def test_slow_kill_at_random_points(killdir: Path) -> None:
    t0 = time.monotonic()
    n = kill_at_random(killdir / "single", kills=1500, seed=11, chunk=4096)
    n += kill_at_random(killdir / "chain", kills=600, seed=12, chain=5, chunk=4096)
    _record("random slow", n, t0)


@pytest.mark.slow
def test_slow_recover_every_step_small_chunks(killdir: Path) -> None:
    t0 = time.monotonic()
    _record("recover steps slow", kill_every_recover_step(killdir, chunk=4096), t0)


@pytest.mark.slow
def test_slow_kill_during_trial_many_attempts(killdir: Path) -> None:
    t0 = time.monotonic()
    _record("trial slow", kill_during_trial(killdir, max_attempts=10, real_exec=False), t0)

