"""Small text helpers shared by the protocol adapters."""

from __future__ import annotations


def printable(text: str) -> str:
    """Text safe for UTF-8 JSON: surrogate escapes (bytes that did not decode) become \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def hinted(text: str, words: tuple[str, ...]) -> bool:
    """Could `text` hold one of `words` (lower case) in any case? The cheap first test of the
    checks that read every statement: substring tests on the lowered text (a fraction of a
    regular expression's cost). Text outside ASCII is always read in full (True): its case
    rules are not ASCII's."""
    if not text.isascii():
        return True
    low = text.lower()
    return any(w in low for w in words)
