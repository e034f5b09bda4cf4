"""Privacy in the audit trail on MySQL (PyMySQL, mysql-connector-python with use_pure=True):
[[targets]] audit_text and audit_parameters, and masked values.

One gateway, two targets on the same database: `app` records statements as sent (the default),
`private` has audit_text = "redacted" and audit_parameters = "redacted". A mask rule redacts
one column. The audit file's raw bytes are searched for literal values, values bound to
prepared statements (COM_STMT_EXECUTE, mysql-connector's prepared cursor) and masked values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest

from tests.integration.mysql.conftest import IT_DB, my_target, mysql_listener
from tests.support.gateway import SECRETS, GatewayProcess
from tests.support.mariadb import root_sql

EMAIL = "zq6.private.person@example.org"
NUMBER = 6349117
BOUND_EMAIL = "zq6.bound.value@example.net"
BOUND_NUMBER = 6812403
MASKED = "zq6-masked-secret-5500005555555559"


@pytest.fixture(scope="module")
def names(mysql_it_database: str) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    t = {"people": f"auditpriv_people_{tag}", "vault": f"auditpriv_vault_{tag}"}
    root_sql(
        f"CREATE TABLE {t['people']} (id INT PRIMARY KEY, email VARCHAR(100), n BIGINT)",
        f"CREATE TABLE {t['vault']} (id INT PRIMARY KEY, secret VARCHAR(100))",
        f"INSERT INTO {t['vault']} VALUES (1, '{MASKED}')",
        database=IT_DB,
    )
    yield t
    root_sql(f"DROP TABLE IF EXISTS {t['people']}, {t['vault']}", database=IT_DB)


@pytest.fixture(scope="module")
def gw(names: dict[str, str]) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=[
            my_target("app", "development"),
            my_target("private", "development", audit_text="redacted", audit_parameters="redacted"),
        ],
        listener=mysql_listener(),
        extra={"masks": [{"id": "vault-secret", "columns": [f"{names['vault']}.secret"], "function": "redact"}]},
        name="it-mysql-audit-privacy",
    ) as g:
        yield g


def _pymysql(gw: GatewayProcess, db: str) -> pymysql.Connection:
    return pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database=db,
                           autocommit=True, connect_timeout=10, charset="utf8mb4", ssl_disabled=True)


def _connector(gw: GatewayProcess, db: str) -> Any:
    return mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database=db,
                                   use_pure=True, ssl_disabled=True, autocommit=True)


def _events(gw: GatewayProcess, since: int, event: str) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events(since) if e.get("event") == event]


def _absent(gw: GatewayProcess, *values: str | int) -> None:
    raw = gw.audit_file.read_bytes()
    for v in values:
        assert str(v).encode() not in raw, f"{v!r} is in the audit file"


def test_redacted_text_keeps_no_literal_of_a_statement(gw: GatewayProcess, names: dict[str, str]) -> None:
    people = names["people"]
    since = gw.audit_offset()
    with _pymysql(gw, "private") as conn, conn.cursor() as cur:
        # PyMySQL interpolates its arguments into the text: they are literals on the wire.
        cur.execute(f"INSERT INTO {people} VALUES (1, %s, %s)", (EMAIL, NUMBER))
        cur.execute(f"SELECT n FROM {people} WHERE email = %s AND n > %s", (EMAIL, NUMBER - 1))
        assert cur.fetchall() == ((NUMBER,),)
        cur.execute(f"UPDATE {people} SET email = lower('{EMAIL}') WHERE n = {NUMBER}")
    with _connector(gw, "private") as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id FROM {people} WHERE email = 'zq6.connector.text@example.org' OR n = 5550129")
        cur.fetchall()
    decided = [e for e in _events(gw, since, "statement.decided") if people in e["sql"]]
    assert len(decided) == 4, decided
    for e in decided:
        assert e["redacted"] is True and "?" in e["sql"], e
    _absent(gw, EMAIL, NUMBER, NUMBER - 1, "example.org", "zq6.connector.text", 5550129)


def test_redacted_parameters_of_prepared_statements_are_question_marks(gw: GatewayProcess, names: dict[str, str]) -> None:
    people = names["people"]
    since = gw.audit_offset()
    with _connector(gw, "private") as conn:
        cur = conn.cursor(prepared=True)
        sql = f"SELECT id FROM {people} WHERE email = %s OR n = %s"  # the same object: prepared once
        for _ in range(2):
            cur.execute(sql, (BOUND_EMAIL, BOUND_NUMBER))
            assert cur.fetchall() == []
    executed = [e for e in _events(gw, since, "statement.executed") if e.get("parameters")]
    assert len(executed) == 2, _events(gw, since, "statement.executed")
    for e in executed:
        assert e["parameters"] == ["?", "?"], e
    prepared = [e for e in _events(gw, since, "statement.decided") if people in e["sql"]]
    assert prepared and all(e["redacted"] is True for e in prepared), prepared
    _absent(gw, BOUND_EMAIL, BOUND_NUMBER)


def test_as_sent_records_the_text_and_the_values_as_sent(gw: GatewayProcess, names: dict[str, str]) -> None:
    people = names["people"]
    email, number = "zq6.as.sent@example.com", 6120349
    since = gw.audit_offset()
    with _pymysql(gw, "app") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {people} WHERE email = %s AND n = %s", (email, number))
    with _connector(gw, "app") as conn:
        cur = conn.cursor(prepared=True)
        cur.execute(f"SELECT id FROM {people} WHERE email = %s AND n = %s", (email, number))
        cur.fetchall()
    decided = [e for e in _events(gw, since, "statement.decided") if people in e["sql"]]
    assert any(e["sql"] == f"SELECT id FROM {people} WHERE email = '{email}' AND n = {number}" for e in decided), decided
    assert not any(e.get("redacted") for e in decided)
    executed = [e["parameters"] for e in _events(gw, since, "statement.executed") if e.get("parameters")]
    assert executed == [[email, str(number)]], executed


@pytest.mark.parametrize("db", ["app", "private"])
def test_masked_values_never_reach_the_trail(gw: GatewayProcess, names: dict[str, str], db: str) -> None:
    vault = names["vault"]
    since = gw.audit_offset()
    with _pymysql(gw, db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT secret FROM {vault} WHERE id = 1")
        assert cur.fetchone()[0] != MASKED
    with _connector(gw, db) as conn:
        cur = conn.cursor(prepared=True)
        cur.execute(f"SELECT secret FROM {vault} WHERE id = %s", (1,))
        assert cur.fetchone()[0] not in (MASKED, MASKED.encode())
    done = [e for e in _events(gw, since, "statement.completed") if e.get("masked")]
    assert len(done) >= 2 and all(sum(e["masked"].values()) == 1 for e in done), done
    _absent(gw, MASKED, "5500005555555559")
def test_a_failing_statement_on_a_redacted_target_keeps_its_values_out_of_the_trail(
    gw: GatewayProcess, names: dict[str, str],
) -> None:
    people = names["people"]
    email, number = "zq6.duplicate.key@example.org", 9070003
    since = gw.audit_offset()
    with _pymysql(gw, "private") as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {people} VALUES ({number}, '{email}', 1)")
        with pytest.raises(pymysql.err.IntegrityError):  # Duplicate entry '9070003' for key 'PRIMARY'
            cur.execute(f"INSERT INTO {people} VALUES ({number}, '{email}', 2)")
    failed = [e for e in _events(gw, since, "statement.completed") if e.get("error")]
    assert len(failed) == 1, failed
    _absent(gw, email, number)


def test_no_channel_of_a_redacted_target_carries_a_literal_mysql(gw: GatewayProcess, names: dict[str, str]) -> None:
    """Executable comments (the server runs them, so the fingerprint keeps them) have their
    literals redacted too; SIGNAL's message and values quoted in errors are not recorded."""
    people = names["people"]
    since = gw.audit_offset()
    with _pymysql(gw, "private") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 /*! , 'MYEXECCMT' */")
        for sql in (
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'MYSIGNALLEAK'",
            f"INSERT INTO {people} VALUES ('O''MYQUOTELEAK', 'x', 1)",
            "SELECT 'a' 'MYSYNTAXLEAK' FROM",
        ):
            with pytest.raises(pymysql.MySQLError):
                cur.execute(sql)
    assert _events(gw, since, "statement.decided")
    _absent(gw, "MYEXECCMT", "MYSIGNALLEAK", "MYQUOTELEAK", "MYSYNTAXLEAK")
