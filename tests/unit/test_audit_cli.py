"""`sqlward audit verify | export | search | tail` over files: rotated sets verified as one
chain, tampering named by file and line, exported windows that verify on their own, every search
filter, the table format, tail -n, and tail -f following appends and a rotation (in a
subprocess stopped with SIGINT). The PostgreSQL sources: tests/integration/test_audit_search_pg.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sqlward.audit.chain import Chain
from sqlward.audit.reading import SourceError, parse_time
from sqlward.gateway import cli

KEY = ed25519.Ed25519PrivateKey.generate()
T0 = 1_796_000_000.0  # 2026-11-30T...: one record a minute from here


def _text(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z"


def record(i: int, t: float, gateway: str = "gw-1") -> bytes:
    """The i-th record of a sample trail: a cycle of the kinds search filters on."""
    env = {"time": t, "time_text": _text(t), "gateway": gateway, "connection_id": f"c{i // 5}", "seq": i}
    kind = i % 5
    if kind == 0:
        body = {"event": "connection.authenticated", "who": {"subject": "alice", "groups": ["dba"]},
                "target": "app", "environment": "development"}
    elif kind == 1:
        body = {"event": "statement.decided", "request_id": i, "who": {"subject": "alice"}, "target": "app",
                "environment": "development", "sql": f"SELECT {i} FROM accounts", "fingerprint": "f1",
                "action": "allow"}
    elif kind == 2:
        body = {"event": "statement.decided", "request_id": i, "who": {"subject": "bob"}, "target": "prod",
                "environment": "production", "sql": "DELETE FROM users", "fingerprint": "f2",
                "action": "deny", "rule_id": "no-delete-without-where"}
    elif kind == 3:
        body = {"event": "statement.decided", "request_id": i,
                "who": {"subject": "svc-bot", "actor": ["copilot"], "verified_by": "oidc"}, "target": "prod",
                "environment": "production", "sql": f"UPDATE t SET x = {i}\nWHERE id = 2", "fingerprint": "f3",
                "action": "review", "rule_id": "needs-review"}
    else:
        body = {"event": "statement.completed", "request_id": i - 1, "tags": ["UPDATE 1"], "rows": 1, "duration_ms": 1.5}
    return json.dumps({**env, **body}, separators=(",", ":")).encode() + b"\n"


def trail(n: int, *, every: int = 4, chain: Chain | None = None, start: int = 0, gateway: str = "gw-1") -> list[bytes]:
    """n linked records (times T0 + 60 s * i), a checkpoint after every `every`-th (at once)."""
    chain = chain or Chain(gateway, key=KEY)
    out = []
    for i in range(start, start + n):
        out.append(chain.link(record(i, T0 + 60 * i, gateway)))
        if (i + 1) % every == 0:
            out.append(chain.checkpoint(now=T0 + 60 * i + 0.5))
    return out


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.pub"
    path.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


def rotated(directory: Path, sizes: tuple[int, ...] = (8, 8, 6)) -> list[Path]:
    """One chain in rotated files (each ending on a checkpoint) and the live file, oldest first."""
    directory.mkdir(exist_ok=True)
    chain = Chain("gw-1", key=KEY)
    names = ["audit.jsonl.20261130T080000Z", "audit.jsonl.20261130T090000Z", "audit.jsonl.20261130T090000Z.1"]
    paths = [directory / n for n in names[: len(sizes) - 1]] + [directory / "audit.jsonl"]
    start = 0
    for path, size in zip(paths, sizes):
        lines = trail(size, chain=chain, start=start)
        if path.name != "audit.jsonl" and json.loads(lines[-1])["event"] != "audit.checkpoint":
            lines.append(chain.checkpoint(now=T0 + 60 * (start + size - 1) + 0.5))
        path.write_bytes(b"".join(lines))
        start += size
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- verify ------------------------------------------------------------------------------------


def test_a_rotated_set_verifies_as_one_chain_from_its_live_file_or_its_directory(tmp_path, key_file, capsys) -> None:
    paths = rotated(tmp_path / "logs")
    (tmp_path / "logs" / ".hidden").write_text("not audit")
    (tmp_path / "logs" / "audit.pub").write_bytes(key_file.read_bytes())
    for source in (paths[-1], tmp_path / "logs"):
        code, out, err = run(capsys, "verify", str(source), "--public-key", str(key_file))
        assert code == 3, (out, err)
        assert "intact but not all signed (exit 3), 27 records, 5 signed checkpoints; 2 records after the last checkpoint" in out
        assert "(3 files: " in out and out.index(paths[0].name) < out.index(paths[1].name)


def test_tampering_in_the_middle_file_names_that_file_and_its_line(tmp_path, key_file, capsys) -> None:
    paths = rotated(tmp_path)
    lines = paths[1].read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b"DELETE FROM users", b"SELECT 1         ")  # record 12
    paths[1].write_bytes(b"".join(lines))
    code, out, _ = run(capsys, "verify", str(paths[-1]), "--public-key", str(key_file))
    assert code == 1
    assert out.startswith(f"{paths[1]}: BROKEN at line 7: its prev is not the hash"), out


def test_a_removed_rotated_file_breaks_the_chain_at_the_next_file(tmp_path, key_file, capsys) -> None:
    paths = rotated(tmp_path)
    paths[1].unlink()
    code, out, _ = run(capsys, "verify", str(tmp_path), "--public-key", str(key_file))
    assert code == 1 and out.startswith(f"{paths[2]}: BROKEN at line 1: sequence 21 where 11 was due"), out


def test_a_rotated_file_alone_is_read_alone_and_verifies_as_a_window(tmp_path, key_file, capsys) -> None:
    paths = rotated(tmp_path)
    code, out, _ = run(capsys, "verify", str(paths[1]), "--public-key", str(key_file))
    assert code == 1 and "sequence 11 where 1 was due" in out and "--window" in out
    code, out, _ = run(capsys, "verify", str(paths[1]), "--public-key", str(key_file), "--window")
    assert code == 0 and "ok, a window from seq 11 (records before it are not covered), 10 records, 2 signed" in out


def test_the_first_record_of_a_window_must_carry_a_link(tmp_path, key_file, capsys) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(record(1, T0) + b"".join(trail(4)))
    code, out, _ = run(capsys, "verify", str(path), "--public-key", str(key_file), "--window")
    assert code == 1 and "BROKEN: the window's first record has no chain link" in out


def test_window_and_an_explicit_start_do_not_mix(tmp_path, key_file, capsys) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(b"".join(trail(4)))
    code, _, err = run(capsys, "verify", str(path), "--public-key", str(key_file), "--window", "--from-seq", "3")
    assert code == 2 and err.count("\n") == 1 and "--window" in err


def test_from_seq_and_prev_still_verify_a_window(tmp_path, key_file, capsys) -> None:
    lines = trail(9)
    link = json.loads(lines[5])["chain"]
    path = tmp_path / "w.jsonl"
    path.write_bytes(b"".join(lines[5:]))
    code, out, _ = run(capsys, "verify", str(path), "--public-key", str(key_file),
                       "--from-seq", str(link["seq"]), "--prev", link["prev"])
    assert code == 3 and f"{path}: intact but not all signed (exit 3), " in out


# --- export ------------------------------------------------------------------------------------


def test_an_exported_window_ends_on_a_checkpoint_and_verifies_on_its_own(tmp_path, key_file, capsys) -> None:
    paths = rotated(tmp_path)
    since, until = _text(T0 + 60 * 5), _text(T0 + 60 * 13)
    code, out, err = run(capsys, "export", str(paths[-1]), "--since", since, "--until", until)
    assert code == 0 and "ending on a signed checkpoint" in err, err
    lines = out.encode().splitlines(keepends=True)
    records = [json.loads(x) for x in lines]
    assert records[0]["time"] == T0 + 60 * 5 and records[-1]["event"] == "audit.checkpoint"
    timed = [r["time"] for r in records if r["event"] != "audit.checkpoint"]
    assert timed[-1] == T0 + 60 * 15 and T0 + 60 * 13 in timed  # on to the checkpoint after record 15
    window = tmp_path / "window.jsonl"
    window.write_bytes(b"".join(lines))
    code, out, _ = run(capsys, "verify", str(window), "--public-key", str(key_file), "--window")
    assert code == 0 and f"a window from seq {records[0]['chain']['seq']} (records before it are not covered)" in out
    assert "records after the last checkpoint" not in out
    window.write_bytes(b"".join(lines[:4] + [lines[4].replace(b"svc-bot", b"svc-bat")] + lines[5:]))
    code, out, _ = run(capsys, "verify", str(window), "--public-key", str(key_file), "--window")
    assert code == 1 and f"{window}: BROKEN at line 6" in out


def test_an_export_past_the_last_checkpoint_says_its_end_is_not_signed(tmp_path, capsys) -> None:
    paths = rotated(tmp_path)
    code, out, err = run(capsys, "export", str(paths[-1]), "--since", _text(T0 + 60 * 20))
    assert code == 0 and len(out.splitlines()) == 2 and "not yet covered by a checkpoint" in err


def test_an_empty_window_writes_nothing(tmp_path, capsys) -> None:
    paths = rotated(tmp_path)
    code, out, err = run(capsys, "export", str(paths[-1]), "--since", "2030-01-01T00:00:00Z")
    assert code == 0 and out == "" and "no records in the window" in err


def test_export_needs_a_gateway_when_the_source_holds_several_chains(tmp_path, capsys) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"".join(trail(4, gateway="gw-a")))
    (tmp_path / "b.jsonl").write_bytes(b"".join(trail(4, gateway="gw-b")))
    code, _, err = run(capsys, "export", str(tmp_path), "--since", "0")
    assert code == 2 and "pick one with --gateway" in err
    code, out, _ = run(capsys, "export", str(tmp_path), "--since", "0", "--gateway", "gw-b")
    assert code == 0 and all(json.loads(x)["gateway"] == "gw-b" for x in out.splitlines())


# --- search ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "expected"), [
    ([], list(range(20))),
    (["--identity", "alice"], [0, 1, 5, 6, 10, 11, 15, 16]),
    (["--actor", "copilot"], [3, 8, 13, 18]),
    (["--target", "prod"], [2, 3, 7, 8, 12, 13, 17, 18]),
    (["--environment", "development"], [0, 1, 5, 6, 10, 11, 15, 16]),
    (["--rule", "no-delete-without-where"], [2, 7, 12, 17]),
    (["--decision", "review"], [3, 8, 13, 18]),
    (["--event", "statement.completed"], [4, 9, 14, 19]),
    (["--event", "statement.completed", "--event", "connection.authenticated"], [0, 4, 5, 9, 10, 14, 15, 19]),
    (["--since", _text(T0 + 60 * 17)], [17, 18, 19]),
    (["--until", _text(T0 + 60 * 2)], [0, 1, 2]),
    (["--text", "from ACCOUNTS"], [1, 6, 11, 16]),
    (["--identity", "alice", "--event", "statement.decided", "--limit", "2"], [1, 6]),
    (["--gateway", "gw-2"], []),
])
def test_search_filters(tmp_path, capsys, flags: list[str], expected: list[int]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(trail(20)))
    code, out, _ = run(capsys, "search", str(path), *flags)
    assert code == 0
    assert [json.loads(x)["seq"] for x in out.splitlines() if '"audit.checkpoint"' not in x] == expected
    if flags and flags[0] not in ("--since", "--until"):  # checkpoints have no who, target, ...
        assert '"audit.checkpoint"' not in out


def test_search_merges_the_chains_of_a_directory_by_time(tmp_path, capsys) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"".join(trail(6, gateway="gw-a")))
    (tmp_path / "b.jsonl").write_bytes(b"".join(trail(6, gateway="gw-b")))
    code, out, _ = run(capsys, "search", str(tmp_path), "--event", "statement.decided")
    got = [(json.loads(x)["seq"], json.loads(x)["gateway"]) for x in out.splitlines()]
    assert code == 0 and got == [(i, g) for i in (1, 2, 3) for g in ("gw-a", "gw-b")]


def test_search_as_a_table(tmp_path, capsys) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(trail(8)))
    code, out, _ = run(capsys, "search", str(path), "--format", "table", "--until", _text(T0 + 60 * 3))
    rows = out.splitlines()
    assert code == 0 and len(rows) == 5
    assert rows[0].split() == ["TIME", "GATEWAY", "EVENT", "IDENTITY", "TARGET", "DECISION", "SQL"]
    column = rows[0].index("EVENT")
    assert all(r[column:].startswith(("connection.authenticated", "statement.decided")) for r in rows[1:])
    assert "bob" in rows[3] and "deny no-delete-without-where" in rows[3] and "DELETE FROM users" in rows[3]
    assert "svc-bot via copilot" in rows[4] and "review needs-review" in rows[4]
    assert "UPDATE t SET x = 3\\nWHERE id = 2" in rows[4]  # control characters escaped


def test_search_of_standard_input(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "sqlward.gateway", "audit", "search", "-", "--decision", "deny"],
                          input=b"".join(trail(10)), capture_output=True, timeout=60)
    assert done.returncode == 0 and [json.loads(x)["seq"] for x in done.stdout.splitlines()] == [2, 7]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["search", "{dir}/missing.jsonl"],
    ["tail", "{dir}/missing.jsonl"],
    ["export", "{dir}/missing.jsonl", "--since", "-1h"],
    ["verify", "{dir}/missing.jsonl", "--public-key", "{key}"],
    ["search", "{dir}/audit.jsonl", "--since", "yesterday-ish"],
    ["export", "{dir}/audit.jsonl", "--since", "-1h", "--until", "2026-13-45"],
    ["search", "postgresql://u@127.0.0.1:notaport/db"],
    ["search", "postgresql://u:pw@[::1/db"],
    ["search", "postgresql://127.0.0.1:1/db"],
    ["search", "postgresql://127.0.0.1/db", "--table", "a.b.c"],
    ["search", "{dir}/audit.jsonl", "--limit", "-1"],
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, key_file, capsys, argv: list[str]) -> None:
    (tmp_path / "audit.jsonl").write_bytes(b"".join(trail(4)))
    code, out, err = run(capsys, *(a.format(dir=tmp_path, key=key_file) for a in argv))
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("sqlward audit "), err
    assert "Traceback" not in err and ":pw@" not in err


def test_times() -> None:
    assert parse_time("-1h", now=10_000.0) == 6_400.0
    assert parse_time("-30m", now=10_000.0) == 8_200.0
    assert parse_time("-2d", now=200_000.0) == 200_000.0 - 172_800
    assert parse_time("2026-12-07T08:55:05Z") == parse_time("2026-12-07T09:55:05+01:00") == parse_time("2026-12-07T08:55:05")
    assert parse_time("1796000000.5") == 1796000000.5
    with pytest.raises(SourceError, match="not a time"):
        parse_time("last tuesday")


# --- tail --------------------------------------------------------------------------------------


def test_tail_prints_the_last_records_of_a_rotated_set(tmp_path, capsys) -> None:
    paths = rotated(tmp_path, sizes=(8, 2))
    code, out, _ = run(capsys, "tail", str(paths[-1]), "-n", "3", "--event", "statement.decided")
    assert code == 0 and [json.loads(x)["seq"] for x in out.splitlines()] == [6, 7, 8]
    code, out, _ = run(capsys, "tail", str(paths[-1]), "-n", "1")
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [9]


@pytest.mark.timeout(60)
def test_tail_follows_appends_and_a_rotation_until_interrupted(tmp_path) -> None:
    chain = Chain("gw-1", key=KEY)
    live = tmp_path / "audit.jsonl"
    live.write_bytes(b"".join(trail(4, chain=chain, every=100)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlward.gateway", "audit", "tail", str(live), "-f", "-n", "2", "--interval", "0.05",
         "--event", "statement.decided"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        seen = _read_records(proc, 2)
        assert seen == [2, 3]
        with open(live, "ab") as f:
            f.write(b"".join(trail(4, chain=chain, start=4, every=100)))  # records 4..7: 5, 6, 7 are decided
        assert _read_records(proc, 2) == [6, 7]
        with open(live, "ab") as f:  # the writer adds to the old file, then rotates
            f.write(chain.link(record(8, T0 + 480)) + chain.checkpoint(now=T0 + 480.5))
        os.rename(live, tmp_path / "audit.jsonl.20261130T090000Z")
        live.write_bytes(b"".join(trail(5, chain=chain, start=10, every=100)))
        assert _read_records(proc, 4) == [8, 11, 12, 13]  # the old file drained, the new one read
        with open(live, "ab") as f:
            f.write(chain.link(record(16, T0 + 60 * 16)))
        assert _read_records(proc, 1) == [16]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in err, err


def _read_records(proc: subprocess.Popen[bytes], n: int) -> list[int]:
    assert proc.stdout is not None
    out = []
    for _ in range(n):
        line = proc.stdout.readline()
        assert line, "tail -f ended"
        out.append(json.loads(line)["seq"])
    return out


def test_a_set_that_spans_a_key_rotation_verifies_with_both_public_keys(tmp_path, key_file, capsys) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    old = Chain("gw-1", key=KEY)
    (logs / "audit.jsonl.20261130T080000Z").write_bytes(b"".join(trail(8, chain=old)))
    new_key = ed25519.Ed25519PrivateKey.generate()
    new = Chain("gw-1", key=new_key, seq=old.seq, prev=old.prev)  # the gateway restarted with a new key
    (logs / "audit.jsonl").write_bytes(b"".join(trail(4, chain=new, start=8)))
    new_file = tmp_path / "new.pub"
    new_file.write_bytes(new_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    code, out, _ = run(capsys, "verify", str(logs), "--public-key", str(key_file), "--public-key", str(new_file))
    assert code == 0 and "ok, 15 records, 3 signed checkpoints" in out
    code, out, _ = run(capsys, "verify", str(logs), "--public-key", str(key_file))
    assert code == 1 and f"{logs / 'audit.jsonl'}: BROKEN at line 5: a checkpoint whose signature" in out


def test_rotated_files_whose_live_file_is_gone_still_form_one_chain(tmp_path, key_file, capsys) -> None:
    logs = tmp_path / "logs"
    paths = rotated(logs)
    paths[-1].rename(tmp_path / "elsewhere.jsonl")
    for source in (logs, paths[-1]):
        code, out, _ = run(capsys, "verify", str(source), "--public-key", str(key_file))
        assert code == 0 and "ok, 20 records, 4 signed checkpoints" in out and "(2 files: " in out, out


def test_files_beside_the_set_that_are_not_rotated_files_of_it_are_left_alone(tmp_path, key_file, capsys) -> None:
    paths = rotated(tmp_path / "logs")
    (tmp_path / "logs" / "audit.jsonl.bak").write_bytes(paths[0].read_bytes())  # a copy: its own chain
    code, out, _ = run(capsys, "verify", str(paths[-1]), "--public-key", str(key_file))
    assert code == 3 and "(3 files: " in out and ".bak" not in out
    code, out, _ = run(capsys, "verify", str(tmp_path / "logs"), "--public-key", str(key_file))
    assert code == 3 and len(out.splitlines()) == 2 and "audit.jsonl.bak: ok, 10 records" in out


def test_keygen_makes_a_key_the_gateway_signs_with_and_verify_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlward.audit.sinks.file import FileSink
    from sqlward.audit.trail import Trail, signing_key

    for ecdsa in (False, True):
        out = tmp_path / ("ec.pem" if ecdsa else "ed.pem")
        assert cli.main(["audit", "keygen", "--out", str(out)] + (["--ecdsa"] if ecdsa else [])) == 0
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        assert cli.main(["audit", "keygen", "--out", str(out)]) == 2  # never overwrites a key
        key, _ = signing_key(str(out), default_dir=str(tmp_path))
        trail_file = tmp_path / f"audit-{out.stem}.jsonl"
        trail = Trail("gw", [FileSink(str(trail_file))], key=key)
        trail.append(b'{"event":"x"}\n')
        trio.run(trail.aclose)
        capsys.readouterr()
        assert cli.main(["audit", "verify", str(trail_file), "--public-key", f"{out}.pub"]) == 0
        assert "ok, 2 records, 1 signed checkpoints" in capsys.readouterr().out
