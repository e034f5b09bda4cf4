"""gateway.oidc: JWT access-token verification against a real test issuer whose JWKS is served over
local HTTPS (tests/support/oidc.py). Async tests run under trio.run; time is a fake clock."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgspec
import pytest
import trio

from sqlward.gateway.config import IssuerConfig
from sqlward.gateway.oidc import IssuerSetupError, TokenError, TokenVerifier, VerifiedToken
from tests.support.oidc import TestIssuer, actor_chain, b64url

NOW = float(int(time.time()))
RS256_HEADER = b64url(b'{"alg":"RS256"}')


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    """One served issuer for the tests that do not change its keys."""
    issuer = TestIssuer(tmp_path_factory.mktemp("idp"))
    with issuer:
        yield issuer


@pytest.fixture
def fresh_idp(tmp_path: Path) -> TestIssuer:
    """An issuer of its own, for tests that rotate keys or break the server."""
    issuer = TestIssuer(tmp_path / "fresh", issuer="https://fresh.test")
    with issuer:
        yield issuer


def issuer_config(idp: TestIssuer, *, source: str = "url", **overrides: Any) -> IssuerConfig:
    fields: dict[str, Any] = {"issuer": idp.issuer, "audiences": (idp.audience,)}
    if source == "url":
        fields.update(jwks_url=idp.jwks_url, jwks_ca_file=str(idp.ca_file))
    else:
        fields.update(jwks_file=str(idp.jwks_file))
    fields.update(overrides)
    return IssuerConfig(**fields)


def verify(verifier: TokenVerifier, token: str) -> VerifiedToken:
    return run(lambda: verifier.verify(token))


def refused(verifier: TokenVerifier, token: str, *fragments: str) -> str:
    with pytest.raises(TokenError) as info:
        verify(verifier, token)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert token[:40] not in message  # the token itself is never quoted back
    return message


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(idp: TestIssuer, clock: Clock) -> TokenVerifier:
    return TokenVerifier([issuer_config(idp)], clock=clock)


# ---------------------------------------------------------------------------------------------
# Good tokens


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_good_token_each_algorithm(idp: TestIssuer, verifier: TokenVerifier, alg: str) -> None:
    token = idp.mint(alg=alg, now=NOW, groups=["dba", "ops"], name="Alice")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation or security-warning noise, EdDSA included
        verified = verify(verifier, token)
    assert verified.subject == "alice@example.com"
    assert verified.groups == ("dba", "ops") and verified.actor == ()
    assert verified.issuer == "https://idp.test" and verified.audience == "sqlward"
    assert verified.expires_at == NOW + 300
    assert verified.claims["name"] == "Alice" and verified.claims["iss"] == "https://idp.test"


def test_good_token_from_jwks_file(idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(idp, source="file")], clock=clock)
    assert verify(verifier, idp.mint(alg="ES256", now=NOW)).subject == "alice@example.com"


def test_audience_list_and_several_configured_audiences(idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(idp, audiences=("other", "sqlward"))], clock=clock)
    assert verify(verifier, idp.mint(now=NOW, aud=["api", "sqlward"])).audience == "sqlward"
    assert verify(verifier, idp.mint(now=NOW, aud="other")).audience == "other"


def test_token_without_kid_tries_the_keys_that_fit(idp: TestIssuer, verifier: TokenVerifier) -> None:
    assert verify(verifier, idp.mint(alg="ES256", kid=None, now=NOW)).subject == "alice@example.com"


def test_surrounding_whitespace_is_ignored(idp: TestIssuer, verifier: TokenVerifier) -> None:
    assert verify(verifier, f"  {idp.mint(now=NOW)}\n").subject == "alice@example.com"


def test_unknown_header_parameters_are_tolerated(idp: TestIssuer, verifier: TokenVerifier) -> None:
    token = idp.mint(now=NOW, header={"typ": "at+jwt", "x-vendor": "1"})
    assert verify(verifier, token).subject == "alice@example.com"


# ---------------------------------------------------------------------------------------------
# Time


def test_expired(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW - 600, ttl=60), "token expired at", "ago")


def test_expired_within_leeway_is_accepted(idp: TestIssuer, verifier: TokenVerifier) -> None:
    assert verify(verifier, idp.mint(now=NOW - 310, ttl=300)).expires_at == NOW - 10  # leeway 30 s


def test_leeway_is_configurable(idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(idp, leeway_seconds=0)], clock=clock)
    refused(verifier, idp.mint(now=NOW - 310, ttl=300), "token expired")


def test_expiry_follows_the_clock(idp: TestIssuer, verifier: TokenVerifier, clock: Clock) -> None:
    token = idp.mint(now=NOW, ttl=60)
    assert verify(verifier, token)
    clock.t = NOW + 60 + 30  # exactly exp + leeway
    refused(verifier, token, "token expired")


def test_missing_exp(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, exp=None), "no exp", "expire")


@pytest.mark.parametrize("exp", ["soon", True, [1]])
def test_exp_not_a_number(idp: TestIssuer, verifier: TokenVerifier, exp: Any) -> None:
    refused(verifier, idp.mint(now=NOW, exp=exp), "exp must be a number")


def test_not_yet_valid_nbf(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, nbf=NOW + 120), "not valid yet", "nbf")
    assert verify(verifier, idp.mint(now=NOW, nbf=NOW + 20))  # within leeway


def test_issued_in_the_future(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW + 600), "not valid yet", "issued in the future")


# ---------------------------------------------------------------------------------------------
# Audience and issuer


def test_wrong_audience(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, aud="billing-api"), "audience ('billing-api') is not accepted", "expected sqlward")
    refused(verifier, idp.mint(now=NOW, aud=["a", "b"]), "audience ('a', 'b')")


def test_missing_or_malformed_audience(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, aud=None), "no aud")
    refused(verifier, idp.mint(now=NOW, aud=[1]), "aud must be a string or a list of strings")


def test_wrong_issuer(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, iss="https://evil.test"), "issuer 'https://evil.test' is not trusted")


def test_missing_issuer(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, iss=None), "no iss")


# ---------------------------------------------------------------------------------------------
# Signatures and algorithms


def test_bad_signature(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint_bad_signature(now=NOW), "bad signature", "https://idp.test")


def test_tampered_payload(idp: TestIssuer, verifier: TokenVerifier) -> None:
    header, _, signature = idp.mint(now=NOW, sub="alice@example.com").split(".")
    forged_payload = idp.mint(now=NOW, sub="root@example.com").split(".")[1]
    refused(verifier, f"{header}.{forged_payload}.{signature}", "bad signature")


def test_signature_not_base64(idp: TestIssuer, verifier: TokenVerifier) -> None:
    header, payload, _ = idp.mint(now=NOW).split(".")
    refused(verifier, f"{header}.{payload}.!!!", "bad signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(idp: TestIssuer, verifier: TokenVerifier, alg: str) -> None:
    refused(verifier, idp.mint_unsigned(alg=alg), "alg: none", "never accepted")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key(idp: TestIssuer, verifier: TokenVerifier, alg: str) -> None:
    refused(verifier, idp.mint_hs256_with_public_key(alg=alg), "shared secret", alg, "never accepted")


def test_hs_is_refused_even_if_configured(idp: TestIssuer, clock: Clock) -> None:
    # The config loader refuses HS* in `algorithms`; a hand-built config still cannot enable it.
    verifier = TokenVerifier([issuer_config(idp, algorithms=("HS256", "RS256"))], clock=clock)
    refused(verifier, idp.mint_hs256_with_public_key(), "shared secret")


def test_algorithm_not_in_allow_list(idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(idp, algorithms=("ES256",))], clock=clock)
    refused(verifier, idp.mint(alg="RS256", now=NOW), "algorithm 'RS256' is not allowed for issuer https://idp.test", "allowed: ES256")
    assert verify(verifier, idp.mint(alg="ES256", now=NOW))


def test_kid_of_a_key_that_cannot_verify_the_alg(idp: TestIssuer, verifier: TokenVerifier) -> None:
    # ES256 header, but the kid names the RSA key: the key is not used with another algorithm.
    token = idp.mint(alg="ES256", kid=idp.kid("RS256"), now=NOW)
    refused(verifier, token, "bad signature", "cannot verify ES256")


def test_missing_alg(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, header={"alg": None}), "no alg")


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("", "no token given"),
        ("hunter2", "not a JWT"),
        ("a.b", "not a JWT"),
        ("a.b.c.d.e", "encrypted tokens (JWE) are not supported"),
        ("!!.e30.x", "header is not base64url-encoded JSON"),
        (f"{b64url(b'not json')}.e30.x", "header is not base64url-encoded JSON"),
        (f"{b64url(b'[1]')}.e30.x", "header is not a JSON object"),
        (f"{b64url(b'{}')}.e30.x", "no alg"),
        (f"{RS256_HEADER}.{b64url(b'[]')}.x", "payload is not a JSON object"),
        (f"{RS256_HEADER}..x", "payload is not base64url-encoded JSON"),
        ("x" * 20000, "longer than"),
    ],
)
def test_malformed_tokens(verifier: TokenVerifier, token: str, fragment: str) -> None:
    with pytest.raises(TokenError) as info:
        verify(verifier, token)
    assert fragment in str(info.value)


def test_keys_carried_by_the_token_are_not_trusted(idp: TestIssuer, verifier: TokenVerifier) -> None:
    from joserfc.jwk import RSAKey

    attacker = RSAKey.generate_key(2048, parameters={"kid": "attacker"})
    token = idp.mint(now=NOW, key=attacker, header={"jwk": attacker.as_dict(private=False), "jku": "https://evil/jwks"})
    refused(verifier, token, "unknown signing key (kid 'attacker')")


def test_unencoded_payload_header_refused(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, header={"b64": False, "crit": ["b64"]}), "b64")


def test_kid_must_be_a_string(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, kid=7), "kid must be a string")


# ---------------------------------------------------------------------------------------------
# Key rotation and the JWKS cache


def test_unknown_kid_then_rotation(fresh_idp: TestIssuer, clock: Clock) -> None:
    idp = fresh_idp
    verifier = TokenVerifier([issuer_config(idp, jwks_min_refetch_seconds=30)], clock=clock)
    assert verify(verifier, idp.mint(now=NOW))
    assert idp.requests == 1

    # The identity provider rotates (the new key is published): one refetch finds it.
    clock.t += 31
    idp.rotate("RS256", retire_old=True)
    assert verify(verifier, idp.mint(now=clock.t))
    assert idp.requests == 2 == verifier.fetch_count(idp.issuer)

    # A token under a kid nobody published yet, within the rate-limit window: no refetch.
    token, kid = idp.mint_with_unknown_key(now=clock.t)
    refused(verifier, token, f"unknown signing key (kid '{kid}')", "https://fresh.test")
    assert idp.requests == 2
    # Published now, but still within the window: still no refetch, still refused.
    idp.publish(kid)
    clock.t += 10
    refused(verifier, token, "unknown signing key")
    assert idp.requests == 2
    # After the window the next unknown kid refetches and the key is found.
    clock.t += 21
    assert verify(verifier, token).subject == "alice@example.com"
    assert idp.requests == 3
    # The retired key is gone from the JWKS: its tokens fail once the cache has been refreshed.


def test_unknown_kid_refetch_that_still_does_not_find_it(fresh_idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(fresh_idp)], clock=clock)
    assert verify(verifier, fresh_idp.mint(now=NOW))
    clock.t += 60
    token, _ = fresh_idp.mint_with_unknown_key(now=clock.t)
    refused(verifier, token, "unknown signing key")
    assert fresh_idp.requests == 2  # refetched once
    refused(verifier, token, "unknown signing key")
    assert fresh_idp.requests == 2  # and not again within the window


def test_rotation_with_a_jwks_file(tmp_path: Path, clock: Clock) -> None:
    idp = TestIssuer(tmp_path, issuer="https://file.test")  # not served: keys from the file
    verifier = TokenVerifier([issuer_config(idp, source="file")], clock=clock)
    assert verify(verifier, idp.mint(now=NOW))
    clock.t += 31
    idp.rotate("ES256")
    assert verify(verifier, idp.mint(alg="ES256", now=clock.t))
    assert verifier.fetch_count(idp.issuer) == 2


def test_cache_is_refreshed_after_refresh_seconds(fresh_idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(fresh_idp, jwks_refresh_seconds=100)], clock=clock)
    old_kid = fresh_idp.kid("RS256")
    old_token = fresh_idp.mint(now=NOW, ttl=3600)
    assert verify(verifier, old_token)
    clock.t += 50
    assert verify(verifier, fresh_idp.mint(now=clock.t))
    assert fresh_idp.requests == 1  # cached
    fresh_idp.rotate("RS256", retire_old=True)
    clock.t += 51
    refused(verifier, old_token, f"unknown signing key (kid '{old_kid}')")  # the refresh dropped it
    assert fresh_idp.requests >= 2


def test_concurrent_verifications_fetch_once(fresh_idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(fresh_idp)], clock=clock)
    tokens = [fresh_idp.mint(alg=alg, now=NOW) for alg in ("RS256", "ES256", "EdDSA") for _ in range(4)]
    results: list[VerifiedToken] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for token in tokens:
                nursery.start_soon(lambda t=token: _append(results, verifier.verify(t)))

    run(main)
    assert len(results) == len(tokens) and fresh_idp.requests == 1


async def _append(results: list[VerifiedToken], coro: Awaitable[VerifiedToken]) -> None:
    results.append(await coro)


def test_keys_for_encryption_and_symmetric_keys_are_ignored(tmp_path: Path, clock: Clock) -> None:
    idp = TestIssuer(tmp_path, algorithms=("RS256",))
    jwks = idp.jwks()
    rsa = dict(jwks["keys"][0])
    jwks["keys"] = [
        {**rsa, "use": "enc"},  # same kid, but for encryption
        {"kty": "oct", "k": b64url(b"secret"), "kid": "sym"},
        {"kty": "nonsense", "kid": "x"},
        "not a key",
    ]
    path = tmp_path / "mixed.json"
    path.write_text(msgspec.json.encode(jwks).decode())
    verifier = TokenVerifier([issuer_config(idp, source="file", jwks_file=str(path))], clock=clock)
    refused(verifier, idp.mint(now=NOW), "unknown signing key")
    jwks["keys"].append(rsa)
    path.write_text(msgspec.json.encode(jwks).decode())
    clock.t += 31
    assert verify(verifier, idp.mint(now=clock.t))


# ---------------------------------------------------------------------------------------------
# JWKS failures


def test_jwks_url_down(fresh_idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(fresh_idp)], clock=clock)
    token = fresh_idp.mint(now=NOW)
    fresh_idp.stop()
    refused(verifier, token, "cannot fetch the signing keys of issuer https://fresh.test", "connection refused")


def test_jwks_http_error_is_rate_limited_and_recovers(fresh_idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(fresh_idp, jwks_min_refetch_seconds=30)], clock=clock)
    token = fresh_idp.mint(now=NOW, ttl=3600)
    fresh_idp.fail_status = 503
    refused(verifier, token, "cannot fetch the signing keys", "HTTP 503")
    refused(verifier, token, "HTTP 503")
    assert fresh_idp.requests == 1  # the failure is remembered for the window
    fresh_idp.fail_status = None
    clock.t += 31
    assert verify(verifier, token)
    assert fresh_idp.requests == 2


def test_failed_refresh_never_falls_back_to_stale_keys(fresh_idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(fresh_idp, jwks_refresh_seconds=60)], clock=clock)
    token = fresh_idp.mint(now=NOW, ttl=3600)
    assert verify(verifier, token)
    fresh_idp.fail_status = 500
    clock.t += 61
    refused(verifier, token, "HTTP 500")


def test_jwks_server_not_trusted(fresh_idp: TestIssuer, clock: Clock) -> None:
    config = msgspec.structs.replace(issuer_config(fresh_idp), jwks_ca_file="")  # system store
    verifier = TokenVerifier([config], clock=clock)
    refused(verifier, fresh_idp.mint(now=NOW), "cannot fetch the signing keys", "TLS certificate not trusted")
    assert fresh_idp.requests == 0


def test_jwks_not_json(tmp_path: Path, clock: Clock) -> None:
    idp = TestIssuer(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("<html>")
    verifier = TokenVerifier([issuer_config(idp, source="file", jwks_file=str(bad))], clock=clock)
    refused(verifier, idp.mint(now=NOW), "signing keys of issuer https://idp.test are not JSON")
    bad.write_text('{"no": "keys"}')
    clock.t += 31
    refused(verifier, idp.mint(now=clock.t), "not a JWK set")
    bad.unlink()
    clock.t += 31
    refused(verifier, idp.mint(now=clock.t), "cannot read the signing keys", "No such file")


def test_unloadable_ca_file(tmp_path: Path, idp: TestIssuer) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(IssuerSetupError) as info:
        TokenVerifier([issuer_config(idp, issuer="https://a"), issuer_config(idp, jwks_ca_file=str(bad))])
    assert info.value.index == 1 and "cannot load jwks_ca_file" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Claims: subject, groups, actors


def test_subject_claim_email(idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(idp, subject_claim="email")], clock=clock)
    verified = verify(verifier, idp.mint(now=NOW, sub="0b5e2f7c", email="alice@example.com"))
    assert verified.subject == "alice@example.com"
    refused(verifier, idp.mint(now=NOW, sub="0b5e2f7c"), "no email claim", "https://idp.test")
    refused(verifier, idp.mint(now=NOW, email=""), "no email claim")


def test_missing_sub(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, sub=None), "no sub claim")


@pytest.mark.parametrize(
    ("groups", "expected"),
    [(["dba", "ops"], ("dba", "ops")), ("dba  ops\tsre", ("dba", "ops", "sre")), ("", ()), ([], ()), (None, ())],
)
def test_groups_list_or_string(idp: TestIssuer, verifier: TokenVerifier, groups: Any, expected: tuple[str, ...]) -> None:
    assert verify(verifier, idp.mint(now=NOW, groups=groups)).groups == expected


@pytest.mark.parametrize("groups", [{"dba": True}, [1, 2], 7])
def test_groups_of_another_type(idp: TestIssuer, verifier: TokenVerifier, groups: Any) -> None:
    refused(verifier, idp.mint(now=NOW, groups=groups), "groups claim must be a list of strings or a space-separated string")


def test_groups_claim_configurable_and_dotted_path(idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier([issuer_config(idp, groups_claim="scope")], clock=clock)
    assert verify(verifier, idp.mint(now=NOW, scope="read write")).groups == ("read", "write")
    verifier = TokenVerifier([issuer_config(idp, groups_claim="realm_access.roles")], clock=clock)
    assert verify(verifier, idp.mint(now=NOW, realm_access={"roles": ["dba"]})).groups == ("dba",)
    verifier = TokenVerifier([issuer_config(idp, groups_claim="https://example.com/groups")], clock=clock)
    assert verify(verifier, idp.mint(now=NOW, **{"https://example.com/groups": ["x"]})).groups == ("x",)


def test_actor_chain_from_act(idp: TestIssuer, verifier: TokenVerifier) -> None:
    assert verify(verifier, idp.mint(now=NOW, act={"sub": "runbook-7"})).actor == ("runbook-7",)
    nested = actor_chain("agent-claude", "runbook-7", "scheduler")
    assert nested == {"sub": "agent-claude", "act": {"sub": "runbook-7", "act": {"sub": "scheduler"}}}
    verified = verify(verifier, idp.mint(now=NOW, act=nested))
    assert verified.subject == "alice@example.com"
    assert verified.actor == ("agent-claude", "runbook-7", "scheduler")


def test_actor_named_by_client_id(idp: TestIssuer, verifier: TokenVerifier) -> None:
    assert verify(verifier, idp.mint(now=NOW, act={"client_id": "ci-bot"})).actor == ("ci-bot",)


@pytest.mark.parametrize("act", ["runbook-7", {"iss": "x"}, {"sub": "a", "act": "b"}])
def test_malformed_act(idp: TestIssuer, verifier: TokenVerifier, act: Any) -> None:
    refused(verifier, idp.mint(now=NOW, act=act), "act (actor)")


def test_act_chain_depth_is_bounded(idp: TestIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, idp.mint(now=NOW, act=actor_chain(*(f"a{i}" for i in range(20)))), "deeper than")


# ---------------------------------------------------------------------------------------------
# Several issuers


def test_two_issuers(idp: TestIssuer, fresh_idp: TestIssuer, clock: Clock) -> None:
    verifier = TokenVerifier(
        [issuer_config(idp), issuer_config(fresh_idp, source="file", subject_claim="email", audiences=("db",))],
        clock=clock,
    )
    assert verifier.issuers == ("https://idp.test", "https://fresh.test")
    a = verify(verifier, idp.mint(now=NOW, sub="alice"))
    b = verify(verifier, fresh_idp.mint(now=NOW, aud="db", email="bob@example.com"))
    assert (a.subject, a.issuer) == ("alice", "https://idp.test")
    assert (b.subject, b.issuer, b.audience) == ("bob@example.com", "https://fresh.test", "db")
    # Each issuer's own settings: fresh's audience is not idp's.
    refused(verifier, fresh_idp.mint(now=NOW, email="bob@example.com"), "expected db")
    # A token claiming one issuer but signed with the other's key, even under a kid of its own.
    forged = fresh_idp.mint(now=NOW, iss="https://idp.test")
    refused(verifier, forged, "unknown signing key")
    forged = fresh_idp.mint(now=NOW, iss="https://idp.test", kid=idp.kid("RS256"))
    refused(verifier, forged, "bad signature", "https://idp.test")
