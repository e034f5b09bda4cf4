"""Small text helpers shared by the protocol adapters."""

from __future__ import annotations


def printable(text: str) -> str:
    """Text safe for UTF-8 JSON: surrogate escapes (bytes that did not decode) become \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
