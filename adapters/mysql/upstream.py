"""Connecting to an upstream MySQL / MariaDB server as the gateway's own database user.

`connect(target, ...)` reads the server greeting, upgrades to TLS as the target's `sslmode` says
(disable / prefer / require / verify-ca / verify-full, libpq names; the config maps MySQL's own),
sends a HandshakeResponse41 with the capabilities negotiated for this client, and completes
whichever authentication the server asks for, including an AuthSwitchRequest to another plugin:
mysql_native_password, caching_sha2_password (fast path, or full path: the password in clear over
TLS, or RSA-encrypted with the server's public key on a plain connection) and MariaDB's
client_ed25519. Errors are `UpstreamError` with a message safe for the client: the server's own
message, never the password.

`probe(target)` only reads the greeting, to learn the server version and capabilities that the
listener then offers to its clients.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from sqlward.adapters.base import Target
from sqlward.adapters.mysql import auth, messages
from sqlward.adapters.mysql.constants import Capability
from sqlward.adapters.mysql.errors import (
    ER_ACCESS_DENIED_ERROR,
    ER_HANDSHAKE_ERROR,
    ER_NET_READ_ERROR,
    SQLSTATE_AUTH,
    SQLSTATE_LINK,
)
from sqlward.adapters.mysql.packets import PacketFramer, ProtocolViolation, encode_packets


class UpstreamError(Exception):
    def __init__(self, message: str, errno: int = ER_NET_READ_ERROR, sqlstate: str = SQLSTATE_LINK) -> None:
        super().__init__(message)
        self.errno = errno
        self.sqlstate = sqlstate


@dataclass
class UpstreamConnection:
    stream: trio.abc.Stream
    greeting: messages.HandshakeV10
    capabilities: int  # what the gateway and the server agreed on
    status: int = 0
    tls: bool = False
    leftover: bytes = b""


def client_context(mode: str, root_cert: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode in ("verify-ca", "verify-full") or (mode == "require" and root_cert):
        if root_cert:
            ctx.load_verify_locations(cafile=root_cert)
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


class _Conn:
    """Packet I/O during the connection phase (sequence ids checked)."""

    def __init__(self, stream: trio.abc.Stream, target: Target) -> None:
        self.stream = stream
        self.framer = PacketFramer(max_payload=1 << 24)
        self.seq = 0
        self.name = target.info.name

    async def read(self) -> bytes:
        while True:
            packet = self.framer.next(expected_seq=self.seq)
            if packet is not None:
                self.seq = (packet.seq + 1) & 0xFF
                return packet.payload
            data = await self.stream.receive_some(65536)
            if not data:
                raise UpstreamError(f"upstream {self.name!r} closed the connection during the handshake")
            self.framer.feed(data)

    async def write(self, payload: bytes) -> None:
        data, self.seq = encode_packets(payload, self.seq)
        await self.stream.send_all(data)


async def _open(target: Target) -> trio.abc.Stream:
    try:
        return await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise UpstreamError(
            f"could not connect to upstream {target.info.name!r} at {target.host}:{target.port}: "
            f"{exc.strerror or exc}"
        ) from exc


async def probe(target: Target) -> messages.HandshakeV10:
    """The server's greeting, without logging in."""
    with trio.fail_after(target.connect_timeout):
        stream = await _open(target)
        try:
            conn = _Conn(stream, target)
            payload = await conn.read()
            if payload[:1] == b"\xff":
                raise UpstreamError(f"upstream {target.info.name!r} refused the connection: "
                                    f"{messages.decode_err(payload).message}")  # type: ignore[union-attr]
            return messages.decode_handshake(payload)
        finally:
            await trio.aclose_forcefully(stream)


def _auth_response(plugin: str, password: bytes, nonce: bytes, *, secure: bool) -> tuple[bytes, auth.Sha2ClientAuth | None]:
    if plugin == auth.NATIVE_PASSWORD:
        return auth.native_scramble(password, nonce), None
    if plugin == auth.CACHING_SHA2_PASSWORD:
        sha2 = auth.Sha2ClientAuth(password, nonce, secure=secure)
        return sha2.initial_response(), sha2
    if plugin == auth.CLIENT_ED25519:
        return auth.ed25519_sign(password, nonce), None
    if plugin == auth.CLEAR_PASSWORD:
        if not secure:
            raise UpstreamError("upstream asks for mysql_clear_password on a connection without TLS; refused")
        return auth.clear_password_payload(password), None
    raise UpstreamError(f"upstream asks for an unsupported authentication plugin {plugin!r}")


async def connect(
    target: Target,
    *,
    capabilities: int,
    charset: int,
    attributes: tuple[tuple[str, str], ...] = (),
    database: str | None = None,
) -> UpstreamConnection:
    """Log into the target. `capabilities` are those the client negotiated with the gateway;
    the server's own limit them further."""
    with trio.move_on_after(target.connect_timeout) as scope:
        return await _connect(target, capabilities, charset, attributes, database)
    assert scope.cancelled_caught
    raise UpstreamError(f"timed out connecting to upstream {target.info.name!r}")


async def _connect(
    target: Target, client_caps: int, charset: int,
    attributes: tuple[tuple[str, str], ...], database: str | None,
) -> UpstreamConnection:
    stream = await _open(target)
    ok = False
    try:
        conn = _Conn(stream, target)
        payload = await conn.read()
        if payload[:1] == b"\xff":
            err = messages.decode_err(payload)
            text = err.message if isinstance(err, messages.ErrPacket) else ""
            raise UpstreamError(f"upstream {target.info.name!r} refused the connection: {text}")
        greeting = messages.decode_handshake(payload)
        server_caps = greeting.capabilities
        mode = target.tls.mode
        caps = (
            Capability.LONG_PASSWORD | Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION
            | Capability.PLUGIN_AUTH | Capability.TRANSACTIONS
        )
        passthrough = (
            Capability.FOUND_ROWS | Capability.LONG_FLAG | Capability.IGNORE_SPACE
            | Capability.INTERACTIVE | Capability.MULTI_STATEMENTS | Capability.MULTI_RESULTS
            | Capability.PS_MULTI_RESULTS | Capability.DEPRECATE_EOF | Capability.SESSION_TRACK
            | Capability.LOCAL_FILES
        )
        caps |= client_caps & passthrough
        caps |= Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.CONNECT_ATTRS
        db = target.database if database is None else database
        if db:
            caps |= Capability.CONNECT_WITH_DB
        caps &= server_caps | Capability.LONG_PASSWORD
        missing = client_caps & passthrough & ~caps & ~Capability.LOCAL_FILES
        if missing:
            raise UpstreamError(
                f"upstream {target.info.name!r} lacks capabilities the client negotiated: {Capability(missing)!r}",
                errno=ER_HANDSHAKE_ERROR,
            )
        secure = False
        if mode not in ("disable", "allow") and server_caps & Capability.SSL:
            caps |= Capability.SSL
            await conn.write(messages.encode(messages.SSLRequest(capabilities=caps, character_set=charset), caps))
            ctx = client_context(mode, target.tls.root_cert, target.tls.cert_file, target.tls.key_file)
            tls_stream = trio.SSLStream(stream, ctx, server_hostname=target.tls.server_name or target.host)
            try:
                await tls_stream.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                cause = exc.__cause__ or exc
                raise UpstreamError(f"TLS handshake with upstream {target.info.name!r} failed: {cause}") from exc
            stream = tls_stream
            conn.stream = tls_stream
            secure = True
        elif mode in ("require", "verify-ca", "verify-full"):
            raise UpstreamError(
                f"upstream {target.info.name!r} does not offer TLS but sslmode={mode} requires it"
            )
        password = target.password.encode()
        plugin = greeting.auth_plugin_name or auth.NATIVE_PASSWORD
        nonce = auth.plugin_data_nonce(greeting.auth_plugin_data)
        response, sha2 = _auth_response(plugin, password, nonce, secure=secure)
        await conn.write(
            messages.encode(
                messages.HandshakeResponse41(
                    capabilities=caps, max_packet_size=1 << 30, character_set=charset,
                    username=target.user, auth_response=response, database=db or "",
                    auth_plugin_name=plugin, attributes=attributes,
                ),
                caps,
            )
        )
        while True:
            reply = await conn.read()
            head = reply[:1]
            if head == b"\x00":
                ok_packet = messages.decode_ok(reply, caps)
                ok = True
                return UpstreamConnection(
                    stream=stream, greeting=greeting, capabilities=caps,
                    status=ok_packet.status_flags, tls=secure, leftover=conn.framer.take_rest(),
                )
            if head == b"\xff":
                err = messages.decode_err(reply, caps)
                text = err.message if isinstance(err, messages.ErrPacket) else ""
                raise UpstreamError(
                    f"upstream {target.info.name!r} refused the gateway's login: {text}",
                    errno=ER_ACCESS_DENIED_ERROR, sqlstate=SQLSTATE_AUTH,
                )
            if head == b"\xfe":
                switch = messages.decode_auth_switch_request(reply)
                if switch.plugin_name == auth.CLIENT_ED25519:
                    nonce = switch.data[: auth.ED25519_NONCE_LEN]
                else:
                    nonce = auth.plugin_data_nonce(switch.data)
                response, sha2 = _auth_response(switch.plugin_name, password, nonce, secure=secure)
                await conn.write(response)
                continue
            if head == b"\x01" and sha2 is not None:
                more = sha2.more_data(reply[1:])
                if more is not None:
                    await conn.write(more)
                continue
            raise UpstreamError(f"upstream {target.info.name!r} sent an unexpected packet during login")
    except ProtocolViolation as exc:
        raise UpstreamError(f"upstream {target.info.name!r} broke the protocol: {exc}") from exc
    except auth.AuthProtocolError as exc:
        raise UpstreamError(f"authentication with upstream {target.info.name!r} failed: {exc}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise UpstreamError(f"upstream {target.info.name!r} connection failed during login") from exc
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)
