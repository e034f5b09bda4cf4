"""Which masking rules apply to whom, and which columns they mask (sans-IO).

How it works:

- `MaskingPolicy(rules, settings)` holds the `[[masks]]` rules of one policy version and the
  `[masking]` settings (hash key, mask-on-doubt). It is swapped together with the decision
  engine on a policy reload.
- `MaskingPolicy.for_identity(identity, target)` returns the `IdentityMasks` in force for that
  identity on that target: the rules whose environments / targets match and from which the
  identity is not exempt (by subject glob or group). None when nothing applies, which is the
  fast path: such sessions never look at a row. The result is cached per (subject, groups,
  target, environment).
- `IdentityMasks.spec_for("schema.table.column")` is the `MaskSpec` of the first rule whose
  column glob matches: one part (`ssn`) names a column of any table, two parts
  (`customers.email`) a table by its bare name in any schema, three parts
  (`public.customers.email`) the full name; globs and case-insensitive.
- `IdentityMasks.table_masked(table, catalogue)`: whether any column of the table is masked.
  A table missing from the catalogue counts as masked when any rule could name one of its
  columns (a glob on its table part or a column-only pattern): fail closed.
- `rule_problems(rule)`: what decoding cannot check (the function, classifiers and date part are
  Literal types, checked by msgspec): a rule names columns or classifiers, column globs have at
  most three non-empty parts, and keep_first / keep_last / truncate are given only to the
  function that reads them (`masking.functions.FUNCTION_ARGUMENTS`).
- `IdentityMasks.wire_specs(catalogue)`: the masked columns by their wire origin, for the
  adapters' cross-check: PostgreSQL `(table OID, attribute number)`, MySQL
  `("schema.table", "column")`. Cached per catalogue version.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Final

import msgspec

from sqlward.masking.functions import FUNCTION_ARGUMENTS
from sqlward.masking.model import Catalogue, MaskRule, MaskSpec

__all__ = ["IdentityMasks", "MaskingPolicy", "MaskingSettings", "rule_problems"]


class MaskingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[masking]` table."""

    # Key of the keyed hash (HMAC-SHA256) function: inline (use ${VAR}) or a file. Required when a
    # rule uses function = "hash".
    hash_key: str = ""
    hash_key_file: str = ""
    # When the analysis cannot trace a statement that reads a masked table: refuse it (false) or
    # mask every output column (true).
    mask_all_on_doubt: bool = False
    # Seconds before the schema catalogue of a target is read again (it is also re-read after DDL).
    catalogue_max_age: float = 300.0


_SYSTEM_SCHEMAS: Final = frozenset({"pg_catalog", "information_schema", "mysql", "performance_schema", "sys"})
# Catalogue views / tables holding sample values (most common values, histograms) of columns.
_STATISTICS: Final = frozenset(
    {"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data",
     "column_statistics", "column_stats"}
)


def rule_problems(rule: MaskRule) -> list[tuple[str, str]]:
    """(field, message) for each problem with a `[[masks]]` rule."""
    problems: list[tuple[str, str]] = []
    if not rule.id:
        problems.append(("id", "expected a non-empty rule id"))
    if not rule.columns and not rule.classifiers:
        problems.append(("columns", "expected columns (globs) or classifiers: a mask rule must name what it masks"))
    for key in ("columns", "exempt_identities", "exempt_groups", "environments", "targets"):
        if any(not v for v in getattr(rule, key)):
            problems.append((key, "expected non-empty strings (leave the key out to match anything)"))
    for i, pattern in enumerate(rule.columns):
        if pattern.count(".") > 2:
            problems.append((f"columns[{i}]", "expected column, table.column or schema.table.column"))
        elif pattern and "" in pattern.split("."):
            problems.append((f"columns[{i}]", f"empty name part in {pattern!r}: it never matches (expected column, table.column or schema.table.column)"))
    takes = FUNCTION_ARGUMENTS.get(rule.function, ())
    for key in ("keep_first", "keep_last", "truncate"):
        value = getattr(rule, key)
        if value is None:
            continue
        if key not in takes:
            users = [f for f, args in FUNCTION_ARGUMENTS.items() if key in args]
            problems.append((key, f"function {rule.function!r} takes no {key} (only {' or '.join(users)} does)"))
        elif isinstance(value, int) and value < 0:
            problems.append((key, "expected an integer >= 0"))
    return problems


class _Pattern:
    __slots__ = ("schema", "table", "column")

    def __init__(self, pattern: str) -> None:
        parts = pattern.lower().split(".")
        self.column = re.compile(fnmatch.translate(parts[-1]))
        self.table = re.compile(fnmatch.translate(parts[-2])) if len(parts) >= 2 else None
        self.schema = re.compile(fnmatch.translate(parts[-3])) if len(parts) >= 3 else None

    def matches(self, schema: str, table: str, column: str) -> bool:
        if not self.column.match(column):
            return False
        if self.table is not None and not self.table.match(table):
            return False
        if self.schema is not None and not self.schema.match(schema):
            return False
        return True

    def may_name_table(self, schema: str, table: str) -> bool:
        if self.table is not None and not self.table.match(table):
            return False
        if self.schema is not None and not self.schema.match(schema):
            return False
        return True


def _split(source: str) -> tuple[str, str, str]:
    parts = source.lower().split(".")
    if len(parts) >= 3:
        return parts[-3], parts[-2], parts[-1]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return "", "", parts[0]


class IdentityMasks:
    """The masking rules in force for one identity on one target."""

    __slots__ = ("rules", "_patterns", "classifiers", "classifier_specs", "key", "_specs", "_wire")

    def __init__(self, rules: Sequence[MaskRule]) -> None:
        self.rules = tuple(rules)
        self._patterns = tuple((tuple(_Pattern(p) for p in r.columns), r.spec()) for r in self.rules if r.columns)
        specs: dict[str, MaskSpec] = {}
        for r in self.rules:
            for c in r.classifiers:
                specs.setdefault(c, r.spec())
        self.classifiers = frozenset(specs)
        self.classifier_specs = specs
        self.key = tuple(r.id for r in self.rules)
        self._specs: dict[str, MaskSpec | None] = {}
        self._wire: dict[int, tuple[dict[tuple[int, int], MaskSpec], dict[tuple[str, str], MaskSpec]]] = {}

    def spec_for(self, source: str) -> MaskSpec | None:
        cached = self._specs.get(source, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        schema, table, column = _split(source)
        found: MaskSpec | None = None
        for patterns, spec in self._patterns:
            if any(p.matches(schema, table, column) for p in patterns):
                found = spec
                break
        if len(self._specs) < 100_000:
            self._specs[source] = found
        return found

    def table_masked(self, table: str, catalogue: Catalogue | None, default_schema: str = "") -> bool:
        if table.lower().rpartition(".")[2] in _STATISTICS and self._patterns:
            return True  # planner statistics hold sample values of every column
        info = catalogue.lookup(table, default_schema) if catalogue is not None else None
        if info is not None:
            return any(self.spec_for(f"{info.name}.{c.name}") is not None for c in info.columns)
        schema, _, name = table.lower().rpartition(".")
        if schema in _SYSTEM_SCHEMAS or (not schema and name.startswith("pg_")):
            return False  # system catalogues (psql's \d, drivers' type introspection)
        # An unqualified name may live in any schema (search path, current database): a rule's
        # schema part then cannot rule it out (fail closed).
        return any(
            p.may_name_table(schema, name) if schema else (p.table is None or p.table.match(name) is not None)
            for patterns, _ in self._patterns
            for p in patterns
        )

    def wire_specs(
        self, catalogue: Catalogue
    ) -> tuple[dict[tuple[int, int], MaskSpec], dict[tuple[str, str], MaskSpec]]:
        """Masked columns by wire origin: {(table OID, attnum): spec}, {("schema.table", column): spec}."""
        cached = self._wire.get(catalogue.version)
        if cached is not None and len(self._wire) == 1:
            return cached
        by_oid: dict[tuple[int, int], MaskSpec] = {}
        by_name: dict[tuple[str, str], MaskSpec] = {}
        for info in catalogue.tables.values():
            for col in info.columns:
                spec = self.spec_for(f"{info.name}.{col.name}")
                if spec is None:
                    continue
                if info.oid:
                    by_oid[(info.oid, col.attnum)] = spec
                by_name[(info.name, col.name)] = spec
        self._wire = {catalogue.version: (by_oid, by_name)}
        return by_oid, by_name


class MaskingPolicy:
    """The `[[masks]]` rules and `[masking]` settings of one policy version."""

    __slots__ = ("rules", "settings", "hash_key", "_exempt_subjects", "_cache")

    def __init__(self, rules: Sequence[MaskRule], settings: MaskingSettings = MaskingSettings(), hash_key: bytes = b"") -> None:
        self.rules = tuple(rules)
        self.settings = settings
        self.hash_key = hash_key
        self._exempt_subjects = tuple(
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in r.exempt_identities)) if r.exempt_identities else None
            for r in self.rules
        )
        self._cache: dict[tuple[object, ...], IdentityMasks | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def for_identity(self, subject: str, groups: Sequence[str], target: str, environment: str) -> IdentityMasks | None:
        key = (subject, tuple(groups), target, environment)
        if key in self._cache:
            return self._cache[key]
        applicable = []
        for rule, exempt in zip(self.rules, self._exempt_subjects):
            if rule.environments and environment not in rule.environments:
                continue
            if rule.targets and target not in rule.targets:
                continue
            if exempt is not None and exempt.match(subject):
                continue
            if rule.exempt_groups and set(rule.exempt_groups) & set(groups):
                continue
            applicable.append(rule)
        masks = IdentityMasks(applicable) if applicable else None
        if len(self._cache) < 10_000:
            self._cache[key] = masks
        return masks
