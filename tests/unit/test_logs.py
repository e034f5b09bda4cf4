"""gateway.logs: JSON log lines, the level setting, and the observer that logs refused
connections and upstream failures from the audit events."""

from __future__ import annotations

import io
import json
import logging

import pytest

from sqlward.audit.events import ConnectionClosed, ConnectionRefused, LoginThrottled, StatementDecided, Who
from sqlward.audit.recorder import NullSink, Recorder
from sqlward.gateway import logs


@pytest.fixture
def stream():
    out = io.StringIO()
    yield out
    logs.configure("info", "text")


def test_json_lines_have_fixed_keys_fields_and_exceptions(stream: io.StringIO) -> None:
    logs.configure("info", "json", stream)
    log = logging.getLogger("sqlward.test")
    log.info("hello %s", "world", extra={"fields": {"event": "x.y", "time": "not over the fixed key"}})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    log.debug("not shown at info")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "hello world" and first["level"] == "info" and first["logger"] == "sqlward.test"
    assert first["event"] == "x.y" and first["time"].endswith("Z") and first["time"] != "not over the fixed key"
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]


def test_level_setting_filters(stream: io.StringIO) -> None:
    logs.configure("warning", "text", stream)
    logging.getLogger("sqlward.test").info("quiet")
    logging.getLogger("sqlward.test").warning("loud")
    assert "quiet" not in stream.getvalue() and "WARNING sqlward.test: loud" in stream.getvalue()


def test_observer_logs_refusals_throttles_and_upstream_losses_only(stream: io.StringIO) -> None:
    logs.configure("info", "json", stream)
    recorder = Recorder("gw", NullSink(), observers=(logs.LogObserver(),))
    scope = recorder.scope("c1")
    scope.add(ConnectionRefused(user="alice", target="app", reason="authentication failed: wrong password"))
    scope.add(LoginThrottled(client_addr="10.0.0.7:5", user="alice", scope="user", failures=6, refused=True))
    scope.add(ConnectionClosed(duration_ms=1.0, reason="upstream connection lost"))
    scope.add(ConnectionClosed(duration_ms=1.0, reason="client terminated"))
    scope.add(StatementDecided(request_id=1, who=Who(subject="alice"), target="app", environment="dev", sql="select 1",
                               fingerprint="f", action="allow"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["connection.refused", "login.throttled", "connection.closed"]
    assert lines[0]["user"] == "alice" and lines[0]["connection"] == "c1" and lines[0]["level"] == "warning"
    assert lines[2]["level"] == "error"
