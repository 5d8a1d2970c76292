"""A lying Ethereum JSON-RPC node for the author's light-node tests: a real HTTP proxy on 127.0.0.1.

It forwards every JSON-RPC request to a real node (anvil by URL) or to the embedded chain (its
``Web3`` in this process), then rewrites the answers it is told to: the ``hardware(bytes32)`` getter's
X25519 key of chosen classes (an attacker's key), ``vendor_name_hash(address)`` (any key a vendor),
``eth_getLogs`` (hide every event, or the events of chosen names), the value of chosen storage slots in ``eth_getProof`` answers
(the claimed value, leaving the proof nodes as they are), and the ``stateRoot`` of block headers
(with the header hash recomputed, so the header is self-consistent but not the chain's).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import eth_abi
import requests
from eth_utils import keccak
from web3 import Web3

from ledger_node.header import header_rlp_from_json
from ledger_node.providers import serialise_embedded

__all__ = ["LyingRpc"]

_HARDWARE = keccak(b"hardware(bytes32)")[:4]  # the public getter of hardware[keccak(id)]
_NAME_HASH = keccak(b"vendor_name_hash(address)")[:4]


def _event_topic(name: str) -> str:
    """The topic0 (hex, no 0x) of a registry event, from the compiled ABI."""
    from ledger_node.compiler import registry_contract

    for item in registry_contract().abi:
        if item.get("type") == "event" and item["name"] == name:
            sig = f"{name}({','.join(i['type'] for i in item['inputs'])})"
            return keccak(sig.encode()).hex()
    raise KeyError(name)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class LyingRpc:
    """``url``: the proxy. Set the lies on the attributes at any time (all off: an honest proxy)."""

    def __init__(self, upstream: Web3 | str) -> None:
        self.upstream = upstream
        if not isinstance(upstream, str):
            serialise_embedded(upstream)  # the proxy's threads share the in-process chain with the test
        self.fake_keys: dict[str, bytes] = {}
        self.fake_vendor_name: str | None = None
        self.hide_logs = False
        self.hide_events: set[str] = set()  # registry event names whose logs are left out
        self.forge_slots: dict[int, int] = {}
        self.forge_state_root = False
        self.calls: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                out = [outer.answer(r) for r in req] if isinstance(req, list) else outer.answer(req)
                body = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LyingRpc:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- forwarding ---------------------------------------------------------------------------

    def _forward(self, req: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.upstream, str):
            return dict(requests.post(self.upstream, json=req, timeout=30).json())
        params = req.get("params", [])
        if req["method"] in ("eth_call", "eth_estimateGas") and isinstance(params[0], dict):
            params[0].setdefault("from", self.upstream.eth.accounts[0])  # eth-tester requires a funded sender
        resp = self.upstream.provider.make_request(req["method"], params)
        return {"jsonrpc": "2.0", "id": req.get("id"), **_plain(dict(resp))}

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        method = str(req.get("method"))
        self.calls[method] = self.calls.get(method, 0) + 1
        resp = self._forward(req)
        if "result" not in resp or resp["result"] is None:
            return resp
        params = req.get("params") or []
        if method == "eth_call":
            resp["result"] = self._call(params[0], resp["result"])
        elif method == "eth_getLogs" and self.hide_logs:
            resp["result"] = []
        elif method == "eth_getLogs" and self.hide_events:
            hidden = {_event_topic(name) for name in self.hide_events}
            resp["result"] = [log for log in resp["result"] if not log.get("topics") or
                              str(log["topics"][0]).lower().removeprefix("0x") not in hidden]
        elif method == "eth_getProof" and self.forge_slots:
            for entry in resp["result"]["storageProof"]:
                slot = int(entry["key"], 16)
                if slot in self.forge_slots:
                    entry["value"] = hex(self.forge_slots[slot])
        elif method in ("eth_getBlockByNumber", "eth_getBlockByHash") and self.forge_state_root:
            blk = resp["result"]
            blk["stateRoot"] = "0x" + keccak(b"forged" + bytes.fromhex(blk["stateRoot"][2:])).hex()
            blk["hash"] = "0x" + keccak(header_rlp_from_json(blk)).hex()
        return resp

    def _call(self, tx: dict[str, Any], result: str) -> str:
        data = bytes.fromhex(str(tx.get("data") or tx.get("input") or "0x")[2:])
        if data[:4] == _HARDWARE and self.fake_keys:
            fakes = {keccak(hw.encode()): key for hw, key in self.fake_keys.items()}
            if data[4:36] in fakes:
                registered, revision, _ = eth_abi.decode(["bool", "uint256", "bytes32"], bytes.fromhex(result[2:]))
                return "0x" + eth_abi.encode(["bool", "uint256", "bytes32"],
                                             [True, revision or 1, fakes[data[4:36]]]).hex()
        if data[:4] == _NAME_HASH and self.fake_vendor_name is not None:
            return "0x" + keccak(self.fake_vendor_name.encode()).hex()
        return result
