"""The gateway process: builds the gatekeeper and one listener per configured listener, serves
until SIGINT or SIGTERM, then stops accepting and closes sessions.

SIGHUP reloads the policy (`Gatekeeper.reload_policy`); with `[gateway] policy_files`, a task
also polls the files' mtimes every `POLICY_POLL_SECONDS` and reloads when one changes (or a glob
matches another set of files). Each result is logged; a bad file keeps the running policy.

Adapters are looked up by protocol name in `ADAPTERS`; a new protocol is one entry there.
"""

from __future__ import annotations

import logging
import signal
import ssl
import sys
from typing import Any, Callable

import trio

from sqlward.adapters.mysql.listener import MysqlListener
from sqlward.adapters.postgres.listener import PostgresListener

log = logging.getLogger("sqlward")

POLICY_POLL_SECONDS = 2.0


def _reload(gatekeeper: Any, why: str) -> None:
    error = gatekeeper.reload_policy()
    if error is None:
        log.info("policy reloaded (%s): version %d", why, gatekeeper.policy_version)
    else:
        log.error("policy reload (%s) refused, version %d stays: %s", why, gatekeeper.policy_version, error)


async def _watch_policy(gatekeeper: Any) -> None:
    while True:
        await trio.sleep(POLICY_POLL_SECONDS)
        if gatekeeper.policy_changed():
            _reload(gatekeeper, "policy files changed")


def _server_context(cfg: Any, alpn: list[str] | None = None) -> ssl.SSLContext | None:
    """The listener's TLS context; with `client_ca_file`, client certificates are requested and
    verified against it (mutual TLS; a client without one still gets TLS)."""
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    client_ca = getattr(cfg, "client_ca_file", "")
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _identity_options(listener: Any, cfg: Any) -> Any:
    listener.allow_plaintext_tokens = bool(getattr(cfg, "allow_plaintext_tokens", False))
    listener.cert_identity = getattr(cfg, "cert_identity", "none") or "none"
    return listener


def _postgres_listener(gatekeeper: Any, cfg: Any) -> PostgresListener:
    ctx = _server_context(cfg, ["postgresql"])
    return _identity_options(PostgresListener(
        gatekeeper,
        name=cfg.name,
        host=cfg.host,
        port=cfg.port,
        ssl_context=ctx,
        tls_required=bool(cfg.tls is not None and cfg.tls.require),
        max_message_size=cfg.max_message_size,
        default_target=cfg.default_target,
    ), cfg)


def _mysql_listener(gatekeeper: Any, cfg: Any) -> MysqlListener:
    ctx = _server_context(cfg)
    probe = cfg.default_target or next(
        (t.name for t in gatekeeper.config.targets if t.protocol == "mysql"), ""
    )
    return _identity_options(MysqlListener(
        gatekeeper,
        name=cfg.name,
        host=cfg.host,
        port=cfg.port,
        ssl_context=ctx,
        tls_required=bool(cfg.tls is not None and cfg.tls.require),
        max_message_size=cfg.max_message_size,
        default_target=cfg.default_target,
        probe_target=probe,
        sha2_full_auth=cfg.caching_sha2_full_auth,
    ), cfg)


ADAPTERS: dict[str, Callable[[Any, Any], Any]] = {
    "postgres": _postgres_listener,
    "mysql": _mysql_listener,
}


async def serve(config: Any, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    from sqlward.gateway.gatekeeper import Gatekeeper

    gatekeeper = Gatekeeper.from_config(config)
    listeners = []
    for cfg in config.listeners:
        factory = ADAPTERS.get(cfg.protocol)
        if factory is None:
            raise SystemExit(f"sqlward: listener {cfg.name!r}: protocol {cfg.protocol!r} is not available yet")
        listeners.append(factory(gatekeeper, cfg))
    try:
        async with trio.open_nursery() as nursery:
            ports = [await nursery.start(lst.serve) for lst in listeners]
            for lst, port in zip(listeners, ports):
                log.info("listening: %s on %s:%d", lst.name, lst.host, port)
            if config.gateway.policy_files and hasattr(gatekeeper, "policy_changed"):
                nursery.start_soon(_watch_policy, gatekeeper)
            task_status.started(ports)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        _reload(gatekeeper, "SIGHUP")
                        continue
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        aclose = getattr(gatekeeper, "aclose", None)
        if aclose is not None:  # side connections (row estimates, catalogue)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await aclose()
        close = getattr(gatekeeper, "close", None)
        if close is not None:
            close()


def run(config: Any) -> None:
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # fallback warnings are ours to report
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    trio.run(serve, config)
