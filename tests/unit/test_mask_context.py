"""Unit tests for masking.context.plan_request: refusals, mask plans, error redaction and
schema-change flags of one request, in both dialects (PostgreSQL with the search path `public`,
MySQL with the current database `shop`). The analysis is the real one
(`policy.analysis.analyse`)."""

from __future__ import annotations

import logging

import pytest

from sqlward.masking.context import MaskContext, RequestMask, plan_request
from sqlward.masking.model import Catalogue, ColumnInfo, MaskRule, MaskSpec, TableInfo
from sqlward.masking.plan import MASK_ON_DOUBT
from sqlward.masking.policy import IdentityMasks, MaskingSettings
from sqlward.policy.analysis import analyse

PG, MY = "postgres", "mysql"
DIALECTS = [PG, MY]
CATALOGUE_SCHEMA = {PG: "public", MY: "shop"}
SESSION_SCHEMA = {PG: "", MY: "shop"}  # what the adapters pass: MySQL's current database

EMAIL = MaskSpec(function="email", rule_id="pii-email")
SSN = MaskSpec(function="partial", rule_id="pii-ssn", keep_last=4)


@pytest.fixture(autouse=True)
def _quiet_sqlglot(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sqlglot")


def _table(name: str, columns: str) -> TableInfo:
    return TableInfo(name=name, columns=tuple(ColumnInfo(c, kind="text", attnum=i + 1) for i, c in enumerate(columns.split())))


def _catalogue(dialect: str) -> Catalogue:
    schema = CATALOGUE_SCHEMA[dialect]
    tables = [_table(f"{schema}.customers", "id name email ssn"), _table(f"{schema}.orders", "id customer_id total")]
    return Catalogue(tables={t.name: t for t in tables}, search_path=("public",) if dialect == PG else ())


# One rule per masked column; "pii-email" comes first.
MASKS = IdentityMasks(
    [
        MaskRule(id="pii-email", columns=("customers.email",), function="email"),
        MaskRule(id="pii-ssn", columns=("customers.ssn",), function="partial", keep_last=4),
    ]
)


def _plan(
    dialect: str, sql: str, *, doubt: bool = False, masks: IdentityMasks = MASKS
) -> RequestMask:
    return plan_request(
        sql, analyse(sql, dialect), _catalogue(dialect), masks, SESSION_SCHEMA[dialect],
        MaskingSettings(mask_all_on_doubt=doubt),
    )


def _nothing_to_do(r: RequestMask) -> bool:
    return not r.refusal and not r.plan.needs_masking and all(c is None for c in r.plan.columns)


# --------------------------------------------------------------------------------------------
# Plans


@pytest.mark.parametrize("dialect", DIALECTS)
def test_select_of_masked_column_masks_it_and_redacts_errors(dialect: str) -> None:
    r = _plan(dialect, "SELECT id, email FROM customers")
    assert r.refusal == ""
    assert r.plan.columns == (None, EMAIL)
    assert r.plan.masked_sources == (f"{CATALOGUE_SCHEMA[dialect]}.customers.email",)
    assert r.redact_errors is True
    assert r.schema_change is False


@pytest.mark.parametrize("dialect", DIALECTS)
def test_select_star_masks_each_masked_column_by_position(dialect: str) -> None:
    r = _plan(dialect, "SELECT * FROM customers")
    assert r.refusal == ""
    assert r.plan.columns == (None, None, EMAIL, SSN)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_expression_of_masked_column_is_redacted_under_its_rule(dialect: str) -> None:
    r = _plan(dialect, "SELECT upper(email) AS e FROM customers")
    assert r.refusal == ""
    assert r.plan.columns == (MaskSpec(function="redact", rule_id="pii-email"),)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_clear_columns_of_a_masked_table_still_redact_errors(dialect: str) -> None:
    r = _plan(dialect, "SELECT id, name FROM customers")
    assert r.refusal == ""
    assert r.plan.columns == (None, None)
    assert r.redact_errors is True  # the statement reads a table with masked columns


@pytest.mark.parametrize("dialect", DIALECTS)
def test_select_touching_no_masked_table_needs_nothing(dialect: str) -> None:
    r = _plan(dialect, "SELECT id, total FROM orders WHERE total > 10 ORDER BY id")
    assert r.refusal == ""
    assert r.rule_id == ""
    assert r.plan.columns == (None, None)
    assert r.plan.mask_rest is None
    assert not r.plan.needs_masking
    assert r.redact_errors is False


# --------------------------------------------------------------------------------------------
# Several statements


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", ["SELECT email FROM customers; SELECT 1", "SELECT id FROM orders; SELECT name FROM customers"])
def test_several_statements_reading_masked_table_are_refused(dialect: str, sql: str) -> None:
    r = _plan(dialect, sql)
    assert "one at a time" in r.refusal
    assert "customers" in r.refusal
    assert r.rule_id == "pii-email"
    assert r.redact_errors is True
    assert not r.plan.needs_masking


@pytest.mark.parametrize("dialect", DIALECTS)
def test_several_statements_reading_uncatalogued_table_of_qualified_rule_are_refused(dialect: str) -> None:
    schema = CATALOGUE_SCHEMA[dialect]
    masks = IdentityMasks([MaskRule(id="pii-email", columns=(f"{schema}.customers.email",))])
    sql = "SELECT email FROM customers; SELECT 1"
    stale = Catalogue(tables={}, search_path=("public",) if dialect == PG else ())
    r = plan_request(sql, analyse(sql, dialect), stale, masks, SESSION_SCHEMA[dialect], MaskingSettings())
    assert "one at a time" in r.refusal


@pytest.mark.parametrize("dialect", DIALECTS)
def test_several_statements_touching_nothing_masked_pass(dialect: str) -> None:
    r = _plan(dialect, "SELECT id FROM orders; SELECT 1")
    assert r.refusal == ""
    assert r.redact_errors is False


# --------------------------------------------------------------------------------------------
# COPY, DDL, session statements


def test_copy_of_masked_table_to_stdout_is_refused() -> None:
    r = _plan(PG, "COPY customers TO STDOUT")
    assert r.refusal
    assert "COPY" in r.refusal and "customers" in r.refusal
    assert r.rule_id == "pii-email"
    assert r.redact_errors is True


def test_copy_of_query_over_masked_table_is_refused() -> None:
    r = _plan(PG, "COPY (SELECT email FROM customers) TO STDOUT")
    assert r.refusal
    assert r.redact_errors is True


def test_copy_of_unmasked_table_is_not_refused() -> None:
    r = _plan(PG, "COPY orders TO STDOUT")
    assert r.refusal == ""
    assert r.redact_errors is False


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "sql, redact",
    [
        ("ALTER TABLE customers ADD COLUMN x int", True),
        ("CREATE TABLE scratch (x int)", False),
        ("DROP TABLE orders", False),
    ],
)
def test_ddl_sets_schema_change(dialect: str, sql: str, redact: bool) -> None:
    r = _plan(dialect, sql)
    assert r.refusal == ""
    assert r.schema_change is True
    assert r.redact_errors is redact
    assert not r.plan.needs_masking


@pytest.mark.parametrize("dialect", DIALECTS)
def test_select_is_no_schema_change(dialect: str) -> None:
    assert _plan(dialect, "SELECT id FROM orders").schema_change is False


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", ["BEGIN", "COMMIT", "ROLLBACK", "SET_STATEMENT"])
def test_session_statements_are_not_refused(dialect: str, sql: str) -> None:
    if sql == "SET_STATEMENT":
        sql = "SET search_path TO public" if dialect == PG else "SET NAMES utf8mb4"
    r = _plan(dialect, sql)
    assert _nothing_to_do(r)
    assert r.schema_change is False


# --------------------------------------------------------------------------------------------
# Probing


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM customers WHERE email LIKE 'a%'",
        "SELECT id FROM customers ORDER BY email",
        "SELECT count(*) FROM customers GROUP BY email",
    ],
)
def test_masked_column_in_predicate_is_refused_with_rule_id(dialect: str, sql: str) -> None:
    r = _plan(dialect, sql)
    assert r.refusal
    assert '"pii-email"' in r.refusal
    assert "customers.email" in r.refusal
    assert r.rule_id == "pii-email"
    assert r.redact_errors is True


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unmasked_column_in_predicate_is_allowed(dialect: str) -> None:
    r = _plan(dialect, "SELECT email FROM customers WHERE id = 7 ORDER BY name")
    assert r.refusal == ""
    assert r.plan.columns == (EMAIL,)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_predicate_refusal_rule_id_is_the_rule_of_the_probed_column(dialect: str) -> None:
    r = _plan(dialect, "SELECT id FROM customers WHERE ssn = '123-45-6789'")
    assert '"pii-ssn"' in r.refusal
    assert r.rule_id == "pii-ssn"


# --------------------------------------------------------------------------------------------
# Doubt: statements the analyser cannot read, lineage it cannot trace

UNPARSABLE = "SELECT email FROM customers WHERE id = ANY((("
# An unparsed statement is masked whole under mask_all_on_doubt only when it can do nothing but
# return rows: no clause that filters or decides, no masked column named (issue 11).
UNPARSABLE_PROJECTION = "SELECT * FROM customers ((("


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unanalysable_statement_is_refused_by_default(dialect: str) -> None:
    assert analyse(UNPARSABLE, dialect).parse_status != "ok"
    r = _plan(dialect, UNPARSABLE)
    assert "could not be analysed" in r.refusal
    assert r.rule_id == "pii-email"
    assert r.redact_errors is True
    assert r.plan.mask_rest is None


@pytest.mark.parametrize("dialect", DIALECTS)
def test_mask_all_on_doubt_masks_unanalysable_statement_instead_of_refusing(dialect: str) -> None:
    assert analyse(UNPARSABLE_PROJECTION, dialect).parse_status != "ok"
    r = _plan(dialect, UNPARSABLE_PROJECTION, doubt=True)
    assert r.refusal == ""
    assert r.plan.mask_rest == MASK_ON_DOUBT
    assert r.plan.needs_masking
    assert r.redact_errors is True


@pytest.mark.parametrize("dialect", DIALECTS)
def test_mask_all_on_doubt_does_not_answer_unanalysable_statement_with_a_clause_on_masked_columns(dialect: str) -> None:
    r = _plan(dialect, UNPARSABLE, doubt=True)
    assert "could not be analysed" in r.refusal
    assert r.plan.mask_rest is None


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unanalysable_statement_without_masking_rules_passes(dialect: str) -> None:
    r = _plan(dialect, UNPARSABLE, masks=IdentityMasks([]))
    assert _nothing_to_do(r)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_untraceable_lineage_over_masked_table_refused_or_masked_on_doubt(dialect: str) -> None:
    sql = "SELECT * FROM customers, mystery"  # mystery is not in the catalogue
    refused = _plan(dialect, sql)
    assert "cannot be traced" in refused.refusal
    assert refused.redact_errors is True
    masked = _plan(dialect, sql, doubt=True)
    assert masked.refusal == ""
    assert masked.plan.mask_rest == MASK_ON_DOUBT
    assert masked.plan.columns and all(c == MASK_ON_DOUBT for c in masked.plan.columns)
    assert masked.redact_errors is True


@pytest.mark.parametrize("dialect", DIALECTS)
def test_untraceable_lineage_over_unmasked_table_changes_nothing(dialect: str) -> None:
    r = _plan(dialect, "SELECT * FROM mystery")
    assert _nothing_to_do(r)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_mask_on_doubt_plan_of_opaque_statement_redacts_errors(dialect: str) -> None:
    r = _plan(dialect, "SELECT * FROM somefunc()", doubt=True)
    assert r.refusal == ""
    assert r.plan.mask_rest == MASK_ON_DOUBT
    assert r.redact_errors is True


# --------------------------------------------------------------------------------------------
# MaskContext


def test_mask_context_refusal_is_the_requests() -> None:
    refused = _plan(PG, "SELECT email FROM customers; SELECT 1")
    assert MaskContext(request=refused).refusal == refused.refusal
    assert MaskContext(request=RequestMask()).refusal == ""
