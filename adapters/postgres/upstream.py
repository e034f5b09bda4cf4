"""Connecting to an upstream PostgreSQL server as the gateway's own database user.

`connect(target, params)` opens TCP, negotiates TLS the way libpq's `sslmode` does, sends the
StartupMessage and answers whatever authentication the server asks for: trust, cleartext
password, MD5 and SCRAM-SHA-256 (via `scramp`, which also verifies the server's signature, so a
server that does not know the password cannot impersonate the real one). It returns an
`UpstreamConnection` holding the stream, the server's ParameterStatus values, its
BackendKeyData (kept for cancelling) and the transaction status of the first ReadyForQuery.

`send_cancel(target, pid, secret)` sends a CancelRequest on a fresh connection, over TLS when
the target's mode demands it.

Errors are `UpstreamError` with a message safe to show to the client: the server's own error
message, never the password.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field

import scramp
import trio

from sqlward.adapters.base import Target, UpstreamTLS
from sqlward.adapters.postgres import codec, errors


class UpstreamError(Exception):
    def __init__(self, message: str, sqlstate: str = errors.CONNECTION_FAILURE) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass
class UpstreamConnection:
    stream: trio.abc.Stream
    parameters: list[tuple[str, str]] = field(default_factory=list)
    pid: int = 0
    secret: bytes = b""
    tx_status: str = "I"
    notices: list[bytes] = field(default_factory=list)
    tls: bool = False
    # Bytes the server sent after the first ReadyForQuery (normally none).
    leftover: bytes = b""


def _client_context(tls: UpstreamTLS, host: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    verify = tls.mode in ("verify-ca", "verify-full") or (tls.mode == "require" and tls.root_cert)
    if verify:
        if tls.root_cert:
            ctx.load_verify_locations(cafile=tls.root_cert)
        ctx.check_hostname = tls.mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    return ctx


async def _open(target: Target) -> tuple[trio.abc.Stream, bool]:
    """TCP connect and TLS negotiation; returns the stream and whether it is encrypted."""
    tls = target.tls
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise UpstreamError(
            f"could not connect to upstream {target.info.name!r} at {target.host}:{target.port}: "
            f"{exc.strerror or exc}"
        ) from exc
    if tls.mode in ("disable", "allow"):
        return stream, False
    try:
        await stream.send_all(codec.encode_startup(codec.SSLRequest()))
        answer = await stream.receive_some(1)
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        raise UpstreamError(f"upstream {target.info.name!r} closed the connection during TLS negotiation") from exc
    if answer == b"N" or not answer:
        if tls.mode == "prefer" and answer == b"N":
            return stream, False
        await trio.aclose_forcefully(stream)
        raise UpstreamError(
            f"upstream {target.info.name!r} does not accept TLS but sslmode={tls.mode} requires it"
        )
    if answer != b"S":
        await trio.aclose_forcefully(stream)
        raise UpstreamError(f"upstream {target.info.name!r} answered the TLS request with {answer!r}")
    try:
        ctx = _client_context(tls, target.host)
    except (OSError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(stream)
        raise UpstreamError(f"TLS settings of target {target.info.name!r} are unusable: {exc}") from exc
    server_name = tls.server_name or target.host
    tls_stream = trio.SSLStream(stream, ctx, server_hostname=server_name)
    try:
        await tls_stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(tls_stream)
        cause = exc.__cause__ or exc
        raise UpstreamError(
            f"TLS handshake with upstream {target.info.name!r} failed: {cause}"
        ) from exc
    return tls_stream, True


def _md5_password(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


async def connect(target: Target, params: list[tuple[str, str]]) -> UpstreamConnection:
    """Open an authenticated session on the target. `params` are extra startup parameters."""
    with trio.move_on_after(target.connect_timeout) as scope:
        return await _connect(target, params)
    assert scope.cancelled_caught
    raise UpstreamError(f"timed out connecting to upstream {target.info.name!r}")


async def _connect(target: Target, params: list[tuple[str, str]]) -> UpstreamConnection:
    stream, encrypted = await _open(target)
    conn = UpstreamConnection(stream=stream, tls=encrypted)
    ok = False
    try:
        startup = [("user", target.user), ("database", target.database)]
        startup += [(k, v) for k, v in params if k not in ("user", "database")]
        await stream.send_all(codec.encode_startup(codec.StartupMessage(params=tuple(startup))))
        framer = codec.Framer(max_size=1 << 20)
        scram: scramp.ScramClient | None = None
        while True:
            item = framer.next()
            if item is None:
                data = await stream.receive_some(65536)
                if not data:
                    raise UpstreamError(f"upstream {target.info.name!r} closed the connection during startup")
                framer.feed(data)
                continue
            mtype, body = item
            if mtype == codec.Backend.ERROR_RESPONSE:
                fields = codec.error_fields(body)
                raise UpstreamError(
                    f"upstream {target.info.name!r} refused the gateway: {fields.get('M', 'error')}",
                    errors.SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
                )
            if mtype == codec.Backend.AUTHENTICATION:
                msg = codec.decode_backend(mtype, body)
                reply: bytes | None = None
                if isinstance(msg, codec.AuthenticationOk):
                    pass
                elif isinstance(msg, codec.AuthenticationCleartextPassword):
                    reply = codec.encode_frontend(codec.PasswordMessage.from_password(target.password))
                elif isinstance(msg, codec.AuthenticationMD5Password):
                    reply = codec.encode_frontend(
                        codec.PasswordMessage.from_password(
                            _md5_password(target.user, target.password, msg.salt)
                        )
                    )
                elif isinstance(msg, codec.AuthenticationSASL):
                    if "SCRAM-SHA-256" not in msg.mechanisms:
                        raise UpstreamError(
                            f"upstream {target.info.name!r} offers no supported SASL mechanism "
                            f"({', '.join(msg.mechanisms)})"
                        )
                    scram = scramp.ScramClient(["SCRAM-SHA-256"], target.user, target.password)
                    first = scram.get_client_first().encode()
                    reply = codec.encode_frontend(codec.SASLInitialResponse("SCRAM-SHA-256", first))
                elif isinstance(msg, codec.AuthenticationSASLContinue) and scram is not None:
                    try:
                        scram.set_server_first(msg.data.decode())
                        reply = codec.encode_frontend(codec.SASLResponse(scram.get_client_final().encode()))
                    except scramp.ScramException as exc:
                        raise UpstreamError(f"SCRAM exchange with upstream failed: {exc}") from exc
                elif isinstance(msg, codec.AuthenticationSASLFinal) and scram is not None:
                    try:
                        scram.set_server_final(msg.data.decode())
                    except scramp.ScramException as exc:
                        raise UpstreamError(
                            f"upstream {target.info.name!r} failed SCRAM server verification: {exc}"
                        ) from exc
                else:
                    raise UpstreamError(
                        f"upstream {target.info.name!r} asks for an unsupported authentication "
                        f"method ({type(msg).__name__})"
                    )
                if reply is not None:
                    await stream.send_all(reply)
            elif mtype == codec.Backend.PARAMETER_STATUS:
                ps = codec.decode_backend(mtype, body)
                assert isinstance(ps, codec.ParameterStatus)
                conn.parameters.append((ps.name, ps.value))
            elif mtype == codec.Backend.BACKEND_KEY_DATA:
                kd = codec.decode_backend(mtype, body)
                assert isinstance(kd, codec.BackendKeyData)
                conn.pid, conn.secret = kd.pid, kd.secret
            elif mtype == codec.Backend.NOTICE_RESPONSE:
                conn.notices.append(codec._frame(mtype, body))
            elif mtype == codec.Backend.NEGOTIATE_PROTOCOL_VERSION:
                pass  # we ask for 3.0 and no protocol options; nothing to adjust
            elif mtype == codec.Backend.READY_FOR_QUERY:
                conn.tx_status = chr(body[0]) if body else "I"
                conn.leftover = framer.take_rest()
                ok = True
                return conn
            else:
                raise UpstreamError(
                    f"upstream {target.info.name!r} sent an unexpected {chr(mtype)!r} message during startup"
                )
    except codec.ProtocolViolation as exc:
        raise UpstreamError(f"upstream {target.info.name!r} broke the protocol: {exc}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise UpstreamError(f"upstream {target.info.name!r} connection failed during startup") from exc
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)


async def query_row(conn: UpstreamConnection, sql: str) -> list[str | None] | None:
    """Run one gateway query on an idle session (a simple Query) and return the text values of
    its first row (None: no row, or the server refused it). Everything up to its ReadyForQuery
    is consumed; notices are kept for the client (`conn.notices`)."""
    framer = codec.Framer(max_size=1 << 20)
    framer.feed(conn.leftover)
    conn.leftover = b""
    row: list[str | None] | None = None
    failed = False
    try:
        await conn.stream.send_all(codec.encode_frontend(codec.Query(sql)))
        while True:
            item = framer.next()
            if item is None:
                data = await conn.stream.receive_some(65536)
                if not data:
                    raise UpstreamError("the upstream closed the connection")
                framer.feed(data)
                continue
            mtype, body = item
            if mtype == codec.Backend.DATA_ROW and row is None:
                msg = codec.decode_backend(mtype, body)
                assert isinstance(msg, codec.DataRow)
                row = [None if v is None else bytes(v).decode("utf-8", "replace") for v in msg.values]
            elif mtype == codec.Backend.ERROR_RESPONSE:
                failed = True
            elif mtype == codec.Backend.NOTICE_RESPONSE:
                conn.notices.append(codec._frame(mtype, body))
            elif mtype == codec.Backend.READY_FOR_QUERY:
                conn.tx_status = chr(body[0]) if body else "I"
                conn.leftover = framer.take_rest()
                return None if failed else row
    except codec.ProtocolViolation as exc:
        raise UpstreamError(f"upstream broke the protocol: {exc}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise UpstreamError("upstream connection failed") from exc


async def send_cancel(target: Target, pid: int, secret: bytes) -> None:
    """Ask the upstream to cancel the query running on backend `pid`. Best effort."""
    with trio.move_on_after(target.connect_timeout):
        try:
            stream, _ = await _open(target)
        except UpstreamError:
            return
        try:
            await stream.send_all(codec.encode_startup(codec.CancelRequest(pid, secret)))
            # The server closes the connection once it has processed the request.
            await stream.receive_some(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
