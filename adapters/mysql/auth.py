"""MySQL / MariaDB authentication plugins: the cryptography, sans-IO.

Nothing here touches a socket. The functions take the password, the server's nonce and the bytes a
peer sent, and return the bytes to send or a verdict; the two small state objects
(`Sha2ClientAuth`, `Sha2ServerAuth`) walk the multi-round caching_sha2_password exchange and say
what to send next. Framing (packet headers, sequence ids, the 0x01 "AuthMoreData" status byte, the
0xFE AuthSwitchRequest) belongs to the packet layer. Passwords are `bytes` (the client's encoding,
in practice UTF-8); nonces are the bare 20 (or 32) random bytes, without the NUL that servers put
after them on the wire (see `plugin_data_nonce`).

Specs and the sources the algorithms were checked against:

* Protocol, authentication phase: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html
* mysql_native_password: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_authentication_methods_native_password_authentication.html
* caching_sha2_password: https://dev.mysql.com/doc/dev/mysql-server/latest/page_caching_sha2_authentication_exchanges.html
  and MySQL's sql/auth/sha2_password_common.cc (`Generate_scramble::scramble`)
* sha256_password / RSA: https://mariadb.com/kb/en/sha256_password-plugin/ and MySQL's
  sql-common/client_authentication.cc
* client_ed25519: https://mariadb.com/kb/en/authentication-plugin-ed25519/ and MariaDB's
  plugin/auth_ed25519/ref10/{sign,keypair}.c, server_ed25519.c; the curve: RFC 8032
* mysql_clear_password: https://dev.mysql.com/doc/refman/8.4/en/cleartext-pluggable-authentication.html

mysql_native_password
---------------------
The server stores SHA1(SHA1(password)) (`PASSWORD('x')` shows it as '*' + upper hex). The client
answers the 20-byte nonce with

    SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password)))

(an empty password answers with zero bytes). The server XORs the answer with
SHA1(nonce + stored) to recover SHA1(password), hashes it once more and compares with `stored`.

caching_sha2_password
---------------------
Client scramble (MySQL source order: the nonce comes *after* the double hash; MariaDB's KB page
writes the arguments the other way round, the code does not):

    XOR(SHA256(password), SHA256(SHA256(SHA256(password)) + nonce))

The exchange, after the HandshakeResponse (or AuthSwitchResponse) carrying that scramble. Server
messages below are AuthMoreData packets, i.e. 0x01 followed by the bytes shown:

    client -> scramble (32 bytes; empty when the password is empty)
    server -> 0x03 fast-auth-success, then an OK packet            (scramble matched)
           |  0x04 perform-full-authentication                     (no cache entry / mismatch)
           |  OK or ERR directly                                   (empty password)
    full authentication:
      over TLS (or a Unix socket):
        client -> password + NUL, in clear
      on a plain connection:
        client -> 0x02 request-public-key      (unless it already knows the server's key)
        server -> PEM of the RSA public key (SubjectPublicKeyInfo, "BEGIN PUBLIC KEY")
        client -> RSA_OAEP(public_key, XOR(password + NUL, nonce repeated))
                  OAEP with SHA-1 and MGF1(SHA-1), OpenSSL's RSA_PKCS1_OAEP_PADDING
    server -> OK or ERR

A MySQL server can only take the fast path when its in-memory cache holds SHA256(SHA256(pw)) for
the account. The gateway keeps exactly that value as its verifier (`Sha2Verifier`), so for it
the fast path always works. On a mismatch (or an unknown user) `Sha2ServerAuth` still answers
0x04 as MySQL does, so wrong passwords and unknown users look alike on the wire; the full-path
password is then checked against the same verifier by hashing it twice. Note what the verifier
is worth to a thief: it is not enough to log in by itself (the scramble needs SHA256(pw)), but
together with one recorded fast-path exchange (nonce and scramble, visible on a plain
connection) it yields SHA256(pw), which is; and it is unsalted. Treat it as a secret.

MariaDB client_ed25519
----------------------
The server sends a 32-byte nonce; the client answers with a 64-byte Ed25519 signature of it. The
key derivation is MariaDB's own: the expanded secret key is SHA-512 of the password, whatever its
length, where RFC 8032 hashes a 32-byte seed (for a 32-byte password the two coincide, which the
tests use to check this code against `cryptography`). `cryptography`'s Ed25519PrivateKey only takes
seeds, so signing is done here in integer arithmetic (extended twisted Edwards coordinates,
RFC 8032 section 5.1):

    az = SHA512(password);  a = clamp(az[0:32]);  A = aB
    r  = SHA512(az[32:64] + message) mod L;       R = rB
    S  = (r + SHA512(R + A + message) * a) mod L; signature = R || S

The signature is a standard Ed25519 signature for the public key A, so any RFC 8032 verifier
accepts it. MariaDB stores A base64-encoded without the trailing '=' (43 characters), which is
what `ed25519_password('x')` returns and what `ed25519_auth_string` returns here. The arithmetic
uses Python integers and is not constant time; it runs once per upstream connection, on the
gateway's own upstream password.

mysql_clear_password
--------------------
The password, NUL-terminated, in clear: only ever over TLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from enum import IntEnum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "NATIVE_PASSWORD",
    "CACHING_SHA2_PASSWORD",
    "SHA256_PASSWORD",
    "CLEAR_PASSWORD",
    "CLIENT_ED25519",
    "NONCE_LEN",
    "ED25519_NONCE_LEN",
    "AuthProtocolError",
    "Sha2Status",
    "generate_nonce",
    "plugin_data_nonce",
    "native_scramble",
    "native_verifier",
    "native_check",
    "native_auth_string",
    "native_verifier_from_auth_string",
    "sha2_scramble",
    "Sha2Verifier",
    "sha2_check",
    "sha2_check_password",
    "xor_with_nonce",
    "rsa_encrypt_password",
    "rsa_decrypt_password",
    "generate_rsa_keypair",
    "Sha2ClientAuth",
    "Sha2ServerAuth",
    "Sha2Step",
    "ed25519_public_key",
    "ed25519_auth_string",
    "ed25519_sign",
    "clear_password_payload",
]

NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2_PASSWORD = "caching_sha2_password"
SHA256_PASSWORD = "sha256_password"
CLEAR_PASSWORD = "mysql_clear_password"
CLIENT_ED25519 = "client_ed25519"  # the client-side name; the server plugin is "ed25519"

NONCE_LEN = 20  # mysql_native_password and caching_sha2_password
ED25519_NONCE_LEN = 32


class AuthProtocolError(Exception):
    """The peer sent something the authentication exchange does not allow at this point."""


class Sha2Status(IntEnum):
    """The one-byte AuthMoreData bodies of caching_sha2_password (after the 0x01 status byte)."""

    REQUEST_PUBLIC_KEY = 0x02  # client -> server
    FAST_AUTH_SUCCESS = 0x03  # server -> client, an OK packet follows
    PERFORM_FULL_AUTHENTICATION = 0x04  # server -> client


# --------------------------------------------------------------------------------------------
# Nonces


_NONCE_ALPHABET = bytes(b for b in range(0x21, 0x7F) if b != ord("$"))


def generate_nonce(length: int = NONCE_LEN) -> bytes:
    """A fresh server nonce of printable ASCII without NUL or '$', as MySQL generates them.

    Clients treat the handshake's auth-plugin-data as NUL-terminated, and some split on '$', so
    the nonce must contain neither. ~6.5 bits of entropy per byte: 130 bits for 20 bytes.
    """
    return bytes(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def plugin_data_nonce(data: bytes, length: int = NONCE_LEN) -> bytes:
    """The nonce inside auth-plugin-data as servers send it: 20 bytes, then usually a NUL.

    Handshake v10 carries 8 + 12 bytes and a NUL; an AuthSwitchRequest for
    mysql_native_password or caching_sha2_password carries 20 bytes and a NUL. The NUL is not
    part of the nonce: hashing it in gives a scramble the server rejects.
    """
    if len(data) == length + 1 and data[-1] == 0:
        data = data[:-1]
    if len(data) != length:
        raise AuthProtocolError(f"auth plugin data is {len(data)} bytes, expected a {length}-byte nonce")
    return data


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --------------------------------------------------------------------------------------------
# mysql_native_password


def native_scramble(password: bytes, nonce: bytes) -> bytes:
    """Client answer: SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); b"" if no password."""
    if not password:
        return b""
    stage1 = _sha1(password)
    return _xor(stage1, _sha1(nonce + _sha1(stage1)))


def native_verifier(password: bytes) -> bytes:
    """What a server stores: SHA1(SHA1(password)), 20 bytes; b"" for an empty password."""
    if not password:
        return b""
    return _sha1(_sha1(password))


def native_check(verifier: bytes, nonce: bytes, response: bytes) -> bool:
    """Server side: does `response` prove knowledge of the password behind `verifier`?

    An empty verifier (account without a password) accepts only an empty response. The final
    comparison is constant time.
    """
    if not verifier:
        return response == b""
    if len(verifier) != 20 or len(response) != 20:
        return False
    candidate_stage1 = _xor(response, _sha1(nonce + verifier))
    return hmac.compare_digest(_sha1(candidate_stage1), verifier)


def native_auth_string(password: bytes) -> str:
    """MySQL's display form of the verifier: '*' + 40 upper-case hex digits ('' if no password)."""
    v = native_verifier(password)
    return "*" + v.hex().upper() if v else ""


def native_verifier_from_auth_string(auth_string: str) -> bytes:
    """Parse '*' + 40 hex digits (mysql.user.authentication_string) into the 20-byte verifier."""
    if auth_string == "":
        return b""
    if len(auth_string) != 41 or auth_string[0] != "*":
        raise ValueError("a mysql_native_password hash is '*' followed by 40 hex digits")
    return bytes.fromhex(auth_string[1:])


# --------------------------------------------------------------------------------------------
# caching_sha2_password


def sha2_scramble(password: bytes, nonce: bytes) -> bytes:
    """Client fast-path answer: XOR(SHA256(pw), SHA256(SHA256(SHA256(pw)) + nonce)); b"" if no pw."""
    if not password:
        return b""
    stage1 = _sha256(password)
    return _xor(stage1, _sha256(_sha256(stage1) + nonce))


class Sha2Verifier:
    """SHA256(SHA256(password)): what MySQL's cache holds, and all the gateway keeps.

    It checks the fast-path scramble (`check_scramble`) and the full-path cleartext password
    (`check_password`) without the password being stored anywhere. `digest == b""` means an
    account without a password. Unsalted: see the module docstring before storing one.
    """

    __slots__ = ("digest",)

    def __init__(self, digest: bytes) -> None:
        if digest and len(digest) != 32:
            raise ValueError("a caching_sha2_password verifier is 32 bytes (SHA256(SHA256(password)))")
        self.digest = bytes(digest)

    @classmethod
    def from_password(cls, password: bytes) -> Sha2Verifier:
        return cls(_sha256(_sha256(password)) if password else b"")

    @classmethod
    def from_hex(cls, text: str) -> Sha2Verifier:
        return cls(bytes.fromhex(text))

    def hex(self) -> str:
        return self.digest.hex()

    @property
    def empty(self) -> bool:
        return not self.digest

    def check_scramble(self, nonce: bytes, response: bytes) -> bool:
        return sha2_check(self, nonce, response)

    def check_password(self, password: bytes) -> bool:
        return sha2_check_password(self, password)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sha2Verifier) and hmac.compare_digest(self.digest, other.digest)

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:  # a password equivalent together with a sniffed exchange: not in logs
        return "Sha2Verifier(<empty>)" if self.empty else "Sha2Verifier(<32 bytes>)"


def sha2_check(verifier: Sha2Verifier, nonce: bytes, response: bytes) -> bool:
    """Server side, fast path: recover SHA256(pw) from the scramble, hash it, compare in constant time."""
    if verifier.empty:
        return response == b""
    if len(response) != 32:
        return False
    candidate_stage1 = _xor(response, _sha256(verifier.digest + nonce))
    return hmac.compare_digest(_sha256(candidate_stage1), verifier.digest)


def sha2_check_password(verifier: Sha2Verifier, password: bytes) -> bool:
    """Server side, full path: SHA256(SHA256(password)) == stored, in constant time."""
    if verifier.empty:
        return password == b""
    if not password:
        return False
    return hmac.compare_digest(_sha256(_sha256(password)), verifier.digest)


def xor_with_nonce(data: bytes, nonce: bytes) -> bytes:
    """XOR `data` with `nonce` repeated to its length (the RSA path's obfuscation; its own inverse)."""
    if not nonce:
        raise ValueError("empty nonce")
    reps = len(data) // len(nonce) + 1
    return _xor(data, (nonce * reps)[: len(data)])


_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def _load_public_key(public_key_pem: bytes | str | rsa.RSAPublicKey) -> rsa.RSAPublicKey:
    if isinstance(public_key_pem, rsa.RSAPublicKey):
        return public_key_pem
    if isinstance(public_key_pem, str):
        public_key_pem = public_key_pem.encode("ascii")
    try:
        key = serialization.load_pem_public_key(public_key_pem.strip(b"\0"))
    except ValueError as e:
        raise AuthProtocolError(f"the server's RSA public key is not a PEM public key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthProtocolError("the server's public key is not an RSA key")
    return key


def _load_private_key(private_key: bytes | str | rsa.RSAPrivateKey) -> rsa.RSAPrivateKey:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key
    if isinstance(private_key, str):
        private_key = private_key.encode("ascii")
    key = serialization.load_pem_private_key(private_key, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def rsa_encrypt_password(
    password: bytes, nonce: bytes, public_key_pem: bytes | str | rsa.RSAPublicKey
) -> bytes:
    """Client side of the plain-connection full path: OAEP(XOR(password + NUL, nonce)).

    The ciphertext is as long as the key's modulus (256 bytes for 2048 bits). OAEP/SHA-1 leaves
    room for modulus_bytes - 42 bytes of message, so the password may have at most
    modulus_bytes - 43 bytes (213 with a 2048-bit key).
    """
    key = _load_public_key(public_key_pem)
    message = xor_with_nonce(password + b"\0", nonce)
    limit = key.key_size // 8 - 2 * hashes.SHA1.digest_size - 2
    if len(message) > limit:
        raise ValueError(f"password too long for RSA-OAEP with a {key.key_size}-bit key")
    return key.encrypt(message, _OAEP)


def rsa_decrypt_password(
    ciphertext: bytes, nonce: bytes, private_key: bytes | str | rsa.RSAPrivateKey
) -> bytes:
    """Server side: decrypt, undo the XOR, return the password without its NUL terminator.

    Raises `AuthProtocolError` when the ciphertext does not decrypt or carries no terminator
    (a client XOR-ing with the wrong nonce, or not XOR-ing the NUL, gets here).
    """
    key = _load_private_key(private_key)
    if len(ciphertext) != key.key_size // 8:
        raise AuthProtocolError(
            f"RSA-encrypted password is {len(ciphertext)} bytes, expected {key.key_size // 8}"
        )
    try:
        message = key.decrypt(ciphertext, _OAEP)
    except ValueError:
        raise AuthProtocolError("RSA-encrypted password does not decrypt with the server's key") from None
    plain = xor_with_nonce(message, nonce)
    end = plain.find(b"\0")
    if end < 0:
        raise AuthProtocolError("RSA-encrypted password is not NUL-terminated")
    return plain[:end]


def generate_rsa_keypair(bits: int = 2048) -> tuple[bytes, bytes]:
    """A fresh key pair as (private PEM, PKCS#8 unencrypted; public PEM, SubjectPublicKeyInfo).

    The public PEM is what the server sends after a request-public-key (0x02), byte for byte.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


class Sha2ClientAuth:
    """Client side (gateway -> upstream) of caching_sha2_password, sans-IO.

        auth = Sha2ClientAuth(password, nonce, secure=tls_active)
        send(auth.initial_response())            # in HandshakeResponse / AuthSwitchResponse
        for each AuthMoreData from the server (its body, without the 0x01 byte):
            reply = auth.more_data(body)
            if reply is not None: send(reply)    # then keep reading
        # the server ends the exchange with OK or ERR, which the caller handles

    `server_public_key` (PEM), when known beforehand, saves the 0x02 round trip. `secure` must
    be true only when the connection is TLS (or a Unix socket): the password then goes in clear.
    """

    def __init__(
        self,
        password: bytes,
        nonce: bytes,
        *,
        secure: bool,
        server_public_key: bytes | None = None,
    ) -> None:
        self._password = password
        self._nonce = nonce
        self._secure = secure
        self.server_public_key = server_public_key
        self.state = "start"  # start -> scrambled -> (fast_ok | full_sent | awaiting_key -> full_sent)

    def initial_response(self) -> bytes:
        if self.state != "start":
            raise AuthProtocolError("initial response already sent")
        self.state = "scrambled"
        return sha2_scramble(self._password, self._nonce)

    def more_data(self, body: bytes) -> bytes | None:
        """React to one AuthMoreData body; return the payload to send, or None (wait for OK/ERR)."""
        if self.state == "scrambled":
            if body == bytes([Sha2Status.FAST_AUTH_SUCCESS]):
                self.state = "fast_ok"
                return None
            if body == bytes([Sha2Status.PERFORM_FULL_AUTHENTICATION]):
                if self._secure:
                    self.state = "full_sent"
                    return clear_password_payload(self._password)
                if self.server_public_key is not None:
                    self.state = "full_sent"
                    return rsa_encrypt_password(self._password, self._nonce, self.server_public_key)
                self.state = "awaiting_key"
                return bytes([Sha2Status.REQUEST_PUBLIC_KEY])
        elif self.state == "awaiting_key":
            self.server_public_key = body
            self.state = "full_sent"
            return rsa_encrypt_password(self._password, self._nonce, body)
        raise AuthProtocolError(
            f"caching_sha2_password: unexpected AuthMoreData {body[:8]!r} in state {self.state}"
        )


class Sha2Step:
    """What the server side does next: send `more_data` (as AuthMoreData) if not None, then,
    when `done`, finish with OK (`ok`) or ERR (not `ok`); when not `done`, read the next packet."""

    __slots__ = ("more_data", "done", "ok")

    def __init__(self, more_data: bytes | None = None, *, done: bool = False, ok: bool = False) -> None:
        self.more_data = more_data
        self.done = done
        self.ok = ok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sha2Step) and (self.more_data, self.done, self.ok) == (
            other.more_data,
            other.done,
            other.ok,
        )

    def __repr__(self) -> str:
        return f"Sha2Step(more_data={self.more_data!r}, done={self.done}, ok={self.ok})"


class Sha2ServerAuth:
    """Server side (client -> gateway) of caching_sha2_password, sans-IO.

        auth = Sha2ServerAuth(verifier, nonce, secure=tls_active,
                              rsa_private_key=private_pem, rsa_public_key=public_pem)
        step = auth.response(scramble_from_handshake_response)
        while True:
            if step.more_data is not None: send AuthMoreData(step.more_data)
            if step.done: send OK if step.ok else ERR (access denied); break
            step = auth.response(next_packet_payload)

    It answers as MySQL does: a matching scramble gets fast-auth-success; any other non-empty
    scramble (wrong password, unknown user: `verifier` None, or `fast_path=False`) gets
    perform-full-authentication and the password is then checked in clear (TLS) or after RSA
    decryption, so unknown users and wrong passwords look the same on the wire. An empty first
    response is accepted only for an account without a password. Without an RSA key pair a
    plain connection cannot complete the full path and is refused there. `fast_path=False`
    forces the full path on every login (what a real MySQL does after a restart).
    """

    def __init__(
        self,
        verifier: Sha2Verifier | None,
        nonce: bytes,
        *,
        secure: bool,
        rsa_private_key: bytes | rsa.RSAPrivateKey | None = None,
        rsa_public_key: bytes | None = None,
        fast_path: bool = True,
    ) -> None:
        self._verifier = verifier
        self._nonce = nonce
        self._secure = secure
        self._private_key = rsa_private_key
        self._public_key = rsa_public_key
        self._fast_path = fast_path
        self.state = "start"  # start -> full -> done
        self.path = ""  # "fast" or "full" once decided, for logs and tests

    def _finish(self, ok: bool, more_data: bytes | None = None) -> Sha2Step:
        self.state = "done"
        return Sha2Step(more_data, done=True, ok=ok)

    def response(self, data: bytes) -> Sha2Step:
        """Feed one packet payload from the client; get what to do next."""
        if self.state == "start":
            return self._first(data)
        if self.state == "full":
            return self._full(data)
        raise AuthProtocolError(f"caching_sha2_password: no packet expected in state {self.state}")

    def _first(self, data: bytes) -> Sha2Step:
        v = self._verifier
        if data in (b"", b"\0"):
            # No password offered: fine for an account without one, refused otherwise.
            self.path = "fast"
            return self._finish(v is not None and v.empty)
        if self._fast_path and v is not None and sha2_check(v, self._nonce, data):
            self.path = "fast"
            return self._finish(True, bytes([Sha2Status.FAST_AUTH_SUCCESS]))
        self.path = "full"
        self.state = "full"
        return Sha2Step(bytes([Sha2Status.PERFORM_FULL_AUTHENTICATION]))

    def _full(self, data: bytes) -> Sha2Step:
        if self._secure:
            password = data[:-1] if data.endswith(b"\0") else data
        elif data == bytes([Sha2Status.REQUEST_PUBLIC_KEY]):
            if self._private_key is None or self._public_key is None:
                return self._finish(False)
            return Sha2Step(self._public_key)  # stay in "full": the ciphertext comes next
        elif self._private_key is None:
            return self._finish(False)
        else:
            try:
                password = rsa_decrypt_password(data, self._nonce, self._private_key)
            except AuthProtocolError:
                return self._finish(False)
        v = self._verifier
        ok = v is not None and sha2_check_password(v, password)
        return self._finish(ok)


# --------------------------------------------------------------------------------------------
# MariaDB client_ed25519: Ed25519 over the twisted Edwards curve -x^2 + y^2 = 1 + d x^2 y^2

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_D2 = 2 * _D % _P

# Base point: y = 4/5, x the even root (RFC 8032 section 5.1).
_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_B = (_BX, _BY, 1, _BX * _BY % _P)  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z
_IDENTITY = (0, 1, 1, 0)


def _point_add(p: tuple[int, int, int, int], q: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    # Complete addition for a = -1 (Hisil-Wong-Carter-Dawson 2008, "add-2008-hwcd-3"); it also
    # doubles, so one formula serves the whole ladder.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _scalar_mult(k: int, p: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    # Fixed 256 iterations of double-and-always-add, so the operation count does not depend on k.
    q = _IDENTITY
    for i in reversed(range(256)):
        q = _point_add(q, q)
        t = _point_add(q, p)
        if (k >> i) & 1:
            q = t
    return q


def _encode_point(p: tuple[int, int, int, int]) -> bytes:
    x, y, z, _ = p
    zinv = pow(z, _P - 2, _P)
    x, y = x * zinv % _P, y * zinv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _secret_scalar(az: bytes) -> int:
    a = bytearray(az[:32])
    a[0] &= 248
    a[31] &= 63
    a[31] |= 64
    return int.from_bytes(a, "little")


def ed25519_public_key(password: bytes) -> bytes:
    """The 32-byte Ed25519 public key MariaDB derives from `password` (any length)."""
    return _encode_point(_scalar_mult(_secret_scalar(hashlib.sha512(password).digest()), _B))


def ed25519_auth_string(password: bytes) -> str:
    """What MariaDB stores for `IDENTIFIED VIA ed25519` and `ed25519_password()` returns:
    the public key in base64 without the '=' padding, 43 characters."""
    return base64.b64encode(ed25519_public_key(password)).decode("ascii").rstrip("=")


def ed25519_sign(password: bytes, nonce: bytes) -> bytes:
    """The client_ed25519 answer: the 64-byte signature R || S of the server's nonce."""
    az = hashlib.sha512(password).digest()
    a = _secret_scalar(az)
    pub = _encode_point(_scalar_mult(a, _B))
    r = int.from_bytes(hashlib.sha512(az[32:] + nonce).digest(), "little") % _L
    big_r = _encode_point(_scalar_mult(r, _B))
    h = int.from_bytes(hashlib.sha512(big_r + pub + nonce).digest(), "little") % _L
    s = (r + h * a) % _L
    return big_r + s.to_bytes(32, "little")


# --------------------------------------------------------------------------------------------
# mysql_clear_password


def clear_password_payload(password: bytes) -> bytes:
    """The mysql_clear_password answer (and the TLS full path of caching_sha2): password + NUL."""
    if b"\0" in password:
        raise ValueError("a NUL-terminated password cannot contain NUL")
    return password + b"\0"
