"""Micro-benchmark of the policy hot path (DESIGN.md section 9).

Prints µs per call for `fingerprint()`, an `Engine.analyse()` cache hit and an `Engine.decide()`
cache hit on a pgbench -S statement whose literal changes every call (the simple-protocol case:
a cache keyed by raw text would miss every time), plus a cold `analyse()` (a full sqlglot parse)
for scale, of that statement and of a ~130-character join (and sqlglot's own tokenize and parse
of the join). Best of several rounds, to damp the noise of a shared machine. The first line
names the sqlglot version and build in use (compiled by sqlglotc, or pure Python).

    python bench/policy_micro.py [--rounds 7] [--number 100000]
    python -m bench.policy_micro [--rounds 7] [--number 100000]

It also prints decisions per second for a cached shape and a new shape, and the time to analyse
and decide 1,000 distinct statement shapes cold (both dialects).
"""

from __future__ import annotations

import argparse
import logging
import time
import timeit

import sqlglot
from sqlglot.dialects.dialect import Dialect

from sqlward.policy.analysis import analyse
from sqlward.policy.engine import Engine
from sqlward.policy.fingerprint import fingerprint
from sqlward.policy.model import Identity, TargetInfo
from sqlward.policy.rules import EnvironmentPolicy, Rule
from sqlward.policy.sqlglot_build import COMPILED

STATEMENT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
# A ~130-character join: the cold-parse figure of docs/performance.md ("Compiled sqlglot").
JOIN = ("SELECT a.aid, a.abalance, b.bbalance FROM pgbench_accounts a JOIN pgbench_branches b "
        "ON b.bid = a.bid WHERE a.aid = 42 AND b.bid < 9")


def best_us(func: object, number: int, rounds: int) -> float:
    times = timeit.repeat(func, number=number, repeat=rounds)  # type: ignore[arg-type]
    return min(times) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    logging.getLogger("sqlglot").setLevel(logging.ERROR)

    texts = [STATEMENT.format(aid) for aid in range(1, 100_001)]
    engine = Engine(
        rules=[
            Rule(id="no-drop", action="deny", operations=("drop", "truncate"), environments=("production",)),
            Rule(id="no-unbounded-delete", action="deny", operations=("delete",), has_where=False),
            Rule(id="bench-read", action="allow", operations=("select",), tables=("pgbench_*",)),
        ],
        environments={"production": EnvironmentPolicy(default_action="deny")},
        version=1,
    )
    identity = Identity(subject="bench", groups=("load",))
    target = TargetInfo(name="pgbench", protocol="postgres", environment="production")

    it = iter(range(10**12))

    def fp() -> None:
        fingerprint(texts[next(it) % 100_000], "postgres")

    def analyse_hit() -> None:
        engine.analyse(texts[next(it) % 100_000], "postgres")

    analysis = engine.analyse(texts[0], "postgres")
    decision = engine.decide(analysis, identity, target)
    assert decision.action == "allow", decision

    def decide_hit() -> None:
        engine.decide(analysis, identity, target)

    def index_only() -> None:
        texts[next(it) % 100_000]

    tokenizer = Dialect.get_or_raise("postgres").tokenizer()
    base = best_us(index_only, args.number, args.rounds)
    results = [
        ("fingerprint()", best_us(fp, args.number, args.rounds) - base),
        ("Engine.analyse() cache hit", best_us(analyse_hit, args.number, args.rounds) - base),
        ("Engine.decide() cache hit", best_us(decide_hit, args.number, args.rounds)),
        ("analyse() cold (sqlglot parse)", best_us(lambda: analyse(texts[1], "postgres"), 2_000, 3)),
        (f"analyse() cold, {len(JOIN)}-char join", best_us(lambda: analyse(JOIN, "postgres"), 1_000, 3)),
        # sqlglot alone on the join: what the compiled build speeds up (analyse() adds sqlward's
        # own lexing, canonical text and AST walk, which stay Python).
        ("  sqlglot tokenize, join", best_us(lambda: tokenizer.tokenize(JOIN), 3_000, 3)),
        ("  sqlglot parse_one, join", best_us(lambda: sqlglot.parse_one(JOIN, read="postgres"), 1_000, 3)),
    ]
    print(f"sqlglot {sqlglot.__version__} ({'compiled, sqlglotc' if COMPILED else 'pure Python'})")
    print(f"statement: {texts[0]!r}")
    print(f"fingerprint: {analysis.fingerprint!r}")
    for label, us in results:
        print(f"{label:32s} {us:8.2f} µs/call")

    # Decisions per second: a cached shape (fingerprint + analysis hit + decision hit, the
    # simple-protocol path) and a new shape (cold parse + first decision), then a corpus of
    # 1,000 distinct statement shapes analysed and decided cold.
    cached = best_us(lambda: engine.decide(engine.analyse(texts[next(it) % 100_000], "postgres"), identity, target),
                     args.number, args.rounds) - base
    corpus = distinct_statements(1000)

    fresh = Engine(rules=engine.rules, environments=engine.environments, version=2)
    started = time.perf_counter()
    for sql, dialect in corpus:
        fresh.decide(fresh.analyse(sql, dialect), identity, target)
    cold_total = time.perf_counter() - started
    print(f"{'cached shape: analyse+decide':32s} {cached:8.2f} µs/call  ({1e6 / cached:,.0f} decisions/s)")
    print(f"{'new shape: analyse+decide':32s} {cold_total / len(corpus) * 1e6:8.2f} µs/call  "
          f"({len(corpus) / cold_total:,.0f} decisions/s)")
    print(f"{len(corpus)} distinct statements cold: {cold_total * 1000:.0f} ms in all "
          f"({len({fresh.analyse(q, d).fingerprint for q, d in corpus})} distinct fingerprints)")


def distinct_statements(n: int) -> list[tuple[str, str]]:
    """`n` statements of distinct shapes (different tables, columns, clauses, both dialects)."""
    shapes = [
        ("SELECT c{i}, d FROM t{i} WHERE a = 1 AND b > 2 ORDER BY c{i} LIMIT 10", "postgres"),
        ("UPDATE t{i} SET c{i} = c{i} + 1 WHERE id = 7", "postgres"),
        ("DELETE FROM s{i}.t WHERE created < now() - interval '1 day'", "postgres"),
        ("INSERT INTO t{i} (a, b) SELECT a, b FROM u{i} WHERE z IS NULL", "postgres"),
        ("WITH x{i} AS (SELECT * FROM t{i}) SELECT count(*) FROM x{i} JOIN u ON u.id = x{i}.id", "postgres"),
        ("SELECT `c{i}` FROM `db`.`t{i}` WHERE id IN (1, 2, 3) LIMIT 5", "mysql"),
        ("UPDATE t{i} JOIN u{i} ON t{i}.id = u{i}.id SET t{i}.a = 1 WHERE u{i}.b = 2", "mysql"),
        ("INSERT INTO t{i} (a) VALUES (1) ON DUPLICATE KEY UPDATE a = a + {i}", "mysql"),
    ]
    return [(shapes[i % len(shapes)][0].format(i=i), shapes[i % len(shapes)][1]) for i in range(n)]


if __name__ == "__main__":
    main()
