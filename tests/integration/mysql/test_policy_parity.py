"""`sqlward policy test` and a live MySQL session give the same verdict on the same request, for
every built-in check the pipeline applies to MySQL: identity tampering, the KILL forms (the
allowed own-session form and the refused ones), LOAD DATA LOCAL, commands that bypass SQL,
dynamic SQL, plus a rule and the environment default for contrast.

The live verdict is the gateway's own `statement.decided` record of the request; the offline
verdict is `gateway.policy_check.evaluate` on the config file the gateway runs with. Token
expiry: see tests/unit/test_pipeline.py (the same pipeline function, live and offline).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from sqlward.gateway.config import load_config
from sqlward.gateway.policy_check import evaluate
from sqlward.policy import rule_ids
from tests.integration.mysql.conftest import IT_DB, is_refusal, my_target, mysql_listener
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess

pytestmark = pytest.mark.integration

RULES: list[dict[str, Any]] = [
    {"id": "no-drop", "operations": ["drop"], "action": "deny"},
    {"id": "reads-and-sets", "operations": ["select", "set", "show", "use"], "action": "allow"},
]


@pytest.fixture(scope="module")
def parity_gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=[my_target("app", "development"), my_target("prod", "production")],
        rules=RULES,
        environments={"production": {"default_action": "deny"}},
        listener=mysql_listener(default_target="app"),
        name="it-my-parity",
    ) as gw:
        yield gw


def _connect(gw: GatewayProcess, target: str) -> pymysql.Connection:
    return pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database=target,
                           autocommit=True)


def _live_decision(gw: GatewayProcess, since: int, sql: str) -> dict[str, Any]:
    def found(events: list[dict[str, Any]]) -> bool:
        return any(e.get("event") == "statement.decided" and e.get("sql") == sql for e in events)

    events = gw.wait_audit(found, since)
    return next(e for e in events if e.get("event") == "statement.decided" and e.get("sql") == sql)


def _offline(gw: GatewayProcess, target: str, sql: str = "", command: str = "") -> Any:
    return evaluate(load_config(str(gw.config_file)), identity="alice", target=target, sql=sql, command=command,
                    schema=IT_DB)


CASES: list[tuple[str, str, str, str]] = [
    ("prod", "SET @sqlward_identity = 'sqlward:mallory'", rule_ids.IDENTITY_TAMPERING, "deny"),
    ("prod", "SELECT @sqlward_identity := 'sqlward:mallory'", rule_ids.IDENTITY_TAMPERING, "deny"),
    ("app", "/* hidden */ KILL 4242", rule_ids.KILL_FORM, "deny"),
    ("app", "KILL CONNECTION 4242; SELECT 1", rule_ids.KILL_FORM, "deny"),
    ("app", "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE t", rule_ids.LOCAL_INFILE, "deny"),
    ("app", "load xml local infile '/etc/hostname' into table t", rule_ids.LOCAL_INFILE, "deny"),
    ("prod", "PREPARE s FROM 'DROP TABLE t'", rule_ids.DYNAMIC_SQL, "deny"),
    ("prod", "DROP TABLE parity_t", "no-drop", "deny"),
    ("prod", "CREATE TABLE parity_t2 (a int)", rule_ids.DEFAULT, "deny"),
    ("prod", "SELECT 1", "reads-and-sets", "allow"),
]


@pytest.mark.parametrize(("target", "sql", "rule_id", "action"), CASES, ids=[c[2] + ":" + c[1][:30] for c in CASES])
def test_policy_test_and_a_live_session_agree(parity_gw: GatewayProcess, target: str, sql: str, rule_id: str, action: str) -> None:
    since = parity_gw.audit_offset()
    conn = _connect(parity_gw, target)
    try:
        with conn.cursor() as cur:
            if action == "allow":
                cur.execute(sql)
            else:
                with pytest.raises(pymysql.err.MySQLError) as info:
                    cur.execute(sql)
                assert is_refusal(info.value, rule_id), info.value
    finally:
        conn.close()
    live = _live_decision(parity_gw, since, sql)
    offline = _offline(parity_gw, target, sql)
    assert (live["action"], live["rule_id"]) == (action, rule_id)
    assert (offline.decision, offline.rule_id) == (live["action"], live["rule_id"])
    assert offline.message == live.get("message", "")


def test_kill_of_an_own_session(parity_gw: GatewayProcess) -> None:
    since = parity_gw.audit_offset()
    victim, killer = _connect(parity_gw, "app"), _connect(parity_gw, "app")
    try:
        sql = f"KILL QUERY {victim.thread_id()}"
        with killer.cursor() as cur:
            cur.execute(sql)  # an idle session: nothing to interrupt, but allowed
    finally:
        victim.close()
        killer.close()
    live = _live_decision(parity_gw, since, sql)
    offline = _offline(parity_gw, "app", sql)
    assert (live["action"], live["rule_id"]) == ("allow", rule_ids.OWN_SESSION)
    assert (offline.decision, offline.rule_id) == ("allow", rule_ids.OWN_SESSION)
    assert any("only a live gateway knows" in note for note in offline.notes)


@pytest.mark.parametrize(("cmd", "name"), [(0x05, "COM_CREATE_DB"), (0x06, "COM_DROP_DB"), (0x07, "COM_REFRESH")])
def test_commands_that_bypass_sql(parity_gw: GatewayProcess, cmd: int, name: str) -> None:
    since = parity_gw.audit_offset()
    with mywire.login(parity_gw.host, parity_gw.port, "alice", SECRETS["alice"], "app") as raw:
        raw.command(cmd, b"parity_db" if cmd != 0x07 else b"\x01")
        with pytest.raises(mywire.MySQLError) as info:
            raw.read_ok()
        assert rule_ids.COMMAND_NOT_ALLOWED in str(info.value) or name in str(info.value)
        assert raw.query_rows("SELECT 1") == [(1,)]  # the session goes on
    live = _live_decision(parity_gw, since, f"<{name}>")
    offline = _offline(parity_gw, "app", command=name)
    assert (live["action"], live["rule_id"]) == ("deny", rule_ids.COMMAND_NOT_ALLOWED)
    assert (offline.decision, offline.rule_id, offline.message) == (live["action"], live["rule_id"], live["message"])
