"""docs/audit.md's PostgreSQL examples are real: its table (the "PostgreSQL" ```sql block, run as
written) holds the trails of two gateways, and the page's `sqlward audit verify | export | search`
commands over a `postgresql://` source print what the page shows.

How it works: the trails are made as in tests/unit/test_docs_audit.py (`audit.trail.Trail` and a
`FileSink`, through a `Recorder`), then copied into the table as the PostgreSQL sink stores them
(`line` without its newline; each row at its record's own time). gw-a stopped
cleanly; one row of gw-b is deleted. The page's URI `postgresql://reader@audit-db/audit` is
replaced by the scratch database's; an output line of the page becomes a pattern (any number for
a number, anything for `...`). `tail -f` from a table is tested in test_audit_search_pg.py.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sqlward.gateway import cli
from tests.integration.conftest import _admin_dsn, scratch_database
from tests.unit.test_docs_audit import AUDIT, DocTrail, argv, blocks, command, section

DOC_URI = "postgresql://reader@audit-db/audit"


def _schema() -> str:
    """The page's table, as written (the first ```sql block of "#### PostgreSQL")."""
    text = section(AUDIT, "#### PostgreSQL")
    [sql] = [b.body for b in blocks(AUDIT, "sql") if b.body in text]
    return sql


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with scratch_database(f"sqlward_t_docsaudit_{uuid.uuid4().hex[:8]}", _schema()) as name:
        yield _admin_dsn(name)


def _insert(conn: psycopg.Connection, lines: list[bytes]) -> None:
    when = 0.0
    with conn.cursor() as cur:
        for raw in lines:
            r = json.loads(raw)
            when = r["time"]  # every record has its time (a checkpoint its own, since format 2)
            cur.execute(
                "INSERT INTO sqlward_audit (gateway, seq, time, event, line) VALUES (%s, %s, %s, %s, %s)",
                (r["gateway"], r["chain"]["seq"], datetime.datetime.fromtimestamp(when, datetime.timezone.utc),
                 r["event"], raw.rstrip(b"\n").decode()),
            )


class Trails:
    def __init__(self, a: DocTrail, deleted_seq: int) -> None:
        self.a = a
        self.deleted_seq = deleted_seq


@pytest.fixture
def trails(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Trails:
    a = DocTrail(tmp_path / "a", monkeypatch, gateway="gw-a", target="prod").build()
    a.stop()
    b = DocTrail(tmp_path / "b", monkeypatch, gateway="gw-b", target="prod", key_file=a.key_path).build()
    b.stop()
    b_lines = [line for f in b.files() for line in f.read_bytes().splitlines(keepends=True)]
    deleted = json.loads(b_lines[40])["chain"]["seq"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE sqlward_audit")
        _insert(conn, [line for f in a.files() for line in f.read_bytes().splitlines(keepends=True)])
        _insert(conn, b_lines[:40] + b_lines[41:])
    return Trails(a, deleted)


def _paths(trails: Trails, dsn: str, tmp_path: Path) -> dict[str, str]:
    return {DOC_URI: dsn, "audit.pub": str(trails.a.pub), "window.jsonl": str(tmp_path / "window.jsonl")}


def _pattern(expected: str, dsn: str) -> re.Pattern[str]:
    text = re.escape(expected.replace(DOC_URI, "@@URI@@")).replace(r"\.\.\.", ".*")
    text = re.sub(r"\d+", r"\\d+", text)
    # The source is named by its URI without the query (and never with a password).
    return re.compile(text.replace("@@URI@@", re.escape(dsn.split("?", 1)[0])))


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_a_table_prints_a_line_per_gateway(trails: Trails, dsn: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    [cmd] = command(f"audit verify {DOC_URI}")
    args, _ = argv(cmd, _paths(trails, dsn, tmp_path))
    code, out, _ = _run(args, capsys)
    assert code == 1  # "exit 1 when any chain is broken"
    got = out.splitlines()
    assert len(got) == len(cmd.output) == 2
    for expected, line in zip(cmd.output, got):
        assert _pattern(expected, dsn).fullmatch(line), (expected, line)
    assert f"gateway gw-b: BROKEN at seq {trails.deleted_seq + 1}: sequence {trails.deleted_seq + 1} where {trails.deleted_seq} was due" in got[1]


def test_export_from_a_table_verifies_as_a_window(trails: Trails, dsn: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    paths = _paths(trails, dsn, tmp_path)
    [export] = command(f"audit export {DOC_URI}")
    args, redirect = argv(export, paths)
    code, out, err = _run(args, capsys)
    assert code == 0 and out and redirect is not None, err
    Path(redirect).write_text(out)
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["gateway"] for r in records} == {"gw-a"} and records[-1]["event"] == "audit.checkpoint"
    [check] = command("audit verify window.jsonl --window")
    code, out, _ = _run(argv(check, paths)[0], capsys)
    assert code == 0 and f": ok, a window from seq {records[0]['chain']['seq']} (records before it are not covered), " in out, out


def test_search_a_table_for_denials(trails: Trails, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [cmd] = command(f"audit search {DOC_URI}")
    code, out, err = _run(argv(cmd, _paths(trails, dsn, tmp_path))[0], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert 0 < len(records) <= 50
    assert all(r["action"] == "deny" and r["target"] == "prod" for r in records)
    assert {r["gateway"] for r in records} == {"gw-a", "gw-b"}  # the chains merged by record time
    times = [r["time"] for r in records]
    assert times == sorted(times)
