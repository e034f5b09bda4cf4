"""The canonical form of a name: the one way every name an identity can be known by is
compared (static identities, token subjects and actors, the connection's user name, certificate
names, `[[access]]` globs, the login throttle's keys, approvers and requesters of approvals).

NFKC, case folded (full Unicode case folding), NFKC again, runs of white space made one space.
Names holding characters that are invisible or change how text is shown (control and format
characters, zero-width and other default-ignorable code points, unassigned and private use code
points, line and paragraph separators) or starting or ending with white space name no one:
`name_problem` says why. Pure (the policy core's, used by the adapters and the gateway).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_NAME", "canonical_name", "name_problem", "same_name"]


# Default-ignorable code points (Unicode's DerivedCoreProperties) that are not already of a
# refused general category: invisible fillers, variation selectors, the combining grapheme joiner.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SPACES = re.compile(r"\s+")
MAX_NAME = 512


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an identity (None: it can). See the module doc."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    for c in name:
        if unicodedata.category(c) in _REFUSED_CATEGORIES or _IGNORABLE.match(c):
            return f"it holds the invisible or control character U+{ord(c):04X}"
    folded = unicodedata.normalize("NFKC", name)
    if folded != folded.strip():
        return "it starts or ends with white space"
    for c in folded:  # NFKC can turn an allowed character into a refused one
        if unicodedata.category(c) in _REFUSED_CATEGORIES or _IGNORABLE.match(c):
            return f"it holds the invisible or control character U+{ord(c):04X}"
    return None


def canonical_name(name: str) -> str:
    """The form names are compared in: NFKC, case folded, NFKC again, white space runs made one
    space, stripped; invisible and control characters are dropped. "ALICE", "Alice",
    "ａｌｉｃｅ" (fullwidth), "al<U+200B>ice" are all "alice". A name with a `name_problem` still
    gets a canonical form (so it finds the static identity it imitates), but is refused before
    its form is trusted."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    text = "".join(c for c in text if unicodedata.category(c) not in _REFUSED_CATEGORIES and not _IGNORABLE.match(c))
    return _SPACES.sub(" ", text).strip()


def same_name(a: str, b: str) -> bool:
    """Do two names name the same identity (compared in their canonical form)?"""
    return a == b or canonical_name(a) == canonical_name(b)
