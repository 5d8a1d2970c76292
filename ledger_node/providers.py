"""Chain providers: an embedded eth-tester chain or a JSON-RPC node, behind one ``Web3``.

``connect("embedded")`` starts a fresh in-process chain (eth-tester's py-evm backend at its
default fork, Prague: the newest py-evm 0.12 runs); ``connect("http://...")`` talks to a node.
Either way the caller gets a plain ``web3.Web3`` and everything above the provider is the same.

The embedded chain is served by :class:`EmbeddedProvider`, which answers three methods from
py-evm's own data instead of eth-tester's, in the JSON shape geth and anvil use:

* ``eth_getProof``: eth-tester has none; built from the state and storage tries in py-evm's
  database, proofs of absence included.
* ``eth_getLogs``: eth-tester's path finds each log's transaction by scanning back from the head,
  which is quadratic in chain length; this one reads each block's receipts once (linear in the
  range, and blocks whose bloom cannot match are skipped) and numbers logs block-wide.
* ``eth_getBlockByNumber`` / ``eth_getBlockByHash``: eth-tester pads ``extraData`` to 32 bytes
  and reports ``logsBloom`` as an int (so web3 shows ``0x00``); here every header field comes
  from py-evm's header, so the JSON rebuilds to the block hash
  (:func:`ledger_node.header.header_rlp_from_json`).

``dev_accounts`` gives funded accounts with keys on the embedded chain (eth-tester's keys) and on
anvil (its default mnemonic).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

import requests
import rlp
from eth_account import Account as EthAccount
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic
from eth_account.signers.local import LocalAccount
from eth_bloom import BloomFilter
from eth_typing import BlockNumber, Hash32
from eth_utils import keccak
from trie import HexaryTrie
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.middleware.formatting import FormattingMiddlewareBuilder
from web3.providers.eth_tester.middleware import (
    default_transaction_fields_middleware,
    request_formatters,
    result_formatters,
)
from web3.types import RPCEndpoint, RPCResponse

from ledger_node.errors import ChainError, ChainUnreachable, ConfigError

if TYPE_CHECKING:
    from eth.abc import BlockHeaderAPI, ChainAPI

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

_BLANK_ROOT: Final[bytes] = keccak(rlp.encode(b""))
_EMPTY_CODE_HASH: Final[bytes] = keccak(b"")
_TAGS_FOR_HEAD: Final[frozenset[str]] = frozenset({"latest", "safe", "finalized", "pending"})

#: py-evm header field -> JSON-RPC name, for every header field up to Prague
_HEADER_JSON_NAMES: Final[dict[str, str]] = {
    "parent_hash": "parentHash",
    "uncles_hash": "sha3Uncles",
    "coinbase": "miner",
    "state_root": "stateRoot",
    "transaction_root": "transactionsRoot",
    "receipt_root": "receiptsRoot",
    "bloom": "logsBloom",
    "difficulty": "difficulty",
    "block_number": "number",
    "gas_limit": "gasLimit",
    "gas_used": "gasUsed",
    "timestamp": "timestamp",
    "extra_data": "extraData",
    "mix_hash": "mixHash",
    "nonce": "nonce",
    "base_fee_per_gas": "baseFeePerGas",
    "withdrawals_root": "withdrawalsRoot",
    "blob_gas_used": "blobGasUsed",
    "excess_blob_gas": "excessBlobGas",
    "parent_beacon_block_root": "parentBeaconBlockRoot",
    "requests_hash": "requestsHash",
}
_QUANTITY_FIELDS: Final[frozenset[str]] = frozenset(
    {"difficulty", "block_number", "gas_limit", "gas_used", "timestamp", "base_fee_per_gas",
     "blob_gas_used", "excess_blob_gas"}
)

#: methods EmbeddedProvider answers itself; eth-tester's formatting must not touch them
_OWN_METHODS: Final[frozenset[str]] = frozenset(
    {"eth_getProof", "eth_getLogs", "eth_getBlockByNumber", "eth_getBlockByHash"}
)


def _block_at(index: int, inner: Callable[[Any], Any] | None = None) -> Callable[[Any], Any]:
    """A request formatter turning a hex block number at ``params[index]`` into an int.

    web3's eth-tester middleware does this for most methods but not for ``eth_getStorageAt``
    and ``eth_estimateGas``, where eth-tester then refuses any block number given in hex.
    """

    def formatter(params: Any) -> Any:
        out = list(inner(params) if inner is not None else params)
        if len(out) > index and isinstance(out[index], str) and out[index][:2] == "0x":
            out[index] = int(out[index], 16)
        return out

    return formatter


_request_formatters = {k: v for k, v in request_formatters.items() if k not in _OWN_METHODS}
_request_formatters[RPCEndpoint("eth_getStorageAt")] = _block_at(2)
_request_formatters[RPCEndpoint("eth_estimateGas")] = _block_at(
    1, request_formatters.get(RPCEndpoint("eth_estimateGas"))
)
_tester_formatting = FormattingMiddlewareBuilder.build(
    request_formatters=_request_formatters,
    result_formatters={k: v for k, v in (result_formatters or {}).items() if k not in _OWN_METHODS},
)


class _InvalidParams(Exception):
    """A request the embedded provider refuses, answered as a JSON-RPC error."""

    def __init__(self, message: str, code: int = -32602) -> None:
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- JSON helpers


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _quantity(value: int) -> str:
    return hex(value)


def _param_bytes(name: str, value: Any, size: int | None = None) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str) and value[:2] in ("0x", "0X"):
        text = value[2:]
        try:
            raw = bytes.fromhex(text if len(text) % 2 == 0 else "0" + text)
        except ValueError as exc:
            raise _InvalidParams(f"invalid {name}: {value!r}") from exc
    else:
        raise _InvalidParams(f"invalid {name}: {value!r}")
    if size is not None and len(raw) != size:
        raise _InvalidParams(f"invalid {name}: expected {size} bytes, got {len(raw)}")
    return raw


def _param_int(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value[:2] in ("0x", "0X"):
        try:
            number = int(value, 16)
        except ValueError as exc:
            raise _InvalidParams(f"invalid {name}: {value!r}") from exc
    elif isinstance(value, bytes | bytearray | memoryview):
        number = int.from_bytes(bytes(value), "big")
    else:
        raise _InvalidParams(f"invalid {name}: {value!r}")
    if not 0 <= number < 2**256:
        raise _InvalidParams(f"invalid {name}: out of range")
    return number


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _jsonify(value: Any) -> Any:
    """eth-tester's normalized output (snake_case, ints, tuples) -> geth-style JSON."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return _quantity(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _hex(bytes(value))
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return {_camel(str(k)): _jsonify(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_jsonify(item) for item in value]
    return value


def _transaction_json(tx: Mapping[str, Any], timestamp: int) -> dict[str, Any]:
    """One of eth-tester's full transactions in a block -> geth/anvil's JSON."""
    out = _jsonify(tx)
    out["input"] = out.pop("data", "0x")
    for key in ("from", "to"):
        value = out.get(key)
        out[key] = value.lower() if value not in ("", "0x", None) else None  # None: creation
    for key in ("r", "s"):
        if isinstance(out.get(key), str):
            out[key] = _quantity(int(out[key], 16))
    out["blockTimestamp"] = _quantity(timestamp)
    return cast(dict[str, Any], out)


# ------------------------------------------------------------------------- the provider


class EmbeddedProvider(EthereumTesterProvider):
    """An in-process eth-tester chain (py-evm backend) that also serves ``eth_getProof``, a linear
    ``eth_getLogs`` and faithful block headers, each in geth/anvil's JSON shape.

    Every other method is eth-tester's. Block tags: ``latest``, ``safe``, ``finalized`` and
    ``pending`` all mean the newest mined block (eth-tester mines each transaction at once).
    """

    _middleware = (default_transaction_fields_middleware, _tester_formatting)

    def __init__(self) -> None:
        """Start a fresh chain with eth-tester's ten funded default accounts."""
        from eth_tester import EthereumTester, PyEVMBackend

        super().__init__(EthereumTester(PyEVMBackend()))
        self._handlers: dict[str, Callable[[list[Any]], Any]] = {
            "eth_getProof": self._get_proof,
            "eth_getLogs": self._get_logs,
            "eth_getBlockByNumber": self._get_block_by_number,
            "eth_getBlockByHash": self._get_block_by_hash,
        }

    @property
    def chain(self) -> ChainAPI:
        """The py-evm chain behind the tester (it is replaced when eth-tester resets)."""
        return cast("ChainAPI", self.ethereum_tester.backend.chain)  # type: ignore[union-attr]

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Answer one JSON-RPC request: the methods above here, the rest by eth-tester.

        Raises:
            eth_tester.exceptions.TransactionFailed: as eth-tester's provider does, for a
                reverted call (web3 turns it into its own error).
        """
        handler = self._handlers.get(method)
        if handler is None:
            return super().make_request(method, params)
        request_id = repr(self._current_request_id)
        self._current_request_id += 1
        try:
            result = handler(list(params or ()))
        except _InvalidParams as exc:
            return cast(
                RPCResponse,
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": exc.code, "message": str(exc)},
                },
            )
        return cast(RPCResponse, {"jsonrpc": "2.0", "id": request_id, "result": result})

    # -- blocks ---------------------------------------------------------------------------

    def _head_number(self) -> int:
        return int(self.chain.chaindb.get_canonical_head().block_number)

    def _number(self, tag: Any) -> int:
        """A block parameter (tag, number, hex) -> block number; beyond the head is allowed."""
        if isinstance(tag, str) and tag in _TAGS_FOR_HEAD:
            return self._head_number()
        if tag == "earliest":
            return 0
        return _param_int("block number", tag)

    def _header_by_number(self, number: int) -> BlockHeaderAPI | None:
        if number > self._head_number():
            return None
        return self.chain.chaindb.get_canonical_block_header_by_number(BlockNumber(number))

    def _header_by_hash(self, block_hash: bytes) -> BlockHeaderAPI | None:
        from eth.exceptions import HeaderNotFound

        try:
            header = self.chain.chaindb.get_block_header_by_hash(Hash32(block_hash))
        except HeaderNotFound:
            return None
        canonical = self._header_by_number(header.block_number)
        return header if canonical is not None and canonical.hash == header.hash else None

    def _header_for_state(self, tag: Any) -> BlockHeaderAPI:
        """An ``eth_getProof``-style block parameter (incl. EIP-1898 objects) -> header."""
        if isinstance(tag, Mapping):
            if "blockHash" in tag:
                found = self._header_by_hash(_param_bytes("blockHash", tag["blockHash"], 32))
            else:
                found = self._header_by_number(self._number(tag.get("blockNumber", "latest")))
        else:
            found = self._header_by_number(self._number(tag))
        if found is None:
            raise _InvalidParams("header not found", code=-32000)
        return found

    def _block_json(self, header: BlockHeaderAPI, full: bool) -> dict[str, Any]:
        body = self.ethereum_tester.get_block_by_hash(  # type: ignore[union-attr]
            _hex(header.hash), full_transactions=full
        )
        out: dict[str, Any] = {"hash": _hex(header.hash)}
        for field in header._meta.field_names:  # type: ignore[attr-defined]
            name = _HEADER_JSON_NAMES.get(field)
            if name is None:
                raise ChainError(f"py-evm header field {field} is unknown to fwledger")
            value = getattr(header, field)
            if field == "bloom":
                out[name] = _hex(value.to_bytes(256, "big"))
            elif field in _QUANTITY_FIELDS:
                out[name] = _quantity(value)
            else:
                out[name] = _hex(value)
        out["totalDifficulty"] = _quantity(body["total_difficulty"])
        out["size"] = _quantity(body["size"])
        out["uncles"] = [_jsonify(uncle) for uncle in body["uncles"]]
        out["transactions"] = [
            _transaction_json(tx, header.timestamp) if full else _jsonify(tx)
            for tx in body["transactions"]
        ]
        if "withdrawals" in body:
            out["withdrawals"] = _jsonify(body["withdrawals"])
        return out

    def _full_flag(self, params: list[Any]) -> bool:
        full = params[1] if len(params) > 1 else False
        if not isinstance(full, bool):
            raise _InvalidParams("invalid full-transactions flag")
        return full

    def _get_block_by_number(self, params: list[Any]) -> dict[str, Any] | None:
        if not params:
            raise _InvalidParams("missing block number")
        header = self._header_by_number(self._number(params[0]))
        return None if header is None else self._block_json(header, self._full_flag(params))

    def _get_block_by_hash(self, params: list[Any]) -> dict[str, Any] | None:
        if not params:
            raise _InvalidParams("missing block hash")
        header = self._header_by_hash(_param_bytes("block hash", params[0], 32))
        return None if header is None else self._block_json(header, self._full_flag(params))

    # -- eth_getProof ---------------------------------------------------------------------

    def _get_proof(self, params: list[Any]) -> dict[str, Any]:
        if len(params) < 2 or not isinstance(params[1], list | tuple):
            raise _InvalidParams("eth_getProof takes (address, [slots], block)")
        address = _param_bytes("address", params[0], 20)
        slots = [_param_int("storage key", slot) for slot in params[1]]
        header = self._header_for_state(params[2] if len(params) > 2 else "latest")
        db = self.chain.chaindb.db
        state = HexaryTrie(db, header.state_root)
        account_key = keccak(address)
        encoded = state.get(account_key)
        if encoded:
            nonce, balance, storage_root, code_hash = rlp.decode(encoded)
            nonce_value = int.from_bytes(nonce, "big")
            balance_value = int.from_bytes(balance, "big")
        else:
            nonce_value, balance_value = 0, 0
            storage_root, code_hash = _BLANK_ROOT, _EMPTY_CODE_HASH
        storage = HexaryTrie(db, storage_root)
        storage_proof = []
        for slot in slots:
            word = slot.to_bytes(32, "big")
            key = keccak(word)
            value = storage.get(key)
            number = rlp.decode(value, sedes=rlp.sedes.big_endian_int) if value else 0
            storage_proof.append(
                {
                    "key": _hex(word),
                    "value": _quantity(number),
                    "proof": [_hex(rlp.encode(node)) for node in storage.get_proof(key)],
                }
            )
        return {
            "address": _hex(address),
            "balance": _quantity(balance_value),
            "codeHash": _hex(code_hash),
            "nonce": _quantity(nonce_value),
            "storageHash": _hex(storage_root),
            "accountProof": [_hex(rlp.encode(node)) for node in state.get_proof(account_key)],
            "storageProof": storage_proof,
        }

    # -- eth_getLogs ----------------------------------------------------------------------

    def _get_logs(self, params: list[Any]) -> list[dict[str, Any]]:
        if not params or not isinstance(params[0], Mapping):
            raise _InvalidParams("eth_getLogs takes one filter object")
        query = params[0]
        addresses = _filter_addresses(query.get("address"))
        topics = _filter_topics(query.get("topics"))
        if query.get("blockHash") is not None:
            if query.get("fromBlock") is not None or query.get("toBlock") is not None:
                raise _InvalidParams("cannot specify both blockHash and fromBlock/toBlock")
            header = self._header_by_hash(_param_bytes("blockHash", query["blockHash"], 32))
            if header is None:
                raise _InvalidParams("unknown block", code=-32000)
            numbers = range(header.block_number, header.block_number + 1)
        else:
            head = self._head_number()
            first = self._number(query.get("fromBlock") or "latest")
            last = self._number(query.get("toBlock") or "latest")
            if first > last:
                raise _InvalidParams("invalid block range params", code=-32000)
            numbers = range(first, min(last, head) + 1)
        logs: list[dict[str, Any]] = []
        chaindb = self.chain.chaindb
        for number in numbers:
            header = chaindb.get_canonical_block_header_by_number(BlockNumber(number))
            if header.receipt_root == _BLANK_ROOT:
                continue  # no transactions, no logs
            if not _bloom_may_match(header.bloom, addresses, topics):
                continue
            block = self.chain.get_block_by_header(header)
            block_hash = _hex(header.hash)
            log_index = 0
            for tx_index, (tx, receipt) in enumerate(
                zip(block.transactions, block.get_receipts(chaindb), strict=True)
            ):
                for log in receipt.logs:
                    log_topics = [topic.to_bytes(32, "big") for topic in log.topics]
                    if _log_matches(log.address, log_topics, addresses, topics):
                        logs.append(
                            {
                                "address": _hex(log.address),
                                "topics": [_hex(topic) for topic in log_topics],
                                "data": _hex(log.data),
                                "blockHash": block_hash,
                                "blockNumber": _quantity(number),
                                "blockTimestamp": _quantity(header.timestamp),
                                "transactionHash": _hex(tx.hash),
                                "transactionIndex": _quantity(tx_index),
                                "logIndex": _quantity(log_index),
                                "removed": False,
                            }
                        )
                    log_index += 1
        return logs


_Topics = list[frozenset[bytes] | None]


def _filter_addresses(value: Any) -> frozenset[bytes] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        return None
    return frozenset(_param_bytes("address", item, 20) for item in items)


def _filter_topics(value: Any) -> _Topics:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or len(value) > 4:
        raise _InvalidParams("topics must be a list of at most 4 positions")
    out: _Topics = []
    for position in value:
        if position is None:
            out.append(None)
        elif isinstance(position, list | tuple):
            out.append(frozenset(_param_bytes("topic", t, 32) for t in position if t is not None)
                       if position and None not in position else None)
        else:
            out.append(frozenset({_param_bytes("topic", position, 32)}))
    return out


def _bloom_may_match(bloom: int, addresses: frozenset[bytes] | None, topics: _Topics) -> bool:
    if addresses is None and all(position is None for position in topics):
        return True
    bloom_filter = BloomFilter(bloom)
    if addresses is not None and not any(address in bloom_filter for address in addresses):
        return False
    return all(
        position is None or any(topic in bloom_filter for topic in position) for position in topics
    )


def _log_matches(
    address: bytes, log_topics: list[bytes], addresses: frozenset[bytes] | None, topics: _Topics
) -> bool:
    if addresses is not None and address not in addresses:
        return False
    if len(topics) > len(log_topics):
        return False
    return all(
        position is None or log_topic in position
        for position, log_topic in zip(topics, log_topics, strict=False)
    )


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
