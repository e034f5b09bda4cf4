"""Issue 13 on the MySQL / MariaDB side, end to end: inline approvals with real clients.

A gateway process (`tests.support.approvals.approval_gateway`: its admin listener, the SQLite
approval store in the test's directory, the bot `change-bot`) with a MySQL listener in front of
the system MariaDB, a target in environment "production" whose default is allow, and the
`mass-write` guardrail (`max_rows = 10`) with `action = "review"`. Each test has its own table
of 300 rows in this module's own database (`sqlward_apm_<hex>`, reached through an upstream
user of its own; both are dropped at the end), so `DELETE FROM t WHERE id > 100` is a write of
about 200 rows that needs approval, and the rows are counted in MariaDB directly.

Clients: PyMySQL (a held call runs in a thread and blocks until the verdict), the `mariadb`
command-line client (a subprocess), mysql-connector-python's prepared cursor (COM_STMT_EXECUTE,
pure-Python protocol). Approvers: the bot through the CLI (`sqlward approvals approve|reject`)
or the API, a second bot, and people with OIDC tokens from a test issuer (whose keys the gateway
reads from a file). What is asserted: what the client receives, the rows in MariaDB, the
request's status in the API and the gateway's audit events (approval.requested / decided /
executed / withdrawn, statement.decided and statement.completed naming the request).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import mysql.connector
import pymysql
import pytest

from tests.integration.mysql.conftest import REFUSAL_ERRNOS, my_target, mysql_listener, upstream_dsn
from tests.support.approvals import BOT_TOKEN, api, approval_gateway, approve_cli, cli, events, requests, wait_pending
from tests.support import mywire
from tests.support.gateway import GatewayProcess
from tests.support.mariadb import root_sql, system_root
from tests.support.oidc import TestIssuer

SUFFIX = uuid.uuid4().hex[:8]
DB = f"sqlward_apm_{SUFFIX}"
DB_B = f"sqlward_apm_{SUFFIX}_b"
UP_USER = f"sqlward_apm_up_{SUFFIX}"
UP_PASSWORD = f"apm-up-pw-{SUFFIX}"
ROWS = 300

IDENTITIES: list[dict[str, Any]] = [
    {"name": "alice", "groups": ["dba"], "secret": "alice-secret"},
    {"name": "bob", "groups": ["dba"], "secret": "bob-secret"},
]
SECRETS = {"alice": "alice-secret", "bob": "bob-secret"}
SEC_BOT_TOKEN = "sec-bot-api-token-8d2e6f0a4c1b9e37"
SEC_BOT = {"name": "sec-bot", "bot": True, "groups": ["security"], "api_token": SEC_BOT_TOKEN}
APPROVAL: dict[str, Any] = {"approvers": ["group:dba", "bot:change-bot"], "hold_timeout": 20.0}
AP_ID = re.compile(r"ap-[a-z0-9]{12}")


# -- the database ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apm_database() -> Iterator[str]:
    def drop() -> None:
        root_sql(f"DROP DATABASE IF EXISTS {DB}", f"DROP DATABASE IF EXISTS {DB_B}", f"DROP USER IF EXISTS '{UP_USER}'@'%'")

    drop()
    root_sql(
        f"CREATE DATABASE {DB} CHARACTER SET utf8mb4",
        f"CREATE DATABASE {DB_B} CHARACTER SET utf8mb4",
        f"CREATE USER '{UP_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{UP_PASSWORD}')",
        f"GRANT ALL ON {DB}.* TO '{UP_USER}'@'%'",
        f"GRANT ALL ON {DB_B}.* TO '{UP_USER}'@'%'",
    )
    try:
        yield DB
    finally:
        drop()


def fill(database: str, table: str, first: int = 1, last: int = ROWS) -> None:
    root_sql(f"INSERT INTO {table} SELECT seq, CONCAT('row ', seq) FROM seq_{first}_to_{last}",
             f"ANALYZE TABLE {table}", database=database)


@pytest.fixture
def table(apm_database: str) -> Iterator[str]:
    """A fresh table of 300 rows (ids 1..300) in the module's database, and one of the same name
    (and rows) in its second database."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    for db in (DB, DB_B):
        root_sql(f"CREATE TABLE {name} (id INT PRIMARY KEY, v VARCHAR(50))", database=db)
        fill(db, name)
    yield name
    for db in (DB, DB_B):
        root_sql(f"DROP TABLE IF EXISTS {name}", database=db)


def count(table: str, database: str = DB) -> int:
    return int(root_sql(f"SELECT count(*) FROM {table}", database=database)[0][0])


# -- the gateway ------------------------------------------------------------------------------------


def make_gateway(
    tmp_path: Path, *, approval: dict[str, Any] | None = None, identities: list[dict[str, Any]] | None = None,
    listener: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> GatewayProcess:
    return approval_gateway(
        tmp_path / "gw",
        targets=[my_target("prod", "production", dsn=upstream_dsn(DB, user=UP_USER), password=UP_PASSWORD)],
        identities=identities if identities is not None else IDENTITIES,
        environments={"production": {"default_action": "allow"}},
        guardrails={"mass-write": {
            "environments": ["production"], "max_rows": 10, "action": "review",
            "approval": approval if approval is not None else APPROVAL,
        }},
        listener=mysql_listener(**(listener or {})),
        extra=extra, name="it-mysql-approvals", poll_seconds=0.2,
    )


def connect(gw: GatewayProcess, user: str = "alice", password: str | None = None, **kw: Any) -> pymysql.Connection:
    args: dict[str, Any] = dict(host=gw.host, port=gw.port, user=user,
                                password=SECRETS[user] if password is None else password, database="prod",
                                autocommit=True, connect_timeout=10, charset="utf8mb4", ssl_disabled=True)
    args.update(kw)
    return pymysql.connect(**args)


def execute(conn: pymysql.Connection, sql: str, args: Any = None) -> int:
    with conn.cursor() as cur:
        return cur.execute(sql, args)


def fetch(conn: pymysql.Connection, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="held-client")


def in_thread(fn: Callable[[], Any]) -> Future[Any]:
    return POOL.submit(fn)


def refused(fn: Callable[[], Any]) -> pymysql.MySQLError:
    """The MySQL error a call raised (it must raise one)."""
    with pytest.raises(pymysql.MySQLError) as ei:
        fn()
    return ei.value


def approval_ids(message: str) -> list[str]:
    """The distinct request ids a message names (it names one twice: in words and in its link)."""
    return list(dict.fromkeys(AP_ID.findall(message)))


def show(gw: GatewayProcess, approval_id: str) -> dict[str, Any]:
    r = api(gw, "GET", f"/api/v1/approvals/{approval_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_status(gw: GatewayProcess, approval_id: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = show(gw, approval_id)
        if found["status"] == status or time.monotonic() > deadline:
            assert found["status"] == status, f"{approval_id} is {found['status']} after {timeout} s, expected {status}"
            return found
        time.sleep(0.1)


def wait_events(gw: GatewayProcess, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> list[dict[str, Any]]:
    return gw.wait_audit(predicate, timeout=timeout)


def of(evs: list[dict[str, Any]], name: str, approval_id: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["event"] == name and e.get("approval_id") == approval_id]


def assert_ran_once(gw: GatewayProcess, approval_id: str, sql: str) -> None:
    """The audit trail of an approved, held statement: requested, decided, executed, then one
    statement.decided (allow) and one statement.completed, both naming the request."""
    evs = wait_events(gw, lambda es: bool(of(es, "statement.completed", approval_id)))
    [requested] = of(evs, "approval.requested", approval_id)
    assert requested["mode"] in ("hold", "retry") and "mass-write" in requested["rules"]
    decided = of(evs, "approval.decided", approval_id)
    assert decided and decided[-1]["status"] == "approved", decided
    [executed] = of(evs, "approval.executed", approval_id)
    allowed = [e for e in of(evs, "statement.decided", approval_id) if e["action"] == "allow"]
    assert len(allowed) == 1 and allowed[0]["sql"] == sql, allowed
    assert executed["request_id"] == allowed[0]["request_id"]
    [completed] = of(evs, "statement.completed", approval_id)
    assert completed["request_id"] == allowed[0]["request_id"]
    assert completed.get("error") is None, completed
    assert not of(evs, "approval.withdrawn", approval_id)


def is_gateway_refusal(err: BaseException) -> bool:
    return getattr(err, "args", (None,))[0] in REFUSAL_ERRNOS or getattr(err, "errno", None) in REFUSAL_ERRNOS


# -- 1. hold, approve, run once -------------------------------------------------------------------------


def test_pymysql_delete_is_held_until_the_bot_approves_through_the_cli_then_runs_once(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as conn:
        held = in_thread(lambda: execute(conn, sql))
        [request] = wait_pending(gw)
        time.sleep(0.5)
        assert not held.done(), "the DELETE returned before anyone approved it"
        assert count(table) == ROWS, "the held DELETE reached MariaDB before approval"
        assert request["sql"] == sql and request["requester"]["subject"] == "alice"
        assert request["target"] == "prod" and request["environment"] == "production" and request["protocol"] == "mysql"
        assert request["rules"] == ["mass-write"] and request["estimated_rows"] > 10
        assert request["names"] and DB in request["names"]  # bound to the current database

        done = approve_cli(gw, request["id"])
        assert done.returncode == 0, done.stderr
        assert held.result(timeout=10) == ROWS - 100  # PyMySQL's affected rows
        assert count(table) == 100
        assert fetch(conn, "SELECT count(*) FROM " + table) == [(100,)]  # the session goes on
        assert show(gw, request["id"])["status"] == "executed"
        assert_ran_once(gw, request["id"], sql)
        [decided] = of(events(gw), "approval.decided", request["id"])
        assert decided["approver"]["subject"] == "change-bot" and decided["verdict"] == "approve"


def test_mariadb_cli_delete_is_held_until_approved_then_reports_its_rows(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw:
        client = subprocess.Popen(
            ["mariadb", "--no-defaults", "-h", gw.host, "-P", str(gw.port), "-u", "alice", "--skip-ssl",
             "--batch", "--skip-column-names", "prod", "-e", f"{sql}; SELECT ROW_COUNT()"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "MYSQL_PWD": SECRETS["alice"], "LC_ALL": "C.UTF-8"},
        )
        try:
            [request] = wait_pending(gw)
            time.sleep(0.3)
            assert client.poll() is None, "the mariadb client finished before the approval"
            assert count(table) == ROWS
            assert approve_cli(gw, request["id"]).returncode == 0
            out, err = client.communicate(timeout=15)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert client.returncode == 0, err
        assert out.split() == [str(ROWS - 100)]
        assert count(table) == 100
        assert_ran_once(gw, request["id"], sql)


def test_the_issue_says_a_mysql_client_gets_the_request_id_as_a_warning_after_the_result(tmp_path, table):
    """Issue 13: "MySQL clients get the id in the error on rejection or timeout and as a warning
    after the result"."""
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as conn:
        held = in_thread(lambda: execute(conn, sql))
        [request] = wait_pending(gw)
        assert approve_cli(gw, request["id"]).returncode == 0
        assert held.result(timeout=10) == ROWS - 100
        warnings = fetch(conn, "SHOW WARNINGS")
        assert any(request["id"] in str(w[2]) for w in warnings), warnings


# -- statements that need no approval ---------------------------------------------------------------


def test_statements_needing_no_approval_are_not_delayed_even_beside_a_held_one(tmp_path, table):
    with make_gateway(tmp_path) as gw, connect(gw) as conn, connect(gw) as other:
        started = time.monotonic()
        for _ in range(20):
            assert fetch(conn, f"SELECT count(*) FROM {table} WHERE id <= 100") == [(100,)]
        assert execute(conn, f"DELETE FROM {table} WHERE id = 1") == 1  # one row: under max_rows
        assert time.monotonic() - started < 2.0
        assert not events(gw, "approval.requested", "approval.decided", "approval.executed", "approval.withdrawn")
        assert all(e.get("approval_id") is None for e in events(gw, "statement.decided", "statement.completed"))

        # Another session's held DELETE blocks nobody else.
        held = in_thread(lambda: execute(conn, f"DELETE FROM {table} WHERE id > 100"))
        [request] = wait_pending(gw)
        started = time.monotonic()
        assert fetch(other, f"SELECT count(*) FROM {table}") == [(ROWS - 1,)]
        assert execute(other, f"UPDATE {table} SET v = 'changed' WHERE id = 200") == 1  # no lock held
        assert time.monotonic() - started < 2.0
        assert not held.done()
        assert approve_cli(gw, request["id"]).returncode == 0
        assert held.result(timeout=10) == ROWS - 100
        assert count(table) == 99


# -- 3. rejection, 4. hold timeout ---------------------------------------------------------------------


def test_rejection_through_the_cli_is_an_error_naming_the_request_and_comment_and_the_session_goes_on(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as conn:
        held = in_thread(lambda: refused(lambda: execute(conn, sql)))
        [request] = wait_pending(gw)
        res = cli(gw, "reject", request["id"], "--comment", "not during the freeze")
        assert res.returncode == 0, res.stderr
        err = held.result(timeout=10)
        assert is_gateway_refusal(err), err
        message = str(err.args[1])
        assert request["id"] in message and "not during the freeze" in message and "rejected" in message
        assert fetch(conn, "SELECT 'still here'") == [("still here",)]
        assert count(table) == ROWS
        assert show(gw, request["id"])["status"] == "rejected"
        evs = events(gw)
        [decided] = of(evs, "approval.decided", request["id"])
        assert decided["verdict"] == "reject" and decided["comment"] == "not during the freeze"
        assert decided["status"] == "rejected"
        denied = of(evs, "statement.decided", request["id"])
        assert [e["action"] for e in denied] == ["deny"]
        assert not of(evs, "approval.executed", request["id"]) and not of(evs, "statement.completed", request["id"])


def test_hold_timeout_is_an_error_naming_the_request_which_is_withdrawn(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path, approval={**APPROVAL, "hold_timeout": 2.0}) as gw, connect(gw) as conn:
        started = time.monotonic()
        err = refused(lambda: execute(conn, sql))
        waited = time.monotonic() - started
        assert 1.5 < waited < 6, waited
        assert is_gateway_refusal(err), err
        [aid] = approval_ids(str(err.args[1]))
        assert "no decision within 2 s" in str(err.args[1])
        assert show(gw, aid)["status"] == "withdrawn"
        assert fetch(conn, "SELECT 1 + 1") == [(2,)]
        assert count(table) == ROWS
        evs = events(gw)
        assert len(of(evs, "approval.withdrawn", aid)) == 1
        # An approval that comes too late is refused.
        late = approve_cli(gw, aid)
        assert late.returncode == 1 and "withdrawn" in late.stderr
        assert count(table) == ROWS


# -- 5. KILL QUERY, 6. disconnect -------------------------------------------------------------------------


def test_kill_query_from_a_second_session_withdraws_the_held_request(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as conn, connect(gw) as killer:
        held = in_thread(lambda: refused(lambda: execute(conn, sql)))
        [request] = wait_pending(gw)
        execute(killer, f"KILL QUERY {conn.thread_id()}")
        err = held.result(timeout=10)
        assert is_gateway_refusal(err), err
        assert request["id"] in str(err.args[1]) and "withdrawn" in str(err.args[1])
        assert wait_status(gw, request["id"], "withdrawn")["status"] == "withdrawn"
        assert fetch(conn, "SELECT 'after kill'") == [("after kill",)]  # KILL QUERY keeps the session
        assert count(table) == ROWS
        evs = events(gw)
        [withdrawn] = of(evs, "approval.withdrawn", request["id"])
        assert "cancel" in withdrawn["reason"]
        # Approving it now changes nothing.
        assert approve_cli(gw, request["id"]).returncode == 1
        time.sleep(0.5)
        assert count(table) == ROWS


def test_kill_query_by_another_identity_does_not_withdraw_the_request(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as conn, connect(gw, "bob") as bob:
        held = in_thread(lambda: execute(conn, sql))
        [request] = wait_pending(gw)
        err = refused(lambda: execute(bob, f"KILL QUERY {conn.thread_id()}"))
        assert err.args[0] == 1095, err  # ER_KILL_DENIED_ERROR
        assert show(gw, request["id"])["status"] == "pending" and not held.done()
        assert approve_cli(gw, request["id"]).returncode == 0
        assert held.result(timeout=10) == ROWS - 100


def test_closing_a_held_pymysql_connection_withdraws_its_request(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw:
        conn = connect(gw)
        held = in_thread(lambda: refused(lambda: execute(conn, sql)))
        [request] = wait_pending(gw)
        sock = conn._sock
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # the client goes away (FIN) while its DELETE is held
        held.result(timeout=10)
        conn.close()
        found = wait_status(gw, request["id"], "withdrawn", timeout=5)
        assert found["status"] == "withdrawn"
        assert count(table) == ROWS
        [withdrawn] = of(events(gw), "approval.withdrawn", request["id"])
        assert "disconnect" in withdrawn["reason"] or "closed" in withdrawn["reason"]
        assert approve_cli(gw, request["id"]).returncode == 1
        with connect(gw) as again:  # the gateway serves on
            assert fetch(again, f"SELECT count(*) FROM {table}") == [(ROWS,)]


def test_killing_a_held_mariadb_client_withdraws_its_request(tmp_path, table):
    with make_gateway(tmp_path) as gw:
        client = subprocess.Popen(
            ["mariadb", "--no-defaults", "-h", gw.host, "-P", str(gw.port), "-u", "alice", "--skip-ssl", "prod",
             "-e", f"DELETE FROM {table} WHERE id > 100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "MYSQL_PWD": SECRETS["alice"]},
        )
        try:
            [request] = wait_pending(gw)
            client.send_signal(signal.SIGKILL)
            client.wait(10)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        started = time.monotonic()
        wait_status(gw, request["id"], "withdrawn", timeout=5)
        assert time.monotonic() - started < 5
        assert count(table) == ROWS
        assert not of(events(gw), "approval.executed", request["id"])
        with connect(gw) as again:
            assert fetch(again, "SELECT 'serving'") == [("serving",)]


# -- 7. retry mode -------------------------------------------------------------------------------------------


def test_retry_mode_refuses_at_once_then_runs_the_same_statement_once_after_approval(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    retry = {"approvers": ["group:dba", "bot:change-bot"], "mode": "retry", "expires": 120.0, "hold_timeout": 20.0}
    with make_gateway(tmp_path, approval=retry) as gw, connect(gw) as alice, connect(gw, "bob") as bob:
        started = time.monotonic()
        err = refused(lambda: execute(alice, sql))
        assert time.monotonic() - started < 2, "retry mode must refuse at once"
        assert is_gateway_refusal(err), err
        [first] = approval_ids(str(err.args[1]))
        assert show(gw, first)["status"] == "pending" and show(gw, first)["mode"] == "retry"
        # Sent again while pending: the same request is named, no new one.
        again = refused(lambda: execute(alice, sql))
        assert approval_ids(str(again.args[1])) == [first] and "pending" in str(again.args[1])
        assert [r["id"] for r in requests(gw)] == [first]

        assert approve_cli(gw, first).returncode == 0
        assert show(gw, first)["status"] == "approved"

        # Neither another identity, nor a changed literal, nor another current database matches.
        other = refused(lambda: execute(bob, sql))
        [bobs] = approval_ids(str(other.args[1]))
        literal = refused(lambda: execute(alice, f"DELETE FROM {table} WHERE id > 101"))
        [changed] = approval_ids(str(literal.args[1]))
        execute(alice, f"USE {DB_B}")
        elsewhere = refused(lambda: execute(alice, sql))
        [moved] = approval_ids(str(elsewhere.args[1]))
        assert len({first, bobs, changed, moved}) == 4
        assert count(table) == ROWS and count(table, DB_B) == ROWS
        assert show(gw, first)["status"] == "approved"

        # The approved statement, as approved: runs once.
        execute(alice, f"USE {DB}")
        assert execute(alice, sql) == ROWS - 100
        assert count(table) == 100 and count(table, DB_B) == ROWS
        assert show(gw, first)["status"] == "executed"
        assert_ran_once(gw, first, sql)

        # A second run needs a new approval (the rows are back so that it is a mass write again).
        fill(DB, table, 101, ROWS)
        second = refused(lambda: execute(alice, sql))
        [new] = approval_ids(str(second.args[1]))
        assert new not in {first, bobs, changed, moved}
        assert count(table) == ROWS
        assert len(of(events(gw), "statement.completed", first)) == 1


# -- 8. prepared statements ---------------------------------------------------------------------------------


def test_prepared_execute_is_held_with_its_parameters_and_each_execution_needs_its_own_approval(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > %s"
    with make_gateway(tmp_path) as gw:
        conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                       database="prod", use_pure=True, ssl_disabled=True, autocommit=True)
        try:
            cur = conn.cursor(prepared=True)

            def run(value: int) -> int:
                cur.execute(sql, (value,))
                return cur.rowcount

            held = in_thread(lambda: run(100))
            [request] = wait_pending(gw)
            time.sleep(0.3)
            assert not held.done() and count(table) == ROWS
            assert request["sql"] == sql.replace("%s", "?")
            [shown] = request["parameters"]
            # The parameter as the server reads it (TINY unsigned 0x64), decoded for the approver.
            assert shown == "100", shown
            assert approve_cli(gw, request["id"]).returncode == 0
            assert held.result(timeout=10) == ROWS - 100
            assert count(table) == 100
            assert show(gw, request["id"])["status"] == "executed"
            evs = wait_events(gw, lambda es: bool(of(es, "statement.completed", request["id"])))
            assert len(of(evs, "statement.completed", request["id"])) == 1
            assert len(of(evs, "approval.executed", request["id"])) == 1

            # The same prepared statement with another parameter: a request of its own.
            fill(DB, table, 101, ROWS)
            held = in_thread(lambda: run(50))
            [second] = wait_pending(gw, known={request["id"]})
            assert second["id"] != request["id"] and second["binding"] != request["binding"]
            [shown2] = second["parameters"]
            assert shown2 == "50", shown2
            time.sleep(0.3)
            assert not held.done() and count(table) == ROWS
            assert approve_cli(gw, second["id"]).returncode == 0
            assert held.result(timeout=10) == ROWS - 50
            assert count(table) == 50
        finally:
            conn.close()


# -- 9. two approvals from two groups --------------------------------------------------------------------------


def test_two_approvals_from_two_groups_the_statement_waits_for_the_second(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    two = {"approvers": ["bot:change-bot", "bot:sec-bot"], "approvals": 2, "all_groups": ["bots", "security"],
           "hold_timeout": 20.0}
    with make_gateway(tmp_path, approval=two, identities=[*IDENTITIES, SEC_BOT]) as gw, connect(gw) as conn:
        held = in_thread(lambda: execute(conn, sql))
        [request] = wait_pending(gw)
        assert approve_cli(gw, request["id"]).returncode == 0
        assert show(gw, request["id"])["status"] == "pending"
        time.sleep(1.0)  # five polls of the store
        assert not held.done() and count(table) == ROWS
        # The same bot approving twice does not count twice.
        assert approve_cli(gw, request["id"]).returncode == 1
        assert not held.done()
        r = api(gw, "POST", f"/api/v1/approvals/{request['id']}/approve", token=SEC_BOT_TOKEN, json={"comment": "ok from security"})
        assert r.status_code == 200, r.text
        assert held.result(timeout=10) == ROWS - 100
        assert count(table) == 100
        decided = of(events(gw), "approval.decided", request["id"])
        assert [(d["approver"]["subject"], d["status"]) for d in decided] == [("change-bot", "pending"), ("sec-bot", "approved")]
        assert_ran_once(gw, request["id"], sql)


# -- 2. self-approval --------------------------------------------------------------------------------------------


@pytest.fixture
def issuer(tmp_path: Path) -> TestIssuer:
    return TestIssuer(tmp_path / "idp")  # keys read from its JWKS file: no server needed


def test_a_person_cannot_approve_their_own_request_another_person_can(tmp_path, table, issuer):
    sql = f"DELETE FROM {table} WHERE id > 100"
    me = f"carol-{SUFFIX}@example.com"
    token = issuer.mint(sub=me, groups=["dba"], ttl=600)
    with make_gateway(tmp_path, listener={"allow_plaintext_tokens": True},
                      extra={"oidc": [issuer.oidc_table(source="file")]}) as gw:
        with connect(gw, me, password=token) as conn:
            held = in_thread(lambda: execute(conn, sql))
            [request] = wait_pending(gw)
            assert request["requester"]["subject"] == me and request["requester"]["verified_by"] == "oidc"
            r = api(gw, "POST", f"/api/v1/approvals/{request['id']}/approve", token=token, json={"comment": "mine"})
            assert r.status_code == 403 and "own request" in r.json()["error"], r.text
            res = approve_cli(gw, request["id"], token=token)
            assert res.returncode == 1 and "own request" in res.stderr
            assert show(gw, request["id"])["status"] == "pending" and not held.done()
            assert not of(events(gw), "approval.decided", request["id"])

            other = issuer.mint(sub=f"dave-{SUFFIX}@example.com", groups=["dba"], ttl=600)
            r = api(gw, "POST", f"/api/v1/approvals/{request['id']}/approve", token=other, json={"comment": "checked"})
            assert r.status_code == 200, r.text
            assert held.result(timeout=10) == ROWS - 100
        assert count(table) == 100
        [decided] = of(events(gw), "approval.decided", request["id"])
        assert decided["approver"]["subject"] == f"dave-{SUFFIX}@example.com"
        assert_ran_once(gw, request["id"], sql)


def test_a_bot_that_logged_in_cannot_approve_its_own_statement(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    bot = {**SEC_BOT, "groups": ["dba", "security"], "secret": "sec-bot-db-secret"}
    approval = {"approvers": ["group:dba", "bot:sec-bot", "bot:change-bot"], "hold_timeout": 20.0}
    with make_gateway(tmp_path, approval=approval, identities=[*IDENTITIES, bot]) as gw:
        with connect(gw, "sec-bot", password="sec-bot-db-secret") as conn:
            held = in_thread(lambda: execute(conn, sql))
            [request] = wait_pending(gw)
            assert request["requester"]["subject"] == "sec-bot"
            r = api(gw, "POST", f"/api/v1/approvals/{request['id']}/approve", token=SEC_BOT_TOKEN)
            assert r.status_code == 403 and "own request" in r.json()["error"], r.text
            assert show(gw, request["id"])["status"] == "pending" and not held.done()
            assert approve_cli(gw, request["id"], token=BOT_TOKEN).returncode == 0
            assert held.result(timeout=10) == ROWS - 100
        assert count(table) == 100


# -- what the session does around a held statement ------------------------------------------------------------


def test_a_command_sent_behind_a_held_statement_waits_and_runs_after_it(tmp_path, table):
    """A client that sends its next command before the held one's answer (pipelining): the
    gateway runs nothing of it before the held statement is decided, then answers both in order."""
    with make_gateway(tmp_path) as gw, mywire.login(gw.host, gw.port, "alice", SECRETS["alice"], "prod") as raw:
        delete = bytes([mywire.COM_QUERY]) + f"DELETE FROM {table} WHERE id > 100".encode()
        after = bytes([mywire.COM_QUERY]) + f"SELECT count(*) FROM {table}".encode()
        raw.send_raw(mywire.header(len(delete), 0) + delete + mywire.header(len(after), 0) + after)
        [request] = wait_pending(gw)
        time.sleep(0.5)
        assert not [e for e in events(gw, "statement.decided") if e["sql"].startswith("SELECT count(*)")]
        assert approve_cli(gw, request["id"]).returncode == 0
        raw.seq = 1
        [ok] = raw.read_results()
        assert isinstance(ok, mywire.OK) and ok.affected_rows == ROWS - 100
        raw.seq = 1
        [rs] = raw.read_results(decode=True)
        assert isinstance(rs, mywire.ResultSet) and rs.rows == [(100,)]
        evs = events(gw)
        executed = next(i for i, e in enumerate(evs) if e["event"] == "approval.executed")
        select = next(i for i, e in enumerate(evs) if e["event"] == "statement.decided" and e["sql"].startswith("SELECT count(*)"))
        assert executed < select


def test_kill_connection_of_a_held_session_ends_it_and_withdraws_the_request(tmp_path, table):
    """KILL CONNECTION ends the session it names, as MariaDB does (the killed client loses its
    connection: the errors `test_commands._assert_interrupted` accepts for a killed connection);
    a statement held in it was never run, so its request is withdrawn."""
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as killer:
        conn = connect(gw)
        try:
            held = in_thread(lambda: refused(lambda: execute(conn, sql)))
            [request] = wait_pending(gw)
            execute(killer, f"KILL CONNECTION {conn.thread_id()}")
            err = held.result(timeout=10)
            wait_status(gw, request["id"], "withdrawn", timeout=5)
            assert approve_cli(gw, request["id"]).returncode == 1
            assert count(table) == ROWS
            assert fetch(killer, "SELECT 'killer goes on'") == [("killer goes on",)]
            assert err.args[0] in (2013, 2006, 1927, 1158, 1159), f"the killed session was answered {err!r}"
            next_err = refused(lambda: fetch(conn, "SELECT 'still connected?'"))
            assert next_err.args[0] in (2013, 2006, 0), f"the killed session still took a statement: {next_err!r}"
            assert not [e for e in events(gw, "statement.decided") if "still connected?" in e["sql"]]
        finally:
            conn.close()


def test_a_held_multi_statement_request_runs_once_as_a_whole_after_approval(tmp_path, table):
    sql = f"UPDATE {table} SET v = 'seen' WHERE id = 1; DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS) as conn:
        def run() -> list[int]:
            with conn.cursor() as cur:
                counts = [cur.execute(sql)]
                while cur.nextset():
                    counts.append(cur.rowcount)
                return counts

        held = in_thread(run)
        [request] = wait_pending(gw)
        time.sleep(0.3)
        assert not held.done()
        assert root_sql(f"SELECT v FROM {table} WHERE id = 1", database=DB) == [("row 1",)]
        assert approve_cli(gw, request["id"]).returncode == 0
        assert held.result(timeout=10) == [1, ROWS - 100]
        assert count(table) == 100
        assert root_sql(f"SELECT v FROM {table} WHERE id = 1", database=DB) == [("seen",)]
        assert_ran_once(gw, request["id"], sql)


def test_a_rejected_prepared_execution_leaves_the_statement_usable(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > %s"
    with make_gateway(tmp_path) as gw:
        conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                       database="prod", use_pure=True, ssl_disabled=True, autocommit=True)
        try:
            cur = conn.cursor(prepared=True)

            def run(value: int) -> Any:
                try:
                    cur.execute(sql, (value,))
                    return cur.rowcount
                except mysql.connector.Error as exc:
                    return exc

            held = in_thread(lambda: run(100))
            [request] = wait_pending(gw)
            assert cli(gw, "reject", request["id"], "--comment", "wrong bound").returncode == 0
            err = held.result(timeout=10)
            assert isinstance(err, mysql.connector.Error) and err.errno in REFUSAL_ERRNOS, err
            assert request["id"] in err.msg and "wrong bound" in err.msg
            assert count(table) == ROWS
            held = in_thread(lambda: run(200))
            [second] = wait_pending(gw, known={request["id"]})
            assert approve_cli(gw, second["id"]).returncode == 0
            assert held.result(timeout=10) == ROWS - 200
            assert count(table) == 200
        finally:
            conn.close()


def test_two_identical_held_statements_are_two_requests_and_one_approval_releases_only_its_own(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as one, connect(gw) as two:
        first = in_thread(lambda: execute(one, sql))
        [r1] = wait_pending(gw)
        second = in_thread(lambda: refused(lambda: execute(two, sql)))
        [r2] = wait_pending(gw, known={r1["id"]})
        assert r1["id"] != r2["id"] and r1["binding"] == r2["binding"]
        assert approve_cli(gw, r1["id"]).returncode == 0
        assert first.result(timeout=10) == ROWS - 100
        time.sleep(0.5)
        assert not second.done() and show(gw, r2["id"])["status"] == "pending"
        assert cli(gw, "reject", r2["id"], "--comment", "already done").returncode == 0
        err = second.result(timeout=10)
        assert r2["id"] in str(err.args[1])
        assert count(table) == 100
        evs = events(gw)
        assert len(of(evs, "statement.completed", r1["id"])) == 1 and not of(evs, "statement.completed", r2["id"])
        assert not of(evs, "approval.executed", r2["id"])


def test_a_gateway_stopping_while_a_statement_is_held_withdraws_the_request(tmp_path, table):
    from sqlward.gateway.approvals.store import SqliteStore
    import trio

    sql = f"DELETE FROM {table} WHERE id > 100"
    gw = make_gateway(tmp_path)
    gw.config["gateway"]["drain_seconds"] = 1  # the held statement may finish within the drain; it does not
    gw.config_text = gw._render(gw.config)
    with gw:
        conn = connect(gw)
        held = in_thread(lambda: refused(lambda: execute(conn, sql)))
        [request] = wait_pending(gw)
    # (leaving the block stopped the gateway: SIGTERM, the drain's second, exit 0, no traceback)
    err = held.result(timeout=10)
    assert isinstance(err, pymysql.MySQLError)
    assert err.args[0] in (1053, 2013), err  # ER_SERVER_SHUTDOWN, or the connection already gone
    conn.close()

    async def stored() -> Any:
        store = SqliteStore(str(tmp_path / "gw" / "approvals.sqlite3"))
        try:
            return await store.get(request["id"])
        finally:
            await store.aclose()

    found = trio.run(stored)
    assert found is not None and found.status == "withdrawn", found
    assert count(table) == ROWS
    assert len(of(gw.audit_events(), "approval.withdrawn", request["id"])) == 1


def test_retry_mode_for_a_prepared_statement_binds_the_parameters(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > %s"
    retry = {"approvers": ["bot:change-bot"], "mode": "retry", "expires": 120.0, "hold_timeout": 20.0}
    with make_gateway(tmp_path, approval=retry) as gw:
        conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                       database="prod", use_pure=True, ssl_disabled=True, autocommit=True)
        try:
            cur = conn.cursor(prepared=True)
            with pytest.raises(mysql.connector.Error) as ei:
                cur.execute(sql, (100,))
            [aid] = approval_ids(ei.value.msg)
            assert approve_cli(gw, aid).returncode == 0
            with pytest.raises(mysql.connector.Error) as ei:  # another parameter: not approved
                cur.execute(sql, (99,))
            [other] = approval_ids(ei.value.msg)
            assert other != aid and count(table) == ROWS
            cur.execute(sql, (100,))
            assert cur.rowcount == ROWS - 100 and count(table) == 100
            assert show(gw, aid)["status"] == "executed"
            assert_ran_once(gw, aid, sql.replace("%s", "?"))
        finally:
            conn.close()


def test_a_held_statement_is_not_released_after_the_sessions_token_expired(tmp_path, table, issuer):
    """A session cannot outlive its token (issue 4: statements after expiry are refused with
    rule token-expired). A statement held for approval must not become the way around it: an
    approval that arrives after the token expired does not run it."""
    sql = f"DELETE FROM {table} WHERE id > 100"
    me = f"erin-{SUFFIX}@example.com"
    token = issuer.mint(sub=me, groups=["dba"], exp=int(time.time()) + 4)
    with make_gateway(tmp_path, listener={"allow_plaintext_tokens": True},
                      extra={"oidc": [issuer.oidc_table(source="file", leeway_seconds=0)]}) as gw:
        with connect(gw, me, password=token) as conn:
            held = in_thread(lambda: refused(lambda: execute(conn, sql)))
            [request] = wait_pending(gw)
            time.sleep(max(0.0, request["created"] + 5.5 - time.time()))  # past exp
            approve_cli(gw, request["id"])
            err = held.result(timeout=10)
            assert is_gateway_refusal(err), err
        assert count(table) == ROWS, "the held DELETE ran after the session's token had expired"
        assert show(gw, request["id"])["status"] != "executed"


def test_over_tls_a_held_statement_is_released_by_approval_and_withdrawn_by_disconnect(tmp_path, table):
    from tests.support.gateway import make_gateway_certs, tls_listener

    pki = make_gateway_certs(tmp_path / "pki")
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path, listener={"tls": tls_listener(pki, require=True)}) as gw:
        tls = {"ssl_disabled": False, "ssl": {"ca": str(pki.ca_file)}}
        gone = connect(gw, **tls)
        held = in_thread(lambda: refused(lambda: execute(gone, sql)))
        [first] = wait_pending(gw)
        assert gone._sock is not None
        gone._sock.shutdown(socket.SHUT_RDWR)
        held.result(timeout=10)
        gone.close()
        wait_status(gw, first["id"], "withdrawn", timeout=5)
        assert count(table) == ROWS
        with connect(gw, **tls) as conn:
            held = in_thread(lambda: execute(conn, sql))
            [second] = wait_pending(gw, known={first["id"]})
            assert approve_cli(gw, second["id"]).returncode == 0
            assert held.result(timeout=10) == ROWS - 100
        assert count(table) == 100
        assert_ran_once(gw, second["id"], sql)


def test_an_approved_statement_runs_inside_the_sessions_open_transaction(tmp_path, table):
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw, autocommit=False) as conn:
        execute(conn, "BEGIN")
        assert execute(conn, f"UPDATE {table} SET v = 'in tx' WHERE id = 1") == 1
        held = in_thread(lambda: execute(conn, sql))
        [request] = wait_pending(gw)
        assert approve_cli(gw, request["id"]).returncode == 0
        assert held.result(timeout=10) == ROWS - 100
        assert fetch(conn, f"SELECT count(*) FROM {table}") == [(100,)]  # seen inside the transaction
        assert count(table) == ROWS  # not committed
        execute(conn, "ROLLBACK")
        assert count(table) == ROWS
        assert root_sql(f"SELECT v FROM {table} WHERE id = 1", database=DB) == [("row 1",)]
        assert_ran_once(gw, request["id"], sql)


def test_the_approval_note_is_cleared_by_the_next_command(tmp_path, table):
    """COM_INIT_DB (like any command but COM_PING) clears the warnings, the gateway's Note too."""
    sql = f"DELETE FROM {table} WHERE id > 100"
    with make_gateway(tmp_path) as gw, connect(gw) as conn:
        held = in_thread(lambda: execute(conn, sql))
        [request] = wait_pending(gw)
        assert approve_cli(gw, request["id"]).returncode == 0
        assert held.result(timeout=10) == ROWS - 100
        conn.ping(reconnect=False)  # COM_PING keeps them, as the server does
        assert any(request["id"] in str(w[2]) for w in fetch(conn, "SHOW WARNINGS"))
        conn.select_db(DB)  # COM_INIT_DB (the upstream database: the session stays where it is)
        assert not any("sqlward" in str(w[2]) for w in fetch(conn, "SHOW WARNINGS"))
