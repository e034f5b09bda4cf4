"""/healthz, /readyz and /metrics of the admin listener: the real Starlette app served by the real
hypercorn trio listener (`serve_admin`), called over HTTP with httpx.

How it works: `serve` builds the app over a real SqliteStore and ApprovalService (the approvals
routes stay behind the bearer token: an authenticator that refuses everything proves it), a
`Readiness` over a real listening TCP socket (an "upstream" that accepts) and a port nobody
listens on, a `SinkHealth` whose statuses the test changes, and a real `Telemetry` whose
Prometheus text /metrics serves (parsed with prometheus_client's parser).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from sqlward.adapters.base import AuthError
from sqlward.audit.events import ConnectionOpened
from sqlward.audit.recorder import Recorder
from sqlward.audit.sinks import SinkStatus
from sqlward.gateway.approvals.service import ApprovalService
from sqlward.gateway.approvals.store import SqliteStore
from sqlward.gateway.config import AdminAccess, AdminConfig, TelemetryConfig
from sqlward.gateway.health import Readiness, Upstream
from sqlward.gateway.http.app import build_app
from sqlward.gateway.http.server import serve_admin
from sqlward.gateway.telemetry import TargetInfo, Telemetry
from sqlward.policy.approval import Approver
from tests.support.auditsink import ListSink

Scenario = Callable[[httpx.AsyncClient, "World"], Awaitable[None]]


class Sinks:
    def __init__(self) -> None:
        self.statuses = [
            SinkStatus(name="local", kind="file", required=True, ok=True),
            SinkStatus(name="central", kind="postgres", required=False, ok=False, problem="connection refused", backlog=3),
        ]

    def status(self) -> list[SinkStatus]:
        return self.statuses


class World:
    def __init__(self, readiness: Readiness, sinks: Sinks, telemetry: Telemetry) -> None:
        self.readiness = readiness
        self.sinks = sinks
        self.telemetry = telemetry
        self.policy_problem: str | None = None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def refuse_everyone(token: str) -> Approver:
    raise AuthError("no token is good here")


def serve(tmp_path: Path, scenario: Scenario, *, upstreams: list[Upstream] | None = None, with_health: bool = True) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    up = listener.getsockname()[1]
    sinks = Sinks()
    telemetry = Telemetry(
        TelemetryConfig(), gateway="gw", targets={"app": TargetInfo(db_system="postgresql", address="127.0.0.1", port=up, database="app")},
    )
    world_box: list[World] = []
    readiness = Readiness(
        upstreams=upstreams if upstreams is not None else [Upstream(name="app", host="127.0.0.1", port=up)],
        sinks=sinks, policy=lambda: world_box[0].policy_problem, connect_timeout=1.0, cache_seconds=0.0,
    )
    world = World(readiness, sinks, telemetry)
    world_box.append(world)

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "approvals.sqlite3"))
        await store.open()
        recorder = Recorder("gw", ListSink(), observers=(telemetry,))
        service = ApprovalService(store, scope=recorder.gateway_scope, link=lambda i: f"https://x/{i}")
        recorder.scope("c1").add(ConnectionOpened(client_addr="127.0.0.1:1", listener="pg", protocol="postgres"))
        app = build_app(
            approvals=service, authenticate=refuse_everyone, access=AdminAccess(), version="test",
            **({"health": readiness, "metrics": telemetry.prometheus_text} if with_health else {}),
        )
        cfg = AdminConfig(listen="127.0.0.1:0")
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_admin, cfg, app)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                await scenario(client, world)
            nursery.cancel_scope.cancel()
        await store.aclose()

    try:
        trio.run(main)
    finally:
        listener.close()
        telemetry.shutdown(1)


def checks(body: dict[str, object]) -> dict[str, tuple[bool, str]]:
    found = body["checks"]
    assert isinstance(found, list)
    return {c["name"]: (c["ok"], c["detail"]) for c in found}


def test_healthz_answers_alive_without_a_token(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient, world: World) -> None:
        r = await c.get("/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "alive"})
        world.readiness.set_draining()
        r = await c.get("/healthz")  # alive while draining: only readiness goes false
        assert r.status_code == 200
        # The approvals API still wants a token.
        r = await c.get("/api/v1/approvals")
        assert r.status_code == 401

    serve(tmp_path, scenario)


def test_readyz_ready_then_not_ready_for_each_cause(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient, world: World) -> None:
        r = await c.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready"
        assert checks(body) == {
            "draining": (True, ""), "policy": (True, ""),
            "audit sink local": (True, ""),
            "audit sink central": (False, "not taking records (the gateway's log says why)"),  # optional: listed, not required
            "upstream app": (True, ""),
        }
        # A required sink broken: not ready.
        world.sinks.statuses = [SinkStatus(name="local", kind="file", required=True, ok=False, problem="disk full")]
        r = await c.get("/readyz")
        assert r.status_code == 503
        # the sink's own message stays in the log (it can name the audit database's address)
        assert checks(r.json())["audit sink local"] == (False, "not taking records (the gateway's log says why)")
        world.sinks.statuses = [SinkStatus(name="local", kind="file", required=True, ok=True)]
        assert (await c.get("/readyz")).status_code == 200
        # No policy in force: not ready.
        world.policy_problem = "the policy could not be loaded"
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert checks(r.json())["policy"] == (False, "the policy could not be loaded")
        world.policy_problem = None
        # Draining: not ready, whatever else.
        world.readiness.set_draining()
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert checks(r.json())["draining"] == (False, "the gateway is shutting down")

    serve(tmp_path, scenario)


def test_readyz_is_not_ready_while_an_upstream_port_is_closed(tmp_path: Path) -> None:
    port = closed_port()

    async def scenario(c: httpx.AsyncClient, world: World) -> None:
        r = await c.get("/readyz")
        assert r.status_code == 503
        ok, detail = checks(r.json())["upstream down"]
        assert not ok and detail.startswith("cannot connect")
        assert str(port) not in r.text  # no address in an unauthenticated answer

    serve(tmp_path, scenario, upstreams=[Upstream(name="down", host="127.0.0.1", port=port)])


def test_upstream_checks_are_cached() -> None:
    now = [0.0]
    attempts = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    readiness = Readiness(upstreams=[Upstream(name="app", host="127.0.0.1", port=port)], cache_seconds=5.0, clock=lambda: now[0])

    async def main() -> None:
        assert (await readiness.check()).ready
        attempts.append(listener.accept()[0])
        listener.close()  # the upstream goes away: the cached answer stands for 5 s
        now[0] = 4.0
        assert (await readiness.check()).ready
        now[0] = 5.5
        assert not (await readiness.check()).ready

    try:
        trio.run(main)
    finally:
        for s in attempts:
            s.close()
        listener.close()


def test_metrics_is_prometheus_text_without_a_token(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient, world: World) -> None:
        r = await c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        assert families["sqlward_sessions_active"].samples[0].value == 1.0
        assert "sqlward_logins_refused" in families

    serve(tmp_path, scenario)


def test_without_health_the_routes_stay_behind_the_token(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient, world: World) -> None:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 401

    serve(tmp_path, scenario, with_health=False)
