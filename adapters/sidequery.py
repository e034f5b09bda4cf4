"""What the PostgreSQL and MySQL side-query clients share (`adapters.postgres.sidequery`,
`adapters.mysql.sidequery`): the error, the result value and the pool logic.

Side queries are the gateway's own queries on a target (EXPLAIN estimates, the schema
catalogue), on connections of their own, never on a client's session.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Generic, Protocol, TypeVar

import msgspec
import trio

from sqlward.adapters.base import Target

__all__ = ["SideQueryError", "Result", "SidePoolBase"]


class SideQueryError(Exception):
    """A side query failed. The message is safe to show (the server's error text, never the
    password). `sqlstate` is the server's SQLSTATE when it sent one ("57014" for a timeout);
    `errno` is MySQL's error number (0 for PostgreSQL and for errors of our own)."""

    def __init__(self, message: str, sqlstate: str = "", errno: int = 0) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.errno = errno


class Result(msgspec.Struct, frozen=True):
    """The rows of one statement, values as text; None is SQL NULL."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]


class _Conn(Protocol):
    @property
    def broken(self) -> bool: ...

    @property
    def reusable(self) -> bool: ...

    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Conn)
T = TypeVar("T")


class _TargetSlot(Generic[C]):
    __slots__ = ("target", "idle", "limiter")

    def __init__(self, target: Target, max_open: int) -> None:
        self.target = target
        self.idle: list[C] = []
        self.limiter = trio.CapacityLimiter(max_open)


class SidePoolBase(Generic[C]):
    """Idle side connections per target name, at most `size` each, opened lazily.

    * A query borrows the most recently returned idle connection, or opens a new one.
    * At most `max_open` connections per target are in use at once; a query waits for a free
      one within its own timeout (the timeout bounds waiting, connecting and the query).
    * A connection goes back to the idle list only when it is `reusable` (not broken, not in a
      transaction block) and the list holds fewer than `size`; otherwise it is closed.
    * A target is known by its name; when a target with the same name but other settings comes
      (a configuration reload), the idle connections made with the old settings are closed.
    * No global state: each pool is an object the gateway owns; `aclose()` closes the idle
      connections and makes further queries fail.
    """

    def __init__(self, size: int = 2, *, max_open: int = 8) -> None:
        if size < 0 or max_open < 1:
            raise ValueError("size must be >= 0 and max_open >= 1")
        self.size = size
        self.max_open = max_open
        self._slots: dict[str, _TargetSlot[C]] = {}
        self._closed = False
        self.opened = 0  # connections opened so far (tests, metrics)

    async def _open(self, target: Target) -> C:  # pragma: no cover - abstract
        raise NotImplementedError

    def idle_count(self, target_name: str) -> int:
        slot = self._slots.get(target_name)
        return len(slot.idle) if slot else 0

    async def _slot(self, target: Target) -> _TargetSlot[C]:
        slot = self._slots.get(target.info.name)
        if slot is None or slot.target != target:
            old = slot
            slot = self._slots[target.info.name] = _TargetSlot(target, self.max_open)
            if old is not None:
                stale, old.idle = old.idle, []
                for conn in stale:
                    await conn.aclose()
        return slot

    async def _run(self, target: Target, timeout: float, call: Callable[[C, float], Awaitable[T]]) -> T:
        if self._closed:
            raise SideQueryError("side connection pool is closed")
        slot = await self._slot(target)
        deadline = trio.current_time() + timeout
        acquired = False
        with trio.move_on_at(deadline):
            await slot.limiter.acquire()
            acquired = True
        if not acquired:
            raise SideQueryError(
                f"side query on {target.info.name!r} timed out after {timeout:g} s "
                "(waiting for a free side connection)", "57014",
            )
        try:
            conn: C | None = None
            while slot.idle:
                candidate = slot.idle.pop()
                if candidate.reusable:
                    conn = candidate
                    break
                await candidate.aclose()
            if conn is None:
                with trio.move_on_at(deadline):
                    conn = await self._open(target)
                if conn is None:
                    raise SideQueryError(
                        f"side query on {target.info.name!r} timed out after {timeout:g} s "
                        "(connecting)", "57014",
                    )
                self.opened += 1
            try:
                return await call(conn, max(deadline - trio.current_time(), 0.0))
            finally:
                await self._give_back(slot, conn)
        finally:
            slot.limiter.release()

    async def _give_back(self, slot: _TargetSlot[C], conn: C) -> None:
        keep = (
            conn.reusable and not self._closed
            and self._slots.get(slot.target.info.name) is slot and len(slot.idle) < self.size
        )
        if keep:
            slot.idle.append(conn)
        else:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    async def aclose(self) -> None:
        """Close every idle connection; connections in use are closed when they come back."""
        self._closed = True
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            idle, slot.idle = slot.idle, []
            for conn in idle:
                await conn.aclose()
