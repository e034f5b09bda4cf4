"""Unit tests for masking.classifiers: true positives and realistic near misses per classifier.

Each positive is checked alone (only its classifier enabled), inside a longer text, and with every
classifier enabled; each near miss must not be reported by its own classifier. Both are checked
through the scanner and through the classifier's own validation without the scanner's
pre-filters (the module's private `_FINDERS`), so a pre-filter cannot hide a validation bug.
"""

from __future__ import annotations

import base64
import json

import pytest

from sqlward.masking.classifiers import _FINDERS, CLASSIFIERS, ContentScanner, classify, iban_valid, luhn_valid

ALL = frozenset(CLASSIFIERS)


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def make_iban(country: str, bban: str) -> str:
    """An IBAN with correct check digits (ISO 7064 mod 97-10), whatever the length."""
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


def spaced(compact: str) -> str:
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


JWT = f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url({'sub': '1234567890', 'name': 'Alice'})}.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"

POSITIVES: dict[str, list[str]] = {
    "email": [
        "alice@example.com",
        "bob.smith+tag@mail.example.co.uk",
        "o'brien@example.ie",
        "x@y.io",
        "ALICE@EXAMPLE.COM",
        "first_last-1@sub-domain.example.museum",
    ],
    "card": [
        "4111111111111111",  # Visa
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4012888888881881",
        "4222222222222",  # Visa, 13 digits
        "5555555555554444",  # Mastercard
        "5105 1051 0510 5100",
        "2221000000000009",  # Mastercard 2-series
        "378282246310005",  # Amex
        "3782 822463 10005",  # Amex grouping 4-6-5
        "371449635398431",
        "6011111111111117",  # Discover
        "6011000990139424",
        "30569309025904",  # Diners, 14 digits
        "3056 930902 5904",
        "38520000023237",
        "3530111333300000",  # JCB
        "3566002020360505",
        "6200000000000005",  # UnionPay
        "6759649826438453",  # Maestro
        "2200000000000004",  # Mir
    ],
    "ssn": [
        "123-45-6789",
        "078-05-1120",
        "899-99-9999",
        "001-01-0001",
        "123456789",  # bare 9 digits: only as the whole value
        "665-12-3456",
        "667-12-3456",
    ],
    "iban": [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR1420041010050500013M02606",
        "FR14 2004 1010 0505 0001 3M02 606",
        "ES9121000418450200051332",
        "IT60X0542811101000000123456",
        "NL91ABNA0417164300",
        "BE68539007547034",
        "BE68 5390 0754 7034",
        "CH9300762011623852957",
        "AT611904300234573201",
        "PL61109010140000071219812874",
        "SE4550000000058398257466",
        "IE29AIBK93115212345678",
        "PT50000201231234567890154",
        "LU280019400644750000",
        "NO9386011117947",
        "NO93 8601 1117 947",
        "DK5000400440116243",
        "FI2112345600000785",
        "MT84MALT011000012345MTLCAST001S",  # not in the length table: 15-34 and mod 97
    ],
    "phone": [
        "+1 415 555 2671",
        "+14155552671",
        "+44 20 7946 0958",
        "+49 (0)30 1234567",
        "+33 1 23 45 67 89",
        "+1 (415) 555-2671",
        "+81-3-1234-5678",
        "(415) 555-2671",
        "(415)555-2671",
        "415-555-2671",
        "415.555.2671",
        "415 555 2671",
        "1-800-555-0199",
    ],
    "secret": [
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAY34FZKBOKMUTVV7A",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA...",
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "-----BEGIN EC PRIVATE KEY-----",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----",
        "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5",
        "gho_" + "0123456789abcdefghijABCDEFGHIJ012345",
        "ghs_" + "Z" * 18 + "9" * 18,
        "github_pat_" + "11ABCDEFG0123456789abc" + "_" + "x" * 30 + "Y" * 29,
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxp-1234567890-1234567890-1234567890-0123456789abcdef0123456789abcdef",
        "AIzaSyA-1234567890abcdefghijklmnopqrstu",
        "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_" + "51H8xYzAbCdEfGhIjKlMnOpQrStUv",
        JWT,
        f"{b64url({'alg': 'none'})}.{b64url({'sub': 'x'})}.",  # unsigned JWT
    ],
}

NEGATIVES: dict[str, list[str]] = {
    "email": [
        "icon@2x.png",  # asset names, not addresses
        "logo@3x.webp",
        "alice@localhost",
        "@handle",
        "user@host.c",
        "lodash@4.17.21",
        "npm install @scope/pkg@1.2.3",
        "foo@bar.123",
        "a@b",
        "alice at example dot com",
        "mailto:",
    ],
    "card": [
        "4111111111111112",  # Luhn fails
        "4111 1111 1111 1112",
        "5555555555554445",
        "1234567812345670",  # Luhn valid, no issuer starts with 1
        "0000000000000000",  # Luhn valid, all one digit
        "4444444444444444",
        "41111111111111111111",  # 20 digits: an id, not a card
        "0.4111111111111111",  # the fraction of a float
        "4111111111111111.25",
        "4111-1111 1111-1111",  # mixed separators
        "4111  1111  1111  1111",  # double spaces
        "4111.1111.1111.1111",
        "2024030512345678",  # a timestamp-like id, no issuer
        "order 12345, total 1999.00, 2024-03-05",
        "1Z999AA10123456784",  # UPS tracking number
        "5105105105105100123",  # Mastercard is 16 digits only
        "378282246310005123",  # Amex is 15 digits only
    ],
    "ssn": [
        "000-12-3456",  # area 000
        "666-12-3456",  # area 666
        "900-12-3456",  # area 900-999
        "999-12-3456",
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "000000000",
        "id 123456789",  # bare 9 digits inside a text
        "1234567890",
        "1123-45-6789",
        "123-45-67890",
        "123-45-6789-1",
        "x-123-45-6789",
        "555-123-4567",  # a phone number
        "2024-03-05",
        "123 45 6789",
    ],
    "iban": [
        "DE89370400440532013001",  # bad check
        "DE88370400440532013000",
        "GB82WEST12345698765433",
        make_iban("DE", "3704004405320130001"),  # correct check digits, 23 characters for DE
        make_iban("GB", "WEST123456987654"),  # 20 characters for GB
        make_iban("NL", "ABNA04171643001"),  # 19 characters for NL
        make_iban("XX", "1234567890"),  # unknown country, 14 characters
        "de89370400440532013000",  # lower case
        "XDE89370400440532013000",  # inside a longer token
        "DE89370400440532013000X",
        "DE89 3704 0044 0532 0130 01",
        "ORDER12 ABCD EFGH",
        "ISO8601 2024 0305",
        "AB12",
    ],
    "phone": [
        "2024-03-05",
        "10:11:12",
        "2024-03-05 10:11:12+05:30",
        "2024-03-05T10:11:12+0530",
        "192.168.100.200",
        "10.0.0.1",
        "version 1.2.3",
        "v10.4.12-1",
        "3.14159265358979",
        "123-456-7890",  # area code cannot start with 1
        "023-456-7890",
        "555-1234",  # 7 digits
        "+123",  # too short
        "+1234567",  # 7 digits
        "+04155552671",  # no country code starts with 0
        "+12345678901234567",  # 17 digits
        "1.5e+10",
        "x+14155552671",  # + touching a letter
        "415-555-26710",
        "415-555.2671",  # inconsistent separators
        "4155552671",  # no separators
        "911-555-1234",  # N11 service code
        "415-911-1234",
        "ISBN 978-3-16-148410-0",
        "12/31/2024",
        "123-45-6789",  # an SSN
        "order 415-555-2671-9",
    ],
    "secret": [
        "AKIA" + "IOSFODNN7EXAMPL",  # 15 characters
        "akiaiosfodnn7example",
        "AKIAIOSFODNN7EXAMPLEX",  # longer token
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "-----BEGIN RSA PUBLIC KEY-----",
        "ghp_short",
        "ghx_" + "a" * 36,
        "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc",
        "sk_live_short",
        "xoxb-123",
        "AIza-too-short",
        f"{b64url({'typ': 'JWT'})}.{b64url({'sub': 'x'})}.sig",  # header without alg
        "eyJub3QganNvbg.eyJzdWIiOiJ4In0.sig",  # header is not JSON
        "eyJhbGciOiJIUzI1NiJ9",  # one segment
        "password",
        "secret",
        "my secret password is hunter2",
        "The quick brown fox jumps over the lazy dog",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # unlabelled AWS secret key: not detected
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",  # sha1 hex
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "Eyjafjallajokull",
    ],
}

POSITIVE_CASES = [(name, value) for name, values in POSITIVES.items() for value in values]
NEGATIVE_CASES = [(name, value) for name, values in NEGATIVES.items() for value in values]


@pytest.mark.parametrize(("name", "value"), POSITIVE_CASES)
def test_true_positive_alone(name: str, value: str) -> None:
    assert classify(value.encode(), frozenset({name})) == name
    assert _FINDERS[name](value.encode())


@pytest.mark.parametrize(("name", "value"), POSITIVE_CASES)
def test_true_positive_inside_text(name: str, value: str) -> None:
    # bare 9-digit SSNs count only as the whole value
    expected = None if name == "ssn" and value.isdigit() else name
    for text in (f"Customer note: {value}, thanks", f"{value}\n", f"id=7;\t{value} (verified)"):
        assert classify(text.encode(), frozenset({name})) == expected, text


@pytest.mark.parametrize(("name", "value"), POSITIVE_CASES)
def test_true_positive_with_everything_enabled(name: str, value: str) -> None:
    assert ContentScanner(CLASSIFIERS).find(value.encode()) is not None


@pytest.mark.parametrize(("name", "value"), NEGATIVE_CASES)
def test_near_miss_is_not_reported(name: str, value: str) -> None:
    assert classify(value.encode(), frozenset({name})) is None
    assert not _FINDERS[name](value.encode())


def test_card_touching_other_digit_groups() -> None:
    card = frozenset({"card"})
    # a run of 13-19 digits is a candidate whatever digit groups follow it
    assert classify(b"4111111111111111-4", card) == "card"
    assert classify(b"378282246310005 5", card) == "card"
    # cards after or before other digit groups
    assert classify(b"qty 2 4111 1111 1111 1111 exp 12 28", card) == "card"
    assert classify(b"2024-03-05 4111-1111-1111-1111", card) == "card"


@pytest.mark.parametrize(
    "value",
    [
        b"BE68 5390 0754 7034 EUR",  # a group of text after a printed IBAN
        b"IBAN: NL91 ABNA 0417 1643 00 BIC ABNANL2A",
        b"PL61 1090 1014 0000 0712 1981 2874 5000 EUR",
        b"REF AB12 DE89 3704 0044 0532 0130 00",  # groups of text before it
        b"REF AB12 CDEF GHIJ KLMN OPQR DE89 3704 0044 0532 0130 00",
        b"CH93 0076 2011 6238 5295 7\nFR14 2004 1010 0505 0001 3M02 606",
    ],
)
def test_printed_iban_next_to_other_groups(value: bytes) -> None:
    assert classify(value, frozenset({"iban"})) == "iban"


@pytest.mark.parametrize(
    "value",
    [
        b"Order 12345 shipped 2024-03-05",
        b"Flat 12, 221 Baker St, London",
        b"2024-03-05 10:11:12.123456+01",
        b"The quick brown fox jumps over",
        b"SELECT * FROM t WHERE id = 42",
        b"v2.3.1 build 4711 (2024-03-05)",
        b"192.168.0.1:5432",
        b"price: 1999.99 EUR",
        "Gr\u00fc\u00dfe aus M\u00fcnchen".encode(),
        b"",
        b"\xff\xfe\x00\x01",
        b"ab" * 5000,
        b"1" * 5000,
        b"@" * 5000,
        b"a.a." * 2000 + b"@",
    ],
)
def test_clean_values_are_not_reported(value: bytes) -> None:
    assert ContentScanner(CLASSIFIERS).find(value) is None


def test_first_classifier_in_fixed_order_wins() -> None:
    value = b"alice@example.com paid with 4111 1111 1111 1111, ssn 123-45-6789, AKIAIOSFODNN7EXAMPLE"
    assert classify(value, ALL) == "email"
    assert classify(value, frozenset({"card", "ssn", "secret"})) == "card"
    assert classify(value, frozenset({"secret", "ssn"})) == "ssn"
    assert classify(value, frozenset({"secret"})) == "secret"
    assert classify(value, frozenset({"iban", "phone"})) is None
    assert ContentScanner(["secret", "email"]).enabled == ("email", "secret")


def test_disabled_classifiers_do_not_report() -> None:
    assert classify(b"alice@example.com", frozenset({"card", "ssn", "iban", "phone", "secret"})) is None
    assert classify(b"alice@example.com", frozenset()) is None
    assert ContentScanner([]).find(b"4111111111111111") is None


def test_unknown_classifier_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown classifiers"):
        ContentScanner(["email", "passport"])
    with pytest.raises(ValueError):
        classify(b"x", frozenset({"cc"}))


def test_scanner_agrees_with_classify() -> None:
    scanner = ContentScanner(CLASSIFIERS)
    for _, value in POSITIVE_CASES + NEGATIVE_CASES:
        assert scanner.find(value.encode()) == classify(value.encode(), ALL)


def test_luhn_and_iban_helpers() -> None:
    assert luhn_valid(b"79927398713")
    assert not luhn_valid(b"79927398710")
    assert iban_valid(b"GB82WEST12345698765432")
    assert not iban_valid(b"GB82WEST12345698765433")
    assert not iban_valid(make_iban("DE", "3704004405320130001").encode())  # wrong length
    assert iban_valid(make_iban("XK", "1212012345678906").encode())  # 20: fine for an unknown country
