"""Compare pgbench -S throughput: direct PostgreSQL, pgbouncer, a bare trio relay, sqlward.

    python bench/pg_compare.py [--duration 15] [--clients 4] [--rounds 1]
                               [--only direct,pgbouncer,relay,sqlward]
                               [--json FILE] [--markdown]

(or ``python -m bench.pg_compare ...`` from the repository root). In one run it:
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
What is not specific to PostgreSQL (processes, gateway, report) is in bench/harness.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

if __package__:  # python -m bench.pg_compare
    from . import harness
else:  # python bench/pg_compare.py: this file's folder is first on sys.path
    import harness

SPEC = harness.Spec(
    metric="tps",
    unit="TPS",
    paths=("direct", "pgbouncer", "relay", "sqlward"),
    modes=("simple", "prepared"),
    ratios=(
        ("sqlward/relay", "sqlward", "relay"),
        ("sqlward/direct", "sqlward", "direct"),
        ("sqlward/pgbouncer", "sqlward", "pgbouncer"),
        ("relay/direct", "relay", "direct"),
    ),
    mode_option="-M {mode}",
)
PATHS = SPEC.paths

BENCH_DB = harness.BENCH_DB

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
# What else each run records from pgbench's output (harness.scrape).
FIELDS: list[harness.Field] = [
    ("latency_ms", re.compile(r"^latency average = ([0-9.]+) ms", re.M), 1, float),
    ("transactions", re.compile(r"^number of transactions actually processed: (\d+)", re.M), 1, int),
    ("failed_transactions", re.compile(r"^number of failed transactions: (\d+)", re.M), 1, int),
]

# Connection variables that must not leak from the caller's environment into
# pgbench/psql; every connection parameter is given explicitly.
_PG_ENV_DROP = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD",
    "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE",
    "PGREQUIRESSL", "PGTARGETSESSIONATTRS",
)

log = harness.logger("pg_compare")


def pg_env(password: str | None = None) -> dict[str, str]:
    env = harness.environ_without(_PG_ENV_DROP)
    env["PGSSLMODE"] = "disable"
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def smoke_query(svc: harness.Service) -> None:
    """One ``select 1`` through the path, so a broken path fails fast and clearly."""
    cmd = [
        "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
        "-h", svc.host, "-p", str(svc.port), "-U", svc.user, "-d", svc.dbname,
        "-c", "select 1",
    ]
    harness.check_select_1(svc, cmd, pg_env(svc.password), "psql")


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
        raise harness.BenchError(f"psql -d {dbname} -c {sql!r} failed:\n{harness.tail(res.stderr)}")
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
        raise harness.BenchError(f"pgbench -i failed:\n{harness.tail(res.stderr)}")


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


def start_pgbouncer(args: argparse.Namespace, services: harness.Services, binary: str) -> harness.Service:
    log("starting pgbouncer")
    port = harness.free_port()
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
        "pgbouncer", argv, harness.LOCALHOST, port, stop_signal=signal.SIGTERM,
        user=args.pg_user, dbname=BENCH_DB,
    )
    harness.wait_for_port(svc, args.start_timeout)
    smoke_query(svc)
    return svc


def start_relay(args: argparse.Namespace, services: harness.Services) -> harness.Service:
    svc = harness.launch_relay(
        services, args.pg_host, args.pg_port, timeout=args.start_timeout, user=args.pg_user, dbname=BENCH_DB
    )
    smoke_query(svc)
    return svc


def start_sqlward(args: argparse.Namespace, services: harness.Services) -> harness.Service:
    dsn = f"postgresql://{args.pg_user}@{args.pg_host}:{args.pg_port}/{BENCH_DB}?sslmode=disable"
    svc = harness.launch_bench_gateway(services, "postgres", dsn, timeout=args.gateway_timeout)
    smoke_query(svc)
    return svc


def direct_service(args: argparse.Namespace) -> harness.Service:
    return harness.external("direct", args.pg_host, args.pg_port, user=args.pg_user, dbname=BENCH_DB)


# --------------------------------------------------------------------------- #
# Running pgbench


def run_pgbench(args: argparse.Namespace, svc: harness.Service, mode: str, duration: int) -> dict[str, Any]:
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
    entry = harness.scrape(harness.run_entry(svc, mode, started, res.returncode, " ".join(cmd)), out, FIELDS)
    tps = TPS_RE.search(out)
    return harness.settle(
        entry, "tps", float(tps.group(1)) if tps else None, svc,
        tool="pgbench", line="tps", detail=harness.tail(res.stderr or res.stdout),
    )


# --------------------------------------------------------------------------- #
# Main


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    try:
        pg = f"PostgreSQL {psql_admin(args, 'postgres', 'show server_version').split()[0]}"
    except harness.BenchError:
        pg = "PostgreSQL (unknown)"
    pgb = find_pgbouncer()
    return harness.machine_info({
        "postgres": pg,
        "pgbench": harness.tool_version(["pgbench", "--version"]),
        "pgbouncer": (harness.tool_version([pgb, "--version"]) or None) if pgb else None,
    })


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = harness.comparison_parser("pgbench -S: direct vs pgbouncer vs bare trio relay vs sqlward", "pgbench")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    harness.add_run_options(p, PATHS, "pgbench")
    p.add_argument("--scale", type=int, default=1, help="pgbench -i scale when initialising (default 1)")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--pgbouncer-user", default="postgres", help="user pgbouncer switches to when run as root")
    harness.add_service_options(p, "pgbouncer/relay")
    args = p.parse_args(argv)
    harness.check_run_options(p, args, PATHS, ("duration", "clients", "jobs", "rounds"))
    return args


def measure(args: argparse.Namespace, services: harness.Services) -> int:
    prepare_database(args)
    machine = machine_info(args)
    run = harness.Comparison(SPEC, log, machine, machine["postgres"])

    def pgbouncer() -> harness.Service | None:
        binary = find_pgbouncer()
        if binary is None:
            run.note("pgbouncer: binary not found (bench/setup could not install it), column skipped")
            return None
        return start_pgbouncer(args, services, binary)

    run_paths = run.start(args.paths, {
        "direct": lambda: direct_service(args),
        "pgbouncer": pgbouncer,
        "relay": lambda: start_relay(args, services),
        "sqlward": lambda: start_sqlward(args, services),
    })
    if args.warmup > 0 and "direct" in run_paths:
        log(f"warm-up: {args.warmup}s direct")
        run_pgbench(args, run.active["direct"], "simple", args.warmup)
    run.run_rounds(run_paths, args.rounds, args.duration, lambda svc, mode, d: run_pgbench(args, svc, mode, d))
    run.stop_gateway()

    settings = {
        "duration": args.duration, "clients": args.clients,
        "jobs": max(1, min(args.jobs, args.clients)), "rounds": args.rounds,
        "warmup": args.warmup, "scale": args.scale, "sslmode": "disable",
    }
    c, j = settings["clients"], settings["jobs"]
    return run.report(
        args, settings, f"pgbench -S -n -c {c} -j {j} -T {args.duration}", f"pgbench -S -c {c} -j {j} -T {args.duration} -n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = ["psql", "pgbench"] + (["pgbouncer"] if "pgbouncer" in args.paths else [])
    missing = [t for t in wanted if (find_pgbouncer() if t == "pgbouncer" else shutil.which(t)) is None]
    if missing:
        harness.install_tools(log, ", ".join(missing))
    for tool in ("psql", "pgbench"):
        if shutil.which(tool) is None:
            log(f"{tool} not found, and bench/setup did not install it")
            return 2
    return harness.run_guarded(
        lambda services: measure(args, services), log, tmp_prefix="sqlward-bench-", keep_tmp=args.keep_tmp
    )


if __name__ == "__main__":
    sys.exit(main())
