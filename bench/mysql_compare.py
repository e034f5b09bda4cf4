"""Compare sysbench oltp_point_select throughput: direct MariaDB/MySQL, a bare trio relay, sqlward.

    python bench/mysql_compare.py [--duration 15] [--threads 4] [--rounds 1]
                                  [--only direct,relay,sqlward]
                                  [--json FILE] [--markdown]

(or ``python -m bench.mysql_compare ...`` from the repository root). In one run it:
  1. creates database ``sqlward_bench`` and the user ``sqlward_bench`` (at
     ``127.0.0.1`` and ``localhost``, mysql_native_password, all privileges on
     ``sqlward_bench``) if missing, and fills it once with
     ``sysbench oltp_point_select --tables=1 --table-size=10000 prepare``
     (only when ``sbtest1`` is missing or has another number of rows);
  2. starts the bare relay (bench/relay.py) on a free port;
  3. starts sqlward (``python -m sqlward.gateway serve --config FILE``) with a mysql
     listener, the audit file on and the ``no-drop`` rule loaded;
  4. runs ``sysbench oltp_point_select --threads=T --time=D`` with
     ``--db-ps-mode=disable`` (COM_QUERY, literal in the text) and
     ``--db-ps-mode=auto`` (COM_STMT_PREPARE once, then COM_STMT_EXECUTE with
     binary rows) against each path, rotating the path order every round;
  5. prints QPS per (mode, path) and the ratios sqlward/relay, sqlward/direct
     and relay/direct, plus the audit file's line count.

Direct and relay log in as ``sqlward_bench`` (mysql_native_password), the same
upstream account sqlward uses; sqlward is reached as identity ``bench``. Every
client runs with TLS off (``--mysql-ssl=off``, sslmode=disable upstream), so all
paths carry the same plain bytes.

Every process it starts is stopped on exit, Ctrl-C or failure. What is not
specific to MySQL (processes, gateway, report) is in bench/harness.py.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from typing import Any

if __package__:  # python -m bench.mysql_compare
    from . import harness
else:  # python bench/mysql_compare.py: this file's folder is first on sys.path
    import harness

SPEC = harness.Spec(
    metric="qps",
    unit="QPS",
    paths=("direct", "relay", "sqlward"),
    modes=("disable", "auto"),  # sysbench --db-ps-mode
    ratios=(
        ("sqlward/relay", "sqlward", "relay"),
        ("sqlward/direct", "sqlward", "direct"),
        ("relay/direct", "relay", "direct"),
    ),
    mode_option="--db-ps-mode={mode}",
    mode_labels={"disable": "ps off (--db-ps-mode=disable)", "auto": "ps on (--db-ps-mode=auto)"},
    flags={"ps_emulated": (" [emulated PS]", " (emulated PS)")},
)
PATHS = SPEC.paths

BENCH_DB = harness.BENCH_DB
BENCH_USER = "sqlward_bench"
BENCH_USER_HOSTS = ("127.0.0.1", "localhost")
BENCH_TABLE = "sbtest1"

SYSBENCH_TEST = "oltp_point_select"

# sysbench 1.0 "SQL statistics" section.
QPS_RE = re.compile(r"^\s*queries:\s+(\d+)\s+\(([0-9.]+) per sec\.\)", re.M)
TPS_RE = re.compile(r"^\s*transactions:\s+(\d+)\s+\(([0-9.]+) per sec\.\)", re.M)
LAT_PCT_RE = re.compile(r"^\s*(\d+)th percentile:\s+([0-9.]+)", re.M)
# sysbench silently falls back to client-side emulation when COM_STMT_PREPARE
# answers ER_UNSUPPORTED_PS; then `--db-ps-mode=auto` would not measure the
# binary protocol at all, so it is flagged.
EMULATION_RE = re.compile(r"using emulation", re.I)
# What each run records from sysbench's output (harness.scrape), before the percentile.
FIELDS: list[harness.Field] = [
    ("transactions", TPS_RE, 1, int),
    ("tps", TPS_RE, 2, float),
    ("queries", QPS_RE, 1, int),
    ("ignored_errors", re.compile(r"^\s*ignored errors:\s+(\d+)", re.M), 1, int),
    ("reconnects", re.compile(r"^\s*reconnects:\s+(\d+)", re.M), 1, int),
    ("latency_avg_ms", re.compile(r"^\s*avg:\s+([0-9.]+)", re.M), 1, float),
]

# Connection variables that must not leak from the caller's environment into
# the mariadb CLI (libmariadb and the client read some of them); every
# connection parameter is given explicitly.
_MY_ENV_DROP = (
    "MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_UNIX_PORT", "MYSQL_PWD",
    "MYSQL_GROUP_SUFFIX", "MYSQL_TEST_LOGIN_FILE", "MYSQL_HOME",
    "MARIADB_HOST", "MARIADB_TCP_PORT", "MARIADB_UNIX_PORT", "MARIADB_PWD",
    "MARIADB_GROUP_SUFFIX", "MARIADB_HOME", "MYSQL_DEBUG", "MARIADB_DEBUG",
)

log = harness.logger("mysql_compare")


def my_env(password: str | None = None) -> dict[str, str]:
    env = harness.environ_without(_MY_ENV_DROP)
    if password:
        env["MYSQL_PWD"] = password  # keeps it off the mariadb command line
    return env


def sql_str(value: str) -> str:
    """A single-quoted SQL string literal (MariaDB, default sql_mode)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def find_mariadb() -> str | None:
    # The MariaDB CLI specifically: its options (--skip-ssl) differ from MySQL 8's client.
    return shutil.which("mariadb")


# --------------------------------------------------------------------------- #
# The mariadb CLI


def mariadb_cmd(
    args: argparse.Namespace, host: str, port: int, user: str, dbname: str | None, sql: str
) -> list[str]:
    cmd = [
        args.mariadb, "--no-defaults", "--protocol=TCP", "--skip-ssl",
        "--batch", "--skip-column-names", "--connect-timeout=10",
        "-h", host, "-P", str(port), "-u", user,
    ]
    if dbname is not None:
        cmd += ["-D", dbname]
    return cmd + ["-e", sql]


def mariadb_admin(args: argparse.Namespace, sql: str, dbname: str | None = None) -> str:
    cmd = mariadb_cmd(args, args.mysql_host, args.mysql_port, args.mysql_user, dbname, sql)
    try:
        res = subprocess.run(
            cmd, env=my_env(args.mysql_password), capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        raise harness.BenchError(f"mariadb -e {sql!r} timed out") from None
    if res.returncode != 0:
        raise harness.BenchError(
            f"mariadb -u {args.mysql_user} -e {sql!r} on {args.mysql_host}:{args.mysql_port} "
            f"failed:\n{harness.tail(res.stderr or res.stdout)}"
        )
    return res.stdout.strip()


def smoke_query(args: argparse.Namespace, svc: harness.Service) -> None:
    """One ``select 1`` through the path, so a broken path fails fast and clearly."""
    cmd = mariadb_cmd(args, svc.host, svc.port, svc.user, svc.dbname, "select 1")
    harness.check_select_1(svc, cmd, my_env(svc.password), "mariadb")


# --------------------------------------------------------------------------- #
# Database preparation


def sysbench_conn_args(svc: harness.Service) -> list[str]:
    return [
        "--db-driver=mysql",
        f"--mysql-host={svc.host}",  # never "localhost": that would be the unix socket
        f"--mysql-port={svc.port}",
        f"--mysql-user={svc.user}",
        f"--mysql-password={svc.password or ''}",
        f"--mysql-db={svc.dbname}",
        "--mysql-ssl=off",
    ]


def prepare_database(args: argparse.Namespace, direct: harness.Service) -> None:
    mariadb_admin(args, f"create database if not exists `{BENCH_DB}`")
    for host in BENCH_USER_HOSTS:
        account = f"{sql_str(BENCH_USER)}@{sql_str(host)}"
        exists = mariadb_admin(
            args,
            f"select count(*) from mysql.user where user = {sql_str(BENCH_USER)} "
            f"and host = {sql_str(host)}",
        )
        if exists == "0":
            log(f"creating user {BENCH_USER}@{host}")
            mariadb_admin(
                args,
                f"create user {account} identified via mysql_native_password "
                f"using password({sql_str(args.bench_password)})",
            )
        mariadb_admin(args, f"grant all privileges on `{BENCH_DB}`.* to {account}")

    try:
        smoke_query(args, direct)
    except harness.BenchError as exc:
        # Most likely the account existed already, with another password.
        raise harness.BenchError(
            f"{exc}\n  ({BENCH_USER} exists with another password? pass it with "
            f"--bench-password, or drop the user so that it is created again)"
        ) from None

    rows = mariadb_admin(
        args,
        f"select table_rows from information_schema.tables where table_schema = "
        f"{sql_str(BENCH_DB)} and table_name = {sql_str(BENCH_TABLE)}",
    )
    if rows:
        # table_rows is an estimate for InnoDB; count exactly before re-doing anything.
        count = int(mariadb_admin(args, f"select count(*) from `{BENCH_DB}`.`{BENCH_TABLE}`"))
        if count == args.table_size:
            return
        log(f"{BENCH_DB}.{BENCH_TABLE} has {count} rows, wants {args.table_size}: recreating")
        mariadb_admin(args, f"drop table `{BENCH_DB}`.`{BENCH_TABLE}`")
    log(f"initialising {BENCH_DB} with sysbench {SYSBENCH_TEST} --tables=1 "
        f"--table-size={args.table_size} prepare")
    try:
        res = subprocess.run(
            ["sysbench", SYSBENCH_TEST, "--tables=1", f"--table-size={args.table_size}",
             *sysbench_conn_args(direct), "prepare"],
            env=my_env(), capture_output=True, text=True, timeout=600,
        )
    except subprocess.TimeoutExpired:
        raise harness.BenchError("sysbench prepare did not finish within 600 s") from None
    if res.returncode != 0:
        raise harness.BenchError(f"sysbench prepare failed:\n{harness.tail(res.stderr or res.stdout)}")


# --------------------------------------------------------------------------- #
# Starting the paths


def direct_service(args: argparse.Namespace) -> harness.Service:
    return harness.external(
        "direct", args.mysql_host, args.mysql_port, user=BENCH_USER, dbname=BENCH_DB,
        password=args.bench_password,
    )


def start_relay(args: argparse.Namespace, services: harness.Services) -> harness.Service:
    svc = harness.launch_relay(
        services, args.mysql_host, args.mysql_port, timeout=args.start_timeout,
        user=BENCH_USER, dbname=BENCH_DB, password=args.bench_password,
    )
    smoke_query(args, svc)
    return svc


def start_sqlward(args: argparse.Namespace, services: harness.Services) -> harness.Service:
    dsn = f"mysql://{BENCH_USER}@{args.mysql_host}:{args.mysql_port}/{BENCH_DB}?sslmode=disable"
    svc = harness.launch_bench_gateway(
        services, "mysql", dsn, timeout=args.gateway_timeout, password=args.bench_password
    )
    smoke_query(args, svc)
    return svc


# --------------------------------------------------------------------------- #
# Running sysbench


def run_sysbench(args: argparse.Namespace, svc: harness.Service, mode: str, duration: int) -> dict[str, Any]:
    cmd = [
        "sysbench", SYSBENCH_TEST, "--tables=1", f"--table-size={args.table_size}",
        f"--threads={args.threads}", f"--time={duration}", "--events=0",
        f"--db-ps-mode={mode}", *sysbench_conn_args(svc),
        # 4 = info: the level at which sysbench reports falling back to PS emulation.
        "--verbosity=4", "run",
    ]
    shown = " ".join(
        "--mysql-password=***" if c.startswith("--mysql-password=") else c for c in cmd
    )
    started = time.time()
    try:
        res = subprocess.run(
            cmd, env=my_env(), capture_output=True, text=True, timeout=duration + 120,
        )
        out, rc = res.stdout + "\n" + res.stderr, res.returncode
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + "\n" + _text(exc.stderr)
        out += "\n(sysbench did not finish within its time limit and was killed)"
        rc = -1
    entry = harness.scrape(harness.run_entry(svc, mode, started, rc, shown), out, FIELDS)
    if pct := LAT_PCT_RE.search(out):
        entry[f"latency_p{pct.group(1)}_ms"] = float(pct.group(2))
    if mode == "auto" and EMULATION_RE.search(out):
        entry["ps_emulated"] = True
    queries = QPS_RE.search(out)
    return harness.settle(
        entry, "qps", float(queries.group(2)) if queries else None, svc,
        tool="sysbench", line="queries", detail=failure_text(out),
    )


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def failure_text(out: str) -> str:
    # sysbench prints its FATAL/ALERT lines among the normal output; show those
    # when there are any, else the end of the output.
    # (each thread repeats the same lines: keep one of each).
    flagged = list(dict.fromkeys(ln for ln in out.splitlines() if "FATAL" in ln or "ALERT" in ln))
    return harness.tail("\n".join(flagged) if flagged else out)


# --------------------------------------------------------------------------- #
# Main


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    try:
        version = mariadb_admin(args, "select version()")
    except harness.BenchError:
        version = ""
    if not version:
        server = "MySQL/MariaDB (unknown)"
    elif "mariadb" in version.lower():
        server = f"MariaDB {version.split('-')[0]}"
    else:
        server = f"MySQL {version.split('-')[0]}"
    try:
        import trio

        trio_version = trio.__version__
    except ImportError:
        trio_version = None
    return harness.machine_info(
        {"server": server, "server_version": version or None, "sysbench": harness.tool_version(["sysbench", "--version"])},
        {"trio": trio_version},
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = harness.comparison_parser("sysbench oltp_point_select: direct MariaDB vs bare trio relay vs sqlward", "sysbench")
    p.add_argument("--threads", type=int, default=4, help="sysbench --threads (default 4)")
    harness.add_run_options(p, PATHS, "sysbench")
    p.add_argument("--table-size", type=int, default=10000, help="sysbench --table-size when preparing (default 10000)")
    p.add_argument("--mysql-host", default="127.0.0.1")
    p.add_argument("--mysql-port", type=int, default=3306)
    p.add_argument("--mysql-user", default="root", help="admin account that creates the database and user (default root)")
    p.add_argument("--mysql-password", default="", help="its password (default empty)")
    p.add_argument("--bench-password", default="sqlward-bench",
                   help=f"password of the {BENCH_USER} account when it is created (default sqlward-bench)")
    harness.add_service_options(p, "the relay")
    args = p.parse_args(argv)
    harness.check_run_options(p, args, PATHS, ("duration", "threads", "rounds", "table_size"))
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if not args.bench_password:
        p.error("--bench-password must not be empty")
    return args


def after_run(entry: dict[str, Any]) -> None:
    if entry.get("ps_emulated"):
        log("    sysbench fell back to client-side PS emulation")
    if entry.get("ignored_errors") or entry.get("reconnects"):
        log(f"    ignored errors: {entry.get('ignored_errors', 0)}, "
            f"reconnects: {entry.get('reconnects', 0)}")


def measure(args: argparse.Namespace, services: harness.Services) -> int:
    direct = direct_service(args)
    prepare_database(args, direct)
    machine = machine_info(args)
    run = harness.Comparison(SPEC, log, machine, machine["server"])
    run_paths = run.start(args.paths, {
        "direct": lambda: direct,
        "relay": lambda: start_relay(args, services),
        "sqlward": lambda: start_sqlward(args, services),
    })
    if args.warmup > 0:
        log(f"warm-up: {args.warmup}s direct")
        run_sysbench(args, direct, "disable", args.warmup)
    samples = run.run_rounds(
        run_paths, args.rounds, args.duration, lambda svc, mode, d: run_sysbench(args, svc, mode, d), after_run
    )
    run.stop_gateway()

    for (mode, path), runs in samples.items():
        if any(r.get("ps_emulated") for r in runs):
            run.notes.append(
                f"--db-ps-mode={mode} {path}: COM_STMT_PREPARE was refused as unsupported, "
                "sysbench fell back to client-side emulation (text protocol)"
            )
        ign = sum(r.get("ignored_errors", 0) for r in runs)
        rec = sum(r.get("reconnects", 0) for r in runs)
        if ign or rec:
            run.notes.append(f"--db-ps-mode={mode} {path}: {ign} ignored errors, {rec} reconnects")

    settings = {
        "duration": args.duration, "threads": args.threads, "rounds": args.rounds,
        "warmup": args.warmup, "tables": 1, "table_size": args.table_size,
        "test": SYSBENCH_TEST, "ssl": "off",
    }
    return run.report(args, settings, f"sysbench {SYSBENCH_TEST} --threads={args.threads} --time={args.duration}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if find_mariadb() is None or shutil.which("sysbench") is None:
        harness.install_tools(log, "mariadb or sysbench")
    args.mariadb = find_mariadb()
    if args.mariadb is None:
        log("mariadb not found, and bench/setup did not install it")
        return 2
    if shutil.which("sysbench") is None:
        log("sysbench not found, and bench/setup did not install it")
        return 2
    return harness.run_guarded(
        lambda services: measure(args, services), log, tmp_prefix="sqlward-mysql-bench-", keep_tmp=args.keep_tmp
    )


if __name__ == "__main__":
    sys.exit(main())
