"""The project's exception tree: one root, a few meaningful branches.

Every error a user can cause or meet derives from :class:`FwledgerError`; the CLI maps each
branch to a one-line message and an exit code. Nothing below raises web3, requests or OSError
exceptions to its callers unwrapped.
"""

from __future__ import annotations

__all__ = [
    "ChainError",
    "ChainUnreachable",
    "ConfigError",
    "ContractRevert",
    "DevnetError",
    "FwledgerError",
    "IndexCorruption",
    "ProofError",
    "RecordError",
    "VerificationError",
]


class FwledgerError(Exception):
    """Root of every error raised by fwledger."""

    #: exit code the CLI uses for this error
    exit_code = 1


class ConfigError(FwledgerError):
    """Bad configuration, missing deployment record, bad key file, bad option value."""


class ChainError(FwledgerError):
    """Transport to the chain failed, or the chain answered something unusable."""


class ChainUnreachable(ChainError):
    """The JSON-RPC node could not be reached."""


class ContractRevert(ChainError):
    """The registry refused a transaction; ``reason`` is the contract's own words."""

    def __init__(self, reason: str, *, function: str = "") -> None:
        self.reason = reason
        self.function = function
        super().__init__(f"{function}: refused by the registry: {reason}" if function else
                         f"refused by the registry: {reason}")


class RecordError(FwledgerError):
    """A Table II.1 release record is malformed or fails validation."""


class VerificationError(FwledgerError):
    """Data failed a trust check (hash, signature, chain order)."""


class ProofError(VerificationError):
    """A block header, account proof or storage proof does not verify."""


class IndexCorruption(FwledgerError):
    """The full node's local index is unreadable or inconsistent."""


class DevnetError(FwledgerError):
    """The local anvil devnet could not be started, stopped or found."""
