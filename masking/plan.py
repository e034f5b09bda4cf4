"""From a statement's `Lineage` to what the row rewriter does: `build_plan(lineage, masked, ...)
-> MaskPlan`.

How it decides (DESIGN.md section 6), in this order:

1. **Probing is refused.** `Lineage.predicates` holds every column whose value decides something
   the client observes besides a masked output value: WHERE / JOIN / GROUP BY / HAVING / ORDER
   BY / window / DISTINCT ON / LIMIT at any depth, and comparisons and conditions anywhere (CASE
   / IF, FILTER, NULLIF, GREATEST, ...), DISTINCT and set operations that compare rows,
   orderings inside aggregates, row counts, sizes and divisors. `WHERE email LIKE 'a%'` finds
   values by search however the output is masked: refusal naming the rule.
2. **Copies are refused** when the statement reads a table with masked columns (or what it reads
   is unknown): INSERT ... SELECT, CREATE TABLE AS, SELECT INTO, CREATE VIEW, PREPARE, UPDATE SET
   from other columns, assignment to variables, set_config / pg_notify / large objects /
   sequences / advisory locks / sleeps, COPY TO, routines whose bodies cannot be read
   (`Lineage.copies`). Masking the result set cannot follow the values, so `mask_all_on_doubt`
   does not help either. **Hidden reads** (`Lineage.hidden_reads`: the tables a called or
   created routine, trigger or rule may read by itself) are refused when any has masked
   columns.
3. **Whole rows of a table with masked columns are refused** (`row_to_json(t)`, `SELECT t`,
   `t::text`): a row's text also carries columns the catalogue may not know yet.
4. **Doubt.** When lineage is incomplete (`Lineage.unresolved`) and the statement touches a
   table with masked columns, or is opaque (what it reads is unknown): refusal with the first
   reason, or, with `mask_all_on_doubt`, every output column (and any column beyond the known
   ones, `mask_rest`) is redacted under the rule id "mask-on-doubt". Doubt about a statement that
   touches no masked table changes nothing: an unknown function over `orders` is no reason to
   refuse when only `customers.email` is masked.
5. **Per output column:** no masked source: None (clear). A direct value of a masked column: that
   rule's spec (partial, email, hash, truncate_date, ... keep their meaning on the stored value).
   An expression of a masked column (`lower(email)`, `email || 'x'`, `string_agg(email, ',')`):
   full redaction under that rule (`MaskSpec("redact", rule_id)`), because a partial mask of a
   transformed value leaks differently; a "null" rule stays "null" (NULL is safe for any
   expression). Several masked sources: the first in name order decides the rule id; a direct
   value whose sources (a view column and its base column) carry different specs is redacted.

`table_rule(table)` (optional) names the rule of a table's masked columns, for refusals that are
about a table rather than an output column. `masked(source)` answers for the current identity (None: clear); it is called at most once per
source. `masked_tables(table)` tells whether a "schema.table" has any masked column for the
identity (or, for a table missing from the catalogue, whether a glob rule could match it); when
it is not given every touched table counts as masked (fail closed). `masked_tables_from` builds
one from a `Catalogue`.

Sans-IO, no global state.
"""

from __future__ import annotations

from sqlward.policy import rule_ids

from collections.abc import Callable, Iterable

import msgspec

from sqlward.masking.lineage import Lineage, OutputColumn
from sqlward.masking.model import Catalogue, MaskSpec

__all__ = ["MASK_ON_DOUBT", "MaskPlan", "build_plan", "masked_tables_from", "unknown_table_is_masked"]

MASK_ON_DOUBT = MaskSpec(function="redact", rule_id=rule_ids.MASK_ON_DOUBT)


class MaskPlan(msgspec.Struct, frozen=True):
    """What to do with the result set of one statement."""

    # Per output column, in order: the mask to apply, or None (clear).
    columns: tuple[MaskSpec | None, ...] = ()
    # Non-empty: the statement must be refused; a sentence naming the rule and why.
    refusal: str = ""
    # "schema.table.column" the plan masks (for the audit).
    masked_sources: tuple[str, ...] = ()
    # The mask for every column past `columns` (a statement whose output columns are not all
    # known, under mask_all_on_doubt); None: there is none.
    mask_rest: MaskSpec | None = None

    @property
    def needs_masking(self) -> bool:
        return self.mask_rest is not None or any(c is not None for c in self.columns)


def _short(source: str) -> str:
    """`customers.email` for `public.customers.email` (the schema is noise in a sentence)."""
    parts = source.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 3 else source


# System schemas hold no user rows, except the planner statistics, which keep sample values of
# every column (pg_stats.most_common_vals, MySQL histograms): those count as masked.
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "mysql", "performance_schema", "sys"})
_STATISTICS = frozenset(
    {
        "pg_catalog.pg_stats",
        "pg_catalog.pg_stats_ext",
        "pg_catalog.pg_stats_ext_exprs",
        "pg_catalog.pg_statistic",
        "pg_catalog.pg_statistic_ext_data",
        "information_schema.column_statistics",
    }
)


# MySQL's statement history keeps the text of recent warnings and errors (MESSAGE_TEXT), which
# can repeat a masked value; the sys schema's views read it.
_MESSAGE_HISTORY = ("performance_schema.events_statements_", "performance_schema.events_errors_", "sys.")


def unknown_table_is_masked(table: str) -> bool:
    """The default answer for a table missing from the catalogue: masked (it may hold anything),
    except system catalogue tables, which hold no user data (planner statistics excepted)."""
    table = table.lower()
    schema = table.split(".", 1)[0] if "." in table else ""
    return schema not in _SYSTEM_SCHEMAS or table in _STATISTICS or table.startswith(_MESSAGE_HISTORY)


def masked_tables_from(
    catalogue: Catalogue,
    masked: Callable[[str], MaskSpec | None],
    *,
    unknown: Callable[[str], bool] = unknown_table_is_masked,
) -> Callable[[str], bool]:
    """A `masked_tables` for `build_plan`: a catalogued table is masked when `masked` names any
    of its columns; a table missing from the catalogue is whatever `unknown` says (by default
    `unknown_table_is_masked`; pass a check of the glob rules to be precise). Answers are
    memoised per instance."""
    memo: dict[str, bool] = {}

    def check(table: str) -> bool:
        found = memo.get(table)
        if found is None:
            info = catalogue.tables.get(table.lower())
            if info is None:
                found = unknown(table)
            else:
                found = any(masked(f"{info.name}.{c.name}") is not None for c in info.columns)
            memo[table] = found
        return found

    return check


def build_plan(
    lin: Lineage,
    masked: Callable[[str], MaskSpec | None],
    *,
    masked_tables: Callable[[str], bool] | None = None,
    mask_all_on_doubt: bool = False,
    table_rule: Callable[[str], str | None] | None = None,
) -> MaskPlan:
    """The masking plan of a statement for one identity (see the module docstring)."""
    specs: dict[str, MaskSpec | None] = {}

    def spec_of(source: str) -> MaskSpec | None:
        if source not in specs:
            specs[source] = masked(source)
        return specs[source]

    def table_masked(table: str) -> bool:
        return True if masked_tables is None else masked_tables(table)

    def rule_in(sources: Iterable[str]) -> MaskSpec | None:
        for source in sorted(sources):
            spec = spec_of(source)
            if spec is not None:
                return spec
        return None

    # 1. probing
    for source in sorted(lin.predicates):
        spec = spec_of(source)
        if spec is not None:
            return MaskPlan(
                columns=(),
                refusal=(
                    f'masking rule "{spec.rule_id}": {_short(source)} is masked for you and cannot be compared, '
                    "filtered, joined, grouped, ordered, deduplicated or used to size or time anything "
                    "(WHERE / JOIN / GROUP BY / HAVING / ORDER BY / window / LIMIT, CASE / IF conditions, "
                    "comparisons, FILTER, DISTINCT, UNION / INTERSECT / EXCEPT, set-returning and sizing functions)"
                ),
            )

    touched = sorted(t for t in lin.tables if table_masked(t))
    doubt = lin.opaque or bool(touched)
    all_sources = {s for col in lin.outputs for s in col.sources}

    def named_rule(tables: Iterable[str]) -> str:
        tables = list(tables)
        prefixes = tuple(f"{t}." for t in tables)
        spec = rule_in(s for s in all_sources if s.startswith(prefixes))
        if spec is not None:
            return f'masking rule "{spec.rule_id}"'
        if table_rule is not None:
            for table in tables:
                rule = table_rule(table)
                if rule:
                    return f'masking rule "{rule}"'
        return "masking"

    def what_is_read() -> str:
        if touched:
            return f"it reads {', '.join(touched)}, which has masked columns for you"
        return "what it reads cannot be determined"

    # 2. copies
    if lin.copies and doubt:
        return MaskPlan(
            columns=(),
            refusal=(
                f"{named_rule(touched)}: this statement {lin.copies[0]} and {what_is_read()}; "
                "masking cannot follow copied values"
            ),
        )

    # 2b. routines and objects whose bodies read tables masking cannot follow
    for what, tables in lin.hidden_reads:
        hidden = sorted(t for t in tables if table_masked(t))
        if hidden:
            return MaskPlan(
                columns=(),
                refusal=(
                    f"{named_rule(hidden)}: this statement {what}, whose definition may read {', '.join(hidden)}, "
                    "which has masked columns for you; masking cannot follow what a routine or object reads by itself"
                ),
            )

    # 3. whole rows
    for table in lin.whole_rows:
        if table_masked(table):
            return MaskPlan(
                columns=(),
                refusal=(
                    f"{named_rule([table])}: the whole row of {table} is read (row_to_json(t), SELECT t, t::text, ...) "
                    "and it has columns masked for you; select the columns you need instead"
                ),
            )

    # 4. doubt
    if lin.unresolved and doubt:
        if mask_all_on_doubt:
            return MaskPlan(
                columns=tuple(MASK_ON_DOUBT for _ in lin.outputs),
                masked_sources=tuple(sorted(s for s in all_sources if spec_of(s) is not None)),
                mask_rest=MASK_ON_DOUBT,
            )
        return MaskPlan(
            columns=(),
            refusal=(
                f"{named_rule(touched)}: the lineage of this statement's output cannot be traced "
                f"({lin.unresolved[0]}) and {what_is_read()}"
            ),
        )

    # 5. per column
    columns: list[MaskSpec | None] = []
    masked_sources: set[str] = set()
    for col in lin.outputs:
        spec = _column_spec(col, spec_of, masked_sources)
        columns.append(spec)
    return MaskPlan(columns=tuple(columns), masked_sources=tuple(sorted(masked_sources)))


def _column_spec(
    col: OutputColumn, spec_of: Callable[[str], MaskSpec | None], masked_sources: set[str]
) -> MaskSpec | None:
    found = [(s, spec) for s in sorted(col.sources) if (spec := spec_of(s)) is not None]
    if not found:
        return None
    masked_sources.update(s for s, _ in found)
    first = found[0][1]
    if col.direct:
        if all(spec == first for _, spec in found):
            return first
        return MaskSpec(function="redact", rule_id=first.rule_id)
    if all(spec.function == "null" for _, spec in found):
        return MaskSpec(function="null", rule_id=first.rule_id)
    rule = next(spec for _, spec in found if spec.function != "null")
    return MaskSpec(function="redact", rule_id=rule.rule_id)
