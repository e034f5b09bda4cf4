"""One MySQL / MariaDB client connection through the gateway: the thin trio driver.

Connection phase (`_handshake`): the gateway greets with its own connection id and nonce, the
server version and the capabilities its listener learnt from the upstream (`MysqlServerState`, so
DEPRECATE_EOF, SESSION_TRACK and multi-results mean the same on both sides and packets can be
forwarded untouched), and caching_sha2_password as the default plugin. An SSLRequest upgrades to
TLS. Static identities prove their secret with caching_sha2_password (fast path once the
identity has logged in since the gateway started, full path before that: the password in clear
over TLS or RSA-encrypted on plain TCP, as MySQL's own cache behaves) or mysql_native_password;
other user names may only present a cleartext password (mysql_clear_password), and only over
TLS: the seam for tokens. The handshake's schema names the target; the upstream session is
opened with the gateway's own credentials, then the client gets its OK.

Command phase (`_command_loop`): strictly one command, one response. `relaystate.command_route`
says what each command is. Every request is judged by the statement pipeline
(`StatementPipeline.judge`, the one place that decides) before anything is forwarded, and its
decision is on disk by then: COM_QUERY, COM_STMT_PREPARE, COM_FIELD_LIST (as the `SELECT * FROM t
LIMIT 0` it amounts to), COM_CHANGE_USER ("CHANGE USER"), COM_PROCESS_KILL (as the `KILL
CONNECTION <id>` it is), each COM_STMT_EXECUTE (and the statement again when the policy was
reloaded since PREPARE), each COM_STMT_FETCH (an execution: `statement.executed` with command
COM_STMT_FETCH, its completion counting the rows it returned), the commands that would bypass SQL policy (COM_CREATE_DB, COM_DROP_DB,
replication, unknown command bytes) and a cursor FETCH whose rows cannot be masked. A refusal is
an ERR packet (1227, SQLSTATE 42000, naming the rule; `errors.error_reply`) and the session goes
on. Allowed commands are forwarded as they came; the response is relayed by
`response.ResponseScanner` (or `maskrelay.MaskingRelay` for identities under masking), which
finds its end without decoding rows, and the `statement.completed` record is flushed in one
write before the last bytes reach the client. A KILL verdict names a gateway connection id: the
session looks it up in the listener's `SessionRegistry`, reaches only sessions of the same
identity, and runs the KILL upstream on a helper connection. COM_CHANGE_USER re-authenticates
against the gateway's identities and resets the upstream session instead of being passed on.

The current database (`SessionText.schema`, which qualifies unqualified table names for rules
and masking) is the server's, never read off a statement's text: the name COM_INIT_DB sent when
the server accepted it, SESSION_TRACK_SCHEMA in the server's OK packets (clients with
CLIENT_SESSION_TRACK), and after a request that may have moved it in a way the text does not
settle (USE, also in a multi-statement that failed after it; EXECUTE [IMMEDIATE]; a prepared
USE; CALL; DROP DATABASE; anything unparsed) the answer to a `SELECT DATABASE()` the session
sends itself. COM_RESET_CONNECTION keeps the database (as MariaDB and MySQL do);
COM_CHANGE_USER puts the upstream session back on the target's database. Within one
multi-statement request the pipeline follows a parsed USE for its rules (not for masking); a
statement naming tables after a move it cannot follow (SET STATEMENT ... FOR USE, EXECUTE, CALL,
DROP DATABASE, unparsed text; under masking any USE) makes the session refuse the request
(`relaystate.unsettled_database`, `UnsettledDatabase`).

Messages under masking: once a request of a session under masking has read a table with masked
columns (or, with content classifiers, any table), the server's diagnostics area may quote
masked values (`CAST(email AS SIGNED)` warns "Truncated incorrect INTEGER value: '<email>'"),
and MariaDB keeps warnings across statements that use no table. From then on, until
COM_RESET_CONNECTION or COM_CHANGE_USER empties the area: the Message of SHOW WARNINGS / SHOW
ERRORS rows is replaced by a fixed sentence (Level and Code kept; `maskrelay`), on every
protocol path; GET DIAGNOSTICS ... CONDITION is refused (`MaskedDiagnostics`, naming the
masking rule); and when such a request left warnings or an error, the session empties the area
(a statement on a derived table) before the next request that calls a function, since a stored
function reads its caller's diagnostics. The ERR packet of the request itself is rewritten as
before. The warning counts (OK / EOF, @@warning_count) pass unchanged.

Hardened edges (issue 12). Before authentication every client packet (handshake response,
SSLRequest, auth-switch and caching_sha2 answers, COM_CHANGE_USER's exchange) is capped at
`errors.PREAUTH_MAX_PACKET` (64 KiB), refused from its header with ERR 1153. Every
`connection.opened` ends in `connection.refused` (whatever ended it before authentication: a
refusal, the client gone, a TLS failure, a malformed or oversized packet, the timeout) or, once
authenticated, `connection.closed`. Logins ask the gatekeeper's throttle first (`login_gate`)
and report each judged failure and success (`login_failed` / `login_succeeded`, COM_CHANGE_USER
included); unknown names and wrong secrets get one refusal text; TLS is advised only on a
listener that has it. The identity label goes upstream as a hex literal converted to utf8mb4
(`identity_statement`), immune to the client's character set. Client SQL is read in the
character set the server reads it in, or refused (`charsets`): at login (and the server is asked
which one it took), in COM_CHANGE_USER (applied upstream), in every in-session switch, and when
the server reports one it cannot read the session refuses requests until it is set back. The
same holds for a sql_mode that changes how the server lexes SQL (ANSI_QUOTES,
NO_BACKSLASH_ESCAPES and the combination modes that include them; `charsets.sql_mode_effect`): a
SET naming one is refused (1227, rule "sql-reading"), a value the text does not settle is checked
with the server (`@@sql_mode`, asked with the character set: at login, after COM_RESET_CONNECTION
and COM_CHANGE_USER, after every request that assigns sql_mode) and SERVER_STATUS_NO_BACKSLASH_
ESCAPES is watched in every status; once the server holds such a mode every request is refused
until a plain SET sql_mode puts a readable one back (a login to such a server is refused). Every
request has its record on disk before it reaches the upstream (COM_INIT_DB is decided as the USE
it amounts to, COM_RESET_CONNECTION recorded by the session); a request whose record cannot be
written is refused (1227 `audit-unavailable`) and the session goes on; a response cut off (the
upstream died) still gets its `statement.completed` with the error.

Error handling: every error that ends the session, and every error the gateway answers itself,
goes through `errors.error_reply` (the one mapping to ERR packets); unexpected exceptions are
logged with their traceback and reported as an internal error, never with their text.
"""

from __future__ import annotations

import logging
import re
import time

import msgspec
import trio

from sqlward.adapters import identity as ident
from sqlward.policy import rule_ids
from sqlward.adapters.base import (
    AuditUnavailable,
    AuthError,
    KillRequest,
    ListenerSettings,
    MysqlSecret,
    SessionRegistry,
    SessionServices,
    StatementRequest,
    Target,
    Verdict,
)
from sqlward.adapters.mysql import auth, messages, upstream
from sqlward.adapters.mysql.charsets import (
    NO_EFFECT,
    NO_MODE_EFFECT,
    CharsetEffect,
    SqlModeEffect,
    charset_of_collation,
    client_charset_effect,
    codec_of,
    lexing_sql_mode,
    sql_mode_effect,
)
from sqlward.adapters.mysql.constants import Capability, Charset, Command, ServerStatus, sqlstate_of
from sqlward.adapters.mysql.errors import (
    NotPrepared,
    ParametersRefused,
    AccessRefused,
    AuditRefused,
    CharsetRefused,
    CharsetSwitchNotLast,
    SQL_MODE_RULE,
    SqlModeRefused,
    SqlModeSwitchNotLast,
    AuthRefused,
    AuthTimedOut,
    ClearPasswordNeedsTls,
    KillNotOwner,
    MaskedDiagnostics,
    NoSuchThread,
    UnsettledDatabase,
    OldProtocol,
    PREAUTH_MAX_PACKET,
    PreAuthPacketTooLarge,
    SQLSTATE_LINK,
    TlsRequired,
    UnknownTarget,
    UnsupportedCommand,
    UpstreamLost,
    UpstreamRefused,
    error_reply,
)
from sqlward.adapters.mysql.maskrelay import MaskingRelay, RowState
from sqlward.adapters.mysql.packets import PacketFramer, PacketTooLarge, ProtocolViolation, encode_packets, lenenc_str
from sqlward.adapters.mysql.relaystate import (
    PreparedStatements,
    Route,
    SessionText,
    command_route,
    completion,
    field_list_sql,
    mask_rule,
    may_change_database,
    may_read_diagnostics,
    reads_diagnostics,
    reads_masked_values,
    codec_for_charset,
    text_row_values,
    unsettled_database,
)
from sqlward.adapters.mysql.response import ResponseScanner, Shape
from sqlward.adapters.mysql.server_state import MysqlServerState
from sqlward.adapters.netio import Pipe, PrefixedStream
from sqlward.adapters.drain import GatewayShutdown
from sqlward.adapters.session_common import GovernedSession, SessionEnd, TokenExpired
from sqlward.audit.events import (
    ConnectionAuthenticated,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    StatementCompleted,
    StatementDecided,
)
from sqlward.masking.context import MaskContext
from sqlward.policy.model import Decision, Identity

log = logging.getLogger("sqlward.mysql")

AUTH_TIMEOUT = 60.0


def identity_statement(label: str) -> bytes:
    """The statement that shows the identity upstream. The label travels as a hex literal
    converted to utf8mb4: pure ASCII, no quote to close and no backslash to swallow, so it reads
    the same in every character set the client may have negotiated (a quoted string would be
    read in the client's charset, where a GBK / Big5 / SJIS lead byte swallows the escaping
    backslash and the label's quote ends the string)."""
    hexed = label.encode("utf-8", "replace").hex().upper().encode("ascii")
    return b"SET @sqlward_identity = CONVERT(X'" + hexed + b"' USING utf8mb4)"


# What a client may send while its statement is held for approval (kept for after the verdict).
HELD_INPUT_LIMIT = 1 << 20
_LAST_STATEMENT = b"\xff\xff\xff\xff"  # MariaDB: the statement prepared last
_STATEMENT_COMMANDS = frozenset({
    Command.STMT_EXECUTE, Command.STMT_SEND_LONG_DATA, Command.STMT_RESET, Command.STMT_CLOSE, Command.STMT_FETCH,
})
_SHOW_WARNINGS = re.compile(r"^\s*SHOW\s+WARNINGS\s*;?\s*$", re.IGNORECASE)


def _approval_note(verdict: Verdict) -> str:
    """The warning a statement released by an approval carries (MySQL has no notice to send
    while it waits: the id comes with the result)."""
    if verdict.approval_id is None:
        return ""
    return f"sqlward: run as approval request {verdict.approval_id} ({verdict.decision.message})"


class MysqlSession(GovernedSession):
    def __init__(
        self, services: SessionServices, settings: ListenerSettings, registry: SessionRegistry[MysqlSession],
        server: MysqlServerState, stream: trio.SocketStream, client_addr: str,
    ) -> None:
        self.registry = registry
        self.server = server
        self.connection_id = registry.add(self)  # what the greeting shows and KILL names
        super().__init__(services, settings, stream, client_addr, f"my-{self.connection_id}-{id(self) & 0xFFFF:04x}")
        self.tls = False
        self.up: upstream.UpstreamConnection | None = None
        self.client_caps = 0
        self.text = SessionText(server.greeting.charset)
        # Until the client has authenticated, packets are capped at what a login needs.
        self._framer = PacketFramer(max_payload=min(PREAUTH_MAX_PACKET, settings.max_message_size))
        # A connection.refused (or, authenticated, connection.closed) ends the lifecycle of
        # every connection.opened; the user name the client gave, for that record.
        self._lifecycle_ended = False
        # The cancel scope of the command phase (token expiry, drain) and whether the session is
        # waiting for its client's next command with nothing buffered (adapters/drain.py).
        self._command_scope: trio.CancelScope | None = None
        self._idle = False
        self._login_user = ""
        # The collation id the upstream session was opened with (what its COM_RESET_CONNECTION
        # returns to), and the unreadable character set the server reads this session in after a
        # switch the gateway could not settle from the text ("": none; requests are refused).
        self._upstream_charset = 0
        self._charset_lost = ""
        # The sql_mode flag (ANSI_QUOTES, NO_BACKSLASH_ESCAPES) the server reads this session's SQL
        # with, which the gateway cannot read as it does ("": none; requests are refused).
        self._mode_lost = ""
        # The character set the server said it reads this client in after the last login.
        self._login_charset_name = ""
        # Statements with COM_STMT_SEND_LONG_DATA parameters the server holds (see `_execute`).
        self._long_data: set[int] = set()
        self._seq = 0
        self._ubuf = bytearray()
        self._prepared = PreparedStatements()
        # Prepared statements that need approval at each execution (`Verdict.review_at_run`):
        # id -> parameter count, and the parameter types bound by their last execution.
        self._review_statements: dict[int, int] = {}
        self._param_counts: dict[int, int] = {}  # every prepared statement's parameter count
        self._last_prepared: int | None = None  # MariaDB's statement id 0xFFFFFFFF
        # The note of the last statement released by an approval, until the next statement
        # clears the warnings (`_show_warnings`).
        self._approval_note = ""
        self._closing_reason = ""
        # Another session of this identity ran KILL CONNECTION on this one while a statement of
        # it was held for approval: the session ends when the hold does (`_judge`).
        self._killed = False
        self._cpipe: Pipe | None = None
        self._sql_comment = b""
        self._redact_errors = False  # the target's audit text is redacted: so are error messages
        self._upipe: Pipe | None = None
        # Messages under masking: a statement of this session read masked values since the
        # upstream's diagnostics area was last emptied (COM_RESET_CONNECTION, CHANGE USER), and
        # the masking rule to name when GET DIAGNOSTICS is refused for it.
        self._diag_hidden = False
        self._diag_rule = ""
        # ... and the last such statement left warnings or an error in that area: a stored
        # function sees its caller's diagnostics, so the gateway empties the area before a
        # request that calls one (`_clear_diagnostics`).
        self._diag_dirty = False

    # ------------------------------------------------------------------------------------
    # helpers

    async def _read_packet(self, expected_seq: int | None) -> bytes:
        """One logical client packet (connection phase or command)."""
        while True:
            try:
                packet = self._framer.next(expected_seq=expected_seq)
            except PacketTooLarge:
                if self._framer.max_payload < self.settings.max_message_size or self.identity is None:
                    if expected_seq is not None:  # the ERR answers the packet it refuses
                        self._seq = (expected_seq + 1) & 0xFF
                    raise PreAuthPacketTooLarge(self._framer.max_payload) from None
                raise
            if packet is not None:
                self._seq = (packet.seq + 1 + (len(packet.payload) // 0xFFFFFF)) & 0xFF
                return packet.payload
            if self._cpipe is not None:
                data = await self._cpipe.receive()
            else:
                data = await self.client.receive_some(65536)
            if not data:
                raise SessionEnd()
            self._framer.feed(data)

    async def _judge(self, request: StatementRequest, *, durable: bool = True) -> Verdict:
        verdict = await super()._judge(request, durable=durable)
        if self._killed:  # KILL CONNECTION of a held statement: no answer, the session ends
            self._closing_reason = "killed by KILL CONNECTION while its statement was held for approval"
            aid = self.ctx.approved.pop(verdict.request_id, None) if verdict.allowed else None
            if aid is not None and self.ctx.approval_failed is not None:
                # The approval was claimed in the same instant as the KILL: it did not run.
                self.ctx.approval_failed(aid, verdict.request_id, "the session was killed before the statement ran")
            raise SessionEnd()
        return verdict

    def _last_statement(self, payload: bytes, route: Route) -> tuple[bytes, Route]:  # noqa: D401
        """A COM_STMT_* naming statement id 0xFFFFFFFF, with the id of the statement prepared
        last instead (0 when there is none: the server then answers an unknown statement)."""
        real = self._last_prepared or 0
        return payload[:1] + real.to_bytes(4, "little") + payload[5:], route._replace(
            number=real if route.number is not None else None,
        )

    async def _hold_watch(self) -> str:
        """Returns when the client disconnects while its statement is held for approval; what
        it sends meanwhile waits in the framer for the command loop (reading stops at the
        message size limit)."""
        assert self._cpipe is not None
        limit = HELD_INPUT_LIMIT
        while self._framer.buffered < limit:
            try:
                data = await self._cpipe.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return "the client disconnected"
            if not data:
                return "the client disconnected"
            self._framer.feed(data)
        # More than the gateway keeps for a held statement: the request is withdrawn (as for a
        # disconnect, which could not be noticed any more without reading on).
        return f"the client sent more than {HELD_INPUT_LIMIT >> 20} MiB while the statement was held"

    async def _write(self, payload: bytes) -> None:
        data, self._seq = encode_packets(payload, self._seq)
        await self.client.send_all(data)

    @staticmethod
    def _err(error: BaseException | Decision) -> bytes:
        """The ERR packet payload for an error the gateway answers itself."""
        payload = error_reply(error).payload
        assert payload is not None, f"{type(error).__name__} has no ERR packet"
        return payload

    async def _answer(self, error: BaseException | Decision) -> None:
        """Answer the current command with an ERR packet of the gateway's own."""
        self._seq = 1
        await self._write(self._err(error))

    async def _send_last(self, payload: bytes) -> None:
        """The last packet of a session: bounded, and never failing the close."""
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._write(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass

    async def _record_refused(self, user: str, reason: str, target: str = "") -> None:
        """connection.refused: the end of this connection's lifecycle in the audit trail."""
        self._lifecycle_ended = True
        await self._record_quietly(ConnectionRefused(user=user, target=target, reason=reason))

    async def _refuse_connection(self, error: BaseException, user: str = "", target: str = "") -> None:
        reply = error_reply(error)
        await self._record_refused(user or self._login_user, reply.message, target)
        if reply.payload is not None:
            await self._send_last(reply.payload)

    # ------------------------------------------------------------------------------------
    # lifecycle

    async def run(self) -> None:
        opened = time.perf_counter()
        await self._record_quietly(
            ConnectionOpened(client_addr=self.client_addr, listener=self.settings.name, protocol="mysql")
        )
        try:
            ok = False
            with trio.move_on_after(AUTH_TIMEOUT) as scope:
                ok = await self._handshake()
            if scope.cancelled_caught:
                self._closing_reason = "authentication timeout"
                await self._refuse_connection(AuthTimedOut())
            elif ok:
                deadline = self._closes_at_expiry()
                expires = deadline if deadline is not None else float("inf")
                with trio.CancelScope(deadline=expires) as scope:
                    self._command_scope = scope
                    unsubscribe = self.drain.subscribe(self._drain_hook)
                    try:
                        await self._command_loop()
                    finally:
                        unsubscribe()
                if scope.cancelled_caught:
                    if self.drain.started and trio.current_time() < expires:
                        raise GatewayShutdown()  # idle, or busy at the drain's deadline
                    raise TokenExpired()  # the token expired (on_token_expiry = "close")
        except Exception as exc:
            reply = error_reply(exc)
            if reply.unexpected:
                log.exception("mysql session %s failed", self.connection_id)
            self._closing_reason = (self._closing_reason or reply.reason) if reply.quiet else reply.reason
            if self.identity is None and not reply.quiet:
                self._closing_reason = self._closing_reason or reply.message
            if reply.payload is not None:
                await self._send_last(reply.payload)
        finally:
            if not self._closing_reason and trio.current_effective_deadline() == float("-inf"):
                self._closing_reason = "gateway shutting down"  # cancelled from outside
            self.registry.remove(self.connection_id, self)
            with trio.CancelScope(shield=True):
                if self.up is not None:
                    await trio.aclose_forcefully(self.up.stream)
                await self._close_client()
                if self.identity is None and not self._lifecycle_ended:
                    # Ended before authentication without a refusal of ours (client gone, TLS
                    # failure, malformed packet, ...): the record still says how it ended.
                    with trio.move_on_after(5):
                        await self._record_refused(
                            self._login_user, self._closing_reason or "connection ended before authentication",
                        )
                if self.identity is not None:
                    with trio.move_on_after(5):
                        await self._record_quietly(
                            ConnectionClosed(
                                duration_ms=round((time.perf_counter() - opened) * 1000, 3),
                                requests=self.ctx.requests, reason=self._closing_reason,
                            )
                        )

    # ------------------------------------------------------------------------------------
    # connection phase

    async def _handshake(self) -> bool:
        settings = self.settings
        nonce = auth.generate_nonce()
        greeting = self.server.handshake(self.connection_id, nonce, tls=settings.ssl_context is not None)
        offered = greeting.capabilities
        self._seq = 0
        await self._write(messages.encode(greeting, offered))
        payload = await self._read_packet(self._seq)
        if messages.is_ssl_request(payload):
            if settings.ssl_context is None:
                raise ProtocolViolation("TLS requested but this listener has no certificate")
            # Clients send their TLS ClientHello right behind the SSLRequest (the server says
            # nothing in between): bytes already read belong to the TLS layer.
            early = self._framer.take_rest()
            raw = PrefixedStream(self.client, early) if early else self.client
            stream = trio.SSLStream(raw, settings.ssl_context, server_side=True)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                self._closing_reason = f"TLS handshake failed: {exc.__cause__ or exc}"
                raise SessionEnd() from exc
            self.client = stream
            self.tls = True
            payload = await self._read_packet(self._seq)
        response = messages.decode_handshake_response(payload)
        user = self._login_user = response.username
        if settings.tls_required and not self.tls:
            await self._refuse_connection(TlsRequired(), user=user)
            return False
        self.client_caps = response.capabilities & (offered | Capability.SSL)
        if not self.client_caps & Capability.PROTOCOL_41:
            await self._refuse_connection(OldProtocol(), user=user)
            return False
        login_charset = response.character_set or greeting.character_set
        charset_name = charset_of_collation(login_charset)
        if charset_name is not None and not self.text.follow(charset_name):
            await self._refuse_connection(CharsetRefused(charset_name), user=user)
            return False
        self.text.set_charset(login_charset)

        identity = await self._authenticate(user, response, nonce)
        if identity is None:
            return False
        self._framer.max_payload = settings.max_message_size  # authenticated: the listener's own cap
        attrs = dict(response.attributes)
        reason = attrs.get("sqlward.reason") or attrs.get("sqlward_reason") or ""
        if reason and not identity.reason:
            identity = msgspec.structs.replace(identity, reason=reason[: ident.MAX_REASON])
        dbname = response.database or settings.default_target
        target = self.gk.resolve_target(dbname, "mysql") if dbname else None
        if target is None:
            await self._refuse_connection(UnknownTarget(dbname), user=user, target=dbname)
            return False
        refusal = self.gk.access_refusal(identity, target.info)
        if refusal is not None:
            await self._refuse_connection(AccessRefused(refusal), user=user, target=target.info.name)
            return False
        await self._set_identity(identity, target)
        try:
            self.up = await upstream.connect(
                target, capabilities=self.client_caps & ~Capability.SSL
                if target.allow_local_infile else self.client_caps & ~Capability.SSL & ~Capability.LOCAL_FILES,
                charset=self.text.charset, attributes=self._upstream_attributes(response.attributes, identity),
            )
        except upstream.UpstreamError as exc:
            await self._refuse_connection(
                UpstreamRefused(exc.errno, exc.sqlstate, str(exc)), user=user, target=target.info.name,
            )
            return False
        self.text.schema = target.database
        self._upstream_charset = self.text.charset
        self._cpipe = Pipe(self.client)
        self.ctx.client_gone = self._hold_watch
        self._upipe = Pipe(self.up.stream)
        self._ubuf = bytearray(self.up.leftover)
        # The server's word on the character set it reads this client in (it falls back to its
        # default for a collation id it does not know, or ignores the client's with
        # skip-character-set-client-handshake).
        await self._ask_session(database=False)
        if self._charset_lost:
            await self._refuse_connection(CharsetRefused(self._charset_lost), user=user, target=target.info.name)
            return False
        self._server_status(self.up.status)
        if self._mode_lost:  # (asked with the character set: a global or login default)
            await self._refuse_connection(SqlModeRefused(self._mode_lost, login=True), user=user, target=target.info.name)
            return False
        self._login_charset_name = self.text.name
        await self._show_identity_upstream(identity)
        await self._write(messages.ok_packet(self.client_caps, status_flags=self.up.status))
        return True

    def _upstream_attributes(
        self, attributes: tuple[tuple[str, str], ...], identity: Identity
    ) -> tuple[tuple[str, str], ...]:
        label = ident.upstream_label(identity, limit=255)
        return tuple((k, v) for k, v in attributes if not k.startswith("sqlward")) + (("sqlward_identity", label),)

    async def _show_identity_upstream(self, identity: Identity) -> None:
        """SET @sqlward_identity on the upstream session, so the database sees who is there."""
        settings = self.gk.identity_settings()
        self._sql_comment = ident.sql_comment(identity).encode() if settings.sql_comment else b""
        if not settings.upstream_setting:
            return
        scanner = await self._upstream_command(
            bytes([Command.QUERY]) + identity_statement(ident.upstream_label(identity, limit=255))
        )
        if scanner.error_code is not None:
            raise UpstreamLost()

    async def _reset_connection(self) -> None:
        """COM_RESET_CONNECTION (what pools send): reset upstream, then show the identity
        again (the reset clears user variables) before the client gets its OK."""
        if not await self._record_command("COM_RESET_CONNECTION", "resets the upstream session"):
            return
        self._prepared.clear()
        self._long_data.clear()
        scanner = await self._upstream_command(bytes([Command.RESET_CONNECTION]))
        self._seq = 1
        if scanner.error_code is not None:
            errno = scanner.error_code
            sqlstate = scanner.error_sqlstate or sqlstate_of(errno)
            await self._answer(UpstreamRefused(errno, sqlstate, scanner.error_message))
            return
        self._diag_hidden = False  # the reset emptied the diagnostics area
        # The server is back on the character set its session was opened with; the client's is
        # that of its last login (handshake or COM_CHANGE_USER).
        await self._restore_login_charset()
        # The reset put sql_mode back to the server's default: ask what that is (fail closed).
        await self._ask_session(database=False)
        self._server_status(scanner.status)
        assert self.identity is not None
        await self._show_identity_upstream(self.identity)
        await self._write(messages.ok_packet(self.client_caps, status_flags=scanner.status or int(ServerStatus.AUTOCOMMIT)))

    async def _record_command(self, command: str, effect: str) -> bool:
        """A protocol command the session runs without a verdict of the pipeline (it carries no
        SQL and the pipeline refuses every `kind="command"`): its record is on disk before it
        reaches the upstream. False (and the client refused, the session going on) when the
        record cannot be written."""
        assert self.who is not None and self.target is not None
        info = self.target.info
        self.audit.add(StatementDecided(
            request_id=self.ctx.next_request(), who=self.who, target=info.name, environment=info.environment,
            sql=f"<{command}>", fingerprint="", action="allow", facts=(f"protocol command: {effect}",),
        ))
        try:
            await self.audit.flush_before_run()
        except AuditUnavailable:
            await self._answer(AuditRefused(command))
            return False
        return True

    async def _upstream_command(self, payload: bytes) -> ResponseScanner:
        """Run one command on the upstream for the gateway itself; nothing reaches the client."""
        assert self._upipe is not None
        await self._upipe_send(payload)
        scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=bool(self.client_caps & Capability.DEPRECATE_EOF))
        while True:
            if self._ubuf:
                n = scanner.scan(self._ubuf)
                del self._ubuf[:n]
                if scanner.done:
                    return scanner
            data = await self._upipe.receive()
            if not data:
                raise UpstreamLost()
            self._ubuf += data

    async def _set_identity(self, identity: Identity, target: Target) -> None:
        """The session is now `identity` on `target`; recorded (durably) before it goes on."""
        self._update_identity(identity)
        self.target = target
        self._redact_errors = target.redact_text
        assert self.who is not None
        self.audit.add(
            ConnectionAuthenticated(who=self.who, target=target.info.name, environment=target.info.environment)
        )
        await self.audit.flush()
        self._authenticated()

    async def _auth_switch(self, plugin: str, data: bytes) -> bytes:
        await self._write(messages.encode(messages.AuthSwitchRequest(plugin, data), self.client_caps))
        return await self._read_packet(self._seq)

    async def _authenticate(self, user: str, response: messages.HandshakeResponse41 | messages.ComChangeUser, nonce: bytes) -> Identity | None:
        """Run the client's authentication exchange; returns the identity, or None after the
        refusal has been sent (login and COM_CHANGE_USER alike).

        The login throttle is asked first (`Gatekeeper.login_gate`, which may wait or refuse);
        every judged failure of any mechanism is counted (`login_failed`), a success clears the
        count (`login_succeeded`). A wrong user name and a wrong secret get the same refusal: the
        gatekeeper gives unknown names a decoy verifier, so they take the same exchange
        (caching_sha2's full path) and end in the same "Access denied" text. The advice to use
        TLS is given only on a listener that has TLS."""
        host = self.client_addr.rsplit(":", 1)[0]
        try:
            await self.gk.login_gate(host, user)
        except AuthError as exc:
            await self._record_refused(user, f"login throttled: {exc}")
            await self._send_last(self._err(AuthRefused(user, host, exc, static=False)))
            return None
        secret = self.gk.mysql_secret(user)
        try:
            identity = await self._judge_credentials(user, response, nonce, host, secret)
        except ClearPasswordNeedsTls as exc:  # not judged: the client is told how to connect
            await self._record_refused(user, f"authentication failed: {exc}")
            await self._send_last(self._err(AuthRefused(user, host, exc, static=secret is not None)))
            return None
        except (AuthError, auth.AuthProtocolError, UnicodeDecodeError) as exc:
            self.gk.login_failed(host, user)
            await self._record_refused(user, f"authentication failed: {exc}")
            await self._send_last(self._err(AuthRefused(user, host, exc, static=secret is not None)))
            return None
        self.gk.login_succeeded(host, user)
        return identity

    def _tls_advice(self) -> str:
        """How to connect so that a cleartext credential is accepted: true for this listener."""
        if self.settings.ssl_context is not None:
            return "connect with --ssl / ssl-mode=REQUIRED"
        return "this listener has no TLS: connect to a sqlward listener that offers TLS"

    async def _judge_credentials(
        self, user: str, response: messages.HandshakeResponse41 | messages.ComChangeUser, nonce: bytes, host: str,
        secret: MysqlSecret | None,
    ) -> Identity:
        """The wire exchange of `_authenticate`; AuthError (or AuthProtocolError,
        UnicodeDecodeError) when the credentials are refused, ClearPasswordNeedsTls when a
        cleartext credential came without TLS."""
        settings = self.settings
        server = self.server
        plugin = response.auth_plugin_name or auth.NATIVE_PASSWORD
        data = response.auth_response
        loopback_plain = settings.allow_plaintext_tokens and ident.is_loopback(host)
        cert_identity = self._certificate_identity()
        if cert_identity is not None and ident.same_name(cert_identity.subject, user):
            return cert_identity  # mutual TLS: the verified certificate is the credential
        if plugin == auth.CLEAR_PASSWORD or secret is None:
            if not (self.tls or loopback_plain):
                if secret is not None:
                    raise ClearPasswordNeedsTls(
                        f"mysql_clear_password is only accepted over TLS ({self._tls_advice()}; or log in with "
                        "caching_sha2_password or mysql_native_password)"
                    )
                raise ClearPasswordNeedsTls(
                    f"'{user}' is not a static identity: sqlward accepts tokens only over TLS, as "
                    f"mysql_clear_password ({self._tls_advice()})"
                )
            if plugin != auth.CLEAR_PASSWORD:
                data = await self._auth_switch(auth.CLEAR_PASSWORD, b"")
            password = data.rstrip(b"\0").decode("utf-8")
            if secret is not None:
                return self.gk.authenticate_password(user, password, tls=self.tls)
            return await self.gk.authenticate_token(
                user, password, tls=self.tls, loopback=loopback_plain, tls_offered=settings.ssl_context is not None,
            )
        if plugin == auth.NATIVE_PASSWORD and data:
            if auth.native_check(secret.native, nonce, data):
                return self.gk.static_identity(user)
            raise AuthError("wrong password")
        if plugin != auth.CACHING_SHA2_PASSWORD:
            nonce = auth.generate_nonce()
            data = await self._auth_switch(auth.CACHING_SHA2_PASSWORD, nonce + b"\0")
        exchange = auth.Sha2ServerAuth(
            auth.Sha2Verifier(secret.sha2), nonce, secure=self.tls, rsa_private_key=server.rsa_private_key,
            rsa_public_key=server.rsa_public_key, fast_path=server.sha2_fast_path(user, settings.sha2_full_auth),
        )
        step = exchange.response(data)
        while True:
            if step.more_data is not None:
                await self._write(b"\x01" + step.more_data)
            if step.done:
                break
            step = exchange.response(await self._read_packet(self._seq))
        if not step.ok:
            raise AuthError("wrong password")
        server.sha2_logged_in(user)
        return self.gk.static_identity(user)

    # ------------------------------------------------------------------------------------
    # command phase

    def _drain_hook(self) -> None:
        """The gateway drains (adapters/drain.py): an idle session (waiting for its client's
        next command) is closed now; a busy one at its next idle moment (`_next_command`) or
        at the drain's deadline."""
        scope = self._command_scope
        if scope is None:
            return
        scope.deadline = min(scope.deadline, self.drain.deadline)
        if self._idle:
            scope.cancel()

    async def _next_command(self) -> bytes:
        """The client's next command; GatewayShutdown once the gateway drains (no command
        starts after that, even one the client sent early)."""
        if self.drain.started:
            raise GatewayShutdown()
        self._idle = not self._framer.buffered
        try:
            return await self._read_packet(0)
        finally:
            self._idle = False

    async def _command_loop(self) -> None:
        prepared = self._prepared
        while True:
            payload = await self._next_command()
            if self._charset_lost and not self._restores_charset(payload):
                await self._refuse_unreadable(payload)
                continue
            if self._mode_lost and not self._restores_sql_mode(payload):
                await self._refuse_unreadable(payload, mode=True)
                continue
            route = command_route(payload)
            kind = route.kind
            if self._approval_note and kind != "query" and route.command != Command.PING:
                self._approval_note = ""  # any other command clears the warnings (COM_PING does not)
            if route.command in _STATEMENT_COMMANDS and payload[1:5] == _LAST_STATEMENT:
                # MariaDB: statement id 0xFFFFFFFF is "the one prepared last": named plainly here,
                # so the gateway's books and the server's agree.
                payload, route = self._last_statement(payload, route)
            if kind == "query":
                await self._query(payload)
            elif kind == "execute":
                assert route.number is not None
                await self._execute(payload, route.number)
            elif kind == "prepare":
                await self._prepare(payload)
            elif kind == "no-response":  # COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA
                if route.command == Command.STMT_CLOSE and route.number is not None:
                    prepared.close(route.number)
                    self._review_statements.pop(route.number, None)
                    self._param_counts.pop(route.number, None)
                    self._long_data.discard(route.number)
                elif route.command == Command.STMT_SEND_LONG_DATA and len(payload) >= 5:
                    self._long_data.add(int.from_bytes(payload[1:5], "little"))
                await self._upipe_send(payload)
            elif kind == "fetch":
                await self._fetch(payload, route.number)
            elif kind == "pass":
                if route.command == Command.STMT_RESET and len(payload) >= 5:
                    self._long_data.discard(int.from_bytes(payload[1:5], "little"))
                await self._forward(payload, route.shape)
            elif kind == "init-db":  # decided (and recorded) as the USE it amounts to
                name = self.text.decode(payload[1:])
                verdict = await self._judge(StatementRequest(
                    sql="USE `" + name.replace("`", "``") + "`", dialect="mysql", schema=self.text.schema,
                ))
                if not verdict.allowed:
                    await self._answer(verdict.decision)
                    continue
                scanner = await self._forward(payload, Shape.SIMPLE, rid=verdict.request_id)
                if scanner.error_code is None:  # a refused COM_INIT_DB leaves the database as it was
                    self.text.init_db_succeeded(payload)
                    self.text.tracked(scanner.schema)
            elif kind == "reset":
                await self._reset_connection()
            elif kind == "field-list":
                await self._field_list(payload)
            elif kind == "quit":
                self._closing_reason = "client quit"
                try:
                    await self._upipe_send(payload)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                return
            elif kind == "process-kill":  # decided as the KILL statement it is
                assert route.number is not None
                await self._statement_kill(f"KILL CONNECTION {route.number}")
            elif kind == "change-user":
                if not await self._change_user(payload):
                    return
            else:  # "refused" / "unknown": the pipeline refuses commands that bypass SQL
                verdict = await self._judge(
                    StatementRequest(sql="", dialect="mysql", kind="command", command=route.name)
                )
                if kind == "unknown":
                    await self._answer(UnsupportedCommand(route.command))
                else:
                    await self._answer(verdict.decision)

    @staticmethod
    def _restores_charset(payload: bytes) -> bool:
        """While the server reads this session in a character set the gateway cannot read,
        only what cannot be misread goes on: COM_QUIT, COM_PING, COM_RESET_CONNECTION,
        COM_CHANGE_USER (a login, with its own character set), and a plain-ASCII request that
        only switches to a character set the gateway reads (`SET NAMES utf8mb4`)."""
        if not payload:
            return False
        if payload[0] in (Command.QUIT, Command.PING, Command.RESET_CONNECTION, Command.CHANGE_USER):
            return True
        if payload[0] != Command.QUERY or not payload[1:].isascii():
            return False
        effect = client_charset_effect(payload[1:].decode("ascii"))
        return bool(effect.named) and not effect.unsettled and not effect.after_switch and effect.refused() is None

    @staticmethod
    def _restores_sql_mode(payload: bytes) -> bool:
        """While the server's sql_mode reads SQL unlike the gateway, only what cannot be misread
        goes on: COM_QUIT, COM_PING, COM_RESET_CONNECTION, COM_CHANGE_USER, and a plain-ASCII
        request without a backslash (read alike in every sql_mode) that only sets an accepted
        sql_mode (the server is asked afterwards)."""
        if not payload:
            return False
        if payload[0] in (Command.QUIT, Command.PING, Command.RESET_CONNECTION, Command.CHANGE_USER):
            return True
        if payload[0] != Command.QUERY or not payload[1:].isascii() or b"\\" in payload:
            return False
        sql = payload[1:].decode("ascii")
        effect = sql_mode_effect(sql)
        charset = client_charset_effect(sql)
        # (it may also put back a readable character set: SET NAMES utf8mb4, sql_mode = '...')
        charset_ok = not charset.switches or (
            bool(charset.named) and not charset.unsettled and not charset.after_switch and charset.refused() is None
        )
        return (bool(effect.named) and not effect.unsettled and not effect.after_switch and effect.refused() is None
                and charset_ok)

    async def _refuse_unreadable(self, payload: bytes, *, mode: bool = False) -> None:
        """A request while the server reads a character set (or, `mode`, a sql_mode) the gateway
        cannot read: refused, and recorded (the gateway cannot say what it holds)."""
        assert self.who is not None and self.target is not None
        error: CharsetRefused | SqlModeRefused
        if mode:
            error = SqlModeRefused(self._mode_lost, lost=True)
            what, rule = f"sql_mode {self._mode_lost}", SQL_MODE_RULE
        else:
            error = CharsetRefused(self._charset_lost, lost=True)
            what, rule = f"client character set {self._charset_lost}", rule_ids.CLIENT_CHARSET
        info = self.target.info
        self.audit.add(StatementDecided(
            request_id=self.ctx.next_request(), who=self.who, target=info.name, environment=info.environment,
            sql=f"<command 0x{payload[0]:02x} in {what}>", fingerprint="",
            parse_status="error", action="deny", rule_id=rule, message=error.message,
        ))
        await self.audit.flush_quietly()
        if payload[:1] == bytes([Command.STMT_EXECUTE]) and len(payload) >= 5:
            await self._drop_long_data(int.from_bytes(payload[1:5], "little"))
        if payload[:1] not in (bytes([Command.STMT_CLOSE]), bytes([Command.STMT_SEND_LONG_DATA])):
            await self._answer(error)  # those two get no answer

    async def _upipe_send(self, payload: bytes) -> None:
        assert self._upipe is not None
        data, _ = encode_packets(payload, 0)
        await self._upipe.send(data)

    async def _query(self, payload: bytes) -> None:
        sql = self.text.decode(payload[1:])
        note, self._approval_note = self._approval_note, ""  # the next statement clears warnings
        verdict = await self._judge(StatementRequest(sql=sql, dialect="mysql", schema=self.text.schema))
        if not verdict.allowed:
            await self._answer(verdict.decision)
            return
        if note and not self._masked and _SHOW_WARNINGS.match(sql):
            await self._show_warnings(payload, verdict.request_id, note)
            self._approval_note = note  # SHOW WARNINGS leaves the warnings in place
            return
        if verdict.kill is not None:
            await self._kill(verdict.kill)
            return
        unsettled = unsettled_database(verdict.analysis, masked=self._masked)
        if unsettled is not None:
            await self._refuse(verdict.request_id, UnsettledDatabase(unsettled))
            return
        effect = client_charset_effect(sql)
        if effect.switches and not await self._charset_switch_allowed(verdict.request_id, effect):
            return
        mode = sql_mode_effect(sql)
        if mode.switches and not await self._sql_mode_switch_allowed(verdict.request_id, mode):
            return
        if self._sql_comment:  # sqlcommenter-style: who, for the server's logs
            payload = payload[:1] + self._sql_comment + payload[1:]
        if verdict.traceparent:  # sqlcommenter: the statement span, for the server's logs
            payload = b"%s\n/*traceparent='%s'*/" % (payload, verdict.traceparent.encode())
        if self._masked:
            reads = reads_masked_values(verdict.mask, verdict.analysis)
            if (self._diag_hidden or reads) and reads_diagnostics(sql):
                await self._refuse_diagnostics(verdict.request_id, verdict.mask if reads else None)
                return
            if self._diag_dirty and may_read_diagnostics(verdict.analysis):
                await self._clear_diagnostics()
            self._note_masked_read(reads, verdict.mask)
            relay = await self._forward_masked(
                payload, Shape.RESULTSET, ctx=self._last_mask, binary=False, rid=verdict.request_id,
                hide_messages=self._diag_hidden, hide_errors=reads,
            )
            scanner = relay.scanner
            self._note_diagnostics(reads, scanner)
        else:
            scanner = await self._forward(
                payload, Shape.RESULTSET, rid=verdict.request_id, note=_approval_note(verdict),
            )
        if scanner.error_code is None:
            self.text.query_succeeded(sql, verdict.analysis)
        self.text.tracked(scanner.schema)
        await self._after_request(scanner, effect, may_change_database(verdict.analysis), mode)

    async def _show_warnings(self, payload: bytes, rid: int, note: str) -> None:
        """SHOW WARNINGS after a statement released by an approval: the server's warnings, and
        the gateway's note naming the request as one more row (Level "Note", Code 1105)."""
        assert self._upipe is not None
        started = time.perf_counter()
        await self._upipe_send(payload)
        scanner = ResponseScanner(
            Shape.RESULTSET, deprecate_eof=bool(self.client_caps & Capability.DEPRECATE_EOF),
            session_track=bool(self.client_caps & Capability.SESSION_TRACK),
        )
        buf = self._ubuf
        collected = bytearray()
        while True:
            if buf:
                n = scanner.scan(buf)
                collected += buf[:n]
                del buf[:n]
                if scanner.done:
                    break
            buf += await self._upstream_data(self._upipe)
        framer = PacketFramer()
        framer.feed(bytes(collected))
        payloads: list[bytes] = []
        while (packet := framer.next()) is not None:
            payloads.append(packet.payload)
        if scanner.error_code is None and len(payloads) >= 2:
            row = lenenc_str("Note") + lenenc_str("1105") + lenenc_str(note)
            payloads.insert(len(payloads) - 1, row)  # before the terminating EOF / OK
        out = bytearray()
        seq = 1
        for p in payloads:
            data, seq = encode_packets(p, seq)
            out += data
        self.audit.add(completion(
            scanner, request_id=rid, prepared_ref=None, duration_ms=round((time.perf_counter() - started) * 1000, 3), redact=self._redact_errors,
        ))
        await self.audit.commit()
        assert self._cpipe is not None
        await self._cpipe.send(bytes(out))

    async def _statement_kill(self, sql: str) -> None:
        """A KILL that arrived as a command (COM_PROCESS_KILL): judged as its statement."""
        verdict = await self._judge(StatementRequest(sql=sql, dialect="mysql", schema=self.text.schema))
        if not verdict.allowed or verdict.kill is None:
            await self._answer(verdict.decision)
            return
        await self._kill(verdict.kill)

    async def _field_list(self, payload: bytes) -> None:
        """COM_FIELD_LIST reads a table's columns: decided as the SELECT it amounts to."""
        verdict = await self._judge(
            StatementRequest(sql=field_list_sql(payload, self.text.codec), dialect="mysql", schema=self.text.schema)
        )
        if not verdict.allowed:
            await self._answer(verdict.decision)
            return
        await self._forward(payload, Shape.FIELD_LIST)

    async def _prepare(self, payload: bytes) -> None:
        sql = self.text.decode(payload[1:])
        version = self.pipeline.policy_version
        verdict = await self._judge(
            StatementRequest(sql=sql, dialect="mysql", schema=self.text.schema, statement_name="", prepare=True)
        )
        if not verdict.allowed and not verdict.review_at_run:
            await self._answer(verdict.decision)
            return
        effect = client_charset_effect(sql)
        if effect.switches and not await self._charset_switch_allowed(verdict.request_id, effect):
            return
        mode = sql_mode_effect(sql)
        if mode.switches and not await self._sql_mode_switch_allowed(verdict.request_id, mode):
            return
        scanner = await self._forward(payload, Shape.PREPARE)
        if scanner.statement_id is not None and scanner.error_code is None:
            self._prepared.add(
                scanner.statement_id, verdict.request_id, sql, version, verdict.mask,
                reads_masked=reads_masked_values(verdict.mask, verdict.analysis), analysis=verdict.analysis,
                schema=self.text.schema,
            )
            self._last_prepared = scanner.statement_id
            if verdict.review_at_run:  # each execution is approved with its parameters
                self._review_statements[scanner.statement_id] = scanner.param_count
            else:
                self._review_statements.pop(scanner.statement_id, None)
            self._param_counts[scanner.statement_id] = scanner.param_count
            prepared = self._prepared.get(scanner.statement_id)
            if prepared is not None and (effect.switches or mode.switches):
                prepared.changes_db = True  # its executions switch the character set / sql_mode: ask after each

    async def _execute(self, payload: bytes, stmt_id: int) -> None:
        """COM_STMT_EXECUTE (see `_run_execute`). The parameters sent with COM_STMT_SEND_LONG_DATA
        are the server's until the statement runs: when the gateway refuses the run, it resets
        the statement upstream, or the client's retry (long data again, then execute) would
        write them twice. MariaDB's statement id 0xFFFFFFFF ("the one prepared last") is
        resolved to that statement's id here, and an id the gateway did not see prepared is
        refused (its text was never judged)."""
        if self._prepared.get(stmt_id) is None:
            self._seq = 1
            await self._answer(NotPrepared(
                f"unknown prepared statement handler ({stmt_id}) given to mysqld_stmt_execute: "
                "it was not prepared through sqlward in this session"
            ))
            return
        if not await self._run_execute(payload, stmt_id):
            await self._drop_long_data(stmt_id)
        self._long_data.discard(stmt_id)

    def _review_parameters(self, payload: bytes, stmt_id: int) -> tuple[tuple[bytes | None, ...], tuple[int, ...]] | str:
        """The parameter values (as text: what an approver reads and the binding holds) and types
        of an execution of a statement that needs approval, or why they cannot be bound."""
        if stmt_id in self._long_data:
            return ("a statement that needs approval takes its parameters in the execution itself, "
                    "not by COM_STMT_SEND_LONG_DATA (an approver could not see them)")
        count = self._review_statements[stmt_id]
        try:
            execute = messages.decode_stmt_execute(payload, count, (), self.client_caps)
        except Exception as exc:
            return f"the parameters of this execution cannot be read ({exc}); a statement that needs approval is not run"
        if count and not execute.new_params_bound:
            # The types would be those the server kept from an earlier execution, which the
            # gateway cannot be sure of (one it refused, say): they come with each run.
            return ("a statement that needs approval is approved with its parameter types: send them with each "
                    "execution (new-params-bound flag)")
        values: list[bytes | None] = []
        for v in execute.values:
            if v is None:
                values.append(None)
            elif isinstance(v, bytes):
                values.append(v)
            else:
                values.append(str(v).encode())
        return tuple(values), tuple(t.field_type * 256 + t.flags for t in execute.types)

    def _run_parameters(self, payload: bytes, stmt_id: int) -> tuple[tuple[bytes | None, ...], tuple[int, ...]] | None:
        """The values of a run (as text) for its audit record, or None when they cannot be
        read here (no parameters; long data; types the server kept from an earlier run). The
        run goes on either way: the server reads the packet, the record is best effort."""
        count = self._param_counts.get(stmt_id, 0)
        if not count or stmt_id in self._long_data:
            return None
        try:
            execute = messages.decode_stmt_execute(payload, count, (), self.client_caps)
        except Exception:
            return None
        if not execute.new_params_bound:
            return None
        return (
            tuple(None if v is None else v if isinstance(v, bytes) else str(v).encode() for v in execute.values),
            tuple(t.field_type * 256 + t.flags for t in execute.types),
        )

    async def _drop_long_data(self, stmt_id: int) -> None:
        """Clear the long data the client sent for `stmt_id` (COM_STMT_RESET of the gateway's own)."""
        if stmt_id in self._long_data:
            self._long_data.discard(stmt_id)
            await self._upstream_command(bytes([Command.STMT_RESET]) + stmt_id.to_bytes(4, "little"))

    async def _run_execute(self, payload: bytes, stmt_id: int) -> bool:
        """COM_STMT_EXECUTE: the session checks (token expiry) for this run; the statement is
        decided again when the policy changed since PREPARE. False when it was refused (nothing
        forwarded)."""
        name = str(stmt_id)
        prepared = self._prepared.get(stmt_id)
        if prepared is not None and stmt_id in self._review_statements:
            # A statement that needs approval at each run: approved with this run's parameter
            # values and types, decoded as the server reads them.
            bound = self._review_parameters(payload, stmt_id)
            if isinstance(bound, str):
                await self._answer(ParametersRefused(bound))
                return False
            values, types = bound
            verdict = await self._judge(StatementRequest(
                sql=prepared.sql, dialect="mysql", schema=prepared.schema, statement_name=name,
                parameters=values, formats=types,
            ))
        else:
            values_types = self._run_parameters(payload, stmt_id)
            verdict = await self._judge(StatementRequest(
                sql="", dialect="mysql", kind="execute", statement_name=name,
                parameters=values_types[0] if values_types is not None else None,
                formats=values_types[1] if values_types is not None else (),
            ))
        if not verdict.allowed:
            await self._answer(verdict.decision)
            return False
        version = self.pipeline.policy_version
        if prepared is not None and prepared.policy_version != version and stmt_id not in self._review_statements:
            again = await self._judge(  # under the database it was prepared in, which the server keeps
                StatementRequest(sql=prepared.sql, dialect="mysql", schema=prepared.schema, statement_name=name, prepare=True)
            )
            if again.review_at_run:
                # The new policy sends it to review: this run and every later one is approved
                # with its parameters.
                self._review_statements[stmt_id] = self._param_counts.get(stmt_id, 0)
                return await self._run_execute(payload, stmt_id)
            if not again.allowed:
                await self._answer(again.decision)
                return False
            self._prepared.redecided(
                stmt_id, version, again.mask, reads_masked=reads_masked_values(again.mask, again.analysis),
            )
        ref = prepared.request_id if prepared is not None else None
        if self._masked:
            reads = prepared is not None and prepared.reads_masked
            if prepared is not None and prepared.diagnostics and (self._diag_hidden or reads):
                await self._refuse_diagnostics(verdict.request_id, prepared.mask if reads else None)
                return False
            if self._diag_dirty and (prepared is None or prepared.calls_functions):
                await self._clear_diagnostics()
            self._note_masked_read(reads, prepared.mask if prepared is not None else None)
            relay = await self._forward_masked(
                payload, Shape.RESULTSET, ctx=self._prepared.mask(stmt_id), binary=True, rid=verdict.request_id, ref=ref,
                hide_messages=self._diag_hidden, hide_errors=reads,
            )
            self._prepared.executed(stmt_id, relay.cursor_rows)
            self._note_diagnostics(reads, relay.scanner)
            scanner = relay.scanner
        else:
            scanner = await self._forward(
                payload, Shape.RESULTSET, rid=verdict.request_id, ref=ref, note=_approval_note(verdict),
            )
        self.text.tracked(scanner.schema)
        # MariaDB prepares USE and SET NAMES: the server says where the session is after them.
        await self._after_request(scanner, NO_EFFECT, prepared is not None and prepared.changes_db)
        return True

    async def _fetch(self, payload: bytes, stmt_id: int | None) -> None:
        """COM_STMT_FETCH: a cursor's next rows, masked with the rewriter its execution set up."""
        if self._masked and stmt_id is not None:
            if self._prepared.fetch_unmaskable(stmt_id):
                # No row rewriter was set up when the cursor was opened: fail closed.
                verdict = await self._judge(StatementRequest(
                    sql="", dialect="mysql", kind="command", command="cursor fetch", statement_name=str(stmt_id),
                ))
                await self._answer(verdict.decision)
                return
        # Each fetch is a run of the statement: judged (token expiry, audit), recorded as
        # `statement.executed` (command COM_STMT_FETCH) on disk before it reaches the upstream,
        # refused with audit-unavailable when that record cannot be written; its completion
        # counts the rows it returned.
        name = str(stmt_id) if stmt_id is not None else ""
        verdict = await self._judge(
            StatementRequest(sql="", dialect="mysql", kind="execute", command="COM_STMT_FETCH", statement_name=name),
            durable=True,
        )
        if not verdict.allowed:
            await self._answer(verdict.decision)
            return
        prepared = self._prepared.get(stmt_id) if stmt_id is not None else None
        ref = prepared.request_id if prepared is not None else None
        if self._masked and stmt_id is not None:
            relay = await self._forward_masked(
                payload, Shape.FETCH, ctx=self._prepared.mask(stmt_id), binary=True,
                rows=self._prepared.cursor_rows(stmt_id), hide_messages=self._diag_hidden,
                rid=verdict.request_id, ref=ref,
            )
            self._server_status(relay.scanner.status)
            return
        scanner = await self._forward(payload, Shape.FETCH, rid=verdict.request_id, ref=ref)
        self._server_status(scanner.status)

    def _note_masked_read(self, reads: bool, mask: MaskContext | None) -> None:
        """A request about to run reads masked values: from now on the session's warnings and
        errors may quote them (MariaDB keeps warnings across statements that use no table, so
        this holds until the diagnostics area is emptied by a reset)."""
        if reads:
            self._diag_hidden = True
            self._diag_rule = mask_rule(mask)

    def _note_diagnostics(self, reads: bool, scanner: ResponseScanner) -> None:
        """A request that read masked values ended: did it leave warnings or an error?"""
        if reads and (scanner.warnings or scanner.error_code is not None):
            self._diag_dirty = True

    async def _clear_diagnostics(self) -> None:
        """Empty the upstream's diagnostics area before a request that calls functions: a
        stored function or procedure sees its caller's warnings (GET DIAGNOSTICS in its body)
        and could return their text as a value. A statement that uses a table clears the area
        on MariaDB and MySQL alike; a derived table counts."""
        scanner = await self._upstream_command(bytes([Command.QUERY]) + b"SELECT 1 FROM (SELECT 1) AS sqlward_clear")
        if scanner.error_code is not None:
            raise UpstreamLost()
        self._diag_dirty = False

    async def _ask_database(self) -> None:
        """The server's current database (and client character set): see `_ask_session`."""
        await self._ask_session(database=True)

    async def _ask_session(self, *, database: bool) -> None:
        """Ask the upstream for its current database (after a request that may have changed it
        in a way its text does not settle; see `relaystate.may_change_database`) and the
        character set it reads client SQL in (`@@character_set_client`). Nothing reaches the
        client; MariaDB keeps the session's warnings across it. A failure ends the session (fail
        closed: table names would be qualified, and SQL read, with a guess)."""
        assert self._upipe is not None
        await self._upipe_send(bytes([Command.QUERY]) + b"SELECT DATABASE(), @@character_set_client, @@sql_mode")
        deprecate_eof = bool(self.client_caps & Capability.DEPRECATE_EOF)
        scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=deprecate_eof)
        response = bytearray()
        while True:
            if self._ubuf:
                n = scanner.scan(self._ubuf)
                response += self._ubuf[:n]
                del self._ubuf[:n]
                if scanner.done:
                    break
            self._ubuf += await self._upstream_data(self._upipe)
        if scanner.error_code is not None:
            raise UpstreamLost()
        schema, charset, sql_mode = text_row_values(bytes(response), deprecate_eof=deprecate_eof)
        self._server_charset(charset.decode("ascii", "replace") if charset is not None else "")
        self._mode_lost = lexing_sql_mode(sql_mode.decode("ascii", "replace") if sql_mode is not None else "") or ""
        if database:
            self.text.server_says(schema)

    def _server_charset(self, name: str) -> None:
        """The server says it reads client SQL in `name`: follow it, or fail closed."""
        if self.text.follow(name):
            self._charset_lost = ""
        else:
            self._charset_lost = name.lower() or "unknown"

    def _server_status(self, status: int) -> None:
        """Every OK / EOF carries the server's status: SERVER_STATUS_NO_BACKSLASH_ESCAPES means the
        server reads backslashes unlike the gateway, however it got there: fail closed."""
        if status & ServerStatus.NO_BACKSLASH_ESCAPES:
            self._mode_lost = "NO_BACKSLASH_ESCAPES"

    async def _sql_mode_switch_allowed(self, request_id: int, effect: SqlModeEffect) -> bool:
        """A request that assigns sql_mode (`charsets.sql_mode_effect`): refused (False, the
        refusal is its completion record) when it names a mode that changes how the server reads
        SQL text, or when its value is not settled by the text and more follows it."""
        refused = effect.refused()
        if refused is not None:
            await self._refuse(request_id, SqlModeRefused(refused))
            return False
        if effect.unsettled and (effect.after_switch or effect.embedded):
            await self._refuse(request_id, SqlModeSwitchNotLast(effect.after_switch))
            return False
        return True

    async def _charset_switch_allowed(self, request_id: int, effect: CharsetEffect) -> bool:
        """A request that switches the client character set (`charsets.client_charset_effect`):
        refused (False, the refusal is its completion record) when it names a character set the
        gateway cannot read, or when a statement follows the switch in the same request."""
        refused = effect.refused()
        if refused is not None:
            await self._refuse(request_id, CharsetRefused(refused))
            return False
        if effect.after_switch and (effect.unsettled or any(codec_of(n) != self.text.codec for n in effect.named)):
            # (a switch to a character set read like the current one, SET NAMES utf8mb4 on a
            # utf8mb4 session, changes nothing the gateway reads)
            await self._refuse(request_id, CharsetSwitchNotLast(effect.after_switch))
            return False
        return True

    async def _after_request(
        self, scanner: ResponseScanner, effect: CharsetEffect, ask: bool, mode: SqlModeEffect = NO_MODE_EFFECT,
    ) -> None:
        """After a request ran: follow the character set it switched to (named literally, or
        reported by the server's session tracking), and ask the server when the request may
        have moved the database or the character set in a way its text does not settle, or
        assigned sql_mode (the server's @@sql_mode is the word on it; its status flags too)."""
        self._server_status(scanner.status)
        if mode.switches:
            ask = True
        if effect.named and scanner.error_code is None:
            self._server_charset(effect.named[-1])
        if scanner.client_charset is not None:
            self._server_charset(scanner.client_charset)
        if ask or effect.unsettled:
            await self._ask_session(database=True)

    async def _restore_login_charset(self) -> None:
        """After COM_RESET_CONNECTION (or CHANGE USER's reset) the server reads the character
        set its upstream session was opened with; make it the client's last login's again."""
        wanted = self.text.charset
        if wanted != self._upstream_charset:
            await self._apply_charset(wanted)
        elif self._login_charset_name and self.text.follow(self._login_charset_name):
            self._charset_lost = ""  # what the server said after the login that opened it
        else:
            await self._ask_session(database=False)

    async def _apply_charset(self, collation_id: int) -> None:
        """Make the upstream read the client in collation `collation_id` (as a login with it
        does), then take the server's word for what it reads. The statement carries only the
        number: no client text."""
        number = str(int(collation_id)).encode()
        await self._upstream_command(
            bytes([Command.QUERY]) + b"SET character_set_client = " + number + b", character_set_results = "
            + number + b", collation_connection = " + number
        )  # an id the server does not know fails: it keeps what it had, and says so below
        await self._ask_session(database=False)

    async def _refuse_diagnostics(self, request_id: int, mask: MaskContext | None) -> None:
        """Refuse GET DIAGNOSTICS ... CONDITION while the diagnostics area may quote masked
        values; the refusal is the statement's completion record."""
        await self._refuse(
            request_id, MaskedDiagnostics(mask_rule(mask) if mask is not None else self._diag_rule or "masking"),
        )

    async def _refuse(
        self, request_id: int,
        error: MaskedDiagnostics | UnsettledDatabase | CharsetRefused | CharsetSwitchNotLast | SqlModeRefused
        | SqlModeSwitchNotLast,
    ) -> None:
        """A request the pipeline allowed but the session cannot run safely: refused, and the
        refusal is its completion record."""
        self.audit.add(StatementCompleted(
            request_id=request_id, tags=("ERROR",), duration_ms=0.0, error=error.message,
            sqlstate=error.sqlstate,
        ))
        await self.audit.commit()
        await self._answer(error)

    async def _forward(
        self, payload: bytes, shape: Shape, *, rid: int | None = None, ref: int | None = None, note: str = "",
    ) -> ResponseScanner:
        """Send one command upstream and relay its response to the client. With `rid`, the
        `statement.completed` record is flushed before the last bytes go to the client."""
        assert self._cpipe is not None and self._upipe is not None
        started = time.perf_counter()
        await self._upipe_send(payload)
        scanner = ResponseScanner(
            shape, deprecate_eof=bool(self.client_caps & Capability.DEPRECATE_EOF),
            session_track=bool(self.client_caps & Capability.SESSION_TRACK),
        )
        buf = self._ubuf
        upipe, cpipe = self._upipe, self._cpipe
        recorded = False
        try:
            while True:
                if buf:
                    n = scanner.scan(buf)
                    if scanner.done or scanner.wants_infile:
                        if scanner.done and note and scanner.error_code is None and 0 <= scanner.warnings_at < n:
                            # The approval's note is one more warning of the statement (SHOW
                            # WARNINGS lists it: `_show_warnings`).
                            at = scanner.warnings_at
                            count = min(0xFFFF, int.from_bytes(buf[at : at + 2], "little") + 1)
                            buf[at : at + 2] = count.to_bytes(2, "little")
                            self._approval_note = note
                        if scanner.done and rid is not None:
                            recorded = True
                            event = completion(
                                scanner, request_id=rid, prepared_ref=ref,
                                duration_ms=round((time.perf_counter() - started) * 1000, 3), redact=self._redact_errors,
                            )
                            self.audit.add(self.ctx.approval_of(event) if self.ctx.approved else event)
                            await self.audit.commit()
                        await cpipe.send(bytes(buf[:n]))
                        del buf[:n]
                        if scanner.done:
                            return scanner
                        await self._relay_infile()
                        scanner.resume_after_infile()
                        continue
                    if n:
                        await cpipe.send(bytes(buf[:n]))
                        del buf[:n]
                buf += await self._upstream_data(upipe)
        except Exception as exc:
            if rid is not None and not recorded:
                await self._record_cut_off(exc, rid, ref, started)
            raise

    async def _forward_masked(
        self, payload: bytes, shape: Shape, *, ctx: MaskContext | None, binary: bool,
        rid: int | None = None, ref: int | None = None, rows: RowState | None = None,
        hide_messages: bool = False, hide_errors: bool | None = None,
    ) -> MaskingRelay:
        """`_forward` for sessions under masking: rows are rewritten (`adapters.mysql.maskrelay`);
        `rows` is the row rewriter of the cursor a FETCH reads; `hide_messages` replaces the
        Message of SHOW WARNINGS / SHOW ERRORS rows, `hide_errors` the text of an ERR packet
        (default: when the request's plan says so)."""
        assert self._cpipe is not None and self._upipe is not None
        started = time.perf_counter()
        await self._upipe_send(payload)
        relay = MaskingRelay(
            ctx, shape=shape, binary=binary, deprecate_eof=bool(self.client_caps & Capability.DEPRECATE_EOF),
            capabilities=self.client_caps, rows=rows, hide_messages=hide_messages, hide_errors=hide_errors,
            session_track=bool(self.client_caps & Capability.SESSION_TRACK),
        )
        buf = self._ubuf
        upipe, cpipe = self._upipe, self._cpipe
        recorded = False
        try:
            while True:
                if buf:
                    out = relay.feed(buf)
                    if relay.done:
                        if rid is not None:
                            recorded = True
                            event = completion(
                                relay.scanner, request_id=rid, prepared_ref=ref,
                                duration_ms=round((time.perf_counter() - started) * 1000, 3), redact=self._redact_errors,
                                masked=relay.masked, error_hidden=relay.error_hidden,
                            )
                            self.audit.add(self.ctx.approval_of(event) if self.ctx.approved else event)
                            await self.audit.commit()
                        if out:
                            await cpipe.send(out)
                        return relay
                    if out:
                        await cpipe.send(out)
                buf += await self._upstream_data(upipe)
        except Exception as exc:
            if rid is not None and not recorded:
                await self._record_cut_off(exc, rid, ref, started)
            raise

    async def _upstream_data(self, upipe: Pipe) -> bytes:
        """The upstream's next bytes; UpstreamLost when it closed or failed."""
        try:
            data = await upipe.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamLost() from exc
        if not data:
            raise UpstreamLost()
        return data

    async def _record_cut_off(self, exc: Exception, rid: int, ref: int | None, started: float) -> None:
        """A request whose response never ended (the upstream died, the client went away, the
        response could not be relayed) still gets its completion record, with the error."""
        if isinstance(exc, UpstreamLost):
            error, sqlstate = "the upstream connection was lost before the statement completed", SQLSTATE_LINK
        elif isinstance(exc, AuditUnavailable):
            return  # the completion itself could not be written
        else:
            error, sqlstate = f"the statement's response was cut off: {error_reply(exc).reason or 'session failed'}", SQLSTATE_LINK
        self.audit.add(StatementCompleted(
            request_id=rid, prepared_ref=ref, tags=("ERROR",),
            duration_ms=round((time.perf_counter() - started) * 1000, 3), error=error, sqlstate=sqlstate,
        ))
        await self.audit.flush_quietly()

    async def _relay_infile(self) -> None:
        """LOCAL INFILE data: client packets to the upstream until the empty packet."""
        assert self._upipe is not None
        if not (self.target is not None and self.target.allow_local_infile):
            raise ProtocolViolation("the upstream asked for a LOCAL INFILE the gateway did not allow")
        while True:
            packet = self._framer.next()
            if packet is None:
                data = await self.client.receive_some(65536)
                if not data:
                    raise SessionEnd()
                self._framer.feed(data)
                continue
            raw, _ = encode_packets(packet.payload, packet.seq)
            await self._upipe.send(raw)
            if not packet.payload:
                return

    # ------------------------------------------------------------------------------------
    # KILL and CHANGE USER

    async def _kill(self, kill: KillRequest) -> None:
        """Run a KILL the pipeline allowed: it names a gateway connection id, and reaches only
        the caller's own sessions (checked here, through the listener's registry)."""
        assert self.identity is not None
        gateway_id = kill.connection_id
        other = self.registry.get(gateway_id)
        if other is None or other.identity is None:
            await self._answer(NoSuchThread(gateway_id))
            return
        if not ident.same_name(other.identity.subject, self.identity.subject):
            await self._answer(KillNotOwner(gateway_id))
            return
        if other is not self and other.ctx.hold is not None:
            # Its statement is held for approval, not running (it has not reached the upstream):
            # the hold ends, which withdraws the request. KILL CONNECTION also ends that session
            # (`_judge`), which closes its upstream session as any session end does.
            other._killed = not kill.query_only
            other.ctx.withdraw_hold()
            self._seq = 1
            await self._write(messages.ok_packet(self.client_caps))
            return
        if other.up is None or other.target is None:
            await self._answer(NoSuchThread(gateway_id))
            return
        self._seq = 1
        if other is self and not kill.query_only:
            self._closing_reason = "killed itself"
            await self._write(messages.ok_packet(self.client_caps))
            raise SessionEnd()
        thread_id = other.up.greeting.connection_id
        verb = "KILL QUERY" if kill.query_only else "KILL CONNECTION"
        try:
            helper = await upstream.connect(other.target, capabilities=Capability.PROTOCOL_41, charset=Charset.UTF8MB4_GENERAL_CI)
        except upstream.UpstreamError as exc:
            await self._answer(UpstreamRefused(exc.errno, exc.sqlstate, str(exc)))
            return
        try:
            kill_payload = bytes([Command.QUERY]) + f"{verb} {thread_id}".encode()
            await helper.stream.send_all(encode_packets(kill_payload, 0)[0])
            framer = PacketFramer()
            while True:
                packet = framer.next()
                if packet is not None:
                    break
                data = await helper.stream.receive_some(65536)
                if not data:
                    raise UpstreamLost()
                framer.feed(data)
        finally:
            await trio.aclose_forcefully(helper.stream)
        if packet.payload[:1] == b"\xff":
            err = messages.decode_err(packet.payload)
            if isinstance(err, messages.ErrPacket):
                await self._answer(UpstreamRefused(err.errno, sqlstate_of(err.errno), err.message))
            else:  # a progress report where the answer should be: not an answer
                await self._answer(NoSuchThread(gateway_id, "KILL failed"))
            return
        await self._write(messages.ok_packet(self.client_caps))

    async def _change_user(self, payload: bytes) -> bool:
        """Re-authenticate against the gateway's identities; never passed upstream as is.
        Returns False when the session must end."""
        assert self._upipe is not None and self.target is not None
        request = messages.decode_command(payload, self.client_caps)
        assert isinstance(request, messages.ComChangeUser)
        # Switching identity is decided like a statement ("CHANGE USER": the identity-escalation
        # guardrail, rules on operation "change user"); a refusal ends the session.
        verdict = await self._judge(StatementRequest(sql="CHANGE USER", dialect="mysql", schema=self.text.schema))
        self._seq = 1
        if not verdict.allowed:
            await self._write(self._err(verdict.decision))
            self._closing_reason = "change user refused by policy"
            return False
        # The character set it carries is a login's: one the gateway cannot read is refused.
        charset_name = charset_of_collation(request.character_set) if request.character_set else None
        if charset_name is not None and codec_for_charset(request.character_set or 0) is None:
            self._closing_reason = f"change user refused: client character set {charset_name}"
            await self._refuse_connection(CharsetRefused(charset_name), user=request.user)
            return False
        # MySQL scrambles COM_CHANGE_USER with the connection's greeting nonce; we do not keep
        # it, so the exchange continues with an AuthSwitchRequest and a fresh nonce.
        switch = messages.ComChangeUser(
            user=request.user, auth_response=b"", schema=request.schema,
            character_set=request.character_set, auth_plugin_name="sqlward-switch",
        )
        # The re-authentication's packets are login packets: capped as before authentication.
        self._framer.max_payload = min(PREAUTH_MAX_PACKET, self.settings.max_message_size)
        identity = await self._authenticate(request.user, switch, b"")
        self._framer.max_payload = self.settings.max_message_size
        if identity is None:
            self._closing_reason = "change user refused"
            return False
        dbname = request.schema or self.target.info.name
        target = self.gk.resolve_target(dbname, "mysql")
        if target is None:
            await self._send_last(self._err(UnknownTarget(dbname)))
            return False
        refusal = self.gk.access_refusal(identity, target.info)
        if refusal is not None:  # [[access]] judges the new pair as it does at login
            self._closing_reason = "change user refused by [[access]]"
            await self._refuse_connection(AccessRefused(refusal), user=request.user, target=target.info.name)
            return False
        if target.info.name != self.target.info.name:
            assert self.up is not None
            await trio.aclose_forcefully(self.up.stream)
            self._upstream_charset = request.character_set or self.text.charset
            self._login_charset_name = ""  # a new upstream session: the server says below
            self.up = await upstream.connect(
                target, capabilities=self.client_caps & ~Capability.SSL & ~Capability.LOCAL_FILES,
                charset=self._upstream_charset,
            )
            self._upipe = Pipe(self.up.stream)
            self._ubuf = bytearray(self.up.leftover)
        else:
            # Drop the previous identity's session state on the upstream.
            await self._upipe_send(bytes([Command.RESET_CONNECTION]))
            reset = ResponseScanner(Shape.SIMPLE, deprecate_eof=bool(self.client_caps & Capability.DEPRECATE_EOF))
            while not reset.done:
                if self._ubuf:
                    n = reset.scan(self._ubuf)
                    del self._ubuf[:n]
                    if reset.done:
                        break
                data = await self._upipe.receive()
                if not data:
                    raise UpstreamLost()
                self._ubuf += data
            if reset.error_code is not None:
                raise UpstreamLost()
            # COM_RESET_CONNECTION keeps the current database (MariaDB 10.11, MySQL): a USE of
            # the previous identity would otherwise stay in force. CHANGE USER starts on the
            # target's database, as a new connection does.
            if target.database:
                # (the server reads the name in the character set its session was opened with)
                name = SessionText(self._upstream_charset).encode(target.database)
                init = await self._upstream_command(bytes([Command.INIT_DB]) + name)
                if init.error_code is not None:
                    raise UpstreamLost()
        self._prepared.clear()
        self._long_data.clear()
        self._diag_hidden = False  # a new upstream session, or one reset: no diagnostics left
        if request.character_set:
            self.text.set_charset(request.character_set)
        await self._restore_login_charset()  # the charset CHANGE USER carries, on the upstream too
        await self._set_identity(identity, target)
        self.text.schema = target.database
        await self._ask_database()  # the server's word on where the new session starts
        if self._charset_lost:
            self._closing_reason = f"change user refused: the server reads client character set {self._charset_lost}"
            await self._refuse_connection(CharsetRefused(self._charset_lost), user=request.user)
            return False
        if self._mode_lost:
            self._closing_reason = f"change user refused: the server's sql_mode holds {self._mode_lost}"
            await self._refuse_connection(SqlModeRefused(self._mode_lost, login=True), user=request.user)
            return False
        if self.text.charset == self._upstream_charset:
            self._login_charset_name = self.text.name
        await self._show_identity_upstream(identity)
        await self._write(messages.ok_packet(self.client_caps))
        return True
