"""The compiled sqlglot build (sqlglotc) is the one in use, and gives the same facts as pure Python.

sqlglotc has no switch: its wheel puts compiled extension modules into the `sqlglot` package next
to the `.py` files, and Python imports an extension module before a source file of the same name.
Nor is there a switch to turn it off. To run the pure-Python build side by side, the tests copy the
installed sqlglot's `.py` files (the very same version) into a temporary directory and put it first
on PYTHONPATH of a subprocess: that directory holds no `.so`, so the pure modules load.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import sqlglot

from sqlward.policy import sqlglot_build

REPO = Path(__file__).resolve().parents[2]
SQLGLOTC = sqlglot_build.SQLGLOTC_VERSION
needs_sqlglotc = pytest.mark.skipif(SQLGLOTC is None, reason="sqlglotc is not installed")


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        spec = dep.split(";")[0].strip()
        if "==" in spec:
            name, version = spec.split("==")
            pins[name.strip()] = version.strip()
    return pins


# ------------------------------------------------------------------------------- (a) versions


def test_pyproject_pins_sqlglot_and_sqlglotc_to_one_version() -> None:
    pins = _pins()
    assert "sqlglot" in pins and "sqlglotc" in pins, pins
    assert pins["sqlglot"] == pins["sqlglotc"]


@needs_sqlglotc
def test_installed_sqlglotc_is_built_for_the_installed_sqlglot() -> None:
    assert SQLGLOTC == sqlglot.__version__ == importlib.metadata.version("sqlglot")
    # sqlglotc's own metadata names the one sqlglot it was compiled for.
    requires = importlib.metadata.requires("sqlglotc") or []
    assert f"sqlglot=={SQLGLOTC}" in [r.split(";")[0].replace(" ", "") for r in requires]


# ------------------------------------------------------------------------- (b) compiled in use


def _compiled_files(module_name: str) -> list[Path]:
    """The compiled extension files that sit next to `module_name`'s .py file, if any."""
    path = Path(sys.modules[module_name].__file__ or "")
    return [p for p in path.parent.glob(f"{path.stem}.*") if sqlglot_build.is_extension_path(p)]


@needs_sqlglotc
def test_compiled_modules_are_the_ones_in_use() -> None:
    from sqlglot.dialects.dialect import Dialect

    from sqlward.policy.analysis import analyse

    assert sqlglot_build.COMPILED
    for name in sqlglot_build.HOT_MODULES:
        assert sqlglot_build.is_extension(sys.modules[name]), sys.modules[name].__file__

    # What a statement actually runs through: the dialect's tokenizer core and parser, and the
    # classes of the tree it builds.
    analyse("SELECT a.x FROM t a JOIN u b ON a.id = b.id WHERE b.y > 1", "postgres")
    for dialect in ("postgres", "mysql"):
        d = Dialect.get_or_raise(dialect)
        tokenizer_core = type(d.tokenizer()._core)
        parser = type(d.parser())
        tree = sqlglot.parse_one("SELECT a FROM t WHERE b = 1", read=dialect)
        for cls in (tokenizer_core, parser, parser.__mro__[1], type(tree), type(tree.args["where"])):
            module = sys.modules[cls.__module__]
            assert sqlglot_build.is_extension(module), (dialect, cls, module.__file__)

    # No sqlglot module that sqlglotc ships compiled was loaded from its .py file instead.
    shadowed = [
        name
        for name, module in list(sys.modules.items())
        if (name == "sqlglot" or name.startswith("sqlglot."))
        and not sqlglot_build.is_extension(module)
        and getattr(module, "__file__", None)
        and _compiled_files(name)
    ]
    assert not shadowed


# ------------------------------------------------------------- (c) same facts, both builds

# Both dialects; joins, CTEs, subqueries, writes, DDL, WHERE truth with and without literals,
# several statements, MySQL versioned comments, statements sqlglot cannot parse.
CORPUS: list[tuple[str, str]] = [
    ("postgres", "SELECT abalance FROM pgbench_accounts WHERE aid = 42"),
    ("postgres", "SELECT a.aid, a.abalance, b.bbalance FROM pgbench_accounts a JOIN pgbench_branches b "
                 "ON b.bid = a.bid WHERE a.aid = 42 AND b.bid < 9"),
    ("postgres", "WITH x AS (SELECT * FROM customers) SELECT count(*) FROM x JOIN orders o ON o.customer_id = x.id"),
    ("postgres", "SELECT email FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE total > 10)"),
    ("postgres", "SELECT id, name FROM customers UNION ALL SELECT id, note FROM orders ORDER BY 1 LIMIT 5"),
    ("postgres", "UPDATE customers SET name = 'x' WHERE 1 = 1"),
    ("postgres", "UPDATE customers SET name = 'x' WHERE 3 = 3 OR id = 5"),
    ("postgres", "DELETE FROM orders"),
    ("postgres", "DELETE FROM s.orders WHERE created < now() - interval '1 day'"),
    ("postgres", "INSERT INTO t (a, b) SELECT a, b FROM u WHERE z IS NULL RETURNING a"),
    ("postgres", "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE"),
    ("postgres", "COPY customers TO PROGRAM 'cat > /tmp/x'"),
    ("postgres", "DROP TABLE IF EXISTS public.customers CASCADE"),
    ("postgres", "TRUNCATE orders"),
    ("postgres", "CREATE TABLE t (id int primary key, note text)"),
    ("postgres", "ALTER TABLE t ADD COLUMN c int"),
    ("postgres", "GRANT SELECT ON customers TO bob"),
    ("postgres", "SET search_path = audit, public"),
    ("postgres", "SELECT 1; SELECT email FROM customers; BEGIN"),
    ("postgres", "EXPLAIN SELECT * FROM customers"),
    ("postgres", "SELECT pg_read_file('/etc/passwd')"),
    ("postgres", "SELECT * FROM users -- LIMIT 1"),
    ("postgres", "SELECT FROM WHERE ("),
    ("postgres", "SELECT 'unterminated"),
    ("mysql", "SELECT `c`, d FROM `db`.`t` WHERE id IN (1, 2, 3) LIMIT 5"),
    ("mysql", "UPDATE t JOIN u ON t.id = u.id SET t.a = 1 WHERE u.b = 2"),
    ("mysql", "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = a + 1"),
    ("mysql", "DELETE FROM orders WHERE 'a' = 'a'"),
    ("mysql", "SELECT * FROM users /*!99999 LIMIT 1 */"),
    ("mysql", "SELECT email FROM customers /*!50000 UNION SELECT ssn FROM customers */"),
    ("mysql", "SELECT id, email INTO OUTFILE '/tmp/x' FROM customers"),
    ("mysql", "LOAD DATA INFILE '/tmp/x' INTO TABLE t"),
    ("mysql", "SHOW TABLES"),
    ("mysql", "USE shop"),
    ("mysql", "CREATE USER 'x'@'%' IDENTIFIED BY 'y'"),
    ("mysql", "SELECT c.email, o.total FROM customers c LEFT JOIN orders o ON o.customer_id = c.id"),
    ("mysql", "FLUSH TABLES"),
]

_FACTS_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import msgspec, sqlglot
    from sqlward.masking.lineage import statement_lineages
    from sqlward.masking.model import Catalogue, ColumnInfo, TableInfo
    from sqlward.policy import sqlglot_build
    from sqlward.policy.analysis import analyse

    logging.getLogger("sqlglot").setLevel(logging.CRITICAL)

    def table(name, columns):
        cols = tuple(ColumnInfo(name=c, kind="text", attnum=i + 1) for i, c in enumerate(columns.split()))
        return TableInfo(name=name, columns=cols)

    catalogues = {}
    for dialect, schema in (("postgres", "public"), ("mysql", "shop")):
        tables = [
            table(f"{schema}.customers", "id name email ssn"),
            table(f"{schema}.orders", "id customer_id total note"),
            table(f"{schema}.pgbench_accounts", "aid bid abalance filler"),
            table(f"{schema}.pgbench_branches", "bid bbalance filler"),
        ]
        catalogues[dialect] = Catalogue(
            tables={t.name: t for t in tables}, search_path=(schema,) if dialect == "postgres" else ()
        )

    def builtins(obj):  # sets sorted: their order varies with the hash seed of each process
        return msgspec.to_builtins(obj, order="sorted")

    facts = []
    for dialect, sql in json.loads(sys.stdin.read()):
        facts.append({
            "analysis": builtins(analyse(sql, dialect)),
            "with_literals": builtins(analyse(sql, dialect, keep_literals=True)),
            "lineage": builtins(statement_lineages(
                sql, dialect, catalogues[dialect], default_schema="shop" if dialect == "mysql" else ""
            )),
        })
    json.dump({
        "compiled": sqlglot_build.COMPILED,
        "version": sqlglot.__version__,
        "sqlglot_file": sqlglot.__file__,
        "facts": facts,
    }, sys.stdout)
    """
)


@pytest.fixture(scope="module")
def pure_sqlglot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed sqlglot's .py files only: first on PYTHONPATH, it makes a
    subprocess import pure-Python sqlglot of the same version, whether or not sqlglotc is there."""
    source = Path(sqlglot.__file__).parent
    root = tmp_path_factory.mktemp("pure-sqlglot")
    shutil.copytree(
        source,
        root / "sqlglot",
        ignore=lambda d, names: [n for n in names if n == "__pycache__" or sqlglot_build.is_extension_path(Path(d, n))],
    )
    assert not [p for p in (root / "sqlglot").rglob("*") if sqlglot_build.is_extension_path(p)]
    return root


def _facts(pythonpath: Path | None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", _FACTS_SCRIPT],
        input=json.dumps(CORPUS),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_pure_python_sqlglot_gives_the_same_facts_as_the_installed_build(pure_sqlglot: Path) -> None:
    pure = _facts(pure_sqlglot)
    assert pure["compiled"] is False  # the fallback path: no import error, pure modules in use
    assert Path(pure["sqlglot_file"]).is_relative_to(pure_sqlglot)
    installed = _facts(None)
    assert installed["compiled"] is (SQLGLOTC is not None)
    assert pure["version"] == installed["version"] == sqlglot.__version__
    assert len(pure["facts"]) == len(installed["facts"]) == len(CORPUS)
    for (dialect, sql), p, c in zip(CORPUS, pure["facts"], installed["facts"]):
        assert p == c, (dialect, sql)
