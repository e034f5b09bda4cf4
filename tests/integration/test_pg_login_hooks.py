"""Issue 12 (items 3 and 4, PostgreSQL): the login throttle's hooks are called at the right
points, and an authentication timeout ends the connection's story with connection.refused.

The real Gatekeeper, Pipeline and PostgreSQL listener run in this process (trio in a thread, as
in tests/integration/mysql/test_hardening.py), so the test can watch `login_gate`,
`login_failed` and `login_succeeded` and shorten the authentication timeout. Clients: psycopg
(libpq) and the raw wire client; upstream: the real PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support import pgwire
from tests.support.gateway import DEFAULT_IDENTITIES, SECRETS, free_port, target, to_toml

from .conftest import PGHOST, PGPORT, _admin_dsn

DB = "pgh12_hooks"


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    yield DB
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


class InProcessGateway:
    def __init__(self, tmp: Any, gate_refuses: str = "") -> None:
        self.port = free_port()
        self.audit_file = tmp / "audit.jsonl"
        doc = {
            "gateway": {"name": "pgh12-inproc"},
            "listeners": [{"protocol": "postgres", "listen": f"127.0.0.1:{self.port}"}],
            "targets": [target("app", f"postgresql://postgres@{PGHOST}:{PGPORT}/{DB}?sslmode=disable")],
            "identities": DEFAULT_IDENTITIES,
            "audit": {"file": str(self.audit_file)},
        }
        self.config_path = tmp / "gateway.toml"
        self.config_path.write_text(to_toml(doc))
        self.calls: list[tuple[str, str, str]] = []
        self.gate_refuses = gate_refuses
        self._thread: threading.Thread | None = None
        self._stop: Any = None
        self._trio_token: Any = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> "InProcessGateway":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), self.error
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._trio_token.run_sync_soon(self._stop.cancel)
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        import trio

        from sqlward.adapters.base import AuthError, SessionServices
        from sqlward.adapters.postgres.listener import PostgresListener
        from sqlward.gateway.config import load_config
        from sqlward.gateway.gatekeeper import Gatekeeper
        from sqlward.gateway.pipeline import Pipeline
        from sqlward.gateway.server import listener_settings

        async def main() -> None:
            config = load_config(self.config_path)
            gk = Gatekeeper.from_config(config)

            async def login_gate(host: str, user: str) -> None:
                self.calls.append(("gate", host, user))
                if user == self.gate_refuses:
                    raise AuthError("too many failed logins for this name; try again in 30 s")

            gk.login_gate = login_gate  # type: ignore[method-assign]
            gk.login_failed = lambda host, user: self.calls.append(("failed", host, user))  # type: ignore[method-assign]
            gk.login_succeeded = lambda host, user: self.calls.append(("succeeded", host, user))  # type: ignore[method-assign]
            services = SessionServices(gatekeeper=gk, pipeline=Pipeline(gk), recorder=gk.recorder)
            listener = PostgresListener(services, listener_settings(config.listeners[0], gk))
            self._trio_token = trio.lowlevel.current_trio_token()
            try:
                async with trio.open_nursery() as nursery:
                    self._stop = nursery.cancel_scope
                    await nursery.start(listener.serve)
                    self._ready.set()
            finally:
                gk.close()

        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__
            self.error = exc
            self._ready.set()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_file.read_text().splitlines()]

    def hook_calls(self, user: str) -> list[str]:
        return [kind for kind, _host, u in self.calls if u == user]

    def dsn(self, user: str, password: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/app?sslmode=disable"


def test_login_hooks_are_called_at_the_right_points(db: str, tmp_path: Any) -> None:
    with InProcessGateway(tmp_path, gate_refuses="pgh12_blocked") as g:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(g.dsn("alice", "wrong"), connect_timeout=5)
        assert g.hook_calls("alice") == ["gate", "failed"]
        with psycopg.connect(g.dsn("alice", SECRETS["alice"]), connect_timeout=5) as c:
            assert c.execute("select 1").fetchone() == (1,)
        assert g.hook_calls("alice") == ["gate", "failed", "gate", "succeeded"]
        # A name that is no identity: the decoy SCRAM exchange fails, counted like a wrong secret.
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(g.dsn("pgh12_nobody", "x"), connect_timeout=5)
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
    with InProcessGateway(tmp_path) as g:
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
