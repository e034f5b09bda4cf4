"""The gateway's TOML configuration: schema, loading and validation.

How it works (`load_config`), in four passes, each reporting problems as
``FILE: $.path: what was expected``:

1. Read. The file is parsed with `tomllib`; a missing file or a TOML syntax error (with its line
   and column) is reported before anything else.
2. Expand. Every *string value* of the decoded tree is scanned for ``${VAR}`` references, which are
   replaced by the environment variable's value; ``${VAR:-default}`` gives ``default`` when VAR is
   unset or empty, as in the shell (``$${`` writes a literal ``${``; keys, numbers and
   booleans are never touched; values are not expanded twice). The walk tracks the ``$.path`` so
   an unset variable is reported where it is used:
   ``dev.toml: $.targets[0].password: environment variable APP_DEV_PASSWORD is not set``.
3. Convert. `msgspec.convert` turns the tree into the frozen Structs below, all declared with
   ``forbid_unknown_fields=True``; msgspec's "Expected `str`, got `int` - at `$.x`" errors are
   reworded into the format above (`gateway.config_errors.reword`). `environments` and
   `guardrails` are converted table by table so their errors name the environment or guardrail
   (msgspec itself would print ``$.environments[...]``), by
   `gateway.policy_files.convert_policy_tables`, which the policy files use too; a
   `[guardrails.<id>]` table must name a guardrail of the catalogue
   (`policy.guardrails.CATALOGUE`) and set only the options that guardrail takes.
4. Check. Cross-field rules msgspec cannot express: protocols, listen addresses, DSNs (scheme,
   host, port, user, query parameters), secrets given twice, files that cannot be read, duplicate
   names and rule ids, `default_target` pointing at a target of another protocol; for identity:
   `[[oidc]]` issuers with exactly one key source (`jwks_file`, which must hold a JWK set, or an
   ``https://`` `jwks_url`), public-key algorithms only (``none`` and ``HS*`` are refused by
   name), listeners whose `client_ca_file` needs `tls` and whose `cert_identity` needs
   `client_ca_file`. All problems of this pass are collected and reported together. Relative file
   paths (TLS files, client CA files, secret files, JWKS and JWKS CA files, DSN
   ``sslrootcert``/``sslcert``/``sslkey``, the audit file) are then made absolute against the
   directory of the config file, and unnamed listeners get the name ``<protocol>-<port>``.
   Last, the policy files named by `[gateway] policy_files` are loaded once
   (`gateway.policy_files.load_policy`), so a broken one stops the start-up too.

`Problem` and `ConfigError` live in `gateway.config_errors` and are importable from here. Imports
go one way: this module imports `gateway.policy_files`, which reads a `Config` through its
`PolicySource` protocol and never imports this module.

`[identity]` decodes into `IdentityOptions`, a strict subclass of `adapters.base.IdentitySettings`
(`.settings()` gives the plain adapter-facing value); `[[access]]` into `AccessRule`s, judged by
`gateway.gatekeeper.Gatekeeper.access_refusal`; `[[oidc]]` into `IssuerConfig`s for
`gateway.oidc.TokenVerifier`.

Secrets (`TargetConfig.password`, `IdentityConfig.secret`, a password inside a DSN) are hidden
from every ``repr``/``str`` and never quoted in an error message. The file-backed variants
(`password_file`, `secret_file`) are only checked for readability here; `gateway.gatekeeper`
reads them once at start-up with `read_secret_file`.

The reference for every key is docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Literal, Annotated, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from sqlward.adapters.base import IdentitySettings, UpstreamTLS
from sqlward.adapters.identity import canonical_name, name_problem
from sqlward.gateway.config_errors import ConfigError, Problem, key_path, reword
from sqlward.gateway.policy_files import convert_policy_tables, load_policy
from sqlward.policy.guardrails import GuardrailConfig
from sqlward.policy.rules import EnvironmentPolicy, Rule, rule_problems
from sqlward.masking.model import MaskRule
from sqlward.masking.policy import MaskingSettings
from sqlward.masking.policy import rule_problems as mask_rule_problems

__all__ = [
    "AccessRule",
    "AuditConfig",
    "AuditSinkConfig",
    "TelemetryConfig",
    "Config",
    "ConfigError",
    "DEFAULT_JWS_ALGORITHMS",
    "GatewaySettings",
    "IdentityConfig",
    "IdentityOptions",
    "IssuerConfig",
    "JWS_ALGORITHMS",
    "ListenerConfig",
    "ListenerTLS",
    "LoginThrottleConfig",
    "ParsedDSN",
    "Problem",
    "TargetConfig",
    "load_config",
    "parse_dsn",
    "parse_listen",
    "read_secret_file",
]

PROTOCOLS: tuple[str, ...] = ("postgres", "mysql")
DEFAULT_PORTS: dict[str, int] = {"postgres": 5432, "mysql": 3306}
DSN_SCHEMES: dict[str, tuple[str, ...]] = {
    "postgres": ("postgresql", "postgres"),
    "mysql": ("mysql", "mariadb"),
}
SSL_MODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# MySQL's own --ssl-mode names, accepted in mysql:// DSNs and mapped to the libpq names.
_MYSQL_SSL_MODES: dict[str, str] = {
    "disabled": "disable",
    "preferred": "prefer",
    "required": "require",
    "verify_ca": "verify-ca",
    "verify_identity": "verify-full",
}
DSN_PARAMETERS: tuple[str, ...] = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout")
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
# Signature algorithms an [[oidc]] issuer may allow: public-key algorithms only. "none" and the
# shared-secret HS256/HS384/HS512 are never accepted (see gateway/oidc.py).
JWS_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519", "Ed448",
)
DEFAULT_JWS_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
CERT_IDENTITY_MODES: tuple[str, ...] = ("none", "subject-cn", "san-uri")

_HIDDEN = "'***'"


# --------------------------------------------------------------------------------------------
# Schema


def _safe_fields(obj: msgspec.Struct, hidden: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        if name in hidden and value:
            yield name, _Masked()
        elif name == "dsn" and value:
            yield name, mask_dsn(value)
        else:
            yield name, value


class _Masked:
    def __repr__(self) -> str:
        return _HIDDEN


def _safe_repr(obj: msgspec.Struct, hidden: tuple[str, ...]) -> str:
    inner = ", ".join(f"{k}={v!r}" for k, v in _safe_fields(obj, hidden))
    return f"{type(obj).__name__}({inner})"


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Name of this gateway instance: written into every audit event.
    name: str
    # Policy files (TOML or YAML; globs relative to the config file), loaded in order after the
    # config's own [[rules]] / [environments.X] / [guardrails.<id>] (see gateway/policy_files.py).
    policy_files: tuple[str, ...] = ()
    # Connections not yet authenticated, over all listeners and per client address; one more is
    # refused at once with a "too many connections" error in its protocol (see docs/security.md).
    max_unauthenticated: Annotated[int, msgspec.Meta(ge=1)] = 256
    max_unauthenticated_per_address: Annotated[int, msgspec.Meta(ge=1)] = 32
    # Seconds a SIGTERM lets statements in flight and held approvals finish before the sessions
    # still busy are closed (idle sessions are closed at once); see docs/operations.md.
    drain_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    # Log level of the gateway's own log on stderr: "debug", "info", "warning" or "error".
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "json": one JSON object per line (for log collectors); "text": one readable line.
    log_format: Literal["json", "text"] = "text"


class ListenerTLS(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cert_file: str
    key_file: str
    # True: clients that do not negotiate TLS are refused.
    require: bool = False


class ListenerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Default (applied by load_config): "<protocol>-<port>".
    name: str = ""
    protocol: str
    # "host:port", "[ipv6]:port"; port 0 picks a free port (tests).
    listen: str
    tls: ListenerTLS | None = None
    # Target used when the client names no database ("" = none). PostgreSQL clients built on
    # libpq (psql, psycopg) send the user name when no database is given: a database name equal
    # to the user name that names no target lands here too.
    default_target: str = ""
    # Largest client message accepted, in bytes.
    max_message_size: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = DEFAULT_MAX_MESSAGE_SIZE
    # MySQL listeners: when caching_sha2_password takes the full path (password over TLS, or
    # RSA-encrypted) instead of the fast scramble check. "never" (the gateway always holds the
    # fast-path verifier), "first-login" (MySQL's behaviour after a restart), "always".
    caching_sha2_full_auth: Literal["never", "first-login", "always"] = "never"
    # OIDC tokens presented on plain TCP: honoured only for loopback clients, and only when true.
    allow_plaintext_tokens: bool = False
    # Mutual TLS: request client certificates signed by this CA ("" = no client certificates).
    client_ca_file: str = ""
    # How a verified client certificate names the identity: "none" (it does not), "subject-cn"
    # (the subject's commonName), "san-uri" (the first URI subjectAltName, e.g. a SPIFFE id).
    cert_identity: Literal["none", "subject-cn", "san-uri"] = "none"

    def __post_init__(self) -> None:
        if not self.name:  # default name; an invalid `listen` is reported by load_config's checks
            try:
                msgspec.structs.force_setattr(self, "name", f"{self.protocol}-{parse_listen(self.listen)[1]}")
            except ValueError:
                pass

    @property
    def host(self) -> str:
        """The listen host without IPv6 brackets ("::1", "127.0.0.1", "localhost")."""
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class TargetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    protocol: str
    environment: str
    dsn: str
    password: str | None = None
    password_file: str = ""
    # MySQL only: allow LOAD DATA LOCAL INFILE (the client sends its files to the server).
    allow_local_infile: bool = False
    # The audit trail's copy of statement text: "as_sent", or "redacted" (every literal
    # replaced by ?); parameter values of prepared statements likewise. Masked values never.
    audit_text: Literal["as_sent", "redacted"] = "as_sent"
    audit_parameters: Literal["as_sent", "redacted"] = "as_sent"
    # Pass the gateway's trace context upstream as a sqlcommenter comment (/*traceparent='...'*/
    # appended to each statement the client sends as text) so the database's logs join the trace.
    trace_upstream: bool = False

    def __repr__(self) -> str:
        return _safe_repr(self, ("password",))

    __str__ = __repr__

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        yield from _safe_fields(self, ("password",))


class IdentityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    groups: tuple[str, ...] = ()
    display_name: str = ""
    # An AI agent or runbook rather than a person.
    agent: bool = False
    # Without secret / secret_file the identity cannot log in with a password.
    secret: str | None = None
    secret_file: str = ""
    # A bot: decides approvals through the admin API with its API token ("bot:<name>" in an
    # approval's approvers). The token is a bearer secret: api_token_file (or api_token).
    bot: bool = False
    api_token: str | None = None
    api_token_file: str = ""

    def __repr__(self) -> str:
        return _safe_repr(self, ("secret", "api_token"))

    __str__ = __repr__

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        yield from _safe_fields(self, ("secret", "api_token"))


class IssuerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One trusted OIDC / JWT issuer (`[[oidc]]`); used by `gateway.oidc.TokenVerifier`."""

    # The exact `iss` claim of its tokens.
    issuer: str
    # A token must name at least one of these in its `aud` claim.
    audiences: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    # Where the issuer's public keys (a JWKS) come from: exactly one of a file or an HTTPS URL.
    jwks_file: str = ""
    jwks_url: str = ""
    # CA file for the HTTPS connection to jwks_url ("" = the system store).
    jwks_ca_file: str = ""
    subject_claim: str = "sub"
    # A list of strings or one space-separated string.
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = DEFAULT_JWS_ALGORITHMS
    leeway_seconds: Annotated[int, msgspec.Meta(ge=0, le=300)] = 30
    jwks_refresh_seconds: Annotated[int, msgspec.Meta(ge=1)] = 600
    # At least 1 (gateway.oidc.MIN_REFETCH_FLOOR): an unknown kid must not make sqlward hammer
    # the identity provider.
    jwks_min_refetch_seconds: int = 30
    # "at+jwt": only RFC 9068 access tokens (header typ at+jwt / application/at+jwt). "": a typ
    # header, when present, must be at+jwt or JWT (any case).
    require_typ: Literal["", "at+jwt"] = ""


class IdentityOptions(IdentitySettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[identity]` table: `adapters.base.IdentitySettings`, decoded strictly."""

    on_token_expiry: Literal["refuse", "close"] = "refuse"

    def settings(self) -> IdentitySettings:
        """The same values as the adapter-facing `IdentitySettings`."""
        return IdentitySettings(**msgspec.structs.asdict(self))


class AccessRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[access]]` rule: who may reach which targets. Every criterion left empty matches
    anything; the first rule whose criteria all match decides."""

    targets: tuple[str, ...] = ()  # globs over target names
    environments: tuple[str, ...] = ()  # target environments
    # Subjects and actors are compared in the canonical form of names
    # (`adapters.identity.canonical_name`: case, fullwidth and other compatibility spellings).
    subjects: tuple[str, ...] = ()  # globs over identity subjects
    groups: tuple[str, ...] = ()  # any overlap with the identity's groups
    actors: tuple[str, ...] = ()  # globs; matches when any actor of the chain matches
    # Globs over the identity's issuer (an OIDC token's `iss`, exactly; a client certificate's
    # issuing CA commonName). A static identity has no issuer and never matches a non-empty list.
    issuers: tuple[str, ...] = ()
    action: Literal["allow", "deny"]


class LoginThrottleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[login_throttle]` table: failed logins slow down further attempts from the same
    source address (IPv6: its /`ipv6_prefix` network) and for the same user name (canonical
    form), see `gateway.throttle`."""

    enabled: bool = True
    # Failures (per address, per name) that cost nothing; the next attempt waits
    # base_delay_seconds, then twice as long after each further failure, up to max_delay_seconds.
    failures_before_delay: int = 5
    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0
    # A key's failures are forgotten after this long without a new one.
    window_seconds: float = 900.0
    # Addresses and names tracked (each); the least recently failed are forgotten first.
    max_tracked: int = 10_000
    ipv6_prefix: int = 64
    # Source networks not throttled by address (the user-name key still applies), e.g. a local
    # pooler or proxy that puts every client behind one address: ["127.0.0.0/8", "::1/128"].
    exempt_addresses: tuple[str, ...] = ()


class AuditSinkConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[audit.sinks]]` table: where a copy of the trail goes (docs/audit.md)."""

    kind: Literal["file", "postgres", "stdout", "otlp"]
    # Names the sink in errors, metrics, /readyz and its spool folder; default: the kind (and
    # its position when a kind repeats).
    name: str = ""
    # A required sink that cannot take records refuses statements (with [audit] failure =
    # "closed"); an optional one is reported and retried, never in the way.
    required: bool = True
    # kind = "file": the JSON-lines file, rotated by size and/or age (0: never); each new
    # file continues the chain of the one before it.
    path: str = ""
    rotate_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    rotate_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # kind = "postgres": a libpq URI; the table is created when missing.
    dsn: str = ""
    password_file: str = ""
    table: str = "sqlward_audit"
    # kind = "otlp": the OTLP/HTTP logs endpoint (http://collector:4318/v1/logs).
    endpoint: str = ""
    headers: dict[str, str] = {}
    ca_file: str = ""
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=120)] = 5.0
    # Remote sinks (postgres, otlp): records not yet delivered wait in a spool on disk, at most
    # this many bytes (beyond it a required sink refuses statements; an optional one drops).
    spool_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 16)] = 1 << 30


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The JSON-lines file: the only sink when `sinks` is empty.
    file: str = "audit.jsonl"
    # Kept for old configs: fsync = true is durability = "sync".
    fsync: bool = False
    # "buffered" (default): written before the client gets a statement's result (the file: to
    # the kernel, so a killed gateway loses nothing; remote sinks: to the spool), made durable
    # in the background. "sync": durable in every required sink (fsync'd, committed), with
    # group commit, before the client gets the result: also across a power loss.
    durability: Literal["sync", "buffered"] = "buffered"
    # "closed": when a required sink cannot take records, statements are refused.
    # "open" (development only): statements go on, and the loss is logged and counted.
    failure: Literal["closed", "open"] = "closed"
    # PEM private key (Ed25519, or ECDSA P-256) that signs checkpoints. Default: a key made at
    # first start next to the audit file (audit-signing-key.pem, and .pub for verifiers).
    signing_key_file: str = ""
    # A signed checkpoint after this many records, or this many seconds with records unsigned,
    # and at shutdown.
    checkpoint_every: Annotated[int, msgspec.Meta(ge=1)] = 1000
    checkpoint_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 10.0
    # Where remote sinks spool records not yet delivered (default: next to the audit file).
    spool_dir: str = ""
    # How long a statement waits (sync) for a remote sink before it is refused.
    sync_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    sinks: tuple[AuditSinkConfig, ...] = ()


class TelemetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[telemetry]`: OpenTelemetry traces and metrics over OTLP/HTTP (docs/observability.md)."""

    # OTLP/HTTP base URL (http://collector:4318): traces go to /v1/traces, metrics to
    # /v1/metrics. Empty: nothing is exported (metrics are still served on /metrics).
    endpoint: str = ""
    headers: dict[str, str] = {}
    service_name: str = "sqlward"
    traces: bool = True
    # The share of sessions traced (parent-based: a client's sampled traceparent is followed).
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    metrics: bool = True
    metrics_interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 10.0
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0


class AdminTLS(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cert_file: str
    key_file: str


class AdminAccess(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which groups may call which routes of the admin API (`[admin.access]`). A bot's groups are
    its identity's; `["*"]` admits every authenticated caller."""

    # List and show approval requests.
    approvals_read: tuple[str, ...] = ("*",)
    # Approve or reject (the request's own approval rule decides beyond this).
    approvals_decide: tuple[str, ...] = ("*",)


class AdminConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The admin HTTP listener (`[admin]`): approvals API (later health, metrics, console)."""

    listen: str = ""  # host:port; "" = no admin listener
    tls: AdminTLS | None = None
    # The address people and chat messages use to reach this listener (links in notices and
    # webhooks), e.g. "https://sqlward.example.com"; "" = derived from `listen`.
    public_url: str = ""
    access: AdminAccess = AdminAccess()


class ApprovalsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where approval requests live (`[approvals]`)."""

    # A SQLite file (relative to the config file) or a postgresql:// DSN shared by replicas.
    store: str = "approvals.sqlite3"
    store_password_file: str = ""  # PostgreSQL store: its password, from a file
    table: str = "sqlward_approvals"  # PostgreSQL store: the table (created when missing)
    # Seconds between looks at the store while a statement is held (decisions taken through
    # another gateway replica are seen within this).
    poll_seconds: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.5
    sweep_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    # Requests one identity may have waiting at once (more are refused at once).
    max_pending_per_identity: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    # Days decided requests stay in the store (the audit trail keeps every transition); 0: kept.
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0


class WebhookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[webhooks]]` receiver of approval notifications."""

    url: str
    # HMAC-SHA256 key for the X-Sqlward-Signature header: secret_file (or secret).
    secret: str | None = None
    secret_file: str = ""
    # Which events: approval.requested, approval.decided, approval.expired, approval.withdrawn,
    # approval.executed, approval.failed (empty = all).
    events: tuple[str, ...] = ()
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 6
    backoff_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 1.0
    ca_file: str = ""  # for an https receiver with a private CA

    def __repr__(self) -> str:
        return _safe_repr(self, ("secret",))

    __str__ = __repr__


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    gateway: GatewaySettings
    listeners: Annotated[tuple[ListenerConfig, ...], msgspec.Meta(min_length=1)]
    targets: Annotated[tuple[TargetConfig, ...], msgspec.Meta(min_length=1)]
    identities: tuple[IdentityConfig, ...] = ()
    audit: AuditConfig = AuditConfig()
    environments: dict[str, EnvironmentPolicy] = {}
    rules: tuple[Rule, ...] = ()
    guardrails: dict[str, GuardrailConfig] = {}
    oidc: tuple[IssuerConfig, ...] = ()
    identity: IdentityOptions = IdentityOptions()
    access: tuple[AccessRule, ...] = ()
    masks: tuple[MaskRule, ...] = ()
    masking: MaskingSettings = MaskingSettings()
    login_throttle: LoginThrottleConfig = LoginThrottleConfig()
    admin: AdminConfig = AdminConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    webhooks: tuple[WebhookConfig, ...] = ()
    telemetry: TelemetryConfig = TelemetryConfig()
    # Absolute path of the file this was loaded from (set by load_config, not by the file).
    source: str = ""

    @property
    def base_dir(self) -> str:
        """Directory relative paths were resolved against."""
        return os.path.dirname(self.source) if self.source else os.getcwd()


class ParsedDSN(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a target DSN. `password` is the one written in the DSN, if any."""

    host: str
    port: int
    user: str
    database: str
    password: str = ""
    tls: UpstreamTLS = UpstreamTLS()
    connect_timeout: float = 10.0

    def __repr__(self) -> str:
        return _safe_repr(self, ("password",))

    __str__ = __repr__

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        yield from _safe_fields(self, ("password",))


# --------------------------------------------------------------------------------------------
# Small parsers (also used by the gatekeeper)

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:6432"`` → ("127.0.0.1", 6432); ``"[::1]:6432"`` → ("::1", 6432).

    Raises ValueError with a sentence saying what was expected."""
    expected = "expected host:port or [IPv6]:port, e.g. 127.0.0.1:6432 or [::1]:6432"
    if listen.startswith("["):
        end = listen.find("]")
        if end < 0 or not listen[end + 1 :].startswith(":"):
            raise ValueError(f"{expected}, got {listen!r}")
        host, port_text = listen[1:end], listen[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address; {expected}") from None
    else:
        host, sep, port_text = listen.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{expected}, got {listen!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses must be written in brackets; {expected}, got {listen!r}")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or address; {expected}")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port must be a number from 0 to 65535; {expected}, got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port}")
    return host, port


def mask_dsn(dsn: str) -> str:
    """The DSN with its password (if any) replaced by ***, for display."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            if "@" in dsn.partition("://")[2] and "@" not in parts.netloc:
                return "<unparsable DSN>"  # a password holding / ? or # cut the netloc short
            return dsn
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()
    except ValueError:
        return "<unparsable DSN>"


def parse_dsn(dsn: str, protocol: str, base_dir: str = "") -> ParsedDSN:
    """Parse a target DSN (``postgresql://user[:password]@host[:port][/database][?params]``).

    The port defaults to the protocol's (5432, 3306), the database to the user name. Query
    parameters: sslmode, sslrootcert (a file, or "system" for the system store), sslcert, sslkey,
    connect_timeout (seconds). Relative certificate paths are resolved against `base_dir`.
    Raises ValueError; the message never contains the password."""
    schemes = DSN_SCHEMES.get(protocol)
    if schemes is None:
        raise ValueError(f"unknown protocol {protocol!r}")
    wanted = " or ".join(f"{s}://" for s in schemes)
    scheme, sep, _ = dsn.partition("://")
    if not sep:
        raise ValueError(f"expected a URL starting with {wanted}")
    if scheme.lower() not in schemes:
        raise ValueError(f"scheme {scheme}:// does not match protocol {protocol} (expected {wanted})")
    try:
        parts = urlsplit(dsn)
        port = parts.port
        host = parts.hostname
    except ValueError:  # bad port, bad IPv6 literal; urllib's message may quote the password
        raise ValueError(
            "malformed DSN: the port is not a number or the host is not valid (a password with # / ? @ "
            "or : must be percent-encoded, e.g. %23 for #)"
        ) from None
    if parts.fragment:
        raise ValueError("a DSN has no #fragment")
    if not host:
        raise ValueError(f"DSN has no host (expected {schemes[0]}://USER@HOST[:PORT]/DATABASE)")
    if port == 0:
        raise ValueError("DSN port must be from 1 to 65535")
    user = unquote(parts.username or "")
    if not user:
        raise ValueError(f"DSN has no user (expected {schemes[0]}://USER@HOST[:PORT]/DATABASE)")
    password = unquote(parts.password or "")
    database = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if "/" in database:
        raise ValueError("DSN path must be a single database name")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError("malformed DSN query string (expected ?key=value&key=value)") from None
    for key, value in pairs:
        if key not in DSN_PARAMETERS:
            raise ValueError(f"unknown DSN parameter {key!r} (expected one of: {', '.join(DSN_PARAMETERS)})")
        if key in params:
            raise ValueError(f"DSN parameter {key!r} given twice")
        params[key] = value

    mode = params.get("sslmode", "prefer")
    if protocol == "mysql":
        mode = _MYSQL_SSL_MODES.get(mode.lower(), mode)
    if mode not in SSL_MODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}; got {mode!r}")

    def file_param(key: str) -> str:
        value = params.get(key, "")
        if not value or (key == "sslrootcert" and value == "system"):
            return ""
        return _resolve(value, base_dir)

    timeout = 10.0
    if "connect_timeout" in params:
        try:
            timeout = float(params["connect_timeout"])
        except ValueError:
            timeout = -1.0
        if not (0 < timeout < float("inf")):
            raise ValueError(f"connect_timeout must be a positive number of seconds; got {params['connect_timeout']!r}")
    tls = UpstreamTLS(
        mode=mode,
        root_cert=file_param("sslrootcert"),
        cert_file=file_param("sslcert"),
        key_file=file_param("sslkey"),
    )
    return ParsedDSN(
        host=host,
        port=port or DEFAULT_PORTS[protocol],
        user=user,
        database=database or user,
        password=password,
        tls=tls,
        connect_timeout=timeout,
    )


def read_secret_file(path: str) -> str:
    """The content of a secret file, without its trailing line break. Raises OSError /
    UnicodeDecodeError."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text.removesuffix("\n").removesuffix("\r")


def _resolve(path: str, base_dir: str) -> str:
    if not path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


# --------------------------------------------------------------------------------------------
# Pass 2: ${VAR} expansion

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand_string(text: str, env: Mapping[str, str], path: str, problems: list[Problem]) -> str:
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        if text.startswith("$${", j):
            out.append("${")
            i = j + 3
        elif text.startswith("${", j):
            end = text.find("}", j + 2)
            if end < 0:
                problems.append(Problem(path, "unterminated ${ (write $${ for a literal ${)"))
                return text
            name, sep, default = text[j + 2 : end].partition(":-")
            if not _VAR_NAME.fullmatch(name):
                # The text may be a secret: do not quote it.
                problems.append(
                    Problem(path, "malformed ${...}: expected ${NAME} or ${NAME:-default}, NAME of letters, digits "
                            "and _ (write $${ for a literal ${)")
                )
                return text
            if "${" in default:
                problems.append(Problem(path, "a ${NAME:-default} default cannot hold another ${...} (not expanded)"))
                return text
            value = env.get(name)
            if sep and not value:  # ${NAME:-default}: the default when NAME is unset or empty
                value = default
            if value is None:
                problems.append(Problem(path, f"environment variable {name} is not set"))
                value = ""
            out.append(value)
            i = end + 1
        else:
            out.append("$")
            i = j + 1


def _expand(node: Any, env: Mapping[str, str], path: str, problems: list[Problem]) -> Any:
    if isinstance(node, str):
        return _expand_string(node, env, path, problems)
    if isinstance(node, dict):
        return {k: _expand(v, env, key_path(path, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    return node


# --------------------------------------------------------------------------------------------
# Pass 3: conversion and rewording of msgspec's errors

def _convert(raw: dict[str, Any], file: str) -> Config:
    problems: list[Problem] = []
    if "source" in raw:
        problems.append(Problem("$.source", "unknown field (set by the loader, not by the file)"))
    raw = dict(raw)
    raw.pop("source", None)
    envs_raw = raw.pop("environments", {})
    guards_raw = raw.pop("guardrails", {})
    try:
        config = msgspec.convert(raw, type=Config)
    except msgspec.ValidationError as exc:
        problems.append(reword(exc, Config, "$"))
        raise ConfigError(file, problems) from None
    environments, guardrails = convert_policy_tables(envs_raw, guards_raw, problems)
    if problems:
        raise ConfigError(file, problems)
    return msgspec.structs.replace(config, environments=environments, guardrails=guardrails)


# --------------------------------------------------------------------------------------------
# Pass 4: cross-field checks, path resolution, defaults


def _check_long_secret(value: str | None, file: str, where: str, what: str, problems: list[Problem]) -> None:
    """A secret given inline (`where`, at least 16 characters) or in a file (`where` + "_file",
    readable), not both."""
    if value is not None and file:
        problems.append(Problem(f"{where}_file", f"both {where.rsplit('.', 1)[-1]} and {where.rsplit('.', 1)[-1]}_file are set (keep one)"))
    elif value is not None and len(value) < 16:
        problems.append(Problem(where, f"expected a {what} of at least 16 characters"))
    elif file:
        _check_readable(file, f"{where}_file", f"{what} file", problems)


def _check_readable(path: str, where: str, what: str, problems: list[Problem]) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        problems.append(Problem(where, f"cannot read {what} {path}: {exc.strerror or exc}"))


def _finish(config: Config, file: str) -> Config:
    source = os.path.abspath(file)
    base = os.path.dirname(source)
    problems: list[Problem] = []

    if not config.gateway.name.strip():
        problems.append(Problem("$.gateway.name", "expected a non-empty name"))
    for i, pattern in enumerate(config.gateway.policy_files):
        if not pattern.strip():
            problems.append(Problem(f"$.gateway.policy_files[{i}]", "expected a file path or glob"))

    # Targets first: listeners refer to them.
    targets: list[TargetConfig] = []
    target_at: dict[str, int] = {}
    for i, t in enumerate(config.targets):
        at = f"$.targets[{i}]"
        if not t.name:
            problems.append(Problem(f"{at}.name", "expected a non-empty name"))
        elif t.name in target_at:
            problems.append(Problem(f"{at}.name", f"duplicate target name {t.name!r} (first at $.targets[{target_at[t.name]}])"))
        else:
            target_at[t.name] = i
        if not t.environment:
            problems.append(Problem(f"{at}.environment", "expected a non-empty environment name"))
        password_file = _resolve(t.password_file, base)
        if t.protocol not in PROTOCOLS:
            problems.append(Problem(f"{at}.protocol", f"unknown protocol {t.protocol!r} (expected one of: {', '.join(PROTOCOLS)})"))
        else:
            try:
                dsn = parse_dsn(t.dsn, t.protocol, base)
            except ValueError as exc:
                problems.append(Problem(f"{at}.dsn", str(exc)))
            else:
                if dsn.password and (t.password is not None or t.password_file):
                    problems.append(Problem(f"{at}.dsn", "password given both in the DSN and in password/password_file (keep one)"))
                for key, cert in (("sslrootcert", dsn.tls.root_cert), ("sslcert", dsn.tls.cert_file), ("sslkey", dsn.tls.key_file)):
                    if cert:
                        _check_readable(cert, f"{at}.dsn", f"{key} file", problems)
        if t.password is not None and t.password_file:
            problems.append(Problem(f"{at}.password_file", "both password and password_file are set (keep one)"))
        elif password_file:
            _check_readable(password_file, f"{at}.password_file", "password file", problems)
        targets.append(msgspec.structs.replace(t, password_file=password_file))

    listeners: list[ListenerConfig] = []
    listener_at: dict[str, int] = {}
    address_at: dict[tuple[str, int], int] = {}
    for i, li in enumerate(config.listeners):
        at = f"$.listeners[{i}]"
        protocol_ok = li.protocol in PROTOCOLS
        if not protocol_ok:
            problems.append(Problem(f"{at}.protocol", f"unknown protocol {li.protocol!r} (expected one of: {', '.join(PROTOCOLS)})"))
        name = li.name
        try:
            host, port = parse_listen(li.listen)
        except ValueError as exc:
            problems.append(Problem(f"{at}.listen", str(exc)))
        else:
            name = name or f"{li.protocol}-{port}"
            if port and (host, port) in address_at:
                problems.append(Problem(f"{at}.listen", f"address {li.listen} is already used by $.listeners[{address_at[host, port]}]"))
            address_at.setdefault((host, port), i)
        if name:
            if name in listener_at:
                problems.append(Problem(f"{at}.name", f"duplicate listener name {name!r} (first at $.listeners[{listener_at[name]}])"))
            else:
                listener_at[name] = i
        tls = li.tls
        if tls is not None:
            tls = ListenerTLS(cert_file=_resolve(tls.cert_file, base), key_file=_resolve(tls.key_file, base), require=tls.require)
            _check_readable(tls.cert_file, f"{at}.tls.cert_file", "TLS certificate file", problems)
            _check_readable(tls.key_file, f"{at}.tls.key_file", "TLS key file", problems)
        if li.default_target:
            j = target_at.get(li.default_target)
            if j is None:
                problems.append(Problem(f"{at}.default_target", f"no target is named {li.default_target!r}"))
            elif protocol_ok and config.targets[j].protocol != li.protocol:
                problems.append(
                    Problem(
                        f"{at}.default_target",
                        f"target {li.default_target!r} speaks {config.targets[j].protocol}, "
                        f"but this listener speaks {li.protocol} (expected a {li.protocol} target)",
                    )
                )
        client_ca_file = _resolve(li.client_ca_file, base)
        if client_ca_file:
            if tls is None:
                problems.append(Problem(f"{at}.client_ca_file", "client certificates need TLS: add a tls table to this listener"))
            _check_readable(client_ca_file, f"{at}.client_ca_file", "client CA file", problems)
        if li.cert_identity != "none" and not client_ca_file:
            problems.append(
                Problem(f"{at}.cert_identity", f"cert_identity = {li.cert_identity!r} needs client_ca_file (the CA that signs client certificates)")
            )
        listeners.append(msgspec.structs.replace(li, name=name, tls=tls, client_ca_file=client_ca_file))

    identities: list[IdentityConfig] = []
    identity_at: dict[str, int] = {}
    for i, ident in enumerate(config.identities):
        at = f"$.identities[{i}]"
        canonical = canonical_name(ident.name)
        if not ident.name:
            problems.append(Problem(f"{at}.name", "expected a non-empty name"))
        elif (problem := name_problem(ident.name)) is not None:
            problems.append(Problem(f"{at}.name", f"{ident.name!r} cannot name an identity: {problem}"))
        elif canonical in identity_at:
            problems.append(Problem(
                f"{at}.name",
                f"duplicate identity name {ident.name!r} (first at $.identities[{identity_at[canonical]}]; names are "
                "compared without regard to case and compatibility spellings)",
            ))
        else:
            identity_at[canonical] = i
        secret_file = _resolve(ident.secret_file, base)
        if ident.secret is not None and ident.secret_file:
            problems.append(Problem(f"{at}.secret_file", "both secret and secret_file are set (keep one)"))
        elif ident.secret is not None and not ident.secret:
            problems.append(Problem(f"{at}.secret", "expected a non-empty secret (leave the key out for no password login)"))
        elif secret_file:
            _check_readable(secret_file, f"{at}.secret_file", "secret file", problems)
        token_file = _resolve(ident.api_token_file, base)
        if (ident.api_token is not None or ident.api_token_file) and not ident.bot:
            problems.append(Problem(f"{at}.api_token", "only a bot identity (bot = true) has an API token"))
        _check_long_secret(ident.api_token, token_file, f"{at}.api_token", "API token", problems)
        if ident.bot and ident.api_token is None and not ident.api_token_file:
            problems.append(Problem(f"{at}.bot", "a bot needs api_token_file (or api_token) to call the admin API"))
        identities.append(msgspec.structs.replace(ident, secret_file=secret_file, api_token_file=token_file))

    rule_at: dict[str, int] = {}
    for i, rule in enumerate(config.rules):
        for key, message in rule_problems(rule):
            problems.append(Problem(f"$.rules[{i}].{key}", message))
        if not rule.id:
            pass
        elif rule.id in rule_at:
            problems.append(Problem(f"$.rules[{i}].id", f"duplicate rule id {rule.id!r} (first at $.rules[{rule_at[rule.id]}])"))
        else:
            rule_at[rule.id] = i

    mask_at: dict[str, int] = {}
    uses_hash = False
    for i, mask in enumerate(config.masks):
        for key, message in mask_rule_problems(mask):
            problems.append(Problem(f"$.masks[{i}].{key}", message))
        if mask.id in mask_at:
            problems.append(Problem(f"$.masks[{i}].id", f"duplicate mask id {mask.id!r} (first at $.masks[{mask_at[mask.id]}])"))
        elif mask.id:
            mask_at[mask.id] = i
        uses_hash = uses_hash or mask.function == "hash"
    hash_key_file = _resolve(config.masking.hash_key_file, base)
    if config.masking.hash_key and hash_key_file:
        problems.append(Problem("$.masking.hash_key_file", "both hash_key and hash_key_file are set (keep one)"))
    elif hash_key_file:
        _check_readable(hash_key_file, "$.masking.hash_key_file", "hash key file", problems)
    elif uses_hash and not config.masking.hash_key and not config.gateway.policy_files:
        problems.append(Problem("$.masking.hash_key", "a mask rule uses function \"hash\": set hash_key or hash_key_file"))
    if config.masking.catalogue_max_age <= 0:
        problems.append(Problem("$.masking.catalogue_max_age", "expected seconds > 0"))

    audit = _check_audit(config.audit, base, problems)
    for key, value in config.telemetry.headers.items():
        if not _header_ok(key, value):
            problems.append(Problem("$.telemetry.headers", f"header {key!r}: expected a token name and a value without line breaks"))
    if not config.telemetry.endpoint or not config.telemetry.traces:
        for i, t in enumerate(config.targets):
            if t.trace_upstream:
                problems.append(Problem(f"$.targets[{i}].trace_upstream", "needs traces: [telemetry] endpoint, with traces = true"))
    if config.telemetry.endpoint and not re.match(r"https?://[^/\s]+", config.telemetry.endpoint):
        problems.append(Problem("$.telemetry.endpoint", "expected an http:// or https:// URL (the OTLP/HTTP base, e.g. http://collector:4318)"))

    issuers = [_check_issuer(issuer, f"$.oidc[{i}]", base, problems) for i, issuer in enumerate(config.oidc)]
    issuer_at: dict[str, int] = {}
    for i, issuer in enumerate(config.oidc):
        if issuer.issuer in issuer_at:
            problems.append(Problem(f"$.oidc[{i}].issuer", f"duplicate issuer {issuer.issuer!r} (first at $.oidc[{issuer_at[issuer.issuer]}])"))
        elif issuer.issuer:
            issuer_at[issuer.issuer] = i

    throttle = config.login_throttle
    for key, ok, expected in (
        ("failures_before_delay", throttle.failures_before_delay >= 0, "a number of failures >= 0"),
        ("base_delay_seconds", 0 < throttle.base_delay_seconds <= 3600, "seconds > 0 (at most 3600)"),
        ("max_delay_seconds", throttle.base_delay_seconds <= throttle.max_delay_seconds <= 3600,
         "seconds >= base_delay_seconds (at most 3600)"),
        ("window_seconds", throttle.window_seconds > 0, "seconds > 0"),
        ("max_tracked", throttle.max_tracked >= 1, "a number of keys >= 1"),
        ("ipv6_prefix", 0 <= throttle.ipv6_prefix <= 128, "a prefix length from 0 to 128"),
    ):
        if not ok:
            problems.append(Problem(f"$.login_throttle.{key}", f"expected {expected}"))
    for j, network in enumerate(throttle.exempt_addresses):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            problems.append(Problem(f"$.login_throttle.exempt_addresses[{j}]", f"expected an address or network (CIDR), got {network!r}"))

    for i, access in enumerate(config.access):
        for key in ("targets", "environments", "subjects", "groups", "actors", "issuers"):
            if any(not value for value in getattr(access, key)):
                problems.append(Problem(f"$.access[{i}].{key}", "expected non-empty strings (leave the key out to match anything)"))

    admin = config.admin
    admin_tls = admin.tls
    if admin.listen:
        try:
            parse_listen(admin.listen)
        except ValueError as exc:
            problems.append(Problem("$.admin.listen", str(exc)))
    if admin_tls is not None:
        admin_tls = AdminTLS(cert_file=_resolve(admin_tls.cert_file, base), key_file=_resolve(admin_tls.key_file, base))
        _check_readable(admin_tls.cert_file, "$.admin.tls.cert_file", "certificate file", problems)
        _check_readable(admin_tls.key_file, "$.admin.tls.key_file", "key file", problems)
    if admin.public_url and not admin.public_url.startswith(("http://", "https://")):
        problems.append(Problem("$.admin.public_url", f"expected an http:// or https:// URL, got {admin.public_url!r}"))
    for key in ("approvals_read", "approvals_decide"):
        if not getattr(admin.access, key) or any(not g for g in getattr(admin.access, key)):
            problems.append(Problem(f"$.admin.access.{key}", 'expected non-empty group names (["*"]: every authenticated caller)'))
    approvals = config.approvals
    store = approvals.store
    if not store:
        problems.append(Problem("$.approvals.store", "expected a SQLite file path or a postgresql:// DSN"))
    elif not store.startswith(("postgresql://", "postgres://")):
        store = _resolve(store[len("sqlite:///"):] if store.startswith("sqlite:///") else store, base)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$", approvals.table):
        problems.append(Problem("$.approvals.table", f"expected a table name (name or schema.name), got {approvals.table!r}"))
    store_password_file = _resolve(approvals.store_password_file, base)
    if store_password_file:
        _check_readable(store_password_file, "$.approvals.store_password_file", "password file", problems)
    webhooks: list[WebhookConfig] = []
    known_events = ("approval.requested", "approval.decided", "approval.expired", "approval.withdrawn", "approval.executed", "approval.failed")
    for i, hook in enumerate(config.webhooks):
        at = f"$.webhooks[{i}]"
        if not hook.url.startswith(("http://", "https://")):
            # The URL itself is not quoted: a chat incoming webhook's URL is its credential.
            problems.append(Problem(f"{at}.url", "expected an http:// or https:// URL"))
        hook_secret = _resolve(hook.secret_file, base)
        if hook.secret is None and not hook.secret_file:
            problems.append(Problem(f"{at}.secret_file", "a webhook needs a signing secret (secret_file or secret): receivers verify X-Sqlward-Signature"))
        _check_long_secret(hook.secret, hook_secret, f"{at}.secret", "secret", problems)
        for j, name in enumerate(hook.events):
            if name not in known_events:
                problems.append(Problem(f"{at}.events[{j}]", f"unknown event {name!r} (expected one of: {', '.join(known_events)})"))
        ca = _resolve(hook.ca_file, base)
        if ca:
            _check_readable(ca, f"{at}.ca_file", "CA file", problems)
        webhooks.append(msgspec.structs.replace(hook, secret_file=hook_secret, ca_file=ca))

    if problems:
        order = ("$.gateway", "$.listeners", "$.targets", "$.identities", "$.audit", "$.rules", "$.masks", "$.masking", "$.oidc", "$.identity", "$.access", "$.login_throttle", "$.admin", "$.approvals", "$.webhooks", "$.telemetry")
        problems.sort(key=lambda p: next((i for i, s in enumerate(order) if p.path.startswith(s)), len(order)))
        raise ConfigError(file, problems)
    return msgspec.structs.replace(
        config,
        listeners=tuple(listeners),
        targets=tuple(targets),
        identities=tuple(identities),
        oidc=tuple(issuers),
        audit=audit,
        masking=msgspec.structs.replace(config.masking, hash_key_file=hash_key_file),
        admin=msgspec.structs.replace(admin, tls=admin_tls),
        approvals=msgspec.structs.replace(approvals, store=store, store_password_file=store_password_file),
        webhooks=tuple(webhooks),
        source=source,
    )


def audit_sinks(audit: AuditConfig) -> tuple[AuditSinkConfig, ...]:
    """The sinks in force: `[[audit.sinks]]`, or the one file `[audit] file` names."""
    if audit.sinks:
        return audit.sinks
    return (AuditSinkConfig(kind="file", name="file", path=audit.file),)


def _check_audit(audit: AuditConfig, base: str, problems: list[Problem]) -> AuditConfig:
    """Validate `[audit]` and its sinks; returns it with names filled in and paths absolute."""
    if not audit.file:
        problems.append(Problem("$.audit.file", "expected a file path"))
    durability = "sync" if audit.fsync else audit.durability
    sinks: list[AuditSinkConfig] = []
    seen: dict[str, int] = {}
    kinds = [sink.kind for sink in audit.sinks]
    for i, sink in enumerate(audit.sinks):
        at = f"$.audit.sinks[{i}]"
        name = sink.name or (sink.kind if kinds.count(sink.kind) == 1 else f"{sink.kind}-{kinds[:i].count(sink.kind) + 1}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name):
            problems.append(Problem(f"{at}.name", "expected letters, digits, '.', '_' or '-' (it names the spool folder)"))
        if name in seen:
            problems.append(Problem(f"{at}.name", f"duplicate sink name {name!r} (first at $.audit.sinks[{seen[name]}])"))
        seen.setdefault(name, i)
        fields = {
            "file": ("path", "rotate_bytes", "rotate_seconds"),
            "postgres": ("dsn", "password_file", "table", "spool_max_bytes"),
            "stdout": (),
            "otlp": ("endpoint", "headers", "ca_file", "timeout_seconds", "spool_max_bytes"),
        }[sink.kind]
        defaults = AuditSinkConfig(kind=sink.kind)
        for key in ("path", "rotate_bytes", "rotate_seconds", "dsn", "password_file", "table", "endpoint", "headers", "ca_file", "timeout_seconds", "spool_max_bytes"):
            if key not in fields and getattr(sink, key) != getattr(defaults, key):
                problems.append(Problem(f"{at}.{key}", f"not a setting of a {sink.kind} sink"))
        path, password_file, ca_file = _resolve(sink.path, base), _resolve(sink.password_file, base), _resolve(sink.ca_file, base)
        if sink.kind == "file" and not sink.path:
            problems.append(Problem(f"{at}.path", "expected a file path"))
        if sink.kind == "postgres":
            if not sink.dsn.startswith(("postgresql://", "postgres://")):
                problems.append(Problem(f"{at}.dsn", "expected a postgresql:// URI"))
            if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", sink.table):
                problems.append(Problem(f"{at}.table", "expected a lower-case SQL identifier"))
            if password_file:
                _check_readable(password_file, f"{at}.password_file", "password file", problems)
        if sink.kind == "otlp":
            if not re.match(r"https?://[^/\s]+", sink.endpoint):
                problems.append(Problem(f"{at}.endpoint", "expected an http:// or https:// URL (e.g. http://collector:4318/v1/logs)"))
            if ca_file:
                _check_readable(ca_file, f"{at}.ca_file", "CA file", problems)
        sinks.append(msgspec.structs.replace(sink, name=name, path=path, password_file=password_file, ca_file=ca_file))
    paths: dict[str, int] = {}
    for i, sink in enumerate(sinks):
        if sink.kind == "file" and sink.path:
            if sink.path in paths:
                problems.append(Problem(f"$.audit.sinks[{i}].path", f"the same file as $.audit.sinks[{paths[sink.path]}] (each file sink needs its own)"))
            paths.setdefault(sink.path, i)
        for key, value in sink.headers.items():
            if not _header_ok(key, value):
                problems.append(Problem(f"$.audit.sinks[{i}].headers", f"header {key!r}: expected a token name and a value without line breaks"))
    if audit.sinks and not any(sink.required for sink in audit.sinks):
        problems.append(Problem("$.audit.sinks", "expected at least one required sink (required = true)"))
    key_file = _resolve(audit.signing_key_file, base)
    if key_file:
        _check_signing_key(key_file, problems)
    file = _resolve(audit.file, base)
    return msgspec.structs.replace(
        audit, file=file, durability=durability, signing_key_file=key_file, sinks=tuple(sinks),
        spool_dir=_resolve(audit.spool_dir, base) or os.path.join(os.path.dirname(file) or ".", "audit-spool"),
    )


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_ok(name: str, value: str) -> bool:
    """An HTTP header the exporter may send: a token name, a value without control characters."""
    return bool(_HEADER_NAME.fullmatch(name)) and not any(c in value for c in "\r\n\0")


def _check_signing_key(path: str, problems: list[Problem]) -> None:
    """The checkpoint signing key loads: an unencrypted PEM private key, Ed25519 or P-256."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    where = "$.audit.signing_key_file"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        problems.append(Problem(where, f"cannot read signing key file {path}: {exc.strerror or exc}"))
        return
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        problems.append(Problem(where, f"{path}: an encrypted key (the gateway reads it unattended: store it unencrypted, mode 0600)"))
        return
    except (ValueError, UnsupportedAlgorithm):
        problems.append(Problem(where, f"{path}: not a PEM private key (a public key, or another format)"))
        return
    if not isinstance(key, ed25519.Ed25519PrivateKey) and not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        problems.append(Problem(where, f"{path}: expected an Ed25519 or ECDSA P-256 private key"))


def _check_issuer(issuer: IssuerConfig, at: str, base: str, problems: list[Problem]) -> IssuerConfig:
    """Cross-field checks of one [[oidc]] table; returns it with its file paths made absolute."""
    if not issuer.issuer:
        problems.append(Problem(f"{at}.issuer", "expected the issuer's identifier (the exact iss claim of its tokens)"))
    if any(not aud for aud in issuer.audiences):
        problems.append(Problem(f"{at}.audiences", "expected non-empty audience names"))
    for key in ("subject_claim", "groups_claim"):
        if not getattr(issuer, key):
            problems.append(Problem(f"{at}.{key}", "expected a claim name"))
    if not issuer.algorithms:
        problems.append(Problem(f"{at}.algorithms", f"expected at least one algorithm (default: {', '.join(DEFAULT_JWS_ALGORITHMS)})"))
    for j, alg in enumerate(issuer.algorithms):
        where = f"{at}.algorithms[{j}]"
        if alg.lower() == "none":
            problems.append(Problem(where, "unsigned tokens (alg none) are never accepted"))
        elif alg.upper().startswith("HS"):
            problems.append(
                Problem(where, f"{alg} is a shared-secret algorithm; sqlward verifies tokens with the issuer's public keys only "
                        f"(expected one of: {', '.join(JWS_ALGORITHMS)})")
            )
        elif alg not in JWS_ALGORITHMS:
            problems.append(Problem(where, f"unknown algorithm {alg!r} (expected one of: {', '.join(JWS_ALGORITHMS)})"))

    if issuer.jwks_min_refetch_seconds < 1:
        problems.append(Problem(
            f"{at}.jwks_min_refetch_seconds",
            f"expected at least 1 second (got {issuer.jwks_min_refetch_seconds}): the least time between two fetches of "
            "the signing keys for unknown kids, so made-up kids cannot make sqlward hammer the identity provider",
        ))
    jwks_file = _resolve(issuer.jwks_file, base)
    jwks_ca_file = _resolve(issuer.jwks_ca_file, base)
    if issuer.jwks_file and issuer.jwks_url:
        problems.append(Problem(f"{at}.jwks_url", "both jwks_file and jwks_url are set (keep one)"))
    elif not issuer.jwks_file and not issuer.jwks_url:
        problems.append(Problem(at, "expected jwks_file or jwks_url (where the issuer's signing keys come from)"))
    elif jwks_file:
        _check_jwks_file(jwks_file, f"{at}.jwks_file", problems)
    else:
        try:
            url = urlsplit(issuer.jwks_url)
            host = url.hostname
            url.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            problems.append(Problem(f"{at}.jwks_url", f"malformed URL: {exc}"))
        else:
            if url.scheme.lower() != "https":
                problems.append(Problem(f"{at}.jwks_url", "expected an https:// URL (signing keys are never fetched over plain HTTP)"))
            elif not host:
                problems.append(Problem(f"{at}.jwks_url", "expected https://HOST[:PORT]/PATH"))
    if jwks_ca_file:
        if not issuer.jwks_url:
            problems.append(Problem(f"{at}.jwks_ca_file", "jwks_ca_file is only used with jwks_url"))
        _check_readable(jwks_ca_file, f"{at}.jwks_ca_file", "CA file", problems)
    return msgspec.structs.replace(issuer, jwks_file=jwks_file, jwks_ca_file=jwks_ca_file)


def _check_jwks_file(path: str, where: str, problems: list[Problem]) -> None:
    try:
        with open(path, "rb") as f:
            document = json.loads(f.read())
    except OSError as exc:
        problems.append(Problem(where, f"cannot read JWKS file {path}: {exc.strerror or exc}"))
        return
    except ValueError:
        problems.append(Problem(where, f"JWKS file {path} is not JSON (expected {{\"keys\": [...]}})"))
        return
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        problems.append(Problem(where, f"JWKS file {path} is not a JWK set (expected {{\"keys\": [...]}})"))


# --------------------------------------------------------------------------------------------
# Entry point


def reload_plan(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """SIGHUP (gateway/server.py): the configuration in force once `loaded` (the file read
    again, its policy already installed by `Gatekeeper.reload_policy`) is applied to `running`,
    and the keys that changed in the file but need a restart (they stay as started).

    What a running gateway takes: the policy tables (`[[rules]]`, `[environments.*]`,
    `[guardrails.*]`, `[[masks]]`, `[masking]`, `[[access]]`, `[gateway] policy_files`) and
    `[gateway] log_level` / `log_format`."""
    gateway = msgspec.structs.replace(
        running.gateway, policy_files=loaded.gateway.policy_files, log_level=loaded.gateway.log_level,
        log_format=loaded.gateway.log_format,
    )
    in_force = msgspec.structs.replace(
        running, gateway=gateway, rules=loaded.rules, environments=loaded.environments,
        guardrails=loaded.guardrails, masks=loaded.masks, masking=loaded.masking, access=loaded.access,
    )
    restart: list[str] = []
    for name in Config.__struct_fields__:
        if name == "source":
            continue
        mine, theirs = getattr(in_force, name), getattr(loaded, name)
        if name == "gateway":
            restart += [f"gateway.{f}" for f in GatewaySettings.__struct_fields__ if getattr(mine, f) != getattr(theirs, f)]
        elif mine != theirs:
            restart.append(name)
    return in_force, restart


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, expand, convert and check a config file; raise ConfigError naming every problem.

    `env` replaces `os.environ` for ``${VAR}`` expansion (tests)."""
    file = os.fspath(path)
    env = os.environ if env is None else env
    try:
        with open(file, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError.single(file, "", f"cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError.single(file, "", "not a UTF-8 text file (expected a TOML file)") from None
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        m = re.match(r"^(?P<msg>.*) \((?P<where>at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$", text)
        if m and m.group("line"):
            where, msg = f"line {m.group('line')}, column {m.group('col')}", m.group("msg")
        elif m:
            where, msg = "end of document", m.group("msg")
        else:
            where, msg = "", text
        raise ConfigError.single(file, where, f"TOML syntax error: {msg}") from None

    problems: list[Problem] = []
    raw = _expand(raw, env, "$", problems)
    if problems:
        raise ConfigError(file, problems)
    config = _finish(_convert(raw, file), file)
    load_policy(config)  # the policy files, and the names in all policy, must be valid at start-up (ConfigError)
    return config
