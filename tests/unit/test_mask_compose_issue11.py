"""Issue 11, deliverable 2, composed: a masked value reached through any route (the table, an
alias, a CTE, a derived table, a view), under any wrapper expression, put in any place where its
outcome is observed (a comparison, a condition, a filter, an ordering, deduplication, a set
operation, a size, a sleep) is refused naming the masking rule, in both dialects; the same value
as a plain output column is masked and answered. Hypothesis draws the combinations."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from sqlward.masking.context import plan_request
from sqlward.masking.policy import MaskingSettings
from sqlward.policy.analysis import analyse
from tests.unit.test_mask_channels_issue11 import MASKS, MY, PG, SESSION_SCHEMA, _catalogue

logging.getLogger("sqlglot").setLevel(logging.ERROR)

CATALOGUES = {PG: _catalogue(PG), MY: _catalogue(MY)}

# (FROM item, the masked value through it)
ROUTES = [
    ("customers c", "c.email"),
    ("customers", "email"),
    ("(SELECT id, email AS e FROM customers) c", "c.e"),
    ("(SELECT * FROM customers) AS c", "c.email"),
    ("v_customers c", "c.contact"),
    ("(SELECT contact AS k FROM v_customers) c", "c.k"),
]
CTE_ROUTE = ("WITH w AS (SELECT email AS m FROM customers) ", "w", "w.m")

WRAPPERS = [
    "{}",
    "lower({})",
    "upper(trim({}))",
    "substring({}, 1, 3)",
    "concat({}, 'x')",
    "coalesce({}, '')",
    "CAST({} AS char(20))",
    "length({})",
    "({})",
    "replace({}, 'a', 'b')",
]

OBSERVED_BOTH = [
    "SELECT id FROM {F} WHERE {V} = 'x'",
    "SELECT {V} = 'x' FROM {F}",
    "SELECT {V} LIKE 'a%' AS b FROM {F}",
    "SELECT {V} IN ('a', 'b') FROM {F}",
    "SELECT CASE WHEN {V} > 'm' THEN 1 END FROM {F}",
    "SELECT CASE {V} WHEN 'x' THEN 1 END FROM {F}",
    "SELECT count(*) FROM {F} GROUP BY {V}",
    "SELECT 1 FROM {F} ORDER BY {V}",
    "SELECT DISTINCT {V} FROM {F}",
    "SELECT count(DISTINCT {V}) FROM {F}",
    "SELECT {V} FROM {F} UNION SELECT 'x'",
    "SELECT 'x' UNION SELECT {V} FROM {F}",
    "SELECT {V} FROM {F} INTERSECT SELECT 'x'",
    "SELECT {V} FROM {F} EXCEPT SELECT 'x'",
    "SELECT rank() OVER (ORDER BY {V}) FROM {F}",
    "SELECT 1 FROM {F} WHERE EXISTS (SELECT 1 FROM orders WHERE {V} > 'm')",
    "SELECT nullif({V}, 'x') FROM {F}",
    "SELECT greatest({V}, 'm') FROM {F}",
    "SELECT repeat('x', length({V})) FROM {F}",
    "SELECT 1 / length({V}) FROM {F}",
    "SELECT count(*) FROM {F} HAVING max({V}) > 'm'",
]
OBSERVED = {
    PG: OBSERVED_BOTH + [
        "SELECT count(*) FILTER (WHERE {V} = 'x') FROM {F}",
        "SELECT mode() WITHIN GROUP (ORDER BY {V}) FROM {F}",
        "SELECT pg_sleep(length({V})) FROM {F}",
        "SELECT generate_series(1, length({V})) FROM {F}",
        "SELECT {V} ~ '^a' FROM {F}",
        "SELECT pg_notify('c', {V}::text) FROM {F}",
    ],
    MY: OBSERVED_BOTH + [
        "SELECT IF({V} = 'x', 1, 0) FROM {F}",
        "SELECT SLEEP(length({V})) FROM {F}",
        "SELECT {V} REGEXP '^a' FROM {F}",
        "SELECT @v := {V} FROM {F}",
    ],
}


def _statement(dialect: str, route: int, wrapper: str, template: str) -> str:
    if route == len(ROUTES):
        prefix, from_item, column = CTE_ROUTE
    else:
        prefix, (from_item, column) = "", ROUTES[route]
    return prefix + template.replace("{V}", wrapper.format(column)).replace("{F}", from_item)


@settings(max_examples=300, deadline=None)
@given(
    dialect=st.sampled_from([PG, MY]),
    route=st.integers(0, len(ROUTES)),
    wrapper=st.sampled_from(WRAPPERS),
    data=st.data(),
)
def test_a_masked_value_whose_outcome_is_observed_is_refused(dialect: str, route: int, wrapper: str, data: st.DataObject) -> None:
    template = data.draw(st.sampled_from(OBSERVED[dialect]))
    sql = _statement(dialect, route, wrapper, template)
    for doubt in (False, True):
        r = plan_request(
            sql, analyse(sql, dialect), CATALOGUES[dialect], MASKS, SESSION_SCHEMA[dialect],
            MaskingSettings(mask_all_on_doubt=doubt),
        )
        assert r.refusal, (sql, doubt)
        assert r.rule_id == "pii-email", (sql, r.refusal)
        assert 'masking rule "pii-email"' in r.refusal


@settings(max_examples=100, deadline=None)
@given(dialect=st.sampled_from([PG, MY]), route=st.integers(0, len(ROUTES)), wrapper=st.sampled_from(WRAPPERS))
def test_the_same_value_as_an_output_column_is_masked_and_answered(dialect: str, route: int, wrapper: str) -> None:
    sql = _statement(dialect, route, wrapper, "SELECT {V} AS out FROM {F}")
    r = plan_request(sql, analyse(sql, dialect), CATALOGUES[dialect], MASKS, SESSION_SCHEMA[dialect], MaskingSettings())
    assert r.refusal == "", (sql, r.refusal)
    assert r.plan.columns and r.plan.columns[0] is not None and r.plan.columns[0].rule_id == "pii-email", sql
