"""Integration tests of ledger_node.providers, checked with ledger_node.proofs / header.

The same tests run on the embedded chain and on an anvil node started here (127.0.0.1, a free
port, stopped by PID at the end). anvil is found via $FWLEDGER_ANVIL, then
.devnet/node_modules/.bin/anvil, then PATH; without it the anvil variants are skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import vyper
from eth.chains.mainnet import MAINNET_VM_CONFIGURATION
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vyper.compiler.settings import Settings
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.providers.base import BaseProvider
from web3.types import RPCEndpoint, RPCResponse

from ledger_node.devnet import free_port
from ledger_node.errors import ChainError, ChainUnreachable, ConfigError, ProofError
from ledger_node.header import decode_header, header_rlp_from_json
from ledger_node.proofs import (
    EMPTY_CODE_HASH,
    EMPTY_TRIE_ROOT,
    parse_proof_json,
    verify_account_proof,
    verify_proof_result,
    verify_storage_proof,
    vyper_hashmap_slot,
)
from ledger_node.providers import EMBEDDED, EmbeddedProvider, connect, dev_accounts

REPO = Path(__file__).resolve().parents[2]
STORE_VY = REPO / "tests" / "fixtures" / "Store.vy"
EMBEDDED_FIRST = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"  # private key 1
ANVIL_FIRST = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # test...junk, m/44'/60'/0'/0/0


def find_anvil() -> tuple[str | None, str]:
    """$FWLEDGER_ANVIL, else the repo's .devnet install, else PATH: (path, why not)."""
    configured = os.environ.get("FWLEDGER_ANVIL")
    if configured:
        if os.access(configured, os.X_OK):
            return configured, ""
        return None, f"FWLEDGER_ANVIL={configured} is not an executable file"
    local = REPO / ".devnet" / "node_modules" / ".bin" / "anvil"
    if os.access(local, os.X_OK):
        return str(local), ""
    found = shutil.which("anvil")
    if found:
        return found, ""
    return None, (
        "no anvil binary: set FWLEDGER_ANVIL, install it under .devnet/ (scripts/setup), "
        "or put it on PATH"
    )


def word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def slot_hex(slot: int) -> str:
    return f"0x{slot:064x}"  # anvil wants 32-byte slot keys


# ------------------------------------------------------------------------------ fixtures


@dataclass
class Compiled:
    abi: list[dict[str, Any]]
    bytecode: str
    layout: dict[str, Any]


@pytest.fixture(scope="module")
def store_code() -> Compiled:
    out = vyper.compile_code(
        STORE_VY.read_text(),
        output_formats=["abi", "bytecode", "layout"],
        settings=Settings(evm_version="prague"),
    )
    layout = out["layout"]["storage_layout"]
    return Compiled(abi=out["abi"], bytecode=out["bytecode"], layout=layout)


@dataclass
class Chain:
    """A connected backend, a funded sender, and a way to send and await transactions."""

    kind: str
    w3: Web3
    account: LocalAccount
    code: Compiled
    nonce: int = field(default=0)

    def send(self, tx: dict[str, Any]) -> Any:
        tx = dict(tx)
        tx.update(
            nonce=self.nonce, chainId=self.w3.eth.chain_id, maxFeePerGas=10**10,
            maxPriorityFeePerGas=10**9, gas=tx.get("gas", 300_000),
        )
        tx.pop("from", None)
        self.nonce += 1
        raw = self.account.sign_transaction(tx).raw_transaction
        tx_hash = self.w3.eth.send_raw_transaction(raw)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.05)
        assert receipt.status == 1
        return receipt

    def call(self, contract: Contract, name: str, *args: Any) -> Any:
        built = getattr(contract.functions, name)(*args).build_transaction(
            {"from": self.account.address, "gas": 300_000, "nonce": self.nonce,
             "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9}
        )
        return self.send(built)

    def deploy_store(self) -> Contract:
        receipt = self.send({"data": self.code.bytecode, "value": 0, "gas": 3_000_000})
        return self.w3.eth.contract(address=receipt.contractAddress, abi=self.code.abi)

    def slot_of(self, name: str) -> int:
        return int(self.code.layout[name]["slot"])


def make_chain(kind: str, w3: Web3, code: Compiled) -> Chain:
    account = dev_accounts(w3, 1)[0]
    return Chain(kind, w3, account, code, nonce=w3.eth.get_transaction_count(account.address))


@pytest.fixture(scope="module")
def embedded_chain(store_code: Compiled) -> Chain:
    return make_chain("embedded", connect(EMBEDDED), store_code)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group led by ``proc`` (SIGTERM, then SIGKILL after 10 s)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture(scope="module")
def anvil_chain(store_code: Compiled) -> Iterator[Chain]:
    binary, why_not = find_anvil()
    if binary is None:
        pytest.skip(why_not)
    port = free_port()
    # npm's `anvil` is a node shim that spawns the real binary: give both their own process
    # group, whose id is this PID, so that stopping by PID stops the two of them
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--host", "127.0.0.1", "--silent"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                w3 = connect(f"http://127.0.0.1:{port}", timeout=5)
                break
            except ChainUnreachable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    pytest.fail(f"anvil did not start on port {port}: {err.strip()}")
                time.sleep(0.1)
        yield make_chain("anvil", w3, store_code)
    finally:
        stop_group(proc)


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("anvil", marks=pytest.mark.devnet)]
)
def chain(request: pytest.FixtureRequest) -> Chain:
    return request.getfixturevalue(f"{request.param}_chain")  # type: ignore[no-any-return]


def trusted_state_root(w3: Web3, block: int | str = "latest") -> tuple[int, bytes]:
    """The state root of a block, taken only from a header whose hash checks out."""
    data = w3.eth.get_block(block)
    header = decode_header(header_rlp_from_json(data), bytes(data["hash"]))
    return header.number, header.state_root


def proven(w3: Web3, address: str, slots: list[int], block: int) -> tuple[Any, dict[int, int]]:
    number, root = trusted_state_root(w3, block)
    answer = w3.eth.get_proof(address, [slot_hex(s) for s in slots], number)
    return verify_proof_result(root, parse_proof_json(answer))


# --------------------------------------------------------------------------------- tests


def test_connect_and_dev_accounts(chain: Chain) -> None:
    accounts = dev_accounts(chain.w3, 10)
    assert len(accounts) == 10 and len({a.address for a in accounts}) == 10
    expected = EMBEDDED_FIRST if chain.kind == "embedded" else ANVIL_FIRST
    assert accounts[0].address == expected
    assert all(chain.w3.eth.get_balance(a.address) > 0 for a in accounts)
    assert chain.w3.eth.chain_id == (31337 if chain.kind == "anvil" else chain.w3.eth.chain_id)


def test_vyper_hashmap_slot_rule_matches_get_storage_at(chain: Chain) -> None:
    store = chain.deploy_store()
    key = keccak(b"release-1")
    chain.call(store, "set_value", key, 77)
    chain.call(store, "set_nested", chain.account.address, 5, 99)
    chain.call(store, "set_plain", 3)

    def at(slot: int) -> int:
        return int.from_bytes(chain.w3.eth.get_storage_at(store.address, slot), "big")

    values, nested = chain.slot_of("values"), chain.slot_of("nested")
    sender = bytes.fromhex(chain.account.address[2:])
    assert at(chain.slot_of("plain")) == 3
    assert at(vyper_hashmap_slot(values, key)) == 77
    assert at(vyper_hashmap_slot(nested, sender, 5)) == 99
    # Solidity's order, keccak(key ++ slot), is not what Vyper 0.4.3 does
    assert at(int.from_bytes(keccak(key + word(values)), "big")) == 0


def test_storage_proofs_verify_to_get_storage_at(chain: Chain) -> None:
    store = chain.deploy_store()
    key_a, key_b = keccak(b"a"), keccak(b"b")
    chain.call(store, "set_value", key_a, 1)
    chain.call(store, "set_two", key_a, 2**255 + 7, key_b, 42)
    chain.call(store, "set_plain", 12345)
    block = chain.w3.eth.block_number
    chain.call(store, "set_value", key_b, 43)  # a later write must not show at `block`
    slots = [
        chain.slot_of("plain"),
        vyper_hashmap_slot(chain.slot_of("values"), key_a),
        vyper_hashmap_slot(chain.slot_of("values"), key_b),
        vyper_hashmap_slot(chain.slot_of("values"), keccak(b"absent")),
    ]
    account, values = proven(chain.w3, store.address, slots, block)
    assert account is not None and account.nonce == 1 and account.code_hash != EMPTY_CODE_HASH
    assert account.code_hash == keccak(bytes(chain.w3.eth.get_code(store.address, block)))
    for slot in slots:
        stored = chain.w3.eth.get_storage_at(store.address, slot, block)
        assert values[slot] == int.from_bytes(stored, "big")
    assert [values[s] for s in slots] == [12345, 2**255 + 7, 42, 0]
    _, later = proven(chain.w3, store.address, slots[2:3], chain.w3.eth.block_number)
    assert later[slots[2]] == 43


def test_absent_account_and_slot_proofs(chain: Chain) -> None:
    number, root = trusted_state_root(chain.w3)
    stranger = "0x" + keccak(b"nobody")[:20].hex()
    answer = chain.w3.eth.get_proof(Web3.to_checksum_address(stranger), [slot_hex(0)], number)
    parsed = parse_proof_json(answer)
    assert verify_account_proof(root, parsed.address, parsed.account_proof) is None
    assert verify_proof_result(root, parsed) == (None, {0: 0})
    assert parsed.storage_hash == EMPTY_TRIE_ROOT
    # an existing account with no storage: its storage root is the empty trie's
    eoa = dev_accounts(chain.w3, 2)[1].address
    account, values = proven(chain.w3, eoa, [1], number)
    assert account is not None and account.storage_root == EMPTY_TRIE_ROOT and values == {1: 0}
    assert account.balance == chain.w3.eth.get_balance(eoa, number)


def test_tampered_proofs_wrong_root_and_wrong_slot_are_rejected(chain: Chain) -> None:
    store = chain.deploy_store()
    key_a, key_b = keccak(b"x"), keccak(b"y")
    chain.call(store, "set_two", key_a, 5, key_b, 6)
    slot_a = vyper_hashmap_slot(chain.slot_of("values"), key_a)
    slot_b = vyper_hashmap_slot(chain.slot_of("values"), key_b)
    number, root = trusted_state_root(chain.w3)
    parsed = parse_proof_json(chain.w3.eth.get_proof(store.address, [slot_hex(slot_a)], number))
    account = verify_account_proof(root, parsed.address, parsed.account_proof)
    assert account is not None
    storage_proof = parsed.storage_proofs[0].proof
    assert verify_storage_proof(account.storage_root, slot_a, storage_proof) == 5
    for i, node in enumerate(parsed.account_proof):  # one flipped byte in any account-proof node
        for position in (0, len(node) // 2, len(node) - 1):
            tampered = list(parsed.account_proof)
            tampered[i] = node[:position] + bytes([node[position] ^ 0x80]) + node[position + 1 :]
            with pytest.raises(ProofError):
                verify_account_proof(root, parsed.address, tampered)
    for i, node in enumerate(storage_proof):  # and in any storage-proof node
        tampered = list(storage_proof)
        tampered[i] = node[:-1] + bytes([node[-1] ^ 0x01])
        with pytest.raises(ProofError):
            verify_storage_proof(account.storage_root, slot_a, tampered)
    _, parent_root = trusted_state_root(chain.w3, number - 1)  # wrong (older) state root
    with pytest.raises(ProofError):
        verify_account_proof(parent_root, parsed.address, parsed.account_proof)
    with pytest.raises(ProofError):  # the proof of slot a does not prove slot b
        verify_storage_proof(account.storage_root, slot_b, storage_proof)
    with pytest.raises(ProofError):  # nor the account under another address
        verify_account_proof(root, bytes.fromhex(chain.account.address[2:]), parsed.account_proof)


def test_header_json_rebuilds_to_block_hash(chain: Chain) -> None:
    store = chain.deploy_store()
    chain.call(store, "set_value", keccak(b"h"), 1)
    head = chain.w3.eth.block_number
    for number in sorted({0, 1, head - 1, head}):
        data = chain.w3.eth.get_block(number, full_transactions=True)
        header = decode_header(header_rlp_from_json(data), bytes(data["hash"]))
        assert header.number == number and header.state_root == bytes(data["stateRoot"])
        assert bytes(data["extraData"]) == b"" and len(bytes(data["logsBloom"])) == 256
        assert chain.w3.eth.get_block(data["hash"])["hash"] == data["hash"]
        if number > 0:
            assert header.parent_hash == bytes(chain.w3.eth.get_block(number - 1)["hash"])
        raw = chain.w3.provider.make_request(
            RPCEndpoint("eth_getBlockByNumber"), [hex(number), False]
        )
        assert keccak(header_rlp_from_json(raw["result"])).hex() == raw["result"]["hash"][2:]
    tx = chain.w3.eth.get_block(head, full_transactions=True)["transactions"][0]
    assert tx["blockNumber"] == head and tx["to"] == store.address
    beyond = chain.w3.provider.make_request(
        RPCEndpoint("eth_getBlockByNumber"), [hex(head + 1000), False]
    )
    assert beyond["result"] is None


def test_get_logs_filters_and_block_wide_log_index(chain: Chain) -> None:
    store = chain.deploy_store()
    k1, k2, k3 = keccak(b"k1"), keccak(b"k2"), keccak(b"k3")
    start = chain.w3.eth.block_number
    chain.call(store, "set_value", k1, 1)
    two = chain.call(store, "set_two", k2, 2, k3, 3)
    chain.call(store, "set_nested", chain.account.address, 9, 4)
    stored = keccak(b"Stored(bytes32,uint256)")
    nested = keccak(b"NestedStored(address,uint256,uint256)")
    base = {"fromBlock": start, "toBlock": "latest", "address": store.address}
    logs = chain.w3.eth.get_logs(base)
    assert [bytes(log["topics"][0]) for log in logs] == [stored, stored, stored, nested]
    for log in logs:
        receipt = chain.w3.eth.get_transaction_receipt(log["transactionHash"])
        assert (log["blockNumber"], log["blockHash"], log["transactionIndex"]) == (
            receipt.blockNumber, receipt.blockHash, receipt.transactionIndex)
        assert log["removed"] is False and log["address"] == store.address
    pair = [log for log in logs if log["transactionHash"] == two.transactionHash]
    assert [log["logIndex"] for log in pair] == [0, 1]
    assert [int.from_bytes(bytes(log["data"]), "big") for log in pair] == [2, 3]
    topics = chain.w3.eth.get_logs(dict(base, topics=[None, ["0x" + k3.hex(), "0x" + k1.hex()]]))
    assert [bytes(log["topics"][1]) for log in topics] == [k1, k3]
    only_nested = chain.w3.eth.get_logs(dict(base, topics=["0x" + nested.hex()]))
    assert len(only_nested) == 1 and int.from_bytes(bytes(only_nested[0]["topics"][2]), "big") == 9
    if chain.kind == "embedded":
        # geth (and eth-tester) skip a log with fewer topics than the filter has positions, even
        # null ones; anvil 1.7.1 does not, so only the embedded chain is held to geth's rule
        assert chain.w3.eth.get_logs(dict(base, topics=[None, None, None, None])) == []
    assert len(chain.w3.eth.get_logs(dict(base, topics=[[]]))) == 4
    assert chain.w3.eth.get_logs({"blockHash": two.blockHash, "address": store.address}) == pair
    elsewhere = dict(base, address=Web3.to_checksum_address("0x" + "00" * 19 + "01"))
    assert chain.w3.eth.get_logs(elsewhere) == []
    both = chain.w3.eth.get_logs(dict(base, address=[store.address, elsewhere["address"]]))
    assert both == logs


@pytest.mark.devnet
def test_same_writes_verify_the_same_on_both_backends(
    embedded_chain: Chain, anvil_chain: Chain
) -> None:
    """Identical storage gives identical storage tries: same roots and same proof nodes."""
    outcomes = []
    for chain in (embedded_chain, anvil_chain):
        store = chain.deploy_store()
        for i in range(1, 6):
            chain.call(store, "set_value", keccak(word(i)), i * 1000)
        chain.call(store, "set_nested", Web3.to_checksum_address("0x" + "ab" * 20), 7, 70)
        chain.call(store, "set_plain", 8)
        slots = [
            chain.slot_of("plain"),
            vyper_hashmap_slot(chain.slot_of("nested"), b"\xab" * 20, 7),
        ]
        slots += [vyper_hashmap_slot(chain.slot_of("values"), keccak(word(i))) for i in range(0, 7)]
        number, root = trusted_state_root(chain.w3)
        answer = chain.w3.eth.get_proof(store.address, [slot_hex(s) for s in slots], number)
        parsed = parse_proof_json(answer)
        account, values = verify_proof_result(root, parsed)
        for slot in slots:
            assert values[slot] == int.from_bytes(
                chain.w3.eth.get_storage_at(store.address, slot), "big"
            )
        outcomes.append((account, values, [entry.proof for entry in parsed.storage_proofs]))
    (acc_e, val_e, proofs_e), (acc_a, val_a, proofs_a) = outcomes
    assert val_e == val_a
    assert acc_e is not None and acc_a is not None
    assert acc_e.storage_root == acc_a.storage_root
    assert (acc_e.code_hash, acc_e.nonce) == (acc_a.code_hash, acc_a.nonce)
    assert proofs_e == proofs_a


# ------------------------------------------------------------------------ embedded only


def test_embedded_chain_runs_the_newest_py_evm_fork(embedded_chain: Chain) -> None:
    provider = embedded_chain.w3.provider
    assert isinstance(provider, EmbeddedProvider)
    assert type(provider.chain.get_vm()).__name__ == MAINNET_VM_CONFIGURATION[-1][1].__name__


def log_key(log: Any) -> tuple[Any, ...]:
    return (log["blockNumber"], bytes(log["blockHash"]), bytes(log["transactionHash"]),
            log["transactionIndex"], log["logIndex"], log["address"],
            [bytes(t) for t in log["topics"]], bytes(log["data"]))


def test_embedded_get_logs_equals_eth_testers_own_path(embedded_chain: Chain) -> None:
    chain = embedded_chain
    store = chain.deploy_store()
    start = chain.w3.eth.block_number
    chain.call(store, "set_value", keccak(b"1"), 1)
    chain.call(store, "set_two", keccak(b"2"), 2, keccak(b"3"), 3)
    chain.call(store, "set_nested", chain.account.address, 1, 1)
    tester = chain.w3.provider.ethereum_tester  # type: ignore[attr-defined]
    reference = Web3(EthereumTesterProvider(tester))
    stored = "0x" + keccak(b"Stored(bytes32,uint256)").hex()
    key_1, key_3 = "0x" + keccak(b"1").hex(), "0x" + keccak(b"3").hex()
    for query in (
        {"fromBlock": 0, "toBlock": "latest"},
        {"fromBlock": start + 1, "toBlock": start + 2, "address": store.address},
        {"fromBlock": start, "address": store.address, "topics": [stored]},
        {"fromBlock": start, "topics": [None, [key_3, key_1]]},
    ):
        mine = [log_key(log) for log in chain.w3.eth.get_logs(query)]
        theirs = [log_key(log) for log in reference.eth.get_logs(query)]
        assert mine == theirs and mine


def test_embedded_get_logs_over_hundreds_of_blocks(embedded_chain: Chain) -> None:
    chain = embedded_chain
    store = chain.deploy_store()
    tester = chain.w3.provider.ethereum_tester  # type: ignore[attr-defined]
    start = chain.w3.eth.block_number
    for i in range(12):
        chain.call(store, "set_value", keccak(word(i)), i + 1)
        tester.mine_blocks(30)
    head = chain.w3.eth.block_number
    assert head - start >= 370
    began = time.perf_counter()
    logs = chain.w3.eth.get_logs({"fromBlock": start, "toBlock": head, "address": store.address})
    elapsed = time.perf_counter() - began
    blocks = head - start + 1
    print(f"\nfwledger eth_getLogs over {blocks} blocks: {len(logs)} logs in {elapsed:.3f}s")
    assert [int.from_bytes(bytes(log["data"]), "big") for log in logs] == list(range(1, 13))
    assert all(log["logIndex"] == 0 for log in logs)
    assert chain.w3.eth.get_logs({"fromBlock": head + 5, "toBlock": head + 9}) == []


def test_embedded_rpc_errors_are_json_rpc_errors(embedded_chain: Chain) -> None:
    provider = embedded_chain.w3.provider
    bad = [
        ("eth_getLogs", [{"fromBlock": "0x5", "toBlock": "0x1"}]),
        ("eth_getLogs", [{"blockHash": "0x" + "00" * 32, "fromBlock": "0x1"}]),
        ("eth_getProof", ["0x1234", [], "latest"]),
        ("eth_getProof", ["0x" + "00" * 20, [], hex(10**9)]),
        ("eth_getBlockByNumber", ["soon", False]),
    ]
    for method, params in bad:
        answer = provider.make_request(RPCEndpoint(method), params)
        assert "error" in answer and "result" not in answer, method
    missing = provider.make_request(RPCEndpoint("eth_getBlockByHash"), ["0x" + "00" * 32, False])
    assert missing["result"] is None


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.dictionaries(
        st.binary(min_size=32, max_size=32), st.integers(0, 2**256 - 1), min_size=1, max_size=4
    )
)
def test_random_storage_writes_prove_on_the_embedded_chain(
    embedded_chain: Chain, writes: dict[bytes, int]
) -> None:
    chain = embedded_chain
    store = chain.deploy_store()
    for key, value in writes.items():
        chain.call(store, "set_value", key, value)
    slots = [vyper_hashmap_slot(chain.slot_of("values"), key) for key in writes]
    _, values = proven(chain.w3, store.address, slots, chain.w3.eth.block_number)
    assert [values[s] for s in slots] == list(writes.values())


# ----------------------------------------------------------------------- connect / accounts


def test_connect_to_nothing_is_chain_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(ChainUnreachable) as caught:
        connect(url, timeout=2)
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Ethereum node at {url}: ") and "\n" not in message
    assert time.monotonic() - began < 5  # no retry back-off on the probe


@pytest.mark.parametrize("rpc", ["ws://127.0.0.1:8546", "127.0.0.1:8545", "", "http://"])
def test_connect_rejects_what_is_not_a_url(rpc: str) -> None:
    with pytest.raises(ConfigError):
        connect(rpc)


class _PoorProvider(BaseProvider):
    """A node that answers, but where nobody has any money."""

    answers: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "eth_chainId": lambda _: "0x5",
        "eth_getBalance": lambda _: "0x0",
    }

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        result = self.answers[method](params)
        return {"jsonrpc": "2.0", "id": 1, "result": result}  # type: ignore[typeddict-item]

    def is_connected(self, show_traceback: bool = False) -> bool:
        return True


def test_dev_accounts_on_an_unknown_chain_is_a_chain_error() -> None:
    with pytest.raises(ChainError):
        dev_accounts(Web3(_PoorProvider()))


def test_dev_accounts_beyond_the_funded_ten_is_a_chain_error(embedded_chain: Chain) -> None:
    with pytest.raises(ChainError):
        dev_accounts(embedded_chain.w3, 11)
