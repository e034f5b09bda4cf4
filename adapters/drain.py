"""The gateway's shutdown as sessions see it: drain, then close.

How it works: the gateway holds one `Drain` and hands it to every session (through
`SessionServices`). On SIGTERM it calls `start(grace)`: from then on

- a session that is idle (no request of its client waiting for an answer, nothing half sent) is
  closed at once with the protocol's shutdown error (PostgreSQL FATAL 57P01 admin_shutdown,
  MySQL ER_SERVER_SHUTDOWN 1053), so the client reconnects elsewhere;
- a busy session (a statement running, a statement held for approval, rows on their way) goes
  on; it is closed at the first moment it is idle again, and nothing its client sends after
  the drain began is run;
- a connection that has not authenticated yet is ended at once (the listener's part:
  `adapters/listener_common.py`);
- at `deadline` (`grace` seconds after the start) every session still open is closed with the
  same error, whatever it is doing.

A session takes part by `subscribe(hook)` when it starts relaying (the hook runs at once if the
drain has already begun) and calling the returned function when it ends. The hook is a plain
function run in the gateway's trio thread; it must not block. `active` counts the sessions
subscribed, so the gateway knows when everyone has gone.

This module does no I/O and holds no global state: the protocol sessions decide what "idle"
means for their own wire (see `adapters/postgres/session.py` and `adapters/mysql/session.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Drain", "GatewayShutdown", "SHUTDOWN_MESSAGE"]

SHUTDOWN_MESSAGE = "sqlward is shutting down: the session was closed; reconnect"


class GatewayShutdown(Exception):
    """Ends a session because the gateway is shutting down (see the module doc)."""

    def __init__(self, message: str = SHUTDOWN_MESSAGE) -> None:
        super().__init__(message)


class Drain:
    """One per gateway process (module doc)."""

    def __init__(self) -> None:
        self.started = False
        self.deadline = math.inf  # trio clock: sessions open then are closed whatever they do
        self._hooks: dict[int, Callable[[], None]] = {}
        self._next = 0

    @property
    def active(self) -> int:
        """Sessions subscribed (relaying) now."""
        return len(self._hooks)

    def subscribe(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call `hook` when the drain starts (at once when it has); returns the unsubscribe
        function, which the session calls when it ends."""
        self._next += 1
        key = self._next
        self._hooks[key] = hook
        if self.started:
            hook()

        def unsubscribe() -> None:
            self._hooks.pop(key, None)

        return unsubscribe

    def start(self, deadline: float) -> None:
        """Begin draining; sessions still open at `deadline` (trio clock) are closed."""
        if self.started:
            return
        self.started = True
        self.deadline = deadline
        for hook in list(self._hooks.values()):
            hook()
