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
    """The consumer is slow (it holds each item a while): the worker does every piece before handing items over."""
    items = [Item(i) for i in range(4)]
    seen = []
    with ReadAhead(iter(items), depth=1, name="ahead", spare=Item.spare) as it:
        for item in it:
            seen.append((item.n, list(item.done)))
            time.sleep(0.05)  # busy: the worker meets no waiting consumer
    assert [n for n, _ in seen] == [0, 1, 2, 3]
    # the first item may go straight to a consumer already waiting; every later one is done by the worker
    for _, done in seen[1:]:
        assert done == ["ahead"] * 4


def test_a_waiting_consumer_gets_the_item_at_once_and_does_the_work_itself() -> None:
    """The source is slow: the consumer is always waiting, so the worker hands each item over untouched."""
    items = [Item(i) for i in range(3)]
    made = threading.Event()

    def slow() -> Iterator[Item]:
        made.wait(5)
        for item in items:
            deadline = time.monotonic() + 5
            while not ra._waiting and time.monotonic() < deadline:  # the consumer is blocked on the queue
                time.sleep(0.001)
            yield item

    ra = ReadAhead(slow(), depth=1, spare=Item.spare)
    made.set()
    with ra:
        for item in ra:
            assert item.done == []
            while item.spare():
                pass
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
