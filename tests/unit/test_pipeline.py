"""gateway.pipeline: every built-in check, in order, for both dialects; what it records; and
`sqlward policy test` (gateway.policy_check.evaluate) giving the verdict the pipeline gives a
live session for the same request."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import msgspec
import pytest
import trio

from sqlward.adapters.base import SessionContext, StatementRequest, Verdict
from sqlward.gateway.config import Config, load_config
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.gateway.pipeline import Pipeline
from sqlward.gateway.policy_check import evaluate
from sqlward.policy import rule_ids
from sqlward.policy.model import Identity
from tests.support.auditsink import ListSink

CONFIG = """
[gateway]
name = "pipeline-test"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:0"

[[targets]]
name = "pg-prod"
protocol = "postgres"
environment = "production"
dsn = "postgresql://svc@127.0.0.1:5432/app"

[[targets]]
name = "my-prod"
protocol = "mysql"
environment = "development"
dsn = "mysql://svc@127.0.0.1:3306/shop"

[[targets]]
name = "my-infile"
protocol = "mysql"
environment = "development"
dsn = "mysql://svc@127.0.0.1:3306/shop"
allow_local_infile = true

[[identities]]
name = "alice"
groups = ["dba"]
secret = "alice-secret"

[identity]
on_token_expiry = "{expiry}"

[audit]
file = "audit.jsonl"

[environments.production]
default_action = "deny"
allow_unparsed = true

[[rules]]
id = "no-drop"
operations = ["drop"]
action = "deny"

[[rules]]
id = "review-deletes"
operations = ["delete"]
action = "review"

[[rules]]
id = "mysql-dba"
targets = ["my-*"]
groups = ["dba"]
action = "allow"

[[rules]]
id = "anything-else"
operations = ["select", "insert", "set", "kill", "change user"]
action = "allow"
"""


def _config(tmp_path: Path, expiry: str = "refuse") -> Config:
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(CONFIG.replace("{expiry}", expiry)))
    return load_config(str(path), env={})


class Live:
    """A pipeline and a session context as an adapter holds them."""

    def __init__(self, config: Config, target: str, identity: Identity) -> None:
        self.sink = ListSink()
        self.gk = Gatekeeper.from_config(config, self.sink)
        self.pipeline = Pipeline(self.gk)
        self.ctx = SessionContext(self.gk.recorder.scope("c1"))
        self.ctx.set_identity(identity)
        protocol = "mysql" if target.startswith("my") else "postgres"
        self.ctx.target = self.gk.resolve_target(target, protocol)
        assert self.ctx.target is not None

    def judge(self, request: StatementRequest, *, durable: bool = True) -> Verdict:
        return trio.run(lambda: self.pipeline.judge(self.ctx, request, durable=durable))


ALICE = Identity(subject="alice", groups=("dba",))
TOKEN_USER = Identity(subject="tina", groups=("dba",), verified_by="oidc")


def _pg(sql: str, **kw: object) -> StatementRequest:
    return StatementRequest(sql=sql, dialect="postgres", **kw)  # type: ignore[arg-type]


def _my(sql: str, **kw: object) -> StatementRequest:
    return StatementRequest(sql=sql, dialect="mysql", schema="shop", **kw)  # type: ignore[arg-type]


# Every built-in check with a request that triggers it: (target, request, rule id, action).
CASES: list[tuple[str, StatementRequest, str, str]] = [
    ("pg-prod", _pg("SET sqlward.identity = 'bob'"), rule_ids.IDENTITY_TAMPERING, "deny"),
    ("pg-prod", _pg("SELECT set_config('application_name', 'sqlward:bob', false)"), rule_ids.IDENTITY_TAMPERING, "deny"),
    ("my-prod", _my("SET @sqlward_identity = 'sqlward:bob'"), rule_ids.IDENTITY_TAMPERING, "deny"),
    ("my-prod", _my("KILL 42"), rule_ids.OWN_SESSION, "allow"),
    ("my-prod", _my("kill query 42;"), rule_ids.OWN_SESSION, "allow"),
    ("my-prod", _my("SELECT 1; KILL 42"), rule_ids.KILL_FORM, "deny"),
    ("my-prod", _my("/* x */ KILL CONNECTION 7"), rule_ids.KILL_FORM, "deny"),
    ("my-prod", _my("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t"), rule_ids.LOCAL_INFILE, "deny"),
    ("my-prod", _my("load xml local infile 'x' into table t"), rule_ids.LOCAL_INFILE, "deny"),
    ("pg-prod", _pg("", kind="command", command="FunctionCall"), rule_ids.FUNCTION_CALL, "deny"),
    ("my-prod", _my("", kind="command", command="COM_DROP_DB"), rule_ids.COMMAND_NOT_ALLOWED, "deny"),
    ("my-prod", _my("", kind="command", command="cursor fetch"), rule_ids.MASKING_CURSOR, "deny"),
    ("pg-prod", _pg("EXECUTE IMMEDIATE 'DROP TABLE t'"), rule_ids.DYNAMIC_SQL, "deny"),
    ("pg-prod", _pg("DROP TABLE t"), "no-drop", "deny"),
    # A review rule that names no approver cannot be approved: refused, live and offline alike.
    ("pg-prod", _pg("DELETE FROM t WHERE id = 1"), "review-deletes", "deny"),
    ("pg-prod", _pg("CREATE TABLE t (a int)"), rule_ids.DEFAULT, "deny"),
]


@pytest.mark.parametrize(("target", "request_", "rule_id", "action"), CASES, ids=[f"{c[2]}:{c[1].sql or c[1].command}" for c in CASES])
def test_each_built_in_check_and_policy_test_agree(
    tmp_path: Path, target: str, request_: StatementRequest, rule_id: str, action: str,
) -> None:
    config = _config(tmp_path)
    live = Live(config, target, ALICE)
    verdict = live.judge(request_)
    assert (verdict.decision.action, verdict.decision.rule_id) == (action, rule_id), verdict.decision
    # The decision is on disk (durable) with the envelope and the facts.
    (event,) = live.sink.events
    assert (event["event"], event["action"], event["rule_id"], event["seq"]) == ("statement.decided", action, rule_id, 1)
    assert event["request_id"] == verdict.request_id == 1
    # `sqlward policy test` says the same.
    report = evaluate(
        config, identity="alice", target=target, sql=request_.sql, command=request_.command,
        schema="shop" if request_.dialect == "mysql" else None,
    )
    assert (report.decision, report.rule_id, report.message) == (action, rule_id, verdict.decision.message)
    live.gk.close()


def test_allowed_kill_is_a_kill_request_and_says_what_offline_cannot_know(tmp_path: Path) -> None:
    config = _config(tmp_path)
    live = Live(config, "my-prod", ALICE)
    verdict = live.judge(_my("KILL QUERY 42"))
    assert verdict.kill is not None and (verdict.kill.connection_id, verdict.kill.query_only) == (42, True)
    assert live.sink.events[0]["sql"] == "KILL QUERY 42" and live.sink.events[0]["operations"] == ["kill"]
    report = evaluate(config, identity="alice", target="my-prod", sql="KILL QUERY 42")
    assert any("only a live gateway knows" in n for n in report.notes)


def test_local_infile_allowed_where_the_target_allows_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    verdict = Live(config, "my-infile", ALICE).judge(_my("LOAD DATA LOCAL INFILE 'x' INTO TABLE t"))
    assert verdict.decision.rule_id != rule_ids.LOCAL_INFILE
    report = evaluate(config, identity="alice", target="my-infile", sql="LOAD DATA LOCAL INFILE 'x' INTO TABLE t")
    assert report.rule_id == verdict.decision.rule_id


@pytest.mark.parametrize("mode", ["refuse", "close"])
def test_token_expiry_live_and_offline(tmp_path: Path, mode: str) -> None:
    config = _config(tmp_path, mode)
    expired = msgspec.structs.replace(TOKEN_USER, expires_at=time.time() - 5)
    live = Live(config, "pg-prod", expired)
    for request in (_pg("SELECT 1"), _pg("", kind="execute", statement_name="s1")):
        verdict = live.judge(request)
        assert verdict.decision.rule_id == rule_ids.TOKEN_EXPIRED and verdict.decision.action == "deny"
        assert verdict.close_session is (mode == "close")
    # refuse: each refusal is recorded; close: the session ends, nothing is decided
    assert len(live.sink.events) == (2 if mode == "refuse" else 0)
    report = evaluate(config, identity="tina", target="pg-prod", sql="SELECT 1", groups=("dba",), expires_at=time.time() - 5)
    assert (report.decision, report.rule_id, report.closes_session) == ("deny", rule_ids.TOKEN_EXPIRED, mode == "close")
    valid = evaluate(config, identity="tina", target="pg-prod", sql="SELECT 1", groups=("dba",), expires_at=time.time() + 600)
    assert valid.decision == "allow"


def test_allowed_execute_is_recorded_before_it_runs(tmp_path: Path) -> None:
    live = Live(_config(tmp_path), "pg-prod", ALICE)
    verdict = live.judge(_pg("", kind="execute", statement_name="s1"))
    assert verdict.allowed and verdict.request_id == 1
    assert [(e["event"], e["request_id"], e["statement_name"]) for e in live.sink.events] == [
        ("statement.executed", 1, "s1")
    ]


def test_execute_is_refused_when_its_record_cannot_be_written(tmp_path: Path) -> None:
    live = Live(_config(tmp_path), "pg-prod", ALICE)
    live.sink.fail = OSError(28, "No space left on device")
    verdict = live.judge(_pg("", kind="execute", statement_name="s1"))
    assert not verdict.allowed and verdict.decision.rule_id == rule_ids.AUDIT_UNAVAILABLE
    # durable=False: the record waits for the adapter's flush point (which refuses on failure)
    live.sink.fail = None
    verdict = live.judge(_pg("", kind="execute", statement_name="s2"), durable=False)
    assert verdict.allowed and live.sink.events == [] and live.ctx.audit.pending == 1


def test_stated_reason_becomes_the_sessions(tmp_path: Path) -> None:
    live = Live(_config(tmp_path), "pg-prod", ALICE)
    live.judge(_pg("/* sqlward:reason=INC-42 */ SELECT 1"))
    assert live.ctx.identity is not None and live.ctx.identity.reason == "INC-42"
    assert live.sink.events[0]["who"]["reason"] == "INC-42"
    live.judge(_pg("SELECT 2"))
    assert live.sink.events[1]["who"]["reason"] == "INC-42"


def test_review_nobody_may_approve_is_refused_with_a_sentence_naming_the_rule(tmp_path: Path) -> None:
    verdict = Live(_config(tmp_path), "pg-prod", ALICE).judge(_pg("DELETE FROM t WHERE id = 1"))
    assert verdict.decision.action == "deny" and 'rule "review-deletes"' in verdict.decision.message
    assert "no approver is configured" in verdict.decision.message


def test_durable_false_leaves_the_record_to_the_adapters_flush(tmp_path: Path) -> None:
    live = Live(_config(tmp_path), "pg-prod", ALICE)
    live.judge(_pg("SELECT 1"), durable=False)
    live.judge(_pg("SELECT 2"), durable=False)
    assert live.sink.events == [] and live.ctx.audit.pending == 2
    trio.run(live.ctx.audit.flush)
    assert len(live.sink.batches) == 1 and [e["sql"] for e in live.sink.events] == ["SELECT 1", "SELECT 2"]


def test_audit_failure_refuses_the_statement(tmp_path: Path) -> None:
    live = Live(_config(tmp_path), "pg-prod", ALICE)
    live.sink.fail = OSError("disk full")
    verdict = live.judge(_pg("SELECT 1"))
    assert (verdict.decision.action, verdict.decision.rule_id) == ("deny", rule_ids.AUDIT_UNAVAILABLE)


def test_an_exception_in_the_policy_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = Live(_config(tmp_path), "pg-prod", ALICE)

    def boom(*args: object, **kw: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(live.gk, "analyse", boom)
    verdict = live.judge(_pg("SELECT 1"))
    assert (verdict.decision.action, verdict.decision.rule_id) == ("deny", rule_ids.INTERNAL_ERROR)
    assert live.sink.events[0]["parse_status"] == "error"


def test_built_in_rule_ids_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    missing = [r for r in sorted(rule_ids.ALL) if f"`{r}`" not in doc]
    assert missing == []


def test_every_verdict_says_whether_masking_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapters keep watching rows of statements decided earlier by `Verdict.masked`: a verdict
    that ends before the mask step (an expired token, a command, an execute, an internal error)
    must still say that a [[masks]] rule applies, or an earlier masked prepared statement's rows
    would go out in clear."""
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(CONFIG.replace("{expiry}", "refuse")) + '\n[[masks]]\nid = "emails"\ncolumns = ["*.email"]\n')
    live = Live(load_config(str(path), env={}), "pg-prod", msgspec.structs.replace(ALICE, expires_at=time.time() + 600))
    assert live.ctx.identity is not None and live.ctx.target is not None
    assert live.gk.masks_apply(live.ctx.identity, live.ctx.target.info)
    for request in (_pg("", kind="execute"), _pg("", kind="command", command="FunctionCall")):
        assert live.judge(request).masked
    monkeypatch.setattr(live.gk, "analyse", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    verdict = live.judge(_pg("SELECT 1"))
    assert verdict.decision.rule_id == rule_ids.INTERNAL_ERROR and verdict.masked
    live.ctx.set_identity(msgspec.structs.replace(ALICE, expires_at=time.time() - 1))
    verdict = live.judge(_pg("SELECT 1"))
    assert verdict.decision.rule_id == rule_ids.TOKEN_EXPIRED and verdict.masked
