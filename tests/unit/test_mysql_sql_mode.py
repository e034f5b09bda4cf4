"""sql_mode that changes how the server reads SQL text (`adapters.mysql.charsets`, sql_mode part):
what a request's text does to sql_mode, which modes are refused, what the server's @@sql_mode
says, and the completion of a cursor fetch (`relaystate.completion`)."""

from __future__ import annotations

import pytest

from sqlward.adapters.mysql.charsets import (
    REFUSED_SQL_MODES, lexing_sql_mode, refused_sql_mode, sql_mode_effect,
)
from sqlward.adapters.mysql.errors import SQL_MODE_RULE, SqlModeRefused, SqlModeSwitchNotLast, error_reply
from sqlward.adapters.mysql.relaystate import completion
from sqlward.adapters.mysql.response import ResponseScanner, Shape


@pytest.mark.parametrize("sql,mode", [
    ("SET sql_mode = 'NO_BACKSLASH_ESCAPES'", "NO_BACKSLASH_ESCAPES"),
    ("set sql_mode='ansi_quotes'", "ANSI_QUOTES"),
    ("SET SESSION sql_mode = 'STRICT_TRANS_TABLES, ANSI_QUOTES'", "ANSI_QUOTES"),
    ("SET LOCAL sql_mode = ANSI", "ANSI"),
    ("SET GLOBAL sql_mode = 'ORACLE'", "ORACLE"),
    ("SET @@sql_mode = \"MSSQL\"", "MSSQL"),
    ("SET @@session.sql_mode := 'DB2'", "DB2"),
    ("SET @@local.`sql_mode` = `POSTGRESQL`", "POSTGRESQL"),
    ("SET @a = 1, sql_mode = 'MAXDB', @b = 2", "MAXDB"),
    ("SET NAMES utf8mb4, SQL_MODE = 'NO_BACKSLASH_ESCAPES'", "NO_BACKSLASH_ESCAPES"),
    ("/*!40101 SET SQL_MODE='ANSI_QUOTES' */", "ANSI_QUOTES"),
    ("/*M!100101 SET SQL_MODE='ANSI_QUOTES' */", "ANSI_QUOTES"),
    ("SET STATEMENT sql_mode = 'ANSI_QUOTES' FOR SELECT \"x\"", "ANSI_QUOTES"),
    ("BEGIN NOT ATOMIC SET sql_mode = 'NO_BACKSLASH_ESCAPES'; END", "NO_BACKSLASH_ESCAPES"),
    ("CREATE PROCEDURE p() SET sql_mode = 'ANSI'", "ANSI"),
    ("SELECT 1; SET sql_mode = 'ANSI_QUOTES'", "ANSI_QUOTES"),
])
def test_named_lexing_modes_are_refused(sql: str, mode: str) -> None:
    effect = sql_mode_effect(sql)
    assert effect.switches and effect.refused() == mode


@pytest.mark.parametrize("sql", [
    "SET sql_mode = 'STRICT_TRANS_TABLES'", "SET sql_mode = 'TRADITIONAL'", "SET SESSION sql_mode = ''",
    "SET sql_mode = 'PIPES_AS_CONCAT,IGNORE_SPACE,ONLY_FULL_GROUP_BY'", "SET @@sql_mode = NO_ENGINE_SUBSTITUTION",
])
def test_readable_modes_are_settled_and_accepted(sql: str) -> None:
    effect = sql_mode_effect(sql)
    assert effect.named and not effect.unsettled and effect.refused() is None


@pytest.mark.parametrize("sql", [
    "SET sql_mode = @m", "SET sql_mode = DEFAULT", "SET sql_mode = 4", "SET sql_mode = CONCAT(@@sql_mode, ',ANSI')",
    "SET sql_mode = 'ANSI' 'QUOTES'", "SET sql_mode = _latin1'ANSI_QUOTES'", "SET sql_mode = X'414E5349'",
    "SET sql_mode = 'ANSI\\_QUOTES'", "SET sql_mode = ?", "EXECUTE s", "EXECUTE IMMEDIATE @q",
    "SET sql_mode = (SELECT m FROM t)", "SET sql_mode = REPLACE(@@sql_mode, 'STRICT', '')",
])
def test_values_the_text_does_not_settle(sql: str) -> None:
    effect = sql_mode_effect(sql)
    assert effect.unsettled and effect.refused() is None


@pytest.mark.parametrize("sql,after,embedded", [
    ("SET sql_mode = @m; SELECT 1", 2, False),
    ("SET sql_mode = DEFAULT; DROP TABLE t", 2, False),
    ("SET STATEMENT sql_mode = @m FOR SELECT 1", 0, True),
    ("BEGIN NOT ATOMIC SET sql_mode = @m; PREPARE s FROM @q; EXECUTE s; END", 2, True),
    ("SET GLOBAL sql_mode = @m", 0, True),
    ("SET @@global.sql_mode = DEFAULT", 0, True),
])
def test_unsettled_switch_with_more(sql: str, after: int, embedded: bool) -> None:
    effect = sql_mode_effect(sql)
    assert effect.unsettled and (effect.after_switch, effect.embedded) == (after, embedded)


@pytest.mark.parametrize("sql", [
    "SELECT 'sql_mode'", "SELECT @@sql_mode", "UPDATE t SET sql_mode = 'ANSI'", "INSERT INTO t SET sql_mode = 'x'",
    "SET @sql_mode = 'ANSI_QUOTES'", "GRANT EXECUTE ON PROCEDURE p TO u", "SET NAMES utf8mb4",
    "SELECT * FROM sql_mode_log",
])
def test_requests_that_do_not_touch_sql_mode(sql: str) -> None:
    assert not sql_mode_effect(sql).switches


def test_refused_modes_match_mariadb_combination_modes() -> None:
    # MariaDB 10.11: ANSI, ORACLE, MSSQL, DB2, POSTGRESQL, MAXDB each set ANSI_QUOTES.
    assert REFUSED_SQL_MODES == {"NO_BACKSLASH_ESCAPES", "ANSI_QUOTES", "ANSI", "ORACLE", "MSSQL", "DB2",
                                 "POSTGRESQL", "MAXDB"}
    assert refused_sql_mode("TRADITIONAL,MYSQL40") is None
    assert refused_sql_mode(" ansi ") == "ANSI"


@pytest.mark.parametrize("server,flag", [
    ("STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION", None),
    ("REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ANSI", "ANSI_QUOTES"),
    ("STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES", "NO_BACKSLASH_ESCAPES"),
    ("", None),
])
def test_server_sql_mode(server: str, flag: str | None) -> None:
    assert lexing_sql_mode(server) == flag


def test_refusals_name_the_rule_and_the_mode() -> None:
    for error in (SqlModeRefused("ANSI_QUOTES"), SqlModeRefused("ANSI_QUOTES", lost=True),
                  SqlModeRefused("ANSI_QUOTES", login=True)):
        reply = error_reply(error)
        assert reply.payload is not None and f'"{SQL_MODE_RULE}"' in reply.message and "ANSI_QUOTES" in reply.message
        assert (error.errno, error.sqlstate) == (1227, "42000")
    assert SQL_MODE_RULE in SqlModeSwitchNotLast(2).message


def _packet(payload: bytes, seq: int) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def test_fetch_completion_counts_its_rows() -> None:
    scanner = ResponseScanner(Shape.FETCH, deprecate_eof=False)
    rows = b"".join(_packet(b"\x00\x00" + bytes([i]) + b"\x00\x00\x00", i) for i in range(3))
    eof = _packet(b"\xfe\x00\x00\x80\x00", 3)  # EOF, SERVER_STATUS_LAST_ROW_SENT
    data = rows + eof
    n = scanner.scan(bytearray(data))
    assert scanner.done and n == len(data)
    record = completion(scanner, request_id=1, prepared_ref=None, duration_ms=0.0)
    assert record.tags == ("ROWS 3",) and record.rows == 3


def test_status_flag_no_backslash_escapes_fails_closed() -> None:
    """Every OK / EOF carries SERVER_STATUS_NO_BACKSLASH_ESCAPES: once it is seen, the session
    refuses requests (whatever path set the mode)."""
    from sqlward.adapters.mysql.session import MysqlSession

    s = MysqlSession.__new__(MysqlSession)
    s._mode_lost = ""
    s._server_status(0x0002)  # AUTOCOMMIT
    assert s._mode_lost == ""
    s._server_status(0x0202)
    assert s._mode_lost == "NO_BACKSLASH_ESCAPES"


def test_text_the_gateway_cannot_lex_is_refused() -> None:
    effect = sql_mode_effect("SET sql_mode='NO_BACKSLASH_ESCAPES'; SELECT 'a\\'; DROP TABLE t; -- ")
    assert effect.unsettled and effect.embedded
