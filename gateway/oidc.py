"""OIDC / JWT access-token verification: who is behind a token presented as a password.

Library: `joserfc` (1.x), the JOSE implementation by Authlib's author that Authlib 1.9 depends on
and points to. Authlib's own `authlib.jose` emits an `AuthlibDeprecationWarning` on import
("authlib.jose module is deprecated, please use joserfc instead"), so it is not used. joserfc
does the key import (`JWKRegistry.import_key`) and the signature check (`jws.deserialize_compact`
with a registry limited to the one algorithm being verified); everything else here is plain code
so each refusal gets its own clear, client-safe `TokenError` message.

How `TokenVerifier.verify(token)` works, in order (the first failure raises `TokenError`):

1. Shape. A compact JWS: three base64url parts (five parts is an encrypted JWE: refused; anything
   else, such as an opaque token, is "not a JWT"); header and payload must be JSON objects; at
   most `MAX_TOKEN_LENGTH` characters.
2. Algorithm, from the header. `none` and every `HS*` (shared-secret) algorithm are refused
   outright whatever the configuration says: keys come from a public JWKS, and a JWKS key used as
   an HMAC secret is the classic key-confusion forgery.
3. Issuer. The payload's `iss` is read *unverified*, only to choose which configured issuer's
   keys and settings to use; it must equal a configured `issuer` exactly. Then the header's `alg`
   must be in that issuer's allow-list (default RS256, ES256, EdDSA). The header's `typ`, when
   present, must name an access token (RFC 9068 `at+jwt` / `application/at+jwt`, or `JWT`, any
   case); the issuer's `require_typ = "at+jwt"` makes `at+jwt` mandatory.
4. Key. Keys named or carried by the token itself (`jku`, `x5u`, `jwk`, `x5c`) are ignored;
   only the issuer's configured JWKS is trusted. The issuer's JWKS (file or HTTPS URL, see below) is searched for the header's `kid` (or,
   without a `kid`, every key that fits the algorithm is tried). An unknown `kid` triggers one
   refetch of the JWKS, at most every `jwks_min_refetch_seconds` (at least `MIN_REFETCH_FLOOR`,
   1 s) per issuer, so key rotation works without letting a flood of made-up kids hammer the
   identity provider. A refetch that fails keeps the keys that are still fresh.
5. Signature, checked by joserfc with the chosen key and only the header's algorithm.
6. Claims, only after the signature is good: `aud` (a string or a list) must name one of the
   issuer's `audiences`; `exp` is required and must be in the future; `nbf` and `iat` must not be
   in the future; all three with `leeway_seconds` of clock skew. Then the subject
   (`subject_claim`, a non-empty string), groups (`groups_claim`: a list of strings or one
   space-separated string; absent = none) and the delegation chain from RFC 8693 `act` (nested
   `act` objects, outermost = the party presenting the token, first).

Claim names are looked up as given (`https://example.com/groups` works); when absent and the name
contains dots, it is also followed as a path (`realm_access.roles`).

JWKS sources. `jwks_file`: read (in a worker thread) on first use, again after
`jwks_refresh_seconds`, and on an unknown `kid` (rate-limited as above). `jwks_url`: fetched
with urllib in a worker thread (`trio.to_thread.run_sync`), HTTPS only (redirects to plain HTTP
are refused), verified against `jwks_ca_file` or the system store, at most `MAX_JWKS_BYTES`, with
a `JWKS_FETCH_TIMEOUT` timeout; cached for `jwks_refresh_seconds`. A fetch that fails refuses the
token with a message saying why ("cannot fetch the signing keys of issuer ...") and is not retried
for `jwks_min_refetch_seconds`; a failed or stale fetch never falls back to accepting a token,
and keys whose cache time is over are not used after a failed refresh (keys still within it
stay in use after a failed refetch for an unknown kid). Keys marked `use: enc`,
symmetric (`kty: oct`) keys and keys joserfc cannot import are skipped.

State: each issuer's key cache is the only mutable state. No lock is held across a fetch: the
task that starts one publishes a `trio.Event`, tasks that need new keys meanwhile wait for it
and use what it fetched (single flight), and tasks whose cached keys are fresh go on at once. `clock` (default
`time.time`) drives both the claim checks and the cache timing, so tests can move time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import inspect
import json
import math
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import trio
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import JWKRegistry, Key

from sqlward.gateway.config import JWS_ALGORITHMS, IssuerConfig

__all__ = [
    "IssuerConfig",
    "IssuerSetupError",
    "JWKS_FETCH_TIMEOUT",
    "MAX_JWKS_BYTES",
    "MAX_TOKEN_LENGTH",
    "TokenError",
    "TokenVerifier",
    "VerifiedToken",
]

MAX_TOKEN_LENGTH = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024
JWKS_FETCH_TIMEOUT = 10.0
MAX_ACTOR_DEPTH = 8
# The shortest interval between two JWKS fetches for unknown kids (a config below it is an error).
MIN_REFETCH_FLOOR = 1.0
# RFC 9068 access tokens are typed at+jwt; many identity providers still type them JWT.
ACCESS_TOKEN_TYPES = ("at+jwt", "jwt")
_SHOWN = 80  # longest attacker-supplied value quoted back in a message


class IssuerSetupError(ValueError):
    """An issuer cannot be set up (its `jwks_ca_file` does not load); `index` is its position in
    the list given to `TokenVerifier`."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class TokenError(Exception):
    """A token was refused. The message is safe to show to the client (it never contains the
    token, and quotes token values only shortened)."""


class VerifiedToken(msgspec.Struct, frozen=True):
    """What a good token says. `actor` is the RFC 8693 delegation chain, outermost first:
    ("runbook-7",) when runbook-7 presents a token for `subject`."""

    subject: str
    groups: tuple[str, ...]
    actor: tuple[str, ...]
    issuer: str
    audience: str  # the configured audience the token matched
    expires_at: float
    claims: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Verifier


class TokenVerifier:
    """Verifies JWT access tokens of the configured issuers (see the module docstring)."""

    def __init__(self, issuers: Iterable[IssuerConfig], *, clock: Callable[[], float] = time.time) -> None:
        """Raises IssuerSetupError when an issuer's `jwks_ca_file` cannot be loaded."""
        self._clock = clock
        self._issuers: dict[str, _Issuer] = {}
        for index, config in enumerate(issuers):
            try:
                self._issuers[config.issuer] = _Issuer(config, clock)
            except ValueError as exc:
                raise IssuerSetupError(index, str(exc)) from None

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    def fetch_count(self, issuer: str) -> int:
        """How many times the issuer's JWKS has been read or fetched (successful or not)."""
        return self._issuers[issuer].keys.attempts

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token, or TokenError with a client-safe message."""
        header, payload, signing_parts = _parse(token)

        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenError("malformed token: the header has no alg")
        if alg.lower() == "none":
            raise TokenError("unsigned tokens (alg: none) are never accepted")
        if alg.upper().startswith("HS"):
            raise TokenError(
                f"tokens signed with a shared secret ({_show(alg)}) are never accepted: "
                "sqlward verifies tokens with the issuer's public keys"
            )

        iss = payload.get("iss")
        if not isinstance(iss, str) or not iss:
            raise TokenError("token has no iss (issuer) claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise TokenError(f"token issuer {_show(iss)} is not trusted by this gateway")
        config = issuer.config
        if alg not in config.algorithms:
            raise TokenError(
                f"algorithm {_show(alg)} is not allowed for issuer {config.issuer} (allowed: {', '.join(config.algorithms)})"
            )
        if alg not in JWS_ALGORITHMS:  # defensive: the config loader only lets these through
            raise TokenError(f"algorithm {_show(alg)} is not supported")

        _check_typ(header.get("typ"), config)

        if "b64" in header:  # RFC 7797 unencoded payloads: never used for access tokens
            raise TokenError("malformed token: unencoded payloads (b64 header) are not accepted")

        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token: kid must be a string")

        keys = await issuer.keys.current()
        candidates = _candidates(keys, kid, alg)
        if not candidates:
            refetched = await issuer.keys.refetch(keys)
            if refetched is not None:
                keys = refetched
                candidates = _candidates(keys, kid, alg)
        if not candidates:
            if kid is not None:
                raise TokenError(f"unknown signing key (kid {_show(kid)}) for issuer {config.issuer}")
            raise TokenError(f"issuer {config.issuer} publishes no key for {alg} (and the token names no kid)")

        _check_signature(token, signing_parts, candidates, alg, config.issuer)
        return _claims(payload, config, self._clock())

    def __repr__(self) -> str:
        return f"TokenVerifier({', '.join(self._issuers)})"


class _Issuer:
    def __init__(self, config: IssuerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        if config.jwks_url:
            fetch = _url_fetcher(config)
        else:
            fetch = _file_fetcher(config)
        self.keys = _KeyCache(config, clock, fetch)


# --------------------------------------------------------------------------------------------
# Parsing and checks


def _check_typ(typ: Any, config: IssuerConfig) -> None:
    """RFC 9068: an access token is typed `at+jwt` (`application/at+jwt`); `JWT` is what many
    identity providers still send. Any other type (an ID token's own type, `dpop+jwt`,
    `logout+jwt`, security events) is not an access token. `require_typ = "at+jwt"` makes the
    RFC 9068 type mandatory (an ID token typed JWT is then refused)."""
    if typ is None:
        if config.require_typ:
            raise TokenError(f"token has no typ header; issuer {config.issuer} requires typ {config.require_typ} (RFC 9068 access tokens)")
        return
    if not isinstance(typ, str):
        raise TokenError("malformed token: typ must be a string")
    kind = typ.lower()  # exact, but for case (RFC 9068 media types): "at+jwt " is not at+jwt
    if kind.startswith("application/"):
        kind = kind[len("application/"):]
    if kind not in ACCESS_TOKEN_TYPES:
        raise TokenError(f"token typ {_show(typ)} is not an access token (expected at+jwt or JWT)")
    if config.require_typ and kind != config.require_typ.lower():
        raise TokenError(f"token typ {_show(typ)} is refused: issuer {config.issuer} requires typ {config.require_typ} (RFC 9068 access tokens)")


def _parse(token: str) -> tuple[dict[str, Any], dict[str, Any], tuple[str, str, str]]:
    if not isinstance(token, str):
        raise TokenError("malformed token: expected text")
    token = token.strip()
    if not token:
        raise TokenError("no token given")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(f"token is longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) == 5:
        raise TokenError("encrypted tokens (JWE) are not supported: present a signed JWT access token")
    if len(parts) != 3:
        raise TokenError("not a JWT: expected a signed JWT access token (three base64url parts separated by dots)")
    header = _json_part(parts[0], "header")
    payload = _json_part(parts[1], "payload")
    return header, payload, (parts[0], parts[1], parts[2])


def _json_part(part: str, what: str) -> dict[str, Any]:
    try:
        if not part or not _B64URL.issuperset(part):
            raise ValueError
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise TokenError(f"malformed token: the {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"malformed token: the {what} is not a JSON object")
    return value


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _candidates(keys: Sequence[Key], kid: str | None, alg: str) -> list[Key]:
    if kid is not None:
        return [k for k in keys if k.kid == kid]
    return [k for k in keys if _fits(k, alg)]


def _fits(key: Key, alg: str) -> bool:
    try:
        _registry(alg).get_alg(alg).check_key(key)
    except JoseError:
        return False
    return True


class _Registry(jws.JWSRegistry):
    """A JWS registry that allows exactly the algorithm being verified and does not warn about
    `EdDSA` (joserfc flags it as superseded by RFC 9864's `Ed25519`, but identity providers
    still sign with it, and allowing it is the issuer's configuration)."""

    max_header_length = 8192  # joserfc's 512 bytes is too little for a header with an x5c chain

    def get_alg(self, name: str) -> Any:
        if name not in self.algorithms or not self.allowed or name not in self.allowed:
            raise JoseError(f"algorithm {name} is not allowed")
        return self.algorithms[name]


# One registry per supported algorithm, each allowing only that one. Unknown header parameters
# are tolerated (identity providers add their own); `crit` ones not understood are still refused.
_REGISTRIES: dict[str, _Registry] = {
    alg: _Registry(algorithms=[alg], strict_check_header=False) for alg in JWS_ALGORITHMS
}


def _registry(alg: str) -> _Registry:
    return _REGISTRIES[alg]


def _check_signature(token: str, parts: tuple[str, str, str], keys: list[Key], alg: str, issuer: str) -> None:
    compact = ".".join(parts)
    registry = _registry(alg)
    unfit = 0
    for key in keys:
        try:
            registry.get_alg(alg).check_key(key)
        except JoseError:
            unfit += 1
            continue
        try:
            jws.deserialize_compact(compact, key, registry=registry)
            return
        except BadSignatureError:
            continue
        except JoseError as exc:
            raise TokenError(f"malformed token: {_show(exc.description or exc.error)}") from None
        except (ValueError, TypeError):
            continue
    if unfit == len(keys):
        raise TokenError(f"bad signature: the signing key of issuer {issuer} named by the token cannot verify {alg}")
    raise TokenError(f"bad signature: the token was not signed by issuer {issuer}")


def _claims(payload: dict[str, Any], config: IssuerConfig, now: float) -> VerifiedToken:
    leeway = config.leeway_seconds

    aud = payload.get("aud")
    if aud is None:
        raise TokenError(f"token has no aud (audience) claim; expected {_one_of(config.audiences)}")
    token_auds = [aud] if isinstance(aud, str) else aud
    if not isinstance(token_auds, list) or not all(isinstance(a, str) for a in token_auds):
        raise TokenError("malformed token: aud must be a string or a list of strings")
    audience = next((a for a in config.audiences if a in token_auds), None)
    if audience is None:
        shown = ", ".join(_show(a) for a in token_auds[:5]) or "none"
        raise TokenError(f"token audience ({shown}) is not accepted here; expected {_one_of(config.audiences)}")

    exp = _numeric_date(payload, "exp")
    if exp is None:
        raise TokenError("token has no exp (expiry) claim; sqlward only accepts tokens that expire")
    if exp <= now - leeway:
        raise TokenError(f"token expired at {_when(exp)} ({_ago(now - exp)} ago)")
    nbf = _numeric_date(payload, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise TokenError(f"token is not valid yet (nbf {_when(nbf)}, in {_ago(nbf - now)})")
    iat = _numeric_date(payload, "iat")
    if iat is not None and iat > now + leeway:
        raise TokenError(f"token is not valid yet: it was issued in the future (iat {_when(iat)}); check the clocks")

    subject = _claim(payload, config.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise TokenError(f"token has no {config.subject_claim} claim (the subject claim of issuer {config.issuer})")

    raw_groups = _claim(payload, config.groups_claim)
    if raw_groups is None:
        groups: tuple[str, ...] = ()
    elif isinstance(raw_groups, str):
        groups = tuple(raw_groups.split())
    elif isinstance(raw_groups, list) and all(isinstance(g, str) for g in raw_groups):
        groups = tuple(g for g in raw_groups if g)
    else:
        raise TokenError(f"malformed token: the {config.groups_claim} claim must be a list of strings or a space-separated string")

    return VerifiedToken(
        subject=subject,
        groups=groups,
        actor=_actors(payload.get("act"), config.subject_claim),
        issuer=config.issuer,
        audience=audience,
        expires_at=float(exp),
        claims=payload,
    )


def _actors(act: Any, subject_claim: str) -> tuple[str, ...]:
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, dict):
            raise TokenError("malformed token: the act (actor) claim must be a JSON object")
        if len(chain) >= MAX_ACTOR_DEPTH:
            raise TokenError(f"malformed token: the act (actor) chain is deeper than {MAX_ACTOR_DEPTH}")
        name = act.get("sub")
        if not isinstance(name, str) or not name:
            name = act.get(subject_claim) or act.get("client_id")
        if not isinstance(name, str) or not name:
            raise TokenError("malformed token: an act (actor) claim names no sub")
        chain.append(name)
        act = act.get("act")
    return tuple(chain)


def _claim(payload: dict[str, Any], name: str) -> Any:
    if name in payload:
        return payload[name]
    if "." in name:
        value: Any = payload
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value
    return None


def _numeric_date(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenError(f"malformed token: {name} must be a number of seconds since 1970")
    return float(value)


def _when(t: float) -> str:
    try:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f}"


def _ago(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _one_of(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else "one of " + ", ".join(values)


def _show(value: object) -> str:
    text = str(value)
    if len(text) > _SHOWN:
        text = text[: _SHOWN - 3] + "..."
    return repr(text)


# --------------------------------------------------------------------------------------------
# JWKS: cache, file and HTTPS sources


class _KeyCache:
    """One issuer's keys: fetched on first use, again after `jwks_refresh_seconds`, and on demand
    (an unknown kid) at most every `jwks_min_refetch_seconds` (never more often than every
    `MIN_REFETCH_FLOOR` seconds, whatever a hand-built config says).

    Single flight without a lock across I/O: the task that starts a fetch publishes a
    `trio.Event` (`_inflight`); others that need keys meanwhile wait for that event and then look
    again, while tasks whose keys are cached and fresh are never held up by the fetch. A failed
    refetch for an unknown kid keeps the keys that are still fresh (an identity provider outage
    and one made-up kid must not lock out valid tokens); a failed refresh of keys whose cache
    time is over drops them."""

    def __init__(self, config: IssuerConfig, clock: Callable[[], float], fetch: Callable[[], tuple[Key, ...]]) -> None:
        self._config = config
        self._clock = clock
        self._fetch = fetch
        self._min_refetch = max(float(config.jwks_min_refetch_seconds), MIN_REFETCH_FLOOR)
        self._inflight: trio.Event | None = None
        self._keys: tuple[Key, ...] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._error: TokenError | None = None
        self.attempts = 0

    def _fresh(self, now: float) -> bool:
        return self._keys is not None and now - self._fetched_at < self._config.jwks_refresh_seconds

    async def current(self) -> tuple[Key, ...]:
        while True:
            now = self._clock()
            if self._fresh(now):
                assert self._keys is not None
                return self._keys
            if self._inflight is not None:
                await self._inflight.wait()  # then look again
                continue
            if self._error is not None and now - self._attempted_at < self._min_refetch:
                raise self._error
            return await self._load(now, keep_fresh=False)

    async def refetch(self, seen: tuple[Key, ...]) -> tuple[Key, ...] | None:
        """Keys newer than `seen`: fetched now unless the last fetch was too recent or failed
        (then None: the caller refuses the token as naming an unknown key), or the ones another
        task fetched meanwhile."""
        if self._inflight is not None:
            await self._inflight.wait()
            return self._keys if self._keys is not None and self._keys is not seen else None
        if self._keys is not None and self._keys is not seen:
            return self._keys
        now = self._clock()
        if now - self._attempted_at < self._min_refetch:
            return None
        try:
            return await self._load(now, keep_fresh=True)
        except TokenError:
            if self._fresh(self._clock()):
                return None  # the keys we have stay in use; this kid stays unknown
            raise

    async def _load(self, now: float, *, keep_fresh: bool) -> tuple[Key, ...]:
        done = self._inflight = trio.Event()
        self._attempted_at = now
        self.attempts += 1
        try:
            keys = await _in_thread(self._fetch)
        except TokenError as exc:
            self._error = exc
            if not (keep_fresh and self._fresh(self._clock())):
                self._keys = None  # stale keys are not used after a failed refresh
            raise
        else:
            self._error = None
            self._keys = keys
            self._fetched_at = now
            return keys
        finally:
            self._inflight = None
            done.set()


def _thread_kwarg() -> str:
    parameters = inspect.signature(trio.to_thread.run_sync).parameters
    return "abandon_on_cancel" if "abandon_on_cancel" in parameters else "cancellable"


_THREAD_KWARG = _thread_kwarg()


async def _in_thread(fn: Callable[[], tuple[Key, ...]]) -> tuple[Key, ...]:
    return await trio.to_thread.run_sync(fn, **{_THREAD_KWARG: True})


def _import_jwks(document: Any, issuer: str) -> tuple[Key, ...]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise TokenError(f"the signing keys of issuer {issuer} are not a JWK set")
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        try:
            keys.append(JWKRegistry.import_key(entry))
        except (JoseError, ValueError, TypeError, KeyError):
            continue
    return tuple(keys)


def _file_fetcher(config: IssuerConfig) -> Callable[[], tuple[Key, ...]]:
    path, issuer = config.jwks_file, config.issuer

    def fetch() -> tuple[Key, ...]:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise TokenError(f"cannot read the signing keys of issuer {issuer}: {exc.strerror or exc}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise TokenError(f"the signing keys of issuer {issuer} are larger than {MAX_JWKS_BYTES} bytes")
        try:
            document = json.loads(data)
        except ValueError:
            raise TokenError(f"the signing keys of issuer {issuer} are not JSON") from None
        return _import_jwks(document, issuer)

    return fetch


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not newurl.lower().startswith("https://"):
            raise urllib.error.URLError("redirected away from https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _url_fetcher(config: IssuerConfig) -> Callable[[], tuple[Key, ...]]:
    url, issuer = config.jwks_url, config.issuer
    try:
        context = ssl.create_default_context(cafile=config.jwks_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load jwks_ca_file {config.jwks_ca_file} of issuer {issuer}: {exc}") from None
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoDowngrade())

    def fetch() -> tuple[Key, ...]:
        what = f"cannot fetch the signing keys of issuer {issuer}"
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "sqlward"})
        try:
            with opener.open(request, timeout=JWKS_FETCH_TIMEOUT) as response:
                data = response.read(MAX_JWKS_BYTES + 1)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise TokenError(f"{what}: HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise TokenError(f"{what}: {_reason(exc.reason)}") from None
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise TokenError(f"{what}: {_reason(exc)}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise TokenError(f"{what}: the response is larger than {MAX_JWKS_BYTES} bytes")
        try:
            document = json.loads(data)
        except ValueError:
            raise TokenError(f"{what}: the response is not JSON") from None
        return _import_jwks(document, issuer)

    return fetch


def _reason(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message})"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
