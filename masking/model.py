"""Boundary types of masking (DESIGN.md section 6), shared by the policy, the lineage analysis,
the value functions and the protocol adapters' row rewriters.

- `MaskRule` is what policy files declare (`[[masks]]`): which columns (globs over
  `schema.table.column`, `table.column` or `*.column`) or which classifiers, which function, who
  is exempt.
- `MaskSpec` is the function to apply to one output column (with its parameters); `MaskSpec`
  values are cached inside `MaskPlan`s, so they are frozen and hashable.
- `Catalogue` is the per-target schema the gateway reads from the upstream: tables and views with
  their ordered columns, types and (PostgreSQL) OIDs / attribute numbers for the wire cross-check,
  and (when read) the user-defined routines (`RoutineInfo`: language, definition, installed by an
  extension or not) and the server's built-in function names, from which calls are judged.
- `TypeKind` is the coarse type of a column as the client was told it; a masked value must stay
  valid for it (`masking.functions`).

Names in a `Catalogue` are lower case and always schema-qualified (`public.customers`; MySQL uses
the database as schema: `shop.customers`).
"""

from __future__ import annotations

from typing import Literal

import msgspec

MaskFunction = Literal["redact", "null", "partial", "email", "hash", "truncate_date"]
TypeKind = Literal[
    "text",  # char, varchar, text, enum, set, citext, name, ...
    "integer",  # smallint .. bigint, tinyint, mediumint, serial, year
    "numeric",  # numeric / decimal
    "float",  # real, double
    "boolean",
    "date",
    "timestamp",  # without time zone (MySQL datetime / timestamp too)
    "timestamptz",
    "time",
    "uuid",
    "json",  # json, jsonb
    "bytes",  # bytea, blob, binary, varbinary
    "other",  # anything else (arrays, inet, geometry, intervals, ...): masked to NULL
]
Classifier = Literal["email", "card", "ssn", "iban", "phone", "secret"]
DatePart = Literal["year", "month", "day", "hour"]


class MaskSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One masking function with its parameters, and the rule that asked for it."""

    function: MaskFunction = "redact"
    rule_id: str = ""
    keep_first: int = 0  # partial
    keep_last: int = 4  # partial
    truncate: DatePart = "month"  # truncate_date


class MaskRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A masking rule from a policy file (`[[masks]]`)."""

    id: str
    # Column globs, case-insensitive: "customers.email", "public.customers.email", "*.ssn".
    columns: tuple[str, ...] = ()
    # Content classifiers run on result values of every column (last net): email, card, ssn, ...
    classifiers: tuple[Classifier, ...] = ()
    function: MaskFunction = "redact"
    # Arguments of one function each (None: left out, the default applies): keep_first (0) and
    # keep_last (4) of `partial`, truncate ("month") of `truncate_date`
    # (`masking.functions.FUNCTION_ARGUMENTS`); an argument given to another function is a config
    # error (it would do nothing).
    keep_first: int | None = None
    keep_last: int | None = None
    truncate: DatePart | None = None
    # Who sees clear values.
    exempt_identities: tuple[str, ...] = ()  # subject globs
    exempt_groups: tuple[str, ...] = ()
    # Where the rule applies (empty = everywhere).
    environments: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()

    def spec(self) -> MaskSpec:
        defaults = MaskSpec()
        return MaskSpec(
            function=self.function,
            rule_id=self.id,
            keep_first=defaults.keep_first if self.keep_first is None else self.keep_first,
            keep_last=defaults.keep_last if self.keep_last is None else self.keep_last,
            truncate=defaults.truncate if self.truncate is None else self.truncate,
        )


class ColumnInfo(msgspec.Struct, frozen=True):
    name: str  # lower case
    type_name: str = ""  # as the catalogue reports it ("character varying", "varchar(255)")
    kind: TypeKind = "other"
    attnum: int = 0  # PostgreSQL attribute number (1-based); MySQL ordinal position


class TableInfo(msgspec.Struct, frozen=True):
    name: str  # "schema.table", lower case
    columns: tuple[ColumnInfo, ...] = ()
    oid: int = 0  # PostgreSQL pg_class OID (RowDescription table OID); 0 for MySQL
    view_sql: str = ""  # a view's definition (SELECT ...); "" for tables

    @property
    def is_view(self) -> bool:
        return bool(self.view_sql)


class RoutineInfo(msgspec.Struct, frozen=True):
    """A user-defined function or procedure (PostgreSQL pg_proc outside pg_catalog and
    information_schema; MySQL / MariaDB information_schema.ROUTINES)."""

    name: str  # "schema.routine", lower case
    # "sql", "plpgsql", "c", "internal", "plpython3u", ... (lower case; MySQL: "sql")
    language: str = ""
    # The body (prosrc, ROUTINE_DEFINITION); None when it cannot be read (no privilege, C).
    body: str | None = None
    kind: str = "function"  # "function", "procedure", "aggregate", "window"
    # Installed by an extension (pg_depend deptype 'e'): trusted like a built-in function.
    extension: bool = False


class Catalogue(msgspec.Struct, frozen=True):
    """The schema of one target: tables and views by "schema.table" (lower case), and (when the
    loader read them) user-defined routines by "schema.routine" (overloads together)."""

    tables: dict[str, TableInfo] = {}
    # Schemas searched for unqualified names, in order (PostgreSQL search_path; MySQL: the
    # session's current database is passed separately).
    search_path: tuple[str, ...] = ("public",)
    version: int = 0  # bumped on every refresh
    # User-defined routines; None: not read (calls of unknown functions are then judged as
    # expressions of their arguments, as before routines were catalogued).
    routines: dict[str, tuple[RoutineInfo, ...]] | None = None
    # PostgreSQL: the names of the functions in pg_catalog (the server's built-ins); None: not
    # read. A call of a name that is neither built in nor catalogued is refused under masking.
    builtins: frozenset[str] | None = None

    def routine(self, name: str, default_schema: str = "") -> tuple[RoutineInfo, ...] | None:
        """A routine's overloads by name: qualified, or unqualified through `default_schema`
        then the search path; None when not catalogued (or routines were not read)."""
        if self.routines is None:
            return None
        name = name.lower()
        if "." in name:
            return self.routines.get(name)
        for schema in ((default_schema,) if default_schema else ()) + self.search_path:
            found = self.routines.get(f"{schema.lower()}.{name}")
            if found is not None:
                return found
        return None

    def lookup(self, name: str, default_schema: str = "") -> TableInfo | None:
        """A table or view by name: qualified, or unqualified through `default_schema` then the
        search path."""
        name = name.lower()
        if "." in name:
            return self.tables.get(name)
        for schema in ((default_schema,) if default_schema else ()) + self.search_path:
            found = self.tables.get(f"{schema.lower()}.{name}")
            if found is not None:
                return found
        return None
