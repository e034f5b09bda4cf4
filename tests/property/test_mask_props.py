"""Property tests for masking.functions and masking.classifiers.

1. For every masking function and kind (both dialects), any input value (realistic wire values of
   every kind, arbitrary bytes, invalid UTF-8) gives an output valid for the kind or NULL, and
   masking never raises.
2. Masked text never contains the original value when the original has at least 8 characters and
   the function is redact, email, hash, or partial keeping fewer than len - 4 characters (values
   that are already in masked form, such as a middle made of '*', are fixed points and excluded).
3. Generated valid card numbers, SSNs, IBANs and emails are always detected, alone and embedded in
   random text (joined by whitespace or punctuation, as values in text are).
4. Scanning never raises on arbitrary bytes, and the scanner's pre-filters (the trigger regex and
   the shape gates) hide nothing: with every classifier it reports the first classifier, in the
   fixed order, whose validation alone finds something; each classifier alone reports the same.
"""

from __future__ import annotations

import json
import string
from typing import get_args

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sqlward.masking.classifiers import _FINDERS, CLASSIFIERS, ContentScanner, classify
from sqlward.masking.functions import Masker
from sqlward.masking.model import DatePart, MaskSpec, TypeKind
from tests.unit.test_mask_functions import assert_valid_for_kind

PG = "postgres"
MY = "mysql"
KINDS: tuple[str, ...] = get_args(TypeKind)
FUNCTIONS = ("redact", "null", "partial", "email", "hash", "truncate_date")
PARTS: tuple[str, ...] = get_args(DatePart)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- wire values ----------------------------------------------------------------------------


def _offset(seconds: int) -> str:
    """A UTC offset as PostgreSQL prints it: +HH, +HH:MM or +HH:MM:SS."""
    sign = "-" if seconds < 0 else "+"
    h, rest = divmod(abs(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{sign}{h:02d}" + (f":{m:02d}" if m or s else "") + (f":{s:02d}" if s else "")


_offsets = st.integers(-15 * 3600 - 59 * 60, 15 * 3600 + 59 * 60).map(_offset)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def wire(kind: str) -> st.SearchStrategy[bytes]:
    """Text wire forms of `kind` as PostgreSQL / MySQL send them (and some they send rarely)."""
    if kind == "text":
        return st.text().map(str.encode)
    if kind == "integer":
        plain = st.integers(-(2**63), 2**64).map(lambda i: str(i).encode())
        zerofill = st.integers(0, 99999).map(lambda i: f"{i:08d}".encode())
        return plain | zerofill
    if kind == "numeric":
        finite = st.decimals(allow_nan=False, allow_infinity=False)
        return finite.map(lambda d: format(d, "f").encode()) | st.sampled_from(
            [b"NaN", b"Infinity", b"-Infinity"]
        )
    if kind == "float":
        return st.floats().map(lambda f: repr(f).replace("inf", "Infinity").encode())
    if kind == "boolean":
        return st.sampled_from([b"t", b"f", b"0", b"1"])
    if kind == "date":
        return st.dates().map(lambda d: d.isoformat().encode()) | st.sampled_from(
            [b"infinity", b"-infinity", b"0044-03-15 BC", b"0000-00-00", b"0000-03-05"]
            + [b"10000-01-01"]
        )
    if kind == "timestamp":
        return st.datetimes().map(lambda d: d.isoformat(sep=" ").encode()) | st.sampled_from(
            [b"infinity", b"0000-00-00 00:00:00", b"0000-03-05 10:11:12"]
            + [b"2024-03-05 24:00:00"]
        )
    if kind == "timestamptz":
        zoned = st.builds(lambda d, o: f"{d.isoformat(sep=' ')}{o}".encode(), st.datetimes(), _offsets)
        return zoned | st.datetimes().map(lambda d: d.isoformat(sep=" ").encode())
    if kind == "time":
        offsets = st.sampled_from(["", "+01", "-03:30"])
        return st.builds(lambda t, o: f"{t.isoformat()}{o}".encode(), st.times(), offsets)
    if kind == "uuid":
        return st.uuids().map(lambda u: str(u).encode())
    if kind == "json":
        return _json_values.map(lambda v: json.dumps(v).encode())
    if kind == "bytes":
        return st.binary().map(lambda b: b"\\x" + b.hex().encode()) | st.binary()
    return st.binary()  # other


ANY_VALUE = st.one_of(st.binary(), *(wire(k) for k in KINDS))
KEYS = st.binary(min_size=1, max_size=64)


# --- 1. every output is valid for the kind; masking never raises ----------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("function", FUNCTIONS)
@SETTINGS
@given(
    data=st.data(),
    keep_first=st.integers(-2, 12),
    keep_last=st.integers(-2, 12),
    truncate=st.sampled_from(PARTS),
    key=KEYS,
    dialect=st.sampled_from([PG, MY]),
)
def test_output_is_valid_for_the_kind(
    function: str,
    kind: str,
    data: st.DataObject,
    keep_first: int,
    keep_last: int,
    truncate: str,
    key: bytes,
    dialect: str,
) -> None:
    spec = MaskSpec(function, keep_first=keep_first, keep_last=keep_last, truncate=truncate)  # type: ignore[arg-type]
    m = Masker(spec, kind, key, dialect=dialect)  # type: ignore[arg-type]
    for value in data.draw(st.lists(wire(kind) | ANY_VALUE, min_size=1, max_size=6)):
        assert_valid_for_kind(m(value), kind, dialect)
    assert m(None) is None


# --- 2. masked text does not contain the original -------------------------------------------

_EMAIL_LOCAL = st.text(alphabet=string.ascii_letters + string.digits + "._+-*", min_size=1, max_size=20)
_EMAIL_DOMAIN = st.sampled_from(["example.com", "mail.example.co.uk", "x.io"])
_EMAIL_TEXT = st.builds(lambda local, domain: f"{local}@{domain}", _EMAIL_LOCAL, _EMAIL_DOMAIN)
_ORIGINALS = st.text(min_size=8) | _EMAIL_TEXT.filter(lambda e: len(e) >= 8)


@SETTINGS
@given(
    original=_ORIGINALS,
    function=st.sampled_from(["redact", "email", "hash", "partial"]),
    keep_first=st.integers(0, 10),
    keep_last=st.integers(0, 10),
    key=KEYS,
    dialect=st.sampled_from([PG, MY]),
)
def test_masked_text_does_not_contain_the_original(
    original: str, function: str, keep_first: int, keep_last: int, key: bytes, dialect: str
) -> None:
    n = len(original)
    if function == "partial":
        assume(keep_first + keep_last < n - 4)
        # a middle made only of '*' is already masked: the output is the value itself
        assume(set(original[keep_first : n - keep_last]) != {"*"})
    if function == "email" and original.count("@") == 1:
        local = original.split("@")[0]
        assume(not set(local[-4:]) <= {"*"})  # already 'x****@domain'
    spec = MaskSpec(function=function, keep_first=keep_first, keep_last=keep_last)  # type: ignore[arg-type]
    out = Masker(spec, "text", key, dialect=dialect)(original.encode())
    assert out is not None
    assert original not in out.decode()


# --- 3. generated PII is detected, alone and inside random text -----------------------------

# (prefix, length) of card numbers, from the issuers' published ranges (independent of the
# module's table).
_CARD_BRANDS: list[tuple[str, int]] = [
    ("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),
    ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("644", 16), ("3528", 16), ("3589", 16),
    ("36", 14), ("300", 14), ("62", 16), ("62", 19),
]  # fmt: skip
_GROUPINGS: dict[int, tuple[int, ...]] = {
    13: (4, 4, 5), 14: (4, 6, 4), 15: (4, 6, 5), 16: (4, 4, 4, 4), 19: (4, 4, 4, 4, 3),
}  # fmt: skip


def _luhn_complete(partial: str) -> str:
    total = 0
    for i, c in enumerate(reversed(partial)):
        d = int(c)
        if i % 2 == 0:  # doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return partial + str((10 - total % 10) % 10)


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length = draw(st.sampled_from(_CARD_BRANDS))
    size = length - len(prefix) - 1
    body = draw(st.text(alphabet=string.digits, min_size=size, max_size=size))
    number = _luhn_complete(prefix + body)
    assume(len(set(number)) > 1)
    sep = draw(st.sampled_from(["", " ", "-"]))
    if not sep:
        return number
    groups, i = [], 0
    for size in _GROUPINGS[length]:
        groups.append(number[i : i + size])
        i += size
    return sep.join(groups)


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    return f"{area:03d}-{draw(st.integers(1, 99)):02d}-{draw(st.integers(1, 9999)):04d}"


_IBAN_LENGTHS = {
    "DE": 22, "FR": 27, "GB": 22, "ES": 24, "IT": 27, "NL": 18, "BE": 16, "CH": 21, "AT": 20,
    "PL": 28, "SE": 24, "IE": 22, "PT": 25, "LU": 20, "NO": 15, "DK": 18, "FI": 18,
}  # fmt: skip


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(_IBAN_LENGTHS)))
    bban = draw(
        st.text(
            alphabet=string.ascii_uppercase + string.digits,
            min_size=_IBAN_LENGTHS[country] - 4,
            max_size=_IBAN_LENGTHS[country] - 4,
        )
    )
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    compact = f"{country}{check:02d}{bban}"
    if draw(st.booleans()):
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


_ATOM = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_LABEL = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12)
# File extensions are not taken for top-level domains (icon@2x.png), by design.
_FILE_EXTENSIONS = set(
    "png jpg jpeg gif svg webp bmp ico tif tiff css js json map txt log html htm xml".split()
)
_TLD = st.sampled_from(["com", "org", "net", "io", "de", "co", "uk", "info", "example", "museum"]) | st.text(
    alphabet=string.ascii_lowercase, min_size=2, max_size=8
).filter(lambda t: t not in _FILE_EXTENSIONS)


@st.composite
def emails(draw: st.DrawFn) -> str:
    atoms = draw(st.lists(st.text(alphabet=_ATOM, min_size=1, max_size=10), min_size=1, max_size=3))
    local = ".".join(atoms)
    labels = draw(st.lists(_LABEL, min_size=1, max_size=3))
    return f"{local}@{'.'.join(labels)}.{draw(_TLD)}"


GENERATORS = {"card": cards(), "ssn": ssns(), "iban": ibans(), "email": emails()}
_SEPARATORS = st.sampled_from([" ", "\n", "\t", ", ", "; ", " (", ") ", " | ", ": "])
# Random text, or words that look like the groups of printed cards and IBANs.
_GROUP = st.text(alphabet=string.ascii_uppercase + string.digits, min_size=1, max_size=5)
_GROUPS = st.lists(_GROUP, max_size=8)
_SURROUNDING = st.text(max_size=40) | _GROUPS.map(" ".join)


@pytest.mark.parametrize("name", sorted(GENERATORS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), prefix=_SURROUNDING, suffix=_SURROUNDING)
def test_generated_pii_is_detected_alone_and_embedded(
    name: str, data: st.DataObject, prefix: str, suffix: str
) -> None:
    value = data.draw(GENERATORS[name])
    only = frozenset({name})
    assert classify(value.encode(), only) == name, value
    embedded = prefix + data.draw(_SEPARATORS) + value + data.draw(_SEPARATORS) + suffix
    assert classify(embedded.encode(), only) == name, embedded
    assert ContentScanner(CLASSIFIERS).find(embedded.encode()) is not None, embedded


# --- 4. scanning never raises; the shared pre-filters hide nothing --------------------------

_PIECES = st.sampled_from(
    ["4111 1111 1111 1111", "123-45-6789", "DE89 3704 0044 0532 0130 00", "+44 20 7946 0958",
     "(415) 555-2671", "alice@example.com", "AKIAIOSFODNN7EXAMPLE", "2024-03-05", "10.0.0.1",
     "icon@2x.png", "@", "-", " ", "+", "x", "A", ".", "1"]
)  # fmt: skip
_DIGITISH = st.text(alphabet="0123456789 -.+()@", max_size=16)
_MIXED = st.lists(st.text(max_size=12) | _PIECES | _DIGITISH, max_size=6).map("".join)


@settings(max_examples=400, deadline=None)
@given(value=st.binary(max_size=200) | _MIXED.map(str.encode))
def test_scanner_never_raises_and_its_prefilters_hide_nothing(value: bytes) -> None:
    found = ContentScanner(CLASSIFIERS).find(value)
    # The classifiers' own validation without any pre-filter (the module's private table).
    unfiltered = [name for name in CLASSIFIERS if _FINDERS[name](value)]
    assert found == (unfiltered[0] if unfiltered else None)
    alone = [name for name in CLASSIFIERS if classify(value, frozenset({name})) == name]
    assert alone == unfiltered
