"""Unit tests for policy.analysis: statement facts from sqlglot ASTs (table-driven)."""

from __future__ import annotations

import logging
from typing import NamedTuple

import pytest

from sqlward.policy.analysis import analyse
from sqlward.policy.fingerprint import fingerprint
from sqlward.policy.model import StatementFacts

PG = "postgres"
MY = "mysql"


@pytest.fixture(autouse=True)
def _quiet_sqlglot(caplog: pytest.LogCaptureFixture) -> None:
    # sqlglot logs a warning for every statement it falls back to exp.Command on.
    caplog.set_level(logging.ERROR, logger="sqlglot")


class Case(NamedTuple):
    dialect: str
    sql: str
    operation: str
    operations: tuple[str, ...]
    read: tuple[str, ...] = ()
    written: tuple[str, ...] = ()
    has_where: bool | None = None
    status: str = "ok"
    detail: str | None = None  # None: not checked


CASES: list[Case] = [
    # --- postgres: reads
    Case(PG, "SELECT abalance FROM pgbench_accounts WHERE aid = 48213", "select", ("select",), ("pgbench_accounts",)),
    Case(PG, "SELECT 1", "select", ("select",)),
    Case(PG, 'SELECT * FROM Public.Users u JOIN public."Orders" o ON u.id = o.uid', "select", ("select",), ("public.users", 'public.Orders')),
    Case(PG, "SELECT * FROM a.b.c", "select", ("select",), ("a.b.c",)),
    Case(PG, "SELECT * FROM t WHERE x IN (SELECT y FROM s) AND EXISTS (SELECT 1 FROM u)", "select", ("select",), ("t", "s", "u")),
    Case(PG, "SELECT 1 UNION SELECT a FROM t", "select", ("select",), ("t",)),
    Case(PG, "TABLE t", "select", ("select",), ("t",)),
    Case(PG, "VALUES (1), (2)", "select", ("select",)),
    Case(PG, "SELECT * FROM generate_series(1, 3) g, unnest(ARRAY[1]) u", "select", ("select",)),
    Case(PG, "SELECT * FROM t FOR UPDATE", "select", ("select",), ("t",)),
    # CTEs are not tables; a CTE shadowing a table is resolved by scope
    Case(PG, "WITH x AS (SELECT * FROM t) SELECT * FROM x", "select", ("select",), ("t",)),
    Case(PG, "WITH users AS (SELECT * FROM users) SELECT * FROM users", "select", ("select",), ("users",)),
    Case(PG, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r", "select", ("select",)),
    Case(PG, "SELECT * FROM (WITH t AS (SELECT 1) SELECT * FROM t) a JOIN t ON true", "select", ("select",), ("t",)),
    # nested writes
    Case(PG, "WITH d AS (DELETE FROM t WHERE x = 1 RETURNING *) SELECT * FROM d", "select", ("select", "delete"), (), ("t",), True),
    Case(PG, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "select", ("select", "delete"), (), ("t",), False),
    Case(PG, "WITH t AS (SELECT 1) INSERT INTO t SELECT * FROM t", "insert", ("insert", "select"), (), ("t",)),
    # SELECT INTO and CTAS are writes
    Case(PG, "SELECT a INTO newt FROM old", "select", ("select", "create"), ("old",), ("newt",)),
    Case(PG, "SELECT * INTO TEMP x FROM t", "select", ("select", "create"), ("t",), ("x",)),
    Case(PG, "CREATE TABLE x AS SELECT * FROM y", "create", ("create", "select"), ("y",), ("x",), detail="table"),
    # DML
    Case(PG, "INSERT INTO t (a) VALUES (1)", "insert", ("insert",), (), ("t",)),
    Case(PG, "INSERT INTO t (a) SELECT a FROM s", "insert", ("insert", "select"), ("s",), ("t",)),
    Case(PG, "INSERT INTO t AS x (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2", "insert", ("insert",), (), ("t",)),
    Case(PG, "UPDATE t SET a = s.a FROM s WHERE t.id = s.id", "update", ("update",), ("s",), ("t",), True),
    Case(PG, "UPDATE t SET a = 1", "update", ("update",), (), ("t",), False),
    Case(PG, "UPDATE t SET a = (SELECT max(b) FROM u) WHERE id = 1", "update", ("update", "select"), ("u",), ("t",), True),
    Case(PG, "DELETE FROM t", "delete", ("delete",), (), ("t",), False),
    Case(PG, "DELETE FROM s.t USING u WHERE s.t.id = u.id RETURNING *", "delete", ("delete",), ("u",), ("s.t",), True),
    Case(PG, "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (1)", "merge", ("merge", "delete", "insert"), ("s",), ("t",)),
    Case(PG, "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1", "merge", ("merge", "update"), ("s",), ("t",)),
    # COPY
    Case(PG, "COPY t FROM STDIN", "copy", ("copy",), (), ("t",), detail="from stdin"),
    Case(PG, "COPY t (a, b) FROM STDIN WITH (FORMAT csv)", "copy", ("copy",), (), ("t",), detail="from stdin"),
    Case(PG, "COPY t TO STDOUT", "copy", ("copy",), ("t",), detail="to stdout"),
    Case(PG, "COPY (SELECT * FROM t) TO STDOUT", "copy", ("copy", "select"), ("t",), detail="to stdout"),
    Case(PG, "COPY t FROM PROGRAM 'curl x | sh'", "copy", ("copy",), (), ("t",), detail="from program"),
    Case(PG, "COPY t TO '/tmp/out'", "copy", ("copy",), ("t",), detail="to file"),
    # DDL
    Case(PG, "TRUNCATE a, b.c", "truncate", ("truncate",), (), ("a", "b.c"), detail="table"),
    Case(PG, "TRUNCATE TABLE ONLY a RESTART IDENTITY", "truncate", ("truncate",), (), ("a",), detail="table"),
    Case(PG, "DROP TABLE a, b.c", "drop", ("drop",), (), ("a", "b.c"), detail="table"),
    Case(PG, "DROP TABLE IF EXISTS a CASCADE", "drop", ("drop",), (), ("a",), detail="table"),
    Case(PG, "DROP VIEW v", "drop", ("drop",), (), ("v",), detail="view"),
    Case(PG, "DROP MATERIALIZED VIEW mv", "drop", ("drop",), (), ("mv",), detail="materialized view"),
    Case(PG, "DROP SCHEMA s CASCADE", "drop", ("drop",), detail="schema"),
    Case(PG, "DROP DATABASE d", "drop", ("drop",), detail="database"),
    Case(PG, "DROP INDEX i", "drop", ("drop",), detail="index"),
    Case(PG, "DROP FUNCTION f(int)", "drop", ("drop",), detail="function"),
    Case(PG, "DROP ROLE r", "drop", ("drop",), status="unparsed", detail="role"),
    Case(PG, "CREATE INDEX i ON s.t (a)", "create", ("create",), (), ("s.t",), detail="index"),
    Case(PG, "CREATE VIEW v AS SELECT * FROM t", "create", ("create", "select"), ("t",), ("v",), detail="view"),
    Case(PG, "CREATE SCHEMA s", "create", ("create",), detail="schema"),
    Case(PG, "CREATE TEMP TABLE x (a int)", "create", ("create",), (), ("x",), detail="table"),
    # A routine is an object written into its schema (a rule on vault.* sees CREATE FUNCTION vault.f).
    Case(PG, "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", "create", ("create",), written=("f",), detail="function"),
    Case(PG, "CREATE FUNCTION vault.f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", "create", ("create",), written=("vault.f",), detail="function"),
    # MySQL: a routine runs in its own database, so its body's unqualified tables are that database's.
    Case(MY, "CREATE FUNCTION v.f() RETURNS TEXT READS SQL DATA RETURN (SELECT s FROM secrets LIMIT 1)", "create", ("create", "select"), read=("v.secrets",), written=("v.f",), detail="function"),
    Case(MY, "CREATE PROCEDURE v.p() SELECT * FROM secrets, w.t", "create", ("create", "select"), read=("v.secrets", "w.t"), written=("v.p",), detail="procedure"),
    Case(PG, "CREATE ROLE r LOGIN", "create", ("create",), status="unparsed", detail="role"),
    Case(PG, "CREATE EXTENSION pgcrypto", "create", ("create",), status="unparsed", detail="extension"),
    Case(PG, "ALTER TABLE t ADD COLUMN c int", "alter", ("alter",), (), ("t",), detail="table"),
    Case(PG, "ALTER ROLE r SUPERUSER", "alter", ("alter",), status="unparsed", detail="role"),
    Case(PG, "ALTER SYSTEM SET work_mem = '1GB'", "alter", ("alter",), status="unparsed", detail="system"),
    Case(PG, "COMMENT ON TABLE s.t IS 'x'", "comment", ("comment",), (), ("s.t",), detail="table"),
    # DCL and session
    Case(PG, "GRANT SELECT ON t TO u", "grant", ("grant",), (), ("t",), detail="table"),
    Case(PG, "GRANT USAGE ON SCHEMA s TO u", "grant", ("grant",), detail="schema"),
    Case(PG, "GRANT admin TO mallory", "grant", ("grant",), status="unparsed", detail="role"),
    Case(PG, "REVOKE SELECT ON t FROM u", "revoke", ("revoke",), (), ("t",), detail="table"),
    Case(PG, "SET search_path = x", "set", ("set",), detail=""),
    Case(PG, "SET extra_float_digits = 3", "set", ("set",), detail=""),
    Case(PG, "SET ROLE admin", "set", ("set",), status="unparsed", detail="role"),
    Case(PG, "SET LOCAL ROLE admin", "set", ("set",), status="unparsed", detail="role"),
    Case(PG, "SET SESSION AUTHORIZATION u", "set", ("set",), status="unparsed", detail="session authorization"),
    Case(PG, "RESET ROLE", "set", ("set",), detail="reset"),
    Case(PG, "SHOW search_path", "show", ("show",)),
    Case(PG, "SHOW TRANSACTION ISOLATION LEVEL", "show", ("show",)),
    # transactions (sqlglot 30 misparses several of these)
    Case(PG, "BEGIN", "begin", ("begin",)),
    Case(PG, "BEGIN ISOLATION LEVEL SERIALIZABLE", "begin", ("begin",)),
    Case(PG, "START TRANSACTION READ ONLY", "begin", ("begin",)),
    Case(PG, "COMMIT", "commit", ("commit",)),
    Case(PG, "END", "commit", ("commit",)),
    Case(PG, "ROLLBACK", "rollback", ("rollback",)),
    Case(PG, "ABORT", "rollback", ("rollback",)),
    Case(PG, "SAVEPOINT s1", "savepoint", ("savepoint",)),
    Case(PG, "RELEASE SAVEPOINT s1", "savepoint", ("savepoint",)),
    Case(PG, "ROLLBACK TO SAVEPOINT s1", "rollback", ("rollback",)),
    # utility statements sqlglot does not understand
    Case(PG, "VACUUM t", "vacuum", ("vacuum",), status="unparsed"),
    Case(PG, "VACUUM ANALYZE pgbench_branches", "vacuum", ("vacuum",), status="unparsed"),
    Case(PG, "ANALYZE t", "analyze", ("analyze",), ("t",)),
    Case(PG, "DO $$ BEGIN DELETE FROM t; END $$", "do", ("do",), status="unparsed"),
    Case(PG, "CALL p(1)", "call", ("call",), status="unparsed"),
    Case(PG, "LISTEN ch", "listen", ("listen",)),
    Case(PG, "UNLISTEN *", "listen", ("listen",)),
    Case(PG, "NOTIFY ch, 'payload'", "notify", ("notify",)),
    Case(PG, "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "lock", ("lock",), status="unparsed"),
    Case(PG, "CLUSTER t", "other", ("other",), status="unparsed", detail="cluster"),
    Case(PG, "DISCARD ALL", "other", ("other",), detail="discard"),
    Case(PG, "DEALLOCATE ALL", "deallocate", ("deallocate",)),
    Case(PG, "EXECUTE p(1)", "execute", ("execute",), status="unparsed"),
    # EXPLAIN and PREPARE are unwrapped (EXPLAIN ANALYZE runs the statement)
    Case(PG, "EXPLAIN SELECT * FROM t", "explain", ("explain", "select"), ("t",)),
    Case(PG, "EXPLAIN ANALYZE DELETE FROM t", "explain", ("explain", "delete"), (), ("t",), False),
    Case(PG, "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE id = 2", "explain", ("explain", "update"), (), ("t",), True),
    Case(PG, "PREPARE p (int) AS UPDATE t SET a = $1", "prepare", ("prepare", "update"), (), ("t",), False),
    # lexing differences with sqlglot are neutralised
    Case(PG, "SELECT 'x\\' FROM secret --'", "select", ("select",), ("secret",)),
    Case(PG, "SELECT E'\\'' FROM t", "select", ("select",), ("t",)),
    Case(PG, "SELECT $$ ; DROP TABLE t; $$ FROM s", "select", ("select",), ("s",)),
    Case(PG, "SELECT x::oid[] FROM t WHERE a = any($1::oid[])", "select", ("select",), ("t",)),
    # errors
    Case(PG, "SELECT FROM WHERE (", "unknown", ("unknown", "select"), status="error"),
    Case(PG, "SECURITY LABEL ON TABLE t IS 'x'", "unknown", ("unknown",), status="error"),
    # --- mysql
    Case(MY, "SELECT * FROM `a`.`B` WHERE x = \"s\"", "select", ("select",), ("a.B",)),
    Case(MY, "SELECT * FROM db.t1 JOIN `Db2`.`T2` USING (id)", "select", ("select",), ("db.t1", "Db2.T2")),
    Case(MY, "SELECT * FROM 1t", "select", ("select",), ("1t",)),
    Case(MY, "SELECT a INTO @v FROM t LIMIT 1", "select", ("select",), ("t",)),
    Case(MY, "SELECT 'a\\' FROM secret --'", "select", ("select",)),  # backslash escapes in MySQL
    Case(MY, "SELECT 1 --x\nFROM secret", "select", ("select",), ("secret",)),  # --x is not a comment
    Case(MY, "SELECT 1 -- x\nFROM t", "select", ("select",), ("t",)),
    Case(MY, "SELECT 1 # c\nFROM t", "select", ("select",), ("t",)),
    Case(MY, "SELECT /*+ BKA(t) */ * FROM t", "select", ("select",), ("t",)),
    Case(MY, "SELECT 1 /*!, (SELECT pw FROM secret) */", "select", ("select",), ("secret",)),
    Case(MY, "SELECT 1 --x, (SELECT pw FROM secret)", "select", ("select",), ("secret",)),
    Case(MY, "/*M!100101 DROP TABLE t */", "drop", ("drop",), (), ("t",), detail="table"),
    Case(MY, "/*!40101 SET NAMES utf8 */", "set", ("set",)),
    Case(MY, "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 1", "insert", ("insert",), (), ("t",)),
    Case(MY, "INSERT IGNORE INTO t SELECT * FROM u", "insert", ("insert", "select"), ("u",), ("t",)),
    Case(MY, "REPLACE INTO t VALUES (1)", "insert", ("insert", "delete"), status="unparsed", detail="replace"),
    Case(MY, "UPDATE t SET a = 1 WHERE id = 2 ORDER BY id LIMIT 1", "update", ("update",), (), ("t",), True),
    Case(MY, "UPDATE t SET a = 1 LIMIT 10", "update", ("update",), (), ("t",), False),
    Case(MY, "UPDATE a JOIN b ON a.id = b.id SET a.x = b.x", "update", ("update",), (), ("a", "b"), False),
    Case(MY, "DELETE FROM t", "delete", ("delete",), (), ("t",), False),
    Case(MY, "DELETE a FROM a JOIN b ON a.id = b.id WHERE b.x = 1", "delete", ("delete",), ("b",), ("a",), True),
    Case(MY, "DELETE x FROM t1 AS x JOIN t2 y ON x.id = y.id", "delete", ("delete",), ("t2",), ("t1",), False),
    Case(MY, "TRUNCATE TABLE t", "truncate", ("truncate",), (), ("t",), detail="table"),
    Case(MY, "CREATE TABLE t2 SELECT * FROM t", "create", ("create", "select"), ("t",), ("t2",), detail="table"),
    Case(MY, "CREATE TABLE t2 LIKE t", "create", ("create",), ("t",), ("t2",), detail="table"),
    Case(MY, "DROP INDEX i ON t", "drop", ("drop",), (), ("t",), detail="index"),
    Case(MY, "DROP DATABASE d", "drop", ("drop",), detail="database"),
    Case(MY, "CREATE USER 'u'@'%' IDENTIFIED BY 'p'", "create", ("create",), status="unparsed", detail="user"),
    Case(MY, "GRANT ALL ON *.* TO u", "grant", ("grant",), status="unparsed"),
    Case(MY, "USE db", "use", ("use",)),
    Case(MY, "SHOW TABLES", "show", ("show",)),
    Case(MY, "SHOW CREATE TABLE t", "show", ("show",)),
    Case(MY, "DESCRIBE t", "explain", ("explain",), ("t",)),
    Case(MY, "EXPLAIN DELETE FROM t", "explain", ("explain", "delete"), (), ("t",), False),
    Case(MY, "EXPLAIN ANALYZE SELECT * FROM t", "explain", ("explain", "select"), ("t",)),
    Case(MY, "SET autocommit = 0", "set", ("set",), detail=""),
    Case(MY, "SET NAMES utf8mb4", "set", ("set",)),
    Case(MY, "SET ROLE admin", "set", ("set",), status="unparsed", detail="role"),
    Case(MY, "SET PASSWORD = 'x'", "set", ("set",), detail="password"),
    Case(MY, "START TRANSACTION", "begin", ("begin",)),
    Case(MY, "START TRANSACTION WITH CONSISTENT SNAPSHOT", "begin", ("begin",)),
    Case(MY, "SAVEPOINT s", "savepoint", ("savepoint",)),
    Case(MY, "RELEASE SAVEPOINT s", "savepoint", ("savepoint",)),
    Case(MY, "COMMIT", "commit", ("commit",)),
    Case(MY, "LOCK TABLES t WRITE", "lock", ("lock",), status="unparsed"),
    Case(MY, "FLUSH PRIVILEGES", "other", ("other",), status="unparsed", detail="flush"),
    Case(MY, "KILL 12", "kill", ("kill",)),
    Case(MY, "PREPARE s FROM 'DELETE FROM t'", "prepare", ("prepare",), status="unparsed"),
    Case(MY, "LOAD DATA INFILE '/etc/passwd' INTO TABLE t", "unknown", ("unknown",), status="error"),
    Case(MY, "SELECT * INTO OUTFILE '/tmp/x' FROM t", "unknown", ("unknown", "select"), status="error"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.dialect}:{c.sql[:60]}" for c in CASES])
def test_statement_facts(case: Case) -> None:
    analysis = analyse(case.sql, case.dialect)
    assert len(analysis.statements) == 1, analysis
    st = analysis.statements[0]
    got = (st.operation, st.operations, st.tables_read, st.tables_written, st.has_where, st.parse_status)
    want = (case.operation, case.operations, case.read, case.written, case.has_where, case.status)
    assert got == want
    if case.detail is not None:
        assert st.detail == case.detail
    assert analysis.parse_status == case.status
    assert analysis.dialect == case.dialect
    assert analysis.fingerprint == fingerprint(case.sql, case.dialect)


def test_table_has_enough_cases() -> None:
    assert len(CASES) >= 60
    assert {c.dialect for c in CASES} == {PG, MY}


@pytest.mark.parametrize("sql", ["", "   ", ";", ";;", " ; ;\n", "-- only a comment", "/* c */ ; -- d"])
def test_empty_texts_have_no_statements(sql: str) -> None:
    analysis = analyse(sql, PG)
    assert analysis.statements == () and analysis.parse_status == "ok" and analysis.error == ""


def test_mysql_comment_only_and_hint_only_texts_are_empty() -> None:
    assert analyse("# nothing", MY).statements == ()
    assert analyse("/* nothing */;", MY).statements == ()


def test_every_statement_of_a_multi_statement_text_counts() -> None:
    analysis = analyse("SELECT 1; DROP TABLE x; ; INSERT INTO y VALUES (1)", PG)
    assert [s.operation for s in analysis.statements] == ["select", "drop", "insert"]
    assert analysis.statements[1].tables_written == ("x",)


def test_semicolon_inside_literals_and_identifiers_does_not_split() -> None:
    analysis = analyse("SELECT ';', $$;$$, \"a;b\" FROM t -- ;\n", PG)
    assert len(analysis.statements) == 1
    analysis = analyse("SELECT ';', \";\", `a;b` FROM t # ;\n", MY)
    assert len(analysis.statements) == 1


def test_statement_after_a_backslash_is_seen_in_postgres() -> None:
    # A backslash does not escape in a standard string: PostgreSQL runs the DROP.
    analysis = analyse("SELECT 'x\\'; DROP TABLE t; --'", PG)
    assert [s.operation for s in analysis.statements] == ["select", "drop"]


def test_mysql_executable_comment_is_analysed() -> None:
    analysis = analyse("SELECT 1 /*!50000 ; DROP TABLE t */", MY)
    assert [s.operation for s in analysis.statements] == ["select", "drop"]


def test_worst_status_wins_and_error_text_is_kept() -> None:
    analysis = analyse("SELECT 1; VACUUM; SELECT FROM WHERE (", PG)
    assert [s.parse_status for s in analysis.statements] == ["ok", "unparsed", "error"]
    assert analysis.parse_status == "error"
    assert analysis.error.startswith("Expected table name")
    assert "Line" not in analysis.error and "\n" not in analysis.error
    assert analyse("SELECT 1; VACUUM", PG).parse_status == "unparsed"


def test_parse_error_in_one_statement_keeps_the_others() -> None:
    analysis = analyse("DROP TABLE a; SELECT FROM WHERE (", PG)
    assert analysis.statements[0] == StatementFacts(
        operation="drop", operations=("drop",), tables_written=("a",), detail="table"
    )
    assert analysis.statements[1].operation == "unknown"


def test_unterminated_text_is_one_error_statement() -> None:
    analysis = analyse("SELECT 1; SELECT 'oops; DROP TABLE t", PG)
    assert len(analysis.statements) == 1
    assert analysis.parse_status == "error" and "unterminated" in analysis.error
    assert analysis.statements[0].operation == "unknown"


def test_unknown_dialect_is_an_error() -> None:
    with pytest.raises(ValueError):
        analyse("SELECT 1", "oracle")


def test_given_fingerprint_is_used() -> None:
    assert analyse("SELECT 1", PG, "precomputed").fingerprint == "precomputed"


def test_facts_do_not_depend_on_literal_values() -> None:
    a = analyse("SELECT * FROM t WHERE a = 'it''s -- x' AND b IN (1, 2)", PG)
    b = analyse("SELECT * FROM t WHERE a = $q$ ; DROP TABLE s $q$ AND b IN ($1)", PG)
    assert a.fingerprint == b.fingerprint
    assert a.statements == b.statements
