"""What a registry deployment and its storage words are, without the chain stack.

The deployment record every party keeps (:class:`Deployment`), and the decoded storage words a
light node proves (:class:`ReleaseEntry`, :class:`Policy`). Devices import this module; the
transaction side (:mod:`ledger_node.registry`, web3 and eth-tester) stays with full nodes,
authors and administrators.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ledger_node.codec.hashing import to_checksum_address

from .errors import ConfigError
from .fsutil import atomic_write_json, read_json
from .record import Version

__all__ = [
    "EXISTS",
    "HEAD",
    "POLICY_ALLOWED",
    "POLICY_SET",
    "REVOKED",
    "VULNERABLE",
    "Deployment",
    "HardwareClass",
    "Policy",
    "ReleaseEntry",
    "deployment_path",
    "load_deployment",
    "save_deployment",
]

# release entry and policy word flags (see contracts/ReleaseRegistry.vy)
EXISTS, REVOKED, VULNERABLE, HEAD = 1, 2, 4, 8
POLICY_SET, POLICY_ALLOWED = 1, 2


@dataclass(frozen=True)
class Deployment:
    """Where the registry lives: written once at deploy time, read by every other command."""

    address: str
    chain_id: int
    block: int
    tx: str
    code_hash: str
    source_sha256: str
    abi: list[dict[str, Any]] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Deployment:
        """Raises:
            ConfigError: fields missing or of the wrong type.
        """
        try:
            return cls(address=to_checksum_address(obj["address"]), chain_id=int(obj["chain_id"]),
                       block=int(obj["block"]), tx=str(obj["tx"]), code_hash=str(obj["code_hash"]),
                       source_sha256=str(obj["source_sha256"]), abi=list(obj["abi"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad deployment record: {exc!r}") from exc


def deployment_path(home: Path, chain_id: int) -> Path:
    return Path(home) / "deployments" / f"{chain_id}.json"


def save_deployment(home: Path, dep: Deployment) -> Path:
    """Write the deployment record atomically under ``home/deployments/<chain_id>.json``.

    Raises:
        ConfigError: cannot write.
    """
    path = deployment_path(home, dep.chain_id)
    atomic_write_json(path, dep.to_json())
    return path


def load_deployment(home: Path, chain_id: int) -> Deployment:
    """Raises:
        ConfigError: no registry was deployed on this chain from this home, or the record is bad.
    """
    path = deployment_path(home, chain_id)
    if not path.exists():
        raise ConfigError(f"no registry deployed on chain {chain_id} from {home}: run 'fwledger chain deploy'")
    return Deployment.from_json(read_json(path))


@dataclass(frozen=True)
class ReleaseEntry:
    """A release's storage word: what the chain enforces and a light node proves."""

    exists: bool
    revoked: bool
    vulnerable: bool
    head: bool
    version: Version | None

    @classmethod
    def from_word(cls, word: int) -> ReleaseEntry:
        """Raises:
            RecordError: the word's version bits are out of range (not written by the registry).
        """
        if not word & EXISTS:
            return cls(False, False, False, False, None)
        return cls(True, bool(word & REVOKED), bool(word & VULNERABLE), bool(word & HEAD),
                   Version.unpack(word >> 8))


@dataclass(frozen=True)
class HardwareClass:
    hw_id: str
    registered: bool
    revision: int
    enc_key: bytes


@dataclass(frozen=True)
class Policy:
    """An update policy word: unset means any version the records support."""

    set: bool
    allowed: bool
    min_version: Version
    max_version: Version

    @classmethod
    def from_word(cls, word: int) -> Policy:
        cap = (1 << 48) - 1  # the contract stores uint64; versions use 48 bits
        return cls(bool(word & POLICY_SET), bool(word & POLICY_ALLOWED),
                   Version.unpack(min((word >> 8) & ((1 << 64) - 1), cap)),
                   Version.unpack(min((word >> 72) & ((1 << 64) - 1), cap)))

    def permits(self, version: Version) -> bool:
        if not self.set:
            return True
        return self.allowed and self.min_version <= version <= self.max_version
