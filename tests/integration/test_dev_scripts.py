"""scripts/dev-up and scripts/dev-down on this machine, as a developer runs them.

One walk through: dev-up (a venv, the demo database, the gateway in the background) → psql and
the mariadb CLI through the gateway (alice reads in demo-prod, DELETE without WHERE and DROP are
refused, the analyst sees emails masked) → dev-up again says the gateway already runs →
dev-down stops it and drops the demo database → dev-up reuses the venv → dev-down --all removes
the venv too; nothing is left running.

So as not to touch a developer's own demo (.venv, .dev, ports 6432/6603, database
sqlward_demo), everything is the test's own: SQLWARD_VENV and SQLWARD_DEV_RUN_DIR under
tmp_path, free ports, a database sqlward_devtest_<hex>, secrets of its own. The venv is made the
cheap way dev-up offers for tests (SQLWARD_VENV_SYSTEM_SITE=1: --system-site-packages and
`pip install --no-deps -e .`), from the Python running the tests, which has the dependencies.
CC=/bin/false keeps that editable install from compiling the optional Cython row walk: setuptools
would copy the new .so over the checkout's own (in place), under the feet of every process that
has it loaded; the extension is optional, and the venv uses the checkout's compiled one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pymysql
import pytest

from tests.support.gateway import free_port

REPO = Path(__file__).resolve().parents[2]
DEV_UP = REPO / "scripts" / "dev-up"
DEV_DOWN = REPO / "scripts" / "dev-down"

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        sys.prefix != sys.base_prefix,
        reason="the tests run in a venv: a --system-site-packages venv made from it would not see its packages",
    ),
]


class Dev:
    def __init__(self, tmp_path: Path) -> None:
        self.venv = tmp_path / "venv"
        self.run_dir = tmp_path / "run"
        self.db = f"sqlward_devtest_{uuid.uuid4().hex[:10]}"
        self.pg_port = free_port()
        self.my_port = free_port()
        while self.my_port == self.pg_port:
            self.my_port = free_port()
        self.alice = f"alice-{uuid.uuid4().hex[:8]}"
        self.analyst = f"analyst-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLWARD_", "PG"))}
        env.update(
            SQLWARD_VENV=str(self.venv),
            SQLWARD_VENV_SYSTEM_SITE="1",
            SQLWARD_DEV_RUN_DIR=str(self.run_dir),
            SQLWARD_DEV_DATABASE=self.db,
            SQLWARD_DEV_PG_PORT=str(self.pg_port),
            SQLWARD_DEV_MY_PORT=str(self.my_port),
            SQLWARD_ALICE_SECRET=self.alice,
            SQLWARD_ANALYST_SECRET=self.analyst,
            SQLWARD_DEV_STOP_TIMEOUT="15",
            PYTHON=sys.executable,
            CC="/bin/false",
        )
        self.env = env

    def run(self, script: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, cwd=REPO,
        )

    def pid(self) -> int:
        return int((self.run_dir / "gateway.pid").read_text().strip())

    def psql(self, user: str, password: str, sql: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=password, PGCONNECT_TIMEOUT="10")
        return subprocess.run(
            ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", user, "-d", "demo-prod", "-c", sql],
            env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )

    def leftovers(self) -> list[str]:
        """Processes whose command line names this test's venv or run directory."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and (str(self.venv) in cmdline or str(self.run_dir) in cmdline):
                found.append(f"{entry.name}: {cmdline}")
        return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pg_has_database(name: str) -> bool:
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _my_has_database(name: str) -> bool:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path)
    try:
        yield d
    finally:  # whatever happened: no gateway, no database left behind
        pid_file = d.run_dir / "gateway.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{d.db}" WITH (FORCE)')
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{d.db}`")
        finally:
            conn.close()


def test_dev_up_then_dev_down(dev: Dev) -> None:
    started = time.monotonic()
    up = dev.run(DEV_UP)
    assert up.returncode == 0, up.stdout + up.stderr
    # How to connect, with this run's ports (a secret that is not the default is not printed).
    assert f'PGPASSWORD="$SQLWARD_ALICE_SECRET" psql -h 127.0.0.1 -p {dev.pg_port} -U alice demo-prod' in up.stdout
    assert f'mariadb -h 127.0.0.1 -P {dev.my_port} -u alice -p"$SQLWARD_ALICE_SECRET" demo-my-prod' in up.stdout
    assert dev.alice not in up.stdout + up.stderr

    # The gateway runs from the venv: its interpreter is the venv's, which has the project.
    pid = dev.pid()
    assert _alive(pid)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[0].decode() == str(dev.venv / "bin" / "python"), argv
    assert b"sqlward.gateway" in argv and b"serve" in argv
    where = subprocess.run(
        [str(dev.venv / "bin" / "python"), "-c", "import sys, sqlward.gateway as g; print(sys.prefix); print(g.__path__[0])"],
        capture_output=True, text=True, timeout=30,
    ).stdout.split()
    assert where == [str(dev.venv), str(REPO / "gateway")]
    assert list((dev.venv / "lib").glob("python3*/site-packages/sqlward-*.dist-info")), "sqlward is not installed in the venv"

    # psql as alice through the gateway, on the production target.
    res = dev.psql("alice", dev.alice, "SELECT name, email FROM customers ORDER BY id")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["Ada|ada@example.com", "Linus|linus@example.com"]
    res = dev.psql("alice", dev.alice, "DELETE FROM customers")
    assert res.returncode != 0 and 'guardrail "delete-without-where"' in res.stderr
    res = dev.psql("alice", dev.alice, "DROP TABLE customers")
    assert res.returncode != 0 and 'rule "no-drop-in-production"' in res.stderr
    res = dev.psql("analyst", dev.analyst, "SELECT name, email FROM customers ORDER BY id")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["Ada|a****@example.com", "Linus|l****@example.com"]
    res = dev.psql("alice", "wrong-secret", "SELECT 1")
    assert res.returncode != 0 and "password authentication failed" in res.stderr
    # The mariadb CLI as alice on the MySQL side.
    my = subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(dev.my_port), "-u", "alice", f"-p{dev.alice}", "--batch",
         "--skip-column-names", "demo-my-prod", "-e", "SELECT name, email FROM customers"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert my.returncode == 0, my.stderr
    assert my.stdout.split() == ["Ada", "ada@example.com"]

    # dev-up again: it says so, and changes nothing.
    again = dev.run(DEV_UP, timeout=30)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already running (pid {pid})" in again.stderr
    assert dev.pid() == pid and _alive(pid)

    # dev-down: the gateway stops, the demo database is gone in both servers, so is the run dir.
    down = dev.run(DEV_DOWN, timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not _alive(pid)
    assert not _pg_has_database(dev.db) and not _my_has_database(dev.db)
    assert not dev.run_dir.exists()
    assert (dev.venv / "bin" / "python").exists(), "dev-down without --all keeps the venv"
    assert dev.leftovers() == []

    # dev-up once more reuses the venv; dev-down --all removes it too.
    up2 = dev.run(DEV_UP)
    assert up2.returncode == 0, up2.stdout + up2.stderr
    assert "reusing the virtual environment" in up2.stderr and "installing sqlward" not in up2.stderr
    pid2 = dev.pid()
    assert _alive(pid2) and _pg_has_database(dev.db)
    down2 = dev.run(DEV_DOWN, "--all", timeout=60)
    assert down2.returncode == 0, down2.stdout + down2.stderr
    assert not _alive(pid2) and not dev.venv.exists() and not dev.run_dir.exists()
    assert not _pg_has_database(dev.db) and not _my_has_database(dev.db)
    assert dev.leftovers() == []

    # Nothing to stop: dev-down is still fine.
    assert dev.run(DEV_DOWN, timeout=60).returncode == 0
    assert time.monotonic() - started < 120
