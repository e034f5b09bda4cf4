"""The SCRAM-SHA-256 server exchange (adapters/postgres/scram.py) against real clients' messages:
scramp's client, a hand-rolled libpq-style client (empty user name, proof computed here per
RFC 5802), and the RFC 7677 test vector."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlward.adapters.base import ScramSecret
from sqlward.adapters.postgres.scram import ScramError, ScramExchange, mock_secret

MECHS = ["SCRAM-SHA-256"]
PASSWORD = "correct horse battery staple"


def make_secret(password: str, salt: bytes | None = None) -> ScramSecret:
    salt_, stored_key, server_key, iterations = scramp.ScramMechanism().make_auth_info(
        password, iteration_count=4096, salt=salt
    )
    return ScramSecret(salt=salt_, iterations=iterations, stored_key=stored_key, server_key=server_key)


@pytest.fixture(scope="module")
def secret() -> ScramSecret:
    return make_secret(PASSWORD)


# --------------------------------------------------------------------------------------------
# A libpq-style client, written from RFC 5802 section 3 with hashlib/hmac


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def parse_server_first(server_first: str) -> tuple[str, bytes, int]:
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    return attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])


class LibpqClient:
    """What libpq sends: client-first `n,,n=,r=<nonce>` (the user comes from the StartupMessage),
    or `y,,` when it supports channel binding but the server did not offer -PLUS."""

    def __init__(self, password: str, *, gs2: str = "n,,", nonce: str = "fyko+d2lbbFgONRv9qkxdawL"):
        self.password = password
        self.gs2 = gs2
        self.client_first_bare = f"n=,r={nonce}"
        self.client_nonce = nonce

    def first(self) -> str:
        return self.gs2 + self.client_first_bare

    def final(self, server_first: str, *, c: str | None = None, r: str | None = None) -> str:
        nonce, salt, iterations = parse_server_first(server_first)
        assert nonce.startswith(self.client_nonce) and len(nonce) > len(self.client_nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={c if c is not None else b64(self.gs2.encode())},r={r if r is not None else nonce}"
        auth_message = f"{self.client_first_bare},{server_first},{without_proof}".encode()
        client_signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.expected_server_final = "v=" + b64(hmac.digest(server_key, auth_message, "sha256"))
        self.without_proof = without_proof
        return f"{without_proof},p={b64(proof)}"


# --------------------------------------------------------------------------------------------
# Successful exchanges


def test_rfc7677_test_vector():
    secret = make_secret("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    ex = ScramExchange(secret, nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert ex.first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == (
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = ex.final(
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert final == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.mark.parametrize("username", ["alice", "jürgen", "a,b=c"])
def test_scramp_client(secret, username):
    client = scramp.ScramClient(MECHS, username, PASSWORD)
    ex = ScramExchange(secret)
    client.set_server_first(ex.first(client.get_client_first()))
    server_final = ex.final(client.get_client_final())
    client.set_server_final(server_final)  # raises ScramException if the server signature is wrong


def test_server_first_message_format(secret):
    ex = ScramExchange(secret, nonce="SERVERNONCE")
    server_first = ex.first("n,,n=,r=CLIENTNONCE")
    assert server_first == f"r=CLIENTNONCESERVERNONCE,s={b64(secret.salt)},i=4096"


def test_server_nonce_is_random(secret):
    n1 = parse_server_first(ScramExchange(secret).first("n,,n=,r=abc"))[0]
    n2 = parse_server_first(ScramExchange(secret).first("n,,n=,r=abc"))[0]
    assert n1.startswith("abc") and n2.startswith("abc") and n1 != n2
    assert len(n1) - 3 >= 18  # at least 18 random bytes of server nonce, base64


@pytest.mark.parametrize(("gs2", "c"), [("n,,", "biws"), ("y,,", "eSws")], ids=["n", "y"])
def test_libpq_client_empty_user(secret, gs2, c):
    client = LibpqClient(PASSWORD, gs2=gs2)
    ex = ScramExchange(secret)
    client_first = client.first()
    assert client_first.startswith(gs2 + "n=,r=")
    final = client.final(ex.first(client_first))
    assert final.startswith(f"c={c},")
    assert ex.final(final) == client.expected_server_final


def test_libpq_client_against_scramp_client_verifier(secret):
    # Same secret, both clients: the verifier is the only shared state.
    for client in (LibpqClient(PASSWORD), LibpqClient(PASSWORD, gs2="y,,")):
        ex = ScramExchange(secret)
        assert ex.final(client.final(ex.first(client.first()))) == client.expected_server_final


# --------------------------------------------------------------------------------------------
# Failures


def test_wrong_password_scramp(secret):
    client = scramp.ScramClient(MECHS, "alice", "wrong")
    ex = ScramExchange(secret)
    client.set_server_first(ex.first(client.get_client_first()))
    with pytest.raises(ScramError):
        ex.final(client.get_client_final())


def test_wrong_password_libpq(secret):
    client = LibpqClient("wrong")
    ex = ScramExchange(secret)
    with pytest.raises(ScramError):
        ex.final(client.final(ex.first(client.first())))


@pytest.mark.parametrize("password", [PASSWORD, "", "wrong", "pencil"])
def test_mock_secret_never_verifies(password):
    for client in (scramp.ScramClient(MECHS, "nobody", password), None):
        ex = ScramExchange(mock_secret())
        if client is None:
            lp = LibpqClient(password)
            with pytest.raises(ScramError):
                ex.final(lp.final(ex.first(lp.first())))
        else:
            server_first = ex.first(client.get_client_first())
            _, salt, iterations = parse_server_first(server_first)
            assert len(salt) == 16 and iterations == 4096  # looks like a real verifier
            client.set_server_first(server_first)
            with pytest.raises(ScramError):
                ex.final(client.get_client_final())


def test_mock_secrets_are_random():
    a, b = mock_secret(), mock_secret()
    assert a.salt != b.salt and a.stored_key != b.stored_key and a.server_key != b.server_key
    assert len(a.stored_key) == len(a.server_key) == 32


def test_tampered_nonce(secret):
    # The proof is computed over the tampered message too: the nonce check must catch it.
    client = LibpqClient(PASSWORD)
    ex = ScramExchange(secret)
    server_first = ex.first(client.first())
    nonce = parse_server_first(server_first)[0]
    for bad in (client.client_nonce, nonce[:-1], nonce + "x", nonce[:-1] + ("A" if nonce[-1] != "A" else "B")):
        with pytest.raises(ScramError):
            ex.final(client.final(server_first, r=bad))


def test_nonce_of_another_exchange(secret):
    client = LibpqClient(PASSWORD)
    ex1, ex2 = ScramExchange(secret), ScramExchange(secret)
    sf1 = ex1.first(client.first())
    ex2.first(client.first())
    with pytest.raises(ScramError):
        ex2.final(client.final(sf1))


@pytest.mark.parametrize(
    ("gs2", "c"),
    [
        ("n,,", "eSws"),  # claims y,, after sending n,,
        ("y,,", "biws"),  # claims n,, after sending y,,
        ("n,,", b64(b"p=tls-server-end-point,," + b"\x00" * 32)),  # smuggles channel binding data
        ("n,,", ""),
        ("n,,", "biws=="),
    ],
    ids=["n-then-y", "y-then-n", "p-data", "empty", "padded"],
)
def test_tampered_channel_binding(secret, gs2, c):
    client = LibpqClient(PASSWORD, gs2=gs2)
    ex = ScramExchange(secret)
    with pytest.raises(ScramError):
        ex.final(client.final(ex.first(client.first()), c=c))


def test_missing_channel_binding_attribute(secret):
    client = LibpqClient(PASSWORD)
    ex = ScramExchange(secret)
    server_first = ex.first(client.first())
    final = client.final(server_first)
    with pytest.raises(ScramError):
        ex.final(final.replace(f"{client.without_proof.split(',')[0]},", "", 1))


@pytest.mark.parametrize(
    "client_first",
    [
        "p=tls-server-end-point,,n=,r=abc",
        "p=tls-unique,,n=,r=abc",
    ],
)
def test_channel_binding_flag_p_refused(secret, client_first):
    with pytest.raises(ScramError):
        ScramExchange(secret).first(client_first)


@pytest.mark.parametrize(
    "client_first",
    [
        "",
        "n",
        "n,",
        "x,,n=,r=abc",
        "N,,n=,r=abc",
        "n,,",
        "n,,garbage",
        "n,,r=abc",
        "n,,n=alice",
        "n,,n=,r=",
        "n,,r=abc,n=",
        "n,,m=ext,n=,r=abc",
        "n,,n=,r=abc,m=ext",
        "n,,n=,,r=abc",
    ],
)
def test_malformed_client_first(secret, client_first):
    with pytest.raises(ScramError):
        ScramExchange(secret).first(client_first)


def _final_parts(secret):
    client = LibpqClient(PASSWORD)
    ex = ScramExchange(secret)
    final = client.final(ex.first(client.first()))
    return ex, client.without_proof, final.rsplit(",p=", 1)[1]


def test_missing_proof(secret):
    ex, without_proof, _ = _final_parts(secret)
    with pytest.raises(ScramError):
        ex.final(without_proof)


@pytest.mark.parametrize(
    "proof",
    ["", "!!!!", "abc", "abc=", "a b=", "ZGVhZGJlZWY", "é" * 44, "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=\n"],
    ids=["empty", "symbols", "short-padding", "bad-padding", "space", "unpadded", "non-ascii", "newline"],
)
def test_bad_base64_proof(secret, proof):
    ex, without_proof, _ = _final_parts(secret)
    with pytest.raises(ScramError):
        ex.final(f"{without_proof},p={proof}")


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_proof_of_wrong_length(secret, size):
    ex, without_proof, _ = _final_parts(secret)
    with pytest.raises(ScramError):
        ex.final(f"{without_proof},p={b64(bytes(size))}")


def test_flipped_proof_bit(secret):
    ex, without_proof, proof = _final_parts(secret)
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    with pytest.raises(ScramError):
        ex.final(f"{without_proof},p={b64(bytes(raw))}")


def test_final_before_first(secret):
    with pytest.raises(ScramError):
        ScramExchange(secret).final("c=biws,r=abc,p=" + b64(bytes(32)))


def test_first_twice(secret):
    ex = ScramExchange(secret)
    ex.first("n,,n=,r=abc")
    with pytest.raises(ScramError):
        ex.first("n,,n=,r=def")


@pytest.mark.parametrize("first_outcome", ["success", "failure"])
def test_final_after_the_exchange_ended(secret, first_outcome):
    client = LibpqClient(PASSWORD)
    ex = ScramExchange(secret)
    good = client.final(ex.first(client.first()))
    if first_outcome == "success":
        ex.final(good)
    else:
        with pytest.raises(ScramError):
            ex.final(good[:-4] + "AAA=")
    with pytest.raises(ScramError):
        ex.final(good)


# --------------------------------------------------------------------------------------------
# Arbitrary client messages raise ScramError, nothing else


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=120))
def test_arbitrary_messages_only_raise_scram_error(client_first, client_final):
    ex = ScramExchange(mock_secret())
    try:
        ex.first(client_first)
    except ScramError:
        ex = ScramExchange(mock_secret())
        ex.first("n,,n=,r=abc")
    with pytest.raises(ScramError):
        ex.final(client_final)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["n,,", "y,,"]), st.text(max_size=60), st.text(max_size=60))
def test_arbitrary_proofs_and_attributes_only_raise_scram_error(gs2, middle, proof):
    # Well-formed up to the proof, so the checks past the nonce are reached.
    ex = ScramExchange(mock_secret(), nonce="SERVER")
    ex.first(gs2 + "n=,r=CLIENT")
    c = b64(gs2.encode())
    for final in (
        f"c={c},r=CLIENTSERVER,p={proof}",
        f"c={c},r=CLIENTSERVER,{middle},p={proof}",
        f"{middle},p={proof}",
    ):
        with pytest.raises(ScramError):
            ex.final(final)
