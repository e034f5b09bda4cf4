"""Sans-IO masking of PostgreSQL result rows: DataRow messages and COPY TO STDOUT rows.

Specs: https://www.postgresql.org/docs/current/protocol-message-formats.html (DataRow),
https://www.postgresql.org/docs/current/sql-copy.html (COPY text and CSV formats); the binary
formats of the types are those of the `*_send` / `*_recv` functions of the server
(src/backend/utils/adt: int.c, float.c, numeric.c, date.c, timestamp.c, uuid.c, jsonb.c,
varlena.c).

How it works
------------
A `RowMasker` is built once per result shape (RowDescription): the type OID and format code of
every column, and for every column either a masker or None. Maskers always see and return the
*text* form of a value (what the server sends for format 0), whatever the column's wire format:

* text-format columns (format 0): the value bytes go to the masker as they are;
* binary-format columns (format 1): the value is converted to its text form
  (`binary_to_text`), masked, and converted back (`text_to_binary`). A masker that gives back its
  input unchanged costs no conversion back, and the original binary bytes are kept. A value whose
  conversion is impossible (a type without a converter here, a malformed value, masked text that
  does not parse as the column's type) becomes NULL: the masker fails closed.

`RowMasker.mask_datarow(body)` walks the DataRow body once: Int16 column count, then per
column an Int32 length (-1 = NULL) and the bytes. Unmasked columns are only skipped over; masked
NULLs are left NULL without calling the masker (masking never turns a NULL into a value); the
masker is called only for masked non-NULL values. If no value changed the result is None, so the
caller forwards the original message untouched; otherwise the new body is spliced together from
the untouched spans of the old one and the new values. The column count and every length are
checked against the body (a malformed row raises ValueError: the caller fails closed).
`mask_datarow_message` does the same on a complete message (type byte 'D' and length) and
returns it re-framed, or the very same object when nothing changed.

Row descriptions are decoded by `codec.decode_backend(Backend.ROW_DESCRIPTION, body)` (its
`FieldDescription`s give the type OIDs and format codes); `RowMasker.from_fields` takes them.
Note that a RowDescription answering Describe of a *statement* always says format 0: the formats
that apply are those of the Bind (or of the Describe of the portal).

Text forms produced by `binary_to_text` are those of a server with DateStyle ISO, IntervalStyle
postgres, bytea_output hex, extra_float_digits 1 (shortest exact floats) and, for timestamptz and
timetz values, the UTC offset the binary value carries (timestamptz: always UTC, "+00"). Text
accepted by `text_to_binary` is that form and the usual variants of the server's input functions
(whitespace, case of keywords, ISO 'T' separators, offsets, BC, hex or escape bytea, exponents in
numeric and float, braces in UUIDs); dates and times must be ISO (year-month-day, 4+ digit years).
JSON text is passed through without validation (jsonb adds its version byte 1).

COPY TO STDOUT rows: `CopyTextMasker` and `CopyCsvMasker` mask one row (the payload of one
CopyData message: the server sends exactly one row per message) in the text or CSV format. Only
masked fields are decoded (escapes / quotes) and re-encoded the way the server would encode them;
every other byte of the row is kept. Binary COPY is not handled (refuse it upstream).

Limits
------
* Binary converters exist for the built-in types of `kind_for_oid` (timetz included, kept with
  its offset, "+00" when the masked text has none). Anything else in binary format (arrays,
  intervals, inet, money, citext, enums, domains, ...) has no text form here: masked, it is NULL.
* A timestamp (without time zone) ignores an offset in the masked text, as the server does; a
  timestamptz without one is taken as UTC.
* numeric Infinity / -Infinity are encoded with display scale 0 (the server fills that unused
  field with other bits; receivers ignore it), so their bytes may differ from the server's.
* The text of text-like types is taken as bytes in the client encoding; COPY rows are read
  byte-wise, so client encodings that embed ASCII bytes in multibyte characters (SJIS, BIG5,
  GBK, ...) are not supported.

Everything here is pure computation on bytes: no I/O, no global mutable state (the tables below
are read-only), safe to share between sessions.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Final

from sqlward.masking.model import TypeKind

try:  # the compiled row walk (adapters/postgres/_rowwalk.pyx), when it was built
    from sqlward.adapters.postgres import _rowwalk
except ImportError:  # no C compiler at install time: the pure-Python walk below
    _rowwalk = None  # type: ignore[assignment]

from .codec import FieldDescription

__all__ = [
    "Masker",
    "kind_for_oid",
    "binary_to_text",
    "text_to_binary",
    "RowMasker",
    "CopyTextMasker",
    "CopyCsvMasker",
]

Masker = Callable[[bytes | None], bytes | None]
"""A masking function over the text form of one value. It is never called with None (NULL stays
NULL); it returns the new text, None for NULL, or its argument (or equal bytes) for "unchanged"."""

# --------------------------------------------------------------------------------------------
# Type OIDs (pg_type.dat) and their masking kinds

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 114, 700, 701, 705, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, TIMETZ, NUMERIC, UUID, JSONB = (
    1082, 1083, 1114, 1184, 1266, 1700, 2950, 3802,
)

_KINDS: dict[int, TypeKind] = {
    TEXT: "text", VARCHAR: "text", BPCHAR: "text", NAME: "text", CHAR: "text", UNKNOWN: "text",
    INT2: "integer", INT4: "integer", INT8: "integer", OID: "integer",
    NUMERIC: "numeric",
    FLOAT4: "float", FLOAT8: "float",
    BOOL: "boolean",
    DATE: "date",
    TIMESTAMP: "timestamp",
    TIMESTAMPTZ: "timestamptz",
    TIME: "time", TIMETZ: "time",  # timetz keeps its offset ("+00" when the masked text has none)
    UUID: "uuid",
    JSON: "json", JSONB: "json",
    BYTEA: "bytes",
}


def kind_for_oid(type_oid: int) -> TypeKind:
    """The masking kind of a built-in type. Types with OIDs assigned at CREATE time (citext,
    domains, enums, ...) and every other type are "other" (their masked value is NULL)."""
    return _KINDS.get(type_oid, "other")


# --------------------------------------------------------------------------------------------
# Binary <-> text conversion of single values

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_I64 = struct.Struct("!q")
_U32 = struct.Struct("!I")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")
_TIMETZ = struct.Struct("!qi")
_NUMERIC_HEAD = struct.Struct("!HhHH")

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1

POSTGRES_EPOCH_JDATE = 2451545  # date2j(2000, 1, 1)
USECS_PER_DAY = 86_400_000_000
USECS_PER_SEC = 1_000_000
# Valid ranges (datatype/timestamp.h): Julian day 0 (4714-11-24 BC) up to these ends, exclusive.
DATE_END_JULIAN = 2147483494  # 5874898-01-01
MIN_TIMESTAMP = -211813488000000000  # 4714-11-24 00:00:00 BC
END_TIMESTAMP = 9223371331200000000  # 294277-01-01 00:00:00
TZDISP_LIMIT = (15 * 60 + 59) * 60 + 59  # largest timetz offset, seconds

NUMERIC_POS, NUMERIC_NEG, NUMERIC_NAN = 0x0000, 0x4000, 0xC000
NUMERIC_PINF, NUMERIC_NINF = 0xD000, 0xF000
NUMERIC_DSCALE_MAX = 0x3FFF
NUMERIC_MAX_WEIGHT = 32767  # int16 on the wire (the server's own limit is lower: 131072 digits)


def _date2j(year: int, month: int, day: int) -> int:
    """Julian day of a proleptic Gregorian date (year 0 = 1 BC), as the server's date2j."""
    if month > 2:
        month += 1
        year += 4800
    else:
        month += 13
        year += 4799
    century = year // 100
    julian = year * 365 - 32167
    julian += year // 4 - century + century // 4
    julian += 7834 * month // 256 + day
    return julian


def _j2date(jd: int) -> tuple[int, int, int]:
    """(year, month, day) of a Julian day >= 0, as the server's j2date."""
    julian = jd + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    quad = julian * 2141 // 65536
    day = julian - 7834 * quad // 256
    month = (quad + 10) % 12 + 1
    return y - 4800, month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _date_text(jd: int) -> str:
    year, month, day = _j2date(jd)
    if year > 0:
        return f"{year:04d}-{month:02d}-{day:02d}"
    return f"{1 - year:04d}-{month:02d}-{day:02d}"  # the caller appends " BC"


def _time_text(usec: int) -> str:
    """HH:MM:SS[.ffffff] with trailing zeros of the fraction dropped (AppendSeconds)."""
    secs, frac = divmod(usec, USECS_PER_SEC)
    minutes, sec = divmod(secs, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{sec:02d}"
    if frac:
        text += f".{frac:06d}".rstrip("0")
    return text


def _offset_text(east: int) -> str:
    """A UTC offset in seconds east, as EncodeTimezone writes it: +HH[:MM[:SS]]."""
    sign = "-" if east < 0 else "+"
    east = abs(east)
    hour, rest = divmod(east, 3600)
    minute, sec = divmod(rest, 60)
    if sec:
        return f"{sign}{hour:02d}:{minute:02d}:{sec:02d}"
    if minute:
        return f"{sign}{hour:02d}:{minute:02d}"
    return f"{sign}{hour:02d}"


def _timestamp_text(usec: int, utc_suffix: bool) -> bytes:
    if usec == _I64_MAX:
        return b"infinity"
    if usec == _I64_MIN:
        return b"-infinity"
    if not MIN_TIMESTAMP <= usec < END_TIMESTAMP:
        raise ValueError("timestamp out of range")
    days, tod = divmod(usec, USECS_PER_DAY)
    jd = days + POSTGRES_EPOCH_JDATE
    year = _j2date(jd)[0]
    text = _date_text(jd) + " " + _time_text(tod)
    if utc_suffix:
        text += "+00"
    if year <= 0:
        text += " BC"
    return text.encode("ascii")


# Shortest-exact float output (float.c with extra_float_digits = 1): the shortest digits that
# read back as the same value, in exponent form when the decimal exponent is < -4 or >= the
# type's precision (15 for float8, 6 for float4), the exponent signed and at least 2 digits.


def _float_digits(x: float, single: bool) -> tuple[str, int]:
    """(digits without trailing zeros, decimal exponent of the first digit) of x > 0."""
    if single:
        # The shortest digits that read back as x (strtof rounds to nearest, ties to even) and
        # are not exactly halfway to a neighbour: the server's Ryu output excludes the bounds.
        bits = _U32.unpack(_F32.pack(x))[0]
        up = _F32.unpack(_U32.pack(bits + 1))[0] if bits < 0x7F7FFFFF else math.inf
        down = _F32.unpack(_U32.pack(bits - 1))[0] if bits > 0 else 0.0
        ties = ((x + up) / 2, (x + down) / 2)
        s = "%.8e" % x
        for precision in range(1, 9):
            candidate = "%.*e" % (precision - 1, x)
            v = float(candidate)
            try:
                back = _F32.unpack(_F32.pack(v))[0]
            except OverflowError:
                continue
            if back == x and v not in ties:
                s = candidate
                break
        mantissa, _, exponent = s.partition("e")
        return mantissa.replace(".", "").rstrip("0") or "0", int(exponent)
    _, digit_tuple, exp = Decimal(repr(x)).as_tuple()  # repr: the shortest round trip
    assert isinstance(exp, int)
    return "".join(map(str, digit_tuple)).rstrip("0") or "0", exp + len(digit_tuple) - 1


def _float_text(x: float, single: bool) -> bytes:
    if x != x:
        return b"NaN"
    if math.isinf(x):
        return b"Infinity" if x > 0 else b"-Infinity"
    if x == 0:
        return b"-0" if math.copysign(1.0, x) < 0 else b"0"
    digits, exp = _float_digits(abs(x), single)
    sign = "-" if x < 0 else ""
    if exp < -4 or exp >= (6 if single else 15):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}".encode("ascii")
    if exp >= 0:
        whole = digits[: exp + 1].ljust(exp + 1, "0")
        frac = digits[exp + 1 :]
        return f"{sign}{whole}{'.' + frac if frac else ''}".encode("ascii")
    return f"{sign}0.{'0' * (-exp - 1)}{digits}".encode("ascii")


def _numeric_text(value: bytes) -> bytes:
    if len(value) < 8:
        raise ValueError("numeric value too short")
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(value)
    if len(value) != 8 + 2 * ndigits:
        raise ValueError("numeric length does not match its digit count")
    if sign == NUMERIC_NAN:
        return b"NaN"
    if sign == NUMERIC_PINF:
        return b"Infinity"
    if sign == NUMERIC_NINF:
        return b"-Infinity"
    if sign not in (NUMERIC_POS, NUMERIC_NEG) or dscale > NUMERIC_DSCALE_MAX:
        raise ValueError("invalid numeric sign or scale")
    digits = struct.unpack(f"!{ndigits}H", value[8:])
    if any(d >= 10000 for d in digits):
        raise ValueError("invalid numeric digit")
    coeff = int("".join(f"{d:04d}" for d in digits)) if digits else 0
    exp10 = 4 * (weight - ndigits + 1)  # value = coeff * 10**exp10
    if exp10 >= 0:
        whole, frac = coeff * 10**exp10, ""
    else:
        whole, rest = divmod(coeff, 10**-exp10)
        frac = f"{rest:0{-exp10}d}"
    # get_str_from_var: exactly dscale fraction digits (truncating, padding with zeros).
    frac = frac[:dscale].ljust(dscale, "0")
    text = f"{'-' if sign == NUMERIC_NEG else ''}{whole}"
    if dscale:
        text += "." + frac
    return text.encode("ascii")


def _numeric_binary(text: bytes) -> bytes:
    try:
        d = Decimal(text.decode("ascii"))
    except (InvalidOperation, UnicodeDecodeError, ValueError):
        raise ValueError("not a numeric") from None
    if d.is_nan():
        return _NUMERIC_HEAD.pack(0, 0, NUMERIC_NAN, 0)
    if d.is_infinite():
        return _NUMERIC_HEAD.pack(0, 0, NUMERIC_NINF if d < 0 else NUMERIC_PINF, 0)
    sign, digit_tuple, exp = d.as_tuple()
    assert isinstance(exp, int)
    dscale = max(0, -exp)
    if dscale > NUMERIC_DSCALE_MAX or exp + len(digit_tuple) > 4 * (NUMERIC_MAX_WEIGHT + 1):
        raise ValueError("numeric out of range")
    s = "".join(map(str, digit_tuple)).lstrip("0")
    if not s:
        return _NUMERIC_HEAD.pack(0, 0, NUMERIC_POS, dscale)
    if exp > 0:
        s += "0" * exp
        exp = 0
    pad = exp % 4  # zeros that make the fraction a whole number of base-10000 digits
    s += "0" * pad
    frac_groups = (-exp + pad) // 4
    s = "0" * (-len(s) % 4) + s
    groups = [int(s[i : i + 4]) for i in range(0, len(s), 4)]
    weight = len(groups) - frac_groups - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if weight > NUMERIC_MAX_WEIGHT or weight < -NUMERIC_MAX_WEIGHT - 1:
        raise ValueError("numeric out of range")
    head = _NUMERIC_HEAD.pack(len(groups), weight, NUMERIC_NEG if sign else NUMERIC_POS, dscale)
    return head + struct.pack(f"!{len(groups)}H", *groups)


_SPACE = b" \t\n\r\f\v"

_DATE_RE = re.compile(
    rb"(\d{4,})-(\d{1,2})-(\d{1,2})"
    rb"(?:(?:[ T]|\s+)(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d*))?)?)?"
    rb"\s*(Z|[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?)?"
    rb"\s*(BC|AD)?",
    re.IGNORECASE,
)
_TIME_RE = re.compile(
    rb"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d*))?)?"
    rb"\s*(Z|[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?)?",
    re.IGNORECASE,
)


def _fraction_usec(frac: bytes | None) -> int:
    if not frac:
        return 0
    if len(frac) <= 6:
        return int(frac.ljust(6, b"0"))
    scale: int = 10 ** (len(frac) - 6)
    q, r = divmod(int(frac), scale)
    return q + (1 if 2 * r > scale or (2 * r == scale and q % 2) else 0)  # rint(), half even


def _offset_seconds(tz: bytes | None) -> int:
    """Seconds east of UTC of "+HH[:MM[:SS]]", "+HHMM", "Z"."""
    if not tz or tz in (b"Z", b"z"):
        return 0
    sign = -1 if tz[:1] == b"-" else 1
    body = tz[1:].replace(b":", b"")
    if len(body) <= 2:
        h, m, s = int(body), 0, 0
    elif len(body) in (3, 4):
        h, m, s = int(body[:-2]), int(body[-2:]), 0
    else:
        h, m, s = int(body[:-4]), int(body[-4:-2]), int(body[-2:])
    if m > 59 or s > 59:
        raise ValueError("invalid UTC offset")
    east = sign * (h * 3600 + m * 60 + s)
    if abs(east) > TZDISP_LIMIT:
        raise ValueError("UTC offset out of range")
    return east


def _parse_datetime(text: bytes) -> tuple[int, int, int] | bytes:
    """(Julian day, microseconds into the day (may be 86400 s + ...), seconds east of UTC),
    or b"infinity" / b"-infinity"."""
    t = text.strip(_SPACE)
    low = t.lower()
    if low in (b"infinity", b"+infinity"):
        return b"infinity"
    if low == b"-infinity":
        return b"-infinity"
    m = _DATE_RE.fullmatch(t)
    if m is None:
        raise ValueError("not an ISO date / timestamp")
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    if m[9] is not None and m[9].upper() == b"BC":
        if year == 0:
            raise ValueError("year 0 BC")
        year = 1 - year
    elif year == 0:
        raise ValueError("year 0")
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise ValueError("invalid date")
    usec = 0
    if m[4] is not None:
        hour, minute, sec = int(m[4]), int(m[5]), int(m[6] or 0)
        if hour > 24 or minute > 59 or sec > 60:
            raise ValueError("invalid time")
        usec = ((hour * 60 + minute) * 60 + sec) * USECS_PER_SEC + _fraction_usec(m[7])
        if usec > USECS_PER_DAY:
            raise ValueError("invalid time")
    return _date2j(year, month, day), usec, _offset_seconds(m[8])


def _parse_time(text: bytes) -> tuple[int, int | None]:
    """(microseconds since midnight, seconds east of UTC or None when no offset is given)."""
    m = _TIME_RE.fullmatch(text.strip(_SPACE))
    if m is None:
        raise ValueError("not a time")
    hour, minute, sec = int(m[1]), int(m[2]), int(m[3] or 0)
    if hour > 24 or minute > 59 or sec > 60:
        raise ValueError("invalid time")
    usec = ((hour * 60 + minute) * 60 + sec) * USECS_PER_SEC + _fraction_usec(m[4])
    if usec > USECS_PER_DAY:
        raise ValueError("time out of range")
    return usec, (None if m[5] is None else _offset_seconds(m[5]))


def _b2t_identity(value: bytes) -> bytes:
    return value


def _t2b_identity(text: bytes) -> bytes:
    return text


def _b2t_char(value: bytes) -> bytes:  # charout
    if len(value) != 1:
        raise ValueError('"char" is one byte')
    c = value[0]
    if c == 0:
        return b""
    if c >= 0x80:
        return b"\\%03o" % c
    return value


def _t2b_char(text: bytes) -> bytes:  # charin
    if len(text) == 4 and text[0] == 0x5C and all(0x30 <= c <= 0x37 for c in text[1:]):
        return bytes((int(text[1:], 8) & 0xFF,))
    return text[:1] or b"\x00"


def _int_b2t(fmt: struct.Struct) -> Callable[[bytes], bytes]:
    def convert(value: bytes) -> bytes:
        if len(value) != fmt.size:
            raise ValueError("integer of the wrong width")
        return b"%d" % fmt.unpack(value)[0]

    return convert


def _int_t2b(fmt: struct.Struct, low: int, high: int) -> Callable[[bytes], bytes]:
    def convert(text: bytes) -> bytes:
        v = int(text)
        if not low <= v <= high:
            raise ValueError("integer out of range")
        return fmt.pack(v)

    return convert


def _t2b_oid(text: bytes) -> bytes:
    v = int(text)
    if not _I32_MIN <= v < 1 << 32:
        raise ValueError("oid out of range")
    return _U32.pack(v & 0xFFFFFFFF)


def _b2t_float4(value: bytes) -> bytes:
    if len(value) != 4:
        raise ValueError("float4 is 4 bytes")
    return _float_text(_F32.unpack(value)[0], True)


def _b2t_float8(value: bytes) -> bytes:
    if len(value) != 8:
        raise ValueError("float8 is 8 bytes")
    return _float_text(_F64.unpack(value)[0], False)


def _parse_float(text: bytes) -> float:
    t = text.strip(_SPACE)
    if b"_" in t:
        raise ValueError("no underscores in floats")
    return float(t)


def _t2b_float4(text: bytes) -> bytes:
    return _F32.pack(_parse_float(text))  # OverflowError beyond the float4 range


def _t2b_float8(text: bytes) -> bytes:
    return _F64.pack(_parse_float(text))


def _b2t_bool(value: bytes) -> bytes:
    if len(value) != 1:
        raise ValueError("bool is 1 byte")
    return b"t" if value[0] else b"f"


_TRUE = frozenset((b"t", b"tr", b"tru", b"true", b"y", b"ye", b"yes", b"on", b"1"))
_FALSE = frozenset((b"f", b"fa", b"fal", b"fals", b"false", b"n", b"no", b"of", b"off", b"0"))


def _t2b_bool(text: bytes) -> bytes:
    t = text.strip(_SPACE).lower()
    if t in _TRUE:
        return b"\x01"
    if t in _FALSE:
        return b"\x00"
    raise ValueError("not a boolean")


def _b2t_date(value: bytes) -> bytes:
    if len(value) != 4:
        raise ValueError("date is 4 bytes")
    days = _I32.unpack(value)[0]
    if days == _I32_MAX:
        return b"infinity"
    if days == _I32_MIN:
        return b"-infinity"
    jd = days + POSTGRES_EPOCH_JDATE
    if not 0 <= jd < DATE_END_JULIAN:
        raise ValueError("date out of range")
    text = _date_text(jd)
    return (text + " BC" if _j2date(jd)[0] <= 0 else text).encode("ascii")


def _t2b_date(text: bytes) -> bytes:
    parsed = _parse_datetime(text)
    if parsed == b"infinity":
        return _I32.pack(_I32_MAX)
    if parsed == b"-infinity":
        return _I32.pack(_I32_MIN)
    assert isinstance(parsed, tuple)
    jd = parsed[0]
    if not 0 <= jd < DATE_END_JULIAN:
        raise ValueError("date out of range")
    return _I32.pack(jd - POSTGRES_EPOCH_JDATE)


def _b2t_timestamp(value: bytes) -> bytes:
    if len(value) != 8:
        raise ValueError("timestamp is 8 bytes")
    return _timestamp_text(_I64.unpack(value)[0], False)


def _b2t_timestamptz(value: bytes) -> bytes:
    if len(value) != 8:
        raise ValueError("timestamptz is 8 bytes")
    return _timestamp_text(_I64.unpack(value)[0], True)


def _timestamp_binary(text: bytes, with_zone: bool) -> bytes:
    parsed = _parse_datetime(text)
    if parsed == b"infinity":
        return _I64.pack(_I64_MAX)
    if parsed == b"-infinity":
        return _I64.pack(_I64_MIN)
    assert isinstance(parsed, tuple)
    jd, usec, east = parsed
    # A timestamp without time zone ignores a given offset, as the server does.
    t = (jd - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY + usec
    if with_zone:
        t -= east * USECS_PER_SEC
    if not MIN_TIMESTAMP <= t < END_TIMESTAMP:
        raise ValueError("timestamp out of range")
    return _I64.pack(t)


def _t2b_timestamp(text: bytes) -> bytes:
    return _timestamp_binary(text, False)


def _t2b_timestamptz(text: bytes) -> bytes:
    return _timestamp_binary(text, True)


def _b2t_time(value: bytes) -> bytes:
    if len(value) != 8:
        raise ValueError("time is 8 bytes")
    usec = _I64.unpack(value)[0]
    if not 0 <= usec <= USECS_PER_DAY:
        raise ValueError("time out of range")
    return _time_text(usec).encode("ascii")


def _t2b_time(text: bytes) -> bytes:
    return _I64.pack(_parse_time(text)[0])  # an offset is ignored, as by time_in


def _b2t_timetz(value: bytes) -> bytes:
    if len(value) != 12:
        raise ValueError("timetz is 12 bytes")
    usec, zone = _TIMETZ.unpack(value)  # zone: seconds *west* of UTC
    if not 0 <= usec <= USECS_PER_DAY or abs(zone) > TZDISP_LIMIT:
        raise ValueError("timetz out of range")
    return (_time_text(usec) + _offset_text(-zone)).encode("ascii")


def _t2b_timetz(text: bytes) -> bytes:
    usec, east = _parse_time(text)
    return _TIMETZ.pack(usec, -(east or 0))


def _b2t_uuid(value: bytes) -> bytes:
    if len(value) != 16:
        raise ValueError("uuid is 16 bytes")
    h = value.hex().encode("ascii")
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


def _t2b_uuid(text: bytes) -> bytes:
    return uuid.UUID(text.strip(_SPACE).decode("ascii")).bytes


def _b2t_jsonb(value: bytes) -> bytes:
    if value[:1] != b"\x01":
        raise ValueError("unknown jsonb version")
    return value[1:]


def _t2b_jsonb(text: bytes) -> bytes:
    return b"\x01" + text


def _b2t_bytea(value: bytes) -> bytes:
    return b"\\x" + value.hex().encode("ascii")


_BYTEA_ESCAPE = re.compile(rb"\\(?:([0-3][0-7]{2})|(\\))")


def _t2b_bytea(text: bytes) -> bytes:
    if text[:2] == b"\\x":
        return bytes.fromhex(text[2:].decode("ascii"))
    # Escape format: \\ and \ooo; any other backslash is an error, as in byteain.
    if b"\\" not in text:
        return text
    out = bytearray()
    pos = 0
    for m in _BYTEA_ESCAPE.finditer(text):
        if b"\\" in text[pos : m.start()]:
            raise ValueError("invalid bytea escape")
        out += text[pos : m.start()]
        out.append(int(m[1], 8) if m[1] else 0x5C)
        pos = m.end()
    if b"\\" in text[pos:]:
        raise ValueError("invalid bytea escape")
    out += text[pos:]
    return bytes(out)


_B2T: dict[int, Callable[[bytes], bytes]] = {
    TEXT: _b2t_identity, VARCHAR: _b2t_identity, BPCHAR: _b2t_identity, NAME: _b2t_identity,
    UNKNOWN: _b2t_identity, CHAR: _b2t_char,
    INT2: _int_b2t(_I16), INT4: _int_b2t(_I32), INT8: _int_b2t(_I64), OID: _int_b2t(_U32),
    NUMERIC: _numeric_text,
    FLOAT4: _b2t_float4, FLOAT8: _b2t_float8,
    BOOL: _b2t_bool,
    DATE: _b2t_date, TIMESTAMP: _b2t_timestamp, TIMESTAMPTZ: _b2t_timestamptz,
    TIME: _b2t_time, TIMETZ: _b2t_timetz,
    UUID: _b2t_uuid,
    JSON: _b2t_identity, JSONB: _b2t_jsonb,
    BYTEA: _b2t_bytea,
}
_T2B: dict[int, Callable[[bytes], bytes]] = {
    TEXT: _t2b_identity, VARCHAR: _t2b_identity, BPCHAR: _t2b_identity, NAME: _t2b_identity,
    UNKNOWN: _t2b_identity, CHAR: _t2b_char,
    INT2: _int_t2b(_I16, -(1 << 15), (1 << 15) - 1),
    INT4: _int_t2b(_I32, _I32_MIN, _I32_MAX),
    INT8: _int_t2b(_I64, _I64_MIN, _I64_MAX),
    OID: _t2b_oid,
    NUMERIC: _numeric_binary,
    FLOAT4: _t2b_float4, FLOAT8: _t2b_float8,
    BOOL: _t2b_bool,
    DATE: _t2b_date, TIMESTAMP: _t2b_timestamp, TIMESTAMPTZ: _t2b_timestamptz,
    TIME: _t2b_time, TIMETZ: _t2b_timetz,
    UUID: _t2b_uuid,
    JSON: _t2b_identity, JSONB: _t2b_jsonb,
    BYTEA: _t2b_bytea,
}
_IDENTITY_TYPES = frozenset((TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, JSON))
_CONVERSION_ERRORS = (ValueError, struct.error, OverflowError, UnicodeDecodeError, TypeError)


def binary_to_text(type_oid: int, value: bytes) -> bytes | None:
    """The text form of a binary-format value, or None when there is none (type without a
    converter here, malformed or out-of-range value)."""
    convert = _B2T.get(type_oid)
    if convert is None:
        return None
    try:
        return convert(bytes(value))
    except _CONVERSION_ERRORS:
        return None


def text_to_binary(type_oid: int, text: bytes) -> bytes | None:
    """The binary form of a value given as text, or None when the text is not a valid value of
    the type (or the type has no converter here)."""
    convert = _T2B.get(type_oid)
    if convert is None:
        return None
    try:
        return convert(bytes(text))
    except _CONVERSION_ERRORS:
        return None


# --------------------------------------------------------------------------------------------
# DataRow masking

_NULL_LENGTH = b"\xff\xff\xff\xff"
_unpack_i16 = _I16.unpack_from
_unpack_i32 = _I32.unpack_from
_pack_i32 = _I32.pack
ColumnFn = Callable[[bytes], "bytes | None"]


def _binary_column(type_oid: int, masker: Masker) -> ColumnFn:
    """A masker over the binary form: binary -> text -> masker -> binary. Returns its argument
    (the same object) when the masked text is unchanged, None when the value must become NULL."""
    to_text = _B2T.get(type_oid)
    to_binary = _T2B.get(type_oid)
    if to_text is None or to_binary is None:
        return lambda value: None  # no text form known: fail closed
    if type_oid in _IDENTITY_TYPES:
        return masker  # the binary form is the text form

    def column(value: bytes) -> bytes | None:
        try:
            text = to_text(value)
        except _CONVERSION_ERRORS:
            return None
        masked = masker(text)
        if masked is text or masked == text:
            return value
        if masked is None:
            return None
        try:
            return to_binary(bytes(masked))
        except _CONVERSION_ERRORS:
            return None

    return column


_SMALL_LENGTHS: Final = tuple(struct.pack("!i", i) for i in range(256))
_FAST_CODES: Final = {"const": 1, "null": 2, "partial": 3, "email": 4}


def _fast_entry(entry: object) -> tuple[object, ...] | None:
    """A `_rowwalk` plan entry: (masker, count index, code, a, b); see _rowwalk.pyx."""
    if entry is None:
        return None
    fn, index = entry if type(entry) is tuple else (entry, -1)  # type: ignore[misc]
    fast = getattr(fn, "fast", None)
    if fast is None:
        return (fn, index, 0, None, None)
    name, *args = fast
    args += [None] * (2 - len(args))
    return (fn, index, _FAST_CODES[name], args[0], args[1])


class RowMasker:
    """Masks the DataRows of one result shape. Build it once per RowDescription (and per Bind's
    result formats), then call `mask_datarow` / `mask_datarow_message` for every row."""

    __slots__ = ("_plan", "_ncols", "type_oids", "formats", "_counts", "_last", "_fast_plan", "_fast_counts")

    def __init__(
        self,
        type_oids: Sequence[int],
        formats: Sequence[int],
        maskers: Sequence[Masker | None],
        *,
        counts: list[int] | None = None,
        counted: Sequence[bool] | None = None,
    ) -> None:
        """`counts` (optional, one per column): incremented for each non-NULL value handed to
        the masker of a column whose `counted` flag is set (the audit's masked-value counts)."""
        if not len(type_oids) == len(formats) == len(maskers):
            raise ValueError("type_oids, formats and maskers must have one entry per column")
        plan: list[ColumnFn | None] = []
        for oid, fmt, masker in zip(type_oids, formats, maskers):
            if fmt not in (0, 1):
                raise ValueError(f"unknown format code {fmt}")
            if masker is None:
                plan.append(None)
            elif fmt == 0:
                plan.append(masker)
            else:
                plan.append(_binary_column(oid, masker))
        self._plan: tuple[ColumnFn | None, ...] = tuple(plan)
        self._ncols = len(plan)
        self._counts = counts
        self._last = max((i for i, fn in enumerate(plan) if fn is not None), default=-1)
        # The compiled walk's plan: up to the last masked column, (masker, count index or -1).
        if counts is not None:
            flags = tuple(counted) if counted is not None else tuple(m is not None for m in maskers)
            # Wrap nothing: count in the row loop (a closure per value costs more).
            self._plan = tuple(
                (fn, i) if fn is not None and flags[i] else fn  # type: ignore[misc]
                for i, fn in enumerate(self._plan)
            )
        self.type_oids = tuple(type_oids)
        self.formats = tuple(formats)
        self._fast_plan = tuple(_fast_entry(e) for e in self._plan[: self._last + 1])
        self._fast_counts = counts if counts is not None else []

    @classmethod
    def from_fields(
        cls, fields: Sequence[FieldDescription], maskers: Sequence[Masker | None]
    ) -> "RowMasker":
        """From the fields of a decoded RowDescription (`codec.RowDescription.fields`)."""
        return cls([f.type_oid for f in fields], [f.format for f in fields], maskers)

    def mask_datarow(self, body: bytes | bytearray | memoryview) -> bytes | None:
        """The masked DataRow body, or None when no value changed. Raises ValueError for a
        malformed body (wrong column count, bad or overrunning lengths, trailing bytes).

        Hot path (one call per row of a masked result): the columns after the last masked one
        are walked by a separate, cheaper loop that only checks their lengths."""
        if type(body) is not bytes:
            body = bytes(body)
        size = len(body)
        if size < 2:
            raise ValueError("DataRow is truncated")
        if _unpack_i16(body, 0)[0] != self._ncols:
            raise ValueError(
                f"DataRow has {_unpack_i16(body, 0)[0]} columns, expected {self._ncols}"
            )
        unpack = _unpack_i32
        pos = 2
        parts: list[bytes] | None = None
        prev = 0
        counts = self._counts
        try:
            for fn in self._plan:
                n = unpack(body, pos)[0]
                if fn is None:
                    pos += 4 + n if n > 0 else 4
                    if n < -1:
                        raise ValueError(f"invalid value length {n}")
                    continue
                start = pos
                pos += 4
                if n < 0:
                    if n != -1:
                        raise ValueError(f"invalid value length {n}")
                    continue
                end = pos + n
                if end > size:
                    raise ValueError("DataRow is truncated")
                value = body[pos:end]
                if type(fn) is tuple:
                    fn, index = fn
                    counts[index] += 1  # type: ignore[index]
                new = fn(value)
                pos = end
                if new is value or new == value:
                    continue
                if parts is None:
                    parts = []
                parts.append(body[prev:start])
                if new is None:
                    parts.append(_NULL_LENGTH)
                else:
                    if type(new) is not bytes:
                        new = bytes(new)
                    parts.append(_pack_i32(len(new)))
                    parts.append(new)
                prev = end
        except struct.error:
            raise ValueError("DataRow is truncated") from None
        if pos != size:
            raise ValueError("DataRow is truncated" if pos > size else "bytes after the last column")
        if parts is None:
            return None
        parts.append(body[prev:])
        return b"".join(parts)

    def mask_rows(self, data: bytes, pos: int, limit: int) -> tuple[list[bytes], int]:
        """Mask the run of complete DataRow messages in `data[pos:limit]` (see
        `_mask_rows_py`); the compiled `_rowwalk` does it when it was built."""
        if _rowwalk is not None:
            return _rowwalk.mask_rows(data, pos, limit, self._ncols, self._fast_plan, self._fast_counts)  # type: ignore[no-any-return]
        return self._mask_rows_py(data, pos, limit)

    def _mask_rows_py(self, data: bytes, pos: int, limit: int) -> tuple[list[bytes], int]:
        try:
            return self._walk_rows(data, pos, limit)
        except struct.error:  # a length field runs past the buffer
            raise ValueError("DataRow is truncated") from None

    def _walk_rows(self, data: bytes, pos: int, limit: int) -> tuple[list[bytes], int]:
        """Mask the run of complete DataRow messages in `data[pos:limit]` (the relay's buffer):
        returns the bytes to send in their place (unchanged rows as slices, changed rows
        re-framed) and the position after the last complete DataRow. Stops at the first
        message that is not a complete DataRow. ValueError on a malformed row.

        The relay's hot path: one call per received chunk, everything in locals."""
        out: list[bytes] = []
        seg = pos
        # Columns after the last masked one are not walked: their bytes are copied as they came
        # (nothing in them is masked; the message length frames the row).
        plan = self._plan[: self._last + 1]
        ncols = self._ncols
        counts = self._counts
        unpack = _unpack_i32
        unpack16 = _unpack_i16
        pack = _pack_i32
        lengths = _SMALL_LENGTHS
        null = _NULL_LENGTH
        while limit - pos >= 7 and data[pos] == 0x44:
            end = pos + 1 + unpack(data, pos + 1)[0]
            if end > limit:
                break
            if unpack16(data, pos + 5)[0] != ncols:
                raise ValueError(f"DataRow has {unpack16(data, pos + 5)[0]} columns, expected {ncols}")
            p = pos + 7
            prev = pos + 5
            row: list[bytes] | None = None
            delta = 0
            for fn in plan:
                n = unpack(data, p)[0]
                if fn is None:
                    if n > 0:
                        p += 4 + n
                    elif n == -1 or n == 0:
                        p += 4
                    else:
                        raise ValueError(f"invalid value length {n}")
                    continue
                start = p
                p += 4
                if n < 0:
                    if n != -1:
                        raise ValueError(f"invalid value length {n}")
                    continue
                vend = p + n
                if vend > end:
                    raise ValueError("DataRow is truncated")
                value = data[p:vend]
                if type(fn) is tuple:
                    fn, index = fn
                    counts[index] += 1  # type: ignore[index]
                new = fn(value)
                p = vend
                if new is value or new == value:
                    continue
                if row is None:
                    row = [b""]  # the message header, once the new length is known
                row.append(data[prev:start])
                if new is None:
                    row.append(null)
                    delta -= n
                else:
                    if type(new) is not bytes:
                        new = bytes(new)
                    size = len(new)
                    row.append((lengths[size] if size < 256 else pack(size)) + new)
                    delta += size - n
                prev = vend
            if p > end:
                raise ValueError("DataRow is truncated")
            if row is not None:
                if seg < pos:
                    out.append(data[seg:pos])
                row[0] = b"D" + pack(end - pos - 1 + delta)
                row.append(data[prev:end])
                out.append(b"".join(row))
                seg = end
            pos = end
        if seg < pos:
            out.append(data[seg:pos])
        return out, pos

    def mask_datarow_message(self, msg: bytes | bytearray | memoryview) -> bytes:
        """A complete DataRow message ('D', Int32 length, body), masked and re-framed; the same
        object when nothing changed (if it was bytes). ValueError if it is not a valid DataRow."""
        if type(msg) is not bytes:
            msg = bytes(msg)
        if len(msg) < 5 or msg[0] != 0x44:
            raise ValueError("not a DataRow message")
        if _unpack_i32(msg, 1)[0] != len(msg) - 1:
            raise ValueError("DataRow length does not match the message")
        body = self.mask_datarow(memoryview(msg)[5:])
        if body is None:
            return msg
        return b"D" + _pack_i32(len(body) + 4) + body


# --------------------------------------------------------------------------------------------
# COPY TO STDOUT, text format

_COPY_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_COPY_LETTERS = {b"b": b"\x08", b"f": b"\x0c", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\x0b"}
# CopyAttributeOutText: these control characters are written as letter escapes.
_COPY_ESCAPES = {
    0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x0B: b"\\v",
    0x5C: b"\\\\",
}


def _copy_unescape_one(m: re.Match[bytes]) -> bytes:
    if m[1] is not None:
        return bytes((int(m[1], 8) & 0xFF,))
    if m[2] is not None:
        return bytes((int(m[2], 16),))
    c = m[3]
    return _COPY_LETTERS.get(c, c)


def _copy_unescape(raw: bytes) -> bytes:
    if raw.endswith(b"\\") and (len(raw) - len(raw.rstrip(b"\\"))) % 2:
        raise ValueError("COPY field ends with a lone backslash")
    return _COPY_UNESCAPE.sub(_copy_unescape_one, raw)


def _merge_escaped(fields: list[bytes], delimiter: bytes) -> list[bytes]:
    """Rejoin pieces split at a delimiter that was escaped (preceded by an odd number of
    backslashes)."""
    out: list[bytes] = []
    for piece in fields:
        if out:
            last = out[-1]
            if last.endswith(b"\\") and (len(last) - len(last.rstrip(b"\\"))) % 2:
                out[-1] = last + delimiter + piece
                continue
        out.append(piece)
    return out


def _split_line(line: bytes) -> tuple[bytes, bytes]:
    """(row, end of line) of one COPY row; a row holding a line break raises ValueError."""
    if line.endswith(b"\r\n"):
        row, eol = line[:-2], b"\r\n"
    elif line.endswith(b"\n"):
        row, eol = line[:-1], b"\n"
    else:
        row, eol = line, b""
    return row, eol


def _masked_columns(maskers: Sequence[Masker | None]) -> tuple[tuple[int, Masker], ...]:
    return tuple((i, m) for i, m in enumerate(maskers) if m is not None)


class CopyTextMasker:
    """Masks rows of COPY ... TO STDOUT in text format (the default): fields separated by the
    delimiter (tab), NULL written as the null string (\\N), backslash escapes in values.

    `mask_line(line)` takes one row with or without its line end and returns it masked (the very
    same object when nothing changed). Masked fields are decoded (\\b \\f \\n \\r \\t \\v, \\\\,
    \\ooo octal, \\xhh hex, backslash + any other character) before the masker sees them and
    re-escaped as the server does (those letters, backslash, and a backslash before the
    delimiter). A row with a raw line break inside, the wrong number of fields or a lone trailing
    backslash raises ValueError. Client encodings that embed ASCII bytes in multibyte characters
    (SJIS, BIG5, GBK, ...) are not supported: the row is read byte-wise.
    """

    __slots__ = ("_masked", "_ncols", "delimiter", "null", "_escape_re", "_escapes")

    def __init__(
        self, maskers: Sequence[Masker | None], delimiter: bytes = b"\t", null: bytes = b"\\N"
    ) -> None:
        if len(delimiter) != 1 or delimiter in (b"\\", b"\n", b"\r"):
            raise ValueError("the COPY delimiter is one byte other than backslash and line ends")
        self._masked = _masked_columns(maskers)
        self._ncols = len(maskers)
        self.delimiter = delimiter
        self.null = null
        escapes = dict(_COPY_ESCAPES)
        escapes.setdefault(delimiter[0], b"\\" + delimiter)
        self._escapes = {bytes((k,)): v for k, v in escapes.items()}
        self._escape_re = re.compile(b"[" + b"".join(re.escape(k) for k in self._escapes) + b"]")

    def _escape(self, value: bytes) -> bytes:
        if self._escape_re.search(value) is None:
            return value
        escapes = self._escapes
        return self._escape_re.sub(lambda m: escapes[m[0]], value)

    def mask_line(self, line: bytes) -> bytes:
        if type(line) is not bytes:
            line = bytes(line)
        row, eol = _split_line(line)
        if b"\n" in row or b"\r" in row:
            raise ValueError("a COPY text row cannot contain a raw line break")
        if row == b"\\.":
            return line  # end-of-data marker (not sent in protocol 3, kept if present)
        fields = row.split(self.delimiter)
        if b"\\" in row:
            fields = _merge_escaped(fields, self.delimiter)
        if len(fields) != self._ncols:
            raise ValueError(f"COPY row has {len(fields)} fields, expected {self._ncols}")
        changed = False
        null = self.null
        for i, masker in self._masked:
            raw = fields[i]
            if raw == null:
                continue
            value = _copy_unescape(raw) if b"\\" in raw else raw
            new = masker(value)
            if new is value or new == value:
                continue
            fields[i] = null if new is None else self._escape(bytes(new))
            changed = True
        if not changed:
            return line
        return self.delimiter.join(fields) + eol


# --------------------------------------------------------------------------------------------
# COPY TO STDOUT, CSV format


class CopyCsvMasker:
    """Masks rows of COPY ... TO STDOUT (FORMAT csv).

    A field is NULL when it is unquoted and equal to the null string (empty by default); a quoted
    section may appear anywhere in a field and holds any bytes, the quote itself written as
    escape + quote (escape defaults to the quote: ""). `mask_line(row)` takes one *complete* row,
    which may span several lines when quoted values hold line breaks: the server sends exactly
    one row per CopyData message, so pass whole CopyData payloads, not lines split at \\n. A row
    whose quotes do not close (a row cut in pieces), or with an unquoted line break before its
    end, raises ValueError, as does a wrong number of fields.

    Masked values are re-encoded as CopyAttributeOutCSV does: quoted when they contain the
    delimiter, the quote, CR or LF, when they equal the null string, or (single-column rows) are
    exactly \\. ; also whenever the original field was quoted (FORCE_QUOTE). Unmasked fields are
    copied byte for byte. The same encoding caveat as for the text format applies.
    """

    __slots__ = (
        "_masked", "_ncols", "delimiter", "quote", "escape", "null", "_field_re", "_section_re",
        "_needs_quote_re", "_unescape_re",
    )

    def __init__(
        self,
        maskers: Sequence[Masker | None],
        delimiter: bytes = b",",
        quote: bytes = b'"',
        null: bytes = b"",
        escape: bytes | None = None,
    ) -> None:
        escape = quote if escape is None else escape
        if len(delimiter) != 1 or len(quote) != 1 or len(escape) != 1:
            raise ValueError("CSV delimiter, quote and escape are single bytes")
        if delimiter == quote or delimiter in (b"\n", b"\r"):
            raise ValueError("invalid CSV delimiter")
        self._masked = _masked_columns(maskers)
        self._ncols = len(maskers)
        self.delimiter, self.quote, self.escape, self.null = delimiter, quote, escape, null
        d, q, e = re.escape(delimiter), re.escape(quote), re.escape(escape)
        # Possessive loops: "" inside quotes is always an escaped quote, never a close and a
        # reopen, so a failing match cannot backtrack exponentially.
        if escape == quote:
            inner = b"(?:[^" + q + b"]|" + q + q + b")*+"
        else:
            inner = b"(?:[^" + q + e + b"]|" + e + b"[" + q + e + b"]|" + e + b"(?![" + q + e + b"]))*+"
        self._section_re = re.compile(q + b"(" + inner + b")" + q, re.DOTALL)
        # A field: unquoted bytes (no line breaks) and quoted sections (anything).
        self._field_re = re.compile(b"(?:[^" + d + q + b"\r\n]|" + q + inner + q + b")*+", re.DOTALL)
        self._needs_quote_re = re.compile(b"[" + d + q + b"\r\n]")
        self._unescape_re = re.compile(e + b"([" + q + e + b"])")

    def _split(self, row: bytes) -> list[bytes]:
        if self.quote not in row:
            if b"\n" in row or b"\r" in row:
                raise ValueError("unquoted line break in a CSV row")
            return row.split(self.delimiter)
        fields: list[bytes] = []
        pos, size, delim = 0, len(row), self.delimiter[0]
        match = self._field_re.match
        while True:
            m = match(row, pos)
            assert m is not None  # the pattern matches the empty string
            end = m.end()
            fields.append(row[pos:end])
            if end == size:
                break
            if row[end] != delim:
                raise ValueError(
                    "unterminated quoted field or unquoted line break in a CSV row"
                    " (pass one complete row)"
                )
            pos = end + 1
        return fields

    def _section(self, m: re.Match[bytes]) -> bytes:
        inner = m[1]
        if self.escape == self.quote:
            return inner.replace(self.quote + self.quote, self.quote)
        return self._unescape_re.sub(rb"\1", inner)

    def _decode(self, raw: bytes) -> bytes:
        return self._section_re.sub(self._section, raw)

    def _encode(self, value: bytes, force: bool) -> bytes:
        if not force:
            force = (
                value == self.null
                or self._needs_quote_re.search(value) is not None
                or (self._ncols == 1 and value == b"\\.")
            )
        if not force:
            return value
        q, e = self.quote, self.escape
        body = value.replace(e, e + e) if e != q else value
        body = body.replace(q, e + q)
        return q + body + q

    def mask_line(self, line: bytes) -> bytes:
        if type(line) is not bytes:
            line = bytes(line)
        row, eol = _split_line(line)
        fields = self._split(row)
        if len(fields) != self._ncols:
            raise ValueError(f"CSV row has {len(fields)} fields, expected {self._ncols}")
        changed = False
        q = self.quote
        for i, masker in self._masked:
            raw = fields[i]
            quoted = q in raw
            if not quoted:
                if raw == self.null:
                    continue
                value = raw
            else:
                value = self._decode(raw)
            new = masker(value)
            if new is value or new == value:
                continue
            fields[i] = self.null if new is None else self._encode(bytes(new), quoted)
            changed = True
        if not changed:
            return line
        return self.delimiter.join(fields) + eol
