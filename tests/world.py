"""The one ledger world the tests share: a chain, a fresh registry, vendors, hardware classes with
real X25519 keys, and what has been published on it.

``LedgerWorld.create(chain)`` deploys the registry from ``contracts/`` on the test's chain (the
``chain`` fixture of ``tests/conftest.py``: embedded or anvil), registers the vendors (``acme`` is
``chain.vendor``, ``globex`` is ``chain.vendor2``) and the hardware classes (``cam-r1`` rev 1,
``cam-r2`` rev 2 and the add-on board ``therm-b1`` rev 1 unless told otherwise), each with a real
X25519 key derived from its name, so that bundles built for them decrypt. Suites that need more
(a device folder, running services) build on it: ``tests/security/world.py`` (devices),
the tracker, firmware server, rollout and dashboard suites use it as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account.signers.local import LocalAccount

from entities.bundle import BundleHeader, build_bundle
from ledger_node.record import ZERO_HASH, ReleaseRecord, Version, parse_dependency
from ledger_node.registry import Registry
from tests.conftest import Chain
from tests.helpers import make_record

__all__ = ["DEFAULT_HARDWARE", "LedgerWorld"]

#: hardware classes and their revisions in a default world
DEFAULT_HARDWARE: Mapping[str, int] = {"cam-r1": 1, "cam-r2": 2, "therm-b1": 1}


def class_private_key(hardware: str) -> bytes:
    """The X25519 private key of a test hardware class (derived from its name: stable across runs)."""
    return hashlib.sha256(f"class key {hardware}".encode()).digest()


@dataclass
class LedgerWorld:
    """A registry on ``chain`` with its vendors and hardware classes, and the heads of the product
    lines published so far (``heads[(vendor, product)]``; ``records[(product, version)]``)."""

    chain: Chain
    registry: Registry
    class_priv: dict[str, bytes]
    vendors: dict[str, LocalAccount]
    heads: dict[tuple[str, str], bytes] = field(default_factory=dict)
    records: dict[tuple[str, str], ReleaseRecord] = field(default_factory=dict)

    @classmethod
    def create(cls, chain: Chain, *, hardware: Mapping[str, int] = DEFAULT_HARDWARE,
               vendors: Mapping[str, LocalAccount] | None = None) -> LedgerWorld:
        reg = Registry(chain.w3, chain.deploy(), chain.admin)
        named = dict(vendors) if vendors is not None else {"acme": chain.vendor, "globex": chain.vendor2}
        for name, account in named.items():
            reg.add_vendor(account.address, name)
        world = cls(chain, reg, {hw: class_private_key(hw) for hw in hardware}, named)
        for hw, revision in hardware.items():
            reg.add_hardware(hw, revision, world.class_keys[hw])
        return world

    @property
    def vendor(self) -> LocalAccount:
        """The account of vendor ``acme``."""
        return self.vendors["acme"]

    @property
    def class_keys(self) -> dict[str, bytes]:
        """Each hardware class's X25519 public key, as registered."""
        return {hw: X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()
                for hw, k in self.class_priv.items()}

    def as_vendor(self, who: LocalAccount | str = "acme") -> Registry:
        return self.registry.with_account(self.vendors[who] if isinstance(who, str) else who)

    def publish(self, product: str, version: str, *, hardware: tuple[str, ...] = ("cam-r1",),
                deps: tuple[str, ...] = (), vendor: str = "acme") -> ReleaseRecord:
        """Publish a synthetic record (``tests.helpers.make_record``) as the line's new head."""
        record = make_record(version, product=product, vendor=vendor, prev=self.heads.get((vendor, product), ZERO_HASH),
                             hardware=hardware, deps=tuple(parse_dependency(d) for d in deps))
        return self._published(self.vendors[vendor], record)

    def publish_bundle(self, header: BundleHeader, account: LocalAccount | None = None) -> bytes:
        """Publish a built bundle's record with ``account`` (default: its vendor's); its header hash."""
        record = self._published(account or self.vendors[header.record.data.vendor_name], header.record)
        return record.header_hash

    def _published(self, account: LocalAccount, record: ReleaseRecord) -> ReleaseRecord:
        res = self.registry.with_account(account).publish(record)
        d = res.record.data
        self.heads[(d.vendor_name, d.product)] = res.header_hash
        self.records[(d.product, str(d.version))] = res.record
        return res.record

    def revoke(self, product: str, version: str, reason: str, *, vendor: str = "acme") -> None:
        self.registry.revoke(vendor, product, self.records[(product, version)].header_hash, reason)

    def mark_vulnerable(self, product: str, version: str, note: str, *, vendor: str = "acme") -> None:
        self.registry.mark_vulnerable(vendor, product, self.records[(product, version)].header_hash, note)

    def bundle(self, tmp: Path, version: str, *, account: LocalAccount | None = None, vendor: str = "acme",
               product: str = "cam-fw", hardware: tuple[str, ...] = ("cam-r1",), size: int = 200_000,
               keys: dict[str, bytes] | None = None) -> tuple[Path, BundleHeader, bytes]:
        """Build a real bundle (not published): its path, its header, the image's plaintext."""
        account = account or self.vendors[vendor]
        image = tmp / f"{vendor}-{product}-{version}.img"
        plain = hashlib.shake_256(f"{vendor}/{product}/{version}".encode()).digest(size)
        image.write_bytes(plain)
        out = tmp / f"{vendor}-{product}-{version}.fwb"
        header = build_bundle(image, out, vendor_name=vendor, product=product, version=Version.parse(version),
                              link=f"http://127.0.0.1/{product}-{version}", hardware=hardware,
                              class_keys=keys or self.class_keys, prev_hash=self.heads.get((vendor, product), ZERO_HASH),
                              account=account, chain_id=self.chain.w3.eth.chain_id, registry=self.registry.address)
        return out, header, plain

    def block(self) -> int:
        return int(self.chain.w3.eth.block_number)
