"""psql (the real binary, as a subprocess) through the gateway."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess


def run_psql(
    dsn: str,
    *args: str,
    password: str = "",
    input: str | None = None,
    timeout: float = 30,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGCONNECT_TIMEOUT="10", PGAPPNAME="it-psql")
    return subprocess.run(
        ["psql", "-X", "-d", dsn, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"psql exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res.stdout


def test_select(via):
    out = _ok(run_psql(via.dsn(password=None), "-At", "-c", "select 1 + 1, 'héllo'::text", password=via.password()))
    assert out.strip() == "2|héllo"


def test_multi_statement_string(via, table, direct):
    # psql -c sends the whole string as one simple Query; psql >= 15 prints every result.
    out = _ok(
        run_psql(
            via.dsn(password=None),
            "-Atq",
            "-c",
            f"insert into {table} values (1, 'a'); insert into {table} values (2, 'b'); "
            f"select count(*) from {table}; select 'second result'",
            password=via.password(),
        )
    )
    assert out.splitlines() == ["2", "second result"]
    assert direct.execute(f"select id, v from {table} order by id").fetchall() == [(1, "a"), (2, "b")]


def test_empty_query_and_comment_only(via):
    # An empty query string gets EmptyQueryResponse; psql must simply carry on.
    script = "select 'a';\n;\n-- just a comment\nselect 'b';\n"
    out = _ok(run_psql(via.dsn(password=None), "-At", "-v", "ON_ERROR_STOP=1", password=via.password(), input=script))
    assert out.split() == ["a", "b"]


def test_copy_in_and_out(via, table, direct, tmp_path: Path):
    rows = [
        (1, "plain"),
        (2, "comma, and \"quotes\""),
        (3, "multi\nline"),
        (4, "ünïcødé ✓"),
        (5, None),
    ]
    src = tmp_path / "in.csv"
    import csv

    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        for i, v in rows:
            w.writerow([i, "" if v is None else v])
    script = (
        f"\\copy {table} (id, v) from '{src}' with (format csv)\n"
        f"\\copy (select id, v from {table} order by id) to '{tmp_path / 'out.csv'}' with (format csv)\n"
        f"\\copy {table} to '{tmp_path / 'out.txt'}'\n"
    )
    res = run_psql(via.dsn(password=None), "-v", "ON_ERROR_STOP=1", password=via.password(), input=script)
    _ok(res)
    assert "COPY 5" in res.stdout
    got = direct.execute(f"select id, v from {table} order by id").fetchall()
    assert got == rows
    assert (tmp_path / "out.csv").read_text() == src.read_text()
    # text format: NULL is \N, the newline escaped as \n
    text_lines = (tmp_path / "out.txt").read_text().splitlines()
    assert sorted(text_lines) == sorted(["1\tplain", '2\tcomma, and "quotes"', "3\tmulti\\nline", "4\tünïcødé ✓", "5\t\\N"])


def test_meta_commands_in_development(via):
    # psql's \d queries use catalog SQL with OPERATOR(pg_catalog.~) etc.
    res = run_psql(via.dsn(password=None), "-c", r"\d accounts", password=via.password())
    out = _ok(res)
    assert "balance" in out and "numeric(12,2)" in out


SCRIPT_WITH_REFUSAL = """\
\\set VERBOSITY verbose
select 'before' as marker;
drop table guarded;
\\echo sqlstate=:LAST_ERROR_SQLSTATE
select 'after' as marker;
select count(*) as n from guarded;
"""


def test_refused_drop_then_session_continues(gateway: GatewayProcess, direct):
    res = run_psql(
        gateway.dsn("alice", dbname="prod"), "-At", "-v", "ON_ERROR_STOP=0",
        password="alice-secret", input=SCRIPT_WITH_REFUSAL,
    )
    # ON_ERROR_STOP=0: psql reports the error and goes on; the exit status stays 0.
    assert res.returncode == 0, res.stderr
    assert "42501" in res.stderr, res.stderr
    assert "no-drop" in res.stderr, res.stderr
    lines = res.stdout.split()
    assert lines == ["before", "sqlstate=42501", "after", "1"], res.stdout + res.stderr
    assert direct.execute("select note from guarded where id = 1").fetchone() == ("must survive",)


def test_refused_drop_with_on_error_stop(gateway: GatewayProcess, direct):
    res = run_psql(
        gateway.dsn("alice", dbname="prod"), "-At", "-v", "ON_ERROR_STOP=1",
        password="alice-secret", input=SCRIPT_WITH_REFUSAL,
    )
    # psql: exit status 3 when an error occurred in a script with ON_ERROR_STOP set.
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert "before" in res.stdout and "after" not in res.stdout
    assert "no-drop" in res.stderr
    assert direct.execute("select count(*) from guarded").fetchone() == (1,)


def test_refused_statement_in_multi_statement_string_runs_nothing(gateway: GatewayProcess, table, direct):
    # A multi-statement simple Query is one implicit transaction: when any part is refused,
    # no part of it may take effect.
    res = run_psql(
        gateway.dsn("alice", dbname="prod"), "-At", "-c",
        f"insert into {table} values (7, 'x'); drop table {table}",
        password="alice-secret",
    )
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "no-drop" in res.stderr
    assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_wrong_password(gateway: GatewayProcess):
    res = run_psql(gateway.dsn("alice", dbname="app"), "-c", "select 1", password="not-the-secret")
    assert res.returncode == 2
    assert "password authentication failed" in res.stderr or "28P01" in res.stderr, res.stderr


def test_tls_sslmode_require(tls_gateway: GatewayProcess):
    res = run_psql(
        tls_gateway.dsn("alice", dbname="app", sslmode="require"), "-At",
        "-c", "select 'over tls'", "-c", r"\conninfo",
        password="alice-secret",
    )
    out = _ok(res)
    assert "over tls" in out
    assert "SSL connection" in out, out


def test_tls_verify_full(tls_gateway: GatewayProcess, gateway_pki):
    res = run_psql(
        tls_gateway.dsn("alice", dbname="app", sslmode="verify-full", sslrootcert=str(gateway_pki.ca_file)),
        "-At", "-c", "select 42", password="alice-secret",
    )
    assert _ok(res).strip() == "42"


def test_tls_refused_drop_session_continues(tls_gateway: GatewayProcess):
    res = run_psql(
        tls_gateway.dsn("alice", dbname="prod", sslmode="require"), "-At", "-v", "ON_ERROR_STOP=0",
        password="alice-secret", input=SCRIPT_WITH_REFUSAL,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["before", "sqlstate=42501", "after", "1"], res.stdout + res.stderr


def test_tls_required_listener(tls_required_gateway: GatewayProcess):
    plain = run_psql(tls_required_gateway.dsn("alice", dbname="app", sslmode="disable"), "-c", "select 1",
                     password="alice-secret")
    assert plain.returncode == 2
    assert "FATAL" in plain.stderr and ("TLS" in plain.stderr or "SSL" in plain.stderr), plain.stderr
    tls = run_psql(tls_required_gateway.dsn("alice", dbname="app", sslmode="require"), "-At", "-c", "select 1",
                   password="alice-secret")
    assert _ok(tls).strip() == "1"


def test_psql_bob_truncate_refused_alice_allowed(gateway: GatewayProcess, table, direct):
    direct.execute(f"insert into {table} values (1, 'x')")
    bob = run_psql(gateway.dsn("bob", dbname="app"), "-c", f"truncate {table}", password="bob-secret")
    assert bob.returncode == 1 and "no-truncate" in bob.stderr, bob.stderr
    assert direct.execute(f"select count(*) from {table}").fetchone() == (1,)
    alice = run_psql(gateway.dsn("alice", dbname="app"), "-c", f"truncate {table}", password="alice-secret")
    _ok(alice)
    assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)


@pytest.mark.parametrize("gssencmode", ["prefer", "disable"])
def test_gssencmode(via, gssencmode):
    res = run_psql(via.dsn(password=None, gssencmode=gssencmode), "-At", "-c", "select 1", password=via.password())
    assert _ok(res).strip() == "1"

