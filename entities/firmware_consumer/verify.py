"""Verifying an update, pure: every trust decision a device makes before a byte is installed.

X.1368 clause 7 P5 ("the consumer verifies the image"), R10.a.ii-iii, R10.d, C11.1.a.v, and the
light-node role of Appendix II. Like python-tuf's ``trusted_metadata_set``, this module takes only
bytes and dataclasses: no disk, no network, no clock (``now`` is an argument). The I/O around it
(reading the bundle, the device state, the evidence file) is :mod:`.updater`'s job.

What a device is given by an untrusted party (a tracker, a server, a USB stick):

- the **bundle** header (``entities.bundle.BundleHeader``: the record with publish time 0,
  the vendor's EIP-712 signature, the encryption block), then its payload (streamed by the updater);
- the **evidence** (:class:`Evidence`): a block header (RLP), tracker attestations of it, the raw
  ``eth_getProof`` answer of the registry at that block, the record **as published** (Table II.1
  JSON, with the chain's publish time) and, when that record is not the head of its line, its
  successors up to the head.

What it trusts (:class:`TrustAnchors`, provisioned): the chain id, the registry's address, runtime
code hash and storage slots, the tracker keys and quorum k, the maximum header age (and the
intermediate modules' keys, which sign answers only and never count as attesters).

Checks, in this order; the first failure raises :class:`~.errors.UpdateRefused` with its code:

==  ==========================================================  =====================================
 #  check                                                       code
==  ==========================================================  =====================================
 0  the evidence parses                                         ``bad_evidence``
 1  k of the n provisioned trackers attest exactly this header  ``quorum_not_met``
    and it is not older than the maximum age / not in the       ``stale_header`` / ``future_header``
    future (freeze attack)
 2  account + storage proofs verify against its state root,     ``bad_proof``
    and the registry's code hash is the provisioned one
 3  the published record's entry exists                         ``not_on_chain``
 4  ... is not revoked                                          ``revoked``
 5  ... is not flagged vulnerable                               ``vulnerable``
 6  it is the head of its line, or every successor up to the    ``not_newest``
    head is proven unusable for this hardware class (revoked,
    vulnerable, not for this class, or above the policy)
 7  the class's policy for the line permits its version         ``policy_denied``
 8  the line's vendor has a proven address and is active        ``vendor_inactive``
 9  the bundle's signature recovers to that proven address      ``bad_signature``
10  the bundle's record is the published record                 ``record_mismatch``
11  the record is for the component's product (and vendor)      ``wrong_product``
12  the component's hardware class is among the supported ones  ``wrong_hardware``
    (the device's own class, or the class of the add-on board
    the component runs on; steps 6-7 use that class too)
13  the bundle has a content key entry for that class           ``no_key_for_hardware``
14  its dependencies hold for the device's other components     ``dependency_unmet``
    after the planned installs
15  its version is above the installed one and not below the    ``rollback``
    anti-rollback counter
==  ==========================================================  =====================================

How the bundle is tied to the chain (steps 3, 9, 10). The chain sets a record's publish time
from its block, so the bundle's record (publish time 0) does not have the header hash the chain
keys the release by; the device cannot learn the publish time from the proofs either (the
storage word holds only the version and flags). So the evidence carries the record as published.
The device recomputes that record's header hash from its fields (Table II.1), proves
``releases[line][header_hash]`` exists at the attested block (a record with any field changed,
publish time included, has another hash and is proven absent: ``not_on_chain``), checks the
vendor's signature over the bundle's record recovers to the proven vendor address, and checks
that ``release_digest`` (the EIP-712 digest over every field but the publish time, bound to the
chain id and registry) is the same for the bundle's record and the published one. Together: the
vendor signed exactly the fields the chain committed to, and the header hash installed and
reported is the chain's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from entities.bundle import BundleHeader, SignatureError, recover_signer, release_digest
from ledger_node import evidence as ledger_evidence
from ledger_node.attestation import AttestationError, trusted_header
from ledger_node.codec.hashing import to_checksum_address
from ledger_node.errors import ConfigError, ProofError, RecordError
from ledger_node.evidence import EVIDENCE_FORMAT
from ledger_node.header import BlockHeader
from ledger_node.lightnode import RegistryLayout, VerifiedRelease, verify_release
from ledger_node.proofs import AccountProof, parse_proof_json
from ledger_node.record import ReleaseRecord, Version

from .errors import UnknownComponent, UpdateRefused

__all__ = [
    "EVIDENCE_FORMAT",
    "REFUSAL_CODES",
    "ComponentFacts",
    "DeviceFacts",
    "Evidence",
    "ProvenRelease",
    "TrustAnchors",
    "VerifiedUpdate",
    "assess_release",
    "check_fit",
    "check_hardware",
    "check_release",
    "verify_update",
]

#: the codes of :func:`verify_update`, in the order the checks run
REFUSAL_CODES = (
    "bad_evidence", "quorum_not_met", "stale_header", "future_header", "bad_proof", "not_on_chain", "revoked",
    "vulnerable", "not_newest", "policy_denied", "vendor_inactive", "bad_signature", "record_mismatch",
    "wrong_product", "wrong_hardware", "no_key_for_hardware", "dependency_unmet", "rollback",
)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class TrustAnchors:
    """What a device is provisioned to trust: the registry (where, which code, which slots) and its trackers.

    ``trackers`` are the server modules' keys: they attest headers (k of them, ``quorum``), sign
    update commands and sign answers. ``relays`` are intermediate modules' keys (docs/MODULES.md
    section 1): accepted as the signers of answers only, never counted as attesters or issuers.
    """

    chain_id: int
    registry: str
    layout: RegistryLayout
    trackers: tuple[str, ...]
    quorum: int
    max_header_age: float
    max_clock_skew: float = 120.0
    registry_block: int = 0
    relays: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raises:
            ConfigError: inconsistent anchors (quorum not in 1..n, non-positive ages, bad addresses).
        """
        try:
            registry = to_checksum_address(self.registry)
            trackers = {to_checksum_address(t) for t in self.trackers}
            relays = {to_checksum_address(r) for r in self.relays}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"trust anchors: bad address: {exc}") from exc
        if registry != self.registry:
            raise ConfigError("trust anchors: the registry address must be checksummed")
        if len(relays) != len(self.relays) or relays & trackers:
            raise ConfigError("trust anchors: relays must be distinct and not also trackers")
        if not 1 <= self.quorum <= len(trackers) or len(trackers) != len(self.trackers):
            raise ConfigError(f"trust anchors: quorum {self.quorum} of {len(self.trackers)} distinct trackers "
                              "is not possible")
        if self.max_header_age <= 0 or self.max_clock_skew < 0 or self.chain_id <= 0:
            raise ConfigError("trust anchors: chain id and maximum header age must be positive")
        self.layout.slot("releases")
        self.layout.slot("vendor_address")
        self.layout.slot("vendor_name_hash")
        self.layout.slot("policies")

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "chain_id": self.chain_id, "registry": self.registry,
                "registry_block": self.registry_block, **self.layout.to_json(),
                "trackers": list(self.trackers), "quorum": self.quorum,
                "max_header_age": self.max_header_age, "max_clock_skew": self.max_clock_skew,
                "relays": list(self.relays)}

    @classmethod
    def from_json(cls, obj: Any) -> TrustAnchors:
        """Inverse of :meth:`to_json`, validated.

        Raises:
            ConfigError: missing, malformed or inconsistent fields.
        """
        try:
            if obj.get("format") != 1:
                raise ValueError(f"unsupported anchors format {obj.get('format')!r}")
            anchors = cls(chain_id=int(obj["chain_id"]), registry=to_checksum_address(obj["registry"]),
                          layout=RegistryLayout.from_json(obj),
                          trackers=tuple(to_checksum_address(t) for t in obj["trackers"]),
                          quorum=int(obj["quorum"]), max_header_age=float(obj["max_header_age"]),
                          max_clock_skew=float(obj.get("max_clock_skew", 120.0)),
                          registry_block=int(obj.get("registry_block", 0)),
                          relays=tuple(to_checksum_address(r) for r in _address_list(obj.get("relays") or [])))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad trust anchors: {exc}") from exc
        anchors.validate()
        return anchors


def _address_list(value: Any) -> list[Any]:
    if not isinstance(value, list) or len(value) > 64:
        raise ValueError("relays must be a list of at most 64 addresses")
    return value


def _bad_evidence(message: str) -> UpdateRefused:
    return UpdateRefused("bad_evidence", message)


class Evidence(ledger_evidence.Evidence):
    """What an untrusted party hands a device about one release (see the module docstring): the
    JSON of :class:`ledger_node.evidence.Evidence`, one refusal code for any malformation.

    ``proof`` is the raw ``eth_getProof`` result for the registry covering the release entry of
    ``record`` and of each successor, ``vendor_address[keccak(vendor)]``, the vendor's
    ``vendor_name_hash`` slot and ``policies[keccak(hw)][line]``.
    """

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        """Parse evidence JSON (nothing in it is trusted yet).

        Raises:
            UpdateRefused: ``bad_evidence`` for missing or malformed fields.
        """
        try:
            return super().from_json(obj)
        except (ProofError, RecordError) as exc:  # AttestationError is a ProofError
            raise _bad_evidence(f"malformed evidence: {exc}") from exc


@dataclass(frozen=True)
class ComponentFacts:
    """What a device knows about one of its components (from its own state, trusted)."""

    name: str
    product: str
    vendor: str | None
    installed: Version | None
    counter: Version
    board: str | None = None  # the add-on board (hardware class id) it runs on; None: the device's class


@dataclass(frozen=True)
class DeviceFacts:
    """The device's hardware class and its components, as the pure checks need them."""

    hardware: str
    components: tuple[ComponentFacts, ...]

    def class_of(self, name: str) -> str:
        """The hardware class a component's releases and policy are checked against: the class of
        the add-on board it runs on, else the device's own (Appendix II).

        Raises:
            UnknownComponent: no component of that name.
        """
        board = self.component(name).board
        return board if board is not None else self.hardware

    def component(self, name: str) -> ComponentFacts:
        """Raises:
            UnknownComponent: no component of that name.
        """
        for c in self.components:
            if c.name == name:
                return c
        raise UnknownComponent(f"the device has no component {name!r}")

    def bound_to(self, vendor: str, product: str) -> list[ComponentFacts]:
        """The components provisioned for this product line."""
        return [c for c in self.components if c.product == product and c.vendor in (None, vendor)]


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ProvenRelease:
    """What the chain, at an attested block, proves about a published record (steps 1-8)."""

    block: BlockHeader
    record: ReleaseRecord
    chain: VerifiedRelease
    vendor_address: str
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def header_hash(self) -> bytes:
        return self.record.header_hash

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block.number, "block_hash": "0x" + self.block.hash.hex(),
                "block_time": self.block.timestamp, "header_hash": "0x" + self.header_hash.hex(),
                "version": str(self.record.data.version), "publish_time": self.record.data.publish_time,
                "head": self.chain.entry.head, "vendor_address": self.vendor_address,
                "skipped": [{"version": v, "why": why} for v, why in self.skipped]}


@dataclass(frozen=True)
class VerifiedUpdate:
    """An update that passed every check: what the updater may install, and where it came from."""

    component: str
    hardware: str
    bundle: BundleHeader
    proven: ProvenRelease

    @property
    def record(self) -> ReleaseRecord:
        """The record as published (with the chain's publish time)."""
        return self.proven.record

    @property
    def header_hash(self) -> bytes:
        return self.proven.header_hash

    @property
    def version(self) -> Version:
        return self.proven.record.data.version

    def to_json(self) -> dict[str, Any]:
        d = self.record.data
        return {"component": self.component, "hardware": self.hardware, "vendor": d.vendor_name,
                "product": d.product, "file_size": d.file_size,
                "plaintext_size": self.bundle.encryption.plaintext_size, **self.proven.to_json()}


# ----------------------------------------------------------------------------- the checks


def _proven_facts(anchors: TrustAnchors, header: BlockHeader, proof: AccountProof, record: ReleaseRecord,
                  hardware: str) -> VerifiedRelease:
    try:
        return verify_release(header_rlp=header.rlp, block_hash=header.hash, registry_address=anchors.registry,
                              code_hash=anchors.layout.runtime_code_hash, compiled=anchors.layout, record=record,
                              proof=proof, hw_id=hardware)
    except (ProofError, RecordError) as exc:
        raise UpdateRefused("bad_proof", f"the ledger proofs do not verify: {exc}") from exc


def _why_unusable(succ: ReleaseRecord, facts: VerifiedRelease, hardware: str) -> str | None:
    """Why a newer release is not an update for this class (None: it is one)."""
    e = facts.entry
    if e.revoked:
        return "revoked"
    if e.vulnerable:
        return "vulnerable"
    if hardware not in succ.data.supported_hardware:
        return "not for this hardware class"
    if facts.policy is not None and not facts.policy.permits(succ.data.version):
        return "not permitted by the policy"
    return None


def check_release(anchors: TrustAnchors, hardware: str, evidence: Evidence, *, now: float) -> ProvenRelease:
    """Steps 1-8: trust the header, prove the published record's standing, the policy and the vendor.

    Raises:
        UpdateRefused: ``quorum_not_met``, ``stale_header``, ``future_header``, ``bad_evidence``,
            ``bad_proof``, ``not_on_chain``, ``revoked``, ``vulnerable``, ``not_newest``,
            ``policy_denied`` or ``vendor_inactive``.
    """
    try:
        header = trusted_header(evidence.header_rlp, evidence.attestations, chain_id=anchors.chain_id,
                                registry=anchors.registry, trackers=anchors.trackers, quorum=anchors.quorum,
                                now=now, max_age=anchors.max_header_age, max_skew=anchors.max_clock_skew)
    except AttestationError as exc:
        raise UpdateRefused(exc.code, str(exc)) from exc
    except ProofError as exc:
        raise _bad_evidence(f"the block header is malformed: {exc}") from exc
    try:
        proof = parse_proof_json(evidence.proof)
    except ProofError as exc:
        raise UpdateRefused("bad_proof", f"the proof is malformed: {exc}") from exc

    record = evidence.record
    d = record.data
    name = f"{d.vendor_name}/{d.product} {d.version}"
    facts = _proven_facts(anchors, header, proof, record, hardware)
    entry = facts.entry
    if not entry.exists:
        raise UpdateRefused("not_on_chain", f"{name} (header hash 0x{record.header_hash.hex()}) is not on the "
                                            f"ledger at block {header.number}")
    if entry.revoked:
        raise UpdateRefused("revoked", f"{name} is revoked on the ledger")
    if entry.vulnerable:
        raise UpdateRefused("vulnerable", f"{name} is flagged vulnerable on the ledger")

    skipped: list[tuple[str, str]] = []
    if not entry.head:
        prev = record.header_hash
        reached_head = False
        for succ in evidence.successors:
            if succ.prev_hash != prev or succ.line != record.line:
                raise UpdateRefused("not_newest", f"{name} is not the head of its line and the successors given "
                                                  "do not chain from it")
            sf = _proven_facts(anchors, header, proof, succ, hardware)
            if not sf.entry.exists:
                raise UpdateRefused("not_newest", f"{name} is not the head of its line; successor "
                                                  f"{succ.data.version} is not proven on the ledger")
            why = _why_unusable(succ, sf, hardware)
            if why is None:
                raise UpdateRefused("not_newest", f"{name} is not the newest release for {hardware}: "
                                                  f"{succ.data.version} is")
            skipped.append((str(succ.data.version), why))
            prev = succ.header_hash
            if sf.entry.head:
                reached_head = True
                break
        if not reached_head:
            raise UpdateRefused("not_newest", f"{name} is not the head of its line (R10.d.i) and no proof shows "
                                              f"every newer release is unusable for {hardware}")
    if facts.policy is not None and not facts.policy.permits(d.version):
        p = facts.policy
        rule = "forbids the line" if not p.allowed else f"allows {p.min_version}..{p.max_version}"
        raise UpdateRefused("policy_denied", f"the administrator's policy for {hardware} {rule}; not {d.version}")
    if facts.vendor_address is None or not facts.vendor_active:
        raise UpdateRefused("vendor_inactive", f"vendor {d.vendor_name!r} is not an active vendor on the ledger")
    return ProvenRelease(header, record, facts, facts.vendor_address, tuple(skipped))


def _check_bundle(anchors: TrustAnchors, bundle: BundleHeader, proven: ProvenRelease) -> None:
    """Steps 9-10: the vendor signed exactly the published record."""
    try:
        signer = recover_signer(bundle, bundle.signature, anchors.chain_id, anchors.registry)
    except SignatureError as exc:
        raise UpdateRefused("bad_signature", f"the bundle's signature is unusable: {exc}") from exc
    if signer != proven.vendor_address:
        raise UpdateRefused("bad_signature", f"the bundle is signed by {signer}, not by the vendor's proven key "
                                             f"{proven.vendor_address}")
    if (release_digest(bundle.record, anchors.chain_id, anchors.registry)
            != release_digest(proven.record, anchors.chain_id, anchors.registry)):
        raise UpdateRefused("record_mismatch", "the bundle's record is not the published record of the evidence")


def check_fit(device: DeviceFacts, component: str, record: ReleaseRecord, *,
              planned: Mapping[str, Version] | None = None, bundle: BundleHeader | None = None) -> None:
    """Steps 11-15: the release fits this device and component.

    ``planned`` maps other components to the versions installs planned together will bring
    (the tracker's plan); the rest count with their installed (confirmed) version.

    Raises:
        UnknownComponent: no such component.
        UpdateRefused: ``wrong_product``, ``wrong_hardware``, ``no_key_for_hardware`` (with a
            bundle), ``dependency_unmet`` or ``rollback``.
    """
    comp = device.component(component)
    d = record.data
    if d.product != comp.product or comp.vendor not in (None, d.vendor_name):
        want = f"{comp.vendor}/{comp.product}" if comp.vendor else comp.product
        raise UpdateRefused("wrong_product", f"{d.vendor_name}/{d.product} is not for component {component} ({want})")
    hw = check_hardware(device, component, record)
    if bundle is not None and all(r.hardware != hw for r in bundle.encryption.recipients):
        raise UpdateRefused("no_key_for_hardware", f"the bundle has no content key for {hw}")
    after = {c.product: (planned or {}).get(c.name, c.installed) for c in device.components if c.name != component}
    for dep in d.dependencies:
        have = after.get(dep.product)
        if have is None or not dep.allows(have):
            got = "absent" if dep.product not in after else f"at {have}" if have else "not installed"
            raise UpdateRefused("dependency_unmet", f"{d.product} {d.version} needs {dep}; the device's "
                                                    f"{dep.product} is {got}")
    if comp.installed is not None and d.version <= comp.installed:
        raise UpdateRefused("rollback", f"{d.version} is not above the installed {comp.installed} of {component}")
    if d.version < comp.counter:
        raise UpdateRefused("rollback", f"{d.version} is below the anti-rollback counter {comp.counter} of {component}")


def check_hardware(device: DeviceFacts, component: str, record: ReleaseRecord) -> str:
    """Step 12: the record supports the class the component runs on (the add-on board's, else the
    device's own). Returns that class.

    Raises:
        UnknownComponent: no such component.
        UpdateRefused: ``wrong_hardware``.
    """
    hw = device.class_of(component)
    d = record.data
    if hw not in d.supported_hardware:
        where = f"add-on board {hw} {component} runs on" if hw != device.hardware else f"device's class {hw}"
        raise UpdateRefused("wrong_hardware", f"{d.product} {d.version} supports {', '.join(d.supported_hardware)}, "
                                              f"not this {where}")
    return hw


def verify_update(anchors: TrustAnchors, device: DeviceFacts, component: str, bundle: BundleHeader,
                  evidence: Evidence, *, now: float, planned: Mapping[str, Version] | None = None) -> VerifiedUpdate:
    """Every check of the module docstring, in its order; the update may be installed if this returns.

    Raises:
        UpdateRefused: the first check that fails, with its code.
        UnknownComponent: ``component`` is not one of the device's.
    """
    hw = device.class_of(component)
    proven = check_release(anchors, hw, evidence, now=now)
    _check_bundle(anchors, bundle, proven)
    check_fit(device, component, proven.record, planned=planned, bundle=bundle)
    return VerifiedUpdate(component, hw, bundle, proven)


def assess_release(anchors: TrustAnchors, device: DeviceFacts, evidence: Evidence, *, now: float,
                   components: Sequence[str] | None = None) -> dict[str, Any]:
    """Does the device need the release the evidence proves (C11.1.a.iv)? Pure; never raises for a refusal.

    Returns ``{"needed": bool, "component": name | None, "version", "code", "reason"}``: needed when
    the release passes every chain and device check (no bundle needed for this); otherwise the
    code of the first check that fails (``rollback`` when the device already runs it or newer).
    """
    rec = evidence.record
    out: dict[str, Any] = {"needed": False, "component": None, "version": str(rec.data.version),
                           "product": rec.data.product, "vendor": rec.data.vendor_name,
                           "header_hash": "0x" + rec.header_hash.hex(), "code": None, "reason": ""}
    names = list(components) if components is not None else [
        c.name for c in device.bound_to(rec.data.vendor_name, rec.data.product)]
    if not names:
        out.update(code="wrong_product", reason=f"no component runs {rec.data.vendor_name}/{rec.data.product}")
        return out
    try:
        proven = check_release(anchors, device.class_of(names[0]), evidence, now=now)
        out["component"] = names[0]
        check_fit(device, names[0], proven.record)
    except UpdateRefused as exc:
        out.update(code=exc.code, reason=str(exc))
        return out
    out.update(needed=True, reason=f"{names[0]} runs {device.component(names[0]).installed or 'nothing'}; "
                                   f"{rec.data.version} is proven on the ledger")
    return out
