"""The gateway's implementation of `adapters.base.Gatekeeper`.

How it works: `Gatekeeper.from_config` does all the work once, at start-up. Everything it keeps
afterwards is immutable except the OIDC key caches inside `gateway.oidc.TokenVerifier` (guarded
there by a trio lock), so adapters can call it from any task without locks of their own.

- Static identities: each configured secret (`secret`, or the content of `secret_file`) is turned
  into a SCRAM-SHA-256 verifier (`scramp`, 4096 iterations, random salt) for the SCRAM exchange the
  adapters run, and into an HMAC-SHA256 digest (keyed with a random per-process key) for
  `authenticate_password`, which compares digests with `hmac.compare_digest`. The cleartext secret
  is dropped right after; an unknown user costs the same HMAC as a known one, and both failures
  give the same message.
- Names: every comparison of names uses their canonical form (`adapters.identity.canonical_name`:
  NFKC, case folded); static identities are keyed by it, so "ALICE" and "ａｌｉｃｅ" find "alice".
  Without `[[oidc]]` nothing but a secret can log in, and a name that is not a static identity
  with a secret gets a decoy verifier (stable per name, derived with the process key) that no
  password matches: it fails exactly as a wrong password does, and a client cannot enumerate
  static identities.
- OIDC tokens (`authenticate_token`): refused on plain TCP unless the adapter says the client is
  on loopback and its listener allows it (the advice names TLS settings only when the listener
  offers TLS, `tls_offered`); otherwise verified by `gateway.oidc.TokenVerifier` against the
  `[[oidc]]` issuers. Then the subject and every actor must be names (`name_problem`: no
  invisible or control characters), the connection's user name must be the subject or the
  outermost actor (canonical form), and neither the subject nor any actor may canonically be a
  static identity (those log in only with their secret or certificate). The token becomes
  `Identity(verified_by="oidc", issuer, actor=<act chain>, is_agent=bool(chain),
  expires_at=exp)`; a `name` claim becomes the display name. `token_leeway` gives the session's
  expiry check the same clock-skew leeway the login had.
- Failed logins (`login_gate`, `login_failed`, `login_succeeded`): `gateway.throttle` per source
  address and canonical user name; a throttled attempt sleeps in its own task or is refused, and
  either is audited (`login.throttled`).
- Client certificates (`identity_for_certificate`): the listener's `cert_identity` mode picks
  the subject commonName or the first URI subjectAltName (a SPIFFE id) of the verified peer
  certificate. When that name is also a static identity, its groups, display name and agent flag
  are used (never its secret).
- Target access (`access_refusal`): `[[access]]` rules in order, first match wins; when there are
  rules and none matches, access is refused; without rules every identity reaches every target.
  Subjects and actors match in the canonical form; `issuers` globs match the identity's issuer,
  so a subject can be pinned to the issuer that may vouch for it.
- Targets: every DSN is parsed (`gateway.config.parse_dsn`) into an `adapters.base.Target` with
  the upstream password taken from `password`, `password_file` or the DSN, in that order (the
  config loader refuses two of them at once). `resolve_target` is then a dictionary lookup.
- Policy: `analyse` and `decide` delegate to `policy.engine.Engine` (rules, environments and
  guardrails from the config and its policy files, `gateway.policy_files`; version 1). An
  exception inside `decide` becomes a deny decision (fail closed). `reload_policy` re-reads the
  policy files and, when they are valid, builds a new Engine with the next version and installs
  it with one attribute assignment: a call already inside the old engine finishes with it. A bad
  file leaves the running engine in place. Either way a `policy.reloaded` audit event is written.
- Audit: the gatekeeper builds the process's `audit.recorder.Recorder` over the configured
  trail (`gateway.audit_trail.open_trail`: chain, signing key, sinks) unless a sink is passed in; sessions get scopes from it, and the
  statement pipeline (`gateway.pipeline`) records every decision through them.
- The statement pipeline (`gateway.pipeline.Pipeline`) is the only caller of `analyse`,
  `decide`, `estimate_rows`, `masks_apply` and `mask_context`: they are the gatekeeper's
  services to it, not part of the adapters' contract.

The how-to for all of this is docs/identity.md.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import scramp
import trio

from sqlward.adapters.identity import canonical_glob, canonical_name, name_problem
from sqlward.adapters.base import AuthError, CertIdentityMode, Dialect, IdentitySettings, MysqlSecret, ScramSecret, Target
from sqlward.audit.events import LoginThrottled, PolicyReloaded
from sqlward.audit.recorder import Recorder, Sink
from sqlward.audit.trail import Trail
from sqlward.gateway.config import AccessRule, Config, ConfigError, Problem, parse_dsn, read_secret_file
from sqlward.gateway.oidc import IssuerSetupError, TokenError, TokenVerifier
from sqlward.gateway.estimator import Estimator
from sqlward.gateway.throttle import LoginThrottle, ThrottleRefused
from sqlward.masking.catalogue import CatalogueCache, load_catalogue
from sqlward.masking.context import MaskContext, RequestMask, plan_request
from sqlward.masking.policy import MaskingPolicy
from sqlward.policy.fingerprint import RAW_PREFIX
from sqlward.gateway.policy_files import PolicyBundle, files_state, load_policy
from sqlward.policy.estimates import statement_texts
from sqlward.policy.rules import EnvironmentPolicy
from sqlward.policy import rule_ids
from sqlward.policy.approval import Approver
from sqlward.policy.model import Analysis, Decision, Identity, TargetInfo
from sqlward.policy.searchpath import Resolution, SearchPath

__all__ = ["Gatekeeper", "SCRAM_ITERATIONS"]

SCRAM_ITERATIONS = 4096
ENGINE_FAILURE_RULE = rule_ids.INTERNAL_ERROR
log = logging.getLogger(__name__)
_SCHEMA_OPS = frozenset({"create", "alter", "drop", "rename", "truncate"})


class _Engine(Protocol):
    version: int
    estimate_timeout: float

    def analyse(self, sql: str, dialect: str) -> Analysis: ...

    def decide(self, analysis: Analysis, identity: Identity, target_info: TargetInfo, **kw: Any) -> Decision: ...


class _StaticUser(msgspec.Struct, frozen=True):
    identity: Identity
    scram: ScramSecret | None = None  # None: no secret configured, no password login
    digest: bytes = b""  # HMAC-SHA256(process key, secret)
    mysql: MysqlSecret | None = None

    def __repr__(self) -> str:
        return f"_StaticUser({self.identity.subject!r})"


class Gatekeeper:
    """Judges credentials, maps database names to targets, decides and records (see module doc)."""

    def __init__(
        self,
        config: Config,
        *,
        engine: _Engine,
        recorder: Recorder,
        users: Mapping[str, _StaticUser],
        targets: Mapping[str, Target],
        hmac_key: bytes,
        owns_writer: bool = False,
        verifier: TokenVerifier | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        self._config = config
        self._estimator = estimator if estimator is not None else Estimator()
        self._masking = MaskingPolicy(())
        self._catalogues = CatalogueCache(self._load_catalogue, max_age=config.masking.catalogue_max_age)
        self._catalogue_pools: dict[str, Any] = {}
        self._plans: dict[tuple[object, ...], RequestMask] = {}
        # Target name -> (the catalogue it was built from, bare table name -> "schema.table"s).
        self._relation_index: dict[str, tuple[object, dict[str, tuple[str, ...]]]] = {}
        self._engine = engine
        self.recorder = recorder
        self._users = dict(users)
        self._targets = dict(targets)
        self._hmac_key = hmac_key
        self._owns_writer = owns_writer
        # The audit trail this gatekeeper opened (None when a sink was passed in).
        self.trail: Trail | None = None
        self._verifier = verifier if verifier is not None else TokenVerifier(())
        self._access: tuple[AccessRule, ...] = config.access
        self._policy_files: tuple[str, ...] = ()
        # The policy files as last read (see `policy_changed`).
        self._policy_state: tuple[tuple[str, int, int], ...] = files_state(config) if config.gateway.policy_files else ()
        self._clock = time.time
        self._identity_settings: IdentitySettings = config.identity.settings()
        self._leeways: dict[str, int] = {i.issuer: i.leeway_seconds for i in config.oidc}
        self._throttle = LoginThrottle(config.login_throttle, clock=_trio_clock)
        self._bots: dict[bytes, Approver] = {}

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: Config,
        audit_sink: Sink | None = None,
        *,
        engine: _Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Gatekeeper:
        """Build everything once. Raises ConfigError when a secret file cannot be read, an OIDC
        CA file cannot be loaded or the audit file cannot be opened (the message names the config
        file and the `$.path`). `clock` is the OIDC verifier's (tests move time with it).
        `audit_sink` replaces the configured audit file (tests, `sqlward policy test`)."""
        file = config.source or "<config>"
        hmac_key = os.urandom(32)
        users: dict[str, _StaticUser] = {}
        mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
        for i, ident in enumerate(config.identities):
            identity = Identity(
                subject=ident.name,
                display_name=ident.display_name,
                groups=ident.groups,
                verified_by="static",
                is_agent=ident.agent,
            )
            secret = ident.secret
            if secret is None and ident.secret_file:
                secret = _read_secret(ident.secret_file, file, f"$.identities[{i}].secret_file", "secret file")
                if not secret:
                    raise ConfigError.single(file, f"$.identities[{i}].secret_file", f"secret file {ident.secret_file} is empty")
            if not secret:
                users[canonical_name(ident.name)] = _StaticUser(identity)
                continue
            salt, stored_key, server_key, iterations = mechanism.make_auth_info(secret, iteration_count=SCRAM_ITERATIONS)
            users[canonical_name(ident.name)] = _StaticUser(
                identity,
                ScramSecret(salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key),
                _digest(hmac_key, secret),
                MysqlSecret(
                    native=hashlib.sha1(hashlib.sha1(secret.encode()).digest()).digest(),
                    sha2=hashlib.sha256(hashlib.sha256(secret.encode()).digest()).digest(),
                ),
            )

        targets: dict[str, Target] = {}
        for i, t in enumerate(config.targets):
            try:
                dsn = parse_dsn(t.dsn, t.protocol, config.base_dir)
            except ValueError as exc:  # load_config checked it already; a hand-built Config may not be
                raise ConfigError.single(file, f"$.targets[{i}].dsn", str(exc)) from None
            if t.password is not None:
                password = t.password
            elif t.password_file:
                password = _read_secret(t.password_file, file, f"$.targets[{i}].password_file", "password file")
            else:
                password = dsn.password
            targets[t.name] = Target(
                info=TargetInfo(name=t.name, protocol=t.protocol, environment=t.environment, database=dsn.database),
                host=dsn.host,
                port=dsn.port,
                user=dsn.user,
                database=dsn.database,
                password=password,
                tls=dsn.tls,
                connect_timeout=dsn.connect_timeout,
                allow_local_infile=t.allow_local_infile,
                redact_text=t.audit_text == "redacted",
                redact_parameters=t.audit_parameters == "redacted",
                trace_upstream=t.trace_upstream,
            )

        policy_files: tuple[str, ...] = ()
        masking = MaskingPolicy(())
        if engine is None:
            bundle = load_policy(config)  # raises ConfigError naming the policy file
            engine = _build_engine(bundle, 1)
            masking = _build_masking(config, bundle)
            policy_files = bundle.files

        try:
            verifier = TokenVerifier(config.oidc, clock=clock)
        except IssuerSetupError as exc:
            raise ConfigError.single(file, f"$.oidc[{exc.index}].jwks_ca_file", str(exc)) from None

        # Bots' API tokens, kept as SHA-256 digests only.
        bots: dict[bytes, Approver] = {}
        for i, ident in enumerate(config.identities):
            if not ident.bot:
                continue
            token = ident.api_token
            if token is None and ident.api_token_file:
                token = _read_secret(ident.api_token_file, file, f"$.identities[{i}].api_token_file", "API token file")
            if not token or len(token) < 16:
                raise ConfigError.single(file, f"$.identities[{i}].api_token_file", "expected an API token of at least 16 characters")
            bots[hashlib.sha256(token.encode()).digest()] = Approver(
                subject=ident.name, groups=ident.groups, kind="bot", verified_by="api-token",
            )

        # Keep the config for the server, minus the identity secrets (only verifiers are kept).
        config = msgspec.structs.replace(
            config, identities=tuple(msgspec.structs.replace(ident, secret=None, api_token=None) for ident in config.identities)
        )
        owns_writer = audit_sink is None
        trail = None
        if audit_sink is None:
            from sqlward.gateway.audit_trail import open_trail

            audit_sink = trail = open_trail(config.audit, gateway=config.gateway.name, file=file)
        gatekeeper = cls(
            config,
            engine=engine,
            recorder=Recorder(config.gateway.name, audit_sink),
            users=users,
            targets=targets,
            hmac_key=hmac_key,
            owns_writer=owns_writer,
            verifier=verifier,
        )
        gatekeeper.trail = trail
        gatekeeper._policy_files = policy_files
        gatekeeper._masking = masking
        gatekeeper._bots = bots
        return gatekeeper

    # -- policy reload ------------------------------------------------------------------------

    @property
    def policy_version(self) -> int:
        return self._engine.version

    @property
    def policy_files(self) -> tuple[str, ...]:
        """The policy files of the running policy, in load order."""
        return self._policy_files

    def policy_changed(self) -> bool:
        """True when a policy file was edited, added or removed since it was last read (a stat
        per file; cheap enough to poll)."""
        if not self._config.gateway.policy_files:
            return False
        return files_state(self._config) != self._policy_state

    async def reload_policy(self, config: Config | None = None) -> str | None:
        """Re-read the policy files and swap in a new engine (version + 1). Returns None on
        success, or the error message (the running policy stays). Writes `policy.reloaded`.

        With `config` (a configuration file read again, SIGHUP), its policy tables replace the
        running ones too: `[[rules]]`, `[environments.*]`, `[guardrails.*]`, `[[masks]]`,
        `[masking]`, `[[access]]` and `[gateway] policy_files` (`RELOADABLE`); the caller
        reports the other tables that changed as needing a restart."""
        base = self._config
        if config is not None:
            base = msgspec.structs.replace(
                base, rules=config.rules, environments=config.environments, guardrails=config.guardrails,
                masks=config.masks, masking=config.masking, access=config.access,
                gateway=msgspec.structs.replace(base.gateway, policy_files=config.gateway.policy_files),
            )
        if base.gateway.policy_files:
            self._policy_state = files_state(base)  # before reading: a later edit reloads again
        version = self.policy_version
        error: str | None = None
        files = self._policy_files
        try:
            bundle = load_policy(base)
            engine = _build_engine(bundle, version + 1)
            masking = _build_masking(base, bundle)
        except ConfigError as exc:
            error = str(exc)
        except Exception as exc:  # never let a reload take the gateway down
            error = f"policy reload failed: {type(exc).__name__}: {exc}"
        else:
            self._engine, self._masking = engine, masking  # the atomic swap
            self._config, self._access = base, base.access
            self._plans.clear()
            self._policy_files = files = bundle.files
            version += 1
        # The reload itself stands whether or not its record can be written (logged if lost).
        scope = self.recorder.gateway_scope
        scope.add(PolicyReloaded(version=version, files=files, error=error))
        await scope.flush_quietly()
        return error

    async def reload_policy_failed(self, error: str) -> None:
        """A reload that could not even read its configuration: recorded like a refused policy
        (`policy.reloaded` with the error; the running policy stays)."""
        scope = self.recorder.gateway_scope
        scope.add(PolicyReloaded(version=self.policy_version, files=self._policy_files, error=error))
        await scope.flush_quietly()

    def close(self) -> None:
        """Close the audit sink if this gatekeeper opened it."""
        if self._owns_writer:
            self.recorder.close()

    # -- Gatekeeper protocol ------------------------------------------------------------------

    @property
    def gateway_name(self) -> str:
        return self._config.gateway.name

    @property
    def config(self) -> Config:
        """The configuration this was built from, with `identities[*].secret` removed."""
        return self._config

    def _user(self, username: str) -> _StaticUser | None:
        """The static identity `username` names in the canonical form of names; none for a name
        with a `name_problem` (invisible or control characters, edge spaces), which names no one:
        `al<U+200B>ice` is not alice, it is refused like any unknown name."""
        if name_problem(username) is not None:
            return None
        return self._users.get(canonical_name(username))

    def scram_secret(self, username: str) -> ScramSecret | None:
        user = self._user(username)
        if user is not None and user.scram is not None:
            return user.scram
        if self._verifier.issuers:
            return None  # the client presents a token (a static identity without a secret is refused there)
        # No token login: a name that cannot log in gets a SCRAM exchange that fails exactly as a
        # wrong password does, with a salt that is the same on every attempt (no enumeration).
        return self._decoy(username).scram

    def identity_for_scram(self, username: str) -> Identity:
        user = self._user(username)
        if user is None or user.scram is None:
            raise AuthError(f'password authentication failed for user "{username}"')
        return user.identity

    def mysql_secret(self, username: str) -> MysqlSecret | None:
        user = self._user(username)
        if user is not None and user.mysql is not None:
            return user.mysql
        if self._verifier.issuers:
            return None
        return self._decoy(username).mysql

    def _decoy(self, username: str) -> _StaticUser:
        """Verifiers no password matches, derived from the name with the process key (stable per
        name, so repeated probes see the same SCRAM salt as for a real identity)."""
        seed = hmac.new(self._hmac_key, b"decoy\0" + canonical_name(username).encode(), hashlib.sha256).digest()
        part = lambda label: hmac.new(seed, label, hashlib.sha256).digest()  # noqa: E731
        return _StaticUser(
            Identity(subject=username),
            ScramSecret(salt=part(b"salt"), iterations=SCRAM_ITERATIONS, stored_key=part(b"stored"), server_key=part(b"server")),
            part(b"digest"),
            MysqlSecret(native=part(b"native")[:20], sha2=part(b"sha2")),
        )

    def static_identity(self, username: str) -> Identity:
        user = self._user(username)
        if user is None or user.scram is None:
            raise AuthError(f'password authentication failed for user "{username}"')
        return user.identity

    def authenticate_password(self, username: str, password: str, *, tls: bool) -> Identity:
        """Judge a static identity's secret sent in clear (PostgreSQL cleartext password, MySQL
        mysql_clear_password). OIDC tokens go through `authenticate_token`."""
        user = self._user(username)
        digest = _digest(self._hmac_key, password)  # computed for unknown users too (timing)
        if user is not None and user.digest and hmac.compare_digest(digest, user.digest):
            return user.identity
        raise AuthError(f'password authentication failed for user "{username}"')

    def is_static(self, username: str) -> bool:
        """True when `username` names a configured static identity (with or without a secret),
        in the canonical form of names."""
        return self._user(username) is not None

    async def login_gate(self, client_host: str, username: str) -> None:
        """Before a client's credentials are judged: wait this attempt's turn under the login
        throttle (`gateway.throttle`; only this connection's task sleeps), or refuse it with
        AuthError "too many failed logins ... try again in N s". Either is audited
        (`login.throttled`, on the gateway's scope)."""
        try:
            admission = self._throttle.admit(client_host, username)
        except ThrottleRefused as exc:
            await self._record_throttle(LoginThrottled(
                client_addr=client_host, user=_shown_user(username), scope=exc.scope, failures=exc.failures,
                refused=True, retry_after=round(exc.retry_after, 3),
            ))
            raise AuthError(str(exc)) from None
        if admission.wait <= 0:
            return
        await self._record_throttle(LoginThrottled(
            client_addr=client_host, user=_shown_user(username), scope=admission.scope or "address",
            failures=admission.failures, delay_seconds=round(admission.wait, 3),
        ))
        await trio.sleep(admission.wait)

    async def _record_throttle(self, event: LoginThrottled) -> None:
        scope = self.recorder.gateway_scope
        scope.add(event)
        await scope.flush_quietly()

    def login_failed(self, client_host: str, username: str) -> None:
        """Count a failed login (a wrong secret, an unknown name, a refused token or
        certificate) against the address and the canonical user name."""
        self._throttle.failed(client_host, username)

    def login_succeeded(self, client_host: str, username: str) -> None:
        """Clear the user name's failures (the address's count stays until its window ends:
        see `gateway.throttle`)."""
        self._throttle.succeeded(client_host, username)

    async def authenticate_token(
        self, username: str, token: str, *, tls: bool, loopback: bool, tls_offered: bool = True,
    ) -> Identity:
        failed = f'password authentication failed for user "{username}"'
        if not (tls or loopback):
            if tls_offered:
                raise AuthError(
                    "tokens are accepted only over TLS: connect with TLS (sslmode=require; for MySQL clients --ssl)"
                )
            raise AuthError(
                "tokens are accepted only over TLS, and this listener has no TLS: "
                "connect to a listener with TLS to log in with a token"
            )
        if not self._verifier.issuers:
            # The same refusal as a wrong secret: a client cannot tell static names apart.
            raise AuthError(failed)
        if name_problem(username) is not None:
            raise AuthError(failed)
        try:
            verified = await self._verifier.verify(token)
        except TokenError as exc:
            raise AuthError(f"token refused: {exc}") from None
        names = (verified.subject, *verified.actor)
        for n in names:
            problem = name_problem(n)
            if problem is not None:
                raise AuthError(f"token refused: its subject or an actor cannot name an identity ({problem})")
        wanted = canonical_name(username)
        if wanted not in (canonical_name(n) for n in names[: 2 if verified.actor else 1]):
            via = f" (or its actor {verified.actor[0]})" if verified.actor else ""
            raise AuthError(
                f'token refused: it is for "{verified.subject}"{via}, but the connection\'s user name is "{username}"'
            )
        if any(canonical_name(n) in self._users for n in names):
            # A static identity logs in only with its secret (or its certificate), whatever
            # spelling a token gives its name, as subject or as actor.
            raise AuthError("token refused: its subject or an actor is a name reserved for a static identity")
        name = verified.claims.get("name")
        return Identity(
            subject=verified.subject,
            display_name=name if isinstance(name, str) else "",
            groups=verified.groups,
            verified_by="oidc",
            issuer=verified.issuer,
            actor=verified.actor,
            is_agent=bool(verified.actor),
            expires_at=verified.expires_at,
        )

    async def approver_for_bearer(self, token: str) -> Approver:
        """Who calls the admin API with this bearer token: a bot by its API token, or a person by
        an access token verified exactly as client tokens are (the [[oidc]] issuers). AuthError
        with a message safe to show when refused."""
        if not token:
            raise AuthError("missing bearer token")
        bot = self._bots.get(hashlib.sha256(token.encode()).digest())
        if bot is not None:
            return bot
        if not self._verifier.issuers:
            raise AuthError("token refused: not a bot API token, and no OIDC issuer is configured")
        try:
            verified = await self._verifier.verify(token)
        except TokenError as exc:
            raise AuthError(f"token refused: {exc}") from None
        for n in (verified.subject, *verified.actor):
            problem = name_problem(n)
            if problem is not None:
                raise AuthError(f"token refused: its subject or an actor cannot name an identity ({problem})")
        if any(canonical_name(n) in self._users for n in (verified.subject, *verified.actor)):
            raise AuthError("token refused: its subject or an actor is a name reserved for a static identity")
        return Approver(
            subject=verified.subject, groups=verified.groups, kind="person", actor=verified.actor,
            issuer=verified.issuer, verified_by="oidc",
        )

    def token_leeway(self, identity: Identity) -> float:
        """Seconds of clock skew a token of this identity's issuer was granted at login (its
        `[[oidc]] leeway_seconds`); 0 for identities without a configured issuer. The session's
        expiry (the pipeline's check, the close deadline) uses the same figure, so a token that
        was good enough to log in is good enough for its first statement."""
        if identity.verified_by != "oidc" or not identity.issuer:
            return 0.0
        return float(self._leeways.get(identity.issuer, 0))

    def identity_for_certificate(self, cert: Mapping[str, Any], mode: CertIdentityMode) -> Identity | None:
        """The identity a verified client certificate (`ssl.SSLSocket.getpeercert()`, a dict)
        names under the listener's `cert_identity` mode, or None (mode "none", no certificate, no
        such name). Only call it for certificates the TLS layer verified against the listener's
        `client_ca_file`: this function judges names, not signatures."""
        if mode == "none" or not cert:
            return None
        if mode == "subject-cn":
            names = [v for k, v in _rdns(cert.get("subject", ())) if k == "commonName"]
            if len(set(names)) != 1:  # none, or ambiguous
                return None
            subject = names[0]
        elif mode == "san-uri":
            uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
            if not uris:
                return None
            subject = uris[0]
        else:
            raise ValueError(f"unknown cert_identity mode {mode!r}")
        if not subject or name_problem(subject) is not None:  # invisible or control characters name no one
            return None
        issuer_cns = [v for k, v in _rdns(cert.get("issuer", ())) if k == "commonName"]
        static = self._user(subject)
        return Identity(
            subject=subject,
            display_name=static.identity.display_name if static else "",
            groups=static.identity.groups if static else (),
            verified_by="certificate",
            issuer=issuer_cns[0] if issuer_cns else "",
            is_agent=static.identity.is_agent if static else False,
        )

    def access_refusal(self, identity: Identity, target: TargetInfo) -> str | None:
        if not self._access:
            return None
        who = identity.subject
        if identity.actor:
            who += f" (via {' via '.join(identity.actor)})"
        for n, rule in enumerate(self._access, start=1):
            if _access_matches(rule, identity, target):
                if rule.action == "allow":
                    return None
                return f"identity {who} may not reach target {target.name} (rule {n} of [[access]])"
        return f"identity {who} may not reach target {target.name} (no [[access]] rule allows it)"

    def identity_settings(self) -> IdentitySettings:
        return self._identity_settings

    def resolve_target(self, name: str, protocol: Dialect) -> Target | None:
        target = self._targets.get(name)
        if target is None or target.info.protocol != protocol:
            return None
        return target

    def mysql_targets(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._config.targets if t.protocol == "mysql")

    def analyse(self, sql: str, dialect: str) -> Analysis:
        return self._engine.analyse(sql, dialect)

    def decide(
        self,
        analysis: Analysis,
        identity: Identity,
        target: TargetInfo,
        *,
        schema: str = "",
        sql: str | None = None,
        estimates: Mapping[int, int | None] | None = None,
        resolution: Resolution | None = None,
    ) -> Decision:
        try:
            extra: dict[str, Any] = {}
            if schema:
                extra["schema"] = schema
            if resolution:
                extra["resolution"] = resolution
            if sql is not None:
                extra["sql"] = sql
            if estimates is not None:
                extra["estimates"] = estimates
            decision = self._engine.decide(analysis, identity, target, **extra)
            if decision.action == "allow" and _SCHEMA_OPS.intersection(analysis.operations):
                # Whoever changes the schema (exempt identities too), masked sessions must see the
                # new columns and name resolution the new tables: the catalogue is read again
                # before it is next needed.
                self._catalogues.invalidate(target.name)
            return decision
        except Exception as exc:  # fail closed
            return Decision(
                action="deny",
                rule_id=ENGINE_FAILURE_RULE,
                message=f"the gateway could not evaluate its policy ({type(exc).__name__}); statement refused",
            )

    async def estimate_rows(
        self, target: Target, sql: str, analysis: Analysis, indices: Sequence[int], *, schema: str = "",
        search_paths: Sequence[SearchPath] = (),
    ) -> dict[int, int | None]:
        """Rows each pending statement would change (None: no estimate), by EXPLAIN on a side
        connection (`gateway.estimator`), within the policy's estimate timeout. PostgreSQL:
        `search_paths[i]` is statement i's path; EXPLAIN runs under each candidate list and the
        largest figure counts (an unknown path gives no estimate)."""
        timeout = self._engine.estimate_timeout
        texts = statement_texts(sql, analysis.dialect, len(analysis.statements))
        out: dict[int, int | None] = {}
        for i in indices:
            if texts is None or i >= len(texts):
                out[i] = None
                continue
            try:
                if i < len(search_paths):
                    out[i] = await self._estimate_under_paths(target, texts[i], search_paths[i], timeout)
                else:
                    out[i] = await self._estimator.rows(target, texts[i], analysis.dialect, schema=schema, timeout=timeout)
            except Exception as exc:  # no estimate: the policy fails closed on None
                # The server's message may quote the statement's values ('invalid input syntax
                # for type integer: "4111..."'): only its kind and SQLSTATE are logged.
                code = getattr(exc, "sqlstate", "") or getattr(exc, "errno", "") or ""
                log.warning("row estimate failed for target %s: %s%s", target.info.name, type(exc).__name__,
                            f" (SQLSTATE {code})" if code else "")
                out[i] = None
        return out

    async def _estimate_under_paths(self, target: Target, text: str, sp: SearchPath, timeout: float) -> int | None:
        if sp.unknown:
            return None
        best: int | None = None
        for path in sp.paths:
            rows = await self._estimator.rows(target, text, "postgres", search_path=path, timeout=timeout)
            if rows is None:
                return None
            best = rows if best is None else max(best, rows)
        return best

    async def relations(self, target: Target) -> Callable[[str], Sequence[str]] | None:
        """Where each table name lives on a PostgreSQL target (`policy.searchpath.resolve`):
        a lookup from a bare name to the "schema.table" entries holding it, from the schema
        catalogue (cached as for masking); None when the catalogue cannot be read (resolution
        then falls back to every schema of the path)."""
        try:
            catalogue = await self._catalogues.get(target)
        except Exception as exc:
            log.warning("catalogue of %s unavailable for name resolution: %s", target.info.name, exc)
            return None
        index = self._relation_index.get(target.info.name)
        if index is None or index[0] is not catalogue:
            by_name: dict[str, list[str]] = {}
            for full in catalogue.tables:
                by_name.setdefault(full.rsplit(".", 1)[-1], []).append(full)
            index = (catalogue, {k: tuple(v) for k, v in by_name.items()})
            self._relation_index[target.info.name] = index
        names = index[1]
        return lambda name: names.get(name, ())

    async def server_resolution(
        self, target: Target, items: Sequence[tuple[str, tuple[str, ...]]],
    ) -> dict[tuple[str, tuple[str, ...]], str | None]:
        """The schema each (table name, search list) resolves to on the server now ("" when no
        schema holds it; None when the server could not be asked), by `to_regclass` on a side
        connection given that list: what a stale catalogue cannot tell."""
        from sqlward.gateway.estimator import path_setting

        out: dict[tuple[str, tuple[str, ...]], str | None] = {}
        for name, path in items:
            ident = '"' + name.replace('"', '""') + '"'
            literal = "'" + ident.replace("'", "''") + "'"
            sql = (
                "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                f"ON n.oid = c.relnamespace WHERE c.oid = pg_catalog.to_regclass({literal})"
            )
            try:
                pool = self._catalogue_pool("postgres")
                results = await pool.run(target, [path_setting(path), sql], timeout=5.0)
                rows = results[-1].rows if results else ()
                out[(name, path)] = (rows[0][0] or "") if rows else ""
            except Exception as exc:  # fail closed: the caller widens the candidates
                log.warning("name resolution on %s failed: %s", target.info.name, exc)
                out[(name, path)] = None
        return out

    async def aclose(self) -> None:
        """Close the side connections (estimates, catalogue)."""
        await self._estimator.aclose()
        for pool in self._catalogue_pools.values():
            await pool.aclose()
        self._catalogue_pools.clear()

    # -- masking ------------------------------------------------------------------------------

    def masks_apply(self, identity: Identity, target: TargetInfo) -> bool:
        """Whether any masking rule applies to `identity` on `target` (cheap, cached)."""
        return self._masking.for_identity(identity.subject, identity.groups, target.name, target.environment) is not None

    def _catalogue_pool(self, protocol: str) -> Any:
        pool = self._catalogue_pools.get(protocol)
        if pool is None:
            if protocol == "postgres":
                from sqlward.adapters.postgres.sidequery import SidePool as PgPool

                pool = PgPool(size=1)
            else:
                from sqlward.adapters.mysql.sidequery import SidePool as MyPool

                pool = MyPool(size=1)
            self._catalogue_pools[protocol] = pool
        return pool

    async def _load_catalogue(self, target: Target) -> Any:
        protocol = target.info.protocol
        pool = self._catalogue_pool(protocol)
        kwargs = {"pg_pool": pool} if protocol == "postgres" else {"mysql_pool": pool}
        return await load_catalogue(target, timeout=30.0, **kwargs)

    async def mask_context(
        self, target: Target, sql: str, analysis: Analysis, identity: Identity, *, schema: str = "",
        search_path: tuple[str, ...] | None = None,
    ) -> MaskContext | None:
        """How to mask the results of an allowed request (None: no masking rule applies to this
        identity on this target). Reads the target's schema catalogue (cached; read again after
        DDL and every `catalogue_max_age` seconds); raises when it cannot be read, and the
        adapter then refuses (fail closed)."""
        masking = self._masking
        masks = masking.for_identity(identity.subject, identity.groups, target.info.name, target.info.environment)
        if masks is None:
            return None
        catalogue = await self._catalogues.get(target)
        key = (
            analysis.dialect, analysis.fingerprint, schema.lower(), masks.key, target.info.name,
            catalogue.version, self.policy_version, search_path,
        )
        request = self._plans.get(key)
        if request is None:
            # PostgreSQL: unqualified names resolve through the session's path, not the side
            # connection's.
            seen = catalogue if search_path is None else msgspec.structs.replace(catalogue, search_path=search_path)
            request = plan_request(sql, analysis, seen, masks, schema.lower(), masking.settings)
            if len(self._plans) >= 10_000:
                self._plans.clear()
            # A plan judged from a string literal (a routine body, a prepared text) holds for
            # that text only: the shape's other texts may say something else.
            if request.cacheable and not analysis.fingerprint.startswith(RAW_PREFIX):
                self._plans[key] = request
        if request.schema_change:
            self._catalogues.invalidate(target.info.name)  # read again before the next statement
        by_oid, by_name = masks.wire_specs(catalogue)
        return MaskContext(
            request=request,
            by_oid=by_oid,
            by_name=by_name,
            classifiers=masks.classifiers,
            classifier_spec=next(iter(masks.classifier_specs.values()), None),
            hash_key=masking.hash_key,
        )

    def __repr__(self) -> str:
        return f"Gatekeeper({self.gateway_name!r}, {len(self._users)} identities, {len(self._targets)} targets)"


def _build_engine(bundle: PolicyBundle, version: int) -> _Engine:
    from sqlward.policy.engine import Engine

    # An environment without an [environments.<name>] table allows what no rule refuses.
    return Engine(
        rules=bundle.rules, environments=bundle.environments, version=version,
        unknown_environment=EnvironmentPolicy(), guardrails=bundle.guardrails,
    )


def _build_masking(config: Config, bundle: PolicyBundle) -> MaskingPolicy:
    settings = config.masking
    key = settings.hash_key
    if settings.hash_key_file:
        key = _read_secret(settings.hash_key_file, config.source or "<config>", "$.masking.hash_key_file", "hash key file")
    if any(m.function == "hash" for m in bundle.masks) and not key:
        raise ConfigError.single(config.source or "<config>", "$.masking.hash_key", 'a mask rule uses function "hash": set hash_key or hash_key_file')
    return MaskingPolicy(bundle.masks, settings, key.encode("utf-8"))


def _access_matches(rule: AccessRule, identity: Identity, target: TargetInfo) -> bool:
    """Subjects and actors are matched in the canonical form of names (the globs too); issuers
    exactly (an issuer is a URL or a CA name, not a person's name)."""
    if rule.targets and not any(fnmatch.fnmatchcase(target.name, g) for g in rule.targets):
        return False
    if rule.environments and target.environment not in rule.environments:
        return False
    if rule.subjects:
        subject = canonical_name(identity.subject)
        if not any(fnmatch.fnmatchcase(subject, canonical_glob(g)) for g in rule.subjects):
            return False
    if rule.groups and not set(rule.groups) & set(identity.groups):
        return False
    if rule.actors:
        actors = [canonical_name(a) for a in identity.actor]
        if not any(fnmatch.fnmatchcase(a, canonical_glob(g)) for a in actors for g in rule.actors):
            return False
    if rule.issuers and not (identity.issuer and any(fnmatch.fnmatchcase(identity.issuer, g) for g in rule.issuers)):
        return False
    return True


def _trio_clock() -> float:
    """The throttle's clock: trio's (what `trio.sleep` waits by), time.monotonic outside a run."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


def _shown_user(username: str) -> str:
    """A client-chosen user name as recorded: bounded, so a huge name cannot bloat the audit."""
    return username if len(username) <= 256 else username[:253] + "..."


def _rdns(name: Any) -> list[tuple[str, str]]:
    """getpeercert()'s subject / issuer (a tuple of RDNs, each a tuple of (key, value)) flattened."""
    out: list[tuple[str, str]] = []
    for rdn in name or ():
        for pair in rdn:
            if isinstance(pair, tuple) and len(pair) == 2:
                out.append((str(pair[0]), str(pair[1])))
    return out


def _digest(key: bytes, secret: str) -> bytes:
    return hmac.new(key, secret.encode("utf-8"), hashlib.sha256).digest()


def _read_secret(path: str, file: str, where: str, what: str) -> str:
    try:
        return read_secret_file(path)
    except OSError as exc:
        raise ConfigError(file, [Problem(where, f"cannot read {what} {path}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(file, [Problem(where, f"{what} {path} is not UTF-8 text")]) from None
