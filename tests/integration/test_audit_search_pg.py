"""`sqlward audit verify | export | search | tail` against a PostgreSQL sink's table on the real
local server: two gateways' chains in one table verified each on its own, an edited or deleted
row named by gateway and seq, filters pushed into SQL and applied to records, an export that
verifies as a window, and tail -f picking up rows inserted while it runs.

The table is made here with the sink's schema (gateway, seq, time, event, line; PRIMARY KEY
(gateway, seq)) in a scratch database of this module's own."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sqlward.audit.chain import Chain
from sqlward.gateway import cli
from tests.integration.conftest import _admin_dsn, scratch_database
from tests.unit.test_audit_cli import KEY, T0, _text, record, trail

SCHEMA = """
CREATE TABLE sqlward_audit (
    gateway text NOT NULL, seq bigint NOT NULL, time timestamptz NOT NULL, event text NOT NULL, line text NOT NULL,
    PRIMARY KEY (gateway, seq)
);
CREATE SCHEMA other;
CREATE TABLE other.trail (LIKE sqlward_audit INCLUDING ALL);
"""


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with scratch_database(f"sqlward_t_auditcli_{uuid.uuid4().hex[:8]}", SCHEMA) as name:
        yield _admin_dsn(name)


def insert(conn: psycopg.Connection, lines: list[bytes], table: str = "sqlward_audit") -> None:
    """Rows as the sink writes them: a checkpoint (no time of its own) at its predecessor's time."""
    when = T0
    with conn.cursor() as cur:
        for raw in lines:
            r = json.loads(raw)
            when = r.get("time", when)
            cur.execute(
                f"INSERT INTO {table} (gateway, seq, time, event, line) VALUES (%s, %s, %s, %s, %s)",
                (r["gateway"], r["chain"]["seq"], datetime.datetime.fromtimestamp(when, datetime.timezone.utc),
                 r["event"], raw[:-1].decode()),
            )


@pytest.fixture
def chains(dsn: str) -> Iterator[dict[str, Chain]]:
    """gw-a and gw-b, 12 records each (checkpoints after every 4th), freshly in the table."""
    made = {g: Chain(g, key=KEY) for g in ("gw-a", "gw-b")}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE sqlward_audit")
        for g, chain in made.items():
            insert(conn, trail(12, chain=chain, gateway=g))
    yield made


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.pub"
    path.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_each_gateway_verifies_on_its_own(dsn, chains, key_file, capsys) -> None:
    code, out, err = run(capsys, "verify", dsn, "--public-key", str(key_file))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2, (out, err)
    assert "sqlward_audit gateway gw-a: ok, 15 records, 3 signed checkpoints" in lines[0]
    assert "sqlward_audit gateway gw-b: ok, 15 records, 3 signed checkpoints" in lines[1]
    assert "@" not in out or "postgres@" in out  # the URI as given, never a password
    code, out, _ = run(capsys, "verify", dsn, "--public-key", str(key_file), "--gateway", "gw-b")
    assert code == 0 and len(out.splitlines()) == 1 and "gateway gw-b: ok" in out
    code, _, err = run(capsys, "verify", dsn, "--public-key", str(key_file), "--gateway", "gw-z")
    assert code == 2 and "no records of gateway gw-z" in err


def test_an_edited_row_is_named_by_gateway_and_seq(dsn, chains, key_file, capsys) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE sqlward_audit SET line = replace(line, 'DELETE FROM users', 'SELECT 1') "
                     "WHERE gateway = 'gw-b' AND seq = 3")
    code, out, _ = run(capsys, "verify", dsn, "--public-key", str(key_file))
    lines = out.splitlines()
    assert code == 1
    assert "gateway gw-a: ok" in lines[0]
    assert "gateway gw-b: BROKEN at seq 4: its prev is not the hash of the record before it" in lines[1], out


def test_a_deleted_row_is_named_and_a_pruned_start_verifies_as_a_window(dsn, chains, key_file, capsys) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM sqlward_audit WHERE gateway = 'gw-a' AND seq = 7")
        conn.execute("DELETE FROM sqlward_audit WHERE gateway = 'gw-b' AND seq <= 5")  # retention
    code, out, _ = run(capsys, "verify", dsn, "--public-key", str(key_file))
    assert code == 1
    assert "gateway gw-a: BROKEN at seq 8: sequence 8 where 7 was due" in out
    assert "gateway gw-b: BROKEN at seq 6: sequence 6 where 1 was due" in out and "--window" in out
    code, out, _ = run(capsys, "verify", dsn, "--public-key", str(key_file), "--gateway", "gw-b", "--window")
    assert code == 0 and "gateway gw-b: ok, a window from seq 6 (records before it are not covered), 10 records" in out


def test_search_pushes_time_gateway_and_event_and_filters_the_rest(dsn, chains, capsys) -> None:
    def seqs(*flags: str) -> list[tuple[str, int]]:
        code, out, err = run(capsys, "search", dsn, *flags)
        assert code == 0, err
        return [(json.loads(x)["gateway"], json.loads(x)["seq"]) for x in out.splitlines()]

    assert seqs("--decision", "deny") == [("gw-a", 2), ("gw-b", 2), ("gw-a", 7), ("gw-b", 7)]
    assert seqs("--decision", "deny", "--gateway", "gw-b") == [("gw-b", 2), ("gw-b", 7)]
    assert seqs("--event", "connection.authenticated", "--since", _text(T0 + 60 * 4)) == [
        ("gw-a", 5), ("gw-b", 5), ("gw-a", 10), ("gw-b", 10)]
    assert seqs("--identity", "svc-bot", "--actor", "copilot", "--until", _text(T0 + 60 * 3), "--limit", "1") == [("gw-a", 3)]
    assert seqs("--text", "from accounts", "--target", "app", "--environment", "development", "--gateway", "gw-a") == [
        ("gw-a", 1), ("gw-a", 6), ("gw-a", 11)]
    assert seqs("--rule", "needs-review", "--event", "statement.decided", "--since", _text(T0 + 60 * 8)) == [
        ("gw-a", 8), ("gw-b", 8)]
    code, out, _ = run(capsys, "search", dsn, "--format", "table", "--decision", "review", "--limit", "2")
    rows = out.splitlines()
    assert code == 0 and len(rows) == 3 and rows[0].startswith("TIME") and "svc-bot via copilot" in rows[1]


def test_a_schema_qualified_table_and_errors(dsn, capsys) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        insert(conn, trail(3, gateway="gw-x"), table="other.trail")
    code, out, _ = run(capsys, "search", dsn, "--table", "other.trail", "--event", "statement.decided")
    assert code == 0 and len(out.splitlines()) == 2
    code, out, err = run(capsys, "search", dsn, "--table", "nosuch")
    assert code == 2 and out == "" and err.count("\n") == 1 and "no table nosuch" in err
    code, out, err = run(capsys, "search", dsn, "--table", 'x"; DROP TABLE sqlward_audit; --')
    assert code == 2 and err.count("\n") == 1  # an identifier, never SQL
    code, out, err = run(capsys, "search", _admin_dsn("sqlward_t_auditcli_nosuchdb"))
    assert code == 2 and err.count("\n") == 1 and "sqlward_t_auditcli_nosuchdb" in err


def test_an_export_of_one_gateway_verifies_as_a_window(dsn, chains, key_file, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "export", dsn, "--since", _text(T0 + 60 * 2))
    assert code == 2 and "pick one with --gateway" in err and "gw-a, gw-b" in err
    code, out, err = run(capsys, "export", dsn, "--gateway", "gw-b", "--since", _text(T0 + 60 * 2),
                         "--until", _text(T0 + 60 * 5))
    assert code == 0 and "ending on a signed checkpoint" in err
    records = [json.loads(x) for x in out.splitlines()]
    assert {r["gateway"] for r in records} == {"gw-b"} and records[0]["seq"] == 2 and records[-1]["event"] == "audit.checkpoint"
    window = tmp_path / "window.jsonl"
    window.write_text(out)
    code, out, _ = run(capsys, "verify", str(window), "--public-key", str(key_file), "--window")
    assert code == 0 and "a window from seq 3 (records before it are not covered), 8 records, 2 signed checkpoints" in out


def test_tail_n(dsn, chains, capsys) -> None:
    code, out, _ = run(capsys, "tail", dsn, "-n", "3", "--event", "statement.decided")
    assert code == 0
    assert [(json.loads(x)["gateway"], json.loads(x)["seq"]) for x in out.splitlines()] == [
        ("gw-b", 8), ("gw-a", 11), ("gw-b", 11)]


@pytest.mark.timeout(90)
def test_tail_follow_picks_up_new_rows_of_known_and_new_gateways(dsn, chains) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlward.gateway", "audit", "tail", dsn, "-f", "-n", "1", "--interval", "0.1",
         "--event", "statement.decided"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert _read(proc, 1) == [("gw-b", 11)]
        gw_c = Chain("gw-c", key=KEY)
        with psycopg.connect(dsn, autocommit=True) as conn:
            insert(conn, [chains["gw-a"].link(record(i, T0 + 60 * i, "gw-a")) for i in (12, 13, 14)])
        assert _read(proc, 2) == [("gw-a", 12), ("gw-a", 13)]  # 14 is a statement.completed
        with psycopg.connect(dsn, autocommit=True) as conn:
            insert(conn, [gw_c.link(record(1, T0 + 60 * 20, "gw-c")),
                          chains["gw-b"].link(record(16, T0 + 60 * 21, "gw-b"))])
        assert _read(proc, 2) == [("gw-c", 1), ("gw-b", 16)]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in err, err


def _read(proc: subprocess.Popen[bytes], n: int) -> list[tuple[str, int]]:
    assert proc.stdout is not None
    out = []
    for _ in range(n):
        line = proc.stdout.readline()
        assert line, "tail -f ended"
        r = json.loads(line)
        out.append((r["gateway"], r["seq"]))
    return out


@pytest.mark.parametrize("edit", [
    "SET event = 'audit.checkpoint'",
    "SET time = '2001-01-01T00:00:00Z'",
])
def test_an_edited_column_that_search_filters_on_is_found_by_verify(dsn, chains, key_file, capsys, edit) -> None:
    """search pushes time and event into SQL: a row whose columns were edited to hide it from a
    search (the line untouched) no longer verifies (outside review)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE sqlward_audit {edit} WHERE gateway = 'gw-a' AND seq = 2")
    code, out, _ = run(capsys, "verify", dsn, "--public-key", str(key_file), "--gateway", "gw-a")
    assert code == 1 and "BROKEN at seq 2" in out, out
