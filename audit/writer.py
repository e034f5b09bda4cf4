"""The JSON-lines audit file: the default `audit.recorder.Sink`.

Each batch of lines (from `AuditScope.flush`) is handed to the kernel with a single `os.write`
on an `O_APPEND` descriptor, so concurrent writers never interleave and a crash never leaves half
a line (a short write is completed before returning). A batch that fails part-way (the disk
filled up in the middle of it) leaves no fragment for the next record to be glued onto: the file
is cut back to where the batch began, and if even that fails, the next batch starts with a line
break of its own. `durability = "fsync"` adds an fsync per batch. The write is a local append
of a few microseconds, done inside the async `write` without yielding: the caller knows the lines
are written before the client sees the effect.

A file deleted or replaced under the gateway (by hand, by a log rotation that moves it away) is
noticed: before each batch the open file's link count is read (fstat; a deleted file, or one
another file was renamed over, has none left), and at most once a second the path is stat'ed and
compared with the open descriptor (device and inode), which also catches a file moved away (whose
records, meanwhile, are in the moved file). A path that no longer names the open file is
reopened (created again), with a warning. Records are never written into a file nobody can read
any more; a path that cannot be reopened, or that now names something other than a regular file
(a symlink to /dev/null, a device), fails the batch (statements are refused) until a regular file
can be created there. The fstat costs well under a microsecond per batch. A special file
(/dev/stdout, a FIFO) is written as it is, without the checks.
"""

from __future__ import annotations

import logging
import os
import stat
import time

log = logging.getLogger("sqlward.audit")

# The path is stat'ed at most this often; the open file's link count is checked before every
# batch (a deleted or replaced file has none left).
PATH_CHECK_SECONDS = 1.0


class AuditWriteError(Exception):
    pass


class JsonlWriter:
    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of a regular file
        self._next_path_check = 0.0  # monotonic time of the next stat of the path
        self._open()
        # A failed batch may have left a fragment that could not be cut away: the next batch
        # starts on a line of its own.
        self._broken_line = False

    @property
    def fd(self) -> int | None:
        """The open descriptor (None once closed)."""
        return self._fd

    def _open(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit file {self.path!r}: {exc.strerror}") from exc
        st = os.fstat(fd)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None

    def _check_path(self) -> None:
        """Reopen when the path no longer names the open file (deleted, moved, replaced)."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                return
            what = "replaced"
        except FileNotFoundError:
            what = "deleted or moved away"
        except OSError as exc:
            raise AuditWriteError(f"cannot check audit file {self.path!r}: {exc.strerror}") from exc
        old, old_ident = self._fd, self._ident
        self._open()
        if self._ident is None:  # a device, a FIFO, a directory's error...: not a trail anyone keeps
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd, self._ident = old, old_ident  # checked (and refused) again at the next batch
            raise AuditWriteError(
                f"audit file {self.path!r} was {what} by something that is not a regular file; "
                "no record is written until a regular file can be created there"
            )
        if old is not None:
            os.close(old)
        self._broken_line = False
        log.warning("audit file %s was %s; writing to %s again (a new file)", self.path, what, self.path)

    async def write(self, data: bytes) -> None:
        self.write_now(data)

    async def commit(self, *, before_run: bool = False) -> None:
        return None  # each batch is written (and fsync'd when asked) inside write

    def write_now(self, data: bytes) -> None:
        """Append complete lines with one system call (finishing a short write)."""
        if self._fd is None:
            raise AuditWriteError("audit writer is closed")
        if self._ident is not None:
            now = time.monotonic()
            if now >= self._next_path_check or os.fstat(self._fd).st_nlink == 0:
                self._check_path()
                self._next_path_check = now + PATH_CHECK_SECONDS
        fd = self._fd
        assert fd is not None
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
