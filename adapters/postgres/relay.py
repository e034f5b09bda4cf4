"""The relay state of one PostgreSQL session, without I/O: what the gateway does to the bytes
between the client and the upstream once the session is established.

Spec: https://www.postgresql.org/docs/current/protocol-flow.html (simple and extended query,
pipelining, error recovery up to Sync, COPY) and protocol-message-formats.html.

Two halves share one `RelayState` (same trio thread in the driver, so no locks):

- `ClientSide` is fed the client's bytes (`feed`), which it scans as they come. It frames
  messages in place on a bytearray and looks only into what policy and audit need: Query and
  Parse (the SQL), Bind (portal -> prepared statement; a statement decided under an older
  policy version is decided again), Execute, Close, Describe (masked sessions), Sync,
  FunctionCall. When a message needs the pipeline's verdict, `feed` returns its
  `StatementRequest` and stops there; the driver awaits the pipeline and hands the verdict back
  with `resume(verdict)`, which goes on scanning and returns the next request, or None once every
  complete message is scanned. `take_output()` then gives the bytes to forward upstream for
  everything scanned, in one piece (messages forwarded unchanged are copied once, in runs).
  `terminated` says a Terminate was seen (nothing after it is read)::

      request = client_side.feed(data)
      while request is not None:
          request = client_side.resume(await pipeline.judge(ctx, request))
      out = client_side.take_output()  # flush the audit scope, then send `out` upstream
- `UpstreamSide` is fed the upstream's bytes (`feed`) and returns the bytes for the client and
  the `statement.completed` events the chunk finished. It scans backend messages by header and
  only looks into CommandComplete, ErrorResponse, EmptyQueryResponse, PortalSuspended,
  ReadyForQuery and ParameterStatus (plus RowDescription, NoData and DataRow in masked
  sessions). DataRow and CopyData bodies (and any message over 1 MiB) are forwarded as they
  arrive, never buffered whole: `mid_message` is True while the client holds part of one.

**Refusals.** A refused Query or Parse is not dropped: it is replaced by a statement the
upstream rejects with a syntax error (`sqlward_refused_<n>_<random>`), and the upstream side
swaps that ErrorResponse for the gateway's (`errors.reply`: SQLSTATE 42501 naming the rule). The
server therefore keeps the protocol in sync itself: a pipeline discards up to Sync and rolls back
its implicit transaction, a transaction block becomes failed, ReadyForQuery carries the true
status. After a refused Parse (or Execute, or Bind re-decision) the client side drops messages up
to Sync, as the server would. A refused FunctionCall becomes a refused Query (it is answered by
ReadyForQuery, not after a Sync).

**Bookkeeping.** Each forwarded Query, Execute and Sync (and Describe, in masked sessions) is a
`Pending` entry in order; the upstream side completes them from CommandComplete (tags, rows),
ErrorResponse, EmptyQueryResponse, PortalSuspended and ReadyForQuery (an Execute the server
skipped after an error never completes: it never ran).

**Masking.** Once a verdict says a `[[masks]]` rule applies, the session is *masked* for good
(every verdict says so, whatever step ended it; sticky all the same, so that nothing a later
verdict says can switch the row watch off for statements decided before). Before each Execute
the client side puts a Describe (portal) of its own, whose RowDescription / NoData the upstream side swallows, so the formats and column
origins of the rows are always known; a RowDescription builds the `RowMasker` of the rows that
follow and runs of DataRows are rewritten from the chunk in one call (`RowMasker.mask_rows`, the
compiled walk when built). A DataRow that cannot be masked is a `ProtocolViolation`, never
forwarded. The server's error text of a statement reading masked columns is replaced
(`errors.hidden_error`), and so is the text of its notices and warnings (`errors.hidden_notice`:
a RAISE NOTICE in code the statement runs may quote a value).

**COPY.** CopyData, CopyDone and CopyFail from the client are legal only while a COPY FROM
STDIN may be in progress: after the upstream's CopyInResponse, or after a forwarded request whose
SQL may start one (clients such as asyncpg send their data without waiting for the answer), until
the client's CopyDone / CopyFail; elsewhere they are a `ProtocolViolation`. CopyData obeys
`max_message_size` like any message (refused from its header, never buffered whole).

**How the server reads text.** `RelayState.decode_sql` follows ParameterStatus client_encoding;
`bad_encoding` / `bad_scs` say the server reads text in a way the gateway cannot (an unknown
client_encoding, standard_conforming_strings off), and the driver then refuses every request but
the one switching back (`reading.restores`). A forwarded request that may switch client_encoding
(`reading.may_switch_encoding`) sets `encoding_wait`: until the server has answered it, Query and
Parse messages behind it are refused by the driver (they would be read in the old encoding).

**Audit failure.** `ClientSide.fail(error)` refuses the request asked about last with an
ErrorResponse of the driver's (its record could not be written), exactly as a refusal is.
`UpstreamSide.abandon` completes the requests still waiting when the session ends.

Errors: `ProtocolViolation` (08P01) / `MessageTooLarge` (54000) for bad client bytes;
`ProtocolViolation` for bad upstream bytes (the driver treats it as a lost upstream).
"""

from __future__ import annotations

import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable

from sqlward.adapters.base import StatementRequest, Verdict
from sqlward.adapters.maskcolumns import Column, ColumnMasks, column_maskers
from sqlward.adapters.postgres import codec, errors
from sqlward.adapters.postgres.codec import Backend, Frontend
from sqlward.adapters.postgres.encodings import decoder_for, problem as encoding_problem
from sqlward.adapters.text import REDACTED_ERROR
from sqlward.adapters.postgres.reading import may_switch_encoding
from sqlward.adapters.postgres.errors import MessageTooLarge, ProtocolViolation
from sqlward.adapters.postgres.rowmask import RowMasker, kind_for_oid
from sqlward.adapters.postgres.searchpath import PROBE_SQL, PathTracker
from sqlward.audit.events import StatementCompleted
from sqlward.masking.context import MaskContext
from sqlward.policy.searchpath import SearchPath

__all__ = ["REFUSED_MARKER", "ClientSide", "Pending", "RelayState", "UpstreamSide"]

REFUSED_MARKER = "sqlward_refused_"
_MARKER_BYTES = REFUSED_MARKER.encode()
# Upstream messages longer than this are forwarded as they arrive, whatever their type.
STREAM_OVER = 1 << 20

_unpack_len = struct.Struct("!I").unpack_from
_pack_header = struct.Struct("!BI").pack

# Backend message types the upstream side must look into (all others pass untouched).
_WATCH = bytearray(256)
for _t in (
    Backend.COMMAND_COMPLETE, Backend.ERROR_RESPONSE, Backend.EMPTY_QUERY_RESPONSE,
    Backend.PORTAL_SUSPENDED, Backend.READY_FOR_QUERY, Backend.PARAMETER_STATUS,
    Backend.COPY_IN_RESPONSE, Backend.COPY_BOTH_RESPONSE,
    # Counted: which Parse / Close the server carried out when an error stops a segment.
    Backend.PARSE_COMPLETE, Backend.CLOSE_COMPLETE,
):
    _WATCH[_t] = 1
_STREAMED = (Backend.DATA_ROW, Backend.COPY_DATA)  # may be huge: never buffered whole
# Masked sessions also look at row descriptions and rows (each DataRow is buffered whole).
_WATCH_MASKED = bytearray(_WATCH)
for _t in (Backend.ROW_DESCRIPTION, Backend.NO_DATA, Backend.DATA_ROW, Backend.NOTICE_RESPONSE):
    _WATCH_MASKED[_t] = 1
# While the gateway's search_path question is answered, every message of the answer is looked at.
_WATCH_PROBE = bytearray(_WATCH_MASKED)
for _t in (Backend.PARSE_COMPLETE, Backend.BIND_COMPLETE, Backend.CLOSE_COMPLETE):
    _WATCH_PROBE[_t] = 1

# Extended-protocol messages that leave the client's sequence open until its Sync.
_EXTENDED = bytearray(256)
for _t in (Frontend.PARSE, Frontend.BIND, Frontend.EXECUTE, Frontend.DESCRIBE, Frontend.CLOSE):  # not Flush
    _EXTENDED[_t] = 1

_KNOWN_FRONTEND = bytearray(256)
for _t in Frontend:
    _KNOWN_FRONTEND[_t] = 1

# Backend types as plain ints (the hot path compares against them).
_B_COMMAND_COMPLETE, _B_READY, _B_ERROR = int(Backend.COMMAND_COMPLETE), int(Backend.READY_FOR_QUERY), int(Backend.ERROR_RESPONSE)
_B_DATA_ROW, _B_ROW_DESCRIPTION, _B_NO_DATA = int(Backend.DATA_ROW), int(Backend.ROW_DESCRIPTION), int(Backend.NO_DATA)
_B_PARAMETER_STATUS, _B_EMPTY_QUERY, _B_SUSPENDED = (
    int(Backend.PARAMETER_STATUS), int(Backend.EMPTY_QUERY_RESPONSE), int(Backend.PORTAL_SUSPENDED),
)
_B_NOTICE = int(Backend.NOTICE_RESPONSE)
_B_COPY_IN, _B_COPY_BOTH = int(Backend.COPY_IN_RESPONSE), int(Backend.COPY_BOTH_RESPONSE)
_B_PARSE_COMPLETE, _B_CLOSE_COMPLETE = int(Backend.PARSE_COMPLETE), int(Backend.CLOSE_COMPLETE)
# Command tags of SQL that changes the session's prepared statements.
_STATEMENT_TAGS = frozenset({"DEALLOCATE", "DEALLOCATE ALL", "DISCARD ALL", "PREPARE"})
_PROBE_ANSWER = frozenset(
    int(t) for t in (
        Backend.PARSE_COMPLETE, Backend.BIND_COMPLETE, Backend.CLOSE_COMPLETE, Backend.ROW_DESCRIPTION,
        Backend.COMMAND_COMPLETE, Backend.NO_DATA, Backend.EMPTY_QUERY_RESPONSE,
    )
)

_Q, _P, _B, _E, _S = Frontend.QUERY, Frontend.PARSE, Frontend.BIND, Frontend.EXECUTE, Frontend.SYNC
_C, _D, _F, _X = Frontend.CLOSE, Frontend.DESCRIBE, Frontend.FUNCTION_CALL, Frontend.TERMINATE
_COPY_DATA, _PASSWORD = Frontend.COPY_DATA, Frontend.PASSWORD
_COPY_DONE, _COPY_FAIL = Frontend.COPY_DONE, Frontend.COPY_FAIL
# SQL that may start COPY FROM STDIN (a loose test: a false positive only lets CopyData through
# that the server itself then ignores).
_MAY_COPY = re.compile(rb"[cC][oO][pP][yY]")
_MAY_COPY_TEXT = re.compile(r"[cC][oO][pP][yY]")

# A Query that is one SQL DEALLOCATE / PREPARE of a plainly written name (quoted: as written;
# unquoted ASCII: folded to lower case, as the server does); its CommandComplete tells the relay
# the server forgot or made that statement. Any other spelling: every name is forgotten.
_NAMED_STATEMENT = re.compile(
    r'^\s*(?:DEALLOCATE(?:\s+PREPARE)?|PREPARE)\s+(?:"((?:[^"]|"")+)"|(?!ALL\b)([A-Za-z_][A-Za-z0-9_$]*))(?=[\s;(]|$)',
    re.IGNORECASE | re.ASCII,
)
# The Execute of the unnamed portal (the usual one): the same request every time.
_EXECUTE_UNNAMED = StatementRequest(sql="", dialect="postgres", kind="execute", statement_name="")
_FUNCTION_CALL = StatementRequest(sql="", dialect="postgres", kind="command", command="FunctionCall")
# The client's CopyDone: the server commits the COPY's data when it reads it, so it is recorded
# (statement.executed, command "CopyDone") before it goes on; refused, it becomes a CopyFail.
_COPY_DONE_REQUEST = StatementRequest(sql="", dialect="postgres", kind="execute", command="CopyDone")
# The search_path question, in the extended protocol under names of the gateway's own: a simple
# Query would destroy the client's unnamed prepared statement, and the unnamed portal is the
# client's too. The first Close clears what an earlier question that failed may have left.
_PROBE_NAME = "sqlward_search_path_" + secrets.token_hex(4)
_PROBE_MESSAGES = b"".join(
    codec.encode_frontend(msg)
    for msg in (
        codec.Close("S", _PROBE_NAME),
        codec.Parse(_PROBE_NAME, PROBE_SQL),
        codec.Bind(_PROBE_NAME, _PROBE_NAME),
        codec.Execute(_PROBE_NAME),
        codec.Close("P", _PROBE_NAME),
        codec.Close("S", _PROBE_NAME),
        codec.Sync(),
    )
)
_NO_EVENTS: list[StatementCompleted] = []  # returned when a chunk completes nothing (never mutated)
_NO_MASKED: dict[str, int] = {}


def _cstr_end(buf: bytearray, start: int, end: int) -> int:
    """Index of the NUL ending the string at `start` inside one message, or ProtocolViolation."""
    idx = buf.find(0, start, end)
    if idx < 0:
        raise ProtocolViolation("string is not NUL-terminated")
    return idx


def _text_values(body: bytes) -> list[str] | None:
    """The text values of a DataRow body (None when malformed; NULL becomes "")."""
    try:
        (count,) = struct.unpack_from("!h", body, 0)
        pos = 2
        out: list[str] = []
        for _ in range(count):
            (size,) = struct.unpack_from("!i", body, pos)
            pos += 4
            if size < 0:
                out.append("")
                continue
            out.append(body[pos : pos + size].decode("utf-8", "replace"))
            pos += size
        return out
    except struct.error:
        return None


def _bind_parameters(buf: bytearray, start: int, end: int) -> tuple[tuple[bytes | None, ...], tuple[int, ...]]:
    """The parameter format codes and values of a Bind, from just after its statement name
    (ProtocolViolation when the message is malformed)."""
    try:
        (nformats,) = struct.unpack_from("!h", buf, start)
        formats = struct.unpack_from(f"!{nformats}h", buf, start + 2) if nformats > 0 else ()
        pos = start + 2 + 2 * max(nformats, 0)
        (nvalues,) = struct.unpack_from("!h", buf, pos)
        pos += 2
        values: list[bytes | None] = []
        for _ in range(max(nvalues, 0)):
            (length,) = struct.unpack_from("!i", buf, pos)
            pos += 4
            if length < 0:
                values.append(None)
                continue
            if pos + length > end:
                raise ProtocolViolation("Bind message is truncated")
            values.append(bytes(buf[pos : pos + length]))
            pos += length
    except struct.error:
        raise ProtocolViolation("Bind message is truncated") from None
    if nformats < 0 or nvalues < 0:
        raise ProtocolViolation("Bind message has a negative count")
    return tuple(values), tuple(formats)


def _describe_portal(portal: bytes) -> bytes:
    """Describe (portal) for the portal named by these bytes, exactly as the client sent them."""
    return _pack_header(_D, len(portal) + 6) + b"P" + portal + b"\0"


class Pending:
    """A request forwarded upstream whose outcome is awaited (for the audit trail)."""

    __slots__ = (
        "kind", "request_id", "ref", "started", "tags", "rows", "error", "sqlstate", "audit",
        "mask", "inject", "masked", "deallocates",
    )

    def __init__(
        self, kind: str, request_id: int = 0, ref: int | None = None, *, started: float = 0.0,
        audit: bool = True, mask: MaskContext | None = None, inject: bool = False,
    ) -> None:
        self.kind = kind  # "query" | "execute" | "sync" | "describe" (masked sessions) | "probe"
        self.request_id = request_id
        self.ref = ref  # Execute: request id of the decision of its prepared statement
        self.started = started
        self.tags: list[str] = []
        self.rows: int | None = None
        # A Query holding SQL DEALLOCATE <name>s, in text order: the prepared statements the
        # server forgets as each DEALLOCATE completes (`RelayState.deallocated`).
        self.deallocates: list[bytes] | None = None
        self.error: str | None = None
        self.sqlstate: str | None = None
        self.audit = audit
        # Masking: the request's context, and whether the gateway put a Describe (portal) before
        # this Execute whose RowDescription / NoData it swallows (to learn formats and origins).
        self.mask = mask
        self.inject = inject
        self.masked: dict[str, int] | None = None  # values masked per output column

    def __repr__(self) -> str:
        return f"Pending({self.kind!r}, {self.request_id}, tags={self.tags!r}, rows={self.rows!r}, error={self.error!r})"


def scs_problem(value: str) -> str:
    """The refusal while the server reports standard_conforming_strings other than on."""
    return (
        f"the server reads SQL text with standard_conforming_strings = {value}, which sqlward cannot "
        "read as the server does; every statement is refused until SET standard_conforming_strings = on"
    )


# A Sync carries no outcome and is never changed (every update checks for it): one shared entry.
_SYNC = Pending("sync", audit=False)


class RelayState:
    """What both halves of one session's relay share."""

    __slots__ = (
        "pending", "refusals", "syncs_sent", "syncs_done", "masked", "decode_sql", "tx_status",
        "clock", "policy_version", "path", "unsynced", "deallocated", "segment_errors", "copy_in", "copy_expected", "bad_encoding", "bad_scs",
        "encoding_wait", "encoding_touched", "redact_errors",
    )

    def __init__(
        self, *, policy_version: Callable[[], int], client_encoding: str = "UTF8", tx_status: str = "I",
        clock: Callable[[], float] = time.perf_counter, path: PathTracker | None = None,
    ) -> None:
        self.pending: deque[Pending] = deque()
        # The target's audit text is redacted: error messages are recorded with the values they
        # quote replaced by ? (`adapters.text.redacted_message`).
        self.redact_errors = False
        # marker -> (Syncs sent before it, the gateway's ErrorResponse to put in place of the server's)
        self.refusals: dict[str, tuple[int, bytes]] = {}
        self.syncs_sent = 0
        self.syncs_done = 0
        self.masked = False  # a [[masks]] rule applies to this session (sticky: see module doc)
        self.decode_sql = decoder_for(client_encoding)  # follows the server's client_encoding
        # Why the server no longer reads SQL text as the gateway does (ParameterStatus said so):
        # a client_encoding the gateway cannot read, standard_conforming_strings off. While
        # either is set the driver refuses every request but the one that switches it back.
        self.bad_encoding: str | None = encoding_problem(client_encoding)
        self.bad_scs: str | None = None
        # A forwarded request may switch client_encoding: text sent before the server answered
        # it (ReadyForQuery number `encoding_wait`) would be read here in the old encoding, so
        # the driver refuses Query / Parse messages until then (`encoding_unsure`).
        self.encoding_wait = 0
        self.encoding_touched = False  # the session has switched encodings through SQL
        self.tx_status = tx_status
        self.clock = clock
        self.policy_version = policy_version
        # The session's search_path as far as the gateway knows (see `searchpath`).
        self.path = path if path is not None else PathTracker(SearchPath())
        # The client sent extended-protocol messages after its last Sync: its implicit
        # transaction (and its unnamed portal) are still open.
        self.unsynced = False
        # Prepared statement names the server has forgotten (or made) through SQL: DEALLOCATE,
        # PREPARE (the name when the text is exactly one such statement, else None: all of
        # them), DEALLOCATE ALL / DISCARD ALL (None), by its CommandComplete; the client side
        # forgets them too.
        self.deallocated: list[bytes | None] = []
        # Extended-protocol segments (by the number of the Sync that ends them) where the server
        # answered an error, with how many ParseComplete / CloseComplete came before it: the
        # Parse and Close messages after those were not carried out (the client side undoes
        # what it recorded of them: `ClientSide._settle`).
        self.segment_errors: list[tuple[int, int, int]] = []
        # COPY FROM STDIN is in progress: from the upstream's CopyInResponse (or
        # CopyBothResponse) until the client's CopyDone or CopyFail. `copy_expected`: a request
        # that may start one was forwarded (clients such as asyncpg send their CopyData without
        # waiting for CopyInResponse; the server reads them in order). CopyData, CopyDone and
        # CopyFail when neither holds are a protocol violation.
        self.copy_in = False
        self.copy_expected = False

    @property
    def encoding_unsure(self) -> bool:
        return self.encoding_wait > self.syncs_done

    def _may_switch(self, sql: str, wait: int) -> bool:
        if may_switch_encoding(sql, self.encoding_touched):
            self.encoding_wait = max(self.encoding_wait, wait)
            self.encoding_touched = True
            return True
        return False

    @property
    def unreadable(self) -> str | None:
        """Why requests cannot be read as the server reads them now (None: they can)."""
        return self.bad_scs or self.bad_encoding

    @property
    def idle(self) -> bool:
        """Nothing forwarded is still waiting for the server's answer, and the client is not in
        the middle of an extended-protocol sequence (a Sync of ours would end its transaction)."""
        return not self.pending and not self.unsynced

    def start_probe(self) -> bytes:
        """The messages asking the server for the session's search_path (`searchpath.PROBE_SQL`,
        extended protocol under the gateway's own statement and portal names, up to a Sync), to
        send upstream while the session is idle; the upstream side swallows the answer and hands
        it to `path.probed`."""
        self.pending.append(Pending("probe", audit=False))
        self.path.start_probe()
        return _PROBE_MESSAGES


# What a ClientSide waits for a verdict on (`_asking`): the message kind and its position.
_ASK_QUERY, _ASK_PARSE, _ASK_BIND, _ASK_EXECUTE, _ASK_FUNCTION, _ASK_COPY_DONE = range(6)


class ClientSide:
    """The client-to-upstream half (see the module doc for the calling sequence)."""

    def __init__(
        self, state: RelayState, *, max_message_size: int, sql_comment: bytes = b"", marker: Callable[[], str] | None = None,
    ) -> None:
        self._st = state
        self._max_size = max_message_size
        self._sql_comment = sql_comment  # sqlcommenter-style /* sqlward_identity=... */ (or b"")
        self._marker_suffix = marker or (lambda: secrets.token_hex(4))
        self._buf = bytearray()
        self._pos = 0  # end of the messages scanned
        self._seg = 0  # start of the current run forwarded unchanged
        self._parts: list[bytes] | None = None  # set once a message is not forwarded verbatim
        self._asking: tuple[int, int, int, object] | None = None  # (what, start, end, detail)
        self._discarding = False
        self.terminated = False
        # Prepared statement name -> the request id of its decision, its mask context, and
        # (named statements, which outlive a pipeline) its SQL and the policy version it was
        # decided under. Names are the bytes the client sent.
        self._statements: dict[bytes, int] = {}
        self._stmt_masks: dict[bytes, MaskContext | None] = {}
        # Prepared statements (the unnamed one too): their SQL and the epoch (policy version,
        # search_path) they were decided in; a Bind in another epoch decides again (the server
        # re-plans a statement under the current path).
        self._prepared_sql: dict[bytes, tuple[str, tuple[int, SearchPath]]] = {}
        # Statements whose runs may change the session's search_path: the path after one run.
        self._stmt_paths: dict[bytes, SearchPath] = {}
        # Portal name -> its statement's decision (request id) and mask context.
        self._portals: dict[bytes, int | None] = {}
        self._portal_masks: dict[bytes, MaskContext | None] = {}
        # The parameter values and formats bound to each portal (for the audit record of its runs).
        self._portal_params: dict[bytes, tuple[tuple[bytes | None, ...], tuple[int, ...]]] = {}
        # Statements and portals whose SQL may be a COPY FROM STDIN (see `_MAY_COPY`).
        self._copy_statements: set[bytes] = set()
        self._copy_portals: set[bytes] = set()
        # Statements whose runs may switch client_encoding (`RelayState.encoding_wait`).
        self._enc_statements: set[bytes] = set()
        # Prepared statements that need approval at each run (`Verdict.review_at_run`): every
        # Bind asks the pipeline again, with its parameter values.
        self._review_statements: set[bytes] = set()
        # The parameter types declared in each statement's Parse (bound into approvals).
        self._param_types: dict[bytes, tuple[int, ...]] = {}
        # What the statement records were before each Parse / Close recorded here, by the Sync
        # that ends its segment, in message order: undone when the server did not carry the
        # message out (an error earlier in its segment, or its own failure): `_settle`.
        self._effects: deque[tuple[int, str, bytes, tuple[object, ...]]] = deque()

    @property
    def asking_text(self) -> bool:
        """The request waiting for its verdict is new SQL text (Query or Parse)."""
        return self._asking is not None and self._asking[0] in (_ASK_QUERY, _ASK_PARSE)

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet handed out by `take_output` (incomplete messages included)."""
        return len(self._buf)

    def feed(self, data: bytes) -> StatementRequest | None:
        """Add bytes received from the client and scan the complete messages. Returns the
        request of the first message that needs a verdict (hand the verdict back with `resume`),
        or None once every complete message is scanned (then `take_output`). Raises
        ProtocolViolation / MessageTooLarge for bytes that are no valid message."""
        if self._asking is not None:
            raise RuntimeError("feed() while a request waits for its verdict")
        self._buf += data
        return self._scan()

    def _scan(self) -> StatementRequest | None:
        if self.terminated:
            return None
        if self._effects or self._st.segment_errors:
            self._settle()
        if self._st.deallocated:
            self._apply_deallocated()
        buf = self._buf
        n = len(buf)
        pos = self._pos
        max_size = self._max_size
        while n - pos >= 5:
            mtype = buf[pos]
            (length,) = _unpack_len(buf, pos + 1)
            if length < 4:
                raise ProtocolViolation(f"invalid message length {length}")
            if length - 4 > max_size:  # CopyData too: never buffered whole
                raise MessageTooLarge(f"message of {length - 4} bytes exceeds this gateway's limit of {max_size} bytes")
            end = pos + 1 + length
            if end > n:
                break
            if _EXTENDED[mtype]:
                self._st.unsynced = True
            if self._discarding and mtype != _S and mtype != _X:
                if not _KNOWN_FRONTEND[mtype]:
                    raise ProtocolViolation(f"invalid frontend message type {mtype}")
                self._replace(pos, end, b"")
            elif mtype == _E:
                self._pos = pos
                p_end = _cstr_end(buf, pos + 5, end)
                portal = bytes(buf[pos + 5 : p_end])
                self._asking = (_ASK_EXECUTE, pos, end, portal)
                bound = self._portal_params.get(portal)
                if bound is None:
                    if not portal:
                        return _EXECUTE_UNNAMED
                    return StatementRequest(
                        sql="", dialect="postgres", kind="execute", statement_name=self._st.decode_sql(portal),
                    )
                # The run is recorded with the values bound to its portal.
                return StatementRequest(
                    sql="", dialect="postgres", kind="execute", statement_name=self._st.decode_sql(portal),
                    parameters=bound[0], formats=bound[1],
                )
            elif mtype == _B:
                p_end = _cstr_end(buf, pos + 5, end)
                s_end = _cstr_end(buf, p_end + 1, end)
                portal = bytes(buf[pos + 5 : p_end])
                stmt = bytes(buf[p_end + 1 : s_end])
                if stmt not in self._prepared_sql:
                    # A statement the gateway did not see prepared (SQL PREPARE, or one whose
                    # Parse it refused): its text was never judged here, so it does not run.
                    shown = f'prepared statement "{self._st.decode_sql(stmt)}"' if stmt else "unnamed prepared statement"
                    self._refuse_bytes(pos, end, errors.error_response(
                        errors.INVALID_SQL_STATEMENT_NAME,
                        f"{shown} does not exist (sqlward runs only statements prepared through the protocol in "
                        "this session, as the server carried them out)",
                    ))
                    pos = end
                    continue
                self._portals[portal] = self._statements.get(stmt)
                self._portal_masks[portal] = self._stmt_masks.get(stmt)
                bound = _bind_parameters(buf, s_end + 1, end)
                if bound[0]:  # values bound: kept for the record of the portal's runs
                    self._portal_params[portal] = bound
                elif self._portal_params:
                    self._portal_params.pop(portal, None)
                if stmt in self._copy_statements:
                    self._copy_portals.add(portal)
                elif self._copy_portals:
                    self._copy_portals.discard(portal)
                if self._enc_statements and stmt in self._enc_statements:
                    self._st._may_switch("SET client_encoding", self._st.syncs_sent + 1)
                changes = self._stmt_paths.get(stmt) if self._stmt_paths else None
                if changes is not None:
                    self._st.path.forwarded(changes)
                prepared = self._prepared_sql.get(stmt)
                if prepared is not None and self._review_statements and stmt in self._review_statements:
                    # Each run of a statement that needs approval is approved with its values.
                    values, formats = _bind_parameters(buf, s_end + 1, end)
                    version = self._epoch()
                    self._pos = pos
                    self._asking = (_ASK_BIND, pos, end, (portal, stmt, prepared[0], version))
                    return StatementRequest(
                        sql=prepared[0], dialect="postgres", statement_name=self._st.decode_sql(stmt),
                        search_path=version[1], parameters=values, formats=formats,
                        types=self._param_types.get(stmt, ()),
                    )
                if prepared is not None:
                    version = self._epoch()
                    if prepared[1] != version:
                        # The policy or the search_path changed since this statement was
                        # decided: decide again (with the run's values: a statement that needs
                        # approval now is approved with them).
                        values, formats = _bind_parameters(buf, s_end + 1, end)
                        self._pos = pos
                        self._asking = (_ASK_BIND, pos, end, (portal, stmt, prepared[0], version))
                        return StatementRequest(
                            sql=prepared[0], dialect="postgres", statement_name=self._st.decode_sql(stmt),
                            search_path=version[1], parameters=values, formats=formats,
                            types=self._param_types.get(stmt, ()),
                        )
            elif mtype == _S:
                self._discarding = False
                st = self._st
                st.unsynced = False
                st.syncs_sent += 1
                st.pending.append(_SYNC)
            elif mtype == _Q:
                sql_end = _cstr_end(buf, pos + 5, end)
                if sql_end != end - 1:
                    raise ProtocolViolation("unexpected bytes after the end of a Query message")
                self._pos = pos
                self._asking = (_ASK_QUERY, pos, end, None)
                return StatementRequest(
                    sql=self._st.decode_sql(bytes(buf[pos + 5 : sql_end])), dialect="postgres",
                    search_path=self._st.path.current,
                )
            elif mtype == _P:
                n_end = _cstr_end(buf, pos + 5, end)
                sql_end = _cstr_end(buf, n_end + 1, end)
                if end - sql_end < 3:
                    raise ProtocolViolation("Parse message is truncated")
                decode = self._st.decode_sql
                name = bytes(buf[pos + 5 : n_end])
                if name and name in self._prepared_sql:
                    # PostgreSQL refuses a Parse naming a statement that exists (42P05) and keeps
                    # the old one: the gateway refuses it first, so its record stays the server's.
                    self._refuse_bytes(pos, end, errors.error_response(
                        errors.DUPLICATE_PREPARED_STATEMENT, f'prepared statement "{decode(name)}" already exists',
                    ))
                    pos = end
                    continue
                sql = decode(bytes(buf[n_end + 1 : sql_end]))
                (ntypes,) = struct.unpack_from("!h", buf, sql_end + 1)
                if ntypes < 0 or sql_end + 3 + 4 * ntypes > end:
                    raise ProtocolViolation("Parse message has a bad parameter type count")
                if ntypes:
                    self._param_types[name] = struct.unpack_from(f"!{ntypes}I", buf, sql_end + 3)
                else:
                    self._param_types.pop(name, None)
                self._pos = pos
                epoch = self._epoch()
                self._asking = (_ASK_PARSE, pos, end, (name, sql, epoch))
                return StatementRequest(
                    sql=sql, dialect="postgres", statement_name=decode(name), search_path=epoch[1], prepare=True,
                )
            elif mtype == _C:
                if end - pos >= 7:
                    name = bytes(buf[pos + 6 : end - 1])
                    if buf[pos + 5] == 0x53:  # 'S'
                        self._effect("C", name)
                        self._forget_statement(name)
                    else:
                        self._portals.pop(name, None)
                        self._portal_masks.pop(name, None)
                        self._portal_params.pop(name, None)
            elif mtype == _D:
                if self._st.masked:  # its RowDescription / NoData is the client's, not ours
                    self._st.pending.append(Pending("describe", audit=False))
            elif mtype == _F:
                self._pos = pos
                self._asking = (_ASK_FUNCTION, pos, end, None)
                return _FUNCTION_CALL
            elif mtype == _COPY_DATA or mtype == _COPY_DONE or mtype == _COPY_FAIL:
                st = self._st
                if not st.copy_in and not st.copy_expected:
                    kind = "CopyData" if mtype == _COPY_DATA else "CopyDone" if mtype == _COPY_DONE else "CopyFail"
                    raise ProtocolViolation(f"{kind} message received while no COPY FROM STDIN is in progress")
                if mtype != _COPY_DATA:
                    st.copy_in = st.copy_expected = False
                    if mtype == _COPY_DONE:
                        self._pos = pos
                        self._asking = (_ASK_COPY_DONE, pos, end, None)
                        return _COPY_DONE_REQUEST
            elif mtype == _X:
                self.terminated = True
                pos = end
                break
            elif not _KNOWN_FRONTEND[mtype] or mtype == _PASSWORD:
                raise ProtocolViolation(f"invalid frontend message type {mtype}")
            pos = end
        self._pos = pos
        return None

    def resume(self, verdict: Verdict) -> StatementRequest | None:
        """The pipeline's verdict on the request returned last; goes on scanning and returns the
        next request that needs a verdict, or None (as `feed`)."""
        asking = self._asking
        if asking is None:
            raise RuntimeError("resume() without a request")
        self._asking = None
        what, pos, end, detail = asking
        st = self._st
        if verdict.masked:
            st.masked = True
        allowed = verdict.decision.action == "allow"  # (Verdict.allowed, without the call)
        rid = verdict.request_id
        if what == _ASK_EXECUTE:
            assert isinstance(detail, bytes)
            if allowed and detail in self._copy_portals:
                st.copy_expected = True
            if allowed:
                if st.masked:
                    # Learn the portal's formats and column origins just before its rows.
                    st.pending.append(
                        Pending("execute", rid, self._portals.get(detail), started=st.clock(),
                                mask=self._portal_masks.get(detail), inject=True)
                    )
                    self._replace(pos, end, _describe_portal(detail) + bytes(self._buf[pos:end]))
                else:
                    st.pending.append(Pending("execute", rid, self._portals.get(detail), started=st.clock()))
            else:  # a prepared statement must not outlive the token either
                self._refuse_extended(pos, end, verdict)
        elif what == _ASK_QUERY:
            if allowed:
                if verdict.search_path is not None:
                    st.path.forwarded(verdict.search_path)
                if _MAY_COPY.search(self._buf, pos + 5, end) is not None:
                    st.copy_expected = True
                query = Pending("query", rid, started=st.clock(), mask=verdict.mask)
                st.pending.append(query)
                analysis = verdict.analysis
                if analysis is not None and len(analysis.statements) == 1 and analysis.operations[:1] in (("deallocate",), ("prepare",)):
                    # Exactly one DEALLOCATE / PREPARE: the name it names, when plainly written
                    # (otherwise every name is forgotten when the server says it ran).
                    m = _NAMED_STATEMENT.match(st.decode_sql(bytes(self._buf[pos + 5 : end - 1])))
                    if m is not None:
                        query.deallocates = [m.group(1).replace('""', '"').encode() if m.group(1) is not None else m.group(2).lower().encode()]
                if self._sql_comment or verdict.traceparent:
                    body = bytes(self._buf[pos + 5 : end])
                    if verdict.traceparent:  # sqlcommenter: the statement span, for the server's logs
                        body = b"%s\n/*traceparent='%s'*/\0" % (body[:-1], verdict.traceparent.encode())
                    if self._sql_comment:  # sqlcommenter-style: who, for the server's logs
                        body = self._sql_comment + body
                    self._replace(pos, end, _pack_header(_Q, len(body) + 4) + body)
            else:
                marker = self._inject(verdict)
                self._replace(pos, end, codec.encode_frontend(codec.Query(marker)))
                st.pending.append(Pending("query", rid, audit=False))
            st.syncs_sent += 1  # a Query ends with its own ReadyForQuery, as a Sync does
            if allowed:
                st._may_switch(st.decode_sql(bytes(self._buf[pos + 5 : end - 1])), st.syncs_sent)
        elif what == _ASK_PARSE:
            assert isinstance(detail, tuple)
            name, sql, version = detail
            self._effect("P", name)
            if verdict.review_at_run:  # prepared now, approved at each Bind
                allowed = True
                self._review_statements.add(name)
            elif self._review_statements:
                self._review_statements.discard(name)
            if allowed:
                self._statements[name] = rid
                self._stmt_masks[name] = verdict.mask
                if _MAY_COPY_TEXT.search(sql) is not None:
                    self._copy_statements.add(name)
                elif self._copy_statements:
                    self._copy_statements.discard(name)
                # A Bind in another epoch decides again: named statements outlive a pipeline, and
                # the unnamed one is re-planned by the server under a path moved since its Parse.
                self._prepared_sql[name] = (sql, version)
                if st._may_switch(sql, st.syncs_sent + 1):
                    self._enc_statements.add(name)
                elif self._enc_statements:
                    self._enc_statements.discard(name)
                if verdict.search_path is not None:
                    # It changes the path each time it runs (at its Binds).
                    self._stmt_paths[name] = verdict.search_path
                    st.path.forwarded(verdict.search_path)
                elif self._stmt_paths:
                    self._stmt_paths.pop(name, None)
            else:
                self._forget_statement(name)
                self._refuse_extended(pos, end, verdict)
        elif what == _ASK_BIND:
            assert isinstance(detail, tuple)
            portal, stmt, sql, version = detail
            if allowed:
                if verdict.approval_id is not None:
                    # Released by an approval (decided again under a new policy that sends it to
                    # review): its completion names the approval, and every later run of the
                    # statement is approved again, with its values.
                    self._portals[portal] = rid
                    self._review_statements.add(stmt)
                self._prepared_sql[stmt] = (sql, version)
                self._stmt_masks[stmt] = self._portal_masks[portal] = verdict.mask
                if verdict.search_path is not None:
                    self._stmt_paths[stmt] = verdict.search_path
                    st.path.forwarded(verdict.search_path)
            else:
                self._refuse_extended(pos, end, verdict)
        elif what == _ASK_COPY_DONE:
            if not allowed:
                decision = verdict.decision
                self._copy_fail(pos, end, f"{decision.message or 'refused'} (rule \"{decision.rule_id}\"); the COPY was not committed")
        else:  # _ASK_FUNCTION: it would run a function without SQL, past the policy
            if allowed:
                st.pending.append(Pending("query", rid, started=st.clock()))
            else:
                marker = self._inject(verdict)
                self._replace(pos, end, codec.encode_frontend(codec.Query(marker)))
                st.pending.append(Pending("query", rid, audit=False))
            st.syncs_sent += 1
        self._pos = end
        if len(self._buf) - end < 5:  # no further message (the usual chunk: one request)
            return None
        return self._scan()

    def fail(self, error: bytes) -> StatementRequest | None:
        """The request returned last cannot be judged (its record cannot be written): it is
        refused with `error` (an ErrorResponse) exactly as a refusal is, and scanning goes on
        (as `resume`)."""
        asking = self._asking
        if asking is None:
            raise RuntimeError("fail() without a request")
        self._asking = None
        what, pos, end, detail = asking
        st = self._st
        if what == _ASK_COPY_DONE:
            self._copy_fail(pos, end, "the audit trail cannot be written; the COPY was not committed")
        elif what == _ASK_QUERY or what == _ASK_FUNCTION:
            marker = self._marker(0, error)
            self._replace(pos, end, codec.encode_frontend(codec.Query(marker)))
            st.pending.append(Pending("query", 0, audit=False))
            st.syncs_sent += 1
        else:
            if what == _ASK_PARSE:
                assert isinstance(detail, tuple)
                self._forget_statement(detail[0])
            marker = self._marker(0, error)
            self._replace(pos, end, codec.encode_frontend(codec.Parse("", marker)))
            self._discarding = True
        self._pos = end
        if len(self._buf) - end < 5:
            return None
        return self._scan()

    def _copy_fail(self, pos: int, end: int, message: str) -> None:
        """Turn the client's CopyDone into a CopyFail: the server aborts the COPY and answers it
        with an ERROR (57014, "COPY from stdin failed: sqlward: <message>") the client reads as
        the COPY's result; nothing of its data is committed."""
        self._replace(pos, end, codec.encode_frontend(codec.CopyFail(f"sqlward: {message}")))

    def take_output(self) -> bytes:
        """The bytes to forward upstream for every message scanned (b"" when none or all were
        dropped); the scanned messages leave the buffer."""
        if self._asking is not None:
            raise RuntimeError("take_output() while a request waits for its verdict")
        pos = self._pos
        if not pos:
            return b""
        buf = self._buf
        parts = self._parts
        if parts is None:
            out = bytes(buf[:pos])
        else:
            parts.append(bytes(buf[self._seg : pos]))
            out = b"".join(parts)
            self._parts = None
        self._seg = 0
        self._pos = 0
        del buf[:pos]
        return out

    # -- helpers -----------------------------------------------------------------------------

    def _replace(self, pos: int, end: int, replacement: bytes) -> None:
        """Forward `replacement` instead of the message at buf[pos:end] (b"": drop it)."""
        parts = self._parts
        if parts is None:
            parts = self._parts = []
        if self._seg < pos:
            parts.append(bytes(self._buf[self._seg : pos]))
        if replacement:
            parts.append(replacement)
        self._seg = end

    def _inject(self, verdict: Verdict) -> str:
        """Remember the gateway's error to swap in; returns the marker the injected SQL holds.
        The error comes before the ReadyForQuery that ends the refused request's Sync (or
        Query): the marker is forgotten once that one went by."""
        return self._marker(verdict.request_id, errors.reply(verdict.decision, "relay").data)

    def _marker(self, request_id: int, error: bytes) -> str:
        st = self._st
        marker = f"{REFUSED_MARKER}{request_id}_{self._marker_suffix()}"
        st.refusals[marker] = (st.syncs_sent, error)
        return marker

    def _refuse_extended(self, pos: int, end: int, verdict: Verdict) -> None:
        """A refusal inside an extended-protocol pipeline: an unnamed Parse the server rejects
        takes the message's place, and what follows is dropped up to Sync."""
        marker = self._inject(verdict)
        self._replace(pos, end, codec.encode_frontend(codec.Parse("", marker)))
        self._discarding = True

    # -- keeping the statement records the server's --------------------------------------------

    def _snapshot(self, name: bytes) -> tuple[object, ...]:
        return (
            self._statements.get(name), self._stmt_masks.get(name), self._prepared_sql.get(name),
            self._stmt_paths.get(name), self._param_types.get(name), name in self._review_statements,
            name in self._copy_statements, name in self._enc_statements,
        )

    def _restore(self, name: bytes, snap: tuple[object, ...]) -> None:
        self._forget_statement(name)
        rid, mask, prepared, path, types, review, copy, enc = snap
        if prepared is None:
            return
        self._prepared_sql[name] = prepared  # type: ignore[assignment]
        if rid is not None:
            self._statements[name] = rid  # type: ignore[assignment]
        self._stmt_masks[name] = mask  # type: ignore[assignment]
        if path is not None:
            self._stmt_paths[name] = path  # type: ignore[assignment]
        if types is not None:
            self._param_types[name] = types  # type: ignore[assignment]
        if review:
            self._review_statements.add(name)
        if copy:
            self._copy_statements.add(name)
        if enc:
            self._enc_statements.add(name)

    def _effect(self, kind: str, name: bytes) -> None:
        """Log what `name`'s record was before a Parse ("P") or Close ("C") changes it."""
        self._effects.append((self._st.syncs_sent + 1, kind, name, self._snapshot(name)))

    def _settle(self) -> None:
        """Segments the server has answered: where an error stopped one, the Parse and Close
        messages it did not carry out are undone here (the server kept the statements as they
        were), latest first; a name a later segment touched again is forgotten instead (its
        record is then unsure: a Bind of it is refused)."""
        st = self._st
        effects = self._effects
        done = st.syncs_done
        failed = {seg: (parsed, closed) for seg, parsed, closed in st.segment_errors}
        st.segment_errors[:] = [e for e in st.segment_errors if e[0] > done]
        undo: list[tuple[int, str, bytes, tuple[object, ...]]] = []
        while effects and effects[0][0] <= done:
            segment = effects[0][0]
            batch = []
            while effects and effects[0][0] == segment:
                batch.append(effects.popleft())
            counts = failed.get(segment)
            if counts is None:
                continue  # carried out in full
            parsed, closed = counts
            for i, (_, kind, _, _) in enumerate(batch):
                if kind == "P":
                    if parsed == 0:
                        undo.extend(batch[i:])
                        break
                    parsed -= 1
                else:
                    if closed == 0:
                        undo.extend(batch[i:])
                        break
                    closed -= 1
        if not undo:
            return
        later = {name for _, _, name, _ in effects}
        for _, _, name, snap in reversed(undo):
            if name in later:
                self._forget_statement(name)
            else:
                self._restore(name, snap)
        for name in later & {name for _, _, name, _ in undo}:
            self._forget_statement(name)

    def _refuse_bytes(self, pos: int, end: int, error: bytes) -> None:
        """Refuse the message at buf[pos:end] with `error` (an ErrorResponse) before it is judged,
        as a refusal inside a pipeline is: discard up to Sync."""
        marker = self._marker(0, error)
        self._replace(pos, end, codec.encode_frontend(codec.Parse("", marker)))
        self._discarding = True

    def _apply_deallocated(self) -> None:
        for name in self._st.deallocated:
            if name is None:
                for known in [n for n in self._prepared_sql if n]:
                    self._forget_statement(known)
            else:
                self._forget_statement(name)
        self._st.deallocated.clear()

    def _forget_statement(self, name: bytes) -> None:
        self._review_statements.discard(name)
        self._param_types.pop(name, None)
        self._copy_statements.discard(name)
        self._statements.pop(name, None)
        self._prepared_sql.pop(name, None)
        self._stmt_masks.pop(name, None)
        self._stmt_paths.pop(name, None)

    def _epoch(self) -> tuple[int, SearchPath]:
        """What a named statement's decision holds for: the policy version and the path."""
        st = self._st
        return st.policy_version(), st.path.current


class UpstreamSide:
    """The upstream-to-client half (see the module doc)."""

    def __init__(self, state: RelayState) -> None:
        self._st = state
        self._buf = bytearray()
        self._skip = 0  # bytes of a streamed message body still to pass through
        self._events: list[StatementCompleted] = []
        self.rows: RowMasker | None = None  # rewriter of the result set being relayed
        self._row_counts: ColumnMasks | None = None
        # ParseComplete / CloseComplete seen in the current segment, and whether it failed.
        self._parsed = 0
        self._closed = 0
        self._segment_failed = False

    @property
    def mid_message(self) -> bool:
        """The client has received part of a backend message (the rest is still to come)."""
        return self._skip > 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, list[StatementCompleted]]:
        """The bytes for the client (b"" until a message or a streamed part is complete) and the
        completion events of the requests this chunk finished. Raises ProtocolViolation for an
        impossible message length or a DataRow that cannot be masked."""
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        skip = self._skip
        st = self._st
        watch = _WATCH_PROBE if st.path.probing else _WATCH_MASKED if st.masked else _WATCH
        parts: list[bytes] | None = None
        seg = 0
        snapshot: bytes | None = None
        while pos < n:
            if skip:
                step = skip if skip < n - pos else n - pos
                pos += step
                skip -= step
                continue
            if n - pos < 5:
                break
            mtype = buf[pos]
            (length,) = _unpack_len(buf, pos + 1)
            if length < 4:
                raise ProtocolViolation(f"upstream sent an invalid message length {length}")
            end = pos + 1 + length
            if mtype == 0x44 and self.rows is not None:  # DataRows of a masked result
                if end > n:
                    break
                if snapshot is None:
                    snapshot = bytes(buf)  # once per chunk: rows are sliced from it
                try:
                    out_rows, after = self.rows.mask_rows(snapshot, pos, n)
                except ValueError as exc:  # never forward what could not be masked
                    raise ProtocolViolation(f"upstream sent a DataRow that cannot be masked: {exc}") from exc
                if parts is None:
                    parts = []
                parts.append(snapshot[seg:pos])
                parts.extend(out_rows)
                seg = pos = after
                continue
            if watch[mtype]:
                if end > n:
                    break
                replacement = self._on_backend(mtype, buf[pos + 5 : end])
                if replacement is not None:
                    if parts is None:
                        parts = []
                    parts.append(bytes(buf[seg:pos]))
                    parts.append(replacement)
                    seg = end
                pos = end
            elif end > n:
                if mtype in _STREAMED or end - pos > STREAM_OVER:
                    skip = end - n
                    pos = n
                break
            else:
                pos = end
        self._skip = skip
        events = self._events
        if events:
            self._events = []
        else:
            events = _NO_EVENTS
        if not pos:
            return b"", events
        if parts is None:
            out = bytes(buf[:pos])
        else:
            parts.append(bytes(buf[seg:pos]))
            out = b"".join(parts)
        del buf[:pos]
        return out, events

    def abandon(self, error: str, sqlstate: str) -> list[StatementCompleted]:
        """The session ends with requests still waiting for the server's answer (the upstream
        died, the client left): each one forwarded completes now, with the server's own error
        when it sent one before closing (a FATAL), else `error`."""
        pending = self._st.pending
        while pending:
            p = pending.popleft()
            if p.kind in ("query", "execute") and p.audit:
                if p.error is None:
                    p.error, p.sqlstate = error, sqlstate
                self._complete(p)
        events, self._events = self._events, []
        return events

    # -- bookkeeping -------------------------------------------------------------------------

    def _complete(self, p: Pending) -> None:
        if not p.audit:
            return
        self._events.append(
            StatementCompleted(
                request_id=p.request_id, prepared_ref=p.ref, tags=tuple(p.tags), rows=p.rows,
                duration_ms=round((self._st.clock() - p.started) * 1000, 3),
                error=REDACTED_ERROR if p.error and self._st.redact_errors else p.error,
                sqlstate=p.sqlstate, masked=p.masked or _NO_MASKED,
            )
        )

    def _on_backend(self, mtype: int, body: bytearray) -> bytes | None:
        """Bookkeeping for a watched backend message; returns replacement bytes, if any (b"":
        drop the message). The usual ones first: CommandComplete, ReadyForQuery."""
        st = self._st
        pending = st.pending
        head = pending[0] if pending else None
        if head is not None and head.kind == "probe":
            return self._on_probe(mtype, body, head)
        if mtype == _B_PARSE_COMPLETE:
            self._parsed += 1
            return None
        if mtype == _B_CLOSE_COMPLETE:
            self._closed += 1
            return None
        if mtype == _B_COMMAND_COMPLETE:
            tag = bytes(body[:-1]).decode("utf-8", "replace")
            if self.rows is not None or self._row_counts is not None:
                self._end_rows(head)
            if head is not None and head.kind != "sync":
                head.tags.append(tag)
                if tag in _STATEMENT_TAGS:
                    self._deallocated(head, tag)
                rows = codec.command_rows(tag)
                if rows is not None:
                    head.rows = (head.rows or 0) + rows
                if head.kind == "execute":
                    pending.popleft()
                    self._complete(head)
            return None
        if mtype == _B_READY:
            self._parsed = self._closed = 0
            self._segment_failed = False
            st.tx_status = chr(body[0]) if body else "I"
            st.path.ready(st.tx_status)
            while pending:
                p = pending.popleft()
                if p.kind == "query":
                    self._complete(p)
                    break
                if p.kind == "sync":
                    break
                # an Execute the server skipped after an error in its pipeline: never ran
            st.syncs_done += 1
            if st.refusals:
                done = st.syncs_done
                for marker in [m for m, (seq, _) in st.refusals.items() if seq < done]:
                    del st.refusals[marker]
            return None
        if mtype == _B_DATA_ROW:  # a masked session's row outside a run (no rewriter)
            rows = self.rows
            if rows is None:
                return None
            new = rows.mask_datarow(body)
            if new is None:
                return None
            return _pack_header(_B_DATA_ROW, len(new) + 4) + new
        if mtype == _B_ROW_DESCRIPTION or mtype == _B_NO_DATA:
            if head is not None and head.kind == "describe":
                pending.popleft()  # the client's own Describe: forward
                return None
            if head is not None and head.kind == "execute" and head.inject:
                head.inject = False
                if mtype == _B_ROW_DESCRIPTION:
                    self._start_rows(body, head.mask)
                return b""  # our injected Describe: the client did not ask for it
            if mtype == _B_ROW_DESCRIPTION:
                self._start_rows(body, head.mask if head is not None else None)
            return None
        if mtype == _B_ERROR:
            if not self._segment_failed:  # the first error stops the segment
                self._segment_failed = True
                st.segment_errors.append((st.syncs_done + 1, self._parsed, self._closed))
            if st.masked:
                while head is not None and head.kind == "describe":
                    pending.popleft()
                    head = pending[0] if pending else None
                self._end_rows(head)
            replacement = None
            if st.refusals and _MARKER_BYTES in body:
                text = codec.error_fields(bytes(body)).get("M", "")
                for marker, (_, error) in st.refusals.items():
                    if marker in text:
                        replacement = error
                        break
            if head is not None and head.kind != "sync" and replacement is None:
                fields = codec.error_fields(bytes(body))
                head.error = fields.get("M", "error")
                head.sqlstate = fields.get("C")
                if head.mask is not None and head.mask.request.redact_errors:
                    # The server's text can quote a masked value ("invalid input syntax ...: <value>").
                    head.error = "(hidden: the statement reads masked columns)"
                    replacement = errors.hidden_error(
                        fields.get("C", errors.INTERNAL_ERROR), fields.get("S", errors.ERROR),
                    )
                if head.kind == "execute":
                    pending.popleft()
                    self._complete(head)
            return replacement
        if mtype == _B_NOTICE:  # masked sessions only (the watch list)
            if head is not None and head.mask is not None and head.mask.request.redact_errors:
                fields = codec.error_fields(bytes(body))
                return errors.hidden_notice(fields.get("C", "01000"), fields.get("S", "NOTICE"))
            return None
        if mtype == _B_COPY_IN or mtype == _B_COPY_BOTH:
            st.copy_in = True  # set before the client is told it may send CopyData
            return None
        if mtype == _B_PARAMETER_STATUS:
            if body.startswith(b"client_encoding\0"):
                value = bytes(body[16:]).rstrip(b"\0").decode("ascii", "replace")
                st.decode_sql = decoder_for(value)
                st.bad_encoding = encoding_problem(value)
            elif body.startswith(b"standard_conforming_strings\0"):
                value = bytes(body[28:]).rstrip(b"\0").decode("ascii", "replace")
                st.bad_scs = None if value == "on" else scs_problem(value)
            return None
        if mtype == _B_EMPTY_QUERY or mtype == _B_SUSPENDED:
            if self.rows is not None or self._row_counts is not None:
                self._end_rows(head)
            if head is not None and head.kind == "execute":
                if mtype == _B_SUSPENDED:
                    head.tags.append("(suspended)")
                pending.popleft()
                self._complete(head)
            return None
        return None

    def _deallocated(self, head: Pending, tag: str) -> None:
        """The server forgot (or made) prepared statements through SQL: tell the client side,
        which forgets that name, or every name when it cannot be told which."""
        names = head.deallocates
        if tag in ("DEALLOCATE", "PREPARE") and names:
            self._st.deallocated.append(names.pop(0))
        else:
            self._st.deallocated.append(None)

    def _on_probe(self, mtype: int, body: bytearray, head: Pending) -> bytes | None:
        """The answer to the gateway's own search_path query: swallowed. Its DataRow holds the
        role and the search list; ReadyForQuery ends it (`path.probed`)."""
        st = self._st
        if mtype == _B_DATA_ROW:
            values = _text_values(bytes(body))
            head.tags = values if values is not None and len(values) == 3 else ["", "", ""]
            if values is None or len(values) != 3:
                head.error = "unreadable answer"
            return b""
        if mtype == _B_ERROR:
            head.error = codec.error_fields(bytes(body)).get("M", "error")
            return b""
        if mtype == _B_READY:
            st.pending.popleft()
            st.tx_status = chr(body[0]) if body else "I"
            st.path.ready(st.tx_status)
            if head.error is None and len(head.tags) == 3:
                st.path.probed(head.tags[0], head.tags[1], head.tags[2])
            else:
                st.path.probed(None, None)
            return b""
        if mtype in _PROBE_ANSWER:
            return b""
        return None  # ParameterStatus, notices and the like belong to the session: forwarded

    def _start_rows(self, body: bytearray, ctx: MaskContext | None) -> None:
        """A RowDescription: prepare the rewriter of the rows that follow (None when no column
        needs masking, so those rows pass as bytes)."""
        self.rows = None
        self._row_counts = None
        if ctx is None:
            return
        desc = codec.decode_backend(Backend.ROW_DESCRIPTION, bytes(body))
        assert isinstance(desc, codec.RowDescription)
        columns = [
            Column(f.name, kind_for_oid(f.type_oid), ctx.by_oid.get((f.table_oid, f.column_attr)) if f.table_oid else None)
            for f in desc.fields
        ]
        masks = column_maskers(ctx, columns, "postgres")
        if masks.active:
            self.rows = RowMasker(
                [f.type_oid for f in desc.fields], [f.format for f in desc.fields], masks.raw,
                counts=masks.counts, counted=masks.counted,
            )
            self._row_counts = masks

    def _end_rows(self, p: Pending | None) -> None:
        if self._row_counts is not None and p is not None and p.kind != "sync":
            if p.masked is None:
                p.masked = {}
            self._row_counts.add_counts(p.masked)
        self.rows = None
        self._row_counts = None
