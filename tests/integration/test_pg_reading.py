"""Issue 12 (attack report items 1-2): the server must read SQL text as the gateway does.

- `SET standard_conforming_strings = off` (and set_config, ...) is refused (`sql-reading`) in a
  development target, where unparsed statements are allowed; the smuggled DROP never runs, also
  when the SET and the payload are pipelined in one write.
- A database default of standard_conforming_strings = off refuses the login (FATAL); a switch
  the text check cannot see (a function of the database's own) refuses every later request
  until it is set back on.
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
        assert status == "FATAL_ERROR" and "sql-reading" in error, (status, error)
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
