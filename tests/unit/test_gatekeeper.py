"""gateway.gatekeeper (static identities, SCRAM verifiers, targets, policy delegation, audit)
and gateway.cli exit codes."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
import scramp

from adapters.base import AuditUnavailable, AuthError, Gatekeeper as GatekeeperProtocol, ScramSecret, Target, UpstreamTLS
from audit.events import ConnectionOpened
from audit.writer import JsonlWriter
from gateway import cli
from gateway.config import Config, ConfigError, load_config
from gateway.gatekeeper import ENGINE_FAILURE_RULE, SCRAM_ITERATIONS, Gatekeeper
from policy.model import Analysis, Decision, Identity, StatementFacts, TargetInfo

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
    for name in ("scram_secret", "identity_for_scram", "authenticate_password", "resolve_target", "analyse", "decide", "record"):
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
    pytest.importorskip("policy.engine")
    gatekeeper = Gatekeeper.from_config(config, audit_writer=_ListWriter())
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
    assert gk.scram_secret("mallory") is None
    assert gk.scram_secret("nopass") is None


def test_verifiers_are_salted_per_identity(config: Config) -> None:
    a = Gatekeeper.from_config(config, audit_writer=_ListWriter(), engine=StandInEngine())
    b = Gatekeeper.from_config(config, audit_writer=_ListWriter(), engine=StandInEngine())
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
        Gatekeeper.from_config(config, audit_writer=_ListWriter(), engine=StandInEngine())
    assert str(info.value).startswith(f"{config.source}: $.identities[1].secret_file: cannot read secret file")


def test_empty_secret_file_at_build(config: Config, tmp_path: Path) -> None:
    (tmp_path / "bot.secret").write_text("\n")
    with pytest.raises(ConfigError) as info:
        Gatekeeper.from_config(config, audit_writer=_ListWriter(), engine=StandInEngine())
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
    gatekeeper = Gatekeeper.from_config(config, audit_writer=_ListWriter(), engine=StandInEngine(fail=True))
    analysis = gatekeeper.analyse("SELECT 1", "postgres")
    decision = gatekeeper.decide(analysis, Identity(subject="alice"), TargetInfo(name="app", protocol="postgres", environment="development"))
    assert decision.action == "deny" and decision.rule_id == ENGINE_FAILURE_RULE


# ---------------------------------------------------------------------------------------------
# Audit


class _ListWriter:
    def __init__(self) -> None:
        self.events: list[msgspec.Struct] = []

    def write(self, event: msgspec.Struct) -> None:
        self.events.append(event)


def _event() -> ConnectionOpened:
    return ConnectionOpened(
        time=time.time(), gateway="gw-test", connection_id="c1", client_addr="127.0.0.1:5000", listener="pg", protocol="postgres"
    )


def test_record_writes_jsonl(gk: Gatekeeper, config: Config) -> None:
    gk.record(_event())
    lines = Path(config.audit.file).read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "connection.opened"


def test_record_with_given_writer(config: Config) -> None:
    writer = _ListWriter()
    gatekeeper = Gatekeeper.from_config(config, audit_writer=writer, engine=StandInEngine())
    gatekeeper.record(_event())
    assert len(writer.events) == 1
    gatekeeper.close()  # does not own the writer: nothing to close


def test_record_raises_audit_unavailable_when_writer_closed(config: Config, tmp_path: Path) -> None:
    writer = JsonlWriter(str(tmp_path / "closed.jsonl"))
    gatekeeper = Gatekeeper.from_config(config, audit_writer=writer, engine=StandInEngine())
    writer.close()
    with pytest.raises(AuditUnavailable):
        gatekeeper.record(_event())


def test_record_raises_audit_unavailable_after_close(gk: Gatekeeper) -> None:
    gk.close()
    with pytest.raises(AuditUnavailable):
        gk.record(_event())


def test_audit_file_in_missing_directory_is_a_config_error(config: Config, tmp_path: Path) -> None:
    bad = msgspec.structs.replace(config, audit=msgspec.structs.replace(config.audit, file=str(tmp_path / "no" / "dir" / "a.jsonl")))
    with pytest.raises(ConfigError) as info:
        Gatekeeper.from_config(bad, engine=StandInEngine())
    assert str(info.value).startswith(f"{config.source}: $.audit.file: cannot open audit file")


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_check_config_ok(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLWARD_ALICE_SECRET", "x")
    assert cli.main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out == f"{EXAMPLE}: ok (2 listeners, 4 targets, 2 identities, 2 rules)\n"


def test_cli_check_config_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLWARD_ALICE_SECRET", raising=False)
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
    fake = types.ModuleType("gateway.server")
    fake.run = seen.append
    monkeypatch.setitem(sys.modules, "gateway.server", fake)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["serve", "--config", config.source]) == 0
    assert seen == [config]


def test_cli_serve_startup_config_error(monkeypatch: pytest.MonkeyPatch, config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import types

    def run(cfg: Config) -> None:
        raise ConfigError.single(cfg.source, "$.audit.file", "cannot open audit file")

    fake = types.ModuleType("gateway.server")
    fake.run = run
    monkeypatch.setitem(sys.modules, "gateway.server", fake)
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
        [sys.executable, "-m", "gateway", "--version"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stdout.startswith("sqlward ")
