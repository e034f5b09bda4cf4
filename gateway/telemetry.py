"""OpenTelemetry traces and metrics from the audit events (an `audit.recorder.Observer`).

`Telemetry` sees every event a session's `AuditScope` adds, before it is encoded, and turns
the same events the trail records into spans and metrics (docs/observability.md lists them).
Nothing here is global: the span processor, exporters, meter provider and readers are this
object's own; the OpenTelemetry global providers are never read or set.

How it works:

- Sessions. `connection.opened` starts a session span ("sqlward.session", SpanKind.SERVER, a
  new trace; sampled by the SDK's `ParentBased(TraceIdRatioBased(sample_ratio))`);
  `connection.authenticated` adds who, the target and its database; `connection.closed` ends it
  (and any statement span still open). Per-session state (`_Session`) lives in a dict keyed
  by connection id, removed at close and capped at `MAX_SESSIONS` (the oldest is ended first).
- Statements. `statement.decided` opens a statement span (SpanKind.CLIENT: the gateway's
  call to the database) named "<OPERATION> <table>", child of the session span, or of the
  client's own span when the statement carried a W3C `traceparent` (sqlcommenter): the
  client's trace is continued and the span links to the session span. Attributes follow the
  database semantic conventions (db.system.name, db.namespace, db.operation.name,
  db.collection.name, db.query.text = the fingerprint, literals replaced by ?: never the
  statement text; server.address, server.port) and add sqlward.* (identity, issuer, actors,
  reason, decision, rule, approval id, target, environment). `statement.completed` ends it,
  matched by request id; the run of a prepared statement is matched by `prepared_ref` (the
  decision of its preparation); a later run of the same prepared statement gets a span of its
  own, started `duration_ms` before its completion, with the preparation's attributes. A
  denied statement's span ends at once with status ERROR; a completion with an error sets
  ERROR with its SQLSTATE (never the error text: it may quote values). A session has at most
  `MAX_OPEN_STATEMENTS` open statement spans: beyond, the oldest is ended (attribute
  sqlward.unfinished = true), as are those still open at close.
- The audit envelope. While a statement span is open the scope's `trace_id` / `span_id` name
  it (the decision, the run and the completion lines carry the statement's span); after it
  ends they name the session span again. `traceparent(scope)` gives the same context as a W3C
  header value (for passing it upstream: `trace_upstream`).
- Spans are not the SDK's: no `Tracer`, no `ReadableSpan`, no `BatchSpanProcessor`, no
  `OTLPSpanExporter` (the Tracer's per-span checks cost about 40 µs a statement; the SDK's
  encoder about 60 µs a span in its export thread, holding the GIL against the trio thread:
  30-50 % of `pgbench -S` throughput with every session traced). A span is encoded in
  OTLP/protobuf when it ends, on the trio thread, by `gateway.otlp_traces`, from parts encoded
  once: the resource and scope (`otlp_traces.Envelope`), a session's shared statement
  attributes (`_Session.base`: who, target, environment, db.system.name, db.namespace,
  server.*), a (decision, rule) pair's, and a statement shape's (operation, table, fingerprint:
  name, db.operation.name, db.collection.name, db.query.text; `_query_part`, an LRU of
  MAX_QUERY_SHAPES). Per statement only the ids, times, status and the completion's attributes
  are encoded. The bytes go to `otlp_traces.BatchExporter` (a bounded queue of 2048 spans:
  beyond, spans are dropped, counted and the first drop logged) whose thread joins them into
  one ExportTraceServiceRequest per batch (512 spans, or what is there after 1 s) and POSTs it
  to `endpoint` + "/v1/traces" (retrying 429/502/503/504 within `timeout_seconds`). With
  `span_exporter` (tests) the same spans are built as SDK `ReadableSpan`s for that exporter
  instead; tests/unit/test_otlp_traces.py checks both paths give the same OTLP.
- Metrics. The hot path only bumps plain counters in this object (a dict add; for a duration
  a bisect into its target's buckets); a `MeterProvider` of its own reads them through
  observable instruments when a reader collects: the periodic OTLP reader (`endpoint` +
  "/v1/metrics", its own thread) and a pull reader rendered as Prometheus text by
  `prometheus_text()` (for /metrics). The duration histogram is aggregated here (`_Durations`:
  the SDK histogram's `record` costs about 12 µs) and added to each collection as a cumulative
  explicit-bucket histogram (`_WithDurations` around the OTLP exporter, `collect()` for the
  pull reader). Every metric is cumulative.

Error handling: `observe` never raises (an `Observer` must not): an unexpected error is logged
once to `sqlward.telemetry` and that event is skipped. An export failure is the exporter
thread's to retry and log (`otlp_traces`); it never reaches a session.

Threads: `observe` runs on the gateway's trio thread (it only appends encoded spans to the
span exporter's deque); the metric callbacks run on the metric exporter's thread or on the
caller of `prometheus_text()`. They only read what observe writes (ints, dict items copied in
one call, a deque), and `SinkHealth.status()` must only read.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

import msgspec
import trio
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import (
    Counter,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric as OtelMetric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from sqlward.audit.events import (
    ApprovalDecided,
    ApprovalExecuted,
    ApprovalExpired,
    ApprovalRequested,
    ApprovalWithdrawn,
    ConnectionAuthenticated,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    LoginThrottled,
    StatementCompleted,
    StatementDecided,
    Who,
)
from sqlward.audit.recorder import AuditScope
from sqlward.gateway import otlp_traces as otlp
from sqlward.gateway.config import Config, TelemetryConfig, parse_dsn
from sqlward.gateway.health import SinkHealth

__all__ = [
    "MAX_OPEN_STATEMENTS", "MAX_SESSIONS", "SinkHealth", "TargetInfo", "Telemetry", "target_infos",
]

log = logging.getLogger("sqlward.telemetry")

MAX_SESSIONS = 100_000  # sessions with state at once (the oldest is ended beyond)
MAX_OPEN_STATEMENTS = 8  # open statement spans per session (pipelining, held approvals)
MAX_PREPARED = 32  # prepared statements per session whose attributes are kept for later runs
MAX_PENDING_APPROVALS = 10_000  # approval ids followed for sqlward.approvals.pending
MAX_QUERY_TEXT = 4096  # characters of db.query.text (a fingerprint can be a whole script)
MAX_QUERY_SHAPES = 1024  # statement shapes (fingerprint, operation, table) whose attributes are kept encoded
MAX_DECISIONS = 1024  # (decision, rule) pairs whose attributes are kept encoded
DURATION_BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)

_DB_SYSTEMS = {"postgres": "postgresql", "mysql": "mysql"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_OK = Status(StatusCode.UNSET)
_randbits = random.getrandbits
_PROM_UNITS = {"ms": "milliseconds", "s": "seconds", "By": "bytes"}
_SCOPE = "sqlward.gateway.telemetry"
_CUMULATIVE = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (Counter, UpDownCounter, HistogramInstrument, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
}


class TargetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the spans say of a target's database (semantic conventions' db.* / server.*)."""

    db_system: str  # "postgresql", "mysql"
    address: str
    port: int
    database: str


def target_infos(config: Config) -> dict[str, TargetInfo]:
    """Every configured target's `TargetInfo` by name (its DSN parsed; the password unused)."""
    out: dict[str, TargetInfo] = {}
    for t in config.targets:
        dsn = parse_dsn(t.dsn, t.protocol, config.base_dir)
        out[t.name] = TargetInfo(
            db_system=_DB_SYSTEMS.get(t.protocol, t.protocol), address=dsn.host, port=dsn.port, database=dsn.database,
        )
    return out


def _new_trace_id() -> bytes:
    """16 random bytes, not all zero (as the SDK's RandomIdGenerator: W3C ids are never zero)."""
    while True:
        value = _randbits(128)
        if value:
            return value.to_bytes(16, "big")


def _new_span_id() -> bytes:
    while True:
        value = _randbits(64)
        if value:
            return value.to_bytes(8, "big")


def _parse_traceparent(value: str) -> tuple[bytes, bytes, bool] | None:
    """The remote parent named by a W3C traceparent (version 00) as (trace id, span id,
    sampled), or None when it is unusable."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if not 0 < trace_id < 1 << 128 or not 0 < span_id < 1 << 64:
        return None
    return trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"), bool(flags & 1)


# A group of attributes as a dict (for the SDK's ReadableSpan: `span_exporter`) and as encoded
# Span.attributes fields (for OTLP), made once and shared (never mutated).
_Part = tuple[dict[str, object], bytes]
_NO_PART: _Part = ({}, b"")
_returned_rows = otlp.IntAttribute("db.response.returned_rows")


@functools.lru_cache(maxsize=MAX_QUERY_SHAPES)
def _query_part(fingerprint: str, operation: str | None, table: str | None) -> tuple[str, _Part]:
    """A statement shape's name and its db.operation.name / db.collection.name / db.query.text
    (the fingerprint is cut to MAX_QUERY_TEXT before it is a key: the cache stays bounded)."""
    attrs: dict[str, object] = {}
    name = ""
    if operation is not None:
        name = attrs["db.operation.name"] = operation.upper()
        if table is not None:
            attrs["db.collection.name"] = table
            name = f"{name} {table}"
    if fingerprint:
        attrs["db.query.text"] = fingerprint
    return name, (attrs, otlp.attributes(attrs))


class _Statement:
    """A statement span: its ids, its parent's (`remote`: the client's span), a link to the
    session span (client traceparent), and its attributes as shared parts (the session's, the
    decision's, the statement shape's) plus what varies (`approval_id`, `extra`)."""

    __slots__ = (
        "trace_id", "span_id", "parent_id", "remote", "sampled", "link", "ids", "start", "name",
        "base", "decision", "query", "approval_id", "rows", "extra", "status", "message",
    )

    def __init__(
        self, trace_id: bytes, span_id: bytes, parent_id: bytes, remote: bool, sampled: bool,
        link: tuple[bytes, bytes, bool] | None, start: int, name: str, base: _Part, decision: _Part, query: _Part,
        approval_id: str,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.remote = remote
        self.sampled = sampled
        self.link = link
        self.ids = (trace_id.hex(), span_id.hex())
        self.start = start
        self.name = name
        self.base = base
        self.decision = decision
        self.query = query
        self.approval_id = approval_id
        self.rows: int | None = None  # db.response.returned_rows
        self.extra: dict[str, object] | None = None  # from the completion (rows, errors), sqlward.unfinished
        self.status = otlp.STATUS_UNSET
        self.message: str | None = None

    def set(self, key: str, value: object) -> None:
        extra = self.extra
        if extra is None:
            self.extra = {key: value}
        else:
            extra[key] = value


class _Session:
    """One session's span and statements (module doc)."""

    __slots__ = (
        "trace_id", "span_id", "sampled", "ids", "start", "attrs", "target", "who", "base", "db_system",
        "statements", "prepared", "restore",
    )

    def __init__(self, trace_id: bytes, span_id: bytes, sampled: bool, start: int, attrs: dict[str, object]) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.ids = (trace_id.hex(), span_id.hex())
        self.start = start
        self.attrs = attrs
        self.target = ""
        self.who: Who | None = None
        self.base: _Part = _NO_PART  # the statement attributes every statement shares
        self.db_system = ""
        self.statements: dict[int, _Statement] = {}
        self.prepared: dict[int, _Statement] = {}
        self.restore = False  # the scope's ids name a span that ended: the session's next event resets them


def _who_attributes(who: Who, out: dict[str, object]) -> None:
    out["sqlward.identity"] = who.subject
    if who.issuer:
        out["sqlward.issuer"] = who.issuer
    if who.actor:
        out["sqlward.actors"] = who.actor
    if who.reason:
        out["sqlward.reason"] = who.reason


class Telemetry:
    """Spans and metrics from audit events (module doc).

    `config` is `[telemetry]`; `gateway` the gateway's name (service.instance.id); `targets` each
    target's database by target name (`target_infos(config)`). Optional: `sinks` (the audit
    trail, for sqlward.audit.backlog), `pending_approvals` (a count to report instead of the one
    followed from approval events), `span_exporter` (instead of OTLP, e.g. the SDK's
    InMemorySpanExporter in tests; also turns tracing on without an endpoint),
    `clock` (nanoseconds since the epoch).
    """

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        gateway: str,
        targets: Mapping[str, TargetInfo],
        sinks: SinkHealth | None = None,
        pending_approvals: Callable[[], int] | None = None,
        span_exporter: SpanExporter | None = None,
        version: str = "",
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self._targets = dict(targets)
        self._sinks = sinks
        self._pending_approvals = pending_approvals
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._failed = False
        self.resource = Resource.create({
            "service.name": config.service_name, "service.instance.id": gateway,
            **({"service.version": version} if version else {}),
        })
        self._scope_info = InstrumentationScope("sqlward.gateway.telemetry", version or None)
        no_meters = NoOpMeterProvider()  # the SDK's own metrics about itself: none, and no global lookup

        # -- traces: encoded here (otlp_traces), or SDK ReadableSpans for a given SDK exporter (tests)
        self.tracing = config.traces and (span_exporter is not None or bool(config.endpoint))
        self._span_exporter = span_exporter if self.tracing else None
        self._readable = self._span_exporter is not None
        self._spans: otlp.BatchExporter[object] | None = None
        self._sender: otlp.OtlpHttpSender | None = None
        if self._span_exporter is not None:
            exporter = self._span_exporter
            self._spans = otlp.BatchExporter(
                lambda batch, deadline: exporter.export(batch) is SpanExportResult.SUCCESS, timeout=config.timeout_seconds,
            )
        elif self.tracing:
            self._sender = otlp.OtlpHttpSender(
                config.endpoint.rstrip("/") + "/v1/traces", otlp.Envelope(self.resource.attributes, _SCOPE, version or None),
                headers=config.headers, timeout=config.timeout_seconds,
            )
            self._spans = otlp.BatchExporter(self._sender, timeout=config.timeout_seconds)  # type: ignore[arg-type]
        self._sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self._new_trace_id = _new_trace_id  # replaceable by tests (deterministic ids)
        self._new_span_id = _new_span_id
        self._decisions: dict[tuple[str, str], _Part] = {}

        # -- metrics: plain counters written by observe, read by the instruments' callbacks
        self.metrics = config.metrics
        self._statements: dict[tuple[str, str, str], int] = {}
        self._refused: dict[str, int] = {"refused": 0, "throttled": 0}
        self._durations = _Durations(DURATION_BUCKETS_MS, clock())
        self._active = 0
        self._approvals: dict[str, float] = {}  # approval id -> expiry (Unix seconds)
        self._pull: InMemoryMetricReader | None = None
        self._meters: MeterProvider | None = None
        if self.metrics:
            self._pull = InMemoryMetricReader(preferred_temporality=_CUMULATIVE)
            readers: list[InMemoryMetricReader | PeriodicExportingMetricReader] = [self._pull]
            if config.endpoint:
                metric_exporter = OTLPMetricExporter(
                    endpoint=config.endpoint.rstrip("/") + "/v1/metrics", headers=dict(config.headers),
                    timeout=config.timeout_seconds, preferred_temporality=_CUMULATIVE, meter_provider=no_meters,
                )
                readers.append(PeriodicExportingMetricReader(
                    _WithDurations(metric_exporter, self._with_durations),
                    export_interval_millis=config.metrics_interval_seconds * 1000,
                    export_timeout_millis=config.timeout_seconds * 1000,
                ))
            self._meters = MeterProvider(metric_readers=readers, resource=self.resource, shutdown_on_exit=False)
            meter = self._meters.get_meter(_SCOPE, version or None)
            meter.create_observable_counter(
                "sqlward.statements", [self._observe_statements], unit="{statement}",
                description="Statements decided, by decision, rule and target",
            )
            meter.create_observable_up_down_counter(
                "sqlward.sessions.active", [self._observe_sessions], unit="{session}",
                description="Client sessions open now",
            )
            meter.create_observable_gauge(
                "sqlward.approvals.pending", [self._observe_approvals], unit="{request}",
                description="Approval requests waiting for a decision",
            )
            meter.create_observable_gauge(
                "sqlward.audit.backlog", [self._observe_backlog], unit="{record}",
                description="Audit records accepted by a sink and not yet durable at its destination, by sink",
            )
            meter.create_observable_counter(
                "sqlward.logins.refused", [self._observe_refused], unit="{login}",
                description="Logins refused (cause=refused) or refused by the login throttle (cause=throttled)",
            )
        self.on = self.tracing or self.metrics

    # -- the observer ----------------------------------------------------------------------

    def observe(self, scope: AuditScope, event: msgspec.Struct) -> None:
        """Spans and counts for `event` (module doc). Never raises."""
        if not self.on:
            return
        try:
            if scope.connection_id:
                session = self._sessions.get(scope.connection_id)
                if session is not None and session.restore:
                    session.restore = False
                    scope.trace_id, scope.span_id = self._current_ids(session)
            kind = type(event)  # the usual ones first
            if kind is StatementDecided:
                self._decided(scope, event)
            elif kind is StatementCompleted:
                self._completed(scope, event)
            elif kind is ConnectionOpened:
                self._opened(scope, event)
            elif kind is ConnectionAuthenticated:
                self._authenticated(scope, event)
            elif kind is ConnectionClosed:
                self._closed(scope, event)
            elif kind is ConnectionRefused:
                self._connection_refused(scope, event)
            elif kind is LoginThrottled:
                self._throttled(scope, event)
            elif kind is ApprovalRequested:
                self._approval_requested(scope, event)
            elif kind is ApprovalDecided:
                self._approval_decided(scope, event)
            elif kind is ApprovalExpired or kind is ApprovalWithdrawn or kind is ApprovalExecuted:
                self._approval_done(scope, event)
        except Exception:  # an observer must not fail the statement
            if not self._failed:
                self._failed = True
                log.exception("telemetry: handling a %s event failed (logged once; that event is skipped)", type(event).__name__)

    def traceparent(self, scope: AuditScope) -> str | None:
        """The W3C traceparent of the span `scope`'s envelope names now (the open statement's,
        else the session's), with its sampled flag; None when the session has no span."""
        session = self._sessions.get(scope.connection_id) if self.tracing else None
        if session is None or not scope.trace_id:
            return None
        flags = "01" if session.sampled else "00"
        for statement in session.statements.values():
            if statement.ids[1] == scope.span_id:
                flags = "01" if statement.sampled else "00"
                break
        return f"00-{scope.trace_id}-{scope.span_id}-{flags}"

    # -- sessions ---------------------------------------------------------------------------

    def _session(self, scope: AuditScope) -> _Session | None:
        """The session's state, begun here when its connection.opened was not seen."""
        connection_id = scope.connection_id
        if not connection_id:
            return None
        session = self._sessions.get(connection_id)
        if session is None:
            session = self._begin(scope, {})
        return session

    def _begin(self, scope: AuditScope, attrs: dict[str, object]) -> _Session:
        sessions = self._sessions
        if len(sessions) >= MAX_SESSIONS:
            oldest = next(iter(sessions))
            self._end_session(sessions[oldest], {"sqlward.unfinished": True})
            del sessions[oldest]
            self._active -= 1
        trace_id = self._new_trace_id()
        span_id = self._new_span_id()
        sampled = False
        if self.tracing:
            sampled = self._sampler.should_sample(
                None, int.from_bytes(trace_id, "big"), "sqlward.session", SpanKind.SERVER,
            ).decision.is_sampled()
        session = _Session(trace_id, span_id, sampled, self._clock(), attrs)
        sessions[scope.connection_id] = session
        self._active += 1
        if self.tracing:
            scope.trace_id, scope.span_id = session.ids
        return session

    def _opened(self, scope: AuditScope, event: ConnectionOpened) -> None:
        if not scope.connection_id or scope.connection_id in self._sessions:
            return
        attrs: dict[str, object] = {
            "sqlward.connection_id": scope.connection_id, "sqlward.listener": event.listener,
            "sqlward.protocol": event.protocol, "sqlward.tls": event.tls,
        }
        host, sep, port = event.client_addr.rpartition(":")
        if sep and port.isdigit():
            attrs["client.address"] = host.strip("[]")
            attrs["client.port"] = int(port)
        elif event.client_addr:
            attrs["client.address"] = event.client_addr
        self._begin(scope, attrs)

    def _authenticated(self, scope: AuditScope, event: ConnectionAuthenticated) -> None:
        session = self._session(scope)
        if session is None:
            return
        self._bind(session, event.who, event.target, event.environment)
        session.attrs.update(session.base[0])
        if event.application_name:
            session.attrs["sqlward.application_name"] = event.application_name

    def _bind(self, session: _Session, who: Who, target: str, environment: str) -> None:
        """The attributes every statement of the session shares (who, the target's database)."""
        session.who = who
        session.target = target
        base: dict[str, object] = {"sqlward.target": target, "sqlward.environment": environment}
        info = self._targets.get(target)
        if info is not None:
            session.db_system = info.db_system
            base["db.system.name"] = info.db_system
            base["db.namespace"] = info.database
            base["server.address"] = info.address
            base["server.port"] = info.port
        _who_attributes(who, base)
        session.base = (base, otlp.attributes(base))

    def _connection_refused(self, scope: AuditScope, event: ConnectionRefused) -> None:
        """A refused connection: the end of its lifecycle (no connection.closed follows), so
        its session span ends here and it no longer counts as active."""
        self._refused["refused"] = self._refused.get("refused", 0) + 1
        session = self._sessions.pop(scope.connection_id, None) if scope.connection_id else None
        if session is not None:
            self._active -= 1
            session.attrs["sqlward.refused"] = event.reason
            if event.target:
                session.attrs["sqlward.target"] = event.target
            self._end_session(session, {})

    def _throttled(self, scope: AuditScope, event: LoginThrottled) -> None:
        if event.refused:
            self._refused["throttled"] = self._refused.get("throttled", 0) + 1

    def _closed(self, scope: AuditScope, event: ConnectionClosed) -> None:
        session = self._sessions.pop(scope.connection_id, None) if scope.connection_id else None
        if session is None:
            return
        self._active -= 1
        close: dict[str, object] = {"sqlward.requests": event.requests}
        if event.reason:
            close["sqlward.close_reason"] = event.reason
        self._end_session(session, close)

    def _end_session(self, session: _Session, attrs: dict[str, object]) -> None:
        if not self.tracing:
            return
        now = self._clock()
        for statement in session.statements.values():
            statement.set("sqlward.unfinished", True)
            self._export(statement, now)
        session.statements.clear()
        session.attrs.update(attrs)
        spans = self._spans
        if spans is None or not session.sampled:
            return
        refused = "sqlward.refused" in session.attrs
        if self._readable:
            context = SpanContext(
                int.from_bytes(session.trace_id, "big"), int.from_bytes(session.span_id, "big"), False, _SAMPLED,
            )
            spans.put(ReadableSpan(
                "sqlward.session", context, None, self.resource, dict(session.attrs), (), (), SpanKind.SERVER,
                None, Status(StatusCode.ERROR, "login refused") if refused else _OK, session.start, now, self._scope_info,
            ))
            return
        spans.put(otlp.encode_span(
            session.trace_id, session.span_id, None, "sqlward.session", otlp.KIND_SERVER, session.start, now,
            otlp.attributes(session.attrs), b"", otlp.STATUS_ERROR if refused else otlp.STATUS_UNSET,
            "login refused" if refused else None,
        ))

    # -- statements -------------------------------------------------------------------------

    def _decided(self, scope: AuditScope, event: StatementDecided) -> None:
        if self.metrics:
            key = (event.action, event.rule_id, event.target)
            counts = self._statements
            counts[key] = counts.get(key, 0) + 1
        if not self.tracing:
            return
        session = self._session(scope)
        if session is None:
            return
        link = None
        client = _parse_traceparent(event.traceparent) if event.traceparent else None
        if client is None:
            trace_id, parent_id, sampled, remote = session.trace_id, session.span_id, session.sampled, False
        else:
            (trace_id, parent_id, sampled), remote = client, True
            link = (session.trace_id, session.span_id, session.sampled)
        span_id = self._new_span_id()
        if not sampled:  # nothing to export: the ids only (the envelope, upstream)
            statement = _Statement(trace_id, span_id, parent_id, remote, False, link, 0, "", _NO_PART, _NO_PART, _NO_PART, "")
            self._opened_statement(scope, session, event, statement)
            return
        who = event.who
        if (who is not session.who and who != session.who) or event.target != session.target:
            self._bind(session, who, event.target, event.environment)
        key = (event.action, event.rule_id)
        decision = self._decisions.get(key)
        if decision is None:
            attrs: dict[str, object] = {"sqlward.decision": event.action}
            if event.rule_id:
                attrs["sqlward.rule"] = event.rule_id
            if len(self._decisions) >= MAX_DECISIONS:
                self._decisions.clear()
            decision = self._decisions[key] = (attrs, otlp.attributes(attrs))
        operations = event.operations
        name, query = _query_part(
            event.fingerprint[:MAX_QUERY_TEXT], operations[0] if operations else None,
            event.tables[0] if operations and event.tables else None,
        )
        statement = _Statement(
            trace_id, span_id, parent_id, remote, True, link, self._clock(), name or session.db_system or "sqlward.statement",
            session.base, decision, query, event.approval_id,
        )
        self._opened_statement(scope, session, event, statement)

    def _opened_statement(self, scope: AuditScope, session: _Session, event: StatementDecided, statement: _Statement) -> None:
        scope.trace_id, scope.span_id = statement.ids
        if event.action == "deny":
            statement.status = otlp.STATUS_ERROR
            statement.message = f"denied by {event.rule_id or 'policy'}"
            self._export(statement, statement.start)
            session.restore = True
            return
        open_ = session.statements
        if len(open_) >= MAX_OPEN_STATEMENTS:
            oldest = next(iter(open_))
            old = open_.pop(oldest)
            old.set("sqlward.unfinished", True)
            self._export(old, self._clock())
        open_[event.request_id] = statement
        if event.statement_name is not None:  # a preparation: later runs take its attributes
            prepared = session.prepared
            prepared.pop(event.request_id, None)
            if len(prepared) >= MAX_PREPARED:
                del prepared[next(iter(prepared))]
            prepared[event.request_id] = statement

    def _completed(self, scope: AuditScope, event: StatementCompleted) -> None:
        session = self._sessions.get(scope.connection_id) if scope.connection_id else None
        if self.metrics:
            self._durations.record(event.duration_ms, session.target if session is not None else "")
        if not self.tracing or session is None:
            return
        now = self._clock()
        statement = session.statements.pop(event.request_id, None)
        if statement is None and event.prepared_ref is not None:
            statement = session.statements.pop(event.prepared_ref, None)
            if statement is None:  # a later run of a prepared statement: a span of its own
                prepared = session.prepared.get(event.prepared_ref)
                if prepared is None:
                    return
                statement = _Statement(
                    prepared.trace_id, self._new_span_id(), prepared.parent_id, prepared.remote, prepared.sampled,
                    prepared.link, now - int(event.duration_ms * 1_000_000), prepared.name, prepared.base,
                    prepared.decision, prepared.query, prepared.approval_id,
                )
        if statement is None:
            return
        if statement.sampled:
            statement.rows = event.rows
            if event.masked:
                statement.set("sqlward.masked_columns", tuple(event.masked))
            if event.approval_id:
                statement.approval_id = event.approval_id
            if event.error is not None or event.sqlstate is not None:
                if event.sqlstate:
                    statement.set("db.response.status_code", event.sqlstate)
                statement.set("error.type", event.sqlstate or "error")
                statement.status = otlp.STATUS_ERROR
                statement.message = f"SQLSTATE {event.sqlstate}" if event.sqlstate else "failed"
            self._export(statement, now)
        scope.trace_id, scope.span_id = statement.ids
        session.restore = True

    def _current_ids(self, session: _Session) -> tuple[str, str]:
        """The ids the envelope names: the latest open statement's, else the session's."""
        if session.statements:
            return next(reversed(session.statements.values())).ids
        return session.ids

    def _export(self, statement: _Statement, end: int) -> None:
        """Queue the ended statement span (sampled only): encoded for OTLP, or as an SDK
        ReadableSpan when an SDK exporter was given."""
        spans = self._spans
        if spans is None or not statement.sampled:
            return
        if self._readable:
            spans.put(self._readable_statement(statement, end))
            return
        parts = [statement.base[1], statement.decision[1]]
        if statement.approval_id:
            parts.append(otlp.attribute("sqlward.approval_id", statement.approval_id))
        parts.append(statement.query[1])
        if statement.rows is not None:
            parts.append(_returned_rows(statement.rows))
        if statement.extra:
            parts.append(otlp.attributes(statement.extra))
        link = statement.link
        spans.put(otlp.encode_span(
            statement.trace_id, statement.span_id, statement.parent_id, statement.name, otlp.KIND_CLIENT,
            statement.start, end, b"".join(parts), otlp.link(link[0], link[1]) if link is not None else b"",
            statement.status, statement.message, statement.remote,
        ))

    def _readable_statement(self, statement: _Statement, end: int) -> ReadableSpan:
        """The statement span as the SDK's ReadableSpan (the `span_exporter` path: tests)."""
        attrs = {**statement.base[0], **statement.decision[0]}
        if statement.approval_id:
            attrs["sqlward.approval_id"] = statement.approval_id
        attrs.update(statement.query[0])
        if statement.rows is not None:
            attrs["db.response.returned_rows"] = statement.rows
        if statement.extra:
            attrs.update(statement.extra)
        flags = _SAMPLED if statement.sampled else _NOT_SAMPLED
        trace_id = int.from_bytes(statement.trace_id, "big")
        context = SpanContext(trace_id, int.from_bytes(statement.span_id, "big"), False, flags)
        parent = SpanContext(trace_id, int.from_bytes(statement.parent_id, "big"), statement.remote, flags)
        links: tuple[Link, ...] = ()
        if statement.link is not None:
            link_trace, link_span, link_sampled = statement.link
            links = (Link(SpanContext(
                int.from_bytes(link_trace, "big"), int.from_bytes(link_span, "big"), False,
                _SAMPLED if link_sampled else _NOT_SAMPLED,
            )),)
        status = _OK if statement.status == otlp.STATUS_UNSET and statement.message is None else Status(
            StatusCode(statement.status), statement.message,
        )
        return ReadableSpan(
            statement.name, context, parent, self.resource, attrs, (), links, SpanKind.CLIENT, None, status,
            statement.start, end, self._scope_info,
        )

    # -- approvals (sqlward.approvals.pending, when no count is given) ---------------------

    def _approval_requested(self, scope: AuditScope, event: ApprovalRequested) -> None:
        if self._pending_approvals is not None:
            return
        pending = self._approvals
        if len(pending) >= MAX_PENDING_APPROVALS:
            now = time.time()
            for approval_id in [a for a, expires in pending.items() if expires < now]:
                del pending[approval_id]
            while len(pending) >= MAX_PENDING_APPROVALS:
                del pending[next(iter(pending))]
        pending[event.approval_id] = event.expires

    def _approval_decided(self, scope: AuditScope, event: ApprovalDecided) -> None:
        if event.status != "pending":
            self._approvals.pop(event.approval_id, None)

    def _approval_done(self, scope: AuditScope, event: ApprovalExpired | ApprovalWithdrawn | ApprovalExecuted) -> None:
        self._approvals.pop(event.approval_id, None)

    # -- metric callbacks (the reader's thread) --------------------------------------------

    def _observe_statements(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(n, {"decision": d, "rule": r, "target": t}) for (d, r, t), n in list(self._statements.items())
        ]

    def _observe_sessions(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self._active)]

    def _observe_approvals(self, options: CallbackOptions) -> list[Observation]:
        if self._pending_approvals is not None:
            return [Observation(self._pending_approvals())]
        now = time.time()
        return [Observation(sum(1 for expires in list(self._approvals.values()) if expires >= now))]

    def _observe_backlog(self, options: CallbackOptions) -> list[Observation]:
        if self._sinks is None:
            return []
        return [Observation(s.backlog, {"sink": s.name, "kind": s.kind}) for s in self._sinks.status()]

    def _observe_refused(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"cause": cause}) for cause, n in list(self._refused.items())]

    # -- reading and stopping ---------------------------------------------------------------

    def _with_durations(self, data: MetricsData) -> MetricsData:
        """`data` with sqlward.statement.duration added to this gateway's scope."""
        histogram = self._durations.metric(self._clock())
        if histogram is None:
            return data
        resource_metrics = list(data.resource_metrics)
        if not resource_metrics:
            return MetricsData([ResourceMetrics(self.resource, [ScopeMetrics(self._scope_info, [histogram], "")], "")])
        first = resource_metrics[0]
        scopes = list(first.scope_metrics)
        for i, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == _SCOPE:
                scopes[i] = ScopeMetrics(scope_metrics.scope, [*scope_metrics.metrics, histogram], scope_metrics.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(self._scope_info, [histogram], ""))
        resource_metrics[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resource_metrics)

    def collect(self) -> MetricsData | None:
        """The metrics as of now (the pull reader's collection); None when metrics are off."""
        if self._pull is None:
            return None
        data = self._pull.get_metrics_data()
        return self._with_durations(data if data is not None else MetricsData([]))

    def prometheus_text(self) -> bytes:
        """The metrics in the Prometheus text exposition format (version 0.0.4), for /metrics."""
        data = self.collect()
        if data is None:
            return b""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_PrometheusView(data))
        return generate_latest(registry)

    @property
    def spans_dropped(self) -> int:
        """Spans dropped because the export queue was full (a collector slower than the gateway)."""
        return self._spans.dropped if self._spans is not None else 0

    def force_flush(self, timeout: float = 10.0) -> bool:
        """Export the spans ended so far (blocks up to `timeout` seconds)."""
        if self._spans is None:
            return True
        return self._spans.force_flush(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """End the spans of sessions still open, flush spans and metrics within `timeout`
        seconds, stop the exporters' threads. Blocks: call it from a worker thread
        (`trio.to_thread.run_sync(telemetry.shutdown)`) or `aclose`."""
        deadline = time.monotonic() + timeout
        for session in list(self._sessions.values()):
            self._end_session(session, {"sqlward.unfinished": True})
        self._sessions.clear()
        self._active = 0
        self.on = False
        if self._spans is not None:
            self._spans.shutdown(max(0.0, deadline - time.monotonic()))
            if self._sender is not None:
                self._sender.close()
            if self._span_exporter is not None:
                self._span_exporter.shutdown()
        if self._meters is not None:
            self._meters.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)

    async def aclose(self, timeout: float = 5.0) -> None:
        """`shutdown` in a worker thread."""
        await trio.to_thread.run_sync(self.shutdown, timeout)


class _Aggregate:
    __slots__ = ("counts", "sum", "min", "max")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class _Durations:
    """sqlward.statement.duration, aggregated here rather than by the SDK's histogram (whose
    `record` costs about 12 µs: attribute checks and hashing): one explicit-bucket histogram per
    target (bucket i counts durations in (bounds[i-1], bounds[i]]), read as a cumulative
    OpenTelemetry `Metric`. Targets come from the configuration: the dict stays small."""

    def __init__(self, bounds: tuple[float, ...], start: int) -> None:
        self.bounds = bounds
        self.start = start
        self.by_target: dict[str, _Aggregate] = {}

    def record(self, ms: float, target: str) -> None:
        aggregate = self.by_target.get(target)
        if aggregate is None:
            aggregate = self.by_target[target] = _Aggregate(len(self.bounds) + 1)
        aggregate.counts[bisect_left(self.bounds, ms)] += 1
        aggregate.sum += ms
        if ms < aggregate.min:
            aggregate.min = ms
        if ms > aggregate.max:
            aggregate.max = ms

    def metric(self, now: int) -> OtelMetric | None:
        points = []
        for target, aggregate in list(self.by_target.items()):
            counts = list(aggregate.counts)  # count from the buckets: a consistent point
            points.append(HistogramDataPoint(
                attributes={"target": target}, start_time_unix_nano=self.start, time_unix_nano=now,
                count=sum(counts), sum=aggregate.sum, bucket_counts=counts, explicit_bounds=list(self.bounds),
                min=aggregate.min, max=aggregate.max,
            ))
        if not points:
            return None
        return OtelMetric(
            name="sqlward.statement.duration", description="Statement run time as the gateway saw it, by target",
            unit="ms", data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
        )


class _WithDurations(MetricExporter):
    """The OTLP metric exporter, each export with sqlward.statement.duration added."""

    def __init__(self, exporter: MetricExporter, add: Callable[[MetricsData], MetricsData]) -> None:
        super().__init__(preferred_temporality=_CUMULATIVE)
        self.exporter = exporter
        self.add = add

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        return self.exporter.export(self.add(metrics_data), timeout_millis=timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis)


def _prometheus_name(name: str, unit: str) -> str:
    base = name.replace(".", "_").replace("-", "_")
    suffix = _PROM_UNITS.get(unit)
    return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base


class _PrometheusView:
    """A prometheus_client collector over one collection of OpenTelemetry metrics (names as
    the OpenTelemetry-to-Prometheus conventions give them: dots to underscores, the unit as a
    suffix, counters with _total)."""

    def __init__(self, data: MetricsData) -> None:
        self.data = data

    def collect(self) -> Iterable[Metric]:
        for resource_metrics in self.data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    family = self._family(metric.name, metric.unit or "", metric.description or "", metric.data)
                    if family is not None:
                        yield family

    @staticmethod
    def _family(name: str, unit: str, doc: str, data: object) -> Metric | None:
        prom = _prometheus_name(name, unit)
        if isinstance(data, (Sum, Gauge)):
            points = list(data.data_points)
            labels = sorted({k for p in points for k in (p.attributes or {})})
            family: CounterMetricFamily | GaugeMetricFamily
            if isinstance(data, Sum) and data.is_monotonic:
                family = CounterMetricFamily(prom, doc, labels=labels)
            else:
                family = GaugeMetricFamily(prom, doc, labels=labels)
            for p in points:
                attributes = p.attributes or {}
                family.add_metric([str(attributes.get(k, "")) for k in labels], p.value)
            return family
        if isinstance(data, Histogram):
            points = list(data.data_points)
            labels = sorted({k for p in points for k in (p.attributes or {})})
            histogram = HistogramMetricFamily(prom, doc, labels=labels)
            for p in points:
                attributes = p.attributes or {}
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip(p.explicit_bounds, p.bucket_counts):
                    cumulative += count
                    buckets.append((repr(float(bound)), cumulative))
                buckets.append(("+Inf", p.count))
                histogram.add_metric([str(attributes.get(k, "")) for k in labels], buckets, p.sum)
            return histogram
        return None
