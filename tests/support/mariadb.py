"""MariaDB for the MySQL integration tests: the system server and a private, throw-away one.

System server (127.0.0.1:3306, root without a password): `system_root()` gives an autocommit
PyMySQL connection as root, `root_sql(...)` runs statements there. The conftest creates the
test database and upstream user on it.

`PrivateMariaDB` (a context manager) is a second server of the same binaries for upstream-TLS
tests. It runs `mariadb-install-db --no-defaults --auth-root-authentication-method=normal` into a
temp dir (as root with `--user=root`, so no chown dance), then `mariadbd --no-defaults` on a free
port bound to 127.0.0.1, its unix socket in the temp dir, TLS on with a fresh test CA
(`server.ca_file`; `server.wrong_ca_file` is an unrelated CA) and `require_secure_transport=ON`,
so every TCP client must use TLS. Grant tables are real (no --skip-grant-tables). It creates the
database `itdb` and two users allowed on it:

    native_user   mysql_native_password
    tls_user      mysql_native_password, REQUIRE SSL

(`server.passwords[user]`). root connects over the unix socket (`server.admin()`). Start-up takes
about a second; on exit the server gets SIGTERM (SIGKILL after 30 s) and the directory is removed
(kept with `keep=True` or SQLWARD_IT_KEEP=1).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql

from tests.support.certs import TestPKI, make_pki

SYSTEM_HOST = os.environ.get("SQLWARD_IT_MYHOST", "127.0.0.1")
SYSTEM_PORT = int(os.environ.get("SQLWARD_IT_MYPORT", "3306"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def system_root(database: str | None = None, **kw: Any) -> pymysql.Connection:
    """An autocommit PyMySQL connection to the system MariaDB as root."""
    return pymysql.connect(
        host=SYSTEM_HOST, port=SYSTEM_PORT, user="root", password="", database=database,
        autocommit=True, connect_timeout=10, charset="utf8mb4", **kw,
    )


def root_sql(*statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
    """Run statements as root on the system MariaDB; the rows of the last one."""
    with system_root(database) as c, c.cursor() as cur:
        rows: list[tuple[Any, ...]] = []
        for s in statements:
            cur.execute(s)
            rows = list(cur.fetchall())
        return rows


def mariadb_binary(name: str) -> str:
    for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
        p = Path(d) / name
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found")
    return found


class PrivateMariaDB:
    host = "127.0.0.1"
    dbname = "itdb"
    USERS = ("native_user", "tls_user")

    def __init__(self, *, keep: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.keep = keep or bool(os.environ.get("SQLWARD_IT_KEEP"))
        self.extra_args = extra_args
        self.passwords = {u: f"{u.split('_')[0]}-pw-{secrets.token_hex(6)}" for u in self.USERS}
        self.port = 0
        self.dir: Path | None = None
        self.pki: TestPKI | None = None
        self.wrong_pki: TestPKI | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # -- paths --------------------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        assert self.dir
        return self.dir / "data"

    @property
    def socket_path(self) -> str:
        assert self.dir
        return str(self.dir / "mysqld.sock")

    @property
    def logfile(self) -> Path:
        assert self.dir
        return self.dir / "error.log"

    @property
    def ca_file(self) -> str:
        assert self.pki
        return str(self.pki.ca_file)

    @property
    def wrong_ca_file(self) -> str:
        assert self.wrong_pki
        return str(self.wrong_pki.ca_file)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def dsn(self, user: str, **params: str) -> str:
        """A target DSN (mysql://user@127.0.0.1:PORT/itdb?params); the password goes separately."""
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"mysql://{user}@{self.host}:{self.port}/{self.dbname}" + (f"?{q}" if q else "")

    # -- admin ----------------------------------------------------------------------------------
    def admin(self, database: str | None = None) -> pymysql.Connection:
        """root over the unix socket (TCP would need TLS: require_secure_transport)."""
        return pymysql.connect(unix_socket=self.socket_path, user="root", password="", database=database,
                               autocommit=True, connect_timeout=10, charset="utf8mb4")

    def sql(self, *statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
        with self.admin(database) as c, c.cursor() as cur:
            rows: list[tuple[Any, ...]] = []
            for s in statements:
                cur.execute(s)
                rows = list(cur.fetchall())
            return rows

    # -- lifecycle ------------------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=str(self.dir))
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def start(self) -> "PrivateMariaDB":
        self.dir = Path(tempfile.mkdtemp(prefix="sqlward-mariadb-"))
        tls_dir = self.dir / "tls"
        self.pki = make_pki(tls_dir)
        self.wrong_pki = make_pki(tls_dir, prefix="wrong-")
        user_args = ["--user=root"] if os.geteuid() == 0 else []
        self._run(
            mariadb_binary("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
            *user_args,
        )
        self.port = free_port()
        args = [
            mariadb_binary("mariadbd"), "--no-defaults", *user_args,
            f"--datadir={self.datadir}", f"--socket={self.socket_path}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--log-error={self.logfile}", "--skip-name-resolve", "--skip-log-bin",
            "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
            "--innodb-flush-log-at-trx-commit=0", "--performance-schema=OFF", "--max-connections=60",
            f"--ssl-cert={self.pki.cert_file}", f"--ssl-key={self.pki.key_file}",
            f"--ssl-ca={self.pki.ca_file}", "--require-secure-transport=ON",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=str(self.dir))
        deadline = time.monotonic() + 30
        last: Exception | None = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                with self.admin():
                    break
            except pymysql.MySQLError as e:
                last = e
            if time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd did not accept connections within 30 s ({last}):\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        p = self.passwords
        self.sql(
            f"CREATE DATABASE {self.dbname}",
            f"CREATE USER 'native_user'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{p['native_user']}')",
            f"CREATE USER 'tls_user'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{p['tls_user']}') REQUIRE SSL",
            f"GRANT ALL ON {self.dbname}.* TO 'native_user'@'%'",
            f"GRANT ALL ON {self.dbname}.* TO 'tls_user'@'%'",
            f"CREATE TABLE {self.dbname}.t (id INT PRIMARY KEY, v VARCHAR(50))",
            f"INSERT INTO {self.dbname}.t VALUES (1, 'private')",
        )
        return self

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self.proc = None
            if self.dir and not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PrivateMariaDB":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
