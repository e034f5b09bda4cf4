"""Audit event types.

One frozen msgspec Struct per event kind, tagged by the `event` field in the JSON line. An event
holds only what it is about; the envelope (time, RFC 3339 time text, gateway, connection id,
per-session sequence number, trace and span ids) is stamped by the session's
`audit.recorder.AuditScope` when the event is recorded, never spelt out by an adapter.
Events carry no secrets: never a password or token, never a masked value. Statement text and
prepared statements' parameter values are recorded as sent by the client, or with literals
replaced by ? where the target says so (`audit_text`, `audit_parameters`).
"""

from __future__ import annotations

import msgspec


class Who(msgspec.Struct, frozen=True, omit_defaults=True):
    subject: str
    groups: tuple[str, ...] = ()
    actor: tuple[str, ...] = ()
    verified_by: str = ""
    reason: str = ""
    # Who vouches for the identity: an OIDC token's `iss`, a client certificate's issuing CA
    # commonName; "" for static identities (and in records written before it existed). Two
    # trusted issuers may name the same subject: the issuer tells them apart.
    issuer: str = ""


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What every audit line starts with (stamped by `AuditScope`; for readers and tests)."""

    time: float  # Unix time, seconds
    time_text: str  # the same instant as RFC 3339 UTC text, milliseconds: 2026-12-07T08:55:05.123Z
    gateway: str
    connection_id: str  # "" for gateway-level events (policy.reloaded)
    seq: int  # per connection (per gateway for gateway-level events), from 1, no gaps
    trace_id: str = ""  # W3C trace context of the session's span, when tracing is on
    span_id: str = ""


class _Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="event"):
    pass


class ConnectionOpened(_Event, tag="connection.opened", kw_only=True):
    client_addr: str
    listener: str
    protocol: str
    tls: bool = False


class ConnectionAuthenticated(_Event, tag="connection.authenticated", kw_only=True):
    who: Who
    target: str
    environment: str
    application_name: str = ""


class ConnectionRefused(_Event, tag="connection.refused", kw_only=True):
    user: str = ""
    target: str = ""
    reason: str


class ConnectionClosed(_Event, tag="connection.closed", kw_only=True):
    duration_ms: float
    requests: int = 0
    reason: str = ""


class StatementDecided(_Event, tag="statement.decided", kw_only=True):
    request_id: int
    who: Who
    target: str
    environment: str
    sql: str
    fingerprint: str
    operations: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    parse_status: str = "ok"
    action: str
    rule_id: str = ""
    message: str = ""
    # Extended protocol: the prepared statement name the text was parsed as.
    statement_name: str | None = None
    # Which statement of a multi-statement request decided a refusal (0-based).
    statement_index: int | None = None
    # The facts that matched the deciding rule or guardrail ("operation=delete", "table=users",
    # "estimated_rows=52000"): why this decision, without re-running the policy.
    facts: tuple[str, ...] = ()
    # PostgreSQL: where each unqualified table name resolved ({"secrets": ["vault.secrets"]};
    # several entries when the path was not known for sure) and the search list(s) in effect
    # (or why the path was unknown). Absent when no name needed resolving.
    resolved: dict[str, list[str]] | None = None
    search_path: list[list[str]] | str | None = None
    # A reviewed statement released by an approval: the approval request's id.
    approval_id: str | None = None
    # The W3C trace context the client sent with the statement (a sqlcommenter comment
    # /*traceparent='00-...'*/): the trail joins the client's trace.
    traceparent: str | None = None
    # True when `sql` is the text with its literals replaced by ? ([[targets]] audit_text).
    redacted: bool = False


class StatementExecuted(_Event, tag="statement.executed", kw_only=True):
    """A run of a statement decided earlier (PostgreSQL Bind/Execute of a named or unnamed
    statement, MySQL COM_STMT_EXECUTE): written before the upstream runs it, like the decision
    of a statement, so no execution happens unrecorded."""

    request_id: int
    statement_name: str | None = None
    # A protocol step that makes an earlier statement take effect: "CopyDone" (the end of a
    # PostgreSQL COPY FROM STDIN's data, where the server commits it).
    command: str | None = None
    # The parameter values bound to this run, as text (PostgreSQL binary values as \x hex;
    # None for NULL); each "?" when the target redacts them ([[targets]] audit_parameters).
    parameters: tuple[str | None, ...] | None = None


class StatementCompleted(_Event, tag="statement.completed", kw_only=True):
    request_id: int
    # Extended protocol: request id of the statement.decided event of the prepared statement.
    prepared_ref: int | None = None
    # Command tags in order (one per statement of a simple-protocol string).
    tags: tuple[str, ...] = ()
    rows: int | None = None
    duration_ms: float
    error: str | None = None
    sqlstate: str | None = None
    # Masking: values masked per output column ("email (pii-email: partial)": 120), never the values.
    masked: dict[str, int] = {}
    # The approval request that released this statement, when it needed one.
    approval_id: str | None = None


class PolicyReloaded(_Event, tag="policy.reloaded", kw_only=True):
    # Version of the policy now in force (unchanged when the reload failed).
    version: int
    # Policy files read, in load order.
    files: tuple[str, ...] = ()
    # Why the new policy was refused (the running one stays); None when it was installed.
    error: str | None = None


class GatewayStarted(_Event, tag="gateway.started", kw_only=True):
    """Written durably before any listener opens: the audit sink is proven writable at start."""

    version: str
    listeners: tuple[str, ...] = ()
    pid: int = 0


class GatewayStopped(_Event, tag="gateway.stopped", kw_only=True):
    reason: str = ""


class LoginThrottled(_Event, tag="login.throttled", kw_only=True):
    """A login attempt made to wait, or refused, because of earlier failed logins from its
    address or for its user name (`[login_throttle]`, gateway/throttle.py). Gateway-level: the
    connection's own events carry its connection id."""

    client_addr: str
    user: str
    scope: str  # "address" or "user": the key whose failures caused it
    failures: int  # that key's failed logins within the window
    delay_seconds: float = 0.0  # how long the attempt waited
    refused: bool = False  # refused outright (its turn would have come too late)
    retry_after: float | None = None  # seconds, when refused


class Approver(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who decided an approval request, and how they were authenticated."""

    subject: str
    kind: str = "person"  # "person" (OIDC token) or "bot" (API token)
    groups: tuple[str, ...] = ()
    verified_by: str = ""  # "oidc", "api-token"
    issuer: str = ""


class ApprovalRequested(_Event, tag="approval.requested", kw_only=True):
    """A reviewed statement became an approval request (`sqlward.gateway.approvals`)."""

    approval_id: str
    request_id: int
    binding: str  # SHA-256 (hex) of what the approval is bound to
    mode: str  # "hold" or "retry"
    rules: tuple[str, ...] = ()
    expires: float  # Unix time
    approvers: tuple[str, ...] = ()


class ApprovalDecided(_Event, tag="approval.decided", kw_only=True):
    """An approver approved or rejected; `status` is the request's status afterwards."""

    approval_id: str
    approver: Approver
    verdict: str  # "approve" or "reject"
    comment: str = ""
    status: str


class ApprovalExpired(_Event, tag="approval.expired", kw_only=True):
    approval_id: str
    was: str  # "pending" or "approved" (approved in retry mode and never run)


class ApprovalWithdrawn(_Event, tag="approval.withdrawn", kw_only=True):
    approval_id: str
    # "cancelled by the client", "the client disconnected", "the session closed", "no decision
    # within N s", "the session's token expired", "the approval store failed during the hold"
    reason: str


class ApprovalExecuted(_Event, tag="approval.executed", kw_only=True):
    """The approved statement was released to run (single use) and, with `status`, how its run
    ended ("executed" at release; "failed" with the error when it failed)."""

    approval_id: str
    request_id: int
    status: str = "executed"
    error: str | None = None


AuditEvent = (
    ConnectionOpened | ConnectionAuthenticated | ConnectionRefused | ConnectionClosed
    | StatementDecided | StatementExecuted | StatementCompleted | PolicyReloaded | GatewayStarted | GatewayStopped
    | ApprovalRequested | ApprovalDecided | ApprovalExpired | ApprovalWithdrawn | ApprovalExecuted
    | LoginThrottled
)
