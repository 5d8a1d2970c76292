"""Signed requests name their audience (P4, C11.2 module rules a-b): a request signed for one
service is refused by every other, before its nonce is spent; identity answers bind a key to a
nonce. Pure: ``entities.protocol.http_auth`` with fixed keys and clock."""

from __future__ import annotations

import hashlib
import json

import pytest
from eth_account import Account

from entities.protocol.http_auth import (
    HDR_AUDIENCE,
    IDENTITY_PATH,
    AuthError,
    identity_of,
    identity_request,
    sign_request,
    sign_response,
    verify_request,
)
from entities.status_tracker.modules import audiences

DEVICE = Account.from_key(b"\x11" * 32)
SERVICE_A = Account.from_key(b"\x22" * 32)
SERVICE_B = Account.from_key(b"\x33" * 32)
RELAY = Account.from_key(b"\x44" * 32)
NOW = 1_800_000_000.0
DIGEST = hashlib.sha256(b"").hexdigest()


class Nonces:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        if (address, nonce) in self.seen:
            return False
        self.seen.add((address, nonce))
        return True


def signed_for(audience: str) -> dict[str, str]:
    return sign_request(DEVICE, "POST", "/v1/devices/heartbeat", b"", audience=audience, now=NOW)


def test_request_for_one_service_is_refused_by_another_and_spends_no_nonce() -> None:
    headers = signed_for(SERVICE_A.address)
    nonces = Nonces()
    with pytest.raises(AuthError) as exc:
        verify_request(headers, "POST", "/v1/devices/heartbeat", DIGEST, audience=(SERVICE_B.address,), now=NOW,
                       nonces=nonces)
    assert exc.value.code == "wrong_audience" and SERVICE_A.address in str(exc.value)
    assert nonces.seen == set()
    ok = verify_request(headers, "POST", "/v1/devices/heartbeat", DIGEST, audience=(SERVICE_A.address,), now=NOW,
                        nonces=nonces)
    assert (ok.address, ok.audience) == (DEVICE.address, SERVICE_A.address)


def test_audience_is_covered_by_the_signature() -> None:
    headers = signed_for(SERVICE_A.address) | {HDR_AUDIENCE: SERVICE_B.address}
    with pytest.raises(AuthError) as exc:
        verify_request(headers, "POST", "/v1/devices/heartbeat", DIGEST, audience=(SERVICE_B.address,), now=NOW)
    assert exc.value.code == "bad_signature"


@pytest.mark.parametrize(("value", "code"), [(None, "no_audience"), ("tracker-1", "bad_audience"),
                                             ("0x" + "zz" * 20, "bad_audience")])
def test_missing_or_malformed_audience(value: str | None, code: str) -> None:
    headers = signed_for(SERVICE_A.address)
    if value is None:
        del headers[HDR_AUDIENCE]
    else:
        headers[HDR_AUDIENCE] = value
    with pytest.raises(AuthError) as exc:
        verify_request(headers, "POST", "/v1/devices/heartbeat", DIGEST, audience=(SERVICE_A.address,), now=NOW)
    assert exc.value.code == code


def test_identity_answer_binds_the_key_to_the_callers_nonce() -> None:
    request, nonce = identity_request()
    body = json.dumps({"address": SERVICE_A.address}).encode()
    answer = sign_response(SERVICE_A, 200, IDENTITY_PATH, body, request)
    assert identity_of(answer, 200, body, nonce) == SERVICE_A.address
    with pytest.raises(AuthError) as exc:  # an answer recorded for another caller's nonce
        identity_of(answer, 200, body, identity_request()[1])
    assert exc.value.code == "nonce_mismatch"
    with pytest.raises(AuthError) as exc:  # a key the caller was not provisioned with
        identity_of(answer, 200, body, nonce, accept=(SERVICE_B.address,))
    assert exc.value.code == "wrong_tracker"
    claims_b = json.dumps({"address": SERVICE_B.address}).encode()  # A claims to be B
    with pytest.raises(AuthError) as exc:
        identity_of(sign_response(SERVICE_A, 200, IDENTITY_PATH, claims_b, request), 200, claims_b, nonce)
    assert exc.value.code == "no_identity"


def test_server_module_answers_for_its_configured_relays_and_their_cascade() -> None:
    lower = Account.from_key(b"\x55" * 32).address
    assert audiences(SERVICE_A.address, [RELAY.address], None) == (SERVICE_A.address, RELAY.address)
    # a cascade delivered by a configured relay: the lower relay the device named is accepted
    assert lower in audiences(SERVICE_A.address, [RELAY.address], f"{lower},{RELAY.address}")
    # a Via chain not delivered by a configured relay adds nothing (Via is not signed)
    assert lower not in audiences(SERVICE_A.address, [RELAY.address], f"{lower}")
    assert audiences(SERVICE_A.address, [], "junk") == (SERVICE_A.address,)
