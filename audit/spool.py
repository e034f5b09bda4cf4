"""The spool in front of a remote audit sink: records wait on local disk until delivered.

`Spool` is the `audit.sinks.TrailSink` of every remote destination (`audit.sinks.postgres`,
`audit.sinks.otlp`). How it works:

- `accept(data)` appends the linked lines to the active segment file of the spool directory
  with `os.write` on an `O_APPEND` descriptor (a short write is finished; a failed one is cut
  back with `ftruncate`). No fsync on this path: a few microseconds, and the records survive a
  kill -9 of the gateway (they are in the kernel). A batch that could not be written is kept in
  memory and written first, by the next `ready()` or `accept()` (so the spool's copy of the chain
  has no gap), and `ready()` says why until it is written.
- The stream of accepted bytes has logical offsets; a segment file is named by the offset of its
  first byte (`00000000000000000000.seg`) and a new one is started when the active one has
  `segment_bytes` (16 MiB). The shipper (`run()`) delivers the lines from the shipped offset on,
  in order, in batches of everything available up to 1 MiB / 5000 lines (group commit: while a
  delivery is in flight, the next batch gathers). A failed delivery is retried with backoff
  (0.1 s doubling to 5 s; `durable()` asks for an early retry, at most every 0.1 s).
- After each delivery the shipped offset is written to `state.json` (written to a temporary file
  and renamed over it, no fsync) and segments wholly below it are removed. A crash between a
  delivery and the state write, or a state file lost with the machine, makes the spool deliver
  a batch again after the restart: a destination takes a re-sent batch without duplicates
  (PostgreSQL: `ON CONFLICT (gateway, seq) DO NOTHING`, with a check that the stored line is the
  same; OTLP is at-least-once). At start, the state file and the segments say what is left; a
  segment whose end is not a complete line (a torn write: power loss) is cut back to its last
  newline, and the lines left are delivered first.
- The newest accepted bytes are also kept in memory (at most `memory_bytes`, 8 MiB: older
  chunks are dropped from memory first), so a shipper that keeps up never reads the disk; one
  that is behind reads the segments (in a worker thread).

`durable(timeout)` waits until everything accepted before the call is delivered. It raises
`SinkError` when that does not happen within `timeout`, or as soon as a delivery attempt ends
in failure after the call (with the destination's reason: "postgres sink 'audit-db':
connection refused"), so statements are refused at once while the destination is down, not after
a timeout each. `ready()` refuses new records while the spool holds `max_bytes` or more not yet
delivered, or holds a batch it could not write. `status()` shows the backlog (records and bytes
not yet delivered) and the last delivery problem.

`remote_sink(cfg, gateway=, spool_dir=)` builds a spool and its destination from an
`[[audit.sinks]]` table (kind = "postgres" or "otlp"); `spool_dir` is that sink's own folder.

Everything runs on the gateway's trio thread; blocking file work other than the hot-path append
(reading segments, writing the state, removing segments) goes to `trio.to_thread`. The
destination does its own I/O (psycopg in a worker thread, httpx on trio).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import deque
from collections.abc import Mapping
from typing import Protocol

import msgspec
import trio

from sqlward.audit.sinks import Destination, SinkError, SinkStatus

__all__ = ["RemoteSinkSettings", "Spool", "describe_error", "remote_sink"]

log = logging.getLogger("sqlward.audit")

SEGMENT_BYTES = 16 << 20
BATCH_BYTES = 1 << 20
BATCH_LINES = 5000
MEMORY_BYTES = 8 << 20
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
STATE_FILE = "state.json"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_TAIL_BLOCK = 1 << 16


class _State(msgspec.Struct, frozen=True, kw_only=True):
    """`state.json`: the logical offset up to which the destination has the lines."""

    v: int = 1
    shipped: int


class _Link(msgspec.Struct, frozen=True):
    seq: int


class _Linked(msgspec.Struct, frozen=True):
    """What `last_link` reads of a linked line (every other key is ignored)."""

    chain: _Link


_decode_state = msgspec.json.Decoder(_State).decode
_decode_linked = msgspec.json.Decoder(_Linked).decode


def describe_error(exc: BaseException) -> str:
    """One line saying why a delivery failed (a driver's message may span lines)."""
    text = " ".join(str(exc).split())
    if not text:  # httpx's timeouts and TLS errors say nothing themselves: ask their causes
        cause = exc.__cause__ or exc.__context__
        depth = 0
        while cause is not None and depth < 5 and not text:
            text = " ".join(str(cause).split())
            cause, depth = cause.__cause__ or cause.__context__, depth + 1
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def link_of(line: bytes) -> tuple[int, str]:
    """(chain seq, SHA-256 hex) of one linked line (ending in a newline)."""
    try:
        seq = _decode_linked(line).chain.seq
    except msgspec.DecodeError as exc:
        raise SinkError(f"not a linked audit line: {exc}") from exc
    return seq, hashlib.sha256(line).hexdigest()


class _Segment:
    """One spool file: the bytes [start, start + size) of the stream (size: as written whole)."""

    __slots__ = ("start", "size", "path")

    def __init__(self, start: int, size: int, path: str) -> None:
        self.start = start
        self.size = size
        self.path = path

    @property
    def end(self) -> int:
        return self.start + self.size


def _segment_path(directory: str, start: int) -> str:
    return os.path.join(directory, f"{start:020d}.seg")


def _cut_torn_tail(path: str, size: int) -> int:
    """Cut a file back to its last newline (a torn write); the size it has after."""
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - _TAIL_BLOCK)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep != size:
            log.warning("audit spool: %s ended in a torn line; cut back from %d to %d bytes", path, size, keep)
            f.truncate(keep)
    return keep


def _read_range(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        parts: list[bytes] = []
        done = 0
        while done < length:
            chunk = os.pread(fd, length - done, offset + done)
            if not chunk:
                raise SinkError(f"audit spool file {path} is shorter than expected (removed or cut by hand?)")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _count_lines(segments: list[tuple[str, int, int]]) -> int:
    """Newlines in each (path, offset, length) range."""
    total = 0
    for path, offset, length in segments:
        pos = 0
        while pos < length:
            n = min(BATCH_BYTES * 8, length - pos)
            total += _read_range(path, offset + pos, n).count(b"\n")
            pos += n
    return total


def _write_state(directory: str, shipped: int, remove: list[str]) -> None:
    path = os.path.join(directory, STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(_State(shipped=shipped)))
    os.replace(tmp, path)
    for old in remove:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass


def _split_lines(data: bytes, max_lines: int, max_bytes: int) -> tuple[list[bytes], int]:
    """Whole lines from the start of `data`: at most `max_lines`, and at most `max_bytes` unless
    the first line alone is longer. Returns the lines and how many bytes they span."""
    lines: list[bytes] = []
    pos = 0
    size = len(data)
    while pos < size and len(lines) < max_lines:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        if lines and nl + 1 > max_bytes:
            break
        lines.append(data[pos:nl + 1])
        pos = nl + 1
    return lines, pos


class Spool:
    """A remote sink's spool and shipper (module doc); a `TrailSink`.

    `directory` is this sink's own folder (made when missing); nothing else may write in it.
    The constructor reads what an earlier run left there (a few small reads; cut torn tails).
    """

    def __init__(
        self,
        name: str,
        kind: str,
        required: bool,
        destination: Destination,
        directory: str,
        max_bytes: int,
        gateway: str,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        memory_bytes: int = MEMORY_BYTES,
        batch_bytes: int = BATCH_BYTES,
        batch_lines: int = BATCH_LINES,
    ) -> None:
        self.name = name
        self.kind = kind
        self.required = required
        self.destination = destination
        self.directory = directory
        self.gateway = gateway
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._memory_bytes = memory_bytes
        self._batch_bytes = batch_bytes
        self._batch_lines = batch_lines

        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the active (last) segment, opened for appending
        self._new_segment = False  # the next append starts a new segment (a failed cut-back)
        self._unwritten: deque[tuple[bytes, int]] = deque()  # (batch, lines) the disk refused, oldest first
        self._unwritten_lines = 0
        self._write_problem = ""
        self._end = 0  # logical offset after the last accepted byte on disk
        self._shipped = 0  # logical offset the destination has everything below
        self._state_shipped = 0  # what state.json says
        self._lines_accepted = 0  # since start (plus the recovered backlog, once counted)
        self._lines_shipped = 0
        self._recovered_unknown = False  # a backlog from an earlier run not yet counted
        self._recovered_end = 0  # ... which ends here
        self._mem: deque[tuple[int, bytes]] = deque()  # (offset, chunk): the newest bytes
        self._mem_bytes = 0
        self._problem = ""  # the last delivery error ("" after a success)
        self._attempts = 0  # delivery attempts finished (success or failure)
        self._failures = 0  # delivery attempts failed
        self._progress = trio.Event()  # set and replaced whenever an attempt ends
        self._wake = trio.Event()  # wakes an idle shipper: new records
        self._retry = trio.Event()  # cuts a failed shipper's backoff short (durable)
        self._last_attempt = -math.inf
        self._ship_lock = trio.Lock()
        self._closed = False
        self._recover()

    # -- start -------------------------------------------------------------------------------

    def _recover(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            raise SinkError(f"{self._who}: cannot use spool directory {self.directory!r}: {exc.strerror}") from exc
        starts = [int(m.group(1)) for n in names if (m := _SEGMENT_NAME.match(n))]
        for start in starts:
            path = _segment_path(self.directory, start)
            try:
                size = _cut_torn_tail(path, os.stat(path).st_size)
            except OSError as exc:
                raise SinkError(f"{self._who}: cannot read spool file {path!r}: {exc.strerror}") from exc
            self._segments.append(_Segment(start, size, path))
        # A segment must begin where the one before ends; a gap (a file removed by hand) would
        # lose records silently: refuse to start.
        for before, after in zip(self._segments, self._segments[1:]):
            if before.end > after.start >= before.start:
                # A batch that failed part-way and could not be cut back: it was written again,
                # whole, at the start of the next segment. The fragment goes.
                before.size = after.start - before.start
                try:
                    os.truncate(before.path, before.size)
                except OSError as exc:
                    raise SinkError(f"{self._who}: cannot cut spool file {before.path!r}: {exc.strerror}") from exc
            elif before.end != after.start:
                # A gap (a file removed by hand, a torn write lost with the machine) would lose
                # records silently: refuse to start.
                raise SinkError(f"{self._who}: spool {self.directory!r} has a gap between {before.path} and {after.path}"
                                " (records lost); deliver or move the spool away by hand")
        shipped = 0
        state_path = os.path.join(self.directory, STATE_FILE)
        try:
            with open(state_path, "rb") as f:
                shipped = _decode_state(f.read()).shipped
        except FileNotFoundError:
            pass
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Lost or torn: deliver again from the oldest segment (the destination dedupes).
            log.warning("%s: spool state %s unreadable (%s); re-sending from the oldest segment", self._who, state_path, exc)
        if self._segments:
            first, last = self._segments[0], self._segments[-1]
            shipped = min(max(shipped, first.start), last.end)
            self._end = last.end
        else:
            self._end = shipped
        self._shipped = self._state_shipped = shipped
        self._recovered_end = self._end  # accept() counts what comes after
        self._recovered_unknown = self._shipped < self._end
        if self._recovered_unknown:
            log.info("%s: %d bytes spooled by an earlier run are delivered first", self._who, self._end - self._shipped)

    async def _count_recovered(self) -> None:
        if not self._recovered_unknown:
            return
        ranges = self._disk_ranges(self._shipped, self._recovered_end)
        count = await trio.to_thread.run_sync(_count_lines, ranges)
        if self._recovered_unknown:  # nothing shipped meanwhile (the count is of the same range)
            self._lines_accepted += count
            self._recovered_unknown = False

    # -- the TrailSink -----------------------------------------------------------------------

    @property
    def _who(self) -> str:
        return f"{self.kind} sink {self.name!r}"

    def ready(self) -> str | None:
        if self._unwritten:
            try:
                self._flush_unwritten()
            except SinkError as exc:
                return str(exc)
        backlog = self._end - self._shipped
        if backlog >= self._max_bytes:
            why = f": {self._problem}" if self._problem else ""
            return f"{self._who}: spool full ({backlog} bytes not yet delivered, limit {self._max_bytes}){why}"
        return None

    def accept(self, data: bytes) -> None:
        if self._closed:
            raise SinkError(f"{self._who}: closed")
        if not data:
            return
        lines = data.count(b"\n")
        self._unwritten.append((data, lines))
        self._unwritten_lines += lines
        self._flush_unwritten()

    def _flush_unwritten(self) -> None:
        while self._unwritten:
            data, lines = self._unwritten[0]
            try:
                self._append(data)
            except OSError as exc:
                self._write_problem = f"{self._who}: cannot write spool {self.directory!r}: {exc.strerror or exc}"
                raise SinkError(self._write_problem) from exc
            self._unwritten.popleft()
            self._unwritten_lines -= lines
            self._lines_accepted += lines
            self._write_problem = ""
            self._remember(self._end - len(data), data)
            self._wake.set()

    def _append(self, data: bytes) -> None:
        """One batch onto the active segment, whole or not at all (module doc)."""
        active = self._segments[-1] if self._segments else None
        if active is None or self._new_segment or active.size >= self._segment_bytes:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            path = _segment_path(self.directory, self._end)
            if active is not None and active.path == path:  # an empty one: use it
                os.truncate(path, 0)
            else:
                active = _Segment(self._end, 0, path)
                self._segments.append(active)
            self._new_segment = False
        if self._fd is None:
            self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        done = 0
        view = memoryview(data)
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError:
            if done:
                try:
                    os.ftruncate(self._fd, active.size)
                except OSError:
                    self._new_segment = True  # the fragment stays past this segment's size
            os.close(self._fd)  # opened again for the retry (the path may be fixed by then)
            self._fd = None
            raise
        active.size += len(data)
        self._end += len(data)

    def _remember(self, offset: int, data: bytes) -> None:
        self._mem.append((offset, data))
        self._mem_bytes += len(data)
        while self._mem and self._mem_bytes > self._memory_bytes:
            _, old = self._mem.popleft()
            self._mem_bytes -= len(old)

    def _forget_shipped(self) -> None:
        while self._mem and self._mem[0][0] + len(self._mem[0][1]) <= self._shipped:
            _, old = self._mem.popleft()
            self._mem_bytes -= len(old)

    async def durable(self, timeout: float) -> None:
        if self._unwritten:
            raise SinkError(self._write_problem or f"{self._who}: records not yet written to the spool")
        target = self._end
        failures = self._failures
        with trio.move_on_after(timeout):
            while self._shipped < target:
                if self._failures > failures:
                    raise SinkError(f"{self._who}: {self._problem}")
                progress = self._progress
                if self._problem:  # the shipper is backing off: ask for a retry now
                    due = self._last_attempt + BACKOFF_MIN
                    if trio.current_time() < due:
                        with trio.move_on_at(due):
                            await progress.wait()
                        continue
                    self._retry.set()
                await progress.wait()
            return
        why = f": {self._problem}" if self._problem else ""
        raise SinkError(f"{self._who}: not delivered within {timeout:g} s ({self._end - self._shipped} bytes waiting){why}")

    def status(self) -> SinkStatus:
        problem = self._write_problem or (f"{self._who}: {self._problem}" if self._problem else "")
        backlog_bytes = self._end - self._shipped + sum(len(d) for d, _ in self._unwritten)
        backlog = self._lines_accepted - self._lines_shipped + self._unwritten_lines
        if self._recovered_unknown:
            backlog = max(backlog, 1)  # not counted yet: at least one
        return SinkStatus(name=self.name, kind=self.kind, required=self.required, ok=not problem,
                          problem=problem, backlog=backlog, backlog_bytes=backlog_bytes)

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        if self._shipped < self._end:
            return link_of(await self._last_line())
        try:
            return await self.destination.last_link(gateway)
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"{self._who}: cannot read where its chain ends: {describe_error(exc)}") from exc

    async def _last_line(self) -> bytes:
        if self._mem:
            offset, chunk = self._mem[-1]
            start = chunk.rfind(b"\n", 0, len(chunk) - 1) + 1
            return chunk[start:]
        last = next(s for s in reversed(self._segments) if s.size > 0)

        def read() -> bytes:
            length = min(last.size, _TAIL_BLOCK)
            while True:
                tail = _read_range(last.path, last.size - length, length)
                nl = tail.rfind(b"\n", 0, len(tail) - 1)
                if nl >= 0 or length == last.size:
                    return tail[nl + 1:]
                length = min(last.size, length * 4)

        return await trio.to_thread.run_sync(read)

    async def run(self) -> None:
        await self._count_recovered()
        backoff = BACKOFF_MIN
        while True:
            if self._shipped >= self._end:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            if await self._ship_once():
                backoff = BACKOFF_MIN
                continue
            self._retry = trio.Event()  # new records do not cut the backoff short; durable() may
            with trio.move_on_after(backoff):
                await self._retry.wait()
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def aclose(self, timeout: float) -> None:
        """Deliver what is left within `timeout` (what is not stays on disk for the next start),
        then close the spool file and the destination."""
        with trio.move_on_after(timeout):
            await self._count_recovered()
            while self._shipped < self._end:
                if not await self._ship_once():
                    await trio.sleep(BACKOFF_MIN)
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._shipped < self._end:
            log.warning("%s: %d bytes not delivered at shutdown stay in %s", self._who, self._end - self._shipped, self.directory)
        with trio.move_on_after(max(timeout, 1.0)) as scope:
            scope.shield = True
            await self.destination.aclose()

    # -- the shipper -------------------------------------------------------------------------

    def _disk_ranges(self, start: int, end: int) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        for seg in self._segments:
            lo, hi = max(start, seg.start), min(end, seg.end)
            if lo < hi:
                out.append((seg.path, lo - seg.start, hi - lo))
        return out

    async def _next_batch(self) -> tuple[list[bytes], int]:
        """The lines from the shipped offset on (module doc) and the bytes they span."""
        start = self._shipped
        mem_start = self._mem[0][0] if self._mem else self._end
        if start >= mem_start:
            parts: list[bytes] = []
            size = 0
            for offset, chunk in self._mem:
                if offset + len(chunk) <= start:
                    continue
                piece = chunk[start - offset:] if offset < start else chunk
                parts.append(piece)
                size += len(piece)
                if size >= self._batch_bytes:
                    break
            return _split_lines(b"".join(parts), self._batch_lines, self._batch_bytes)
        seg = next(s for s in self._segments if s.start <= start < s.end)
        stop = min(seg.end, mem_start)
        length = min(stop - start, self._batch_bytes)
        while True:
            data = await trio.to_thread.run_sync(_read_range, seg.path, start - seg.start, length)
            lines, used = _split_lines(data, self._batch_lines, self._batch_bytes)
            if lines or start + length >= stop:
                if not lines:
                    raise SinkError(f"{self._who}: spool file {seg.path} holds a line without its end")
                return lines, used
            length = min(stop - start, length * 2)  # one line longer than a batch

    async def _ship_once(self) -> bool:
        """Deliver one batch; True when delivered (or nothing to do), False when it failed."""
        async with self._ship_lock:
            if self._shipped >= self._end:
                return True
            try:
                lines, used = await self._next_batch()
            except (OSError, SinkError) as exc:
                return self._failed(exc)
            try:
                await self.destination.deliver(lines)
            except Exception as exc:  # whatever the destination raises: retried (fail closed)
                return self._failed(exc)
            self._shipped += used
            self._lines_shipped += len(lines)
            if self._problem:
                log.warning("%s: delivering again", self._who)
            self._problem = ""
            self._attempts += 1
            self._last_attempt = trio.current_time()
            self._forget_shipped()
            self._notify()
            await self._save_state()
            return True

    def _failed(self, exc: BaseException) -> bool:
        reason = describe_error(exc)
        if reason != self._problem:
            log.warning("%s: delivery failed (retrying): %s", self._who, reason)
        self._problem = reason
        self._attempts += 1
        self._failures += 1
        self._last_attempt = trio.current_time()
        self._notify()
        return False

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _save_state(self) -> None:
        shipped = self._shipped
        done = [s for s in self._segments[:-1] if s.end <= shipped]  # never the active one
        try:
            await trio.to_thread.run_sync(_write_state, self.directory, shipped, [s.path for s in done])
        except OSError as exc:
            log.warning("%s: cannot write spool state: %s", self._who, exc)
            return
        self._state_shipped = shipped
        for seg in done:
            self._segments.remove(seg)


class RemoteSinkSettings(Protocol):
    """What a remote sink reads of its `[[audit.sinks]]` table (`gateway.config.AuditSinkConfig`
    has these; `audit` does not import `gateway`: DESIGN.md section 2)."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def required(self) -> bool: ...
    @property
    def dsn(self) -> str: ...
    @property
    def password_file(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def ca_file(self) -> str: ...
    @property
    def timeout_seconds(self) -> float: ...
    @property
    def spool_max_bytes(self) -> int: ...


def remote_sink(cfg: RemoteSinkSettings, *, gateway: str, spool_dir: str) -> Spool:
    """The sink of an `[[audit.sinks]]` table with kind = "postgres" or "otlp": its destination
    behind a spool in `spool_dir`, this sink's own folder (made when missing)."""
    destination: Destination
    if cfg.kind == "postgres":
        from sqlward.audit.sinks.postgres import make_destination as postgres_destination

        destination = postgres_destination(cfg, gateway=gateway)
    elif cfg.kind == "otlp":
        from sqlward.audit.sinks.otlp import make_destination as otlp_destination

        destination = otlp_destination(cfg, gateway=gateway)
    else:
        raise ValueError(f"not a remote audit sink: {cfg.kind}")
    return Spool(cfg.name or cfg.kind, cfg.kind, cfg.required, destination, spool_dir, cfg.spool_max_bytes, gateway)
