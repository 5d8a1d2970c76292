"""Chain providers: an embedded eth-tester chain or a JSON-RPC node, behind one ``Web3``.

``connect("embedded")`` starts a fresh in-process chain (eth-tester's py-evm backend at its
default fork, Prague: the newest py-evm 0.12 runs); ``connect("http://...")`` talks to a node.
Either way the caller gets a plain ``web3.Web3`` and everything above the provider is the same.

The embedded chain is served by :class:`ledger_node.embedded.EmbeddedProvider` (eth-tester with
``eth_getProof``, a linear ``eth_getLogs`` and exact block JSON answered from py-evm's data).

``dev_accounts`` gives funded accounts with keys on the embedded chain (eth-tester's keys) and on
anvil (its default mnemonic).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

import requests
from eth_account import Account as EthAccount
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic
from eth_account.signers.local import LocalAccount
from web3 import EthereumTesterProvider, HTTPProvider, Web3

from ledger_node.embedded import EmbeddedProvider
from ledger_node.errors import ChainError, ChainUnreachable, ConfigError

__all__ = [
    "ANVIL_MNEMONIC",
    "EMBEDDED",
    "EmbeddedProvider",
    "connect",
    "count_calls",
    "dev_accounts",
    "mnemonic_keys",
    "serialise_embedded",
    "untrusted_rpc_reason",
]

#: the ``rpc`` value that selects the in-process chain
EMBEDDED: Final[str] = "embedded"
#: anvil's (and hardhat's) default dev mnemonic; accounts at m/44'/60'/0'/0/i
ANVIL_MNEMONIC: Final[str] = "test test test test test test test test test test test junk"

# ------------------------------------------------------------------------------ connect


def _one_line(text: str, limit: int = 300) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def untrusted_rpc_reason(rpc: str, ca: Path | None = None) -> str | None:
    """Why a node at ``rpc`` cannot sit inside a tracker's trust boundary (None: it can).

    A tracker attests the headers its node gives it: the node must be embedded, on loopback, or
    reached over HTTPS (its certificate checked, against ``ca`` when pinned).
    """
    if rpc == EMBEDDED:
        return None
    parts = urlsplit(rpc)
    host = (parts.hostname or "").lower()
    loopback = host == "localhost" or host.startswith("127.") or host == "::1"
    if parts.scheme == "http" and not loopback:
        return (f"the node at {rpc} is reached in clear over the network, so anyone on the path could "
                "invent the chain this tracker attests: use a node on loopback, or https:// (pin its CA "
                "with FWLEDGER_RPC_CA / [fwledger] rpc_ca)")
    if ca is not None and parts.scheme != "https":
        return f"rpc_ca is set but {rpc} is not https://"
    return None


def connect(rpc: str, *, timeout: float = 30.0, ca: Path | None = None) -> Web3:
    """Return a ``Web3`` on the embedded chain or on a JSON-RPC node, checked to answer.

    Args:
        rpc: ``"embedded"`` for a fresh in-process chain, or an ``http(s)://`` node URL.
        timeout: seconds each HTTP request may take (unused for the embedded chain).
        ca: the CA file an ``https://`` node's certificate must chain to (else the system's).

    Returns:
        A connected ``Web3``; the node has answered ``eth_chainId``.

    Raises:
        ConfigError: ``rpc`` is neither ``"embedded"`` nor an http(s) URL.
        ChainUnreachable: the node does not answer (one-line message naming the URL).
    """
    retry = None
    if rpc == EMBEDDED:
        w3 = Web3(EmbeddedProvider())
    else:
        parts = urlsplit(rpc)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"rpc must be {EMBEDDED!r} or an http(s) URL, not {rpc!r}")
        kwargs: dict[str, Any] = {"timeout": timeout}
        if ca is not None:
            if not Path(ca).is_file():
                raise ConfigError(f"rpc_ca: no file {ca}")
            kwargs["verify"] = str(ca)
        provider = HTTPProvider(rpc, request_kwargs=kwargs)
        w3 = Web3(provider)
        # probe once without web3's retry back-off, then restore web3's default retries
        retry = provider.exception_retry_configuration
        provider.exception_retry_configuration = None  # type: ignore[assignment]
    try:
        w3.eth.chain_id  # noqa: B018 - the request is the point
    except Exception as exc:  # requests, web3 and JSON errors alike: the node is unusable
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            reason = "connection refused or timed out"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        message = f"cannot reach the Ethereum node at {rpc}: {reason}"
        raise ChainUnreachable(_one_line(message, 160)) from None
    finally:
        if retry is not None:
            cast(HTTPProvider, w3.provider).exception_retry_configuration = retry
    return w3


# ------------------------------------------------------------------------- dev accounts


def _tester_keys(n: int) -> list[bytes]:
    # eth-tester's PyEVMBackend funds the accounts whose private keys are 1, 2, ..., 10
    return [i.to_bytes(32, "big") for i in range(1, n + 1)]


def mnemonic_keys(n: int) -> list[bytes]:
    """Private keys of the default development mnemonic (anvil, hardhat) at m/44'/60'/0'/0/i."""
    seed = seed_from_mnemonic(ANVIL_MNEMONIC, "")
    return [key_from_seed(seed, f"m/44'/60'/0'/0/{i}") for i in range(n)]


def dev_accounts(w3: Web3, n: int = 10) -> list[LocalAccount]:
    """Return ``n`` funded development accounts with their private keys.

    On the embedded chain these are eth-tester's default accounts (private keys 1..10); on an
    anvil (or hardhat) node, the default mnemonic's accounts at ``m/44'/60'/0'/0/i``.

    Args:
        w3: a connected ``Web3`` (see :func:`connect`).
        n: how many accounts, 1 to 10 on an unconfigured node.

    Returns:
        The accounts, each with a balance on the chain.

    Raises:
        ValueError: ``n`` is less than 1.
        ChainError: the chain is neither of the two, or fewer than ``n`` of its accounts are
            funded, or the node fails to answer.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    candidates = (
        [_tester_keys, mnemonic_keys]
        if isinstance(w3.provider, EthereumTesterProvider)
        else [mnemonic_keys, _tester_keys]
    )
    try:
        for make_keys in candidates:
            first = EthAccount.from_key(make_keys(1)[0])
            if w3.eth.get_balance(first.address) == 0:
                continue
            accounts: list[LocalAccount] = [EthAccount.from_key(key) for key in make_keys(n)]
            unfunded = [a.address for a in accounts if w3.eth.get_balance(a.address) == 0]
            if unfunded:
                raise ChainError(
                    f"only {n - len(unfunded)} of the {n} development accounts are funded "
                    f"(first unfunded: {unfunded[0]})"
                )
            return accounts
    except ChainError:
        raise
    except Exception as exc:
        raise ChainError(_one_line(f"cannot read development balances: {exc}")) from None
    raise ChainError(
        "no funded development accounts: the chain is neither the embedded chain nor an "
        "anvil/hardhat node with its default mnemonic"
    )


def serialise_embedded(w3: Web3) -> None:
    """Put one lock around every request to an in-process chain; a no-op for a JSON-RPC node.

    eth-tester is not thread-safe. The lock is installed on the provider itself (attribute
    ``_fwledger_lock``), so every entity sharing the same ``Web3`` (server, tracker, the caller's
    own transactions) takes the same lock.
    """
    import threading

    provider = w3.provider
    if not isinstance(provider, EmbeddedProvider) or getattr(provider, "_fwledger_lock", None) is not None:
        return
    lock = threading.RLock()
    inner = provider.make_request

    def make_request(method: Any, params: Any) -> Any:
        with lock:
            return inner(method, params)

    provider._fwledger_lock = lock  # type: ignore[attr-defined]
    provider.make_request = make_request  # type: ignore[method-assign]
    provider._request_func_cache = (None, None)  # type: ignore[assignment]  # rebuild with the locked call


def count_calls(w3: Web3) -> dict[str, int]:
    """Count, per method, every JSON-RPC call made through ``w3`` from now on (a party's "chain
    queries"); returns the live counts. Wraps the provider's ``make_request`` and resets web3's
    cached request chain so that it goes through the wrapper."""
    calls: dict[str, int] = {}
    provider: Any = w3.provider
    inner = provider.make_request

    def counted(method: Any, params: Any) -> Any:
        calls[str(method)] = calls.get(str(method), 0) + 1
        return inner(method, params)

    provider.make_request = counted
    provider._request_func_cache = (None, None)
    return calls
