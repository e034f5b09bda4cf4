"""The gateway's own log on stderr: level and format from `[gateway] log_level` / `log_format`.

How it works: `configure(level, fmt)` replaces the root logger's handlers with one stderr
handler. With ``log_format = "json"`` each record is one JSON object on one line, for log
collectors (Kubernetes, Loki, Elastic)::

    {"time":"2026-12-07T23:45:01.123Z","level":"warning","logger":"sqlward.login",
     "message":"login refused: ...","event":"login.refused","user":"alice","client":"10.0.0.7:51234"}

``time`` is UTC with milliseconds, ``level`` is lower case, ``message`` is the formatted text;
fields a call passes as ``extra={"fields": {...}}`` are added at the top level (never over the
fixed keys), and an exception is one ``exception`` string. ``text`` gives one readable line.

The events an operator must see without the audit trail are logged at their source:
refused connections (failed logins, unreachable upstreams), throttled logins and sessions an
upstream failure ended (`LogObserver`, from the audit events the sessions record),
policy and config reloads (`gateway.server`), audit sink trouble (`audit.trail`). None carries a
secret: the events logged hold user names, addresses, target names and reasons; the audit
events' reasons never quote a password or token (the identity code words them), and DSNs are
never logged.

`configure` can be called again (SIGHUP changes the level); the sqlglot logger is kept at ERROR
(its parse fallbacks are reported by the gateway itself).
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any, TextIO

import msgspec

from sqlward.audit.events import ConnectionClosed, ConnectionRefused, LoginThrottled
from sqlward.audit.recorder import AuditScope

__all__ = ["JsonFormatter", "LogObserver", "configure", "LEVELS"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FIXED = ("time", "level", "logger", "message")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module doc)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        out: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if key not in _FIXED:
                    out[str(key)] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode("utf-8", "replace")


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """One stderr handler on the root logger with this level and format (module doc)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # fallback warnings are ours to report


class LogObserver:
    """A recorder observer (like the telemetry's) that logs the audit events an operator must
    see in the gateway's log: refused connections (failed logins, refused targets, an upstream
    that cannot be reached), throttled logins, and sessions ended by an upstream failure. It
    only reads the events; it must not raise or block (`audit.recorder.Observer`)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("sqlward.sessions")

    def observe(self, scope: AuditScope, event: msgspec.Struct) -> None:
        kind = type(event)
        if kind is ConnectionRefused:
            assert isinstance(event, ConnectionRefused)
            self.log.warning(
                "connection %s refused: user %r, target %r: %s", scope.connection_id or "-", event.user,
                event.target, event.reason,
                extra={"fields": {"event": "connection.refused", "connection": scope.connection_id,
                                  "user": event.user, "target": event.target, "reason": event.reason}},
            )
        elif kind is LoginThrottled:
            assert isinstance(event, LoginThrottled)
            self.log.warning(
                "login throttled: user %r from %s (%d failures by %s)%s", event.user, event.client_addr,
                event.failures, event.scope, ", refused" if event.refused else "",
                extra={"fields": {"event": "login.throttled", "user": event.user, "client": event.client_addr,
                                  "failures": event.failures, "refused": event.refused}},
            )
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            if "upstream" in event.reason:
                self.log.error(
                    "connection %s closed: %s", scope.connection_id, event.reason,
                    extra={"fields": {"event": "connection.closed", "connection": scope.connection_id,
                                      "reason": event.reason}},
                )
