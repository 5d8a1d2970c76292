"""Factory images at provisioning, and what a component's state tells its tracker.

``fwledger device init`` may place a factory image in slot ``a`` of a component, confirmed at
once (no trial: it is what the device left the factory with):

- **verified** (:func:`verified_factory_image`, ``--factory COMPONENT=BUNDLE --evidence FILE``):
  the bundle and its evidence are checked exactly as an update is (k-of-n attested header, ledger
  proofs, the vendor's signature, the fit to the device, the content key unwrapped with the class
  key, size, Merkle root and hash of the payload as it is decrypted), before anything is written;
  a refusal carries the code ``device update`` would give. Its version seeds the anti-rollback
  counter.
- **unverified** (:func:`unverified_factory_image`, ``--factory-image COMPONENT=FILE
  --factory-version X.Y.Z``): bytes placed without evidence. The counter stays ``0.0.0``, the
  state marks it (:func:`.state.unverified_slot`), the device reports it ``unverified`` and
  never counts it as installed (:meth:`.updater.Updater.facts`): the tracker offers it the newest
  compatible release, which installs over it like an update into an empty component.

:func:`wire_state` maps a component's state to the heartbeat's (``entities.protocol.heartbeat``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from entities.bundle import BundleError, decrypt_payload, read_header
from entities.protocol.heartbeat import STATE_CONFIRMED, STATE_EMPTY, STATE_TRIAL, STATE_UNVERIFIED
from ledger_node.errors import ConfigError
from ledger_node.record import Version

from .device import FactoryImage
from .errors import UpdateRefused
from .provision import ComponentBinding
from .state import ComponentState, pack_version, unverified_slot
from .verify import ComponentFacts, DeviceFacts, Evidence, TrustAnchors, verify_update

__all__ = ["UNVERIFIED_HEADER_HASH", "unverified_factory_image", "verified_factory_image", "wire_state"]

#: the header hash recorded for an unverified image (it names no ledger record)
UNVERIFIED_HEADER_HASH = b"\x00" * 32
#: largest factory image read into memory at provisioning
MAX_FACTORY_IMAGE = 256 << 20


def verified_factory_image(anchors: TrustAnchors, hardware: str, class_private_key: bytes,
                           bindings: Mapping[str, ComponentBinding], component: str, bundle: Path,
                           evidence: Evidence | Mapping[str, Any], *, now: float | None = None,
                           board_keys: Mapping[str, bytes] | None = None) -> FactoryImage:
    """Verify ``bundle`` for ``component`` of a device about to be provisioned and return its plaintext.

    The device has nothing installed yet: every component counts as empty with counter 0.0.0. A
    component on an add-on board is verified for the board's class and decrypted with its key
    (``board_keys``).

    Raises:
        UpdateRefused: a check failed, with the code ``device update`` gives (``bad_bundle``,
            ``stale_header``, ``bad_proof``, ``bad_signature``, ``wrong_product``, ``hash_mismatch``...).
        ConfigError: the bundle cannot be read, or its image is too large to place at provisioning.
    """
    if component not in bindings:
        raise ConfigError(f"--factory names {component!r}, not a --component of this device")
    facts = DeviceFacts(hardware, tuple(ComponentFacts(n, b.product, b.vendor, None, Version(0, 0, 0), b.board)
                                        for n, b in bindings.items()))
    ev = evidence if isinstance(evidence, Evidence) else Evidence.from_json(evidence)
    try:
        fh = open(bundle, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot open bundle {bundle}: {exc.strerror or exc}") from exc
    with fh:
        try:
            header, _ = read_header(fh)
        except BundleError as exc:
            raise UpdateRefused(exc.code, str(exc)) from exc
        verified = verify_update(anchors, facts, component, header, ev, now=time.time() if now is None else now)
        size = header.encryption.plaintext_size
        if size > MAX_FACTORY_IMAGE:
            raise ConfigError(f"factory image of {size} bytes: at most {MAX_FACTORY_IMAGE} at provisioning "
                              "(install it with device update after init)")
        out = io.BytesIO()
        try:
            decrypt_payload(header, fh, cast(Any, out), hw_id=verified.hardware,
                            class_private_key=(board_keys or {}).get(verified.hardware, class_private_key))
        except BundleError as exc:
            raise UpdateRefused(exc.code, str(exc)) from exc
    return FactoryImage(str(verified.version), verified.header_hash, out.getvalue())


def unverified_factory_image(path: Path, version: str) -> FactoryImage:
    """An image placed without evidence (see the module docstring).

    Raises:
        ConfigError: unreadable, empty or too large.
        BadInstallRequest: a malformed version.
    """
    pack_version(version)
    try:
        size = path.stat().st_size
        if not 0 < size <= MAX_FACTORY_IMAGE:
            raise ConfigError(f"factory image {path}: {size} bytes; 1..{MAX_FACTORY_IMAGE} accepted")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read factory image {path}: {exc.strerror or exc}") from exc
    return FactoryImage(version, UNVERIFIED_HEADER_HASH, data, verified=False)


def wire_state(st: ComponentState) -> tuple[str, str | None, str | None]:
    """(state, version, trial version) of a component as its heartbeat reports them
    (``entities.protocol.heartbeat``): on trial while an image awaits or runs its trial; else confirmed,
    unverified (the claimed version) or empty."""
    t = st.trial
    c = st.confirmed
    version = st.slot(c).version if c is not None else None
    if t is not None:
        return STATE_TRIAL, None if unverified_slot(st) is not None else version, st.slot(t).version
    if c is None:
        return STATE_EMPTY, None, None
    if unverified_slot(st) is not None:
        return STATE_UNVERIFIED, version, None
    return STATE_CONFIRMED, version, None
