"""Sans-IO packet layer of the MySQL / MariaDB client/server protocol.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html and
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_data_types.html
(MariaDB: https://mariadb.com/docs/server/reference/clientserver-protocol/0-packet and
protocol-data-types).

Wire packets
------------
Every packet, in both directions, is

    int<3> payload_length   little-endian, 0 .. 0xFFFFFF
    int<1> sequence_id
    payload

A payload of 0xFFFFFF bytes or more travels as several wire packets: chunks of exactly 0xFFFFFF
bytes, each with the next sequence id, ended by a shorter chunk, which is *empty* when the
payload length is an exact multiple of 0xFFFFFF. The receiver joins the chunks into one logical
payload. `encode_packets` does the splitting, `PacketFramer.next` the joining (checking that the
sequence ids of the chunks follow each other and that the joined size stays under
`max_payload`, raising `PacketTooLarge` as soon as a header shows the limit will be passed, i.e.
before the body is buffered). `PacketFramer.next_raw` gives the chunks one by one, for a relay
that streams huge payloads without holding them.

Sequence ids count wire packets modulo 256. Each command starts a new exchange: the client sends
the command with sequence id 0 and every following packet of that exchange, from either side,
takes the next id. The connection phase is one exchange starting with the server's greeting (0).
`next_seq` and `seq_after` do the arithmetic; `PacketFramer.next(expected_seq=...)` checks it.

Primitive types
---------------
`Reader` is a cursor over one payload whose every read checks bounds and raises
`ProtocolViolation` (never IndexError, struct.error or UnicodeDecodeError): fixed-length
little-endian integers int<1,2,3,4,6,8>, length-encoded integers (< 0xFB: 1 byte; 0xFC + int<2>;
0xFD + int<3>; 0xFE + int<8>; 0xFB is NULL where a value may be NULL, 0xFF is invalid),
length-encoded strings, NUL-terminated strings, fixed-length strings and the rest of the packet.
The module-level writers (`int1` ... `int8`, `lenenc_int`, `lenenc_bytes`, `nul_bytes`) are the
encoders; they raise ValueError for values that do not fit.

Text is decoded as UTF-8 with `surrogateescape` (so any bytes survive a round trip unchanged);
what the bytes mean depends on the connection's character set, which the session driver knows.

Errors carry their wire code: `ProtocolViolation.errno` / `.sqlstate` are what an ERR packet
about it should say (ER_NET_READ_ERROR 1158 / 08S01 unless a subclass or the raiser says
otherwise; `PacketsOutOfOrder` 1156, `PacketTooLarge` 1153, `UnknownCommand` 1047, handshake
decoding 1043, `UnknownStatement` 1243 / HY000).
"""

from __future__ import annotations

import struct

import msgspec

from .constants import (
    ER_HANDSHAKE_ERROR,
    ER_NET_PACKET_TOO_LARGE,
    ER_NET_PACKETS_OUT_OF_ORDER,
    ER_NET_READ_ERROR,
    ER_UNKNOWN_COM_ERROR,
    ER_UNKNOWN_STMT_HANDLER,
    MAX_PACKET_CHUNK,
)

__all__ = [
    "MAX_PACKET_CHUNK",
    "DEFAULT_MAX_PAYLOAD",
    "NULL_LENENC",
    "ProtocolViolation",
    "PacketTooLarge",
    "PacketsOutOfOrder",
    "UnknownCommand",
    "UnknownStatement",
    "HandshakeError",
    "Packet",
    "PacketFramer",
    "encode_packets",
    "encode_packet",
    "next_seq",
    "seq_after",
    "packet_count",
    "Reader",
    "int1",
    "int2",
    "int3",
    "int4",
    "int6",
    "int8",
    "lenenc_int",
    "lenenc_int_size",
    "lenenc_bytes",
    "lenenc_str",
    "lenenc_bytes_or_null",
    "nul_bytes",
    "nul_str",
    "to_text",
    "from_text",
]

DEFAULT_MAX_PAYLOAD = 1 << 30  # the largest max_allowed_packet either server accepts
NULL_LENENC = b"\xfb"  # NULL in a text row (and wherever a lenenc value may be NULL)

# --------------------------------------------------------------------------------------------
# Errors


class ProtocolViolation(Exception):
    """The peer sent bytes that are not valid protocol. Carries the errno / SQLSTATE to report."""

    errno: int = ER_NET_READ_ERROR
    sqlstate: str = "08S01"

    def __init__(self, message: str, *, errno: int | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno
        if sqlstate is not None:
            self.sqlstate = sqlstate

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class PacketTooLarge(ProtocolViolation):
    """A logical payload exceeds the configured maximum (ER_NET_PACKET_TOO_LARGE)."""

    errno = ER_NET_PACKET_TOO_LARGE


class PacketsOutOfOrder(ProtocolViolation):
    """A packet carries the wrong sequence id (ER_NET_PACKETS_OUT_OF_ORDER)."""

    errno = ER_NET_PACKETS_OUT_OF_ORDER


class UnknownCommand(ProtocolViolation):
    """A command byte no server knows. Framing is intact: answer with ERR and carry on."""

    errno = ER_UNKNOWN_COM_ERROR


class UnknownStatement(ProtocolViolation):
    """COM_STMT_* for a statement id the session does not know (ER_UNKNOWN_STMT_HANDLER).
    Framing is intact: answer with ERR and carry on."""

    errno = ER_UNKNOWN_STMT_HANDLER
    sqlstate = "HY000"


class HandshakeError(ProtocolViolation):
    """A malformed packet of the connection phase (ER_HANDSHAKE_ERROR, "Bad handshake")."""

    errno = ER_HANDSHAKE_ERROR


# --------------------------------------------------------------------------------------------
# Sequence ids


def next_seq(seq: int) -> int:
    """The sequence id after `seq` (they wrap at 256)."""
    return (seq + 1) & 0xFF


def packet_count(payload_length: int) -> int:
    """How many wire packets a payload of this length takes (a trailing empty one included)."""
    return payload_length // MAX_PACKET_CHUNK + 1


def seq_after(seq: int, payload_length: int) -> int:
    """The sequence id following a payload of `payload_length` bytes sent starting at `seq`."""
    return (seq + packet_count(payload_length)) & 0xFF


# --------------------------------------------------------------------------------------------
# Framing


class Packet(msgspec.Struct, frozen=True):
    """One logical packet: the sequence id of its first wire packet and the joined payload."""

    seq: int
    payload: bytes

    @property
    def next_seq(self) -> int:
        """The sequence id the next packet of this exchange must carry."""
        return seq_after(self.seq, len(self.payload))


def _header(length: int, seq: int) -> bytes:
    return bytes((length & 0xFF, (length >> 8) & 0xFF, length >> 16, seq & 0xFF))


def encode_packet(payload: bytes, seq: int) -> bytes:
    """Wire bytes of a payload shorter than 0xFFFFFF bytes (one packet). See `encode_packets`."""
    n = len(payload)
    if n >= MAX_PACKET_CHUNK:
        raise ValueError("payload needs splitting: use encode_packets")
    return _header(n, seq) + payload


def encode_packets(payload: bytes, seq: int) -> tuple[bytes, int]:
    """Wire bytes of `payload` starting at sequence id `seq`, and the sequence id that follows.

    Payloads of 0xFFFFFF bytes or more are split into 0xFFFFFF-byte chunks plus a final shorter
    one (empty when the length is an exact multiple of 0xFFFFFF).
    """
    n = len(payload)
    seq &= 0xFF
    if n < MAX_PACKET_CHUNK:
        return _header(n, seq) + payload, (seq + 1) & 0xFF
    parts: list[bytes] = []
    view = memoryview(payload)
    pos = 0
    while True:
        size = min(n - pos, MAX_PACKET_CHUNK)
        parts.append(_header(size, seq))
        parts.append(view[pos : pos + size])
        seq = (seq + 1) & 0xFF
        pos += size
        if size < MAX_PACKET_CHUNK:
            break
    return b"".join(parts), seq


class PacketFramer:
    """Splits a byte stream into packets: feed bytes, pull `Packet`s (or raw chunks).

    `next()` joins continuation chunks into one logical payload, checking that their sequence
    ids follow each other; with `expected_seq` it also checks the id of the first chunk.
    `max_payload` bounds a logical payload: `PacketTooLarge` is raised as soon as a chunk header
    shows the limit would be passed, before the chunk's body is waited for. Errors leave the
    framer in an undefined state; the connection must end (except for `UnknownCommand`, which the
    framer never raises).
    """

    __slots__ = ("_buf", "max_payload", "_parts", "_total", "_first_seq", "_expect", "_raw")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self.max_payload = max_payload
        self._parts: list[bytes] = []  # chunks of a logical payload being joined by next()
        self._total = 0  # bytes of the current logical payload so far (next() and next_raw())
        self._first_seq = 0
        self._expect: int | None = None  # sequence id of the next continuation chunk
        self._raw = False  # a logical payload is being streamed by next_raw()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned (partial packets included)."""
        return len(self._buf) + sum(len(p) for p in self._parts)

    @property
    def in_packet(self) -> bool:
        """True while a split payload is half read (continuation chunks still to come)."""
        return self._expect is not None

    def take_rest(self) -> bytes:
        """Everything buffered and not yet framed (e.g. bytes that arrived before a TLS upgrade)."""
        if self._parts or self._expect is not None:
            raise ProtocolViolation("a split packet is half read")
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def _chunk(self, expected_seq: int | None) -> tuple[int, bytes, bool] | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        length = buf[0] | (buf[1] << 8) | (buf[2] << 16)
        seq = buf[3]
        if self._expect is not None:
            if seq != self._expect:
                raise PacketsOutOfOrder(
                    f"continuation packet has sequence id {seq}, expected {self._expect}"
                )
        elif expected_seq is not None and seq != (expected_seq & 0xFF):
            raise PacketsOutOfOrder(f"packet has sequence id {seq}, expected {expected_seq & 0xFF}")
        if self._total + length > self.max_payload:
            raise PacketTooLarge(
                f"packet of more than {self.max_payload} bytes "
                f"({self._total + length} announced so far)"
            )
        end = 4 + length
        if len(buf) < end:
            return None
        chunk = bytes(buf[4:end])
        del buf[:end]
        continued = length == MAX_PACKET_CHUNK
        if continued:
            self._total += length
            self._expect = (seq + 1) & 0xFF
        else:
            self._total = 0
            self._expect = None
        return seq, chunk, continued

    def next(self, expected_seq: int | None = None) -> Packet | None:
        """The next complete logical packet, or None until more bytes arrive."""
        if self._raw:
            raise RuntimeError("a payload is being streamed with next_raw()")
        while True:
            first = self._expect is None
            item = self._chunk(expected_seq)
            if item is None:
                return None
            seq, chunk, continued = item
            if first:
                self._first_seq = seq
            if continued:
                self._parts.append(chunk)
                continue
            if self._parts:
                self._parts.append(chunk)
                payload = b"".join(self._parts)
                self._parts.clear()
                return Packet(self._first_seq, payload)
            return Packet(seq, chunk)

    def next_raw(self, expected_seq: int | None = None) -> tuple[int, bytes, bool] | None:
        """The next wire packet as (seq, chunk, is_continued), or None until more bytes arrive.

        `is_continued` is True for a 0xFFFFFF-byte chunk: more chunks of the same payload
        follow. Sequence ids of continuation chunks and `max_payload` are checked as in `next`.
        """
        if self._parts:
            raise RuntimeError("a payload is being joined with next()")
        item = self._chunk(expected_seq)
        if item is not None:
            self._raw = item[2]
        return item


# --------------------------------------------------------------------------------------------
# Primitive readers

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I16 = struct.Struct("<h")
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


def to_text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def from_text(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class Reader:
    """Cursor over one payload; every read checks bounds and raises ProtocolViolation."""

    __slots__ = ("data", "pos", "error")

    def __init__(self, data: bytes, pos: int = 0, error: type[ProtocolViolation] = ProtocolViolation) -> None:
        self.data = data
        self.pos = pos
        self.error = error  # the exception class raised for malformed data

    def fail(self, message: str) -> ProtocolViolation:
        return self.error(message)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.error(f"{len(self.data) - self.pos} unexpected bytes after the end of the packet")

    def _need(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > len(self.data):
            raise self.error("packet is truncated")
        self.pos = pos + n
        return pos

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise self.error("packet is truncated")
        return self.data[self.pos]

    def int1(self) -> int:
        return self.data[self._need(1)]

    def int2(self) -> int:
        return _U16.unpack_from(self.data, self._need(2))[0]

    def int3(self) -> int:
        p = self._need(3)
        d = self.data
        return d[p] | (d[p + 1] << 8) | (d[p + 2] << 16)

    def int4(self) -> int:
        return _U32.unpack_from(self.data, self._need(4))[0]

    def int6(self) -> int:
        p = self._need(6)
        return int.from_bytes(self.data[p : p + 6], "little")

    def int8(self) -> int:
        return _U64.unpack_from(self.data, self._need(8))[0]

    def sint1(self) -> int:
        v = self.data[self._need(1)]
        return v - 256 if v > 127 else v

    def sint2(self) -> int:
        return _I16.unpack_from(self.data, self._need(2))[0]

    def sint4(self) -> int:
        return _I32.unpack_from(self.data, self._need(4))[0]

    def sint8(self) -> int:
        return _I64.unpack_from(self.data, self._need(8))[0]

    def float4(self) -> float:
        return _F32.unpack_from(self.data, self._need(4))[0]

    def float8(self) -> float:
        return _F64.unpack_from(self.data, self._need(8))[0]

    def lenenc_int_or_null(self) -> int | None:
        """A length-encoded integer; None for 0xFB (NULL)."""
        first = self.int1()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.int2()
        if first == 0xFD:
            return self.int3()
        if first == 0xFE:
            return self.int8()
        if first == 0xFB:
            return None
        raise self.error("invalid length-encoded integer (0xFF)")

    def lenenc_int(self) -> int:
        v = self.lenenc_int_or_null()
        if v is None:
            raise self.error("unexpected NULL (0xFB) where a length-encoded integer is required")
        return v

    def fixed(self, n: int) -> bytes:
        p = self._need(n)
        return bytes(self.data[p : p + n])

    def lenenc_bytes(self) -> bytes:
        return self.fixed(self.lenenc_int())

    def lenenc_bytes_or_null(self) -> bytes | None:
        n = self.lenenc_int_or_null()
        return None if n is None else self.fixed(n)

    def lenenc_str(self) -> str:
        return to_text(self.lenenc_bytes())

    def nul_bytes(self) -> bytes:
        end = self.data.find(0, self.pos)
        if end < 0:
            raise self.error("string is not NUL-terminated")
        v = bytes(self.data[self.pos : end])
        self.pos = end + 1
        return v

    def nul_str(self) -> str:
        return to_text(self.nul_bytes())

    def rest(self) -> bytes:
        v = bytes(self.data[self.pos :])
        self.pos = len(self.data)
        return v

    def rest_str(self) -> str:
        return to_text(self.rest())


# --------------------------------------------------------------------------------------------
# Primitive writers


def _fixed_int(v: int, n: int) -> bytes:
    try:
        return v.to_bytes(n, "little")
    except OverflowError:
        raise ValueError(f"{v} does not fit in int<{n}>") from None


def int1(v: int) -> bytes:
    return _fixed_int(v, 1)


def int2(v: int) -> bytes:
    return _fixed_int(v, 2)


def int3(v: int) -> bytes:
    return _fixed_int(v, 3)


def int4(v: int) -> bytes:
    return _fixed_int(v, 4)


def int6(v: int) -> bytes:
    return _fixed_int(v, 6)


def int8(v: int) -> bytes:
    return _fixed_int(v, 8)


def lenenc_int(v: int) -> bytes:
    """Length-encoded integer, shortest form."""
    if v < 0:
        raise ValueError(f"length-encoded integers are unsigned, got {v}")
    if v < 0xFB:
        return bytes((v,))
    if v < 1 << 16:
        return b"\xfc" + _U16.pack(v)
    if v < 1 << 24:
        return b"\xfd" + v.to_bytes(3, "little")
    if v < 1 << 64:
        return b"\xfe" + _U64.pack(v)
    raise ValueError(f"{v} does not fit in a length-encoded integer")


def lenenc_int_size(v: int) -> int:
    return 1 if v < 0xFB else 3 if v < 1 << 16 else 4 if v < 1 << 24 else 9


def lenenc_bytes(b: bytes) -> bytes:
    return lenenc_int(len(b)) + b


def lenenc_str(s: str) -> bytes:
    return lenenc_bytes(from_text(s))


def lenenc_bytes_or_null(b: bytes | None) -> bytes:
    return NULL_LENENC if b is None else lenenc_int(len(b)) + b


def nul_bytes(b: bytes) -> bytes:
    if 0 in b:
        raise ValueError("a NUL-terminated string cannot contain NUL")
    return b + b"\x00"


def nul_str(s: str) -> bytes:
    return nul_bytes(from_text(s))
