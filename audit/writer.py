"""The JSON-lines audit file: the default `audit.recorder.Sink`.

Each batch of lines (from `AuditScope.flush`) is handed to the kernel with a single `os.write`
on an `O_APPEND` descriptor, so concurrent writers never interleave and a crash never leaves half
a line (a short write is completed before returning). A batch that fails part-way (the disk
filled up in the middle of it) leaves no fragment for the next record to be glued onto: the file
is cut back to where the batch began, and if even that fails, the next batch starts with a line
break of its own. `durability = "fsync"` adds an fsync per batch. The write is a local append of a few microseconds, done inside the async `write` without
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
        # A failed batch may have left a fragment that could not be cut away: the next batch
        # starts on a line of its own.
        self._broken_line = False

    async def write(self, data: bytes) -> None:
        self.write_now(data)

    def write_now(self, data: bytes) -> None:
        """Append complete lines with one system call (finishing a short write)."""
        fd = self._fd
        if fd is None:
            raise AuditWriteError("audit writer is closed")
        if self._broken_line:
            data = b"\n" + data
        start = -1
        written = 0
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write (disk nearly full): finish the line
                if start < 0:
                    start = os.fstat(fd).st_size - written  # where this batch began (O_APPEND)
                written += os.write(fd, data[written:])
            if self._fsync:
                os.fsync(fd)
            self._broken_line = False
        except OSError as exc:
            if written:
                self._cut_back(fd, start, written)
            raise AuditWriteError(f"cannot write audit file {self.path!r}: {exc.strerror}") from exc

    def _cut_back(self, fd: int, start: int, written: int) -> None:
        """Remove the part of a failed batch that reached the file (one writer per file)."""
        try:
            if start < 0:
                start = os.fstat(fd).st_size - written
            os.ftruncate(fd, start)
            self._broken_line = False
        except OSError:
            self._broken_line = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
