"""The JSON-lines file sink: appends at once, fsyncs with group commit, rotates by size and age.

How it works:

- `accept` appends a batch of linked lines with `audit.writer.JsonlWriter` (one `os.write` on an
  `O_APPEND` descriptor; a file deleted or replaced underneath is noticed and created again).
  A batch that cannot be written is kept and written first by the next `ready` or `accept`, so
  the file's copy of the chain never has a gap; while it is kept, `ready` says why.
- `durable` is group commit: each caller notes how many batches were written when it asked and
  waits until an fsync that covers them has finished. One syncer thread (started by `run`)
  does the fsyncs, one at a time; a caller asks for an fsync covering every batch written so
  far, replacing the request still waiting, so with many sessions committing at once one fsync
  serves them all, and the trio thread never blocks on the disk. The thread reports back with
  `TrioToken.run_sync_soon` (a few microseconds, where a worker thread per fsync costs tens).
  It fsyncs a duplicate of the descriptor, so a rotation may close the file meanwhile.
- Rotation (`rotation_due`, `rotate`): the trail asks before each batch; when the live file has
  reached `rotate_bytes` or is `rotate_seconds` old, the trail writes a signed checkpoint as the
  file's last record, then the file is fsync'd, renamed to `<path>.<UTC time>` (`audit.jsonl.
  20261207T093000Z`, `.0001`, `.0002` ... on a clash; the names sort in writing order) and a new file
  is opened at the path. Its first record names the hash of the old file's last: each file
  continues the chain of the one before it, and each rotated file ends on a signature.
- `last_link` reads where the chain stands from the end of the live file (or the newest rotated
  one when the live file is empty): the gateway continues its chain across restarts. A last line
  cut short (power lost during a write) is left as it is, on a line of its own: verification
  names it.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import threading
import time

import msgspec
import trio

from sqlward.audit.sinks import SinkError, SinkStatus, decode_head
from sqlward.audit.writer import AuditWriteError, JsonlWriter

log = logging.getLogger("sqlward.audit")

__all__ = ["FileSink", "last_line", "rotated_files"]

_TAIL = 1 << 16  # bytes read from the end of a file to find its last line (records are smaller)




def rotated_files(path: str) -> list[str]:
    """The rotated siblings of `path`, oldest first: by time stamp, then counter as a number."""
    return sorted((p for p in glob.glob(glob.escape(path) + ".*") if _is_rotated_name(path, p)), key=lambda p: _rotation_key(path, p))


def _rotation_key(path: str, candidate: str) -> tuple[str, int]:
    stamp, _, n = candidate[len(path) + 1:].partition(".")
    return stamp, int(n) if n else 0


def _is_rotated_name(path: str, candidate: str) -> bool:
    rest = candidate[len(path) + 1:]
    stamp, _, n = rest.partition(".")
    return len(stamp) == 16 and stamp.endswith("Z") and stamp[8] == "T" and (not n or n.isdigit())


def last_line(path: str) -> bytes | None:
    """The last complete line of a file (with its newline), or None when it has none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return None
            start = max(0, size - _TAIL)
            f.seek(start)
            tail = f.read()
    except FileNotFoundError:
        return None
    end = tail.rfind(b"\n")
    if end < 0:
        return None
    begin = tail.rfind(b"\n", 0, end) + 1
    if begin == 0 and start > 0:
        return None  # a line longer than the window: not one of ours
    return tail[begin:end + 1]


class FileSink:
    """One JSON-lines file of the trail (module doc)."""

    kind = "file"

    def __init__(
        self, path: str, *, name: str = "file", required: bool = True, rotate_bytes: int = 0,
        rotate_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.path = path
        self.required = required
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._rotates = bool(rotate_bytes or rotate_seconds)
        try:
            self._writer = JsonlWriter(path)
        except AuditWriteError as exc:
            raise SinkError(str(exc)) from exc
        self._size = self._file_size()
        self._opened = time.time()
        self._kept: bytes = b""  # a batch that could not be written yet
        self._problem = ""
        self._written = 0  # batches written
        self._synced = 0  # batches covered by a finished fsync
        self._done = trio.Event()  # set (and replaced) each time an fsync ends
        self._asked = 0  # batches the latest fsync asked for covers
        self._cond = threading.Condition()  # guards _job and _stop (shared with the thread)
        self._job: tuple[int, int] | None = None  # (batches covered, descriptor) for the thread
        self._stop = False
        self._sync_error = ""
        self._running = False  # the syncer task is running

    def _file_size(self) -> int:
        fd = self._writer.fd
        return os.fstat(fd).st_size if fd is not None else 0

    # -- TrailSink ---------------------------------------------------------------------------

    def ready(self) -> str | None:
        if self._kept:
            try:
                self._write(self._kept)
            except SinkError:
                return self._problem
            self._kept = b""
        return None

    def accept(self, data: bytes) -> None:
        if self._kept:
            data = self._kept + data
            self._kept = b""
        try:
            self._write(data)
        except SinkError:
            self._kept = data
            raise

    def steady(self, incoming: int) -> bool:
        """Nothing kept from a failed batch and no rotation due: `Trail.append`'s short path."""
        return not self._kept and (not self._rotates or not self.rotation_due(incoming))

    def write_linked(self, data: bytes) -> None:
        """`accept` for the short path (nothing kept): a failed write keeps nothing, the trail
        takes the batch back."""
        self._write(data)

    def withdraw(self) -> None:
        """Forget the batch kept after a failed `accept` (the trail took it back); the problem
        stays reported until a write succeeds."""
        self._kept = b""

    def _write(self, data: bytes) -> None:
        try:
            self._writer.write_now(data)
        except AuditWriteError as exc:
            self._problem = str(exc)
            raise SinkError(self._problem) from exc
        self._problem = ""
        self._size += len(data)
        self._written += 1

    async def durable(self, timeout: float) -> None:
        target = self._written
        if self._synced >= target:
            return
        if not self._running:  # no syncer (a tool, a test harness): fsync here, blocking
            fd = self._writer.fd
            try:
                if fd is not None:
                    os.fdatasync(fd)
            except OSError as exc:
                raise SinkError(f"cannot fsync audit file {self.path!r}: {exc.strerror}") from exc
            self._synced = target
            return
        # Let the sessions that are ready to run write their batches first: the fsync asked
        # for next then covers them too.
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(timeout) as scope:
            while self._synced < target:
                done = self._done
                self._request_sync()  # may fsync at once (no descriptor to spare): done is set
                await done.wait()
                if self._sync_error:
                    raise SinkError(self._sync_error)
        if scope.cancelled_caught:
            raise SinkError(f"audit file {self.path}: fsync did not finish within {timeout:g} s")

    def _request_sync(self) -> None:
        """Ask the syncer thread for an fsync covering every batch written so far (the job
        waiting for it, if any, is replaced: one fsync serves all)."""
        target = self._written
        if self._asked >= target:
            return
        fd = self._writer.fd
        if fd is None:
            return
        try:
            dup = os.dup(fd)  # the thread's own: a rotation may close the file meanwhile
        except OSError:
            # No descriptor to spare (a process at its limit): fsync here, blocking the loop
            # for one fsync, rather than fail a statement that could be recorded.
            try:
                os.fdatasync(fd)
            except OSError as exc:
                self._finished(self._synced, f"cannot fsync audit file {self.path!r}: {exc.strerror}")
                return
            self._finished(target, "")
            return
        with self._cond:
            old, self._job = self._job, (target, dup)
            self._cond.notify()
        if old is not None:
            os.close(old[1])
        self._asked = target

    async def run(self) -> None:
        """The syncer (module doc): a thread doing one fsync at a time, each covering every
        batch written before it was asked for; it reports back through the trio token."""
        token = trio.lowlevel.current_trio_token()
        self._stop = False
        thread = threading.Thread(target=self._sync_thread, args=(token,), name=f"sqlward-fsync-{self.name}", daemon=True)
        thread.start()
        self._running = True
        try:
            await trio.sleep_forever()
        finally:
            self._running = False
            with self._cond:
                self._stop = True
                self._cond.notify()
            # Waiters see the sync they asked for fail rather than hang.
            self._sync_error = "the audit file's syncer stopped"
            done, self._done = self._done, trio.Event()
            done.set()

    def _sync_thread(self, token: trio.lowlevel.TrioToken) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    if self._job is not None:
                        os.close(self._job[1])
                        self._job = None
                    return
                job, self._job = self._job, None
            assert job is not None
            target, fd = job
            error = ""
            try:
                os.fdatasync(fd)
            except OSError as exc:
                error = f"cannot fsync audit file {self.path!r}: {exc.strerror}"
            finally:
                os.close(fd)
            try:
                token.run_sync_soon(self._finished, target, error)
            except trio.RunFinishedError:
                return

    def _finished(self, target: int, error: str) -> None:
        """In the trio thread: an fsync ended (covering batches up to `target`)."""
        if error:
            self._sync_error = error
            self._asked = self._synced  # ask again
            log.error("%s", error)
        else:
            self._sync_error = ""
            self._synced = max(self._synced, target)
        done, self._done = self._done, trio.Event()
        done.set()

    def status(self) -> SinkStatus:
        problem = self._problem or self._sync_error
        return SinkStatus(
            name=self.name, kind=self.kind, required=self.required, ok=not problem, problem=problem,
            backlog=1 if self._kept else 0, backlog_bytes=len(self._kept),
        )

    def last_link_now(self) -> tuple[int, str] | None:
        """`last_link`, read at once (a file read; the trail calls it when it is made)."""
        for path in [self.path, *reversed(rotated_files(self.path))]:
            line = last_line(path)
            if line is None:
                continue
            try:
                seq = decode_head(line).chain.seq
            except msgspec.DecodeError:
                log.warning("audit file %s does not end with a chained record; a new chain begins", path)
                return None
            return seq, hashlib.sha256(line).hexdigest()
        return None

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        return self.last_link_now()

    async def aclose(self, timeout: float) -> None:
        fd = self._writer.fd
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as exc:
                log.error("cannot fsync audit file %s at close: %s", self.path, exc.strerror)
        self._writer.close()

    def close(self) -> None:
        self._writer.close()

    # -- rotation ------------------------------------------------------------------------------

    def rotation_due(self, incoming: int) -> bool:
        """Whether the live file should be closed before `incoming` more bytes go in."""
        if self._size == 0:
            return False
        if self._rotate_bytes and self._size + incoming > self._rotate_bytes:
            return True
        return bool(self._rotate_seconds) and time.time() - self._opened >= self._rotate_seconds

    def rotate(self) -> str:
        """fsync and rename the live file, open a new one; returns the rotated file's name."""
        fd = self._writer.fd
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as exc:
                raise SinkError(f"cannot fsync audit file {self.path!r} before rotating: {exc.strerror}") from exc
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{self.path}.{stamp}"
        n = 0
        while os.path.exists(target):
            n += 1
            target = f"{self.path}.{stamp}.{n:04d}"  # padded: the names sort in writing order
        try:
            os.rename(self.path, target)
            writer = JsonlWriter(self.path)
        except (OSError, AuditWriteError) as exc:
            raise SinkError(f"cannot rotate audit file {self.path!r}: {exc}") from exc
        self._writer.close()
        self._writer = writer
        self._size = 0
        self._opened = time.time()
        log.info("audit file rotated: %s", target)
        return target
