"""Compile the contracts in ``contracts/`` in-process with Vyper (no bytecode kept in Python)."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger_node.codec.hashing import keccak

from .errors import ConfigError

__all__ = ["EVM_VERSION", "CompiledContract", "compile_contract", "contracts_dir", "registry_contract"]

#: the fork the contracts are compiled for; Vyper's storage layout depends on it
EVM_VERSION = "prague"
REGISTRY_FILE = "ReleaseRegistry.vy"


def contracts_dir() -> Path:
    """The folder holding the Vyper sources (``FWLEDGER_CONTRACTS`` overrides)."""
    env = os.environ.get("FWLEDGER_CONTRACTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "contracts"


@dataclass(frozen=True)
class CompiledContract:
    """A compiled contract: what deployment and light-node verification need."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    runtime_bytecode: bytes
    storage_slots: dict[str, int]
    source_sha256: str

    @property
    def runtime_code_hash(self) -> bytes:
        """keccak256 of the runtime code: the ``codeHash`` an account proof must show."""
        return keccak(self.runtime_bytecode)

    def slot(self, variable: str) -> int:
        """The base storage slot of a state variable, from the compiler's layout.

        Raises:
            ConfigError: no such variable.
        """
        try:
            return self.storage_slots[variable]
        except KeyError as exc:
            raise ConfigError(f"{self.name} has no storage variable {variable!r}") from exc


@functools.lru_cache(maxsize=8)
def _compile(source: str, name: str) -> CompiledContract:
    import vyper
    from vyper.compiler.settings import Settings
    from vyper.exceptions import VyperException

    try:
        out = vyper.compile_code(
            source,
            output_formats=["abi", "bytecode", "bytecode_runtime", "layout"],
            settings=Settings(evm_version=EVM_VERSION),
        )
    except VyperException as exc:
        raise ConfigError(f"cannot compile {name}: {str(exc).splitlines()[0]}") from exc
    layout = out["layout"].get("storage_layout", out["layout"])
    return CompiledContract(
        name=name,
        abi=out["abi"],
        bytecode=bytes.fromhex(out["bytecode"].removeprefix("0x")),
        runtime_bytecode=bytes.fromhex(out["bytecode_runtime"].removeprefix("0x")),
        storage_slots={k: int(v["slot"]) for k, v in layout.items()},
        source_sha256=hashlib.sha256(source.encode()).hexdigest(),
    )


def compile_contract(path: Path) -> CompiledContract:
    """Compile one Vyper source file (cached by content).

    Raises:
        ConfigError: the file is missing or does not compile.
    """
    try:
        source = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read contract source {path}: {exc.strerror or exc}") from exc
    return _compile(source, Path(path).stem)


def registry_contract() -> CompiledContract:
    """The release registry, compiled from ``contracts/ReleaseRegistry.vy``.

    Raises:
        ConfigError: the source is missing or does not compile.
    """
    return compile_contract(contracts_dir() / REGISTRY_FILE)
