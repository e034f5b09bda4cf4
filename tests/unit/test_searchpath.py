"""policy.searchpath: the path at each statement of a request and the candidates of a name, and
the engine's conservative use of them (deny when any candidate matches, allow when all do)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlward.policy.engine import Engine
from sqlward.policy.model import Identity, TargetInfo
from sqlward.policy.rules import EnvironmentPolicy, Rule
from sqlward.policy.searchpath import (
    LOST,
    SearchPath,
    Unresolvable,
    effective,
    needs_catalogue,
    parse_path,
    resolve,
    trace,
)

START = SearchPath(paths=(("pg_catalog", "public"),), user="eve", reset=("pg_catalog", "public"))
ENGINE = Engine(
    rules=(
        Rule(id="no-vault", tables=("vault.*",), action="deny"),
        Rule(id="public-ok", tables=("public.*",), action="allow"),
    ),
    environments={"production": EnvironmentPolicy(default_action="deny")},
    version=1,
)
EVE = Identity(subject="eve")
PROD = TargetInfo(name="app", protocol="postgres", environment="production")


def paths_at(sql: str, path: SearchPath = START) -> tuple[list[tuple[tuple[str, ...], ...]], SearchPath | None]:
    per, after = trace(path, ENGINE.analyse(sql, "postgres"), sql)
    return [p.paths for p in per], after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vault, public", ["vault", "public"]),
        ('"Vault", "$user"', ["Vault", "$user"]),
        ("  a ,b  ", ["a", "b"]),
        ("", []),
        ("a,", None),
        ("a b", None),
        ('"unterminated', None),
    ],
)
def test_parse_path(value: str, expected: list[str] | None) -> None:
    assert parse_path(value) == expected


def test_effective_places_pg_catalog_and_resolves_user() -> None:
    assert effective(["$user", "public"], "eve") == ("pg_catalog", "eve", "public")
    assert effective(["public", "pg_catalog"], "eve") == ("public", "pg_catalog")
    assert effective(["pg_temp_3", "public"], "") == ("pg_catalog", "pg_temp", "public")


@pytest.mark.parametrize(
    ("sql", "after"),
    [
        ("SET search_path TO vault", ("pg_catalog", "vault")),
        ("SET SESSION search_path = vault, public", ("pg_catalog", "vault", "public")),
        ("set local SEARCH_PATH to VAULT", ("pg_catalog", "vault")),
        ('SET search_path TO "Vault"', ("pg_catalog", "Vault")),
        ("SET search_path TO 'vault, public'", ("pg_catalog", "vault, public")),  # one name, quoted
        ('SET "search_path" = vault', ("pg_catalog", "vault")),
        ('SET search_path TO "$user", public', ("pg_catalog", "eve", "public")),
    ],
)
def test_set_moves_the_path_for_the_statements_after_it(sql: str, after: tuple[str, ...]) -> None:
    per, moved = paths_at(sql + "; SELECT * FROM secrets")
    assert per[1] == (after,)
    assert moved is not None and moved.paths == (after,)


@pytest.mark.parametrize("sql", ["RESET search_path", "RESET ALL", "DISCARD ALL", "SET search_path TO DEFAULT"])
def test_reset_returns_to_the_value_at_session_start(sql: str) -> None:
    moved_path = SearchPath(paths=(("pg_catalog", "vault"),), user="eve", reset=("pg_catalog", "public"))
    per, after = paths_at(sql + "; SELECT 1", moved_path)
    assert per[1] == (("pg_catalog", "public"),)


def test_set_config_adds_a_candidate_since_it_may_not_run() -> None:
    per, after = paths_at("SELECT set_config('search_path', 'vault', false) WHERE false; SELECT * FROM t")
    assert set(per[1]) == {("pg_catalog", "public"), ("pg_catalog", "vault")}
    per, _ = paths_at("SELECT SET_CONFIG($$search_path$$, $$vault$$, true); SELECT * FROM t")
    assert ("pg_catalog", "vault") in per[1]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('search_path', 'va' || 'ult', false)",
        "SELECT set_config(name, 'vault', false) FROM settings",
        "CALL proc()",
        "DO $$ BEGIN PERFORM set_config('search_path', 'vault', false); END $$",
        "SELECT my_function()",
        "SELECT query_to_xml('select 1', true, true, '')",
        "SET ROLE other",
    ],
)
def test_what_may_set_the_path_to_anything(sql: str) -> None:
    per, after = trace(START, ENGINE.analyse(sql, "postgres"), sql)
    assert after is not None and after.unknown


def test_statements_that_cannot_move_the_path_cost_nothing() -> None:
    for sql in ("SELECT lower(name), count(*) FROM t GROUP BY 1", "UPDATE t SET a = now() WHERE id = 1", "SET TIME ZONE UTC"):
        assert paths_at(sql)[1] is None, sql


def test_the_end_of_a_transaction_may_restore_any_earlier_list() -> None:
    inside = SearchPath(paths=(("pg_catalog", "vault"),), history=(("pg_catalog", "public"),), user="eve")
    for end in ("COMMIT", "ROLLBACK", "ROLLBACK TO SAVEPOINT a", "ABORT", "END"):
        per, after = paths_at(f"{end}; SELECT * FROM t", inside)
        assert set(per[1]) == {("pg_catalog", "vault"), ("pg_catalog", "public")}, end
    lost = SearchPath(paths=(("pg_catalog", "vault"),), history=(LOST,), user="eve")
    assert paths_at("COMMIT", lost)[1].unknown  # type: ignore[union-attr]


def test_resolution_uses_the_catalogue_when_a_list_has_several_schemas() -> None:
    a = ENGINE.analyse("SELECT * FROM secrets JOIN orders USING (id)", "postgres")
    sp = SearchPath(paths=(("pg_catalog", "vault", "public"),))
    assert needs_catalogue([sp])
    held = {"secrets": ("public.secrets",), "orders": ("vault.orders", "public.orders")}
    names = dict(resolve(a, [sp], lambda n: held.get(n, ()))[0])
    assert names == {"secrets": ("public.secrets",), "orders": ("vault.orders",)}
    # Without a catalogue, every schema of the list is a candidate.
    names = dict(resolve(a, [sp], None)[0])
    assert names["secrets"] == ("vault.secrets", "public.secrets")
    # pg_catalog only for pg_* names; pg_temp never.
    b = ENGINE.analyse("SELECT * FROM pg_class, t", "postgres")
    names = dict(resolve(b, [SearchPath(paths=(("pg_temp", "pg_catalog", "public"),))], None)[0])
    assert names == {"pg_class": ("pg_catalog.pg_class", "public.pg_class"), "t": ("public.t",)}


def test_an_unknown_path_needs_the_catalogue() -> None:
    a = ENGINE.analyse("SELECT * FROM secrets", "postgres")
    unknown = SearchPath(unknown="a CALL may change search_path")
    with pytest.raises(Unresolvable):
        resolve(a, [unknown], None)
    names = dict(resolve(a, [unknown], lambda n: ("public.secrets", "vault.secrets"))[0])
    assert names == {"secrets": ("public.secrets", "vault.secrets")}


@pytest.mark.parametrize(
    ("candidates", "action", "rule"),
    [
        (("vault.secrets",), "deny", "no-vault"),
        (("public.secrets",), "allow", "public-ok"),
        (("public.secrets", "vault.secrets"), "deny", "no-vault"),  # deny: any candidate
        (("public.secrets", "other.secrets"), "deny", "default"),  # allow: every candidate
    ],
)
def test_the_engine_reads_candidates_conservatively(candidates: tuple[str, ...], action: str, rule: str) -> None:
    a = ENGINE.analyse("SELECT id FROM secrets", "postgres")
    d = ENGINE.decide(a, EVE, PROD, resolution=((("secrets", candidates),),))
    assert (d.action, d.rule_id) == (action, rule)


SCHEMAS = st.sampled_from(["vault", "public", '"$user"', "pg_catalog", "pg_temp", '"Vault"', "other"])
STEPS = st.one_of(
    st.lists(SCHEMAS, min_size=1, max_size=3).map(lambda s: f"SET search_path TO {', '.join(s)}"),
    st.lists(SCHEMAS, min_size=1, max_size=3).map(lambda s: f"SET LOCAL search_path = {', '.join(s)}"),
    st.lists(SCHEMAS, min_size=1, max_size=3).map(
        lambda s: "SELECT set_config('search_path', '" + ", ".join(s).replace("'", "''") + "', false)"
    ),
    st.sampled_from(["RESET search_path", "RESET ALL", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT a",
                     "ROLLBACK TO SAVEPOINT a", "SELECT 1"]),
)


def _first_user_schema(step: str) -> str | None:
    """The schema a bare name resolves to after this step (every schema holds the table), or
    None when the step sets no list."""
    if step.startswith(("RESET",)):
        return "public"
    if not step.startswith(("SET", "SELECT set_config")):
        return None  # sets nothing
    listed = step.split("search_path", 1)[1]
    listed = listed.split("TO", 1)[-1].split("=", 1)[-1].strip(" ',").split("',")[0]
    for name in listed.split(","):
        name = name.strip().strip("'")
        if name in ("pg_catalog", "pg_temp"):
            continue
        return "eve" if name == '"$user"' else name.strip('"') if name.startswith('"') else name.lower()
    return ""  # system schemas only: no user table is found


@given(st.lists(STEPS, max_size=6))
def test_the_list_a_request_set_last_is_always_a_candidate(steps: list[str]) -> None:
    """Whatever a request does before a bare read, the schema its last path-setting step put
    first is among the read's candidates (later transaction ends may only add candidates)."""
    sql = "; ".join([*steps, "SELECT * FROM secrets"])
    analysis = ENGINE.analyse(sql, "postgres")
    per, _ = trace(START, analysis, sql)
    held = ("vault.secrets", "public.secrets", "other.secrets", "eve.secrets", "Vault.secrets")
    resolution = resolve(analysis, per, lambda n: held if n == "secrets" else ())
    last = dict(resolution[-1])["secrets"]
    firsts = [f for f in map(_first_user_schema, steps) if f is not None]
    if firsts and firsts[-1]:
        assert f"{firsts[-1]}.secrets" in last, (sql, last)
    elif firsts:
        assert last, (sql, last)  # never no table at all
    else:
        assert last == ("public.secrets",)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE pg_settings SET setting = 'vault' WHERE name = 'search_path'",
        "UPDATE pg_catalog.pg_settings SET setting = 'vault' WHERE name = 'search_path'",
        "FETCH 10 FROM c",
        "MOVE NEXT IN c",
    ],
)
def test_statements_that_run_set_config_out_of_sight(sql: str) -> None:
    per, after = trace(START, ENGINE.analyse(sql, "postgres"), sql)
    assert after is not None and after.unknown


def test_a_quoted_set_config_is_read_too() -> None:
    per, after = paths_at("""SELECT "set_config"('search_path', 'vault', false); SELECT * FROM t""")
    assert ("pg_catalog", "vault") in per[1]
