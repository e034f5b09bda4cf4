"""Hostile and broken clients, payloads over 16 MiB, and lost upstreams, on the MySQL wire.

Most raw cases run twice (`my_server`: the gateway and MariaDB itself as the reference). A broken
client must get a clear ERR packet or a clean close, never a hang; after each case a fresh
session must still work (`assert_serving`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import mysql.connector
import pymysql
import pytest

from tests.integration.mysql.conftest import (
    MY_ENVIRONMENTS,
    MY_RULES,
    VIA,
    MyEndpoint,
    default_targets,
    direct_rows,
    mysql_listener,
)
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess
from tests.support.mariadb import root_sql
from tests.support.pgcluster import wait_for


def _error_or_close(c: mywire.RawMySQL, timeout: float = 5.0) -> list[mywire.MySQLError]:
    """The server answers a broken packet with ERR and/or closes; it must not hang."""
    pkts, closed = c.read_all_until_closed(timeout)
    errs = [mywire.parse_err(p) for p in pkts if p[:1] == b"\xff"]
    assert closed or errs, f"no ERR and no close within {timeout}s: {pkts!r}"
    assert len(errs) == len(pkts), f"non-ERR packets in the answer: {pkts!r}"
    return errs


def _hs_response(user: bytes = b"alice", caps: int = mywire.DEFAULT_CAPABILITIES) -> bytes:
    return struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23 + user + b"\0"


# -- connection phase ------------------------------------------------------------------------------


def test_connect_and_close_without_a_byte(my_server: MyEndpoint):
    for _ in range(5):
        socket.create_connection((my_server.host, my_server.port), timeout=5).close()
    with my_server.connect() as c:  # read the greeting, say nothing, leave
        assert c.handshake.protocol_version == 10
    my_server.assert_serving()


@pytest.mark.parametrize("case", ["garbage", "http", "tls_client_hello", "empty", "truncated", "no_nul_user",
                                  "wrong_seq", "bad_length_then_eof"])
def test_broken_handshake_response(my_server: MyEndpoint, case: str):
    with my_server.connect() as c:
        if case == "garbage":
            # Fixed noise: truly random bytes sometimes spell a valid (even pre-4.1) response,
            # and then the server rightly asks for an auth switch and waits.
            c.send_raw(mywire.header(200, 1) + bytes((i * 37 + 11) % 256 for i in range(200)))
        elif case == "http":
            c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        elif case == "tls_client_hello":  # TLS without the SSLRequest first
            c.send_raw(bytes.fromhex("16030100c8010000c40303") + os.urandom(200))
        elif case == "empty":
            c.send_raw(mywire.header(0, 1))
        elif case == "truncated":
            c.send_raw(mywire.header(10, 1) + b"\x00" * 10)
        elif case == "no_nul_user":
            p = _hs_response()[:-1] + b"x" * 40
            c.send_raw(mywire.header(len(p), 1) + p)
        elif case == "wrong_seq":
            p = _hs_response()
            c.send_raw(mywire.header(len(p), 5) + p)
        elif case == "bad_length_then_eof":
            c.send_raw(mywire.header(1000, 1) + b"\x00" * 10)
            c.sock.shutdown(socket.SHUT_WR)
        errs = _error_or_close(c)
        for e in errs if case != "garbage" else ():  # random bytes can mean anything, e.g. a charset
            assert e.errno in (1043, 1045, 1698, 1156, 1158, 1159, 1153, 1251, 3159, 1105, 2027), e
    my_server.assert_serving()


def test_truncated_handshake_response_at_every_length(my_gw: MyEndpoint):
    with my_gw.connect() as c0:
        good = c0.handshake_response("alice", b"\x00" * 32, "app", "caching_sha2_password")
    for n in (1, 4, 31, 32, 33, 36, len(good) - 1):
        with my_gw.connect() as c:
            c.send_raw(mywire.header(n, 1) + good[:n])
            _error_or_close(c)
    my_gw.assert_serving()


def test_idle_and_half_open_clients_do_not_block_others(my_server: MyEndpoint):
    socks = []
    try:
        for i in range(5):
            s = socket.create_connection((my_server.host, my_server.port), timeout=5)
            if i % 2:
                s.sendall(b"\x20\x00")  # half a header, then silence
            socks.append(s)
        t = time.monotonic()
        my_server.assert_serving()
        assert time.monotonic() - t < 3
    finally:
        for s in socks:
            s.close()


# -- command phase ---------------------------------------------------------------------------------


def test_wrong_sequence_id_in_a_command(my_server: MyEndpoint):
    with my_server.raw() as c:
        c.send_raw(mywire.header(9, 3) + b"\x03select 1")
        errs = _error_or_close(c)
        assert all(e.errno == 1156 for e in errs), errs
    my_server.assert_serving()


def test_unknown_command(my_server: MyEndpoint):
    with my_server.raw() as c:
        c.send_raw(mywire.header(1, 0) + b"\x7f")
        c.seq = 1
        with pytest.raises(mywire.MySQLError) as ei:
            c.read_ok()
        assert ei.value.errno == 1047
        assert c.query_rows("select 'after unknown command'") == [("after unknown command",)]


@pytest.mark.parametrize("payload", [b"", b"\x17\x01", b"\x17\x01\x00", b"\x19", b"\x18\x01\x00", b"\x02",
                                     b"\x11", b"\x16"], ids=["empty", "exec_1", "exec_2", "close_0", "long_2",
                                                            "init_db_empty", "change_user_empty", "prepare_empty"])
def test_malformed_commands(my_server: MyEndpoint, payload: bytes):
    if payload == b"\x11" and not my_server.is_gateway:
        pytest.skip("MariaDB answers an empty COM_CHANGE_USER with a new greeting")
    with my_server.raw() as c:
        c.send_raw(mywire.header(len(payload), 0) + payload)
        pkts, closed = c.read_all_until_closed(1)
        assert all(p[:1] in (b"\xff", b"\x00", b"\xfe") for p in pkts), pkts
        if not closed:  # the session may go on: then it must be in sync
            c.seq = 0
            c.strict_seq = True
            assert c.query_rows("select 'in sync'") == [("in sync",)]
    my_server.assert_serving()


def test_unknown_statement_id(my_server: MyEndpoint):
    with my_server.raw() as c:
        c.command(mywire.COM_STMT_EXECUTE, struct.pack("<IBI", 987654, 0, 1))
        with pytest.raises(mywire.MySQLError) as ei:
            c.read_ok()
        assert ei.value.errno == 1243
        assert c.query_rows("select 1") == [(1,)]


def test_random_bytes_after_login(my_server: MyEndpoint):
    for seed in range(5):
        with my_server.raw() as c:
            rnd = bytes((seed * 7919 + i * 31) % 256 for i in range(300))
            c.send_raw(rnd)
            c.read_all_until_closed(1)
    my_server.assert_serving()


# -- oversized packets -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gateway(mysql_it_database: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with GatewayProcess(targets=default_targets(), rules=MY_RULES, environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(max_message_size=65536), name="it-mysql-small") as gw:
        yield gw


def _small(gw: GatewayProcess) -> MyEndpoint:
    return MyEndpoint("gateway", gw.host, gw.port, "alice", SECRETS["alice"], "app")


def test_oversized_query_beyond_max_message_size(small_gateway: GatewayProcess):
    ep = _small(small_gateway)
    with ep.raw() as c:
        assert c.query_rows("select length('" + "x" * 60000 + "')") == [(60000,)]
        c.command(mywire.COM_QUERY, b"select '" + b"y" * 100000 + b"'")
        errs = _error_or_close(c)
        for e in errs:
            assert e.errno in (1153, 1158, 1159, 2020), e
            assert "large" in e.message or "max" in e.message, e
    ep.assert_serving()


def test_oversized_header_is_refused_without_waiting_for_the_body(small_gateway: GatewayProcess):
    ep = _small(small_gateway)
    with ep.raw() as c:
        c.send_raw(mywire.header(0xFFFFFF, 0) + b"\x03select ")  # announces 16 MiB, sends 8 bytes
        t = time.monotonic()
        _error_or_close(c, timeout=5)
        assert time.monotonic() - t < 5
    with ep.connect() as c:  # the same before authentication
        c.send_raw(mywire.header(0x100000, 1) + b"\x00" * 100)
        _error_or_close(c, timeout=5)
    ep.assert_serving()


def test_large_results_pass_a_small_listener(small_gateway: GatewayProcess):
    """max_message_size limits what clients send, not what the server returns."""
    ep = _small(small_gateway)
    with ep.pymysql() as c, c.cursor() as cur:
        cur.execute("select repeat('r', 1000000)")
        assert len(cur.fetchone()[0]) == 1000000


# -- payloads over 16 MiB --------------------------------------------------------------------------

BIG = 20 * 1024 * 1024


@pytest.fixture
def big_packets() -> Iterator[None]:
    """max_allowed_packet = 64 MiB on the server for new sessions; restored afterwards."""
    (old,), = root_sql("select @@global.max_allowed_packet")
    root_sql("set global max_allowed_packet = 67108864")
    try:
        yield
    finally:
        root_sql(f"set global max_allowed_packet = {old}")


def test_insert_and_read_a_20_mib_blob(my_via, my_direct, big_packets):
    name = "big_" + os.urandom(4).hex()
    direct_rows(my_direct, f"create table {name} (id int primary key, b longblob)")
    blob = os.urandom(BIG)
    try:
        with my_via.pymysql(max_allowed_packet=64 * 1024 * 1024) as c, c.cursor() as cur:
            # The query is about 40 MiB (hex-escaped), so it travels in three packets.
            cur.execute(f"insert into {name} values (1, %s)", (blob,))
            cur.execute(f"select b, length(b) from {name} where id = 1")
            got, n = cur.fetchone()
            assert n == BIG and got == blob
            cur.execute("select repeat('z', %s)", (BIG,))
            assert cur.fetchone()[0] == "z" * BIG
            cur.execute("select 'after big'")
            assert cur.fetchone() == ("after big",)
        (md5,), = direct_rows(my_direct, f"select md5(b) from {name}")
        assert md5 == hashlib.md5(blob).hexdigest()
    finally:
        direct_rows(my_direct, f"drop table {name}")


def test_20_mib_through_the_binary_protocol(my_server: MyEndpoint, big_packets):
    """A 20 MiB parameter in COM_STMT_EXECUTE and a 20 MiB value in a binary row (mysql-connector
    itself fails on binary rows over 16 MiB, so the raw client does this one)."""
    blob = os.urandom(BIG)
    with my_server.raw() as c:
        st = c.stmt_prepare("select ?, length(?)")
        rows = c.stmt_execute(st, [blob, b"x"])[0].rows
        assert rows == [(blob, 1)]
        st2 = c.stmt_prepare("select md5(?)")
        assert c.stmt_execute(st2, [blob])[0].rows == [(hashlib.md5(blob).hexdigest(),)]


def test_raw_17_mib_query_split_in_frames(my_server: MyEndpoint, big_packets):
    with my_server.raw() as c:
        payload = "x" * (17 * 1024 * 1024)
        rows = c.query_rows(f"select length('{payload}'), md5('{payload}')")
        assert rows == [(len(payload), hashlib.md5(payload.encode()).hexdigest())]
        exact = "y" * (0xFFFFFF - len("select ''") - 1)  # the payload is exactly 0xFFFFFF: an empty frame follows
        assert c.query_rows(f"select '{exact}'")[0][0] == exact


# -- lost upstreams and clients --------------------------------------------------------------------


def test_upstream_killed_mid_query(my_via, my_direct):
    with my_via.pymysql() as c:
        with c.cursor() as cur:
            cur.execute("select connection_id()")
            upstream_id = cur.fetchone()[0]
        out: dict[str, object] = {}

        def run() -> None:
            t = time.monotonic()
            try:
                with c.cursor() as cur:
                    cur.execute("select sleep(10)")
                    out["rows"] = cur.fetchall()
            except pymysql.MySQLError as e:
                out["error"] = e
            out["elapsed"] = time.monotonic() - t

        th = threading.Thread(target=run, daemon=True)
        th.start()
        time.sleep(0.5)
        direct_rows(my_direct, f"kill {upstream_id}")
        th.join(15)
        assert not th.is_alive()
        assert isinstance(out.get("error"), pymysql.err.OperationalError), out
        # 2013/2006 from the client library, or the server's own ERR (1927 "Connection was
        # killed", 1158/1159 network errors) before the close.
        assert out["error"].args[0] in (2013, 2006, 1927, 1158, 1159, 1105), out  # type: ignore[union-attr]
        assert out["elapsed"] < 5, out  # type: ignore[operator]
    my_via.endpoint().assert_serving()


def test_upstream_killed_while_idle(my_via, my_direct):
    with my_via.pymysql() as c:
        with c.cursor() as cur:
            cur.execute("select connection_id()")
            upstream_id = cur.fetchone()[0]
        direct_rows(my_direct, f"kill {upstream_id}")
        time.sleep(0.2)
        with pytest.raises(pymysql.MySQLError):
            with c.cursor() as cur:
                cur.execute("select 1")
    my_via.endpoint().assert_serving()


def test_client_vanishes_mid_result(my_server: MyEndpoint, my_direct):
    with my_server.raw() as c:
        upstream_id = c.scalar("select connection_id()")
        c.command(mywire.COM_QUERY, b"select seq, repeat('v', 200) from seq_1_to_3000000")
        for _ in range(50):
            c.read_packet()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    my_server.assert_serving()

    def gone() -> bool:
        return direct_rows(my_direct, "select count(*) from information_schema.processlist where id = %s",
                           (upstream_id,)) == [(0,)]

    assert wait_for(gone, 10), f"upstream session {upstream_id} outlived its client by 10 s"


def test_many_concurrent_sessions(my_via):
    def one(i: int) -> int:
        with my_via.pymysql() as c, c.cursor() as cur:
            cur.execute("select %s + 0, sleep(0.02)", (i,))
            return cur.fetchone()[0]

    with ThreadPoolExecutor(20) as pool:
        assert sorted(pool.map(one, range(60))) == list(range(60))
