"""Every trust decision of the firmware server, pure (STYLE.md: trust logic apart from I/O).

Functions here take bytes, strings and dataclasses (the bundle header, the full node's records,
policies and vendors, the server's own rows) and either return a decision or raise
:class:`Refusal` with a stable ``code``. No network, no disk, no clock: the HTTP adapter
(``app``) and the orchestrator (``service``) gather the facts and call them, so each refusal is
a unit test (``tests/unit/test_firmware_server_policy.py``).

- Submissions (C11.3.a, C11.3.c, R10.a.i, R10.a.iii): :func:`check_uploader`,
  :func:`check_bundle_header`, :func:`payload_refusal`, :func:`check_known_bad`,
  :func:`ledger_state_for_upload`. A refusal that proves malice (``Refusal.malicious``) bars the
  vendor: an unusable bundle signature or a payload that does not match the vendor's own signed
  record, sent in a request the vendor's key validly signed, or a known-bad payload.
- Revocation vs barring (C11.3.c/d, R10.a.i): :func:`revocation_outcome` (a revoked release is
  withdrawn; its vendor is barred only on proof of malice), :func:`check_unbar` (the operator may
  lift a bar, never one the ledger stands behind).
- Consumers (P4, C11.3.b, C11.3.d, C11.3.f): :func:`decide_download`.
- Location (C11.3.h): :class:`LocationRule`, :func:`device_labels`, :func:`location_decision`.
- Versions (C11.3.e, C11.3.g, T9.b): :func:`concerned_devices`, :func:`new_release_notification`,
  :func:`server_trigger`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Literal

from entities.bundle import BundleError, BundleHeader, recover_signer, release_digest
from ledger_node.errors import VerificationError
from ledger_node.fullnode import IndexedRelease, PolicyInfo, VendorInfo
from ledger_node.record import Version

__all__ = [
    "MALICIOUS_PAYLOAD_CODES",
    "MAX_TRIGGER_DEVICES",
    "DeviceFacts",
    "ImageFacts",
    "LocationRule",
    "Refusal",
    "check_bundle_header",
    "check_known_bad",
    "check_unbar",
    "check_uploader",
    "concerned_devices",
    "decide_download",
    "device_labels",
    "ledger_state_for_upload",
    "location_decision",
    "new_release_notification",
    "normalise_label",
    "parse_rules",
    "payload_refusal",
    "revocation_outcome",
    "server_trigger",
]

#: devices named in one T9.b trigger at most (the tracker refuses a longer list)
MAX_TRIGGER_DEVICES = 1000

#: payload codes of the bundle module: the bytes do not match the vendor's own signed record
MALICIOUS_PAYLOAD_CODES = frozenset({"size_mismatch", "hash_mismatch", "merkle_mismatch", "trailing_bytes",
                                     "truncated"})

_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PATTERN_RE = re.compile(r"^[a-z0-9*?][a-z0-9*?._-]{0,63}$")


class Refusal(VerificationError):
    """A request the server refuses; ``code`` is the stable error code clients see.

    ``malicious`` marks a refusal that proves the (authenticated) uploader malicious;
    ``details`` are extra JSON fields of the error (the location rule that refused, ...);
    ``status`` overrides the HTTP status the code usually has (a bundle's ``bad_signature`` is a
    422 about the content, a request's a 401).
    """

    def __init__(self, code: str, message: str, *, malicious: bool = False,
                 details: Mapping[str, Any] | None = None, status: int | None = None) -> None:
        self.code = code
        self.status = status
        self.malicious = malicious
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(" ".join(message.split()))


# ----------------------------------------------------------------------------- submissions


def check_uploader(signer: str, vendor: VendorInfo | None, barred: bool) -> VendorInfo:
    """C11.3.a: only a vendor active on the ledger, and not barred here, may submit.

    ``vendor`` is the full node's entry for the signing address (None: never a vendor);
    ``barred`` whether this server barred the vendor's name.

    Raises:
        Refusal: ``vendor_barred`` or ``not_a_vendor``.
    """
    if barred:
        name = vendor.name if vendor is not None else signer
        raise Refusal("vendor_barred", f"vendor {name} is barred from this server")
    if vendor is None or not vendor.active:
        why = "not a registered vendor" if vendor is None else "no longer an active vendor key"
        raise Refusal("not_a_vendor", f"{signer} is {why} on the ledger")
    return vendor


def check_bundle_header(header: BundleHeader, *, signer: str, vendor_name: str, chain_id: int, registry: str,
                        registered_hardware: Set[str]) -> bytes:
    """R10.a.iii, C11.4.a: the bundle is signed by the uploading vendor, for its own name, for known hardware.

    ``signer`` is the address that validly signed the upload request (an active vendor named
    ``vendor_name``). Returns the record's EIP-712 digest (what a ``Published`` record must match).

    Raises:
        Refusal: ``bad_signature`` (malicious: the vendor sent a bundle whose signature is
            unusable), ``signer_mismatch`` (signed by another key), ``vendor_name_mismatch``,
            ``unknown_hardware``, ``bad_bundle`` (recipients not exactly the supported classes).
    """
    try:
        bundle_signer = recover_signer(header, header.signature, chain_id, registry)
    except BundleError as exc:
        raise Refusal("bad_signature", f"bundle signature does not verify: {exc}", malicious=True,
                      status=422) from exc
    if bundle_signer.lower() != signer.lower():
        raise Refusal("signer_mismatch", f"bundle is signed by {bundle_signer}, the request by {signer}")
    data = header.record.data
    if data.vendor_name != vendor_name:
        raise Refusal("vendor_name_mismatch",
                      f"record names vendor {data.vendor_name!r}, the signing key is vendor {vendor_name!r}")
    unknown = sorted(set(data.supported_hardware) - set(registered_hardware))
    if unknown:
        raise Refusal("unknown_hardware", f"hardware class(es) not registered on the ledger: {', '.join(unknown)}")
    recipients = sorted(r.hardware for r in header.encryption.recipients)
    if recipients != sorted(data.supported_hardware):
        raise Refusal("bad_bundle", "the content key is not wrapped for exactly the supported hardware classes")
    return release_digest(header.record, chain_id, registry)


def payload_refusal(exc: BundleError, *, header_verified: bool) -> Refusal:
    """The refusal for a bundle error met while reading an upload.

    A payload that does not match a record whose signature by the uploader was verified
    (``header_verified``) proves the uploader malicious (C11.3.c).
    """
    code = str(getattr(exc, "code", "") or "bad_bundle")
    malicious = header_verified and code in MALICIOUS_PAYLOAD_CODES
    return Refusal(code, str(exc) or code, malicious=malicious)


def check_known_bad(file_hash: bytes, known_bad: Set[bytes]) -> None:
    """R10.a.i: an image on the server's known-bad list is refused (and proves malice).

    Raises:
        Refusal: ``known_bad``.
    """
    if file_hash in known_bad:
        raise Refusal("known_bad", f"payload 0x{file_hash.hex()} is on the known-bad list", malicious=True)


def ledger_state_for_upload(digest: bytes, candidates: Iterable[IndexedRelease], chain_id: int,
                            registry: str) -> IndexedRelease | None:
    """The ledger's record matching an upload's digest, if already published (C11.3.c).

    ``candidates`` are the full node's unflagged releases of the upload's line and version.

    Raises:
        Refusal: ``revoked``: the matching record is revoked on the ledger.
    """
    for rel in candidates:
        if rel.flagged or release_digest(rel.record, chain_id, registry) != digest:
            continue
        if rel.revoked:
            raise Refusal("revoked", f"release 0x{rel.header_hash.hex()} is revoked on the ledger"
                          + (f": {rel.revoke_reason}" if rel.revoke_reason else ""))
        return rel
    return None


# ----------------------------------------------------------------------------- revocation vs barring


def revocation_outcome(vendor_name: str, revoker: VendorInfo | None, file_hash: bytes,
                       known_bad: Set[bytes]) -> tuple[Literal["vendor", "administration"], bool]:
    """C11.3.c/d, R10.a.i: what a release revoked on the ledger does here: (who revoked, bar the vendor?).

    The image of a revoked release is always withdrawn. Whether its vendor is barred too
    depends on what the revocation proves:

    - revoked by its own vendor (``revoker``, the full node's entry of the ``Revoked`` event's
      sender, carries the release's vendor name: the registry lets a vendor revoke only releases
      of its own name): the vendor recalls a bad build. That is the behaviour R10.a.i asks of an
      honest vendor and proves no malice: the vendor stays in good standing, its other images
      stay served and it can upload the fix;
    - revoked by the administration (k of n; any other sender): a release is revoked for many
      reasons (a bricking bug, a vulnerability, a dispute) and the ledger has a separate, stronger
      act for a vendor it no longer trusts (``VendorRevoked``, which bars). A release revocation
      alone therefore withdraws that release only, unless its payload is on this server's
      known-bad list: then the server holds its own proof of malice and bars the vendor, as it
      does for a known-bad upload.

    ``revoker`` is None when the sender is not (or no longer) known as a vendor.
    """
    by_vendor = revoker is not None and revoker.name == vendor_name
    if by_vendor:
        return "vendor", False
    return "administration", file_hash in known_bad


def check_unbar(vendor_name: str, ledger_entries: Iterable[VendorInfo], barred: bool) -> None:
    """C11.3.c/d: may the operator lift this server's bar of ``vendor_name``?

    ``ledger_entries`` are the full node's vendor keys (any name); ``barred`` whether the name is
    barred here now. A vendor the ledger revoked stays barred: the ledger says so, not the server.

    Raises:
        Refusal: ``vendor_revoked`` (a key of that name is revoked on the ledger), ``not_barred``.
    """
    if any(v.name == vendor_name and v.revoked for v in ledger_entries):
        raise Refusal("vendor_revoked", f"vendor {vendor_name} is revoked on the ledger: its bar cannot be lifted")
    if not barred:
        raise Refusal("not_barred", f"vendor {vendor_name} is not barred on this server")


# ----------------------------------------------------------------------------- location


@dataclass(frozen=True)
class LocationRule:
    """``{"action": "allow"|"deny", "region": "eu-*"?, "cidr": "10.0.0.0/8"?}``.

    A rule matches when every condition it has holds: the region pattern (shell-style, lower
    case) matches one of the device's labels, and the client address is in the CIDR. A rule
    with neither matches every device (a final catch-all).
    """

    action: Literal["allow", "deny"]
    region: str | None = None
    cidr: str | None = None
    _network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> LocationRule:
        """Raises:
            ValueError: unknown keys, an action other than allow/deny, a bad pattern or CIDR.
        """
        if not isinstance(obj, Mapping) or set(obj) - {"action", "region", "cidr"}:
            raise ValueError("a rule is an object with action, region, cidr")
        action = obj.get("action")
        if action not in ("allow", "deny"):
            raise ValueError("rule action must be 'allow' or 'deny'")
        region, cidr = obj.get("region"), obj.get("cidr")
        network = None
        if region is not None:
            if not isinstance(region, str) or not _PATTERN_RE.match(region.lower()):
                raise ValueError(f"bad region pattern {region!r}")
            region = region.lower()
        if cidr is not None:
            if not isinstance(cidr, str):
                raise ValueError("cidr must be text")
            network = ipaddress.ip_network(cidr, strict=False)
            cidr = str(network)
        return cls(action, region, cidr, network)

    def matches(self, labels: Sequence[str], client_ip: str | None) -> bool:
        if self.region is not None and not any(fnmatch.fnmatchcase(lb, self.region) for lb in labels):
            return False
        if self.cidr is not None:
            addr = _client_address(client_ip)
            net = self._network or ipaddress.ip_network(self.cidr, strict=False)
            if addr is None or addr.version != net.version or addr not in net:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.region is not None:
            out["region"] = self.region
        if self.cidr is not None:
            out["cidr"] = self.cidr
        return out

    def describe(self) -> str:
        conds = [f"region {self.region}"] if self.region else []
        conds += [f"network {self.cidr}"] if self.cidr else []
        return f"{self.action} {' and '.join(conds) or 'everything'}"


def parse_rules(items: Iterable[Mapping[str, Any]]) -> tuple[LocationRule, ...]:
    """Raises:
        ValueError: a rule is malformed (its position is named).
    """
    out = []
    for i, item in enumerate(items):
        try:
            out.append(LocationRule.parse(item))
        except ValueError as exc:
            raise ValueError(f"rule {i}: {exc}") from None
    return tuple(out)


def _client_address(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalise_label(label: str) -> str:
    """A region label as stored: lower case, ``[a-z0-9._-]``, 1..64 characters.

    Raises:
        ValueError: not a valid label.
    """
    if not isinstance(label, str) or not _LABEL_RE.match(label.lower()):
        raise ValueError(f"bad region label {label!r}: letters, digits, '.', '_', '-' (1..64)")
    return label.lower()


@dataclass(frozen=True)
class DeviceFacts:
    """A registered device as the server keeps it."""

    address: str
    device_id: str
    hardware: str
    location: str | None = None
    assigned_region: str | None = None
    addons: tuple[str, ...] = ()  # add-on boards it declared (hardware class ids): their firmware is its too


def serving_class(device: DeviceFacts, supported: Sequence[str]) -> str | None:
    """The class a release is served to the device for: its own hardware class, else the first of
    its add-on boards the record supports (Appendix II); None when the record supports neither."""
    for hw in (device.hardware, *device.addons):
        if hw in supported:
            return hw
    return None


def device_labels(device: DeviceFacts) -> tuple[str, ...]:
    """The labels location rules see: the operator's assignment overrides what the device declared."""
    if device.assigned_region:
        return (device.assigned_region,)
    return (device.location,) if device.location else ()


def location_decision(rules: Sequence[LocationRule], labels: Sequence[str],
                      client_ip: str | None) -> tuple[bool, int | None, LocationRule | None]:
    """C11.3.h: first matching rule wins, default allow. Returns (allowed, rule index, rule)."""
    for i, rule in enumerate(rules):
        if rule.matches(labels, client_ip):
            return rule.action == "allow", i, rule
    return True, None, None


# ----------------------------------------------------------------------------- consumers


@dataclass(frozen=True)
class ImageFacts:
    """A stored image as the server keeps it; ``header_hash`` is set once published."""

    digest: bytes
    file_hash: bytes
    state: Literal["unpublished", "published", "withdrawn"]
    vendor_name: str
    product: str
    version: Version
    header_hash: bytes | None = None
    withdraw_reason: str | None = None


def decide_download(*, device: DeviceFacts | None, image: ImageFacts | None, release: IndexedRelease | None,
                    policy: PolicyInfo | None, rules: Sequence[LocationRule], client_ip: str | None) -> None:
    """P4: serve an image only to a consumer with a legitimate right to it, else an error code.

    ``device``: the signing address's registration (None: unregistered); ``image``: the stored
    image asked for (None: unknown here); ``release``: the full node's record of its header
    hash; ``policy``: the ledger's policy for the class the image is served for
    (:func:`serving_class`: the device's own, or one of its add-on boards) and the image's
    product line (None: no policy set).

    Raises:
        Refusal: ``unregistered_device``, ``unknown_image``, ``not_published``, ``revoked``,
            ``hardware_not_supported``, ``policy_denied``, ``location_denied`` (with the rule).
    """
    if device is None:
        raise Refusal("unregistered_device", "the signing key is not a registered device")
    if image is None:
        raise Refusal("unknown_image", "no such image on this server")
    if image.state == "withdrawn":
        raise Refusal("revoked", "image withdrawn from this server"
                      + (f": {image.withdraw_reason}" if image.withdraw_reason else ""))
    if image.state != "published" or release is None or release.flagged:
        raise Refusal("not_published", "the image's record is not on the ledger (yet)")
    if release.revoked:
        raise Refusal("revoked", "release revoked on the ledger"
                      + (f": {release.revoke_reason}" if release.revoke_reason else ""))
    data = release.record.data
    hw = serving_class(device, data.supported_hardware)
    if hw is None:
        raise Refusal("hardware_not_supported",
                      f"the record supports {', '.join(data.supported_hardware)}, not "
                      f"{', '.join((device.hardware, *device.addons))}")
    if policy is not None and not policy.permits(data.version):
        why = "forbids the product line" if not policy.allowed else \
            f"allows {policy.min_version}..{policy.max_version} only"
        raise Refusal("policy_denied", f"the ledger policy of {hw} {why}, not {data.version}")
    allowed, index, rule = location_decision(rules, device_labels(device), client_ip)
    if not allowed and rule is not None:
        raise Refusal("location_denied", f"location rule #{index} ({rule.describe()}) refuses this device",
                      details={"rule": {"index": index, **rule.to_json()}})


# ----------------------------------------------------------------------------- versions


def concerned_devices(release: IndexedRelease, downloads: Iterable[tuple[str, Version]],
                      hardware_of: Callable[[str], str | None]) -> list[dict[str, str]]:
    """C11.3.g: the devices a newer release concerns, as the server knows them.

    ``downloads`` are (device id, version) of the line's payloads this server served; a device's
    last known version of the line is the newest it took. It is concerned when that version is
    older than the release's and its hardware class (``hardware_of``: the admission's, else the
    registration's; None: not a device of this server any more) is one the release supports.
    Returns ``{"device_id", "hardware", "version"}`` (its last known version) by device id.
    """
    data = release.record.data
    last: dict[str, Version] = {}
    for dev, v in downloads:
        last[dev] = max(last.get(dev, v), v)
    out = []
    for dev in sorted(last):
        hw = hardware_of(dev) if last[dev] < data.version else None
        if hw is not None and hw in data.supported_hardware:
            out.append({"device_id": dev, "hardware": hw, "version": str(last[dev])})
    return out


def new_release_notification(release: IndexedRelease, concerned: list[dict[str, str]]) -> dict[str, Any]:
    """T9.b / C11.3.g: what the server logs of a newer release of a line: the devices it
    concerns (:func:`concerned_devices`)."""
    return {"event": "new_release", "header_hash": "0x" + release.header_hash.hex(),
            "product": release.record.data.product, "version": str(release.record.data.version),
            "devices": concerned}


def server_trigger(release: IndexedRelease, devices: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """T9.b: the update request a firmware server sends a tracker (``POST /v1/triggers``), signed
    by the server's key; the tracker acts on it only after checking the release on the ledger.
    ``devices``: the devices the release concerns (:func:`concerned_devices`, C11.3.g), at most
    :data:`MAX_TRIGGER_DEVICES` (the server sends a longer list in several triggers)."""
    d = release.record.data
    out: dict[str, Any] = {"source": "server", "header_hash": "0x" + release.header_hash.hex(),
                           "link": d.file_link, "version": str(d.version)}
    if devices:
        out["devices"] = [dict(x) for x in devices]
    return out
