"""The firmware server's proofs: a trusted header and the registry's storage proofs (I/O).

:class:`LedgerProver` takes block headers from a :class:`~entities.header_sources.HeaderSource`
(k of n tracker attestations, a second node agreeing, or the server's own embedded/loopback node)
and asks the server's node for ``eth_getProof`` answers, verified by :mod:`ledger_node.lightnode`.
The judgement is :mod:`.proven`'s.

The trusted header is kept and refreshed by the ledger follower after each sync
(:meth:`LedgerProver.refresh`), or on demand when it is older than ``max_age`` seconds. Proofs
are cached per header (a download and its ``Range`` resumes cost one proof). Every failure is a
:class:`.policy.Refusal` ``ledger_unproven``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from web3 import Web3

from entities.header_sources import HeaderSource, TrustedHeader, UntrustedHeader, describe_source
from ledger_node.compiler import CompiledContract, registry_contract
from ledger_node.errors import ChainError, ConfigError, ProofError
from ledger_node.fullnode import IndexedRelease
from ledger_node.header import decode_header
from ledger_node.lightnode import ProvenAuthorView, VerifiedRelease, verify_author_view, verify_release
from ledger_node.proof_fetch import fetch_author_proof, fetch_release_proof
from ledger_node.registry import Deployment

from .policy import Refusal

__all__ = ["LedgerProver"]

T = TypeVar("T")

#: proofs kept per trusted header
MAX_CACHED = 1024


def unproven(message: str) -> Refusal:
    return Refusal("ledger_unproven", " ".join(message.split()))


class LedgerProver:
    """Proofs of what the server relies on, at a header ``source`` makes trusted.

    Raises (from the constructor):
        ConfigError: the registry's deployed code is not the code compiled from contracts/ (its
            storage layout is unknown).
    """

    def __init__(self, w3: Web3, deployment: Deployment, source: HeaderSource, *,
                 compiled: CompiledContract | None = None, max_age: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.w3, self.source, self.max_age, self.clock = w3, source, max_age, clock
        self.compiled = compiled or registry_contract()
        self.registry = deployment.address
        self.chain_id = int(deployment.chain_id)
        self.code_hash = bytes.fromhex(deployment.code_hash.removeprefix("0x"))
        if self.compiled.runtime_code_hash != self.code_hash:
            raise ConfigError("the registry's deployed code is not the code compiled from contracts/: its storage "
                              "cannot be proven (update this checkout)")
        self._lock = threading.Lock()
        self._header: TrustedHeader | None = None
        self._taken = 0.0
        self._cache: dict[tuple[Any, ...], Any] = {}

    @property
    def describe(self) -> str:
        """Where the trusted headers come from, for the start-up log."""
        return describe_source(self.source)

    def current(self) -> TrustedHeader | None:
        """The trusted header held now (None before the first)."""
        with self._lock:
            return self._header

    def refresh(self, at_least: int = 0, wait: float = 0.0) -> TrustedHeader:
        """Take a new trusted header (at or above block ``at_least``, waiting ``wait`` seconds at most
        for one): the source's newest, even below the held one (the chain reorganised or was reset).

        Raises:
            Refusal: ``ledger_unproven``: no header can be trusted.
        """
        try:
            got = self.source.header(self.w3, chain_id=self.chain_id, registry=self.registry,
                                     at_least=at_least, wait=wait)
        except UntrustedHeader as exc:
            raise unproven(f"no trusted block header: {exc}") from None
        with self._lock:
            if self._header is None or got.block_hash != self._header.block_hash:
                self._header, self._cache = got, {}
            self._taken = self.clock()
            return self._header

    def header(self, at_least: int = 0) -> TrustedHeader:
        """The held header if it is at or above ``at_least`` and younger than ``max_age``, else a new one.

        Raises:
            Refusal: ``ledger_unproven``.
        """
        with self._lock:
            held, taken = self._header, self._taken
        if held is not None and held.number >= at_least and self.clock() - taken <= self.max_age:
            return held
        got = self.refresh(at_least)
        if got.number < at_least:
            raise unproven(f"the newest trusted block is {got.number}; block {at_least} is needed")
        return got

    def _cached(self, header: TrustedHeader, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        full = (header.block_hash, *key)
        with self._lock:
            if full in self._cache:
                return self._cache[full]  # type: ignore[no-any-return]
        try:
            value = make()
        except (ChainError, ProofError, ConfigError) as exc:
            raise unproven(f"cannot prove the ledger at block {header.number} ({header.source}): {exc}") from None
        with self._lock:
            if self._header is header and len(self._cache) < MAX_CACHED:
                self._cache[full] = value
        return value

    def release(self, rel: IndexedRelease, hw: str | None = None, *, at_least: int = 0) -> VerifiedRelease:
        """The release's entry, its vendor's standing and (``hw``) the policy of ``hw`` for its line,
        proven at the trusted header (at or above block ``at_least``).

        Raises:
            Refusal: ``ledger_unproven``: no trusted header, no usable or valid proof.
        """
        header = self.header(at_least)

        def make() -> VerifiedRelease:
            _, _, proof = fetch_release_proof(self.w3, self.compiled, self.registry, rel.record,
                                              block=header.block_hash, hw_id=hw)
            return verify_release(header_rlp=header.header_rlp, block_hash=header.block_hash,
                                  registry_address=self.registry, code_hash=self.code_hash, compiled=self.compiled,
                                  record=rel.record, proof=proof, hw_id=hw)

        return self._cached(header, ("release", rel.header_hash, hw), make)

    def vendor(self, vendor_name: str, *, product: str = "", hardware: Sequence[str] = (),
               at_least: int = 0) -> ProvenAuthorView:
        """The vendor name's key and standing, and the ``hardware`` classes, proven at the trusted header.

        Raises:
            Refusal: ``ledger_unproven``.
        """
        header = self.header(at_least)
        hw = tuple(hardware)

        def make() -> ProvenAuthorView:
            proof = fetch_author_proof(self.w3, self.compiled, self.registry, block=header.block_hash,
                                       vendor_name=vendor_name, product=product, hardware=hw, head=None,
                                       state_root=decode_header(header.header_rlp).state_root)
            return verify_author_view(header_rlp=header.header_rlp, block_hash=header.block_hash,
                                      registry_address=self.registry, code_hash=self.code_hash,
                                      compiled=self.compiled, proof=proof, vendor_name=vendor_name,
                                      product=product, hardware=hw, head=None)

        return self._cached(header, ("vendor", vendor_name, product, hw), make)
