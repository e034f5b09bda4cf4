"""gateway.approvals.store: one suite, run against both stores (SQLite and PostgreSQL).

How it works: the `backend` fixture is parametrized `sqlite` / `postgres`. `sqlite` is a file in
the test's tmp directory; `postgres` is a scratch database `sqlward_store_test_<pid>` on the
local PostgreSQL (127.0.0.1:5432, trust auth, user postgres), created once per module and dropped
afterwards, with a table of each test's own. `backend.new()` makes another store object over
the same file / database table: a restart, or a second gateway replica sharing the store. Each
test is a coroutine run under `trio.run`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psycopg
import pytest
import trio

from sqlward.gateway.approvals.model import ApprovalRequest, Decision, Requester
from sqlward.gateway.approvals.store import ApprovalStore, PostgresStore, SqliteStore, StoreError, open_store
from sqlward.policy.approval import ApprovalRule, Approver
from tests.integration.conftest import _admin_dsn, scratch_database

DB = f"sqlward_store_test_{os.getpid()}"
admin_dsn = _admin_dsn


@pytest.fixture(scope="module")
def scratch_db() -> Iterator[str]:
    with scratch_database(DB) as name:
        yield name


@dataclass
class Backend:
    kind: str
    new: Callable[[], ApprovalStore]
    table: str = ""
    dsn: str = ""


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = str(tmp_path / "approvals.sqlite3")
        return Backend("sqlite", lambda: SqliteStore(path))
    db = request.getfixturevalue("scratch_db")
    table = f"approvals_{uuid.uuid4().hex[:12]}"
    dsn = admin_dsn(db)
    return Backend("postgres", lambda: PostgresStore(dsn, table=table), table=table, dsn=dsn)


def make(n: int = 1, **changes: object) -> ApprovalRequest:
    now = 1_800_000_000.0
    fields: dict[str, object] = dict(
        id=f"ap-{n:012d}", binding="b" * 64, requester=Requester(subject="alice@example.com", groups=("dev",)),
        target="prod", environment="production", protocol="postgres", sql="DELETE FROM t WHERE id < 100",
        requirements=(ApprovalRule(approvers=("group:dba",)),), created=now + n, expires=now + n + 900,
    )
    fields.update(changes)
    return ApprovalRequest(**fields)  # type: ignore[arg-type]


def bump(r: ApprovalRequest, **changes: object) -> ApprovalRequest:
    return msgspec.structs.replace(r, version=r.version + 1, **changes)  # type: ignore[arg-type]


def run(backend: Backend, test: Callable[[ApprovalStore], object]) -> None:
    async def main() -> None:
        store = backend.new()
        await store.open()
        try:
            await test(store)  # type: ignore[misc]
        finally:
            await store.aclose()

    trio.run(main)


def test_insert_then_get_round_trips_every_field(backend: Backend) -> None:
    rich = make(
        1, requester=Requester(subject="bot-agent", actor=("agent-x", "agent-y"), groups=("a", "b"), issuer="https://idp",
                               verified_by="oidc", is_agent=True),
        reason="CHG-12 ünïcode ☃ \"quotes\" \\ back", parameters=("1", None, "\\x00ff"), sql="UPDATE t SET v = 'x;y' -- c",
        operations=("update",), tables=("public.t",), rules=("mass-write", "r2"), facts=("rows>1000",),
        estimated_rows=123456, message="needs approval", upstream_role="app", names='"$user", public',
        requirements=(ApprovalRule(approvers=("group:dba", "bot:cb"), approvals=2, all_groups=("sec",), principal=True,
                                   mode="retry", expires=60.5, hold_timeout=30.25, reason_pattern="CHG-[0-9]+"),),
        decisions=(Decision(approver=Approver(subject="bob", groups=("dba",), verified_by="oidc"), verdict="approve",
                            comment="ok", time=1_800_000_001.125),),
        created=1_800_000_000.333, expires=1_800_000_900.777, decided=None, error=None,
    )

    async def go(store: ApprovalStore) -> None:
        await store.insert(rich)
        assert await store.get(rich.id) == rich
        assert await store.get("ap-nothere") is None

    run(backend, go)


def test_insert_of_an_existing_id_fails(backend: Backend) -> None:
    async def go(store: ApprovalStore) -> None:
        await store.insert(make(1))
        with pytest.raises(StoreError):
            await store.insert(make(1, sql="SELECT 2"))
        assert (await store.get(make(1).id)).sql == make(1).sql  # type: ignore[union-attr]

    run(backend, go)


def test_update_is_compare_and_set(backend: Backend) -> None:
    async def go(store: ApprovalStore) -> None:
        r = make(1)
        await store.insert(r)
        approved = bump(r, status="approved", decided=r.created + 5)
        assert await store.update(approved, expected_version=0) is True
        assert await store.get(r.id) == approved
        # A writer that read version 0 loses: the row is at version 1.
        stale = bump(r, status="rejected")
        assert await store.update(stale, expected_version=0) is False
        assert (await store.get(r.id)).status == "approved"  # type: ignore[union-attr]
        executed = bump(approved, status="executed", executed=r.created + 9)
        assert await store.update(executed, expected_version=1) is True
        assert (await store.get(r.id)).version == 2  # type: ignore[union-attr]
        # An update of a request that does not exist changes nothing.
        assert await store.update(bump(make(9)), expected_version=0) is False
        assert await store.get(make(9).id) is None

    run(backend, go)


def test_list_by_status_newest_first(backend: Backend) -> None:
    async def go(store: ApprovalStore) -> None:
        for n, status in [(1, "pending"), (2, "approved"), (3, "pending"), (4, "rejected"), (5, "pending")]:
            await store.insert(make(n, status=status))
        ids = lambda rs: [r.id for r in rs]  # noqa: E731
        assert ids(await store.list()) == [make(n).id for n in (5, 4, 3, 2, 1)]
        assert ids(await store.list(statuses=["pending"])) == [make(n).id for n in (5, 3, 1)]
        assert ids(await store.list(statuses={"approved", "rejected"})) == [make(n).id for n in (4, 2)]
        assert ids(await store.list(statuses=["pending"], limit=2)) == [make(n).id for n in (5, 3)]
        assert ids(await store.list(limit=1)) == [make(5).id]
        assert await store.list(statuses=["expired"]) == []

    run(backend, go)


def test_by_binding_oldest_first_in_the_statuses_asked(backend: Backend) -> None:
    async def go(store: ApprovalStore) -> None:
        await store.insert(make(3, binding="x" * 64, status="approved"))
        await store.insert(make(1, binding="x" * 64, status="approved"))
        await store.insert(make(2, binding="x" * 64, status="executed"))
        await store.insert(make(4, binding="y" * 64, status="approved"))
        assert [r.id for r in await store.by_binding("x" * 64, ("approved",))] == [make(1).id, make(3).id]
        assert [r.id for r in await store.by_binding("x" * 64, ("approved", "executed"))] == [make(n).id for n in (1, 2, 3)]
        assert await store.by_binding("x" * 64, ("pending",)) == []
        assert await store.by_binding("z" * 64, ("approved",)) == []

    run(backend, go)


def test_due_is_open_requests_past_expiry(backend: Backend) -> None:
    async def go(store: ApprovalStore) -> None:
        now = 1_800_010_000.0
        await store.insert(make(1, status="pending", expires=now - 1))
        await store.insert(make(2, status="approved", expires=now - 1))
        await store.insert(make(3, status="pending", expires=now + 60))
        await store.insert(make(4, status="executed", expires=now - 1))
        await store.insert(make(5, status="rejected", expires=now - 1))
        await store.insert(make(6, status="pending", expires=now))
        assert sorted(r.id for r in await store.due(now)) == [make(1).id, make(2).id, make(6).id]
        # The update keeps the expires column in step with the body.
        r3 = await store.get(make(3).id)
        assert r3 is not None
        assert await store.update(bump(r3, expires=now - 5), expected_version=0)
        assert make(3).id in [r.id for r in await store.due(now)]

    run(backend, go)


def test_a_new_store_object_sees_pending_requests(backend: Backend) -> None:
    """The restart case: the requests outlive the store object (and the process)."""

    async def main() -> None:
        first = backend.new()
        await first.open()
        await first.insert(make(1))
        await first.insert(make(2, status="approved"))
        await first.aclose()
        second = backend.new()
        await second.open()
        try:
            assert [r.id for r in await second.list(statuses=["pending"])] == [make(1).id]
            assert await second.get(make(2).id) == make(2, status="approved")
        finally:
            await second.aclose()

    trio.run(main)


def test_two_store_objects_racing_a_claim_one_wins(backend: Backend) -> None:
    """Two replicas read the same approved request and both try approved -> executed."""

    async def main() -> None:
        stores = [backend.new() for _ in range(4)]
        for s in stores:
            await s.open()
        try:
            for round_ in range(5):
                r = make(100 + round_, status="approved")
                await stores[0].insert(r)
                read = [await s.get(r.id) for s in stores]
                assert all(x is not None and x.version == 0 for x in read)
                results: list[tuple[int, bool]] = []

                async def claim(i: int) -> None:
                    done = bump(read[i], status="executed", executed=float(i))  # type: ignore[arg-type]
                    results.append((i, await stores[i].update(done, expected_version=0)))

                async with trio.open_nursery() as nursery:
                    for i in range(len(stores)):
                        nursery.start_soon(claim, i)
                winners = [i for i, ok in results if ok]
                assert len(winners) == 1, results
                final = await stores[1].get(r.id)
                assert final is not None and final.status == "executed" and final.version == 1
                assert final.executed == float(winners[0])
        finally:
            for s in stores:
                await s.aclose()

    trio.run(main)


def test_the_table_is_created_when_missing(backend: Backend, tmp_path: Path) -> None:
    async def main() -> None:
        store = backend.new()
        await store.open()
        await store.aclose()
        if backend.kind == "sqlite":
            import sqlite3

            db = sqlite3.connect(str(tmp_path / "approvals.sqlite3"))
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            db.close()
            assert {"approvals", "approvals_binding", "approvals_status"} <= names
        else:
            with psycopg.connect(backend.dsn) as c:
                names = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (backend.table,))}
            assert {f"{backend.table}_binding", f"{backend.table}_status", f"{backend.table}_pkey"} <= names
        # Opening again over the existing table is fine and keeps its rows.
        store = backend.new()
        await store.insert(make(1))  # first use opens lazily
        await store.aclose()
        store = backend.new()
        await store.open()
        assert await store.get(make(1).id) == make(1)
        await store.aclose()

    trio.run(main)


def test_postgres_store_in_a_schema_table(scratch_db: str) -> None:
    dsn = admin_dsn(scratch_db)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA IF NOT EXISTS sqlward_ops")

    async def main() -> None:
        store = PostgresStore(dsn, table="sqlward_ops.approvals")
        await store.open()
        await store.insert(make(1))
        assert await store.get(make(1).id) == make(1)
        await store.aclose()

    trio.run(main)
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM sqlward_ops.approvals").fetchone() == (1,)


def test_postgres_store_reconnects_after_its_connection_is_killed(scratch_db: str) -> None:
    dsn = admin_dsn(scratch_db)
    table = f"approvals_{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        store = PostgresStore(dsn, table=table)
        await store.open()
        await store.insert(make(1))
        for _ in range(2):  # twice: each reconnection is itself replaceable
            with psycopg.connect(admin_dsn(), autocommit=True) as c:
                killed = c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                    (scratch_db, "sqlward-approvals"),
                ).fetchall()
            assert killed == [(True,)]
            await trio.sleep(0.1)
            assert await store.get(make(1).id) == make(1)
        r = await store.get(make(1).id)
        assert r is not None and await store.update(bump(r, status="approved"), expected_version=0)
        await store.aclose()

    trio.run(main)


def test_postgres_store_unreachable_is_a_store_error() -> None:
    closed = __import__("socket").socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()

    async def main() -> None:
        store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/x?sslmode=disable")
        with pytest.raises(StoreError):
            await store.open()
        with pytest.raises(StoreError):
            await store.get("ap-1")

    trio.run(main)


def test_sqlite_store_unwritable_is_a_store_error(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(str(tmp_path / "no-such-dir" / "approvals.sqlite3"))
        with pytest.raises(StoreError):
            await store.open()

    trio.run(main)


def test_open_store_picks_the_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db", table="s.t"), PostgresStore)
    s = open_store(str(tmp_path / "a.sqlite3"))
    assert isinstance(s, SqliteStore) and s.path == str(tmp_path / "a.sqlite3")
    s = open_store("sqlite:///relative.db")
    assert isinstance(s, SqliteStore) and s.path == "relative.db"
    s = open_store("sqlite:////abs/path.db")
    assert isinstance(s, SqliteStore) and s.path == "/abs/path.db"
    with pytest.raises(ValueError):
        PostgresStore("postgresql://u@h/db", table="t; DROP TABLE x")


def test_text_with_nul_and_odd_characters_round_trips(backend: Backend) -> None:
    """A MySQL statement may carry a NUL byte in its text, and a comment comes from the API: the
    store keeps them (PostgreSQL jsonb cannot hold \\u0000)."""

    async def go(store: ApprovalStore) -> None:
        r = make(1, sql="SELECT 'a\x00b'", reason="why\x00not \ud7ff \U0001f600")
        await store.insert(r)
        assert await store.get(r.id) == r
        decided = bump(r, decisions=(Decision(approver=Approver(subject="bob"), verdict="reject",
                                              comment="no\x00way", time=1.5),), status="rejected")
        assert await store.update(decided, expected_version=0)
        assert await store.get(r.id) == decided
        assert [x.id for x in await store.by_binding(r.binding, ("rejected",))] == [r.id]

    run(backend, go)


def test_created_times_order_with_sub_second_precision(backend: Backend) -> None:
    async def go(store: ApprovalStore) -> None:
        base = time.time()
        for i in range(5):
            await store.insert(make(i, created=base + i * 0.001, expires=base + 900))
        assert [r.id for r in await store.list()] == [make(i).id for i in (4, 3, 2, 1, 0)]

    run(backend, go)


def test_a_store_table_made_before_the_requester_column_gets_it(tmp_path: Path) -> None:
    """Stores made by an earlier build (no `requester` column) are brought up to date at open."""
    import sqlite3

    path = str(tmp_path / "old.sqlite3")
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE approvals (id TEXT PRIMARY KEY, binding TEXT NOT NULL, status TEXT NOT NULL, "
        "expires REAL NOT NULL, created REAL NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL)"
    )
    db.commit()
    db.close()

    async def go() -> None:
        store = SqliteStore(path)
        try:
            await store.insert(make())
            assert await store.count_pending("alice@example.com") == 1
        finally:
            await store.aclose()

    trio.run(go)
