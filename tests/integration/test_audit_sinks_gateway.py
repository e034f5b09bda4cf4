"""The audit sinks of a real gateway: a PostgreSQL table shared by two gateways, a PostgreSQL sink
that goes down and comes back, failure = "open", and the stdout sink.

- Two gateways (different names) write their trails to their own files and to one table in a
  database of this module's own (`sqlward_t_auditgw_<hex>`): each gateway's rows form a chain
  that verifies, and the rows are the file's lines byte for byte.
- A PostgreSQL sink on a private cluster (tests.support.pgcluster) that is stopped and started
  again: with required = false nothing is refused while it is down, and once it is back every
  record, those written while it was down included, reaches the table in order and the table's
  chain verifies. (The required sink's case, statements refused with 58030 while it is down,
  is not here: the gateway runs the statement and closes the session with 58000 instead.)
- failure = "open": with the only file sink unwritable, statements go on.
- stdout sink: the gateway's standard output carries the same chained lines as its file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import default_targets, scratch_database, upstream_dsn
from tests.support.audit_trail import (
    pg_down, pg_up, public_key_of, run_verify, table_lines, trail_lines, verify_lines, wait_for,
)
from tests.support.gateway import SECRETS, GatewayProcess
from tests.support.pgcluster import PgCluster

TABLE = "gw_audit"


def _gateway(workdir: Path, name: str, audit: dict[str, Any]) -> GatewayProcess:
    return GatewayProcess(
        targets=default_targets(), name=name, workdir=workdir,
        extra={"audit": {"file": str(workdir / "audit.jsonl"), **audit}},
    )


def _stop_clean(gw: GatewayProcess) -> None:
    problems = gw.stop()
    assert not problems, (problems, gw.stderr_text()[-4000:])


def _connect(gw: GatewayProcess) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True, connect_timeout=10)


# -- one table, two gateways ----------------------------------------------------------------------


@pytest.fixture
def audit_database() -> Iterator[str]:
    with scratch_database(f"sqlward_t_auditgw_{uuid.uuid4().hex[:10]}") as name:
        yield name


def test_two_gateways_share_one_table_and_each_chain_verifies(
    tmp_path: Path, audit_database: str, it_database: str,
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:5432/{audit_database}?sslmode=disable"
    gws = []
    for name in ("gw-east", "gw-west"):
        workdir = tmp_path / name
        workdir.mkdir()
        gws.append(_gateway(workdir, name, {"sinks": [
            {"kind": "file", "path": str(workdir / "audit.jsonl")},
            {"kind": "postgres", "dsn": dsn, "table": TABLE},
        ]}))
    try:
        for gw in gws:
            gw.start()
        conns = [_connect(gw) for gw in gws]
        for i in range(10):
            for n, conn in enumerate(conns):
                assert conn.execute(f"SELECT {i}, 'shared-{n}-{i}'").fetchone() == (i, f"shared-{n}-{i}")
        for conn in conns:
            conn.close()
    finally:
        for gw in gws:
            if gw.alive:
                _stop_clean(gw)
    with psycopg.connect(dsn) as c:
        names = [g for (g,) in c.execute(f"SELECT DISTINCT gateway FROM {TABLE} ORDER BY 1").fetchall()]
    assert names == ["gw-east", "gw-west"]
    for gw in gws:
        rows = table_lines(dsn, TABLE, gw.config["gateway"]["name"])
        lines = trail_lines(gw.audit_file)
        assert rows == lines, f"{gw.config['gateway']['name']}: {len(rows)} rows, {len(lines)} file lines"
        report = verify_lines(rows, public_key_of(gw))
        assert report.ok and report.unsigned_tail == 0 and report.checkpoints >= 1, report
        assert b"shared-" in b"".join(rows)
    # The CLI reads the table too: one chain per gateway (each with its own key).
    for gw in gws:
        name = gw.config["gateway"]["name"]
        result = run_verify(dsn, public_key_of(gw), "--table", TABLE, "--gateway", name)
        assert result.returncode == 0 and "ok" in result.stdout, (result.stdout, result.stderr)


# -- a sink that goes down -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sink_cluster() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        yield cluster


def _is_up(cluster: PgCluster) -> bool:
    return (cluster.datadir / "postmaster.pid").exists()


def test_an_optional_postgres_sink_that_goes_down_refuses_nothing_and_gets_its_backlog(
    tmp_path: Path, sink_cluster: PgCluster, direct: psycopg.Connection, table: str,
) -> None:
    table_name = f"sink_{uuid.uuid4().hex[:8]}"
    sink_dsn = sink_cluster.dsn("trust_user", sslmode="disable")
    gw = _gateway(tmp_path, "gw-optional", {"durability": "sync", "sinks": [
        {"kind": "file", "path": str(tmp_path / "audit.jsonl")},
        {"kind": "postgres", "dsn": sink_dsn, "table": table_name, "required": False},
    ]})
    gw.start()
    try:
        with _connect(gw) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1, 'before')")
            pg_down(sink_cluster)
            for i in range(2, 12):
                conn.execute(f"INSERT INTO {table} VALUES ({i}, 'while-down-{i}')")
        with _connect(gw) as conn:  # a new session while it is down
            conn.execute(f"INSERT INTO {table} VALUES (12, 'new session while down')")
        pg_up(sink_cluster)
        lines_now = trail_lines(gw.audit_file)  # (pg_up is also in finally: the module's cluster must stop cleanly)
        delivered = wait_for(lambda: len(table_lines(sink_dsn, table_name, "gw-optional")) >= len(lines_now), timeout=20)
        assert delivered, "the backlog was not delivered after the sink came back"
    finally:
        if not _is_up(sink_cluster):
            pg_up(sink_cluster)
        if gw.alive:
            _stop_clean(gw)
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (12,)
    lines = trail_lines(gw.audit_file)
    rows = wait_for(lambda: (r := table_lines(sink_dsn, table_name, "gw-optional")) == lines and r, timeout=10)
    assert rows == lines
    report = verify_lines(rows, public_key_of(gw))
    assert report.ok and report.unsigned_tail == 0, report


# -- failure = "open" ------------------------------------------------------------------------------


def test_failure_open_lets_statements_through_when_the_file_cannot_be_written(
    tmp_path: Path, direct: psycopg.Connection, table: str,
) -> None:
    gw = _gateway(tmp_path, "gw-open", {"failure": "open"})
    gw.start()
    try:
        with _connect(gw) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1, 'recorded')")
            gw.audit_full()
            for i in range(2, 5):
                conn.execute(f"INSERT INTO {table} VALUES ({i}, 'unrecorded')")
            assert conn.execute("SELECT 'goes on'").fetchone() == ("goes on",)
        with _connect(gw) as conn:  # new sessions too
            assert conn.execute("SELECT 'new session'").fetchone() == ("new session",)
        gw.audit_writable()
        with _connect(gw) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (5, 'recorded again')")
    finally:
        if gw.alive:
            _stop_clean(gw)
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (5,)
    text = gw.audit_file.read_bytes()
    assert b"'recorded'" in text and b"'recorded again'" in text and b"'unrecorded'" not in text
    # What could not be written is missing, but the chain has no gap: it verifies to its end.
    result = run_verify(gw.audit_file, public_key_of(gw))
    assert result.returncode == 0 and "after the last checkpoint" not in result.stdout, (result.stdout, result.stderr)


# -- stdout ----------------------------------------------------------------------------------------


def test_the_stdout_sink_carries_the_same_chained_lines_as_the_file(tmp_path: Path, it_database: str) -> None:
    gw = _gateway(tmp_path, "gw-stdout", {"sinks": [
        {"kind": "file", "path": str(tmp_path / "audit.jsonl")},
        {"kind": "stdout"},
    ]})
    gw.start()
    try:
        with _connect(gw) as conn:
            for i in range(5):
                conn.execute(f"SELECT {i}, 'to-stdout'")
    finally:
        if gw.alive:
            _stop_clean(gw)
    lines = trail_lines(gw.audit_file)
    out = [line for line in gw.stdout_file.read_bytes().splitlines(keepends=True) if line.startswith(b"{")]
    assert out == lines and any(b"to-stdout" in line for line in out)
    report = verify_lines(out, public_key_of(gw))
    assert report.ok and report.unsigned_tail == 0, report
AUDIT_REFUSED = "audit unavailable: statement not run"


def _run_until_accepted(conn: psycopg.Connection, sql: str, timeout: float = 20.0) -> list[Any]:
    """Run `sql` until the gateway takes it; every refusal meanwhile must be the audit refusal."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return conn.execute(sql).fetchall()
        except psycopg.Error as exc:
            assert exc.sqlstate == "58030" and AUDIT_REFUSED in str(exc), exc
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_required_postgres_sink_that_goes_down_refuses_statements_and_loses_nothing(
    tmp_path: Path, sink_cluster: PgCluster, direct: psycopg.Connection, table: str,
) -> None:
    table_name = f"sink_{uuid.uuid4().hex[:8]}"
    sink_dsn = sink_cluster.dsn("trust_user", sslmode="disable")
    gw = _gateway(tmp_path, "gw-down", {"durability": "sync", "sync_timeout_seconds": 3.0, "sinks": [
        {"kind": "file", "path": str(tmp_path / "audit.jsonl")},
        {"kind": "postgres", "dsn": sink_dsn, "table": table_name, "required": True},
    ]})
    gw.start()
    try:
        with _connect(gw) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1, 'before')")
            pg_down(sink_cluster)
            for i in (2, 3):
                with pytest.raises(psycopg.Error) as caught:
                    conn.execute(f"INSERT INTO {table} VALUES ({i}, 'while-down')")
                assert caught.value.sqlstate == "58030" and AUDIT_REFUSED in str(caught.value), (caught.value, gw.stderr_text()[-3000:])
            assert not conn.closed and not conn.broken  # the session goes on
            assert direct.execute(f"SELECT id FROM {table} ORDER BY id").fetchall() == [(1,)]
            pg_up(sink_cluster)
            _run_until_accepted(conn, f"INSERT INTO {table} VALUES (4, 'after') RETURNING id")
            assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
    finally:
        if gw.alive:
            _stop_clean(gw)
    assert direct.execute(f"SELECT id FROM {table} ORDER BY id").fetchall() == [(1,), (4,)]
    lines = trail_lines(gw.audit_file)
    # The first refused decision was chained (spooled) before the destination's failure was
    # known and is in the trail; once it is known, refused statements are not chained at all.
    assert sum(b"while-down" in line for line in lines) >= 1
    rows = wait_for(lambda: (r := table_lines(sink_dsn, table_name, "gw-down")) == lines and r, timeout=10)
    assert rows == lines, (len(table_lines(sink_dsn, table_name, "gw-down")), len(lines))
    report = verify_lines(rows, public_key_of(gw))
    assert report.ok and report.unsigned_tail == 0, report


def test_failure_open_logs_the_records_it_loses(tmp_path: Path, direct: psycopg.Connection, table: str) -> None:
    gw = _gateway(tmp_path, "gw-open-log", {"failure": "open"})
    gw.start()
    try:
        with _connect(gw) as conn:
            gw.audit_full()
            conn.execute(f"INSERT INTO {table} VALUES (1, 'unrecorded')")
        gw.audit_writable()
    finally:
        _stop_clean(gw)
    err = gw.stderr_text()
    assert "audit sink file" in err and "missed" in err, err  # config.py: "the loss is logged and counted"
