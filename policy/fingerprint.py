"""Literal-free statement fingerprints: the key of the analysis and decision caches.

`fingerprint(sql, dialect)` runs on every statement on the hot path, so it is one `re.sub` over a
precompiled pattern per dialect (no sqlglot; see DESIGN.md section 9; about 2.5 µs for the pgbench
SELECT). The pattern is built from the dialect's `policy.sqltext.LEXICONS` fragments (the ones
the analyser's lexer uses, so both agree on every string, identifier and comment boundary) and
lexes left to right; each match is a run of tokens copied as they are (words, quoted
identifiers, operators, single spaces: no Python involved) followed by one span to rewrite: a
literal or placeholder, a literal-only IN list, a run of whitespace and comments, or the end of
the text. So a statement costs one Python callback per literal, plus one.

What the pattern does, per dialect:

- ``postgres``: '..' strings ('' escapes), E'..' (backslash escapes), B'..', X'..', N'..', U&'..',
  dollar quotes ``$tag$..$tag$``, numbers and the placeholders ``$1`` and ``%s`` become ``?``.
  ``"quoted identifiers"`` are kept verbatim. ``--`` and ``/* */`` comments (nesting, up to
  `policy.sqltext.PG_COMMENT_DEPTH` levels) are removed.
- ``mysql``: '..' and ".." strings (backslash and doubled-quote escapes), X'..', B'..', N'..',
  0x.., 0b.., numbers and ``%s`` become ``?`` (``?`` stays ``?``). ```backquoted``` identifiers are
  kept verbatim. ``#`` and ``-- `` comments (MySQL needs whitespace after ``--``) and ordinary
  ``/* */`` comments are removed; executable comments ``/*! */``, ``/*M! */`` and optimizer hints
  ``/*+ */`` are kept verbatim because they change what the server does.
- both: an IN list made only of literals and placeholders becomes ``IN (?+)``; a run of whitespace
  and comments becomes one space; the result is stripped. Case is never folded.

Words are consumed whole, so a digit inside an identifier (``t1``, ``col_2``, MySQL's ``$1`` and
``1t``) is never taken for a number, and a number running into identifier characters (``1abc``)
is kept verbatim. A one-letter word followed by a quote is a string prefix (E'', X'', ...); an E''
string that does not close is unclassifiable (it must not be re-read as a standard string).

The contract is one-way: texts that differ by more than literal values must never share a key
(two texts with one fingerprint have the same `policy.analysis.analyse` facts), while equivalent
texts may get different keys (a cache miss costs a parse, a collision could cost safety). So when
the lexer meets text it cannot classify (an unterminated quote, comment or dollar quote, or
comments nested deeper than supported), the key is `RAW_PREFIX` + the text itself, which no
normal fingerprint can equal (normal fingerprints never start with a space).
"""

from __future__ import annotations

import re
from typing import Final

from sqlward.policy.sqltext import ID_CHARS, LEXICONS, WS, Lexicon, Unlexable, dollar_quote

__all__ = ["DIALECTS", "RAW_PREFIX", "fingerprint"]

DIALECTS: Final = ("postgres", "mysql")

# Keys of texts the lexer could not classify: " raw:" + text. Normal keys are stripped, so they
# never start with a space and cannot collide with these.
RAW_PREFIX: Final = " raw:"


def _alt(*parts: str) -> str:
    return "|".join(part for part in parts if part)


def _build(lex: Lexicon) -> re.Pattern[str]:
    """One match = a run of text copied as is, then one span to rewrite (or the end)."""
    # IN ( literal , literal ... ): one loop (so the dollar-quote group appears once), each item
    # followed by a comma that is not the last thing before `)`, or by the `)`.
    literal = _alt(
        rf"[+-]?(?:{lex.numbers})",
        lex.strings,
        lex.dollar_open and dollar_quote(lex, "dq_in"),
        lex.placeholders,
        r"\?",
    )
    gap = rf"(?:{WS}++|{lex.comment})*+"
    # (Not possessive: CPython 3.11 mis-tracks a group inside a possessive repeat, SystemError.)
    in_tail = rf"{gap}\((?:{gap}(?:{literal}){gap}(?:,(?!{gap}\))|(?=\))))+\)"
    # Copied without a callback: words other than IN (an IN may start a literal list), numbers
    # that run into identifier characters, quoted identifiers, kept comments, operators, and
    # single spaces not followed by more whitespace or a comment.
    comment_start = "--|/\\*|#" if "#" in lex.comment else "--|/\\*"
    verbatim = _alt(
        lex.word,
        rf" (?!{WS}|{comment_start})",
        lex.operator,
        lex.quoted_ident,
        rf"(?!{lex.numbers})\d[{ID_CHARS}]*+",
        lex.kept_comment,
    )
    # A run of whitespace and comments becomes one space.
    space = rf"(?:{WS}*+(?:{lex.comment}))++{WS}*+|{WS}++"
    lit = _alt(lex.numbers, lex.strings, lex.dollar_open and dollar_quote(lex, "dq"), lex.placeholders)
    # A literal followed only by verbatim text to the end takes that text along (`tail`): the
    # common "... WHERE id = 42;" then costs a single callback. Text ending in verbatim tokens
    # after any other rewrite is one `end` match; an empty match is impossible.
    pattern = (
        rf"((?:{verbatim})*+)"
        rf"(?:(?P<lit>{lit})(?P<tail>(?:{verbatim})*+\Z)?|(?P<inl>(?P<inkw>[Ii][Nn]){in_tail})"
        rf"|(?P<sp>{space})|(?P<bad>{lex.bad})|(?P<other>[Ii][Nn]|.))"
        rf"|(?P<end>(?:{verbatim})++\Z)"
    )
    return re.compile(pattern, re.DOTALL)


_PATTERNS: Final[dict[str, re.Pattern[str]]] = {name: _build(lex) for name, lex in LEXICONS.items()}


def _replace(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "tail":
        return match.group(1) + "?" + match.group("tail")
    if kind == "lit":
        return match.group(1) + "?"
    if kind == "sp":
        return match.group(1) + " "
    if kind == "end":
        return match.group("end")
    if kind == "inl":
        return match.group(1) + match.group("inkw") + " (?+)"
    if kind == "other":
        return match.group(1) + match.group("other")
    raise Unlexable  # text the lexicons cannot classify


def fingerprint(sql: str, dialect: str) -> str:
    """The literal-free normal form of `sql` in `dialect` ("postgres" or "mysql")."""
    try:
        pattern = _PATTERNS[dialect]
    except KeyError:
        raise ValueError(f"unknown SQL dialect {dialect!r}") from None
    try:
        return pattern.sub(_replace, sql).strip(" ")
    except Exception:  # Unlexable; or a regex engine failure: a unique key is always safe
        return RAW_PREFIX + sql
