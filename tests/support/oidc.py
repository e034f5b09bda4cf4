"""A test OIDC issuer: signing keys, a JWKS served over local HTTPS, and tokens good and bad.

    issuer = TestIssuer(tmp_path)                 # RSA-2048, EC P-256 and Ed25519 signing keys
    with issuer:                                  # JWKS at issuer.jwks_url, over HTTPS
        token = issuer.mint(sub="alice@example.com", groups=["dba"])
        config_toml = issuer.oidc_toml()          # an [[oidc]] table pointing at this issuer

How it works: keys are made with joserfc (`RSAKey` / `ECKey` / `OKPKey.generate_key`), one
current key per algorithm (RS256, ES256, EdDSA), each with its own `kid`. `jwks()` is the public
part of every *published* key; it is also written to `jwks_file` after every change, for configs
that read keys from a file. `start()` (or `with issuer:`) serves `/jwks.json` and
`/.well-known/openid-configuration` from an `http.server.ThreadingHTTPServer` on 127.0.0.1 in a
daemon thread, wrapped in TLS with a certificate from a fresh test CA (`tests/support/certs.py`;
`ca_file` is what a verifier must trust). `requests` counts JWKS fetches; `fail_status` makes the
server answer with that HTTP status; `stop()` takes it down (connection refused).

Tokens are compact JWS built here by hand (header and payload JSON, base64url) and signed with
joserfc's algorithm objects, so any header and any claims can be produced, including the bad
ones a verifier must refuse: `alg: none` (`mint_unsigned`), HS256 keyed with the RSA public key's
PEM (`mint_hs256_with_public_key`), a key nobody published (`mint_with_unknown_key`), a forged
signature under a published kid (`mint_bad_signature`), expired / not-yet-valid / other audience
/ other issuer (plain `mint` with claim overrides), nested RFC 8693 `act` (`act=actor_chain(...)`).
`rotate(alg)` makes a new current key (published or not); `publish` / `unpublish` change the JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tests.support.certs import make_pki

__all__ = ["ALGORITHMS", "TestIssuer", "actor_chain", "b64url"]

ALGORITHMS = ("RS256", "ES256", "EdDSA")
_UNSET: Any = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def generate_key(alg: str, kid: str) -> Key:
    """A new private signing key for `alg` (RS*/PS*: RSA-2048; ES256: P-256; EdDSA: Ed25519)."""
    params: dict[str, Any] = {"kid": kid, "use": "sig", "alg": alg}
    if alg.startswith(("RS", "PS")):
        return RSAKey.generate_key(2048, parameters=params)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=params)
    if alg == "ES384":
        return ECKey.generate_key("P-384", parameters=params)
    if alg in ("EdDSA", "Ed25519"):
        return OKPKey.generate_key("Ed25519", parameters=params)
    raise ValueError(f"no key type for {alg}")


def sign(signing_input: bytes, alg: str, key: Key) -> bytes:
    """Sign with joserfc's algorithm object directly (no registry: no allow-list, no warnings)."""
    return JWSRegistry.algorithms[alg].sign(signing_input, key)


def actor_chain(*names: str) -> dict[str, Any] | None:
    """RFC 8693 `act` claim for a chain, outermost first: actor_chain("agent", "runbook") is
    {"sub": "agent", "act": {"sub": "runbook"}}."""
    act: dict[str, Any] | None = None
    for name in reversed(names):
        act = {"sub": name, **({"act": act} if act else {})}
    return act


class TestIssuer:
    __test__ = False  # not a pytest test class

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        issuer: str = "https://idp.test",
        audience: str = "sqlward",
        algorithms: tuple[str, ...] = ALGORITHMS,
        name: str = "idp",
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.issuer = issuer
        self.audience = audience
        self.name = name
        self._lock = threading.Lock()
        self._serial = 0
        self.current: dict[str, Key] = {}  # alg -> current signing key
        self._keys: dict[str, tuple[str, Key]] = {}  # kid -> (alg, key), published or not
        self._published: list[str] = []  # kids, in JWKS order
        self.jwks_file = self.directory / f"{name}-jwks.json"
        for alg in algorithms:
            self.rotate(alg)
        self.pki = make_pki(self.directory, prefix=f"{name}-")
        self.requests = 0
        self.fail_status: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- keys ---------------------------------------------------------------------------------

    def _new_kid(self, alg: str) -> str:
        self._serial += 1
        return f"{self.name}-{alg.lower()}-{self._serial}-{os.urandom(3).hex()}"

    def rotate(self, alg: str = "RS256", *, publish: bool = True, retire_old: bool = False) -> str:
        """Make a new current key for `alg`; returns its kid. `retire_old` unpublishes the old one."""
        old = self.current.get(alg)
        kid = self._new_kid(alg)
        key = generate_key(alg, kid)
        with self._lock:
            self._keys[kid] = (alg, key)
            self.current[alg] = key
        if publish:
            self.publish(kid)
        if retire_old and old is not None:
            self.unpublish(old.kid)
        return kid

    def publish(self, kid: str) -> None:
        with self._lock:
            if kid not in self._published:
                self._published.append(kid)
        self._write_jwks()

    def unpublish(self, kid: str) -> None:
        with self._lock:
            if kid in self._published:
                self._published.remove(kid)
        self._write_jwks()

    def kid(self, alg: str = "RS256") -> str:
        return self.current[alg].kid

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [self._keys[kid][1].as_dict(private=False) for kid in self._published]}

    def _write_jwks(self) -> None:
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.jwks()))
        os.replace(tmp, self.jwks_file)

    # -- tokens -------------------------------------------------------------------------------

    def claims(self, *, ttl: float = 300, now: float | None = None, **claims: Any) -> dict[str, Any]:
        """Default claims (iss, aud, sub, iat, exp) updated with `claims`; a value None removes it."""
        now = time.time() if now is None else now
        out: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice@example.com",
            "iat": int(now),
            "exp": int(now + ttl),
        }
        out.update(claims)
        return {k: v for k, v in out.items() if v is not None}

    def mint(
        self,
        *,
        alg: str = "RS256",
        key: Key | None = None,
        kid: Any = _UNSET,
        header: dict[str, Any] | None = None,
        ttl: float = 300,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A token signed with the current `alg` key (or `key`). `kid` overrides the header's kid
        (None leaves it out); `header` adds or replaces header fields (a None value removes one)."""
        key = key if key is not None else self.current[alg]
        head: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": key.kid if kid is _UNSET else kid}
        head.update(header or {})
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = f"{_json_b64(head)}.{_json_b64(self.claims(ttl=ttl, now=now, **claims))}"
        return f"{signing_input}.{b64url(sign(signing_input.encode(), alg, key))}"

    def mint_unsigned(self, *, alg: str = "none", **claims: Any) -> str:
        """alg: none, empty signature."""
        head = {"alg": alg, "typ": "JWT", "kid": self.kid("RS256") if "RS256" in self.current else None}
        head = {k: v for k, v in head.items() if v is not None}
        return f"{_json_b64(head)}.{_json_b64(self.claims(**claims))}."

    def mint_hs256_with_public_key(self, *, alg: str = "HS256", **claims: Any) -> str:
        """The key-confusion forgery: HMAC keyed with the published RSA public key's PEM, under
        the RSA key's kid."""
        rsa = self.current["RS256"]
        head = {"alg": alg, "typ": "JWT", "kid": rsa.kid}
        signing_input = f"{_json_b64(head)}.{_json_b64(self.claims(**claims))}"
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        mac = hmac.new(rsa.as_pem(private=False), signing_input.encode(), digest).digest()
        return f"{signing_input}.{b64url(mac)}"

    def mint_with_unknown_key(self, *, alg: str = "RS256", **claims: Any) -> tuple[str, str]:
        """A token signed by a new key that is registered here but not published; returns
        (token, kid). `publish(kid)` later makes it verifiable (rotation)."""
        kid = self.rotate(alg, publish=False)
        token = self.mint(alg=alg, **claims)
        return token, kid

    def mint_bad_signature(self, *, alg: str = "RS256", **claims: Any) -> str:
        """Signed by an unpublished key but claiming the kid of the published current key."""
        forger = generate_key(alg, "forger")
        return self.mint(alg=alg, key=forger, kid=self.kid(alg), **claims)

    # -- HTTPS server -------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    @property
    def port(self) -> int:
        assert self._server is not None, "the issuer is not serving (call start())"
        return self._server.server_address[1]

    @property
    def jwks_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks.json"

    def start(self) -> TestIssuer:
        if self._server is not None:
            return self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert_file, self.pki.key_file)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.issuer = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> TestIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def oidc_toml(self, *, source: str = "url", **overrides: Any) -> str:
        """An `[[oidc]]` table for this issuer: keys from `jwks_url` (+ `jwks_ca_file`) or, with
        source="file", from `jwks_file`. `overrides` set or add keys (values are JSON-encoded,
        which TOML reads the same for strings, numbers, booleans and arrays)."""
        table = self.oidc_table(source=source, **overrides)
        lines = ["[[oidc]]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def oidc_table(self, *, source: str = "url", **overrides: Any) -> dict[str, Any]:
        """The same `[[oidc]]` table as a dict (for `GatewayProcess(extra={"oidc": [...]})`)."""
        table: dict[str, Any] = {"issuer": self.issuer, "audiences": [self.audience]}
        if source == "url":
            table.update(jwks_url=self.jwks_url, jwks_ca_file=str(self.ca_file))
        else:
            table.update(jwks_file=str(self.jwks_file))
        table.update(overrides)
        return table

    def __repr__(self) -> str:
        return f"TestIssuer({self.issuer!r}, serving={self._server is not None})"


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        issuer: TestIssuer = self.server.issuer
        path = self.path.split("?", 1)[0]
        if path == "/jwks.json":
            issuer.requests += 1
            if issuer.fail_status is not None:
                self.send_error(issuer.fail_status)
                return
            body = json.dumps(issuer.jwks()).encode()
        elif path == "/.well-known/openid-configuration":
            body = json.dumps({"issuer": issuer.issuer, "jwks_uri": issuer.jwks_url}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass
