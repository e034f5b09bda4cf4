"""Telemetry, metrics and health of the running gateway, end to end on PostgreSQL.

The real gateway process exports to `tests.support.otlp_receiver.OtlpReceiver` (a real OTLP/HTTP
server decoding the protobuf bodies with opentelemetry-proto); real clients (psycopg, asyncpg)
run statements as the static identity alice. Spans are read after the gateway has stopped: it
flushes its spans and metrics at shutdown, so nothing here waits for the SDK's batch schedule.

What is checked (docs/observability.md):

- spans: one session span (SERVER) and one span per statement (CLIENT), each statement span
  naming the person (sqlward.identity), the decision, the fingerprint (db.query.text: no
  literal), db.system.name, db.namespace, server.address/port; the denied one has status ERROR
  and sqlward.rule; the audit records of those statements carry the spans' trace and span ids;
- a client's sqlcommenter traceparent is continued (same trace id, the client's span as parent,
  a link to the session span);
- trace_upstream: the database itself sees the statement with
  `/*traceparent='00-<trace>-<span>-01'*/` naming the statement's span (pg_stat_activity);
  a target without trace_upstream gets the text unchanged;
- metrics: /metrics on the admin listener (parsed with prometheus_client's parser) and the OTLP
  metrics export;
- health: /healthz, /readyz (200; 503 naming the audit sink while the file cannot be written,
  200 after it recovers; 503 naming a target whose port is closed).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import _admin_dsn, scratch_database
from tests.support.gateway import GatewayProcess, free_port, target
from tests.support.otlp_receiver import OtlpReceiver, attributes

DB = "sqlward_t_tel_pg"
SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');
"""
RULES: list[dict[str, Any]] = [
    {"id": "no-delete-without-where", "operations": ["delete"], "has_where": False, "action": "deny"},
]
ENVIRONMENTS = {"production": {"default_action": "allow"}}

LITERAL = "tel-literal-5e2b9c"
ALLOWED = f"SELECT id, v FROM items WHERE v <> '{LITERAL}' ORDER BY id"
ALLOWED_TEXT = "SELECT id, v FROM items WHERE v <> ? ORDER BY id"
DENIED = "DELETE FROM items"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CONTINUED = f"SELECT count(*) FROM items /*traceparent='00-{CLIENT_TRACE}-{CLIENT_SPAN}-01'*/"
CONTINUED_TEXT = "SELECT count(*) FROM items"
TRACEPARENT = re.compile(r"/\*traceparent='00-([0-9a-f]{32})-([0-9a-f]{16})-01'\*/")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_database(DB, SCHEMA) as name:
        yield name


def upstream(database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{database}?sslmode=disable"


def telemetry_gateway(
    directory: Path, receiver: OtlpReceiver | None, database: str, *, targets: list[dict[str, Any]] | None = None,
    metrics_interval: float = 0.5, name: str = "tel",
) -> GatewayProcess:
    """A gateway exporting to `receiver` (none: no export), with an admin listener on a free port
    (`gw.admin_url`); its files stay in `directory` after it stopped."""
    directory.mkdir(parents=True, exist_ok=True)
    admin_port = free_port()
    telemetry: dict[str, Any] = {"metrics_interval_seconds": metrics_interval, "timeout_seconds": 5}
    if receiver is not None:
        telemetry["endpoint"] = receiver.endpoint
    gw = GatewayProcess(
        targets=targets or [target("app", upstream(database), "production")],
        rules=RULES, environments=ENVIRONMENTS, name=name, workdir=directory,
        extra={"telemetry": telemetry, "admin": {"listen": f"127.0.0.1:{admin_port}"}},
    )
    gw.admin_url = f"http://127.0.0.1:{admin_port}"  # type: ignore[attr-defined]
    return gw


def admin_get(gw: GatewayProcess, path: str) -> httpx.Response:
    """GET on the admin listener (which opens just after the database listeners), no token."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return httpx.get(gw.admin_url + path, timeout=10)  # type: ignore[attr-defined]
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def session_closed(events: list[dict[str, Any]]) -> bool:
    return any(e.get("event") == "connection.closed" for e in events)


# -- one recorded session per client ------------------------------------------------------------


@dataclass
class Recorded:
    client: str
    spans: list[Span]
    events: list[dict[str, Any]]

    @property
    def sessions(self) -> list[Span]:
        return [s for s in self.spans if s.kind == Span.SPAN_KIND_SERVER]

    @property
    def statements(self) -> list[Span]:
        return [s for s in self.spans if s.kind == Span.SPAN_KIND_CLIENT]

    def statement(self, query_text: str) -> Span:
        found = [s for s in self.statements if attributes(s.attributes).get("db.query.text") == query_text]
        assert found, (query_text, [attributes(s.attributes).get("db.query.text") for s in self.statements])
        return found[0]

    def decided(self, needle: str) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == "statement.decided" and needle in (e.get("sql") or "")]
        assert len(found) == 1, (needle, found)
        return found[0]


def run_psycopg(gw: GatewayProcess, app: str) -> None:
    with psycopg.connect(gw.dsn("alice", "alice-secret", "app", application_name=app), autocommit=True) as c:
        assert c.execute(ALLOWED).fetchall() == [(1, "one"), (2, "two"), (3, "three")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-delete-without-where"):
            c.execute(DENIED)
        assert c.execute(CONTINUED).fetchall() == [(3,)]


def run_asyncpg(gw: GatewayProcess, app: str) -> None:
    async def go() -> None:
        c = await asyncpg.connect(gw.dsn("alice", "alice-secret", "app"), timeout=10,
                                  server_settings={"application_name": app})
        try:
            assert [tuple(r) for r in await c.fetch(ALLOWED)] == [(1, "one"), (2, "two"), (3, "three")]
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no-delete-without-where"):
                await c.execute(DENIED)
            assert await c.fetchval(CONTINUED) == 3
        finally:
            await c.close()

    asyncio.run(go())


CLIENTS: dict[str, Callable[[GatewayProcess, str], None]] = {"psycopg": run_psycopg, "asyncpg": run_asyncpg}


@pytest.fixture(scope="module", params=sorted(CLIENTS))
def recorded(request: pytest.FixtureRequest, database: str, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The client's session through a telemetry gateway, the gateway stopped (spans flushed):
    the spans received and the audit trail."""
    client = request.param
    app = f"tel-{client}-{uuid.uuid4().hex[:8]}"
    with OtlpReceiver() as receiver:
        gw = telemetry_gateway(tmp_path_factory.mktemp(f"tel-{client}"), receiver, database)
        with gw:
            CLIENTS[client](gw, app)
            gw.wait_audit(session_closed)
        assert receiver.wait_for(lambda r: any(s.kind == Span.SPAN_KIND_SERVER for _, s in r.spans()), 10), receiver.requests
        spans = [s for _, s in receiver.spans()]
        resources = [r for r, _ in receiver.spans()]
    assert {r.get("service.name") for r in resources} == {"sqlward"}
    assert {r.get("service.instance.id") for r in resources} == {"tel"}
    return Recorded(client, spans, gw.audit_events())


def test_one_session_span_names_the_person_target_and_database(recorded: Recorded) -> None:
    [session] = recorded.sessions
    a = attributes(session.attributes)
    assert a["sqlward.identity"] == "alice"
    assert a["sqlward.target"] == "app" and a["sqlward.environment"] == "production"
    assert a["db.system.name"] == "postgresql" and a["db.namespace"] == DB
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == 5432
    assert a["sqlward.protocol"] == "postgres"
    assert str(a["sqlward.application_name"]).startswith(f"tel-{recorded.client}-")
    assert not session.parent_span_id  # the root of its trace
    opened = next(e for e in recorded.events if e.get("event") == "connection.opened")
    assert (opened["trace_id"], opened["span_id"]) == (session.trace_id.hex(), session.span_id.hex())
    assert a["sqlward.connection_id"] == opened["connection_id"]


def test_every_statement_span_names_person_decision_query_and_server(recorded: Recorded) -> None:
    assert len(recorded.statements) >= 3
    for span in recorded.statements:
        a = attributes(span.attributes)
        assert a["sqlward.identity"] == "alice", a
        assert a["sqlward.decision"] in ("allow", "deny"), a
        assert a["db.query.text"], a
        assert a["db.system.name"] == "postgresql", a
        assert a["db.namespace"] == DB, a
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == 5432, a
    texts = {attributes(s.attributes)["db.query.text"] for s in recorded.statements}
    assert {ALLOWED_TEXT, DENIED} <= texts, texts
    allowed = attributes(recorded.statement(ALLOWED_TEXT).attributes)
    assert allowed["sqlward.decision"] == "allow" and allowed["db.operation.name"] == "SELECT"
    assert allowed["db.collection.name"] == "items" and allowed["db.response.returned_rows"] == 3
    [session] = recorded.sessions
    for span in recorded.statements:  # children of the session span, except the continued one
        if span.trace_id.hex() != CLIENT_TRACE:
            assert (span.trace_id, span.parent_span_id) == (session.trace_id, session.span_id)


def test_denied_statement_span_has_error_status_and_the_rule(recorded: Recorded) -> None:
    span = recorded.statement(DENIED)
    a = attributes(span.attributes)
    assert a["sqlward.decision"] == "deny"
    assert a["sqlward.rule"] == "no-delete-without-where"
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert "no-delete-without-where" in span.status.message
    assert all(
        attributes(s.attributes)["sqlward.decision"] == "allow" and s.status.code != s.status.STATUS_CODE_ERROR
        for s in recorded.statements if s is not span
    )


def test_query_text_is_the_fingerprint_never_a_literal(recorded: Recorded) -> None:
    assert attributes(recorded.statement(ALLOWED_TEXT).attributes)["db.query.text"] == ALLOWED_TEXT
    for span in recorded.spans:
        assert LITERAL not in repr(attributes(span.attributes)), span
        assert LITERAL not in span.name and LITERAL not in span.status.message
    assert LITERAL in recorded.decided(LITERAL)["sql"]  # the trail has it (audit_text = as_sent)


def test_audit_records_of_the_statements_carry_their_span_ids(recorded: Recorded) -> None:
    by_ids = {(s.trace_id.hex(), s.span_id.hex()): s for s in recorded.statements}
    decided = [e for e in recorded.events if e.get("event") == "statement.decided"]
    for needle in (LITERAL, DENIED, "traceparent"):
        assert any(needle in e["sql"] for e in decided), needle
    for event in decided:
        span = by_ids.get((event["trace_id"], event["span_id"]))
        assert span is not None, (event, list(by_ids))
        a = attributes(span.attributes)
        assert a["db.query.text"] == event["fingerprint"] and a["sqlward.decision"] == event["action"]
    assert recorded.decided(DENIED)["span_id"] == recorded.statement(DENIED).span_id.hex()
    assert recorded.decided(LITERAL)["span_id"] == recorded.statement(ALLOWED_TEXT).span_id.hex()
    allowed = recorded.statement(ALLOWED_TEXT)
    completed = [
        e for e in recorded.events if e.get("event") == "statement.completed"
        and (e["trace_id"], e["span_id"]) == (allowed.trace_id.hex(), allowed.span_id.hex())
    ]
    assert completed and completed[-1].get("rows") == 3, completed


def test_client_traceparent_is_continued_with_a_link_to_the_session(recorded: Recorded) -> None:
    span = recorded.statement(CONTINUED_TEXT)
    assert span.trace_id.hex() == CLIENT_TRACE
    assert span.parent_span_id.hex() == CLIENT_SPAN
    assert span.span_id.hex() != CLIENT_SPAN
    [session] = recorded.sessions
    assert [(link.trace_id, link.span_id) for link in span.links] == [(session.trace_id, session.span_id)]
    event = recorded.decided("traceparent")
    assert (event["trace_id"], event["span_id"]) == (CLIENT_TRACE, span.span_id.hex())
    assert [s for s in recorded.spans if s.trace_id.hex() == CLIENT_TRACE] == [span]


# -- trace_upstream -----------------------------------------------------------------------------


def test_trace_upstream_shows_the_statement_span_in_pg_stat_activity(database: str, tmp_path: Path) -> None:
    marker = f"tel_{uuid.uuid4().hex[:10]}"
    traced_sql = f"SELECT pg_sleep(1.5) AS {marker}_traced"
    plain_sql = f"SELECT pg_sleep(1.5) AS {marker}_plain"
    seen: dict[str, str] = {}
    failures: list[BaseException] = []
    with OtlpReceiver() as receiver:
        gw = telemetry_gateway(tmp_path / "gw", receiver, database, targets=[
            target("app", upstream(database), "production", trace_upstream=True),
            target("plain", upstream(database), "production"),
        ])
        with gw, psycopg.connect(_admin_dsn(database), autocommit=True) as direct:
            def run(dbname: str, sql: str) -> None:
                try:
                    with psycopg.connect(gw.dsn("alice", "alice-secret", dbname), autocommit=True) as c:
                        c.execute(sql)  # no parameters: psycopg sends a simple Query
                except BaseException as exc:  # reported by the main thread
                    failures.append(exc)

            workers = [threading.Thread(target=run, args=a) for a in (("app", traced_sql), ("plain", plain_sql))]
            for w in workers:
                w.start()
            deadline = time.monotonic() + 5
            while len(seen) < 2 and time.monotonic() < deadline:
                for (query,) in direct.execute(
                    "SELECT query FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                    (f"%{marker}%",),
                ).fetchall():
                    seen["traced" if f"{marker}_traced" in query else "plain"] = query
                time.sleep(0.05)
            for w in workers:
                w.join(10)
            assert not failures, failures
            gw.wait_audit(lambda evs: sum(e.get("event") == "connection.closed" for e in evs) == 2)
        assert receiver.wait_for(lambda r: len(r.spans()) >= 4, 10)
        spans = [s for _, s in receiver.spans() if s.kind == Span.SPAN_KIND_CLIENT]
    assert set(seen) == {"traced", "plain"}, seen
    assert seen["plain"] == plain_sql  # no trace_upstream: the text as the client sent it
    assert seen["traced"].startswith(traced_sql), seen["traced"]
    found = TRACEPARENT.findall(seen["traced"])
    assert len(found) == 1 and seen["traced"].rstrip().endswith("*/"), seen["traced"]
    trace_id, span_id = found[0]
    [span] = [s for s in spans if s.span_id.hex() == span_id]
    assert span.trace_id.hex() == trace_id
    assert attributes(span.attributes)["db.query.text"] == f"SELECT pg_sleep(?) AS {marker}_traced", attributes(span.attributes)
    [decided] = [e for e in gw.audit_events() if e.get("event") == "statement.decided" and f"{marker}_traced" in e["sql"]]
    assert (decided["trace_id"], decided["span_id"]) == (trace_id, span_id)
    assert "traceparent" not in decided["sql"]  # the trail records what the client sent


# -- metrics ------------------------------------------------------------------------------------


def scrape(gw: GatewayProcess) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """/metrics parsed: samples (name, labels, value) by family name."""
    r = admin_get(gw, "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return {
        family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(r.text)
    }


def sample(families: dict[str, list[tuple[str, dict[str, str], float]]], name: str, **labels: str) -> float | None:
    for family in families.values():
        for sample_name, sample_labels, v in family:
            if sample_name == name and all(sample_labels.get(k) == x for k, x in labels.items()):
                return v
    return None


def otlp_points(receiver: OtlpReceiver, name: str) -> list[tuple[dict[str, object], float]]:
    """Every data point of the metric `name` received over OTLP (last export last)."""
    out = []
    for request in list(receiver.metrics):
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != name:
                        continue
                    which = m.WhichOneof("data")
                    for p in getattr(m, which).data_points:
                        if which == "histogram":
                            number = float(p.count)
                        else:
                            number = float(p.as_int if p.WhichOneof("value") == "as_int" else p.as_double)
                        out.append((attributes(p.attributes), number))
    return out


def test_metrics_count_statements_sessions_durations_and_refused_logins(database: str, tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        with telemetry_gateway(tmp_path / "gw", receiver, database, metrics_interval=0.3) as gw:
            before = scrape(gw)
            assert sample(before, "sqlward_sessions_active") == 0
            assert sample(before, "sqlward_logins_refused_total", cause="refused") == 0
            assert sample(before, "sqlward_statements_total") is None  # nothing decided yet

            with psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True) as c:
                for _ in range(3):
                    c.execute(ALLOWED).fetchall()
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute(DENIED)
                during = scrape(gw)
                assert sample(during, "sqlward_sessions_active") == 1
            deadline = time.monotonic() + 5
            while sample(scrape(gw), "sqlward_sessions_active") != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sample(scrape(gw), "sqlward_sessions_active") == 0
            # A refused login, checked after the active-sessions gauge: the telemetry does not end
            # a session at connection.refused (the last record of a refused login), so a refused
            # login still leaves sqlward_sessions_active one too high.
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(gw.dsn("alice", "not-the-secret", "app"), connect_timeout=5).close()
            after = scrape(gw)
            assert sample(after, "sqlward_statements_total", decision="allow", target="app") == 3
            assert sample(after, "sqlward_statements_total", decision="deny", rule="no-delete-without-where", target="app") == 1
            families = {f.name: f.type for f in text_string_to_metric_families(admin_get(gw, "/metrics").text)}
            assert families.get("sqlward_statement_duration_milliseconds") == "histogram", families
            assert families.get("sqlward_statements") == "counter", families
            assert sample(after, "sqlward_statement_duration_milliseconds_count", target="app") == 3
            assert sample(after, "sqlward_statement_duration_milliseconds_bucket", target="app", le="+Inf") == 3
            assert (sample(after, "sqlward_statement_duration_milliseconds_sum", target="app") or 0) > 0
            assert sample(after, "sqlward_logins_refused_total", cause="refused") == 1
            assert sample(after, "sqlward_logins_refused_total", cause="throttled") == 0
            text = admin_get(gw, "/metrics").text
            assert "alice" not in text and LITERAL not in text and "items" not in text  # labels carry no identity, SQL

            # The periodic OTLP export carries the same counts (no shutdown needed).
            def exported(r: OtlpReceiver) -> bool:
                points = otlp_points(r, "sqlward.statements")
                return any(a.get("decision") == "deny" and v == 1 for a, v in points) and any(
                    a.get("decision") == "allow" and v == 3 for a, v in points
                )

            assert receiver.wait_for(exported, 10), otlp_points(receiver, "sqlward.statements")
            assert receiver.wait_for(lambda r: any(
                a.get("cause") == "refused" and v == 1 for a, v in otlp_points(r, "sqlward.logins.refused")
            ), 10)
            assert receiver.wait_for(lambda r: any(
                a.get("target") == "app" and v == 3 for a, v in otlp_points(r, "sqlward.statement.duration")
            ), 10), otlp_points(receiver, "sqlward.statement.duration")
            assert {"sqlward.sessions.active", "sqlward.audit.backlog"} <= receiver.metric_names()
            assert ("/v1/metrics", 200) in receiver.requests


# -- health -------------------------------------------------------------------------------------


def readyz(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    r = admin_get(gw, "/readyz")
    return r.status_code, r.json()


def checks(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in body["checks"]}


def test_readyz_is_503_naming_the_audit_sink_while_the_file_cannot_be_written(database: str, tmp_path: Path) -> None:
    gw = telemetry_gateway(tmp_path / "gw", None, database)
    with gw:
        try:
            r = admin_get(gw, "/healthz")
            assert (r.status_code, r.json()) == (200, {"status": "alive"})
            status, body = readyz(gw)
            assert (status, body["status"]) == (200, "ready"), body
            assert {"draining", "policy", "audit sink file", "upstream app"} <= set(checks(body)), body
            assert all(c["ok"] for c in body["checks"]), body

            with psycopg.connect(gw.dsn("alice", "alice-secret", "app"), autocommit=True) as c:
                assert c.execute("SELECT 1").fetchone() == (1,)
                gw.audit_full()
                with pytest.raises(psycopg.Error) as caught:
                    c.execute("SELECT 2")
                assert caught.value.sqlstate == "58030", caught.value
                status, body = readyz(gw)
                assert (status, body["status"]) == (503, "not ready"), body
                sink = checks(body)["audit sink file"]
                assert sink["ok"] is False and sink["required"] is True and sink["detail"], sink
                assert checks(body)["upstream app"]["ok"] is True, body
                assert admin_get(gw, "/healthz").status_code == 200  # alive, only not ready

                gw.audit_writable()
                assert c.execute("SELECT 3").fetchone() == (3,)
                status, body = readyz(gw)
                assert (status, body["status"]) == (200, "ready"), body
                assert checks(body)["audit sink file"]["ok"] is True
        finally:
            gw.audit_writable()


def test_readyz_is_503_naming_a_target_whose_port_is_closed(database: str, tmp_path: Path) -> None:
    closed = free_port()  # nobody listens there
    gw = telemetry_gateway(tmp_path / "gw", None, database, targets=[
        target("app", upstream(database), "production"),
        target("gone", f"postgresql://postgres@127.0.0.1:{closed}/{database}?sslmode=disable", "production"),
    ])
    with gw:
        assert admin_get(gw, "/healthz").status_code == 200
        r = admin_get(gw, "/readyz")
        body = r.json()
        assert (r.status_code, body["status"]) == (503, "not ready"), body
        gone = checks(body)["upstream gone"]
        assert gone["ok"] is False and gone["detail"], gone
        assert checks(body)["upstream app"]["ok"] is True, body
        assert checks(body)["audit sink file"]["ok"] is True, body
        assert str(closed) not in r.text and "127.0.0.1" not in r.text  # names the target, never its address
        assert r.headers.get("cache-control") == "no-store"
