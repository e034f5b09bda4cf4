"""Unit tests for masking.functions: masking values in PostgreSQL / MySQL text wire form.

Byte tables for every function x kind x dialect, NULL handling, validity of every output for its
kind (checked with real parsers: int, Decimal, float, json, uuid, datetime), partial masking of
short and multi-byte values, and hash stability. `assert_valid_for_kind` is shared with
tests/property/test_mask_props.py.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import hmac
import json
import math
import re
import uuid
from typing import Any, get_args

import pytest

from sqlward.masking.functions import Masker, make_masker, redaction
from sqlward.masking.model import MaskSpec, TypeKind

PG = "postgres"
MY = "mysql"
DIALECTS = (PG, MY)
KINDS: tuple[str, ...] = get_args(TypeKind)
FUNCTIONS = ("redact", "null", "partial", "email", "hash", "truncate_date")
KEY = b"test-hash-key-0123456789abcdef"

# --- validity of an output for its kind (real parsers where they exist) ---------------------

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMERIC = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")
_OFFSET = r"[+-][0-9]{2}(?::[0-9]{2}(?::[0-9]{2})?)?"
_TIMESTAMPTZ = re.compile(_TIMESTAMP.pattern + _OFFSET)
_TIME = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")
_TIMETZ = re.compile(_TIME.pattern + _OFFSET)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def assert_valid_for_kind(out: bytes | None, kind: str, dialect: str) -> None:
    """`out` is NULL or a text-form value a client parsing `kind` (in `dialect`) accepts."""
    if kind == "other":
        assert out is None
        return
    if out is None:
        return
    assert isinstance(out, bytes), out
    if kind == "bytes":
        if dialect == PG:
            assert out.startswith(b"\\x"), out
            bytes.fromhex(out[2:].decode("ascii"))  # raises on bad hex
            assert len(out) % 2 == 0
        return
    text = out.decode("utf-8")  # raises on invalid UTF-8
    if kind == "text":
        return
    if kind == "integer":
        assert _INTEGER.fullmatch(text) and text != "-0", text
        int(text)
    elif kind == "numeric":
        assert _NUMERIC.fullmatch(text), text
        assert decimal.Decimal(text).is_finite()
        assert not re.fullmatch(r"-0(?:\.0+)?", text), text
    elif kind == "float":
        assert _NUMERIC.fullmatch(text), text
        assert math.isfinite(float(text))
    elif kind == "boolean":
        assert text in (("t", "f") if dialect == PG else ("0", "1")), text
    elif kind == "date":
        assert _DATE.fullmatch(text), text
        datetime.date.fromisoformat(text)
    elif kind == "timestamp" or (kind == "timestamptz" and dialect == MY):
        assert _TIMESTAMP.fullmatch(text), text
        assert datetime.datetime.fromisoformat(text).tzinfo is None
    elif kind == "timestamptz":
        assert _TIMESTAMPTZ.fullmatch(text), text
        assert datetime.datetime.fromisoformat(text).tzinfo is not None
    elif kind == "time":
        if dialect == PG:
            assert _TIME.fullmatch(text) or _TIMETZ.fullmatch(text), text
        else:
            assert _TIME.fullmatch(text), text
        datetime.time.fromisoformat(text)
    elif kind == "uuid":
        assert _UUID.fullmatch(text), text
        assert str(uuid.UUID(text)) == text
    elif kind == "json":
        json.loads(text)
    else:  # pragma: no cover
        raise AssertionError(f"unknown kind {kind}")


# Realistic wire values per kind, plus junk every masker must survive.
SAMPLES: dict[str, list[bytes]] = {
    "text": [b"alice@example.com", b"Alice Smith", b"", b"x", "Zo\u00eb \u00dcml\u00e4ut".encode(), "\u65e5\u672c\u8a9e".encode()],
    "integer": [b"0", b"42", b"-17", b"123456789", b"-9223372036854775808", b"00042", b"2024"],
    "numeric": [b"0", b"12345.6789", b"-0.5", b"0.00123", b"NaN", b"Infinity", b"100.00"],
    "float": [b"0", b"1.5", b"-2.25e+30", b"NaN", b"-Infinity", b"3.141592653589793"],
    "boolean": [b"t", b"f", b"0", b"1"],
    "date": [b"2024-03-05", b"1999-12-31", b"infinity", b"-infinity", b"2024-03-05 BC", b"0000-00-00", b"2024-02-29"],
    "timestamp": [b"2024-03-05 10:11:12", b"2024-03-05 10:11:12.123456", b"infinity", b"0000-00-00 00:00:00"],
    "timestamptz": [b"2024-03-05 10:11:12+01", b"2024-03-05 10:11:12.5+05:30", b"1850-01-01 00:00:00+00:53:28", b"-infinity"],
    "time": [b"10:11:12", b"23:59:59.999999", b"10:11:12+01", b"-838:59:59"],
    "uuid": [b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", b"00000000-0000-0000-0000-000000000000"],
    "json": [b'{"email": "alice@example.com"}', b"[1, 2, 3]", b'"alice"', b"null", b"42"],
    "bytes": [b"\\x0a0b", b"\\x", b"\x00\x01\xff", b"\\x0g"],
    "other": [b"{1,2,3}", b"192.168.0.1/24", b"(1,2)"],
}
JUNK: list[bytes] = [b"", b"\xff\xfe\xfd", b"\x00", b"  ", b"-", b"9" * 400, "\u2603".encode()]


def masker(function: str, kind: str, dialect: str, **params: Any) -> Masker:
    return Masker(MaskSpec(function=function, **params), kind, KEY, dialect=dialect)  # type: ignore[arg-type]


def digest(value: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, value, hashlib.sha256).digest()


# --- redact and null ------------------------------------------------------------------------

REDACTED: dict[str, dict[str, bytes | None]] = {
    PG: {
        "text": b"****",
        "integer": b"0",
        "numeric": b"0",
        "float": b"0",
        "boolean": b"f",
        "date": b"1970-01-01",
        "timestamp": b"1970-01-01 00:00:00",
        "timestamptz": b"1970-01-01 00:00:00+00",
        "time": b"00:00:00",
        "uuid": b"00000000-0000-0000-0000-000000000000",
        "json": b'"****"',
        "bytes": b"\\x",
        "other": None,
    },
    MY: {
        "text": b"****",
        "integer": b"0",
        "numeric": b"0",
        "float": b"0",
        "boolean": b"0",
        "date": b"1970-01-01",
        "timestamp": b"1970-01-01 00:00:00",
        "timestamptz": b"1970-01-01 00:00:00",
        "time": b"00:00:00",
        "uuid": b"00000000-0000-0000-0000-000000000000",
        "json": b'"****"',
        "bytes": b"",
        "other": None,
    },
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", KINDS)
def test_redact_gives_the_kinds_constant_for_every_value(kind: str, dialect: str) -> None:
    m = masker("redact", kind, dialect)
    expected = REDACTED[dialect][kind]
    for value in SAMPLES[kind] + JUNK:
        if kind == "time" and dialect == PG and value == b"10:11:12+01":
            continue  # timetz: below
        assert m(value) == expected, value
    assert redaction(kind, dialect) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dialect", "value", "expected"),
    [
        (PG, b"10:11:12+01", b"00:00:00+00"),
        (PG, b"10:11:12.5-03:30", b"00:00:00+00"),
        (PG, b"10:11:12", b"00:00:00"),
        (MY, b"10:11:12", b"00:00:00"),
        (MY, b"-838:59:59", b"00:00:00"),
        (MY, b"10:11:12+01", b"00:00:00"),  # MySQL has no timetz
    ],
)
def test_redact_of_postgres_timetz_keeps_an_offset(dialect: str, value: bytes, expected: bytes) -> None:
    assert masker("redact", "time", dialect)(value) == expected
    assert_valid_for_kind(expected, "time", dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", KINDS)
def test_null_function_gives_null_for_every_value(kind: str, dialect: str) -> None:
    m = masker("null", kind, dialect)
    assert all(m(value) is None for value in SAMPLES[kind] + JUNK)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_null_in_null_out(function: str, kind: str, dialect: str) -> None:
    assert masker(function, kind, dialect)(None) is None
    assert make_masker(MaskSpec(function=function), kind, KEY, dialect)(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_other_kind_is_always_null(function: str, dialect: str) -> None:
    m = masker(function, "other", dialect)
    assert all(m(value) is None for value in SAMPLES["other"] + JUNK)


# --- every output is valid for its kind -----------------------------------------------------

PARAMS: list[dict[str, Any]] = [
    {},
    {"keep_first": 2, "keep_last": 2},
    {"keep_first": 0, "keep_last": 0},
    {"keep_first": 100, "keep_last": 100},
    {"truncate": "year"},
    {"truncate": "day"},
    {"truncate": "hour"},
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_output_is_valid_for_its_kind(function: str, kind: str, dialect: str) -> None:
    values = [v for samples in SAMPLES.values() for v in samples] + JUNK
    for params in PARAMS:
        m = masker(function, kind, dialect, **params)
        for value in values:
            assert_valid_for_kind(m(value), kind, dialect)


def test_validity_checker_rejects_invalid_values() -> None:
    """The checker used above can fail: outputs a client would choke on are refused."""
    bad = [
        (b"abc", "integer"), (b"1.5", "integer"), (b"-0", "integer"), (b"1_000", "integer"),
        (b"NaN", "numeric"), (b"1e5", "numeric"), (b"inf", "float"), (b"yes", "boolean"),
        (b"2024-02-30", "date"), (b"2024-03-05 BC", "date"), (b"infinity", "timestamp"),
        (b"2024-03-05 10:11:12", "timestamptz"), (b"25:00:00", "time"), (b"not-a-uuid", "uuid"),
        (b"****", "json"), (b"\\x0", "bytes"), (b"\xff", "text"), (b"****", "other"),
    ]  # fmt: skip
    for value, kind in bad:
        with pytest.raises((AssertionError, ValueError)):
            assert_valid_for_kind(value, kind, PG)


# --- partial --------------------------------------------------------------------------------

PARTIAL_CASES: list[tuple[str, dict[str, int], bytes, bytes]] = [
    # text: characters, not bytes
    ("text", {"keep_last": 4}, b"4111111111111111", b"************1111"),
    ("text", {"keep_first": 2, "keep_last": 2}, b"alice@example.com", b"al*************om"),
    ("text", {"keep_first": 1, "keep_last": 0}, b"secret", b"s*****"),
    ("text", {"keep_first": 0, "keep_last": 0}, b"secret", b"******"),
    # short values are never fully revealed
    ("text", {"keep_last": 4}, b"abcd", b"****"),
    ("text", {"keep_last": 4}, b"abc", b"***"),
    ("text", {"keep_first": 2, "keep_last": 2}, b"abcd", b"****"),
    ("text", {"keep_first": 2, "keep_last": 2}, b"abcde", b"ab*de"),
    ("text", {"keep_last": 4}, b"", b""),
    # multi-byte UTF-8: one star per character
    ("text", {"keep_last": 2}, "Jos\u00e9 Mar\u00eda".encode(), "********\u00eda".encode()),
    ("text", {"keep_first": 1, "keep_last": 1}, "\u65e5\u672c\u8a9e\u30c6\u30ad\u30b9\u30c8".encode(), "\u65e5*****\u30c8".encode()),
    ("text", {"keep_first": 1, "keep_last": 1}, "\u00e9\u00e8".encode(), b"**"),
    ("text", {"keep_last": 1}, "ab\U0001f600".encode(), "**\U0001f600".encode()),
    # negative counts mask more, never less
    ("text", {"keep_first": -3, "keep_last": -1}, b"secret", b"******"),
    # invalid UTF-8 falls back to the redaction
    ("text", {"keep_last": 4}, b"abc\xffdefgh", b"****"),
    # integers: masked digits become 0, leading zeros stripped, sign kept
    ("integer", {"keep_last": 4}, b"123456789", b"6789"),
    ("integer", {"keep_last": 4}, b"-123456789", b"-6789"),
    ("integer", {"keep_first": 2, "keep_last": 2}, b"123456789", b"120000089"),
    ("integer", {"keep_first": 0, "keep_last": 0}, b"123456789", b"0"),
    ("integer", {"keep_last": 4}, b"1234", b"0"),
    ("integer", {"keep_last": 4}, b"-42", b"0"),
    ("integer", {"keep_last": 4}, b"00042", b"0"),  # MySQL ZEROFILL: 2 significant digits
    ("integer", {"keep_last": 4}, b"0", b"0"),
    ("integer", {"keep_last": 4}, b"abc", b"0"),
    ("integer", {"keep_last": 4}, b"12.5", b"0"),
    # numeric: the same over integer and fraction digits; scale kept
    ("numeric", {"keep_last": 4}, b"12345.6789", b"0.6789"),
    ("numeric", {"keep_last": 4}, b"-12345.6789", b"-0.6789"),
    ("numeric", {"keep_first": 2, "keep_last": 2}, b"12345.6789", b"12000.0089"),
    ("numeric", {"keep_last": 2}, b"98765", b"65"),
    ("numeric", {"keep_last": 4}, b"12.50", b"0.00"),
    ("numeric", {"keep_last": 4}, b"0.00123", b"0.00000"),
    ("numeric", {"keep_last": 2}, b"-0.00123", b"-0.00023"),
    ("numeric", {"keep_last": 4}, b"NaN", b"0"),
    ("numeric", {"keep_last": 4}, b"Infinity", b"0"),
    ("numeric", {"keep_last": 4}, b"1.5e3", b"0"),
    # other kinds: the redaction
    ("float", {"keep_last": 4}, b"123456.789", b"0"),
    ("uuid", {"keep_last": 4}, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", b"00000000-0000-0000-0000-000000000000"),
    ("json", {"keep_last": 4}, b'"alice@example.com"', b'"****"'),
    ("date", {"keep_last": 4}, b"2024-03-05", b"1970-01-01"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("kind", "params", "value", "expected"), PARTIAL_CASES)
def test_partial(kind: str, params: dict[str, int], value: bytes, expected: bytes, dialect: str) -> None:
    out = masker("partial", kind, dialect, **params)(value)
    assert out == expected
    assert_valid_for_kind(out, kind, dialect)


def test_partial_boolean_and_bytes_follow_the_dialect() -> None:
    assert masker("partial", "boolean", PG)(b"t") == b"f"
    assert masker("partial", "boolean", MY)(b"1") == b"0"
    assert masker("partial", "bytes", PG)(b"\\x0a0b0c0d0e") == b"\\x"
    assert masker("partial", "bytes", MY)(b"\x0a\x0b\x0c\x0d\x0e") == b""


# --- email ----------------------------------------------------------------------------------

EMAIL_CASES: list[tuple[bytes, bytes]] = [
    (b"alice@example.com", b"a****@example.com"),
    (b"al@example.com", b"a****@example.com"),  # fixed-length stars: the length does not leak
    (b"bob.smith+tag@mail.example.co.uk", b"b****@mail.example.co.uk"),
    (b"a@example.com", b"*****@example.com"),  # a one-character local part is not revealed
    ("j\u00f6rg@b\u00fccher.de".encode(), "j****@b\u00fccher.de".encode()),
    (b"not an email", b"****"),
    (b"alice@localhost", b"****"),
    (b"alice@example.c0m", b"****"),
    (b"alice@example.c", b"****"),
    (b"a@b@example.com", b"****"),
    (b"alice @example.com", b"****"),
    (b"Alice <alice@example.com>", b"****"),
    (b"alice@.example.com", b"****"),
    (b"alice@example..com", b"****"),
    (b"@example.com", b"****"),
    (b"", b"****"),
    (b"alice\xff@example.com", b"****"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("value", "expected"), EMAIL_CASES)
def test_email(value: bytes, expected: bytes, dialect: str) -> None:
    assert masker("email", "text", dialect)(value) == expected


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "text"])
def test_email_on_other_kinds_redacts(kind: str, dialect: str) -> None:
    m = masker("email", kind, dialect)
    assert m(b"alice@example.com") == REDACTED[dialect][kind]


# --- hash -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_hash_text_is_16_hex_of_the_keyed_hmac(dialect: str) -> None:
    m = masker("hash", "text", dialect)
    out = m(b"alice@example.com")
    assert out == digest(b"alice@example.com")[:8].hex().encode()
    assert re.fullmatch(rb"[0-9a-f]{16}", out or b"")
    assert out != hashlib.sha256(b"alice@example.com").hexdigest()[:16].encode()  # keyed


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", ["text", "integer", "numeric", "float", "uuid", "json", "bytes"])
def test_hash_is_stable_per_key_and_differs_between_keys_and_values(kind: str, dialect: str) -> None:
    value = SAMPLES[kind][1]
    a = Masker(MaskSpec(function="hash"), kind, KEY, dialect=dialect)  # type: ignore[arg-type]
    b = Masker(MaskSpec(function="hash"), kind, KEY, dialect=dialect)  # type: ignore[arg-type]
    c = Masker(MaskSpec(function="hash"), kind, b"another key", dialect=dialect)  # type: ignore[arg-type]
    assert a(value) == a(value) == b(value)
    assert a(value) != c(value)
    assert a(value) != a(value + b"0")
    assert_valid_for_kind(a(value), kind, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_hash_integer_fits_smallint_and_respects_int_max(dialect: str) -> None:
    values = [str(i).encode() for i in range(-500, 500)]
    m = masker("hash", "integer", dialect)
    outs = {m(v) for v in values}
    assert all(0 <= int(o or b"-1") <= 32767 for o in outs)
    assert len(outs) > 950  # a pseudonym, not a constant (a few collisions are acceptable)
    assert m(b"42") == b"%d" % (int.from_bytes(digest(b"42")[:8], "big") % 32768)
    tiny = Masker(MaskSpec(function="hash"), "integer", KEY, dialect=dialect, int_max=127)
    assert all(0 <= int(tiny(v) or b"-1") <= 127 for v in values)
    big = Masker(MaskSpec(function="hash"), "integer", KEY, dialect=dialect, int_max=2**63 - 1)
    assert big(b"42") == b"%d" % (int.from_bytes(digest(b"42")[:8], "big") % 2**63)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_hash_uuid_is_a_version_4_uuid_from_the_hmac(dialect: str) -> None:
    m = masker("hash", "uuid", dialect)
    for i in range(64):
        value = str(uuid.UUID(int=i * 0x1234567890ABCDEF)).encode()
        out = m(value)
        assert out is not None
        u = uuid.UUID(out.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert str(u) == out.decode()
        d = digest(value)
        assert u.bytes[:6] == d[:6] and u.bytes[9:] == d[9:16]


def test_hash_json_and_bytes_forms() -> None:
    d = digest(b'{"a": 1}')[:8].hex()
    for dialect in DIALECTS:
        assert json.loads(masker("hash", "json", dialect)(b'{"a": 1}') or b"") == d
    # bytea hex is hashed over the decoded bytes: the same value hashes alike in both dialects
    raw = b"\x0a\x0b\xff"
    pg = masker("hash", "bytes", PG)(b"\\x0a0bff")
    my = masker("hash", "bytes", MY)(raw)
    assert my == digest(raw)[:16]
    assert pg == b"\\x" + digest(raw)[:16].hex().encode()
    # escape-format or broken hex is hashed as it is, still valid bytea hex
    out = masker("hash", "bytes", PG)(b"\\x0g")
    assert out == b"\\x" + digest(b"\\x0g")[:16].hex().encode()


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", ["boolean", "date", "timestamp", "timestamptz", "time"])
def test_hash_of_small_or_temporal_kinds_redacts(kind: str, dialect: str) -> None:
    m = masker("hash", kind, dialect)
    for value in SAMPLES[kind]:
        if kind == "time" and dialect == PG and value == b"10:11:12+01":
            assert m(value) == b"00:00:00+00"
        else:
            assert m(value) == REDACTED[dialect][kind]


def _expected_hash(kind: str, dialect: str, value: bytes) -> bytes | None:
    """The hash output, computed here from the HMAC independently of the module."""
    if kind == "bytes" and dialect == PG and value.startswith(b"\\x"):
        try:
            value = bytes.fromhex(value[2:].decode())
        except ValueError:
            pass
    d = digest(value)
    if kind == "text":
        return d[:8].hex().encode()
    if kind == "json":
        return json.dumps(d[:8].hex()).encode()
    if kind in ("integer", "numeric", "float"):
        return str(int.from_bytes(d[:8], "big") % 32768).encode()
    if kind == "uuid":
        return str(uuid.UUID(bytes=d[:16], version=4)).encode()
    if kind == "bytes":
        return b"\\x" + d[:16].hex().encode() if dialect == PG else d[:16]
    return REDACTED[dialect][kind]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", KINDS)
def test_hash_table(kind: str, dialect: str) -> None:
    m = masker("hash", kind, dialect)
    for value in SAMPLES[kind]:
        if kind == "time" and dialect == PG and value == b"10:11:12+01":
            continue  # timetz: test_hash_of_small_or_temporal_kinds_redacts
        assert m(value) == _expected_hash(kind, dialect, value), value


NOT_APPLICABLE: dict[str, tuple[str, ...]] = {
    "partial": ("float", "boolean", "date", "timestamp", "timestamptz", "time", "uuid", "json", "bytes"),
    "truncate_date": ("text", "integer", "numeric", "float", "boolean", "time", "uuid", "json", "bytes"),
    "hash": ("boolean", "date", "timestamp", "timestamptz", "time"),
    "email": tuple(k for k in KINDS if k != "text"),
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("function", "kind"), [(f, k) for f, kinds in NOT_APPLICABLE.items() for k in kinds]
)
def test_function_on_a_kind_it_does_not_apply_to_redacts(function: str, kind: str, dialect: str) -> None:
    m = masker(function, kind, dialect, keep_last=2, truncate="year")
    for value in SAMPLES[kind] + JUNK:
        assert m(value) == redaction(kind, dialect, value), value  # type: ignore[arg-type]


def test_hash_handles_invalid_utf8_and_empty_values() -> None:
    m = masker("hash", "text", PG)
    assert m(b"\xff\xfe") == digest(b"\xff\xfe")[:8].hex().encode()
    assert m(b"") == digest(b"")[:8].hex().encode()


def test_hash_needs_a_key() -> None:
    with pytest.raises(ValueError, match="hash key"):
        Masker(MaskSpec(function="hash"), "text", b"", dialect=PG)
    # other functions do not use the key
    assert Masker(MaskSpec(function="redact"), "text", b"", dialect=PG)(b"x") == b"****"


# --- truncate_date --------------------------------------------------------------------------

TRUNCATE_CASES: list[tuple[str, str, bytes, bytes]] = [
    ("date", "year", b"2024-03-05", b"2024-01-01"),
    ("date", "month", b"2024-03-05", b"2024-03-01"),
    ("date", "day", b"2024-03-05", b"2024-03-05"),
    ("date", "hour", b"2024-03-05", b"2024-03-05"),
    ("date", "month", b"2024-02-29", b"2024-02-01"),
    ("timestamp", "year", b"2024-03-05 10:11:12", b"2024-01-01 00:00:00"),
    ("timestamp", "month", b"2024-03-05 10:11:12.123456", b"2024-03-01 00:00:00"),
    ("timestamp", "day", b"2024-03-05 10:11:12", b"2024-03-05 00:00:00"),
    ("timestamp", "hour", b"2024-03-05 10:11:12.5", b"2024-03-05 10:00:00"),
    ("timestamp", "hour", b"2024-03-05T10:11:12", b"2024-03-05T10:00:00"),
    # values that do not parse: the redaction
    ("date", "month", b"infinity", b"1970-01-01"),
    ("date", "month", b"-infinity", b"1970-01-01"),
    ("date", "month", b"2024-03-05 BC", b"1970-01-01"),
    ("date", "month", b"0000-00-00", b"1970-01-01"),
    ("date", "month", b"2023-02-29", b"1970-01-01"),
    ("date", "month", b"2024-13-01", b"1970-01-01"),
    ("date", "month", b"10000-01-01", b"1970-01-01"),
    ("date", "year", b"0000-03-05", b"1970-01-01"),  # MySQL allows year 0; clients do not
    ("timestamp", "month", b"0000-03-05 10:11:12", b"1970-01-01 00:00:00"),
    ("date", "month", b"05/03/2024", b"1970-01-01"),
    ("timestamp", "month", b"infinity", b"1970-01-01 00:00:00"),
    ("timestamp", "month", b"2024-03-05 24:00:00", b"1970-01-01 00:00:00"),
    ("timestamp", "month", b"2024-03-05 10:11:12+01", b"1970-01-01 00:00:00"),  # no zone here
    ("timestamp", "month", b"2024-03-05", b"1970-01-01 00:00:00"),
    ("timestamp", "month", b"\xff\xfe", b"1970-01-01 00:00:00"),
    # other kinds: the redaction
    ("time", "hour", b"10:11:12", b"00:00:00"),
    ("text", "month", b"2024-03-05", b"****"),
    ("integer", "year", b"2024", b"0"),
    ("json", "month", b'"2024-03-05"', b'"****"'),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("kind", "part", "value", "expected"), TRUNCATE_CASES)
def test_truncate_date(kind: str, part: str, value: bytes, expected: bytes, dialect: str) -> None:
    out = masker("truncate_date", kind, dialect, truncate=part)(value)
    assert out == expected
    assert_valid_for_kind(out, kind, dialect)


@pytest.mark.parametrize(
    ("dialect", "part", "value", "expected"),
    [
        # PostgreSQL: the offset is kept as it was
        (PG, "year", b"2024-03-05 10:11:12+01", b"2024-01-01 00:00:00+01"),
        (PG, "month", b"2024-03-05 10:11:12.5+05:30", b"2024-03-01 00:00:00+05:30"),
        (PG, "day", b"2024-03-05 23:59:59.999999-03", b"2024-03-05 00:00:00-03"),
        (PG, "hour", b"1850-01-01 12:34:56+00:53:28", b"1850-01-01 12:00:00+00:53:28"),
        (PG, "month", b"2024-03-05 10:11:12+99", b"1970-01-01 00:00:00+00"),  # offset out of range
        (PG, "month", b"2024-03-05 10:11:12", b"1970-01-01 00:00:00+00"),  # PostgreSQL prints one
        (PG, "month", b"infinity", b"1970-01-01 00:00:00+00"),
        (PG, "month", b"2024-03-05 10:11:12 BC+01", b"1970-01-01 00:00:00+00"),
        # MySQL has no zoned type: a timestamptz column is a timestamp column
        (MY, "month", b"2024-03-05 10:11:12.25", b"2024-03-01 00:00:00"),
        (MY, "hour", b"2024-03-05 10:11:12", b"2024-03-05 10:00:00"),
        (MY, "month", b"2024-03-05 10:11:12+01", b"1970-01-01 00:00:00"),
        (MY, "month", b"0000-00-00 00:00:00", b"1970-01-01 00:00:00"),
    ],
)
def test_truncate_timestamptz(dialect: str, part: str, value: bytes, expected: bytes) -> None:
    out = masker("truncate_date", "timestamptz", dialect, truncate=part)(value)
    assert out == expected
    assert_valid_for_kind(out, "timestamptz", dialect)


# --- construction ---------------------------------------------------------------------------


def test_make_masker_and_masker_agree() -> None:
    for function in FUNCTIONS:
        for kind in KINDS:
            for dialect in DIALECTS:
                spec = MaskSpec(function=function)  # type: ignore[arg-type]
                fn = make_masker(spec, kind, KEY, dialect)  # type: ignore[arg-type]
                obj = Masker(spec, kind, KEY, dialect=dialect)  # type: ignore[arg-type]
                for value in SAMPLES[kind]:
                    assert fn(value) == obj(value), (function, kind, dialect, value)


@pytest.mark.parametrize(
    ("spec", "kind", "dialect"),
    [
        (MaskSpec(function="scramble"), "text", PG),  # type: ignore[arg-type]
        (MaskSpec(), "varchar", PG),
        (MaskSpec(), "text", "oracle"),
        (MaskSpec(function="truncate_date", truncate="week"), "date", PG),  # type: ignore[arg-type]
    ],
)
def test_unknown_function_kind_dialect_or_part_is_refused(spec: MaskSpec, kind: str, dialect: str) -> None:
    with pytest.raises(ValueError):
        Masker(spec, kind, KEY, dialect=dialect)  # type: ignore[arg-type]


def test_int_max_out_of_range_is_refused() -> None:
    for bad in (0, -1, 2**63):
        with pytest.raises(ValueError, match="int_max"):
            Masker(MaskSpec(function="hash"), "integer", KEY, dialect=PG, int_max=bad)


def test_redaction_helper_refuses_unknown_names() -> None:
    with pytest.raises(ValueError):
        redaction("text", "sqlite")
    with pytest.raises(ValueError):
        redaction("varchar", PG)  # type: ignore[arg-type]
