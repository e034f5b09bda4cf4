"""Byte I/O for the relay hot path, with fewer trio scheduler round trips.

`trio.SocketStream.send_all` and `receive_some` end every successful call with a scheduler
checkpoint, and a receive that has to wait costs a second one: six trips through the scheduler
per request/response on a two-way relay. `Pipe` talks to the non-blocking socket directly: it
reads or writes at once when the kernel allows, and only when it must wait does it park the task
with `trio.lowlevel.wait_readable` / `wait_writable`, which is also where cancellation is
delivered. To stay fair to other connections, after `FAIR_EVERY` reads in a row that did not
have to wait, it yields once anyway.

Streams that are not plain TCP sockets (TLS) fall back to the stream's own methods. Errors are
mapped to the trio exceptions the rest of the code expects: `BrokenResourceError` for a peer that
went away, `ClosedResourceError` for a socket closed under us.
"""

from __future__ import annotations

import errno
import os

import trio

FAIR_EVERY = 16


class Pipe:
    __slots__ = ("stream", "_fd", "_eager")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._eager = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        fd = self._fd
        if fd < 0:
            return await self.stream.receive_some(max_bytes)
        while True:
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                self._eager = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as exc:
                raise _mapped(exc) from exc
            self._eager += 1
            if self._eager >= FAIR_EVERY:
                self._eager = 0
                await trio.lowlevel.checkpoint()
            return data

    async def send(self, data: bytes) -> None:
        fd = self._fd
        if fd < 0:
            await self.stream.send_all(data)
            return
        view = memoryview(data)
        try:
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
                    continue
                except OSError as exc:
                    raise _mapped(exc) from exc
                view = view[n:]
        finally:
            view.release()


def _mapped(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc.strerror}")


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields bytes already read: a TLS ClientHello that arrived before the
    TLS layer was in place (PostgreSQL direct TLS, a MySQL hello sent right behind SSLRequest)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
