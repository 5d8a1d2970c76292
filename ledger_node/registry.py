"""Deploy the release registry and talk to it: a typed client whose errors are the project's own.

Every transaction is signed locally with an eth-account key and sent raw, so the embedded chain
and a JSON-RPC node take exactly the same path. A refusal by the contract surfaces as
:class:`~ledger_node.errors.ContractRevert` carrying the contract's own reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import eth_abi
import requests
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception
from web3.logs import DISCARD

from .compiler import CompiledContract, registry_contract
from .errors import ChainError, ChainUnreachable, ConfigError, ContractRevert, FwledgerError
from .record import ReleaseRecord, Version, line_id
from .registry_types import (
    Deployment,
    HardwareClass,
    Policy,
    ReleaseEntry,
    deployment_path,
    load_deployment,
    save_deployment,
)

# the embedded chain raises eth-tester's own revert type from eth_estimateGas / eth_call
_REVERTS = (ContractLogicError, TransactionFailed)

__all__ = [
    "AdminResult",
    "Deployment",
    "HardwareClass",
    "Policy",
    "PublishResult",
    "Registry",
    "ReleaseEntry",
    "deploy",
    "deployment_path",
    "load_deployment",
    "save_deployment",
]

@dataclass(frozen=True)
class TxResult:
    tx: str
    block: int
    gas_used: int
    events: list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class AdminResult:
    """Outcome of an administrative call: done, or waiting for more approvals (k of n)."""

    executed: bool
    approvals: int
    threshold: int
    tx: str
    block: int
    gas_used: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PublishResult:
    header_hash: bytes
    record: ReleaseRecord
    tx: str
    block: int
    gas_used: int

    def to_json(self) -> dict[str, Any]:
        return {"header_hash": "0x" + self.header_hash.hex(), "tx": self.tx, "block": self.block,
                "gas_used": self.gas_used}


def _revert_reason(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    if isinstance(msg, tuple):
        msg = msg[0]
    msg = str(msg)
    for prefix in ("execution reverted: ", "execution reverted:", "execution reverted"):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            break
    return msg.strip() or "reverted without a reason"


def _wrap_transport(exc: BaseException, what: str) -> FwledgerError:
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ChainUnreachable(f"cannot reach the Ethereum node while {what}")
    return ChainError(f"chain error while {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _send(w3: Web3, account: LocalAccount, tx: dict[str, Any], what: str, timeout: float) -> Any:
    try:
        tx.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
        tx.setdefault("chainId", w3.eth.chain_id)
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.05)
    except _REVERTS as exc:
        raise ContractRevert(_revert_reason(exc), function=what) from exc
    except TimeExhausted as exc:
        raise ChainError(f"{what}: no receipt within {timeout:.0f} s") from exc
    except (Web3Exception, requests.exceptions.RequestException, ValueError) as exc:
        raise _wrap_transport(exc, what) from exc
    return receipt


def deploy(w3: Web3, account: LocalAccount, admins: Sequence[str] | None = None, threshold: int = 1,
           *, compiled: CompiledContract | None = None, timeout: float = 120.0) -> Deployment:
    """Compile ``contracts/ReleaseRegistry.vy`` and deploy it.

    Args:
        admins: administrator addresses (default: the deployer alone).
        threshold: k, the approvals a change needs.

    Raises:
        ContractRevert: bad administrators or threshold.
        ChainError: the node refused or could not be reached.
        ConfigError: the contract does not compile.
    """
    compiled = compiled or registry_contract()
    admin_list = [to_checksum_address(a) for a in (admins or [account.address])]
    factory = w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
    try:
        ctor = factory.constructor(admin_list, threshold)
        gas = ctor.estimate_gas({"from": account.address})
        tx = ctor.build_transaction({"from": account.address, "gas": gas + gas // 5,
                                     "nonce": w3.eth.get_transaction_count(account.address, "pending")})
    except _REVERTS as exc:
        raise ContractRevert(_revert_reason(exc), function="deploy") from exc
    except (Web3Exception, requests.exceptions.RequestException, ValueError) as exc:
        raise _wrap_transport(exc, "deploying the registry") from exc
    receipt = _send(w3, account, tx, "deploy", timeout)
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise ContractRevert("deployment transaction failed", function="deploy")
    address = receipt["contractAddress"]
    code = bytes(w3.eth.get_code(address))
    if keccak(code) != compiled.runtime_code_hash:
        raise ChainError("deployed code differs from the compiled runtime code")
    return Deployment(address=to_checksum_address(address), chain_id=w3.eth.chain_id,
                      block=receipt["blockNumber"], tx=_hex(receipt["transactionHash"]),
                      code_hash=_hex(compiled.runtime_code_hash), source_sha256=compiled.source_sha256,
                      abi=compiled.abi)


class Registry:
    """Typed client for one deployed registry.

    ``account`` signs transactions; it may be None for a read-only client.
    """

    def __init__(self, w3: Web3, deployment: Deployment, account: LocalAccount | None = None,
                 *, timeout: float = 120.0, check_code: bool = True) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.account = account
        self.timeout = timeout
        self.contract = w3.eth.contract(address=to_checksum_address(deployment.address), abi=deployment.abi)
        if check_code:
            try:
                code = bytes(w3.eth.get_code(self.contract.address))
            except (Web3Exception, requests.exceptions.RequestException, ValueError) as exc:
                raise _wrap_transport(exc, "reading the registry's code") from exc
            if _hex(keccak(code)) != deployment.code_hash:
                raise ConfigError(f"no release registry at {deployment.address} on this chain "
                                  "(the deployment record belongs to another chain or was reset)")

    # ------------------------------------------------------------------ plumbing
    @property
    def address(self) -> str:
        return str(self.contract.address)

    def with_account(self, account: LocalAccount) -> Registry:
        return Registry(self.w3, self.deployment, account, timeout=self.timeout, check_code=False)

    def _call(self, fn: str, *args: Any, block: Any = "latest") -> Any:
        try:
            return self.contract.functions[fn](*args).call(block_identifier=block)
        except _REVERTS as exc:
            raise ContractRevert(_revert_reason(exc), function=fn) from exc
        except (Web3Exception, requests.exceptions.RequestException, ValueError) as exc:
            raise _wrap_transport(exc, f"calling {fn}") from exc

    def transact(self, fn: str, *args: Any, gas: int | None = None) -> TxResult:
        """Send one registry transaction signed by this client's account.

        Raises:
            ContractRevert: the contract refused, with its reason.
            ChainError: transport failure.
            ConfigError: the client has no account.
        """
        if self.account is None:
            raise ConfigError(f"{fn} needs a signing key (--key-file)")
        call = self.contract.functions[fn](*args)
        sender: Any = {"from": self.account.address}
        tx: Any
        try:
            if gas is None:
                est = call.estimate_gas(sender)
                gas = est + est // 5 + 5_000
            tx = call.build_transaction({**sender, "gas": gas,
                                         "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending")})
        except _REVERTS as exc:
            raise ContractRevert(_revert_reason(exc), function=fn) from exc
        except (Web3Exception, requests.exceptions.RequestException, ValueError) as exc:
            raise _wrap_transport(exc, f"preparing {fn}") from exc
        receipt = _send(self.w3, self.account, tx, fn, self.timeout)
        if receipt["status"] != 1:
            # replay as a call at the parent block to learn the reason
            try:
                call.call({**sender}, block_identifier=receipt["blockNumber"] - 1)
                reason = "transaction failed (out of gas?)"
            except _REVERTS as exc:
                reason = _revert_reason(exc)
            except Exception:
                reason = "transaction failed"
            raise ContractRevert(reason, function=fn)
        return TxResult(tx=_hex(receipt["transactionHash"]), block=receipt["blockNumber"],
                        gas_used=receipt["gasUsed"], events=self._events(receipt))

    def _events(self, receipt: Any) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for name in (e["name"] for e in self.deployment.abi if e.get("type") == "event"):
            for log in self.contract.events[name]().process_receipt(receipt, errors=DISCARD):
                out.append((log["event"], dict(log["args"])))
        return out

    def _admin(self, fn: str, *args: Any) -> AdminResult:
        res = self.transact(fn, *args)
        for name, args_ in res.events:
            if name == "Approved":
                return AdminResult(False, int(args_["approvals"]), int(args_["threshold"]),
                                   res.tx, res.block, res.gas_used)
        k = int(self._call("threshold", block=res.block))
        return AdminResult(True, k, k, res.tx, res.block, res.gas_used)

    # ------------------------------------------------------------------ administration (k of n)
    def add_vendor(self, vendor: str, name: str) -> AdminResult:
        return self._admin("add_vendor", to_checksum_address(vendor), name)

    def revoke_vendor(self, vendor: str) -> AdminResult:
        return self._admin("revoke_vendor", to_checksum_address(vendor))

    def rotate_vendor(self, old: str, new: str) -> AdminResult:
        return self._admin("rotate_vendor", to_checksum_address(old), to_checksum_address(new))

    def add_hardware(self, hw_id: str, revision: int, enc_key: bytes) -> AdminResult:
        if len(enc_key) != 32:
            raise ConfigError("hardware encryption key must be a 32-byte X25519 public key")
        return self._admin("add_hardware", hw_id, revision, enc_key)

    def set_policy(self, hw_id: str, vendor_name: str, product: str, *, allowed: bool = True,
                   min_version: Version | None = None, max_version: Version | None = None) -> AdminResult:
        lo = (min_version or Version(0, 0, 0)).packed
        hi = (max_version or Version(0xFFFF, 0xFFFF, 0xFFFF)).packed
        return self._admin("set_policy", hw_id, vendor_name, product, allowed, lo, hi)

    def add_admin(self, admin: str) -> AdminResult:
        return self._admin("add_admin", to_checksum_address(admin))

    def remove_admin(self, admin: str) -> AdminResult:
        return self._admin("remove_admin", to_checksum_address(admin))

    def set_threshold(self, k: int) -> AdminResult:
        return self._admin("set_threshold", k)

    # ------------------------------------------------------------------ releases
    def publish(self, record: ReleaseRecord, *, gas: int | None = None) -> PublishResult:
        """Publish a record; the chain sets its publish time from the block.

        Raises:
            RecordError: the record is invalid before it is sent.
            ContractRevert: the registry refused it (with its reason).
            ChainError: transport failure.
        """
        record.validate()
        d = record.data
        res = self.transact(
            "publish", record.format_version, record.prev_hash, d.merkle_root, d.vendor_name,
            d.product, d.version.packed, d.file_hash, d.file_link, d.file_name, d.file_size,
            list(d.supported_hardware),
            [(x.product, x.min_version.packed, x.max_version.packed) for x in d.dependencies],
            gas=gas,
        )
        for name, a in res.events:
            if name == "Published":
                rec = ReleaseRecord.from_event(header_hash=a["header_hash"], line=a["line"],
                                               prev_hash=a["prev_hash"], data=a["data"])
                return PublishResult(bytes(a["header_hash"]), rec, res.tx, res.block, res.gas_used)
        raise ChainError("publish succeeded but emitted no Published event")

    def revoke(self, vendor_name: str, product: str, header_hash: bytes, reason: str) -> AdminResult:
        return self._admin("revoke", vendor_name, product, header_hash, reason)

    def mark_vulnerable(self, vendor_name: str, product: str, header_hash: bytes, note: str = "") -> AdminResult:
        return self._admin("mark_vulnerable", vendor_name, product, header_hash, note)

    # ------------------------------------------------------------------ views
    def line_started(self, vendor_name: str, product: str, *, block: int | str = "latest") -> bool:
        """Whether the product line has a first release."""
        return bytes(self._call("line_vendor", line_id(vendor_name, product), block=block)) != b"\x00" * 32

    def release_entry(self, line: bytes, header_hash: bytes, *, block: int | str = "latest") -> ReleaseEntry:
        return ReleaseEntry.from_word(int(self._call("releases", line, header_hash, block=block)))

    def vendor_name_hash(self, vendor: str) -> bytes:
        return bytes(self._call("vendor_name_hash", to_checksum_address(vendor)))

    def is_vendor(self, vendor: str, name: str | None = None) -> bool:
        h = self.vendor_name_hash(vendor)
        return h != b"\x00" * 32 and (name is None or h == keccak(name.encode()))

    def is_admin(self, who: str) -> bool:
        return bool(self._call("admins", to_checksum_address(who)))

    def threshold(self) -> int:
        return int(self._call("threshold"))

    def admin_count(self) -> int:
        return int(self._call("admin_count"))

    def hardware(self, hw_id: str) -> HardwareClass:
        reg, rev, key = self._call("hardware", keccak(hw_id.encode()))
        return HardwareClass(hw_id, bool(reg), int(rev), bytes(key))

    def policy(self, hw_id: str, vendor_name: str, product: str) -> Policy:
        return Policy.from_word(int(self._call("policies", keccak(hw_id.encode()), line_id(vendor_name, product))))

    def block_number(self) -> int:
        try:
            return int(self.w3.eth.block_number)
        except (Web3Exception, requests.exceptions.RequestException, ValueError) as exc:
            raise _wrap_transport(exc, "reading the block number") from exc


def admin_action_id(tag: int, types: Sequence[str], values: Sequence[Any]) -> bytes:
    """The action id the contract folds approvals under: keccak256(abi_encode(tag, args...))."""
    return keccak(eth_abi.encode(["uint256", *types], [tag, *values]))


def wait_until(pred: Any, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
