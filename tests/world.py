"""The one ledger world the tests share: a chain, a registry, vendors, hardware classes with real
X25519 keys, and what has been published on it.

``LedgerWorld.create(chain)`` deploys the registry from ``contracts/`` on the test's chain (a
``tests.conftest.Chain``: the ``chain`` fixture, embedded or anvil, or ``Chain.connect(rpc)`` /
``Chain.over(w3)`` for a chain a suite starts itself), or takes an already deployed ``registry``;
it registers the vendors (``acme`` is ``chain.vendor``, ``globex`` is ``chain.vendor2``) and the
hardware classes (``cam-r1`` rev 1, ``cam-r2`` rev 2 and the add-on board ``therm-b1`` rev 1 unless
told otherwise), each with a real X25519 key derived from its name, so that bundles built for them
decrypt.

Which suite uses which layer:

- as it is: the tracker, firmware server, rollout and dashboard (``tests/browser``) suites;
- ``tests/security/world.py`` ``DeviceWorld`` = a LedgerWorld (classes cls-a, cls-b) + tracker
  keys, trust anchors, evidence, device folders, updaters: the device update, boards-and-needs,
  crash-state, standing re-proof and attack suites (``tests/security/conftest.py``) and
  ``tests/fuzz/make_corpus.py``;
- ``test_author.py`` ``World`` = a LedgerWorld (cam-x1, cam-x2) + a full node the author reads;
- ``test_fullnode.py`` ``World`` = a LedgerWorld (hw-a, hw-b) on a fresh chain per test + synthetic
  records published with a fixed gas limit and heads kept with their versions (reorgs);
- ``test_deployments.py`` ``World`` = a LedgerWorld on anvil + a home, policies, real processes;
- ``tests/bench/world.py`` ``Bench`` = a LedgerWorld (cls-a) + a tracker and firmware server in threads.
- ``tests/integration/test_device_network.py`` ``Net`` = a LedgerWorld (cls-a, cls-b) + trackers and
  firmware servers (threads on the embedded chain, processes on anvil) and provisioned devices: the
  device network, production, commands, boards-and-needs, concerned-devices, anchor-rotation and
  re-proof suites.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account.signers.local import LocalAccount

from entities.bundle import BundleHeader, build_bundle
from ledger_node.record import ZERO_HASH, Dependency, ReleaseRecord, Version, parse_dependency
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
               vendors: Mapping[str, LocalAccount] | None = None, registry: Registry | None = None) -> LedgerWorld:
        """``registry``: an already deployed one (its administrator's account) instead of a fresh
        deployment; vendors it already has are not registered again."""
        reg = registry if registry is not None else Registry(chain.w3, chain.deploy(), chain.admin)
        named = dict(vendors) if vendors is not None else {"acme": chain.vendor, "globex": chain.vendor2}
        for name, account in named.items():
            if registry is None or not reg.is_vendor(account.address, name):
                reg.add_vendor(account.address, name)
        world = cls(chain, reg, {}, named)
        for hw, revision in hardware.items():
            world.add_hardware(hw, revision)
        return world

    def add_hardware(self, hw: str, revision: int) -> bytes:
        """Register hardware class ``hw`` with its name-derived X25519 key; its public key."""
        self.class_priv[hw] = class_private_key(hw)
        public = self.class_keys[hw]
        self.registry.add_hardware(hw, revision, public)
        return public

    @property
    def vendor(self) -> LocalAccount:
        """The account of vendor ``acme``."""
        return self.vendors["acme"]

    @property
    def class_keys(self) -> dict[str, bytes]:
        """Each hardware class's X25519 public key, as registered."""
        return {hw: X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()
                for hw, k in self.class_priv.items()}

    @property
    def private_keys(self) -> dict[str, X25519PrivateKey]:
        """Each hardware class's X25519 private key."""
        return {hw: X25519PrivateKey.from_private_bytes(k) for hw, k in self.class_priv.items()}

    def as_vendor(self, who: LocalAccount | str = "acme") -> Registry:
        return self.registry.with_account(self.vendors[who] if isinstance(who, str) else who)

    def publish(self, product: str, version: str, *, hardware: tuple[str, ...] = ("cam-r1",),
                deps: tuple[str, ...] = (), vendor: str = "acme") -> ReleaseRecord:
        """Publish a synthetic record (``tests.helpers.make_record``) as the line's new head."""
        record = make_record(version, product=product, vendor=vendor, prev=self.heads.get((vendor, product), ZERO_HASH),
                             hardware=hardware, deps=tuple(parse_dependency(d) for d in deps))
        return self.publish_record(record, self.vendors[vendor])

    def publish_bundle(self, header: BundleHeader, account: LocalAccount | None = None) -> bytes:
        """Publish a built bundle's record with ``account`` (default: its vendor's); its header hash."""
        return self.publish_record(header.record, account).header_hash

    def publish_record(self, record: ReleaseRecord, account: LocalAccount | None = None) -> ReleaseRecord:
        """Publish ``record`` with ``account`` (default: its vendor's) as its line's new head; the
        record as the ledger has it (publish time filled in)."""
        res = self.registry.with_account(account or self.vendors[record.data.vendor_name]).publish(record)
        d = res.record.data
        self.heads[(d.vendor_name, d.product)] = res.header_hash
        self.records[(d.product, str(d.version))] = res.record
        return res.record

    def revoke(self, product: str, version: str, reason: str, *, vendor: str = "acme") -> None:
        self.registry.revoke(vendor, product, self.records[(product, version)].header_hash, reason)

    def mark_vulnerable(self, product: str, version: str, note: str, *, vendor: str = "acme") -> None:
        self.registry.mark_vulnerable(vendor, product, self.records[(product, version)].header_hash, note)

    def bundle(self, tmp: Path, version: str, *, account: LocalAccount | None = None, vendor: str = "acme",
               product: str = "cam-fw", hardware: Sequence[str] = ("cam-r1",), size: int = 200_000,
               keys: Mapping[str, bytes] | None = None, deps: Sequence[Dependency] = (), data: bytes | None = None,
               prev: bytes | None = None, link: str | None = None) -> tuple[Path, BundleHeader, bytes]:
        """Build a real bundle (not published) chained onto the line's head (or ``prev``): its path,
        its header, the image's plaintext (``data``, else ``size`` bytes derived from the name)."""
        account = account or self.vendors[vendor]
        name = f"{vendor}-{product}-{version}"
        image = tmp / f"{name}.img"
        plain = data if data is not None else hashlib.shake_256(f"{vendor}/{product}/{version}".encode()).digest(size)
        image.write_bytes(plain)
        out = tmp / f"{name}.fwb"
        keys = keys or self.class_keys
        header = build_bundle(image, out, vendor_name=vendor, product=product, version=Version.parse(version),
                              link=link or f"http://127.0.0.1/{product}-{version}", hardware=tuple(hardware),
                              class_keys={hw: keys[hw] for hw in hardware if hw in keys}, dependencies=tuple(deps),
                              prev_hash=self.heads.get((vendor, product), ZERO_HASH) if prev is None else prev,
                              account=account, chain_id=self.chain.w3.eth.chain_id, registry=self.registry.address)
        return out, header, plain

    def block(self) -> int:
        return int(self.chain.w3.eth.block_number)


def embedded_world() -> LedgerWorld:
    """A fresh embedded chain and registry: vendor acme, hardware class cam-r1, main-fw 1.0.0 published."""
    from ledger_node.providers import connect, dev_accounts

    w3 = connect("embedded")
    chain = Chain("embedded", w3, dev_accounts(w3, 4), "embedded")
    world = LedgerWorld.create(chain, hardware={"cam-r1": 1}, vendors={"acme": chain.vendor})
    world.publish("main-fw", "1.0.0")
    return world
