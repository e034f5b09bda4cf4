"""gateway.gatekeeper (static identities, SCRAM verifiers, OIDC tokens against a real test issuer,
client certificates, target access, targets, policy delegation, audit) and gateway.cli exit codes."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Callable

import msgspec
import pytest
import scramp
import trio

from sqlward.adapters.base import (
    AuditUnavailable,
    AuthError,
    Gatekeeper as GatekeeperProtocol,
    IdentitySettings,
    ScramSecret,
    Target,
    UpstreamTLS,
)
from sqlward.audit.events import ConnectionOpened
from sqlward.audit.writer import JsonlWriter
from sqlward.gateway import cli
from sqlward.gateway.config import Config, ConfigError, load_config
from sqlward.gateway.gatekeeper import ENGINE_FAILURE_RULE, SCRAM_ITERATIONS, Gatekeeper
from sqlward.policy.model import Analysis, Decision, Identity, StatementFacts, TargetInfo
from tests.support.auditsink import ListSink
from tests.support.oidc import TestIssuer, actor_chain

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "examples" / "dev.toml"

CONFIG = """
[gateway]
name = "gw-test"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[listeners]]
protocol = "mysql"
listen = "127.0.0.1:3307"

[[targets]]
name = "app"
protocol = "postgres"
environment = "development"
dsn = "postgresql://svc@127.0.0.1/appdb?sslmode=verify-full&sslrootcert=ca.pem&connect_timeout=3"
password = "${APP_PASSWORD}"

[[targets]]
name = "fromfile"
protocol = "postgres"
environment = "production"
dsn = "postgres://svc@[::1]:6543"
password_file = "target.pw"

[[targets]]
name = "indsn"
protocol = "postgres"
environment = "staging"
dsn = "postgresql://svc:dsn%40pw@db.internal/x"

[[targets]]
name = "shop"
protocol = "mysql"
environment = "production"
dsn = "mysql://root@127.0.0.1/shop?sslmode=disable"

[[identities]]
name = "alice"
display_name = "Alice"
groups = ["dba", "ops"]
secret = "${ALICE_SECRET}"

[[identities]]
name = "bot"
agent = true
secret_file = "bot.secret"

[[identities]]
name = "nopass"

[audit]
file = "audit.jsonl"

[[rules]]
id = "no-drop"
operations = ["drop"]
action = "deny"
"""

ENV = {"APP_PASSWORD": "AppS3cret", "ALICE_SECRET": "AliceS3cret"}


class StandInEngine:
    """A tiny stand-in for policy.engine.Engine (same constructor and methods)."""

    def __init__(self, rules=(), environments=None, version=0, fail=False) -> None:
        self.rules, self.environments, self.version, self.fail = tuple(rules), dict(environments or {}), version, fail
        self.calls: list[tuple] = []

    def analyse(self, sql: str, dialect: str) -> Analysis:
        self.calls.append(("analyse", sql, dialect))
        op = sql.split()[0].lower()
        return Analysis(fingerprint=op, dialect=dialect, statements=(StatementFacts(operation=op, operations=(op,)),))

    def decide(self, analysis: Analysis, identity: Identity, target_info: TargetInfo) -> Decision:
        self.calls.append(("decide", analysis.fingerprint, identity.subject, target_info.name))
        if self.fail:
            raise RuntimeError("boom")
        for rule in self.rules:
            if set(rule.operations) & set(analysis.statements[0].operations):
                return Decision(action=rule.action, rule_id=rule.id)
        return Decision(action="allow")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "target.pw").write_text("FileS3cret\n")
    (tmp_path / "bot.secret").write_text("BotS3cret\n")
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return load_config(str(path), env=ENV)


@pytest.fixture
def gk(config: Config) -> Gatekeeper:
    engine = StandInEngine(rules=config.rules, environments=config.environments, version=1)
    gatekeeper = Gatekeeper.from_config(config, engine=engine)
    yield gatekeeper
    gatekeeper.close()


def scram_exchange(secret: ScramSecret, username: str, password: str) -> None:
    """Run a full SCRAM-SHA-256 exchange: a real scramp client against a scramp server that only
    knows the stored verifier. Raises scramp.ScramException when the password is wrong."""
    mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
    server = mechanism.make_server(lambda _user: (secret.salt, secret.stored_key, secret.server_key, secret.iterations))
    client = scramp.ScramClient(["SCRAM-SHA-256"], username, password)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())


# ---------------------------------------------------------------------------------------------
# Construction


def test_satisfies_adapter_protocol(gk: Gatekeeper) -> None:
    proto: GatekeeperProtocol = gk  # static check; at runtime check the surface
    for name in ("scram_secret", "identity_for_scram", "authenticate_password", "resolve_target", "access_refusal", "identity_settings", "mysql_targets"):
        assert callable(getattr(proto, name))
    assert gk.gateway_name == "gw-test"


def test_config_kept_without_identity_secrets(gk: Gatekeeper, config: Config) -> None:
    assert gk.config.listeners == config.listeners and gk.config.source == config.source
    assert all(ident.secret is None for ident in gk.config.identities)
    assert "AliceS3cret" not in repr(gk.config) and "AliceS3cret" not in repr(gk)
    assert not any("AliceS3cret" in repr(v) for v in vars(gk).values())


def test_engine_built_from_config_with_version_1(gk: Gatekeeper) -> None:
    engine = gk._engine
    assert engine.version == 1 and [r.id for r in engine.rules] == ["no-drop"]


def test_real_engine_when_available(config: Config) -> None:
    pytest.importorskip("sqlward.policy.engine")
    gatekeeper = Gatekeeper.from_config(config, audit_sink=ListSink())
    assert gatekeeper.analyse("SELECT 1", "postgres").dialect == "postgres"


# ---------------------------------------------------------------------------------------------
# Static identities


def test_scram_verifier_verifies_with_real_client(gk: Gatekeeper) -> None:
    secret = gk.scram_secret("alice")
    assert isinstance(secret, ScramSecret) and secret.iterations == SCRAM_ITERATIONS
    assert len(secret.salt) >= 16 and len(secret.stored_key) == 32 and len(secret.server_key) == 32
    scram_exchange(secret, "alice", "AliceS3cret")
    with pytest.raises(scramp.ScramException):
        scram_exchange(secret, "alice", "wrong")


def test_scram_verifier_from_secret_file(gk: Gatekeeper) -> None:
    scram_exchange(gk.scram_secret("bot"), "bot", "BotS3cret")  # trailing newline stripped


def test_scram_secret_unknown_or_passwordless(gk: Gatekeeper) -> None:
    # Without [[oidc]] nothing but a secret logs in: an unknown or passwordless name gets a decoy
    # verifier (stable per name) that no password matches, so it fails like a wrong password.
    for name in ("mallory", "nopass"):
        decoy = gk.scram_secret(name)
        assert decoy is not None and decoy == gk.scram_secret(name) != gk.scram_secret("alice")
        with pytest.raises(AuthError, match=f'password authentication failed for user "{name}"'):
            gk.identity_for_scram(name)


def test_verifiers_are_salted_per_identity(config: Config) -> None:
    a = Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    b = Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    assert a.scram_secret("alice").salt != b.scram_secret("alice").salt


def test_identity_for_scram(gk: Gatekeeper) -> None:
    assert gk.identity_for_scram("alice") == Identity(
        subject="alice", display_name="Alice", groups=("dba", "ops"), verified_by="static", is_agent=False
    )
    bot = gk.identity_for_scram("bot")
    assert bot.is_agent is True and bot.groups == () and bot.verified_by == "static"
    with pytest.raises(AuthError):
        gk.identity_for_scram("mallory")


def test_authenticate_password_good(gk: Gatekeeper) -> None:
    assert gk.authenticate_password("alice", "AliceS3cret", tls=True).subject == "alice"
    assert gk.authenticate_password("bot", "BotS3cret", tls=False).is_agent is True


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "wrong"), ("alice", ""), ("alice", "AliceS3cret "), ("mallory", "AliceS3cret"), ("nopass", ""), ("", "")],
)
def test_authenticate_password_bad_or_unknown(gk: Gatekeeper, user: str, password: str) -> None:
    with pytest.raises(AuthError) as info:
        gk.authenticate_password(user, password, tls=True)
    assert str(info.value) == f'password authentication failed for user "{user}"'
    assert "AliceS3cret" not in str(info.value)


def test_unreadable_secret_file_at_build(config: Config, tmp_path: Path) -> None:
    os.remove(tmp_path / "bot.secret")
    with pytest.raises(ConfigError) as info:
        Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    assert str(info.value).startswith(f"{config.source}: $.identities[1].secret_file: cannot read secret file")


def test_empty_secret_file_at_build(config: Config, tmp_path: Path) -> None:
    (tmp_path / "bot.secret").write_text("\n")
    with pytest.raises(ConfigError) as info:
        Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    assert str(info.value).startswith(f"{config.source}: $.identities[1].secret_file: secret file") and "empty" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Targets


def test_resolve_target_from_password_field(gk: Gatekeeper, tmp_path: Path) -> None:
    t = gk.resolve_target("app", "postgres")
    assert isinstance(t, Target)
    assert t.info == TargetInfo(name="app", protocol="postgres", environment="development", database="appdb")
    assert (t.host, t.port, t.user, t.database, t.password, t.connect_timeout) == (
        "127.0.0.1",
        5432,
        "svc",
        "appdb",
        "AppS3cret",
        3.0,
    )
    assert t.tls == UpstreamTLS(mode="verify-full", root_cert=str(tmp_path / "ca.pem"))
    assert "AppS3cret" not in repr(t)


def test_resolve_target_from_password_file_ipv6_defaults(gk: Gatekeeper) -> None:
    t = gk.resolve_target("fromfile", "postgres")
    assert (t.host, t.port, t.user, t.database, t.password) == ("::1", 6543, "svc", "svc", "FileS3cret")
    assert t.info.environment == "production" and t.tls == UpstreamTLS(mode="prefer") and t.connect_timeout == 10.0


def test_resolve_target_password_from_dsn(gk: Gatekeeper) -> None:
    t = gk.resolve_target("indsn", "postgres")
    assert (t.host, t.port, t.password, t.database) == ("db.internal", 5432, "dsn@pw", "x")


def test_resolve_target_mysql(gk: Gatekeeper) -> None:
    t = gk.resolve_target("shop", "mysql")
    assert (t.host, t.port, t.user, t.database, t.password, t.tls.mode) == ("127.0.0.1", 3306, "root", "shop", "", "disable")


def test_resolve_target_unknown_or_other_protocol(gk: Gatekeeper) -> None:
    assert gk.resolve_target("nope", "postgres") is None
    assert gk.resolve_target("shop", "postgres") is None
    assert gk.resolve_target("app", "mysql") is None


def test_resolve_target_is_built_once(gk: Gatekeeper) -> None:
    assert gk.resolve_target("app", "postgres") is gk.resolve_target("app", "postgres")


# ---------------------------------------------------------------------------------------------
# Policy delegation


def test_analyse_and_decide_delegate(gk: Gatekeeper) -> None:
    alice = gk.identity_for_scram("alice")
    info = gk.resolve_target("app", "postgres").info
    analysis = gk.analyse("DROP TABLE t", "postgres")
    assert analysis.statements[0].operation == "drop"
    assert gk.decide(analysis, alice, info) == Decision(action="deny", rule_id="no-drop")
    assert gk.decide(gk.analyse("SELECT 1", "postgres"), alice, info).action == "allow"
    assert gk._engine.calls[:2] == [("analyse", "DROP TABLE t", "postgres"), ("decide", "drop", "alice", "app")]


def test_decide_fails_closed(config: Config) -> None:
    gatekeeper = Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine(fail=True))
    analysis = gatekeeper.analyse("SELECT 1", "postgres")
    decision = gatekeeper.decide(analysis, Identity(subject="alice"), TargetInfo(name="app", protocol="postgres", environment="development"))
    assert decision.action == "deny" and decision.rule_id == ENGINE_FAILURE_RULE


# ---------------------------------------------------------------------------------------------
# Audit


def _event() -> ConnectionOpened:
    return ConnectionOpened(client_addr="127.0.0.1:5000", listener="pg", protocol="postgres")


def _record(gk: Gatekeeper, event: msgspec.Struct) -> None:
    trio.run(gk.recorder.scope("c1").record, event)


def test_record_writes_jsonl(gk: Gatekeeper, config: Config) -> None:
    _record(gk, _event())
    line = json.loads(Path(config.audit.file).read_text().splitlines()[-1])
    assert line["event"] == "connection.opened"
    assert (line["gateway"], line["connection_id"], line["seq"]) == ("gw-test", "c1", 1)


def test_record_with_given_sink(config: Config) -> None:
    sink = ListSink()
    gatekeeper = Gatekeeper.from_config(config, audit_sink=sink, engine=StandInEngine())
    _record(gatekeeper, _event())
    assert len(sink.events) == 1
    gatekeeper.close()  # does not own the sink: nothing to close
    assert not sink.closed


def test_record_raises_audit_unavailable_when_writer_closed(config: Config, tmp_path: Path) -> None:
    writer = JsonlWriter(str(tmp_path / "closed.jsonl"))
    gatekeeper = Gatekeeper.from_config(config, audit_sink=writer, engine=StandInEngine())
    writer.close()
    with pytest.raises(AuditUnavailable):
        _record(gatekeeper, _event())


def test_record_raises_audit_unavailable_after_close(gk: Gatekeeper) -> None:
    gk.close()
    with pytest.raises(AuditUnavailable):
        _record(gk, _event())


def test_audit_file_in_missing_directory_is_a_config_error(config: Config, tmp_path: Path) -> None:
    bad = msgspec.structs.replace(config, audit=msgspec.structs.replace(config.audit, file=str(tmp_path / "no" / "dir" / "a.jsonl")))
    with pytest.raises(ConfigError) as info:
        Gatekeeper.from_config(bad, engine=StandInEngine())
    assert str(info.value).startswith(f"{config.source}: $.audit.file: cannot open audit file")


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_check_config_ok(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLWARD_ALICE_SECRET", "x")
    monkeypatch.setenv("SQLWARD_ANALYST_SECRET", "y")
    assert cli.main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    audit = EXAMPLE.parent / "audit.jsonl"
    assert out == f"{EXAMPLE}: ok (2 listeners, 4 targets, 3 identities, 5 rules, 1 masks); audit buffered, fail closed: file {audit}\n"


def test_cli_check_config_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLWARD_ALICE_SECRET", raising=False)
    monkeypatch.setenv("SQLWARD_ANALYST_SECRET", "y")
    assert cli.main(["check-config", str(EXAMPLE)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{EXAMPLE}: $.identities[0].secret: environment variable SQLWARD_ALICE_SECRET is not set\n"


def test_cli_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["check-config", str(tmp_path / "none.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_cli_serve_config_error_no_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nname = 1\n')
    assert cli.main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: $.gateway.name: Expected `str`, got `int`") and "Traceback" not in err


def test_cli_serve_calls_server_run(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    import sys
    import types

    seen: list[Config] = []
    fake = types.ModuleType("sqlward.gateway.server")
    fake.run = seen.append
    monkeypatch.setitem(sys.modules, "sqlward.gateway.server", fake)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["serve", "--config", config.source]) == 0
    assert seen == [config]


def test_cli_serve_startup_config_error(monkeypatch: pytest.MonkeyPatch, config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import types

    def run(cfg: Config) -> None:
        raise ConfigError.single(cfg.source, "$.audit.file", "cannot open audit file")

    fake = types.ModuleType("sqlward.gateway.server")
    fake.run = run
    monkeypatch.setitem(sys.modules, "sqlward.gateway.server", fake)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["serve", "--config", config.source]) == 2
    assert "$.audit.file: cannot open audit file" in capsys.readouterr().err


def test_cli_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sqlward ")
    assert cli.main([]) == 2
    assert cli.main(["serve"]) == 2  # --config is required
    assert cli.main(["frobnicate"]) == 2


def test_python_dash_m_gateway() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "sqlward.gateway", "--version"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stdout.startswith("sqlward ")


# ---------------------------------------------------------------------------------------------
# OIDC tokens (a real test issuer with its JWKS over HTTPS), certificates, target access


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    issuer = TestIssuer(tmp_path_factory.mktemp("gk-idp"))
    with issuer:
        yield issuer


def _config_with(tmp_path: Path, extra: str) -> Config:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "target.pw").write_text("FileS3cret\n")
    (tmp_path / "bot.secret").write_text("BotS3cret\n")
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(CONFIG) + "\n" + extra)
    return load_config(str(path), env=ENV)


@pytest.fixture
def token_gk(tmp_path: Path, idp: TestIssuer) -> Gatekeeper:
    config = _config_with(tmp_path, idp.oidc_toml(subject_claim="email"))
    gatekeeper = Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    yield gatekeeper
    gatekeeper.close()


def authenticate(gk: Gatekeeper, username: str, token: str, *, tls: bool = True, loopback: bool = False) -> Identity:
    return trio.run(lambda: gk.authenticate_token(username, token, tls=tls, loopback=loopback))


def token_refused(gk: Gatekeeper, username: str, token: str, *fragments: str, **kw: bool) -> str:
    with pytest.raises(AuthError) as info:
        authenticate(gk, username, token, **kw)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_satisfies_adapter_protocol_identity_methods(token_gk: Gatekeeper) -> None:
    proto: GatekeeperProtocol = token_gk
    for name in ("authenticate_token", "identity_for_certificate", "access_refusal", "identity_settings"):
        assert callable(getattr(proto, name))


def test_token_over_tls(token_gk: Gatekeeper, idp: TestIssuer) -> None:
    token = idp.mint(sub="u-17", email="carol@example.com", groups=["analysts"], name="Carol")
    identity = authenticate(token_gk, "carol@example.com", token)
    exp = idp.claims()["exp"]
    assert identity == Identity(
        subject="carol@example.com",
        display_name="Carol",
        groups=("analysts",),
        verified_by="oidc",
        issuer="https://idp.test",
        actor=(),
        is_agent=False,
        expires_at=identity.expires_at,
    )
    assert abs(identity.expires_at - exp) <= 2


def test_user_name_is_compared_case_insensitively(token_gk: Gatekeeper, idp: TestIssuer) -> None:
    assert authenticate(token_gk, "Carol@Example.com", idp.mint(email="carol@example.com")).subject == "carol@example.com"


def test_agent_token_with_act(token_gk: Gatekeeper, idp: TestIssuer) -> None:
    token = idp.mint(email="carol@example.com", act=actor_chain("agent-7", "runbook-2"))
    identity = authenticate(token_gk, "carol@example.com", token)
    assert identity.actor == ("agent-7", "runbook-2") and identity.is_agent is True
    # The agent presenting the token may connect under its own name too.
    assert authenticate(token_gk, "agent-7", token).subject == "carol@example.com"
    token_refused(token_gk, "runbook-2", token, 'it is for "carol@example.com" (or its actor agent-7)')


def test_user_name_must_match_the_token(token_gk: Gatekeeper, idp: TestIssuer) -> None:
    message = token_refused(token_gk, "dave@example.com", idp.mint(email="carol@example.com"))
    assert message == 'token refused: it is for "carol@example.com", but the connection\'s user name is "dave@example.com"'


def test_token_over_plain_tcp_refused_unless_loopback_allowed(token_gk: Gatekeeper, idp: TestIssuer) -> None:
    token = idp.mint(email="carol@example.com")
    token_refused(token_gk, "carol@example.com", token, "tokens are accepted only over TLS", "sslmode=require", tls=False)
    # The adapter says loopback=True only for a loopback peer on a listener with allow_plaintext_tokens.
    assert authenticate(token_gk, "carol@example.com", token, tls=False, loopback=True).verified_by == "oidc"


def test_static_identity_name_with_a_token_refused(token_gk: Gatekeeper, idp: TestIssuer) -> None:
    for name in ("alice", "nopass"):
        token = idp.mint(email=name)
        token_refused(token_gk, name, token, "token refused", "reserved for a static identity")
    # ...and the token is not a password either.
    with pytest.raises(AuthError):
        token_gk.authenticate_password("alice", idp.mint(email="alice"), tls=True)


@pytest.mark.parametrize(
    ("mint", "fragment"),
    [
        (lambda idp: idp.mint(email="carol@example.com", ttl=-3600), "token refused: token expired"),
        (lambda idp: idp.mint_unsigned(email="carol@example.com"), "token refused: unsigned tokens (alg: none)"),
        (lambda idp: idp.mint_hs256_with_public_key(email="carol@example.com"), "token refused: tokens signed with a shared secret"),
        (lambda idp: idp.mint(email="carol@example.com", aud="other"), "token refused: token audience"),
        (lambda idp: idp.mint_bad_signature(email="carol@example.com"), "token refused: bad signature"),
        (lambda idp: "not-a-token", "token refused: not a JWT"),
    ],
)
def test_bad_tokens_refused(token_gk: Gatekeeper, idp: TestIssuer, mint: Callable[[TestIssuer], str], fragment: str) -> None:
    token_refused(token_gk, "carol@example.com", mint(idp), fragment)


def test_tokens_without_issuers(gk: Gatekeeper, idp: TestIssuer) -> None:
    # The refusal of a wrong secret: a client cannot tell static names apart (issue 12).
    assert token_refused(gk, "carol", idp.mint()) == 'password authentication failed for user "carol"'



def test_expiry_follows_the_gatekeeper_clock(tmp_path: Path, idp: TestIssuer) -> None:
    now = [time.time()]
    config = _config_with(tmp_path, idp.oidc_toml(source="file"))
    gatekeeper = Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine(), clock=lambda: now[0])
    token = idp.mint(sub="carol", ttl=60)
    assert authenticate(gatekeeper, "carol", token).subject == "carol"
    now[0] += 120
    token_refused(gatekeeper, "carol", token, "token expired")


def test_unloadable_jwks_ca_file_is_a_config_error(tmp_path: Path, idp: TestIssuer) -> None:
    (tmp_path / "bad-ca.pem").write_text("not PEM")
    config = _config_with(tmp_path, idp.oidc_toml(jwks_ca_file="bad-ca.pem"))
    with pytest.raises(ConfigError) as info:
        Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    assert str(info.value).startswith(f"{config.source}: $.oidc[0].jwks_ca_file: cannot load jwks_ca_file")


# -- identity settings --------------------------------------------------------------------------


def test_identity_settings(gk: Gatekeeper, tmp_path: Path) -> None:
    assert gk.identity_settings() == IdentitySettings()
    config = _config_with(tmp_path, '[identity]\non_token_expiry = "close"\nsql_comment = true\n')
    gatekeeper = Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    settings = gatekeeper.identity_settings()
    assert type(settings) is IdentitySettings
    assert settings == IdentitySettings(on_token_expiry="close", sql_comment=True)


# -- certificates -------------------------------------------------------------------------------


def _peer_cert(cn: str | None = "payments-svc", uris: tuple[str, ...] = (), issuer_cn: str = "Clients CA") -> dict:
    """The shape of ssl.SSLSocket.getpeercert() for a verified certificate."""
    subject = [(("organizationName", "Example"),)]
    if cn is not None:
        subject.append((("commonName", cn),))
    cert: dict = {
        "subject": tuple(subject),
        "issuer": ((("commonName", issuer_cn),),),
        "version": 3,
        "notAfter": "Jan  1 00:00:00 2099 GMT",
    }
    cert["subjectAltName"] = (("DNS", "svc.internal"), *(("URI", u) for u in uris))
    return cert


def test_certificate_identity_subject_cn(gk: Gatekeeper) -> None:
    identity = gk.identity_for_certificate(_peer_cert("payments-svc"), "subject-cn")
    assert identity == Identity(subject="payments-svc", verified_by="certificate", issuer="Clients CA")


def test_certificate_identity_san_uri(gk: Gatekeeper) -> None:
    cert = _peer_cert("ignored", uris=("spiffe://prod.example/ns/pay/sa/api", "https://second"))
    identity = gk.identity_for_certificate(cert, "san-uri")
    assert identity is not None and identity.subject == "spiffe://prod.example/ns/pay/sa/api"
    assert identity.verified_by == "certificate"


def test_certificate_identity_uses_a_static_identity_of_that_name(gk: Gatekeeper) -> None:
    identity = gk.identity_for_certificate(_peer_cert("bot"), "subject-cn")
    assert identity is not None and identity.is_agent is True and identity.verified_by == "certificate"
    identity = gk.identity_for_certificate(_peer_cert("alice"), "subject-cn")
    assert identity.groups == ("dba", "ops") and identity.display_name == "Alice"


def test_certificate_identity_none(gk: Gatekeeper) -> None:
    assert gk.identity_for_certificate(_peer_cert(), "none") is None
    assert gk.identity_for_certificate({}, "subject-cn") is None  # no (verified) certificate
    assert gk.identity_for_certificate(_peer_cert(cn=None), "subject-cn") is None
    assert gk.identity_for_certificate(_peer_cert(), "san-uri") is None  # no URI SAN
    two_cns = _peer_cert("a")
    two_cns["subject"] += ((("commonName", "b"),),)
    assert gk.identity_for_certificate(two_cns, "subject-cn") is None  # ambiguous
    with pytest.raises(ValueError):
        gk.identity_for_certificate(_peer_cert(), "email")


def test_certificate_identity_from_a_real_tls_handshake(gk: Gatekeeper, tmp_path: Path) -> None:
    """getpeercert() of a real mutual-TLS connection, with a client certificate that has both a
    CN and a SPIFFE URI."""
    import datetime as dt
    import socket
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tests.support.certs import make_pki

    pki = make_pki(tmp_path, prefix="srv-")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client CA")])
    now = dt.datetime.now(dt.timezone.utc)
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecar-1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/sidecar")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "client-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "client.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.cert_file, pki.key_file)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(str(tmp_path / "client-ca.pem"))
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    client_ctx.load_cert_chain(str(tmp_path / "client.pem"))

    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen.update(tls.getpeercert())
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(listener.getsockname()) as raw, client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"x")
    thread.join(5)
    listener.close()

    assert gk.identity_for_certificate(seen, "subject-cn") == Identity(
        subject="sidecar-1", verified_by="certificate", issuer="client CA"
    )
    assert gk.identity_for_certificate(seen, "san-uri").subject == "spiffe://example.org/sidecar"


# -- target access ------------------------------------------------------------------------------

ACCESS = """
[[access]]
targets = ["from*"]
groups = ["ops"]
action = "allow"

[[access]]
environments = ["production"]
action = "deny"

[[access]]
actors = ["runbook-*"]
targets = ["indsn"]
action = "deny"

[[access]]
subjects = ["*@example.com", "alice"]
action = "allow"
"""


@pytest.fixture
def access_gk(tmp_path: Path) -> Gatekeeper:
    config = _config_with(tmp_path, ACCESS)
    gatekeeper = Gatekeeper.from_config(config, audit_sink=ListSink(), engine=StandInEngine())
    yield gatekeeper
    gatekeeper.close()


def _info(gk: Gatekeeper, name: str, protocol: str = "postgres") -> TargetInfo:
    return gk.resolve_target(name, protocol).info


def test_access_no_rules_everyone_reaches_everything(gk: Gatekeeper) -> None:
    for target in ("app", "fromfile", "indsn"):
        assert gk.access_refusal(Identity(subject="anyone"), _info(gk, target)) is None


def test_access_first_match_wins(access_gk: Gatekeeper) -> None:
    ops = Identity(subject="alice", groups=("ops",))
    # Rule 1 allows ops on fromfile (production) before rule 2 denies production.
    assert access_gk.access_refusal(ops, _info(access_gk, "fromfile")) is None
    # Rule 2: production (the mysql target shop) refused for ops too.
    assert access_gk.access_refusal(ops, _info(access_gk, "shop", "mysql")) == (
        "identity alice may not reach target shop (rule 2 of [[access]])"
    )
    plain = Identity(subject="carol@example.com")
    assert access_gk.access_refusal(plain, _info(access_gk, "fromfile")) == (
        "identity carol@example.com may not reach target fromfile (rule 2 of [[access]])"
    )
    # Rule 4 allows subjects by glob.
    assert access_gk.access_refusal(plain, _info(access_gk, "app")) is None
    assert access_gk.access_refusal(Identity(subject="alice"), _info(access_gk, "indsn")) is None


def test_access_actor_globs(access_gk: Gatekeeper) -> None:
    agent = Identity(subject="carol@example.com", actor=("agent-1", "runbook-9"), is_agent=True)
    assert access_gk.access_refusal(agent, _info(access_gk, "indsn")) == (
        "identity carol@example.com (via agent-1 via runbook-9) may not reach target indsn (rule 3 of [[access]])"
    )
    assert access_gk.access_refusal(agent, _info(access_gk, "app")) is None  # rule 3 is for indsn only


def test_access_default_deny_when_rules_exist(access_gk: Gatekeeper) -> None:
    assert access_gk.access_refusal(Identity(subject="mallory"), _info(access_gk, "app")) == (
        "identity mallory may not reach target app (no [[access]] rule allows it)"
    )
