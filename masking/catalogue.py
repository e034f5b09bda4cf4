"""Reading the schema catalogue of a target (DESIGN.md section 6, lineage layer).

Sans-IO part
------------
* `type_kind(type_name, dialect)` maps a type name as the catalogue reports it (PostgreSQL
  `format_type(atttypid, atttypmod)`, MySQL `COLUMN_TYPE` or `DATA_TYPE`) to a `TypeKind`.
* `PG_CATALOGUE_SQL` is five statements sent as one simple Query (one round trip, five
  results): relations (pg_class: ordinary and partitioned tables, views, materialized views,
  foreign tables outside pg_catalog, information_schema, pg_toast and the temporary schemas,
  with `pg_get_viewdef(oid, true)` for views and materialized views), their columns (pg_attribute,
  attnum > 0, not dropped, `format_type`, the type's `typtype`, and for a domain the base type it
  finally rests on, resolved through nested domains), the search path
  (`current_schemas(false)`: the schemas of `search_path` that exist, `$user` resolved), the
  user-defined routines (`PG_ROUTINES_SQL`: pg_proc outside pg_catalog, information_schema and
  the temporary schemas, with the language, the definition of SQL and PL/pgSQL ones
  (`pg_get_functiondef`) and whether an extension installed it) and the built-in function names
  (`PG_BUILTINS_SQL`: pg_proc in pg_catalog). `pg_catalogue_from_rows(relations, columns,
  search_path, routines=, builtins=)` turns the text rows into a `Catalogue`;
  `pg_catalogue_from_results` also takes the three results of the older query (no routine
  information: `Catalogue.routines` and `builtins` are None).
* `MYSQL_CATALOGUE_SQL` is four statements sent as one COM_QUERY over information_schema:
  TABLES (every table, view and sequence outside mysql, information_schema, performance_schema
  and sys), COLUMNS (ORDINAL_POSITION as attnum, COLUMN_TYPE as type name),
  VIEWS.VIEW_DEFINITION and ROUTINES (ROUTINE_DEFINITION, NULL when the gateway's user may not
  read it); `mysql_catalogue_from_rows(tables, columns, views, routines=)` joins them (in
  Python: MariaDB joins TABLES with COLUMNS several times slower than it reads them) into the
  `Catalogue`. Its search path is empty (MySQL's current database is passed to
  `Catalogue.lookup` separately).

A routine's definition is what masking judges when a statement calls it
(`masking.lineage`): one whose body may read a table with masked columns, or cannot be read, is
refused for identities under masking. Loading failures stay fail closed: the whole load fails
(the gateway refuses `masking-unavailable`), never a catalogue without its routines.

Names
-----
Keys and names are lower case, schema-qualified (`public.customers`, `shop.customers`), so that
`Catalogue.lookup`, which lower()s its input, finds them. PostgreSQL folds unquoted identifiers
to lower case but keeps quoted ones as written, and MySQL on Linux compares table names case
sensitively, so two stored names may differ only in case ("Orders" and "orders"). Rule: the
relation whose stored schema and name are already lower case owns the key (it is the one an
unquoted reference reaches); when none is, the one with the lowest OID (PostgreSQL) or first in
name order by code point (MySQL) does. The other relation is left out of the catalogue (`on_collision` hears about it).
Column names are lower()ed the same way; columns keep their order and attribute numbers.

Kinds of PostgreSQL columns: arrays are `other`; enums are `text`; composite, range, multirange
and pseudo types are `other`; a domain takes the kind of its base type. `ColumnInfo.type_name`
is the declared type as `format_type` prints it (the domain's own name for a domain).

Async loaders
-------------
`load_pg_catalogue(conn_or_pool, target, timeout=...)` and `load_mysql_catalogue(...)` run the
SQL on a side connection (`adapters.postgres.sidequery.SideConnection`, anything with `query(sql,
timeout=)` and a `broken` attribute) or a side pool (anything with `query(target, sql, timeout=)`);
this module imports nothing from `adapters` (structural typing keeps the layering one way).

`CatalogueCache` keeps the current catalogue per target name: loaded on first use, reloaded after
`invalidate(name)` (DDL) or when older than `max_age` seconds; one load at a time per target
(trio.Lock), shared by everyone waiting for it; a failed reload keeps serving the old catalogue
(and retries after `retry_after` seconds), a failed first load raises. The clock is injectable.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec
import trio

from sqlward.masking.model import Catalogue, ColumnInfo, RoutineInfo, TableInfo, TypeKind

__all__ = [
    "type_kind",
    "PG_RELATIONS_SQL",
    "PG_COLUMNS_SQL",
    "PG_SEARCH_PATH_SQL",
    "PG_ROUTINES_SQL",
    "PG_BUILTINS_SQL",
    "PG_CATALOGUE_SQL",
    "MYSQL_TABLES_SQL",
    "MYSQL_COLUMNS_SQL",
    "MYSQL_VIEWS_SQL",
    "MYSQL_ROUTINES_SQL",
    "MYSQL_CATALOGUE_SQL",
    "pg_catalogue_from_rows",
    "pg_catalogue_from_results",
    "pg_routines_from_rows",
    "mysql_routines_from_rows",
    "mysql_catalogue_from_rows",
    "mysql_catalogue_from_results",
    "load_pg_catalogue",
    "load_mysql_catalogue",
    "load_catalogue",
    "CatalogueCache",
]

Row = Sequence[str | None]

# --------------------------------------------------------------------------------------------
# Type names -> TypeKind

_PG_KINDS: dict[str, TypeKind] = {
    "text": "text", "character varying": "text", "varchar": "text", "character": "text",
    "char": "text", "bpchar": "text", "name": "text", "citext": "text",
    "smallint": "integer", "integer": "integer", "bigint": "integer", "int": "integer",
    "int2": "integer", "int4": "integer", "int8": "integer",
    "numeric": "numeric", "decimal": "numeric",
    "real": "float", "double precision": "float", "float4": "float", "float8": "float",
    "boolean": "boolean", "bool": "boolean",
    "date": "date",
    "timestamp without time zone": "timestamp", "timestamp": "timestamp",
    "timestamp with time zone": "timestamptz", "timestamptz": "timestamptz",
    # timetz is "time": masking.functions recognises the offset and keeps the value valid.
    "time without time zone": "time", "time": "time", "time with time zone": "time", "timetz": "time",
    "uuid": "uuid",
    "json": "json", "jsonb": "json",
    "bytea": "bytes",
}

_MYSQL_KINDS: dict[str, TypeKind] = {
    "char": "text", "varchar": "text", "tinytext": "text", "text": "text", "mediumtext": "text",
    "longtext": "text", "enum": "text", "set": "text", "nchar": "text", "nvarchar": "text",
    "national char": "text", "national varchar": "text", "character": "text",
    "character varying": "text", "long": "text", "long varchar": "text",
    "tinyint": "integer", "smallint": "integer", "mediumint": "integer", "int": "integer",
    "integer": "integer", "bigint": "integer", "year": "integer", "int1": "integer",
    "int2": "integer", "int3": "integer", "int4": "integer", "int8": "integer", "middleint": "integer",
    "decimal": "numeric", "numeric": "numeric", "dec": "numeric", "fixed": "numeric",
    "float": "float", "double": "float", "double precision": "float", "real": "float",
    "float4": "float", "float8": "float",
    "bool": "boolean", "boolean": "boolean",
    "date": "date",
    "datetime": "timestamp", "timestamp": "timestamp",
    "time": "time",
    "json": "json",
    "uuid": "uuid",  # MariaDB 10.7+
    "binary": "bytes", "varbinary": "bytes", "tinyblob": "bytes", "blob": "bytes",
    "mediumblob": "bytes", "longblob": "bytes", "long varbinary": "bytes",
}

_PARENS = re.compile(r"\([^)]*\)")
_SPACES = re.compile(r"\s+")
_MYSQL_MODIFIERS = {"unsigned", "signed", "zerofill"}

_DIALECTS = {"postgres": "postgres", "postgresql": "postgres", "pg": "postgres",
             "mysql": "mysql", "mariadb": "mysql"}


def _dialect(dialect: str) -> str:
    try:
        return _DIALECTS[dialect.lower()]
    except KeyError:
        raise ValueError(f"unknown SQL dialect {dialect!r} (postgres or mysql)") from None


def type_kind(type_name: str, dialect: str) -> TypeKind:
    """The coarse kind of a column type as the catalogue reports it; "other" when unknown.

    PostgreSQL (`format_type` output): type modifiers are ignored (`character varying(255)`,
    `numeric(10,2)`, `timestamp(3) with time zone`), a schema qualification and double quotes
    too (`public.citext`, `"char"`); arrays (`integer[]`) are "other". Domains and enums cannot
    be told from their names: `pg_catalogue_from_rows` resolves them with the type's typtype and
    base type; here a domain's name is "other".

    MySQL / MariaDB (`COLUMN_TYPE` or `DATA_TYPE`): display widths, lengths and the
    unsigned / zerofill modifiers are ignored (`int(11) unsigned`, `decimal(10,2)`,
    `datetime(6)`), except that `tinyint(1)` (what `BOOL` declares) is "boolean" — MySQL's
    boolean redaction is `0`, valid for a TINYINT. `enum(...)` and `set(...)` are text, blobs and
    (var)binary are bytes, `json` is json (MariaDB reports JSON columns as `longtext`: text).
    """
    d = _dialect(dialect)
    name = _SPACES.sub(" ", type_name.strip().lower())
    if not name:
        return "other"
    if d == "postgres":
        if name.endswith("]"):
            return "other"  # arrays
        name = _SPACES.sub(" ", _PARENS.sub("", name)).strip()
        if "." in name:
            name = name.rsplit(".", 1)[1]
        name = name.strip('"')
        return _PG_KINDS.get(name, "other")
    base, paren, rest = name.partition("(")
    base = base.strip()
    if base == "tinyint" and paren and rest.strip().startswith("1)"):
        return "boolean"
    words = [w for w in base.split(" ") if w and w not in _MYSQL_MODIFIERS]
    return _MYSQL_KINDS.get(" ".join(words), "other")


# --------------------------------------------------------------------------------------------
# PostgreSQL

_PG_RELATION_FILTER = """c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname !~ '^pg_(toast_)?temp_'"""

PG_RELATIONS_SQL = f"""SELECT n.nspname, c.relname, c.oid, c.relkind,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid, true) END
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE {_PG_RELATION_FILTER}
ORDER BY c.oid"""

PG_COLUMNS_SQL = f"""WITH RECURSIVE dom(oid, base, mod, depth) AS (
    SELECT t.oid, t.typbasetype, t.typtypmod, 1 FROM pg_catalog.pg_type t WHERE t.typtype = 'd'
  UNION ALL
    SELECT dom.oid, b.typbasetype, b.typtypmod, dom.depth + 1
    FROM dom JOIN pg_catalog.pg_type b ON b.oid = dom.base
    WHERE b.typtype = 'd' AND dom.depth < 64
), dombase AS (
    SELECT dom.oid, pg_catalog.format_type(dom.base, dom.mod) AS name, b.typtype
    FROM dom JOIN pg_catalog.pg_type b ON b.oid = dom.base
    WHERE b.typtype <> 'd'
)
SELECT a.attrelid, a.attname, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod),
       t.typtype, db.name, db.typtype
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN dombase db ON db.oid = a.atttypid
WHERE {_PG_RELATION_FILTER}
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum"""

PG_SEARCH_PATH_SQL = """SELECT s FROM pg_catalog.unnest(pg_catalog.current_schemas(false))
  WITH ORDINALITY AS u(s, n) ORDER BY n"""

# User-defined routines (outside pg_catalog, information_schema and the temporary schemas): the
# definition (`pg_get_functiondef`, which also prints SQL-standard bodies) of SQL and PL/pgSQL
# ones; NULL for aggregates, other languages and routines an extension installed (the last are
# trusted like built-ins: `extension` is true).
PG_ROUTINES_SQL = """SELECT n.nspname, p.proname, l.lanname, p.prokind,
       CASE WHEN e.objid IS NOT NULL OR p.prokind = 'a' THEN NULL
            WHEN l.lanname IN ('sql', 'plpgsql') THEN pg_catalog.pg_get_functiondef(p.oid) END,
       e.objid IS NOT NULL
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
LEFT JOIN (SELECT DISTINCT d.objid FROM pg_catalog.pg_depend d
           WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.deptype = 'e') e ON e.objid = p.oid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast_)?temp_'
ORDER BY p.oid"""

# The server's built-in function names (pg_catalog).
PG_BUILTINS_SQL = """SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace"""

PG_CATALOGUE_SQL = (
    f"{PG_RELATIONS_SQL};\n{PG_COLUMNS_SQL};\n{PG_SEARCH_PATH_SQL};\n{PG_ROUTINES_SQL};\n{PG_BUILTINS_SQL}"
)


def _pg_column_kind(type_name: str, typtype: str | None, base_name: str | None, base_typtype: str | None) -> TypeKind:
    if typtype == "d":
        if not base_name:
            return "other"
        type_name, typtype = base_name, base_typtype
    if type_name.endswith("]"):
        return "other"
    if typtype == "e":
        return "text"
    if typtype in ("c", "p", "r", "m"):
        return "other"
    return type_kind(type_name, "postgres")


class _Candidate(msgspec.Struct):
    key: str
    exact: bool  # stored schema and name were lower case already
    order: int
    table: TableInfo


def _choose(candidates: Iterable[_Candidate]) -> tuple[dict[str, TableInfo], list[tuple[str, TableInfo, TableInfo]]]:
    """Apply the case rule: one relation per lower-case key. Also returns (key, kept, left out)
    for every relation left out."""
    chosen: dict[str, _Candidate] = {}
    dropped: list[tuple[str, _Candidate, _Candidate]] = []
    for cand in candidates:
        old = chosen.get(cand.key)
        if old is None:
            chosen[cand.key] = cand
            continue
        if (cand.exact, -cand.order) > (old.exact, -old.order):
            chosen[cand.key], cand = cand, old
        dropped.append((cand.key, chosen[cand.key], cand))
    return (
        {k: c.table for k, c in chosen.items()},
        [(k, chosen[k].table, out.table) for k, _, out in dropped],
    )


CollisionHook = Callable[[str, TableInfo, TableInfo], None]


def _report(dropped: list[tuple[str, TableInfo, TableInfo]], on_collision: CollisionHook | None) -> None:
    if on_collision is not None:
        for key, kept, left_out in dropped:
            on_collision(key, kept, left_out)


_PG_KINDS_OF_ROUTINE = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window"}


def _truth(value: str | None) -> bool:
    return (value or "").lower() in ("t", "true", "1", "on", "yes")


def _routines(items: Iterable[RoutineInfo]) -> dict[str, tuple[RoutineInfo, ...]]:
    out: dict[str, tuple[RoutineInfo, ...]] = {}
    for routine in items:
        out[routine.name] = (*out.get(routine.name, ()), routine)
    return out


def pg_routines_from_rows(rows: Iterable[Row]) -> dict[str, tuple[RoutineInfo, ...]]:
    """Routines by "schema.name" from the rows of `PG_ROUTINES_SQL` (schema, name, language,
    prokind, definition, extension)."""
    items = []
    for schema, name, language, prokind, definition, extension in rows:
        if schema is None or name is None:
            continue
        items.append(
            RoutineInfo(
                name=f"{schema.lower()}.{name.lower()}",
                language=(language or "").lower(),
                body=definition,
                kind=_PG_KINDS_OF_ROUTINE.get(prokind or "f", "function"),
                extension=_truth(extension),
            )
        )
    return _routines(items)


def pg_catalogue_from_rows(
    relations: Iterable[Row], columns: Iterable[Row], search_path: Iterable[Row | str],
    *, on_collision: CollisionHook | None = None,
    routines: Iterable[Row] | None = None, builtins: Iterable[Row | str] | None = None,
) -> Catalogue:
    """A `Catalogue` from the text rows of `PG_RELATIONS_SQL` (schema, name, oid, relkind,
    viewdef), `PG_COLUMNS_SQL` (attrelid, attname, attnum, format_type, typtype, domain base
    name, domain base typtype) and `PG_SEARCH_PATH_SQL` (schema; a row or a plain string), and
    when given those of `PG_ROUTINES_SQL` and `PG_BUILTINS_SQL` (without them the catalogue
    holds no routine information: `routines` and `builtins` are None).
    `on_collision(key, kept, left_out)` is called for each relation the case rule leaves out."""
    cols: dict[int, list[ColumnInfo]] = defaultdict(list)
    kinds: dict[tuple[str, str | None, str | None, str | None], TypeKind] = {}  # names repeat
    for relid, attname, attnum, type_name, typtype, base_name, base_typtype in columns:
        if relid is None or attname is None or attnum is None:
            continue
        tname = type_name or ""
        spec = (tname, typtype, base_name, base_typtype)
        kind = kinds.get(spec)
        if kind is None:
            kind = kinds[spec] = _pg_column_kind(tname, typtype, base_name, base_typtype)
        cols[int(relid)].append(ColumnInfo(name=attname.lower(), type_name=tname, kind=kind, attnum=int(attnum)))
    candidates = []
    for schema, name, oid_text, _relkind, viewdef in relations:
        if schema is None or name is None or oid_text is None:
            continue
        oid = int(oid_text)
        key = f"{schema.lower()}.{name.lower()}"
        table = TableInfo(
            name=key, columns=tuple(sorted(cols.get(oid, ()), key=lambda c: c.attnum)), oid=oid,
            view_sql=(viewdef or "").strip(),
        )
        exact = schema == schema.lower() and name == name.lower()
        candidates.append(_Candidate(key, exact, oid, table))
    tables, dropped = _choose(sorted(candidates, key=lambda c: c.order))
    path = []
    for item in search_path:
        value = item if isinstance(item, str) else item[0]
        if value:
            path.append(value.lower())
    _report(dropped, on_collision)
    names: frozenset[str] | None = None
    if builtins is not None:
        names = frozenset(
            (item if isinstance(item, str) else item[0] or "").lower() for item in builtins
        ) - {""}
    return Catalogue(
        tables=tables, search_path=tuple(path),
        routines=pg_routines_from_rows(routines) if routines is not None else None, builtins=names,
    )


def _rows(result: Any) -> Sequence[Row]:
    return result.rows


def pg_catalogue_from_results(results: Sequence[Any], *, on_collision: CollisionHook | None = None) -> Catalogue:
    """The catalogue from the five results of `PG_CATALOGUE_SQL` (`Result`-like: `.rows`);
    three results (relations, columns, search path: an older query) give a catalogue without
    routine information."""
    if len(results) not in (3, 5):
        raise ValueError(f"expected 5 results from the catalogue query, got {len(results)}")
    return pg_catalogue_from_rows(
        _rows(results[0]), _rows(results[1]), _rows(results[2]), on_collision=on_collision,
        routines=_rows(results[3]) if len(results) == 5 else None,
        builtins=_rows(results[4]) if len(results) == 5 else None,
    )


# --------------------------------------------------------------------------------------------
# MySQL / MariaDB

_MYSQL_SYSTEM_SCHEMAS = "('mysql', 'information_schema', 'performance_schema', 'sys')"

MYSQL_TABLES_SQL = f"""SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE
FROM information_schema.TABLES
WHERE TABLE_SCHEMA NOT IN {_MYSQL_SYSTEM_SCHEMAS}"""

MYSQL_COLUMNS_SQL = f"""SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, DATA_TYPE
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA NOT IN {_MYSQL_SYSTEM_SCHEMAS}"""

MYSQL_VIEWS_SQL = f"""SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION
FROM information_schema.VIEWS
WHERE TABLE_SCHEMA NOT IN {_MYSQL_SYSTEM_SCHEMAS}"""

# Stored functions and procedures. ROUTINE_DEFINITION is NULL when the gateway's user may not see
# it (not the definer, no SHOW_ROUTINE / SELECT on mysql.proc): such a routine is refused when
# called under masking. ROUTINE_BODY is SQL (EXTERNAL: another language).
MYSQL_ROUTINES_SQL = f"""SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_BODY, ROUTINE_DEFINITION
FROM information_schema.ROUTINES
WHERE ROUTINE_SCHEMA NOT IN {_MYSQL_SYSTEM_SCHEMAS}"""

# Separate statements joined here rather than one SQL join: MariaDB 10.11 takes ~0.45 s to join
# information_schema.TABLES with COLUMNS over 500 tables, ~0.08 s for the three reads.
MYSQL_CATALOGUE_SQL = f"{MYSQL_TABLES_SQL};\n{MYSQL_COLUMNS_SQL};\n{MYSQL_VIEWS_SQL};\n{MYSQL_ROUTINES_SQL}"


def mysql_routines_from_rows(rows: Iterable[Row]) -> dict[str, tuple[RoutineInfo, ...]]:
    """Routines by "schema.name" from the rows of `MYSQL_ROUTINES_SQL` (schema, name, type,
    body language, definition)."""
    items = []
    for schema, name, kind, body_language, definition in rows:
        if schema is None or name is None:
            continue
        items.append(
            RoutineInfo(
                name=f"{schema.lower()}.{name.lower()}",
                language=(body_language or "sql").lower(),
                body=definition,
                kind=(kind or "function").lower(),
            )
        )
    return _routines(items)


def mysql_catalogue_from_rows(
    tables: Iterable[Row], columns: Iterable[Row], views: Iterable[Row] = (),
    *, on_collision: CollisionHook | None = None, routines: Iterable[Row] | None = None,
) -> Catalogue:
    """A `Catalogue` from the text rows of `MYSQL_TABLES_SQL` (schema, name, table type),
    `MYSQL_COLUMNS_SQL` (schema, table, column, ordinal position, COLUMN_TYPE, DATA_TYPE) and
    `MYSQL_VIEWS_SQL` (schema, view, definition). Relations come from the tables rows (columns of
    a relation not among them are ignored: it appeared between the statements); a relation
    without readable columns (a view over a dropped table) has none. A view whose definition the
    gateway's user may not see (no SHOW VIEW privilege) has an empty `view_sql` and so looks like
    a table."""
    view_sql: dict[tuple[str, str], str] = {}
    for schema, name, definition in views:
        if schema is not None and name is not None:
            view_sql[(schema, name)] = (definition or "").strip()
    cols: dict[tuple[str, str], list[ColumnInfo]] = defaultdict(list)
    kinds: dict[str, TypeKind] = {}  # type names repeat
    for schema, name, column, position, column_type, data_type in columns:
        if schema is None or name is None or column is None or position is None:
            continue
        tname = column_type or data_type or ""
        kind = kinds.get(tname)
        if kind is None:
            kind = kinds[tname] = type_kind(tname, "mysql")
        cols[(schema, name)].append(ColumnInfo(name=column.lower(), type_name=tname, kind=kind, attnum=int(position)))
    idents = sorted({(schema, name) for schema, name, _type in tables if schema is not None and name is not None})
    candidates = []
    for i, (schema, name) in enumerate(idents):  # code point order: deterministic collisions
        key = f"{schema.lower()}.{name.lower()}"
        table = TableInfo(
            name=key, columns=tuple(sorted(cols.get((schema, name), ()), key=lambda c: c.attnum)),
            oid=0, view_sql=view_sql.get((schema, name), ""),
        )
        exact = schema == schema.lower() and name == name.lower()
        candidates.append(_Candidate(key, exact, i, table))
    chosen, dropped = _choose(candidates)
    _report(dropped, on_collision)
    return Catalogue(
        tables=chosen, search_path=(), routines=mysql_routines_from_rows(routines) if routines is not None else None
    )


def mysql_catalogue_from_results(results: Sequence[Any], *, on_collision: CollisionHook | None = None) -> Catalogue:
    """The catalogue from the four results of `MYSQL_CATALOGUE_SQL`; three (an older query)
    give a catalogue without routine information."""
    if len(results) not in (3, 4):
        raise ValueError(f"expected 4 results from the catalogue query, got {len(results)}")
    return mysql_catalogue_from_rows(
        _rows(results[0]), _rows(results[1]), _rows(results[2]), on_collision=on_collision,
        routines=_rows(results[3]) if len(results) == 4 else None,
    )


# --------------------------------------------------------------------------------------------
# Async loaders


@runtime_checkable
class _SideConnection(Protocol):
    """A single side connection: `query(sql, timeout=)`; pools have no `broken`."""

    @property
    def broken(self) -> bool: ...

    async def query(self, sql: str, *, timeout: float) -> Sequence[Any]: ...


async def _run(conn_or_pool: Any, target: Any, sql: str, timeout: float) -> Sequence[Any]:
    if isinstance(conn_or_pool, _SideConnection):
        return await conn_or_pool.query(sql, timeout=timeout)
    return await conn_or_pool.query(target, sql, timeout=timeout)


async def load_pg_catalogue(conn_or_pool: Any, target: Any, *, timeout: float) -> Catalogue:
    """Read the catalogue of a PostgreSQL target (one round trip). Errors are the side-query
    client's (`SideQueryError`)."""
    return pg_catalogue_from_results(await _run(conn_or_pool, target, PG_CATALOGUE_SQL, timeout))


async def load_mysql_catalogue(conn_or_pool: Any, target: Any, *, timeout: float) -> Catalogue:
    """Read the catalogue of a MySQL / MariaDB target (one round trip)."""
    return mysql_catalogue_from_results(await _run(conn_or_pool, target, MYSQL_CATALOGUE_SQL, timeout))


async def load_catalogue(
    target: Any, *, pg_pool: Any = None, mysql_pool: Any = None, timeout: float = 30.0
) -> Catalogue:
    """Load through the pool of the target's protocol (`target.info.protocol`)."""
    protocol = target.info.protocol
    if protocol in ("postgres", "postgresql") and pg_pool is not None:
        return await load_pg_catalogue(pg_pool, target, timeout=timeout)
    if protocol in ("mysql", "mariadb") and mysql_pool is not None:
        return await load_mysql_catalogue(mysql_pool, target, timeout=timeout)
    raise ValueError(f"no side pool for protocol {protocol!r} of target {target.info.name!r}")


# --------------------------------------------------------------------------------------------
# Cache


class _Entry:
    __slots__ = ("target", "catalogue", "loaded_at", "stale", "generation", "attempts", "retry_at", "error", "lock")

    def __init__(self, target: Any) -> None:
        self.target = target  # the settings the catalogue was read with
        self.catalogue: Catalogue | None = None
        self.loaded_at = 0.0
        self.stale = True
        self.generation = 0  # bumped by invalidate()
        self.attempts = 0  # loads finished (ok or not)
        self.retry_at = 0.0  # after a failed reload: serve the old catalogue until then
        self.error: BaseException | None = None  # of the last load, if it failed
        self.lock = trio.Lock()


class CatalogueCache:
    """The current `Catalogue` per target name.

    `loader(target)` reads a target's catalogue (e.g. `functools.partial(load_catalogue,
    pg_pool=..., mysql_pool=..., timeout=...)`); `clock()` gives seconds (monotonic; injectable
    for tests). `get(target)`:

    * returns the cached catalogue while it is fresh: loaded less than `max_age` seconds ago and
      not invalidated since;
    * otherwise loads it, one load at a time per target: tasks that waited for a load in
      progress take its outcome instead of loading again;
    * stamps every catalogue it stores with the next `version` of that target (1, 2, ...;
      versions keep growing across invalidations);
    * when a reload fails and an older catalogue exists, returns the older one and tries again
      only after `retry_after` seconds; when there is none, raises the loader's error.

    `invalidate(name)` marks the catalogue stale (after DDL); it is still served if the reload
    fails. A load that was running when `invalidate` was called stores its result as stale, so
    the next `get` loads again. A target whose settings changed under the same name (a
    configuration reload) counts as invalidated. No global state: the gateway owns the cache.
    """

    def __init__(
        self,
        loader: Callable[[Any], Awaitable[Catalogue]],
        *,
        max_age: float = 300.0,
        retry_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self.max_age = max_age
        self.retry_after = retry_after
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._versions: dict[str, int] = {}
        self.loads = 0  # loader calls so far (tests, metrics)

    def _fresh(self, entry: _Entry, now: float) -> bool:
        if entry.catalogue is None:
            return False
        if not entry.stale and now - entry.loaded_at < self.max_age:
            return True
        return now < entry.retry_at  # a reload failed recently: keep serving the old one

    def peek(self, target_name: str) -> Catalogue | None:
        """The catalogue held for `target_name` (fresh or not), without loading."""
        entry = self._entries.get(target_name)
        return entry.catalogue if entry else None

    def invalidate(self, target_name: str) -> None:
        """Forget that the catalogue of `target_name` is current (after DDL on that target)."""
        entry = self._entries.get(target_name)
        if entry is not None:
            entry.stale = True
            entry.generation += 1
            entry.retry_at = 0.0

    def invalidate_all(self) -> None:
        for name in list(self._entries):
            self.invalidate(name)

    async def get(self, target: Any) -> Catalogue:
        name = target.info.name
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _Entry(target)
        elif entry.target != target:  # the target was reconfigured (another host, database, ...)
            entry.target = target
            self.invalidate(name)
        if self._fresh(entry, self._clock()):
            assert entry.catalogue is not None
            return entry.catalogue
        attempts = entry.attempts
        async with entry.lock:
            if entry.attempts != attempts:
                # A load finished while we waited: take its outcome rather than load again.
                if entry.catalogue is not None:
                    return entry.catalogue
                assert entry.error is not None
                raise entry.error
            if self._fresh(entry, self._clock()):
                assert entry.catalogue is not None
                return entry.catalogue
            generation = entry.generation
            self.loads += 1
            try:
                loaded = await self._loader(target)
            except Exception as exc:
                # (A cancelled load is not an outcome: waiters then load themselves.)
                entry.attempts += 1
                entry.error = exc
                if entry.catalogue is not None:
                    entry.retry_at = self._clock() + self.retry_after
                    return entry.catalogue
                raise
            version = self._versions.get(name, 0) + 1
            self._versions[name] = version
            catalogue = msgspec.structs.replace(loaded, version=version)
            entry.catalogue = catalogue
            entry.loaded_at = self._clock()
            entry.stale = entry.generation != generation
            entry.retry_at = 0.0
            entry.error = None
            entry.attempts += 1
            return catalogue
