"""The gateway's own side queries on a PostgreSQL target (EXPLAIN estimates, the schema catalogue).

A `SideConnection` is one upstream connection opened with `upstream.connect` as the target's
configured user. `query(sql, timeout=...)` sends one simple-protocol Query message (which may hold
several statements: for the gateway's own SQL, such as the catalogue) and returns one `Result` per
statement that returned rows (a RowDescription), values as text (`None` for NULL). Statements
without rows (SET, CREATE, ...) and empty statements give no `Result`. `run(statements,
timeout=...)` sends each statement in its own round trip with the extended protocol (unnamed
Parse/Bind/Describe/Execute/Sync, text results): the server refuses a text holding two statements,
which is what text built from a client's SQL (EXPLAIN estimates) needs.

Errors are `SideQueryError`, whose message is safe to show (the server's own error text or a
description of what went wrong, never the password):

* an ErrorResponse: the rest of the response is read up to ReadyForQuery first, so the connection
  stays usable; `sqlstate` holds the server's code;
* a timeout: a CancelRequest is sent (best effort, so the server stops working too) and the
  connection is closed; `broken` is then True and further queries fail at once;
* the server closing the connection or breaking the protocol: the connection is closed and broken.

By default the session is opened with `default_transaction_read_only = on`: plain EXPLAIN works
(it is not executed), catalogue reads work, anything that writes is refused by the server.

`SidePool` keeps at most `size` idle connections per target (by target name), opens them lazily,
discards broken ones and ones left inside a transaction block, and bounds how many connections
a target may have open at once (`max_open`). No global state: the gateway owns its pools.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence

import trio

from sqlward.adapters.base import Target
from sqlward.adapters.postgres import codec, errors, upstream
from sqlward.adapters.sidequery import Result, SidePoolBase, SideQueryError

__all__ = ["SideQueryError", "Result", "SideConnection", "open_side_connection", "SidePool"]

# Largest single backend message accepted on a side connection (a row, a view definition).
MAX_MESSAGE = 64 << 20
# How long a CancelRequest after a timeout may take before we give up on it.
CANCEL_GRACE = 2.0


_INT32 = struct.Struct("!i").unpack_from
_IGNORED = frozenset({
    codec.Backend.EMPTY_QUERY_RESPONSE, codec.Backend.NOTICE_RESPONSE,
    codec.Backend.NOTIFICATION_RESPONSE, codec.Backend.PARSE_COMPLETE, codec.Backend.BIND_COMPLETE,
    codec.Backend.NO_DATA, codec.Backend.CLOSE_COMPLETE,
})


def _data_row(body: bytes) -> tuple[str | None, ...]:
    """The values of a DataRow body as text (the codec's decoder, minus the Struct, inlined:
    catalogue loads decode thousands of rows)."""
    end = len(body)
    if end < 2:
        raise codec.ProtocolViolation("message body is truncated")
    count = int.from_bytes(body[0:2], "big", signed=True)
    if count < 0:
        raise codec.ProtocolViolation("negative column count")
    pos = 2
    values: list[str | None] = []
    append = values.append
    for _ in range(count):
        if pos + 4 > end:
            raise codec.ProtocolViolation("message body is truncated")
        (length,) = _INT32(body, pos)
        pos += 4
        if length == -1:
            append(None)
            continue
        if length < 0 or pos + length > end:
            raise codec.ProtocolViolation("invalid value length")
        append(body[pos : pos + length].decode("utf-8", "surrogateescape"))
        pos += length
    if pos != end:
        raise codec.ProtocolViolation("unexpected bytes after the end of the message")
    return tuple(values)


class SideConnection:
    """One open upstream connection for side queries. Queries on it run one at a time."""

    def __init__(self, target: Target, conn: upstream.UpstreamConnection) -> None:
        self.target = target
        self._conn = conn
        self._stream = conn.stream
        self._framer = codec.Framer(max_size=MAX_MESSAGE)
        if conn.leftover:
            self._framer.feed(conn.leftover)
        self._lock = trio.Lock()
        self._broken = False
        self.tx_status = conn.tx_status
        self.parameters: dict[str, str] = dict(conn.parameters)

    @property
    def broken(self) -> bool:
        """True once the connection is closed or unusable (timeout, lost, protocol error)."""
        return self._broken

    @property
    def pid(self) -> int:
        return self._conn.pid

    @property
    def reusable(self) -> bool:
        """Open and outside any transaction block: fit to go back to a pool."""
        return not self._broken and self.tx_status == "I"

    async def query(self, sql: str, *, timeout: float) -> list[Result]:
        """Run `sql` (one or more statements) with the simple Query protocol within `timeout`
        seconds; one `Result` per statement that returned rows."""
        return await self._guarded(timeout, lambda: self._exchange(self._simple(sql)))

    async def run(self, statements: Sequence[str] | str, *, timeout: float) -> list[Result]:
        """Run each statement in its own round trip with the extended protocol (unnamed
        Parse, Bind, Describe, Execute, Sync), within `timeout` seconds overall; one `Result` per
        statement that returned rows. The server's parser refuses a text holding more than one
        statement (42601), so text that came from a client cannot smuggle a second one. Stops
        at the first error."""
        texts = [statements] if isinstance(statements, str) else list(statements)

        async def all_of_them() -> tuple[list[Result], SideQueryError | None]:
            results: list[Result] = []
            for text in texts:
                got, error = await self._exchange(self._extended(text))
                results += got
                if error is not None:
                    return results, error
            return results, None

        return await self._guarded(timeout, all_of_them)

    async def _guarded(
        self, timeout: float, exchange: Callable[[], Awaitable[tuple[list[Result], SideQueryError | None]]]
    ) -> list[Result]:
        """One exchange at a time, bounded by `timeout`; a timeout or any failure in the middle
        of a response closes the connection (its position in the response is unknown)."""
        name = self.target.info.name
        if self._broken:
            raise SideQueryError(f"side connection to {name!r} is closed")
        async with self._lock:
            if self._broken:
                raise SideQueryError(f"side connection to {name!r} is closed")
            outcome: tuple[list[Result], SideQueryError | None] | None = None
            try:
                with trio.move_on_after(timeout):
                    outcome = await exchange()
            except BaseException:
                # Cancelled from outside, the server went away, or the protocol broke.
                await self._abort(cancel=False)
                raise
            if outcome is None:
                await self._abort(cancel=True)
                raise SideQueryError(
                    f"side query on {name!r} timed out after {timeout:g} s", errors.QUERY_CANCELED
                )
        results, error = outcome
        if error is not None:
            raise error
        return results

    @staticmethod
    def _simple(sql: str) -> bytes | SideQueryError:
        try:
            return codec.encode_frontend(codec.Query(sql))
        except ValueError as exc:  # NUL inside the text
            return SideQueryError(f"side query cannot be sent: {exc}", errors.CHARACTER_NOT_IN_REPERTOIRE)

    @staticmethod
    def _extended(sql: str) -> bytes | SideQueryError:
        try:
            return b"".join(
                codec.encode_frontend(m)
                for m in (
                    codec.Parse("", sql), codec.Bind("", ""), codec.Describe("P", ""),
                    codec.Execute("", 0), codec.Sync(),
                )
            )
        except ValueError as exc:
            return SideQueryError(f"side query cannot be sent: {exc}", errors.CHARACTER_NOT_IN_REPERTOIRE)

    async def _receive(self) -> tuple[int, bytes]:
        while True:
            try:
                item = self._framer.next()
            except codec.ProtocolViolation as exc:
                raise SideQueryError(
                    f"upstream {self.target.info.name!r} broke the protocol: {exc}", errors.PROTOCOL_VIOLATION
                ) from exc
            if item is not None:
                return item
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SideQueryError(
                    f"side connection to {self.target.info.name!r} was lost", errors.CONNECTION_FAILURE
                ) from exc
            if not data:
                raise SideQueryError(
                    f"upstream {self.target.info.name!r} closed the side connection", errors.CONNECTION_FAILURE
                )
            self._framer.feed(data)

    async def _send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SideQueryError(
                f"side connection to {self.target.info.name!r} was lost", errors.CONNECTION_FAILURE
            ) from exc

    async def _exchange(self, message: bytes | SideQueryError) -> tuple[list[Result], SideQueryError | None]:
        """Send a Query (or an extended-protocol batch ending with Sync) and read the whole
        response, up to ReadyForQuery."""
        if isinstance(message, SideQueryError):
            return [], message
        await self._send(message)
        B = codec.Backend
        results: list[Result] = []
        error: SideQueryError | None = None
        columns: tuple[str, ...] | None = None
        rows: list[tuple[str | None, ...]] = []
        while True:
            mtype, body = await self._receive()
            if mtype == B.DATA_ROW:
                if columns is None:
                    raise SideQueryError("upstream sent a DataRow without a RowDescription", errors.PROTOCOL_VIOLATION)
                try:
                    rows.append(_data_row(body))
                except codec.ProtocolViolation as exc:
                    raise SideQueryError(
                        f"upstream {self.target.info.name!r} broke the protocol: {exc}", errors.PROTOCOL_VIOLATION
                    ) from exc
            elif mtype == B.ROW_DESCRIPTION:
                desc = codec.decode_backend(mtype, body)
                assert isinstance(desc, codec.RowDescription)
                columns = tuple(f.name for f in desc.fields)
                rows = []
            elif mtype == B.COMMAND_COMPLETE:
                if columns is not None:
                    results.append(Result(columns=columns, rows=tuple(rows)))
                columns, rows = None, []
            elif mtype == B.ERROR_RESPONSE:
                fields = codec.error_fields(body)
                if error is None:
                    error = SideQueryError(fields.get("M", "error"), fields.get("C", ""))
                if fields.get("S") in ("FATAL", "PANIC") or fields.get("V") in ("FATAL", "PANIC"):
                    # The server ends the session after a FATAL error; no ReadyForQuery follows.
                    await self._abort(cancel=False)
                    return results, error
                columns, rows = None, []
            elif mtype == B.READY_FOR_QUERY:
                self.tx_status = chr(body[0]) if body else "I"
                return results, error
            elif mtype == B.PORTAL_SUSPENDED:  # not with Execute(max_rows=0); as CommandComplete
                if columns is not None:
                    results.append(Result(columns=columns, rows=tuple(rows)))
                columns, rows = None, []
            elif mtype in _IGNORED:
                pass
            elif mtype == B.PARAMETER_STATUS:
                ps = codec.decode_backend(mtype, body)
                assert isinstance(ps, codec.ParameterStatus)
                self.parameters[ps.name] = ps.value
            elif mtype == B.COPY_IN_RESPONSE:
                await self._send(codec.encode_frontend(codec.CopyFail("COPY is not supported on side connections")))
                if error is None:
                    error = SideQueryError("COPY is not supported on side connections", errors.FEATURE_NOT_SUPPORTED)
            elif mtype in (B.COPY_DATA, B.COPY_DONE, B.COPY_OUT_RESPONSE):
                if error is None:
                    error = SideQueryError("COPY is not supported on side connections", errors.FEATURE_NOT_SUPPORTED)
            else:
                raise SideQueryError(
                    f"upstream {self.target.info.name!r} sent an unexpected {chr(mtype)!r} message "
                    "on a side connection", errors.PROTOCOL_VIOLATION,
                )

    async def _abort(self, *, cancel: bool) -> None:
        """Mark the connection broken and close it; after a timeout, also ask the server to
        stop the running statement."""
        self._broken = True
        if cancel and self._conn.pid:
            with trio.move_on_after(min(CANCEL_GRACE, self.target.connect_timeout)):
                await upstream.send_cancel(self.target, self._conn.pid, self._conn.secret)
        await trio.aclose_forcefully(self._stream)

    async def aclose(self) -> None:
        """Say goodbye (Terminate) and close. Idempotent."""
        if self._broken:
            return
        self._broken = True
        with trio.move_on_after(1.0):
            try:
                await self._stream.send_all(codec.encode_frontend(codec.Terminate()))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(self._stream)


async def open_side_connection(
    target: Target, *, application_name: str = "sqlward:side", read_only: bool = True,
    parameters: Sequence[tuple[str, str]] = (),
) -> SideConnection:
    """Open a side connection to `target` (its configured user, database and TLS settings).
    `parameters` are further startup parameters (run-time settings such as
    `("plan_cache_mode", "force_generic_plan")`); they win over the defaults."""
    params = {"application_name": application_name, "client_encoding": "UTF8"}
    if read_only:
        params["default_transaction_read_only"] = "on"
    params.update(dict(parameters))
    try:
        conn = await upstream.connect(target, list(params.items()))
    except upstream.UpstreamError as exc:
        raise SideQueryError(str(exc), exc.sqlstate) from exc
    return SideConnection(target, conn)


class SidePool(SidePoolBase[SideConnection]):
    """Idle side connections per target name (at most `size` each), opened on demand; see
    `adapters.sidequery.SidePoolBase` for the rules (max_open, timeouts, reconfiguration)."""

    def __init__(
        self, size: int = 2, *, max_open: int = 8, application_name: str = "sqlward:side",
        read_only: bool = True, parameters: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(size, max_open=max_open)
        self.application_name = application_name
        self.read_only = read_only
        self.parameters = tuple(parameters)

    async def _open(self, target: Target) -> SideConnection:
        return await open_side_connection(
            target, application_name=self.application_name, read_only=self.read_only,
            parameters=self.parameters,
        )

    async def query(self, target: Target, sql: str, *, timeout: float) -> list[Result]:
        """Run `sql` on an idle connection to `target` (or a new one). `timeout` bounds the
        whole call: waiting for a free connection, connecting and the query."""
        return await self._run(target, timeout, lambda conn, remaining: conn.query(sql, timeout=remaining))

    async def run(self, target: Target, statements: Sequence[str] | str, *, timeout: float) -> list[Result]:
        """`SideConnection.run` (one statement per round trip, extended protocol) on a pooled
        connection; `timeout` bounds the whole call."""
        return await self._run(
            target, timeout, lambda conn, remaining: conn.run(statements, timeout=remaining)
        )
