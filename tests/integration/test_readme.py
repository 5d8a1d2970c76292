"""The README's command blocks run as written (issue: the operator's path).

Each runnable section of ``README.md`` (see :mod:`tests.readme`) runs as one bash session, in
order, starting in the clone, in a fresh network and PID namespace (``unshare``: the README's
fixed ports cannot meet another test's, and whatever the README left running dies with the
namespace) with its own ``HOME``. The tests then check what the README says happens. When the
README changes, these tests run the new text.

Needs root for the namespaces (CI runs as root) and anvil: skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_anvil
from tests.readme import README, sections

pytestmark = pytest.mark.devnet

REPO = Path(__file__).resolve().parents[2]

#: the sections whose blocks run; every other shell block must say why it does not
RUN = ("Using a devnet (anvil) step by step", "The local stack: `fwledger up` / `fwledger down`",
       "Deploying against any Ethereum JSON-RPC network (a devnet, a consortium chain)")

#: what marks a block as a template rather than commands (a reader would have to edit it), outside comments
_PLACEHOLDERS = re.compile(r"\bPORT\b|0xHEADERHASH|\bSERVER:|\bTRACKER:|(?<![.\w/])\.\.\.(?![.\w/])")


def _placeholders(text: str) -> list[str]:
    code = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    return _PLACEHOLDERS.findall(code)


def _namespaces_or_skip() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("the README runs in its own network namespace: needs root, unshare and iproute2 (CI runs as root)")


def run_section(title: str, home: Path, *, before: str = "", timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the section's blocks as written; ``before`` is the test's own stand-in (e.g. a node
    playing the network), run first in the same namespace. A failure shows the README line."""
    _namespaces_or_skip()
    require_anvil()
    section = sections()[title]
    assert section.runnable, f"README section {title!r} has no runnable shell block"
    script = home / "readme.sh"
    script.write_text(f"ip link set lo up\ncd {REPO}\n{before}\n{section.script()}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FWLEDGER_", "VIRTUAL_ENV", "PYTEST", "COV_"))}
    venv_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["HOME"] = str(home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child",
                           "bash", "-x", str(script)], cwd=home, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        where = [ln for ln in done.stderr.splitlines() if ln.startswith("+ # README.md line")]
        pytest.fail(f"README section {title!r} failed (exit {done.returncode}) after "
                    f"{where[-1][4:] if where else 'its start'}\n--- stdout\n{done.stdout[-4000:]}\n"
                    f"--- stderr\n{done.stderr[-6000:]}")
    return done


def _json_docs(text: str) -> list[Any]:
    """The JSON documents a run printed (``--json`` commands), in order."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        out.append(obj)
        i = end
    return out


def test_every_shell_block_runs_or_says_why() -> None:
    """No README shell block is left untested silently, and none is a template to edit."""
    for title, section in sections().items():
        for block in section.blocks:
            if block.lang != "sh":
                continue
            where = f"README.md line {block.line} ({title})"
            assert block.skip is not None or title in RUN, f"{where}: not run by this test and no skip reason"
            if block.skip is None:
                found = _placeholders(block.text)
                assert not found, f"{where}: holds placeholders {found}: a reader cannot run it as written"


def test_readme_devnet_walkthrough(tmp_path: Path) -> None:
    """"Using a devnet": the registry deployed, a vendor and class registered, a bundle built,
    uploaded and published, listed, revoked; the server withdraws it; the clone stays clean."""
    done = run_section(RUN[0], tmp_path)
    docs = _json_docs(done.stdout)
    deployed = next(d for d in docs if isinstance(d, dict) and "address" in d and "chain_id" in d)
    assert deployed["chain_id"] == 31337
    home = tmp_path / ".fwledger"
    assert (home / "deployments" / "31337.json").is_file()
    images = next(d for d in docs if isinstance(d, list) and d and isinstance(d[0], dict) and "digest" in d[0])
    assert [(i["vendor_name"], i["product"], i["version"]) for i in images] == [("acme", "main-fw", "1.0.0")]
    assert "done: revoke acme/main-fw 1.0.0" in " ".join(done.stdout.split())
    assert (tmp_path / "fw-work" / "server-data").is_dir() and (tmp_path / "fw-work" / "fw.bundle").is_file()
    assert done.stdout.rstrip().endswith("stopped")  # devnet stop
    _assert_clone_clean()


#: what the README's walkthroughs make; none of it may land in the clone
_OUTPUTS = ("fw.bin", "fw.bundle", "cam-r1.x25519", "cam-r1.pub", "server-data", "server.log", "anchors.json")


def _assert_clone_clean() -> None:
    left = [name for name in _OUTPUTS if (REPO / name).exists()]
    assert not left, f"the README's commands wrote {left} into the clone"


def test_readme_mentions_only_files_of_the_clone() -> None:
    """Links in the README point at files a clone has (not ../shared/...)."""
    text = README.read_text(encoding="utf-8")
    assert "../shared" not in text


def test_readme_local_stack(tmp_path: Path) -> None:
    """"The local stack": up with three devices, a release built and published by the vendor,
    every device runs it (tracker wait), down stops everything; the devices keep 1.0.0 on disk."""
    done = run_section(RUN[1], tmp_path)
    assert "3/3 devices run main-fw 1.0.0" in done.stdout
    devices = sorted((tmp_path / "fw-stack" / "stack" / "devices").iterdir())
    assert len(devices) == 3
    for root in devices:
        status = subprocess.run([str(REPO / ".venv" / "bin" / "fwledger"), "device", "status", "--dir", str(root),
                                 "--json"], capture_output=True, text=True, check=True)
        comps = json.loads(status.stdout)["components"]
        assert any(c.get("running_version", c.get("version")) == "1.0.0" for c in _as_list(comps)), comps
    assert not (tmp_path / "fw-stack" / "stack" / "stack.json").exists()  # down removed the record
    _assert_clone_clean()


def _as_list(comps: Any) -> list[dict[str, Any]]:
    return list(comps.values()) if isinstance(comps, dict) else list(comps)


#: anvil's first development account: the test's stand-in for "a funded account on your chain"
_FUNDED = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def test_readme_json_rpc_deployment(tmp_path: Path) -> None:
    """"Deploying against any Ethereum JSON-RPC network": with anvil standing in for the network
    (127.0.0.1:8545, a block every 2 s, as config/consortium.toml expects) and a funded key, the
    operator's path runs as written: keys made and funded, the registry deployed, services over
    HTTPS, a device provisioned without firmware and admitted, and a release published after the
    device started reaches it over the air."""
    from ledger_node.devnet import find_anvil

    anvil = find_anvil()
    (tmp_path / "funded.key").write_text(_FUNDED + "\n")
    stand_in = (f"{anvil} --host 127.0.0.1 --port 8545 --chain-id 31337 --block-time 2 --mixed-mining --silent "
                f"> {tmp_path}/anvil.log 2>&1 &\n"
                "curl -sf --retry 30 --retry-connrefused --retry-delay 1 -H 'Content-Type: application/json' "
                "-d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_chainId\",\"params\":[]}' "
                "http://127.0.0.1:8545 > /dev/null")
    done = run_section(RUN[2], tmp_path, before=stand_in, timeout=900)
    assert "1/1 devices run main-fw 1.0.0" in done.stdout
    status = subprocess.run([str(REPO / ".venv" / "bin" / "fwledger"), "device", "status", "--dir",
                             str(tmp_path / "fw-prod" / "dev-01"), "--json"], capture_output=True, text=True,
                            check=True)
    comps = _as_list(json.loads(status.stdout)["components"])
    assert any(c.get("running_version", c.get("version")) == "1.0.0" for c in comps), comps
    home = tmp_path / ".fwledger-consortium"
    assert (home / "keys" / "admin.json").is_file() and (home / "keys" / "acme.json").is_file()
    assert "PRIVATE KEY" not in (home / "keys" / "admin.json").read_text()  # an encrypted keystore
    _assert_clone_clean()
