"""psycopg 3 (libpq) through the gateway: text and binary results, server-side parameters and
prepared statements, pipeline mode with a refusal inside, COPY both ways and both formats,
asynchronous messages (NotificationResponse, NoticeResponse, ParameterStatus), transactions,
BackendKeyData and cancellation.

Tests named `*_reference` run the same scenario straight against PostgreSQL with a real server
error instead of a refusal: they document (and check) the protocol behaviour the gateway's
refusals must reproduce.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from decimal import Decimal
from typing import Any, Callable

import psycopg
import psycopg.errors as pe
import pytest
from psycopg.pq import TransactionStatus

from tests.support.gateway import GatewayProcess


def connect(via, user: str = "alice", dbname: str = "app", autocommit: bool = True, **params: Any) -> psycopg.Connection:
    return psycopg.connect(via.dsn(user, dbname, **params), autocommit=autocommit, connect_timeout=10)


def gw_connect(gw: GatewayProcess, user: str = "alice", dbname: str = "app", autocommit: bool = True,
               **params: Any) -> psycopg.Connection:
    pw = {"alice": "alice-secret", "bob": "bob-secret"}[user]
    return psycopg.connect(gw.dsn(user, pw, dbname, **params), autocommit=autocommit, connect_timeout=10)


VALUES_SQL = (
    "select 42::int4, 9000000000::int8, 12345.6789::numeric, 'text ✓'::text, true, null::text, "
    "'2024-02-29'::date, '2024-02-29 12:34:56.789+00'::timestamptz, '\\x00ff10'::bytea, "
    "'{\"a\": [1, 2]}'::jsonb, array[1, 2, null]::int[], 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, "
    "1.5::float8"
)
EXPECTED = (
    42,
    9000000000,
    Decimal("12345.6789"),
    "text ✓",
    True,
    None,
    dt.date(2024, 2, 29),
    dt.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=dt.timezone.utc),
    b"\x00\xff\x10",
    {"a": [1, 2]},
    [1, 2, None],
    uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    1.5,
)


def _norm(row):
    out = []
    for v in row:
        if isinstance(v, dt.datetime):
            v = v.astimezone(dt.timezone.utc)
        if isinstance(v, memoryview):
            v = bytes(v)
        out.append(v)
    return tuple(out)


def test_text_results(via):
    with connect(via) as conn:
        cur = conn.execute(VALUES_SQL)
        assert all(cur.pgresult.fformat(i) == 0 for i in range(cur.pgresult.nfields))
        assert _norm(cur.fetchone()) == EXPECTED


def test_binary_results(via):
    with connect(via) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(VALUES_SQL)
        assert all(cur.pgresult.fformat(i) == 1 for i in range(cur.pgresult.nfields)), "Bind asked for binary"
        assert _norm(cur.fetchone()) == EXPECTED


def test_binary_parameters_round_trip(via):
    params = EXPECTED[:5] + (None, EXPECTED[6], EXPECTED[7], EXPECTED[8], psycopg.types.json.Jsonb(EXPECTED[9]),
                             EXPECTED[10], EXPECTED[11], EXPECTED[12])
    sql = ("select %b::int4, %b::int8, %b::numeric, %b::text, %b::bool, %b::text, %b::date, %b::timestamptz, "
           "%b::bytea, %b::jsonb, %b::int[], %b::uuid, %b::float8")
    with connect(via) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(sql, params)
        assert _norm(cur.fetchone()) == EXPECTED


def test_server_side_parameters(via):
    with connect(via) as conn:
        cur = conn.execute("select %s::int + %s::int, %s::text || '!', %s::text is null", (20, 22, "hi", None))
        assert cur.fetchone() == (42, "hi!", True)
        # Parameters are never interpolated client-side: a quote is just data.
        cur = conn.execute("select %s::text", ("it's; drop table guarded; --",))
        assert cur.fetchone() == ("it's; drop table guarded; --",)


def test_named_prepared_statements(via):
    with connect(via) as conn:
        for i in range(8):
            cur = conn.execute("select %s::int * 2, %s::text", (i, f"n{i}"), prepare=True)
            assert cur.fetchone() == (i * 2, f"n{i}")
        # The statement really was prepared server-side under a name, on the session's upstream.
        names = conn.execute("select name from pg_prepared_statements where statement like 'select $1::int * 2%'").fetchall()
        assert len(names) == 1 and names[0][0], names


def test_multiple_results_simple_query(via):
    with connect(via) as conn:
        cur = conn.execute("select 1 as a; select 'two' as b, 3 as c")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [("two", 3)]
        assert cur.nextset() is None


def test_server_side_cursor(via):
    with connect(via, autocommit=False) as conn:
        with conn.cursor(name="it_cursor") as cur:
            cur.itersize = 100
            cur.execute("select g, md5(g::text) from generate_series(1, 1000) g")
            first = cur.fetchmany(10)
            assert [r[0] for r in first] == list(range(1, 11))
            rest = cur.fetchall()
            assert len(rest) == 990 and rest[-1][0] == 1000
        conn.rollback()


def test_large_results_and_rows(via):
    with connect(via) as conn:
        cur = conn.execute("select g, repeat('x', 100) from generate_series(1, 100000) g")
        n = s = 0
        for g, x in cur:
            n += 1
            s += g
        assert (n, s) == (100000, 100000 * 100001 // 2)
        big = conn.execute("select repeat('y', 5000000)").fetchone()[0]
        assert len(big) == 5000000
        # A large parameter travels in one Bind message.
        blob = bytes(range(256)) * 8192  # 2 MiB
        assert conn.execute("select length(%b::bytea), md5(%b::bytea)", (blob, blob)).fetchone()[0] == len(blob)


def test_executemany(via, table, direct):
    rows = [(i, f"row {i}") for i in range(500)]
    with connect(via) as conn:
        conn.cursor().executemany(f"insert into {table} (id, v) values (%s, %s)", rows)
    assert direct.execute(f"select count(*), sum(id) from {table}").fetchone() == (500, sum(range(500)))


def test_upstream_error_passes_through_and_session_continues(via):
    with connect(via) as conn:
        with pytest.raises(pe.DivisionByZero) as ei:
            conn.execute("select 1 / 0")
        assert ei.value.diag.sqlstate == "22012"
        assert ei.value.diag.severity_nonlocalized == "ERROR"
        with pytest.raises(pe.UndefinedTable) as ei:
            conn.execute("select * from no_such_table_xyz where x = %s", (1,))
        assert "no_such_table_xyz" in ei.value.diag.message_primary
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


def test_server_parameters_reported(via, direct):
    with connect(via) as conn:
        info = conn.info
        assert info.server_version == direct.info.server_version
        assert info.parameter_status("server_encoding") == "UTF8"
        assert info.parameter_status("integer_datetimes") == "on"
        assert info.parameter_status("standard_conforming_strings") == "on"


# -- ParameterStatus at any time --------------------------------------------------------------


def test_parameter_status_application_name(via):
    with connect(via, application_name="it-start") as conn:
        assert conn.info.parameter_status("application_name") == "it-start"
        conn.execute("set application_name = 'it-changed'")
        assert conn.info.parameter_status("application_name") == "it-changed"
        conn.execute("set timezone to 'Asia/Tokyo'")
        assert str(conn.info.timezone) == "Asia/Tokyo"
        ts = conn.execute("select '2024-01-01 00:00:00+00'::timestamptz").fetchone()[0]
        assert ts.utcoffset() == dt.timedelta(hours=9)


def test_client_encoding_change(via):
    # After SET client_encoding the client sends and receives LATIN1 bytes: the gateway must
    # follow ParameterStatus(client_encoding) to read statement text, and pass bytes through.
    with connect(via) as conn:
        conn.execute("set client_encoding to 'LATIN1'")
        assert conn.info.encoding == "iso8859-1"
        assert conn.execute("select 'café' as x").fetchone() == ("café",)
        assert conn.execute("select %s::text", ("naïve",)).fetchone() == ("naïve",)
        conn.execute("set client_encoding to 'UTF8'")
        assert conn.execute("select 'ok ✓'").fetchone() == ("ok ✓",)


# -- NoticeResponse and NotificationResponse ----------------------------------------------------


def test_notice_delivered(via):
    notices = []
    with connect(via) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary, d.sqlstate)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        conn.execute("select 1")
    assert ("NOTICE", "hello 42", "00000") in notices
    assert ("WARNING", "careful", "01000") in notices


def test_notification_while_idle(via, direct):
    chan = f"ch_{uuid.uuid4().hex[:8]}"
    with connect(via) as listener:
        listener.execute(f"listen {chan}")
        # The notifier is a direct session: only the gateway's forwarding is under test. The
        # listener is idle (no query in flight) when the NotificationResponse arrives.
        threading.Timer(0.3, lambda: direct.execute(f"notify {chan}, 'payload-1'")).start()
        got = list(listener.notifies(timeout=10, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [(chan, "payload-1")]


def test_notification_between_gateway_sessions_and_during_query(via):
    chan = f"ch_{uuid.uuid4().hex[:8]}"
    got: list[tuple[str, str]] = []
    with connect(via) as listener, connect(via) as notifier:
        listener.add_notify_handler(lambda n: got.append((n.channel, n.payload)))
        listener.execute(f"listen {chan}")
        threading.Timer(0.2, lambda: notifier.execute("select pg_notify(%s, %s)", (chan, "during-query"))).start()
        listener.execute("select pg_sleep(0.8)")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            listener.execute("select 1")
            time.sleep(0.05)
        assert got == [(chan, "during-query")]
        # In a transaction, notifications are delivered at commit.
        with notifier.transaction():
            notifier.execute(f"notify {chan}, 'at-commit'")
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            listener.execute("select 1")
            time.sleep(0.05)
        assert got == [(chan, "during-query"), (chan, "at-commit")]


# -- Transactions ------------------------------------------------------------------------------


def test_transaction_commit_and_rollback(via, table, direct):
    with connect(via, autocommit=False) as conn:
        conn.execute(f"insert into {table} values (1, 'rolled back')")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)
        with conn.transaction():
            conn.execute(f"insert into {table} values (2, 'kept')")
            with pytest.raises(ZeroDivisionError):
                with conn.transaction():  # savepoint, rolled back
                    conn.execute(f"insert into {table} values (3, 'savepoint')")
                    raise ZeroDivisionError
        conn.commit()
    assert direct.execute(f"select id from {table} order by id").fetchall() == [(2,)]


def test_upstream_error_in_transaction_marks_it_failed(via, table, direct):
    with connect(via, autocommit=False) as conn:
        conn.execute(f"insert into {table} values (1, 'x')")
        with pytest.raises(pe.UniqueViolation):
            conn.execute(f"insert into {table} values (1, 'again')")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pe.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)
        conn.rollback()
    assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)


def _refusal_in_transaction(conn: psycopg.Connection, table: str, bad_sql: str, exc_type: type) -> None:
    conn.execute(f"insert into {table} values (1, 'before the error')")
    with pytest.raises(exc_type):
        conn.execute(bad_sql)
    # PostgreSQL: an error inside a transaction block aborts the transaction (ReadyForQuery 'E');
    # every later statement fails with 25P02 until ROLLBACK, and COMMIT rolls back.
    assert conn.info.transaction_status == TransactionStatus.INERROR
    with pytest.raises(pe.InFailedSqlTransaction):
        conn.execute("select 1")
    conn.commit()


def test_error_inside_transaction_reference(direct_dsn, table, direct):
    with psycopg.connect(direct_dsn) as conn:
        _refusal_in_transaction(conn, table, "select 1/0", pe.DivisionByZero)
    assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_refusal_inside_transaction_aborts_it(gateway, table, direct):
    with gw_connect(gateway, dbname="prod", autocommit=False) as conn:
        _refusal_in_transaction(conn, table, f"drop table {table}", pe.InsufficientPrivilege)
        assert conn.execute("select 'usable again'").fetchone() == ("usable again",)
    assert direct.execute(f"select count(*) from {table}").fetchone() == (0,), "COMMIT after an error must not commit"


# -- Refusals ----------------------------------------------------------------------------------


def test_refusal_simple_protocol(gateway, direct):
    with gw_connect(gateway, dbname="prod") as conn:
        with pytest.raises(pe.InsufficientPrivilege) as ei:
            conn.execute("drop table guarded")
        d = ei.value.diag
        assert d.sqlstate == "42501"
        assert "no-drop" in d.message_primary
        assert d.severity_nonlocalized == "ERROR"
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("select note from guarded").fetchone() == ("must survive",)
    assert direct.execute("select count(*) from guarded").fetchone() == (1,)


def test_refusal_extended_protocol(gateway, direct):
    with gw_connect(gateway, dbname="prod") as conn:
        with pytest.raises(pe.InsufficientPrivilege) as ei:
            conn.execute("drop table guarded", prepare=True)
        assert "no-drop" in ei.value.diag.message_primary
        with pytest.raises(pe.InsufficientPrivilege) as ei:
            conn.cursor(binary=True).execute("delete from guarded")  # binary forces Parse/Bind
        assert "no-delete-without-where" in ei.value.diag.message_primary
        assert conn.execute("select count(*) from guarded where id = %s", (1,)).fetchone() == (1,)
    assert direct.execute("select count(*) from guarded").fetchone() == (1,)


def test_refusal_depends_on_identity(gateway, table, direct):
    direct.execute(f"insert into {table} values (1, 'x')")
    with gw_connect(gateway, "bob") as bob:
        with pytest.raises(pe.InsufficientPrivilege) as ei:
            bob.execute(f"truncate {table}")
        assert "no-truncate" in ei.value.diag.message_primary
        assert bob.execute(f"select count(*) from {table}").fetchone() == (1,)
    with gw_connect(gateway, "alice") as alice:
        alice.execute(f"truncate {table}")
    assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)


def _pipeline_scenario(conn: psycopg.Connection, table: str, bad_sql: str, exc_type: type) -> None:
    """Three Sync segments: [insert 1] [insert 2, BAD, insert 3] [select]."""
    with conn.pipeline() as p:
        conn.execute(f"insert into {table} values (%s, %s)", (1, "seg1"))
        p.sync()
        conn.execute(f"insert into {table} values (%s, %s)", (2, "seg2 before"))
        # psycopg reports the error whenever it happens to read the results: at the sync or
        # already while sending a later statement.
        with pytest.raises(exc_type) as ei:
            conn.execute(bad_sql)
            conn.execute(f"insert into {table} values (%s, %s)", (3, "seg2 after"))
            p.sync()
        with contextlib.suppress(pe.PipelineAborted):
            p.sync()  # (a Sync, in case the error surfaced before the first one was sent)
        # The next segment works.
        cur = conn.execute(f"select id from {table} order by id")
        p.sync()
        rows = cur.fetchall()
    # Segment 2 ran in one implicit transaction that the error rolled back, and the insert after
    # the error was discarded: only segment 1 stays.
    assert rows == [(1,)]
    assert conn.execute(f"select id, v from {table} order by id").fetchall() == [(1, "seg1")]
    return ei.value


def test_pipeline_error_reference(direct_dsn, table):
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        err = _pipeline_scenario(conn, table, "select 1/0", pe.DivisionByZero)
        assert err.diag.sqlstate == "22012"


def test_pipeline_with_refusal(gateway, table, direct):
    with gw_connect(gateway, dbname="prod") as conn:
        err = _pipeline_scenario(conn, table, f"drop table {table}", pe.InsufficientPrivilege)
        assert err.diag.sqlstate == "42501"
        assert "no-drop" in err.diag.message_primary
        # And the session keeps working outside pipeline mode too.
        assert conn.execute("select 1").fetchone() == (1,)
    assert direct.execute(f"select id from {table} order by id").fetchall() == [(1,)]


def test_pipeline_many_statements(via, table, direct):
    with connect(via) as conn:
        with conn.pipeline():
            curs = [conn.execute(f"insert into {table} values (%s, %s) returning id", (i, str(i))) for i in range(50)]
            sel = conn.execute(f"select count(*) from {table}")
        assert [c.fetchone()[0] for c in curs] == list(range(50))
        assert sel.fetchone() == (50,)
    assert direct.execute(f"select count(*) from {table}").fetchone() == (50,)


# -- COPY -------------------------------------------------------------------------------------

COPY_ROWS = [(i, None if i % 7 == 0 else f"val\t{i}\n✓") for i in range(1, 2001)]


def test_copy_from_stdin_text(via, table, direct):
    with connect(via) as conn:
        with conn.cursor().copy(f"copy {table} (id, v) from stdin") as cp:
            for r in COPY_ROWS:
                cp.write_row(r)
    assert direct.execute(f"select id, v from {table} order by id").fetchall() == COPY_ROWS


def test_copy_from_stdin_binary(via, table, direct):
    with connect(via) as conn:
        with conn.cursor().copy(f"copy {table} (id, v) from stdin (format binary)") as cp:
            cp.set_types(["int4", "text"])
            for r in COPY_ROWS:
                cp.write_row(r)
    assert direct.execute(f"select id, v from {table} order by id").fetchall() == COPY_ROWS


def test_copy_to_stdout_text_and_binary(via, table, direct):
    with direct.cursor().copy(f"copy {table} (id, v) from stdin") as cp:
        for r in COPY_ROWS:
            cp.write_row(r)
    with connect(via) as conn:
        with conn.cursor().copy(f"copy (select id, v from {table} order by id) to stdout") as cp:
            cp.set_types(["int4", "text"])
            text_rows = list(cp.rows())
        with conn.cursor().copy(f"copy (select id, v from {table} order by id) to stdout (format binary)") as cp:
            cp.set_types(["int4", "text"])
            bin_rows = list(cp.rows())
        raw = b""
        with conn.cursor().copy(f"copy (select id from {table} where id <= 3 order by id) to stdout") as cp:
            for chunk in cp:
                raw += bytes(chunk)
        assert conn.execute("select 'after copy'").fetchone() == ("after copy",)
    assert text_rows == COPY_ROWS
    assert bin_rows == COPY_ROWS
    assert raw == b"1\n2\n3\n"


def test_copy_fail_from_client(via, table, direct):
    with connect(via) as conn:
        # psycopg answers an exception in the block with CopyFail, swallows the server's
        # 57014 reply and re-raises the exception.
        with pytest.raises(RuntimeError, match="client gives up"):
            with conn.cursor().copy(f"copy {table} (id, v) from stdin") as cp:
                cp.write_row((1, "a"))
                raise RuntimeError("client gives up")
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("select 'after copyfail'").fetchone() == ("after copyfail",)
    assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_copy_error_from_server(via, table):
    with connect(via) as conn:
        with pytest.raises(pe.InvalidTextRepresentation):
            with conn.cursor().copy(f"copy {table} (id, v) from stdin") as cp:
                cp.write(b"not-a-number\tx\n")
        assert conn.execute("select 'after copy error'").fetchone() == ("after copy error",)


# -- BackendKeyData and cancel -----------------------------------------------------------------


def test_backend_key_data_is_the_gateways(gateway):
    with gw_connect(gateway) as a, gw_connect(gateway) as b:
        upstream_a = a.execute("select pg_backend_pid()").fetchone()[0]
        upstream_b = b.execute("select pg_backend_pid()").fetchone()[0]
        assert upstream_a != upstream_b
        assert a.info.backend_pid != upstream_a, "BackendKeyData must be the gateway's own"
        assert b.info.backend_pid != upstream_b
        assert a.info.backend_pid != b.info.backend_pid


def _run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


class _delayed_cancel(threading.Thread):
    """Call conn.cancel() / conn.cancel_safe() after `delay` s, keeping any exception it raises."""

    def __init__(self, conn: psycopg.Connection, method: str, delay: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.conn, self.method, self.delay = conn, method, delay
        self.errors: list[BaseException] = []
        self.start()

    def run(self) -> None:
        time.sleep(self.delay)
        try:
            getattr(self.conn, self.method)()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel(via, method):
    with connect(via) as victim, connect(via) as bystander:
        marker = uuid.uuid4().hex
        t, box = _run_in_thread(lambda: bystander.execute(f"select pg_sleep(2), '{marker}'").fetchone())
        time.sleep(0.2)
        canceller = _delayed_cancel(victim, method)
        t0 = time.monotonic()
        with pytest.raises(pe.QueryCanceled) as ei:
            victim.execute("select pg_sleep(10)")
        assert time.monotonic() - t0 < 5
        canceller.join(5)
        assert not canceller.errors, f"the client's {method}() itself failed: {canceller.errors[0]!r}"
        assert ei.value.diag.sqlstate == "57014"
        assert victim.execute("select 'victim usable'").fetchone() == ("victim usable",)
        t.join(15)
        assert "error" not in box, f"the other session's query was hit: {box.get('error')!r}"
        assert box["result"][1] == marker and box["elapsed"] >= 1.9


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_on_tls_listener_with_require(tls_required_gateway: GatewayProcess, method):
    # libpq's PQcancel (psycopg cancel(), psql's Ctrl-C) always sends the CancelRequest in
    # plaintext, even for a TLS session; PostgreSQL accepts it whatever pg_hba says. libpq >= 17's
    # PQcancelCreate (cancel_safe) negotiates TLS first. Both must reach the query.
    with gw_connect(tls_required_gateway, sslmode="require") as conn:
        canceller = _delayed_cancel(conn, method)
        t0 = time.monotonic()
        with pytest.raises(pe.QueryCanceled):
            conn.execute("select pg_sleep(10)")
        assert time.monotonic() - t0 < 5
        canceller.join(5)
        assert not canceller.errors, f"the client's {method}() itself failed: {canceller.errors[0]!r}"
        assert conn.execute("select 1").fetchone() == (1,)
