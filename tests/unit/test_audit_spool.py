"""The audit spool (`audit/spool.py`) with an in-memory destination that can fail and recover.

`FakeDestination` is a stand-in for the `Destination` interface only (no database is mocked): it
keeps the lines by chain sequence, takes a re-sent line that it holds already (the dedupe
contract), and fails the test when a line arrives out of order, with a gap, or different from the
one it holds under that sequence.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import hypothesis.strategies as st
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from sqlward.audit.chain import Chain
from sqlward.audit.sinks import SinkError
from sqlward.audit.spool import STATE_FILE, Spool


class _Link(msgspec.Struct):
    seq: int


class _Linked(msgspec.Struct):
    chain: _Link


class FakeDestination:
    """A `Destination` that stores lines in a list (index = seq - 1)."""

    def __init__(self) -> None:
        self.name = "fake"
        self.lines: list[bytes] = []
        self.fail: str | None = None
        self.hang = False
        self.deliveries = 0
        self.batch_sizes: list[int] = []
        self.resent = 0
        self.closed = False

    async def deliver(self, lines: list[bytes]) -> None:
        if self.hang:
            await trio.sleep_forever()
        if self.fail is not None:
            raise ConnectionRefusedError(self.fail)
        self.deliveries += 1
        self.batch_sizes.append(len(lines))
        staged = list(self.lines)
        for line in lines:
            assert line.endswith(b"\n")
            seq = msgspec.json.decode(line, type=_Linked).chain.seq
            if seq <= len(staged):
                assert staged[seq - 1] == line, f"seq {seq} re-sent with other bytes"
                self.resent += 1
            else:
                assert seq == len(staged) + 1, f"seq {seq} after {len(staged)}: a gap or out of order"
                staged.append(line)
        self.lines = staged  # all or none

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        if self.fail is not None:
            raise ConnectionRefusedError(self.fail)
        if not self.lines:
            return None
        return len(self.lines), hashlib.sha256(self.lines[-1]).hexdigest()

    async def aclose(self) -> None:
        self.closed = True


class Lines:
    """Linked audit lines, as the trail makes them."""

    def __init__(self) -> None:
        self.chain = Chain("g1")
        self.made: list[bytes] = []

    def make(self, n: int) -> bytes:
        out = []
        for _ in range(n):
            i = len(self.made)
            line = self.chain.link(b'{"time":%d.5,"event":"statement","gateway":"g1","text":"select %d \xc3\xa9"}\n' % (i, i))
            self.made.append(line)
            out.append(line)
        return b"".join(out)


def spool(dest: FakeDestination, directory: Path, **kw: int) -> Spool:
    max_bytes = kw.pop("max_bytes", 1 << 30)
    return Spool("remote", "fake", True, dest, str(directory), max_bytes, "g1", **kw)


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test)


def test_order_preserved_and_grouped(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path)
        for _ in range(200):
            s.accept(lines.make(3))
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            await s.durable(5)
            assert dest.lines == lines.made
            # everything available goes in one deliver call (group commit), up to the batch limit
            assert dest.batch_sizes == [600]
            s.accept(lines.make(1))
            await s.durable(5)
            assert dest.lines == lines.made
            st = s.status()
            assert st.ok and st.backlog == 0 and st.backlog_bytes == 0
            n.cancel_scope.cancel()
        await s.aclose(1)
        assert dest.closed

    run(main)


def test_batches_are_bounded(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path, batch_lines=7, batch_bytes=1 << 20)
        s.accept(lines.make(30))
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            await s.durable(5)
            n.cancel_scope.cancel()
        assert dest.batch_sizes == [7, 7, 7, 7, 2]
        assert dest.lines == lines.made
        await s.aclose(1)

    run(main)


def test_failure_then_recovery_loses_nothing(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path)
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            s.accept(lines.make(2))
            await s.durable(5)
            dest.fail = "connection refused"
            batch = lines.make(5)
            s.accept(batch)
            with pytest.raises(SinkError, match="fake sink 'remote': connection refused"):
                await s.durable(5)
            st = s.status()
            assert not st.ok and "connection refused" in st.problem
            assert st.backlog == 5 and st.backlog_bytes == len(batch)
            assert s.ready() is None  # under max_bytes: still takes records (they are spooled)
            s.accept(lines.make(4))
            assert s.status().backlog == 9
            # while failing, every durable() fails fast with the reason (no timeout wait)
            with trio.fail_after(2):
                for _ in range(3):
                    with pytest.raises(SinkError, match="connection refused"):
                        await s.durable(30)
            dest.fail = None
            await s.durable(5)
            assert dest.lines == lines.made
            st = s.status()
            assert st.ok and st.problem == "" and st.backlog == 0 and st.backlog_bytes == 0
            n.cancel_scope.cancel()
        await s.aclose(1)

    run(main)


def test_durable_times_out_while_destination_hangs(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path)
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            dest.hang = True
            s.accept(lines.make(1))
            t0 = trio.current_time()
            with pytest.raises(SinkError, match=r"not delivered within 0.3 s"):
                await s.durable(0.3)
            assert trio.current_time() - t0 < 2
            n.cancel_scope.cancel()

    run(main)


def test_ready_refuses_over_max_bytes(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path, max_bytes=2000)
        dest.fail = "connection refused"
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            s.accept(lines.make(1))
            await trio.sleep(0.05)  # the shipper has tried (and failed)
            while s.ready() is None:
                s.accept(lines.make(1))
            why = s.ready()
            assert why is not None and "spool full" in why and "limit 2000" in why and "connection refused" in why
            assert s.status().backlog_bytes >= 2000
            dest.fail = None
            await s.durable(5)
            assert s.ready() is None
            assert dest.lines == lines.made
            n.cancel_scope.cancel()

    run(main)


def test_spool_write_failure_keeps_the_batch(tmp_path: Path) -> None:
    """A batch the disk refuses (here: the segment is /dev/full) raises SinkError, is kept, and
    is written first once the disk takes writes again."""
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path)
        seg = tmp_path / ("0" * 20 + ".seg")
        seg.unlink(missing_ok=True)
        os.symlink("/dev/full", seg)
        first = lines.make(2)
        with pytest.raises(SinkError, match="cannot write spool"):
            s.accept(first)
        why = s.ready()
        assert why is not None and "cannot write spool" in why
        assert not s.status().ok and s.status().backlog == 2
        with pytest.raises(SinkError):
            s.accept(lines.make(1))  # kept behind the first, in order
        seg.unlink()
        assert s.ready() is None
        s.accept(lines.make(1))
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            await s.durable(5)
            n.cancel_scope.cancel()
        assert dest.lines == lines.made
        await s.aclose(1)

    run(main)


def test_restart_delivers_the_rest_exactly_once(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path)
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            s.accept(lines.make(3))
            await s.durable(5)
            while not (tmp_path / STATE_FILE).exists():  # written just after the delivery
                await trio.sleep(0.01)
            state_after_3 = (tmp_path / STATE_FILE).read_bytes()
            s.accept(lines.make(2))
            await s.durable(5)
            dest.fail = "connection refused"
            s.accept(lines.make(4))
            n.cancel_scope.cancel()
        await s.aclose(0.3)  # cannot deliver: stays on disk
        assert len(dest.lines) == 5
        # a crash between a delivery and its state write: the state file is behind
        (tmp_path / STATE_FILE).write_bytes(state_after_3)

        s2 = spool(dest, tmp_path)
        assert s2.status().backlog_bytes == sum(map(len, lines.made[3:]))
        # the spool holds undelivered lines: the chain ends at its last line
        assert await s2.last_link("g1") == (9, hashlib.sha256(lines.made[-1]).hexdigest())
        dest.fail = None
        async with trio.open_nursery() as n:
            n.start_soon(s2.run)
            await s2.durable(5)
            assert s2.status().backlog == 0
            s2.accept(lines.make(1))
            await s2.durable(5)
            n.cancel_scope.cancel()
        assert dest.lines == lines.made
        assert dest.resent == 2  # lines 4 and 5 again, taken without duplicates
        # all delivered: the destination says where the chain ends
        assert await s2.last_link("g1") == (10, hashlib.sha256(lines.made[-1]).hexdigest())
        await s2.aclose(1)

    run(main)


def test_last_link_when_destination_unreachable(tmp_path: Path) -> None:
    dest = FakeDestination()

    async def main() -> None:
        s = spool(dest, tmp_path)
        assert await s.last_link("g1") is None
        dest.fail = "connection refused"
        with pytest.raises(SinkError, match="cannot read where its chain ends: connection refused"):
            await s.last_link("g1")

    run(main)


def test_behind_reads_segments_and_removes_shipped_ones(tmp_path: Path) -> None:
    """Small segments and little memory: a shipper that is behind reads the files; segments
    wholly delivered are removed."""
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path, segment_bytes=1000, memory_bytes=600, batch_bytes=700)
        dest.fail = "down"
        for _ in range(60):
            s.accept(lines.make(1))
        segs = sorted(p.name for p in tmp_path.glob("*.seg"))
        assert len(segs) > 5
        assert s.status().backlog == 60
        dest.fail = None
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            await s.durable(5)
            n.cancel_scope.cancel()
        assert dest.lines == lines.made
        assert all(size > 0 for size in dest.batch_sizes)
        assert len(list(tmp_path.glob("*.seg"))) == 1  # only the active one is left
        await s.aclose(1)

    run(main)


def test_torn_tail_is_cut_at_start(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path)
        dest.fail = "down"
        s.accept(lines.make(3))
        await s.aclose(0)
        seg = next(tmp_path.glob("*.seg"))
        with open(seg, "ab") as f:
            f.write(b'{"time":9.5,"event":"half a li')  # power lost in the middle of a write
        dest.fail = None
        s2 = spool(dest, tmp_path)
        assert seg.read_bytes() == b"".join(lines.made)
        async with trio.open_nursery() as n:
            n.start_soon(s2.run)
            await s2.durable(5)
            s2.accept(lines.make(1))
            await s2.durable(5)
            n.cancel_scope.cancel()
        assert dest.lines == lines.made
        await s2.aclose(1)

    run(main)


def test_aclose_delivers_what_is_left(tmp_path: Path) -> None:
    dest, lines = FakeDestination(), Lines()

    async def main() -> None:
        s = spool(dest, tmp_path)
        s.accept(lines.make(7))
        await s.aclose(5)  # without run(): aclose ships itself
        assert dest.lines == lines.made and dest.closed
        with pytest.raises(SinkError, match="closed"):
            s.accept(lines.make(1))

    run(main)


# -- property: any sequence of accept / fail / recover / restart / crash delivers every line
#    exactly once, in order (FakeDestination fails the test on a gap, a reorder or changed bytes).

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("accept"), st.integers(1, 6)),
        st.tuples(st.just("fail"), st.just(0)),
        st.tuples(st.just("recover"), st.just(0)),
        st.tuples(st.just("wait"), st.just(0)),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("crash"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_property_every_line_once_in_order(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    directory = tmp_path_factory.mktemp("spool")
    dest, lines = FakeDestination(), Lines()
    sizes = {"segment_bytes": 700, "memory_bytes": 400, "batch_bytes": 500, "batch_lines": 4}

    async def main() -> None:
        s = spool(dest, directory, **sizes)
        saved_state: bytes | None = None
        async with trio.open_nursery() as outer:
            scope = trio.CancelScope()

            async def shipper(sp: Spool, cs: trio.CancelScope) -> None:
                with cs:
                    await sp.run()

            outer.start_soon(shipper, s, scope)
            for op, n in ops:
                if op == "accept":
                    s.accept(lines.make(n))
                elif op == "fail":
                    dest.fail = "down"
                elif op == "recover":
                    dest.fail = None
                elif op == "wait":
                    await trio.sleep(0.002)
                    state = directory / STATE_FILE
                    if state.exists():
                        saved_state = state.read_bytes()
                else:
                    scope.cancel()
                    await trio.sleep(0)
                    if op == "restart":
                        await s.aclose(0.01)
                    else:  # kill -9: no aclose; the state file may be behind
                        if s._fd is not None:
                            os.close(s._fd)
                        if saved_state is not None:
                            (directory / STATE_FILE).write_bytes(saved_state)
                    s = spool(dest, directory, **sizes)
                    scope = trio.CancelScope()
                    outer.start_soon(shipper, s, scope)
            dest.fail = None
            await s.durable(10)
            assert s.status().backlog == 0
            scope.cancel()
        await s.aclose(1)

    trio.run(main)
    assert dest.lines == lines.made
