"""When the audit trail cannot be written, nothing goes through unrecorded (MySQL / MariaDB).

The gateway's audit writes are made to fail from outside while it runs: its file size limit
(RLIMIT_FSIZE, set on the running process with prlimit) is lowered to the audit file's current
size, so the next write gets EFBIG (Python ignores SIGXFSZ). A MySQL session flushes each
decision before the command goes upstream, and the completion before the last bytes of the
answer go to the client:

* a decision that cannot be written refuses the statement (ERR 1227, rule `audit-unavailable`)
  and the session goes on (one command, one answer: nothing else is in flight);
* a completion that cannot be written ends the session with ERR 1105 instead of the result;
* a login whose `connection.authenticated` cannot be written is refused the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.integration.mysql.conftest import MY_ENVIRONMENTS, default_targets, direct_rows, mysql_listener
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess

AUDIT_LOST = "the audit trail cannot be written; sqlward closed the session"


@pytest.fixture
def gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=default_targets(), environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app"), name="my-audit-fail") as g:
        yield g
        g.audit_writable()  # whatever happened, the gateway must stop cleanly




def _login(g: GatewayProcess) -> mywire.RawMySQL:
    return mywire.login(g.host, g.port, "alice", SECRETS["alice"], "app")


def test_statement_is_refused_when_its_decision_cannot_be_written(gw: GatewayProcess, my_direct, my_table: str) -> None:
    with _login(gw) as c:
        c.query(f"insert into {my_table} values (1, 'recorded')")
        gw.audit_full()
        with pytest.raises(mywire.MySQLError) as ei:
            c.query(f"insert into {my_table} values (2, 'unrecorded')")
        assert (ei.value.errno, ei.value.sqlstate) == (1227, "42000") and "audit-unavailable" in ei.value.message
        # a refused command is no different
        with pytest.raises(mywire.MySQLError) as ei:
            c.command(0x05, b"sqlward_never")  # COM_CREATE_DB
            c.read_ok()
        assert ei.value.errno == 1227 and "audit-unavailable" in ei.value.message
        gw.audit_writable()
        # the session goes on once the trail can be written again
        c.query(f"insert into {my_table} values (3, 'recorded again')")
    # The upstream never saw the refused statement, and the trail has no record of it.
    assert direct_rows(my_direct, f"select id from {my_table} order by id") == [(1,), (3,)]
    assert gw.decided("'recorded'") and gw.decided("'recorded again'") and gw.refused_unrecorded("'unrecorded'")


def test_result_is_not_delivered_when_its_completion_cannot_be_written(gw: GatewayProcess) -> None:
    """The statement ran (it cannot be undone), but the client never sees an unaudited result."""
    with _login(gw) as c:
        c.query("select 1")
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["rows"] = c.query_rows("select 'slow-result', sleep(1.5)")
            except (mywire.MySQLError, mywire.Closed, OSError) as exc:
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
        err = outcome["error"]
        assert isinstance(err, mywire.MySQLError) and (err.errno, err.message) == (1105, AUDIT_LOST), err
        assert mywire.wait_closed(c)


def test_prepared_execution_is_refused_when_its_record_cannot_be_written(gw: GatewayProcess) -> None:
    # The run of a statement prepared earlier is recorded (statement.executed) before it goes
    # upstream; when that record cannot be written the run is refused and never happens.
    with _login(gw) as c:
        st = c.stmt_prepare("select ?, 'prepared-result'")
        assert gw.decided("prepared-result")
        gw.audit_full()
        with pytest.raises(mywire.MySQLError) as ei:
            c.stmt_execute(st, [1])
        assert ei.value.errno == 1227 and "audit" in ei.value.message, ei.value


def test_new_sessions_are_refused_while_the_trail_cannot_be_written_and_served_again_after(gw: GatewayProcess) -> None:
    gw.audit_full()
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="app",
                        ssl_disabled=True, connect_timeout=5).close()
    assert ei.value.args == (1105, AUDIT_LOST), ei.value
    gw.audit_writable()
    with pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="app",
                         ssl_disabled=True, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("select 42")
        assert cur.fetchone() == (42,)


# -- COM_STMT_FETCH (cursor fetch) ----------------------------------------------------------------


def _open_cursor(c: mywire.RawMySQL, sql: str) -> tuple[Any, list[Any]]:
    import struct

    st = c.stmt_prepare(sql)
    c.command(0x17, struct.pack("<IBI", st.stmt_id, 0x01, 1))  # COM_STMT_EXECUTE, CURSOR_TYPE_READ_ONLY
    n = mywire.Buf(c.read_packet()).lenenc()
    cols = c._read_columns(n)
    if c.deprecate_eof:
        assert c.read_packet()[:1] == b"\xfe"
    return st, cols


def _fetch(c: mywire.RawMySQL, st: Any, cols: list[Any], n: int) -> list[Any]:
    import struct

    c.command(0x1C, struct.pack("<II", st.stmt_id, n))  # COM_STMT_FETCH
    rows, _ = c._read_rows(cols, binary=True)
    return rows


def test_cursor_fetch_is_refused_when_its_record_cannot_be_written(gw: GatewayProcess, my_direct) -> None:
    with _login(gw) as c:
        st, cols = _open_cursor(c, "SELECT id FROM accounts ORDER BY id")
        assert _fetch(c, st, cols, 1) == [(1,)]
        gw.audit_full()
        with pytest.raises(mywire.MySQLError) as ei:
            _fetch(c, st, cols, 1)
        assert (ei.value.errno, ei.value.sqlstate) == (1227, "42000") and "audit-unavailable" in ei.value.message
        gw.audit_writable()
        assert _fetch(c, st, cols, 5) == [(2,), (3,)]  # the session and the cursor go on
        assert c.scalar("SELECT 7") == 7


def test_cursor_fetch_is_recorded_with_its_rows(gw: GatewayProcess, my_direct) -> None:
    with _login(gw) as c:
        st, cols = _open_cursor(c, "SELECT id FROM accounts ORDER BY id")
        since = gw.audit_offset()
        assert _fetch(c, st, cols, 2) == [(1,), (2,)]
        events = gw.wait_audit(lambda ev: any(e.get("event") == "statement.completed" for e in ev), since=since)
    executed = [e for e in events if e.get("event") == "statement.executed"]
    assert executed and executed[0].get("command") == "COM_STMT_FETCH", events
    assert executed[0].get("statement_name") == str(st.stmt_id)
    done = [e for e in events if e.get("event") == "statement.completed" and e.get("request_id") == executed[0]["request_id"]]
    assert done and done[0].get("rows") == 2 and done[0].get("tags") == ["ROWS 2"], events
