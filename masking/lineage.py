"""Column lineage: which stored columns feed each output column of a statement, and which are
used to filter, join, group or order it. `lineage(sql, dialect, catalogue) -> Lineage`.

This is the strongest layer of masking (DESIGN.md section 6): masking by output column *name*
is evaded by an alias, an expression, a CTE or a view; masking by lineage is not, because every
output is traced back to the base-table columns it is computed from, whatever the path.

How it works:

1. **Same lexer as the policy.** The text goes through `policy.sqltext`'s lexer, splitter and
   canonical text, the analyser's (so both agree on statement boundaries, MySQL executable
   comments are unwrapped instead of dropped as comments, string literals become `'?'`),
   fixed-shape statements it recognises (BEGIN, SAVEPOINT, LISTEN, SHOW in postgres, ...) return
   no rows, PostgreSQL EXPLAIN and PREPARE are unwrapped. A MySQL text with versioned comments
   (`/*!50700 ...*/`) is analysed in both readings (with and without them) and the results
   merged. Each statement is parsed with sqlglot (`postgres` or `mysql`).
2. **A scope walk over the sqlglot AST**, written here rather than through
   `sqlglot.optimizer.qualify` (which rewrites the tree, raises on what it does not know and costs
   milliseconds): every SELECT gets a scope holding its FROM relations in order (base tables and
   views from the `Catalogue`, CTEs, derived tables, LATERAL subqueries, VALUES, known
   set-returning functions), the columns produced by USING / NATURAL joins, the `*` expansion of
   the FROM clause, the CTEs visible to it and its enclosing scope (for correlated subqueries).
   A relation's columns carry their lineage: `(name, sources, direct)`; a base column's sources
   are `{"schema.table.column"}` and it is direct.
3. **Expressions are evaluated to (sources, direct).** A column reference resolves through the
   scope chain (qualified by alias or `schema.table`, or bare: merged USING columns first, then
   every relation of the innermost scope that has it, then outer scopes; ORDER BY prefers
   output names, GROUP BY / HAVING fall back to them); an alias, a parenthesis or a scalar
   subquery with one direct output keeps `direct`; anything else (functions, operators, casts,
   CASE, aggregates, window functions, JSON builders) is the union of its children, not direct.
   A bare relation name where no column has that name (`SELECT t FROM customers t`,
   `row_to_json(t)`, `t::text`, `ROW(t.*)`) is a whole-row reference: the sources of all its
   columns, and the table is listed in `whole_rows`.
4. **Whatever decides something the client observes feeds `predicates`** (docs/masking.md: a
   masked value leaves only as a masked output value): WHERE, JOIN ON / USING / NATURAL, GROUP
   BY, HAVING, ORDER BY, DISTINCT ON, window PARTITION BY / ORDER BY (inline and named), LIMIT /
   OFFSET / FETCH, in every query block at any depth (CTEs, derived tables, subqueries, view
   definitions), and everything a subquery in those clauses reads
   (`EXISTS (SELECT 1 FROM customers WHERE email = 'x')`); and anywhere in an expression
   (`_Analyser.observed`, one check per node, on the children's sources already computed):
   comparisons (every sqlglot `Predicate` but EXISTS and IS NULL), CASE / IF / IIF conditions
   and CASE operands, FILTER, WITHIN GROUP and ORDER BY inside aggregates, DISTINCT inside
   aggregates, comparing functions (NULLIF, GREATEST, LEAST, STRCMP, FIELD, ...), divisors,
   window offsets and ntile, the arguments of set-returning and sizing functions (in the select
   list and in FROM); SELECT DISTINCT and UNION [DISTINCT] / INTERSECT / EXCEPT put every
   output column's sources there.
5. **Set operations** merge by position (sources unioned, direct only when every branch is direct
   from the same sources). **Recursive CTEs** are iterated to a fixed point. **Views**
   (`TableInfo.view_sql`) are expanded by analysing their definition with the same machinery,
   once per call, with a cycle guard; a view column's sources are its base sources plus
   `"schema.view.column"` itself, so a rule naming a view column matches too.
6. **Statements:** SELECT / set operations / VALUES / TABLE return rows; INSERT / UPDATE / DELETE
   / MERGE return their RETURNING list over the target table; SELECT ... INTO, SET, DDL, SHOW,
   EXPLAIN (whose inner statement still feeds `predicates` and `tables`), transaction control and
   the like return no rows.
7. **Fail closed.** Whatever cannot be attributed becomes a human reason in `unresolved`, never an
   exception: unknown tables, ambiguous or unknown columns, unknown table functions, `SELECT *`
   over a table missing from the catalogue, user variables, statements sqlglot only knows as
   `exp.Command` or cannot parse, any internal error. `opaque` marks the reasons after which not
   even the set of tables read is known (unparsed text, EXECUTE / FETCH / CALL, a user variable
   read, a function that runs a query given as text, an unknown table function). `copies` lists
   the reasons (also in `unresolved`) that move column values where masking the result cannot
   follow: INSERT ... SELECT, CREATE TABLE ... AS, SELECT ... INTO, CREATE VIEW (over any
   table: a temporary view is invisible to the catalogue), PREPARE, UPDATE SET from other
   columns, assignment to a variable, set_config / pg_notify / large objects / sequences /
   advisory locks / sleeps (`_SINKS`), COPY ... TO, routines whose bodies cannot be read.
8. **Routines.** CREATE FUNCTION / PROCEDURE bodies, unparsed CREATE / ALTER commands (rules,
   triggers, events, SQL-standard bodies) and the catalogued bodies of called routines
   (`Catalogue.routines`) are read by word (`lexical_reads`): the catalogued relations they
   name (views expanded) go to `hidden_reads` with what named them; routines they name are
   judged in turn. A body in a language other than SQL / PL/pgSQL, without a readable
   definition, or running SQL built at run time (EXECUTE, PREPARE, the query runners) is doubt
   and a copy. A call of `pg_temp.f()`, of a qualified function missing from the catalogue,
   or (PostgreSQL, when `Catalogue.builtins` is known) of a name neither built in nor
   catalogued is doubt and a copy too. A catalogue without routine information
   (`routines is None`) leaves calls as expressions of their arguments.

Known limits, by design:

- Routine bodies are read by word, not parsed: a superset of the relations they read, except
  SQL assembled at run time, which is doubt when its keywords are there. MySQL: an unqualified
  name missing from the catalogue is taken as a built-in (built-ins win over stored functions).
- Server error messages are not results: `SELECT email::int` fails with the value in the error
  text. Masking the output cannot stop that; the adapter scrubs error texts for masked
  identities (masked-derived divisors and CASE conditions are predicates here).
- A stale catalogue cannot be detected here: `SELECT *` expands to the catalogued columns; the
  adapter must compare the server's column count with `outputs` and treat a mismatch as doubt.
- The catalogue folds names to lower case, so a quoted PostgreSQL `"Mixed"` resolves to the
  folded `mixed` entry (the catalogue keeps one relation per folded name).
- View definitions count like the user's own SQL: a view filtering on a masked column puts it
  in `predicates` (the view could have been created by the user to probe).
- Names of unaliased expression columns are best effort (positions are authoritative).
- Session state across requests (MySQL USE, PostgreSQL search_path) is the caller's: it passes
  `default_schema` / the catalogue's search path; changes inside one request are followed.

The module is sans-IO and keeps no global mutable state: every call builds its own analyser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

import msgspec
import sqlglot
from sqlglot import exp

from sqlward.masking.model import Catalogue, RoutineInfo, TableInfo
from sqlward.policy.sqltext import (
    VERSIONED_COMMENT,
    Token,
    Unlexable,
    canonical,
    known_shape,
    significant,
    split_statements,
    statement_key,
    tokenize,
    unwrap,
)

__all__ = ["Lineage", "OutputColumn", "lineage", "statement_lineages"]


class OutputColumn(msgspec.Struct, frozen=True):
    """One output column of a statement."""

    # The column name as the client sees it: the alias, or the column name (postgres: lower case
    # unless quoted; mysql: as written). For unaliased expressions a best-effort guess.
    name: str
    # "schema.table.column" of every stored column feeding it (view columns included as well as
    # the base columns under them).
    sources: frozenset[str] = frozenset()
    # True when the value is, row for row, the stored value of its source unchanged (through
    # aliases, CTEs, derived tables, views, UNION branches all direct from the same sources).
    direct: bool = False


class Lineage(msgspec.Struct, frozen=True):
    """Lineage of a statement (or of a whole request, see `lineage`)."""

    outputs: tuple[OutputColumn, ...] = ()
    # Columns used to filter, join, group, order or limit rows, at any nesting level.
    predicates: frozenset[str] = frozenset()
    # Tables and views read as a whole row (`SELECT t`, `row_to_json(t)`, `t::text`, ...).
    whole_rows: tuple[str, ...] = ()
    # Why some lineage could not be resolved (empty: fully resolved).
    unresolved: tuple[str, ...] = ()
    # Every table and view read, through views too; tables missing from the catalogue as written
    # (qualified with the default schema / first search_path schema when unqualified).
    tables: frozenset[str] = frozenset()
    # The reasons of `unresolved` that move column values where masking the output cannot follow
    # (another table, a file, a variable, a setting, a notification, COPY TO).
    copies: tuple[str, ...] = ()
    # Not even the tables read are known (unparsed statement, EXECUTE, FETCH, CALL, user variable
    # read, a function running a query of its own, an unknown table function).
    opaque: bool = False
    # The statement returns a result set (a query, or DML with RETURNING).
    returns_rows: bool = False
    # Reads masking cannot follow into a result: (what, tables) for each routine called or
    # object created whose body may read those tables (a user-defined function's body, a
    # trigger's function, a rule); build_plan refuses when any of them has masked columns.
    hidden_reads: tuple[tuple[str, frozenset[str]], ...] = ()


# ------------------------------------------------------------------------------ internal types


class _Val(NamedTuple):
    sources: frozenset[str]
    direct: bool


class _Col(NamedTuple):
    name: str
    sources: frozenset[str]
    direct: bool


_NONE: Final = frozenset[str]()
_EMPTY: Final = _Val(_NONE, False)


def _union(vals: Iterable[_Val | _Col]) -> frozenset[str]:
    out: set[str] = set()
    for v in vals:
        out |= v.sources
    return frozenset(out)


class _Rel:
    """A relation in a FROM clause."""

    __slots__ = ("alias", "columns", "table", "qualified", "unknown", "whole", "_index", "_folded")

    def __init__(
        self,
        alias: str,
        columns: list[_Col],
        *,
        table: str = "",
        qualified: bool = False,
        unknown: bool = False,
    ) -> None:
        self.alias = alias  # the name it is referred to by ("" when it has none)
        self.columns = columns
        self.table = table  # catalogue name (or guessed name of an unknown table); "" otherwise
        self.qualified = qualified  # also referable as schema.table (a table without alias)
        self.unknown = unknown  # its columns are not known (table missing from the catalogue)
        self._index: dict[str, list[_Col]] | None = None
        self._folded: dict[str, list[_Col]] | None = None

    def find(self, key: str) -> list[_Col]:
        if self._index is None:
            self._index = {}
            self._folded = {}
            for col in self.columns:
                self._index.setdefault(col.name, []).append(col)
                self._folded.setdefault(col.name.lower(), []).append(col)
        found = self._index.get(key)
        if found:
            return found
        assert self._folded is not None
        return self._folded.get(key.lower(), [])


class _Scope:
    """The name space of one query block."""

    __slots__ = ("outer", "ctes", "rels", "merged", "star", "star_unknown")

    def __init__(self, outer: _Scope | None, ctes: dict[str, list[_Col] | None]) -> None:
        self.outer = outer
        self.ctes = ctes  # visible CTEs by name (None: being defined, not yet usable)
        self.rels: list[_Rel] = []
        self.merged: dict[str, _Col] = {}  # USING / NATURAL join columns
        self.star: list[_Col] = []  # what `*` expands to
        self.star_unknown: list[str] = []  # tables missing from the catalogue inside `star`

    def rel(self, name: str, db: str) -> _Rel | None:
        for exact in (True, False):
            for rel in self.rels:
                alias = rel.alias if exact else rel.alias.lower()
                if alias != (name if exact else name.lower()):
                    continue
                if db and not (rel.qualified and rel.table.lower() == f"{db}.{name}".lower()):
                    continue
                return rel
        return None

    def cte(self, name: str) -> tuple[bool, list[_Col] | None]:
        if name in self.ctes:
            return True, self.ctes[name]
        folded = name.lower()
        for key, cols in self.ctes.items():
            if key.lower() == folded:
                return True, cols
        return False, None


# ----------------------------------------------------------------------------- vocabularies

_QUERY_TYPES: Final = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)
_DML_TYPES: Final = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_CONSTANT_TYPES: Final = (
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Placeholder,
    exp.Identifier,
    exp.Var,
    exp.DataType,
    exp.SessionParameter,  # @@system_variable: not user data
    exp.JSONPath,
)
# Bare words sqlglot reads as columns that are SQL keywords / niladic functions.
_KEYWORD_COLUMNS: Final[dict[str, frozenset[str]]] = {
    "postgres": frozenset(
        "user current_user session_user current_role current_catalog current_schema system_user "
        "current_date current_time current_timestamp localtime localtimestamp default".split()
    ),
    "mysql": frozenset(
        "current_user current_date current_time current_timestamp localtime localtimestamp "
        "utc_date utc_time utc_timestamp default".split()
    ),
}
# Built-in set-returning functions that are pure functions of their arguments: safe row sources.
# Value: the names of their output columns; None: one column named after the alias (or the
# function when there is no alias).
_SAFE_ROW_FUNCTIONS: Final[dict[str, tuple[str, ...] | None]] = {
    "generate_series": None,
    "generate_subscripts": None,
    "unnest": None,
    "regexp_split_to_table": None,
    "string_to_table": None,
    "regexp_matches": None,
    "json_object_keys": None,
    "jsonb_object_keys": None,
    "jsonb_path_query": None,
    "json_array_elements": ("value",),
    "jsonb_array_elements": ("value",),
    "json_array_elements_text": ("value",),
    "jsonb_array_elements_text": ("value",),
    "json_each": ("key", "value"),
    "jsonb_each": ("key", "value"),
    "json_each_text": ("key", "value"),
    "jsonb_each_text": ("key", "value"),
}
# Functions that run a query given as text or read a table / file by name: what they read is
# invisible here.
_RUNS_QUERY: Final = frozenset(
    "query_to_xml query_to_xmlschema query_to_xml_and_xmlschema table_to_xml table_to_xmlschema "
    "table_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema schema_to_xml schema_to_xmlschema "
    "schema_to_xml_and_xmlschema database_to_xml database_to_xmlschema database_to_xml_and_xmlschema "
    "dblink dblink_send_query dblink_get_result dblink_fetch ts_stat ts_rewrite pg_read_file "
    "pg_read_binary_file lo_get loread lo_import lo_export load_file".split()
)
# Functions that store or send their arguments somewhere masking does not reach, or turn them
# into time (a sleep whose length depends on a masked value is read with a stopwatch).
_SINKS: Final = frozenset(
    (
        # settings, notifications, messages, files, other servers
        "set_config pg_notify pg_logical_emit_message dblink_exec pg_file_write pg_create_restore_point "
        # large objects
        "lo_from_bytea lo_put lowrite lo_create lo_creat lo_open lo_truncate lo_truncate64 lo_unlink lo_import "
        "lo_export lo_lseek lo_lseek64 lo_seek64 "
        # sequences (a sequence named or advanced by a masked value)
        "setval nextval currval "
        # advisory locks, visible in pg_locks / performance_schema to other sessions
        "pg_advisory_lock pg_advisory_lock_shared pg_advisory_xact_lock pg_advisory_xact_lock_shared "
        "pg_try_advisory_lock pg_try_advisory_lock_shared pg_try_advisory_xact_lock "
        "pg_try_advisory_xact_lock_shared pg_advisory_unlock pg_advisory_unlock_shared "
        "get_lock release_lock is_free_lock is_used_lock "
        # other sessions and the server
        "pg_cancel_backend pg_terminate_backend pg_log_backend_memory_contexts kill "
        # time
        "pg_sleep pg_sleep_for pg_sleep_until sleep benchmark"
    ).split()
)
# Functions whose row count, size or running time is set by an argument: a masked-derived
# argument is read with a row count or a stopwatch (fail closed: any argument counts).
_SIZING: Final = frozenset(
    (
        "generate_series generate_subscripts unnest regexp_split_to_table string_to_table regexp_matches "
        "json_object_keys jsonb_object_keys jsonb_path_query json_array_elements jsonb_array_elements "
        "json_array_elements_text jsonb_array_elements_text json_each jsonb_each json_each_text jsonb_each_text "
        "json_populate_recordset jsonb_populate_recordset json_to_recordset jsonb_to_recordset "
        "jsonb_path_query_array regexp_split_to_array string_to_array array_fill "
        "repeat space lpad rpad pad ntile explode posexplode"
    ).split()
)
# Functions that compare their arguments (by name; sqlglot's typed ones are in _COMPARING).
_COMPARE_FUNCS: Final = frozenset(
    "nullif greatest least strcmp field find_in_set elt interval choose starts_with startswith "
    "regexp_like regexp_instr regexp_substr regexp_count rlike isfinite width_bucket "
    "array_position array_positions ts_match_vq ts_match_tq json_contains json_contains_path json_overlaps "
    "json_search member_of jsonb_path_exists jsonb_path_match similarity word_similarity "
    "strict_word_similarity levenshtein levenshtein_less_equal difference".split()
)
# Words sqlglot reads as function calls that are SQL syntax, not functions of pg_proc.
_SYNTAX_CALLS: Final = frozenset(
    "row values xmlelement xmlforest xmlparse xmlpi xmlroot xmlserialize xmlconcat xmlexists xmlattributes "
    "json_object json_array json_objectagg json_arrayagg json_value json_query json_exists json_table "
    "json_scalar json_serialize json is_json grouping overlay treat normalize collation".split()
)
_COMPARING: Final = (exp.Nullif, exp.Greatest, exp.Least, exp.Elt, exp.StartsWith, exp.Interval)
_DIVISIONS: Final = (exp.Div, exp.Mod, exp.IntDiv)
# Window functions whose arguments after the first are offsets (which row is read).
_OFFSET_WINDOWS: Final = (exp.Lag, exp.Lead, exp.NthValue)
# Routine languages whose bodies are read lexically (names of the tables they mention).
_READABLE_LANGUAGES: Final = frozenset({"sql", "plpgsql"})
_WORD: Final = re.compile(r"[a-z_][a-z0-9_$]*")
# Words of a routine body that run SQL built at run time.
_DYNAMIC_SQL: Final = frozenset({"execute", "prepare"}) | _RUNS_QUERY
_TRIGGER_EXECUTE: Final = re.compile(r"(?i)\bexecute\s+(?:function|procedure)\b")
_SYSTEM_FUNCTION_SCHEMAS: Final = frozenset({"pg_catalog", "information_schema"})
# Statements analysed with their string literals as written (routine bodies, prepared texts).
_KEEPS_LITERALS: Final = frozenset({"CREATE", "ALTER", "PREPARE", "DO"})
# PostgreSQL system columns every table has; they carry no user data.
_PG_SYSTEM_COLUMNS: Final = frozenset("ctid xmin xmax cmin cmax tableoid".split())
# Statements sqlglot only knows as exp.Command that can neither return rows nor move data.
_NO_DATA_COMMANDS: Final[dict[str, frozenset[str]]] = {
    "postgres": frozenset(
        "SET RESET DISCARD DEALLOCATE LISTEN UNLISTEN NOTIFY CHECKPOINT VACUUM SAVEPOINT RELEASE BEGIN "
        "START COMMIT END ROLLBACK ABORT LOCK GRANT REVOKE DROP COMMENT".split()
    ),
    "mysql": frozenset(
        "BEGIN START COMMIT ROLLBACK SAVEPOINT RELEASE LOCK UNLOCK FLUSH USE KILL GRANT REVOKE DROP "
        "DEALLOCATE PREPARE RESET".split()
    ),
}
_NO_DATA_STATEMENTS: Final = (
    exp.Drop,
    exp.Use,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Show,
    exp.Comment,
    exp.Kill,
    exp.TruncateTable,
    exp.Grant,
    exp.Revoke,
    exp.Analyze,
    exp.Pragma,
)
_MAX_VIEW_DEPTH: Final = 16
_MAX_RECURSION_ROUNDS: Final = 12
_SEARCH_PATH = re.compile(r"(?is)^\s*(?:SESSION\s+|LOCAL\s+)?search_path\s*(?:TO|=)\s*(.*)$")


def _func_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        name = node.this
        return (name.name if isinstance(name, exp.Expression) else str(name)).lower()
    if isinstance(node, (exp.ExplodingGenerateSeries, exp.GenerateSeries)):
        return "generate_series"
    if isinstance(node, exp.Unnest):
        return "unnest"
    if isinstance(node, exp.JSONTable):
        return "json_table"
    if isinstance(node, exp.Func):
        try:
            return node.sql_name().lower()
        except Exception:  # a Func subclass without a usable name
            return type(node).__name__.lower()
    return type(node).__name__.lower()


def _merge_cols(a: Sequence[_Col], b: Sequence[_Col]) -> list[_Col]:
    """Position-wise union of two column lists of equal length (set operations, recursion)."""
    return [
        _Col(x.name, x.sources | y.sources, x.direct and y.direct and x.sources == y.sources)
        for x, y in zip(a, b)
    ]


def _rename(cols: list[_Col], names: Sequence[str]) -> list[_Col]:
    if not names:
        return cols
    out = [c._replace(name=n) for c, n in zip(cols, names)]
    return out + cols[len(names) :]


# ----------------------------------------------------------------------------------- analyser


class _Analyser:
    """One statement's lineage. State lives here, per call."""

    def __init__(self, dialect: str, catalogue: Catalogue, default_schema: str) -> None:
        self.dialect = dialect
        self.pg = dialect == "postgres"
        self.catalogue = catalogue
        self.default_schema = default_schema.lower()
        self.predicates: set[str] = set()
        self.whole_rows: dict[str, None] = {}
        self.reasons: dict[str, None] = {}
        self.copies: dict[str, None] = {}
        self.tables: set[str] = set()
        self.opaque = False
        self.returns_rows = False
        self.views: dict[str, list[_Col]] = {}
        self.expanding: list[str] = []
        self.hidden: dict[tuple[str, frozenset[str]], None] = {}
        self.routine_stack: list[str] = []
        self.judged: set[str] = set()  # routines judged already (a body is read once per statement)
        self._relations_by_name: dict[str, list[TableInfo]] | None = None
        self._routines_by_name: dict[str, list[str]] | None = None

    # ---------------------------------------------------------------- bookkeeping

    def reason(self, text: str, *, opaque: bool = False) -> None:
        self.reasons.setdefault(text, None)
        if opaque:
            self.opaque = True

    def copy(self, text: str) -> None:
        self.copies.setdefault(text, None)
        self.reasons.setdefault(text, None)

    def pred(self, val: _Val) -> None:
        self.predicates |= val.sources

    def hide(self, what: str, tables: Iterable[str]) -> None:
        self.hidden.setdefault((what, frozenset(tables)), None)

    def result(self, outputs: Sequence[_Col]) -> Lineage:
        return Lineage(
            outputs=tuple(OutputColumn(c.name, c.sources, c.direct and bool(c.sources)) for c in outputs),
            predicates=frozenset(self.predicates),
            whole_rows=tuple(self.whole_rows),
            unresolved=tuple(self.reasons),
            tables=frozenset(self.tables),
            copies=tuple(self.copies),
            opaque=self.opaque,
            returns_rows=self.returns_rows,
            hidden_reads=tuple(self.hidden),
        )

    # ---------------------------------------------------------------- names

    def norm(self, node: exp.Expression | str | None) -> str:
        """An identifier as the server folds it: postgres keeps quoted case, mysql lowers all."""
        if node is None:
            return ""
        if isinstance(node, str):
            return node.lower()
        if isinstance(node, exp.Identifier):
            text = str(node.this)
            return text if self.pg and node.quoted else text.lower()
        return node.name.lower()

    def shown(self, node: exp.Expression | None) -> str:
        """An identifier as the client sees it in a column header."""
        if node is None:
            return ""
        if self.pg:
            return self.norm(node)
        return str(node.this) if isinstance(node, exp.Identifier) else node.name

    def guess(self, db: str, name: str) -> str:
        if db:
            return f"{db}.{name}"
        if self.pg and name.startswith("pg_"):
            return f"pg_catalog.{name}"  # searched implicitly before the search_path
        schema = self.default_schema or (self.catalogue.search_path[0] if self.catalogue.search_path else "")
        return f"{schema.lower()}.{name}" if schema else name

    def output_name(self, node: exp.Expression) -> str:
        if isinstance(node, exp.Alias):
            return self.shown(node.args.get("alias"))
        if isinstance(node, exp.Column):
            return self.shown(node.this) if not isinstance(node.this, exp.Star) else "*"
        if not self.pg:
            try:
                return node.sql(dialect="mysql")
            except Exception:
                return "?column?"
        return self.pg_name(node) or "?column?"

    def pg_name(self, node: exp.Expression) -> str:
        """PostgreSQL's FigureColname, roughly."""
        if isinstance(node, exp.Column):
            return self.norm(node.this) if not isinstance(node.this, exp.Star) else ""
        if isinstance(node, exp.Paren):
            return self.pg_name(node.this)
        if isinstance(node, exp.Cast):
            inner = self.pg_name(node.this)
            if inner:
                return inner
            to = node.args.get("to")
            return to.sql(dialect="postgres").lower().split("(")[0] if isinstance(to, exp.Expression) else ""
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select) and node.this.expressions:
            first = node.this.expressions[0]
            return self.shown(first.args.get("alias")) if isinstance(first, exp.Alias) else self.pg_name(first)
        if isinstance(node, exp.Case):
            return "case"
        if isinstance(node, exp.Exists):
            return "exists"
        if isinstance(node, exp.Array):
            return "array"
        if isinstance(node, exp.Window):
            return self.pg_name(node.this)
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Identifier):
            return self.norm(node.expression)
        if isinstance(node, exp.Func):
            return _func_name(node)
        return ""

    # ---------------------------------------------------------------- statements

    def statement(self, tree: exp.Expression) -> list[_Col]:
        if isinstance(tree, _QUERY_TYPES):
            outputs = self.query(tree, None, {})
            into = tree.args.get("into") if isinstance(tree, exp.Select) else None
            self.returns_rows = into is None
            return outputs if into is None else []
        if isinstance(tree, _DML_TYPES):
            outputs = self.dml(tree, None, {})
            self.returns_rows = tree.args.get("returning") is not None
            return outputs
        if isinstance(tree, exp.Create):
            self.create(tree)
        elif isinstance(tree, exp.Set):
            self.set_statement(tree)
        elif isinstance(tree, exp.Copy):
            self.copy_statement(tree)
        elif isinstance(tree, exp.Describe):
            inner = tree.this
            if isinstance(inner, (*_QUERY_TYPES, *_DML_TYPES)):  # EXPLAIN <statement>
                style = tree.args.get("style")
                self.explained(inner, executes=bool(style) and "ANALYZE" in str(style).upper())
            # DESCRIBE t: the table's definition, not its rows
        elif isinstance(tree, exp.Alter):
            self.alter(tree)
        elif isinstance(tree, exp.Command):
            keyword = str(tree.this).upper()
            text = tree.expression.name if isinstance(tree.expression, exp.Expression) else str(tree.expression or "")
            if keyword in ("CREATE", "ALTER", "RENAME"):
                self.ddl_command(keyword, text)
            elif keyword == "PREPARE" and not self.pg:
                self.mysql_prepare(text)
            elif keyword not in _NO_DATA_COMMANDS[self.dialect]:
                self.reason(f"statement not understood by the SQL parser ({keyword})", opaque=True)
            elif keyword == "SET" and not self.pg:
                self.reason("SET statement not understood by the SQL parser", opaque=True)
        elif not isinstance(tree, _NO_DATA_STATEMENTS):
            self.reason(f"statement not understood by the SQL parser ({type(tree).__name__})", opaque=True)
        return []

    def ddl_command(self, keyword: str, text: str) -> None:
        """CREATE / ALTER the SQL parser does not know (rules, triggers, events, SQL-standard
        function bodies, ...): what the definition names, by word; a routine in a language that
        cannot be read is doubt."""
        words = text.split(None, 2)
        what = f"runs {keyword} {' '.join(w.upper() for w in words[:1])}".rstrip()
        language = re.search(r"(?i)\blanguage\s+'?\"?([a-z0-9_]+)", text)
        if language is not None and language.group(1).lower() not in ("sql", "plpgsql"):
            self.routine_body(what, "", language.group(1).lower(), None)
            return
        if keyword in ("ALTER", "RENAME"):
            # Masking rules name tables and columns: renaming one (or moving it to another
            # schema) moves its values out of the rule. The tables it names are the ones moved.
            words = set(_WORD.findall(text.lower()))
            if keyword == "RENAME" or "rename" in words or "schema" in words:
                if self.lexical_reads(what, text, dynamic=False, record=False):
                    self.copy("renames a table or column, or moves it to another schema (masking rules follow names)")
                return
        self.lexical_reads(what, _TRIGGER_EXECUTE.sub(" ", text), dynamic=True)

    def mysql_prepare(self, text: str) -> None:
        """MySQL PREPARE name FROM 'text' | @var. The text is a string literal, which the
        statement's shape (the plan cache key) leaves out, and EXECUTE cannot be tied to a mask
        plan: under masking, SQL-level PREPARE is doubt whatever it holds (clients' prepared
        statements, COM_STMT_PREPARE, are analysed as statements)."""
        m = re.match(r"(?is)\s*\S+\s+FROM\s+(.*?)\s*$", text)
        literal = m.group(1) if m else ""
        if len(literal) >= 2 and literal[0] in "'\"" and literal[-1] == literal[0]:
            quote = literal[0]
            inner = literal[1:-1].replace(quote * 2, quote).replace("\\" + quote, quote)
            lin = _combine(statement_lineages(inner, self.dialect, self.catalogue, default_schema=self.default_schema))
            self.prepared(lin)
        self.reason("PREPARE ... FROM: the prepared text is a value the plan cannot be tied to", opaque=True)
        self.copy("prepares a statement from text (PREPARE ... FROM), whose EXECUTE cannot be masked")

    def prepared(self, lin: Lineage) -> None:
        """PREPARE: nothing runs now, and a later EXECUTE is opaque (refused, or every column
        masked under mask_all_on_doubt), so what the prepared statement would be refused for
        counts now: its predicates, copies, hidden reads and whole rows."""
        self.predicates |= lin.predicates
        self.tables |= lin.tables
        for what, tables in lin.hidden_reads:
            self.hide(what, tables)
        for table in lin.whole_rows:
            self.whole_rows.setdefault(table, None)
        for text in lin.copies:
            self.copy(text)
        if lin.opaque:
            for text in lin.unresolved:
                self.reason(text, opaque=True)
            self.copy("prepares a statement (PREPARE) whose reads are not known")

    def explained(self, inner: exp.Expression, *, executes: bool) -> None:
        """EXPLAIN: no rows, but the inner statement's predicates (EXPLAIN ANALYZE runs it, and
        even estimates come from statistics) and tables count; its copies when it runs."""
        reasons, whole, opaque = dict(self.reasons), dict(self.whole_rows), self.opaque
        copies = dict(self.copies)
        if isinstance(inner, _DML_TYPES):
            self.dml(inner, None, {})
        else:
            self.query(inner, None, {})
        if executes and self.opaque:  # it runs, and what it reads is unknown: keep the doubt
            return
        if not executes:
            self.copies = copies
        self.reasons = reasons
        self.reasons.update(self.copies)
        self.whole_rows, self.opaque = whole, opaque

    def create(self, tree: exp.Create) -> None:
        kind = str(tree.args.get("kind") or "").upper()
        if kind in ("FUNCTION", "PROCEDURE"):
            self.create_routine(tree, kind.lower())
            return
        if kind == "TRIGGER":
            for call in tree.find_all(exp.TriggerExecute):
                func = call.this
                if isinstance(func, exp.Dot) and isinstance(func.expression, exp.Func):
                    schema = self.norm(func.this) if isinstance(func.this, exp.Identifier) else ""
                    self.call(_func_name(func.expression), schema, qualified=True, always=True)
                elif isinstance(func, exp.Func):
                    self.call(_func_name(func), "", qualified=False, always=True)
            return
        if kind == "INDEX" and isinstance(tree.this, exp.Index) and isinstance(tree.this.args.get("table"), exp.Table):
            self.stored_values(tree.this.args["table"], [tree.this])
            return
        body = tree.args.get("expression")
        if not isinstance(body, (*_QUERY_TYPES, *_DML_TYPES)):
            return
        materialized = bool(tree.args.get("materialized")) or tree.find(exp.MaterializedProperty) is not None
        before = set(self.tables)
        cols = self.query(body, None, {}) if isinstance(body, _QUERY_TYPES) else self.dml(body, None, {})
        if kind == "VIEW" and not materialized:
            # A view stores the query, not rows, but a temporary view (or one created in an open
            # transaction) is invisible to the catalogue, which is read on another connection,
            # and may shadow a table: a view over tables with masked columns is refused at
            # creation (see docs/masking.md).
            if self.tables - before or _union(cols):
                self.copy("creates a view over the tables it reads (CREATE VIEW), which the catalogue may not see")
            return
        if _union(cols):
            self.copy("copies rows into another table (CREATE ... AS)")

    def create_routine(self, tree: exp.Create, kind: str) -> None:
        """CREATE FUNCTION / PROCEDURE: what the body may read (lexically), refused later when it
        reads a masked table; a language that cannot be read, or SQL built at run time, is doubt."""
        name_node = tree.this.this if isinstance(tree.this, exp.UserDefinedFunction) else tree.this
        name = name_node.sql(dialect=self.dialect) if isinstance(name_node, exp.Expression) else "?"
        language = "sql"
        for prop in tree.find_all(exp.LanguageProperty):
            language = self.norm(prop.this) if isinstance(prop.this, exp.Expression) else str(prop.this).lower()
        body_node = tree.args.get("expression")
        if isinstance(body_node, (exp.Heredoc, exp.Literal)):
            body = str(body_node.this)
        elif isinstance(body_node, exp.Expression):
            body = body_node.sql(dialect=self.dialect)
        else:
            body = tree.sql(dialect=self.dialect)
        self.routine_body(f"creates {kind} {name}", name.lower(), language, body)

    def routine_body(self, what: str, name: str, language: str, body: str | None, *, extension: bool = False) -> None:
        """Record what a routine's body may read (`hidden_reads`), or doubt when it cannot be
        read: not SQL / PL/pgSQL (MySQL routines are SQL), no definition, SQL built at run time."""
        if extension:
            return  # installed by an extension: trusted like the built-ins (query runners excepted by name)
        readable = self.pg and language in _READABLE_LANGUAGES or not self.pg and language in ("sql", "")
        if body is None or not readable:
            why = "its body cannot be read" if body is None else f"it is written in {language or 'an unknown language'}"
            self.reason(f"{what}, and {why}", opaque=True)
            self.copy(f"{what}, whose body masking cannot follow")
            return
        self.lexical_reads(what, body, dynamic=True)

    def lexical_reads(self, what: str, text: str, *, dynamic: bool, record: bool = True) -> set[str]:
        """The catalogued relations (views expanded to their tables) and routines a text names,
        by word, wherever the word sits (identifiers, strings, comments): a superset of what
        the text reads, for bodies that are not analysed as queries."""
        words = set(_WORD.findall(text.lower()))
        if dynamic and words & _DYNAMIC_SQL:
            found = sorted(words & _DYNAMIC_SQL)[0]
            self.reason(f"{what}, which runs SQL built at run time ({found})", opaque=True)
            self.copy(f"{what}, whose body runs SQL built at run time")
            return set()
        if self._relations_by_name is None:
            self._relations_by_name = {}
            for info in self.catalogue.tables.values():
                self._relations_by_name.setdefault(info.name.rsplit(".", 1)[-1], []).append(info)
        tables: set[str] = set()
        for word in words:
            for info in self._relations_by_name.get(word, ()):
                tables.add(info.name)
                if info.is_view:
                    for col in self.view(info):
                        tables.update(source.rsplit(".", 1)[0] for source in col.sources)
        self.tables |= tables
        if not record:
            return tables
        if tables:
            self.hide(what, tables)
        if self.catalogue.routines:
            if self._routines_by_name is None:
                self._routines_by_name = {}
                for key in self.catalogue.routines:
                    self._routines_by_name.setdefault(key.rsplit(".", 1)[-1], []).append(key)
            for word in sorted(words):
                for key in self._routines_by_name.get(word, ()):
                    self.check_routine(key, self.catalogue.routines[key])
        return tables

    def call(self, name: str, schema: str, *, qualified: bool, always: bool = False) -> None:
        """A call of a function by name: a catalogued routine's body is judged; a function of
        the session's pg_temp, or one neither built in nor catalogued, is doubt (see docs)."""
        cat = self.catalogue
        if self.pg and schema in _SYSTEM_FUNCTION_SCHEMAS:
            return
        shown = f"{schema}.{name}" if schema else name
        if self.pg and (schema == "pg_temp" or schema.startswith("pg_temp_")):
            self.reason(f"calls {shown}(), a function of this session that the catalogue cannot see", opaque=True)
            self.copy(f"calls {shown}(), a function of this session whose body masking cannot follow")
            return
        if cat.routines is None and not (always or qualified and cat.builtins is not None):
            return
        found = cat.routine(shown, self.default_schema)
        if found is None:
            known = not qualified and (
                name in _SYNTAX_CALLS
                or (self.pg and cat.builtins is not None and name in cat.builtins)
                or (self.pg and cat.builtins is None)
                or not self.pg  # MySQL: built-in functions win over stored ones of the same name
            )
            if not known:
                self.reason(f"calls {shown}(), which is neither built in nor in the catalogue", opaque=True)
                self.copy(f"calls {shown}(), which is neither built in nor in the catalogue")
            return
        key = found[0].name
        self.check_routine(key, found)

    def check_routine(self, key: str, overloads: Sequence[RoutineInfo]) -> None:
        if key in self.judged or len(self.routine_stack) >= _MAX_VIEW_DEPTH:
            return  # judged already (recursion included: the first visit judges it)
        self.judged.add(key)
        self.routine_stack.append(key)
        try:
            for routine in overloads:
                self.routine_body(
                    f"calls {routine.name}()", routine.name, routine.language, routine.body, extension=routine.extension
                )
        finally:
            self.routine_stack.pop()

    def set_statement(self, tree: exp.Set) -> None:
        scope = _Scope(None, {})
        for item in tree.expressions:
            target = item.this if isinstance(item, exp.SetItem) else item
            value = target.args.get("expression") if isinstance(target, (exp.EQ, exp.PropertyEQ)) else None
            if not isinstance(value, exp.Expression):
                continue
            if value.find(exp.Select, exp.Parameter) is None:
                continue  # a literal, a keyword or a name: reads no table
            if self.expr(value, scope).sources:
                self.copy("assigns column values to a variable (SET)")

    def copy_statement(self, tree: exp.Copy) -> None:
        if tree.args.get("kind"):  # COPY ... FROM: a write, nothing read
            return
        source = tree.this
        scope = _Scope(None, {})
        if isinstance(source, exp.Table):
            self.add_from(scope, source)
            sources = _union(scope.star)
        elif isinstance(source, exp.Expression):
            sources = _union(self.query(source, None, {}))
        else:
            sources = _NONE
        if sources or scope.star_unknown:
            self.copy("COPY ... TO sends rows outside result sets, where masking does not apply")

    def stored_values(self, table: exp.Table, parts: Sequence[exp.Expression]) -> None:
        """DDL that evaluates the stored values of a table (an index, a constraint, a type change,
        a generated column): whether it succeeds (a unique index, a CHECK, a cast) depends on
        them, so the columns it names are predicates."""
        scope = _Scope(None, {})
        self.add_from(scope, table)
        rel = scope.rels[0] if scope.rels else None
        for part in parts:
            for col in part.find_all(exp.Column):
                self.pred(self.expr(col, scope))
            if rel is None:
                continue
            # column names written as identifiers: UNIQUE (email), PRIMARY KEY, ALTER COLUMN
            # email TYPE ..., MODIFY email ... (a type change converts each value)
            for ident in part.find_all(exp.Identifier):
                if not isinstance(ident.parent, exp.Column):
                    for col in rel.find(self.norm(ident)):
                        self.predicates |= col.sources

    def alter(self, tree: exp.Alter) -> None:
        renames = [a for a in tree.args.get("actions") or () if "Rename" in type(a).__name__]
        changes = [  # MySQL CHANGE [COLUMN] old new type
            a for a in tree.args.get("actions") or () if a.args.get("rename_from") is not None
        ]
        if renames or changes or tree.find(exp.RenameColumn) is not None:
            # Masking rules name tables and columns: renaming one moves its values out of the rule.
            if isinstance(tree.this, exp.Table):
                self.add_from(_Scope(None, {}), tree.this)
            self.copy("renames a table or column (masking rules follow names)")
        if isinstance(tree.this, exp.Table):
            self.stored_values(tree.this, [a for a in tree.args.get("actions") or () if not isinstance(a, exp.Drop)])
        computed = False
        for node in tree.find_all(exp.AlterColumn, exp.ComputedColumnConstraint):
            part = node.args.get("using") if isinstance(node, exp.AlterColumn) else node.this
            if isinstance(part, exp.Expression) and part.find(exp.Column) is not None:
                computed = True
        if computed:
            table = tree.this
            if isinstance(table, exp.Table):
                self.add_from(_Scope(None, {}), table)
            self.copy("computes a stored column from other columns (ALTER TABLE ... USING / GENERATED)")

    # ---------------------------------------------------------------- queries

    def query(self, node: exp.Expression, outer: _Scope | None, ctes: dict[str, list[_Col] | None]) -> list[_Col]:
        if isinstance(node, exp.Select):
            return self.select(node, outer, ctes)
        if isinstance(node, exp.SetOperation):
            return self.set_operation(node, outer, ctes)
        if isinstance(node, exp.Subquery):
            inner = node.this
            ctes = self.with_(node, outer, ctes)
            if not isinstance(inner, (*_QUERY_TYPES, *_DML_TYPES)):
                self.reason(f"unexpected subquery body {type(inner).__name__}")
                return []
            cols = self.query(inner, outer, ctes) if isinstance(inner, _QUERY_TYPES) else self.dml(inner, outer, ctes)
            self.order_limit(node, _Scope(outer, ctes), cols)
            return cols
        if isinstance(node, exp.Values):
            return self.values(node, outer, ctes)
        if isinstance(node, _DML_TYPES):
            return self.dml(node, outer, ctes)
        self.reason(f"unexpected query node {type(node).__name__}")
        return []

    def with_(
        self, node: exp.Expression, outer: _Scope | None, ctes: dict[str, list[_Col] | None]
    ) -> dict[str, list[_Col] | None]:
        with_ = node.args.get("with_") or node.args.get("with")
        if not isinstance(with_, exp.With):
            return ctes
        visible = dict(ctes)
        recursive = bool(with_.args.get("recursive"))
        for cte in with_.expressions:
            alias = cte.args.get("alias")
            name = self.norm(alias.this) if isinstance(alias, exp.TableAlias) else ""
            names = [self.norm(c) for c in alias.columns] if isinstance(alias, exp.TableAlias) else []
            body = cte.this
            if recursive and self.refers_to(body, name):
                visible[name] = self.recursive_cte(name, names, body, outer, visible)
            else:
                cols = self.query(body, outer, visible) if isinstance(body, exp.Expression) else []
                visible[name] = _rename(cols, names)
        return visible

    def refers_to(self, body: exp.Expression, name: str) -> bool:
        for table in body.find_all(exp.Table):
            if isinstance(table.this, exp.Identifier) and not table.args.get("db") and self.norm(table.this) == name:
                return True
        return False

    def recursive_cte(
        self,
        name: str,
        names: list[str],
        body: exp.Expression,
        outer: _Scope | None,
        visible: dict[str, list[_Col] | None],
    ) -> list[_Col]:
        anchor = body
        while isinstance(anchor, exp.SetOperation):
            anchor = anchor.this
        visible[name] = None
        cols = _rename(self.query(anchor, outer, visible), names)
        for _ in range(_MAX_RECURSION_ROUNDS):
            visible[name] = cols
            again = _rename(self.query(body, outer, visible), names)
            if len(again) != len(cols):
                self.reason(f"recursive CTE {name}: branches have different column counts")
                return cols
            merged = _merge_cols(cols, again)
            if merged == cols:
                return cols
            cols = merged
        self.reason(f"recursive CTE {name}: lineage did not converge")
        return [c._replace(direct=False) for c in cols]

    def select(self, node: exp.Select, outer: _Scope | None, ctes: dict[str, list[_Col] | None]) -> list[_Col]:
        ctes = self.with_(node, outer, ctes)
        scope = _Scope(outer, ctes)
        from_ = node.args.get("from_") or node.args.get("from")
        if isinstance(from_, exp.From):
            self.add_from(scope, from_.this)
        for join in node.args.get("joins") or ():
            self.add_join(scope, join)
        outputs = self.select_list(node.expressions, scope)

        aliases = self.alias_map(outputs)
        where = node.args.get("where")
        if isinstance(where, exp.Where):
            self.pred(self.expr(where.this, scope))
        group = node.args.get("group")
        if isinstance(group, exp.Group):
            for key, value in group.args.items():
                for item in value if isinstance(value, list) else [value]:
                    if not isinstance(item, exp.Expression):
                        continue
                    if key == "expressions":
                        self.pred(self.by_item(item, scope, outputs, aliases, prefer_output=False))
                    else:
                        self.pred(self.expr(item, scope, aliases))
        having = node.args.get("having")
        if isinstance(having, exp.Having):
            self.pred(self.expr(having.this, scope, aliases))
        qualify = node.args.get("qualify")
        if isinstance(qualify, exp.Qualify):
            self.pred(self.expr(qualify.this, scope, aliases))
        distinct = node.args.get("distinct")
        if isinstance(distinct, exp.Distinct) and isinstance(distinct.args.get("on"), exp.Expression):
            self.pred(self.expr(distinct.args["on"], scope, aliases))
        elif isinstance(distinct, exp.Distinct):  # SELECT DISTINCT compares the output rows
            for col in outputs:
                self.predicates |= col.sources
        for window in node.args.get("windows") or ():
            self.pred(self.expr(window, scope))
        self.order_limit(node, scope, outputs, aliases)

        into = node.args.get("into")
        if isinstance(into, exp.Into) and _union(outputs):
            target = into.this.this if isinstance(into.this, exp.Table) else into.this
            if isinstance(target, exp.Parameter) or into.find(exp.Parameter) is not None:
                self.copy("assigns column values to a user variable (SELECT ... INTO @var)")
            else:
                self.copy("copies rows into another table (SELECT ... INTO)")
        return outputs

    def alias_map(self, outputs: Sequence[_Col]) -> dict[str, _Val]:
        aliases: dict[str, _Val] = {}
        for col in outputs:
            key = col.name if self.pg else col.name.lower()
            if key in aliases:  # duplicate output names: referring to one is ambiguous
                prior = aliases[key]
                aliases[key] = _Val(prior.sources | col.sources, False)
            else:
                aliases[key] = _Val(col.sources, col.direct)
        return aliases

    def order_limit(
        self, node: exp.Expression, scope: _Scope, outputs: Sequence[_Col], aliases: dict[str, _Val] | None = None
    ) -> None:
        if aliases is None:
            aliases = self.alias_map(outputs)
        order = node.args.get("order")
        if isinstance(order, exp.Order):
            for item in order.expressions:
                target = item.this if isinstance(item, exp.Ordered) else item
                self.pred(self.by_item(target, scope, outputs, aliases, prefer_output=True))
        for key in ("limit", "offset", "fetch"):
            part = node.args.get(key)
            if isinstance(part, exp.Expression):
                self.pred(self.expr(part, scope))

    def by_item(
        self,
        item: exp.Expression,
        scope: _Scope,
        outputs: Sequence[_Col],
        aliases: dict[str, _Val],
        *,
        prefer_output: bool,
    ) -> _Val:
        """An ORDER BY / GROUP BY item: an ordinal, an output name or an expression."""
        if isinstance(item, exp.Literal) and not item.is_string and item.name.isdigit():
            index = int(item.name) - 1
            if 0 <= index < len(outputs):
                return _Val(outputs[index].sources, outputs[index].direct)
            self.reason(f"position {item.name} is not in the select list")
            return _EMPTY
        if prefer_output and isinstance(item, exp.Column) and not item.args.get("table"):
            if not isinstance(item.this, exp.Star):
                key = self.norm(item.this)
                if key in aliases:
                    return aliases[key]
        return self.expr(item, scope, aliases)

    def set_operation(
        self, node: exp.SetOperation, outer: _Scope | None, ctes: dict[str, list[_Col] | None]
    ) -> list[_Col]:
        ctes = self.with_(node, outer, ctes)
        left = self.query(node.this, outer, ctes)
        right = self.query(node.expression, outer, ctes)
        if len(left) != len(right):
            self.reason("set operation branches have different column counts")
            longest = max(len(left), len(right))
            pad = _Col("?column?", _union([*left, *right]), False)
            left = left + [pad] * (longest - len(left))
            right = right + [pad] * (longest - len(right))
        cols = _merge_cols(left, right)
        if not isinstance(node, exp.Union) or node.args.get("distinct") is not False:
            # INTERSECT, EXCEPT (ALL or not) and UNION [DISTINCT] compare whole rows
            for col in cols:
                self.predicates |= col.sources
        scope = _Scope(outer, ctes)
        scope.rels.append(_Rel("", cols))
        self.order_limit(node, scope, cols)
        return cols

    def values(self, node: exp.Values, outer: _Scope | None, ctes: dict[str, list[_Col] | None]) -> list[_Col]:
        scope = _Scope(outer, ctes)
        columns: list[set[str]] = []
        for row in node.expressions:
            items: list[exp.Expression]
            if isinstance(row, exp.Tuple):
                items = list(row.expressions)
                if len(items) == 1 and isinstance(items[0], exp.Anonymous) and _func_name(items[0]) == "row":
                    items = list(items[0].expressions)  # MySQL VALUES ROW(...)
            elif isinstance(row, exp.Anonymous) and _func_name(row) == "row":
                items = list(row.expressions)
            else:
                items = [row]
            while len(columns) < len(items):
                columns.append(set())
            for i, item in enumerate(items):
                columns[i] |= self.expr(item, scope).sources
        if self.pg:
            names = [f"column{i + 1}" for i in range(len(columns))]
        else:
            names = [f"column_{i}" for i in range(len(columns))]
        return [_Col(n, frozenset(s), False) for n, s in zip(names, columns)]

    def select_list(self, items: Iterable[exp.Expression], scope: _Scope) -> list[_Col]:
        outputs: list[_Col] = []
        for item in items:
            if isinstance(item, exp.Star):
                outputs.extend(self.star(scope))
            elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                outputs.extend(self.table_star(item, scope))
            else:
                val = self.expr(item, scope)
                outputs.append(_Col(self.output_name(item), val.sources, val.direct))
        return outputs

    def star(self, scope: _Scope) -> list[_Col]:
        for name in scope.star_unknown:
            self.reason(f"SELECT * over {name}, which is not in the catalogue")
        if not scope.rels:
            self.reason("SELECT * without a FROM clause")
        return list(scope.star)

    def table_star(self, col: exp.Column, scope: _Scope) -> list[_Col]:
        rel = self.find_rel(col, scope)
        if rel is None:
            self.reason(f"{col.sql(dialect=self.dialect)}: no such table or alias in scope")
            return []
        if rel.unknown:
            self.reason(f"SELECT {rel.alias}.* over {rel.table or rel.alias}, which is not in the catalogue")
        return list(rel.columns)

    def find_rel(self, col: exp.Column, scope: _Scope | None) -> _Rel | None:
        table = self.norm(col.args.get("table"))
        db = self.norm(col.args.get("db"))
        while scope is not None:
            rel = scope.rel(table, db)
            if rel is not None:
                return rel
            scope = scope.outer
        return None

    # ---------------------------------------------------------------- FROM

    def add_from(self, scope: _Scope, node: exp.Expression) -> None:
        rels, star = self.source(node, scope)
        scope.rels.extend(rels)
        scope.star.extend(star)
        if isinstance(node, exp.Table):
            for join in node.args.get("joins") or ():  # MySQL UPDATE a JOIN b, nested joins
                self.add_join(scope, join)

    def add_join(self, scope: _Scope, join: exp.Join) -> None:
        node = join.this
        rels, star = self.source(node, scope)
        using = join.args.get("using")
        natural = str(join.args.get("method") or "").upper() == "NATURAL"
        if using or natural:
            names = [self.norm(u) for u in using] if using else []
            right_names = {c.name for c in star}
            if natural:
                names = [c.name for c in scope.star if c.name in right_names and c.name != "*"]
            merged: list[_Col] = []
            for name in dict.fromkeys(names):
                left = [c for c in scope.star if c.name == name]
                right = [c for c in star if c.name == name]
                if not left or not right:
                    self.reason(f"join column {name} not found on both sides")
                pieces = left[:1] + right[:1]
                col = _Col(
                    name,
                    _union(pieces),
                    len(pieces) == 2 and all(p.direct for p in pieces) and pieces[0].sources == pieces[1].sources,
                )
                merged.append(col)
                scope.merged[name] = col
                self.predicates |= col.sources
            drop = set(names)
            scope.star = merged + [c for c in scope.star if c.name not in drop] + [c for c in star if c.name not in drop]
        else:
            scope.star.extend(star)
        scope.rels.extend(rels)
        if isinstance(node, exp.Table):
            for inner in node.args.get("joins") or ():
                self.add_join(scope, inner)
        on = join.args.get("on")
        if isinstance(on, exp.Expression):
            self.pred(self.expr(on, scope))

    def source(self, node: exp.Expression, scope: _Scope) -> tuple[list[_Rel], list[_Col]]:
        """The relations a FROM item brings into scope, and its `*` columns."""
        alias_node = node.args.get("alias")
        alias = ""
        names: list[str] = []
        if isinstance(alias_node, exp.TableAlias):
            alias = self.norm(alias_node.this) if alias_node.this else ""
            names = [self.norm(c.this if isinstance(c, exp.ColumnDef) else c) for c in alias_node.columns]
        if isinstance(node, exp.Table):
            rows_from = node.args.get("rows_from")
            if rows_from:
                calls = [t.this for t in rows_from if isinstance(t, exp.Table) and isinstance(t.this, exp.Expression)]
                return self.function_source(calls, scope, alias, names, ordinality=bool(node.args.get("ordinality")))
            if not isinstance(node.this, exp.Identifier):
                return self.function_source([node.this], scope, alias, names, ordinality=bool(node.args.get("ordinality")))
            rel = self.table(node, scope, alias, names)
            if rel.unknown:
                scope.star_unknown.append(rel.table)
                return [rel], [_Col("*", _NONE, False)]
            return [rel], list(rel.columns)
        if isinstance(node, exp.Subquery) and not isinstance(node.this, (*_QUERY_TYPES, *_DML_TYPES)):
            # a parenthesised join: (a JOIN b ON ...) [AS j]
            inner = _Scope(scope.outer, scope.ctes)
            inner.rels = list(scope.rels)  # lateral visibility of what precedes it
            before = len(inner.rels)
            if isinstance(node.this, exp.Expression):
                self.add_from(inner, node.this)
            added = inner.rels[before:]
            scope.star_unknown.extend(inner.star_unknown)
            if alias:
                return [_Rel(alias, _rename(inner.star, names))], _rename(inner.star, names)
            scope.merged.update(inner.merged)
            return added, inner.star
        if isinstance(node, exp.Lateral):
            body = node.this
            if isinstance(body, (exp.Subquery, *_QUERY_TYPES)):
                cols = _rename(self.query(body, scope, scope.ctes), names)
                return [_Rel(alias, cols)], cols
            if isinstance(body, exp.Expression):
                return self.function_source([body], scope, alias, names, ordinality=bool(node.args.get("ordinality")))
        if isinstance(node, (exp.Subquery, exp.Values)):
            cols = _rename(self.query(node, scope, scope.ctes), names)
            return [_Rel(alias, cols)], cols
        if isinstance(node, exp.Unnest):
            offset = node.args.get("offset")  # WITH ORDINALITY: sqlglot keeps its column name here
            if isinstance(offset, exp.Identifier):
                names = names + [self.norm(offset)]
            return self.function_source([node], scope, alias, names, ordinality=offset is not None)
        self.reason(f"unsupported FROM item {type(node).__name__}", opaque=True)
        rel = _Rel(alias, [], unknown=True)
        return [rel], []

    def table(self, node: exp.Table, scope: _Scope, alias: str, names: list[str]) -> _Rel:
        name = self.norm(node.this)
        db = self.norm(node.args.get("db"))
        if not db:
            found, cte_cols = scope.cte(name)
            if found:
                if cte_cols is None:
                    self.reason(f"CTE {name} is used before its definition is known")
                    cte_cols = []
                return _Rel(alias or name, _rename(list(cte_cols), names))
        info = self.catalogue.lookup(f"{db}.{name}" if db else name, self.default_schema)
        if info is None and not self.pg and not db and name == "dual":
            return _Rel("", [])  # MySQL's FROM DUAL: no table
        if info is None:
            guessed = self.guess(db, name).lower()
            self.tables.add(guessed)
            self.reason(f"table {guessed} is not in the catalogue")
            return _Rel(alias or name, [], table=guessed, qualified=not alias, unknown=True)
        self.tables.add(info.name)
        if info.is_view:
            cols = self.view(info)
        else:
            cols = [_Col(c.name, frozenset((f"{info.name}.{c.name}",)), True) for c in info.columns]
        return _Rel(alias or name, _rename(cols, names), table=info.name, qualified=not alias)

    def view(self, info: TableInfo) -> list[_Col]:
        cached = self.views.get(info.name)
        if cached is not None:
            return cached
        declared = [c.name for c in info.columns]
        if info.name in self.expanding or len(self.expanding) >= _MAX_VIEW_DEPTH:
            self.reason(f"view {info.name} refers to itself (or views nest too deeply)")
            return [_Col(n, frozenset((f"{info.name}.{n}",)), False) for n in declared]
        self.expanding.append(info.name)
        saved_schema = self.default_schema
        self.default_schema = "" if self.pg else info.name.split(".", 1)[0]
        cols: list[_Col] = []
        try:
            tree = _parse_one(info.view_sql, self.dialect)
            if tree is None or not isinstance(tree, _QUERY_TYPES):
                self.reason(f"view {info.name}: definition is not a query that can be analysed")
            else:
                cols = self.query(tree, None, {})
        except Exception as err:  # fail closed, below
            self.reason(f"view {info.name}: definition could not be analysed ({_error_text(err)})")
        finally:
            self.default_schema = saved_schema
            self.expanding.pop()
        if declared and len(cols) != len(declared):
            if cols:
                self.reason(f"view {info.name}: definition has {len(cols)} columns, the catalogue {len(declared)}")
            everything = _union(cols)
            cols = [_Col(n, everything, False) for n in declared]
        elif declared:
            cols = _rename(cols, declared)
        cols = [c._replace(sources=c.sources | {f"{info.name}.{c.name}"}) for c in cols]
        self.views[info.name] = cols
        return cols

    def function_source(
        self,
        calls: list[exp.Expression],
        scope: _Scope,
        alias: str,
        names: list[str],
        *,
        ordinality: bool = False,
    ) -> tuple[list[_Rel], list[_Col]]:
        """A function in FROM: a known pure set-returning function is a relation whose columns
        come from its arguments; any other function is an opaque row source."""
        cols: list[_Col] = []
        for call in calls:
            fname = _func_name(call)
            sources = self.expr(call, scope).sources
            self.predicates |= sources  # the arguments of a row source decide how many rows it yields
            if isinstance(call, exp.JSONTable):
                defs = [self.norm(d.this) for d in call.find_all(exp.JSONColumnDef) if d.this is not None]
                cols.extend(_Col(n, sources, False) for n in defs)
                continue
            if fname not in _SAFE_ROW_FUNCTIONS:
                self.reason(f"table function {fname}() is not a known row source", opaque=True)
                scope.star_unknown.append(f"{fname}()")
                return [_Rel(alias or fname, [], unknown=True)], [_Col("*", sources, False)]
            declared = _SAFE_ROW_FUNCTIONS[fname]
            if declared is not None:
                cols.extend(_Col(n, sources, False) for n in declared)
            elif fname == "unnest" and isinstance(call, exp.Unnest) and len(call.expressions) > 1:
                cols.extend(_Col("unnest", sources, False) for _ in call.expressions)
            else:
                cols.append(_Col(alias if alias and len(calls) == 1 else fname, sources, False))
        if ordinality:
            cols.append(_Col("ordinality", _NONE, False))
        cols = _rename(cols, names)
        return [_Rel(alias or (_func_name(calls[0]) if len(calls) == 1 else ""), cols)], cols

    # ---------------------------------------------------------------- DML

    def dml(self, node: exp.Expression, outer: _Scope | None, ctes: dict[str, list[_Col] | None]) -> list[_Col]:
        ctes = self.with_(node, outer, ctes)
        scope = _Scope(outer, ctes)
        returning = node.args.get("returning")
        if isinstance(node, exp.Insert):
            target = node.this.this if isinstance(node.this, exp.Schema) else node.this
            body = node.args.get("expression")
            copied = _NONE
            if isinstance(body, _QUERY_TYPES):
                copied = _union(self.query(body, outer, ctes))
                if copied:
                    self.copy("copies rows into another table (INSERT ... SELECT)")
            conflict = node.args.get("conflict")
            if returning is not None or conflict is not None:
                if isinstance(target, exp.Table):
                    self.add_from(scope, target)
                if isinstance(conflict, exp.OnConflict):
                    # postgres EXCLUDED.col: the row proposed for insertion (qualified only, so it
                    # sits in an enclosing scope); mysql VALUES(col) reads the target's name.
                    target_rel = scope.rels[0] if scope.rels else None
                    excluded = _Scope(outer, ctes)
                    if self.pg and target_rel is not None:
                        cols = [_Col(c.name, copied, False) for c in target_rel.columns]
                        excluded.rels.append(_Rel("excluded", cols, unknown=target_rel.unknown))
                    update = _Scope(excluded, ctes)
                    update.rels = scope.rels
                    for key in conflict.args.get("conflict_keys") or ():  # compared with the stored rows
                        if isinstance(key, exp.Expression):
                            self.pred(self.expr(key, update))
                    self.assignments(conflict.expressions, update, "INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE")
                    where = conflict.args.get("where")
                    if isinstance(where, exp.Expression):
                        self.pred(self.expr(where, update))
        elif isinstance(node, exp.Update):
            if isinstance(node.this, exp.Expression):
                self.add_from(scope, node.this)
            from_ = node.args.get("from_") or node.args.get("from")
            if isinstance(from_, exp.From):
                self.add_from(scope, from_.this)
            for join in node.args.get("joins") or ():
                self.add_join(scope, join)
            self.assignments(node.expressions, scope, "UPDATE ... SET")
            self.clauses(node, scope)
        elif isinstance(node, exp.Delete):
            if isinstance(node.this, exp.Expression):
                self.add_from(scope, node.this)
            for item in node.args.get("using") or ():
                self.add_from(scope, item)
            self.clauses(node, scope)
        elif isinstance(node, exp.Merge):
            if isinstance(node.this, exp.Expression):
                self.add_from(scope, node.this)
            using = node.args.get("using")
            if isinstance(using, exp.Expression):
                self.add_from(scope, using)
            on = node.args.get("on")
            if isinstance(on, exp.Expression):
                self.pred(self.expr(on, scope))
            whens = node.args.get("whens")
            for when in whens.expressions if isinstance(whens, exp.Whens) else []:
                condition = when.args.get("condition")
                if isinstance(condition, exp.Expression):
                    self.pred(self.expr(condition, scope))
                then = when.args.get("then")
                if isinstance(then, exp.Update):
                    self.assignments(then.expressions, scope, "MERGE ... UPDATE SET")
                elif isinstance(then, exp.Insert) and isinstance(then.args.get("expression"), exp.Expression):
                    if self.expr(then.args["expression"], scope).sources:
                        self.copy("copies column values into a table (MERGE ... INSERT)")
        if isinstance(returning, exp.Returning):
            return self.select_list(returning.expressions, scope)
        return []

    def assignments(self, items: Iterable[exp.Expression], scope: _Scope, what: str) -> None:
        for item in items:
            if not isinstance(item, exp.EQ):
                if self.expr(item, scope).sources:
                    self.copy(f"copies column values into a table ({what})")
                continue
            target = self.expr(item.this, scope)
            value = self.expr(item.expression, scope)
            if value.sources - target.sources:
                self.copy(f"copies column values into a table ({what})")

    def clauses(self, node: exp.Expression, scope: _Scope) -> None:
        where = node.args.get("where")
        if isinstance(where, exp.Where):
            self.pred(self.expr(where.this, scope))
        self.order_limit(node, scope, [])

    # ---------------------------------------------------------------- expressions

    def expr(self, node: exp.Expression, scope: _Scope, aliases: dict[str, _Val] | None = None) -> _Val:
        if isinstance(node, exp.Column):
            return self.column(node, scope, aliases)
        if isinstance(node, (exp.Paren, exp.Alias)):
            inner = node.this
            return self.expr(inner, scope, aliases) if isinstance(inner, exp.Expression) else _EMPTY
        if isinstance(node, _CONSTANT_TYPES):
            return _EMPTY
        if isinstance(node, (*_QUERY_TYPES, *_DML_TYPES)):
            cols = self.query(node, scope, scope.ctes)
            if len(cols) == 1:
                return _Val(cols[0].sources, cols[0].direct)
            return _Val(_union(cols), False)
        if isinstance(node, exp.Parameter):
            inner = node.this
            if isinstance(inner, (exp.Var, exp.Identifier)) and not self.pg:
                self.reason(f"reads user variable @{inner.name}", opaque=True)
            return _EMPTY
        if isinstance(node, exp.PropertyEQ) and isinstance(node.this, exp.Parameter):
            value = self.expr(node.expression, scope, aliases)
            if value.sources:
                self.copy("assigns column values to a user variable (@var := ...)")
            return _Val(value.sources, False)
        if isinstance(node, exp.Dot):
            field = self.field(node, scope)
            if field is not None:
                return field
        if isinstance(node, exp.Star):
            if isinstance(node.parent, exp.Count):
                return _EMPTY
            return _Val(_union(scope.star), False)
        if isinstance(node, exp.Table):
            self.reason(f"table reference inside an expression ({node.sql(dialect=self.dialect)})", opaque=True)
            return _EMPTY
        if isinstance(node, exp.Window):
            for part in node.args.get("partition_by") or ():
                self.pred(self.expr(part, scope, aliases))
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            # schema.function(...): a qualified call
            schema = self.norm(node.this) if isinstance(node.this, exp.Identifier) else ""
            val = self.expr(node.expression, scope, aliases)
            self.call(_func_name(node.expression), schema, qualified=True)
            return val
        sources: set[str] = set()
        parts: list[tuple[exp.Expression, frozenset[str]]] = []
        for child in node.iter_expressions():
            found = self.expr(child, scope, aliases).sources
            if found:
                sources |= found
                parts.append((child, found))
        if sources:
            self.observed(node, sources, parts)
        if isinstance(node, exp.Func):
            name = _func_name(node)
            if name in _RUNS_QUERY:
                self.reason(f"function {name}() runs a query or reads data of its own", opaque=True)
            elif name in _SINKS and sources:
                self.copy(f"passes column values to {name}(), which stores, sends or times them outside the result")
            qualified_call = isinstance(node.parent, exp.Dot) and node.parent.expression is node
            if (
                isinstance(node, exp.Anonymous)
                and (self.catalogue.routines is not None or self.catalogue.builtins is not None)
                and not qualified_call
            ):
                self.call(name, "", qualified=False)
            elif self.catalogue.routines and not qualified_call:
                # a function the SQL parser knows as a built-in may be a user routine of the same
                # name found first (another argument type, a schema earlier in the path)
                found = self.catalogue.routine(name, self.default_schema)
                if found is not None:
                    self.check_routine(found[0].name, found)
        return _Val(frozenset(sources), False)

    def observed(self, node: exp.Expression, sources: set[str], parts: list[tuple[exp.Expression, frozenset[str]]]) -> None:
        """Where a value decides something the client observes besides the value itself (a
        comparison, a condition, an ordering, a row count, a size, an error), its sources are
        predicates. `parts` holds the node's children that carry sources (evaluated once)."""

        def of(*keys: str) -> None:
            wanted = [node.args.get(k) for k in keys]
            for child, found in parts:
                if any(child is w for w in wanted):
                    self.predicates |= found

        if isinstance(node, exp.Predicate):
            if isinstance(node, exp.Exists):
                return  # the subquery's own clauses count; its outputs are not compared
            if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
                return  # nullness: a masked NULL stays NULL, so it is not hidden anyway
            self.predicates |= sources
        elif isinstance(node, exp.If):  # CASE WHEN cond / IF(cond, ...) / IIF
            of("this")
        elif isinstance(node, exp.Case):  # CASE operand WHEN ...
            of("this")
        elif isinstance(node, (exp.Filter, exp.WithinGroup)):  # FILTER (WHERE ...), WITHIN GROUP (ORDER BY ...)
            of("expression")
        elif isinstance(node, (exp.Order, exp.Distinct, exp.Ntile, *_COMPARING)):
            self.predicates |= sources  # ordered / distinct aggregates, ntile(n), nullif, greatest, ...
        elif isinstance(node, _DIVISIONS):  # x / 0 raises: the error is observed
            of("expression")
        elif isinstance(node, _OFFSET_WINDOWS):  # lag(x, n): n picks which row is read
            of("offset")
        elif isinstance(node, exp.Func):
            name = _func_name(node)
            if name in _COMPARE_FUNCS or name in _SIZING:
                self.predicates |= sources

    def field(self, node: exp.Dot, scope: _Scope) -> _Val | None:
        """`(t).col` / `(t.*).col`: a field of a whole-row reference."""
        base = node.this
        while isinstance(base, exp.Paren):
            base = base.this
        if not isinstance(base, exp.Column) or not isinstance(node.expression, exp.Identifier):
            return None
        if isinstance(base.this, exp.Star):
            rel = self.find_rel(base, scope)
        elif base.args.get("table") is None:
            name = self.norm(base.this)
            if self.lookup(scope, name, quiet=True) is not None:
                return None  # a composite-typed column: its sources are the column's
            rel = None
            s: _Scope | None = scope
            while s is not None and rel is None:
                rel = s.rel(name, "")
                s = s.outer
        else:
            return None
        if rel is None or rel.unknown:
            return None
        found = rel.find(self.norm(node.expression))
        if len(found) == 1:
            return _Val(found[0].sources, found[0].direct)
        return None

    def column(self, col: exp.Column, scope: _Scope, aliases: dict[str, _Val] | None) -> _Val:
        ident = col.this
        if isinstance(ident, exp.Star):  # t.* as a value: the whole row
            rel = self.find_rel(col, scope)
            if rel is None:
                self.reason(f"{col.sql(dialect=self.dialect)}: no such table or alias in scope")
                return _EMPTY
            return self.whole_row(rel)
        name = self.norm(ident)
        table = col.args.get("table")
        if table is not None:
            qualifier = self.norm(table)
            rel = self.find_rel(col, scope)
            if rel is None:
                self.reason(f"column {col.sql(dialect=self.dialect)}: no table or alias {qualifier} in scope")
                return _EMPTY
            return self.rel_column(rel, name, col)
        found = self.lookup(scope, name)
        alias = aliases.get(name) if aliases is not None else None
        if found is not None:
            # GROUP BY / HAVING / ORDER BY expressions: postgres reads the input column, mysql
            # may read the select-list alias; both count.
            if alias is not None and alias.sources != found.sources:
                return _Val(found.sources | alias.sources, False)
            return found
        if alias is not None:
            return alias
        s: _Scope | None = scope
        while s is not None:
            rel = s.rel(name, "")
            if rel is not None:
                return self.whole_row(rel)
            s = s.outer
        if name.lower() in _KEYWORD_COLUMNS[self.dialect]:
            return _EMPTY
        if self.pg and name in _PG_SYSTEM_COLUMNS and any(r.table for r in scope.rels):
            return _EMPTY
        self.reason(f"column {name} cannot be attributed to a table in scope")
        return _EMPTY

    def lookup(self, scope: _Scope, name: str, *, quiet: bool = False) -> _Val | None:
        """A bare column name through the scope chain; None when nothing has it."""
        s: _Scope | None = scope
        doubtful: set[str] = set()
        while s is not None:
            merged = s.merged.get(name)
            if merged is not None:
                return _Val(merged.sources, merged.direct)
            hits: list[tuple[_Rel, _Col]] = []
            for rel in s.rels:
                for col in rel.find(name):
                    hits.append((rel, col))
            if hits:
                if len(hits) > 1 and not quiet:
                    owners = ", ".join(dict.fromkeys(r.table or r.alias or "?" for r, _ in hits))
                    self.reason(f"column {name} is ambiguous ({owners})")
                sources = _union(c for _, c in hits) | doubtful
                direct = len(hits) == 1 and hits[0][1].direct and not doubtful
                return _Val(frozenset(sources), direct)
            unknown = [rel for rel in s.rels if rel.unknown]
            if unknown:
                if not quiet:
                    self.reason(f"column {name} may come from a table missing from the catalogue")
                doubtful |= {f"{rel.table}.{name}" for rel in unknown if rel.table}
            s = s.outer
        if doubtful:
            return _Val(frozenset(doubtful), False)
        return None

    def rel_column(self, rel: _Rel, name: str, col: exp.Column) -> _Val:
        found = rel.find(name)
        if len(found) == 1:
            return _Val(found[0].sources, found[0].direct)
        if found:
            self.reason(f"column {col.sql(dialect=self.dialect)} is ambiguous")
            return _Val(_union(found), False)
        if rel.unknown:
            return _Val(frozenset((f"{rel.table}.{name}",)) if rel.table else _NONE, False)
        if self.pg and name in _PG_SYSTEM_COLUMNS and rel.table:
            return _EMPTY
        self.reason(f"column {col.sql(dialect=self.dialect)} not found in {rel.table or rel.alias}")
        return _EMPTY

    def whole_row(self, rel: _Rel) -> _Val:
        if rel.table:
            self.whole_rows.setdefault(rel.table, None)
        if rel.unknown:
            self.reason(f"whole row of {rel.table or rel.alias}, which is not in the catalogue")
        return _Val(_union(rel.columns), False)


# ---------------------------------------------------------------------------------- parsing


def _error_text(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return text[:200] or type(err).__name__


def _parse_one(sql: str, dialect: str) -> exp.Expression | None:
    """The first statement of a text (a view definition), through the policy lexer."""
    pieces = split_statements(tokenize(sql, dialect))
    if not pieces:
        return None
    trees = [t for t in sqlglot.parse(canonical(pieces[0], dialect), read=dialect) if isinstance(t, exp.Expression)]
    return trees[0] if trees else None


class _Session(NamedTuple):
    """Name resolution settings a statement may change for the statements after it."""

    catalogue: Catalogue
    default_schema: str
    doubt: str  # non-empty: name resolution is uncertain from here on, and why


def _statement_lineage(tokens: Sequence[Token], dialect: str, session: _Session) -> tuple[Lineage, _Session]:
    known = known_shape(tokens, dialect)
    if known is not None:
        return Lineage(), session
    unwrapped = unwrap(tokens, dialect)
    if unwrapped is not None:
        op, inner_tokens = unwrapped
        if op == "prepare":
            inner, _ = _statement_lineage(inner_tokens, dialect, session)
            analyser = _Analyser(dialect, session.catalogue, session.default_schema)
            analyser.prepared(inner)
            return analyser.result(()), session
        # EXPLAIN: no rows; the inner statement's predicates and tables count (EXPLAIN ANALYZE
        # runs it and reports row counts; plain EXPLAIN estimates from statistics). When it
        # runs, what it copies and what cannot be seen in it count too.
        inner, _ = _statement_lineage(inner_tokens, dialect, session)
        prefix = [t.text.upper() for t in significant(tokens[: len(tokens) - len(inner_tokens)])]
        if "ANALYZE" not in prefix and "ANALYSE" not in prefix:
            return Lineage(predicates=inner.predicates, tables=inner.tables), session
        reasons = inner.copies + (inner.unresolved if inner.opaque else ())
        return (
            Lineage(
                predicates=inner.predicates,
                tables=inner.tables,
                copies=inner.copies,
                unresolved=tuple(dict.fromkeys(reasons)),
                opaque=inner.opaque,
            ),
            session,
        )
    analyser = _Analyser(dialect, session.catalogue, session.default_schema)
    if session.doubt:
        analyser.reason(session.doubt)
    try:
        # Definitions keep their string literals: a routine body or a prepared text is in one.
        first = next((t.text.upper() for t in significant(tokens)), "")
        text = canonical(tokens, dialect, literals=first in _KEEPS_LITERALS)
        trees = [t for t in sqlglot.parse(text, read=dialect) if isinstance(t, exp.Expression)]
    except Exception as err:  # ParseError, TokenError, RecursionError: fail closed
        analyser.reason(f"could not parse the statement: {_error_text(err)}", opaque=True)
        return analyser.result(()), session
    if not trees:
        analyser.reason("the SQL parser found no statement in the text", opaque=True)
        return analyser.result(()), session
    outputs: list[_Col] = []
    try:
        for tree in trees:
            outputs = analyser.statement(tree) or outputs
            session = _next_session(tree, dialect, session)
        if len(trees) > 1:
            analyser.reason("one statement parsed as several")
    except Exception as err:  # a surprise in the walk: fail closed
        analyser.reason(f"lineage analysis failed: {type(err).__name__}: {_error_text(err)}", opaque=True)
    return analyser.result(outputs), session


def _next_session(tree: exp.Expression, dialect: str, session: _Session) -> _Session:
    """USE db (mysql) and SET search_path (postgres) change how later statements resolve."""
    if isinstance(tree, exp.Use) and isinstance(tree.this, exp.Expression):
        ident = tree.this.this if isinstance(tree.this, exp.Table) else tree.this
        return session._replace(default_schema=ident.name.lower() if isinstance(ident, exp.Expression) else "")
    if dialect != "postgres":
        return session
    schemas: list[str] | None = None
    if isinstance(tree, exp.Command) and str(tree.this).upper() == "SET":
        text = tree.expression.name if isinstance(tree.expression, exp.Expression) else str(tree.expression or "")
        m = _SEARCH_PATH.match(text)
        if m:
            schemas = [s.strip() for s in m.group(1).split(",") if s.strip()]
    elif isinstance(tree, exp.Set):
        for item in tree.expressions:
            eq = item.this if isinstance(item, exp.SetItem) else item
            if isinstance(eq, exp.EQ) and isinstance(eq.this, exp.Column) and eq.this.name.lower() == "search_path":
                value = eq.expression
                parts = value.expressions if isinstance(value, exp.Tuple) else [value]
                schemas = [p.sql(dialect="postgres") if isinstance(p, exp.Expression) else "?" for p in parts]
    if schemas is None:
        return session
    if schemas and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", s) for s in schemas):
        path = tuple(s.lower() for s in schemas)
        return session._replace(catalogue=msgspec.structs.replace(session.catalogue, search_path=path))
    return session._replace(doubt="search_path was changed earlier in this request to a value not understood")


def _readings(sql: str, dialect: str) -> list[list[list[Token]]]:
    pieces = split_statements(tokenize(sql, dialect))
    readings = [pieces]
    if dialect == "mysql" and VERSIONED_COMMENT.search(sql):
        other = split_statements(tokenize(sql, dialect, versioned=False))
        if [statement_key(p) for p in other] != [statement_key(p) for p in pieces]:
            readings.append(other)
    return readings


def _merge(a: Lineage, b: Lineage, *, reason: str) -> Lineage:
    """Union of two lineages of the same output columns (two readings of one statement)."""
    if a == b:
        return a
    extra: tuple[str, ...] = ()
    outputs = a.outputs
    if a.outputs != b.outputs:
        if len(a.outputs) == len(b.outputs):
            outputs = tuple(
                OutputColumn(x.name, x.sources | y.sources, x.direct and y.direct and x.sources == y.sources)
                for x, y in zip(a.outputs, b.outputs)
            )
        else:
            extra = (reason,)
            outputs = a.outputs if len(a.outputs) >= len(b.outputs) else b.outputs
    return Lineage(
        outputs=outputs,
        predicates=a.predicates | b.predicates,
        whole_rows=tuple(dict.fromkeys(a.whole_rows + b.whole_rows)),
        unresolved=tuple(dict.fromkeys(a.unresolved + b.unresolved + extra)),
        tables=a.tables | b.tables,
        copies=tuple(dict.fromkeys(a.copies + b.copies)),
        opaque=a.opaque or b.opaque,
        returns_rows=a.returns_rows or b.returns_rows,
        hidden_reads=tuple(dict.fromkeys(a.hidden_reads + b.hidden_reads)),
    )


def _failed(reason: str) -> Lineage:
    return Lineage(unresolved=(reason,), opaque=True)


def statement_lineages(
    sql: str, dialect: str, catalogue: Catalogue, *, default_schema: str = ""
) -> tuple[Lineage, ...]:
    """The lineage of every statement of `sql`, in order (one result set each at most)."""
    if dialect not in _NO_DATA_COMMANDS:
        return (_failed(f"unknown SQL dialect {dialect!r}"),)
    try:
        readings = _readings(sql, dialect)
    except Unlexable:
        return (_failed("unterminated quoted string, quoted identifier or comment"),)
    except Exception as err:
        return (_failed(f"lineage analysis failed: {_error_text(err)}"),)
    results: list[tuple[Lineage, ...]] = []
    for pieces in readings:
        session = _Session(catalogue, default_schema, "")
        out: list[Lineage] = []
        for piece in pieces:
            try:
                lin, session = _statement_lineage(piece, dialect, session)
            except Exception as err:  # nothing escapes
                lin = _failed(f"lineage analysis failed: {_error_text(err)}")
            out.append(lin)
        results.append(tuple(out))
    first = results[0]
    for other in results[1:]:
        if len(other) == len(first):
            first = tuple(
                _merge(a, b, reason="a versioned comment changes the output columns") for a, b in zip(first, other)
            )
        else:
            merged = _merge(_combine(first), _combine(other), reason="a versioned comment changes the statements")
            return (msgspec.structs.replace(merged, unresolved=(*merged.unresolved, "a versioned comment changes the statements")),)
    return first


def _combine(parts: Sequence[Lineage]) -> Lineage:
    """One lineage for a whole request: outputs of its row-returning statement."""
    if not parts:
        return Lineage()
    if len(parts) == 1:
        return parts[0]
    rows = [p for p in parts if p.returns_rows]
    extra: tuple[str, ...] = ("several statements in this request return rows",) if len(rows) > 1 else ()
    return Lineage(
        outputs=rows[0].outputs if rows else (),
        predicates=frozenset().union(*(p.predicates for p in parts)),
        whole_rows=tuple(dict.fromkeys(w for p in parts for w in p.whole_rows)),
        unresolved=tuple(dict.fromkeys([*(r for p in parts for r in p.unresolved), *extra])),
        tables=frozenset().union(*(p.tables for p in parts)),
        copies=tuple(dict.fromkeys(c for p in parts for c in p.copies)),
        opaque=any(p.opaque for p in parts),
        returns_rows=bool(rows),
        hidden_reads=tuple(dict.fromkeys(h for p in parts for h in p.hidden_reads)),
    )


def lineage(sql: str, dialect: str, catalogue: Catalogue, *, default_schema: str = "") -> Lineage:
    """Lineage of `sql` ("postgres" or "mysql"). Never raises: what cannot be resolved is in
    `unresolved`. For a text of several statements the predicates, tables and reasons of all of
    them are merged, and the outputs are those of the one statement that returns rows (several
    such statements add a reason; `statement_lineages` gives one lineage per statement)."""
    try:
        return _combine(statement_lineages(sql, dialect, catalogue, default_schema=default_schema))
    except Exception as err:  # belt and braces
        return _failed(f"lineage analysis failed: {_error_text(err)}")
