"""A private, throw-away PostgreSQL cluster for upstream-authentication tests.

`PgCluster` (a context manager) runs `initdb` as the OS user `postgres` (PostgreSQL refuses to
run as root), picks a free port, listens on 127.0.0.1 only with its unix socket in the temp
dir, turns TLS on with a fresh test CA (`cluster.ca_file`) and a server certificate for
127.0.0.1/localhost, and creates one login role per authentication method, each allowed in by
exactly that method (pg_hba.conf):

    scram_user  host     scram-sha-256   (verifier stored as SCRAM)
    md5_user    host     md5             (verifier stored as MD5: password_encryption = md5)
    clear_user  host     password        (cleartext on the wire)
    tls_user    hostssl  scram-sha-256   (plain connections rejected)
    trust_user  host     trust

All of them may connect to the database `itdb` only. The superuser `postgres` connects over
the unix socket (`cluster.admin_dsn()`). On exit the cluster is stopped (`pg_ctl stop -m fast`)
and the directory removed.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from tests.support.certs import TestPKI, make_pki

USERS = ("scram_user", "md5_user", "clear_user", "tls_user", "trust_user")
METHODS = {
    "scram_user": "scram-sha-256",
    "md5_user": "md5",
    "clear_user": "password",
    "tls_user": "scram-sha-256",
    "trust_user": "trust",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


class PgCluster:
    host = "127.0.0.1"
    dbname = "itdb"

    def __init__(self, *, os_user: str = "postgres", keep: bool = False) -> None:
        self.os_user = os_user
        self.keep = keep
        self.passwords: dict[str, str] = {
            u: f"{u.split('_')[0]}-pw-{secrets.token_hex(6)}" for u in USERS if u != "trust_user"
        }
        self.passwords["trust_user"] = ""
        self.port = 0
        self.dir: Path | None = None
        self.pki: TestPKI | None = None
        self.wrong_pki: TestPKI | None = None
        self._started = False

    # -- paths ----------------------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        assert self.dir
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.dir
        return self.dir / "sock"

    @property
    def logfile(self) -> Path:
        assert self.dir
        return self.dir / "postgres.log"

    @property
    def ca_file(self) -> str:
        """The CA that signed the cluster's server certificate."""
        assert self.pki
        return str(self.pki.ca_file)

    @property
    def wrong_ca_file(self) -> str:
        """An unrelated CA (verification against it must fail)."""
        assert self.wrong_pki
        return str(self.wrong_pki.ca_file)

    # -- connection strings ---------------------------------------------------------------------
    def dsn(self, user: str, password: str | None = None, dbname: str | None = None, **params: str) -> str:
        """A libpq URI for a TCP connection to the cluster."""
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        q = ("?" + urlencode(params)) if params else ""
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname or self.dbname, safe='')}{q}"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ------------------------------------------------------------------------------
    def _run(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        res = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, cwd=str(self.dir),
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n{self.log_text()[-3000:]}"
            )
        return res

    def start(self) -> "PgCluster":
        bindir = pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="sqlward-pg-"))
        pw = pwd.getpwnam(self.os_user) if os.geteuid() == 0 else None
        owner = (pw.pw_uid, pw.pw_gid) if pw else None
        if owner:
            os.chown(self.dir, *owner)
        self.socket_dir.mkdir()
        tls_dir = self.dir / "tls"
        self.pki = make_pki(tls_dir, owner=owner)
        self.wrong_pki = make_pki(tls_dir, prefix="wrong-", owner=owner)
        if owner:
            os.chown(self.socket_dir, *owner)
            os.chown(tls_dir, *owner)

        self._run(
            str(bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )
        self.port = free_port()
        conf = f"""
# --- sqlward test cluster ---
port = {self.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{self.socket_dir}'
ssl = on
ssl_cert_file = '{self.pki.cert_file}'
ssl_key_file = '{self.pki.key_file}'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 40
log_connections = on
log_line_prefix = '%m [%p] %u@%d '
"""
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(conf)
        hba = [
            "# TYPE    DATABASE USER        ADDRESS        METHOD",
            "local     all      postgres                   trust",
            "hostssl   itdb     tls_user    127.0.0.1/32   scram-sha-256",
            "host      itdb     tls_user    127.0.0.1/32   reject",
            "host      itdb     scram_user  127.0.0.1/32   scram-sha-256",
            "host      itdb     md5_user    127.0.0.1/32   md5",
            "host      itdb     clear_user  127.0.0.1/32   password",
            "host      itdb     trust_user  127.0.0.1/32   trust",
            "host      all      all         0.0.0.0/0      reject",
        ]
        (self.datadir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        if owner:
            os.chown(self.datadir / "pg_hba.conf", *owner)

        self._run(str(bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                  "-w", "-t", "30", "start")
        self._started = True
        p = self.passwords
        sql = f"""
\\set ON_ERROR_STOP 1
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD '{p["scram_user"]}';
CREATE ROLE clear_user LOGIN PASSWORD '{p["clear_user"]}';
CREATE ROLE tls_user LOGIN PASSWORD '{p["tls_user"]}';
CREATE ROLE trust_user LOGIN;
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD '{p["md5_user"]}';
CREATE DATABASE itdb OWNER scram_user;
\\c itdb
GRANT ALL ON SCHEMA public TO md5_user, clear_user, tls_user, trust_user;
"""
        self._run("psql", "-X", "-q", "-d", self.admin_dsn(), input=sql)
        return self

    def stop(self) -> None:
        try:
            if self._started:
                self._run(str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                          "-t", "30", "stop")
                self._started = False
        finally:
            if self.dir and not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)

    def terminate_backends(self, user: str) -> int:
        """Terminate every backend of `user` (to kill upstream sessions mid-query)."""
        out = self._run(
            "psql", "-X", "-At", "-d", self.admin_dsn(),
            "-c", f"select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = '{user}'",
        )
        return int(out.stdout.strip() or 0)

    def __enter__(self) -> "PgCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll `predicate` until it returns a truthy value or `timeout` passes; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
