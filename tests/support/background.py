"""Statements run from a client thread while a test does something else (a signal, a decision).

    results: dict[str, Any] = {}
    t = background(results, "busy", lambda: conn.execute("select pg_sleep(1)").fetchall(), psycopg.Error)
    ...
    t.join(15)
    results["busy"], results["busy_at"]     # its value (or the error), and when it ended (monotonic)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def background(
    results: dict[str, Any], name: str, call: Callable[[], Any], errors: type[BaseException] | tuple[type[BaseException], ...],
) -> threading.Thread:
    """Start `call` in a thread: `results[name]` gets its value or the error (one of `errors`),
    `results[name + "_at"]` the monotonic time it ended."""

    def run() -> None:
        try:
            results[name] = call()
        except errors as exc:
            results[name] = exc
        results[name + "_at"] = time.monotonic()

    thread = threading.Thread(target=run, name=f"background-{name}", daemon=True)
    thread.start()
    return thread
