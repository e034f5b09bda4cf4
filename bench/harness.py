"""What the bench/ scripts share: processes, the gateway, timing, machine facts and the report.

* Processes: free ports, background services (relay, pgbouncer, the gateway) started in their own
  session and stopped on exit, failure, Ctrl-C, SIGTERM or SIGHUP (`run_guarded`), the bare relay
  (bench/relay.py) and the gateway (`python -m sqlward.gateway serve --config FILE`).
* Timing: `median`, `ratio`, `timed`.
* Machine facts: cores, CPU model, Python, kernel, plus what each script adds (server versions).
* The report of a throughput comparison (pg_compare, mysql_compare): per-round ratios and their
  median, the text table, the markdown table for docs/performance.md, the notes and the JSON file.

How the scripts import this module, with no `sys.path` edits: `bench/` is a package (it has an
`__init__.py`), and each script does

    if __package__:        # python -m bench.pg_compare   (run from the repository root)
        from . import harness
    else:                  # python bench/pg_compare.py
        import harness

Run as a file, Python puts the script's own folder (bench/) first on sys.path, so `harness` is
found as a sibling module; run with -m, the script is `bench.pg_compare` and the relative import
finds `bench.harness`. Tests import it as `bench.harness` (the repository root is on sys.path
under pytest). The gateway the scripts start is the installed sqlward (`pip install -e .`).

What stays in each script is what is specific to it: its server's client (psql, mariadb), the
database preparation, pgbouncer, the load tool's command line and what to read from its output,
the masking benchmark's tables and timings.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
RELAY_SCRIPT = REPO_ROOT / "bench" / "relay.py"
LOCALHOST = "127.0.0.1"

# The throughput comparisons' database on each server, and the identity and target clients use
# through the gateway.
BENCH_DB = "sqlward_bench"
GATEWAY_USER = "bench"
GATEWAY_DB = "bench"
GATEWAY_SECRET = "bench-secret"


class BenchError(RuntimeError):
    """A step failed; the message is meant for the user."""


def install_tools(log: Callable[[str], None], what: str) -> bool:
    """Run bench/setup (the benchmark tools, installed with apt when missing) because `what` is
    missing; True when it ran cleanly. The benchmarks install what they run themselves."""
    log(f"{what} not found: running bench/setup to install the benchmark tools")
    try:
        done = subprocess.run([str(REPO_ROOT / "bench" / "setup")], check=False)
    except OSError as exc:
        log(f"bench/setup could not run: {exc}")
        return False
    if done.returncode != 0:
        log(f"bench/setup failed (exit {done.returncode})")
    return done.returncode == 0


def logger(prefix: str) -> Callable[[str], None]:
    """A function printing `[prefix] message` lines to stderr (progress, never the results)."""

    def log(msg: str) -> None:
        print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)

    return log


def tail(text: str, lines: int = 15) -> str:
    rows = text.rstrip().splitlines()[-lines:]
    return "\n".join("    | " + r for r in rows) if rows else "    | (empty)"


def environ_without(names: Iterable[str]) -> dict[str, str]:
    """os.environ without `names` (connection variables that must not leak into a client)."""
    drop = set(names)
    return {k: v for k, v in os.environ.items() if k not in drop}


# --------------------------------------------------------------------------- #
# Timing


def median(values: Sequence[float]) -> float | None:
    """The median of `values`, None when there are none."""
    return statistics.median(values) if values else None


def ratio(num: float | None, den: float | None) -> float | None:
    """num/den, None when either is missing or den is 0."""
    if num is None or not den:
        return None
    return num / den


def timed(func: Callable[[], T]) -> tuple[T, float]:
    """`func()` and the seconds it took (perf_counter)."""
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


# --------------------------------------------------------------------------- #
# Background processes


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _child_setup() -> None:
    # Children get default SIGINT handling even if we were started with SIGINT
    # ignored (e.g. `cmd &` in a non-interactive shell), so that a Python child
    # (relay, gateway) can shut down cleanly on SIGINT and flush its audit file.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Service:
    """A path under test: a process of ours, or (proc None) a server we only connect to."""

    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None
    log_path: Path
    stop_signal: int = signal.SIGINT
    user: str = ""
    dbname: str = ""
    password: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def output_tail(self) -> str:
        """The end of this process's output for an error message ("" for an external server)."""
        if self.proc is None:
            return ""
        return f"\n  last lines of {self.name}'s output:\n{tail(self.log_text())}"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((self.stop_signal, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def external(name: str, host: str, port: int, **fields: Any) -> Service:
    """A server that is not a process of ours (direct): a stand-in so every path runs the same way."""
    return Service(name, host, port, proc=None, log_path=Path(os.devnull), **fields)


class Services:
    """Owns every background process of a run, in `workdir`; `stop_all` is idempotent."""

    def __init__(self, workdir: Path, log: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.log = log
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
        **fields: Any,
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
        svc = Service(name, host, port, proc, log_path, stop_signal=stop_signal, **fields)
        self.items.append(svc)
        return svc

    def stop_all(self) -> None:
        for svc in reversed(self.items):
            try:
                svc.stop()
            except Exception as exc:  # keep stopping the others
                pid = svc.proc.pid if svc.proc is not None else "-"
                self.log(f"could not stop {svc.name} (pid {pid}): {exc}")


def wait_for_port(svc: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rc = svc.proc.poll() if svc.proc is not None else None
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


def check_select_1(svc: Service, cmd: list[str], env: dict[str, str], client: str) -> None:
    """Run `cmd` (a client's one `select 1` through `svc`): a broken path fails fast and clearly."""
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{svc.name}: `select 1` through {svc.host}:{svc.port} timed out; "
            f"last lines of its output:\n{tail(svc.log_text())}"
        ) from None
    if res.returncode != 0 or res.stdout.strip() != "1":
        raise BenchError(
            f"{svc.name}: `select 1` through {svc.host}:{svc.port} as {svc.user} failed "
            f"({client} status {res.returncode}):\n{tail(res.stderr or res.stdout)}"
            f"{svc.output_tail()}"
        )


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def launch_relay(
    services: Services, upstream_host: str, upstream_port: int, *, timeout: float, **fields: Any
) -> Service:
    """Start the bare trio relay (bench/relay.py) on a free port, in front of the upstream."""
    services.log("starting relay")
    port = free_port()
    svc = services.spawn(
        "relay",
        [sys.executable, str(RELAY_SCRIPT), "--listen", f"{LOCALHOST}:{port}",
         "--upstream", f"{upstream_host}:{upstream_port}"],
        LOCALHOST, port, **fields,
    )
    wait_for_port(svc, timeout)
    return svc


def launch_gateway(
    services: Services, config: Callable[[Path], str], port: int, *, timeout: float, **fields: Any
) -> Service:
    """Start `python -m sqlward.gateway serve --config FILE` and wait until `port` accepts.

    `config(audit_path)` gives the TOML; the file (mode 0600: it may hold passwords) and the audit
    file live in the run's temporary folder, in `extra["config"]` and `extra["audit"]`."""
    services.log("starting sqlward")
    gdir = services.workdir / "sqlward"
    gdir.mkdir()
    audit = gdir / "audit.jsonl"
    path = gdir / "sqlward.toml"
    path.touch(mode=0o600)
    path.write_text(config(audit))
    svc = services.spawn(
        "sqlward",
        [sys.executable, "-m", "sqlward.gateway", "serve", "--config", str(path)],
        LOCALHOST, port, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO_ROOT,
        extra={"audit": audit, "config": path}, **fields,
    )
    wait_for_port(svc, timeout)
    return svc


def toml_str(value: str) -> str:
    """A TOML basic string (JSON string escapes are a subset of TOML's)."""
    return json.dumps(value)


BENCH_GATEWAY_CONFIG = """\
[gateway]
name = "bench"

[[listeners]]
protocol = "{protocol}"
listen = "127.0.0.1:{port}"

[[targets]]
name = "{target}"
protocol = "{protocol}"
environment = "development"
dsn = {dsn}
{target_password}
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


def launch_bench_gateway(
    services: Services, protocol: str, dsn: str, *, timeout: float, password: str | None = None
) -> Service:
    """The gateway of the throughput comparisons: one `protocol` listener on a free port, target
    `bench` at `dsn` (upstream `password` if any), identity `bench`, the audit file on and the
    `no-drop` rule loaded. Clients log in as GATEWAY_USER / GATEWAY_SECRET to GATEWAY_DB."""
    port = free_port()

    def config(audit: Path) -> str:
        return BENCH_GATEWAY_CONFIG.format(
            protocol=protocol, port=port, target=GATEWAY_DB, dsn=toml_str(dsn),
            target_password=f"password = {toml_str(password)}\n" if password is not None else "",
            user=GATEWAY_USER, secret=GATEWAY_SECRET, audit=toml_str(str(audit)),
        )

    return launch_gateway(
        services, config, port, timeout=timeout, user=GATEWAY_USER, dbname=GATEWAY_DB, password=GATEWAY_SECRET
    )


def stop_gateway(svc: Service, notes: list[str]) -> int:
    """Stop the gateway gracefully (it flushes buffered audit events) and count the audit lines."""
    live = count_lines(svc.extra["audit"])
    svc.stop()
    lines = count_lines(svc.extra["audit"])
    if live != lines:
        notes.append(f"audit file had {live} lines while running, {lines} after stop")
    return lines


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_guarded(
    body: Callable[[Services], int], log: Callable[[str], None], *, tmp_prefix: str, keep_tmp: bool = False
) -> int:
    """Run `body(services)` in a fresh temporary folder and return its exit status; whatever
    happens (failure, Ctrl-C, SIGTERM, SIGHUP), every process it started is stopped and the
    folder removed (kept with `keep_tmp`). A BenchError is logged and gives 1, an interrupt 130."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with contextlib.suppress(AttributeError):
        signal.signal(signal.SIGHUP, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    services = Services(workdir, log)
    try:
        return body(services)
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
        if keep_tmp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- #
# Machine facts


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def tool_version(argv: list[str]) -> str:
    """The first line `argv` (e.g. `pgbench --version`) prints, "" when it cannot run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def machine_info(server: Mapping[str, Any], runtime: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Cores, CPU, then `server` (the servers' and tools' versions), Python, `runtime`, kernel."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        **server,
        "python": platform.python_version(),
        **(runtime or {}),
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------------- #
# Command line


def comparison_parser(description: str, tool: str) -> argparse.ArgumentParser:
    """The command line of a throughput comparison, with --duration (seconds per `tool` run)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--duration", type=int, default=15, help=f"seconds per {tool} run (default 15)")
    return p


def add_run_options(p: argparse.ArgumentParser, paths: Sequence[str], tool: str) -> None:
    """--rounds, --only, --json, --markdown, --warmup (after the script's own load options)."""
    p.add_argument("--rounds", type=int, default=1, help="rounds over all paths and modes (default 1); median is reported")
    p.add_argument("--only", default=",".join(paths), help=f"comma list of paths among {','.join(paths)}")
    p.add_argument("--json", metavar="FILE", help="write all figures and samples as JSON")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table for docs/performance.md")
    p.add_argument("--warmup", type=int, default=2, help=f"seconds of direct {tool} before measuring (0 = none)")


def add_service_options(p: argparse.ArgumentParser, started: str) -> None:
    """--start-timeout, --gateway-timeout, --keep-tmp."""
    p.add_argument("--start-timeout", type=float, default=20.0, help=f"seconds to wait for {started}")
    p.add_argument("--gateway-timeout", type=float, default=30.0, help="seconds to wait for sqlward")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, audit file)")


def check_run_options(
    p: argparse.ArgumentParser, args: argparse.Namespace, paths: Sequence[str], positive: Iterable[str]
) -> None:
    """Sets `args.paths` from --only (in `paths` order); each option in `positive` must be >= 1."""
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in paths]
    if unknown or not only:
        p.error(f"--only: unknown path(s) {unknown}; choose among {','.join(paths)}")
    args.paths = [x for x in paths if x in only]
    for name in positive:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")


# --------------------------------------------------------------------------- #
# One run of a load tool (pgbench, sysbench)

# (entry key, pattern, group, conversion): a figure scraped from the tool's output.
Field = tuple[str, re.Pattern[str], int, Callable[[str], Any]]


def run_entry(svc: Service, mode: str, started: float, returncode: int, command: str) -> dict[str, Any]:
    """The record of one run: completed by `scrape` and `settle`, then kept in the JSON file."""
    return {"mode": mode, "path": svc.name, "started": started, "returncode": returncode, "command": command}


def scrape(entry: dict[str, Any], out: str, fields: Iterable[Field]) -> dict[str, Any]:
    """Add each field found in the tool's output `out` to `entry`, in order."""
    for key, pattern, group, conv in fields:
        if found := pattern.search(out):
            entry[key] = conv(found.group(group))
    return entry


def settle(
    entry: dict[str, Any], metric: str, value: float | None, svc: Service, *, tool: str, line: str, detail: str
) -> dict[str, Any]:
    """Record the run's figure, or why there is none: the tool failed or printed no `line` line
    (`detail`: the part of its output that says why, then the end of the service's output)."""
    if value is not None and entry["returncode"] == 0:
        entry[metric] = value
    else:
        entry["error"] = (
            f"{tool} exited with status {entry['returncode']}"
            + ("" if value is not None else f" and printed no {line} line")
            + f":\n{detail}"
            + svc.output_tail()
        )
    return entry


# --------------------------------------------------------------------------- #
# Throughput comparisons and their report


@dataclass(frozen=True)
class Spec:
    """What a comparison measures and how its rows and cells read."""

    metric: str  # key of the figure in each run entry and table cell: "tps", "qps"
    unit: str  # column title suffix: "TPS", "QPS"
    paths: tuple[str, ...]  # every path, in column order
    modes: tuple[str, ...]
    ratios: tuple[tuple[str, str, str], ...]  # (label, numerator path, denominator path)
    mode_option: str  # the load tool's option for a mode: "-M {mode}"
    mode_labels: Mapping[str, str] = field(default_factory=dict)  # text row label; default: mode
    # Run flags carried to the cell (any run set): key -> (text table suffix, markdown suffix).
    flags: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def option(self, mode: str) -> str:
        return self.mode_option.format(mode=mode)


Samples = dict[tuple[str, str], list[dict[str, Any]]]


def fmt_count(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "—"


def fmt_ratio(v: float | None) -> str:
    return f"{v:.2f}×" if v is not None else "—"


def summarise(spec: Spec, samples: Samples, paths: Sequence[str]) -> dict[str, Any]:
    """Per mode: each path's median, min, max, samples and errors, and the ratios."""
    m = spec.metric
    table: dict[str, dict[str, Any]] = {}
    for mode in spec.modes:
        row: dict[str, Any] = {}
        for path in paths:
            runs = samples.get((mode, path), [])
            values = [r[m] for r in runs if m in r]
            row[path] = {
                m: median(values),
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "samples": values,
                "errors": [r["error"] for r in runs if "error" in r],
                **{flag: any(r.get(flag) for r in runs) for flag in spec.flags},
            }
        # A ratio is taken within each round (the two runs were minutes apart at
        # most, so slow drift of the machine cancels out), then the median over
        # rounds; with one round it is simply num/den.
        by_round = {path: {r["round"]: r[m] for r in samples.get((mode, path), []) if m in r} for path in paths}
        ratios = {}
        for label, num, den in spec.ratios:
            a, b = by_round.get(num, {}), by_round.get(den, {})
            per_round = [a[r] / b[r] for r in sorted(a.keys() & b.keys()) if b[r]]
            ratios[label] = median(per_round)
        table[mode] = {m: row, "ratios": ratios}
    return table


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the first left-aligned, the others right-aligned,
    and a line of dashes under the first row (the heading)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the first column left-aligned, the others (figures) right-aligned."""
    out = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def render_text(spec: Spec, table: dict[str, Any], paths: Sequence[str], rounds: int) -> str:
    m = spec.metric
    rows = [["mode"] + [f"{p} {spec.unit}" for p in paths] + [label for label, *_ in spec.ratios]]
    for mode in spec.modes:
        row = [spec.mode_labels.get(mode, mode)]
        for p in paths:
            cell = table[mode][m][p]
            txt = fmt_count(cell[m])
            if cell[m] is None and cell["errors"]:
                txt = "FAILED"
            elif rounds > 1 and cell[m] is not None:
                txt += f" ({fmt_count(cell['min'])}–{fmt_count(cell['max'])})"
            txt += "".join(text for flag, (text, _) in spec.flags.items() if cell.get(flag))
            row.append(txt)
        row += [fmt_ratio(table[mode]["ratios"][label]) for label, *_ in spec.ratios]
        rows.append(row)
    return text_table(rows)


def render_markdown(spec: Spec, table: dict[str, Any], paths: Sequence[str], caption: str) -> str:
    """`caption`, a blank line, and every path as a column (those not run say so)."""
    m = spec.metric
    rows = []
    for mode in spec.modes:
        row = [f"`{spec.option(mode)}`"]
        for p in spec.paths:
            if p not in paths:
                row.append("pending" if p == "sqlward" else "not run")
                continue
            cell = table[mode][m][p]
            txt = fmt_count(cell[m]) if cell[m] is not None else "failed"
            txt += "".join(md for flag, (_, md) in spec.flags.items() if cell.get(flag))
            row.append(txt)
        for label, num, den in spec.ratios:
            v = table[mode]["ratios"][label]
            pending = "sqlward" in (num, den) and "sqlward" not in paths
            row.append(fmt_ratio(v) if v is not None else ("pending" if pending else "—"))
        rows.append(row)
    head = ["mode", *spec.paths] + [label for label, *_ in spec.ratios]
    return caption + "\n\n" + markdown_table(head, rows)


class Comparison:
    """One throughput comparison: starts the paths, runs the rounds, prints the report."""

    def __init__(self, spec: Spec, log: Callable[[str], None], machine: dict[str, Any], server: str) -> None:
        """`machine` as from `machine_info`; `server` names the server measured (with version)."""
        self.spec = spec
        self.log = log
        self.machine = machine
        self.server = server
        self.audit_lines: int | None = None  # set by stop_gateway
        self.notes: list[str] = []
        self.startup_errors: dict[str, str] = {}
        self.active: dict[str, Service] = {}
        self.samples: Samples = {}

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(text)

    def start(self, paths: Sequence[str], starters: Mapping[str, Callable[[], Service | None]]) -> list[str]:
        """Start each path (a starter returning None skipped it and said why); the paths that run.
        A path that fails to start is noted and left out; none at all is an error."""
        for path in paths:
            try:
                svc = starters[path]()
                if svc is None:
                    continue
                self.active[path] = svc
                if svc.proc is not None:
                    self.log(f"{path} up on {svc.host}:{svc.port}")
            except BenchError as exc:
                msg = f"{path}: not benchmarked: {exc}"
                self.notes.append(msg.splitlines()[0])
                self.startup_errors[path] = str(exc)
                self.log(msg)
        run_paths = [p for p in paths if p in self.active]
        if not run_paths:
            raise BenchError("no path came up; nothing to measure")
        return run_paths

    def run_rounds(
        self,
        run_paths: Sequence[str],
        rounds: int,
        duration: int,
        run: Callable[[Service, str, int], dict[str, Any]],
        after: Callable[[dict[str, Any]], None] | None = None,
    ) -> Samples:
        """`rounds` rounds over every mode and path; the path order rotates each round and the
        mode order flips, so that no path always runs first or last."""
        m = self.spec.metric
        total = rounds * len(self.spec.modes) * len(run_paths)
        done = 0
        for rnd in range(rounds):
            shift = rnd % len(run_paths)
            order = list(run_paths[shift:]) + list(run_paths[:shift])
            modes = self.spec.modes if rnd % 2 == 0 else tuple(reversed(self.spec.modes))
            for mode in modes:
                for path in order:
                    done += 1
                    self.log(f"[{done}/{total}] round {rnd + 1} {self.spec.option(mode)} {path} ({duration}s)")
                    entry = run(self.active[path], mode, duration)
                    entry["round"] = rnd + 1
                    self.samples.setdefault((mode, path), []).append(entry)
                    if m in entry:
                        self.log(f"    {m} = {entry[m]:,.0f}")
                    else:
                        self.log(f"    FAILED: {entry['error']}")
                    if after is not None:
                        after(entry)
        return self.samples

    def stop_gateway(self) -> None:
        """Stop sqlward if it ran, and count the lines of its audit file."""
        svc = self.active.get("sqlward")
        if svc is not None:
            self.audit_lines = stop_gateway(svc, self.notes)

    def report(
        self,
        args: argparse.Namespace,
        settings: dict[str, Any],
        load: str,
        markdown_load: str | None = None,
    ) -> int:
        """Print the tables and notes (the markdown table too with --markdown), write the JSON
        file (--json); 1 if any path failed, else 0. `load` is the load tool's command line in
        the headline, `markdown_load` (default `load`) in the markdown table's caption."""
        spec, machine, audit_lines = self.spec, self.machine, self.audit_lines
        paths, rounds = args.paths, args.rounds
        table = summarise(spec, self.samples, paths)
        cores = f"{machine['nproc']} cores, {machine['cpu_model']}, {self.server}"
        print()
        print(f"{load}, {rounds} round(s){', median (min–max)' if rounds > 1 else ''}; {cores}")
        print()
        print(render_text(spec, table, paths, rounds))
        print()
        if "sqlward" in paths:
            if audit_lines is not None:
                print(f"sqlward audit file: {audit_lines} lines")
            else:
                print("sqlward audit file: (gateway did not run)")
        for note in self.notes:
            if not any(note.startswith(f"{p}: not benchmarked") for p in self.startup_errors):
                print(f"note: {note}")
        for path, err in self.startup_errors.items():
            print(f"note: {path} not benchmarked: {err}")
        for mode in spec.modes:
            for path in paths:
                for err in table[mode][spec.metric][path]["errors"]:
                    print(f"note: {spec.option(mode)} {path} failed: {err}")
        if args.markdown:
            caption = (
                f"Machine: {cores}; {markdown_load or load}, {rounds} round(s), median {spec.unit}; "
                "ratios are medians of per-round ratios."
            )
            print()
            print(render_markdown(spec, table, paths, caption))

        if args.json:
            doc = {
                "machine": machine,
                "settings": settings,
                "paths": list(paths),
                "results": table,
                "runs": [e for runs in self.samples.values() for e in runs],
                "audit_lines": audit_lines,
                "notes": self.notes,
                "startup_errors": self.startup_errors,
            }
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2) + "\n")
            self.log(f"wrote {args.json}")

        any_failed = bool(self.startup_errors) or any(
            table[mode][spec.metric][p]["errors"] for mode in spec.modes for p in paths
        )
        return 1 if any_failed else 0
