"""Content classifiers: the last net that finds PII and secrets inside result values (sans-IO).

`ContentScanner(enabled)` is built once from the enabled classifier names (`Classifier`:
``email``, ``card``, ``ssn``, ``iban``, ``phone``, ``secret``); ``scanner.find(value)`` returns
the name of the first classifier, in that fixed order, that finds something anywhere inside the
value (a card number within a longer text counts), or None. `classify(value, enabled)` is the
one-off form (it builds a scanner per call; keep a `ContentScanner` on the hot path).

How it works
------------
Values are scanned as bytes with ASCII-only patterns, so invalid UTF-8 or binary values never
raise. A scanner first runs one combined pre-filter regex built from its enabled classifiers:
``@`` for email, a digit for card / ssn / iban / phone, the fixed prefixes of the secret formats
(``AKIA``, ``-----BEGIN``, ``ghp_``, ``eyJ``, ...). A value where nothing triggers (most clean
values) costs that one search (under 1 µs for 30 bytes). Digits are common in clean values
(dates, amounts, addresses), so the digit classifiers have a second, combined gate over the
value's shape (digits mapped to ``9``, letters to ``A`` / ``a``): they run only if the shape
holds what one of them needs at least (``9999`` then 3 more digits for a card, ``999-99-9999``
for an SSN, ``AA99`` for an IBAN, ``+9`` or ``999-9999`` for a phone). Then each enabled
classifier runs its candidate regex and validates each candidate in Python; the first validated
candidate wins. The gates only skip work: each classifier's validation stands on its own.

Candidate patterns start with a look-behind that refuses to start inside a run of the same
characters, and IBAN and secret candidates are searched overlapping (a candidate that fails
validation cannot hide a valid one starting inside it), so a scan is linear in the value's length
but with a large constant for adversarial values made of candidates (about 0.4 MB/s for a run of
``AB12 `` groups, 2 MB/s for runs of digit groups); a caller scanning very large values should
scan a bounded prefix.

Classifiers and their validation (to keep false positives low):

- ``email``: ``local@domain.tld`` with an RFC 5322 dot-atom local part, dotted domain labels and
  an alphabetic top-level label of 2+ letters that is not a common file extension (so
  ``logo@2x.png`` is not an email).
- ``card``: 13-19 digits, either one run of digits or groups (first group of 4, then groups of 3-6)
  separated consistently by single spaces or by single dashes; passing Luhn; with a known issuer
  prefix and a length that issuer uses (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay,
  Maestro, Mir); not all one digit. A run of digits that touches more digits (a 20-digit id) or a
  decimal point and digits (the fraction of a float) is not a card. Windows of consecutive groups
  are tried, so a card after or before other digit groups is still found.
- ``ssn``: US SSN ``AAA-GG-SSSS`` with dashes not touching more digits or dashes, or the whole
  value being exactly 9 digits; area 000, 666 and 900-999, group 00 and serial 0000 are invalid.
- ``iban``: two upper-case letters, two check digits, then the basic bank account number, either
  compact or in space-separated groups of 4 (the last group may be shorter); the length must be
  the country's IBAN length (`IBAN_LENGTHS`; other country codes: 15-34) and the ISO 7064 mod 97
  check must give 1. Candidates may overlap and shorter prefixes at group boundaries are tried,
  so groups of text before or after a printed IBAN do not hide it.
- ``phone``: E.164-style ``+`` then 8-15 digits (first digit 1-9) with spaces, dashes, dots or
  parentheses between them, the ``+`` not touching a letter or digit before it (so timestamps'
  ``+05:30`` offsets and exponents are not phones); or North American numbers ``(NXX) NXX-XXXX``,
  ``NXX-NXX-XXXX``, ``NXX.NXX.XXXX``, ``NXX NXX XXXX`` (consistent separator, N = 2-9, not an
  N11 service code, optional leading ``1``) not touching other digits, dots, dashes or slashes.
  Dates, times, version numbers and IP addresses match neither form.
- ``secret``: AWS access key ids (``AKIA`` / ``ASIA`` + 16 upper-case letters or digits), PEM
  private key headers (``-----BEGIN ... PRIVATE KEY-----``, PGP private key blocks too), GitHub
  tokens (``ghp_`` / ``gho_`` / ``ghu_`` / ``ghs_`` / ``ghr_`` + 36 alphanumerics,
  ``github_pat_`` + 82 characters), Slack tokens (``xox[abprs]-`` and dash-separated parts),
  Google API keys (``AIza`` + 35), Stripe live keys (``sk_live_`` / ``rk_live_`` + 24 or more),
  JWTs (three base64url segments whose first decodes to a JSON object with ``alg``). Unlabelled
  AWS secret keys (40 base64 characters) and ``password=...`` assignments are not detected.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Final, get_args

from sqlward.masking.model import Classifier

__all__ = ["CLASSIFIERS", "IBAN_LENGTHS", "ContentScanner", "classify", "luhn_valid", "iban_valid"]

# The order in which classifiers are tried: `find` reports the first that matches.
CLASSIFIERS: Final[tuple[str, ...]] = get_args(Classifier)

# IBAN lengths of common countries; other country codes need 15-34 characters.
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AT": 20, "BE": 16, "CH": 21, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
    "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "SE": 24,
}  # fmt: skip


def _overlapping(pattern: re.Pattern[bytes], value: bytes) -> Iterator[re.Match[bytes]]:
    """Matches of `pattern` in `value` that may overlap: after each, the search goes on from the
    next byte rather than after the match, so a candidate that fails validation cannot hide a
    valid one starting inside it."""
    m = pattern.search(value)
    while m is not None:
        yield m
        m = pattern.search(value, m.start() + 1)


# --- email ----------------------------------------------------------------------------------

_ATEXT = rb"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_EMAIL: Final = re.compile(
    rb"(?<![" + _ATEXT + rb".])"
    rb"[" + _ATEXT + rb"]+(?:\.[" + _ATEXT + rb"]+)*"
    rb"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63})(?![A-Za-z0-9\-])"
)
# Top-level labels that are file extensions far more often than domains (icon@2x.png).
_NOT_TLDS: Final = frozenset(
    b"png jpg jpeg gif svg webp bmp ico tif tiff css js json map txt log html htm xml".split()
)


def _find_email(value: bytes) -> bool:
    if b"@" not in value:
        return False
    for m in _EMAIL.finditer(value):
        if m.group(1).lower() not in _NOT_TLDS:
            return True
    return False


# --- card -----------------------------------------------------------------------------------

# Runs of digit groups separated by single spaces or dashes, not touching digits or a decimal
# point followed by digits.
_DIGIT_CHAIN: Final = re.compile(
    rb"[0-9](?<![0-9][0-9])(?<![0-9]\.[0-9])[0-9]*(?:[ \-][0-9]+)*(?![0-9])(?!\.[0-9])"
)
_GROUP_SPLIT: Final = re.compile(rb"([ \-])")

# (lowest prefix, highest prefix, prefix length, lengths) of issuer identification numbers.
_IIN: Final[tuple[tuple[int, int, int, frozenset[int]], ...]] = (
    (4, 4, 1, frozenset({13, 16, 19})),  # Visa
    (51, 55, 2, frozenset({16})),  # Mastercard
    (2221, 2720, 4, frozenset({16})),  # Mastercard 2-series
    (34, 34, 2, frozenset({15})),  # American Express
    (37, 37, 2, frozenset({15})),
    (6011, 6011, 4, frozenset(range(16, 20))),  # Discover
    (644, 649, 3, frozenset(range(16, 20))),
    (65, 65, 2, frozenset(range(16, 20))),
    (300, 305, 3, frozenset(range(14, 20))),  # Diners Club
    (36, 36, 2, frozenset(range(14, 20))),
    (38, 39, 2, frozenset(range(14, 20))),
    (3528, 3589, 4, frozenset(range(16, 20))),  # JCB
    (62, 62, 2, frozenset(range(16, 20))),  # UnionPay
    (2200, 2204, 4, frozenset(range(16, 20))),  # Mir
    (5018, 5018, 4, frozenset(range(13, 20))),  # Maestro
    (5020, 5020, 4, frozenset(range(13, 20))),
    (5038, 5038, 4, frozenset(range(13, 20))),
    (5893, 5893, 4, frozenset(range(13, 20))),
    (6304, 6304, 4, frozenset(range(13, 20))),
    (6759, 6759, 4, frozenset(range(13, 20))),
    (6761, 6763, 4, frozenset(range(13, 20))),
)


# Luhn doubles every second digit from the right, subtracting 9 above 9: 0 2 4 6 8 1 3 5 7 9.
_LUHN_DOUBLED: Final = bytes.maketrans(b"0123456789", b"0246813579")


def luhn_valid(digits: bytes) -> bool:
    """The Luhn (mod 10) check over ASCII digits."""
    doubled = digits[-2::-2].translate(_LUHN_DOUBLED)
    return (sum(digits[-1::-2]) + sum(doubled) - 48 * len(digits)) % 10 == 0


def _card_number(digits: bytes) -> bool:
    n = len(digits)
    # No all-one-digit number passes the issuer table and Luhn today; the check stays in case
    # the table grows.
    if not 13 <= n <= 19 or digits.count(digits[:1]) == n:
        return False
    prefixes = (0, int(digits[:1]), int(digits[:2]), int(digits[:3]), int(digits[:4]))
    for low, high, width, lengths in _IIN:
        if n in lengths and low <= prefixes[width] <= high:
            return luhn_valid(digits)
    return False


def _find_card(value: bytes) -> bool:
    for m in _DIGIT_CHAIN.finditer(value):
        chain = m.group()
        if len(chain) < 13:
            continue
        parts = _GROUP_SPLIT.split(chain)  # group, separator, group, ...
        groups = parts[0::2]
        seps = parts[1::2]
        if sum(len(g) for g in groups) < 13:
            continue
        for i, first in enumerate(groups):
            if 13 <= len(first) <= 19 and _card_number(first):
                return True
            if len(first) != 4:
                continue
            total = 4
            for j in range(i + 1, len(groups)):
                if seps[j - 1] != seps[i] or not 3 <= len(groups[j]) <= 6:
                    break
                total += len(groups[j])
                if total > 19:
                    break
                if total >= 13 and _card_number(b"".join(groups[i : j + 1])):
                    return True
    return False


# --- ssn ------------------------------------------------------------------------------------

_SSN: Final = re.compile(
    rb"([0-9](?<![0-9\-][0-9])[0-9]{2})-([0-9]{2})-([0-9]{4})(?![0-9\-])"
)


def _ssn_parts_valid(area: bytes, group: bytes, serial: bytes) -> bool:
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != b"00" and serial != b"0000"


def _find_ssn(value: bytes) -> bool:
    if len(value) == 9 and value.isdigit():
        return _ssn_parts_valid(value[:3], value[3:5], value[5:])
    if b"-" not in value:
        return False
    for m in _SSN.finditer(value):
        if _ssn_parts_valid(*m.group(1, 2, 3)):
            return True
    return False


# --- iban -----------------------------------------------------------------------------------

_IBAN: Final = re.compile(
    rb"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z][0-9]{2}"
    rb"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?![A-Za-z0-9])"
)


# ISO 13616: letters count as two digits, A = 10 .. Z = 35.
_IBAN_DIGITS: Final = {ord(c): str(i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 10)}


def iban_valid(iban: bytes) -> bool:
    """Length for the country and the mod 97 check of a compact upper-case IBAN."""
    n = len(iban)
    expected = IBAN_LENGTHS.get(iban[:2].decode("ascii", "replace"))
    if (n != expected) if expected is not None else not 15 <= n <= 34:
        return False
    return int((iban[4:] + iban[:4]).decode("ascii").translate(_IBAN_DIGITS)) % 97 == 1


def _find_iban(value: bytes) -> bool:
    for m in _overlapping(_IBAN, value):
        groups = m.group().split(b" ")
        expected = IBAN_LENGTHS.get(groups[0][:2].decode("ascii"))
        # Longest first: the whole candidate, then without trailing groups (printed IBANs are
        # bounded by spaces like the text after them, which the candidate may have taken).
        length = sum(map(len, groups))
        for end in range(len(groups), 0, -1):
            if (length == expected) if expected is not None else 15 <= length <= 34:
                if iban_valid(b"".join(groups[:end])):
                    return True
            length -= len(groups[end - 1])
    return False


# --- phone ----------------------------------------------------------------------------------

_E164: Final = re.compile(rb"(?<![A-Za-z0-9+])\+[1-9](?:[ .\-()]{0,2}[0-9]){7,14}(?![0-9])")
_NANP: Final = re.compile(
    rb"(?<![A-Za-z0-9.\-/+])(?:1[ .\-])?"
    rb"(?:\(([2-9][0-9]{2})\) ?([2-9][0-9]{2})[ .\-]|([2-9][0-9]{2})([ .\-])([2-9][0-9]{2})\4)"
    rb"[0-9]{4}(?![A-Za-z0-9])(?![.\-/][0-9])"
)


def _find_phone(value: bytes) -> bool:
    if b"+" in value and _E164.search(value):
        return True
    for m in _NANP.finditer(value):
        area, exchange = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(5))
        if area[1:] != b"11" and exchange[1:] != b"11":
            return True
    return False


# --- secret ---------------------------------------------------------------------------------

_SECRET: Final = re.compile(
    rb"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    rb"|-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    rb"|(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36}(?![A-Za-z0-9_])"
    rb"|(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}(?![A-Za-z0-9_])"
    rb"|(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+"
    rb"|(?<![A-Za-z0-9_\-])AIza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])"
    rb"|(?<![A-Za-z0-9_])[sr]k_live_[A-Za-z0-9]{24,}"
    rb"|(?<![A-Za-z0-9_\-])(eyJ[A-Za-z0-9_\-]+)\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
)
_SLACK_MIN_LENGTH: Final = 24
# The fixed prefixes of the formats above, first character first so the scan is a set lookup per
# byte (a few more strings match, such as "Ak_live_": this is only a pre-filter).
_SECRET_PREFIX: Final = re.compile(
    rb"[\-Aegrsx](?:KIA|SIA|Iza|----BEGIN|h[pousr]_|ithub_pat_|ox[abprs]-|k_live_|yJ)"
)


def _jwt_header_valid(segment: bytes) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8, bad JSON
        return False
    return isinstance(header, dict) and "alg" in header


def _find_secret(value: bytes) -> bool:
    if _SECRET_PREFIX.search(value) is None:
        return False
    for m in _overlapping(_SECRET, value):
        header = m.group(1)
        if header is not None:
            if _jwt_header_valid(header):
                return True
        elif not m.group().startswith(b"xox") or len(m.group()) >= _SLACK_MIN_LENGTH:
            return True
    return False


# --- scanner --------------------------------------------------------------------------------

_FINDERS: Final[dict[str, Callable[[bytes], bool]]] = {
    "email": _find_email,
    "card": _find_card,
    "ssn": _find_ssn,
    "iban": _find_iban,
    "phone": _find_phone,
    "secret": _find_secret,
}
# The pre-filter: what a value must contain for each classifier to have a chance. Characters for
# email and the digit classifiers, one of the fixed prefixes for secrets.
_TRIGGER_CHARS: Final[dict[str, bytes]] = {
    "email": b"@",
    "card": b"0-9",
    "ssn": b"0-9",
    "iban": b"0-9",
    "phone": b"0-9",
}
# A value's shape: ASCII digits become 9, upper-case letters A, lower-case letters a, every other
# byte stays. Values with digits pass the trigger far too often (dates, amounts, addresses), so
# the digit classifiers only run when the shape holds what each of them needs at least: cheap
# patterns over few distinct bytes.
_SHAPE: Final = bytes(
    0x39 if 0x30 <= b <= 0x39 else 0x41 if 0x41 <= b <= 0x5A else 0x61 if 0x61 <= b <= 0x7A else b
    for b in range(256)
)
_SHAPE_GATES: Final[dict[str, bytes]] = {
    "card": rb"9999[ \-]?999",  # a first group of 4 and 3 more digits, or a longer run
    "ssn": rb"999-99-9999|\A999999999\Z",
    "iban": rb"AA99",
    "phone": rb"\+(?<![9Aa+]\+)9|999[ .\-]9999",  # E.164, then the NXX-XXXX end of NANP
}


def _trigger(ordered: tuple[str, ...]) -> re.Pattern[bytes] | None:
    chars = b"".join(dict.fromkeys(_TRIGGER_CHARS[n] for n in ordered if n in _TRIGGER_CHARS))
    alternatives = [b"[" + chars + b"]"] if chars else []
    if "secret" in ordered:
        alternatives.append(_SECRET_PREFIX.pattern)
    return re.compile(b"|".join(alternatives)) if alternatives else None


def _shape_gate(ordered: tuple[str, ...]) -> re.Pattern[bytes] | None:
    gates = [_SHAPE_GATES[name] for name in ordered if name in _SHAPE_GATES]
    return re.compile(b"|".join(gates)) if gates else None


class ContentScanner:
    """The enabled classifiers, ready to scan values (see the module docstring)."""

    __slots__ = ("_all", "_shape_gate", "_trigger", "_without_digits", "enabled")

    def __init__(self, enabled: Iterable[str]) -> None:
        names = frozenset(enabled)
        unknown = names - set(CLASSIFIERS)
        if unknown:
            raise ValueError(
                f"unknown classifiers {sorted(unknown)}; expected some of {CLASSIFIERS}"
            )
        ordered = tuple(name for name in CLASSIFIERS if name in names)
        self.enabled: Final = ordered
        self._all: Final = tuple((name, _FINDERS[name]) for name in ordered)
        self._without_digits: Final = tuple(
            (name, _FINDERS[name]) for name in ordered if name not in _SHAPE_GATES
        )
        self._trigger: Final = _trigger(ordered)
        self._shape_gate: Final = _shape_gate(ordered)

    def find(self, value: bytes) -> str | None:
        """The first enabled classifier (in `CLASSIFIERS` order) that finds something in
        `value`, or None."""
        trigger = self._trigger
        if trigger is None or trigger.search(value) is None:
            return None
        finders = self._without_digits
        gate = self._shape_gate
        if gate is not None and gate.search(value.translate(_SHAPE)) is not None:
            finders = self._all
        for name, finder in finders:
            if finder(value):
                return name
        return None

    def __repr__(self) -> str:
        return f"ContentScanner({list(self.enabled)!r})"


def classify(value: bytes, enabled: frozenset[str]) -> str | None:
    """The first classifier of `enabled` (in `CLASSIFIERS` order) that finds something in
    `value`, or None. Builds a scanner per call; reuse a `ContentScanner` for many values."""
    return ContentScanner(enabled).find(value)
