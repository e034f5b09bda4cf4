"""`sqlward policy test` and a live PostgreSQL session give the same verdict on the same request,
for every built-in check the pipeline applies to PostgreSQL (and a guardrail, a rule, the
environment default and an allow for contrast).

The live verdict is read from the gateway's own `statement.decided` record of the request (the
client only sees refusals); the offline verdict is `gateway.policy_check.evaluate` on the very
config file the gateway runs with. Token expiry is judged by the same pipeline function live
and offline (tests/unit/test_pipeline.py drives it with an expired identity through both); the
live end of it is in test_identity.py (`token-expired` on psycopg and asyncpg).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sqlward.gateway.config import load_config
from sqlward.gateway.policy_check import evaluate
from sqlward.policy import rule_ids
from tests.integration.conftest import upstream_dsn
from tests.support import pgwire
from tests.support.gateway import GatewayProcess, target

pytestmark = pytest.mark.integration

RULES: list[dict[str, Any]] = [
    {"id": "no-drop", "operations": ["drop"], "action": "deny"},
    {"id": "review-deletes", "operations": ["delete"], "action": "review"},
    {"id": "reads-and-sets", "operations": ["select", "set", "show"], "action": "allow"},
]


@pytest.fixture(scope="module")
def parity_gw(it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=[target("prod", upstream_dsn(), "production")],
        rules=RULES,
        environments={"production": {"default_action": "deny"}},
        extra={"guardrails": {"truncate": {}}},
        name="it-parity",
    ) as gw:
        yield gw


def _live_decision(gw: GatewayProcess, since: int, sql_or_command: str) -> dict[str, Any]:
    def found(events: list[dict[str, Any]]) -> bool:
        return any(e.get("event") == "statement.decided" and e.get("sql") == sql_or_command for e in events)

    events = gw.wait_audit(found, since)
    return next(e for e in events if e.get("event") == "statement.decided" and e.get("sql") == sql_or_command)


CASES: list[tuple[str, str, str]] = [
    ("SET sqlward.identity = 'mallory'", rule_ids.IDENTITY_TAMPERING, "deny"),
    ("SELECT set_config('sqlward.identity', 'mallory', false)", rule_ids.IDENTITY_TAMPERING, "deny"),
    ("SET application_name = 'sqlward:mallory'", rule_ids.IDENTITY_TAMPERING, "deny"),
    ("EXECUTE IMMEDIATE 'DROP TABLE t'", rule_ids.DYNAMIC_SQL, "deny"),
    ("SELEKT * FROM nowhere", rule_ids.UNPARSEABLE, "deny"),
    ("TRUNCATE parity_t", "truncate", "deny"),
    ("DROP TABLE parity_t", "no-drop", "deny"),
    # A review rule that names no approver cannot be approved: refused, live and offline alike.
    ("DELETE FROM parity_t WHERE id = 1", "review-deletes", "deny"),
    ("CREATE TABLE parity_t2 (a int)", rule_ids.DEFAULT, "deny"),
    ("SELECT 1", "reads-and-sets", "allow"),
]


@pytest.mark.parametrize(("sql", "rule_id", "action"), CASES, ids=[c[1] + ":" + c[0][:30] for c in CASES])
def test_policy_test_and_a_live_session_agree(parity_gw: GatewayProcess, sql: str, rule_id: str, action: str) -> None:
    since = parity_gw.audit_offset()
    with psycopg.connect(parity_gw.dsn("alice", "alice-secret", "prod"), autocommit=True) as conn:
        if action == "allow":
            conn.execute(sql)
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert rule_id in str(info.value)
    live = _live_decision(parity_gw, since, sql)
    offline = evaluate(load_config(str(parity_gw.config_file)), identity="alice", target="prod", sql=sql)
    assert (live["action"], live["rule_id"]) == (action, rule_id)
    assert (offline.decision, offline.rule_id) == (live["action"], live["rule_id"])
    assert offline.message == live.get("message", "")
    assert list(offline.facts) == live.get("facts", [])


def test_function_call_message(parity_gw: GatewayProcess) -> None:
    since = parity_gw.audit_offset()
    with pgwire.RawConn.connect(parity_gw.host, parity_gw.port) as raw:
        raw.send(pgwire.startup_message({"user": "alice", "database": "prod"}))
        raw.authenticate("alice", "alice-secret")
        # FunctionCall: function OID 1598 (random()), no arguments, text result.
        body = (1598).to_bytes(4, "big") + (0).to_bytes(2, "big") + (0).to_bytes(2, "big") + (0).to_bytes(2, "big")
        raw.send(pgwire.msg(b"F", body))
        replies = raw.read_until("Z")
        errors = [m for m in replies if m.type == "E"]
        assert errors and errors[0].sqlstate == "42501" and rule_ids.FUNCTION_CALL in errors[0].text
        # The session goes on.
        raw.send(pgwire.query("SELECT 1"))
        assert any(m.type == "D" for m in raw.read_until("Z"))
    live = _live_decision(parity_gw, since, "<FunctionCall>")
    offline = evaluate(load_config(str(parity_gw.config_file)), identity="alice", target="prod", sql="", command="FunctionCall")
    assert (live["action"], live["rule_id"]) == ("deny", rule_ids.FUNCTION_CALL)
    assert (offline.decision, offline.rule_id, offline.message) == (live["action"], live["rule_id"], live["message"])
