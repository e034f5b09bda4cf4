"""Attacks on sqlward's operational features (drain, reload, logs, ${VAR:-default}, healthcheck).

Written from the outside, against real gateway processes (tests/support/gateway.py), the local
PostgreSQL and MariaDB. Each test states the attack and what the gateway must do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from tests.integration.conftest import upstream_dsn
from tests.support import mywire, pgwire
from tests.support.audit_trail import public_key_of, run_verify
from tests.support.gateway import (
    REPO_ROOT, SECRETS, GatewayProcess, free_port, make_gateway_certs, port_closed, target, tls_listener,
)
from tests.support.mariadb import root_sql
from tests.support.pgcluster import wait_for

pytestmark = pytest.mark.integration

MY_DB = "sqlward_ops"
DRAIN = 2  # [gateway] drain_seconds of the drain tests
DRAIN_CLOSE_MARGIN = 6.0  # gateway/server.py: the gateway's own bound after the deadline


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_database() -> Any:
    root_sql(f"DROP DATABASE IF EXISTS {MY_DB}", f"CREATE DATABASE {MY_DB}")
    root_sql("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(100))", "INSERT INTO t VALUES (1, 'a')", database=MY_DB)
    yield MY_DB
    root_sql(f"DROP DATABASE IF EXISTS {MY_DB}")


@pytest.fixture(scope="module")
def pg_tables(it_database: str) -> str:
    with psycopg.connect(upstream_dsn(), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS ops_copy")
        c.execute("CREATE TABLE ops_copy (v text)")
    return it_database


def my_target(name: str, **extra: Any) -> dict[str, Any]:
    return target(name, f"mysql://root@127.0.0.1:3306/{MY_DB}?sslmode=disable", protocol="mysql", **extra)


def _reconfigure(gw: GatewayProcess) -> None:
    gw.config_text = gw._render(gw.config)


def _lifecycle_problems(events: list[dict[str, Any]]) -> list[str]:
    """Every connection.opened must end in connection.closed or connection.refused."""
    opened = {e["connection_id"] for e in events if e.get("event") == "connection.opened"}
    ended = {e["connection_id"] for e in events if e.get("event") in ("connection.closed", "connection.refused")}
    return [f"connection {cid} has no end record" for cid in sorted(opened - ended)]


def _connect_when_listening(port: int, timeout: float = 10.0) -> socket.socket:
    end = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def _small_rcvbuf_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


# -- drain -----------------------------------------------------------------------------------------


def test_drain_siege_every_stalling_client_is_bounded(pg_tables: str, my_database: str, tmp_path: Path) -> None:
    """One gateway, a PostgreSQL listener with TLS and a MySQL listener; at SIGTERM a crowd of
    clients each tries to hold the shutdown: an idle session, a client that never reads its
    result (PG and MySQL), a statement held for approval, a COPY IN left open, Parse / Bind /
    Execute without Sync, a TLS handshake left half done, half a startup packet, a MySQL client
    that never answers the greeting, a MySQL LOCAL INFILE left open, and on the admin listener
    a request whose headers never end and a body never finished. Neither listener may accept
    once SIGTERM is sent; the gateway must exit 0 within drain_seconds plus its own margin; the
    held request must be withdrawn; the audit trail must tell the end of every connection
    (closed, or refused for those that never authenticated) and verify."""
    pki = make_gateway_certs(tmp_path)
    my_port = free_port()
    gw = GatewayProcess(
        targets=[target("pgapp", upstream_dsn()), my_target("myapp", allow_local_infile=True)],
        listener={"tls": tls_listener(pki)}, name="ops-siege",
        rules=[{"id": "hold-deletes", "operations": ["delete"], "action": "review", "approval": {"approvers": ["group:dba"]}}],
    )
    gw.config["listeners"].append({"protocol": "mysql", "listen": f"127.0.0.1:{my_port}", "default_target": "myapp"})
    admin = free_port()
    gw.config["admin"] = {"listen": f"127.0.0.1:{admin}"}
    gw.config["gateway"]["drain_seconds"] = DRAIN
    _reconfigure(gw)
    held: list[Any] = []
    with gw:
        # PostgreSQL: idle.
        idle = psycopg.connect(gw.dsn("alice", SECRETS["alice"], "pgapp", sslmode="disable"), autocommit=True)
        held.append(idle)
        # PostgreSQL: a statement held for approval (nobody decides).
        held_conn = psycopg.connect(gw.dsn("alice", SECRETS["alice"], "pgapp", sslmode="disable"), autocommit=True)
        held.append(held_conn)
        hold_result: dict[str, Any] = {}

        def hold() -> None:
            try:
                held_conn.execute("delete from ops_copy where v = 'held'")
            except psycopg.Error as exc:
                hold_result["error"] = exc

        hold_thread = threading.Thread(target=hold)
        hold_thread.start()
        # PostgreSQL: a result never read (tiny receive buffer).
        raw = pgwire.RawConn(_small_rcvbuf_socket(gw.port))
        raw.send(pgwire.startup_message({"user": "alice", "database": "pgapp"}))
        raw.authenticate("alice", SECRETS["alice"])
        raw.send(pgwire.query("select repeat('x', 1000) from generate_series(1, 200000)"))
        held.append(raw)
        # PostgreSQL: COPY IN left open.
        copy = pgwire.open_session("127.0.0.1", gw.port, "alice", SECRETS["alice"], "pgapp")
        copy.send(pgwire.query("COPY ops_copy FROM STDIN"))
        assert copy.read_message().type == "G"
        copy.send(pgwire.msg(b"d", b"row-1\n"))
        held.append(copy)
        # PostgreSQL: extended protocol without Sync.
        nosync = pgwire.open_session("127.0.0.1", gw.port, "alice", SECRETS["alice"], "pgapp")
        nosync.send(pgwire.parse("select 1") + pgwire.bind() + pgwire.execute())
        held.append(nosync)
        # PostgreSQL: TLS accepted, handshake never finished.
        tls_half = pgwire.RawConn.connect("127.0.0.1", gw.port)
        assert tls_half.request_ssl() == b"S"
        tls_half.send(b"\x16\x03\x01\x02\x00\x01")  # the first bytes of a ClientHello
        held.append(tls_half)
        # PostgreSQL: half a startup packet.
        half = pgwire.RawConn.connect("127.0.0.1", gw.port)
        half.send(pgwire.startup_message({"user": "alice", "database": "pgapp"})[:9])
        held.append(half)
        # MySQL: a result never read.
        my_raw = mywire.RawMySQL(_small_rcvbuf_socket(my_port))
        my_raw.read_handshake()
        my_raw.login("alice", SECRETS["alice"], "myapp")
        my_raw.command(mywire.COM_QUERY, b"SELECT REPEAT('x', 1000) FROM seq_1_to_200000")
        held.append(my_raw)
        # MySQL: LOCAL INFILE left open.
        infile = mywire.login("127.0.0.1", my_port, "alice", SECRETS["alice"], "myapp",
                              capabilities=mywire.DEFAULT_CAPABILITIES | mywire.CLIENT_LOCAL_FILES)
        infile.command(mywire.COM_QUERY, b"LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t FIELDS TERMINATED BY ','")
        assert infile.read_packet()[:1] == b"\xfb"
        infile.send_packet(b"10,ten\n")
        held.append(infile)
        # MySQL: the greeting read, never answered.
        greet = mywire.RawMySQL.connect("127.0.0.1", my_port)
        held.append(greet)
        # The admin listener: a request whose headers never end, a body never finished.
        slow = _connect_when_listening(admin)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        body = _connect_when_listening(admin)
        body.sendall(b"POST /api/v1/approvals/x/approve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        held += [slow, body]
        time.sleep(0.5)  # everything is in place (the big results are blocked on the wire)
        assert gw.proc is not None
        gw.exit_expected = True
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: port_closed(gw.port) and port_closed(my_port), timeout=2), "a listener still accepts after SIGTERM"
        try:
            code = gw.proc.wait(DRAIN + DRAIN_CLOSE_MARGIN + 4)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - signalled
        for h in held:
            h.close()
        assert code == 0, f"the gateway did not exit 0 within {took:.1f} s of SIGTERM ({code})"
        assert took <= DRAIN + DRAIN_CLOSE_MARGIN + 1.5, f"stopped {took:.1f} s after SIGTERM"
        events = gw.audit_events()
        assert _lifecycle_problems(events) == []
        hold_thread.join(5)
        assert isinstance(hold_result.get("error"), psycopg.OperationalError), hold_result
        withdrawn = [e for e in events if e.get("event") == "approval.withdrawn"]
        assert [e.get("reason") for e in withdrawn] == ["the session closed"], withdrawn
        closed = [e for e in events if e.get("event") == "connection.closed"]
        assert len(closed) == 7 and all(e.get("reason") == "gateway shutting down" for e in closed), closed
        assert events[-1]["event"] in ("gateway.stopped", "audit.checkpoint")
        verify = run_verify(gw.audit_file, public_key_of(gw))
        assert verify.returncode == 0, verify.stdout + verify.stderr


def _healthcheck(url: str, timeout: float = 3.0, limit: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlward.gateway", "healthcheck", "--url", url, "--timeout", str(timeout)],
        cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=limit,
    )


def test_drain_tight_loop_new_connections_sighup_and_second_sigterm(pg_tables: str) -> None:
    """During a long drain (30 s): a client running statements back to back is closed at its
    first idle moment (it cannot keep the session busy until the deadline); /readyz says 503
    and `sqlward healthcheck` turns that into exit 1 while liveness stays 0; a new connection is
    refused; a SIGHUP is ignored (no reload mid-drain, and it does not kill the process); a
    second SIGTERM stops at once, with exit 0, every connection's end in the trail and a chain
    that verifies."""
    admin = free_port()
    gw = GatewayProcess(targets=[target("app", upstream_dsn())], name="ops-drain2",
                        extra={"admin": {"listen": f"127.0.0.1:{admin}"}})
    gw.config["gateway"]["drain_seconds"] = 30
    _reconfigure(gw)
    with gw:
        _connect_when_listening(admin).close()
        looping = psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True)
        overdue = psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True)
        stop_loop = threading.Event()
        loop_end: dict[str, Any] = {}

        def loop() -> None:
            try:
                while not stop_loop.is_set():
                    looping.execute("select 1").fetchone()
            except psycopg.Error as exc:
                loop_end["error"] = exc
            loop_end["at"] = time.monotonic()

        def sleeper() -> None:
            try:
                overdue.execute("select pg_sleep(60)")
            except psycopg.Error as exc:
                loop_end["overdue"] = exc

        threads = [threading.Thread(target=loop), threading.Thread(target=sleeper)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        assert gw.proc is not None
        gw.exit_expected = True
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        threads[0].join(5)
        stop_loop.set()
        # Normally FATAL 57P01 (AdminShutdown); when the client's next Query crosses the close
        # on the wire, the client may see only the connection reset (a TCP race, ~1 in 40).
        assert isinstance(loop_end.get("error"), psycopg.OperationalError), loop_end
        assert loop_end["at"] - signalled < 1.0, "the busy-looping session outlived its first idle moment"
        assert wait_for(lambda: _healthcheck(f"http://127.0.0.1:{admin}/readyz").returncode == 1, timeout=5)
        assert _healthcheck(f"http://127.0.0.1:{admin}/healthz").returncode == 0
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), connect_timeout=3)
        mark = gw.stderr_size()
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert gw.proc.poll() is None, "a SIGHUP during the drain ended the process"
        assert "reloaded" not in gw.stderr_text(mark)
        second = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(5) == 0
        assert time.monotonic() - second < 3.0
        threads[1].join(5)
        assert isinstance(loop_end.get("overdue"), psycopg.OperationalError)
        for c in (looping, overdue):
            c.close()
        events = gw.audit_events()
        assert _lifecycle_problems(events) == []
        reasons = [e.get("reason") for e in events if e.get("event") == "connection.closed"]
        assert reasons == ["gateway shutting down"] * 2, reasons
        verify = run_verify(gw.audit_file, public_key_of(gw))
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_drain_statement_sent_after_sigterm_is_not_started(pg_tables: str, my_database: str) -> None:
    """A session busy with a statement when SIGTERM comes may finish it; a statement its client
    sends after SIGTERM (pipelined behind the running one) must not be started: the session is
    closed at the end of what it was doing. MySQL does this (the next command is read only once
    the running one is answered, and the drain ends the session there); PostgreSQL's relay reads
    and forwards the new request at once, so it runs during the drain."""
    my_port = free_port()
    gw = GatewayProcess(targets=[target("pgapp", upstream_dsn()), my_target("myapp")], name="ops-after")
    gw.config["listeners"].append({"protocol": "mysql", "listen": f"127.0.0.1:{my_port}", "default_target": "myapp"})
    gw.config["gateway"]["drain_seconds"] = 10
    _reconfigure(gw)
    with psycopg.connect(upstream_dsn(), autocommit=True) as direct:
        direct.execute("delete from ops_copy")
    root_sql("DELETE FROM t WHERE id = 2", database=MY_DB)
    with gw:
        pg = pgwire.open_session("127.0.0.1", gw.port, "alice", SECRETS["alice"], "pgapp")
        my = mywire.login("127.0.0.1", my_port, "alice", SECRETS["alice"], "myapp")
        pg.send(pgwire.query("select pg_sleep(1)"))
        my.command(mywire.COM_QUERY, b"SELECT SLEEP(1)")
        time.sleep(0.3)
        assert gw.proc is not None
        gw.exit_expected = True
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        pg.send(pgwire.query("insert into ops_copy values ('sent after SIGTERM')"))
        my.command(mywire.COM_QUERY, b"INSERT INTO t VALUES (2, 'sent after SIGTERM')")
        assert gw.proc.wait(10) == 0
        pg.close()
        my.close()
    with psycopg.connect(upstream_dsn(), autocommit=True) as direct:
        pg_ran = direct.execute("select count(*) from ops_copy where v = 'sent after SIGTERM'").fetchone()[0]
    my_ran = root_sql("SELECT COUNT(*) FROM t WHERE id = 2", database=MY_DB)[0][0]
    assert (pg_ran, my_ran) == (0, 0), f"statements sent after SIGTERM ran: PostgreSQL {pg_ran}, MySQL {my_ran}"


# -- signals outside the serving loop ---------------------------------------------------------------


def test_sighup_during_startup_does_not_kill_the_gateway(it_database: str) -> None:
    """A config reloader (a ConfigMap sidecar, a deploy script running `kill -HUP` right after a
    restart) can send SIGHUP while the gateway is still starting. Before the gateway listens
    for signals, SIGHUP has its default action: the process dies ("Hangup"). It must not:
    SIGHUP is to be ignored (or remembered) from the first moment."""
    gw = GatewayProcess(targets=[target("app", upstream_dsn())], name="ops-hup-start")
    gw.config_file.write_text(gw.config_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlward.gateway", "serve", "--config", str(gw.config_file)],
        cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.1)  # importing and reading the config
        proc.send_signal(signal.SIGHUP)
        listening = wait_for(lambda: proc.poll() is not None or gw._listening(), timeout=15) and gw._listening()
        code = proc.poll()
        assert code is None and listening, f"SIGHUP during startup: exit status {code} (-1: killed by SIGHUP)"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        else:
            proc.wait()


def test_sighup_during_the_final_flush_does_not_kill_the_gateway(it_database: str) -> None:
    """After the drain the gateway closes the audit trail and exports the last spans and
    metrics (up to 5 s when the collector is slow). The signal receiver is already closed then,
    so a SIGHUP (a config reloader) in that window kills the process with its default action:
    exit status -1 instead of 0, the last telemetry lost. It must be ignored until the end."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(50)  # accepts (in the kernel) and never answers: a stuck collector
    gw = GatewayProcess(
        targets=[target("app", upstream_dsn())], name="ops-hup-end",
        extra={"telemetry": {"endpoint": f"http://127.0.0.1:{hole.getsockname()[1]}", "timeout_seconds": 10}},
    )
    try:
        with gw:
            assert gw.proc is not None
            gw.exit_expected = True
            gw.allow_nonzero_exit = True  # judged below, with a clearer message
            gw.proc.send_signal(signal.SIGTERM)
            time.sleep(0.7)  # no session: the drain is over, the last export waits on the collector
            gw.proc.send_signal(signal.SIGHUP)
            code = gw.proc.wait(15)
            assert code == 0, f"exit status {code} after SIGTERM then SIGHUP (-1: killed by SIGHUP)"
    finally:
        hole.close()


# -- SIGHUP: what a reload refuses, and what it claims to apply --------------------------------------

DSN_PASSWORD = "S3cr3tPw-77e1"


def test_sighup_refusal_never_quotes_the_dsn_password(it_database: str) -> None:
    """An operator edits a target's DSN and puts a password holding `#` (or `/`, `?`) in it
    unencoded, then sends SIGHUP. The reload is refused, rightly, but the reason it logs (and
    records in the trail's policy.reloaded) must not carry the password: parse_dsn's message
    quotes urllib's "Port could not be cast to integer value as '<text after the colon>'",
    which is the password up to the `#`."""
    gw = GatewayProcess(targets=[target("app", upstream_dsn())], name="ops-hup-dsn")
    with gw:
        assert gw.proc is not None
        gw.config["targets"][0]["dsn"] = f"postgresql://postgres:{DSN_PASSWORD}#x@127.0.0.1:5432/{it_database}"
        gw.config_file.write_text(gw._render(gw.config))
        mark = gw.stderr_size()
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload (SIGHUP) refused" in gw.stderr_text(mark), timeout=10)
        assert wait_for(lambda: any(e.get("event") == "policy.reloaded" for e in gw.audit_events()), timeout=10)
        log_text, audit_text = gw.stderr_text(mark), gw.audit_text()
    leaks = [where for where, text in (("gateway log", log_text), ("audit trail", audit_text)) if DSN_PASSWORD[:8] in text]
    assert leaks == [], f"the DSN password is in the {' and the '.join(leaks)}:\n{log_text}"


def _check_config(tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str],
                  env: dict[str, str] | None = None) -> tuple[int, str]:
    from sqlward.gateway.cli import main

    file = tmp_path / "gateway.toml"
    file.write_text(GatewayProcess._render(doc))
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        code = main(["check-config", str(file)])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capsys.readouterr()
    return code, out.out + out.err


def _base_doc(tmp_path: Path) -> dict[str, Any]:
    return {
        "gateway": {"name": "ops-check"},
        "listeners": [{"protocol": "postgres", "listen": "127.0.0.1:0"}],
        "targets": [target("app", upstream_dsn())],
        "identities": [{"name": "alice", "secret": "alice-secret-0123456789"}],
        "audit": {"file": str(tmp_path / "audit.jsonl")},
    }


WEBHOOK_TOKEN = "W3bh00kT0k3nZ9q"


@pytest.mark.parametrize("case", ["dsn-default", "webhook-url", "telemetry-userinfo"])
def test_check_config_output_never_quotes_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    """`sqlward check-config` (run in CI, its output kept in build logs; `serve` and the SIGHUP
    refusal print the same ConfigError) on a file with a secret next to a mistake, or none:

    - dsn-default: `dsn = "${APP_DSN:-postgresql://u:PASSWORD#x@host/db}"`, the default used
      (APP_DSN unset): the password leaks through the DSN parse error, as above;
    - webhook-url: a chat incoming-webhook URL (the docs say to post `text` to one as it is; its
      path is the credential, e.g. https://hooks.slack.com/services/T/B/TOKEN) with a typo in
      the scheme: the error quotes the whole URL;
    - telemetry-userinfo: a valid config whose OTLP endpoint carries basic-auth credentials
      (`https://user:APIKEY@collector`, accepted by the check and by httpx): the one-line summary
      prints the endpoint as written."""
    doc = _base_doc(tmp_path)
    expected = 2
    if case == "dsn-default":
        doc["targets"][0]["dsn"] = "${OPS_APP_DSN:-postgresql://postgres:" + DSN_PASSWORD + "#x@127.0.0.1:5432/db}"
        secret = DSN_PASSWORD[:8]
    elif case == "webhook-url":
        doc["webhooks"] = [{"url": f"htps://hooks.chat.example/services/T000/B000/{WEBHOOK_TOKEN}",
                            "secret": "webhook-hmac-secret-0123456789"}]
        secret = WEBHOOK_TOKEN
    else:
        secret = "OtlpApiK3y-6b2d"
        doc["telemetry"] = {"endpoint": f"https://tenant:{secret}@otlp.example.com"}
        expected = 0
    code, text = _check_config(tmp_path, doc, capsys)
    assert code == expected, text
    assert secret not in text, text


def test_env_expansion_edge_cases(tmp_path: Path) -> None:
    """`${VAR:-default}` edge cases, through load_config with a given environment:

    - a value taken from the environment is not expanded again (no second-order `${...}`);
    - a default holding `:-` keeps it (only the first `:-` separates);
    - an unset variable without default is an error naming the key, never quoting a value;
    - a malformed `${...}` holding a secret does not quote it;
    - a nested default `${POD_NAME:-${HOSTNAME}}` (what compose and shells accept) must either
      expand or be refused; it must not silently become the literal text `${HOSTNAME}` (here
      the gateway's name, which keys its audit chain: every replica would share "${HOSTNAME}")."""
    from sqlward.gateway.config import ConfigError, load_config

    def load(name: str, env: dict[str, str]) -> Any:
        doc = _base_doc(tmp_path)
        doc["gateway"]["name"] = name
        file = tmp_path / "env.toml"
        file.write_text(GatewayProcess._render(doc))
        return load_config(file, env=env)

    assert load("${A}", {"A": "${B}", "B": "no"}).gateway.name == "${B}"
    assert load("${A:-x:-y}", {}).gateway.name == "x:-y"
    with pytest.raises(ConfigError) as unset:
        load("${OPS_UNSET_VAR}", {})
    assert "OPS_UNSET_VAR" in str(unset.value) and "$.gateway.name" in str(unset.value)
    with pytest.raises(ConfigError) as malformed:
        load("${BAD NAME:-hunter2-secret}", {})
    assert "hunter2" not in str(malformed.value)
    try:
        name = load("${POD_NAME:-${HOSTNAME}}", {"HOSTNAME": "replica-7"}).gateway.name
    except ConfigError:
        return  # refused: acceptable
    assert name == "replica-7", f"nested default read as the literal {name!r}"


def test_sighup_access_revocation_reaches_open_sessions(it_database: str) -> None:
    """SIGHUP with a new `[[access]]` rule refusing bob the target, and `log_format` switched
    to json. The docs: `[[access]]` takes effect at once and "sessions already open get the new
    policy at their next statement". The log format switches (every later line is JSON) and a
    new connection of bob is refused; bob's session opened before the reload must not go on
    running statements on a target he may no longer reach (refused, or closed)."""
    gw = GatewayProcess(targets=[target("app", upstream_dsn())], name="ops-hup-access")
    with gw:
        assert gw.proc is not None
        bob = psycopg.connect(gw.dsn("bob", SECRETS["bob"], "app"), autocommit=True)
        assert bob.execute("select 1").fetchone() == (1,)
        gw.config["access"] = [
            {"subjects": ["bob"], "targets": ["app"], "action": "deny"},
            {"action": "allow"},
        ]
        gw.config["gateway"]["log_format"] = "json"
        gw.config_file.write_text(gw._render(gw.config))
        mark = gw.stderr_size()
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "policy reloaded (SIGHUP)" in gw.stderr_text(mark), timeout=10)
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(gw.dsn("bob", SECRETS["bob"], "app"))
        assert "may not reach" in str(refused.value)
        assert wait_for(lambda: '"connection.refused"' in gw.stderr_text(mark), timeout=10)
        later = gw.stderr_text(mark).splitlines()
        switched = [i for i, line in enumerate(later) if "log level" in line and "format json" in line]
        assert switched, later
        for line in later[switched[0] + 1:]:
            json.loads(line)  # every line after the switch is one JSON object
        try:
            still = bob.execute("select 'still here'").fetchone()
        except psycopg.Error:
            still = None
        bob.close()
    assert still is None, "bob's session opened before the reload still runs statements on a target [[access]] now refuses him"


def test_sighup_adding_policy_files_also_watches_them(it_database: str, tmp_path: Path) -> None:
    """`[gateway] policy_files` is reloadable by SIGHUP, and "with policy_files, an edit of a
    policy file is picked up without a signal within two seconds". A gateway started without
    policy files and given some by SIGHUP loads them, but the mtime watcher only starts at
    startup when policy_files is set: later edits of those files are never picked up."""
    policy = tmp_path / "ops-policy.toml"
    policy.write_text('[[rules]]\nid = "ops-deny-pg-class"\noperations = ["select"]\ntables = ["pg_class"]\naction = "deny"\n')
    gw = GatewayProcess(targets=[target("app", upstream_dsn())], name="ops-hup-files")
    with gw:
        assert gw.proc is not None
        conn = psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True)
        gw.config["gateway"]["policy_files"] = [str(policy)]
        gw.config_file.write_text(gw._render(gw.config))
        mark = gw.stderr_size()
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "policy reloaded (SIGHUP)" in gw.stderr_text(mark), timeout=10)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from pg_class")
        # An edit of the policy file, no signal: the rule goes away within two seconds.
        policy.write_text("")
        os.utime(policy, (time.time() + 5, time.time() + 5))

        def rule_gone() -> bool:
            try:
                conn.execute("select count(*) from pg_class")
                return True
            except psycopg.errors.InsufficientPrivilege:
                return False

        gone = wait_for(rule_gone, timeout=4.5, interval=0.25)
        conn.close()
    assert gone, "an edit of a policy file added by SIGHUP was not picked up (no watcher)"


# -- the gateway's log: no secret, no statement text, no result value --------------------------------

ROW_VALUE = "CardNo-4111-1111-1111-1111"


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory, it_database: str) -> Any:
    """A gateway logging at debug in JSON, with everything that handles a secret: a target
    password, an OIDC issuer (tokens as passwords on loopback), approvals with a webhook whose
    URL path is its credential."""
    from tests.support.oidc import TestIssuer

    d = tmp_path_factory.mktemp("ops-leaky")
    issuer = TestIssuer(d / "idp")
    admin, dead = free_port(), free_port()
    gw = GatewayProcess(
        targets=[target("app", upstream_dsn(), password="target-pw-5d1c9e")],
        rules=[{"id": "review-deletes", "operations": ["delete"], "environments": ["development"], "action": "review",
                "approval": {"approvers": ["group:dba"], "mode": "retry"}}],
        listener={"allow_plaintext_tokens": True},
        name="ops-leaky",
        extra={
            "admin": {"listen": f"127.0.0.1:{admin}"},
            "oidc": [issuer.oidc_table(source="file")],
            "webhooks": [{"url": f"http://127.0.0.1:{dead}/services/T000/B000/{WEBHOOK_TOKEN}",
                          "secret": "webhook-hmac-secret-0123456789", "max_attempts": 2, "backoff_seconds": 0.1}],
        },
    )
    gw.config["gateway"]["log_level"] = "debug"
    gw.config["gateway"]["log_format"] = "json"
    _reconfigure(gw)
    gw.start()
    gw.issuer = issuer  # type: ignore[attr-defined]
    gw.admin = admin  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        gw.exit_expected = True
        gw.stop()  # its problems (a traceback) are the tests' findings, reported by them


def _log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_log_row_estimate_failure_never_quotes_statement_values(it_database: str) -> None:
    """A DELETE on a production target needs an EXPLAIN estimate (mass-write guardrail). When
    EXPLAIN fails on a value of the statement (a string for an integer column), the server's
    message quotes that value, and the gateway logs it, with a traceback, at warning:
    `row estimate failed for target prod` + `SideQueryError: invalid input syntax for type
    integer: "<the value>"`. Statement text and values must never reach the log."""
    gw = GatewayProcess(
        targets=[target("prod", upstream_dsn(), "production")], name="ops-estimate",
        extra={"guardrails": {"mass-write": {"environments": ["production"], "action": "deny"}}},
    )
    gw.config["gateway"]["log_format"] = "json"
    _reconfigure(gw)
    with gw:
        with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "prod"), autocommit=True) as c:
            with pytest.raises(psycopg.Error) as refused:
                c.execute(f"delete from accounts where id = '{ROW_VALUE}'")
            assert "estimate" in str(refused.value)
        time.sleep(0.3)
        text = gw.stderr_text()
        _log_lines(text)
        assert ROW_VALUE not in text, text


def test_log_webhook_url_credential_never_logged(leaky: GatewayProcess) -> None:
    """A statement held for approval (retry mode) notifies the webhook; the receiver is down, so
    the delivery is retried and given up. Each of those log lines names the receiver by its
    full URL, whose path is a chat webhook's credential. The log must name the receiver
    without its path and query (scheme://host[:port], or the index in [[webhooks]])."""
    mark = leaky.stderr_size()
    with psycopg.connect(leaky.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as c:
        with pytest.raises(psycopg.Error):
            c.execute("delete from accounts where owner = 'nobody'")
    assert wait_for(lambda: "webhook" in leaky.stderr_text(mark), timeout=5)
    assert wait_for(lambda: "gave up" in leaky.stderr_text(mark), timeout=5)
    text = leaky.stderr_text(mark)
    assert WEBHOOK_TOKEN not in text, [line["message"] for line in _log_lines(text) if WEBHOOK_TOKEN in line["message"]]


def test_log_tokens_passwords_and_values_stay_out_at_debug(leaky: GatewayProcess) -> None:
    """At debug level: OIDC tokens refused for every reason (bad signature, expired, wrong
    audience, not a JWT), the same tokens as admin API bearers, a wrong static password, an
    upstream error quoting a value of the statement, a result value: none of them appears in
    the log; refused logins are logged with their reason."""
    issuer = leaky.issuer  # type: ignore[attr-defined]
    tokens = {
        "bad-signature": issuer.mint_bad_signature(sub="carol@example.com"),
        "expired": issuer.mint(sub="carol@example.com", ttl=-600),
        "audience": issuer.mint(sub="carol@example.com", aud="someone-else"),
        "not-a-jwt": "NotAJwtButAPassword-8e3f",
    }
    mark = leaky.stderr_size()
    for token in tokens.values():
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"host=127.0.0.1 port={leaky.port} user=carol@example.com dbname=app password={token} sslmode=disable")
        with pytest.raises(Exception):
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{leaky.admin}/api/v1/approvals",  # type: ignore[attr-defined]
                headers={"Authorization": f"Bearer {token}"}), timeout=5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(leaky.dsn("alice", "Wr0ng-Pa55-b7c4", "app"))
    with psycopg.connect(leaky.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as c:
        with pytest.raises(psycopg.Error):
            c.execute("select 'UpstreamQuoted-19af'::int")
        assert c.execute("select 'ResultValue-' || 'c0ffee'").fetchone() == ("ResultValue-c0ffee",)
    assert wait_for(lambda: leaky.stderr_text(mark).count('"connection.refused"') >= 5, timeout=5)
    text = leaky.stderr_text(mark)
    reasons = [line.get("reason", "") for line in _log_lines(text) if line.get("event") == "connection.refused"]
    assert sum("token refused" in r or "not a JWT" in r for r in reasons) >= 3, reasons  # the token paths ran
    secrets = [t.rsplit(".", 1)[-1] for t in tokens.values()] + [
        "Wr0ng-Pa55-b7c4", "UpstreamQuoted-19af", "ResultValue-c0ffee", "target-pw-5d1c9e", SECRETS["alice"],
    ]
    assert [s for s in secrets if s and s in text] == []


# -- sqlward healthcheck -------------------------------------------------------------------------


class _FakeHealth:
    """A TCP server on 127.0.0.1 answering each connection with `reply(sock)` in a thread."""

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.closing = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.recv(4096)
            self.reply(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


def test_healthcheck_on_a_non_http_answer_reports_instead_of_crashing() -> None:
    """`--url` pointing at something that is not HTTP (the PostgreSQL port by mistake, a proxy
    speaking another protocol): exit 1 with one line saying why, not a Python traceback
    (http.client's BadStatusLine is neither OSError nor ValueError)."""
    fake = _FakeHealth(lambda c: c.sendall(b"E\x00\x00\x00\x10SFATAL\x00\x00not http\r\n\r\n"))
    try:
        out = _healthcheck(f"http://127.0.0.1:{fake.port}/healthz")
    finally:
        fake.close()
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr
    assert "sqlward healthcheck" in out.stderr


def test_healthcheck_timeout_bounds_the_whole_check() -> None:
    """`--timeout 1` must bound the check. A server that trickles its answer one byte every
    0.3 s (a wedged proxy, a half-dead admin listener) keeps urllib's per-read timeout from
    ever firing: the probe hangs until the orchestrator kills it, instead of reporting."""
    def trickle(c: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100:
            c.sendall(bytes([byte]))
            time.sleep(0.3)

    fake = _FakeHealth(trickle)
    started = time.monotonic()
    try:
        try:
            out = _healthcheck(f"http://127.0.0.1:{fake.port}/healthz", timeout=1.0, limit=4.0)
            code: int | None = out.returncode
        except subprocess.TimeoutExpired:
            code = None
    finally:
        fake.close()
    took = time.monotonic() - started
    assert code == 1 and took < 3.5, f"healthcheck --timeout 1 took {took:.1f} s (exit {code})"
