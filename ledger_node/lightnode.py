"""The light node: what a device can know about a release from a block header and proofs.

Pure verification (:func:`verify_release`): block header -> state root -> the registry's
account proof (code hash pinned) -> storage proofs of

- the release's word ``releases[line][header_hash]`` (exists, revoked, vulnerable, head, version),
- the vendor's current address ``vendor_address[keccak(name)]`` and that it is active
  (``vendor_name_hash[address] == keccak(name)``),
- optionally the policy word ``policies[keccak(hw_id)][line]`` for one hardware class.

For an author (:func:`verify_author_view`, X.1368 Figure II.2): the hardware classes' words
``hardware[keccak(id)]`` (registered, revision, X25519 key), the vendor's address and status, and
the head of a product line (``releases[line][head]``, or ``line_vendor[line]`` zero when empty).

The record itself is checked by hash: the header hash a device recomputes from the record's
fields is the key of the proven storage word, so a record that differs in any field proves
nothing. The I/O adapter :func:`ledger_node.proof_fetch.fetch_release_proof` asks a node for the
same data (``eth_getBlockByNumber`` + ``eth_getProof``); this module does no I/O and imports no
chain stack (devices load it).

Where the registry keeps its state comes either from a :class:`~ledger_node.compiler.CompiledContract`
(a full node, the author, tests) or from a :class:`RegistryLayout`: the runtime code hash and the
base storage slots as provisioned into a device, which cannot run the Vyper compiler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger_node.codec.hashing import keccak, to_checksum_address

from .compiler import CompiledContract
from .errors import ConfigError, ProofError
from .header import BlockHeader, decode_header
from .proofs import AccountProof, verify_proof_result, vyper_hashmap_slot
from .record import ReleaseRecord, line_id
from .registry_types import Policy, ReleaseEntry

__all__ = [
    "AuthorSlots",
    "ProvenAuthorView",
    "ProvenClass",
    "RegistryLayout",
    "ReleaseSlots",
    "VerifiedRelease",
    "author_slots",
    "release_slots",
    "verify_author_view",
    "verify_release",
]

#: the registry's state variables a light node reads (see contracts/ReleaseRegistry.vy)
LAYOUT_VARIABLES = ("releases", "vendor_address", "vendor_name_hash", "policies")


@dataclass(frozen=True)
class RegistryLayout:
    """The registry's runtime code hash and base storage slots, without the compiler.

    What a device is provisioned with (its trust anchors) so that it can locate and pin the
    registry's storage; interchangeable with a ``CompiledContract`` wherever slots are needed.
    """

    code_hash: bytes
    slots: Mapping[str, int] = field(default_factory=dict)

    @property
    def runtime_code_hash(self) -> bytes:
        """The ``codeHash`` an account proof of the registry must show."""
        return self.code_hash

    def slot(self, variable: str) -> int:
        """The base storage slot of a state variable.

        Raises:
            ConfigError: the layout does not have it.
        """
        try:
            return int(self.slots[variable])
        except KeyError as exc:
            raise ConfigError(f"the registry layout has no storage variable {variable!r}") from exc

    @classmethod
    def from_compiled(cls, compiled: CompiledContract,
                      variables: tuple[str, ...] = LAYOUT_VARIABLES) -> RegistryLayout:
        """The part of a compiled contract a light node needs.

        Raises:
            ConfigError: the contract lacks one of ``variables``.
        """
        return cls(compiled.runtime_code_hash, {v: compiled.slot(v) for v in variables})

    def to_json(self) -> dict[str, Any]:
        return {"code_hash": "0x" + self.code_hash.hex(), "slots": {k: int(v) for k, v in sorted(self.slots.items())}}

    @classmethod
    def from_json(cls, obj: Any) -> RegistryLayout:
        """Inverse of :meth:`to_json`.

        Raises:
            ConfigError: missing or malformed fields.
        """
        try:
            code_hash = bytes.fromhex(str(obj["code_hash"]).removeprefix("0x"))
            slots = {str(k): int(v) for k, v in dict(obj["slots"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad registry layout: {exc!r}") from exc
        if len(code_hash) != 32 or any(not 0 <= v < 2**256 for v in slots.values()):
            raise ConfigError("bad registry layout: code hash must be 32 bytes, slots 256-bit")
        return cls(code_hash, slots)


@dataclass(frozen=True)
class ReleaseSlots:
    """The storage slots that prove one release (and optionally one policy)."""

    entry: int
    vendor_address: int
    policy: int | None
    vendor_name_hash_base: int

    def vendor_active(self, vendor: bytes) -> int:
        """Slot of ``vendor_name_hash[vendor]``; depends on the proven vendor address."""
        return vyper_hashmap_slot(self.vendor_name_hash_base, vendor)


def release_slots(compiled: CompiledContract | RegistryLayout, record: ReleaseRecord,
                  hw_id: str | None = None) -> ReleaseSlots:
    """Compute the slots proving ``record`` (and ``hw_id``'s policy for its line).

    Raises:
        ConfigError: the contract or layout lacks a variable.
    """
    line = record.line
    return ReleaseSlots(
        entry=vyper_hashmap_slot(compiled.slot("releases"), line, record.header_hash),
        vendor_address=vyper_hashmap_slot(compiled.slot("vendor_address"), keccak(record.data.vendor_name.encode())),
        policy=(vyper_hashmap_slot(compiled.slot("policies"), keccak(hw_id.encode()), line)
                if hw_id is not None else None),
        vendor_name_hash_base=compiled.slot("vendor_name_hash"),
    )


@dataclass(frozen=True)
class VerifiedRelease:
    """Facts proven about a release at one block."""

    block: BlockHeader
    entry: ReleaseEntry
    vendor_address: str | None
    vendor_active: bool
    policy: Policy | None

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {
            "block": self.block.number,
            "block_hash": "0x" + self.block.hash.hex(),
            "state_root": "0x" + self.block.state_root.hex(),
            "exists": e.exists, "revoked": e.revoked, "vulnerable": e.vulnerable, "head": e.head,
            "version": str(e.version) if e.version else None,
            "vendor_address": self.vendor_address, "vendor_active": self.vendor_active,
            "policy": None if self.policy is None else {
                "set": self.policy.set, "allowed": self.policy.allowed,
                "min_version": str(self.policy.min_version), "max_version": str(self.policy.max_version)},
        }


def _registry_storage(header_rlp: bytes, block_hash: bytes, proof: AccountProof, registry_address: str,
                      code_hash: bytes) -> tuple[BlockHeader, Callable[[int, str], int]]:
    """The header (hashing to ``block_hash``) and a reader of the registry's proven storage words.

    Raises:
        ProofError: the header does not hash to ``block_hash``, the proof is not the registry's, the
            registry's code is not the expected one, a proof fails; the reader: a slot not covered.
    """
    header = decode_header(header_rlp, block_hash)
    if proof.address != bytes.fromhex(registry_address.removeprefix("0x")):
        raise ProofError("the proof is for another account than the registry")
    account, values = verify_proof_result(header.state_root, proof)
    if account is None:
        raise ProofError("the registry does not exist at this block")
    if account.code_hash != code_hash:
        raise ProofError("the registry account's code is not the expected registry code")

    def proven(slot: int, what: str) -> int:
        if slot not in values:
            raise ProofError(f"the proof does not cover the {what}")
        return values[slot]

    return header, proven


def verify_release(*, header_rlp: bytes, block_hash: bytes, registry_address: str, code_hash: bytes,
                   compiled: CompiledContract | RegistryLayout, record: ReleaseRecord, proof: AccountProof,
                   hw_id: str | None = None) -> VerifiedRelease:
    """Verify what the chain says about ``record`` at the block ``block_hash``.

    ``block_hash`` must come from a trusted source (the trackers' k-of-n attestation);
    everything else may come from anyone. ``compiled`` locates the registry's storage: the
    compiled contract, or the :class:`RegistryLayout` a device was provisioned with.

    Raises:
        ProofError: the header does not hash to ``block_hash``, the proof is not for the
            registry, the registry's code is not the expected one, a proof fails, or a slot
            this verification needs is missing from the proof.
        RecordError: the record is malformed.
        ConfigError: the layout lacks one of the registry's storage variables.
    """
    header, proven = _registry_storage(header_rlp, block_hash, proof, registry_address, code_hash)
    slots = release_slots(compiled, record, hw_id)

    entry = ReleaseEntry.from_word(proven(slots.entry, "release entry"))
    if entry.exists and entry.version != record.data.version:
        raise ProofError("the proven release entry's version differs from the record's")
    vendor_word = proven(slots.vendor_address, "vendor address")
    vendor = vendor_word.to_bytes(32, "big")[12:] if vendor_word else None
    active = False
    if vendor is not None:
        name_hash = proven(slots.vendor_active(vendor), "vendor status")
        active = name_hash.to_bytes(32, "big") == keccak(record.data.vendor_name.encode())
    policy = Policy.from_word(proven(slots.policy, "policy")) if slots.policy is not None else None
    return VerifiedRelease(block=header, entry=entry,
                           vendor_address=to_checksum_address(vendor) if vendor else None,
                           vendor_active=active, policy=policy)


# ------------------------------------------------------------------------------ the author as a light node

#: members of ``HardwareClass`` (contracts/ReleaseRegistry.vy) in storage order from the entry's slot
HARDWARE_REGISTERED, HARDWARE_REVISION, HARDWARE_ENC_KEY = 0, 1, 2


@dataclass(frozen=True)
class AuthorSlots:
    """The storage slots that prove what an author builds on (X.1368 Figure II.2: a light node).

    ``hardware[hw]`` is the slot of ``hardware[keccak(hw)]``: the struct's ``registered``, then
    ``revision`` and ``enc_key`` in the next two slots. ``head_entry`` is ``releases[line][head]``
    for the head the author was told of (None: told the line is empty; ``line_vendor[line]`` then
    proves it).
    """

    vendor_address: int
    vendor_name_hash_base: int
    hardware: Mapping[str, int]
    line_vendor: int
    head_entry: int | None

    def vendor_active(self, vendor: bytes) -> int:
        """Slot of ``vendor_name_hash[vendor]``; depends on the proven vendor address."""
        return vyper_hashmap_slot(self.vendor_name_hash_base, vendor)

    def first_round(self) -> list[int]:
        """Every slot but the vendor's status (which needs the vendor address proven first)."""
        out = [self.vendor_address, self.line_vendor]
        for base in self.hardware.values():
            out += [base + HARDWARE_REGISTERED, base + HARDWARE_REVISION, base + HARDWARE_ENC_KEY]
        return out + ([self.head_entry] if self.head_entry is not None else [])


def author_slots(compiled: CompiledContract | RegistryLayout, *, vendor_name: str, product: str,
                 hardware: Sequence[str], head: bytes | None) -> AuthorSlots:
    """Compute the slots proving a vendor's standing, hardware classes and a product line's head.

    Raises:
        ConfigError: the contract or layout lacks a variable.
    """
    line = line_id(vendor_name, product)
    return AuthorSlots(
        vendor_address=vyper_hashmap_slot(compiled.slot("vendor_address"), keccak(vendor_name.encode())),
        vendor_name_hash_base=compiled.slot("vendor_name_hash"),
        hardware={hw: vyper_hashmap_slot(compiled.slot("hardware"), keccak(hw.encode())) for hw in hardware},
        line_vendor=vyper_hashmap_slot(compiled.slot("line_vendor"), line),
        head_entry=vyper_hashmap_slot(compiled.slot("releases"), line, head) if head is not None else None,
    )


@dataclass(frozen=True)
class ProvenClass:
    """A hardware class as proven from storage."""

    registered: bool
    revision: int
    enc_key: bytes


@dataclass(frozen=True)
class ProvenAuthorView:
    """Facts proven about a vendor, its hardware classes and one product line at one block."""

    block: BlockHeader
    vendor_address: str | None
    vendor_active: bool
    classes: Mapping[str, ProvenClass]
    line_started: bool
    head_entry: ReleaseEntry | None

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block.number, "block_hash": "0x" + self.block.hash.hex(),
                "state_root": "0x" + self.block.state_root.hex(), "vendor_address": self.vendor_address,
                "vendor_active": self.vendor_active, "line_started": self.line_started,
                "classes": {hw: {"registered": c.registered, "revision": c.revision, "enc_key": "0x" + c.enc_key.hex()}
                            for hw, c in self.classes.items()}}


def verify_author_view(*, header_rlp: bytes, block_hash: bytes, registry_address: str, code_hash: bytes,
                       compiled: CompiledContract | RegistryLayout, proof: AccountProof, vendor_name: str,
                       product: str, hardware: Sequence[str], head: bytes | None) -> ProvenAuthorView:
    """Verify, at the block ``block_hash``, what an author relies on before it encrypts and signs.

    ``block_hash`` must come from a trusted source (k of n tracker attestations, or a second node
    agreeing); the header and the proof may come from anyone.

    Raises:
        ProofError: the header does not hash to ``block_hash``, the proof is not the registry's, the
            registry's code is not the expected one, a proof fails or does not cover a slot.
        ConfigError: the layout lacks one of the registry's storage variables.
    """
    header, proven = _registry_storage(header_rlp, block_hash, proof, registry_address, code_hash)
    slots = author_slots(compiled, vendor_name=vendor_name, product=product, hardware=hardware, head=head)

    vendor_word = proven(slots.vendor_address, "vendor address")
    vendor = vendor_word.to_bytes(32, "big")[12:] if vendor_word else None
    active = False
    if vendor is not None:
        name_hash = proven(slots.vendor_active(vendor), "vendor status")
        active = name_hash.to_bytes(32, "big") == keccak(vendor_name.encode())
    classes = {}
    for hw, base in slots.hardware.items():
        classes[hw] = ProvenClass(
            registered=proven(base + HARDWARE_REGISTERED, f"hardware class {hw}") == 1,
            revision=proven(base + HARDWARE_REVISION, f"hardware class {hw}'s revision"),
            enc_key=proven(base + HARDWARE_ENC_KEY, f"hardware class {hw}'s key").to_bytes(32, "big"))
    started = proven(slots.line_vendor, "product line") != 0
    entry = (ReleaseEntry.from_word(proven(slots.head_entry, "head release entry"))
             if slots.head_entry is not None else None)
    return ProvenAuthorView(block=header, vendor_address=to_checksum_address(vendor) if vendor else None,
                            vendor_active=active, classes=classes, line_started=started, head_entry=entry)
