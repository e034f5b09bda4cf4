"""Issue 12, item 6: every enumerated value of the config and policy files is validated.

A spelling mistake (`operations = ["dorp"]`, `action = "dney"`, `[guardrails.drop-tabel]`,
`function = "redcat"`, `classifiers = ["credit_card"]`, `days = ["thur"]`) is an error naming the
file, the `$.path` and the valid values (close matches first), in the main config, in TOML and
YAML policy files, from `sqlward check-config` and from a policy reload (which keeps the running
policy). The valid values come from the code that implements them (`policy.vocabulary`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import get_args

import pytest
import trio

from sqlward.gateway import cli
from sqlward.gateway.config import ConfigError, load_config
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.masking import classifiers, functions
from sqlward.masking.model import Classifier, DatePart, MaskFunction, MaskRule
from sqlward.masking.policy import rule_problems as mask_rule_problems
from sqlward.policy import vocabulary
from sqlward.policy.analysis import analyse
from sqlward.policy.guardrails import CATALOGUE
from sqlward.policy.model import Identity, TargetInfo
from sqlward.policy.rules import Rule, rule_problems

from tests.support.auditsink import ListSink

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[gateway]
name = "dev"
{policy_files}

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[targets]]
name = "app"
protocol = "postgres"
environment = "development"
dsn = "postgresql://svc@127.0.0.1:5432/app"
"""

THREE_RULES = '[[rules]]\nid = "a"\naction = "allow"\n\n[[rules]]\nid = "b"\naction = "deny"\n\n'


def _main(tmp_path: Path, extra: str, policy_files: str = "") -> str:
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(MINIMAL).replace("{policy_files}", policy_files) + textwrap.dedent(extra))
    return str(path)


def _error(tmp_path: Path, extra: str) -> ConfigError:
    path = _main(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.file == path
    return info.value


def _policy_error(tmp_path: Path, name: str, text: str) -> ConfigError:
    (tmp_path / name).write_text(text)
    config = _main(tmp_path, "", f'policy_files = ["{name}"]')
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    assert info.value.file == str(tmp_path / name)
    return info.value


def _line(err: ConfigError, path: str) -> str:
    """The message of the problem at `path` (exactly one)."""
    lines = [p.message for p in err.problems if p.path == path]
    assert len(lines) == 1, f"expected one problem at {path} in:\n{err}"
    assert f"{err.file}: {path}: {lines[0]}" in str(err)
    return lines[0]


def _expected(message: str) -> list[str]:
    """The values listed after 'expected one of: ' in a message."""
    assert "expected one of: " in message, message
    return message.split("expected one of: ", 1)[1].rstrip(")").split(", ")


# ------------------------------------------------------------------------------ operations


def test_every_operation_the_analysis_emits_is_in_the_vocabulary() -> None:
    corpus = {
        "postgres": [
            "SELECT 1", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1", "DELETE FROM t", "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "COPY t TO STDOUT", "DROP TABLE t", "CREATE TABLE t (a int)", "ALTER TABLE t ADD COLUMN b int",
            "TRUNCATE t", "GRANT SELECT ON t TO bob", "REVOKE SELECT ON t FROM bob", "SET search_path TO a",
            "RESET search_path", "SHOW search_path", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s",
            "RELEASE SAVEPOINT s", "CALL p()", "EXPLAIN SELECT 1", "EXPLAIN ANALYZE DELETE FROM t",
            "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p", "LISTEN ch", "NOTIFY ch", "LOCK TABLE t",
            "COMMENT ON TABLE t IS 'x'", "ANALYZE t", "VACUUM t", "DO $$ BEGIN END $$", "DISCARD ALL",
            "CHECKPOINT", "SELECT * INTO n FROM t", "CLUSTER t", "SELECT 'unterminated", "FROBNICATE x",
        ],
        "mysql": [
            "USE shop", "KILL 3", "CHANGE USER", "SHOW TABLES", "REPLACE INTO t VALUES (1)",
            "LOAD DATA LOCAL INFILE 'x' INTO TABLE t", "DESCRIBE t", "FLUSH TABLES", "UNLOCK TABLES",
            "PREPARE s FROM 'SELECT 1'", "RENAME TABLE a TO b", "START TRANSACTION", "HANDLER t OPEN",
        ],
    }
    seen: set[str] = set()
    for dialect, texts in corpus.items():
        for sql in texts:
            for st in analyse(sql, dialect).statements:
                ops = {st.operation, *st.operations}
                assert ops <= vocabulary.operations(), (sql, ops - vocabulary.operations())
                seen |= ops
    for op in ("select", "insert", "update", "delete", "merge", "copy", "drop", "create", "alter", "truncate",
               "grant", "revoke", "set", "show", "use", "call", "explain", "begin", "commit", "rollback",
               "savepoint", "kill", "change user", "prepare", "execute", "unknown", "other"):
        assert op in vocabulary.operations()
        assert op in seen
    for op in vocabulary.operations():
        assert rule_problems(Rule(id="r", action="deny", operations=(op,))) == []


def test_rule_operation_typo_in_the_main_config(tmp_path: Path) -> None:
    err = _error(tmp_path, '[[rules]]\nid = "no-drop"\noperations = ["select", "dorp"]\naction = "deny"\n')
    message = _line(err, "$.rules[0].operations[1]")
    assert "unknown operation 'dorp'" in message
    values = _expected(message)
    assert values[0] == "drop"
    assert {"truncate", "select", "change user", "grant"} <= set(values)
    assert sorted(values) == sorted(vocabulary.operations())


def test_rule_operations_that_never_match_are_errors(tmp_path: Path) -> None:
    # RESET is operation "set"; LOAD DATA is "unknown": a rule naming them never matched.
    err = _error(tmp_path, '[[rules]]\nid = "x"\noperations = ["reset", "load", "DROP"]\naction = "allow"\n')
    assert "unknown operation 'reset'" in _line(err, "$.rules[0].operations[0]")
    assert "unknown operation 'load'" in _line(err, "$.rules[0].operations[1]")
    assert not [p for p in err.problems if p.path == "$.rules[0].operations[2]"]  # matched without regard to case


@pytest.mark.parametrize(
    "name, text",
    [
        ("p.toml", THREE_RULES + '[[rules]]\nid = "c"\noperations = ["dorp"]\naction = "deny"\n'),
        ("p.yaml", "rules:\n  - {id: a, action: allow}\n  - {id: b, action: deny}\n  - id: c\n    operations: [dorp]\n    action: deny\n"),
    ],
)
def test_rule_operation_typo_in_policy_files(tmp_path: Path, name: str, text: str) -> None:
    err = _policy_error(tmp_path, name, text)
    message = _line(err, "$.rules[2].operations[0]")
    assert "unknown operation 'dorp'" in message and _expected(message)[0] == "drop"


# ------------------------------------------------------------------------ Literal-typed keys


def test_rule_action_typo_lists_the_actions(tmp_path: Path) -> None:
    message = _line(_error(tmp_path, '[[rules]]\nid = "x"\naction = "dney"\n'), "$.rules[0].action")
    assert "Invalid enum value 'dney'" in message
    assert _expected(message)[0] == "deny" and sorted(_expected(message)) == ["allow", "deny", "review"]


def test_environment_default_action_typo(tmp_path: Path) -> None:
    err = _error(tmp_path, '[environments.production]\ndefault_action = "alow"\n')
    message = _line(err, "$.environments.production.default_action")
    assert "Invalid enum value 'alow'" in message and _expected(message) == ["allow", "deny"]


@pytest.mark.parametrize(
    "name, text, path, first",
    [
        ("p.toml", '[environments.prod]\ndefault_action = "dny"\n', "$.environments.prod.default_action", "deny"),
        ("p.yaml", "environments:\n  prod:\n    default_action: dny\n", "$.environments.prod.default_action", "deny"),
        ("p.yaml", "rules:\n  - id: x\n    action: reveiw\n", "$.rules[0].action", "review"),
        ("p.toml", '[guardrails.truncate]\naction = "reveiw"\n', "$.guardrails.truncate.action", "review"),
        ("p.yaml", "guardrails:\n  mass-write:\n    on_unknown: alow\n", "$.guardrails.mass-write.on_unknown", "allow"),
        ("p.toml", '[[masks]]\nid = "m"\ncolumns = ["ssn"]\nfunction = "redcat"\n', "$.masks[0].function", "redact"),
        ("p.yaml", "masks:\n  - id: m\n    columns: [ssn]\n    function: parital\n", "$.masks[0].function", "partial"),
        ("p.toml", '[[masks]]\nid = "m"\nclassifiers = ["email", "credit_card"]\n', "$.masks[0].classifiers[1]", "card"),
        ("p.toml", '[[masks]]\nid = "m"\ncolumns = ["born"]\nfunction = "truncate_date"\ntruncate = "yaer"\n', "$.masks[0].truncate", "year"),
    ],
)
def test_enum_typos_in_policy_files(tmp_path: Path, name: str, text: str, path: str, first: str) -> None:
    message = _line(_policy_error(tmp_path, name, text), path)
    assert _expected(message)[0] == first, message


def test_mask_typos_in_the_main_config(tmp_path: Path) -> None:
    message = _line(_error(tmp_path, '[[masks]]\nid = "m"\ncolumns = ["ssn"]\nfunction = "hsah"\n'), "$.masks[0].function")
    assert _expected(message)[0] == "hash" and sorted(_expected(message)) == sorted(get_args(MaskFunction))
    message = _line(_error(tmp_path, '[[masks]]\nid = "m"\nclassifiers = ["ibna"]\n'), "$.masks[0].classifiers[0]")
    assert _expected(message)[0] == "iban" and sorted(_expected(message)) == sorted(get_args(Classifier))


def test_config_py_enums_list_their_values(tmp_path: Path) -> None:
    message = _line(_error(tmp_path, '[identity]\non_token_expiry = "logout"\n'), "$.identity.on_token_expiry")
    assert sorted(_expected(message)) == ["close", "refuse"]
    message = _line(_error(tmp_path, '[[access]]\naction = "alow"\n'), "$.access[0].action")
    assert _expected(message)[0] == "allow"


# ------------------------------------------------------------------------------- masks


def test_mask_arguments_only_with_the_function_that_takes_them(tmp_path: Path) -> None:
    err = _error(tmp_path, '[[masks]]\nid = "m"\ncolumns = ["ssn"]\nfunction = "email"\nkeep_last = 2\n')
    assert "partial" in _line(err, "$.masks[0].keep_last")
    err = _error(tmp_path, '[[masks]]\nid = "m"\ncolumns = ["ssn"]\nfunction = "partial"\ntruncate = "year"\n')
    assert "truncate_date" in _line(err, "$.masks[0].truncate")
    assert mask_rule_problems(MaskRule(id="m", columns=("ssn",), function="partial", keep_first=1, keep_last=2)) == []
    assert mask_rule_problems(MaskRule(id="m", columns=("born",), function="truncate_date", truncate="year")) == []
    assert MaskRule(id="m", columns=("ssn",), function="partial").spec().keep_last == 4  # defaults unchanged
    assert MaskRule(id="m", columns=("d",), function="truncate_date").spec().truncate == "month"


def test_mask_vocabulary_is_what_the_implementations_do() -> None:
    for name in get_args(MaskFunction):
        key = b"k" if name == "hash" else b""
        assert functions.make_masker(functions_spec(name), "text", key, "postgres") is not None
    assert set(classifiers.CLASSIFIERS) == set(get_args(Classifier)) == set(classifiers._FINDERS)
    for part in get_args(DatePart):
        masker = functions.make_masker(functions_spec("truncate_date", truncate=part), "date", b"", "postgres")
        assert masker(b"2024-03-05") is not None


def functions_spec(name: str, **kw: object):  # noqa: ANN201 - a MaskSpec
    from sqlward.masking.model import MaskSpec

    return MaskSpec(function=name, rule_id="r", **kw)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- guardrails


def test_unknown_guardrail_id_lists_the_catalogue_close_first(tmp_path: Path) -> None:
    err = _error(tmp_path, '[guardrails.drop-tabel]\nenvironments = ["production"]\nmax_rowz = 3\n')
    message = _line(err, "$.guardrails.drop-tabel")
    assert "unknown guardrail" in message
    assert _expected(message)[0] == "drop-table" and sorted(_expected(message)) == sorted(CATALOGUE)
    assert [p.path for p in err.problems] == ["$.guardrails.drop-tabel"]  # not its options


def test_unknown_guardrail_option_lists_that_guardrails_keys(tmp_path: Path) -> None:
    message = _line(_error(tmp_path, "[guardrails.mass-write]\nmax_row = 5\n"), "$.guardrails.mass-write.max_row")
    assert "unknown field" in message
    values = _expected(message)
    assert values[0] == "max_rows"
    assert sorted(values) == sorted(["environments", "action", "approvers", "approval", "max_rows", "timeout", "on_unknown"])
    message = _line(_error(tmp_path, "[guardrails.truncate]\nenvironment = []\n"), "$.guardrails.truncate.environment")
    assert _expected(message)[0] == "environments" and "tables" not in _expected(message)
    message = _line(_error(tmp_path, '[guardrails.drop-table]\ntables = ["t"]\n'), "$.guardrails.drop-table.tables")
    assert "takes no option 'tables'" in message


def test_guardrail_typos_in_yaml(tmp_path: Path) -> None:
    err = _policy_error(tmp_path, "g.yaml", "guardrails:\n  select-without-limt:\n    tables: [users]\n")
    assert _expected(_line(err, "$.guardrails.select-without-limt"))[0] == "select-without-limit"
    err = _policy_error(tmp_path, "g.yaml", "guardrails:\n  multi-statement:\n    max_statement: 2\n")
    assert _expected(_line(err, "$.guardrails.multi-statement.max_statement"))[0] == "max_statements"


def test_guardrail_vocabulary_is_the_catalogue() -> None:
    assert vocabulary.guardrail_ids() == tuple(CATALOGUE)
    for gid, g in CATALOGUE.items():
        assert set(vocabulary.guardrail_keys(gid)) == {"environments", "action", "approvers", "approval", *g.options}


# ------------------------------------------------------------------- days, agents, globs


def test_day_typo_names_the_entry(tmp_path: Path) -> None:
    message = _line(_error(tmp_path, '[[rules]]\nid = "x"\ndays = ["mon", "thur"]\naction = "deny"\n'), "$.rules[0].days")
    assert "unknown day 'thur' at days[1]" in message and _expected(message)[0] == "thu"
    assert rule_problems(Rule(id="x", action="deny", days=("Mon", "FRI"))) == []


def test_agents_must_be_a_boolean(tmp_path: Path) -> None:
    err = _error(tmp_path, '[[rules]]\nid = "x"\nagents = "yes"\naction = "deny"\n')
    assert "Expected `bool" in _line(err, "$.rules[0].agents")


@pytest.mark.parametrize(
    "key, value, index",
    [("tables", '["public.users", "public..users"]', 1), ("tables", '["shop."]', 0), ("columns", '["users."]', 0), ("columns", '[".ssn"]', 0)],
)
def test_globs_with_an_empty_name_part_never_match(tmp_path: Path, key: str, value: str, index: int) -> None:
    err = _error(tmp_path, f'[[rules]]\nid = "x"\n{key} = {value}\naction = "deny"\n')
    assert "empty" in _line(err, f"$.rules[0].{key}[{index}]")


# ------------------------------------------------------------------ check-config, reload, examples


def test_check_config_reports_policy_file_typos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text("rules:\n  - id: x\n    operations: [delete, dorp]\n    action: deny\n")
    config = _main(tmp_path, "", 'policy_files = ["p.yaml"]')
    assert cli.main(["check-config", config]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'p.yaml'}: $.rules[0].operations[1]: unknown operation 'dorp'" in err
    assert "expected one of: drop," in err


def test_reload_with_a_typo_keeps_the_running_policy(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[[rules]]\nid = "no-drop"\noperations = ["drop"]\naction = "deny"\n')
    sink = ListSink()
    gk = Gatekeeper.from_config(load_config(_main(tmp_path, "", 'policy_files = ["p.toml"]'), env={}), sink)
    try:
        alice = Identity(subject="alice")
        app = TargetInfo(name="app", protocol="postgres", environment="development")
        assert gk.decide(gk.analyse("DROP TABLE t", "postgres"), alice, app).rule_id == "no-drop"
        policy.write_text('[[rules]]\nid = "no-drop"\noperations = ["dorp"]\naction = "deny"\n')
        error = trio.run(gk.reload_policy)
        assert error is not None and f"{policy}: $.rules[0].operations[0]: unknown operation 'dorp'" in error
        assert gk.policy_version == 1
        assert gk.decide(gk.analyse("DROP TABLE t", "postgres"), alice, app).rule_id == "no-drop"
        assert sink.events[-1]["error"] == error
    finally:
        gk.close()


def test_shipped_examples_still_load(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLWARD_ALICE_SECRET", "alice-secret")
    monkeypatch.setenv("SQLWARD_ANALYST_SECRET", "a")
    # The development example needs only its two secrets; the production-shaped examples and
    # the image's and Kubernetes' configs need their variables and files (tests/unit/
    # test_examples.py and tests/deploy check them with what their READMEs name).
    examples = [REPO / "deploy" / "examples" / "dev.toml"]
    for path in examples:
        assert cli.main(["check-config", str(path)]) == 0, capsys.readouterr().err


def test_timezone_typo_suggests_close_names(tmp_path: Path) -> None:
    message = _line(_error(tmp_path, '[[rules]]\nid = "x"\nhours = "09:00-18:00"\ntimezone = "Europe/Pari"\naction = "deny"\n'), "$.rules[0].timezone")
    assert "unknown time zone 'Europe/Pari'" in message and "did you mean Europe/Paris" in message


def test_mask_and_guardrail_globs_with_an_empty_name_part(tmp_path: Path) -> None:
    err = _error(tmp_path, '[[masks]]\nid = "m"\ncolumns = ["customers.email", "customers..ssn"]\n')
    assert "empty" in _line(err, "$.masks[0].columns[1]")
    err = _error(tmp_path, '[guardrails.select-without-limit]\ntables = ["users", "shop."]\n')
    assert "empty" in _line(err, "$.guardrails.select-without-limit.tables[1]")


def test_yaml_keys_that_are_not_strings(tmp_path: Path) -> None:
    # YAML reads unquoted on / off / yes / no as booleans and 1 as a number: never a crash.
    err = _policy_error(tmp_path, "p.yaml", "environments:\n  on: {default_action: deny}\nguardrails:\n  1: {}\n")
    assert "quote" in _line(err, "$.environments[true]")
    assert "quote" in _line(err, "$.guardrails[1]")


def test_guardrail_approvers_only_with_review(tmp_path: Path) -> None:
    err = _error(tmp_path, '[guardrails.truncate]\napprovers = ["group:sre"]\n')
    assert "only a review guardrail has approvers" in _line(err, "$.guardrails.truncate.approvers")
    load_config(_main(tmp_path, '[guardrails.truncate]\naction = "review"\napprovers = ["group:sre"]\n'), env={})


# -- target and environment names: a misspelt configured name would never match -------------

PROD_TARGET = """
[[targets]]
name = "app-prod"
protocol = "postgres"
environment = "production"
dsn = "postgresql://svc@127.0.0.1:5432/app"
"""


@pytest.mark.parametrize("entry, path, fragment", [
    ('[[rules]]\nid = "r"\nenvironments = ["prodution"]\naction = "deny"\n', "$.rules[0].environments[0]",
     "'prodution' names no configured environment, so this never matches; did you mean 'production'?"),
    ('[[rules]]\nid = "r"\ntargets = ["App-Prod"]\naction = "deny"\n', "$.rules[0].targets[0]",
     "did you mean 'app-prod'?"),
    ('[[rules]]\nid = "r"\ntargets = ["app-prd"]\naction = "deny"\n', "$.rules[0].targets[0]", "(configured: app, app-prod)"),
    ('[[masks]]\nid = "m"\ncolumns = ["*.ssn"]\nfunction = "redact"\nenvironments = ["Production"]\n',
     "$.masks[0].environments[0]", "did you mean 'production'?"),
    ('[guardrails.drop-table]\nenvironments = ["developement"]\n', "$.guardrails.drop-table.environments[0]",
     "did you mean 'development'?"),
])
def test_misspelt_target_or_environment_names_are_errors(tmp_path: Path, entry: str, path: str, fragment: str) -> None:
    err = _error(tmp_path, PROD_TARGET + "\n" + entry)
    assert any(p.path == path and fragment in p.message for p in err.problems), str(err)


def test_names_that_are_globs_or_far_from_every_configured_one_are_fine(tmp_path: Path) -> None:
    # A policy shared by gateways may name environments and targets this one does not have.
    load_config(_main(tmp_path, PROD_TARGET + '\n[[rules]]\nid = "r"\nenvironments = ["staging", "prod*"]\n'
                      'targets = ["reporting", "app-*"]\naction = "deny"\n'))


def test_misspelt_names_in_policy_files_name_the_file(tmp_path: Path) -> None:
    err = _policy_error(tmp_path, "team.toml", '[[rules]]\nid = "r"\ntargets = ["ap"]\naction = "deny"\n')
    assert err.problems[0].path == "$.rules[0].targets[0]" and "did you mean 'app'?" in err.problems[0].message, str(err)
