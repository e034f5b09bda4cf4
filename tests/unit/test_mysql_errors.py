"""adapters/mysql/errors.py: every gateway-side error and every refusal maps to the ERR packet a
client reads, byte for byte (0xFF, errno little-endian, '#', SQLSTATE, message), and to the
reason the session's `connection.closed` record gives; errors that cannot reach the client
(TLS broken, peer gone) map to no packet. The session sends ERR packets only through this
mapping."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest
import trio

from sqlward.adapters.base import AuditUnavailable, AuthError
from sqlward.adapters.mysql import errors as E
from sqlward.adapters.mysql import messages
from sqlward.adapters.mysql.auth import AuthProtocolError
from sqlward.adapters.mysql.packets import (
    HandshakeError,
    PacketsOutOfOrder,
    PacketTooLarge,
    ProtocolViolation,
    UnknownStatement,
)
from sqlward.adapters.session_common import SessionEnd, TokenExpired
from sqlward.policy import rule_ids
from sqlward.policy.model import Decision

REPO = Path(__file__).resolve().parents[2]


def err(errno: int, sqlstate: str, message: str) -> bytes:
    """An ERR packet payload spelt out by hand (PROTOCOL_41 form)."""
    return b"\xff" + errno.to_bytes(2, "little") + b"#" + sqlstate.encode() + message.encode()


NO_DROP = Decision(action="deny", rule_id="no-drop", message='DROP is not allowed in production (rule "no-drop")')
BARE = Decision(action="deny", rule_id="no-vault")
TAMPER = Decision(action="deny", rule_id=rule_ids.IDENTITY_TAMPERING,
                  message="@sqlward_identity carries the session's identity and cannot be changed")

# (error, payload, reason that ends the session or "")
TABLE: list[tuple[str, BaseException | Decision, bytes, str]] = [
    # refusals by the pipeline: 1227 / 42000, the message names the rule
    ("refusal", NO_DROP, b"\xff\xcb\x04#42000" + b'DROP is not allowed in production (rule "no-drop")', ""),
    ("refusal-bare", BARE, b'\xff\xcb\x04#42000statement refused by rule "no-vault"', ""),
    ("refusal-named", TAMPER, err(1227, "42000", "@sqlward_identity carries the session's identity and cannot be "
                                                 'changed (rule "identity-tampering")'), ""),
    # errors that end the session
    ("token-expired", TokenExpired(), b"\xff\x15\x04#28000the session's token expired; sqlward closed the session",
     "token expired"),
    ("audit", AuditUnavailable("disk full"),
     b"\xff\x51\x04#HY000the audit trail cannot be written; sqlward closed the session", "audit unavailable"),
    ("upstream-lost", E.UpstreamLost(),
     b"\xff\x86\x04#08S01the upstream database connection was lost; sqlward closed the session",
     "upstream connection lost"),
    ("too-large", PacketTooLarge("payload of 70000000 bytes over 67108864"),
     b"\xff\x81\x04#08S01packet too large for this sqlward listener: payload of 70000000 bytes over 67108864",
     "packet too large: payload of 70000000 bytes over 67108864"),
    ("violation", ProtocolViolation("empty command packet"),
     b"\xff\x86\x04#08S01protocol violation: empty command packet", "protocol violation: empty command packet"),
    ("out-of-order", PacketsOutOfOrder("sequence id 3, expected 1"),
     b"\xff\x84\x04#08S01protocol violation: sequence id 3, expected 1", "protocol violation: sequence id 3, expected 1"),
    ("bad-handshake", HandshakeError("truncated"), b"\xff\x13\x04#08S01protocol violation: truncated",
     "protocol violation: truncated"),
    # the session always reported violations with 08S01, whatever the subclass says
    ("unknown-stmt", UnknownStatement("statement 9"), b"\xff\xdb\x04#08S01protocol violation: statement 9",
     "protocol violation: statement 9"),
    ("internal", RuntimeError("secret detail /etc/x"),
     b"\xff\x51\x04#HY000internal gateway error; the session was closed", "internal error"),
    # connection phase
    ("auth-timeout", E.AuthTimedOut(), b"\xff\x13\x04#08S01authentication timed out", ""),
    ("tls-required", E.TlsRequired(),
     b"\xff\x57\x0c#08004this sqlward listener requires TLS: connect with --ssl / ssl-mode=REQUIRED", ""),
    ("protocol-41", E.OldProtocol(), b"\xff\x13\x04#08S01sqlward needs a client speaking protocol 4.1", ""),
    ("unknown-target", E.UnknownTarget("nope"), b"\xff\x19\x04#42000'nope' is not a target of this sqlward gateway", ""),
    ("no-target", E.UnknownTarget(""),
     b"\xff\x19\x04#42000no target selected: name a sqlward target as the database", ""),
    ("access", E.AccessRefused("identity bob may not reach target prod (no [[access]] rule allows it)"),
     b"\xff\x14\x04#42000identity bob may not reach target prod (no [[access]] rule allows it)", ""),
    ("upstream-refused", E.UpstreamRefused(1045, "28000", "upstream 'app' refused the gateway's login: x"),
     b"\xff\x15\x04#28000upstream 'app' refused the gateway's login: x", ""),
    # authentication
    ("auth-static-needs-tls",
     E.AuthRefused("alice", "10.0.0.7", E.ClearPasswordNeedsTls("mysql_clear_password is only accepted over TLS"),
                   static=True),
     b"\xff\xe3\x04#08004mysql_clear_password is only accepted over TLS", ""),
    ("auth-token-needs-tls",
     E.AuthRefused("dev@x", "10.0.0.7", E.ClearPasswordNeedsTls("tokens only over TLS"), static=False),
     b"\xff\x15\x04#28000Access denied for user 'dev@x': tokens only over TLS", ""),
    ("auth-token-refused", E.AuthRefused("dev@x", "10.0.0.7", AuthError("token refused: expired"), static=False),
     b"\xff\x15\x04#28000Access denied for user 'dev@x': token refused: expired", ""),
    ("auth-wrong-password", E.AuthRefused("alice", "10.0.0.7", AuthError("wrong password"), static=True),
     b"\xff\x15\x04#28000Access denied for user 'alice'@'10.0.0.7' (using password: YES)", ""),
    ("auth-protocol", E.AuthRefused("dev@x", "127.0.0.1", AuthProtocolError("bad scramble"), static=False),
     b"\xff\x15\x04#28000Access denied for user 'dev@x'@'127.0.0.1' (using password: YES)", ""),
    ("auth-undecodable", E.AuthRefused("dev@x", "127.0.0.1", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
                                       static=False),
     b"\xff\x15\x04#28000Access denied for user 'dev@x'@'127.0.0.1' (using password: YES)", ""),
    ("auth-empty-reason", E.AuthRefused("dev@x", "127.0.0.1", AuthError(""), static=False),
     b"\xff\x15\x04#28000Access denied for user 'dev@x'@'127.0.0.1' (using password: YES)", ""),
    # KILL and commands
    ("no-thread", E.NoSuchThread(1234), b"\xff\x46\x04#HY000Unknown thread id: 1234", ""),
    ("kill-failed", E.NoSuchThread(1234, "KILL failed"), b"\xff\x46\x04#HY000KILL failed", ""),
    ("not-owner", E.KillNotOwner(1234), b"\xff\x47\x04#HY000You are not owner of thread 1234", ""),
    ("unknown-command", E.UnsupportedCommand(0x1F), b"\xff\x17\x04#08S01unknown or unsupported command 0x1f", ""),
]


@pytest.mark.parametrize("error,payload,reason", [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_error_reply_bytes(error: BaseException | Decision, payload: bytes, reason: str) -> None:
    reply = E.error_reply(error)
    assert reply.payload == payload
    assert reply.reason == reason
    assert not reply.quiet
    assert reply.unexpected == isinstance(error, RuntimeError)
    decoded = messages.decode_err(payload)
    assert isinstance(decoded, messages.ErrPacket)
    assert reply.message == decoded.message
    # the hand-written table agrees with the codec's encoder
    assert payload == messages.err_packet(decoded.errno, decoded.sqlstate, decoded.message)


def test_table_spells_every_number_the_brief_names() -> None:
    errnos = {messages.decode_err(t[2]).errno for t in TABLE}  # type: ignore[union-attr]
    assert {1227, 1043, 1044, 1045, 1047, 1049, 1094, 1095, 1105, 1153, 1158, 1251, 3159} <= errnos


@pytest.mark.parametrize(
    "error,reason",
    [
        (SessionEnd(), "client closed the connection"),
        (trio.BrokenResourceError(), "connection lost"),
        (trio.ClosedResourceError(), "connection lost"),
    ],
)
def test_plain_ends_send_nothing_and_keep_an_earlier_reason(error: BaseException, reason: str) -> None:
    reply = E.error_reply(error)
    assert (reply.payload, reply.message, reply.reason, reply.quiet, reply.unexpected) == (None, "", reason, True, False)


def test_tls_error_sends_nothing_and_names_itself() -> None:
    reply = E.error_reply(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
    assert reply.payload is None and not reply.quiet and not reply.unexpected
    assert reply.reason.startswith("TLS error: ") and "WRONG_VERSION_NUMBER" in reply.reason


def test_internal_error_never_carries_the_exception_text() -> None:
    reply = E.error_reply(KeyError("password=hunter2"))
    assert reply.payload is not None and b"hunter2" not in reply.payload and reply.unexpected


def test_more_specific_codec_errors_win() -> None:
    # PacketTooLarge is a ProtocolViolation: its own wording, not "protocol violation: ..."
    assert E.error_reply(PacketTooLarge("x")).reason == "packet too large: x"
    assert E.error_reply(E.UpstreamLost("gone")).payload == err(1158, "08S01", "gone")


def test_constants() -> None:
    assert (E.ER_REFUSED, E.SQLSTATE_REFUSED) == (1227, "42000")
    assert (E.ER_HANDSHAKE_ERROR, E.ER_DBACCESS_DENIED_ERROR, E.ER_ACCESS_DENIED_ERROR) == (1043, 1044, 1045)
    assert (E.ER_UNKNOWN_COM_ERROR, E.ER_BAD_DB_ERROR, E.ER_NO_SUCH_THREAD, E.ER_KILL_DENIED_ERROR) == (1047, 1049, 1094, 1095)
    assert (E.ER_UNKNOWN_ERROR, E.ER_NET_PACKET_TOO_LARGE, E.ER_NET_READ_ERROR) == (1105, 1153, 1158)
    assert (E.ER_NOT_SUPPORTED_AUTH_MODE, E.ER_SECURE_TRANSPORT_REQUIRED, E.ER_QUERY_INTERRUPTED) == (1251, 3159, 1317)
    assert (E.CR_SERVER_LOST, E.CR_MALFORMED_PACKET) == (2013, 2027)
    assert (E.SQLSTATE_AUTH, E.SQLSTATE_CONNECT, E.SQLSTATE_LINK, E.SQLSTATE_GENERAL) == ("28000", "08004", "08S01", "HY000")


def _calls(rel: str) -> set[str]:
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else "")
    return names


def test_the_session_builds_err_packets_only_through_error_reply() -> None:
    calls = _calls("adapters/mysql/session.py")
    assert "error_reply" in calls
    assert not calls & {"err_packet", "violation_err_packet", "ErrPacket"}, calls & {"err_packet", "ErrPacket"}


def test_numbers_the_adapter_answers_with_live_in_errors_py() -> None:
    """No errno or SQLSTATE literal in the session, its upstream client or its side queries."""
    found = []
    for rel in ("adapters/mysql/session.py", "adapters/mysql/upstream.py", "adapters/mysql/sidequery.py",
                "adapters/mysql/listener.py", "adapters/mysql/relaystate.py"):
        tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, int) and 1000 < node.value < 4000:  # 1000: ms
                found.append(f"{rel}:{node.lineno}: {node.value}")
            if isinstance(node, ast.Constant) and node.value in ("42000", "28000", "08004", "08S01", "HY000", "70100"):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []


def test_masked_diagnostics_is_a_refusal_naming_the_masking_rule() -> None:
    reply = E.error_reply(E.MaskedDiagnostics("pii-email"))
    err = messages.decode_err(reply.payload)
    assert isinstance(err, messages.ErrPacket)
    assert (err.errno, err.sqlstate) == (1227, "42000")
    assert 'masking rule "pii-email"' in err.message and "GET DIAGNOSTICS" in err.message
    assert reply.reason == ""  # the session goes on
