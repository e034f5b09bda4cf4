"""Refused statements on the MySQL wire: an ERR packet (errno 1142 or 1227, SQLSTATE 42000) that
names the rule, in COM_QUERY, inside a multi-statement string and at COM_STMT_PREPARE; the
session goes on in sync (sequence ids checked by the raw client, with and without
CLIENT_DEPRECATE_EOF), and the refused statement had no effect on MariaDB. The same `no-drop`
rule that guards PostgreSQL targets guards MySQL ones, in one gateway.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import mysql.connector
import psycopg
import psycopg.errors as pe
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.conftest import RULES
from tests.integration.conftest import upstream_dsn as pg_upstream_dsn
from tests.integration.mysql.conftest import (
    MY_ENVIRONMENTS,
    MY_RULES,
    VIA,
    MyEndpoint,
    direct_rows,
    is_refusal,
    my_target,
    mysql_listener,
)
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess, free_port, target


def _guarded_intact(my_direct) -> None:
    assert direct_rows(my_direct, "select id, note from guarded") == [(1, "must survive")]


def test_refused_in_com_query(my_via, my_direct):
    my_via.require_gateway()
    with my_via.pymysql(target="prod") as c, c.cursor() as cur:
        cur.execute("select count(*) from guarded")
        assert cur.fetchone() == (1,)
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("drop table guarded")
        assert is_refusal(ei.value, "no-drop"), ei.value.args
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("DROP   TABLE IF EXISTS `guarded`")
        assert is_refusal(ei.value, "no-drop"), ei.value.args
        cur.execute("select note from guarded")
        assert cur.fetchone() == ("must survive",)
    _guarded_intact(my_direct)


def test_refused_err_packet_raw(my_gw: MyEndpoint, my_direct):
    with my_gw.raw(database="prod") as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("drop table guarded")
        e = ei.value
        assert e.errno in (1142, 1227) and e.sqlstate == "42000" and "no-drop" in e.message, e
        assert c.query_rows("select 'in sync'") == [("in sync",)]
    _guarded_intact(my_direct)


def test_refusal_with_connector_sqlstate(my_via, my_direct):
    my_via.require_gateway()
    with mysql.connector.connect(**my_via.kw(target="prod"), use_pure=True, ssl_disabled=True, autocommit=True) as c:
        cur = c.cursor()
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute("drop table guarded")
        assert ei.value.errno in (1142, 1227) and ei.value.sqlstate == "42000" and "no-drop" in ei.value.msg
        cur.execute("select 'next'")
        assert cur.fetchone() == ("next",)
    _guarded_intact(my_direct)


def test_refused_inside_multi_statement(my_via, my_table, my_direct):
    my_via.require_gateway()
    with my_via.pymysql(target="prod", client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        sql = f"insert into {my_table} values (1, 'a'); drop table guarded; insert into {my_table} values (3, 'c')"
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute(sql)
            while cur.nextset():
                pass
        assert is_refusal(ei.value, "no-drop"), ei.value.args
        cur.execute("select 'session goes on'")
        assert cur.fetchone() == ("session goes on",)
    ids = [r[0] for r in direct_rows(my_direct, f"select id from {my_table} order by id")]
    # Either the whole request is refused before anything runs, or (as MySQL does with an
    # error) the statements before the refused one ran; never anything after it.
    assert ids in ([], [1]), ids
    _guarded_intact(my_direct)


@pytest.mark.parametrize("deprecate_eof", [True, False], ids=["deprecate_eof", "classic_eof"])
def test_refusals_keep_the_protocol_in_sync(my_gw: MyEndpoint, my_direct, deprecate_eof: bool):
    caps = mywire.DEFAULT_CAPABILITIES if deprecate_eof else mywire.DEFAULT_CAPABILITIES & ~mywire.CLIENT_DEPRECATE_EOF
    with my_gw.raw(database="prod", capabilities=caps) as c:
        assert bool(c.capabilities & mywire.CLIENT_DEPRECATE_EOF) == deprecate_eof
        for sql in ("drop table guarded", "select 1; drop table guarded; select 2"):
            with pytest.raises(mywire.MySQLError) as ei:
                c.query(sql)
            assert ei.value.errno in (1142, 1227) and ei.value.sqlstate == "42000" and "no-drop" in ei.value.message
            assert c.query_rows("select 'ok'") == [("ok",)]
        # COM_STMT_PREPARE refused: ERR instead of PREPARE_OK, then business as usual.
        with pytest.raises(mywire.MySQLError) as ei:
            c.stmt_prepare("drop table guarded")
        assert ei.value.errno in (1142, 1227) and ei.value.sqlstate == "42000" and "no-drop" in ei.value.message
        st = c.stmt_prepare("select ?, note from guarded")
        assert c.stmt_execute(st, ["p"])[0].rows == [("p", "must survive")]
        # A result set with the classic or the deprecated EOF framing right after a refusal.
        assert c.query_rows("select id, owner from accounts order by id") == [(1, "alice"), (2, "bob"), (3, "carol")]
    _guarded_intact(my_direct)


def test_pipelined_commands_around_a_refusal(my_gw: MyEndpoint, my_direct):
    """Commands sent back to back without waiting: each gets its own answer, in order."""
    with my_gw.raw(database="prod") as c:
        batch = b"".join(
            mywire.header(len(p), 0) + p
            for p in (b"\x03select 'one'", b"\x03drop table guarded", b"\x03select 'three'", b"\x0e")
        )
        c.send_raw(batch)
        c.seq = 1
        first = c.read_results(decode=True)
        assert first[0].rows == [("one",)]
        c.seq = 1
        with pytest.raises(mywire.MySQLError) as ei:
            c.read_results()
        assert "no-drop" in ei.value.message
        c.seq = 1
        assert c.read_results(decode=True)[0].rows == [("three",)]
        c.seq = 1
        assert isinstance(c.read_ok(), mywire.OK)
    _guarded_intact(my_direct)


def test_refused_at_prepare_connector(my_via, my_direct):
    my_via.require_gateway()
    with mysql.connector.connect(**my_via.kw(target="prod"), use_pure=True, ssl_disabled=True, autocommit=True) as c:
        cur = c.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute("drop table guarded")
        assert ei.value.errno in (1142, 1227) and ei.value.sqlstate == "42000" and "no-drop" in ei.value.msg
        cur = c.cursor(prepared=True)
        cur.execute("select note from guarded where id = %s", (1,))
        assert cur.fetchone() == ("must survive",)
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute("delete from guarded")  # no-delete-without-where
        assert "no-delete-without-where" in ei.value.msg
        cur.execute("delete from guarded where id = %s", (999,))
        assert cur.rowcount == 0
    _guarded_intact(my_direct)


def test_refusal_inside_a_transaction(my_via, my_table, my_direct):
    my_via.require_gateway()
    with my_via.pymysql(target="prod", autocommit=False) as c:
        with c.cursor() as cur:
            cur.execute(f"insert into {my_table} values (1, 'first')")
            with pytest.raises(pymysql.MySQLError) as ei:
                cur.execute("drop table guarded")
            assert is_refusal(ei.value, "no-drop")
            cur.execute("select @@in_transaction")
            assert cur.fetchone() == (1,), "a refusal must not end the client's transaction"
            cur.execute(f"insert into {my_table} values (2, 'second')")
        c.commit()
    assert direct_rows(my_direct, f"select id from {my_table} order by id") == [(1,), (2,)]
    _guarded_intact(my_direct)


def test_identity_rules(my_via, my_table, my_direct):
    my_via.require_gateway()
    direct_rows(my_direct, f"insert into {my_table} values (1, 'x')")
    with my_via.pymysql("bob") as c, c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute(f"truncate table {my_table}")
        assert is_refusal(ei.value, "no-truncate"), ei.value.args
    assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(1,)]
    with my_via.pymysql("alice") as c, c.cursor() as cur:
        cur.execute(f"truncate table {my_table}")
    assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(0,)]


def test_drop_allowed_in_development(my_via, my_direct):
    name = f"t_{uuid.uuid4().hex[:10]}"
    direct_rows(my_direct, f"create table {name} (i int)")
    with my_via.pymysql(target="app") as c, c.cursor() as cur:
        cur.execute(f"drop table {name}")
    assert direct_rows(my_direct, "select count(*) from information_schema.tables where table_name = %s", (name,)) == [(0,)]


# -- one rule, both protocols --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_protocol_gateway(mysql_it_database: str, it_database: str) -> Iterator[tuple[GatewayProcess, int]]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    pg_port = free_port()
    gw = GatewayProcess(
        targets=[my_target("prod", "production"), target("pg_prod", pg_upstream_dsn(), "production")],
        rules=MY_RULES, environments=MY_ENVIRONMENTS, listener=mysql_listener(), name="it-two-protocols",
    )
    gw.config["listeners"].append({"protocol": "postgres", "listen": f"127.0.0.1:{pg_port}"})
    gw.config_text = gw._render(gw.config)
    with gw:
        yield gw, pg_port


def test_same_rule_refuses_drop_on_both_protocols(two_protocol_gateway, my_direct, direct_dsn):
    gw, pg_port = two_protocol_gateway
    assert any(r["id"] == "no-drop" for r in RULES) and [r for r in MY_RULES if r["id"] == "no-drop"] == [
        r for r in RULES if r["id"] == "no-drop"]
    since = gw.audit_offset()
    with pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="prod",
                         ssl_disabled=True) as c, c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("drop table guarded")
        assert is_refusal(ei.value, "no-drop")
    with psycopg.connect(f"postgresql://alice:{SECRETS['alice']}@127.0.0.1:{pg_port}/pg_prod?sslmode=disable",
                         autocommit=True) as pg:
        with pytest.raises(pe.InsufficientPrivilege) as ei2:
            pg.execute("drop table guarded")
        assert "no-drop" in str(ei2.value)
    evs = gw.wait_audit(lambda es: len([e for e in es if e.get("action") == "deny"]) >= 2, since=since)
    denies = [e for e in evs if e.get("event") == "statement.decided" and e.get("action") == "deny"]
    assert sorted((e["target"], e["rule_id"]) for e in denies) == [("pg_prod", "no-drop"), ("prod", "no-drop")]
    _guarded_intact(my_direct)
    with psycopg.connect(direct_dsn, autocommit=True) as d:
        assert d.execute("select note from guarded").fetchone() == ("must survive",)


# -- dynamic SQL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [
    ["prepare s from 'drop table guarded'", "execute s"],
    ["set @q = 'drop table guarded'", "prepare s from @q", "execute s"],
    ["execute immediate 'drop table guarded'"],
    ["create procedure p_sneaky() drop table guarded", "call p_sneaky()"],
])
def test_dynamic_sql_cannot_smuggle_a_refused_statement(my_via, my_direct, script: list[str]):
    """The text of PREPARE ... FROM '...' / EXECUTE IMMEDIATE is a string literal to the parser,
    but the server runs it; a procedure body runs at CALL. DROP must stay refused in production."""
    my_via.require_gateway()
    try:
        with my_via.pymysql(target="prod") as c, c.cursor() as cur:
            for sql in script:
                try:
                    cur.execute(sql)
                except pymysql.MySQLError as e:
                    assert is_refusal(e) or e.args[0] in (1243, 1305, 1064), e.args
        _guarded_intact(my_direct)
    finally:
        direct_rows(my_direct, "drop procedure if exists p_sneaky")
        direct_rows(my_direct, "create table if not exists guarded (id int primary key, note varchar(100))")
        direct_rows(my_direct, "insert ignore into guarded values (1, 'must survive')")


@pytest.mark.parametrize("script", [
    ["prepare s from 'select secret from sqlward_it2.vault'", "execute s"],
    ["execute immediate 'select secret from sqlward_it2.vault'"],
])
def test_dynamic_sql_cannot_read_a_denied_table(my_via, script: list[str]):
    """Rule no-vault holds in every environment, development included."""
    my_via.require_gateway()
    rows: list = []
    with my_via.pymysql(target="app") as c, c.cursor() as cur:
        for sql in script:
            try:
                cur.execute(sql)
                rows += list(cur.fetchall() or [])
            except pymysql.MySQLError as e:
                assert is_refusal(e) or e.args[0] in (1243,), e.args
    assert ("SECRET of sqlward_it2",) not in rows, f"{script} read {rows}"


def test_same_rule_refuses_through_psql_and_the_mariadb_cli(two_protocol_gateway, my_direct, direct_dsn):
    """Issue 5: one policy, the stock command-line clients of both databases, the same refusal."""
    import os
    import subprocess

    gw, pg_port = two_protocol_gateway
    env = {**os.environ, "PGPASSWORD": SECRETS["alice"], "MYSQL_PWD": SECRETS["alice"]}
    psql = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "alice", "-d", "pg_prod", "-v", "ON_ERROR_STOP=1",
         "-c", "DROP TABLE guarded"],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert psql.returncode != 0 and "42501" not in psql.stdout and "no-drop" in psql.stderr, psql
    mariadb = subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(gw.port), "-u", "alice", "--skip-ssl", "prod",
         "-e", "DROP TABLE guarded"],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert mariadb.returncode != 0 and "1227" in mariadb.stderr and "no-drop" in mariadb.stderr, mariadb
    _guarded_intact(my_direct)
    with psycopg.connect(direct_dsn, autocommit=True) as d:
        assert d.execute("select note from guarded").fetchone() == ("must survive",)
