"""The firmware server's HTTP vocabulary: error code -> status, and the request and response models
its OpenAPI document shows (:mod:`.app` serves them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from entities.admission_store import MAX_RECORDS

__all__ = ["HASH_PATTERN", "HTTP_STATUS"]

#: stable error code -> HTTP status
HTTP_STATUS: dict[str, int] = {
    "unsigned": 401, "no_intent": 401, "bad_signature_format": 401, "bad_signature": 401, "stale_request": 401,
    "replayed_request": 401, "unauthorized": 401, "no_audience": 401, "bad_audience": 401, "wrong_audience": 401,
    "not_admitted": 403, "decommissioned": 403, "rejected": 403, "device_key_mismatch": 403, "bad_certificate": 403,
    "unknown_operator": 403, "bad_admission": 422, "bad_labels": 422, "bad_addons": 422, "board_not_admitted": 403,
    "not_a_vendor": 403, "vendor_barred": 403, "unregistered_device": 403, "hardware_not_supported": 403,
    "policy_denied": 403, "location_denied": 403,
    "unknown_image": 404, "not_found": 404, "unknown_device": 404, "unknown_release": 404,
    "method_not_allowed": 405,
    "not_published": 409, "device_id_taken": 409, "vendor_revoked": 409, "not_barred": 409,
    "revoked": 410,
    "length_required": 411, "too_large": 413, "storage_full": 413, "too_many_uploads": 429,
    "bad_range": 416,
    "malformed_json": 400, "bad_request": 400, "client_disconnected": 400, "body_mismatch": 400,
    "bad_bundle": 422, "unsupported_bundle_version": 422, "signer_mismatch": 422, "vendor_name_mismatch": 422,
    "size_mismatch": 422, "hash_mismatch": 422, "merkle_mismatch": 422, "trailing_bytes": 422, "truncated": 422,
    "unknown_hardware": 422, "known_bad": 422, "invalid_request": 422,
    "unavailable": 503, "internal_error": 500,
    "ledger_unproven": 503, "ledger_mismatch": 502,  # the server's node's answer not proven (proven.py)
}

HASH_PATTERN = r"^0x[0-9a-fA-F]{64}$"


# ----------------------------------------------------------------------------- models (OpenAPI)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable error code")
    message: str = Field(description="One line")
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DeviceIn(Strict):
    device_id: str = Field(pattern=r"^[\x21-\x7e]{1,64}$", description="Unique device id")
    hardware: str = Field(pattern=r"^[\x20-\x7e]{1,64}$", description="Hardware class id on the ledger")
    location: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                                 description="Region label the device declares (e.g. eu-west); with admission "
                                             "required the admission's region is used instead")
    certificate: str | None = Field(default=None, max_length=8192,
                                    description="Manufacture certificate (PEM): admission by certificate")
    addons: list[Annotated[str, Field(pattern=r"^[\x20-\x7e]{1,64}$")]] = Field(
        default_factory=list, max_length=16, description="Add-on boards the device carries (hardware class ids "
                                                         "on the ledger): it may download their firmware too")


class AdmissionsIn(Strict):
    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_RECORDS,
                                          description="Operator admission records (docs/SERVER_API.md)")


class DeviceOut(BaseModel):
    address: str
    device_id: str
    hardware: str
    location: str | None
    assigned_region: str | None
    addons: tuple[str, ...] = ()


class UploadOut(BaseModel):
    digest: str
    file_hash: str
    state: Literal["unpublished", "published"]
    header_hash: str | None = None


class RuleIn(Strict):
    action: Literal["allow", "deny"]
    region: str | None = Field(default=None, pattern=r"^[A-Za-z0-9*?][A-Za-z0-9*?._-]{0,63}$")
    cidr: str | None = Field(default=None, max_length=64)


class RulesIn(Strict):
    rules: list[RuleIn] = Field(max_length=1000)


class RulesOut(BaseModel):
    rules: list[dict[str, Any]]


class KnownBadIn(Strict):
    file_hash: str = Field(pattern=HASH_PATTERN)
    reason: str = Field(min_length=1, max_length=256)


class KnownBadOut(BaseModel):
    file_hash: str
    barred: list[str]


class UnbarIn(Strict):
    reason: str = Field(min_length=1, max_length=256, description="Why the bar is lifted (logged and kept)")

    @field_validator("reason")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or not value.strip():
            raise ValueError("reason must be printable text (no control or format characters)")
        return value


class UnbarOut(BaseModel):
    vendor: str
    reason: str
    lifted: dict[str, Any] = Field(description="The bar lifted: address, reason, at")


class RegionIn(Strict):
    device: str = Field(min_length=1, max_length=64, description="Device address or device id")
    region: str | None = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Health(BaseModel):
    status: str
    ledger_block: int | None
    model_config = ConfigDict(extra="allow")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": "Error (see error.code)"} for s in sorted({*statuses, 400, 413})}


_SIGNED = (401, 422)
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
