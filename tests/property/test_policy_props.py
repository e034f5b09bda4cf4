"""Property tests for the policy engine (issue 5, item 7).

1. A decision does not change under whitespace changes, comment insertion between tokens and
   keyword-case changes, for statements generated from a small grammar in both dialects.
2. With delete-without-where / update-without-where / where-always-true switched on in production, no DELETE or
   UPDATE without a WHERE on the protected table passes, whatever wraps it (CTE, EXPLAIN ANALYZE,
   multi-statement, comments, schema qualification, quoting), even for an identity that an allow
   rule lets write.

Each decision is taken by a fresh `Engine` built from the loaded config (so the analyser runs on
every variant instead of the analysis cache answering for the canonical text), and once more by
the gatekeeper's cached engine.
"""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlward.gateway.config import Config, load_config
from sqlward.audit.recorder import NullSink
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.policy.engine import Engine
from sqlward.policy.model import Identity, TargetInfo
from sqlward.policy.rules import EnvironmentPolicy
from tests.unit.test_policy_corpus import ALICE, BOB, POLICY

PG = "postgres"
MY = "mysql"

logging.getLogger("sqlglot").setLevel(logging.CRITICAL)

TARGETS = {
    PG: TargetInfo(name="app-prod", protocol="postgres", environment="production", database="app"),
    MY: TargetInfo(name="shop-prod", protocol="mysql", environment="production", database="shop"),
}


def _load(directory: Path, text: str) -> tuple[Config, Gatekeeper]:
    path = directory / "sqlward.toml"
    path.write_text(textwrap.dedent(text))
    config = load_config(str(path), env={})
    return config, Gatekeeper.from_config(config, NullSink())


def _fresh(config: Config) -> Engine:
    return Engine(
        rules=config.rules,
        environments=config.environments,
        version=1,
        unknown_environment=EnvironmentPolicy(),
        guardrails=config.guardrails,
    )


class Judge:
    def __init__(self, config: Config, gatekeeper: Gatekeeper) -> None:
        self.config = config
        self.gatekeeper = gatekeeper

    def both(self, sql: str, dialect: str, who: Identity) -> tuple[tuple[str, str], tuple[str, str]]:
        target = TARGETS[dialect]
        schema = target.database if dialect == MY else ""
        engine = _fresh(self.config)
        fresh = engine.decide(engine.analyse(sql, dialect), who, target, schema=schema, sql=sql)
        gk = self.gatekeeper
        cached = gk.decide(gk.analyse(sql, dialect), who, target, schema=schema, sql=sql)
        return (fresh.action, fresh.rule_id), (cached.action, cached.rule_id)


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> Judge:
    return Judge(*_load(tmp_path_factory.mktemp("props"), POLICY))


# A policy where only the two guardrails (and parse failures) can stop a DELETE / UPDATE by alice.
WRITE_POLICY = POLICY.split("[environments.production]")[0] + """
[environments.production]
default_action = "deny"
allow_unparsed = false

[guardrails.delete-without-where]
environments = ["production"]

[guardrails.update-without-where]
environments = ["production"]

[guardrails.where-always-true]
environments = ["production"]

[[rules]]
id = "dba-anything"
groups = ["dba"]
action = "allow"
"""


@pytest.fixture(scope="module")
def write_judge(tmp_path_factory: pytest.TempPathFactory) -> Judge:
    return Judge(*_load(tmp_path_factory.mktemp("writes"), WRITE_POLICY))


# ------------------------------------------------------------------------------------ grammar
# A statement is a list of tokens; comments and whitespace may go between any two tokens. A
# qualified or quoted name is one token (no comment inside it). Keywords are the upper-case
# alphabetic tokens in KEYWORDS; only their case is changed.

KEYWORDS = frozenset(
    "SELECT FROM WHERE LIMIT DELETE UPDATE SET INSERT INTO VALUES DROP TABLE TRUNCATE GRANT ON TO "
    "ROLE CREATE AS WITH RETURNING EXPLAIN ANALYZE ORDER BY IF EXISTS AND OR NOT".split()
)

TABLES = {
    PG: ["t", "users", "public.users", '"public"."users"', '"users"', "payroll.slips", "orders"],
    MY: ["t", "users", "shop.users", "`shop`.`users`", "`users`", "payroll.slips", "orders"],
}

COMMON = [
    "SELECT * FROM {T}",
    "SELECT * FROM {T} LIMIT 5",
    "SELECT a , b FROM {T} WHERE id = 1 AND b = 'x'",
    "DELETE FROM {T}",
    "DELETE FROM {T} WHERE id = 1",
    "UPDATE {T} SET a = 1",
    "UPDATE {T} SET a = 1 WHERE id = 1",
    "INSERT INTO {T} VALUES ( 1 , 2 )",
    "DROP TABLE {T}",
    "DROP TABLE IF EXISTS {T}",
    "TRUNCATE TABLE {T}",
    "GRANT SELECT ON {T} TO bob",
    "SET ROLE admin",
    "CREATE TABLE x AS SELECT * FROM {T}",
    "CREATE TABLE x ( a int )",
    "SELECT 1 ; DROP TABLE {T}",
    "SELECT 1 ; DELETE FROM {T}",
    "SELECT 1 ; SELECT 2 ; SELECT 3",
]
ONLY = {
    PG: [
        "WITH x AS ( DELETE FROM {T} RETURNING * ) SELECT * FROM x",
        "WITH x AS ( DELETE FROM {T} WHERE id = 1 RETURNING * ) SELECT * FROM x",
        "EXPLAIN ANALYZE DELETE FROM {T}",
        "EXPLAIN ANALYZE DELETE FROM {T} WHERE id = 1",
        "EXPLAIN SELECT * FROM {T}",
        "SELECT pg_read_file ( '/etc/passwd' )",
        "SET search_path TO app",
    ],
    MY: [
        "DELETE FROM {T} LIMIT 10",
        "UPDATE {T} SET a = 1 ORDER BY id LIMIT 5",
        "SELECT * FROM {T} INTO OUTFILE '/tmp/x'",
        "SET NAMES utf8mb4",
        "USE payroll ; SELECT * FROM slips",
    ],
}

WHITESPACE = [" ", "  ", "\n", "\t", "\r\n", " \n\t "]
COMMENTS = {PG: ["/* c */", "/**/", "-- c\n", "/* ; DROP TABLE t */"], MY: ["/* c */", "/**/", "-- c\n", "# c\n", "/* ; */"]}


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, list[str]]:
    dialect = draw(st.sampled_from([PG, MY]))
    template = draw(st.sampled_from(COMMON + ONLY[dialect]))
    table = draw(st.sampled_from(TABLES[dialect]))
    return dialect, template.replace("{T}", table).split(" ")


def _recase(draw: st.DrawFn, token: str) -> str:
    if token not in KEYWORDS:
        return token
    mode = draw(st.sampled_from(["upper", "lower", "title", "mixed"]))
    if mode == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(token), max_size=len(token)))
        return "".join(c.lower() if f else c for c, f in zip(token, flips))
    return {"upper": token.upper(), "lower": token.lower(), "title": token.title()}[mode]


@st.composite
def variants(draw: st.DrawFn, dialect: str, tokens: list[str], line_tail: bool = True) -> str:
    """`tokens` with other keyword case, other whitespace and comments between tokens."""
    out = []
    for i, token in enumerate(tokens):
        if i:
            sep = draw(st.sampled_from(WHITESPACE))
            if draw(st.integers(0, 3)) == 0:
                sep += draw(st.sampled_from(COMMENTS[dialect])) + draw(st.sampled_from(WHITESPACE))
            out.append(sep)
        out.append(_recase(draw, token))
    lead = draw(st.sampled_from(["", " ", "\n", "/* lead */ ", "-- lead\n"]))
    tail = draw(st.sampled_from(["", " ", "\n", " /* tail */", *([" -- tail"] if line_tail else [])]))
    return lead + "".join(out) + tail


PROPS = settings(max_examples=int(os.environ.get("SQLWARD_PROP_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPS
@given(data=st.data(), who=st.sampled_from([ALICE, BOB]))
def test_decision_is_invariant_under_whitespace_comments_and_case(judge: Judge, data: st.DataObject, who: Identity) -> None:
    dialect, tokens = data.draw(statements())
    canonical = " ".join(tokens)
    variant = data.draw(variants(dialect, tokens))
    base_fresh, base_cached = judge.both(canonical, dialect, who)
    var_fresh, var_cached = judge.both(variant, dialect, who)
    assert base_fresh == base_cached
    assert var_fresh == base_fresh, (canonical, variant)
    assert var_cached == base_fresh, (canonical, variant)


# ------------------------------------------------------------------- unbounded writes on users

PROTECTED = {
    PG: ["users", "USERS", '"users"', "public.users", '"public"."users"', 'public."users"', 'PUBLIC.Users'],
    MY: ["users", "USERS", "`users`", "shop.users", "`shop`.`users`", "shop.`users`", "SHOP.users"],
}
CORES = {
    PG: [
        "DELETE FROM {T}",
        "DELETE FROM ONLY {T}",
        "DELETE FROM {T} AS u",
        "DELETE FROM {T} RETURNING *",
        "DELETE FROM {T} USING t",
        "UPDATE {T} SET a = 1",
        "UPDATE {T} AS u SET a = 1",
        "UPDATE {T} SET a = 1 RETURNING id",
        "UPDATE {T} SET a = 1 FROM t",
        "DELETE FROM {T} WHERE 1 = 1",
        "DELETE FROM {T} WHERE 'x' = 'x'",
        "UPDATE {T} SET a = 1 WHERE id > 0 OR TRUE",
        "UPDATE {T} SET a = 1 WHERE id = id",
        "DELETE FROM {T} WHERE NOT ( 1 = 2 )",
        "DELETE FROM {T} WHERE now ( ) > '2020-01-01'",
    ],
    MY: [
        "DELETE FROM {T}",
        "DELETE FROM {T} LIMIT 10",
        "DELETE FROM {T} ORDER BY id LIMIT 5",
        "DELETE LOW_PRIORITY FROM {T}",
        "DELETE {T} FROM {T}",
        "UPDATE {T} SET a = 1",
        "UPDATE {T} SET a = 1 LIMIT 5",
        "UPDATE {T} SET a = 1 ORDER BY id",
        "UPDATE {T}, t SET a = 1",
        "DELETE FROM {T} WHERE 1",
        "DELETE FROM {T} WHERE 1 = 1 LIMIT 10",
        "UPDATE {T} SET a = 1 WHERE TRUE OR id = 4",
        "UPDATE {T} SET a = 1 WHERE 'a' = 'a'",
    ],
}
WRAPPERS = {
    PG: [
        "{S}",
        "WITH x AS ({S} RETURNING *) SELECT * FROM x",  # only for cores without RETURNING
        "WITH a AS (SELECT 1), x AS ({S} RETURNING 1) SELECT * FROM a",
        "EXPLAIN ANALYZE {S}",
        "EXPLAIN (ANALYZE, BUFFERS) {S}",
        "EXPLAIN {S}",
        "PREPARE s AS {S}",
        "SELECT 1; /* */ {S}",
        "{S}; SELECT 1",
        "-- x\n{S}",
        "/* a */ {S} /* WHERE id = 1 */",
        "{S} -- WHERE id = 1",
        "SELECT * FROM (WITH x AS ({S} RETURNING 1) SELECT * FROM x) y",
    ],
    MY: [
        "{S}",
        "/*! {S} */",
        "/*!50000 {S} */",
        "/*M! {S} */",
        "EXPLAIN {S}",
        "ANALYZE {S}",
        "SELECT 1; /* */ {S}",
        "{S}; SELECT 1",
        "# x\n{S}",
        "-- x\n{S}",
        "/* a */ {S} /* WHERE id = 1 */",
        "{S} # WHERE id = 1",
        "SELECT 1 /*!; {S} */",
    ],
}


@st.composite
def unbounded_writes(draw: st.DrawFn) -> tuple[str, str]:
    dialect = draw(st.sampled_from([PG, MY]))
    table = draw(st.sampled_from(PROTECTED[dialect]))
    core = draw(st.sampled_from(CORES[dialect])).replace("{T}", table)
    wrappers = WRAPPERS[dialect]
    if "RETURNING" in core:
        wrappers = [w for w in wrappers if "RETURNING" not in w]
    wrapper = draw(st.sampled_from(wrappers))
    if draw(st.booleans()):
        # the same whitespace / comment / case noise as above, on the wrapped statement only (a
        # comment inserted into a wrapper such as /*! ... */ would end it)
        core = draw(variants(dialect, core.split(" "), line_tail=False))
    return dialect, wrapper.replace("{S}", core)


@PROPS
@given(case=unbounded_writes())
def test_no_unbounded_write_on_a_protected_table_passes_in_production(write_judge: Judge, case: tuple[str, str]) -> None:
    dialect, sql = case
    fresh, cached = write_judge.both(sql, dialect, ALICE)
    assert fresh[0] != "allow", (dialect, sql, fresh)
    assert cached[0] != "allow", (dialect, sql, cached)


def test_write_policy_lets_bounded_writes_through(write_judge: Judge) -> None:
    """Sanity check of the property above: the allow rule does let a bounded write pass."""
    for dialect, sql in (
        (PG, 'DELETE FROM "public"."users" WHERE id = 1'),
        (MY, "UPDATE `shop`.`users` SET a = 1 WHERE id = 1"),
        (PG, "DELETE FROM users WHERE 1 = 2 OR id = 3"),
        (MY, "UPDATE users SET a = 1 WHERE 1 = 1 AND id = 3"),
    ):
        fresh, cached = write_judge.both(sql, dialect, ALICE)
        assert fresh == cached == ("allow", "dba-anything"), sql


# ----------------------------------------------------------------- versioned executable comments


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.integers(90000, 99999), core=st.sampled_from(["DELETE FROM users", "UPDATE users SET a = 1"]))
def test_where_in_a_future_versioned_comment_is_not_a_where(write_judge: Judge, version: int, core: str) -> None:
    sql = f"{core} /*!{version} WHERE id = 1 */"
    fresh, cached = write_judge.both(sql, MY, ALICE)
    assert fresh[0] != "allow", (sql, fresh)
    assert cached[0] != "allow", (sql, cached)
