"""The audit trail (audit/trail.py) over real files: chained, signed, rotated, continued across
restarts, durable with group commit, fail closed (and open when told), verified by the same
`verify` the CLI runs."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import msgspec
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sqlward.audit.chain import verify
from sqlward.audit.sinks import SinkError
from sqlward.audit.sinks.file import FileSink, rotated_files
from sqlward.audit.trail import DEFAULT_KEY_NAME, Trail, signing_key
from sqlward.audit.writer import AuditWriteError

KEY = ed25519.Ed25519PrivateKey.generate()


def line(n: int) -> bytes:
    return msgspec.json.encode({"time": 1.0 + n, "event": "test", "n": n}) + b"\n"


def trail_at(path: Path, *, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = KEY, **kw: object) -> Trail:
    file_kw = {k: kw.pop(k) for k in ("rotate_bytes", "rotate_seconds", "required") if k in kw}
    return Trail("gw-test", [FileSink(str(path), **file_kw)], key=key, **kw)  # type: ignore[arg-type]


def all_lines(path: Path) -> list[bytes]:
    out: list[bytes] = []
    for p in [*rotated_files(str(path)), str(path)]:
        with open(p, "rb") as f:
            out.extend(f.readlines())
    return out


def check(path: Path, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = KEY) -> None:
    report = verify(all_lines(path), key.public_key())
    assert report.ok, report
    assert report.unsigned_tail == 0, report


def test_every_record_is_linked_and_the_end_is_signed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    for n in range(5):
        trail.append(line(n))
    trail.append(line(5) + line(6))  # a batch of two
    trail.close()
    report = verify(all_lines(path), KEY.public_key())
    assert report.ok and report.records == 7 and report.unsigned_tail == 7
    trail = trail_at(path)
    trio.run(trail.aclose)
    check(path)


def test_a_checkpoint_every_n_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path, checkpoint_every=3)
    for n in range(10):
        trail.append(line(n))
    trail.close()
    events = [msgspec.json.decode(raw)["event"] for raw in all_lines(path)]
    assert events.count("audit.checkpoint") == 3
    report = verify(all_lines(path), KEY.public_key())
    assert report.ok and report.checkpoints == 3 and report.unsigned_tail == 1


def test_a_checkpoint_after_t_seconds_with_records_unsigned(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path, checkpoint_seconds=0.2)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trail.run)
            trail.append(line(1))
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()

    trio.run(main)
    trail.close()
    check(path)
    assert sum(b"audit.checkpoint" in raw for raw in all_lines(path)) == 1  # none while nothing is unsigned


def test_the_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for round_ in range(3):
        trail = trail_at(path)
        trail.append(line(round_ * 2) + line(round_ * 2 + 1))
        trail.close()  # as if killed: no checkpoint at the end
    trio.run(trail_at(path).aclose)
    check(path)
    seqs = [msgspec.json.decode(raw)["chain"]["seq"] for raw in all_lines(path)]
    assert seqs == list(range(1, 8))


def test_rotation_by_size_chains_files_and_signs_each(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path, rotate_bytes=600)
    for n in range(30):
        trail.append(line(n))
    trio.run(trail.aclose)
    rotated = rotated_files(str(path))
    assert len(rotated) >= 3
    for p in rotated:  # each rotated file ends on a signature
        with open(p, "rb") as f:
            assert b'"event":"audit.checkpoint"' in f.readlines()[-1]
        assert os.path.getsize(p) <= 600 + 600  # the limit, and the checkpoint that closes it
    check(path)
    # a file taken away from the middle breaks the chain where the next one begins
    os.unlink(rotated[1])
    report = verify(all_lines(path), KEY.public_key())
    assert not report.ok and "sequence" in report.problem


def test_rotation_by_age(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path, rotate_seconds=0.05)
    trail.append(line(1))
    trio.run(trio.sleep, 0.1)
    trail.append(line(2))
    trio.run(trail.aclose)
    assert len(rotated_files(str(path))) == 1
    check(path)


def _full(path: Path) -> None:
    size = os.path.getsize(path)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _not_full() -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def test_a_failing_file_refuses_and_the_chain_has_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    trail.append(line(1))
    seq = trail.chain.seq
    _full(path)
    try:
        with pytest.raises(SinkError):
            trail.append(line(2))
        assert trail.chain.seq == seq  # taken back: the refused batch is not in the chain
        assert trail.status()[0].ok is False
    finally:
        _not_full()
    trail.append(line(3))
    trio.run(trail.aclose)
    check(path)
    assert [msgspec.json.decode(raw).get("n") for raw in all_lines(path)] == [1, 3, None]


class Broken:
    """Makes one FileSink's writes fail as on a full disk (the others keep working)."""

    def __init__(self, sink: FileSink, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sink, self.monkeypatch = sink, monkeypatch

    def __enter__(self) -> None:
        def full(data: bytes) -> None:
            raise AuditWriteError(f"cannot write audit file {self.sink.path!r}: No space left on device")

        self.monkeypatch.setattr(self.sink._writer, "write_now", full)

    def __exit__(self, *exc: object) -> None:
        self.monkeypatch.undo()


def test_failure_open_goes_on_and_counts_what_a_sink_missed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = FileSink(str(tmp_path / "good.jsonl"), name="good")
    bad = FileSink(str(tmp_path / "bad.jsonl"), name="bad")
    trail = Trail("gw-test", [good, bad], key=KEY, failure="open")
    trail.append(line(1))
    with Broken(bad, monkeypatch):
        trail.append(line(2))  # not refused: "bad" keeps it and writes it later
        trail.append(line(3))  # "bad" still cannot: it misses this one
        assert not trail.status()[1].ok
    assert trail.dropped == {"good": 0, "bad": 1}
    trail.append(line(4))
    trio.run(trail.aclose)
    check(tmp_path / "good.jsonl")
    report = verify(all_lines(tmp_path / "bad.jsonl"), KEY.public_key())
    assert not report.ok and report.line == 3  # its copy has the gap it was told about


def test_an_optional_sink_never_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = FileSink(str(tmp_path / "main.jsonl"))
    extra = FileSink(str(tmp_path / "extra.jsonl"), name="extra", required=False)
    trail = Trail("gw-test", [main, extra], key=KEY)
    trail.append(line(1))
    with Broken(extra, monkeypatch):
        trail.append(line(2))
    trail.append(line(3))  # "extra" writes what it kept first: its copy has no gap either
    trio.run(trail.aclose)
    check(tmp_path / "main.jsonl")
    check(tmp_path / "extra.jsonl")


def test_a_required_sink_that_fails_after_another_took_the_batch_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = FileSink(str(tmp_path / "first.jsonl"), name="first")
    second = FileSink(str(tmp_path / "second.jsonl"), name="second")
    trail = Trail("gw-test", [first, second], key=KEY)
    with Broken(second, monkeypatch):
        with pytest.raises(SinkError, match="second"):
            trail.append(line(1))  # refused, but "first" has it: it stays in the chain
        with pytest.raises(SinkError, match="second"):
            trail.append(line(2))  # refused before it is chained
    trail.append(line(3))
    trio.run(trail.aclose)
    for name in ("first", "second"):
        check(tmp_path / f"{name}.jsonl")
        assert [msgspec.json.decode(raw).get("n") for raw in all_lines(tmp_path / f"{name}.jsonl")] == [1, 3, None]


def test_durable_is_group_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)

    async def writer(n: int) -> None:
        for i in range(20):
            trail.append(line(n * 100 + i))
            await trail.commit()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trail.run)
            await trio.sleep(0.01)  # the syncer is running
            async with trio.open_nursery() as writers:
                for n in range(8):
                    writers.start_soon(writer, n)
            nursery.cancel_scope.cancel()

    trio.run(main)
    trail.close()
    assert 0 < len(calls) <= 60  # far fewer fsyncs than commits: one serves several sessions
    check_lines = all_lines(path)
    assert len(check_lines) == 160


def test_buffered_commit_does_not_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path, durability="buffered")
    monkeypatch.setattr(os, "fdatasync", lambda fd: pytest.fail("buffered must not fsync per commit"))
    trail.append(line(1))
    trio.run(trail.commit)
    trail.close()


def test_the_default_key_is_made_once_and_ecdsa_keys_work(tmp_path: Path) -> None:
    key, path = signing_key("", default_dir=str(tmp_path))
    assert path == str(tmp_path / DEFAULT_KEY_NAME) and isinstance(key, ed25519.Ed25519PrivateKey)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    again, _ = signing_key("", default_dir=str(tmp_path))
    assert again.private_bytes_raw() == key.private_bytes_raw()
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "ec.pem"
    pem.write_bytes(ecdsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    loaded, _ = signing_key(str(pem), default_dir=str(tmp_path))
    audit = tmp_path / "audit.jsonl"
    trail = trail_at(audit, key=loaded)  # type: ignore[arg-type]
    trail.append(line(1))
    trio.run(trail.aclose)
    check(audit, ecdsa)
    rsa_like = tmp_path / "p384.pem"
    rsa_like.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ValueError, match="Ed25519 or ECDSA P-256"):
        signing_key(str(rsa_like), default_dir=str(tmp_path))


def test_the_short_path_and_the_long_path_write_the_same_chain(tmp_path: Path) -> None:
    """One file sink takes `append`'s short path; two take the long one: same bytes."""
    one = tmp_path / "one.jsonl"
    a = trail_at(one, checkpoint_every=4)
    b = Trail("gw-test", [FileSink(str(tmp_path / "two.jsonl")), FileSink(str(tmp_path / "three.jsonl"), name="three")],
              key=KEY, checkpoint_every=4)
    assert a._fast is not None and b._fast is None
    for n in range(10):
        a.append(line(n))
        b.append(line(n))
    a.append(line(10) + line(11))
    b.append(line(10) + line(11))
    a.close()
    b.close()
    mine = [msgspec.json.decode(raw) for raw in all_lines(one)]
    other = [msgspec.json.decode(raw) for raw in all_lines(tmp_path / "two.jsonl")]
    # the same records and checkpoints at the same places (a checkpoint's time differs, and so
    # the hashes after it)
    assert [(r["event"], r.get("n"), r["chain"]["seq"]) for r in mine] == [(r["event"], r.get("n"), r["chain"]["seq"]) for r in other]
    assert mine[:4] == other[:4]
    assert verify(all_lines(one), KEY.public_key()).ok and verify(all_lines(tmp_path / "two.jsonl"), KEY.public_key()).ok


def test_records_added_while_the_gateway_was_down_are_reported_not_signed(tmp_path: Path) -> None:
    """The outside review's laundering: after a clean stop, someone appends a record chained to
    the last checkpoint; the restarted gateway continues after it and signs the chain, but
    verify names the records no checkpoint covered before the restart."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    trail.append(b'{"event":"gateway.started","n":0}\n' + line(1))
    trio.run(trail.aclose)
    assert verify(all_lines(path), KEY.public_key()).vouched
    from sqlward.audit.chain import Chain  # the forger: no key, only hashes

    last = all_lines(path)[-1]
    forger = Chain("gw-test", seq=msgspec.json.decode(last)["chain"]["seq"], prev=__import__("hashlib").sha256(last).hexdigest())
    with open(path, "ab") as f:
        f.write(forger.link(b'{"event":"statement.decided","sql":"DROP TABLE payroll -- FORGED"}\n'))
    trail = trail_at(path)  # the restart
    trail.append(b'{"event":"gateway.started","n":1}\n' + line(2))
    trio.run(trail.aclose)
    report = verify(all_lines(path), KEY.public_key())
    assert report.ok and not report.vouched and report.adopted == 1 and report.restarts == (5,), report


def test_a_crash_tail_is_reported_at_the_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    trail.append(b'{"event":"gateway.started","n":0}\n' + line(1) + line(2))
    trail.close()  # killed: no checkpoint
    trail = trail_at(path)
    trail.append(b'{"event":"gateway.started","n":1}\n')
    trio.run(trail.aclose)
    report = verify(all_lines(path), KEY.public_key())
    assert report.ok and report.adopted == 3 and report.unsigned_tail == 0 and not report.vouched


def test_group_commit_still_works_with_no_descriptor_to_spare(tmp_path: Path) -> None:
    """The syncer thread gets a duplicate descriptor per fsync; at the process's descriptor
    limit the commit fsyncs in place instead of failing (found by the descriptor-flood test)."""
    import socket

    trail = trail_at(tmp_path / "audit.jsonl")
    done: list[str] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trail.run)
            await trio.sleep(0.05)
            trail.append(line(1))
            await trail.commit()
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            hog: list[socket.socket] = []
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
                with pytest.raises(OSError):
                    while True:
                        hog.append(socket.socket())
                trail.append(line(2))
                with trio.fail_after(3):
                    await trail.commit()
                done.append("ok")
            finally:
                for s in hog:
                    s.close()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            nursery.cancel_scope.cancel()

    trio.run(main)
    trail.close()
    assert done == ["ok"]


def test_the_short_path_takes_batches_and_gives_a_failed_one_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several lines in one write on the short path: chained like the long path; a batch the
    file refuses leaves the chain as it was; a batch without its last newline is refused."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    writes: list[bytes] = []
    real = trail._fast._writer.write_now  # type: ignore[union-attr]

    def spy(data: bytes) -> None:
        writes.append(data)
        real(data)

    monkeypatch.setattr(trail._fast._writer, "write_now", spy)  # type: ignore[union-attr]
    trail.append(line(1) + line(2) + line(3))
    assert len(writes) == 1 and writes[0].count(b"\n") == 3
    seq = trail.chain.seq
    with Broken(trail._fast, monkeypatch):  # type: ignore[arg-type]
        with pytest.raises(SinkError):
            trail.append(line(4) + line(5))
    assert trail.chain.seq == seq
    with pytest.raises(SinkError):
        trail.append(line(6) + line(7)[:-1])
    assert trail.chain.seq == seq
    trail.append(line(8))
    trio.run(trail.aclose)
    check(path)
    assert [msgspec.json.decode(raw).get("n") for raw in all_lines(path)] == [1, 2, 3, 8, None]
