"""``ledger_node.lru.LRU``: the bounded cache behind the index's decoded records and the tracker's
attestations and evidence."""

from __future__ import annotations

import pytest

from ledger_node.lru import LRU


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert "b" not in cache and (cache.get("a"), cache.get("c"), len(cache)) == (1, 3, 2)
    cache.put("a", 10)  # a replaced entry is the most recently used too
    cache.put("d", 4)
    assert list(cache) == ["a", "d"] and cache.get("c") is None


def test_discard_clear_and_iterating_while_dropping() -> None:
    cache: LRU[int, str] = LRU(8)
    for n in range(6):
        cache.put(n, str(n))
    for n in [k for k in cache if k > 2]:  # the rollback's pattern: drop the blocks above one
        cache.discard(n)
    cache.discard(42)  # absent: nothing happens
    assert list(cache) == [0, 1, 2]
    cache.clear()
    assert len(cache) == 0 and cache.get(0) is None
    with pytest.raises(ValueError):
        LRU(0)
