"""JSON-lines audit writer.

Each event is encoded by msgspec into one line and handed to the kernel with a single
`os.write` on an `O_APPEND` descriptor, so concurrent writers never interleave and a crash never
leaves half a line (a short write is completed before returning). `durability = "fsync"` adds an
fsync per event. Writes are synchronous on purpose: a local append costs a few microseconds, and
the caller must know the record is written before the client sees the effect (fail closed).
"""

from __future__ import annotations

import os

import msgspec


class AuditWriteError(Exception):
    pass


class JsonlWriter:
    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        self._encode = msgspec.json.Encoder().encode
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit file {path!r}: {exc.strerror}") from exc

    def write(self, event: msgspec.Struct) -> None:
        self.write_many((event,))

    def write_many(self, events: tuple[msgspec.Struct, ...] | list[msgspec.Struct]) -> None:
        """Write several events with one system call (each still its own line)."""
        fd = self._fd
        if fd is None:
            raise AuditWriteError("audit writer is closed")
        encode = self._encode
        data = b"".join([encode(e) + b"\n" for e in events])
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
