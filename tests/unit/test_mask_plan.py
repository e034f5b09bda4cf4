"""Unit tests for masking.plan: from lineage to per-column masks and refusals (table-driven,
both dialects)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import pytest

from sqlward.masking.lineage import Lineage, OutputColumn, lineage
from sqlward.masking.model import Catalogue, ColumnInfo, MaskSpec, TableInfo
from sqlward.masking.plan import MASK_ON_DOUBT, MaskPlan, build_plan, masked_tables_from, unknown_table_is_masked

PG = "postgres"
MY = "mysql"
SCHEMA = {PG: "public", MY: "shop"}


@pytest.fixture(autouse=True)
def _quiet_sqlglot(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sqlglot")


def _table(name: str, columns: str, view_sql: str = "") -> TableInfo:
    cols = tuple(ColumnInfo(name=c, kind="text", attnum=i + 1) for i, c in enumerate(columns.split()))
    return TableInfo(name=name, columns=cols, view_sql=view_sql)


def _catalogue(schema: str) -> Catalogue:
    tables = [
        _table(f"{schema}.customers", "id name email ssn born"),
        _table(f"{schema}.orders", "id customer_id total note"),
        _table(f"{schema}.products", "id label"),
        _table(f"{schema}.v_customers", "id contact", "SELECT id, email AS contact FROM customers"),
    ]
    return Catalogue(tables={t.name: t for t in tables}, search_path=("public",) if schema == "public" else ())


CATALOGUES = {PG: _catalogue("public"), MY: _catalogue("shop")}

# The identity's rules: which stored column is masked how.
RULES = {
    "customers.email": MaskSpec(function="email", rule_id="pii-email"),
    "customers.ssn": MaskSpec(function="partial", rule_id="pii-ssn", keep_last=4),
    "customers.born": MaskSpec(function="truncate_date", rule_id="pii-born", truncate="year"),
    "customers.name": MaskSpec(function="hash", rule_id="name-hash"),
    "orders.note": MaskSpec(function="null", rule_id="notes-null"),
}


def masked_for(dialect: str) -> Callable[[str], MaskSpec | None]:
    schema = SCHEMA[dialect]
    by_source = {f"{schema}.{k}": v for k, v in RULES.items()}
    return by_source.get


def plan(dialect: str, sql: str, *, doubt: bool = False) -> MaskPlan:
    cat = CATALOGUES[dialect]
    lin = lineage(sql, dialect, cat, default_schema="shop" if dialect == MY else "")
    masked = masked_for(dialect)
    return build_plan(lin, masked, masked_tables=masked_tables_from(cat, masked), mask_all_on_doubt=doubt)


def spec(text: str) -> MaskSpec | None:
    """"-" -> None; "email:pii-email" -> the rule's own spec; "redact:pii-email" -> redact."""
    if text == "-":
        return None
    function, rule = text.split(":")
    for candidate in RULES.values():
        if candidate.rule_id == rule and candidate.function == function:
            return candidate
    if rule == "mask-on-doubt":
        return MASK_ON_DOUBT
    return MaskSpec(function=function, rule_id=rule)  # type: ignore[arg-type]


class Case(NamedTuple):
    id: str
    sql: str
    columns: tuple[str, ...] | None  # None: refused
    refusal: tuple[str, ...] = ()  # substrings of the refusal sentence
    doubt: bool = False  # mask_all_on_doubt
    mask_rest: bool = False
    dialects: tuple[str, ...] = (PG, MY)


EMAIL = "email:pii-email"
R_EMAIL = "redact:pii-email"
CASES: list[Case] = [
    # --- direct values keep their rule's function
    Case("clear", "SELECT id, total FROM orders", ("-", "-")),
    Case("direct", "SELECT id, email FROM customers", ("-", EMAIL)),
    Case("alias", "SELECT email AS harmless FROM customers", (EMAIL,)),
    Case("partial", "SELECT ssn FROM customers", ("partial:pii-ssn",)),
    Case("hash direct", "SELECT name FROM customers", ("hash:name-hash",)),
    Case("date direct", "SELECT born FROM customers", ("truncate_date:pii-born",)),
    Case("null direct", "SELECT note FROM orders", ("null:notes-null",)),
    Case("star", "SELECT * FROM customers",
         ("-", "hash:name-hash", EMAIL, "partial:pii-ssn", "truncate_date:pii-born")),
    Case("view", "SELECT contact FROM v_customers", (EMAIL,)),
    Case("cte", "WITH x AS (SELECT email AS e FROM customers) SELECT e FROM x", (EMAIL,)),
    Case("derived", "SELECT d.e, d.id FROM (SELECT email AS e, id FROM customers) d", (EMAIL, "-")),
    Case("union all same source", "SELECT email FROM customers UNION ALL SELECT email FROM customers", (EMAIL,)),
    Case("scalar subquery", "SELECT (SELECT email FROM customers LIMIT 1) AS e", (EMAIL,)),
    # --- expressions: full redaction under the rule (null stays null)
    Case("lower", "SELECT lower(email) FROM customers", (R_EMAIL,)),
    Case("cast", "SELECT CAST(email AS char(20)) FROM customers", (R_EMAIL,)),
    Case("substring of partial", "SELECT substring(ssn, 1, 3) FROM customers", ("redact:pii-ssn",)),
    Case("hash of expression", "SELECT lower(name) FROM customers", ("redact:name-hash",)),
    Case("null of expression", "SELECT upper(note) FROM orders", ("null:notes-null",)),
    Case("null and clear", "SELECT concat(note, total) FROM orders", ("null:notes-null",)),
    Case("null and email", "SELECT concat(note, 'x') AS a, concat(email, note) AS b FROM customers, orders",
         ("null:notes-null", R_EMAIL)),
    Case("count keeps source", "SELECT count(email) FROM customers", (R_EMAIL,)),
    Case("count star clear", "SELECT count(*) FROM customers", ("-",)),
    Case("union all harmless first", "SELECT label FROM products UNION ALL SELECT email FROM customers", (R_EMAIL,)),
    Case("union compares rows", "SELECT label FROM products UNION SELECT email FROM customers", None, ('"pii-email"',)),
    Case("case", "SELECT CASE WHEN id > 0 THEN email END FROM customers", (R_EMAIL,)),
    Case("window", "SELECT max(email) OVER (PARTITION BY id) FROM customers", (R_EMAIL,)),
    Case("several rules: first by name decides", "SELECT concat(ssn, email) FROM customers", (R_EMAIL,)),
    Case("whole row of derived is an expression", "SELECT x FROM (SELECT 1 AS x, email FROM customers) d", ("-",)),
    # --- probing is refused (mask_all_on_doubt does not change that)
    Case("where", "SELECT id FROM customers WHERE email LIKE 'a%'", None,
         ('masking rule "pii-email"', "customers.email is masked for you", "WHERE")),
    Case("where doubt", "SELECT id FROM customers WHERE email LIKE 'a%'", None, ('"pii-email"',), doubt=True),
    Case("order by", "SELECT id FROM customers ORDER BY email", None, ('"pii-email"',)),
    Case("order by alias", "SELECT email AS e FROM customers ORDER BY e", None, ('"pii-email"',)),
    Case("group by", "SELECT count(*) FROM customers GROUP BY ssn", None, ('"pii-ssn"', "customers.ssn")),
    Case("join on", "SELECT o.id FROM orders o JOIN customers c ON c.email = o.note", None, ('"pii-email"',)),
    Case("having", "SELECT id FROM customers GROUP BY id HAVING max(born) > '2000-01-01'", None, ('"pii-born"',)),
    Case("exists", "SELECT 1 AS x WHERE EXISTS (SELECT 1 FROM customers WHERE email = 'x')", None, ('"pii-email"',)),
    Case("null rule probing", "SELECT id FROM orders WHERE note = 'x'", None, ('"notes-null"', "orders.note")),
    Case("view predicate", "SELECT id FROM v_customers WHERE contact = 'x'", None, ('"pii-email"',)),
    Case("clear predicate", "SELECT email FROM customers WHERE id = 1 ORDER BY id", (EMAIL,)),
    # --- whole rows
    Case("whole row", "SELECT row_to_json(c) FROM customers c", None,
         ("whole row of public.customers", 'masking rule "pii-born"'), dialects=(PG,)),
    Case("whole row select t", "SELECT c FROM customers c", None, ("whole row",), dialects=(PG,)),
    Case("whole row doubt", "SELECT c::text FROM customers c", None, ("whole row",), doubt=True, dialects=(PG,)),
    Case("whole row unmasked table", "SELECT row_to_json(p) FROM products p", ("-",), dialects=(PG,)),
    # --- copies
    Case("insert select", "INSERT INTO products (label) SELECT email FROM customers", None,
         ("copies rows into another table", "public.customers")),
    Case("insert select doubt", "INSERT INTO products (label) SELECT email FROM customers", None,
         ("masking cannot follow",), doubt=True),
    Case("copy from unmasked", "INSERT INTO products (label) SELECT label FROM products", ()),
    Case("ctas", "CREATE TABLE t2 AS SELECT email FROM customers", None, ("copies rows",)),
    Case("update copy", "UPDATE customers SET id = id WHERE id = 1", ()),
    Case("assign variable", "SELECT @v := email FROM customers", None, ("user variable",), dialects=(MY,)),
    Case("set_config", "SELECT set_config('a.b', email, false) FROM customers", None, ("set_config",),
         dialects=(PG,)),
    Case("copy to", "COPY customers TO STDOUT", None, ("COPY",), dialects=(PG,)),
    Case("sleep oracle", "SELECT pg_sleep(CASE WHEN email LIKE 'a%' THEN 1 ELSE 0 END) FROM customers", None,
         ('"pii-email"', "CASE / IF conditions"), dialects=(PG,)),
    Case("sleep of a masked value", "SELECT pg_sleep(length(email)) FROM customers", None, ("pg_sleep",),
         dialects=(PG,)),
    # --- doubt: refused, or masked entirely on demand
    Case("unknown column on masked table", "SELECT nope, email FROM customers", None,
         ("cannot be traced", "column nope", "public.customers")),
    Case("unknown column doubt", "SELECT nope, email FROM customers",
         ("redact:mask-on-doubt", "redact:mask-on-doubt"), doubt=True, mask_rest=True),
    Case("unknown table joined to masked", "SELECT * FROM customers c JOIN nowhere n ON n.id = c.id", None,
         ("cannot be traced", "nowhere")),
    Case("unknown column on unmasked table", "SELECT nope FROM products", ("-",)),
    Case("unknown table alone", "SELECT * FROM nowhere", None, ("cannot be traced",)),
    Case("system catalogue", "SELECT relname FROM pg_class", ("-",), dialects=(PG,)),
    Case("statistics leak", "SELECT most_common_vals FROM pg_stats WHERE attname = 'email'", None,
         ("pg_catalog.pg_stats",), dialects=(PG,)),
    Case("opaque", "EXECUTE p(1)", None, ("cannot be traced", "cannot be determined"), dialects=(PG,)),
    Case("opaque doubt", "EXECUTE p(1)", (), doubt=True, mask_rest=True, dialects=(PG,)),
    Case("user variable read", "SELECT @v", None, ("reads user variable",), dialects=(MY,)),
    Case("parse failure", "SELECT FROM WHERE (", None, ("could not parse",)),
    Case("unknown table function", "SELECT * FROM my_func(1) f", None, ("my_func",), dialects=(PG,)),
    # --- statements without rows
    Case("ddl", "DROP TABLE products", ()),
    Case("begin", "BEGIN", ()),
    Case("explain probing", "EXPLAIN SELECT id FROM customers WHERE email = 'x'", None, ('"pii-email"',)),
]
PARAMS = [(d, c) for c in CASES for d in c.dialects]


@pytest.mark.parametrize(("dialect", "case"), PARAMS, ids=[f"{d}:{c.id}" for d, c in PARAMS])
def test_plan(dialect: str, case: Case) -> None:
    sql = case.sql.replace("public.", f"{SCHEMA[dialect]}.")
    got = plan(dialect, sql, doubt=case.doubt)
    if case.columns is None:
        assert got.refusal, got
        for text in case.refusal:
            assert text.replace("public.", f"{SCHEMA[dialect]}.") in got.refusal, got.refusal
        assert got.refusal.endswith(("clauses", "columns", "values", "instead")) or "(" in got.refusal
    else:
        assert got.refusal == "", got.refusal
        assert got.columns == tuple(spec(c) for c in case.columns), got
        assert got.needs_masking == (any(c != "-" for c in case.columns) or case.mask_rest)
    assert (got.mask_rest is not None) == case.mask_rest


def test_masked_sources_for_the_audit() -> None:
    got = plan(PG, "SELECT email, lower(ssn), v.contact, c.id FROM customers c, v_customers v WHERE false")
    assert got.refusal == ""
    assert got.masked_sources == ("public.customers.email", "public.customers.ssn")


def test_masked_is_asked_once_per_source() -> None:
    calls: list[str] = []
    masked = masked_for(PG)

    def counting(source: str) -> MaskSpec | None:
        calls.append(source)
        return masked(source)

    lin = lineage("SELECT email, email, lower(email), email AS e FROM customers", PG, CATALOGUES[PG])
    build_plan(lin, counting, masked_tables=lambda _t: False)
    assert calls.count("public.customers.email") == 1


def test_identity_without_masks_never_refused_for_doubt() -> None:
    nothing: Callable[[str], MaskSpec | None] = lambda _s: None  # noqa: E731
    for sql in (
        "SELECT nope FROM customers",
        "SELECT * FROM nowhere",
        "SELECT row_to_json(c) FROM customers c WHERE email = 'x'",
        "INSERT INTO products (label) SELECT email FROM customers",
    ):
        lin = lineage(sql, PG, CATALOGUES[PG])
        got = build_plan(lin, nothing, masked_tables=lambda _t: False)
        assert got.refusal == "" and not got.needs_masking, (sql, got)


def test_without_masked_tables_doubt_is_fail_closed() -> None:
    lin = lineage("SELECT nope FROM products", PG, CATALOGUES[PG])
    assert build_plan(lin, masked_for(PG)).refusal  # every touched table counts as masked
    assert build_plan(lin, masked_for(PG), masked_tables=lambda _t: False).refusal == ""


def test_direct_value_with_conflicting_specs_is_redacted() -> None:
    lin = Lineage(outputs=(OutputColumn("c", frozenset({"s.v.c", "s.t.c"}), True),), tables=frozenset({"s.t"}))
    specs = {"s.v.c": MaskSpec("partial", "r-view"), "s.t.c": MaskSpec("email", "r-base")}
    got = build_plan(lin, specs.get, masked_tables=lambda _t: True)
    assert got.columns == (MaskSpec("redact", "r-base"),)
    same = {"s.v.c": MaskSpec("email", "r"), "s.t.c": MaskSpec("email", "r")}
    assert build_plan(lin, same.get).columns == (MaskSpec("email", "r"),)


def test_unknown_table_default() -> None:
    assert unknown_table_is_masked("public.nowhere")
    assert not unknown_table_is_masked("pg_catalog.pg_class")
    assert not unknown_table_is_masked("information_schema.columns")
    assert unknown_table_is_masked("pg_catalog.pg_stats")
    assert unknown_table_is_masked("information_schema.COLUMN_STATISTICS")
    check = masked_tables_from(CATALOGUES[PG], masked_for(PG), unknown=lambda _t: False)
    assert check("public.customers") and check("public.orders") and not check("public.products")
    assert not check("public.nowhere")


def test_plan_is_frozen_and_hashable() -> None:
    got = plan(PG, "SELECT email, id FROM customers")
    hash(got)
    assert got.needs_masking
    assert not MaskPlan(columns=(None, None)).needs_masking


def test_mysql_statement_history_counts_as_masked() -> None:
    """events_statements_*.MESSAGE_TEXT repeats warning texts (which may quote a masked value);
    the sys schema's views read it. Other system tables hold no user data."""
    from sqlward.masking.plan import unknown_table_is_masked

    assert unknown_table_is_masked("performance_schema.events_statements_history")
    assert unknown_table_is_masked("performance_schema.events_errors_summary_global_by_error")
    assert unknown_table_is_masked("sys.statements_with_errors_or_warnings")
    assert not unknown_table_is_masked("performance_schema.threads")
    assert not unknown_table_is_masked("information_schema.tables")
