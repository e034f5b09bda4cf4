"""Byte-exact tests of the MySQL packet layer (adapters/mysql/packets.py).

Expected bytes are written by hand from the protocol documentation
(https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html and
page_protocol_basic_data_types.html), never produced by the code under test: a packet is
int<3> payload length (little-endian) + int<1> sequence id + payload; payloads of 0xFFFFFF bytes
or more are split in 0xFFFFFF-byte chunks ended by a shorter (possibly empty) one.
"""

from __future__ import annotations

import pytest

from sqlward.adapters.mysql import constants as C
from sqlward.adapters.mysql.packets import (
    MAX_PACKET_CHUNK,
    HandshakeError,
    Packet,
    PacketFramer,
    PacketsOutOfOrder,
    PacketTooLarge,
    ProtocolViolation,
    Reader,
    UnknownCommand,
    encode_packet,
    encode_packets,
    int1,
    int2,
    int3,
    int4,
    int6,
    int8,
    lenenc_bytes,
    lenenc_bytes_or_null,
    lenenc_int,
    lenenc_int_size,
    lenenc_str,
    next_seq,
    nul_bytes,
    nul_str,
    packet_count,
    seq_after,
)

H = bytes.fromhex
BIG = MAX_PACKET_CHUNK  # 16 MiB - 1


# --------------------------------------------------------------------------------------------
# Fixed-length integers


@pytest.mark.parametrize(
    "writer, reader, value, wire",
    [
        (int1, "int1", 0x0A, "0a"),
        (int2, "int2", 0x0102, "0201"),
        (int3, "int3", 0x010203, "030201"),
        (int4, "int4", 0x01020304, "04030201"),
        (int6, "int6", 0x010203040506, "060504030201"),
        (int8, "int8", 0x0102030405060708, "0807060504030201"),
        (int4, "int4", 0xFFFFFFFF, "ffffffff"),
        (int8, "int8", 2**64 - 1, "ffffffffffffffff"),
    ],
)
def test_fixed_ints(writer, reader, value, wire):
    assert writer(value) == H(wire)
    r = Reader(H(wire))
    assert getattr(r, reader)() == value
    r.end()


def test_signed_and_float_readers():
    r = Reader(H("ff" "feff" "feffffff" "feffffffffffffff" "0000c03f" "000000000000f83f"))
    assert (r.sint1(), r.sint2(), r.sint4(), r.sint8()) == (-1, -2, -2, -2)
    assert r.float4() == 1.5 and r.float8() == 1.5
    assert r.at_end()


@pytest.mark.parametrize("writer, value", [(int1, 256), (int2, 65536), (int3, -1), (int4, 2**32), (int8, 2**64)])
def test_fixed_ints_out_of_range(writer, value):
    with pytest.raises(ValueError):
        writer(value)


# --------------------------------------------------------------------------------------------
# Length-encoded integers and strings


@pytest.mark.parametrize(
    "value, wire",
    [
        (0, "00"),
        (250, "fa"),
        (251, "fcfb00"),
        (0xFFFF, "fcffff"),
        (0x10000, "fd000001"),
        (0xFFFFFF, "fdffffff"),
        (0x1000000, "fe0000000100000000"),
        (2**64 - 1, "feffffffffffffffff"),
    ],
)
def test_lenenc_int(value, wire):
    assert lenenc_int(value) == H(wire)
    assert lenenc_int_size(value) == len(H(wire))
    r = Reader(H(wire))
    assert r.lenenc_int() == value
    r.end()


def test_lenenc_int_non_canonical_forms_are_read():
    assert Reader(H("fc0100")).lenenc_int() == 1
    assert Reader(H("fd050000")).lenenc_int() == 5


def test_lenenc_int_null_and_invalid():
    assert Reader(H("fb")).lenenc_int_or_null() is None
    with pytest.raises(ProtocolViolation):
        Reader(H("fb")).lenenc_int()
    with pytest.raises(ProtocolViolation):
        Reader(H("ff")).lenenc_int_or_null()
    for wire in ("", "fc", "fc01", "fd0102", "fe01020304050607"):
        with pytest.raises(ProtocolViolation):
            Reader(H(wire)).lenenc_int()
    with pytest.raises(ValueError):
        lenenc_int(-1)
    with pytest.raises(ValueError):
        lenenc_int(2**64)


def test_lenenc_strings():
    assert lenenc_bytes(b"foo") == H("03666f6f")
    assert lenenc_str("é") == H("02c3a9")
    assert lenenc_bytes(b"x" * 251)[:3] == H("fcfb00")
    assert lenenc_bytes_or_null(None) == H("fb")
    assert lenenc_bytes_or_null(b"") == H("00")
    r = Reader(H("03666f6f" "fb" "00" "02c3a9"))
    assert r.lenenc_bytes() == b"foo"
    assert r.lenenc_bytes_or_null() is None
    assert r.lenenc_bytes_or_null() == b""
    assert r.lenenc_str() == "é"
    r.end()
    with pytest.raises(ProtocolViolation):
        Reader(H("04666f6f")).lenenc_bytes()  # announces 4 bytes, has 3


def test_nul_fixed_and_rest_strings():
    assert nul_bytes(b"root") == H("726f6f7400")
    assert nul_str("") == H("00")
    with pytest.raises(ValueError):
        nul_bytes(b"a\x00b")
    r = Reader(H("726f6f7400" "616263" "78797a"))
    assert r.nul_str() == "root"
    assert r.fixed(3) == b"abc"
    assert r.rest() == b"xyz"
    assert r.rest() == b""
    r.end()
    with pytest.raises(ProtocolViolation):
        Reader(H("726f6f74")).nul_bytes()  # no terminator
    with pytest.raises(ProtocolViolation):
        Reader(H("6162")).fixed(3)


def test_text_is_lossless_for_any_bytes():
    r = Reader(H("02ff00"))
    s = r.lenenc_str()
    assert lenenc_str(s) == H("02ff00")


def test_reader_never_raises_index_or_struct_errors():
    for name in ("int1", "int2", "int3", "int4", "int6", "int8", "sint1", "sint2", "sint4", "sint8",
                 "float4", "float8", "lenenc_int", "lenenc_bytes", "nul_bytes", "peek"):
        with pytest.raises(ProtocolViolation):
            getattr(Reader(b""), name)()
    with pytest.raises(ProtocolViolation):
        Reader(b"ab").fixed(-1)
    with pytest.raises(ProtocolViolation):
        Reader(b"ab").end()


def test_reader_error_class():
    with pytest.raises(HandshakeError) as e:
        Reader(b"", error=HandshakeError).int1()
    assert e.value.errno == C.ER_HANDSHAKE_ERROR


# --------------------------------------------------------------------------------------------
# Errors


def test_error_codes():
    assert (ProtocolViolation("x").errno, ProtocolViolation("x").sqlstate) == (1158, "08S01")
    assert (PacketTooLarge("x").errno, PacketTooLarge("x").sqlstate) == (1153, "08S01")
    assert PacketsOutOfOrder("x").errno == 1156
    assert UnknownCommand("x").errno == 1047
    assert HandshakeError("x").errno == 1043
    e = ProtocolViolation("bad", errno=1045, sqlstate="28000")
    assert (e.errno, e.sqlstate, e.message) == (1045, "28000", "bad")
    assert issubclass(PacketTooLarge, ProtocolViolation)


# --------------------------------------------------------------------------------------------
# Sequence ids


def test_sequence_helpers():
    assert next_seq(0) == 1 and next_seq(255) == 0
    assert packet_count(0) == 1 and packet_count(BIG - 1) == 1
    assert packet_count(BIG) == 2 and packet_count(2 * BIG) == 3 and packet_count(2 * BIG + 1) == 3
    assert seq_after(3, 10) == 4
    assert seq_after(255, 10) == 0
    assert seq_after(254, BIG) == 0
    assert Packet(7, b"abc").next_seq == 8
    assert Packet(255, b"").next_seq == 0


# --------------------------------------------------------------------------------------------
# Encoding packets


def test_encode_small_packets():
    # COM_QUERY "select 1" with sequence id 0 (MySQL docs' packet layout)
    assert encode_packets(b"\x03select 1", 0) == (H("090000" "00" "0373656c6563742031"), 1)
    assert encode_packet(b"\x03select 1", 0) == H("09000000" "0373656c6563742031")
    # COM_QUIT: 01 00 00 00 01
    assert encode_packets(b"\x01", 0) == (H("01000000" "01"), 1)
    assert encode_packets(b"", 5) == (H("00000005"), 6)
    assert encode_packets(b"x", 255) == (H("010000ff78"), 0)
    with pytest.raises(ValueError):
        encode_packet(b"\x00" * BIG, 0)


def test_encode_exactly_16mib_adds_empty_packet():
    payload = bytes([7]) * BIG
    wire, nxt = encode_packets(payload, 0)
    assert nxt == 2
    assert len(wire) == 4 + BIG + 4
    assert wire[:4] == H("ffffff00")
    assert wire[4 : 4 + BIG] == payload
    assert wire[4 + BIG :] == H("00000001")


def test_encode_16mib_plus_one():
    payload = bytes(BIG) + b"\x2a"
    wire, nxt = encode_packets(payload, 254)
    assert nxt == 0  # 254, 255, then wraps
    assert wire[:4] == H("ffffffFE")
    assert wire[4 + BIG : 4 + BIG + 4] == H("010000ff")
    assert wire[-1:] == b"\x2a" and len(wire) == 4 + BIG + 4 + 1


def test_encode_two_full_chunks():
    payload = bytes(2 * BIG)
    wire, nxt = encode_packets(payload, 0)
    assert nxt == 3
    assert wire[:4] == H("ffffff00")
    assert wire[4 + BIG : 8 + BIG] == H("ffffff01")
    assert wire[8 + 2 * BIG :] == H("00000002")


# --------------------------------------------------------------------------------------------
# Framing


def _drain(framer, expected_seq=None):
    out = []
    while (p := framer.next(expected_seq)) is not None:
        out.append(p)
    return out


def test_framer_one_byte_at_a_time():
    # OK packet (seq 2) then EOF packet (seq 3) then an empty packet (seq 4)
    stream = H("0700000200000002000000" "05000003fe00000200" "00000004")
    framer = PacketFramer()
    got = []
    for i in range(len(stream)):
        framer.feed(stream[i : i + 1])
        got.extend(_drain(framer))
        if i < 10:
            assert got == []
    assert got == [
        Packet(2, H("00000002000000")),
        Packet(3, H("fe00000200")),
        Packet(4, b""),
    ]
    assert framer.buffered == 0


def test_framer_needs_full_header_and_body():
    framer = PacketFramer()
    framer.feed(H("050000"))
    assert framer.next() is None
    framer.feed(H("01fe"))
    assert framer.next() is None
    assert framer.buffered == 5
    framer.feed(H("00000200") + H("0100"))  # the rest, and half of the next header
    assert framer.next() == Packet(1, H("fe00000200"))
    assert framer.next() is None
    assert framer.buffered == 2


def test_framer_joins_exactly_16mib():
    payload = bytes([1]) * BIG
    framer = PacketFramer()
    framer.feed(H("ffffff00") + payload)
    assert framer.next() is None  # continuation announced
    assert framer.in_packet
    framer.feed(H("00000001"))
    p = framer.next()
    assert p is not None and p.seq == 0 and p.payload == payload and p.next_seq == 2
    assert not framer.in_packet and framer.buffered == 0


def test_framer_joins_16mib_plus_one_fed_in_pieces():
    payload = bytes(BIG) + b"\x2a"
    wire = H("ffffff05") + payload[:BIG] + H("01000006") + b"\x2a"
    framer = PacketFramer()
    got = []
    step = 1 << 20
    for i in range(0, len(wire), step):
        framer.feed(wire[i : i + step])
        got.extend(_drain(framer))
    assert len(got) == 1
    assert got[0].seq == 5 and got[0].payload == payload and got[0].next_seq == 7


def test_framer_continuation_with_wrong_sequence_id():
    framer = PacketFramer()
    framer.feed(H("ffffff00") + bytes(BIG) + H("00000002"))  # should be 01
    with pytest.raises(PacketsOutOfOrder) as e:
        framer.next()
    assert e.value.errno == C.ER_NET_PACKETS_OUT_OF_ORDER and e.value.sqlstate == "08S01"


def test_framer_expected_sequence_id():
    framer = PacketFramer()
    framer.feed(H("0100000301"))
    with pytest.raises(PacketsOutOfOrder):
        framer.next(expected_seq=0)
    framer = PacketFramer()
    framer.feed(H("0100000001" "0100000101"))
    assert framer.next(expected_seq=0) == Packet(0, b"\x01")
    assert framer.next(expected_seq=1) == Packet(1, b"\x01")
    framer.feed(H("01000000ff"))
    assert framer.next(expected_seq=256) == Packet(0, b"\xff")  # ids wrap at 256


def test_framer_too_large_raises_on_the_header():
    framer = PacketFramer(max_payload=100)
    framer.feed(H("640000" "00"))  # 100 bytes: allowed, body not there yet
    assert framer.next() is None
    framer = PacketFramer(max_payload=100)
    framer.feed(H("650000" "00"))  # 101 bytes: refused before any of the body arrives
    with pytest.raises(PacketTooLarge) as e:
        framer.next()
    assert e.value.errno == C.ER_NET_PACKET_TOO_LARGE


def test_framer_too_large_across_continuations():
    framer = PacketFramer(max_payload=BIG + 10)
    framer.feed(H("ffffff00") + bytes(BIG))
    assert framer.next() is None
    framer.feed(H("0b000001"))  # 11 more bytes: BIG + 11 > limit, body never sent
    with pytest.raises(PacketTooLarge):
        framer.next()
    framer = PacketFramer(max_payload=BIG)
    framer.feed(H("ffffff00") + bytes(BIG) + H("00000001"))
    assert framer.next() == Packet(0, bytes(BIG))  # exactly at the limit


def test_framer_raw_chunks():
    framer = PacketFramer()
    framer.feed(H("ffffff03") + bytes(BIG) + H("02000004" "6162") + H("01000000" "0e"))
    assert framer.next_raw() == (3, bytes(BIG), True)
    with pytest.raises(RuntimeError):
        framer.next()  # a payload is being streamed
    assert framer.next_raw() == (4, b"ab", False)
    assert framer.next() == Packet(0, b"\x0e")
    assert framer.next_raw() is None


def test_framer_raw_checks_sequence_and_size():
    framer = PacketFramer()
    framer.feed(H("ffffff03") + bytes(BIG) + H("02000009" "6162"))
    framer.next_raw()
    with pytest.raises(PacketsOutOfOrder):
        framer.next_raw()
    framer = PacketFramer(max_payload=10)
    framer.feed(H("0b000000"))
    with pytest.raises(PacketTooLarge):
        framer.next_raw()


def test_framer_take_rest():
    framer = PacketFramer()
    framer.feed(H("0100000101" "16030100"))  # a packet, then the start of a TLS ClientHello
    assert framer.next() == Packet(1, b"\x01")
    assert framer.next() is None  # reads as the header of a 66326-byte packet: not complete
    assert framer.take_rest() == H("16030100")
    assert framer.buffered == 0
