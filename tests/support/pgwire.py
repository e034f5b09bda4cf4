"""A small raw PostgreSQL v3 wire client for tests that need exact control of the bytes.

Written from the protocol documentation (https://www.postgresql.org/docs/current/protocol.html),
independently of the gateway's codec: message builders for the frontend messages, a blocking
reader of backend messages, SSLRequest / GSSENCRequest / CancelRequest, and authentication
(trust, cleartext, MD5, SCRAM-SHA-256 via `scramp`). Everything works on a real socket.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608  # 3 << 16
PROTOCOL_3_2 = 196610  # 3 << 16 | 2
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def cstr(s: str | bytes) -> bytes:
    if isinstance(s, str):
        s = s.encode()
    return s + b"\0"


def msg(type_: bytes, payload: bytes = b"") -> bytes:
    return type_ + struct.pack("!I", len(payload) + 4) + payload


# -- frontend messages ------------------------------------------------------------------------


def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", version)
    for k, v in params.items():
        body += cstr(k) + cstr(v)
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!II", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, key: bytes | int) -> bytes:
    if isinstance(key, int):
        key = struct.pack("!I", key & 0xFFFFFFFF)
    return struct.pack("!III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def parse(sql: str, name: str = "", param_types: tuple[int, ...] = ()) -> bytes:
    body = cstr(name) + cstr(sql) + struct.pack("!H", len(param_types))
    body += b"".join(struct.pack("!I", t) for t in param_types)
    return msg(b"P", body)


def bind(
    statement: str = "",
    portal: str = "",
    params: tuple[bytes | None, ...] = (),
    param_formats: tuple[int, ...] = (),
    result_formats: tuple[int, ...] = (),
) -> bytes:
    body = cstr(portal) + cstr(statement)
    body += struct.pack("!H", len(param_formats)) + b"".join(struct.pack("!H", f) for f in param_formats)
    body += struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!H", f) for f in result_formats)
    return msg(b"B", body)


def describe(kind: str = "P", name: str = "") -> bytes:
    return msg(b"D", kind.encode() + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def close(kind: str = "S", name: str = "") -> bytes:
    return msg(b"C", kind.encode() + cstr(name))


def sync() -> bytes:
    return msg(b"S")


def flush() -> bytes:
    return msg(b"H")


def terminate() -> bytes:
    return msg(b"X")


def password_message(password: str) -> bytes:
    return msg(b"p", cstr(password))


# -- backend messages -------------------------------------------------------------------------


@dataclass
class Message:
    type: str
    payload: bytes

    # ErrorResponse / NoticeResponse ------------------------------------------------------
    @property
    def fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        p = self.payload
        i = 0
        while i < len(p) and p[i] != 0:
            code = chr(p[i])
            j = p.index(b"\0", i + 1)
            out[code] = p[i + 1 : j].decode("utf-8", "replace")
            i = j + 1
        return out

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def severity(self) -> str:
        f = self.fields
        return f.get("V", f.get("S", ""))

    @property
    def text(self) -> str:
        return self.fields.get("M", "")

    # Authentication ----------------------------------------------------------------------
    @property
    def auth_code(self) -> int:
        assert self.type == "R", self
        return struct.unpack("!I", self.payload[:4])[0]

    # CommandComplete ---------------------------------------------------------------------
    @property
    def tag(self) -> str:
        assert self.type == "C", self
        return self.payload.rstrip(b"\0").decode()

    # ReadyForQuery -----------------------------------------------------------------------
    @property
    def status(self) -> str:
        assert self.type == "Z", self
        return chr(self.payload[0])

    # DataRow -----------------------------------------------------------------------------
    @property
    def values(self) -> list[bytes | None]:
        assert self.type == "D", self
        (n,) = struct.unpack("!H", self.payload[:2])
        i = 2
        out: list[bytes | None] = []
        for _ in range(n):
            (ln,) = struct.unpack("!i", self.payload[i : i + 4])
            i += 4
            if ln < 0:
                out.append(None)
            else:
                out.append(self.payload[i : i + ln])
                i += ln
        return out

    def __repr__(self) -> str:
        if self.type in "EN":
            return f"<{self.type} {self.fields}>"
        body = self.payload if len(self.payload) < 80 else self.payload[:80] + b"..."
        return f"<{self.type} {body!r}>"


class ServerClosed(EOFError):
    pass


class RawConn:
    """A blocking connection that speaks raw protocol messages."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""
        self.backend_pid: int | None = None
        self.secret_key: bytes | None = None
        self.parameters: dict[str, str] = {}
        self.startup_messages: list[Message] = []

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> "RawConn":
        s = socket.create_connection((host, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(s, timeout)

    # I/O ------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ServerClosed("server closed the connection")
        self.buf += chunk

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_byte(self) -> bytes:
        return self.recv_exact(1)

    def read_message(self) -> Message:
        head = self.recv_exact(5)
        type_ = chr(head[0])
        (length,) = struct.unpack("!I", head[1:])
        if length < 4 or length > 64 * 1024 * 1024:
            raise AssertionError(f"bad backend message length {length} for type {type_!r}")
        return Message(type_, self.recv_exact(length - 4))

    def read_until(self, stop: str = "Z", limit: int = 100000) -> list[Message]:
        """Messages up to and including the first of type in `stop`."""
        out = []
        for _ in range(limit):
            m = self.read_message()
            out.append(m)
            if m.type in stop:
                return out
        raise AssertionError(f"no {stop!r} within {limit} messages")

    def read_all_until_closed(self, timeout: float = 10.0) -> tuple[list[Message], bool]:
        """Every message until the server closes; (messages, closed)."""
        out: list[Message] = []
        self.sock.settimeout(timeout)
        try:
            while True:
                out.append(self.read_message())
        except (ServerClosed, ConnectionResetError, BrokenPipeError):
            return out, True
        except (socket.timeout, TimeoutError):
            return out, False

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """True when the server closes the connection within `timeout` (data is discarded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def start_tls(self, *, ca_file: str | None = None, server_hostname: str = "127.0.0.1",
                  alpn: list[str] | None = None) -> None:
        ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl._create_unverified_context()
        if alpn:
            ctx.set_alpn_protocols(alpn)
        assert not self.buf, "unread bytes before the TLS handshake"
        timeout = self.sock.gettimeout()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.sock.settimeout(timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawConn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Higher level ---------------------------------------------------------------------------
    def request_ssl(self) -> bytes:
        self.send(ssl_request())
        return self.read_byte()

    def authenticate(self, user: str, password: str | None) -> list[Message]:
        """Answer authentication requests until ReadyForQuery (or raise with the error).

        Returns every message received (authentication requests included).
        """
        seen: list[Message] = []
        scram = None
        while True:
            m = self.read_message()
            seen.append(m)
            if m.type == "E":
                raise PgError(m, seen)
            if m.type == "R":
                code = m.auth_code
                if code == AUTH_OK:
                    continue
                if code == AUTH_CLEARTEXT:
                    self.send(password_message(password or ""))
                elif code == AUTH_MD5:
                    salt = m.payload[4:8]
                    inner = hashlib.md5(((password or "") + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(password_message("md5" + outer))
                elif code == AUTH_SASL:
                    from scramp import ScramClient

                    mechs = [x.decode() for x in m.payload[4:].split(b"\0") if x]
                    if "SCRAM-SHA-256" not in mechs:
                        raise AssertionError(f"no SCRAM-SHA-256 in offered mechanisms {mechs}")
                    scram = ScramClient(["SCRAM-SHA-256"], user, password or "")
                    first = scram.get_client_first().encode()
                    self.send(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
                elif code == AUTH_SASL_CONTINUE:
                    assert scram is not None
                    scram.set_server_first(m.payload[4:].decode())
                    self.send(msg(b"p", scram.get_client_final().encode()))
                elif code == AUTH_SASL_FINAL:
                    assert scram is not None
                    scram.set_server_final(m.payload[4:].decode())
                else:
                    raise AssertionError(f"unsupported authentication request {code}")
                continue
            if m.type == "K":
                self.backend_pid = struct.unpack("!I", m.payload[:4])[0]
                self.secret_key = m.payload[4:]
            elif m.type == "S":
                k, v = m.payload.split(b"\0")[:2]
                self.parameters[k.decode()] = v.decode()
            elif m.type == "Z":
                self.startup_messages = seen
                return seen

    def simple(self, sql: str) -> list[Message]:
        """Send a simple Query and read up to ReadyForQuery."""
        self.send(query(sql))
        return self.read_until("Z")


class PgError(Exception):
    def __init__(self, error: Message, seen: list[Message] | None = None) -> None:
        super().__init__(f"{error.severity} {error.sqlstate}: {error.text}")
        self.error = error
        self.seen = seen or []

    @property
    def sqlstate(self) -> str:
        return self.error.sqlstate

    @property
    def severity(self) -> str:
        return self.error.severity


def open_session(
    host: str,
    port: int,
    user: str,
    password: str | None,
    database: str,
    *,
    params: dict[str, str] | None = None,
    tls: bool = False,
    ca_file: str | None = None,
    version: int = PROTOCOL_3_0,
    timeout: float = 10.0,
) -> RawConn:
    """Connect, optionally negotiate TLS, send the startup packet and authenticate."""
    c = RawConn.connect(host, port, timeout)
    try:
        if tls:
            answer = c.request_ssl()
            if answer != b"S":
                raise AssertionError(f"SSLRequest answered {answer!r}")
            c.start_tls(ca_file=ca_file)
        p = {"user": user, "database": database}
        p.update(params or {})
        c.send(startup_message(p, version))
        c.authenticate(user, password)
    except BaseException:
        c.close()
        raise
    return c


def send_cancel(host: str, port: int, pid: int, key: bytes | int, timeout: float = 5.0) -> bool:
    """Send a CancelRequest on a new connection; True if the server then closed it."""
    c = RawConn.connect(host, port, timeout)
    try:
        c.send(cancel_request(pid, key))
        return c.wait_closed(timeout)
    finally:
        c.close()


@dataclass
class Batch:
    """Messages of one extended-protocol reply, split at ReadyForQuery."""

    messages: list[Message] = field(default_factory=list)

    @property
    def types(self) -> str:
        return "".join(m.type for m in self.messages)


def read_batches(conn: RawConn, n: int) -> list[Batch]:
    """Read `n` replies, each ending with ReadyForQuery."""
    return [Batch(conn.read_until("Z")) for _ in range(n)]
