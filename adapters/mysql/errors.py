"""What a MySQL client reads when the gateway, not the server, says no: the errno and SQLSTATE
constants the adapter answers with, the gateway-side error types, and `error_reply`, the one
function that turns any of them into an ERR packet payload.

How it works: the session driver raises or builds an error (a typed exception of this module,
a codec `ProtocolViolation`, `TokenExpired`, `AuditUnavailable`, a TLS or socket error, any
other exception) or holds a refusal `Decision` of the pipeline, and hands it to `error_reply`.
The answer says what to send (`payload`, the body of one ERR packet, or None when nothing can
reach the client: the TLS layer or the socket is gone), the message the client reads (for the
audit record of a refused connection) and, for errors that end the session, the
`connection.closed` reason. The driver decides *when* an ERR is legal (in answer to a command,
or in place of the connection phase's OK); this module only decides *what* it says. An
upstream server's own refusal is relayed as `UpstreamRefused`; any other exception is an
internal error whose text never reaches the client.

Numbers are the server's own (mysqld_error.h / MariaDB's errmsg), so drivers map them to their
usual exceptions: a refusal is ER_SPECIFIC_ACCESS_DENIED_ERROR 1227 / SQLSTATE 42000, which
PyMySQL and mysql-connector raise as a programming/operational error naming the rule.
Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_err_packet.html and
https://mariadb.com/docs/server/reference/error-codes/mariadb-error-code-reference
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from sqlward.adapters.base import AuditUnavailable, AuthError
from sqlward.adapters.mysql import messages
from sqlward.adapters.mysql.constants import (
    ER_UNKNOWN_STMT_HANDLER,
    ER_ACCESS_DENIED_ERROR,
    ER_BAD_DB_ERROR,
    ER_DBACCESS_DENIED_ERROR,
    ER_HANDSHAKE_ERROR,
    ER_KILL_DENIED_ERROR,
    ER_NET_PACKET_TOO_LARGE,
    ER_NET_READ_ERROR,
    ER_NO_SUCH_THREAD,
    ER_NOT_SUPPORTED_AUTH_MODE,
    ER_QUERY_INTERRUPTED,
    ER_SECURE_TRANSPORT_REQUIRED,
    ER_SERVER_SHUTDOWN,
    ER_SPECIFIC_ACCESS_DENIED_ERROR,
    ER_UNKNOWN_COM_ERROR,
    ER_UNKNOWN_ERROR,
)
from sqlward.adapters.mysql.packets import PacketTooLarge, ProtocolViolation
from sqlward.adapters.drain import GatewayShutdown
from sqlward.adapters.session_common import SessionEnd, TokenExpired, refusal_message
from sqlward.policy import rule_ids
from sqlward.policy.model import Decision

__all__ = [
    "ER_ACCESS_DENIED_ERROR", "ER_BAD_DB_ERROR", "ER_DBACCESS_DENIED_ERROR", "ER_HANDSHAKE_ERROR",
    "ER_KILL_DENIED_ERROR", "ER_NET_PACKET_TOO_LARGE", "ER_NET_READ_ERROR", "ER_NO_SUCH_THREAD",
    "ER_NOT_SUPPORTED_AUTH_MODE", "ER_QUERY_INTERRUPTED", "ER_REFUSED", "ER_SECURE_TRANSPORT_REQUIRED",
    "ER_UNKNOWN_COM_ERROR", "ER_UNKNOWN_ERROR", "CR_MALFORMED_PACKET", "CR_SERVER_LOST", "SQLSTATE_ACCESS",
    "SQLSTATE_AUTH", "SQLSTATE_CONNECT", "SQLSTATE_GENERAL", "SQLSTATE_INTERRUPTED", "SQLSTATE_LINK",
    "SQLSTATE_REFUSED", "AccessRefused", "AuthRefused", "AuthTimedOut", "ClearPasswordNeedsTls", "ErrorReply",
    "GatewayError", "KillNotOwner", "PREAUTH_MAX_PACKET", "ER_UNKNOWN_CHARACTER_SET", "CharsetRefused",
    "CharsetSwitchNotLast", "SQL_MODE_RULE", "SqlModeRefused", "SqlModeSwitchNotLast", "PreAuthPacketTooLarge", "AuditRefused", "MaskedDiagnostics", "UnsettledDatabase", "NoSuchThread", "OldProtocol", "TlsRequired", "UnknownTarget",
    "UnsupportedCommand", "UpstreamLost", "UpstreamRefused", "error_reply",
]

# -- the numbers the gateway answers with -------------------------------------------------------
# (Server errnos come from the codec's table, `constants.py`, which pairs each with the SQLSTATE
# a server sends; this module names the ones the adapter uses and what it answers with. The
# codec's own errors, `packets.ProtocolViolation` and its subclasses, carry theirs.)

# A refusal by policy: ER_SPECIFIC_ACCESS_DENIED_ERROR ("Access denied; you need ... privilege").
ER_REFUSED = ER_SPECIFIC_ACCESS_DENIED_ERROR

SQLSTATE_REFUSED = "42000"  # syntax error or access rule violation: refusals, unknown target, [[access]]
SQLSTATE_ACCESS = "42000"
SQLSTATE_AUTH = "28000"  # invalid authorization specification: bad credentials, expired token
SQLSTATE_CONNECT = "08004"  # server rejected the connection: TLS needed, auth mode not supported
SQLSTATE_LINK = "08S01"  # communication link failure: protocol violations, lost upstream, unknown command
SQLSTATE_GENERAL = "HY000"  # general error: audit unavailable, internal error, KILL errors
SQLSTATE_INTERRUPTED = "70100"  # query interrupted: a side query that timed out

# Client-side errors (errmsg.h CR_*), for the gateway's own side connections to a target.
CR_SERVER_LOST = 2013  # the connection was lost during a query
CR_MALFORMED_PACKET = 2027  # the server sent a packet the client cannot read


# -- gateway-side errors ----------------------------------------------------------------------------


class GatewayError(Exception):
    """An error the gateway itself reports, carrying its errno, SQLSTATE and message."""

    errno: int = ER_UNKNOWN_ERROR
    sqlstate: str = SQLSTATE_GENERAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamLost(GatewayError):
    """The upstream connection closed or failed mid-session: the session ends."""

    errno, sqlstate = ER_NET_READ_ERROR, SQLSTATE_LINK

    def __init__(self, message: str = "the upstream database connection was lost; sqlward closed the session") -> None:
        super().__init__(message)


class UpstreamRefused(GatewayError):
    """The upstream server refused the gateway (login, or the helper connection of a KILL): its
    own errno, SQLSTATE and message, which never carry the gateway's password."""

    def __init__(self, errno: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.errno, self.sqlstate = errno, sqlstate


class AuthTimedOut(GatewayError):
    """The client did not finish the connection phase in time."""

    errno, sqlstate = ER_HANDSHAKE_ERROR, SQLSTATE_LINK

    def __init__(self) -> None:
        super().__init__("authentication timed out")


class TlsRequired(GatewayError):
    """A plain connection to a listener with `tls.require = true`."""

    errno, sqlstate = ER_SECURE_TRANSPORT_REQUIRED, SQLSTATE_CONNECT

    def __init__(self) -> None:
        super().__init__("this sqlward listener requires TLS: connect with --ssl / ssl-mode=REQUIRED")


class OldProtocol(GatewayError):
    """A client without CLIENT_PROTOCOL_41."""

    errno, sqlstate = ER_HANDSHAKE_ERROR, SQLSTATE_LINK

    def __init__(self) -> None:
        super().__init__("sqlward needs a client speaking protocol 4.1")


class UnknownTarget(GatewayError):
    """The database name the client asked for is no target (or none was named)."""

    errno, sqlstate = ER_BAD_DB_ERROR, SQLSTATE_ACCESS

    def __init__(self, dbname: str) -> None:
        super().__init__(
            f"'{dbname}' is not a target of this sqlward gateway" if dbname
            else "no target selected: name a sqlward target as the database"
        )


class AccessRefused(GatewayError):
    """`[[access]]` does not let the identity reach the target; the message is the reason."""

    errno, sqlstate = ER_DBACCESS_DENIED_ERROR, SQLSTATE_ACCESS


class ClearPasswordNeedsTls(AuthError):
    """A cleartext password (or a token) offered on a plain connection."""


class AuthRefused(GatewayError):
    """The client's credentials were refused. Static identities whose cleartext password came
    over plain TCP get ER_NOT_SUPPORTED_AUTH_MODE with the reason; other names get the reason in
    an access-denied message; wrong secrets get exactly what MySQL says, nothing more."""

    def __init__(self, user: str, host: str, cause: Exception, *, static: bool) -> None:
        self.user, self.host, self.cause, self.static = user, host, cause, static
        if static and isinstance(cause, ClearPasswordNeedsTls):
            self.errno, self.sqlstate = ER_NOT_SUPPORTED_AUTH_MODE, SQLSTATE_CONNECT
            message = str(cause)
        elif not static and isinstance(cause, AuthError) and str(cause):
            self.errno, self.sqlstate = ER_ACCESS_DENIED_ERROR, SQLSTATE_AUTH
            message = f"Access denied for user '{user}': {cause}"
        else:
            self.errno, self.sqlstate = ER_ACCESS_DENIED_ERROR, SQLSTATE_AUTH
            message = f"Access denied for user '{user}'@'{host}' (using password: YES)"
        super().__init__(message)


class NoSuchThread(GatewayError):
    """KILL of a gateway connection id that no live session of this listener has."""

    errno = ER_NO_SUCH_THREAD

    def __init__(self, connection_id: int, message: str | None = None) -> None:
        super().__init__(message if message is not None else f"Unknown thread id: {connection_id}")


class KillNotOwner(GatewayError):
    """KILL of another identity's session."""

    errno = ER_KILL_DENIED_ERROR

    def __init__(self, connection_id: int) -> None:
        super().__init__(f"You are not owner of thread {connection_id}")


class MaskedDiagnostics(GatewayError):
    """GET DIAGNOSTICS ... CONDITION in a session under masking after a statement that read
    masked columns: the diagnostics area can quote their values."""

    errno, sqlstate = ER_REFUSED, SQLSTATE_REFUSED

    def __init__(self, rule: str) -> None:
        super().__init__(
            f'masking rule "{rule}": GET DIAGNOSTICS ... CONDITION is refused after a statement that read masked '
            "columns (the server's messages can quote their values); SHOW COUNT(*) WARNINGS or GET DIAGNOSTICS "
            "@n = NUMBER give the count"
        )


class UnsettledDatabase(GatewayError):
    """A multi-statement request in which a statement names tables after one that may have moved
    the current database in a way the gateway could not follow when it judged the request."""

    errno, sqlstate = ER_REFUSED, SQLSTATE_REFUSED

    def __init__(self, statement: int) -> None:
        super().__init__(
            f"statement {statement} of this request is refused: a statement before it may change the current "
            "database (USE, SET STATEMENT ... FOR USE, EXECUTE, CALL, ...), so sqlward cannot tell which tables it "
            "names; send the statements one at a time"
        )


# The largest client packet read before the client has authenticated (handshake response, SSL
# request, auth-switch and caching_sha2 answers, COM_CHANGE_USER's auth exchange): what a login
# needs with room for a long OIDC token sent as mysql_clear_password and connection attributes
# (MySQL's own clients cap attributes at 64 KiB). Larger packets are refused from their header,
# before their body is read.
PREAUTH_MAX_PACKET = 64 << 10


class PreAuthPacketTooLarge(GatewayError):
    """A packet over `PREAUTH_MAX_PACKET` before authentication: ER_NET_PACKET_TOO_LARGE 1153 /
    08S01, then the connection is closed."""

    errno, sqlstate = ER_NET_PACKET_TOO_LARGE, SQLSTATE_LINK

    def __init__(self, limit: int = PREAUTH_MAX_PACKET) -> None:
        super().__init__(
            f"packet too large before authentication: sqlward reads login packets of at most {limit} bytes"
        )


class AuditRefused(GatewayError):
    """The audit record of a request the session records itself (COM_RESET_CONNECTION) could
    not be written before the request would reach the upstream: the request is not run and the
    session goes on (the client can retry once the trail is writable; nothing of it reached the
    server). The same answer as the pipeline's refusal of a statement, a prepared execution,
    COM_INIT_DB, COM_FIELD_LIST or a KILL whose record cannot be written: ER_REFUSED 1227 /
    SQLSTATE 42000 naming the rule `audit-unavailable` (clients treat it as a statement error,
    not a lost connection). Only a completion record that cannot be written ends the session
    (1105 / HY000, `error_reply(AuditUnavailable)`): the statement ran, its result is withheld."""

    errno, sqlstate = ER_REFUSED, SQLSTATE_REFUSED

    def __init__(self, what: str = "statement") -> None:
        super().__init__(
            f'audit unavailable: {what} not run, sqlward cannot write its audit trail (rule "audit-unavailable")'
        )


# A client character set sqlward cannot read SQL in as the server does (charsets.py).
ER_UNKNOWN_CHARACTER_SET = 1115


class CharsetRefused(GatewayError):
    """A client character set the gateway cannot read as the server does (gbk, big5, sjis, ...;
    `charsets`): ER_UNKNOWN_CHARACTER_SET 1115 / 42000 naming it and what to use instead. At
    login the connection is refused; in COM_CHANGE_USER the session ends; a SET that would switch
    to it is refused and the session goes on; when the server reads such a character set after a
    switch the text did not settle, every request is refused with it until it is set back."""

    errno, sqlstate = ER_UNKNOWN_CHARACTER_SET, SQLSTATE_REFUSED

    def __init__(self, charset: str, *, lost: bool = False) -> None:
        from sqlward.adapters.mysql.charsets import refusal_message

        message = refusal_message(charset)
        if lost:
            message = (
                f"the server now reads this session's SQL in '{charset}', which sqlward cannot read as the server "
                f"does: requests are refused until SET NAMES utf8mb4 (accepted: utf8mb4, utf8mb3, latin1, ascii, "
                f"binary) or COM_RESET_CONNECTION"
            )
        super().__init__(message)
        self.charset = charset


class CharsetSwitchNotLast(GatewayError):
    """A request in which a statement follows one that switches the client character set: the
    server would read the rest in the new character set, the gateway judged it in the old one."""

    errno, sqlstate = ER_REFUSED, SQLSTATE_REFUSED

    def __init__(self, statement: int) -> None:
        super().__init__(
            f"statement {statement} of this request is refused: a statement before it changes the client "
            "character set; send SET NAMES / SET CHARACTER SET on its own"
        )


# The rule a refused sql_mode is recorded under (rule "sql-reading"; see `charsets` on sql_mode).
SQL_MODE_RULE = rule_ids.SQL_READING  # one rule for every setting that changes how SQL text is read
_SQL_MODE_ADVICE = (
    "use a sql_mode without ANSI_QUOTES and NO_BACKSLASH_ESCAPES (nor ANSI, ORACLE, MSSQL, DB2, POSTGRESQL, "
    "MAXDB, which include ANSI_QUOTES), e.g. SET sql_mode = 'STRICT_TRANS_TABLES'"
)


class SqlModeRefused(GatewayError):
    """A sql_mode that changes how the server reads SQL text (`charsets.REFUSED_SQL_MODES`): a SET
    that names it is refused (the session goes on); when the server holds it (at login: the
    connection is refused; after a switch the text did not settle, or reported by
    SERVER_STATUS_NO_BACKSLASH_ESCAPES) every request is refused until it is set back.
    ER_REFUSED 1227 / 42000 naming the rule `sql-reading`."""

    errno, sqlstate = ER_REFUSED, SQLSTATE_REFUSED

    def __init__(self, mode: str, *, lost: bool = False, login: bool = False) -> None:
        if login:
            message = (
                f"the server's sql_mode holds {mode}, which makes it read SQL text unlike sqlward: the connection "
                f"is refused (rule \"{SQL_MODE_RULE}\"); remove {mode} from the server's or the login's default "
                f"sql_mode"
            )
        elif lost:
            message = (
                f"the server's sql_mode now holds {mode}, which makes it read SQL text unlike sqlward: requests "
                f"are refused (rule \"{SQL_MODE_RULE}\") until SET sql_mode = '<a mode without it>' sent on its "
                f"own or COM_RESET_CONNECTION; {_SQL_MODE_ADVICE}"
            )
        else:
            message = (
                f"sql_mode {mode} makes the server read SQL text unlike sqlward and is refused "
                f"(rule \"{SQL_MODE_RULE}\"); {_SQL_MODE_ADVICE}"
            )
        super().__init__(message)
        self.mode = mode


class SqlModeSwitchNotLast(GatewayError):
    """A sql_mode switch whose value the text does not settle, followed by another statement of
    the same request (or inside a compound statement / SET STATEMENT): the server would read
    the rest in a mode the gateway does not know."""

    errno, sqlstate = ER_REFUSED, SQLSTATE_REFUSED

    def __init__(self, statement: int) -> None:
        where = f"statement {statement} of this request is refused" if statement else "this request is refused"
        super().__init__(
            f"{where}: a sql_mode assignment whose value sqlward cannot read from the text (a variable, "
            f"DEFAULT, an expression) must be sent on its own, as a plain SET (rule \"{SQL_MODE_RULE}\")"
        )


class NotPrepared(GatewayError):
    """COM_STMT_EXECUTE of a statement id the gateway did not see prepared in this session (its
    text was never judged): ER_UNKNOWN_STMT_HANDLER, the session goes on."""

    errno, sqlstate = ER_UNKNOWN_STMT_HANDLER, "HY000"


class ParametersRefused(GatewayError):
    """An execution of a statement that needs approval whose parameters cannot be bound into an
    approval (sent as long data, or unreadable); the session goes on."""


class UnsupportedCommand(GatewayError):
    """A command byte the gateway does not relay (answered, the session goes on)."""

    errno, sqlstate = ER_UNKNOWN_COM_ERROR, SQLSTATE_LINK

    def __init__(self, command: int) -> None:
        super().__init__(f"unknown or unsupported command 0x{command:02x}")


# -- the one mapping ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """What to tell the client about an error (see `error_reply`)."""

    # Body of one ERR packet; None when nothing can reach the client (TLS broken, peer gone).
    payload: bytes | None
    # The sentence the client reads ("" when nothing is sent).
    message: str
    # Why the session ends, for `connection.closed`; "" for a refusal that does not end it.
    reason: str
    # True for a plain end of the connection: a reason the session gave earlier stays.
    quiet: bool = False
    # True for an exception nothing expected: the caller logs its traceback.
    unexpected: bool = False


def _reply(errno: int, sqlstate: str, message: str, reason: str = "") -> ErrorReply:
    return ErrorReply(messages.err_packet(errno, sqlstate, message), message, reason)


def error_reply(error: BaseException | Decision) -> ErrorReply:
    """The ERR packet (and closing reason) for a gateway-side error or a refusal.

    Error handling: every exception maps to something; an unexpected one is an internal error
    whose message never carries the exception's text (log it where it was caught).
    """
    if isinstance(error, Decision):
        return _reply(ER_REFUSED, SQLSTATE_REFUSED, refusal_message(error))
    if isinstance(error, GatewayError):
        reason = "upstream connection lost" if isinstance(error, UpstreamLost) else ""
        return _reply(error.errno, error.sqlstate, error.message, reason)
    if isinstance(error, PacketTooLarge):
        return _reply(
            ER_NET_PACKET_TOO_LARGE, SQLSTATE_LINK, f"packet too large for this sqlward listener: {error}",
            f"packet too large: {error}",
        )
    if isinstance(error, ProtocolViolation):
        return _reply(error.errno, SQLSTATE_LINK, f"protocol violation: {error}", f"protocol violation: {error}")
    if isinstance(error, GatewayShutdown):
        return _reply(ER_SERVER_SHUTDOWN, SQLSTATE_LINK, str(error), "gateway shutting down")
    if isinstance(error, TokenExpired):
        return _reply(ER_ACCESS_DENIED_ERROR, SQLSTATE_AUTH, "the session's token expired; sqlward closed the session",
                      "token expired")
    if isinstance(error, AuditUnavailable):
        return _reply(ER_UNKNOWN_ERROR, SQLSTATE_GENERAL,
                      "the audit trail cannot be written; sqlward closed the session", "audit unavailable")
    if isinstance(error, SessionEnd):
        return ErrorReply(None, "", "client closed the connection", quiet=True)
    if isinstance(error, (trio.BrokenResourceError, trio.ClosedResourceError)):
        return ErrorReply(None, "", "connection lost", quiet=True)
    if isinstance(error, ssl.SSLError):
        return ErrorReply(None, "", f"TLS error: {error}")
    message = "internal gateway error; the session was closed"
    return ErrorReply(messages.err_packet(ER_UNKNOWN_ERROR, SQLSTATE_GENERAL, message), message, "internal error",
                      unexpected=True)
