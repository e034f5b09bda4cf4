"""The contract between protocol adapters and the rest of sqlward.

Adapters never import `sqlward.gateway`. A listener is built by the gateway with
`SessionServices` (the `Gatekeeper`, the `StatementPipeline` and the audit `Recorder`), its typed
`ListenerSettings` and a `SessionRegistry`; each session it accepts gets those and nothing else.
A session calls them at fixed points:

1. `Gatekeeper.authenticate_*` once the client has sent its credentials (the adapter runs the
   wire exchange; the gatekeeper only judges), `resolve_target` to map the database name the
   client asked for to a configured target, `access_refusal` to apply `[[access]]`;
2. `StatementPipeline.judge(ctx, StatementRequest)` for every request text (and every
   protocol-level command that needs a verdict) before anything reaches the upstream: the one
   place where a request's fate is decided. It records the `statement.decided` event into the
   session's `AuditScope` (`ctx.audit`);
3. `AuditScope.add` for the session's other events and `AuditScope.flush` at the relay's flush
   points, *before* the client or the upstream sees the effect; a failed flush raises
   `AuditUnavailable`, and the adapter refuses or closes (fail closed).

Everything the gateway returns is an immutable value; all per-connection state lives in the
adapter's session object and its `SessionContext`.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

import msgspec

from sqlward.adapters.drain import Drain
from sqlward.adapters.preauth import PreAuthLimiter
from sqlward.audit.events import StatementCompleted, Who
from sqlward.audit.recorder import AuditScope, AuditUnavailable, Recorder
from sqlward.policy.model import Analysis, Decision, Identity, TargetInfo
from sqlward.policy.searchpath import SearchPath

if TYPE_CHECKING:
    import trio

    from sqlward.masking.context import MaskContext

__all__ = [
    "AuditUnavailable", "AuthError", "CertIdentityMode", "Dialect", "Gatekeeper", "IdentitySettings",
    "KillRequest", "ListenerSettings", "MysqlSecret", "ScramSecret", "SessionContext", "SessionRegistry",
    "SessionServices", "StatementPipeline", "StatementRequest", "Target", "UpstreamTLS", "Verdict",
]

Dialect = Literal["postgres", "mysql"]
# "statement": SQL text to analyse (simple Query, Parse, COM_QUERY, COM_STMT_PREPARE, ...);
# "execute": a run of an already-decided prepared statement (only session-wide checks apply);
# "command": a protocol command with no SQL text, named by `command` (FunctionCall, COM_DROP_DB).
RequestKind = Literal["statement", "execute", "command"]
CertIdentityMode = Literal["none", "subject-cn", "san-uri"]
Sha2FullAuth = Literal["never", "first-login", "always"]
TokenExpiryMode = Literal["refuse", "close"]
TlsMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class AuthError(Exception):
    """Credentials were refused. The message is safe to show to the client."""


class ScramSecret(msgspec.Struct, frozen=True):
    """A SCRAM-SHA-256 verifier (RFC 5802 / 7677): never the password itself."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


class MysqlSecret(msgspec.Struct, frozen=True):
    """MySQL verifiers of a static secret: SHA1(SHA1(secret)) for mysql_native_password and
    SHA256(SHA256(secret)) for caching_sha2_password. Never the secret itself."""

    native: bytes
    sha2: bytes

    def __repr__(self) -> str:
        return "MysqlSecret(<hidden>)"


class IdentitySettings(msgspec.Struct, frozen=True):
    """Session-level identity behaviour (the `[identity]` config table)."""

    on_token_expiry: TokenExpiryMode = "refuse"
    upstream_application_name: bool = True  # PostgreSQL application_name = "sqlward:<who>"
    upstream_setting: bool = True  # PostgreSQL SET sqlward.identity / MySQL @sqlward_identity
    sql_comment: bool = False  # sqlcommenter-style /* sqlward_identity='...' */ on statements


class UpstreamTLS(msgspec.Struct, frozen=True):
    """TLS settings towards an upstream server (libpq `sslmode` semantics)."""

    mode: TlsMode = "prefer"
    root_cert: str = ""  # CA file for verify-ca / verify-full ("" = system store)
    cert_file: str = ""  # client certificate, optional
    key_file: str = ""
    server_name: str = ""  # overrides the host name checked by verify-full


class Target(msgspec.Struct, frozen=True):
    """A configured upstream database. `password` is a secret: never log or encode it."""

    info: TargetInfo
    host: str
    port: int
    user: str
    database: str
    password: str = ""
    tls: UpstreamTLS = UpstreamTLS()
    connect_timeout: float = 10.0
    # MySQL: let clients run LOAD DATA LOCAL INFILE (sends client files to the server).
    allow_local_infile: bool = False
    # The audit trail's copy of statement text and of prepared statements' parameter values:
    # as sent, or with literals (values) replaced by ? ([[targets]] audit_text, audit_parameters).
    redact_text: bool = False
    redact_parameters: bool = False
    # Append the statement span's trace context to statements sent as text (sqlcommenter).
    trace_upstream: bool = False

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"Target({self.info.name!r}, {self.host}:{self.port}/{self.database}, user={self.user!r})"

    __str__ = __repr__


class Gatekeeper(Protocol):
    """Who may connect where. Implemented in `sqlward.gateway.gatekeeper`."""

    @property
    def gateway_name(self) -> str: ...

    def scram_secret(self, username: str) -> ScramSecret | None:
        """The SCRAM verifier of a static identity, or None when `username` is not one."""

    def identity_for_scram(self, username: str) -> Identity:
        """The identity of a static user whose SCRAM exchange just succeeded."""

    def mysql_secret(self, username: str) -> MysqlSecret | None:
        """The MySQL verifiers of a static identity, or None when `username` is not one."""

    def static_identity(self, username: str) -> Identity:
        """The identity of a static user who just proved its secret (any mechanism)."""

    def authenticate_password(self, username: str, password: str, *, tls: bool) -> Identity:
        """Judge a static identity's secret sent in clear; AuthError."""

    async def authenticate_token(
        self, username: str, token: str, *, tls: bool, loopback: bool, tls_offered: bool = True,
    ) -> Identity:
        """Verify an OIDC / JWT access token presented as the password (AuthError with a clear
        message when refused). `tls` and `loopback` say how the client is connected; tokens on
        plain TCP are refused unless the listener allows it for loopback clients. `tls_offered`:
        the listener has TLS (the refusal's advice names TLS only when it is true)."""

    async def login_gate(self, client_host: str, username: str) -> None:
        """Called before a client's credentials are judged: waits out the throttle of earlier
        failed logins from this address or for this user name (a bounded delay that blocks only
        this connection), or raises AuthError when the attempt is refused outright."""

    def token_leeway(self, identity: Identity) -> float:
        """Seconds of clock skew the identity's token issuer was granted at login (0 for others):
        the session's expiry uses the same leeway as the login did."""

    def login_failed(self, client_host: str, username: str) -> None:
        """Count a failed login (any mechanism) against the address and the user name."""

    def login_succeeded(self, client_host: str, username: str) -> None:
        """A login succeeded: the address's and the user name's failure count is cleared."""

    def identity_for_certificate(self, cert: dict[str, object], mode: CertIdentityMode) -> Identity | None:
        """The identity of a verified client certificate (mutual TLS), or None when it maps to none."""

    def access_refusal(self, identity: Identity, target: TargetInfo) -> str | None:
        """None when `identity` may reach `target`; otherwise the reason, for the client."""

    def identity_settings(self) -> IdentitySettings:
        """How identities are shown upstream and what happens when a token expires."""

    def resolve_target(self, name: str, protocol: Dialect) -> Target | None:
        """The configured target a client asked for by name, or None."""

    def mysql_targets(self) -> tuple[str, ...]:
        """Names of the MySQL targets, in config order (a MySQL listener probes the first)."""


class StatementRequest(msgspec.Struct, frozen=True):
    """One request to judge, as the adapter read it off the wire."""

    sql: str
    dialect: Dialect
    kind: RequestKind = "statement"
    # MySQL: the session's current database (unqualified names are qualified with it).
    schema: str = ""
    # PostgreSQL: what the session's search_path is (unqualified names resolve through it);
    # None: not known to the adapter (the default path is assumed).
    search_path: SearchPath | None = None
    # Extended protocol / COM_STMT_*: the prepared statement's name (for the audit record).
    statement_name: str | None = None
    # kind "command": the protocol command ("FunctionCall", "COM_DROP_DB", "cursor fetch", ...).
    command: str = ""
    # The text is being prepared (PostgreSQL Parse, MySQL COM_STMT_PREPARE): its runs come later.
    # A statement that needs approval is then approved at each run, with its parameters.
    prepare: bool = False
    # A run of a prepared statement that needs approval: the parameter values bound to it (None
    # for NULL) and their format codes (PostgreSQL: 0 text, 1 binary), bound into the approval.
    parameters: tuple[bytes | None, ...] | None = None
    formats: tuple[int, ...] = ()
    # The parameter types the client declared when preparing (PostgreSQL Parse OIDs, 0 for
    # "server infers"): the same bytes mean another value under another type.
    types: tuple[int, ...] = ()


class KillRequest(msgspec.Struct, frozen=True):
    """MySQL `KILL [CONNECTION | QUERY] <id>`: the gateway connection id to reach."""

    connection_id: int
    query_only: bool


class Verdict(msgspec.Struct, frozen=True):
    """The pipeline's answer for one request."""

    request_id: int
    decision: Decision
    analysis: Analysis | None = None
    # How to mask the results of an allowed request (None: nothing to mask).
    mask: MaskContext | None = None
    # A [[masks]] rule applies to this identity on this target (rows must be watched).
    masked: bool = False
    # The session's token expired and `on_token_expiry = "close"`: end the session.
    close_session: bool = False
    # MySQL KILL in the form the gateway maps onto its own connection ids.
    kill: KillRequest | None = None
    # Row estimates asked of the upstream, by 0-based statement index (None: no estimate).
    estimates: dict[int, int | None] = {}
    # What an offline verdict (`sqlward policy test`) could not know.
    notes: tuple[str, ...] = ()
    # PostgreSQL: the session's search_path after the request, when it may have changed (the
    # adapter makes sure of it before relying on it; see `policy.searchpath`).
    search_path: SearchPath | None = None
    # The approval request that released this statement (an allowed review), or that it made
    # (a refusal in retry mode, a rejection, a timeout).
    approval_id: str | None = None
    # A prepared statement (request.prepare) that needs approval at each run: the adapter
    # prepares it and asks again, with the parameters, before each run.
    review_at_run: bool = False
    # The statement span's W3C trace context, to append to the text as a sqlcommenter comment
    # (the target's trace_upstream, with tracing on); None: the text goes as sent.
    traceparent: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision.action == "allow"


class SessionContext:
    """What the pipeline judges a session's requests with: who, where, the audit scope and the
    request counter. Owned by the session; the pipeline updates `identity` when a statement
    states a new reason (`/* sqlward:reason=... */`) and counts requests."""

    __slots__ = (
        "audit", "identity", "who", "target", "requests", "offline", "masked", "masked_key", "access_refusal",
        "notice", "client_gone", "hold", "approved", "approval_failed",
    )

    def __init__(self, audit: AuditScope, *, offline: bool = False) -> None:
        self.audit = audit
        self.identity: Identity | None = None
        self.who: Who | None = None
        self.target: Target | None = None
        self.requests = 0
        # True for `sqlward policy test`: no live session, no upstream session state.
        self.offline = offline
        # The pipeline's memo of whether a [[masks]] rule applies, and for which (identity,
        # target, policy version).
        self.masked = False
        self.masked_key: tuple[object, ...] | None = None
        # Why [[access]] no longer lets this identity reach this target (None: it does), looked
        # up with `masked` (a reload that revokes access reaches open sessions).
        self.access_refusal: str | None = None
        # Approval holds (set by the adapter): `notice` tells the client at once that its
        # statement is held (PostgreSQL NoticeResponse; None where the protocol cannot);
        # `client_gone` returns why the hold cannot go on for the client (it disconnected, or
        # sent more than is kept while held), reading and keeping what it sends meanwhile.
        self.notice: Callable[[str], Awaitable[None]] | None = None
        self.client_gone: Callable[[], Awaitable[str]] | None = None
        # The cancel scope of the hold in progress (a client's cancel withdraws the request).
        self.hold: trio.CancelScope | None = None
        # Statements released by an approval and not yet completed: request id -> approval id
        # (`approval_of`); `approval_failed(approval_id, request_id, error)` is the pipeline's.
        self.approved: dict[int, str] = {}
        self.approval_failed: Callable[[str, int, str], None] | None = None

    def approval_of(self, event: StatementCompleted) -> StatementCompleted:
        """The completion of a statement released by an approval names the request (by its
        request id, or for a run of a prepared statement its `prepared_ref`); a failed run is
        reported so the request becomes `failed`. Adapters call it when `approved` is not empty."""
        approved = self.approved
        aid = approved.pop(event.request_id, None)
        if aid is None and event.prepared_ref is not None:
            aid = approved.pop(event.prepared_ref, None)
        if aid is None:
            return event
        if event.error is not None and self.approval_failed is not None:
            self.approval_failed(aid, event.request_id, event.error)
        return msgspec.structs.replace(event, approval_id=aid)

    def withdraw_hold(self) -> bool:
        """A client's cancel (PostgreSQL CancelRequest, MySQL KILL QUERY): ends the hold in
        progress, which withdraws its approval request. False when nothing is held."""
        hold = self.hold
        if hold is None:
            return False
        hold.cancel()
        return True

    def set_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.who = Who(
            subject=identity.subject, groups=identity.groups, actor=identity.actor,
            verified_by=identity.verified_by, reason=identity.reason, issuer=identity.issuer,
        )

    def next_request(self) -> int:
        self.requests += 1
        return self.requests


class StatementPipeline(Protocol):
    """The one place where a request's fate is decided (`sqlward.gateway.pipeline`)."""

    @property
    def policy_version(self) -> int:
        """Changes whenever the policy is reloaded; prepared statements are decided again then."""

    async def judge(self, ctx: SessionContext, request: StatementRequest, *, durable: bool = True) -> Verdict:
        """Analysis, built-in checks, guardrails, rules, row estimates, the mask plan; records
        `statement.decided` in `ctx.audit`, flushed at once when `durable` (a failure then
        refuses with `audit-unavailable`), else at the adapter's next flush point."""


@dataclass(frozen=True)
class SessionServices:
    """What the gateway hands every listener (and through it, every session)."""

    gatekeeper: Gatekeeper
    pipeline: StatementPipeline
    recorder: Recorder
    # Connections awaiting authentication, over all listeners (see adapters/preauth.py).
    preauth: PreAuthLimiter = field(default_factory=lambda: PreAuthLimiter(256, 32))
    # The gateway's shutdown: sessions close when idle once it starts (adapters/drain.py).
    drain: Drain = field(default_factory=Drain)


@dataclass(frozen=True)
class ListenerSettings:
    """A listener's configuration, as its sessions need it (from `[[listeners]]`)."""

    name: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    tls_required: bool = False
    max_message_size: int = 64 << 20
    default_target: str = ""
    # OIDC tokens on plain TCP from loopback clients.
    allow_plaintext_tokens: bool = False
    # Mutual TLS: how a verified client certificate names the identity.
    cert_identity: CertIdentityMode = "none"
    # MySQL: when caching_sha2_password takes the full path.
    sha2_full_auth: Sha2FullAuth = "never"
    # MySQL: the target whose greeting (version, capabilities) the listener shows its clients.
    probe_target: str = ""


S = TypeVar("S")


class SessionRegistry(Generic[S]):
    """The live sessions of one listener by the id the gateway gave them: PostgreSQL backend
    pids (with the cancel secret, random ids) and MySQL connection ids (sequential, what KILL
    names). Cross-session operations (cancel, KILL, later approval holds) go through it, never
    through the listener."""

    def __init__(self, *, sequential: bool, first: int | None = None, randbelow: Callable[[int], int] = secrets.randbelow) -> None:
        self._sessions: dict[int, S] = {}
        self._sequential = sequential
        self._randbelow = randbelow
        self._next = first if first is not None else randbelow(1 << 20) + 1000

    def add(self, session: S) -> int:
        """A fresh id for `session` (never 0, never one in use)."""
        while True:
            if self._sequential:
                self._next = (self._next + 1) & 0xFFFFFFFF or 1
                key = self._next
            else:
                key = self._randbelow(2**31 - 2) + 1
            if key not in self._sessions:
                self._sessions[key] = session
                return key

    def remove(self, key: int, session: S) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]

    def get(self, key: int) -> S | None:
        return self._sessions.get(key)

    def __len__(self) -> int:
        return len(self._sessions)
