"""How old an attested block header is when a device judges it, and the maximum age that implies.

A tracker's full node stays ``confirmations`` blocks behind the head, so the newest header it
attests was made about ``confirmations x block time`` ago, plus up to one block interval before
the next block, plus the tracker's poll and the device's pass. A device whose anchors'
``max_header_age`` is below that refuses every update as ``stale_header``. Pure, but
:func:`measure_block_time` (which reads the chain's last blocks).
"""

from __future__ import annotations

from typing import Any

from .errors import ChainError

__all__ = ["DEFAULT_MARGIN", "TYPICAL_MAX_AGE", "expected_header_age", "max_age_problem", "measure_block_time",
           "min_max_age", "tracker_note"]

#: seconds added for the tracker's poll, the device's pass interval and clock skew
DEFAULT_MARGIN = 60.0
#: a maximum header age an operator may well choose (a minute): a tracker whose headers are older warns
TYPICAL_MAX_AGE = 60.0


def expected_header_age(confirmations: int, block_time: float) -> float:
    """Seconds a freshly attested header is old: the confirmations, and the wait for the next block."""
    return (max(0, confirmations) + 1) * max(0.0, block_time)


def min_max_age(confirmations: int, block_time: float, margin: float = DEFAULT_MARGIN) -> float:
    """The smallest ``max_header_age`` that accepts the trackers' headers."""
    return expected_header_age(confirmations, block_time) + margin


def max_age_problem(max_age: float, confirmations: int, block_time: float | None,
                    margin: float = DEFAULT_MARGIN) -> str | None:
    """A one-line warning when ``max_age`` is below :func:`min_max_age`, or None (also when the
    block time is unknown)."""
    if block_time is None:
        return None
    need = min_max_age(confirmations, block_time, margin)
    if max_age >= need:
        return None
    return (f"--max-age {max_age:g} s is below what the chain implies: trackers attest headers "
            f"{confirmations} confirmation(s) behind the head at about {block_time:g} s per block, so about "
            f"{expected_header_age(confirmations, block_time):g} s old; give at least {need:g} s "
            f"(or lower confirmations), else devices refuse every update as stale_header")


def tracker_note(confirmations: int, block_time: float | None) -> tuple[str, bool] | None:
    """What a tracker says at start about the age of the headers it attests: (line, is a warning);
    None when there is nothing to say (no confirmations, or the block time is unknown). A warning
    when they are older than :data:`TYPICAL_MAX_AGE`."""
    if block_time is None or confirmations <= 0:
        return None
    age = expected_header_age(confirmations, block_time)
    return (f"headers this tracker attests are about {age:g} s old ({confirmations} confirmation(s) at about "
            f"{block_time:g} s per block): devices need anchors with --max-age of at least "
            f"{min_max_age(confirmations, block_time):g} s (fwledger device anchors), else they refuse every "
            f"update as stale_header", age > TYPICAL_MAX_AGE)


def measure_block_time(w3: Any, blocks: int = 10) -> float | None:
    """The mean interval of the chain's last ``blocks`` blocks (seconds), or None when the chain
    has fewer than two blocks.

    Raises:
        ChainError: the node failed to answer.
    """
    try:
        head = int(w3.eth.block_number)
        if head < 1:
            return None
        start = max(0, head - blocks)
        t_head = int(w3.eth.get_block(head)["timestamp"])
        t_start = int(w3.eth.get_block(start)["timestamp"])
    except Exception as exc:
        raise ChainError(f"cannot read the chain's last blocks: {exc}") from exc
    return max(0.0, (t_head - t_start) / (head - start))
