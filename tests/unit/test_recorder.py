"""audit.recorder: the envelope a scope stamps, batching per flush, ordering, failure handling."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sqlward.audit.events import ConnectionOpened, Envelope, PolicyReloaded, StatementCompleted, StatementDecided, Who
from sqlward.audit.recorder import AuditUnavailable, NullSink, Recorder
from sqlward.audit.writer import AuditWriteError, JsonlWriter
from tests.support.auditsink import ListSink


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _opened() -> ConnectionOpened:
    return ConnectionOpened(client_addr="127.0.0.1:5000", listener="pg", protocol="postgres")


def test_envelope_is_stamped_in_front_of_the_event() -> None:
    sink = ListSink()
    clock = Clock(1796634045.353)
    recorder = Recorder("gw-1", sink, clock=clock)
    scope = recorder.scope("abc123")
    trio.run(scope.record, _opened())
    (line,) = sink.batches[0].splitlines()
    assert line.startswith(b'{"time":1796634045.353,"time_text":"2026-12-07T09:00:45.353Z","gateway":"gw-1",'
                           b'"connection_id":"abc123","seq":1,"event":"connection.opened",')
    event = json.loads(line)
    assert event == {
        "time": 1796634045.353, "time_text": "2026-12-07T09:00:45.353Z", "gateway": "gw-1",
        "connection_id": "abc123", "seq": 1, "event": "connection.opened",
        "client_addr": "127.0.0.1:5000", "listener": "pg", "protocol": "postgres",
    }
    # The envelope decodes as its own type (extra keys ignored).
    env = msgspec.json.decode(line, type=Envelope)
    assert (env.gateway, env.connection_id, env.seq, env.trace_id) == ("gw-1", "abc123", 1, "")


@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_time_text_is_rfc3339_utc_of_the_same_instant(now: float) -> None:
    sink = ListSink()
    recorder = Recorder("g", sink, clock=Clock(now))
    trio.run(recorder.scope("c").record, _opened())
    event = sink.events[0]
    assert event["time"] == now
    parsed = datetime.datetime.strptime(event["time_text"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert event["time_text"].endswith("Z") and len(event["time_text"]) == 24
    assert -1e-6 <= now - parsed.timestamp() < 0.001 + 1e-6


def test_names_are_json_escaped() -> None:
    sink = ListSink()
    recorder = Recorder('gw "quoted"\n', sink)
    trio.run(recorder.scope('c"\\').record, _opened())
    assert sink.events[0]["gateway"] == 'gw "quoted"\n' and sink.events[0]["connection_id"] == 'c"\\'


def test_one_write_per_flush_with_per_session_sequence() -> None:
    sink = ListSink()
    recorder = Recorder("g", sink)
    a, b = recorder.scope("a"), recorder.scope("b")

    async def main() -> None:
        for i in range(3):
            a.add(StatementCompleted(request_id=i, duration_ms=0.1))
        b.add(StatementCompleted(request_id=9, duration_ms=0.1))
        assert a.pending == 3 and a.seq == 3
        await a.flush()
        await a.flush()  # nothing pending: no write
        await b.flush()
        a.add(StatementCompleted(request_id=3, duration_ms=0.1))
        await a.flush()

    trio.run(main)
    assert len(sink.batches) == 3
    assert [(e["connection_id"], e["seq"], e["request_id"]) for e in sink.events] == [
        ("a", 1, 0), ("a", 2, 1), ("a", 3, 2), ("b", 1, 9), ("a", 4, 3),
    ]


def test_trace_ids_go_into_the_envelope_when_set() -> None:
    sink = ListSink()
    scope = Recorder("g", sink).scope("c")
    scope.trace_id, scope.span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    trio.run(scope.record, _opened())
    assert (sink.events[0]["trace_id"], sink.events[0]["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def test_a_failed_flush_raises_and_leaves_a_gap_in_the_sequence() -> None:
    sink = ListSink()
    scope = Recorder("g", sink).scope("c")

    async def main() -> None:
        scope.add(_opened())
        sink.fail = OSError("disk full")
        with pytest.raises(AuditUnavailable, match="disk full"):
            await scope.flush()
        assert scope.pending == 0  # dropped: their numbers stay unused
        sink.fail = None
        await scope.record(_opened())

    trio.run(main)
    assert [e["seq"] for e in sink.events] == [2]


def test_flush_quietly_logs_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    sink = ListSink()
    sink.fail = OSError("gone")
    scope = Recorder("g", sink).scope("c")
    scope.add(_opened())
    assert trio.run(scope.flush_quietly) is False
    assert "1 event(s) of connection 'c' lost" in caplog.text


def test_events_carry_no_envelope_of_their_own() -> None:
    for cls in (ConnectionOpened, StatementDecided, StatementCompleted, PolicyReloaded):
        assert not {"time", "gateway", "connection_id", "seq"} & set(cls.__struct_fields__), cls


def test_gateway_scope_for_gateway_level_events() -> None:
    sink = ListSink()
    recorder = Recorder("g", sink)
    trio.run(recorder.gateway_scope.record, PolicyReloaded(version=2, files=("p.toml",)))
    assert sink.events[0]["connection_id"] == "" and sink.events[0]["event"] == "policy.reloaded"


def test_jsonl_writer_appends_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = JsonlWriter(str(path))
    recorder = Recorder("g", writer)
    scope = recorder.scope("c")
    who = Who(subject="alice")

    async def main() -> None:
        for i in range(100):
            scope.add(StatementDecided(
                request_id=i, who=who, target="t", environment="e", sql=f"SELECT {i}", fingerprint="SELECT ?",
                action="allow",
            ))
        await scope.flush()

    trio.run(main)
    recorder.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == list(range(100))
    with pytest.raises(AuditUnavailable):
        trio.run(scope.record, _opened())  # closed writer


def test_jsonl_writer_reports_open_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditWriteError, match="cannot open audit file"):
        JsonlWriter(str(tmp_path / "missing" / "audit.jsonl"))


def test_jsonl_writer_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    JsonlWriter(str(path)).close()
    assert os.stat(path).st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_null_sink_records_nothing() -> None:
    scope = Recorder("g", NullSink()).scope("c")
    trio.run(scope.record, _opened())
    assert scope.pending == 0


def test_a_batch_that_fails_part_way_leaves_no_fragment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up in the middle of a batch: what reached the file is cut away, so the
    next record starts on a line of its own (issue 12, item 8)."""
    import errno

    from sqlward.audit import writer as writer_module

    path = tmp_path / "audit.jsonl"
    w = JsonlWriter(str(path))
    w.write_now(b'{"n":1}\n')
    real_write = writer_module.os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[: len(data) // 2])  # a short write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(writer_module.os, "write", flaky)
    with pytest.raises(AuditWriteError):
        w.write_now(b'{"n":2,"padding":"xxxxxxxxxxxxxxxx"}\n')
    monkeypatch.setattr(writer_module.os, "write", real_write)
    w.write_now(b'{"n":3}\n')
    w.close()
    assert path.read_bytes() == b'{"n":1}\n{"n":3}\n'


def test_a_fragment_that_cannot_be_cut_gets_its_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from sqlward.audit import writer as writer_module

    path = tmp_path / "audit.jsonl"
    w = JsonlWriter(str(path))
    real_write = writer_module.os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EPERM, "not permitted")

    monkeypatch.setattr(writer_module.os, "write", flaky)
    monkeypatch.setattr(writer_module.os, "ftruncate", no_truncate)
    with pytest.raises(AuditWriteError):
        w.write_now(b'{"n":2}\n')
    monkeypatch.setattr(writer_module.os, "write", real_write)
    w.write_now(b'{"n":3}\n')
    w.close()
    lines = path.read_bytes().split(b"\n")
    assert b'{"n":3}' in lines  # whole, on a line of its own


def test_writer_reopens_a_deleted_audit_file_and_never_writes_into_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = JsonlWriter(str(path))
    writer.write_now(b'{"n":1}\n')
    kept = os.open(path, os.O_RDONLY)  # the deleted file, as a reader still holding it sees it
    os.unlink(path)
    writer.write_now(b'{"n":2}\n')
    assert path.read_bytes() == b'{"n":2}\n'
    assert os.read(kept, 100) == b'{"n":1}\n'  # nothing more went into the deleted file
    os.close(kept)
    other = tmp_path / "other"
    other.write_bytes(b"")
    os.replace(other, path)  # replaced by another file
    writer.write_now(b'{"n":3}\n')
    assert path.read_bytes() == b'{"n":3}\n'
    writer.close()


def test_writer_fails_when_the_deleted_file_cannot_be_created_again(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    writer = JsonlWriter(str(directory / "audit.jsonl"))
    os.unlink(directory / "audit.jsonl")
    directory.rmdir()
    with pytest.raises(AuditWriteError, match="cannot open audit file"):
        writer.write_now(b'{"n":1}\n')
    writer.close()


def test_writer_refuses_a_path_swapped_for_something_that_is_not_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = JsonlWriter(str(path))
    writer.write_now(b'{"n":1}\n')
    os.unlink(path)
    os.symlink("/dev/null", path)  # the trail would go nowhere
    for _ in range(2):  # refused every time, not adopted after the first
        with pytest.raises(AuditWriteError, match="not a regular file"):
            writer.write_now(b'{"n":2}\n')
    os.unlink(path)
    path.mkdir()  # a directory
    with pytest.raises(AuditWriteError):
        writer.write_now(b'{"n":3}\n')
    path.rmdir()
    writer.write_now(b'{"n":4}\n')  # a regular file can be created again: written there
    assert path.read_bytes() == b'{"n":4}\n'
    writer.close()
