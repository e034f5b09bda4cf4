"""Limits before authentication, and an audit trail that is proven writable (PostgreSQL side).

* Connections that have not authenticated are capped per client address and over the gateway:
  one more gets FATAL 53300 at once, in the protocol, and is closed; a client that logs in frees
  its place. Two independent clients (psycopg / libpq and asyncpg) see the refusal.
* The soft descriptor limit is raised to the hard one at start; at a low limit, a flood of idle
  unauthenticated connections does not stop an established session, the exhaustion is logged
  once (not a traceback every 100 ms), and logins work again once the flood is gone.
* The gateway does not start on an audit path it cannot write (/dev/full), and an audit file
  deleted or replaced under it is reopened: no record goes into a file nobody can read.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import VIA, default_targets
from tests.support.gateway import SECRETS, TRACEBACK_MARK, GatewayProcess

pytestmark = pytest.mark.skipif(VIA == "direct", reason="gateway-only behaviour")


def _idle(host: str, port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """`n` connections that never send a byte."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(5)
        s.connect((host, port))
        socks.append(s)
    return socks


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def capped(it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(), name="it-preauth",
        extra={"gateway": {"name": "it-preauth", "max_unauthenticated": 6, "max_unauthenticated_per_address": 3}},
    ) as gw:
        yield gw


def _psycopg_error(gw: GatewayProcess) -> str:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), connect_timeout=5).close()
    return str(ei.value)


def _asyncpg_error(gw: GatewayProcess) -> tuple[str, str]:
    async def attempt() -> tuple[str, str]:
        try:
            conn = await asyncpg.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                         database="app", ssl=False, timeout=5)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate, str(exc)
        await conn.close()
        return "", ""
    return asyncio.run(attempt())


def test_unauthenticated_connections_are_capped_per_address(capped: GatewayProcess) -> None:
    idle = _idle(capped.host, capped.port, 3)
    try:
        time.sleep(0.3)
        message = _psycopg_error(capped)
        assert "too many connections awaiting authentication from 127.0.0.1" in message, message
        assert "max_unauthenticated_per_address = 3" in message
        sqlstate, text = _asyncpg_error(capped)
        assert sqlstate == "53300" and "awaiting authentication" in text, (sqlstate, text)
        # another address still gets in (the cap is per address)
        other = _idle(capped.host, capped.port, 1, source="127.0.0.2")
        other[0].sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest: the gateway answers 'N'
        assert other[0].recv(1) == b"N"
        _close(other)
    finally:
        _close(idle)
    # the places are given back when the idle connections go
    _wait(lambda: _try_login(capped))


def _try_login(gw: GatewayProcess) -> bool:
    try:
        with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_global_cap_and_authenticated_sessions_free_their_place(capped: GatewayProcess) -> None:
    # Logged-in sessions do not count: more of them than the caps allow waiting.
    sessions = [psycopg.connect(capped.dsn("alice", SECRETS["alice"], "app"), connect_timeout=5) for _ in range(8)]
    try:
        idle = _idle(capped.host, capped.port, 3) + _idle(capped.host, capped.port, 3, source="127.0.0.3")
        try:
            time.sleep(0.3)
            s = _idle(capped.host, capped.port, 1, source="127.0.0.4")[0]
            body = b"\x00\x03\x00\x00user\x00alice\x00database\x00app\x00\x00"
            s.sendall((len(body) + 4).to_bytes(4, "big") + body)  # a StartupMessage
            data = s.recv(512)
            assert data[:1] == b"E" and b"53300" in data and b"max_unauthenticated = 6" in data, data
            assert s.recv(16) == b""  # and closed
            s.close()
            for conn in sessions:  # established sessions are served throughout
                assert conn.execute("select 2").fetchone() == (2,)
        finally:
            _close(idle)
    finally:
        for conn in sessions:
            conn.close()
    assert "refused 1 connection(s): too many connections awaiting authentication" in capped.stderr_text()


def test_descriptor_limit_is_raised_to_the_hard_limit_at_start() -> None:
    code = (
        "import resource\n"
        "from sqlward.gateway.server import raise_descriptor_limit\n"
        "print(raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )

    def low() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=low, check=True)
    assert out.stdout.strip() == "(2048, 2048) (2048, 2048)", out


def test_a_flood_at_a_low_descriptor_limit_does_not_stop_established_sessions(it_database: str) -> None:
    with GatewayProcess(
        targets=default_targets(), name="it-fdflood",
        extra={"gateway": {"name": "it-fdflood", "max_unauthenticated": 5000, "max_unauthenticated_per_address": 5000}},
    ) as gw:
        assert gw.proc is not None
        limits = open(f"/proc/{gw.proc.pid}/limits").read()
        soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
        assert soft == hard, limits  # raised at start
        established = psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), connect_timeout=5)
        subprocess.run(["prlimit", f"--pid={gw.proc.pid}", "--nofile=120:120"], check=True)
        flood: list[socket.socket] = []
        try:
            for _ in range(200):  # more than the limit allows: the listener runs out of descriptors
                s = socket.socket()
                s.settimeout(5)
                s.connect((gw.host, gw.port))
                flood.append(s)
            time.sleep(1.5)  # the accept loop hits EMFILE over and over
            for i in range(5):
                assert established.execute("select %s::int", (i,)).fetchone() == (i,)
            err = gw.stderr_text()
            assert err.count("cannot accept connections") == 1, err[-3000:]
            assert "Raise the descriptor limit" in err
            assert TRACEBACK_MARK not in err
        finally:
            _close(flood)
        _wait(lambda: _try_login(gw), timeout=20)
        assert "accepts connections again" in gw.stderr_text()
        established.close()


def test_the_gateway_does_not_start_on_an_audit_path_it_cannot_write(it_database: str) -> None:
    gw = GatewayProcess(targets=default_targets(), name="it-devfull", extra={"audit": {"file": "/dev/full"}})
    with pytest.raises(RuntimeError) as ei:
        gw.start()
    text = str(ei.value)
    assert "the audit trail cannot be written (/dev/full)" in text and "No space left on device" in text, text
    assert TRACEBACK_MARK not in text
    assert gw.returncode not in (0, None)


def test_a_deleted_or_replaced_audit_file_is_reopened(it_database: str) -> None:
    with GatewayProcess(targets=default_targets(), name="it-audit-deleted") as gw:
        with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), connect_timeout=5) as conn:
            conn.execute("select 'before-delete'")
            first = gw.audit_file.read_text()
            assert "before-delete" in first and '"event":"gateway.started"' in first
            os.unlink(gw.audit_file)
            conn.execute("select 'after-delete'")
            _wait(lambda: gw.audit_file.exists() and "after-delete" in gw.audit_file.read_text())
            # replaced: another file moved over the path
            moved = gw.dir / "elsewhere.jsonl"
            moved.write_text("")
            os.replace(moved, gw.audit_file)
            conn.execute("select 'after-replace'")
            _wait(lambda: "after-replace" in gw.audit_file.read_text())
        err = gw.stderr_text()
        assert "was deleted or moved away" in err and "was replaced" in err, err
