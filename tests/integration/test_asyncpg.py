"""asyncpg through the gateway: prepared statements, binary types, executemany, cursors (portal
suspension), COPY, notifications, a pool, refusals, and cancellation by timeout.

asyncpg speaks only the extended protocol with binary formats for every type it knows, so it
exercises Parse/Describe/Bind with result formats, named statements and PortalSuspended.
Each test runs its coroutine with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import time
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest


def run(coro):
    return asyncio.run(coro)


async def aconnect(via, user: str = "alice", dbname: str = "app", **kw: Any) -> asyncpg.Connection:
    return await asyncpg.connect(via.dsn(user, dbname), timeout=10, **kw)


async def gw_aconnect(gw, user: str = "alice", dbname: str = "app", **kw: Any) -> asyncpg.Connection:
    pw = {"alice": "alice-secret", "bob": "bob-secret"}[user]
    return await asyncpg.connect(gw.dsn(user, pw, dbname), timeout=10, **kw)


def test_prepared_statements(via):
    async def main():
        conn = await aconnect(via)
        try:
            stmt = await conn.prepare("select $1::int + $2::int as s, $3::text as t")
            assert [p.name for p in stmt.get_parameters()] == ["int4", "int4", "text"]
            assert [(a.name, a.type.name) for a in stmt.get_attributes()] == [("s", "int4"), ("t", "text")]
            for i in range(300):
                row = await stmt.fetchrow(i, 1, f"n{i}")
                assert (row["s"], row["t"]) == (i + 1, f"n{i}")
            assert await stmt.fetchval(20, 22, "x") == 42
            assert await conn.fetchval("select $1::text || $2::text", "a", "b") == "ab"
            # Same text again: asyncpg reuses its cached named statement.
            for i in range(50):
                assert await conn.fetchval("select $1::int * 3", i) == i * 3
            # Two prepared statements alive at once, used alternately.
            s1 = await conn.prepare("select 'one', $1::int")
            s2 = await conn.prepare("select 'two', $1::int")
            for i in range(20):
                assert tuple(await s1.fetchrow(i)) == ("one", i)
                assert tuple(await s2.fetchrow(i)) == ("two", i)
        finally:
            await conn.close()

    run(main())


BINARY_CASES = [
    ("int2", 12),
    ("int4", -2147483648),
    ("int8", 9223372036854775807),
    ("numeric", Decimal("-12345678901234567890.123456789")),
    ("numeric", Decimal("0.000001")),
    ("float8", 3.141592653589793),
    ("bool", True),
    ("text", "ünïcødé ✓ \x01"),
    ("bytea", bytes(range(256))),
    ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)),
    ("timestamp", dt.datetime(1999, 12, 31, 12, 0)),
    ("date", dt.date(1970, 1, 1)),
    ("interval", dt.timedelta(days=3, seconds=7, microseconds=5)),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("jsonb", json.dumps({"k": [1, "two", None], "n": 1.5})),
    ("json", json.dumps({"a": 1})),
    ("int4[]", [1, 2, 3, None]),
    ("text[]", ["a", "b,c", "", None]),
    ("numeric[]", [Decimal("1.1"), Decimal("2")]),
]


def test_binary_types(via):
    async def main():
        conn = await aconnect(via)
        try:
            for typ, value in BINARY_CASES:
                got = await conn.fetchval(f"select $1::{typ}", value)
                if typ in ("jsonb", "json"):
                    assert json.loads(got) == json.loads(value), typ
                else:
                    assert got == value, typ
            # NULL of every kind
            row = await conn.fetchrow("select null::int, null::text, null::bytea, null::uuid")
            assert tuple(row) == (None, None, None, None)
        finally:
            await conn.close()

    run(main())


def test_binary_types_in_table(via, direct):
    name = f"t_{uuid.uuid4().hex[:12]}"
    direct.execute(
        f"create table {name} (id int primary key, n numeric, ts timestamptz, u uuid, b bytea, j jsonb, a int[])"
    )
    try:
        rows = [
            (i, Decimal(i) / 7, dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=i),
             uuid.uuid4(), bytes([i % 256]) * i, json.dumps({"i": i}), list(range(i % 5)))
            for i in range(200)
        ]

        async def main():
            conn = await aconnect(via)
            try:
                await conn.executemany(f"insert into {name} values ($1, $2, $3, $4, $5, $6, $7)", rows)
                got = await conn.fetch(f"select * from {name} order by id")
                return [tuple(r) for r in got]
            finally:
                await conn.close()

        got = run(main())
        assert len(got) == 200
        for g, r in zip(got, rows):
            assert g[:5] == r[:5] and json.loads(g[5]) == json.loads(r[5]) and g[6] == r[6]
    finally:
        direct.execute(f"drop table {name}")


def test_executemany(via, table, direct):
    async def main():
        conn = await aconnect(via)
        try:
            await conn.executemany(f"insert into {table} (id, v) values ($1, $2)", [(i, f"r{i}") for i in range(1000)])
        finally:
            await conn.close()

    run(main())
    assert direct.execute(f"select count(*), sum(id) from {table}").fetchone() == (1000, sum(range(1000)))


def test_cursor_portal_suspension(via):
    async def main():
        conn = await aconnect(via)
        try:
            async with conn.transaction():
                seen = [r[0] async for r in conn.cursor("select g from generate_series(1, 1234) g", prefetch=100)]
                assert seen == list(range(1, 1235))
                cur = await conn.cursor("select g from generate_series(1, 100) g")
                assert [r[0] for r in await cur.fetch(30)] == list(range(1, 31))
                await cur.forward(20)
                assert (await cur.fetchrow())[0] == 51
        finally:
            await conn.close()

    run(main())


def test_copy(via, table, direct):
    async def main():
        conn = await aconnect(via)
        try:
            records = [(i, f"v{i}") for i in range(3000)]
            res = await conn.copy_records_to_table(table, records=records, columns=["id", "v"])
            assert res == "COPY 3000"
            buf = io.BytesIO()
            res = await conn.copy_from_query(f"select id, v from {table} where id < 3 order by id", output=buf, format="csv")
            assert res == "COPY 3"
            assert buf.getvalue() == b"0,v0\n1,v1\n2,v2\n"
            assert await conn.fetchval("select 'after copy'") == "after copy"
        finally:
            await conn.close()

    run(main())
    assert direct.execute(f"select count(*) from {table}").fetchone() == (3000,)


def test_type_introspection_for_custom_types(via, direct):
    # An unknown type OID makes asyncpg run its large introspection query.
    tname = f"mood_{uuid.uuid4().hex[:8]}"
    direct.execute(f"create type {tname} as enum ('sad', 'ok', 'happy')")
    try:
        async def main():
            conn = await aconnect(via)
            try:
                return await conn.fetchval(f"select 'happy'::{tname}")
            finally:
                await conn.close()

        assert run(main()) == "happy"
    finally:
        direct.execute(f"drop type {tname}")


def test_notifications(via, direct):
    chan = f"ch_{uuid.uuid4().hex[:8]}"

    async def main():
        conn = await aconnect(via)
        got: asyncio.Queue = asyncio.Queue()
        try:
            await conn.add_listener(chan, lambda c, pid, ch, payload: got.put_nowait((ch, payload)))
            await asyncio.get_running_loop().run_in_executor(None, direct.execute, f"notify {chan}, 'hi'")
            return await asyncio.wait_for(got.get(), 10)
        finally:
            await conn.close()

    assert run(main()) == (chan, "hi")


def test_pool(via):
    async def main():
        pool = await asyncpg.create_pool(via.dsn("alice", "app"), min_size=2, max_size=4, timeout=10)
        try:
            async def one(i: int) -> int:
                async with pool.acquire() as c:  # release runs asyncpg's reset (multi-statement)
                    return await c.fetchval("select $1::int + 1", i)

            assert await asyncio.gather(*(one(i) for i in range(40))) == [i + 1 for i in range(40)]
        finally:
            await asyncio.wait_for(pool.close(), 10)

    run(main())


def test_refused_statement_then_connection_works(gateway, direct):
    async def main():
        conn = await gw_aconnect(gateway, dbname="prod")
        try:
            # no arguments: asyncpg uses a simple Query
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as ei:
                await conn.execute("drop table guarded")
            assert ei.value.sqlstate == "42501" and "no-drop" in str(ei.value)
            assert await conn.fetchval("select 1") == 1
            # fetch: Parse/Describe/Bind/Execute (refused at Parse)
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.fetch("drop table guarded")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.prepare("drop table guarded")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as ei:
                await conn.execute("delete from guarded")
            assert "no-delete-without-where" in str(ei.value)
            assert await conn.fetchval("select count(*) from guarded where id = $1", 1) == 1
            # refusal inside a transaction: the client rolls back and carries on
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("drop table guarded")
            assert not conn.is_in_transaction()
            assert await conn.fetchval("select $1::text", "ok") == "ok"
        finally:
            await conn.close()

    run(main())
    assert direct.execute("select note from guarded where id = 1").fetchone() == ("must survive",)


def test_refusal_for_bob_only(gateway, table, direct):
    direct.execute(f"insert into {table} values (1, 'x')")

    async def main():
        bob = await gw_aconnect(gateway, "bob")
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as ei:
                await bob.execute(f"truncate {table}")
            assert "no-truncate" in str(ei.value)
            assert await bob.fetchval(f"select count(*) from {table}") == 1
        finally:
            await bob.close()

    run(main())
    assert direct.execute(f"select count(*) from {table}").fetchone() == (1,)


def test_backend_pid_is_the_gateways(gateway):
    async def main():
        conn = await gw_aconnect(gateway)
        try:
            return conn.get_server_pid(), await conn.fetchval("select pg_backend_pid()")
        finally:
            await conn.close()

    client_pid, upstream_pid = run(main())
    assert client_pid != upstream_pid


def _active_with(direct: psycopg.Connection, marker: str, want: int | None = None, wait: float = 0) -> int:
    """Backends running a query that contains `marker` (polling up to `wait` s for `want`)."""
    deadline = time.monotonic() + wait
    while True:
        n = direct.execute(
            "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() "
            "and query like %s",
            (f"%{marker}%",),
        ).fetchone()[0]
        if want is None or n == want or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_cancel_by_timeout(via, direct):
    victim_marker = "victim-" + uuid.uuid4().hex
    bystander_marker = "bystander-" + uuid.uuid4().hex

    async def main():
        victim = await aconnect(via)
        bystander = await aconnect(via)
        try:
            by_task = asyncio.create_task(bystander.fetchval(f"select pg_sleep(4)::text || '{bystander_marker}'"))
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await victim.fetchval(f"select pg_sleep(10)::text || '{victim_marker}'", timeout=0.5)
            elapsed = time.monotonic() - t0
            # asyncpg raises TimeoutError at once and sends the CancelRequest in the background:
            # within a moment the upstream query must be gone (checked on PostgreSQL itself) ...
            loop = asyncio.get_running_loop()
            remaining = await loop.run_in_executor(None, _active_with, direct, victim_marker, 0, 3.0)
            # ... while the other session's query is still running.
            other_running = await loop.run_in_executor(None, _active_with, direct, bystander_marker)
            assert await victim.fetchval("select 'victim usable'") == "victim usable"
            by_result = await by_task
            return elapsed, remaining, other_running, by_result
        finally:
            await victim.close()
            await bystander.close()

    elapsed, remaining, other_running, by_result = run(main())
    assert elapsed < 3, f"timeout + cancel took {elapsed:.1f}s"
    assert remaining == 0, "the upstream backend is still running the cancelled query"
    assert other_running == 1, "the other session's query was cancelled too"
    assert by_result.endswith(bystander_marker)
