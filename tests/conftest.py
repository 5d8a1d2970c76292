"""Shared fixtures: a chain per backend (embedded eth-tester, anvil started here), a deployed registry.

The same ledger suite runs on both backends (eth-tester's ``backend_testing`` habit): a test that
takes ``chain`` or ``registry`` runs once on the embedded chain and once on an anvil node this
session starts on a free loopback port and stops by PID. Each test gets its own fresh registry
deployment (and on the embedded chain its own fresh chain), so no test sees another's state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ledger_node.devnet import AnvilProcess, find_anvil
from ledger_node.errors import DevnetError
from ledger_node.providers import connect, dev_accounts
from ledger_node.registry import Deployment, Registry, deploy

# helpers of several test modules that assert: pytest's detailed assertion messages there too
pytest.register_assert_rewrite("tests.integration.server_world")

BACKENDS = ["embedded", "anvil"]

# Device admission (entities/admission.py) is required by default. Test worlds about something else
# (rollouts, transfers, deployments, faults) run their tracker and firmware server processes in the
# lab mode "open"; the admission tests (tests/security/test_admission.py), the local stack and the
# demo pass "required" explicitly, which overrides these variables.
os.environ.setdefault("FWLEDGER_TRACKER_ADMISSION", "open")
os.environ.setdefault("FWLEDGER_SERVER_ADMISSION", "open")


@dataclass
class Chain:
    """A connected chain and its funded accounts: [admin, vendor, vendor2, other, ...]."""

    backend: str
    w3: Web3
    accounts: list[LocalAccount]
    rpc: str

    @property
    def admin(self) -> LocalAccount:
        return self.accounts[0]

    @property
    def vendor(self) -> LocalAccount:
        return self.accounts[1]

    @property
    def vendor2(self) -> LocalAccount:
        return self.accounts[2]

    @property
    def stranger(self) -> LocalAccount:
        return self.accounts[3]

    def deploy(self, admins: list[str] | None = None, threshold: int = 1) -> Deployment:
        return deploy(self.w3, self.admin, admins, threshold)

    @classmethod
    def connect(cls, rpc: str = "embedded", accounts: int = 6) -> Chain:
        """A chain at ``rpc`` ("embedded": a fresh in-process one) with its first funded accounts."""
        w3 = connect(rpc)
        return cls("embedded" if rpc == "embedded" else "anvil", w3, dev_accounts(w3, accounts), rpc)

    @classmethod
    def over(cls, w3: Web3, accounts: list[LocalAccount] | None = None) -> Chain:
        """An already connected ``w3`` (its RPC URL read from its provider) with ``accounts``
        (default: its first six funded ones)."""
        rpc = getattr(w3.provider, "endpoint_uri", None) or "embedded"
        return cls("embedded" if rpc == "embedded" else "anvil", w3,
                   dev_accounts(w3, 6) if accounts is None else accounts, str(rpc))


def require_anvil() -> Path:
    """The anvil binary (FWLEDGER_ANVIL, the project's .devnet, then PATH); a test without it is
    skipped, except under CI, where a missing anvil is an error (scripts/setup installs it)."""
    try:
        return find_anvil()
    except DevnetError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"anvil not installed ({exc}); run scripts/setup")


@pytest.fixture(scope="session")
def anvil_node() -> Iterator[AnvilProcess]:
    """One anvil for the session (tests isolate themselves by deploying fresh registries)."""
    require_anvil()
    node = AnvilProcess()
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(params=BACKENDS)
def chain(request: pytest.FixtureRequest) -> Chain:
    if request.param == "embedded":
        return Chain.connect()
    node: AnvilProcess = request.getfixturevalue("anvil_node")
    return Chain.connect(node.url)


@pytest.fixture
def registry(chain: Chain) -> Registry:
    """A fresh registry (1-of-1 admin), a vendor "acme", hardware classes cam-r1 and cam-r2."""
    reg = Registry(chain.w3, chain.deploy(), chain.admin)
    reg.add_vendor(chain.vendor.address, "acme")
    reg.add_hardware("cam-r1", 1, b"\x11" * 32)
    reg.add_hardware("cam-r2", 2, b"\x12" * 32)
    return reg


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h
