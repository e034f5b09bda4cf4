"""The audit trail of real sessions through the gateway (JSON lines, one object per line)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import psycopg.errors as pe
import pytest

from tests.support.gateway import GatewayProcess, connection_events, connection_id_for_app


def _session_events(gw: GatewayProcess, app_name: str, since: int) -> list[dict[str, Any]]:
    """All events of the session that authenticated with `app_name`, once it has closed."""

    def closed(evs: list[dict[str, Any]]) -> bool:
        cid = connection_id_for_app(evs, app_name)
        return cid is not None and any(e.get("event") == "connection.closed" and e.get("connection_id") == cid for e in evs)

    evs = gw.wait_audit(closed, since=since, timeout=5)
    cid = connection_id_for_app(evs, app_name)
    assert cid, f"no connection.authenticated with application_name={app_name!r} in the audit trail"
    return connection_events(evs, cid)


def _check_statement_pairs(evs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Every allowed statement.decided has a statement.completed after it; decisions and
    completions are each in request order. A completion refers to its decision by `request_id` (simple protocol)
    or by `prepared_ref` (an Execute of a Parse'd statement, which has its own request id).

    Returns (decided events, {decided request id: its first completion})."""
    decided = [e for e in evs if e["event"] == "statement.decided"]
    # Decisions are made in the client's order and replies come back in the same order, but in
    # a pipeline a decision may be written while an earlier request is still running: so each
    # kind is ordered on its own.
    decided_ids = [e["request_id"] for e in decided]
    assert decided_ids == sorted(decided_ids) and len(set(decided_ids)) == len(decided_ids), decided_ids
    completed_ids = [e["request_id"] for e in evs if e["event"] == "statement.completed"]
    assert completed_ids == sorted(completed_ids), f"completions out of order: {completed_ids}"
    ids = {e["request_id"] for e in decided}
    index = {id(e): i for i, e in enumerate(evs)}
    completed: dict[int, dict[str, Any]] = {}
    for c in (e for e in evs if e["event"] == "statement.completed"):
        ref = c.get("prepared_ref") if c.get("prepared_ref") is not None else c["request_id"]
        assert ref in ids, f"statement.completed {c} refers to no statement.decided"
        d = next(e for e in decided if e["request_id"] == ref)
        assert index[id(d)] < index[id(c)], f"completed before decided for request {ref}"
        completed.setdefault(ref, c)
    for d in decided:
        if d["action"] == "allow":
            assert d["request_id"] in completed, f"no statement.completed for allowed request {d['request_id']}: {d['sql']!r}"
    return decided, completed


def test_session_audit_trail(gateway: GatewayProcess, table: str, app_name: str):
    since = gateway.audit_offset()
    with psycopg.connect(gateway.dsn("alice", "alice-secret", "prod", application_name=app_name), autocommit=True) as conn:
        conn.execute("select 'first'")
        conn.execute(f"insert into {table} values (%s, %s)", (1, "one"))
        with pytest.raises(pe.InsufficientPrivilege):
            conn.execute(f"drop table {table}")
        with pytest.raises(pe.DivisionByZero):
            conn.execute("select 1/0")
        conn.execute("select 1 as a; select 2 as b")
        conn.execute(f"select * from {table} where id = %s", (1,))
    evs = _session_events(gateway, app_name, since)

    kinds = [e["event"] for e in evs]
    assert kinds[0] == "connection.opened", kinds
    assert kinds[1] == "connection.authenticated", kinds
    assert kinds[-1] == "connection.closed", kinds
    assert kinds.count("connection.opened") == kinds.count("connection.authenticated") == kinds.count("connection.closed") == 1

    for e in evs:
        assert isinstance(e.get("time"), (int, float)) and e["time"] > 1.6e9, e
        assert e.get("gateway") == "it", e
    auth = evs[1]
    assert auth["who"]["subject"] == "alice"
    assert "dba" in auth["who"].get("groups", [])
    assert auth["target"] == "prod" and auth["environment"] == "production"
    assert auth["application_name"] == app_name
    assert evs[0].get("protocol") == "postgres" and evs[0].get("client_addr", "").startswith("127.0.0.1")

    decided, completed = _check_statement_pairs(evs)
    sqls = [d["sql"] for d in decided]
    expected_in_order = [
        "select 'first'",
        f"insert into {table} values ($1, $2)",
        f"drop table {table}",
        "select 1/0",
        "select 1 as a; select 2 as b",
        f"select * from {table} where id = $1",
    ]
    positions = []
    for want in expected_in_order:
        hits = [i for i, s in enumerate(sqls) if s.strip() == want]
        assert hits, f"no statement.decided with sql {want!r}; got {sqls}"
        positions.append(hits[0])
    assert positions == sorted(positions), f"statements out of order: {sqls}"

    by_sql = {d["sql"].strip(): d for d in decided}
    for d in decided:
        assert isinstance(d["fingerprint"], str) and d["fingerprint"], d
        assert d["who"]["subject"] == "alice" and d["target"] == "prod" and d["environment"] == "production"

    deny = by_sql[f"drop table {table}"]
    assert deny["action"] == "deny" and deny["rule_id"] == "no-drop", deny
    if deny["request_id"] in completed:  # optional for a refusal; if present it records the refusal
        c = completed[deny["request_id"]]
        assert c.get("sqlstate") == "42501" and c.get("error"), c
    for s in expected_in_order:
        if s != f"drop table {table}":
            assert by_sql[s]["action"] == "allow", by_sql[s]

    ins = completed[by_sql[f"insert into {table} values ($1, $2)"]["request_id"]]
    assert ins["tags"] == ["INSERT 0 1"] and ins["rows"] == 1 and not ins.get("error"), ins
    assert isinstance(ins["duration_ms"], (int, float)) and ins["duration_ms"] >= 0
    err = completed[by_sql["select 1/0"]["request_id"]]
    assert err.get("sqlstate") == "22012" and err.get("error"), err
    multi = completed[by_sql["select 1 as a; select 2 as b"]["request_id"]]
    assert multi["tags"] == ["SELECT 1", "SELECT 1"], multi
    sel = completed[by_sql[f"select * from {table} where id = $1"]["request_id"]]
    assert sel["tags"] == ["SELECT 1"] and sel["rows"] == 1, sel


def test_fingerprint_ignores_literals(gateway: GatewayProcess, app_name: str):
    since = gateway.audit_offset()
    with psycopg.connect(gateway.dsn("alice", "alice-secret", "app", application_name=app_name), autocommit=True) as conn:
        conn.execute("select 'a' || 'x', 1 from accounts where id = 1")
        conn.execute("select 'b' || 'y', 2 from accounts where id = 3")
        conn.execute("select owner from accounts where id = 1")
    decided = [e for e in _session_events(gateway, app_name, since) if e["event"] == "statement.decided"]
    fp = {e["sql"]: e["fingerprint"] for e in decided}
    assert fp["select 'a' || 'x', 1 from accounts where id = 1"] == fp["select 'b' || 'y', 2 from accounts where id = 3"]
    assert fp["select owner from accounts where id = 1"] != fp["select 'a' || 'x', 1 from accounts where id = 1"]
    # The text itself is recorded as sent.
    assert "select 'b' || 'y', 2 from accounts where id = 3" in fp


def test_audit_written_before_the_client_sees_the_reply(gateway: GatewayProcess, app_name: str):
    marker = uuid.uuid4().hex
    since = gateway.audit_offset()
    with psycopg.connect(gateway.dsn("alice", "alice-secret", "app", application_name=app_name), autocommit=True) as conn:
        conn.execute(f"select '{marker}'")
        # No waiting: the lines must already be there.
        evs = gateway.audit_events(since)
        d = [e for e in evs if e.get("event") == "statement.decided" and marker in e.get("sql", "")]
        assert len(d) == 1, "statement.decided not written before the reply"
        c = [e for e in evs if e.get("event") == "statement.completed" and e.get("request_id") == d[0]["request_id"]
             and e.get("connection_id") == d[0]["connection_id"]]
        assert len(c) == 1, "statement.completed not written before ReadyForQuery reached the client"


def test_pipeline_statements_audited(gateway: GatewayProcess, table: str, app_name: str):
    since = gateway.audit_offset()
    with psycopg.connect(gateway.dsn("alice", "alice-secret", "prod", application_name=app_name), autocommit=True) as conn:
        with conn.pipeline() as p:
            conn.execute(f"insert into {table} values (%s, 'a')", (1,))
            conn.execute(f"insert into {table} values (%s, 'b')", (2,))
            p.sync()
            conn.execute(f"drop table {table}")
            with pytest.raises(pe.InsufficientPrivilege):
                p.sync()
            conn.execute("select 'after'")
    evs = _session_events(gateway, app_name, since)
    decided, completed = _check_statement_pairs(evs)
    inserts = [d for d in decided if d["sql"].startswith(f"insert into {table}")]
    assert len(inserts) >= 1 and all(d["action"] == "allow" for d in inserts)
    insert_completions = [completed[d["request_id"]] for d in inserts if d["request_id"] in completed]
    assert sum(c.get("rows") or 0 for c in insert_completions) == 2, insert_completions
    denies = [d for d in decided if d["action"] == "deny"]
    assert len(denies) == 1 and denies[0]["rule_id"] == "no-drop"
    assert any(d["sql"] == "select 'after'" for d in decided)


def test_refused_connection_and_no_secrets_anywhere(gateway: GatewayProcess):
    wrong = "wrong-pw-" + uuid.uuid4().hex[:8]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gateway.dsn("alice", wrong, "app"))
    with psycopg.connect(gateway.dsn("bob", "bob-secret", "app")) as c:
        c.execute("select 1")
    text = gateway.audit_text()
    for secret in ("alice-secret", "bob-secret", wrong):
        assert secret not in text, "a password appears in the audit file"
        assert secret not in gateway.stderr_text() and secret not in gateway.stdout_text()
    # Every line is one JSON object with an event tag.
    for i, line in enumerate(text.splitlines()):
        obj = json.loads(line)
        assert isinstance(obj, dict) and isinstance(obj.get("event"), str), (i, line[:200])


def test_refusal_names_the_statement_that_decided(gateway: GatewayProcess, app_name: str):
    """In a multi-statement request the decided event says which statement was refused."""
    since = gateway.audit_offset()
    with psycopg.connect(gateway.dsn("alice", "alice-secret", "prod", application_name=app_name), autocommit=True) as c:
        with pytest.raises(pe.InsufficientPrivilege):
            c.execute("select 1; drop table no_such_table_for_audit")
    events = gateway.wait_audit(
        lambda es: any(e.get("event") == "statement.decided" and e.get("action") == "deny" for e in es), since=since
    )
    denied = [e for e in events if e.get("event") == "statement.decided" and e.get("action") == "deny"]
    assert denied[-1]["statement_index"] == 1 and denied[-1]["rule_id"] == "no-drop", denied
