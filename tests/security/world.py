"""A device's world for update tests: a layer over the shared ledger world (``tests/world.py``)
adding trackers' keys, trust anchors, evidence and provisioned devices.

Like python-tuf's ``repository_simulator``: everything remote a device meets (the ledger, the
author's bundles, the trackers' attestations, an untrusted node's proofs) built with the real
code on a real chain, so that each attack is one small scenario. The trackers are plain keys that
sign attestations here (:func:`gather_evidence`), standing in for issue 5's tracker daemons.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from entities.bundle import BundleHeader
from entities.firmware_consumer import BootContext, Device, FactoryImage
from entities.firmware_consumer.provision import (
    ComponentBinding,
    anchors_from_deployment,
    gather_evidence,
    provision_device,
)
from entities.firmware_consumer.state import decode_envelope
from entities.firmware_consumer.updater import UpdatePolicy, Updater
from entities.firmware_consumer.verify import Evidence, TrustAnchors
from ledger_node.compiler import registry_contract
from ledger_node.record import Dependency, ReleaseRecord, line_id
from ledger_node.registry import Registry
from tests.conftest import Chain
from tests.world import LedgerWorld

#: the device class the tests' devices belong to, and another one
HW, OTHER_HW = "cls-a", "cls-b"
#: the hardware classes of a device world and their revisions
DEVICE_HARDWARE = {HW: 1, OTHER_HW: 2}


@dataclass
class Release:
    """A built bundle, and its record as published (None if not published)."""

    path: Path
    header: BundleHeader
    image: bytes
    published: ReleaseRecord | None = None

    @property
    def record(self) -> ReleaseRecord:
        assert self.published is not None, "not published"
        return self.published


@dataclass
class DeviceWorld:
    """A device's world: the ledger part is a :class:`tests.world.LedgerWorld` (registry, vendors,
    hardware classes cls-a and cls-b, heads, publishing, revoking); this layer adds the device side:
    tracker keys, trust anchors, evidence, device folders and updaters (see the module docstring)."""

    ledger: LedgerWorld
    trackers: list[LocalAccount]
    anchors: TrustAnchors
    tmp: Path

    @classmethod
    def create(cls, w3: Web3, admin: Registry, vendors: dict[str, LocalAccount], tmp: Path, *,
               quorum: int = 2, max_header_age: float = 3600.0) -> DeviceWorld:
        """On ``admin``'s registry: the vendors (unless registered), classes cls-a and cls-b, then
        :meth:`over` it."""
        assert admin.account is not None, "the registry needs its administrator's account"
        ledger = LedgerWorld.create(Chain.over(w3, [admin.account, *vendors.values()]), registry=admin,
                                    vendors=vendors, hardware=DEVICE_HARDWARE)
        return cls.over(ledger, tmp, quorum=quorum, max_header_age=max_header_age)

    @classmethod
    def over(cls, ledger: LedgerWorld, tmp: Path, *, quorum: int = 2, max_header_age: float = 3600.0) -> DeviceWorld:
        """The device side over ``ledger``: three tracker keys (k = quorum) and the anchors naming them."""
        trackers = [Account.create() for _ in range(3)]
        anchors = anchors_from_deployment(ledger.registry.deployment, registry_contract(),
                                          trackers=[t.address for t in trackers], quorum=quorum,
                                          max_header_age=max_header_age)
        tmp.mkdir(parents=True, exist_ok=True)
        return cls(ledger, trackers, anchors, tmp)

    @classmethod
    def embedded(cls, tmp: Path, *, vendors: tuple[str, ...] = ("acme",), quorum: int = 2) -> DeviceWorld:
        """On a fresh embedded chain: a fresh registry, ``vendors`` (chain accounts 1, 2, ...), cls-a and cls-b."""
        chain = Chain.connect()
        named = {name: chain.accounts[i] for i, name in enumerate(vendors, start=1)}
        return cls.over(LedgerWorld.create(chain, hardware=DEVICE_HARDWARE, vendors=named), tmp, quorum=quorum)

    # -- the ledger part ---------------------------------------------------------------------------

    @property
    def w3(self) -> Web3:
        return self.ledger.chain.w3

    @property
    def admin(self) -> Registry:
        return self.ledger.registry

    @property
    def vendors(self) -> dict[str, LocalAccount]:
        return self.ledger.vendors

    @property
    def class_keys(self) -> dict[str, X25519PrivateKey]:
        """Each hardware class's X25519 private key."""
        return self.ledger.private_keys

    @property
    def heads(self) -> dict[bytes, bytes]:
        """Each line's head, by line id."""
        return {line_id(v, p): h for (v, p), h in self.ledger.heads.items()}

    # -- the author --------------------------------------------------------------------------------

    def build(self, product: str, version: str, *, vendor: str = "acme", hardware: Sequence[str] = (HW, OTHER_HW),
              deps: Sequence[Dependency] = (), size: int = 200_000, data: bytes | None = None,
              prev: bytes | None = None, signer: LocalAccount | None = None) -> Release:
        """An author's bundle of a random image (or ``data``), chained onto the line's head as this world knows it."""
        path, header, image = self.ledger.bundle(
            self.tmp, version, account=signer, vendor=vendor, product=product, hardware=hardware, deps=deps,
            data=os.urandom(size) if data is None else data, prev=prev,
            link=f"http://fw.local/{vendor}-{product}-{version}.fwb")
        return Release(path, header, image)

    def publish(self, rel: Release) -> Release:
        """Publish the release's record with its vendor's account."""
        rel.published = self.ledger.publish_record(rel.header.record)
        return rel

    def release(self, product: str, version: str, **kw: Any) -> Release:
        return self.publish(self.build(product, version, **kw))

    # -- the trackers and an untrusted node ---------------------------------------------------------

    def evidence(self, record: ReleaseRecord, *, hw: str = HW, trackers: Sequence[LocalAccount] | None = None) -> Evidence:
        return gather_evidence(self.w3, self.anchors, record, hw,
                               self.trackers[: self.anchors.quorum] if trackers is None else trackers)

    # -- devices ----------------------------------------------------------------------------------

    def device(self, name: str, components: dict[str, tuple[ComponentBinding, str | None]], *,
               hardware: str = HW, max_boot_attempts: int = 3, health_command: Sequence[str] | None = None,
               update_policy: dict[str, Any] | None = None) -> Path:
        """A provisioned device: per component its line and a factory version (None: empty)."""
        root = self.tmp / "devices" / name
        factory = {c: factory_image(c, v) for c, (_, v) in components.items() if v is not None}
        provision_device(root, device_id=name, hardware=hardware, components={c: b for c, (b, _) in components.items()},
                         anchors=self.anchors, class_private_key=self.class_keys[hardware].private_bytes_raw(),
                         factory=factory, max_boot_attempts=max_boot_attempts, health_command=health_command,
                         update_policy=update_policy)
        return root

    @contextlib.contextmanager
    def updater(self, root: Path, *, health: Callable[[BootContext], bool] | None = lambda ctx: True,
                clock: Callable[[], float] | None = None, policy: UpdatePolicy | None = None,
                hardware: str = HW) -> Iterator[Updater]:
        from entities.firmware_consumer.provision import load_provisioning

        prov = load_provisioning(root)
        with Device(root, health_check=health) as dev:
            kw: dict[str, Any] = {"policy": policy}
            if clock is not None:
                kw["clock"] = clock
            yield Updater.from_provisioning(dev, prov, **kw)


def factory_image(component: str, version: str) -> FactoryImage:
    data = f"factory image of {component} {version}\n".encode() * 64
    return FactoryImage(version, hashlib.sha256(b"factory:" + data).digest(), data)


def boot_state(root: Path) -> dict[str, Any]:
    """Everything of a device folder but the components' last results, as bytes (or parsed state).

    Slot files, device.json, the safe image, the journal folder and the provisioning files byte
    for byte; each component's state with its ``last_result`` removed (the one field a refused
    update writes: R10.c.i), as canonical JSON bytes, taken from both copies.
    """
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir() or p.name == "device.lock":
            continue
        if p.name.startswith("state.") and p.suffix == ".json":
            _, body = decode_envelope(p.read_bytes(), "component-state")
            body.pop("last_result", None)
            out[rel] = json.dumps(body, sort_keys=True).encode()
        else:
            out[rel] = p.read_bytes()
    return out


def last_result(root: Path, component: str) -> dict[str, Any] | None:
    from entities.firmware_consumer import read_status

    for c in read_status(root)["components"]:
        if c["name"] == component:
            return c["last_result"]  # type: ignore[no-any-return]
    raise KeyError(component)
