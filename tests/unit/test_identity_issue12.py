"""Issue 12, identity and tokens: one canonical form of a name, the issuer as part of an OIDC
identity, token expiry with the login leeway, JWKS refetch and locking, `typ`, refusals that do
not tell static identities apart, and the advice a refusal gives. Tokens come from a real test
issuer whose JWKS is served over local HTTPS (tests/support/oidc.py)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from sqlward.adapters.base import AuthError
from sqlward.adapters.identity import canonical_name, name_problem
from sqlward.audit.events import Who
from sqlward.gateway.config import AccessRule, Config, ConfigError, load_config
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.policy.model import Identity, TargetInfo
from tests.support.auditsink import ListSink
from tests.support.oidc import TestIssuer, actor_chain
from tests.unit.test_gatekeeper import CONFIG, ENV, StandInEngine

PROD = TargetInfo(name="app-prod", protocol="postgres", environment="production")


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    issuer = TestIssuer(tmp_path_factory.mktemp("i12-idp"))
    with issuer:
        yield issuer


@pytest.fixture(scope="module")
def other_idp(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    issuer = TestIssuer(tmp_path_factory.mktemp("i12-other"), issuer="https://other.test", name="other")
    with issuer:
        yield issuer


def write_config(tmp_path: Path, extra: str = "", base: str = CONFIG) -> Path:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "target.pw").write_text("FileS3cret\n")
    (tmp_path / "bot.secret").write_text("BotS3cret\n")
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(base) + "\n" + textwrap.dedent(extra))
    return path


def make_gk(tmp_path: Path, extra: str = "", *, sink: ListSink | None = None, **kw: Any) -> Gatekeeper:
    config = load_config(str(write_config(tmp_path, extra)), env=ENV)
    kw.setdefault("engine", StandInEngine())
    if kw["engine"] == "real":
        del kw["engine"]  # the policy engine the config describes
    return Gatekeeper.from_config(config, audit_sink=sink or ListSink(), **kw)


@pytest.fixture
def gk(tmp_path: Path, idp: TestIssuer) -> Gatekeeper:
    gatekeeper = make_gk(tmp_path, idp.oidc_toml())
    yield gatekeeper
    gatekeeper.close()


def authenticate(gk: Gatekeeper, username: str, token: str, **kw: bool) -> Identity:
    kw.setdefault("tls", True)
    kw.setdefault("loopback", False)
    return trio.run(lambda: gk.authenticate_token(username, token, **kw))


def refused(gk: Gatekeeper, username: str, token: str, *fragments: str, **kw: bool) -> str:
    with pytest.raises(AuthError) as info:
        authenticate(gk, username, token, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------
# A. One canonical form of a name


SPELLINGS_OF_ALICE = [
    "ALICE",  # another case
    "Alice",
    "ａｌｉｃｅ",  # fullwidth letters (NFKC: alice)
    "ＡＬＩＣＥ",
    "alice ",  # trailing space
    " alice",
    "alice\u00a0",  # no-break space
    "al\u200bice",  # zero-width space
    "alice\u200d",  # zero-width joiner
    "\u202ealice",  # right-to-left override
    "\uff41lice",  # one fullwidth letter
]


def test_canonical_form() -> None:
    for name in SPELLINGS_OF_ALICE:
        assert canonical_name(name) == "alice", repr(name)
    assert canonical_name("Bob@Example.COM") == "bob@example.com"
    assert canonical_name("straße") == canonical_name("STRASSE")
    assert canonical_name("\u212a") == "k"  # Kelvin sign
    assert name_problem("alice") is None and name_problem("Bob@Example.com") is None
    assert name_problem("spiffe://example.org/ns/pay/sa/api") is None
    for bad in ("al\u200bice", "alice ", " alice", "alice\u00a0", "\u202ealice", "a\x00b", "a\u2028b", "", "\u3164", "a\ufe0fb"):
        assert name_problem(bad), repr(bad)


@pytest.mark.parametrize("spelling", [s for s in SPELLINGS_OF_ALICE if s != "alice"])
def test_token_can_never_log_in_under_a_static_name_in_any_spelling(gk: Gatekeeper, idp: TestIssuer, spelling: str) -> None:
    """A token whose sub is a static identity's name in another spelling, presented under that
    spelling, is refused (the user name alone already names the static identity)."""
    token = idp.mint(sub=spelling)
    with pytest.raises(AuthError):
        authenticate(gk, spelling, token)


@pytest.mark.parametrize("spelling", ["ALICE", "ａｌｉｃｅ", "alice ", "al\u200bice", "Nopass"])
def test_token_subject_naming_a_static_identity_is_refused_under_any_user_name(gk: Gatekeeper, idp: TestIssuer, spelling: str) -> None:
    """Even when the connection's user name is the token's actor (not a static name), a subject
    that canonically is a static identity is refused: the token would act as that identity."""
    token = idp.mint(sub=spelling, act=actor_chain("agent-9"))
    refused(gk, "agent-9", token, "token refused")


@pytest.mark.parametrize("spelling", ["Alice", "ＢＯＴ", "bot\u200b"])
def test_token_actor_naming_a_static_identity_is_refused(gk: Gatekeeper, idp: TestIssuer, spelling: str) -> None:
    token = idp.mint(sub="carol@example.com", act=actor_chain(spelling))
    refused(gk, "carol@example.com", token, "token refused")


@pytest.mark.parametrize("bad", ["carol@example.com\u200b", "carol@example.com ", "\u202ecarol@example.com"])
def test_token_subjects_with_invisible_characters_or_outer_spaces_are_refused(gk: Gatekeeper, idp: TestIssuer, bad: str) -> None:
    refused(gk, bad, idp.mint(sub=bad))  # the user name itself names no one
    refused(gk, "carol@example.com", idp.mint(sub=bad), "token refused", "cannot name an identity")


def test_subject_and_user_name_compare_in_the_canonical_form(gk: Gatekeeper, idp: TestIssuer) -> None:
    token = idp.mint(sub="carol@example.com")
    assert authenticate(gk, "CAROL@example.com", token).subject == "carol@example.com"
    assert authenticate(gk, "ｃａｒｏｌ@example.com", token).subject == "carol@example.com"
    refused(gk, "carol@example.co", token, "token refused")


def test_static_lookup_uses_the_canonical_form(tmp_path: Path) -> None:
    gk = make_gk(tmp_path)
    for spelling in ("alice", "ALICE", "ａｌｉｃｅ"):
        assert gk.scram_secret(spelling) is gk.scram_secret("alice") is not None
        assert gk.authenticate_password(spelling, "AliceS3cret", tls=True).subject == "alice"
        assert gk.is_static(spelling)
    assert gk.identity_for_scram("Alice").subject == "alice"
    # A spelling with an invisible character or an edge space names no one, even with the secret
    # (found by the outside attack run: "al<U+200B>ice" logged in as alice).
    for spelling in ("al\u200bice", "alice\u00a0", " alice", "ali\u00adce"):
        assert not gk.is_static(spelling)
        assert gk.scram_secret(spelling) is not gk.scram_secret("alice")  # a decoy: fails like a wrong secret
        with pytest.raises(AuthError, match="password authentication failed"):
            gk.authenticate_password(spelling, "AliceS3cret", tls=True)
        with pytest.raises(AuthError):
            gk.identity_for_scram(spelling)


def test_certificate_names_use_the_canonical_form(tmp_path: Path) -> None:
    gk = make_gk(tmp_path)
    cert = {"subject": ((("commonName", "ALICE"),),), "issuer": ((("commonName", "CA"),),)}
    identity = gk.identity_for_certificate(cert, "subject-cn")
    assert identity is not None and identity.groups == ("dba", "ops")
    bad = {"subject": ((("commonName", "al\u200bice"),),), "issuer": ((("commonName", "CA"),),)}
    assert gk.identity_for_certificate(bad, "subject-cn") is None


def test_two_static_identities_with_one_canonical_name_are_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[[identities]]\nname = "ALICE"\nsecret = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)
    assert "duplicate identity name" in str(info.value) and "$.identities[3].name" in str(info.value)


def test_static_identity_with_an_invisible_character_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[[identities]]\nname = "carol\\u200b"\nsecret = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)
    assert "$.identities[3].name" in str(info.value) and "U+200B" in str(info.value)


# -- the issuer is part of an OIDC identity --------------------------------------------------


def test_who_carries_the_issuer_and_old_records_decode() -> None:
    who = Who(subject="carol", verified_by="oidc", issuer="https://idp.test")
    assert msgspec.json.decode(msgspec.json.encode(who), type=Who).issuer == "https://idp.test"
    old = msgspec.json.decode(b'{"subject":"carol","verified_by":"oidc"}', type=Who)
    assert old.issuer == ""
    assert b"issuer" not in msgspec.json.encode(Who(subject="bob"))  # omitted when empty


def access_gk(tmp_path: Path, idp: TestIssuer, other: TestIssuer, rules: str) -> Gatekeeper:
    return make_gk(tmp_path, idp.oidc_toml() + other.oidc_toml() + rules)


def test_access_can_pin_a_subject_to_its_issuer(tmp_path: Path, idp: TestIssuer, other_idp: TestIssuer) -> None:
    """Another trusted issuer minting the same subject gets an identity with its own issuer, and
    an [[access]] rule with `issuers` tells them apart."""
    gk = access_gk(tmp_path, idp, other_idp, """
        [[access]]
        subjects = ["carol@example.com"]
        issuers = ["https://idp.test"]
        action = "allow"
    """)
    mine = authenticate(gk, "carol@example.com", idp.mint(sub="carol@example.com"))
    theirs = authenticate(gk, "carol@example.com", other_idp.mint(sub="carol@example.com"))
    assert mine.issuer == "https://idp.test" and theirs.issuer == "https://other.test"
    assert gk.access_refusal(mine, PROD) is None
    assert "no [[access]] rule allows it" in (gk.access_refusal(theirs, PROD) or "")


def test_access_issuers_are_globs(tmp_path: Path, idp: TestIssuer, other_idp: TestIssuer) -> None:
    gk = access_gk(tmp_path, idp, other_idp, """
        [[access]]
        issuers = ["https://other.*"]
        action = "deny"

        [[access]]
        targets = ["*"]
        action = "allow"
    """)
    theirs = authenticate(gk, "carol@example.com", other_idp.mint(sub="carol@example.com"))
    mine = authenticate(gk, "carol@example.com", idp.mint(sub="carol@example.com"))
    assert "rule 1 of [[access]]" in (gk.access_refusal(theirs, PROD) or "")
    assert gk.access_refusal(mine, PROD) is None
    static = gk.identity_for_scram("alice")
    assert gk.access_refusal(static, PROD) is None  # no issuer: "https://other.*" does not match


def test_access_subjects_and_actors_compare_in_the_canonical_form(tmp_path: Path, idp: TestIssuer, other_idp: TestIssuer) -> None:
    gk = access_gk(tmp_path, idp, other_idp, """
        [[access]]
        actors = ["Agent-*"]
        action = "deny"

        [[access]]
        subjects = ["*@Example.com"]
        action = "allow"
    """)
    carol = authenticate(gk, "carol@example.com", idp.mint(sub="Carol@EXAMPLE.com"))
    assert gk.access_refusal(carol, PROD) is None
    agent = authenticate(gk, "carol@example.com", idp.mint(sub="carol@example.com", act=actor_chain("AGENT-7")))
    assert "rule 1 of [[access]]" in (gk.access_refusal(agent, PROD) or "")


def test_access_issuers_key_is_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[[access]]\nissuers = [""]\naction = "allow"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)
    assert "$.access[0].issuers" in str(info.value)
    assert AccessRule(issuers=("https://idp.test",), action="allow").issuers == ("https://idp.test",)


# ---------------------------------------------------------------------------------------------
# B. Session expiry uses the login leeway


def _live(gk: Gatekeeper, identity: Identity):
    from sqlward.adapters.base import SessionContext, SessionServices, ListenerSettings
    from sqlward.adapters.session_common import GovernedSession
    from sqlward.gateway.pipeline import Pipeline

    pipeline = Pipeline(gk)
    services = SessionServices(gatekeeper=gk, pipeline=pipeline, recorder=gk.recorder)
    client_a, _client_b = trio.testing.memory_stream_pair()
    session = GovernedSession(services, ListenerSettings(name="pg", host="127.0.0.1", port=0), client_a, "127.0.0.1:1", "c1")
    session._update_identity(identity)
    session.target = gk.resolve_target("app", "postgres")
    return session, pipeline


def test_token_inside_the_leeway_logs_in_and_its_statements_run(tmp_path: Path, idp: TestIssuer) -> None:
    import trio.testing  # noqa: F401
    from sqlward.adapters.base import StatementRequest

    gk = make_gk(tmp_path, idp.oidc_toml(source="file", leeway_seconds=60) + '[identity]\non_token_expiry = "close"\n', engine="real")
    token = idp.mint(sub="carol@example.com", ttl=-20)  # expired 20 s ago: inside the 60 s leeway
    identity = authenticate(gk, "carol@example.com", token)

    async def main() -> None:
        session, pipeline = _live(gk, identity)
        verdict = await pipeline.judge(session.ctx, StatementRequest("SELECT 1", "postgres"))
        assert verdict.decision.action == "allow", verdict.decision
        assert not verdict.close_session
        # The session closes when the leeway ends (exp + 60 s, about 40 s from now), not at once.
        deadline = session._closes_at_expiry()
        assert deadline is not None and 35 < deadline - trio.current_time() <= 41

    trio.run(main)


def test_session_expiry_after_the_leeway_is_refused(tmp_path: Path, idp: TestIssuer) -> None:
    from sqlward.gateway.pipeline import token_expiry

    gk = make_gk(tmp_path, idp.oidc_toml(source="file", leeway_seconds=30))
    identity = authenticate(gk, "carol@example.com", idp.mint(sub="carol@example.com", ttl=-5))
    exp = identity.expires_at
    leeway = gk.token_leeway(identity)
    assert leeway == 30
    assert token_expiry(identity, close=False, now=exp + 29, leeway=leeway) is None
    refusal = token_expiry(identity, close=False, now=exp + 30, leeway=leeway)
    assert refusal is not None and refusal.rule_id == "token-expired"
    # A static or certificate identity, or an issuer not configured: no leeway.
    assert gk.token_leeway(Identity(subject="x", verified_by="oidc", issuer="https://nobody.test", expires_at=exp)) == 0


# ---------------------------------------------------------------------------------------------
# B. JWKS: a failed refetch keeps fresh keys; no lock across the fetch; a refetch floor; typ


class Clock:
    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t


class GatedJwks:
    """A JWKS server over HTTPS (the issuer's test certificate) that answers only while `gate` is
    set, so a test can hold a fetch in flight; `status` makes it fail; `requests` counts."""

    def __init__(self, issuer: TestIssuer) -> None:
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.issuer = issuer
        self.gate = threading.Event()
        self.gate.set()
        self.status: int | None = None
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                outer.gate.wait(10)
                if outer.status is not None:
                    self.send_error(outer.status)
                    return
                body = msgspec.json.encode(outer.issuer.jwks())
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issuer.pki.cert_file, issuer.pki.key_file)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gated(tmp_path: Path) -> GatedJwks:
    issuer = TestIssuer(tmp_path / "gated", issuer="https://gated.test", name="gated")
    server = GatedJwks(issuer)
    yield server
    server.close()


def gated_verifier(gated: GatedJwks, clock: Clock, **overrides: Any):
    from sqlward.gateway.config import IssuerConfig
    from sqlward.gateway.oidc import TokenVerifier

    fields: dict[str, Any] = dict(
        issuer=gated.issuer.issuer, audiences=(gated.issuer.audience,), jwks_url=gated.url,
        jwks_ca_file=str(gated.issuer.ca_file), jwks_min_refetch_seconds=30,
    )
    fields.update(overrides)
    return TokenVerifier([IssuerConfig(**fields)], clock=clock)


def test_failed_refetch_for_an_unknown_kid_keeps_the_fresh_keys(gated: GatedJwks) -> None:
    """An IdP outage plus one token with an unknown kid must not lock out valid tokens."""
    from sqlward.gateway.oidc import TokenError

    clock = Clock()
    verifier = gated_verifier(gated, clock)
    good = gated.issuer.mint(now=clock.t, ttl=3600)
    assert trio.run(verifier.verify, good).subject == "alice@example.com"
    clock.t += 31
    gated.status = 503
    unknown, _ = gated.issuer.mint_with_unknown_key(now=clock.t)
    with pytest.raises(TokenError, match="unknown signing key"):
        trio.run(verifier.verify, unknown)
    assert gated.requests == 2  # the refetch was tried
    # The keys fetched 31 s ago are fresh for 600 s: valid tokens still verify, without a fetch.
    assert trio.run(verifier.verify, good).subject == "alice@example.com"
    assert gated.requests == 2
    # Once their cache time is over, a failed refresh does not keep using them.
    clock.t += 600
    with pytest.raises(TokenError, match="HTTP 503"):
        trio.run(verifier.verify, good)


def test_the_key_cache_lock_is_not_held_during_the_fetch(gated: GatedJwks) -> None:
    """While a refetch for an unknown kid hangs at the identity provider, a token whose key is
    cached verifies at once."""
    from sqlward.gateway.oidc import TokenError

    clock = Clock()
    verifier = gated_verifier(gated, clock)
    good = gated.issuer.mint(now=clock.t, ttl=3600)
    trio.run(verifier.verify, good)
    clock.t += 31
    unknown, _ = gated.issuer.mint_with_unknown_key(now=clock.t)
    gated.gate.clear()
    seen: dict[str, Any] = {}

    async def main() -> None:
        async def slow() -> None:
            try:
                await verifier.verify(unknown)
            except TokenError as exc:
                seen["slow"] = str(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            while gated.requests < 2:  # the refetch is at the server, held by the gate
                await trio.sleep(0.01)
            with trio.fail_after(2):
                seen["fast"] = (await verifier.verify(good)).subject
            gated.gate.set()

    trio.run(main)
    assert seen["fast"] == "alice@example.com"
    assert "unknown signing key" in seen["slow"]  # never published: the refetch did not find it


def test_concurrent_refetches_are_one_fetch(gated: GatedJwks) -> None:
    """Single flight: tasks that need the same refetch wait for the one in flight."""
    clock = Clock()
    verifier = gated_verifier(gated, clock)
    trio.run(verifier.verify, gated.issuer.mint(now=clock.t, ttl=3600))
    clock.t += 31
    gated.gate.clear()
    kid = gated.issuer.rotate("RS256")  # published: the refetch finds it
    token = gated.issuer.mint(now=clock.t)
    results: list[str] = []

    async def main() -> None:
        async def one() -> None:
            results.append((await verifier.verify(token)).subject)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
            while gated.requests < 2:
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            gated.gate.set()

    trio.run(main)
    assert results == ["alice@example.com"] * 8 and gated.requests == 2, (kid, gated.requests)


@pytest.mark.parametrize("value", [0, -1])
def test_jwks_min_refetch_seconds_below_the_floor_is_a_config_error(tmp_path: Path, idp: TestIssuer, value: int) -> None:
    path = write_config(tmp_path, idp.oidc_toml(source="file", jwks_min_refetch_seconds=value))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)
    text = str(info.value)
    assert text.startswith(f"{path}: $.oidc[0].jwks_min_refetch_seconds:"), text
    assert "at least 1" in text


def test_the_verifier_keeps_the_floor_for_hand_built_configs(gated: GatedJwks) -> None:
    clock = Clock()
    verifier = gated_verifier(gated, clock, jwks_min_refetch_seconds=0)
    trio.run(verifier.verify, gated.issuer.mint(now=clock.t, ttl=3600))
    from sqlward.gateway.oidc import TokenError

    clock.t += 2
    for _ in range(5):
        token, _kid = gated.issuer.mint_with_unknown_key(now=clock.t)
        with pytest.raises(TokenError):
            trio.run(verifier.verify, token)
    assert gated.requests == 2  # one refetch, not one per made-up kid


# -- typ (RFC 9068) ----------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT", "JWT", "jwt", None])
def test_access_token_types_are_accepted(gk: Gatekeeper, idp: TestIssuer, typ: str | None) -> None:
    token = idp.mint(sub="carol@example.com", header={"typ": typ})
    assert authenticate(gk, "carol@example.com", token).subject == "carol@example.com"


@pytest.mark.parametrize("typ", ["dpop+jwt", "logout+jwt", "secevent+jwt", "id_token+jwt", "JOSE", "", 7, "at+jwt ", " JWT", "at+jwt\x00"])
def test_other_token_types_are_refused(gk: Gatekeeper, idp: TestIssuer, typ: Any) -> None:
    token = idp.mint(sub="carol@example.com", header={"typ": typ})
    refused(gk, "carol@example.com", token, "token refused", "typ")


def test_require_typ_at_jwt(tmp_path: Path, idp: TestIssuer) -> None:
    gk = make_gk(tmp_path, idp.oidc_toml(require_typ="at+jwt"))
    assert authenticate(gk, "carol@example.com", idp.mint(sub="carol@example.com", header={"typ": "at+jwt"}))
    # An ID token (typ JWT) or a token without typ is not an RFC 9068 access token.
    refused(gk, "carol@example.com", idp.mint(sub="carol@example.com"), "token refused", "at+jwt")
    refused(gk, "carol@example.com", idp.mint(sub="carol@example.com", header={"typ": None}), "token refused", "at+jwt")


def test_require_typ_is_checked_in_the_config(tmp_path: Path, idp: TestIssuer) -> None:
    path = write_config(tmp_path, idp.oidc_toml(require_typ="dpop+jwt"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)
    assert "$.oidc[0].require_typ" in str(info.value)


# -- the same refusal for a wrong name and a wrong secret; advice true for the listener ---------


def test_without_token_login_every_name_fails_like_a_wrong_secret(tmp_path: Path, idp: TestIssuer) -> None:
    """No [[oidc]]: an unknown name, a passwordless static name and a static name with a wrong
    secret are refused with one message, after the same kind of exchange."""
    gk = make_gk(tmp_path)
    for name in ("alice", "mallory", "nopass", "ALICE"):
        scram = gk.scram_secret(name)
        assert scram is not None and scram.iterations == gk.scram_secret("alice").iterations
        assert len(scram.salt) == len(gk.scram_secret("alice").salt)
        assert gk.mysql_secret(name) is not None
        with pytest.raises(AuthError) as info:
            gk.authenticate_password(name, "wrong", tls=True)
        assert str(info.value) == f'password authentication failed for user "{name}"'
        with pytest.raises(AuthError) as info:
            authenticate(gk, name, idp.mint(sub=name))
        assert str(info.value) == f'password authentication failed for user "{name}"'
    # The decoy is the same on every attempt (a changing salt would give the name away).
    assert gk.scram_secret("mallory") == gk.scram_secret("mallory")


def test_with_token_login_a_passwordless_static_name_fails_like_an_unknown_one(gk: Gatekeeper, idp: TestIssuer) -> None:
    for token, fragment in (("not-a-token", "not a JWT"), (idp.mint(sub="x", aud="other"), "audience")):
        unknown = refused(gk, "mallory", token)
        static = refused(gk, "nopass", token)
        assert fragment in unknown and unknown == static


def test_tls_advice_only_when_the_listener_has_tls(gk: Gatekeeper, idp: TestIssuer) -> None:
    token = idp.mint(sub="carol@example.com")
    with_tls = refused(gk, "carol@example.com", token, "only over TLS", "sslmode=require", tls=False, tls_offered=True)
    without = refused(gk, "carol@example.com", token, "only over TLS", "this listener has no TLS", tls=False, tls_offered=False)
    assert "sslmode" not in without and "--ssl" not in without, without
    assert with_tls != without


# ---------------------------------------------------------------------------------------------
# B. Failed logins are throttled (through the Gatekeeper API the adapters call)

THROTTLE = """
[login_throttle]
failures_before_delay = 2
base_delay_seconds = 0.4
max_delay_seconds = 1.6
window_seconds = 600
"""


def test_login_gate_delays_after_failures_and_audits_it(tmp_path: Path) -> None:
    sink = ListSink()
    gk = make_gk(tmp_path, THROTTLE, sink=sink)

    async def main() -> list[float]:
        waits = []
        for _ in range(5):
            start = trio.current_time()
            await gk.login_gate("203.0.113.5", "alice")
            waits.append(trio.current_time() - start)
            with pytest.raises(AuthError):
                gk.authenticate_password("alice", "wrong", tls=True)
            gk.login_failed("203.0.113.5", "alice")
        return waits

    waits = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [round(w, 2) for w in waits] == [0, 0, 0.4, 0.8, 1.6]
    throttled = [e for e in sink.events if e["event"] == "login.throttled"]
    assert len(throttled) == 3
    assert throttled[0]["client_addr"] == "203.0.113.5" and throttled[0]["user"] == "alice"
    assert throttled[-1]["delay_seconds"] == pytest.approx(1.6) and throttled[-1]["failures"] == 4


def test_login_gate_refuses_when_the_bucket_is_empty_and_audits_it(tmp_path: Path) -> None:
    sink = ListSink()
    gk = make_gk(tmp_path, THROTTLE, sink=sink)

    async def main() -> list[str]:
        for _ in range(2):
            gk.login_failed("203.0.113.5", "mallory")
        messages: list[str] = []

        async def attempt() -> None:
            try:
                await gk.login_gate("203.0.113.5", "mallory")
            except AuthError as exc:
                messages.append(str(exc))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(attempt)
        return messages

    messages = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(messages) == 6  # slots at 0.4, 0.8, 1.2, 1.6 s; the rest refused
    assert all(m.startswith("too many failed logins") and "try again in" in m for m in messages), messages
    refusals = [e for e in sink.events if e["event"] == "login.throttled" and e.get("refused")]
    assert len(refusals) == 6


def test_a_throttled_connection_never_slows_another_client(tmp_path: Path) -> None:
    gk = make_gk(tmp_path, THROTTLE.replace("1.6", "3.2").replace("0.4", "3.0"))

    async def main() -> float:
        for _ in range(3):
            gk.login_failed("203.0.113.5", "alice")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gk.login_gate, "203.0.113.5", "alice")  # waits 3 s
            await trio.sleep(0.05)
            start = trio.current_time()
            with trio.fail_after(0.5):
                await gk.login_gate("198.51.100.7", "bob")
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        return elapsed

    assert trio.run(main) < 0.2  # real time: no global lock, no shared sleep


def test_token_failures_and_unknown_users_count(tmp_path: Path, idp: TestIssuer) -> None:
    """The adapters call login_failed for every refusal: wrong secrets, unknown users, bad tokens;
    the throttle keys on the canonical user name whichever spelling failed."""
    gk = make_gk(tmp_path, THROTTLE + idp.oidc_toml())

    async def main() -> float:
        for user in ("Mallory", "MALLORY"):
            with pytest.raises(AuthError):
                await gk.authenticate_token(user, "not-a-token", tls=True, loopback=False)
            gk.login_failed(f"198.51.100.{len(user)}{user.count('M')}", user)
        start = trio.current_time()
        await gk.login_gate("192.0.2.99", "ｍａｌｌｏｒｙ")
        return trio.current_time() - start

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == pytest.approx(0.4)


def test_login_succeeded_clears_the_user_name(tmp_path: Path) -> None:
    gk = make_gk(tmp_path, THROTTLE)

    async def main() -> float:
        for _ in range(3):
            gk.login_failed("198.51.100.1", "alice")
        gk.login_succeeded("198.51.100.1", "alice")
        start = trio.current_time()
        await gk.login_gate("198.51.100.2", "alice")
        return trio.current_time() - start

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == 0


def test_login_throttle_config_is_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[login_throttle]\nbase_delay_seconds = 0\nmax_delay_seconds = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=ENV)
    assert "$.login_throttle." in str(info.value)


# ---------------------------------------------------------------------------------------------
# `sqlward policy test`: the identity options follow the same rules offline


POLICY_TARGET = """
[[access]]
subjects = ["carol@example.com"]
issuers = ["https://idp.test"]
action = "allow"

[[access]]
subjects = ["alice"]
action = "allow"
"""


def policy_config(tmp_path: Path, idp: TestIssuer, other_idp: TestIssuer) -> Config:
    return load_config(str(write_config(tmp_path, idp.oidc_toml(source="file") + other_idp.oidc_toml(source="file") + POLICY_TARGET)), env=ENV)


def test_policy_test_issuer_option(tmp_path: Path, idp: TestIssuer, other_idp: TestIssuer) -> None:
    from sqlward.gateway.policy_check import evaluate

    config = policy_config(tmp_path, idp, other_idp)
    mine = evaluate(config, identity="carol@example.com", issuer="https://idp.test", target="app", sql="SELECT 1")
    assert mine.decision == "allow" and mine.identity.issuer == "https://idp.test"
    theirs = evaluate(config, identity="carol@example.com", issuer="https://other.test", target="app", sql="SELECT 1")
    assert theirs.decision == "deny" and theirs.rule_id == "access"
    from sqlward.gateway.policy_check import PolicyTestError, format_text

    assert "https://other.test" in format_text(theirs)
    with pytest.raises(PolicyTestError, match="not a configured"):
        evaluate(config, identity="carol@example.com", issuer="https://nobody.test", target="app", sql="SELECT 1")


def test_policy_test_names_in_the_canonical_form(tmp_path: Path, idp: TestIssuer, other_idp: TestIssuer) -> None:
    from sqlward.gateway.policy_check import PolicyTestError, evaluate

    config = policy_config(tmp_path, idp, other_idp)
    report = evaluate(config, identity="ALICE", target="app", sql="SELECT 1")
    assert report.identity.source == "static" and report.identity.subject == "alice"
    with pytest.raises(PolicyTestError, match="static identity"):
        evaluate(config, identity="ａｌｉｃｅ", issuer="https://idp.test", target="app", sql="SELECT 1")
    with pytest.raises(PolicyTestError, match="static identity"):
        evaluate(config, identity="carol@example.com", actors=("BOT",), target="app", sql="SELECT 1")
    with pytest.raises(PolicyTestError, match="cannot name an identity"):
        evaluate(config, identity="carol\u200b@example.com", target="app", sql="SELECT 1")


def test_policy_test_expiry_uses_the_issuers_leeway(tmp_path: Path, idp: TestIssuer, other_idp: TestIssuer) -> None:
    from sqlward.gateway.policy_check import evaluate

    config = policy_config(tmp_path, idp, other_idp)
    inside = evaluate(config, identity="carol@example.com", issuer="https://idp.test", target="app", sql="SELECT 1",
                      expires_at=time.time() - 10)
    assert inside.decision == "allow"
    after = evaluate(config, identity="carol@example.com", issuer="https://idp.test", target="app", sql="SELECT 1",
                     expires_at=time.time() - 40)
    assert after.rule_id == "token-expired"
