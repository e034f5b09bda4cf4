"""One client connection through the gateway: the trio driver of a PostgreSQL session.

It owns the sockets, TLS, timeouts and the calls that wait (the pipeline, the audit flushes);
what happens to the bytes once the session relays is the sans-IO relay state of `relay.py`, and
what the client is told when something fails is `errors.reply` (one mapping, `_fail`).

Startup (`_startup`): the first bytes decide between direct TLS (PostgreSQL 17 `sslnegotiation=
direct`: a TLS ClientHello straight away) and the classic untyped packets: SSLRequest (TLS when
the listener has a certificate, `N` otherwise), GSSENCRequest (always `N`), CancelRequest (looked
up in the listener's `SessionRegistry`: `cancel_backend`) and the StartupMessage. A client asking
for protocol 3.x (x > 0) or sending `_pq_.` options gets NegotiateProtocolVersion for 3.0.
The StartupMessage's settings (`options` and the other keys) are read as the server reads them
and held to an allow-list (`startup.py`): role, session_authorization, any `sqlward.*` setting
(but `sqlward.reason`), every switch other than -c / -- and anything else off the list is refused
with a FATAL naming it (42501; malformed options 42601); what is forwarded is re-emitted
canonically, followed by the gateway's own `-c sqlward.identity=...` and application_name.
Authentication (`_authenticate`): the login throttle is asked first (`Gatekeeper.login_gate`);
a client certificate verified by the listener's CA (mutual TLS) that names the startup user is
the credential; a static identity proves its secret with SCRAM-SHA-256 (a name the gatekeeper
gives a decoy verifier fails the same exchange exactly as a wrong secret: 28P01); any other user
name presents an OIDC token as a cleartext password, only over TLS (or plain TCP from loopback
when the listener allows it); on plain TCP such a user is refused with a clear FATAL whose advice
is true for the listener (sslmode=require only where TLS is offered), so a token never travels
in clear. Every judged failure is `login_failed`, a success `login_succeeded`. Before
authentication a message may be as large as a login needs, not `max_message_size`: SASL
messages `SASL_MESSAGE_MAX`, a token `TOKEN_MESSAGE_MAX` (the startup packet: 10,000 bytes, as
the server). The stated session reason comes from `options` (`-c sqlward.reason=...`),
`application_name` (`reason=...`) or a leading `/* sqlward:reason=... */` comment. The database
name picks the target, the access rules must let the identity reach it;
`connection.authenticated` is written (durably) before the upstream session is opened with the
gateway's own credentials, showing the identity as application_name `sqlward:<subject>[ via
<actor>]` and the setting `sqlward.identity`; its ParameterStatus values are relayed with the
gateway's own BackendKeyData. A refusal at any step is `errors.Refused`: recorded as
`connection.refused`, answered with a FATAL. Every `connection.opened` ends in
`connection.closed` (an authenticated session) or `connection.refused` (whatever ended it before
authentication: a refusal, a TLS failure, a malformed packet, a client that left, a
CancelRequest, the timeout).

Relay (`_relay`): two tasks (and a third that closes the session when its token expires, with
`on_token_expiry = "close"`, and a fourth once the gateway drains: it closes the session with
FATAL 57P01 when both loops are parked on their sockets and nothing is in flight, or at the
drain's deadline; see adapters/drain.py).

- Client task: each chunk received is fed to `relay.ClientSide`; every request it asks about
  (Query, Parse, a Bind of a statement decided under an older policy, Execute, FunctionCall) is
  judged by the pipeline with `durable=True`: its record (`statement.decided`, or
  `statement.executed` for the run of a prepared statement) is on disk before anything of the
  chunk goes upstream. A record that cannot be written refuses that request (ERROR 58030 "audit
  unavailable: statement not run", in place of the server's answer as any refusal, so the
  protocol stays in sync) and the session goes on.
- Upstream task: each chunk received is fed to `relay.UpstreamSide`; its `statement.completed`
  events are added and flushed in one write before the chunk's output is sent to the client.
  When the session ends with requests still unanswered (the upstream died under them), they are
  completed with the error (`UpstreamSide.abandon`).

Audit failure of a completion (a result that cannot be recorded is never delivered): FATAL 58000
"the audit trail cannot be written; sqlward closed the session", and the session ends. Events
about the connection itself, opened / refused / closed, are flushed quietly: a failure is logged.

The server must read SQL text as the gateway does: a session whose ParameterStatus reports a
client_encoding the gateway cannot read or standard_conforming_strings other than on is refused
at startup (FATAL 0A000 naming it); when a later ParameterStatus reports one in session, every
request is refused (ERROR 0A000) but the one statement switching it back (`reading.restores`).
Because a ParameterStatus arrives only after the request that caused it, text sent before the
server answered is refused (ERROR 0A000, "wait for that answer") when it could be misread: any
Query / Parse behind a request that may switch client_encoding (`RelayState.encoding_unsure`),
and a Query / Parse holding a backslash behind any unanswered request.

Once a token expires, statements are refused (`token-expired`), or the session is closed.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable

import msgspec
import trio

from sqlward.adapters.netio import Pipe, PrefixedStream
from sqlward.adapters.base import AuthError, ListenerSettings, SessionRegistry, SessionServices
from sqlward.adapters.drain import GatewayShutdown
from sqlward.adapters.session_common import GovernedSession, SessionEnd, TokenExpired
from sqlward.adapters import identity as ident
from sqlward.adapters.postgres import codec, errors, startup, upstream
from sqlward.adapters.postgres.codec import Frontend
from sqlward.adapters.postgres.errors import ClientLost, ProtocolViolation, Refused, UpstreamLost
from sqlward.adapters.postgres.encodings import problem as encoding_problem
from sqlward.adapters.postgres.reading import restores
from sqlward.adapters.postgres.relay import ClientSide, RelayState, UpstreamSide
from sqlward.adapters.postgres.scram import ScramError, ScramExchange
from sqlward.adapters.postgres.searchpath import PROBE_SQL, PathTracker, from_probe
from sqlward.audit.events import ConnectionAuthenticated, ConnectionClosed, ConnectionOpened, ConnectionRefused
from sqlward.audit.recorder import AuditUnavailable
from sqlward.policy.model import Identity
from sqlward.policy.searchpath import SearchPath

log = logging.getLogger("sqlward.postgres")

_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
_TERMINATE = codec.encode_frontend(codec.Terminate())
AUTH_TIMEOUT = 60.0
# Pre-authentication bounds: what a login needs, not the listener's max_message_size. The
# startup packet is capped by `codec.MAX_STARTUP_PACKET` (10,000 bytes, as the server), SSLRequest
# / GSSENCRequest / CancelRequest have fixed sizes, SASL messages (SCRAM) are a few hundred bytes,
# a cleartext password carries an OIDC access token.
SASL_MESSAGE_MAX = 16 << 10
TOKEN_MESSAGE_MAX = 256 << 10
_ENCODING_UNSURE = (
    "statement sent before the server answered a request that may change client_encoding: sqlward "
    "cannot tell which encoding the server reads it in; wait for that answer, then send it again"
)
_BACKSLASH_UNSURE = (
    "statement with a backslash sent before the server answered the previous request: sqlward "
    "cannot tell how the server reads it (standard_conforming_strings may have changed); wait for "
    "that answer, then send it again"
)
PROBE_TIMEOUT = 30.0  # the server's answer to the gateway's own search_path query


class _TokenNeedsTLS(Exception):
    """A non-static user on plain TCP: a token must not travel in clear."""


async def cancel_backend(registry: SessionRegistry[PostgresSession], pid: int, secret: bytes) -> None:
    """A client's CancelRequest: cancel the query of the session the gateway gave backend pid
    `pid`, if `secret` is that session's (compared in constant time), with the upstream's own
    key, which the client never sees. A wrong pid or secret cancels nothing, silently, as
    PostgreSQL does."""
    session = registry.get(pid)
    if session is None or not hmac.compare_digest(session.secret, secret):
        log.info("cancel request for unknown backend %d ignored", pid)
        return
    if session.ctx.withdraw_hold():  # a statement held for approval: the request is withdrawn
        return
    up = session.up
    target = session.target
    if up is None or target is None:
        return
    await upstream.send_cancel(target, up.pid, up.secret)


# What a client may send while its statement is held for approval (kept for after the verdict).
HELD_INPUT_LIMIT = 1 << 20
# Seconds between looks at a draining session's state (only while the gateway shuts down).
DRAIN_POLL = 0.02
# How long a session closed by the drain keeps reading (and dropping) what its client sends
# after the FATAL, so that the FATAL is not lost to a reset.
LINGER_SECONDS = 0.5


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
        self._startup_settings = startup.StartupSettings()
        self._startup_rest = b""
        self._closing_reason = ""
        self._user = ""  # the startup user name, once read
        self._end_recorded = False  # connection.refused (or .closed) written
        self._relaying = False  # ReadyForQuery sent: the relay runs
        self._to_client_partial = False  # the client has part of a backend message
        self._sql_comment = b""
        # The relay state (sans-IO), built once the upstream session is open.
        self._state: RelayState | None = None
        self._upstream_side: UpstreamSide | None = None
        self._probe_done: trio.Event | None = None  # set when the search_path answer is in
        # What the client sent while a statement was held for approval (read to notice a
        # disconnect; relayed once the hold is over). Bounded: reading stops at the limit.
        self._held_input = bytearray()
        # Set while a hold's NoticeResponse is being sent (nothing else is sent to the client).
        self._notice_sent: trio.Event | None = None
        # Each relay loop parked on its socket with nothing of its own in hand (with an idle
        # relay state: nothing in flight, the session may be closed for a drain).
        self._client_waiting = False
        self._upstream_waiting = False

    # ----------------------------------------------------------------------------------------
    # helpers

    def _wire_state(self) -> errors.WireState:
        """Where the client's byte stream is (what `errors.reply` may put on it)."""
        if not self._relaying:
            return "startup"
        if self._to_client_partial or (self._upstream_side is not None and self._upstream_side.mid_message):
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
            await self._record_end(ConnectionRefused(user=exc.user, target=exc.target, reason=exc.audit_reason))
        elif isinstance(exc, ProtocolViolation) and self.identity is None:
            await self._record_end(ConnectionRefused(user=self._user, reason=f"protocol violation: {exc}"))
        if reply.reason and (reply.replaces_reason or not self._closing_reason):
            self._closing_reason = reply.reason
        if scope is not None:
            scope.cancel()
        if reply.data:
            await self._send_last_words(reply.data, linger=isinstance(exc, GatewayShutdown))

    async def _record_end(self, event: ConnectionRefused | ConnectionClosed) -> None:
        """The record that ends the connection's story (refused, or closed); written quietly."""
        self._end_recorded = True
        with trio.CancelScope(shield=True):
            await self._record_quietly(event)

    async def _send_last_words(self, data: bytes, *, linger: bool = False) -> None:
        """Best-effort FATAL to the client; shielded (it is sent while the session is being torn
        down) but bounded, so a client that stopped reading cannot hold the session open.

        `linger` (the drain's 57P01): half-close, then read and drop what the client still
        sends for up to LINGER_SECONDS, so a query crossing the close on the wire does not make
        the kernel answer with a reset that discards the FATAL before the client reads it."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                try:
                    await self.client.send_all(data)
                except (*_IO_ERRORS, trio.BusyResourceError, OSError):
                    return
            if linger and isinstance(self.client, trio.SocketStream):
                with trio.move_on_after(LINGER_SECONDS):
                    try:
                        await trio.sleep(0)  # the relay's cancelled tasks let go of the stream first
                        await self.client.send_eof()
                        while await self.client.receive_some(65536):
                            pass
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
                    errors.CONNECTION_FAILURE, "authentication timed out", user=self._user,
                    closing_reason="authentication timeout",
                )
            if ok:
                self._relaying = True
                await self._relay()
        except Exception as exc:
            await self._fail(exc)
        finally:
            if not self._closing_reason and trio.current_effective_deadline() == float("-inf"):
                self._closing_reason = "gateway shutting down"  # cancelled from outside
            # Shielded: under the gateway's shutdown every checkpoint here would raise Cancelled
            # (each step is bounded: forced closes, a 1 s TLS close, synchronous audit writes).
            with trio.CancelScope(shield=True):
                if self.pid:
                    self.registry.remove(self.pid, self)
                if self.up is not None:
                    await trio.aclose_forcefully(self.up.stream)
                await self._close_client()
                await self._complete_abandoned()
                # Every connection.opened is followed by connection.closed (an authenticated
                # session) or connection.refused (it ended before authentication, whatever ended
                # it: a refusal of ours, a TLS failure, a malformed packet, a client that left, a
                # CancelRequest, the gateway's shutdown), as on MySQL.
                if self.identity is not None:
                    await self._record_end(
                        ConnectionClosed(
                            duration_ms=round((time.perf_counter() - opened) * 1000, 3),
                            requests=self.ctx.requests, reason=self._closing_reason,
                        )
                    )
                elif not self._end_recorded:
                    await self._record_end(ConnectionRefused(
                        user=self._user, reason=self._closing_reason or "connection ended before authentication",
                    ))

    async def _complete_abandoned(self) -> None:
        """Requests forwarded whose answer never came (the upstream died under them, or the
        session ends otherwise) get their statement.completed, with the error."""
        side = self._upstream_side
        if side is None or self._state is None or not self._state.pending:
            return
        reason = self._closing_reason or "session ended"
        events = side.abandon(f"no answer from the upstream: {reason}", errors.CONNECTION_FAILURE)
        for event in events:
            self.audit.add(event)
        if events:
            with trio.CancelScope(shield=True):
                await self.audit.flush_quietly()

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
                self._closing_reason = "cancel request"
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
            self._closing_reason = f"TLS handshake failed: {exc.__cause__ or exc}"
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
        user = self._user = params.get("user", "")
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
        dbname = params.get("database") or self.settings.default_target or user
        if dbname == user and self.settings.default_target and self.gk.resolve_target(user, "postgres") is None:
            # libpq (psql, psycopg, ...) sends the user name as the database when none is given:
            # a name that is no target lands on the listener's default target.
            dbname = self.settings.default_target
        try:
            self._startup_settings = startup.read_startup(msg.params)
        except startup.StartupRefused as exc:
            raise Refused(errors.INSUFFICIENT_PRIVILEGE, str(exc), user=user) from None
        except startup.StartupSyntaxError as exc:
            raise Refused(errors.SYNTAX_ERROR, f"invalid startup options: {exc}", user=user) from None
        self.application_name = self._startup_settings.application_name

        identity = await self._authenticate(user)
        reason = self._startup_settings.reason or ident.reason_from_application_name(self.application_name)
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
        self._authenticated()
        forward = self._upstream_identity_params(identity)
        try:
            self.up = await upstream.connect(target, forward)
        except upstream.UpstreamError as exc:
            raise Refused(exc.sqlstate, str(exc), user=user, target=target.info.name) from exc
        if self.gk.identity_settings().sql_comment:
            self._sql_comment = ident.sql_comment(identity).encode()
        encoding = "UTF8"
        for name, value in self.up.parameters:
            if name == "client_encoding":
                encoding = value
                bad = encoding_problem(value)
                if bad is not None:
                    raise Refused(errors.FEATURE_NOT_SUPPORTED, bad, user=user, target=target.info.name)
            elif name == "standard_conforming_strings" and value != "on":
                raise Refused(
                    errors.FEATURE_NOT_SUPPORTED,
                    f"the server would read SQL text with standard_conforming_strings = {value} (a role, "
                    "database or server default): sqlward reads SQL only with standard_conforming_strings "
                    "= on, so it refuses this session; remove that default",
                    user=user, target=target.info.name,
                )
        pipeline = self.pipeline
        self._state = RelayState(
            policy_version=lambda: pipeline.policy_version, client_encoding=encoding, tx_status=self.up.tx_status,
            path=PathTracker(await self._initial_search_path()),
        )
        self._state.redact_errors = target.redact_text
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

    async def _initial_search_path(self) -> SearchPath | None:
        """The session's search_path as the server set it up (role and database defaults,
        startup options, "$user"): asked on the session's own connection before the client
        is told it is ready. None when it cannot be read (the relay asks again)."""
        assert self.up is not None
        try:
            with trio.move_on_after(PROBE_TIMEOUT):
                row = await upstream.query_row(self.up, PROBE_SQL)
                if row is not None and len(row) == 3:
                    return from_probe(row[0], row[1], row[2])
        except upstream.UpstreamError as exc:
            log.warning("session %s: search_path not readable at start: %s", self.connection_id, exc)
        return None

    async def _probe_search_path(self, up: Pipe) -> None:
        """Ask the server for the session's search_path (it may have changed) while the relay
        is idle; the upstream task swallows the answer and wakes us."""
        assert self._state is not None
        event = self._probe_done = trio.Event()
        try:
            await up.send(self._state.start_probe())
        except _IO_ERRORS as exc:
            raise UpstreamLost(str(exc)) from exc
        with trio.move_on_after(PROBE_TIMEOUT):
            await event.wait()
            return
        raise UpstreamLost("the upstream did not answer the gateway's search_path query")

    def _upstream_identity_params(self, identity: Identity) -> list[tuple[str, str]]:
        """The client's forwarded settings (`startup.upstream_params`: canonical, escaped) and
        the person (and agent) shown to the database: application_name and the custom setting
        sqlward.identity, last, both visible in pg_stat_activity / current_setting()."""
        settings = self.gk.identity_settings()
        label = ident.upstream_label(identity)
        shown: str | None = None
        if settings.upstream_application_name:
            shown = (f"{label} {self.application_name}" if self.application_name else label)[:63]
        return startup.upstream_params(
            self._startup_settings, application_name=shown,
            identity_label=label if settings.upstream_setting else None,
        )

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

    def _client_host(self) -> str:
        """The client's address without the port (the login throttle's key)."""
        return self.client_addr.rsplit(":", 1)[0].strip("[]")

    async def _authenticate(self, user: str) -> Identity:
        """Mutual TLS, SCRAM-SHA-256 for static identities (and for the names the gatekeeper gives
        a decoy verifier: they fail exactly as a wrong password), or a token as a cleartext
        password over TLS. The login throttle is asked first (`login_gate`); every judged failure
        is counted (`login_failed`), a success clears it (`login_succeeded`). Messages are capped
        at what a login needs (SASL_MESSAGE_MAX, TOKEN_MESSAGE_MAX)."""
        framer = codec.Framer(max_size=SASL_MESSAGE_MAX)
        framer.feed(self._startup_rest)
        self._startup_rest = b""
        host = self._client_host()
        try:
            await self.gk.login_gate(host, user)
        except AuthError as exc:
            raise Refused(
                errors.INVALID_AUTHORIZATION_SPECIFICATION, str(exc), user=user,
                audit_reason=f"login throttled: {exc}",
            ) from None
        secret = self.gk.scram_secret(user)
        tls_offered = self.settings.ssl_context is not None
        loopback_plain = self.settings.allow_plaintext_tokens and ident.is_loopback(host)
        try:
            cert_identity = self._certificate_identity()
            if cert_identity is not None and ident.same_name(cert_identity.subject, user):
                identity = cert_identity  # mutual TLS: the verified certificate is the credential
            elif secret is None and (self.tls or loopback_plain):
                await self.client.send_all(codec.encode_backend(codec.AuthenticationCleartextPassword()))
                framer.max_size = TOKEN_MESSAGE_MAX
                body = await self._read_auth_message(framer)
                framer.max_size = SASL_MESSAGE_MAX
                token = codec.PasswordMessage(body).password
                identity = await self.gk.authenticate_token(
                    user, token, tls=self.tls, loopback=loopback_plain, tls_offered=tls_offered,
                )
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
                identity = self.gk.identity_for_scram(user)
                await self.client.send_all(
                    codec.encode_backend(codec.AuthenticationSASLFinal(server_final.encode()))
                )
        except _TokenNeedsTLS:
            # The advice is true for this listener: TLS is named only where it is offered.
            advice = (
                "(connect with sslmode=require)" if tls_offered
                else "(this listener has no TLS: connect to a listener that offers TLS)"
            )
            raise Refused(
                errors.INVALID_AUTHORIZATION_SPECIFICATION,
                f'"{user}" is not a static identity: sqlward accepts tokens only over TLS {advice}',
                user=user,
            ) from None
        except (AuthError, ScramError, UnicodeDecodeError) as exc:
            self.gk.login_failed(host, user)
            raise Refused(
                errors.INVALID_PASSWORD, f'password authentication failed for user "{user}"',
                detail=str(exc) if isinstance(exc, AuthError) and secret is None else "",
                user=user, audit_reason=f"authentication failed: {exc}",
            ) from exc
        self.gk.login_succeeded(host, user)
        await self.client.send_all(codec.encode_backend(codec.AuthenticationOk()))
        self._startup_rest = framer.take_rest()
        return identity

    # ----------------------------------------------------------------------------------------
    # relay

    async def _relay(self) -> None:
        self.ctx.notice = self._hold_notice
        self.ctx.client_gone = self._hold_watch
        unsubscribe: Callable[[], None] | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._client_task, nursery.cancel_scope)
                nursery.start_soon(self._upstream_task, nursery.cancel_scope)
                deadline = self._closes_at_expiry()
                if deadline is not None:
                    nursery.start_soon(self._expiry_task, deadline, nursery.cancel_scope)

                def drain_starts() -> None:
                    try:
                        nursery.start_soon(self._drain_task, nursery.cancel_scope)
                    except RuntimeError:  # the relay has ended already (its nursery is closed)
                        pass

                unsubscribe = self.drain.subscribe(drain_starts)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    async def _drain_task(self, cancel_scope: trio.CancelScope) -> None:
        """The gateway drains (adapters/drain.py): close the session once nothing is in flight
        (both loops parked on their sockets, no request waiting for its answer, no message half
        sent), or at the drain's deadline whatever it does, with FATAL 57P01."""
        state = self._state
        assert state is not None
        with trio.move_on_at(self.drain.deadline):
            while not (self._client_waiting and self._upstream_waiting and state.idle and not self._to_client_partial):
                await trio.sleep(DRAIN_POLL)
        await self._fail(GatewayShutdown(), cancel_scope)

    async def _hold_notice(self, text: str) -> None:
        """Tell the client at once that its statement is held (a NoticeResponse, legal at any
        time between messages): sent once everything asked earlier has been answered, so it
        never lands inside a backend message."""
        while self._to_client_partial or (self._upstream_side is not None and self._upstream_side.mid_message):
            await trio.sleep(0.01)
        done = self._notice_sent = trio.Event()  # the upstream loop waits for it before it sends
        try:
            await Pipe(self.client).send(errors.notice_response(text))
        finally:
            self._notice_sent = None
            done.set()

    async def _hold_watch(self) -> str:
        """Returns when the client disconnects during a hold, or has sent more than
        HELD_INPUT_LIMIT meanwhile; what it sends is kept for the relay."""
        client = Pipe(self.client)
        while len(self._held_input) < HELD_INPUT_LIMIT:
            try:
                data = await client.receive()
            except _IO_ERRORS:
                return "the client disconnected"
            if not data:
                return "the client disconnected"
            self._held_input += data
        # More than the gateway keeps for a held statement: the request is withdrawn (as for a
        # disconnect, which could not be noticed any more without reading on).
        return f"the client sent more than {HELD_INPUT_LIMIT >> 20} MiB while the statement was held"

    async def _expiry_task(self, deadline: float, cancel_scope: trio.CancelScope) -> None:
        """Closes an idle session too when its token expires (on_token_expiry = "close")."""
        await trio.sleep_until(deadline)
        await self._fail(TokenExpired(), cancel_scope)

    async def _client_task(self, cancel_scope: trio.CancelScope) -> None:
        try:
            await self._client_loop()
            self._closing_reason = self._closing_reason or "client terminated"
        except Exception as exc:
            await self._fail(exc, cancel_scope)
        cancel_scope.cancel()

    async def _client_loop(self) -> None:
        """Client to upstream: one audit flush and one write per received chunk."""
        assert self.up is not None and self._state is not None
        client = Pipe(self.client)
        up = Pipe(self.up.stream)
        state = self._state
        side = ClientSide(state, max_message_size=self.settings.max_message_size, sql_comment=self._sql_comment)
        judge = self._judge
        flush = self.audit.flush
        data = self._startup_rest
        self._startup_rest = b""
        while True:
            if not data:
                self._client_waiting = True
                try:
                    data = await client.receive()
                except _IO_ERRORS as exc:
                    raise ClientLost(str(exc)) from exc
                finally:
                    self._client_waiting = False
                if not data:
                    try:
                        await up.send(_TERMINATE)
                    except _IO_ERRORS:
                        pass
                    return
                if self.drain.started:
                    # Sent after the drain began: not run. The session is closed (57P01) once
                    # what was asked before has been answered, or at the drain's deadline.
                    data = b""
                    continue
            if state.path.wants_probe(state.idle):
                await self._probe_search_path(up)
            request = side.feed(data)
            data = b""
            while request is not None:
                unreadable = state.unreadable
                if unreadable is not None and not restores(request.sql, scs=state.bad_scs is not None):
                    # The server no longer reads SQL text as the gateway does (standard_conforming_
                    # strings off, a client_encoding it cannot read): nothing is judged on a
                    # misreading; only the statement switching back goes through.
                    request = side.fail(errors.error_response(errors.FEATURE_NOT_SUPPORTED, unreadable))
                    continue
                if state.pending and side.asking_text and "\\" in request.sql:
                    # A backslash in text sent behind an unanswered request: were that request
                    # to switch standard_conforming_strings off in a way the text check cannot
                    # see (a function of the database's own), the server would read this text
                    # differently; its ParameterStatus comes too late for it.
                    request = side.fail(errors.error_response(errors.FEATURE_NOT_SUPPORTED, _BACKSLASH_UNSURE))
                    continue
                if state.encoding_unsure and side.asking_text:
                    # Sent behind a request that may switch client_encoding, before the server
                    # answered it: the server may read these bytes in another encoding.
                    request = side.fail(errors.error_response(errors.FEATURE_NOT_SUPPORTED, _ENCODING_UNSURE))
                    continue
                # Each request's record (decision, or run of a prepared statement) is on disk
                # before anything of the chunk goes upstream; one that cannot be written is
                # refused (ERROR 58030) and the session goes on.
                try:
                    verdict = await judge(request, durable=True)
                except AuditUnavailable:
                    request = side.fail(errors.audit_refusal())
                    continue
                request = side.resume(verdict)
            out = side.take_output()
            await flush()  # anything else pending (normally nothing)
            if out:
                try:
                    await up.send(out)
                except _IO_ERRORS as exc:
                    raise UpstreamLost(str(exc)) from exc
            if side.terminated:
                return
            if self._held_input:  # sent while a statement was held for approval
                data = bytes(self._held_input)
                self._held_input.clear()

    async def _upstream_task(self, cancel_scope: trio.CancelScope) -> None:
        try:
            try:
                await self._upstream_loop()
            except ProtocolViolation as exc:  # the upstream broke the protocol: as good as lost
                raise UpstreamLost(f"upstream protocol violation: {exc}") from exc
        except Exception as exc:
            await self._fail(exc, cancel_scope)
        cancel_scope.cancel()

    async def _upstream_loop(self) -> None:
        """Upstream to client: one audit flush and one write per received chunk; runs until
        the upstream connection is lost (UpstreamLost)."""
        assert self.up is not None and self._state is not None
        client = Pipe(self.client)
        up = Pipe(self.up.stream)
        state = self._state
        side = self._upstream_side = UpstreamSide(state)
        add = self.audit.add
        commit = self.audit.commit
        data = self.up.leftover
        while True:
            if not data:
                self._upstream_waiting = True
                try:
                    data = await up.receive()
                except _IO_ERRORS as exc:
                    raise UpstreamLost(str(exc)) from exc
                finally:
                    self._upstream_waiting = False
                if not data:
                    raise UpstreamLost("the upstream closed the connection")
            out, events = side.feed(data)
            data = b""
            if self._probe_done is not None and not state.path.probing:
                self._probe_done.set()
                self._probe_done = None
            approved = self.ctx.approved
            for event in events:
                add(self.ctx.approval_of(event) if approved else event)
            if out or events:
                # Completions are durable before the client sees them.
                await commit()
            if out:
                if self._notice_sent is not None:  # a hold's notice is on its way: not inside it
                    await self._notice_sent.wait()
                self._to_client_partial = True
                try:
                    await client.send(out)
                except _IO_ERRORS as exc:
                    raise ClientLost(str(exc)) from exc
                self._to_client_partial = False
