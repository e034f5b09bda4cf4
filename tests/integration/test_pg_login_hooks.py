"""Issue 12 (items 3 and 4, PostgreSQL): the login throttle's hooks are called at the right
points, and an authentication timeout ends the connection's story with connection.refused.

The real Gatekeeper, Pipeline and PostgreSQL listener run in this process (trio in a thread, as
in tests/integration/mysql/test_hardening.py), so the test can watch `login_gate`,
`login_failed` and `login_succeeded` and shorten the authentication timeout. Clients: psycopg
(libpq) and the raw wire client; upstream: the real PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support import pgwire
from tests.support.gateway import SECRETS, target
from tests.support.inprocess import InProcessGateway

from .conftest import PGHOST, PGPORT, scratch_database

DB = "pgh12_hooks"


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with scratch_database(DB) as name:
        yield name


def _gateway(tmp: Any, gate_refuses: str = "") -> InProcessGateway:
    return InProcessGateway(
        tmp, protocol="postgres", name="pgh12-inproc", gate_refuses=gate_refuses,
        targets=[target("app", f"postgresql://postgres@{PGHOST}:{PGPORT}/{DB}?sslmode=disable")],
    )


def _dsn(g: InProcessGateway, user: str, password: str) -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{g.port}/app?sslmode=disable"


def test_login_hooks_are_called_at_the_right_points(db: str, tmp_path: Any) -> None:
    with _gateway(tmp_path, gate_refuses="pgh12_blocked") as g:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(_dsn(g, "alice", "wrong"), connect_timeout=5)
        assert g.hook_calls("alice") == ["gate", "failed"]
        with psycopg.connect(_dsn(g, "alice", SECRETS["alice"]), connect_timeout=5) as c:
            assert c.execute("select 1").fetchone() == (1,)
        assert g.hook_calls("alice") == ["gate", "failed", "gate", "succeeded"]
        # A name that is no identity: the decoy SCRAM exchange fails, counted like a wrong secret.
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(_dsn(g, "pgh12_nobody", "x"), connect_timeout=5)
        assert g.hook_calls("pgh12_nobody") == ["gate", "failed"]
        # A client that leaves before answering is not a judged failure (psql asks for the
        # password only after such a first attempt).
        with pgwire.RawConn.connect("127.0.0.1", g.port) as c:
            c.send(pgwire.startup_message({"user": "bob", "database": "app"}))
            assert c.read_message().auth_code == pgwire.AUTH_SASL
        time.sleep(0.2)
        assert g.hook_calls("bob") == ["gate"]
        # The gate refuses outright: nothing is asked, judged or counted.
        with pgwire.RawConn.connect("127.0.0.1", g.port) as c:
            c.send(pgwire.startup_message({"user": "pgh12_blocked", "database": "app"}))
            first = c.read_message()
            assert first.type == "E" and first.severity == "FATAL" and first.sqlstate == "28000", first
            assert "too many failed logins" in first.text
        assert g.hook_calls("pgh12_blocked") == ["gate"]
        assert all(host == "127.0.0.1" for _k, host, _u in g.calls)


def test_authentication_timeout_ends_the_lifecycle_with_a_refusal(
    db: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlward.adapters.postgres import session as pg_session

    monkeypatch.setattr(pg_session, "AUTH_TIMEOUT", 0.5)
    with _gateway(tmp_path) as g:
        with pgwire.RawConn.connect("127.0.0.1", g.port) as c:
            port = c.sock.getsockname()[1]
            c.send(pgwire.startup_message({"user": "alice", "database": "app"}))
            assert c.read_message().auth_code == pgwire.AUTH_SASL
            messages, closed = c.read_all_until_closed(5)  # the client never answers
        assert closed and [(m.severity, m.sqlstate) for m in messages] == [("FATAL", "08006")], messages
        assert "timed out" in messages[0].text
        deadline = time.monotonic() + 5
        while True:
            events = g.events()
            opened = [e for e in events if e["event"] == "connection.opened" and e["client_addr"].endswith(f":{port}")]
            mine = [e for e in events if opened and e.get("connection_id") == opened[0]["connection_id"]]
            if (mine and mine[-1]["event"] == "connection.refused") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [e["event"] for e in mine] == ["connection.opened", "connection.refused"], mine
        assert mine[-1]["user"] == "alice" and "timed out" in mine[-1]["reason"]
