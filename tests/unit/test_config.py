"""gateway.config: loading, ${VAR} expansion, strict conversion, checks and error messages."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from sqlward.adapters.base import UpstreamTLS
from sqlward.gateway.config import (
    Config,
    ConfigError,
    ListenerConfig,
    load_config,
    mask_dsn,
    parse_dsn,
    parse_listen,
)
from sqlward.policy.rules import EnvironmentPolicy, Rule

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "examples" / "dev.toml"

MINIMAL = """
[gateway]
name = "dev"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[targets]]
name = "app-dev"
protocol = "postgres"
environment = "development"
dsn = "postgresql://svc@127.0.0.1:5432/app"
"""


def write(tmp_path: Path, text: str, name: str = "sqlward.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    err = info.value
    assert str(err).startswith(f"{path}: "), str(err)
    return err


def assert_problem(err: ConfigError, path: str, *fragments: str) -> None:
    """Some line of the error is `FILE: path: ...` and contains every fragment."""
    lines = [line for line in str(err).splitlines() if line.startswith(f"{err.file}: {path}: ")]
    assert lines, f"no problem at {path} in:\n{err}"
    assert any(all(f in line for f in fragments) for line in lines), f"{fragments} not in:\n{err}"


# ---------------------------------------------------------------------------------------------
# Valid files


FULL = """
[gateway]
name = "dev"

[[listeners]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:6432"
tls = { cert_file = "gw.crt", key_file = "gw.key", require = true }
default_target = "app-dev"
max_message_size = 1048576

[[listeners]]
protocol = "mysql"
listen = "[::1]:3307"

[[targets]]
name = "app-dev"
protocol = "postgres"
environment = "development"
dsn = "postgresql://svc@127.0.0.1:5432/app?sslmode=prefer"
password = "${APP_DEV_PASSWORD}"

[[targets]]
name = "shop"
protocol = "mysql"
environment = "production"
dsn = "mariadb://shop@db.internal/shop"
password_file = "secrets/shop.pw"

[[identities]]
name = "alice"
groups = ["dba"]
display_name = "Alice"
secret = "${ALICE_SECRET}"

[[identities]]
name = "bot"
agent = true
secret_file = "secrets/bot.secret"

[audit]
file = "logs/audit.jsonl"
fsync = true

[environments.production]
default_action = "deny"
allow_unparsed = false

[environments."qa env"]

[[rules]]
id = "no-drop"
operations = ["drop"]
environments = ["production", "nowhere"]
action = "deny"

[[rules]]
id = "review-deletes"
operations = ["delete"]
has_where = false
action = "review"
"""


@pytest.fixture
def full_dir(tmp_path: Path) -> Path:
    (tmp_path / "gw.crt").write_text("cert")
    (tmp_path / "gw.key").write_text("key")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "shop.pw").write_text("shop-pw\n")
    (tmp_path / "secrets" / "bot.secret").write_text("bot-secret\n")
    return tmp_path


def test_full_config_round_trip(full_dir: Path) -> None:
    path = write(full_dir, FULL)
    config = load_config(path, env={"APP_DEV_PASSWORD": "pw-123", "ALICE_SECRET": "alice-s3cret"})
    assert isinstance(config, Config)
    assert config.source == str(full_dir / "sqlward.toml")
    assert config.base_dir == str(full_dir)
    assert config.gateway.name == "dev"

    pg, my = config.listeners
    assert (pg.name, pg.protocol, pg.host, pg.port) == ("pg", "postgres", "127.0.0.1", 6432)
    assert pg.tls is not None and pg.tls.require is True
    assert pg.tls.cert_file == str(full_dir / "gw.crt") and pg.tls.key_file == str(full_dir / "gw.key")
    assert pg.default_target == "app-dev" and pg.max_message_size == 1048576
    assert (my.name, my.host, my.port, my.tls, my.default_target) == ("mysql-3307", "::1", 3307, None, "")
    assert my.max_message_size == 64 * 1024 * 1024

    app, shop = config.targets
    assert app.password == "pw-123" and app.password_file == ""
    assert shop.password is None and shop.password_file == str(full_dir / "secrets" / "shop.pw")

    alice, bot = config.identities
    assert (alice.name, alice.groups, alice.display_name, alice.agent, alice.secret) == (
        "alice",
        ("dba",),
        "Alice",
        False,
        "alice-s3cret",
    )
    assert bot.agent is True and bot.secret is None and bot.secret_file == str(full_dir / "secrets" / "bot.secret")

    assert config.audit.file == str(full_dir / "logs" / "audit.jsonl") and config.audit.fsync is True
    assert config.environments == {
        "production": EnvironmentPolicy(default_action="deny", allow_unparsed=False),
        "qa env": EnvironmentPolicy(),
    }
    assert config.rules == (
        Rule(id="no-drop", operations=("drop",), environments=("production", "nowhere"), action="deny"),
        Rule(id="review-deletes", operations=("delete",), has_where=False, action="review"),
    )


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.listeners[0].name == "postgres-6432"
    assert config.identities == () and config.rules == () and config.environments == {}
    assert config.audit.file == str(tmp_path / "audit.jsonl") and config.audit.fsync is False


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    audit = tmp_path / "elsewhere" / "a.jsonl"
    config = load_config(write(tmp_path, MINIMAL + f'\n[audit]\nfile = "{audit}"\n'), env={})
    assert config.audit.file == str(audit)


def test_relative_paths_resolve_against_config_dir_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "pw").write_text("x")
    text = MINIMAL.replace('dsn = "postgresql://svc@127.0.0.1:5432/app"', 'dsn = "postgresql://svc@h/app"\npassword_file = "pw"')
    path = write(sub, text)
    monkeypatch.chdir(tmp_path)
    config = load_config(os.path.relpath(path), env={})
    assert config.targets[0].password_file == str(sub / "pw")
    assert config.source == str(sub / "sqlward.toml")


def test_example_file_loads_with_env_set() -> None:
    config = load_config(str(EXAMPLE), env={"SQLWARD_ALICE_SECRET": "alice-secret", "SQLWARD_ANALYST_SECRET": "a"})
    assert [li.name for li in config.listeners] == ["pg", "my"]
    assert config.listeners[1].protocol == "mysql" and config.listeners[1].port == 6603
    assert (config.listeners[0].host, config.listeners[0].port) == ("127.0.0.1", 6432)
    assert {t.name: t.environment for t in config.targets} == {
        "demo": "development", "demo-prod": "production",
        "demo-my": "development", "demo-my-prod": "production",
    }
    ids = {i.name: i for i in config.identities}
    assert ids["alice"].groups == ("dba",) and ids["alice"].secret == "alice-secret"
    assert ids["ci-agent"].agent is True
    assert [m.id for m in config.masks] == ["customer-email"] and config.masks[0].exempt_groups == ("dba",)
    rules = {r.id: r for r in config.rules}
    assert rules["no-drop-in-production"].operations == ("drop",)
    assert rules["no-drop-in-production"].environments == ("production",)
    assert rules["no-truncate-in-production"].action == "deny"
    assert config.audit.file == str(EXAMPLE.parent / "audit.jsonl")
    dsn = parse_dsn(config.targets[0].dsn, "postgres")
    assert (dsn.host, dsn.port, dsn.user, dsn.database) == ("127.0.0.1", 5432, "postgres", "sqlward_demo")


def test_example_file_without_env_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(EXAMPLE), env={"SQLWARD_ANALYST_SECRET": "a"})
    assert str(info.value) == (
        f"{EXAMPLE}: $.identities[0].secret: environment variable SQLWARD_ALICE_SECRET is not set"
    )


# ---------------------------------------------------------------------------------------------
# ${VAR} expansion


def test_expansion_everywhere_in_strings_and_escape(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "dev"', 'name = "gw-${ENV_NAME}-$${LITERAL}-$$-$X-${ENV_NAME}"')
    text = text.replace("127.0.0.1:5432/app", "${DB_HOST}:5432/app")
    config = load_config(write(tmp_path, text), env={"ENV_NAME": "blue", "DB_HOST": "db.example"})
    assert config.gateway.name == "gw-blue-${LITERAL}-$$-$X-blue"
    assert parse_dsn(config.targets[0].dsn, "postgres").host == "db.example"


def test_expansion_in_arrays_and_tables(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[identities]]\nname = "a"\ngroups = ["x", "${GROUP}"]\n'
    config = load_config(write(tmp_path, text), env={"GROUP": "ops"})
    assert config.identities[0].groups == ("x", "ops")


def test_expanded_values_are_not_expanded_again(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "dev"', 'name = "${A}"')
    config = load_config(write(tmp_path, text), env={"A": "${B}", "B": "no"})
    assert config.gateway.name == "${B}"


def test_empty_variable_counts_as_set(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "dev"', 'name = "dev${SUFFIX}"')
    assert load_config(write(tmp_path, text), env={"SUFFIX": ""}).gateway.name == "dev"


def test_unset_variable_reports_path(tmp_path: Path) -> None:
    text = MINIMAL + 'password = "${APP_DEV_PASSWORD}"\n'
    err = load_error(tmp_path, text)
    assert str(err) == f"{err.file}: $.targets[0].password: environment variable APP_DEV_PASSWORD is not set"
    assert err.path == "$.targets[0].password"


def test_unset_variables_all_reported(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "dev"', 'name = "${ONE}"') + 'password = "${TWO}"\n'
    err = load_error(tmp_path, text)
    assert_problem(err, "$.gateway.name", "ONE is not set")
    assert_problem(err, "$.targets[0].password", "TWO is not set")


def test_unset_variable_in_odd_table_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + '\n[environments."my env"]\ndefault_action = "${ACT}"\n')
    assert_problem(err, '$.environments["my env"].default_action', "ACT is not set")


def test_malformed_reference_does_not_echo_the_text(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + 'password = "hunter${2 secret}"\n')
    assert_problem(err, "$.targets[0].password", "malformed ${...}", "$${")
    assert "secret}" not in str(err) and "hunter" not in str(err)
    err = load_error(tmp_path, MINIMAL + 'password = "hunter${OPEN"\n')
    assert_problem(err, "$.targets[0].password", "unterminated ${")
    assert "hunter" not in str(err)


# ---------------------------------------------------------------------------------------------
# File-level errors


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[gateway]\nname = "dev"\nlisten = \n')
    assert str(err) == f"{err.file}: line 3, column 10: TOML syntax error: Invalid value"


def test_toml_error_at_end_of_document(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[gateway]\nname = "dev')
    assert str(err).startswith(f"{err.file}: ") and "TOML syntax error" in str(err)
    assert "dev" not in str(err).removeprefix(err.file)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env={})
    assert str(info.value).startswith(f"{path}: ") and "UTF-8" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Conversion errors (msgspec, reworded)


@pytest.mark.parametrize(
    ("old", "new", "path", "fragments"),
    [
        ('dsn = "postgresql://svc@127.0.0.1:5432/app"', "dsn = 5432", "$.targets[0].dsn", ("Expected `str`, got `int`",)),
        ('listen = "127.0.0.1:6432"', 'listen = "127.0.0.1:6432"\nmax_message_size = "big"', "$.listeners[0].max_message_size", ("Expected `int`, got `str`",)),
        ('listen = "127.0.0.1:6432"', 'listen = "127.0.0.1:6432"\nmax_message_size = 10', "$.listeners[0].max_message_size", ("Expected `int` >= 1024",)),
        ('listen = "127.0.0.1:6432"', 'listen = "127.0.0.1:6432"\ntls = { cert_file = "c" }', "$.listeners[0].tls.key_file", ("required field is missing",)),
        ('name = "app-dev"\n', "", "$.targets[0].name", ("required field is missing",)),
        ('[gateway]\nname = "dev"\n', "", "$.gateway", ("required field is missing",)),
        ('listen = "127.0.0.1:6432"', 'lisen = "127.0.0.1:6432"', "$.listeners[0].lisen", ("unknown field", "listen")),
        ('[gateway]\nname = "dev"', '[gateway]\nname = "dev"\nport = 1', "$.gateway.port", ("unknown field (expected one of: name, policy_files, max_unauthenticated, max_unauthenticated_per_address, drain_seconds, log_level, log_format)",)),
        ("[gateway]", "colour = 'red'\n[gateway]", "$.colour", ("unknown field", "listeners", "targets")),
        ('[gateway]\nname = "dev"', '[gateway]\nname = "dev"\n[audit]\nfsync = "yes"', "$.audit.fsync", ("Expected `bool`, got `str`",)),
        ('environment = "development"', "environment = 1.5", "$.targets[0].environment", ("Expected `str`, got `float`",)),
        ('name = "dev"', "name = 1979-05-27", "$.gateway.name", ("Expected `str`, got `date`",)),
    ],
)
def test_conversion_errors(tmp_path: Path, old: str, new: str, path: str, fragments: tuple[str, ...]) -> None:
    assert old in MINIMAL
    err = load_error(tmp_path, MINIMAL.replace(old, new, 1))
    assert_problem(err, path, *fragments)


def test_unknown_field_lists_expected_fields(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + 'pasword = "x"\n')
    assert_problem(err, "$.targets[0].pasword", "unknown field", "password", "password_file", "dsn")


def test_source_cannot_be_set_by_the_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, 'source = "x"\n' + MINIMAL)
    assert_problem(err, "$.source", "unknown field")


def test_empty_listener_and_target_lists(tmp_path: Path) -> None:
    text = 'listeners = []\ntargets = []\n[gateway]\nname = "x"\n'
    err = load_error(tmp_path, text)
    assert_problem(err, "$.listeners", "Expected `array` of length >= 1")


def test_environment_errors_name_the_environment(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + '\n[environments.production]\ndefault_action = "maybe"\n')
    assert_problem(err, "$.environments.production.default_action", "Invalid enum value 'maybe'")
    err = load_error(tmp_path, MINIMAL + "\n[environments.production]\nallow = true\n")
    assert_problem(err, "$.environments.production.allow", "unknown field", "default_action", "allow_unparsed")


def test_environments_must_be_a_table(tmp_path: Path) -> None:
    err = load_error(tmp_path, 'environments = ["production"]\n' + MINIMAL)
    assert_problem(err, "$.environments", "Expected a table")


def test_rule_errors(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + '\n[[rules]]\nid = "r"\naction = "block"\n')
    assert_problem(err, "$.rules[0].action", "Invalid enum value 'block'")
    err = load_error(tmp_path, MINIMAL + '\n[[rules]]\naction = "deny"\n')
    assert_problem(err, "$.rules[0].id", "required field is missing")


def test_new_rule_criteria_errors_name_the_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + '\n[[rules]]\nid = "r"\naction = "deny"\nhours = "9-17"\ndays = ["someday"]\n')
    assert_problem(err, "$.rules[0].hours", "HH:MM-HH:MM")
    assert_problem(err, "$.rules[0].days", "unknown day 'someday'")
    err = load_error(tmp_path, MINIMAL + '\n[[rules]]\nid = "r"\naction = "allow"\napprovers = ["group:dba"]\n')
    assert_problem(err, "$.rules[0].approvers", "only a review rule")


def test_mask_errors_name_the_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + '\n[[masks]]\nid = "m"\nfunction = "scramble"\ncolumns = ["a.b"]\n')
    assert_problem(err, "$.masks[0].function", "Invalid enum value 'scramble'")
    err = load_error(tmp_path, MINIMAL + '\n[[masks]]\nid = "m"\n')
    assert_problem(err, "$.masks[0].columns", "columns (globs) or classifiers")
    err = load_error(tmp_path, MINIMAL + '\n[[masks]]\nid = "m"\ncolumns = ["a.b"]\nfunction = "hash"\n')
    assert_problem(err, "$.masking.hash_key", "function \"hash\"")
    err = load_error(tmp_path, MINIMAL + '\n[[masks]]\nid = "m"\ncolumns = ["a.b"]\n\n[[masks]]\nid = "m"\ncolumns = ["c"]\n')
    assert_problem(err, "$.masks[1].id", "duplicate mask id 'm'")
    err = load_error(tmp_path, MINIMAL + '\n[masking]\nhash_key = "k"\nhash_key_file = "f"\n')
    assert_problem(err, "$.masking.hash_key_file", "both hash_key and hash_key_file")


def test_masks_load_with_a_hash_key_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[masking]\nhash_key = "${KEY}"\n\n[[masks]]\nid = "m"\ncolumns = ["*.ssn"]\nfunction = "hash"\nexempt_groups = ["dpo"]\n')
    config = load_config(path, env={"KEY": "s3cret"})
    assert config.masking.hash_key == "s3cret"
    assert config.masks[0].columns == ("*.ssn",) and config.masks[0].exempt_groups == ("dpo",)


# ---------------------------------------------------------------------------------------------
# Checks


def test_duplicate_names(tmp_path: Path) -> None:
    text = MINIMAL + """
[[listeners]]
name = "postgres-6432"
protocol = "postgres"
listen = "127.0.0.1:7432"

[[targets]]
name = "app-dev"
protocol = "postgres"
environment = "staging"
dsn = "postgresql://svc@h/app"

[[identities]]
name = "alice"
[[identities]]
name = "alice"

[[rules]]
id = "r1"
action = "deny"
[[rules]]
id = "r1"
action = "allow"
"""
    err = load_error(tmp_path, text)
    assert_problem(err, "$.listeners[1].name", "duplicate listener name 'postgres-6432'", "$.listeners[0]")
    assert_problem(err, "$.targets[1].name", "duplicate target name 'app-dev'", "$.targets[0]")
    assert_problem(err, "$.identities[1].name", "duplicate identity name 'alice'", "$.identities[0]")
    assert_problem(err, "$.rules[1].id", "duplicate rule id 'r1'", "$.rules[0]")
    assert len(err.problems) == 4


def test_duplicate_listen_address(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[listeners]]\nname = "again"\nprotocol = "postgres"\nlisten = "127.0.0.1:6432"\n'
    err = load_error(tmp_path, text)
    assert_problem(err, "$.listeners[1].listen", "already used by $.listeners[0]")


def test_port_zero_may_repeat(tmp_path: Path) -> None:
    text = MINIMAL.replace("127.0.0.1:6432", "127.0.0.1:0")
    text += '\n[[listeners]]\nname = "b"\nprotocol = "postgres"\nlisten = "127.0.0.1:0"\n'
    config = load_config(write(tmp_path, text), env={})
    assert [li.port for li in config.listeners] == [0, 0]


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        ("6432", "expected host:port or [IPv6]:port"),
        (":6432", "expected host:port"),
        ("127.0.0.1:", "port must be a number"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:70000", "port must be a number from 0 to 65535"),
        ("::1:6432", "IPv6 addresses must be written in brackets"),
        ("[::1]6432", "expected host:port"),
        ("[nothost]:6432", "is not an IPv6 address"),
        ("bad host:6432", "is not a host name"),
    ],
)
def test_bad_listen_address(tmp_path: Path, listen: str, fragment: str) -> None:
    err = load_error(tmp_path, MINIMAL.replace("127.0.0.1:6432", listen))
    assert_problem(err, "$.listeners[0].listen", fragment)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:6432", "127.0.0.1", 6432),
        ("0.0.0.0:5432", "0.0.0.0", 5432),
        ("localhost:1", "localhost", 1),
        ("[::1]:6432", "::1", 6432),
        ("[::]:0", "::", 0),
        ("gw-1.internal:65535", "gw-1.internal", 65535),
    ],
)
def test_listen_address_parsing(listen: str, host: str, port: int) -> None:
    assert parse_listen(listen) == (host, port)
    li = ListenerConfig(protocol="postgres", listen=listen)
    assert (li.host, li.port, li.name) == (host, port, f"postgres-{port}")


def test_unknown_protocol(tmp_path: Path) -> None:
    text = MINIMAL.replace('protocol = "postgres"', 'protocol = "oracle"')
    err = load_error(tmp_path, text)
    assert_problem(err, "$.listeners[0].protocol", "unknown protocol 'oracle'", "postgres, mysql")
    assert_problem(err, "$.targets[0].protocol", "unknown protocol 'oracle'", "postgres, mysql")


def test_default_target_protocol_mismatch(tmp_path: Path) -> None:
    text = MINIMAL.replace('listen = "127.0.0.1:6432"', 'listen = "127.0.0.1:6432"\ndefault_target = "shop"')
    text += '\n[[targets]]\nname = "shop"\nprotocol = "mysql"\nenvironment = "development"\ndsn = "mysql://u@h/shop"\n'
    err = load_error(tmp_path, text)
    assert_problem(err, "$.listeners[0].default_target", "'shop' speaks mysql", "expected a postgres target")


def test_default_target_unknown(tmp_path: Path) -> None:
    text = MINIMAL.replace('listen = "127.0.0.1:6432"', 'listen = "127.0.0.1:6432"\ndefault_target = "nope"')
    err = load_error(tmp_path, text)
    assert_problem(err, "$.listeners[0].default_target", "no target is named 'nope'")


@pytest.mark.parametrize(
    ("protocol", "dsn", "fragment"),
    [
        ("postgres", "mysql://svc@h/app", "scheme mysql:// does not match protocol postgres (expected postgresql:// or postgres://)"),
        ("mysql", "postgresql://svc@h/app", "scheme postgresql:// does not match protocol mysql (expected mysql:// or mariadb://)"),
        ("postgres", "svc@h/app", "expected a URL starting with postgresql:// or postgres://"),
        ("postgres", "postgresql://svc@/app", "DSN has no host"),
        ("postgres", "postgresql://h/app", "DSN has no user"),
        ("postgres", "postgresql://svc@h:abc/app", "malformed DSN"),
        ("postgres", "postgresql://svc@h:0/app", "port must be from 1 to 65535"),
        ("postgres", "postgresql://svc@[::1/app", "malformed DSN"),
        ("postgres", "postgresql://svc@h/app?sslmode=sometimes", "sslmode must be one of"),
        ("postgres", "postgresql://svc@h/app?application_name=x", "unknown DSN parameter 'application_name'"),
        ("postgres", "postgresql://svc@h/app?sslmode=require&sslmode=disable", "given twice"),
        ("postgres", "postgresql://svc@h/app?connect_timeout=soon", "connect_timeout must be a positive number"),
        ("postgres", "postgresql://svc@h/app?connect_timeout=0", "connect_timeout must be a positive number"),
        ("postgres", "postgresql://svc@h/app/extra", "single database name"),
        ("postgres", "postgresql://svc@h/app?sslrootcert=missing-ca.pem", "cannot read sslrootcert file"),
    ],
)
def test_bad_dsn(tmp_path: Path, protocol: str, dsn: str, fragment: str) -> None:
    text = MINIMAL.replace('protocol = "postgres"', f'protocol = "{protocol}"').replace(
        "postgresql://svc@127.0.0.1:5432/app", dsn
    )
    err = load_error(tmp_path, text)
    assert_problem(err, "$.targets[0].dsn", fragment)


def test_dsn_password_is_never_in_errors(tmp_path: Path) -> None:
    text = MINIMAL.replace("svc@127.0.0.1:5432/app", "svc:Sup3rSecret@127.0.0.1:5432/app?bogus=1")
    err = load_error(tmp_path, text)
    assert "Sup3rSecret" not in str(err)


def test_password_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    err = load_error(tmp_path, MINIMAL + 'password = "Sup3rSecret"\npassword_file = "pw"\n')
    assert_problem(err, "$.targets[0].password_file", "both password and password_file are set")
    assert "Sup3rSecret" not in str(err)


def test_password_in_dsn_and_field(tmp_path: Path) -> None:
    text = MINIMAL.replace("svc@", "svc:Sup3rSecret@") + 'password = "other"\n'
    err = load_error(tmp_path, text)
    assert_problem(err, "$.targets[0].dsn", "password given both in the DSN and in password/password_file")
    assert "Sup3rSecret" not in str(err) and "other" not in str(err)


def test_secret_and_secret_file(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("x")
    err = load_error(tmp_path, MINIMAL + '\n[[identities]]\nname = "a"\nsecret = "Sup3rSecret"\nsecret_file = "s"\n')
    assert_problem(err, "$.identities[0].secret_file", "both secret and secret_file are set")
    assert "Sup3rSecret" not in str(err)


def test_empty_secret_refused(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + '\n[[identities]]\nname = "a"\nsecret = "${EMPTY}"\n', env={"EMPTY": ""})
    assert_problem(err, "$.identities[0].secret", "expected a non-empty secret")


@pytest.mark.parametrize(
    ("extra", "path", "fragment"),
    [
        ('password_file = "missing.pw"', "$.targets[0].password_file", "cannot read password file"),
        ('\n[[identities]]\nname = "a"\nsecret_file = "missing.secret"', "$.identities[0].secret_file", "cannot read secret file"),
    ],
)
def test_unreadable_secret_files(tmp_path: Path, extra: str, path: str, fragment: str) -> None:
    err = load_error(tmp_path, MINIMAL + extra + "\n")
    assert_problem(err, path, fragment, str(tmp_path), "No such file or directory")


def test_secret_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    err = load_error(tmp_path, MINIMAL + 'password_file = "adir"\n')
    assert_problem(err, "$.targets[0].password_file", "cannot read password file", "Is a directory")


def test_unreadable_tls_files(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'listen = "127.0.0.1:6432"', 'listen = "127.0.0.1:6432"\ntls = { cert_file = "no.crt", key_file = "no.key" }'
    )
    err = load_error(tmp_path, text)
    assert_problem(err, "$.listeners[0].tls.cert_file", "cannot read TLS certificate file", str(tmp_path / "no.crt"))
    assert_problem(err, "$.listeners[0].tls.key_file", "cannot read TLS key file", str(tmp_path / "no.key"))


def test_empty_names(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "dev"', 'name = ""').replace('name = "app-dev"', 'name = ""')
    err = load_error(tmp_path, text)
    assert_problem(err, "$.gateway.name", "expected a non-empty name")
    assert_problem(err, "$.targets[0].name", "expected a non-empty name")


def test_unknown_environment_names_are_fine(tmp_path: Path) -> None:
    text = MINIMAL.replace('environment = "development"', 'environment = "moon"')
    text += '\n[[rules]]\nid = "r"\nenvironments = ["mars"]\ntargets = ["nowhere"]\naction = "deny"\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.targets[0].environment == "moon" and config.rules[0].environments == ("mars",)


# ---------------------------------------------------------------------------------------------
# Secrets stay out of repr / str


def test_secrets_absent_from_repr(full_dir: Path) -> None:
    text = FULL.replace("svc@127.0.0.1", "svc:DsnS3cret@127.0.0.1").replace(
        'password = "${APP_DEV_PASSWORD}"\n', ""
    )
    text = text.replace(
        'dsn = "mariadb://shop@db.internal/shop"\npassword_file = "secrets/shop.pw"',
        'dsn = "mariadb://shop@db.internal/shop"\npassword = "${APP_DEV_PASSWORD}"',
    )
    config = load_config(write(full_dir, text), env={"APP_DEV_PASSWORD": "PgS3cret", "ALICE_SECRET": "AliceS3cret"})
    assert config.targets[1].password == "PgS3cret" and config.identities[0].secret == "AliceS3cret"
    for shown in (repr(config), str(config), repr(config.targets), str(config.targets[1]), repr(config.identities[0])):
        for secret in ("PgS3cret", "AliceS3cret", "DsnS3cret"):
            assert secret not in shown
    assert "password='***'" in repr(config.targets[1])
    assert "secret='***'" in repr(config.identities[0])
    assert "svc:***@127.0.0.1" in repr(config.targets[0])
    rich = dict(config.identities[0].__rich_repr__())
    assert "AliceS3cret" not in repr(rich)


def test_parsed_dsn_repr_hides_password() -> None:
    dsn = parse_dsn("postgresql://u:Pw0rd@h/db", "postgres")
    assert dsn.password == "Pw0rd"
    assert "Pw0rd" not in repr(dsn) and "Pw0rd" not in str(dsn)


def test_mask_dsn() -> None:
    assert mask_dsn("postgresql://u:p%40ss@h:5/db?sslmode=require") == "postgresql://u:***@h:5/db?sslmode=require"
    assert mask_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_dsn("postgresql://u:x@[::1/db") == "<unparsable DSN>"


# ---------------------------------------------------------------------------------------------
# DSN parsing table


@pytest.mark.parametrize(
    ("protocol", "dsn", "host", "port", "user", "database", "tls"),
    [
        ("postgres", "postgresql://svc@127.0.0.1:5432/app", "127.0.0.1", 5432, "svc", "app", UpstreamTLS()),
        ("postgres", "postgres://svc@db", "db", 5432, "svc", "svc", UpstreamTLS()),
        ("postgres", "postgresql://svc@db/", "db", 5432, "svc", "svc", UpstreamTLS()),
        ("postgres", "postgresql://svc@[::1]:6543/app", "::1", 6543, "svc", "app", UpstreamTLS()),
        ("postgres", "postgresql://svc@[2001:db8::5]/app", "2001:db8::5", 5432, "svc", "app", UpstreamTLS()),
        ("postgres", "postgresql://my%40user@h/my%20db", "h", 5432, "my@user", "my db", UpstreamTLS()),
        ("mysql", "mysql://root@127.0.0.1/shop", "127.0.0.1", 3306, "root", "shop", UpstreamTLS()),
        ("mysql", "mariadb://root@m:3307", "m", 3307, "root", "root", UpstreamTLS()),
        ("postgres", "postgresql://u@h/d?sslmode=disable", "h", 5432, "u", "d", UpstreamTLS(mode="disable")),
        ("postgres", "postgresql://u@h/d?sslmode=allow", "h", 5432, "u", "d", UpstreamTLS(mode="allow")),
        ("postgres", "postgresql://u@h/d?sslmode=prefer", "h", 5432, "u", "d", UpstreamTLS(mode="prefer")),
        ("postgres", "postgresql://u@h/d?sslmode=require", "h", 5432, "u", "d", UpstreamTLS(mode="require")),
        ("postgres", "postgresql://u@h/d?sslmode=verify-ca&sslrootcert=/ca.pem", "h", 5432, "u", "d", UpstreamTLS(mode="verify-ca", root_cert="/ca.pem")),
        ("postgres", "postgresql://u@h/d?sslmode=verify-full&sslrootcert=system", "h", 5432, "u", "d", UpstreamTLS(mode="verify-full")),
        (
            "postgres",
            "postgresql://u@h/d?sslmode=verify-full&sslrootcert=ca.pem&sslcert=/c/client.crt&sslkey=client.key",
            "h",
            5432,
            "u",
            "d",
            UpstreamTLS(mode="verify-full", root_cert="/base/ca.pem", cert_file="/c/client.crt", key_file="/base/client.key"),
        ),
        ("mysql", "mysql://u@h/d?sslmode=REQUIRED", "h", 3306, "u", "d", UpstreamTLS(mode="require")),
        ("mysql", "mysql://u@h/d?sslmode=VERIFY_IDENTITY", "h", 3306, "u", "d", UpstreamTLS(mode="verify-full")),
    ],
)
def test_dsn_table(protocol: str, dsn: str, host: str, port: int, user: str, database: str, tls: UpstreamTLS) -> None:
    parsed = parse_dsn(dsn, protocol, base_dir="/base")
    assert (parsed.host, parsed.port, parsed.user, parsed.database, parsed.tls) == (host, port, user, database, tls)
    assert parsed.connect_timeout == 10.0 and parsed.password == ""


def test_dsn_password_and_timeout() -> None:
    parsed = parse_dsn("postgresql://u:p%3Ass%40w@h/d?connect_timeout=2.5", "postgres")
    assert parsed.password == "p:ss@w" and parsed.connect_timeout == 2.5


# ---------------------------------------------------------------------------------------------
# Error object


def test_config_error_shape(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL.replace('dsn = "postgresql://svc@127.0.0.1:5432/app"', "dsn = 5432"))
    assert str(err) == f"{err.file}: $.targets[0].dsn: Expected `str`, got `int`"
    assert err.path == "$.targets[0].dsn"
    assert err.problems[0].message == "Expected `str`, got `int`"


# ---------------------------------------------------------------------------------------------
# Identity: [[oidc]], [identity], [[access]], listener keys for tokens and mutual TLS

JWKS = '{"keys": []}'

IDENTITY = """
[[listeners]]
name = "pg-tls"
protocol = "postgres"
listen = "127.0.0.1:6433"
tls = { cert_file = "gw.crt", key_file = "gw.key" }
allow_plaintext_tokens = true
client_ca_file = "clients-ca.pem"
cert_identity = "san-uri"

[[oidc]]
issuer = "https://idp.example"
audiences = ["sqlward", "db"]
jwks_url = "https://idp.example/.well-known/jwks.json"
jwks_ca_file = "idp-ca.pem"
subject_claim = "email"
groups_claim = "roles"
algorithms = ["ES256", "PS256", "Ed25519"]
leeway_seconds = 5
jwks_refresh_seconds = 300
jwks_min_refetch_seconds = 10

[[oidc]]
issuer = "https://other.example"
audiences = ["sqlward"]
jwks_file = "keys/jwks.json"

[identity]
on_token_expiry = "close"
upstream_application_name = false
upstream_setting = true
sql_comment = true

[[access]]
targets = ["prod-*"]
environments = ["production"]
subjects = ["*@example.com"]
groups = ["dba"]
actors = ["runbook-*"]
action = "deny"

[[access]]
action = "allow"
"""


@pytest.fixture
def identity_dir(tmp_path: Path) -> Path:
    for name in ("gw.crt", "gw.key", "clients-ca.pem", "idp-ca.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(JWKS)
    return tmp_path


def test_identity_config_round_trip(identity_dir: Path) -> None:
    from sqlward.adapters.base import IdentitySettings
    from sqlward.gateway.config import AccessRule, IdentityOptions, IssuerConfig

    config = load_config(write(identity_dir, MINIMAL + IDENTITY), env={})
    plain, tls = config.listeners
    assert (plain.allow_plaintext_tokens, plain.client_ca_file, plain.cert_identity) == (False, "", "none")
    assert tls.allow_plaintext_tokens is True and tls.cert_identity == "san-uri"
    assert tls.client_ca_file == str(identity_dir / "clients-ca.pem")

    first, second = config.oidc
    assert first == IssuerConfig(
        issuer="https://idp.example",
        audiences=("sqlward", "db"),
        jwks_url="https://idp.example/.well-known/jwks.json",
        jwks_ca_file=str(identity_dir / "idp-ca.pem"),
        subject_claim="email",
        groups_claim="roles",
        algorithms=("ES256", "PS256", "Ed25519"),
        leeway_seconds=5,
        jwks_refresh_seconds=300,
        jwks_min_refetch_seconds=10,
    )
    assert second.jwks_file == str(identity_dir / "keys" / "jwks.json") and second.jwks_url == ""
    assert (second.subject_claim, second.groups_claim, second.algorithms) == ("sub", "groups", ("RS256", "ES256", "EdDSA"))
    assert (second.leeway_seconds, second.jwks_refresh_seconds, second.jwks_min_refetch_seconds) == (30, 600, 30)

    assert isinstance(config.identity, IdentityOptions) and isinstance(config.identity, IdentitySettings)
    assert config.identity.settings() == IdentitySettings(
        on_token_expiry="close", upstream_application_name=False, upstream_setting=True, sql_comment=True
    )
    assert type(config.identity.settings()) is IdentitySettings
    assert config.access == (
        AccessRule(
            targets=("prod-*",), environments=("production",), subjects=("*@example.com",), groups=("dba",),
            actors=("runbook-*",), action="deny",
        ),
        AccessRule(action="allow"),
    )


def test_identity_defaults(tmp_path: Path) -> None:
    from sqlward.adapters.base import IdentitySettings

    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.oidc == () and config.access == ()
    assert config.identity.settings() == IdentitySettings()
    assert config.identity.on_token_expiry == "refuse"


def _oidc(extra: str, base: str = 'issuer = "https://idp"\naudiences = ["sqlward"]\n') -> str:
    return MINIMAL + "\n[[oidc]]\n" + base + extra + "\n"


@pytest.mark.parametrize(
    ("text", "path", "fragments"),
    [
        (_oidc('jwks_file = "keys.json"\njwks_url = "https://idp/jwks"'), "$.oidc[0].jwks_url", ("both jwks_file and jwks_url are set",)),
        (_oidc(""), "$.oidc[0]", ("expected jwks_file or jwks_url",)),
        (_oidc('jwks_url = "http://idp/jwks"'), "$.oidc[0].jwks_url", ("expected an https:// URL",)),
        (_oidc('jwks_url = "https:///jwks"'), "$.oidc[0].jwks_url", ("expected https://HOST",)),
        (_oidc('jwks_url = "https://idp:99999/jwks"'), "$.oidc[0].jwks_url", ("malformed URL",)),
        (_oidc('jwks_file = "keys.json"\njwks_ca_file = "keys.json"'), "$.oidc[0].jwks_ca_file", ("only used with jwks_url",)),
        (_oidc('jwks_url = "https://idp/jwks"\njwks_ca_file = "no-ca.pem"'), "$.oidc[0].jwks_ca_file", ("cannot read CA file", "No such file")),
        (_oidc('jwks_file = "missing.json"'), "$.oidc[0].jwks_file", ("cannot read JWKS file", "No such file")),
        (_oidc('jwks_file = "notjson.json"'), "$.oidc[0].jwks_file", ("is not JSON",)),
        (_oidc('jwks_file = "nokeys.json"'), "$.oidc[0].jwks_file", ("is not a JWK set",)),
        (_oidc('jwks_file = "keys.json"\nalgorithms = ["RS256", "HS256"]'), "$.oidc[0].algorithms[1]", ("HS256 is a shared-secret algorithm", "public keys only")),
        (_oidc('jwks_file = "keys.json"\nalgorithms = ["none"]'), "$.oidc[0].algorithms[0]", ("alg none) are never accepted",)),
        (_oidc('jwks_file = "keys.json"\nalgorithms = ["RS1"]'), "$.oidc[0].algorithms[0]", ("unknown algorithm 'RS1'", "RS256", "EdDSA")),
        (_oidc('jwks_file = "keys.json"\nalgorithms = []'), "$.oidc[0].algorithms", ("expected at least one algorithm",)),
        (_oidc('jwks_file = "keys.json"\nsubject_claim = ""'), "$.oidc[0].subject_claim", ("expected a claim name",)),
        (_oidc('jwks_file = "keys.json"\nleeway_seconds = 3600'), "$.oidc[0].leeway_seconds", ("Expected `int` <= 300",)),
        (_oidc('jwks_file = "keys.json"\njwks_refresh_seconds = 0'), "$.oidc[0].jwks_refresh_seconds", ("Expected `int` >= 1",)),
        (_oidc('jwks_file = "keys.json"\njwks_uri = "x"'), "$.oidc[0].jwks_uri", ("unknown field", "jwks_url", "jwks_file")),
        (_oidc('jwks_file = "keys.json"', base='issuer = "https://idp"\naudiences = []\n'), "$.oidc[0].audiences", ("Expected `array` of length >= 1",)),
        (_oidc('jwks_file = "keys.json"', base='issuer = "https://idp"\naudiences = [""]\n'), "$.oidc[0].audiences", ("non-empty audience",)),
        (_oidc('jwks_file = "keys.json"', base='audiences = ["a"]\n'), "$.oidc[0].issuer", ("required field is missing",)),
        (_oidc('jwks_file = "keys.json"', base='issuer = ""\naudiences = ["a"]\n'), "$.oidc[0].issuer", ("expected the issuer's identifier",)),
        (
            _oidc('jwks_file = "keys.json"') + '[[oidc]]\nissuer = "https://idp"\naudiences = ["b"]\njwks_file = "keys.json"\n',
            "$.oidc[1].issuer",
            ("duplicate issuer 'https://idp' (first at $.oidc[0])",),
        ),
        (MINIMAL + '\n[identity]\non_token_expiry = "logout"\n', "$.identity.on_token_expiry", ("Invalid enum value 'logout'",)),
        (MINIMAL + "\n[identity]\nsql_comments = true\n", "$.identity.sql_comments", ("unknown field", "sql_comment", "on_token_expiry")),
        (MINIMAL + '\n[[access]]\naction = "maybe"\n', "$.access[0].action", ("Invalid enum value 'maybe'",)),
        (MINIMAL + "\n[[access]]\ntargets = []\n", "$.access[0].action", ("required field is missing",)),
        (MINIMAL + '\n[[access]]\nusers = ["a"]\naction = "deny"\n', "$.access[0].users", ("unknown field", "subjects", "actors")),
        (MINIMAL + '\n[[access]]\nsubjects = [""]\naction = "deny"\n', "$.access[0].subjects", ("expected non-empty strings",)),
    ],
)
def test_identity_config_errors(tmp_path: Path, text: str, path: str, fragments: tuple[str, ...]) -> None:
    (tmp_path / "keys.json").write_text(JWKS)
    (tmp_path / "notjson.json").write_text("{")
    (tmp_path / "nokeys.json").write_text('{"k": []}')
    err = load_error(tmp_path, text)
    assert_problem(err, path, *fragments)


@pytest.mark.parametrize(
    ("listener_extra", "path", "fragment"),
    [
        ('client_ca_file = "ca.pem"', "$.listeners[0].client_ca_file", "client certificates need TLS"),
        ('cert_identity = "subject-cn"', "$.listeners[0].cert_identity", "needs client_ca_file"),
        ('tls = { cert_file = "ca.pem", key_file = "ca.pem" }\nclient_ca_file = "none.pem"', "$.listeners[0].client_ca_file", "cannot read client CA file"),
        ('cert_identity = "email"', "$.listeners[0].cert_identity", "Invalid enum value 'email'"),
        ('allow_plaintext_tokens = "yes"', "$.listeners[0].allow_plaintext_tokens", "Expected `bool`, got `str`"),
    ],
)
def test_listener_identity_errors(tmp_path: Path, listener_extra: str, path: str, fragment: str) -> None:
    (tmp_path / "ca.pem").write_text("x")
    text = MINIMAL.replace('listen = "127.0.0.1:6432"', f'listen = "127.0.0.1:6432"\n{listener_extra}')
    assert_problem(load_error(tmp_path, text), path, fragment)


def test_mutual_tls_listener_ok(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    text = MINIMAL.replace(
        'listen = "127.0.0.1:6432"',
        'listen = "127.0.0.1:6432"\ntls = { cert_file = "ca.pem", key_file = "ca.pem", require = true }\n'
        'client_ca_file = "ca.pem"\ncert_identity = "subject-cn"',
    )
    listener = load_config(write(tmp_path, text), env={}).listeners[0]
    assert (listener.client_ca_file, listener.cert_identity) == (str(tmp_path / "ca.pem"), "subject-cn")


# ---------------------------------------------------------------------------------------------
# [audit], [[audit.sinks]], [telemetry] (issue 14)


def _pem(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_audit_sinks_load_with_names_and_absolute_paths(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + """
[audit]
durability = "buffered"
[[audit.sinks]]
kind = "file"
path = "trail/audit.jsonl"
rotate_bytes = 1000000
[[audit.sinks]]
kind = "stdout"
required = false
[[audit.sinks]]
kind = "otlp"
endpoint = "http://collector:4318/v1/logs"
required = false
""")
    config = load_config(path, env={})
    names = [(s.name, s.kind, s.required) for s in config.audit.sinks]
    assert names == [("file", "file", True), ("stdout", "stdout", False), ("otlp", "otlp", False)]
    assert config.audit.sinks[0].path == str(tmp_path / "trail" / "audit.jsonl")
    assert config.audit.spool_dir == str(tmp_path / "audit-spool")


@pytest.mark.parametrize(("extra", "where", "fragment"), [
    ('[[audit.sinks]]\nkind = "file"\npath = "a.jsonl"\n[[audit.sinks]]\nkind = "file"\npath = "a.jsonl"\nname = "two"\n',
     "$.audit.sinks[1].path", "the same file"),
    ('[[audit.sinks]]\nkind = "stdout"\nrequired = false\n', "$.audit.sinks", "at least one required sink"),
    ('[[audit.sinks]]\nkind = "stdout"\npath = "x"\n', "$.audit.sinks[0].path", "not a setting of a stdout sink"),
    ('[[audit.sinks]]\nkind = "postgres"\ndsn = "mysql://x"\n', "$.audit.sinks[0].dsn", "postgresql://"),
    ('[[audit.sinks]]\nkind = "otlp"\nendpoint = "http://c/v1/logs"\nheaders = { "X-A" = "a\\r\\nX-B: b" }\n',
     "$.audit.sinks[0].headers", "line breaks"),
    ('[telemetry]\nendpoint = "http://c:4318"\nheaders = { "Bad Name" = "x" }\n', "$.telemetry.headers", "token name"),
    ('[audit]\ncheckpoint_seconds = inf\n', "$.audit.checkpoint_seconds", ""),
])
def test_bad_audit_settings_are_named(tmp_path: Path, extra: str, where: str, fragment: str) -> None:
    err = load_error(tmp_path, MINIMAL + extra)
    assert_problem(err, where, fragment)


def test_trace_upstream_needs_traces(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL.replace('dsn = "postgresql://svc@127.0.0.1:5432/app"', 'dsn = "postgresql://svc@127.0.0.1:5432/app"\ntrace_upstream = true'))
    assert_problem(err, "$.targets[0].trace_upstream", "needs traces")


def test_the_signing_key_is_checked_when_the_config_is_loaded(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    good = ed25519.Ed25519PrivateKey.generate()
    cases = {
        "encrypted.pem": (good.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"pw")), "an encrypted key"),
        "public.pem": (good.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
                       "not a PEM private key"),
        "rsa.pem": (_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "Ed25519 or ECDSA P-256"),
        "p384.pem": (_pem(ec.generate_private_key(ec.SECP384R1())), "Ed25519 or ECDSA P-256"),
        "garbage.pem": (b"hello", "not a PEM private key"),
    }
    for name, (data, fragment) in cases.items():
        (tmp_path / name).write_bytes(data)
        err = load_error(tmp_path, MINIMAL + f'[audit]\nsigning_key_file = "{name}"\n')
        assert_problem(err, "$.audit.signing_key_file", fragment)
    (tmp_path / "good.pem").write_bytes(_pem(good))
    load_config(write(tmp_path, MINIMAL + '[audit]\nsigning_key_file = "good.pem"\n'), env={})


def test_expansion_default_when_unset_or_empty(tmp_path: Path) -> None:
    """${NAME:-default}, as in the shell: the default when NAME is unset or empty; a set value wins."""
    text = MINIMAL.replace('name = "dev"', 'name = "${POD_NAME:-gw-0}"')
    assert load_config(write(tmp_path, text), env={}).gateway.name == "gw-0"
    assert load_config(write(tmp_path, text), env={"POD_NAME": ""}).gateway.name == "gw-0"
    assert load_config(write(tmp_path, text), env={"POD_NAME": "gw-7"}).gateway.name == "gw-7"
    text = MINIMAL.replace('name = "dev"', 'name = "${A:-}x"')
    assert load_config(write(tmp_path, text), env={}).gateway.name == "x"


def test_gateway_log_and_drain_settings(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "dev"', 'name = "dev"\nlog_level = "${LOG_LEVEL:-info}"\nlog_format = "json"\ndrain_seconds = 5')
    config = load_config(write(tmp_path, text), env={"LOG_LEVEL": "debug"})
    assert (config.gateway.log_level, config.gateway.log_format, config.gateway.drain_seconds) == ("debug", "json", 5)
    err = load_error(tmp_path, MINIMAL.replace('name = "dev"', 'name = "dev"\nlog_level = "loud"'))
    assert "$.gateway.log_level" in str(err)


def test_reload_plan_takes_the_policy_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    from sqlward.gateway.config import reload_plan

    running = load_config(write(tmp_path, MINIMAL, "a.toml"))
    changed = MINIMAL.replace('name = "dev"', 'name = "dev"\nlog_level = "debug"\nmax_unauthenticated = 7') + (
        '\n[[rules]]\nid = "r"\noperations = ["drop"]\naction = "deny"\n'
    )
    loaded = load_config(write(tmp_path, changed, "a.toml"))
    in_force, restart = reload_plan(running, loaded)
    assert [r.id for r in in_force.rules] == ["r"] and in_force.gateway.log_level == "debug"
    assert in_force.gateway.max_unauthenticated == running.gateway.max_unauthenticated
    assert restart == ["gateway.max_unauthenticated"]
    same, nothing = reload_plan(running, running)
    assert same == running and nothing == []
