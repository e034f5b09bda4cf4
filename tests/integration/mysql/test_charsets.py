"""Issue 12: client SQL is read in the character set the server reads it in, or refused.

The gateway decodes client SQL for analysis in the connection's character set as MariaDB reads
it: utf8mb4 / utf8mb3 / binary (identifiers are UTF-8), latin1 (Windows-1252 with MariaDB's five
extra code points), ascii. Any other character set (gbk, big5, sjis, cp932, ... whose multi-byte
characters can hide a quote or a backslash) is refused at login, in COM_CHANGE_USER and in every
in-session switch (SET NAMES / CHARACTER SET / CHARSET / character_set_client in any spelling,
executable comments, computed values, dynamic SQL); COM_RESET_CONNECTION and COM_CHANGE_USER leave
the gateway's reading equal to the server's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.integration.mysql.conftest import IT_DB, MY_ENVIRONMENTS, default_targets, direct_rows, mysql_listener
from tests.integration.mysql.test_hardening import raw_login
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess

TABLE = "myh12_café"
RULES = [{"id": "myh12-no-cafe", "tables": [f"{IT_DB}.{TABLE}"], "action": "deny"}]
UNSUPPORTED = 1115  # ER_UNKNOWN_CHARACTER_SET


@pytest.fixture(scope="module")
def cs_gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=default_targets(), rules=RULES, environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app"), name="myh12-charsets") as g:
        yield g


@pytest.fixture(scope="module")
def cafe(mysql_it_database: str) -> Iterator[str]:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=IT_DB,
                           charset="utf8mb4", autocommit=True)
    direct_rows(conn, f"CREATE TABLE IF NOT EXISTS `{TABLE}` (id INT)")
    direct_rows(conn, f"INSERT INTO `{TABLE}` VALUES (1)")
    yield TABLE
    direct_rows(conn, f"DROP TABLE IF EXISTS `{TABLE}`")
    conn.close()


def _refused_charset(errno: Any, message: str, name: str) -> bool:
    return errno == UNSUPPORTED and f"'{name}'" in message and "utf8mb4" in message


# -- at login ---------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["gbk", "big5", "sjis", "cp932"])
def test_pymysql_login_in_an_unreadable_charset_is_refused(cs_gw: GatewayProcess, charset: str) -> None:
    with pytest.raises(pymysql.err.MySQLError) as ei:
        pymysql.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"], database="app",
                        charset=charset, ssl_disabled=True, connect_timeout=5)
    assert _refused_charset(ei.value.args[0], ei.value.args[1], charset), ei.value


@pytest.mark.parametrize("charset", ["gbk", "big5"])
def test_connector_login_in_an_unreadable_charset_is_refused(cs_gw: GatewayProcess, charset: str) -> None:
    import mysql.connector

    with pytest.raises(mysql.connector.Error) as ei:
        mysql.connector.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"],
                                database="app", charset=charset, use_pure=True, ssl_disabled=True)
    assert _refused_charset(ei.value.errno, ei.value.msg, charset), ei.value


@pytest.mark.parametrize("collation_id,name", [(28, "gbk"), (1, "big5"), (13, "sjis"), (95, "cp932"),
                                               (35, "ucs2"), (54, "utf16"), (97, "eucjpms"), (19, "euckr")])
def test_raw_login_with_an_unreadable_collation_is_refused(cs_gw: GatewayProcess, collation_id: int, name: str) -> None:
    with pytest.raises(mywire.MySQLError) as ei:
        raw_login(cs_gw, "alice", SECRETS["alice"], charset=collation_id).close()
    assert _refused_charset(ei.value.errno, ei.value.message, name), ei.value


def test_login_charset_the_server_does_not_know_is_read_as_the_server_reads_it(cs_gw: GatewayProcess, cafe: str) -> None:
    """Collation 255 (MySQL 8's utf8mb4_0900_ai_ci) is unknown to MariaDB 10.11, which falls back
    to its default: the gateway asks the server and reads SQL as it does."""
    with raw_login(cs_gw, "alice", SECRETS["alice"], charset=255) as c:
        assert c.query_rows("select @@character_set_client") == [("utf8mb4",)]
        with pytest.raises(mywire.MySQLError) as ei:
            c.query(f"select * from {cafe}".encode("utf-8"))
        assert ei.value.errno == 1227 and "myh12-no-cafe" in ei.value.message


# -- read as the server reads it -----------------------------------------------------------------


@pytest.mark.parametrize("client", ["pymysql", "connector"])
def test_latin1_client_sql_is_analysed_as_the_server_reads_it(cs_gw: GatewayProcess, cafe: str, client: str) -> None:
    if client == "pymysql":
        conn: Any = pymysql.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"],
                                    database="app", charset="latin1", ssl_disabled=True, autocommit=True)
    else:
        import mysql.connector

        conn = mysql.connector.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"],
                                       database="app", charset="latin1", use_pure=True, ssl_disabled=True)
    try:
        cur = conn.cursor()
        cur.execute("select @@character_set_client")
        assert cur.fetchall()[0][0] == "latin1"
        with pytest.raises(Exception) as ei:
            cur.execute(f"select * from {cafe}")
            cur.fetchall()
        assert "myh12-no-cafe" in str(ei.value), ei.value
    finally:
        conn.close()


def test_latin1_code_points_mariadb_adds_to_windows_1252(cs_gw: GatewayProcess) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"], charset=8) as c:
        for byte in (0x81, 0x8D, 0x8F, 0x90, 0x9D):
            marker = f"myh12-latin1-{byte:02x}"
            c.query(b"select '" + marker.encode() + b"', '" + bytes([byte]) + b"'")
            decided = cs_gw.decided(marker)
            assert decided and chr(byte) in decided[-1]["sql"] or f"\\u00{byte:02x}" in decided[-1]["sql"], decided


def test_binary_client_identifiers_are_read_as_utf8(cs_gw: GatewayProcess, cafe: str) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"], charset=63) as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.query(f"select * from {cafe}".encode("utf-8"))
        assert ei.value.errno == 1227 and "myh12-no-cafe" in ei.value.message, ei.value


def test_reset_connection_restores_the_login_charset_for_analysis(cs_gw: GatewayProcess, cafe: str) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"]) as c:
        c.query("SET NAMES latin1")
        c.reset_connection()
        assert c.query_rows("select @@character_set_client") == [("utf8mb4",)]
        with pytest.raises(mywire.MySQLError) as ei:
            c.query(f"select * from {cafe}".encode("utf-8"))
        assert ei.value.errno == 1227 and "myh12-no-cafe" in ei.value.message, ei.value


@pytest.mark.parametrize("target", ["app", "prod"])
def test_change_user_applies_the_charset_it_carries(cs_gw: GatewayProcess, cafe: str, target: str) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"]) as c:
        c.change_user("bob", SECRETS["bob"], target, charset=8)  # latin1_swedish_ci
        assert c.query_rows("select @@character_set_client") == [("latin1",)]
        with pytest.raises(mywire.MySQLError) as ei:
            c.query(f"select * from {cafe}".encode("cp1252"))
        assert ei.value.errno == 1227 and "myh12-no-cafe" in ei.value.message, ei.value


def test_change_user_to_an_unreadable_charset_is_refused(cs_gw: GatewayProcess) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"]) as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.change_user("bob", SECRETS["bob"], "app", charset=28)
        assert _refused_charset(ei.value.errno, ei.value.message, "gbk"), ei.value


# -- in-session switches --------------------------------------------------------------------------

SWITCHES = [
    "SET NAMES gbk",
    "set names 'big5'",
    "SET NAMES `sjis` COLLATE sjis_bin",
    "SET CHARACTER SET gbk",
    "SET CHARSET cp932",
    "SET character_set_client = gbk",
    "SET character_set_client := 'gbk'",
    "SET @@session.character_set_client = 'gbk'",
    "SET @@character_set_client = 28",
    "SET SESSION character_set_client=big5",
    "SET LOCAL `character_set_client` = gbk",
    "SET @@local.character_set_client = \"gbk\"",
    "/*!40101 SET NAMES gbk */",
    "/*M!100100 SET NAMES gbk */",
    "SET @myh12 = 1, NAMES gbk",
    "SET STATEMENT character_set_client = gbk FOR SELECT 1",
    "SET NAMES utf8mb4; SET NAMES gbk",
    "BEGIN NOT ATOMIC SET NAMES gbk; END",
    "IF 1 THEN SET NAMES gbk; END IF",
    "FOR i IN 1..1 DO SET CHARACTER SET big5; END FOR",
]


@pytest.mark.parametrize("sql", SWITCHES)
def test_in_session_switch_to_an_unreadable_charset_is_refused(cs_gw: GatewayProcess, sql: str) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"], capabilities=mywire.DEFAULT_CAPABILITIES | 1 << 16) as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.query(sql)
        assert ei.value.errno in (1115, 1227), ei.value  # 1227: refused for the database's sake first
        assert c.query_rows("select @@character_set_client") == [("utf8mb4",)]


def test_a_charset_switch_must_be_the_last_statement_of_a_request(cs_gw: GatewayProcess) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"], capabilities=mywire.DEFAULT_CAPABILITIES | 1 << 16) as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("SET NAMES latin1; SELECT 1")
        assert ei.value.errno == 1227 and "character set" in ei.value.message, ei.value
        assert c.query_rows("select @@character_set_client") == [("utf8mb4",)]
        with pytest.raises(mywire.MySQLError):
            c.query("SET character_set_client = @nothing; SELECT 1")
        # a switch to a charset read the same way changes nothing the gateway reads
        results = c.query("SET NAMES utf8mb3; SELECT 2")
        assert len(results) == 2
        assert c.query_rows("select @@character_set_client") == [("utf8mb3",)]


@pytest.mark.parametrize("client", ["pymysql", "connector"])
def test_set_names_gbk_through_drivers_is_refused(cs_gw: GatewayProcess, client: str) -> None:
    if client == "pymysql":
        conn: Any = pymysql.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"],
                                    database="app", charset="utf8mb4", ssl_disabled=True, autocommit=True)
    else:
        import mysql.connector

        conn = mysql.connector.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"],
                                       database="app", use_pure=True, ssl_disabled=True)
    try:
        cur = conn.cursor()
        with pytest.raises(Exception) as ei:
            cur.execute("SET NAMES gbk")
        assert "'gbk'" in str(ei.value) and "utf8mb4" in str(ei.value), ei.value
        cur.execute("select @@character_set_client")
        assert cur.fetchall()[0][0] == "utf8mb4"
    finally:
        conn.close()


@pytest.mark.parametrize("setup,switch", [
    ("SET @myh12_cs = 'gbk'", "SET character_set_client = @myh12_cs"),
    ("SET @myh12_cs = 'gbk'", "SET NAMES DEFAULT"),  # the server default stays utf8mb4: allowed
    ("PREPARE myh12_s FROM 'SET NAMES gbk'", "EXECUTE myh12_s"),  # dynamic SQL: refused by policy
    ("SET @myh12_q = 'SET NAMES big5'", "EXECUTE IMMEDIATE @myh12_q"),
])
def test_computed_switches_fail_closed_until_set_back(cs_gw: GatewayProcess, cafe: str, setup: str, switch: str) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"]) as c:
        try:
            c.query(setup)
            c.query(switch)
        except mywire.MySQLError as exc:  # refused before it ran: the server still reads utf8mb4
            assert exc.errno in (1115, 1227), exc
            assert c.query_rows("select @@character_set_client") == [("utf8mb4",)]
            return
        if switch == "SET NAMES DEFAULT":
            assert c.query_rows("select @@character_set_client") == [("utf8mb4",)]
            return
        # the server now reads gbk: every request is refused, naming it, until it is set back
        for sql in ("select 1", f"select * from {cafe}", "SET NAMES gbk"):
            with pytest.raises(mywire.MySQLError) as ei:
                c.query(sql)
            assert _refused_charset(ei.value.errno, ei.value.message, "gbk"), ei.value
        c.query("SET NAMES utf8mb4")  # pure ASCII, names a readable charset: allowed
        assert c.query_rows("select @@character_set_client") == [("utf8mb4",)]
        with pytest.raises(mywire.MySQLError) as ei:
            c.query(f"select * from {cafe}")
        assert ei.value.errno == 1227 and "myh12-no-cafe" in ei.value.message


def test_prepared_computed_switch_fails_closed_after_its_execution(cs_gw: GatewayProcess) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"]) as c:
        c.query("SET @myh12_cs = 'big5'")
        st = c.stmt_prepare("SET character_set_client = @myh12_cs")
        c.stmt_execute(st)
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("select 1")
        assert _refused_charset(ei.value.errno, ei.value.message, "big5"), ei.value
        c.reset_connection()  # back to the login's character set
        assert c.query_rows("select @@character_set_client, 2") == [("utf8mb4", 2)]


def test_prepared_set_names_is_refused_at_prepare(cs_gw: GatewayProcess) -> None:
    with raw_login(cs_gw, "alice", SECRETS["alice"]) as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.stmt_prepare("SET NAMES gbk")
        assert ei.value.errno == UNSUPPORTED, ei.value


@pytest.mark.parametrize("collation_id,name,refused", [(8, "latin1", False), (28, "gbk", True), (1, "big5", True)])
def test_connector_change_user_charset(cs_gw: GatewayProcess, cafe: str, collation_id: int, name: str,
                                       refused: bool) -> None:
    """mysql-connector's cmd_change_user carries a collation id: read as the server reads it,
    or refused with the same error as at login."""
    import mysql.connector

    conn = mysql.connector.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"],
                                   database="app", use_pure=True, ssl_disabled=True)
    try:
        if refused:
            with pytest.raises(mysql.connector.Error) as ei:
                conn.cmd_change_user(username="bob", password=SECRETS["bob"], database="app", charset=collation_id)
            assert _refused_charset(ei.value.errno, ei.value.msg, name), ei.value
            return
        conn.cmd_change_user(username="bob", password=SECRETS["bob"], database="app", charset=collation_id)
        result = conn.cmd_query("select @@character_set_client")
        rows = conn.get_rows()[0]
        assert rows[0][0] in ("latin1", b"latin1"), (result, rows)
        with pytest.raises(mysql.connector.Error) as ei:
            conn.cmd_query(f"select * from {cafe}".encode("cp1252"))
        assert ei.value.errno == 1227 and "myh12-no-cafe" in ei.value.msg, ei.value
    finally:
        try:
            conn.close()
        except Exception:
            pass


def _mariadb_cli(g: GatewayProcess, *args: str, sql: str) -> Any:
    import subprocess

    return subprocess.run(
        ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(g.port), "-u", "alice",
         f"-p{SECRETS['alice']}", "--skip-ssl", *args, "app", "-e", sql],
        capture_output=True, text=True, timeout=20,
    )


def test_mariadb_cli_in_gbk_is_refused_and_set_names_gbk_too(cs_gw: GatewayProcess) -> None:
    res = _mariadb_cli(cs_gw, "--default-character-set=gbk", sql="select 1")
    assert res.returncode != 0 and "1115" in res.stderr and "'gbk'" in res.stderr, res.stderr
    res = _mariadb_cli(cs_gw, "--default-character-set=utf8mb4", sql="SET NAMES gbk; select @@character_set_client")
    assert res.returncode != 0 and "1115" in res.stderr and "'gbk'" in res.stderr, res.stderr
    res = _mariadb_cli(cs_gw, "--default-character-set=latin1", sql="select @@character_set_client")
    assert res.returncode == 0 and "latin1" in res.stdout, res


def test_pymysql_switch_in_text_the_gateway_cannot_lex_is_refused(cs_gw: GatewayProcess, cafe: str) -> None:
    """`SET NAMES gbk; SELECT '...` is unterminated as the gateway reads it; the server, reading the
    rest in gbk, could see more statements: refused, and the session still reads utf8mb4."""
    from pymysql.constants import CLIENT

    with pymysql.connect(host=cs_gw.host, port=cs_gw.port, user="alice", password=SECRETS["alice"], database="app",
                         charset="utf8mb4", ssl_disabled=True, autocommit=True,
                         client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError):
            cur.execute("SET NAMES latin1; SELECT 'a\\'; SELECT 1; -- ")
        cur.execute("SELECT @@character_set_client")
        assert cur.fetchone()[0] == "utf8mb4"
