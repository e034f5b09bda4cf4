"""sql_mode that changes how the server reads SQL text is refused (rule "sql-reading").

NO_BACKSLASH_ESCAPES and ANSI_QUOTES (and ANSI, ORACLE, MSSQL, DB2, POSTGRESQL, MAXDB, which set
ANSI_QUOTES on MariaDB 10.11) make the server lex SQL unlike the gateway's analysis: after one
of them `SELECT 'a\\' ; DROP TABLE ...; -- '` is one SELECT to the gateway and three statements
to the server. A SET naming such a mode is refused in every spelling; a value the text does not
settle is checked with the server after it ran and fails closed; the server's @@sql_mode and
SERVER_STATUS_NO_BACKSLASH_ESCAPES are checked at login. Modes clients and ORMs set at connect
(STRICT_TRANS_TABLES, TRADITIONAL, '') keep working.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.mysql.conftest import (
    IT_DB, MY_ENVIRONMENTS, VIA, default_targets, direct_rows, is_refusal, my_target, mysql_listener,
)
from tests.support.gateway import SECRETS, GatewayProcess
from tests.support.mariadb import PrivateMariaDB

RULE = "sql-reading"
VICTIM = "mys12_victim"
SECRET = "mys12_secret"
RULES = [{"id": "mys12-no-secret", "tables": [f"{IT_DB}.{SECRET}"], "action": "deny"}]
NBE_SMUGGLE = f"SELECT 'a\\' ; DROP TABLE {VICTIM}; SELECT * FROM {SECRET}; -- '"
ANSI_SMUGGLE = f'SELECT 1 AS "a\\" ; DROP TABLE {VICTIM}; SELECT * FROM {SECRET}; -- "'


@pytest.fixture(scope="module")
def gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("gateway-only")
    with GatewayProcess(targets=default_targets(), rules=RULES, environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app"), name="mys12-sqlmode") as g:
        yield g


@pytest.fixture
def victim(mysql_it_database: str) -> Iterator[pymysql.Connection]:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=IT_DB, autocommit=True)
    direct_rows(conn, f"CREATE TABLE IF NOT EXISTS {VICTIM} (id INT)")
    direct_rows(conn, f"CREATE TABLE IF NOT EXISTS {SECRET} (s VARCHAR(20))")
    yield conn
    direct_rows(conn, f"DROP TABLE IF EXISTS {VICTIM}")
    direct_rows(conn, f"DROP TABLE IF EXISTS {SECRET}")
    conn.close()


def _victim_exists(conn: pymysql.Connection) -> bool:
    return bool(direct_rows(conn, f"SHOW TABLES LIKE '{VICTIM}'"))


def _connect(g: GatewayProcess, **kw: Any) -> pymysql.Connection:
    return pymysql.connect(host=g.host, port=g.port, user="alice", password=SECRETS["alice"], database="app",
                           autocommit=True, ssl_disabled=True, connect_timeout=10,
                           client_flag=CLIENT.MULTI_STATEMENTS, **kw)


def _run(conn: pymysql.Connection, sql: str) -> list[Any]:
    with conn.cursor() as cur:
        cur.execute(sql)
        out = [cur.fetchall()]
        while cur.nextset():
            out.append(cur.fetchall())
        return out


def _refused(conn: pymysql.Connection, sql: str, rule: str = RULE) -> Any:
    with pytest.raises(pymysql.err.MySQLError) as ei:
        _run(conn, sql)
    assert is_refusal(ei.value, rule), ei.value
    return ei.value


def _mode(conn: pymysql.Connection) -> str:
    return _run(conn, "SELECT @@sql_mode")[0][0][0]


# -- named modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
    "SET sql_mode = 'ANSI_QUOTES'",
    "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,ANSI_QUOTES'",
    "SET LOCAL sql_mode = ansi",
    "SET @@sql_mode = 'ORACLE'",
    "SET @@session.sql_mode := \"MSSQL\"",
    "SET @@local.sql_mode = 'db2'",
    "SET NAMES utf8mb4, sql_mode = 'POSTGRESQL'",
    "SET `sql_mode` = 'MAXDB'",
    "/*!40101 SET SQL_MODE='NO_BACKSLASH_ESCAPES' */",
    "SET STATEMENT sql_mode = 'ANSI_QUOTES' FOR SELECT \"a\"",
    "BEGIN NOT ATOMIC SET sql_mode = 'ANSI_QUOTES'; END",
])
def test_pymysql_set_of_a_lexing_mode_is_refused(gw: GatewayProcess, victim: pymysql.Connection, sql: str) -> None:
    with _connect(gw) as c:
        before = _mode(c)
        _refused(c, sql)
        assert _mode(c) == before
        assert "ANSI_QUOTES" not in before and "NO_BACKSLASH_ESCAPES" not in before


@pytest.mark.parametrize("mode,smuggle", [("NO_BACKSLASH_ESCAPES", NBE_SMUGGLE), ("ANSI_QUOTES", ANSI_SMUGGLE)])
def test_pymysql_attack_of_the_report_is_stopped(gw: GatewayProcess, victim: pymysql.Connection, mode: str,
                                                smuggle: str) -> None:
    with _connect(gw) as c:
        _refused(c, f"SET sql_mode = '{mode}'")
        _run(c, smuggle)  # one SELECT, as the gateway reads it
    assert _victim_exists(victim)


@pytest.mark.parametrize("mode,smuggle", [("NO_BACKSLASH_ESCAPES", NBE_SMUGGLE), ("ANSI_QUOTES", ANSI_SMUGGLE)])
def test_pymysql_unsettled_switch_fails_closed_until_set_back(
    gw: GatewayProcess, victim: pymysql.Connection, mode: str, smuggle: str,
) -> None:
    with _connect(gw) as c:
        _run(c, f"SET sql_mode = CONCAT(@@sql_mode, ',{mode}')")  # the text does not settle it: asked after
        err = _refused(c, smuggle)
        assert mode in str(err)
        _refused(c, "SELECT 1")
        _refused(c, "SET sql_mode = 'TRADITIONAL'; SELECT 1")  # not on its own
        _run(c, "SET sql_mode = 'TRADITIONAL'")
        assert "TRADITIONAL" in _mode(c) or "STRICT_ALL_TABLES" in _mode(c)
        assert _run(c, "SELECT 1")[0] == ((1,),)
    assert _victim_exists(victim)


def test_pymysql_variable_value_fails_closed(gw: GatewayProcess, victim: pymysql.Connection) -> None:
    with _connect(gw) as c:
        _run(c, "SET @m = 'ANSI_QUOTES'")
        _run(c, "SET sql_mode = @m")
        _refused(c, ANSI_SMUGGLE)
    assert _victim_exists(victim)


@pytest.mark.parametrize("sql", [
    "SET sql_mode = @m; SELECT 1",
    "SET sql_mode = DEFAULT; SELECT 1",
    "SET STATEMENT sql_mode = @m FOR SELECT 1",
    "BEGIN NOT ATOMIC SET sql_mode = @m; SELECT 1; END",
])
def test_pymysql_unsettled_switch_with_more_is_refused(gw: GatewayProcess, victim: pymysql.Connection, sql: str) -> None:
    with _connect(gw) as c:
        _run(c, "SET @m = 'ANSI_QUOTES'")
        _refused(c, sql)
        assert "ANSI_QUOTES" not in _mode(c)


def test_raw_reset_connection_returns_to_the_login_mode(gw: GatewayProcess, victim: pymysql.Connection) -> None:
    from tests.integration.mysql.test_hardening import raw_login
    from tests.support import mywire

    c = raw_login(gw, "alice", SECRETS["alice"])
    try:
        c.query("SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("SELECT 1")
        assert is_refusal((ei.value.errno, ei.value.message), RULE), ei.value
        c.command(0x1F)  # COM_RESET_CONNECTION
        c.read_ok()
        assert "NO_BACKSLASH_ESCAPES" not in c.scalar("SELECT @@sql_mode")
    finally:
        c.close()


# -- modes clients set at connect keep working -------------------------------------------------


@pytest.mark.parametrize("mode", ["STRICT_TRANS_TABLES", "TRADITIONAL", "", "PIPES_AS_CONCAT,IGNORE_SPACE",
                                  "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO"])
def test_pymysql_readable_modes_at_connect(gw: GatewayProcess, mode: str) -> None:
    with _connect(gw, sql_mode=mode) as c:
        assert _run(c, "SELECT 1")[0] == ((1,),)
        _run(c, f"SET SESSION sql_mode = '{mode}'")
        _run(c, "SET sql_mode = DEFAULT")  # the server default is readable
        assert _run(c, "SELECT 2")[0] == ((2,),)


def test_connector_sql_mode_at_connect(gw: GatewayProcess) -> None:
    import mysql.connector

    conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                   database="app", use_pure=True, ssl_disabled=True, sql_mode="TRADITIONAL")
    try:
        cur = conn.cursor()
        cur.execute("SELECT @@sql_mode")
        assert "STRICT_ALL_TABLES" in cur.fetchone()[0]
    finally:
        conn.close()
    with pytest.raises(mysql.connector.Error) as ei:
        mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                database="app", use_pure=True, ssl_disabled=True, sql_mode="ANSI")
    assert is_refusal(ei.value, RULE), ei.value


def test_mariadb_cli_refused(gw: GatewayProcess, victim: pymysql.Connection) -> None:
    out = subprocess.run(
        ["mariadb", "-h", gw.host, "-P", str(gw.port), "-u", "alice", f"-p{SECRETS['alice']}", "--ssl=0", "app",
         "-e", f"SET sql_mode='NO_BACKSLASH_ESCAPES'; {NBE_SMUGGLE}"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0 and RULE in out.stderr, out
    assert _victim_exists(victim)


# -- the server's own word: login ---------------------------------------------------------------


@pytest.fixture(scope="module")
def nbe_mariadb() -> Iterator[PrivateMariaDB]:
    with PrivateMariaDB(extra_args=("--sql-mode=STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES",)) as server:
        yield server


def test_login_to_a_server_whose_default_mode_is_unreadable_is_refused(nbe_mariadb: PrivateMariaDB) -> None:
    m = nbe_mariadb
    targets = [my_target("nbe", dsn=m.dsn("native_user", sslmode="require"), password=m.passwords["native_user"])]
    with GatewayProcess(targets=targets, listener=mysql_listener(default_target="nbe"), name="mys12-nbe") as g:
        with pytest.raises(pymysql.err.MySQLError) as ei:
            pymysql.connect(host=g.host, port=g.port, user="alice", password=SECRETS["alice"], database="nbe",
                            ssl_disabled=True, connect_timeout=15)
        assert is_refusal(ei.value, RULE) and "NO_BACKSLASH_ESCAPES" in str(ei.value), ei.value


# -- prepared statements and COM_CHANGE_USER (mysql-connector) ----------------------------------


def _connector(g: GatewayProcess) -> Any:
    import mysql.connector

    return mysql.connector.connect(host=g.host, port=g.port, user="alice", password=SECRETS["alice"],
                                   database="app", use_pure=True, ssl_disabled=True, autocommit=True)


def test_connector_prepared_set_fails_closed_and_change_user_returns_to_login(gw: GatewayProcess,
                                                                              victim: pymysql.Connection) -> None:
    import mysql.connector

    conn = _connector(gw)
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute("SET sql_mode = 'ANSI_QUOTES'")  # COM_STMT_PREPARE of a named mode
        assert is_refusal(ei.value, RULE), ei.value
        cur = conn.cursor(prepared=True)
        cur.execute("SET sql_mode = ?", ("ANSI_QUOTES",))  # settled only by the server: asked after
        plain = conn.cursor()
        with pytest.raises(mysql.connector.Error) as ei:
            plain.execute("SELECT 1")
        assert is_refusal(ei.value, RULE) and "ANSI_QUOTES" in ei.value.msg, ei.value
        conn.cmd_change_user(username="alice", password=SECRETS["alice"], database="app")
        plain = conn.cursor()
        plain.execute("SELECT @@sql_mode")
        assert "ANSI_QUOTES" not in plain.fetchone()[0]
    finally:
        conn.close()
    assert _victim_exists(victim)



@pytest.mark.parametrize("sql", [
    f"SET sql_mode='NO_BACKSLASH_ESCAPES'; SELECT 'a\\'; DROP TABLE {VICTIM}; -- ",
    f"SET sql_mode=@m; SELECT 'a\\'; DROP TABLE {VICTIM}; -- ",
    f"SET sql_mode=CONCAT(@@sql_mode, ',ANSI_QUOTES'); SELECT \"a\\\"; DROP TABLE {VICTIM}; -- ",
])
def test_pymysql_switch_in_text_the_gateway_cannot_lex_is_refused(gw: GatewayProcess, victim: pymysql.Connection,
                                                                   sql: str) -> None:
    """Text the gateway's lexer cannot finish (an unterminated literal in the default reading) that
    the server, in the new mode, reads as more statements."""
    with _connect(gw) as c:
        _run(c, "SET @m = 'NO_BACKSLASH_ESCAPES'")
        with pytest.raises(pymysql.err.MySQLError):
            _run(c, sql)
        assert "NO_BACKSLASH_ESCAPES" not in _mode(c) and "ANSI_QUOTES" not in _mode(c)
    assert _victim_exists(victim)


def test_side_connections_to_such_a_server_read_sql_as_the_gateway(nbe_mariadb: PrivateMariaDB) -> None:
    """EXPLAIN estimates and the catalogue read client SQL on side connections: they take the
    server's default mode without the flags that change how SQL is read."""
    import trio

    from sqlward.adapters.base import Target, UpstreamTLS
    from sqlward.adapters.mysql import sidequery
    from sqlward.policy.model import TargetInfo

    m = nbe_mariadb
    target = Target(info=TargetInfo(name="nbe", protocol="mysql", environment="test"), host=m.host, port=m.port,
                    user="native_user", password=m.passwords["native_user"], database=m.dbname,
                    tls=UpstreamTLS(mode="require"))

    async def main() -> str:
        side = await sidequery.open_side_connection(target)
        try:
            return (await side.query("SELECT @@sql_mode", timeout=10))[0].rows[0][0] or ""
        finally:
            await side.aclose()

    mode = trio.run(main)
    assert "NO_BACKSLASH_ESCAPES" not in mode and "STRICT_TRANS_TABLES" in mode


def test_pymysql_lost_mode_and_charset_are_put_back_in_one_set(gw: GatewayProcess, victim: pymysql.Connection) -> None:
    with _connect(gw) as c:
        _run(c, "SET @cs = 'gbk'")
        # both settled only by the server, asked after: it reads gbk and ANSI_QUOTES
        _run(c, "SET character_set_client = @cs, sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
        for sql in ("SELECT 1", "SET sql_mode = 'STRICT_TRANS_TABLES'"):  # the character set is still unreadable
            with pytest.raises(pymysql.err.MySQLError) as ei:
                _run(c, sql)
            assert ei.value.args[0] == 1115 and "'gbk'" in ei.value.args[1], ei.value
        _run(c, "SET NAMES utf8mb4, sql_mode = 'STRICT_TRANS_TABLES'")
        assert _run(c, "SELECT @@sql_mode, @@character_set_client")[0] == (("STRICT_TRANS_TABLES", "utf8mb4"),)
