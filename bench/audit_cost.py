"""What the audit trail and telemetry cost: pgbench -S through the gateway with audit off,
buffered, sync, and sync / buffered with tracing, in one run.

    python bench/audit_cost.py [--duration 10] [--rounds 3] [--clients 4] [--prepared]
                               [--only relay,off,buffered,sync,sync+tracing,buffered+tracing]
                               [--markdown] [--json FILE]

(or ``python -m bench.audit_cost ...`` from the repository root). In one run it:
  1. prepares database ``sqlward_bench`` as bench/pg_compare.py does (pgbench -i -s 1 once);
  2. starts, each on a free port, the bare relay (bench/relay.py, for reference) and one gateway
     per configuration, all with the config of bench/pg_compare.py (identity ``bench``, target
     ``bench``, the ``no-drop`` rule), differing only in what is listed below;
  3. starts a local OTLP/HTTP sink in this process (a thread answering 200 to every POST and
     discarding the body) for the tracing configurations;
  4. runs ``pgbench -S -n -M simple`` (``-M prepared`` with --prepared) against every
     configuration, round-robin: each round runs every configuration once, and the order
     rotates every round, so machine noise hits them all alike;
  5. prints TPS per configuration (median, min–max over rounds), its ratio to "off" (the median
     of the per-round ratios) and the cost (1 − ratio), and says which targets hold.

The configurations:

  off               bench/audit_off_gateway.py: the same gateway with Gatekeeper.from_config
                    given audit_sink=NullSink(): events are built and encoded, never chained,
                    signed, written or fsync'd. Not a product setting (there is none).
  buffered          [audit] durability = "buffered" (the default: written before a client sees a
                    statement's result)
  sync              [audit] durability = "sync" (fsync with group commit before a
                    client sees a statement's result)
  sync+tracing      sync, plus [telemetry] endpoint = the local OTLP sink, sample_ratio = 1.0
  buffered+tracing  buffered, plus the same telemetry

Targets (the audit-trail issue): sync ≤ 15 % below off, buffered ≤ 5 %, and tracing at sample
ratio 1.0 ≤ 10 % — judged as X+tracing against X of the same run (its cost against off is in
the table too). Every process it starts is stopped on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__:  # python -m bench.audit_cost
    from . import harness, pg_compare
else:  # python bench/audit_cost.py: this file's folder is first on sys.path
    import harness
    import pg_compare

OFF_GATEWAY = harness.REPO_ROOT / "bench" / "audit_off_gateway.py"


@dataclass(frozen=True)
class Setup:
    """One gateway configuration: durability None = audit off (NullSink runner)."""

    durability: str | None
    tracing: bool
    about: str


CONFIGS: dict[str, Setup] = {
    "off": Setup(None, False, "NullSink: records encoded, never written (bench/audit_off_gateway.py)"),
    "buffered": Setup("buffered", False, '[audit] durability = "buffered" (default)'),
    "sync": Setup("sync", False, '[audit] durability = "sync"'),
    "sync+tracing": Setup("sync", True, "sync + [telemetry] to a local OTLP/HTTP sink, sample_ratio = 1.0"),
    "buffered+tracing": Setup("buffered", True, "buffered + the same telemetry"),
}
PATHS: tuple[str, ...] = ("relay", *CONFIGS)
BASELINE = "off"

# (path, what it is compared with, the largest cost allowed): the targets.
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("sync", BASELINE, 0.15),
    ("buffered", BASELINE, 0.05),
    ("sync+tracing", "sync", 0.10),
    ("buffered+tracing", "buffered", 0.10),
)


def ratio_specs(paths: Sequence[str] = PATHS) -> tuple[tuple[str, str, str], ...]:
    """(label, numerator, denominator): every path against off, then each target's pair."""
    out = [(f"{p}/{BASELINE}", p, BASELINE) for p in paths if p != BASELINE]
    out += [(f"{p}/{base}", p, base) for p, base, _ in TARGETS if base != BASELINE]
    return tuple(out)


def make_spec(mode: str) -> harness.Spec:
    return harness.Spec(
        metric="tps", unit="TPS", paths=PATHS, modes=(mode,), ratios=ratio_specs(), mode_option="-M {mode}",
    )


log = harness.logger("audit_cost")


# --------------------------------------------------------------------------- #
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = harness.comparison_parser("pgbench -S through sqlward: audit off / buffered / sync / with tracing", "pgbench")
    p.set_defaults(duration=10)
    p.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--prepared", action="store_true", help="pgbench -M prepared (default -M simple)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all configurations (default 3); medians reported")
    p.add_argument("--only", default=",".join(PATHS), help=f"comma list among {','.join(PATHS)}")
    p.add_argument("--json", metavar="FILE", help="write all figures and samples as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the markdown table")
    p.add_argument("--warmup", type=int, default=2, help="seconds of pgbench through each path before measuring (0 = none)")
    p.add_argument("--scale", type=int, default=1, help="pgbench -i scale when initialising (default 1)")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    harness.add_service_options(p, "the relay")
    args = p.parse_args(argv)
    harness.check_run_options(p, args, PATHS, ("duration", "clients", "jobs", "rounds"))
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    args.mode = "prepared" if args.prepared else "simple"
    return args


# --------------------------------------------------------------------------- #
# The gateways' configs


def gateway_config(base: str, setup: Setup, otlp_endpoint: str | None) -> str:
    """The bench gateway's TOML (`base`, harness.BENCH_GATEWAY_CONFIG filled in) for `setup`:
    [audit] durability set when auditing, a [telemetry] table when tracing."""
    text = base
    if setup.durability is not None:
        head = "\n[audit]\n"
        if text.count(head) != 1:
            raise ValueError("expected exactly one [audit] table in the bench gateway config")
        text = text.replace(head, f'{head}durability = "{setup.durability}"\n')
    if setup.tracing:
        if not otlp_endpoint:
            raise ValueError("a tracing configuration needs the OTLP endpoint")
        text += f"\n[telemetry]\nendpoint = {harness.toml_str(otlp_endpoint)}\nsample_ratio = 1.0\n"
    return text


def base_config(protocol: str, port: int, dsn: str, audit: Path) -> str:
    return harness.BENCH_GATEWAY_CONFIG.format(
        protocol=protocol, port=port, target=harness.GATEWAY_DB, dsn=harness.toml_str(dsn), target_password="",
        user=harness.GATEWAY_USER, secret=harness.GATEWAY_SECRET, audit=harness.toml_str(str(audit)),
    )


# --------------------------------------------------------------------------- #
# A local OTLP/HTTP sink: 200 to every POST, the body read and discarded


class OtlpSink:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread; counts requests and bytes per path."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # path -> [requests, bytes]
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a collector offers

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                with sink._lock:
                    c = sink.counts.setdefault(self.path, [0, 0])
                    c[0] += 1
                    c[1] += length
                # An empty Export*ServiceResponse is zero bytes of protobuf.
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((harness.LOCALHOST, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{harness.LOCALHOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)
        self._thread.start()

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {k: (v[0], v[1]) for k, v in self.counts.items()}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------- #
# Starting the paths


def start_gateway(
    args: argparse.Namespace, services: harness.Services, name: str, setup: Setup, otlp: OtlpSink | None
) -> harness.Service:
    log(f"starting gateway {name}")
    port = harness.free_port()
    gdir = services.workdir / name
    gdir.mkdir()
    audit = gdir / "audit.jsonl"
    path = gdir / "sqlward.toml"
    dsn = f"postgresql://{args.pg_user}@{args.pg_host}:{args.pg_port}/{harness.BENCH_DB}?sslmode=disable"
    path.touch(mode=0o600)
    path.write_text(gateway_config(base_config("postgres", port, dsn, audit), setup, otlp.endpoint if otlp else None))
    if setup.durability is None:
        argv = [sys.executable, str(OFF_GATEWAY), "--config", str(path)]
    else:
        argv = [sys.executable, "-m", "sqlward.gateway", "serve", "--config", str(path)]
    svc = services.spawn(
        name, argv, harness.LOCALHOST, port, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=harness.REPO_ROOT,
        extra={"audit": audit, "config": path, "setup": setup},
        user=harness.GATEWAY_USER, dbname=harness.GATEWAY_DB, password=harness.GATEWAY_SECRET,
    )
    harness.wait_for_port(svc, args.gateway_timeout)
    pg_compare.smoke_query(svc)
    return svc


def start_relay(args: argparse.Namespace, services: harness.Services) -> harness.Service:
    svc = harness.launch_relay(
        services, args.pg_host, args.pg_port, timeout=args.start_timeout, user=args.pg_user, dbname=harness.BENCH_DB
    )
    pg_compare.smoke_query(svc)
    return svc


# --------------------------------------------------------------------------- #
# The report


def fmt_cost(r: float | None) -> str:
    return f"{(1.0 - r) * 100:.1f} %" if r is not None else "—"


def fmt_range(cell: Mapping[str, Any]) -> str:
    if cell.get("min") is None:
        return "—"
    return f"{harness.fmt_count(cell['min'])}–{harness.fmt_count(cell['max'])}"


def report_rows(table: Mapping[str, Any], paths: Sequence[str]) -> list[list[str]]:
    """One row per path: configuration, median TPS, min–max, ratio to off, cost (1 − ratio).
    The relay is a reference, not a configuration of the gateway: no cost."""
    rows = []
    for p in paths:
        cell = table["tps"][p]
        if cell["tps"] is None:
            med = "failed" if cell["errors"] else "—"
        else:
            med = harness.fmt_count(cell["tps"])
        if p == BASELINE:
            r_txt, cost = ("1.00×", "0.0 %") if cell["tps"] is not None else ("—", "—")
        else:
            r = table["ratios"].get(f"{p}/{BASELINE}")
            r_txt = harness.fmt_ratio(r)
            cost = "—" if p == "relay" else fmt_cost(r)
        rows.append([p, med, fmt_range(cell), r_txt, cost])
    return rows


def verdicts(table: Mapping[str, Any], paths: Sequence[str]) -> list[dict[str, Any]]:
    """Each target whose two paths ran: its ratio, cost, limit and whether it holds."""
    out = []
    for p, base, limit in TARGETS:
        if p not in paths or base not in paths:
            continue
        r = table["ratios"].get(f"{p}/{base}")
        out.append({
            "path": p, "against": base, "limit": limit, "ratio": r,
            "cost": None if r is None else 1.0 - r,
            "holds": None if r is None else (1.0 - r) <= limit,
        })
    return out


def verdict_lines(found: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for v in found:
        what = "tracing" if v["against"] != BASELINE else f"audit {v['path']}"
        if v["ratio"] is None:
            lines.append(f"{what} ({v['path']} vs {v['against']}): no figure (a run failed)")
            continue
        state = "holds" if v["holds"] else "MISSED"
        lines.append(
            f"{what} ({v['path']} vs {v['against']}): cost {v['cost'] * 100:.1f} % "
            f"(ratio {v['ratio']:.2f}×), target ≤ {v['limit'] * 100:.0f} %: {state}"
        )
    return lines


def render_markdown(table: Mapping[str, Any], paths: Sequence[str], caption: str) -> str:
    rows = report_rows(table, paths)
    rows = [[f"`{r[0]}`", *r[1:]] for r in rows]
    head = ["configuration", "median TPS", "min–max", f"ratio to {BASELINE}", "cost (1 − ratio)"]
    body = harness.markdown_table(head, rows)
    lines = verdict_lines(verdicts(table, paths))
    targets = "\n".join(f"- {line}" for line in lines)
    return caption + "\n\n" + body + ("\n\nTargets:\n\n" + targets if targets else "")


def render_text(table: Mapping[str, Any], paths: Sequence[str]) -> str:
    head = ["configuration", "median TPS", "min–max", f"ratio to {BASELINE}", "cost"]
    return harness.text_table([head, *report_rows(table, paths)])


# --------------------------------------------------------------------------- #
# Main


def warm_up(args: argparse.Namespace, active: Mapping[str, harness.Service], paths: Sequence[str]) -> None:
    if args.warmup <= 0:
        return
    for p in paths:
        log(f"warm-up: {args.warmup}s {p}")
        pg_compare.run_pgbench(args, active[p], args.mode, args.warmup)


def dropped_spans(svc: harness.Service) -> bool:
    """Whether the gateway's OpenTelemetry SDK said it dropped spans (its queue was full)."""
    text = svc.log_text().lower()
    return "dropped" in text or "queue is full" in text


def measure(args: argparse.Namespace, services: harness.Services) -> int:
    pg_compare.prepare_database(args)
    machine = pg_compare.machine_info(args)
    machine.pop("pgbouncer", None)
    spec = make_spec(args.mode)
    run = harness.Comparison(spec, log, machine, machine["postgres"])

    otlp = OtlpSink() if any(p in CONFIGS and CONFIGS[p].tracing for p in args.paths) else None
    try:
        starters = {"relay": lambda: start_relay(args, services)}
        for name, setup in CONFIGS.items():
            starters[name] = lambda name=name, setup=setup: start_gateway(args, services, name, setup, otlp)
        run_paths = run.start(args.paths, starters)
        warm_up(args, run.active, run_paths)
        run.run_rounds(run_paths, args.rounds, args.duration, lambda svc, mode, d: pg_compare.run_pgbench(args, svc, mode, d))

        audit_lines: dict[str, int] = {}
        for p in run_paths:
            svc = run.active[p]
            setup = svc.extra.get("setup")
            if setup is None:
                continue
            if setup.tracing and dropped_spans(svc):
                run.note(f"{p}: the OpenTelemetry SDK reported dropped spans (its queue was full)")
            if setup.durability is None:
                svc.stop()
            else:
                audit_lines[p] = harness.stop_gateway(svc, run.notes)
        exported = otlp.snapshot() if otlp else {}
    finally:
        if otlp is not None:
            otlp.close()

    table = summarise(spec, run.samples, run_paths)
    c, j = args.clients, max(1, min(args.jobs, args.clients))
    load = f"pgbench -S -n -M {args.mode} -c {c} -j {j} -T {args.duration}"
    cores = f"{machine['nproc']} cores, {machine['cpu_model']}, {machine['postgres']}, Python {machine['python']}"
    print()
    print(f"{load}, {args.rounds} round(s), median (min–max); {cores}")
    print()
    print(render_text(table, run_paths))
    print()
    for line in verdict_lines(verdicts(table, run_paths)):
        print(line)
    print()
    for p in run_paths:
        if p in CONFIGS:
            print(f"{p}: {CONFIGS[p].about}")
    for p, n in audit_lines.items():
        print(f"{p}: audit file {n:,} lines")
    for path, (n, size) in sorted(exported.items()):
        print(f"OTLP sink: {path}: {n:,} requests, {size:,} bytes")
    for note in run.notes:
        print(f"note: {note}")
    for p in run_paths:
        for err in table["tps"][p]["errors"]:
            print(f"note: {p} failed: {err}")
    if args.markdown:
        caption = (
            f"Machine: {cores}; `{load}`, {args.rounds} round(s) round-robin, median TPS; "
            f"ratios are medians of per-round ratios to `{BASELINE}`."
        )
        print()
        print(render_markdown(table, run_paths, caption))
    if args.json:
        doc = {
            "machine": machine,
            "settings": {"mode": args.mode, "duration": args.duration, "clients": c, "jobs": j,
                         "rounds": args.rounds, "warmup": args.warmup},
            "paths": list(run_paths), "results": table, "targets": verdicts(table, run_paths),
            "runs": [e for runs in run.samples.values() for e in runs],
            "audit_lines": audit_lines, "otlp": exported, "notes": run.notes,
            "startup_errors": run.startup_errors,
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    failed = bool(run.startup_errors) or any(table["tps"][p]["errors"] for p in run_paths)
    return 1 if failed else 0


def summarise(spec: harness.Spec, samples: harness.Samples, paths: Sequence[str]) -> dict[str, Any]:
    """harness.summarise for the one mode: {"tps": {path: cell}, "ratios": {label: median}}."""
    return harness.summarise(spec, samples, paths)[spec.modes[0]]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("psql") is None or shutil.which("pgbench") is None:
        harness.install_tools(log, "psql or pgbench")
    for tool in ("psql", "pgbench"):
        if shutil.which(tool) is None:
            log(f"{tool} not found, and bench/setup did not install it")
            return 2
    started = time.monotonic()
    rc = harness.run_guarded(
        lambda services: measure(args, services), log, tmp_prefix="sqlward-audit-cost-", keep_tmp=args.keep_tmp
    )
    log(f"done in {time.monotonic() - started:.0f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
