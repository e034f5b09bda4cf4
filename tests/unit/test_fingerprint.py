"""Unit tests for policy.fingerprint: literal-free cache keys (table-driven)."""

from __future__ import annotations

import time

import pytest

from sqlward.policy.fingerprint import RAW_PREFIX, fingerprint

PG = "postgres"
MY = "mysql"

# (dialect, text, expected fingerprint)
CASES: list[tuple[str, str, str]] = [
    # the pgbench -S statement
    (PG, "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"),
    (MY, "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"),
    # numbers: ints, decimals, exponents, signs stay as operators
    (PG, "SELECT 1, 1.5, .5e3, 6., 2E-10, -7", "SELECT ?, ?, .?, ?, ?, -?"),
    (PG, "UPDATE t SET a = a + -4116 WHERE id = 1", "UPDATE t SET a = a + -? WHERE id = ?"),
    # digits inside identifiers are not literals
    (PG, "SELECT t1.col_2, x9 FROM t1 JOIN s2 ON t1.a = s2.a", "SELECT t1.col_2, x9 FROM t1 JOIN s2 ON t1.a = s2.a"),
    (PG, "SELECT a$1 FROM t", "SELECT a$1 FROM t"),
    (MY, "SELECT * FROM 1t, t2$3 WHERE $1 = 2", "SELECT * FROM 1t, t2$3 WHERE $1 = ?"),
    # a number running into identifier characters is kept verbatim (never guess)
    (PG, "SELECT 1abc, 12e5x", "SELECT 1abc, 12e5x"),
    # standard strings with '' escapes
    (PG, "SELECT 'it''s', '' FROM t", "SELECT ?, ? FROM t"),
    (PG, "SELECT 'a -- b /* c', 'x;y' FROM t", "SELECT ?, ? FROM t"),
    # postgres: a backslash does not escape in a standard string
    (PG, "SELECT 'x\\' FROM secret --'", "SELECT ? FROM secret"),
    # E'' strings with backslash escapes
    (PG, "SELECT E'it\\'s', e'\\\\' FROM t", "SELECT ?, ? FROM t"),
    # B'', X'', N'', U&''
    (PG, "SELECT B'0101', X'1F', N'nat', U&'d\\0061t' FROM t", "SELECT ?, ?, ?, ? FROM t"),
    # dollar quotes, tagged and not, with quotes and dollars inside
    (PG, "SELECT $$it's$$, $fn$ a $$ b; $fn$ FROM t", "SELECT ?, ? FROM t"),
    (PG, "DO $body$ BEGIN PERFORM 1; END $body$", "DO ?"),
    # placeholders
    (PG, "SELECT * FROM t WHERE a = $1 AND b = %s AND c = $12", "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"),
    (MY, "SELECT * FROM t WHERE a = ? AND b = %s", "SELECT * FROM t WHERE a = ? AND b = ?"),
    # IN lists of literals only collapse; others do not
    (PG, "SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (?+)"),
    (PG, "SELECT * FROM t WHERE id IN (7)", "SELECT * FROM t WHERE id IN (?+)"),
    (PG, "SELECT * FROM t WHERE id in ( 'a' ,$1,-2.5 )", "SELECT * FROM t WHERE id in (?+)"),
    (PG, "SELECT * FROM t WHERE id IN (SELECT id FROM s)", "SELECT * FROM t WHERE id IN (SELECT id FROM s)"),
    (PG, "SELECT * FROM t WHERE id IN (a, 1)", "SELECT * FROM t WHERE id IN (a, ?)"),
    (PG, "SELECT * FROM t WHERE id NOT IN(1,2)", "SELECT * FROM t WHERE id NOT IN (?+)"),
    (MY, "SELECT * FROM t WHERE id IN (1, 'a', 0x1F, ?)", "SELECT * FROM t WHERE id IN (?+)"),
    # whitespace runs collapse, ends are stripped
    (PG, "  SELECT\n\t a ,\r\n  b   FROM   t  ", "SELECT a , b FROM t"),
    # quoted identifiers verbatim (whitespace, digits, case, quotes inside)
    (PG, 'SELECT "Col  1", "a""b" FROM "My Table"', 'SELECT "Col  1", "a""b" FROM "My Table"'),
    (MY, "SELECT `Col  1`, `a``b` FROM `My Table`", "SELECT `Col  1`, `a``b` FROM `My Table`"),
    # no case folding
    (PG, "select * FROM T where A = 1", "select * FROM T where A = ?"),
    # postgres comments, nested block comments
    (PG, "SELECT 1 -- trailing\nFROM t /* a /* nested */ b */ WHERE x = 2", "SELECT ? FROM t WHERE x = ?"),
    (PG, "SELECT a#b, c --x\n FROM t", "SELECT a#b, c FROM t"),
    # mysql comments: # and '-- ' are comments, --x is not; block comments go
    (MY, "SELECT 1 # hash\nFROM t -- dash\n WHERE a = 1--1", "SELECT ? FROM t WHERE a = ?--?"),
    (MY, "SELECT /* plain */ 1", "SELECT ?"),
    # mysql executable comments and hints are kept verbatim
    (MY, "SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1 /*! , 2 */ /*M!100100 , 3 */", "SELECT /*+ MAX_EXECUTION_TIME(1000) */ ? /*! , 2 */ /*M!100100 , 3 */"),
    # mysql strings: "..", backslash escapes, hex/bit literals
    (MY, "SELECT \"a\\\"b\", 'c\\'d', 'e''f', X'1F', b'01', 0x1F, 0b101 FROM t", "SELECT ?, ?, ?, ?, ?, ?, ? FROM t"),
    (MY, "SELECT _utf8mb4'abc' COLLATE utf8mb4_bin", "SELECT _utf8mb4? COLLATE utf8mb4_bin"),
    # postgres: "..." is an identifier, not a string
    (PG, 'SELECT "x" FROM t', 'SELECT "x" FROM t'),
    # multi-statement text keeps its semicolons
    (PG, "SELECT 1; DROP TABLE t;", "SELECT ?; DROP TABLE t;"),
    # empty and comment-only texts
    (PG, "", ""),
    (PG, "  -- nothing\n /* at all */ ", ""),
    (MY, "# nothing", ""),
]


@pytest.mark.parametrize(("dialect", "sql", "expected"), CASES)
def test_fingerprint_table(dialect: str, sql: str, expected: str) -> None:
    assert fingerprint(sql, dialect) == expected


# Texts the lexer cannot classify get a key unique to the text.
RAW_CASES: list[tuple[str, str]] = [
    (PG, "SELECT 'unterminated"),
    (PG, 'SELECT "unterminated'),
    (PG, "SELECT E'ends with escaped quote\\'"),
    (PG, "SELECT 1 /* unterminated"),
    (PG, "SELECT 1 /* nested /* but */ unterminated"),
    (PG, "SELECT $$ unterminated"),
    (PG, "SELECT $tag$ x $other$"),
    (PG, "SELECT 1 /*1/*2/*3/*4/*5/*6*/*/*/*/*/*/"),  # deeper than supported
    (MY, "SELECT 'unterminated"),
    (MY, "SELECT 'a\\'"),
    (MY, 'SELECT "x'),
    (MY, "SELECT `x"),
    (MY, "SELECT /*! 1"),
]


@pytest.mark.parametrize(("dialect", "sql"), RAW_CASES)
def test_unclassifiable_text_gets_a_unique_key(dialect: str, sql: str) -> None:
    assert fingerprint(sql, dialect) == RAW_PREFIX + sql


def test_raw_keys_cannot_equal_normal_keys() -> None:
    # A normal key is stripped, so it never starts with the space RAW_PREFIX starts with.
    assert RAW_PREFIX.startswith(" ")
    for text in ("raw:SELECT 'x", " raw:SELECT 'x", "\traw:SELECT 'x"):
        assert not fingerprint(text.replace("'x", "1"), PG).startswith(" ")


def test_nested_comments_within_supported_depth() -> None:
    assert fingerprint("SELECT 1 /*1/*2/*3/*4/*5*/*/*/*/*/ FROM t", PG) == "SELECT ? FROM t"


# Pairs that differ only in literal values share a key.
SAME_SHAPE: list[tuple[str, str, str]] = [
    (PG, "SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 'x'"),
    (PG, "SELECT * FROM t WHERE a = $1", "SELECT * FROM t WHERE a = 2.5e3"),
    (PG, "SELECT * FROM t WHERE a IN (1,2,3)", "SELECT * FROM t WHERE a IN ('q')"),
    (PG, "SELECT * FROM t WHERE a = 'x -- y'", "SELECT * FROM t WHERE a = $$x /* y$$"),
    (PG, "SELECT * FROM t WHERE a = 1 -- c1", "SELECT * FROM t WHERE a = 2 /* c2 */"),
    (MY, "SELECT * FROM t WHERE a = 'it\\'s'", "SELECT * FROM t WHERE a = \"q\""),
    (MY, "SELECT * FROM t WHERE a = 0x1F # c", "SELECT * FROM t WHERE a = ?"),
]


@pytest.mark.parametrize(("dialect", "a", "b"), SAME_SHAPE)
def test_same_shape_same_key(dialect: str, a: str, b: str) -> None:
    assert fingerprint(a, dialect) == fingerprint(b, dialect)


# Pairs that differ in anything but literals must not share a key.
DIFFERENT_SHAPE: list[tuple[str, str, str]] = [
    (PG, "SELECT * FROM t1 WHERE a = 1", "SELECT * FROM t2 WHERE a = 1"),
    (PG, 'SELECT * FROM "A B"', 'SELECT * FROM "A  B"'),
    (PG, "DELETE FROM t", "DELETE FROM t WHERE a = 1"),
    (PG, "SELECT 1", "SELECT 1; DROP TABLE t"),
    (PG, "SELECT 'x' FROM t", "SELECT \"x\" FROM t"),
    (PG, "SELECT a FROM t", "SELECT A FROM t"),
    (PG, "SELECT * FROM t WHERE a IN (1, 2)", "SELECT * FROM t WHERE a IN (1, b)"),
    (MY, "SELECT 1 /*! , secret */", "SELECT 1 /*! , other */"),
    (MY, "SELECT * FROM `t1`", "SELECT * FROM `t2`"),
    (MY, "SELECT * FROM $1", "SELECT * FROM $2"),  # identifiers in MySQL
    (MY, "SELECT * FROM 1t", "SELECT * FROM 2t"),
    (MY, "SELECT 1 --x\nFROM t", "SELECT 1 -- x\nFROM t"),
]


@pytest.mark.parametrize(("dialect", "a", "b"), DIFFERENT_SHAPE)
def test_different_shape_different_key(dialect: str, a: str, b: str) -> None:
    assert fingerprint(a, dialect) != fingerprint(b, dialect)


def test_dialects_differ_on_double_quotes_and_hash() -> None:
    assert fingerprint('SELECT "x"', PG) == 'SELECT "x"'
    assert fingerprint('SELECT "x"', MY) == "SELECT ?"
    assert fingerprint("SELECT a # b", PG) == "SELECT a # b"
    assert fingerprint("SELECT a # b", MY) == "SELECT a"


def test_unknown_dialect_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown SQL dialect"):
        fingerprint("SELECT 1", "oracle")


@pytest.mark.parametrize("dialect", [PG, MY])
def test_pathological_input_is_linear(dialect: str) -> None:
    # Guards against catastrophic backtracking: long runs of quote and comment openers.
    texts = ["'" * 20_000, "/*" * 10_000, "E'\\" * 7_000, "$a$" * 7_000, "-- " * 7_000, "IN (1," * 4_000, "1" * 50_000]
    start = time.perf_counter()
    for text in texts:
        assert isinstance(fingerprint(text, dialect), str)
    assert time.perf_counter() - start < 2.0


# -- a dollar quote ends at its first closing delimiter, however the pattern backtracks ------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 WHERE a IN ($$$$, (SELECT pw FROM secret), $$x$$)",
        "SELECT 1 WHERE a IN ($t$$t$, (SELECT pw FROM secret), $t$x$t$)",
    ],
)
def test_a_dollar_quote_never_swallows_sql_inside_an_in_list(sql: str) -> None:
    fp = fingerprint(sql, "postgres")
    assert "SELECT" in fp.split("IN", 1)[1], fp  # the subquery stays in the key
    assert fp != fingerprint("SELECT 1 WHERE a IN (1)", "postgres")


def test_the_dollar_quote_collision_is_no_policy_bypass() -> None:
    """Found in review (issue 10): the key of the first text used to equal the second's, so a
    cached allow of the harmless text allowed the one reading `secret`."""
    from sqlward.policy.engine import Engine
    from sqlward.policy.model import Identity, TargetInfo
    from sqlward.policy.rules import EnvironmentPolicy, Rule

    engine = Engine(
        rules=(Rule(id="no-secret", action="deny", tables=("secret",)), Rule(id="reads", action="allow", operations=("select",))),
        environments={}, version=1, unknown_environment=EnvironmentPolicy(),
    )
    who, target = Identity(subject="a"), TargetInfo(name="t", protocol="postgres", environment="production")
    harmless = "SELECT 1 WHERE a IN (1)"
    assert engine.decide(engine.analyse(harmless, "postgres"), who, target).action == "allow"
    evil = "SELECT 1 WHERE a IN ($$$$, (SELECT pw FROM secret), $$x$$)"
    decision = engine.decide(engine.analyse(evil, "postgres"), who, target, sql=evil)
    assert (decision.action, decision.rule_id) == ("deny", "no-secret")
