"""Unit tests for masking.policy: which rules apply to whom (`MaskingPolicy.for_identity`), which
columns they mask (`IdentityMasks.spec_for`, `table_masked`, `wire_specs`) and the validation of
`[[masks]]` rules (`rule_problems`). Pure: rules and catalogues are built by hand."""

from __future__ import annotations

import pytest

from sqlward.masking.model import Catalogue, ColumnInfo, MaskRule, MaskSpec, TableInfo
from sqlward.masking.policy import IdentityMasks, MaskingPolicy, MaskingSettings, rule_problems


def _table(name: str, columns: str, oid: int = 0) -> TableInfo:
    cols = tuple(ColumnInfo(name=c, kind="text", attnum=i + 1) for i, c in enumerate(columns.split()))
    return TableInfo(name=name, columns=cols, oid=oid)


def _catalogue(*tables: TableInfo, search_path: tuple[str, ...] = ("public",), version: int = 0) -> Catalogue:
    return Catalogue(tables={t.name: t for t in tables}, search_path=search_path, version=version)


PG_CAT = _catalogue(
    _table("public.customers", "id name email ssn", oid=16384),
    _table("public.orders", "id customer_id total", oid=16390),
    _table("archive.customers", "id email", oid=16400),
    version=3,
)
MY_CAT = _catalogue(
    _table("shop.customers", "id name email ssn"),
    _table("shop.orders", "id customer_id total"),
    search_path=(),
)


def _masks(*rules: MaskRule) -> IdentityMasks:
    return IdentityMasks(rules)


# --------------------------------------------------------------------------------------------
# MaskingPolicy.for_identity


def test_for_identity_returns_none_without_rules() -> None:
    policy = MaskingPolicy([])
    assert not policy
    assert policy.for_identity("alice", ["dev"], "pg-main", "production") is None


def test_for_identity_applies_rule_with_no_scope_everywhere() -> None:
    policy = MaskingPolicy([MaskRule(id="pii", columns=("*.email",))])
    assert policy
    masks = policy.for_identity("alice", [], "any-target", "any-env")
    assert masks is not None
    assert masks.key == ("pii",)


def test_for_identity_environments_select_rules() -> None:
    policy = MaskingPolicy([MaskRule(id="prod-only", columns=("ssn",), environments=("production",))])
    assert policy.for_identity("alice", [], "pg-main", "production") is not None
    assert policy.for_identity("alice", [], "pg-main", "staging") is None


def test_for_identity_targets_select_rules() -> None:
    policy = MaskingPolicy([MaskRule(id="main-only", columns=("ssn",), targets=("pg-main", "my-shop"))])
    assert policy.for_identity("alice", [], "my-shop", "production") is not None
    assert policy.for_identity("alice", [], "pg-other", "production") is None


def test_for_identity_exempt_identity_globs() -> None:
    policy = MaskingPolicy([MaskRule(id="pii", columns=("email",), exempt_identities=("svc-*", "carol@example.com"))])
    assert policy.for_identity("svc-reporting", [], "t", "e") is None
    assert policy.for_identity("carol@example.com", [], "t", "e") is None
    # globs are anchored: neither a prefix nor a suffix match exempts
    assert policy.for_identity("my-svc-reporting", [], "t", "e") is not None
    assert policy.for_identity("carol@example.com.evil", [], "t", "e") is not None
    assert policy.for_identity("bob", [], "t", "e") is not None


def test_for_identity_exempt_groups() -> None:
    policy = MaskingPolicy([MaskRule(id="pii", columns=("email",), exempt_groups=("dba", "privacy"))])
    assert policy.for_identity("alice", ["dev", "dba"], "t", "e") is None
    assert policy.for_identity("alice", ("privacy",), "t", "e") is None
    assert policy.for_identity("alice", ["dev"], "t", "e") is not None
    assert policy.for_identity("alice", [], "t", "e") is not None


def test_for_identity_keeps_only_the_rules_that_apply() -> None:
    policy = MaskingPolicy(
        [
            MaskRule(id="a", columns=("email",), exempt_groups=("dba",)),
            MaskRule(id="b", columns=("ssn",), environments=("staging",)),
            MaskRule(id="c", columns=("card",)),
        ]
    )
    masks = policy.for_identity("alice", ["dba"], "t", "production")
    assert masks is not None
    assert masks.key == ("c",)
    assert masks.spec_for("public.customers.email") is None
    assert masks.spec_for("public.customers.ssn") is None
    assert masks.spec_for("public.customers.card") == MaskSpec(rule_id="c")


def test_for_identity_none_when_every_rule_exempts() -> None:
    policy = MaskingPolicy(
        [
            MaskRule(id="a", columns=("email",), exempt_identities=("alice",)),
            MaskRule(id="b", columns=("ssn",), exempt_groups=("hr",)),
        ]
    )
    assert policy.for_identity("alice", ["hr"], "t", "e") is None


def test_for_identity_caches_the_same_object() -> None:
    policy = MaskingPolicy([MaskRule(id="pii", columns=("email",), exempt_groups=("dba",))])
    first = policy.for_identity("alice", ["dev"], "t", "e")
    assert first is not None
    assert policy.for_identity("alice", ["dev"], "t", "e") is first
    assert policy.for_identity("alice", ("dev",), "t", "e") is first  # list or tuple of groups
    other = policy.for_identity("bob", ["dev"], "t", "e")
    assert other is not None and other is not first
    assert policy.for_identity("alice", ["dba"], "t", "e") is None
    assert policy.for_identity("alice", ["dba"], "t", "e") is None  # cached None too


def test_masking_settings_defaults_fail_closed() -> None:
    settings = MaskingSettings()
    assert settings.mask_all_on_doubt is False
    assert settings.hash_key == ""


# --------------------------------------------------------------------------------------------
# IdentityMasks.spec_for


def test_spec_for_one_part_pattern_names_a_column_of_any_table() -> None:
    masks = _masks(MaskRule(id="ssn", columns=("ssn",), function="partial", keep_last=4))
    expected = MaskSpec(function="partial", rule_id="ssn", keep_last=4)
    assert masks.spec_for("public.customers.ssn") == expected
    assert masks.spec_for("shop.employees.ssn") == expected
    assert masks.spec_for("ssn") == expected
    assert masks.spec_for("public.customers.ssn_hash") is None
    assert masks.spec_for("public.ssn.id") is None  # a table called ssn is not a column


def test_spec_for_two_part_pattern_names_a_table_in_any_schema() -> None:
    masks = _masks(MaskRule(id="email", columns=("customers.email",), function="email"))
    assert masks.spec_for("public.customers.email") == MaskSpec(function="email", rule_id="email")
    assert masks.spec_for("shop.customers.email") == MaskSpec(function="email", rule_id="email")
    assert masks.spec_for("customers.email") is not None
    assert masks.spec_for("public.orders.email") is None
    assert masks.spec_for("public.customers.name") is None
    assert masks.spec_for("public.old_customers.email") is None


def test_spec_for_three_part_pattern_names_one_schema() -> None:
    masks = _masks(MaskRule(id="email", columns=("public.customers.email",)))
    assert masks.spec_for("public.customers.email") is not None
    assert masks.spec_for("shop.customers.email") is None
    assert masks.spec_for("archive.customers.email") is None


@pytest.mark.parametrize(
    "pattern, source, expected",
    [
        ("*.email", "public.customers.email", True),
        ("*.email", "shop.orders.email", True),
        ("cust*.e?ail", "public.customers.email", True),
        ("cust*.e?ail", "public.customers.e_mail", False),
        ("cust*.e?ail", "public.orders.email", False),
        ("*.*.card_[0-9]", "shop.payments.card_7", True),
        ("*.*.card_[0-9]", "shop.payments.card_x", False),
        ("s*.customers.*", "shop.customers.anything", True),
        ("s*.customers.*", "public.customers.anything", False),
    ],
)
def test_spec_for_globs(pattern: str, source: str, expected: bool) -> None:
    masks = _masks(MaskRule(id="r", columns=(pattern,)))
    assert (masks.spec_for(source) is not None) is expected


def test_spec_for_is_case_insensitive() -> None:
    masks = _masks(MaskRule(id="r", columns=("Public.Customers.EMAIL",)))
    assert masks.spec_for("public.customers.email") is not None
    assert masks.spec_for("PUBLIC.CUSTOMERS.Email") is not None
    assert masks.spec_for("Shop.Customers.Email") is None


def test_spec_for_first_matching_rule_wins() -> None:
    masks = _masks(
        MaskRule(id="classifiers-only", classifiers=("card",), function="null"),  # names no column
        MaskRule(id="specific", columns=("customers.email",), function="email"),
        MaskRule(id="broad", columns=("*.email", "ssn"), function="hash"),
    )
    assert masks.spec_for("public.customers.email") == MaskSpec(function="email", rule_id="specific")
    assert masks.spec_for("public.orders.email") == MaskSpec(function="hash", rule_id="broad")
    assert masks.spec_for("public.orders.ssn") == MaskSpec(function="hash", rule_id="broad")
    # asking again (cached) gives the same answers
    assert masks.spec_for("public.customers.email") == MaskSpec(function="email", rule_id="specific")


def test_spec_for_carries_the_rule_parameters() -> None:
    rule = MaskRule(id="born", columns=("born",), function="truncate_date", truncate="year", keep_first=1, keep_last=2)
    assert _masks(rule).spec_for("public.people.born") == MaskSpec(
        function="truncate_date", rule_id="born", keep_first=1, keep_last=2, truncate="year"
    )


def test_identity_masks_collects_classifiers_first_rule_wins() -> None:
    masks = _masks(
        MaskRule(id="a", classifiers=("email", "card"), function="null"),
        MaskRule(id="b", classifiers=("card", "ssn")),
    )
    assert masks.classifiers == frozenset({"email", "card", "ssn"})
    assert masks.classifier_specs["card"].rule_id == "a"
    assert masks.classifier_specs["ssn"].rule_id == "b"


# --------------------------------------------------------------------------------------------
# IdentityMasks.table_masked


def test_table_masked_known_table_with_masked_column() -> None:
    masks = _masks(MaskRule(id="r", columns=("customers.email",)))
    assert masks.table_masked("public.customers", PG_CAT) is True
    assert masks.table_masked("customers", PG_CAT) is True  # through the search path
    assert masks.table_masked("customers", MY_CAT, "shop") is True  # through the default schema
    assert masks.table_masked("SHOP.Customers", MY_CAT) is True


def test_table_masked_known_table_without_masked_column() -> None:
    masks = _masks(MaskRule(id="r", columns=("customers.email",)))
    assert masks.table_masked("public.orders", PG_CAT) is False
    assert masks.table_masked("orders", MY_CAT, "shop") is False


def test_table_masked_known_table_schema_specific_rule() -> None:
    masks = _masks(MaskRule(id="r", columns=("public.customers.email",)))
    assert masks.table_masked("public.customers", PG_CAT) is True
    assert masks.table_masked("archive.customers", PG_CAT) is False


def test_table_masked_unknown_table_column_only_pattern_fails_closed() -> None:
    masks = _masks(MaskRule(id="r", columns=("ssn",)))
    assert masks.table_masked("public.brand_new", PG_CAT) is True
    assert masks.table_masked("brand_new", PG_CAT) is True
    assert masks.table_masked("brand_new", None) is True


def test_table_masked_unknown_table_that_a_pattern_could_name() -> None:
    masks = _masks(MaskRule(id="r", columns=("customers.email", "cust*_old.email")))
    assert masks.table_masked("staging.customers", PG_CAT) is True
    assert masks.table_masked("customers_2020_old", PG_CAT) is True
    assert masks.table_masked("Staging.CUSTOMERS", None) is True


def test_table_masked_unknown_table_no_pattern_names_it() -> None:
    masks = _masks(MaskRule(id="r", columns=("customers.email", "public.people.ssn")))
    assert masks.table_masked("public.invoices", PG_CAT) is False
    assert masks.table_masked("invoices", None) is False
    assert masks.table_masked("archive.people", PG_CAT) is False  # other schema than the rule's


def test_table_masked_classifier_only_rules_name_no_table() -> None:
    masks = _masks(MaskRule(id="r", classifiers=("email",)))
    assert masks.table_masked("public.customers", PG_CAT) is False
    assert masks.table_masked("public.unknown", PG_CAT) is False


@pytest.mark.parametrize(
    "pattern, table, default_schema",
    [("public.customers.email", "customers", "public"), ("shop.customers.email", "customers", "shop")],
)
def test_table_masked_unknown_unqualified_table_three_part_rule_fails_closed(
    pattern: str, table: str, default_schema: str
) -> None:
    masks = _masks(MaskRule(id="r", columns=(pattern,)))
    empty = _catalogue(search_path=(default_schema,))
    assert masks.table_masked(table, empty, default_schema) is True


# --------------------------------------------------------------------------------------------
# IdentityMasks.wire_specs


def test_wire_specs_by_oid_and_by_name_postgres() -> None:
    masks = _masks(
        MaskRule(id="email", columns=("customers.email",), function="email"),
        MaskRule(id="ssn", columns=("public.*.ssn",), function="partial"),
    )
    by_oid, by_name = masks.wire_specs(PG_CAT)
    email = MaskSpec(function="email", rule_id="email")
    ssn = MaskSpec(function="partial", rule_id="ssn")
    assert by_oid == {(16384, 3): email, (16384, 4): ssn, (16400, 2): email}
    assert by_name == {
        ("public.customers", "email"): email,
        ("public.customers", "ssn"): ssn,
        ("archive.customers", "email"): email,
    }


def test_wire_specs_mysql_has_no_oids() -> None:
    masks = _masks(MaskRule(id="email", columns=("customers.email",)))
    by_oid, by_name = masks.wire_specs(MY_CAT)
    assert by_oid == {}
    assert by_name == {("shop.customers", "email"): MaskSpec(rule_id="email")}


def test_wire_specs_nothing_masked() -> None:
    masks = _masks(MaskRule(id="r", columns=("nosuchcolumn",)))
    assert masks.wire_specs(PG_CAT) == ({}, {})


def test_wire_specs_recomputed_for_a_new_catalogue_version() -> None:
    masks = _masks(MaskRule(id="email", columns=("*.email",)))
    first = masks.wire_specs(PG_CAT)
    again = masks.wire_specs(PG_CAT)
    assert again[0] is first[0] and again[1] is first[1]  # cached per version
    newer = _catalogue(_table("public.customers", "id email", oid=20000), version=PG_CAT.version + 1)
    by_oid, by_name = masks.wire_specs(newer)
    assert by_oid == {(20000, 2): MaskSpec(rule_id="email")}
    assert by_name == {("public.customers", "email"): MaskSpec(rule_id="email")}


# --------------------------------------------------------------------------------------------
# rule_problems


def _fields(rule: MaskRule) -> list[str]:
    return [field for field, _ in rule_problems(rule)]


def test_rule_problems_valid_rules() -> None:
    assert rule_problems(MaskRule(id="ok", columns=("public.customers.email", "ssn"))) == []
    assert rule_problems(MaskRule(id="ok", classifiers=("email",))) == []


def test_rule_problems_empty_id() -> None:
    assert _fields(MaskRule(id="", columns=("ssn",))) == ["id"]


def test_rule_problems_names_nothing_to_mask() -> None:
    problems = rule_problems(MaskRule(id="r"))
    assert [f for f, _ in problems] == ["columns"]
    assert "columns" in problems[0][1] and "classifiers" in problems[0][1]


@pytest.mark.parametrize("key", ["columns", "exempt_identities", "exempt_groups", "environments", "targets"])
def test_rule_problems_empty_strings_name_the_key(key: str) -> None:
    kwargs: dict[str, object] = {"columns": ("ssn",)}
    kwargs[key] = ("ssn", "") if key == "columns" else ("x", "")
    assert _fields(MaskRule(id="r", **kwargs)) == [key]  # type: ignore[arg-type]


def test_rule_problems_too_many_parts_names_the_index() -> None:
    problems = rule_problems(MaskRule(id="r", columns=("ssn", "db.public.customers.email")))
    assert [f for f, _ in problems] == ["columns[1]"]
    assert "schema.table.column" in problems[0][1]


def test_rule_problems_negative_keep_counts() -> None:
    assert _fields(MaskRule(id="r", columns=("ssn",), keep_first=-1)) == ["keep_first"]
    assert _fields(MaskRule(id="r", columns=("ssn",), keep_last=-2)) == ["keep_last"]


def test_rule_problems_both_keep_counts_negative_reports_both() -> None:
    assert sorted(_fields(MaskRule(id="r", columns=("ssn",), keep_first=-1, keep_last=-1))) == [
        "keep_first",
        "keep_last",
    ]


def test_rule_problems_reports_every_problem() -> None:
    fields = _fields(MaskRule(id="", columns=("",), targets=("",), keep_last=-1))
    assert set(fields) == {"id", "columns", "targets", "keep_last"}
