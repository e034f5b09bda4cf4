"""SIGTERM drains MySQL sessions too (issue 15): an idle session is closed at once with
ER_SERVER_SHUTDOWN (1053), a statement in flight finishes and its client gets its rows, a
statement still running at `drain_seconds` is cut; new connections are not accepted; the
gateway exits 0. Two clients: PyMySQL, and the tests' raw wire client (tests/support/mywire),
which reads the unsolicited ERR packet an idle session gets.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pymysql
import pytest

from tests.integration.mysql.conftest import default_targets, mysql_listener
from tests.support import mywire
from tests.support.background import background
from tests.support.gateway import SECRETS, GatewayProcess, port_closed

pytestmark = pytest.mark.integration


def _connect(gw: GatewayProcess) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=gw.port, user="alice", password=SECRETS["alice"],
                           database="app", autocommit=True, connect_timeout=10, ssl_disabled=True)


def test_sigterm_drains_mysql_sessions(mysql_it_database: str) -> None:
    gw = GatewayProcess(targets=default_targets(), listener=mysql_listener(default_target="app"), name="it-my-drain")
    gw.config["gateway"]["drain_seconds"] = 6
    gw.config_text = gw._render(gw.config)
    with gw:
        idle = _connect(gw)
        raw_idle = mywire.login("127.0.0.1", gw.port, "alice", SECRETS["alice"], "app")
        busy = _connect(gw)
        overdue = _connect(gw)
        with idle.cursor() as cur:
            cur.execute("SELECT 1")
        results: dict[str, Any] = {}

        def rows(conn: pymysql.Connection, sql: str) -> Any:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()

        threads = [
            background(results, "busy", lambda: rows(busy, "SELECT 'finished' FROM (SELECT SLEEP(3)) AS s"), pymysql.MySQLError),
            background(results, "overdue", lambda: rows(overdue, "SELECT SLEEP(60)"), pymysql.MySQLError),
        ]
        time.sleep(0.5)
        assert gw.proc is not None
        gw.exit_expected = True
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while not port_closed(gw.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_closed(gw.port)
        # The idle raw session is told at once: an unsolicited ERR 1053, then the end.
        raw_idle.sock.settimeout(3)
        packet = raw_idle.read_packet()
        assert packet[0] == 0xFF and int.from_bytes(packet[1:3], "little") == 1053, packet
        assert b"shutting down" in packet
        assert "busy" not in results
        with pytest.raises(pymysql.MySQLError) as info:
            with idle.cursor() as cur:
                cur.execute("SELECT 1")
        assert info.value.args[0] in (1053, 2006, 2013), info.value
        for t in threads:
            t.join(15)
        assert results["busy"] == (("finished",),)
        err = results["overdue"]
        assert isinstance(err, pymysql.MySQLError), err
        assert 5.0 <= results["overdue_at"] - signalled <= 12.0
        assert gw.proc.wait(15) == 0
        closed = [e for e in gw.audit_events() if e["event"] == "connection.closed"]
        assert sum(1 for e in closed if e.get("reason") == "gateway shutting down") == 4
        for conn in (idle, busy, overdue):
            try:
                conn.close()
            except pymysql.MySQLError:
                pass
