"""Issue 11 on MySQL / MariaDB: the current database the gateway qualifies names with is the server's.

Unqualified table names are qualified with the session's current database for rules and masking
(`StatementRequest.schema`). A deny rule on `sqlward_b11_secret.*` (alice) and a mask on
`sqlward_b11_secret.t.col` (ana) must hold whatever the session did to reach that database:
COM_INIT_DB, USE (plain, quoted, in an executable comment), USE inside a multi-statement (also one
that fails after the USE), dynamic SQL running USE (EXECUTE IMMEDIATE, PREPARE / EXECUTE, and
COM_STMT_PREPARE / EXECUTE: MariaDB prepares USE), COM_CHANGE_USER (starts on the target's
database), COM_RESET_CONNECTION (MariaDB keeps the database), a USE that fails (unknown database,
access denied: nothing changes), CALL of a routine in another database (the server restores the
caller's), and clients that negotiate CLIENT_SESSION_TRACK (the server reports the database in
its OK packets).

Each route runs through PyMySQL, a raw protocol client (tests/support/mywire.py) with and without
CLIENT_SESSION_TRACK, mysql-connector (prepared statements, CHANGE USER) and the mariadb CLI. After
the route, the invariant is checked against the server's own answer (`SELECT DATABASE()`):
alice's `SELECT * FROM t` is refused exactly when the server is in the secret database, and ana
gets masked values there; every byte the client receives goes through a TCP tap and never holds
the secret value.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Callable, Iterator

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.conftest import VIA
from tests.integration.mysql.conftest import is_refusal, mysql_listener, root_sql
from tests.support import mywire
from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

HOME = "sqlward_b11_home"
SECRET = "sqlward_b11_secret"
UP_USER, UP_PASSWORD = "sqlward_b11_up", "b11-up-pw-7c1e"
SECRET_VALUE = "zq8.secret.value.b11"
HOME_VALUE = "home value"
USERS = {"alice": "alice-b11", "ana": "ana-b11"}
TARGET = "b11home"
RULES = [{"id": "b11-no-secret", "tables": [f"{SECRET}.*"], "identities": ["alice"], "action": "deny"}]
MASKS = [{"id": "b11-secret-col", "columns": [f"{SECRET}.t.col"], "function": "redact", "exempt_groups": ["dba"]}]


@pytest.fixture(scope="module")
def databases() -> Iterator[None]:
    def drop() -> None:
        root_sql(f"DROP DATABASE IF EXISTS {HOME}", f"DROP DATABASE IF EXISTS {SECRET}",
                 f"DROP USER IF EXISTS '{UP_USER}'@'%'")

    drop()
    root_sql(
        f"CREATE DATABASE {HOME}",
        f"CREATE DATABASE {SECRET}",
        f"CREATE TABLE {HOME}.t (id INT PRIMARY KEY, col VARCHAR(100))",
        f"INSERT INTO {HOME}.t VALUES (1, '{HOME_VALUE}')",
        f"CREATE TABLE {SECRET}.t (id INT PRIMARY KEY, col VARCHAR(100))",
        f"INSERT INTO {SECRET}.t VALUES (1, '{SECRET_VALUE}')",
        f"CREATE PROCEDURE {SECRET}.p() SELECT DATABASE() AS inside",
        f"CREATE USER '{UP_USER}'@'%' IDENTIFIED BY '{UP_PASSWORD}'",
        f"GRANT ALL ON {HOME}.* TO '{UP_USER}'@'%'",
        f"GRANT ALL ON {SECRET}.* TO '{UP_USER}'@'%'",
    )
    yield
    drop()


@pytest.fixture(scope="module")
def gateway(databases: None) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    t = target(TARGET, f"mysql://{UP_USER}@127.0.0.1:3306/{HOME}?sslmode=disable", "development", protocol="mysql")
    t["password"] = UP_PASSWORD
    with GatewayProcess(
        targets=[t],
        identities=[
            {"name": "alice", "secret": USERS["alice"], "groups": ["dba"]},
            {"name": "ana", "secret": USERS["ana"], "groups": ["analysts"]},
        ],
        rules=RULES,
        listener=mysql_listener(),
        extra={"masks": MASKS, "masking": {"hash_key": "b11-key"}},
        name="it-b11-current-db",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def tap(gateway: GatewayProcess) -> Iterator[Tap]:
    t = Tap(gateway.host, gateway.port)
    yield t
    t.close()


# -- clients ------------------------------------------------------------------------------------


class Refused(Exception):
    """The server or the gateway answered with an error."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, message)
        self.errno, self.message = errno, message


class Client:
    name = ""

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of every result set; Refused on an error."""
        raise NotImplementedError

    def init_db(self, db: str) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def change_user(self, user: str) -> None:
        raise NotImplementedError

    def prepared(self, sql: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PyMySQLClient(Client):
    name = "pymysql"

    def __init__(self, port: int, user: str) -> None:
        self.conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=USERS[user], database=TARGET,
                                    autocommit=True, ssl_disabled=True, client_flag=CLIENT.MULTI_STATEMENTS)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql)
                rows = list(cur.fetchall())
                while cur.nextset():
                    rows += list(cur.fetchall())
                return rows
        except pymysql.MySQLError as e:
            raise Refused(e.args[0], str(e.args[1] if len(e.args) > 1 else e)) from e

    def init_db(self, db: str) -> None:
        self.conn.select_db(db)

    def reset(self) -> None:
        self.conn._execute_command(0x1F, b"")  # COM_RESET_CONNECTION
        self.conn._read_ok_packet()

    def close(self) -> None:
        self.conn.close()


class RawClient(Client):
    def __init__(self, port: int, user: str, *, session_track: bool) -> None:
        caps = mywire.DEFAULT_CAPABILITIES | (mywire.CLIENT_SESSION_TRACK if session_track else 0)
        self.name = "raw-session-track" if session_track else "raw"
        self.port, self.user = port, user
        self.c = mywire.login("127.0.0.1", port, user, USERS[user], TARGET, capabilities=caps)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            results = self.c.query(sql, decode=True)
        except mywire.MySQLError as e:
            raise Refused(e.errno, e.message) from e
        return [row for r in results if isinstance(r, mywire.ResultSet) for row in r.rows]

    def init_db(self, db: str) -> None:
        try:
            self.c.init_db(db)
        except mywire.MySQLError as e:
            raise Refused(e.errno, e.message) from e

    def reset(self) -> None:
        self.c.reset_connection()

    def change_user(self, user: str) -> None:
        self.c.change_user(user, USERS[user], TARGET)

    def prepared(self, sql: str) -> None:
        st = self.c.stmt_prepare(sql)
        self.c.stmt_execute(st)
        self.c.stmt_close(st)

    def close(self) -> None:
        self.c.close()


class ConnectorClient(Client):
    name = "connector"

    def __init__(self, port: int, user: str) -> None:
        self.conn = mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=USERS[user],
                                            database=TARGET, autocommit=True, ssl_disabled=True, use_pure=True)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.cursor()
            cur.execute(sql, map_results=True)
            rows: list[tuple[Any, ...]] = []
            while True:
                if cur.with_rows:
                    rows += [tuple(r) for r in cur.fetchall()]
                if not cur.nextset():
                    break
            cur.close()
            return rows
        except mysql.connector.Error as e:
            raise Refused(e.errno or 0, e.msg or "") from e

    def init_db(self, db: str) -> None:
        self.conn.cmd_init_db(db)

    def reset(self) -> None:
        self.conn.cmd_reset_connection()

    def change_user(self, user: str) -> None:
        self.conn.cmd_change_user(username=user, password=USERS[user], database=TARGET)

    def prepared(self, sql: str) -> None:
        cur = self.conn.cursor(prepared=True)
        cur.execute(sql)
        cur.close()

    def close(self) -> None:
        self.conn.close()


CLIENTS: dict[str, Callable[[int, str], Client]] = {
    "pymysql": PyMySQLClient,
    "raw": lambda port, user: RawClient(port, user, session_track=False),
    "raw-session-track": lambda port, user: RawClient(port, user, session_track=True),
    "connector": ConnectorClient,
}


# -- routes to the secret database ----------------------------------------------------------------


def _tolerate(f: Callable[[], object]) -> None:
    """A step that may fail (a USE of a database that is not there, a refusal): go on."""
    try:
        f()
    except (Refused, mysql.connector.Error, pymysql.MySQLError, mywire.MySQLError):
        pass


ROUTES: dict[str, Callable[[Client], None]] = {
    "init-db": lambda c: c.init_db(SECRET),
    "use": lambda c: c.query(f"USE {SECRET}"),
    "use-quoted": lambda c: c.query(f"use `{SECRET}`"),
    "use-in-executable-comment": lambda c: c.query(f"/*!USE {SECRET}*/"),
    "set-statement-for-use": lambda c: _tolerate(lambda: c.query(f"SET STATEMENT max_statement_time=10 FOR USE {SECRET}")),
    # The next statement of the same request runs in the new database.
    "multi-set-statement-use-then-read": lambda c: _tolerate(
        lambda: c.query(f"SET STATEMENT max_statement_time=10 FOR USE {SECRET}; SELECT * FROM t; SELECT CONCAT(col, '') FROM t")),
    "multi-comment-use-then-read": lambda c: _tolerate(
        lambda: c.query(f"/*!USE {SECRET}*/; SELECT * FROM t; SELECT CONCAT(col, '') FROM t")),
    "multi-use-then-read": lambda c: _tolerate(
        lambda: c.query(f"USE {SECRET}; SELECT * FROM t; SELECT CONCAT(col, '') FROM t")),
    "multi-use-select": lambda c: c.query(f"USE {SECRET}; SELECT 1"),
    "multi-use-then-error": lambda c: _tolerate(lambda: c.query(f"USE {SECRET}; SELECT * FROM nowhere_b11")),
    "multi-use-then-error-elsewhere": lambda c: _tolerate(
        lambda: c.query(f"USE {SECRET}; SELECT * FROM {HOME}.nowhere_b11")),
    "multi-use-then-error-no-table": lambda c: _tolerate(lambda: c.query(f"USE {SECRET}; SELECT nosuchfn_b11()")),
    "multi-use-then-failed-use": lambda c: _tolerate(lambda: c.query(f"USE {SECRET}; USE sqlward_b11_nope")),
    "multi-select-error-then-use": lambda c: _tolerate(lambda: c.query(f"SELECT * FROM nowhere_b11; USE {SECRET}")),
    "execute-immediate": lambda c: _tolerate(lambda: c.query(f"EXECUTE IMMEDIATE 'USE {SECRET}'")),
    "prepare-execute": lambda c: (_tolerate(lambda: c.query(f"PREPARE s FROM 'USE {SECRET}'")),
                                  _tolerate(lambda: c.query("EXECUTE s"))),
    "stmt-prepare-use": lambda c: _tolerate(lambda: c.prepared(f"USE {SECRET}")),
    "failed-use-keeps": lambda c: (c.query(f"USE {SECRET}"), _tolerate(lambda: c.query("USE sqlward_b11_nope"))),
    "denied-use-keeps": lambda c: (c.query(f"USE {SECRET}"), _tolerate(lambda: c.query("USE mysql"))),
    "failed-init-db-keeps": lambda c: (c.init_db(SECRET), _tolerate(lambda: c.init_db("sqlward_b11_nope"))),
    "reset-connection-keeps": lambda c: (c.query(f"USE {SECRET}"), c.reset()),
    "change-user-starts-on-target": lambda c: (c.query(f"USE {SECRET}"), c.change_user(c_user(c))),
    # (CALL is refused for identities under masking: opaque.)
    "call-in-other-database": lambda c: _tolerate(lambda: c.query(f"CALL {SECRET}.p()")),
    "use-then-call": lambda c: (c.query(f"USE {SECRET}"), _tolerate(lambda: c.query(f"CALL {SECRET}.p()"))),
}
# Which routes each client can take (PyMySQL has no COM_CHANGE_USER nor COM_STMT_PREPARE of a
# statement without a result; the others can do everything).
UNSUPPORTED = {"pymysql": {"change-user-starts-on-target", "stmt-prepare-use"}}


def c_user(c: Client) -> str:
    return getattr(c, "user", None) or c._user  # type: ignore[attr-defined]


def _connect(name: str, port: int, user: str) -> Client:
    c = CLIENTS[name](port, user)
    c._user = user  # type: ignore[attr-defined]
    return c


def _server_database(c: Client) -> str | None:
    rows = c.query("SELECT DATABASE()")
    return rows[0][0]


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_deny_rule_holds_whatever_the_route(tap: Tap, route: str, client: str) -> None:
    if route in UNSUPPORTED.get(client, set()):
        pytest.skip(f"{client} cannot take this route")
    tap.reset()
    c = _connect(client, tap.port, "alice")
    try:
        ROUTES[route](c)
        where = _server_database(c)
        try:
            rows = c.query("SELECT * FROM t")
        except Refused as e:
            assert where == SECRET and is_refusal((e.errno, e.message), "b11-no-secret"), (route, where, e.message)
        else:
            assert where != SECRET, f"{route}: the server is in {SECRET} and SELECT * FROM t was answered: {rows}"
            assert rows == [(1, HOME_VALUE)], (route, where, rows)
        c.query("SELECT 1")  # the session goes on
    finally:
        c.close()
    assert SECRET_VALUE.encode() not in tap.received, route


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_mask_holds_whatever_the_route(tap: Tap, route: str, client: str) -> None:
    if route in UNSUPPORTED.get(client, set()):
        pytest.skip(f"{client} cannot take this route")
    tap.reset()
    c = _connect(client, tap.port, "ana")
    try:
        ROUTES[route](c)
        where = _server_database(c)
        for sql in ("SELECT col FROM t", "SELECT CONCAT(col, '') AS c FROM t", "SELECT UPPER(col) FROM t"):
            try:
                rows = c.query(sql)
            except Refused:
                continue  # refused: nothing leaves
            if where == SECRET:
                assert SECRET_VALUE not in str(rows) and SECRET_VALUE.upper() not in str(rows), (route, sql, rows)
    finally:
        c.close()
    received = tap.received
    assert SECRET_VALUE.encode() not in received and SECRET_VALUE.upper().encode() not in received, route


def test_change_user_starts_on_the_target_database(tap: Tap) -> None:
    """COM_CHANGE_USER opens the new identity's session on the target's database, as a new
    connection would (COM_RESET_CONNECTION alone would keep the previous identity's USE)."""
    c = _connect("connector", tap.port, "alice")
    try:
        c.query(f"USE {SECRET}")
        c.change_user("alice")
        assert _server_database(c) == HOME
        assert c.query("SELECT * FROM t") == [(1, HOME_VALUE)]
    finally:
        c.close()


def test_reset_connection_keeps_the_database_as_mariadb_does(tap: Tap) -> None:
    for name in ("connector", "raw"):
        c = _connect(name, tap.port, "alice")
        try:
            c.query(f"USE {SECRET}")
            c.reset()
            assert _server_database(c) == SECRET, name
            with pytest.raises(Refused) as ei:
                c.query("SELECT * FROM t")
            assert is_refusal((ei.value.errno, ei.value.message), "b11-no-secret"), name
        finally:
            c.close()


def test_use_is_not_allowed_in_routines(databases: None) -> None:
    """What the tracking relies on: a routine cannot run USE (ER_SP_BADSTATEMENT), and a CALL
    gives the caller its database back."""
    with pytest.raises(pymysql.MySQLError) as ei:
        root_sql(f"CREATE PROCEDURE {HOME}.bad() BEGIN USE {SECRET}; END")
    assert ei.value.args[0] == 1314


def _cli(port: int, user: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(port), "-u", user, "--skip-ssl", "--force", "-N", TARGET],
        input=script, capture_output=True, text=True, env={**os.environ, "MYSQL_PWD": USERS[user]}, timeout=30,
    )


CLI_ROUTES = {
    # The CLI's own `use` command sends COM_INIT_DB.
    "use-command": f"use {SECRET}\n",
    "use-statement-ok": f"USE {SECRET};\n",
    # One COM_QUERY holding a USE and a failing statement.
    "multi-use-then-error": f"DELIMITER //\nSELECT 1; USE {SECRET}; SELECT nosuchfn_b11()//\nDELIMITER ;\n",
    "failed-use-keeps": f"use {SECRET}\nuse sqlward_b11_nope\n",
}


@pytest.mark.parametrize("route", list(CLI_ROUTES))
def test_the_mariadb_cli(tap: Tap, route: str) -> None:
    tap.reset()
    out = _cli(tap.port, "alice", CLI_ROUTES[route] + "SELECT CONCAT('db=', DATABASE());\nSELECT * FROM t;\n")
    text = out.stdout + out.stderr
    assert SECRET_VALUE not in text and SECRET_VALUE.encode() not in tap.received, text
    assert f"db={SECRET}" in text and "b11-no-secret" in text, text
    tap.reset()
    out = _cli(tap.port, "ana", CLI_ROUTES[route] + "SELECT CONCAT('db=', DATABASE());\nSELECT CONCAT(col, '') FROM t;\n")
    text = out.stdout + out.stderr
    assert SECRET_VALUE not in text and SECRET_VALUE.encode() not in tap.received, text
    assert f"db={SECRET}" in text, text


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_the_scanner_reads_the_database_mariadb_tracks(databases: None, deprecate_eof: bool) -> None:
    """What the gateway relies on for clients with CLIENT_SESSION_TRACK: MariaDB's own OK
    packets (session_track_schema is on by default) name the database; the scanner finds it in
    a multi-statement response whose last statement failed."""
    from sqlward.adapters.mysql.packets import encode_packets
    from sqlward.adapters.mysql.response import ResponseScanner, Shape

    caps = mywire.DEFAULT_CAPABILITIES | mywire.CLIENT_SESSION_TRACK
    caps = caps | mywire.CLIENT_DEPRECATE_EOF if deprecate_eof else caps & ~mywire.CLIENT_DEPRECATE_EOF
    c = mywire.login("127.0.0.1", 3306, "root", "", HOME, capabilities=caps)
    try:
        scanner = ResponseScanner(Shape.RESULTSET, deprecate_eof=deprecate_eof, session_track=True)
        c.command(0x03, f"SELECT 1; USE {SECRET}; SELECT * FROM {HOME}.nowhere_b11".encode())
        seq = 1
        while not scanner.done:
            data, seq = encode_packets(c.read_packet(), seq)
            buf = bytearray(data)
            assert scanner.scan(buf) == len(data)
        assert scanner.error_code == 1146
        assert scanner.schema == SECRET
    finally:
        c.close()


def test_prepared_statement_is_decided_again_in_the_database_it_was_prepared_in(databases: None) -> None:
    """The server resolves a prepared statement's tables in the database current at PREPARE,
    for every execution (verified on MariaDB 10.11). After a policy reload the gateway decides
    the statement again: under that database, not the session's current one."""
    import time

    t = target(TARGET, f"mysql://{UP_USER}@127.0.0.1:3306/{HOME}?sslmode=disable", "development", protocol="mysql")
    t["password"] = UP_PASSWORD
    gw = GatewayProcess(
        targets=[t], identities=[{"name": "alice", "secret": USERS["alice"], "groups": ["dba"]}],
        listener=mysql_listener(),
        extra={"gateway": {"name": "it-b11-prepared-db", "policy_files": ["policies/*.toml"]}},
    )
    policy = gw.dir / "policies" / "p.toml"
    policy.parent.mkdir()
    policy.write_text('[[rules]]\nid = "ok"\naction = "allow"\n')
    deny = f'[[rules]]\nid = "b11-no-secret"\ntables = ["{SECRET}.*"]\naction = "deny"\n'
    with gw:
        conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=USERS["alice"],
                                       database=TARGET, use_pure=True, autocommit=True)
        raw = mywire.login(gw.host, gw.port, "alice", USERS["alice"], TARGET)
        try:
            plain = conn.cursor()
            plain.execute(f"USE {SECRET}")
            cur = conn.cursor(prepared=True)
            cur.execute("SELECT col FROM t WHERE id = ?", (1,))
            assert cur.fetchall() == [(SECRET_VALUE,)]
            plain.execute(f"USE {HOME}")
            raw.query(f"USE {SECRET}")
            st = raw.stmt_prepare("SELECT col FROM t")
            raw.query(f"USE {HOME}")
            time.sleep(1.1)
            policy.write_text(deny)
            deadline = time.monotonic() + 10
            refused = {"connector": False, "raw": False}
            while time.monotonic() < deadline and not all(refused.values()):
                if not refused["connector"]:
                    try:
                        cur.execute("SELECT col FROM t WHERE id = ?", (1,))  # the same statement id
                        rows = cur.fetchall()
                        assert rows == [(SECRET_VALUE,)], rows  # the server reads sqlward_b11_secret.t
                    except mysql.connector.Error as exc:
                        assert exc.errno == 1227 and "b11-no-secret" in exc.msg, exc
                        refused["connector"] = True
                if not refused["raw"]:
                    try:
                        raw.stmt_execute(st)
                    except mywire.MySQLError as exc:
                        assert exc.errno == 1227 and "b11-no-secret" in exc.message, exc
                        refused["raw"] = True
                time.sleep(0.2)
            assert all(refused.values()), (refused, gw.stderr_text())
        finally:
            conn.close()
            raw.close()
