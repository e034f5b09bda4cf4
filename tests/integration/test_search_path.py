"""Issue 11: PostgreSQL table names resolve as the server resolves them.

A target with a deny rule on `vault.*` and an allow rule on `public.*` (default deny, as in
production). `vault.secrets` holds a marker; `public.secrets` is a harmless table of the same
name. Whatever the session does to its search_path (SET, SET LOCAL, set_config, RESET, startup
options, a role default set on the server, transactions and savepoints that undo a change, a
failed transaction, a pipeline, a named prepared statement run after the path moved), the
marker never reaches the client (a byte tap records what it receives), and the read of
`public.secrets` is allowed whenever the path surely resolves there. Clients: psycopg (simple
and extended protocol, pipeline mode), asyncpg (prepared statements) and psql.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

from .conftest import VIA, _admin_dsn

DB = "sqlward_searchpath_it"
ROLE = "sqlward_sp_up"
MARKER = "vault-marker-7Hq2"
PUBLIC_VALUE = "public-value-ok"
SECRET = "sp-secret"

RULES = [
    {"id": "no-vault", "tables": ["vault.*"], "action": "deny"},
    {"id": "public-ok", "tables": ["public.*"], "operations": ["select", "insert", "update", "delete"], "action": "allow"},
    {"id": "session-ok", "operations": ["set", "begin", "commit", "rollback", "savepoint", "show", "other"], "action": "allow"},
    {"id": "no-table-ok", "operations": ["select"], "action": "allow"},
]


@pytest.fixture(scope="module")
def sp_db() -> Iterator[str]:
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")
        c.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER")
        c.execute(f"CREATE DATABASE {DB} OWNER {ROLE}")
    with psycopg.connect(_admin_dsn(DB), autocommit=True) as c:
        c.execute("CREATE SCHEMA vault")
        c.execute('CREATE SCHEMA "Vault"')
        c.execute("CREATE TABLE vault.secrets (id int, v text)")
        c.execute("INSERT INTO vault.secrets VALUES (1, %s)", (MARKER,))
        c.execute('CREATE TABLE "Vault".secrets (id int, v text)')
        c.execute('INSERT INTO "Vault".secrets VALUES (1, %s)', (MARKER,))
        c.execute("CREATE TABLE public.secrets (id int, v text)")
        c.execute("INSERT INTO public.secrets VALUES (1, %s)", (PUBLIC_VALUE,))
        c.execute("CREATE TABLE vault.only_here (id int, v text)")
        c.execute("INSERT INTO vault.only_here VALUES (1, %s)", (MARKER,))
    yield DB
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture(scope="module")
def gw(sp_db: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    g = GatewayProcess(
        targets=[target("vaulted", f"postgresql://{ROLE}@127.0.0.1:5432/{sp_db}?sslmode=disable", "production")],
        identities=[{"name": "eve", "secret": SECRET}],
        rules=RULES,
        # Unparsed statements allowed (as in development), so that SET search_path TO a, b,
        # which sqlglot reads only by its first keyword, reaches the server.
        environments={"production": {"default_action": "deny", "allow_unparsed": True}},
        name="it-searchpath",
    )
    with g:
        yield g


@pytest.fixture()
def tap(gw: GatewayProcess) -> Iterator[Tap]:
    t = Tap(gw.host, gw.port)
    yield t
    t.close()


def _dsn(port: int, **params: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"postgresql://eve:{SECRET}@127.0.0.1:{port}/vaulted?sslmode=disable{extra}"


def _run(conn: psycopg.Connection, sql: str) -> str:
    """'rows: ...' or 'error: SQLSTATE'."""
    try:
        cur = conn.execute(sql)
        rows = cur.fetchall() if cur.description else []
        return f"rows: {rows}"
    except psycopg.Error as e:
        return f"error: {e.sqlstate}"


def _no_marker(tap: Tap) -> None:
    assert MARKER.encode() not in tap.received, "a vault row reached the client"


# -- each route that moves the path, then a bare read ------------------------------------------

ROUTES = {
    "set": ["SET search_path TO vault"],
    "set-session": ["SET SESSION search_path = vault, public"],
    "set-string": ["SET search_path TO 'vault'"],
    "set-quoted-mixed-case": ['SET search_path TO "Vault"'],
    "set-config": ["SELECT set_config('search_path', 'vault', false)"],
    "set-config-dollar": ["SELECT set_config($$search_path$$, $$vault, public$$, false)"],
    "set-config-in-where": ["SELECT 1 FROM (SELECT 1) x WHERE set_config('search_path', 'vault', false) IS NOT NULL"],
    "set-config-computed": ["SELECT set_config('search_path', 'va' || 'ult', false)"],
    "set-config-upper": ["SELECT SET_CONFIG('SEARCH_PATH', 'vault', FALSE)"],
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_a_moved_path_does_not_bypass_the_vault_rule(gw: GatewayProcess, tap: Tap, route: str, autocommit: bool) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=autocommit) as c:
        moved = all(not _run(c, sql).startswith("error") for sql in ROUTES[route])
        got = _run(c, "SELECT * FROM secrets")
        if moved:  # (a route the gateway refuses outright, such as a set_config it cannot read, moves nothing)
            assert got.startswith("error: 42501"), got
        if not autocommit:
            c.rollback()
        assert _run(c, "SELECT * FROM only_here").startswith("error:")
    _no_marker(tap)


def test_the_same_request_sets_the_path_and_reads(gw: GatewayProcess, tap: Tap) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        for sql in (
            "SET search_path TO vault; SELECT * FROM secrets",
            "SELECT set_config('search_path', 'vault', false); SELECT * FROM secrets",
            "BEGIN; SET LOCAL search_path TO vault; SELECT * FROM secrets; COMMIT",
        ):
            assert _run(c, sql).startswith("error: 42501"), sql
    _no_marker(tap)


def test_set_local_and_its_end(gw: GatewayProcess, tap: Tap) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        _run(c, "BEGIN")
        _run(c, "SET LOCAL search_path TO vault")
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
        _run(c, "ROLLBACK")
        # Back to the default path: the read resolves to public.secrets and is allowed.
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        _run(c, "BEGIN")
        _run(c, "SET LOCAL search_path TO vault")
        _run(c, "COMMIT")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
    _no_marker(tap)


def test_savepoints_and_rollbacks_restore_the_path(gw: GatewayProcess, tap: Tap) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        # A SET inside a transaction that is rolled back does not last ...
        _run(c, "BEGIN")
        _run(c, "SET search_path TO public")
        _run(c, "ROLLBACK")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        # ... and ROLLBACK TO SAVEPOINT restores the vault path set before the savepoint.
        _run(c, "BEGIN")
        _run(c, "SET search_path TO vault")
        _run(c, "SAVEPOINT a")
        _run(c, "SET search_path TO public")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        _run(c, "ROLLBACK TO SAVEPOINT a")
        _run(c, "COMMIT")
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
        # (A refused statement fails the transaction: its COMMIT rolls back, the path with it.)
        _run(c, "BEGIN")
        _run(c, "SET search_path TO public")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        assert _run(c, "SELECT * FROM only_here").startswith("error")  # public: no such table
        _run(c, "COMMIT")
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
        # A path change in a request that fails is undone by the server: the gateway follows.
        _run(c, "SET search_path TO vault")
        assert _run(c, "SET search_path TO public; SELECT 1/0").startswith("error: 22012")
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
        _run(c, "RESET search_path")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        _run(c, "SET search_path TO vault")
        _run(c, "RESET ALL")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        _run(c, "SET search_path TO vault")
        _run(c, "DISCARD ALL")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
    _no_marker(tap)


def test_startup_options_and_a_role_default(gw: GatewayProcess, tap: Tap, sp_db: str) -> None:
    with psycopg.connect(_dsn(tap.port), options="-c search_path=vault", autocommit=True) as c:
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
        _run(c, "RESET search_path")  # back to the session's value at start: vault still
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
    with psycopg.connect(_admin_dsn(sp_db), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {ROLE} SET search_path = vault")
    try:
        with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
            assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
            _run(c, "SET search_path TO public")
            assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
    finally:
        with psycopg.connect(_admin_dsn(sp_db), autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {ROLE} RESET search_path")
    _no_marker(tap)


def test_pipeline_mode_judges_with_every_candidate(gw: GatewayProcess, tap: Tap) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with c.pipeline():
                c.cursor().execute("SET search_path TO vault")
                c.cursor().execute("SELECT * FROM secrets")
        # The refusal failed the pipeline's implicit transaction: the SET was rolled back.
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        # With a Sync between them the SET holds, and the read (sent before any answer came
        # back) is judged with both the old and the new path.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with c.pipeline() as p:
                c.cursor().execute("SET search_path TO vault")
                p.sync()
                c.cursor().execute("SELECT * FROM secrets")
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
    _no_marker(tap)


def test_a_named_prepared_statement_is_decided_again_when_the_path_moves(gw: GatewayProcess, tap: Tap) -> None:
    async def main() -> list[str]:
        conn = await asyncpg.connect(_dsn(tap.port), ssl=False)
        out = []
        try:
            stmt = await conn.prepare("SELECT v FROM secrets")
            out.append(str(await stmt.fetch()))
            await conn.execute("SET search_path TO vault")
            try:
                out.append(str(await stmt.fetch()))
            except asyncpg.PostgresError as e:
                out.append(f"error: {e.sqlstate}")
        finally:
            await conn.close()
        return out

    first, second = asyncio.run(main())
    assert PUBLIC_VALUE in first
    assert second == "error: 42501", second
    _no_marker(tap)


def test_psql_routes(gw: GatewayProcess, tap: Tap) -> None:
    script = (
        "SET search_path TO vault;\n"
        "SELECT * FROM secrets;\n"
        "BEGIN;\nSET LOCAL search_path = \"Vault\";\nSELECT * FROM secrets;\nROLLBACK;\n"
        "SELECT set_config('search_path', 'vault', true);\nSELECT * FROM only_here;\n"
    )
    env = {**os.environ, "PGPASSWORD": SECRET, "PGCONNECT_TIMEOUT": "10"}
    proc = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(tap.port), "-U", "eve", "-d", "vaulted", "-c", "SELECT 1"],
        env=env, capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(tap.port), "-U", "eve", "-d", "vaulted"],
        input=script.encode(), env=env, capture_output=True, timeout=60,
    )
    assert b"no-vault" in proc.stderr
    _no_marker(tap)


def test_the_audit_record_says_where_names_resolved(gw: GatewayProcess, tap: Tap) -> None:
    since = gw.audit_offset()
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        _run(c, "SET search_path TO vault, public")
        _run(c, "SELECT * FROM secrets /* audit-probe */")
    events = [e for e in gw.audit_events(since) if e.get("event") == "statement.decided" and "audit-probe" in e.get("sql", "")]
    assert events, "no decided event"
    ev = events[-1]
    assert ev["action"] == "deny" and ev["rule_id"] == "no-vault"
    assert ev["resolved"] == {"secrets": ["vault.secrets"]}
    assert ev["search_path"] == [["pg_catalog", "vault", "public"]]


def test_the_gateways_question_leaves_the_clients_unnamed_statement_alone(gw: GatewayProcess, tap: Tap) -> None:
    """asyncpg without a statement cache prepares unnamed statements (Parse, Describe, Sync)
    and binds them in a second round trip; the gateway asks the server for the path between
    the two (the SET moved it), which must not destroy that statement."""
    async def main() -> list[str]:
        conn = await asyncpg.connect(_dsn(tap.port), ssl=False, statement_cache_size=0)
        out = []
        try:
            for sql in ("SET search_path TO vault", "SELECT 1", "SET search_path TO public", "SELECT v FROM secrets"):
                stmt = await conn.prepare(sql)
                out.append(str(await stmt.fetch()))
        finally:
            await conn.close()
        return out

    results = asyncio.run(main())
    assert PUBLIC_VALUE in results[-1], results
    _no_marker(tap)
