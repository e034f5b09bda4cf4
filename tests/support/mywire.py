"""A minimal raw MySQL / MariaDB client for tests, written from the protocol documentation.

Real drivers cannot send a wrong sequence id, a truncated HandshakeResponse, COM_FIELD_LIST or
COM_SET_OPTION on demand, nor force the caching_sha2_password full path; this client can. It is
deliberately independent of the gateway's codec (`adapters.mysql.packets`); only the scramble
algorithms are borrowed from `adapters.mysql.auth`, which are themselves checked against
MariaDB and real clients.

    c = RawMySQL.connect(host, port)                     # reads the server's Handshake v10
    c.login("alice", "alice-secret", "app")             # HandshakeResponse41 + auth exchange
    rs = c.query("select 1; select 2")                  # list of ResultSet / OK, one per result
    c.ping(); c.init_db("x"); c.field_list("t"); c.statistics(); c.set_option(1)
    st = c.stmt_prepare("select ?"); c.stmt_execute(st, [42])   # binary rows, decoded
    c.change_user("bob", "bob-secret", "app"); c.reset_connection(); c.quit()

Every packet read is checked for the expected sequence id (`strict_seq`); server errors raise
`MySQLError(errno, sqlstate, message)`; a peer that closes raises `Closed`. `c.auth_trace`
records the authentication steps seen ("plugin:caching_sha2_password", "switch:<plugin>",
"fast-auth-ok", "full-auth", "public-key", "ok") so tests can prove which path was taken.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html and
https://mariadb.com/kb/en/clientserver-protocol/ .
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Sequence

from sqlward.adapters.mysql import auth as myauth

# -- numbers -------------------------------------------------------------------------------------

CLIENT_LONG_PASSWORD = 1 << 0
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24

DEFAULT_CAPABILITIES = (
    CLIENT_LONG_PASSWORD
    | CLIENT_LONG_FLAG
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CONNECT_ATTRS
    | CLIENT_DEPRECATE_EOF
)

SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PROCESS_KILL = 0x0C
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_RESET_CONNECTION = 0x1F

MYSQL_OPTION_MULTI_STATEMENTS_ON = 0
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1

# field types
T_DECIMAL, T_TINY, T_SHORT, T_LONG, T_FLOAT, T_DOUBLE, T_NULL, T_TIMESTAMP = 0, 1, 2, 3, 4, 5, 6, 7
T_LONGLONG, T_INT24, T_DATE, T_TIME, T_DATETIME, T_YEAR, T_NEWDATE, T_VARCHAR, T_BIT = 8, 9, 10, 11, 12, 13, 14, 15, 16
T_JSON, T_NEWDECIMAL, T_ENUM, T_SET = 245, 246, 247, 248
T_TINY_BLOB, T_MEDIUM_BLOB, T_LONG_BLOB, T_BLOB, T_VAR_STRING, T_STRING, T_GEOMETRY = 249, 250, 251, 252, 253, 254, 255

UNSIGNED_FLAG = 0x20
BINARY_CHARSET = 63
UTF8MB4_GENERAL_CI = 45

MAX_PAYLOAD = 0xFFFFFF

NATIVE = "mysql_native_password"
SHA2 = "caching_sha2_password"
CLEAR = "mysql_clear_password"
ED25519 = "client_ed25519"


# -- errors and results --------------------------------------------------------------------------


class Closed(Exception):
    """The peer closed the connection (or reset it)."""


class WireError(Exception):
    """The peer broke the protocol (wrong sequence id, undecodable packet)."""


class MySQLError(Exception):
    def __init__(self, errno: int, sqlstate: str | None, message: str) -> None:
        super().__init__(f"ERR {errno} ({sqlstate}): {message}")
        self.errno = errno
        self.sqlstate = sqlstate
        self.message = message


@dataclass
class Handshake:
    protocol_version: int
    server_version: str
    connection_id: int
    nonce: bytes
    capabilities: int  # lower 32 bits; `mariadb_capabilities` holds MariaDB's extended ones
    charset: int
    status: int
    auth_plugin: str
    mariadb_capabilities: int = 0
    raw: bytes = b""


@dataclass
class OK:
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = 0
    warnings: int = 0
    info: bytes = b""
    eof: bool = False  # an OK with the 0xFE header (DEPRECATE_EOF end of rows), or an EOF packet


@dataclass
class Column:
    schema: str
    table: str
    org_table: str
    name: str
    org_name: str
    charset: int
    length: int
    type: int
    flags: int
    decimals: int
    default: bytes | None = None  # COM_FIELD_LIST only


@dataclass
class ResultSet:
    columns: list[Column]
    rows: list[tuple[Any, ...]]
    status: int = 0
    warnings: int = 0

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass
class Prepared:
    stmt_id: int
    params: list[Column]
    columns: list[Column]
    warnings: int = 0


# -- encoding helpers ------------------------------------------------------------------------------


def lenenc_int(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lenenc_bytes(b: bytes) -> bytes:
    return lenenc_int(len(b)) + b


def header(length: int, seq: int) -> bytes:
    return struct.pack("<I", length)[:3] + bytes([seq & 0xFF])


class Buf:
    """Cursor over a payload."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError(f"packet too short: wanted {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def lenenc(self) -> int | None:
        first = self.int(1)
        if first < 251:
            return first
        if first == 0xFB:
            return None
        if first == 0xFC:
            return self.int(2)
        if first == 0xFD:
            return self.int(3)
        if first == 0xFE:
            return self.int(8)
        raise WireError(f"bad length-encoded integer prefix 0x{first:02x}")

    def lenenc_bytes(self) -> bytes | None:
        n = self.lenenc()
        return None if n is None else self.take(n)

    def nul(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise WireError("missing NUL terminator")
        b = self.data[self.pos : end]
        self.pos = end + 1
        return b

    def rest(self) -> bytes:
        b = self.data[self.pos :]
        self.pos = len(self.data)
        return b


def parse_err(payload: bytes) -> MySQLError:
    b = Buf(payload, 1)
    errno = b.int(2)
    sqlstate = None
    if b.left() >= 6 and payload[b.pos : b.pos + 1] == b"#":
        b.take(1)
        sqlstate = b.take(5).decode("ascii", "replace")
    return MySQLError(errno, sqlstate, b.rest().decode("utf-8", "replace"))


def parse_ok(payload: bytes) -> OK:
    b = Buf(payload, 1)
    affected = b.lenenc() or 0
    last = b.lenenc() or 0
    status = b.int(2) if b.left() >= 2 else 0
    warnings = b.int(2) if b.left() >= 2 else 0
    return OK(affected, last, status, warnings, b.rest(), eof=payload[0] == 0xFE)


def parse_eof(payload: bytes) -> OK:
    b = Buf(payload, 1)
    warnings = b.int(2) if b.left() >= 2 else 0
    status = b.int(2) if b.left() >= 2 else 0
    return OK(status=status, warnings=warnings, eof=True)


def parse_handshake(payload: bytes) -> Handshake:
    if payload[:1] == b"\xff":
        raise parse_err(payload)
    b = Buf(payload)
    proto = b.int(1)
    if proto != 10:
        raise WireError(f"handshake protocol version {proto}, expected 10")
    version = b.nul().decode("utf-8", "replace")
    conn_id = b.int(4)
    part1 = b.take(8)
    b.take(1)  # filler
    caps = b.int(2)
    charset = status = 0
    plugin = ""
    part2 = b""
    mariadb_caps = 0
    if b.left():
        charset = b.int(1)
        status = b.int(2)
        caps |= b.int(2) << 16
        data_len = b.int(1)
        reserved = b.take(6)
        ext = b.int(4)
        if not caps & CLIENT_LONG_PASSWORD:  # MariaDB: CLIENT_MYSQL cleared, extended caps here
            mariadb_caps = ext
        del reserved
        if caps & CLIENT_SECURE_CONNECTION:
            n = max(13, data_len - 8)
            part2 = b.take(n)
        if caps & CLIENT_PLUGIN_AUTH:
            plugin = b.nul().decode("ascii", "replace") if b.data.find(b"\0", b.pos) >= 0 else b.rest().decode()
    nonce = (part1 + part2).rstrip(b"\0")[:20]
    return Handshake(proto, version, conn_id, nonce, caps, charset, status, plugin, mariadb_caps, payload)


def parse_column(payload: bytes, with_default: bool = False) -> Column:
    b = Buf(payload)
    catalog = b.lenenc_bytes()
    if catalog != b"def":
        raise WireError(f"column definition catalog {catalog!r}, expected b'def'")

    def s() -> str:
        v = b.lenenc_bytes()
        return "" if v is None else v.decode("utf-8", "replace")

    schema, table, org_table, name, org_name = s(), s(), s(), s(), s()
    b.lenenc()  # length of fixed fields (0x0c)
    charset = b.int(2)
    length = b.int(4)
    typ = b.int(1)
    flags = b.int(2)
    decimals = b.int(1)
    b.take(2)  # filler
    default = None
    if with_default and b.left():
        default = b.lenenc_bytes()
    return Column(schema, table, org_table, name, org_name, charset, length, typ, flags, decimals, default)


# -- binary protocol values -----------------------------------------------------------------------


def decode_binary_value(b: Buf, col: Column) -> Any:
    t = col.type
    unsigned = bool(col.flags & UNSIGNED_FLAG)
    if t == T_TINY:
        return b.int(1) if unsigned else struct.unpack("<b", b.take(1))[0]
    if t in (T_SHORT, T_YEAR):
        return b.int(2) if unsigned else struct.unpack("<h", b.take(2))[0]
    if t in (T_LONG, T_INT24):
        return b.int(4) if unsigned else struct.unpack("<i", b.take(4))[0]
    if t == T_LONGLONG:
        return b.int(8) if unsigned else struct.unpack("<q", b.take(8))[0]
    if t == T_FLOAT:
        return struct.unpack("<f", b.take(4))[0]
    if t == T_DOUBLE:
        return struct.unpack("<d", b.take(8))[0]
    if t in (T_DATE, T_DATETIME, T_TIMESTAMP, T_NEWDATE):
        n = b.int(1)
        if n == 0:
            return None if t == T_DATE else dt.datetime(1, 1, 1)  # zero date: not used in tests
        y, mo, d = b.int(2), b.int(1), b.int(1)
        hh = mi = ss = us = 0
        if n >= 7:
            hh, mi, ss = b.int(1), b.int(1), b.int(1)
        if n >= 11:
            us = b.int(4)
        if t == T_DATE:
            return dt.date(y, mo, d)
        return dt.datetime(y, mo, d, hh, mi, ss, us)
    if t == T_TIME:
        n = b.int(1)
        if n == 0:
            return dt.timedelta(0)
        neg = b.int(1)
        days = b.int(4)
        hh, mi, ss = b.int(1), b.int(1), b.int(1)
        us = b.int(4) if n >= 12 else 0
        td = dt.timedelta(days=days, hours=hh, minutes=mi, seconds=ss, microseconds=us)
        return -td if neg else td
    if t in (T_DECIMAL, T_NEWDECIMAL):
        return Decimal(b.lenenc_bytes().decode())  # type: ignore[union-attr]
    raw = b.lenenc_bytes()
    assert raw is not None
    if col.charset == BINARY_CHARSET and t not in (T_JSON,):
        return raw
    return raw.decode("utf-8")


def decode_text_value(raw: bytes | None, col: Column) -> Any:
    """Text-protocol value to the Python value `decode_binary_value` gives, for comparisons."""
    if raw is None:
        return None
    t = col.type
    if t in (T_TINY, T_SHORT, T_LONG, T_LONGLONG, T_INT24, T_YEAR):
        return int(raw)
    if t in (T_FLOAT, T_DOUBLE):
        return float(raw)
    if t in (T_DECIMAL, T_NEWDECIMAL):
        return Decimal(raw.decode())
    if t == T_DATE:
        return dt.date.fromisoformat(raw.decode())
    if t in (T_DATETIME, T_TIMESTAMP):
        return dt.datetime.fromisoformat(raw.decode())
    if t == T_TIME:
        text = raw.decode()
        neg = text.startswith("-")
        text = text.lstrip("-")
        hms, _, frac = text.partition(".")
        h, m, s = (int(x) for x in hms.split(":"))
        td = dt.timedelta(hours=h, minutes=m, seconds=s, microseconds=int((frac or "0").ljust(6, "0")))
        return -td if neg else td
    if col.charset == BINARY_CHARSET:
        return raw
    return raw.decode("utf-8")


def encode_param(v: Any) -> tuple[int, int, bytes]:
    """(type, unsigned flag byte, value bytes) for COM_STMT_EXECUTE."""
    if v is None:
        return T_NULL, 0, b""
    if isinstance(v, bool):
        return T_TINY, 0, struct.pack("<b", int(v))
    if isinstance(v, int):
        if v < 0:
            return T_LONGLONG, 0, struct.pack("<q", v)
        return T_LONGLONG, 0x80, struct.pack("<Q", v)
    if isinstance(v, float):
        return T_DOUBLE, 0, struct.pack("<d", v)
    if isinstance(v, (bytes, bytearray)):
        return T_BLOB, 0, lenenc_bytes(bytes(v))
    if isinstance(v, Decimal):
        return T_NEWDECIMAL, 0, lenenc_bytes(str(v).encode())
    return T_VAR_STRING, 0, lenenc_bytes(str(v).encode("utf-8"))


# -- the client ---------------------------------------------------------------------------------


class RawMySQL:
    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock: socket.socket = sock
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self.seq = 0
        self.strict_seq = True
        self.handshake: Handshake | None = None
        self.capabilities = 0  # negotiated (client ∩ server)
        self.tls = False
        self.auth_trace: list[str] = []
        self.plugin = ""
        self.nonce = b""
        self._password = b""
        self._rbuf = bytearray()

    # -- connection ------------------------------------------------------------------------
    @classmethod
    def open(cls, host: str, port: int, timeout: float = 10.0) -> "RawMySQL":
        return cls(socket.create_connection((host, port), timeout=timeout), timeout)

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> "RawMySQL":
        """Open a socket and read the server's handshake."""
        c = cls.open(host, port, timeout)
        try:
            c.read_handshake()
        except BaseException:
            c.close()
            raise
        return c

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawMySQL":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bytes -----------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e)) from None

    def _recv_exact(self, n: int) -> bytes:
        while len(self._rbuf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._rbuf)))
            except ConnectionResetError as e:
                raise Closed(f"connection reset: {e}") from None
            except ssl.SSLError as e:
                raise Closed(f"TLS error: {e}") from None
            if not chunk:
                raise Closed(f"connection closed by peer ({len(self._rbuf)} of {n} bytes read)")
            self._rbuf += chunk
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return out

    def send_packet(self, payload: bytes, seq: int | None = None) -> None:
        """Send one logical packet (split at 16 MiB - 1), starting at `seq` (default: next)."""
        seq = self.seq if seq is None else seq
        out = bytearray()
        pos = 0
        while True:
            chunk = payload[pos : pos + MAX_PAYLOAD]
            out += header(len(chunk), seq) + chunk
            seq = (seq + 1) & 0xFF
            pos += len(chunk)
            if len(chunk) < MAX_PAYLOAD:
                break
        self.seq = seq
        self.send_raw(bytes(out))

    def read_packet(self) -> bytes:
        """One logical packet (joined across 16 MiB frames), sequence ids checked."""
        payload = bytearray()
        while True:
            head = self._recv_exact(4)
            length = int.from_bytes(head[:3], "little")
            seq = head[3]
            if self.strict_seq and seq != self.seq:
                raise WireError(f"sequence id {seq}, expected {self.seq}")
            self.seq = (seq + 1) & 0xFF
            payload += self._recv_exact(length)
            if length < MAX_PAYLOAD:
                return bytes(payload)

    def read_all_until_closed(self, timeout: float = 5.0) -> tuple[list[bytes], bool]:
        """Packets until the peer closes (True) or `timeout` passes without one (False)."""
        out: list[bytes] = []
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        strict = self.strict_seq
        self.strict_seq = False
        try:
            while True:
                try:
                    out.append(self.read_packet())
                except Closed:
                    return out, True
                except (socket.timeout, TimeoutError):
                    return out, False
                except OSError:
                    return out, True
        finally:
            self.strict_seq = strict
            try:
                self.sock.settimeout(old)
            except OSError:
                pass

    # -- handshake ---------------------------------------------------------------------------
    def read_handshake(self) -> Handshake:
        self.seq = 0
        payload = self.read_packet()
        self.handshake = parse_handshake(payload)
        self.nonce = self.handshake.nonce
        return self.handshake

    def start_tls(self, ca_file: str | None = None, capabilities: int = DEFAULT_CAPABILITIES,
                  server_hostname: str = "127.0.0.1") -> None:
        """SSLRequest, then the TLS handshake (verified when `ca_file` is given)."""
        assert self.handshake
        caps = (capabilities | CLIENT_SSL) & self.handshake.capabilities
        req = struct.pack("<IIB", caps, 1 << 24, UTF8MB4_GENERAL_CI) + b"\0" * 23
        self.send_packet(req, 1)
        ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl._create_unverified_context()
        if not ca_file:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.tls = True

    def tls_handshake_coalesced(self, ca_file: str | None = None, capabilities: int = DEFAULT_CAPABILITIES,
                                server_hostname: str = "127.0.0.1") -> str:
        """SSLRequest and the TLS ClientHello in ONE segment (the server sends nothing in between,
        so a fast client does exactly this), then finish the TLS handshake over memory BIOs.
        Returns the TLS version; raises Closed / MySQLError / ssl.SSLError if the server balks.
        The connection is not usable for MySQL afterwards (test helper for the upgrade only)."""
        assert self.handshake
        caps = (capabilities | CLIENT_SSL) & self.handshake.capabilities
        req = struct.pack("<IIB", caps, 1 << 24, UTF8MB4_GENERAL_CI) + b"\0" * 23
        ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl._create_unverified_context()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.send_raw(header(len(req), 1) + req + outgoing.read())
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise Closed("closed during the TLS handshake")
            if data[4:5] == b"\xff" and not obj.version():
                raise parse_err(data[4:])
            incoming.write(data)
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    self.send_raw(pending)
                continue
            pending = outgoing.read()
            if pending:
                self.send_raw(pending)
            return obj.version() or ""

    def handshake_response(
        self,
        user: str,
        auth_response: bytes,
        database: str | None,
        plugin: str,
        capabilities: int = DEFAULT_CAPABILITIES,
        attrs: dict[str, str] | None = None,
        charset: int = UTF8MB4_GENERAL_CI,
    ) -> bytes:
        assert self.handshake
        caps = capabilities & self.handshake.capabilities
        if database is not None:
            caps |= CLIENT_CONNECT_WITH_DB
        if self.tls:
            caps |= CLIENT_SSL
        if attrs is None:
            attrs = {"_client_name": "sqlward-mywire", "program_name": "sqlward-tests"}
        self.capabilities = caps
        out = struct.pack("<IIB", caps, 1 << 24, charset) + b"\0" * 23
        out += user.encode("utf-8") + b"\0"
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out += lenenc_bytes(auth_response)
        else:
            out += bytes([len(auth_response)]) + auth_response
        if caps & CLIENT_CONNECT_WITH_DB:
            out += (database or "").encode("utf-8") + b"\0"
        if caps & CLIENT_PLUGIN_AUTH:
            out += plugin.encode("ascii") + b"\0"
        if caps & CLIENT_CONNECT_ATTRS:
            kv = b"".join(lenenc_bytes(k.encode()) + lenenc_bytes(v.encode()) for k, v in attrs.items())
            out += lenenc_bytes(kv)
        return out

    def scramble(self, plugin: str, password: bytes, nonce: bytes) -> bytes:
        if plugin == NATIVE:
            return myauth.native_scramble(password, nonce)
        if plugin == SHA2:
            return myauth.sha2_scramble(password, nonce)
        if plugin == CLEAR:
            return myauth.clear_password_payload(password)
        if plugin == ED25519:
            return myauth.ed25519_sign(password, nonce)
        if plugin == "sha256_password":
            return password + b"\0" if self.tls else b"\x01"
        raise WireError(f"unknown auth plugin {plugin!r}")

    def login(
        self,
        user: str,
        password: str | bytes | None,
        database: str | None = None,
        *,
        plugin: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        capabilities: int = DEFAULT_CAPABILITIES,
        auth_response: bytes | None = None,
        full_auth: str = "auto",
        attrs: dict[str, str] | None = None,
    ) -> OK:
        """Log in. `plugin` defaults to the server's. `auth_response` overrides the first
        answer (a wrong scramble forces caching_sha2's full path). `full_auth`: how to answer
        perform-full-authentication: "auto" (cleartext over TLS, RSA otherwise), "clear"
        (cleartext even on a plain connection), "rsa" (request the key even over TLS)."""
        assert self.handshake, "read_handshake() first"
        if tls or ca_file:
            self.start_tls(ca_file, capabilities)
        pw = password.encode("utf-8") if isinstance(password, str) else (password or b"")
        self._password = pw
        self.plugin = plugin or self.handshake.auth_plugin or NATIVE
        self.auth_trace = [f"plugin:{self.plugin}"]
        first = auth_response if auth_response is not None else self.scramble(self.plugin, pw, self.nonce)
        payload = self.handshake_response(user, first, database, self.plugin, capabilities, attrs)
        self.send_packet(payload, 2 if self.tls else 1)
        return self._auth_loop(full_auth)

    def _auth_loop(self, full_auth: str = "auto") -> OK:
        pw = self._password
        while True:
            pkt = self.read_packet()
            head = pkt[:1]
            if head == b"\x00":
                self.auth_trace.append("ok")
                return parse_ok(pkt)
            if head == b"\xff":
                self.auth_trace.append("err")
                raise parse_err(pkt)
            if head == b"\xfe":  # AuthSwitchRequest
                b = Buf(pkt, 1)
                if not b.left():
                    raise WireError("old AuthSwitchRequest (mysql_old_password) not supported")
                self.plugin = b.nul().decode("ascii")
                data = b.rest()
                self.nonce = data[:-1] if data.endswith(b"\0") else data
                self.auth_trace.append(f"switch:{self.plugin}")
                self.send_packet(self.scramble(self.plugin, pw, self.nonce))
                continue
            if head == b"\x01":  # AuthMoreData
                body = pkt[1:]
                if self.plugin == SHA2 and body == b"\x03":
                    self.auth_trace.append("fast-auth-ok")
                    continue
                if self.plugin == SHA2 and body == b"\x04":
                    self.auth_trace.append("full-auth")
                    if full_auth == "clear" or (full_auth == "auto" and self.tls):
                        self.send_packet(pw + b"\0")
                    else:
                        self.send_packet(b"\x02")
                        key = self.read_packet()
                        if key[:1] != b"\x01":
                            if key[:1] == b"\xff":
                                raise parse_err(key)
                            raise WireError(f"expected the public key (AuthMoreData), got {key[:20]!r}")
                        self.auth_trace.append("public-key")
                        self.public_key = key[1:]
                        self.send_packet(myauth.rsa_encrypt_password(pw, self.nonce, key[1:]))
                    continue
                raise WireError(f"unexpected AuthMoreData {body[:40]!r} for plugin {self.plugin}")
            raise WireError(f"unexpected packet during authentication: {pkt[:40]!r}")

    # -- commands ----------------------------------------------------------------------------
    def command(self, cmd: int, payload: bytes = b"") -> None:
        self.send_packet(bytes([cmd]) + payload, 0)

    def read_ok(self) -> OK:
        pkt = self.read_packet()
        if pkt[:1] == b"\x00":
            return parse_ok(pkt)
        if pkt[:1] == b"\xff":
            raise parse_err(pkt)
        if pkt[:1] == b"\xfe" and len(pkt) < 9:
            return parse_eof(pkt)
        if pkt[:1] == b"\xfe":
            return parse_ok(pkt)
        raise WireError(f"expected OK or ERR, got {pkt[:40]!r}")

    @property
    def deprecate_eof(self) -> bool:
        return bool(self.capabilities & CLIENT_DEPRECATE_EOF)

    def _end_packet(self, pkt: bytes) -> OK:
        return parse_eof(pkt) if len(pkt) < 9 and not self.deprecate_eof else parse_ok(pkt)

    def _read_columns(self, n: int, with_default: bool = False) -> list[Column]:
        cols = [parse_column(self.read_packet(), with_default) for _ in range(n)]
        if not self.deprecate_eof and n:
            pkt = self.read_packet()
            if pkt[:1] != b"\xfe":
                raise WireError(f"expected EOF after column definitions, got {pkt[:20]!r}")
        return cols

    def _read_rows(self, cols: list[Column], binary: bool, decode: bool = False) -> tuple[list[tuple[Any, ...]], OK]:
        rows: list[tuple[Any, ...]] = []
        while True:
            pkt = self.read_packet()
            if pkt[:1] == b"\xff":
                raise parse_err(pkt)
            if pkt[:1] == b"\xfe" and len(pkt) < MAX_PAYLOAD and (len(pkt) < 9 or self.deprecate_eof):
                return rows, self._end_packet(pkt)
            if binary:
                rows.append(self._binary_row(pkt, cols))
            else:
                b = Buf(pkt)
                vals = [b.lenenc_bytes() for _ in cols]
                if b.left():
                    raise WireError(f"{b.left()} bytes left over after a text row")
                rows.append(tuple(decode_text_value(v, c) for v, c in zip(vals, cols)) if decode else tuple(vals))

    def _binary_row(self, pkt: bytes, cols: list[Column]) -> tuple[Any, ...]:
        if pkt[:1] != b"\x00":
            raise WireError(f"binary row must start with 0x00, got {pkt[:1]!r}")
        b = Buf(pkt, 1)
        bitmap = b.take((len(cols) + 7 + 2) // 8)
        out = []
        for i, c in enumerate(cols):
            bit = i + 2
            if bitmap[bit // 8] & (1 << (bit % 8)):
                out.append(None)
            else:
                out.append(decode_binary_value(b, c))
        if b.left():
            raise WireError(f"{b.left()} bytes left over after a binary row")
        return tuple(out)

    def read_results(self, *, decode: bool = False, local_infile: bytes | None = None) -> list[ResultSet | OK]:
        """Every result of a COM_QUERY (multi-statements, multi-results). Raises MySQLError at
        the first ERR; results read before it are in `err.results`."""
        results: list[ResultSet | OK] = []
        while True:
            try:
                pkt = self.read_packet()
                if pkt[:1] == b"\xff":
                    raise parse_err(pkt)
                if pkt[:1] == b"\x00":
                    ok = parse_ok(pkt)
                    results.append(ok)
                    status = ok.status
                elif pkt[:1] == b"\xfb":  # LOCAL INFILE request: the file name follows
                    self.local_infile_requested = pkt[1:].decode("utf-8", "replace")
                    if local_infile:
                        self.send_packet(local_infile)
                    self.send_packet(b"")
                    continue
                else:
                    n = Buf(pkt).lenenc()
                    assert n is not None
                    cols = self._read_columns(n)
                    rows, end = self._read_rows(cols, binary=False, decode=decode)
                    results.append(ResultSet(cols, rows, end.status, end.warnings))
                    status = end.status
            except MySQLError as e:
                e.results = results  # type: ignore[attr-defined]
                raise
            if not status & SERVER_MORE_RESULTS_EXISTS:
                return results

    def query(self, sql: str | bytes, **kw: Any) -> list[ResultSet | OK]:
        self.command(COM_QUERY, sql.encode("utf-8") if isinstance(sql, str) else sql)
        return self.read_results(**kw)

    def query_rows(self, sql: str, decode: bool = True) -> list[tuple[Any, ...]]:
        """Rows of the (single) result set of `sql`, decoded to Python values."""
        res = [r for r in self.query(sql, decode=decode) if isinstance(r, ResultSet)]
        assert len(res) == 1, res
        return res[0].rows

    def scalar(self, sql: str) -> Any:
        rows = self.query_rows(sql)
        return rows[0][0]

    def ping(self) -> OK:
        self.command(COM_PING)
        return self.read_ok()

    def init_db(self, schema: str) -> OK:
        self.command(COM_INIT_DB, schema.encode("utf-8"))
        return self.read_ok()

    def quit(self) -> None:
        self.command(COM_QUIT)

    def statistics(self) -> str:
        self.command(COM_STATISTICS)
        pkt = self.read_packet()
        if pkt[:1] == b"\xff":
            raise parse_err(pkt)
        return pkt.decode("utf-8", "replace")

    def set_option(self, option: int) -> OK:
        self.command(COM_SET_OPTION, struct.pack("<H", option))
        return self.read_ok()

    def process_kill(self, conn_id: int) -> OK:
        self.command(COM_PROCESS_KILL, struct.pack("<I", conn_id))
        return self.read_ok()

    def reset_connection(self) -> OK:
        self.command(COM_RESET_CONNECTION)
        return self.read_ok()

    def field_list(self, table: str, wildcard: str = "") -> list[Column]:
        self.command(COM_FIELD_LIST, table.encode("utf-8") + b"\0" + wildcard.encode("utf-8"))
        cols = []
        while True:
            pkt = self.read_packet()
            if pkt[:1] == b"\xff":
                raise parse_err(pkt)
            if pkt[:1] == b"\xfe" and len(pkt) < 0xFFFFFF:
                return cols
            cols.append(parse_column(pkt, with_default=True))

    def change_user(
        self,
        user: str,
        password: str | bytes | None,
        database: str = "",
        *,
        plugin: str | None = None,
        auth_response: bytes | None = None,
        full_auth: str = "auto",
        charset: int = UTF8MB4_GENERAL_CI,
    ) -> OK:
        """COM_CHANGE_USER answered with the nonce of the original handshake (the server may
        switch plugins and send a fresh one)."""
        pw = password.encode("utf-8") if isinstance(password, str) else (password or b"")
        self._password = pw
        self.plugin = plugin or self.plugin or NATIVE
        self.auth_trace = [f"plugin:{self.plugin}"]
        first = auth_response if auth_response is not None else self.scramble(self.plugin, pw, self.nonce)
        out = user.encode("utf-8") + b"\0"
        out += bytes([len(first)]) + first
        out += database.encode("utf-8") + b"\0"
        out += struct.pack("<H", charset)
        if self.capabilities & CLIENT_PLUGIN_AUTH:
            out += self.plugin.encode("ascii") + b"\0"
        if self.capabilities & CLIENT_CONNECT_ATTRS:
            kv = lenenc_bytes(b"_client_name") + lenenc_bytes(b"sqlward-mywire")
            out += lenenc_bytes(kv)
        self.command(COM_CHANGE_USER, out)
        return self._auth_loop(full_auth)

    # -- prepared statements ----------------------------------------------------------------
    def stmt_prepare(self, sql: str) -> Prepared:
        self.command(COM_STMT_PREPARE, sql.encode("utf-8"))
        pkt = self.read_packet()
        if pkt[:1] == b"\xff":
            raise parse_err(pkt)
        if pkt[:1] != b"\x00":
            raise WireError(f"expected COM_STMT_PREPARE_OK, got {pkt[:20]!r}")
        b = Buf(pkt, 1)
        stmt_id = b.int(4)
        ncols = b.int(2)
        nparams = b.int(2)
        b.take(1)
        warnings = b.int(2) if b.left() >= 2 else 0
        params = self._read_columns(nparams)
        cols = self._read_columns(ncols)
        return Prepared(stmt_id, params, cols, warnings)

    def stmt_execute(self, st: Prepared, params: Sequence[Any] = (), *, long_data: Sequence[int] = ()) -> list[ResultSet | OK]:
        """Execute with `params` (types chosen from the Python values); indexes in `long_data`
        were sent with `stmt_send_long_data` and are bound as BLOB without a value."""
        if len(params) != len(st.params):
            raise ValueError(f"{len(st.params)} parameters expected, {len(params)} given")
        out = struct.pack("<IBI", st.stmt_id, 0, 1)
        if st.params:
            bitmap = bytearray((len(params) + 7) // 8)
            types = b""
            values = b""
            for i, v in enumerate(params):
                if i in long_data:
                    types += bytes([T_BLOB, 0])
                    continue
                t, flag, data = encode_param(v)
                if v is None:
                    bitmap[i // 8] |= 1 << (i % 8)
                types += bytes([t, flag])
                values += data
            out += bytes(bitmap) + b"\x01" + types + values
        self.command(COM_STMT_EXECUTE, out)
        results: list[ResultSet | OK] = []
        while True:
            pkt = self.read_packet()
            if pkt[:1] == b"\xff":
                err = parse_err(pkt)
                err.results = results  # type: ignore[attr-defined]
                raise err
            if pkt[:1] == b"\x00":
                ok = parse_ok(pkt)
                results.append(ok)
                status = ok.status
            else:
                n = Buf(pkt).lenenc()
                assert n is not None
                cols = self._read_columns(n)
                rows, end = self._read_rows(cols, binary=True)
                results.append(ResultSet(cols, rows, end.status, end.warnings))
                status = end.status
            if not status & SERVER_MORE_RESULTS_EXISTS:
                return results

    def stmt_send_long_data(self, st: Prepared, param: int, data: bytes) -> None:
        self.command(COM_STMT_SEND_LONG_DATA, struct.pack("<IH", st.stmt_id, param) + data)

    def stmt_reset(self, st: Prepared) -> OK:
        self.command(COM_STMT_RESET, struct.pack("<I", st.stmt_id))
        return self.read_ok()

    def stmt_close(self, st: Prepared) -> None:
        self.command(COM_STMT_CLOSE, struct.pack("<I", st.stmt_id))


def login(host: str, port: int, user: str, password: str | None, database: str | None = None,
          timeout: float = 10.0, **kw: Any) -> RawMySQL:
    """Connect and log in; the caller closes."""
    c = RawMySQL.connect(host, port, timeout)
    try:
        c.login(user, password, database, **kw)
    except BaseException:
        c.close()
        raise
    return c


def wait_closed(c: RawMySQL, timeout: float = 5.0) -> bool:
    """True when the peer closes within `timeout` (data received in between is discarded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, closed = c.read_all_until_closed(max(0.05, deadline - time.monotonic()))
        if closed:
            return True
    return False
