"""The audit trail of real MySQL sessions through the gateway: connection events, a
statement.decided for every statement (refusals with action deny and the rule id), a
statement.completed for every statement that ran, prepared statements linked to their
decision, refused logins, and no secrets anywhere in the file."""

from __future__ import annotations

import datetime
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.mysql.conftest import session_of_marker
from tests.integration.test_audit import _check_statement_pairs
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess


def _kinds(evs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in evs]


def test_session_audit_trail(mysql_gateway: GatewayProcess, my_table: str, marker: str):
    gw = mysql_gateway
    since = gw.audit_offset()
    with pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="prod",
                         autocommit=True, ssl_disabled=True, client_flag=CLIENT.MULTI_STATEMENTS) as c:
        with c.cursor() as cur:
            cur.execute(f"select '{marker}'")
            cur.execute(f"insert into {my_table} values (%s, %s)", (1, "one"))
            with pytest.raises(pymysql.MySQLError):
                cur.execute(f"drop table {my_table}")
            with pytest.raises(pymysql.MySQLError):
                cur.execute("select * from no_such_table_xyz")
            cur.execute("select 1 as a; select 2 as b")
            while cur.nextset():
                pass
            cur.execute(f"update {my_table} set v = 'uno' where id = 1")
    evs = session_of_marker(gw, marker, since)

    kinds = _kinds(evs)
    assert kinds[0] == "connection.opened" and kinds[1] == "connection.authenticated" and kinds[-1] == "connection.closed", kinds
    assert kinds.count("connection.opened") == kinds.count("connection.authenticated") == kinds.count("connection.closed") == 1
    opened, auth = evs[0], evs[1]
    assert opened["protocol"] == "mysql" and opened["client_addr"].startswith("127.0.0.1")
    assert auth["who"]["subject"] == "alice" and auth["who"].get("groups") == ["dba"]
    assert (auth["target"], auth["environment"]) == ("prod", "production")
    for e in evs:
        assert e["gateway"] == "it-mysql" and isinstance(e["time"], (int, float)) and e["time"] > 1.6e9

    decided, completed = _check_statement_pairs(evs)
    by_sql = {d["sql"]: d for d in decided}
    sel = by_sql[f"select '{marker}'"]
    assert sel["action"] == "allow" and sel["operations"] == ["select"]
    assert sel["target"] == "prod" and sel["environment"] == "production" and sel["who"]["subject"] == "alice"
    assert completed[sel["request_id"]]["rows"] == 1 and completed[sel["request_id"]].get("error") is None
    ins = by_sql[f"insert into {my_table} values (1, 'one')"]
    assert ins["action"] == "allow" and ins["tables"] == [my_table]
    assert completed[ins["request_id"]]["rows"] == 1
    drop = by_sql[f"drop table {my_table}"]
    assert drop["action"] == "deny" and drop["rule_id"] == "no-drop" and "no-drop" in (drop.get("message") or "no-drop")
    assert drop["request_id"] not in completed, "a refused statement did not run: no completion"
    bad = by_sql["select * from no_such_table_xyz"]
    err = completed[bad["request_id"]]
    assert err.get("error") and "no_such_table_xyz" in err["error"] and err.get("sqlstate") == "42S02", err
    multi = by_sql["select 1 as a; select 2 as b"]
    assert multi["action"] == "allow" and multi["request_id"] in completed
    upd = by_sql[f"update {my_table} set v = 'uno' where id = 1"]
    assert completed[upd["request_id"]]["rows"] == 1
    closed = evs[-1]
    assert closed["duration_ms"] > 0 and closed["requests"] >= len(decided)


def test_prepared_statements_audit(mysql_gateway: GatewayProcess, marker: str):
    gw = mysql_gateway
    since = gw.audit_offset()
    with mysql.connector.connect(host=gw.host, port=gw.port, user="bob", password=SECRETS["bob"], database="prod",
                                 use_pure=True, ssl_disabled=True, autocommit=True) as c:
        cur = c.cursor(prepared=True)
        sql = f"select %s, '{marker}'"  # the same string object: the cursor prepares it once
        for i in range(3):
            cur.execute(sql, (i,))
            cur.fetchall()
        cur = c.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error):
            cur.execute("drop table guarded")
    evs = session_of_marker(gw, marker, since)
    decided, completed = _check_statement_pairs(evs)
    prep = [d for d in decided if marker in d["sql"]]
    assert len(prep) == 1, "one decision at COM_STMT_PREPARE"
    assert prep[0]["action"] == "allow" and prep[0].get("statement_name") is not None
    runs = [e for e in evs if e["event"] == "statement.completed" and e.get("prepared_ref") == prep[0]["request_id"]]
    assert len(runs) == 3 and all(r["rows"] == 1 for r in runs), runs
    refused = [d for d in decided if d["sql"] == "drop table guarded"]
    assert len(refused) == 1 and refused[0]["action"] == "deny" and refused[0]["rule_id"] == "no-drop"
    assert refused[0]["who"]["subject"] == "bob"


def test_every_statement_of_a_cli_script_is_audited(mysql_gateway: GatewayProcess, marker: str):
    import subprocess

    gw = mysql_gateway
    since = gw.audit_offset()
    script = f"select '{marker}';\nselect 2;\ndrop table guarded;\nselect 4;\n"
    res = subprocess.run(["mariadb", "--no-defaults", "--skip-ssl", "-h", gw.host, "-P", str(gw.port), "-u", "alice",
                          f"-p{SECRETS['alice']}", "--force", "-N", "-B", "prod"],
                         input=script, capture_output=True, text=True, timeout=30)
    assert res.stdout.split() == [marker, "2", "4"], (res.stdout, res.stderr)
    evs = session_of_marker(gw, marker, since)
    decided, completed = _check_statement_pairs(evs)
    texts = [d["sql"].rstrip(";") for d in decided]
    for sql in (f"select '{marker}'", "select 2", "drop table guarded", "select 4"):
        assert sql in texts, (sql, texts)
    assert [d["action"] for d in decided if d["sql"].startswith("drop")] == ["deny"]


def test_refused_logins_are_audited_without_secrets(mysql_gateway: GatewayProcess):
    gw = mysql_gateway
    since = gw.audit_offset()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=gw.host, port=gw.port, user="alice", password="wrong-secret-zz", database="app",
                        ssl_disabled=True)
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                        database="no_such_target_zz", ssl_disabled=True)
    evs = gw.wait_audit(lambda es: len([e for e in es if e["event"] == "connection.refused"]) >= 2, since=since)
    refused = [e for e in evs if e["event"] == "connection.refused"]
    assert len(refused) >= 2, _kinds(evs)
    assert any(e.get("user") == "alice" and "auth" in e["reason"] for e in refused), refused
    assert any(e.get("target") == "no_such_target_zz" for e in refused), refused
    text = gw.audit_text()
    assert "wrong-secret-zz" not in text
    for secret in SECRETS.values():
        assert secret not in text
    assert "sqlward-up-pw" not in text


def test_records_are_on_disk_before_the_client_sees_the_effect(mysql_gateway: GatewayProcess, marker: str):
    """Read the audit file the moment each answer arrives, without waiting: the decision of a
    refused statement, the decision and completion of one that ran, of a prepared execution and of
    a refused command are already there (the session flushes them before the last bytes)."""
    gw = mysql_gateway
    since = gw.audit_offset()

    def now() -> list[dict[str, Any]]:
        return gw.audit_events(since)  # no polling: what is on disk right now

    with mywire.login(gw.host, gw.port, "alice", SECRETS["alice"], "prod") as c:
        c.query(f"select '{marker}-ran'")
        evs = now()
        ran = next(e for e in evs if e["event"] == "statement.decided" and e["sql"] == f"select '{marker}-ran'")
        assert any(e["event"] == "statement.completed" and e["request_id"] == ran["request_id"] for e in evs)

        with pytest.raises(mywire.MySQLError):
            c.query(f"drop table t_{marker.replace('-', '_')}")
        assert any(e["event"] == "statement.decided" and e.get("rule_id") == "no-drop" for e in now())

        st = c.stmt_prepare(f"select ?, '{marker}-prep'")
        prep = next(e for e in now() if e["event"] == "statement.decided" and f"{marker}-prep" in e["sql"])
        c.stmt_execute(st, [1])
        assert [e for e in now() if e["event"] == "statement.completed" and e.get("prepared_ref") == prep["request_id"]]

        with pytest.raises(mywire.MySQLError) as ei:
            c.command(0x06, b"sqlward_it")  # COM_DROP_DB
            c.read_ok()
        assert ei.value.errno == 1227 and "command-not-allowed" in ei.value.message
        assert any(e["event"] == "statement.decided" and e["sql"] == "<COM_DROP_DB>" for e in now())


def test_envelope_of_a_session(mysql_gateway: GatewayProcess, marker: str):
    """Every event of a session carries the envelope the recorder stamps: time and its RFC 3339
    text, gateway, connection id, and a sequence number from 1 without gaps."""
    gw = mysql_gateway
    since = gw.audit_offset()
    with mywire.login(gw.host, gw.port, "bob", SECRETS["bob"], "app") as c:
        c.query(f"select '{marker}'")
        with pytest.raises(mywire.MySQLError):
            c.query("kill 1")  # not one of bob's sessions (or no session at all): ERR, still recorded
        c.ping()
    evs = session_of_marker(gw, marker, since)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), evs
    assert [e["event"] for e in evs] == [
        "connection.opened", "connection.authenticated", "statement.decided", "statement.completed",
        "statement.decided", "connection.closed",
    ]
    for e in evs:
        assert e["gateway"] == "it-mysql" and e["connection_id"].startswith("my-")
        t = datetime.datetime.fromtimestamp(e["time"], datetime.timezone.utc)
        assert e["time_text"] == t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    kill = evs[4]
    assert (kill["sql"], kill["fingerprint"], kill["operations"], kill["rule_id"]) == (
        "KILL CONNECTION 1", "KILL CONNECTION ?", ["kill"], "own-session")
