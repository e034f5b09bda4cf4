"""Masking relay of one MySQL / MariaDB command response (sans-IO), for sessions under masking.

How it works: `MaskingRelay.feed(buf)` takes the complete logical packets at the front of `buf`
(a packet of 0xFFFFFF bytes continues in the next one), runs each through the same
`ResponseScanner` the plain relay uses (so the end of the response is found the same way) and
looks at what the scanner says the packet is:

- a column definition: decoded; once the last one of a result set is in, the per-column
  maskers are built (`adapters.maskcolumns.column_maskers`: the request's plan, then the wire
  origin `schema.org_table` / `org_name` checked against the masked columns, then content
  classifiers), and a `TextRowMasker` (COM_QUERY) or `BinaryRowMasker` (COM_STMT_EXECUTE /
  FETCH) is ready; None when no column needs masking, and rows then pass as bytes;
- a row: rewritten by that masker;
- an ERR packet of a request reading masked columns: its message is replaced (server texts
  can quote values);
- with `hide_messages` (the session has read masked columns since its diagnostics area was last
  emptied): the rows of a SHOW WARNINGS / SHOW ERRORS result (three columns Level, Code,
  Message, whatever statement or protocol produced them: COM_QUERY, a multi-statement, a
  prepared statement, EXECUTE IMMEDIATE) get `HIDDEN_MESSAGE` as their Message; Level and Code
  stay. Warnings and notes can quote a value (`CAST(email AS SIGNED)` leaves "Truncated
  incorrect INTEGER value: '<the email>'").

Rewritten payloads are framed again. A payload that needs a different number of packets than
before shifts the sequence ids of every later packet of the response, so the relay renumbers
them (`_delta`). A LOCAL INFILE request cannot be masked and raises `ProtocolViolation` (such
statements are refused before they reach the server for identities under masking).

With a cursor (COM_STMT_EXECUTE with SERVER_STATUS_CURSOR_EXISTS) the rows come later, by
COM_STMT_FETCH: `row_masker` is handed to the relay of each fetch.
"""

from __future__ import annotations

from sqlward.masking.context import MaskContext
from sqlward.adapters.maskcolumns import Column, ColumnMasks, column_maskers
from sqlward.adapters.mysql import messages
from sqlward.adapters.mysql.packets import MAX_PACKET_CHUNK, ProtocolViolation, encode_packets
from sqlward.adapters.mysql.response import CURSOR_EXISTS, ResponseScanner, Shape, _State
from sqlward.adapters.mysql.rowmask import BinaryRowMasker, Masker, TextRowMasker, kind_for_column

__all__ = ["HIDDEN_MESSAGE", "MaskingRelay", "RowState", "is_diagnostics_result"]

# The Message of a SHOW WARNINGS / SHOW ERRORS row while the session's diagnostics may quote a
# masked value (it fits SHOW WARNINGS' VARCHAR(512)).
HIDDEN_MESSAGE = "sqlward hides this message because the statement read masked columns"
_HIDDEN = HIDDEN_MESSAGE.encode()
_DIAGNOSTICS_COLUMNS = ("level", "code", "message")


def is_diagnostics_result(names: list[str]) -> bool:
    """Are these the columns of SHOW WARNINGS / SHOW ERRORS (Level, Code, Message)? Told by
    their names alone: a SELECT that spells them hides its third column too, which is harmless."""
    return len(names) == 3 and tuple(n.lower() for n in names) == _DIAGNOSTICS_COLUMNS


def _hidden_message(value: bytes | None) -> bytes | None:
    return None if value is None else _HIDDEN


class RowState:
    """The row rewriter of a result set and its masked-value counters."""

    __slots__ = ("masker", "counts")

    def __init__(self, masker: TextRowMasker | BinaryRowMasker | None, counts: ColumnMasks | None) -> None:
        self.masker = masker
        self.counts = counts


class MaskingRelay:
    __slots__ = (
        "ctx", "binary", "capabilities", "scanner", "_delta", "_columns", "_rows", "masked",
        "error_hidden", "cursor_rows", "hide_messages", "hide_errors",
    )

    def __init__(
        self,
        ctx: MaskContext | None,
        *,
        shape: Shape,
        binary: bool,
        deprecate_eof: bool,
        capabilities: int,
        rows: RowState | None = None,
        hide_messages: bool = False,
        hide_errors: bool | None = None,
        session_track: bool = False,
    ) -> None:
        self.ctx = ctx
        self.hide_messages = hide_messages
        # The request reads masked values: its ERR text is replaced (default: the plan says so).
        self.hide_errors = (
            hide_errors if hide_errors is not None else ctx is not None and ctx.request.redact_errors
        )
        self.binary = binary
        self.capabilities = capabilities
        self.scanner = ResponseScanner(shape, deprecate_eof=deprecate_eof, session_track=session_track)
        self._delta = 0
        self._columns: list[messages.ColumnDefinition41] = []
        self._rows: RowState | None = rows  # FETCH: the rewriter of the cursor's result set
        self.masked: dict[str, int] = {}
        self.error_hidden = False
        self.cursor_rows: RowState | None = None  # set when an EXECUTE opened a cursor

    @property
    def done(self) -> bool:
        return self.scanner.done

    def feed(self, buf: bytearray) -> bytes:
        """Consume the complete packets at the front of `buf`; returns the bytes for the client."""
        out: list[bytes] = []
        scanner = self.scanner
        while not scanner.done:
            if scanner.wants_infile:
                raise ProtocolViolation("LOCAL INFILE cannot be relayed for a session under masking")
            pos = 0
            chunks: list[tuple[int, int]] = []
            complete = False
            while len(buf) - pos >= 4:
                length = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
                end = pos + 4 + length
                if end > len(buf):
                    break
                chunks.append((pos + 4, end))
                pos = end
                if length < MAX_PACKET_CHUNK:
                    complete = True
                    break
            if not complete:
                break
            raw = bytes(buf[:pos])
            first_seq = buf[3]
            payload = raw[4:] if len(chunks) == 1 else b"".join(raw[s:e] for s, e in chunks)
            del buf[:pos]
            state = scanner.state
            new = self._process(state, payload)
            consumed = scanner.scan(bytearray(raw))
            if consumed != len(raw):
                raise ProtocolViolation("response packet not consumed whole by the scanner")
            if (
                state in (_State.COLUMNS, _State.COLUMNS_EOF)
                and scanner.state in (_State.ROWS, _State.DONE)
                and not (payload and payload[0] == 0xFF)
            ):
                self._start_rows()
                if scanner.state == _State.DONE:  # a cursor: the rows come by COM_STMT_FETCH
                    self.cursor_rows = self._rows
            if state == _State.ROWS and scanner.state == _State.DONE and scanner.status & CURSOR_EXISTS:
                # CLIENT_DEPRECATE_EOF: the metadata of a cursor ends with an OK carrying
                # SERVER_STATUS_CURSOR_EXISTS, after which the rows come by COM_STMT_FETCH.
                self.cursor_rows = self._rows
            if state == _State.ROWS and scanner.state != _State.ROWS:
                self._end_rows()
            if new is None and self._delta == 0:
                out.append(raw)
                continue
            data, _ = encode_packets(new if new is not None else payload, (first_seq + self._delta) & 0xFF)
            new_chunks = (len(new if new is not None else payload) // MAX_PACKET_CHUNK) + 1
            self._delta += new_chunks - len(chunks)
            out.append(data)
        if scanner.done:
            self._end_rows()
        return b"".join(out)

    # ------------------------------------------------------------------------------------

    def _process(self, state: int, payload: bytes) -> bytes | None:
        if not payload:
            return None
        head = payload[0]
        if head == 0xFF and len(payload) >= 3 and not (payload[1] == 0xFF and payload[2] == 0xFF):
            if self.hide_errors:
                errno = int.from_bytes(payload[1:3], "little")
                sqlstate = payload[4:9].decode("ascii", "replace") if payload[3:4] == b"#" else None
                self.error_hidden = True
                return messages.err_packet(
                    errno, sqlstate,
                    f"the statement failed (error {errno}); sqlward hides the server's message because "
                    "the statement reads masked columns",
                )
            return None
        if state == _State.FIRST:
            self._columns = []
            return None
        if state == _State.COLUMNS:
            self._columns.append(messages.decode_column_definition(payload, self.capabilities))
            return None
        if state == _State.ROWS and self._rows is not None and self._rows.masker is not None:
            if head == 0xFE and len(payload) < MAX_PACKET_CHUNK:
                return None  # the terminator
            try:
                return self._rows.masker.mask_row(payload)
            except ValueError as exc:
                raise ProtocolViolation(f"cannot mask a malformed row: {exc}") from exc
        return None

    def _start_rows(self) -> None:
        ctx = self.ctx
        self._rows = None
        maskers: list[Masker | None] | None = None
        counts: ColumnMasks | None = None
        if ctx is not None:
            columns = [
                Column(
                    c.name,
                    kind_for_column(c.column_type, c.flags, c.character_set),
                    ctx.by_name.get((f"{c.schema}.{c.org_table}".lower(), c.org_name.lower())) if c.org_table else None,
                )
                for c in self._columns
            ]
            masks = column_maskers(ctx, columns, "mysql")
            if masks.active:
                maskers, counts = list(masks.maskers), masks
        if self.hide_messages and is_diagnostics_result([c.name for c in self._columns]):
            maskers = maskers if maskers is not None else [None] * len(self._columns)
            maskers[2] = _hidden_message
        if maskers is None:
            if ctx is not None:
                self._rows = RowState(None, None)
            return
        if self.binary:
            try:
                masker: TextRowMasker | BinaryRowMasker = BinaryRowMasker(
                    [c.column_type for c in self._columns], [c.flags for c in self._columns], maskers,
                    decimals=[c.decimals for c in self._columns],
                )
            except ValueError as exc:  # a column type without a binary encoding: cannot mask
                raise ProtocolViolation(f"cannot mask this binary result set: {exc}") from exc
        else:
            masker = TextRowMasker(maskers)
        self._rows = RowState(masker, counts)

    def _end_rows(self) -> None:
        rows = self._rows
        if rows is not None and rows.counts is not None:
            rows.counts.add_counts(self.masked)
            rows.counts.counts[:] = [0] * len(rows.counts.counts)
