"""Unit tests of ledger_node.record: the Table II.1 codec (pure, no chain).

Appendix II Table II.1 fixes what a release record holds; the header hash computed here is the
key a light node proves on chain, so the codec must be injective (any changed field changes the
hash), canonical (one record, one byte string: anything else is refused) and strict about what
the registry accepts. Properties are checked with hypothesis over arbitrary valid records.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable
from typing import Any

import eth_abi
import pytest
from eth_utils import keccak
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger_node.errors import ProofError, RecordError, VerificationError
from ledger_node.record import (
    DATA_TYPES,
    FORMAT_VERSION,
    MAX_DEPENDENCIES,
    MAX_HARDWARE,
    ZERO_HASH,
    Dependency,
    ReleaseData,
    ReleaseRecord,
    Version,
    line_id,
    parse_dependency,
)

# ------------------------------------------------------------------------------ strategies

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def ascii_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=PRINTABLE, min_size=min_size, max_size=max_size)


parts = st.integers(min_value=0, max_value=0xFFFF)
versions = st.builds(Version, parts, parts, parts)
hashes = st.binary(min_size=32, max_size=32)
hw_ids = ascii_text(1, 64)


@st.composite
def dependencies(draw: st.DrawFn, own_product: str) -> Dependency:
    product = draw(ascii_text(1, 64).filter(lambda p: p != own_product))
    lo, hi = sorted([draw(versions), draw(versions)])
    return Dependency(product, lo, hi)


@st.composite
def release_data(draw: st.DrawFn, *, min_hw: int = 1, min_deps: int = 0) -> ReleaseData:
    product = draw(ascii_text(1, 64))
    return ReleaseData(
        merkle_root=draw(hashes),
        vendor_name=draw(ascii_text(1, 64)),
        publish_time=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        product=product,
        version=draw(versions),
        file_hash=draw(hashes),
        file_link=draw(ascii_text(0, 256)),
        file_name=draw(ascii_text(0, 128)),
        file_size=draw(st.integers(min_value=1, max_value=2**64 - 1)),
        supported_hardware=tuple(draw(st.lists(hw_ids, min_size=min_hw, max_size=MAX_HARDWARE, unique=True))),
        dependencies=tuple(draw(st.lists(dependencies(product), min_size=min_deps, max_size=MAX_DEPENDENCIES))),
    )


@st.composite
def records(draw: st.DrawFn, *, min_hw: int = 1, min_deps: int = 0) -> ReleaseRecord:
    prev = draw(st.one_of(st.just(ZERO_HASH), hashes))
    return ReleaseRecord(prev_hash=prev, data=draw(release_data(min_hw=min_hw, min_deps=min_deps)))


def base_record() -> ReleaseRecord:
    """A fixed, fully populated record (golden vector below pins its hash)."""
    data = ReleaseData(
        merkle_root=bytes(range(32)), vendor_name="acme", publish_time=1_700_000_000, product="main-fw",
        version=Version(1, 2, 3), file_hash=bytes(range(32, 64)),
        file_link="https://fw.example.org/acme/main-fw-1.2.3.bin", file_name="main-fw-1.2.3.bin",
        file_size=4096, supported_hardware=("cam-r1", "cam-r2"),
        dependencies=(Dependency("bootloader", Version(1, 0, 0), Version(1, 9, 0)),),
    )
    return ReleaseRecord(prev_hash=b"\x42" * 32, data=data)


def with_data(rec: ReleaseRecord, **changes: Any) -> ReleaseRecord:
    return dataclasses.replace(rec, data=dataclasses.replace(rec.data, **changes))


# ------------------------------------------------------------------------------ round trips


@settings(max_examples=80, deadline=None)
@given(records())
def test_encode_decode_round_trip(rec: ReleaseRecord) -> None:
    """Table II.1: the data section decodes back to the same fields; block length = its size."""
    raw = rec.data.encode()
    assert ReleaseData.decode(raw) == rec.data
    assert rec.block_length == len(raw)
    assert raw == eth_abi.encode(list(DATA_TYPES), rec.data.abi_values())
    header = eth_abi.decode(["uint256", "uint8", "bytes32", "bytes32"], rec.header_bytes())
    assert header == (len(raw), FORMAT_VERSION, rec.prev_hash, keccak(raw))
    assert rec.header_hash == keccak(rec.header_bytes())


@settings(max_examples=80, deadline=None)
@given(records())
def test_json_round_trip(rec: ReleaseRecord) -> None:
    """to_json/from_json round trip, through real JSON text, header hash included and checked."""
    text = json.dumps(rec.to_json())
    back = ReleaseRecord.from_json(json.loads(text))
    assert back == rec
    assert back.header_hash == rec.header_hash
    assert ReleaseData.from_json(json.loads(json.dumps(rec.data.to_json()))) == rec.data
    obj = json.loads(text)
    assert obj["header_hash"] == "0x" + rec.header_hash.hex()
    assert obj["line"] == "0x" + line_id(rec.data.vendor_name, rec.data.product).hex()
    assert obj["block_length"] == len(rec.data.encode())


@settings(max_examples=50, deadline=None)
@given(records())
def test_from_event_rebuilds_the_record(rec: ReleaseRecord) -> None:
    """A Published event's fields rebuild exactly the record whose header hash they carry."""
    back = ReleaseRecord.from_event(header_hash=rec.header_hash, line=rec.line, prev_hash=rec.prev_hash,
                                    data=rec.data.encode())
    assert back == rec


def test_golden_vector_is_stable() -> None:
    """The canonical encoding never changes: devices and the deployed contract depend on it.

    The hashes below were computed once; a change here means every published header hash would
    change, i.e. a new record format version.
    """
    rec = base_record()
    assert rec.block_length == 1088
    assert rec.header_hash.hex() == GOLDEN_HEADER_HASH
    assert keccak(rec.data.encode()).hex() == GOLDEN_DATA_HASH
    assert line_id("acme", "main-fw").hex() == GOLDEN_LINE


GOLDEN_HEADER_HASH = "a7b63a15501437d52a3baabc90eb5ba375cdad0dff7fe00f85d34ba6999cb96c"
GOLDEN_DATA_HASH = "3f7da6e44b9f74a76a759bf7bea24c00f1bb3566547d495afd76aa4a94deae25"
GOLDEN_LINE = "bee826cd9e01412a3b343c338bb89bdef3320267af971cb6a2108441188435e6"


# ------------------------------------------------------------------------------ hash sensitivity


def _other(data: st.DataObject, strategy: st.SearchStrategy[Any], old: Any) -> Any:
    return data.draw(strategy.filter(lambda x: x != old))


def _mutate(rec: ReleaseRecord, field: str, data: st.DataObject) -> ReleaseRecord:
    d = rec.data
    if field == "prev_hash":
        return dataclasses.replace(rec, prev_hash=_other(data, hashes, rec.prev_hash))
    if field in ("merkle_root", "file_hash"):
        return with_data(rec, **{field: _other(data, hashes, getattr(d, field))})
    if field == "vendor_name":
        return with_data(rec, vendor_name=_other(data, ascii_text(1, 64), d.vendor_name))
    if field == "product":
        taken = {dep.product for dep in d.dependencies} | {d.product}
        return with_data(rec, product=data.draw(ascii_text(1, 64).filter(lambda p: p not in taken)))
    if field == "publish_time":
        return with_data(rec, publish_time=_other(data, st.integers(0, 2**64 - 1), d.publish_time))
    if field == "version":
        return with_data(rec, version=_other(data, versions, d.version))
    if field == "file_link":
        return with_data(rec, file_link=_other(data, ascii_text(0, 256), d.file_link))
    if field == "file_name":
        return with_data(rec, file_name=_other(data, ascii_text(0, 128), d.file_name))
    if field == "file_size":
        return with_data(rec, file_size=_other(data, st.integers(1, 2**64 - 1), d.file_size))
    if field == "hardware_id":
        i = data.draw(st.integers(0, len(d.supported_hardware) - 1))
        hw = list(d.supported_hardware)
        hw[i] = data.draw(hw_ids.filter(lambda h: h not in d.supported_hardware))
        return with_data(rec, supported_hardware=tuple(hw))
    if field == "hardware_added":
        assume(len(d.supported_hardware) < MAX_HARDWARE)
        extra = data.draw(hw_ids.filter(lambda h: h not in d.supported_hardware))
        return with_data(rec, supported_hardware=(*d.supported_hardware, extra))
    if field == "hardware_order":
        assume(len(d.supported_hardware) >= 2)
        return with_data(rec, supported_hardware=tuple(reversed(d.supported_hardware)))
    if field == "dependency_added":
        assume(len(d.dependencies) < MAX_DEPENDENCIES)
        return with_data(rec, dependencies=(*d.dependencies, data.draw(dependencies(d.product))))
    i = data.draw(st.integers(0, len(d.dependencies) - 1))
    deps = list(d.dependencies)
    dep = deps[i]
    if field == "dependency_product":
        deps[i] = dataclasses.replace(dep, product=data.draw(
            ascii_text(1, 64).filter(lambda p: p not in (dep.product, d.product))))
    elif field == "dependency_min":
        assume(dep.max_version != Version(0, 0, 0))
        deps[i] = dataclasses.replace(dep, min_version=data.draw(
            versions.filter(lambda v: v != dep.min_version and v <= dep.max_version)))
    elif field == "dependency_max":
        assume(dep.min_version != Version(0xFFFF, 0xFFFF, 0xFFFF))
        deps[i] = dataclasses.replace(dep, max_version=data.draw(
            versions.filter(lambda v: v != dep.max_version and v >= dep.min_version)))
    else:  # pragma: no cover - a typo in FIELDS
        raise AssertionError(field)
    return with_data(rec, dependencies=tuple(deps))


FIELDS = [
    "prev_hash", "merkle_root", "vendor_name", "publish_time", "product", "version", "file_hash",
    "file_link", "file_name", "file_size", "hardware_id", "hardware_added", "hardware_order",
    "dependency_added", "dependency_product", "dependency_min", "dependency_max",
]


@pytest.mark.parametrize("field", FIELDS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_changed_field_changes_the_header_hash(field: str, data: st.DataObject) -> None:
    """R10.a.ii: a record whose fields differ in any way has another header hash.

    Covers each Table II.1 field, the previous header hash, each hardware id (and the list's
    length and order) and each dependency bound.
    """
    needs_deps = field.startswith("dependency_") and field != "dependency_added"
    rec = data.draw(records(min_hw=2 if field == "hardware_order" else 1, min_deps=1 if needs_deps else 0))
    changed = _mutate(rec, field, data)
    changed.validate()  # still a valid record: the change is one the registry could accept
    assert changed != rec
    assert changed.header_hash != rec.header_hash


# ------------------------------------------------------------------------------ canonical decoding


@settings(max_examples=80, deadline=None)
@given(release_data(), st.data())
def test_decode_refuses_truncated_encodings(d: ReleaseData, data: st.DataObject) -> None:
    raw = d.encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(RecordError):
        ReleaseData.decode(raw[:cut])


@settings(max_examples=80, deadline=None)
@given(release_data(), st.binary(min_size=1, max_size=96))
def test_decode_refuses_trailing_bytes(d: ReleaseData, extra: bytes) -> None:
    with pytest.raises(RecordError, match="not canonically encoded"):
        ReleaseData.decode(d.encode() + extra)


def _word(raw: bytes, index: int) -> int:
    return int.from_bytes(raw[32 * index:32 * index + 32], "big")


def _set_word(raw: bytes, index: int, value: int) -> bytes:
    return raw[:32 * index] + value.to_bytes(32, "big") + raw[32 * index + 32:]


def test_decode_refuses_an_aliased_string_offset() -> None:
    """Same field values, other bytes: the vendor name's offset points to a copy appended at the end.

    ABI decoding alone accepts this; the codec re-encodes and refuses it, so one record has
    exactly one byte string (and one header hash).
    """
    raw = base_record().data.encode()
    offset = _word(raw, 1)  # head word 1: offset of vendor_name
    length = _word(raw, offset // 32)
    tail = raw[offset:offset + 32 + -(-length // 32) * 32]
    aliased = _set_word(raw, 1, len(raw)) + tail
    # the alias really decodes to the same values ...
    assert eth_abi.decode(list(DATA_TYPES), aliased) == eth_abi.decode(list(DATA_TYPES), raw)
    # ... and is refused
    with pytest.raises(RecordError, match="not canonically encoded"):
        ReleaseData.decode(aliased)


def test_decode_refuses_dirty_padding_and_oversized_words() -> None:
    rec = base_record()
    raw = rec.data.encode()
    # a non-zero byte in the padding after "acme" (4 bytes in a 32-byte word)
    offset = _word(raw, 1)
    content = offset + 32
    dirty = raw[:content + 10] + b"\x01" + raw[content + 11:]
    with pytest.raises(RecordError):
        ReleaseData.decode(dirty)
    # version (head word 4) with bits above uint64, and above the 48 bits a version packs into
    for bad in (1 << 64, 1 << 48):
        with pytest.raises(RecordError):
            ReleaseData.decode(_set_word(raw, 4, bad))
    # a dependency bound above 48 bits: encode by hand, the codec cannot produce it
    values = rec.data.abi_values()
    values[10] = [("bootloader", 0, 1 << 48)]
    with pytest.raises(RecordError):
        ReleaseData.decode(eth_abi.encode(list(DATA_TYPES), values))


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (1, "acmé", "printable ASCII"),  # valid UTF-8, not ASCII
        (1, "", "vendor name is empty"),
        (8, 0, "file size must be a positive integer"),
        (9, [], "no supported hardware"),
        (9, ["cam-r1", "cam-r1"], "lists a class twice"),
        (10, [("bootloader", 5, 4)], "min version above max version"),
        (10, [("main-fw", 0, 1)], "cannot depend on itself"),
    ],
)
def test_decode_validates_what_it_decodes(index: int, value: Any, message: str) -> None:
    """A well-formed ABI payload whose fields break a rule is refused like a bad record."""
    values = base_record().data.abi_values()
    values[index] = value
    with pytest.raises(RecordError, match=message):
        ReleaseData.decode(eth_abi.encode(list(DATA_TYPES), values))


def test_decode_refuses_invalid_utf8() -> None:
    raw = base_record().data.encode()
    content = _word(raw, 1) + 32
    broken = raw[:content] + b"\xff" + raw[content + 1:]  # "acme" -> "\xffcme"
    with pytest.raises(RecordError):
        ReleaseData.decode(broken)


# ------------------------------------------------------------------------------ validation


def _hw(n: int) -> tuple[str, ...]:
    return tuple(f"hw-{i}" for i in range(n))


VALIDATION_CASES: list[tuple[str, Callable[[ReleaseRecord], ReleaseRecord], str]] = [
    ("empty vendor", lambda r: with_data(r, vendor_name=""), "vendor name is empty"),
    ("empty product", lambda r: with_data(r, product=""), "product is empty"),
    ("non-ASCII vendor", lambda r: with_data(r, vendor_name="acmé"), "vendor name must be printable ASCII"),
    ("control char in product", lambda r: with_data(r, product="main\nfw"), "product must be printable ASCII"),
    ("non-ASCII link", lambda r: with_data(r, file_link="https://ex.org/ü"), "file link must be printable ASCII"),
    ("non-ASCII file name", lambda r: with_data(r, file_name="fw\x00.bin"), "file name must be printable ASCII"),
    ("non-ASCII hardware", lambda r: with_data(r, supported_hardware=("cäm",)), "hardware id must be printable ASCII"),
    ("vendor too long", lambda r: with_data(r, vendor_name="a" * 65), "vendor name is longer than 64 bytes"),
    ("product too long", lambda r: with_data(r, product="p" * 65), "product is longer than 64 bytes"),
    ("link too long", lambda r: with_data(r, file_link="l" * 257), "file link is longer than 256 bytes"),
    ("file name too long", lambda r: with_data(r, file_name="n" * 129), "file name is longer than 128 bytes"),
    ("hardware id too long", lambda r: with_data(r, supported_hardware=("h" * 65,)),
     "hardware id is longer than 64 bytes"),
    ("empty hardware id", lambda r: with_data(r, supported_hardware=("",)), "hardware id is empty"),
    ("vendor not text", lambda r: with_data(r, vendor_name=b"acme"), "vendor name must be text"),
    ("no hardware", lambda r: with_data(r, supported_hardware=()), "no supported hardware"),
    ("more than 8 hardware", lambda r: with_data(r, supported_hardware=_hw(MAX_HARDWARE + 1)),
     "more than 8 supported hardware classes"),
    ("duplicate hardware", lambda r: with_data(r, supported_hardware=("cam-r1", "cam-r2", "cam-r1")),
     "supported hardware lists a class twice"),
    ("zero size", lambda r: with_data(r, file_size=0), "file size must be a positive integer"),
    ("negative size", lambda r: with_data(r, file_size=-1), "file size must be a positive integer"),
    ("bool size", lambda r: with_data(r, file_size=True), "file size must be a positive integer"),
    ("float size", lambda r: with_data(r, file_size=1024.0), "file size must be a positive integer"),
    ("size beyond 64 bits", lambda r: with_data(r, file_size=2**64), "file size out of range"),
    ("negative publish time", lambda r: with_data(r, publish_time=-1), "publish time out of range"),
    ("publish time beyond 64 bits", lambda r: with_data(r, publish_time=2**64), "publish time out of range"),
    ("bool publish time", lambda r: with_data(r, publish_time=True), "publish time out of range"),
    ("version not a Version", lambda r: with_data(r, version="1.2.3"), "version must be a Version"),
    ("short merkle root", lambda r: with_data(r, merkle_root=b"\x01" * 31), "merkle root must be 32 bytes"),
    ("file hash as hex text", lambda r: with_data(r, file_hash="ab" * 32), "file hash must be 32 bytes"),
    ("more than 8 dependencies",
     lambda r: with_data(r, dependencies=tuple(Dependency(f"d{i}") for i in range(MAX_DEPENDENCIES + 1))),
     "more than 8 dependencies"),
    ("min above max dependency",
     lambda r: with_data(r, dependencies=(Dependency("boot", Version(2, 0, 0), Version(1, 9, 9)),)),
     "dependency on boot: min version above max version"),
    ("self-dependency", lambda r: with_data(r, dependencies=(Dependency("main-fw"),)),
     "main-fw cannot depend on itself"),
    ("empty dependency product", lambda r: with_data(r, dependencies=(Dependency(""),)),
     "dependency product is empty"),
    ("short prev hash", lambda r: dataclasses.replace(r, prev_hash=b"\x00" * 31),
     "previous header hash must be 32 bytes"),
    ("long prev hash", lambda r: dataclasses.replace(r, prev_hash=b"\x00" * 33),
     "previous header hash must be 32 bytes"),
    ("prev hash as text", lambda r: dataclasses.replace(r, prev_hash="00" * 32),
     "previous header hash must be 32 bytes"),
    ("format version 2", lambda r: dataclasses.replace(r, format_version=2), "unsupported record format version 2"),
    ("format version 0", lambda r: dataclasses.replace(r, format_version=0), "unsupported record format version 0"),
    ("format version True", lambda r: dataclasses.replace(r, format_version=True),
     "unsupported record format version True"),
]


@pytest.mark.parametrize(("case", "breaker", "message"), VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_validation_refuses_each_rule(case: str, breaker: Callable[[ReleaseRecord], ReleaseRecord],
                                      message: str) -> None:
    """Every registry rule is enforced before anything is hashed or sent (R10.d.ii)."""
    good = base_record()
    good.validate()
    bad = breaker(good)
    for action in (bad.validate, bad.header_bytes, lambda: bad.header_hash, lambda: bad.to_json()):
        with pytest.raises(RecordError) as exc:
            action()
        assert message in str(exc.value), (case, str(exc.value))


def test_limits_are_inclusive() -> None:
    """Exactly at each byte limit, and exactly 8 hardware ids / dependencies, is still valid."""
    rec = with_data(base_record(), vendor_name="v" * 64, product="p" * 64, file_link="l" * 256,
                    file_name="n" * 128, supported_hardware=tuple(f"{i}" * 64 for i in range(MAX_HARDWARE)),
                    dependencies=tuple(Dependency(f"d{i}") for i in range(MAX_DEPENDENCIES)),
                    file_size=2**64 - 1, publish_time=2**64 - 1)
    rec.validate()
    assert ReleaseData.decode(rec.data.encode()) == rec.data


# ------------------------------------------------------------------------------ JSON refusals


def _json(**changes: Any) -> dict[str, Any]:
    obj = base_record().to_json()
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return obj


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"header_hash": "0x" + "00" * 32}, "header_hash does not match"),
        ({"version": "1.2.4"}, "header_hash does not match"),  # a changed field with the old hash
        ({"merkle_root": "0x1234"}, "merkle_root must be 32 bytes"),
        ({"file_hash": "zz" * 32}, "file_hash is not hex"),
        ({"file_hash": 5}, "file_hash must be a hex string"),
        ({"prev_hash": "0x" + "11" * 31}, "prev_hash must be 32 bytes"),
        ({"vendor_name": _DROP}, "bad record JSON"),
        ({"version": "1.2"}, "bad version"),
        ({"version": 10203}, "bad version"),
        ({"file_size": "4096"}, "file size must be a positive integer"),
        ({"publish_time": "soon"}, "bad record JSON"),
        ({"supported_hardware": "cam-r1"}, "supported_hardware must be a list"),
        ({"supported_hardware": ["cam-r1", "cam-r1"]}, "lists a class twice"),
        ({"dependencies": [{"product": "boot", "min_version": "2.0.0", "max_version": "1.0.0"}]},
         "min version above max version"),
        ({"dependencies": [{"product": "boot"}]}, "bad record JSON"),
        ({"format_version": 2}, "unsupported record format version 2"),
        ({"format_version": True}, "unsupported record format version True"),
    ],
)
def test_record_from_json_refuses(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        ReleaseRecord.from_json(_json(**changes))


def test_record_from_json_refuses_non_objects() -> None:
    for obj in (None, [], "record", 3):
        with pytest.raises(RecordError, match="record JSON must be an object"):
            ReleaseRecord.from_json(obj)  # type: ignore[arg-type]


def test_record_from_json_without_header_hash_or_prev_hash() -> None:
    """header_hash is optional (checked when present); a missing prev_hash means a first release."""
    obj = _json(header_hash=_DROP, prev_hash=_DROP, line=_DROP)
    rec = ReleaseRecord.from_json(obj)
    assert rec.prev_hash == ZERO_HASH
    assert rec.data == base_record().data


# ------------------------------------------------------------------------------ from_event


def test_from_event_refuses_a_header_hash_that_does_not_match() -> None:
    rec = base_record()
    with pytest.raises(VerificationError, match="event header hash does not match") as exc:
        ReleaseRecord.from_event(header_hash=b"\x01" * 32, line=rec.line, prev_hash=rec.prev_hash,
                                 data=rec.data.encode())
    assert not isinstance(exc.value, ProofError)
    # the event's prev hash is part of the header: the real hash with another prev hash fails too
    with pytest.raises(VerificationError, match="event header hash does not match"):
        ReleaseRecord.from_event(header_hash=rec.header_hash, line=rec.line, prev_hash=ZERO_HASH,
                                 data=rec.data.encode())


def test_from_event_refuses_a_line_that_does_not_match() -> None:
    rec = base_record()
    for line in (line_id("acme", "other-fw"), line_id("globex", "main-fw"), keccak(b"acmemain-fw")):
        with pytest.raises(VerificationError, match="event product line does not match"):
            ReleaseRecord.from_event(header_hash=rec.header_hash, line=line, prev_hash=rec.prev_hash,
                                     data=rec.data.encode())


def test_from_event_refuses_non_canonical_data() -> None:
    rec = base_record()
    with pytest.raises(RecordError, match="not canonically encoded"):
        ReleaseRecord.from_event(header_hash=rec.header_hash, line=rec.line, prev_hash=rec.prev_hash,
                                 data=rec.data.encode() + b"\x00" * 32)


# ------------------------------------------------------------------------------ line id


def test_line_id_is_stable_and_unambiguous() -> None:
    """The product line id is keccak(abi_encode(vendor, product)): fixed, and no concatenation clash."""
    assert line_id("acme", "main-fw") == line_id("acme", "main-fw")
    assert line_id("acme", "main-fw").hex() == GOLDEN_LINE
    assert line_id("acme", "main-fw") == keccak(eth_abi.encode(["string", "string"], ["acme", "main-fw"]))
    others = {line_id("acme", "main-fw"), line_id("acm", "emain-fw"), line_id("main-fw", "acme"),
              line_id("acme", "main-fw2"), line_id("Acme", "main-fw")}
    assert len(others) == 5


@settings(max_examples=60, deadline=None)
@given(records(), versions)
def test_line_id_depends_on_vendor_and_product_only(rec: ReleaseRecord, version: Version) -> None:
    """Every release of a product line shares its line id, whatever else differs."""
    other = dataclasses.replace(with_data(rec, version=version, file_size=rec.data.file_size + 1),
                                prev_hash=keccak(rec.prev_hash))
    assert rec.line == other.line == line_id(rec.data.vendor_name, rec.data.product)


# ------------------------------------------------------------------------------ versions


@settings(max_examples=300, deadline=None)
@given(versions, versions)
def test_version_packing_preserves_order(a: Version, b: Version) -> None:
    """R10.b.i / R10.d.i: the chain compares packed integers; that order is the version order."""
    ta, tb = (a.major, a.minor, a.patch), (b.major, b.minor, b.patch)
    assert (a < b) == (a.packed < b.packed) == (ta < tb)
    assert (a == b) == (a.packed == b.packed) == (ta == tb)
    assert 0 <= a.packed < 2**48
    assert Version.unpack(a.packed) == a
    assert Version.parse(str(a)) == a
    assert str(a) == ".".join(map(str, ta))


def test_version_examples() -> None:
    assert Version.parse("1.2.3").packed == (1 << 32) | (2 << 16) | 3
    assert Version.parse("0.0.0").packed == 0
    assert Version.parse("65535.65535.65535").packed == 2**48 - 1
    assert Version.parse(" 1.2.3 ") == Version(1, 2, 3)
    assert Version.parse("1.10.0") > Version.parse("1.9.65535")  # not string order


@pytest.mark.parametrize(
    "text",
    ["", "1", "1.2", "1.2.3.4", "v1.2.3", "01.2.3", "1.02.3", "1.2.03", "1.2.65536", "65536.0.0",
     "99999.0.0", "100000.0.0", "-1.0.0", "+1.0.0", "1..2", "1.2.", ".1.2", "1.2.3-rc1", "1 .2.3",
     "1.2.3a", "a.b.c", "1١.0.0", "1.2٣.0", "１.0.0"],
)
def test_bad_version_strings_refused(text: str) -> None:
    with pytest.raises(RecordError, match="bad version|version parts must be"):
        Version.parse(text)


def test_bad_version_values_refused() -> None:
    for bad in (None, 1, 1.0, b"1.2.3"):
        with pytest.raises(RecordError, match="bad version"):
            Version.parse(bad)  # type: ignore[arg-type]
    for args in ((65536, 0, 0), (0, -1, 0), (0, 0, 2**16), (True, 0, 0), (1.0, 0, 0)):
        with pytest.raises(RecordError, match="version parts must be integers 0..65535"):
            Version(*args)  # type: ignore[arg-type]
    for packed in (-1, 2**48, 2**64):
        with pytest.raises(RecordError, match="packed version out of range"):
            Version.unpack(packed)


# ------------------------------------------------------------------------------ dependencies

MIN_V, MAX_V = Version(0, 0, 0), Version(0xFFFF, 0xFFFF, 0xFFFF)
OPS: dict[str, Callable[[Version, Version], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}


def succ(v: Version) -> Version | None:
    """The next version, by tuple arithmetic (independent of the packed encoding)."""
    if v.patch < 0xFFFF:
        return Version(v.major, v.minor, v.patch + 1)
    if v.minor < 0xFFFF:
        return Version(v.major, v.minor + 1, 0)
    if v.major < 0xFFFF:
        return Version(v.major + 1, 0, 0)
    return None


def pred(v: Version) -> Version | None:
    if v.patch > 0:
        return Version(v.major, v.minor, v.patch - 1)
    if v.minor > 0:
        return Version(v.major, v.minor - 1, 0xFFFF)
    if v.major > 0:
        return Version(v.major - 1, 0xFFFF, 0xFFFF)
    return None


def _probes(*anchors: Version) -> list[Version]:
    out = [MIN_V, MAX_V]
    for a in anchors:
        out += [x for x in (a, succ(a), pred(a)) if x is not None]
    return out


def test_parse_dependency_operators() -> None:
    assert parse_dependency("boot>=1.2.0") == Dependency("boot", Version(1, 2, 0), MAX_V)
    assert parse_dependency("boot>1.0.0") == Dependency("boot", Version(1, 0, 1), MAX_V)
    assert parse_dependency("boot>1.65535.65535") == Dependency("boot", Version(2, 0, 0), MAX_V)
    assert parse_dependency("boot<=2.0.0") == Dependency("boot", MIN_V, Version(2, 0, 0))
    assert parse_dependency("boot<2.0.0") == Dependency("boot", MIN_V, Version(1, 65535, 65535))
    assert parse_dependency("boot<1.1.0") == Dependency("boot", MIN_V, Version(1, 0, 65535))
    assert parse_dependency("boot==1.2.3") == Dependency("boot", Version(1, 2, 3), Version(1, 2, 3))
    assert parse_dependency("boot") == Dependency("boot", MIN_V, MAX_V)
    assert parse_dependency("boot>=1.0.0,<2.0.0") == Dependency("boot", Version(1, 0, 0), Version(1, 65535, 65535))
    assert parse_dependency("  boot >= 1.0.0 , < 2.0.0 ") == parse_dependency("boot>=1.0.0,<2.0.0")
    assert parse_dependency("boot<2.0.0,>=1.0.0") == parse_dependency("boot>=1.0.0,<2.0.0")  # any order
    assert parse_dependency("boot>=1.0.0,>=1.5.0,<=3.0.0,<2.0.0") == Dependency(
        "boot", Version(1, 5, 0), Version(1, 65535, 65535))  # tightest bounds win
    assert parse_dependency("boot==1.2.3,>=1.0.0") == Dependency("boot", Version(1, 2, 3), Version(1, 2, 3))


@pytest.mark.parametrize(
    "text",
    ["boot<0.0.0", "boot>65535.65535.65535", "boot>=2.0.0,<2.0.0", "boot>2.0.0,<=2.0.0",
     "boot>=2.0.0,<=1.9.9", "boot==1.0.0,==1.0.1", "boot==1.0.0,>1.0.0"],
)
def test_parse_dependency_refuses_empty_ranges(text: str) -> None:
    with pytest.raises(RecordError, match="allows no version"):
        parse_dependency(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "bad dependency"),
        (">=1.0.0", "bad dependency"),
        ("boot=>1.0.0", "bad dependency clause"),
        ("boot!=1.0.0", "bad dependency clause"),
        ("boot~=1.0.0", "bad dependency clause"),
        ("boot=1.0.0", "bad dependency clause"),
        ("boot>=", "bad version '='"),
        ("boot foo", "bad dependency clause"),
        ("boot>=1.0.0 <2.0.0", "bad dependency clause"),
        ("boot>=1.0", "bad version"),
        ("boot>=1.0.0;<2.0.0", "bad version"),
        ("boot>=1.0.x", "bad version"),
        ("boot<65536.0.0", "bad version|version parts"),
    ],
)
def test_parse_dependency_refuses_bad_syntax(text: str, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_dependency(text)


def test_parse_dependency_refuses_none() -> None:
    with pytest.raises(RecordError, match="bad dependency"):
        parse_dependency(None)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(OPS)), versions, versions)
def test_parse_dependency_single_bound_means_what_it_says(op: str, bound: Version, probe: Version) -> None:
    """``PRODUCT<op>X`` allows exactly the versions v with ``v <op> X`` (boundaries included)."""
    text = f"boot{op}{bound}"
    satisfied = [v for v in _probes(bound, probe) if OPS[op](v, bound)]
    if not satisfied and op in ("<", ">"):
        with pytest.raises(RecordError, match="allows no version"):
            parse_dependency(text)
        assert (op, bound) in (("<", MIN_V), (">", MAX_V))
        return
    dep = parse_dependency(text)
    assert dep.product == "boot"
    for v in _probes(bound, probe):
        assert dep.allows(v) == OPS[op](v, bound), (text, v)
    assert parse_dependency(str(dep)) == dep


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([">=", ">"]), versions, st.sampled_from(["<=", "<"]), versions, versions)
def test_parse_dependency_combined_range(lo_op: str, lo: Version, hi_op: str, hi: Version, probe: Version) -> None:
    """``PRODUCT>=A,<B`` and variants: the inclusive range stored on chain is exactly the set allowed."""
    text = f"boot{lo_op}{lo},{hi_op}{hi}"
    lo_eff = lo if lo_op == ">=" else succ(lo)
    hi_eff = hi if hi_op == "<=" else pred(hi)
    if lo_eff is None or hi_eff is None or lo_eff > hi_eff:
        with pytest.raises(RecordError, match="allows no version"):
            parse_dependency(text)
        return
    dep = parse_dependency(text)
    assert (dep.min_version, dep.max_version) == (lo_eff, hi_eff)
    for v in _probes(lo, hi, probe):
        assert dep.allows(v) == (OPS[lo_op](v, lo) and OPS[hi_op](v, hi)), (text, v)


def test_dependencies_parsed_are_valid_record_dependencies() -> None:
    deps = tuple(parse_dependency(t) for t in ("boot>=1.0.0,<2.0.0", "sensor-drv==3.1.4"))
    rec = with_data(base_record(), dependencies=deps)
    back = ReleaseData.decode(rec.data.encode())
    assert back.dependencies == deps
    assert str(back.dependencies[0]) == "boot>=1.0.0,<=1.65535.65535"
