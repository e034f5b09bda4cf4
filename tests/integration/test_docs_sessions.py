"""The sessions of README.md and docs/quickstart.md happen as the pages show, against the demo.

How it works: the blocks marked ``<!-- demo-gateway -->`` (tests/unit/test_docs_examples.py finds
them) run against a gateway started as scripts/dev-up starts it: `python -m sqlward.gateway serve
--config deploy/examples/dev.toml`, with the variables dev-up exports (the default secrets, a
database of this module's own instead of `sqlward_demo`, free ports instead of 6432 / 6603, a run
directory `.dev` in a temporary directory). The demo database is made with the SQL of
scripts/dev-up itself (its two here-documents), in PostgreSQL and MariaDB.

A psql or mariadb command line of a page is followed by the session as the interactive client
shows it: a prompt line (`demo-prod=# SQL;`, `MariaDB [demo-my-prod]> SQL;`) and the answer under
it. Each statement runs as `psql -X ... -c SQL` / `mariadb ... -t -e SQL` with the page's user,
password and database (the port replaced) and its printed lines must be the page's, blank lines
and trailing blanks aside (the mariadb client's echo of a failed statement and "at line 1" are
left out, as the interactive client prints neither). After every session of both pages the
gateway is stopped (SIGTERM: it signs the end of its trail) and the pages' `sqlward audit`
commands run on the trail the sessions left, where a number of the page stands for any number.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlward.gateway import cli
from tests.integration.conftest import _admin_dsn, scratch_database
from tests.support.gateway import free_port
from tests.support.mariadb import root_sql
from tests.unit.test_docs_examples import REPO, Block, Command, all_blocks, commands

PAGES = ("README.md", "docs/quickstart.md")
DEV_UP = REPO / "scripts" / "dev-up"
SECRETS = {"SQLWARD_ALICE_SECRET": "alice-secret", "SQLWARD_ANALYST_SECRET": "analyst-secret"}

_PSQL_PROMPT = re.compile(r"^(?P<db>[\w-]+)=[#>] (?P<sql>.+)$")
_MARIADB_PROMPT = re.compile(r"^MariaDB \[(?P<db>[^\]]+)\]> (?P<sql>.+)$")


def demo_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.marker == "demo-gateway" and b.page in PAGES]


def _dev_up_sql() -> tuple[str, str]:
    """The SQL scripts/dev-up runs in PostgreSQL and in MariaDB (its two here-documents)."""
    heredocs = re.findall(r"<<'?SQL'?\n(.*?)^SQL$", DEV_UP.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert len(heredocs) == 2, "scripts/dev-up no longer has the two SQL here-documents this test runs"
    return heredocs[0], heredocs[1]


class Demo:
    def __init__(self, home: Path, database: str) -> None:
        self.home = home  # the directory the pages' relative paths (.dev/...) start from
        self.database = database
        self.pg_port = free_port()
        self.my_port = free_port()
        self.env = {
            **os.environ, **SECRETS, "PYTHONUNBUFFERED": "1",
            "SQLWARD_DEV_PG_PORT": str(self.pg_port), "SQLWARD_DEV_MY_PORT": str(self.my_port),
            "SQLWARD_DEV_DATABASE": database, "SQLWARD_DEV_RUN_DIR": str(home / ".dev"),
        }
        self.log = home / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.home / ".dev").mkdir(parents=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sqlward.gateway", "serve", "--config", "deploy/examples/dev.toml"],
                cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while self.log.read_text(errors="replace").count("listening: ") < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the demo gateway did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("the demo gateway did not stop on SIGTERM")
        text = self.log.read_text(errors="replace")
        assert "Traceback (most recent call last)" not in text, text
        assert self.proc.returncode == 0, text


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    database = f"sqlward_t_docs_{uuid.uuid4().hex[:8]}"
    pg_sql, my_sql = _dev_up_sql()
    with scratch_database(database, pg_sql):
        root_sql(*[s for s in my_sql.replace("$DB", database).replace("\\`", "`").split(";\n") if s.strip()])
        try:
            demo = Demo(tmp_path_factory.mktemp("demo"), database)
            demo.start()
            try:
                yield demo
            finally:
                demo.stop()
        finally:
            root_sql(f"DROP DATABASE IF EXISTS `{database}`")


def _normalize(text: str, statement: str = "") -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or re.fullmatch(r"-+", line) or line == statement.rstrip(";"):
            continue  # blank lines; the mariadb client's frame and echo of a failed statement
        out.append(re.sub(r"^(ERROR \d+ \(\w+\)) at line \d+:", r"\1:", line))
    return out


def _session(cmd: Command) -> list[tuple[str, list[str]]]:
    """(statement, the lines the page shows under it) of a psql / mariadb session."""
    prompt = _PSQL_PROMPT if "psql" in cmd.text.split() else _MARIADB_PROMPT
    steps: list[tuple[str, list[str]]] = []
    for line in cmd.output:
        m = prompt.match(line)
        if m:
            steps.append((m.group("sql"), []))
        else:
            assert steps, f"output before the first statement: {line!r}"
            steps[-1][1].append(line)
    return steps


def _client(cmd: Command, demo: Demo) -> tuple[list[str], dict[str, str]]:
    """The page's client command line with the demo's ports, and its environment."""
    words = shlex.split(cmd.text)
    env = dict(demo.env)
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    ports = {"psql": ("-p", "6432", demo.pg_port), "mariadb": ("-P", "6603", demo.my_port)}
    flag, page_port, port = ports[words[0]]
    assert words[words.index(flag) + 1] == page_port, f"{cmd.text}: the demo's port is {page_port}"
    words[words.index(flag) + 1] = str(port)
    return words, env


def _run_session(cmd: Command, demo: Demo, where: str) -> None:
    words, env = _client(cmd, demo)
    steps = _session(cmd)
    assert steps, f"{where}: a {words[0]} command without a session under it"
    for sql, expected in steps:
        extra = ["-X", "-c", sql] if words[0] == "psql" else ["-t", "-e", sql]
        proc = subprocess.run([*words, *extra], env=env, cwd=demo.home, capture_output=True, text=True, timeout=30)
        got = _normalize(proc.stdout + proc.stderr, sql)
        assert got == _normalize("\n".join(expected)), f"{where}: {sql}\nthe page shows:\n" + "\n".join(expected) + "\nthe client printed:\n" + "\n".join(got)


def _pattern(line: str) -> re.Pattern[str]:
    text = re.escape(line.rstrip()).replace(r"\.\.\.", ".*")
    return re.compile(re.sub(r"\d+", r"\\d+", text))


@pytest.mark.parametrize("page", PAGES)
def test_the_sessions_run_as_shown(page: str, demo: Demo) -> None:
    sessions = [(b, c) for b in demo_blocks() if b.page == page for c in commands(b) if not c.text.startswith("sqlward")]
    assert sessions, page
    for block, cmd in sessions:
        _run_session(cmd, demo, block.id)


def test_the_audit_commands_on_the_trail_the_sessions_left(demo: Demo, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    demo.stop()  # SIGTERM: the trail ends on a signed checkpoint
    monkeypatch.chdir(demo.home)
    ran = 0
    for block in demo_blocks():
        for cmd in commands(block):
            if not cmd.text.startswith("sqlward"):
                continue
            words = shlex.split(cmd.text, comments=True)
            capsys.readouterr()
            status = cli.main(words[1:])
            out, err = capsys.readouterr()
            assert status == 0, f"{block.id}: `{cmd.text}` exited {status}:\n{out}{err}"
            lines = [l for l in out.splitlines() if l.strip()]
            if cmd.output:
                expected = [l for l in cmd.output if l.strip()]
                assert len(lines) == len(expected), (block.id, out)
                for want, line in zip(expected, lines):
                    assert _pattern(want).fullmatch(line), f"{block.id}: the page shows\n  {want}\nthe command printed\n  {line}"
            if "search" in words and "deny" in words:  # the refusals of the sessions are there
                assert any("delete-without-where" in l for l in lines), out
            ran += 1
    assert ran >= 3


def test_the_demo_sql_is_scripts_dev_up(demo: Demo) -> None:
    """What the sessions ran on is what dev-up makes: two customers in PostgreSQL, one in MariaDB."""
    import psycopg

    with psycopg.connect(_admin_dsn(demo.database)) as c:
        assert c.execute("SELECT name, email FROM customers ORDER BY id").fetchall() == [
            ("Ada", "ada@example.com"), ("Linus", "linus@example.com"),
        ]
    assert root_sql("SELECT name, email FROM customers", database=demo.database) == [("Ada", "ada@example.com")]
