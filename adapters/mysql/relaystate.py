"""Sans-IO bookkeeping of one MySQL / MariaDB session's command phase.

What the trio driver (`session.py`) keeps between commands that needs no socket, so it can be
tested with plain values:

- `command_route(payload)`: what a command packet is and how the relay handles it (judged SQL,
  a prepared-statement command, a command passed through with the response shape to expect, a
  command the gateway refuses), with the statement id of the COM_STMT_* commands read and
  truncated packets rejected;
- `PreparedStatements`: per statement id, the request id of its decision (what the completion
  records of its executions refer to), its SQL and the policy version it was decided under
  (decided again after a reload), its mask context, and the row rewriter of the cursor an
  execution opened (COM_STMT_FETCH rows are masked with it; a fetch with none is refused);
- `SessionText`: the current database and the Python codec of the connection's character set
  (handshake, SET NAMES, COM_CHANGE_USER), for the SQL text the pipeline judges. The database
  qualifies unqualified table names for rules and masking, so it must be the server's: it is
  set from COM_INIT_DB (the name sent, when the server accepted it), from SESSION_TRACK_SCHEMA
  when the server reports it (clients with CLIENT_SESSION_TRACK), and after any request that may
  have changed it in a way the text does not settle (`may_change_database`: USE, even inside a
  multi-statement that failed half-way, EXECUTE [IMMEDIATE], CALL, DROP DATABASE, anything the
  analyser could not parse) the session asks the server (`SELECT DATABASE()`, read with
  `single_text_value`); `unsettled_database` finds the statement of a multi-statement request
  whose tables cannot be named because an earlier statement may have moved the database;
- `completion(...)`: the `statement.completed` event of a response, from its scanner;
- `reads_masked_values`, `reads_diagnostics`, `mask_rule`: what the message rule of a session
  under masking needs (see `session.py`): whether a request reads values a masking rule covers
  (its warnings and errors may quote them), whether its text can copy a condition of the
  diagnostics area (GET DIAGNOSTICS ... CONDITION), and the rule to name in a refusal.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from sqlward.adapters.mysql.charsets import charset_of_collation, codec_of
from sqlward.adapters.mysql.charsets import decode as decode_text
from sqlward.adapters.mysql.charsets import encode as encode_text
from sqlward.adapters.mysql.constants import Command
from sqlward.adapters.mysql.maskrelay import RowState
from sqlward.adapters.mysql.packets import ProtocolViolation
from sqlward.adapters.mysql.response import ResponseScanner, Shape
from sqlward.adapters.text import REDACTED_ERROR
from sqlward.audit.events import StatementCompleted
from sqlward.masking.context import MaskContext
from sqlward.policy.model import Analysis, StatementFacts

__all__ = [
    "HIDDEN_ERROR", "REFUSED_COMMANDS", "Prepared", "PreparedStatements", "Route", "SessionText",
    "codec_for_charset", "codec_for_name", "command_route", "completion", "field_list_sql", "mask_rule",
    "may_change_database", "may_read_diagnostics", "unsettled_database", "reads_diagnostics", "reads_masked_values", "single_text_value",
]

# -- commands ------------------------------------------------------------------------------------

# Commands that bypass SQL policy or the gateway's control of the session: refused, and named
# so in the audit trail ("<COM_DROP_DB>").
REFUSED_COMMANDS: dict[int, str] = {
    Command.CREATE_DB: "COM_CREATE_DB", Command.DROP_DB: "COM_DROP_DB",
    Command.REFRESH: "COM_REFRESH", Command.SHUTDOWN: "COM_SHUTDOWN",
    Command.DEBUG: "COM_DEBUG", Command.BINLOG_DUMP: "COM_BINLOG_DUMP",
    Command.TABLE_DUMP: "COM_TABLE_DUMP", Command.REGISTER_SLAVE: "COM_REGISTER_SLAVE",
    Command.BINLOG_DUMP_GTID: "COM_BINLOG_DUMP_GTID", Command.CONNECT_OUT: "COM_CONNECT_OUT",
    # SHOW PROCESSLIST without SQL: every session of the shared upstream user, other identities'
    # statement texts with their literals, past the policy and the masks (SHOW PROCESSLIST as
    # SQL is judged like any statement).
    Command.PROCESS_INFO: "COM_PROCESS_INFO",
}

# Commands passed through as they came, and the shape of their response (they run no statement:
# no decision, no completion record).
_PASS_THROUGH: dict[int, Shape] = {
    Command.PING: Shape.SIMPLE, Command.STMT_RESET: Shape.SIMPLE, Command.SET_OPTION: Shape.SIMPLE,
    Command.STATISTICS: Shape.STRING,
}

RouteKind = Literal[
    "query", "prepare", "execute", "fetch", "no-response", "pass", "init-db", "reset", "field-list",
    "quit", "process-kill", "change-user", "refused", "unknown",
]


class Route(NamedTuple):
    """How the relay handles one command packet."""

    kind: RouteKind
    command: int
    # COM_STMT_EXECUTE / FETCH / CLOSE: the statement id; COM_PROCESS_KILL: the connection id.
    number: int | None = None
    # "pass": the response's shape.
    shape: Shape = Shape.SIMPLE
    # "refused" / "unknown": the name the audit record and the refusal give the command.
    name: str = ""


# Routes that depend on the command byte alone, built once (the hot path is one dict lookup).
_FIXED: dict[int, Route] = {
    Command.QUERY: Route("query", Command.QUERY),
    Command.STMT_PREPARE: Route("prepare", Command.STMT_PREPARE),
    Command.STMT_SEND_LONG_DATA: Route("no-response", Command.STMT_SEND_LONG_DATA),
    Command.INIT_DB: Route("init-db", Command.INIT_DB),
    Command.RESET_CONNECTION: Route("reset", Command.RESET_CONNECTION),
    Command.FIELD_LIST: Route("field-list", Command.FIELD_LIST),
    Command.QUIT: Route("quit", Command.QUIT),
    Command.CHANGE_USER: Route("change-user", Command.CHANGE_USER),
    **{cmd: Route("pass", cmd, shape=shape) for cmd, shape in _PASS_THROUGH.items()},
    **{cmd: Route("refused", cmd, name=name) for cmd, name in REFUSED_COMMANDS.items()},
}
_EXECUTE, _CLOSE, _FETCH, _PROCESS_KILL = (
    int(Command.STMT_EXECUTE), int(Command.STMT_CLOSE), int(Command.STMT_FETCH), int(Command.PROCESS_KILL),
)


def _number(payload: bytes, what: str) -> int:
    if len(payload) < 5:
        raise ProtocolViolation(f"{what} is truncated")
    return int.from_bytes(payload[1:5], "little")


def command_route(payload: bytes) -> Route:
    """What the command packet `payload` is (see `Route`); ProtocolViolation when it cannot be
    a command (empty, or a COM_STMT_EXECUTE / COM_PROCESS_KILL without its id)."""
    if not payload:
        raise ProtocolViolation("empty command packet")
    cmd = payload[0]
    route = _FIXED.get(cmd)
    if route is not None:
        return route
    if cmd == _EXECUTE:
        return Route("execute", cmd, _number(payload, "COM_STMT_EXECUTE"))
    if cmd == _CLOSE or cmd == _FETCH:
        number = int.from_bytes(payload[1:5], "little") if len(payload) >= 5 else None
        return Route("no-response" if cmd == _CLOSE else "fetch", cmd, number)
    if cmd == _PROCESS_KILL:
        return Route("process-kill", cmd, _number(payload, "COM_PROCESS_KILL"))
    return Route("unknown", cmd, name=f"command 0x{cmd:02x}")


def field_list_sql(payload: bytes, codec: str) -> str:
    """COM_FIELD_LIST reads a table's columns: the SELECT it amounts to, for the pipeline."""
    table = decode_text(payload[1:].split(b"\0", 1)[0], codec)
    return "SELECT * FROM `" + table.replace("`", "``") + "` LIMIT 0"


# -- prepared statements -----------------------------------------------------------------------------


@dataclass(slots=True)
class Prepared:
    """One statement prepared through the gateway."""

    request_id: int  # of its statement.decided record
    sql: str
    policy_version: int  # the policy it was decided under
    mask: MaskContext | None = None
    # The row rewriter of the cursor its last execution opened (None: no cursor, or nothing to mask).
    cursor_rows: RowState | None = None
    # Its executions read values a masking rule covers (`reads_masked_values`).
    reads_masked: bool = False
    # Its text can copy a diagnostics condition (`reads_diagnostics`).
    diagnostics: bool = False
    # An execution may change the current database (`may_change_database`).
    changes_db: bool = False
    # An execution calls functions, which may read the diagnostics area (`may_read_diagnostics`).
    calls_functions: bool = True
    # The current database when it was prepared: the server resolves its table names there for
    # every execution, whatever the session's database is by then.
    schema: str = ""


class PreparedStatements:
    """The session's prepared statements by id (see the module doc)."""

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[int, Prepared] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(
        self, stmt_id: int, request_id: int, sql: str, policy_version: int, mask: MaskContext | None,
        *, reads_masked: bool = False, analysis: Analysis | None = None, schema: str = "",
    ) -> None:
        """The server accepted a COM_STMT_PREPARE the pipeline allowed (`analysis`: the
        pipeline's, None when unknown: then an execution is assumed to do anything)."""
        self._by_id[stmt_id] = Prepared(
            request_id, sql, policy_version, mask, reads_masked=reads_masked, diagnostics=reads_diagnostics(sql),
            changes_db=may_change_database(analysis), calls_functions=may_read_diagnostics(analysis), schema=schema,
        )

    def get(self, stmt_id: int) -> Prepared | None:
        return self._by_id.get(stmt_id)

    def stale(self, stmt_id: int, policy_version: int) -> Prepared | None:
        """The statement when it was decided under another policy than `policy_version` (it
        must be decided again before it runs), else None."""
        prepared = self._by_id.get(stmt_id)
        if prepared is None or prepared.policy_version == policy_version:
            return None
        return prepared

    def redecided(
        self, stmt_id: int, policy_version: int, mask: MaskContext | None, *, reads_masked: bool = False,
    ) -> None:
        """The pipeline allowed it again under `policy_version`; its executions keep referring
        to the first decision."""
        prepared = self._by_id[stmt_id]
        prepared.policy_version = policy_version
        prepared.mask = mask
        prepared.reads_masked = reads_masked

    def mask(self, stmt_id: int) -> MaskContext | None:
        prepared = self._by_id.get(stmt_id)
        return prepared.mask if prepared is not None else None

    def executed(self, stmt_id: int, cursor_rows: RowState | None) -> None:
        """A masked execution ended; `cursor_rows` is the row rewriter of the cursor it opened."""
        prepared = self._by_id.get(stmt_id)
        if prepared is not None:
            prepared.cursor_rows = cursor_rows

    def cursor_rows(self, stmt_id: int) -> RowState | None:
        prepared = self._by_id.get(stmt_id)
        return prepared.cursor_rows if prepared is not None else None

    def fetch_unmaskable(self, stmt_id: int) -> bool:
        """A COM_STMT_FETCH whose rows need masking but whose cursor has no row rewriter (it was
        opened in a way the relay did not see): it must be refused."""
        prepared = self._by_id.get(stmt_id)
        return prepared is not None and prepared.mask is not None and prepared.cursor_rows is None

    def close(self, stmt_id: int) -> None:
        self._by_id.pop(stmt_id, None)

    def clear(self) -> None:
        """COM_RESET_CONNECTION / COM_CHANGE_USER: the server forgot every statement."""
        self._by_id.clear()


# -- the text of the session ----------------------------------------------------------------------

def codec_for_charset(charset_id: int) -> str | None:
    """The codec that reads a collation id's character set as the server does (handshake,
    COM_CHANGE_USER); None when that character set is refused (`charsets`). An id the gateway
    does not know reads as UTF-8 until the server says which character set it took."""
    name = charset_of_collation(charset_id)
    return "utf-8" if name is None else codec_of(name)


def codec_for_name(name: str) -> str | None:
    """The codec of a character set name (SET NAMES); None: refused."""
    return codec_of(name)


class SessionText:
    """The current database and the client character set (see the module doc): `charset` is
    the collation id of the last login (handshake or COM_CHANGE_USER), what COM_RESET_CONNECTION
    returns to; `name` and `codec` are the character set the server reads client text in now."""

    __slots__ = ("schema", "charset", "codec", "name")

    def __init__(self, charset: int, schema: str = "") -> None:
        self.schema = schema
        self.charset = charset
        self.name = charset_of_collation(charset) or "utf8mb4"
        self.codec = codec_for_charset(charset) or "utf-8"

    def decode(self, data: bytes) -> str:
        """Client text as the pipeline reads it (any bytes survive: surrogateescape)."""
        return decode_text(data, self.codec)

    def encode(self, text: str) -> bytes:
        """Text the gateway sends in the client's character set (a database name)."""
        return encode_text(text, self.codec)

    def set_charset(self, charset: int) -> None:
        """A login (handshake, COM_CHANGE_USER) with collation `charset`; the caller has refused
        a character set without a codec before."""
        self.charset = charset
        self.name = charset_of_collation(charset) or self.name
        self.codec = codec_for_charset(charset) or "utf-8"

    def follow(self, name: str) -> bool:
        """The server now reads client text in `name`; False (nothing changed) when it is refused."""
        codec = codec_of(name)
        if codec is None:
            return False
        self.name, self.codec = name.lower(), codec
        return True

    def query_succeeded(self, sql: str, analysis: Analysis | None) -> None:
        """A COM_QUERY the server ran without error. (The database is never taken from the text:
        see `may_change_database`; the character set is followed by the session from
        `charsets.client_charset_effect` and the server's word.)"""

    def init_db_succeeded(self, payload: bytes) -> None:
        """COM_INIT_DB <schema> succeeded."""
        self.schema = self.decode(payload[1:])

    def tracked(self, schema: str | None) -> None:
        """The server reported the current database (SESSION_TRACK_SCHEMA), if `schema`."""
        if schema is not None:
            self.schema = schema

    def server_says(self, value: bytes | None) -> None:
        """The server's answer to SELECT DATABASE() (None: NULL, no database)."""
        self.schema = "" if value is None else self.decode(value)


# Operations after which the current database may differ from before in a way the statement
# text does not settle: USE (a multi-statement can fail after it, its name can be quoted
# oddly), dynamic SQL (EXECUTE [IMMEDIATE] can run a USE: MariaDB prepares USE), CALL
# (routines cannot run USE, the server restores the caller's database, but a routine may run
# dynamic SQL), a statement the analyser could not read.
_DB_CHANGING = frozenset({"use", "execute", "call", "unknown", "change user"})


# Statements sqlglot could not parse whose leading keyword still settles that they cannot change
# the database (REPLACE, LOCK TABLES, SHOW COUNT(*) WARNINGS, ...). Not SET: MariaDB runs
# `SET STATEMENT var = value FOR USE db`.
_UNPARSED_SAFE = frozenset({"select", "insert", "update", "delete", "lock", "show"})


def may_change_database(analysis: Analysis | None) -> bool:
    """Must the session ask the server for its current database after this request ran (with
    or without error)? Also DROP DATABASE / SCHEMA (the current one leaves the session on none)."""
    if analysis is None or analysis.parse_status == "error":
        return True
    if analysis.parse_status != "ok" and not _UNPARSED_SAFE.issuperset(analysis.operations):
        return True
    if _DB_CHANGING.intersection(analysis.operations):
        return True
    return any(st.operation == "drop" and st.detail in ("database", "schema") for st in analysis.statements)


def _moves_database(st: StatementFacts, *, use_followed: bool) -> bool:
    """May this statement change the current database (`use_followed`: a parsed USE is one the
    pipeline follows itself for the statements after it)?"""
    if st.operation == "use" and st.parse_status == "ok":
        return not use_followed
    if st.parse_status == "error":
        return True
    if st.parse_status != "ok" and not _UNPARSED_SAFE.issuperset(st.operations or (st.operation,)):
        return True
    if _DB_CHANGING.intersection(st.operations or (st.operation,)):
        return True
    return st.operation == "drop" and st.detail in ("database", "schema")


def unsettled_database(analysis: Analysis | None, *, masked: bool) -> int | None:
    """In a multi-statement request, the 1-based number of the first statement that names
    tables (or cannot be read) after a statement that may have moved the current database in a
    way the pipeline did not follow when it judged the request: SET STATEMENT ... FOR USE,
    EXECUTE [IMMEDIATE], CALL, DROP DATABASE, anything unparsed; for a session under masking
    a plain USE too (the mask plan qualifies every statement with the database the request
    started in). None when there is none: the request may run. The gateway refuses the request
    otherwise (fail closed): the statements can be sent one at a time."""
    if analysis is None or len(analysis.statements) < 2:
        return None
    moved = False
    for i, st in enumerate(analysis.statements):
        if moved and (st.tables_read or st.tables_written or st.parse_status != "ok"):
            return i + 1
        moved = moved or _moves_database(st, use_followed=not masked)
    return None


def may_read_diagnostics(analysis: Analysis | None) -> bool:
    """Can this request run code that reads the session's diagnostics area (a stored function or
    procedure sees its caller's warnings: `GET DIAGNOSTICS` in its body)? Any function call, CALL
    or DO, or a statement the analyser could not read."""
    if analysis is None or analysis.parse_status != "ok":
        return True
    if {"call", "do", "execute", "unknown"}.intersection(analysis.operations):
        return True
    return any(st.functions for st in analysis.statements)


def single_text_value(response: bytes, *, deprecate_eof: bool) -> bytes | None:
    """The one value of a one-row, one-column text result set (the whole response, as bytes on
    the wire); None for NULL. ProtocolViolation when the response is not that."""
    payloads: list[bytes] = []
    pos = 0
    while pos + 4 <= len(response):
        length = int.from_bytes(response[pos : pos + 3], "little")
        payloads.append(response[pos + 4 : pos + 4 + length])
        pos += 4 + length
    first_row = 2 if deprecate_eof else 3  # column count, definition, [EOF]
    if len(payloads) < first_row + 2 or payloads[0][:1] != b"\x01":
        raise ProtocolViolation("expected a one-column result set")
    row = payloads[first_row]
    if not row or row[0] in (0xFE, 0xFF):
        raise ProtocolViolation("expected one row")
    if row[0] == 0xFB:
        return None
    n, start = row[0], 1
    if n == 0xFC:
        n, start = int.from_bytes(row[1:3], "little"), 3
    elif n == 0xFD:
        n, start = int.from_bytes(row[1:4], "little"), 4
    elif n == 0xFE or n == 0xFF:
        raise ProtocolViolation("value too long")
    value = row[start : start + n]
    if len(value) != n:
        raise ProtocolViolation("truncated row")
    return value


def text_row_values(response: bytes, *, deprecate_eof: bool) -> tuple[bytes | None, ...]:
    """The values of the one row of a text result set (the whole response, as bytes on the
    wire); None for NULL. ProtocolViolation when the response is not one row."""
    payloads: list[bytes] = []
    pos = 0
    while pos + 4 <= len(response):
        length = int.from_bytes(response[pos : pos + 3], "little")
        payloads.append(response[pos + 4 : pos + 4 + length])
        pos += 4 + length
    if not payloads or not payloads[0] or payloads[0][0] >= 0xFB:
        raise ProtocolViolation("expected a result set")
    columns = payloads[0][0]
    first_row = 1 + columns + (0 if deprecate_eof else 1)
    if len(payloads) < first_row + 2:
        raise ProtocolViolation("expected one row")
    row = payloads[first_row]
    if not row or row[0] == 0xFF or (row[0] == 0xFE and len(row) < 9):
        raise ProtocolViolation("expected one row")
    values: list[bytes | None] = []
    i = 0
    for _ in range(columns):
        if i >= len(row):
            raise ProtocolViolation("truncated row")
        n, start = row[i], i + 1
        if n == 0xFB:
            values.append(None)
            i += 1
            continue
        if n == 0xFC:
            n, start = int.from_bytes(row[i + 1 : i + 3], "little"), i + 3
        elif n == 0xFD:
            n, start = int.from_bytes(row[i + 1 : i + 4], "little"), i + 4
        elif n >= 0xFE:
            raise ProtocolViolation("value too long")
        value = row[start : start + n]
        if len(value) != n:
            raise ProtocolViolation("truncated row")
        values.append(value)
        i = start + n
    return tuple(values)


# -- messages of sessions under masking -----------------------------------------------------------

# GET [CURRENT | STACKED] DIAGNOSTICS CONDITION n target = MESSAGE_TEXT, ...: the three keywords,
# each in any case and anywhere (comments, `/*!50700GET ...*/`, a routine body, a PREPARE or
# EXECUTE IMMEDIATE string). A false positive only refuses a statement of a session that has read
# masked columns.
_DIAGNOSTICS_WORDS = tuple(
    re.compile(rf"(?<![A-Za-z_$]){word}(?![A-Za-z0-9_$])", re.IGNORECASE)
    for word in ("GET", "DIAGNOSTICS", "CONDITION")
)


def reads_diagnostics(sql: str) -> bool:
    """Can this text copy a condition of the diagnostics area (its MESSAGE_TEXT) somewhere?"""
    return all(word.search(sql) for word in _DIAGNOSTICS_WORDS)


def reads_masked_values(mask: MaskContext | None, analysis: Analysis | None) -> bool:
    """Does a request read values a masking rule covers, so that the server's messages about it
    (errors, warnings, notes) may quote them? A statement touching a table with masked columns
    (the plan's `redact_errors`); with content classifiers, any statement reading a table (or
    whose tables are unknown)."""
    if mask is None:
        return False
    if mask.request.redact_errors:
        return True
    return bool(mask.classifiers) and (analysis is None or bool(analysis.tables) or analysis.parse_status != "ok")


def mask_rule(mask: MaskContext | None) -> str:
    """The masking rule to name for a request's masked values ("masking" when none is known)."""
    if mask is not None:
        plan = mask.request.plan
        for spec in (*plan.columns, plan.mask_rest, *mask.by_name.values(), mask.classifier_spec):
            if spec is not None and spec.rule_id:
                return spec.rule_id
        if mask.request.rule_id:
            return mask.request.rule_id
    return "masking"


# -- completion records ----------------------------------------------------------------------------

HIDDEN_ERROR = "(hidden: the statement reads masked columns)"


def completion(
    scanner: ResponseScanner, *, request_id: int, prepared_ref: int | None, duration_ms: float,
    masked: dict[str, int] | None = None, error_hidden: bool = False, redact: bool = False,
) -> StatementCompleted:
    """`statement.completed` of one response: ERROR, ROWS n (a result set) or OK n (affected
    rows), the server's error and SQLSTATE, the masked-value counts."""
    failed = scanner.error_code is not None
    # COM_STMT_FETCH answers with rows of the cursor's result set (its columns came with the
    # execution): its completion counts the rows it returned.
    rowset = bool(scanner.column_count) or scanner.shape == Shape.FETCH
    if failed:
        tags: tuple[str, ...] = ("ERROR",)
    elif rowset:
        tags = (f"ROWS {scanner.rows}",)
    else:
        tags = (f"OK {scanner.affected_rows or 0}",)
    return StatementCompleted(
        request_id=request_id, prepared_ref=prepared_ref, tags=tags,
        rows=scanner.rows if rowset else scanner.affected_rows,
        duration_ms=duration_ms,
        error=HIDDEN_ERROR if error_hidden else (
            (REDACTED_ERROR if redact else scanner.error_message) if failed else None
        ),
        sqlstate=(scanner.error_sqlstate or None) if failed else None,
        masked=masked or {},
    )
