"""Issue 11, deliverable 3: a deny rule on a schema holds under any search_path manipulation.

A gateway (one for the module) has the rule `no-vault` (deny `vault.*`) in front of a database
where `vault.secrets` holds a marker and tables of the same name hold harmless rows elsewhere:
`public.secrets` and `"Vault".secrets` (a different, mixed-case schema). Hypothesis draws a
random sequence of SET / SET SESSION / SET LOCAL / RESET / SET ... TO DEFAULT / RESET ALL /
set_config(..., false|true) / BEGIN / COMMIT / ROLLBACK / SAVEPOINT / ROLLBACK TO SAVEPOINT /
RELEASE SAVEPOINT / a failing statement, with schema lists drawn from vault, public, "$user",
pg_temp, pg_catalog and quoted names ("vault", "Vault", "Public"), sent one statement at a time,
as one multi-statement string, or in a psycopg pipeline, with bare-name reads of `secrets` in
between and at the end. Through the byte tap:

* the marker never reaches the client;
* the dual: after the transaction is closed, a plain `SET search_path TO public` followed by a
  separate read of `secrets` is allowed and returns the public row. (Inside the random sequence
  the gateway may refuse conservatively when it cannot know the path; this is not asserted.)
"""

from __future__ import annotations

from typing import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.evasion import exclusive, leaks, pg_admin_dsn
from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

pytestmark = pytest.mark.integration

DB = "sqlward_props_pg"
PASSWORD = "dora-secret"
MARKER = "PROPS-VAULT-MARKER-91c4"
PUBLIC_ROW = "public row of secrets"

SCHEMA = f"""
CREATE SCHEMA vault;
CREATE SCHEMA "Vault";
CREATE TABLE vault.secrets (id int PRIMARY KEY, secret text);
INSERT INTO vault.secrets VALUES (1, '{MARKER}');
CREATE TABLE public.secrets (id int PRIMARY KEY, secret text);
INSERT INTO public.secrets VALUES (1, '{PUBLIC_ROW}');
CREATE TABLE "Vault".secrets (id int PRIMARY KEY, secret text);
INSERT INTO "Vault".secrets VALUES (1, 'a harmless row of "Vault"');
"""


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
        identities=[{"name": "dora", "secret": PASSWORD}],
        rules=[{"id": "no-vault", "tables": ["vault.*"], "action": "deny"}],
        name="props-search-path",
    )
    with gw:
        t = Tap(gw.host, gw.port)
        yield t
        t.close()


def _dsn(port: int) -> str:
    return f"postgresql://dora:{PASSWORD}@127.0.0.1:{port}/shop?sslmode=disable"


SCHEMAS = ["vault", "public", '"$user"', "pg_temp", "pg_catalog", '"vault"', '"Vault"', '"Public"']
READ = "SELECT secret FROM secrets"

schema_lists = st.lists(st.sampled_from(SCHEMAS), min_size=1, max_size=3)
savepoint = st.sampled_from(["sp1", "sp2"])


def _set(kind: str, schemas: list[str]) -> str:
    return f"SET {kind}search_path TO {', '.join(schemas)}"


def _set_config(schemas: list[str], local: bool) -> str:
    value = ", ".join(schemas).replace("'", "''")
    return f"SELECT set_config('search_path', '{value}', {'true' if local else 'false'})"


operations = st.one_of(
    st.builds(_set, st.sampled_from(["", "SESSION ", "LOCAL "]), schema_lists),
    schema_lists.map(lambda s: f"SET search_path = {', '.join(s)}"),
    st.builds(_set_config, schema_lists, st.booleans()),
    st.sampled_from(["RESET search_path", "SET search_path TO DEFAULT", "RESET ALL", "BEGIN", "COMMIT", "ROLLBACK",
                     "SELECT 1/0", READ]),
    savepoint.map(lambda s: f"SAVEPOINT {s}"),
    savepoint.map(lambda s: f"ROLLBACK TO SAVEPOINT {s}"),
    savepoint.map(lambda s: f"RELEASE SAVEPOINT {s}"),
)


def _one_at_a_time(c: psycopg.Connection, steps: list[str]) -> None:
    for sql in steps:
        try:
            cur = c.execute(sql)
            if cur.description is not None:
                cur.fetchall()
        except psycopg.Error:
            pass


def _pipeline(c: psycopg.Connection, steps: list[str]) -> None:
    curs = []
    try:
        with c.pipeline():
            for sql in steps:
                curs.append(c.execute(sql))
    except psycopg.Error:
        pass
    for cur in curs:
        try:
            if cur.description is not None:
                cur.fetchall()
        except psycopg.Error:
            pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(operations, min_size=1, max_size=7), mode=st.sampled_from(["separate", "multi", "pipeline"]))
def test_vault_rule_holds_under_random_search_path_changes(tap: Tap, steps: list[str], mode: str) -> None:
    tap.reset()
    script = [*steps, READ, "TABLE secrets"]
    with psycopg.connect(_dsn(tap.port), autocommit=True, prepare_threshold=None) as c:
        if mode == "separate":
            _one_at_a_time(c, script)
        elif mode == "multi":
            _one_at_a_time(c, ["; ".join(script)])
        else:
            _pipeline(c, script)
        assert not leaks(tap.received, [MARKER.encode()]), (mode, script)
        # The dual: a plain SET to public, then a separate bare read, is allowed.
        _one_at_a_time(c, ["ROLLBACK"])
        c.execute("SET search_path TO public")
        before = len(tap.received)
        rows = c.execute(READ).fetchall()
        assert rows == [(PUBLIC_ROW,)], (mode, script, rows)
        assert PUBLIC_ROW.encode() in tap.received[before:]
    assert not leaks(tap.received, [MARKER.encode()]), (mode, script)
