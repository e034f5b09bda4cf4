"""Small text helpers shared by the protocol adapters."""

from __future__ import annotations

import re


def printable(text: str) -> str:
    """Text safe for UTF-8 JSON: surrogate escapes (bytes that did not decode) become \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# A quoted string (single or double quotes, doubled quotes inside) or a number in a message.
_QUOTED_OR_NUMBER = re.compile(r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


# The error text recorded for a statement of a target whose audit text is redacted: a server's
# message can be the value itself (RAISE EXCEPTION '...', SIGNAL ... MESSAGE_TEXT) or quote it
# unescaped, so none of it is kept; the SQLSTATE is.
REDACTED_ERROR = "(error text not recorded: the target's audit text is redacted)"


def redacted_message(text: str) -> str:
    """A server's message with every quoted part and number replaced by ? (for targets whose
    audit text is redacted: error messages quote the values they are about, e.g. `Duplicate
    entry '42' for key 'PRIMARY'`, `invalid input syntax for type integer: "x"`)."""
    return _QUOTED_OR_NUMBER.sub("?", text)


def hinted(text: str, words: tuple[str, ...]) -> bool:
    """Could `text` hold one of `words` (lower case) in any case? The cheap first test of the
    checks that read every statement: substring tests on the lowered text (a fraction of a
    regular expression's cost). Text outside ASCII is always read in full (True): its case
    rules are not ASCII's."""
    if not text.isascii():
        return True
    low = text.lower()
    return any(w in low for w in words)
