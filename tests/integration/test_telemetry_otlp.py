"""Telemetry over real OTLP/HTTP: `Telemetry` with its real OTLP span and metric exporters, sending
to `tests.support.otlp_receiver.OtlpReceiver` (a real HTTP server on 127.0.0.1 that decodes the
protobuf bodies with opentelemetry-proto). Sessions are played through a real `Recorder`; every
statement span received must name the person (sqlward.identity), the decision and the
redacted statement (db.query.text), and the metrics must arrive too. The receiver answers 503
to the first requests of one test: the exporter retries and the spans still arrive.
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sqlward.audit.events import (
    ConnectionAuthenticated,
    ConnectionClosed,
    ConnectionOpened,
    StatementCompleted,
    StatementDecided,
    Who,
)
from sqlward.audit.recorder import Recorder
from sqlward.gateway.config import TelemetryConfig
from sqlward.gateway.telemetry import TargetInfo, Telemetry
from tests.support.auditsink import ListSink
from tests.support.otlp_receiver import OtlpReceiver, attributes

TARGETS = {"app": TargetInfo(db_system="postgresql", address="db.internal", port=5432, database="appdb")}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PEOPLE = ("alice@example.com", "bob@example.com")


def play(telemetry: Telemetry) -> None:
    recorder = Recorder("gw-it", ListSink(), observers=(telemetry,))
    for n, person in enumerate(PEOPLE):
        who = Who(subject=person, verified_by="oidc", issuer="https://idp.example.com")
        scope = recorder.scope(f"conn-{n}")
        scope.add(ConnectionOpened(client_addr="127.0.0.1:40000", listener="pg", protocol="postgres"))
        scope.add(ConnectionAuthenticated(who=who, target="app", environment="production"))
        scope.add(StatementDecided(
            request_id=1, who=who, target="app", environment="production",
            sql="UPDATE accounts SET balance = 100 WHERE id = 7", fingerprint="UPDATE accounts SET balance = ? WHERE id = ?",
            operations=("update",), tables=("public.accounts",), action="allow",
            traceparent=f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01" if n == 0 else None,
        ))
        scope.add(StatementCompleted(request_id=1, rows=1, duration_ms=2.5))
        scope.add(StatementDecided(
            request_id=2, who=who, target="app", environment="production", sql="DROP TABLE accounts",
            fingerprint="DROP TABLE accounts", operations=("drop",), tables=("public.accounts",), action="deny", rule_id="no-drop",
        ))
        scope.add(ConnectionClosed(duration_ms=10.0, requests=2))


def statement_spans(receiver: OtlpReceiver) -> list[Span]:
    return [span for _, span in receiver.spans() if span.kind == Span.SPAN_KIND_CLIENT]


def test_spans_and_metrics_arrive_over_otlp_http() -> None:
    with OtlpReceiver() as receiver:
        config = TelemetryConfig(
            endpoint=receiver.endpoint, headers={"x-tenant": "it"}, metrics_interval_seconds=0.2, timeout_seconds=5,
        )
        telemetry = Telemetry(config, gateway="gw-it", targets=TARGETS)
        play(telemetry)
        telemetry.shutdown(10)  # flushes the spans and the last metrics
        assert receiver.wait_for(lambda r: len(statement_spans(r)) == 4), receiver.requests

        spans = receiver.spans()
        resource = spans[0][0]
        assert resource["service.name"] == "sqlward" and resource["service.instance.id"] == "gw-it"
        sessions = [span for _, span in spans if span.kind == Span.SPAN_KIND_SERVER]
        assert sorted(attributes(s.attributes)["sqlward.identity"] for s in sessions) == sorted(PEOPLE)
        seen = []
        for span in statement_spans(receiver):
            a = attributes(span.attributes)
            assert a["sqlward.identity"] in PEOPLE
            assert a["sqlward.decision"] in ("allow", "deny")
            assert a["db.query.text"] in ("UPDATE accounts SET balance = ? WHERE id = ?", "DROP TABLE accounts")
            assert "100" not in str(a) and "= 7" not in str(a)
            assert a["db.system.name"] == "postgresql" and a["server.port"] == 5432
            seen.append((a["sqlward.identity"], a["sqlward.decision"]))
            if a["sqlward.decision"] == "deny":
                assert span.status.code == span.status.STATUS_CODE_ERROR
                assert a["sqlward.rule"] == "no-drop"
        assert sorted(seen) == sorted((p, d) for p in PEOPLE for d in ("allow", "deny"))
        continued = [s for s in statement_spans(receiver) if s.trace_id.hex() == CLIENT_TRACE]
        assert len(continued) == 1 and continued[0].parent_span_id.hex() == "00f067aa0ba902b7"

        assert receiver.wait_for(lambda r: {"sqlward.statements", "sqlward.statement.duration", "sqlward.sessions.active"} <= r.metric_names())


def test_a_collector_answering_503_is_retried() -> None:
    with OtlpReceiver() as receiver:
        receiver.fail_next(1, 503)
        config = TelemetryConfig(endpoint=receiver.endpoint, metrics=False, timeout_seconds=10)
        telemetry = Telemetry(config, gateway="gw-it", targets=TARGETS)
        play(telemetry)
        telemetry.shutdown(15)
        assert receiver.wait_for(lambda r: len(statement_spans(r)) == 4)
        assert receiver.requests[0] == ("/v1/traces", 503)
        assert ("/v1/traces", 200) in receiver.requests
