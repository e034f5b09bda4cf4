"""The audit trail of a real gateway survives kill -9, rotates under load and finds tampering.

- kill -9 under load: clients (psycopg threads, asyncpg in a thread of its own) insert unique
  values in autocommit, each keeping the statements it saw complete; the gateway is SIGKILLed
  mid-load, started again on the same config and audit file, and so on; at the end a clean stop
  (SIGTERM) signs the end. `sqlward audit verify` passes (the chain is whole across the crashes
  and continues after each restart), and every statement a client saw complete has its
  statement.decided and statement.completed records. Durability "sync" (the default) and
  "buffered" (records are in the kernel before the client sees the result: a process kill loses
  none of them).
- rotation under load: a small `rotate_bytes`; the rotated set verifies as one chain (as a file
  with its siblings and as a directory) and each rotated file ends on a signed checkpoint.
- tampering with a trail written by a real gateway: an edited record, a removed line, two lines
  swapped, a forged line inserted, a forged tail re-chained with recomputed hashes: verify exits
  1 and names the line; a tail cut after a checkpoint is reported as unsigned records.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from sqlward.audit.chain import Chain
from tests.integration.conftest import default_targets
from tests.support.audit_trail import (
    completed_statements, kill9, public_key_of, run_verify, trail_files, trail_lines, trail_records, verify_lines,
)
from tests.support.gateway import SECRETS, GatewayProcess

TAG = re.compile(r"'(dur-[0-9a-z]{6}-[a-z0-9]+-\d+)'")
_IDS = itertools.count(1)
_IDS_LOCK = threading.Lock()


class Load:
    """Clients inserting unique values through the gateway until stopped or cut off."""

    def __init__(self, gw: GatewayProcess, table: str, round_tag: str, pace: float = 0.0) -> None:
        self.gw = gw
        self.pace = pace  # seconds each client waits between statements
        self.table = table
        self.tag = round_tag
        self.stop = threading.Event()
        self.done: dict[str, list[str]] = {}  # client -> tags it saw complete
        self.errors: dict[str, BaseException] = {}
        self.threads: list[threading.Thread] = []

    def _next(self, client: str) -> tuple[int, str]:
        with _IDS_LOCK:
            n = next(_IDS)
        return n, f"dur-{self.tag}-{client}-{n}"

    def _sql(self, client: str) -> tuple[str, str]:
        n, tag = self._next(client)
        return f"INSERT INTO {self.table} VALUES ({n}, '{tag}')", tag

    def _psycopg(self, client: str) -> None:
        done = self.done.setdefault(client, [])
        try:
            with psycopg.connect(self.gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True, connect_timeout=5) as conn:
                while not self.stop.is_set():
                    sql, tag = self._sql(client)
                    conn.execute(sql)
                    done.append(tag)
                    if self.pace:
                        time.sleep(self.pace)
        except BaseException as exc:  # the gateway was killed under it
            self.errors[client] = exc

    def _asyncpg(self, clients: list[str]) -> None:
        async def one(client: str) -> None:
            done = self.done.setdefault(client, [])
            try:
                conn = await asyncpg.connect(host=self.gw.host, port=self.gw.port, user="alice",
                                             password=SECRETS["alice"], database="app", ssl=False, timeout=5)
                try:
                    while not self.stop.is_set():
                        sql, tag = self._sql(client)
                        await conn.execute(sql)  # simple query protocol
                        done.append(tag)
                        if self.pace:
                            await asyncio.sleep(self.pace)
                finally:
                    conn.terminate()
            except BaseException as exc:
                self.errors[client] = exc

        async def main() -> None:
            await asyncio.gather(*(one(c) for c in clients))

        asyncio.run(main())

    def start(self) -> None:
        for i in range(3):
            self.threads.append(threading.Thread(target=self._psycopg, args=(f"pg{i}",), daemon=True))
        self.threads.append(threading.Thread(target=self._asyncpg, args=(["apg0", "apg1"],), daemon=True))
        for t in self.threads:
            t.start()

    def wait_for(self, statements: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(len(v) for v in self.done.values()) < statements and time.monotonic() < deadline:
            if self.errors:
                raise AssertionError(f"a client failed before the kill: {self.errors}")
            time.sleep(0.01)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)
            assert not t.is_alive(), "a client did not end after the gateway went away"

    @property
    def completed(self) -> list[str]:
        return [tag for tags in self.done.values() for tag in tags]


def _gateway(workdir: Path, name: str, audit: dict[str, Any] | None = None) -> GatewayProcess:
    gw = GatewayProcess(targets=default_targets(), name=name, workdir=workdir)
    if audit:
        gw.config["audit"].update(audit)
        gw.config_text = gw._render(gw.config)
    return gw


def _stop_clean(gw: GatewayProcess) -> None:
    problems = gw.stop()
    assert not problems, (problems, gw.stderr_text()[-4000:])


def _assert_recorded(records: list[dict[str, Any]], tags: list[str]) -> None:
    """Every tag a client saw complete has its decision and its successful completion."""
    statements = completed_statements(records)
    by_tag: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}
    for decided, completed in statements.values():
        m = TAG.search(decided.get("sql", ""))
        if m:
            by_tag[m.group(1)] = (decided, completed)
    missing = [t for t in tags if t not in by_tag]
    assert not missing, f"{len(missing)} completed statements have no statement.decided record: {missing[:5]}"
    unfinished = [t for t in tags if by_tag[t][1] is None or by_tag[t][1].get("error")]
    assert not unfinished, f"{len(unfinished)} completed statements have no statement.completed record: {unfinished[:5]}"
    assert all(by_tag[t][0]["action"] == "allow" for t in tags)


@pytest.mark.parametrize("durability", ["sync", "buffered"])
def test_kill_9_under_load_loses_no_completed_statement_and_the_chain_continues(
    durability: str, tmp_path: Path, direct: psycopg.Connection, table: str,
) -> None:
    gw = _gateway(tmp_path, f"dur-{durability}", {"durability": durability})
    acknowledged: list[str] = []
    try:
        for round_no in range(2):
            gw.start()
            load = Load(gw, table, f"{uuid.uuid4().hex[:5]}{round_no}")
            load.start()
            load.wait_for(60 + 40 * round_no)
            kill9(gw)  # mid-load: the clients are still sending
            load.join()
            assert load.completed, "no statement completed before the kill"
            assert load.errors, "the kill came after the load had ended"
            acknowledged += load.completed
        gw.start()  # the same config and audit file, after the last crash
        with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as conn:
            for i in range(5):
                tag = f"dur-aaaaaa-after-{i}"
                conn.execute(f"INSERT INTO {table} VALUES ({-1 - i}, '{tag}')")
                acknowledged.append(tag)
    finally:
        if gw.alive:
            _stop_clean(gw)
    # Every acknowledged statement reached the database, and the trail.
    upstream = {v for (v,) in direct.execute(f"SELECT v FROM {table}").fetchall()}
    assert set(acknowledged) <= upstream
    records = trail_records(gw.audit_file)
    _assert_recorded(records, acknowledged)
    starts = [r for r in records if r.get("event") == "gateway.started"]
    assert len(starts) == 3, [r.get("event") for r in records[:3]]
    # One chain across the crashes, intact, signed at the clean stop. The records each crash
    # left after the last checkpoint before it were never signed by the gateway that wrote them:
    # verify names them at the restarts and exits 3 ("intact but not all signed").
    result = run_verify(gw.audit_file, public_key_of(gw))
    assert result.returncode in (0, 3), (result.stdout, result.stderr)
    assert "BROKEN" not in result.stdout and "after the last checkpoint" not in result.stdout, result.stdout
    report = verify_lines(trail_lines(gw.audit_file), public_key_of(gw))
    assert report.ok and report.unsigned_tail == 0, report
    assert len(report.restarts) <= 2 and (result.returncode == 3) == bool(report.adopted), (report, result.stdout)
    assert records[-1]["event"] == "audit.checkpoint"
    seqs = [r["chain"]["seq"] for r in records]
    assert seqs == list(range(1, len(records) + 1))


def test_rotation_under_load_keeps_one_verifiable_chain_with_each_file_signed(
    tmp_path: Path, direct: psycopg.Connection, table: str,
) -> None:
    trail_dir = tmp_path / "trail"
    trail_dir.mkdir()
    live = trail_dir / "audit.jsonl"
    gw = _gateway(tmp_path, "dur-rotate", {
        "sinks": [{"kind": "file", "path": str(live), "rotate_bytes": 20000}],
    })
    gw.start()
    try:
        # Paced a little (a rotation every few hundredths of a second); more than ten rotations
        # within one second is test_more_than_ten_rotations_in_one_second_still_verify's case.
        load = Load(gw, table, uuid.uuid4().hex[:5] + "r", pace=0.01)
        load.start()
        load.wait_for(350, timeout=30)
        load.join()
        assert not load.errors, load.errors
        time.sleep(0.2)
    finally:
        _stop_clean(gw)
    files = trail_files(live)
    assert len(files) >= 4, files  # rotated several times under load
    for f in files[:-1]:
        assert f.stat().st_size <= 20000 + 4096, (f, f.stat().st_size)
        last = json.loads(f.read_bytes().splitlines()[-1])
        assert last["event"] == "audit.checkpoint", (f, last)
    last = json.loads(live.read_bytes().splitlines()[-1])
    assert last["event"] == "audit.checkpoint"  # the clean stop signed the end
    key = public_key_of(gw)
    for source in (live, trail_dir):
        result = run_verify(source, key)
        assert result.returncode == 0, (source, result.stdout, result.stderr)
        assert f"({len(files)} files: " in result.stdout and "after the last checkpoint" not in result.stdout, result.stdout
    report = verify_lines(trail_lines(live), key)
    assert report.ok and report.unsigned_tail == 0 and report.checkpoints >= len(files), report
    _assert_recorded(trail_records(live), load.completed)


# -- tampering ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_trail(tmp_path_factory: pytest.TempPathFactory, it_database: str) -> tuple[list[bytes], Path]:
    """A trail written by a real gateway (checkpoints every 7 records), stopped cleanly."""
    workdir = tmp_path_factory.mktemp("tamper")
    gw = _gateway(workdir, "dur-tamper", {"checkpoint_every": 7})
    gw.start()
    try:
        with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as conn:
            for i in range(12):
                conn.execute(f"SELECT {i} AS n, 'tamper-{i}' AS v")
    finally:
        _stop_clean(gw)
    key = tmp_path_factory.mktemp("tamper-key") / "key.pub"
    shutil.copy(public_key_of(gw), key)
    lines = gw.audit_file.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "audit.checkpoint"
    return lines, key


def _index(lines: list[bytes], needle: bytes) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def _edit(lines: list[bytes]) -> tuple[list[bytes], int]:
    i = _index(lines, b"tamper-5")
    out = list(lines)
    out[i] = out[i].replace(b"tamper-5", b"tamper-X")
    return out, i + 2  # the next line's prev no longer matches


def _delete(lines: list[bytes]) -> tuple[list[bytes], int]:
    i = _index(lines, b"tamper-5")
    return lines[:i] + lines[i + 1:], i + 1


def _swap(lines: list[bytes]) -> tuple[list[bytes], int]:
    i = _index(lines, b"tamper-5")
    out = list(lines)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out, i + 1


def _insert(lines: list[bytes]) -> tuple[list[bytes], int]:
    i = _index(lines, b"tamper-5")
    forged = json.loads(lines[i])
    forged["sql"] = "SELECT 'forged'"
    forged["chain"]["seq"] += 1
    return lines[:i + 1] + [json.dumps(forged, separators=(",", ":")).encode() + b"\n"] + lines[i + 1:], i + 2


def _rechain(lines: list[bytes]) -> tuple[list[bytes], int]:
    """Edit a record and recompute every hash after it (anyone can): the next checkpoint's
    signature covers the old hash and cannot be remade without the private key."""
    i = _index(lines, b"tamper-5")
    first = json.loads(lines[i])["chain"]
    forger = Chain("dur-tamper", seq=first["seq"] - 1, prev=first["prev"])
    out = list(lines[:i])
    broken = None
    for n, raw in enumerate(lines[i:], i + 1):
        record = json.loads(raw)
        record.pop("chain")
        if "sql" in record:
            record["sql"] = record["sql"].replace("tamper-5", "innocent")
        if record.get("event") == "audit.checkpoint":
            record["covers_seq"], record["covers_hash"] = forger.seq, forger.prev
            broken = broken or n
        body = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        out.append(forger.link(body))
    assert broken is not None
    return out, broken


@pytest.mark.parametrize(("change", "problem"), [
    (_edit, "its prev is not the hash of the record before it"),
    (_delete, "where"),
    (_swap, "where"),
    (_insert, "its prev is not the hash"),
    (_rechain, "signature does not verify"),
], ids=["edited", "deleted", "swapped", "inserted", "rechained"])
def test_tampering_with_a_real_trail_is_found_at_its_line(
    real_trail: tuple[list[bytes], Path], tmp_path: Path, change: Callable[[list[bytes]], tuple[list[bytes], int]],
    problem: str,
) -> None:
    lines, key = real_trail
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"".join(lines))
    assert run_verify(good, key).returncode == 0
    tampered, line = change(lines)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(tampered))
    result = run_verify(path, key)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout.startswith(f"{path}: BROKEN at line {line}: "), result.stdout
    assert problem in result.stdout, result.stdout


def test_a_tail_cut_after_a_checkpoint_is_reported_as_unsigned_records(
    real_trail: tuple[list[bytes], Path], tmp_path: Path,
) -> None:
    """Cutting the trail two records after a checkpoint (the later checkpoints gone) leaves records no
    signature covers: verify says so (it cannot tell a cut from a trail still being written, so
    this is exit 3, "intact but not all signed"); the cut file no longer ends on a checkpoint."""
    lines, key = real_trail
    checkpoints = [i for i, raw in enumerate(lines) if b'"event":"audit.checkpoint"' in raw]
    # The last checkpoint followed by at least three records before the next one: the cut
    # keeps two of them and drops the rest of the trail with every later checkpoint.
    at = [c for c, n in zip(checkpoints, checkpoints[1:]) if n - c > 3][-1]
    cut = lines[:at + 3]
    unsigned = 2
    assert b'"event":"audit.checkpoint"' not in cut[-1]
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(cut))
    result = run_verify(path, key)
    assert result.returncode == 3, (result.stdout, result.stderr)  # intact, not all signed
    assert f"; {unsigned} records after the last checkpoint (not yet signed, or a cut tail)" in result.stdout, result.stdout
    report = verify_lines(cut, key)
    assert report.ok and report.unsigned_tail == unsigned

def test_more_than_ten_rotations_in_one_second_still_verify(tmp_path: Path, it_database: str) -> None:
    live = tmp_path / "trail" / "audit.jsonl"
    live.parent.mkdir()
    gw = GatewayProcess(targets=default_targets(), name="rot-burst", workdir=tmp_path,
                        extra={"audit": {"file": str(tmp_path / "audit.jsonl"),
                                         "sinks": [{"kind": "file", "path": str(live), "rotate_bytes": 3000}]}})
    gw.start()
    try:
        with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as conn:
            for i in range(40):
                conn.execute(f"SELECT {i}")
    finally:
        assert not gw.stop()
    names = [f.name for f in trail_files(live)]
    assert len(names) > 11, names
    result = run_verify(live, public_key_of(gw))
    assert result.returncode == 0, (names, result.stdout)
