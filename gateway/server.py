"""The gateway process: builds the gatekeeper and one listener per configured listener, serves
until SIGTERM or SIGINT, then drains.

Signals:

- SIGTERM / SIGINT drain the gateway (`_drain`): `/readyz` answers 503 first, the listeners
  stop accepting, idle sessions are closed at once with the protocol's shutdown error (FATAL
  57P01 / ER_SERVER_SHUTDOWN), busy ones (a statement running, a statement held for approval)
  when they are idle again, and those still open after `[gateway] drain_seconds` whatever they
  do (adapters/drain.py). The admin listener serves until the end (approvers can still decide
  held statements). A second signal stops at once. Then the audit trail is closed with a signed
  checkpoint and the last spans are exported.
- SIGHUP reads the configuration file again (`_reload_config`): the policy tables (rules,
  environments, guardrails, masks, masking, access, policy files) and the log level and format
  take effect (`gateway.config.reload_plan`); every other table that changed is named in the log as
  needing a restart; a file that does not load (or a policy that does not build) keeps the
  running configuration, and the error is logged. With `[gateway] policy_files`, a task also
  polls the files' mtimes every `POLICY_POLL_SECONDS` and reloads when one changes.

Logging (gateway/logs.py): level and format from `[gateway] log_level` / `log_format`;
refused connections and upstream failures are logged from the audit events (`LogObserver`).

Adapters are looked up by protocol name in `ADAPTERS`; a new protocol is one entry there.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import ssl
from collections.abc import AsyncIterator, Callable

import trio

from sqlward.adapters.base import ListenerSettings, SessionServices
from sqlward.adapters.drain import Drain
from sqlward.adapters.listener_common import ListenerBase
from sqlward.adapters.preauth import PreAuthLimiter
from sqlward.adapters.mysql.listener import MysqlListener
from sqlward.adapters.postgres.listener import PostgresListener
from sqlward.audit.events import GatewayStarted, GatewayStopped
from sqlward.audit.recorder import AuditUnavailable
from sqlward.gateway.health import Readiness, upstreams
from sqlward.gateway.telemetry import Telemetry, target_infos
from sqlward.gateway.approvals.service import ApprovalService, Notifier
from sqlward.gateway.approvals.store import open_store
from sqlward.gateway.cli import sqlward_version
from sqlward.gateway import logs
from sqlward.gateway.config import Config, ConfigError, ListenerConfig, load_config, parse_listen, reload_plan
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.gateway.pipeline import Pipeline

log = logging.getLogger("sqlward")

POLICY_POLL_SECONDS = 2.0


DRAIN_CLOSE_MARGIN = 6.0  # seconds after the drain deadline for the last sessions' goodbyes


async def _reload(gatekeeper: Gatekeeper, why: str, config: Config | None = None) -> bool:
    error = await gatekeeper.reload_policy(config)
    if error is None:
        log.info("policy reloaded (%s): version %d", why, gatekeeper.policy_version)
        return True
    log.error("policy reload (%s) refused, version %d stays: %s", why, gatekeeper.policy_version, error)
    return False


async def _reload_config(gatekeeper: Gatekeeper, running: Config) -> Config:
    """SIGHUP (module doc): returns the configuration now in force."""
    try:
        loaded = load_config(running.source)
    except ConfigError as exc:
        log.error("configuration reload (SIGHUP) refused, the running configuration stays: %s", exc)
        await gatekeeper.reload_policy_failed(str(exc))
        return running
    if not await _reload(gatekeeper, "SIGHUP", loaded):
        return running
    in_force, restart = reload_plan(running, loaded)
    if (in_force.gateway.log_level, in_force.gateway.log_format) != (running.gateway.log_level, running.gateway.log_format):
        logs.configure(in_force.gateway.log_level, in_force.gateway.log_format)
        log.info("log level %s, format %s", in_force.gateway.log_level, in_force.gateway.log_format)
    if restart:
        log.warning(
            "configuration reloaded (SIGHUP); these changes need a restart and are not in force: %s",
            ", ".join(restart),
        )
    return in_force


async def _drain(
    listeners: list[ListenerBase], drain: Drain, grace: float, signals: AsyncIterator[int],
) -> None:
    """SIGTERM (module doc): returns when every session has ended, the drain's deadline (plus
    the margin for the last goodbyes) has passed, or a second SIGTERM / SIGINT came."""
    for lst in listeners:
        lst.stop_accepting()
    drain.start(trio.current_time() + grace)
    sessions = sum(lst.active for lst in listeners)
    log.info("draining: not accepting; %d session(s) close when idle, the rest in %g s", sessions, grace)

    async def all_ended(done: trio.CancelScope) -> None:
        while any(lst.active for lst in listeners):
            await trio.sleep(0.05)
        done.cancel()

    async def second_signal(done: trio.CancelScope) -> None:
        async for signum in signals:
            if signum != signal.SIGHUP:
                log.warning("received %s while draining: stopping now", signal.Signals(signum).name)
                done.cancel()
                return

    with trio.move_on_at(drain.deadline + DRAIN_CLOSE_MARGIN):
        async with trio.open_nursery() as waiting:
            waiting.start_soon(all_ended, waiting.cancel_scope)
            waiting.start_soon(second_signal, waiting.cancel_scope)
    left = sum(lst.active for lst in listeners)
    if left:
        log.warning("drain over with %d session(s) still open: closing them", left)
    else:
        log.info("drained: every session has ended")


async def _watch_policy(gatekeeper: Gatekeeper) -> None:
    while True:
        await trio.sleep(POLICY_POLL_SECONDS)
        if gatekeeper.policy_changed():
            await _reload(gatekeeper, "policy files changed")


def _server_context(cfg: ListenerConfig, alpn: list[str] | None = None) -> ssl.SSLContext | None:
    """The listener's TLS context; with `client_ca_file`, client certificates are requested and
    verified against it (mutual TLS; a client without one still gets TLS)."""
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    if cfg.client_ca_file:
        ctx.load_verify_locations(cafile=cfg.client_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def listener_settings(cfg: ListenerConfig, gatekeeper: Gatekeeper, *, alpn: list[str] | None = None) -> ListenerSettings:
    """The typed settings a listener and its sessions get from a `[[listeners]]` entry."""
    host, port = parse_listen(cfg.listen)
    probe = ""
    if cfg.protocol == "mysql":
        probe = cfg.default_target or next(iter(gatekeeper.mysql_targets()), "")
    return ListenerSettings(
        name=cfg.name,
        host=host,
        port=port,
        ssl_context=_server_context(cfg, alpn),
        tls_required=bool(cfg.tls is not None and cfg.tls.require),
        max_message_size=cfg.max_message_size,
        default_target=cfg.default_target,
        allow_plaintext_tokens=cfg.allow_plaintext_tokens,
        cert_identity=cfg.cert_identity,
        sha2_full_auth=cfg.caching_sha2_full_auth,
        probe_target=probe,
    )


def _postgres_listener(services: SessionServices, gatekeeper: Gatekeeper, cfg: ListenerConfig) -> ListenerBase:
    return PostgresListener(services, listener_settings(cfg, gatekeeper, alpn=["postgresql"]))


def _mysql_listener(services: SessionServices, gatekeeper: Gatekeeper, cfg: ListenerConfig) -> ListenerBase:
    return MysqlListener(services, listener_settings(cfg, gatekeeper))


# A new protocol adapter is one entry here.
ADAPTERS: dict[str, Callable[[SessionServices, Gatekeeper, ListenerConfig], ListenerBase]] = {
    "postgres": _postgres_listener,
    "mysql": _mysql_listener,
}


def admin_base_url(config: Config) -> str:
    """Where people reach the admin listener: `[admin] public_url`, else its listen address."""
    if config.admin.public_url:
        return config.admin.public_url.rstrip("/")
    if not config.admin.listen:
        return ""
    host, port = parse_listen(config.admin.listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if config.admin.tls else 'http'}://{shown}:{port}"


def approval_service(config: Config, gatekeeper: Gatekeeper) -> tuple[ApprovalService, Notifier | None]:
    """The approval service over the configured store, and the webhook notifier (if any)."""
    password = ""
    if config.approvals.store_password_file:
        with open(config.approvals.store_password_file, encoding="utf-8") as f:
            password = f.read().strip()
    store = open_store(config.approvals.store, table=config.approvals.table, password=password)
    base = admin_base_url(config)

    def link(approval_id: str) -> str:
        return f"{base}/api/v1/approvals/{approval_id}" if base else approval_id

    notifier = None
    if config.webhooks:
        from sqlward.gateway.approvals.webhooks import WebhookNotifier

        notifier = WebhookNotifier.from_config(config.webhooks, link=link, gateway=config.gateway.name)
    service = ApprovalService(
        store, scope=gatekeeper.recorder.gateway_scope, notifier=notifier, link=link,
        poll=config.approvals.poll_seconds, sweep=config.approvals.sweep_seconds, gateway=config.gateway.name,
        max_pending=config.approvals.max_pending_per_identity, retention=config.approvals.retention_days * 86400.0,
    )
    return service, notifier


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft limit of open descriptors to the hard limit (each session holds two, and a
    busy gateway outgrows the common default of 1,024); returns (soft, hard) as they now are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return soft, hard


async def serve(config: Config, *, task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED) -> None:
    soft, hard = raise_descriptor_limit()
    log.info("descriptor limit: %d (hard %s)", soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)
    gatekeeper = Gatekeeper.from_config(config)
    approvals, notifier = approval_service(config, gatekeeper)
    trail = gatekeeper.trail
    telemetry = Telemetry(
        config.telemetry, gateway=config.gateway.name, targets=target_infos(config), sinks=trail, version=sqlward_version(),
    )
    # Refused logins and upstream failures in the log; spans and metrics from the same events
    # the trail records.
    gatekeeper.recorder.observers = (logs.LogObserver(), telemetry) if telemetry.on else (logs.LogObserver(),)
    traceparent = telemetry.traceparent if telemetry.on and any(t.trace_upstream for t in config.targets) else None
    readiness = Readiness(upstreams=upstreams(config), sinks=trail)
    services = SessionServices(
        gatekeeper=gatekeeper, pipeline=Pipeline(gatekeeper, approvals, traceparent=traceparent), recorder=gatekeeper.recorder,
        preauth=PreAuthLimiter(config.gateway.max_unauthenticated, config.gateway.max_unauthenticated_per_address),
    )
    # The audit sink is proven writable before anyone can connect (a path on a full disk,
    # /dev/full, a read-only mount: the gateway does not start).
    try:
        if trail is not None:
            await trail.start()
        await gatekeeper.recorder.gateway_scope.record(GatewayStarted(
            version=sqlward_version(), listeners=tuple(cfg.name for cfg in config.listeners), pid=os.getpid(),
        ))
    except AuditUnavailable as exc:
        gatekeeper.close()
        raise SystemExit(f"sqlward: the audit trail cannot be written ({config.audit.file}): {exc}") from None
    listeners: list[ListenerBase] = []
    for cfg in config.listeners:
        factory = ADAPTERS.get(cfg.protocol)
        if factory is None:
            raise SystemExit(f"sqlward: listener {cfg.name!r}: protocol {cfg.protocol!r} is not available yet")
        listeners.append(factory(services, gatekeeper, cfg))
    stopping = "error"
    try:
        async with trio.open_nursery() as nursery:
            if trail is not None:
                nursery.start_soon(trail.run)
            ports = [await nursery.start(lst.serve) for lst in listeners]
            for lst, port in zip(listeners, ports):
                log.info("listening: %s on %s:%d", lst.name, lst.host, port)
            nursery.start_soon(_watch_policy, gatekeeper)  # idle until a reload names policy files
            nursery.start_soon(approvals.run)
            if notifier is not None:
                nursery.start_soon(notifier.run)
            if config.admin.listen:
                from sqlward.gateway.http.app import build_app
                from sqlward.gateway.http.server import serve_admin

                app = build_app(
                    approvals=approvals, authenticate=gatekeeper.approver_for_bearer, access=config.admin.access,
                    version=sqlward_version(), health=readiness, metrics=telemetry.prometheus_text,
                )
                admin_port = await nursery.start(serve_admin, config.admin, app)
                log.info("listening: admin API on %s (port %d)", config.admin.listen, admin_port)
            task_status.started(ports)
            running = config
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        running = await _reload_config(gatekeeper, running)
                        continue
                    stopping = signal.Signals(signum).name
                    readiness.set_draining()  # /readyz says no before anything stops
                    log.info("received %s, shutting down", stopping)
                    await _drain(listeners, services.drain, config.gateway.drain_seconds, signals)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await gatekeeper.aclose()  # side connections (row estimates, catalogue)
            await approvals.store.aclose()
            scope = gatekeeper.recorder.gateway_scope
            scope.add(GatewayStopped(reason=stopping))
            await scope.flush_quietly()
        with trio.CancelScope(shield=True):
            if trail is not None:  # a signed checkpoint over the end, then every sink closed
                await trail.aclose(timeout=config.audit.sync_timeout_seconds)
            await telemetry.aclose(timeout=5.0)  # the last spans and metrics exported
        gatekeeper.close()


def run(config: Config) -> None:
    logs.configure(config.gateway.log_level, config.gateway.log_format)
    trio.run(serve, config)
