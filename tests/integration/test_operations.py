"""Operating the gateway (issue 15): SIGTERM drains, SIGHUP reloads, JSON logs carry no secret.

Real gateway processes, real PostgreSQL, psycopg clients.

- SIGTERM: `/readyz` says 503 at once; the port stops accepting; an idle session is closed at
  once with FATAL 57P01; a statement in flight finishes and its client gets the rows, then the
  session is closed; a statement still running at `drain_seconds` is cut with 57P01; the process
  exits 0 soon after.
- SIGHUP: a rule added to the file takes effect; a broken file keeps the running policy (and
  says why in the log); a change that needs a restart is named in the log.
- `log_format = "json"`: every stderr line is a JSON object; a failed login and an unreachable
  upstream are logged; neither the wrong password, the target's password nor the DSN appear.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import upstream_dsn
from tests.support.background import background
from tests.support.gateway import (
    GatewayProcess, connection_events, connection_id_for_app, free_port, port_closed, target,
)
from tests.support.pgcluster import wait_for

pytestmark = pytest.mark.integration


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening (yet, or any more)
        return 0


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line must parse
    return out


def test_sigterm_drains_idle_busy_and_overdue_sessions(it_database: str) -> None:
    admin = free_port()
    gw = GatewayProcess(
        targets=[target("app", upstream_dsn())],
        extra={"admin": {"listen": f"127.0.0.1:{admin}"}},
        name="it-drain",
    )
    gw.config["gateway"]["drain_seconds"] = 6
    gw.config_text = gw._render(gw.config)
    with gw:
        assert wait_for(lambda: _readyz(admin) == 200, timeout=10)
        idle = psycopg.connect(gw.dsn("alice", "alice-secret", "app", application_name="drain-idle"), autocommit=True)
        busy = psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True)
        overdue = psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True)
        idle.execute("select 1")
        results: dict[str, Any] = {}
        threads = [
            background(results, "busy", lambda: busy.execute("select 'finished' from pg_sleep(3)").fetchall(), psycopg.Error),
            background(results, "overdue", lambda: overdue.execute("select pg_sleep(60)").fetchall(), psycopg.Error),
        ]
        time.sleep(0.5)  # both statements are running upstream
        assert gw.proc is not None
        signalled = time.monotonic()
        gw.exit_expected = True
        gw.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: _readyz(admin) == 503, timeout=3), "readyz must say no while draining"
        # Not accepting any more.
        assert wait_for(lambda: port_closed(gw.port), timeout=3)
        # The idle session is closed at once, with the shutdown error.
        cid = connection_id_for_app(gw.audit_events(), "drain-idle")
        assert wait_for(lambda: any(
            e["event"] == "connection.closed" and e.get("reason") == "gateway shutting down"
            for e in connection_events(gw.audit_events(), cid)
        ), timeout=3)
        assert "busy" not in results  # closed while the other statement still ran
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
        for t in threads:
            t.join(15)
        # The statement in flight finished and its rows arrived.
        assert results["busy"] == [("finished",)]
        # The one still running at the deadline was cut with 57P01, about drain_seconds in.
        err = results["overdue"]
        assert isinstance(err, psycopg.OperationalError), err
        assert "shutting down" in str(err)
        assert 5.0 <= results["overdue_at"] - signalled <= 12.0
        assert gw.proc.wait(15) == 0
        for conn in (idle, busy, overdue):
            conn.close()
        events = gw.audit_events()
        closed = [e for e in events if e["event"] == "connection.closed"]
        assert sum(1 for e in closed if e.get("reason") == "gateway shutting down") == 3
        stopped = [e for e in events if e["event"] == "gateway.stopped"]
        assert stopped and stopped[-1]["reason"] == "SIGTERM"
        assert "draining" in gw.stderr_text()


def test_idle_session_gets_admin_shutdown_sqlstate(it_database: str) -> None:
    gw = GatewayProcess(targets=[target("app", upstream_dsn())], name="it-drain2")
    with gw:
        conn = psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True)
        conn.execute("select 1")
        assert gw.proc is not None
        gw.exit_expected = True
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0  # only an idle session: the drain ends at once
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select 1")
        conn.close()
        assert "gateway shutting down" in {e.get("reason") for e in gw.audit_events() if e["event"] == "connection.closed"}
    assert "shutting down" in str(info.value)


def test_sighup_reloads_rules_keeps_old_policy_on_error_and_names_restart(it_database: str) -> None:
    gw = GatewayProcess(targets=[target("app", upstream_dsn())], name="it-hup")
    with gw:
        conn = psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True)
        assert conn.execute("select 41 + 1").fetchone() == (42,)
        assert gw.proc is not None
        # 1. A rule added to the file: in force after SIGHUP.
        gw.config["rules"] = [{"id": "no-pg-sleep-hup", "operations": ["select"], "tables": ["pg_class"], "action": "deny"}]
        gw.config_file.write_text(gw._render(gw.config))
        mark = gw.stderr_size()
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "policy reloaded (SIGHUP)" in gw.stderr_text(mark), timeout=10)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute("select count(*) from pg_class")
        assert "no-pg-sleep-hup" in str(refused.value)
        # 2. A broken file: the running policy stays, the log says why.
        good = gw.config_file.read_text()
        gw.config_file.write_text(good.replace('action = "deny"', 'action = "smite"'))
        mark = gw.stderr_size()
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload (SIGHUP) refused" in gw.stderr_text(mark), timeout=10)
        assert "action" in gw.stderr_text(mark)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from pg_class")
        assert conn.execute("select 1").fetchone() == (1,)
        # 3. A change that needs a restart is named; the policy part still reloads.
        gw.config["listeners"][0]["max_message_size"] = 1 << 20
        gw.config["rules"] = []
        gw.config_file.write_text(gw._render(gw.config))
        mark = gw.stderr_size()
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "need a restart" in gw.stderr_text(mark), timeout=10)
        assert "listeners" in gw.stderr_text(mark)
        assert conn.execute("select count(*) > 0 from pg_class").fetchone() == (True,)
        conn.close()
        reloads = [e for e in gw.audit_events() if e["event"] == "policy.reloaded"]
        assert [bool(e.get("error")) for e in reloads] == [False, True, False]


def test_json_logs_parse_and_carry_no_secret(it_database: str) -> None:
    dead = free_port()  # nothing listens there: the upstream cannot be reached
    gw = GatewayProcess(
        targets=[
            target("app", upstream_dsn()),
            target("gone", f"postgresql://postgres@127.0.0.1:{dead}/x?sslmode=disable&connect_timeout=2",
                   password="dsn-password-77f1"),
        ],
        name="it-logs",
    )
    gw.config["gateway"]["log_format"] = "json"
    gw.config["gateway"]["log_level"] = "info"
    gw.config_text = gw._render(gw.config)
    with gw:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("alice", "wrong-secret-9c2e", "app"))
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("alice", "alice-secret", "gone"))
        assert wait_for(lambda: gw.stderr_text().count('"connection.refused"') >= 2, timeout=10)
        text = gw.stderr_text()
    lines = _json_lines(text)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    refused = [line for line in lines if line.get("event") == "connection.refused"]
    assert any(line["user"] == "alice" and line["target"] == "" or "password" in line["reason"] for line in refused)
    assert any(line["target"] == "gone" for line in refused)
    for secret in ("wrong-secret-9c2e", "dsn-password-77f1", "alice-secret"):
        assert secret not in text


def test_psql_without_a_database_lands_on_default_target(it_database: str) -> None:
    """libpq sends the user name as the database when none is given: that lands on the
    listener's default_target (a name that is a target still wins)."""
    gw = GatewayProcess(
        targets=[target("app", upstream_dsn()), target("bob", upstream_dsn(), "staging")],
        listener={"default_target": "app"}, name="it-default",
    )
    with gw:
        env = {**os.environ, "PGPASSWORD": "alice-secret", "PGAPPNAME": "psql-default"}
        out = subprocess.run(
            ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(gw.port), "-U", "alice", "-c", "select current_database()"],
            env=env, capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "sqlward_it"
        with psycopg.connect(f"host=127.0.0.1 port={gw.port} user=alice password=alice-secret sslmode=disable") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        # bob names a target: his own name still means that target.
        with psycopg.connect(f"host=127.0.0.1 port={gw.port} user=bob password=bob-secret sslmode=disable") as conn:
            conn.execute("select 1")
        targets = [e["target"] for e in gw.audit_events() if e["event"] == "connection.authenticated"]
        assert targets == ["app", "app", "bob"]


def test_a_taken_port_is_reported_with_the_listener_that_wanted_it(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for admin, needle in ((False, "listener 'pg'"), (True, "the admin listener ([admin] listen)")):
            gw = GatewayProcess(targets=[target("app", upstream_dsn())], listener={"name": "pg"}, name="it-port")
            if admin:
                gw.config["admin"] = {"listen": f"127.0.0.1:{port}"}
            else:
                gw.config["listeners"][0]["listen"] = f"127.0.0.1:{port}"
            (tmp_path / "c.toml").write_text(gw._render(gw.config))
            out = subprocess.run(
                [sys.executable, "-m", "sqlward.gateway", "serve", "--config", str(tmp_path / "c.toml")],
                capture_output=True, text=True, timeout=60,
            )
            assert out.returncode == 1
            assert needle in out.stderr and f"127.0.0.1:{port}" in out.stderr and "in use" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
