"""Sans-IO tracking of one server response, so a relay knows where it ends without decoding rows.

MySQL is strictly request/response: after each command the server sends one response whose
shape depends on the command (https://dev.mysql.com/doc/dev/mysql-server/latest/
page_protocol_command_phase.html). `ResponseScanner.scan(buf)` walks the wire packets in `buf`,
looks only at the first bytes of the packets that matter (OK, ERR, EOF, column counts, the
PREPARE_OK header) and reports how many bytes may be forwarded and whether the response is
complete. Row packets are skipped by their length, and a row larger than the buffer is streamed:
its remaining bytes are counted down across calls instead of being held.

Shapes:
  RESULTSET  (COM_QUERY, COM_STMT_EXECUTE, COM_PROCESS_INFO): OK | ERR | LOCAL INFILE request |
             column count, column definitions, [EOF], rows, EOF/OK — repeated while the
             terminator carries SERVER_MORE_RESULTS_EXISTS. A binary-protocol cursor ends after
             the metadata (SERVER_STATUS_CURSOR_EXISTS).
  FETCH      (COM_STMT_FETCH): rows, then EOF/OK, or ERR.
  PREPARE    (COM_STMT_PREPARE): PREPARE_OK, parameter definitions [EOF], column definitions
             [EOF], or ERR.
  FIELD_LIST (COM_FIELD_LIST): column definitions until EOF/OK, or ERR.
  SIMPLE     (COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, COM_STMT_RESET, COM_SET_OPTION, ...):
             one OK, EOF or ERR packet.
  STRING     (COM_STATISTICS): one packet of text.

Besides the end, the scanner keeps what the terminating packets say: the warning count of the
last OK / EOF (`warnings`) and, for a client that negotiated CLIENT_SESSION_TRACK, the current
database the server reports with SESSION_TRACK_SCHEMA in any OK packet of the response
(`schema`, the last one reported; None when none was) and the `character_set_client` it reports
with SESSION_TRACK_SYSTEM_VARIABLES (`client_charset`). Only OK packets with
SERVER_SESSION_STATE_CHANGED are decoded for that.

With CLIENT_DEPRECATE_EOF the EOF after column definitions is absent and the terminator of rows
is an OK packet with the 0xFE header; a 0xFE packet shorter than 0xFFFFFF bytes can never be a
row, which is how terminators are told apart from rows in both modes.
"""

from __future__ import annotations

from enum import IntEnum

from . import messages
from .constants import Capability
from .packets import MAX_PACKET_CHUNK, ProtocolViolation

MORE_RESULTS_EXISTS = 0x0008
CURSOR_EXISTS = 0x0040
SESSION_STATE_CHANGED = 0x4000
_TRACKING_CAPS = int(Capability.PROTOCOL_41 | Capability.SESSION_TRACK)


class Shape(IntEnum):
    RESULTSET = 0
    FETCH = 1
    PREPARE = 2
    FIELD_LIST = 3
    SIMPLE = 4
    STRING = 5


class _State(IntEnum):
    FIRST = 0  # the first packet of a (next) result
    COLUMNS = 1  # column definitions to come
    COLUMNS_EOF = 2  # the EOF after column definitions (no DEPRECATE_EOF)
    ROWS = 3
    PREP_PARAMS = 4
    PREP_PARAMS_EOF = 5
    PREP_COLUMNS = 6
    PREP_COLUMNS_EOF = 7
    DONE = 8
    INFILE = 9  # the server asked for a LOCAL INFILE; the client must send the file


_DONE, _INFILE, _ROWS, _COLUMNS = _State.DONE, _State.INFILE, _State.ROWS, _State.COLUMNS


def _lenenc(buf: bytearray, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of a length-encoded integer inside [pos, end)."""
    if pos >= end:
        raise ProtocolViolation("truncated length-encoded integer")
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None or pos + 1 + size > end:
        raise ProtocolViolation("invalid length-encoded integer")
    return int.from_bytes(buf[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


class ResponseScanner:
    __slots__ = (
        "shape", "deprecate_eof", "state", "_columns_left", "_params_left", "_skip",
        "_continued", "rows", "affected_rows", "results", "error_code", "error_sqlstate",
        "error_message", "statement_id", "param_count", "column_count", "status", "warnings", "warnings_at",
        "session_track", "schema", "client_charset",
    )

    def __init__(self, shape: Shape, *, deprecate_eof: bool, session_track: bool = False) -> None:
        self.shape = shape
        self.deprecate_eof = deprecate_eof
        self.session_track = session_track  # OK packets carry session state (CLIENT_SESSION_TRACK)
        self.state = _State.FIRST if shape in (Shape.RESULTSET, Shape.PREPARE) else (
            _State.ROWS if shape == Shape.FETCH else _State.FIRST
        )
        self._columns_left = 0
        self._params_left = 0
        self._skip = 0  # bytes of a streamed packet still to pass
        self._continued = False  # the current logical packet has more 0xFFFFFF chunks
        # Outcome, for the audit trail.
        self.rows = 0
        self.affected_rows: int | None = None
        self.results = 0
        self.error_code: int | None = None
        self.error_sqlstate = ""
        self.error_message = ""
        self.statement_id: int | None = None
        self.param_count = 0
        self.column_count = 0
        self.status = 0
        self.warnings = 0  # of the last OK / EOF
        # Where that OK / EOF's warning count is in the buffer of the last `scan` call (-1: not
        # there), so a gateway note can be counted in it (approvals).
        self.warnings_at = -1
        self.schema: str | None = None  # the last SESSION_TRACK_SCHEMA reported
        # The last character_set_client the server reported (SESSION_TRACK_SYSTEM_VARIABLES).
        self.client_charset: str | None = None

    @property
    def done(self) -> bool:
        return self.state == _State.DONE

    @property
    def wants_infile(self) -> bool:
        return self.state == _State.INFILE

    def resume_after_infile(self) -> None:
        """The client has sent the file; the server's OK/ERR (and more results) follow."""
        self.state = _State.FIRST

    def scan(self, buf: bytearray) -> int:
        """Consume what can be judged in `buf`; returns how many bytes may be forwarded.
        Stops at the end of the response (see `done`), or at the LOCAL INFILE request."""
        pos = 0
        n = len(buf)
        state = self.state
        while pos < n and state != _DONE and state != _INFILE:
            if self._skip:
                step = min(self._skip, n - pos)
                pos += step
                self._skip -= step
                continue
            if n - pos < 4:
                break
            length = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            end = pos + 4 + length
            if self._continued:  # a further chunk of a split logical packet: pass through
                self._continued = length == MAX_PACKET_CHUNK
                if end > n:
                    self._skip = end - n
                    return n
                pos = end
                continue
            if length and n - pos < 5:
                break  # the first payload byte decides what this packet is
            if state == _ROWS and length and buf[pos + 4] < 0xFE:
                self.rows += 1
                self._continued = length == MAX_PACKET_CHUNK
                if end > n:
                    self._skip = end - n
                    return n
                pos = end
                continue
            if length == MAX_PACKET_CHUNK:
                # Only rows and column values are that large; anything else is not a packet we
                # need to look into beyond its header.
                self._continued = True
                if state == _ROWS:
                    self.rows += 1
                if end > n:
                    self._skip = end - n
                    return n
                pos = end
                continue
            if end > n:
                break  # wait for the whole (small) packet
            if state == _COLUMNS and length and buf[pos + 4] != 0xFF:  # the common case, inline
                self._columns_left -= 1
                if self._columns_left == 0:
                    state = self.state = _State.ROWS if self.deprecate_eof else _State.COLUMNS_EOF
                pos = end
                continue
            self._packet(buf, pos + 4, end, length)
            state = self.state
            pos = end
        return pos

    # -- one complete logical packet (not a row) ----------------------------------------------

    def _terminator(self, buf: bytearray, start: int, end: int) -> None:
        """An EOF or an OK (0xFE header under DEPRECATE_EOF) ending rows or metadata."""
        if 5 <= end - start < 9 and not self.deprecate_eof:  # EOF: 0xFE warnings(2) status(2)
            self.warnings = int.from_bytes(buf[start + 1 : start + 3], "little")
            self.warnings_at = start + 1
            self.status = int.from_bytes(buf[start + 3 : start + 5], "little")
        else:
            _, p = _lenenc(buf, start + 1, end)
            _, p = _lenenc(buf, p, end)
            if p + 2 <= end:
                self.status = int.from_bytes(buf[p : p + 2], "little")
            self.warnings = int.from_bytes(buf[p + 2 : p + 4], "little") if p + 4 <= end else 0
            self.warnings_at = p + 2 if p + 4 <= end else -1
            self._tracked(buf, start, end)

    def _tracked(self, buf: bytearray, start: int, end: int) -> None:
        """An OK packet's SESSION_TRACK_SCHEMA, when the session state changed."""
        if self.session_track and self.status & SESSION_STATE_CHANGED:
            ok = messages.decode_ok(bytes(buf[start:end]), _TRACKING_CAPS)
            schema = ok.schema()
            if schema is not None:
                self.schema = schema
            for name, value in ok.system_variables():
                if name.lower() == "character_set_client":
                    self.client_charset = value.lower()

    def _error(self, buf: bytearray, start: int, end: int) -> None:
        body = bytes(buf[start:end])
        self.error_code = int.from_bytes(body[1:3], "little") if len(body) >= 3 else 0
        if len(body) >= 9 and body[3:4] == b"#":
            self.error_sqlstate = body[4:9].decode("ascii", "replace")
            self.error_message = body[9:].decode("utf-8", "replace")
        else:
            self.error_message = body[3:].decode("utf-8", "replace")
        self.state = _State.DONE

    def _after_result(self) -> None:
        self.results += 1
        if self.status & MORE_RESULTS_EXISTS and self.shape == Shape.RESULTSET:
            self.state = _State.FIRST
        else:
            self.state = _State.DONE

    def _packet(self, buf: bytearray, start: int, end: int, length: int) -> None:
        state = self.state
        head = buf[start] if length else -1
        if head == 0xFF and self.shape != Shape.STRING:
            if length >= 3 and buf[start + 1] == 0xFF and buf[start + 2] == 0xFF:
                return  # MariaDB progress report (errno 0xFFFF): informational
            self._error(buf, start, end)
            return
        if self.shape == Shape.STRING:
            self.state = _State.DONE
            return
        if self.shape == Shape.SIMPLE:
            if head == 0x00:
                self._ok(buf, start, end)
            elif head == 0xFE:
                self._terminator(buf, start, end)
            self.state = _State.DONE
            return
        if self.shape == Shape.FIELD_LIST:
            if head == 0xFE:  # a column definition starts with the catalog "def", never 0xFE
                self.state = _State.DONE
            return
        if state == _State.FIRST:
            if self.shape == Shape.PREPARE:
                if head != 0x00 or length < 12:
                    raise ProtocolViolation("malformed COM_STMT_PREPARE response")
                self.statement_id = int.from_bytes(buf[start + 1 : start + 5], "little")
                self.column_count = int.from_bytes(buf[start + 5 : start + 7], "little")
                self.param_count = int.from_bytes(buf[start + 7 : start + 9], "little")
                self._params_left = self.param_count
                self._columns_left = self.column_count
                self._prepare_next()
                return
            if head == 0x00:
                self._ok(buf, start, end)
                self._after_result()
                return
            if head == 0xFB:
                self.state = _State.INFILE
                return
            count, _ = _lenenc(buf, start, end)
            if count == 0:
                raise ProtocolViolation("result set with zero columns")
            self.column_count = count
            self._columns_left = count
            self.state = _State.COLUMNS
            return
        if state == _State.COLUMNS:
            self._columns_left -= 1
            if self._columns_left == 0:
                self.state = _State.ROWS if self.deprecate_eof else _State.COLUMNS_EOF
            return
        if state == _State.COLUMNS_EOF:
            self._terminator(buf, start, end)
            self.state = _State.DONE if self.status & CURSOR_EXISTS else _State.ROWS
            return
        if state == _State.ROWS:
            # Only terminators reach here (rows are counted in scan()).
            self._terminator(buf, start, end)
            if self.status & CURSOR_EXISTS and self.shape == Shape.RESULTSET:
                self.state = _State.DONE
                return
            self._after_result()
            return
        if state == _State.PREP_PARAMS:
            self._params_left -= 1
            if self._params_left == 0:
                self.state = _State.PREP_COLUMNS if self.deprecate_eof else _State.PREP_PARAMS_EOF
                if self.deprecate_eof:
                    self._prepare_columns()
            return
        if state == _State.PREP_PARAMS_EOF:
            self._prepare_columns()
            return
        if state == _State.PREP_COLUMNS:
            self._columns_left -= 1
            if self._columns_left == 0:
                self.state = _State.DONE if self.deprecate_eof else _State.PREP_COLUMNS_EOF
            return
        if state == _State.PREP_COLUMNS_EOF:
            self.state = _State.DONE
            return

    def _prepare_next(self) -> None:
        if self._params_left:
            self.state = _State.PREP_PARAMS
        else:
            self._prepare_columns()

    def _prepare_columns(self) -> None:
        self.state = _State.PREP_COLUMNS if self._columns_left else _State.DONE

    def _ok(self, buf: bytearray, start: int, end: int) -> None:
        affected, p = _lenenc(buf, start + 1, end)
        _, p = _lenenc(buf, p, end)
        self.affected_rows = (self.affected_rows or 0) + affected
        if p + 2 <= end:
            self.status = int.from_bytes(buf[p : p + 2], "little")
        else:
            self.status = 0
        self.warnings = int.from_bytes(buf[p + 2 : p + 4], "little") if p + 4 <= end else 0
        self.warnings_at = p + 2 if p + 4 <= end else -1
        self._tracked(buf, start, end)
