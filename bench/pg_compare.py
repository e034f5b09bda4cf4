"""Compare pgbench -S throughput: direct PostgreSQL, pgbouncer, a bare trio relay, sqlward.

    python bench/pg_compare.py [--duration 15] [--clients 4] [--rounds 1]
                               [--only direct,pgbouncer,relay,sqlward]
                               [--json FILE] [--markdown]

In one run it:
  1. creates database ``sqlward_bench`` if missing and initialises it with
     ``pgbench -i -s 1`` (only when the pgbench tables are missing);
  2. starts pgbouncer (session pooling, auth_type=trust) on a free port, if the
     binary is installed (else that column is skipped with a note);
  3. starts the bare relay (bench/relay.py) on a free port;
  4. starts sqlward (``python -m sqlward.gateway serve --config FILE``) with audit on;
  5. runs ``pgbench -S -n -c C -j J -T D`` in ``-M simple`` and ``-M prepared``
     against each path, rotating the path order every round;
  6. prints TPS per (mode, path) and the ratios sqlward/relay, sqlward/direct,
     sqlward/pgbouncer and relay/direct, plus the audit file's line count.

Every process it starts is stopped on exit, Ctrl-C or failure. All clients
connect with sslmode=disable so that every path carries the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RELAY_SCRIPT = REPO_ROOT / "bench" / "relay.py"

PATHS = ("direct", "pgbouncer", "relay", "sqlward")
MODES = ("simple", "prepared")
RATIOS = (
    ("sqlward/relay", "sqlward", "relay"),
    ("sqlward/direct", "sqlward", "direct"),
    ("sqlward/pgbouncer", "sqlward", "pgbouncer"),
    ("relay/direct", "relay", "direct"),
)

BENCH_DB = "sqlward_bench"
GATEWAY_USER = "bench"
GATEWAY_DB = "bench"
GATEWAY_SECRET = "bench-secret"

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
XACT_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)

# Connection variables that must not leak from the caller's environment into
# pgbench/psql; every connection parameter is given explicitly.
_PG_ENV_DROP = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD",
    "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE",
    "PGREQUIRESSL", "PGTARGETSESSIONATTRS",
)


class BenchError(RuntimeError):
    """A step failed; the message is meant for the user."""


def log(msg: str) -> None:
    print(f"[pg_compare] {msg}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 15) -> str:
    rows = text.rstrip().splitlines()[-lines:]
    return "\n".join("    | " + r for r in rows) if rows else "    | (empty)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pg_env(password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PG_ENV_DROP}
    env["PGSSLMODE"] = "disable"
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _child_setup() -> None:
    # Children get default SIGINT handling even if we were started with SIGINT
    # ignored (e.g. `cmd &` in a non-interactive shell), so that a Python child
    # (relay, gateway) can shut down cleanly on SIGINT and flush its audit file.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --------------------------------------------------------------------------- #
# Managed background processes


@dataclass
class Service:
    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGINT
    user: str = "postgres"
    dbname: str = BENCH_DB
    password: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait in ((self.stop_signal, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


class Services:
    """Owns every background process; ``stop_all`` is idempotent."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.items: list[Service] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        host: str,
        port: int,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGINT,
        **kw: Any,
    ) -> Service:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches us; we stop them ourselves
                preexec_fn=_child_setup,
            )
        svc = Service(name, host, port, proc, log_path, stop_signal=stop_signal, **kw)
        self.items.append(svc)
        return svc

    def stop(self, svc: Service) -> None:
        svc.stop()

    def stop_all(self) -> None:
        for svc in reversed(self.items):
            try:
                svc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {svc.name} (pid {svc.proc.pid}): {exc}")


def wait_for_port(svc: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rc = svc.proc.poll()
        if rc is not None:
            raise BenchError(
                f"{svc.name} exited with status {rc} before accepting connections; "
                f"last lines of its output ({svc.log_path}):\n{tail(svc.log_text())}"
            )
        try:
            with socket.create_connection((svc.host, svc.port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(
                f"{svc.name} did not accept connections on {svc.host}:{svc.port} "
                f"within {timeout:.0f}s; last lines of its output ({svc.log_path}):\n"
                f"{tail(svc.log_text())}"
            )
        time.sleep(0.1)


def smoke_query(svc: Service) -> None:
    """One ``select 1`` through the path, so a broken path fails fast and clearly."""
    cmd = [
        "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
        "-h", svc.host, "-p", str(svc.port), "-U", svc.user, "-d", svc.dbname,
        "-c", "select 1",
    ]
    try:
        res = subprocess.run(
            cmd, env=pg_env(svc.password), capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{svc.name}: `select 1` through {svc.host}:{svc.port} timed out; "
            f"last lines of its output:\n{tail(svc.log_text())}"
        ) from None
    if res.returncode != 0 or res.stdout.strip() != "1":
        raise BenchError(
            f"{svc.name}: `select 1` through {svc.host}:{svc.port} failed "
            f"(psql status {res.returncode}):\n{tail(res.stderr or res.stdout)}\n"
            f"  last lines of {svc.name}'s output:\n{tail(svc.log_text())}"
        )


# --------------------------------------------------------------------------- #
# Database preparation


def psql_admin(args: argparse.Namespace, dbname: str, sql: str) -> str:
    res = subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
         "-h", args.pg_host, "-p", str(args.pg_port), "-U", args.pg_user,
         "-d", dbname, "-c", sql],
        env=pg_env(), capture_output=True, text=True, timeout=120,
    )
    if res.returncode != 0:
        raise BenchError(f"psql -d {dbname} -c {sql!r} failed:\n{tail(res.stderr)}")
    return res.stdout.strip()


def prepare_database(args: argparse.Namespace) -> None:
    exists = psql_admin(
        args, "postgres", f"select 1 from pg_database where datname = '{BENCH_DB}'"
    )
    if exists != "1":
        log(f"creating database {BENCH_DB}")
        psql_admin(args, "postgres", f'create database "{BENCH_DB}"')
    initialised = psql_admin(args, BENCH_DB, "select to_regclass('pgbench_accounts') is not null")
    if initialised == "t":
        return
    log(f"initialising {BENCH_DB} with pgbench -i -s {args.scale}")
    res = subprocess.run(
        ["pgbench", "-i", "-s", str(args.scale), "-q",
         "-h", args.pg_host, "-p", str(args.pg_port), "-U", args.pg_user, BENCH_DB],
        env=pg_env(), capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise BenchError(f"pgbench -i failed:\n{tail(res.stderr)}")


# --------------------------------------------------------------------------- #
# Starting the paths


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    for cand in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def start_pgbouncer(args: argparse.Namespace, services: Services, binary: str) -> Service:
    port = free_port()
    pdir = services.workdir / "pgbouncer"
    pdir.mkdir()
    ini = pdir / "pgbouncer.ini"
    userlist = pdir / "userlist.txt"
    pool = max(args.clients + 2, 10)
    ini.write_text(
        "[databases]\n"
        f"{BENCH_DB} = host={args.pg_host} port={args.pg_port} dbname={BENCH_DB} "
        f"user={args.pg_user}\n"
        "\n[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "pool_mode = session\n"
        "auth_type = trust\n"
        f"auth_file = {userlist}\n"
        f"max_client_conn = {max(100, args.clients * 4)}\n"
        f"default_pool_size = {pool}\n"
        "server_tls_sslmode = disable\n"
        "client_tls_sslmode = disable\n"
        "ignore_startup_parameters = extra_float_digits\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "stats_period = 3600\n"
    )
    # auth_type=trust still wants the user listed in auth_file.
    userlist.write_text(f'"{args.pg_user}" ""\n')
    argv = [binary]
    if os.geteuid() == 0:
        # pgbouncer refuses to run as root; it drops to this user itself, so
        # its pid is the one we signal (no runuser/su in between). Its files
        # must be readable by that user; its log goes to our stdout file.
        argv += ["-u", args.pgbouncer_user]
        for p in (services.workdir, pdir):
            p.chmod(0o755)
        for p in (ini, userlist):
            p.chmod(0o644)
    argv.append(str(ini))
    # SIGTERM = immediate shutdown (SIGINT would wait for clients to leave).
    svc = services.spawn(
        "pgbouncer", argv, "127.0.0.1", port, stop_signal=signal.SIGTERM,
        user=args.pg_user, dbname=BENCH_DB,
    )
    wait_for_port(svc, args.start_timeout)
    smoke_query(svc)
    return svc


def start_relay(args: argparse.Namespace, services: Services) -> Service:
    port = free_port()
    svc = services.spawn(
        "relay",
        [sys.executable, str(RELAY_SCRIPT), "--listen", f"127.0.0.1:{port}",
         "--upstream", f"{args.pg_host}:{args.pg_port}"],
        "127.0.0.1", port, user=args.pg_user, dbname=BENCH_DB,
    )
    wait_for_port(svc, args.start_timeout)
    smoke_query(svc)
    return svc


GATEWAY_CONFIG = """\
[gateway]
name = "bench"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:{port}"

[[targets]]
name = "{target}"
protocol = "postgres"
environment = "development"
dsn = "postgresql://{pg_user}@{pg_host}:{pg_port}/{db}?sslmode=disable"

[[identities]]
name = "{user}"
secret = "{secret}"

[audit]
file = "{audit}"

[[rules]]
id = "no-drop"
operations = ["drop"]
action = "deny"
"""


def start_sqlward(args: argparse.Namespace, services: Services) -> Service:
    port = free_port()
    gdir = services.workdir / "sqlward"
    gdir.mkdir()
    audit = gdir / "audit.jsonl"
    config = gdir / "sqlward.toml"
    config.write_text(
        GATEWAY_CONFIG.format(
            port=port, target=GATEWAY_DB, pg_user=args.pg_user, pg_host=args.pg_host,
            pg_port=args.pg_port, db=BENCH_DB, user=GATEWAY_USER, secret=GATEWAY_SECRET,
            audit=audit,
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    svc = services.spawn(
        "sqlward",
        [sys.executable, "-m", "sqlward.gateway", "serve", "--config", str(config)],
        "127.0.0.1", port, env=env, cwd=REPO_ROOT,
        user=GATEWAY_USER, dbname=GATEWAY_DB, password=GATEWAY_SECRET,
        extra={"audit": audit, "config": config},
    )
    wait_for_port(svc, args.gateway_timeout)
    smoke_query(svc)
    return svc


def direct_service(args: argparse.Namespace) -> Service:
    # Not a process of ours: a stand-in so every path is run the same way.
    return Service(
        "direct", args.pg_host, args.pg_port,
        proc=None,  # type: ignore[arg-type]
        log_path=Path(os.devnull), user=args.pg_user, dbname=BENCH_DB,
    )


# --------------------------------------------------------------------------- #
# Running pgbench


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def run_pgbench(args: argparse.Namespace, svc: Service, mode: str, duration: int) -> dict[str, Any]:
    jobs = max(1, min(args.jobs, args.clients))
    cmd = [
        "pgbench", "-S", "-n", "-M", mode,
        "-c", str(args.clients), "-j", str(jobs), "-T", str(duration),
        "-h", svc.host, "-p", str(svc.port), "-U", svc.user, svc.dbname,
    ]
    started = time.time()
    res = subprocess.run(
        cmd, env=pg_env(svc.password), capture_output=True, text=True,
        timeout=duration + 120,
    )
    out = res.stdout + "\n" + res.stderr
    m = TPS_RE.search(out)
    entry: dict[str, Any] = {
        "mode": mode, "path": svc.name, "started": started,
        "returncode": res.returncode, "command": " ".join(cmd),
    }
    if lat := LAT_RE.search(out):
        entry["latency_ms"] = float(lat.group(1))
    if xacts := XACT_RE.search(out):
        entry["transactions"] = int(xacts.group(1))
    if failed := FAILED_RE.search(out):
        entry["failed_transactions"] = int(failed.group(1))
    if m and res.returncode == 0:
        entry["tps"] = float(m.group(1))
    else:
        entry["error"] = (
            f"pgbench exited with status {res.returncode}"
            + ("" if m else " and printed no tps line")
            + f":\n{tail(res.stderr or res.stdout)}"
        )
        if svc.proc is not None:
            entry["error"] += f"\n  last lines of {svc.name}'s output:\n{tail(svc.log_text())}"
    return entry


# --------------------------------------------------------------------------- #
# Reporting


def fmt_tps(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "—"


def fmt_ratio(v: float | None) -> str:
    return f"{v:.2f}×" if v is not None else "—"


def summarise(samples: dict[tuple[str, str], list[dict[str, Any]]], paths: list[str]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        row: dict[str, Any] = {}
        for path in paths:
            runs = samples.get((mode, path), [])
            tps = [r["tps"] for r in runs if "tps" in r]
            row[path] = {
                "tps": statistics.median(tps) if tps else None,
                "min": min(tps) if tps else None,
                "max": max(tps) if tps else None,
                "samples": tps,
                "errors": [r["error"] for r in runs if "error" in r],
            }
        # A ratio is taken within each round (the two runs were minutes apart at
        # most, so slow drift of the machine cancels out), then the median over
        # rounds; with one round it is simply num/den.
        by_round: dict[str, dict[int, float]] = {}
        for path in paths:
            by_round[path] = {
                r["round"]: r["tps"] for r in samples.get((mode, path), []) if "tps" in r
            }
        ratios = {}
        for label, num, den in RATIOS:
            a, b = by_round.get(num, {}), by_round.get(den, {})
            per_round = [a[r] / b[r] for r in sorted(a.keys() & b.keys()) if b[r]]
            ratios[label] = statistics.median(per_round) if per_round else None
        table[mode] = {"tps": row, "ratios": ratios}
    return table


def render_text(table: dict[str, Any], paths: list[str], rounds: int) -> str:
    head = ["mode"] + [f"{p} TPS" for p in paths] + [label for label, *_ in RATIOS]
    rows = [head]
    for mode in MODES:
        row = [mode]
        for p in paths:
            cell = table[mode]["tps"][p]
            txt = fmt_tps(cell["tps"])
            if cell["tps"] is None and cell["errors"]:
                txt = "FAILED"
            elif rounds > 1 and cell["tps"] is not None:
                txt += f" ({fmt_tps(cell['min'])}–{fmt_tps(cell['max'])})"
            row.append(txt)
        row += [fmt_ratio(table[mode]["ratios"][label]) for label, *_ in RATIOS]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(table: dict[str, Any], paths: list[str], machine: dict[str, Any], settings: dict[str, Any]) -> str:
    cols = list(PATHS)
    head = ["mode"] + cols + [label for label, *_ in RATIOS]
    out = [
        f"Machine: {machine['nproc']} cores, {machine['cpu_model']}, {machine['postgres']}; "
        f"pgbench -S -c {settings['clients']} -j {settings['jobs']} -T {settings['duration']} "
        f"-n, {settings['rounds']} round(s), median TPS; ratios are medians of per-round ratios.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for mode in MODES:
        row = [f"`-M {mode}`"]
        for p in cols:
            if p not in paths:
                row.append("pending" if p == "sqlward" else "not run")
                continue
            cell = table[mode]["tps"][p]
            row.append(fmt_tps(cell["tps"]) if cell["tps"] is not None else "failed")
        for label, num, den in RATIOS:
            v = table[mode]["ratios"][label]
            row.append(fmt_ratio(v) if v is not None else ("pending" if "sqlward" in (num, den) and "sqlward" not in paths else "—"))
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        pg = psql_admin(args, "postgres", "show server_version").split()[0]
        pg = f"PostgreSQL {pg}"
    except BenchError:
        pg = "PostgreSQL (unknown)"
    pgbench = subprocess.run(["pgbench", "--version"], capture_output=True, text=True).stdout.strip()
    pgb = find_pgbouncer()
    pgb_version = None
    if pgb:
        pgb_version = subprocess.run([pgb, "--version"], capture_output=True, text=True).stdout.splitlines()[0:1]
        pgb_version = pgb_version[0] if pgb_version else None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "postgres": pg,
        "pgbench": pgbench,
        "pgbouncer": pgb_version,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------------- #
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="pgbench -S: direct vs pgbouncer vs bare trio relay vs sqlward",
    )
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run (default 15)")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--rounds", type=int, default=1, help="rounds over all paths and modes (default 1); median is reported")
    p.add_argument("--only", default=",".join(PATHS), help=f"comma list of paths among {','.join(PATHS)}")
    p.add_argument("--json", metavar="FILE", help="write all figures and samples as JSON")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table for docs/performance.md")
    p.add_argument("--warmup", type=int, default=2, help="seconds of direct pgbench before measuring (0 = none)")
    p.add_argument("--scale", type=int, default=1, help="pgbench -i scale when initialising (default 1)")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--pgbouncer-user", default="postgres", help="user pgbouncer switches to when run as root")
    p.add_argument("--start-timeout", type=float, default=20.0, help="seconds to wait for pgbouncer/relay")
    p.add_argument("--gateway-timeout", type=float, default=30.0, help="seconds to wait for sqlward")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, audit file)")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in PATHS]
    if unknown or not only:
        p.error(f"--only: unknown path(s) {unknown}; choose among {','.join(PATHS)}")
    args.paths = [x for x in PATHS if x in only]
    for name in ("duration", "clients", "jobs", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("psql", "pgbench"):
        if shutil.which(tool) is None:
            log(f"{tool} not found: install postgresql-client (scripts/setup does)")
            return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with contextlib.suppress(AttributeError):
        signal.signal(signal.SIGHUP, _raise_interrupt)

    workdir = Path(tempfile.mkdtemp(prefix="sqlward-bench-"))
    services = Services(workdir)
    notes: list[str] = []
    startup_errors: dict[str, str] = {}
    try:
        prepare_database(args)
        machine = machine_info(args)
        active: dict[str, Service] = {}
        for path in args.paths:
            try:
                if path == "direct":
                    active[path] = direct_service(args)
                elif path == "pgbouncer":
                    binary = find_pgbouncer()
                    if binary is None:
                        note = "pgbouncer: binary not found, column skipped (scripts/setup installs it)"
                        notes.append(note)
                        log(note)
                        continue
                    log("starting pgbouncer")
                    active[path] = start_pgbouncer(args, services, binary)
                elif path == "relay":
                    log("starting relay")
                    active[path] = start_relay(args, services)
                elif path == "sqlward":
                    log("starting sqlward")
                    active[path] = start_sqlward(args, services)
                if path != "direct":
                    log(f"{path} up on 127.0.0.1:{active[path].port}")
            except BenchError as exc:
                msg = f"{path}: not benchmarked: {exc}"
                notes.append(msg.splitlines()[0])
                startup_errors[path] = str(exc)
                log(msg)

        run_paths = [p for p in args.paths if p in active]
        if not run_paths:
            raise BenchError("no path came up; nothing to measure")

        if args.warmup > 0 and "direct" in run_paths:
            log(f"warm-up: {args.warmup}s direct")
            run_pgbench(args, active["direct"], "simple", args.warmup)

        samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
        total = args.rounds * len(MODES) * len(run_paths)
        done = 0
        for rnd in range(args.rounds):
            shift = rnd % len(run_paths)
            order = run_paths[shift:] + run_paths[:shift]
            modes = MODES if rnd % 2 == 0 else tuple(reversed(MODES))
            for mode in modes:
                for path in order:
                    done += 1
                    log(f"[{done}/{total}] round {rnd + 1} -M {mode} {path} ({args.duration}s)")
                    entry = run_pgbench(args, active[path], mode, args.duration)
                    entry["round"] = rnd + 1
                    samples.setdefault((mode, path), []).append(entry)
                    if "tps" in entry:
                        log(f"    tps = {entry['tps']:,.0f}")
                    else:
                        log(f"    FAILED: {entry['error']}")

        audit_lines = None
        sqlward = active.get("sqlward")
        if sqlward is not None:
            audit_live = count_lines(sqlward.extra["audit"])
            services.stop(sqlward)  # graceful stop flushes any buffered audit events
            audit_lines = count_lines(sqlward.extra["audit"])
            if audit_live != audit_lines:
                notes.append(f"audit file had {audit_live} lines while running, {audit_lines} after stop")

        table = summarise(samples, args.paths)
        settings = {
            "duration": args.duration, "clients": args.clients,
            "jobs": max(1, min(args.jobs, args.clients)), "rounds": args.rounds,
            "warmup": args.warmup, "scale": args.scale, "sslmode": "disable",
        }

        print()
        print(
            f"pgbench -S -n -c {settings['clients']} -j {settings['jobs']} -T {args.duration}, "
            f"{args.rounds} round(s){', median (min–max)' if args.rounds > 1 else ''}; "
            f"{machine['nproc']} cores, {machine['cpu_model']}, {machine['postgres']}"
        )
        print()
        print(render_text(table, args.paths, args.rounds))
        print()
        if "sqlward" in args.paths:
            if audit_lines is not None:
                print(f"sqlward audit file: {audit_lines} lines")
            else:
                print("sqlward audit file: (gateway did not run)")
        for note in notes:
            if not any(note.startswith(f"{p}: not benchmarked") for p in startup_errors):
                print(f"note: {note}")
        for path, err in startup_errors.items():
            print(f"note: {path} not benchmarked: {err}")
        for mode in MODES:
            for path in args.paths:
                for err in table[mode]["tps"][path]["errors"]:
                    print(f"note: -M {mode} {path} failed: {err}")
        if args.markdown:
            print()
            print(render_markdown(table, args.paths, machine, settings))

        if args.json:
            doc = {
                "machine": machine,
                "settings": settings,
                "paths": args.paths,
                "results": table,
                "runs": [e for runs in samples.values() for e in runs],
                "audit_lines": audit_lines,
                "notes": notes,
                "startup_errors": startup_errors,
            }
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2) + "\n")
            log(f"wrote {args.json}")

        any_failed = bool(startup_errors) or any(
            table[m]["tps"][p]["errors"] for m in MODES for p in args.paths
        )
        return 1 if any_failed else 0
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; stopping services")
        return 130
    finally:
        # Ignore further Ctrl-C while cleaning up so nothing is left running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        services.stop_all()
        if args.keep_tmp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
