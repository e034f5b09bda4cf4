"""Attacks on PostgreSQL name resolution (issue 11): make the gateway resolve a bare table name
differently from the server, so that a row of a denied schema reaches the client, or make the
gateway's own search_path question break a legitimate client.

Same policy shape as `test_search_path.py`: deny `vault.*` (and `sqlward_sp_attack_vault.*`, the
schema of a role of that name, for "$user"), allow `public.*`, default deny, unparsed
statements allowed. Every test asserts the secure behaviour: no marker byte reaches the client
(a byte tap records what it receives), and legitimate reads / protocol state keep working.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq

from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

from .conftest import VIA, _admin_dsn

DB = "sqlward_sp_attack"
ROLE = "sqlward_sp_attack_up"
# A role whose name is a denied schema's: "$user" in the default path resolves there.
USER_SCHEMA = "sqlward_sp_attack_vault"
# A denied schema that does not exist yet when the session asks for its path.
LATE_SCHEMA = "sqlward_sp_attack_late"
MARKER = "vault-marker-Zq81x"
PUBLIC_VALUE = "public-value-ok"
SECRET = "sp-attack-secret"

RULES = [
    {"id": "no-vault", "tables": ["vault.*", f"{USER_SCHEMA}.*", f"{LATE_SCHEMA}.*"], "action": "deny"},
    {"id": "public-ok", "tables": ["public.*"], "operations": ["select", "insert", "update", "delete"], "action": "allow"},
    {"id": "session-ok", "operations": ["set", "begin", "commit", "rollback", "savepoint", "show", "other", "listen"], "action": "allow"},
    {"id": "no-table-ok", "operations": ["select"], "action": "allow"},
]


@pytest.fixture(scope="module")
def atk_db() -> Iterator[str]:
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")
        c.execute(f"DROP ROLE IF EXISTS {USER_SCHEMA}")
        c.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER")
        c.execute(f"CREATE ROLE {USER_SCHEMA} NOLOGIN")
        c.execute(f"CREATE DATABASE {DB} OWNER {ROLE}")
    with psycopg.connect(_admin_dsn(DB), autocommit=True) as c:
        c.execute("CREATE SCHEMA vault")
        for t in ("secrets", "only_here", "pg_secrets"):
            c.execute(f"CREATE TABLE vault.{t} (id int, v text)")
            c.execute(f"INSERT INTO vault.{t} VALUES (1, %s)", (MARKER,))
        for t in ("secrets", "fresh"):
            c.execute(f"CREATE TABLE public.{t} (id int, v text)")
            c.execute(f"INSERT INTO public.{t} VALUES (1, %s)", (PUBLIC_VALUE,))
        c.execute("CREATE TABLE public.log_t (v text)")
        c.execute(f"CREATE SCHEMA {USER_SCHEMA}")
        c.execute(f"CREATE TABLE {USER_SCHEMA}.secrets (id int, v text)")
        c.execute(f"INSERT INTO {USER_SCHEMA}.secrets VALUES (1, %s)", (MARKER,))
        c.execute(f"GRANT USAGE ON SCHEMA {USER_SCHEMA}, public TO {USER_SCHEMA}")
        c.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {USER_SCHEMA}, public TO {USER_SCHEMA}")
        # An application's helper (its author's, not the attacker's) whose name sqlglot knows
        # (nvl -> coalesce) but PostgreSQL has no built-in of: it moves the caller's path.
        c.execute(
            "CREATE FUNCTION public.nvl(a text, b text) RETURNS text LANGUAGE sql AS "
            "$$ SELECT pg_catalog.set_config('search_path', 'vault, public', false) || coalesce(a, b) $$"
        )
    yield DB
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS {USER_SCHEMA}")
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture(scope="module")
def gw(atk_db: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    g = GatewayProcess(
        targets=[target("vaulted", f"postgresql://{ROLE}@127.0.0.1:5432/{atk_db}?sslmode=disable", "production")],
        identities=[{"name": "mallory", "secret": SECRET}],
        rules=RULES,
        environments={"production": {"default_action": "deny", "allow_unparsed": True}},
        name="it-searchpath-attacks",
    )
    with g:
        yield g


@pytest.fixture()
def tap(gw: GatewayProcess) -> Iterator[Tap]:
    t = Tap(gw.host, gw.port)
    yield t
    t.close()


def _dsn(port: int) -> str:
    return f"postgresql://mallory:{SECRET}@127.0.0.1:{port}/vaulted?sslmode=disable"


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


# -- routes the tracker cannot read as path moves: the next bare read resolves wrongly --------

# Each moves the server's path onto vault (or "$user" onto a denied schema); the gateway must
# either see the move, ask the server, or refuse. Then `SELECT * FROM secrets` in its own request.
HIDDEN_MOVES = {
    # GUC names are case-insensitive even when quoted: the server sets search_path.
    "quoted-upper-guc-name": 'SET "SEARCH_PATH" TO vault',
    "quoted-mixed-guc-name": 'SET SESSION "Search_Path" = vault',
    # A Unicode-escaped identifier names the same GUC.
    "unicode-escape-guc-name": 'SET U&"search_path" TO vault',
    # "$user" follows the session user: the default path "$user", public now starts with a
    # denied schema.
    "set-session-authorization": f"SET SESSION AUTHORIZATION {USER_SCHEMA}",
    # A user function whose name sqlglot knows (nvl, read as coalesce) counts as a built-in.
    "user-function-named-like-a-sqlglot-function": "SELECT nvl('a', 'b')",
    "qualified-user-function-named-like-a-builtin": "SELECT public.nvl('a', 'b')",
}


@pytest.mark.parametrize("route", sorted(HIDDEN_MOVES))
def test_a_hidden_path_move_does_not_leak(gw: GatewayProcess, tap: Tap, route: str) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        _run(c, HIDDEN_MOVES[route])
        got = _run(c, "SELECT * FROM secrets")
        assert MARKER not in got, f"{route}: the server read a denied schema: {got}"
        assert got.startswith("error: 42501") or PUBLIC_VALUE in got, got
    _no_marker(tap)


# Moves the tracker must see (or give up on) - regressions: each must end refused or harmless.
SEEN_MOVES = {
    "set-config-in-from": "SELECT * FROM set_config('search_path', 'vault', false)",
    "qualified-set-config-in-from": "SELECT * FROM pg_catalog.set_config('search_path', 'vault', false)",
    "quoted-qualified-set-config": "SELECT \"pg_catalog\".\"set_config\"('search_path', 'vault', false)",
    "unicode-escape-set-config": "SELECT U&\"set_config\"('search_path', 'vault', false)",
    "set-config-rows-from": "SELECT * FROM ROWS FROM (set_config('search_path', 'vault', false))",
    "set-config-values": "VALUES (set_config('search_path', 'vault', false))",
    "set-config-order-by": "SELECT x FROM (VALUES (1)) v(x) ORDER BY set_config('search_path', 'vault', false)",
    "set-config-lateral": "SELECT * FROM (SELECT 1) a, LATERAL (SELECT set_config('search_path', 'vault', false)) b",
    "set-config-cte": "WITH x AS (SELECT set_config('search_path', 'vault', false)) SELECT * FROM x",
    "set-config-e-string": "SELECT set_config(E'search_path', E'vault', false)",
    "set-config-named-args": "SELECT set_config(setting_name => 'search_path', new_value => 'vault', is_local => false)",
    "set-config-cast": "SELECT set_config('search_path', 'vault'::text, false)",
    "set-config-padded-name": "SELECT set_config('SEARCH_PATH', 'vault', false)",
    "explain-analyze-set-config": "EXPLAIN ANALYZE SELECT set_config('search_path', 'vault', false)",
    "set-comments": "SET /* a */ search_path /* b */ TO /* c */ vault -- d",
    "set-multiline": "SET\nsearch_path\n=\nvault\n,\npublic",
    "set-dollar-tag": "SET search_path TO $x$vault$x$",
    "set-unicode-value": 'SET search_path TO U&"\\0076ault", public',
    "set-session-role": f"SET SESSION ROLE {USER_SCHEMA}",
    "set-role": f"SET ROLE {USER_SCHEMA}",
    "update-pg-settings": "UPDATE pg_settings SET setting = 'vault' WHERE name = 'search_path'",
    "prepare-execute": "PREPARE p AS SELECT set_config('search_path', 'vault', false); EXECUTE p",
    "tiny-statement-timeout": "SET statement_timeout = 1; SET search_path TO vault",
}


@pytest.mark.parametrize("route", sorted(SEEN_MOVES))
def test_a_seen_path_move_does_not_leak(gw: GatewayProcess, tap: Tap, route: str) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        _run(c, SEEN_MOVES[route])
        for read in ("SELECT * FROM secrets", "SELECT * FROM only_here"):
            got = _run(c, read)
            assert MARKER not in got, f"{route}: {read}: {got}"
    _no_marker(tap)


SAME_REQUEST = {
    "quoted-upper-guc-name": 'SET "SEARCH_PATH" TO vault; SELECT * FROM secrets',
    "unicode-value": 'SET search_path TO U&"\\0076ault", public; SELECT * FROM secrets',
    "unicode-escape-set-config": "SELECT U&\"set_config\"('search_path', 'vault', false); SELECT * FROM secrets",
    "set-session-authorization": f"SET SESSION AUTHORIZATION {USER_SCHEMA}; SELECT * FROM secrets",
    "sqlglot-named-user-function": "SELECT nvl('a', 'b'); SELECT * FROM secrets",
    # A quoted upper-case schema that does not exist: the catalogue is keyed in lower case, so
    # "PUBLIC" looks like it holds public's table; the server skips it and reads vault.
    "quoted-upper-public-first": 'SET search_path TO "PUBLIC", vault; SELECT * FROM secrets',
    "set-config-quoted-upper-public-first": (
        "SELECT set_config('search_path', '\"PUBLIC\", vault', false); SELECT * FROM secrets"
    ),
    "cursor-fetch": (
        "BEGIN; DECLARE c CURSOR FOR SELECT set_config('search_path', 'vault', false); FETCH c; "
        "SELECT * FROM secrets; COMMIT"
    ),
}


@pytest.mark.parametrize("route", sorted(SAME_REQUEST))
def test_the_same_request_moves_and_reads(gw: GatewayProcess, tap: Tap, route: str) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        got = _run(c, SAME_REQUEST[route])  # (psycopg shows the last result: the tap sees all)
        assert MARKER not in got, got
    _no_marker(tap)


def test_a_prepared_statement_survives_no_hidden_move(gw: GatewayProcess, tap: Tap) -> None:
    """A named statement decided under public must be decided again after the path moved, however
    the move was spelled."""
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        cur = c.cursor()
        cur.execute("SELECT v FROM secrets", prepare=True)
        assert PUBLIC_VALUE in str(cur.fetchall())
        _run(c, 'SET "SEARCH_PATH" TO vault')
        try:
            cur.execute("SELECT v FROM secrets", prepare=True)
            got = str(cur.fetchall())
        except psycopg.Error as e:
            got = f"error: {e.sqlstate}"
        assert MARKER not in got, got
    _no_marker(tap)


# -- resolution through the catalogue -----------------------------------------------------------


def test_pg_named_table_in_a_user_schema(gw: GatewayProcess, tap: Tap) -> None:
    """pg_catalog comes first, but holds no pg_secrets: the server reads vault.pg_secrets."""
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        for path in ("vault, public", "public, vault", "vault, pg_catalog, public"):
            _run(c, f"SET search_path TO {path}")
            got = _run(c, "SELECT * FROM pg_secrets")
            assert MARKER not in got, f"{path}: {got}"
    _no_marker(tap)


def test_a_table_created_in_the_vault_after_the_catalogue_was_read(gw: GatewayProcess, tap: Tap, atk_db: str) -> None:
    """The catalogue says only public holds `fresh`; an administrator then creates vault.fresh
    on the server itself. With vault first in the path the server reads vault.fresh."""
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        _run(c, "SET search_path TO vault, public")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM fresh")  # the catalogue is read now
        with psycopg.connect(_admin_dsn(atk_db), autocommit=True) as admin:
            admin.execute("CREATE TABLE vault.fresh (id int, v text)")
            admin.execute("INSERT INTO vault.fresh VALUES (1, %s)", (MARKER,))
        try:
            got = _run(c, "SELECT * FROM fresh")
            assert MARKER not in got, f"stale catalogue: {got}"
        finally:
            with psycopg.connect(_admin_dsn(atk_db), autocommit=True) as admin:
                admin.execute("DROP TABLE vault.fresh")
    _no_marker(tap)


# -- the gateway's own question must not change the client's protocol state ----------------------


def _results(pg: pq.PGconn, n: int) -> list[tuple[int, str]]:
    """n results of a pipeline (each followed by its None), as (status, sqlstate or tag)."""
    out: list[tuple[int, str]] = []
    while len(out) < n:
        pg.consume_input()
        while pg.is_busy():
            select.select([pg.socket], [], [], 5)
            pg.consume_input()
        r = pg.get_result()
        if r is None:
            continue
        state = r.error_field(pq.DiagnosticField.SQLSTATE)
        out.append((r.status, (state or b"").decode() or (r.command_status or b"").decode()))
    return out


def test_the_question_does_not_commit_an_unsynced_pipeline(gw: GatewayProcess, tap: Tap) -> None:
    """libpq pipeline mode with a flush request (no Sync): the statements so far run in one
    implicit transaction, which an error before the Sync rolls back. A Sync the gateway puts in
    between (its search_path question) would commit them early."""
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        _run(c, "DELETE FROM log_t")
        pg = c.pgconn
        pg.enter_pipeline_mode()
        try:
            pg.send_query_params(b"SET search_path TO public", None)
            pg.send_query_params(b"INSERT INTO log_t VALUES ('unsynced')", None)
            pg.send_flush_request()
            pg.flush()
            first = _results(pg, 2)
            assert [s for s, _ in first] == [pq.ExecStatus.COMMAND_OK] * 2, first
            pg.send_query_params(b"SELECT 1/0", None)
            pg.pipeline_sync()
            pg.flush()
            second = _results(pg, 2)
            assert second[0][1] == "22012", second
            assert second[1][0] == pq.ExecStatus.PIPELINE_SYNC, second
        finally:
            while pg.get_result() is not None:
                pass
            pg.exit_pipeline_mode()
        # The failed pipeline's implicit transaction rolled back: the INSERT is gone.
        assert _run(c, "SELECT count(*) FROM log_t") == "rows: [(0,)]"
    _no_marker(tap)


def test_the_question_does_not_close_a_suspended_unnamed_portal(gw: GatewayProcess, tap: Tap) -> None:
    """A partly fetched unnamed portal (Execute with a row limit, Flush) lives until the Sync;
    the gateway's question must not end it."""
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        pg = c.pgconn
        def msg(t: bytes, body: bytes) -> bytes:
            return t + struct.pack("!i", len(body) + 4) + body

        out = (
            msg(b"P", b"\0SET search_path TO public\0\0\0")
            + msg(b"B", b"\0\0" + b"\0\0\0\0\0\0")
            + msg(b"E", b"\0" + struct.pack("!i", 0))
            + msg(b"P", b"\0SELECT g FROM generate_series(1, 5) g\0\0\0")
            + msg(b"B", b"\0\0" + b"\0\0\0\0\0\0")
            + msg(b"E", b"\0" + struct.pack("!i", 2))
            + msg(b"H", b"")
        )
        sock = socket.socket(fileno=pg.socket)
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            sock.sendall(out)
            got = b""
            while b"s\0\0\0\x04" not in got:  # PortalSuspended
                chunk = sock.recv(65536)
                assert chunk, got
                got += chunk
            sock.sendall(msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S", b""))
            rest = b""
            while b"Z\0\0\0\x05" not in rest:
                chunk = sock.recv(65536)
                assert chunk, rest
                rest += chunk
        finally:
            sock.detach()
        # The rest of the portal came back, no error (34000: portal does not exist).
        assert b"34000" not in rest, rest
        assert b"SELECT 3" in rest, rest
    _no_marker(tap)


def test_notifications_pass_around_the_question(gw: GatewayProcess, tap: Tap, atk_db: str) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        payloads: list[str] = []
        c.add_notify_handler(lambda n: payloads.append(n.payload))
        assert _run(c, "LISTEN sp_attack_chan") == "rows: []"
        with psycopg.connect(_admin_dsn(atk_db), autocommit=True) as admin:
            admin.execute("NOTIFY sp_attack_chan, 'one'")
        _run(c, "SET search_path TO vault")  # dirty: the next request asks first
        with psycopg.connect(_admin_dsn(atk_db), autocommit=True) as admin:
            admin.execute("NOTIFY sp_attack_chan, 'two'")
        assert _run(c, "SELECT * FROM secrets").startswith("error: 42501")
        _run(c, "SELECT 1")
        assert payloads == ["one", "two"], payloads
    _no_marker(tap)


def test_a_denied_schema_created_after_the_path_was_read(gw: GatewayProcess, tap: Tap, atk_db: str) -> None:
    """The server's answer (current_schemas) leaves out schemas that do not exist: the path
    `late, public` is known as `public`. An administrator then creates the schema and a table in
    it: the server now reads late.secrets, with no statement of the session moving anything."""
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        _run(c, f"SET search_path TO {LATE_SCHEMA}, public")
        assert PUBLIC_VALUE in _run(c, "SELECT * FROM secrets")
        with psycopg.connect(_admin_dsn(atk_db), autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {LATE_SCHEMA}")
            admin.execute(f"CREATE TABLE {LATE_SCHEMA}.secrets (id int, v text)")
            admin.execute(f"INSERT INTO {LATE_SCHEMA}.secrets VALUES (1, %s)", (MARKER,))
        try:
            got = _run(c, "SELECT * FROM secrets")
            assert MARKER not in got, f"schema created later: {got}"
        finally:
            with psycopg.connect(_admin_dsn(atk_db), autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {LATE_SCHEMA} CASCADE")
    _no_marker(tap)


def test_a_function_call_message_moving_the_path(gw: GatewayProcess, tap: Tap) -> None:
    """FunctionCall ('F') runs set_config (oid 2078) without SQL text: refused, or followed."""
    def msg(t: bytes, body: bytes) -> bytes:
        return t + struct.pack("!i", len(body) + 4) + body

    def arg(v: bytes) -> bytes:
        return struct.pack("!i", len(v)) + v

    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        sock = socket.socket(fileno=c.pgconn.socket)
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            call = struct.pack("!ihhh", 2078, 1, 0, 3) + arg(b"search_path") + arg(b"vault") + arg(b"false") + struct.pack("!h", 0)
            for out in (msg(b"F", call), msg(b"Q", b"SELECT v FROM secrets\0")):
                sock.sendall(out)
                got = b""
                while b"Z\0\0\0\x05" not in got:
                    chunk = sock.recv(65536)
                    assert chunk, got
                    got += chunk
        finally:
            sock.detach()
    _no_marker(tap)


def test_pipeline_mode_with_a_quoted_upper_case_schema_first(gw: GatewayProcess, tap: Tap) -> None:
    """psycopg pipeline mode: the read is judged before the server's answer, with the traced
    list "PUBLIC", vault as a candidate; "PUBLIC" does not exist, the server reads vault."""
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        try:
            with c.pipeline() as p:
                c.cursor().execute('SET search_path TO "PUBLIC", vault')
                p.sync()
                cur = c.cursor()
                cur.execute("SELECT v FROM secrets")
            got = str(cur.fetchall())
        except psycopg.Error as e:
            got = f"error: {e.sqlstate}"
        assert MARKER not in got, got
    _no_marker(tap)
