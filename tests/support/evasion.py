"""Helpers for the attacker's tests of issue 11 (tests/integration/test_evasion_paths.py,
tests/integration/mysql/test_evasion_paths.py, tests/property/test_mask_compose.py,
tests/property/test_search_path_props.py).

An attack is a short script of statements sent on one session by one client; each statement
may be answered or refused, and the script goes on either way (as an attacker would). What the
tests assert is observable behaviour only, read on the bytes a `tests.support.tap.Tap` recorded:

* `leaks(data, secrets)`: which secret byte strings appear in what the client received;
* yes / no probes: `run_*_probe_pair` sends a probe with the true guess and with a wrong guess on
  the same session, between marker statements, and cuts the bytes the client received for each
  probe (`segments`): the client must not tell them apart (both refused, or byte-identical).

Clients: PostgreSQL through psycopg (text, binary), asyncpg (prepared statements) and psql;
MySQL through PyMySQL, mysql-connector (prepared, pure Python) and the mariadb CLI.
Each runner returns one outcome per statement: "ok" or the SQLSTATE / errno of the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import asyncpg
import mysql.connector
import psycopg
import pymysql

from tests.support.tap import Tap

PG_REFUSED = "42501"
MY_REFUSED = "1227"

PG_CLIENTS = ("psycopg-text", "psycopg-binary", "asyncpg", "psql")
MY_CLIENTS = ("pymysql", "connector-prepared", "mariadb-cli")


def leaks(data: bytes, secrets: Sequence[bytes]) -> list[bytes]:
    return [s for s in secrets if s in data]


def marker(n: int) -> str:
    return f"sqlward-probe-mark-{n}"


def segments(data: bytes, n: int = 3) -> list[bytes]:
    """The bytes between the markers 1..n (each marker is the value of a one-row SELECT), the
    markers' own numbers blanked."""
    out = []
    for i in range(1, n):
        a = data.find(marker(i).encode())
        b = data.find(marker(i + 1).encode(), a + 1)
        assert a >= 0 and b > a, f"probe markers {i} and {i + 1} not found in what the client received"
        # MySQL names a column after its literal: the markers themselves are the same for both
        # probes once their number is blanked.
        out.append(re.sub(rb"sqlward-probe-mark-\d", b"sqlward-probe-mark-#", data[a + len(marker(i)) : b]))
    return out


def probe_script(setup: Sequence[str], probe_true: str, probe_false: str) -> list[str]:
    return [
        *setup,
        f"SELECT '{marker(1)}'",
        probe_true,
        f"SELECT '{marker(2)}'",
        probe_false,
        f"SELECT '{marker(3)}'",
    ]


@dataclass
class ProbeResult:
    outcomes: list[str]
    true_outcome: str
    false_outcome: str
    true_bytes: bytes
    false_bytes: bytes
    received: bytes
    timings: list[float] = field(default_factory=list)

    def indistinguishable(self, refused: str) -> bool:
        if self.true_outcome == refused and self.false_outcome == refused:
            return True
        return self.true_bytes == self.false_bytes

    def explain(self) -> str:
        return (
            f"true guess -> {self.true_outcome}, wrong guess -> {self.false_outcome}; "
            f"bytes differ: {self.true_bytes[:300]!r} vs {self.false_bytes[:300]!r}"
        )


# -- PostgreSQL ---------------------------------------------------------------------------------

PGHOST = os.environ.get("SQLWARD_IT_PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("SQLWARD_IT_PGPORT", "5432"))


def pg_admin_dsn(dbname: str = "postgres") -> str:
    """The local PostgreSQL as its superuser (trust), for fixtures."""
    return f"postgresql://postgres@{PGHOST}:{PGPORT}/{dbname}?sslmode=disable"


@contextlib.contextmanager
def exclusive(name: str, wait: float = 100.0) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock named `name` while a module owns its databases and
    roles: two test runs on one machine wait for each other instead of dropping each other's
    database halfway (CI runs once; a shared development machine may not)."""
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as c:
        deadline = time.monotonic() + wait
        while not c.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [name]).fetchone()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"another test run holds {name!r}")
            time.sleep(0.5)
        try:
            yield
        finally:
            c.execute("SELECT pg_advisory_unlock(hashtext(%s))", [name])



@dataclass
class PgSession:
    """How to reach a target through a tap: user, password, target name, extra startup."""

    port: int
    user: str
    password: str
    dbname: str
    options: str = ""  # the libpq `options` startup parameter ("-c search_path=...")

    def dsn(self) -> str:
        from urllib.parse import quote

        q = "sslmode=disable"
        if self.options:
            q += "&options=" + quote(self.options, safe="")
        return f"postgresql://{quote(self.user)}:{quote(self.password)}@127.0.0.1:{self.port}/{self.dbname}?{q}"


def _sqlstate_of(e: BaseException) -> str:
    s = getattr(e, "sqlstate", None)
    return str(s) if s else f"error:{type(e).__name__}"


def run_pg(client: str, sess: PgSession, steps: Sequence[str], timings: list[float] | None = None) -> list[str]:
    """Send each step on one session; return "ok" or the SQLSTATE per step."""
    if client in ("psycopg-text", "psycopg-binary"):
        return _run_psycopg(sess, steps, binary=client == "psycopg-binary", timings=timings)
    if client == "asyncpg":
        return asyncio.run(_run_asyncpg(sess, steps, timings))
    if client == "psql":
        return _run_psql(sess, steps, timings)
    raise ValueError(client)


def _run_psycopg(sess: PgSession, steps: Sequence[str], binary: bool, timings: list[float] | None) -> list[str]:
    out = []
    with psycopg.connect(sess.dsn(), autocommit=True, prepare_threshold=None) as c:
        for sql in steps:
            t0 = time.monotonic()
            try:
                # A multi-statement string needs the simple protocol (text results).
                cur = c.cursor(binary=binary and not _is_multi(sql))
                cur.execute(sql)
                while True:
                    if cur.description is not None:
                        cur.fetchall()
                    if not cur.nextset():
                        break
                out.append("ok")
            except psycopg.Error as e:
                out.append(_sqlstate_of(e))
            if timings is not None:
                timings.append(time.monotonic() - t0)
    return out


def _is_multi(sql: str) -> bool:
    s = sql.strip().rstrip(";")
    return ";" in s and "$$" not in s


async def _run_asyncpg(sess: PgSession, steps: Sequence[str], timings: list[float] | None) -> list[str]:
    kw: dict[str, Any] = {}
    if sess.options:
        # asyncpg sends server settings as startup parameters of their own (no `options`).
        settings = {}
        for part in sess.options.split("-c")[1:]:
            k, _, v = part.strip().partition("=")
            settings[k.strip()] = v.strip()
        kw["server_settings"] = settings
    conn = await asyncpg.connect(
        host="127.0.0.1", port=sess.port, user=sess.user, password=sess.password, database=sess.dbname,
        ssl=False, statement_cache_size=0, command_timeout=3, **kw,
    )
    out = []
    try:
        for sql in steps:
            t0 = time.monotonic()
            try:
                if _is_multi(sql):
                    await conn.execute(sql)
                else:
                    st = await conn.prepare(sql)
                    await st.fetch()
                out.append("ok")
            except asyncpg.PostgresError as e:
                out.append(_sqlstate_of(e))
            except (asyncpg.InterfaceError, asyncio.TimeoutError) as e:
                # A step the gateway never answers (or a session it closed) counts as failed;
                # the script goes on as far as the session allows.
                out.append(f"error:{type(e).__name__}")
            if timings is not None:
                timings.append(time.monotonic() - t0)
    finally:
        try:
            await conn.close(timeout=3)
        except Exception:  # noqa: BLE001 - a session the gateway broke is closed anyway
            conn.terminate()
    return out


def _run_psql(sess: PgSession, steps: Sequence[str], timings: list[float] | None) -> list[str]:
    """psql sends each `-c` string as one simple query, in one session, and goes on after an
    error; after each step, `\\echo :SQLSTATE` prints its outcome (00000 when it succeeded)."""
    args = ["psql", sess.dsn(), "-X", "-q", "-v", "ON_ERROR_STOP=0"]
    for sql in steps:
        args += ["-c", sql, "-c", "\\echo sqlward-outcome :SQLSTATE"]
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    if timings is not None:
        timings.append(time.monotonic() - t0)
    codes = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("sqlward-outcome ")]
    out = ["ok" if c == "00000" else c for c in codes]
    out += ["error:psql-ended"] * (len(steps) - len(out))
    return out


def run_pg_probe_pair(
    client: str, sess: PgSession, tap: Tap, setup: Sequence[str], probe_true: str, probe_false: str
) -> ProbeResult:
    """Run the probe with the true guess and with a wrong guess on one session (between
    markers) and cut out what the client received for each."""
    steps = probe_script(setup, probe_true, probe_false)
    tap.reset()
    timings: list[float] = []
    outcomes = run_pg(client, sess, steps, timings)
    received = tap.received
    n = len(setup)
    t_out, f_out = outcomes[n + 1], outcomes[n + 3]
    tb, fb = segments(received)
    return ProbeResult(outcomes, t_out, f_out, tb, fb, received, timings)


# -- MySQL / MariaDB ----------------------------------------------------------------------------


@dataclass
class MySession:
    port: int
    user: str
    password: str
    database: str


def run_my(client: str, sess: MySession, steps: Sequence[str], timings: list[float] | None = None) -> list[str]:
    if client == "pymysql":
        return _run_pymysql(sess, steps, timings)
    if client == "connector-prepared":
        return _run_connector(sess, steps, timings)
    if client == "mariadb-cli":
        return _run_mariadb_cli(sess, steps, timings)
    raise ValueError(client)


def _run_pymysql(sess: MySession, steps: Sequence[str], timings: list[float] | None) -> list[str]:
    from pymysql.constants import CLIENT

    out = []
    conn = pymysql.connect(
        host="127.0.0.1", port=sess.port, user=sess.user, password=sess.password, database=sess.database,
        autocommit=True, connect_timeout=10, charset="utf8mb4", ssl_disabled=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    )
    try:
        for sql in steps:
            t0 = time.monotonic()
            try:
                if sql.startswith("!"):
                    _pymysql_command(conn, sess, sql)
                    out.append("ok")
                    continue
                with conn.cursor() as cur:
                    cur.execute(sql)
                    cur.fetchall()
                    while cur.nextset():
                        cur.fetchall()
                out.append("ok")
            except pymysql.MySQLError as e:
                out.append(str(e.args[0]) if e.args else "error")
            if timings is not None:
                timings.append(time.monotonic() - t0)
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the gateway may have closed the session
            pass
    return out


def _pymysql_command(conn: pymysql.Connection, sess: MySession, step: str) -> None:
    """Protocol commands written as steps: `!init_db DB` (COM_INIT_DB), `!reset_connection`
    (COM_RESET_CONNECTION). PyMySQL has no COM_CHANGE_USER: `!change_user` is a no-op here."""
    com_reset_connection = 0x1F  # not among pymysql.constants.COMMAND

    cmd, _, arg = step[1:].partition(" ")
    if cmd == "init_db":
        conn.select_db(arg)
    elif cmd == "reset_connection":
        conn._execute_command(com_reset_connection, b"")  # noqa: SLF001 - no public API
        conn._read_ok_packet()  # noqa: SLF001
    elif cmd != "change_user":
        raise ValueError(step)


def _run_connector(sess: MySession, steps: Sequence[str], timings: list[float] | None) -> list[str]:
    out = []
    conn = mysql.connector.connect(
        host="127.0.0.1", port=sess.port, user=sess.user, password=sess.password, database=sess.database,
        ssl_disabled=True, use_pure=True, autocommit=True, connection_timeout=10,
    )
    try:
        for sql in steps:
            t0 = time.monotonic()
            try:
                if sql.startswith("!"):
                    cmd, _, arg = sql[1:].partition(" ")
                    if cmd == "init_db":
                        conn.cmd_init_db(arg)
                    elif cmd == "reset_connection":
                        conn.cmd_reset_connection()
                    elif cmd == "change_user":
                        user, _, db = arg.partition(" ")
                        conn.cmd_change_user(username=user or sess.user, password=sess.password,
                                             database=db or sess.database)
                    else:
                        raise ValueError(sql)
                    out.append("ok")
                    continue
                cur = conn.cursor(prepared=True)
                try:
                    cur.execute(sql)
                    if cur.with_rows:
                        cur.fetchall()
                finally:
                    try:
                        cur.close()
                    except Exception:  # noqa: BLE001
                        pass
                out.append("ok")
            except mysql.connector.Error as e:
                out.append(str(e.errno))
            if timings is not None:
                timings.append(time.monotonic() - t0)
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
    return out


def _run_mariadb_cli(sess: MySession, steps: Sequence[str], timings: list[float] | None) -> list[str]:
    """The mariadb CLI with --show-warnings and --force (go on after an error): one session,
    the steps as a script on stdin, one line each; "ERROR 1227 (42000) at line N" gives the
    outcome of step N."""
    lines: list[str] = []
    line_of: dict[int, int] = {}
    for i, step in enumerate(steps):
        one = " ".join(step.split()).rstrip(";")
        if one.startswith("!"):
            cmd, _, arg = one[1:].partition(" ")
            one = f"use {arg}" if cmd == "init_db" else "SELECT 1"  # the CLI sends `use` as COM_INIT_DB
        if ";" in one:  # a compound statement (BEGIN ... END)
            lines.append("DELIMITER //")
            line_of[len(lines) + 1] = i
            lines += [one + " //", "DELIMITER ;"]
        else:
            line_of[len(lines) + 1] = i
            lines.append(one + ";")
    script = "\n".join(lines) + "\n"
    t0 = time.monotonic()
    proc = subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(sess.port), "-u", sess.user, "--skip-ssl", "--show-warnings",
         "--force", "--batch", sess.database],
        input=script, capture_output=True, text=True, timeout=60, env={**os.environ, "MYSQL_PWD": sess.password},
    )
    if timings is not None:
        timings.append(time.monotonic() - t0)
    out = ["ok"] * len(steps)
    for ln in proc.stderr.splitlines():
        m = re.match(r"ERROR (\d+) \(\w+\) at line (\d+)", ln)
        if m and int(m.group(2)) in line_of:
            out[line_of[int(m.group(2))]] = m.group(1)
        elif ln.startswith("ERROR") and "at line" not in ln:
            out = [o if o != "ok" else "error:cli" for o in out]  # could not connect
    return out


def run_my_probe_pair(
    client: str, sess: MySession, tap: Tap, setup: Sequence[str], probe_true: str, probe_false: str
) -> ProbeResult:
    steps = probe_script(setup, probe_true, probe_false)
    tap.reset()
    timings: list[float] = []
    outcomes = run_my(client, sess, steps, timings)
    received = tap.received
    n = len(setup)
    t_out, f_out = outcomes[n + 1], outcomes[n + 3]
    tb, fb = (_blank_statement_ids(x) for x in segments(received))
    return ProbeResult(outcomes, t_out, f_out, tb, fb, received, timings)


# COM_STMT_PREPARE_OK: payload length 12, sequence id 1, status 0x00, then the statement id the
# server numbers per session (volatile: each prepared probe gets the next one).
_PREPARE_OK = re.compile(rb"\x0c\x00\x00\x01\x00....", re.S)


def _blank_statement_ids(data: bytes) -> bytes:
    return _PREPARE_OK.sub(b"\x0c\x00\x00\x01\x00\x00\x00\x00\x00", data)
