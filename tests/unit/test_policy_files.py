"""Policy files (gateway/policy_files.py) and Gatekeeper.reload_policy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from sqlward.gateway.config import ConfigError, load_config
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.gateway.policy_files import load_policy
from sqlward.policy.model import Identity, TargetInfo

ALICE = Identity(subject="alice", verified_by="static")
APP = TargetInfo(name="app", protocol="postgres", environment="development", database="app")


from tests.support.auditsink import ListSink as Events


def _config(tmp: Path, patterns: list[str], rules: str = "") -> Path:
    text = f"""
[gateway]
name = "t"
policy_files = {patterns!r}

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:0"

[[targets]]
name = "app"
protocol = "postgres"
environment = "development"
dsn = "postgresql://u@127.0.0.1:5432/app"
{rules}
""".replace("'", '"')
    path = tmp / "gw.toml"
    path.write_text(text)
    return path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    st = path.stat()  # make sure the mtime moves even on coarse clocks
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000 + time.monotonic_ns() % 1000))


def test_order_globs_yaml_toml_and_overrides(tmp_path: Path) -> None:
    _write(tmp_path / "policies" / "b.toml", '[[rules]]\nid = "b"\naction = "deny"\n[environments.production]\ndefault_action = "allow"\n')
    _write(tmp_path / "policies" / "a.toml", '[[rules]]\nid = "a"\naction = "allow"\n')
    _write(tmp_path / "extra.yaml", "rules:\n  - id: y\n    action: deny\nenvironments:\n  production:\n    default_action: deny\n")
    cfg = load_config(_config(tmp_path, ["policies/*.toml", "extra.yaml"], '[[rules]]\nid = "main"\naction = "allow"\n'))
    bundle = load_policy(cfg)
    assert [r.id for r in bundle.rules] == ["main", "a", "b", "y"]
    assert bundle.environments["production"].default_action == "deny"  # the later file wins
    assert [Path(f).name for f in bundle.files] == ["a.toml", "b.toml", "extra.yaml"]


def test_duplicate_rule_ids_across_files(tmp_path: Path) -> None:
    _write(tmp_path / "p1.toml", '[[rules]]\nid = "x"\naction = "deny"\n')
    _write(tmp_path / "p2.yaml", "rules:\n  - {id: x, action: allow}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(_config(tmp_path, ["p1.toml", "p2.yaml"]))
    assert ei.value.file.endswith("p2.yaml")
    assert ei.value.path == "$.rules[0].id"
    assert "duplicate rule id 'x'" in str(ei.value) and "p1.toml" in str(ei.value)


@pytest.mark.parametrize(
    ("name", "text", "path"),
    [
        ("bad.toml", '[[rules]]\nid = "x"\naction = "maybe"\n', "$.rules[0].action"),
        ("bad.yaml", "rules:\n  - id: x\n    action: deny\n    colour: red\n", "$.rules[0].colour"),
        ("bad.toml", '[environments.production]\ndefault_action = "perhaps"\n', "$.environments.production.default_action"),
        ("bad.yaml", "listeners: []\n", "$.listeners"),
        ("bad.yaml", "rules: [\n", "line"),
    ],
)
def test_errors_name_file_and_path(tmp_path: Path, name: str, text: str, path: str) -> None:
    _write(tmp_path / name, text)
    with pytest.raises(ConfigError) as ei:
        load_config(_config(tmp_path, [name]))
    assert ei.value.file.endswith(name)
    assert ei.value.path.startswith(path)


def test_missing_plain_file_is_an_error_but_empty_glob_is_not(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_config(tmp_path, ["nope.toml"]))
    assert ei.value.path == "$.gateway.policy_files[0]"
    assert load_policy(load_config(_config(tmp_path, ["policies/*.toml"]))).rules == ()


def test_reload_changes_decisions_and_bad_file_keeps_engine(tmp_path: Path) -> None:
    policy = tmp_path / "policies" / "p.toml"
    _write(policy, '[[rules]]\nid = "ok"\naction = "allow"\n')
    events = Events()
    gk = Gatekeeper.from_config(load_config(_config(tmp_path, ["policies/*.toml"])), events)
    sql = "select * from accounts"
    assert gk.decide(gk.analyse(sql, "postgres"), ALICE, APP).action == "allow"
    assert gk.policy_version == 1 and not gk.policy_changed()

    _write(policy, '[[rules]]\nid = "no-accounts"\noperations = ["select"]\ntables = ["accounts"]\naction = "deny"\n')
    assert gk.policy_changed()
    assert trio.run(gk.reload_policy) is None
    assert gk.policy_version == 2 and not gk.policy_changed()
    decision = gk.decide(gk.analyse(sql, "postgres"), ALICE, APP)
    assert (decision.action, decision.rule_id) == ("deny", "no-accounts")
    assert events.events[-1]["version"] == 2 and events.events[-1].get("error") is None
    assert events.events[-1]["files"] == [str(policy)]

    engine = gk._engine
    _write(policy, '[[rules]]\nid = "x"\naction = "sometimes"\n')
    error = trio.run(gk.reload_policy)
    assert error is not None and "p.toml" in error and "$.rules[0].action" in error
    assert gk._engine is engine and gk.policy_version == 2
    assert gk.decide(gk.analyse(sql, "postgres"), ALICE, APP).rule_id == "no-accounts"
    assert events.events[-1]["version"] == 2 and events.events[-1]["error"] == error

    _write(tmp_path / "policies" / "q.toml", "")  # a new file matching the glob
    assert gk.policy_changed()
