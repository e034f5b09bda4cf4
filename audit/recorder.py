"""The one recorder of audit events: a per-session scope stamps the envelope, batches are
written at the relay's flush points through an async sink.

How it works:

- `Recorder` is one per gateway process. It owns the sink (`audit.writer.JsonlWriter` today; a
  remote sink later implements the same `Sink` protocol) and hands out scopes.
- `AuditScope` is one per session (and one for the gateway itself, connection id ""). `add`
  encodes an event at once (msgspec) and stamps the envelope in front of it: `time` (Unix
  seconds), `time_text` (RFC 3339 UTC with milliseconds, formatted once per second), `gateway`,
  `connection_id`, `seq` (1, 2, 3, ... per scope: a gap means a lost record) and, when set,
  `trace_id` / `span_id`. The envelope keys come first in the JSON object; the event's own keys
  (`event`, ...) follow. Nothing is written yet.
- `flush` hands every line added since the last flush to the sink in one call, so one system
  call per flush point instead of one per event. The adapters flush where the relay already
  has a flush point: before forwarding what a client sent upstream (so the decision is on disk
  before the statement runs) and before forwarding what the upstream answered to the client
  (so the completion is on disk before the client sees it). `record` is `add` + `flush`.
- Any failure of the sink raises `AuditUnavailable`; the caller refuses or closes (fail
  closed). The lines of a failed batch are dropped, and their sequence numbers stay unused, so
  the gap shows in the trail (the trail took none of them: see `audit.trail`). `flush_quietly`
  is for events about the connection itself (opened, refused, closed): a failure is logged,
  not raised.

Ordering: a session's events reach the sink in the order they were added; sinks write one
batch at a time (the JSONL file with a single `os.write` of whole lines on an O_APPEND
descriptor), so batches of different sessions never interleave inside a line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

log = logging.getLogger("sqlward.audit")

# `.000Z",` ... `.999Z",`: the end of the time_text value, by millisecond.
_MILLIS = tuple(b'.%03dZ",' % ms for ms in range(1000))

__all__ = ["AuditScope", "AuditUnavailable", "Recorder", "Sink"]


class AuditUnavailable(Exception):
    """An audit record could not be written; fail closed."""


class Sink(Protocol):
    """Where audit lines go (`audit.trail.Trail` in the gateway). `write` gets one batch of
    complete JSON lines (each ending in a newline) and returns once they are written (in order,
    ahead of any later batch); `commit` returns once everything written before it is durable as
    configured ([audit] durability). Both raise on failure."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self, *, before_run: bool = False) -> None: ...

    def close(self) -> None: ...


class Observer(Protocol):
    """Sees each event as a scope adds it, before it is encoded (telemetry: spans and metrics
    from the same events the trail records). It may set the scope's `trace_id` / `span_id`,
    which the envelope of that event and later ones carries. It must not raise or block."""

    def observe(self, scope: AuditScope, event: msgspec.Struct) -> None: ...


class NullSink:
    """Records nothing (`sqlward policy test` never opens the audit file)."""

    async def write(self, data: bytes) -> None:
        return None

    async def commit(self, *, before_run: bool = False) -> None:
        return None

    def close(self) -> None:
        return None


class Recorder:
    """One per gateway process: the sink, the gateway's name, the clock (see module doc)."""

    def __init__(
        self, gateway: str, sink: Sink, *, clock: Callable[[], float] = time.time, observers: tuple[Observer, ...] = (),
    ) -> None:
        self.gateway = gateway
        self.sink = sink
        self.observers = observers
        self._clock = clock
        self._encode = msgspec.json.Encoder().encode
        self._gateway_json = msgspec.json.encode(gateway)
        self._second = -1
        self._second_text = b""
        self.gateway_scope = self.scope("")

    def scope(self, connection_id: str) -> AuditScope:
        """A new per-session scope (its sequence numbers start at 1)."""
        return AuditScope(self, connection_id)

    def _stamp(self) -> bytes:
        """`{"time":...,"time_text":"...",` for now (about 0.5 µs: the float through msgspec, the
        second's text once per second, the millisecond suffix from a table)."""
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = b',"time_text":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        millis = int((now - second) * 1000.0 + 0.0005)  # + half a microsecond: .353 is 352.9999 ms
        return b'{"time":' + self._encode(now) + self._second_text + _MILLIS[millis if millis < 1000 else 999]

    async def write(self, data: bytes) -> None:
        try:
            await self.sink.write(data)
        except Exception as exc:  # any failure means "not recorded": the caller must refuse
            raise AuditUnavailable(f"audit record not written: {exc}") from exc

    async def commit(self, *, before_run: bool = False) -> None:
        try:
            await self.sink.commit(before_run=before_run)
        except Exception as exc:  # not durable: the caller must not show the result
            raise AuditUnavailable(f"audit record not made durable: {exc}") from exc

    def close(self) -> None:
        self.sink.close()


class AuditScope:
    """The envelope of one session's events and the lines not yet flushed (see module doc)."""

    __slots__ = ("_recorder", "connection_id", "_head", "_seq", "_lines", "trace_id", "span_id", "_writes", "_committed")

    def __init__(self, recorder: Recorder, connection_id: str) -> None:
        self._recorder = recorder
        self.connection_id = connection_id
        self._head = b'"gateway":%s,"connection_id":%s,' % (
            recorder._gateway_json, msgspec.json.encode(connection_id),
        )
        self._seq = 0
        self._lines: list[bytes] = []
        self.trace_id = ""  # set by telemetry when the session has a span
        self.span_id = ""
        self._writes = 0  # batches this scope wrote
        self._committed = 0  # of those, how many a finished commit covers

    @property
    def pending(self) -> int:
        """Events added and not yet flushed."""
        return len(self._lines)

    @property
    def seq(self) -> int:
        """The sequence number of the last event added."""
        return self._seq

    def add(self, event: msgspec.Struct) -> None:
        """Stamp and encode `event`; it is written at the next flush."""
        self._seq = seq = self._seq + 1
        recorder = self._recorder
        if recorder.observers:
            for observer in recorder.observers:
                observer.observe(self, event)
        if self.trace_id:
            trace = b'"trace_id":"%s","span_id":"%s",' % (self.trace_id.encode(), self.span_id.encode())
            self._lines.append(b"".join((recorder._stamp(), self._head, b'"seq":%d,' % seq, trace, recorder._encode(event)[1:], b"\n")))
        else:
            self._lines.append(b'%s%s"seq":%d,%s\n' % (recorder._stamp(), self._head, seq, recorder._encode(event)[1:]))

    async def flush(self) -> None:
        """Write every pending line in one batch; AuditUnavailable when the sink fails (the
        batch is dropped: its sequence numbers stay unused)."""
        lines = self._lines
        if not lines:
            return
        self._lines = []
        await self._recorder.write(lines[0] if len(lines) == 1 else b"".join(lines))
        self._writes += 1

    async def commit(self) -> None:
        """`flush`, then wait until everything this gateway wrote so far is durable (group
        commit; at once with durability = "buffered"). For the flush points where a client is
        about to see a statement's result. AuditUnavailable on failure."""
        await self.flush()
        writes = self._writes
        if writes > self._committed:  # nothing of this session's is waiting otherwise
            await self._recorder.commit()
            self._committed = max(self._committed, writes)

    async def flush_before_run(self) -> None:
        """`flush` for the records of a statement about to run (its decision, a run of a
        prepared statement): written, and delivered to the sinks that must have them before it
        runs (required remote sinks with durability "sync": a destination that fails refuses
        the statement instead of finding out after it ran). AuditUnavailable on failure."""
        await self.flush()
        try:
            await self._recorder.commit(before_run=True)
        except AuditUnavailable:
            # The statement is refused: nothing of it runs, and the refusal the client gets
            # waits for no record (they stay in the sinks' keeping, delivered later).
            self._committed = self._writes
            raise

    async def record(self, event: msgspec.Struct) -> None:
        """`add` then `flush`: for events that must be durable before the caller goes on."""
        self.add(event)
        await self.flush()

    async def flush_quietly(self) -> bool:
        """`flush` for events about the connection itself: a failure is logged, not raised."""
        lost = len(self._lines)
        try:
            await self.flush()
        except AuditUnavailable as exc:
            log.error("audit unavailable: %d event(s) of connection %r lost: %s", lost, self.connection_id, exc)
            return False
        return True
