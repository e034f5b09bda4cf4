"""The COM_* commands through the gateway: multi-statements and COM_SET_OPTION, COM_INIT_DB / USE
(and that policy follows the current database), COM_PING, COM_QUIT, COM_FIELD_LIST,
COM_RESET_CONNECTION, COM_STATISTICS, prepared statements on the raw wire (binary rows,
SEND_LONG_DATA, RESET, CLOSE), COM_CHANGE_USER, KILL, LOCAL INFILE and executable comments.

Tests taking `my_server` run twice: against the gateway and against MariaDB itself (id
`mariadb`), so the expected answer is the server's own.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.mysql.conftest import (
    IT_DB,
    IT_DB2,
    MY_ENVIRONMENTS,
    MY_RULES,
    VIA,
    MyEndpoint,
    default_targets,
    direct_rows,
    is_refusal,
    my_target,
    mysql_listener,
)
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess
from tests.support.pgcluster import wait_for

# -- multi-statements and COM_SET_OPTION ----------------------------------------------------------


def test_multi_statements_and_set_option(my_server: MyEndpoint):
    with my_server.raw() as c:
        res = c.query("select 1 as a; select 'b' as b, 2; do 1")
        assert [type(r).__name__ for r in res] == ["ResultSet", "ResultSet", "OK"]
        assert res[0].rows == [(b"1",)] and res[1].rows == [(b"b", b"2")]
        eof = c.set_option(mywire.MYSQL_OPTION_MULTI_STATEMENTS_OFF)
        assert eof.eof or isinstance(eof, mywire.OK)
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("select 1; select 2")
        assert ei.value.errno == 1064
        c.set_option(mywire.MYSQL_OPTION_MULTI_STATEMENTS_ON)
        assert len(c.query("select 1; select 2")) == 2
        assert c.query_rows("select 'after'") == [("after",)]


def test_multi_statements_need_the_capability(my_server: MyEndpoint):
    caps = mywire.DEFAULT_CAPABILITIES & ~mywire.CLIENT_MULTI_STATEMENTS
    with my_server.raw(capabilities=caps) as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("select 1; select 2")
        assert ei.value.errno == 1064
        assert c.query_rows("select 3") == [(3,)]


def test_multi_results_error_in_the_middle(my_server: MyEndpoint):
    with my_server.raw() as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("select 1; select * from no_such_table_xyz; select 3")
        assert ei.value.errno == 1146
        assert [r.rows for r in ei.value.results] == [[(b"1",)]]  # type: ignore[attr-defined]
        assert c.query_rows("select 'in sync'") == [("in sync",)]


def test_multi_statements_cli(my_via):
    import subprocess

    k = my_via.kw()
    res = subprocess.run(
        ["mariadb", "--no-defaults", "--skip-ssl", "-h", k["host"], "-P", str(k["port"]), "-u", k["user"],
         *( [f"-p{k['password']}"] if k["password"] else []), "-N", "-B", "-e", "select 1; select 2", k["database"]],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "2"]


# -- COM_INIT_DB / USE -----------------------------------------------------------------------------


def test_init_db_and_use(my_server: MyEndpoint):
    with my_server.raw() as c:
        c.init_db(IT_DB2)
        assert c.query_rows("select database()") == [(IT_DB2,)]
        with pytest.raises(mywire.MySQLError) as ei:
            c.init_db("no_such_db_xyz")
        assert ei.value.errno in (1049, 1044)
        assert c.query_rows("select database()") == [(IT_DB2,)]
        c.query(f"use {IT_DB}")
        assert c.query_rows("select database(), count(*) from accounts") == [(IT_DB, 3)]


def test_pymysql_select_db(my_via):
    with my_via.pymysql() as c:
        c.select_db(IT_DB2)
        with c.cursor() as cur:
            cur.execute("select database()")
            assert cur.fetchone() == (IT_DB2,)


def test_policy_follows_the_current_database(my_via):
    """Rule no-vault denies the table sqlward_it2.vault. `vault` in sqlward_it is another table."""
    my_via.require_gateway()
    with my_via.pymysql() as c, c.cursor() as cur:
        cur.execute("select secret from vault")  # sqlward_it.vault
        assert cur.fetchone() == ("not secret: sqlward_it.vault",)
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute(f"select secret from {IT_DB2}.vault")
        assert is_refusal(ei.value, "no-vault"), ei.value.args
        cur.execute(f"use {IT_DB2}")  # COM_QUERY USE
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("select secret from vault")
        assert is_refusal(ei.value, "no-vault"), f"after USE {IT_DB2}, `vault` is {IT_DB2}.vault: {ei.value.args}"
        cur.execute(f"use {IT_DB}")
        cur.execute("select secret from vault")
        assert cur.fetchone() == ("not secret: sqlward_it.vault",)
        c.select_db(IT_DB2)  # COM_INIT_DB
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("select secret from vault")
        assert is_refusal(ei.value, "no-vault"), f"after COM_INIT_DB {IT_DB2}: {ei.value.args}"


SECRET2 = "SECRET of sqlward_it2"


def _rows_or_refusal(cur: Any, sql: str) -> list[Any]:
    """All rows of every result of `sql`, or [] when the gateway refuses it."""
    rows: list[Any] = []
    try:
        cur.execute(sql)
        rows += list(cur.fetchall() or [])
        while cur.nextset():
            rows += list(cur.fetchall() or [])
    except pymysql.MySQLError as e:
        assert is_refusal(e), e.args
    return rows


def test_use_inside_a_multi_statement_is_followed(my_via):
    """`USE other; SELECT ... FROM t`: the second statement reads other.t. Deciding the whole
    string against the database current *before* it would let `vault` pass as sqlward_it.vault."""
    my_via.require_gateway()
    with my_via.pymysql(client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        rows = _rows_or_refusal(cur, f"use {IT_DB2}; select secret from vault")
        assert (SECRET2,) not in rows, "rule no-vault bypassed with USE inside a multi-statement"
        cur.execute(f"use {IT_DB}")


def test_use_at_the_end_of_a_multi_statement_is_tracked(my_via):
    my_via.require_gateway()
    with my_via.pymysql(client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        _rows_or_refusal(cur, f"select 1; use {IT_DB2}")
        cur.execute("select database()")
        current = cur.fetchone()[0]
        rows = _rows_or_refusal(cur, "select secret from vault")
        assert (SECRET2,) not in rows, f"the session is in {current}; rule no-vault bypassed"


# -- COM_PING, COM_QUIT, COM_STATISTICS, COM_FIELD_LIST, COM_RESET_CONNECTION ------------------------


def test_ping_and_statistics(my_server: MyEndpoint):
    with my_server.raw() as c:
        for _ in range(3):
            ok = c.ping()
            assert ok.status & mywire.SERVER_STATUS_AUTOCOMMIT
        stats = c.statistics()
        assert stats.startswith("Uptime: ") and "Threads: " in stats and "Questions: " in stats, stats
        assert c.query_rows("select 'after stats'") == [("after stats",)]
    with my_server.pymysql() as p:
        p.ping(reconnect=False)


def test_quit_closes_both_sides(my_server: MyEndpoint, my_direct):
    with my_server.raw() as c:
        upstream_id = c.scalar("select connection_id()")
        c.quit()
        assert mywire.wait_closed(c, 5), "no close after COM_QUIT"

    def gone() -> bool:
        return direct_rows(my_direct, "select count(*) from information_schema.processlist where id = %s",
                           (upstream_id,)) == [(0,)]

    assert wait_for(gone, 5), f"upstream session {upstream_id} still open after COM_QUIT"


def test_field_list(my_server: MyEndpoint):
    with my_server.raw() as c:
        cols = c.field_list("accounts")
        assert [x.name for x in cols] == ["id", "owner", "balance"]
        assert all(x.table == "accounts" and x.schema == IT_DB for x in cols)
        assert [x.type for x in cols] == [mywire.T_LONG, mywire.T_VAR_STRING, mywire.T_NEWDECIMAL]
        assert [x.name for x in c.field_list("accounts", "ow%")] == ["owner"]
        with pytest.raises(mywire.MySQLError) as ei:
            c.field_list("no_such_table_xyz")
        assert ei.value.errno == 1146
        assert c.query_rows("select 'after field list'") == [("after field list",)]


def test_field_list_follows_policy(my_gw: MyEndpoint):
    """COM_FIELD_LIST reads a table's definition: on a denied table it must be refused too."""
    with my_gw.raw() as c:
        c.init_db(IT_DB2)
        try:
            cols = c.field_list("vault")
        except mywire.MySQLError as e:
            assert e.errno in (1142, 1227), e
        else:
            pytest.fail(f"COM_FIELD_LIST on {IT_DB2}.vault (rule no-vault) answered {[x.name for x in cols]}")
        assert c.query_rows("select 1") == [(1,)]


def test_reset_connection_raw(my_server: MyEndpoint):
    with my_server.raw() as c:
        c.query("set @x = 42")
        c.query("create temporary table tmp_reset (i int)")
        st = c.stmt_prepare("select ? + 1")
        c.reset_connection()
        assert c.query_rows("select @x") == [(None,)]
        with pytest.raises(mywire.MySQLError) as ei:
            c.query("select * from tmp_reset")
        assert ei.value.errno == 1146
        with pytest.raises(mywire.MySQLError) as ei:
            c.stmt_execute(st, [1])
        assert ei.value.errno == 1243  # unknown prepared statement handler
        st2 = c.stmt_prepare("select ? * 2")
        assert c.stmt_execute(st2, [21])[0].rows == [(42,)]


def test_reset_connection_connector(my_via):
    kw = my_via.kw()
    with mysql.connector.connect(**kw, use_pure=True, ssl_disabled=True, autocommit=True) as c:
        cur = c.cursor()
        cur.execute("set @y = 'before reset'")
        c.cmd_reset_connection()
        cur = c.cursor()
        cur.execute("select @y, database()")
        assert cur.fetchone() == (None, IT_DB)


# -- prepared statements on the raw wire -------------------------------------------------------------


def test_prepared_binary_rows_equal_text_rows(my_server: MyEndpoint):
    """Every column of `typed` through COM_STMT_EXECUTE (binary rows, NULL bitmap) decodes to the
    same values as through COM_QUERY (text rows)."""
    with my_server.raw() as c:
        text = [r for r in c.query("select * from typed order by id", decode=True) if isinstance(r, mywire.ResultSet)][0]
        st = c.stmt_prepare("select * from typed where id >= ? order by id")
        assert len(st.params) == 1 and [x.name for x in st.columns] == text.names
        binary = c.stmt_execute(st, [0])[0]
        assert isinstance(binary, mywire.ResultSet)
        assert binary.rows == text.rows
        assert binary.rows[1][1:] == (None,) * (len(text.names) - 1)
        assert binary.rows[0][11] == 2024  # YEAR
        c.stmt_reset(st)
        assert c.stmt_execute(st, [3])[0].rows == text.rows[2:]
        c.stmt_close(st)
        with pytest.raises(mywire.MySQLError) as ei:
            c.stmt_execute(st, [1])
        assert ei.value.errno == 1243
        assert c.query_rows("select 'after close'") == [("after close",)]


def test_prepared_params_and_long_data(my_server: MyEndpoint):
    with my_server.raw() as c:
        st = c.stmt_prepare("select ?, ?, ?, ?, length(?), md5(?)")
        blob = os.urandom(300000)
        c.stmt_send_long_data(st, 4, blob[:100000])
        c.stmt_send_long_data(st, 4, blob[100000:])
        c.stmt_send_long_data(st, 5, blob)
        res = c.stmt_execute(st, [-7, 18446744073709551615, "ünï 😀", None, None, None], long_data=(4, 5))
        import hashlib

        row = res[0].rows[0]
        assert row[:4] == (-7, 18446744073709551615, "ünï 😀", None)
        assert row[4:] == (len(blob), hashlib.md5(blob).hexdigest())


def test_prepared_dml_and_multi_results(my_server: MyEndpoint, my_direct):
    name = f"t_{uuid.uuid4().hex[:10]}"
    direct_rows(my_direct, f"create table {name} (id int primary key, v varchar(20))")
    proc = f"p_{uuid.uuid4().hex[:8]}"
    direct_rows(my_direct, f"create procedure {proc}(n int) begin select n; select n * 2; end")
    try:
        with my_server.raw() as c:
            ins = c.stmt_prepare(f"insert into {name} values (?, ?)")
            for i in range(5):
                ok = c.stmt_execute(ins, [i, f"v{i}"])[0]
                assert isinstance(ok, mywire.OK) and ok.affected_rows == 1
            call = c.stmt_prepare(f"call {proc}(?)")
            res = c.stmt_execute(call, [21])
            sets = [r for r in res if isinstance(r, mywire.ResultSet)]
            assert [s.rows for s in sets] == [[(21,)], [(42,)]]
            assert c.query_rows(f"select count(*) from {name}") == [(5,)]
    finally:
        direct_rows(my_direct, f"drop table {name}")
        direct_rows(my_direct, f"drop procedure {proc}")


# -- COM_CHANGE_USER -----------------------------------------------------------------------------------


def _who(cur: Any) -> tuple[Any, ...]:
    cur.execute("select current_user(), database(), @v")
    return tuple(cur.fetchone())


def test_change_user_reauthenticates(my_via, my_table, my_direct):
    gw = my_via.require_gateway()
    direct_rows(my_direct, f"insert into {my_table} values (1, 'x')")
    with mysql.connector.connect(**my_via.kw(), use_pure=True, ssl_disabled=True, autocommit=True) as c:
        cur = c.cursor()
        cur.execute("set @v = 'alice was here'")
        assert _who(cur) == ("sqlward_up@%", IT_DB, "alice was here")
        cur.execute(f"truncate table {my_table}")  # alice may truncate (rule no-truncate is bob's)
        direct_rows(my_direct, f"insert into {my_table} values (2, 'y')")
        c.cmd_change_user(username="bob", password=SECRETS["bob"], database="app")
        cur = c.cursor()
        # Never passed through: the upstream user is still the gateway's, and the session state
        # of the previous identity is gone.
        assert _who(cur) == ("sqlward_up@%", IT_DB, None)
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute(f"truncate table {my_table}")
        assert ei.value.errno in (1142, 1227) and ei.value.sqlstate == "42000" and "no-truncate" in ei.value.msg
        assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(1,)]
        c.cmd_change_user(username="alice", password=SECRETS["alice"], database="prod")
        cur = c.cursor()
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute(f"drop table {my_table}")  # production now
        assert "no-drop" in ei.value.msg
        cur.execute(f"truncate table {my_table}")
    assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(0,)]
    del gw


def test_change_user_raw_and_audit(my_gw: MyEndpoint, mysql_gateway: GatewayProcess, marker: str):
    since = mysql_gateway.audit_offset()
    with my_gw.raw() as c:
        c.change_user("bob", SECRETS["bob"], "app")
        assert c.auth_trace[-1] == "ok"
        c.query(f"select '{marker}'")
        assert c.query_rows("select current_user()") == [("sqlward_up@%",)]
    evs = mysql_gateway.wait_audit(
        lambda es: any(e.get("event") == "statement.decided" and marker in e.get("sql", "") for e in es), since=since)
    decided = next(e for e in evs if e.get("event") == "statement.decided" and marker in e.get("sql", ""))
    assert decided["who"]["subject"] == "bob"
    auths = [e for e in evs if e.get("event") == "connection.authenticated" and e["connection_id"] == decided["connection_id"]]
    assert [a["who"]["subject"] for a in auths] == ["alice", "bob"]


@pytest.mark.parametrize("user,password", [("bob", "wrong"), ("root", ""), ("sqlward_up", "sqlward-up-pw-3b9d"), ("nobody", "x")])
def test_change_user_refused(my_gw: MyEndpoint, user: str, password: str):
    """A wrong secret, or a name that is an upstream account rather than a gateway identity,
    gets ERR 1045; whatever happens next, the session is never someone else's."""
    with my_gw.raw() as c:
        c.query("set @v = 'alice'")
        with pytest.raises(mywire.MySQLError) as ei:
            c.change_user(user, password, "app")
        assert ei.value.errno == 1045 and ei.value.sqlstate == "28000", ei.value
        try:
            rows = c.query_rows("select current_user(), @v")
        except (mywire.Closed, mywire.MySQLError, OSError):
            return  # MySQL closes the connection after a failed COM_CHANGE_USER; so may we
        assert rows == [("sqlward_up@%", "alice")]
    my_gw.assert_serving()


def test_change_user_to_unknown_target(my_gw: MyEndpoint):
    with my_gw.raw() as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.change_user("bob", SECRETS["bob"], "no_such_target")
        assert ei.value.errno in (1049, 1044) and "no_such_target" in ei.value.message


# -- KILL ----------------------------------------------------------------------------------------------


class Sleeper:
    """A session running SELECT SLEEP(n) in a thread."""

    def __init__(self, conn: pymysql.Connection, seconds: float = 10) -> None:
        self.conn = conn
        self.seconds = seconds
        self.result: Any = None
        self.error: BaseException | None = None
        self.elapsed = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute(f"select sleep({self.seconds})")
                self.result = cur.fetchone()
        except BaseException as e:  # noqa: BLE001
            self.error = e
        self.elapsed = time.monotonic() - t

    def start(self) -> "Sleeper":
        self.thread.start()
        time.sleep(0.5)
        return self

    def join(self, timeout: float = 15) -> "Sleeper":
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sleeping query did not end"
        return self


def _assert_interrupted(s: Sleeper, conn_killed: bool) -> None:
    assert s.elapsed < 5, f"SLEEP({s.seconds}) ran {s.elapsed:.1f}s: not killed"
    if conn_killed:
        assert isinstance(s.error, pymysql.err.OperationalError) and s.error.args[0] in (2013, 2006, 1927, 1158, 1159), s.error
    else:
        # MariaDB answers an interrupted SLEEP with ER_QUERY_INTERRUPTED.
        assert (isinstance(s.error, pymysql.err.OperationalError) and s.error.args[0] == 1317) or s.result == (1,), (s.error, s.result)


def test_kill_query_and_connection(my_via):
    with my_via.pymysql() as victim, my_via.pymysql() as killer:
        s = Sleeper(victim).start()
        with killer.cursor() as cur:
            cur.execute(f"kill query {victim.thread_id()}")
        _assert_interrupted(s.join(), conn_killed=False)
        with victim.cursor() as cur:  # KILL QUERY leaves the session usable
            cur.execute("select 'alive'")
            assert cur.fetchone() == ("alive",)
        s = Sleeper(victim).start()
        with killer.cursor() as cur:
            cur.execute(f"kill {victim.thread_id()}")
        _assert_interrupted(s.join(), conn_killed=True)
        with pytest.raises(pymysql.MySQLError):
            with victim.cursor() as cur:
                cur.execute("select 1")
        with killer.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as ei:
                cur.execute("kill 4000000000")
            assert ei.value.args[0] == 1094
            cur.execute("select 'killer fine'")
            assert cur.fetchone() == ("killer fine",)


def test_kill_with_com_process_kill(my_via):
    with my_via.pymysql() as victim:
        s = Sleeper(victim).start()
        with my_via.endpoint().raw() as r:
            r.process_kill(victim.thread_id())
        _assert_interrupted(s.join(), conn_killed=True)


def test_kill_cannot_reach_another_identity(my_via):
    my_via.require_gateway()
    with my_via.pymysql("alice") as victim, my_via.pymysql("bob") as other, my_via.pymysql("alice") as alice2:
        with victim.cursor() as cur:
            cur.execute("select connection_id()")
            victim_upstream = cur.fetchone()[0]
        s = Sleeper(victim, 3).start()
        with other.cursor() as cur:
            for sql in (f"kill query {victim.thread_id()}", f"kill {victim.thread_id()}"):
                with pytest.raises(pymysql.err.OperationalError) as ei:
                    cur.execute(sql)
                assert ei.value.args[0] == 1095, (sql, ei.value.args)
            # An upstream id is not a gateway id.
            with pytest.raises(pymysql.err.OperationalError) as ei:
                cur.execute(f"kill {victim_upstream}")
            assert ei.value.args[0] in (1094, 1095), ei.value.args
        with pytest.raises(mywire.MySQLError) as ei2:
            with mywire.login(my_via.host, my_via.port, "bob", SECRETS["bob"], "app") as r:
                r.process_kill(victim.thread_id())
        assert ei2.value.errno == 1095
        s.join()
        assert s.error is None and s.result == (0,), f"bob's KILL reached alice's session: {s.error}"
        with alice2.cursor() as cur:  # the same identity may
            cur.execute(f"kill query {victim.thread_id()}")


@pytest.mark.parametrize("template", [
    "/*!50000 KILL {up} */",
    "/*M! KILL {up} */",
    "/*!50000 KILL QUERY {up} */",
    "select 1; kill {up}",
    "kill /* hidden */ {up}",
    "KILL\nCONNECTION\n{up}",
    "do 1; /*!KILL QUERY {up}*/",
    "execute immediate 'kill {up}'",
])
def test_kill_bypasses_cannot_reach_upstream_threads(my_via, template: str):
    """Every identity shares the gateway's upstream user, so a KILL that reaches the upstream with
    an upstream thread id would let bob kill alice's session. None of these may."""
    my_via.require_gateway()
    with my_via.pymysql("alice") as victim, my_via.pymysql("bob", client_flag=CLIENT.MULTI_STATEMENTS) as bob:
        with victim.cursor() as cur:
            cur.execute("select connection_id()")
            up = cur.fetchone()[0]
        s = Sleeper(victim, 2).start()
        sql = template.format(up=up)
        try:
            with bob.cursor() as cur:
                cur.execute(sql)
                while cur.nextset():
                    pass
        except pymysql.MySQLError:
            pass
        s.join()
        assert s.error is None and s.result == (0,), f"{sql!r} from bob killed alice's upstream thread: {s.error}"
        with victim.cursor() as cur:
            cur.execute("select 'victim alive'")
            assert cur.fetchone() == ("victim alive",)


def test_kill_via_connector(my_via):
    with my_via.pymysql() as victim:
        s = Sleeper(victim).start()
        with mysql.connector.connect(**my_via.kw(), use_pure=True, ssl_disabled=True) as c:
            c.cmd_process_kill(victim.thread_id())
        _assert_interrupted(s.join(), conn_killed=True)


# -- LOCAL INFILE -----------------------------------------------------------------------------------------


@pytest.fixture
def csv_file(tmp_path) -> str:
    p = tmp_path / "rows.csv"
    p.write_text("1,one\n2,two\n3,three\n")
    return str(p)


def test_local_infile_refused(my_via, my_table, my_direct, csv_file):
    my_via.require_gateway()
    with my_via.pymysql(local_infile=True) as c, c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute(f"load data local infile '{csv_file}' into table {my_table} fields terminated by ','")
        assert ei.value.args[0] in (1142, 1227, 1148, 3948, 2068), ei.value.args
        assert "LOCAL INFILE" in ei.value.args[1].upper() or "local-infile" in ei.value.args[1], ei.value.args
        cur.execute("select 'session goes on'")
        assert cur.fetchone() == ("session goes on",)
    with my_via.pymysql(local_infile=True, client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError):
            cur.execute(f"select 1; load data local infile '{csv_file}' into table {my_table}")
            while cur.nextset():
                pass
    assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(0,)]


@pytest.fixture(scope="module")
def infile_gateway(mysql_it_database: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with GatewayProcess(
        targets=[my_target("app", allow_local_infile=True), my_target("closed")],
        rules=MY_RULES, environments=MY_ENVIRONMENTS, listener=mysql_listener(), name="it-mysql-infile",
    ) as gw:
        yield gw


def test_local_infile_allowed_by_target(infile_gateway: GatewayProcess, my_table, my_direct, csv_file):
    gw = infile_gateway
    with pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="app",
                         local_infile=True, ssl_disabled=True, autocommit=True) as c, c.cursor() as cur:
        cur.execute(f"load data local infile '{csv_file}' into table {my_table} fields terminated by ','")
        assert cur.rowcount == 3
        cur.execute("select 'after infile'")
        assert cur.fetchone() == ("after infile",)
    assert direct_rows(my_direct, f"select id, v from {my_table} order by id") == [(1, "one"), (2, "two"), (3, "three")]
    with pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="closed",
                         local_infile=True, ssl_disabled=True, autocommit=True) as c, c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError):
            cur.execute(f"load data local infile '{csv_file}' into table {my_table} fields terminated by ','")


def test_local_infile_raw_client_without_capability(my_gw: MyEndpoint, my_table, my_direct, csv_file):
    """Even if the upstream asked for a file, a client that did not offer LOCAL_FILES is never asked."""
    with my_gw.raw() as c:
        with pytest.raises(mywire.MySQLError):
            c.query(f"load data local infile '{csv_file}' into table {my_table}", local_infile=b"9,nine\n")
        assert getattr(c, "local_infile_requested", None) is None
        assert c.query_rows("select 1") == [(1,)]
    assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(0,)]


# -- executable comments -------------------------------------------------------------------------------


@pytest.mark.parametrize("sql,rule", [
    ("/*!50000 DROP TABLE guarded */", "no-drop"),
    ("/*!DROP TABLE guarded*/", "no-drop"),
    ("/*M!100100 DROP TABLE guarded */", "no-drop"),
    ("select 1 /*!, (select secret from sqlward_it2.vault) */", "no-vault"),
    ("select 1; /*!50000 drop table guarded */", "no-drop"),
])
def test_executable_comments_refused_in_production(my_via, my_direct, sql: str, rule: str):
    my_via.require_gateway()
    with my_via.pymysql(target="prod", client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute(sql)
            while cur.nextset():
                pass
        assert is_refusal(ei.value, rule), ei.value.args
        cur.execute("select 'session goes on'")
        assert cur.fetchone() == ("session goes on",)
    assert direct_rows(my_direct, "select note from guarded") == [("must survive",)]


def test_executable_comments_that_are_harmless_run(my_via):
    with my_via.pymysql(target="prod") as c, c.cursor() as cur:
        cur.execute("/*!40101 SET NAMES utf8mb4 */")
        cur.execute("/*!40101 SET @saved_cs_client = @@character_set_client */")
        cur.execute("select /*!50000 'executed' */ as x")
        assert cur.fetchone() == ("executed",)
        cur.execute("select 1 /*!99999 + 1 */")  # newer than the server: a comment
        assert cur.fetchone() == (1,)


def test_executable_comment_version_above_server_is_harmless(my_via, my_direct):
    my_via.require_gateway()
    with my_via.pymysql(target="prod") as c, c.cursor() as cur:
        try:
            cur.execute("/*!99999 DROP TABLE guarded */ select 'x'")
        except pymysql.MySQLError as e:
            assert is_refusal(e), e.args  # refusing it (as DROP, or as unparseable) is fine as well
    assert direct_rows(my_direct, "select note from guarded") == [("must survive",)]


def test_process_info_is_refused_it_would_show_other_identities_statements(my_gw: MyEndpoint):
    # COM_PROCESS_INFO is SHOW PROCESSLIST without SQL: every session of the shared upstream
    # user, with other identities' statement texts, past the policy and the masks.
    with my_gw.raw() as c:
        c.command(0x0A)
        err = mywire.parse_err(c.read_packet())
        assert err.errno == 1227 and "COM_PROCESS_INFO" in err.message, err
        assert c.query_rows("select 'after process info'") == [("after process info",)]
