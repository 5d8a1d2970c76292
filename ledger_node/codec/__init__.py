"""Light codecs for the device: the few Ethereum formats a light client checks, without the chain stack.

A device verifies ledger proofs (RLP, Merkle-Patricia tries), EIP-191/EIP-712 signatures and ABI
records. The reference libraries for these (``eth-utils``, ``eth-abi``, ``eth-account``, ``rlp``,
``trie``) import ``pydantic``, ``py_ecc`` (BLS pairings), ``eth-keyfile`` and ``parsimonious``:
about 0.5 s and 30 MiB before a device does anything, more than a whole python-tuf client. These
modules implement only what the device reads, on two C libraries (``coincurve`` for secp256k1,
``pycryptodome`` for keccak), and each is tested against the reference library on the same inputs
(``tests/unit/test_codec.py``, property-based): the hosts keep using the reference libraries, and
both sides must agree byte for byte.

- :mod:`.hashing`: keccak-256, addresses (EIP-55 checksums).
- :mod:`.ecdsa`: secp256k1 keys, EIP-191 personal messages, recovery.
- :mod:`.eip712`: EIP-712 typed-data digests (structs of atomic and dynamic fields).
- :mod:`.abi`: the ABI subset the registry's records use, decoded strictly (canonical only).
- :mod:`.rlp`: RLP, strict.
- :mod:`.mpt`: Merkle-Patricia trie proofs (``eth_getProof``).
"""
