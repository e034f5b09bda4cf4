"""Property tests of row masking (adapters/postgres/rowmask.py, adapters/mysql/rowmask.py).

* binary -> text -> binary gives the same bytes for every supported PostgreSQL type and every
  MySQL binary-protocol type (canonical encodings, as servers send them); numeric and FLOAT
  texts are fixed points of text -> binary -> text;
* a masker that is the identity on every column leaves every row unchanged (None, or the same
  bytes);
* a masker replacing every value with b"X" leaves no original value in the output: the masked
  row decodes to b"X" (or its binary form, or NULL where "X" is not a value of the type) in
  every non-NULL column, and no original value of 6 bytes or more is found in the output bytes.
"""

from __future__ import annotations

import struct
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from sqlward.adapters.mysql import messages as M
from sqlward.adapters.mysql import rowmask as my
from sqlward.adapters.mysql.constants import FieldType as T
from sqlward.adapters.mysql.packets import lenenc_bytes
from sqlward.adapters.postgres import codec
from sqlward.adapters.postgres import rowmask as pg

# --------------------------------------------------------------------------------------------
# PostgreSQL binary values, canonical (as the server's send functions produce them)


def _pack(fmt: str) -> st.SearchStrategy[bytes]:
    size = struct.calcsize(fmt)
    bits = 8 * size
    lo, hi = (0, 2**bits - 1) if fmt[-1].isupper() else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(lo, hi).map(lambda v: struct.pack(fmt, v))


def _not_nan(width: int) -> st.SearchStrategy[bytes]:
    fmt = "!f" if width == 4 else "!d"
    return st.binary(min_size=width, max_size=width).filter(
        lambda b: struct.unpack(fmt, b)[0] == struct.unpack(fmt, b)[0]
    )


_decimal = st.builds(
    lambda coeff, exp: Decimal(coeff).scaleb(exp),
    st.integers(-(10**40), 10**40),
    st.integers(-40, 40),
)


def _numeric_binary(d: Decimal) -> bytes:
    b = pg.text_to_binary(pg.NUMERIC, format(d, "f").encode())
    assert b is not None
    return b


_days = st.integers(-pg.POSTGRES_EPOCH_JDATE, pg.DATE_END_JULIAN - pg.POSTGRES_EPOCH_JDATE - 1)
_usecs = st.integers(pg.MIN_TIMESTAMP, pg.END_TIMESTAMP - 1)
_utf8 = st.text(max_size=30).map(lambda s: s.encode("utf-8"))

PG_BINARY: dict[int, st.SearchStrategy[bytes]] = {
    pg.TEXT: st.binary(max_size=30),
    pg.VARCHAR: st.binary(max_size=30),
    pg.BPCHAR: st.binary(max_size=30),
    pg.NAME: st.binary(max_size=30),
    pg.CHAR: st.binary(min_size=1, max_size=1),
    pg.INT2: _pack("!h"),
    pg.INT4: _pack("!i"),
    pg.INT8: _pack("!q"),
    pg.OID: _pack("!I"),
    pg.FLOAT4: _not_nan(4),
    pg.FLOAT8: _not_nan(8),
    pg.BOOL: st.sampled_from([b"\x00", b"\x01"]),
    pg.NUMERIC: _decimal.map(_numeric_binary)
    | st.sampled_from([bytes.fromhex(h) for h in ("00000000c0000000", "00000000d0000000",
                                                   "00000000f0000000")]),
    pg.DATE: (_days | st.sampled_from([-(2**31), 2**31 - 1])).map(lambda d: struct.pack("!i", d)),
    pg.TIMESTAMP: (_usecs | st.sampled_from([-(2**63), 2**63 - 1])).map(lambda t: struct.pack("!q", t)),
    pg.TIMESTAMPTZ: _usecs.map(lambda t: struct.pack("!q", t)),
    pg.TIME: st.integers(0, pg.USECS_PER_DAY).map(lambda t: struct.pack("!q", t)),
    pg.TIMETZ: st.builds(
        lambda t, z: struct.pack("!qi", t, z),
        st.integers(0, pg.USECS_PER_DAY),
        st.integers(-pg.TZDISP_LIMIT, pg.TZDISP_LIMIT),
    ),
    pg.UUID: st.binary(min_size=16, max_size=16),
    pg.JSON: _utf8,
    pg.JSONB: _utf8.map(lambda b: b"\x01" + b),
    pg.BYTEA: st.binary(max_size=30),
}


@settings(max_examples=300)
@given(st.sampled_from(sorted(PG_BINARY)).flatmap(lambda oid: st.tuples(st.just(oid), PG_BINARY[oid])))
def test_pg_binary_text_round_trip(case: tuple[int, bytes]) -> None:
    oid, binary = case
    text = pg.binary_to_text(oid, binary)
    assert text is not None
    assert pg.text_to_binary(oid, text) == binary
    assert pg.binary_to_text(oid, pg.text_to_binary(oid, text) or b"") == text


@given(_decimal)
def test_pg_numeric_text_is_exact(d: Decimal) -> None:
    binary = _numeric_binary(d)
    text = pg.binary_to_text(pg.NUMERIC, binary)
    assert text is not None
    assert Decimal(text.decode()) == d
    # The scale is kept: as many fraction digits as the input had.
    assert len(text.partition(b".")[2]) == max(0, -d.as_tuple().exponent)  # type: ignore[operator]


@given(st.integers(-(2**63), 2**63 - 1))
def test_pg_int8_text_round_trip(v: int) -> None:
    assert pg.text_to_binary(pg.INT8, b"%d" % v) == struct.pack("!q", v)
    assert pg.binary_to_text(pg.INT8, struct.pack("!q", v)) == b"%d" % v


# --------------------------------------------------------------------------------------------
# PostgreSQL DataRows


@st.composite
def pg_rows(draw: st.DrawFn, text_alphabet: bool = False) -> tuple[list[int], list[int], list[bytes | None]]:
    """(type OIDs, formats, values) of a row of 0..8 columns; NULLs included. Text-format
    values are what the server would send as text."""
    n = draw(st.integers(0, 8))
    oids, fmts, values = [], [], []
    for _ in range(n):
        oid = draw(st.sampled_from(sorted(PG_BINARY)))
        fmt = draw(st.sampled_from([0, 1]))
        if draw(st.integers(0, 4)) == 0:
            value = None
        elif fmt == 1:
            value = draw(PG_BINARY[oid])
        elif text_alphabet:
            value = draw(st.text(alphabet="abcdefghijklmnopqrstuvwyz0123456789 -@.", max_size=30)).encode()
        else:
            value = pg.binary_to_text(oid, draw(PG_BINARY[oid]))
        oids.append(oid)
        fmts.append(fmt)
        values.append(value)
    return oids, fmts, values


def _datarow(values: list[bytes | None]) -> bytes:
    wire = codec.encode_backend(codec.DataRow(tuple(values)))
    return wire[5:]


@given(pg_rows())
def test_pg_identity_masker_leaves_row_unchanged(row: tuple[list[int], list[int], list[bytes | None]]) -> None:
    oids, fmts, values = row
    body = _datarow(values)
    for masker in (lambda v: v, lambda v: None if v is None else bytes(bytearray(v))):
        m = pg.RowMasker(oids, fmts, [masker] * len(oids))
        out = m.mask_datarow(body)
        assert out is None or out == body
        msg = b"D" + struct.pack("!i", len(body) + 4) + body
        assert m.mask_datarow_message(msg) == msg


@given(pg_rows(text_alphabet=True))
def test_pg_x_masker_leaves_nothing(row: tuple[list[int], list[int], list[bytes | None]]) -> None:
    oids, fmts, values = row
    body = _datarow(values)
    m = pg.RowMasker(oids, fmts, [lambda v: b"X"] * len(oids))
    out = m.mask_datarow(body)
    if all(v is None for v in values):
        assert out is None
        return
    assert out is not None
    masked = codec.decode_backend(codec.Backend.DATA_ROW, out)
    assert isinstance(masked, codec.DataRow)
    for oid, fmt, old, new in zip(oids, fmts, values, masked.values):
        if old is None:
            assert new is None
        elif fmt == 0:
            assert new == b"X"
        else:
            assert new == pg.text_to_binary(oid, b"X")  # None (NULL) where "X" is not a value
    for fmt, old in zip(fmts, values):
        if fmt == 0 and old is not None and len(old) >= 6:
            assert old not in out


# --------------------------------------------------------------------------------------------
# COPY rows


_copy_value = st.binary(max_size=20)


@given(st.lists(st.none() | _copy_value, min_size=1, max_size=6))
def test_copy_text_round_trip_through_masker(values: list[bytes | None]) -> None:
    # Encode a row as the server does, then check the masker sees each decoded value and that
    # re-encoding what it sees gives the same row.
    enc = pg.CopyTextMasker([None] * len(values))
    line = b"\t".join(b"\\N" if v is None else enc._escape(v) for v in values) + b"\n"
    seen: list[bytes | None] = []

    def record(v: bytes | None) -> bytes | None:
        seen.append(v)
        return None if v is None else bytes(bytearray(v))

    m = pg.CopyTextMasker([record] * len(values))
    assert m.mask_line(line) is line
    assert seen == [v for v in values if v is not None]
    x = pg.CopyTextMasker([lambda v: b"X"] * len(values)).mask_line(line)
    assert x == b"\t".join(b"\\N" if v is None else b"X" for v in values) + b"\n"


@given(st.lists(st.none() | _copy_value, min_size=1, max_size=6))
def test_copy_csv_round_trip_through_masker(values: list[bytes | None]) -> None:
    enc = pg.CopyCsvMasker([None] * len(values))
    line = b",".join(b"" if v is None else enc._encode(v, False) for v in values) + b"\n"
    seen: list[bytes | None] = []

    def record(v: bytes | None) -> bytes | None:
        seen.append(v)
        return v

    assert pg.CopyCsvMasker([record] * len(values)).mask_line(line) is line
    assert seen == [v for v in values if v is not None]
    x = pg.CopyCsvMasker([lambda v: b"X"] * len(values)).mask_line(line)
    fields = []
    for v in values:
        if v is None:
            fields.append(b"")
        else:
            fields.append(b'"X"' if enc._encode(v, False).startswith(b'"') else b"X")
    assert x == b",".join(fields) + b"\n"


# --------------------------------------------------------------------------------------------
# MySQL binary values, canonical (as servers encode them: the shortest temporal length)


def _my_datetime(y: int, mo: int, d: int, h: int, mi: int, s: int, us: int) -> bytes:
    if us:
        return struct.pack("<BHBBBBBI", 11, y, mo, d, h, mi, s, us)
    if h or mi or s:
        return struct.pack("<BHBBBBB", 7, y, mo, d, h, mi, s)
    if y or mo or d:
        return struct.pack("<BHBB", 4, y, mo, d)
    return b"\x00"


def _my_time(neg: bool, days: int, h: int, mi: int, s: int, us: int) -> bytes:
    if us:
        return struct.pack("<BBIBBBI", 12, neg, days, h, mi, s, us)
    if days or h or mi or s:
        return struct.pack("<BBIBBB", 8, neg, days, h, mi, s)
    return b"\x00"


_dt_fields = st.tuples(st.integers(0, 9999), st.integers(0, 12), st.integers(0, 31),
                       st.integers(0, 23), st.integers(0, 59), st.integers(0, 59),
                       st.integers(0, 999999))

MY_TYPES: list[tuple[int, int, st.SearchStrategy[bytes]]] = [
    (T.TINY, 0, _pack("<b")), (T.TINY, my.UNSIGNED, _pack("<B")),
    (T.SHORT, 0, _pack("<h")), (T.SHORT, my.UNSIGNED, _pack("<H")),
    (T.YEAR, my.UNSIGNED, _pack("<H")),
    (T.INT24, 0, st.integers(-(2**23), 2**23 - 1).map(lambda v: struct.pack("<i", v))),
    (T.INT24, my.UNSIGNED, st.integers(0, 2**24 - 1).map(lambda v: struct.pack("<I", v))),
    (T.LONG, 0, _pack("<i")), (T.LONG, my.UNSIGNED, _pack("<I")),
    (T.LONGLONG, 0, _pack("<q")), (T.LONGLONG, my.UNSIGNED, _pack("<Q")),
    (T.DOUBLE, 0, _not_nan(8)),
    (T.VAR_STRING, 0, st.binary(max_size=300).map(lenenc_bytes)),
    (T.BLOB, 0, st.binary(max_size=70).map(lenenc_bytes)),
    (T.JSON, 0, _utf8.map(lenenc_bytes)),
    (T.NEWDECIMAL, 0, _decimal.map(lambda d: lenenc_bytes(format(d, "f").encode()))),
    (T.DATE, 0, _dt_fields.map(lambda f: _my_datetime(*f[:3], 0, 0, 0, 0))),
    (T.DATETIME, 0, _dt_fields.map(lambda f: _my_datetime(*f))),
    (T.TIMESTAMP, 0, _dt_fields.map(lambda f: _my_datetime(*f))),
    (T.TIME, 0, st.builds(
        lambda neg, days, h, mi, s, us: _my_time(neg and bool(days or h or mi or s or us),
                                                 days, h, mi, s, us),
        st.booleans(), st.integers(0, 34), st.integers(0, 23), st.integers(0, 59),
        st.integers(0, 59), st.integers(0, 999999))),
]
_my_case = st.sampled_from(range(len(MY_TYPES))).flatmap(
    lambda i: st.tuples(st.just(MY_TYPES[i][0]), st.just(MY_TYPES[i][1]), MY_TYPES[i][2])
)


@settings(max_examples=300)
@given(_my_case)
def test_mysql_binary_text_round_trip(case: tuple[int, int, bytes]) -> None:
    ctype, flags, binary = case
    text = my.binary_value_to_text(ctype, flags, binary)
    assert text is not None
    assert my.text_to_binary_value(ctype, flags, text) == binary


@given(_not_nan(4))
def test_mysql_float_text_is_a_fixed_point(b: bytes) -> None:
    # FLOAT text has 6 significant digits (lossy, as the server's): it reads back to a value
    # whose text is the same, within float32 precision of the original.
    binary = b[::-1]  # little-endian on the MySQL wire
    text = my.binary_value_to_text(T.FLOAT, 0, binary)
    assert text is not None
    again = my.text_to_binary_value(T.FLOAT, 0, text)
    assert again is not None
    assert my.binary_value_to_text(T.FLOAT, 0, again) == text
    original = struct.unpack("<f", binary)[0]
    back = struct.unpack("<f", again)[0]
    assert back == original or abs(back - original) <= abs(original) * 1e-5 or abs(original) < 1e-37


# --------------------------------------------------------------------------------------------
# MySQL rows


@st.composite
def my_text_rows(draw: st.DrawFn, text_alphabet: bool = False) -> list[bytes | None]:
    n = draw(st.integers(1, 8))
    if text_alphabet:
        value = st.text(alphabet="abcdefghijklmnopqrstuvwyz0123456789 -@.", max_size=300).map(str.encode)
    else:
        value = st.binary(max_size=300)
    return draw(st.lists(st.none() | value, min_size=n, max_size=n))


def _text_row(values: list[bytes | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_bytes(v) for v in values)


@given(my_text_rows())
def test_mysql_text_identity_leaves_row_unchanged(values: list[bytes | None]) -> None:
    payload = _text_row(values)
    for masker in (lambda v: v, lambda v: None if v is None else bytes(bytearray(v))):
        out = my.TextRowMasker([masker] * len(values)).mask_row(payload)
        assert out is None or out == payload


@given(my_text_rows(text_alphabet=True))
def test_mysql_text_x_masker_leaves_nothing(values: list[bytes | None]) -> None:
    payload = _text_row(values)
    out = my.TextRowMasker([lambda v: b"X"] * len(values)).mask_row(payload)
    if all(v is None for v in values):
        assert out is None
        return
    assert out == _text_row([None if v is None else b"X" for v in values])
    for v in values:
        if v is not None and len(v) >= 6:
            assert v not in out


@st.composite
def my_binary_rows(draw: st.DrawFn) -> tuple[list[int], list[int], list[bytes | None]]:
    n = draw(st.integers(1, 12))
    types, flags, values = [], [], []
    for _ in range(n):
        ctype, cflags, wire = draw(_my_case)
        types.append(ctype)
        flags.append(cflags)
        values.append(None if draw(st.integers(0, 4)) == 0 else wire)
    return types, flags, values


def _binary_row(values: list[bytes | None]) -> bytes:
    bitmap = bytearray((len(values) + 9) // 8)
    for i, v in enumerate(values):
        if v is None:
            bitmap[(i + 2) >> 3] |= 1 << ((i + 2) & 7)
    return b"\x00" + bytes(bitmap) + b"".join(v for v in values if v is not None)


@given(my_binary_rows())
def test_mysql_binary_identity_leaves_row_unchanged(row: tuple[list[int], list[int], list[bytes | None]]) -> None:
    types, flags, values = row
    payload = _binary_row(values)
    for masker in (lambda v: v, lambda v: None if v is None else bytes(bytearray(v))):
        out = my.BinaryRowMasker(types, flags, [masker] * len(types)).mask_row(payload)
        assert out is None or out == payload


@given(my_binary_rows())
def test_mysql_binary_x_masker_leaves_nothing(row: tuple[list[int], list[int], list[bytes | None]]) -> None:
    types, flags, values = row
    payload = _binary_row(values)
    out = my.BinaryRowMasker(types, flags, [lambda v: b"X"] * len(types)).mask_row(payload)
    if all(v is None for v in values):
        assert out is None
        return
    assert out is not None
    # Decode with the codec of messages.py (independent of the masker's walker).
    param_types = [M.ParamType(t, 0x80 if f & my.UNSIGNED else 0) for t, f in zip(types, flags)]
    decoded = M.decode_binary_row(out, param_types).values
    for ctype, cflags, old, new in zip(types, flags, values, decoded):
        if old is None:
            assert new is None
            continue
        expected = my.text_to_binary_value(ctype, cflags, b"X")
        if expected is None:
            assert new is None
        else:
            assert new == b"X"
