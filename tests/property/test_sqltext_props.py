"""Property tests for policy.sqltext: the lexer and the statement splitter.

- `tokenize` never raises anything but `Unlexable`, on any text, and produces only the
  documented token kinds;
- outside MySQL executable comments it loses nothing: the token texts joined are the input;
- `split_statements` only drops whitespace, comments and `;` tokens: walking the token list, each
  statement is the next run of tokens after separators, no statement holds a `;`, starts or ends
  with whitespace or a comment, and what lies between statements holds a `;`;
- statements written with strings, quoted identifiers and comments that hold semicolons and
  quotes, joined with `;` and surrounded by whitespace, comments and empty statements, split back
  into exactly those statements, as written;
- without a versioned comment, reading the text as an older MySQL server changes nothing.
"""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sqlward.policy.sqltext import (
    VERSIONED_COMMENT,
    Token,
    Unlexable,
    executable_comment,
    split_statements,
    tokenize,
)

PG = "postgres"
MY = "mysql"
DIALECTS = st.sampled_from([PG, MY])
KINDS = {"ws", "comment", "qid", "str", "num", "ph", "semi", "word", "op"}
SEPARATOR_KINDS = ("ws", "comment", "semi")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that stress the lexer: every quote and comment opener of both dialects.
NASTY = st.text(alphabet=st.sampled_from(list("ab E'\"`\\;-/*#$?%!M+\n\t0.()é")), max_size=12)
# Arbitrary texts: mostly the characters that matter, sometimes anything at all.
SOUP = st.one_of(
    st.lists(
        st.sampled_from(list("aEIN1 ;'\"`\\-/*#$?%!M+()[]:,.\n\té\x00") + ["/*!", "/*M!5", "/*+", "$q$", "U&'", "E'", "--"]),
        max_size=30,
    ).map("".join),
    st.text(max_size=40),
)


def tokens_or_none(sql: str, dialect: str, *, versioned: bool = True) -> list[Token] | None:
    try:
        return tokenize(sql, dialect, versioned=versioned)
    except Unlexable:
        return None


# ------------------------------------------------------------------------------ the lexer


@SETTINGS
@given(DIALECTS, SOUP)
def test_tokenize_raises_only_unlexable(dialect: str, sql: str) -> None:
    tokens = tokens_or_none(sql, dialect)
    if tokens is not None:
        assert {t.kind for t in tokens} <= KINDS
        assert all(t.text for t in tokens)


@SETTINGS
@given(DIALECTS, SOUP)
def test_tokenize_is_lossless_outside_executable_comments(dialect: str, sql: str) -> None:
    tokens = tokens_or_none(sql, dialect)
    assume(tokens is not None)
    assert tokens is not None
    if dialect == MY and executable_comment(sql, dialect):
        return
    assert "".join(t.text for t in tokens) == sql


@SETTINGS
@given(SOUP)
def test_versioned_false_changes_nothing_without_a_versioned_comment(sql: str) -> None:
    assume(not VERSIONED_COMMENT.search(sql))
    assert tokens_or_none(sql, MY, versioned=False) == tokens_or_none(sql, MY)


# ---------------------------------------------------------------------------- the splitter


@SETTINGS
@given(DIALECTS, SOUP)
def test_split_statements_only_drops_separators(dialect: str, sql: str) -> None:
    tokens = tokens_or_none(sql, dialect)
    assume(tokens is not None)
    assert tokens is not None
    pieces = split_statements(tokens)
    at = 0
    for n, piece in enumerate(pieces):
        assert piece, "no empty statement"
        assert piece[0].kind not in SEPARATOR_KINDS and piece[-1].kind not in SEPARATOR_KINDS
        assert all(t.kind != "semi" for t in piece)
        start = at
        while tokens[at].kind in SEPARATOR_KINDS:
            at += 1
        if n:
            assert any(t.kind == "semi" for t in tokens[start:at]), "statements are separated by ;"
        assert tokens[at : at + len(piece)] == piece
        at += len(piece)
    assert all(t.kind in SEPARATOR_KINDS for t in tokens[at:])


@st.composite
def significant_token(draw: st.DrawFn, dialect: str) -> str:
    """One token that is not whitespace, a comment or a `;`, written the way the dialect reads it."""
    text = draw(NASTY)
    kinds = ["word", "num", "op", "ph", "str", "str2", "qid"] + (["estr", "dollar", "tagged", "prefixed"] if dialect == PG else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "word":
        return draw(st.sampled_from(["SELECT", "FROM", "t", "a1", "IN", "in", "E", "N", "x_y", "é"]))
    if kind == "num":
        return draw(st.sampled_from(["1", "2.5", "1e3", ".5"] + (["0x1F", "0b01"] if dialect == MY else [])))
    if kind == "op":
        return draw(st.sampled_from(list("(),=-+*/.:[]%<>")))
    if kind == "ph":
        return draw(st.sampled_from(["?", "%s"] + (["$1", "$12"] if dialect == PG else [])))
    if kind == "estr":
        return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == "dollar":
        return "$$" + text.replace("$", "") + "$$"
    if kind == "tagged":
        return "$q$" + text.replace("$", "") + "$q$"
    if kind == "prefixed":
        return draw(st.sampled_from(["B'01'", "X'ff'", "N'x'", "U&'d'"]))
    if kind == "str":
        if dialect == PG:
            return "'" + text.replace("'", "''") + "'"
        return "'" + text.replace("\\", "\\\\").replace("'", draw(st.sampled_from(["''", "\\'"]))) + "'"
    if kind == "str2":
        if dialect == PG:
            return '"' + text.replace('"', '""') + '"'  # a quoted identifier in postgres
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if dialect == PG:
        return '"' + text.replace('"', '""') + '"'
    return "`" + text.replace("`", "``") + "`"


def gap(dialect: str) -> st.SearchStrategy[str]:
    """Whitespace or comments (never empty) that may hold quotes and semicolons."""
    comments = [" /* c; 'x' \" */ ", " -- d; ' \" `\n", "\n", " ", "\t"]
    if dialect == PG:
        comments.append(" /* a /* nested; */ b */ ")
    else:
        comments.extend([" # e; ' `\n", " /*+ hint; */ "])
    return st.lists(st.sampled_from(comments), min_size=1, max_size=3).map("".join)


@st.composite
def statements_text(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    dialect = draw(DIALECTS)
    statements = []
    for _ in range(draw(st.integers(1, 4))):
        words = draw(st.lists(significant_token(dialect), min_size=1, max_size=8))
        text = words[0]
        for word in words[1:]:
            text += draw(gap(dialect)) + word
        statements.append(text)
    around = st.one_of(st.just(""), gap(dialect), gap(dialect).map(lambda g: g + ";" + g))
    sql = draw(around)
    for text in statements:
        sql += text + draw(around) + ";" + draw(around)
    if draw(st.booleans()):
        sql = sql.rstrip().removesuffix(";")  # no ; after the last statement
    return dialect, sql, statements


@SETTINGS
@given(statements_text())
def test_joined_statements_split_back(case: tuple[str, str, list[str]]) -> None:
    dialect, sql, statements = case
    tokens = tokenize(sql, dialect)
    assert "".join(t.text for t in tokens) == sql
    assert ["".join(t.text for t in piece) for piece in split_statements(tokens)] == statements
