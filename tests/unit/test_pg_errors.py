"""The PostgreSQL adapter's one error mapping (adapters/postgres/errors.py), as byte tables.

Every expected ErrorResponse below is written by hand from the protocol documentation
(https://www.postgresql.org/docs/current/protocol-message-formats.html): Byte1('E'),
Int32(length of what follows, itself included), then fields, each a code byte and a
NUL-terminated string, and a final NUL. Only the length is computed (`frame`).
"""

from __future__ import annotations

import ast
import re
import ssl
import struct
from pathlib import Path

import pytest

from sqlward.adapters.postgres import codec, errors
from sqlward.adapters.postgres.errors import (
    ClientLost,
    MessageTooLarge,
    ProtocolViolation,
    Refused,
    Reply,
    UpstreamLost,
    reply,
)
from sqlward.adapters.session_common import SessionEnd, TokenExpired
from sqlward.audit.recorder import AuditUnavailable
from sqlward.policy.model import Decision

REPO = Path(__file__).resolve().parents[2]


def frame(body: bytes) -> bytes:
    return b"E" + struct.pack("!I", len(body) + 4) + body


# -- the table: error, state -> (bytes, ends the session, closing reason, replaces an earlier one)

NO_DROP = Decision(action="deny", rule_id="no-drop", message="DROP is not allowed in production")
REVIEW = Decision(action="review", rule_id="big-writes", message="")

TABLE: list[tuple[str, BaseException | Decision, errors.WireState, bytes, bool, str, bool]] = [
    (
        "refusal",
        NO_DROP, "relay",
        frame(
            b"SERROR\0VERROR\0C42501\0"
            b'MDROP is not allowed in production (rule "no-drop")\0'
            b"Dsqlward rule: no-drop\0\0"
        ),
        False, "", False,
    ),
    (
        "refusal without a message names its rule",
        REVIEW, "relay",
        frame(
            b"SERROR\0VERROR\0C42501\0"
            b'Mstatement refused by rule "big-writes"\0'
            b"Dsqlward rule: big-writes\0\0"
        ),
        False, "", False,
    ),
    (
        "refusal before ReadyForQuery is FATAL",
        NO_DROP, "startup",
        frame(
            b"SFATAL\0VFATAL\0C42501\0"
            b'MDROP is not allowed in production (rule "no-drop")\0'
            b"Dsqlward rule: no-drop\0\0"
        ),
        True, "", False,
    ),
    (
        "message too large",
        MessageTooLarge("message of 70 bytes exceeds this gateway's limit of 64 bytes"), "relay",
        frame(b"SFATAL\0VFATAL\0C54000\0Mmessage of 70 bytes exceeds this gateway's limit of 64 bytes\0\0"),
        True, "protocol violation: message of 70 bytes exceeds this gateway's limit of 64 bytes", True,
    ),
    (
        "protocol violation",
        ProtocolViolation("invalid message length 2"), "relay",
        frame(b"SFATAL\0VFATAL\0C08P01\0Minvalid message length 2\0\0"),
        True, "protocol violation: invalid message length 2", True,
    ),
    (
        "protocol violation at startup",
        ProtocolViolation("unexpected data after SSLRequest"), "startup",
        frame(b"SFATAL\0VFATAL\0C08P01\0Munexpected data after SSLRequest\0\0"),
        True, "protocol violation: unexpected data after SSLRequest", True,
    ),
    (
        "token expired",
        TokenExpired(), "relay",
        frame(b"SFATAL\0VFATAL\0C28000\0Mthe session's token expired; sqlward closed the session\0\0"),
        True, "token expired", True,
    ),
    (
        "audit unavailable",
        AuditUnavailable("audit record not written: disk full"), "relay",
        frame(b"SFATAL\0VFATAL\0C58000\0Mthe audit trail cannot be written; sqlward closed the session\0\0"),
        True, "audit unavailable", True,
    ),
    (
        "audit unavailable at startup (connection.authenticated not written)",
        AuditUnavailable("audit record not written: disk full"), "startup",
        frame(b"SFATAL\0VFATAL\0C58000\0Mthe audit trail cannot be written; sqlward closed the session\0\0"),
        True, "audit unavailable", True,
    ),
    (
        "upstream lost",
        UpstreamLost("the upstream closed the connection"), "relay",
        frame(b"SFATAL\0VFATAL\0C08006\0Mthe upstream database connection was lost; sqlward closed the session\0\0"),
        True, "upstream connection lost", False,
    ),
    (
        "refused connection",
        Refused(errors.INVALID_PASSWORD, 'password authentication failed for user "alice"', detail="bad signature"),
        "startup",
        frame(
            b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "alice"\0'
            b"Dbad signature\0\0"
        ),
        True, "", False,
    ),
    (
        "authentication timeout",
        Refused(errors.CONNECTION_FAILURE, "authentication timed out", closing_reason="authentication timeout"),
        "startup",
        frame(b"SFATAL\0VFATAL\0C08006\0Mauthentication timed out\0\0"),
        True, "authentication timeout", True,
    ),
    (
        "unknown target",
        Refused(errors.INVALID_CATALOG_NAME, '"nope" is not a target of this sqlward gateway'), "startup",
        frame(b'SFATAL\0VFATAL\0C3D000\0M"nope" is not a target of this sqlward gateway\0\0'),
        True, "", False,
    ),
    (
        "TLS error: nothing can be said",
        ssl.SSLError(1, "bad record mac"), "relay",
        b"",
        True, f"TLS error: {ssl.SSLError(1, 'bad record mac')}", True,
    ),
    ("client lost while relaying", ClientLost("socket error"), "relay", b"", True, "client connection lost", False),
    ("client lost at startup", ClientLost("socket error"), "startup", b"", True, "connection lost", False),
    ("session end", SessionEnd(), "relay", b"", True, "", False),
    (
        "a bug",
        KeyError("oops"), "relay",
        frame(b"SFATAL\0VFATAL\0CXX000\0Minternal gateway error; the session was closed\0\0"),
        True, "internal error", True,
    ),
]


@pytest.mark.parametrize(
    ("error", "state", "data", "ends", "reason", "replaces"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_reply_table(
    error: BaseException | Decision, state: errors.WireState, data: bytes, ends: bool, reason: str, replaces: bool,
) -> None:
    got = reply(error, state)
    assert got.data == data
    assert (got.ends_session, got.reason, got.replaces_reason) == (ends, reason, replaces)
    assert got.log_traceback == isinstance(error, KeyError)
    if data:  # and the codec reads back what the table says
        framer = codec.Framer()
        framer.feed(data)
        item = framer.next()
        assert item is not None and item[0] == codec.Backend.ERROR_RESPONSE
        msg = codec.decode_backend(item[0], item[1])
        assert isinstance(msg, codec.ErrorResponse)
        assert msg.severity == ("ERROR" if not ends else "FATAL")


@pytest.mark.parametrize(
    "error",
    [
        MessageTooLarge("x"), ProtocolViolation("x"), TokenExpired(), AuditUnavailable("x"),
        UpstreamLost("x"), KeyError("x"), Refused(errors.INVALID_PASSWORD, "x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_nothing_is_sent_in_the_middle_of_a_backend_message(error: BaseException) -> None:
    """The client holds part of a DataRow: any byte would be read as the rest of it."""
    got = reply(error, "mid-message")
    assert got.data == b""
    assert got.ends_session
    assert got == Reply(b"", True, reply(error, "relay").reason, reply(error, "relay").replaces_reason, got.log_traceback)


def test_refusal_is_the_same_mid_stream() -> None:
    """A refusal replaces the upstream's ErrorResponse, which is whole by construction."""
    assert reply(NO_DROP, "mid-message").data == reply(NO_DROP, "relay").data


def test_error_response_matches_the_codec() -> None:
    for severity in ("ERROR", "FATAL"):
        for detail, hint in (("", ""), ("d", ""), ("", "h"), ("dé", "hint\u00e9")):
            fields = [("S", severity), ("V", severity), ("C", "42501"), ("M", "message \u00e9")]
            if detail:
                fields.append(("D", detail))
            if hint:
                fields.append(("H", hint))
            assert errors.error_response("42501", "message \u00e9", severity=severity, detail=detail, hint=hint) == (
                codec.encode_backend(codec.ErrorResponse(tuple(fields)))
            )
    assert codec.error_response is errors.error_response
    assert codec.ProtocolViolation is errors.ProtocolViolation
    with pytest.raises(ValueError):
        errors.error_response("42501", "a\0b")


def test_hidden_error_keeps_only_code_and_severity() -> None:
    assert errors.hidden_error("22P02", "ERROR") == frame(
        b"SERROR\0VERROR\0C22P02\0"
        b"Mthe statement failed (SQLSTATE 22P02); sqlward hides the server's message because the "
        b"statement reads masked columns\0\0"
    )


def test_codes_are_sqlstates() -> None:
    codes = {k: v for k, v in vars(errors).items() if k.isupper() and not k.startswith("_") and k not in ("ERROR", "FATAL")}
    assert len(codes) >= 13
    for name, code in codes.items():
        assert re.fullmatch(r"[0-9A-Z]{5}", code), name
    assert len(set(codes.values())) == len(codes)
    assert MessageTooLarge.sqlstate == errors.PROGRAM_LIMIT_EXCEEDED
    assert ProtocolViolation.sqlstate == errors.PROTOCOL_VIOLATION


def test_no_other_module_of_the_adapter_spells_a_sqlstate() -> None:
    """errors.py holds every SQLSTATE the PostgreSQL adapter uses."""
    codes = {v for k, v in vars(errors).items() if k.isupper() and not k.startswith("_") and k not in ("ERROR", "FATAL")}
    offenders = []
    for path in sorted((REPO / "adapters" / "postgres").glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in codes:
                offenders.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_errors_module_imports_no_io_library() -> None:
    tree = ast.parse((REPO / "adapters" / "postgres" / "errors.py").read_text(encoding="utf-8"))
    top = {
        alias.name.split(".")[0]
        for node in tree.body if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert "trio" not in top
