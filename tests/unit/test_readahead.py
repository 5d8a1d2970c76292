"""``entities.readahead.ReadAhead``: order, errors, and the spare work a worker does while its consumer is busy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from entities.readahead import ReadAhead


class Item:
    """An item with ``parts`` pieces of work; ``done`` records which thread did each."""

    def __init__(self, n: int, parts: int = 4) -> None:
        self.n, self.parts, self.done = n, parts, []

    def spare(self) -> bool:
        if len(self.done) == self.parts:
            return False
        self.done.append(threading.current_thread().name)
        return True


def test_items_and_the_sources_error_arrive_in_order() -> None:
    def source() -> Iterator[int]:
        yield from range(5)
        raise ValueError("after five")

    got = []
    with ReadAhead(source(), depth=2) as it, pytest.raises(ValueError, match="after five"):
        for x in it:
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_a_busy_consumer_leaves_the_work_to_the_worker() -> None:
    """The consumer is slow: it takes an item only once the worker has done the next one's work and
    queued it, so it never waits on an empty queue, and the worker does every piece of every item."""
    items = [Item(i) for i in range(4)]
    seen = []

    def worked(n: int) -> None:  # busy (not waiting on the queue) until item n is done and queued
        deadline = time.monotonic() + 10
        while (len(items[n].done) < items[n].parts or ra._queue.empty()) and time.monotonic() < deadline:
            time.sleep(0.001)

    ra = ReadAhead(iter(items), depth=1, name="ahead", spare=Item.spare)
    with ra:
        worked(0)
        for item in ra:
            seen.append((item.n, list(item.done)))
            if item.n + 1 < len(items):
                worked(item.n + 1)
    assert [n for n, _ in seen] == [0, 1, 2, 3]
    assert all(done == ["ahead"] * 4 for _, done in seen), seen


def test_a_waiting_consumer_gets_the_item_at_once_and_does_the_work_itself() -> None:
    """The source is slow: each item comes only once the consumer is done with the previous one and
    waits on the empty queue, so the worker hands every item over untouched and the consumer does the work."""
    items = [Item(i) for i in range(3)]
    made, finished = threading.Event(), threading.Semaphore(0)

    def slow() -> Iterator[Item]:
        made.wait(5)
        for i, item in enumerate(items):
            if i:
                finished.acquire(timeout=5)  # the consumer is done with the previous item
            deadline = time.monotonic() + 5
            while not ra._waiting and time.monotonic() < deadline:  # and blocked on the queue
                time.sleep(0.001)
            yield item

    ra = ReadAhead(slow(), depth=1, spare=Item.spare)
    made.set()
    with ra:
        for item in ra:
            assert item.done == []
            while item.spare():
                pass
            finished.release()
    assert all(item.done == [threading.current_thread().name] * 4 for item in items)


def test_leaving_early_stops_the_worker_even_inside_spare_work() -> None:
    def endless() -> Iterator[Item]:
        n = 0
        while True:
            yield Item(n, parts=10**9)
            n += 1

    ra = ReadAhead(endless(), depth=1, spare=Item.spare)
    with ra:
        for _item in ra:
            break
    assert not ra._thread.is_alive()
