"""The firmware server's orchestrator: X.1368 clause 11.3 as a few short methods.

- :meth:`FirmwareService.accept_upload`: C11.3.a (submissions from active vendors only) and
  C11.3.c / R10.a.i (a bundle checked against itself and the ledger; malice bars the vendor).
- :meth:`FirmwareService.register_device`: C11.3.d (the list of consumers).
- :meth:`FirmwareService.authorize`: P4, C11.3.b, C11.3.f, C11.3.h (serve only a consumer with a
  right to the image; log who took what, and every refusal with the rule that refused it).
- :meth:`FirmwareService.reconcile`: C11.3.c, C11.3.e, C11.3.g (follow the ledger: publish the
  uploads whose records appear, withdraw revoked releases, bar revoked vendors, tell trackers of
  new versions and of the devices each concerns; :meth:`FirmwareService.concerned`: the operator's
  view of them).
- :meth:`FirmwareService.lift_bar`: C11.3.c/d (the operator lifts a bar, with a logged reason).

Decisions are :mod:`.policy`'s; storage is :mod:`.store`'s; the ledger is :class:`.LedgerView`.
The server is a light node (X.1368 Figure II.2): what a decision takes from its node is proven at
a trusted header first (:attr:`.LedgerView.prover`, judged by :mod:`.proven`): an upload's vendor
standing, classes and (already on the ledger) release before it is stored; a release before its
image is published, and its revocation before it is withdrawn; a vendor's revocation before it is
barred; the release, its vendor and the device's policy before each download. What cannot be
proven is refused (``ledger_unproven``) or, in the follower, left as it is; what the proofs
contradict is refused (``ledger_mismatch``); both are logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from entities.admission_store import AdmissionStore
from entities.bundle import release_digest
from entities.protocol.admission import AdmissionError, NotAdmitted, load_certificate_authorities
from entities.protocol.http_auth import SignedRequest, verify_request
from entities.settings import load_or_create_key
from ledger_node.errors import ChainUnreachable, FwledgerError
from ledger_node.fullnode import IndexedRelease

from .config import ServerConfig
from .gate import LedgerGate
from .ledger import LedgerView
from .notify import json_logger, post_notifications
from .policy import (
    MAX_TRIGGER_DEVICES,
    DeviceFacts,
    LocationRule,
    Refusal,
    check_bundle_header,
    check_known_bad,
    check_unbar,
    check_uploader,
    concerned_devices,
    decide_download,
    ledger_state_for_upload,
    new_release_notification,
    payload_refusal,
    revocation_outcome,
    server_trigger,
    serving_class,
)
from .store import ImageRow, Store
from .upload import UploadResult, UploadSink

__all__ = ["FirmwareService", "json_logger"]


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


class FirmwareService:
    """One firmware server: its config, storage and ledger view, and the follower thread.

    Raises:
        ConfigError, IndexCorruption: the data folder cannot be used.
    """

    def __init__(self, config: ServerConfig, ledger: LedgerView, *, logger: logging.Logger | None = None) -> None:
        config.validate()
        self.config = config
        self.ledger = ledger
        self.store = Store(config.data_dir)
        #: the server's own key: it signs its T9.b update requests to trackers
        self.identity = load_or_create_key(config.data_dir / "server.key")
        self.log = logger or json_logger()
        #: device admission (entities/admission.py): who may register and download
        self.admission_required = config.admission == "required"
        self.cas = load_certificate_authorities(config.manufacturer_cas)
        self.admissions = AdmissionStore(config.data_dir / "admissions.sqlite")
        if not self.admission_required:
            self._event("admission_open", logging.WARNING, warning="any key that signs is served as a device")
        self._event("ledger_proofs", headers=ledger.prover.describe)
        self.gate = LedgerGate(ledger, self._event)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconcile_lock = threading.Lock()
        self._uploads_lock = threading.Lock()
        self._uploads: dict[str, int] = {}  # uploads in flight per vendor address
        self._reserved = 0  # bytes reserved for them
        self.last_sync_error: str | None = None
        self.last_sync_at: float | None = None
        self._reconciled_block: int | None = -1
        if any(self.store.removed_on_open.values()):
            self._event("recovered", **self.store.removed_on_open)

    def _event(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        self.log.log(level, event, extra={"fields": fields})

    # ------------------------------------------------------------------ authentication

    def authenticate(self, headers: Mapping[str, str], method: str, path: str, body_sha256: str, *,
                     now: float | None = None) -> SignedRequest:
        """Verify a signed request (signature, time window around ``now``, nonce never seen).

        Raises:
            AuthError: unsigned, no_audience, bad_signature_format, bad_signature, wrong_audience (signed for
                another service), stale_request, replayed_request.
        """
        return verify_request(dict(headers), method, path, body_sha256, audience=(self.identity.address,), now=now,
                              max_skew=self.config.max_skew, nonces=self.store)

    # ------------------------------------------------------------------ C11.3.a, C11.3.c: submissions

    @contextmanager
    def upload_slot(self, signed: SignedRequest, length: int) -> Iterator[UploadSink]:
        """Admit one authenticated upload intent before a byte of its body is read: the signer is
        an active vendor in good standing, ``length`` fits the per-upload limit and the storage
        left once every upload in flight has its own size reserved, and neither the vendor's nor
        the server's count of uploads in flight is at its cap. Yields the sink (``length`` bytes
        at most); the reservation and the temp file go when the block ends.

        Raises:
            Refusal: ``not_a_vendor``, ``vendor_barred``, ``too_large``, ``storage_full``,
                ``too_many_uploads``.
            OSError: the temp file cannot be created.
        """
        vendor = check_uploader(signed.address, (v := self.ledger.vendor(signed.address)),
                                v is not None and self.store.is_barred(v.name))
        self.gate.check("upload", lambda: self.gate.uploader(signed.address, vendor.name), address=signed.address)
        if length > self.config.max_upload_bytes:
            raise Refusal("too_large", f"upload larger than the server's limit of {self.config.max_upload_bytes} bytes")
        with self._uploads_lock:
            mine = self._uploads.get(signed.address, 0)
            total = sum(self._uploads.values())
            if mine >= self.config.max_uploads_per_vendor or total >= self.config.max_uploads:
                raise Refusal("too_many_uploads", f"{mine} upload(s) of this vendor and {total} in all are being "
                                                  "received; try again when one ends")
            room = self.config.max_total_bytes - self.store.stored_bytes() - self._reserved
            if length > room:
                raise Refusal("storage_full", "the server's storage limit would be exceeded")
            self._uploads[signed.address] = mine + 1
            self._reserved += length
        try:
            fd, path = self.store.new_temp()
            sink = UploadSink(fd, path, max_body=length, max_payload=length)
            try:
                yield sink
            finally:
                sink.discard()
        finally:
            with self._uploads_lock:
                self._reserved -= length
                left = self._uploads[signed.address] - 1
                if left:
                    self._uploads[signed.address] = left
                else:
                    del self._uploads[signed.address]

    def uploads_in_flight(self) -> dict[str, int]:
        """Uploads being received and the bytes reserved for them."""
        with self._uploads_lock:
            return {"uploads": sum(self._uploads.values()), "reserved_bytes": self._reserved}

    def accept_upload(self, signed: SignedRequest, result: UploadResult) -> tuple[ImageRow, bool]:
        """C11.3.a/c: check an authenticated upload against itself and the ledger, then store it.

        Returns the image row and whether it was newly stored. A refusal that proves the vendor
        malicious bars it and withdraws its images before it is raised.

        Raises:
            Refusal: see :func:`.policy.check_uploader`, :func:`.policy.check_bundle_header`,
                :func:`.policy.payload_refusal`, :func:`.policy.check_known_bad`,
                :func:`.policy.ledger_state_for_upload`.
            OSError: the payload could not be moved into storage.
        """
        vendor = self.ledger.vendor(signed.address)
        vendor = check_uploader(signed.address, vendor, vendor is not None and self.store.is_barred(vendor.name))
        try:
            if result.header is None:
                raise payload_refusal(result.error, header_verified=False)  # type: ignore[arg-type]
            header = result.header
            digest = check_bundle_header(header, signer=signed.address, vendor_name=vendor.name,
                                         chain_id=self.ledger.chain_id, registry=self.ledger.registry,
                                         registered_hardware=set(self.ledger.hardware()))
            if result.error is not None:
                raise payload_refusal(result.error, header_verified=True)
            data = header.record.data
            if result.payload_sha256 != data.file_hash or result.payload_bytes != data.file_size:
                raise Refusal("hash_mismatch", "stored bytes differ from the record", malicious=True)
            check_known_bad(data.file_hash, self.store.known_bad())
            candidates = [r for r in self.ledger.releases_of(data.vendor_name, data.product)
                          if r.version == data.version]
            on_chain = ledger_state_for_upload(digest, candidates, self.ledger.chain_id, self.ledger.registry)
            self.gate.check("upload", lambda: self.gate.uploader(signed.address, vendor.name, data),
                            address=signed.address, digest=_hex(digest))
            if on_chain is not None:
                try:
                    self.gate.check("upload", partial(self.gate.published, on_chain), digest=_hex(digest))
                except Refusal as refusal:
                    if refusal.code != "ledger_unproven":
                        raise
                    on_chain = None  # not provable yet: stored unpublished, published once proven
        except Refusal as refusal:
            if refusal.malicious:
                self._bar(vendor.name, signed.address, f"malicious upload ({refusal.code}): {refusal}")
            raise
        # an image withdrawn only because its vendor was barred, sent again once the bar is lifted
        row = self.store.reinstate(digest, result.payload_path, on_chain.header_hash if on_chain else None)
        created = row is not None
        if row is not None:
            self._event("image_reinstated", digest=_hex(digest), vendor=vendor.name, product=data.product,
                        version=str(data.version), state=row.state)
        else:
            row, created = self.store.add_image(
                digest=digest, file_hash=data.file_hash, header_json=header.to_json(),
                vendor_address=signed.address, vendor_name=data.vendor_name, product=data.product,
                version=data.version, size=data.file_size, temp_payload=result.payload_path,
                header_hash=on_chain.header_hash if on_chain else None)
        self._event("upload_stored", digest=_hex(digest), file_hash=_hex(data.file_hash), vendor=vendor.name,
                    product=data.product, version=str(data.version), state=row.state, created=created)
        if created and on_chain is not None:
            self._announce(on_chain)
        return row, created

    def _bar(self, vendor_name: str, address: str | None, reason: str) -> None:
        withdrawn = self.store.bar_vendor(vendor_name, address, reason)
        self._event("vendor_barred", logging.WARNING, vendor=vendor_name, address=address, reason=reason,
                    withdrawn=[_hex(r.digest) for r in withdrawn])

    def _release_revoked(self, img: ImageRow, rel: IndexedRelease) -> None:
        """C11.3.c/d, R10.a.i: a stored image's release is revoked on the ledger (proven): withdraw it;
        bar its vendor only if :func:`.policy.revocation_outcome` says the revocation proves malice
        (who revoked is the node's word; the malice is the server's own known-bad list)."""
        if not self.gate.holds("withdraw", ("revoked", rel.header_hash), lambda: self.gate.revoked(rel),
                               digest=_hex(img.digest), header_hash=_hex(rel.header_hash)):
            return
        by = self.ledger.revoked_by(rel.header_hash)
        who, bar = revocation_outcome(img.vendor_name, self.ledger.vendor(by) if by else None, img.file_hash,
                                      self.store.known_bad())
        reason = f"release {_hex(rel.header_hash)} revoked on the ledger by its {who}: {rel.revoke_reason or ''}"
        if bar:
            self._bar(img.vendor_name, img.vendor_address, f"{reason} (known-bad payload)")
            return
        withdrawn = self.store.withdraw([img.digest], reason)
        if withdrawn:
            self._event("image_withdrawn", logging.WARNING, digest=_hex(img.digest), header_hash=_hex(rel.header_hash),
                        vendor=img.vendor_name, product=img.product, version=str(img.version), revoked_by=who,
                        revoker=by, reason=rel.revoke_reason)

    # ------------------------------------------------------------------ C11.3.d: consumers

    def register_device(self, signed: SignedRequest, device_id: str, hardware: str,
                        location: str | None, certificate: str | None = None,
                        addons: Sequence[str] = ()) -> DeviceFacts:
        """Register the signing key as a device of a hardware class registered on the ledger, with
        the add-on boards it carries (``addons``: hardware classes on the ledger too, Appendix II).

        With admission required, only an admitted device (operator record, or a manufacture
        certificate that verifies) registers, and its hardware class and region are the
        admission's: what it declares is logged, never used. A board it declares must be listed
        by its admission (else ``board_not_admitted``); the boards it is served for are the
        admission's.

        Raises:
            Refusal: ``unknown_hardware``; ``not_admitted``, ``decommissioned``, ``rejected``,
                ``device_key_mismatch``, ``bad_certificate``, ``board_not_admitted`` (admission required).
            DeviceTaken: the id belongs to another key (open mode).
        """
        if self.admission_required:
            try:
                known = self.admissions.get(device_id) is not None
                adm = self.admissions.check(device_id, signed.address, certificate=certificate, cas=self.cas,
                                            hardware_known=lambda hw: hw in self.ledger.hardware(), now=time.time(),
                                            addons=addons)
            except NotAdmitted as refusal:
                self._event("device_refused", logging.WARNING, address=signed.address, device_id=device_id,
                            code=refusal.code, declared={"hardware": hardware, "location": location,
                                                         "addons": sorted(addons)})
                raise Refusal(refusal.code, str(refusal)) from None
            if adm.source == "certificate" and not known:
                self._event("admitted_by_certificate", device_id=device_id, address=signed.address,
                            hardware=adm.hardware, issuer=adm.issuer)
            if (hardware, location) != (adm.hardware, adm.region):
                self._event("device_declared", device_id=device_id, declared={"hardware": hardware,
                                                                             "location": location})
            hardware, location, addons = adm.hardware, adm.region, adm.addons
            self.store.release_device_id(device_id, signed.address)  # the key the admission names now
        for hw in (hardware, *addons):
            if hw not in self.ledger.hardware():
                raise Refusal("unknown_hardware", f"hardware class {hw!r} is not registered on the ledger")
        dev = self.store.register_device(signed.address, device_id, hardware, location, tuple(addons))
        self._event("device_registered", address=signed.address, device_id=device_id, hardware=hardware,
                    location=location)
        return dev

    def admitted_device(self, address: str) -> DeviceFacts | None:
        """The device whose key is ``address``: with admission required, the admission's id,
        hardware class and region (the operator's ``assigned_region`` still overrides the region),
        whether or not it registered here; in open mode, its registration."""
        row = self.store.device(address)
        if not self.admission_required:
            return row
        adm = self.admissions.by_address(address)
        if adm is None:
            return None
        # what it declared grants nothing here: the admission names its class and its add-on boards
        return DeviceFacts(address, adm.device_id, adm.hardware, adm.region, row.assigned_region if row else None,
                           adm.addons)

    def receive_admissions(self, records: list[Any]) -> dict[str, Any]:
        """Operator admission records (``POST /v1/admissions``): all verify or none is applied.

        Raises:
            Refusal: ``bad_admission``, ``bad_labels``, ``bad_addons``, ``bad_signature``, ``unknown_operator``,
                ``too_large``.
        """
        try:
            applied, out = self.admissions.receive(records, self.config.operator_keys, time.time())
        except AdmissionError as exc:
            raise Refusal(exc.code, str(exc), status=403 if exc.code == "unknown_operator" else 422) from None
        for adm in applied:
            self._event("admission", device_id=adm.device_id, status=adm.status, address=adm.address,
                        hardware=adm.hardware, labels=dict(adm.labels), addons=list(adm.addons), serial=adm.serial,
                        issuer=adm.issuer)
        return out

    # ------------------------------------------------------------------ P4, C11.3.b/f/h: downloads

    def find_image(self, target: bytes) -> ImageRow | None:
        """An image by header hash (published) or by upload digest; an upload withdrawn before it was
        published (so stored without a header hash) is found by its ledger record's header hash too.

        Raises:
            IndexCorruption: the ledger index is damaged.
        """
        row = self.store.image_by_header_hash(target) or self.store.image_by_digest(target)
        if row is not None:
            return row
        rel = self.ledger.release(target)
        if rel is None:
            return None
        row = self.store.image_by_digest(release_digest(rel.record, self.ledger.chain_id, self.ledger.registry))
        return row if row is not None and row.state == "withdrawn" else None

    def authorize(self, signed: SignedRequest, target: bytes, *, what: str, client_ip: str | None,
                  range_start: int | None = None, range_end: int | None = None) -> tuple[ImageRow, DeviceFacts, int]:
        """P4: may this device have this image? Logs the outcome either way (C11.3.f, C11.3.h).

        Returns (image, device, download log row id).

        Raises:
            Refusal: see :func:`.policy.decide_download`.
        """
        device = self.admitted_device(signed.address)
        if device is None and self.admission_required:
            refusal = Refusal("not_admitted", "this key is not an admitted device of this server's operator")
            self.store.log_download(address=signed.address, device_id=None, target=_hex(target), what=what,
                                    image=None, outcome="refused", code=refusal.code, rule=None, client_ip=client_ip)
            raise refusal
        image = self.find_image(target)
        release = self.ledger.release(image.header_hash) if image is not None and image.header_hash else None
        hw = device.hardware if device is not None else None  # the class served for: its own, or a board's
        if device is not None and release is not None:
            hw = serving_class(device, release.record.data.supported_hardware) or hw
        policy = (self.ledger.policy(hw, image.vendor_name, image.product)
                  if hw is not None and image is not None else None)
        try:
            decide_download(device=device, image=image.facts() if image else None, release=release, policy=policy,
                            rules=self.store.rules(), client_ip=client_ip)
            assert release is not None and hw is not None
            self.gate.check("download", lambda: self.gate.served(release, hw), address=signed.address,
                            header_hash=_hex(release.header_hash))
        except Refusal as refusal:
            self.store.log_download(address=signed.address, device_id=device.device_id if device else None,
                                    target=_hex(target), what=what, image=image, outcome="refused",
                                    code=refusal.code, rule=refusal.details.get("rule"), client_ip=client_ip)
            raise
        assert image is not None and device is not None
        row_id = self.store.log_download(address=signed.address, device_id=device.device_id, target=_hex(target),
                                         what=what, image=image, outcome="served", range_start=range_start,
                                         range_end=range_end, client_ip=client_ip)
        return image, device, row_id

    # ------------------------------------------------------------------ operator

    def set_rules(self, rules: tuple[LocationRule, ...]) -> None:
        self.store.set_rules(rules)
        self._event("location_rules", rules=[r.to_json() for r in rules])

    def add_known_bad(self, file_hash: bytes, reason: str) -> list[str]:
        """Add a payload hash to the known-bad list; stored images with it are withdrawn and
        their vendors barred (C11.3.c). Returns the vendor names barred."""
        self.store.add_known_bad(file_hash, reason)
        barred = []
        for row in self.store.images():
            if row.file_hash == file_hash and row.state != "withdrawn":
                self._bar(row.vendor_name, row.vendor_address, f"known-bad image 0x{file_hash.hex()}: {reason}")
                barred.append(row.vendor_name)
        return sorted(set(barred))

    def lift_bar(self, vendor_name: str, reason: str) -> dict[str, Any]:
        """C11.3.c/d: the operator lifts this server's bar of a vendor, for ``reason`` (logged, and
        kept in the store's bar history). The images the bar withdrew stay withdrawn until the
        vendor uploads them again; nothing bars the vendor again unless new malice is proven.

        Returns the bar lifted (address, reason, at) and the lift's reason.

        Raises:
            Refusal: ``vendor_revoked`` (the ledger revoked the vendor), ``not_barred``.
            IndexCorruption: the ledger index is damaged.
        """
        with self._reconcile_lock:  # not interleaved with a reconcile that bars
            check_unbar(vendor_name, self.ledger.vendors(), self.store.is_barred(vendor_name))
            lifted = self.store.lift_bar(vendor_name, reason)
        if lifted is None:  # lifted by another request in between
            raise Refusal("not_barred", f"vendor {vendor_name} is not barred on this server")
        self._event("vendor_unbarred", logging.WARNING, vendor=vendor_name, reason=reason,
                    bar_reason=lifted["reason"], barred_at=lifted["at"])
        return {"vendor": vendor_name, "reason": reason, "lifted": lifted}

    # ------------------------------------------------------------------ C11.3.c/e/g: following the ledger

    def reconcile(self, *, full: bool = True) -> None:
        """Bring the stored images in line with the ledger (idempotent).

        Vendors revoked on the ledger are barred and their images withdrawn; the image of a revoked
        release is withdrawn, its vendor barred only if that proves malice
        (:func:`.policy.revocation_outcome`: never when the vendor revoked it itself);
        a published image whose record the ledger no longer holds (the chain reorganised or was
        reset below it and the full node rolled back) goes back to unpublished, to be published
        again if the record comes back; an upload whose record the ledger now holds becomes
        published (and trackers hear of it). ``full=False`` only looks at unpublished uploads
        (the ledger did not move).

        Raises:
            IndexCorruption: the ledger index is damaged.
        """
        with self._reconcile_lock:
            if full:
                for v in self.ledger.vendors():
                    if v.revoked and not self.store.is_barred(v.name) and self.gate.holds(
                            "bar", ("vendor", v.address), partial(self.gate.vendor_revoked, v), vendor=v.name):
                        self._bar(v.name, v.address, "vendor revoked on the ledger")
                for img in self.store.images(state="published"):
                    rel = self.ledger.release(img.header_hash) if img.header_hash else None
                    if rel is None and img.header_hash and self.store.mark_unpublished(img.digest, img.header_hash):
                        self._event("image_unpublished", logging.WARNING, digest=_hex(img.digest),
                                    header_hash=_hex(img.header_hash), product=img.product,
                                    version=str(img.version), reason="its record is no longer on the ledger")
                    if rel is not None and rel.revoked:
                        self._release_revoked(img, rel)
            for img in self.store.images(state="unpublished"):
                candidates = [r for r in self.ledger.releases_of(img.vendor_name, img.product)
                              if r.version == img.version]
                try:
                    rel = ledger_state_for_upload(img.digest, candidates, self.ledger.chain_id, self.ledger.registry)
                except Refusal:  # its record is revoked: withdrawn, never published
                    revoked = next((r for r in candidates if r.revoked and not r.flagged and release_digest(
                        r.record, self.ledger.chain_id, self.ledger.registry) == img.digest), None)
                    if revoked is not None:
                        self._release_revoked(img, revoked)
                    continue
                if rel is not None and not self.gate.holds(
                        "publish", ("publish", img.digest), partial(self.gate.published, rel),
                        digest=_hex(img.digest), header_hash=_hex(rel.header_hash)):
                    continue
                if rel is not None and self.store.mark_published(img.digest, rel.header_hash):
                    self._event("image_published", digest=_hex(img.digest), header_hash=_hex(rel.header_hash),
                                product=img.product, version=str(img.version))
                    self._announce(rel)

    def _announce(self, rel: IndexedRelease) -> None:
        """T9.b, C11.3.g: tell the trackers of a new version of a line, naming the devices it concerns."""
        d = rel.record.data
        newest = max((r.version for r in self.store.images(state="published", product=d.product,
                                                            vendor_name=d.vendor_name)), default=d.version)
        if d.version < newest or not self.config.tracker_notify_urls:
            return
        payload = new_release_notification(rel, self.concerned_devices(rel))
        devices = payload["devices"]
        triggers = [server_trigger(rel, devices[i:i + MAX_TRIGGER_DEVICES])
                    for i in range(0, len(devices), MAX_TRIGGER_DEVICES)] or [server_trigger(rel)]
        threading.Thread(target=self._post_notifications, args=(payload, triggers), daemon=True,
                         name="fwledger-notify").start()

    def _hardware_of(self, device_id: str) -> str | None:
        """The hardware class of a device of this server: its admission's (admission required; None
        once it is no longer admitted), else its registration's."""
        if self.admission_required:
            adm = self.admissions.get(device_id)
            return adm.hardware if adm is not None and adm.status == "admitted" else None
        row = self.store.find_device(device_id)
        return row.hardware if row is not None else None

    def concerned_devices(self, rel: IndexedRelease) -> list[dict[str, str]]:
        """C11.3.g: the devices of this server that ``rel`` concerns (:func:`.policy.concerned_devices`:
        they took an older version of its line from this server and their class is one it supports)."""
        d = rel.record.data
        return concerned_devices(rel, self.store.line_downloads(d.vendor_name, d.product), self._hardware_of)

    def concerned(self, header_hash: bytes) -> dict[str, Any]:
        """The operator's view of C11.3.g for a release on the ledger: the devices it concerns now, and
        the trackers told of them (each notification's status).

        Raises:
            Refusal: ``unknown_release`` (not on the ledger the server follows).
            IndexCorruption: the ledger index is damaged.
        """
        rel = self.ledger.release(header_hash)
        if rel is None:
            raise Refusal("unknown_release", f"release {_hex(header_hash)} is not on the ledger", status=404)
        d = rel.record.data
        hh = _hex(rel.header_hash)
        return {"header_hash": hh, "vendor": d.vendor_name, "product": d.product, "version": str(d.version),
                "hardware": list(d.supported_hardware), "revoked": rel.revoked,
                "devices": self.concerned_devices(rel),
                "notified": [{k: n[k] for k in ("at", "url", "status")} | {"devices": len(n["payload"]["devices"])}
                             for n in self.store.notifications() if n["header_hash"] == hh]}

    def _post_notifications(self, payload: dict[str, Any], triggers: list[dict[str, Any]]) -> None:
        """POST the signed T9.b trigger(s) to each tracker; log each with the devices it names."""
        post_notifications(self.identity, self.config.tracker_notify_urls, self.config.notify_timeout, self.store,
                           payload, triggers, self._event)

    def sync_and_reconcile(self) -> None:
        """One follower round: sync the full node, then reconcile (fully when the ledger moved).

        Raises:
            ChainUnreachable, ChainError, ConfigError, IndexCorruption: as :meth:`LedgerView.sync`.
        """
        report = self.ledger.sync()
        self.gate.refresh()
        self.last_sync_at = time.time()
        self.last_sync_error = None
        block = self.ledger.block()
        if report.rolled_back:
            self._event("ledger_rolled_back", logging.WARNING, rolled_back_from=report.rolled_back_from,
                        rolled_back_to=report.rolled_back_to, events_removed=report.events_removed,
                        releases_removed=report.releases_removed)
        self.reconcile(full=report.rolled_back or block != self._reconciled_block)
        self._reconciled_block = block

    def _follow(self) -> None:
        while True:
            try:
                self.sync_and_reconcile()
            except ChainUnreachable as exc:
                self._note_error(exc)
            except FwledgerError as exc:
                self._note_error(exc)
            except Exception as exc:  # the follower must outlive any bug; the error is logged
                self._note_error(exc)
            if self._stop.wait(self.config.poll_interval):
                return

    def _note_error(self, exc: BaseException) -> None:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        if text != self.last_sync_error:
            self._event("ledger_sync_failed", logging.WARNING, error=text)
        self.last_sync_error = text

    def start(self) -> None:
        """Start following the ledger in a background thread (first round at once)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, daemon=True, name="fwledger-ledger")
            self._thread.start()

    def stop(self) -> None:
        """Stop the follower and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.store.close()
        self.admissions.close()

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.last_sync_error is None else "degraded",
                "ledger_block": self.ledger.block(), "chain_id": self.ledger.chain_id,
                "proven_block": self.gate.proven_block(),
                "registry": self.ledger.registry, "address": self.identity.address,
                "last_sync_at": self.last_sync_at,
                "last_sync_error": self.last_sync_error, "images": self.store.counts(),
                "uploads": self.uploads_in_flight()}
