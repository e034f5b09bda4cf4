"""Issue 5, the guardrails that need more than the statement's shape, through a real gateway on
both protocols with real clients: mass-write (EXPLAIN on the upstream: psycopg, asyncpg with a
parameterised statement, PyMySQL, the mariadb CLI), where-always-true (judged on each text's
literals), parser-mismatch (MySQL executable comments), and `sqlward policy test` contacting the
upstream only for an estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Iterator

import asyncpg
import psycopg
import psycopg.errors as pe
import pymysql
import pytest
import trio

from tests.integration.conftest import VIA
from tests.integration.conftest import upstream_dsn as pg_upstream_dsn
from tests.integration.mysql.conftest import direct_rows, is_refusal, my_target, mysql_listener
from tests.support.gateway import SECRETS, GatewayProcess, free_port, target

ROWS = 5000
GUARDRAILS = {
    "mass-write": {"environments": ["production"], "max_rows": 100},
    "where-always-true": {"environments": ["production"]},
    "parser-mismatch": {"environments": ["production"]},
    "identity-escalation": {"environments": ["production"]},
}


@pytest.fixture(scope="module")
def big_tables(mysql_it_database: str, it_database: str, direct_dsn: str) -> Iterator[None]:
    with psycopg.connect(direct_dsn, autocommit=True) as pg:
        pg.execute("DROP TABLE IF EXISTS est_big")
        pg.execute("CREATE TABLE est_big (id int PRIMARY KEY, v int)")
        pg.execute(f"INSERT INTO est_big SELECT g, g FROM generate_series(1, {ROWS}) g")
        pg.execute("ANALYZE est_big")
    my = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=mysql_it_database, autocommit=True)
    try:
        direct_rows(my, "DROP TABLE IF EXISTS est_big")
        direct_rows(my, "CREATE TABLE est_big (id INT PRIMARY KEY, v INT)")
        direct_rows(my, f"INSERT INTO est_big SELECT seq, seq FROM seq_1_to_{ROWS}")
        direct_rows(my, "ANALYZE TABLE est_big")
        yield
        direct_rows(my, "DROP TABLE IF EXISTS est_big")
    finally:
        my.close()
    with psycopg.connect(direct_dsn, autocommit=True) as pg:
        pg.execute("DROP TABLE IF EXISTS est_big")


@pytest.fixture(scope="module")
def guarded_gateway(big_tables: None) -> Iterator[tuple[GatewayProcess, int]]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    pg_port = free_port()
    gw = GatewayProcess(
        targets=[my_target("prod", "production"), target("pg_prod", pg_upstream_dsn(), "production")],
        rules=[{"id": "allow-all", "action": "allow"}],
        listener=mysql_listener(),
        extra={"guardrails": GUARDRAILS},
        name="it-guardrails",
    )
    gw.config["listeners"].append({"protocol": "postgres", "listen": f"127.0.0.1:{pg_port}"})
    gw.config_text = gw._render(gw.config)
    with gw:
        yield gw, pg_port


def _pg(gw_port: int) -> psycopg.Connection:
    return psycopg.connect(
        f"postgresql://alice:{SECRETS['alice']}@127.0.0.1:{gw_port}/pg_prod?sslmode=disable", autocommit=True
    )


def _my(gw: GatewayProcess) -> pymysql.Connection:
    return pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="prod",
                           ssl_disabled=True, autocommit=True)


def _pg_count(direct_dsn: str) -> int:
    with psycopg.connect(direct_dsn, autocommit=True) as d:
        return d.execute("SELECT count(*) FROM est_big").fetchone()[0]


def test_mass_write_refused_on_both_protocols_by_the_upstreams_estimate(guarded_gateway, direct_dsn, my_direct):
    gw, pg_port = guarded_gateway
    since = gw.audit_offset()
    with _pg(pg_port) as pg:
        with pytest.raises(pe.InsufficientPrivilege) as ei:
            pg.execute("UPDATE est_big SET v = v + 1 WHERE v > 10")
        assert "mass-write" in str(ei.value) and "over the limit of 100" in str(ei.value)
        # The safe variant (a key lookup: about one row) runs, and the session goes on.
        assert pg.execute("UPDATE est_big SET v = v WHERE id = 7").rowcount == 1
    with _my(gw) as my, my.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as em:
            cur.execute("UPDATE est_big SET v = v + 1 WHERE v > 10")
        assert is_refusal(em.value, "mass-write")
        assert cur.execute("UPDATE est_big SET v = v WHERE id = 7") in (0, 1)
    assert _pg_count(direct_dsn) == ROWS
    assert direct_rows(my_direct, "SELECT count(*), sum(v) FROM est_big")[0][0] == ROWS
    evs = gw.wait_audit(lambda es: len([e for e in es if e.get("rule_id") == "mass-write"]) >= 2, since=since)
    refusals = [e for e in evs if e.get("event") == "statement.decided" and e.get("rule_id") == "mass-write"]
    assert {e["target"] for e in refusals} == {"pg_prod", "prod"}
    for e in refusals:
        rows = next(f for f in e["facts"] if f.startswith("estimated_rows="))
        assert int(rows.split("=")[1]) > 100, e["facts"]


def test_mass_write_through_the_mariadb_cli_and_asyncpg_parameters(guarded_gateway, direct_dsn):
    gw, pg_port = guarded_gateway
    env = {**os.environ, "MYSQL_PWD": SECRETS["alice"]}
    cli = subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(gw.port), "-u", "alice", "--skip-ssl", "prod",
         "-e", "DELETE FROM est_big WHERE v > 0"],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert cli.returncode != 0 and "mass-write" in cli.stderr, cli

    async def main() -> None:
        conn = await asyncpg.connect(
            f"postgresql://alice:{SECRETS['alice']}@127.0.0.1:{pg_port}/pg_prod", ssl=False
        )
        try:
            # A parameterised statement: the generic plan's estimate (a third of the table).
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as ei:
                await conn.execute("DELETE FROM est_big WHERE v > $1", 10)
            assert "mass-write" in str(ei.value)
            assert await conn.execute("DELETE FROM est_big WHERE id = $1", -5) == "DELETE 0"
        finally:
            await conn.close()

    trio.run(_asyncio_bridge, main)
    assert _pg_count(direct_dsn) == ROWS


async def _asyncio_bridge(main) -> None:  # asyncpg needs asyncio: run it in a thread
    import asyncio

    await trio.to_thread.run_sync(lambda: asyncio.run(main()))


def test_where_always_true_is_judged_on_each_texts_literals(guarded_gateway, direct_dsn, my_direct):
    gw, pg_port = guarded_gateway
    with _pg(pg_port) as pg:
        pg.execute("UPDATE est_big SET v = v WHERE 1 = 2")  # same shape, false: allowed
        with pytest.raises(pe.InsufficientPrivilege) as ei:
            pg.execute("UPDATE est_big SET v = v WHERE 1 = 1")
        assert "where-always-true" in str(ei.value)
        with pytest.raises(pe.InsufficientPrivilege):
            pg.execute("DELETE FROM est_big WHERE id > 0 OR TRUE")
    with _my(gw) as my, my.cursor() as cur:
        cur.execute("DELETE FROM est_big WHERE 0")
        with pytest.raises(pymysql.MySQLError) as em:
            cur.execute("DELETE FROM est_big WHERE 'a' = 'a'")
        assert is_refusal(em.value, "where-always-true")
    assert _pg_count(direct_dsn) == ROWS
    assert direct_rows(my_direct, "SELECT count(*) FROM est_big")[0][0] == ROWS


def test_parser_mismatch_refuses_executable_comments(guarded_gateway):
    gw, _ = guarded_gateway
    with _my(gw) as my, my.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as em:
            cur.execute("SELECT 1 /*!, (SELECT count(*) FROM est_big) */")
        assert is_refusal(em.value, "parser-mismatch")
        cur.execute("SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1")
        assert cur.fetchall() == ((1,),)


def test_policy_test_cli_asks_the_upstream_only_for_an_estimate(guarded_gateway):
    gw, _ = guarded_gateway

    def run(sql: str, target_name: str) -> tuple[int, dict]:
        out = subprocess.run(
            [sys.executable, "-m", "sqlward.gateway", "policy", "test", "--config", str(gw.config_file),
             "--as", "alice", "--target", target_name, "--json", sql],
            capture_output=True, text=True, timeout=60,
        )
        return out.returncode, json.loads(out.stdout)

    for target_name in ("pg_prod", "prod"):
        code, report = run("DELETE FROM est_big WHERE v > 10", target_name)
        assert code == 1 and report["rule_id"] == "mass-write", report
        assert report["estimates"]["1"] > 100 and any(f.startswith("estimated_rows=") for f in report["facts"])
        code, report = run("SELECT * FROM est_big", target_name)
        assert code == 0 and report["estimates"] == {}, report


def test_change_user_is_refused_by_identity_escalation(guarded_gateway):
    """COM_CHANGE_USER switches the identity a session acts as: decided as the pseudo statement
    CHANGE USER, so the identity-escalation guardrail refuses it (mysql-connector and a raw
    protocol client)."""
    import mysql.connector

    from tests.support import mywire

    gw, _ = guarded_gateway
    since = gw.audit_offset()
    conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                   database="prod", ssl_disabled=True, use_pure=True)
    with pytest.raises(mysql.connector.Error) as ei:
        conn.cmd_change_user(username="bob", password=SECRETS["bob"], database="prod")
    assert "identity-escalation" in str(ei.value)
    with mywire.RawMySQL.open("127.0.0.1", gw.port) as c:
        c.read_handshake()
        c.login("alice", SECRETS["alice"], "prod")
        with pytest.raises(mywire.MySQLError) as em:
            c.change_user("bob", SECRETS["bob"], "prod")
        assert "identity-escalation" in str(em.value)
    evs = gw.wait_audit(lambda es: len([e for e in es if e.get("rule_id") == "identity-escalation"]) >= 2, since=since)
    assert all(e["sql"] == "CHANGE USER" for e in evs if e.get("rule_id") == "identity-escalation")
