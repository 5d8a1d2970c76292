"""keccak-256 and Ethereum addresses (EIP-55), as ``eth_utils`` gives them, without ``eth_utils``.

``is_address`` and ``to_checksum_address`` accept what ``eth_utils`` 6 accepts: 40 hex digits with
or without ``0x`` in any case (no checksum check), or 20 raw bytes.
"""

from __future__ import annotations

import functools
import re
import sys
from types import ModuleType
from typing import Any, Final


def _load_keccak() -> ModuleType:
    """pycryptodome's keccak module, bound to its C code through ctypes.

    pycryptodome binds its C code with cffi whenever cffi is importable, and cffi's in-line mode
    parses the C declarations with pycparser as each library loads: ~20 ms of a device's start-up,
    for a hash it calls a few hundred times per update. ctypes, pycryptodome's other binding
    (its choice where cffi is absent), parses nothing. So cffi is hidden while pycryptodome loads;
    if pycryptodome is already loaded (a host process), it is used as it is.
    """
    if "Crypto.Util._raw_api" not in sys.modules:
        missing = object()
        saved = sys.modules.get("cffi", missing)
        sys.modules["cffi"] = None  # type: ignore[assignment]  # "import cffi" now raises ImportError
        try:
            from Crypto.Hash import keccak
        finally:
            if saved is missing:
                del sys.modules["cffi"]
            else:
                sys.modules["cffi"] = saved  # type: ignore[assignment]
        return keccak
    from Crypto.Hash import keccak
    return keccak


_keccak = _load_keccak()

__all__ = ["is_address", "is_checksum_address", "keccak", "to_checksum_address"]

_HEX_ADDRESS: Final = re.compile(r"(0x)?[0-9a-f]{40}", re.IGNORECASE | re.ASCII)


def keccak(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte keccak-256 digest of ``data`` (Ethereum's hash, not SHA3-256)."""
    return _keccak.new(data=bytes(data), digest_bits=256).digest()


def is_address(value: Any) -> bool:
    """True for 40 hex digits (``0x`` optional, any case) or 20 raw bytes."""
    if isinstance(value, str):
        return _HEX_ADDRESS.fullmatch(value) is not None
    return isinstance(value, bytes | bytearray) and len(value) == 20


def to_checksum_address(value: str | bytes | bytearray) -> str:
    """The EIP-55 checksum form of an address.

    Raises:
        ValueError: not an address (see :func:`is_address`).
        TypeError: neither text nor bytes.
    """
    if isinstance(value, bytes | bytearray):
        if len(value) != 20:
            raise ValueError(f"an address is 20 bytes, got {len(value)}")
        hex_address = bytes(value).hex()
    elif isinstance(value, str):
        if not is_address(value):
            raise ValueError(f"not an address: {value!r}")
        hex_address = value[2:].lower() if value[:2] in ("0x", "0X") else value.lower()
    else:
        raise TypeError(f"an address must be text or bytes, got {type(value).__name__}")
    return _checksummed(hex_address)


@functools.lru_cache(maxsize=4096)
def _checksummed(hex_address: str) -> str:
    """EIP-55 of 40 lower-case hex digits; kept (a service checks the same few addresses on
    every request: its own, its peers', its devices')."""
    digest = keccak(hex_address.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) > 7 else c for i, c in enumerate(hex_address))


def is_checksum_address(value: Any) -> bool:
    """True for a ``0x``-prefixed text address whose letters follow its EIP-55 checksum."""
    return isinstance(value, str) and is_address(value) and value == to_checksum_address(value)
