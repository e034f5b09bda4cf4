"""gateway.otlp_traces: the hand-written OTLP/protobuf span encoding and the batch exporter.

How it works: the encoding is checked against the SDK's own encoder. A span is made both ways —
an SDK `ReadableSpan` encoded by `encode_spans` (what the OTLP exporter sent before), and the
same span through `encode_span` + `Envelope.request` — and the two requests are decoded with
opentelemetry-proto's `ExportTraceServiceRequest` and compared: whole messages, then span by
span, field by field and attribute by attribute (ints, bools, floats, arrays, unicode, empty
strings, links, status codes and messages, parent ids, flags, dropped counts zero).
Hypothesis draws attribute values. `Telemetry` itself is checked the same way: one event
stream played into a Telemetry over the SDK's InMemorySpanExporter and into one exporting over
real OTLP/HTTP (`tests.support.otlp_receiver.OtlpReceiver`), with the same ids and clock: the
spans received must equal the SDK's encoding of the in-memory ones. The exporter is checked for
a full queue (drops, counted, logged once, never blocks), retries against the real receiver
answering 503 then 200, no retry of a 400, and the flush at shutdown.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sqlward.audit.events import (
    ConnectionAuthenticated,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    StatementCompleted,
    StatementDecided,
    StatementExecuted,
    Who,
)
from sqlward.audit.recorder import Recorder
from sqlward.gateway import otlp_traces as otlp
from sqlward.gateway import telemetry as telemetry_module
from sqlward.gateway.config import TelemetryConfig
from sqlward.gateway.telemetry import TargetInfo, Telemetry
from tests.support.auditsink import ListSink
from tests.support.otlp_receiver import OtlpReceiver, attributes

RESOURCE = Resource.create({"service.name": "sqlward", "service.instance.id": "gw-t", "service.version": "1.2.3"})
SCOPE = InstrumentationScope("sqlward.gateway.telemetry", "1.2.3")
ENVELOPE = otlp.Envelope(RESOURCE.attributes, SCOPE.name, SCOPE.version)
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
KINDS = {SpanKind.INTERNAL: otlp.KIND_INTERNAL, SpanKind.SERVER: otlp.KIND_SERVER, SpanKind.CLIENT: otlp.KIND_CLIENT}

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SESSION_SPAN = 0x00F067AA0BA902B7
CLIENT_SPAN = 0xB7AD6B7169203331


def sdk_request(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    """What the SDK's OTLP exporter sends for `spans`, decoded."""
    return ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())


def ours(span: ReadableSpan) -> bytes:
    """`span` through this module's encoder (a ScopeSpans.spans field)."""
    assert span.context is not None
    links = b"".join(
        otlp.link(link.context.trace_id.to_bytes(16, "big"), link.context.span_id.to_bytes(8, "big"), link.context.is_remote)
        for link in span.links
    )
    return otlp.encode_span(
        span.context.trace_id.to_bytes(16, "big"), span.context.span_id.to_bytes(8, "big"),
        span.parent.span_id.to_bytes(8, "big") if span.parent is not None else None,
        span.name, KINDS[span.kind], span.start_time or 0, span.end_time or 0, otlp.attributes(span.attributes),
        links, span.status.status_code.value, span.status.description,
        span.parent is not None and span.parent.is_remote,
    )


def our_request(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(ENVELOPE.request([ours(s) for s in spans]))


def readable(
    attrs: Mapping[str, object] | None = None, *, name: str = "SELECT public.users", kind: SpanKind = SpanKind.CLIENT,
    parent: SpanContext | None = None, links: tuple[Link, ...] = (), status: Status = Status(StatusCode.UNSET),
    span_id: int = 0x1122334455667788, start: int = 1_700_000_000_123_456_789, end: int = 1_700_000_000_223_456_789,
) -> ReadableSpan:
    context = SpanContext(TRACE, span_id, False, SAMPLED)
    return ReadableSpan(
        name, context, parent, RESOURCE, dict(attrs or {}), (), links, kind, None, status, start, end, SCOPE,
    )


def assert_same(ours_: ExportTraceServiceRequest, sdk: ExportTraceServiceRequest) -> None:
    """Field by field (clear failures), then the whole messages."""
    assert len(ours_.resource_spans) == len(sdk.resource_spans) == 1
    (o_rs,), (s_rs,) = ours_.resource_spans, sdk.resource_spans
    assert attributes(o_rs.resource.attributes) == attributes(s_rs.resource.attributes)
    assert o_rs.schema_url == s_rs.schema_url
    (o_ss,), (s_ss,) = o_rs.scope_spans, s_rs.scope_spans
    assert o_ss.scope == s_ss.scope
    assert len(o_ss.spans) == len(s_ss.spans)
    for o, s in zip(o_ss.spans, s_ss.spans):
        for field in (
            "trace_id", "span_id", "trace_state", "parent_span_id", "flags", "name", "kind", "start_time_unix_nano",
            "end_time_unix_nano", "dropped_attributes_count", "dropped_events_count", "dropped_links_count",
        ):
            assert getattr(o, field) == getattr(s, field), field
        assert [kv.key for kv in o.attributes] == [kv.key for kv in s.attributes]
        for o_kv, s_kv in zip(o.attributes, s.attributes):
            assert o_kv.value == s_kv.value, o_kv.key
            assert o_kv.value.WhichOneof("value") == s_kv.value.WhichOneof("value"), o_kv.key
        assert attributes(o.attributes) == attributes(s.attributes)
        assert list(o.links) == list(s.links)
        assert o.status == s.status and o.HasField("status") == s.HasField("status")
        assert list(o.events) == list(s.events) == []
        assert o.dropped_attributes_count == o.dropped_events_count == o.dropped_links_count == 0
        assert o == s
    assert ours_ == sdk


# -- encoding -------------------------------------------------------------------------------------


def test_a_statement_span_decodes_to_what_the_sdk_encoder_makes() -> None:
    span = readable({
        "db.system.name": "postgresql", "db.namespace": "appdb", "server.address": "db.internal", "server.port": 5432,
        "sqlward.identity": "alice@example.com", "sqlward.actors": ("agent-7", "bob"), "sqlward.decision": "allow",
        "db.query.text": "SELECT email FROM public.users WHERE id = ?", "db.response.returned_rows": 3,
        "sqlward.unfinished": True, "sqlward.tls": False, "zero": 0, "negative": -5, "big": (1 << 63) - 1,
        "smallest": -(1 << 63), "ratio": 0.25, "empty": "", "unicode": "prénom ✓ 名前 🙂", "no columns": (),
        "ints": (1, 2, 300), "bools": (True, False), "floats": (1.5, -0.0), "": "empty key",
    }, parent=SpanContext(TRACE, SESSION_SPAN, False, SAMPLED))
    assert_same(our_request([span]), sdk_request([span]))


def test_a_session_span_links_remote_parents_and_statuses() -> None:
    session = SpanContext(TRACE, SESSION_SPAN, False, SAMPLED)
    client = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, CLIENT_SPAN, True, SAMPLED)
    spans = [
        readable({"sqlward.connection_id": "c1", "client.port": 50432}, name="sqlward.session", kind=SpanKind.SERVER, span_id=SESSION_SPAN),
        readable({"sqlward.refused": "bad password"}, name="sqlward.session", kind=SpanKind.SERVER, status=Status(StatusCode.ERROR, "login refused")),
        readable({"sqlward.decision": "deny"}, parent=session, status=Status(StatusCode.ERROR, "denied by no-drop"), start=5, end=5),
        readable({"error.type": "23505"}, parent=session, status=Status(StatusCode.ERROR, "SQLSTATE 23505")),
        readable({"error.type": "error"}, parent=session, status=Status(StatusCode.ERROR)),
        readable({}, parent=session, status=Status(StatusCode.OK)),
        readable({"sqlward.decision": "allow"}, parent=client, links=(Link(session),)),
        readable({}, name="", kind=SpanKind.INTERNAL, parent=client, start=0, end=0),
        readable({"x": "y"}, parent=session, start=1, end=0),
    ]
    assert_same(our_request(spans), sdk_request(spans))
    decoded = our_request(spans).resource_spans[0].scope_spans[0].spans
    assert decoded[6].flags == 0x300 and decoded[6].links[0].span_id == SESSION_SPAN.to_bytes(8, "big")
    assert decoded[2].status.code == Span().status.STATUS_CODE_ERROR


def test_the_request_envelope_holds_the_resource_and_scope_once_for_a_batch() -> None:
    spans = [readable({"i": i}, span_id=i + 1) for i in range(300)]  # lengths past one-byte varints
    assert_same(our_request(spans), sdk_request(spans))
    assert ENVELOPE.request([]) and ExportTraceServiceRequest.FromString(ENVELOPE.request([])).resource_spans[0].scope_spans[0].scope.name == SCOPE.name


def test_long_values_and_unencodable_ones_are_handled_as_the_sdk_does(caplog: pytest.LogCaptureFixture) -> None:
    span = readable({"long": "x" * 70_000, "many": tuple(str(i) for i in range(2000)), "nested": {"a": 1, "b": ("c",)}})
    assert_same(our_request([span]), sdk_request([span]))
    # Beyond int64 the SDK's encoder drops the attribute (and logs); so does this one.
    with caplog.at_level(logging.WARNING):
        encoded = otlp.attributes({"ok": 1, "huge": 1 << 64, "object": object(), "after": "kept"})
    decoded = Span.FromString(b"".join(encoded[i:i + 1] for i in range(len(encoded))))
    assert attributes(decoded.attributes) == {"ok": 1, "after": "kept"}


ATOMS = (
    st.text(max_size=40)
    | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.booleans()
    | st.floats(allow_nan=False)
)
VALUES = ATOMS | st.lists(st.text(max_size=10), max_size=5).map(tuple) | st.lists(
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), max_size=5,
).map(tuple) | st.lists(st.booleans(), max_size=5).map(tuple) | st.lists(st.floats(allow_nan=False), max_size=5).map(tuple)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attrs=st.dictionaries(st.text(max_size=30), VALUES, max_size=12),
    name=st.text(max_size=60),
    start=st.integers(min_value=0, max_value=(1 << 64) - 1),
    end=st.integers(min_value=0, max_value=(1 << 64) - 1),
    span_id=st.integers(min_value=1, max_value=(1 << 64) - 1),
    remote=st.booleans(),
    status=st.sampled_from([StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR]),
    message=st.none() | st.text(max_size=30),
)
def test_any_attributes_decode_as_the_sdk_encodes_them(
    attrs: dict[str, object], name: str, start: int, end: int, span_id: int, remote: bool, status: StatusCode,
    message: str | None,
) -> None:
    parent = SpanContext(TRACE, span_id, remote, SAMPLED)
    span = readable(attrs, name=name, parent=parent, start=start, end=end, span_id=span_id, status=Status(status, message))
    if status is not StatusCode.ERROR:
        span = readable(attrs, name=name, parent=parent, start=start, end=end, span_id=span_id, status=Status(status))
    assert_same(our_request([span]), sdk_request([span]))


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_varint(n: int) -> None:
    from google.protobuf.internal.encoder import _VarintBytes

    assert otlp.varint(n) == _VarintBytes(n)


# -- Telemetry: the production path equals the SDK path --------------------------------------------

TARGETS = {"app": TargetInfo(db_system="postgresql", address="db.internal", port=5432, database="appdb")}
WHO = Who(subject="alice@example.com", groups=("dev",), actor=("agent-7",), verified_by="oidc", reason="CHG-42", issuer="https://idp.example.com")
BOB = Who(subject="bob@example.com", verified_by="password")
CLIENT_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def decided(rid: int, **kw: object) -> StatementDecided:
    fields: dict[str, object] = dict(
        request_id=rid, who=WHO, target="app", environment="production", sql="SELECT 1",
        fingerprint="SELECT email FROM public.users WHERE id = ?", operations=("select",), tables=("public.users",),
        action="allow",
    )
    fields.update(kw)
    return StatementDecided(**fields)  # type: ignore[arg-type]


def play(telemetry: Telemetry) -> None:
    """Sessions with every kind of statement span: allowed, denied, failed, masked, a client
    traceparent, a prepared statement run twice, one never completed, a refused login."""
    recorder = Recorder("gw-t", ListSink(), observers=(telemetry,))
    scope = recorder.scope("c1")
    scope.add(ConnectionOpened(client_addr="[::1]:50432", listener="pg", protocol="postgres", tls=True))
    scope.add(ConnectionAuthenticated(who=WHO, target="app", environment="production", application_name="psql ✓"))
    scope.add(decided(1))
    scope.add(StatementCompleted(request_id=1, rows=3, duration_ms=1.0, masked={"email (pii-email: partial)": 3}))
    scope.add(decided(2, action="deny", rule_id="no-drop", operations=("drop",), fingerprint="DROP TABLE public.users"))
    scope.add(decided(3, operations=("insert",), fingerprint="INSERT INTO public.users VALUES (?)", approval_id="ap-1"))
    scope.add(StatementCompleted(request_id=3, duration_ms=0.8, error="dup", sqlstate="23505", approval_id="ap-2"))
    scope.add(decided(4, traceparent=CLIENT_TP, tables=()))
    scope.add(StatementCompleted(request_id=4, rows=0, duration_ms=0.3))
    scope.add(decided(5, statement_name="s1", operations=(), tables=(), fingerprint=""))
    scope.add(StatementExecuted(request_id=6, statement_name="s1"))
    scope.add(StatementCompleted(request_id=6, prepared_ref=5, rows=1, duration_ms=1.0, error="x"))
    scope.add(StatementCompleted(request_id=7, prepared_ref=5, rows=1 << 40, duration_ms=200.0))
    scope.add(decided(8, who=BOB, action="review", rule_id="mass-write"))
    scope.add(ConnectionClosed(duration_ms=500.0, requests=8, reason="client"))
    refused = recorder.scope("c2")
    refused.add(ConnectionOpened(client_addr="10.0.0.9:1", listener="pg", protocol="postgres"))
    refused.add(ConnectionRefused(user="mallory", target="app", reason="bad password"))


def deterministic(telemetry: Telemetry, seed: int = 7) -> None:
    rng = random.Random(seed)
    telemetry._new_trace_id = lambda: rng.randbytes(16)  # type: ignore[method-assign]
    telemetry._new_span_id = lambda: rng.randbytes(8)  # type: ignore[method-assign]
    ticks = iter(range(1_700_000_000_000_000_000, 1 << 62, 1_000_003))
    telemetry._clock = lambda: next(ticks)  # type: ignore[method-assign]


def test_telemetry_over_otlp_sends_exactly_what_the_sdk_encoder_makes_of_its_spans() -> None:
    memory = InMemorySpanExporter()
    sdk_side = Telemetry(TelemetryConfig(metrics=False), gateway="gw-t", targets=TARGETS, span_exporter=memory, version="9.9")
    deterministic(sdk_side)
    play(sdk_side)
    sdk_side.shutdown(5)
    expected = sdk_request(list(memory.get_finished_spans()))

    with OtlpReceiver() as receiver:
        config = TelemetryConfig(endpoint=receiver.endpoint, metrics=False)
        production = Telemetry(config, gateway="gw-t", targets=TARGETS, version="9.9")
        deterministic(production)
        play(production)
        production.shutdown(5)
        assert len(receiver.traces) == 1, receiver.requests
        received = receiver.traces[0]
    assert len(expected.resource_spans[0].scope_spans[0].spans) == 9
    assert_same(received, expected)


def test_the_production_path_builds_no_readable_span(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a ReadableSpan was built")

    monkeypatch.setattr(telemetry_module, "ReadableSpan", refuse)
    with OtlpReceiver() as receiver:
        telemetry = Telemetry(TelemetryConfig(endpoint=receiver.endpoint, metrics=False), gateway="g", targets=TARGETS)
        play(telemetry)
        telemetry.shutdown(5)
        assert not telemetry._failed
        assert len(receiver.spans()) == 9


# -- the exporter ----------------------------------------------------------------------------------


def test_a_full_queue_drops_counts_logs_once_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    sent: list[list[int]] = []

    def send(batch: list[int], deadline: float) -> bool:
        release.wait(10)
        sent.append(batch)
        return True

    exporter: otlp.BatchExporter[int] = otlp.BatchExporter(send, max_queue=8, max_batch=4, delay=0.01)
    try:
        exporter.put(-1)
        assert _wait(lambda: not exporter._queue)  # the thread holds it, waiting in send
        with caplog.at_level(logging.WARNING, logger="sqlward.telemetry"):
            start = time.perf_counter()
            for i in range(100):
                exporter.put(i)
            assert time.perf_counter() - start < 0.5
        assert exporter.dropped == 92
        drops = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drops) == 1
        release.set()
        assert exporter.force_flush(5)
        assert sorted(i for batch in sent for i in batch) == [-1, *range(8)]
        assert all(len(batch) <= 4 for batch in sent)
        assert exporter.exported == 9
    finally:
        release.set()
        exporter.shutdown(2)


def test_a_full_batch_goes_at_once_a_partial_one_after_the_delay() -> None:
    sent: list[list[int]] = []
    exporter: otlp.BatchExporter[int] = otlp.BatchExporter(lambda b, d: sent.append(b) or True, max_batch=4, delay=0.5)
    try:
        for i in range(4):
            exporter.put(i)
        assert _wait(lambda: sent == [[0, 1, 2, 3]], 0.4)
        exporter.put(4)
        time.sleep(0.1)
        assert sent == [[0, 1, 2, 3]]
        assert _wait(lambda: len(sent) == 2, 2)
    finally:
        exporter.shutdown(1)


def test_shutdown_sends_what_is_queued_within_its_timeout_and_a_raising_send_is_survived() -> None:
    sent: list[int] = []
    calls = 0

    def send(batch: list[int], deadline: float) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        sent.extend(batch)
        return True

    exporter: otlp.BatchExporter[int] = otlp.BatchExporter(send, max_batch=2, delay=60)
    exporter.put(0)
    exporter.put(1)  # a full batch: sent at once, and raises
    assert _wait(lambda: calls == 1)
    for i in range(2, 7):
        exporter.put(i)
    start = time.monotonic()
    exporter.shutdown(5)
    assert time.monotonic() - start < 2
    assert sorted(sent) == [2, 3, 4, 5, 6]
    exporter.put(99)
    assert exporter.dropped == 1


def test_the_sender_retries_503_then_delivers_to_a_real_receiver() -> None:
    with OtlpReceiver() as receiver:
        receiver.fail_next(1, 503)
        waits: list[float] = []
        sender = otlp.OtlpHttpSender(
            receiver.endpoint + "/v1/traces", ENVELOPE, headers={"x-tenant": "t"}, timeout=5, sleep=waits.append,
        )
        spans = [readable({"i": i}, span_id=i + 1) for i in range(3)]
        exporter: otlp.BatchExporter[bytes] = otlp.BatchExporter(sender, timeout=5)  # type: ignore[arg-type]
        for span in spans:
            exporter.put(ours(span))
        assert exporter.force_flush(5)
        exporter.shutdown(1)
        assert receiver.requests == [("/v1/traces", 503), ("/v1/traces", 200)]
        assert len(waits) == 1 and 0.3 < waits[0] < 0.7
        assert_same(receiver.traces[0], sdk_request(spans))
        assert exporter.exported == 3 and sender.failed == 0


def test_the_sender_gives_up_on_a_400_and_after_a_few_retries() -> None:
    with OtlpReceiver() as receiver:
        waits: list[float] = []
        sender = otlp.OtlpHttpSender(receiver.endpoint + "/v1/traces", ENVELOPE, timeout=60, sleep=waits.append)
        receiver.fail_next(1, 400)
        assert not sender([ours(readable())], time.monotonic() + 60)
        assert receiver.requests == [("/v1/traces", 400)] and waits == []
        receiver.fail_next(5, 504)
        assert not sender([ours(readable())], time.monotonic() + 60)
        assert len(waits) == 4 and waits == sorted(waits)  # five attempts, growing waits
        assert sender.failed == 2 and sender.failing
        assert sender([ours(readable())], time.monotonic() + 60) and not sender.failing
        sender.close()


def test_a_collector_that_is_down_costs_the_deadline_not_more() -> None:
    with OtlpReceiver() as receiver:
        endpoint = receiver.endpoint
    sender = otlp.OtlpHttpSender(endpoint + "/v1/traces", ENVELOPE, timeout=0.6)
    start = time.monotonic()
    assert not sender([ours(readable())], time.monotonic() + 30)
    assert time.monotonic() - start < 1.5


def _wait(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return bool(predicate())  # type: ignore[operator]
