"""Masking cost: a SELECT of N rows, direct vs through sqlward, with and without masked columns.

    python bench/mask_compare.py [--rows 100000] [--rounds 3] [--protocol postgres|mysql|both]

In one run, per protocol, it:
  1. creates database ``sqlward_mask_bench`` (PostgreSQL and/or MariaDB) with a table of N rows:
     id, name, email, ssn, city, amount;
  2. starts sqlward with one masking rule set (email -> email function, ssn -> partial) that
     applies to identity ``analyst`` and not to ``dpo`` (exempt);
  3. times ``SELECT id, name, email, ssn, city, amount FROM people`` fetched whole by the client
     (psycopg text for PostgreSQL, PyMySQL for MySQL): directly, through sqlward as ``dpo``
     (no masked column: rows pass as bytes) and as ``analyst`` (2 masked columns per row);
  4. prints the median time of each and the ratios to direct.

(or ``python -m bench.mask_compare ...`` from the repository root). The gateway is stopped and its
temporary folder removed on exit, Ctrl-C or failure (bench/harness.py).

Targets (issue 6): masked <= 3x direct, unmasked <= 1.3x direct.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg
import pymysql

if __package__:  # python -m bench.mask_compare
    from . import harness
else:  # python bench/mask_compare.py: this file's folder is first on sys.path
    import harness

DB = "sqlward_mask_bench"
log = harness.logger("mask_compare")


def setup_pg(rows: int) -> None:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            c.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB}", autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS people")
        c.execute("CREATE TABLE people (id int PRIMARY KEY, name text, email text, ssn text, city text, amount numeric(10,2))")
        c.execute(
            "INSERT INTO people SELECT g, 'name ' || g, 'user' || g || '@example.com', "
            "lpad((g %% 899 + 100)::text, 3, '0') || '-12-' || lpad((g %% 9999 + 1)::text, 4, '0'), "
            "'city ' || (g %% 100), g * 1.5 FROM generate_series(1, %s) g",
            (rows,),
        )


def setup_mysql(rows: int) -> None:
    c = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    with c.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {DB}")
        cur.execute(f"DROP TABLE IF EXISTS {DB}.people")
        cur.execute(
            f"CREATE TABLE {DB}.people (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), ssn VARCHAR(20), "
            "city VARCHAR(50), amount DECIMAL(10,2))"
        )
        cur.execute(
            f"INSERT INTO {DB}.people SELECT seq, CONCAT('name ', seq), CONCAT('user', seq, '@example.com'), "
            "CONCAT(LPAD(seq % 899 + 100, 3, '0'), '-12-', LPAD(seq % 9999 + 1, 4, '0')), CONCAT('city ', seq % 100), "
            f"seq * 1.5 FROM {DB}.seq_1_to_{rows}"
        )
    c.close()


CONFIG = """
[gateway]
name = "mask-bench"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:{pg_port}"

[[listeners]]
protocol = "mysql"
listen = "127.0.0.1:{my_port}"

[[targets]]
name = "{db}"
protocol = "postgres"
environment = "bench"
dsn = "postgresql://postgres@127.0.0.1:5432/{db}?sslmode=disable"

[[targets]]
name = "{db}_my"
protocol = "mysql"
environment = "bench"
dsn = "mysql://root@127.0.0.1:3306/{db}?sslmode=disable"

[[identities]]
name = "analyst"
secret = "analyst-secret"

[[identities]]
name = "dpo"
secret = "dpo-secret"
groups = ["dpo"]

[audit]
file = "{audit}"

[[masks]]
id = "email"
columns = ["people.email"]
function = "email"
exempt_groups = ["dpo"]

[[masks]]
id = "ssn"
columns = ["people.ssn"]
function = "partial"
keep_last = 4
exempt_groups = ["dpo"]
"""

SQL = "SELECT id, name, email, ssn, city, amount FROM people"


def time_pg(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT 1")
        rows, elapsed = harness.timed(lambda: c.execute(SQL).fetchall())
    assert rows
    return elapsed


def time_mysql(**kw: object) -> float:
    c = pymysql.connect(**kw)  # type: ignore[arg-type]
    with c.cursor() as cur:
        cur.execute("SELECT 1")
        rows, elapsed = harness.timed(lambda: (cur.execute(SQL), cur.fetchall())[1])
    c.close()
    assert rows
    return elapsed


def measure(args: argparse.Namespace, services: harness.Services) -> int:
    protocols = ("postgres", "mysql") if args.protocol == "both" else (args.protocol,)
    if "postgres" in protocols:
        setup_pg(args.rows)
    if "mysql" in protocols:
        setup_mysql(args.rows)
    pg_port, my_port = harness.free_port(), harness.free_port()

    def config(audit: Path) -> str:
        return CONFIG.format(pg_port=pg_port, my_port=my_port, db=DB, audit=audit)

    harness.launch_gateway(services, config, pg_port, timeout=20)
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        if "postgres" in protocols:
            r = results.setdefault("postgres", {})
            r.setdefault("direct", []).append(time_pg(f"postgresql://postgres@127.0.0.1:5432/{DB}?sslmode=disable"))
            r.setdefault("sqlward, no masked column", []).append(
                time_pg(f"postgresql://dpo:dpo-secret@127.0.0.1:{pg_port}/{DB}?sslmode=disable"))
            r.setdefault("sqlward, 2 masked columns", []).append(
                time_pg(f"postgresql://analyst:analyst-secret@127.0.0.1:{pg_port}/{DB}?sslmode=disable"))
        if "mysql" in protocols:
            r = results.setdefault("mysql", {})
            r.setdefault("direct", []).append(
                time_mysql(host="127.0.0.1", port=3306, user="root", password="", database=DB))
            for label, user in (("sqlward, no masked column", "dpo"), ("sqlward, 2 masked columns", "analyst")):
                r.setdefault(label, []).append(time_mysql(
                    host="127.0.0.1", port=my_port, user=user, password=f"{user}-secret",
                    database=f"{DB}_my", ssl_disabled=True))
    print(f"rows: {args.rows}, rounds: {args.rounds} (median seconds to fetch the whole result)")
    for protocol, paths in results.items():
        direct = harness.median(paths["direct"])
        for label, times in paths.items():
            median = harness.median(times)
            print(f"  {protocol:8} {label:28} {median:7.3f} s   {harness.ratio(median, direct):5.2f}x direct")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--protocol", choices=("postgres", "mysql", "both"), default="both")
    args = ap.parse_args()
    return harness.run_guarded(lambda services: measure(args, services), log, tmp_prefix="sqlward-maskbench-")


if __name__ == "__main__":
    sys.exit(main())
