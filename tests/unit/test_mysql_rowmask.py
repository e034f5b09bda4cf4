"""Byte-exact tests of MySQL / MariaDB row masking (adapters/mysql/rowmask.py).

Expected bytes are written by hand from the protocol documentation: text rows are one
length-encoded string per column (0xFB = NULL; < 0xFB one byte, 0xFC + int<2>, 0xFD + int<3>,
0xFE + int<8>); binary rows are 0x00, a NULL bitmap of (n + 9) // 8 bytes with bit offset 2, then
the non-NULL values (little-endian integers, IEEE floats, temporal values with a length byte,
length-encoded strings). The text forms of floats and temporal values were cross-checked
against MariaDB 10.11 (the same SELECT in the text protocol and as a prepared statement); they
are literals here, never produced by the code under test.
"""

from __future__ import annotations

import pytest

from sqlward.adapters.mysql.constants import FieldType as T
from sqlward.adapters.mysql.rowmask import (
    BinaryRowMasker,
    TextRowMasker,
    binary_value_to_text,
    kind_for_column,
    text_to_binary_value,
)

H = bytes.fromhex
UNSIGNED = 0x20
BINARY_FLAG, BLOB_FLAG, ENUM_FLAG = 0x80, 0x10, 0x100


def redact(value: bytes | None) -> bytes | None:
    return b"***"


def identity(value: bytes | None) -> bytes | None:
    return value


class Recorder:
    def __init__(self, answer: bytes | None = b"***") -> None:
        self.calls: list[bytes | None] = []
        self.answer = answer

    def __call__(self, value: bytes | None) -> bytes | None:
        self.calls.append(value)
        return self.answer


# --------------------------------------------------------------------------------------------
# Kinds


@pytest.mark.parametrize(
    "ctype, flags, charset, kind",
    [
        (T.VARCHAR, 0, 45, "text"), (T.VAR_STRING, 0, 255, "text"),
        (T.VAR_STRING, BINARY_FLAG, 63, "bytes"), (T.STRING, 0, 33, "text"),
        (T.STRING, ENUM_FLAG, 45, "text"), (T.ENUM, 0, 45, "text"), (T.SET, 0, 45, "text"),
        (T.STRING, BINARY_FLAG, 63, "bytes"),
        (T.BLOB, BLOB_FLAG | BINARY_FLAG, 63, "bytes"), (T.BLOB, BLOB_FLAG, 45, "text"),
        (T.TINY_BLOB, BLOB_FLAG, 45, "text"), (T.MEDIUM_BLOB, BLOB_FLAG, 63, "bytes"),
        (T.LONG_BLOB, BLOB_FLAG, 224, "text"),
        (T.TINY, 0, 63, "integer"), (T.SHORT, UNSIGNED, 63, "integer"), (T.INT24, 0, 63, "integer"),
        (T.LONG, 0, 63, "integer"), (T.LONGLONG, 0, 63, "integer"), (T.YEAR, UNSIGNED, 63, "integer"),
        (T.DECIMAL, 0, 63, "numeric"), (T.NEWDECIMAL, 0, 63, "numeric"),
        (T.FLOAT, 0, 63, "float"), (T.DOUBLE, 0, 63, "float"),
        (T.DATE, BINARY_FLAG, 63, "date"), (T.DATETIME, 0, 63, "timestamp"),
        (T.TIMESTAMP, 0, 63, "timestamp"), (T.TIME, 0, 63, "time"),
        (T.JSON, BLOB_FLAG | BINARY_FLAG, 63, "json"),
        (T.BIT, UNSIGNED, 63, "other"), (T.GEOMETRY, BLOB_FLAG, 63, "other"),
        (T.NULL, 0, 63, "other"), (T.VECTOR, 0, 63, "other"), (200, 0, 63, "other"),
    ],
)
def test_kind_for_column(ctype: int, flags: int, charset: int, kind: str) -> None:
    assert kind_for_column(ctype, flags, charset) == kind


def test_kind_for_column_mariadb_extended_names() -> None:
    assert kind_for_column(T.BLOB, BLOB_FLAG, 45, data_type_name="json") == "json"
    assert kind_for_column(T.STRING, 0, 45, data_type_name="uuid") == "uuid"
    assert kind_for_column(T.STRING, 0, 45, data_type_name="inet6") == "text"


# --------------------------------------------------------------------------------------------
# Text rows


def test_text_row_masks_and_keeps_nulls() -> None:
    rec = Recorder()
    payload = b"\x02" b"42" b"\xfb" b"\x11" b"alice@example.com" b"\x05" b"Alice"
    m = TextRowMasker([None, rec, redact, None])
    assert m.mask_row(payload) == b"\x02" b"42" b"\xfb" b"\x03***" b"\x05" b"Alice"
    assert rec.calls == []  # NULL is not masked


def test_text_row_mask_to_null() -> None:
    m = TextRowMasker([lambda v: None, None])
    assert m.mask_row(b"\x03abc" b"\x01x") == b"\xfb" b"\x01x"


def test_text_row_unchanged_is_none() -> None:
    payload = b"\x03abc" b"\xfb" b"\x00"
    assert TextRowMasker([identity, identity, identity]).mask_row(payload) is None
    assert TextRowMasker([lambda v: bytes(bytearray(v))] * 3).mask_row(payload) is None
    assert TextRowMasker([identity] * 3).mask_row(bytearray(payload)) is None


def test_text_row_long_values() -> None:
    v300 = b"a" * 300  # 0xFC 0x2C 0x01
    v70k = b"b" * 70000  # 0xFD 0x70 0x11 0x01
    payload = b"\xfc\x2c\x01" + v300 + b"\xfd\x70\x11\x01" + v70k + b"\x01z"
    rec = Recorder()
    m = TextRowMasker([rec, None, rec])
    assert m.mask_row(payload) == b"\x03***" + b"\xfd\x70\x11\x01" + v70k + b"\x03***"
    assert rec.calls == [v300, b"z"]
    # Growing a short value past the one-byte and two-byte lengths.
    m = TextRowMasker([None, None, lambda v: v70k])
    assert m.mask_row(payload) == payload[:-2] + b"\xfd\x70\x11\x01" + v70k
    m = TextRowMasker([lambda v: b"c" * 251, None, None])
    assert m.mask_row(payload) == b"\xfc\xfb\x00" + b"c" * 251 + payload[303:]
    m = TextRowMasker([None, lambda v: b"d" * 250, None])
    assert m.mask_row(payload) == payload[:303] + b"\xfa" + b"d" * 250 + b"\x01z"


def test_text_row_eight_byte_length() -> None:
    # 0xFE + int<8> (normally for values of 16 MiB and more; any length is valid on the wire).
    payload = b"\xfe" + (5).to_bytes(8, "little") + b"hello" + b"\x01x"
    assert TextRowMasker([redact, None]).mask_row(payload) == b"\x03***\x01x"
    assert TextRowMasker([None, redact]).mask_row(payload) == payload[:-2] + b"\x03***"


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no values at all
        b"\x01a",  # one value of two
        b"\x01a\x01b\x01c",  # three values of two
        b"\x01a\x05abc",  # value overruns the payload
        b"\x01a\xff",  # 0xFF is not a length
        b"\x01a\xfc\x01",  # truncated 0xFC length
        b"\x01a\xfd\x01\x00",  # truncated 0xFD length
        b"\xfe\x00\x00",  # truncated 0xFE length
    ],
)
def test_text_row_malformed(payload: bytes) -> None:
    with pytest.raises(ValueError):
        TextRowMasker([redact, None]).mask_row(payload)


# --------------------------------------------------------------------------------------------
# Binary values <-> text

CANONICAL = [
    # (type, flags, binary value as in the row, text)
    (T.TINY, 0, b"\xff", b"-1"),
    (T.TINY, UNSIGNED, b"\xc8", b"200"),
    (T.SHORT, 0, b"\x00\x80", b"-32768"),
    (T.YEAR, UNSIGNED, b"\xe8\x07", b"2024"),
    (T.YEAR, UNSIGNED, b"\x00\x00", b"0000"),
    (T.INT24, 0, b"\xff\xff\x7f\x00", b"8388607"),
    (T.LONG, UNSIGNED, b"\xff\xff\xff\xff", b"4294967295"),
    (T.LONGLONG, 0, b"\x39\x30\x00\x00\x00\x00\x00\x00", b"12345"),
    (T.LONGLONG, 0, b"\xff" * 8, b"-1"),
    (T.LONGLONG, UNSIGNED, b"\xff" * 8, b"18446744073709551615"),
    (T.DOUBLE, 0, H("408cb5781daf1544"), b"1e20"),
    (T.DOUBLE, 0, H("0000901ec4bcd642"), b"100000000000000"),
    (T.DOUBLE, 0, H("00003426f56b0c43"), b"1e15"),  # whole, more than 15 digits: exponent
    (T.DOUBLE, 0, H("03eb2af2548b1143"), b"1234567890123456.8"),  # not whole: fixed
    (T.DOUBLE, 0, H("1656e79eaf03d23c"), b"0.000000000000001"),
    (T.DOUBLE, 0, H("bc89d897b2d29c3c"), b"1e-16"),
    (T.DOUBLE, 0, H("f168e388b5f8e43e"), b"0.00001"),
    (T.DOUBLE, 0, H("76830df4f521843e"), b"0.00000015"),
    (T.DOUBLE, 0, H("9a9999999999b9bf"), b"-0.1"),
    (T.DOUBLE, 0, H("0000000000000000"), b"0"),
    (T.FLOAT, 0, H("c3f54840"), b"3.14"),
    (T.FLOAT, 0, H("00247449"), b"1000000"),
    (T.NEWDECIMAL, 0, b"\x06" b"12.500", b"12.500"),
    (T.VAR_STRING, 0, b"\x05" b"alice", b"alice"),
    (T.BLOB, BINARY_FLAG, b"\x00", b""),
    (T.JSON, 0, b'\x08{"a": 1}', b'{"a": 1}'),
    (T.DATE, BINARY_FLAG, b"\x04\xe8\x07\x03\x11", b"2024-03-17"),
    (T.DATE, BINARY_FLAG, b"\x00", b"0000-00-00"),
    (T.DATETIME, 0, b"\x07\xe8\x07\x03\x11\x0a\x14\x1e", b"2024-03-17 10:20:30"),
    (T.DATETIME, 0, b"\x04\xe8\x07\x03\x11", b"2024-03-17 00:00:00"),
    (T.DATETIME, 0, b"\x0b\xe8\x07\x03\x11\x0a\x14\x1e\x20\xa1\x07\x00", b"2024-03-17 10:20:30.500000"),
    (T.TIMESTAMP, 0, b"\x00", b"0000-00-00 00:00:00"),
    (T.TIME, 0, b"\x08\x01\x00\x00\x00\x00\x01\x02\x03", b"-01:02:03"),
    (T.TIME, 0, b"\x0c\x00\x01\x00\x00\x00\x02\x03\x04\x40\xe2\x01\x00", b"26:03:04.123456"),
    (T.TIME, 0, b"\x08\x00\x22\x00\x00\x00\x16\x3b\x3b", b"838:59:59"),
    (T.TIME, 0, b"\x00", b"00:00:00"),
]


@pytest.mark.parametrize("ctype, flags, binary, text", CANONICAL)
def test_binary_value_to_text(ctype: int, flags: int, binary: bytes, text: bytes) -> None:
    assert binary_value_to_text(ctype, flags, binary) == text


@pytest.mark.parametrize("ctype, flags, binary, text", CANONICAL)
def test_text_to_binary_value(ctype: int, flags: int, binary: bytes, text: bytes) -> None:
    # Servers send the shortest form that keeps every field; so does the encoder.
    assert text_to_binary_value(ctype, flags, text) == binary


def test_float_text_is_six_digits() -> None:
    # FLOAT text is rounded to 6 significant digits, as the text protocol shows it.
    assert binary_value_to_text(T.FLOAT, 0, H("38b49649")) == b"1234570"
    assert text_to_binary_value(T.FLOAT, 0, b"1234570") == H("50b49649")


@pytest.mark.parametrize(
    "ctype, binary, decimals, text",
    [
        (T.DATETIME, b"\x0b\xe8\x07\x03\x11\x0a\x14\x1e\x20\xa1\x07\x00", 3, b"2024-03-17 10:20:30.500"),
        (T.DATETIME, b"\x07\xe8\x07\x03\x11\x0a\x14\x1e", 2, b"2024-03-17 10:20:30.00"),
        (T.DATETIME, b"\x07\xe8\x07\x03\x11\x0a\x14\x1e", 0, b"2024-03-17 10:20:30"),
        (T.TIME, b"\x08\x01\x00\x00\x00\x00\x01\x02\x03", 1, b"-01:02:03.0"),
        (T.DATETIME, b"\x07\xe8\x07\x03\x11\x0a\x14\x1e", 31, b"2024-03-17 10:20:30"),
    ],
)
def test_temporal_text_with_decimals(ctype: int, binary: bytes, decimals: int, text: bytes) -> None:
    assert binary_value_to_text(ctype, 0, binary, decimals) == text


@pytest.mark.parametrize(
    "ctype, flags, text, binary",
    [
        (T.TINY, 0, b" 7 ", b"\x07"),
        (T.DOUBLE, 0, b"1E20", H("408cb5781daf1544")),
        (T.DATETIME, 0, b"2024-03-17T10:20:30", b"\x07\xe8\x07\x03\x11\x0a\x14\x1e"),
        (T.DATETIME, 0, b"2024-03-17", b"\x04\xe8\x07\x03\x11"),
        (T.DATE, 0, b"2024-03-17 10:20:30", b"\x04\xe8\x07\x03\x11"),  # a DATE keeps no time
        (T.TIME, 0, b"1 02:03:04", b"\x08\x00\x01\x00\x00\x00\x02\x03\x04"),
        (T.TIME, 0, b"-00:00:00", b"\x00"),
        (T.NEWDECIMAL, 0, b"-.5e3", b"\x05-.5e3"),
        (T.GEOMETRY, 0, b"\x00\x01", b"\x02\x00\x01"),
    ],
)
def test_text_to_binary_value_variants(ctype: int, flags: int, text: bytes, binary: bytes) -> None:
    assert text_to_binary_value(ctype, flags, text) == binary


@pytest.mark.parametrize(
    "ctype, flags, text",
    [
        (T.TINY, 0, b"128"), (T.TINY, UNSIGNED, b"-1"), (T.INT24, 0, b"8388608"),
        (T.LONGLONG, UNSIGNED, b"18446744073709551616"), (T.LONG, 0, b"1.5"),
        (T.FLOAT, 0, b"1e39"), (T.DOUBLE, 0, b"abc"), (T.NEWDECIMAL, 0, b"12,5"),
        (T.DATE, 0, b"2024-13-01"), (T.DATETIME, 0, b"2024-01-01 24:00:00"),
        (T.DATETIME, 0, b"17/03/2024"), (T.TIME, 0, b"10:60:00"), (T.TIME, 0, b"noon"),
        (T.NULL, 0, b"x"), (20, 0, b"x"),
    ],
)
def test_text_to_binary_value_rejects(ctype: int, flags: int, text: bytes) -> None:
    assert text_to_binary_value(ctype, flags, text) is None


@pytest.mark.parametrize(
    "ctype, binary",
    [
        (T.LONG, b"\x00\x00\x00"), (T.DOUBLE, b"\x00" * 4), (T.FLOAT, b""),
        (T.DATETIME, b"\x05\xe8\x07\x03\x11\x00"),  # length 5 is not a DATETIME length
        (T.DATETIME, b"\x07\xe8\x07\x03"),  # shorter than its length byte says
        (T.TIME, b"\x08\x02\x00\x00\x00\x00\x01\x02\x03"),  # sign byte 2
        (T.VAR_STRING, b"\x05abc"), (T.VAR_STRING, b"\xff"), (T.VAR_STRING, b""),
        (20, b"\x00"),
    ],
)
def test_binary_value_to_text_rejects(ctype: int, binary: bytes) -> None:
    assert binary_value_to_text(ctype, 0, binary) is None


# --------------------------------------------------------------------------------------------
# Binary rows

TYPES = [T.LONGLONG, T.VAR_STRING, T.DATETIME, T.DOUBLE, T.TIME, T.NEWDECIMAL, T.TINY]
FLAGS = [0, 0, 0, 0, 0, 0, UNSIGNED]
VALUES = [
    b"\x39\x30\x00\x00\x00\x00\x00\x00",  # 12345
    b"\x05" b"alice",
    b"\x07\xe8\x07\x03\x11\x0a\x14\x1e",  # 2024-03-17 10:20:30
    H("408cb5781daf1544"),  # 1e20
    b"\x08\x01\x00\x00\x00\x00\x01\x02\x03",  # -01:02:03
    b"\x05" b"12.50",
    b"\xc8",  # 200
]
ROW = b"\x00" + b"\x00\x00" + b"".join(VALUES)


def month(value: bytes | None) -> bytes | None:
    assert value is not None
    return value[:8] + b"01 00:00:00"


def test_binary_row_masks_across_types() -> None:
    seen: list[bytes | None] = []

    def zero(value: bytes | None) -> bytes | None:
        seen.append(value)
        return b"0"

    maskers = [zero, redact, month, None, identity, lambda v: b"0.00", identity]
    m = BinaryRowMasker(TYPES, FLAGS, maskers)
    assert m.mask_row(ROW) == (
        b"\x00" b"\x00\x00"
        + b"\x00" * 8
        + b"\x03***"
        + b"\x04\xe8\x07\x03\x01"  # 2024-03-01: the four-byte form
        + VALUES[3]
        + VALUES[4]
        + b"\x04" b"0.00"
        + VALUES[6]
    )
    assert seen == [b"12345"]


def test_binary_row_mask_to_null_sets_bitmap() -> None:
    rec = Recorder(answer=None)
    m = BinaryRowMasker(TYPES, FLAGS, [None, rec, None, None, None, rec, None])
    # Column 1 -> bit 3, column 5 -> bit 7 of the first bitmap byte.
    assert m.mask_row(ROW) == (
        b"\x00" b"\x88\x00" + VALUES[0] + VALUES[2] + VALUES[3] + VALUES[4] + VALUES[6]
    )
    assert rec.calls == [b"alice", b"12.50"]


def test_binary_row_unconvertible_text_becomes_null() -> None:
    m = BinaryRowMasker(TYPES, FLAGS, [lambda v: b"n/a", None, lambda v: b"soon", None, None,
                                        lambda v: b"twelve", lambda v: b"300"])
    # Columns 0, 2, 5, 6 -> bits 2, 4, 7 of byte 0 and bit 0 of byte 1.
    assert m.mask_row(ROW) == b"\x00" b"\x94\x01" + VALUES[1] + VALUES[3] + VALUES[4]


def test_binary_row_existing_nulls() -> None:
    # Column 1 and 3 NULL in the input (bits 3 and 5): no value for them.
    row = b"\x00" b"\x28\x00" + VALUES[0] + VALUES[2] + VALUES[4] + VALUES[5] + VALUES[6]
    rec = Recorder()
    m = BinaryRowMasker(TYPES, FLAGS, [None, rec, lambda v: b"2000-01-01", None, None, None, None])
    assert m.mask_row(row) == (
        b"\x00" b"\x28\x00" + VALUES[0] + b"\x04\xd0\x07\x01\x01" + VALUES[4] + VALUES[5] + VALUES[6]
    )
    assert rec.calls == []


def test_binary_row_all_masked_null_is_none_at_once() -> None:
    rec = Recorder()
    m = BinaryRowMasker(TYPES, FLAGS, [rec, rec, None, None, None, None, rec])
    # Columns 0, 1, 6 NULL: bits 2, 3 of byte 0 and bit 0 of byte 1.
    row = b"\x00" b"\x0c\x01" + VALUES[2] + VALUES[3] + VALUES[4] + VALUES[5]
    assert m.mask_row(row) is None
    assert rec.calls == []


def test_binary_row_unchanged_is_none() -> None:
    m = BinaryRowMasker(TYPES, FLAGS, [identity] * 7)
    assert m.mask_row(ROW) is None
    assert m.mask_row(memoryview(ROW)) is None
    m = BinaryRowMasker(TYPES, FLAGS, [lambda v: bytes(bytearray(v))] * 7)
    assert m.mask_row(ROW) is None


def test_binary_row_equivalent_text_is_unchanged() -> None:
    # A different text that encodes to the same bytes is no change.
    m = BinaryRowMasker(TYPES, FLAGS, [lambda v: b"+12345", None, lambda v: b"2024-03-17T10:20:30",
                                        None, lambda v: b"-0 01:02:03", None, lambda v: b" 200"])
    assert m.mask_row(ROW) is None


def test_binary_row_all_masked_null_skips_the_walk() -> None:
    # With every masked column NULL the values are not walked: nothing there can leak, and the
    # row is forwarded as it came (even a damaged one).
    m = BinaryRowMasker(TYPES, FLAGS, [redact, None, None, None, None, None, None])
    assert m.mask_row(b"\x00" b"\x04\x00" + b"garbage") is None
    m = BinaryRowMasker(TYPES, FLAGS, [None, redact, None, None, None, None, None])
    with pytest.raises(ValueError):
        m.mask_row(b"\x00" b"\x04\x00" + b"garbage")


def test_binary_row_identity_keeps_non_canonical_bytes() -> None:
    # An 11-byte DATETIME with zero microseconds reads as text without a fraction; an identity
    # masker keeps the original bytes, a changing one re-encodes in the shortest form.
    value = b"\x0b\xe8\x07\x03\x11\x0a\x14\x1e\x00\x00\x00\x00"
    row = b"\x00\x00" + value
    assert BinaryRowMasker([T.DATETIME], [0], [identity]).mask_row(row) is None
    out = BinaryRowMasker([T.DATETIME], [0], [lambda v: b"2024-03-17 10:20:31"]).mask_row(row)
    assert out == b"\x00\x00" b"\x07\xe8\x07\x03\x11\x0a\x14\x1f"


def test_binary_row_decimals_shape_the_text() -> None:
    value = b"\x0b\xe8\x07\x03\x11\x0a\x14\x1e\x20\xa1\x07\x00"
    rec = Recorder(answer=None)
    BinaryRowMasker([T.DATETIME], [0], [rec], decimals=[3]).mask_row(b"\x00\x00" + value)
    assert rec.calls == [b"2024-03-17 10:20:30.500"]


def test_binary_row_long_string_and_null_type() -> None:
    long = b"x" * 70000
    row = b"\x00" b"\x08" + b"\xfd\x70\x11\x01" + long  # column 1 (NULL type) is NULL: bit 3
    m = BinaryRowMasker([T.BLOB, T.NULL], [0, 0], [redact, redact])
    assert m.mask_row(row) == b"\x00\x08\x03***"
    m = BinaryRowMasker([T.BLOB, T.NULL], [0, 0], [lambda v: long + b"y", None])
    assert m.mask_row(b"\x00\x08\x01a") == b"\x00\x08" + b"\xfd\x71\x11\x01" + long + b"y"


def test_binary_row_many_columns_bitmap_width() -> None:
    # 15 columns: (15 + 9) // 8 = 3 bitmap bytes; column 14 is bit 16 = byte 2, bit 0.
    types = [T.TINY] * 15
    row = b"\x00" b"\x00\x00\x00" + bytes(range(15))
    m = BinaryRowMasker(types, [0] * 15, [None] * 14 + [lambda v: None])
    assert m.mask_row(row) == b"\x00" b"\x00\x00\x01" + bytes(range(14))


@pytest.mark.parametrize(
    "row",
    [
        b"",
        b"\x01\x00\x00" + b"".join(VALUES),  # header must be 0x00
        b"\x00\x00",  # bitmap cut short
        ROW[:-1],  # last value truncated
        ROW + b"\x00",  # trailing byte
        b"\x00\x00\x00" + VALUES[0] + b"\x05alice" + b"\x05\xe8\x07\x03\x11\x00" + b"".join(VALUES[3:]),
        b"\x00\x00\x00" + VALUES[0] + b"\xffalice" + b"".join(VALUES[2:]),
        b"\x00\x00\x00" + VALUES[0][:3],
    ],
)
def test_binary_row_malformed(row: bytes) -> None:
    m = BinaryRowMasker(TYPES, FLAGS, [None, redact, None, None, None, None, None])
    with pytest.raises(ValueError):
        m.mask_row(row)


def test_binary_row_construction_errors() -> None:
    with pytest.raises(ValueError):
        BinaryRowMasker([T.TINY], [0, 0], [None])
    with pytest.raises(ValueError):
        BinaryRowMasker([T.TINY], [0], [None], decimals=[0, 0])
    with pytest.raises(ValueError):
        BinaryRowMasker([20], [0], [None])  # TYPED_ARRAY: no binary encoding
