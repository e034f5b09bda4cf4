"""The PostgreSQL adapter's errors on the wire: every SQLSTATE it sends, its typed errors, and
`reply()`, the one function that turns a gateway-side error into protocol bytes.

Spec: https://www.postgresql.org/docs/current/errcodes-appendix.html (SQLSTATE codes) and
https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-ASYNC (a FATAL
ErrorResponse may come at any time between messages; the server then closes the connection).

How it works:

- **Codes.** Every SQLSTATE the adapter puts on the wire (to a client, or in its own errors such
  as `upstream.UpstreamError` and `sidequery.SideQueryError`) is a constant below, named after the
  condition in the PostgreSQL appendix. No other module of the adapter spells one.
- **Typed errors** carry their code: `ProtocolViolation` (08P01) and `MessageTooLarge` (54000)
  from the codec (which re-exports them), `UpstreamLost` (the upstream connection failed or
  broke the protocol), `ClientLost` (the client's connection failed), `Refused` (the gateway
  refuses the connection during startup: no such target, bad credentials, ...). The session
  driver turns the I/O exceptions of its streams into `ClientLost` / `UpstreamLost` where it
  knows which side failed, so this module needs no I/O library.
- **`reply(error, state)`** maps an error to a `Reply`: the ErrorResponse bytes (ERROR for a
  refused statement, FATAL for everything that ends the session), whether the session ends, the
  `connection.closed` reason, and whether the traceback belongs in the server's log. `state`
  says where the client's byte stream is, and the bytes are only what is legal there:

  ========================  ================================================================
  state                     what may be sent
  ========================  ================================================================
  ``"startup"``             a FATAL ErrorResponse (before ReadyForQuery: refusals, timeouts)
  ``"relay"``               an ERROR ErrorResponse answering a request (a refusal), or a FATAL
  ``"mid-message"``         nothing: the client has part of a backend message (a streamed
                            DataRow or CopyData, a send cut short); any byte now would be read
                            as the rest of it, so the session is closed without a word
  ========================  ================================================================

  A TLS failure, a lost client and `SessionEnd` never get bytes in any state.

The mapping, in full (the unit tests hold the byte table):

  ========================================  ========  =========  =======================================
  error                                     severity  SQLSTATE   connection.closed reason
  ========================================  ========  =========  =======================================
  a refusal `Decision`                      ERROR     42501      (the session goes on)
  a request whose record cannot be written  ERROR     58030      (the session goes on; message
  (rule audit-unavailable, or                                    "audit unavailable: statement not
  `AuditUnavailable` from a durable judge:                       run")
  `audit_refusal()`)
  `MessageTooLarge`                         FATAL     54000      protocol violation: <message>
  `ProtocolViolation`                       FATAL     08P01      protocol violation: <message>
  `TokenExpired`                            FATAL     28000      token expired
  `GatewayShutdown` (drain, adapters/drain) FATAL     57P01      gateway shutting down
  `AuditUnavailable` (any other flush)      FATAL     58000      audit unavailable
  `UpstreamLost`                            FATAL     08006      upstream connection lost (if no other)
  `Refused`                                 FATAL     its own    its own ("" : none)
  `ssl.SSLError`                            (none)               TLS error: <message>
  `ClientLost`                              (none)               (client) connection lost (if no other)
  `SessionEnd`                              (none)               (unchanged)
  anything else (a bug)                     FATAL     XX000      internal error (traceback logged)
  ========================================  ========  =========  =======================================

`Refused` codes at startup (issue 12): a startup setting or switch off the allow-list of
`startup.py` 42501, malformed `options` 42601, a wrong secret or an unknown name (the same
refusal after the same SCRAM exchange) 28P01, the login throttle's refusal and tokens on plain
TCP 28000, an authentication timeout 08006.

This module imports no I/O library (the relay state, `relay.py`, uses it): the session-level
exceptions of `adapters.session_common` are looked up when `reply` first needs them.
"""

from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass
from typing import Final, Literal

from sqlward.audit.recorder import AuditUnavailable
from sqlward.policy import rule_ids
from sqlward.policy.model import Decision

__all__ = [
    "ClientLost", "MessageTooLarge", "ProtocolViolation", "Refused", "Reply", "UpstreamLost",
    "WireState", "error_response", "hidden_error", "reply",
]

# -- SQLSTATE codes the adapter sends (PostgreSQL errcodes appendix) --------------------------
SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: Final = "08004"  # the upstream refused us
CONNECTION_FAILURE: Final = "08006"  # the upstream was lost / could not be reached; auth timeout
PROTOCOL_VIOLATION: Final = "08P01"
FEATURE_NOT_SUPPORTED: Final = "0A000"  # an unsupported protocol version; COPY on a side connection
CHARACTER_NOT_IN_REPERTOIRE: Final = "22021"  # a NUL inside a side query's text
INVALID_AUTHORIZATION_SPECIFICATION: Final = "28000"  # no user, TLS required, token expired
INVALID_PASSWORD: Final = "28P01"
INVALID_CATALOG_NAME: Final = "3D000"  # the database name is no target of this gateway
SYNTAX_ERROR: Final = "42601"  # startup options the server itself would refuse (malformed)
DUPLICATE_PREPARED_STATEMENT: Final = "42P05"  # Parse of a statement name in use
INVALID_SQL_STATEMENT_NAME: Final = "26000"  # Bind of a statement that does not exist
INSUFFICIENT_PRIVILEGE: Final = "42501"  # a statement refused by policy; access; replication
PROGRAM_LIMIT_EXCEEDED: Final = "54000"  # a message over the listener's max_message_size
QUERY_CANCELED: Final = "57014"  # a side query timed out
ADMIN_SHUTDOWN: Final = "57P01"  # the gateway is shutting down (SIGTERM): the session is closed
SYSTEM_ERROR: Final = "58000"  # the audit trail cannot be written: the session is closed
IO_ERROR: Final = "58030"  # the audit record of one request cannot be written: the request is refused
INTERNAL_ERROR: Final = "XX000"  # a bug in the gateway (the client never sees the traceback)

ERROR: Final = "ERROR"
FATAL: Final = "FATAL"

# Where the client's byte stream is when an error happens (see the module doc).
WireState = Literal["startup", "relay", "mid-message"]


# -- typed errors ------------------------------------------------------------------------------


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid message. Carries SQLSTATE 08P01."""

    sqlstate: str = PROTOCOL_VIOLATION


class MessageTooLarge(ProtocolViolation):
    """A message over the size limit (the listener's `max_message_size`)."""

    sqlstate = PROGRAM_LIMIT_EXCEEDED


class UpstreamLost(Exception):
    """The upstream connection failed, closed, or broke the protocol during the relay."""


class ClientLost(Exception):
    """The client's connection failed or closed under the gateway."""


class Refused(Exception):
    """The gateway refuses the connection during startup; `message` is for the client,
    `audit_reason` (default: the message) for the `connection.refused` record."""

    def __init__(
        self, sqlstate: str, message: str, *, detail: str = "", user: str = "", target: str = "",
        audit_reason: str = "", closing_reason: str = "",
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.user = user
        self.target = target
        self.audit_reason = audit_reason or message
        self.closing_reason = closing_reason


@dataclass(frozen=True, slots=True)
class Reply:
    """What the session driver does about one error (see `reply`)."""

    data: bytes  # the ErrorResponse to send the client (b"": nothing may or need be sent)
    ends_session: bool
    reason: str = ""  # the connection.closed reason ("": leave it as it is)
    # False: an earlier reason stays (a lost connection is usually the effect of another error).
    replaces_reason: bool = True
    log_traceback: bool = False  # a bug: the traceback goes to the server's log


# -- encoding ----------------------------------------------------------------------------------


def _field(code: bytes, value: str) -> bytes:
    text = value.encode("utf-8", "surrogateescape")
    if b"\0" in text:
        raise ValueError("strings on the wire cannot contain NUL")
    return code + text + b"\0"


def error_response(sqlstate: str, message: str, *, severity: str = ERROR, detail: str = "", hint: str = "") -> bytes:
    """Wire bytes of an ErrorResponse of the gateway's own (severity ERROR or FATAL): fields S,
    V, C, M, then D and H when given (`codec.error_response` is this function)."""
    sev = severity.encode("ascii")
    body = b"S" + sev + b"\0V" + sev + b"\0" + _field(b"C", sqlstate) + _field(b"M", message)
    if detail:
        body += _field(b"D", detail)
    if hint:
        body += _field(b"H", hint)
    body += b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def notice_response(message: str, *, sqlstate: str = "01000", severity: str = "NOTICE", hint: str = "") -> bytes:
    """Wire bytes of a NoticeResponse of the gateway's own (an approval hold's news)."""
    sev = severity.encode("ascii")
    body = b"S" + sev + b"\0V" + sev + b"\0" + _field(b"C", sqlstate) + _field(b"M", message)
    if hint:
        body += _field(b"H", hint)
    body += b"\0"
    return b"N" + struct.pack("!I", len(body) + 4) + body


def hidden_error(sqlstate: str, severity: str) -> bytes:
    """The ErrorResponse that replaces the server's for a statement reading masked columns: the
    server's text can quote a masked value ("invalid input syntax ...: <value>"), so only its
    code and severity are kept (callers pass XX000 / ERROR for a field the server left out)."""
    return error_response(
        sqlstate,
        f"the statement failed (SQLSTATE {sqlstate}); sqlward hides the server's message because the "
        "statement reads masked columns",
        severity=severity,
    )


def hidden_notice(sqlstate: str, severity: str) -> bytes:
    """The NoticeResponse that replaces the server's (a RAISE NOTICE, a WARNING) during a
    statement reading masked columns: its text may quote a masked value as an error's can."""
    sev = severity.encode("ascii")
    text = f"a {severity.lower()} was raised (SQLSTATE {sqlstate}); sqlward hides its message because the statement reads masked columns"
    body = b"S" + sev + b"\0V" + sev + b"\0" + _field(b"C", sqlstate) + _field(b"M", text) + b"\0"
    return b"N" + struct.pack("!I", len(body) + 4) + body


# -- the one mapping ---------------------------------------------------------------------------

_AUDIT_LOST = "the audit trail cannot be written; sqlward closed the session"
_AUDIT_REFUSED = "audit unavailable: statement not run"
_TOKEN_EXPIRED = "the session's token expired; sqlward closed the session"
_UPSTREAM_LOST = "the upstream database connection was lost; sqlward closed the session"
_INTERNAL = "internal gateway error; the session was closed"


_AUDIT_REFUSAL = error_response(
    IO_ERROR, _AUDIT_REFUSED,
    hint="the gateway's audit trail cannot be written; nothing is run until it can be written again",
)


def audit_refusal() -> bytes:
    """The ERROR answering a request whose audit record cannot be written (58030)."""
    return _AUDIT_REFUSAL


def _fatal(sqlstate: str, message: str, state: WireState, *, detail: str = "") -> bytes:
    if state == "mid-message":
        return b""
    return error_response(sqlstate, message, severity=FATAL, detail=detail)


def reply(error: BaseException | Decision, state: WireState) -> Reply:
    """The bytes for the client and what becomes of the session when `error` happens with the
    client's stream in `state` (see the table in the module doc)."""
    from sqlward.adapters.drain import GatewayShutdown
    from sqlward.adapters.session_common import SessionEnd, TokenExpired, refusal_message

    if isinstance(error, Decision) and error.rule_id == rule_ids.AUDIT_UNAVAILABLE:
        # Fail closed, per request: the statement was not run because its record cannot be
        # written; the session goes on (the next request may be recorded again).
        if state == "startup":
            return Reply(_fatal(SYSTEM_ERROR, _AUDIT_LOST, state), True, "audit unavailable")
        return Reply(_AUDIT_REFUSAL, False, "", False)
    if isinstance(error, Decision):
        # A statement refused by the gateway: an ERROR answering that request, which the relay
        # puts in place of the upstream's own answer (a message boundary, so the protocol stays in
        # sync); the session goes on. Before ReadyForQuery there is no request to answer.
        detail = f"sqlward rule: {error.rule_id}"
        if state == "startup":
            return Reply(_fatal(INSUFFICIENT_PRIVILEGE, refusal_message(error), state, detail=detail), True, "", False)
        return Reply(error_response(INSUFFICIENT_PRIVILEGE, refusal_message(error), detail=detail), False, "", False)
    if isinstance(error, Refused):
        return Reply(
            _fatal(error.sqlstate, error.message, state, detail=error.detail), True, error.closing_reason,
            replaces_reason=bool(error.closing_reason),
        )
    if isinstance(error, ProtocolViolation):  # MessageTooLarge too: its own code
        return Reply(_fatal(error.sqlstate, str(error), state), True, f"protocol violation: {error}")
    if isinstance(error, TokenExpired):
        return Reply(_fatal(INVALID_AUTHORIZATION_SPECIFICATION, _TOKEN_EXPIRED, state), True, "token expired")
    if isinstance(error, GatewayShutdown):
        return Reply(_fatal(ADMIN_SHUTDOWN, str(error), state), True, "gateway shutting down")
    if isinstance(error, AuditUnavailable):
        return Reply(_fatal(SYSTEM_ERROR, _AUDIT_LOST, state), True, "audit unavailable")
    if isinstance(error, UpstreamLost):
        return Reply(_fatal(CONNECTION_FAILURE, _UPSTREAM_LOST, state), True, "upstream connection lost", False)
    if isinstance(error, ssl.SSLError):  # the TLS layer is broken: nothing can be said in it
        return Reply(b"", True, f"TLS error: {error}")
    if isinstance(error, ClientLost):
        return Reply(b"", True, "connection lost" if state == "startup" else "client connection lost", False)
    if isinstance(error, SessionEnd):
        return Reply(b"", True, "", False)
    return Reply(_fatal(INTERNAL_ERROR, _INTERNAL, state), True, "internal error", log_traceback=True)
