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
- Spans are written straight to the SDK's `BatchSpanProcessor` as finished `ReadableSpan`s
  with attributes built here; the SDK's `Tracer` is not used: its per-span attribute
  validation and locking cost about 40 µs a statement, this path a few µs (docs/performance
  figures in docs/observability.md). The batch processor's thread exports over OTLP/HTTP
  (`endpoint` + "/v1/traces").
- Metrics. The hot path only bumps plain counters in this object (a dict add; for a duration
  a bisect into its target's buckets); a `MeterProvider` of its own reads them through
  observable instruments when a reader collects: the periodic OTLP reader (`endpoint` +
  "/v1/metrics", its own thread) and a pull reader rendered as Prometheus text by
  `prometheus_text()` (for /metrics). The duration histogram is aggregated here (`_Durations`:
  the SDK histogram's `record` costs about 12 µs) and added to each collection as a cumulative
  explicit-bucket histogram (`_WithDurations` around the OTLP exporter, `collect()` for the
  pull reader). Every metric is cumulative.

Error handling: `observe` never raises (an `Observer` must not): an unexpected error is logged
once to `sqlward.telemetry` and that event is skipped. An export failure is the SDK's to retry
and log; it never reaches a session.

Threads: `observe` runs on the gateway's trio thread; the metric callbacks run on the
exporter's thread or on the caller of `prometheus_text()`. They only read what observe writes
(ints, dict items copied in one call, a deque), and `SinkHealth.status()` must only read.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

import msgspec
import trio
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
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
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
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
DURATION_BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)

_DB_SYSTEMS = {"postgres": "postgresql", "mysql": "mysql"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_OK = Status(StatusCode.UNSET)
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


def _hex_ids(trace_id: int, span_id: int) -> tuple[str, str]:
    return format(trace_id, "032x"), format(span_id, "016x")


def _parse_traceparent(value: str) -> SpanContext | None:
    """The remote parent named by a W3C traceparent (version 00), or None when it is unusable."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, True, _SAMPLED if flags & 1 else _NOT_SAMPLED)


class _Statement:
    """An open statement span."""

    __slots__ = ("context", "parent", "ids", "start", "name", "attrs", "links", "status")

    def __init__(
        self, context: SpanContext, parent: SpanContext, start: int, name: str,
        attrs: dict[str, object], links: tuple[Link, ...],
    ) -> None:
        self.context = context
        self.parent = parent
        self.ids = _hex_ids(context.trace_id, context.span_id)
        self.start = start
        self.name = name
        self.attrs = attrs
        self.links = links
        self.status = _OK


class _Session:
    """One session's span and statements (module doc)."""

    __slots__ = (
        "context", "ids", "start", "attrs", "target", "who", "base", "db_system",
        "statements", "prepared", "restore",
    )

    def __init__(self, context: SpanContext, start: int, attrs: dict[str, object]) -> None:
        self.context = context
        self.ids = _hex_ids(context.trace_id, context.span_id)
        self.start = start
        self.attrs = attrs
        self.target = ""
        self.who: Who | None = None
        self.base: dict[str, object] = {}  # the statement attributes every statement shares
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

        # -- traces
        if span_exporter is None and config.traces and config.endpoint:
            span_exporter = OTLPSpanExporter(
                endpoint=config.endpoint.rstrip("/") + "/v1/traces", headers=dict(config.headers),
                timeout=config.timeout_seconds, meter_provider=no_meters,
            )
        self.tracing = config.traces and span_exporter is not None
        self._processor: BatchSpanProcessor | None = None
        if self.tracing and span_exporter is not None:
            self._processor = BatchSpanProcessor(
                span_exporter, export_timeout_millis=config.timeout_seconds * 1000, meter_provider=no_meters,
            )
        self._sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self._ids = RandomIdGenerator()

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
                otlp = OTLPMetricExporter(
                    endpoint=config.endpoint.rstrip("/") + "/v1/metrics", headers=dict(config.headers),
                    timeout=config.timeout_seconds, preferred_temporality=_CUMULATIVE, meter_provider=no_meters,
                )
                readers.append(PeriodicExportingMetricReader(
                    _WithDurations(otlp, self._with_durations),
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
        flags = "01" if session.context.trace_flags.sampled else "00"
        for statement in session.statements.values():
            if statement.ids[1] == scope.span_id:
                flags = "01" if statement.context.trace_flags.sampled else "00"
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
        trace_id = self._ids.generate_trace_id()
        span_id = self._ids.generate_span_id()
        sampled = False
        if self.tracing:
            sampled = self._sampler.should_sample(None, trace_id, "sqlward.session", SpanKind.SERVER).decision.is_sampled()
        context = SpanContext(trace_id, span_id, False, _SAMPLED if sampled else _NOT_SAMPLED)
        session = _Session(context, self._clock(), attrs)
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
        session.attrs.update(session.base)
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
        session.base = base

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
            statement.attrs["sqlward.unfinished"] = True
            self._export(statement, now)
        session.statements.clear()
        session.attrs.update(attrs)
        processor = self._processor
        if processor is not None and session.context.trace_flags.sampled:
            status = Status(StatusCode.ERROR, "login refused") if "sqlward.refused" in session.attrs else _OK
            processor.on_end(ReadableSpan(
                "sqlward.session", session.context, None, self.resource, session.attrs, (), (), SpanKind.SERVER,
                None, status, session.start, now, self._scope_info,
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
        parent = session.context
        links: tuple[Link, ...] = ()
        client = _parse_traceparent(event.traceparent) if event.traceparent else None
        if client is not None:
            parent = client
            links = (Link(session.context),)
        context = SpanContext(parent.trace_id, self._ids.generate_span_id(), False, parent.trace_flags)
        if not parent.trace_flags.sampled:  # nothing to export: the ids only (the envelope, upstream)
            statement = _Statement(context, parent, 0, "", {}, links)
            self._opened_statement(scope, session, event, statement)
            return
        if event.who is not session.who or event.target != session.target:
            self._bind(session, event.who, event.target, event.environment)
        attrs = dict(session.base)
        attrs["sqlward.decision"] = event.action
        if event.rule_id:
            attrs["sqlward.rule"] = event.rule_id
        if event.approval_id:
            attrs["sqlward.approval_id"] = event.approval_id
        name = ""
        if event.operations:
            name = attrs["db.operation.name"] = event.operations[0].upper()
            if event.tables:
                attrs["db.collection.name"] = event.tables[0]
                name = f"{name} {event.tables[0]}"
        if event.fingerprint:
            attrs["db.query.text"] = event.fingerprint[:MAX_QUERY_TEXT]
        statement = _Statement(context, parent, self._clock(), name or session.db_system or "sqlward.statement", attrs, links)
        self._opened_statement(scope, session, event, statement)

    def _opened_statement(self, scope: AuditScope, session: _Session, event: StatementDecided, statement: _Statement) -> None:
        scope.trace_id, scope.span_id = statement.ids
        if event.action == "deny":
            statement.status = Status(StatusCode.ERROR, f"denied by {event.rule_id or 'policy'}")
            self._export(statement, statement.start)
            session.restore = True
            return
        open_ = session.statements
        if len(open_) >= MAX_OPEN_STATEMENTS:
            oldest = next(iter(open_))
            old = open_.pop(oldest)
            old.attrs["sqlward.unfinished"] = True
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
                context = SpanContext(
                    prepared.parent.trace_id, self._ids.generate_span_id(), False, prepared.parent.trace_flags,
                )
                statement = _Statement(
                    context, prepared.parent, now - int(event.duration_ms * 1_000_000), prepared.name,
                    dict(prepared.attrs), prepared.links,
                )
        if statement is None:
            return
        attrs = statement.attrs
        if event.rows is not None:
            attrs["db.response.returned_rows"] = event.rows
        if event.masked:
            attrs["sqlward.masked_columns"] = tuple(event.masked)
        if event.approval_id:
            attrs["sqlward.approval_id"] = event.approval_id
        if event.error is not None or event.sqlstate is not None:
            if event.sqlstate:
                attrs["db.response.status_code"] = event.sqlstate
            attrs["error.type"] = event.sqlstate or "error"
            statement.status = Status(StatusCode.ERROR, f"SQLSTATE {event.sqlstate}" if event.sqlstate else "failed")
        self._export(statement, now)
        scope.trace_id, scope.span_id = statement.ids
        session.restore = True

    def _current_ids(self, session: _Session) -> tuple[str, str]:
        """The ids the envelope names: the latest open statement's, else the session's."""
        if session.statements:
            return next(reversed(session.statements.values())).ids
        return session.ids

    def _export(self, statement: _Statement, end: int) -> None:
        processor = self._processor
        if processor is not None and statement.context.trace_flags.sampled:
            processor.on_end(ReadableSpan(
                statement.name, statement.context, statement.parent, self.resource, statement.attrs, (), statement.links,
                SpanKind.CLIENT, None, statement.status, statement.start, end, self._scope_info,
            ))

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

    def force_flush(self, timeout: float = 10.0) -> bool:
        """Export the spans ended so far (blocks up to `timeout` seconds)."""
        if self._processor is None:
            return True
        return self._processor.force_flush(int(timeout * 1000))

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
        if self._processor is not None:
            self._processor.force_flush(int(max(0.0, deadline - time.monotonic()) * 1000))
            self._processor.shutdown()
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
