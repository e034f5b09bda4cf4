"""Sans-IO masking of MySQL / MariaDB result rows, text protocol and binary protocol.

Specs: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_query_response_text_resultset_row.html
(text rows), .../page_protocol_binary_resultset.html (binary rows and value encodings),
https://mariadb.com/docs/server/reference/clientserver-protocol (3-binary-protocol-prepared-
statements, protocol-data-types).

How it works
------------
A masker is built once per result set from its column definitions: for each column either a
masker or None. Maskers always see and return the *text* form of a value (what the text protocol
carries), whatever the protocol of the row.

* `TextRowMasker.mask_row(payload)`: a text row is one length-encoded string per column, 0xFB
  for NULL. The values are walked once (lengths only for unmasked columns); masked non-NULL
  values go to their masker, NULLs stay NULL without a call. The result is the new payload, or
  None when no value changed (forward the original packet).
* `BinaryRowMasker.mask_row(payload)`: a binary row is 0x00, a NULL bitmap of
  (columns + 7 + 2) // 8 bytes (bit i + 2 set = column i is NULL) and the non-NULL values one
  after the other, each encoded by its column type: fixed-width little-endian integers (TINY 1,
  SHORT/YEAR 2, INT24/LONG 4, LONGLONG 8 bytes, unsigned per the UNSIGNED column flag 0x20),
  FLOAT 4 and DOUBLE 8 bytes, DATE/DATETIME/TIMESTAMP as a length byte (0, 4, 7 or 11) and
  year(2) month day [hour minute second [microsecond(4)]], TIME as a length byte (0, 8 or 12) and
  negative(1) days(4) hours minutes seconds [microseconds(4)], everything else (strings, blobs,
  DECIMAL, JSON, BIT, GEOMETRY, ...) as a length-encoded string. If every masked column is NULL
  by the bitmap the row is returned unchanged (None) at once, without walking the values. A
  masked value is converted to its text form (`binary_value_to_text`), masked, and converted
  back to the same column type (`text_to_binary_value`); a masker that returns its input costs no
  conversion back and the original bytes stay. A masked value that becomes NULL (the masker said
  so, or its text does not fit the column type) sets its bit in the NULL bitmap and leaves the
  value out.

Values are checked as they are walked: a truncated row, bytes after the last value, an invalid
length-encoded integer (0xFF), a temporal length other than those above, or a column type without
a binary encoding raise ValueError (the caller fails closed).

Packets are the caller's: these functions take and return payloads (without the 4-byte header),
and payloads of 0xFFFFFF bytes or more must be joined before and split after
(`packets.PacketFramer.next`, `packets.encode_packets`).

Text forms (`binary_value_to_text`) are those the text protocol carries for the same value, so
a masker gives the same result in both protocols (checked against MariaDB 10.11): integers in
decimal (YEAR with 4 digits), DOUBLE as the shortest decimal that reads back as the same value and
FLOAT rounded to 6 significant digits, printed as the server's my_gcvt does ("1e20", "1e15",
"1234567890123456.8", "0.000000000000001", "1e-16", FLOAT "1234570": FLOAT text is lossy, as in
the text protocol), DATE "YYYY-MM-DD", DATETIME / TIMESTAMP "YYYY-MM-DD HH:MM:SS[.ffffff]", TIME
"[-]HH:MM:SS[.ffffff]" (hours = days * 24 + hours); the fraction has the column's `decimals`
digits when known (0..6), else 6 digits when it is not zero. Zero dates are
"0000-00-00[ 00:00:00]". Length-encoded types are their bytes.

Limits: ZEROFILL padding is not reproduced (the display width is not passed in). Masked text for
temporal columns must be ISO ("YYYY-MM-DD[ HH:MM[:SS[.f]]]", "[-][D ]H:MM[:SS[.f]]"); for DECIMAL
a plain decimal number; JSON, BIT and GEOMETRY text is taken as is. With every masked column
NULL, a row is not walked, so damage elsewhere in it is not noticed (nothing masked can leak).

Everything here is pure computation on bytes: no I/O, no global mutable state.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal

from sqlward.masking.model import TypeKind

from .constants import BINARY_CHARSET, FieldFlag, FieldType
from .packets import lenenc_bytes, lenenc_int

__all__ = [
    "Masker",
    "kind_for_column",
    "binary_value_to_text",
    "text_to_binary_value",
    "TextRowMasker",
    "BinaryRowMasker",
]

Masker = Callable[[bytes | None], bytes | None]
"""A masking function over the text form of one value. It is never called with None (NULL stays
NULL); it returns the new text, None for NULL, or its argument (or equal bytes) for "unchanged"."""

UNSIGNED = int(FieldFlag.UNSIGNED)  # 0x20 in the column definition flags

# --------------------------------------------------------------------------------------------
# Column kinds

_STRING_TYPES = frozenset(
    int(t) for t in (FieldType.VARCHAR, FieldType.VAR_STRING, FieldType.STRING, FieldType.ENUM,
                     FieldType.SET)
)
_BLOB_TYPES = frozenset(
    int(t) for t in (FieldType.TINY_BLOB, FieldType.MEDIUM_BLOB, FieldType.LONG_BLOB, FieldType.BLOB)
)
_KINDS: dict[int, TypeKind] = {
    int(FieldType.TINY): "integer", int(FieldType.SHORT): "integer",
    int(FieldType.INT24): "integer", int(FieldType.LONG): "integer",
    int(FieldType.LONGLONG): "integer", int(FieldType.YEAR): "integer",
    int(FieldType.DECIMAL): "numeric", int(FieldType.NEWDECIMAL): "numeric",
    int(FieldType.FLOAT): "float", int(FieldType.DOUBLE): "float",
    int(FieldType.DATE): "date", int(FieldType.NEWDATE): "date",
    int(FieldType.DATETIME): "timestamp", int(FieldType.TIMESTAMP): "timestamp",
    int(FieldType.DATETIME2): "timestamp", int(FieldType.TIMESTAMP2): "timestamp",
    int(FieldType.TIME): "time", int(FieldType.TIME2): "time",
    int(FieldType.JSON): "json",
}


def kind_for_column(
    column_type: int, flags: int, charset: int, *, data_type_name: str | None = None
) -> TypeKind:
    """The masking kind of a result column from its ColumnDefinition41 type, flags and
    character set. MariaDB's extended metadata (`data_type_name`, with
    MARIADB_CLIENT_EXTENDED_TYPE_INFO) turns its JSON (a LONGTEXT) into "json" and its UUID
    into "uuid". BIT, GEOMETRY, VECTOR and anything unknown are "other"."""
    if data_type_name is not None:
        name = data_type_name.lower()
        if name == "json":
            return "json"
        if name == "uuid":
            return "uuid"
    if column_type in _STRING_TYPES or column_type in _BLOB_TYPES:
        return "bytes" if charset == BINARY_CHARSET else "text"
    return _KINDS.get(column_type, "other")


# --------------------------------------------------------------------------------------------
# Binary-protocol values <-> text

_LENENC, _DATE, _TIME = -1, -2, -3  # size codes of the walker; >= 0 is a fixed width
_DATE_LENGTHS = (0, 4, 7, 11)
_TIME_LENGTHS = (0, 8, 12)

_INT_SPECS: dict[int, tuple[int, struct.Struct, struct.Struct, int]] = {
    # type: (width, signed, unsigned, value bits)
    int(FieldType.TINY): (1, struct.Struct("<b"), struct.Struct("<B"), 8),
    int(FieldType.SHORT): (2, struct.Struct("<h"), struct.Struct("<H"), 16),
    int(FieldType.YEAR): (2, struct.Struct("<h"), struct.Struct("<H"), 16),
    int(FieldType.INT24): (4, struct.Struct("<i"), struct.Struct("<I"), 24),
    int(FieldType.LONG): (4, struct.Struct("<i"), struct.Struct("<I"), 32),
    int(FieldType.LONGLONG): (8, struct.Struct("<q"), struct.Struct("<Q"), 64),
}
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")
_U32 = struct.Struct("<I")
_DATE_TYPES = frozenset(
    int(t) for t in (FieldType.DATE, FieldType.NEWDATE, FieldType.DATETIME, FieldType.TIMESTAMP,
                     FieldType.DATETIME2, FieldType.TIMESTAMP2)
)
_DATE_ONLY = frozenset((int(FieldType.DATE), int(FieldType.NEWDATE)))
_TIME_TYPES = frozenset((int(FieldType.TIME), int(FieldType.TIME2)))
_LENENC_TYPES = frozenset(
    int(t) for t in (
        FieldType.DECIMAL, FieldType.NEWDECIMAL, FieldType.VARCHAR, FieldType.VAR_STRING,
        FieldType.STRING, FieldType.ENUM, FieldType.SET, FieldType.TINY_BLOB,
        FieldType.MEDIUM_BLOB, FieldType.LONG_BLOB, FieldType.BLOB, FieldType.JSON, FieldType.BIT,
        FieldType.GEOMETRY, FieldType.VECTOR,
    )
)
_DECIMAL_TYPES = frozenset((int(FieldType.DECIMAL), int(FieldType.NEWDECIMAL)))
_NULL_TYPE = int(FieldType.NULL)


def _size_code(column_type: int) -> int:
    spec = _INT_SPECS.get(column_type)
    if spec is not None:
        return spec[0]
    if column_type == FieldType.FLOAT:
        return 4
    if column_type == FieldType.DOUBLE:
        return 8
    if column_type in _LENENC_TYPES:
        return _LENENC
    if column_type in _DATE_TYPES:
        return _DATE
    if column_type in _TIME_TYPES:
        return _TIME
    if column_type == _NULL_TYPE:
        return 0
    raise ValueError(f"column type {column_type} has no binary encoding")


def _read_lenenc(data: bytes, pos: int) -> tuple[int, int]:
    """(length, position of the value) of a length-encoded string at `pos` (not NULL)."""
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        if pos + 3 > len(data):
            raise ValueError("truncated length-encoded integer")
        return data[pos + 1] | (data[pos + 2] << 8), pos + 3
    if first == 0xFD:
        if pos + 4 > len(data):
            raise ValueError("truncated length-encoded integer")
        return data[pos + 1] | (data[pos + 2] << 8) | (data[pos + 3] << 16), pos + 4
    if first == 0xFE:
        if pos + 9 > len(data):
            raise ValueError("truncated length-encoded integer")
        return int.from_bytes(data[pos + 1 : pos + 9], "little"), pos + 9
    raise ValueError(f"invalid length-encoded integer 0x{first:02X}")


def _fraction(micro: int, decimals: int | None) -> str:
    if decimals is None or not 0 <= decimals <= 6:
        return f".{micro:06d}" if micro else ""
    if decimals == 0:
        return ""
    return "." + f"{micro:06d}"[:decimals]


def _float_text(x: float, single: bool) -> bytes:
    """The text protocol's form of a FLOAT / DOUBLE (my_gcvt as the servers call it): DOUBLE with
    the shortest digits that read back as the value, FLOAT rounded to 6 significant digits
    (FLT_DIG: lossy, as the server's text is); fixed notation unless the decimal exponent is
    below -15, or the number is a whole one of more than 15 digits ("1e15", "1.5e-16")."""
    if x != x:
        return b"nan"
    if math.isinf(x):
        return b"inf" if x > 0 else b"-inf"
    if x == 0:
        return b"-0" if math.copysign(1.0, x) < 0 else b"0"
    sign = "-" if x < 0 else ""
    x = abs(x)
    if single:
        mantissa, _, exponent = ("%.5e" % x).partition("e")
        digits, exp = mantissa.replace(".", "").rstrip("0") or "0", int(exponent)
    else:
        _, digit_tuple, e = Decimal(repr(x)).as_tuple()  # repr: the shortest round trip
        assert isinstance(e, int)
        digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
        exp = e + len(digit_tuple) - 1
    decpt = exp + 1  # digits before the decimal point
    if decpt <= -_MAX_DECPT_FOR_F_FORMAT or (decpt > _MAX_DECPT_FOR_F_FORMAT and len(digits) <= decpt):
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{m}e{exp}".encode("ascii")
    if decpt > 0:
        whole = digits[:decpt].ljust(decpt, "0")
        frac = digits[decpt:]
        return f"{sign}{whole}{'.' + frac if frac else ''}".encode("ascii")
    return f"{sign}0.{'0' * -decpt}{digits}".encode("ascii")


_MAX_DECPT_FOR_F_FORMAT = 15  # DBL_DIG, strings/dtoa.c


def _temporal_text(column_type: int, body: bytes, decimals: int | None) -> bytes:
    """Text of a DATE / DATETIME / TIMESTAMP value (the bytes after its length byte)."""
    n = len(body)
    year = month = day = hour = minute = second = micro = 0
    if n >= 4:
        year = body[0] | (body[1] << 8)
        month, day = body[2], body[3]
    if n >= 7:
        hour, minute, second = body[4], body[5], body[6]
    if n == 11:
        micro = _U32.unpack_from(body, 7)[0]
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if column_type not in _DATE_ONLY:
        text += f" {hour:02d}:{minute:02d}:{second:02d}" + _fraction(micro, decimals)
    return text.encode("ascii")


def _time_text(body: bytes, decimals: int | None) -> bytes:
    n = len(body)
    negative = days = hours = minutes = seconds = micro = 0
    if n >= 8:
        negative = body[0]
        days = _U32.unpack_from(body, 1)[0]
        hours, minutes, seconds = body[5], body[6], body[7]
    if n == 12:
        micro = _U32.unpack_from(body, 8)[0]
    if negative > 1:
        raise ValueError("invalid TIME sign byte")
    total_hours = days * 24 + hours
    text = f"{'-' if negative else ''}{total_hours:02d}:{minutes:02d}:{seconds:02d}"
    return (text + _fraction(micro, decimals)).encode("ascii")


def binary_value_to_text(
    column_type: int, flags: int, value: bytes, decimals: int | None = None
) -> bytes | None:
    """The text-protocol form of one binary-protocol value, or None if it cannot be had.

    `value` is the value exactly as it sits in a binary row: the fixed-width bytes of a number,
    the length byte and fields of a temporal value, or the length-encoded string (prefix
    included) of every other type. `flags` are the column definition flags (UNSIGNED = 0x20);
    `decimals` the column's, for the fraction digits of temporal values.
    """
    try:
        return _to_text(column_type, flags, bytes(value), decimals)
    except (ValueError, struct.error, IndexError, OverflowError):
        return None


def _to_text(column_type: int, flags: int, value: bytes, decimals: int | None) -> bytes:
    spec = _INT_SPECS.get(column_type)
    if spec is not None:
        width, signed, unsigned, _ = spec
        if len(value) != width:
            raise ValueError("integer of the wrong width")
        v = (unsigned if flags & UNSIGNED else signed).unpack(value)[0]
        return b"%04d" % v if column_type == FieldType.YEAR and v >= 0 else b"%d" % v
    if column_type == FieldType.FLOAT:
        if len(value) != 4:
            raise ValueError("FLOAT is 4 bytes")
        return _float_text(_FLOAT.unpack(value)[0], True)
    if column_type == FieldType.DOUBLE:
        if len(value) != 8:
            raise ValueError("DOUBLE is 8 bytes")
        return _float_text(_DOUBLE.unpack(value)[0], False)
    if column_type in _LENENC_TYPES:
        n, start = _read_lenenc(value, 0)
        if start + n != len(value):
            raise ValueError("length-encoded string of the wrong length")
        return value[start:]
    if column_type in _DATE_TYPES:
        if not value or value[0] not in _DATE_LENGTHS or len(value) != 1 + value[0]:
            raise ValueError("invalid DATETIME length")
        return _temporal_text(column_type, value[1:], decimals)
    if column_type in _TIME_TYPES:
        if not value or value[0] not in _TIME_LENGTHS or len(value) != 1 + value[0]:
            raise ValueError("invalid TIME length")
        return _time_text(value[1:], decimals)
    raise ValueError(f"column type {column_type} has no text form here")


_SPACE = b" \t\n\r\f\v"
_DATETIME_RE = re.compile(
    rb"(\d{4})-(\d{1,2})-(\d{1,2})(?:(?:[ T]|\s+)(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d*))?)?)?"
)
_TIME_RE = re.compile(rb"(-)?(?:(\d+)\s+)?(\d+):(\d{1,2})(?::(\d{1,2})(?:\.(\d*))?)?")
_DECIMAL_RE = re.compile(rb"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _micro(frac: bytes | None) -> int:
    if not frac:
        return 0
    return int(frac[:6].ljust(6, b"0"))  # MySQL truncates or rounds by sql_mode; truncate


def _datetime_binary(column_type: int, text: bytes) -> bytes:
    m = _DATETIME_RE.fullmatch(text.strip(_SPACE))
    if m is None:
        raise ValueError("not a DATE / DATETIME")
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    hour = minute = second = micro = 0
    if m[4] is not None and column_type not in _DATE_ONLY:
        hour, minute, second, micro = int(m[4]), int(m[5]), int(m[6] or 0), _micro(m[7])
    if month > 12 or day > 31 or hour > 23 or minute > 59 or second > 59:
        raise ValueError("DATETIME field out of range")
    if micro:
        return struct.pack("<BHBBBBBI", 11, year, month, day, hour, minute, second, micro)
    if hour or minute or second:
        return struct.pack("<BHBBBBB", 7, year, month, day, hour, minute, second)
    if year or month or day:
        return struct.pack("<BHBB", 4, year, month, day)
    return b"\x00"


def _time_binary(text: bytes) -> bytes:
    m = _TIME_RE.fullmatch(text.strip(_SPACE))
    if m is None:
        raise ValueError("not a TIME")
    negative = m[1] is not None
    hours = int(m[3]) + 24 * int(m[2] or 0)
    minute, second, micro = int(m[4]), int(m[5] or 0), _micro(m[6])
    if minute > 59 or second > 59:
        raise ValueError("TIME field out of range")
    days, hour = divmod(hours, 24)
    if micro:
        return struct.pack("<BBIBBBI", 12, negative, days, hour, minute, second, micro)
    if days or hour or minute or second:
        return struct.pack("<BBIBBB", 8, negative, days, hour, minute, second)
    return b"\x00"


def text_to_binary_value(column_type: int, flags: int, text: bytes) -> bytes | None:
    """The binary-protocol form (as `binary_value_to_text` takes it) of a value given as text,
    or None when the text is not a value of the column type (the value must then be NULL)."""
    try:
        return _to_binary(column_type, flags, bytes(text))
    except (ValueError, struct.error, OverflowError, TypeError):
        return None


def _to_binary(column_type: int, flags: int, text: bytes) -> bytes:
    spec = _INT_SPECS.get(column_type)
    if spec is not None:
        width, signed, unsigned, bits = spec
        v = int(text)
        if flags & UNSIGNED:
            if not 0 <= v < 1 << bits:
                raise ValueError("integer out of range")
            return unsigned.pack(v)
        if not -(1 << (bits - 1)) <= v < 1 << (bits - 1):
            raise ValueError("integer out of range")
        return signed.pack(v)
    if column_type == FieldType.FLOAT:
        return _FLOAT.pack(_parse_float(text))
    if column_type == FieldType.DOUBLE:
        return _DOUBLE.pack(_parse_float(text))
    if column_type in _DECIMAL_TYPES:
        if _DECIMAL_RE.fullmatch(text) is None:
            raise ValueError("not a DECIMAL")
        return lenenc_bytes(text)
    if column_type in _LENENC_TYPES:
        return lenenc_bytes(text)
    if column_type in _DATE_TYPES:
        return _datetime_binary(column_type, text)
    if column_type in _TIME_TYPES:
        return _time_binary(text)
    raise ValueError(f"column type {column_type} has no binary form here")


def _parse_float(text: bytes) -> float:
    t = text.strip(_SPACE)
    if b"_" in t:
        raise ValueError("no underscores")
    return float(t)


# --------------------------------------------------------------------------------------------
# Text rows

_NULL = 0xFB


class TextRowMasker:
    """Masks rows of a text-protocol result set (COM_QUERY). `maskers` has one entry per
    column (None = leave the column alone)."""

    __slots__ = ("_plan", "_ncols")

    def __init__(self, maskers: Sequence[Masker | None]) -> None:
        self._plan: tuple[Masker | None, ...] = tuple(maskers)
        self._ncols = len(self._plan)

    def mask_row(self, payload: bytes | bytearray | memoryview) -> bytes | None:
        """The masked row payload, or None when no value changed. ValueError if malformed."""
        if type(payload) is not bytes:
            payload = bytes(payload)
        size = len(payload)
        pos = 0
        changes: list[tuple[int, int, bytes | None]] | None = None
        try:
            for fn in self._plan:
                start = pos
                first = payload[pos]
                if first < 0xFB:
                    n = first
                    pos += 1
                elif first == _NULL:
                    pos += 1
                    continue
                elif first == 0xFC:
                    n = payload[pos + 1] | (payload[pos + 2] << 8)
                    pos += 3
                elif first == 0xFD:
                    n = payload[pos + 1] | (payload[pos + 2] << 8) | (payload[pos + 3] << 16)
                    pos += 4
                elif first == 0xFE:
                    if pos + 9 > size:
                        raise ValueError("text row is truncated")
                    n = int.from_bytes(payload[pos + 1 : pos + 9], "little")
                    pos += 9
                else:
                    raise ValueError("invalid length-encoded integer 0xFF in a text row")
                end = pos + n
                if fn is not None:
                    if end > size:
                        raise ValueError("text row is truncated")
                    value = payload[pos:end]
                    new = fn(value)
                    if new is not value and new != value:
                        if changes is None:
                            changes = []
                        changes.append((start, end, new))
                pos = end
        except IndexError:
            raise ValueError("text row is truncated") from None
        if pos != size:
            raise ValueError("text row is truncated" if pos > size else "bytes after the last column")
        if changes is None:
            return None
        parts: list[bytes] = []
        prev = 0
        for start, end, new in changes:
            parts.append(payload[prev:start])
            if new is None:
                parts.append(b"\xfb")
            else:
                if type(new) is not bytes:
                    new = bytes(new)
                parts.append(lenenc_int(len(new)))
                parts.append(new)
            prev = end
        parts.append(payload[prev:])
        return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Binary rows

_ColumnFn = Callable[[bytes], "bytes | None"]


def _lenenc_column(column_type: int, masker: Masker) -> _ColumnFn:
    """Masker over a length-encoded value's content; returns the new *content* (or the same
    object when unchanged, None for NULL)."""
    if column_type not in _DECIMAL_TYPES:
        return masker

    def column(value: bytes) -> bytes | None:
        masked = masker(value)
        if masked is value or masked is None or masked == value:
            return masked
        return bytes(masked) if _DECIMAL_RE.fullmatch(masked) else None

    return column


def _converted_column(
    column_type: int, flags: int, decimals: int | None, masker: Masker
) -> _ColumnFn:
    """Masker over a fixed-width or temporal value's wire bytes: returns new wire bytes (or the
    same object when unchanged, None for NULL)."""

    def column(value: bytes) -> bytes | None:
        try:
            text = _to_text(column_type, flags, value, decimals)
        except (ValueError, struct.error, IndexError, OverflowError):
            return None
        masked = masker(text)
        if masked is text or masked == text:
            return value
        if masked is None:
            return None
        return text_to_binary_value(column_type, flags, masked)

    return column


class BinaryRowMasker:
    """Masks rows of a binary-protocol result set (COM_STMT_EXECUTE / COM_STMT_FETCH).

    `column_types`, `flags` (ColumnDefinition41 flags: UNSIGNED is 0x20) and `maskers` have one
    entry per column; `decimals` (optional) the columns' decimals, for the text form of
    temporal values. A column type without a binary encoding raises ValueError here.
    """

    __slots__ = ("_cols", "_ncols", "_bitmap_len", "_masked_bits")

    def __init__(
        self,
        column_types: Sequence[int],
        flags: Sequence[int],
        maskers: Sequence[Masker | None],
        *,
        decimals: Sequence[int] | None = None,
    ) -> None:
        n = len(column_types)
        if len(flags) != n or len(maskers) != n or (decimals is not None and len(decimals) != n):
            raise ValueError("column_types, flags, maskers (and decimals) need one entry per column")
        cols: list[tuple[int, int, int, bool, _ColumnFn | None]] = []
        masked_bits: list[tuple[int, int]] = []
        for i, (ctype, cflags, masker) in enumerate(zip(column_types, flags, maskers)):
            code = _size_code(ctype)
            bit = i + 2
            byte_index, mask = bit >> 3, 1 << (bit & 7)
            fn: _ColumnFn | None = None
            lenenc = code == _LENENC
            if masker is not None:
                masked_bits.append((byte_index, mask))
                if lenenc:
                    fn = _lenenc_column(ctype, masker)
                elif ctype == _NULL_TYPE:
                    fn = None  # always NULL
                else:
                    dec = decimals[i] if decimals is not None else None
                    fn = _converted_column(ctype, cflags, dec, masker)
            cols.append((byte_index, mask, code, lenenc, fn))
        self._cols = tuple(cols)
        self._ncols = n
        self._bitmap_len = (n + 7 + 2) // 8
        self._masked_bits = tuple(masked_bits)

    def mask_row(self, payload: bytes | bytearray | memoryview) -> bytes | None:
        """The masked row payload, or None when no value changed. ValueError if malformed."""
        if type(payload) is not bytes:
            payload = bytes(payload)
        size = len(payload)
        head = 1 + self._bitmap_len
        if size < head or payload[0] != 0:
            raise ValueError("not a binary row (header 0x00 and NULL bitmap)")
        bitmap = payload[1:head]
        for byte_index, mask in self._masked_bits:
            if not bitmap[byte_index] & mask:
                break
        else:
            return None  # every masked column is NULL
        pos = head
        changes: list[tuple[int, int, int, bytes | None]] | None = None
        try:
            for byte_index, mask, code, lenenc, fn in self._cols:
                if bitmap[byte_index] & mask:
                    continue
                start = pos
                content = start
                if code >= 0:
                    pos += code
                elif lenenc:
                    first = payload[pos]
                    if first < 0xFB:
                        n, content = first, pos + 1
                    else:
                        n, content = _read_lenenc(payload, pos)
                    pos = content + n
                else:
                    n = payload[pos]
                    if n not in (_DATE_LENGTHS if code == _DATE else _TIME_LENGTHS):
                        raise ValueError(f"invalid temporal value length {n}")
                    pos += 1 + n
                if fn is None:
                    continue
                if pos > size:
                    raise ValueError("binary row is truncated")
                if lenenc:
                    value = payload[content:pos]
                    new = fn(value)
                    if new is value or new == value:
                        continue
                    if new is not None:
                        if type(new) is not bytes:
                            new = bytes(new)
                        new = lenenc_int(len(new)) + new
                else:
                    value = payload[start:pos]
                    new = fn(value)
                    if new is value or new == value:
                        continue
                if changes is None:
                    changes = []
                changes.append((start, pos, byte_index | (mask << 8), new))
        except IndexError:
            raise ValueError("binary row is truncated") from None
        if pos != size:
            raise ValueError("binary row is truncated" if pos > size else "bytes after the last column")
        if changes is None:
            return None
        new_bitmap = bytearray(bitmap)
        parts: list[bytes] = []
        prev = head
        for start, end, bitpos, new in changes:
            parts.append(payload[prev:start])
            if new is None:
                new_bitmap[bitpos & 0xFF] |= bitpos >> 8
            else:
                parts.append(new)
            prev = end
        parts.append(payload[prev:])
        return b"\x00" + bytes(new_bitmap) + b"".join(parts)
