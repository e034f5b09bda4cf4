"""Issue 12 (attack report items 1-2): the server must read SQL text as the gateway does.

- `SET standard_conforming_strings = off` (and set_config, ...) is refused (`sql-reading`) in a
  development target, where unparsed statements are allowed; the smuggled DROP never runs, also
  when the SET and the payload are pipelined in one write.
- A database default of standard_conforming_strings = off refuses the login (FATAL); a switch
  the text check cannot see (a function of the database's own) refuses every later request
  until it is set back on.
- Identity tampering (item 3) in a development target: application_name in E'' / U&'' / $$
  spellings, U&"..." setting names, dynamic SQL in a DO block, SET ROLE / SESSION
  AUTHORIZATION / set_config('role'); MySQL @'...' / @"..." / @`...` variable names.
- Every client encoding of `encodings.py` decodes ASCII bytes (alone and after a lead byte) as
  the server's convert_from does; SHIFT_JIS_2004 + backslash_quote no longer smuggles a DROP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import pq
import pytest

from sqlward.adapters.postgres.encodings import _PG_TO_PYTHON, decoder_for
from tests.support.gateway import SECRETS, GatewayProcess, target

from .conftest import PGHOST, PGPORT, _admin_dsn, scratch_database

DB = "pgr12_reading"
PAYLOAD = b"SELECT 'a\\' , ' ; DROP TABLE pgr12_victim; SELECT 1; -- '"


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with scratch_database(DB) as name:
        yield name
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute("DROP ROLE IF EXISTS pgr12_other")


@pytest.fixture
def direct(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(_admin_dsn(db), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS pgr12_victim (id int)")
        yield c


def _targets(db: str) -> list[dict[str, Any]]:
    return [target("app", f"postgresql://postgres@{PGHOST}:{PGPORT}/{db}?sslmode=disable", "development")]


@pytest.fixture(scope="module")
def gw(db: str) -> Iterator[GatewayProcess]:
    rules = [{"id": "pgr12-no-drop", "operations": ["drop"], "action": "deny"}]
    with GatewayProcess(targets=_targets(db), rules=rules, name="pgr12") as g:
        yield g


def _victim_exists(direct: psycopg.Connection) -> bool:
    return direct.execute("SELECT to_regclass('public.pgr12_victim') IS NOT NULL").fetchone()[0]


def _run(pg: Any, sql: bytes) -> tuple[str, str]:
    r = pg.exec_(sql)
    message = r.error_message
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return pq.ExecStatus(r.status).name, message or ""


@pytest.mark.parametrize("setting", [
    b"SET standard_conforming_strings = off",
    b"SET SESSION \"standard_conforming_strings\" TO 'off'",
    b"SET LOCAL U&\"standard\\005fconforming_strings\" = off",
    b"SELECT set_config('standard_conforming_strings', 'off', false)",
    b"SELECT set_config(E'standard\\x5fconforming_strings', 'off', false)",
    b"UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    b"DO $$BEGIN EXECUTE 'SET standard_' || 'conforming_strings = off'; END$$",
])
def test_scs_off_is_refused_in_development(gw: GatewayProcess, direct: psycopg.Connection, setting: bytes) -> None:
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"]), autocommit=True) as c:
        pg = c.pgconn
        status, error = _run(pg, setting)
        # pg_settings writes and computed SQL in DO blocks may also rewrite the identity: either
        # built-in rule refuses them.
        assert status == "FATAL_ERROR" and ("sql-reading" in error or "identity-tampering" in error), (status, error)
        _run(pg, PAYLOAD)
        assert c.execute("SHOW standard_conforming_strings").fetchone()[0] == "on"
    assert _victim_exists(direct)


def test_scs_off_pipelined_with_payload(gw: GatewayProcess, direct: psycopg.Connection) -> None:
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"]), autocommit=True) as c:
        with pytest.raises(psycopg.Error):
            with c.pipeline():
                c.execute(b"SET standard_conforming_strings = off")
                c.execute(PAYLOAD)
    assert _victim_exists(direct)


def test_database_default_off_refuses_login(gw: GatewayProcess, direct: psycopg.Connection, db: str) -> None:
    direct.execute(f"ALTER DATABASE {db} SET standard_conforming_strings = off")
    try:
        with pytest.raises(psycopg.OperationalError, match="standard_conforming_strings"):
            psycopg.connect(gw.dsn("alice", SECRETS["alice"]), autocommit=True).close()
    finally:
        direct.execute(f"ALTER DATABASE {db} RESET standard_conforming_strings")


def test_switch_unseen_by_the_text_check_refuses_until_on(gw: GatewayProcess, direct: psycopg.Connection) -> None:
    direct.execute(
        "CREATE OR REPLACE FUNCTION pgr12_flip() RETURNS text LANGUAGE sql AS "
        "$f$ SELECT set_config(chr(115) || 'tandard_conforming_strings', 'off', false) $f$"
    )
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"]), autocommit=True) as c:
        pg = c.pgconn
        status, error = _run(pg, b"SELECT pgr12_flip()")
        assert status == "TUPLES_OK", error
        status, error = _run(pg, PAYLOAD)
        assert status == "FATAL_ERROR" and "standard_conforming_strings" in error, (status, error)
        status, error = _run(pg, b"SELECT 1")
        assert status == "FATAL_ERROR"
        status, error = _run(pg, b"SET standard_conforming_strings = on")
        assert status == "COMMAND_OK", error
        status, error = _run(pg, b"SELECT 1")
        assert status == "TUPLES_OK", error
    assert _victim_exists(direct)


def _samples() -> list[bytes]:
    out = [bytes([b]) for b in range(1, 0x80)]
    out += [bytes([lead, trail]) for lead in range(0x80, 0x100) for trail in range(0x01, 0x80)]
    return out


@pytest.mark.parametrize("encoding", sorted(_PG_TO_PYTHON))
def test_encoding_reads_ascii_as_the_server(direct: psycopg.Connection, encoding: str) -> None:
    decode = decoder_for(encoding)
    samples = _samples()
    server: dict[int, str | None] = {}
    try:
        rows = direct.execute(
            "SELECT i, convert_from(b, %s) FROM unnest(%s::bytea[]) WITH ORDINALITY AS u(b, i)", (encoding, samples)
        ).fetchall()
        server = {i - 1: v for i, v in rows}
    except psycopg.Error:
        for k, s in enumerate(samples):
            try:
                server[k] = direct.execute("SELECT convert_from(%s::bytea, %s)", (s, encoding)).fetchone()[0]
            except psycopg.Error:
                server[k] = None  # the server refuses these bytes: a statement holding them fails
    wrong = []
    for k, s in enumerate(samples):
        theirs = server.get(k)
        if theirs is None:
            continue
        ours = decode(s)
        if [c for c in ours if ord(c) < 0x80] != [c for c in theirs if ord(c) < 0x80]:
            wrong.append((s.hex(), theirs, ours))
    assert not wrong, wrong[:10]


def test_shift_jis_2004_backslash_smuggle(gw: GatewayProcess, direct: psycopg.Connection) -> None:
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], client_encoding="SHIFT_JIS_2004"), autocommit=True) as c:
        pg = c.pgconn
        assert _run(pg, b"SET backslash_quote = on")[0] == "COMMAND_OK"
        status, error = _run(pg, b"SELECT E'a\\' , ' ; DROP TABLE pgr12_victim; SELECT 1; -- '")
        assert status == "FATAL_ERROR" and "pgr12-no-drop" in error, (status, error)
    assert _victim_exists(direct)


# -- item 3: identity tampering through the real gateway, in a development target ---------------

IDENTITY_SQL = b"SELECT current_setting('sqlward.identity'), current_setting('application_name'), current_user"


@pytest.mark.parametrize("attempt", [
    b"SET application_name = E'\\x73qlward:bob'",
    b"SET application_name = U&'\\0073qlward:bob'",
    b"SET application_name = $$SQLWARD:bob$$",
    b"SET U&\"\\0073qlward\".identity = 'bob'",
    b"DO $$BEGIN EXECUTE 'SET sqlw'||'ard.identity = ''bob'''; END$$",
    b"SET ROLE pgr12_other",
    b"SET SESSION AUTHORIZATION pgr12_other",
    b"SELECT set_config('role', 'pgr12_other', false)",
])
def test_pg_identity_tampering_refused(gw: GatewayProcess, direct: psycopg.Connection, attempt: bytes) -> None:
    direct.execute("DO $$BEGIN CREATE ROLE pgr12_other; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"]), autocommit=True) as c:
        before = c.execute(IDENTITY_SQL).fetchone()
        status, error = _run(c.pgconn, attempt)
        assert status == "FATAL_ERROR" and "identity-tampering" in error, (status, error)
        assert c.execute(IDENTITY_SQL).fetchone() == before
        assert c.execute("RESET ROLE").statusmessage == "RESET"


MY_DB = "pgr12_my"


@pytest.fixture(scope="module")
def my_gw() -> Iterator[GatewayProcess]:
    pymysql = pytest.importorskip("pymysql")
    root = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    root.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {MY_DB}")
    try:
        my_target = target("app", f"mysql://root@127.0.0.1:3306/{MY_DB}?sslmode=disable", "development", protocol="mysql")
        with GatewayProcess(targets=[my_target], listener={"protocol": "mysql", "default_target": "app"}, name="pgr12-my") as g:
            yield g
    finally:
        root.cursor().execute(f"DROP DATABASE IF EXISTS {MY_DB}")
        root.close()


@pytest.mark.parametrize("attempt", [
    "SET @'sqlward_identity' = 'bob'",
    'SET @"sqlward_identity" = \'bob\'',
    "SET @`SQLWARD_IDENTITY` = 'bob'",
    "SELECT 'bob' INTO @'sqlward_identity'",
    'SELECT \'bob\' INTO @"sqlward_identity"',
    "SELECT 'bob' INTO @`sqlward_identity`",
])
def test_mysql_identity_tampering_refused(my_gw: GatewayProcess, attempt: str) -> None:
    import pymysql

    c = pymysql.connect(host=my_gw.host, port=my_gw.port, user="alice", password=SECRETS["alice"], database="app", autocommit=True)
    try:
        cur = c.cursor()
        cur.execute("SELECT @sqlward_identity")
        before = cur.fetchall()
        with pytest.raises(pymysql.MySQLError, match="identity-tampering"):
            cur.execute(attempt)
        cur.execute("SELECT @sqlward_identity")
        assert cur.fetchall() == before
    finally:
        c.close()


@pytest.mark.parametrize("encoding", ["GBK", "SJIS", "BIG5", "SHIFT_JIS_2004"])
def test_client_encoding_switch_pipelined_with_payload(gw: GatewayProcess, direct: psycopg.Connection, encoding: str) -> None:
    """SET client_encoding and a payload sent in one write: the payload is not read in the old
    encoding (a lead byte before a backslash would hide the end of an E'' literal)."""
    from tests.support import pgwire

    lead = b"\xbf" if encoding in ("GBK", "BIG5") else b"\x83"
    payload = b"SELECT E'a" + lead + b"\\' ; DROP TABLE pgr12_victim; SELECT 1; --'"
    with pgwire.RawConn.connect(gw.host, gw.port) as conn:
        conn.send(pgwire.startup_message({"user": "alice", "database": "app"}))
        conn.authenticate("alice", SECRETS["alice"])
        conn.send(pgwire.query("SET backslash_quote = on"))
        conn.read_until("Z")
        conn.send(pgwire.query(f"SET client_encoding = '{encoding}'") + pgwire.msg(b"Q", payload + b"\0"))
        conn.read_until("Z")
        conn.read_until("Z")
    assert _victim_exists(direct)


def test_switch_unseen_by_the_text_check_pipelined_with_payload(gw: GatewayProcess, direct: psycopg.Connection) -> None:
    """A function of the database turns standard_conforming_strings off; the payload sent in the
    same write (before its ParameterStatus) is refused, not read as scs = on."""
    from tests.support import pgwire

    direct.execute(
        "CREATE OR REPLACE FUNCTION pgr12_flip() RETURNS text LANGUAGE sql AS "
        "$f$ SELECT set_config(chr(115) || 'tandard_conforming_strings', 'off', false) $f$"
    )
    with pgwire.RawConn.connect(gw.host, gw.port) as conn:
        conn.send(pgwire.startup_message({"user": "alice", "database": "app"}))
        conn.authenticate("alice", SECRETS["alice"])
        conn.send(pgwire.query("SELECT pgr12_flip()") + pgwire.msg(b"Q", PAYLOAD + b"\0"))
        conn.read_until("Z")
        second = conn.read_until("Z")
        assert any(m.type == "E" for m in second)
    assert _victim_exists(direct)
