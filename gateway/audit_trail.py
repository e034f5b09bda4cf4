"""Builds the audit trail (`audit.trail.Trail`) and its sinks from `[audit]`.

The sinks are `[[audit.sinks]]`, or the one file `[audit] file` names; the signing key is
`[audit] signing_key_file`, or a key made on first start next to the audit file. A sink or key
that cannot be opened is a configuration error naming its key and the file.
"""

from __future__ import annotations

import os

from sqlward.audit.sinks import SinkError, TrailSink
from sqlward.audit.sinks.file import FileSink
from sqlward.audit.trail import Trail, signing_key
from sqlward.gateway.config import AuditConfig, ConfigError, audit_sinks

__all__ = ["open_trail"]


def open_trail(audit: AuditConfig, *, gateway: str, file: str) -> Trail:
    """The trail of a gateway named `gateway` (`file`: the config file, for errors)."""
    sinks: list[TrailSink] = []
    for i, cfg in enumerate(audit_sinks(audit)):
        at = f"$.audit.sinks[{i}]" if audit.sinks else "$.audit.file"
        try:
            if cfg.kind == "file":
                sinks.append(FileSink(
                    cfg.path, name=cfg.name, required=cfg.required, rotate_bytes=cfg.rotate_bytes,
                    rotate_seconds=cfg.rotate_seconds,
                ))
            elif cfg.kind == "stdout":
                from sqlward.audit.sinks.stdout import StdoutSink

                sinks.append(StdoutSink(cfg.name, cfg.required))
            else:
                from sqlward.audit.spool import remote_sink

                sinks.append(remote_sink(cfg, gateway=gateway, spool_dir=os.path.join(audit.spool_dir, cfg.name)))
        except (SinkError, OSError, ValueError) as exc:
            for sink in sinks:
                if isinstance(sink, FileSink):
                    sink.close()
            raise ConfigError.single(file, at, str(exc)) from None
    default_dir = os.path.dirname(audit.file) or "."
    try:
        key, _ = signing_key(audit.signing_key_file, default_dir=default_dir)
    except (OSError, ValueError) as exc:
        for sink in sinks:
            if isinstance(sink, FileSink):
                sink.close()
        raise ConfigError.single(file, "$.audit.signing_key_file", f"cannot use the audit signing key: {exc}") from None
    return Trail(
        gateway, sinks, key=key, durability=audit.durability, failure=audit.failure,
        checkpoint_every=audit.checkpoint_every, checkpoint_seconds=audit.checkpoint_seconds,
        sync_timeout=audit.sync_timeout_seconds,
    )
