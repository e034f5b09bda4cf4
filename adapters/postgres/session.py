"""One client connection through the gateway: startup, authentication, then the governed relay.

Startup (`_startup`): the first bytes decide between direct TLS (PostgreSQL 17 `sslnegotiation=
direct`: a TLS ClientHello straight away) and the classic untyped packets: SSLRequest (TLS when
the listener has a certificate, `N` otherwise), GSSENCRequest (always `N`), CancelRequest (handed
to the listener, which cancels the right upstream query) and the StartupMessage. A client asking
for protocol 3.x (x > 0) or sending `_pq_.` options gets NegotiateProtocolVersion for 3.0.
Authentication: a client certificate verified by the listener's CA (mutual TLS) that names the
startup user is the credential; a static identity proves its secret with SCRAM-SHA-256; any
other user name presents an OIDC token as a cleartext password, only over TLS (or plain TCP from
loopback when the listener allows it); on plain TCP such a user is refused with a clear FATAL, so
a token never travels in clear. The stated session reason comes from `options`
(`-c sqlward.reason=...`), `application_name` (`reason=...`) or a leading
`/* sqlward:reason=... */` comment. The database name picks the target, the access rules must let
the identity reach it; then the upstream session is opened with the gateway's own credentials,
showing the identity as application_name `sqlward:<subject>[ via <actor>]` and the setting
`sqlward.identity`, and its ParameterStatus values are relayed with the gateway's own
BackendKeyData. Once a token expires, statements are refused (or the session is closed).

Relay (`_relay`): two tasks. The client task frames client messages on a bytearray and forwards
them in one write per received chunk; it decodes only what policy and audit need: Query and Parse
(the SQL), Bind (portal -> statement), Execute, Close, Sync. A refused Query or Parse is not
dropped: it is *replaced* by a statement the upstream rejects with a syntax error
(`sqlward_refused_<n>`), and the upstream task swaps that ErrorResponse for the gateway's own
(SQLSTATE 42501, naming the rule). The upstream itself therefore keeps the protocol in sync: an
extended-protocol pipeline discards up to Sync and rolls back its implicit transaction, a
transaction block becomes failed, ReadyForQuery carries the true status, exactly as if the server
had refused. After a refused Parse the client task drops messages up to Sync, as the server would.

The upstream task scans backend messages without decoding rows: it only looks into
CommandComplete, ErrorResponse, EmptyQueryResponse, PortalSuspended and ReadyForQuery to complete
audit records, which are written before the chunk holding them is forwarded. DataRow and CopyData
bodies are streamed through without being buffered whole.
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
import time
from collections import deque
import hmac

import msgspec
import trio

from sqlward.adapters.netio import Pipe, PrefixedStream
from sqlward.adapters.base import (
    AuthError,
    ListenerSettings,
    SessionRegistry,
    SessionServices,
    StatementRequest,
)
from sqlward.adapters.session_common import GovernedSession, SessionEnd, TokenExpired
from sqlward.adapters import identity as ident
from sqlward.adapters.postgres import codec, errors, upstream
from sqlward.adapters.postgres.errors import ClientLost, Refused, UpstreamLost
from sqlward.adapters.postgres.encodings import decoder_for
from sqlward.adapters.postgres.codec import Backend, Frontend, ProtocolViolation
from sqlward.adapters.postgres.scram import ScramError, ScramExchange
from sqlward.audit.events import (
    ConnectionAuthenticated,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    StatementCompleted,
)
from sqlward.adapters.maskcolumns import Column, ColumnMasks, column_maskers
from sqlward.adapters.postgres.rowmask import RowMasker, kind_for_oid
from sqlward.masking.context import MaskContext
from sqlward.policy.model import Decision, Identity

log = logging.getLogger("sqlward.postgres")

_unpack_len = struct.Struct("!I").unpack_from
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
_TERMINATE = codec.encode_frontend(codec.Terminate())
REFUSED_MARKER = "sqlward_refused_"
_MARKER_BYTES = REFUSED_MARKER.encode()
AUTH_TIMEOUT = 60.0

# Backend message types the upstream task must look into (all others pass untouched).
_WATCH = bytearray(256)
for _t in (
    Backend.COMMAND_COMPLETE, Backend.ERROR_RESPONSE, Backend.EMPTY_QUERY_RESPONSE,
    Backend.PORTAL_SUSPENDED, Backend.READY_FOR_QUERY, Backend.PARAMETER_STATUS,
):
    _WATCH[_t] = 1
_STREAMED = (Backend.DATA_ROW, Backend.COPY_DATA)  # may be huge: never buffered whole
# Sessions under masking also look at row descriptions and rows (each DataRow is buffered whole).
_WATCH_MASKED = bytearray(_WATCH)
for _t in (Backend.ROW_DESCRIPTION, Backend.NO_DATA, Backend.DATA_ROW):
    _WATCH_MASKED[_t] = 1

_KNOWN_FRONTEND = frozenset(int(t) for t in Frontend)


def _cstr_end(buf: bytearray, start: int, end: int) -> int:
    """Index of the NUL ending the string at `start` inside one message, or ProtocolViolation."""
    idx = buf.find(0, start, end)
    if idx < 0:
        raise ProtocolViolation("string is not NUL-terminated")
    return idx


_ESCALATING_SETTINGS = ("role", "session_authorization")
_OPTION_SETTING = re.compile(r"(?:-c\s*|--)([A-Za-z_][A-Za-z0-9_.]*)\s*=")


def _startup_escalation(params: tuple[tuple[str, str], ...]) -> str:
    """The name of a startup setting that would change who the upstream thinks we are (a
    `role` / `session_authorization` startup parameter, or one in `options`), else ""."""
    for key, value in params:
        if key.lower() in _ESCALATING_SETTINGS:
            return key
        if key == "options":
            for name in _OPTION_SETTING.findall(value):
                if name.lower() in _ESCALATING_SETTINGS or name.lower().startswith("sqlward.identity"):
                    return name
    return ""


class _TokenNeedsTLS(Exception):
    """A non-static user on plain TCP: a token must not travel in clear."""


class _Pending:
    """A request forwarded upstream whose outcome is awaited (for the audit trail)."""

    __slots__ = (
        "kind", "request_id", "ref", "started", "tags", "rows", "error", "sqlstate", "audit",
        "mask", "inject", "masked",
    )

    def __init__(
        self, kind: str, request_id: int = 0, ref: int | None = None, audit: bool = True,
        mask: MaskContext | None = None, inject: bool = False,
    ) -> None:
        self.kind = kind  # "query" | "execute" | "sync" | "describe" (masked sessions)
        # Masking: the request's context, and whether the gateway put a Describe (portal) before
        # this Execute whose RowDescription / NoData it swallows (to learn formats and origins).
        self.mask = mask
        self.inject = inject
        self.masked: dict[str, int] = {}
        self.request_id = request_id
        self.ref = ref
        self.started = time.perf_counter()
        self.tags: list[str] = []
        self.rows: int | None = None
        self.error: str | None = None
        self.sqlstate: str | None = None
        self.audit = audit


async def cancel_backend(registry: SessionRegistry[PostgresSession], pid: int, secret: bytes) -> None:
    """A client's CancelRequest: cancel the query of the session the gateway gave backend pid
    `pid`, if `secret` is that session's (compared in constant time), with the upstream's own
    key, which the client never sees. A wrong pid or secret cancels nothing, silently, as
    PostgreSQL does."""
    session = registry.get(pid)
    if session is None or not hmac.compare_digest(session.secret, secret):
        log.info("cancel request for unknown backend %d ignored", pid)
        return
    up = session.up
    target = session.target
    if up is None or target is None:
        return
    await upstream.send_cancel(target, up.pid, up.secret)


class PostgresSession(GovernedSession):
    def __init__(
        self, services: SessionServices, settings: ListenerSettings,
        registry: SessionRegistry[PostgresSession], stream: trio.SocketStream, client_addr: str,
    ) -> None:
        self.connection_id = secrets.token_hex(6)
        super().__init__(services, settings, stream, client_addr, self.connection_id)
        self.client: trio.abc.Stream = stream
        self.registry = registry
        self.tls = False
        self.up: upstream.UpstreamConnection | None = None
        self.pid = 0
        self.secret = b""
        self.application_name = ""
        self._startup_rest = b""
        # Relay state, shared by the two tasks (same trio thread, no locks needed).
        self._pending: deque[_Pending] = deque()
        self._refusals: dict[str, tuple[int, bytes]] = {}  # marker -> (sync seq, ErrorResponse)
        self._syncs_sent = 0
        self._syncs_done = 0
        self._statements: dict[str, int] = {}  # prepared statement name -> decided request id
        self._prepared_sql: dict[str, tuple[str, int]] = {}  # name -> (SQL, policy version decided)
        self._portals: dict[str, int | None] = {}
        self._discarding = False
        self._tx_status = "I"
        self._closing_reason = ""
        self._relaying = False  # ReadyForQuery sent: the relay runs
        self._to_client_partial = False  # the client has part of a backend message
        self._decode_sql = decoder_for("UTF8")
        self._sql_comment = b""
        # Masking (only for identities a [[masks]] rule applies to; see adapters.maskcolumns).
        self._watch = _WATCH
        self._stmt_masks: dict[str, MaskContext | None] = {}
        self._portal_masks: dict[str, MaskContext | None] = {}
        self._rows: RowMasker | None = None  # rewriter of the result set being relayed
        self._row_counts: ColumnMasks | None = None

    # ----------------------------------------------------------------------------------------
    # helpers

    def _wire_state(self) -> errors.WireState:
        """Where the client's byte stream is (what `errors.reply` may put on it)."""
        if not self._relaying:
            return "startup"
        if self._to_client_partial:
            return "mid-message"
        return "relay"

    async def _fail(self, exc: BaseException, scope: trio.CancelScope | None = None) -> None:
        """The one error path of the session: `errors.reply` says what the client gets and what
        becomes of the session; a startup refusal is recorded; the relay's tasks are cancelled
        (`scope`) before the last words are sent."""
        if isinstance(exc, _IO_ERRORS):  # startup: the only stream in use is the client's
            exc = ClientLost(str(exc))
        reply = errors.reply(exc, self._wire_state())
        if reply.log_traceback:  # a bug: keep it off the wire, log it, close cleanly
            log.error("session %s failed", self.connection_id, exc_info=exc)
        elif isinstance(exc, UpstreamLost) and isinstance(exc.__cause__, ProtocolViolation):
            log.error("upstream protocol violation: %s", exc.__cause__)
        if isinstance(exc, Refused):
            await self._record_quietly(ConnectionRefused(user=exc.user, target=exc.target, reason=exc.audit_reason))
        if reply.reason and (reply.replaces_reason or not self._closing_reason):
            self._closing_reason = reply.reason
        if scope is not None:
            scope.cancel()
        if reply.data:
            await self._send_last_words(reply.data)

    async def _send_last_words(self, data: bytes) -> None:
        """Best-effort FATAL to the client; shielded (it is sent while the session is being torn
        down) but bounded, so a client that stopped reading cannot hold the session open."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                try:
                    await self.client.send_all(data)
                except (*_IO_ERRORS, trio.BusyResourceError, OSError):
                    pass

    # ----------------------------------------------------------------------------------------
    # lifecycle

    async def run(self) -> None:
        opened = time.perf_counter()
        await self._record_quietly(
            ConnectionOpened(client_addr=self.client_addr, listener=self.settings.name, protocol="postgres")
        )
        try:
            ok = False
            with trio.move_on_after(AUTH_TIMEOUT) as scope:
                ok = await self._startup()
            if scope.cancelled_caught:
                raise Refused(
                    errors.CONNECTION_FAILURE, "authentication timed out", closing_reason="authentication timeout",
                )
            if ok:
                self._relaying = True
                await self._relay()
        except Exception as exc:
            await self._fail(exc)
        finally:
            if self.pid:
                self.registry.remove(self.pid, self)
            if self.up is not None:
                await trio.aclose_forcefully(self.up.stream)
            await self._close_client()
            if self.identity is not None:
                await self._record_quietly(
                    ConnectionClosed(
                        duration_ms=round((time.perf_counter() - opened) * 1000, 3),
                        requests=self.ctx.requests, reason=self._closing_reason,
                    )
                )

    # ----------------------------------------------------------------------------------------
    # startup and authentication

    async def _startup(self) -> bool:
        framer = codec.StartupFramer()
        first = await self.client.receive_some(16384)
        if not first:
            return False
        if first[0] == 0x16:  # TLS ClientHello: direct TLS negotiation
            if self.settings.ssl_context is None:
                raise SessionEnd()  # nothing sensible to say in plaintext to a TLS client
            await self._start_tls(PrefixedStream(self.client, first))
        else:
            framer.feed(first)
        while True:
            packet = framer.next()
            if packet is None:
                data = await self.client.receive_some(16384)
                if not data:
                    return False
                framer.feed(data)
                continue
            msg = codec.decode_startup(packet)
            if isinstance(msg, codec.SSLRequest):
                if self.tls:
                    raise ProtocolViolation("SSLRequest on an encrypted connection")
                if framer.buffered:  # bytes sent before our answer could be injected plaintext
                    raise ProtocolViolation("unexpected data after SSLRequest")
                if self.settings.ssl_context is None:
                    await self.client.send_all(b"N")
                    continue
                await self.client.send_all(b"S")
                await self._start_tls(self.client)
                continue
            if isinstance(msg, codec.GSSENCRequest):
                if framer.buffered:
                    raise ProtocolViolation("unexpected data after GSSENCRequest")
                await self.client.send_all(b"N")
                continue
            if isinstance(msg, codec.CancelRequest):
                await cancel_backend(self.registry, msg.pid, msg.secret)
                return False
            self._startup_rest = framer.take_rest()
            return await self._handle_startup(msg)

    async def _start_tls(self, raw: trio.abc.Stream) -> None:
        ctx = self.settings.ssl_context
        assert ctx is not None
        stream = trio.SSLStream(raw, ctx, server_side=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            raise SessionEnd() from exc
        self.client = stream
        self.tls = True

    async def _handle_startup(self, msg: codec.StartupMessage) -> bool:
        major, minor = msg.protocol >> 16, msg.protocol & 0xFFFF
        if major != 3:
            raise Refused(errors.FEATURE_NOT_SUPPORTED, f"unsupported frontend protocol {major}.{minor}: sqlward supports 3.0")
        params = dict(msg.params)
        protocol_options = [k for k, _ in msg.params if k.startswith("_pq_.")]
        if minor > 0 or protocol_options:
            await self.client.send_all(
                # The field holds the full version number (3 << 16 | minor), as PostgreSQL sends it
                # and libpq 18 reads it, although the docs call it the newest minor version.
                codec.encode_backend(codec.NegotiateProtocolVersion(codec.PROTOCOL_3_0, tuple(protocol_options)))
            )
        user = params.get("user", "")
        if not user:
            raise Refused(errors.INVALID_AUTHORIZATION_SPECIFICATION, "no user name specified in startup packet")
        if self.settings.tls_required and not self.tls:
            raise Refused(
                errors.INVALID_AUTHORIZATION_SPECIFICATION,
                "this sqlward listener requires TLS: connect with sslmode=require", user=user,
            )
        replication = params.get("replication", "false").lower()
        if replication not in ("false", "off", "no", "0"):
            raise Refused(
                errors.INSUFFICIENT_PRIVILEGE, "replication connections are not allowed through sqlward", user=user,
            )
        self.application_name = params.get("application_name", "")
        dbname = params.get("database") or self.settings.default_target or user
        escalation = _startup_escalation(msg.params)
        if escalation:
            raise Refused(
                errors.INSUFFICIENT_PRIVILEGE,
                f"setting {escalation} at connection start is not allowed through sqlward", user=user,
            )

        identity = await self._authenticate(user)
        reason = ident.reason_from_options(params.get("options", "")) or ident.reason_from_application_name(
            self.application_name
        )
        if reason and not identity.reason:
            identity = msgspec.structs.replace(identity, reason=reason)
        self._update_identity(identity)
        target = self.gk.resolve_target(dbname, "postgres")
        if target is None:
            raise Refused(
                errors.INVALID_CATALOG_NAME, f'"{dbname}" is not a target of this sqlward gateway',
                user=user, target=dbname,
            )
        refusal = self.gk.access_refusal(identity, target.info)
        if refusal is not None:
            raise Refused(errors.INSUFFICIENT_PRIVILEGE, refusal, user=user, target=target.info.name)
        self.target = target
        assert self.who is not None
        # Durable before the upstream session opens (AuditUnavailable ends the session).
        await self.audit.record(
            ConnectionAuthenticated(
                who=self.who, target=target.info.name, environment=target.info.environment,
                application_name=self.application_name,
            )
        )
        forward = [
            (k, v) for k, v in msg.params
            if k not in ("user", "database", "replication") and not k.startswith("_pq_.")
        ]
        forward = self._upstream_identity_params(forward, identity)
        try:
            self.up = await upstream.connect(target, forward)
        except upstream.UpstreamError as exc:
            raise Refused(exc.sqlstate, str(exc), user=user, target=target.info.name) from exc
        self._tx_status = self.up.tx_status
        if self.gk.identity_settings().sql_comment:
            self._sql_comment = ident.sql_comment(identity).encode()
        for name, value in self.up.parameters:
            if name == "client_encoding":
                self._decode_sql = decoder_for(value)
        self.secret = secrets.token_bytes(4)
        self.pid = self.registry.add(self)
        out = bytearray()
        for name, value in self.up.parameters:
            if name == "application_name":  # the client sees its own name; upstream shows who
                value = self.application_name
            out += codec.encode_backend(codec.ParameterStatus(name, value))
        for notice in self.up.notices:
            out += notice
        out += codec.encode_backend(codec.BackendKeyData(self.pid, self.secret))
        out += codec.encode_backend(codec.ReadyForQuery(self.up.tx_status))
        await self.client.send_all(out)
        return True

    def _upstream_identity_params(
        self, params: list[tuple[str, str]], identity: Identity
    ) -> list[tuple[str, str]]:
        """Show the person (and agent) to the database: application_name and the custom
        setting sqlward.identity, both visible in pg_stat_activity / current_setting()."""
        settings = self.gk.identity_settings()
        label = ident.upstream_label(identity)
        out = list(params)
        if settings.upstream_application_name:
            shown = f"{label} {self.application_name}" if self.application_name else label
            out = [(k, v) for k, v in out if k != "application_name"] + [("application_name", shown[:63])]
        if settings.upstream_setting:
            value = label.replace("\\", "\\\\").replace(" ", "\\ ")
            options = dict(out).get("options", "")
            out = [(k, v) for k, v in out if k != "options"]
            out.append(("options", f"{options} -c sqlward.identity={value}".strip()))
        return out

    async def _read_auth_message(self, framer: codec.Framer) -> bytes:
        while True:
            item = framer.next()
            if item is not None:
                mtype, body = item
                if mtype != Frontend.PASSWORD:
                    raise ProtocolViolation(
                        f"expected a password message, got message type {chr(mtype)!r}"
                    )
                return body
            data = await self.client.receive_some(16384)
            if not data:
                raise SessionEnd()
            framer.feed(data)

    async def _authenticate(self, user: str) -> Identity:
        framer = codec.Framer(max_size=65536)
        framer.feed(self._startup_rest)
        self._startup_rest = b""
        secret = self.gk.scram_secret(user)
        loopback_plain = self.settings.allow_plaintext_tokens and ident.is_loopback(self.client_addr.rsplit(":", 1)[0])
        try:
            cert_identity = self._certificate_identity()
            if cert_identity is not None and cert_identity.subject == user:
                identity = cert_identity  # mutual TLS: the verified certificate is the credential
            elif secret is None and (self.tls or loopback_plain):
                await self.client.send_all(codec.encode_backend(codec.AuthenticationCleartextPassword()))
                body = await self._read_auth_message(framer)
                token = codec.PasswordMessage(body).password
                identity = await self.gk.authenticate_token(user, token, tls=self.tls, loopback=loopback_plain)
            elif secret is None:
                raise _TokenNeedsTLS()
            else:
                exchange = ScramExchange(secret)
                await self.client.send_all(
                    codec.encode_backend(codec.AuthenticationSASL(("SCRAM-SHA-256",)))
                )
                initial = codec.decode_sasl_initial(
                    codec.PasswordMessage(await self._read_auth_message(framer))
                )
                if initial.mechanism != "SCRAM-SHA-256" or initial.data is None:
                    raise AuthError(f"unsupported SASL mechanism {initial.mechanism!r}")
                server_first = exchange.first(initial.data.decode("utf-8"))
                await self.client.send_all(
                    codec.encode_backend(codec.AuthenticationSASLContinue(server_first.encode()))
                )
                final = await self._read_auth_message(framer)
                server_final = exchange.final(final.decode("utf-8"))
                await self.client.send_all(
                    codec.encode_backend(codec.AuthenticationSASLFinal(server_final.encode()))
                )
                identity = self.gk.identity_for_scram(user)
        except _TokenNeedsTLS:
            raise Refused(
                errors.INVALID_AUTHORIZATION_SPECIFICATION,
                f'"{user}" is not a static identity: sqlward accepts tokens only over TLS '
                "(connect with sslmode=require)",
                user=user,
            ) from None
        except (AuthError, ScramError, UnicodeDecodeError) as exc:
            raise Refused(
                errors.INVALID_PASSWORD, f'password authentication failed for user "{user}"',
                detail=str(exc) if isinstance(exc, AuthError) and secret is None else "",
                user=user, audit_reason=f"authentication failed: {exc}",
            ) from exc
        await self.client.send_all(codec.encode_backend(codec.AuthenticationOk()))
        self._startup_rest = framer.take_rest()
        return identity

    # ----------------------------------------------------------------------------------------
    # relay

    async def _relay(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._client_task, nursery.cancel_scope)
            nursery.start_soon(self._upstream_task, nursery.cancel_scope)
            deadline = self._closes_at_expiry()
            if deadline is not None:
                nursery.start_soon(self._expiry_task, deadline, nursery.cancel_scope)

    async def _expiry_task(self, deadline: float, cancel_scope: trio.CancelScope) -> None:
        """Closes an idle session too when its token expires (on_token_expiry = "close")."""
        await trio.sleep_until(deadline)
        await self._fail(TokenExpired(), cancel_scope)

    def _refusal_bytes(self, decision: Decision) -> bytes:
        return errors.reply(decision, "relay").data

    async def _verdict(self, request: StatementRequest) -> tuple[int, bytes | None]:
        """The pipeline's verdict on one request, recorded for the next flush point: (request
        id, None) when it may run, else (request id, the ErrorResponse to swap in)."""
        verdict = await self._judge(request, durable=False)
        if request.kind == "statement":
            self._watch = _WATCH_MASKED if self._masked else _WATCH
        if verdict.allowed:
            return verdict.request_id, None
        return verdict.request_id, self._refusal_bytes(verdict.decision)

    def _start_rows(self, body: bytes | bytearray, ctx: MaskContext | None) -> None:
        """A RowDescription: prepare the rewriter of the rows that follow (None when no column
        needs masking, so those rows pass as bytes)."""
        self._rows = None
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
            self._rows = RowMasker(
                [f.type_oid for f in desc.fields], [f.format for f in desc.fields], masks.raw,
                counts=masks.counts, counted=masks.counted,
            )
            self._row_counts = masks

    def _end_rows(self, p: _Pending | None) -> None:
        if self._row_counts is not None and p is not None:
            self._row_counts.add_counts(p.masked)
        self._rows = None
        self._row_counts = None

    def _inject_refusal(self, error: bytes) -> str:
        """Remember an error to swap in; returns the marker the injected SQL must contain."""
        marker = f"{REFUSED_MARKER}{self.ctx.requests}_{secrets.token_hex(4)}"
        self._refusals[marker] = (self._syncs_sent, error)
        return marker

    async def _client_task(self, cancel_scope: trio.CancelScope) -> None:
        try:
            await self._client_loop()
            self._closing_reason = self._closing_reason or "client terminated"
        except Exception as exc:
            await self._fail(exc, cancel_scope)
        cancel_scope.cancel()

    async def _client_loop(self) -> None:
        assert self.up is not None
        client = Pipe(self.client)
        up = Pipe(self.up.stream)
        max_size = self.settings.max_message_size
        buf = bytearray(self._startup_rest)
        self._startup_rest = b""
        pending = self._pending
        need_data = not buf
        while True:
            if need_data:
                try:
                    data = await client.receive()
                except _IO_ERRORS as exc:
                    raise ClientLost(str(exc)) from exc
                if not data:
                    try:
                        await up.send(_TERMINATE)
                    except _IO_ERRORS:
                        pass
                    return
                buf += data
            need_data = True
            n = len(buf)
            pos = 0
            parts: list[bytes] | None = None  # set once some message is not forwarded verbatim
            seg = 0  # start of the current verbatim run
            terminate = False
            while n - pos >= 5:
                mtype = buf[pos]
                (length,) = _unpack_len(buf, pos + 1)
                if length < 4:
                    raise ProtocolViolation(f"invalid message length {length}")
                if length - 4 > max_size and mtype != Frontend.COPY_DATA:
                    raise codec.MessageTooLarge(
                        f"message of {length - 4} bytes exceeds this gateway's limit of {max_size} bytes"
                    )
                end = pos + 1 + length
                if end > n:
                    break
                replacement: bytes | None = None
                drop = False
                if self._discarding and mtype != Frontend.SYNC and mtype != Frontend.TERMINATE:
                    if mtype not in _KNOWN_FRONTEND:
                        raise ProtocolViolation(f"invalid frontend message type {mtype}")
                    drop = True
                elif mtype == Frontend.EXECUTE:
                    portal = bytes(buf[pos + 5 : _cstr_end(buf, pos + 5, end)]).decode("utf-8", "surrogateescape")
                    # A prepared statement must not outlive the token either.
                    rid, error = await self._verdict(
                        StatementRequest(sql="", dialect="postgres", kind="execute", statement_name=portal)
                    )
                    if error is None:
                        if self._masked:
                            # Learn the portal's formats and column origins just before its rows.
                            pending.append(
                                _Pending("execute", rid, self._portals.get(portal),
                                         mask=self._portal_masks.get(portal), inject=True)
                            )
                            replacement = codec.encode_frontend(codec.Describe("P", portal)) + bytes(buf[pos:end])
                        else:
                            pending.append(_Pending("execute", rid, self._portals.get(portal)))
                    else:
                        marker = self._inject_refusal(error)
                        replacement = codec.encode_frontend(codec.Parse("", marker))
                        self._discarding = True
                elif mtype == Frontend.BIND:
                    p_end = _cstr_end(buf, pos + 5, end)
                    s_end = _cstr_end(buf, p_end + 1, end)
                    portal = self._decode_sql(bytes(buf[pos + 5 : p_end]))
                    stmt = self._decode_sql(bytes(buf[p_end + 1 : s_end]))
                    self._portals[portal] = self._statements.get(stmt)
                    self._portal_masks[portal] = self._stmt_masks.get(stmt)
                    prepared = self._prepared_sql.get(stmt)
                    if prepared is not None and prepared[1] != self.pipeline.policy_version:
                        # The policy changed since this statement was decided: decide again.
                        version = self.pipeline.policy_version
                        rid, error = await self._verdict(
                            StatementRequest(sql=prepared[0], dialect="postgres", statement_name=stmt)
                        )
                        if error is None:
                            self._prepared_sql[stmt] = (prepared[0], version)
                            self._stmt_masks[stmt] = self._portal_masks[portal] = self._last_mask
                        else:
                            marker = self._inject_refusal(error)
                            replacement = codec.encode_frontend(codec.Parse("", marker))
                            self._discarding = True
                elif mtype == Frontend.SYNC:
                    self._discarding = False
                    self._syncs_sent += 1
                    pending.append(_Pending("sync"))
                elif mtype == Frontend.QUERY:
                    sql_end = _cstr_end(buf, pos + 5, end)
                    if sql_end != end - 1:
                        raise ProtocolViolation("unexpected bytes after the end of a Query message")
                    rid, error = await self._verdict(
                        StatementRequest(sql=self._decode_sql(bytes(buf[pos + 5 : sql_end])), dialect="postgres")
                    )
                    self._syncs_sent += 1
                    if error is None:
                        pending.append(_Pending("query", rid, mask=self._last_mask))
                        if self._sql_comment:  # sqlcommenter-style: who, for the server's logs
                            body = self._sql_comment + bytes(buf[pos + 5 : end])
                            replacement = struct.pack("!BI", Frontend.QUERY, len(body) + 4) + body
                    else:
                        marker = self._inject_refusal(error)
                        replacement = codec.encode_frontend(codec.Query(marker))
                        pending.append(_Pending("query", rid, audit=False))
                elif mtype == Frontend.PARSE:
                    n_end = _cstr_end(buf, pos + 5, end)
                    sql_end = _cstr_end(buf, n_end + 1, end)
                    if end - sql_end < 3:
                        raise ProtocolViolation("Parse message is truncated")
                    name = self._decode_sql(bytes(buf[pos + 5 : n_end]))
                    sql = self._decode_sql(bytes(buf[n_end + 1 : sql_end]))
                    version = self.pipeline.policy_version
                    rid, error = await self._verdict(StatementRequest(sql=sql, dialect="postgres", statement_name=name))
                    if error is None:
                        self._statements[name] = rid
                        self._stmt_masks[name] = self._last_mask
                        if name:  # named statements outlive this pipeline: re-decided on policy change
                            self._prepared_sql[name] = (sql, version)
                    else:
                        self._statements.pop(name, None)
                        self._prepared_sql.pop(name, None)
                        self._stmt_masks.pop(name, None)
                        marker = self._inject_refusal(error)
                        replacement = codec.encode_frontend(codec.Parse("", marker))
                        self._discarding = True
                elif mtype == Frontend.CLOSE:
                    if end - pos >= 7:
                        name = bytes(buf[pos + 6 : end - 1]).decode("utf-8", "surrogateescape")
                        if buf[pos + 5] == 0x53:  # 'S'
                            self._statements.pop(name, None)
                            self._prepared_sql.pop(name, None)
                            self._stmt_masks.pop(name, None)
                        else:
                            self._portals.pop(name, None)
                            self._portal_masks.pop(name, None)
                elif mtype == Frontend.DESCRIBE:
                    if self._masked:  # its RowDescription / NoData is the client's, not ours
                        pending.append(_Pending("describe"))
                elif mtype == Frontend.FUNCTION_CALL:
                    # It would run a function without SQL, past the policy: the pipeline refuses it.
                    rid, error = await self._verdict(
                        StatementRequest(sql="", dialect="postgres", kind="command", command="FunctionCall")
                    )
                    self._syncs_sent += 1
                    if error is None:
                        pending.append(_Pending("query", rid))
                    else:
                        marker = self._inject_refusal(error)
                        replacement = codec.encode_frontend(codec.Query(marker))
                        pending.append(_Pending("query", rid, audit=False))
                elif mtype == Frontend.TERMINATE:
                    terminate = True
                elif mtype not in _KNOWN_FRONTEND or mtype == Frontend.PASSWORD:
                    raise ProtocolViolation(f"invalid frontend message type {mtype}")
                if replacement is not None or drop:
                    if parts is None:
                        parts = []
                    parts.append(bytes(buf[seg:pos]))
                    if replacement is not None:
                        parts.append(replacement)
                    seg = end
                pos = end
                if terminate:
                    break
            if pos:
                if parts is None:
                    out = bytes(buf[:pos])
                else:
                    parts.append(bytes(buf[seg:pos]))
                    out = b"".join(parts)
                del buf[:pos]
                # The decisions of this chunk are durable before the upstream sees it.
                await self.audit.flush()
                if out:
                    try:
                        await up.send(out)
                    except _IO_ERRORS as exc:
                        raise UpstreamLost(str(exc)) from exc
                if terminate:
                    return

    async def _upstream_task(self, cancel_scope: trio.CancelScope) -> None:
        try:
            try:
                await self._upstream_loop()
            except ProtocolViolation as exc:  # the upstream broke the protocol: as good as lost
                raise UpstreamLost(f"upstream protocol violation: {exc}") from exc
        except Exception as exc:
            await self._fail(exc, cancel_scope)
        cancel_scope.cancel()

    def _complete(self, p: _Pending, events: list[StatementCompleted]) -> None:
        if not p.audit:
            return
        events.append(
            StatementCompleted(
                request_id=p.request_id, prepared_ref=p.ref, tags=tuple(p.tags), rows=p.rows,
                duration_ms=round((time.perf_counter() - p.started) * 1000, 3),
                error=p.error, sqlstate=p.sqlstate, masked=p.masked,
            )
        )

    def _on_backend(self, mtype: int, body: bytes | bytearray, events: list[StatementCompleted]) -> bytes | None:
        """Bookkeeping for a watched backend message; returns replacement bytes, if any."""
        pending = self._pending
        head = pending[0] if pending else None
        if mtype == Backend.DATA_ROW:
            rows = self._rows
            if rows is None:
                return None
            new = rows.mask_datarow(body)
            if new is None:
                return None
            return struct.pack("!BI", Backend.DATA_ROW, len(new) + 4) + new
        if mtype == Backend.ROW_DESCRIPTION or mtype == Backend.NO_DATA:
            if head is not None and head.kind == "describe":
                pending.popleft()  # the client's own Describe: forward
                return None
            if head is not None and head.kind == "execute" and head.inject:
                head.inject = False
                if mtype == Backend.ROW_DESCRIPTION:
                    self._start_rows(body, head.mask)
                return b""  # our injected Describe: the client did not ask for it
            if mtype == Backend.ROW_DESCRIPTION:
                self._start_rows(body, head.mask if head is not None else None)
            return None
        if mtype == Backend.ERROR_RESPONSE and self._masked:
            while head is not None and head.kind == "describe":
                pending.popleft()
                head = pending[0] if pending else None
            self._end_rows(head)
        if mtype == Backend.READY_FOR_QUERY:
            self._tx_status = chr(body[0]) if body else "I"
            while pending:
                p = pending.popleft()
                if p.kind == "query":
                    self._complete(p, events)
                    break
                if p.kind == "sync":
                    break
                # an Execute the server skipped after an error in its pipeline: never ran
            self._syncs_done += 1
            if self._refusals:
                done = self._syncs_done
                for marker in [m for m, (seq, _) in self._refusals.items() if seq < done]:
                    del self._refusals[marker]
            return None
        if mtype == Backend.PARAMETER_STATUS:
            if body.startswith(b"client_encoding\0"):
                value = bytes(body[16:]).rstrip(b"\0").decode("ascii", "replace")
                self._decode_sql = decoder_for(value)
            return None
        if mtype == Backend.COMMAND_COMPLETE:
            tag = bytes(body[:-1]).decode("utf-8", "replace")
            if self._rows is not None or self._row_counts is not None:
                self._end_rows(head)
            if head is not None and head.kind != "sync":
                head.tags.append(tag)
                rows = codec.command_rows(tag)
                if rows is not None:
                    head.rows = (head.rows or 0) + rows
                if head.kind == "execute":
                    pending.popleft()
                    self._complete(head, events)
            return None
        if mtype == Backend.ERROR_RESPONSE:
            replacement = None
            if self._refusals and _MARKER_BYTES in body:
                fields = codec.error_fields(bytes(body))
                text = fields.get("M", "")
                for marker, (_, error) in self._refusals.items():
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
                    self._complete(head, events)
            return replacement
        if mtype == Backend.EMPTY_QUERY_RESPONSE or mtype == Backend.PORTAL_SUSPENDED:
            if self._rows is not None or self._row_counts is not None:
                self._end_rows(head)
            if head is not None and head.kind == "execute":
                if mtype == Backend.PORTAL_SUSPENDED:
                    head.tags.append("(suspended)")
                pending.popleft()
                self._complete(head, events)
            return None
        return None

    async def _upstream_loop(self) -> None:
        """Relays until the upstream connection is lost (UpstreamLost)."""
        assert self.up is not None
        client = Pipe(self.client)
        up = Pipe(self.up.stream)
        add = self.audit.add
        buf = bytearray(self.up.leftover)
        skip = 0  # bytes of a streamed message body still to pass through
        need_data = not buf
        while True:
            if need_data:
                try:
                    data = await up.receive()
                except _IO_ERRORS as exc:
                    raise UpstreamLost(str(exc)) from exc
                if not data:
                    raise UpstreamLost("the upstream closed the connection")
                buf += data
            need_data = True
            n = len(buf)
            pos = 0
            events: list[StatementCompleted] = []
            parts: list[bytes] | None = None
            seg = 0
            data: bytes | None = None
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
                if mtype == 0x44 and self._rows is not None:  # DataRows of a masked result
                    if end > n:
                        break
                    if data is None:
                        data = bytes(buf)  # once per chunk: rows are sliced from it
                    try:
                        out_rows, after = self._rows.mask_rows(data, pos, n)
                    except ValueError as exc:  # never forward what could not be masked
                        raise ProtocolViolation(f"upstream sent a DataRow that cannot be masked: {exc}") from exc
                    if parts is None:
                        parts = []
                    parts.append(data[seg:pos])
                    parts.extend(out_rows)
                    seg = pos = after
                    continue
                if self._watch[mtype]:
                    if end > n:
                        break
                    replacement = self._on_backend(mtype, buf[pos + 5 : end], events)
                    if replacement is not None:
                        if parts is None:
                            parts = []
                        parts.append(bytes(buf[seg:pos]))
                        parts.append(replacement)
                        seg = end
                    pos = end
                elif end > n:
                    if mtype in _STREAMED or end - pos > 1 << 20:
                        skip = end - n
                        pos = n
                    break
                else:
                    pos = end
            for event in events:
                add(event)
            if pos:
                if parts is None:
                    out = bytes(buf[:pos])
                else:
                    parts.append(bytes(buf[seg:pos]))
                    out = b"".join(parts)
                del buf[:pos]
                # Completions are durable before the client sees them.
                await self.audit.flush()
                self._to_client_partial = True
                try:
                    await client.send(out)
                except _IO_ERRORS as exc:
                    raise ClientLost(str(exc)) from exc
                # A streamed message (DataRow, CopyData) may continue in the next chunk.
                self._to_client_partial = skip > 0
