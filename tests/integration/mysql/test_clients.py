"""Real MySQL clients through the gateway: the mariadb CLI, PyMySQL, aiomysql, mysql-connector-python
(plain and prepared cursors: the binary protocol), SQLAlchemy (ORM round trip).

Results through the gateway are compared with the same driver's results straight from MariaDB
(root on sqlward_it), so the expectation is the server's own answer, not a guess. With
SQLWARD_IT_VIA=direct both sides are MariaDB (a self-check of the tests).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import os
import subprocess
import uuid
from decimal import Decimal
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.mysql.conftest import IT_DB, TYPED_COLUMNS, MyVia, direct_rows, is_refusal
from tests.support.mariadb import SYSTEM_HOST, SYSTEM_PORT

DIRECT_KW = {"host": SYSTEM_HOST, "port": SYSTEM_PORT, "user": "root", "password": "", "database": IT_DB}


def _norm(rows: Any) -> list[tuple[Any, ...]]:
    out = []
    for r in rows:
        out.append(tuple(bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in r))
    return out


# -- the mariadb CLI --------------------------------------------------------------------------------


def mariadb_cli(via: MyVia, *args: str, user: str = "alice", target: str = "app", password: str | None = None,
                timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
    k = via.kw(user, target, password)
    cmd = ["mariadb", "--no-defaults", "-h", k["host"], "-P", str(k["port"]), "-u", k["user"],
           "--connect-timeout=10"]
    if k["password"]:
        cmd.append(f"-p{k['password']}")
    cmd += [*args, k["database"]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})


def test_cli_batch_queries(my_via):
    res = mariadb_cli(my_via, "--skip-ssl", "-N", "-B", "-e",
                      "select 1; select 'two', null; select owner from accounts order by id")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["1", "two\tNULL", "alice", "bob", "carol"]


def test_cli_table_output_and_database(my_via):
    res = mariadb_cli(my_via, "--skip-ssl", "-t", "-e", "select database() as db, count(*) as n from accounts")
    assert res.returncode == 0, res.stderr
    assert f"| {IT_DB} | 3 |" in res.stdout, res.stdout


def test_cli_script_on_stdin_with_error_and_force(my_via, my_table):
    script = (
        f"insert into {my_table} values (1, 'one');\n"
        "select * from no_such_table_xyz;\n"
        f"insert into {my_table} values (2, 'two');\n"
        f"select count(*) from {my_table};\n"
    )
    res = mariadb_cli(my_via, "--skip-ssl", "-N", "-B", "--force", input=script)
    assert "ERROR 1146 (42S02)" in res.stderr and "no_such_table_xyz" in res.stderr, res.stderr
    assert res.stdout.splitlines() == ["2"]


def test_cli_refused_statement_and_force(my_via, my_direct):
    my_via.require_gateway()
    res = mariadb_cli(my_via, "--skip-ssl", "-N", "-B", "--force", target="prod",
                      input="select 'before';\ndrop table guarded;\nselect 'after';\n")
    line = next((ln for ln in res.stderr.splitlines() if ln.startswith("ERROR")), "")
    assert line.startswith(("ERROR 1142 (42000)", "ERROR 1227 (42000)")), res.stderr
    assert "no-drop" in line, res.stderr
    assert res.stdout.splitlines() == ["before", "after"]
    assert direct_rows(my_direct, "select note from guarded") == [("must survive",)]


# -- PyMySQL -------------------------------------------------------------------------------------------


def test_pymysql_types_equal_direct(my_via):
    sql = "select * from typed order by id"
    with my_via.pymysql() as c, c.cursor() as cur:
        cur.execute(sql)
        got = cur.fetchall()
        desc = cur.description
    with pymysql.connect(**DIRECT_KW, charset="utf8mb4") as d, d.cursor() as cur:
        cur.execute(sql)
        want = cur.fetchall()
        want_desc = cur.description
    assert got == want
    assert desc == want_desc  # names, types, lengths, flags of the column definitions
    row = got[0]
    assert row[2] == 18446744073709551615 and row[5] == Decimal("-12345678901234.123456")
    assert row[12] == "héllo wörld 😀 ✓" and row[13] == b"\x00\xff\x10\xee"
    assert row[10] == -dt.timedelta(hours=838, minutes=59, seconds=58, microseconds=999999)


def test_pymysql_parameters_executemany_and_quotes(my_via, my_table, my_direct):
    rows = [(i, f"row {i} ' \" \\ 😀") for i in range(300)]
    with my_via.pymysql() as c, c.cursor() as cur:
        cur.executemany(f"insert into {my_table} (id, v) values (%s, %s)", rows)
        cur.execute(f"select v from {my_table} where id = %s", (7,))
        assert cur.fetchone() == (rows[7][1],)
        cur.execute("select %s", ("it's; drop table guarded; --",))
        assert cur.fetchone() == ("it's; drop table guarded; --",)
    assert direct_rows(my_direct, f"select count(*), sum(id) from {my_table}") == [(300, Decimal(sum(range(300))))]
    assert direct_rows(my_direct, f"select v from {my_table} where id = 299") == [(rows[299][1],)]


def test_pymysql_multi_statements_multi_results(my_via, my_table):
    with my_via.pymysql(client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        cur.execute(f"select 1 as a; insert into {my_table} values (1, 'x'), (2, 'y'); select 'two' as b, 3 as c")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.rowcount == 2  # the INSERT's OK packet
        assert cur.nextset()
        assert cur.fetchall() == (("two", 3),)
        assert cur.description[0][0] == "b"
        assert not cur.nextset()
        cur.execute("select 'next request'")
        assert cur.fetchone() == ("next request",)


def test_pymysql_stored_procedure_results(my_via, my_direct):
    # CALL returns its result sets plus a final OK: SERVER_MORE_RESULTS_EXISTS in between.
    name = f"p_{uuid.uuid4().hex[:8]}"
    direct_rows(my_direct, f"create procedure {name}() begin select 1 as x; select 2 as y, 3 as z; end")
    try:
        with my_via.pymysql() as c, c.cursor() as cur:
            cur.execute(f"call {name}()")
            assert cur.fetchall() == ((1,),)
            assert cur.nextset()
            assert cur.fetchall() == ((2, 3),)
            while cur.nextset():
                pass
            cur.execute("select 'after call'")
            assert cur.fetchone() == ("after call",)
    finally:
        direct_rows(my_direct, f"drop procedure {name}")


def test_pymysql_transactions(my_via, my_table, my_direct):
    with my_via.pymysql(autocommit=False) as c:
        with c.cursor() as cur:
            cur.execute(f"insert into {my_table} values (1, 'rolled back')")
            assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(0,)]
        c.rollback()
        with c.cursor() as cur:
            cur.execute(f"insert into {my_table} values (2, 'committed')")
        c.commit()
        with c.cursor() as cur:
            cur.execute("select @@in_transaction")
            assert cur.fetchone() == (0,)
    assert direct_rows(my_direct, f"select id, v from {my_table}") == [(2, "committed")]


def test_pymysql_large_result_and_values(my_via):
    with my_via.pymysql() as c, c.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute("select seq, repeat('x', 100) from seq_1_to_100000")
        n = s = 0
        for seq, x in cur:
            n += 1
            s += seq
            assert len(x) == 100
        assert (n, s) == (100000, 100000 * 100001 // 2)
    with my_via.pymysql() as c, c.cursor() as cur:
        cur.execute("select repeat('y', 5000000)")
        assert len(cur.fetchone()[0]) == 5000000
        blob = os.urandom(2 * 1024 * 1024)
        cur.execute("select length(%s), md5(%s)", (blob, blob))
        assert cur.fetchone() == (len(blob), hashlib.md5(blob).hexdigest())


def test_pymysql_upstream_errors_and_warnings_pass_through(my_via):
    with my_via.pymysql() as c, c.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError) as ei:
            cur.execute("select * from no_such_table_xyz where x = %s", (1,))
        assert ei.value.args[0] == 1146 and "no_such_table_xyz" in ei.value.args[1]
        with pytest.raises(pymysql.err.ProgrammingError) as ei:
            cur.execute("selec 1")
        assert ei.value.args[0] == 1064
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("signal sqlstate '45000' set message_text = 'boom from the server', mysql_errno = 1644")
        assert ei.value.args == (1644, "boom from the server")
        cur.execute("select 1/0")
        assert cur.fetchone() == (None,)
        assert c.warning_count if hasattr(c, "warning_count") else True
        cur.execute("show warnings")
        assert [r[1] for r in cur.fetchall()] == [1365]  # Division by 0
        cur.execute("select 'still here'")
        assert cur.fetchone() == ("still here",)


def test_pymysql_insert_id_and_affected_rows(my_via, my_direct):
    name = f"t_{uuid.uuid4().hex[:10]}"
    direct_rows(my_direct, f"create table {name} (id int auto_increment primary key, v int)")
    try:
        with my_via.pymysql() as c, c.cursor() as cur:
            cur.execute(f"insert into {name} (v) values (10), (20), (30)")
            assert cur.rowcount == 3 and cur.lastrowid == 1
            cur.execute(f"insert into {name} (v) values (40)")
            assert cur.lastrowid == 4 and c.insert_id() == 4
            assert cur.execute(f"update {name} set v = v + 1 where v >= 20") == 3
    finally:
        direct_rows(my_direct, f"drop table {name}")


# -- aiomysql ------------------------------------------------------------------------------------------


def test_aiomysql(my_via, my_table, my_direct):
    import aiomysql

    k = my_via.kw()

    async def main() -> None:
        conn = await aiomysql.connect(host=k["host"], port=k["port"], user=k["user"], password=k["password"],
                                      db=k["database"], autocommit=True, charset="utf8mb4")
        try:
            async with conn.cursor() as cur:
                await cur.execute("select owner, balance from accounts where id = %s", (2,))
                assert await cur.fetchone() == ("bob", Decimal("50.50"))
                await cur.executemany(f"insert into {my_table} values (%s, %s)", [(i, f"a{i}") for i in range(50)])
                await cur.execute("select * from typed where id = 1")
                row = await cur.fetchone()
                assert row[12] == "héllo wörld 😀 ✓"
                with pytest.raises(pymysql.err.ProgrammingError):
                    await cur.execute("select * from no_such_table_xyz")
                await cur.execute("select 'after error'")
                assert await cur.fetchone() == ("after error",)
        finally:
            conn.close()

        pool = await aiomysql.create_pool(host=k["host"], port=k["port"], user=k["user"], password=k["password"],
                                          db=k["database"], autocommit=True, minsize=1, maxsize=4)
        try:
            async def one(i: int) -> Any:
                async with pool.acquire() as c, c.cursor() as cur:
                    await cur.execute("select %s * 2, sleep(0.05)", (i,))
                    return (await cur.fetchone())[0]

            assert sorted(await asyncio.gather(*(one(i) for i in range(12)))) == [i * 2 for i in range(12)]
        finally:
            pool.close()
            await pool.wait_closed()

    asyncio.run(main())
    assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(50,)]


def test_aiomysql_refusal(my_via, my_direct):
    import aiomysql

    my_via.require_gateway()
    k = my_via.kw(target="prod")

    async def main() -> None:
        conn = await aiomysql.connect(host=k["host"], port=k["port"], user=k["user"], password=k["password"],
                                      db=k["database"], autocommit=True)
        try:
            async with conn.cursor() as cur:
                with pytest.raises(pymysql.MySQLError) as ei:
                    await cur.execute("drop table guarded")
                assert is_refusal(ei.value, "no-drop"), ei.value.args
                await cur.execute("select count(*) from guarded")
                assert await cur.fetchone() == (1,)
        finally:
            conn.close()

    asyncio.run(main())
    assert direct_rows(my_direct, "select count(*) from guarded") == [(1,)]


# -- mysql-connector-python ------------------------------------------------------------------------------

CONNECTOR_VARIANTS = ["pure", "cext"]


# Every column but `yr`: mysql-connector reads a binary YEAR as a length-encoded string (a driver
# bug, the same through the gateway and directly); tests.support.mywire checks YEAR instead.
NO_YEAR = ", ".join(c for c in TYPED_COLUMNS if c != "yr")


def connector(kw: dict[str, Any], variant: str = "pure", **extra: Any):
    if variant == "cext":
        try:
            import _mysql_connector  # noqa: F401
        except ImportError as e:
            pytest.skip(f"mysql-connector C extension not loadable here: {e}")
    args = dict(kw, use_pure=(variant == "pure"), autocommit=True, connection_timeout=10, charset="utf8mb4",
                ssl_disabled=True)
    args.update(extra)
    return mysql.connector.connect(**args)


@pytest.mark.parametrize("variant", CONNECTOR_VARIANTS)
def test_connector_plain_cursor(my_via, variant):
    sql = "select * from typed order by id"
    with connector(my_via.kw(), variant) as c:
        cur = c.cursor()
        cur.execute(sql)
        got = _norm(cur.fetchall())
        names = cur.column_names
        cur.execute("select %s, %s", ("x'y", 5))
        assert cur.fetchone() == ("x'y", 5)
    with connector(DIRECT_KW, variant) as d:
        cur = d.cursor()
        cur.execute(sql)
        assert got == _norm(cur.fetchall())
        assert names == cur.column_names


@pytest.mark.parametrize("variant", CONNECTOR_VARIANTS)
def test_connector_prepared_binary_rows_equal_direct(my_via, variant):
    """COM_STMT_PREPARE / EXECUTE with binary rows of every column type, NULLs included."""
    sql = f"select {NO_YEAR} from typed where id >= %s order by id"
    with connector(my_via.kw(), variant) as c:
        cur = c.cursor(prepared=True)
        cur.execute(sql, (1,))
        got = _norm(cur.fetchall())
        desc = cur.description
        cur.execute(sql, (2,))  # the same statement again: executed, not re-prepared
        got2 = _norm(cur.fetchall())
    with connector(DIRECT_KW, variant) as d:
        cur = d.cursor(prepared=True)
        cur.execute(sql, (1,))
        want = _norm(cur.fetchall())
        want_desc = cur.description
    assert got == want
    assert got2 == want[1:]
    assert desc == want_desc
    assert len(got) == 3 and all(v is None for v in got[1][1:])
    assert got[0][2] == 18446744073709551615 and got[0][11] == "héllo wörld 😀 ✓"


@pytest.mark.parametrize("variant", CONNECTOR_VARIANTS)
def test_connector_prepared_parameters_round_trip(my_via, my_direct, variant):
    name = f"t_{uuid.uuid4().hex[:10]}"
    direct_rows(my_direct, f"create table {name} like typed")
    values = (
        10, -5, 18446744073709551615, 127, -32768, Decimal("123.456789"), 2.5e-300, 1.25,
        dt.date(2000, 1, 2), dt.datetime(2001, 2, 3, 4, 5, 6, 789), dt.timedelta(hours=30, microseconds=5),
        1999, "ünïcode 🐍", b"\x00\x01\xfe\xff", '{"x": 1}', "red", "xyz",
    )
    try:
        with connector(my_via.kw(), variant) as c:
            cur = c.cursor(prepared=True)
            cur.execute(f"insert into {name} values ({', '.join(['%s'] * len(values))})", values)
            cur.execute(f"insert into {name} (id, i, vc) values (%s, %s, %s)", (11, None, None))
            cur.executemany(f"insert into {name} (id, i) values (%s, %s)", [(100 + i, i) for i in range(20)])
            cur.execute(f"select count(*), sum(i) from {name} where id >= %s", (100,))
            assert cur.fetchone() == (20, Decimal(sum(range(20))))
        with connector(DIRECT_KW, variant) as d:
            cur = d.cursor(prepared=True)
            cur.execute(f"select {NO_YEAR} from {name} where id = %s", (10,))
            row = cur.fetchone()
        with pymysql.connect(**DIRECT_KW) as d, d.cursor() as dcur:  # YEAR: see above
            dcur.execute(f"select yr from {name} where id = 10")
            assert dcur.fetchone() == (1999,)
        assert row[0] == 10 and row[2] == 18446744073709551615 and row[5] == Decimal("123.456789")
        assert row[9] == values[9] and row[10] == values[10] and row[11] == values[12]
        assert bytes(row[12]) == values[13]
        assert direct_rows(my_direct, f"select i, vc from {name} where id = 11") == [(None, None)]
    finally:
        direct_rows(my_direct, f"drop table {name}")


def test_connector_prepared_send_long_data(my_via, my_table, my_direct):
    """A file-like parameter travels in COM_STMT_SEND_LONG_DATA chunks before the EXECUTE."""
    data = ("long data 😀 " * 20000).encode()
    with connector(my_via.kw()) as c:
        cur = c.cursor(prepared=True)
        cur.execute(f"insert into {my_table} (id, v) values (%s, %s)", (1, "short"))
        cur.execute("select length(%s), md5(%s)", (io.BytesIO(data), io.BytesIO(data)))
        assert cur.fetchone() == (len(data), hashlib.md5(data).hexdigest())
    assert direct_rows(my_direct, f"select v from {my_table}") == [("short",)]


def test_connector_prepared_errors_and_reuse(my_via):
    with connector(my_via.kw()) as c:
        cur = c.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute("select * from no_such_table_xyz where id = %s", (1,))
        assert ei.value.errno == 1146 and ei.value.sqlstate == "42S02"
        for i in range(5):
            cur.execute("select %s + 1, %s", (i, f"v{i}"))
            assert cur.fetchone() == (i + 1, f"v{i}")
        cur.close()
        plain = c.cursor()
        plain.execute("select 'plain after prepared'")
        assert plain.fetchone() == ("plain after prepared",)


def test_connector_statistics_ping_and_info(my_via):
    with connector(my_via.kw()) as c:
        stats = c.cmd_statistics()
        assert "Uptime" in stats and stats["Uptime"] > 0, stats
        c.ping()
        assert c.is_connected()
        assert c.server_info
        cur = c.cursor()
        cur.execute("select database()")
        assert cur.fetchone() == (IT_DB,)


# -- SQLAlchemy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["pymysql", "mysqlconnector"])
def test_sqlalchemy_orm_round_trip(my_via, my_direct, driver):
    from sqlalchemy import Integer, Numeric, String, create_engine, delete, func, select, update
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

    table = f"orm_{uuid.uuid4().hex[:10]}"

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id = mapped_column(Integer, primary_key=True, autoincrement=True)
        name = mapped_column(String(100))
        price = mapped_column(Numeric(10, 2))

    connect_args: dict[str, Any] = {"ssl_disabled": True}
    if driver == "mysqlconnector":
        connect_args["use_pure"] = True
    engine = create_engine(my_via.url(driver), connect_args=connect_args, pool_pre_ping=True)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add_all([Item(name=f"item {i} 😀", price=Decimal(i) / 4) for i in range(10)])
            s.commit()
            assert s.scalar(select(func.count()).select_from(Item)) == 10
            got = s.scalars(select(Item).where(Item.price > Decimal("1.5")).order_by(Item.id)).all()
            assert [i.name for i in got] == [f"item {i} 😀" for i in range(7, 10)]
            s.execute(update(Item).where(Item.id == got[0].id).values(name="renamed"))
            first = s.get(Item, got[1].id)
            first.price = Decimal("99.99")
            s.commit()
            s.execute(delete(Item).where(Item.price < Decimal("1")))
            s.commit()
            rows = s.execute(select(Item.name, Item.price).order_by(Item.id)).all()
        assert len(rows) == 6
        assert ("renamed", Decimal("1.75")) in rows and any(p == Decimal("99.99") for _, p in rows)
        assert direct_rows(my_direct, f"select count(*) from {table}") == [(6,)]
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
    assert direct_rows(my_direct, "select count(*) from information_schema.tables where table_name = %s", (table,)) == [(0,)]
