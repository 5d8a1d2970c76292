"""The device is a light client: its entry points load no chain stack and no server framework.

Each test runs a device command in a fresh interpreter (``fwledger device ...`` through the CLI's
own entry point) and then lists which of the heavy packages got imported: web3, eth-tester,
py-evm (``eth``), vyper, the ASGI stack (fastapi, starlette, uvicorn), and the host-side Ethereum
libraries (eth-account, eth-utils, eth-abi, eth-keys, rlp, trie, with pydantic and py_ecc behind
them). Devices verify proofs, signatures and records with ``ledger_node.codec`` (coincurve, and
pycryptodome's keccak library bound directly) and images with ``cryptography``; nothing else. The CLI imports a command group's module only when that group runs
(``entities/cli.py``, ``LazyGroup``): a device command loads none of the other groups' modules,
and ``--help`` still lists every command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.test_device_update import MAIN, world  # noqa: F401 - the shared device world fixture
from tests.security.world import DeviceWorld

REPO = Path(__file__).resolve().parents[2]

#: packages a device must never load (top-level module names)
HEAVY = ("web3", "eth_tester", "eth", "vyper", "fastapi", "starlette", "uvicorn",
         "eth_account", "eth_utils", "eth_abi", "eth_keys", "eth_keyfile", "rlp", "trie", "pydantic", "py_ecc",
         # cffi's in-line mode parses C declarations at start-up, and pycryptodome's Python modules
         # load its helpers and ctypes.util (keccak is bound to its C library directly:
         # ledger_node/codec/hashing.py; coincurve's compiled binding needs only _cffi_backend)
         "cffi", "pycparser", "Crypto")
#: the other command groups' modules, which a device command must not load either
OTHER_GROUPS = ("entities.admission_cli", "entities.anchors_cli", "entities.author_cli", "entities.fleet_ca_cli",
                "entities.ledger_cli", "entities.rollout_cli", "entities.server_cli", "entities.tracker_cli")
#: modules a device command must not load either: cryptography's OpenSSL backend module (RSA, EC,
#: every cipher), which X25519's public constructors import only to check support
#: (entities/bundle/keywrap.py calls the Rust constructors they call)
NOT_LOADED = ("cryptography.hazmat.backends.openssl.backend",)

_PROBE = """
import json, os, sys
HEAVY = os.environ["FWLEDGER_PROBE_HEAVY"].split(",")
from entities.cli import cli
try:
    cli(sys.argv[1:], prog_name="fwledger")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
loaded += sorted(set(sys.modules) & set(os.environ["FWLEDGER_PROBE_GROUPS"].split(",")))
print("\\nPROBE " + json.dumps({"code": code, "loaded": loaded}))
"""


def run_device(*args: str) -> tuple[int, list[str], str]:
    """Run ``fwledger ARGS`` in a fresh interpreter; its exit code, the heavy packages and other groups' modules
    it loaded, its stdout."""
    env = {**os.environ, "FWLEDGER_PROBE_HEAVY": ",".join(HEAVY), "FWLEDGER_PROBE_GROUPS": ",".join(OTHER_GROUPS + NOT_LOADED)}
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    assert line, done.stdout + done.stderr
    probe = json.loads(line[-1][6:])
    return int(probe["code"] or 0), probe["loaded"], done.stdout


def test_device_update_status_and_agent_load_no_chain_stack(world: DeviceWorld, tmp_path: Path) -> None:  # noqa: F811
    """``device update`` (ledger proofs, signature, size, Merkle root, hash, decrypt, install),
    ``device status`` and one agent pass (``device run``) import none of :data:`HEAVY`, of
    :data:`OTHER_GROUPS` and of :data:`NOT_LOADED`."""
    rel = world.release("main-fw", "1.1.0")
    root = world.device("cam-1", MAIN, health_command=["true"])
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps(world.evidence(rel.record).to_json()))

    code, loaded, out = run_device("device", "update", "--dir", str(root), "--bundle", str(rel.path),
                                   "--evidence", str(evidence), "--json")
    assert code == 0 and json.loads(out.split("\nPROBE ")[0])["outcome"] == "confirmed"
    assert loaded == [], f"device update loaded {loaded}"
    assert (root / "components/main-fw/slot_b").read_bytes() == rel.image  # it did verify and install

    code, loaded, _ = run_device("device", "status", "--dir", str(root), "--json")
    assert (code, loaded) == (0, [])

    # one agent pass against a tracker that is not there: the whole agent path, no network answer
    code, loaded, _ = run_device("device", "run", "--dir", str(root), "--tracker", "http://127.0.0.1:9",
                                 "--passes", "1", "--interval", "0.01", "--json")
    assert loaded == [], f"device run loaded {loaded} (exit {code})"


def test_help_lists_every_group_and_the_commands_other_modules_add() -> None:
    """Lazy groups still list everything in a fresh interpreter: the top-level groups, and the
    commands that other modules add to ``device``, ``fleet`` and ``tracker``."""
    code, _, out = run_device("--help")
    assert code == 0
    for group in ("admin", "author", "chain", "device", "devnet", "fleet", "node", "release", "server", "tracker"):
        assert f"  {group} " in out, f"fwledger --help does not list {group}"
    for args, names in ((("device", "--help"), ("update", "run", "confirm", "anchors-update")),
                        (("fleet", "--help"), ("ca-init", "admit", "anchors-sign")),
                        (("tracker", "--help"), ("anchors-push", "rollout"))):
        code, _, out = run_device(*args)
        assert code == 0
        for name in names:
            assert f"  {name} " in out, f"fwledger {' '.join(args)} does not list {name}"
    # a contributed command runs straight away (its module is imported on demand): its usage error
    code, _, _ = run_device("tracker", "anchors-push")
    assert code == 2
