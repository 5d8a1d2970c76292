"""Run an iterator in a worker thread a few items ahead of its consumer, in constant memory.

The device's payload pipeline (``entities/bundle/payload.py``, :func:`decrypt_payload`) reads and hashes
the sealed chunks in a worker while the caller's thread decrypts and writes the previous ones:
``hashlib`` and file/socket I/O release the GIL on large buffers, so on two cores the stages
overlap. The queue is bounded (``depth`` items), so memory does not grow with the payload.

Items and the worker's exception arrive in order: an error the source raises after its n-th item
is raised to the consumer after it took those n items, exactly where a plain ``for`` loop over the
source would raise it. Leaving the consumer's loop early (an error of its own, a power cut) stops
the worker at its next item; :meth:`ReadAhead.close` waits for it.

A worker that is ahead need not sit idle: ``spare(item)`` is called with the item it holds for as
long as the consumer is not waiting for it (busy with an earlier item, or one is still queued), and
may do one small piece of the consumer's work on it each time (the payload pipeline hashes a Merkle
leaf); it returns False when there is nothing left to do. The consumer does the rest. The work
goes to whichever thread has time for it, and the item's state passes to the consumer with the item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["ReadAhead"]

T = TypeVar("T")

_POLL = 0.05  # seconds a blocked worker waits before it looks whether the consumer left


class _End:
    """The source is exhausted (``error`` None) or raised ``error``."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate ``source`` through a worker thread at most ``depth`` items ahead. Use as a context manager."""

    def __init__(self, source: Iterator[T], *, depth: int = 4, name: str = "read-ahead",
                 spare: Callable[[T], bool] | None = None) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._source = source
        self._spare = spare
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._waiting = False  # the consumer is blocked on an empty queue
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: T | _End) -> bool:
        if self._spare is not None and not isinstance(item, _End):
            # the consumer is busy, or has an earlier item still queued: do its work on this item
            # meanwhile, a piece at a time, until it waits on an empty queue
            while (not self._waiting or not self._queue.empty()) and not self._stop.is_set() and self._spare(item):
                pass
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_End(exc))
            return
        self._put(_End(None))

    def __iter__(self) -> Iterator[T]:
        while not self._done:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                self._waiting = True
                try:
                    item = self._queue.get()
                finally:
                    self._waiting = False
            if isinstance(item, _End):
                self._done = True
                if item.error is not None:
                    raise item.error
                return
            yield item

    def close(self) -> None:
        """Stop the worker (it finishes the item it is producing) and wait for it."""
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            try:  # unblock a worker waiting for room
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_POLL)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
