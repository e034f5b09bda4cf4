"""The JSON-lines audit file: the default `audit.recorder.Sink`.

Each batch of lines (from `AuditScope.flush`) is handed to the kernel with a single `os.write`
on an `O_APPEND` descriptor, so concurrent writers never interleave and a crash never leaves half
a line (a short write is completed before returning). `durability = "fsync"` adds an fsync per
batch. The write is a local append of a few microseconds, done inside the async `write` without
yielding: the caller knows the lines are written before the client sees the effect.
"""

from __future__ import annotations

import os


class AuditWriteError(Exception):
    pass


class JsonlWriter:
    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit file {path!r}: {exc.strerror}") from exc

    async def write(self, data: bytes) -> None:
        self.write_now(data)

    def write_now(self, data: bytes) -> None:
        """Append complete lines with one system call (finishing a short write)."""
        fd = self._fd
        if fd is None:
            raise AuditWriteError("audit writer is closed")
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write (disk nearly full): finish the line
                written += os.write(fd, data[written:])
            if self._fsync:
                os.fsync(fd)
        except OSError as exc:
            raise AuditWriteError(f"cannot write audit file {self.path!r}: {exc.strerror}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
