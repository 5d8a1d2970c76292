"""Unit tests of ledger_node.proofs and ledger_node.header: pure logic and attack cases.

Tries are built in memory with the ``trie`` package, so every proof here is generated and checked
without a chain; tests/integration/test_providers.py does the same against real nodes.
"""

from __future__ import annotations

from typing import Any

import pytest
import rlp
from eth.chains.mainnet import MAINNET_GENESIS_HEADER
from eth_utils import keccak
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from trie import HexaryTrie

from ledger_node.errors import ProofError, VerificationError
from ledger_node.header import (
    BlockHeader,
    decode_header,
    header_rlp_from_json,
)
from ledger_node.proofs import (
    EMPTY_CODE_HASH,
    EMPTY_TRIE_ROOT,
    Account,
    AccountProof,
    StorageProof,
    parse_proof_json,
    storage_key,
    verify_account_proof,
    verify_proof_result,
    verify_storage_proof,
    vyper_hashmap_slot,
)

WORD = 2**256
slots = st.integers(min_value=0, max_value=WORD - 1)
values = st.integers(min_value=1, max_value=WORD - 1)
storages = st.dictionaries(slots, values, min_size=1, max_size=40)


def storage_trie(storage: dict[int, int]) -> HexaryTrie:
    trie = HexaryTrie({})
    for slot, value in storage.items():
        trie[storage_key(slot)] = rlp.encode(value)
    return trie


def proof_of(trie: HexaryTrie, key: bytes) -> list[bytes]:
    return [rlp.encode(node) for node in trie.get_proof(key)]


def account_rlp(account: Account) -> bytes:
    return rlp.encode([account.nonce, account.balance, account.storage_root, account.code_hash])


def state_trie(accounts: dict[bytes, Account]) -> HexaryTrie:
    trie = HexaryTrie({})
    for address, account in accounts.items():
        trie[keccak(address)] = account_rlp(account)
    return trie


addresses = st.binary(min_size=20, max_size=20)
accounts_st = st.builds(
    Account,
    nonce=st.integers(min_value=0, max_value=2**64 - 1),
    balance=st.integers(min_value=0, max_value=2**200),
    storage_root=st.binary(min_size=32, max_size=32),
    code_hash=st.binary(min_size=32, max_size=32),
)


# ------------------------------------------------------------------------ storage proofs


@settings(max_examples=60, deadline=None)
@given(storages, st.data())
def test_storage_proofs_verify_for_present_and_absent_slots(
    storage: dict[int, int], data: Any
) -> None:
    trie = storage_trie(storage)
    slot = data.draw(st.sampled_from(sorted(storage)))
    proof = proof_of(trie, storage_key(slot))
    assert verify_storage_proof(trie.root_hash, slot, proof) == storage[slot]
    absent = data.draw(slots)
    assume(absent not in storage)
    assert verify_storage_proof(trie.root_hash, absent, proof_of(trie, storage_key(absent))) == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(storages, st.data())
def test_flipping_any_byte_of_any_proof_node_is_rejected(
    storage: dict[int, int], data: Any
) -> None:
    trie = storage_trie(storage)
    slot = data.draw(st.sampled_from(sorted(storage)))
    proof = proof_of(trie, storage_key(slot))
    index = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    node = bytearray(proof[index])
    position = data.draw(st.integers(min_value=0, max_value=len(node) - 1))
    node[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    proof[index] = bytes(node)
    with pytest.raises(ProofError):
        verify_storage_proof(trie.root_hash, slot, proof)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(slots, values, min_size=2, max_size=40), st.data())
def test_incomplete_proof_is_rejected(storage: dict[int, int], data: Any) -> None:
    trie = storage_trie(storage)
    slot = data.draw(st.sampled_from(sorted(storage)))
    proof = proof_of(trie, storage_key(slot))
    drop = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    with pytest.raises(ProofError):
        verify_storage_proof(trie.root_hash, slot, proof[:drop] + proof[drop + 1 :])


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(slots, values, min_size=2, max_size=40), st.data())
def test_proof_of_one_present_slot_does_not_prove_another(
    storage: dict[int, int], data: Any
) -> None:
    trie = storage_trie(storage)
    pair = st.lists(st.sampled_from(sorted(storage)), min_size=2, max_size=2, unique=True)
    slot, other = data.draw(pair)
    with pytest.raises(ProofError):
        verify_storage_proof(trie.root_hash, other, proof_of(trie, storage_key(slot)))


def test_storage_proof_against_wrong_root_is_rejected() -> None:
    trie = storage_trie({1: 10, 2: 20, 3: 30})
    proof = proof_of(trie, storage_key(2))
    other = storage_trie({1: 10, 2: 21, 3: 30})
    with pytest.raises(ProofError):
        verify_storage_proof(other.root_hash, 2, proof)
    with pytest.raises(ProofError):
        verify_storage_proof(b"\x00" * 32, 2, proof)
    with pytest.raises(ProofError):
        verify_storage_proof(trie.root_hash[:31], 2, proof)


def test_empty_storage_trie_proves_absence_either_way() -> None:
    # geth answers [] for an empty storage trie, anvil answers [rlp(b"")] == ["0x80"]
    assert verify_storage_proof(EMPTY_TRIE_ROOT, 0, []) == 0
    assert verify_storage_proof(EMPTY_TRIE_ROOT, 5, [b"\x80"]) == 0
    with pytest.raises(ProofError):
        verify_storage_proof(keccak(b"not empty"), 0, [])


def test_garbage_nodes_are_proof_errors_not_library_errors() -> None:
    trie = storage_trie({7: 9})
    root = trie.root_hash
    three_items = rlp.encode([b"a", b"b", b"c"])
    for garbage in ([b""], [b"\xc0"], [b"\xff\xff"], [three_items], [b"\x81\x01"]):
        with pytest.raises(ProofError):
            verify_storage_proof(root, 7, garbage)
    # a leaf holding a value that is not a canonical integer
    bad = HexaryTrie({})
    bad[storage_key(7)] = b"\x00\x01"
    with pytest.raises(ProofError):
        verify_storage_proof(bad.root_hash, 7, proof_of(bad, storage_key(7)))


def test_storage_slot_range_is_checked() -> None:
    with pytest.raises(ValueError):
        verify_storage_proof(EMPTY_TRIE_ROOT, -1, [])
    with pytest.raises(ValueError):
        verify_storage_proof(EMPTY_TRIE_ROOT, WORD, [])


# ------------------------------------------------------------------------ account proofs


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(addresses, accounts_st, min_size=1, max_size=30), addresses, st.data())
def test_account_proofs_verify_and_prove_absence(
    accounts: dict[bytes, Account], stranger: bytes, data: Any
) -> None:
    trie = state_trie(accounts)
    address = data.draw(st.sampled_from(sorted(accounts)))
    proof = proof_of(trie, keccak(address))
    assert verify_account_proof(trie.root_hash, address, proof) == accounts[address]
    assume(stranger not in accounts)
    assert verify_account_proof(trie.root_hash, stranger, proof_of(trie, keccak(stranger))) is None


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(addresses, accounts_st, min_size=1, max_size=30), st.data())
def test_tampered_account_proof_is_rejected(accounts: dict[bytes, Account], data: Any) -> None:
    trie = state_trie(accounts)
    address = data.draw(st.sampled_from(sorted(accounts)))
    proof = proof_of(trie, keccak(address))
    index = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    node = bytearray(proof[index])
    node[data.draw(st.integers(min_value=0, max_value=len(node) - 1))] ^= 0x01
    proof[index] = bytes(node)
    with pytest.raises(ProofError):
        verify_account_proof(trie.root_hash, address, proof)


def test_state_entry_that_is_not_an_account_is_rejected() -> None:
    address = b"\x01" * 20
    trie = HexaryTrie({})
    trie[keccak(address)] = rlp.encode([1, 2, 3])
    with pytest.raises(ProofError):
        verify_account_proof(trie.root_hash, address, proof_of(trie, keccak(address)))


def test_account_address_length_is_checked() -> None:
    with pytest.raises(ValueError):
        verify_account_proof(EMPTY_TRIE_ROOT, b"\x01" * 19, [])


def test_proof_error_is_a_verification_error() -> None:
    assert issubclass(ProofError, VerificationError)


# ----------------------------------------------------------------- eth_getProof answers


def make_answer(hexed: bool = True) -> tuple[bytes, dict[str, Any]]:
    """A state with one contract holding three slots, and its eth_getProof answer."""
    storage = {0: 3, 5: 99, 2**255: 1}
    strie = storage_trie(storage)
    contract = b"\xaa" * 20
    account = Account(nonce=1, balance=7, storage_root=strie.root_hash, code_hash=keccak(b"code"))
    eoa = Account(0, 10**18, EMPTY_TRIE_ROOT, EMPTY_CODE_HASH)
    state = state_trie({contract: account, b"\xbb" * 20: eoa})
    h = (lambda b: "0x" + b.hex()) if hexed else (lambda b: b)
    q = hex if hexed else (lambda n: n)
    answer = {
        "address": h(contract),
        "balance": q(7),
        "codeHash": h(account.code_hash),
        "nonce": q(1),
        "storageHash": h(strie.root_hash),
        "accountProof": [h(n) for n in proof_of(state, keccak(contract))],
        "storageProof": [
            {"key": h(slot.to_bytes(32, "big")), "value": q(storage.get(slot, 0)),
             "proof": [h(n) for n in proof_of(strie, storage_key(slot))]}
            for slot in (0, 5, 2**255, 6)
        ],
    }
    return state.root_hash, answer


@pytest.mark.parametrize("hexed", [True, False], ids=["json", "web3-formatted"])
def test_parse_and_verify_a_whole_answer(hexed: bool) -> None:
    root, answer = make_answer(hexed)
    parsed = parse_proof_json(answer)
    assert isinstance(parsed, AccountProof)
    assert parsed.address == b"\xaa" * 20 and parsed.nonce == 1 and parsed.balance == 7
    assert all(isinstance(entry, StorageProof) for entry in parsed.storage_proofs)
    account, proven = verify_proof_result(root, parsed)
    assert account is not None and account.nonce == 1 and account.balance == 7
    assert proven == {0: 3, 5: 99, 2**255: 1, 6: 0}


def test_geth_style_short_keys_are_parsed() -> None:
    root, answer = make_answer()
    answer["storageProof"][1]["key"] = "0x5"
    assert verify_proof_result(root, parse_proof_json(answer))[1][5] == 99


@pytest.mark.parametrize(
    ("field", "value"),
    [("balance", "0x8"), ("nonce", "0x2"), ("codeHash", "0x" + "11" * 32),
     ("storageHash", "0x" + "22" * 32)],
)
def test_answer_whose_summary_lies_is_rejected(field: str, value: str) -> None:
    root, answer = make_answer()
    answer[field] = value
    with pytest.raises(ProofError):
        verify_proof_result(root, parse_proof_json(answer))


def test_answer_claiming_a_wrong_slot_value_is_rejected() -> None:
    root, answer = make_answer()
    answer["storageProof"][1]["value"] = "0x64"
    with pytest.raises(ProofError):
        verify_proof_result(root, parse_proof_json(answer))
    root, answer = make_answer()
    answer["storageProof"][3]["value"] = "0x1"  # claims an absent slot holds 1
    with pytest.raises(ProofError):
        verify_proof_result(root, parse_proof_json(answer))


def test_absent_account_answer_must_claim_the_empty_account() -> None:
    state = state_trie({b"\xbb" * 20: Account(0, 1, EMPTY_TRIE_ROOT, EMPTY_CODE_HASH)})
    stranger = b"\xcc" * 20
    answer = {
        "address": "0x" + stranger.hex(), "balance": "0x0", "nonce": "0x0",
        "codeHash": "0x" + EMPTY_CODE_HASH.hex(), "storageHash": "0x" + EMPTY_TRIE_ROOT.hex(),
        "accountProof": ["0x" + n.hex() for n in proof_of(state, keccak(stranger))],
        "storageProof": [{"key": "0x0", "value": "0x0", "proof": ["0x80"]}],
    }
    assert verify_proof_result(state.root_hash, parse_proof_json(answer)) == (None, {0: 0})
    answer["balance"] = "0x1"
    with pytest.raises(ProofError):
        verify_proof_result(state.root_hash, parse_proof_json(answer))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.pop("accountProof"),
        lambda a: a.update(address="0x1234"),
        lambda a: a.update(balance="zz"),
        lambda a: a.update(storageProof="0x00"),
        lambda a: a["storageProof"][0].pop("proof"),
        lambda a: a.update(accountProof=["0xzz"]),
        lambda a: a.update(nonce=True),
    ],
)
def test_malformed_answers_are_proof_errors(mutate: Any) -> None:
    _, answer = make_answer()
    mutate(answer)
    with pytest.raises(ProofError):
        parse_proof_json(answer)


# --------------------------------------------------------------------- vyper hashmap slots


def test_vyper_hashmap_slot_is_keccak_of_slot_then_key() -> None:
    key = b"\x11" * 32
    expected = keccak((1).to_bytes(32, "big") + key)
    assert vyper_hashmap_slot(1, key) == int.from_bytes(expected, "big")
    address = b"\x22" * 20
    first = keccak((2).to_bytes(32, "big") + b"\x00" * 12 + address)
    second = keccak(first + (5).to_bytes(32, "big"))
    assert vyper_hashmap_slot(2, address, 5) == int.from_bytes(second, "big")
    assert vyper_hashmap_slot(3) == 3


@pytest.mark.parametrize(
    ("args", "error"),
    [((1, b"\x01" * 31), ValueError), ((1, -1), ValueError), ((1, WORD), ValueError),
     ((-1, 1), ValueError), ((1, "0x01"), TypeError)],
)
def test_vyper_hashmap_slot_rejects_bad_keys(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        vyper_hashmap_slot(*args)


# ------------------------------------------------------------------------------ headers

#: anvil 1.7.1's genesis block (Prague), as eth_getBlockByNumber returned it
ANVIL_GENESIS = {
    "hash": "0xc109332f16e8bfe00f08fc2b990e1aecc3e83c4eeb7cae43681ecfc05f481c32",
    "parentHash": "0x" + "00" * 32,
    "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
    "miner": "0x" + "00" * 20,
    "stateRoot": "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421",
    "transactionsRoot": "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421",
    "receiptsRoot": "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421",
    "logsBloom": "0x" + "00" * 256,
    "difficulty": "0x0",
    "number": "0x0",
    "gasLimit": "0x1c9c380",
    "gasUsed": "0x0",
    "timestamp": "0x6b0898ec",
    "extraData": "0x",
    "mixHash": "0x" + "00" * 32,
    "nonce": "0x0000000000000000",
    "baseFeePerGas": "0x3b9aca00",
    "withdrawalsRoot": "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421",
    "blobGasUsed": "0x0",
    "excessBlobGas": "0x0",
    "parentBeaconBlockRoot": "0x" + "00" * 32,
    "requestsHash": "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "totalDifficulty": "0x0",
    "size": "0x267",
    "uncles": [],
    "transactions": [],
    "withdrawals": [],
}


def test_prague_header_rebuilds_to_its_hash() -> None:
    raw = header_rlp_from_json(ANVIL_GENESIS)
    expected = bytes.fromhex(ANVIL_GENESIS["hash"][2:])
    header = decode_header(raw, expected)
    assert isinstance(header, BlockHeader)
    assert header.hash == expected and header.number == 0 and header.timestamp == 0x6B0898EC
    assert header.state_root == bytes.fromhex(ANVIL_GENESIS["stateRoot"][2:])
    assert header.parent_hash == b"\x00" * 32 and header.rlp == raw


def test_frontier_header_rebuilds_to_its_hash() -> None:
    g = MAINNET_GENESIS_HEADER
    block = {
        "parentHash": g.parent_hash, "sha3Uncles": g.uncles_hash, "miner": g.coinbase,
        "stateRoot": g.state_root, "transactionsRoot": g.transaction_root,
        "receiptsRoot": g.receipt_root, "logsBloom": g.bloom, "difficulty": g.difficulty,
        "number": g.block_number, "gasLimit": g.gas_limit, "gasUsed": g.gas_used,
        "timestamp": g.timestamp, "extraData": g.extra_data, "mixHash": g.mix_hash,
        "nonce": g.nonce,
    }
    raw = header_rlp_from_json(block)
    mainnet_genesis = bytes.fromhex(
        "d4e56740f876aef8c010b86a40d5f56745a118d0906a34e69aec8c0db1cb8fa3"
    )
    assert decode_header(raw, mainnet_genesis).hash == mainnet_genesis


def test_eth_tester_style_int_bloom_is_padded() -> None:
    block = dict(ANVIL_GENESIS, logsBloom=0)
    assert keccak(header_rlp_from_json(block)).hex() == ANVIL_GENESIS["hash"][2:]


@pytest.mark.parametrize(
    "change",
    [{"extraData": "0x" + "00" * 32}, {"mixHash": "0x" + "01" * 32}, {"timestamp": "0x1"},
     {"requestsHash": None}, {"parentBeaconBlockRoot": "0x" + "56" * 32}],
)
def test_any_changed_header_field_changes_the_hash(change: dict[str, Any]) -> None:
    block = dict(ANVIL_GENESIS, **change)
    with pytest.raises(ProofError):
        decode_header(header_rlp_from_json(block), bytes.fromhex(ANVIL_GENESIS["hash"][2:]))


@pytest.mark.parametrize(
    "change",
    [{"stateRoot": None}, {"stateRoot": "0x1234"}, {"baseFeePerGas": None}, {"nonce": "0x00"},
     {"number": "zz"}, {"logsBloom": "0x" + "00" * 257}, {"miner": 5.0}],
)
def test_malformed_block_json_is_rejected(change: dict[str, Any]) -> None:
    block = {k: v for k, v in dict(ANVIL_GENESIS, **change).items() if v is not None}
    with pytest.raises(ProofError):
        header_rlp_from_json(block)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc0", b"\xff", rlp.encode([b"\x00"] * 14), rlp.encode([b"\x00"] * 22),
     rlp.encode([[b""]] * 15), rlp.encode([b"\x00" * 31] + [b""] * 14)],
)
def test_malformed_header_rlp_is_rejected(raw: bytes) -> None:
    with pytest.raises(ProofError):
        decode_header(raw)
