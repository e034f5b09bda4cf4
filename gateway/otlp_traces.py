"""OTLP traces without the SDK's encoder: spans written by hand in protobuf wire format, and a
small batch exporter that POSTs them (OTLP/HTTP, `application/x-protobuf`).

Why: the SDK's `encode_spans` + `SerializeToString` costs about 60 µs a span, in the batch
processor's thread, which holds the GIL against the gateway's trio thread (tracing every
session cost 30-50 % of `pgbench -S` throughput). Here a span is encoded once, when it ends,
from pieces encoded earlier and kept (the resource and scope once; a session's shared
attributes once per session; a statement shape's attributes once per fingerprint, in
`gateway.telemetry`), and the exporter's thread only joins ready bytes and sends them.

How it works:

- Encoding (sans-IO). The messages are opentelemetry/proto's: ExportTraceServiceRequest {1:
  ResourceSpans {1: Resource {1: KeyValue*}, 2: ScopeSpans {1: InstrumentationScope {1: name,
  2: version}, 2: Span*}}}; Span {1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7
  start (fixed64), 8 end (fixed64), 9 attributes, 13 links, 15 status, 16 flags (fixed32)};
  KeyValue {1 key, 2 AnyValue {1 string, 2 bool, 3 int64, 4 double, 5 ArrayValue {1 AnyValue*},
  6 KeyValueList {1 KeyValue*}, 7 bytes}}; Link {1 trace_id, 2 span_id, 6 flags}; Status {2
  message, 3 code}. Fields are written in field-number order and with the SDK encoder's
  choices (proto3 defaults left out, a oneof value always written, the status always present,
  flags = SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | IS_REMOTE when the parent is remote), so the
  bytes decode to what `encode_spans` gives for the same span (tests/unit/test_otlp_traces.py).
  `encode_span` returns the span as a ScopeSpans.spans field (tag, length, body): a batch is
  those bytes concatenated after one header (`Envelope.request`). An attribute whose value
  cannot be encoded (an unknown type, an int beyond int64, a string with a lone surrogate) is
  left out, as the SDK's encoder does.
- Exporting. `BatchExporter` holds a bounded deque (2048 items) filled by `put` on the
  gateway's thread, which never blocks: when the deque is full the item is dropped, counted
  (`dropped`) and the first drop is logged. Its thread sends batches of up to 512 items when
  that many are waiting, or whatever is there once a second, at `force_flush` and at
  `shutdown` (within the timeout given). `OtlpHttpSender` is the production `send`: one
  ExportTraceServiceRequest per batch POSTed over a kept-alive http.client connection to
  `endpoint + "/v1/traces"` with the configured headers, retrying 429, 502, 503, 504 and
  connection errors with exponential backoff (0.5 s, 1 s, 2 s, 4 s; a numeric Retry-After is
  followed) until the per-export timeout. A failure is logged when exporting starts failing
  and when it recovers, not per batch; the spans of a failed batch are lost (counted in
  `failed`).

Threads: encoding runs on the caller's thread; `put` appends to a deque (thread-safe) and
sets the exporter's wake-up event only when a full batch is waiting.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "KIND_CLIENT", "KIND_INTERNAL", "KIND_SERVER", "STATUS_ERROR", "STATUS_OK", "STATUS_UNSET",
    "BatchExporter", "Envelope", "IntAttribute", "OtlpHttpSender", "any_value", "attribute", "attributes", "encode_span",
    "key_value", "link", "varint",
]

log = logging.getLogger("sqlward.telemetry")

# Span.SpanKind and Status.StatusCode values of the proto.
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

MAX_QUEUE = 2048  # spans waiting for the exporter's thread (beyond: dropped)
MAX_BATCH = 512  # spans per request
SCHEDULE_DELAY = 1.0  # seconds: a partial batch waits at most this long
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_U64 = (1 << 64) - 1

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_pack_times = struct.Struct("<BQBQ").pack  # Span fields 7 and 8 (fixed64) with their tags
_SMALL = [bytes((n,)) for n in range(128)]


def varint(n: int) -> bytes:
    """`n` (0 <= n < 2**64) as a protobuf varint."""
    if n < 128:
        return _SMALL[n]
    if n < 16384:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag, the body's length, the body."""
    n = len(body)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + body


# -- AnyValue, KeyValue ------------------------------------------------------------------------


def any_value(value: object) -> bytes:
    """An AnyValue message's body, for the Python values the SDK's encoder takes (same type
    tests, same order: None, bool, str, int, float, bytes, a sequence, a mapping). Raises
    ValueError / TypeError for what it cannot encode (`attributes` then leaves it out)."""
    if value is None:
        return b""
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", value.encode())  # type: ignore[attr-defined]
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + _int64(value)  # type: ignore[arg-type]
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _int64(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join([_field(b"\x0a", key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"cannot encode a {type(value).__name__} as an OTLP AnyValue")


def _int64(n: int) -> bytes:
    if n < 0:
        if n < _INT64_MIN:
            raise ValueError(f"{n} is out of int64's range")
        return varint(n & _U64)
    if n > _INT64_MAX:
        raise ValueError(f"{n} is out of int64's range")
    return _SMALL[n] if n < 128 else varint(n)


_KEYS: dict[str, bytes] = {}  # KeyValue.key fields, by key (attribute names: a bounded set in practice)
_MAX_KEYS = 4096


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _field(b"\x0a", key.encode()) if key else b""
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        _KEYS[key] = encoded
    return encoded


def key_value(key: str, value: object) -> bytes:
    """A KeyValue message's body."""
    return _key(key) + _field(b"\x12", any_value(value))


class IntAttribute:
    """`attribute(key, n)` for one key and int values, the encodings of small values kept."""

    def __init__(self, key: str, keep: int = 1024) -> None:
        self.key = key
        self.keep = keep
        self._cache: dict[int, bytes] = {}

    def __call__(self, n: int) -> bytes:
        encoded = self._cache.get(n)
        if encoded is None:
            encoded = attribute(self.key, n)
            if 0 <= n < self.keep:
                self._cache[n] = encoded
        return encoded


def attribute(key: str, value: object) -> bytes:
    """One attribute as a Span.attributes field (tag 9): the unit `attributes` concatenates."""
    return _field(b"\x4a", key_value(key, value))


def attributes(attrs: Mapping[str, object] | None, tag: bytes = b"\x4a") -> bytes:
    """Attributes as repeated KeyValue fields (`tag`: Span 9 by default; Resource 1 is
    b"\\x0a", InstrumentationScope 3 b"\\x1a", Link 4 b"\\x22"). Values that cannot be encoded
    are left out and logged, as the SDK's encoder does."""
    if not attrs:
        return b""
    out = []
    for key, value in attrs.items():
        try:
            out.append(_field(tag, key_value(key, value)))
        except (TypeError, ValueError) as error:
            log.warning("telemetry: attribute %s left out of a span: %s", key, error)
    return b"".join(out)


# -- spans ---------------------------------------------------------------------------------------

_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)  # field 16 fixed32: HAS_IS_REMOTE
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)  # HAS_IS_REMOTE | IS_REMOTE
_LINK_LOCAL = b"\x35" + struct.pack("<I", 0x100)  # Link field 6 fixed32
_LINK_REMOTE = b"\x35" + struct.pack("<I", 0x300)
_KINDS = {k: b"\x30" + _SMALL[k] for k in range(6)}
_STATUS_UNSET = b"\x7a\x00"
_STATUS_CODES = {STATUS_OK: b"\x18\x01", STATUS_ERROR: b"\x18\x02"}
_NAMES: dict[str, bytes] = {}  # Span.name fields by name (span names: operation + table)
_MAX_NAMES = 4096


def _status(code: int, message: str | None) -> bytes:
    if not code and not message:
        return _STATUS_UNSET
    return _field(b"\x7a", (_field(b"\x12", message.encode()) if message else b"") + _STATUS_CODES.get(code, b""))


def _name(name: str) -> bytes:
    encoded = _NAMES.get(name)
    if encoded is None:
        encoded = _field(b"\x2a", name.encode()) if name else b""
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        _NAMES[name] = encoded
    return encoded


def link(trace_id: bytes, span_id: bytes, remote: bool = False) -> bytes:
    """A Span.links field (tag 13) to the span (trace_id, span_id), without attributes."""
    return _field(b"\x6a", b"\x0a\x10" + trace_id + b"\x12\x08" + span_id + (_LINK_REMOTE if remote else _LINK_LOCAL))


def encode_span(
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes | None,
    name: str,
    kind: int,
    start: int,
    end: int,
    attrs: bytes = b"",
    links: bytes = b"",
    status: int = STATUS_UNSET,
    message: str | None = None,
    parent_remote: bool = False,
) -> bytes:
    """A finished span as a ScopeSpans.spans field (tag 2, length, Span). `trace_id` is 16
    bytes, `span_id` / `parent_span_id` 8 (big-endian, as the W3C ids read); `attrs` is
    attribute fields (`attribute`, `attributes`) concatenated, `links` `link` fields; times
    are nanoseconds since the epoch."""
    parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id]
    if parent_span_id:
        parts += (b"\x22\x08", parent_span_id)
    parts += (_name(name), _KINDS[kind] if kind else b"")
    if start and end:
        parts.append(_pack_times(0x39, start, 0x41, end))
    else:
        if start:
            parts += (b"\x39", _pack_fixed64(start))
        if end:
            parts += (b"\x41", _pack_fixed64(end))
    parts += (
        attrs, links, _STATUS_UNSET if not status and not message else _status(status, message),
        _FLAGS_REMOTE if parent_remote else _FLAGS_LOCAL,
    )
    body = b"".join(parts)
    n = len(body)
    return b"\x12" + (_SMALL[n] if n < 128 else varint(n)) + body


class Envelope:
    """The ExportTraceServiceRequest around a batch: one resource, one instrumentation scope,
    encoded once."""

    def __init__(self, resource: Mapping[str, object], scope_name: str, scope_version: str | None = None) -> None:
        self.resource = _field(b"\x0a", attributes(resource, b"\x0a"))  # ResourceSpans.resource
        scope = (_field(b"\x0a", scope_name.encode()) if scope_name else b"") + (
            _field(b"\x12", scope_version.encode()) if scope_version else b""
        )
        self.scope = _field(b"\x0a", scope)  # ScopeSpans.scope

    def request(self, spans: Sequence[bytes]) -> bytes:
        """The request holding `spans` (each an `encode_span` result)."""
        body = b"".join(spans)
        scope_spans_len = len(self.scope) + len(body)
        scope_spans_head = b"\x12" + varint(scope_spans_len)  # ResourceSpans.scope_spans
        resource_spans_len = len(self.resource) + len(scope_spans_head) + scope_spans_len
        return b"".join((
            b"\x0a", varint(resource_spans_len), self.resource, scope_spans_head, self.scope, body,
        ))


# -- sending ---------------------------------------------------------------------------------------


class OtlpHttpSender:
    """`send(batch, deadline)` for `BatchExporter`: the batch as one ExportTraceServiceRequest
    POSTed to `url` (module doc: retries, backoff, timeout). True when the collector took it."""

    def __init__(
        self, url: str, envelope: Envelope, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.envelope = envelope
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", **dict(headers or {})}
        self._conn: http.client.HTTPConnection | None = None
        self._sleep = sleep
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            cafile = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") or os.environ.get("OTEL_EXPORTER_OTLP_CERTIFICATE")
            self._ssl = ssl.create_default_context(cafile=cafile or None)
        self.failing = False
        self.failed = 0  # spans in batches that could not be delivered

    def __call__(self, batch: Sequence[bytes], deadline: float) -> bool:
        body = self.envelope.request(batch)
        deadline = min(deadline, time.monotonic() + self.timeout)
        problem = self._post(body, deadline)
        if problem is None:
            if self.failing:
                self.failing = False
                log.warning("telemetry: exporting spans to %s works again", self.url)
            return True
        self.failed += len(batch)
        if not self.failing:
            self.failing = True
            log.warning(
                "telemetry: exporting %d spans to %s failed: %s (logged once until it works again; spans lost)",
                len(batch), self.url, problem,
            )
        return False

    def _post(self, body: bytes, deadline: float) -> str | None:
        """None when delivered, else why not (after the retries the deadline allows)."""
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed out"
            retry_after: float | None = None
            try:
                status, retry_after = self._once(body, remaining)
            except (OSError, http.client.HTTPException) as error:
                self.close()
                problem = f"{type(error).__name__}: {error}"
            else:
                if 200 <= status < 300:
                    return None
                problem = f"HTTP {status}"
                if status not in RETRY_STATUSES:
                    return problem
            wait = retry_after if retry_after is not None else delay * random.uniform(0.8, 1.2)
            if attempt >= 5 or time.monotonic() + wait >= deadline:
                return problem
            self._sleep(wait)
            delay *= 2

    def _once(self, body: bytes, timeout: float) -> tuple[int, float | None]:
        conn = self._conn
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.request("POST", self._path, body, self._headers)
        response = conn.getresponse()
        response.read()
        if response.will_close:
            self.close()
        retry_after = None
        value = response.getheader("Retry-After")
        if value and value.strip().isdigit():
            retry_after = float(value.strip())
        return response.status, retry_after

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


T = TypeVar("T")


class BatchExporter(Generic[T]):
    """A bounded queue and a thread sending its items in batches (module doc). `send(batch,
    deadline)` returns whether the batch was delivered; it must give up by `deadline`
    (time.monotonic()). Exceptions from it are logged once and the batch is lost."""

    def __init__(
        self, send: Callable[[list[T], float], bool], *, timeout: float = 10.0, max_queue: int = MAX_QUEUE,
        max_batch: int = MAX_BATCH, delay: float = SCHEDULE_DELAY, name: str = "sqlward-otlp-traces",
    ) -> None:
        self._send = send
        self.timeout = timeout
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.delay = delay
        self.dropped = 0  # items refused because the queue was full
        self.exported = 0  # items in batches `send` delivered
        self._queue: deque[T] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._flushes: list[threading.Event] = []
        self._stopping = False
        self._stop_deadline = 0.0
        self._warned = False
        self._raised = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue `item` (the caller's thread; never blocks). Dropped when the queue is full."""
        queue = self._queue
        n = len(queue)
        if n >= self.max_queue or self._stopping:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                log.warning(
                    "telemetry: span queue full (%d spans waiting for the exporter): spans dropped "
                    "(logged once; the exporter counts them)", self.max_queue,
                )
            return
        queue.append(item)
        if n + 1 >= self.max_batch and not self._wake.is_set():
            self._wake.set()

    def force_flush(self, timeout: float = 10.0) -> bool:
        """Send what is queued now; True when done within `timeout` seconds."""
        if not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        with self._lock:
            self._flushes.append(done)
        self._wake.set()
        return done.wait(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is queued within `timeout` seconds, then stop the thread."""
        self._stop_deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._thread.join(max(0.0, timeout) + 0.1)

    def _run(self) -> None:
        queue = self._queue
        while True:
            woken = self._wake.wait(self.delay)
            self._wake.clear()
            with self._lock:
                flushes, self._flushes = self._flushes, []
            stopping = self._stopping
            everything = stopping or bool(flushes) or not woken
            while queue and (everything or len(queue) >= self.max_batch):
                batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
                deadline = self._stop_deadline if stopping else time.monotonic() + self.timeout
                if stopping and time.monotonic() >= deadline:
                    queue.clear()
                    break
                self._deliver(batch, deadline)
            for done in flushes:
                done.set()
            if stopping:
                with self._lock:
                    for done in self._flushes:
                        done.set()
                    self._flushes.clear()
                return

    def _deliver(self, batch: list[T], deadline: float) -> None:
        try:
            if self._send(batch, deadline):
                self.exported += len(batch)
        except Exception:  # the exporter's thread must live on
            if not self._raised:
                self._raised = True
                log.exception("telemetry: exporting %d spans raised (logged once; those spans are lost)", len(batch))
