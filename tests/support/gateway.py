"""Run the real gateway as a subprocess for integration tests.

    with GatewayProcess(targets=[...], identities=[...], rules=[...]) as gw:
        psycopg.connect(gw.dsn("alice", "alice-secret", "app"))
        gw.audit_events()

`GatewayProcess` writes a TOML config (built from plain dicts, with sensible defaults) into a
temp dir, picks a free port, starts `python -m sqlward.gateway serve --config FILE` from the repository
root and waits (20 s at most) until the port is listening; if the process dies or never listens,
the error carries its stderr. On exit it sends SIGTERM and fails (AssertionError) when the
process does not stop, exits non-zero, or printed a Python traceback.

`make_gateway_certs(dir)` makes a test CA and a certificate for 127.0.0.1/localhost for a TLS
listener (`tls_listener(pki, require=...)` gives the listener's `tls` table).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode

from tests.support.certs import TestPKI, make_pki

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_IDENTITIES: list[dict[str, Any]] = [
    {"name": "alice", "groups": ["dba"], "secret": "alice-secret"},
    {"name": "bob", "secret": "bob-secret"},
]
SECRETS = {"alice": "alice-secret", "bob": "bob-secret"}

TRACEBACK_MARK = "Traceback (most recent call last)"

# Gateways currently running (so an autouse fixture can check each test left them healthy).
LIVE: list["GatewayProcess"] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_closed(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing accepts connections on host:port (a gateway that stopped listening)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def make_gateway_certs(directory: str | os.PathLike[str], prefix: str = "gw-") -> TestPKI:
    """A test CA plus a server certificate/key for 127.0.0.1 and localhost."""
    return make_pki(directory, prefix=prefix)


def tls_listener(pki: TestPKI, require: bool = False) -> dict[str, Any]:
    return {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file), "require": require}


# -- minimal TOML writer (tomllib only reads) ------------------------------------------------------


def _toml_key(k: str) -> str:
    if k and all(c.isalnum() or c in "-_" for c in k):
        return k
    return json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            raise ValueError("no inf/nan in test configs")
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level scalars, then `[table]`s and `[[array of tables]]`; deeper dicts inline."""
    lines: list[str] = []
    for k, v in doc.items():
        if v is None or isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            continue
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"\n[{_toml_key(k)}]")
            for kk, vv in v.items():
                if vv is not None:
                    lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"\n[[{_toml_key(k)}]]")
                for kk, vv in item.items():
                    if vv is not None:
                        lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # our own writer must produce valid TOML
    return text


# -- the process -----------------------------------------------------------------------------------


def target(name: str, dsn: str, environment: str = "development", **extra: Any) -> dict[str, Any]:
    return {"name": name, "protocol": "postgres", "environment": environment, "dsn": dsn, **extra}


class GatewayProcess:
    """The gateway as a real subprocess with its own config, port, audit file and logs."""

    def __init__(
        self,
        *,
        targets: list[dict[str, Any]],
        identities: list[dict[str, Any]] | None = None,
        rules: list[dict[str, Any]] | None = None,
        environments: dict[str, dict[str, Any]] | None = None,
        listener: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        name: str = "it",
        ready_timeout: float = 20.0,
        stop_timeout: float = 15.0,
        env: dict[str, str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        allow_nonzero_exit: bool = False,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sqlward-gw-"))
        self.port = free_port()
        self.host = "127.0.0.1"
        self.audit_file = self.dir / "audit.jsonl"
        self.config_file = self.dir / "gateway.toml"
        self.stdout_file = self.dir / "stdout.log"
        self.stderr_file = self.dir / "stderr.log"
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.allow_nonzero_exit = allow_nonzero_exit
        self.env = env
        self.identities = identities if identities is not None else DEFAULT_IDENTITIES
        # `listen_host` "0.0.0.0" also accepts clients on the machine's other addresses;
        # clients of the helpers below still connect to 127.0.0.1.
        lst = {"protocol": "postgres", "listen": f"{listen_host}:{self.port}"}
        lst.update(listener or {})
        doc: dict[str, Any] = {
            "gateway": {"name": name},
            "listeners": [lst],
            "targets": targets,
            "identities": self.identities,
            "audit": {"file": str(self.audit_file)},
        }
        # Test clients all come from loopback: failed logins of one test must not slow the
        # next ones by address (tests of the address key set [login_throttle] themselves).
        doc["login_throttle"] = {"exempt_addresses": ["127.0.0.0/8", "::1/128"]}
        if environments:
            doc["environments"] = environments
        if rules:
            doc["rules"] = rules
        for k, v in (extra or {}).items():
            doc[k] = v
        self.config = doc
        self.config_text = self._render(doc)
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr_sink: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        # The test stops the gateway itself (a SIGTERM it sends): an exit is no problem, an exit
        # status other than 0 or a traceback still are.
        self.exit_expected = False

    @staticmethod
    def _render(doc: dict[str, Any]) -> str:
        # `environments` is a table of tables: [environments.production]
        envs = doc.get("environments")
        rest = {k: v for k, v in doc.items() if k != "environments"}
        text = to_toml(rest)
        if envs:
            for env_name, settings in envs.items():
                text += f"\n[environments.{_toml_key(env_name)}]\n"
                for k, v in settings.items():
                    text += f"{_toml_key(k)} = {_toml_value(v)}\n"
        tomllib.loads(text)
        return text

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "GatewayProcess":
        self.config_file.write_text(self.config_text)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.env:
            env.update(self.env)
        with open(self.stdout_file, "wb") as out, open(self.stderr_file, "wb") as err:
            # The gateway's stderr goes through a pipe to a `cat` of its own, which writes the
            # file: tests that limit the gateway's file size (RLIMIT_FSIZE, to make its audit
            # file unwritable) must not make its log unwritable too.
            self._stderr_sink = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=err)
            assert self._stderr_sink.stdin is not None
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "sqlward.gateway", "serve", "--config", str(self.config_file)],
                    cwd=str(REPO_ROOT),
                    stdout=out,
                    stderr=self._stderr_sink.stdin,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            finally:
                self._stderr_sink.stdin.close()  # the gateway holds the pipe's only write end
        deadline = time.monotonic() + self.ready_timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                self._drain_stderr()
                raise RuntimeError(
                    f"gateway exited with {rc} before listening on {self.port}\n"
                    f"--- config ---\n{self.config_text}\n--- stderr ---\n{self.stderr_text()}"
                    f"\n--- stdout ---\n{self.stdout_text()}"
                )
            if self._listening():
                break
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(
                    f"gateway did not listen on {self.port} within {self.ready_timeout}s\n"
                    f"--- stderr ---\n{self.stderr_text()}\n--- stdout ---\n{self.stdout_text()}"
                )
            time.sleep(0.05)
        LIVE.append(self)
        return self

    def _listening(self) -> bool:
        """Is something listening on our port? Read /proc/net/tcp so the check opens no
        connection (a probe connection would show up in the audit trail)."""
        want = (f"0100007F:{self.port:04X}", f"00000000:{self.port:04X}")  # 127.0.0.1 or 0.0.0.0
        try:
            with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1] in want and parts[3] == "0A":
                        return True
            return False
        except OSError:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._drain_stderr()

    def _drain_stderr(self) -> None:
        """Wait for the stderr pipe's `cat` to write out what the ended gateway said."""
        if self._stderr_sink is not None:
            try:
                self._stderr_sink.wait(10)
            except subprocess.TimeoutExpired:
                self._stderr_sink.kill()

    def stop(self) -> list[str]:
        """SIGTERM, wait; return the problems found (empty = clean)."""
        problems: list[str] = []
        if self in LIVE:
            LIVE.remove(self)
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"did not stop within {self.stop_timeout}s of SIGTERM (killed)")
                self._kill()
        elif not self.exit_expected:
            problems.append(f"had already exited ({self.proc.returncode}) before the test ended it")
        self.returncode = self.proc.returncode
        self._drain_stderr()
        if self.returncode != 0 and not self.allow_nonzero_exit:
            problems.append(f"exit status {self.returncode} after SIGTERM (want 0)")
        if TRACEBACK_MARK in self.stderr_text():
            problems.append("printed a Python traceback to stderr")
        return problems

    def __enter__(self) -> "GatewayProcess":
        try:
            return self.start()
        except BaseException:
            self._kill()
            if self in LIVE:
                LIVE.remove(self)
            if self._own_dir and not os.environ.get("SQLWARD_IT_KEEP"):
                shutil.rmtree(self.dir, ignore_errors=True)  # the error message carries stderr
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        problems = self.stop()
        stderr = self.stderr_text()
        if self._own_dir and not problems and not os.environ.get("SQLWARD_IT_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if problems and exc_type is None:
            raise AssertionError(
                f"gateway on port {self.port}: " + "; ".join(problems)
                + f"\n(files kept in {self.dir})\n--- stderr (tail) ---\n{stderr[-6000:]}"
            )

    # -- health (per-test checks) --------------------------------------------------------------
    def stderr_size(self) -> int:
        try:
            return self.stderr_file.stat().st_size
        except OSError:
            return 0

    def health_problems(self, since: int = 0) -> list[str]:
        problems = []
        if self.proc is not None and self.proc.poll() is not None:
            problems.append(f"gateway process exited with {self.proc.returncode}")
        new = self.stderr_text(since)
        if TRACEBACK_MARK in new:
            problems.append("gateway printed a Python traceback:\n" + new[-6000:])
        return problems

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- client side helpers -------------------------------------------------------------------
    def dsn(self, user: str, password: str | None = None, dbname: str = "app", **params: Any) -> str:
        """A libpq URI to this gateway. Omit `password` to pass it otherwise (PGPASSWORD)."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        q = ("?" + urlencode({k: str(v) for k, v in params.items()})) if params else ""
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}{q}"

    def kv_dsn(self, user: str, dbname: str = "app", **params: Any) -> str:
        """A key=value conninfo (pgbench takes these)."""
        parts = {"host": self.host, "port": str(self.port), "user": user, "dbname": dbname, **params}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    # -- files -------------------------------------------------------------------------------
    def stderr_text(self, since: int = 0) -> str:
        try:
            with open(self.stderr_file, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_file.read_text(errors="replace")
        except OSError:
            return ""

    def audit_text(self) -> str:
        try:
            return self.audit_file.read_text(errors="replace")
        except OSError:
            return ""

    def audit_offset(self) -> int:
        """Current size of the audit file: pass to `audit_events(since=...)`."""
        try:
            return self.audit_file.stat().st_size
        except OSError:
            return 0

    def audit_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Every audit line from byte offset `since`, parsed. A line that is not one complete
        JSON object fails the test (the writer appends whole lines with one write each)."""
        for attempt in range(10):
            try:
                with open(self.audit_file, "rb") as f:
                    f.seek(since)
                    data = f.read()
            except FileNotFoundError:
                return []
            if not data or data.endswith(b"\n"):
                break
            time.sleep(0.05)  # a line being appended right now
        else:
            raise AssertionError(f"audit file ends with an incomplete line: {data[-200:]!r}")
        events = []
        lines = data.split(b"\n")
        lines.pop()
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise AssertionError(f"audit line {i} is not JSON: {line[:200]!r} ({exc})") from None
            if not isinstance(obj, dict):
                raise AssertionError(f"audit line {i} is not an object: {line[:200]!r}")
            events.append(obj)
        return events

    def audit_full(self) -> None:
        """Make the audit file unwritable past its current size (RLIMIT_FSIZE of the running
        gateway): every further audit write fails, as on a full disk."""
        assert self.proc is not None
        size = os.path.getsize(self.audit_file)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    def audit_writable(self) -> None:
        """Undo `audit_full` (when the gateway still runs)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def decided(self, needle: str) -> list[dict[str, Any]]:
        """The statement.decided events whose SQL contains `needle`."""
        return [e for e in self.audit_events() if e.get("event") == "statement.decided" and needle in e.get("sql", "")]

    def refused_unrecorded(self, needle: str) -> bool:
        """Every statement.decided event whose SQL contains `needle` is followed by a completion
        saying it was refused because the trail could not take it (58030): the trail keeps every
        record it chained, so a refused statement's decision may reach the file once the disk
        recovers, but it never reads as a statement that ran."""
        events = self.audit_events()
        for decided in (e for e in events if e.get("event") == "statement.decided" and needle in e.get("sql", "")):
            done = [
                e for e in events if e.get("event") == "statement.completed"
                and e.get("connection_id") == decided["connection_id"] and e.get("request_id") == decided["request_id"]
            ]
            if not done or any(e.get("sqlstate") != "58030" for e in done):
                return False
        return True

    def wait_audit(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        since: int = 0,
        timeout: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Poll the audit file until `predicate(events)` holds; return the events either way."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.audit_events(since)
            if predicate(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.05)


def connection_events(events: Iterable[dict[str, Any]], connection_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("connection_id") == connection_id]


def connection_id_for_app(events: Iterable[dict[str, Any]], application_name: str) -> str | None:
    """The connection id of the session that authenticated with this application_name."""
    for e in events:
        if e.get("event") == "connection.authenticated" and e.get("application_name") == application_name:
            return e.get("connection_id")
    return None
