"""Small builders shared by tests (records with sensible defaults)."""

from __future__ import annotations

import hashlib

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
