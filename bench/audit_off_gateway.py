"""The gateway with its audit records going nowhere: the "off" column of bench/audit_cost.py.

    python bench/audit_off_gateway.py --config FILE

Runs the same gateway as `sqlward serve --config FILE` (`sqlward.gateway.server.run`, hence
`serve`), except that `Gatekeeper.from_config` is given `audit_sink=NullSink()`
(sqlward.audit.recorder): the recorder still builds, stamps and encodes every event (and
telemetry, if configured, still observes them), but no trail is opened, so nothing is chained,
signed, written or fsync'd. The [audit] section of the config is ignored.

There is no product setting for this, on purpose: a gateway that records nothing is not a
product configuration. The substitution is made here, in this bench-only runner, by wrapping
`Gatekeeper.from_config` before `serve` calls it; nothing in sqlward changes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlward.audit.recorder import NullSink
from sqlward.gateway.config import ConfigError, load_config
from sqlward.gateway.gatekeeper import Gatekeeper


def install_null_sink() -> None:
    """Make `Gatekeeper.from_config` default its `audit_sink` to a NullSink (idempotent)."""
    current = Gatekeeper.__dict__["from_config"]
    if getattr(current, "_bench_null_sink", False):
        return
    original = current.__func__

    def from_config(cls: type[Gatekeeper], config: Any, audit_sink: Any = None, **kwargs: Any) -> Gatekeeper:
        return original(cls, config, NullSink() if audit_sink is None else audit_sink, **kwargs)

    wrapped = classmethod(from_config)
    wrapped._bench_null_sink = True  # type: ignore[attr-defined]
    Gatekeeper.from_config = wrapped  # type: ignore[method-assign,assignment]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sqlward serve, with audit records written nowhere (bench only)")
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="TOML configuration file")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    install_null_sink()
    from sqlward.gateway.server import run

    print("audit_off_gateway: audit sink = NullSink (records are encoded, never written)", file=sys.stderr, flush=True)
    try:
        run(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
