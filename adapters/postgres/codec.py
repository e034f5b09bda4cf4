"""Sans-IO codec for the PostgreSQL frontend/backend protocol, version 3.0.

Spec: https://www.postgresql.org/docs/current/protocol-message-formats.html

Two layers, both free of I/O:

* Framing. `Framer` splits a byte stream into `(type, body)` pairs: feed bytes, pull
  messages. `StartupFramer` does the same for the untyped packets of the startup phase
  (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest). Both enforce a size limit and raise
  `ProtocolViolation` for impossible lengths, so a hostile peer cannot make us buffer without bound.
* Messages. One frozen msgspec Struct per message kind. `encode(msg)` gives the wire bytes;
  `decode_frontend(type, body)` / `decode_backend(type, body)` give the Struct back. Round trips
  are exact (`decode(encode(m)) == m`), which the property tests check for every kind.

The message `p` is context dependent (PasswordMessage, SASLInitialResponse, SASLResponse,
GSSResponse): `decode_frontend` returns a `PasswordMessage` holding raw bytes and the
authentication code turns it into the right kind with `decode_sasl_initial` / `decode_sasl_response`.

Strings on the wire are NUL-terminated in the client encoding; they are decoded as UTF-8 with
`surrogateescape`, so any byte sequence survives a round trip unchanged.

The session driver's hot path does not build Structs for every message: it frames with the same
rules on a bytearray and decodes only the messages it must look into (see `session.py`).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Union

import msgspec

from sqlward.adapters.postgres import errors

# The typed errors and the gateway's ErrorResponse live with the adapter's other errors (one
# module holds every SQLSTATE); they are part of the codec's interface too.
ProtocolViolation = errors.ProtocolViolation
MessageTooLarge = errors.MessageTooLarge
error_response = errors.error_response

# --------------------------------------------------------------------------------------------
# Constants


class Frontend(IntEnum):
    """Type bytes of frontend (client to server) messages."""

    BIND = ord("B")
    CLOSE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    PARSE = ord("P")
    PASSWORD = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
    QUERY = ord("Q")
    SYNC = ord("S")
    TERMINATE = ord("X")


class Backend(IntEnum):
    """Type bytes of backend (server to client) messages."""

    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    COMMAND_COMPLETE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    COPY_BOTH_RESPONSE = ord("W")
    DATA_ROW = ord("D")
    EMPTY_QUERY_RESPONSE = ord("I")
    ERROR_RESPONSE = ord("E")
    FUNCTION_CALL_RESPONSE = ord("V")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    NO_DATA = ord("n")
    NOTICE_RESPONSE = ord("N")
    NOTIFICATION_RESPONSE = ord("A")
    PARAMETER_DESCRIPTION = ord("t")
    PARAMETER_STATUS = ord("S")
    PARSE_COMPLETE = ord("1")
    PORTAL_SUSPENDED = ord("s")
    READY_FOR_QUERY = ord("Z")
    ROW_DESCRIPTION = ord("T")


class AuthCode(IntEnum):
    OK = 0
    KERBEROS_V5 = 2
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


class StartupCode(IntEnum):
    """The 4-byte code after the length of an untyped startup-phase packet."""

    PROTOCOL_3_0 = 196608  # 3 << 16
    CANCEL_REQUEST = 80877102
    SSL_REQUEST = 80877103
    GSSENC_REQUEST = 80877104


PROTOCOL_3_0 = StartupCode.PROTOCOL_3_0
MAX_STARTUP_PACKET = 10_000  # same limit as the PostgreSQL server
NUL = b"\x00"




# --------------------------------------------------------------------------------------------
# Framing


class Framer:
    """Splits a stream of typed messages (1 type byte + int32 length incl. itself + body)."""

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = 1 << 30) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next(self) -> tuple[int, bytes] | None:
        """The next complete message as (type, body), or None until more bytes arrive."""
        buf = self._buf
        if len(buf) < 5:
            return None
        length = int.from_bytes(buf[1:5], "big")
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}")
        if length - 4 > self.max_size:
            raise MessageTooLarge(
                f"message of {length - 4} bytes exceeds the limit of {self.max_size} bytes"
            )
        end = 1 + length
        if len(buf) < end:
            return None
        mtype = buf[0]
        body = bytes(buf[5:end])
        del buf[:end]
        return mtype, body

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class StartupFramer:
    """Splits the untyped packets of the startup phase (int32 length incl. itself + body)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[:4], "big")
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if len(buf) < length:
            return None
        packet = bytes(buf[4:length])
        del buf[:length]
        return packet

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


# --------------------------------------------------------------------------------------------
# Low-level readers and writers


class _Reader:
    """Cursor over a message body; every read checks bounds and raises ProtocolViolation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolViolation("message body is truncated")

    def byte(self) -> int:
        self._need(1)
        b = self.data[self.pos]
        self.pos += 1
        return b

    def int16(self) -> int:
        self._need(2)
        (v,) = struct.unpack_from("!h", self.data, self.pos)
        self.pos += 2
        return v

    def uint16(self) -> int:
        self._need(2)
        (v,) = struct.unpack_from("!H", self.data, self.pos)
        self.pos += 2
        return v

    def int32(self) -> int:
        self._need(4)
        (v,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return v

    def count(self) -> int:
        """An int16 element count; negative counts are malformed."""
        n = self.int16()
        if n < 0:
            raise ProtocolViolation(f"negative count {n}")
        return n

    def uint32(self) -> int:
        self._need(4)
        (v,) = struct.unpack_from("!I", self.data, self.pos)
        self.pos += 4
        return v

    def raw(self, n: int) -> bytes:
        self._need(n)
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(v)

    def cstr(self) -> str:
        end = self.data.find(0, self.pos)
        if end < 0:
            raise ProtocolViolation("string is not NUL-terminated")
        v = self.data[self.pos : end].decode("utf-8", "surrogateescape")
        self.pos = end + 1
        return v

    def rest(self) -> bytes:
        v = self.data[self.pos :]
        self.pos = len(self.data)
        return bytes(v)

    def value(self) -> bytes | None:
        """An int32 length-prefixed value; -1 means NULL."""
        n = self.int32()
        if n == -1:
            return None
        if n < 0:
            raise ProtocolViolation(f"invalid value length {n}")
        return self.raw(n)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolViolation("unexpected bytes after the end of the message")


def _cstr(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    if 0 in b:
        raise ValueError("strings on the wire cannot contain NUL")
    return b + NUL


def _value(v: bytes | None) -> bytes:
    if v is None:
        return b"\xff\xff\xff\xff"
    return struct.pack("!i", len(v)) + v


def _frame(mtype: int, body: bytes) -> bytes:
    return struct.pack("!BI", mtype, len(body) + 4) + body


def _int16s(values: tuple[int, ...]) -> bytes:
    return struct.pack(f"!h{len(values)}h", len(values), *values)


# --------------------------------------------------------------------------------------------
# Startup-phase packets (untyped)


class StartupMessage(msgspec.Struct, frozen=True):
    protocol: int = PROTOCOL_3_0
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return default


class SSLRequest(msgspec.Struct, frozen=True):
    pass


class GSSENCRequest(msgspec.Struct, frozen=True):
    pass


class CancelRequest(msgspec.Struct, frozen=True):
    pid: int
    secret: bytes  # 4 bytes in protocol 3.0, up to 256 in 3.2


StartupPacket = Union[StartupMessage, SSLRequest, GSSENCRequest, CancelRequest]


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode the body of a startup-phase packet (after its length word)."""
    r = _Reader(packet)
    code = r.uint32()
    if code == StartupCode.SSL_REQUEST:
        r.end()
        return SSLRequest()
    if code == StartupCode.GSSENC_REQUEST:
        r.end()
        return GSSENCRequest()
    if code == StartupCode.CANCEL_REQUEST:
        pid = r.uint32()
        secret = r.rest()
        if not 4 <= len(secret) <= 256:
            raise ProtocolViolation("invalid cancel key length")
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        # Still return it: the caller answers with a clear "unsupported protocol" error.
        return StartupMessage(protocol=code, params=())
    params: list[tuple[str, str]] = []
    while True:
        name = r.cstr()
        if name == "":
            break
        params.append((name, r.cstr()))
    r.end()
    return StartupMessage(protocol=code, params=tuple(params))


def encode_startup(msg: StartupPacket) -> bytes:
    if isinstance(msg, SSLRequest):
        body = struct.pack("!I", StartupCode.SSL_REQUEST)
    elif isinstance(msg, GSSENCRequest):
        body = struct.pack("!I", StartupCode.GSSENC_REQUEST)
    elif isinstance(msg, CancelRequest):
        body = struct.pack("!II", StartupCode.CANCEL_REQUEST, msg.pid) + msg.secret
    else:
        body = struct.pack("!I", msg.protocol)
        body += b"".join(_cstr(k) + _cstr(v) for k, v in msg.params) + NUL
    return struct.pack("!I", len(body) + 4) + body


# --------------------------------------------------------------------------------------------
# Frontend messages


class Query(msgspec.Struct, frozen=True):
    sql: str


class Parse(msgspec.Struct, frozen=True):
    name: str
    sql: str
    param_types: tuple[int, ...] = ()


class Bind(msgspec.Struct, frozen=True):
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()


class Describe(msgspec.Struct, frozen=True):
    kind: str  # "S" statement or "P" portal
    name: str


class Close(msgspec.Struct, frozen=True):
    kind: str  # "S" statement or "P" portal
    name: str


class Execute(msgspec.Struct, frozen=True):
    portal: str
    max_rows: int = 0


class Flush(msgspec.Struct, frozen=True):
    pass


class Sync(msgspec.Struct, frozen=True):
    pass


class Terminate(msgspec.Struct, frozen=True):
    pass


class CopyData(msgspec.Struct, frozen=True):
    data: bytes


class CopyDone(msgspec.Struct, frozen=True):
    pass


class CopyFail(msgspec.Struct, frozen=True):
    message: str


class FunctionCall(msgspec.Struct, frozen=True):
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0


class PasswordMessage(msgspec.Struct, frozen=True):
    """The raw payload of a `p` message; see decode_sasl_* for the SASL variants."""

    data: bytes

    @property
    def password(self) -> str:
        body = self.data[:-1] if self.data.endswith(NUL) else self.data
        return body.decode("utf-8", "surrogateescape")

    @classmethod
    def from_password(cls, password: str) -> "PasswordMessage":
        return cls(_cstr(password))


class SASLInitialResponse(msgspec.Struct, frozen=True):
    mechanism: str
    data: bytes | None


class SASLResponse(msgspec.Struct, frozen=True):
    data: bytes


def decode_sasl_initial(msg: PasswordMessage) -> SASLInitialResponse:
    r = _Reader(msg.data)
    mech = r.cstr()
    data = r.value()
    r.end()
    return SASLInitialResponse(mech, data)


def decode_sasl_response(msg: PasswordMessage) -> SASLResponse:
    return SASLResponse(msg.data)


FrontendMessage = Union[
    Query, Parse, Bind, Describe, Close, Execute, Flush, Sync, Terminate, CopyData, CopyDone,
    CopyFail, FunctionCall, PasswordMessage, SASLInitialResponse, SASLResponse,
]


def _kind(r: _Reader) -> str:
    k = r.byte()
    if k not in (0x53, 0x50):  # S, P
        raise ProtocolViolation(f"invalid Describe/Close kind {k!r}")
    return chr(k)


def decode_frontend(mtype: int, body: bytes) -> FrontendMessage:
    r = _Reader(body)
    msg: FrontendMessage
    if mtype == Frontend.QUERY:
        msg = Query(r.cstr())
    elif mtype == Frontend.PARSE:
        name = r.cstr()
        sql = r.cstr()
        n = r.int16()
        if n < 0:
            raise ProtocolViolation("negative parameter count")
        msg = Parse(name, sql, tuple(r.uint32() for _ in range(n)))
    elif mtype == Frontend.BIND:
        portal = r.cstr()
        stmt = r.cstr()
        nf = r.int16()
        if nf < 0:
            raise ProtocolViolation("negative format count")
        fmts = tuple(r.int16() for _ in range(nf))
        np_ = r.int16()
        if np_ < 0:
            raise ProtocolViolation("negative parameter count")
        params = tuple(r.value() for _ in range(np_))
        nr = r.int16()
        if nr < 0:
            raise ProtocolViolation("negative result format count")
        msg = Bind(portal, stmt, fmts, params, tuple(r.int16() for _ in range(nr)))
    elif mtype == Frontend.DESCRIBE:
        msg = Describe(_kind(r), r.cstr())
    elif mtype == Frontend.CLOSE:
        msg = Close(_kind(r), r.cstr())
    elif mtype == Frontend.EXECUTE:
        msg = Execute(r.cstr(), r.int32())
    elif mtype == Frontend.FLUSH:
        msg = Flush()
    elif mtype == Frontend.SYNC:
        msg = Sync()
    elif mtype == Frontend.TERMINATE:
        msg = Terminate()
    elif mtype == Frontend.COPY_DATA:
        return CopyData(bytes(body))
    elif mtype == Frontend.COPY_DONE:
        msg = CopyDone()
    elif mtype == Frontend.COPY_FAIL:
        msg = CopyFail(r.cstr())
    elif mtype == Frontend.FUNCTION_CALL:
        oid = r.uint32()
        nf = r.count()
        fmts = tuple(r.int16() for _ in range(nf))
        na = r.count()
        args = tuple(r.value() for _ in range(na))
        msg = FunctionCall(oid, fmts, args, r.int16())
    elif mtype == Frontend.PASSWORD:
        return PasswordMessage(bytes(body))
    else:
        raise ProtocolViolation(f"unknown frontend message type {chr(mtype)!r}")
    r.end()
    return msg


def encode_frontend(msg: FrontendMessage) -> bytes:
    if isinstance(msg, Query):
        return _frame(Frontend.QUERY, _cstr(msg.sql))
    if isinstance(msg, Parse):
        body = _cstr(msg.name) + _cstr(msg.sql)
        body += struct.pack(f"!h{len(msg.param_types)}I", len(msg.param_types), *msg.param_types)
        return _frame(Frontend.PARSE, body)
    if isinstance(msg, Bind):
        body = _cstr(msg.portal) + _cstr(msg.statement) + _int16s(msg.param_formats)
        body += struct.pack("!h", len(msg.params)) + b"".join(_value(v) for v in msg.params)
        body += _int16s(msg.result_formats)
        return _frame(Frontend.BIND, body)
    if isinstance(msg, Describe):
        return _frame(Frontend.DESCRIBE, msg.kind.encode() + _cstr(msg.name))
    if isinstance(msg, Close):
        return _frame(Frontend.CLOSE, msg.kind.encode() + _cstr(msg.name))
    if isinstance(msg, Execute):
        return _frame(Frontend.EXECUTE, _cstr(msg.portal) + struct.pack("!i", msg.max_rows))
    if isinstance(msg, Flush):
        return _frame(Frontend.FLUSH, b"")
    if isinstance(msg, Sync):
        return _frame(Frontend.SYNC, b"")
    if isinstance(msg, Terminate):
        return _frame(Frontend.TERMINATE, b"")
    if isinstance(msg, CopyData):
        return _frame(Frontend.COPY_DATA, msg.data)
    if isinstance(msg, CopyDone):
        return _frame(Frontend.COPY_DONE, b"")
    if isinstance(msg, CopyFail):
        return _frame(Frontend.COPY_FAIL, _cstr(msg.message))
    if isinstance(msg, FunctionCall):
        body = struct.pack("!I", msg.function_oid) + _int16s(msg.arg_formats)
        body += struct.pack("!h", len(msg.args)) + b"".join(_value(v) for v in msg.args)
        body += struct.pack("!h", msg.result_format)
        return _frame(Frontend.FUNCTION_CALL, body)
    if isinstance(msg, PasswordMessage):
        return _frame(Frontend.PASSWORD, msg.data)
    if isinstance(msg, SASLInitialResponse):
        return _frame(Frontend.PASSWORD, _cstr(msg.mechanism) + _value(msg.data))
    if isinstance(msg, SASLResponse):
        return _frame(Frontend.PASSWORD, msg.data)
    raise TypeError(f"not a frontend message: {msg!r}")


# --------------------------------------------------------------------------------------------
# Backend messages


class AuthenticationOk(msgspec.Struct, frozen=True):
    pass


class AuthenticationKerberosV5(msgspec.Struct, frozen=True):
    pass


class AuthenticationCleartextPassword(msgspec.Struct, frozen=True):
    pass


class AuthenticationMD5Password(msgspec.Struct, frozen=True):
    salt: bytes


class AuthenticationGSS(msgspec.Struct, frozen=True):
    pass


class AuthenticationGSSContinue(msgspec.Struct, frozen=True):
    data: bytes


class AuthenticationSSPI(msgspec.Struct, frozen=True):
    pass


class AuthenticationSASL(msgspec.Struct, frozen=True):
    mechanisms: tuple[str, ...]


class AuthenticationSASLContinue(msgspec.Struct, frozen=True):
    data: bytes


class AuthenticationSASLFinal(msgspec.Struct, frozen=True):
    data: bytes


class BackendKeyData(msgspec.Struct, frozen=True):
    pid: int
    secret: bytes


class BindComplete(msgspec.Struct, frozen=True):
    pass


class CloseComplete(msgspec.Struct, frozen=True):
    pass


class CommandComplete(msgspec.Struct, frozen=True):
    tag: str


class BackendCopyData(msgspec.Struct, frozen=True):
    data: bytes


class BackendCopyDone(msgspec.Struct, frozen=True):
    pass


class CopyInResponse(msgspec.Struct, frozen=True):
    format: int
    column_formats: tuple[int, ...] = ()


class CopyOutResponse(msgspec.Struct, frozen=True):
    format: int
    column_formats: tuple[int, ...] = ()


class CopyBothResponse(msgspec.Struct, frozen=True):
    format: int
    column_formats: tuple[int, ...] = ()


class DataRow(msgspec.Struct, frozen=True):
    values: tuple[bytes | None, ...]


class EmptyQueryResponse(msgspec.Struct, frozen=True):
    pass


class ErrorResponse(msgspec.Struct, frozen=True):
    """Fields are (code, value) pairs in wire order; see `fields_dict`."""

    fields: tuple[tuple[str, str], ...]

    def field(self, code: str, default: str = "") -> str:
        for k, v in self.fields:
            if k == code:
                return v
        return default

    @property
    def sqlstate(self) -> str:
        return self.field("C")

    @property
    def message(self) -> str:
        return self.field("M")

    @property
    def severity(self) -> str:
        return self.field("V") or self.field("S")


class NoticeResponse(ErrorResponse, frozen=True):
    pass


class FunctionCallResponse(msgspec.Struct, frozen=True):
    value: bytes | None


class NegotiateProtocolVersion(msgspec.Struct, frozen=True):
    newest_minor: int
    unrecognized: tuple[str, ...] = ()


class NoData(msgspec.Struct, frozen=True):
    pass


class NotificationResponse(msgspec.Struct, frozen=True):
    pid: int
    channel: str
    payload: str


class ParameterDescription(msgspec.Struct, frozen=True):
    type_oids: tuple[int, ...]


class ParameterStatus(msgspec.Struct, frozen=True):
    name: str
    value: str


class ParseComplete(msgspec.Struct, frozen=True):
    pass


class PortalSuspended(msgspec.Struct, frozen=True):
    pass


class ReadyForQuery(msgspec.Struct, frozen=True):
    status: str  # "I" idle, "T" in a transaction block, "E" in a failed transaction block


class FieldDescription(msgspec.Struct, frozen=True):
    name: str
    table_oid: int = 0
    column_attr: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


class RowDescription(msgspec.Struct, frozen=True):
    fields: tuple[FieldDescription, ...]


BackendMessage = Union[
    AuthenticationOk, AuthenticationKerberosV5, AuthenticationCleartextPassword,
    AuthenticationMD5Password, AuthenticationGSS, AuthenticationGSSContinue, AuthenticationSSPI,
    AuthenticationSASL, AuthenticationSASLContinue, AuthenticationSASLFinal, BackendKeyData,
    BindComplete, CloseComplete, CommandComplete, BackendCopyData, BackendCopyDone,
    CopyInResponse, CopyOutResponse, CopyBothResponse, DataRow, EmptyQueryResponse,
    ErrorResponse, NoticeResponse, FunctionCallResponse, NegotiateProtocolVersion, NoData,
    NotificationResponse, ParameterDescription, ParameterStatus, ParseComplete,
    PortalSuspended, ReadyForQuery, RowDescription,
]

_EMPTY_BACKEND = {
    Backend.BIND_COMPLETE: BindComplete,
    Backend.CLOSE_COMPLETE: CloseComplete,
    Backend.COPY_DONE: BackendCopyDone,
    Backend.EMPTY_QUERY_RESPONSE: EmptyQueryResponse,
    Backend.NO_DATA: NoData,
    Backend.PARSE_COMPLETE: ParseComplete,
    Backend.PORTAL_SUSPENDED: PortalSuspended,
}


def _decode_fields(r: _Reader) -> tuple[tuple[str, str], ...]:
    fields = []
    while True:
        code = r.byte()
        if code == 0:
            break
        fields.append((chr(code), r.cstr()))
    return tuple(fields)


def decode_backend(mtype: int, body: bytes) -> BackendMessage:
    r = _Reader(body)
    msg: BackendMessage
    if mtype == Backend.AUTHENTICATION:
        code = r.int32()
        if code == AuthCode.OK:
            msg = AuthenticationOk()
        elif code == AuthCode.KERBEROS_V5:
            msg = AuthenticationKerberosV5()
        elif code == AuthCode.CLEARTEXT_PASSWORD:
            msg = AuthenticationCleartextPassword()
        elif code == AuthCode.MD5_PASSWORD:
            msg = AuthenticationMD5Password(r.raw(4))
        elif code == AuthCode.GSS:
            msg = AuthenticationGSS()
        elif code == AuthCode.GSS_CONTINUE:
            return AuthenticationGSSContinue(r.rest())
        elif code == AuthCode.SSPI:
            msg = AuthenticationSSPI()
        elif code == AuthCode.SASL:
            mechs = []
            while True:
                m = r.cstr()
                if m == "":
                    break
                mechs.append(m)
            msg = AuthenticationSASL(tuple(mechs))
        elif code == AuthCode.SASL_CONTINUE:
            return AuthenticationSASLContinue(r.rest())
        elif code == AuthCode.SASL_FINAL:
            return AuthenticationSASLFinal(r.rest())
        else:
            raise ProtocolViolation(f"unknown authentication request {code}")
    elif mtype == Backend.BACKEND_KEY_DATA:
        pid = r.uint32()
        key = r.rest()
        if not 4 <= len(key) <= 256:
            raise ProtocolViolation("invalid cancel key length")
        msg = BackendKeyData(pid, key)
    elif mtype in _EMPTY_BACKEND:
        msg = _EMPTY_BACKEND[Backend(mtype)]()
    elif mtype == Backend.COMMAND_COMPLETE:
        msg = CommandComplete(r.cstr())
    elif mtype == Backend.COPY_DATA:
        return BackendCopyData(bytes(body))
    elif mtype in (Backend.COPY_IN_RESPONSE, Backend.COPY_OUT_RESPONSE, Backend.COPY_BOTH_RESPONSE):
        fmt = r.byte()
        n = r.count()
        cols = tuple(r.int16() for _ in range(n))
        cls = {
            Backend.COPY_IN_RESPONSE: CopyInResponse,
            Backend.COPY_OUT_RESPONSE: CopyOutResponse,
            Backend.COPY_BOTH_RESPONSE: CopyBothResponse,
        }[Backend(mtype)]
        msg = cls(fmt, cols)
    elif mtype == Backend.DATA_ROW:
        n = r.int16()
        if n < 0:
            raise ProtocolViolation("negative column count")
        msg = DataRow(tuple(r.value() for _ in range(n)))
    elif mtype == Backend.ERROR_RESPONSE:
        msg = ErrorResponse(_decode_fields(r))
    elif mtype == Backend.NOTICE_RESPONSE:
        msg = NoticeResponse(_decode_fields(r))
    elif mtype == Backend.FUNCTION_CALL_RESPONSE:
        msg = FunctionCallResponse(r.value())
    elif mtype == Backend.NEGOTIATE_PROTOCOL_VERSION:
        minor = r.int32()
        n = r.int32()
        if n < 0:
            raise ProtocolViolation(f"negative count {n}")
        msg = NegotiateProtocolVersion(minor, tuple(r.cstr() for _ in range(n)))
    elif mtype == Backend.NOTIFICATION_RESPONSE:
        msg = NotificationResponse(r.uint32(), r.cstr(), r.cstr())
    elif mtype == Backend.PARAMETER_DESCRIPTION:
        n = r.count()
        msg = ParameterDescription(tuple(r.uint32() for _ in range(n)))
    elif mtype == Backend.PARAMETER_STATUS:
        msg = ParameterStatus(r.cstr(), r.cstr())
    elif mtype == Backend.READY_FOR_QUERY:
        status = chr(r.byte())
        if status not in "ITE":
            raise ProtocolViolation(f"invalid transaction status {status!r}")
        msg = ReadyForQuery(status)
    elif mtype == Backend.ROW_DESCRIPTION:
        n = r.int16()
        if n < 0:
            raise ProtocolViolation("negative field count")
        fields = []
        for _ in range(n):
            name = r.cstr()
            toid = r.uint32()
            attr = r.int16()
            type_oid = r.uint32()
            size = r.int16()
            mod = r.int32()
            fmt = r.int16()
            fields.append(FieldDescription(name, toid, attr, type_oid, size, mod, fmt))
        msg = RowDescription(tuple(fields))
    else:
        raise ProtocolViolation(f"unknown backend message type {chr(mtype)!r}")
    r.end()
    return msg


def _encode_fields(fields: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join(code.encode("ascii") + _cstr(v) for code, v in fields) + NUL


def _copy_response(mtype: int, msg: CopyInResponse | CopyOutResponse | CopyBothResponse) -> bytes:
    return _frame(mtype, struct.pack("!B", msg.format) + _int16s(msg.column_formats))


def encode_backend(msg: BackendMessage) -> bytes:
    R = Backend.AUTHENTICATION
    if isinstance(msg, AuthenticationOk):
        return _frame(R, struct.pack("!i", AuthCode.OK))
    if isinstance(msg, AuthenticationKerberosV5):
        return _frame(R, struct.pack("!i", AuthCode.KERBEROS_V5))
    if isinstance(msg, AuthenticationCleartextPassword):
        return _frame(R, struct.pack("!i", AuthCode.CLEARTEXT_PASSWORD))
    if isinstance(msg, AuthenticationMD5Password):
        return _frame(R, struct.pack("!i", AuthCode.MD5_PASSWORD) + msg.salt)
    if isinstance(msg, AuthenticationGSS):
        return _frame(R, struct.pack("!i", AuthCode.GSS))
    if isinstance(msg, AuthenticationGSSContinue):
        return _frame(R, struct.pack("!i", AuthCode.GSS_CONTINUE) + msg.data)
    if isinstance(msg, AuthenticationSSPI):
        return _frame(R, struct.pack("!i", AuthCode.SSPI))
    if isinstance(msg, AuthenticationSASL):
        body = b"".join(_cstr(m) for m in msg.mechanisms) + NUL
        return _frame(R, struct.pack("!i", AuthCode.SASL) + body)
    if isinstance(msg, AuthenticationSASLContinue):
        return _frame(R, struct.pack("!i", AuthCode.SASL_CONTINUE) + msg.data)
    if isinstance(msg, AuthenticationSASLFinal):
        return _frame(R, struct.pack("!i", AuthCode.SASL_FINAL) + msg.data)
    if isinstance(msg, BackendKeyData):
        return _frame(Backend.BACKEND_KEY_DATA, struct.pack("!I", msg.pid) + msg.secret)
    for mtype, cls in _EMPTY_BACKEND.items():
        if type(msg) is cls:
            return _frame(mtype, b"")
    if isinstance(msg, CommandComplete):
        return _frame(Backend.COMMAND_COMPLETE, _cstr(msg.tag))
    if isinstance(msg, BackendCopyData):
        return _frame(Backend.COPY_DATA, msg.data)
    if isinstance(msg, CopyInResponse):
        return _copy_response(Backend.COPY_IN_RESPONSE, msg)
    if isinstance(msg, CopyOutResponse):
        return _copy_response(Backend.COPY_OUT_RESPONSE, msg)
    if isinstance(msg, CopyBothResponse):
        return _copy_response(Backend.COPY_BOTH_RESPONSE, msg)
    if isinstance(msg, DataRow):
        body = struct.pack("!h", len(msg.values)) + b"".join(_value(v) for v in msg.values)
        return _frame(Backend.DATA_ROW, body)
    if isinstance(msg, NoticeResponse):
        return _frame(Backend.NOTICE_RESPONSE, _encode_fields(msg.fields))
    if isinstance(msg, ErrorResponse):
        return _frame(Backend.ERROR_RESPONSE, _encode_fields(msg.fields))
    if isinstance(msg, FunctionCallResponse):
        return _frame(Backend.FUNCTION_CALL_RESPONSE, _value(msg.value))
    if isinstance(msg, NegotiateProtocolVersion):
        body = struct.pack("!ii", msg.newest_minor, len(msg.unrecognized))
        body += b"".join(_cstr(o) for o in msg.unrecognized)
        return _frame(Backend.NEGOTIATE_PROTOCOL_VERSION, body)
    if isinstance(msg, NotificationResponse):
        body = struct.pack("!I", msg.pid) + _cstr(msg.channel) + _cstr(msg.payload)
        return _frame(Backend.NOTIFICATION_RESPONSE, body)
    if isinstance(msg, ParameterDescription):
        body = struct.pack(f"!h{len(msg.type_oids)}I", len(msg.type_oids), *msg.type_oids)
        return _frame(Backend.PARAMETER_DESCRIPTION, body)
    if isinstance(msg, ParameterStatus):
        return _frame(Backend.PARAMETER_STATUS, _cstr(msg.name) + _cstr(msg.value))
    if isinstance(msg, ReadyForQuery):
        return _frame(Backend.READY_FOR_QUERY, msg.status.encode("ascii"))
    if isinstance(msg, RowDescription):
        body = struct.pack("!h", len(msg.fields))
        for f in msg.fields:
            body += _cstr(f.name) + struct.pack(
                "!IhIhih", f.table_oid, f.column_attr, f.type_oid, f.type_size,
                f.type_modifier, f.format,
            )
        return _frame(Backend.ROW_DESCRIPTION, body)
    raise TypeError(f"not a backend message: {msg!r}")


# --------------------------------------------------------------------------------------------
# Helpers used by the session driver


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse / NoticeResponse body, tolerant of odd encodings."""
    try:
        return dict(_decode_fields(_Reader(body)))
    except ProtocolViolation:
        return {}


def command_rows(tag: str) -> int | None:
    """Row count of a CommandComplete tag ("SELECT 5", "INSERT 0 3", "COPY 7"), if any."""
    _, _, last = tag.rpartition(" ")
    return int(last) if last.isascii() and last.isdigit() else None
