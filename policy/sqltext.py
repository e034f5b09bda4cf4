"""SQL text utilities shared by the fingerprint, the analyser and masking: the lexicons of both
dialects, a lexer, a statement splitter and the canonical text handed to sqlglot.

How it works (DESIGN.md sections 5 and 9):

- **Lexicons.** `LEXICONS[dialect]` is a `Lexicon`: regex fragments (no capturing groups) for the
  words, strings, dollar quotes, numbers, placeholders, comments, quoted identifiers, kept
  comments and operators of "postgres" or "mysql", plus `bad`, the opening of a quote or comment
  the other fragments could not close. They assume they are tried at a token boundary. Both
  `policy.fingerprint` (one `re.sub` per statement, built from these fragments) and `tokenize`
  below use them, so the fingerprint, the analyser and masking agree on where every string,
  quoted identifier and comment starts and ends. What each dialect reads:

  - ``postgres``: '..' strings ('' escapes), E'..' (backslash escapes), B'..', X'..', N'..',
    U&'..', dollar quotes ``$tag$..$tag$``, ``"quoted identifiers"``, ``--`` and ``/* */``
    comments (nesting up to `PG_COMMENT_DEPTH` levels), placeholders ``$1`` and ``%s``.
  - ``mysql``: '..' and ".." strings (backslash and doubled-quote escapes), X'..', B'..', N'..',
    0x.. and 0b.. numbers, ```backquoted``` identifiers, ``#``, ``-- `` (whitespace after the
    dashes) and ``/* */`` comments; executable comments ``/*! */``, ``/*M! */`` and optimizer
    hints ``/*+ */`` are *kept* comments (the server runs them); placeholders ``%s`` and ``?``.

- **Lexer.** `tokenize(sql, dialect)` is one `finditer` over an alternation of the fragments and
  returns `Token(kind, text)`s. Kinds: ``ws``, ``comment``, ``qid`` (quoted identifier), ``str``
  (every string literal and dollar quote), ``num``, ``ph`` (placeholder), ``semi``, ``word``,
  ``op`` (one other character). MySQL executable comments are unwrapped: their inner text is
  lexed in place, between two ``ws`` tokens, after dropping a version prefix (``/*!50000``);
  with ``versioned=False`` a versioned comment newer than the oldest supported server is dropped
  instead (what an older server runs; see `VERSIONED_COMMENT`). Optimizer hints become comments.
  Text the lexicons cannot classify (an unterminated quote, quoted identifier, comment or dollar
  quote, or comments nested too deep) raises `Unlexable`: nothing can be said of such a text,
  not even where its statements end. Outside MySQL executable comments the lexer loses nothing:
  the texts of the tokens joined give back the input.
- **Splitter.** `split_statements(tokens)` cuts the token list at every ``semi`` token (a `;`
  inside a string, identifier or comment is part of that token, never a separator) and trims
  ``ws`` / ``comment`` tokens from both ends of each statement; statements left empty are
  dropped. `statement_key` compares two readings of a statement, `significant` drops whitespace
  and comments.
- **Canonical text.** `canonical(tokens, dialect)` is what sqlglot parses: every string literal
  becomes ``'?'`` (kept with ``literals=True``), whitespace and comments become one space, ``%s``
  becomes the placeholder the fingerprint takes it for (``$1`` / ``?``), two ``-`` operators are
  emitted as ``- -`` (never a comment), and in postgres the ``[]`` of ``::oid[]`` / ``AS
  regclass[]`` casts is dropped (sqlglot 30 cannot parse them).
- **Fixed shapes.** `known_shape` recognises from the tokens alone the few statements sqlglot
  gets wrong (START TRANSACTION, SAVEPOINT, LISTEN, DISCARD, ...), `unwrap` finds the inner
  statement of PostgreSQL EXPLAIN and PREPARE .. AS.

Known limits: a server running with standard_conforming_strings=off (postgres) or
NO_BACKSLASH_ESCAPES / ANSI_QUOTES (mysql) reads quotes differently from these lexicons; compound
statements with inner semicolons (MySQL BEGIN .. END bodies, PostgreSQL BEGIN ATOMIC) are split at
the semicolons.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

__all__ = [
    "ID_CHARS",
    "LEXICONS",
    "PG_COMMENT_DEPTH",
    "VERSIONED_COMMENT",
    "WS",
    "Lexicon",
    "Token",
    "Unlexable",
    "canonical",
    "dollar_quote",
    "executable_comment",
    "known_shape",
    "significant",
    "split_statements",
    "statement_key",
    "tokenize",
    "unwrap",
]


# ------------------------------------------------------------------------------------ lexicons

# Characters that continue an identifier (so a digit among them is part of a word, not a number).
ID_CHARS: Final = r"0-9A-Za-z_$\x80-\U0010FFFF"
_NOT_BEFORE_ID = rf"(?![{ID_CHARS}])"
WS: Final = r"[ \t\n\r\f\v]"


class Lexicon(NamedTuple):
    """Regex fragments (without capturing groups) for the tokens of one dialect.

    The patterns assume they are tried at a token boundary (both lexers, `tokenize` and the
    fingerprint's pattern, scan left to right and consume whole words), so they need no
    look-behind.
    """

    word: str  # identifier or keyword, consumed whole
    strings: str  # string literals, dollar quotes excepted
    dollar_open: str  # opening delimiter of a dollar quote ("" when the dialect has none)
    numbers: str
    placeholders: str  # bind placeholders other than a bare `?`
    comment: str  # comments that are removed
    quoted_ident: str  # quoted identifiers, kept verbatim
    kept_comment: str  # comments that must be kept (MySQL executable comments, hints)
    operator: str  # one character of punctuation or operator that starts nothing else
    bad: str  # the opening of a quote or comment that the patterns above could not close


def _word(start: str) -> str:
    """A whole word starting with a character of `start`, except the word IN and a one-letter
    word that prefixes a string (E'', X'', U&'', ...): those go to the rewriting alternatives.
    Spelled without look-aheads on the common path because this runs once per word."""
    not_i = start.replace("A-Za-z", "A-HJ-Za-hj-z")
    not_n = ID_CHARS.replace("A-Za-z", "A-MO-Za-mo-z")
    return "|".join(
        (
            rf"[{not_i}][{ID_CHARS}]++",  # two or more characters, not starting with I
            rf"[Ii][{ID_CHARS}][{ID_CHARS}]++",  # three or more, starting with I
            rf"[Ii][{not_n}](?![{ID_CHARS}])",  # two, starting with I, not IN
            rf"[{start}](?![{ID_CHARS}'&])",  # one, not followed by a quote or &
        )
    )


_NUMBER = rf"(?>\d+(?:\.\d*)?|\.\d+)(?>[eE][+-]?\d+)?{_NOT_BEFORE_ID}"
_PERCENT_S = rf"%s{_NOT_BEFORE_ID}"
PG_COMMENT_DEPTH: Final = 4


def _pg_block_comment(depth: int) -> str:
    """A /* */ comment holding comments nested up to `depth` levels (re has no recursion)."""
    inner = r"[^*/]++|\*(?!/)|/(?!\*)"
    pattern = rf"/\*(?:{inner})*+\*/"
    for _ in range(depth):
        pattern = rf"/\*(?:{inner}|{pattern})*+\*/"
    return pattern


_PG_DOLLAR = r"\$(?:[A-Za-z_\x80-\U0010FFFF][0-9A-Za-z_\x80-\U0010FFFF]*+)?\$"

LEXICONS: Final[dict[str, Lexicon]] = {
    "postgres": Lexicon(
        word=_word(r"A-Za-z_\x80-\U0010FFFF"),
        strings="|".join(
            (
                r"'(?:[^']++|'')*+'",
                r"[eE]'(?:[^'\\]++|\\.|'')*+'",
                r"(?:[bBxXnN]|[uU]&)'(?:[^']++|'')*+'",
            )
        ),
        dollar_open=_PG_DOLLAR,
        numbers=_NUMBER,
        placeholders=rf"\$\d++{_NOT_BEFORE_ID}|{_PERCENT_S}",
        comment=rf"--[^\n\r]*+|{_pg_block_comment(PG_COMMENT_DEPTH)}",
        quoted_ident=r'"(?:[^"]++|"")*+"',
        kept_comment="",
        operator=rf"-(?!-)|/(?!\*)|%(?!s{_NOT_BEFORE_ID})|[^-/%'\"$ \t\n\r\f\v{ID_CHARS}]",
        # An E'' string that does not close must not be re-read as '' (no backslash escapes).
        bad=rf"[eE]?'|\"|/\*|{_PG_DOLLAR}",
    ),
    "mysql": Lexicon(
        word=_word(r"A-Za-z_$\x80-\U0010FFFF"),
        strings="|".join(
            (
                r"'(?:[^'\\]++|\\.|'')*+'",
                r'"(?:[^"\\]++|\\.|"")*+"',
                r"[xXbBnN]'(?:[^'\\]++|\\.|'')*+'",
            )
        ),
        dollar_open="",
        numbers="|".join(
            (
                rf"0x[0-9A-Fa-f]++{_NOT_BEFORE_ID}",
                rf"0b[01]++{_NOT_BEFORE_ID}",
                _NUMBER,
            )
        ),
        placeholders=_PERCENT_S,
        # `--` starts a comment only when followed by whitespace or a control character.
        comment=r"#[^\n]*+|--(?=[\x00-\x20]|\Z)[^\n]*+|/\*(?![!+]|M!)(?:[^*]++|\*(?!/))*+\*/",
        quoted_ident=r"`(?:[^`]++|``)*+`",
        kept_comment=r"/\*(?:!|M!|\+)(?:[^*]++|\*(?!/))*+\*/",
        operator=(
            rf"-(?!-(?:[\x00-\x20]|\Z))|/(?!\*)|%(?!s{_NOT_BEFORE_ID})"
            rf"|[^-/%#'\"` \t\n\r\f\v{ID_CHARS}]"
        ),
        bad=r"['\"`]|/\*",
    ),
}


def dollar_quote(lexicon: Lexicon, group: str) -> str:
    """A whole dollar-quoted string; `group` names the group that holds its delimiter.

    The body is a tempered token: no character of it may start the closing delimiter, so the
    string ends at the first `$tag$` however a larger pattern backtracks (a lazy `.*?` could be
    stretched past it: `IN ($$$$, (SELECT ...), $$x$$)` read as one literal)."""
    return rf"(?P<{group}>{lexicon.dollar_open})(?:(?!(?P={group})).)*(?P={group})"


# ------------------------------------------------------------------------------------- lexing


class Token(NamedTuple):
    """One token of `tokenize`: its kind and its text as written."""

    kind: str  # ws comment qid str num ph semi word op (kept and bad never leave tokenize)
    text: str


def _lexer(lex: Lexicon) -> re.Pattern[str]:
    parts = [
        ("ws", rf"{WS}++"),
        ("comment", lex.comment),
        ("kept", lex.kept_comment),
        ("qid", lex.quoted_ident),
        ("str", "|".join(p for p in (lex.strings, lex.dollar_open and dollar_quote(lex, "dq")) if p)),
        ("num", lex.numbers),
        ("ph", rf"{lex.placeholders}|\?"),
        ("semi", ";"),
        ("bad", lex.bad),
        ("word", rf"[{ID_CHARS}]++"),
        ("op", "."),
    ]
    return re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in parts if rx), re.DOTALL)


_LEXERS: Final[dict[str, re.Pattern[str]]] = {name: _lexer(lex) for name, lex in LEXICONS.items()}
_VERSION_PREFIX = re.compile(r"\d{5,6}")


class Unlexable(Exception):
    """The text holds a quote, quoted identifier, comment or dollar quote that does not close
    (or comments nested deeper than `PG_COMMENT_DEPTH`): it cannot be lexed."""


def tokenize(sql: str, dialect: str, *, versioned: bool = True) -> list[Token]:
    """Tokens of `sql`, MySQL executable comments unwrapped; raises `Unlexable`. With
    `versioned=False`, comments that carry a server version (`/*!50000 ...*/`, `/*M!100500
    ...*/`) are dropped instead: what a server older than that version runs."""
    out: list[Token] = []
    for m in _LEXERS[dialect].finditer(sql):
        kind = m.lastgroup
        assert kind is not None
        text = m.group()
        if kind == "bad":
            raise Unlexable
        if kind == "kept":
            if text.startswith("/*+"):  # optimizer hint: no facts in it
                out.append(Token("comment", text))
                continue
            inner = text[4:-2] if text.startswith("/*M!") else text[3:-2]
            version = _VERSION_PREFIX.match(inner)
            if version:
                if not versioned and not _always_runs(text, int(version.group())):
                    out.append(Token("ws", " "))
                    continue
                inner = _VERSION_PREFIX.sub("", inner, count=1)
            out.append(Token("ws", " "))
            out.extend(tokenize(inner, dialect, versioned=versioned))
            out.append(Token("ws", " "))
            continue
        out.append(Token(kind, text))
    return out


# A MySQL executable comment with a server version (`/*!50000 ...*/`, `/*M!100500 ...*/`): where
# it occurs, `tokenize(..., versioned=False)` may read the text differently.
VERSIONED_COMMENT: Final = re.compile(r"/\*M?!\d")
# Versions every server sqlward supports has reached (MySQL 5.7, MariaDB 10.2): comments at or
# below them always run; above, it depends on the server and both readings are judged.
_OLDEST_MYSQL, _OLDEST_MARIADB = 50700, 100200


def _always_runs(comment: str, version: int) -> bool:
    if comment.startswith("/*M!"):
        return version <= _OLDEST_MARIADB
    return version <= _OLDEST_MYSQL


def executable_comment(sql: str, dialect: str) -> bool:
    """Whether `sql` holds a MySQL executable comment (`/*! */`, `/*M! */`; optimizer hints do
    not count), for a text `tokenize` accepts."""
    return any(m.lastgroup == "kept" and not m.group().startswith("/*+") for m in _LEXERS[dialect].finditer(sql))


# ------------------------------------------------------------------------------------ splitting


def statement_key(piece: Sequence[Token]) -> str:
    """The significant tokens of a statement joined by spaces (equal for two readings of a
    statement that differ only in whitespace and comments)."""
    return " ".join(t.text for t in piece if t.kind not in ("ws", "comment"))


def split_statements(tokens: Iterable[Token]) -> list[list[Token]]:
    """Statements (token lists without ws/comments at the ends); empty ones dropped."""
    pieces: list[list[Token]] = []
    current: list[Token] = []
    for tok in tokens:
        if tok.kind == "semi":
            pieces.append(current)
            current = []
        else:
            current.append(tok)
    pieces.append(current)
    result = []
    for piece in pieces:
        sig = [i for i, t in enumerate(piece) if t.kind not in ("ws", "comment")]
        if sig:
            result.append(piece[sig[0] : sig[-1] + 1])
    return result


# ------------------------------------------------------------------------------- canonical text


def _cast_array_brackets(tokens: Sequence[Token]) -> set[int]:
    """Indices of the `[]` / `[n]` after a type in `::type[]` or `AS type[]` (postgres).

    sqlglot 30 cannot parse `::oid[]`, `::regclass[]` and the other reg* array casts that drivers
    send (asyncpg's type introspection has `any($1::oid[])`); an array cast changes no fact."""
    sig = [i for i, t in enumerate(tokens) if t.kind not in ("ws", "comment")]
    drop: set[int] = set()

    def at(k: int) -> Token | None:
        return tokens[sig[k]] if 0 <= k < len(sig) else None

    for k, i in enumerate(sig):
        if tokens[i].text != "[":
            continue
        p = k - 1
        while p >= 0 and sig[p] in drop:
            p -= 1
        name = at(p)
        if name is None or name.kind not in ("word", "qid"):
            continue
        q = p - 1
        dot, qualifier = at(q), at(q - 1)
        if dot is not None and dot.text == "." and qualifier is not None and qualifier.kind in ("word", "qid"):
            q -= 2
        before, before2 = at(q), at(q - 1)
        is_cast = (before is not None and before.kind == "word" and before.text.upper() == "AS") or (
            before is not None and before.text == ":" and before2 is not None and before2.text == ":"
        )
        if not is_cast:
            continue
        e = k + 1
        inner = at(e)
        if inner is not None and inner.kind == "num":
            e += 1
        close = at(e)
        if close is not None and close.text == "]":
            drop.update(sig[k : e + 1])
    return drop


def canonical(tokens: Sequence[Token], dialect: str, literals: bool = False) -> str:
    """The text sqlglot parses: literals neutralised (kept with `literals`, for the per-text
    evaluation of literal-dependent facts), comments gone, `--` never formed."""
    drop = _cast_array_brackets(tokens) if dialect == "postgres" else set()
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i in drop:
            continue
        if tok.kind in ("ws", "comment"):
            if out and out[-1] != " ":
                out.append(" ")
        elif tok.kind == "str" and not literals:
            out.append("'?'")
        elif tok.kind == "ph" and tok.text == "%s":  # the fingerprint's `?`, as sqlglot reads it
            out.append("$1" if dialect == "postgres" else "?")
        elif tok.kind == "op" and tok.text == "-" and out and out[-1] == "-":
            out.append(" -")
        else:
            out.append(tok.text)
    return "".join(out).strip()


def significant(tokens: Sequence[Token]) -> list[Token]:
    """`tokens` without whitespace and comments."""
    return [t for t in tokens if t.kind not in ("ws", "comment")]


def _normalized(tokens: Sequence[Token]) -> str:
    """Significant tokens joined by single spaces, words upper-cased, strings as '?'."""
    out = []
    for t in significant(tokens):
        if t.kind == "word":
            out.append(t.text.upper())
        elif t.kind == "str":
            out.append("'?'")
        else:
            out.append(t.text)
    return " ".join(out)


# ---------------------------------------------------------------------------------- fixed shapes

# Statements whose whole shape is recognised without sqlglot (which gets these wrong).
_NAME = r'(?:[A-Z_\x80-\U0010FFFF][A-Z0-9_$\x80-\U0010FFFF]*|"(?:[^"]|"")+"|`(?:[^`]|``)+`)'
_TX_MODE = (
    r"(?:ISOLATION LEVEL (?:SERIALIZABLE|REPEATABLE READ|READ COMMITTED|READ UNCOMMITTED)"
    r"|READ WRITE|READ ONLY|(?:NOT )?DEFERRABLE|WITH CONSISTENT SNAPSHOT)"
)
_TX_MODES = rf"(?: {_TX_MODE}(?: ,? {_TX_MODE})*)?"
_CHAIN = r"(?: AND (?:NO )?CHAIN)?(?: (?:NO )?RELEASE)?"
_KNOWN_SHAPES: Final[tuple[tuple[re.Pattern[str], str, str], ...]] = tuple(
    (re.compile(rx), op, detail)
    for rx, op, detail in (
        (rf"START TRANSACTION{_TX_MODES}", "begin", ""),
        (rf"BEGIN(?: WORK| TRANSACTION)?{_TX_MODES}", "begin", ""),
        (rf"SAVEPOINT {_NAME}", "savepoint", ""),
        (rf"RELEASE(?: SAVEPOINT)? {_NAME}", "savepoint", "release"),
        (rf"ROLLBACK(?: WORK| TRANSACTION)? TO(?: SAVEPOINT)? {_NAME}", "rollback", "savepoint"),
        (rf"(?:ABORT|ROLLBACK)(?: WORK| TRANSACTION)?{_CHAIN}", "rollback", ""),
        (rf"(?:COMMIT|END)(?: WORK| TRANSACTION)?{_CHAIN}", "commit", ""),
        (rf"LISTEN {_NAME}", "listen", ""),
        (rf"UNLISTEN (?:{_NAME}|\*)", "listen", "unlisten"),
        (rf"NOTIFY {_NAME}(?: , '\?')?", "notify", ""),
        (rf"DEALLOCATE(?: PREPARE)? {_NAME}", "deallocate", ""),
        (r"DISCARD (?:ALL|PLANS|SEQUENCES|TEMP|TEMPORARY)", "other", "discard"),
        (r"CHECKPOINT", "other", "checkpoint"),
        (rf"RESET {_NAME}(?: {_NAME})?", "set", "reset"),
    )
)
# SHOW is parsed by sqlglot's mysql dialect, not by its postgres one.
_PG_SHOW = re.compile(rf"SHOW {_NAME}(?: {_NAME})*")


def known_shape(tokens: Sequence[Token], dialect: str) -> tuple[str, str] | None:
    """(operation, detail) of a statement whose whole shape is one of the fixed ones above."""
    text = _normalized(tokens)
    for rx, op, detail in _KNOWN_SHAPES:
        if rx.fullmatch(text):
            return op, detail
    if dialect == "postgres" and _PG_SHOW.fullmatch(text):
        return "show", ""
    if dialect == "mysql" and text == "CHANGE USER":
        # Not SQL: the MySQL adapter decides COM_CHANGE_USER (a switch of the session's identity)
        # as this pseudo statement, so rules and the identity-escalation guardrail can judge it.
        return "change user", ""
    return None


def unwrap(tokens: Sequence[Token], dialect: str) -> tuple[str, Sequence[Token]] | None:
    """("explain" | "prepare", inner statement tokens) for PostgreSQL EXPLAIN / PREPARE."""
    if dialect != "postgres":
        return None
    sig = [i for i, t in enumerate(tokens) if t.kind not in ("ws", "comment")]
    if not sig or tokens[sig[0]].kind != "word":
        return None

    def text(k: int) -> str:
        return tokens[sig[k]].text.upper() if k < len(sig) else ""

    def skip_parens(k: int) -> int:
        depth = 0
        while k < len(sig):
            depth += {"(": 1, ")": -1}.get(text(k), 0)
            k += 1
            if depth == 0:
                break
        return k

    first = text(0)
    k = 1
    if first == "EXPLAIN":
        if text(k) == "(":
            k = skip_parens(k)
        while text(k) in ("ANALYZE", "ANALYSE", "VERBOSE"):
            k += 1
        op = "explain"
    elif first == "PREPARE" and len(sig) > 2:
        k = 2
        if text(k) == "(":
            k = skip_parens(k)
        if text(k) != "AS":
            return None
        k += 1
        op = "prepare"
    else:
        return None
    return (op, tokens[sig[k] :]) if k < len(sig) else None
