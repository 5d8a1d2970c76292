"""The device's light codecs agree with the reference libraries the hosts use, byte for byte.

``ledger_node.codec`` reimplements, for the device only, what ``eth-utils``, ``eth-abi``,
``eth-account``, ``rlp`` and ``trie`` do for the formats fwledger reads (see its docstring for
why). Each property here runs both on the same generated input: same digest, same signature, same
address, same decoded value, and the same verdict (accept or refuse) on malformed input.
"""

from __future__ import annotations

import eth_abi
import pytest
import rlp as ref_rlp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_utils import is_address as ref_is_address
from eth_utils import is_checksum_address as ref_is_checksum
from eth_utils import keccak as ref_keccak
from eth_utils import to_checksum_address as ref_checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trie import HexaryTrie

from ledger_node.codec import abi, ecdsa, eip712, hashing, mpt, rlp
from ledger_node.codec.hashing import is_address, is_checksum_address, keccak, to_checksum_address

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
keys = st.binary(min_size=32, max_size=32).filter(lambda k: 0 < int.from_bytes(k, "big") < ecdsa.SECP256K1_N)


# ----------------------------------------------------------------------------- hashing, addresses

@FAST
@given(st.binary(max_size=300))
def test_keccak_matches(data: bytes) -> None:
    assert keccak(data) == ref_keccak(data)


def test_keccak_binds_pycryptodome_directly_and_agrees_with_its_module() -> None:
    """The direct ctypes binding is what ``keccak`` uses (no ``Crypto`` module import), and it agrees
    with pycryptodome's own module (the fallback) on every length around the 136-byte rate."""
    direct, module = hashing._bind_keccak(), hashing._module_keccak()
    assert direct is not None and hashing._keccak256.__name__ == "keccak256"  # the direct binding, not the fallback
    for n in (0, 1, 31, 32, 135, 136, 137, 271, 272, 273, 4096, 100_003):
        data = bytes((i * 7 + n) % 251 for i in range(n))
        assert direct(data) == module(data) == ref_keccak(data), n
    assert keccak(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak(bytearray(b"abc")) == keccak(memoryview(b"abc")) == ref_keccak(b"abc")


@FAST
@given(st.one_of(st.binary(min_size=18, max_size=22), st.text(alphabet="0123456789abcdefABCDEFxX", max_size=44)))
def test_addresses_match(value: bytes | str) -> None:
    assert is_address(value) == ref_is_address(value)
    assert is_checksum_address(value) == ref_is_checksum(value)
    if ref_is_address(value):
        assert to_checksum_address(value) == ref_checksum(value)
    else:
        with pytest.raises(ValueError):
            to_checksum_address(value)


# ----------------------------------------------------------------------------- signatures

@FAST
@given(keys, st.one_of(st.binary(max_size=200), st.text(max_size=100)))
def test_personal_signatures_match(key: bytes, message: bytes | str) -> None:
    ref = Account.from_key(key)
    signable = encode_defunct(text=message) if isinstance(message, str) else encode_defunct(primitive=message)
    ours = ecdsa.LocalKey(key)
    assert ours.address == ref.address
    sig = ecdsa.sign_personal(ours, message)
    assert sig == bytes(ref.sign_message(signable).signature)  # deterministic, low s: identical
    assert ecdsa.recover_personal(message, sig) == ref.address
    assert ecdsa.sign_personal(ref, message) == sig  # an eth_account account signs through it too


@FAST
@given(keys, st.binary(min_size=32, max_size=32), st.binary(min_size=65, max_size=65))
def test_recovery_agrees_on_any_signature(key: bytes, digest: bytes, junk: bytes) -> None:
    signable = encode_defunct(primitive=digest)
    for sig in (junk, ecdsa.sign_personal(key, digest), junk[:64] + bytes([27 + junk[64] % 2])):
        try:
            expected: str | None = Account.recover_message(signable, signature=sig)
        except Exception:
            expected = None
        if not int.from_bytes(sig[:32], "big") or not int.from_bytes(sig[32:64], "big") or sig[64] not in (0, 1, 27, 28):
            expected = None  # r or s of 0 is no signature, v >= 35 is a transaction's (EIP-155): eth-keys takes both
        try:
            got: str | None = ecdsa.recover_personal(digest, sig)
        except ecdsa.SignatureError:
            got = None
        assert got == expected


def test_bad_keys_and_signatures_refused() -> None:
    for bad in (b"\x00" * 32, b"\xff" * 32, b"\x01" * 31):
        with pytest.raises(ValueError):
            ecdsa.LocalKey(bad)
    with pytest.raises(ecdsa.SignatureError, match="65 bytes"):
        ecdsa.recover_personal("m", b"\x01" * 64)
    with pytest.raises(ecdsa.SignatureError, match="out of range"):
        ecdsa.recover_personal("m", b"\x01" * 64 + b"\x1d")
    assert "key" not in repr(ecdsa.LocalKey.create()).lower().replace("localkey", "")


# ----------------------------------------------------------------------------- EIP-712

_TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                     {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
    "Release": [{"name": "vendor", "type": "string"}, {"name": "version", "type": "uint64"},
                {"name": "hash", "type": "bytes32"}, {"name": "blob", "type": "bytes"},
                {"name": "live", "type": "bool"}, {"name": "owner", "type": "address"},
                {"name": "parts", "type": "Part[]"}, {"name": "tag", "type": "bytes4"}],
    "Part": [{"name": "name", "type": "string"}, {"name": "size", "type": "uint32"}],
}


@FAST
@given(st.text(max_size=30), st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32), st.binary(max_size=70),
       st.booleans(), st.binary(min_size=20, max_size=20), st.integers(1, 2**64),
       st.lists(st.tuples(st.text(max_size=10), st.integers(0, 2**32 - 1)), max_size=3), keys)
def test_typed_data_digests_match(vendor: str, version: int, h: bytes, blob: bytes, live: bool, owner: bytes,
                                  chain_id: int, parts: list[tuple[str, int]], key: bytes) -> None:
    full = {"types": _TYPES, "primaryType": "Release",
            "domain": {"name": "fwledger", "version": "1", "chainId": chain_id,
                       "verifyingContract": ref_checksum(owner)},
            "message": {"vendor": vendor, "version": version, "hash": h, "blob": blob, "live": live,
                        "owner": ref_checksum(owner), "parts": [{"name": n, "size": s} for n, s in parts],
                        "tag": h[:4]}}
    msg = encode_typed_data(full_message=full)
    assert eip712.typed_data_digest(full) == ref_keccak(b"\x19" + msg.version + msg.header + msg.body)
    assert ecdsa.sign_hash(key, eip712.typed_data_digest(full)) == bytes(Account.from_key(key).sign_message(msg).signature)


def test_typed_data_values_are_strict() -> None:
    base = {"types": {"EIP712Domain": [{"name": "name", "type": "string"}],
                      "M": [{"name": "h", "type": "bytes32"}, {"name": "n", "type": "uint8"}]},
            "primaryType": "M", "domain": {"name": "x"}, "message": {"h": b"\x01" * 32, "n": 1}}
    eip712.typed_data_digest(base)
    for message in ({"h": b"\x01" * 31, "n": 1}, {"h": b"\x01" * 32, "n": 256}, {"h": b"\x01" * 32},
                    {"h": b"\x01" * 32, "n": True}):
        with pytest.raises(ValueError):
            eip712.typed_data_digest({**base, "message": message})


# ----------------------------------------------------------------------------- ABI

RECORD_TYPES = ["bytes32", "string", "uint256", "string", "uint64", "bytes32", "string", "string", "uint256",
                "string[]", "(string,uint64,uint64)[]"]
u64 = st.integers(0, 2**64 - 1)
records = st.tuples(st.binary(min_size=32, max_size=32), st.text(max_size=20), st.integers(0, 2**256 - 1),
                    st.text(max_size=20), u64, st.binary(min_size=32, max_size=32), st.text(max_size=40),
                    st.text(max_size=20), st.integers(0, 2**256 - 1), st.lists(st.text(max_size=12), max_size=4),
                    st.lists(st.tuples(st.text(max_size=8), u64, u64), max_size=3))


@FAST
@given(records)
def test_abi_round_trip_matches(values: tuple) -> None:  # type: ignore[type-arg]
    encoded = eth_abi.encode(RECORD_TYPES, list(values))
    assert abi.encode(RECORD_TYPES, list(values)) == encoded
    assert abi.decode(RECORD_TYPES, encoded) == eth_abi.decode(RECORD_TYPES, encoded, strict=True)


@FAST
@given(records, st.integers(0, 10_000), st.integers(0, 255))
def test_abi_refuses_what_is_not_canonical(values: tuple, at: int, byte: int) -> None:  # type: ignore[type-arg]
    encoded = bytearray(eth_abi.encode(RECORD_TYPES, list(values)))
    encoded[at % len(encoded)] = byte
    tampered = bytes(encoded)
    try:
        ref_ok = eth_abi.encode(RECORD_TYPES, list(eth_abi.decode(RECORD_TYPES, tampered, strict=True))) == tampered
    except Exception:
        ref_ok = False
    try:
        ours = abi.decode(RECORD_TYPES, tampered)
    except abi.AbiError:
        ours = None
    assert (ours is not None) == ref_ok
    if ours is not None:
        assert abi.encode(RECORD_TYPES, list(ours)) == tampered


def test_abi_aliased_offsets_do_not_blow_up() -> None:
    # 1,000 array elements all pointing at one 1 KiB string: canonical data can never do this
    string = (1024).to_bytes(32, "big") + b"a" * 1024
    heads = b"".join((32 * 1000).to_bytes(32, "big") for _ in range(1000))
    data = (32).to_bytes(32, "big") + (1000).to_bytes(32, "big") + heads + string
    with pytest.raises(abi.AbiError, match="overlap|canonical"):
        abi.decode(["string[]"], data)


# ----------------------------------------------------------------------------- RLP

rlp_items = st.recursive(st.binary(max_size=70), lambda inner: st.lists(inner, max_size=5), max_leaves=20)


@FAST
@given(rlp_items)
def test_rlp_round_trip_matches(item: object) -> None:
    encoded = ref_rlp.encode(item)
    assert rlp.encode(item) == encoded  # type: ignore[arg-type]
    assert rlp.decode(encoded) == ref_rlp.decode(encoded, strict=True)


@FAST
@given(st.binary(max_size=80))
def test_rlp_verdicts_match_on_junk(data: bytes) -> None:
    try:
        ref = ref_rlp.decode(data, strict=True)
        ref_ok = ref_rlp.encode(ref) == data
    except Exception:
        ref_ok = False
    try:
        ours = rlp.decode(data)
        assert rlp.encode(ours) == data
        ok = True
    except rlp.RLPError:
        ok = False
    assert ok == ref_ok


# ----------------------------------------------------------------------------- trie proofs

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.binary(min_size=32, max_size=32), st.binary(min_size=1, max_size=40), min_size=1,
                       max_size=40), st.binary(min_size=32, max_size=32), st.data())
def test_trie_proofs_match(content: dict[bytes, bytes], absent: bytes, data: st.DataObject) -> None:
    t = HexaryTrie({})
    for k, v in content.items():
        t[k] = v
    for key in [*list(content)[:5], absent]:
        proof = [ref_rlp.encode(n) for n in t.get_proof(key)]
        assert mpt.value_from_proof(t.root_hash, key, proof) == HexaryTrie.get_from_proof(t.root_hash, key,
                                                                                        t.get_proof(key))
        if proof:  # drop one node: both refuse (or, for an absent key, may still prove absence the same way)
            drop = data.draw(st.integers(0, len(proof) - 1))
            short = proof[:drop] + proof[drop + 1:]
            try:
                expected: bytes | None = HexaryTrie.get_from_proof(t.root_hash, key, [ref_rlp.decode(n) for n in short])
            except Exception:
                expected = None
            try:
                got: bytes | None = mpt.value_from_proof(t.root_hash, key, short)
            except mpt.ProofError:
                got = None
            assert got == expected


def test_empty_trie_and_wrong_root() -> None:
    assert mpt.value_from_proof(mpt.BLANK_ROOT, b"\x01" * 32, []) == b""
    t = HexaryTrie({})
    t[b"\x01" * 32] = b"v"
    with pytest.raises(mpt.ProofError, match="missing proof node"):
        mpt.value_from_proof(b"\x02" * 32, b"\x01" * 32, [ref_rlp.encode(n) for n in t.get_proof(b"\x01" * 32)])
