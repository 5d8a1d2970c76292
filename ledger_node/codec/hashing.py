"""keccak-256 and Ethereum addresses (EIP-55), as ``eth_utils`` gives them, without ``eth_utils``.

``is_address`` and ``to_checksum_address`` accept what ``eth_utils`` 6 accepts: 40 hex digits with
or without ``0x`` in any case (no checksum check), or 20 raw bytes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, Final


def _bind_keccak() -> Callable[[bytes], bytes] | None:
    """keccak-256 straight from pycryptodome's C library (``Crypto/Hash/_keccak``), through ctypes;
    None where that library is not found.

    Importing ``Crypto.Hash.keccak`` costs a device ~25 ms of its start-up: pycryptodome's loader
    imports ``ctypes.util``, ``platform`` and its own helpers, and with cffi installed parses the
    C declarations with pycparser. The library's four calls used here (``keccak_init``,
    ``keccak_absorb``, ``keccak_digest``, ``keccak_destroy``) are declared once below, exactly as
    ``Crypto/Hash/keccak.py`` declares them; the original keccak padding (0x01), 24 rounds and a
    64-byte capacity make keccak-256 (the test suite compares it with ``Crypto.Hash.keccak``).
    The calls keep the GIL (``PyDLL``): each takes about a microsecond on the few hundred bytes
    hashed here, and releasing the GIL four times per hash made a busy tracker's request
    threads queue for it (measured: ~25% fewer signed heartbeats a minute under load). A call
    costs ~4 us, against ~13 us through ``Crypto.Hash.keccak``.
    """
    import ctypes
    import importlib.machinery
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec("Crypto")
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "Hash", "_keccak" + suffix)
            if os.path.isfile(path):
                break
        else:
            continue
        break
    else:
        return None
    try:
        lib = ctypes.PyDLL(path)  # calls keep the GIL (see below)
        init, absorb, digest, destroy = lib.keccak_init, lib.keccak_absorb, lib.keccak_digest, lib.keccak_destroy
    except (OSError, AttributeError):
        return None
    void_p, size_t, u8 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint8
    init.argtypes, init.restype = [ctypes.POINTER(void_p), size_t, u8], ctypes.c_int
    absorb.argtypes, absorb.restype = [void_p, ctypes.c_char_p, size_t], ctypes.c_int
    digest.argtypes, digest.restype = [void_p, ctypes.c_char_p, size_t, u8], ctypes.c_int
    destroy.argtypes, destroy.restype = [void_p], ctypes.c_int

    def keccak256(data: bytes) -> bytes:
        state = void_p()
        if init(ctypes.byref(state), 64, 24):
            raise MemoryError("keccak: cannot allocate a state")
        try:
            out = ctypes.create_string_buffer(32)
            if absorb(state, data, len(data)) or digest(state, out, 32, 0x01):
                raise ValueError("keccak: the library refused the input")
            return out.raw
        finally:
            destroy(state)

    return keccak256


def _module_keccak() -> Callable[[bytes], bytes]:
    """keccak-256 through ``Crypto.Hash.keccak`` (the fallback of :func:`_bind_keccak`)."""
    from Crypto.Hash import keccak as module

    return lambda data: module.new(data=data, digest_bits=256).digest()


_keccak256: Final = _bind_keccak() or _module_keccak()

__all__ = ["is_address", "is_checksum_address", "keccak", "to_checksum_address"]

_HEX_ADDRESS: Final = re.compile(r"(0x)?[0-9a-f]{40}", re.IGNORECASE | re.ASCII)


def keccak(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte keccak-256 digest of ``data`` (Ethereum's hash, not SHA3-256)."""
    return _keccak256(data if type(data) is bytes else bytes(data))


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
