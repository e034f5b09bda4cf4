"""Compare sysbench oltp_point_select throughput: direct MariaDB/MySQL, a bare trio relay, sqlward.

    python bench/mysql_compare.py [--duration 15] [--threads 4] [--rounds 1]
                                  [--only direct,relay,sqlward]
                                  [--json FILE] [--markdown]

In one run it:
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

Every process it starts is stopped on exit, Ctrl-C or failure. The process
management and some helpers are shared with bench/pg_compare.py.
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_BENCH_DIR = Path(__file__).resolve().parent
if str(_BENCH_DIR) not in sys.path:  # also works as `python -m bench.mysql_compare`
    sys.path.insert(0, str(_BENCH_DIR))

from pg_compare import (  # noqa: E402  (bench/ is not a package)
    BenchError,
    Service,
    Services,
    count_lines,
    fmt_ratio,
    free_port,
    tail,
    wait_for_port,
)

REPO_ROOT = _BENCH_DIR.parent
RELAY_SCRIPT = REPO_ROOT / "bench" / "relay.py"

PATHS = ("direct", "relay", "sqlward")
MODES = ("disable", "auto")  # sysbench --db-ps-mode
MODE_LABELS = {"disable": "ps off", "auto": "ps on"}
RATIOS = (
    ("sqlward/relay", "sqlward", "relay"),
    ("sqlward/direct", "sqlward", "direct"),
    ("relay/direct", "relay", "direct"),
)

BENCH_DB = "sqlward_bench"
BENCH_USER = "sqlward_bench"
BENCH_USER_HOSTS = ("127.0.0.1", "localhost")
BENCH_TABLE = "sbtest1"
GATEWAY_USER = "bench"
GATEWAY_DB = "bench"
GATEWAY_SECRET = "bench-secret"

SYSBENCH_TEST = "oltp_point_select"

# sysbench 1.0 "SQL statistics" section.
QPS_RE = re.compile(r"^\s*queries:\s+(\d+)\s+\(([0-9.]+) per sec\.\)", re.M)
TPS_RE = re.compile(r"^\s*transactions:\s+(\d+)\s+\(([0-9.]+) per sec\.\)", re.M)
IGNORED_RE = re.compile(r"^\s*ignored errors:\s+(\d+)", re.M)
RECONNECTS_RE = re.compile(r"^\s*reconnects:\s+(\d+)", re.M)
LAT_AVG_RE = re.compile(r"^\s*avg:\s+([0-9.]+)", re.M)
LAT_PCT_RE = re.compile(r"^\s*(\d+)th percentile:\s+([0-9.]+)", re.M)
# sysbench silently falls back to client-side emulation when COM_STMT_PREPARE
# answers ER_UNSUPPORTED_PS; then `--db-ps-mode=auto` would not measure the
# binary protocol at all, so it is flagged.
EMULATION_RE = re.compile(r"using emulation", re.I)

# Connection variables that must not leak from the caller's environment into
# the mariadb CLI (libmariadb and the client read some of them); every
# connection parameter is given explicitly.
_MY_ENV_DROP = (
    "MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_UNIX_PORT", "MYSQL_PWD",
    "MYSQL_GROUP_SUFFIX", "MYSQL_TEST_LOGIN_FILE", "MYSQL_HOME",
    "MARIADB_HOST", "MARIADB_TCP_PORT", "MARIADB_UNIX_PORT", "MARIADB_PWD",
    "MARIADB_GROUP_SUFFIX", "MARIADB_HOME", "MYSQL_DEBUG", "MARIADB_DEBUG",
)


def log(msg: str) -> None:
    print(f"[mysql_compare] {msg}", file=sys.stderr, flush=True)


def my_env(password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _MY_ENV_DROP}
    if password:
        env["MYSQL_PWD"] = password  # keeps it off the mariadb command line
    return env


def sql_str(value: str) -> str:
    """A single-quoted SQL string literal (MariaDB, default sql_mode)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def toml_str(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value)


def stop_all(services: Services) -> None:
    # Services.stop_all, but logging with this script's prefix.
    for svc in reversed(services.items):
        try:
            svc.stop()
        except Exception as exc:  # keep stopping the others
            log(f"could not stop {svc.name} (pid {svc.proc.pid}): {exc}")


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
        raise BenchError(f"mariadb -e {sql!r} timed out") from None
    if res.returncode != 0:
        raise BenchError(
            f"mariadb -u {args.mysql_user} -e {sql!r} on {args.mysql_host}:{args.mysql_port} "
            f"failed:\n{tail(res.stderr or res.stdout)}"
        )
    return res.stdout.strip()


def smoke_query(args: argparse.Namespace, svc: Service) -> None:
    """One ``select 1`` through the path, so a broken path fails fast and clearly."""
    cmd = mariadb_cmd(args, svc.host, svc.port, svc.user, svc.dbname, "select 1")
    try:
        res = subprocess.run(
            cmd, env=my_env(svc.password), capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{svc.name}: `select 1` through {svc.host}:{svc.port} timed out; "
            f"last lines of its output:\n{tail(svc.log_text())}"
        ) from None
    if res.returncode != 0 or res.stdout.strip() != "1":
        msg = (
            f"{svc.name}: `select 1` through {svc.host}:{svc.port} as {svc.user} failed "
            f"(mariadb status {res.returncode}):\n{tail(res.stderr or res.stdout)}"
        )
        if svc.proc is not None:
            msg += f"\n  last lines of {svc.name}'s output:\n{tail(svc.log_text())}"
        raise BenchError(msg)


# --------------------------------------------------------------------------- #
# Database preparation


def sysbench_conn_args(svc: Service) -> list[str]:
    return [
        "--db-driver=mysql",
        f"--mysql-host={svc.host}",  # never "localhost": that would be the unix socket
        f"--mysql-port={svc.port}",
        f"--mysql-user={svc.user}",
        f"--mysql-password={svc.password or ''}",
        f"--mysql-db={svc.dbname}",
        "--mysql-ssl=off",
    ]


def prepare_database(args: argparse.Namespace, direct: Service) -> None:
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
    except BenchError as exc:
        # Most likely the account existed already, with another password.
        raise BenchError(
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
        raise BenchError("sysbench prepare did not finish within 600 s") from None
    if res.returncode != 0:
        raise BenchError(f"sysbench prepare failed:\n{tail(res.stderr or res.stdout)}")


# --------------------------------------------------------------------------- #
# Starting the paths


def direct_service(args: argparse.Namespace) -> Service:
    # Not a process of ours: a stand-in so every path is run the same way.
    return Service(
        "direct", args.mysql_host, args.mysql_port,
        proc=None,  # type: ignore[arg-type]
        log_path=Path(os.devnull), user=BENCH_USER, dbname=BENCH_DB,
        password=args.bench_password,
    )


def start_relay(args: argparse.Namespace, services: Services) -> Service:
    port = free_port()
    svc = services.spawn(
        "relay",
        [sys.executable, str(RELAY_SCRIPT), "--listen", f"127.0.0.1:{port}",
         "--upstream", f"{args.mysql_host}:{args.mysql_port}"],
        "127.0.0.1", port, user=BENCH_USER, dbname=BENCH_DB, password=args.bench_password,
    )
    wait_for_port(svc, args.start_timeout)
    smoke_query(args, svc)
    return svc


GATEWAY_CONFIG = """\
[gateway]
name = "bench"

[[listeners]]
protocol = "mysql"
listen = "127.0.0.1:{port}"

[[targets]]
name = "{target}"
protocol = "mysql"
environment = "development"
dsn = "mysql://{bench_user}@{my_host}:{my_port}/{db}?sslmode=disable"
password = {password}

[[identities]]
name = "{user}"
secret = "{secret}"

[audit]
file = {audit}

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
            port=port, target=GATEWAY_DB, bench_user=BENCH_USER, my_host=args.mysql_host,
            my_port=args.mysql_port, db=BENCH_DB, password=toml_str(args.bench_password),
            user=GATEWAY_USER, secret=GATEWAY_SECRET, audit=toml_str(str(audit)),
        )
    )
    config.chmod(0o600)  # it holds the upstream password
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
    smoke_query(args, svc)
    return svc


# --------------------------------------------------------------------------- #
# Running sysbench


def run_sysbench(args: argparse.Namespace, svc: Service, mode: str, duration: int) -> dict[str, Any]:
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
    m = QPS_RE.search(out)
    entry: dict[str, Any] = {
        "mode": mode, "path": svc.name, "started": started,
        "returncode": rc, "command": shown,
    }
    if t := TPS_RE.search(out):
        entry["transactions"] = int(t.group(1))
        entry["tps"] = float(t.group(2))
    if m:
        entry["queries"] = int(m.group(1))
    if ign := IGNORED_RE.search(out):
        entry["ignored_errors"] = int(ign.group(1))
    if rec := RECONNECTS_RE.search(out):
        entry["reconnects"] = int(rec.group(1))
    if lat := LAT_AVG_RE.search(out):
        entry["latency_avg_ms"] = float(lat.group(1))
    if pct := LAT_PCT_RE.search(out):
        entry[f"latency_p{pct.group(1)}_ms"] = float(pct.group(2))
    if mode == "auto" and EMULATION_RE.search(out):
        entry["ps_emulated"] = True
    if m and rc == 0:
        entry["qps"] = float(m.group(2))
    else:
        entry["error"] = (
            f"sysbench exited with status {rc}"
            + ("" if m else " and printed no queries line")
            + f":\n{failure_text(out)}"
        )
        if svc.proc is not None:
            entry["error"] += f"\n  last lines of {svc.name}'s output:\n{tail(svc.log_text())}"
    return entry


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def failure_text(out: str) -> str:
    # sysbench prints its FATAL/ALERT lines among the normal output; show those
    # when there are any, else the end of the output.
    # (each thread repeats the same lines: keep one of each).
    flagged = list(dict.fromkeys(ln for ln in out.splitlines() if "FATAL" in ln or "ALERT" in ln))
    return tail("\n".join(flagged) if flagged else out)


# --------------------------------------------------------------------------- #
# Reporting


def fmt_qps(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "—"


def summarise(samples: dict[tuple[str, str], list[dict[str, Any]]], paths: list[str]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        row: dict[str, Any] = {}
        for path in paths:
            runs = samples.get((mode, path), [])
            qps = [r["qps"] for r in runs if "qps" in r]
            row[path] = {
                "qps": statistics.median(qps) if qps else None,
                "min": min(qps) if qps else None,
                "max": max(qps) if qps else None,
                "samples": qps,
                "errors": [r["error"] for r in runs if "error" in r],
                "ps_emulated": any(r.get("ps_emulated") for r in runs),
            }
        # Ratios are taken within each round, then the median over rounds (as in
        # pg_compare); with one round it is simply num/den.
        by_round: dict[str, dict[int, float]] = {}
        for path in paths:
            by_round[path] = {
                r["round"]: r["qps"] for r in samples.get((mode, path), []) if "qps" in r
            }
        ratios = {}
        for label, num, den in RATIOS:
            a, b = by_round.get(num, {}), by_round.get(den, {})
            per_round = [a[r] / b[r] for r in sorted(a.keys() & b.keys()) if b[r]]
            ratios[label] = statistics.median(per_round) if per_round else None
        table[mode] = {"qps": row, "ratios": ratios}
    return table


def render_text(table: dict[str, Any], paths: list[str], rounds: int) -> str:
    head = ["mode"] + [f"{p} QPS" for p in paths] + [label for label, *_ in RATIOS]
    rows = [head]
    for mode in MODES:
        row = [f"{MODE_LABELS[mode]} (--db-ps-mode={mode})"]
        for p in paths:
            cell = table[mode]["qps"][p]
            txt = fmt_qps(cell["qps"])
            if cell["qps"] is None and cell["errors"]:
                txt = "FAILED"
            elif rounds > 1 and cell["qps"] is not None:
                txt += f" ({fmt_qps(cell['min'])}–{fmt_qps(cell['max'])})"
            if cell["ps_emulated"]:
                txt += " [emulated PS]"
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
        f"Machine: {machine['nproc']} cores, {machine['cpu_model']}, {machine['server']}; "
        f"sysbench {SYSBENCH_TEST} --threads={settings['threads']} --time={settings['duration']}, "
        f"{settings['rounds']} round(s), median QPS; ratios are medians of per-round ratios.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for mode in MODES:
        row = [f"`--db-ps-mode={mode}`"]
        for p in cols:
            if p not in paths:
                row.append("pending" if p == "sqlward" else "not run")
                continue
            cell = table[mode]["qps"][p]
            txt = fmt_qps(cell["qps"]) if cell["qps"] is not None else "failed"
            if cell["ps_emulated"]:
                txt += " (emulated PS)"
            row.append(txt)
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
        version = mariadb_admin(args, "select version()")
    except BenchError:
        version = ""
    if not version:
        server = "MySQL/MariaDB (unknown)"
    elif "mariadb" in version.lower():
        server = f"MariaDB {version.split('-')[0]}"
    else:
        server = f"MySQL {version.split('-')[0]}"
    sysbench = subprocess.run(["sysbench", "--version"], capture_output=True, text=True).stdout.strip()
    try:
        import trio

        trio_version = trio.__version__
    except ImportError:
        trio_version = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "server": server,
        "server_version": version or None,
        "sysbench": sysbench,
        "python": platform.python_version(),
        "trio": trio_version,
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------------- #
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="sysbench oltp_point_select: direct MariaDB vs bare trio relay vs sqlward",
    )
    p.add_argument("--duration", type=int, default=15, help="seconds per sysbench run (default 15)")
    p.add_argument("--threads", type=int, default=4, help="sysbench --threads (default 4)")
    p.add_argument("--rounds", type=int, default=1, help="rounds over all paths and modes (default 1); median is reported")
    p.add_argument("--only", default=",".join(PATHS), help=f"comma list of paths among {','.join(PATHS)}")
    p.add_argument("--json", metavar="FILE", help="write all figures and samples as JSON")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table for docs/performance.md")
    p.add_argument("--warmup", type=int, default=2, help="seconds of direct sysbench before measuring (0 = none)")
    p.add_argument("--table-size", type=int, default=10000, help="sysbench --table-size when preparing (default 10000)")
    p.add_argument("--mysql-host", default="127.0.0.1")
    p.add_argument("--mysql-port", type=int, default=3306)
    p.add_argument("--mysql-user", default="root", help="admin account that creates the database and user (default root)")
    p.add_argument("--mysql-password", default="", help="its password (default empty)")
    p.add_argument("--bench-password", default="sqlward-bench",
                   help=f"password of the {BENCH_USER} account when it is created (default sqlward-bench)")
    p.add_argument("--start-timeout", type=float, default=20.0, help="seconds to wait for the relay")
    p.add_argument("--gateway-timeout", type=float, default=30.0, help="seconds to wait for sqlward")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (config, logs, audit file)")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in PATHS]
    if unknown or not only:
        p.error(f"--only: unknown path(s) {unknown}; choose among {','.join(PATHS)}")
    args.paths = [x for x in PATHS if x in only]
    for name in ("duration", "threads", "rounds", "table_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if not args.bench_password:
        p.error("--bench-password must not be empty")
    return args


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.mariadb = find_mariadb()
    if args.mariadb is None:
        log("mariadb not found: install mariadb-client (scripts/setup does)")
        return 2
    if shutil.which("sysbench") is None:
        log("sysbench not found: install sysbench (scripts/setup does)")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with contextlib.suppress(AttributeError):
        signal.signal(signal.SIGHUP, _raise_interrupt)

    workdir = Path(tempfile.mkdtemp(prefix="sqlward-mysql-bench-"))
    services = Services(workdir)
    notes: list[str] = []
    startup_errors: dict[str, str] = {}
    try:
        direct = direct_service(args)
        prepare_database(args, direct)
        machine = machine_info(args)
        active: dict[str, Service] = {}
        for path in args.paths:
            try:
                if path == "direct":
                    active[path] = direct
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

        if args.warmup > 0:
            log(f"warm-up: {args.warmup}s direct")
            run_sysbench(args, direct, "disable", args.warmup)

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
                    log(f"[{done}/{total}] round {rnd + 1} --db-ps-mode={mode} {path} ({args.duration}s)")
                    entry = run_sysbench(args, active[path], mode, args.duration)
                    entry["round"] = rnd + 1
                    samples.setdefault((mode, path), []).append(entry)
                    if "qps" in entry:
                        log(f"    qps = {entry['qps']:,.0f}")
                    else:
                        log(f"    FAILED: {entry['error']}")
                    if entry.get("ps_emulated"):
                        log("    sysbench fell back to client-side PS emulation")
                    if entry.get("ignored_errors") or entry.get("reconnects"):
                        log(f"    ignored errors: {entry.get('ignored_errors', 0)}, "
                            f"reconnects: {entry.get('reconnects', 0)}")

        audit_lines = None
        sqlward = active.get("sqlward")
        if sqlward is not None:
            audit_live = count_lines(sqlward.extra["audit"])
            services.stop(sqlward)  # graceful stop flushes any buffered audit events
            audit_lines = count_lines(sqlward.extra["audit"])
            if audit_live != audit_lines:
                notes.append(f"audit file had {audit_live} lines while running, {audit_lines} after stop")

        for (mode, path), runs in samples.items():
            if any(r.get("ps_emulated") for r in runs):
                notes.append(
                    f"--db-ps-mode={mode} {path}: COM_STMT_PREPARE was refused as unsupported, "
                    "sysbench fell back to client-side emulation (text protocol)"
                )
            ign = sum(r.get("ignored_errors", 0) for r in runs)
            rec = sum(r.get("reconnects", 0) for r in runs)
            if ign or rec:
                notes.append(f"--db-ps-mode={mode} {path}: {ign} ignored errors, {rec} reconnects")

        table = summarise(samples, args.paths)
        settings = {
            "duration": args.duration, "threads": args.threads, "rounds": args.rounds,
            "warmup": args.warmup, "tables": 1, "table_size": args.table_size,
            "test": SYSBENCH_TEST, "ssl": "off",
        }

        print()
        print(
            f"sysbench {SYSBENCH_TEST} --threads={args.threads} --time={args.duration}, "
            f"{args.rounds} round(s){', median (min–max)' if args.rounds > 1 else ''}; "
            f"{machine['nproc']} cores, {machine['cpu_model']}, {machine['server']}"
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
                for err in table[mode]["qps"][path]["errors"]:
                    print(f"note: --db-ps-mode={mode} {path} failed: {err}")
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
            table[m]["qps"][p]["errors"] for m in MODES for p in args.paths
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
        stop_all(services)
        if args.keep_tmp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
