"""Byte-exact tests of the PostgreSQL wire codec (adapters/postgres/codec.py).

Every expected byte string below is written by hand from the protocol documentation
(https://www.postgresql.org/docs/current/protocol-message-formats.html), never produced by the
codec: typed messages are Byte1(type) + Int32(length including itself, excluding the type byte)
+ body; startup packets are Int32(length including itself) + Int32(code) + body.
"""

from __future__ import annotations

import struct
import typing

import pytest

from sqlward.adapters.postgres import codec
from sqlward.adapters.postgres.codec import (
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    Backend,
    BackendCopyData,
    BackendCopyDone,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    Framer,
    Frontend,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    MessageTooLarge,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    ProtocolViolation,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupFramer,
    StartupMessage,
    Sync,
    Terminate,
    command_rows,
    decode_backend,
    decode_frontend,
    decode_sasl_initial,
    decode_sasl_response,
    decode_startup,
    encode_backend,
    encode_frontend,
    encode_startup,
    error_fields,
    error_response,
)

KEY32 = bytes(range(32))

# --------------------------------------------------------------------------------------------
# Byte tables: (message, expected wire bytes, id)

FRONTEND_TABLE = [
    (Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00", "query"),
    (Query(""), b"Q\x00\x00\x00\x05\x00", "query-empty"),
    (Query("SELECT 'é'"), b"Q\x00\x00\x00\x10SELECT '\xc3\xa9'\x00", "query-utf8"),
    (Query("SELECT '\udcff'"), b"Q\x00\x00\x00\x0fSELECT '\xff'\x00", "query-invalid-utf8"),
    (
        Parse("s1", "SELECT $1, $2", (23, 25)),
        b"P\x00\x00\x00\x1f"
        b"s1\x00"
        b"SELECT $1, $2\x00"
        b"\x00\x02"  # Int16 number of parameter types
        b"\x00\x00\x00\x17"  # int4
        b"\x00\x00\x00\x19",  # text
        "parse-param-types",
    ),
    (
        Parse("", "SELECT $1", (0,)),  # 0 = unspecified type
        b"P\x00\x00\x00\x15\x00SELECT $1\x00\x00\x01\x00\x00\x00\x00",
        "parse-unspecified-type",
    ),
    (Parse("", "SELECT 1"), b"P\x00\x00\x00\x10\x00SELECT 1\x00\x00\x00", "parse-unnamed"),
    (
        Bind("p1", "s1", (0, 0, 1), (b"42", None, b"\x00\x01"), (1,)),
        b"B\x00\x00\x00\x28"
        b"p1\x00"  # portal
        b"s1\x00"  # statement
        b"\x00\x03\x00\x00\x00\x00\x00\x01"  # 3 parameter format codes: text, text, binary
        b"\x00\x03"  # 3 parameter values
        b"\x00\x00\x00\x0242"  # "42"
        b"\xff\xff\xff\xff"  # NULL
        b"\x00\x00\x00\x02\x00\x01"  # 2 binary bytes
        b"\x00\x01\x00\x01",  # 1 result format code: binary
        "bind-null-and-values",
    ),
    (
        Bind("", "st", (), (b"", None), ()),
        b"B\x00\x00\x00\x16\x00st\x00\x00\x00\x00\x02\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00",
        "bind-empty-vs-null",
    ),
    (Bind("", ""), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00", "bind-unnamed-empty"),
    (Describe("S", "s1"), b"D\x00\x00\x00\x08Ss1\x00", "describe-statement"),
    (Describe("P", ""), b"D\x00\x00\x00\x06P\x00", "describe-portal"),
    (Close("S", "s1"), b"C\x00\x00\x00\x08Ss1\x00", "close-statement"),
    (Close("P", "p1"), b"C\x00\x00\x00\x08Pp1\x00", "close-portal"),
    (Execute("p1", 100), b"E\x00\x00\x00\x0bp1\x00\x00\x00\x00\x64", "execute"),
    (Execute(""), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00", "execute-unlimited"),
    (Flush(), b"H\x00\x00\x00\x04", "flush"),
    (Sync(), b"S\x00\x00\x00\x04", "sync"),
    (Terminate(), b"X\x00\x00\x00\x04", "terminate"),
    (CopyData(b"1\tfoo\n"), b"d\x00\x00\x00\x0a1\tfoo\n", "copy-data"),
    (CopyData(b""), b"d\x00\x00\x00\x04", "copy-data-empty"),
    (CopyDone(), b"c\x00\x00\x00\x04", "copy-done"),
    (CopyFail("aborted"), b"f\x00\x00\x00\x0caborted\x00", "copy-fail"),
    (
        FunctionCall(1598, (1,), (b"\x00\x00\x00\x2a", None), 1),
        b"F\x00\x00\x00\x1c"
        b"\x00\x00\x06\x3e"  # function OID 1598
        b"\x00\x01\x00\x01"  # 1 argument format code: binary
        b"\x00\x02"  # 2 arguments
        b"\x00\x00\x00\x04\x00\x00\x00\x2a"
        b"\xff\xff\xff\xff"  # NULL
        b"\x00\x01",  # result format: binary
        "function-call",
    ),
    (PasswordMessage(b"secret\x00"), b"p\x00\x00\x00\x0bsecret\x00", "password"),
    (
        SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
        "sasl-initial",
    ),
    (
        SASLInitialResponse("SCRAM-SHA-256", None),
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff",
        "sasl-initial-no-data",
    ),
    (
        SASLInitialResponse("SCRAM-SHA-256", b""),
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\x00\x00\x00\x00",
        "sasl-initial-empty-data",
    ),
    (SASLResponse(b"c=biws,r=abc,p=xyz"), b"p\x00\x00\x00\x16c=biws,r=abc,p=xyz", "sasl-response"),
]

BACKEND_TABLE = [
    (AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00", "auth-ok"),
    (AuthenticationKerberosV5(), b"R\x00\x00\x00\x08\x00\x00\x00\x02", "auth-krb5"),
    (AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03", "auth-cleartext"),
    (
        AuthenticationMD5Password(b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
        "auth-md5",
    ),
    (AuthenticationGSS(), b"R\x00\x00\x00\x08\x00\x00\x00\x07", "auth-gss"),
    (AuthenticationGSSContinue(b"tok"), b"R\x00\x00\x00\x0b\x00\x00\x00\x08tok", "auth-gss-continue"),
    (AuthenticationSSPI(), b"R\x00\x00\x00\x08\x00\x00\x00\x09", "auth-sspi"),
    (
        AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
        "auth-sasl-two",
    ),
    (
        AuthenticationSASL(("SCRAM-SHA-256",)),
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
        "auth-sasl-one",
    ),
    (
        AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
        b"R\x00\x00\x00\x1f\x00\x00\x00\x0br=abc,s=c2FsdA==,i=4096",
        "auth-sasl-continue",
    ),
    (AuthenticationSASLFinal(b"v=xyz="), b"R\x00\x00\x00\x0e\x00\x00\x00\x0cv=xyz=", "auth-sasl-final"),
    (
        BackendKeyData(4321, b"\x0a\x0b\x0c\x0d"),
        b"K\x00\x00\x00\x0c\x00\x00\x10\xe1\x0a\x0b\x0c\x0d",
        "backend-key-data",
    ),
    (
        BackendKeyData(0xFFFFFFFF, KEY32),  # protocol 3.2: variable-length key
        b"K\x00\x00\x00\x28\xff\xff\xff\xff" + KEY32,
        "backend-key-data-3.2",
    ),
    (BindComplete(), b"2\x00\x00\x00\x04", "bind-complete"),
    (CloseComplete(), b"3\x00\x00\x00\x04", "close-complete"),
    (CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00", "command-complete"),
    (CommandComplete("INSERT 0 3"), b"C\x00\x00\x00\x0fINSERT 0 3\x00", "command-complete-insert"),
    (BackendCopyData(b"abc"), b"d\x00\x00\x00\x07abc", "copy-data"),
    (BackendCopyDone(), b"c\x00\x00\x00\x04", "copy-done"),
    (
        CopyInResponse(0, (0, 0)),
        b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00",
        "copy-in-response",
    ),
    (CopyOutResponse(1, (1,)), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01", "copy-out-response"),
    (CopyBothResponse(0, ()), b"W\x00\x00\x00\x07\x00\x00\x00", "copy-both-response"),
    (
        DataRow((b"1", None, b"", b"abc")),
        b"D\x00\x00\x00\x1a"
        b"\x00\x04"
        b"\x00\x00\x00\x011"
        b"\xff\xff\xff\xff"  # NULL
        b"\x00\x00\x00\x00"  # empty, not NULL
        b"\x00\x00\x00\x03abc",
        "data-row-nulls",
    ),
    (DataRow(()), b"D\x00\x00\x00\x06\x00\x00", "data-row-empty"),
    (EmptyQueryResponse(), b"I\x00\x00\x00\x04", "empty-query-response"),
    (
        ErrorResponse(
            (("S", "ERROR"), ("V", "ERROR"), ("C", "42P01"), ("M", 'relation "t" does not exist'))
        ),
        b"E\x00\x00\x00\x37"
        b"SERROR\x00VERROR\x00C42P01\x00"
        b'Mrelation "t" does not exist\x00'
        b"\x00",
        "error-response",
    ),
    (ErrorResponse(()), b"E\x00\x00\x00\x05\x00", "error-response-no-fields"),
    (
        NoticeResponse((("S", "NOTICE"), ("V", "NOTICE"), ("C", "00000"), ("M", "hi"))),
        b"N\x00\x00\x00\x20SNOTICE\x00VNOTICE\x00C00000\x00Mhi\x00\x00",
        "notice-response",
    ),
    (
        FunctionCallResponse(b"\x00\x00\x00\x2a"),
        b"V\x00\x00\x00\x0c\x00\x00\x00\x04\x00\x00\x00\x2a",
        "function-call-response",
    ),
    (FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff", "function-call-response-null"),
    (
        NegotiateProtocolVersion(0, ("_pq_.foo",)),
        b"v\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x01_pq_.foo\x00",
        "negotiate-protocol-version",
    ),
    (
        NegotiateProtocolVersion(2),
        b"v\x00\x00\x00\x0c\x00\x00\x00\x02\x00\x00\x00\x00",
        "negotiate-protocol-version-no-options",
    ),
    (NoData(), b"n\x00\x00\x00\x04", "no-data"),
    (
        NotificationResponse(77, "chan", "payload"),
        b"A\x00\x00\x00\x15\x00\x00\x00\x4dchan\x00payload\x00",
        "notification-response",
    ),
    (
        ParameterDescription((23, 25)),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
        "parameter-description",
    ),
    (ParameterDescription(()), b"t\x00\x00\x00\x06\x00\x00", "parameter-description-empty"),
    (
        ParameterStatus("server_version", "16.2"),
        b"S\x00\x00\x00\x18server_version\x0016.2\x00",
        "parameter-status",
    ),
    (ParseComplete(), b"1\x00\x00\x00\x04", "parse-complete"),
    (PortalSuspended(), b"s\x00\x00\x00\x04", "portal-suspended"),
    (ReadyForQuery("I"), b"Z\x00\x00\x00\x05I", "ready-idle"),
    (ReadyForQuery("T"), b"Z\x00\x00\x00\x05T", "ready-in-transaction"),
    (ReadyForQuery("E"), b"Z\x00\x00\x00\x05E", "ready-failed-transaction"),
    (
        RowDescription(
            (
                FieldDescription("id", 16384, 1, 23, 4, -1, 0),
                FieldDescription("name", 0, 0, 25, -1, -1, 1),
            )
        ),
        b"T\x00\x00\x00\x32"
        b"\x00\x02"
        b"id\x00"
        b"\x00\x00\x40\x00"  # table OID 16384
        b"\x00\x01"  # column attribute number
        b"\x00\x00\x00\x17"  # int4
        b"\x00\x04"  # type size 4
        b"\xff\xff\xff\xff"  # type modifier -1
        b"\x00\x00"  # text format
        b"name\x00"
        b"\x00\x00\x00\x00"
        b"\x00\x00"
        b"\x00\x00\x00\x19"  # text
        b"\xff\xff"  # type size -1 (varlena)
        b"\xff\xff\xff\xff"
        b"\x00\x01",  # binary format
        "row-description",
    ),
    (RowDescription(()), b"T\x00\x00\x00\x06\x00\x00", "row-description-empty"),
]

STARTUP_TABLE = [
    (
        StartupMessage(196608, (("user", "alice"), ("database", "db"))),
        b"\x00\x00\x00\x20"
        b"\x00\x03\x00\x00"  # protocol 3.0
        b"user\x00alice\x00database\x00db\x00"
        b"\x00",
        "startup-3.0",
    ),
    (
        StartupMessage(196610, (("user", "bob"),)),
        b"\x00\x00\x00\x12\x00\x03\x00\x02user\x00bob\x00\x00",
        "startup-3.2",
    ),
    (StartupMessage(), b"\x00\x00\x00\x09\x00\x03\x00\x00\x00", "startup-no-params"),
    (
        StartupMessage(196608, (("application_name", "caf\xe9"),)),
        b"\x00\x00\x00\x20\x00\x03\x00\x00application_name\x00caf\xc3\xa9\x00\x00",
        "startup-utf8",
    ),
    (SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f", "ssl-request"),
    (GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30", "gssenc-request"),
    (
        CancelRequest(1234, b"\xde\xad\xbe\xef"),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef",
        "cancel-request",
    ),
    (
        CancelRequest(0xFFFFFFFF, KEY32),
        b"\x00\x00\x00\x2c\x04\xd2\x16\x2e\xff\xff\xff\xff" + KEY32,
        "cancel-request-3.2",
    ),
]


def _params(table):
    return [pytest.param(m, e, id=i) for m, e, i in table]


def _split_typed(wire: bytes) -> tuple[int, bytes]:
    """Split one typed message by hand (not with the codec) and check its length word."""
    (length,) = struct.unpack("!I", wire[1:5])
    assert length == len(wire) - 1, "the table entry itself has a wrong length word"
    return wire[0], wire[5:]


def _split_startup(wire: bytes) -> bytes:
    (length,) = struct.unpack("!I", wire[:4])
    assert length == len(wire), "the table entry itself has a wrong length word"
    return wire[4:]


def _decode_f(mtype: int, body: bytes, like: object):
    msg = decode_frontend(mtype, body)
    if isinstance(like, SASLInitialResponse):
        assert type(msg) is PasswordMessage
        msg = decode_sasl_initial(msg)
    elif isinstance(like, SASLResponse):
        assert type(msg) is PasswordMessage
        msg = decode_sasl_response(msg)
    return msg


# --------------------------------------------------------------------------------------------
# Byte tables both ways


@pytest.mark.parametrize(("msg", "wire"), _params(FRONTEND_TABLE))
def test_encode_frontend(msg, wire):
    assert encode_frontend(msg) == wire


@pytest.mark.parametrize(("msg", "wire"), _params(FRONTEND_TABLE))
def test_decode_frontend(msg, wire):
    mtype, body = _split_typed(wire)
    decoded = _decode_f(mtype, body, msg)
    assert decoded == msg
    assert type(decoded) is type(msg)


@pytest.mark.parametrize(("msg", "wire"), _params(BACKEND_TABLE))
def test_encode_backend(msg, wire):
    assert encode_backend(msg) == wire


@pytest.mark.parametrize(("msg", "wire"), _params(BACKEND_TABLE))
def test_decode_backend(msg, wire):
    mtype, body = _split_typed(wire)
    decoded = decode_backend(mtype, body)
    assert decoded == msg
    assert type(decoded) is type(msg)


@pytest.mark.parametrize(("msg", "wire"), _params(STARTUP_TABLE))
def test_encode_startup(msg, wire):
    assert encode_startup(msg) == wire


@pytest.mark.parametrize(("msg", "wire"), _params(STARTUP_TABLE))
def test_decode_startup(msg, wire):
    decoded = decode_startup(_split_startup(wire))
    assert decoded == msg
    assert type(decoded) is type(msg)


@pytest.mark.parametrize(
    ("union", "table"),
    [
        (codec.FrontendMessage, FRONTEND_TABLE),
        (codec.BackendMessage, BACKEND_TABLE),
        (codec.StartupPacket, STARTUP_TABLE),
    ],
    ids=["frontend", "backend", "startup"],
)
def test_tables_cover_every_kind(union, table):
    assert {type(m) for m, _, _ in table} == set(typing.get_args(union))


def test_type_bytes_match_the_documentation():
    assert {m.name: chr(m.value) for m in Frontend} == {
        "BIND": "B", "CLOSE": "C", "COPY_DATA": "d", "COPY_DONE": "c", "COPY_FAIL": "f",
        "DESCRIBE": "D", "EXECUTE": "E", "FLUSH": "H", "FUNCTION_CALL": "F", "PARSE": "P",
        "PASSWORD": "p", "QUERY": "Q", "SYNC": "S", "TERMINATE": "X",
    }
    assert {m.name: chr(m.value) for m in Backend} == {
        "AUTHENTICATION": "R", "BACKEND_KEY_DATA": "K", "BIND_COMPLETE": "2",
        "CLOSE_COMPLETE": "3", "COMMAND_COMPLETE": "C", "COPY_DATA": "d", "COPY_DONE": "c",
        "COPY_IN_RESPONSE": "G", "COPY_OUT_RESPONSE": "H", "COPY_BOTH_RESPONSE": "W",
        "DATA_ROW": "D", "EMPTY_QUERY_RESPONSE": "I", "ERROR_RESPONSE": "E",
        "FUNCTION_CALL_RESPONSE": "V", "NEGOTIATE_PROTOCOL_VERSION": "v", "NO_DATA": "n",
        "NOTICE_RESPONSE": "N", "NOTIFICATION_RESPONSE": "A", "PARAMETER_DESCRIPTION": "t",
        "PARAMETER_STATUS": "S", "PARSE_COMPLETE": "1", "PORTAL_SUSPENDED": "s",
        "READY_FOR_QUERY": "Z", "ROW_DESCRIPTION": "T",
    }


def test_notice_is_not_an_error():
    fields = (("S", "WARNING"), ("M", "x"))
    assert decode_backend(ord("N"), b"SWARNING\x00Mx\x00\x00") == NoticeResponse(fields)
    assert type(decode_backend(ord("E"), b"SWARNING\x00Mx\x00\x00")) is ErrorResponse


# --------------------------------------------------------------------------------------------
# Message helpers


def test_password_message_helpers():
    assert PasswordMessage(b"secret\x00").password == "secret"
    assert PasswordMessage(b"secret").password == "secret"
    assert PasswordMessage(b"\xff\x00").password == "\udcff"
    assert PasswordMessage.from_password("pässword") == PasswordMessage(b"p\xc3\xa4ssword\x00")
    with pytest.raises(ValueError):
        PasswordMessage.from_password("a\x00b")


def test_startup_param_lookup():
    msg = StartupMessage(params=(("user", "alice"), ("database", "db")))
    assert msg.param("user") == "alice"
    assert msg.param("database") == "db"
    assert msg.param("options") is None
    assert msg.param("options", "x") == "x"


def test_error_response_accessors():
    err = ErrorResponse((("S", "FEHLER"), ("V", "ERROR"), ("C", "42P01"), ("M", "boom")))
    assert (err.severity, err.sqlstate, err.message) == ("ERROR", "42P01", "boom")
    assert err.field("D") == "" and err.field("D", "-") == "-"
    assert ErrorResponse((("S", "FATAL"),)).severity == "FATAL"  # no V field (pre-9.6 servers)


def test_encoders_refuse_nul_in_strings():
    with pytest.raises(ValueError):
        encode_frontend(Query("SELECT 1\x00; DROP TABLE t"))
    with pytest.raises(ValueError):
        encode_startup(StartupMessage(params=(("user", "a\x00b"),)))
    with pytest.raises(ValueError):
        encode_backend(ParameterStatus("a", "b\x00"))


def test_encoders_refuse_other_kinds():
    with pytest.raises(TypeError):
        encode_frontend(ReadyForQuery("I"))
    with pytest.raises(TypeError):
        encode_backend(Query("x"))


# --------------------------------------------------------------------------------------------
# Framing


def _feed_bytewise(framer, stream: bytes) -> list:
    out = []
    for i in range(len(stream)):
        framer.feed(stream[i : i + 1])
        while (item := framer.next()) is not None:
            out.append(item)
    return out


@pytest.mark.parametrize("table", [FRONTEND_TABLE, BACKEND_TABLE], ids=["frontend", "backend"])
def test_framer_one_byte_at_a_time(table):
    stream = b"".join(wire for _, wire, _ in table)
    framer = Framer()
    got = _feed_bytewise(framer, stream)
    assert got == [_split_typed(wire) for _, wire, _ in table]
    assert framer.buffered == 0
    assert framer.next() is None


def test_startup_framer_one_byte_at_a_time():
    stream = b"".join(wire for _, wire, _ in STARTUP_TABLE)
    framer = StartupFramer()
    got = _feed_bytewise(framer, stream)
    assert got == [_split_startup(wire) for _, wire, _ in STARTUP_TABLE]
    assert [decode_startup(p) for p in got] == [m for m, _, _ in STARTUP_TABLE]
    assert framer.buffered == 0


def test_framer_all_at_once_and_take_rest():
    framer = Framer()
    framer.feed(b"Z\x00\x00\x00\x05IS\x00\x00\x00\x04Q\x00\x00")
    assert framer.next() == (ord("Z"), b"I")
    assert framer.next() == (ord("S"), b"")
    assert framer.next() is None
    assert framer.buffered == 3
    assert framer.take_rest() == b"Q\x00\x00"
    assert framer.buffered == 0


def test_startup_framer_take_rest():
    # SSLRequest directly followed by the start of a TLS ClientHello
    framer = StartupFramer()
    framer.feed(b"\x00\x00\x00\x08\x04\xd2\x16\x2f\x16\x03\x01")
    assert framer.next() == b"\x04\xd2\x16\x2f"
    assert framer.next() is None
    assert framer.take_rest() == b"\x16\x03\x01"


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_framer_rejects_length_below_4(length):
    framer = Framer()
    framer.feed(b"Q" + struct.pack("!I", length))
    with pytest.raises(ProtocolViolation):
        framer.next()


@pytest.mark.parametrize("length", [0, 4, 7, 10_001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_framer_rejects_invalid_lengths(length):
    framer = StartupFramer()
    framer.feed(struct.pack("!I", length))  # only the length word: no body needed to refuse
    with pytest.raises(ProtocolViolation):
        framer.next()


@pytest.mark.parametrize("length", [8, 10_000])
def test_startup_framer_accepts_boundary_lengths(length):
    framer = StartupFramer()
    framer.feed(struct.pack("!I", length) + b"\x00" * (length - 5))
    assert framer.next() is None  # one byte short
    framer.feed(b"\x00")
    assert framer.next() == b"\x00" * (length - 4)


def test_framer_too_large_before_the_body_arrives():
    framer = Framer(max_size=100)
    framer.feed(b"Q\x00\x00\x00\x69")  # body of 101 bytes announced, none sent
    with pytest.raises(MessageTooLarge) as exc:
        framer.next()
    assert isinstance(exc.value, ProtocolViolation)
    assert exc.value.sqlstate == "54000"


def test_framer_max_size_is_inclusive():
    framer = Framer(max_size=100)
    framer.feed(b"d\x00\x00\x00\x68")  # body of exactly 100 bytes
    assert framer.next() is None
    framer.feed(b"x" * 100)
    assert framer.next() == (ord("d"), b"x" * 100)


def test_framer_huge_length_with_default_limit():
    framer = Framer()
    framer.feed(b"Q\xff\xff\xff\xff")
    with pytest.raises(MessageTooLarge):
        framer.next()


def test_framer_waits_for_a_full_header():
    framer = Framer()
    for b in b"Q\x00\x00\x00":
        framer.feed(bytes([b]))
        assert framer.next() is None
    assert framer.buffered == 4


def test_protocol_violation_sqlstate():
    assert ProtocolViolation.sqlstate == "08P01"


# --------------------------------------------------------------------------------------------
# Truncated bodies, trailing garbage, unknown type bytes, invalid field values

# Kinds whose body ends in an opaque "rest of the message" field: a shorter body can be another
# valid message of the same kind, so truncation / extra bytes need not be an error.
OPAQUE_TAIL = (
    CopyData, PasswordMessage, SASLResponse,  # decode_frontend returns the raw bytes
    AuthenticationGSSContinue, AuthenticationSASLContinue, AuthenticationSASLFinal,
    BackendKeyData, BackendCopyData,
    CancelRequest,
)


def _all_entries():
    for m, wire, i in FRONTEND_TABLE:
        mtype, body = _split_typed(wire)
        yield pytest.param(m, body, lambda b, t=mtype, m=m: _decode_f(t, b, m), id="F-" + i)
    for m, wire, i in BACKEND_TABLE:
        mtype, body = _split_typed(wire)
        yield pytest.param(m, body, lambda b, t=mtype: decode_backend(t, b), id="B-" + i)
    for m, wire, i in STARTUP_TABLE:
        yield pytest.param(m, _split_startup(wire), decode_startup, id="S-" + i)


@pytest.mark.parametrize(("msg", "body", "decode"), list(_all_entries()))
def test_truncated_bodies_raise_protocol_violation(msg, body, decode):
    for cut in range(len(body)):
        try:
            got = decode(body[:cut])
        except ProtocolViolation:
            continue
        # Any other exception (IndexError, struct.error, UnicodeError, ...) fails the test.
        assert isinstance(msg, OPAQUE_TAIL), f"body cut at {cut} decoded as {got!r}"
        assert type(got) is type(msg)


@pytest.mark.parametrize(("msg", "body", "decode"), list(_all_entries()))
@pytest.mark.parametrize("garbage", [b"\x00", b"\xff", b"junk\x00"], ids=["nul", "ff", "junk"])
def test_trailing_garbage_raises_protocol_violation(msg, body, decode, garbage):
    if isinstance(msg, OPAQUE_TAIL):
        got = decode(body + garbage)  # extra bytes belong to the opaque tail
        assert type(got) is type(msg)
        return
    with pytest.raises(ProtocolViolation):
        decode(body + garbage)


def test_sasl_initial_truncated_and_trailing():
    body = b"SCRAM-SHA-256\x00\x00\x00\x00\x03abc"
    assert decode_sasl_initial(PasswordMessage(body)) == SASLInitialResponse("SCRAM-SHA-256", b"abc")
    for cut in range(len(body)):
        with pytest.raises(ProtocolViolation):
            decode_sasl_initial(PasswordMessage(body[:cut]))
    with pytest.raises(ProtocolViolation):
        decode_sasl_initial(PasswordMessage(body + b"d"))
    with pytest.raises(ProtocolViolation):  # negative length other than -1
        decode_sasl_initial(PasswordMessage(b"SCRAM-SHA-256\x00\xff\xff\xff\xfe"))


_FRONTEND_TYPES = {int(t) for t in Frontend}
_BACKEND_TYPES = {int(t) for t in Backend}


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x00", b"SELECT 1\x00"], ids=["empty", "zeros", "text"])
def test_unknown_type_bytes(body):
    for t in range(256):
        if t not in _FRONTEND_TYPES:
            with pytest.raises(ProtocolViolation):
                decode_frontend(t, body)
        if t not in _BACKEND_TYPES:
            with pytest.raises(ProtocolViolation):
                decode_backend(t, body)


INVALID_FRONTEND = [
    ("D", b"Xname\x00", "describe-bad-kind"),
    ("C", b"sname\x00", "close-lowercase-kind"),
    ("D", b"", "describe-empty"),
    ("Q", b"SELECT 1", "query-no-nul"),
    ("P", b"\x00SELECT 1\x00\xff\xff", "parse-negative-count"),
    ("P", b"\x00SELECT 1\x00\x00\x02\x00\x00\x00\x17", "parse-missing-type"),
    ("B", b"\x00\x00\xff\xff\x00\x00\x00\x00", "bind-negative-format-count"),
    ("B", b"\x00\x00\x00\x00\xff\xff\x00\x00", "bind-negative-param-count"),
    ("B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00", "bind-value-length-minus-2"),
    ("B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05ab\x00\x00", "bind-value-overruns"),
    ("B", b"\x00\x00\x00\x00\x00\x00\xff\xff", "bind-negative-result-count"),
    ("E", b"p1\x00\x00\x00", "execute-short-max-rows"),
    ("H", b"\x00", "flush-with-body"),
    ("S", b"x", "sync-with-body"),
    ("X", b"\x00", "terminate-with-body"),
    ("c", b"x", "copy-done-with-body"),
    ("f", b"oops", "copy-fail-no-nul"),
    ("F", b"\x00\x00\x06\x3e\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00", "function-call-bad-length"),
]


@pytest.mark.parametrize(("mtype", "body"), [pytest.param(t, b, id=i) for t, b, i in INVALID_FRONTEND])
def test_invalid_frontend_bodies(mtype, body):
    with pytest.raises(ProtocolViolation):
        decode_frontend(ord(mtype), body)


INVALID_BACKEND = [
    ("R", b"", "auth-no-code"),
    ("R", b"\x00\x00\x00\x01", "auth-code-1"),
    ("R", b"\x00\x00\x00\x04", "auth-code-4-crypt"),
    ("R", b"\x00\x00\x00\x06", "auth-code-6-scm"),
    ("R", b"\x00\x00\x00\x0d", "auth-code-13"),
    ("R", b"\xff\xff\xff\xff", "auth-code-minus-1"),
    ("R", b"\x00\x00\x00\x05\x01\x02\x03", "auth-md5-short-salt"),
    ("R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00", "auth-sasl-unterminated-list"),
    ("K", b"\x00\x00\x10", "key-data-short-pid"),
    ("Z", b"", "ready-no-status"),
    ("Z", b"X", "ready-bad-status"),
    ("Z", b"i", "ready-lowercase-status"),
    ("D", b"\xff\xff", "data-row-negative-count"),
    ("D", b"\x00\x01\xff\xff\xff\xfe", "data-row-length-minus-2"),
    ("D", b"\x00\x01\x00\x00\x00\x05ab", "data-row-value-overruns"),
    ("D", b"\x00\x02\xff\xff\xff\xff", "data-row-missing-column"),
    ("T", b"\xff\xff", "row-description-negative-count"),
    ("T", b"\x00\x01id\x00\x00\x00\x00\x00", "row-description-short-field"),
    ("E", b"SERROR\x00", "error-unterminated"),
    ("E", b"SERROR", "error-field-no-nul"),
    ("E", b"", "error-empty"),
    ("N", b"SNOTICE\x00", "notice-unterminated"),
    ("C", b"SELECT 1", "command-complete-no-nul"),
    ("V", b"\xff\xff\xff\xfe", "function-call-response-length-minus-2"),
    ("V", b"\x00\x00\x00\x04ab", "function-call-response-overruns"),
    ("v", b"\x00\x00\x00\x00\x00\x00\x00\x02a\x00", "negotiate-missing-option"),
    ("A", b"\x00\x00\x00\x01chan\x00", "notification-missing-payload"),
    ("t", b"\x00\x02\x00\x00\x00\x17", "parameter-description-missing-oid"),
    ("S", b"name\x00", "parameter-status-missing-value"),
    ("G", b"\x00\x00\x02\x00\x00", "copy-in-missing-format"),
    ("1", b"\x00", "parse-complete-with-body"),
    ("n", b"x", "no-data-with-body"),
]


@pytest.mark.parametrize(("mtype", "body"), [pytest.param(t, b, id=i) for t, b, i in INVALID_BACKEND])
def test_invalid_backend_bodies(mtype, body):
    with pytest.raises(ProtocolViolation):
        decode_backend(ord(mtype), body)


INVALID_STARTUP = [
    (b"", "empty"),
    (b"\x00\x03\x00", "short-code"),
    (b"\x04\xd2\x16\x2f\x00", "ssl-request-with-body"),
    (b"\x04\xd2\x16\x30\x00\x00\x00\x00", "gssenc-request-with-body"),
    (b"\x04\xd2\x16\x2e\x00\x00\x04", "cancel-short-pid"),
    (b"\x04\xd2\x16\x2e\x00\x00\x04\xd2\x01\x02\x03", "cancel-key-3-bytes"),
    (b"\x04\xd2\x16\x2e\x00\x00\x04\xd2" + b"k" * 257, "cancel-key-257-bytes"),
    (b"\x00\x03\x00\x00user\x00alice\x00", "startup-unterminated-list"),
    (b"\x00\x03\x00\x00user\x00alice", "startup-value-no-nul"),
    (b"\x00\x03\x00\x00user\x00", "startup-missing-value"),
    (b"\x00\x03\x00\x00", "startup-no-terminator"),
]


@pytest.mark.parametrize("packet", [pytest.param(p, id=i) for p, i in INVALID_STARTUP])
def test_invalid_startup_packets(packet):
    with pytest.raises(ProtocolViolation):
        decode_startup(packet)


def test_cancel_request_key_length_bounds():
    code = b"\x04\xd2\x16\x2e\x00\x00\x00\x07"
    assert decode_startup(code + b"k" * 4) == CancelRequest(7, b"k" * 4)
    assert decode_startup(code + b"k" * 256) == CancelRequest(7, b"k" * 256)


def test_startup_other_protocol_versions_are_returned_for_a_clear_error():
    # A protocol 2.0 packet (or anything not 3.x): the caller answers "unsupported protocol".
    assert decode_startup(b"\x00\x02\x00\x00whatever") == StartupMessage(protocol=0x20000)
    assert decode_startup(b"\x00\x04\x00\x00") == StartupMessage(protocol=0x40000)


# FunctionCall, CopyIn/Out/BothResponse, ParameterDescription and NegotiateProtocolVersion decode a
# negative Int16/Int32 count as 0, while Parse, Bind, DataRow and RowDescription reject it. The
# decoded message then re-encodes to different bytes (count 0), i.e. the gateway's view of the
# message differs from the bytes it relays; PostgreSQL reads these counts as unsigned and fails.
NEGATIVE_COUNTS = [
    ("F", decode_frontend, b"\x00\x00\x00\x01" b"\xff\xff" b"\x00\x00" b"\x00\x00", "function-call-format-count"),
    ("F", decode_frontend, b"\x00\x00\x00\x01" b"\x00\x00" b"\xff\xff" b"\x00\x00", "function-call-arg-count"),
    ("G", decode_backend, b"\x00\xff\xff", "copy-in-response"),
    ("H", decode_backend, b"\x00\xff\xff", "copy-out-response"),
    ("W", decode_backend, b"\x00\xff\xff", "copy-both-response"),
    ("t", decode_backend, b"\xff\xff", "parameter-description"),
    ("v", decode_backend, b"\x00\x00\x00\x00\xff\xff\xff\xff", "negotiate-protocol-version"),
]


@pytest.mark.parametrize(
    ("mtype", "decode", "body"), [pytest.param(t, d, b, id=i) for t, d, b, i in NEGATIVE_COUNTS]
)
def test_negative_counts_are_rejected(mtype, decode, body):
    with pytest.raises(ProtocolViolation):
        decode(ord(mtype), body)


# --------------------------------------------------------------------------------------------
# Helpers: error_response, error_fields, command_rows

ERROR_RESPONSE_TABLE = [
    (
        dict(sqlstate="42P01", message='relation "t" does not exist'),
        b"E\x00\x00\x00\x37SERROR\x00VERROR\x00C42P01\x00Mrelation \"t\" does not exist\x00\x00",
        "plain",
    ),
    (
        dict(sqlstate="42501", message="denied", detail="d1", hint="h1"),
        b"E\x00\x00\x00\x2aSERROR\x00VERROR\x00C42501\x00Mdenied\x00Dd1\x00Hh1\x00\x00",
        "detail-hint",
    ),
    (
        dict(sqlstate="28P01", message="boom", severity="FATAL"),
        b"E\x00\x00\x00\x20SFATAL\x00VFATAL\x00C28P01\x00Mboom\x00\x00",
        "fatal",
    ),
    (
        dict(sqlstate="XX000", message="ü"),
        b"E\x00\x00\x00\x1eSERROR\x00VERROR\x00CXX000\x00M\xc3\xbc\x00\x00",
        "utf8",
    ),
]


@pytest.mark.parametrize(("kwargs", "wire"), [pytest.param(k, w, id=i) for k, w, i in ERROR_RESPONSE_TABLE])
def test_error_response(kwargs, wire):
    assert error_response(**kwargs) == wire
    mtype, body = _split_typed(wire)
    err = decode_backend(mtype, body)
    assert err.sqlstate == kwargs["sqlstate"]
    assert err.message == kwargs["message"]
    assert err.severity == kwargs.get("severity", "ERROR")


ERROR_FIELDS_TABLE = [
    (b"SERROR\x00VERROR\x00C42P01\x00Mboom\x00\x00", {"S": "ERROR", "V": "ERROR", "C": "42P01", "M": "boom"}, "error"),
    (b"SNOTICE\x00Mhi\x00Dd\x00Hh\x00\x00", {"S": "NOTICE", "M": "hi", "D": "d", "H": "h"}, "notice"),
    (b"\x00", {}, "no-fields"),
    (b"M\xe9t\xe9\x00\x00", {"M": "\udce9t\udce9"}, "latin1-bytes"),  # server_encoding LATIN1
    (b"Mfirst\x00Msecond\x00\x00", {"M": "second"}, "repeated-field"),
    (b"", {}, "empty"),
    (b"SERROR", {}, "no-nul"),
    (b"SERROR\x00", {}, "no-terminator"),
]


@pytest.mark.parametrize(("body", "expected"), [pytest.param(b, e, id=i) for b, e, i in ERROR_FIELDS_TABLE])
def test_error_fields(body, expected):
    assert error_fields(body) == expected


COMMAND_ROWS_TABLE = [
    ("SELECT 5", 5),
    ("SELECT 0", 0),
    ("INSERT 0 3", 3),
    ("INSERT 16384 1", 1),
    ("UPDATE 10", 10),
    ("DELETE 0", 0),
    ("MERGE 4", 4),
    ("COPY 7", 7),
    ("FETCH 2", 2),
    ("MOVE 1", 1),
    ("SELECT 12345678901", 12345678901),
    ("BEGIN", None),
    ("COMMIT", None),
    ("CREATE TABLE", None),
    ("SET", None),
    ("SELECT", None),
    ("", None),
    ("SELECT -1", None),
    ("SELECT 1a", None),
]


@pytest.mark.parametrize(("tag", "rows"), COMMAND_ROWS_TABLE)
def test_command_rows(tag, rows):
    assert command_rows(tag) == rows


def test_command_rows_non_ascii_digits():
    assert command_rows("SELECT \u00b2") is None
