"""Plain ether transfers: funding the addresses that send transactions (administrators, vendors).

``fwledger chain fund ADDRESS --eth AMOUNT`` is built on :func:`send_ether`; amounts are parsed
exactly (:class:`decimal.Decimal`, never floats) with :func:`parse_ether`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3.exceptions import TimeExhausted, Web3Exception

from .errors import ChainError, ChainUnreachable, ConfigError

__all__ = ["Transfer", "format_ether", "parse_ether", "send_ether"]

WEI_PER_ETHER = 10**18
_MAX_WEI = 2**256 - 1


def parse_ether(text: str) -> int:
    """An amount of ether as typed (``1``, ``0.25``, ``1e-3``) -> wei, exactly.

    Raises:
        ConfigError: not a number, not above 0, finer than 1 wei (more than 18 decimals), or too large.
    """
    try:
        amount = Decimal(str(text).strip())
    except InvalidOperation:
        raise ConfigError(f"--eth {text!r} is not an amount of ether (e.g. 1 or 0.25)") from None
    if not amount.is_finite() or amount <= 0:
        raise ConfigError(f"--eth {text!r} must be an amount above 0")
    wei = amount * WEI_PER_ETHER
    if wei != wei.to_integral_value():
        raise ConfigError(f"--eth {text!r} is finer than 1 wei (at most 18 decimals)")
    if wei > _MAX_WEI:
        raise ConfigError(f"--eth {text!r} is more ether than can exist")
    return int(wei)


def format_ether(wei: int) -> str:
    """Wei -> ether as a plain decimal (``1.5``, ``0.000000000000000001``, ``100``)."""
    text = format(Decimal(wei) / WEI_PER_ETHER, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Transfer:
    tx: str
    block: int
    sender: str
    to: str
    wei: int
    gas_used: int
    balance: int  # the recipient's balance after the transfer, wei

    def to_json(self) -> dict[str, Any]:
        return {"tx": self.tx, "block": self.block, "from": self.sender, "to": self.to, "wei": str(self.wei),
                "eth": format_ether(self.wei), "gas_used": self.gas_used, "balance_wei": str(self.balance),
                "balance_eth": format_ether(self.balance)}


def send_ether(w3: Any, account: LocalAccount, to: str, wei: int, *, timeout: float = 120.0) -> Transfer:
    """Send ``wei`` from ``account`` to ``to`` and wait for the receipt.

    Raises:
        ConfigError: ``account`` holds less than the amount.
        ChainError: the node refused the transfer, it failed, or no receipt came within ``timeout``.
        ChainUnreachable: the node cannot be reached.
    """
    to = to_checksum_address(to)
    try:
        balance = int(w3.eth.get_balance(account.address))
        if balance < wei:
            raise ConfigError(f"{account.address} holds {format_ether(balance)} ETH, less than the "
                              f"{format_ether(wei)} ETH to send")
        gas = int(w3.eth.estimate_gas({"from": account.address, "to": to, "value": wei}))
        gas_price = int(w3.eth.gas_price)
        tx: dict[str, Any] = {"to": to, "value": wei, "gas": gas, "gasPrice": gas_price,
                              "chainId": int(w3.eth.chain_id),
                              "nonce": int(w3.eth.get_transaction_count(account.address, "pending"))}
        if balance < wei + gas * gas_price:
            raise ConfigError(f"{account.address} holds {format_ether(balance)} ETH: not enough for "
                              f"{format_ether(wei)} ETH and the gas")
        tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.05)
        after = int(w3.eth.get_balance(to))
    except TimeExhausted as exc:
        raise ChainError(f"funding {to}: no receipt within {timeout:.0f} s") from exc
    except requests.exceptions.ConnectionError as exc:
        raise ChainUnreachable(f"cannot reach the Ethereum node while funding {to}") from exc
    except (Web3Exception, requests.exceptions.RequestException, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChainError(f"funding {to}: the node refused: {first}") from exc
    if int(receipt["status"]) != 1:
        raise ChainError(f"funding {to}: the transfer failed (tx 0x{bytes(receipt['transactionHash']).hex()})")
    return Transfer(tx="0x" + bytes(receipt["transactionHash"]).hex(), block=int(receipt["blockNumber"]),
                    sender=account.address, to=to, wei=wei, gas_used=int(receipt["gasUsed"]), balance=after)
