"""Unit tests for policy.sqltext: the lexer, the statement splitter and the canonical text
(table-driven, both dialects)."""

from __future__ import annotations

import pytest

from sqlward.policy.sqltext import (
    LEXICONS,
    PG_COMMENT_DEPTH,
    VERSIONED_COMMENT,
    Token,
    Unlexable,
    canonical,
    executable_comment,
    known_shape,
    significant,
    split_statements,
    statement_key,
    tokenize,
    unwrap,
)

PG = "postgres"
MY = "mysql"


def kinds(sql: str, dialect: str, *, versioned: bool = True) -> list[tuple[str, str]]:
    """(kind, text) of the tokens that are not whitespace."""
    return [(t.kind, t.text) for t in tokenize(sql, dialect, versioned=versioned) if t.kind != "ws"]


def pieces(sql: str, dialect: str) -> list[str]:
    return ["".join(t.text for t in piece) for piece in split_statements(tokenize(sql, dialect))]


def test_dialects() -> None:
    assert sorted(LEXICONS) == [MY, PG]


# --------------------------------------------------------------------------------- the lexer

# (dialect, text, the one token it lexes to)
SINGLE_TOKENS: list[tuple[str, str, tuple[str, str]]] = [
    # postgres strings: '' escapes, no backslash escapes in standard strings
    (PG, "'it''s'", ("str", "'it''s'")),
    (PG, "'a\\'", ("str", "'a\\'")),
    (PG, "''", ("str", "''")),
    (PG, "'a;b -- c /* d'", ("str", "'a;b -- c /* d'")),
    # E'' strings: backslash escapes (and '' too)
    (PG, "E'it\\'s'", ("str", "E'it\\'s'")),
    (PG, "e'a''b\\\\'", ("str", "e'a''b\\\\'")),
    # prefixed strings
    (PG, "B'0101'", ("str", "B'0101'")),
    (PG, "X'ff'", ("str", "X'ff'")),
    (PG, "N'x'", ("str", "N'x'")),
    (PG, "U&'d\\0061'", ("str", "U&'d\\0061'")),
    # dollar quotes, with and without a tag; quotes, semicolons and other tags inside
    (PG, "$$a;'b$$", ("str", "$$a;'b$$")),
    (PG, "$q$x$$y;'$q$", ("str", "$q$x$$y;'$q$")),
    (PG, "$_1$ -- $_1$", ("str", "$_1$ -- $_1$")),
    # quoted identifiers
    (PG, '"A""b;c"', ("qid", '"A""b;c"')),
    # placeholders, numbers, words
    (PG, "$1", ("ph", "$1")),
    (PG, "%s", ("ph", "%s")),
    (PG, "?", ("ph", "?")),
    (PG, "1.5e-3", ("num", "1.5e-3")),
    (PG, "a$1", ("word", "a$1")),
    (PG, "t1", ("word", "t1")),
    # comments: line, block, nested block
    (PG, "-- a ; 'b", ("comment", "-- a ; 'b")),
    (PG, "/* a /* b; */ 'c */", ("comment", "/* a /* b; */ 'c */")),
    # mysql strings: backslash escapes and doubled quotes, both quote characters
    (MY, "'it\\'s'", ("str", "'it\\'s'")),
    (MY, "'it''s'", ("str", "'it''s'")),
    (MY, "'a\\\\'", ("str", "'a\\\\'")),
    (MY, '"x\\"y;"', ("str", '"x\\"y;"')),
    (MY, "X'ff'", ("str", "X'ff'")),
    (MY, "b'01'", ("str", "b'01'")),
    # backquoted identifiers; double quotes are strings in mysql
    (MY, "`a``b;c`", ("qid", "`a``b;c`")),
    # numbers, placeholders, words ($ and a leading digit can be part of a word)
    (MY, "0x1F", ("num", "0x1F")),
    (MY, "0b01", ("num", "0b01")),
    (MY, "?", ("ph", "?")),
    (MY, "%s", ("ph", "%s")),
    (MY, "$1", ("word", "$1")),
    (MY, "1t", ("word", "1t")),
    # comments: #, `-- ` (whitespace after the dashes), /* */; hints become comments
    (MY, "# a ; 'b", ("comment", "# a ; 'b")),
    (MY, "-- a", ("comment", "-- a")),
    (MY, "/* a ' */", ("comment", "/* a ' */")),
    (MY, "/*+ BKA(t) */", ("comment", "/*+ BKA(t) */")),
]


@pytest.mark.parametrize(("dialect", "sql", "token"), SINGLE_TOKENS)
def test_single_token(dialect: str, sql: str, token: tuple[str, str]) -> None:
    assert kinds(sql, dialect) == [token]


def test_dollar_quotes_are_postgres_only() -> None:
    assert kinds("$$a$$", MY) == [("word", "$$a$$")]
    assert kinds("SELECT $1", MY) == [("word", "SELECT"), ("word", "$1")]


def test_a_statement_of_both_dialects() -> None:
    sql = "SELECT a, 'x;y' FROM t WHERE b = $1; -- c\n"
    assert kinds(sql, PG) == [
        ("word", "SELECT"),
        ("word", "a"),
        ("op", ","),
        ("str", "'x;y'"),
        ("word", "FROM"),
        ("word", "t"),
        ("word", "WHERE"),
        ("word", "b"),
        ("op", "="),
        ("ph", "$1"),
        ("semi", ";"),
        ("comment", "-- c"),
    ]


def test_mysql_double_dash_needs_whitespace() -> None:
    assert kinds("1--x", MY) == [("num", "1"), ("op", "-"), ("op", "-"), ("word", "x")]
    assert kinds("1-- x", MY) == [("num", "1"), ("comment", "-- x")]
    assert kinds("1--", MY) == [("num", "1"), ("comment", "--")]
    assert kinds("1--x", PG) == [("num", "1"), ("comment", "--x")]


def test_mysql_executable_comments_are_unwrapped() -> None:
    # The server runs what is inside: the lexer reads it as if the comment markers were not there.
    assert kinds("SELECT 1 /*!, pw FROM secret */", MY) == [
        ("word", "SELECT"),
        ("num", "1"),
        ("op", ","),
        ("word", "pw"),
        ("word", "FROM"),
        ("word", "secret"),
    ]
    # A version prefix is dropped; MariaDB's /*M! */ likewise.
    assert kinds("/*!40101 SET NAMES utf8 */", MY) == [("word", "SET"), ("word", "NAMES"), ("word", "utf8")]
    assert kinds("/*M!100500 SELECT 2 */", MY) == [("word", "SELECT"), ("num", "2")]
    # Whitespace on both sides keeps the inner tokens apart from the outer ones.
    tokens = tokenize("a/*!b*/c", MY)
    assert [t.text for t in tokens] == ["a", " ", "b", " ", "c"]
    # Quotes inside are lexed too (and must close).
    assert kinds("/*! 'x;y' */", MY) == [("str", "'x;y'")]
    # Postgres has no executable comments.
    assert kinds("/*! x */", PG) == [("comment", "/*! x */")]


def test_versioned_comments_read_by_an_older_server() -> None:
    sql = "SELECT 1 /*!80000 , secret */ /*!50000 , ok */ /*M!100500 , maria */ /*M!100100 , old */ /*! , plain */"
    newest = [t.text for t in significant(tokenize(sql, MY))]
    assert newest == ["SELECT", "1", ",", "secret", ",", "ok", ",", "maria", ",", "old", ",", "plain"]
    # versioned=False: comments above the oldest supported servers (MySQL 5.7, MariaDB 10.2) are
    # dropped, those at or below run everywhere, unversioned ones always run.
    oldest = [t.text for t in significant(tokenize(sql, MY, versioned=False))]
    assert oldest == ["SELECT", "1", ",", "ok", ",", "old", ",", "plain"]
    assert VERSIONED_COMMENT.search(sql) and not VERSIONED_COMMENT.search("/*! x */ /*+ y */")


def test_executable_comment() -> None:
    assert executable_comment("SELECT /*!50000 1 */", MY)
    assert executable_comment("SELECT /*M! 1 */", MY)
    assert not executable_comment("SELECT /*+ NO_ICP(t) */ 1", MY)
    assert not executable_comment("SELECT '/*! 1 */'", MY)
    assert not executable_comment("SELECT /*! 1 */", PG)


UNLEXABLE: list[tuple[str, str]] = [
    (PG, "SELECT 'abc"),
    (PG, "SELECT 'it''s"),
    (PG, "SELECT E'abc\\'"),  # the escaped quote does not close it (and it is not re-read as '')
    (PG, "SELECT X'ff"),
    (PG, 'SELECT "abc'),
    (PG, "SELECT 1 /* abc"),
    (PG, "SELECT 1 /* a /* b */"),
    (PG, "SELECT $$abc"),
    (PG, "SELECT $q$abc$$"),
    (PG, "SELECT $q$abc$Q$"),
    (PG, "/*" * (PG_COMMENT_DEPTH + 2) + "*/" * (PG_COMMENT_DEPTH + 2)),
    (MY, "SELECT 'abc"),
    (MY, "SELECT 'abc\\'"),
    (MY, 'SELECT "abc'),
    (MY, "SELECT `abc"),
    (MY, "SELECT 1 /* abc"),
    (MY, "SELECT 1 /*! abc"),
    (MY, "SELECT 1 /*! 'abc */"),  # a quote that does not close inside an executable comment
]


@pytest.mark.parametrize(("dialect", "sql"), UNLEXABLE)
def test_unterminated_is_unlexable(dialect: str, sql: str) -> None:
    with pytest.raises(Unlexable):
        tokenize(sql, dialect)


def test_nesting_up_to_the_supported_depth() -> None:
    depth = PG_COMMENT_DEPTH + 1  # the outer comment and PG_COMMENT_DEPTH levels inside it
    comment = "/*" * depth + "*/" * depth
    assert kinds(comment, PG) == [("comment", comment)]


def test_lexing_loses_nothing_outside_executable_comments() -> None:
    for dialect, sql in [
        (PG, "SELECT  E'a\\'b' , $q$;$q$\t/* c /* d */ */\n-- e\r\nFROM \"T\";"),
        (MY, "SELECT 'a\\'b', \"c\" # d\n/*+ hint */ FROM `t`;;"),
    ]:
        assert "".join(t.text for t in tokenize(sql, dialect)) == sql


# ------------------------------------------------------------------------------ the splitter

SPLITS: list[tuple[str, str, list[str]]] = [
    (PG, "SELECT 1", ["SELECT 1"]),
    (PG, "SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
    # whitespace and comments at the ends of a statement are trimmed; empty statements dropped
    (PG, "  /* a */ SELECT 1 /* b */ ; ;; -- c\n ; SELECT 2 -- d", ["SELECT 1", "SELECT 2"]),
    (PG, " ; -- only comments ;\n /* ; */ ", []),
    (PG, "", []),
    # inside a statement, comments and whitespace stay
    (PG, "SELECT /* x */ 1", ["SELECT /* x */ 1"]),
    # a ; inside a string, dollar quote, identifier or comment does not split
    (PG, "SELECT ';', $$;$$, \"a;b\" /* ; */ FROM t", ["SELECT ';', $$;$$, \"a;b\" /* ; */ FROM t"]),
    (PG, "SELECT E'\\';' ; SELECT 2", ["SELECT E'\\';'", "SELECT 2"]),
    (MY, "SELECT 'a\\';b', \"c;\", `d;e` # ;\n; SELECT 2", ["SELECT 'a\\';b', \"c;\", `d;e`", "SELECT 2"]),
    # MySQL: a ; inside an executable comment does split (the server reads it)
    (MY, "SELECT 1 /*!; SELECT 2 */", ["SELECT 1", "SELECT 2"]),
    # compound statements are split at their inner semicolons (a known limit)
    (MY, "BEGIN SELECT 1; END", ["BEGIN SELECT 1", "END"]),
]


@pytest.mark.parametrize(("dialect", "sql", "expected"), SPLITS)
def test_split_statements(dialect: str, sql: str, expected: list[str]) -> None:
    assert pieces(sql, dialect) == expected


def test_split_statements_keeps_tokens() -> None:
    tokens = tokenize("SELECT 1 ; SELECT 'x'", PG)
    assert split_statements(tokens) == [
        [Token("word", "SELECT"), Token("ws", " "), Token("num", "1")],
        [Token("word", "SELECT"), Token("ws", " "), Token("str", "'x'")],
    ]


def test_significant_and_statement_key() -> None:
    tokens = tokenize(" SELECT /* c */ a ,\n b -- d", PG)
    assert [t.text for t in significant(tokens)] == ["SELECT", "a", ",", "b"]
    assert statement_key(tokens) == "SELECT a , b"
    assert statement_key(tokenize("SELECT a, b", PG)) == "SELECT a , b"


# ------------------------------------------------------------------------- canonical text

CANONICAL: list[tuple[str, str, str, str]] = [
    # (dialect, text, canonical, canonical with literals kept)
    (PG, "SELECT 'a', E'b\\'', $$c$$, 1 FROM t", "SELECT '?', '?', '?', 1 FROM t", "SELECT 'a', E'b\\'', $$c$$, 1 FROM t"),
    (PG, "SELECT a /* c */ FROM\n\t t -- d", "SELECT a FROM t", "SELECT a FROM t"),
    (PG, "SELECT %s, $2", "SELECT $1, $2", "SELECT $1, $2"),
    (MY, "SELECT %s, ?", "SELECT ?, ?", "SELECT ?, ?"),
    (MY, "SELECT \"a\", 'b' FROM `t`", "SELECT '?', '?' FROM `t`", "SELECT \"a\", 'b' FROM `t`"),
    # two minus signs never become a comment
    (MY, "SELECT 1--1", "SELECT 1- -1", "SELECT 1- -1"),
    (PG, "SELECT 1 - -1", "SELECT 1 - -1", "SELECT 1 - -1"),
    # executable comments are unwrapped, hints dropped
    (MY, "SELECT /*+ BKA(t) */ 1 /*!50000 , pw */ FROM t", "SELECT 1 , pw FROM t", "SELECT 1 , pw FROM t"),
    # postgres array casts to oid / reg* types lose their []
    (PG, "SELECT $1::oid[], x::pg_catalog.regtype[3], CAST(y AS regclass[])", "SELECT $1::oid, x::pg_catalog.regtype, CAST(y AS regclass)", "SELECT $1::oid, x::pg_catalog.regtype, CAST(y AS regclass)"),
    (PG, "SELECT a[1], b [2]", "SELECT a[1], b [2]", "SELECT a[1], b [2]"),
]


@pytest.mark.parametrize(("dialect", "sql", "expected", "with_literals"), CANONICAL)
def test_canonical(dialect: str, sql: str, expected: str, with_literals: str) -> None:
    tokens = tokenize(sql, dialect)
    assert canonical(tokens, dialect) == expected
    assert canonical(tokens, dialect, literals=True) == with_literals


# ----------------------------------------------------------------------------- fixed shapes

SHAPES: list[tuple[str, str, tuple[str, str] | None]] = [
    (PG, "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", ("begin", "")),
    (MY, "start transaction with consistent snapshot", ("begin", "")),
    (PG, "BEGIN WORK", ("begin", "")),
    (PG, "SAVEPOINT \"sp 1\"", ("savepoint", "")),
    (MY, "RELEASE SAVEPOINT `sp`", ("savepoint", "release")),
    (PG, "ROLLBACK TO SAVEPOINT sp", ("rollback", "savepoint")),
    (PG, "ABORT", ("rollback", "")),
    (MY, "COMMIT AND NO CHAIN", ("commit", "")),
    (PG, "LISTEN ch", ("listen", "")),
    (PG, "UNLISTEN *", ("listen", "unlisten")),
    (PG, "NOTIFY ch, 'payload'", ("notify", "")),
    (PG, "DEALLOCATE PREPARE s1", ("deallocate", "")),
    (PG, "DISCARD ALL", ("other", "discard")),
    (PG, "CHECKPOINT", ("other", "checkpoint")),
    (PG, "RESET search_path", ("set", "reset")),
    (PG, "SHOW search_path", ("show", "")),
    (MY, "SHOW TABLES", None),  # sqlglot's mysql dialect parses SHOW
    (MY, "CHANGE USER", ("change user", "")),
    (PG, "CHANGE USER", None),
    (PG, "SELECT 1", None),
    (PG, "BEGIN; SELECT 1", None),
]


@pytest.mark.parametrize(("dialect", "sql", "shape"), SHAPES)
def test_known_shape(dialect: str, sql: str, shape: tuple[str, str] | None) -> None:
    assert known_shape(tokenize(sql, dialect), dialect) == shape


def test_unwrap_explain_and_prepare() -> None:
    def inner(sql: str, dialect: str = PG) -> tuple[str, str] | None:
        found = unwrap(tokenize(sql, dialect), dialect)
        return None if found is None else (found[0], "".join(t.text for t in found[1]))

    assert inner("EXPLAIN DELETE FROM t") == ("explain", "DELETE FROM t")
    assert inner("EXPLAIN (ANALYZE, BUFFERS) ANALYZE VERBOSE UPDATE t SET a = 1") == ("explain", "UPDATE t SET a = 1")
    assert inner("PREPARE p (int) AS SELECT $1") == ("prepare", "SELECT $1")
    assert inner("PREPARE p AS INSERT INTO t VALUES (1)") == ("prepare", "INSERT INTO t VALUES (1)")
    assert inner("PREPARE p FROM 'SELECT 1'") is None
    assert inner("EXPLAIN") is None
    assert inner("SELECT 1") is None
    assert inner("EXPLAIN DELETE FROM t", MY) is None  # postgres only
