"""bench/audit_cost.py: its own pure parts (options, the gateway configs, the ratios to "off", the
cost column, the targets and the markdown table). No benchmark runs here."""

from __future__ import annotations

import tomllib

import pytest

from bench import audit_cost, audit_off_gateway, harness


def _run(path: str, rnd: int, tps: float | None) -> dict[str, object]:
    entry: dict[str, object] = {"path": path, "mode": "simple", "round": rnd}
    if tps is None:
        entry["error"] = "pgbench exited with status 1"
    else:
        entry["tps"] = tps
    return entry


def _table(runs: dict[str, list[float | None]], mode: str = "simple") -> dict[str, object]:
    samples: harness.Samples = {}
    for path, values in runs.items():
        samples[(mode, path)] = [_run(path, i + 1, v) for i, v in enumerate(values)]
    return audit_cost.summarise(audit_cost.make_spec(mode), samples, list(runs))


def test_defaults_and_options() -> None:
    args = audit_cost.parse_args([])
    assert args.paths == list(audit_cost.PATHS)
    assert (args.duration, args.rounds, args.clients, args.mode, args.markdown) == (10, 3, 4, "simple", False)
    args = audit_cost.parse_args(["--only", "sync,off", "--prepared", "--markdown", "--duration", "5", "--rounds", "2"])
    assert args.paths == ["off", "sync"]  # in the table's order, not the option's
    assert (args.mode, args.markdown, args.duration, args.rounds) == ("prepared", True, 5, 2)


@pytest.mark.parametrize("argv", [["--only", "sync,nope"], ["--only", ""], ["--rounds", "0"], ["--warmup", "-1"]])
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        audit_cost.parse_args(argv)
    assert exc.value.code == 2


def _config(name: str, endpoint: str | None = "http://127.0.0.1:4318") -> dict[str, object]:
    base = audit_cost.base_config("postgres", 6543, "postgresql://u@127.0.0.1:5432/db", harness.REPO_ROOT / "a.jsonl")
    return tomllib.loads(audit_cost.gateway_config(base, audit_cost.CONFIGS[name], endpoint))


def test_gateway_configs_differ_only_in_durability_and_telemetry() -> None:
    off, buffered, sync, traced = (_config(n) for n in ("off", "buffered", "sync", "sync+tracing"))
    assert "durability" not in off["audit"] and "telemetry" not in off
    assert buffered["audit"]["durability"] == "buffered" and "telemetry" not in buffered
    assert sync["audit"]["durability"] == "sync"
    assert traced["audit"]["durability"] == "sync"
    assert traced["telemetry"] == {"endpoint": "http://127.0.0.1:4318", "sample_ratio": 1.0}
    assert _config("buffered+tracing")["audit"]["durability"] == "buffered"
    # Everything else is pg_compare's bench gateway.
    for cfg in (buffered, sync, traced):
        assert cfg["rules"] == off["rules"] and cfg["targets"] == off["targets"]
        assert cfg["identities"] == off["identities"] and cfg["listeners"] == off["listeners"]
    with pytest.raises(ValueError):
        _config("sync+tracing", endpoint=None)


def test_ratios_are_per_round_medians_against_off() -> None:
    table = _table({
        "relay": [200.0, 180.0, 220.0],
        "off": [100.0, 90.0, 110.0],
        "buffered": [97.0, 85.5, 107.8],  # 0.97, 0.95, 0.98
        "sync": [80.0, 81.0, 88.0],  # 0.80, 0.90, 0.80
        "sync+tracing": [76.0, 72.9, 79.2],  # 0.95, 0.90, 0.90 of sync
    })
    ratios = table["ratios"]
    assert ratios["buffered/off"] == pytest.approx(0.97)
    assert ratios["sync/off"] == pytest.approx(0.80)
    assert ratios["sync+tracing/sync"] == pytest.approx(0.90)
    assert ratios["relay/off"] == pytest.approx(2.0)
    assert ratios["buffered+tracing/off"] is None  # not run

    rows = {r[0]: r[1:] for r in audit_cost.report_rows(table, ["relay", "off", "buffered", "sync"])}
    assert rows["off"] == ["100", "90–110", "1.00×", "0.0 %"]
    assert rows["sync"] == ["81", "80–88", "0.80×", "20.0 %"]
    assert rows["buffered"][2:] == ["0.97×", "3.0 %"]
    assert rows["relay"][2:] == ["2.00×", "—"]  # a reference, not a cost

    found = {v["path"]: v for v in audit_cost.verdicts(table, list(table["tps"]))}
    assert set(found) == {"sync", "buffered", "sync+tracing"}  # buffered+tracing did not run
    assert found["sync"]["holds"] is False and found["sync"]["cost"] == pytest.approx(0.20)
    assert found["buffered"]["holds"] is True
    assert found["sync+tracing"]["against"] == "sync" and found["sync+tracing"]["holds"] is True


def test_failed_runs_show_and_judge_nothing() -> None:
    table = _table({"off": [100.0], "sync": [None]})
    rows = {r[0]: r[1:] for r in audit_cost.report_rows(table, ["off", "sync"])}
    assert rows["sync"] == ["failed", "—", "—", "—"]
    (v,) = audit_cost.verdicts(table, ["off", "sync"])
    assert v["holds"] is None
    assert "no figure" in audit_cost.verdict_lines([v])[0]


def test_markdown_table() -> None:
    table = _table({"off": [1000.0, 1200.0], "buffered": [990.0, 1170.0], "sync": [800.0, 1000.0]})
    md = audit_cost.render_markdown(table, ["off", "buffered", "sync"], "Caption.")
    lines = md.splitlines()
    assert lines[0] == "Caption."
    assert lines[2] == "| configuration | median TPS | min–max | ratio to off | cost (1 − ratio) |"
    assert lines[3] == "|---|---:|---:|---:|---:|"
    assert lines[4] == "| `off` | 1,100 | 1,000–1,200 | 1.00× | 0.0 % |"
    assert lines[5] == "| `buffered` | 1,080 | 990–1,170 | 0.98× | 1.8 % |"  # ratios 0.99, 0.975
    assert lines[6] == "| `sync` | 900 | 800–1,000 | 0.82× | 18.3 % |"  # ratios 0.80, 0.833
    assert "- audit sync (sync vs off): cost 18.3 % (ratio 0.82×), target ≤ 15 %: MISSED" in lines
    assert "- audit buffered (buffered vs off): cost 1.8 % (ratio 0.98×), target ≤ 5 %: holds" in lines


def test_off_runner_gives_from_config_a_null_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlward.audit.recorder import NullSink
    from sqlward.gateway.gatekeeper import Gatekeeper

    seen: list[object] = []

    def fake(cls: type, config: object, audit_sink: object = None, **kw: object) -> object:
        seen.append(audit_sink)
        return "gk"

    monkeypatch.setattr(Gatekeeper, "from_config", classmethod(fake))
    audit_off_gateway.install_null_sink()
    audit_off_gateway.install_null_sink()  # idempotent: not wrapped twice
    assert Gatekeeper.from_config(object()) == "gk"
    explicit = object()
    Gatekeeper.from_config(object(), explicit)
    assert isinstance(seen[0], NullSink) and seen[1] is explicit
