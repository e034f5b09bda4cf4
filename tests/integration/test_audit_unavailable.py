"""When the audit trail cannot be written, nothing goes through unrecorded (PostgreSQL).

The gateway's audit writes are made to fail from outside while it runs: its file size limit
(RLIMIT_FSIZE, set on the running process with prlimit) is lowered to the audit file's current
size, so the next write gets EFBIG (Python ignores SIGXFSZ). Each request's record (decision, or
run of a prepared statement) is written before the request goes upstream: one that cannot be
written is refused with ERROR 58030 "audit unavailable: statement not run" and the session goes
on (issue 12; before, the session was closed with FATAL 58000). Completions are written before
the answer goes to the client; when that fails the session ends with FATAL 58000. More cases:
test_pg_hardening.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import default_targets
from tests.support import pgwire
from tests.support.gateway import GatewayProcess

AUDIT_LOST = "the audit trail cannot be written; sqlward closed the session"
AUDIT_REFUSED = "audit unavailable: statement not run"


@pytest.fixture
def gw(it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=default_targets(), name="audit-fail") as g:
        yield g
        g.audit_writable()  # whatever happened, the gateway must stop cleanly



def _fatal_58000(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "58000" and AUDIT_LOST in str(exc)


def _refused_58030(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "58030" and AUDIT_REFUSED in str(exc)



def test_statement_is_not_forwarded_when_its_decision_cannot_be_written(
    gw: GatewayProcess, direct: psycopg.Connection, table: str,
) -> None:
    with psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1, 'recorded')")
        gw.audit_full()
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(f"INSERT INTO {table} VALUES (2, 'unrecorded')")
        assert _refused_58030(caught.value), caught.value
        # The upstream never saw the second statement, and the trail has no record of it.
        assert direct.execute(f"SELECT id FROM {table} ORDER BY id").fetchall() == [(1,)]
        gw.audit_writable()
        assert not conn.closed and not conn.broken  # the session goes on
        conn.execute(f"INSERT INTO {table} VALUES (3, 'recorded again')")
    assert gw.decided("'recorded'") and gw.refused_unrecorded("'unrecorded'") and gw.decided("'recorded again'")


def test_nothing_of_a_pipeline_is_forwarded_when_its_decisions_cannot_be_written(
    gw: GatewayProcess, direct: psycopg.Connection, table: str,
) -> None:
    """A whole extended-protocol pipeline in one write: its first request is refused (58030), the
    rest is discarded up to Sync, and the session goes on."""
    conn = pgwire.open_session(gw.host, gw.port, "alice", "alice-secret", "app")
    with conn:
        gw.audit_full()
        chunk = b"".join(
            pgwire.parse(f"INSERT INTO {table} VALUES ({i}, 'x')") + pgwire.bind() + pgwire.execute()
            for i in (1, 2)
        ) + pgwire.sync()
        conn.send(chunk)
        messages = conn.read_until("Z")
        assert [(m.type, m.severity, m.sqlstate, m.text) for m in messages[:1]] == [("E", "ERROR", "58030", AUDIT_REFUSED)]
        assert [m.type for m in messages] == ["E", "Z"]
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_result_is_not_delivered_when_its_completion_cannot_be_written(gw: GatewayProcess) -> None:
    """The statement ran (it cannot be undone), but the client never sees an unaudited result."""
    with psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True) as conn:
        conn.execute("SELECT 1")
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["rows"] = conn.execute("SELECT 'slow-result', pg_sleep(1.5)").fetchall()
            except psycopg.Error as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 1.2
        while not gw.decided("slow-result") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gw.decided("slow-result"), "the decision must be on disk while the statement runs"
        gw.audit_full()
        worker.join(10)
        assert "rows" not in outcome, outcome
        assert _fatal_58000(outcome["error"]), outcome["error"]


def test_new_sessions_are_refused_while_the_trail_cannot_be_written_and_served_again_after(gw: GatewayProcess) -> None:
    gw.audit_full()
    with pytest.raises(psycopg.Error) as caught:
        psycopg.connect(gw.dsn("alice", "alice-secret", "app"), connect_timeout=5).close()
    # (libpq reports a failed login by its text only: the FATAL's code is 58000, see test_pg_errors)
    assert f"FATAL:  {AUDIT_LOST}" in str(caught.value), caught.value
    gw.audit_writable()
    with psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
