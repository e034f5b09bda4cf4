"""Reading a real gateway's audit trail back in integration tests.

    run_verify(source, public_key)     `sqlward audit verify SOURCE --public-key PUB` as a subprocess
    trail_files(path)                  a file set: its rotated siblings oldest first, then `path`
    trail_bytes(path) / trail_lines(path) / trail_records(path)
                                       every byte / line / parsed record of a file set, in order
    verify_lines(lines, public_key)    `audit.chain.verify` over lines (a table's, a file set's)
    completed_statements(records)      {(connection_id, request_id): (decided, completed)} of
                                       statements that completed without error
    kill9(gw)                          SIGKILL a GatewayProcess (it can be `start()`ed again)
    table_lines(dsn, table, gateway)   a PostgreSQL sink's rows of one gateway as lines (+ "\n")
    pg_down(cluster) / pg_up(cluster)  stop / start a tests.support.pgcluster.PgCluster in place
    wait_for(predicate, timeout)       poll until truthy (tests.support.pgcluster.wait_for)

The default signing key is made by the gateway at first start next to `[audit] file`:
`public_key_of(gw)` is its `.pub`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sqlward.audit.chain import PublicKey, Report, verify
from sqlward.audit.sinks.file import rotated_files
from sqlward.audit.trail import DEFAULT_KEY_NAME
from tests.support import gateway as gwmod
from tests.support.gateway import REPO_ROOT, GatewayProcess
from tests.support.pgcluster import PgCluster, pg_bindir, wait_for

__all__ = [
    "completed_statements", "kill9", "load_public_key", "pg_down", "pg_up", "public_key_of", "run_verify",
    "table_lines", "trail_bytes", "trail_files", "trail_lines", "trail_records", "verify_lines", "wait_for",
]


def public_key_of(gw: GatewayProcess) -> Path:
    """The `.pub` of the signing key the gateway made next to its `[audit] file`."""
    audit_file = Path(gw.config["audit"]["file"])
    return audit_file.parent / (DEFAULT_KEY_NAME + ".pub")


def load_public_key(path: str | Path) -> PublicKey:
    key = load_pem_public_key(Path(path).read_bytes())
    return key  # type: ignore[return-value]


def run_verify(source: str | Path, public_key: str | Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`sqlward audit verify SOURCE --public-key PUB [args]` (exit 0 ok, 1 broken, 2 usage)."""
    return subprocess.run(
        [sys.executable, "-m", "sqlward.gateway", "audit", "verify", str(source), "--public-key", str(public_key), *args],
        cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=timeout,
    )


def trail_files(path: str | Path) -> list[Path]:
    """The rotated siblings of `path` in writing order, then `path` itself (when it exists)."""
    p = Path(path)
    files = [Path(f) for f in rotated_files(str(p))]
    if p.exists():
        files.append(p)
    return files


def trail_bytes(path: str | Path) -> bytes:
    return b"".join(f.read_bytes() for f in trail_files(path))


def trail_lines(path: str | Path) -> list[bytes]:
    """Every line (with its newline) of the file set, in chain order."""
    return trail_bytes(path).splitlines(keepends=True)


def trail_records(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in trail_lines(path) if line.strip()]


def verify_lines(lines: Iterable[bytes], public_key: str | Path | PublicKey) -> Report:
    key = load_public_key(public_key) if isinstance(public_key, (str, Path)) else public_key
    return verify(lines, key)


def completed_statements(records: Iterable[dict[str, Any]]) -> dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each statement.decided record keyed by (connection_id, request_id), with its
    statement.completed record (None when there is none)."""
    out: dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any] | None]] = {}
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        key = (r.get("connection_id", ""), r.get("request_id", -1))
        if r.get("event") == "statement.decided":
            out[key] = (r, None)
        elif r.get("event") == "statement.completed":
            done[key] = r
    return {k: (d, done.get(k)) for k, (d, _) in out.items()}


def kill9(gw: GatewayProcess) -> None:
    """SIGKILL the gateway process and wait for it; it leaves the list of live gateways (the
    per-test health check) and may be started again with `gw.start()` on the same files."""
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    gw._drain_stderr()
    if gw in gwmod.LIVE:
        gwmod.LIVE.remove(gw)


def table_lines(dsn: str, table: str, gateway: str) -> list[bytes]:
    """The rows of `gateway` in a PostgreSQL sink's table, in chain order, as the lines a file
    holds (the column `line` and a newline); [] when the table or the server is not there."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(dsn, connect_timeout=5) as c:
            rows = c.execute(sql.SQL("SELECT line FROM {} WHERE gateway = %s ORDER BY seq").format(sql.Identifier(table)),
                             (gateway,)).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
        return []
    return [line.encode("utf-8") + b"\n" for (line,) in rows]


def _pg_ctl(cluster: PgCluster, *args: str) -> None:
    cluster._run(str(pg_bindir() / "pg_ctl"), "-D", str(cluster.datadir), *args)


def pg_down(cluster: PgCluster) -> None:
    """Stop the private cluster (fast: its sessions are ended), keeping its files."""
    _pg_ctl(cluster, "-m", "fast", "-w", "-t", "30", "stop")


def pg_up(cluster: PgCluster) -> None:
    """Start the private cluster again on the same port."""
    _pg_ctl(cluster, "-l", str(cluster.logfile), "-w", "-t", "30", "start")
