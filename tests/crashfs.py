"""Crash states of a folder: what a power cut may leave on disk after any prefix of a run (test support).

:class:`Recorder` is interposition, not a mock: installed with :func:`ledger_node.fsutil.observe`,
it is told each file-system change the code under test made, after the real operation ran on
the real disk, and only writes it down (with the bytes written). Nothing the code does or sees
changes. The device's disk I/O goes through those primitives (``entities/firmware_consumer/``:
``store.py``, ``device.py``, ``install_session.py``, ``device_info.py``; ``ledger_node/fsutil.py``),
so the log is complete for its folder.

:func:`crash_states` replays the log. It models what survives a power cut conservatively, like
POSIX promises and no more (the "abstract persistence model" of the ALICE/crash-consistency work,
without ext4's ordering favours):

- A file's data (writes, truncations) is durable only once *that file* is fsynced. After its last
  fsync, a prefix of its later data operations may have reached the disk, in order; the first one
  that did not may be *torn* at 4 KiB block boundaries: any subset of its blocks new (a leading run,
  or scattered: writeback has no order), the rest old bytes, and where the write grew the file
  either the file stops at the last new block or the grown part reads as zeros (data=writeback).
- A name operation (create, mkdir, rename, unlink) is durable only once *its folder* is fsynced;
  fsyncing a file does not make its name durable. After a folder's last fsync, a prefix of its
  later name operations may have reached the disk, in order.
- Folders and files are independent of each other: a rename may be on disk while the data of the
  file it names is not, a new folder's contents may be on disk while its own entry is not (then
  the whole subtree is gone).

A crash state after the first ``k`` operations keeps every durable operation and, for each folder
and each file, one of the prefixes (or tears) above; every combination is legal. Where there are
more combinations than ``limit``, a deterministic sample (fixed seed) is taken, always including
"nothing un-synced survived" and "everything did". States are deduplicated by content.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 4096
NAME_OPS = frozenset({"create", "mkdir", "rename", "unlink"})
DATA_OPS = frozenset({"write", "truncate"})


@dataclass(frozen=True)
class Op:
    """One recorded operation; paths relative to the recorded folder ("" is the folder itself)."""

    kind: str  # create mkdir rename unlink | write truncate | fsync | dirsync
    path: str = ""
    dst: str = ""
    inode: int = -1
    offset: int = 0
    data: bytes = b""
    size: int = 0

    @property
    def folder(self) -> str:
        """The folder whose fsync makes a name operation durable."""
        return os.path.dirname(self.dst or self.path) if self.kind in NAME_OPS else self.path

    def __repr__(self) -> str:
        extra = f" {len(self.data)}B@{self.offset}" if self.kind == "write" else (
            f" ->{self.size}" if self.kind == "truncate" else "")
        return f"<{self.kind} {self.path}{' -> ' + self.dst if self.dst else ''} #{self.inode}{extra}>"


class Recorder:
    """Records the changes made under ``root`` (see the module docstring); call it as an fsutil observer."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        self.base_dirs: set[str] = {""}
        self.base_names: dict[str, int] = {}
        self.base_data: dict[int, bytes] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel
            self.base_dirs.update(os.path.join(rel, d) for d in dirnames)
            for f in filenames:
                ino = len(self.base_data)
                self.base_names[os.path.join(rel, f)] = ino
                with open(os.path.join(dirpath, f), "rb") as fh:
                    self.base_data[ino] = fh.read()
        self.names = dict(self.base_names)
        self.next_inode = len(self.base_data)
        self.fds: dict[int, int] = {}
        self.ops: list[Op] = []

    def _rel(self, path: Any) -> str | None:
        p = os.path.abspath(path)
        if p == self.root:
            return ""
        return os.path.relpath(p, self.root) if p.startswith(self.root + os.sep) else None

    def _new(self, rel: str) -> int:
        ino, self.next_inode = self.next_inode, self.next_inode + 1
        self.names[rel] = ino
        self.ops.append(Op("create", rel, inode=ino))
        return ino

    def __call__(self, op: str, args: tuple[Any, ...]) -> None:
        if op in ("open", "create"):
            rel = self._rel(args[0])
            if rel is not None:
                ino = self._new(rel) if op == "create" or rel not in self.names else self.names[rel]
                self.fds[args[1]] = ino
        elif op == "close":
            self.fds.pop(args[0], None)
        elif op in ("write", "truncate_fd", "fsync"):
            known = self.fds.get(args[0])
            if known is not None:
                ino = known
                self.ops.append(Op("write", inode=ino, offset=args[1], data=args[2]) if op == "write" else
                                Op("truncate", inode=ino, size=args[1]) if op == "truncate_fd" else
                                Op("fsync", inode=ino))
        elif op == "truncate":
            rel = self._rel(args[0])
            if rel is not None:
                self.ops.append(Op("truncate", rel, inode=self.names[rel], size=args[1]))
        elif op == "replace":
            src, dst = self._rel(args[0]), self._rel(args[1])
            if src is not None and dst is not None:
                assert os.path.dirname(src) == os.path.dirname(dst), "renames across folders are not modelled"
                ino = self.names.pop(src)
                self.names[dst] = ino
                self.ops.append(Op("rename", src, dst, inode=ino))
        elif op in ("unlink", "mkdir", "sync_dir"):
            rel = self._rel(args[0])
            if rel is not None:
                if op == "unlink":
                    self.ops.append(Op("unlink", rel, inode=self.names.pop(rel)))
                else:
                    self.ops.append(Op("mkdir" if op == "mkdir" else "dirsync", rel))
        else:  # pragma: no cover - a new primitive must be modelled here first
            raise AssertionError(f"unmodelled file-system operation {op}")


# ----------------------------------------------------------------------------- crash states


@dataclass(frozen=True)
class Tear:
    """The first un-persisted write of a file, partly on disk: the 4 KiB blocks of it (indices from its
    first block) that reached the disk; ``grow``: the file extends to the write's end anyway (zeros)."""

    blocks: frozenset[int]
    grow: bool


@dataclass(frozen=True)
class CrashState:
    """A disk a power cut after ``cut`` operations may leave: files (path -> bytes) and folders."""

    cut: int
    files: dict[str, bytes]
    dirs: frozenset[str]
    persisted: int  # how many un-synced operations survived (whole or torn)
    pending: int  # how many there were
    fingerprint: str = field(default="", compare=False)

    def materialise(self, where: Path) -> Path:
        """Write this state into the new folder ``where``."""
        where.mkdir(parents=True)
        for d in sorted(self.dirs, key=len):
            if d:
                (where / d).mkdir()
        for rel, data in self.files.items():
            (where / rel).write_bytes(data)
        return where


def _block_spans(op: Op) -> list[tuple[int, int]]:
    """The write's bytes split at the file's 4 KiB block boundaries: (start, end) offsets into ``op.data``."""
    end = op.offset + len(op.data)
    cuts = [op.offset, *range((op.offset // BLOCK + 1) * BLOCK, end, BLOCK), end]
    return [(a - op.offset, b - op.offset) for a, b in itertools.pairwise(cuts)]


def _tears(op: Op, old_size: int, rng: random.Random) -> list[Tear]:
    """Ways a write reaches the disk partly: every leading run of its blocks (writeback in order), as many
    scattered subsets (writeback in any order), the grown file cut short or zero-filled."""
    n = len(_block_spans(op))
    grows = (False, True) if op.offset + len(op.data) > old_size else (False,)
    subsets = {frozenset(range(k)) for k in range(n)}
    if n > 2:
        subsets |= {frozenset(b for b in range(n) if rng.random() < 0.5) for _ in range(2 * n)}
    subsets.discard(frozenset(range(n)))
    return [Tear(b, g) for b in sorted(subsets, key=lambda x: (len(x), sorted(x))) for g in grows
            if b or g]


@dataclass
class _Cut:
    """The operations pending at a cut, per folder and per file, and the durable ones."""

    durable: set[int]
    by_folder: dict[str, list[int]]
    by_file: dict[int, list[int]]


def _cuts(ops: list[Op]) -> Iterator[_Cut]:
    durable: set[int] = set()
    by_folder: dict[str, list[int]] = {}
    by_file: dict[int, list[int]] = {}
    yield _Cut(set(durable), {}, {})
    for i, op in enumerate(ops):
        if op.kind in NAME_OPS:
            by_folder.setdefault(op.folder, []).append(i)
        elif op.kind in DATA_OPS:
            by_file.setdefault(op.inode, []).append(i)
        elif op.kind == "dirsync":
            durable.update(by_folder.pop(op.path, []))
        elif op.kind == "fsync":
            durable.update(by_file.pop(op.inode, []))
        yield _Cut(set(durable), {k: list(v) for k, v in by_folder.items()}, {k: list(v) for k, v in by_file.items()})


class _Replay:
    """Applies a chosen subset of the first ``cut`` operations to the recorded folder's starting state."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def run(self, cut: int, keep: set[int], tears: dict[int, Tear]) -> tuple[dict[str, bytes], frozenset[str]]:
        names = dict(self.rec.base_names)
        dirs = set(self.rec.base_dirs)
        data: dict[int, bytearray] = {i: bytearray(b) for i, b in self.rec.base_data.items()}
        for i, op in enumerate(self.rec.ops[:cut]):
            tear = tears.get(i)
            if i not in keep and tear is None:
                continue
            if op.kind == "create":
                names[op.path] = op.inode
                data.setdefault(op.inode, bytearray())
            elif op.kind == "mkdir":
                dirs.add(op.path)
            elif op.kind == "rename":
                names[op.dst] = names.pop(op.path)
            elif op.kind == "unlink":
                names.pop(op.path, None)
            elif op.kind == "truncate":
                buf = data.setdefault(op.inode, bytearray())
                del buf[op.size:]
                buf.extend(bytes(op.size - len(buf)))
            elif op.kind == "write":
                buf = data.setdefault(op.inode, bytearray())
                spans = [(0, len(op.data))] if tear is None else [
                    sp for b, sp in enumerate(_block_spans(op)) if b in tear.blocks]
                reach = max((b for _, b in spans), default=0)
                end = op.offset + (len(op.data) if tear is None or tear.grow else reach)
                if len(buf) < end:
                    buf.extend(bytes(end - len(buf)))
                for a, b in spans:
                    buf[op.offset + a: op.offset + b] = op.data[a:b]
        visible = {d for d in dirs if all(a in dirs for a in _ancestors(d))}
        files = {p: bytes(data[i]) for p, i in names.items() if os.path.dirname(p) in visible}
        return files, frozenset(visible)

    def size_before(self, cut_ops: list[int], keep: set[int], inode: int) -> int:
        """The size of ``inode`` after the kept data operations among ``cut_ops`` (for tears)."""
        size = len(self.rec.base_data.get(inode, b""))
        for i in cut_ops:
            op = self.rec.ops[i]
            if i in keep and op.inode == inode:
                size = op.size if op.kind == "truncate" else max(size, op.offset + len(op.data))
        return size


def _ancestors(d: str) -> list[str]:
    out = []
    while d:
        d = os.path.dirname(d)
        out.append(d)
    return out


def _fingerprint(files: dict[str, bytes], dirs: frozenset[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(p.encode() + b"\0" + hashlib.sha256(files[p]).digest())
    for d in sorted(dirs):
        h.update(b"d" + d.encode() + b"\0")
    return h.hexdigest()


def crash_states(rec: Recorder, *, limit: int = 24, seed: int = 1368, scatter: int = 0) -> Iterator[CrashState]:
    """Every distinct crash state of the recorded run, cut after each operation (see the module docstring).

    Per cut, all combinations of the folders' and files' choices when there are at most ``limit``,
    else ``limit`` of them drawn with ``random.Random(f"{seed}/{cut}")`` (plus the two extremes).
    ``scatter``: per file and cut, that many more choices where each un-synced write independently
    persisted whole, not at all, or as a random subset of its blocks (writeback in no order at all).
    """
    replay = _Replay(rec)
    seen: set[str] = set()
    for cut, c in enumerate(_cuts(rec.ops)):
        # per folder: how many of its pending name operations persisted; per file: likewise, or a tear
        axes: list[list[tuple[set[int], dict[int, Tear]]]] = []
        for idx in c.by_folder.values():
            axes.append([(set(idx[:n]), {}) for n in range(len(idx) + 1)])
        for ino, idx in c.by_file.items():
            opts: list[tuple[set[int], dict[int, Tear]]] = [(set(idx[:n]), {}) for n in range(len(idx) + 1)]
            for n, i in enumerate(idx):
                op = rec.ops[i]
                if op.kind == "write" and op.data:
                    before = replay.size_before(sorted(c.durable | set(idx[:n])), c.durable | set(idx[:n]), ino)
                    opts.extend((set(idx[:n]), {i: t}) for t in _tears(op, before, random.Random(f"{seed}/{i}")))
            srng = random.Random(f"{seed}/{cut}/{ino}")
            for _ in range(scatter if len(idx) > 1 else 0):
                whole: set[int] = set()
                torn: dict[int, Tear] = {}
                for i in idx:
                    pick = srng.randrange(3)
                    n_blocks = len(_block_spans(rec.ops[i])) if rec.ops[i].kind == "write" else 0
                    if pick == 1 or (pick == 2 and n_blocks < 2):
                        whole.add(i)
                    elif pick == 2:
                        torn[i] = Tear(frozenset(b for b in range(n_blocks) if srng.random() < 0.5),
                                       srng.random() < 0.5)
                opts.append((whole, torn))
            axes.append(opts)
        total = 1
        for a in axes:
            total *= len(a)
        if total <= limit:
            combos: list[tuple[int, ...]] = list(itertools.product(*(range(len(a)) for a in axes)))
        else:  # distinct combinations, drawn without replacement (mixed-radix indices), plus the two extremes
            rng = random.Random(f"{seed}/{cut}")
            picks = {0, total - 1, *rng.sample(range(1, total - 1), limit - 2)}
            combos = [_digits(x, [len(a) for a in axes]) for x in sorted(picks)]
        n_pending = sum(len(v) for v in c.by_folder.values()) + sum(len(v) for v in c.by_file.values())
        for combo in combos:
            keep = set(c.durable)
            tears: dict[int, Tear] = {}
            for a, choice in zip(axes, combo, strict=True):
                k, t = a[choice]
                keep |= k
                tears.update(t)
            files, dirs = replay.run(cut, keep, tears)
            fp = _fingerprint(files, dirs)
            if fp in seen:
                continue
            seen.add(fp)
            yield CrashState(cut, files, dirs, len(keep - c.durable) + len(tears), n_pending, fp)


def _digits(x: int, radices: list[int]) -> tuple[int, ...]:
    out = []
    for r in radices:
        x, d = divmod(x, r)
        out.append(d)
    return tuple(out)


def durable_states(rec: Recorder) -> Iterator[tuple[dict[str, bytes], frozenset[str]]]:
    """Per cut (0 to all operations), the disk when nothing un-synced survived: what the run guaranteed so far."""
    replay = _Replay(rec)
    for cut, c in enumerate(_cuts(rec.ops)):
        yield replay.run(cut, c.durable, {})


def everything_state(rec: Recorder) -> tuple[dict[str, bytes], frozenset[str]]:
    """The disk after the whole run had every operation reached it (the live folder, as the recorder saw it)."""
    return _Replay(rec).run(len(rec.ops), set(range(len(rec.ops))), {})
