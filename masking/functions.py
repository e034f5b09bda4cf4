"""Masking functions on values in PostgreSQL / MySQL text wire form (sans-IO).

A value arrives as the bytes the server sent in a text-format row (UTF-8): ``b'2024-03-05'``,
``b'12345'``, ``b'alice@example.com'``, ``b'2024-03-05 10:11:12+01'``, ``b't'``, JSON text,
PostgreSQL bytea hex ``b'\\x0a0b'``, ...; ``None`` is SQL NULL. A masked value goes back into the
same row, so it must stay valid for the type the client was told (`TypeKind`): a client parsing it
as that type must not fail.

How it works
------------
`make_masker(spec, kind, hash_key, dialect)` resolves everything that does not depend on the value
once (which function, which constant, the keyed HMAC state, the compiled pattern) and returns a
small closure; `Masker` is a callable object wrapping that closure. Both are built once per column
per statement shape and then called per value, so the per-value work is one closure call plus
what the function itself needs (a constant, one regex match, one HMAC). NULL in is NULL out for
every function. The closures never raise on any byte string: a value the function cannot
interpret (invalid UTF-8, text that is not a number or a date, PostgreSQL ``infinity``, BC dates,
MySQL zero dates, ...) falls back to the kind's redaction constant.

Functions (`MaskSpec.function`) by kind
---------------------------------------
``redact``: a constant valid for the kind (`redaction`): text ``****``; integer, numeric and float
``0``; boolean ``f`` (postgres) / ``0`` (mysql); date ``1970-01-01``; timestamp
``1970-01-01 00:00:00``; timestamptz ``1970-01-01 00:00:00+00`` (postgres; MySQL has no zoned type,
so as timestamp); time ``00:00:00`` (postgres ``timetz`` values, recognised by their UTC offset,
get ``00:00:00+00`` because clients parse timetz with a mandatory offset); uuid the nil UUID; json
``"****"``; bytes empty (postgres ``\\x``, mysql no bytes); other NULL.

``null``: NULL for every kind.

``partial`` (``keep_first``, ``keep_last``; negative counts are taken as 0, which masks more):

- text: characters (code points of the UTF-8 text, not bytes) outside the first ``keep_first``
  and the last ``keep_last`` become ``*``, one per character. When ``keep_first + keep_last`` is
  at least the length, every character becomes ``*`` so a short value is never fully revealed.
- integer and numeric: the same rule over the significant digits (the digits after any leading
  zeros, integer and fraction part together), masked digits becoming ``0``. The sign, the decimal
  point and the number of fraction digits are kept; the leading zeros the masking creates in the
  integer part are stripped (``123456789`` keeping the last 4 gives ``6789``, not ``000006789``,
  so the output has the canonical form the server itself would print), and a result that is
  zero loses its sign. Counting significant digits means zero-filled MySQL integers (``00042``)
  and small fractions (``0.00123``) are short values too and are fully masked.
- other kinds: the redaction constant.

``email``: text of the form ``local@domain.tld`` (one ``@``, no whitespace, dot-separated
non-empty domain labels, alphabetic top-level label of 2+ characters) keeps the first character
of the local part and the whole domain, with a fixed ``****`` so the length does not leak:
``alice@example.com`` -> ``a****@example.com``. A one-character local part is masked entirely
(``*****@example.com``) rather than revealed. Text that is not an email gets the text redaction;
other kinds their redaction.

``hash``: a stable keyed pseudonym, HMAC-SHA256 with ``hash_key`` over the value bytes (for
PostgreSQL bytea in hex form, over the decoded bytes, so a value hashes the same in both
dialects). Same key and value give the same output, in every column of that kind, so joins and
group-bys on pseudonyms still work; without the key the pseudonym cannot be reversed by
dictionary. An empty ``hash_key`` is refused at construction (`ValueError`).

- text: the first 8 digest bytes as 16 lowercase hex characters.
- integer, numeric, float: the first 8 digest bytes as a big-endian integer modulo
  ``int_max + 1``. ``int_max`` defaults to 32767 because `TypeKind` does not say the column's
  width and PostgreSQL ``smallint`` is the narrowest PostgreSQL integer type; collisions (about
  one in 32768 per pair of values) are accepted for a pseudonym. A caller that knows the width
  passes a larger ``int_max`` (2**31 - 1 for ``integer``, 2**63 - 1 for ``bigint``) or a smaller
  one (127 for MySQL ``tinyint``).
- uuid: the first 16 digest bytes as a version 4 / RFC 4122 variant UUID.
- json: the text pseudonym as a JSON string (``"0f3a..."``).
- bytes: the first 16 digest bytes, as bytea hex (postgres) or raw (mysql).
- boolean, date, timestamp, timestamptz, time: the redaction constant (a pseudonym drawn from a
  type this small would either collide constantly or leak the value); other: NULL.

``truncate_date`` (``truncate``): date, timestamp and timestamptz values keep the precision down
to ``year``, ``month``, ``day`` or ``hour``; everything below becomes its minimum (month and day
1, time 00:00:00) and fractional seconds are dropped. A timestamptz keeps its UTC offset suffix as
it was (``2024-03-05 10:11:12.5+05:30`` to ``month`` -> ``2024-03-01 00:00:00+05:30``). A date has
no hour, so ``hour`` keeps the whole date. Only years 0001-9999 with a valid month, day and time
are truncated (the range clients such as Python's `datetime` accept); anything else
(``infinity``, ``2024-03-05 BC``, ``0000-00-00``, year 10000) gets the redaction constant. A
PostgreSQL timestamptz needs its offset (PostgreSQL always prints one); MySQL has no zoned type,
so a MySQL column of kind timestamptz is handled as timestamp (a value with an offset does not
parse). Other kinds get their redaction constant.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Final, get_args

from sqlward.masking.model import DatePart, MaskFunction, MaskSpec, TypeKind

__all__ = [
    "DEFAULT_INT_MAX",
    "DIALECTS",
    "Masker",
    "ValueMasker",
    "make_masker",
    "redaction",
]

ValueMasker = Callable[[bytes | None], bytes | None]

DIALECTS: Final = ("postgres", "mysql")
DEFAULT_INT_MAX: Final = 32767  # PostgreSQL smallint, the narrowest PostgreSQL integer type

_FUNCTIONS: Final[frozenset[str]] = frozenset(get_args(MaskFunction))
_KINDS: Final[frozenset[str]] = frozenset(get_args(TypeKind))
_DATE_PARTS: Final[frozenset[str]] = frozenset(get_args(DatePart))
# The MaskSpec parameters each function reads in `make_masker` (the others read none): a
# `[[masks]]` rule giving an argument to a function that does not read it is a config error.
FUNCTION_ARGUMENTS: Final[dict[str, tuple[str, ...]]] = {"partial": ("keep_first", "keep_last"), "truncate_date": ("truncate",)}

_TEXT_REDACTION: Final = b"****"
_PG_BYTEA_PREFIX: Final = b"\\x"

# Redaction constants valid for each kind; None is SQL NULL.
_REDACTION: Final[dict[str, dict[str, bytes | None]]] = {
    dialect: {
        "text": _TEXT_REDACTION,
        "integer": b"0",
        "numeric": b"0",
        "float": b"0",
        "boolean": b"f" if dialect == "postgres" else b"0",
        "date": b"1970-01-01",
        "timestamp": b"1970-01-01 00:00:00",
        "timestamptz": (
            b"1970-01-01 00:00:00+00" if dialect == "postgres" else b"1970-01-01 00:00:00"
        ),
        "time": b"00:00:00",
        "uuid": b"00000000-0000-0000-0000-000000000000",
        "json": b'"****"',
        "bytes": _PG_BYTEA_PREFIX if dialect == "postgres" else b"",
        "other": None,
    }
    for dialect in DIALECTS
}
_PG_TIMETZ_REDACTION: Final = b"00:00:00+00"

# A PostgreSQL timetz value ends with its UTC offset: 10:11:12+01, 10:11:12.5-03:30.
_TIMETZ_SUFFIX: Final = re.compile(rb"\d[+-]\d{2}(?::\d{2}){0,2}\Z")

# Numbers as PostgreSQL and MySQL print them (no exponent; NaN / Infinity do not match).
_INTEGER: Final = re.compile(rb"(-?)([0-9]+)")
_NUMERIC: Final = re.compile(rb"(-?)([0-9]+)(?:\.([0-9]+))?")

# Dates and timestamps in ISO form (DateStyle ISO; MySQL's only form). Groups: year, month, day,
# separator, hour, minute, second, (fraction dropped), UTC offset sign, hours, minutes, seconds.
_DATE: Final = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_TIMESTAMP: Final = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})([ T])([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?"
)
_TIMESTAMPTZ: Final = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})([ T])([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?"
    rb"([+-]([0-9]{2})(?::([0-9]{2})(?::([0-9]{2}))?)?)"
)
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# An email for the `email` function: decoded text, one @, no whitespace, dotted domain, alphabetic
# top-level label. \w-ish domains (IDN in Unicode form) are allowed.
_EMAIL: Final = re.compile(r"([^\s@]+)@((?:[^\s@.]+\.)+([^\s@.]{2,}))")


def redaction(kind: TypeKind, dialect: str, value: bytes | None = None) -> bytes | None:
    """The `redact` output for `kind` in `dialect` (NULL for ``other``). With `value`, a
    PostgreSQL timetz value (one ending with a UTC offset) gets ``00:00:00+00``."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    if kind not in _KINDS:
        raise ValueError(f"unknown type kind {kind!r}")
    if (
        kind == "time"
        and dialect == "postgres"
        and value is not None
        and _TIMETZ_SUFFIX.search(value) is not None
    ):
        return _PG_TIMETZ_REDACTION
    return _REDACTION[dialect][kind]


def make_masker(
    spec: MaskSpec,
    kind: TypeKind,
    hash_key: bytes,
    dialect: str,
    *,
    int_max: int = DEFAULT_INT_MAX,
) -> ValueMasker:
    """A function masking one column's values (text wire form, None = NULL) as `spec` says, for a
    column of `kind` in `dialect` ("postgres" or "mysql"). Raises `ValueError` for an unknown
    function, kind, dialect or date part, for `hash` with an empty `hash_key`, and for an
    `int_max` outside 1 .. 2**63 - 1. The returned function never raises."""
    function = spec.function
    if function not in _FUNCTIONS:
        raise ValueError(f"unknown masking function {function!r}")
    if kind not in _KINDS:
        raise ValueError(f"unknown type kind {kind!r}")
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    if not 1 <= int_max <= 2**63 - 1:
        raise ValueError(f"int_max must be within 1 .. 2**63 - 1, not {int_max}")
    default = _REDACTION[dialect][kind]

    if function == "null" or default is None:  # "other" masks to NULL whatever the function
        return _null
    if function == "partial":
        keep_first, keep_last = max(spec.keep_first, 0), max(spec.keep_last, 0)
        if kind == "text":
            return _partial_text(keep_first, keep_last)
        if kind == "integer":
            return _partial_number(_INTEGER, keep_first, keep_last, default)
        if kind == "numeric":
            return _partial_number(_NUMERIC, keep_first, keep_last, default)
    elif function == "email":
        if kind == "text":
            return _email
    elif function == "hash":
        if not hash_key:
            raise ValueError("the hash masking function needs a non-empty hash key")
        hashed = _hash(kind, dialect, hash_key, int_max)
        if hashed is not None:
            return hashed
    elif function == "truncate_date":
        if spec.truncate not in _DATE_PARTS:
            raise ValueError(f"unknown date part {spec.truncate!r}")
        if kind == "date":
            return _truncate_date(spec.truncate, default)
        if kind == "timestamp" or kind == "timestamptz":
            zoned = kind == "timestamptz" and dialect == "postgres"  # MySQL: no zoned type
            return _truncate_timestamp(spec.truncate, zoned, default)
    if kind == "time" and dialect == "postgres":
        return _redact_pg_time
    return _constant(default)


class Masker:
    """One column's masking function (see the module docstring): built once per column per
    statement shape, called per value. ``Masker(spec, kind, hash_key, dialect="postgres")(b"x")``.
    """

    __slots__ = ("_fn", "dialect", "kind", "spec")

    def __init__(
        self,
        spec: MaskSpec,
        kind: TypeKind,
        hash_key: bytes,
        *,
        dialect: str,
        int_max: int = DEFAULT_INT_MAX,
    ) -> None:
        self.spec: Final = spec
        self.kind: Final = kind
        self.dialect: Final = dialect
        self._fn: Final = make_masker(spec, kind, hash_key, dialect, int_max=int_max)

    def __call__(self, value: bytes | None) -> bytes | None:
        return self._fn(value)

    def __repr__(self) -> str:
        return f"Masker({self.spec!r}, {self.kind!r}, dialect={self.dialect!r})"


# --- constants ------------------------------------------------------------------------------


def _null(value: bytes | None) -> None:
    return None


def _constant(constant: bytes) -> ValueMasker:
    def mask(value: bytes | None) -> bytes | None:
        return None if value is None else constant

    mask.fast = ("const", constant)  # type: ignore[attr-defined]  # compiled row walk
    return mask


def _redact_pg_time(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    return _PG_TIMETZ_REDACTION if _TIMETZ_SUFFIX.search(value) is not None else b"00:00:00"


# --- partial --------------------------------------------------------------------------------


def _partial_text(keep_first: int, keep_last: int) -> ValueMasker:
    keep = keep_first + keep_last

    stars = [b"*" * i for i in range(64)]

    def mask(value: bytes | None) -> bytes | None:
        if value is None:
            return None
        if value.isascii():  # characters are bytes: no decode / encode
            n = len(value)
            if keep >= n:
                return stars[n] if n < 64 else b"*" * n
            middle = n - keep
            return value[:keep_first] + (stars[middle] if middle < 64 else b"*" * middle) + value[n - keep_last :]
        try:
            text = value.decode()
        except UnicodeDecodeError:
            return _TEXT_REDACTION
        n = len(text)
        if keep >= n:
            return b"*" * n
        return (text[:keep_first] + "*" * (n - keep) + text[n - keep_last :]).encode()

    mask.fast = ("partial", keep_first, keep_last)  # type: ignore[attr-defined]  # compiled row walk
    return mask


def _partial_number(
    pattern: re.Pattern[bytes], keep_first: int, keep_last: int, default: bytes
) -> ValueMasker:
    keep = keep_first + keep_last
    fullmatch = pattern.fullmatch

    def mask(value: bytes | None) -> bytes | None:
        if value is None:
            return None
        m = fullmatch(value)
        if m is None:
            return default
        sign, whole = m.group(1), m.group(2)
        fraction = m.group(3) if m.lastindex == 3 else None
        digits = whole + fraction if fraction is not None else whole
        significant = digits.lstrip(b"0")
        n = len(significant)
        if keep >= n:
            masked = b"0" * len(digits)
        else:
            masked = (
                b"0" * (len(digits) - n)
                + significant[:keep_first]
                + b"0" * (n - keep)
                + significant[n - keep_last :]
            )
        head = masked[: len(whole)].lstrip(b"0") or b"0"
        if fraction is None:
            out = head
        else:
            out = head + b"." + masked[len(whole) :]
        if sign and masked.strip(b"0"):
            return sign + out
        return out

    return mask


# --- email ----------------------------------------------------------------------------------


_EMAIL_ASCII: Final = re.compile(rb"[^\s@]+@(?:[^\s@.]+\.)+[A-Za-z]{2,}")


def _email(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if value.isascii():  # the common case, on bytes (no decode / encode)
        if _EMAIL_ASCII.fullmatch(value) is None:
            return _TEXT_REDACTION
        at = value.index(b"@")
        return (value[:1] if at > 1 else b"*") + b"****" + value[at:]
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return _TEXT_REDACTION
    m = _EMAIL.fullmatch(text)
    if m is None or not m.group(3).isalpha():
        return _TEXT_REDACTION
    local = m.group(1)
    head = local[0] if len(local) > 1 else "*"
    return (head + "****@" + m.group(2)).encode()


# The compiled PostgreSQL row walk (adapters/postgres/_rowwalk.pyx) runs these maskers itself on
# ASCII values; `fast` says which one (and it calls the function for anything else).
_email.fast = ("email", _TEXT_REDACTION)  # type: ignore[attr-defined]
_null.fast = ("null",)  # type: ignore[attr-defined]


# --- hash -----------------------------------------------------------------------------------


def _hash(kind: str, dialect: str, key: bytes, int_max: int) -> ValueMasker | None:
    """The hash masker for `kind`, or None where the kind falls back to its redaction."""
    base = hmac.new(key, digestmod=hashlib.sha256)

    def digest(value: bytes) -> bytes:
        h = base.copy()
        h.update(value)
        return h.digest()

    if kind == "text":

        def mask_text(value: bytes | None) -> bytes | None:
            return None if value is None else digest(value)[:8].hex().encode()

        return mask_text
    if kind == "json":

        def mask_json(value: bytes | None) -> bytes | None:
            return None if value is None else b'"' + digest(value)[:8].hex().encode() + b'"'

        return mask_json
    if kind in ("integer", "numeric", "float"):
        modulus = int_max + 1

        def mask_int(value: bytes | None) -> bytes | None:
            if value is None:
                return None
            return b"%d" % (int.from_bytes(digest(value)[:8], "big") % modulus)

        return mask_int
    if kind == "uuid":

        def mask_uuid(value: bytes | None) -> bytes | None:
            if value is None:
                return None
            d = bytearray(digest(value)[:16])
            d[6] = (d[6] & 0x0F) | 0x40  # version 4
            d[8] = (d[8] & 0x3F) | 0x80  # RFC 4122 variant
            h = d.hex()
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()

        return mask_uuid
    if kind == "bytes":
        if dialect == "mysql":

            def mask_raw(value: bytes | None) -> bytes | None:
                return None if value is None else digest(value)[:16]

            return mask_raw

        def mask_bytea(value: bytes | None) -> bytes | None:
            if value is None:
                return None
            raw = value
            if value[:2] == _PG_BYTEA_PREFIX:
                try:
                    raw = bytes.fromhex(value[2:].decode("ascii"))
                except ValueError:  # not hex after all (UnicodeDecodeError is a ValueError)
                    raw = value
            return _PG_BYTEA_PREFIX + digest(raw)[:16].hex().encode()

        return mask_bytea
    return None


# --- truncate_date --------------------------------------------------------------------------


def _valid_date(year: int, month: int, day: int) -> bool:
    if not (1 <= year <= 9999 and 1 <= month <= 12 and day >= 1):
        return False
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return day <= 29
    return day <= _DAYS_IN_MONTH[month - 1]


def _truncate_date(part: str, default: bytes) -> ValueMasker:
    fullmatch = _DATE.fullmatch

    def mask(value: bytes | None) -> bytes | None:
        if value is None:
            return None
        m = fullmatch(value)
        if m is None:
            return default
        y, mo, d = m.group(1, 2, 3)
        if not _valid_date(int(y), int(mo), int(d)):
            return default
        if part == "year":
            return y + b"-01-01"
        if part == "month":
            return y + b"-" + mo + b"-01"
        return value  # day, hour: a date has nothing below the day

    return mask


def _truncate_timestamp(part: str, zoned: bool, default: bytes) -> ValueMasker:
    fullmatch = (_TIMESTAMPTZ if zoned else _TIMESTAMP).fullmatch

    def mask(value: bytes | None) -> bytes | None:
        if value is None:
            return None
        m = fullmatch(value)
        if m is None:
            return default
        y, mo, d, sep, hh, mi, ss = m.group(1, 2, 3, 4, 5, 6, 7)
        if not _valid_date(int(y), int(mo), int(d)) or int(hh) > 23 or int(mi) > 59 or int(ss) > 59:
            return default
        suffix = b""
        if zoned:
            suffix = m.group(8)
            oh, om, os_ = m.group(9, 10, 11)
            if int(oh) > 23 or int(om or b"0") > 59 or int(os_ or b"0") > 59:
                return default
        if part == "year":
            return y + b"-01-01" + sep + b"00:00:00" + suffix
        if part == "month":
            return y + b"-" + mo + b"-01" + sep + b"00:00:00" + suffix
        if part == "day":
            return y + b"-" + mo + b"-" + d + sep + b"00:00:00" + suffix
        return y + b"-" + mo + b"-" + d + sep + hh + b":00:00" + suffix

    return mask
