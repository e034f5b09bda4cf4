"""Unit tests for policy.engine: rule matching, defaults, unparsed statements and caching."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sqlward.policy.engine import Engine
from sqlward.policy.model import Analysis, Identity, StatementFacts, TargetInfo
from sqlward.policy.rules import EnvironmentPolicy, Rule

PG = "postgres"

PROD = TargetInfo(name="orders-db", protocol="postgres", environment="production")
STAGING = TargetInfo(name="orders-staging", protocol="postgres", environment="staging")
ALICE = Identity(subject="alice@example.com", groups=("analysts", "staff"))
BOB = Identity(subject="bob@example.com", groups=("staff",))

ENVS = {
    "production": EnvironmentPolicy(default_action="deny"),
    "staging": EnvironmentPolicy(default_action="allow"),
}


@pytest.fixture(autouse=True)
def _quiet_sqlglot(caplog: pytest.LogCaptureFixture) -> None:
    # sqlglot logs a warning for every statement it falls back to exp.Command on.
    caplog.set_level(logging.ERROR, logger="sqlglot")


def facts(**kw: Any) -> Analysis:
    """An analysis holding one statement with the given facts."""
    kw.setdefault("operation", "select")
    kw.setdefault("operations", (kw["operation"],))
    return Analysis(fingerprint=repr(sorted(kw.items())), dialect=PG, statements=(StatementFacts(**kw),))


def decide(rule: Rule, analysis: Analysis, identity: Identity = ALICE, target: TargetInfo = STAGING) -> str:
    """Whether `rule` (the only rule) decided the statement: "match" or "no match"."""
    engine = Engine([rule], ENVS, version=1)
    d = engine.decide(analysis, identity, target)
    return "match" if d.rule_id == rule.id else "no match"


# (rule, analysis, identity, target, expected) — each criterion both matching and not matching.
MATCHER_TABLE: list[tuple[Rule, Analysis, Identity, TargetInfo, str]] = [
    # operations: any of the statement's operations
    (Rule(id="r", action="deny", operations=("drop",)), facts(operation="drop"), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", operations=("drop",)), facts(operation="select"), ALICE, STAGING, "no match"),
    (Rule(id="r", action="deny", operations=("delete",)), facts(operation="select", operations=("select", "delete")), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", operations=("DROP",)), facts(operation="drop"), ALICE, STAGING, "match"),
    # tables: globs, case-insensitive, bare name of schema.table, read or written
    (Rule(id="r", action="deny", tables=("users",)), facts(tables_read=("public.users",)), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", tables=("users",)), facts(tables_read=("public.orders",)), ALICE, STAGING, "no match"),
    (Rule(id="r", action="deny", tables=("public.*",)), facts(tables_written=("public.orders",)), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", tables=("public.*",)), facts(tables_written=("orders",)), ALICE, STAGING, "no match"),
    (Rule(id="r", action="deny", tables=("PAY*",)), facts(tables_read=("x", "billing.Payments")), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", tables=("s.users",)), facts(tables_read=("users",)), ALICE, STAGING, "no match"),
    (Rule(id="r", action="deny", tables=("users",)), facts(), ALICE, STAGING, "no match"),
    # environments and targets: exact names
    (Rule(id="r", action="deny", environments=("production",)), facts(), ALICE, PROD, "match"),
    (Rule(id="r", action="deny", environments=("production",)), facts(), ALICE, STAGING, "no match"),
    (Rule(id="r", action="deny", targets=("orders-db",)), facts(), ALICE, PROD, "match"),
    (Rule(id="r", action="deny", targets=("orders-db",)), facts(), ALICE, STAGING, "no match"),
    # identities: subject globs (case-sensitive)
    (Rule(id="r", action="deny", identities=("alice@*",)), facts(), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", identities=("alice@*",)), facts(), BOB, STAGING, "no match"),
    (Rule(id="r", action="deny", identities=("ALICE@*",)), facts(), ALICE, STAGING, "no match"),
    # groups: any overlap
    (Rule(id="r", action="deny", groups=("analysts", "ops")), facts(), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", groups=("analysts", "ops")), facts(), BOB, STAGING, "no match"),
    # has_where
    (Rule(id="r", action="deny", has_where=False), facts(operation="delete", has_where=False), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", has_where=False), facts(operation="delete", has_where=True), ALICE, STAGING, "no match"),
    (Rule(id="r", action="deny", has_where=True), facts(operation="update", has_where=True), ALICE, STAGING, "match"),
    (Rule(id="r", action="deny", has_where=False), facts(operation="select"), ALICE, STAGING, "no match"),
    # all criteria together: every non-empty one must match
    (
        Rule(id="r", action="deny", operations=("delete",), tables=("orders",), environments=("production",), groups=("staff",), has_where=False),
        facts(operation="delete", tables_written=("orders",), has_where=False),
        BOB,
        PROD,
        "match",
    ),
    (
        Rule(id="r", action="deny", operations=("delete",), tables=("orders",), environments=("production",), groups=("staff",), has_where=False),
        facts(operation="delete", tables_written=("orders",), has_where=True),
        BOB,
        PROD,
        "no match",
    ),
    # no criteria: matches everything
    (Rule(id="r", action="deny"), facts(), ALICE, STAGING, "match"),
]


@pytest.mark.parametrize(("rule", "analysis", "identity", "target", "expected"), MATCHER_TABLE)
def test_matcher_table(rule: Rule, analysis: Analysis, identity: Identity, target: TargetInfo, expected: str) -> None:
    assert decide(rule, analysis, identity, target) == expected


# Allow rules must cover every operation and table of a statement (strict_allow, the default).
ALLOW_TABLE: list[tuple[Rule, Analysis, bool]] = [
    (Rule(id="a", action="allow", operations=("select",)), facts(operation="select"), True),
    (Rule(id="a", action="allow", operations=("select",)), facts(operation="select", operations=("select", "delete")), False),
    (Rule(id="a", action="allow", operations=("select", "delete")), facts(operation="select", operations=("select", "delete")), True),
    (Rule(id="a", action="allow", tables=("public.*",)), facts(tables_read=("public.a", "public.b")), True),
    (Rule(id="a", action="allow", tables=("public.*",)), facts(tables_read=("secret.y",), tables_written=("public.x",)), False),
    (Rule(id="a", action="allow", tables=("public.*",)), facts(), False),  # no table to cover
]


@pytest.mark.parametrize(("rule", "analysis", "allowed"), ALLOW_TABLE)
def test_allow_rules_must_cover_the_statement(rule: Rule, analysis: Analysis, allowed: bool) -> None:
    engine = Engine([rule], ENVS, version=1)
    d = engine.decide(analysis, ALICE, PROD)  # production denies by default
    assert (d.action == "allow") is allowed
    assert d.rule_id == ("a" if allowed else "default")


def test_strict_allow_can_be_switched_off() -> None:
    rule = Rule(id="a", action="allow", operations=("select",))
    analysis = facts(operation="select", operations=("select", "delete"))
    assert Engine([rule], ENVS, version=1).decide(analysis, ALICE, PROD).action == "deny"
    assert Engine([rule], ENVS, version=1, strict_allow=False).decide(analysis, ALICE, PROD).action == "allow"


def test_first_matching_rule_wins() -> None:
    rules = [
        Rule(id="allow-alice", action="allow", identities=("alice@*",)),
        Rule(id="no-drop", action="deny", operations=("drop",)),
        Rule(id="no-drop-2", action="deny", operations=("drop",), message="never"),
    ]
    engine = Engine(rules, ENVS, version=1)
    drop = facts(operation="drop", tables_written=("t",))
    assert engine.decide(drop, ALICE, PROD).rule_id == "allow-alice"
    assert engine.decide(drop, BOB, PROD).rule_id == "no-drop"


def test_refusal_message_names_the_rule() -> None:
    rule = Rule(id="no-drop", action="deny", operations=("drop",), environments=("production",))
    d = Engine([rule], ENVS, version=1).decide(facts(operation="drop"), ALICE, PROD)
    assert d.action == "deny" and d.statement_index == 0
    assert d.message == 'statement refused by rule "no-drop": DROP is not allowed in production'
    custom = Rule(id="no-drop", action="deny", operations=("drop",), message="ask the DBA team")
    d = Engine([custom], ENVS, version=1).decide(facts(operation="drop"), ALICE, PROD)
    assert d.message == 'statement refused by rule "no-drop": ask the DBA team'


def test_derived_message_mentions_criteria() -> None:
    rule = Rule(id="r", action="deny", operations=("delete", "update"), tables=("orders",), has_where=False, groups=("staff",))
    d = Engine([rule], ENVS, version=1).decide(facts(operation="delete", tables_read=("orders",), has_where=False), BOB, PROD)
    assert d.message == (
        'statement refused by rule "r": DELETE / UPDATE on orders without a WHERE clause is not allowed for group staff'
    )


def test_defaults_per_environment() -> None:
    engine = Engine([], ENVS, version=1)
    d = engine.decide(facts(operation="delete"), ALICE, PROD)
    assert (d.action, d.rule_id, d.statement_index) == ("deny", "default", 0)
    assert 'rule "default"' in d.message and "DELETE" in d.message and "production" in d.message
    d = engine.decide(facts(operation="delete"), ALICE, STAGING)
    assert (d.action, d.rule_id, d.message) == ("allow", "default", "")


def test_unknown_environment_denies_by_default() -> None:
    target = TargetInfo(name="x", protocol="postgres", environment="qa")
    assert Engine([], ENVS, version=1).decide(facts(), ALICE, target).action == "deny"
    lenient = Engine([], ENVS, version=1, unknown_environment=EnvironmentPolicy())
    assert lenient.decide(facts(), ALICE, target).action == "allow"


def test_review_is_reported_and_deny_beats_review() -> None:
    rules = [
        Rule(id="review-deletes", action="review", operations=("delete",)),
        Rule(id="no-drop", action="deny", operations=("drop",)),
    ]
    engine = Engine(rules, ENVS, version=1)
    d = engine.decide(facts(operation="delete"), ALICE, STAGING)
    assert (d.action, d.rule_id, d.statement_index) == ("review", "review-deletes", 0)
    assert d.message == 'needs approval (rule "review-deletes")'
    both = engine.analyse("DELETE FROM t WHERE id = 1; DROP TABLE t", PG)
    d = engine.decide(both, ALICE, STAGING)
    assert (d.action, d.rule_id, d.statement_index) == ("deny", "no-drop", 1)
    assert d.message.startswith('statement 2 of 2 refused by rule "no-drop"')


def test_any_refused_statement_refuses_the_request() -> None:
    engine = Engine([Rule(id="no-drop", action="deny", operations=("drop",))], ENVS, version=1)
    d = engine.decide(engine.analyse("SELECT 1; SELECT 2; DROP TABLE t", PG), ALICE, STAGING)
    assert (d.action, d.statement_index) == ("deny", 2)
    d = engine.decide(engine.analyse("SELECT 1; SELECT 2", PG), ALICE, STAGING)
    assert (d.action, d.rule_id) == ("allow", "default")


def test_allowed_request_lists_the_allowing_rules() -> None:
    rules = [Rule(id="reads", action="allow", operations=("select",)), Rule(id="writes", action="allow", operations=("insert",))]
    engine = Engine(rules, ENVS, version=1)
    d = engine.decide(engine.analyse("SELECT 1; INSERT INTO t VALUES (1); SELECT 2", PG), ALICE, PROD)
    assert (d.action, d.rule_id, d.statement_index) == ("allow", "reads,writes", None)


def test_empty_analysis_is_allowed() -> None:
    engine = Engine([Rule(id="deny-all", action="deny")], ENVS, version=1)
    d = engine.decide(engine.analyse(" ; -- nothing", PG), ALICE, PROD)
    assert d.action == "allow"


@pytest.mark.parametrize(
    ("environment", "policy", "allowed"),
    [
        ("production", EnvironmentPolicy(default_action="allow"), False),
        ("staging", EnvironmentPolicy(default_action="allow"), False),
        ("development", EnvironmentPolicy(), True),
        ("dev", EnvironmentPolicy(), True),
        ("local", EnvironmentPolicy(), True),
        ("test", EnvironmentPolicy(), True),
        ("production", EnvironmentPolicy(allow_unparsed=True, default_action="allow"), True),
        ("dev", EnvironmentPolicy(allow_unparsed=False), False),
    ],
)
@pytest.mark.parametrize("sql", ["VACUUM t", "SELECT FROM WHERE (", "SELECT 'unterminated"])
def test_unparsed_statements_per_environment(environment: str, policy: EnvironmentPolicy, allowed: bool, sql: str) -> None:
    engine = Engine([], {environment: policy}, version=1)
    target = TargetInfo(name="db", protocol="postgres", environment=environment)
    d = engine.decide(engine.analyse(sql, PG), ALICE, target)
    if allowed:
        assert d.action == "allow"
    else:
        assert (d.action, d.rule_id, d.statement_index) == ("deny", "unparseable", 0)
        assert "sqlglot could not parse the statement" in d.message and environment in d.message


def test_rules_still_apply_to_allowed_unparsed_statements() -> None:
    engine = Engine([Rule(id="no-vacuum", action="deny", operations=("vacuum",))], {"dev": EnvironmentPolicy()}, version=1)
    target = TargetInfo(name="db", protocol="postgres", environment="dev")
    assert engine.decide(engine.analyse("VACUUM FULL t", PG), ALICE, target).rule_id == "no-vacuum"


def test_parse_error_message_carries_the_error() -> None:
    engine = Engine([], ENVS, version=1)
    d = engine.decide(engine.analyse("SELECT FROM WHERE (", PG), ALICE, PROD)
    assert "Expected table name" in d.message


# ------------------------------------------------------------------------------------- caching


def test_analysis_is_parsed_once_per_shape() -> None:
    engine = Engine([], ENVS, version=1)
    a = engine.analyse("SELECT abalance FROM pgbench_accounts WHERE aid = 1;", PG)
    b = engine.analyse("SELECT abalance FROM pgbench_accounts WHERE aid = 99;", PG)
    c = engine.analyse("SELECT abalance FROM pgbench_accounts WHERE aid = 99;", "mysql")
    d = engine.analyse("SELECT bbalance FROM pgbench_branches WHERE bid = 1;", PG)
    assert a is b
    assert c is not a and c.dialect == "mysql"
    assert d is not a and d.statements[0].tables_read == ("pgbench_branches",)


def test_unclassifiable_texts_are_not_cached() -> None:
    engine = Engine([], ENVS, version=1, cache_size=4)
    a = engine.analyse("SELECT 'x", PG)
    assert a.parse_status == "error" and engine.analyse("SELECT 'x", PG) is not a


def test_decision_cache_returns_the_same_object() -> None:
    engine = Engine([Rule(id="ro", action="allow", operations=("select",))], ENVS, version=7)
    analysis = engine.analyse("SELECT * FROM t WHERE a = 1", PG)
    first = engine.decide(analysis, ALICE, PROD)
    again = engine.decide(engine.analyse("SELECT * FROM t WHERE a = 2", PG), ALICE, PROD)
    assert again is first and first.action == "allow"
    assert engine.version == 7


def test_decision_cache_is_keyed_by_groups_subject_actor_and_target() -> None:
    engine = Engine([Rule(id="analysts-only", action="allow", groups=("analysts",))], ENVS, version=1)
    analysis = engine.analyse("SELECT * FROM t WHERE a = 1", PG)
    analyst = Identity(subject="carol", groups=("analysts",))
    plain = Identity(subject="carol", groups=())
    assert engine.decide(analysis, analyst, PROD).action == "allow"
    assert engine.decide(analysis, plain, PROD).action == "deny"  # same fingerprint, other groups
    assert engine.decide(analysis, analyst, PROD).action == "allow"

    by_subject = Engine([Rule(id="no-bob", action="deny", identities=("bob@*",))], ENVS, version=1)
    assert by_subject.decide(analysis, ALICE, STAGING).action == "allow"
    assert by_subject.decide(analysis, BOB, STAGING).action == "deny"

    by_target = Engine([Rule(id="no-prod", action="deny", targets=("orders-db",))], ENVS, version=1)
    staging_like = TargetInfo(name="orders-db", protocol="postgres", environment="staging")
    assert by_target.decide(analysis, ALICE, STAGING).action == "allow"
    assert by_target.decide(analysis, ALICE, staging_like).action == "deny"

    agent = Identity(subject="alice@example.com", groups=ALICE.groups, actor=("runbook-7",))
    a = engine.decide(analysis, ALICE, STAGING)
    b = engine.decide(analysis, agent, STAGING)
    assert a == b and a is not b  # separate cache entries per actor chain


def test_caches_are_bounded() -> None:
    engine = Engine([], ENVS, version=1, cache_size=8)
    for i in range(50):
        analysis = engine.analyse(f"SELECT * FROM t{i}", PG)
        engine.decide(analysis, ALICE, STAGING)
        assert len(engine._analyses) <= 8 and len(engine._decisions) <= 8
    recent = engine.analyse("SELECT * FROM t49", PG)
    assert engine.analyse("SELECT * FROM t49", PG) is recent


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Engine([], ENVS, version=1, cache_size=0)


def test_rules_and_environments_are_exposed() -> None:
    rules = [Rule(id="a", action="allow")]
    engine = Engine(rules, ENVS, version=3)
    assert [r.id for r in engine.rules] == ["a"]
    assert engine.environments["production"].default_action == "deny"


def test_analyser_failure_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlward.policy.engine as engine_module

    def boom(sql: str, dialect: str, fp: str | None = None) -> Analysis:
        raise RuntimeError("surprise")

    monkeypatch.setattr(engine_module, "_analyse", boom)
    engine = Engine([], {"production": EnvironmentPolicy(default_action="allow")}, version=1)
    analysis = engine.analyse("SELECT 1", PG)
    assert analysis.parse_status == "error" and "surprise" in analysis.error
    assert engine.decide(analysis, ALICE, PROD).action == "deny"


def test_rules_match_on_actor_chain_and_agent_flag() -> None:
    """Issue 4: a rule can name the agent acting for a person, or all agents."""
    from sqlward.policy.engine import Engine as _Engine
    from sqlward.policy.model import Identity as _Identity, TargetInfo as _TargetInfo
    from sqlward.policy.rules import Rule as _Rule

    engine = _Engine(
        [
            _Rule(id="no-runbook-writes", action="deny", operations=("delete",), actors=("runbook-*",)),
            _Rule(id="agents-read-only", action="deny", operations=("update",), agents=True),
        ],
        {"development": EnvironmentPolicy()},
        1,
    )
    target = _TargetInfo(name="app", protocol="postgres", environment="development")
    person = _Identity(subject="alice")
    delegated = _Identity(subject="alice", actor=("runbook-7",), is_agent=True)
    other_agent = _Identity(subject="ci", is_agent=True)
    delete = engine.analyse("DELETE FROM t WHERE id = 1", "postgres")
    update = engine.analyse("UPDATE t SET a = 1 WHERE id = 1", "postgres")
    assert engine.decide(delete, person, target).action == "allow"
    assert engine.decide(delete, delegated, target).rule_id == "no-runbook-writes"
    assert engine.decide(delete, other_agent, target).action == "allow"
    assert engine.decide(update, person, target).action == "allow"
    assert engine.decide(update, other_agent, target).rule_id == "agents-read-only"
    assert engine.decide(update, delegated, target).rule_id == "agents-read-only"


# ------------------------------------------------------------------ criteria added for issue 5

MY = "mysql"


def _decide_sql(e: Engine, sql: str, dialect: str = PG, identity: Identity = ALICE, target: TargetInfo = PROD, **kw: Any):
    return e.decide(e.analyse(sql, dialect), identity, target, sql=sql, **kw)


@pytest.mark.parametrize(
    ("pattern", "sql", "dialect", "hit"),
    [
        ("users.ssn", "SELECT ssn FROM users", PG, True),
        ("users.ssn", "SELECT u.ssn FROM public.users AS u", PG, True),
        ("users.ssn", "SELECT * FROM users", PG, True),  # a star covers every column
        ("users.ssn", "SELECT u.* FROM users u JOIN orders o ON o.uid = u.id", PG, True),
        ("users.ssn", "SELECT name FROM users", PG, False),
        ("users.ssn", "SELECT ssn FROM orders", PG, False),
        ("*.ssn", "SELECT `SSN` FROM shop.people", MY, True),
        ("ssn", "SELECT a.ssn FROM a JOIN b ON a.id = b.id", PG, True),
        ("public.users.ssn", "SELECT ssn FROM public.users", PG, True),
        ("users.ssn", "UPDATE users SET ssn = NULL WHERE id = 1", PG, True),
        ("users.ssn", "SELECT count(*) FROM users WHERE ssn LIKE '1%'", PG, True),
    ],
)
def test_column_criterion(pattern: str, sql: str, dialect: str, hit: bool) -> None:
    e = Engine([Rule(id="no-ssn", action="deny", columns=(pattern,))], ENVS, version=1)
    d = _decide_sql(e, sql, dialect, target=STAGING)
    assert (d.action, d.rule_id) == (("deny", "no-ssn") if hit else ("allow", "default")), d
    if hit:
        assert any(f.startswith("column=") for f in d.facts), d.facts


@pytest.mark.parametrize(
    ("sql", "hit"),
    [
        ("DELETE FROM t WHERE 1 = 1", True),
        ("DELETE FROM t WHERE 1 = 2", False),
        ("DELETE FROM t WHERE id > 0 OR TRUE", True),
        ("DELETE FROM t WHERE id = 3", False),
        ("UPDATE t SET a = 1 WHERE 'x' = 'x'", True),
        ("UPDATE t SET a = 1 WHERE 'x' = 'y'", False),
    ],
)
def test_where_always_true_criterion_is_judged_on_each_text(sql: str, hit: bool) -> None:
    e = Engine([Rule(id="trivial", action="deny", where_always_true=True)], ENVS, version=1)
    # The same shape first with the other literal values: the cached decision must not leak.
    other = sql.replace("1 = 1", "1 = 2") if "1 = 1" in sql else sql.replace("1 = 2", "1 = 1")
    _decide_sql(e, other, target=STAGING)
    d = _decide_sql(e, sql, target=STAGING)
    assert (d.rule_id == "trivial") is hit, d


def test_where_always_true_without_the_text_fails_closed() -> None:
    e = Engine([Rule(id="trivial", action="deny", where_always_true=True)], ENVS, version=1)
    sql = "DELETE FROM t WHERE 1 = 2"
    assert e.decide(e.analyse(sql, PG), ALICE, STAGING).rule_id == "trivial"


def test_rows_over_asks_for_an_estimate_only_when_the_rest_matches() -> None:
    rules = [
        Rule(id="big-deletes", action="review", operations=("delete",), rows_over=1000),
        Rule(id="allow-rest", action="allow"),
    ]
    e = Engine(rules, ENVS, version=1)
    assert not _decide_sql(e, "UPDATE t SET a = 1 WHERE b > 2").pending  # operation does not match
    d = _decide_sql(e, "DELETE FROM t WHERE b > 2")
    assert d.pending == (0,) and d.action == "deny"
    assert _decide_sql(e, "DELETE FROM t WHERE b > 2", estimates={0: 50_000}).rule_id == "big-deletes"
    assert _decide_sql(e, "DELETE FROM t WHERE b > 2", estimates={0: 10}).rule_id == "allow-rest"
    # No estimate (EXPLAIN failed): a review / deny rule matches (fail closed) ...
    d = _decide_sql(e, "DELETE FROM t WHERE b > 2", estimates={0: None})
    assert d.rule_id == "big-deletes" and "estimated_rows=unknown" in d.facts
    # ... an allow rule does not.
    e2 = Engine([Rule(id="small-ok", action="allow", rows_over=None), Rule(id="x", action="allow", rows_over=5)], ENVS, version=1)
    assert _decide_sql(e2, "DELETE FROM t WHERE b > 2").rule_id == "small-ok"


def test_statements_over_criterion() -> None:
    e = Engine([Rule(id="batches", action="deny", statements_over=2), Rule(id="ok", action="allow")], ENVS, version=1)
    assert _decide_sql(e, "SELECT 1; SELECT 2").rule_id == "ok"
    d = _decide_sql(e, "SELECT 1; SELECT 2; SELECT 3")
    assert d.rule_id == "batches" and "statements=3>2" in d.facts


def test_time_window_criterion_follows_the_clock() -> None:
    import datetime as dt

    now = [dt.datetime(2026, 11, 25, 10, 30, tzinfo=dt.timezone.utc).timestamp()]  # a Wednesday
    rules = [
        Rule(id="office-hours", action="allow", days=("mon", "tue", "wed", "thu", "fri"), hours="09:00-18:00", timezone="Europe/Paris"),
    ]
    e = Engine(rules, ENVS, version=1, clock=lambda: now[0])
    assert _decide_sql(e, "SELECT 1").rule_id == "office-hours"  # 11:30 in Paris
    now[0] += 8 * 3600  # 19:30 in Paris: outside, and the cached decision must not be reused
    assert _decide_sql(e, "SELECT 1").rule_id == "default"
    now[0] += 3 * 86400  # Saturday
    assert _decide_sql(e, "SELECT 1").action == "deny"
    night = Engine([Rule(id="night", action="deny", hours="22:00-06:00")], ENVS, version=1, clock=lambda: now[0])
    now[0] = dt.datetime(2026, 11, 25, 23, 0, tzinfo=dt.timezone.utc).timestamp()
    assert _decide_sql(night, "SELECT 1", target=STAGING).rule_id == "night"
    now[0] = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    assert _decide_sql(night, "SELECT 1", target=STAGING).rule_id == "default"


def test_reason_criteria() -> None:
    rules = [
        Rule(id="ticketed", action="allow", reason_pattern=r"\bINC-\d+"),
        Rule(id="no-reason", action="deny", reason=False, message="state a reason (application_name or the reason comment)"),
        Rule(id="reasoned", action="review", reason=True),
    ]
    e = Engine(rules, ENVS, version=1)
    with_ticket = Identity(subject="a", reason="fixing inc-42 outage")
    vague = Identity(subject="a", reason="just looking")
    silent = Identity(subject="a")
    assert _decide_sql(e, "SELECT 1", identity=with_ticket).rule_id == "ticketed"
    assert _decide_sql(e, "SELECT 1", identity=silent).rule_id == "no-reason"
    assert _decide_sql(e, "SELECT 1", identity=vague).rule_id == "reasoned"


def test_production_denies_what_no_rule_allows_by_default() -> None:
    e = Engine([], {"production": EnvironmentPolicy(), "staging": EnvironmentPolicy()}, version=1)
    d = _decide_sql(e, "SELECT 1", target=PROD)
    assert (d.action, d.rule_id) == ("deny", "default") and "default=deny" in d.facts
    assert _decide_sql(e, "SELECT 1", target=STAGING).action == "allow"


def test_every_decision_explains_the_facts_that_matched() -> None:
    rule = Rule(id="no-deletes", action="deny", operations=("delete",), tables=("users",), environments=("production",), groups=("staff",))
    e = Engine([rule], ENVS, version=1)
    d = _decide_sql(e, "DELETE FROM public.users WHERE id = 1")
    assert d.facts == ("environment=production", "groups=staff", "operation=delete", "table=public.users")


def test_rule_problems_name_the_field() -> None:
    from sqlward.policy.rules import rule_problems

    bad = Rule(id="x", action="deny", days=("funday",), hours="9-5", timezone="Mars/Olympus", reason_pattern="(", rows_over=-1)
    fields = {f for f, _ in rule_problems(bad)}
    assert fields == {"days", "hours", "timezone", "reason_pattern", "rows_over"}


def test_review_names_who_may_approve() -> None:
    from sqlward.policy.guardrails import GuardrailConfig

    e = Engine(
        [Rule(id="big", action="review", operations=("delete",), approvers=("group:dba", "bot:change-bot"))],
        ENVS, version=1,
        guardrails={"truncate": GuardrailConfig(action="review", approvers=("group:sre",))},
    )
    d = _decide_sql(e, "DELETE FROM t WHERE id = 1")
    assert d.action == "review" and d.message == 'needs approval (rule "big", by group:dba or bot:change-bot)'
    d = _decide_sql(e, "TRUNCATE t", target=STAGING)
    assert d.action == "review" and 'guardrail "truncate", by group:sre' in d.message


def test_allow_decisions_are_explained_too() -> None:
    e = Engine([Rule(id="reads", action="allow", operations=("select",))], ENVS, version=1)
    d = _decide_sql(e, "SELECT * FROM t")
    assert (d.action, d.rule_id, d.facts) == ("allow", "reads", ("operations=select",))
    d = _decide_sql(e, "INSERT INTO t VALUES (1)", target=STAGING)
    assert d.action == "allow" and d.facts == ("no rule matched", "environment=staging", "default=allow")


@pytest.mark.parametrize("sql", [
    "SELECT query_to_xml('select * from secret', true, false, '')",
    "SELECT query_to_xml('select * from secr'||'et', true, false, '')",
    "SELECT pg_catalog.table_to_xml('secret', true, false, '')",
    "SELECT query_to_xml_and_xmlschema('select 1', true, false, '')",
    "SELECT xpath('/row', query_to_xml(format('select * from %I', 'secret'), true, false, ''))",
    'SELECT "query_to_xml"($$select * from secret$$, true, false, $$$$)',
    "SELECT schema_to_xml('public', true, false, '')",
    "SELECT database_to_xml(true, false, '')",
    "SELECT * FROM dblink('dbname=app', 'select * from secret') AS t(a int)",
    'SELECT "query_to_xml"($$select 1$$ garbage ((',  # unparseable: read lexically
])
def test_functions_that_run_sql_text_are_dynamic_sql_everywhere(sql: str) -> None:
    # Found by the outside attack run: table rules were bypassed through query_to_xml & co.
    dev = TargetInfo(name="app", protocol="postgres", environment="development")
    engine = Engine([Rule(id="all", action="allow")], ENVS, version=1)
    for target in (dev, PROD):
        d = _decide_sql(engine, sql, target=target)
        assert (d.action, d.rule_id) == ("deny", "dynamic-sql"), (sql, target.environment, d)
