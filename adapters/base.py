"""The contract between protocol adapters and the rest of sqlward.

Adapters never import `gateway`. They are handed a `Gatekeeper` (structural typing) that knows
the identities, the targets, the policy and the audit trail, and they call it at fixed points:

1. `authenticate_*` once the client has sent its credentials (the adapter runs the wire
   exchange; the gatekeeper only judges),
2. `resolve_target` to map the database name the client asked for to a configured target,
3. `analyse` + `decide` for every request text before anything reaches the upstream,
4. `record` for every audit event, *before* the client sees the effect; it raises
   `AuditUnavailable` when the event cannot be written, and the adapter then refuses.

Everything the gatekeeper returns is an immutable value; all per-connection state lives in the
adapter's session object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

from sqlward.policy.model import Analysis, Decision, Identity, TargetInfo

if TYPE_CHECKING:
    from sqlward.masking.context import MaskContext


class AuthError(Exception):
    """Credentials were refused. The message is safe to show to the client."""


class AuditUnavailable(Exception):
    """An audit record could not be written; fail closed."""


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

    on_token_expiry: str = "refuse"  # refuse | close
    upstream_application_name: bool = True  # PostgreSQL application_name = "sqlward:<who>"
    upstream_setting: bool = True  # PostgreSQL SET sqlward.identity / MySQL @sqlward_identity
    sql_comment: bool = False  # sqlcommenter-style /* sqlward_identity='...' */ on statements


class UpstreamTLS(msgspec.Struct, frozen=True):
    """TLS settings towards an upstream server (libpq `sslmode` semantics)."""

    mode: str = "prefer"  # disable | allow | prefer | require | verify-ca | verify-full
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

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"Target({self.info.name!r}, {self.host}:{self.port}/{self.database}, user={self.user!r})"

    __str__ = __repr__


class Gatekeeper(Protocol):
    """What an adapter may ask of the gateway. Implemented in `gateway.gatekeeper`."""

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
        """Judge a cleartext password (a static secret now, an OIDC token later); AuthError."""

    async def authenticate_token(self, username: str, token: str, *, tls: bool, loopback: bool) -> Identity:
        """Verify an OIDC / JWT access token presented as the password (AuthError with a clear
        message when refused). `tls` and `loopback` say how the client is connected; tokens on
        plain TCP are refused unless the listener allows it for loopback clients."""

    def identity_for_certificate(self, cert: dict, mode: str) -> Identity | None:  # type: ignore[type-arg]
        """The identity of a verified client certificate (mutual TLS), or None when it maps to none."""

    def access_refusal(self, identity: Identity, target: TargetInfo) -> str | None:
        """None when `identity` may reach `target`; otherwise the reason, for the client."""

    def identity_settings(self) -> "IdentitySettings":
        """How identities are shown upstream and what happens when a token expires."""

    def resolve_target(self, name: str, protocol: str) -> Target | None:
        """The configured target a client asked for by name, or None."""

    def analyse(self, sql: str, dialect: str) -> Analysis:
        """Literal-free facts about a request text (cached per fingerprint)."""

    def decide(
        self,
        analysis: Analysis,
        identity: Identity,
        target: TargetInfo,
        *,
        schema: str = "",
        sql: str | None = None,
        estimates: "Mapping[int, int | None] | None" = None,
    ) -> Decision:
        """The policy's decision (cached per fingerprint, identity, target, schema, policy
        version); `schema` qualifies unqualified table names (MySQL's current database); `sql`
        lets literal-dependent facts be judged on the text; `estimates` answers a `pending`
        decision (see `estimate_rows`)."""

    async def estimate_rows(
        self, target: Target, sql: str, analysis: Analysis, indices: Sequence[int], *, schema: str = ""
    ) -> dict[int, int | None]:
        """Rows each listed statement of `sql` would change, by EXPLAIN on a side connection of
        the gateway's (None for a statement without an estimate: error or timeout)."""

    @property
    def policy_version(self) -> int:
        """Changes whenever the policy is reloaded; prepared statements are decided again then."""

    def masks_apply(self, identity: Identity, target: TargetInfo) -> bool:
        """Whether any masking rule applies to `identity` on `target` (cheap)."""

    async def mask_context(
        self, target: Target, sql: str, analysis: Analysis, identity: Identity, *, schema: str = ""
    ) -> "MaskContext | None":
        """How to mask the results of an allowed request; None when no masking rule applies.
        Raises when the target's schema catalogue cannot be read (the adapter refuses)."""

    def record(self, event: msgspec.Struct) -> None:
        """Write an audit event durably before returning; raise AuditUnavailable on failure."""
