"""One MySQL / MariaDB client connection through the gateway.

Connection phase (`_handshake`): the gateway greets with its own connection id and nonce, the
server version and the capabilities it learnt from the upstream (so DEPRECATE_EOF, SESSION_TRACK
and multi-results mean the same on both sides and packets can be forwarded untouched), and
caching_sha2_password as the default plugin. An SSLRequest upgrades to TLS. Static identities
prove their secret with caching_sha2_password (fast path once the identity has logged in since
the gateway started, full path before that: the password in clear over TLS or RSA-encrypted on
plain TCP, as MySQL's own cache behaves) or mysql_native_password; other user names may only
present a cleartext password (mysql_clear_password), and only over TLS: the seam for tokens.
The handshake's schema names the target; the upstream session is opened with the gateway's own
credentials, then the client gets its OK.

Command phase (`_command_loop`): strictly one command, one response. COM_QUERY and
COM_STMT_PREPARE are analysed and decided before anything is forwarded; a refusal is an ERR
packet (1227, SQLSTATE 42000, naming the rule) and the session goes on. Allowed commands are
forwarded as they came; the response is relayed by `response.ResponseScanner`, which finds its
end without decoding rows, and the completion record is written before the last bytes reach the
client. KILL and COM_PROCESS_KILL take the gateway's connection ids and reach only sessions of
the same identity; COM_CHANGE_USER re-authenticates against the gateway's identities and resets
the upstream session instead of being passed on; commands that would bypass SQL policy
(COM_CREATE_DB, COM_DROP_DB, COM_REFRESH, COM_SHUTDOWN, replication) are refused.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from typing import TYPE_CHECKING

import msgspec
import trio

from sqlward.adapters.base import AuditUnavailable, AuthError, Gatekeeper, Target
from sqlward.adapters.session_common import GovernedSession, SessionEnd, TokenExpired, refusal_message
from sqlward.adapters import identity as ident
from sqlward.adapters.mysql import auth, messages, upstream
from sqlward.adapters.mysql.constants import Capability, Command, ServerStatus
from sqlward.adapters.mysql.packets import (
    PacketFramer,
    PacketTooLarge,
    ProtocolViolation,
    encode_packets,
)
from sqlward.adapters.mysql.response import ResponseScanner, Shape
from sqlward.adapters.netio import Pipe, PrefixedStream
from sqlward.adapters.text import printable as _printable
from sqlward.audit.events import (
    ConnectionAuthenticated,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    StatementCompleted,
    StatementDecided,
    Who,
)
from sqlward.adapters.mysql.maskrelay import MaskingRelay, RowState
from sqlward.masking.context import MaskContext
from sqlward.policy.model import Analysis, Decision, Identity

if TYPE_CHECKING:
    from sqlward.adapters.mysql.listener import MysqlListener

log = logging.getLogger("sqlward.mysql")

AUTH_TIMEOUT = 60.0
ER_REFUSED = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR
SQLSTATE_REFUSED = "42000"

_KILL = re.compile(
    r"^\s*KILL\s+(?:(?:HARD|SOFT)\s+)?(?:(CONNECTION|QUERY)\s+)?(?:ID\s+)?(\d+)\s*;?\s*$",
    re.IGNORECASE,
)
_LOCAL_INFILE = re.compile(
    r"\bLOAD\s+(?:DATA|XML)\s+(?:LOW_PRIORITY\s+|CONCURRENT\s+)?LOCAL\b", re.IGNORECASE
)
# Operations that cannot be a LOAD DATA statement (skip the LOCAL INFILE scan for them).
_PLAIN_OPS = frozenset({"select", "insert", "update", "delete", "begin", "commit", "rollback", "show", "use", "set"})
_SET_NAMES = re.compile(r"^\s*SET\s+(?:NAMES|CHARACTER\s+SET|CHARSET)\s+['\"`]?(\w+)", re.IGNORECASE)

_TAMPERING = Decision(
    action="deny", rule_id="identity-tampering",
    message="@sqlward_identity carries the session's identity and cannot be changed",
)

# Character set ids whose bytes are not UTF-8 (MySQL's "latin1" is Windows-1252).
_LATIN1_IDS = frozenset({5, 8, 15, 31, 47, 48, 49, 94})
_BINARY_ID = 63

# Commands that bypass SQL policy or the gateway's control of the session.
_REFUSED_COMMANDS = {
    Command.CREATE_DB: "COM_CREATE_DB", Command.DROP_DB: "COM_DROP_DB",
    Command.REFRESH: "COM_REFRESH", Command.SHUTDOWN: "COM_SHUTDOWN",
    Command.DEBUG: "COM_DEBUG", Command.BINLOG_DUMP: "COM_BINLOG_DUMP",
    Command.TABLE_DUMP: "COM_TABLE_DUMP", Command.REGISTER_SLAVE: "COM_REGISTER_SLAVE",
    Command.BINLOG_DUMP_GTID: "COM_BINLOG_DUMP_GTID", Command.CONNECT_OUT: "COM_CONNECT_OUT",
}


def _python_codec(charset_id: int) -> str:
    if charset_id in _LATIN1_IDS:
        return "cp1252"
    if charset_id == _BINARY_ID:
        return "latin-1"
    return "utf-8"


def _codec_for_name(name: str) -> str:
    name = name.lower()
    if name.startswith("utf8"):
        return "utf-8"
    if name == "latin1":
        return "cp1252"
    if name in ("binary", "ascii"):
        return "latin-1"
    return "utf-8"


class UpstreamLost(Exception):
    pass


class MysqlSession(GovernedSession):
    def __init__(self, listener: "MysqlListener", stream: trio.SocketStream, client_addr: str) -> None:
        self.listener = listener
        self.gk: Gatekeeper = listener.gatekeeper
        self.client: trio.abc.Stream = stream
        self.client_addr = client_addr
        self.connection_id = listener.allocate_id(self)
        self.audit_id = f"my-{self.connection_id}-{id(self) & 0xFFFF:04x}"
        self.tls = False
        self.identity: Identity | None = None
        self.who: Who | None = None
        self.target: Target | None = None
        self.up: upstream.UpstreamConnection | None = None
        self.client_caps = 0
        self.charset = 45
        self.codec = "utf-8"
        self.schema = ""
        self.requests = 0
        self._framer = PacketFramer(max_payload=listener.max_message_size)
        self._seq = 0
        self._ubuf = bytearray()
        # statement id -> (request id of its decision, SQL, policy version it was decided under)
        self._statements: dict[int, tuple[int, str, int]] = {}
        self._closing_reason = ""
        self._cpipe: Pipe | None = None
        self._sql_comment = b""
        self._upipe: Pipe | None = None
        # Masking (identities a [[masks]] rule applies to): the context of the request being
        # decided, per prepared statement, and the row rewriter of each open cursor.
        self._stmt_masks: dict[int, MaskContext | None] = {}
        self._cursor_rows: dict[int, RowState | None] = {}

    # ------------------------------------------------------------------------------------
    # helpers

    def _now(self) -> float:
        return time.time()

    async def _read_packet(self, expected_seq: int | None) -> bytes:
        """One logical client packet (connection phase or command)."""
        while True:
            packet = self._framer.next(expected_seq=expected_seq)
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

    async def _write(self, payload: bytes) -> None:
        data, self._seq = encode_packets(payload, self._seq)
        await self.client.send_all(data)

    async def _send_err(self, errno: int, sqlstate: str | None, message: str) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._write(messages.err_packet(errno, sqlstate, message))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass

    async def _refuse_connection(self, errno: int, sqlstate: str | None, message: str, user: str = "", target: str = "") -> None:
        self._record_quietly(
            ConnectionRefused(
                time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                user=user, target=target, reason=message,
            )
        )
        await self._send_err(errno, sqlstate, message)

    # ------------------------------------------------------------------------------------
    # lifecycle

    async def run(self) -> None:
        opened = time.perf_counter()
        self._record_quietly(
            ConnectionOpened(
                time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                client_addr=self.client_addr, listener=self.listener.name, protocol="mysql",
            )
        )
        try:
            ok = False
            with trio.move_on_after(AUTH_TIMEOUT) as scope:
                ok = await self._handshake()
            if scope.cancelled_caught:
                self._closing_reason = "authentication timeout"
                await self._refuse_connection(1043, "08S01", "authentication timed out")
            elif ok:
                deadline = self._closes_at_expiry()
                with trio.CancelScope(deadline=deadline if deadline is not None else float("inf")) as expiry:
                    await self._command_loop()
                if expiry.cancelled_caught:  # the token expired (on_token_expiry = "close")
                    raise TokenExpired()
        except SessionEnd:
            self._closing_reason = self._closing_reason or "client closed the connection"
        except UpstreamLost:
            self._closing_reason = "upstream connection lost"
            await self._send_err(1158, "08S01", "the upstream database connection was lost; sqlward closed the session")
        except PacketTooLarge as exc:
            self._closing_reason = f"packet too large: {exc}"
            await self._send_err(1153, "08S01", f"packet too large for this sqlward listener: {exc}")
        except ProtocolViolation as exc:
            self._closing_reason = f"protocol violation: {exc}"
            await self._send_err(getattr(exc, "errno", 1158), "08S01", f"protocol violation: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._closing_reason = self._closing_reason or "connection lost"
        except ssl.SSLError as exc:
            self._closing_reason = f"TLS error: {exc}"
        except TokenExpired:
            self._closing_reason = "token expired"
            await self._send_err(1045, "28000", "the session's token expired; sqlward closed the session")
        except AuditUnavailable:
            self._closing_reason = "audit unavailable"
            await self._send_err(1105, "HY000", "the audit trail cannot be written; sqlward closed the session")
        except Exception:
            log.exception("mysql session %s failed", self.connection_id)
            self._closing_reason = "internal error"
            await self._send_err(1105, "HY000", "internal gateway error; the session was closed")
        finally:
            self.listener.release_id(self.connection_id, self)
            if self.up is not None:
                await trio.aclose_forcefully(self.up.stream)
            await self._close_client()
            if self.identity is not None:
                self._record_quietly(
                    ConnectionClosed(
                        time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                        duration_ms=round((time.perf_counter() - opened) * 1000, 3),
                        requests=self.requests, reason=self._closing_reason,
                    )
                )

    # ------------------------------------------------------------------------------------
    # connection phase

    async def _handshake(self) -> bool:
        lst = self.listener
        offered = lst.capabilities
        if lst.ssl_context is not None:
            offered |= Capability.SSL
        nonce = auth.generate_nonce()
        greeting = messages.HandshakeV10(
            server_version=lst.server_version, connection_id=self.connection_id,
            auth_plugin_data=nonce, capabilities=offered, character_set=lst.charset,
            status_flags=int(ServerStatus.AUTOCOMMIT), auth_plugin_name=auth.CACHING_SHA2_PASSWORD,
        )
        self._seq = 0
        await self._write(messages.encode(greeting, offered))
        payload = await self._read_packet(self._seq)
        if messages.is_ssl_request(payload):
            if lst.ssl_context is None:
                raise ProtocolViolation("TLS requested but this listener has no certificate")
            # Clients send their TLS ClientHello right behind the SSLRequest (the server says
            # nothing in between): bytes already read belong to the TLS layer.
            early = self._framer.take_rest()
            raw = PrefixedStream(self.client, early) if early else self.client
            stream = trio.SSLStream(raw, lst.ssl_context, server_side=True)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                raise SessionEnd() from exc
            self.client = stream
            self.tls = True
            payload = await self._read_packet(self._seq)
        response = messages.decode_handshake_response(payload)
        user = response.username
        if lst.tls_required and not self.tls:
            await self._refuse_connection(
                3159, "08004", "this sqlward listener requires TLS: connect with --ssl / ssl-mode=REQUIRED", user=user,
            )
            return False
        self.client_caps = response.capabilities & (offered | Capability.SSL)
        if not self.client_caps & Capability.PROTOCOL_41:
            await self._refuse_connection(1043, "08S01", "sqlward needs a client speaking protocol 4.1", user=user)
            return False
        self.charset = response.character_set or lst.charset
        self.codec = _python_codec(self.charset)

        identity = await self._authenticate(user, response, nonce)
        if identity is None:
            return False
        attrs = dict(response.attributes)
        reason = attrs.get("sqlward.reason") or attrs.get("sqlward_reason") or ""
        if reason and not identity.reason:
            identity = msgspec.structs.replace(identity, reason=reason[: ident.MAX_REASON])
        dbname = response.database or lst.default_target
        target = self.gk.resolve_target(dbname, "mysql") if dbname else None
        if target is None:
            what = f"'{dbname}' is not a target of this sqlward gateway" if dbname else (
                "no target selected: name a sqlward target as the database"
            )
            await self._refuse_connection(1049, "42000", what, user=user, target=dbname)
            return False
        refusal = self.gk.access_refusal(identity, target.info)
        if refusal is not None:
            await self._refuse_connection(1044, "42000", refusal, user=user, target=target.info.name)
            return False
        self._set_identity(identity, target)
        try:
            self.up = await upstream.connect(
                target, capabilities=self.client_caps & ~Capability.SSL
                if target.allow_local_infile else self.client_caps & ~Capability.SSL & ~Capability.LOCAL_FILES,
                charset=self.charset, attributes=self._upstream_attributes(response.attributes, identity),
            )
        except upstream.UpstreamError as exc:
            await self._refuse_connection(exc.errno, exc.sqlstate, str(exc), user=user, target=target.info.name)
            return False
        self.schema = target.database
        self._cpipe = Pipe(self.client)
        self._upipe = Pipe(self.up.stream)
        self._ubuf = bytearray(self.up.leftover)
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
        label = ident.upstream_label(identity, limit=255).replace("\\", "\\\\").replace("'", "''")
        scanner = await self._upstream_command(bytes([Command.QUERY]) + f"SET @sqlward_identity = '{label}'".encode())
        if scanner.error_code is not None:
            raise UpstreamLost()

    async def _reset_connection(self) -> None:
        """COM_RESET_CONNECTION (what pools send): reset upstream, then show the identity
        again (the reset clears user variables) before the client gets its OK."""
        self._statements.clear()
        self._stmt_masks.clear()
        self._cursor_rows.clear()
        scanner = await self._upstream_command(bytes([Command.RESET_CONNECTION]))
        self._seq = 1
        if scanner.error_code is not None:
            await self._write(messages.err_packet(scanner.error_code, scanner.error_sqlstate or None, scanner.error_message))
            return
        assert self.identity is not None
        await self._show_identity_upstream(self.identity)
        await self._write(messages.ok_packet(self.client_caps, status_flags=scanner.status or int(ServerStatus.AUTOCOMMIT)))

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

    def _set_identity(self, identity: Identity, target: Target) -> None:
        self._update_identity(identity)
        self.target = target
        self.gk.record(
            ConnectionAuthenticated(
                time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                who=self.who, target=target.info.name, environment=target.info.environment,
            )
        )

    async def _auth_switch(self, plugin: str, data: bytes) -> bytes:
        await self._write(messages.encode(messages.AuthSwitchRequest(plugin, data), self.client_caps))
        return await self._read_packet(self._seq)

    async def _authenticate(self, user: str, response: messages.HandshakeResponse41 | messages.ComChangeUser, nonce: bytes) -> Identity | None:
        """Run the client's authentication exchange; returns the identity, or None after the
        refusal has been sent."""
        lst = self.listener
        secret = self.gk.mysql_secret(user)
        plugin = response.auth_plugin_name or auth.NATIVE_PASSWORD
        data = response.auth_response
        loopback_plain = lst.allow_plaintext_tokens and ident.is_loopback(self.client_addr.rsplit(":", 1)[0])
        try:
            cert_identity = self._certificate_identity()
            if cert_identity is not None and cert_identity.subject == user:
                return cert_identity  # mutual TLS: the verified certificate is the credential
            if plugin == auth.CLEAR_PASSWORD or secret is None:
                if not (self.tls or loopback_plain):
                    raise AuthError(
                        "mysql_clear_password is only accepted over TLS" if secret is not None else
                        f"'{user}' is not a static identity: sqlward accepts tokens only over TLS "
                        "(mysql_clear_password only accepted over TLS)"
                    )
                if plugin != auth.CLEAR_PASSWORD:
                    data = await self._auth_switch(auth.CLEAR_PASSWORD, b"")
                password = data.rstrip(b"\0").decode("utf-8")
                if secret is not None:
                    return self.gk.authenticate_password(user, password, tls=self.tls)
                return await self.gk.authenticate_token(user, password, tls=self.tls, loopback=loopback_plain)
            if plugin == auth.NATIVE_PASSWORD and secret is not None and data:
                if auth.native_check(secret.native, nonce, data):
                    return self.gk.static_identity(user)
                raise AuthError("wrong password")
            if plugin != auth.CACHING_SHA2_PASSWORD:
                nonce = auth.generate_nonce()
                data = await self._auth_switch(auth.CACHING_SHA2_PASSWORD, nonce + b"\0")
            verifier = auth.Sha2Verifier(secret.sha2) if secret is not None else None
            exchange = auth.Sha2ServerAuth(
                verifier, nonce, secure=self.tls, rsa_private_key=lst.rsa_private_key,
                rsa_public_key=lst.rsa_public_key,
                fast_path=lst.sha2_full_auth == "never"
                or (lst.sha2_full_auth == "first-login" and user in lst.sha2_cache),
            )
            step = exchange.response(data)
            while True:
                if step.more_data is not None:
                    await self._write(b"\x01" + step.more_data)
                if step.done:
                    break
                step = exchange.response(await self._read_packet(self._seq))
            if not step.ok or secret is None:
                raise AuthError("wrong password")
            lst.sha2_cache.add(user)
            return self.gk.static_identity(user)
        except (AuthError, auth.AuthProtocolError, UnicodeDecodeError) as exc:
            self._record_quietly(
                ConnectionRefused(
                    time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                    user=user, reason=f"authentication failed: {exc}",
                )
            )
            if "only accepted over TLS" in str(exc) and secret is not None:
                await self._send_err(1251, "08004", str(exc))
            elif secret is None and isinstance(exc, AuthError) and str(exc):
                await self._send_err(1045, "28000", f"Access denied for user '{user}': {exc}")
            else:
                await self._send_err(
                    1045, "28000", f"Access denied for user '{user}'@'{self.client_addr.rsplit(':', 1)[0]}' (using password: YES)"
                )
            return None

    # ------------------------------------------------------------------------------------
    # command phase

    def _refusal(self, decision: Decision) -> bytes:
        return messages.err_packet(ER_REFUSED, SQLSTATE_REFUSED, refusal_message(decision))

    async def _decide(self, sql: str, statement_name: str | None = None) -> tuple[int, Decision | None, Analysis | None]:
        assert self.identity is not None and self.target is not None and self.who is not None
        self.requests += 1
        rid = self.requests
        info = self.target.info
        analysis: Analysis | None = None
        reason = ident.reason_from_sql(sql)
        if reason and reason != self.identity.reason:
            self._update_identity(msgspec.structs.replace(self.identity, reason=reason))
        try:
            analysis = self.gk.analyse(sql, "mysql")
            decision = (
                self._expiry_refusal()
                or (_TAMPERING if ident.mysql_identity_write(sql) else None)
                or self.gk.decide(analysis, self.identity, info, schema=self.schema, sql=sql)
            )
            decision = await self._finish_decision(decision, analysis, sql, self.schema)
            fingerprint = analysis.fingerprint
            operations = analysis.operations
            tables = analysis.tables
            parse_status = analysis.parse_status
        except TokenExpired:
            raise
        except Exception as exc:  # fail closed
            log.exception("policy evaluation failed")
            decision = Decision(
                action="deny", rule_id="internal-error",
                message=f"sqlward could not evaluate this statement ({type(exc).__name__}); refused",
            )
            fingerprint, operations, tables, parse_status = "", (), (), "error"
        if analysis is not None and "kill" in analysis.operations:
            decision = Decision(
                action="deny", rule_id="kill-form",
                message="KILL must be sent on its own as KILL [CONNECTION | QUERY] <sqlward connection id>",
            )
        if (
            decision.action == "allow"
            and not self.target.allow_local_infile
            and (analysis is None or analysis.parse_status != "ok" or not _PLAIN_OPS.issuperset(analysis.operations))
            and _LOCAL_INFILE.search(sql)
        ):
            decision = Decision(
                action="deny", rule_id="local-infile",
                message=f"LOAD DATA LOCAL INFILE is not allowed on target {info.name!r}",
            )
        try:
            self.gk.record(
                StatementDecided(
                    time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                    request_id=rid, who=self.who, target=info.name, environment=info.environment,
                    sql=_printable(sql), fingerprint=_printable(fingerprint), operations=operations,
                    tables=tables, parse_status=parse_status, action=decision.action,
                    rule_id=decision.rule_id, message=decision.message, statement_name=statement_name,
                    statement_index=decision.statement_index, facts=decision.facts,
                )
            )
        except AuditUnavailable:
            decision = Decision(
                action="deny", rule_id="audit-unavailable",
                message="the audit trail cannot be written; sqlward refuses to run statements",
            )
        if decision.action == "allow":
            return rid, None, analysis
        return rid, decision, analysis

    async def _forward_masked(
        self, payload: bytes, shape: Shape, *, ctx: MaskContext | None, binary: bool,
        rid: int | None = None, ref: int | None = None, audit: bool = True, stmt_id: int | None = None,
    ) -> MaskingRelay:
        """`_forward` for sessions under masking: rows are rewritten (`adapters.mysql.maskrelay`)."""
        assert self._cpipe is not None and self._upipe is not None
        if rid is None and audit:
            self.requests += 1
            rid = self.requests
        started = time.perf_counter()
        await self._upipe_send(payload)
        relay = MaskingRelay(
            ctx, shape=shape, binary=binary, deprecate_eof=bool(self.client_caps & Capability.DEPRECATE_EOF),
            capabilities=self.client_caps,
            rows=self._cursor_rows.get(stmt_id) if shape == Shape.FETCH and stmt_id is not None else None,
        )
        buf = self._ubuf
        upipe, cpipe = self._upipe, self._cpipe
        while True:
            if buf:
                out = relay.feed(buf)
                if relay.done:
                    if audit:
                        event = self._completed(relay.scanner, rid or 0, ref, started)
                        event = msgspec.structs.replace(
                            event, masked=relay.masked,
                            error="(hidden: the statement reads masked columns)" if relay.error_hidden else event.error,
                        )
                        self.gk.record(event)
                    if out:
                        await cpipe.send(out)
                    if stmt_id is not None and shape == Shape.RESULTSET:
                        self._cursor_rows[stmt_id] = relay.cursor_rows
                    return relay
                if out:
                    await cpipe.send(out)
            data = await upipe.receive()
            if not data:
                raise UpstreamLost()
            buf += data

    def _refuse_command(self, name: str, decision: Decision | None = None) -> Decision:
        """Audit (and return) the refusal of a command the gateway refuses without SQL text."""
        assert self.who is not None and self.target is not None
        self.requests += 1
        if decision is None:
            decision = Decision(action="deny", rule_id="command-not-allowed", message=f"{name} is not allowed through sqlward")
        self._record_quietly(
            StatementDecided(
                time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                request_id=self.requests, who=self.who, target=self.target.info.name,
                environment=self.target.info.environment, sql=f"<{name}>", fingerprint="",
                action=decision.action, rule_id=decision.rule_id, message=decision.message,
            )
        )
        return decision

    async def _command_loop(self) -> None:
        while True:
            payload = await self._read_packet(0)
            if not payload:
                raise ProtocolViolation("empty command packet")
            cmd = payload[0]
            if cmd == Command.QUERY:
                await self._query(payload)
            elif cmd == Command.STMT_EXECUTE:
                if len(payload) < 5:
                    raise ProtocolViolation("COM_STMT_EXECUTE is truncated")
                expiry = self._expiry_refusal() if self.identity.expires_at is not None else None  # type: ignore[union-attr]
                if expiry is not None:
                    self._refuse_command("execute of a prepared statement", expiry)
                    self._seq = 1
                    await self._write(self._refusal(expiry))
                    continue
                stmt_id = int.from_bytes(payload[1:5], "little")
                prepared = self._statements.get(stmt_id)
                if prepared is not None and prepared[2] != self.gk.policy_version:
                    # The policy changed since PREPARE: decide the statement again.
                    _, refusal, _ = await self._decide(prepared[1], statement_name=str(stmt_id))
                    if refusal is not None:
                        self._seq = 1
                        await self._write(self._refusal(refusal))
                        continue
                    prepared = self._statements[stmt_id] = (prepared[0], prepared[1], self.gk.policy_version)
                    self._stmt_masks[stmt_id] = self._last_mask
                if self._masked:
                    await self._forward_masked(
                        payload, Shape.RESULTSET, ctx=self._stmt_masks.get(stmt_id), binary=True,
                        ref=prepared[0] if prepared else None, stmt_id=stmt_id,
                    )
                    continue
                await self._forward(payload, Shape.RESULTSET, ref=prepared[0] if prepared else None)
            elif cmd == Command.STMT_PREPARE:
                await self._prepare(payload)
            elif cmd in (Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA):
                if cmd == Command.STMT_CLOSE and len(payload) >= 5:
                    closed = int.from_bytes(payload[1:5], "little")
                    self._statements.pop(closed, None)
                    self._stmt_masks.pop(closed, None)
                    self._cursor_rows.pop(closed, None)
                await self._upipe_send(payload)  # no response
            elif cmd == Command.STMT_FETCH:
                if self._masked and len(payload) >= 5:
                    fetched = int.from_bytes(payload[1:5], "little")
                    if self._cursor_rows.get(fetched) is None and self._stmt_masks.get(fetched) is not None:
                        # No row rewriter was set up when the cursor was opened: fail closed.
                        decision = Decision(
                            action="deny", rule_id="masking-cursor",
                            message="this cursor's rows cannot be masked; fetch without a server-side cursor",
                        )
                        self._refuse_command("fetch from a cursor", decision)
                        self._seq = 1
                        await self._write(self._refusal(decision))
                        continue
                    await self._forward_masked(
                        payload, Shape.FETCH, ctx=self._stmt_masks.get(fetched), binary=True, audit=False,
                        stmt_id=fetched,
                    )
                    continue
                await self._forward(payload, Shape.FETCH, audit=False)
            elif cmd in (Command.PING, Command.STMT_RESET, Command.SET_OPTION):
                await self._forward(payload, Shape.SIMPLE, audit=False)
            elif cmd == Command.INIT_DB:
                scanner = await self._forward(payload, Shape.SIMPLE, audit=False)
                if scanner.error_code is None:
                    self.schema = payload[1:].decode(self.codec, "replace")
            elif cmd == Command.RESET_CONNECTION:
                await self._reset_connection()
            elif cmd == Command.STATISTICS:
                await self._forward(payload, Shape.STRING, audit=False)
            elif cmd == Command.FIELD_LIST:
                await self._field_list(payload)
            elif cmd == Command.PROCESS_INFO:
                await self._forward(payload, Shape.RESULTSET, audit=False)
            elif cmd == Command.QUIT:
                self._closing_reason = "client quit"
                try:
                    await self._upipe_send(payload)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                return
            elif cmd == Command.PROCESS_KILL:
                if len(payload) < 5:
                    raise ProtocolViolation("COM_PROCESS_KILL is truncated")
                await self._kill(int.from_bytes(payload[1:5], "little"), query_only=False)
            elif cmd == Command.CHANGE_USER:
                if not await self._change_user(payload):
                    return
            elif cmd in _REFUSED_COMMANDS:
                decision = self._refuse_command(_REFUSED_COMMANDS[Command(cmd)])
                self._seq = 1
                await self._write(self._refusal(decision))
            else:
                self._refuse_command(f"command 0x{cmd:02x}")
                self._seq = 1
                await self._write(messages.err_packet(1047, "08S01", f"unknown or unsupported command 0x{cmd:02x}"))

    async def _upipe_send(self, payload: bytes) -> None:
        assert self._upipe is not None
        data, _ = encode_packets(payload, 0)
        await self._upipe.send(data)

    async def _query(self, payload: bytes) -> None:
        sql = payload[1:].decode(self.codec, "surrogateescape")
        # The one KILL form the gateway maps to its own connection ids (any other KILL is
        # refused by _decide, whose analysis sees it wherever it hides).
        m = _KILL.match(sql) if ("KILL" in sql or "kill" in sql or "Kill" in sql) else None
        if m is not None:
            await self._kill(int(m.group(2)), query_only=(m.group(1) or "").upper() == "QUERY")
            return
        rid, refusal, analysis = await self._decide(sql)
        if refusal is not None:
            self._seq = 1
            await self._write(self._refusal(refusal))
            return
        if self._sql_comment:  # sqlcommenter-style: who, for the server's logs
            payload = payload[:1] + self._sql_comment + payload[1:]
        if self._masked:
            scanner = (await self._forward_masked(payload, Shape.RESULTSET, ctx=self._last_mask, binary=False, rid=rid)).scanner
        else:
            scanner = await self._forward(payload, Shape.RESULTSET, rid=rid)
        if scanner.error_code is None and analysis is not None:
            if "use" in analysis.operations:
                for st in analysis.statements:
                    if st.operation == "use" and st.detail:
                        self.schema = st.detail
            if "set" in analysis.operations:
                m = _SET_NAMES.match(sql)
                if m:
                    self.codec = _codec_for_name(m.group(1))

    async def _field_list(self, payload: bytes) -> None:
        """COM_FIELD_LIST reads a table's columns: decided as the SELECT it amounts to."""
        table = payload[1:].split(b"\0", 1)[0].decode(self.codec, "surrogateescape")
        quoted = "`" + table.replace("`", "``") + "`"
        _, refusal, _ = await self._decide(f"SELECT * FROM {quoted} LIMIT 0", statement_name=None)
        if refusal is not None:
            self._seq = 1
            await self._write(self._refusal(refusal))
            return
        await self._forward(payload, Shape.FIELD_LIST, audit=False)

    async def _prepare(self, payload: bytes) -> None:
        sql = payload[1:].decode(self.codec, "surrogateescape")
        version = self.gk.policy_version
        rid, refusal, _ = await self._decide(sql, statement_name="")
        if refusal is not None:
            self._seq = 1
            await self._write(self._refusal(refusal))
            return
        mask = self._last_mask
        scanner = await self._forward(payload, Shape.PREPARE, audit=False)
        if scanner.statement_id is not None and scanner.error_code is None:
            self._statements[scanner.statement_id] = (rid, sql, version)
            self._stmt_masks[scanner.statement_id] = mask

    async def _forward(
        self, payload: bytes, shape: Shape, *, rid: int | None = None, ref: int | None = None, audit: bool = True,
    ) -> ResponseScanner:
        """Send one command upstream and relay its response to the client."""
        assert self._cpipe is not None and self._upipe is not None
        if rid is None and audit:
            self.requests += 1
            rid = self.requests
        started = time.perf_counter()
        await self._upipe_send(payload)
        scanner = ResponseScanner(shape, deprecate_eof=bool(self.client_caps & Capability.DEPRECATE_EOF))
        buf = self._ubuf
        upipe, cpipe = self._upipe, self._cpipe
        while True:
            if buf:
                n = scanner.scan(buf)
                if scanner.done or scanner.wants_infile:
                    if scanner.done and audit:
                        self.gk.record(self._completed(scanner, rid or 0, ref, started))
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
            data = await upipe.receive()
            if not data:
                raise UpstreamLost()
            buf += data

    def _completed(self, scanner: ResponseScanner, rid: int, ref: int | None, started: float) -> StatementCompleted:
        failed = scanner.error_code is not None
        if failed:
            tags: tuple[str, ...] = ("ERROR",)
        elif scanner.column_count:
            tags = (f"ROWS {scanner.rows}",)
        else:
            tags = (f"OK {scanner.affected_rows or 0}",)
        return StatementCompleted(
            time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
            request_id=rid, prepared_ref=ref, tags=tags,
            rows=scanner.rows if scanner.column_count else scanner.affected_rows,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            error=scanner.error_message if failed else None,
            sqlstate=(scanner.error_sqlstate or None) if failed else None,
        )

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

    async def _kill(self, gateway_id: int, *, query_only: bool) -> None:
        """KILL takes the gateway's connection ids and reaches only the caller's own sessions."""
        assert self.identity is not None
        self.requests += 1
        other = self.listener.session(gateway_id)
        self._seq = 1
        if other is None or other.identity is None:
            await self._write(messages.err_packet(1094, "HY000", f"Unknown thread id: {gateway_id}"))
            return
        if other.identity.subject != self.identity.subject:
            await self._write(messages.err_packet(1095, "HY000", f"You are not owner of thread {gateway_id}"))
            return
        if other.up is None or other.target is None:
            await self._write(messages.err_packet(1094, "HY000", f"Unknown thread id: {gateway_id}"))
            return
        thread_id = other.up.greeting.connection_id
        verb = "KILL QUERY" if query_only else "KILL CONNECTION"
        self._record_quietly(
            StatementDecided(
                time=self._now(), gateway=self.gk.gateway_name, connection_id=self.audit_id,
                request_id=self.requests, who=self.who, target=other.target.info.name,  # type: ignore[arg-type]
                environment=other.target.info.environment, sql=f"{verb} {gateway_id}",
                fingerprint=f"{verb} ?", operations=("kill",), action="allow", rule_id="own-session",
            )
        )
        if other is self and not query_only:
            self._closing_reason = "killed itself"
            await self._write(messages.ok_packet(self.client_caps))
            raise SessionEnd()
        try:
            helper = await upstream.connect(other.target, capabilities=Capability.PROTOCOL_41, charset=45)
        except upstream.UpstreamError as exc:
            await self._write(messages.err_packet(exc.errno, exc.sqlstate, str(exc)))
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
            await self._write(messages.err_packet(getattr(err, "errno", 1094), None, getattr(err, "message", "KILL failed")))
            return
        await self._write(messages.ok_packet(self.client_caps))

    async def _change_user(self, payload: bytes) -> bool:
        """Re-authenticate against the gateway's identities; never passed upstream as is.
        Returns False when the session must end."""
        assert self._upipe is not None and self.target is not None
        request = messages.decode_command(payload, self.client_caps)
        assert isinstance(request, messages.ComChangeUser)
        self._seq = 1
        # Switching identity is decided like a statement ("CHANGE USER": the identity-escalation
        # guardrail, rules on operation "change user"); a refusal ends the session.
        _, refusal, _ = await self._decide("CHANGE USER", statement_name=None)
        if refusal is not None:
            await self._write(self._refusal(refusal))
            self._closing_reason = "change user refused by policy"
            return False
        # MySQL scrambles COM_CHANGE_USER with the connection's greeting nonce; we do not keep
        # it, so the exchange continues with an AuthSwitchRequest and a fresh nonce.
        switch = messages.ComChangeUser(
            user=request.user, auth_response=b"", schema=request.schema,
            character_set=request.character_set, auth_plugin_name="sqlward-switch",
        )
        identity = await self._authenticate(request.user, switch, b"")
        if identity is None:
            self._closing_reason = "change user refused"
            return False
        dbname = request.schema or self.target.info.name
        target = self.gk.resolve_target(dbname, "mysql")
        if target is None:
            await self._send_err(1049, "42000", f"'{dbname}' is not a target of this sqlward gateway")
            return False
        if target.info.name != self.target.info.name:
            assert self.up is not None
            await trio.aclose_forcefully(self.up.stream)
            self.up = await upstream.connect(
                target, capabilities=self.client_caps & ~Capability.SSL & ~Capability.LOCAL_FILES,
                charset=self.charset,
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
        self._statements.clear()
        self._stmt_masks.clear()
        self._cursor_rows.clear()
        if request.character_set:
            self.charset = request.character_set
            self.codec = _python_codec(self.charset)
        self._set_identity(identity, target)
        self.schema = target.database
        await self._show_identity_upstream(identity)
        await self._write(messages.ok_packet(self.client_caps))
        return True
