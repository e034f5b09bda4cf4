"""The gateway process: builds the gatekeeper and one listener per configured listener, serves
until SIGINT or SIGTERM, then stops accepting and closes sessions.

SIGHUP reloads the policy (`Gatekeeper.reload_policy`); with `[gateway] policy_files`, a task
also polls the files' mtimes every `POLICY_POLL_SECONDS` and reloads when one changes (or a glob
matches another set of files). Each result is logged; a bad file keeps the running policy.

Adapters are looked up by protocol name in `ADAPTERS`; a new protocol is one entry there.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import ssl
import sys
from collections.abc import Callable

import trio

from sqlward.adapters.base import ListenerSettings, SessionServices
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
from sqlward.gateway.config import Config, ListenerConfig, parse_listen
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.gateway.pipeline import Pipeline

log = logging.getLogger("sqlward")

POLICY_POLL_SECONDS = 2.0


async def _reload(gatekeeper: Gatekeeper, why: str) -> None:
    error = await gatekeeper.reload_policy()
    if error is None:
        log.info("policy reloaded (%s): version %d", why, gatekeeper.policy_version)
    else:
        log.error("policy reload (%s) refused, version %d stays: %s", why, gatekeeper.policy_version, error)


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
    if telemetry.on:  # spans and metrics from the same events the trail records
        gatekeeper.recorder.observers = (telemetry,)
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
            if config.gateway.policy_files:
                nursery.start_soon(_watch_policy, gatekeeper)
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
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await _reload(gatekeeper, "SIGHUP")
                        continue
                    stopping = signal.Signals(signum).name
                    readiness.set_draining()  # /readyz says no before anything stops
                    log.info("received %s, shutting down", stopping)
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
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # fallback warnings are ours to report
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    trio.run(serve, config)
