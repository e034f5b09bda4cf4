"""Issue 11, deliverable 2: a masked value leaves the gateway only as a masked output value.

Each channel (a comparison whose outcome the client observes, session state and side effects,
timing, objects the session creates and user-defined routines) is exercised in several
spellings, in both dialects, through the real analysis and `plan_request`: for an identity under
masking, every statement that lets a masked value (or anything derived from it) flow anywhere
but a masked output column is refused naming the masking rule; the legitimate work of a masked
analyst still runs."""

from __future__ import annotations

import logging

import pytest

from sqlward.masking.context import RequestMask, plan_request
from sqlward.masking.model import Catalogue, ColumnInfo, MaskRule, MaskSpec, RoutineInfo, TableInfo
from sqlward.masking.policy import IdentityMasks, MaskingSettings
from sqlward.policy.analysis import analyse

PG, MY = "postgres", "mysql"
SCHEMA = {PG: "public", MY: "shop"}
SESSION_SCHEMA = {PG: "", MY: "shop"}

EMAIL = MaskSpec(function="email", rule_id="pii-email")


@pytest.fixture(autouse=True)
def _quiet_sqlglot(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sqlglot")


def _table(name: str, columns: str, view_sql: str = "") -> TableInfo:
    cols = tuple(ColumnInfo(c, kind="text", attnum=i + 1) for i, c in enumerate(columns.split()))
    return TableInfo(name=name, columns=cols, view_sql=view_sql)


def _routines(dialect: str) -> dict[str, tuple[RoutineInfo, ...]]:
    s = SCHEMA[dialect]
    lang = "sql"
    items = [
        RoutineInfo(f"{s}.get_email", language=lang, body="SELECT email FROM customers WHERE id = $1"),
        RoutineInfo(f"{s}.order_total", language=lang, body="SELECT total FROM orders WHERE id = $1"),
        RoutineInfo(f"{s}.via_view", language=lang, body="SELECT contact FROM v_customers LIMIT 1"),
        RoutineInfo(f"{s}.nested", language=lang, body="SELECT get_email(1)"),
        RoutineInfo(f"{s}.add_one", language=lang, body="SELECT $1 + 1"),
        RoutineInfo(f"{s}.unreadable", language=lang, body=None),
        # a user routine named like a built-in the SQL parser knows (another argument type)
        RoutineInfo(f"{s}.reverse", language=lang, body="SELECT reverse(email) FROM customers WHERE id = $1"),
    ]
    if dialect == PG:
        items += [
            RoutineInfo("public.pl_email", language="plpgsql", body="BEGIN RETURN (SELECT email FROM customers LIMIT 1); END"),
            RoutineInfo("public.pl_dynamic", language="plpgsql", body="BEGIN EXECUTE 'SELECT 1'; RETURN 1; END"),
            RoutineInfo("public.pl_clean", language="plpgsql", body="BEGIN RETURN $1 * 2; END"),
            RoutineInfo("public.c_func", language="c", body="c_func"),
            RoutineInfo("public.digest", language="c", body="pg_digest", extension=True),
        ]
    out: dict[str, tuple[RoutineInfo, ...]] = {}
    for r in items:
        out[r.name] = (*out.get(r.name, ()), r)
    return out


def _catalogue(dialect: str) -> Catalogue:
    s = SCHEMA[dialect]
    view = (
        " SELECT customers.id,\n    customers.email AS contact\n   FROM customers;"
        if dialect == PG
        else f"select `{s}`.`customers`.`id` AS `id`,`{s}`.`customers`.`email` AS `contact` from `{s}`.`customers`"
    )
    tables = [
        _table(f"{s}.customers", "id name email ssn"),
        _table(f"{s}.orders", "id customer_id total note"),
        _table(f"{s}.v_customers", "id contact", view),
    ]
    return Catalogue(
        tables={t.name: t for t in tables},
        search_path=("public",) if dialect == PG else (),
        routines=_routines(dialect),
        builtins=frozenset({"upper", "lower", "length", "hashtext", "now", "pg_sleep"}) if dialect == PG else None,
    )


MASKS = IdentityMasks(
    [
        MaskRule(id="pii-email", columns=("customers.email",), function="email"),
        MaskRule(id="pii-ssn", columns=("customers.ssn",), function="partial", keep_last=4),
    ]
)


def _plan(dialect: str, sql: str, *, doubt: bool = False) -> RequestMask:
    return plan_request(
        sql, analyse(sql, dialect), _catalogue(dialect), MASKS, SESSION_SCHEMA[dialect],
        MaskingSettings(mask_all_on_doubt=doubt),
    )


def _refused(dialect: str, sql: str, rule: str = "pii-email") -> None:
    for doubt in (False, True):  # mask_all_on_doubt never turns a leak into an answer
        r = _plan(dialect, sql, doubt=doubt)
        assert r.refusal, (dialect, sql, doubt, r)
        assert f'masking rule "{rule}"' in r.refusal, (sql, r.refusal)
        assert r.rule_id == rule


BOTH = [PG, MY]

# --------------------------------------------------------------------------------------------
# 1. Comparisons whose outcome the client can observe

COMPARISONS_BOTH = [
    # aggregate FILTER / conditional aggregates
    "SELECT count(CASE WHEN email = 'x' THEN 1 END) FROM customers",
    "SELECT sum(CASE email WHEN 'x' THEN 1 ELSE 0 END) FROM customers",
    # CASE anywhere
    "SELECT CASE WHEN email = 'x' THEN 1 ELSE 0 END FROM customers",
    "SELECT CASE WHEN email LIKE 'a%' THEN name END FROM customers",
    "SELECT CASE email WHEN 'x' THEN 1 END FROM customers",
    "SELECT id, CASE WHEN upper(email) > 'M' THEN 'late' END FROM customers",
    "SELECT CASE WHEN (SELECT email FROM customers LIMIT 1) = 'x' THEN 1 END",
    # comparison operators in the select list, in arguments
    "SELECT email = 'x' FROM customers",
    "SELECT email <> 'x' AS d FROM customers",
    "SELECT email LIKE 'a%' FROM customers",
    "SELECT email IN ('a@x.com', 'b@x.com') FROM customers",
    "SELECT email BETWEEN 'a' AND 'b' FROM customers",
    "SELECT length(email) > 10 FROM customers",
    "SELECT 'x' IN (SELECT email FROM customers)",
    "SELECT (SELECT email FROM customers WHERE id = 1) = 'x'",
    "SELECT concat(name, email < 'm') FROM customers",
    "SELECT 1 / (length(email) - 5) FROM customers",
    # conditionals that compare
    "SELECT nullif(email, 'x') FROM customers",
    "SELECT greatest(email, 'm') FROM customers",
    "SELECT least(email, 'm') FROM customers",
    # set operations that compare rows
    "SELECT email FROM customers INTERSECT SELECT 'guess@x.com'",
    "SELECT email FROM customers EXCEPT SELECT 'guess@x.com'",
    "SELECT 'guess@x.com' EXCEPT SELECT email FROM customers",
    "SELECT email FROM customers UNION SELECT 'guess@x.com'",
    "SELECT email FROM customers UNION DISTINCT SELECT 'guess@x.com'",
    "SELECT count(*) FROM (SELECT email FROM customers UNION SELECT 'guess') s",
    "SELECT count(*) FROM (SELECT id, email FROM customers INTERSECT SELECT 1, 'g') s",
    # DISTINCT over masked columns (across sources or not)
    "SELECT DISTINCT x FROM (SELECT email AS x FROM customers UNION ALL SELECT 'guess') s",
    "SELECT DISTINCT email FROM customers",
    "SELECT count(DISTINCT email) FROM customers",
    "SELECT count(DISTINCT x) FROM (SELECT email AS x FROM customers UNION ALL SELECT 'g') s",
    # USING / NATURAL joins on masked columns
    "SELECT c.id FROM customers c JOIN (SELECT 'g' AS email) g USING (email)",
    "SELECT id FROM customers NATURAL JOIN (SELECT 'g' AS email) g",
    # window arguments / partition / order
    "SELECT rank() OVER (ORDER BY email) FROM customers",
    "SELECT first_value(id) OVER (PARTITION BY email ORDER BY id) FROM customers",
    "SELECT ntile(2) OVER (ORDER BY email) FROM customers",
    "SELECT lag(id, length(email)) OVER (ORDER BY id) FROM customers",
    "SELECT lead(id, length(email), 0) OVER (ORDER BY id) FROM customers",
    "SELECT nth_value(id, length(email)) OVER (ORDER BY id) FROM customers",
]
COMPARISONS_PG = [
    "SELECT count(*) FILTER (WHERE email = 'x') FROM customers",
    "SELECT count(id) FILTER (WHERE email LIKE 'a%') FROM customers",
    "SELECT DISTINCT x FROM (SELECT email FROM customers UNION ALL SELECT 'guess') s(x)",
    "SELECT DISTINCT s FROM (SELECT email FROM customers UNION ALL SELECT 'guess') s",
    "SELECT count(*) FROM (SELECT DISTINCT * FROM (SELECT email FROM customers UNION ALL SELECT 'g') a) b",
    "SELECT array_agg(DISTINCT email) FROM customers",
    "SELECT jsonb_agg(name ORDER BY email) FROM customers",
    "SELECT array_agg(id) FILTER (WHERE email > '5') FROM customers",
    "SELECT email ILIKE 'A%' FROM customers",
    "SELECT email ~ '^a' FROM customers",
    "SELECT email ~* '^a' FROM customers",
    "SELECT email SIMILAR TO 'a%' FROM customers",
    "SELECT email IS DISTINCT FROM 'x' FROM customers",
    "SELECT email = ANY (ARRAY['a', 'b']) FROM customers",
    "SELECT starts_with(email, 'a') FROM customers",
    "SELECT email ^@ 'a' FROM customers",
    "SELECT (email, id) = ('x', 1) FROM customers",
    "SELECT email FROM customers INTERSECT ALL SELECT 'guess'",
    "SELECT email FROM customers EXCEPT ALL SELECT 'guess'",
    "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY email) FROM customers",
    "SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers",
    "SELECT rank('m') WITHIN GROUP (ORDER BY email) FROM customers",
    "SELECT array_agg(id ORDER BY email) FROM customers",
    "SELECT string_agg(name, ',' ORDER BY email) FROM customers",
    "SELECT count(*) FROM customers c, LATERAL (SELECT 1 WHERE c.email = 'x') s",
    "SELECT id FROM customers NATURAL JOIN (VALUES ('g')) AS g(email)",
    "SELECT 1 / (email = 'x')::int FROM customers",
]
COMPARISONS_MY = [
    "SELECT IF(email = 'x', 1, 0) FROM customers",
    "SELECT IF(email LIKE 'a%', 'y', 'n') FROM customers",
    "SELECT email <=> 'x' FROM customers",
    "SELECT email REGEXP '^a' FROM customers",
    "SELECT email RLIKE '^a' FROM customers",
    "SELECT STRCMP(email, 'm') FROM customers",
    "SELECT FIELD(email, 'a', 'b') FROM customers",
    "SELECT FIND_IN_SET(email, 'a,b') FROM customers",
    "SELECT ELT(1 + (email = 'x'), 'a', 'b') FROM customers",
    "SELECT INTERVAL(length(email), 5, 10) FROM customers",
    "SELECT email FROM customers INTERSECT SELECT 'guess'",
    "SELECT COUNT(DISTINCT e) FROM (SELECT email AS e FROM customers UNION ALL SELECT 'guess') s",
    "SELECT GROUP_CONCAT(DISTINCT email) FROM customers",
    "SELECT GROUP_CONCAT(name ORDER BY email) FROM customers",
]


@pytest.mark.parametrize("sql", COMPARISONS_BOTH)
@pytest.mark.parametrize("dialect", BOTH)
def test_comparison_of_masked_value_is_refused(dialect: str, sql: str) -> None:
    _refused(dialect, sql)


@pytest.mark.parametrize("sql", COMPARISONS_PG)
def test_comparison_of_masked_value_is_refused_pg(sql: str) -> None:
    _refused(PG, sql)


@pytest.mark.parametrize("sql", COMPARISONS_MY)
def test_comparison_of_masked_value_is_refused_mysql(sql: str) -> None:
    _refused(MY, sql)


def test_comparison_refusal_names_the_rule_of_the_compared_column() -> None:
    _refused(PG, "SELECT ssn = '1' FROM customers", "pii-ssn")
    _refused(MY, "SELECT IF(ssn LIKE '1%', 1, 0) FROM customers", "pii-ssn")


# --------------------------------------------------------------------------------------------
# 2. Session state and side effects; 3. timing

SIDE_EFFECTS_PG = [
    "SELECT pg_notify('ch', email) FROM customers",
    "SELECT set_config('my.x', email, false) FROM customers",
    "SELECT set_config('my.x', (SELECT email FROM customers LIMIT 1), true)",
    "SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers",
    "SELECT lo_put(1, 0, convert_to(email, 'UTF8')) FROM customers",
    "SELECT lowrite(0, convert_to(email, 'UTF8')) FROM customers",
    "SELECT lo_create(length(email)) FROM customers",
    "SELECT setval('s', length(email)) FROM customers",
    "SELECT nextval(email) FROM customers",
    "SELECT currval(email::regclass) FROM customers",
    "SELECT pg_advisory_lock(hashtext(email)) FROM customers",
    "SELECT pg_try_advisory_lock(length(email)) FROM customers",
    "SELECT pg_advisory_xact_lock_shared(hashtext(email)) FROM customers",
    "SELECT pg_logical_emit_message(true, 'p', email) FROM customers",
    # timing
    "SELECT pg_sleep(length(email)) FROM customers",
    "SELECT pg_sleep_for((length(email) || ' seconds')::interval) FROM customers",
    "SELECT CASE WHEN email LIKE 'a%' THEN pg_sleep(1) END FROM customers",
    "SELECT generate_series(1, length(email)) FROM customers",
    "SELECT count(*) FROM customers c, generate_series(1, length(c.email) * 100000) g",
    "SELECT count(*) FROM customers c, LATERAL regexp_split_to_table(c.email, '') x",
    "SELECT repeat('x', length(email) * 1000000) FROM customers",
    "SELECT lpad('x', length(email) * 1000000) FROM customers",
    "SELECT rpad('x', length(email), 'y') FROM customers",
    "SELECT array_fill(1, ARRAY[length(email)]) FROM customers",
    "SELECT unnest(string_to_array(email, '@')) FROM customers",
]
SIDE_EFFECTS_MY = [
    "SELECT GET_LOCK(email, 1) FROM customers",
    "SELECT IS_FREE_LOCK(email) FROM customers",
    "SELECT RELEASE_LOCK(email) FROM customers",
    "SELECT @a := email FROM customers",
    "SET @a = (SELECT email FROM customers LIMIT 1)",
    "SELECT email INTO @a FROM customers LIMIT 1",
    "SELECT SLEEP(length(email)) FROM customers",
    "SELECT IF(email LIKE 'a%', SLEEP(1), 0) FROM customers",
    "SELECT BENCHMARK(length(email) * 100000, md5('a')) FROM customers",
    "SELECT CASE WHEN email = 'x' THEN SLEEP(2) END FROM customers",
    "SELECT REPEAT('x', length(email) * 1000000) FROM customers",
    "SELECT SPACE(length(email) * 1000000) FROM customers",
    "SELECT LPAD('x', length(email), 'y') FROM customers",
]


@pytest.mark.parametrize("sql", SIDE_EFFECTS_PG)
def test_side_effect_or_timing_of_masked_value_is_refused_pg(sql: str) -> None:
    _refused(PG, sql)


@pytest.mark.parametrize("sql", SIDE_EFFECTS_MY)
def test_side_effect_or_timing_of_masked_value_is_refused_mysql(sql: str) -> None:
    _refused(MY, sql)


# --------------------------------------------------------------------------------------------
# 4. Objects the session creates, prepared statements, user-defined routines

OBJECTS_PG = [
    "CREATE TEMP VIEW v AS SELECT email FROM customers",
    "CREATE TEMPORARY VIEW orders AS SELECT id, email AS note FROM customers",
    "CREATE VIEW pg_temp.v AS SELECT email FROM customers",
    "CREATE OR REPLACE VIEW v AS SELECT upper(email) AS e FROM customers",
    "CREATE VIEW v AS SELECT contact FROM v_customers",
    "CREATE MATERIALIZED VIEW v AS SELECT email FROM customers",
    "CREATE TABLE t AS SELECT email FROM customers",
    "CREATE TEMP TABLE t AS SELECT email FROM customers",
    "SELECT email INTO TEMP t FROM customers",
    "PREPARE p (text) AS SELECT id FROM customers WHERE email = $1",
    "PREPARE p AS SELECT CASE WHEN email LIKE 'a%' THEN 1 END FROM customers",
    "PREPARE p AS INSERT INTO orders (note) SELECT email FROM customers",
    "PREPARE p AS SELECT get_email(1)",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT email FROM customers LIMIT 1 $$",
    "CREATE FUNCTION pg_temp.f() RETURNS text AS 'SELECT email FROM customers LIMIT 1' LANGUAGE sql",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql RETURN (SELECT email FROM customers LIMIT 1)",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT email FROM customers LIMIT 1; END",
    "CREATE OR REPLACE FUNCTION pg_temp.f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT email FROM customers LIMIT 1); END $$",
    "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT contact FROM v_customers LIMIT 1); END $$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SELECT 1 FROM cust' || 'omers'; RETURN 1; END $$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$",
    "CREATE PROCEDURE p() LANGUAGE sql AS $$ INSERT INTO t SELECT email FROM customers $$",
    "CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION pl_email()",
    "CREATE RULE r AS ON INSERT TO orders DO ALSO SELECT email FROM customers",
    "DO $$ BEGIN PERFORM pg_notify('c', (SELECT email FROM customers LIMIT 1)); END $$",
    # calls of routines whose body reads a masked table or cannot be read
    "SELECT get_email(1)",
    "SELECT public.get_email(id) FROM orders",
    "SELECT via_view()",
    "SELECT nested()",
    "SELECT pl_email()",
    "SELECT pl_dynamic()",
    "SELECT c_func()",
    "SELECT unreadable()",
    "SELECT pg_temp.f()",
    "SELECT * FROM pg_temp.f()",
    "SELECT not_catalogued_anywhere(1)",
    "SELECT elsewhere.f(1)",
    "SELECT id FROM orders WHERE get_email(customer_id) LIKE 'a%'",
    "SELECT reverse(5)",
]
OBJECTS_MY = [
    "CREATE VIEW v AS SELECT email FROM customers",
    "CREATE OR REPLACE VIEW v AS SELECT upper(email) AS e FROM customers",
    "CREATE TEMPORARY TABLE t AS SELECT email FROM customers",
    "CREATE TABLE t AS SELECT email FROM customers",
    "PREPARE s FROM 'SELECT email FROM customers'",
    "PREPARE s FROM 'SELECT 1'",  # the text is a literal the plan cache leaves out
    "PREPARE s FROM @q",
    "CREATE FUNCTION f() RETURNS TEXT READS SQL DATA RETURN (SELECT email FROM customers LIMIT 1)",
    "CREATE PROCEDURE p() BEGIN SELECT email FROM customers; END",
    "SELECT get_email(1)",
    "SELECT shop.get_email(id) FROM orders",
    "SELECT reverse(5)",
    "SELECT via_view()",
    "SELECT nested()",
    "SELECT unreadable()",
    "SELECT elsewhere.f(1)",
]


@pytest.mark.parametrize("sql", OBJECTS_PG)
def test_objects_and_routines_reading_masked_tables_are_refused_pg(sql: str) -> None:
    _refused(PG, sql)


@pytest.mark.parametrize("sql", OBJECTS_MY)
def test_objects_and_routines_reading_masked_tables_are_refused_mysql(sql: str) -> None:
    _refused(MY, sql)


# --------------------------------------------------------------------------------------------
# What a masked analyst still does

ALLOWED_BOTH = [
    "SELECT id, name FROM customers",
    "SELECT id, email FROM customers WHERE id = 3 ORDER BY name",
    "SELECT c.id, o.total FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id > 3",
    "SELECT count(*) FROM customers",
    "SELECT name, count(*) FROM customers GROUP BY name",
    "SELECT sum(total), max(total) FROM orders",
    "SELECT email FROM customers UNION ALL SELECT email FROM customers",
    "SELECT upper(email), coalesce(ssn, '') FROM customers",
    "SELECT CASE WHEN id > 3 THEN email END FROM customers",
    "SELECT DISTINCT name FROM customers",
    "SELECT id FROM customers UNION SELECT customer_id FROM orders",
    "SELECT rank() OVER (ORDER BY id), email FROM customers",
    "SELECT lag(email) OVER (ORDER BY id) FROM customers",
    "SELECT order_total(id) FROM orders",
    "SELECT add_one(id) FROM orders",
    "SELECT upper(name) FROM customers",
    "SELECT max(email) FROM customers",
    "CREATE VIEW v AS SELECT id, total FROM orders",
]
ALLOWED_PG = [
    "SELECT count(*) FILTER (WHERE id > 3) FROM customers",
    "SELECT pl_clean(id) FROM orders",
    "SELECT digest(name, 'sha256') FROM customers",
    "SELECT hashtext(name) FROM customers",
    "SELECT pg_sleep(1)",
    "SELECT generate_series(1, 3), email FROM customers",
    "SELECT email IS NULL FROM customers",
    "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a + 1 $$",
    "CREATE FUNCTION f() RETURNS numeric LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT sum(total) FROM orders); END $$",
    "PREPARE p AS SELECT id FROM orders",
    "PREPARE p AS SELECT email FROM customers ORDER BY id",  # EXECUTE p is opaque: refused or masked whole
    "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY total) FROM orders",
]
ALLOWED_MY = [
    "SELECT IF(id > 3, email, name) FROM customers",
    "SELECT IFNULL(email, '') FROM customers",
    "SELECT SLEEP(0)",
    "SELECT GROUP_CONCAT(email) FROM customers",
    "SELECT FIELD(name, 'a', 'b') FROM customers",
]


def _allowed(dialect: str, sql: str) -> None:
    r = _plan(dialect, sql)
    assert r.refusal == "", (dialect, sql, r.refusal)


@pytest.mark.parametrize("sql", ALLOWED_BOTH)
@pytest.mark.parametrize("dialect", BOTH)
def test_legitimate_work_still_runs(dialect: str, sql: str) -> None:
    _allowed(dialect, sql)


@pytest.mark.parametrize("sql", ALLOWED_PG)
def test_legitimate_work_still_runs_pg(sql: str) -> None:
    _allowed(PG, sql)


@pytest.mark.parametrize("sql", ALLOWED_MY)
def test_legitimate_work_still_runs_mysql(sql: str) -> None:
    _allowed(MY, sql)


def test_masked_output_of_allowed_statement_is_still_masked() -> None:
    assert _plan(PG, "SELECT id, email FROM customers WHERE id = 3").plan.columns == (None, EMAIL)
    assert _plan(MY, "SELECT email FROM customers UNION ALL SELECT email FROM customers").plan.columns == (EMAIL,)


def test_catalogue_without_routine_information_keeps_unknown_functions_as_expressions() -> None:
    """A catalogue read without routines (an older loader) does not refuse every unknown
    function: routines are only judged when the catalogue lists them."""
    cat = Catalogue(tables=_catalogue(PG).tables, search_path=("public",))
    r = plan_request("SELECT myfunc(id) FROM orders", analyse("SELECT myfunc(id) FROM orders", PG), cat, MASKS, "", MaskingSettings())
    assert r.refusal == ""


def test_row_constructor_is_syntax_not_an_unknown_function() -> None:
    r = _plan(PG, "SELECT ROW(email, 1) FROM customers")
    assert r.refusal == "" and r.plan.needs_masking


# --------------------------------------------------------------------------------------------
# Statements the analyser cannot parse: mask_all_on_doubt answers only reads


@pytest.mark.parametrize(
    "sql",
    [
        "REPLACE INTO orders (note) SELECT email FROM customers",
        "SELECT email FROM customers LIMIT 1 INTO @v",
        "SELECT email INTO OUTFILE '/tmp/x' FROM customers",
        "SELECT email FROM customers INTO DUMPFILE '/tmp/x'",
        "HANDLER customers READ FIRST",
        "DO IF((SELECT email FROM customers LIMIT 1) LIKE 'a%', SLEEP(2), 0)",
        "CALL p()",
        "SELECT id FROM customers WHERE email LIKE 'a%' AND id = ANY(((",
        "SELECT id FROM customers WHERE customers.name = 'x' ORDER BY 1 (((",
        "SELECT email FROM customers (((",
    ],
)
def test_unparsed_statement_that_may_store_values_is_refused_even_when_masking_all(sql: str) -> None:
    assert analyse(sql, MY).parse_status != "ok"
    _refused(MY, sql)


def test_unparsed_read_is_still_masked_all_on_doubt() -> None:
    sql = "SELECT * FROM customers ((("
    r = _plan(MY, sql, doubt=True)
    assert r.refusal == "" and r.plan.mask_rest is not None


# --------------------------------------------------------------------------------------------
# A definition's decision depends on its string literals, which the statement shape leaves out


@pytest.mark.parametrize("dialect", BOTH)
def test_definitions_are_not_cacheable_by_shape(dialect: str) -> None:
    body = "$$ SELECT 1 $$" if dialect == PG else "RETURN (SELECT 1)"
    create = f"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS {body}" if dialect == PG else "PREPARE s FROM 'SELECT 1'"
    assert _plan(dialect, create).cacheable is False
    assert _plan(dialect, "SELECT id FROM orders").cacheable is True
    assert _plan(dialect, "SELECT email = 'x' FROM customers").cacheable is True
    if dialect == PG:  # the same shape with another body decides differently
        evil = create.replace("SELECT 1", "SELECT email FROM customers")
        assert analyse(evil, dialect).fingerprint == analyse(create, dialect).fingerprint
        assert _plan(dialect, create).refusal == "" and _plan(dialect, evil).refusal != ""


# --------------------------------------------------------------------------------------------
# Masking rules follow names: renaming a table or column with masked columns moves its values
# out of the rule


@pytest.mark.parametrize(
    "dialect, sql",
    [
        (PG, "ALTER TABLE customers RENAME TO c2"),
        (PG, "ALTER TABLE customers RENAME COLUMN email TO e"),
        (PG, "ALTER TABLE customers SET SCHEMA audit"),
        (PG, "ALTER TABLE IF EXISTS public.customers RENAME email TO e"),
        (MY, "RENAME TABLE customers TO c2"),
        (MY, "ALTER TABLE customers RENAME TO c2"),
        (MY, "ALTER TABLE customers RENAME COLUMN email TO e"),
        (MY, "ALTER TABLE customers CHANGE email e text"),
        (MY, "ALTER TABLE customers CHANGE COLUMN email e text"),
    ],
)
def test_renaming_a_table_with_masked_columns_is_refused(dialect: str, sql: str) -> None:
    _refused(dialect, sql)


@pytest.mark.parametrize(
    "dialect, sql",
    [
        (PG, "ALTER TABLE orders RENAME TO orders2"),
        (PG, "ALTER TABLE customers ADD COLUMN x int"),
        (MY, "RENAME TABLE orders TO orders2"),
        (MY, "ALTER TABLE orders CHANGE note memo text"),
    ],
)
def test_renaming_other_tables_or_altering_masked_ones_otherwise_runs(dialect: str, sql: str) -> None:
    _allowed(dialect, sql)


# --------------------------------------------------------------------------------------------
# DDL whose success depends on the stored values (a unique index, a CHECK, a type change)


@pytest.mark.parametrize(
    "dialect, sql",
    [
        (PG, "CREATE UNIQUE INDEX i ON customers ((substr(email, 1, 1)))"),
        (PG, "CREATE INDEX i ON customers ((1 / (length(email) - 5)))"),
        (PG, "ALTER TABLE customers ADD CONSTRAINT c CHECK (email LIKE 'a%')"),
        (PG, "ALTER TABLE customers ADD CONSTRAINT u UNIQUE (email)"),
        (PG, "ALTER TABLE customers ALTER COLUMN email TYPE int USING email::int"),
        (PG, "ALTER TABLE customers ALTER COLUMN email TYPE int"),
        (PG, "ALTER TABLE customers ADD COLUMN x int GENERATED ALWAYS AS (length(email)) STORED"),
        (PG, "INSERT INTO customers (id, email) VALUES (9, 'guess@x.com') ON CONFLICT (email) DO NOTHING"),
        (PG, "INSERT INTO customers (id, email) VALUES (9, 'g') ON CONFLICT (lower(email)) DO UPDATE SET name = 'x'"),
        (MY, "ALTER TABLE customers ADD UNIQUE (email)"),
        (MY, "ALTER TABLE customers MODIFY email INT"),
        (MY, "CREATE UNIQUE INDEX i ON customers (email)"),
        (MY, "ALTER TABLE customers ADD CONSTRAINT c CHECK (email LIKE 'a%')"),
    ],
)
def test_ddl_evaluating_masked_values_is_refused(dialect: str, sql: str) -> None:
    _refused(dialect, sql)


@pytest.mark.parametrize(
    "dialect, sql",
    [
        (PG, "CREATE INDEX i ON customers (name)"),
        (PG, "ALTER TABLE customers ADD CONSTRAINT c CHECK (id > 0)"),
        (PG, "ALTER TABLE customers DROP COLUMN ssn"),
        (MY, "CREATE INDEX i ON customers (name)"),
        (MY, "ALTER TABLE customers MODIFY name VARCHAR(200)"),
    ],
)
def test_ddl_on_unmasked_columns_runs(dialect: str, sql: str) -> None:
    _allowed(dialect, sql)
