"""Server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL clients speak it.

Why not `scramp.ScramServer`: libpq and most PostgreSQL drivers send an *empty* user name in
client-first-message (`n,,n=,r=...`: PostgreSQL takes the user from the StartupMessage), and
scramp's server rejects empty attribute values. The verifier itself (salt, iterations, StoredKey,
ServerKey) is still made by scramp in `gateway.gatekeeper`; this module only checks a proof
against it, sans-IO:

    ex = ScramExchange(secret)
    server_first = ex.first(client_first)      # -> AuthenticationSASLContinue
    server_final = ex.final(client_final)      # -> AuthenticationSASLFinal, or ScramError

Channel binding is not offered (only SCRAM-SHA-256, not -PLUS), so a client may send the gs2
flags `n` or `y` but not `p`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from sqlward.adapters.base import ScramSecret


class ScramError(Exception):
    pass


def _attrs(message: str) -> list[tuple[str, str]]:
    out = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:16]!r}")
        out.append((part[0], part[2:]))
    return out


class ScramExchange:
    def __init__(self, secret: ScramSecret, *, nonce: str | None = None) -> None:
        self._secret = secret
        self._snonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2 = ""
        self._nonce = ""
        self._done = False

    def first(self, client_first: str) -> str:
        if self._client_first_bare or self._done:
            raise ScramError("SCRAM exchange out of order")
        if client_first.startswith(("n,", "y,")):
            flag_end = 1
        elif client_first.startswith("p="):
            raise ScramError("channel binding was not offered")
        else:
            raise ScramError("malformed SCRAM client-first-message")
        authzid_end = client_first.find(",", flag_end + 1)
        if authzid_end < 0:
            raise ScramError("malformed SCRAM client-first-message")
        self._gs2 = client_first[: authzid_end + 1]
        bare = client_first[authzid_end + 1 :]
        attrs = _attrs(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise ScramError("malformed SCRAM client-first-message")
        if any(k == "m" for k, _ in attrs):
            raise ScramError("SCRAM extensions are not supported")
        self._client_first_bare = bare
        self._nonce = attrs[1][1] + self._snonce
        salt = base64.b64encode(self._secret.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._secret.iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        if not self._server_first or self._done:
            raise ScramError("SCRAM exchange out of order")
        self._done = True  # one proof attempt per exchange, whatever its outcome
        idx = client_final.rfind(",p=")
        if idx < 0:
            raise ScramError("SCRAM client-final-message has no proof")
        without_proof = client_final[:idx]
        attrs = dict(_attrs(without_proof))
        expected_c = base64.b64encode(self._gs2.encode()).decode()
        if attrs.get("c") != expected_c:
            raise ScramError("SCRAM channel binding data does not match")
        if attrs.get("r") != self._nonce:
            raise ScramError("SCRAM nonce does not match")
        try:
            proof = base64.b64decode(client_final[idx + 3 :], validate=True)
        except ValueError as exc:
            raise ScramError("SCRAM proof is not valid base64") from exc
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        stored_key = self._secret.stored_key
        client_signature = hmac.digest(stored_key, auth_message, "sha256")
        if len(proof) != len(client_signature):
            raise ScramError("password authentication failed")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            raise ScramError("password authentication failed")
        server_signature = hmac.digest(self._secret.server_key, auth_message, "sha256")
        return "v=" + base64.b64encode(server_signature).decode()


def mock_secret() -> ScramSecret:
    """A verifier no password matches: unknown users go through the same exchange and fail the
    same way as a wrong password, so user names cannot be probed."""
    return ScramSecret(
        salt=secrets.token_bytes(16),
        iterations=4096,
        stored_key=secrets.token_bytes(32),
        server_key=secrets.token_bytes(32),
    )
