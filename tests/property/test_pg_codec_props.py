"""Property tests of the PostgreSQL wire codec (adapters/postgres/codec.py).

* every message kind round-trips: decode(encode(m)) == m,
* framing a concatenated stream split at arbitrary points gives the same messages,
* decoding arbitrary bytes only ever succeeds or raises ProtocolViolation.
"""

from __future__ import annotations

import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlward.adapters.postgres import codec as c

# --------------------------------------------------------------------------------------------
# Field strategies (ranges are those of the wire fields)

int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
uint8 = st.integers(0, 255)
format_code = st.one_of(st.sampled_from([0, 1]), int16)
blob = st.binary(max_size=64)
value = st.none() | blob  # Int32 length-prefixed value; None is NULL (-1)

# Strings travel NUL-terminated, so they cannot contain NUL. Either ordinary text (no lone
# surrogates), including non-ASCII, or arbitrary non-UTF-8 bytes decoded with surrogateescape as
# the codec does. (Concatenating two independently escaped strings is not canonical: "\udcc3" +
# "\udca9" re-decodes as "é", so the escaped form is always generated from one byte string.)
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24
)
_escaped = st.binary(max_size=24).map(
    lambda b: b.replace(b"\x00", b"").decode("utf-8", "surrogateescape")
)
wire_str = st.one_of(_text, _escaped)
name_str = wire_str.filter(bool)  # list entries terminated by an empty string: non-empty


def tuples(elem, max_size=6):
    return st.lists(elem, max_size=max_size).map(tuple)


# --------------------------------------------------------------------------------------------
# Message strategies, one per Struct

STARTUP = {
    c.StartupMessage: st.builds(
        c.StartupMessage,
        protocol=st.integers(0, 0xFFFF).map(lambda minor: (3 << 16) | minor),
        params=tuples(st.tuples(name_str, wire_str)),
    ),
    c.SSLRequest: st.just(c.SSLRequest()),
    c.GSSENCRequest: st.just(c.GSSENCRequest()),
    c.CancelRequest: st.builds(c.CancelRequest, uint32, st.binary(min_size=4, max_size=256)),
}

FRONTEND = {
    c.Query: st.builds(c.Query, wire_str),
    c.Parse: st.builds(c.Parse, wire_str, wire_str, tuples(uint32)),
    c.Bind: st.builds(c.Bind, wire_str, wire_str, tuples(format_code), tuples(value), tuples(format_code)),
    c.Describe: st.builds(c.Describe, st.sampled_from("SP"), wire_str),
    c.Close: st.builds(c.Close, st.sampled_from("SP"), wire_str),
    c.Execute: st.builds(c.Execute, wire_str, int32),
    c.Flush: st.just(c.Flush()),
    c.Sync: st.just(c.Sync()),
    c.Terminate: st.just(c.Terminate()),
    c.CopyData: st.builds(c.CopyData, blob),
    c.CopyDone: st.just(c.CopyDone()),
    c.CopyFail: st.builds(c.CopyFail, wire_str),
    c.FunctionCall: st.builds(c.FunctionCall, uint32, tuples(format_code), tuples(value), format_code),
    c.PasswordMessage: st.builds(c.PasswordMessage, blob),
    c.SASLInitialResponse: st.builds(c.SASLInitialResponse, wire_str, value),
    c.SASLResponse: st.builds(c.SASLResponse, blob),
}

_error_fields = tuples(st.tuples(st.characters(min_codepoint=1, max_codepoint=127), wire_str))
_field = st.builds(c.FieldDescription, wire_str, uint32, int16, uint32, int16, int32, format_code)

BACKEND = {
    c.AuthenticationOk: st.just(c.AuthenticationOk()),
    c.AuthenticationKerberosV5: st.just(c.AuthenticationKerberosV5()),
    c.AuthenticationCleartextPassword: st.just(c.AuthenticationCleartextPassword()),
    c.AuthenticationMD5Password: st.builds(c.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    c.AuthenticationGSS: st.just(c.AuthenticationGSS()),
    c.AuthenticationGSSContinue: st.builds(c.AuthenticationGSSContinue, blob),
    c.AuthenticationSSPI: st.just(c.AuthenticationSSPI()),
    c.AuthenticationSASL: st.builds(c.AuthenticationSASL, tuples(name_str)),
    c.AuthenticationSASLContinue: st.builds(c.AuthenticationSASLContinue, blob),
    c.AuthenticationSASLFinal: st.builds(c.AuthenticationSASLFinal, blob),
    c.BackendKeyData: st.builds(c.BackendKeyData, uint32, st.binary(min_size=4, max_size=256)),
    c.BindComplete: st.just(c.BindComplete()),
    c.CloseComplete: st.just(c.CloseComplete()),
    c.CommandComplete: st.builds(c.CommandComplete, wire_str),
    c.BackendCopyData: st.builds(c.BackendCopyData, blob),
    c.BackendCopyDone: st.just(c.BackendCopyDone()),
    c.CopyInResponse: st.builds(c.CopyInResponse, uint8, tuples(format_code)),
    c.CopyOutResponse: st.builds(c.CopyOutResponse, uint8, tuples(format_code)),
    c.CopyBothResponse: st.builds(c.CopyBothResponse, uint8, tuples(format_code)),
    c.DataRow: st.builds(c.DataRow, tuples(value)),
    c.EmptyQueryResponse: st.just(c.EmptyQueryResponse()),
    c.ErrorResponse: st.builds(c.ErrorResponse, _error_fields),
    c.NoticeResponse: st.builds(c.NoticeResponse, _error_fields),
    c.FunctionCallResponse: st.builds(c.FunctionCallResponse, value),
    c.NegotiateProtocolVersion: st.builds(c.NegotiateProtocolVersion, int32, tuples(wire_str)),
    c.NoData: st.just(c.NoData()),
    c.NotificationResponse: st.builds(c.NotificationResponse, uint32, wire_str, wire_str),
    c.ParameterDescription: st.builds(c.ParameterDescription, tuples(uint32)),
    c.ParameterStatus: st.builds(c.ParameterStatus, wire_str, wire_str),
    c.ParseComplete: st.just(c.ParseComplete()),
    c.PortalSuspended: st.just(c.PortalSuspended()),
    c.ReadyForQuery: st.builds(c.ReadyForQuery, st.sampled_from("ITE")),
    c.RowDescription: st.builds(c.RowDescription, tuples(_field, max_size=4)),
}

startup_msg = st.one_of(*STARTUP.values())
frontend_msg = st.one_of(*FRONTEND.values())
backend_msg = st.one_of(*BACKEND.values())


def test_strategies_cover_every_kind():
    assert set(STARTUP) == set(typing.get_args(c.StartupPacket))
    assert set(FRONTEND) == set(typing.get_args(c.FrontendMessage))
    assert set(BACKEND) == set(typing.get_args(c.BackendMessage))


# --------------------------------------------------------------------------------------------
# Round trips

def _decode_frontend_as(like, mtype: int, body: bytes):
    msg = c.decode_frontend(mtype, body)
    if isinstance(like, c.SASLInitialResponse):
        return c.decode_sasl_initial(msg)
    if isinstance(like, c.SASLResponse):
        return c.decode_sasl_response(msg)
    return msg


def _one_typed(wire: bytes) -> tuple[int, bytes]:
    framer = c.Framer()
    framer.feed(wire)
    item = framer.next()
    assert item is not None and framer.buffered == 0
    return item


ROUND_TRIP = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(frontend_msg)
def test_frontend_round_trip(msg):
    mtype, body = _one_typed(c.encode_frontend(msg))
    decoded = _decode_frontend_as(msg, mtype, body)
    assert decoded == msg
    assert type(decoded) is type(msg)


@ROUND_TRIP
@given(backend_msg)
def test_backend_round_trip(msg):
    mtype, body = _one_typed(c.encode_backend(msg))
    decoded = c.decode_backend(mtype, body)
    assert decoded == msg
    assert type(decoded) is type(msg)


@settings(max_examples=300, deadline=None)
@given(startup_msg)
def test_startup_round_trip(msg):
    wire = c.encode_startup(msg)
    framer = c.StartupFramer()
    framer.feed(wire)
    packet = framer.next()
    assert packet is not None and framer.buffered == 0
    decoded = c.decode_startup(packet)
    assert decoded == msg
    assert type(decoded) is type(msg)


@settings(max_examples=200, deadline=None)
@given(wire_str)
def test_strings_survive_any_bytes(s):
    assert c.decode_backend(ord("C"), c.encode_backend(c.CommandComplete(s))[5:]) == c.CommandComplete(s)


# --------------------------------------------------------------------------------------------
# Framing arbitrary splits


def _chunks(data: st.DataObject, stream: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


def _drain(framer, chunks):
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        while (item := framer.next()) is not None:
            out.append(item)
    return out


FRAMING = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FRAMING
@given(st.lists(backend_msg, max_size=8), st.data())
def test_backend_framing_any_split(msgs, data):
    wires = [c.encode_backend(m) for m in msgs]
    got = _drain(c.Framer(), _chunks(data, b"".join(wires)))
    assert got == [(w[0], w[5:]) for w in wires]
    assert [c.decode_backend(t, b) for t, b in got] == msgs


@FRAMING
@given(st.lists(frontend_msg, max_size=8), st.data())
def test_frontend_framing_any_split(msgs, data):
    wires = [c.encode_frontend(m) for m in msgs]
    got = _drain(c.Framer(), _chunks(data, b"".join(wires)))
    assert got == [(w[0], w[5:]) for w in wires]
    assert [_decode_frontend_as(m, t, b) for m, (t, b) in zip(msgs, got)] == msgs


@FRAMING
@given(st.lists(startup_msg, max_size=6), st.data())
def test_startup_framing_any_split(msgs, data):
    wires = [c.encode_startup(m) for m in msgs]
    got = _drain(c.StartupFramer(), _chunks(data, b"".join(wires)))
    assert [c.decode_startup(p) for p in got] == msgs


# --------------------------------------------------------------------------------------------
# Fuzz: arbitrary bytes only ever decode or raise ProtocolViolation

FUZZ = settings(max_examples=1500, deadline=None)

frontend_type = st.one_of(st.sampled_from([int(t) for t in c.Frontend]), uint8)
backend_type = st.one_of(st.sampled_from([int(t) for t in c.Backend]), uint8)


def _auth_body(draw_code, rest):
    return draw_code.to_bytes(4, "big", signed=True) + rest


@FUZZ
@given(frontend_type, st.binary(max_size=96))
def test_decode_frontend_fuzz(mtype, body):
    try:
        msg = c.decode_frontend(mtype, body)
    except c.ProtocolViolation:
        return
    if isinstance(msg, c.PasswordMessage):
        for decode in (c.decode_sasl_initial, c.decode_sasl_response):
            try:
                decode(msg)
            except c.ProtocolViolation:
                pass


@FUZZ
@given(backend_type, st.binary(max_size=96))
def test_decode_backend_fuzz(mtype, body):
    try:
        c.decode_backend(mtype, body)
    except c.ProtocolViolation:
        pass


@settings(max_examples=500, deadline=None)
@given(st.integers(-1, 14), st.binary(max_size=48))
def test_decode_authentication_fuzz(code, rest):
    # Authentication requests: reach every sub-code, not just random leading bytes.
    try:
        c.decode_backend(ord("R"), _auth_body(code, rest))
    except c.ProtocolViolation:
        pass


_startup_code = st.sampled_from(
    [b"\x00\x03\x00\x00", b"\x00\x03\x00\x02", b"\x04\xd2\x16\x2e", b"\x04\xd2\x16\x2f", b"\x04\xd2\x16\x30"]
)


@FUZZ
@given(st.one_of(st.binary(max_size=96), st.tuples(_startup_code, st.binary(max_size=96)).map(b"".join)))
def test_decode_startup_fuzz(packet):
    try:
        c.decode_startup(packet)
    except c.ProtocolViolation:
        pass


@settings(max_examples=500, deadline=None)
@given(st.one_of(frontend_msg.map(c.encode_frontend), backend_msg.map(c.encode_backend)), st.data())
def test_mutated_messages_fuzz(wire, data):
    # Start from a valid message and damage it: truncate, flip or insert a byte. Decoding with
    # either direction's decoder may succeed or raise ProtocolViolation, nothing else.
    body = bytearray(wire[5:])
    op = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    if op == "cut":
        del body[data.draw(st.integers(0, len(body))) :]
    elif op == "flip" and body:
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(uint8)
    else:
        body.insert(data.draw(st.integers(0, len(body))), data.draw(uint8))
    for decode in (c.decode_frontend, c.decode_backend):
        try:
            decode(wire[0], bytes(body))
        except c.ProtocolViolation:
            pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(0, 200))
def test_framers_fuzz(chunks, max_size):
    framer = c.Framer(max_size=max_size)
    startup = c.StartupFramer()
    for fr in (framer, startup):
        try:
            for chunk in chunks:
                fr.feed(chunk)
                while (item := fr.next()) is not None:
                    if fr is framer:
                        mtype, body = item
                        assert 0 <= mtype <= 255 and len(body) <= max_size
                    else:
                        assert 4 <= len(item) <= c.MAX_STARTUP_PACKET - 4
        except c.ProtocolViolation:
            pass
