"""Readiness of the gateway, for /readyz (liveness needs nothing: /healthz answers while the
admin listener serves).

How it works: `Readiness.check()` runs every check and returns a `ReadinessReport`:

- draining: false once `set_draining()` was called (SIGTERM: readiness goes false first, so the
  Service stops sending new sessions before the listeners close);
- policy: `policy()` returns None while a policy is in force, else why not (the gateway does not
  start without one; when no callable is given the check says so and passes);
- audit: each sink of `sinks.status()` (`audit.trail.Trail`); a required sink that is not ok
  fails readiness, an optional one is listed and does not;
- upstream: a TCP connect to each target's host:port within `connect_timeout` seconds. Results
  are cached for `cache_seconds` (probes every few seconds from several kubelets must not
  hammer the database), and refreshed together, concurrently, under a lock (concurrent probes
  wait for one refresh).

The report names each check and why it failed; it never holds an upstream's address (the
route is unauthenticated) and never a secret.

Error handling: a connect that fails or times out is a failed check (its reason: the OS error's
text or "no answer within N s"); an exception from `sinks.status()` or `policy()` is a failed
check naming its type, logged to `sqlward.health`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec
import trio

from sqlward.audit.sinks import SinkStatus
from sqlward.gateway.config import Config, parse_dsn

__all__ = ["Check", "Readiness", "ReadinessReport", "SinkHealth", "Upstream", "upstreams"]

log = logging.getLogger("sqlward.health")


class SinkHealth(Protocol):
    """The audit trail's sinks as they are now (`audit.trail.Trail.status`)."""

    def status(self) -> list[SinkStatus]: ...


class Upstream(msgspec.Struct, frozen=True, kw_only=True):
    """A target whose host:port readiness connects to."""

    name: str
    host: str
    port: int


class Check(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # "draining", "policy", "audit sink <name>", "upstream <target>"
    ok: bool
    detail: str = ""  # why not ok (or what was checked)
    required: bool = True  # False: listed, and readiness does not depend on it (an optional sink)


class ReadinessReport(msgspec.Struct, frozen=True, kw_only=True):
    """The body of /readyz."""

    status: str  # "ready" or "not ready"
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def upstreams(config: Config) -> list[Upstream]:
    """Each configured target's host and port."""
    out = []
    for t in config.targets:
        dsn = parse_dsn(t.dsn, t.protocol, config.base_dir)
        out.append(Upstream(name=t.name, host=dsn.host, port=dsn.port))
    return out


class Readiness:
    """See the module doc. `clock` is trio's (seconds, monotonic)."""

    def __init__(
        self,
        *,
        upstreams: Sequence[Upstream] = (),
        sinks: SinkHealth | None = None,
        policy: Callable[[], str | None] | None = None,
        connect_timeout: float = 1.0,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.sinks = sinks
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._draining = False
        self._checked_at = -math.inf
        self._upstream_checks: tuple[Check, ...] = ()
        self._lock = trio.Lock()

    @property
    def draining(self) -> bool:
        return self._draining

    def set_draining(self, draining: bool = True) -> None:
        """From now on /readyz answers 503 (the gateway is shutting down)."""
        self._draining = draining

    async def check(self) -> ReadinessReport:
        checks: list[Check] = [
            Check(name="draining", ok=False, detail="the gateway is shutting down") if self._draining
            else Check(name="draining", ok=True),
        ]
        checks.append(self._policy_check())
        checks.extend(self._sink_checks())
        checks.extend(await self._upstream_checks_cached())
        ready = all(c.ok or not c.required for c in checks)
        return ReadinessReport(status="ready" if ready else "not ready", checks=tuple(checks))

    def _policy_check(self) -> Check:
        if self.policy is None:
            return Check(name="policy", ok=True, detail="loaded at start")
        try:
            problem = self.policy()
        except Exception as exc:
            log.exception("readiness: the policy check failed")
            return Check(name="policy", ok=False, detail=f"the check failed ({type(exc).__name__})")
        return Check(name="policy", ok=problem is None, detail=problem or "")

    def _sink_checks(self) -> list[Check]:
        if self.sinks is None:
            return []
        try:
            statuses = self.sinks.status()
        except Exception as exc:
            log.exception("readiness: reading the audit sinks' status failed")
            return [Check(name="audit", ok=False, detail=f"the sinks' status could not be read ({type(exc).__name__})")]
        return [
            # Not the sink's own message (it can name the audit database's address): the
            # gateway's log has it.
            Check(name=f"audit sink {s.name}", ok=s.ok, detail="" if s.ok else "not taking records (the gateway's log says why)",
                  required=s.required)
            for s in statuses
        ]

    async def _upstream_checks_cached(self) -> tuple[Check, ...]:
        if not self.upstreams:
            return ()
        async with self._lock:
            if self._clock() - self._checked_at >= self.cache_seconds:
                results: list[Check | None] = [None] * len(self.upstreams)
                async with trio.open_nursery() as nursery:
                    for i, upstream in enumerate(self.upstreams):
                        nursery.start_soon(self._connect, upstream, results, i)
                self._upstream_checks = tuple(c for c in results if c is not None)
                self._checked_at = self._clock()
            return self._upstream_checks

    async def _connect(self, upstream: Upstream, results: list[Check | None], i: int) -> None:
        name = f"upstream {upstream.name}"
        detail = f"no answer within {self.connect_timeout:g} s"
        with trio.move_on_after(self.connect_timeout):
            try:
                stream = await trio.open_tcp_stream(upstream.host, upstream.port)
            except OSError as exc:
                # strerror only: trio's own message names the address, which this report never does
                results[i] = Check(name=name, ok=False, detail=f"cannot connect: {exc.strerror or 'connection failed'}")
                return
            await stream.aclose()
            results[i] = Check(name=name, ok=True)
            return
        results[i] = Check(name=name, ok=False, detail=detail)
