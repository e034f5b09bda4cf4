"""Connections awaiting authentication are capped on MySQL listeners too (see
tests/integration/test_preauth_limits.py): one more than `max_unauthenticated_per_address`
gets ERR 1040 in place of the greeting and is closed; PyMySQL and mysql-connector both show it;
logged-in sessions do not count and keep being served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import mysql.connector
import pymysql
import pytest

from tests.integration.mysql.conftest import default_targets, mysql_listener
from tests.support.gateway import SECRETS, GatewayProcess


@pytest.fixture
def capped(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(), listener=mysql_listener(default_target="app"), name="my-preauth",
        extra={"gateway": {"name": "my-preauth", "max_unauthenticated": 10, "max_unauthenticated_per_address": 2}},
    ) as gw:
        yield gw


def _login(gw: GatewayProcess) -> pymysql.Connection:
    return pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="app",
                           ssl_disabled=True, connect_timeout=5)


def test_one_more_unauthenticated_connection_gets_err_1040(capped: GatewayProcess) -> None:
    sessions = [_login(capped) for _ in range(4)]  # authenticated: not counted
    idle = [socket.create_connection((capped.host, capped.port), timeout=5) for _ in range(2)]
    try:
        for s in idle:
            assert s.recv(1)  # each got its greeting
        with pytest.raises(pymysql.err.OperationalError) as ei:
            _login(capped)
        assert ei.value.args[0] == 1040 and "too many connections awaiting authentication" in ei.value.args[1], ei.value
        with pytest.raises(mysql.connector.Error) as ci:
            mysql.connector.connect(host=capped.host, port=capped.port, user="alice", password=SECRETS["alice"],
                                    database="app", ssl_disabled=True, use_pure=True, connection_timeout=5)
        assert ci.value.errno == 1040 and "max_unauthenticated_per_address = 2" in ci.value.msg, ci.value
        for conn in sessions:
            with conn.cursor() as cur:
                cur.execute("select 7")
                assert cur.fetchone() == (7,)
    finally:
        for s in idle:
            s.close()
        for conn in sessions:
            conn.close()
    deadline = time.monotonic() + 10
    while True:  # the places are given back
        try:
            _login(capped).close()
            break
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
