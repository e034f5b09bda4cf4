"""The gateway's own side queries on a MySQL / MariaDB target (EXPLAIN estimates, the catalogue).

A `SideConnection` is one upstream connection opened with `upstream.connect` as the target's
configured user (character set utf8mb4, id 45), speaking the text protocol only:
`query(sql, timeout=..., database=...)` sends one COM_QUERY (several statements allowed:
CLIENT_MULTI_STATEMENTS, unless the connection was opened with `multi_statements=False`) and reads
every result of it (CLIENT_MULTI_RESULTS, following SERVER_MORE_RESULTS_EXISTS); it returns one
`Result` per result set, values as text (`None` for NULL). Statements answered with a plain OK
give no `Result`. `run(statements, timeout=..., database=...)` sends each statement in its own
COM_QUERY with multi-statements switched off (COM_SET_OPTION, only when the state must change), so
the server refuses a text that holds a second statement: for text built from a client's SQL.

`database=` switches the connection's current database with COM_INIT_DB first, when it differs
from the current one. The current database is followed through the server's session-state
tracking (CLIENT_SESSION_TRACK, so a `USE` inside a query is seen too); on a server without it,
it is forgotten after every query, so the next `database=` always sends COM_INIT_DB.

Errors are `SideQueryError` (the server's own message, `errno` and `sqlstate`; never the
password):

* an ERR packet ends the response (the server runs no further statement of the request), so the
  connection stays usable;
* a timeout: the connection is closed and `broken`, and `KILL QUERY <id>` is sent on a fresh
  connection (best effort) so the server stops working too;
* the server closing the connection or breaking the protocol: closed and broken.

Capabilities asked for: PROTOCOL_41, MULTI_STATEMENTS, MULTI_RESULTS, PS_MULTI_RESULTS,
DEPRECATE_EOF, SESSION_TRACK (and what `upstream.connect` always adds: LONG_PASSWORD,
SECURE_CONNECTION, PLUGIN_AUTH, PLUGIN_AUTH_LENENC_CLIENT_DATA, CONNECT_ATTRS, TRANSACTIONS,
CONNECT_WITH_DB, SSL as the target's TLS mode says). A server lacking the optional ones is
connected to again with PROTOCOL_41 | MULTI_STATEMENTS | MULTI_RESULTS only. LOCAL_FILES is never
asked for; a LOCAL INFILE request is answered with an empty file.

The session is read-write by default: MariaDB refuses even `EXPLAIN UPDATE` in a READ ONLY
transaction, so `read_only=True` (SET SESSION TRANSACTION READ ONLY) is opt-in.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

import trio

from sqlward.adapters.base import Target
from sqlward.adapters.mysql import messages, upstream
from sqlward.adapters.mysql.charsets import REFUSED_SQL_MODES, lexing_sql_mode
from sqlward.adapters.mysql.constants import Capability, Charset, ServerStatus, SetOption
from sqlward.adapters.mysql.errors import (
    CR_MALFORMED_PACKET,
    CR_SERVER_LOST,
    ER_HANDSHAKE_ERROR,
    ER_QUERY_INTERRUPTED,
    SQLSTATE_GENERAL,
    SQLSTATE_INTERRUPTED,
    SQLSTATE_LINK,
)
from sqlward.adapters.mysql.packets import MAX_PACKET_CHUNK, PacketFramer, ProtocolViolation, encode_packets
from sqlward.adapters.sidequery import Result, SidePoolBase, SideQueryError

__all__ = ["SideQueryError", "Result", "SideConnection", "open_side_connection", "SidePool"]

UTF8MB4 = int(Charset.UTF8MB4_GENERAL_CI)
MAX_PAYLOAD = 64 << 20  # largest logical packet accepted on a side connection
CANCEL_GRACE = 2.0  # how long KILL QUERY after a timeout may take

WANTED_CAPABILITIES = (
    Capability.PROTOCOL_41 | Capability.MULTI_STATEMENTS | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS | Capability.DEPRECATE_EOF | Capability.SESSION_TRACK
)
MINIMAL_CAPABILITIES = Capability.PROTOCOL_41 | Capability.MULTI_STATEMENTS | Capability.MULTI_RESULTS

_MORE = int(ServerStatus.MORE_RESULTS_EXISTS)
_IN_TRANS = int(ServerStatus.IN_TRANS)
_AUTOCOMMIT = int(ServerStatus.AUTOCOMMIT)
_DB_DROPPED = int(ServerStatus.DB_DROPPED)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


def _error(payload: bytes, caps: int) -> SideQueryError:
    err = messages.decode_err(payload, caps)
    if isinstance(err, messages.ErrPacket):
        return SideQueryError(err.message, err.sqlstate, err.errno)
    return SideQueryError("unexpected progress report", SQLSTATE_GENERAL)


class SideConnection:
    """One open upstream connection for side queries. Queries on it run one at a time."""

    def __init__(self, target: Target, conn: upstream.UpstreamConnection, database: str | None) -> None:
        self.target = target
        self._conn = conn
        self._stream = conn.stream
        self.capabilities = conn.capabilities
        self._framer = PacketFramer(max_payload=MAX_PAYLOAD)
        if conn.leftover:
            self._framer.feed(conn.leftover)
        self._seq = 0
        self._lock = trio.Lock()
        self._broken = False
        self.status = conn.status
        self._tracks_schema = bool(conn.capabilities & Capability.SESSION_TRACK)
        # Whether the server currently accepts several statements in one COM_QUERY, and whether
        # `query` may turn that on (COM_SET_OPTION); `run` always turns it off.
        self._multi = bool(conn.capabilities & Capability.MULTI_STATEMENTS)
        self.multi_statements = self._multi
        # The current database as far as we know; None = none or unknown.
        self.database: str | None = database or None

    @property
    def broken(self) -> bool:
        """True once the connection is closed or unusable (timeout, lost, protocol error)."""
        return self._broken

    @property
    def connection_id(self) -> int:
        return self._conn.greeting.connection_id

    @property
    def server_version(self) -> str:
        return self._conn.greeting.server_version

    @property
    def reusable(self) -> bool:
        """Open, autocommit on and outside a transaction: fit to go back to a pool."""
        return not self._broken and not self.status & _IN_TRANS and bool(self.status & _AUTOCOMMIT)

    async def query(self, sql: str, *, timeout: float, database: str | None = None) -> list[Result]:
        """Run `sql` (several statements allowed when the connection was opened with
        `multi_statements=True`) within `timeout` seconds, after switching to `database`
        (COM_INIT_DB) when given and different; one `Result` per result set."""

        async def exchange() -> tuple[list[Result], SideQueryError | None]:
            error = await self._prepare(database, multi=self.multi_statements)
            if error is not None:
                return [], error
            return await self._exchange(sql)

        return await self._guarded(timeout, exchange)

    async def run(
        self, statements: Sequence[str] | str, *, timeout: float, database: str | None = None
    ) -> list[Result]:
        """Run each statement in its own COM_QUERY with multi-statements switched off
        (COM_SET_OPTION when needed), so the server refuses a text holding a second statement
        (text built from a client's SQL: EXPLAIN estimates); within `timeout` seconds overall,
        after switching to `database` when given. Stops at the first error."""
        texts = [statements] if isinstance(statements, str) else list(statements)

        async def exchange() -> tuple[list[Result], SideQueryError | None]:
            error = await self._prepare(database, multi=False)
            if error is not None:
                return [], error
            results: list[Result] = []
            for text in texts:
                got, error = await self._exchange(text)
                results += got
                if error is not None:
                    return results, error
            return results, None

        return await self._guarded(timeout, exchange)

    async def _guarded(
        self, timeout: float, exchange: Callable[[], Awaitable[tuple[list[Result], SideQueryError | None]]]
    ) -> list[Result]:
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
                await self._abort(kill=False)
                raise
            if outcome is None:
                await self._abort(kill=True)
                raise SideQueryError(
                    f"side query on {name!r} timed out after {timeout:g} s", SQLSTATE_INTERRUPTED, ER_QUERY_INTERRUPTED
                )
        results, error = outcome
        if error is not None:
            raise error
        return results

    async def _prepare(self, database: str | None, *, multi: bool) -> SideQueryError | None:
        if multi != self._multi:
            error = await self._set_multi(multi)
            if error is not None:
                return error
        if database and database != self.database:
            return await self._init_db(database)
        return None

    # -- packet I/O -------------------------------------------------------------------------

    async def _read(self) -> bytes:
        while True:
            try:
                packet = self._framer.next(expected_seq=self._seq)
            except ProtocolViolation as exc:
                raise SideQueryError(
                    f"upstream {self.target.info.name!r} broke the protocol: {exc}", exc.sqlstate, exc.errno
                ) from exc
            if packet is not None:
                self._seq = packet.next_seq
                return packet.payload
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SideQueryError(f"side connection to {self.target.info.name!r} was lost", SQLSTATE_LINK, CR_SERVER_LOST) from exc
            if not data:
                raise SideQueryError(f"upstream {self.target.info.name!r} closed the side connection", SQLSTATE_LINK, CR_SERVER_LOST)
            self._framer.feed(data)

    async def _write(self, payload: bytes, *, new_command: bool = False) -> None:
        if new_command:
            self._seq = 0
        data, self._seq = encode_packets(payload, self._seq)
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SideQueryError(f"side connection to {self.target.info.name!r} was lost", SQLSTATE_LINK, CR_SERVER_LOST) from exc

    def _track(self, ok: messages.OkPacket) -> None:
        self.status = ok.status_flags
        schema = ok.schema()
        if schema is not None:
            self.database = schema or None
        if ok.status_flags & _DB_DROPPED:
            self.database = None

    # -- commands ---------------------------------------------------------------------------

    async def _init_db(self, database: str) -> SideQueryError | None:
        caps = self.capabilities
        await self._write(messages.encode(messages.ComInitDb(database), caps), new_command=True)
        reply = await self._read()
        if reply[:1] == b"\xff":
            return _error(reply, caps)
        if reply[:1] != b"\x00":
            raise SideQueryError("unexpected answer to COM_INIT_DB", SQLSTATE_LINK, CR_MALFORMED_PACKET)
        self._track(messages.decode_ok(reply, caps))
        self.database = database
        return None

    async def _set_multi(self, on: bool) -> SideQueryError | None:
        caps = self.capabilities
        option = SetOption.MULTI_STATEMENTS_ON if on else SetOption.MULTI_STATEMENTS_OFF
        await self._write(messages.encode(messages.ComSetOption(int(option)), caps), new_command=True)
        reply = await self._read()
        if reply[:1] == b"\xff":
            return _error(reply, caps)
        if reply[:1] not in (b"\x00", b"\xfe"):
            raise SideQueryError("unexpected answer to COM_SET_OPTION", SQLSTATE_LINK, CR_MALFORMED_PACKET)
        self._multi = on
        return None

    async def _exchange(self, sql: str) -> tuple[list[Result], SideQueryError | None]:
        caps = self.capabilities
        try:
            payload = messages.encode(messages.ComQuery(sql), caps)
        except ValueError as exc:
            return [], SideQueryError(f"side query cannot be sent: {exc}", SQLSTATE_GENERAL)
        await self._write(payload, new_command=True)
        results, error = await self._read_response(caps)
        if not self._tracks_schema:
            self.database = None  # a USE may have run; we cannot tell
        return results, error

    async def _read_response(self, caps: int) -> tuple[list[Result], SideQueryError | None]:
        deprecate_eof = bool(caps & Capability.DEPRECATE_EOF)
        results: list[Result] = []
        while True:
            first = await self._read()
            head = first[0] if first else -1
            if head == 0xFF:
                if messages.is_progress_report(first):
                    continue
                return results, _error(first, caps)
            if head == 0x00:
                ok = messages.decode_ok(first, caps)
                self._track(ok)
                if ok.status_flags & _MORE:
                    continue
                return results, None
            if head == 0xFB:  # LOCAL INFILE request: we never send files
                await self._write(b"")
                continue
            try:
                count = messages.decode_column_count(first, caps).count
                columns = []
                for _ in range(count):
                    columns.append(messages.decode_column_definition(await self._read(), caps).name)
                if not deprecate_eof:
                    eof = await self._read()
                    if eof[:1] != b"\xfe":
                        raise ProtocolViolation("missing EOF after the column definitions")
                rows: list[tuple[str | None, ...]] = []
                while True:
                    packet = await self._read()
                    if packet[:1] == b"\xfe" and len(packet) < MAX_PACKET_CHUNK:
                        if deprecate_eof:
                            ok = messages.decode_ok(packet, caps)
                            self._track(ok)
                            status = ok.status_flags
                        else:
                            status = messages.decode_eof(packet, caps).status_flags
                            self.status = status
                        break
                    if packet[:1] == b"\xff":
                        if messages.is_progress_report(packet):
                            continue
                        return results, _error(packet, caps)
                    rows.append(tuple(_text(v) for v in messages.decode_text_row(packet, count).values))
            except ProtocolViolation as exc:
                raise SideQueryError(
                    f"upstream {self.target.info.name!r} broke the protocol: {exc}", exc.sqlstate, exc.errno
                ) from exc
            results.append(Result(columns=tuple(columns), rows=tuple(rows)))
            if not status & _MORE:
                return results, None

    # -- closing ----------------------------------------------------------------------------

    async def _abort(self, *, kill: bool) -> None:
        self._broken = True
        await trio.aclose_forcefully(self._stream)
        if kill:
            with trio.move_on_after(min(CANCEL_GRACE, self.target.connect_timeout)):
                await _kill_query(self.target, self.connection_id)

    async def aclose(self) -> None:
        """Send COM_QUIT and close. Idempotent."""
        if self._broken:
            return
        self._broken = True
        with trio.move_on_after(1.0):
            try:
                await self._stream.send_all(encode_packets(messages.encode(messages.ComQuit()), 0)[0])
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(self._stream)


async def _kill_query(target: Target, connection_id: int) -> None:
    """Best effort: stop the statement running on `connection_id` (same user, so allowed)."""
    try:
        helper = await upstream.connect(target, capabilities=Capability.PROTOCOL_41, charset=UTF8MB4, database="")
    except upstream.UpstreamError:
        return
    try:
        await helper.stream.send_all(encode_packets(messages.encode(messages.ComQuery(f"KILL QUERY {int(connection_id)}")), 0)[0])
        framer = PacketFramer()
        if helper.leftover:
            framer.feed(helper.leftover)
        while framer.next() is None:
            data = await helper.stream.receive_some(65536)
            if not data:
                break
            framer.feed(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolViolation):
        pass
    finally:
        await trio.aclose_forcefully(helper.stream)


async def open_side_connection(
    target: Target, *, application_name: str = "sqlward:side", read_only: bool = False,
    database: str | None = None, multi_statements: bool = True,
) -> SideConnection:
    """Open a side connection to `target` (its user, TLS settings and, unless `database` says
    otherwise, its database). `application_name` is sent as the `program_name` connection
    attribute (performance_schema.session_connect_attrs). With `multi_statements=False`,
    CLIENT_MULTI_STATEMENTS is not negotiated and `query` never turns it on: the server refuses
    any text holding two statements."""
    db = target.database if database is None else database
    wanted = WANTED_CAPABILITIES if multi_statements else WANTED_CAPABILITIES & ~Capability.MULTI_STATEMENTS
    minimal = MINIMAL_CAPABILITIES if multi_statements else MINIMAL_CAPABILITIES & ~Capability.MULTI_STATEMENTS
    attributes = (("program_name", application_name), ("_client_name", "sqlward"))
    try:
        try:
            conn = await upstream.connect(
                target, capabilities=wanted, charset=UTF8MB4, attributes=attributes, database=db
            )
        except upstream.UpstreamError as exc:
            if exc.errno != ER_HANDSHAKE_ERROR:  # the server lacks an optional capability: ask for less
                raise
            conn = await upstream.connect(
                target, capabilities=minimal, charset=UTF8MB4, attributes=attributes, database=db
            )
    except upstream.UpstreamError as exc:
        raise SideQueryError(str(exc), exc.sqlstate, exc.errno) from exc
    side = SideConnection(target, conn, db)
    try:
        await _readable_sql_mode(side, target)
        if read_only:
            await side.query("SET SESSION TRANSACTION READ ONLY", timeout=target.connect_timeout)
    except BaseException:
        await side.aclose()
        raise
    return side


async def _readable_sql_mode(side: SideConnection, target: Target) -> None:
    """Side connections read client SQL (EXPLAIN <statement>) as the gateway reads it: when the
    server's default sql_mode holds ANSI_QUOTES or NO_BACKSLASH_ESCAPES (`charsets`), this session
    takes the same mode without them and without the combination modes that include them."""
    results = await side.query("SELECT @@SESSION.sql_mode", timeout=target.connect_timeout)
    value = (results[0].rows[0][0] if results and results[0].rows else None) or ""
    if lexing_sql_mode(value) is None:
        return
    keep = [p.strip().upper() for p in value.split(",")]
    keep = [p for p in keep if p and p not in REFUSED_SQL_MODES and re.fullmatch(r"[A-Z0-9_]+", p)]
    await side.query("SET SESSION sql_mode = '" + ",".join(keep) + "'", timeout=target.connect_timeout)
    results = await side.query("SELECT @@SESSION.sql_mode", timeout=target.connect_timeout)
    value = (results[0].rows[0][0] if results and results[0].rows else None) or ""
    if lexing_sql_mode(value) is not None:
        raise SideQueryError(f"the side connection's sql_mode still holds {lexing_sql_mode(value)}", SQLSTATE_GENERAL)


class SidePool(SidePoolBase[SideConnection]):
    """Idle side connections per target name (at most `size` each), opened on demand; see
    `adapters.sidequery.SidePoolBase` for the rules (max_open, timeouts, reconfiguration)."""

    def __init__(
        self, size: int = 2, *, max_open: int = 8, application_name: str = "sqlward:side",
        read_only: bool = False, multi_statements: bool = True,
    ) -> None:
        super().__init__(size, max_open=max_open)
        self.application_name = application_name
        self.read_only = read_only
        self.multi_statements = multi_statements

    async def _open(self, target: Target) -> SideConnection:
        return await open_side_connection(
            target, application_name=self.application_name, read_only=self.read_only,
            multi_statements=self.multi_statements,
        )

    async def query(
        self, target: Target, sql: str, *, timeout: float, database: str | None = None
    ) -> list[Result]:
        """Run `sql` on an idle connection to `target` (or a new one), in `database` — by
        default the target's own database (a borrowed connection may have been switched by an
        earlier query). `timeout` bounds the whole call: waiting, connecting and the query."""
        db = database if database is not None else (target.database or None)
        return await self._run(
            target, timeout, lambda conn, remaining: conn.query(sql, timeout=remaining, database=db)
        )

    async def run(
        self, target: Target, statements: Sequence[str] | str, *, timeout: float,
        database: str | None = None,
    ) -> list[Result]:
        """`SideConnection.run` (one statement per COM_QUERY, multi-statements off) on a pooled
        connection, in `database` (default: the target's); `timeout` bounds the whole call."""
        db = database if database is not None else (target.database or None)
        return await self._run(
            target, timeout, lambda conn, remaining: conn.run(statements, timeout=remaining, database=db)
        )
