"""Sans-IO messages of the MySQL / MariaDB client/server protocol: typed payloads both ways.

Specs (payload layouts, field by field):

* MySQL: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html, in particular
  page_protocol_connection_phase_packets_protocol_handshake_v10.html (HandshakeV10),
  ..._protocol_handshake_response.html (HandshakeResponse41), ..._protocol_ssl_request.html,
  ..._protocol_auth_switch_request.html, page_protocol_basic_ok_packet.html,
  page_protocol_basic_err_packet.html, page_protocol_basic_eof_packet.html,
  page_protocol_com_query_response_text_resultset_column_definition.html,
  page_protocol_binary_resultset.html, page_protocol_com_stmt_execute.html and the COM_* pages.
* MariaDB: https://mariadb.com/docs/server/reference/clientserver-protocol (1-connecting,
  2-text-protocol, 3-binary-protocol-prepared-statements, 4-server-response-packets,
  mariadb-protocol-differences-with-mysql).

How it works
------------
One frozen msgspec Struct per message kind. `encode(msg, capabilities)` gives the payload (no
packet header: frame it with `packets.encode_packets`); one `decode_*` function per kind gives
the Struct back. Round trips are exact (`decode(encode(m)) == m`) and the property tests check it
for every kind. Many layouts depend on the negotiated capabilities (`Capability`, an int of up to
64 bits); every codec function takes them and defaults to plain `CLIENT_PROTOCOL_41`. Decoders
raise only `ProtocolViolation` (or a subclass); encoders raise ValueError for values that cannot
be put on the wire.

The protocol is context dependent: the first byte does not say what a packet is. 0x00 is an OK
packet, a COM_STMT_PREPARE_OK or a binary row; 0xFE is an EOF packet, an OK packet under
CLIENT_DEPRECATE_EOF, an AuthSwitchRequest or a text row starting with a long value; 0x01 is
AuthMoreData or a column count of 1. The session driver knows what it is waiting for and calls
the right decoder; the classifiers `is_ok`, `is_err`, `is_eof`, `is_result_end` apply the rules
of the documentation for the command-response and row phases:

* OK: header 0x00 and length >= 7, or (with CLIENT_DEPRECATE_EOF) header 0xFE and length
  < 0xFFFFFF: the OK that replaces the EOF packet ending a result set;
* EOF: header 0xFE and length < 9 (only without CLIENT_DEPRECATE_EOF);
* ERR: header 0xFF (MariaDB progress reports are ERR-shaped with errno 0xFFFF and are *not*
  errors: `decode_err` returns a `ProgressReport` for them);
* 0xFB in a command response: LOCAL INFILE request.

Command responses (client sends the command with sequence id 0, the server answers 1, 2, ...):

* COM_QUERY / COM_STMT_EXECUTE: OK | ERR | LOCAL INFILE (COM_QUERY only) | result set:
  ColumnCount, column_count x ColumnDefinition41, EOF (omitted under CLIENT_DEPRECATE_EOF), rows
  (TextRow for COM_QUERY, BinaryRow for COM_STMT_EXECUTE), then EOF, or an OK with header 0xFE
  under CLIENT_DEPRECATE_EOF, or ERR. SERVER_MORE_RESULTS_EXISTS in the final OK/EOF announces
  another result (multi-statements, CALL). MariaDB CACHE_METADATA / MySQL
  OPTIONAL_RESULTSET_METADATA add a "metadata follows" byte to the column count; when it is 0
  the column definitions are not sent. With a cursor (flags of COM_STMT_EXECUTE) the response
  is the metadata and an EOF with SERVER_STATUS_CURSOR_EXISTS; rows come by COM_STMT_FETCH.
* COM_STMT_PREPARE: ERR | StmtPrepareOk, then num_params x ColumnDefinition41 (+ EOF) if
  num_params > 0, then num_columns x ColumnDefinition41 (+ EOF) if num_columns > 0.
* COM_FIELD_LIST: ColumnDefinition41 with a default value (`FieldListColumn`), then EOF.
* COM_STATISTICS: a bare string, no header. COM_SET_OPTION and COM_DEBUG: EOF (0xFE OK under
  DEPRECATE_EOF) or ERR. COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA: no response at all.
  COM_QUIT: the server closes. The rest: OK or ERR.
* LOCAL INFILE: after the 0xFB request the client sends the file in packets (continuing the
  sequence ids), then an empty packet; the server answers OK or ERR.

Connection phase (one exchange, sequence ids 0, 1, 2, ...): HandshakeV10 (server, 0) ->
[SSLRequest (1), TLS handshake] -> HandshakeResponse41 -> OK | ERR | AuthSwitchRequest |
AuthMoreData ..., the client answering with raw AuthSwitchResponse payloads.

MariaDB signals itself by clearing capability bit 0 (CLIENT_MYSQL, MySQL's CLIENT_LONG_PASSWORD
which MySQL always sets) in the greeting; it then puts 32 more capability bits (MARIADB_CLIENT_*)
in the last 4 of the 10 reserved bytes of HandshakeV10, and a MariaDB-aware client clears the
bit in its response too and echoes its extended bits in the last 4 of the 23 filler bytes of
SSLRequest / HandshakeResponse41. Its server version string starts with the replication hack
"5.5.5-" (e.g. "5.5.5-10.11.6-MariaDB"). `decode_*` fold those bits into the 64-bit
`capabilities`; `encode` writes them only when bit 0 is clear.

Per-session state the decoders need from the driver: the negotiated capabilities (client caps
& server caps, 64 bits); for COM_STMT_EXECUTE the statement's num_params, the parameter types
bound by its previous execution (types are only resent when new_params_bind_flag is 1) and the
parameters fed by COM_STMT_SEND_LONG_DATA since its last execution or COM_STMT_RESET (they have
no NULL bit and no value in the packet); for binary rows the column types of the result set.

When the two sides of a relay negotiated different CLIENT_DEPRECATE_EOF (or CACHE_METADATA,
QUERY_ATTRIBUTES, SESSION_TRACK), packets must be converted, not copied: drop or insert the EOF
after the column definitions, turn the final EOF into a 0xFE OK (or back, losing affected rows,
info and session state), strip or add the query-attribute prefix of COM_QUERY; and since that
changes the number of packets, renumber the sequence ids on the client side.

Text is UTF-8 with `surrogateescape` (lossless for any bytes); column values and auth data are
bytes. Binary-protocol values decode to int, float, bytes, `DateTime`, `Time`, `LONG_DATA` (a
parameter sent as long data) or None.
"""

from __future__ import annotations

import datetime as _dt
import struct
from collections.abc import Container, Sequence
from typing import Any, Union

import msgspec

from .constants import (
    AUTH_MORE_DATA,
    AUTH_NEXT_FACTOR,
    AUTH_SWITCH_REQUEST,
    EOF_HEADER,
    ERR_HEADER,
    LOCAL_INFILE_HEADER,
    MAX_PACKET_CHUNK,
    OK_HEADER,
    PARAM_UNSIGNED,
    PROGRESS_REPORT_ERRNO,
    Capability,
    Command,
    CursorType,
    FieldFlag,
    FieldType,
    MariaDBFieldAttr,
    ServerStatus,
    SessionTrack,
    sqlstate_of,
)
from .packets import (
    HandshakeError,
    ProtocolViolation,
    Reader,
    UnknownCommand,
    UnknownStatement,
    from_text,
    int1,
    int2,
    int4,
    lenenc_bytes,
    lenenc_bytes_or_null,
    lenenc_int,
    lenenc_str,
    nul_bytes,
    nul_str,
    to_text,
)

PROTOCOL_41 = int(Capability.PROTOCOL_41)
_CLIENT_MYSQL = int(Capability.LONG_PASSWORD)
_SECURE = int(Capability.SECURE_CONNECTION)
_PLUGIN_AUTH = int(Capability.PLUGIN_AUTH)
_LENENC_AUTH = int(Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA)
_CONNECT_WITH_DB = int(Capability.CONNECT_WITH_DB)
_CONNECT_ATTRS = int(Capability.CONNECT_ATTRS)
_ZSTD = int(Capability.ZSTD_COMPRESSION_ALGORITHM)
_SSL = int(Capability.SSL)
_TRANSACTIONS = int(Capability.TRANSACTIONS)
_SESSION_TRACK = int(Capability.SESSION_TRACK)
_DEPRECATE_EOF = int(Capability.DEPRECATE_EOF)
_QUERY_ATTRIBUTES = int(Capability.QUERY_ATTRIBUTES)
_OPTIONAL_METADATA = int(Capability.OPTIONAL_RESULTSET_METADATA)
_CACHE_METADATA = int(Capability.MARIADB_CLIENT_CACHE_METADATA)
_EXTENDED_TYPE_INFO = int(Capability.MARIADB_CLIENT_EXTENDED_TYPE_INFO)
_STATE_CHANGED = int(ServerStatus.SESSION_STATE_CHANGED)
_PARAM_COUNT_AVAILABLE = int(CursorType.PARAMETER_COUNT_AVAILABLE)

_SSL_REQUEST_LEN = 32

# --------------------------------------------------------------------------------------------
# Binary-protocol values


class DateTime(msgspec.Struct, frozen=True):
    """A DATE / DATETIME / TIMESTAMP of the binary protocol; zero dates are representable.

    On the wire: int<1> length (0, 4, 7 or 11), then year int<2>, month, day, hour, minute,
    second int<1> each and microsecond int<4>, as far as the length goes. `encode` picks the
    shortest length that keeps every field, as servers do.
    """

    year: int = 0
    month: int = 0
    day: int = 0
    hour: int = 0
    minute: int = 0
    second: int = 0
    microsecond: int = 0

    @classmethod
    def from_python(cls, value: _dt.date) -> "DateTime":
        if isinstance(value, _dt.datetime):
            return cls(value.year, value.month, value.day, value.hour, value.minute,
                       value.second, value.microsecond)
        return cls(value.year, value.month, value.day)

    def to_python(self) -> _dt.datetime | None:
        """A datetime, or None for values Python cannot represent (zero dates)."""
        try:
            return _dt.datetime(self.year, self.month, self.day, self.hour, self.minute,
                                self.second, self.microsecond)
        except (ValueError, OverflowError):
            return None


class Time(msgspec.Struct, frozen=True):
    """A TIME of the binary protocol (a signed duration up to 838:59:59 in SQL terms).

    On the wire: int<1> length (0, 8 or 12), then is_negative int<1>, days int<4>, hours,
    minutes, seconds int<1> each and microseconds int<4>, as far as the length goes.
    """

    negative: bool = False
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0
    microseconds: int = 0

    @classmethod
    def from_timedelta(cls, td: _dt.timedelta) -> "Time":
        negative = td < _dt.timedelta(0)
        if negative:
            td = -td
        secs = td.seconds
        return cls(negative, td.days, secs // 3600, secs // 60 % 60, secs % 60, td.microseconds)

    def to_timedelta(self) -> _dt.timedelta:
        td = _dt.timedelta(days=self.days, hours=self.hours, minutes=self.minutes,
                           seconds=self.seconds, microseconds=self.microseconds)
        return -td if self.negative else td


class LongData(msgspec.Struct, frozen=True):
    """Stands for a COM_STMT_EXECUTE parameter whose value was sent beforehand with
    COM_STMT_SEND_LONG_DATA: such a parameter has neither a NULL bit nor a value in the packet."""


LONG_DATA = LongData()

BinaryValue = Union[int, float, bytes, DateTime, Time, LongData, None]


class ParamType(msgspec.Struct, frozen=True):
    """The 2-byte type of a binary value: field type, then a flag byte (0x80 = unsigned)."""

    field_type: int
    flags: int = 0

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & PARAM_UNSIGNED)


_LENENC_TYPES = frozenset(
    int(t)
    for t in (
        FieldType.DECIMAL, FieldType.VARCHAR, FieldType.BIT, FieldType.VECTOR, FieldType.JSON,
        FieldType.NEWDECIMAL, FieldType.ENUM, FieldType.SET, FieldType.TINY_BLOB,
        FieldType.MEDIUM_BLOB, FieldType.LONG_BLOB, FieldType.BLOB, FieldType.VAR_STRING,
        FieldType.STRING, FieldType.GEOMETRY,
    )
)
_DATETIME_TYPES = frozenset(
    int(t) for t in (FieldType.DATE, FieldType.DATETIME, FieldType.TIMESTAMP, FieldType.NEWDATE,
                     FieldType.DATETIME2, FieldType.TIMESTAMP2)
)
_TIME_TYPES = frozenset((int(FieldType.TIME), int(FieldType.TIME2)))
# field type -> (byte width, signed struct, unsigned struct)
_INT_TYPES = {
    int(FieldType.TINY): (1, struct.Struct("<b"), struct.Struct("<B")),
    int(FieldType.SHORT): (2, struct.Struct("<h"), struct.Struct("<H")),
    int(FieldType.YEAR): (2, struct.Struct("<h"), struct.Struct("<H")),
    int(FieldType.LONG): (4, struct.Struct("<i"), struct.Struct("<I")),
    int(FieldType.INT24): (4, struct.Struct("<i"), struct.Struct("<I")),
    int(FieldType.LONGLONG): (8, struct.Struct("<q"), struct.Struct("<Q")),
}
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")


def _read_value(r: Reader, t: ParamType) -> BinaryValue:
    ft = t.field_type
    if ft in _LENENC_TYPES:
        return r.lenenc_bytes()
    spec = _INT_TYPES.get(ft)
    if spec is not None:
        width, signed, unsigned = spec
        fmt = unsigned if t.flags & PARAM_UNSIGNED else signed
        return fmt.unpack_from(r.data, r._need(width))[0]
    if ft == FieldType.DOUBLE:
        return r.float8()
    if ft == FieldType.FLOAT:
        return r.float4()
    if ft in _DATETIME_TYPES:
        n = r.int1()
        if n == 0:
            return DateTime()
        if n not in (4, 7, 11):
            raise r.fail(f"invalid DATETIME length {n}")
        year, month, day = r.int2(), r.int1(), r.int1()
        if n == 4:
            return DateTime(year, month, day)
        hour, minute, second = r.int1(), r.int1(), r.int1()
        micro = r.int4() if n == 11 else 0
        return DateTime(year, month, day, hour, minute, second, micro)
    if ft in _TIME_TYPES:
        n = r.int1()
        if n == 0:
            return Time()
        if n not in (8, 12):
            raise r.fail(f"invalid TIME length {n}")
        neg = r.int1()
        if neg > 1:
            raise r.fail(f"invalid TIME sign byte {neg}")
        days, hours, minutes, seconds = r.int4(), r.int1(), r.int1(), r.int1()
        micro = r.int4() if n == 12 else 0
        return Time(bool(neg), days, hours, minutes, seconds, micro)
    if ft == FieldType.NULL:
        return None
    raise r.fail(f"field type {ft} has no binary encoding")


def _write_value(out: list[bytes], t: ParamType, v: BinaryValue) -> None:
    ft = t.field_type
    if ft in _LENENC_TYPES:
        if isinstance(v, str):
            v = from_text(v)
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise ValueError(f"field type {ft} takes bytes, got {type(v).__name__}")
        out.append(lenenc_bytes(bytes(v)))
        return
    spec = _INT_TYPES.get(ft)
    if spec is not None:
        if not isinstance(v, int):
            raise ValueError(f"field type {ft} takes int, got {type(v).__name__}")
        _, signed, unsigned = spec
        try:
            out.append((unsigned if t.flags & PARAM_UNSIGNED else signed).pack(v))
        except struct.error:
            raise ValueError(f"{v} out of range for field type {ft}") from None
        return
    if ft in (FieldType.DOUBLE, FieldType.FLOAT):
        if not isinstance(v, (int, float)):
            raise ValueError(f"field type {ft} takes float, got {type(v).__name__}")
        try:
            out.append((_DOUBLE if ft == FieldType.DOUBLE else _FLOAT).pack(v))
        except (struct.error, OverflowError):
            raise ValueError(f"{v} out of range for field type {ft}") from None
        return
    if ft in _DATETIME_TYPES:
        if not isinstance(v, DateTime):
            raise ValueError(f"field type {ft} takes DateTime, got {type(v).__name__}")
        if v.microsecond:
            n = 11
        elif v.hour or v.minute or v.second:
            n = 7
        elif v.year or v.month or v.day:
            n = 4
        else:
            out.append(b"\x00")
            return
        part = int1(n) + int2(v.year) + int1(v.month) + int1(v.day)
        if n > 4:
            part += int1(v.hour) + int1(v.minute) + int1(v.second)
        if n > 7:
            part += int4(v.microsecond)
        out.append(part)
        return
    if ft in _TIME_TYPES:
        if not isinstance(v, Time):
            raise ValueError(f"field type {ft} takes Time, got {type(v).__name__}")
        if v.microseconds:
            n = 12
        elif v.negative or v.days or v.hours or v.minutes or v.seconds:
            n = 8
        else:
            out.append(b"\x00")
            return
        part = int1(n) + int1(1 if v.negative else 0) + int4(v.days)
        part += int1(v.hours) + int1(v.minutes) + int1(v.seconds)
        if n == 12:
            part += int4(v.microseconds)
        out.append(part)
        return
    if ft == FieldType.NULL:
        raise ValueError("a NULL-typed value must be None")
    raise ValueError(f"field type {ft} has no binary encoding")


def _bitmap(values: Sequence[Any], offset: int) -> bytes:  # None sets the bit, LONG_DATA does not
    bits = bytearray((len(values) + offset + 7) // 8)
    for i, v in enumerate(values):
        if v is None:
            p = i + offset
            bits[p >> 3] |= 1 << (p & 7)
    return bytes(bits)


def _is_null(bitmap: bytes, i: int, offset: int) -> bool:
    p = i + offset
    return bool(bitmap[p >> 3] & (1 << (p & 7)))


def _read_values(
    r: Reader, types: Sequence[ParamType], bitmap: bytes, offset: int, long_data: Container[int] = ()
) -> tuple:
    values: list[BinaryValue] = []
    for i, t in enumerate(types):
        if i in long_data:
            values.append(LONG_DATA)
        elif _is_null(bitmap, i, offset) or t.field_type == FieldType.NULL:
            values.append(None)
        else:
            values.append(_read_value(r, t))
    return tuple(values)


def _write_values(out: list[bytes], types: Sequence[ParamType], values: Sequence[Any]) -> None:
    for t, v in zip(types, values):
        if v is not None and not isinstance(v, LongData):
            _write_value(out, t, v)


# --------------------------------------------------------------------------------------------
# Small helpers


def _nul_or_rest(r: Reader) -> str:
    """A NUL-terminated string, or the rest of the packet when the NUL is missing (seen in
    old servers' plugin names)."""
    if r.data.find(0, r.pos) < 0:
        return r.rest_str()
    return r.nul_str()


def _decode_pairs(blob: bytes) -> tuple[tuple[str, str], ...]:
    r = Reader(blob)
    pairs = []
    while not r.at_end():
        pairs.append((r.lenenc_str(), r.lenenc_str()))
    return tuple(pairs)


def _encode_pairs(pairs: Sequence[tuple[str, str]]) -> bytes:
    return lenenc_bytes(b"".join(lenenc_str(k) + lenenc_str(v) for k, v in pairs))


def _sqlstate_bytes(sqlstate: str) -> bytes:
    b = from_text(sqlstate)
    if len(b) != 5:
        raise ValueError(f"SQLSTATE must be 5 bytes, got {sqlstate!r}")
    return b


def _check_header(r: Reader, expected: int, what: str) -> None:
    h = r.int1()
    if h != expected:
        raise r.fail(f"{what} must start with 0x{expected:02x}, got 0x{h:02x}")


# --------------------------------------------------------------------------------------------
# Connection phase


class HandshakeV10(msgspec.Struct, frozen=True):
    """The server's greeting (protocol version 10).

    `auth_plugin_data` is the whole nonce (parts 1 and 2 joined, 20 bytes for the usual
    plugins), without the NUL that terminates part 2 on the wire. `capabilities` includes
    MariaDB's extended bits when bit 0 (CLIENT_MYSQL) is clear.
    """

    server_version: str
    connection_id: int
    auth_plugin_data: bytes
    capabilities: int
    character_set: int = 45
    status_flags: int = int(ServerStatus.AUTOCOMMIT)
    auth_plugin_name: str = ""

    @property
    def is_mariadb(self) -> bool:
        return not self.capabilities & _CLIENT_MYSQL or "MariaDB" in self.server_version


def decode_handshake(payload: bytes) -> HandshakeV10:
    r = Reader(payload, error=HandshakeError)
    version = r.int1()
    if version != 10:
        raise HandshakeError(f"unsupported protocol version {version}")
    server_version = r.nul_str()
    connection_id = r.int4()
    part1 = r.fixed(8)
    r.int1()  # filler, terminates part 1 of the nonce
    caps = r.int2()
    charset = r.int1()
    status = r.int2()
    caps |= r.int2() << 16
    data_len = r.int1()
    reserved = r.fixed(10)
    if not caps & _CLIENT_MYSQL:
        caps |= int.from_bytes(reserved[6:], "little") << 32
    data = part1
    if caps & _SECURE:
        n = max(13, data_len - 8)  # part 2 and its terminating NUL
        data = part1 + r.fixed(n)[:-1]
    plugin = ""
    if caps & _PLUGIN_AUTH and not r.at_end():
        plugin = _nul_or_rest(r)
    r.end()
    return HandshakeV10(server_version, connection_id, data, caps, charset, status, plugin)


def _encode_handshake(m: HandshakeV10, capabilities: int) -> bytes:
    caps = m.capabilities
    data = m.auth_plugin_data
    if caps & _CLIENT_MYSQL and caps >> 32:
        raise ValueError("MariaDB extended capabilities need bit 0 (CLIENT_MYSQL) clear")
    if caps & _SECURE:
        if len(data) < 20 or (not caps & _PLUGIN_AUTH and len(data) != 20) or len(data) > 254:
            raise ValueError("auth plugin data must be 20 bytes (20..254 with CLIENT_PLUGIN_AUTH)")
    elif len(data) != 8:
        raise ValueError("auth plugin data must be 8 bytes without CLIENT_SECURE_CONNECTION")
    out = [b"\x0a", nul_str(m.server_version), int4(m.connection_id), data[:8], b"\x00",
           int2(caps & 0xFFFF), int1(m.character_set), int2(m.status_flags),
           int2((caps >> 16) & 0xFFFF), int1(len(data) + 1 if caps & _PLUGIN_AUTH else 0),
           bytes(6), int4(caps >> 32) if not caps & _CLIENT_MYSQL else bytes(4)]
    if caps & _SECURE:
        out.append(data[8:] + b"\x00")
    if caps & _PLUGIN_AUTH:
        out.append(nul_str(m.auth_plugin_name))
    elif m.auth_plugin_name:
        raise ValueError("auth_plugin_name needs CLIENT_PLUGIN_AUTH")
    return b"".join(out)


class SSLRequest(msgspec.Struct, frozen=True):
    """The 32-byte first half of a HandshakeResponse41 asking for TLS (CLIENT_SSL set)."""

    capabilities: int
    max_packet_size: int = 1 << 24
    character_set: int = 45


class HandshakeResponse41(msgspec.Struct, frozen=True):
    """The client's answer to the greeting. Optional parts follow `capabilities`:
    database (CONNECT_WITH_DB), auth_plugin_name (PLUGIN_AUTH), attributes (CONNECT_ATTRS, ordered
    key/value pairs), zstd_level (ZSTD_COMPRESSION_ALGORITHM); the auth response is lenenc with
    PLUGIN_AUTH_LENENC_CLIENT_DATA, else 1-byte length (SECURE_CONNECTION), else NUL-terminated.
    """

    capabilities: int
    max_packet_size: int = 1 << 24
    character_set: int = 45
    username: str = ""
    auth_response: bytes = b""
    database: str = ""
    auth_plugin_name: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    zstd_level: int = 0


def _read_client_head(r: Reader) -> tuple[int, int, int]:
    caps = r.int4()
    max_packet = r.int4()
    charset = r.int1()
    filler = r.fixed(23)
    if not caps & PROTOCOL_41:
        raise HandshakeError("pre-4.1 clients (HandshakeResponse320) are not supported")
    if not caps & _CLIENT_MYSQL:
        caps |= int.from_bytes(filler[19:], "little") << 32
    return caps, max_packet, charset


def _client_head(caps: int, max_packet: int, charset: int) -> bytes:
    if not caps & PROTOCOL_41:
        raise ValueError("CLIENT_PROTOCOL_41 is required")
    if caps & _CLIENT_MYSQL:
        if caps >> 32:
            raise ValueError("MariaDB extended capabilities need bit 0 (CLIENT_MYSQL) clear")
        ext = bytes(4)
    else:
        ext = int4(caps >> 32)
    return int4(caps & 0xFFFFFFFF) + int4(max_packet) + int1(charset) + bytes(19) + ext


def is_ssl_request(payload: bytes) -> bool:
    """True when a client's first packet is an SSLRequest (32 bytes, CLIENT_SSL set)."""
    return len(payload) == _SSL_REQUEST_LEN and bool(payload[1] & (_SSL >> 8))


def decode_ssl_request(payload: bytes) -> SSLRequest:
    r = Reader(payload, error=HandshakeError)
    caps, max_packet, charset = _read_client_head(r)
    r.end()
    if not caps & _SSL:
        raise HandshakeError("SSLRequest without CLIENT_SSL")
    return SSLRequest(caps, max_packet, charset)


def decode_handshake_response(payload: bytes) -> HandshakeResponse41:
    r = Reader(payload, error=HandshakeError)
    caps, max_packet, charset = _read_client_head(r)
    username = r.nul_str()
    if caps & _LENENC_AUTH:
        auth = r.lenenc_bytes()
    elif caps & _SECURE:
        auth = r.fixed(r.int1())
    else:
        auth = r.nul_bytes()
    database = plugin = ""
    attrs: tuple[tuple[str, str], ...] = ()
    zstd = 0
    # Optional tails are read when their flag is set and bytes remain (old clients set flags and
    # stop early); their presence is otherwise decided by the flags alone.
    if caps & _CONNECT_WITH_DB and not r.at_end():
        database = r.nul_str()
    if caps & _PLUGIN_AUTH and not r.at_end():
        plugin = _nul_or_rest(r)
    if caps & _CONNECT_ATTRS and not r.at_end():
        blob = r.lenenc_bytes()
        try:
            attrs = _decode_pairs(blob)
        except ProtocolViolation as e:
            raise HandshakeError(f"connection attributes: {e}") from None
    if caps & _ZSTD and not r.at_end():
        zstd = r.int1()
    r.end()
    return HandshakeResponse41(caps, max_packet, charset, username, auth, database, plugin, attrs, zstd)


def decode_client_handshake(payload: bytes, *, tls_active: bool = False) -> SSLRequest | HandshakeResponse41:
    """The client's first packet (or its second, over TLS). Before TLS, CLIENT_SSL means the
    packet is an SSLRequest: the server switches to TLS whatever else follows."""
    if not tls_active and len(payload) >= 4 and payload[1] & (_SSL >> 8):
        return decode_ssl_request(payload)
    return decode_handshake_response(payload)


def _encode_ssl_request(m: SSLRequest, capabilities: int) -> bytes:
    if not m.capabilities & _SSL:
        raise ValueError("an SSLRequest needs CLIENT_SSL")
    return _client_head(m.capabilities, m.max_packet_size, m.character_set)


def _encode_handshake_response(m: HandshakeResponse41, capabilities: int) -> bytes:
    caps = m.capabilities
    out = [_client_head(caps, m.max_packet_size, m.character_set), nul_str(m.username)]
    if caps & _LENENC_AUTH:
        out.append(lenenc_bytes(m.auth_response))
    elif caps & _SECURE:
        if len(m.auth_response) > 255:
            raise ValueError("auth response over 255 bytes needs PLUGIN_AUTH_LENENC_CLIENT_DATA")
        out.append(int1(len(m.auth_response)) + m.auth_response)
    else:
        out.append(nul_bytes(m.auth_response))
    for flag, present, name in ((_CONNECT_WITH_DB, m.database, "database"),
                                (_PLUGIN_AUTH, m.auth_plugin_name, "auth_plugin_name"),
                                (_CONNECT_ATTRS, m.attributes, "attributes"),
                                (_ZSTD, m.zstd_level, "zstd_level")):
        if present and not caps & flag:
            raise ValueError(f"{name} needs capability {Capability(flag).name}")
    if caps & _CONNECT_WITH_DB:
        out.append(nul_str(m.database))
    if caps & _PLUGIN_AUTH:
        out.append(nul_str(m.auth_plugin_name))
    if caps & _CONNECT_ATTRS:
        out.append(_encode_pairs(m.attributes))
    if caps & _ZSTD:
        out.append(int1(m.zstd_level))
    return b"".join(out)


class AuthSwitchRequest(msgspec.Struct, frozen=True):
    """0xFE, plugin name, plugin data (as sent: native and caching_sha2 add a NUL after the
    20-byte nonce). The pre-4.1 form (0xFE alone) decodes as plugin "mysql_old_password"."""

    plugin_name: str
    data: bytes = b""


class AuthSwitchResponse(msgspec.Struct, frozen=True):
    """Any raw client payload of the authentication exchange (no header byte)."""

    data: bytes


class AuthMoreData(msgspec.Struct, frozen=True):
    """0x01 + plugin data: caching_sha2 status (0x03 fast auth success, 0x04 perform full
    authentication), an RSA public key in PEM, ..."""

    data: bytes


class AuthNextFactor(msgspec.Struct, frozen=True):
    """0x02, plugin name, plugin data: MySQL multi-factor authentication, next factor."""

    plugin_name: str
    data: bytes = b""


def decode_auth_switch_request(payload: bytes) -> AuthSwitchRequest:
    r = Reader(payload, error=HandshakeError)
    _check_header(r, AUTH_SWITCH_REQUEST, "AuthSwitchRequest")
    if r.at_end():
        return AuthSwitchRequest("mysql_old_password", b"")
    name = _nul_or_rest(r)
    return AuthSwitchRequest(name, r.rest())


def decode_auth_switch_response(payload: bytes) -> AuthSwitchResponse:
    return AuthSwitchResponse(bytes(payload))


def decode_auth_more_data(payload: bytes) -> AuthMoreData:
    r = Reader(payload, error=HandshakeError)
    _check_header(r, AUTH_MORE_DATA, "AuthMoreData")
    return AuthMoreData(r.rest())


def decode_auth_next_factor(payload: bytes) -> AuthNextFactor:
    r = Reader(payload, error=HandshakeError)
    _check_header(r, AUTH_NEXT_FACTOR, "AuthNextFactor")
    name = _nul_or_rest(r)
    return AuthNextFactor(name, r.rest())


# --------------------------------------------------------------------------------------------
# Generic responses


class SessionStateChange(msgspec.Struct, frozen=True):
    """One entry of an OK packet's session state information: type and its data (the inner
    bytes of the entry's lenenc string; see `SessionTrack` for their layout per type)."""

    type: int
    data: bytes


class OkPacket(msgspec.Struct, frozen=True):
    """OK packet. `eof` marks the 0xFE-headed form that ends a result set under
    CLIENT_DEPRECATE_EOF. `session_state` is only present with CLIENT_SESSION_TRACK and
    SERVER_SESSION_STATE_CHANGED."""

    affected_rows: int = 0
    last_insert_id: int = 0
    status_flags: int = 0
    warnings: int = 0
    info: str = ""
    session_state: tuple[SessionStateChange, ...] = ()
    eof: bool = False

    def schema(self) -> str | None:
        """The schema the session switched to (SESSION_TRACK_SCHEMA), if any."""
        found = None
        for entry in self.session_state:
            if entry.type == SessionTrack.SCHEMA:
                found = Reader(entry.data).lenenc_str()
        return found

    def system_variables(self) -> tuple[tuple[str, str], ...]:
        """(name, value) of every SESSION_TRACK_SYSTEM_VARIABLES entry, in order."""
        out = []
        for entry in self.session_state:
            if entry.type == SessionTrack.SYSTEM_VARIABLES:
                r = Reader(entry.data)
                out.append((r.lenenc_str(), r.lenenc_str()))
        return tuple(out)


def _ok_min_length(capabilities: int) -> int:
    if capabilities & PROTOCOL_41:
        return 7
    return 5 if capabilities & _TRANSACTIONS else 3


def decode_ok(payload: bytes, capabilities: int = PROTOCOL_41) -> OkPacket:
    r = Reader(payload)
    header = r.int1()
    if header not in (OK_HEADER, EOF_HEADER):
        raise r.fail(f"OK packet must start with 0x00 or 0xFE, got 0x{header:02x}")
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = warnings = 0
    if capabilities & PROTOCOL_41:
        status = r.int2()
        warnings = r.int2()
    elif capabilities & _TRANSACTIONS:
        status = r.int2()
    info = ""
    state: tuple[SessionStateChange, ...] = ()
    if capabilities & _SESSION_TRACK:
        # The info string is left out when it is empty and the session state did not change.
        if not r.at_end():
            info = r.lenenc_str()
            if status & _STATE_CHANGED and not r.at_end():
                sr = Reader(r.lenenc_bytes())
                entries = []
                while not sr.at_end():
                    kind = sr.int1()
                    entries.append(SessionStateChange(kind, sr.lenenc_bytes()))
                state = tuple(entries)
        r.end()
    else:
        info = r.rest_str()
    return OkPacket(affected, insert_id, status, warnings, info, state, header == EOF_HEADER)


def _encode_ok(m: OkPacket, capabilities: int) -> bytes:
    out = [b"\xfe" if m.eof else b"\x00", lenenc_int(m.affected_rows), lenenc_int(m.last_insert_id)]
    if capabilities & PROTOCOL_41:
        out.append(int2(m.status_flags) + int2(m.warnings))
    elif capabilities & _TRANSACTIONS:
        out.append(int2(m.status_flags))
    state_changed = bool(m.status_flags & _STATE_CHANGED) and bool(capabilities & _SESSION_TRACK)
    if m.session_state and not state_changed:
        raise ValueError("session_state needs CLIENT_SESSION_TRACK and SERVER_SESSION_STATE_CHANGED")
    if capabilities & _SESSION_TRACK:
        if m.info or state_changed:
            out.append(lenenc_str(m.info))
        if state_changed:
            out.append(lenenc_bytes(b"".join(int1(e.type) + lenenc_bytes(e.data) for e in m.session_state)))
    else:
        out.append(from_text(m.info))
    return b"".join(out)


class ErrPacket(msgspec.Struct, frozen=True):
    """ERR packet. `sqlstate` "" is the pre-4.1 form without the '#' marker."""

    errno: int
    sqlstate: str = "HY000"
    message: str = ""


class ProgressReport(msgspec.Struct, frozen=True):
    """MariaDB progress report (MARIADB_CLIENT_PROGRESS): an ERR-shaped packet with errno
    0xFFFF sent while a long statement runs. Not an error: more packets follow."""

    stage: int
    max_stage: int
    progress: int  # int<3>, per mille of the current stage, times 1000
    info: str = ""


def decode_err(payload: bytes, capabilities: int = PROTOCOL_41) -> ErrPacket | ProgressReport:
    r = Reader(payload)
    _check_header(r, ERR_HEADER, "ERR packet")
    errno = r.int2()
    if errno == PROGRESS_REPORT_ERRNO:
        stage, max_stage, progress = r.int1(), r.int1(), r.int3()
        info = r.lenenc_str()
        r.end()
        return ProgressReport(stage, max_stage, progress, info)
    sqlstate = ""
    if not r.at_end() and r.peek() == 0x23:  # '#'
        r.pos += 1
        sqlstate = to_text(r.fixed(5))
    return ErrPacket(errno, sqlstate, r.rest_str())


def _encode_err(m: ErrPacket, capabilities: int) -> bytes:
    if m.errno == PROGRESS_REPORT_ERRNO:
        raise ValueError("errno 0xFFFF is a progress report")
    message = from_text(m.message)
    if m.sqlstate:
        return b"\xff" + int2(m.errno) + b"#" + _sqlstate_bytes(m.sqlstate) + message
    if message.startswith(b"#"):
        raise ValueError("a message without SQLSTATE cannot start with '#'")
    return b"\xff" + int2(m.errno) + message


def _encode_progress(m: ProgressReport, capabilities: int) -> bytes:
    return (b"\xff\xff\xff" + int1(m.stage) + int1(m.max_stage) + m.progress.to_bytes(3, "little")
            + lenenc_str(m.info))


class EofPacket(msgspec.Struct, frozen=True):
    """EOF packet (0xFE; with PROTOCOL_41 warnings *then* status, the reverse of OK)."""

    warnings: int = 0
    status_flags: int = 0


def decode_eof(payload: bytes, capabilities: int = PROTOCOL_41) -> EofPacket:
    r = Reader(payload)
    _check_header(r, EOF_HEADER, "EOF packet")
    warnings = status = 0
    if capabilities & PROTOCOL_41:
        warnings = r.int2()
        status = r.int2()
    r.end()
    return EofPacket(warnings, status)


def _encode_eof(m: EofPacket, capabilities: int) -> bytes:
    if capabilities & PROTOCOL_41:
        return b"\xfe" + int2(m.warnings) + int2(m.status_flags)
    return b"\xfe"


class LocalInfileRequest(msgspec.Struct, frozen=True):
    """0xFB + file name: the server asks the client for a local file (LOAD DATA LOCAL)."""

    filename: str


def decode_local_infile(payload: bytes) -> LocalInfileRequest:
    r = Reader(payload)
    _check_header(r, LOCAL_INFILE_HEADER, "LOCAL INFILE request")
    return LocalInfileRequest(r.rest_str())


# --------------------------------------------------------------------------------------------
# Result sets


class ColumnCount(msgspec.Struct, frozen=True):
    """First packet of a result set. `metadata_follows` is on the wire only with MySQL's
    OPTIONAL_RESULTSET_METADATA (before the count) or MariaDB's CACHE_METADATA (after it)."""

    count: int
    metadata_follows: int = 1


def decode_column_count(payload: bytes, capabilities: int = PROTOCOL_41) -> ColumnCount:
    r = Reader(payload)
    follows = 1
    if capabilities & _OPTIONAL_METADATA:
        follows = r.int1()
        count = r.lenenc_int()
    elif capabilities & _CACHE_METADATA:
        count = r.lenenc_int()
        follows = r.int1()
    else:
        count = r.lenenc_int()
    r.end()
    return ColumnCount(count, follows)


def _encode_column_count(m: ColumnCount, capabilities: int) -> bytes:
    if capabilities & _OPTIONAL_METADATA:
        return int1(m.metadata_follows) + lenenc_int(m.count)
    if capabilities & _CACHE_METADATA:
        return lenenc_int(m.count) + int1(m.metadata_follows)
    if m.metadata_follows != 1:
        raise ValueError("skipped metadata needs OPTIONAL_RESULTSET_METADATA or CACHE_METADATA")
    return lenenc_int(m.count)


class ColumnDefinition41(msgspec.Struct, frozen=True):
    """Column metadata. `extended` holds MariaDB's extended type info (MARIADB_CLIENT_EXTENDED_
    TYPE_INFO) as (key, value) pairs: key 0 = data type name ("json", "uuid", ...), 1 = format."""

    catalog: str = "def"
    schema: str = ""
    table: str = ""
    org_table: str = ""
    name: str = ""
    org_name: str = ""
    character_set: int = 63
    column_length: int = 0
    column_type: int = int(FieldType.VAR_STRING)
    flags: int = 0
    decimals: int = 0
    extended: tuple[tuple[int, str], ...] = ()

    @property
    def binary_type(self) -> ParamType:
        """How this column's values travel in binary rows."""
        return ParamType(self.column_type, PARAM_UNSIGNED if self.flags & FieldFlag.UNSIGNED else 0)

    def _ext(self, key: int) -> str | None:
        for k, v in self.extended:
            if k == key:
                return v
        return None

    @property
    def data_type_name(self) -> str | None:
        return self._ext(MariaDBFieldAttr.DATA_TYPE_NAME)

    @property
    def format_name(self) -> str | None:
        return self._ext(MariaDBFieldAttr.FORMAT_NAME)


class FieldListColumn(ColumnDefinition41, frozen=True):
    """A column definition in a COM_FIELD_LIST response: a default value follows."""

    default: bytes | None = None


def column_types(columns: Sequence[ColumnDefinition41]) -> tuple[ParamType, ...]:
    """The binary types of a result set's columns, for `decode_binary_row`."""
    return tuple(c.binary_type for c in columns)


def decode_column_definition(
    payload: bytes, capabilities: int = PROTOCOL_41, *, field_list: bool = False
) -> ColumnDefinition41:
    r = Reader(payload)
    catalog, schema, table, org_table, name, org_name = (
        r.lenenc_str(), r.lenenc_str(), r.lenenc_str(), r.lenenc_str(), r.lenenc_str(), r.lenenc_str()
    )
    extended: tuple[tuple[int, str], ...] = ()
    if capabilities & _EXTENDED_TYPE_INFO:
        er = Reader(r.lenenc_bytes())
        items = []
        while not er.at_end():
            key = er.int1()
            items.append((key, er.lenenc_str()))
        extended = tuple(items)
    fixed_len = r.lenenc_int()
    if fixed_len < 10:
        raise r.fail(f"invalid length of fixed fields {fixed_len}")
    charset, length, ctype, flags, decimals = r.int2(), r.int4(), r.int1(), r.int2(), r.int1()
    r.fixed(fixed_len - 10)  # filler, 2 zero bytes
    if field_list:
        default = r.lenenc_bytes_or_null()
        r.end()
        return FieldListColumn(catalog, schema, table, org_table, name, org_name, charset, length,
                               ctype, flags, decimals, extended, default)
    r.end()
    return ColumnDefinition41(catalog, schema, table, org_table, name, org_name, charset, length,
                              ctype, flags, decimals, extended)


def _encode_column_definition(m: ColumnDefinition41, capabilities: int) -> bytes:
    out = [lenenc_str(m.catalog), lenenc_str(m.schema), lenenc_str(m.table), lenenc_str(m.org_table),
           lenenc_str(m.name), lenenc_str(m.org_name)]
    if capabilities & _EXTENDED_TYPE_INFO:
        out.append(lenenc_bytes(b"".join(int1(k) + lenenc_str(v) for k, v in m.extended)))
    elif m.extended:
        raise ValueError("extended type info needs MARIADB_CLIENT_EXTENDED_TYPE_INFO")
    out.append(b"\x0c" + int2(m.character_set) + int4(m.column_length) + int1(m.column_type)
               + int2(m.flags) + int1(m.decimals) + b"\x00\x00")
    if isinstance(m, FieldListColumn):
        out.append(lenenc_bytes_or_null(m.default))
    return b"".join(out)


class TextRow(msgspec.Struct, frozen=True):
    """A row of a text result set: every value a lenenc string, NULL as 0xFB."""

    values: tuple[bytes | None, ...]


def decode_text_row(payload: bytes, column_count: int | None = None) -> TextRow:
    r = Reader(payload)
    values = []
    if column_count is None:
        while not r.at_end():
            values.append(r.lenenc_bytes_or_null())
    else:
        for _ in range(column_count):
            values.append(r.lenenc_bytes_or_null())
        r.end()
    return TextRow(tuple(values))


def _encode_text_row(m: TextRow, capabilities: int) -> bytes:
    return b"".join(lenenc_bytes_or_null(v) for v in m.values)


class BinaryRow(msgspec.Struct, frozen=True):
    """A row of a binary result set (COM_STMT_EXECUTE / COM_STMT_FETCH). Decoding and encoding
    need the column types: `decode_binary_row(payload, types)`, `encode_binary_row(values, types)`."""

    values: tuple[BinaryValue, ...]


def decode_binary_row(payload: bytes, types: Sequence[ParamType]) -> BinaryRow:
    """0x00, NULL bitmap ((n + 9) // 8 bytes, bit offset 2), then each non-NULL value."""
    r = Reader(payload)
    _check_header(r, 0x00, "binary row")
    bitmap = r.fixed((len(types) + 9) // 8)
    values = _read_values(r, types, bitmap, 2)
    r.end()
    return BinaryRow(values)


def encode_binary_row(values: Sequence[BinaryValue] | BinaryRow, types: Sequence[ParamType]) -> bytes:
    if isinstance(values, BinaryRow):
        values = values.values
    if len(values) != len(types):
        raise ValueError(f"{len(values)} values for {len(types)} columns")
    if any(isinstance(v, LongData) for v in values):
        raise ValueError("LONG_DATA only stands for COM_STMT_EXECUTE parameters")
    out = [b"\x00", _bitmap(values, 2)]
    _write_values(out, types, values)
    return b"".join(out)


class StmtPrepareOk(msgspec.Struct, frozen=True):
    """COM_STMT_PREPARE_OK. `metadata_follows` is on the wire only with MySQL's
    OPTIONAL_RESULTSET_METADATA."""

    statement_id: int
    num_columns: int = 0
    num_params: int = 0
    warnings: int = 0
    metadata_follows: int = 1


def decode_stmt_prepare_ok(payload: bytes, capabilities: int = PROTOCOL_41) -> StmtPrepareOk:
    r = Reader(payload)
    _check_header(r, 0x00, "COM_STMT_PREPARE_OK")
    stmt_id, columns, params = r.int4(), r.int2(), r.int2()
    r.int1()  # reserved filler
    warnings = r.int2() if not r.at_end() else 0
    follows = 1
    if capabilities & _OPTIONAL_METADATA and not r.at_end():
        follows = r.int1()
    r.end()
    return StmtPrepareOk(stmt_id, columns, params, warnings, follows)


def _encode_stmt_prepare_ok(m: StmtPrepareOk, capabilities: int) -> bytes:
    out = b"\x00" + int4(m.statement_id) + int2(m.num_columns) + int2(m.num_params) + b"\x00" + int2(m.warnings)
    if capabilities & _OPTIONAL_METADATA:
        return out + int1(m.metadata_follows)
    if m.metadata_follows != 1:
        raise ValueError("skipped metadata needs OPTIONAL_RESULTSET_METADATA")
    return out


# --------------------------------------------------------------------------------------------
# Commands (client -> server)


class QueryAttribute(msgspec.Struct, frozen=True):
    """A named parameter of COM_QUERY (CLIENT_QUERY_ATTRIBUTES), e.g. from `query_attributes`."""

    name: str
    type: ParamType
    value: BinaryValue = None


class ComQuery(msgspec.Struct, frozen=True):
    sql: str
    attributes: tuple[QueryAttribute, ...] = ()


class ComInitDb(msgspec.Struct, frozen=True):
    schema: str


class ComFieldList(msgspec.Struct, frozen=True):
    table: str
    wildcard: str = ""


class ComQuit(msgspec.Struct, frozen=True):
    pass


class ComPing(msgspec.Struct, frozen=True):
    pass


class ComStatistics(msgspec.Struct, frozen=True):
    pass


class ComDebug(msgspec.Struct, frozen=True):
    pass


class ComResetConnection(msgspec.Struct, frozen=True):
    pass


class ComProcessKill(msgspec.Struct, frozen=True):
    connection_id: int


class ComSetOption(msgspec.Struct, frozen=True):
    option: int  # SetOption


class ComChangeUser(msgspec.Struct, frozen=True):
    """COM_CHANGE_USER. `character_set` None means the packet ends after the schema (then no
    plugin name or attributes); otherwise auth_plugin_name (PLUGIN_AUTH) and attributes
    (CONNECT_ATTRS) follow as the capabilities say. The auth response has a 1-byte length with
    SECURE_CONNECTION (even under PLUGIN_AUTH_LENENC_CLIENT_DATA), else it is NUL-terminated."""

    user: str
    auth_response: bytes = b""
    schema: str = ""
    character_set: int | None = None
    auth_plugin_name: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


class ComStmtPrepare(msgspec.Struct, frozen=True):
    sql: str


class ComStmtExecute(msgspec.Struct, frozen=True):
    """COM_STMT_EXECUTE. `types` are the parameter types in effect: sent in this packet when
    `new_params_bound`, else the ones bound by an earlier execution (passed to the decoder).
    `names` (one per parameter, "" for positional ones) are sent only with
    CLIENT_QUERY_ATTRIBUTES and bound types. A value is `LONG_DATA` for a parameter sent with
    COM_STMT_SEND_LONG_DATA (not repeated here). MariaDB: statement id 0xFFFFFFFF means "the
    statement prepared last" (pipelined PREPARE + EXECUTE)."""

    statement_id: int
    flags: int = 0
    iteration_count: int = 1
    values: tuple[BinaryValue, ...] = ()
    types: tuple[ParamType, ...] = ()
    names: tuple[str, ...] = ()
    new_params_bound: bool = True


class ComStmtSendLongData(msgspec.Struct, frozen=True):
    statement_id: int
    param_id: int
    data: bytes = b""


class ComStmtClose(msgspec.Struct, frozen=True):
    statement_id: int


class ComStmtReset(msgspec.Struct, frozen=True):
    statement_id: int


class ComStmtFetch(msgspec.Struct, frozen=True):
    statement_id: int
    num_rows: int


class ComOther(msgspec.Struct, frozen=True):
    """Any other command (COM_SLEEP, COM_BINLOG_DUMP, MariaDB COM_STMT_BULK_EXECUTE, ...),
    kept raw: the gateway refuses these rather than relaying what it cannot read."""

    command: int
    data: bytes = b""


CommandMessage = Union[
    ComQuery, ComInitDb, ComFieldList, ComQuit, ComPing, ComStatistics, ComDebug,
    ComResetConnection, ComProcessKill, ComSetOption, ComChangeUser, ComStmtPrepare,
    ComStmtExecute, ComStmtSendLongData, ComStmtClose, ComStmtReset, ComStmtFetch, ComOther,
]

_COMMAND_BYTES = frozenset(int(c) for c in Command)


def command_of(payload: bytes) -> Command:
    """The command a client packet carries (its first byte)."""
    if not payload:
        raise ProtocolViolation("empty command packet")
    b = payload[0]
    if b not in _COMMAND_BYTES:
        raise UnknownCommand(f"unknown command 0x{b:02x}")
    return Command(b)


def _decode_query(r: Reader, capabilities: int) -> ComQuery:
    attrs: tuple[QueryAttribute, ...] = ()
    if capabilities & _QUERY_ATTRIBUTES:
        count = r.lenenc_int()
        r.lenenc_int()  # parameter_set_count, always 1
        if count:
            bitmap = r.fixed((count + 7) // 8)
            if r.int1() != 1:
                raise r.fail("COM_QUERY attributes: new_params_bind_flag must be 1")
            names, types = [], []
            for _ in range(count):
                types.append(ParamType(r.int1(), r.int1()))
                names.append(r.lenenc_str())
            values = _read_values(r, types, bitmap, 0)
            attrs = tuple(QueryAttribute(n, t, v) for n, t, v in zip(names, types, values))
    return ComQuery(r.rest_str(), attrs)


def _encode_query(m: ComQuery, capabilities: int) -> bytes:
    out = [b"\x03"]
    if capabilities & _QUERY_ATTRIBUTES:
        out.append(lenenc_int(len(m.attributes)) + b"\x01")
        if m.attributes:
            values = [a.value for a in m.attributes]
            types = [a.type for a in m.attributes]
            out.append(_bitmap(values, 0) + b"\x01")
            for a in m.attributes:
                out.append(int1(a.type.field_type) + int1(a.type.flags) + lenenc_str(a.name))
            _write_values(out, types, values)
    elif m.attributes:
        raise ValueError("query attributes need CLIENT_QUERY_ATTRIBUTES")
    out.append(from_text(m.sql))
    return b"".join(out)


def _decode_change_user(r: Reader, capabilities: int) -> ComChangeUser:
    user = r.nul_str()
    auth = r.fixed(r.int1()) if capabilities & _SECURE else r.nul_bytes()
    schema = r.nul_str()
    charset = None
    plugin = ""
    attrs: tuple[tuple[str, str], ...] = ()
    if not r.at_end():
        charset = r.int2()
        if capabilities & _PLUGIN_AUTH and not r.at_end():
            plugin = _nul_or_rest(r)
        if capabilities & _CONNECT_ATTRS and not r.at_end():
            attrs = _decode_pairs(r.lenenc_bytes())
    r.end()
    return ComChangeUser(user, auth, schema, charset, plugin, attrs)


def _encode_change_user(m: ComChangeUser, capabilities: int) -> bytes:
    out = [b"\x11", nul_str(m.user)]
    if capabilities & _SECURE:
        if len(m.auth_response) > 255:
            raise ValueError("COM_CHANGE_USER auth response is limited to 255 bytes")
        out.append(int1(len(m.auth_response)) + m.auth_response)
    else:
        out.append(nul_bytes(m.auth_response))
    out.append(nul_str(m.schema))
    if m.character_set is None:
        if m.auth_plugin_name or m.attributes:
            raise ValueError("plugin name and attributes need character_set")
        return b"".join(out)
    out.append(int2(m.character_set))
    if m.auth_plugin_name and not capabilities & _PLUGIN_AUTH:
        raise ValueError("auth_plugin_name needs CLIENT_PLUGIN_AUTH")
    if m.attributes and not capabilities & _CONNECT_ATTRS:
        raise ValueError("attributes need CLIENT_CONNECT_ATTRS")
    if capabilities & _PLUGIN_AUTH:
        out.append(nul_str(m.auth_plugin_name))
    if capabilities & _CONNECT_ATTRS:
        out.append(_encode_pairs(m.attributes))
    return b"".join(out)


def stmt_execute_id(payload: bytes) -> int:
    """The statement id of a COM_STMT_EXECUTE payload, to look up what decoding it needs."""
    r = Reader(payload)
    _check_header(r, Command.STMT_EXECUTE, "COM_STMT_EXECUTE")
    return r.int4()


def decode_stmt_execute(
    payload: bytes,
    param_count: int,
    prev_types: Sequence[ParamType] = (),
    capabilities: int = PROTOCOL_41,
    long_data: Container[int] = (),
) -> ComStmtExecute:
    """Decode COM_STMT_EXECUTE. `param_count` is num_params of the statement's
    COM_STMT_PREPARE_OK; `prev_types` the types bound by its previous execution (used when the
    client does not send types again, new_params_bind_flag = 0); `long_data` the ids of the
    parameters that received COM_STMT_SEND_LONG_DATA since the statement's last execution or
    COM_STMT_RESET: the packet carries no value for them, they decode as `LONG_DATA`."""
    r = Reader(payload)
    _check_header(r, Command.STMT_EXECUTE, "COM_STMT_EXECUTE")
    stmt_id, flags, iterations = r.int4(), r.int1(), r.int4()
    qa = capabilities & _QUERY_ATTRIBUTES
    n = param_count
    values: tuple[BinaryValue, ...] = ()
    types: tuple[ParamType, ...] = ()
    names: tuple[str, ...] = ()
    bound = True
    if n > 0 or (qa and flags & _PARAM_COUNT_AVAILABLE):
        if qa:
            n = r.lenenc_int()  # overrides num_params: extra ones are query attributes
        if n > 0:
            bitmap = r.fixed((n + 7) // 8)
            flag = r.int1()
            if flag > 1:
                raise r.fail(f"invalid new_params_bind_flag {flag}")
            bound = flag == 1
            if bound:
                tl, nl = [], []
                for _ in range(n):
                    tl.append(ParamType(r.int1(), r.int1()))
                    if qa:
                        nl.append(r.lenenc_str())
                types, names = tuple(tl), tuple(nl)
            else:
                if len(prev_types) < n:
                    raise r.fail(f"statement {stmt_id}: parameter types were never bound")
                types = tuple(prev_types[:n])
            values = _read_values(r, types, bitmap, 0, long_data)
    r.end()
    return ComStmtExecute(stmt_id, flags, iterations, values, types, names, bound)


def _encode_stmt_execute(m: ComStmtExecute, capabilities: int) -> bytes:
    qa = capabilities & _QUERY_ATTRIBUTES
    n = len(m.values)
    if len(m.types) != n:
        raise ValueError(f"{n} values for {len(m.types)} parameter types")
    if m.names and (not qa or not m.new_params_bound or len(m.names) != n):
        raise ValueError("parameter names need CLIENT_QUERY_ATTRIBUTES, bound types, one per value")
    out = [b"\x17", int4(m.statement_id), int1(m.flags), int4(m.iteration_count)]
    if qa and (n > 0 or m.flags & _PARAM_COUNT_AVAILABLE):
        out.append(lenenc_int(n))
    if n > 0:
        out.append(_bitmap(m.values, 0))
        out.append(b"\x01" if m.new_params_bound else b"\x00")
        if m.new_params_bound:
            for i, t in enumerate(m.types):
                out.append(int1(t.field_type) + int1(t.flags))
                if qa:
                    out.append(lenenc_str(m.names[i] if m.names else ""))
        _write_values(out, m.types, m.values)
    return b"".join(out)


def _decode_simple(cls):
    def decode(r: Reader, capabilities: int):
        r.end()
        return cls()
    return decode


def _decode_int4(cls):
    def decode(r: Reader, capabilities: int):
        v = r.int4()
        r.end()
        return cls(v)
    return decode


def _decode_field_list(r: Reader, capabilities: int) -> ComFieldList:
    return ComFieldList(r.nul_str(), r.rest_str())


def _decode_set_option(r: Reader, capabilities: int) -> ComSetOption:
    v = r.int2()
    r.end()
    return ComSetOption(v)


def _decode_send_long_data(r: Reader, capabilities: int) -> ComStmtSendLongData:
    return ComStmtSendLongData(r.int4(), r.int2(), r.rest())


def _decode_fetch(r: Reader, capabilities: int) -> ComStmtFetch:
    stmt_id, rows = r.int4(), r.int4()
    r.end()
    return ComStmtFetch(stmt_id, rows)


_COMMAND_DECODERS = {
    Command.QUERY: _decode_query,
    Command.INIT_DB: lambda r, caps: ComInitDb(r.rest_str()),
    Command.FIELD_LIST: _decode_field_list,
    Command.QUIT: _decode_simple(ComQuit),
    Command.PING: _decode_simple(ComPing),
    Command.STATISTICS: _decode_simple(ComStatistics),
    Command.DEBUG: _decode_simple(ComDebug),
    Command.RESET_CONNECTION: _decode_simple(ComResetConnection),
    Command.PROCESS_KILL: _decode_int4(ComProcessKill),
    Command.SET_OPTION: _decode_set_option,
    Command.CHANGE_USER: _decode_change_user,
    Command.STMT_PREPARE: lambda r, caps: ComStmtPrepare(r.rest_str()),
    Command.STMT_SEND_LONG_DATA: _decode_send_long_data,
    Command.STMT_CLOSE: _decode_int4(ComStmtClose),
    Command.STMT_RESET: _decode_int4(ComStmtReset),
    Command.STMT_FETCH: _decode_fetch,
}


def decode_command(
    payload: bytes,
    capabilities: int = PROTOCOL_41,
    *,
    param_count: int | None = None,
    prev_types: Sequence[ParamType] = (),
    long_data: Container[int] = (),
) -> CommandMessage:
    """Decode any command-phase client packet.

    COM_STMT_EXECUTE needs what COM_STMT_PREPARE_OK said about the statement: look its id up
    with `stmt_execute_id` and pass its `param_count`, the types bound by its last execution
    (`prev_types`) and the parameters sent as long data since (`long_data`), see
    `decode_stmt_execute`. `param_count` None means the statement is unknown:
    `UnknownStatement` (ER_UNKNOWN_STMT_HANDLER) is raised, which the session answers with ERR.
    """
    cmd = command_of(payload)
    if cmd == Command.STMT_EXECUTE:
        if param_count is None:
            raise UnknownStatement(f"Unknown prepared statement handler ({stmt_execute_id(payload)}) "
                                   "given to mysqld_stmt_execute")
        return decode_stmt_execute(payload, param_count, prev_types, capabilities, long_data)
    decoder = _COMMAND_DECODERS.get(cmd)
    if decoder is None:
        return ComOther(int(cmd), bytes(payload[1:]))
    return decoder(Reader(payload, 1), capabilities)


# --------------------------------------------------------------------------------------------
# Encoding


ServerMessage = Union[
    HandshakeV10, AuthSwitchRequest, AuthMoreData, AuthNextFactor, OkPacket, ErrPacket,
    ProgressReport, EofPacket, LocalInfileRequest, ColumnCount, ColumnDefinition41, FieldListColumn,
    TextRow, StmtPrepareOk,
]
ClientMessage = Union[SSLRequest, HandshakeResponse41, AuthSwitchResponse]
Message = Union[ServerMessage, ClientMessage, CommandMessage]


def _const(b: bytes):
    return lambda m, caps: b


_ENCODERS: dict[type, Any] = {
    HandshakeV10: _encode_handshake,
    SSLRequest: _encode_ssl_request,
    HandshakeResponse41: _encode_handshake_response,
    AuthSwitchRequest: lambda m, caps: b"\xfe" + nul_str(m.plugin_name) + m.data,
    AuthSwitchResponse: lambda m, caps: m.data,
    AuthMoreData: lambda m, caps: b"\x01" + m.data,
    AuthNextFactor: lambda m, caps: b"\x02" + nul_str(m.plugin_name) + m.data,
    OkPacket: _encode_ok,
    ErrPacket: _encode_err,
    ProgressReport: _encode_progress,
    EofPacket: _encode_eof,
    LocalInfileRequest: lambda m, caps: b"\xfb" + from_text(m.filename),
    ColumnCount: _encode_column_count,
    ColumnDefinition41: _encode_column_definition,
    FieldListColumn: _encode_column_definition,
    TextRow: _encode_text_row,
    StmtPrepareOk: _encode_stmt_prepare_ok,
    ComQuery: _encode_query,
    ComInitDb: lambda m, caps: b"\x02" + from_text(m.schema),
    ComFieldList: lambda m, caps: b"\x04" + nul_str(m.table) + from_text(m.wildcard),
    ComQuit: _const(b"\x01"),
    ComPing: _const(b"\x0e"),
    ComStatistics: _const(b"\x09"),
    ComDebug: _const(b"\x0d"),
    ComResetConnection: _const(b"\x1f"),
    ComProcessKill: lambda m, caps: b"\x0c" + int4(m.connection_id),
    ComSetOption: lambda m, caps: b"\x1b" + int2(m.option),
    ComChangeUser: _encode_change_user,
    ComStmtPrepare: lambda m, caps: b"\x16" + from_text(m.sql),
    ComStmtExecute: _encode_stmt_execute,
    ComStmtSendLongData: lambda m, caps: b"\x18" + int4(m.statement_id) + int2(m.param_id) + m.data,
    ComStmtClose: lambda m, caps: b"\x19" + int4(m.statement_id),
    ComStmtReset: lambda m, caps: b"\x1a" + int4(m.statement_id),
    ComStmtFetch: lambda m, caps: b"\x1c" + int4(m.statement_id) + int4(m.num_rows),
    ComOther: lambda m, caps: int1(m.command) + m.data,
}


def encode(msg: Message, capabilities: int = PROTOCOL_41) -> bytes:
    """The payload of `msg` (frame it with `packets.encode_packets`). Binary rows need their
    column types: use `encode_binary_row`."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        if isinstance(msg, BinaryRow):
            raise TypeError("binary rows need their column types: use encode_binary_row")
        raise TypeError(f"not a protocol message: {msg!r}")
    return encoder(msg, capabilities)


# --------------------------------------------------------------------------------------------
# Classifiers and helpers for the session driver


def is_err(payload: bytes) -> bool:
    """ERR packet (or a MariaDB progress report, errno 0xFFFF: see `is_progress_report`)."""
    return len(payload) > 0 and payload[0] == ERR_HEADER


def is_progress_report(payload: bytes) -> bool:
    return len(payload) >= 3 and payload[0] == ERR_HEADER and payload[1] == 0xFF and payload[2] == 0xFF


def is_ok(payload: bytes, capabilities: int = PROTOCOL_41) -> bool:
    """OK packet in a command response (0x00, length >= 7 under PROTOCOL_41), or the 0xFE OK
    ending a result set under CLIENT_DEPRECATE_EOF (0xFE, length < 0xFFFFFF). Only meaningful
    where an OK may come: a 0x00 row or COM_STMT_PREPARE_OK looks the same."""
    if not payload:
        return False
    h = payload[0]
    n = len(payload)
    if h == OK_HEADER:
        return n >= _ok_min_length(capabilities)
    if h == EOF_HEADER and capabilities & _DEPRECATE_EOF:
        return _ok_min_length(capabilities) <= n < MAX_PACKET_CHUNK
    return False


def is_eof(payload: bytes, capabilities: int = PROTOCOL_41) -> bool:
    """EOF packet: 0xFE and length < 9; never under CLIENT_DEPRECATE_EOF (the 0xFE packets are
    then OK packets)."""
    return (len(payload) > 0 and payload[0] == EOF_HEADER and len(payload) < 9
            and not capabilities & _DEPRECATE_EOF)


def is_result_end(payload: bytes, capabilities: int = PROTOCOL_41) -> bool:
    """In the row phase: does this packet end the rows (EOF, or 0xFE OK under DEPRECATE_EOF)?
    A text row may start with 0xFE too, but is then longer than 0xFFFFFF bytes. ERR also ends
    the rows: test `is_err` as well."""
    if not payload or payload[0] != EOF_HEADER:
        return False
    if capabilities & _DEPRECATE_EOF:
        return len(payload) < MAX_PACKET_CHUNK
    return len(payload) < 9


def is_local_infile(payload: bytes) -> bool:
    return len(payload) > 0 and payload[0] == LOCAL_INFILE_HEADER


def is_auth_switch_request(payload: bytes) -> bool:
    return len(payload) > 0 and payload[0] == AUTH_SWITCH_REQUEST


def is_auth_more_data(payload: bytes) -> bool:
    return len(payload) > 0 and payload[0] == AUTH_MORE_DATA


def result_status(payload: bytes, capabilities: int = PROTOCOL_41) -> int:
    """Server status flags of an OK or EOF packet (to see SERVER_MORE_RESULTS_EXISTS)."""
    if is_eof(payload, capabilities):
        return decode_eof(payload, capabilities).status_flags
    return decode_ok(payload, capabilities).status_flags


def err_packet(errno: int, sqlstate: str | None, message: str) -> bytes:
    """Payload of an ERR packet; `sqlstate` None takes the server's usual one for `errno`."""
    return _encode_err(ErrPacket(errno, sqlstate_of(errno) if sqlstate is None else sqlstate, message), 0)


def violation_err_packet(exc: ProtocolViolation) -> bytes:
    """Payload of the ERR packet reporting a protocol violation."""
    return err_packet(exc.errno, exc.sqlstate, exc.message)


def ok_packet(
    capabilities: int = PROTOCOL_41,
    *,
    affected_rows: int = 0,
    last_insert_id: int = 0,
    status_flags: int = int(ServerStatus.AUTOCOMMIT),
    warnings: int = 0,
    info: str = "",
    eof: bool = False,
) -> bytes:
    """Payload of an OK packet (`eof` for the 0xFE form ending a result set)."""
    return _encode_ok(OkPacket(affected_rows, last_insert_id, status_flags, warnings, info, (), eof), capabilities)


def eof_packet(capabilities: int = PROTOCOL_41, *, warnings: int = 0,
               status_flags: int = int(ServerStatus.AUTOCOMMIT)) -> bytes:
    """Payload of an EOF packet, or of the 0xFE OK that replaces it under DEPRECATE_EOF."""
    if capabilities & _DEPRECATE_EOF:
        return ok_packet(capabilities, status_flags=status_flags, warnings=warnings, eof=True)
    return _encode_eof(EofPacket(warnings, status_flags), capabilities)
