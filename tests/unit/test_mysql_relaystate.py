"""adapters/mysql/relaystate.py: the session's bookkeeping without I/O, fed plain bytes and
values: which command a packet is, the prepared statements (decisions, policy versions, masks,
cursor row rewriters), the session's current database and text codec, and the completion record
of a response."""

from __future__ import annotations

import pytest

from sqlward.adapters.mysql.constants import Command
from sqlward.adapters.mysql.maskrelay import RowState
from sqlward.adapters.mysql.packets import ProtocolViolation, encode_packets, lenenc_bytes, lenenc_int
from sqlward.adapters.mysql.relaystate import (
    HIDDEN_ERROR,
    REFUSED_COMMANDS,
    PreparedStatements,
    Route,
    SessionText,
    codec_for_charset,
    codec_for_name,
    command_route,
    completion,
    field_list_sql,
    may_change_database,
    may_read_diagnostics,
    single_text_value,
    unsettled_database,
)
from sqlward.adapters.mysql.response import ResponseScanner, Shape
from sqlward.masking.context import MaskContext, RequestMask
from sqlward.masking.plan import MaskPlan
from sqlward.policy.analysis import analyse

ID7 = (7).to_bytes(4, "little")

# -- commands -------------------------------------------------------------------------------------

ROUTES: list[tuple[bytes, Route]] = [
    (b"\x03select 1", Route("query", Command.QUERY)),
    (b"\x16select ?", Route("prepare", Command.STMT_PREPARE)),
    (b"\x17" + ID7 + b"\x00\x01\x00\x00\x00", Route("execute", Command.STMT_EXECUTE, 7)),
    (b"\x19" + ID7, Route("no-response", Command.STMT_CLOSE, 7)),
    (b"\x19\x07", Route("no-response", Command.STMT_CLOSE)),  # too short to name a statement: passed on
    (b"\x18" + ID7 + b"\x00\x00data", Route("no-response", Command.STMT_SEND_LONG_DATA)),
    (b"\x1c" + ID7 + b"\x0a\x00\x00\x00", Route("fetch", Command.STMT_FETCH, 7)),
    (b"\x1c", Route("fetch", Command.STMT_FETCH)),
    (b"\x0e", Route("pass", Command.PING, shape=Shape.SIMPLE)),
    (b"\x1a" + ID7, Route("pass", Command.STMT_RESET, shape=Shape.SIMPLE)),
    (b"\x1b\x00\x00", Route("pass", Command.SET_OPTION, shape=Shape.SIMPLE)),
    (b"\x09", Route("pass", Command.STATISTICS, shape=Shape.STRING)),
    (b"\x0a", Route("refused", Command.PROCESS_INFO, name="COM_PROCESS_INFO")),
    (b"\x02sqlward_it", Route("init-db", Command.INIT_DB)),
    (b"\x1f", Route("reset", Command.RESET_CONNECTION)),
    (b"\x04users\x00", Route("field-list", Command.FIELD_LIST)),
    (b"\x01", Route("quit", Command.QUIT)),
    (b"\x0c" + (1234).to_bytes(4, "little"), Route("process-kill", Command.PROCESS_KILL, 1234)),
    (b"\x11bob\x00", Route("change-user", Command.CHANGE_USER)),
    (b"\x05db", Route("refused", Command.CREATE_DB, name="COM_CREATE_DB")),
    (b"\x06db", Route("refused", Command.DROP_DB, name="COM_DROP_DB")),
    (b"\x07\x01", Route("refused", Command.REFRESH, name="COM_REFRESH")),
    (b"\x08", Route("refused", Command.SHUTDOWN, name="COM_SHUTDOWN")),
    (b"\x12" + bytes(10), Route("refused", Command.BINLOG_DUMP, name="COM_BINLOG_DUMP")),
    (b"\x15" + bytes(10), Route("refused", Command.REGISTER_SLAVE, name="COM_REGISTER_SLAVE")),
    (b"\x1e" + bytes(10), Route("refused", Command.BINLOG_DUMP_GTID, name="COM_BINLOG_DUMP_GTID")),
    (b"\x20", Route("unknown", 0x20, name="command 0x20")),
    (b"\xfe", Route("unknown", 0xFE, name="command 0xfe")),
    (b"\x00", Route("unknown", 0x00, name="command 0x00")),  # COM_SLEEP is the server's own
]


@pytest.mark.parametrize("payload,route", ROUTES, ids=[f"0x{p[0]:02x}-{r.kind}" for p, r in ROUTES])
def test_command_route(payload: bytes, route: Route) -> None:
    assert command_route(payload) == route


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"", "empty command packet"),
        (b"\x17\x07\x00\x00", "COM_STMT_EXECUTE is truncated"),
        (b"\x0c\x01", "COM_PROCESS_KILL is truncated"),
    ],
)
def test_command_route_refuses_what_cannot_be_a_command(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        command_route(payload)


def test_every_refused_command_is_named_as_the_audit_shows_it() -> None:
    assert sorted(REFUSED_COMMANDS.values()) == sorted([
        "COM_BINLOG_DUMP", "COM_BINLOG_DUMP_GTID", "COM_CONNECT_OUT", "COM_CREATE_DB", "COM_DEBUG", "COM_DROP_DB",
        "COM_PROCESS_INFO", "COM_REFRESH", "COM_REGISTER_SLAVE", "COM_SHUTDOWN", "COM_TABLE_DUMP",
    ])
    for cmd, name in REFUSED_COMMANDS.items():
        assert command_route(bytes([cmd])) == Route("refused", cmd, name=name)


@pytest.mark.parametrize(
    "payload,codec,sql",
    [
        (b"\x04users\x00", "utf-8", "SELECT * FROM `users` LIMIT 0"),
        (b"\x04users\x00col%", "utf-8", "SELECT * FROM `users` LIMIT 0"),  # the wildcard is not SQL
        (b"\x04we`ird\x00", "utf-8", "SELECT * FROM `we``ird` LIMIT 0"),
        (b"\x04t", "utf-8", "SELECT * FROM `t` LIMIT 0"),  # no NUL
        (b"\x04caf\xe9\x00", "cp1252", "SELECT * FROM `café` LIMIT 0"),
        (b"\x04caf\xe9\x00", "utf-8", "SELECT * FROM `caf\udce9` LIMIT 0"),  # bytes kept, never an error
    ],
)
def test_field_list_sql(payload: bytes, codec: str, sql: str) -> None:
    assert field_list_sql(payload, codec) == sql


# -- prepared statements -----------------------------------------------------------------------------


def _mask() -> MaskContext:
    return MaskContext(request=RequestMask(plan=MaskPlan(columns=())))


def test_prepared_statements_lifecycle() -> None:
    ps = PreparedStatements()
    mask = _mask()
    ps.add(7, request_id=3, sql="select * from t where id = ?", policy_version=1, mask=mask)
    ps.add(8, request_id=4, sql="select 1", policy_version=1, mask=None)
    assert len(ps) == 2
    p = ps.get(7)
    assert p is not None and (p.request_id, p.sql, p.policy_version, p.mask) == (3, "select * from t where id = ?", 1, mask)
    assert ps.get(9) is None
    # decided under the policy in force: not stale; after a reload it is, until decided again
    assert ps.stale(7, 1) is None and ps.stale(9, 2) is None
    assert ps.stale(7, 2) is p
    other = _mask()
    ps.redecided(7, 2, other)
    assert ps.stale(7, 2) is None and ps.mask(7) is other and ps.get(7).request_id == 3  # type: ignore[union-attr]
    ps.close(8)
    ps.close(8)  # closing twice (or an unknown id) is harmless, as on the server
    assert ps.get(8) is None and len(ps) == 1
    ps.clear()
    assert len(ps) == 0 and ps.mask(7) is None


def test_cursor_fetch_needs_the_row_rewriter_of_its_execution() -> None:
    ps = PreparedStatements()
    ps.add(1, 1, "select email from users", 1, _mask())  # masked
    ps.add(2, 2, "select 1", 1, None)  # nothing to mask
    # no execution seen yet: a FETCH of the masked statement cannot be masked
    assert ps.fetch_unmaskable(1) and not ps.fetch_unmaskable(2) and not ps.fetch_unmaskable(3)
    rows = RowState(None, None)
    ps.executed(1, rows)
    assert ps.cursor_rows(1) is rows and not ps.fetch_unmaskable(1)
    ps.executed(1, None)  # an execution without a cursor
    assert ps.cursor_rows(1) is None and ps.fetch_unmaskable(1)
    ps.executed(99, rows)  # unknown statement: ignored
    assert ps.cursor_rows(99) is None


# -- the session's text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "charset,codec", [(45, "utf-8"), (224, "utf-8"), (33, "utf-8"), (8, "mysql-latin1"), (47, "mysql-latin1"),
                      (63, "utf-8"), (11, "ascii"), (255, "utf-8"), (0, "utf-8"), (28, None), (1, None), (95, None),
                      (35, None)],
)
def test_codec_for_charset(charset: int, codec: str | None) -> None:
    """Issue 12: binary identifiers are UTF-8 to the server; MariaDB's latin1 is cp1252 plus five
    code points; multi-byte charsets other than UTF-8 have no codec (refused); unknown ids read as
    UTF-8 until the server says."""
    assert codec_for_charset(charset) == codec


@pytest.mark.parametrize(
    "name,codec", [("utf8mb4", "utf-8"), ("UTF8", "utf-8"), ("latin1", "mysql-latin1"), ("binary", "utf-8"),
                   ("ascii", "ascii"), ("koi8r", None), ("gbk", None)],
)
def test_codec_for_name(name: str, codec: str | None) -> None:
    assert codec_for_name(name) == codec


def test_session_text_follows_the_server_and_set_names() -> None:
    """The database comes from the server (COM_INIT_DB accepted, SESSION_TRACK_SCHEMA, the
    answer to SELECT DATABASE()), never from the text of a USE (issue 11)."""
    text = SessionText(45, schema="sqlward_it")
    assert (text.schema, text.charset, text.codec) == ("sqlward_it", 45, "utf-8")
    text.query_succeeded("USE shop", analyse("USE shop", "mysql"))
    assert text.schema == "sqlward_it"  # asked of the server instead (may_change_database)
    text.server_says(b"shop")
    assert text.schema == "shop"
    text.tracked(None)
    assert text.schema == "shop"
    text.tracked("other")
    assert text.schema == "other"
    assert text.follow("latin1")  # the session follows SET NAMES (charsets.client_charset_effect)
    assert text.codec == "mysql-latin1" and text.decode(b"caf\xe9\x81") == "café\x81"
    assert not text.follow("gbk") and text.codec == "mysql-latin1"
    text.server_says(b"caf\xe9")  # the answer is in the connection's character set
    assert text.schema == "café"
    text.server_says(None)  # DROP DATABASE of the current one: no database
    assert text.schema == ""
    text.set_charset(63)
    assert text.codec == "utf-8"
    text.init_db_succeeded(b"\x02sqlward_it2")
    assert text.schema == "sqlward_it2"


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("USE other", True),
        ("/*!USE other*/", True),
        ("SELECT 1; USE other", True),
        ("USE other; SELECT * FROM nowhere", True),
        ("EXECUTE IMMEDIATE 'USE other'", True),
        ("EXECUTE s", True),
        ("CALL other.p()", True),
        ("DROP DATABASE sqlward_b11_gone", True),
        ("DROP SCHEMA IF EXISTS x", True),
        ("this is not sql", True),
        ("SET STATEMENT max_statement_time=10 FOR USE other", True),  # MariaDB runs it
        ("SET STATEMENT max_statement_time=10 FOR SELECT 1", True),
        ("REPLACE INTO t VALUES (1)", False),
        ("LOCK TABLES t READ", False),
        ("SHOW COUNT(*) WARNINGS", False),
        ("SELECT * FROM t", False),
        ("INSERT INTO t VALUES (1)", False),
        ("DROP TABLE t", False),
        ("PREPARE s FROM 'USE other'", True),  # not parsed by sqlglot: asked (fail closed)
        ("SET @a = 1", False),
        ("SHOW WARNINGS", False),
    ],
)
def test_may_change_database(sql: str, expected: bool) -> None:
    assert may_change_database(analyse(sql, "mysql")) is expected
    assert may_change_database(None)


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT diag_msg()", True),
        ("SET @x = f()", True),
        ("DO f()", True),
        ("CALL p()", True),
        ("SELECT UPPER(name) FROM t", True),
        ("SELECT 1", False),
        ("SELECT @@warning_count", False),
        ("SHOW WARNINGS", False),
        ("SELECT * FROM t", False),
    ],
)
def test_may_read_diagnostics(sql: str, expected: bool) -> None:
    assert may_read_diagnostics(analyse(sql, "mysql")) is expected


def _framed(*payloads: bytes) -> bytes:
    out, seq = [], 1
    for p in payloads:
        out.append(len(p).to_bytes(3, "little") + bytes([seq]) + p)
        seq += 1
    return b"".join(out)


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_single_text_value(deprecate_eof: bool) -> None:
    coldef = b"\x03def\x00\x00\x00\x0aDATABASE()\x00\x0c\x21\x00\x00\x01\x00\x00\xfd\x00\x00\x1f\x00\x00"
    eof = b"\xfe\x00\x00\x02\x00"
    end = b"\xfe\x00\x00\x02\x00\x00\x00" if deprecate_eof else eof
    head = [b"\x01", coldef] + ([] if deprecate_eof else [eof])
    assert single_text_value(_framed(*head, b"\x04shop", end), deprecate_eof=deprecate_eof) == b"shop"
    assert single_text_value(_framed(*head, b"\xfb", end), deprecate_eof=deprecate_eof) is None
    long = b"d" * 300
    assert single_text_value(_framed(*head, b"\xfc" + (300).to_bytes(2, "little") + long, end),
                             deprecate_eof=deprecate_eof) == long
    with pytest.raises(ProtocolViolation):
        single_text_value(_framed(*head, end), deprecate_eof=deprecate_eof)  # no row
    with pytest.raises(ProtocolViolation):
        single_text_value(_framed(b"\x00\x00\x00\x02\x00\x00\x00"), deprecate_eof=deprecate_eof)  # an OK


def test_session_text_decode_keeps_every_byte() -> None:
    text = SessionText(45)
    sql = text.decode(b"select '\xff\xfe'")
    assert sql.encode("utf-8", "surrogateescape") == b"select '\xff\xfe'"


# -- completion records --------------------------------------------------------------------------------


def _scanned(shape: Shape, *payloads: bytes) -> ResponseScanner:
    data = b"".join(encode_packets(p, i + 1)[0] for i, p in enumerate(payloads))
    scanner = ResponseScanner(shape, deprecate_eof=True)
    assert scanner.scan(bytearray(data)) == len(data) and scanner.done
    return scanner


OK3 = b"\x00\x03\x00\x02\x00\x00\x00"
ERR = b"\xff\x7a\x04#42S02Table 'db.nope' doesn't exist"
END = b"\xfe\x00\x00\x02\x00\x00\x00"
COLUMN = b"\x03def" + b"\x00" * 5 + lenenc_bytes(b"a") + b"\x0c" + bytes(12)


def test_completion_of_ok_error_and_rows() -> None:
    ok = completion(_scanned(Shape.RESULTSET, OK3), request_id=4, prepared_ref=None, duration_ms=1.5)
    assert (ok.request_id, ok.prepared_ref, ok.tags, ok.rows, ok.error, ok.sqlstate, ok.masked) == (
        4, None, ("OK 3",), 3, None, None, {})
    failed = completion(_scanned(Shape.RESULTSET, ERR), request_id=5, prepared_ref=2, duration_ms=0.2)
    assert (failed.tags, failed.rows, failed.error, failed.sqlstate, failed.prepared_ref) == (
        ("ERROR",), None, "Table 'db.nope' doesn't exist", "42S02", 2)
    rows = completion(
        _scanned(Shape.RESULTSET, lenenc_int(1), COLUMN, lenenc_bytes(b"x"), lenenc_bytes(b"y"), END),
        request_id=6, prepared_ref=None, duration_ms=3.0, masked={"a (r: redact)": 2},
    )
    assert (rows.tags, rows.rows, rows.duration_ms, rows.masked) == (("ROWS 2",), 2, 3.0, {"a (r: redact)": 2})


def test_completion_hides_the_error_of_a_masked_statement() -> None:
    event = completion(_scanned(Shape.RESULTSET, ERR), request_id=1, prepared_ref=None, duration_ms=0.1,
                       error_hidden=True)
    assert event.error == HIDDEN_ERROR and event.sqlstate == "42S02"


# -- messages under masking (issue 11) -------------------------------------------------------------

from sqlward.adapters.mysql.relaystate import mask_rule, reads_diagnostics, reads_masked_values  # noqa: E402
from sqlward.masking.context import RequestMask  # noqa: E402
from sqlward.masking.model import MaskSpec  # noqa: E402
from sqlward.masking.plan import MaskPlan  # noqa: E402
from sqlward.policy.analysis import analyse  # noqa: E402


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT", True),
        ("get current diagnostics condition 1 @m = message_text", True),
        ("GET STACKED DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT", True),
        ("get/**/diagnostics/**/condition 1 @m = message_text", True),
        ("/*!50500GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT*/", True),
        ("PREPARE s FROM 'GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT'", True),
        ("CREATE PROCEDURE p() BEGIN GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT; END", True),
        ("GET DIAGNOSTICS @n = NUMBER", False),
        ("SELECT diagnostics, condition_id FROM get_table", False),
        ("SHOW WARNINGS", False),
    ],
)
def test_reads_diagnostics(sql: str, expected: bool) -> None:
    assert reads_diagnostics(sql) is expected


def test_reads_masked_values_and_the_rule_named() -> None:
    spec = MaskSpec(function="email", rule_id="pii-email")
    table = analyse("SELECT CAST(email AS SIGNED) FROM customers", "mysql")
    no_table = analyse("SELECT CAST('abc' AS SIGNED)", "mysql")
    assert not reads_masked_values(None, table)
    assert reads_masked_values(MaskContext(request=RequestMask(redact_errors=True)), table)
    assert not reads_masked_values(MaskContext(request=RequestMask()), table)
    classifiers = MaskContext(request=RequestMask(), classifiers=frozenset({"email"}))
    assert reads_masked_values(classifiers, table)  # a classifier covers every text value read
    assert not reads_masked_values(classifiers, no_table)
    assert mask_rule(None) == "masking"
    assert mask_rule(MaskContext(request=RequestMask(plan=MaskPlan(columns=(None, spec))))) == "pii-email"
    assert mask_rule(MaskContext(request=RequestMask(), by_name={("s.t", "c"): spec})) == "pii-email"


@pytest.mark.parametrize(
    "sql, masked, expected",
    [
        ("SELECT * FROM t", False, None),
        ("USE other; SELECT * FROM t", False, None),  # the pipeline follows a parsed USE
        ("USE other; SELECT * FROM t", True, 2),  # the mask plan does not
        ("USE other; SELECT 1", True, None),
        ("/*!USE other*/; SELECT * FROM t", True, 2),
        ("SET STATEMENT max_statement_time=1 FOR USE other; SELECT * FROM t", False, 2),
        ("SELECT 1; EXECUTE IMMEDIATE 'USE other'; SELECT 2; INSERT INTO t VALUES (1)", False, 4),
        ("CALL p(); SELECT * FROM t", False, 2),
        ("DROP DATABASE d; SELECT * FROM t", False, 2),
        ("SELECT * FROM t; USE other", True, None),
        ("REPLACE INTO t VALUES (1); SELECT * FROM t", False, None),
        ("SELECT 1; SELECT * FROM t", True, None),
    ],
)
def test_unsettled_database(sql: str, masked: bool, expected: int | None) -> None:
    assert unsettled_database(analyse(sql, "mysql"), masked=masked) == expected
    assert unsettled_database(None, masked=masked) is None
