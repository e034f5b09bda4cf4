"""bench/harness.py: the pure helpers the benchmark scripts share (ratios, medians, tables, the
parsing of a load tool's output), so that a change to the harness cannot silently skew or break the
figures docs/performance.md is written from."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness

REPO = Path(__file__).resolve().parents[2]

SPEC = harness.Spec(
    metric="qps",
    unit="QPS",
    paths=("direct", "relay", "sqlward"),
    modes=("off", "on"),
    ratios=(("sqlward/relay", "sqlward", "relay"), ("relay/direct", "relay", "direct")),
    mode_option="--ps={mode}",
    mode_labels={"off": "ps off"},
    flags={"emulated": (" [emulated]", " (emulated)")},
)


def _run(path: str, mode: str, rnd: int, qps: float | None = None, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {"path": path, "mode": mode, "round": rnd, **extra}
    if qps is None:
        entry["error"] = "tool exited with status 1"
    else:
        entry["qps"] = qps
    return entry


def _samples(*runs: dict[str, object]) -> harness.Samples:
    samples: harness.Samples = {}
    for r in runs:
        samples.setdefault((str(r["mode"]), str(r["path"])), []).append(r)
    return samples


def test_median_and_ratio() -> None:
    assert harness.median([3.0, 1.0, 2.0]) == 2.0
    assert harness.median([1.0, 2.0]) == 1.5
    assert harness.median([]) is None
    assert harness.ratio(3.0, 2.0) == 1.5
    assert harness.ratio(None, 2.0) is None
    assert harness.ratio(1.0, None) is None
    assert harness.ratio(1.0, 0.0) is None


def test_timed_returns_the_result_and_a_duration() -> None:
    result, seconds = harness.timed(lambda: 42)
    assert result == 42 and 0 <= seconds < 1


def test_formats() -> None:
    assert harness.fmt_count(12345.6) == "12,346"
    assert harness.fmt_count(None) == "—"
    assert harness.fmt_ratio(0.8149) == "0.81×"
    assert harness.fmt_ratio(None) == "—"


def test_ratios_are_taken_within_each_round_then_the_median() -> None:
    samples = _samples(
        _run("direct", "off", 1, 100.0), _run("relay", "off", 1, 50.0), _run("sqlward", "off", 1, 40.0),
        _run("direct", "off", 2, 200.0), _run("relay", "off", 2, 80.0), _run("sqlward", "off", 2, 80.0),
        _run("direct", "off", 3, 100.0), _run("relay", "off", 3, 40.0), _run("sqlward", "off", 3, 30.0),
    )
    table = harness.summarise(SPEC, samples, ["direct", "relay", "sqlward"])
    off = table["off"]
    assert off["qps"]["relay"] == {
        "qps": 50.0, "min": 40.0, "max": 80.0, "samples": [50.0, 80.0, 40.0], "errors": [], "emulated": False,
    }
    # Per round: sqlward/relay 0.8, 1.0, 0.75 -> 0.8; relay/direct 0.5, 0.4, 0.4 -> 0.4. The medians
    # of the medians (40/50 = 0.8, 50/100 = 0.5) would differ.
    assert off["ratios"]["sqlward/relay"] == pytest.approx(0.8)
    assert off["ratios"]["relay/direct"] == pytest.approx(0.4)
    # Nothing ran in mode "on": no figure, no ratio.
    assert table["on"]["qps"]["direct"]["qps"] is None
    assert table["on"]["ratios"] == {"sqlward/relay": None, "relay/direct": None}


def test_a_ratio_needs_both_paths_in_the_same_round_and_failures_are_kept() -> None:
    samples = _samples(
        _run("relay", "off", 1, 50.0), _run("sqlward", "off", 1, None),
        _run("relay", "off", 2, 60.0, emulated=True), _run("sqlward", "off", 2, 30.0),
    )
    table = harness.summarise(SPEC, samples, ["relay", "sqlward"])
    cell = table["off"]["qps"]["sqlward"]
    assert cell["qps"] == 30.0 and cell["errors"] == ["tool exited with status 1"]
    assert table["off"]["ratios"]["sqlward/relay"] == pytest.approx(0.5)
    assert table["off"]["qps"]["relay"]["emulated"] is True


def test_text_table_aligns_columns_under_a_dashed_heading() -> None:
    text = harness.text_table([["mode", "a TPS", "ratio"], ["simple", "1,000", "0.50×"], ["p", "10", "—"]])
    assert text.splitlines() == [
        "mode    a TPS  ratio",
        "------  -----  -----",
        "simple  1,000  0.50×",
        "p          10      —",
    ]


def test_markdown_table() -> None:
    assert harness.markdown_table(["mode", "x", "y"], [["`a`", "1", "2"]]) == (
        "| mode | x | y |\n|---|---:|---:|\n| `a` | 1 | 2 |"
    )


def test_render_text_and_markdown() -> None:
    samples = _samples(
        _run("direct", "off", 1, 1000.0), _run("relay", "off", 1, 500.0, emulated=True),
        _run("direct", "on", 1, 2000.0), _run("relay", "on", 1, None),
    )
    paths = ["direct", "relay"]  # sqlward not run
    table = harness.summarise(SPEC, samples, paths)
    assert harness.render_text(SPEC, table, paths, rounds=1).splitlines() == [
        "mode    direct QPS       relay QPS  sqlward/relay  relay/direct",
        "------  ----------  --------------  -------------  ------------",
        "ps off       1,000  500 [emulated]              —         0.50×",
        "on           2,000          FAILED              —             —",
    ]
    assert harness.render_markdown(SPEC, table, paths, "Caption.").splitlines() == [
        "Caption.",
        "",
        "| mode | direct | relay | sqlward | sqlward/relay | relay/direct |",
        "|---|---:|---:|---:|---:|---:|",
        "| `--ps=off` | 1,000 | 500 (emulated) | pending | pending | 0.50× |",
        "| `--ps=on` | 2,000 | failed | pending | pending | — |",
    ]


def test_render_text_shows_the_range_over_several_rounds() -> None:
    samples = _samples(_run("direct", "off", 1, 900.0), _run("direct", "off", 2, 1100.0), _run("direct", "off", 3, 1000.0))
    text = harness.render_text(SPEC, harness.summarise(SPEC, samples, ["direct"]), ["direct"], rounds=3)
    assert "1,000 (900–1,100)" in text


def test_scrape_and_settle_a_load_tool_run() -> None:
    svc = harness.external("direct", "127.0.0.1", 5432)
    out = "latency average = 0.125 ms\ntps = 1234.5 (without initial connection time)\n"
    fields: list[harness.Field] = [
        ("latency_ms", re.compile(r"^latency average = ([0-9.]+) ms", re.M), 1, float),
        ("failed", re.compile(r"^failed: (\d+)", re.M), 1, int),
    ]
    entry = harness.scrape(harness.run_entry(svc, "simple", 1.0, 0, "pgbench -S"), out, fields)
    assert entry == {
        "mode": "simple", "path": "direct", "started": 1.0, "returncode": 0, "command": "pgbench -S",
        "latency_ms": 0.125,
    }
    done = harness.settle(dict(entry), "tps", 1234.5, svc, tool="pgbench", line="tps", detail="")
    assert done["tps"] == 1234.5 and "error" not in done
    missing = harness.settle(dict(entry), "tps", None, svc, tool="pgbench", line="tps", detail="    | boom")
    assert "tps" not in missing
    assert missing["error"] == "pgbench exited with status 0 and printed no tps line:\n    | boom"
    failed = harness.settle({**entry, "returncode": 2}, "tps", 10.0, svc, tool="pgbench", line="tps", detail="x")
    assert "tps" not in failed and failed["error"].startswith("pgbench exited with status 2:")


def test_tail() -> None:
    assert harness.tail("a\nb\nc\n", lines=2) == "    | b\n    | c"
    assert harness.tail("") == "    | (empty)"


def test_check_run_options() -> None:
    p = argparse.ArgumentParser()
    harness.add_run_options(p, SPEC.paths, "tool")
    assert p.parse_args([]).only == "direct,relay,sqlward"
    args = p.parse_args(["--only", "sqlward, direct"])
    harness.check_run_options(p, args, SPEC.paths, ("rounds",))
    assert args.paths == ["direct", "sqlward"]  # in column order
    with pytest.raises(SystemExit):
        harness.check_run_options(p, p.parse_args(["--only", "nope"]), SPEC.paths, ())
    with pytest.raises(SystemExit):
        harness.check_run_options(p, p.parse_args(["--rounds", "0"]), SPEC.paths, ("rounds",))


def test_bench_gateway_config_is_valid_toml() -> None:
    import tomllib

    password = harness.toml_str('p"w')
    text = harness.BENCH_GATEWAY_CONFIG.format(
        protocol="mysql", port=1234, target="bench", dsn=harness.toml_str("mysql://u@h:1/db"),
        target_password=f"password = {password}\n", user="bench", secret="s",
        audit=harness.toml_str("/tmp/a b/audit.jsonl"),
    )
    doc = tomllib.loads(text)
    assert doc["targets"][0]["password"] == 'p"w'
    assert doc["audit"]["file"] == "/tmp/a b/audit.jsonl"
    assert doc["listeners"][0] == {"protocol": "mysql", "listen": "127.0.0.1:1234"}


@pytest.mark.parametrize("script", ["pg_compare", "mysql_compare", "mask_compare", "policy_micro"])
def test_scripts_start_as_files_and_as_modules(script: str) -> None:
    """`python bench/X.py` and `python -m bench.X` both import the harness (no sys.path edits)."""
    for argv in ([sys.executable, f"bench/{script}.py", "--help"], [sys.executable, "-m", f"bench.{script}", "--help"]):
        res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, (argv, res.stderr)
        assert res.stdout.startswith("usage:")


def test_no_bench_script_edits_sys_path() -> None:
    edit = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend|remove)\b|\[|\+?=)")
    for path in (REPO / "bench").glob("*.py"):
        assert not edit.search(path.read_text()), path.name
