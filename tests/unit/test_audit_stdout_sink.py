"""The stdout audit sink (`audit/sinks/stdout.py`) on real pipes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import trio

from sqlward.audit.chain import Chain
from sqlward.audit.sinks import SinkError
from sqlward.audit.sinks.stdout import StdoutSink


def lines(chain: Chain, n: int, pad: int = 0) -> bytes:
    return b"".join(chain.link(b'{"time":1.5,"event":"x","pad":"%s"}\n' % (b"p" * pad)) for _ in range(n))


def read_all(fd: int) -> bytes:
    out = bytearray()
    while chunk := os.read(fd, 1 << 16):
        out += chunk
    return bytes(out)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_lines_arrive_in_order(pipe: tuple[int, int]) -> None:
    r, w = pipe
    chain = Chain("g1")
    sink = StdoutSink("stdout", True, fd=w)
    first, second = lines(chain, 3), lines(chain, 2)

    async def main() -> None:
        assert sink.ready() is None
        sink.accept(first)
        sink.accept(second)
        await sink.durable(1)  # nothing to wait for
        assert await sink.last_link("g1") is None
        st = sink.status()
        assert st.ok and st.kind == "stdout" and st.backlog == 0 and st.backlog_bytes == 0
        await sink.aclose(1)

    trio.run(main)
    os.close(w)
    assert read_all(r) == first + second


def test_large_batch_is_written_whole(pipe: tuple[int, int]) -> None:
    """A batch larger than the pipe's buffer: the reader drains while the write goes on."""
    r, w = pipe
    chain = Chain("g1")
    big = lines(chain, 300, pad=4000)  # ~1.2 MiB
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(r)))
    reader.start()
    sink = StdoutSink("stdout", True, fd=w)
    sink.accept(big)
    sink.accept(lines(chain, 1))
    os.close(w)
    reader.join(10)
    assert got[0].startswith(big) and got[0].count(b"\n") == 301


def test_broken_pipe_keeps_lines_and_writes_them_first(pipe: tuple[int, int]) -> None:
    r, w = pipe
    chain = Chain("g1")
    sink = StdoutSink("out", False, fd=w)
    before = lines(chain, 2)
    sink.accept(before)
    assert os.read(r, 1 << 16) == before
    os.close(r)  # the reader went away
    held = lines(chain, 3)
    with pytest.raises(SinkError, match="stdout sink 'out': cannot write to fd .*[Bb]roken pipe"):
        sink.accept(held)
    st = sink.status()
    assert not st.ok and "roken pipe" in st.problem and st.backlog == 3 and st.backlog_bytes == len(held)
    why = sink.ready()
    assert why is not None and "roken pipe" in why
    more = lines(chain, 1)
    with pytest.raises(SinkError):
        sink.accept(more)  # kept behind the others

    async def durable() -> None:
        with pytest.raises(SinkError):
            await sink.durable(1)

    trio.run(durable)
    # a new reader on the same descriptor: the held lines come first, in order
    r2, w2 = os.pipe()
    os.dup2(w2, w)
    os.close(w2)
    assert sink.ready() is None
    assert sink.status().ok and sink.status().backlog == 0
    last = lines(chain, 1)
    sink.accept(last)
    os.close(w)
    try:
        assert read_all(r2) == held + more + last
    finally:
        os.close(r2)


def test_short_write_then_failure_resumes_mid_line(pipe: tuple[int, int]) -> None:
    """A write cut short (the pipe is full; here non-blocking, so the next write fails) keeps
    the rest from the middle of its line; the stream carries no half line nor a gap."""
    r, w = pipe
    os.set_blocking(w, False)
    chain = Chain("g1")
    sink = StdoutSink("stdout", True, fd=w)
    big = lines(chain, 100, pad=2000)  # more than a pipe holds
    with pytest.raises(SinkError, match="cannot write"):
        sink.accept(big)
    held = sink.status().backlog_bytes
    assert 0 < held < len(big)
    got = bytearray()
    while sink.ready() is not None:
        got += os.read(r, 1 << 16)
    got += os.read(r, 1 << 16)  # room for one more line
    tail = lines(chain, 1)
    sink.accept(tail)
    os.close(w)
    got += read_all(r)
    assert bytes(got) == big + tail
