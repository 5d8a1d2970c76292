"""The embedded chain's provider: eth-tester's py-evm backend, with the three methods it lacks or
gets wrong answered from py-evm's own data (see :mod:`ledger_node.providers`, which selects it).

* ``eth_getProof``: eth-tester has none; built from the state and storage tries in py-evm's
  database, proofs of absence included.
* ``eth_getLogs``: eth-tester's path finds each log's transaction by scanning back from the head,
  which is quadratic in chain length; this one reads each block's receipts once (linear in the
  range, and blocks whose bloom cannot match are skipped) and numbers logs block-wide.
* ``eth_getBlockByNumber`` / ``eth_getBlockByHash``: eth-tester pads ``extraData`` to 32 bytes
  and reports ``logsBloom`` as an int (so web3 shows ``0x00``); here every header field comes
  from py-evm's header, so the JSON rebuilds to the block hash
  (:func:`ledger_node.header.header_rlp_from_json`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import rlp
from eth_bloom import BloomFilter
from eth_typing import BlockNumber, Hash32
from eth_utils import keccak
from trie import HexaryTrie
from web3 import EthereumTesterProvider
from web3.middleware.formatting import FormattingMiddlewareBuilder
from web3.providers.eth_tester.middleware import (
    default_transaction_fields_middleware,
    request_formatters,
    result_formatters,
)
from web3.types import RPCEndpoint, RPCResponse

from ledger_node.errors import ChainError

if TYPE_CHECKING:
    from eth.abc import BlockHeaderAPI, ChainAPI

__all__ = ["EmbeddedProvider"]

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
