"""The example configurations in deploy/examples/ against their README.

deploy/examples/README.md has a table of variables per example (`### Variables ... (dev.toml)`,
`### Variables and files (production.toml)`): name, kind, default, meaning, example value. These
tests build each example's environment from that table alone (values from the Example column;
files of each kind made in a temporary directory: a certificate, its key, a CA, an audit signing
key, secret files, directories) and check:

- `sqlward check-config` passes with exactly those variables (and PATH) in its environment;
- each required variable, left out, gives the error naming it; a variable with a default, left
  out, gives the same config as the documented default;
- every `${VAR}` the example uses is in its table, and every row of the table is used;
- production.toml has the production shape (deny by default, guardrails on, postgres among the
  audit sinks, TLS everywhere, OIDC, signed audit, PostgreSQL approvals, telemetry);
- dev.toml's production targets deny by default and keep the demo's decisions (alice reads,
  DELETE without WHERE and DROP refused, the analyst's emails masked and writes refused).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sqlward.gateway.config import ConfigError, audit_sinks, load_config, parse_dsn
from tests.support.certs import make_pki

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"
README = EXAMPLES / "README.md"
NAMES = ("dev.toml", "production.toml")

_VAR_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_CODE = re.compile(r"`([^`]*)`")


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str
    default: str | None  # None: required
    example: str


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _code(cell: str) -> str:
    m = _CODE.search(cell)
    assert m, f"expected a `value` in the README cell {cell!r}"
    return m.group(1)


def readme_variables(example: str) -> dict[str, Variable]:
    """The variable table under the README's `### Variables ... (<example>)` heading."""
    text = README.read_text(encoding="utf-8")
    heading = re.search(rf"^### Variables[^\n]*\({re.escape(example)}\)[ \t]*$", text, re.M)
    assert heading, f"README.md has no '### Variables ... ({example})' heading"
    lines = text[heading.end():].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") or line.startswith("#"))
    assert lines[start].startswith("|"), f"no table under the variables heading of {example}"
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(_cells(line))
    header = [h.lower() for h in table[0]]
    assert header[:3] == ["variable", "kind", "default"] and "example" in header, header
    col = {name: header.index(name) for name in ("variable", "kind", "default", "example")}
    out: dict[str, Variable] = {}
    for row in table[2:]:
        name = _code(row[col["variable"]])
        default_cell = row[col["default"]]
        default = None if default_cell == "required" else _code(default_cell)
        assert name not in out, f"{name} is listed twice for {example}"
        out[name] = Variable(name, row[col["kind"]], default, _code(row[col["example"]]))
    assert out, f"the variable table of {example} is empty"
    return out


def used_variables(example: str) -> dict[str, str | None]:
    """Every ${VAR} in the example's text (comments too): name -> its :- default (None: none)."""
    used: dict[str, str | None] = {}
    for m in _VAR_USE.finditer((EXAMPLES / example).read_text(encoding="utf-8")):
        name, default = m.group(1), m.group(2)
        assert used.get(name, default) == default, f"{example}: {name} is used with two different defaults"
        used[name] = default
    return used


def _signing_key(path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def environment(example: str, directory: Path) -> dict[str, str]:
    """The example's variables, built from the README table alone: values from the Example
    column, files and directories of each documented kind made under `directory`."""
    pki = make_pki(directory / "pki")
    env: dict[str, str] = {}
    for var in readme_variables(example).values():
        path = directory / var.name.lower()
        if var.kind in ("value", "secret"):
            env[var.name] = var.example
        elif var.kind == "directory":
            path.mkdir()
            env[var.name] = str(path)
        elif var.kind == "certificate":
            env[var.name] = str(pki.cert_file)
        elif var.kind == "private key":
            env[var.name] = str(pki.key_file)
        elif var.kind == "CA certificate":
            env[var.name] = str(pki.ca_file)
        elif var.kind == "signing key":
            _signing_key(path)
            env[var.name] = str(path)
        elif var.kind == "secret file":
            path.write_text(secrets.token_urlsafe(24) + "\n")
            path.chmod(0o600)
            env[var.name] = str(path)
        else:
            pytest.fail(f"README.md: unknown kind {var.kind!r} of {var.name} ({example})")
    return env


def check_config(example: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m sqlward.gateway check-config` with `env` and PATH only."""
    base = {k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "sqlward.gateway", "check-config", str(EXAMPLES / example)],
        env={**base, **env}, capture_output=True, text=True, timeout=60, cwd=REPO,
    )


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", NAMES)
def test_every_variable_used_is_in_the_readme_table_and_every_row_is_used(example: str) -> None:
    documented = readme_variables(example)
    used = used_variables(example)
    assert set(used) - set(documented) == set(), f"{example} uses variables README.md does not list"
    assert set(documented) - set(used) == set(), f"README.md lists variables {example} does not use"
    for name, default in used.items():
        assert documented[name].default == default, f"{name}: README says default {documented[name].default!r}, {example} has {default!r}"


@pytest.mark.parametrize("example", NAMES)
def test_check_config_passes_with_the_readme_variables_and_nothing_else(example: str, tmp_path: Path) -> None:
    res = check_config(example, environment(example, tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{EXAMPLES / example}: ok ("), res.stdout


@pytest.mark.parametrize("example", NAMES)
def test_a_required_variable_left_out_is_named(example: str, tmp_path: Path) -> None:
    env = environment(example, tmp_path)
    required = [v.name for v in readme_variables(example).values() if v.default is None]
    assert required
    for name in required:
        without = {k: v for k, v in env.items() if k != name}
        with pytest.raises(ConfigError) as info:
            load_config(EXAMPLES / example, env=without)
        assert f"environment variable {name} is not set" in str(info.value)
    # The command says it too, and fails.
    name = required[0]
    res = check_config(example, {k: v for k, v in env.items() if k != name})
    assert res.returncode == 2 and res.stdout == ""
    assert f"environment variable {name} is not set" in res.stderr


@pytest.mark.parametrize("example", NAMES)
def test_a_variable_with_a_default_left_out_takes_the_documented_default(example: str, tmp_path: Path) -> None:
    env = environment(example, tmp_path)
    for var in readme_variables(example).values():
        if var.default is None:
            continue
        without = {k: v for k, v in env.items() if k != var.name}
        assert load_config(EXAMPLES / example, env=without) == load_config(EXAMPLES / example, env={**without, var.name: var.default})


def test_production_shape(tmp_path: Path) -> None:
    config = load_config(EXAMPLES / "production.toml", env=environment("production.toml", tmp_path))
    production = config.environments["production"]
    assert production.default_action == "deny" and production.allow_unparsed is False
    assert {t.environment for t in config.targets} == {"production"}
    # Guardrails on, in production.
    on = {gid for gid, g in config.guardrails.items() if not g.environments or "production" in g.environments}
    assert {
        "drop-table", "drop-database", "truncate", "delete-without-where", "update-without-where", "where-always-true",
        "grant-revoke", "role-and-user-management", "identity-escalation", "file-and-program-access",
        "writes-disguised-as-reads", "parser-mismatch", "unparseable", "mass-write",
    } <= on
    assert config.guardrails["mass-write"].action == "review" and config.guardrails["mass-write"].approval is not None
    # Explicit allow rules, none of them for every environment and identity.
    allows = [r for r in config.rules if r.action == "allow"]
    assert allows and all(r.environments or r.targets for r in allows)
    # TLS towards clients (required), the admin listener and the upstreams.
    assert config.listeners and all(li.tls is not None and li.tls.require for li in config.listeners)
    assert config.admin.listen and config.admin.tls is not None and config.admin.public_url.startswith("https://")
    for t in config.targets:
        assert parse_dsn(t.dsn, t.protocol).tls.mode == "verify-full"
        assert t.password is None and t.password_file  # the password from a file, never inline
    # People with OIDC tokens; static secrets only from files.
    assert config.oidc and all(i.jwks_url.startswith("https://") for i in config.oidc)
    assert all(i.secret is None and i.api_token is None for i in config.identities)
    # Agents never reach production.
    assert any(a.action == "deny" and a.actors for a in config.access)
    # Masking of PII.
    masked = {c for m in config.masks for c in m.columns}
    assert {"*.email", "*.ssn", "*.card_number"} <= masked and config.masking.hash_key_file
    # Audit: signed with a given key, fail closed, sinks file + postgres + stdout.
    assert config.audit.signing_key_file and config.audit.failure == "closed"
    kinds = [s.kind for s in audit_sinks(config.audit)]
    assert "postgres" in kinds and "file" in kinds and "stdout" in kinds
    assert all(s.required for s in audit_sinks(config.audit) if s.kind in ("file", "postgres"))
    # Approvals shared through PostgreSQL, telemetry to a collector.
    assert config.approvals.store.startswith("postgresql://") and config.approvals.store_password_file
    assert config.telemetry.endpoint.startswith(("http://", "https://"))


def test_dev_production_denies_what_no_rule_allows_and_keeps_the_demo(tmp_path: Path) -> None:
    from sqlward.gateway.policy_check import evaluate

    config = load_config(EXAMPLES / "dev.toml", env=environment("dev.toml", tmp_path))
    assert config.environments["production"].default_action == "deny"
    assert config.environments["production"].allow_unparsed is False

    def judge(who: str, sql: str, target: str = "demo-prod") -> tuple[str, str]:
        report = evaluate(config, identity=who, target=target, sql=sql)
        return report.decision, report.rule_id

    assert judge("alice", "SELECT name, email FROM customers")[0] == "allow"
    assert judge("alice", "DELETE FROM customers WHERE id = 1")[0] == "allow"
    assert judge("alice", "DELETE FROM customers") == ("deny", "delete-without-where")
    assert judge("alice", "DROP TABLE customers") == ("deny", "no-drop-in-production")
    assert judge("alice", "TRUNCATE customers") == ("deny", "no-truncate-in-production")
    assert judge("alice", "CREATE TABLE t (a int)") == ("deny", "default")
    assert judge("analyst", "DELETE FROM customers WHERE id = 1") == ("deny", "default")
    # Masking applies to the analyst, not to alice (group dba is exempt). Which columns is known
    # with the upstream's catalogue only (tests/integration/test_dev_scripts.py sees the values).
    def masked(who: str) -> bool:
        report = evaluate(config, identity=who, target="demo-prod", sql="SELECT name, email FROM customers")
        assert report.decision == "allow"
        return bool(report.masked_columns) or any(f"masking applies to {who}" in note for note in report.notes)

    assert masked("analyst") and not masked("alice")
    # The MySQL side, and development still allows what no rule refuses.
    assert judge("alice", "DROP TABLE customers", "demo-my-prod") == ("deny", "no-drop-in-production")
    assert judge("alice", "SELECT name FROM customers", "demo-my-prod")[0] == "allow"
    assert judge("alice", "CREATE TABLE t (a int)", "demo")[0] == "allow"
