"""Where approval requests live: one interface, two stores.

`ApprovalStore` keeps `model.ApprovalRequest`s. Every change is `update(new, expected_version)`:
a compare-and-set on the row's version, so two gateways (or an approver and the expiry sweeper)
racing on one request cannot both win: the loser reads again and decides again. That makes
approval and execution single-use transitions: a request is claimed (approved -> executed) by
exactly one session.

- `SqliteStore`: the embedded default, a file next to the config (WAL mode, a busy timeout, so
  several processes on one host may share it). sqlite3 blocks: each call runs in a trio worker
  thread, one at a time per store.
- `PostgresStore`: a table in a PostgreSQL database shared by gateway replicas (psycopg, sync,
  in a trio worker thread; reconnects once when the connection was lost). The gateway creates
  the table and its indexes when they are missing (`CREATE TABLE IF NOT EXISTS`).

Both keep the request as JSON text (`body`) beside the columns queries filter on (id, binding,
status, expires, created, version). PostgreSQL's column is `text`, not `jsonb`: jsonb cannot hold
a NUL character (\u0000), which a MySQL statement's text or an approver's comment may carry, and
nothing queries inside the body. `open_store(url)` picks one by the URL: `postgresql://...`
or `postgres://...` for PostgreSQL, anything else is a SQLite file path (`sqlite:///` prefix
optional).
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Collection
from typing import Protocol, TypeVar

import msgspec
import trio

from sqlward.gateway.approvals.model import ApprovalRequest
from sqlward.policy.names import canonical_name

__all__ = ["ApprovalStore", "PostgresStore", "SqliteStore", "StoreError", "open_store", "requester_key"]

_decode = msgspec.json.Decoder(ApprovalRequest).decode
_encode = msgspec.json.Encoder().encode
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be read or written (the caller fails closed)."""


class ApprovalStore(Protocol):
    async def open(self) -> None:
        """Connect and create the schema when missing (StoreError)."""

    async def insert(self, request: ApprovalRequest) -> None: ...

    async def get(self, approval_id: str) -> ApprovalRequest | None: ...

    async def update(self, new: ApprovalRequest, *, expected_version: int) -> bool:
        """Write `new` (whose version must be expected_version + 1) only if the stored row still
        has `expected_version`; False when another writer got there first."""

    async def list(
        self, *, statuses: Collection[str] | None = None, limit: int = 100, requester: str | None = None,
        offset: int = 0,
    ) -> list[ApprovalRequest]:
        """Newest first; `requester`: only that subject's (compared canonically)."""

    async def by_binding(self, binding: str, statuses: Collection[str]) -> list[ApprovalRequest]:
        """Requests with this binding in one of `statuses`, oldest first."""

    async def due(self, now: float) -> list[ApprovalRequest]:
        """Pending or approved requests whose expiry has passed."""

    async def count_pending(self, requester: str) -> int:
        """Pending requests of a requester (`requester_key` of its subject)."""

    async def purge(self, before: float) -> int:
        """Delete decided requests (rejected, expired, withdrawn, executed, failed) created
        before `before`; returns how many."""

    async def aclose(self) -> None: ...


_COLUMNS = "id, binding, status, expires, created, version, body, requester"
_FINAL = ("rejected", "expired", "withdrawn", "executed", "failed")


class _Threaded:
    """Runs blocking calls in a worker thread, one at a time."""

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def _run(self, fn: Callable[[], T]) -> T:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(fn)
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc


def _row(request: ApprovalRequest) -> tuple[object, ...]:
    return (request.id, request.binding, request.status, request.expires, request.created, request.version,
            _encode(request).decode(), requester_key(request.requester.subject))


def requester_key(subject: str) -> str:
    """The requester column: the subject's canonical name (one person, one key)."""
    return canonical_name(subject)


class SqliteStore(_Threaded):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.execute(
                "CREATE TABLE IF NOT EXISTS approvals (id TEXT PRIMARY KEY, binding TEXT NOT NULL, "
                "status TEXT NOT NULL, expires REAL NOT NULL, created REAL NOT NULL, version INTEGER NOT NULL, "
                "body TEXT NOT NULL, requester TEXT NOT NULL DEFAULT '')"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(approvals)")}
            if "requester" not in columns:  # a store made before the column existed
                db.execute("ALTER TABLE approvals ADD COLUMN requester TEXT NOT NULL DEFAULT ''")
            db.execute("CREATE INDEX IF NOT EXISTS approvals_binding ON approvals (binding, status)")
            db.execute("CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, expires)")
            db.execute("CREATE INDEX IF NOT EXISTS approvals_requester ON approvals (requester, status)")
            self._db = db
        return self._db

    async def open(self) -> None:
        await self._run(self._conn)

    async def insert(self, request: ApprovalRequest) -> None:
        await self._run(lambda: self._conn().execute(f"INSERT INTO approvals ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", _row(request)))

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        rows = await self._run(lambda: self._conn().execute("SELECT body FROM approvals WHERE id = ?", (approval_id,)).fetchall())
        return _decode(rows[0][0]) if rows else None

    async def update(self, new: ApprovalRequest, *, expected_version: int) -> bool:
        assert new.version == expected_version + 1
        _, binding, status, expires, _, version, body, _ = _row(new)

        def go() -> bool:
            cur = self._conn().execute(
                "UPDATE approvals SET status = ?, expires = ?, version = ?, body = ? WHERE id = ? AND version = ?",
                (status, expires, version, body, new.id, expected_version),
            )
            return cur.rowcount == 1

        return await self._run(go)

    async def list(
        self, *, statuses: Collection[str] | None = None, limit: int = 100, requester: str | None = None,
        offset: int = 0,
    ) -> list[ApprovalRequest]:
        def go() -> list[ApprovalRequest]:
            where: list[str] = []
            params: list[object] = []
            if statuses:
                where.append(f"status IN ({','.join('?' * len(statuses))})")
                params.extend(statuses)
            if requester is not None:
                where.append("requester = ?")
                params.append(requester_key(requester))
            clause = f"WHERE {' AND '.join(where)} " if where else ""
            rows = self._conn().execute(
                f"SELECT body FROM approvals {clause}ORDER BY created DESC LIMIT ? OFFSET ?", (*params, limit, offset),
            ).fetchall()
            return [_decode(r[0]) for r in rows]

        return await self._run(go)

    async def count_pending(self, requester: str) -> int:
        rows = await self._run(lambda: self._conn().execute(
            "SELECT count(*) FROM approvals WHERE requester = ? AND status = 'pending'", (requester,),
        ).fetchall())
        return int(rows[0][0])

    async def purge(self, before: float) -> int:
        if self._db is None and not os.path.exists(self.path):
            return 0
        return await self._run(lambda: self._conn().execute(
            f"DELETE FROM approvals WHERE status IN ({','.join('?' * len(_FINAL))}) AND created < ?", (*_FINAL, before),
        ).rowcount)

    async def by_binding(self, binding: str, statuses: Collection[str]) -> list[ApprovalRequest]:
        marks = ",".join("?" * len(statuses))
        rows = await self._run(lambda: self._conn().execute(
            f"SELECT body FROM approvals WHERE binding = ? AND status IN ({marks}) ORDER BY created", (binding, *statuses),
        ).fetchall())
        return [_decode(r[0]) for r in rows]

    async def due(self, now: float) -> list[ApprovalRequest]:
        if self._db is None and not os.path.exists(self.path):
            return []  # never used: the sweeper does not create the file
        rows = await self._run(lambda: self._conn().execute(
            "SELECT body FROM approvals WHERE status IN ('pending', 'approved') AND expires <= ?", (now,),
        ).fetchall())
        return [_decode(r[0]) for r in rows]

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await trio.to_thread.run_sync(db.close)


class PostgresStore(_Threaded):
    def __init__(self, dsn: str, *, table: str = "sqlward_approvals", password: str = "") -> None:
        super().__init__()
        if not _TABLE.match(table):
            raise ValueError(f"invalid table name {table!r} (expected name or schema.name)")
        self._dsn = dsn
        self._password = password
        self._table = table
        self._db: object | None = None

    def _connect(self):  # type: ignore[no-untyped-def]
        import psycopg

        kwargs = {"password": self._password} if self._password else {}
        db = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10, application_name="sqlward-approvals", **kwargs)
        t = self._table
        index = t.replace(".", "_")
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, binding text NOT NULL, status text NOT NULL, "
            "expires double precision NOT NULL, created double precision NOT NULL, version integer NOT NULL, "
            "body text NOT NULL, requester text NOT NULL DEFAULT '')"
        )
        db.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS requester text NOT NULL DEFAULT ''")
        db.execute(f"CREATE INDEX IF NOT EXISTS {index}_binding ON {t} (binding, status)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {index}_status ON {t} (status, expires)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {index}_requester ON {t} (requester, status)")
        return db

    def _exec(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]] | int:
        import psycopg

        for attempt in (1, 2):
            if self._db is None:
                self._db = self._connect()
            db = self._db
            try:
                cur = db.execute(sql.replace("{t}", self._table), params)  # type: ignore[attr-defined]
                return cur.fetchall() if cur.description is not None else cur.rowcount
            except psycopg.OperationalError:
                try:
                    db.close()  # type: ignore[attr-defined]
                finally:
                    self._db = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _bodies(self, sql: str, params: tuple[object, ...]) -> list[ApprovalRequest]:
        rows = self._exec(sql, params)
        assert isinstance(rows, list)
        return [_decode(r[0] if isinstance(r[0], (str, bytes)) else _encode(r[0])) for r in rows]

    async def open(self) -> None:
        def go() -> None:
            if self._db is None:
                self._db = self._connect()

        await self._run(go)

    async def insert(self, request: ApprovalRequest) -> None:
        await self._run(lambda: self._exec(
            f"INSERT INTO {{t}} ({_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", _row(request),
        ))

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        found = await self._run(lambda: self._bodies("SELECT body::text FROM {t} WHERE id = %s", (approval_id,)))
        return found[0] if found else None

    async def update(self, new: ApprovalRequest, *, expected_version: int) -> bool:
        assert new.version == expected_version + 1
        _, _, status, expires, _, version, body, _ = _row(new)
        count = await self._run(lambda: self._exec(
            "UPDATE {t} SET status = %s, expires = %s, version = %s, body = %s WHERE id = %s AND version = %s",
            (status, expires, version, body, new.id, expected_version),
        ))
        return count == 1

    async def list(
        self, *, statuses: Collection[str] | None = None, limit: int = 100, requester: str | None = None,
        offset: int = 0,
    ) -> list[ApprovalRequest]:
        where: list[str] = []
        params: list[object] = []
        if statuses:
            where.append("status = ANY(%s)")
            params.append(list(statuses))
        if requester is not None:
            where.append("requester = %s")
            params.append(requester_key(requester))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return await self._run(lambda: self._bodies(
            f"SELECT body::text FROM {{t}} {clause}ORDER BY created DESC LIMIT %s OFFSET %s", (*params, limit, offset),
        ))

    async def count_pending(self, requester: str) -> int:
        rows = await self._run(lambda: self._exec(
            "SELECT count(*) FROM {t} WHERE requester = %s AND status = 'pending'", (requester,),
        ))
        assert isinstance(rows, list)
        return int(rows[0][0])  # type: ignore[arg-type]

    async def purge(self, before: float) -> int:
        count = await self._run(lambda: self._exec(
            "DELETE FROM {t} WHERE status = ANY(%s) AND created < %s", (list(_FINAL), before),
        ))
        assert isinstance(count, int)
        return count

    async def by_binding(self, binding: str, statuses: Collection[str]) -> list[ApprovalRequest]:
        return await self._run(lambda: self._bodies(
            "SELECT body::text FROM {t} WHERE binding = %s AND status = ANY(%s) ORDER BY created", (binding, list(statuses)),
        ))

    async def due(self, now: float) -> list[ApprovalRequest]:
        return await self._run(lambda: self._bodies(
            "SELECT body::text FROM {t} WHERE status IN ('pending', 'approved') AND expires <= %s", (now,),
        ))

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await trio.to_thread.run_sync(db.close)  # type: ignore[attr-defined]


def open_store(url: str, *, table: str = "sqlward_approvals", password: str = "") -> ApprovalStore:
    """The store a `[approvals] store` value names (module doc)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, table=table, password=password)
    if url.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute/path.db
        url = url[len("sqlite:///"):]
    return SqliteStore(url)
