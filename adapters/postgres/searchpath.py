"""What one PostgreSQL session's search_path is, kept by the relay (sans-IO).

The gateway resolves unqualified table names as the server will (`policy.searchpath`), so it
must know the session's path at every statement. The server does not report search_path
changes (it is not a GUC_REPORT setting), so the gateway asks: `PROBE_SQL` returns the current
role and the effective search list (`current_schemas(true)`, "$user" resolved, pg_catalog and the
temporary schema where the server searches them, schemas that do not exist left out).

`PathTracker` holds the answer and what happened since:

- `current` is the `SearchPath` each request is judged with.
- `forwarded(after)`: an allowed request may change the path (`Verdict.search_path`, what the
  pipeline traced from its text). Until the server is asked again, the candidates are the lists
  before *and* after it (the request may fail and roll back), and the path is `dirty`.
- `ready(status)`: a ReadyForQuery went by. When it ends a transaction (`I` after `T` / `E`)
  whose statements changed the path, the path is dirty too.
- `wants_probe(idle)`: the driver asks the server again (`PROBE_SQL`, injected by the relay when
  nothing is in flight and the session is not in a failed transaction) before it judges the
  next request; `probed(text)` takes the answer (None: the probe failed, the path stays
  unknown and is asked again next time).
- `history` (in `SearchPath`) keeps every list the session had since it was last seen outside a
  transaction: a COMMIT or ROLLBACK (TO SAVEPOINT) may go back to any of them.

The driver's startup asks once before the client is told the session is ready
(`initial(text)`), so role and database defaults, startup `options` and `"$user"` are the
server's own answer.
"""

from __future__ import annotations

import msgspec

from sqlward.policy.searchpath import LOST, SearchPath, effective, parse_path

__all__ = ["PROBE_SQL", "PathTracker", "from_probe"]

# One row: the current role, and the effective search list as quoted identifiers in order.
PROBE_SQL = (
    "SELECT pg_catalog.quote_ident(current_user), pg_catalog.array_to_string(ARRAY("
    "SELECT pg_catalog.quote_ident(s) FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) "
    "WITH ORDINALITY AS u(s, o) ORDER BY o), ','), pg_catalog.current_setting('search_path')"
)


def _ident(text: str) -> str:
    names = parse_path(text)
    return names[0] if names else text


def from_probe(
    user_text: str | None, path_text: str | None, setting: str | None = None, *, reset: tuple[str, ...] | None = None,
) -> SearchPath | None:
    """The `SearchPath` of the probe's answer (None when it cannot be read). `reset` is the
    session's value at start (the answer itself at start). `setting` is search_path as set:
    the schemas it names that do not exist (but "$user") are `absent`."""
    if user_text is None:
        return None
    schemas = parse_path(path_text or "")
    if schemas is None:
        return None
    user = _ident(user_text)
    path = effective(schemas, user)
    absent: tuple[str, ...] = ()
    listed: tuple[str, ...] = ()
    named = parse_path(setting) if setting else None
    if named:
        listed = effective(named, user)
        absent = tuple(
            s for s in effective([n for n in named if n != "$user"], "")
            if s not in path and s not in ("pg_catalog", "pg_temp")
        )
    return SearchPath(
        paths=(path,), user=user, reset=reset if reset is not None else path,
        absent=absent, listed=listed if absent else (),
    )


class PathTracker:
    """See the module doc."""

    __slots__ = ("current", "dirty", "probing", "_changed_in_tx", "_status")

    def __init__(self, initial: SearchPath | None) -> None:
        if initial is None:  # the startup probe failed: unknown until asked again
            initial = SearchPath(unknown="the session's search_path could not be read")
        self.current = initial
        self.dirty = bool(initial.unknown)
        self.probing = False
        self._changed_in_tx = False
        self._status = "I"

    def forwarded(self, after: SearchPath) -> None:
        cur = self.current
        paths = tuple(dict.fromkeys((*cur.paths, *after.paths)))
        history = tuple(dict.fromkeys((*cur.history, *after.history)))
        self.current = msgspec.structs.replace(
            cur, paths=paths, history=history, unknown=cur.unknown or after.unknown,
        )
        self.dirty = True
        self._changed_in_tx = True

    def ready(self, status: str) -> None:
        """A ReadyForQuery with this transaction status went by."""
        if status == "I" and self._status != "I" and self._changed_in_tx:
            self.dirty = True
        if status == "I":
            self._changed_in_tx = self.dirty
        self._status = status

    def wants_probe(self, idle: bool) -> bool:
        """Whether to ask the server now (`idle`: nothing in flight)."""
        return self.dirty and idle and not self.probing and self._status != "E"

    def start_probe(self) -> None:
        self.probing = True

    def probed(self, user_text: str | None, path_text: str | None, setting: str | None = None) -> None:
        self.probing = False
        cur = self.current
        answer = from_probe(user_text, path_text, setting, reset=cur.reset)
        if answer is None:
            self.current = msgspec.structs.replace(cur, unknown="the session's search_path could not be read")
            self.dirty = True
            return
        history: tuple[tuple[str, ...], ...] = ()
        if self._status != "I":  # inside a transaction: its end may go back to any earlier list
            lost = (LOST,) if cur.unknown else ()
            history = tuple(dict.fromkeys((*cur.history, *cur.paths, *lost, *answer.paths)))
        else:
            self._changed_in_tx = False
        self.current = msgspec.structs.replace(answer, history=history)
        self.dirty = False
