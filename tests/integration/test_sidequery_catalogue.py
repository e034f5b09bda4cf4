"""Side-query clients and catalogue loaders against the local PostgreSQL and MariaDB.

Each server gets a database `sqlward_side` of its own (dropped before and after), with tables of
many column types, a view, a mixed-case quoted table. Nothing here uses the gateway process.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Awaitable, Callable, Iterator

import psycopg
import pymysql
import pytest
import trio

from sqlward.adapters.base import Target, UpstreamTLS
from sqlward.adapters.mysql import sidequery as mys
from sqlward.adapters.postgres import sidequery as pgs
from sqlward.adapters.sidequery import SideQueryError
from sqlward.masking.catalogue import CatalogueCache, load_catalogue, load_mysql_catalogue, load_pg_catalogue
from sqlward.policy.model import TargetInfo

DB = "sqlward_side"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable"
PG_DSN = f"postgresql://postgres@127.0.0.1:5432/{DB}?sslmode=disable"

PG_TARGET = Target(
    info=TargetInfo(name="pgside", protocol="postgres", environment="test"), host="127.0.0.1",
    port=5432, user="postgres", database=DB, tls=UpstreamTLS(mode="disable"),
)
MY_TARGET = Target(
    info=TargetInfo(name="myside", protocol="mysql", environment="test"), host="127.0.0.1",
    port=3306, user="root", database=DB, tls=UpstreamTLS(mode="disable"),
)


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


# --------------------------------------------------------------------------------------------
# Databases

PG_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN email_address AS varchar(100) CHECK (VALUE LIKE '%@%');
CREATE DOMAIN work_email AS email_address;
CREATE SCHEMA sales;
CREATE TABLE customers (
    id serial PRIMARY KEY,
    email varchar(255),
    gone text,
    code char(3),
    note text,
    active boolean,
    balance numeric(10,2),
    score real,
    ratio double precision,
    born date,
    created timestamp,
    updated timestamptz(3),
    wake time,
    wake_tz timetz,
    uid uuid,
    doc json,
    docb jsonb,
    photo bytea,
    tags text[],
    ip inet,
    dur interval,
    feeling mood,
    contact email_address,
    office work_email,
    small smallint,
    big bigint
);
ALTER TABLE customers DROP COLUMN gone;
INSERT INTO customers (email, note, active, balance) VALUES
    ('a@example.com', NULL, true, 10.50), ('b@example.com', 'vip', false, 0), (NULL, NULL, true, NULL);
CREATE VIEW active_customers AS SELECT id, email FROM customers WHERE active;
CREATE MATERIALIZED VIEW customer_count AS SELECT count(*) AS n FROM customers;
CREATE TABLE "MixedCase" ("Id" int, "Value" text);
CREATE TABLE "Dup" (x int);
CREATE TABLE dup (y int, z int);
CREATE TABLE events (id int, at timestamptz) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE sales.orders (id bigint, customer_id int, total numeric(12,2));
CREATE TABLE nocols ();
ALTER DATABASE sqlward_side SET search_path = "$user", public, sales, not_there;
"""

PG_EXPECTED_KINDS = {
    "id": "integer", "email": "text", "code": "text", "note": "text", "active": "boolean",
    "balance": "numeric", "score": "float", "ratio": "float", "born": "date",
    "created": "timestamp", "updated": "timestamptz", "wake": "time", "wake_tz": "time",
    "uid": "uuid", "doc": "json", "docb": "json", "photo": "bytes", "tags": "other", "ip": "other",
    "dur": "other", "feeling": "text", "contact": "text", "office": "text", "small": "integer",
    "big": "integer",
}


def _pg_drop() -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    _pg_drop()
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(PG_DSN, autocommit=True) as c:
        c.execute(PG_SCHEMA)
    yield DB
    _pg_drop()


MY_SCHEMA = [
    f"CREATE DATABASE {DB}",
    f"""CREATE TABLE {DB}.customers (
        id int(11) unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
        email varchar(255),
        code char(3),
        note text,
        active tinyint(1),
        flag bool,
        level tinyint,
        small smallint,
        medium mediumint,
        big bigint unsigned,
        balance decimal(10,2),
        score float,
        ratio double,
        born date,
        seen datetime(6),
        stamp timestamp NULL DEFAULT NULL,
        wake time,
        yr year,
        doc json,
        photo blob,
        raw varbinary(16),
        bin binary(4),
        state enum('new','old'),
        perms set('r','w'),
        bits bit(3),
        uid uuid
    )""",
    f"INSERT INTO {DB}.customers (email, note, active, balance) VALUES "
    "('a@example.com', NULL, 1, 10.50), ('b@example.com', 'vip', 0, 0), (NULL, NULL, 1, NULL)",
    f"CREATE VIEW {DB}.active_customers AS SELECT id, email FROM {DB}.customers WHERE active",
    f"CREATE TABLE {DB}.`MixedCase` (`Id` int, `Value` text)",
    f"CREATE PROCEDURE {DB}.two_results() BEGIN SELECT 1 AS one; SELECT 'two' AS two, NULL AS nothing; END",
]

MY_EXPECTED_KINDS = {
    "id": "integer", "email": "text", "code": "text", "note": "text", "active": "boolean",
    "flag": "boolean", "level": "integer", "small": "integer", "medium": "integer",
    "big": "integer", "balance": "numeric", "score": "float", "ratio": "float", "born": "date",
    "seen": "timestamp", "stamp": "timestamp", "wake": "time", "yr": "integer",
    "doc": "text",  # MariaDB: json is longtext with a json_valid CHECK
    "photo": "bytes", "raw": "bytes", "bin": "bytes", "state": "text", "perms": "text",
    "bits": "other", "uid": "uuid",
}


def _my_root() -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)


def _my_drop() -> None:
    with _my_root() as c, c.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")


@pytest.fixture(scope="module")
def my_db() -> Iterator[str]:
    _my_drop()
    with _my_root() as c, c.cursor() as cur:
        for statement in MY_SCHEMA:
            cur.execute(statement)
    yield DB
    _my_drop()


# --------------------------------------------------------------------------------------------
# PostgreSQL side queries


def test_pg_query_statements_nulls_and_errors(pg_db: str) -> None:
    async def main() -> None:
        conn = await pgs.open_side_connection(PG_TARGET)
        try:
            results = await conn.query(
                "SELECT 1 AS a, NULL::text AS b; SET application_name = 'sqlward:side-test';"
                " SELECT email, note FROM customers ORDER BY id; SELECT 'x' WHERE false",
                timeout=5,
            )
            assert [r.columns for r in results] == [("a", "b"), ("email", "note"), ("?column?",)]
            assert results[0].rows == (("1", None),)
            assert results[1].rows == (("a@example.com", None), ("b@example.com", "vip"), (None, None))
            assert results[2].rows == ()
            assert conn.parameters["application_name"] == "sqlward:side-test"

            with pytest.raises(SideQueryError) as err:
                await conn.query("SELECT 1; SELECT * FROM no_such_table; SELECT 2", timeout=5)
            assert err.value.sqlstate == "42P01" and "no_such_table" in str(err.value)
            assert not conn.broken
            assert (await conn.query("SELECT 'still usable'", timeout=5))[0].rows == (("still usable",),)

            # Read-only by default: writes are refused, EXPLAIN of a write is fine.
            with pytest.raises(SideQueryError) as err:
                await conn.query("DELETE FROM customers", timeout=5)
            assert err.value.sqlstate == "25006"
            plan = await conn.query("EXPLAIN DELETE FROM customers WHERE id = 1", timeout=5)
            assert plan[0].columns == ("QUERY PLAN",) and "Delete on customers" in plan[0].rows[0][0]
            assert (await conn.query("SELECT count(*) FROM customers", timeout=5))[0].rows == (("3",),)
            # Statements without rows give no result; an empty query neither.
            assert await conn.query("SET work_mem = '8MB'; ;", timeout=5) == []
            # Non-ASCII text and a large value.
            big = await conn.query("SELECT 'été ✓', repeat('x', 200000)", timeout=5)
            assert big[0].rows[0][0] == "été ✓" and len(big[0].rows[0][1] or "") == 200000
        finally:
            await conn.aclose()
        assert conn.broken
        with pytest.raises(SideQueryError):
            await conn.query("SELECT 1", timeout=5)

    run(main)


def test_pg_run_one_statement_per_round_trip(pg_db: str) -> None:
    async def main() -> None:
        conn = await pgs.open_side_connection(
            PG_TARGET, parameters=(("plan_cache_mode", "force_generic_plan"),)
        )
        try:
            assert (await conn.run("SHOW plan_cache_mode", timeout=5))[0].rows == (("force_generic_plan",),)
            assert (await conn.run(["SHOW default_transaction_read_only"], timeout=5))[0].rows == (("on",),)
            # The extended protocol refuses a second statement in the text: nothing runs.
            with pytest.raises(SideQueryError) as err:
                await conn.run("SELECT 1; SET default_transaction_read_only = off", timeout=5)
            assert err.value.sqlstate == "42601"
            assert (await conn.run("SHOW default_transaction_read_only", timeout=5))[0].rows == (("on",),)
            # Several statements, one round trip each; rows-less ones give no result.
            results = await conn.run(
                [
                    "DEALLOCATE ALL",
                    "PREPARE est AS DELETE FROM customers WHERE id = $1",
                    "EXPLAIN (FORMAT JSON) EXECUTE est(NULL)",
                    "SELECT NULL::int AS n, 'x' AS s",
                ],
                timeout=5,
            )
            assert [r.columns for r in results] == [("QUERY PLAN",), ("n", "s")]
            assert '"Node Type": "ModifyTable"' in (results[0].rows[0][0] or "")
            assert results[1].rows == ((None, "x"),)
            # Stops at the first error; the connection stays usable.
            with pytest.raises(SideQueryError) as err:
                await conn.run(["SELECT 1", "SELECT * FROM no_such_table", "SELECT 2"], timeout=5)
            assert err.value.sqlstate == "42P01" and not conn.broken
            assert (await conn.query("SELECT 1; SELECT 2", timeout=5))[1].rows == (("2",),)
        finally:
            await conn.aclose()

        pool = pgs.SidePool(parameters=(("plan_cache_mode", "force_generic_plan"),))
        try:
            got = await pool.run(PG_TARGET, ["SHOW plan_cache_mode"], timeout=5)
            assert got[0].rows == (("force_generic_plan",),)
        finally:
            await pool.aclose()

    run(main)


def test_pg_timeout_closes_and_cancels(pg_db: str) -> None:
    async def main() -> None:
        conn = await pgs.open_side_connection(PG_TARGET, application_name="sqlward:side-timeout")
        pid = conn.pid
        start = time.monotonic()
        with pytest.raises(SideQueryError) as err:
            await conn.query("SELECT pg_sleep(5)", timeout=0.5)
        elapsed = time.monotonic() - start
        assert err.value.sqlstate == "57014" and "timed out" in str(err.value)
        assert 0.45 < elapsed < 3.0
        assert conn.broken
        with pytest.raises(SideQueryError):
            await conn.query("SELECT 1", timeout=5)
        await conn.aclose()
        return pid

    pid = run(main)
    # The server stopped the statement (CancelRequest) and the session ends.
    with psycopg.connect(PG_DSN, autocommit=True) as c:
        for _ in range(50):
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row == (0,):
                break
            time.sleep(0.05)
        assert row == (0,)


def test_pg_connect_errors_are_side_query_errors(pg_db: str) -> None:
    async def main() -> None:
        bad = Target(info=PG_TARGET.info, host="127.0.0.1", port=5432, user="postgres",
                     database="no_such_db_sqlward", password="s3cret-pw", tls=UpstreamTLS(mode="disable"))
        with pytest.raises(SideQueryError) as err:
            await pgs.open_side_connection(bad)
        assert "no_such_db_sqlward" in str(err.value) and "s3cret-pw" not in str(err.value)

    run(main)


def test_pg_pool_reuses_and_discards(pg_db: str) -> None:
    async def main() -> None:
        pool = pgs.SidePool(size=1)
        try:
            pids = {
                (await pool.query(PG_TARGET, "SELECT pg_backend_pid()", timeout=5))[0].rows[0][0]
                for _ in range(3)
            }
            assert len(pids) == 1 and pool.opened == 1 and pool.idle_count("pgside") == 1
            name = await pool.query(PG_TARGET, "SELECT current_setting('application_name')", timeout=5)
            assert name[0].rows == (("sqlward:side",),)
            # An error keeps the connection.
            with pytest.raises(SideQueryError):
                await pool.query(PG_TARGET, "SELECT 1/0", timeout=5)
            assert pool.opened == 1 and pool.idle_count("pgside") == 1

            # Concurrent queries open more connections; only `size` stay idle.
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(partial(pool.query, PG_TARGET, "SELECT pg_sleep(0.2)", timeout=5))
            assert pool.opened == 3 and pool.idle_count("pgside") == 1

            # A connection left inside a transaction block is not kept.
            await pool.query(PG_TARGET, "BEGIN", timeout=5)
            assert pool.idle_count("pgside") == 0
            # A timed out (broken) connection is not kept either.
            with pytest.raises(SideQueryError):
                await pool.query(PG_TARGET, "SELECT pg_sleep(5)", timeout=0.3)
            assert pool.idle_count("pgside") == 0
            after = (await pool.query(PG_TARGET, "SELECT pg_backend_pid()", timeout=5))[0].rows[0][0]
            assert after not in pids and pool.opened == 5

            # max_open bounds concurrent connections; waiting counts against the timeout.
            small = pgs.SidePool(size=1, max_open=1)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(small.query, PG_TARGET, "SELECT pg_sleep(0.5)", timeout=5))
                    await trio.sleep(0.1)
                    with pytest.raises(SideQueryError) as err:
                        await small.query(PG_TARGET, "SELECT 1", timeout=0.2)
                    assert "waiting for a free side connection" in str(err.value)
                assert small.opened == 1
            finally:
                await small.aclose()
        finally:
            await pool.aclose()
        assert pool.idle_count("pgside") == 0
        with pytest.raises(SideQueryError):
            await pool.query(PG_TARGET, "SELECT 1", timeout=5)

    run(main)


# --------------------------------------------------------------------------------------------
# MySQL side queries


def test_my_query_statements_nulls_and_errors(my_db: str) -> None:
    async def main() -> None:
        conn = await mys.open_side_connection(MY_TARGET)
        try:
            assert conn.database == DB
            results = await conn.query(
                "SELECT 1 AS a, NULL AS b; SET @x = 1; SELECT email, note FROM customers ORDER BY id;"
                " SELECT 1 FROM DUAL WHERE FALSE",
                timeout=5,
            )
            assert [r.columns for r in results] == [("a", "b"), ("email", "note"), ("1",)]
            assert results[0].rows == (("1", None),)
            assert results[1].rows == (("a@example.com", None), ("b@example.com", "vip"), (None, None))
            assert results[2].rows == ()

            with pytest.raises(SideQueryError) as err:
                await conn.query("SELECT 1; SELECT * FROM no_such_table; SELECT 2", timeout=5)
            assert err.value.errno == 1146 and err.value.sqlstate == "42S02"
            assert "no_such_table" in str(err.value)
            assert not conn.broken
            assert (await conn.query("SELECT 'still usable'", timeout=5))[0].rows == (("still usable",),)

            # A stored procedure: two result sets and the final OK (MULTI_RESULTS).
            called = await conn.query("CALL two_results()", timeout=5)
            assert [(r.columns, r.rows) for r in called] == [
                (("one",), (("1",),)), (("two", "nothing"), (("two", None),)),
            ]
            # Non-ASCII text (utf8mb4), a large value, many rows.
            big = await conn.query("SELECT 'été ✓ 🎉', REPEAT('x', 200000)", timeout=5)
            assert big[0].rows[0][0] == "été ✓ 🎉" and len(big[0].rows[0][1] or "") == 200000
            many = await conn.query("SELECT seq FROM seq_1_to_5000", timeout=5)
            assert len(many[0].rows) == 5000 and many[0].rows[-1] == ("5000",)
            plan = await conn.query("EXPLAIN UPDATE customers SET note = 'x' WHERE id = 1", timeout=5)
            assert "table" in plan[0].columns

            # database=: COM_INIT_DB when it differs; USE inside a query is tracked too.
            assert (await conn.query("SELECT DATABASE()", timeout=5, database="mysql"))[0].rows == (("mysql",),)
            assert conn.database == "mysql"
            await conn.query("USE sqlward_side", timeout=5)
            assert conn.database == DB
            assert (await conn.query("SELECT DATABASE()", timeout=5))[0].rows == ((DB,),)
            with pytest.raises(SideQueryError) as err:
                await conn.query("SELECT 1", timeout=5, database="no_such_db_sqlward")
            assert err.value.errno == 1049 and not conn.broken
            assert (await conn.query("SELECT DATABASE()", timeout=5))[0].rows == ((DB,),)
        finally:
            await conn.aclose()
        assert conn.broken

    run(main)


def test_my_run_one_statement_per_round_trip(my_db: str) -> None:
    async def main() -> None:
        conn = await mys.open_side_connection(MY_TARGET)
        try:
            # run() switches multi-statements off: the server refuses a second statement.
            with pytest.raises(SideQueryError) as err:
                await conn.run("SELECT 1; DELETE FROM customers", timeout=5)
            assert err.value.errno == 1064
            results = await conn.run(["SET @a = 5", "SELECT @a, NULL", "EXPLAIN SELECT * FROM customers"], timeout=5)
            assert results[0].rows == (("5", None),) and "table" in results[1].columns
            # query() switches them on again.
            assert len(await conn.query("SELECT 1; SELECT 2", timeout=5)) == 2
            assert len(await conn.run("SELECT COUNT(*) FROM customers", timeout=5, database=DB)) == 1
            with pytest.raises(SideQueryError):
                await conn.run(["SELECT 1", "SELECT * FROM no_such_table", "SELECT 2"], timeout=5)
            assert not conn.broken
        finally:
            await conn.aclose()

        # A pool without multi-statements: query() refuses them too.
        pool = mys.SidePool(multi_statements=False)
        try:
            with pytest.raises(SideQueryError) as err:
                await pool.query(MY_TARGET, "SELECT 1; SELECT 2", timeout=5)
            assert err.value.errno == 1064
            got = await pool.run(MY_TARGET, "SELECT DATABASE()", timeout=5)
            assert got[0].rows == ((DB,),)
        finally:
            await pool.aclose()
        with _my_root() as c, c.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {DB}.customers")
            assert cur.fetchone() == (3,)

    run(main)


def test_gateway_estimator_over_side_pools(pg_db: str, my_db: str) -> None:
    """The gateway's row estimator (gateway.estimator) works on these pools."""
    from sqlward.gateway.estimator import Estimator

    async def main() -> None:
        est = Estimator()
        try:
            pg_rows = await est.rows(PG_TARGET, "DELETE FROM customers WHERE id > $1", "postgres", timeout=5)
            assert isinstance(pg_rows, int) and pg_rows >= 1
            my_rows = await est.rows(MY_TARGET, "DELETE FROM customers WHERE id > 0", "mysql", schema=DB, timeout=5)
            assert isinstance(my_rows, int) and my_rows >= 1
            # A second statement hidden in the text is refused by the server and runs nothing
            # (the estimator lets the error through; gatekeeper.estimate_rows turns it into None).
            with pytest.raises(SideQueryError) as err:
                await est.rows(PG_TARGET, "DELETE FROM customers; DROP TABLE dup", "postgres", timeout=5)
            assert err.value.sqlstate == "42601"
            with pytest.raises(SideQueryError) as err:
                await est.rows(MY_TARGET, "DELETE FROM customers; DROP TABLE customers", "mysql", schema=DB, timeout=5)
            assert err.value.errno == 1064
        finally:
            await est.aclose()

    run(main)
    with psycopg.connect(PG_DSN, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (3,)
        assert c.execute("SELECT to_regclass('dup') IS NOT NULL").fetchone() == (True,)
    with _my_root() as c, c.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {DB}.customers")
        assert cur.fetchone() == (3,)


def test_my_timeout_closes_and_kills(my_db: str) -> None:
    async def main() -> int:
        conn = await mys.open_side_connection(MY_TARGET)
        cid = conn.connection_id
        start = time.monotonic()
        with pytest.raises(SideQueryError) as err:
            await conn.query("SELECT SLEEP(5)", timeout=0.5)
        elapsed = time.monotonic() - start
        assert "timed out" in str(err.value)
        assert 0.45 < elapsed < 3.0
        assert conn.broken
        with pytest.raises(SideQueryError):
            await conn.query("SELECT 1", timeout=5)
        return cid

    cid = run(main)
    with _my_root() as c, c.cursor() as cur:
        for _ in range(50):
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (cid,))
            row = cur.fetchone()
            if row == (0,):
                break
            time.sleep(0.05)
        assert row == (0,)


def test_my_read_only_option(my_db: str) -> None:
    async def main() -> None:
        conn = await mys.open_side_connection(MY_TARGET, read_only=True)
        try:
            with pytest.raises(SideQueryError) as err:
                await conn.query("DELETE FROM customers", timeout=5)
            assert err.value.errno == 1792
            assert (await conn.query("SELECT COUNT(*) FROM customers", timeout=5))[0].rows == (("3",),)
        finally:
            await conn.aclose()

    run(main)


def test_my_pool_reuses_and_resets_database(my_db: str) -> None:
    async def main() -> None:
        pool = mys.SidePool(size=1)
        try:
            ids = {
                (await pool.query(MY_TARGET, "SELECT CONNECTION_ID()", timeout=5))[0].rows[0][0]
                for _ in range(3)
            }
            assert len(ids) == 1 and pool.opened == 1
            assert (await pool.query(MY_TARGET, "SELECT DATABASE()", timeout=5, database="mysql"))[0].rows == (("mysql",),)
            # Without database= the target's own database is used again.
            assert (await pool.query(MY_TARGET, "SELECT DATABASE()", timeout=5))[0].rows == ((DB,),)
            # A connection left in a transaction is not kept; a timed-out one neither.
            await pool.query(MY_TARGET, "BEGIN", timeout=5)
            assert pool.idle_count("myside") == 0
            with pytest.raises(SideQueryError):
                await pool.query(MY_TARGET, "SELECT SLEEP(5)", timeout=0.3)
            assert pool.idle_count("myside") == 0
            fresh = (await pool.query(MY_TARGET, "SELECT CONNECTION_ID()", timeout=5))[0].rows[0][0]
            assert fresh not in ids and pool.opened == 3
            assert pool.idle_count("myside") == 1
        finally:
            await pool.aclose()
        assert pool.idle_count("myside") == 0

    run(main)


# --------------------------------------------------------------------------------------------
# Catalogues


def test_pg_catalogue(pg_db: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as c:
        oids = dict(c.execute(
            "SELECT relname, oid::int FROM pg_class WHERE relname IN "
            "('customers', 'active_customers', 'customer_count', 'MixedCase', 'Dup', 'dup', "
            "'events', 'events_2024', 'orders', 'nocols')"
        ).fetchall())
        assert oids["customers"] == c.execute("SELECT 'customers'::regclass::oid::int").fetchone()[0]
        attnums = c.execute(
            "SELECT attname, attnum FROM pg_attribute WHERE attrelid = 'customers'::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ).fetchall()

    async def main() -> tuple[Any, float]:
        pool = pgs.SidePool()
        try:
            start = time.perf_counter()
            cat = await load_pg_catalogue(pool, PG_TARGET, timeout=10)
            elapsed = time.perf_counter() - start
            conn = await pgs.open_side_connection(PG_TARGET)
            try:
                same = await load_pg_catalogue(conn, PG_TARGET, timeout=10)
            finally:
                await conn.aclose()
            assert same == cat
            return cat, elapsed
        finally:
            await pool.aclose()

    cat, elapsed = run(main)
    print(f"\nPostgreSQL catalogue: {len(cat.tables)} relations in {elapsed * 1000:.1f} ms")
    assert set(cat.tables) == {
        "public.customers", "public.active_customers", "public.customer_count", "public.mixedcase",
        "public.dup", "public.events", "public.events_2024", "sales.orders", "public.nocols",
    }
    assert cat.search_path == ("public", "sales")
    customers = cat.tables["public.customers"]
    assert customers.oid == oids["customers"] and not customers.is_view
    assert [(col.name, col.attnum) for col in customers.columns] == attnums
    assert 3 not in [col.attnum for col in customers.columns]  # the dropped column
    assert {col.name: col.kind for col in customers.columns} == PG_EXPECTED_KINDS
    by_name = {col.name: col for col in customers.columns}
    assert by_name["email"].type_name == "character varying(255)"
    assert by_name["balance"].type_name == "numeric(10,2)"
    assert by_name["updated"].type_name == "timestamp(3) with time zone"
    assert by_name["office"].type_name == "work_email"  # a domain over a domain
    view = cat.tables["public.active_customers"]
    assert view.is_view and "customers" in view.view_sql and view.oid == oids["active_customers"]
    assert [col.name for col in view.columns] == ["id", "email"]
    assert cat.tables["public.customer_count"].is_view  # materialized view
    mixed = cat.tables["public.mixedcase"]
    assert mixed.oid == oids["MixedCase"] and [col.name for col in mixed.columns] == ["id", "value"]
    assert cat.tables["public.dup"].oid == oids["dup"]  # the stored-lower-case one wins
    assert cat.tables["public.events"].oid == oids["events"]
    assert cat.tables["public.events_2024"].columns[1].kind == "timestamptz"
    assert cat.tables["sales.orders"].oid == oids["orders"]
    assert cat.tables["public.nocols"].columns == ()
    assert cat.lookup("ORDERS") is cat.tables["sales.orders"]  # through the search path
    assert cat.lookup('MixedCase') is mixed


def test_my_catalogue(my_db: str) -> None:
    async def main() -> tuple[Any, float]:
        pool = mys.SidePool()
        try:
            start = time.perf_counter()
            cat = await load_mysql_catalogue(pool, MY_TARGET, timeout=10)
            elapsed = time.perf_counter() - start
            conn = await mys.open_side_connection(MY_TARGET)
            try:
                same = await load_mysql_catalogue(conn, MY_TARGET, timeout=10)
            finally:
                await conn.aclose()
            assert same == cat
            return cat, elapsed
        finally:
            await pool.aclose()

    cat, elapsed = run(main)
    print(f"\nMariaDB catalogue: {len(cat.tables)} relations in {elapsed * 1000:.1f} ms")
    mine = {k for k in cat.tables if k.startswith(f"{DB}.")}
    assert mine == {f"{DB}.customers", f"{DB}.active_customers", f"{DB}.mixedcase"}
    assert not any(k.split(".")[0] in ("mysql", "information_schema", "performance_schema", "sys") for k in cat.tables)
    assert cat.search_path == ()
    customers = cat.tables[f"{DB}.customers"]
    assert customers.oid == 0 and not customers.is_view
    assert [col.name for col in customers.columns] == list(MY_EXPECTED_KINDS)
    assert [col.attnum for col in customers.columns] == list(range(1, len(MY_EXPECTED_KINDS) + 1))
    assert {col.name: col.kind for col in customers.columns} == MY_EXPECTED_KINDS
    by_name = {col.name: col for col in customers.columns}
    assert by_name["id"].type_name == "int(11) unsigned"
    assert by_name["balance"].type_name == "decimal(10,2)"
    assert by_name["seen"].type_name == "datetime(6)"
    view = cat.tables[f"{DB}.active_customers"]
    assert view.is_view and "customers" in view.view_sql
    assert [col.name for col in view.columns] == ["id", "email"]
    mixed = cat.tables[f"{DB}.mixedcase"]
    assert [col.name for col in mixed.columns] == ["id", "value"]
    assert cat.lookup("customers", default_schema=DB) is customers


def test_catalogue_cache_with_real_loaders(pg_db: str, my_db: str) -> None:
    async def main() -> None:
        pg_pool, my_pool = pgs.SidePool(), mys.SidePool()
        now = [0.0]

        async def loader(target: Target) -> Any:
            return await load_catalogue(target, pg_pool=pg_pool, mysql_pool=my_pool, timeout=10)

        cache = CatalogueCache(loader, max_age=300, clock=lambda: now[0])
        try:
            first = await cache.get(PG_TARGET)
            assert "public.late" not in first.tables and first.version == 1
            assert await cache.get(PG_TARGET) is first
            with psycopg.connect(PG_DSN, autocommit=True) as c:
                c.execute("CREATE TABLE late (a int)")
            assert await cache.get(PG_TARGET) is first  # not invalidated yet
            cache.invalidate("pgside")
            second = await cache.get(PG_TARGET)
            assert "public.late" in second.tables and second.version == 2
            my = await cache.get(MY_TARGET)
            assert f"{DB}.customers" in my.tables and my.version == 1
            assert cache.loads == 3
        finally:
            await pg_pool.aclose()
            await my_pool.aclose()

    run(main)
