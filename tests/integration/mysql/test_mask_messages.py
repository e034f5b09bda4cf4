"""Issue 11 on MySQL / MariaDB: a masked value does not leave through messages.

A statement that reads masked columns can make the server write a warning, a note or an error
that quotes a value (`SELECT CAST(email AS SIGNED)` leaves "Truncated incorrect INTEGER value:
'<the email>'"). The ERR packet of such a statement is already rewritten (docs/masking.md
"Errors"); these tests cover the texts a client reads *later*: SHOW WARNINGS / SHOW ERRORS
(text protocol, prepared statements, multi-statements, the mariadb CLI with --show-warnings,
mysql-connector's get_warnings) and GET DIAGNOSTICS ... MESSAGE_TEXT.

The rule (adapters/mysql/session.py): once a statement of a session under masking has read a
masked table, the Message of every SHOW WARNINGS / SHOW ERRORS row is replaced by a fixed
sentence (Level and Code kept) and GET DIAGNOSTICS with condition items is refused, until the
upstream session is reset (COM_RESET_CONNECTION / COM_CHANGE_USER clear the server's
diagnostics area). MariaDB keeps warnings across statements that use no table (`SELECT 1`,
`SET`), so the rule is sticky, not per statement.

Every connection goes through a TCP tap; no byte of a masked value may reach the client.
"""

from __future__ import annotations

import os
import subprocess
from typing import Iterator

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.conftest import VIA
from tests.integration.mysql.conftest import is_refusal, mysql_listener, root_sql
from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

DB = "sqlward_b11_msg"
EMAILS = ["zq9.carol.secret@example.com", "zq9.dave.hidden@corp-mail.io"]
SECRETS = {"ana": "ana-secret-b11", "dora": "dora-secret-b11"}
HIDDEN = "sqlward hides this message because the statement read masked columns"
MASKS = [
    {"id": "b11-email", "columns": ["customers.email"], "function": "email", "exempt_groups": ["dpo"]},
]
CAST = "SELECT CAST(email AS SIGNED) FROM customers"
XPATH = "SELECT EXTRACTVALUE('<a/>', email) FROM customers"  # ERROR 1105 "XPATH syntax error: '<value>'"
DIAG = "GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT"


def forbidden() -> list[bytes]:
    return [v.encode() for v in EMAILS] + [v.split("@")[0].encode() for v in EMAILS]


def leaks(data: bytes) -> list[bytes]:
    return [v for v in forbidden() if v in data]


@pytest.fixture(scope="module")
def msg_db() -> Iterator[str]:
    root_sql(
        f"DROP DATABASE IF EXISTS {DB}",
        f"CREATE DATABASE {DB}",
        f"CREATE TABLE {DB}.customers (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100))",
        *(f"INSERT INTO {DB}.customers VALUES ({i}, 'name{i}', '{e}')" for i, e in enumerate(EMAILS, start=1)),
        f"CREATE TABLE {DB}.orders (id INT PRIMARY KEY, note VARCHAR(100))",  # nothing masked here
        f"INSERT INTO {DB}.orders VALUES (1, 'note1'), (2, 'note2')",
        # A stored function sees its caller's diagnostics area.
        f"CREATE FUNCTION {DB}.diag_msg() RETURNS TEXT BEGIN DECLARE m TEXT DEFAULT 'none'; "
        "GET DIAGNOSTICS CONDITION 1 m = MESSAGE_TEXT; RETURN m; END",
        f"CREATE PROCEDURE {DB}.diag_proc() BEGIN GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT; SELECT @m; END",
    )
    yield DB
    root_sql(f"DROP DATABASE IF EXISTS {DB}")


@pytest.fixture(scope="module")
def gateway(msg_db: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    t = target(DB, f"mysql://root@127.0.0.1:3306/{msg_db}?sslmode=disable", "development", protocol="mysql")
    with GatewayProcess(
        targets=[t],
        identities=[
            {"name": "ana", "secret": SECRETS["ana"], "groups": ["analysts"]},
            {"name": "dora", "secret": SECRETS["dora"], "groups": ["dpo"]},
        ],
        listener=mysql_listener(),
        extra={"masks": MASKS, "masking": {"hash_key": "b11-hash-key"}},
        name="it-b11-mask-messages",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def tap(gateway: GatewayProcess) -> Iterator[Tap]:
    t = Tap(gateway.host, gateway.port)
    yield t
    t.close()


def _kw(port: int, user: str = "ana") -> dict:
    return {"host": "127.0.0.1", "port": port, "user": user, "password": SECRETS[user], "database": DB}


def pymysql_conn(port: int, user: str = "ana") -> pymysql.Connection:
    return pymysql.connect(ssl_disabled=True, autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS, **_kw(port, user))


def connector_conn(port: int, user: str = "ana", **kw) -> mysql.connector.MySQLConnection:
    return mysql.connector.connect(ssl_disabled=True, use_pure=True, autocommit=True, **_kw(port, user), **kw)


def run_pymysql(port: int, statements: list[str]) -> list[str]:
    """Each statement in turn on one connection; what happened to each."""
    out = []
    conn = pymysql_conn(port)
    try:
        with conn.cursor() as cur:
            for sql in statements:
                try:
                    cur.execute(sql)
                    rows = list(cur.fetchall())
                    while cur.nextset():
                        rows += list(cur.fetchall())
                    out.append(f"rows {rows!r}")
                except pymysql.MySQLError as e:
                    out.append(f"error {e.args!r}")
    finally:
        conn.close()
    return out


def run_connector_prepared(port: int, statements: list[str]) -> list[str]:
    out = []
    conn = connector_conn(port)
    try:
        for sql in statements:
            cur = conn.cursor(prepared=True)
            try:
                cur.execute(sql)
                out.append(f"rows {cur.fetchall()!r}" if cur.with_rows else "ok")
            except mysql.connector.Error as e:
                out.append(f"error {e.errno} {e.msg}")
            finally:
                try:
                    cur.close()
                except mysql.connector.Error:
                    pass
    finally:
        conn.close()
    return out


def run_raw_session_track(port: int, statements: list[str]) -> list[str]:
    """The raw protocol client with CLIENT_SESSION_TRACK: OK packets carry session state."""
    from tests.support import mywire

    out = []
    c = mywire.login("127.0.0.1", port, "ana", SECRETS["ana"], DB,
                     capabilities=mywire.DEFAULT_CAPABILITIES | mywire.CLIENT_SESSION_TRACK)
    try:
        for sql in statements:
            try:
                out.append(f"results {c.query(sql, decode=True)!r}")
            except mywire.MySQLError as e:
                out.append(f"error {e.errno} {e.message}")
    finally:
        c.close()
    return out


RUNNERS = {"pymysql": run_pymysql, "connector-prepared": run_connector_prepared, "raw-session-track": run_raw_session_track}


# Sequences of statements on one connection: the first reads a masked column in a way that
# leaves a message quoting its value, the next ones try to read that message back.
SEQUENCES = [
    [CAST, "SHOW WARNINGS"],
    [CAST, "SHOW ERRORS"],
    [CAST, "SHOW WARNINGS LIMIT 1"],
    [CAST, "SHOW WARNINGS LIMIT 1, 1"],
    [CAST, "show  /* x */ warnings"],
    [CAST, "/*!SHOW WARNINGS*/"],
    [CAST, "SELECT 1", "SET @x = 1", "SHOW WARNINGS"],
    [CAST, "SELECT 1; SHOW WARNINGS"],
    [CAST, "SHOW WARNINGS; SHOW ERRORS"],
    [CAST, "SHOW COUNT(*) WARNINGS", "SHOW WARNINGS"],
    ["SELECT 1 + email FROM customers", "SHOW WARNINGS"],
    ["SELECT CAST(email AS DATE) FROM customers", "SHOW WARNINGS"],
    [XPATH, "SHOW ERRORS"],
    [XPATH, "SHOW WARNINGS"],
    ["SELECT UPDATEXML('<a/>', email, '') FROM customers", "SHOW WARNINGS"],
    ["SELECT CAST(email AS DATE) FROM customers", "SELECT * FROM orders", "SHOW WARNINGS"],
    ["SELECT STR_TO_DATE(email, '%Y') FROM customers", "SHOW WARNINGS"],
    ["SELECT DATE_ADD(email, INTERVAL 1 DAY) FROM customers", "SHOW WARNINGS"],
    [CAST, DIAG, "SELECT @m"],
    [CAST, "GET CURRENT DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT", "SELECT @m"],
    [CAST, "GET DIAGNOSTICS CONDITION 2 @m = MESSAGE_TEXT, @n = MYSQL_ERRNO", "SELECT @m"],
    [CAST, "get/**/diagnostics condition 1 @m = message_text", "SELECT @m"],
    [CAST, "/*!GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT*/", "SELECT @m"],
    [XPATH, DIAG, "SELECT @m"],
    [CAST, f"EXECUTE IMMEDIATE '{DIAG}'", "SELECT @m"],
    [CAST, "EXECUTE IMMEDIATE 'SHOW WARNINGS'"],
    [CAST, "PREPARE s FROM 'SHOW WARNINGS'", "EXECUTE s"],
    [f"PREPARE s FROM '{DIAG}'", CAST, "EXECUTE s", "SELECT @m"],
    [CAST, "SELECT @@warning_count, @@error_count", "SHOW WARNINGS"],
    [CAST, "SELECT diag_msg()"],
    [CAST, f"SELECT {DB}.diag_msg()"],
    [CAST, "SELECT id, diag_msg() FROM orders"],
    [CAST, "CALL diag_proc()"],
    [CAST, "DO diag_msg()"],
    # OK packets: the info string (counts) and, with CLIENT_SESSION_TRACK, the session state.
    [CAST, "UPDATE orders SET note = note WHERE id = 1", "SHOW WARNINGS"],
    [CAST, "SET SESSION session_track_system_variables = '*'", "SET @@session.sql_mode = @@session.sql_mode",
     "SHOW WARNINGS"],
]


@pytest.mark.parametrize("client", list(RUNNERS))
@pytest.mark.parametrize("statements", SEQUENCES, ids=lambda s: " | ".join(s)[:90])
def test_no_masked_value_leaves_through_messages(tap: Tap, statements: list[str], client: str) -> None:
    tap.reset()
    outcome = RUNNERS[client](tap.port, statements)
    received = tap.received
    assert received, "the tap saw no traffic"
    assert not leaks(received), (statements, client, outcome, leaks(received))


def test_prepared_show_warnings_keeps_level_and_code(tap: Tap) -> None:
    """COM_STMT_PREPARE / EXECUTE of SHOW WARNINGS: binary rows, Message replaced."""
    conn = connector_conn(tap.port)
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(CAST)
        cur.fetchall()
        cur.execute("SHOW WARNINGS")
        rows = [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()
    assert rows == [("Warning", 1292, HIDDEN)] * len(EMAILS)


def test_show_warnings_keeps_level_and_code(tap: Tap) -> None:
    conn = pymysql_conn(tap.port)
    try:
        with conn.cursor() as cur:
            cur.execute(CAST)
            assert [r[0] for r in cur.fetchall()] == [0, 0]
            cur.execute("SELECT @@warning_count")  # the count is fine
            assert cur.fetchone() == (len(EMAILS),)
            cur.execute("SHOW WARNINGS")
            assert list(cur.fetchall()) == [("Warning", 1292, HIDDEN)] * len(EMAILS)
            cur.execute("SELECT 1")  # MariaDB keeps the warnings: so does the rule
            cur.execute("SHOW WARNINGS")
            assert list(cur.fetchall()) == [("Warning", 1292, HIDDEN)] * len(EMAILS)
            with pytest.raises(pymysql.MySQLError) as ei:
                cur.execute(XPATH)
            assert "sqlward hides the server's message" in str(ei.value)  # the ERR text was hidden already
            cur.execute("SHOW ERRORS")
            assert list(cur.fetchall()) == [("Error", 1105, HIDDEN)]
    finally:
        conn.close()


def test_connector_get_warnings(tap: Tap) -> None:
    """mysql-connector's get_warnings runs SHOW WARNINGS by itself after each statement."""
    tap.reset()
    conn = connector_conn(tap.port, get_warnings=True)
    try:
        cur = conn.cursor()
        cur.execute(CAST)
        cur.fetchall()
        warnings = cur.fetchwarnings()
    finally:
        conn.close()
    assert warnings and all(w[2] == HIDDEN for w in warnings), warnings
    assert not leaks(tap.received)


def test_get_diagnostics_is_refused_after_a_masked_read(tap: Tap) -> None:
    for name, conn_factory in (("pymysql", pymysql_conn), ("connector", connector_conn)):
        conn = conn_factory(tap.port)
        try:
            cur = conn.cursor()
            cur.execute(CAST)
            cur.fetchall()
            for sql in (DIAG, "/*!50500GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT*/"):
                with pytest.raises((pymysql.MySQLError, mysql.connector.Error)) as ei:
                    cur.execute(sql)
                assert is_refusal(ei.value, "b11-email"), (name, ei.value)
        finally:
            conn.close()


def test_warnings_of_unmasked_statements_keep_their_text(tap: Tap) -> None:
    """A session under masking that has read no table with masked columns reads its warnings as
    they are (the rule is per table: a statement reading `customers` hides, even for `name`)."""
    conn = pymysql_conn(tap.port)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CAST(note AS SIGNED) FROM orders")
            cur.execute("SHOW WARNINGS")
            assert [r[2] for r in cur.fetchall()] == [
                "Truncated incorrect INTEGER value: 'note1'", "Truncated incorrect INTEGER value: 'note2'",
            ]
    finally:
        conn.close()


def test_reset_connection_clears_the_rule(tap: Tap) -> None:
    """COM_RESET_CONNECTION empties the server's diagnostics area: texts are shown again."""
    conn = pymysql_conn(tap.port)
    try:
        with conn.cursor() as cur:
            cur.execute(CAST)
            conn._execute_command(0x1F, b"")  # COM_RESET_CONNECTION
            conn._read_ok_packet()
            cur.execute("SHOW WARNINGS")
            assert cur.fetchall() == ()
            cur.execute("SELECT CAST('abc' AS SIGNED)")
            cur.execute("SHOW WARNINGS")
            assert [r[2] for r in cur.fetchall()] == ["Truncated incorrect INTEGER value: 'abc'"]
    finally:
        conn.close()


def test_exempt_identity_reads_the_server_text(tap: Tap) -> None:
    conn = pymysql_conn(tap.port, "dora")
    try:
        with conn.cursor() as cur:
            cur.execute(CAST)
            cur.execute("SHOW WARNINGS")
            assert [r[2] for r in cur.fetchall()] == [f"Truncated incorrect INTEGER value: '{e}'" for e in EMAILS]
    finally:
        conn.close()


@pytest.mark.parametrize("sql", [CAST, XPATH, f"{CAST}; SHOW WARNINGS"])
def test_the_mariadb_cli_with_show_warnings(tap: Tap, sql: str) -> None:
    tap.reset()
    out = subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(tap.port), "-u", "ana", "--skip-ssl", "--show-warnings", DB,
         "-e", sql],
        capture_output=True, text=True, env={**os.environ, "MYSQL_PWD": SECRETS["ana"]}, timeout=30,
    )
    assert not leaks(tap.received), (out.stdout, out.stderr)
    assert not leaks((out.stdout + out.stderr).encode())
    if sql == CAST:
        assert out.returncode == 0, out.stderr
        assert f"Warning (Code 1292): {HIDDEN}" in out.stdout + out.stderr, (out.stdout, out.stderr)


def test_stored_function_cannot_read_the_masked_warnings(tap: Tap) -> None:
    """A stored function sees its caller's diagnostics area (MariaDB 10.11): after a masked read
    that left warnings, the gateway empties the area before a statement that calls a function."""
    for name, factory in (("pymysql", pymysql_conn), ("connector", connector_conn)):
        tap.reset()
        conn = factory(tap.port)
        try:
            cur = conn.cursor()
            cur.execute(CAST)
            cur.fetchall()
            cur.execute("SELECT @@warning_count")
            assert cur.fetchone()[0] == len(EMAILS), name  # the count survives until then
            cur.execute("SELECT diag_msg()")
            (value,) = cur.fetchone()
            assert value in ("none", None) or "zq9" not in value, (name, value)
            cur.execute("SHOW WARNINGS")  # emptied: only what the function call itself left
            assert all(r[2] != HIDDEN or r[1] != 1292 for r in cur.fetchall()), name
        finally:
            conn.close()
        assert not leaks(tap.received), name


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_raw_client_prepared_and_multi_statement_show_warnings(tap: Tap, deprecate_eof: bool) -> None:
    """A second client for the binary protocol and for multi-statements: the raw protocol client
    (tests/support/mywire.py), with and without CLIENT_DEPRECATE_EOF."""
    from tests.support import mywire

    caps = mywire.DEFAULT_CAPABILITIES | mywire.CLIENT_DEPRECATE_EOF
    if not deprecate_eof:
        caps &= ~mywire.CLIENT_DEPRECATE_EOF
    tap.reset()
    c = mywire.login("127.0.0.1", tap.port, "ana", SECRETS["ana"], DB, capabilities=caps)
    try:
        c.query(CAST)
        st = c.stmt_prepare("SHOW WARNINGS")
        (binary,) = [r for r in c.stmt_execute(st) if isinstance(r, mywire.ResultSet)]
        c.stmt_close(st)
        assert binary.rows == [("Warning", 1292, HIDDEN)] * len(EMAILS)
        text = [r for r in c.query("SELECT 1; SHOW WARNINGS; SHOW ERRORS", decode=True) if isinstance(r, mywire.ResultSet)]
        assert [r.rows for r in text] == [[(1,)], [("Warning", 1292, HIDDEN)] * len(EMAILS), []]
    finally:
        c.close()
    assert not leaks(tap.received)


def test_prepared_show_warnings_with_a_cursor(tap: Tap) -> None:
    """COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY, then COM_STMT_FETCH: whether the server opens
    a cursor for SHOW WARNINGS or sends the rows at once, no message text gets through."""
    import struct

    from tests.support import mywire

    tap.reset()
    with mywire.RawMySQL.open("127.0.0.1", tap.port) as c:
        c.read_handshake()
        c.login("ana", SECRETS["ana"], DB)
        c.query(CAST)
        st = c.stmt_prepare("SHOW WARNINGS")
        c.command(0x17, struct.pack("<IBI", st.stmt_id, 0x01, 1))  # CURSOR_TYPE_READ_ONLY
        n = mywire.Buf(c.read_packet()).lenenc()
        cols = c._read_columns(n)
        end = c.read_packet() if not c.deprecate_eof else b""
        cursor = bool(end[:1] == b"\xfe" and mywire.parse_eof(end).status & 0x40) if end else False
        rows: list = []
        if cursor:
            c.command(0x1C, struct.pack("<II", st.stmt_id, 10))  # COM_STMT_FETCH
            rows, _ = c._read_rows(cols, binary=True)
        else:
            rows, _ = c._read_rows(cols, binary=True)
        c.stmt_close(st)
        assert c.scalar("SELECT 7") == 7
    assert [r[2] for r in rows] == [HIDDEN] * len(EMAILS)
    assert not leaks(tap.received)
