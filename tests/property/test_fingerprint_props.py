"""Property tests for policy.fingerprint and its contract with policy.analysis.

Statements come from a small grammar of templates (tables, operations, WHERE or not, IN lists,
CTEs, multi-statement texts) whose literal slots are filled with random literals of every kind
the lexer knows, with quotes, comment markers, semicolons and backslashes inside strings:

- same template, different literals and whitespace/comments -> equal fingerprints;
- equal fingerprints -> equal analyse() facts (the invariant the engine's caches rely on);
- fingerprint() never raises, on any text;
- what is inside a string literal never changes the shape.
"""

from __future__ import annotations

import logging

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sqlward.policy.analysis import analyse
from sqlward.policy.fingerprint import RAW_PREFIX, fingerprint

PG = "postgres"
MY = "mysql"

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

logging.getLogger("sqlglot").setLevel(logging.ERROR)

# Characters that stress the lexer when they appear inside literals.
NASTY = st.text(alphabet=st.sampled_from(list("ab '\"`\\;-/*#$?%\n\té()0123456789")), max_size=12)


@st.composite
def pg_literal(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["int", "dec", "exp", "str", "estr", "dollar", "tagged", "param", "pyformat"]))
    if kind == "int":
        return str(draw(st.integers(min_value=0, max_value=10**12)))
    if kind == "dec":
        return f"{draw(st.integers(0, 9999))}.{draw(st.integers(0, 9999))}"
    if kind == "exp":
        return f"{draw(st.integers(1, 99))}e{draw(st.sampled_from(['', '+', '-']))}{draw(st.integers(0, 30))}"
    text = draw(NASTY)
    if kind == "str":
        return "'" + text.replace("'", "''") + "'"
    if kind == "estr":
        return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == "dollar":
        return "$$" + text.replace("$", "") + "$$"
    if kind == "tagged":
        return "$q$" + text.replace("$", "") + "$q$"
    if kind == "param":
        return f"${draw(st.integers(1, 99))}"
    return "%s"


@st.composite
def my_literal(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["int", "dec", "hex", "str", "dstr", "param"]))
    if kind == "int":
        return str(draw(st.integers(min_value=0, max_value=10**12)))
    if kind == "dec":
        return f"{draw(st.integers(0, 9999))}.{draw(st.integers(0, 9999))}"
    if kind == "hex":
        return hex(draw(st.integers(0, 2**32)))
    text = draw(NASTY)
    if kind == "str":
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    if kind == "dstr":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "?"


LITERALS = {PG: pg_literal(), MY: my_literal()}

TABLES = ["t", "orders", "public.users", "s.t1", "pgbench_accounts"]
COLUMNS = ["a", "b", "col_2", "aid"]

# `{L}` is a literal slot, `{IN}` a literal list, `{T}`/`{U}` tables, `{C}` a column.
TEMPLATES = [
    "SELECT {C} FROM {T} WHERE {C} = {L}",
    "SELECT * FROM {T} WHERE {C} IN ({IN}) AND {C} <> {L}",
    "SELECT count(*) FROM {T} JOIN {U} ON {T}.{C} = {U}.{C} WHERE {U}.{C} > {L} LIMIT 10",
    "INSERT INTO {T} ({C}, b) VALUES ({L}, {L})",
    "INSERT INTO {T} SELECT * FROM {U} WHERE {C} = {L}",
    "UPDATE {T} SET {C} = {L} WHERE {C} = {L}",
    "UPDATE {T} SET {C} = {C} + {L}",
    "DELETE FROM {T} WHERE {C} IN ({IN})",
    "DELETE FROM {T}",
    "WITH x AS (SELECT * FROM {U} WHERE {C} = {L}) SELECT * FROM x",
    "SELECT {L}; DELETE FROM {T} WHERE {C} = {L}",
    "SELECT * FROM {T} WHERE {C} = {L}; DROP TABLE {U}",
]

SEPARATORS = [" ", "  ", "\n", "\t ", " /* c; 'x' */ ", " -- note ' ;\n"]
MY_SEPARATORS = [" ", "  ", "\n", "\t ", " /* c; 'x' */ ", " -- note ' ;\n", " # h ' ;\n"]


@st.composite
def statement(draw: st.DrawFn, dialect: str, template: str, tables: tuple[str, str], column: str) -> str:
    """`template` filled with fresh literals; the template's own spaces (never those inside
    literals) may become other whitespace or comments holding quotes and semicolons."""
    lit = LITERALS[dialect]
    seps = SEPARATORS if dialect == PG else MY_SEPARATORS
    words = template.split(" ")
    text = words[0]
    for word in words[1:]:
        text += draw(st.sampled_from(seps)) + word
    text = text.replace("{T}", tables[0]).replace("{U}", tables[1]).replace("{C}", column)
    while "{IN}" in text:
        text = text.replace("{IN}", ", ".join(draw(st.lists(lit, min_size=1, max_size=5))), 1)
    while "{L}" in text:
        text = text.replace("{L}", draw(lit), 1)
    return text


@st.composite
def same_shape_pair(draw: st.DrawFn) -> tuple[str, str, str]:
    dialect = draw(st.sampled_from([PG, MY]))
    template = draw(st.sampled_from(TEMPLATES))
    tables = (draw(st.sampled_from(TABLES)), draw(st.sampled_from(TABLES)))
    column = draw(st.sampled_from(COLUMNS))
    a = draw(statement(dialect, template, tables, column))
    b = draw(statement(dialect, template, tables, column))
    return dialect, a, b


def facts(sql: str, dialect: str) -> tuple[object, ...]:
    a = analyse(sql, dialect)
    return (a.parse_status, a.statements)


@SETTINGS
@given(same_shape_pair())
def test_same_shape_with_other_literals_has_the_same_fingerprint(pair: tuple[str, str, str]) -> None:
    dialect, a, b = pair
    fa, fb = fingerprint(a, dialect), fingerprint(b, dialect)
    assert not fa.startswith(RAW_PREFIX), a
    assert fa == fb


@SETTINGS
@given(same_shape_pair())
def test_equal_fingerprints_have_equal_facts(pair: tuple[str, str, str]) -> None:
    dialect, a, b = pair
    assume(fingerprint(a, dialect) == fingerprint(b, dialect))
    fa, fb = facts(a, dialect), facts(b, dialect)
    assert fa == fb
    assert fa[0] == "ok", (a, fa)


@st.composite
def any_pair(draw: st.DrawFn) -> tuple[str, str, str]:
    """Two statements from possibly different templates, tables and columns."""
    dialect = draw(st.sampled_from([PG, MY]))

    def one() -> str:
        template = draw(st.sampled_from(TEMPLATES))
        tables = (draw(st.sampled_from(TABLES)), draw(st.sampled_from(TABLES)))
        return draw(statement(dialect, template, tables, draw(st.sampled_from(COLUMNS))))

    return dialect, one(), one()


@SETTINGS
@given(any_pair())
def test_fingerprint_equality_implies_fact_equality(pair: tuple[str, str, str]) -> None:
    dialect, a, b = pair
    if fingerprint(a, dialect) == fingerprint(b, dialect):
        assert facts(a, dialect) == facts(b, dialect)


@settings(max_examples=400, deadline=None)
@given(st.text(), st.sampled_from([PG, MY]))
def test_fingerprint_never_raises(text: str, dialect: str) -> None:
    fp = fingerprint(text, dialect)
    assert isinstance(fp, str)
    assert fp == RAW_PREFIX + text or not fp.startswith(" ")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("SELCT *FROMWHERE'\"`$;-/#\\\n()1a?%EINx")), max_size=40), st.sampled_from([PG, MY]))
def test_fingerprint_never_raises_on_sql_like_noise(text: str, dialect: str) -> None:
    fp = fingerprint(text, dialect)
    assert fp == RAW_PREFIX + text or not fp.startswith(" ")


@SETTINGS
@given(NASTY, st.sampled_from(TEMPLATES[:3]))
def test_string_contents_never_change_the_shape(content: str, template: str) -> None:
    filled = template.replace("{T}", "orders").replace("{U}", "users").replace("{C}", "a").replace("{IN}", "{L}")
    pg_plain = filled.replace("{L}", "'x'")
    pg_nasty = filled.replace("{L}", "'" + content.replace("'", "''") + "'")
    pg_dollar = filled.replace("{L}", "$$" + content.replace("$", "") + "$$")
    pg_e = filled.replace("{L}", "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'")
    assert fingerprint(pg_nasty, PG) == fingerprint(pg_plain, PG)
    assert fingerprint(pg_dollar, PG) == fingerprint(pg_plain, PG)
    assert fingerprint(pg_e, PG) == fingerprint(pg_plain, PG)
    assert facts(pg_nasty, PG) == facts(pg_plain, PG)
    my_nasty = filled.replace("{L}", "'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'")
    my_double = filled.replace("{L}", '"' + content.replace("\\", "\\\\").replace('"', '""') + '"')
    assert fingerprint(my_nasty, MY) == fingerprint(pg_plain, MY)
    assert fingerprint(my_double, MY) == fingerprint(pg_plain, MY)
    assert facts(my_nasty, MY) == facts(pg_plain, MY)
