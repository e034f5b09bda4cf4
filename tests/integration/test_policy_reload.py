"""A running gateway reloads its policy file (on change and on SIGHUP) without dropping sessions."""

from __future__ import annotations

import signal
import time

import psycopg
import psycopg.errors as pe
import pytest

from tests.support.gateway import GatewayProcess, target

from .conftest import upstream_dsn


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_reload_on_change_and_sighup(it_database: object) -> None:
    gw = GatewayProcess(
        targets=[target("app", upstream_dsn())],
        extra={"gateway": {"name": "it", "policy_files": ["policies/*.toml"]}},
    )
    policy = gw.dir / "policies" / "p.toml"
    policy.parent.mkdir()
    policy.write_text('[[rules]]\nid = "ok"\naction = "allow"\n')
    # prepare_threshold=None: psycopg would otherwise prepare the repeated text, and a statement
    # prepared before a reload keeps the decision it was parsed under (see docs/policy.md).
    with gw, psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("select count(*) from accounts").fetchone() is not None
        time.sleep(1.1)  # a different mtime second on coarse file systems
        policy.write_text('[[rules]]\nid = "no-accounts"\noperations = ["select"]\ntables = ["accounts"]\naction = "deny"\n')

        def refused() -> bool:
            try:
                conn.execute("select count(*) from accounts")
            except pe.InsufficientPrivilege as exc:
                return "no-accounts" in str(exc)
            return False

        assert _wait(refused), gw.stderr_text()
        assert conn.execute("select 1").fetchone() == (1,)  # the same session still works

        offset = gw.audit_offset()
        time.sleep(1.1)
        policy.write_text('[[rules]]\nid = "x"\naction = "sometimes"\n')
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)

        def reload_error() -> bool:
            return any(e.get("event") == "policy.reloaded" and e.get("error") for e in gw.audit_events(offset))

        assert _wait(reload_error), gw.stderr_text()
        event = next(e for e in gw.audit_events(offset) if e.get("event") == "policy.reloaded")
        assert "p.toml" in event["error"] and "$.rules[0].action" in event["error"] and event["version"] == 2
        with pytest.raises(pe.InsufficientPrivilege):  # the old policy stays
            conn.execute("select count(*) from accounts")
        assert conn.execute("select 1").fetchone() == (1,)
        assert gw.alive


def test_prepared_statements_are_decided_again_after_a_reload(it_database: object) -> None:
    """A statement prepared under the old policy is decided again at its next execution once
    the policy changed (issue 3: "re-checked if the policy changed"), in the same session."""
    gw = GatewayProcess(
        targets=[target("app", upstream_dsn())],
        extra={"gateway": {"name": "it", "policy_files": ["policies/*.toml"]}},
    )
    policy = gw.dir / "policies" / "p.toml"
    policy.parent.mkdir()
    policy.write_text('[[rules]]\nid = "ok"\naction = "allow"\n')
    with gw, psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True) as conn:
        query = "select count(*) from accounts where %s"
        for _ in range(3):  # prepare=True: a named server-side statement, then Bind/Execute only
            assert conn.execute(query, (True,), prepare=True).fetchone() is not None
        time.sleep(1.1)
        policy.write_text('[[rules]]\nid = "no-accounts"\noperations = ["select"]\ntables = ["accounts"]\naction = "deny"\n')

        def refused() -> bool:
            try:
                conn.execute(query, (True,), prepare=True)
            except pe.InsufficientPrivilege as exc:
                return "no-accounts" in str(exc)
            return False

        assert _wait(refused), gw.stderr_text()
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
        decided = [
            e for e in gw.audit_events()
            if e.get("event") == "statement.decided" and e.get("rule_id") == "no-accounts"
        ]
        assert decided and decided[0]["statement_name"], decided


def test_sql_comment_names_the_identity_to_the_server(it_database: object) -> None:
    """`[identity] sql_comment = true`: each forwarded statement carries a sqlcommenter-style
    comment naming the identity, so the server's own view of the query shows who sent it."""
    gw = GatewayProcess(
        targets=[target("app", upstream_dsn())],
        extra={"identity": {"sql_comment": True}},
    )
    with gw, psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True) as conn:
        (query,) = conn.execute("select query from pg_stat_activity where pid = pg_backend_pid()").fetchone()
        assert query.startswith("/*sqlward_identity='alice'*/ "), query
    plain = GatewayProcess(targets=[target("app", upstream_dsn())])
    with plain, psycopg.connect(plain.dsn("alice", "alice-secret", "app"), autocommit=True) as conn:
        (query,) = conn.execute("select query from pg_stat_activity where pid = pg_backend_pid()").fetchone()
        assert "sqlward_identity" not in query, query
