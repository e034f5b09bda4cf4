"""`python -m sqlward.gateway ...` is `sqlward ...` (see gateway.cli); `run` is also the
`sqlward` console script.

`run` makes `serve` ignore SIGHUP before anything else is imported: SIGHUP asks a running
gateway to reload, and its default action (ending the process) must not apply while the
gateway is still starting (a ConfigMap reloader may signal a pod that has just started); once
serving, the gateway's own handler reloads.
"""

from __future__ import annotations

import signal
import sys


def run() -> int:
    if sys.argv[1:2] == ["serve"]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from sqlward.gateway.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
