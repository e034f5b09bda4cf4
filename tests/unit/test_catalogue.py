"""masking.catalogue without a server: type names to kinds, rows to catalogues, the cache."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sqlward.adapters.base import Target, UpstreamTLS
from sqlward.masking.catalogue import (
    MYSQL_CATALOGUE_SQL,
    PG_CATALOGUE_SQL,
    CatalogueCache,
    mysql_catalogue_from_results,
    mysql_catalogue_from_rows,
    pg_catalogue_from_results,
    pg_catalogue_from_rows,
    type_kind,
)
from sqlward.masking.model import Catalogue, ColumnInfo, TableInfo
from sqlward.policy.model import TargetInfo

PG_KINDS = [
    ("character varying(255)", "text"),
    ("character varying", "text"),
    ("character(3)", "text"),
    ("text", "text"),
    ("name", "text"),
    ('"char"', "text"),
    ("public.citext", "text"),
    ("smallint", "integer"),
    ("integer", "integer"),
    ("bigint", "integer"),
    ("numeric(10,2)", "numeric"),
    ("numeric", "numeric"),
    ("real", "float"),
    ("double precision", "float"),
    ("boolean", "boolean"),
    ("date", "date"),
    ("timestamp without time zone", "timestamp"),
    ("timestamp(3) without time zone", "timestamp"),
    ("timestamp with time zone", "timestamptz"),
    ("timestamp(6) with time zone", "timestamptz"),
    ("time without time zone", "time"),
    ("time(2) with time zone", "time"),
    ("uuid", "uuid"),
    ("json", "json"),
    ("jsonb", "json"),
    ("bytea", "bytes"),
    ("integer[]", "other"),
    ("character varying(20)[]", "other"),
    ("text[][]", "other"),
    ("interval", "other"),
    ("inet", "other"),
    ("money", "other"),
    ("bit varying(5)", "other"),
    ("tsvector", "other"),
    ("xml", "other"),
    ("email_address", "other"),  # a domain, unresolved by name alone
    ("", "other"),
]

MYSQL_KINDS = [
    ("varchar(255)", "text"),
    ("char(2)", "text"),
    ("tinytext", "text"),
    ("text", "text"),
    ("mediumtext", "text"),
    ("longtext", "text"),  # MariaDB's json
    ("enum('a','b)c')", "text"),
    ("set('x','y')", "text"),
    ("int(11)", "integer"),
    ("int(11) unsigned", "integer"),
    ("int unsigned zerofill", "integer"),
    ("bigint(20) unsigned", "integer"),
    ("smallint(6)", "integer"),
    ("mediumint(9)", "integer"),
    ("tinyint(4)", "integer"),
    ("tinyint(3) unsigned", "integer"),
    ("tinyint(1)", "boolean"),
    ("tinyint", "integer"),
    ("year(4)", "integer"),
    ("decimal(10,2)", "numeric"),
    ("decimal(10,2) unsigned", "numeric"),
    ("float", "float"),
    ("double", "float"),
    ("double precision", "float"),
    ("date", "date"),
    ("datetime", "timestamp"),
    ("datetime(6)", "timestamp"),
    ("timestamp", "timestamp"),
    ("timestamp(3)", "timestamp"),
    ("time(6)", "time"),
    ("json", "json"),
    ("uuid", "uuid"),
    ("blob", "bytes"),
    ("longblob", "bytes"),
    ("varbinary(16)", "bytes"),
    ("binary(16)", "bytes"),
    ("bit(1)", "other"),
    ("geometry", "other"),
    ("point", "other"),
    ("inet6", "other"),
    ("VARCHAR(10)", "text"),
    ("INT(11) UNSIGNED", "integer"),
]


@pytest.mark.parametrize(("name", "kind"), PG_KINDS)
def test_pg_type_kind(name: str, kind: str) -> None:
    assert type_kind(name, "postgres") == kind


@pytest.mark.parametrize(("name", "kind"), MYSQL_KINDS)
def test_mysql_type_kind(name: str, kind: str) -> None:
    assert type_kind(name, "mysql") == kind


def test_type_kind_dialect_names() -> None:
    assert type_kind("jsonb", "postgresql") == "json"
    assert type_kind("tinyint(1)", "mariadb") == "boolean"
    # The same name means different things per dialect.
    assert type_kind("tinyint(1)", "postgres") == "other"
    assert type_kind("bytea", "mysql") == "other"
    with pytest.raises(ValueError):
        type_kind("int", "oracle")


# --------------------------------------------------------------------------------------------
# PostgreSQL rows

PG_RELATIONS = [
    ("public", "customers", "16400", "r", None),
    ("public", "active_customers", "16410", "v", " SELECT id,\n    email\n   FROM customers\n  WHERE active;"),
    ("Sales", "Orders", "16420", "r", None),
    ("public", "Mixed", "16430", "r", None),
    ("public", "mixed", "16440", "r", None),
    ("public", "empty", "16450", "r", None),
    ("public", "parted", "16460", "p", None),
    ("public", "mv", "16470", "m", " SELECT 1 AS one;"),
]
PG_COLUMNS = [
    # attrelid, attname, attnum, format_type, typtype, domain base name, domain base typtype
    ("16400", "id", "1", "integer", "b", None, None),
    ("16400", "email", "2", "character varying(255)", "b", None, None),
    ("16400", "tags", "4", "text[]", "b", None, None),  # attnum 3 was dropped
    ("16400", "Status", "5", "mood", "e", None, None),
    ("16400", "contact", "6", "email_address", "d", "character varying(100)", "b"),
    ("16400", "level", "7", "level_domain", "d", "mood", "e"),
    ("16400", "span", "8", "int4range", "r", None, None),
    ("16400", "addr", "9", "address", "c", None, None),
    ("16400", "codes", "10", "code_list", "d", "integer[]", "b"),
    ("16410", "id", "1", "integer", "b", None, None),
    ("16410", "email", "2", "character varying(255)", "b", None, None),
    ("16420", "Total", "2", "numeric(12,2)", "b", None, None),  # out of order on purpose
    ("16420", "id", "1", "bigint", "b", None, None),
    ("16430", "a", "1", "text", "b", None, None),
    ("16440", "b", "1", "text", "b", None, None),
    ("16460", "at", "1", "timestamp with time zone", "b", None, None),
    ("16470", "one", "1", "integer", "b", None, None),
    ("99999", "ghost", "1", "integer", "b", None, None),  # a relation created between statements
]


def test_pg_catalogue_from_rows() -> None:
    dropped: list[tuple[str, TableInfo, TableInfo]] = []
    cat = pg_catalogue_from_rows(
        PG_RELATIONS, PG_COLUMNS, [("Public",), ("app",)],
        on_collision=lambda key, kept, out: dropped.append((key, kept, out)),
    )
    assert set(cat.tables) == {
        "public.customers", "public.active_customers", "sales.orders", "public.mixed",
        "public.empty", "public.parted", "public.mv",
    }
    assert cat.search_path == ("public", "app")
    assert cat.version == 0
    customers = cat.tables["public.customers"]
    assert customers.oid == 16400 and not customers.is_view
    assert customers.columns == (
        ColumnInfo("id", "integer", "integer", 1),
        ColumnInfo("email", "character varying(255)", "text", 2),
        ColumnInfo("tags", "text[]", "other", 4),
        ColumnInfo("status", "mood", "text", 5),
        ColumnInfo("contact", "email_address", "text", 6),
        ColumnInfo("level", "level_domain", "text", 7),
        ColumnInfo("span", "int4range", "other", 8),
        ColumnInfo("addr", "address", "other", 9),
        ColumnInfo("codes", "code_list", "other", 10),
    )
    view = cat.tables["public.active_customers"]
    assert view.is_view and view.view_sql.startswith("SELECT id,")
    assert [c.name for c in view.columns] == ["id", "email"]
    orders = cat.tables["sales.orders"]
    assert orders.name == "sales.orders"
    assert [(c.name, c.attnum, c.kind) for c in orders.columns] == [("id", 1, "integer"), ("total", 2, "numeric")]
    # "Mixed" and "mixed" fold to the same key: the stored-lower-case one wins (it is what an
    # unquoted reference reaches), whatever the OID order.
    assert cat.tables["public.mixed"].oid == 16440
    assert [(k, kept.oid, out.oid) for k, kept, out in dropped] == [("public.mixed", 16440, 16430)]
    assert cat.tables["public.empty"].columns == ()
    assert cat.tables["public.mv"].is_view
    assert cat.tables["public.parted"].columns[0].kind == "timestamptz"
    # Lookup as the lineage analysis does it.
    assert cat.lookup("CUSTOMERS") is customers
    assert cat.lookup("Sales.Orders") is orders
    assert cat.lookup("orders") is None
    assert cat.lookup("orders", default_schema="sales") is orders


def test_pg_collision_without_a_lower_case_name_keeps_the_lowest_oid() -> None:
    cat = pg_catalogue_from_rows(
        [("public", "ABC", "20", "r", None), ("public", "Abc", "10", "r", None)], [], []
    )
    assert cat.tables["public.abc"].oid == 10
    assert cat.search_path == ()


def test_pg_catalogue_from_results_checks_the_shape() -> None:
    class R:
        def __init__(self, rows):  # type: ignore[no-untyped-def]
            self.rows = rows

    cat = pg_catalogue_from_results([R(PG_RELATIONS[:1]), R(PG_COLUMNS[:2]), R([("public",)])])
    assert list(cat.tables) == ["public.customers"]
    with pytest.raises(ValueError):
        pg_catalogue_from_results([R([]), R([])])


def test_catalogue_sql_is_multi_statement() -> None:
    assert PG_CATALOGUE_SQL.count(";") == 4
    assert "current_schemas(false)" in PG_CATALOGUE_SQL
    assert "pg_get_viewdef(c.oid, true)" in PG_CATALOGUE_SQL
    assert MYSQL_CATALOGUE_SQL.count(";") == 3
    for schema in ("mysql", "information_schema", "performance_schema", "sys"):
        assert f"'{schema}'" in MYSQL_CATALOGUE_SQL


# --------------------------------------------------------------------------------------------
# MySQL rows

MYSQL_TABLES = [
    # schema, name, table type
    ("shop", "customers", "BASE TABLE"),
    ("shop", "v_customers", "VIEW"),
    ("shop2", "Items", "BASE TABLE"),
    ("shop2", "items", "BASE TABLE"),
    ("Shop3", "T", "BASE TABLE"),
    ("shop", "broken_view", "VIEW"),
]
MYSQL_COLUMNS = [
    # schema, table, column, ordinal position, COLUMN_TYPE, DATA_TYPE
    ("shop", "customers", "id", "1", "int(11) unsigned", "int"),
    ("shop", "customers", "Email", "2", "varchar(255)", "varchar"),
    ("shop", "customers", "active", "3", "tinyint(1)", "tinyint"),
    ("shop", "customers", "doc", "4", "longtext", "longtext"),
    ("shop", "customers", "photo", "5", "blob", "blob"),
    ("shop", "customers", "state", "6", "enum('new','old')", "enum"),
    ("shop", "customers", "seen", "7", "datetime(6)", "datetime"),
    ("shop", "customers", "price", "8", "decimal(10,2)", "decimal"),
    ("shop", "v_customers", "id", "1", "int(11) unsigned", "int"),
    ("shop", "v_customers", "email", "2", "varchar(255)", "varchar"),
    ("shop2", "Items", "b", "2", "json", "json"),
    ("shop2", "Items", "a", "1", None, "bigint"),  # COLUMN_TYPE missing: DATA_TYPE
    ("shop2", "items", "z", "1", "int", "int"),
    ("Shop3", "T", "b", "2", "json", "json"),  # out of order on purpose
    ("Shop3", "T", "a", "1", "bigint(20)", "bigint"),
    ("shop", "late", "x", "1", "int", "int"),  # created between the statements: not in TABLES
]
MYSQL_VIEWS = [
    ("shop", "v_customers", "select `shop`.`customers`.`id` AS `id`,`shop`.`customers`.`Email` AS `email` from `shop`.`customers`"),
    ("shop", "broken_view", None),
]


def test_mysql_catalogue_from_rows() -> None:
    dropped: list[tuple[str, TableInfo, TableInfo]] = []
    cat = mysql_catalogue_from_rows(
        MYSQL_TABLES, MYSQL_COLUMNS, MYSQL_VIEWS,
        on_collision=lambda k, kept, out: dropped.append((k, kept, out)),
    )
    assert set(cat.tables) == {"shop.customers", "shop.v_customers", "shop2.items", "shop3.t", "shop.broken_view"}
    assert cat.search_path == ()
    customers = cat.tables["shop.customers"]
    assert customers.oid == 0 and not customers.is_view
    assert [(c.name, c.kind, c.attnum) for c in customers.columns] == [
        ("id", "integer", 1), ("email", "text", 2), ("active", "boolean", 3), ("doc", "text", 4),
        ("photo", "bytes", 5), ("state", "text", 6), ("seen", "timestamp", 7), ("price", "numeric", 8),
    ]
    assert customers.columns[0].type_name == "int(11) unsigned"
    view = cat.tables["shop.v_customers"]
    assert view.is_view and view.view_sql.startswith("select `shop`")
    # Stored-lower-case "items" beats "Items" in the case-folded key.
    assert [c.name for c in cat.tables["shop2.items"].columns] == ["z"]
    assert [(k, [c.name for c in out.columns]) for k, _, out in dropped] == [("shop2.items", ["a", "b"])]
    # Mixed-case schema and table names are lower-cased; columns sorted by position.
    assert [(c.name, c.type_name, c.kind) for c in cat.tables["shop3.t"].columns] == [
        ("a", "bigint(20)", "integer"), ("b", "json", "json"),
    ]
    # A view whose columns cannot be read and whose definition is hidden: no columns, no SQL.
    assert cat.tables["shop.broken_view"].columns == ()
    assert not cat.tables["shop.broken_view"].is_view
    assert cat.lookup("customers", default_schema="SHOP") is customers
    assert cat.lookup("customers") is None  # no search path in MySQL


def test_mysql_first_of_two_mixed_case_names_wins() -> None:
    rows = [("s", "aB", "BASE TABLE"), ("s", "Ab", "BASE TABLE")]
    cols = [("s", "Ab", "x", "1", "int", "int"), ("s", "aB", "y", "1", "int", "int")]
    cat = mysql_catalogue_from_rows(rows, cols)
    assert [c.name for c in cat.tables["s.ab"].columns] == ["x"]  # "Ab" < "aB" by code point


def test_mysql_catalogue_from_results_checks_the_shape() -> None:
    class R:
        def __init__(self, rows):  # type: ignore[no-untyped-def]
            self.rows = rows

    cat = mysql_catalogue_from_results([R(MYSQL_TABLES[:1]), R(MYSQL_COLUMNS[:1]), R([])])
    assert [c.name for c in cat.tables["shop.customers"].columns] == ["id"]
    with pytest.raises(ValueError):
        mysql_catalogue_from_results([R([]), R([])])


# --------------------------------------------------------------------------------------------
# CatalogueCache


def _target(name: str = "app", host: str = "db1") -> Target:
    return Target(
        info=TargetInfo(name=name, protocol="postgres", environment="test"), host=host, port=5432,
        user="u", database="d", tls=UpstreamTLS(mode="disable"),
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLoader:
    """Returns a catalogue naming the call number; fails while `fail` is set; can block."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: Exception | None = None
        self.gate: trio.Event | None = None
        self.started = trio.Event()

    async def __call__(self, target: Target) -> Catalogue:
        self.calls.append(target.info.name)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        n = len(self.calls)
        return Catalogue(tables={f"public.t{n}": TableInfo(name=f"public.t{n}")}, version=99)


def test_cache_loads_once_and_serves_until_max_age() -> None:
    async def main() -> None:
        clock, loader = FakeClock(), FakeLoader()
        cache = CatalogueCache(loader, max_age=300, clock=clock)
        t = _target()
        assert cache.peek("app") is None
        first = await cache.get(t)
        assert list(first.tables) == ["public.t1"] and first.version == 1
        clock.now += 299
        assert await cache.get(t) is first
        assert loader.calls == ["app"]
        clock.now += 2
        second = await cache.get(t)
        assert list(second.tables) == ["public.t2"] and second.version == 2
        assert cache.peek("app") is second
        # Another target has its own catalogue and its own versions.
        other = await cache.get(_target("other"))
        assert other.version == 1 and list(other.tables) == ["public.t3"]

    trio.run(main)


def test_cache_invalidate_reloads() -> None:
    async def main() -> None:
        clock, loader = FakeClock(), FakeLoader()
        cache = CatalogueCache(loader, clock=clock)
        t = _target()
        first = await cache.get(t)
        cache.invalidate("app")
        cache.invalidate("never-loaded")  # harmless
        assert cache.peek("app") is first  # still held until the reload
        second = await cache.get(t)
        assert second is not first and second.version == 2
        assert await cache.get(t) is second
        assert len(loader.calls) == 2
        # A reconfigured target (same name, other host) counts as invalidated.
        third = await cache.get(_target(host="db2"))
        assert third.version == 3 and len(loader.calls) == 3

    trio.run(main)


def test_cache_concurrent_gets_trigger_one_load() -> None:
    async def main() -> None:
        loader = FakeLoader()
        loader.gate = trio.Event()
        cache = CatalogueCache(loader, clock=FakeClock())
        got: list[Catalogue] = []

        async def get() -> None:
            got.append(await cache.get(_target()))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(get)
            await loader.started.wait()
            await trio.testing.wait_all_tasks_blocked()
            loader.gate.set()
        assert loader.calls == ["app"]
        assert len(got) == 10 and all(c is got[0] for c in got)

    trio.run(main)


def test_cache_keeps_old_catalogue_on_failure_and_retries_later() -> None:
    async def main() -> None:
        clock, loader = FakeClock(), FakeLoader()
        cache = CatalogueCache(loader, max_age=300, retry_after=10, clock=clock)
        t = _target()
        first = await cache.get(t)
        loader.fail = ConnectionError("upstream down")
        cache.invalidate("app")
        assert await cache.get(t) is first  # reload failed: the old one is served
        assert len(loader.calls) == 2
        clock.now += 5
        assert await cache.get(t) is first  # within retry_after: no new attempt
        assert len(loader.calls) == 2
        clock.now += 6
        assert await cache.get(t) is first  # retried, failed again
        assert len(loader.calls) == 3
        loader.fail = None
        clock.now += 11
        recovered = await cache.get(t)
        assert recovered is not first and recovered.version == 2

    trio.run(main)


def test_cache_first_load_failure_raises_and_waiters_share_it() -> None:
    async def main() -> None:
        loader = FakeLoader()
        loader.fail = ConnectionError("upstream down")
        loader.gate = trio.Event()
        cache = CatalogueCache(loader, clock=FakeClock())
        errors: list[BaseException] = []

        async def get() -> None:
            try:
                await cache.get(_target())
            except ConnectionError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(get)
            await loader.started.wait()
            await trio.testing.wait_all_tasks_blocked()
            loader.gate.set()
        assert len(errors) == 5 and len(loader.calls) == 1
        assert cache.peek("app") is None
        # The next call tries again.
        loader.fail = None
        loader.gate = None
        assert (await cache.get(_target())).version == 1
        assert len(loader.calls) == 2

    trio.run(main)


def test_cache_invalidate_during_load_leaves_result_stale() -> None:
    async def main() -> None:
        loader = FakeLoader()
        loader.gate = trio.Event()
        cache = CatalogueCache(loader, clock=FakeClock())
        result: list[Catalogue] = []

        async def get() -> None:
            result.append(await cache.get(_target()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(get)
            await loader.started.wait()
            cache.invalidate("app")  # DDL while the catalogue was being read
            loader.gate.set()
        assert result[0].version == 1
        loader.gate = None
        again = await cache.get(_target())
        assert again.version == 2 and len(loader.calls) == 2

    trio.run(main)


def test_cancelled_load_lets_the_next_caller_load() -> None:
    async def main() -> None:
        loader = FakeLoader()
        loader.gate = trio.Event()
        cache = CatalogueCache(loader, clock=FakeClock())
        with trio.move_on_after(0.05):
            await cache.get(_target())
        loader.gate.set()
        loaded = await cache.get(_target())
        assert loaded.version == 1 and len(loader.calls) == 2

    trio.run(main)


# --------------------------------------------------------------------------------------------
# Routines (issue 11: calls of user-defined routines are judged from their definitions)


def test_pg_catalogue_reads_routines_and_builtins() -> None:
    class R:
        def __init__(self, rows):  # type: ignore[no-untyped-def]
            self.rows = rows

    routines = [
        ("public", "get_email", "sql", "f", "CREATE OR REPLACE FUNCTION public.get_email() ... SELECT email FROM customers", "f"),
        ("public", "Get_Email", "plpgsql", "f", "BEGIN RETURN 1; END", "f"),  # an overload under the folded name
        ("public", "digest", "c", "f", None, "t"),
        ("app", "agg", "internal", "a", None, "f"),
        (None, "broken", "sql", "f", "", "f"),
    ]
    cat = pg_catalogue_from_results(
        [R(PG_RELATIONS[:1]), R(PG_COLUMNS[:2]), R([("public",)]), R(routines), R([("upper",), ("LOWER",), (None,)])]
    )
    assert cat.routines is not None and cat.builtins == frozenset({"upper", "lower"})
    overloads = cat.routines["public.get_email"]
    assert [r.language for r in overloads] == ["sql", "plpgsql"]
    assert overloads[0].body is not None and "customers" in overloads[0].body
    assert cat.routines["public.digest"][0].extension is True
    assert cat.routines["public.digest"][0].body is None
    assert cat.routines["app.agg"][0].kind == "aggregate"
    assert "broken" not in " ".join(cat.routines)
    assert cat.routine("get_email") == overloads  # through the search path
    assert cat.routine("agg") is None and cat.routine("app.agg") is not None
    # the older three-result shape: no routine information at all
    old = pg_catalogue_from_results([R(PG_RELATIONS[:1]), R(PG_COLUMNS[:2]), R([("public",)])])
    assert old.routines is None and old.builtins is None and old.routine("get_email") is None


def test_mysql_catalogue_reads_routines() -> None:
    class R:
        def __init__(self, rows):  # type: ignore[no-untyped-def]
            self.rows = rows

    rows = [
        ("shop", "get_email", "FUNCTION", "SQL", "RETURN (SELECT email FROM customers LIMIT 1)"),
        ("shop", "hidden", "PROCEDURE", "SQL", None),
    ]
    cat = mysql_catalogue_from_results([R(MYSQL_TABLES[:1]), R(MYSQL_COLUMNS[:1]), R([]), R(rows)])
    assert cat.routines is not None
    assert cat.routine("get_email", "shop") == cat.routines["shop.get_email"]
    assert cat.routines["shop.get_email"][0].language == "sql"
    assert cat.routines["shop.hidden"][0].body is None and cat.routines["shop.hidden"][0].kind == "procedure"
    assert cat.routine("get_email", "other") is None
    assert mysql_catalogue_from_results([R(MYSQL_TABLES[:1]), R(MYSQL_COLUMNS[:1]), R([])]).routines is None


def test_catalogue_sql_reads_routines() -> None:
    assert "pg_get_functiondef" in PG_CATALOGUE_SQL and "deptype = 'e'" in PG_CATALOGUE_SQL
    assert "'pg_catalog'::pg_catalog.regnamespace" in PG_CATALOGUE_SQL
    assert "information_schema.ROUTINES" in MYSQL_CATALOGUE_SQL
