"""Row estimates by EXPLAIN on the upstream, for pending decisions (`policy.estimates`).

How it works: `Estimator.rows(target, text, dialect, schema=..., timeout=...)` runs the
statements `policy.estimates.explain_plan` gives, one round trip each, on a side connection the
gateway opens to the target with its own upstream credentials (`adapters.*.sidequery` pools, one
per protocol, opened lazily, idle connections kept), and reads the figure with
`rows_from_postgres` / `rows_from_mysql`. The whole estimate is bounded by `timeout`; any error,
a timeout or an unreadable plan gives None, and the policy then fails closed.

Nothing is executed: EXPLAIN without ANALYZE. PostgreSQL side connections start with
`default_transaction_read_only=on` and `plan_cache_mode=force_generic_plan`; the
statement is sent by itself, after a `set_config('search_path', ...)` that gives the side
connection the client session's search list (`search_path=`), so EXPLAIN reads the same tables. MySQL side connections do not negotiate CLIENT_MULTI_STATEMENTS,
so the server itself refuses a second statement hidden in the text.
"""

from __future__ import annotations

from typing import Any

import trio

from sqlward.adapters.base import Target
from sqlward.policy.estimates import explain_plan, rows_from_mysql, rows_from_postgres

__all__ = ["Estimator"]


def path_setting(search_path: tuple[str, ...]) -> str:
    """The statement that gives a side connection this search list (pg_temp left out: the side
    connection has no temporary objects); the default path when it is empty."""
    if not search_path:
        return "SELECT pg_catalog.set_config('search_path', '\"$user\", public', false)"
    names = ", ".join('"' + s.replace('"', '""') + '"' for s in search_path if s != "pg_temp")
    return "SELECT pg_catalog.set_config('search_path', '" + names.replace("'", "''") + "', false)"


class Estimator:
    """EXPLAIN-based row estimates over per-protocol side-connection pools."""

    def __init__(self, pool_size: int = 2) -> None:
        self._pool_size = pool_size
        self._pools: dict[str, Any] = {}

    def _pool(self, protocol: str) -> Any:
        pool = self._pools.get(protocol)
        if pool is None:
            if protocol == "postgres":
                from sqlward.adapters.postgres.sidequery import SidePool as PgPool

                pool = PgPool(
                    size=self._pool_size,
                    parameters=(("default_transaction_read_only", "on"), ("plan_cache_mode", "force_generic_plan")),
                )
            else:
                from sqlward.adapters.mysql.sidequery import SidePool as MyPool

                pool = MyPool(size=self._pool_size, multi_statements=False)
            self._pools[protocol] = pool
        return pool

    async def rows(
        self, target: Target, text: str, dialect: str, *, schema: str = "", search_path: tuple[str, ...] = (),
        timeout: float,
    ) -> int | None:
        plan = explain_plan(text, dialect)
        if plan is None:
            return None
        if dialect == "postgres":
            # The session's path, not the side connection's: the same tables as the statement.
            plan = [path_setting(search_path)] + plan
        pool = self._pool(target.info.protocol)
        with trio.move_on_after(timeout):
            if dialect == "postgres":
                results = await pool.run(target, plan, timeout=timeout)
                if not results or not results[-1].rows or results[-1].rows[0][0] is None:
                    return None
                return rows_from_postgres(results[-1].rows[0][0])
            results = await pool.run(target, plan, timeout=timeout, database=schema or None)
            if not results:
                return None
            return rows_from_mysql(results[-1].columns, results[-1].rows)
        return None

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
