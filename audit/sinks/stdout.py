"""The stdout audit sink: the trail as JSON lines on a file descriptor (a container's log stream).

`StdoutSink` is a `audit.sinks.TrailSink`. How it works:

- `accept(data)` writes the linked lines to the descriptor (1 by default) with `os.write`,
  finishing short writes, on the trio thread, without yielding: the order of the lines is the
  chain's. The descriptor is used as it is (blocking): a reader that stops reading stops the
  gateway's audit, as with any program logging to stdout; container runtimes drain it.
- A write that fails (EPIPE: the reader went away; EBADF...) raises `SinkError`; the bytes not
  yet written (from the middle of a line, if a write was short before it failed) are kept and
  written first, before anything newer, by the next `ready()` or `accept()`, so the stream
  never holds half a line followed by another line, and never misses a line in between.
  `ready()` says why while they cannot be written.
- `durable()` has nothing to wait for: the bytes are with the reader (a pipe, a terminal) once
  written, and a pipe offers no more than that. It only fails while bytes are held back.
- `last_link` is None: the stream cannot be read back.
"""

from __future__ import annotations

import os

import trio

from sqlward.audit.sinks import SinkError, SinkStatus

__all__ = ["StdoutSink"]


class StdoutSink:
    """Audit lines to a file descriptor (module doc)."""

    kind = "stdout"

    def __init__(self, name: str, required: bool, fd: int = 1) -> None:
        self.name = name
        self.required = required
        self._fd = fd
        self._pending = bytearray()  # accepted, not yet written (oldest first)
        self._problem = ""

    def _flush(self) -> None:
        while self._pending:
            try:
                written = os.write(self._fd, self._pending)
            except OSError as exc:
                self._problem = f"stdout sink {self.name!r}: cannot write to fd {self._fd}: {exc.strerror or exc}"
                raise SinkError(self._problem) from exc
            del self._pending[:written]
        self._problem = ""

    def ready(self) -> str | None:
        if self._pending:
            try:
                self._flush()
            except SinkError as exc:
                return str(exc)
        return None

    def accept(self, data: bytes) -> None:
        if self._pending:  # older bytes first
            self._pending += data
            self._flush()
            return
        view = memoryview(data)
        done = 0
        while done < len(data):
            try:
                done += os.write(self._fd, view[done:])
            except OSError as exc:
                self._pending += view[done:]
                self._problem = f"stdout sink {self.name!r}: cannot write to fd {self._fd}: {exc.strerror or exc}"
                raise SinkError(self._problem) from exc
        self._problem = ""

    async def durable(self, timeout: float) -> None:
        if self._pending:
            self._flush()

    def status(self) -> SinkStatus:
        return SinkStatus(name=self.name, kind=self.kind, required=self.required, ok=not self._problem,
                          problem=self._problem, backlog=self._pending.count(b"\n"), backlog_bytes=len(self._pending))

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        return None

    async def run(self) -> None:
        await trio.sleep_forever()

    async def aclose(self, timeout: float) -> None:
        """Write what is held back, if the descriptor takes it now (it is not closed: not ours)."""
        if self._pending:
            try:
                self._flush()
            except SinkError:
                pass
