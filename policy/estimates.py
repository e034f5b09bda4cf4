"""Row estimates for the mass-write guardrail and `rows_over` rules (sans-IO).

How it works: when a decision is `pending` (`policy.model.Decision.pending`), the caller asks the
upstream how many rows each pending statement would change, with EXPLAIN (never EXPLAIN ANALYZE:
nothing runs), on a side connection of the gateway's own, then decides again with the figures.
This module holds the parts that need no I/O:

- `statement_texts(sql, dialect, count)`: the text of each statement of a request, lined up with
  `Analysis.statements` (None when they cannot be lined up: the caller then has no estimate,
  which fails closed). Texts keep their literals and lose their comments.
- `explain_plan(text, dialect)`: the statements to send, one per round trip, so the server's own
  parser enforces "one statement" (PostgreSQL extended protocol Parse; MySQL without
  CLIENT_MULTI_STATEMENTS). A PostgreSQL statement with `$n` parameters is prepared and its
  generic plan explained (`plan_cache_mode = force_generic_plan` on the side connection): the
  values are not known when the statement is decided, and a generic plan estimates for any.
  MySQL `?` placeholders cannot be explained: no estimate.
- `rows_from_postgres(json_text)`: the rows the first ModifyTable node's input produces (the
  ModifyTable node itself says 0); for an INSERT ... SELECT the same. Without a ModifyTable (a
  write hidden in a CTE), the largest such figure anywhere in the plan.
- `rows_from_mysql(columns, rows)`: the product of `rows` (times `filtered`% where the server
  gives it) over the tables of the first SELECT id, the largest over ids; "Impossible WHERE" is 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["ESTIMATE_STATEMENT", "explain_plan", "rows_from_mysql", "rows_from_postgres", "statement_texts"]

ESTIMATE_STATEMENT: Final = "sqlward_estimate"
_PG_PARAM: Final = re.compile(r"\$(\d+)")


def statement_texts(sql: str, dialect: str, count: int) -> list[str] | None:
    """The text of each of the `count` statements of `sql`, or None when they do not line up."""
    from sqlward.policy.analysis import split_texts  # the analyser's own lexer decides the boundaries

    try:
        texts = split_texts(sql, dialect)
    except Exception:
        return None
    return texts if len(texts) == count else None


def explain_plan(text: str, dialect: str) -> list[str] | None:
    """Statements to run in order for an estimate of `text`; the last one's result is the plan.
    None when the statement cannot be explained (MySQL placeholders)."""
    if dialect == "postgres":
        params = [int(n) for n in _PG_PARAM.findall(text)]
        if not params:
            return ["EXPLAIN (FORMAT JSON) " + text]
        nulls = ", ".join("NULL" for _ in range(max(params)))
        return [
            "DEALLOCATE ALL",
            f"PREPARE {ESTIMATE_STATEMENT} AS {text}",
            f"EXPLAIN (FORMAT JSON) EXECUTE {ESTIMATE_STATEMENT}({nulls})",
        ]
    if "?" in _without_strings(text):
        return None
    return ["EXPLAIN " + text]


def _without_strings(text: str) -> str:
    return re.sub(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`[^`]*`", "", text)


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for child in node.get("Plans", ()):
            yield from _walk(child)


def rows_from_postgres(plan_json: str) -> int | None:
    """Rows the statement changes, from `EXPLAIN (FORMAT JSON)` output; None when unreadable."""
    try:
        doc = json.loads(plan_json)
        top = doc[0]["Plan"]
    except (ValueError, LookupError, TypeError):
        return None
    figures = []
    for node in _walk(top):
        if node.get("Node Type") == "ModifyTable":
            inputs = node.get("Plans") or ()
            if inputs:
                figures.append(int(inputs[0].get("Plan Rows", 0)))
            else:  # INSERT ... VALUES without a subplan
                figures.append(int(node.get("Plan Rows", 0)))
    if figures:
        return max(figures)
    try:
        return int(top.get("Plan Rows", 0))
    except (TypeError, ValueError):
        return None


def rows_from_mysql(columns: Sequence[str], rows: Sequence[Sequence[str | None]]) -> int | None:
    """Rows the statement changes, from tabular EXPLAIN output; None when unreadable."""
    names = [c.lower() for c in columns]
    if "rows" not in names:
        return None
    i_rows = names.index("rows")
    i_id = names.index("id") if "id" in names else None
    i_filtered = names.index("filtered") if "filtered" in names else None
    i_extra = names.index("extra") if "extra" in names else None
    by_id: dict[str, float] = {}
    seen = False
    for row in rows:
        extra = (row[i_extra] or "") if i_extra is not None else ""
        if "Impossible WHERE" in extra or "no matching row" in extra.lower():
            by_id.setdefault(str(row[i_id]) if i_id is not None else "1", 0.0)
            seen = True
            continue
        value = row[i_rows]
        if value is None:
            continue
        try:
            n = float(value)
            if i_filtered is not None and row[i_filtered] is not None:
                n = n * float(row[i_filtered]) / 100.0
        except ValueError:
            return None
        key = str(row[i_id]) if i_id is not None else "1"
        by_id[key] = by_id.get(key, 1.0) * n if key in by_id else n
        seen = True
    if not seen:
        return None
    return int(max(by_id.values())) if by_id else None
