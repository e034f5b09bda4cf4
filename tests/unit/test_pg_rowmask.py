"""Byte-exact tests of PostgreSQL row masking (adapters/postgres/rowmask.py).

Expected bytes are written by hand from the protocol documentation (DataRow: Int16 column
count, then per column Int32 length, -1 for NULL, and the value) and the server's binary send
functions. The binary/text pairs of the conversion tables were cross-checked against
PostgreSQL 15 (`SELECT <literal>` in text and binary result format); they are literals here,
never produced by the code under test.
"""

from __future__ import annotations

import pytest

from sqlward.adapters.postgres import codec
from sqlward.adapters.postgres.rowmask import (
    CopyCsvMasker,
    CopyTextMasker,
    RowMasker,
    binary_to_text,
    kind_for_oid,
    text_to_binary,
)

H = bytes.fromhex
NULL = b"\xff\xff\xff\xff"

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, BPCHAR, VARCHAR = 114, 700, 701, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, TIMETZ, NUMERIC, UUID, JSONB = (
    1082, 1083, 1114, 1184, 1266, 1700, 2950, 3802,
)
INTERVAL, INET, INT4_ARRAY = 1186, 869, 1007


def redact(value: bytes | None) -> bytes | None:
    return b"***"


def identity(value: bytes | None) -> bytes | None:
    return value


class Recorder:
    """A masker that records what it is called with and answers a fixed value."""

    def __init__(self, answer: bytes | None = b"***") -> None:
        self.calls: list[bytes | None] = []
        self.answer = answer

    def __call__(self, value: bytes | None) -> bytes | None:
        self.calls.append(value)
        return self.answer


# --------------------------------------------------------------------------------------------
# Kinds


@pytest.mark.parametrize(
    "oid, kind",
    [
        (TEXT, "text"), (VARCHAR, "text"), (BPCHAR, "text"), (NAME, "text"), (CHAR, "text"),
        (INT2, "integer"), (INT4, "integer"), (INT8, "integer"), (OID, "integer"),
        (NUMERIC, "numeric"), (FLOAT4, "float"), (FLOAT8, "float"), (BOOL, "boolean"),
        (DATE, "date"), (TIMESTAMP, "timestamp"), (TIMESTAMPTZ, "timestamptz"),
        (TIME, "time"), (TIMETZ, "time"), (UUID, "uuid"), (JSON, "json"), (JSONB, "json"),
        (BYTEA, "bytes"), (INTERVAL, "other"), (INET, "other"), (INT4_ARRAY, "other"),
        (16384, "other"),  # citext and other types created at run time
    ],
)
def test_kind_for_oid(oid: int, kind: str) -> None:
    assert kind_for_oid(oid) == kind


# --------------------------------------------------------------------------------------------
# Binary <-> text, both ways (canonical pairs)

CANONICAL = [
    (TEXT, b"h\xc3\xa9llo", b"h\xc3\xa9llo"),
    (VARCHAR, b"", b""),
    (BPCHAR, b"ab  ", b"ab  "),
    (NAME, b"n", b"n"),
    (CHAR, b"x", b"x"),
    (CHAR, b"\xe9", b"\\351"),
    (INT2, H("7fff"), b"32767"),
    (INT2, H("8000"), b"-32768"),
    (INT4, H("0000002a"), b"42"),
    (INT4, H("ffffffd6"), b"-42"),
    (INT8, H("7fffffffffffffff"), b"9223372036854775807"),
    (INT8, H("8000000000000000"), b"-9223372036854775808"),
    (OID, H("ffffffff"), b"4294967295"),
    (FLOAT4, H("4048f5c3"), b"3.14"),
    (FLOAT4, H("49742400"), b"1e+06"),
    (FLOAT4, H("47f12000"), b"123456"),
    (FLOAT4, H("ccad6bb2"), b"-9.0922384e+07"),  # not the tie 9.092238e7
    (FLOAT4, H("7f7fffff"), b"3.4028235e+38"),
    (FLOAT8, H("4415af1d78b58c40"), b"1e+20"),
    (FLOAT8, H("42d6bcc41e900000"), b"100000000000000"),
    (FLOAT8, H("3fb999999999999a"), b"0.1"),
    (FLOAT8, H("3ee4f8b588e368f1"), b"1e-05"),
    (FLOAT8, H("8000000000000000"), b"-0"),
    (FLOAT8, H("fff0000000000000"), b"-Infinity"),
    (FLOAT8, H("7ff8000000000000"), b"NaN"),
    (BOOL, b"\x01", b"t"),
    (BOOL, b"\x00", b"f"),
    (NUMERIC, H("0000000000000000"), b"0"),
    (NUMERIC, H("0000000000000003"), b"0.000"),
    (NUMERIC, H("00000000c0000000"), b"NaN"),
    (NUMERIC, H("00000000d0000000"), b"Infinity"),
    (NUMERIC, H("00000000f0000000"), b"-Infinity"),
    (NUMERIC, H("0001ffff000000040001"), b"0.0001"),
    (NUMERIC, H("000300010000000104d2162e2328"), b"12345678.9"),
    (NUMERIC, H("000300014000000204d2162e2328"), b"-12345678.90"),
    (NUMERIC, H("0001fffb000000140001"), b"0.00000000000000000001"),
    (NUMERIC, H("000100000000000005dc"), b"1500"),
    (NUMERIC, H("00010002000000000001"), b"100000000"),
    (DATE, H("00000000"), b"2000-01-01"),
    (DATE, H("ffffffff"), b"1999-12-31"),
    (DATE, H("0000227a"), b"2024-03-01"),
    (DATE, H("7fffffff"), b"infinity"),
    (DATE, H("80000000"), b"-infinity"),
    (DATE, H("ffda97cd"), b"4713-01-01 BC"),
    (TIMESTAMP, H("000000000016e360"), b"2000-01-01 00:00:01.5"),
    (TIMESTAMP, H("0002b6d75bee7780"), b"2024-03-17 10:20:30"),
    (TIMESTAMP, H("7fffffffffffffff"), b"infinity"),
    (TIMESTAMPTZ, H("fffca2fec4c82000"), b"1970-01-01 00:00:00+00"),
    (TIMESTAMPTZ, H("8000000000000000"), b"-infinity"),
    (TIME, H("000000141dd76000"), b"24:00:00"),
    (TIME, H("0000000000000001"), b"00:00:00.000001"),
    (TIMETZ, H("0000000861cc092000002328"), b"10:00:00.5-02:30"),
    (TIMETZ, H("000000087acd190000000000"), b"10:07:00+00"),
    (UUID, H("a0eebc999c0b4ef8bb6d6bb9bd380a11"), b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (JSON, b'{"b": 1}', b'{"b": 1}'),
    (JSONB, b'\x01{"a": [1, 2]}', b'{"a": [1, 2]}'),
    (BYTEA, H("00ff10"), b"\\x00ff10"),
    (BYTEA, b"", b"\\x"),
]


@pytest.mark.parametrize("oid, binary, text", CANONICAL)
def test_binary_to_text(oid: int, binary: bytes, text: bytes) -> None:
    assert binary_to_text(oid, binary) == text


@pytest.mark.parametrize("oid, binary, text", CANONICAL)
def test_text_to_binary(oid: int, binary: bytes, text: bytes) -> None:
    assert text_to_binary(oid, text) == binary


@pytest.mark.parametrize(
    "oid, text, binary",
    [
        # Input variants the server's input functions accept.
        (INT4, b" +42 ", H("0000002a")),
        (BOOL, b"yes", b"\x01"),
        (BOOL, b" OFF ", b"\x00"),
        (NUMERIC, b"1.5e3", H("000100000000000005dc")),
        (NUMERIC, b"-0.000", H("0000000000000003")),  # negative zero is zero
        (NUMERIC, b"nan", H("00000000c0000000")),
        (FLOAT8, b"1E20", H("4415af1d78b58c40")),
        (FLOAT8, b"-inf", H("fff0000000000000")),
        (DATE, b"2024-03-01 23:59:59", H("0000227a")),  # date_in drops the time
        (DATE, b"2024-3-1", H("0000227a")),
        (TIMESTAMP, b"2024-03-17T10:20:30", H("0002b6d75bee7780")),
        (TIMESTAMP, b"2024-03-17 10:20:30+05", H("0002b6d75bee7780")),  # offset ignored
        (TIMESTAMPTZ, b"1970-01-01 02:00:00+02", H("fffca2fec4c82000")),
        (TIMESTAMPTZ, b"1970-01-01 00:00:00", H("fffca2fec4c82000")),  # no offset: UTC
        (TIMESTAMPTZ, b"1970-01-01T00:00:00Z", H("fffca2fec4c82000")),
        (TIMESTAMP, b"2000-01-01 00:00:01.4999999", H("000000000016e360")),  # rounded to us
        (TIMETZ, b"10:00:00.5-0230", H("0000000861cc092000002328")),
        (TIMETZ, b"10:07", H("000000087acd190000000000")),
        (UUID, b"{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}", H("a0eebc999c0b4ef8bb6d6bb9bd380a11")),
        (UUID, b"a0eebc999c0b4ef8bb6d6bb9bd380a11", H("a0eebc999c0b4ef8bb6d6bb9bd380a11")),
        (BYTEA, b"\\x00 FF", H("00ff")),
        (BYTEA, b"a\\\\b\\001", b"a\\b\x01"),  # escape format
        (CHAR, b"", b"\x00"),
        (CHAR, b"xyz", b"x"),
        (JSONB, b"[1]", b"\x01[1]"),
    ],
)
def test_text_to_binary_variants(oid: int, text: bytes, binary: bytes) -> None:
    assert text_to_binary(oid, text) == binary


@pytest.mark.parametrize(
    "oid, text",
    [
        (INT2, b"32768"), (INT4, b"4.5"), (INT8, b"x"), (OID, b"4294967296"),
        (FLOAT4, b"1e39"), (FLOAT8, b"1_0"), (BOOL, b"maybe"), (NUMERIC, b"1e-20000"),
        (NUMERIC, b"12a"), (DATE, b"2024-02-30"), (DATE, b"0000-01-01"), (DATE, b"03/01/2024"),
        (DATE, b"5874898-01-01"), (TIMESTAMP, b"2024-03-17 25:00:00"),
        (TIMESTAMP, b"294277-01-01 00:00:00"), (TIMESTAMPTZ, b"2024-03-17 10:00+16"),
        (TIME, b"24:00:01"), (UUID, b"nope"), (BYTEA, b"\\xabc"), (BYTEA, b"a\\b"),
        (INTERVAL, b"1 day"), (16384, b"x"),
    ],
)
def test_text_to_binary_rejects(oid: int, text: bytes) -> None:
    assert text_to_binary(oid, text) is None


@pytest.mark.parametrize(
    "oid, binary",
    [
        (INT4, H("000001")), (INT8, H("00")), (FLOAT4, H("0000")), (BOOL, b""),
        (DATE, H("7ffffffe")),  # past the end of the date range
        (TIMESTAMP, H("7ffffffffffffffe")), (TIME, H("000000141dd76001")),
        (TIMETZ, H("0000000000000000")), (UUID, H("00" * 15)), (JSONB, b"\x02{}"),
        (NUMERIC, H("0001000000000000")),  # one digit announced, none sent
        (NUMERIC, H("00010000000000002710")),  # digit 10000
        (NUMERIC, H("0000000012340000")),  # unknown sign
        (INTERVAL, H("00" * 16)),
    ],
)
def test_binary_to_text_rejects(oid: int, binary: bytes) -> None:
    assert binary_to_text(oid, binary) is None


def test_numeric_text_of_non_canonical_binary() -> None:
    # Unstripped digits and a scale shorter than the digits: printed as get_str_from_var does.
    assert binary_to_text(NUMERIC, H("0003000000000002" "0000" "0001" "0002")) == b"0.00"
    assert binary_to_text(NUMERIC, H("00020000000000040007" "1388")) == b"7.5000"
    assert binary_to_text(NUMERIC, H("0000000040000000")) == b"-0"


@pytest.mark.parametrize(
    "text",
    [b"0", b"-1", b"-0.5", b"NaN", b"0.0001", b"12345678.9", b"-99999999999999999999.0001",
     b"1e-100", b"10000", b"0.10000", b"-12345678901234567890123456789"],
)
def test_numeric_round_trip(text: bytes) -> None:
    binary = text_to_binary(NUMERIC, text)
    assert binary is not None
    back = binary_to_text(NUMERIC, binary)
    assert back is not None
    if text == b"NaN":
        assert back == b"NaN"
    else:
        from decimal import Decimal

        assert Decimal(back.decode()) == Decimal(text.decode())
        assert text_to_binary(NUMERIC, back) == binary


@pytest.mark.parametrize(
    "oid, text",
    [
        (DATE, b"0001-01-01"), (DATE, b"0001-12-31 BC"), (DATE, b"1600-02-29"),
        (DATE, b"5874897-12-31"), (DATE, b"4713-01-01 BC"),
        (TIMESTAMP, b"0044-03-15 10:11:12.5 BC"), (TIMESTAMP, b"294276-12-31 23:59:59.999999"),
        (TIMESTAMP, b"4714-11-24 00:00:00 BC"), (TIMESTAMP, b"1969-12-31 23:59:59.999999"),
        (TIMESTAMPTZ, b"0001-01-01 00:00:00+00 BC"), (TIMESTAMPTZ, b"2024-02-29 12:00:00.25+00"),
        (TIME, b"00:00:00"), (TIME, b"23:59:59.999999"), (TIMETZ, b"23:59:59.999999+15:59"),
        (TIMETZ, b"10:00:00+05:30:15"),
    ],
)
def test_datetime_round_trip(oid: int, text: bytes) -> None:
    binary = text_to_binary(oid, text)
    assert binary is not None
    assert binary_to_text(oid, binary) == text


# --------------------------------------------------------------------------------------------
# DataRow


def test_datarow_text_format() -> None:
    body = (
        b"\x00\x03"
        b"\x00\x00\x00\x02" b"42"
        b"\x00\x00\x00\x11" b"alice@example.com"
        b"\x00\x00\x00\x05" b"Alice"
    )
    m = RowMasker([INT4, TEXT, TEXT], [0, 0, 0], [None, redact, None])
    assert m.mask_datarow(body) == (
        b"\x00\x03"
        b"\x00\x00\x00\x02" b"42"
        b"\x00\x00\x00\x03" b"***"
        b"\x00\x00\x00\x05" b"Alice"
    )


def test_datarow_last_and_first_columns() -> None:
    body = b"\x00\x02" b"\x00\x00\x00\x01" b"a" b"\x00\x00\x00\x02" b"bc"
    m = RowMasker([TEXT, TEXT], [0, 0], [lambda v: b"XYZ", lambda v: b""])
    assert m.mask_datarow(body) == b"\x00\x02" b"\x00\x00\x00\x03" b"XYZ" b"\x00\x00\x00\x00"


def test_datarow_null_is_not_masked() -> None:
    rec = Recorder()
    body = b"\x00\x02" b"\xff\xff\xff\xff" b"\x00\x00\x00\x01" b"7"
    m = RowMasker([TEXT, INT4], [0, 0], [rec, None])
    assert m.mask_datarow(body) is None
    assert rec.calls == []


def test_datarow_masker_gives_null() -> None:
    rec = Recorder(answer=None)
    body = b"\x00\x02" b"\x00\x00\x00\x03" b"abc" b"\x00\x00\x00\x01" b"7"
    m = RowMasker([TEXT, INT4], [0, 0], [rec, None])
    assert m.mask_datarow(body) == b"\x00\x02" + NULL + b"\x00\x00\x00\x01" b"7"
    assert rec.calls == [b"abc"]


def test_datarow_unchanged_returns_none() -> None:
    body = b"\x00\x02" b"\x00\x00\x00\x03" b"abc" b"\x00\x00\x00\x01" b"7"
    copy_masker = lambda v: bytes(bytearray(v))  # equal bytes, another object  # noqa: E731
    for masker in (identity, copy_masker):
        m = RowMasker([TEXT, INT4], [0, 0], [masker, masker])
        assert m.mask_datarow(body) is None
        assert m.mask_datarow(memoryview(body)) is None


def test_datarow_binary_equivalent_text_is_unchanged() -> None:
    # A different text that converts to the same binary value is no change.
    body = b"\x00\x02" b"\x00\x00\x00\x04" b"\x00\x00\x30\x39" b"\x00\x00\x00\x01" b"\x01"
    m = RowMasker([INT4, BOOL], [1, 1], [lambda v: b" +12345", lambda v: b"yes"])
    assert m.mask_datarow(body) is None


def test_datarow_zero_columns_and_empty_values() -> None:
    assert RowMasker([], [], []).mask_datarow(b"\x00\x00") is None
    m = RowMasker([TEXT], [0], [redact])
    assert m.mask_datarow(b"\x00\x01\x00\x00\x00\x00") == b"\x00\x01\x00\x00\x00\x03***"


def test_datarow_binary_format_int_and_numeric() -> None:
    body = (
        b"\x00\x03"
        b"\x00\x00\x00\x04" b"\x00\x00\x30\x39"  # int4 12345
        b"\x00\x00\x00\x0e" + H("000300010000000104d2162e2328")  # numeric 12345678.9
        + b"\x00\x00\x00\x02" b"hi"
    )
    seen: list[bytes | None] = []

    def zero(value: bytes | None) -> bytes | None:
        seen.append(value)
        return b"0"

    m = RowMasker([INT4, NUMERIC, TEXT], [1, 1, 1], [zero, zero, None])
    assert m.mask_datarow(body) == (
        b"\x00\x03"
        b"\x00\x00\x00\x04" b"\x00\x00\x00\x00"
        b"\x00\x00\x00\x08" b"\x00\x00\x00\x00\x00\x00\x00\x00"
        b"\x00\x00\x00\x02" b"hi"
    )
    assert seen == [b"12345", b"12345678.9"]  # maskers see the text form


def test_datarow_binary_format_dates() -> None:
    body = (
        b"\x00\x02"
        b"\x00\x00\x00\x04" + H("0000228a")  # date 2024-03-17
        + b"\x00\x00\x00\x08" + H("0002b6d75bee7780")  # timestamp 2024-03-17 10:20:30
    )

    def month(value: bytes | None) -> bytes | None:
        assert value is not None
        return value[:8] + b"01" + (b" 00:00:00" if len(value) > 10 else b"")

    m = RowMasker([DATE, TIMESTAMP], [1, 1], [month, month])
    assert m.mask_datarow(body) == (
        b"\x00\x02"
        b"\x00\x00\x00\x04" + H("0000227a")
        + b"\x00\x00\x00\x08" + H("0002b58cd363c000")
    )


def test_datarow_binary_identity_keeps_bytes() -> None:
    # A non-canonical numeric (unstripped zero digit) stays as it is when the text is unchanged.
    raw = H("00020000000000040007" "1388")
    body = b"\x00\x01" b"\x00\x00\x00\x0c" + raw
    assert RowMasker([NUMERIC], [1], [identity]).mask_datarow(body) is None
    # ... and is re-encoded canonically when it changes.
    m = RowMasker([NUMERIC], [1], [lambda v: b"7.5000" if v == b"7.5000" else b"8"])
    assert m.mask_datarow(body) is None
    m = RowMasker([NUMERIC], [1], [lambda v: b"8.0"])
    assert m.mask_datarow(body) == b"\x00\x01" b"\x00\x00\x00\x0a" + H("00010000000000010008")


def test_datarow_binary_unconvertible_becomes_null() -> None:
    body = (
        b"\x00\x03"
        b"\x00\x00\x00\x04" b"\x00\x00\x00\x07"  # int4 7
        b"\x00\x00\x00\x10" + b"\x01" * 16  # interval: no text form here
        + b"\x00\x00\x00\x03" b"abc"  # text in binary format: its bytes are its text
    )
    m = RowMasker([INT4, INTERVAL, TEXT], [1, 1, 1], [lambda v: b"not a number", identity, redact])
    assert m.mask_datarow(body) == b"\x00\x03" + NULL + NULL + b"\x00\x00\x00\x03***"


def test_datarow_binary_malformed_value_becomes_null() -> None:
    body = b"\x00\x01" b"\x00\x00\x00\x03" b"\x00\x00\x07"  # int4 of 3 bytes
    rec = Recorder()
    assert RowMasker([INT4], [1], [rec]).mask_datarow(body) == b"\x00\x01" + NULL
    assert rec.calls == []


def test_datarow_binary_types_table() -> None:
    # One row with every supported binary type masked to a fixed text of its type.
    cols = [
        (BOOL, b"\x01", b"f", b"\x00"),
        (FLOAT8, H("3fb999999999999a"), b"0", H("0000000000000000")),
        (UUID, H("a0eebc999c0b4ef8bb6d6bb9bd380a11"), b"00000000-0000-0000-0000-000000000000",
         bytes(16)),
        (JSONB, b'\x01{"a": 1}', b"{}", b"\x01{}"),
        (BYTEA, b"secret", b"\\x", b""),
        (TIMESTAMPTZ, H("0002b6d75bee7780"), b"2000-01-01 00:00:00+00", bytes(8)),
        (TIME, H("000000087acd1900"), b"00:00:00", bytes(8)),
    ]
    body = b"\x00\x07" + b"".join(len(b).to_bytes(4, "big") + b for _, b, _, _ in cols)
    expected = b"\x00\x07" + b"".join(len(b).to_bytes(4, "big") + b for _, _, _, b in cols)
    maskers = [(lambda t: (lambda v: t))(text) for _, _, text, _ in cols]
    m = RowMasker([c[0] for c in cols], [1] * 7, maskers)
    assert m.mask_datarow(body) == expected


def test_datarow_message_reframed() -> None:
    body = b"\x00\x01" b"\x00\x00\x00\x05" b"alice"
    msg = b"D" + b"\x00\x00\x00\x0f" + body
    m = RowMasker([TEXT], [0], [redact])
    assert m.mask_datarow_message(msg) == b"D" b"\x00\x00\x00\x0d" b"\x00\x01" b"\x00\x00\x00\x03***"
    m = RowMasker([TEXT], [0], [lambda v: b"a much longer value"])
    out = m.mask_datarow_message(msg)
    assert out == b"D" b"\x00\x00\x00\x1d" b"\x00\x01" b"\x00\x00\x00\x13a much longer value"
    # The result decodes with the codec.
    assert codec.decode_backend(out[0], out[5:]) == codec.DataRow((b"a much longer value",))


def test_datarow_message_unchanged_is_same_object() -> None:
    msg = b"D" b"\x00\x00\x00\x0a" b"\x00\x01" b"\xff\xff\xff\xff"
    assert RowMasker([TEXT], [0], [redact]).mask_datarow_message(msg) is msg


def test_from_fields() -> None:
    desc = codec.RowDescription(
        (codec.FieldDescription("id", type_oid=INT4, format=1),
         codec.FieldDescription("email", type_oid=TEXT, format=0))
    )
    wire = codec.encode_backend(desc)
    fields = codec.decode_backend(wire[0], wire[5:]).fields  # type: ignore[union-attr]
    m = RowMasker.from_fields(fields, [None, redact])
    assert m.type_oids == (INT4, TEXT) and m.formats == (1, 0)
    body = b"\x00\x02" b"\x00\x00\x00\x04" b"\x00\x00\x00\x01" b"\x00\x00\x00\x01" b"e"
    assert m.mask_datarow(body) == b"\x00\x02" b"\x00\x00\x00\x04" b"\x00\x00\x00\x01" b"\x00\x00\x00\x03***"


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no column count
        b"\x00",  # half a column count
        b"\x00\x02" b"\x00\x00\x00\x01" b"a",  # one column of two
        b"\x00\x01" b"\x00\x00\x00\x01" b"a" b"\x00\x00\x00\x01" b"b",  # two columns of one
        b"\x00\x01" b"\x00\x00\x00\x05" b"abc",  # value overruns the body
        b"\x00\x01" b"\x00\x00\x00\x01" b"a" b"!",  # trailing byte
        b"\x00\x01" b"\xff\xff\xff\xfe",  # length -2
        b"\x00\x01" b"\x00\x00",  # half a length
        b"\xff\xff",  # negative count
    ],
)
def test_datarow_malformed(body: bytes) -> None:
    m = RowMasker([TEXT], [0], [redact])
    with pytest.raises(ValueError):
        m.mask_datarow(body)


def test_datarow_malformed_unmasked_trailing_columns() -> None:
    # The walk checks the columns after the last masked one too.
    m = RowMasker([TEXT, TEXT], [0, 0], [redact, None])
    with pytest.raises(ValueError):
        m.mask_datarow(b"\x00\x02" b"\x00\x00\x00\x01" b"a" b"\x00\x00\x00\x09" b"b")


@pytest.mark.parametrize(
    "msg",
    [
        b"T\x00\x00\x00\x06\x00\x00",  # not a DataRow
        b"D\x00\x00\x00\x07\x00\x00",  # length says one byte more
        b"D\x00\x00",
    ],
)
def test_datarow_message_malformed(msg: bytes) -> None:
    with pytest.raises(ValueError):
        RowMasker([], [], []).mask_datarow_message(msg)


def test_rowmasker_construction_errors() -> None:
    with pytest.raises(ValueError):
        RowMasker([TEXT], [0, 0], [None])
    with pytest.raises(ValueError):
        RowMasker([TEXT], [2], [None])


# --------------------------------------------------------------------------------------------
# COPY text format


def test_copy_text_escapes_decoded_and_reencoded() -> None:
    rec = Recorder(answer=b"x\ty\\z\nw\rv")
    line = b"1\tab\\tc\\nd\\\\e\t\\N\n"
    m = CopyTextMasker([None, rec, rec])
    assert m.mask_line(line) == b"1\tx\\ty\\\\z\\nw\\rv\t\\N\n"
    assert rec.calls == [b"ab\tc\nd\\e"]  # the NULL (\N) is not masked


def test_copy_text_octal_hex_and_other_escapes() -> None:
    rec = Recorder(answer=b"\x08\x0c\x0b\x01")
    m = CopyTextMasker([rec])
    assert m.mask_line(b"\\101\\x42\\q\\N7\\x\\7\n") == b"\\b\\f\\v\x01\n"
    assert rec.calls == [b"ABqN7x\x07"]


def test_copy_text_unchanged_is_same_object() -> None:
    line = b"1\tabc\t\\N\n"
    assert CopyTextMasker([identity, identity, identity]).mask_line(line) is line
    assert CopyTextMasker([None, None, None]).mask_line(line) is line


def test_copy_text_mask_to_null_and_no_line_end() -> None:
    m = CopyTextMasker([None, lambda v: None])
    assert m.mask_line(b"1\tsecret") == b"1\t\\N"


def test_copy_text_custom_delimiter_and_null() -> None:
    rec = Recorder(answer=b"p,q")
    m = CopyTextMasker([None, rec, None], delimiter=b",", null=b"NULL")
    assert m.mask_line(b"a\\,b,c\\,d\\\\,NULL\n") == b"a\\,b,p\\,q,NULL\n"
    assert rec.calls == [b"c,d\\"]
    assert m.mask_line(b"a,NULL,b\n") == b"a,NULL,b\n"


@pytest.mark.parametrize(
    "line",
    [
        b"1\t2\n",  # two fields of three
        b"1\t2\t3\t4\n",
        b"1\ta\nb\t3\n",  # a raw line break inside
        b"1\tab\\\t3\n",  # escaped tab: two fields
    ],
)
def test_copy_text_malformed(line: bytes) -> None:
    with pytest.raises(ValueError):
        CopyTextMasker([None, redact, None]).mask_line(line)


def test_copy_text_lone_trailing_backslash() -> None:
    with pytest.raises(ValueError):
        CopyTextMasker([None, redact]).mask_line(b"1\tab\\\n")


# --------------------------------------------------------------------------------------------
# COPY CSV format


def test_csv_quoted_fields_decoded() -> None:
    rec = Recorder(answer=b"x")
    line = b'1,"a,b","he said ""hi""",,""\n'
    m = CopyCsvMasker([None, rec, rec, rec, rec])
    out = m.mask_line(line)
    # Quoted originals stay quoted (FORCE_QUOTE); the unquoted empty field is NULL.
    assert out == b'1,"x","x",,"x"\n'
    assert rec.calls == [b"a,b", b'he said "hi"', b""]


def test_csv_quoting_of_new_values() -> None:
    for new, encoded in [
        (b"plain", b"plain"),
        (b"a,b", b'"a,b"'),
        (b'say "x"', b'"say ""x"""'),
        (b"two\nlines", b'"two\nlines"'),
        (b"cr\r", b'"cr\r"'),
        (b"", b'""'),  # equal to the null string: quoted
    ]:
        m = CopyCsvMasker([None, lambda v, new=new: new])
        assert m.mask_line(b"1,secret\n") == b"1," + encoded + b"\n"
    assert CopyCsvMasker([None, lambda v: None]).mask_line(b"1,secret\n") == b"1,\n"


def test_csv_single_column_end_marker_is_quoted() -> None:
    assert CopyCsvMasker([lambda v: b"\\."]).mask_line(b"x\n") == b'"\\."\n'


def test_csv_embedded_newline_in_complete_row() -> None:
    rec = Recorder(answer=b"masked")
    line = b'7,"line one\nline two",z\n'
    assert CopyCsvMasker([None, rec, None]).mask_line(line) == b'7,"masked",z\n'
    assert rec.calls == [b"line one\nline two"]


def test_csv_partial_quoting_and_custom_options() -> None:
    rec = Recorder(answer=b"n;o")
    m = CopyCsvMasker([rec, None], delimiter=b";", quote=b"'", null=b"\\N", escape=b"\\")
    assert m.mask_line(b"ab'c;\\'d'e;\\N\n") == b"'n;o';\\N\n"
    assert rec.calls == [b"abc;'de"]
    # A value equal to the null string is quoted; the null string itself is NULL.
    m = CopyCsvMasker([lambda v: b"\\N", lambda v: None], null=b"\\N", escape=b"\\")
    assert m.mask_line(b"a,b\n") == b'"\\\\N",\\N\n'


def test_csv_unchanged_is_same_object() -> None:
    line = b'1,"a,b",\n'
    assert CopyCsvMasker([identity, identity, identity]).mask_line(line) is line


@pytest.mark.parametrize(
    "line",
    [
        b'1,"unterminated\n',  # a row cut at a line break inside quotes
        b"1,2\n",  # two fields of three
        b"1,a\nb,c\n",  # unquoted line break
        b'1,"a"x\n,3\n',
    ],
)
def test_csv_malformed(line: bytes) -> None:
    with pytest.raises(ValueError):
        CopyCsvMasker([None, redact, None]).mask_line(line)


def test_csv_no_catastrophic_backtracking() -> None:
    line = b'1,"' + b'""' * 5000 + b"\n"  # never closed
    with pytest.raises(ValueError):
        CopyCsvMasker([None, redact]).mask_line(line)
