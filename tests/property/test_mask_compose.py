"""Issue 11, deliverable 3: composed statements over masked columns never let a secret byte, or a
yes / no answer about a secret, reach the client.

Hypothesis composes a statement from four independent choices:

* a name-resolution route to the masked table: the qualified name `app.customers`, the bare name
  after `SET search_path TO app`, a temporary view, a CTE, a subquery;
* an expression over a masked column (`email` or `ssn`): the column itself, upper(), `|| ''`,
  substr(), coalesce(), format(), a cast, replace();
* the clause the expression sits in: the select list, WHERE, a CASE condition, an aggregate
  FILTER, HAVING, ORDER BY, a window's ORDER BY, GROUP BY, NULLIF, a JOIN condition;
* a set operation against a literal (none, UNION, UNION ALL, INTERSECT, EXCEPT).

Where the statement compares the masked value with a literal, the literal is the true value in
one run and a wrong guess in another, on the same session (psycopg through the byte tap, text or
binary results, real PostgreSQL behind one gateway for the module). The client must receive no
byte of a secret, and must not tell the two runs apart: both refused (SQLSTATE 42501) or
byte-identical answers.
"""

from __future__ import annotations

from typing import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.evasion import exclusive, PG_REFUSED, PgSession, leaks, pg_admin_dsn, run_pg_probe_pair
from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

pytestmark = pytest.mark.integration

DB = "sqlward_props_pg"
SECRETS = {"ana": "ana-secret"}
EMAILS = ["zq7.alice.private@example.com", "zq7.bob.hidden@corp-mail.io"]
SSNS = ["219-09-9999", "078-05-1120"]
TRUE = {"email": EMAILS[0], "ssn": SSNS[0]}
WRONG = {"email": "zq7.nobody.wrong@example.com", "ssn": "123-45-6789"}

SCHEMA = f"""
CREATE SCHEMA app;
CREATE TABLE app.customers (id int PRIMARY KEY, name text, email text, ssn text);
INSERT INTO app.customers VALUES (1, 'name1', '{EMAILS[0]}', '{SSNS[0]}'), (2, 'name2', '{EMAILS[1]}', '{SSNS[1]}');
CREATE TABLE public.customers (id int PRIMARY KEY, name text, email text, ssn text);
INSERT INTO public.customers VALUES (1, 'decoy', 'decoy@example.org', '000-00-0000');
"""
MASKS = [
    {"id": "pii-email", "columns": ["app.customers.email"], "function": "email"},
    {"id": "ssn", "columns": ["*.ssn"], "function": "partial", "keep_last": 2},
]


def secrets() -> list[bytes]:
    return [v.encode() for v in (*EMAILS, *SSNS)]


@pytest.fixture(scope="module")
def props_db() -> Iterator[str]:
    with exclusive('sqlward_props_pg'):
        with psycopg.connect(pg_admin_dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            c.execute(f"CREATE DATABASE {DB}")
        with psycopg.connect(pg_admin_dsn(DB), autocommit=True) as c:
            c.execute(SCHEMA)
        yield DB
        with psycopg.connect(pg_admin_dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


@pytest.fixture(scope="module")
def tap(props_db: str) -> Iterator[Tap]:
    gw = GatewayProcess(
        targets=[target("shop", pg_admin_dsn(props_db), "staging")],
        identities=[{"name": "ana", "secret": SECRETS["ana"], "groups": ["analysts"]}],
        extra={"masks": MASKS, "masking": {"hash_key": "props-hash-key"}},
        name="props-mask-compose",
    )
    with gw:
        t = Tap(gw.host, gw.port)
        yield t
        t.close()


# route: (setup statements, WITH prefix, the FROM item)
ROUTES = {
    "qualified": ([], "", "app.customers"),
    "bare-after-set": (["SET search_path TO app"], "", "customers"),
    "temp-view": (["CREATE TEMP VIEW pv AS SELECT * FROM app.customers"], "", "pv"),
    "cte": ([], "WITH src AS (SELECT * FROM app.customers) ", "src"),
    "subquery": ([], "", "(SELECT * FROM app.customers) src"),
}
EXPRESSIONS = [
    "{c}", "upper({c})", "{c} || ''", "substr({c}, 1, 60)", "coalesce({c}, '')", "format('%s', {c})",
    "{c}::varchar(100)", "replace({c}, '@', '@')",
]
# clause: (core statement with one output column `o`, kind of `o`)
CLAUSES = {
    "select": ("SELECT {e} AS o FROM {src}", "text"),
    "where": ("SELECT id AS o FROM {src} WHERE {e} = {g}", "int"),
    "case": ("SELECT CASE WHEN {e} = {g} THEN 1 ELSE 0 END AS o FROM {src}", "int"),
    "filter": ("SELECT count(*) FILTER (WHERE {e} = {g}) AS o FROM {src}", "int"),
    "having": ("SELECT count(*) AS o FROM {src} GROUP BY id HAVING max({e}) = {g}", "int"),
    "order-by": ("SELECT id AS o FROM {src} ORDER BY {e} = {g} DESC, id LIMIT 1", "int"),
    "window": ("SELECT rank() OVER (ORDER BY {e} = {g}) AS o FROM {src}", "int"),
    "group-by": ("SELECT count(*) AS o FROM {src} GROUP BY {e} = {g}", "int"),
    "nullif": ("SELECT count(NULLIF({e}, {g})) AS o FROM {src}", "int"),
    "join-on": ("SELECT count(*) AS o FROM {src} JOIN (SELECT {g}::text AS k) g ON g.k = {e}", "int"),
}
SET_OPS = ["", "UNION", "UNION ALL", "INTERSECT", "EXCEPT"]


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def compose(route: str, expr: str, column: str, clause: str, set_op: str, guess: str) -> tuple[list[str], str]:
    setup, prefix, src = ROUTES[route]
    g = _lit(guess)
    e = expr.format(c=column)
    core_t, kind = CLAUSES[clause]
    core = core_t.format(e=e, g=g, src=src)
    if not set_op:
        return list(setup), prefix + core
    other = expr.format(c=g) if kind == "text" else "1"
    return list(setup), f"{prefix}({core}) {set_op} (SELECT {other})"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(sorted(ROUTES)),
    expr=st.sampled_from(EXPRESSIONS),
    column=st.sampled_from(["email", "ssn"]),
    clause=st.sampled_from(sorted(CLAUSES)),
    set_op=st.sampled_from(SET_OPS),
    binary=st.booleans(),
)
def test_composed_statements_leak_no_secret_and_answer_no_guess(
    tap: Tap, route: str, expr: str, column: str, clause: str, set_op: str, binary: bool
) -> None:
    setup, probe_true = compose(route, expr, column, clause, set_op, TRUE[column])
    _, probe_false = compose(route, expr, column, clause, set_op, WRONG[column])
    client = "psycopg-binary" if binary else "psycopg-text"
    r = run_pg_probe_pair(client, PgSession(tap.port, "ana", SECRETS["ana"], "shop"), tap, setup, probe_true, probe_false)
    found = leaks(r.received, secrets())
    assert not found, (probe_true, client, r.outcomes, found)
    assert r.indistinguishable(PG_REFUSED), (probe_true, client, r.explain())
