"""`sqlward policy test` (gateway.cli + gateway.policy_check): decisions, explanations, exit codes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sqlward.gateway.cli import main

CONFIG = """
[gateway]
name = "policy-test"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:0"

[[listeners]]
protocol = "mysql"
listen = "127.0.0.1:0"

[[targets]]
name = "app-prod"
protocol = "postgres"
environment = "production"
dsn = "postgresql://svc@127.0.0.1:5432/app"

[[targets]]
name = "app-dev"
protocol = "postgres"
environment = "development"
dsn = "postgresql://svc@127.0.0.1:5432/app"

[[targets]]
name = "shop-prod"
protocol = "mysql"
environment = "production"
dsn = "mysql://svc@127.0.0.1:3306/shop"

[[identities]]
name = "alice"
groups = ["dba"]
secret = "alice-secret"

[[identities]]
name = "carol"
groups = ["dev"]

[audit]
file = "audit.jsonl"

[environments.production]
default_action = "deny"

[[rules]]
id = "no-drop-in-production"
operations = ["drop", "truncate"]
environments = ["production"]
action = "deny"

[[rules]]
id = "review-unbounded-delete"
operations = ["delete"]
has_where = false
environments = ["production"]
action = "review"
approvers = ["group:dba"]
message = "a DELETE without WHERE in production needs a second pair of eyes"

[[rules]]
id = "dba-writes"
operations = ["insert", "update", "delete"]
groups = ["dba"]
action = "allow"

[[rules]]
id = "reads"
operations = ["select", "show"]
action = "allow"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def run(config: Path, *args: str) -> int:
    return main(["policy", "test", "--config", str(config), *args])


def test_allowed_select(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "SELECT id FROM users WHERE id = 1") == 0
    out = capsys.readouterr().out
    assert "decision:    allow" in out
    assert "rule:        reads" in out
    assert "read:       public.users" in out  # resolved through the search_path (public)
    assert "fingerprint: SELECT id FROM users WHERE id = ?" in out
    assert "alice (static; groups: dba)" in out
    # The audit file is never opened, the upstream never dialled.
    assert not (config.parent / "audit.jsonl").exists()


def test_drop_in_production_refused_by_rule(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "DROP TABLE users") == 1
    out = capsys.readouterr().out
    assert "decision:    deny" in out
    assert "rule:        no-drop-in-production" in out
    assert 'refused by rule "no-drop-in-production"' in out
    assert "written:    public.users" in out


def test_drop_in_development_is_not_refused_by_the_production_rule(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No [environments.development]: what no rule refuses is allowed there.
    assert run(config, "--as", "alice", "--target", "app-dev", "DROP TABLE users") == 0
    assert "rule:        default" in capsys.readouterr().out


def test_review_rule(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "DELETE FROM orders") == 3
    out = capsys.readouterr().out
    assert "decision:    review" in out
    assert "rule:        review-unbounded-delete" in out
    assert "needs approval" in out and "second pair of eyes" in out
    assert "has_where:  no" in out


def test_delete_with_where_allowed_for_dba(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "DELETE FROM orders WHERE id = 7") == 0
    out = capsys.readouterr().out
    assert "rule:        dba-writes" in out
    assert "has_where:  yes" in out


def test_static_identity_without_group_falls_to_environment_default(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "--as", "carol", "--target", "app-prod", "UPDATE t SET a = 1 WHERE id = 2") == 1
    out = capsys.readouterr().out
    assert "rule:        default" in out
    assert 'environment "production" denies what no rule allows' in out


def test_unknown_target(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "nope", "SELECT 1") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no target is named 'nope'" in captured.err
    assert "app-prod" in captured.err  # the known targets are listed


def test_bad_config_names_file_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(CONFIG).replace('environment = "production"\ndsn = "postgresql', 'environment = 7\ndsn = "postgresql', 1))
    assert run(path, "--as", "alice", "--target", "app-prod", "SELECT 1") == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "$.targets[0].environment" in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.toml"
    assert run(path, "--as", "alice", "--target", "app-prod", "SELECT 1") == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_json_output(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "--json", "DROP TABLE users") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["decision"] == "deny"
    assert doc["rule_id"] == "no-drop-in-production"
    assert "refused" in doc["message"]
    assert doc["statement"] == 1
    assert doc["fingerprint"] == "DROP TABLE users"
    assert doc["dialect"] == "postgres"
    assert doc["identity"] == {"subject": "alice", "source": "static", "groups": ["dba"], "actor": [], "is_agent": False, "expires_at": None, "issuer": ""}
    assert doc["target"]["environment"] == "production"
    (st,) = doc["statements"]
    assert st["index"] == 1
    assert st["operation"] == "drop"
    assert st["operations"] == ["drop"]
    assert st["tables_written"] == ["public.users"]
    assert st["tables_read"] == []
    assert st["has_where"] is None
    assert st["parse_status"] == "ok"


def test_adhoc_identity_with_group_matches_group_rule(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "UPDATE t SET a = 1 WHERE id = 2"
    # Without the group, the person a token names is refused by the production default ...
    assert run(config, "--as", "dora@example.com", "--target", "app-prod", sql) == 1
    capsys.readouterr()
    # ... with it, the group rule allows the write.
    assert run(config, "--as", "dora@example.com", "--group", "dba", "--target", "app-prod", "--json", sql) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rule_id"] == "dba-writes"
    assert doc["identity"]["source"] == "ad-hoc"
    assert doc["identity"]["groups"] == ["dba"]


def test_adhoc_identity_with_actor_is_an_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(
        textwrap.dedent(CONFIG).replace(
            "[[rules]]\nid = \"no-drop-in-production\"",
            "[[rules]]\nid = \"agents-read-only\"\nagents = true\noperations = [\"insert\", \"update\", \"delete\"]\n"
            "action = \"deny\"\n\n[[rules]]\nid = \"no-drop-in-production\"",
            1,
        )
    )
    sql = "UPDATE t SET a = 1 WHERE id = 2"
    args = ("--as", "dora@example.com", "--group", "dba", "--target", "app-prod")
    assert run(path, *args, sql) == 0
    capsys.readouterr()
    assert run(path, *args, "--actor", "runbook-7", sql) == 1
    out = capsys.readouterr().out
    assert "rule:        agents-read-only" in out
    assert "via runbook-7; agent" in out


def test_static_identity_refuses_group_options(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "carol", "--group", "dba", "--target", "app-prod", "SELECT 1") == 2
    assert "static identity" in capsys.readouterr().err


def test_mysql_dialect_from_mysql_target(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "shop-prod", "--json", "/*!50000 DROP TABLE t */") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["dialect"] == "mysql"
    assert doc["rule_id"] == "no-drop-in-production"
    assert doc["schema"] == "shop"  # the DSN's database, as a MySQL session starts with
    assert doc["statements"][0]["tables_written"] == ["shop.t"]


def test_mysql_schema_option_and_use(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "shop-prod", "--schema", "crm", "SELECT * FROM customers") == 0
    assert "read:       crm.customers" in capsys.readouterr().out
    assert run(config, "--as", "alice", "--target", "shop-prod", "--json", "USE crm; SELECT * FROM customers") == 1
    doc = json.loads(capsys.readouterr().out)  # USE itself: no rule allows it, production denies
    assert doc["statements"][1]["tables_read"] == ["crm.customers"]


def test_schema_option_refused_for_postgres(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "--schema", "x", "SELECT 1") == 2
    assert "--schema" in capsys.readouterr().err


def test_multi_statement_second_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "SELECT * FROM users; DROP TABLE users") == 1
    out = capsys.readouterr().out
    assert "statement:   2 of 2" in out
    assert "statement 2 of 2 refused" in out
    assert "[2] drop table  <- decided" in out
    assert "[1] select\n" in out


def test_unparseable_in_production(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "--json", "FROBNICATE the widgets") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["rule_id"] == "unparseable"
    assert doc["parse_status"] == "error"
    assert doc["statements"][0]["parse_status"] == "error"


def test_access_rules_honoured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "access.toml"
    path.write_text(textwrap.dedent(CONFIG) + '\n[[access]]\ntargets = ["app-*"]\ngroups = ["dba"]\naction = "allow"\n')
    assert run(path, "--as", "alice", "--target", "app-prod", "SELECT 1") == 0
    capsys.readouterr()
    assert run(path, "--as", "carol", "--target", "app-prod", "SELECT 1") == 1
    out = capsys.readouterr().out
    assert "rule:        access" in out
    assert "identity carol may not reach target app-prod (no [[access]] rule allows it)" in out


def test_identity_tampering(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-dev", "SET sqlward.identity = 'mallory'") == 1
    assert "rule:        identity-tampering" in capsys.readouterr().out


def test_dynamic_sql_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "shop-prod", "PREPARE s FROM 'DROP TABLE t'") == 1
    assert "rule:        dynamic-sql" in capsys.readouterr().out


def test_dialect_override(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as", "alice", "--target", "app-prod", "--dialect", "mysql", "--json", "SELECT `a` FROM t") == 0
    assert json.loads(capsys.readouterr().out)["dialect"] == "mysql"


def test_usage_errors_exit_2(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", "--config", str(config), "--target", "app-prod", "SELECT 1"]) == 2  # no --as
    assert run(config, "--as", "alice", "--target", "app-prod", "--dialect", "oracle", "SELECT 1") == 2
    assert main(["policy"]) == 2
    capsys.readouterr()


def test_search_path_option_resolves_bare_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--search-path: unqualified names resolve through the given list, as a live session's
    would (without a catalogue offline, every schema of the list is a candidate)."""
    config = tmp_path / "sqlward.toml"
    config.write_text(textwrap.dedent(CONFIG).replace("[[rules]]", '[[rules]]\nid = "no-vault"\ntables = ["vault.*"]\naction = "deny"\n\n[[rules]]', 1))
    assert run(config, "--as", "alice", "--target", "app-prod", "--search-path", "vault, public", "--json",
               "SELECT * FROM secrets") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["rule_id"] == "no-vault"
    assert report["search_path"] == ["pg_catalog", "vault", "public"]
    assert report["statements"][0]["tables_read"] == ["vault.secrets", "public.secrets"]
    # The request's own SET counts for the statements after it.
    assert run(config, "--as", "alice", "--target", "app-prod", "--json",
               "SET search_path TO vault; SELECT * FROM secrets") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["statements"][1]["tables_read"] == ["vault.secrets"]
    assert run(config, "--as", "alice", "--target", "app-prod", "--search-path", "a,", "SELECT 1") == 2


def test_check_config_counts_rules_and_masks_from_policy_files(tmp_path, capsys) -> None:
    """check-config counts what the policy files add (it used to say `0 rules`)."""
    from sqlward.gateway.cli import main

    (tmp_path / "policy.toml").write_text(
        '[[rules]]\nid = "r1"\noperations = ["drop"]\naction = "deny"\n'
        '[[rules]]\nid = "r2"\noperations = ["truncate"]\naction = "deny"\n'
        '[[masks]]\nid = "m1"\ncolumns = ["*.email"]\nfunction = "redact"\n'
    )
    (tmp_path / "c.toml").write_text(
        '[gateway]\nname = "g"\npolicy_files = ["policy.toml"]\n'
        '[[listeners]]\nprotocol = "postgres"\nlisten = "127.0.0.1:6432"\n'
        '[[targets]]\nname = "app"\nprotocol = "postgres"\nenvironment = "development"\n'
        'dsn = "postgresql://postgres@127.0.0.1:5432/app"\n'
        '[[rules]]\nid = "own"\noperations = ["delete"]\naction = "deny"\n'
    )
    assert main(["check-config", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out
    assert "3 rules (2 from 1 policy file)" in out and "1 masks (1 from policy files)" in out


def test_version_names_the_key_dependencies(capsys) -> None:
    from sqlward.gateway.cli import KEY_DEPENDENCIES, main

    assert main(["version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sqlward ") and out[1].startswith("python 3.")
    names = {line.split()[0] for line in out}
    assert set(KEY_DEPENDENCIES) <= names
    assert out[-1].startswith("PostgreSQL masking row walk: ")


def test_healthcheck_exit_codes(capsys) -> None:
    import http.server
    import threading

    from sqlward.gateway.cli import main

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert main(["healthcheck", "--url", base + "/healthz"]) == 0
        assert main(["healthcheck", "--url", base + "/readyz"]) == 1
        assert "answered 503" in capsys.readouterr().err
    finally:
        server.shutdown()
    assert main(["healthcheck", "--url", base + "/healthz", "--timeout", "1"]) == 1
    assert "Traceback" not in capsys.readouterr().err
