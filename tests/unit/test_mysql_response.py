"""adapters/mysql/response.py: the sans-IO scanner that finds where a server response ends.

Byte tables of real response shapes (OK, ERR, EOF, result sets with and without
CLIENT_DEPRECATE_EOF, multi-results with SERVER_MORE_RESULTS_EXISTS, COM_STMT_PREPARE answers,
COM_FIELD_LIST, the COM_STATISTICS string, a LOCAL INFILE request and what follows it, cursors
with SERVER_STATUS_CURSOR_EXISTS and their COM_STMT_FETCH), each fed whole, one byte at a time
and with the next response's bytes behind it (h11's tests/test_io.py style): the scanner must
forward exactly the response, never a byte of what follows, and report the same outcome
however the bytes arrive. A hypothesis property checks arbitrary chunkings of generated
responses against feeding them whole.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlward.adapters.mysql import messages
from sqlward.adapters.mysql.constants import FieldType
from sqlward.adapters.mysql.packets import MAX_PACKET_CHUNK, ProtocolViolation, encode_packets, lenenc_bytes, lenenc_int
from sqlward.adapters.mysql.response import ResponseScanner, Shape

AUTOCOMMIT = 0x0002
MORE = 0x0008  # SERVER_MORE_RESULTS_EXISTS
CURSOR = 0x0040  # SERVER_STATUS_CURSOR_EXISTS
LAST_ROW = 0x0080  # SERVER_STATUS_LAST_ROW_SENT


# -- payloads, spelt out ----------------------------------------------------------------------


def ok(affected: int = 0, status: int = AUTOCOMMIT, last_id: int = 0) -> bytes:
    """OK: 0x00, affected rows, last insert id (lenenc), status, warnings."""
    return b"\x00" + lenenc_int(affected) + lenenc_int(last_id) + status.to_bytes(2, "little") + b"\x00\x00"


def ok_eof(status: int = AUTOCOMMIT, affected: int = 0) -> bytes:
    """The 0xFE-headed OK that ends rows (and FIELD_LIST) under CLIENT_DEPRECATE_EOF."""
    return b"\xfe" + lenenc_int(affected) + b"\x00" + status.to_bytes(2, "little") + b"\x00\x00"


def eof(status: int = AUTOCOMMIT, warnings: int = 0) -> bytes:
    """EOF: 0xFE, warnings, status (the reverse order of OK)."""
    return b"\xfe" + warnings.to_bytes(2, "little") + status.to_bytes(2, "little")


def err(errno: int, sqlstate: str, message: str) -> bytes:
    return b"\xff" + errno.to_bytes(2, "little") + b"#" + sqlstate.encode() + message.encode()


PROGRESS = b"\xff\xff\xff" + b"\x01\x02" + (500).to_bytes(3, "little") + lenenc_bytes(b"copy to tmp table")


def column(name: str, table: str = "t") -> bytes:
    return messages.encode(messages.ColumnDefinition41(
        schema="db", table=table, org_table=table, name=name, org_name=name, character_set=45,
        column_length=200, column_type=int(FieldType.VAR_STRING),
    ))


def text_row(*values: bytes | None) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_bytes(v) for v in values)


def binary_row(*ints: int) -> bytes:
    """A binary-protocol row of INT columns, none NULL: 0x00, the NULL bitmap, the values."""
    bitmap = bytes((len(ints) + 7 + 2) // 8)
    return b"\x00" + bitmap + b"".join(i.to_bytes(4, "little", signed=True) for i in ints)


def prepare_ok(stmt_id: int, columns: int, params: int, warnings: int = 0) -> bytes:
    return (b"\x00" + stmt_id.to_bytes(4, "little") + columns.to_bytes(2, "little") + params.to_bytes(2, "little")
            + b"\x00" + warnings.to_bytes(2, "little"))


def resultset(columns: list[str], rows: list[bytes], *, deprecate_eof: bool, status: int = AUTOCOMMIT) -> list[bytes]:
    out = [lenenc_int(len(columns))] + [column(c) for c in columns]
    if not deprecate_eof:
        out.append(eof())
    out += rows
    out.append(ok_eof(status) if deprecate_eof else eof(status))
    return out


def wire(payloads: list[bytes], first_seq: int = 1) -> bytes:
    out = b""
    seq = first_seq
    for p in payloads:
        data, seq = encode_packets(p, seq)
        out += data
    return out


# -- feeding ---------------------------------------------------------------------------------------


@dataclass
class Fed:
    forwarded: bytes  # what scan() said may go to the client
    leftover: bytes  # bytes received but not consumed, plus bytes never fed
    outcome: dict[str, object]
    infile: bool = False


def outcome(s: ResponseScanner) -> dict[str, object]:
    return {
        "done": s.done, "rows": s.rows, "affected_rows": s.affected_rows, "results": s.results,
        "error_code": s.error_code, "error_sqlstate": s.error_sqlstate, "error_message": s.error_message,
        "statement_id": s.statement_id, "param_count": s.param_count, "column_count": s.column_count,
        "status": s.status,
    }


def feed(scanner: ResponseScanner, data: bytes, sizes: list[int] | None = None) -> Fed:
    """Feed `data` in chunks of `sizes` (repeating the last; None: whole), as the relay does:
    append, scan, forward what scan() allows, drop it from the buffer; stop at the end of the
    response or at a LOCAL INFILE request."""
    buf = bytearray()
    forwarded = bytearray()
    pos = 0
    i = 0
    while True:
        if pos < len(data):
            size = len(data) if sizes is None else sizes[min(i, len(sizes) - 1)]
            i += 1
            buf += data[pos : pos + size]
            pos += size
        n = scanner.scan(buf)
        assert 0 <= n <= len(buf)
        forwarded += buf[:n]
        del buf[:n]
        if scanner.done or scanner.wants_infile:
            break
        if pos >= len(data):
            break
    return Fed(bytes(forwarded), bytes(buf) + data[pos:], outcome(scanner), scanner.wants_infile)


WHOLE: list[int] | None = None
BYTEWISE = [1]
TRAILER = wire([ok(7)], first_seq=0)  # the next command's response, already in the buffer


# -- the byte tables -------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    shape: Shape
    deprecate_eof: bool
    payloads: list[bytes]
    expect: dict[str, object] = field(default_factory=dict)

    def expected(self) -> dict[str, object]:
        base: dict[str, object] = {
            "done": True, "rows": 0, "affected_rows": None, "results": 0, "error_code": None, "error_sqlstate": "",
            "error_message": "", "statement_id": None, "param_count": 0, "column_count": 0, "status": 0,
        }
        base.update(self.expect)
        return base


# CLIENT_SESSION_TRACK: info, then the session state (here SESSION_TRACK_SCHEMA -> "sqlward_it").
TRACKED = AUTOCOMMIT | 0x4000  # SERVER_SESSION_STATE_CHANGED
TRACK_INFO = lenenc_bytes(b"") + lenenc_bytes(b"\x01" + lenenc_bytes(lenenc_bytes(b"sqlward_it")))
ROWS3 = [text_row(b"1", b"alice"), text_row(b"2", None), text_row(b"3", b"")]
CASES: list[Case] = [
    # -- SIMPLE: COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, COM_STMT_RESET, COM_SET_OPTION
    Case("simple-ok", Shape.SIMPLE, False, [ok()], {"affected_rows": 0, "status": AUTOCOMMIT}),
    Case("simple-ok-in-trans", Shape.SIMPLE, True, [ok(status=0x0001)], {"affected_rows": 0, "status": 1}),
    Case("simple-err", Shape.SIMPLE, False, [err(1049, "42000", "Unknown database 'x'")],
         {"error_code": 1049, "error_sqlstate": "42000", "error_message": "Unknown database 'x'"}),
    Case("simple-eof", Shape.SIMPLE, False, [eof(AUTOCOMMIT, warnings=1)], {"status": AUTOCOMMIT}),
    # -- RESULTSET: COM_QUERY, COM_STMT_EXECUTE, COM_PROCESS_INFO
    Case("query-ok", Shape.RESULTSET, False, [ok(3)], {"affected_rows": 3, "results": 1, "status": AUTOCOMMIT}),
    Case("query-ok-large-affected", Shape.RESULTSET, True, [ok(70000, last_id=1 << 40)],
         {"affected_rows": 70000, "results": 1, "status": AUTOCOMMIT}),
    Case("query-err", Shape.RESULTSET, False, [err(1146, "42S02", "Table 'db.nope' doesn't exist")],
         {"error_code": 1146, "error_sqlstate": "42S02", "error_message": "Table 'db.nope' doesn't exist"}),
    Case("query-err-pre41", Shape.RESULTSET, False, [b"\xff\x15\x04Access denied"],
         {"error_code": 1045, "error_message": "Access denied"}),
    Case("resultset", Shape.RESULTSET, False, resultset(["id", "v"], ROWS3, deprecate_eof=False),
         {"rows": 3, "results": 1, "column_count": 2, "status": AUTOCOMMIT}),
    Case("resultset-deprecate-eof", Shape.RESULTSET, True, resultset(["id", "v"], ROWS3, deprecate_eof=True),
         {"rows": 3, "results": 1, "column_count": 2, "status": AUTOCOMMIT, "affected_rows": None}),
    Case("resultset-empty", Shape.RESULTSET, False, resultset(["id"], [], deprecate_eof=False),
         {"results": 1, "column_count": 1, "status": AUTOCOMMIT}),
    Case("resultset-empty-deprecate-eof", Shape.RESULTSET, True, resultset(["id"], [], deprecate_eof=True),
         {"results": 1, "column_count": 1, "status": AUTOCOMMIT}),
    Case("resultset-all-null-row", Shape.RESULTSET, True, resultset(["a", "b"], [text_row(None, None)], deprecate_eof=True),
         {"rows": 1, "results": 1, "column_count": 2, "status": AUTOCOMMIT}),
    Case("resultset-long-values", Shape.RESULTSET, True,
         resultset(["a", "b"], [text_row(b"v" * 300, b"w" * 70000), text_row(b"w" * 70000, None)], deprecate_eof=True),
         {"rows": 2, "results": 1, "column_count": 2, "status": AUTOCOMMIT}),
    Case("resultset-session-track", Shape.RESULTSET, True,
         resultset(["a"], [text_row(b"1")], deprecate_eof=True)[:-1] + [ok_eof(TRACKED) + TRACK_INFO],
         {"rows": 1, "results": 1, "column_count": 1, "status": TRACKED}),
    Case("query-ok-session-track", Shape.RESULTSET, True, [ok(1, status=TRACKED) + TRACK_INFO],
         {"affected_rows": 1, "results": 1, "status": TRACKED}),
    Case("resultset-251-columns", Shape.RESULTSET, False,
         resultset([f"c{i}" for i in range(251)], [text_row(*[b"x"] * 251)], deprecate_eof=False),
         {"rows": 1, "results": 1, "column_count": 251, "status": AUTOCOMMIT}),
    Case("resultset-err-mid-rows", Shape.RESULTSET, False,
         [lenenc_int(1), column("x"), eof(), text_row(b"1"), err(1365, "22012", "Division by 0")],
         {"rows": 1, "column_count": 1, "error_code": 1365, "error_sqlstate": "22012", "error_message": "Division by 0",
          "status": AUTOCOMMIT}),
    Case("resultset-progress-then-ok", Shape.RESULTSET, False, [PROGRESS, PROGRESS, ok(1)],
         {"affected_rows": 1, "results": 1, "status": AUTOCOMMIT}),
    # -- multi-results (SERVER_MORE_RESULTS_EXISTS): multi-statements, CALL
    Case("multi-two-resultsets", Shape.RESULTSET, False,
         resultset(["a"], [text_row(b"1")], deprecate_eof=False, status=AUTOCOMMIT | MORE)
         + resultset(["b"], [text_row(b"2"), text_row(b"3")], deprecate_eof=False),
         {"rows": 3, "results": 2, "column_count": 1, "status": AUTOCOMMIT}),
    Case("multi-two-resultsets-deprecate-eof", Shape.RESULTSET, True,
         resultset(["a"], [text_row(b"1")], deprecate_eof=True, status=AUTOCOMMIT | MORE)
         + resultset(["b", "c"], [text_row(b"2", b"x")], deprecate_eof=True),
         {"rows": 2, "results": 2, "column_count": 2, "status": AUTOCOMMIT}),
    Case("multi-ok-then-resultset", Shape.RESULTSET, True,
         [ok(2, status=AUTOCOMMIT | MORE)] + resultset(["a"], [text_row(b"1")], deprecate_eof=True),
         {"rows": 1, "results": 2, "column_count": 1, "affected_rows": 2, "status": AUTOCOMMIT}),
    Case("multi-call", Shape.RESULTSET, False,
         resultset(["a"], [text_row(b"1")], deprecate_eof=False, status=AUTOCOMMIT | MORE) + [ok(0)],
         {"rows": 1, "results": 2, "column_count": 1, "affected_rows": 0, "status": AUTOCOMMIT}),
    Case("multi-second-fails", Shape.RESULTSET, False,
         resultset(["a"], [text_row(b"1")], deprecate_eof=False, status=AUTOCOMMIT | MORE)
         + [err(1064, "42000", "You have an error in your SQL syntax")],
         {"rows": 1, "results": 1, "column_count": 1, "status": AUTOCOMMIT | MORE, "error_code": 1064,
          "error_sqlstate": "42000", "error_message": "You have an error in your SQL syntax"}),
    Case("multi-oks", Shape.RESULTSET, False, [ok(1, status=AUTOCOMMIT | MORE), ok(2, status=AUTOCOMMIT | MORE), ok(3)],
         {"affected_rows": 6, "results": 3, "status": AUTOCOMMIT}),
    # -- binary rows (COM_STMT_EXECUTE without a cursor)
    Case("execute-binary-rows", Shape.RESULTSET, False,
         [lenenc_int(2), column("a"), column("b"), eof(), binary_row(1, 2), binary_row(-1, 0), eof()],
         {"rows": 2, "results": 1, "column_count": 2, "status": AUTOCOMMIT}),
    # -- cursors: COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY ends after the metadata
    Case("cursor-open", Shape.RESULTSET, False, [lenenc_int(2), column("a"), column("b"), eof(AUTOCOMMIT | CURSOR)],
         {"column_count": 2, "status": AUTOCOMMIT | CURSOR}),
    Case("cursor-open-deprecate-eof", Shape.RESULTSET, True,
         [lenenc_int(2), column("a"), column("b"), ok_eof(AUTOCOMMIT | CURSOR)],
         {"column_count": 2, "status": AUTOCOMMIT | CURSOR}),
    Case("fetch", Shape.FETCH, False, [binary_row(1), binary_row(2), eof(AUTOCOMMIT | CURSOR)],
         {"rows": 2, "results": 1, "status": AUTOCOMMIT | CURSOR}),
    Case("fetch-last", Shape.FETCH, True, [binary_row(3), ok_eof(AUTOCOMMIT | CURSOR | LAST_ROW)],
         {"rows": 1, "results": 1, "status": AUTOCOMMIT | CURSOR | LAST_ROW}),
    Case("fetch-empty", Shape.FETCH, False, [eof(AUTOCOMMIT | LAST_ROW)], {"results": 1, "status": AUTOCOMMIT | LAST_ROW}),
    Case("fetch-err", Shape.FETCH, False, [err(1243, "HY000", "Unknown prepared statement handler")],
         {"error_code": 1243, "error_sqlstate": "HY000", "error_message": "Unknown prepared statement handler"}),
    # -- COM_STMT_PREPARE
    Case("prepare-params-columns", Shape.PREPARE, False,
         [prepare_ok(7, 3, 2), column("?"), column("?"), eof(), column("a"), column("b"), column("c"), eof()],
         {"statement_id": 7, "param_count": 2, "column_count": 3}),
    Case("prepare-params-columns-deprecate-eof", Shape.PREPARE, True,
         [prepare_ok(7, 3, 2), column("?"), column("?"), column("a"), column("b"), column("c")],
         {"statement_id": 7, "param_count": 2, "column_count": 3}),
    Case("prepare-nothing", Shape.PREPARE, False, [prepare_ok(1, 0, 0)], {"statement_id": 1}),
    Case("prepare-columns-only", Shape.PREPARE, False, [prepare_ok(2, 2, 0), column("a"), column("b"), eof()],
         {"statement_id": 2, "column_count": 2}),
    Case("prepare-columns-only-deprecate-eof", Shape.PREPARE, True, [prepare_ok(2, 2, 0), column("a"), column("b")],
         {"statement_id": 2, "column_count": 2}),
    Case("prepare-params-only", Shape.PREPARE, False, [prepare_ok(3, 0, 1, warnings=1), column("?"), eof()],
         {"statement_id": 3, "param_count": 1}),
    Case("prepare-params-only-deprecate-eof", Shape.PREPARE, True, [prepare_ok(3, 0, 1), column("?")],
         {"statement_id": 3, "param_count": 1}),
    Case("prepare-big-id", Shape.PREPARE, True, [prepare_ok(0xFFFFFFFE, 0, 0)], {"statement_id": 0xFFFFFFFE}),
    Case("prepare-err", Shape.PREPARE, False, [err(1146, "42S02", "Table 'db.t' doesn't exist")],
         {"error_code": 1146, "error_sqlstate": "42S02", "error_message": "Table 'db.t' doesn't exist"}),
    # -- COM_FIELD_LIST: column definitions until EOF (or the 0xFE OK)
    Case("field-list", Shape.FIELD_LIST, False, [column("id"), column("v"), eof()]),
    Case("field-list-deprecate-eof", Shape.FIELD_LIST, True, [column("id"), ok_eof()]),
    Case("field-list-empty", Shape.FIELD_LIST, False, [eof()]),
    Case("field-list-err", Shape.FIELD_LIST, False, [err(1146, "42S02", "Table 'db.x' doesn't exist")],
         {"error_code": 1146, "error_sqlstate": "42S02", "error_message": "Table 'db.x' doesn't exist"}),
    # -- COM_STATISTICS: one packet of text, whatever its first byte
    Case("statistics", Shape.STRING, False,
         [b"Uptime: 3600  Threads: 1  Questions: 12  Slow queries: 0  Opens: 33  Open tables: 26  Queries per second avg: 0.003"]),
    Case("statistics-ff", Shape.STRING, False, [b"\xff odd but text"]),
    Case("statistics-empty", Shape.STRING, True, [b""]),
]


def _params(cases: list[Case]) -> list[object]:
    return [pytest.param(c, id=c.name) for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
@pytest.mark.parametrize("sizes", [WHOLE, BYTEWISE, [3], [5, 1, 7]], ids=["whole", "bytewise", "by3", "5-1-7"])
def test_scanner_byte_table(case: Case, sizes: list[int] | None) -> None:
    data = wire(case.payloads)
    fed = feed(ResponseScanner(case.shape, deprecate_eof=case.deprecate_eof), data, sizes)
    assert fed.outcome == case.expected()
    assert fed.forwarded == data and fed.leftover == b"" and not fed.infile


@pytest.mark.parametrize("case", _params(CASES))
@pytest.mark.parametrize("sizes", [WHOLE, BYTEWISE], ids=["whole", "bytewise"])
def test_scanner_leaves_trailing_data(case: Case, sizes: list[int] | None) -> None:
    """The next response's bytes behind this one are never forwarded as part of it."""
    data = wire(case.payloads)
    fed = feed(ResponseScanner(case.shape, deprecate_eof=case.deprecate_eof), data + TRAILER, sizes)
    assert fed.outcome == case.expected()
    assert fed.forwarded == data and fed.leftover == TRAILER


@pytest.mark.parametrize("case", _params(CASES))
def test_scanner_incomplete_response_is_not_done(case: Case) -> None:
    """Cut anywhere before its last byte, a response is not complete, and what was forwarded
    is a prefix of it."""
    data = wire(case.payloads)
    for cut in sorted({0, 1, 4, len(data) // 2, len(data) - 1}):
        if cut >= len(data):
            continue
        scanner = ResponseScanner(case.shape, deprecate_eof=case.deprecate_eof)
        fed = feed(scanner, data[:cut], BYTEWISE)
        assert not scanner.done, cut
        assert data.startswith(fed.forwarded) and fed.forwarded + fed.leftover == data[:cut]


# -- LOCAL INFILE -----------------------------------------------------------------------------------


INFILE_REQUEST = b"\xfb/tmp/data.csv"


@pytest.mark.parametrize("deprecate_eof", [False, True])
@pytest.mark.parametrize("sizes", [WHOLE, BYTEWISE], ids=["whole", "bytewise"])
def test_local_infile_request_then_resume(deprecate_eof: bool, sizes: list[int] | None) -> None:
    """0xFB asks the client for a file: the scanner stops right after the request (the relay
    then carries the file), and after `resume_after_infile` the server's OK ends the response."""
    request = wire([INFILE_REQUEST], first_seq=1)
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=deprecate_eof)
    fed = feed(scanner, request + b"\x00\x00\x00\x09", sizes)  # bytes behind it are not looked at
    assert fed.infile and not scanner.done
    assert fed.forwarded == request and fed.leftover == b"\x00\x00\x00\x09"
    # the client sent the file (seq 2..n); the server answers with the next sequence id
    scanner.resume_after_infile()
    answer = wire([ok(3)], first_seq=4)
    fed = feed(scanner, answer + TRAILER, sizes)
    assert fed.outcome == Case("", Shape.RESULTSET, deprecate_eof, [], {"affected_rows": 3, "results": 1,
                                                                         "status": AUTOCOMMIT}).expected()
    assert fed.forwarded == answer and fed.leftover == TRAILER


def test_local_infile_refused_by_the_server_after_the_file() -> None:
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=False)
    assert feed(scanner, wire([INFILE_REQUEST])).infile
    scanner.resume_after_infile()
    fed = feed(scanner, wire([err(1148, "42000", "The used command is not allowed with this MariaDB version")], 3))
    assert scanner.done and fed.outcome["error_code"] == 1148


def test_local_infile_in_a_multi_statement() -> None:
    """`INSERT ...; LOAD DATA LOCAL ...`: the first OK says more results, then the request."""
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=True)
    first = wire([ok(1, status=AUTOCOMMIT | MORE), INFILE_REQUEST])
    fed = feed(scanner, first, BYTEWISE)
    assert fed.infile and fed.forwarded == first and scanner.results == 1
    scanner.resume_after_infile()
    fed = feed(scanner, wire([ok(5)], 5))
    assert scanner.done and scanner.results == 2 and scanner.affected_rows == 6


# -- payloads of 16 MiB and more (split into 0xFFFFFF chunks) -------------------------------------


def _big_row(size: int) -> bytes:
    """A one-column text row of `size` bytes: 0xFD + 3-byte length, or 0xFE + 8-byte length for
    values of 16 MiB and more (such a row starts with 0xFE: only its length tells it from a
    terminator)."""
    head = 4 if size - 4 < 1 << 24 else 9
    return lenenc_bytes(b"x" * (size - head))


@pytest.mark.parametrize(
    "size,deprecate_eof",
    [(MAX_PACKET_CHUNK - 1, False), (MAX_PACKET_CHUNK, True), (MAX_PACKET_CHUNK + 1, False),
     (2 * MAX_PACKET_CHUNK + 5, True)],
)
def test_large_rows_are_streamed_and_counted_once(size: int, deprecate_eof: bool) -> None:
    row = _big_row(size)
    assert len(row) == size
    payloads = resultset(["blob"], [text_row(b"a"), row, text_row(b"b")], deprecate_eof=deprecate_eof)
    data = wire(payloads)
    expected = {"done": True, "rows": 3, "results": 1, "column_count": 1, "status": AUTOCOMMIT}
    for sizes in (WHOLE, [65536, 1, 7, 1 << 20]):
        scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=deprecate_eof)
        fed = feed(scanner, data + TRAILER, sizes)
        assert {k: fed.outcome[k] for k in expected} == expected, sizes
        assert fed.forwarded == data and fed.leftover == TRAILER


def test_large_row_is_forwarded_before_it_is_whole() -> None:
    """A row bigger than the buffer is passed on as it arrives (never held whole)."""
    data = wire(resultset(["blob"], [_big_row(MAX_PACKET_CHUNK + 100)], deprecate_eof=True))
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=True)
    header_end = len(wire([lenenc_int(1), column("blob")]))
    chunk = header_end + 1000  # metadata plus the start of the row
    buf = bytearray(data[:chunk])
    assert scanner.scan(buf) == chunk and not scanner.done and scanner.rows == 1


# -- malformed responses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,payloads",
    [
        (Shape.PREPARE, [ok()]),  # an OK is too short to be a PREPARE_OK
        (Shape.PREPARE, [b"\x01" + bytes(11)]),
        (Shape.RESULTSET, [b"\x00"]),  # an OK without its affected-rows integer
        (Shape.RESULTSET, [b"\xfc\x01"]),  # truncated column count
        (Shape.RESULTSET, [b"\xfc\x00\x00"]),  # a 3-byte zero: not an OK, and no columns
        (Shape.RESULTSET, [b"\xfe\x01"]),  # 0xFE where a column count or OK must be
    ],
    ids=["prepare-ok-short", "prepare-bad-header", "ok-truncated", "count-truncated", "zero-columns", "bad-count"],
)
def test_malformed_responses_raise_protocol_violation(shape: Shape, payloads: list[bytes]) -> None:
    scanner = ResponseScanner(shape, deprecate_eof=False)
    with pytest.raises(ProtocolViolation):
        scanner.scan(bytearray(wire(payloads)))


# -- property: how the bytes arrive does not matter ---------------------------------------------------


values = st.one_of(st.none(), st.binary(max_size=40))


@st.composite
def responses(draw: st.DrawFn) -> tuple[Shape, bool, list[bytes]]:
    deprecate_eof = draw(st.booleans())
    kind = draw(st.sampled_from(["results", "prepare", "fetch", "field-list", "simple", "string"]))
    if kind == "results":
        payloads: list[bytes] = []
        count = draw(st.integers(1, 3))
        for i in range(count):
            last = i == count - 1
            status = AUTOCOMMIT | (0 if last else MORE)
            what = draw(st.sampled_from(["ok", "rows", "err"] if last else ["ok", "rows"]))
            if what == "ok":
                payloads.append(ok(draw(st.integers(0, 1 << 20)), status=status))
            elif what == "err":
                payloads.append(err(draw(st.integers(1000, 4000)), "HY000", draw(st.text(max_size=30))))
            else:
                ncols = draw(st.integers(1, 4))
                rows = [text_row(*draw(st.lists(values, min_size=ncols, max_size=ncols)))
                        for _ in range(draw(st.integers(0, 5)))]
                payloads += resultset([f"c{j}" for j in range(ncols)], rows, deprecate_eof=deprecate_eof, status=status)
        if draw(st.booleans()):
            payloads.insert(0, PROGRESS)
        return Shape.RESULTSET, deprecate_eof, payloads
    if kind == "prepare":
        params, cols = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        payloads = [prepare_ok(draw(st.integers(1, 1 << 31)), cols, params)]
        payloads += [column("?") for _ in range(params)] + ([] if deprecate_eof or not params else [eof()])
        payloads += [column(f"c{j}") for j in range(cols)] + ([] if deprecate_eof or not cols else [eof()])
        return Shape.PREPARE, deprecate_eof, payloads
    if kind == "fetch":
        rows = [binary_row(*draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=3)))
                for _ in range(draw(st.integers(0, 4)))]
        return Shape.FETCH, deprecate_eof, rows + [ok_eof(CURSOR) if deprecate_eof else eof(CURSOR)]
    if kind == "field-list":
        cols = [column(f"c{j}") for j in range(draw(st.integers(0, 3)))]
        return Shape.FIELD_LIST, deprecate_eof, cols + [ok_eof() if deprecate_eof else eof()]
    if kind == "simple":
        return Shape.SIMPLE, deprecate_eof, [draw(st.sampled_from([ok(), eof(), err(1105, "HY000", "x")]))]
    return Shape.STRING, deprecate_eof, [draw(st.binary(max_size=60))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.integers(1, 64), min_size=1, max_size=20), st.booleans())
def test_any_chunking_gives_the_result_of_feeding_whole(
    response: tuple[Shape, bool, list[bytes]], sizes: list[int], trailing: bool,
) -> None:
    shape, deprecate_eof, payloads = response
    data = wire(payloads)
    tail = TRAILER if trailing else b""
    whole = feed(ResponseScanner(shape, deprecate_eof=deprecate_eof), data + tail)
    chunked = feed(ResponseScanner(shape, deprecate_eof=deprecate_eof), data + tail, sizes)
    assert whole.outcome["done"] and whole.forwarded == data and whole.leftover == tail
    assert chunked.outcome == whole.outcome
    assert chunked.forwarded == data and chunked.leftover == tail


@pytest.mark.parametrize("sizes", [WHOLE, BYTEWISE], ids=["whole", "bytewise"])
def test_empty_packet_where_a_column_definition_belongs(sizes: list[int] | None) -> None:
    """Found by the fuzz property (tests/property/test_mysql_props.py): an empty packet in the
    column definitions, last in the buffer, raised IndexError (an internal error with a
    traceback in the session). It is now counted like any column definition; the scanner does
    not validate metadata, the masking relay decodes it when it must."""
    data = wire([lenenc_int(2), b"", column("b"), eof(), text_row(b"1", b"2"), eof()])
    fed = feed(ResponseScanner(Shape.RESULTSET, deprecate_eof=False), data, sizes)
    assert fed.outcome["done"] and fed.outcome["rows"] == 1 and fed.forwarded == data
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=False)
    assert scanner.scan(bytearray(wire([lenenc_int(1), b""]))) == 5 + 4 and not scanner.done


# -- warnings and SESSION_TRACK_SCHEMA (issue 11) -----------------------------------------------------

from sqlward.adapters.mysql.constants import Capability, SessionTrack  # noqa: E402

TRACK_CAPS = int(Capability.PROTOCOL_41 | Capability.SESSION_TRACK | Capability.DEPRECATE_EOF)
STATE_CHANGED = 0x4000


def _schema_change(name: str) -> messages.SessionStateChange:
    return messages.SessionStateChange(int(SessionTrack.SCHEMA), lenenc_bytes(name.encode()))


def _tracked_ok(*schemas: str, status: int = AUTOCOMMIT, eof: bool = False, warnings: int = 0) -> bytes:
    state = tuple(_schema_change(s) for s in schemas)
    return messages.encode(
        messages.OkPacket(status_flags=status | (STATE_CHANGED if state else 0), warnings=warnings,
                          session_state=state, eof=eof),
        TRACK_CAPS,
    )


def _scan_all(scanner: ResponseScanner, payloads: list[bytes]) -> None:
    data = b"".join(encode_packets(p, i + 1)[0] for i, p in enumerate(payloads))
    buf = bytearray(data)
    assert scanner.scan(buf) == len(data) and scanner.done


def test_scanner_reads_the_schema_the_server_tracks() -> None:
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=True, session_track=True)
    # USE a; USE b; SELECT 1 (the last result's terminator carries no change)
    _scan_all(scanner, [
        _tracked_ok("sqlward_b11_a", status=AUTOCOMMIT | MORE),
        _tracked_ok("sqlward_b11_b", status=AUTOCOMMIT | MORE),
        lenenc_int(1), column("1"), lenenc_bytes(b"1"), _tracked_ok(eof=True),
    ])
    assert scanner.schema == "sqlward_b11_b"


def test_scanner_ignores_session_state_without_the_capability() -> None:
    scanner = ResponseScanner(Shape.SIMPLE, deprecate_eof=True)
    _scan_all(scanner, [_tracked_ok("sqlward_b11_a")])
    assert scanner.schema is None


def test_scanner_schema_none_when_nothing_tracked() -> None:
    scanner = ResponseScanner(Shape.SIMPLE, deprecate_eof=True, session_track=True)
    _scan_all(scanner, [_tracked_ok()])
    assert scanner.schema is None


def test_scanner_keeps_the_warning_count_of_the_last_terminator() -> None:
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=False)
    _scan_all(scanner, [lenenc_int(1), column("x"), eof(), lenenc_bytes(b"0"), eof(warnings=2)])
    assert scanner.warnings == 2
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=True, session_track=True)
    _scan_all(scanner, [lenenc_int(1), column("x"), lenenc_bytes(b"0"), _tracked_ok(eof=True, warnings=3)])
    assert scanner.warnings == 3
    scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=False)
    _scan_all(scanner, [messages.ok_packet(int(Capability.PROTOCOL_41), warnings=1)])
    assert scanner.warnings == 1
