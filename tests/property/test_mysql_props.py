"""Property tests of the MySQL / MariaDB codec (adapters/mysql/packets.py, messages.py).

* every message kind round-trips, under the capabilities its layout depends on:
  decode(encode(m)) == m (binary rows and COM_STMT_EXECUTE with their types),
* a stream of packets split at arbitrary points frames back to the same packets,
* arbitrary or damaged bytes fed to any decoder or to the framer only ever decode or raise
  ProtocolViolation (never IndexError, struct.error, UnicodeDecodeError, ValueError...),
* the response scanner (adapters/mysql/response.py) fed arbitrary packets likewise, forwarding
  only bytes it was given, with the same result however the bytes are split.
"""

from __future__ import annotations

import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlward.adapters.mysql import messages as M
from sqlward.adapters.mysql import packets as P
from sqlward.adapters.mysql.constants import Capability as Cap
from sqlward.adapters.mysql.constants import Command, FieldType, ServerStatus
from sqlward.adapters.mysql.response import ResponseScanner, Shape

# --------------------------------------------------------------------------------------------
# Field strategies

uint8 = st.integers(0, 2**8 - 1)
uint16 = st.integers(0, 2**16 - 1)
uint24 = st.integers(0, 2**24 - 1)
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
blob = st.binary(max_size=48)
nul_free_blob = blob.map(lambda b: b.replace(b"\x00", b""))

# Text travels as bytes decoded with surrogateescape. Generate each string from one byte string
# (or as ordinary text) so it is canonical: "\udcc3" + "\udca9" would re-decode as "é".
_plain = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
_escaped = st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))
any_str = st.one_of(_plain, _escaped)  # lenenc and rest-of-packet strings: NUL allowed
nul_free_str = any_str.map(lambda s: s.replace("\x00", "")).filter(
    lambda s: s == s.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
)


def tuples(elem, max_size=5):
    return st.lists(elem, max_size=max_size).map(tuple)


P41 = int(Cap.PROTOCOL_41)
LOW_FLAGS = [1 << i for i in range(32)]


@st.composite
def client_caps(draw, *, required: int = P41) -> int:
    """32 random classic bits, PROTOCOL_41 forced; MariaDB style (bit 0 clear + extended bits)
    or MySQL style (bit 0 set, no extended bits)."""
    low = draw(uint32) | required
    if draw(st.booleans()):
        return (low & ~1) | (draw(uint32) << 32)
    return low | 1


def cap_subset(*flags: int):
    return st.lists(st.sampled_from(flags), unique=True).map(lambda fs: sum(fs, 0))


# --------------------------------------------------------------------------------------------
# Binary values


T = M.ParamType
_INT_RANGES = {
    FieldType.TINY: 8, FieldType.SHORT: 16, FieldType.YEAR: 16, FieldType.LONG: 32,
    FieldType.INT24: 32, FieldType.LONGLONG: 64,
}
_LENENC = [FieldType.DECIMAL, FieldType.NEWDECIMAL, FieldType.VARCHAR, FieldType.BIT, FieldType.JSON,
           FieldType.ENUM, FieldType.SET, FieldType.TINY_BLOB, FieldType.MEDIUM_BLOB, FieldType.LONG_BLOB,
           FieldType.BLOB, FieldType.VAR_STRING, FieldType.STRING, FieldType.GEOMETRY, FieldType.VECTOR]
_DATETIME = [FieldType.DATE, FieldType.DATETIME, FieldType.TIMESTAMP]
date_time = st.builds(M.DateTime, uint16, uint8, uint8, uint8, uint8, uint8, uint32)
time_value = st.builds(M.Time, st.booleans(), uint32, uint8, uint8, uint8, uint32)


@st.composite
def typed_value(draw):
    """(ParamType, value): a binary-protocol type and a value it can carry (None sometimes)."""
    kind = draw(st.sampled_from(["int", "lenenc", "float", "double", "datetime", "time", "null"]))
    flags = draw(uint8)
    if kind == "int":
        ft = draw(st.sampled_from(list(_INT_RANGES)))
        bits = _INT_RANGES[ft]
        if flags & 0x80:
            value = draw(st.integers(0, 2**bits - 1))
        else:
            value = draw(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    elif kind == "lenenc":
        ft, value = draw(st.sampled_from(_LENENC)), draw(blob)
    elif kind == "float":
        ft, value = FieldType.FLOAT, draw(st.floats(width=32, allow_nan=False))
    elif kind == "double":
        ft, value = FieldType.DOUBLE, draw(st.floats(allow_nan=False))
    elif kind == "datetime":
        ft, value = draw(st.sampled_from(_DATETIME)), draw(date_time)
    elif kind == "time":
        ft, value = FieldType.TIME, draw(time_value)
    else:
        ft, value = FieldType.NULL, None
    if draw(st.integers(0, 5)) == 0:
        value = None
    return T(int(ft), flags), value


# --------------------------------------------------------------------------------------------
# Message strategies: each draws (message, capabilities to encode / decode with)


@st.composite
def handshake_v10(draw):
    caps = draw(client_caps(required=0))
    if caps & Cap.SECURE_CONNECTION:
        n = draw(st.integers(20, 254)) if caps & Cap.PLUGIN_AUTH else 20
    else:
        n = 8
    plugin = draw(nul_free_str) if caps & Cap.PLUGIN_AUTH else ""
    msg = M.HandshakeV10(draw(nul_free_str), draw(uint32), draw(st.binary(min_size=n, max_size=n)), caps,
                         draw(uint8), draw(uint16), plugin)
    return msg, P41


@st.composite
def ssl_request(draw):
    return M.SSLRequest(draw(client_caps(required=P41 | Cap.SSL)), draw(uint32), draw(uint8)), P41


@st.composite
def handshake_response(draw):
    caps = draw(client_caps())
    if caps & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = draw(st.binary(max_size=300))
    elif caps & Cap.SECURE_CONNECTION:
        auth = draw(blob)
    else:
        auth = draw(nul_free_blob)
    msg = M.HandshakeResponse41(
        caps, draw(uint32), draw(uint8), draw(nul_free_str), auth,
        draw(nul_free_str) if caps & Cap.CONNECT_WITH_DB else "",
        draw(nul_free_str) if caps & Cap.PLUGIN_AUTH else "",
        draw(tuples(st.tuples(any_str, any_str))) if caps & Cap.CONNECT_ATTRS else (),
        draw(uint8) if caps & Cap.ZSTD_COMPRESSION_ALGORITHM else 0,
    )
    return msg, P41


@st.composite
def ok_packet(draw):
    caps = draw(cap_subset(P41, int(Cap.TRANSACTIONS), int(Cap.SESSION_TRACK), int(Cap.DEPRECATE_EOF)))
    status = draw(uint16) if caps & (P41 | Cap.TRANSACTIONS) else 0
    warnings = draw(uint16) if caps & P41 else 0
    state = ()
    if caps & Cap.SESSION_TRACK and status & ServerStatus.SESSION_STATE_CHANGED:
        state = draw(tuples(st.builds(M.SessionStateChange, uint8, blob)))
    msg = M.OkPacket(draw(uint64), draw(uint64), status, warnings, draw(any_str), state, draw(st.booleans()))
    return msg, caps


@st.composite
def err_packet(draw):
    sqlstate = draw(st.one_of(st.just(""), st.text(alphabet="0123456789ABCDEFHSXY", min_size=5, max_size=5)))
    message = draw(any_str)
    if not sqlstate and message.startswith("#"):
        message = message[1:]
    return M.ErrPacket(draw(st.integers(0, 0xFFFE)), sqlstate, message), P41


@st.composite
def with_caps(draw, build, caps_strategy):
    caps = draw(caps_strategy)
    return draw(build(caps)), caps


def _column_definition(cls):
    @st.composite
    def strategy(draw):
        caps = P41 | draw(cap_subset(int(Cap.MARIADB_CLIENT_EXTENDED_TYPE_INFO)))
        extended = draw(tuples(st.tuples(uint8, any_str))) if caps & Cap.MARIADB_CLIENT_EXTENDED_TYPE_INFO else ()
        args = [draw(any_str) for _ in range(6)] + [draw(uint16), draw(uint32), draw(uint8), draw(uint16),
                                                     draw(uint8), extended]
        if cls is M.FieldListColumn:
            args.append(draw(st.none() | blob))
        return cls(*args), caps
    return strategy()


@st.composite
def column_count(draw):
    caps = P41 | draw(cap_subset(int(Cap.OPTIONAL_RESULTSET_METADATA), int(Cap.MARIADB_CLIENT_CACHE_METADATA)))
    follows = draw(uint8) if caps & (Cap.OPTIONAL_RESULTSET_METADATA | Cap.MARIADB_CLIENT_CACHE_METADATA) else 1
    return M.ColumnCount(draw(uint64), follows), caps


@st.composite
def stmt_prepare_ok(draw):
    caps = P41 | draw(cap_subset(int(Cap.OPTIONAL_RESULTSET_METADATA)))
    follows = draw(uint8) if caps & Cap.OPTIONAL_RESULTSET_METADATA else 1
    return M.StmtPrepareOk(draw(uint32), draw(uint16), draw(uint16), draw(uint16), follows), caps


@st.composite
def com_query(draw):
    caps = P41 | draw(cap_subset(int(Cap.QUERY_ATTRIBUTES)))
    attrs = ()
    if caps & Cap.QUERY_ATTRIBUTES:
        pairs = draw(st.lists(typed_value(), max_size=4))
        attrs = tuple(M.QueryAttribute(draw(any_str), t, v) for t, v in pairs)
    return M.ComQuery(draw(any_str), attrs), caps


@st.composite
def com_change_user(draw):
    caps = P41 | draw(cap_subset(int(Cap.SECURE_CONNECTION), int(Cap.PLUGIN_AUTH), int(Cap.CONNECT_ATTRS)))
    auth = draw(blob) if caps & Cap.SECURE_CONNECTION else draw(nul_free_blob)
    charset = draw(st.none() | uint16)
    plugin = draw(nul_free_str) if charset is not None and caps & Cap.PLUGIN_AUTH else ""
    attrs = draw(tuples(st.tuples(any_str, any_str))) if charset is not None and caps & Cap.CONNECT_ATTRS else ()
    return M.ComChangeUser(draw(nul_free_str), auth, draw(nul_free_str), charset, plugin, attrs), caps


@st.composite
def com_stmt_execute(draw):
    caps = P41 | draw(cap_subset(int(Cap.QUERY_ATTRIBUTES)))
    pairs = draw(st.lists(typed_value(), max_size=6))
    types = tuple(t for t, _ in pairs)
    # some parameters sent beforehand with COM_STMT_SEND_LONG_DATA
    values = tuple(M.LONG_DATA if draw(st.integers(0, 6)) == 0 else v for _, v in pairs)
    bound = draw(st.booleans()) if pairs else True
    names = tuple(draw(any_str) for _ in pairs) if caps & Cap.QUERY_ATTRIBUTES and bound else ()
    return M.ComStmtExecute(draw(uint32), draw(uint8), draw(uint32), values, types, names, bound), caps


@st.composite
def binary_row(draw):
    pairs = draw(st.lists(typed_value(), max_size=12))
    return (tuple(t for t, _ in pairs), M.BinaryRow(tuple(v for _, v in pairs))), P41


def _plain_caps(strategy):
    return strategy.map(lambda m: (m, P41))


_OTHER_COMMANDS = [int(c) for c in Command if c not in M._COMMAND_DECODERS and c != Command.STMT_EXECUTE]

STRATEGIES = {
    M.HandshakeV10: handshake_v10(),
    M.SSLRequest: ssl_request(),
    M.HandshakeResponse41: handshake_response(),
    M.AuthSwitchRequest: _plain_caps(st.builds(M.AuthSwitchRequest, nul_free_str, blob)),
    M.AuthSwitchResponse: _plain_caps(st.builds(M.AuthSwitchResponse, blob)),
    M.AuthMoreData: _plain_caps(st.builds(M.AuthMoreData, blob)),
    M.AuthNextFactor: _plain_caps(st.builds(M.AuthNextFactor, nul_free_str, blob)),
    M.OkPacket: ok_packet(),
    M.ErrPacket: err_packet(),
    M.ProgressReport: _plain_caps(st.builds(M.ProgressReport, uint8, uint8, uint24, any_str)),
    M.EofPacket: st.one_of(_plain_caps(st.builds(M.EofPacket, uint16, uint16)), st.just((M.EofPacket(), 0))),
    M.LocalInfileRequest: _plain_caps(st.builds(M.LocalInfileRequest, any_str)),
    M.ColumnCount: column_count(),
    M.ColumnDefinition41: _column_definition(M.ColumnDefinition41),
    M.FieldListColumn: _column_definition(M.FieldListColumn),
    M.TextRow: _plain_caps(st.builds(M.TextRow, tuples(st.none() | blob, max_size=8))),
    M.StmtPrepareOk: stmt_prepare_ok(),
    M.BinaryRow: binary_row(),
    M.ComQuery: com_query(),
    M.ComInitDb: _plain_caps(st.builds(M.ComInitDb, any_str)),
    M.ComFieldList: _plain_caps(st.builds(M.ComFieldList, nul_free_str, any_str)),
    M.ComQuit: _plain_caps(st.just(M.ComQuit())),
    M.ComPing: _plain_caps(st.just(M.ComPing())),
    M.ComStatistics: _plain_caps(st.just(M.ComStatistics())),
    M.ComDebug: _plain_caps(st.just(M.ComDebug())),
    M.ComResetConnection: _plain_caps(st.just(M.ComResetConnection())),
    M.ComProcessKill: _plain_caps(st.builds(M.ComProcessKill, uint32)),
    M.ComSetOption: _plain_caps(st.builds(M.ComSetOption, uint16)),
    M.ComChangeUser: com_change_user(),
    M.ComStmtPrepare: _plain_caps(st.builds(M.ComStmtPrepare, any_str)),
    M.ComStmtExecute: com_stmt_execute(),
    M.ComStmtSendLongData: _plain_caps(st.builds(M.ComStmtSendLongData, uint32, uint16, blob)),
    M.ComStmtClose: _plain_caps(st.builds(M.ComStmtClose, uint32)),
    M.ComStmtReset: _plain_caps(st.builds(M.ComStmtReset, uint32)),
    M.ComStmtFetch: _plain_caps(st.builds(M.ComStmtFetch, uint32, uint32)),
    M.ComOther: _plain_caps(st.builds(M.ComOther, st.sampled_from(_OTHER_COMMANDS), blob)),
}


def encode_any(msg, caps: int) -> bytes:
    if isinstance(msg, tuple):  # (types, BinaryRow)
        types, row = msg
        return M.encode_binary_row(row, types)
    return M.encode(msg, caps)


def decode_like(msg, payload: bytes, caps: int):
    """Decode `payload` with the decoder for `msg`'s kind and the context it needs."""
    if isinstance(msg, tuple):
        return msg[0], M.decode_binary_row(payload, msg[0])
    kind = type(msg)
    if kind is M.ComStmtExecute:
        long_data = {i for i, v in enumerate(msg.values) if isinstance(v, M.LongData)}
        return M.decode_stmt_execute(payload, len(msg.values), msg.types, caps, long_data)
    if kind.__name__.startswith("Com"):
        return M.decode_command(payload, caps)
    return {
        M.HandshakeV10: lambda: M.decode_handshake(payload),
        M.SSLRequest: lambda: M.decode_client_handshake(payload),
        M.HandshakeResponse41: lambda: M.decode_handshake_response(payload),
        M.AuthSwitchRequest: lambda: M.decode_auth_switch_request(payload),
        M.AuthSwitchResponse: lambda: M.decode_auth_switch_response(payload),
        M.AuthMoreData: lambda: M.decode_auth_more_data(payload),
        M.AuthNextFactor: lambda: M.decode_auth_next_factor(payload),
        M.OkPacket: lambda: M.decode_ok(payload, caps),
        M.ErrPacket: lambda: M.decode_err(payload, caps),
        M.ProgressReport: lambda: M.decode_err(payload, caps),
        M.EofPacket: lambda: M.decode_eof(payload, caps),
        M.LocalInfileRequest: lambda: M.decode_local_infile(payload),
        M.ColumnCount: lambda: M.decode_column_count(payload, caps),
        M.ColumnDefinition41: lambda: M.decode_column_definition(payload, caps),
        M.FieldListColumn: lambda: M.decode_column_definition(payload, caps, field_list=True),
        M.TextRow: lambda: M.decode_text_row(payload, len(msg.values)),
        M.StmtPrepareOk: lambda: M.decode_stmt_prepare_ok(payload, caps),
    }[kind]()


def test_strategies_cover_every_kind():
    assert set(STRATEGIES) == set(typing.get_args(M.Message)) | {M.BinaryRow}


# --------------------------------------------------------------------------------------------
# Round trips

ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", list(STRATEGIES), ids=lambda k: k.__name__)
@ROUND_TRIP
@given(data=st.data())
def test_round_trip(kind, data):
    msg, caps = data.draw(STRATEGIES[kind])
    decoded = decode_like(msg, encode_any(msg, caps), caps)
    assert decoded == msg
    if not isinstance(msg, tuple):
        assert type(decoded) is type(msg)


# --------------------------------------------------------------------------------------------
# Framing a stream cut anywhere


def _chunks(data, stream: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), uint8, st.data())
def test_framing_any_split(payloads, seq, data):
    wire = bytearray()
    expected = []
    for p in payloads:
        chunk, nxt = P.encode_packets(p, seq)
        wire += chunk
        expected.append(P.Packet(seq, p))
        seq = nxt
    framer = P.PacketFramer()
    got = []
    for piece in _chunks(data, bytes(wire)):
        framer.feed(piece)
        while (pkt := framer.next()) is not None:
            got.append(pkt)
    assert got == expected
    assert framer.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(0, 64), st.booleans())
def test_framer_fuzz(chunks, max_payload, raw):
    framer = P.PacketFramer(max_payload=max_payload)
    try:
        for chunk in chunks:
            framer.feed(chunk)
            while True:
                item = framer.next_raw() if raw else framer.next()
                if item is None:
                    break
                payload = item[1] if raw else item.payload
                assert len(payload) <= max_payload
    except P.ProtocolViolation:
        pass


# --------------------------------------------------------------------------------------------
# Fuzz: arbitrary bytes into every decoder

ALL_CAPS = [
    P41,
    0,
    P41 | Cap.SESSION_TRACK | Cap.DEPRECATE_EOF,
    P41 | Cap.QUERY_ATTRIBUTES | Cap.OPTIONAL_RESULTSET_METADATA | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
    | Cap.CONNECT_ATTRS,
    P41 | Cap.MARIADB_CLIENT_CACHE_METADATA | Cap.MARIADB_CLIENT_EXTENDED_TYPE_INFO | Cap.TRANSACTIONS,
]
some_types = st.lists(typed_value().map(lambda tv: tv[0]), max_size=5).map(tuple)

DECODERS = [
    ("handshake", lambda p, c, d: M.decode_handshake(p)),
    ("ssl_request", lambda p, c, d: M.decode_ssl_request(p)),
    ("handshake_response", lambda p, c, d: M.decode_handshake_response(p)),
    ("client_handshake", lambda p, c, d: M.decode_client_handshake(p, tls_active=d.draw(st.booleans()))),
    ("auth_switch_request", lambda p, c, d: M.decode_auth_switch_request(p)),
    ("auth_more_data", lambda p, c, d: M.decode_auth_more_data(p)),
    ("auth_next_factor", lambda p, c, d: M.decode_auth_next_factor(p)),
    ("ok", lambda p, c, d: (lambda ok: (ok.schema(), ok.system_variables()))(M.decode_ok(p, c))),
    ("err", lambda p, c, d: M.decode_err(p, c)),
    ("eof", lambda p, c, d: M.decode_eof(p, c)),
    ("local_infile", lambda p, c, d: M.decode_local_infile(p)),
    ("column_count", lambda p, c, d: M.decode_column_count(p, c)),
    ("column_definition", lambda p, c, d: M.decode_column_definition(p, c, field_list=d.draw(st.booleans()))),
    ("text_row", lambda p, c, d: M.decode_text_row(p, d.draw(st.none() | st.integers(0, 6)))),
    ("binary_row", lambda p, c, d: M.decode_binary_row(p, d.draw(some_types))),
    ("stmt_prepare_ok", lambda p, c, d: M.decode_stmt_prepare_ok(p, c)),
    ("command", lambda p, c, d: M.decode_command(p, c, param_count=d.draw(st.integers(0, 4)),
                                                 prev_types=d.draw(some_types))),
    ("stmt_execute", lambda p, c, d: M.decode_stmt_execute(p, d.draw(st.integers(0, 4)), d.draw(some_types), c,
                                                            d.draw(st.sets(st.integers(0, 4))))),
    ("stmt_execute_id", lambda p, c, d: M.stmt_execute_id(p)),
    ("result_status", lambda p, c, d: M.result_status(p, c)),
]

# Inputs: random bytes, or random bytes behind a first byte that selects an interesting branch.
_first = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x0A, 0x11, 0x16, 0x17, 0x18, 0x1B, 0x1C, 0xFA, 0xFB, 0xFC,
                          0xFD, 0xFE, 0xFF])
fuzz_payload = st.one_of(st.binary(max_size=96), st.tuples(_first, st.binary(max_size=96)).map(
    lambda t: bytes([t[0]]) + t[1]))

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name, decode", DECODERS, ids=[d[0] for d in DECODERS])
@FUZZ
@given(payload=fuzz_payload, caps=st.sampled_from(ALL_CAPS), data=st.data())
def test_decoders_fuzz(name, decode, payload, caps, data):
    try:
        decode(payload, caps, data)
    except P.ProtocolViolation:
        pass


@settings(max_examples=200, deadline=None)
@given(fuzz_payload, st.sampled_from(ALL_CAPS))
def test_classifiers_never_raise(payload, caps):
    M.is_ok(payload, caps), M.is_eof(payload, caps), M.is_err(payload), M.is_result_end(payload, caps)
    M.is_progress_report(payload), M.is_local_infile(payload), M.is_ssl_request(payload)
    M.is_auth_switch_request(payload), M.is_auth_more_data(payload)
    try:
        M.command_of(payload)
    except P.ProtocolViolation:
        pass


@pytest.mark.parametrize("kind", list(STRATEGIES), ids=lambda k: k.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_messages_fuzz(kind, data):
    """Start from a valid payload and damage it: cut, flip or insert a byte. Its own decoder
    may succeed or raise ProtocolViolation, nothing else."""
    msg, caps = data.draw(STRATEGIES[kind])
    body = bytearray(encode_any(msg, caps))
    op = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    if op == "cut":
        del body[data.draw(st.integers(0, len(body))):]
    elif op == "flip" and body:
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(uint8)
    else:
        body.insert(data.draw(st.integers(0, len(body))), data.draw(uint8))
    try:
        decode_like(msg, bytes(body), caps)
    except P.ProtocolViolation:
        pass


# --------------------------------------------------------------------------------------------
# The response scanner (adapters/mysql/response.py) on whatever an upstream may send


def _scan_all(shape, deprecate_eof, stream, pieces):
    """Feed `pieces` of `stream` as the relay does; (outcome, forwarded, leftover) or the
    ProtocolViolation class."""
    scanner = ResponseScanner(shape, deprecate_eof=deprecate_eof)
    buf, forwarded, fed = bytearray(), bytearray(), 0
    try:
        for piece in pieces:
            buf += piece
            fed += len(piece)
            n = scanner.scan(buf)
            assert 0 <= n <= len(buf)
            forwarded += buf[:n]
            del buf[:n]
            if scanner.done or scanner.wants_infile:
                break
    except P.ProtocolViolation:
        return P.ProtocolViolation
    state = (scanner.done, scanner.wants_infile, scanner.rows, scanner.affected_rows, scanner.results,
             scanner.error_code, scanner.error_message, scanner.statement_id, scanner.column_count, scanner.status)
    return state, bytes(forwarded), bytes(buf) + stream[fed:]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.binary(max_size=24), max_size=10), st.sampled_from(list(range(6))), st.booleans(), st.data(),
)
def test_response_scanner_fuzz(payloads, shape, deprecate_eof, data):
    """Arbitrary packets (valid framing, any payload) never make the scanner raise anything but
    ProtocolViolation, never make it forward a byte it was not given, and split anywhere they
    give what they give whole."""
    stream = b"".join(P.encode_packets(p, i + 1)[0] for i, p in enumerate(payloads))
    whole = _scan_all(Shape(shape), deprecate_eof, stream, [stream])
    chunked = _scan_all(Shape(shape), deprecate_eof, stream, _chunks(data, stream))
    if whole is P.ProtocolViolation:
        # the bad packet is seen whatever the chunks, unless the response ended before it
        assert chunked is P.ProtocolViolation
        return
    assert chunked == whole
    state, forwarded, leftover = whole
    assert forwarded + leftover == stream
