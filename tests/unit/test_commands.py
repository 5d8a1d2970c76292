"""Signed update commands (docs/MODULES.md section 2): shape, signature, and every refusal code.

An intermediate module relays commands byte for byte, so a device must catch any alteration,
a command for another device, chain or registry, one signed by a key it does not trust, one
outside its validity window, and one it already accepted. Each check is a small scenario, and
two hypothesis properties cover the rest: a signed command round-trips, and any single-field
change of a signed command is refused with the code of the first failing check.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entities.protocol.commands import (
    MAX_TTL,
    Command,
    CommandError,
    CommandLog,
    canonical,
    command_message,
    new_command,
    parse_command,
    sign_command,
    verify_command,
)
from ledger_node.errors import ConfigError, VerificationError

TRACKER, OTHER_TRACKER, DEVICE, OTHER_DEVICE = (Account.from_key(bytes([n]) * 32) for n in (0x21, 0x22, 0x23, 0x24))
REGISTRY = Account.from_key(b"\x25" * 32).address
CHAIN = 1337
NOW = 1_700_000_000
HH1, HH2 = "0x" + "a1" * 32, "0x" + "b2" * 32


def upgrades() -> list[dict[str, Any]]:
    return [{"product": "boot-fw", "vendor": "acme", "from_version": "1.0.0", "to_version": "1.1.0",
             "header_hash": HH1, "link": "https://fw.example.org/boot-1.1.0.bin", "hardware_class": "ignored"},
            {"product": "main-fw", "vendor": "acme", "from_version": "2.0.0", "to_version": "3.0.0",
             "header_hash": HH2, "link": "https://fw.example.org/main-3.0.0.bin"}]


def command(**over: Any) -> dict[str, Any]:
    cmd = new_command(issuer=TRACKER.address, device_id="cam-1", device_address=DEVICE.address, chain_id=CHAIN,
                      registry=REGISTRY, issued_at=NOW, ttl=600, block=42, upgrades=upgrades(), rollout=3, wave=0)
    cmd.update(over)
    return cmd


def envelope(**over: Any) -> dict[str, Any]:
    return sign_command(TRACKER, command(**over))


def verify(env: Any, **over: Any) -> Command:
    kw: dict[str, Any] = {"issuers": [TRACKER.address], "device_id": "cam-1", "device_address": DEVICE.address,
                          "chain_id": CHAIN, "registry": REGISTRY, "now": NOW + 10}
    kw.update(over)
    return verify_command(env, **kw)


def refused(env: Any, **over: Any) -> str:
    with pytest.raises(CommandError) as exc:
        verify(env, **over)
    assert isinstance(exc.value, VerificationError)
    return exc.value.code


# ============================================================================= format and round trip


def test_new_command_has_the_contract_shape_and_a_fresh_nonce() -> None:
    a, b = command(), command()
    assert set(a) == {"format", "type", "command_id", "issuer", "device_id", "device_address", "chain_id",
                      "registry", "issued_at", "expires_at", "block", "rollout", "wave", "upgrades"}
    assert a["command_id"] != b["command_id"] and len(a["command_id"]) == 32
    assert int(a["command_id"], 16) >= 0 and a["command_id"] == a["command_id"].lower()
    assert a["expires_at"] == NOW + 600 and a["format"] == 1 and a["type"] == "update"
    assert [u["header_hash"] for u in a["upgrades"]] == [HH1, HH2]  # order kept: dependencies first
    assert "hardware_class" not in a["upgrades"][0]


def test_signature_is_eip191_over_the_domain_and_the_canonical_hash() -> None:
    import hashlib

    from eth_account.messages import encode_defunct

    env = envelope()
    msg = b"fwledger-command-v1\n" + hashlib.sha256(
        json.dumps(env["command"], sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest().encode()
    assert command_message(env["command"]) == msg
    assert canonical({"b": 1, "a": "\u00e9"}) == b'{"a":"\\u00e9","b":1}'
    assert Account.recover_message(encode_defunct(primitive=msg), signature=env["signature"]) == TRACKER.address
    assert set(env) == {"command", "signature"} and len(env["signature"]) == 132


def test_a_good_command_verifies_and_mirrors_its_fields() -> None:
    env = envelope()
    cmd = verify(json.loads(json.dumps(env)))  # through JSON, as over the wire
    assert cmd.to_json() == env["command"]
    assert cmd.upgrades[1].to_version == "3.0.0" and cmd.rollout == 3 and cmd.wave == 0
    assert verify(env, device_address=DEVICE.address.lower(), registry=REGISTRY.lower()).command_id == cmd.command_id
    assert verify(envelope(rollout=None, wave=None)).rollout is None


def test_sign_refuses_a_malformed_command_or_another_issuer() -> None:
    with pytest.raises(CommandError) as exc:
        sign_command(TRACKER, {**command(), "extra": 1})
    assert exc.value.code == "command_malformed"
    with pytest.raises(CommandError) as exc:
        sign_command(OTHER_TRACKER, command())
    assert exc.value.code == "command_unknown_issuer"


# ============================================================================= each refusal, in order


@pytest.mark.parametrize("mutate", [
    lambda c: c.pop("block"),
    lambda c: c.update(extra=1),
    lambda c: c.update(format=2),
    lambda c: c.update(format=True),
    lambda c: c.update(type="reboot"),
    lambda c: c.update(command_id="AB" * 16),
    lambda c: c.update(command_id="ab" * 17),
    lambda c: c.update(issuer=TRACKER.address.lower()),
    lambda c: c.update(device_id="a/b"),
    lambda c: c.update(chain_id=0),
    lambda c: c.update(chain_id="1337"),
    lambda c: c.update(expires_at=c["issued_at"]),
    lambda c: c.update(expires_at=c["issued_at"] + MAX_TTL + 1),
    lambda c: c.update(block=-1),
    lambda c: c.update(wave=None),
    lambda c: c.update(upgrades=[]),
    lambda c: c.update(upgrades=c["upgrades"] * 17),
    lambda c: c.update(upgrades=[c["upgrades"][0], c["upgrades"][0]]),
    lambda c: c["upgrades"][0].update(to_version="1.0.0"),
    lambda c: c["upgrades"][0].update(to_version="01.2.0"),
    lambda c: c["upgrades"][0].update(header_hash=HH1.upper().replace("0X", "0x")),
    lambda c: c["upgrades"][0].update(link="x" * 257),
    lambda c: c["upgrades"][0].update(product=""),
    lambda c: c["upgrades"][0].pop("link"),
    lambda c: c["upgrades"][0].update(hardware_class="cam-r1"),
], ids=lambda _f: "mutation")
def test_malformed_commands_are_refused_before_the_signature(mutate: Any) -> None:
    env = envelope()
    mutate(env["command"])
    assert refused(env) == "command_malformed"


def test_malformed_envelopes() -> None:
    env = envelope()
    for bad in (None, [], "x", {"command": env["command"]}, {**env, "extra": 1}, {**env, "signature": "0x12"},
                {**env, "signature": env["signature"][2:]}, {**env, "command": "x"}):
        assert refused(bad) == "command_malformed"


def test_a_command_signed_by_another_key_or_altered_is_refused() -> None:
    forged = {"command": command(), "signature": sign_command(OTHER_TRACKER, command(issuer=OTHER_TRACKER.address))[
        "signature"]}
    assert refused(forged) == "command_bad_signature"  # signed by another key than its issuer
    env = envelope()
    env["command"]["upgrades"][1]["link"] = "https://evil.example.org/x.bin"
    assert refused(env) == "command_bad_signature"
    env = envelope()
    env["command"]["issuer"] = OTHER_TRACKER.address  # claims another issuer: does not recover to it
    assert refused(env) == "command_bad_signature"
    env = envelope()
    sig = bytearray.fromhex(env["signature"][2:])
    sig[64] = 29
    assert refused({**env, "signature": "0x" + sig.hex()}) == "command_bad_signature"
    # the malleated twin (s -> n - s, v flipped) of a good signature is refused too
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    env2 = envelope()
    raw = bytes.fromhex(env2["signature"][2:])
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (n - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    assert refused({**env2, "signature": "0x" + twin.hex()}) == "command_bad_signature"


def test_a_command_by_a_key_the_device_does_not_trust() -> None:
    env = sign_command(OTHER_TRACKER, command(issuer=OTHER_TRACKER.address))
    assert refused(env) == "command_unknown_issuer"
    assert verify(env, issuers=[TRACKER.address, OTHER_TRACKER.address]).issuer == OTHER_TRACKER.address


def test_a_command_for_another_device_chain_or_registry() -> None:
    env = envelope()
    assert refused(env, device_id="cam-2") == "command_wrong_device"
    assert refused(env, device_address=OTHER_DEVICE.address) == "command_wrong_device"
    assert refused(env, chain_id=1) == "command_wrong_chain"
    assert refused(env, registry=OTHER_DEVICE.address) == "command_wrong_chain"


def test_validity_window_with_skew() -> None:
    env = envelope()  # issued NOW, expires NOW + 600
    assert verify(env, now=NOW - 120).command_id
    assert refused(env, now=NOW - 121) == "command_not_yet_valid"
    assert verify(env, now=NOW + 600 + 120).command_id
    assert refused(env, now=NOW + 600 + 121) == "command_expired"
    assert refused(env, now=NOW + 10_000, max_skew=0) == "command_expired"


def test_a_replayed_command_is_refused_and_the_order_of_checks_holds() -> None:
    env = envelope()
    assert refused(env, seen=lambda cid: cid == env["command"]["command_id"]) == "command_replayed"
    # every check failing at once: the first one in the table wins
    assert refused(env, issuers=[], device_id="x", chain_id=1, now=0, seen=lambda _c: True) == "command_unknown_issuer"
    assert refused(env, device_id="x", chain_id=1, now=0, seen=lambda _c: True) == "command_wrong_device"
    assert refused(env, chain_id=1, now=0, seen=lambda _c: True) == "command_wrong_chain"
    assert refused(env, now=0, seen=lambda _c: True) == "command_not_yet_valid"


# ============================================================================= properties

_SCALARS = ["format", "type", "command_id", "issuer", "device_id", "device_address", "chain_id", "registry",
            "issued_at", "expires_at", "block", "rollout", "wave"]
_UPGRADE_FIELDS = ["product", "vendor", "from_version", "to_version", "header_hash", "link"]

_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64), st.text(max_size=80),
    st.from_regex(r"\A[0-9a-f]{32}\Z"), st.from_regex(r"\A0x[0-9a-f]{64}\Z"),
    st.from_regex(r"\A[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\Z"),
    st.sampled_from([OTHER_DEVICE.address, OTHER_TRACKER.address, "cam-2", "update", 1, 0, NOW + 1, 2, None]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@given(ttl=st.integers(min_value=1, max_value=MAX_TTL), block=st.integers(min_value=0, max_value=2**40),
       n=st.integers(min_value=1, max_value=32), rollout=st.one_of(st.none(), st.integers(min_value=0, max_value=999)))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_signed_commands_round_trip(ttl: int, block: int, n: int, rollout: int | None) -> None:
    ups = [{"product": f"p{i}", "vendor": "acme", "from_version": "1.0.0", "to_version": f"1.{i + 1}.0",
            "header_hash": "0x" + f"{i:064x}", "link": f"https://fw.example.org/{i}"} for i in range(n)]
    cmd = new_command(issuer=TRACKER.address, device_id="cam-1", device_address=DEVICE.address, chain_id=CHAIN,
                      registry=REGISTRY, issued_at=NOW, ttl=ttl, block=block, upgrades=ups, rollout=rollout,
                      wave=None if rollout is None else 1)
    env = json.loads(json.dumps(sign_command(TRACKER, cmd)))
    got = verify(env, now=NOW)
    assert got.to_json() == cmd and parse_command(cmd) == got


@given(data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_any_single_field_change_is_refused_with_the_right_code(data: st.DataObject) -> None:
    env = envelope()
    where = data.draw(st.sampled_from(_SCALARS + [f"upgrades.{i}.{f}" for i in (0, 1) for f in _UPGRADE_FIELDS]))
    value = data.draw(_values)
    mutated = copy.deepcopy(env)
    if where.startswith("upgrades."):
        _u, i, f = where.split(".")
        target = mutated["command"]["upgrades"][int(i)]
        original = target[f]
        target[f] = value
    else:
        original = mutated["command"][where]
        mutated["command"][where] = value
    if value == original and type(value) is type(original):
        return  # not a change
    try:
        parse_command(mutated["command"])
    except CommandError:
        expected = "command_malformed"
    else:  # still well-formed: the signature no longer covers it
        expected = "command_bad_signature"
    assert refused(mutated) == expected, (where, value)


# ============================================================================= the device's log of ids


def test_command_log_remembers_ids_until_expiry_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "commands.json"
    clock = [float(NOW)]
    log = CommandLog(path, clock=lambda: clock[0], grace=200)
    first = verify(envelope())
    assert not log.seen(first.command_id)
    log.accept(first)
    assert log.seen(first.command_id) and path.stat().st_mode & 0o777 == 0o600
    again = CommandLog(path, clock=lambda: clock[0], grace=200)  # a restart
    assert again.seen(first.command_id)
    assert refused(envelope(command_id=first.command_id), seen=again.seen) == "command_replayed"
    # after expiry plus grace the id is pruned at the next accept; the command itself is expired by then
    clock[0] = first.expires_at + 201
    later = verify(envelope(issued_at=int(clock[0]), expires_at=int(clock[0]) + 600), now=clock[0])
    again.accept(later)
    assert not again.seen(first.command_id) and again.seen(later.command_id) and len(again) == 1
    assert refused(envelope(command_id=first.command_id), now=clock[0]) == "command_expired"
    assert not list(path.parent.glob(".*.tmp"))  # atomic writes leave no partial file


def test_a_damaged_command_log_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "commands.json"
    for text in ("{", "[]", '{"format": 1, "accepted": {"nothex": 1}}', '{"format": 2, "accepted": {}}'):
        path.write_text(text)
        with pytest.raises(ConfigError):
            CommandLog(path)
