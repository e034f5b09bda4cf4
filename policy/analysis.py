"""Literal-free facts about a request text: `analyse(sql, dialect) -> Analysis`.

How it works (DESIGN.md sections 3 and 5):

1. **Lex and split with our own lexer** (`policy.sqltext`). The text is tokenised with the same
   regex fragments as `policy.fingerprint` (so both agree on where strings, quoted identifiers
   and comments start and end) and split at every top-level `;`. Statements holding only
   whitespace or comments are dropped. If the lexer meets an unterminated quote or comment
   (`sqltext.Unlexable`), the whole text becomes a single statement with parse_status "error":
   we cannot even tell where statements end.
2. **Canonicalise before sqlglot sees anything** (`sqltext.canonical`). Every string literal
   (including E'', dollar quotes, MySQL "..") becomes `'?'`, comments become a space, MySQL
   executable comments `/*! ... */` and `/*M! ... */` are unwrapped and optimizer hints are
   dropped. sqlglot drops executable comments as comments (`/*!40101 SET NAMES utf8 */` parses
   to nothing), while the server runs them: `SELECT 1 /*!, (SELECT pw FROM secret) */` reads
   `secret`. Our lexer decides alone where strings, identifiers and comments are, so sqlglot's
   lexer never gets a chance to disagree with it on statement boundaries or hidden text, and
   string contents never reach the facts, which is what lets `policy.engine` cache them per
   fingerprint. `%s` is passed on as the placeholder the fingerprint takes it for (`$1` / `?`),
   not as sqlglot's modulo; two `-` operators (MySQL `--x` is not a comment) are emitted as
   `- -`; in postgres the `[]` of `::oid[]` / `AS regclass[]` casts is dropped (sqlglot 30 fails
   on array casts to oid and reg* types, which asyncpg's type introspection sends).
3. **Recognise a few fixed-shape statements lexically** (`sqltext.known_shape`,
   `sqltext.unwrap`) that sqlglot 30 gets wrong or refuses: START TRANSACTION [modes] (parsed
   as an alias or a ParseError), SAVEPOINT / RELEASE / ROLLBACK TO, ABORT, LISTEN / UNLISTEN /
   NOTIFY, DEALLOCATE, DISCARD, SHOW (postgres), RESET, CHECKPOINT. PostgreSQL EXPLAIN
   [ANALYZE] and PREPARE .. AS are unwrapped and the inner statement analysed (EXPLAIN ANALYZE
   runs it), giving ("explain", "delete", ...).
4. **Parse each statement with `sqlglot.parse(text, read=dialect)`** and walk the AST:
   operations (top level first, then nested DML in breadth-first order, deduplicated),
   tables read and written (`schema.table` as written, lower-cased unless quoted; CTE
   references are not tables), has_where (over every UPDATE / DELETE in the statement, MERGE
   actions excepted), and the object kind of DDL in `detail`.
5. **Fail closed.** `exp.Command` (sqlglot's "I did not understand this" fallback) and any
   top-level node that is not a statement (sqlglot 30 parses `LISTEN ch`, `CLUSTER t`,
   `FLUSH TABLES` as a column with an alias) give parse_status "unparsed" with the operation
   taken from the first keyword; a ParseError, TokenError or any other exception gives
   "error" with operation "unknown" (the first-keyword guess is appended to `operations` so
   that a rule on it can still match where unparsed statements are allowed).

Known limits: a server running with standard_conforming_strings=off (postgres) or
NO_BACKSLASH_ESCAPES / ANSI_QUOTES (mysql) reads quotes differently from this lexer; compound
statements with inner semicolons (MySQL BEGIN .. END bodies, PostgreSQL BEGIN ATOMIC) are split
at the semicolons and so come out as errors (refused outside development). The fingerprint
merges numbers, strings and placeholders into `?`, and sqlglot sometimes accepts one kind where
it rejects another, so for text that is not valid SQL (`varchar('x')` vs `varchar(5)`) two texts
with one fingerprint can differ in parse status; keywords and identifiers, hence tables and
operations, are the same by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.simplify import simplify

from sqlward.policy.fingerprint import fingerprint
from sqlward.policy.model import Analysis, ParseStatus, StatementFacts
from sqlward.policy.sqltext import (
    LEXICONS,
    VERSIONED_COMMENT,
    Token,
    Unlexable,
    canonical,
    executable_comment,
    known_shape,
    significant,
    split_statements,
    statement_key,
    tokenize,
    unwrap,
)

__all__ = ["analyse", "split_texts"]


# ------------------------------------------------------------------ first-keyword classification

_KEYWORD_OPS: Final[dict[str, str]] = {
    "SELECT": "select",
    "WITH": "select",
    "VALUES": "select",
    "TABLE": "select",
    "INSERT": "insert",
    "REPLACE": "insert",
    "UPDATE": "update",
    "DELETE": "delete",
    "MERGE": "merge",
    "COPY": "copy",
    "DROP": "drop",
    "CREATE": "create",
    "ALTER": "alter",
    "RENAME": "alter",
    "TRUNCATE": "truncate",
    "GRANT": "grant",
    "REVOKE": "revoke",
    "SET": "set",
    "RESET": "set",
    "SHOW": "show",
    "BEGIN": "begin",
    "START": "begin",
    "COMMIT": "commit",
    "END": "commit",
    "ROLLBACK": "rollback",
    "ABORT": "rollback",
    "SAVEPOINT": "savepoint",
    "RELEASE": "savepoint",
    "CALL": "call",
    "EXPLAIN": "explain",
    "DESCRIBE": "explain",
    "DESC": "explain",
    "DO": "do",
    "ANALYZE": "analyze",
    "ANALYSE": "analyze",
    "VACUUM": "vacuum",
    "USE": "use",
    "PREPARE": "prepare",
    "EXECUTE": "execute",
    "DEALLOCATE": "deallocate",
    "LISTEN": "listen",
    "UNLISTEN": "listen",
    "NOTIFY": "notify",
    "LOCK": "lock",
    "UNLOCK": "lock",
    "COMMENT": "comment",
}

# Object kinds named after CREATE / DROP / ALTER (first one found wins).
_OBJECT_KINDS: Final = frozenset(
    "TABLE VIEW INDEX SCHEMA DATABASE FUNCTION PROCEDURE ROLE USER GROUP SEQUENCE TYPE TRIGGER "
    "EXTENSION POLICY SERVER PUBLICATION SUBSCRIPTION EVENT DOMAIN COLLATION AGGREGATE OPERATOR "
    "RULE TABLESPACE SYSTEM OWNED LANGUAGE CAST CONVERSION STATISTICS MATERIALIZED FOREIGN "
    "ROUTINE TRANSFORM ACCESS PLUGIN LOGFILE".split()
)


def _keyword_op(tokens: Sequence[Token]) -> tuple[str, str]:
    """(operation, detail) guessed from the leading keywords, for statements sqlglot missed."""
    words = [t.text.upper() for t in significant(tokens) if t.kind == "word"][:8]
    if not words:
        return "other", ""
    first = words[0]
    op = _KEYWORD_OPS.get(first)
    if op is None:
        return "other", first.lower()
    detail = ""
    if op in ("create", "drop", "alter"):
        for i, w in enumerate(words[1:], start=1):
            if w in _OBJECT_KINDS:
                nxt = words[i + 1].lower() if i + 1 < len(words) else ""
                if w == "MATERIALIZED":
                    detail = "materialized view"
                elif w in ("FOREIGN", "EVENT", "ACCESS") and nxt:
                    detail = f"{w.lower()} {nxt}"
                else:
                    detail = w.lower()
                break
    elif op == "set":
        detail = _set_detail(words)
    elif op in ("grant", "revoke"):
        if "ON" in words:
            after = words[words.index("ON") + 1] if words.index("ON") + 1 < len(words) else ""
            detail = after.lower() if after in _OBJECT_KINDS else ""
        else:
            detail = "role"
    elif op in ("truncate", "lock"):
        detail = "table"
    elif first == "REPLACE":
        detail = "replace"
    return op, detail


def _set_detail(words: Sequence[str]) -> str:
    """'role' for SET [LOCAL|SESSION|DEFAULT] ROLE, 'session authorization', 'password', 'reset'."""
    if words and words[0] == "RESET":
        return "reset"
    rest = list(words[1:])
    while rest and rest[0] in ("LOCAL", "SESSION", "GLOBAL", "PERSIST", "DEFAULT"):
        rest.pop(0)
    first = rest[0] if rest else ""
    return {
        "AUTHORIZATION": "session authorization",
        "SESSION_AUTHORIZATION": "session authorization",  # SET session_authorization = 'bob'
        "ROLE": "role",
        "PASSWORD": "password",
    }.get(first, "")


def _keyword_facts(tokens: Sequence[Token], status: ParseStatus) -> StatementFacts:
    op, detail = _keyword_op(tokens)
    if status == "error":
        ops = ("unknown", op) if op != "other" else ("unknown",)
        return StatementFacts(operation="unknown", operations=ops, parse_status="error")
    ops = ("insert", "delete") if detail == "replace" else (op,)
    return StatementFacts(operation=op, operations=ops, parse_status=status, detail=detail)


# ----------------------------------------------------------------------------- AST walking

_TOP_OPS: Final[dict[type[exp.Expression], str]] = {
    exp.Select: "select",
    exp.Union: "select",
    exp.Intersect: "select",
    exp.Except: "select",
    exp.Values: "select",
    exp.Subquery: "select",
    exp.Insert: "insert",
    exp.Update: "update",
    exp.Delete: "delete",
    exp.Merge: "merge",
    exp.Copy: "copy",
    exp.Drop: "drop",
    exp.Create: "create",
    exp.Alter: "alter",
    exp.TruncateTable: "truncate",
    exp.Grant: "grant",
    exp.Revoke: "revoke",
    exp.Set: "set",
    exp.Show: "show",
    exp.Use: "use",
    exp.Transaction: "begin",
    exp.Commit: "commit",
    exp.Rollback: "rollback",
    exp.Comment: "comment",
    exp.Analyze: "analyze",
    exp.Describe: "explain",
    exp.Kill: "kill",
}
# Operations counted wherever they appear in the tree.
_NESTED_OPS: Final[dict[type[exp.Expression], str]] = {
    exp.Select: "select",
    exp.Insert: "insert",
    exp.Update: "update",
    exp.Delete: "delete",
    exp.Merge: "merge",
}
_TABLE_KINDS: Final = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE"})


def _ident(node: exp.Expression) -> str:
    name = str(node.this) if isinstance(node, exp.Identifier) else node.name
    return name if isinstance(node, exp.Identifier) and node.quoted else name.lower()


def _table_name(table: exp.Table) -> str | None:
    """`catalog.schema.table` as written (unquoted parts lower-cased), or None for a table
    function, a variable and the like."""
    if not isinstance(table.this, exp.Identifier):
        return None
    parts = []
    for key in ("catalog", "db"):
        part = table.args.get(key)
        if isinstance(part, exp.Expression) and part.name:
            parts.append(_ident(part))
    parts.append(_ident(table.this))
    return ".".join(parts)


def _target(node: exp.Expression | None) -> exp.Table | None:
    if isinstance(node, exp.Schema):
        node = node.this
    return node if isinstance(node, exp.Table) else None


def _is_cte_reference(table: exp.Table) -> bool:
    """Whether an unqualified table name refers to a CTE visible at that point."""
    if table.args.get("db") is not None or table.args.get("catalog") is not None:
        return False
    name = _ident(table.this)
    child: exp.Expression = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With) and isinstance(child, exp.CTE):
            ctes = node.expressions
            visible = ctes if node.args.get("recursive") else ctes[: ctes.index(child)]
            if any(_ident(c.args["alias"].this) == name for c in visible if c.args.get("alias")):
                return True
        else:
            with_ = node.args.get("with_") or node.args.get("with")
            if isinstance(with_, exp.With) and with_ is not child:
                if any(_ident(c.args["alias"].this) == name for c in with_.expressions if c.args.get("alias")):
                    return True
        child = node
        node = node.parent
    return False


def _kind(node: exp.Expression) -> str:
    kind = node.args.get("kind")
    text = (kind if isinstance(kind, str) else getattr(kind, "name", "") or "").upper()
    if text == "VIEW" and (node.args.get("materialized") or node.find(exp.MaterializedProperty)):
        return "MATERIALIZED VIEW"
    return text


def _copy_detail(node: exp.Copy) -> str:
    direction = "from" if node.args.get("kind") else "to"
    source = "file"
    for f in node.args.get("files") or ():
        if isinstance(f, exp.Identifier) and f.name.upper() in ("STDIN", "STDOUT", "PROGRAM"):
            source = f.name.lower()
    return f"{direction} {source}"


class _Tables:
    def __init__(self) -> None:
        self.written: dict[int, exp.Table] = {}
        self.excluded: set[int] = set()

    def write(self, node: exp.Expression | None) -> None:
        table = _target(node)
        if table is not None:
            self.written[id(table)] = table

    def exclude(self, node: exp.Expression | None) -> None:
        if node is not None:
            for table in node.find_all(exp.Table):
                self.excluded.add(id(table))


def _classify_tables(tree: exp.Expression) -> _Tables:
    tables = _Tables()
    for node in tree.walk():
        if isinstance(node, exp.Insert):
            tables.write(node.this)
        elif isinstance(node, exp.Update):
            tables.write(node.this)
            if isinstance(node.this, exp.Table):  # MySQL multi-table UPDATE may write any of them
                for join in node.this.args.get("joins") or ():
                    tables.write(join.this)
        elif isinstance(node, exp.Delete):
            targets = node.args.get("tables")
            if targets:  # MySQL DELETE a, b FROM ...: names may be aliases of FROM tables
                sources: dict[str, exp.Table] = {}
                for t in node.find_all(exp.Table):
                    if any(t is x for x in targets):
                        continue
                    alias = t.args.get("alias")
                    if alias is not None and alias.name:
                        sources[_ident(alias.this)] = t
                    name = _table_name(t)
                    if name is not None:
                        sources.setdefault(name, t)
                for ref in targets:
                    tables.excluded.add(id(ref))
                    name = _table_name(ref)
                    resolved = sources.get(name) if name is not None else None
                    if resolved is not None:
                        tables.write(resolved)
                    else:
                        tables.excluded.discard(id(ref))
                        tables.write(ref)
            else:
                tables.write(node.this)
        elif isinstance(node, exp.Merge):
            tables.write(node.this)
        elif isinstance(node, exp.Select):
            into = node.args.get("into")
            if isinstance(into, exp.Into):
                tables.write(into.this)
        elif isinstance(node, exp.Copy):
            if node.args.get("kind"):
                tables.write(node.this)
        elif isinstance(node, exp.Create):
            kind = _kind(node)
            if kind in _TABLE_KINDS:
                tables.write(node.this)
            elif kind == "INDEX" and isinstance(node.this, exp.Index):
                tables.write(node.this.args.get("table"))
            else:
                tables.exclude(node.this)
        elif isinstance(node, exp.Drop):
            kind = _kind(node)
            objects = list(node.args.get("tables") or ()) or [node.this]
            for obj in objects:
                if kind in _TABLE_KINDS:
                    tables.write(obj)
                else:
                    tables.exclude(obj)
            on = node.args.get("cluster")
            if kind == "INDEX" and isinstance(on, exp.OnProperty):
                tables.write(on.this)
        elif isinstance(node, exp.Alter):
            if _kind(node) in _TABLE_KINDS:
                tables.write(node.this)
            else:
                tables.exclude(node.this)
        elif isinstance(node, exp.TruncateTable):
            for t in node.expressions:
                if node.args.get("is_database"):
                    tables.exclude(t)
                else:
                    tables.write(t)
        elif isinstance(node, (exp.Grant, exp.Revoke)):
            securable = node.args.get("securable")
            if _kind(node) in ("", "TABLE"):
                tables.write(securable)
            else:
                tables.exclude(securable)
        elif isinstance(node, exp.Comment):
            if _kind(node) in _TABLE_KINDS:
                tables.write(node.this)
            else:
                tables.exclude(node.this)
        elif isinstance(node, exp.Use):
            tables.exclude(node)
    return tables


def _bounding(limit: exp.Expression | None) -> bool:
    """A LIMIT that bounds the rows: `LIMIT ALL` and `LIMIT NULL` are the same as no LIMIT."""
    if limit is None:
        return False
    value = limit.args.get("expression")
    if isinstance(value, exp.Null) or (isinstance(value, exp.Var) and value.name.upper() == "ALL"):
        return False
    return True


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _const_truth(node: exp.Expression) -> bool | None:
    """The truth of a row-independent condition when sqlglot's simplifier can tell, else None."""
    try:
        value = simplify(node.copy())
    except Exception:  # the simplifier gives up on odd input: unknown
        return None
    if isinstance(value, exp.Boolean):
        return bool(value.this)
    if isinstance(value, exp.Null):
        return False
    if isinstance(value, exp.Literal) and value.is_number:
        try:
            return float(value.this) != 0  # MySQL: WHERE 1
        except ValueError:
            return None
    return None


_ROW_DEPENDENT: Final = (exp.Column, exp.Subquery, exp.Select, exp.Star)
_LITERALS: Final = (exp.Literal, exp.Placeholder, exp.Parameter)


_T, _F, _R = "T", "F", "R"  # true for every row, false for every row, depends on the row
_AND: Final = {(a, b): (_F if _F in (a, b) else _T if a == b == _T else _R) for a in "TFR" for b in "TFR"}
_OR: Final = {(a, b): (_T if _T in (a, b) else _F if a == b == _F else _R) for a in "TFR" for b in "TFR"}
_NOT: Final = {_T: _F, _F: _T, _R: _R}


def _where_truth(cond: exp.Expression, literals: bool) -> tuple[frozenset[str], bool]:
    """The possible values of a WHERE condition over the rows of a table (T: it holds for every
    row, whatever the row: `id > 0 OR TRUE`, `id = id`, `now() > '2020'`; F: for none; R: it
    depends on the row) and whether literal values were involved. A row-independent part that
    uses literals is T or F depending on them, which the fingerprint merges: without `literals`
    it may be either; with `literals` (the text's own values) it is evaluated. A row-independent
    part the simplifier cannot evaluate counts as T (fail closed: it selects all rows or none)."""
    if isinstance(cond, exp.Paren):
        return _where_truth(cond.this, literals)
    if isinstance(cond, (exp.And, exp.Or)):
        (a, la), (b, lb) = _where_truth(cond.left, literals), _where_truth(cond.right, literals)
        table = _AND if isinstance(cond, exp.And) else _OR
        return frozenset(table[x, y] for x in a for y in b), la or lb
    if isinstance(cond, exp.Not):
        v, lit = _where_truth(cond.this, literals)
        return frozenset(_NOT[x] for x in v), lit
    if isinstance(cond, exp.Boolean):
        return frozenset(_T if cond.this else _F), False
    if not any(isinstance(n, _ROW_DEPENDENT) for n in cond.walk()):
        uses = any(isinstance(n, _LITERALS) for n in cond.walk())
        if uses and not literals:
            return frozenset((_T, _F)), True
        truth = _const_truth(cond)
        return frozenset(_F if truth is False else _T), uses
    if isinstance(cond, (exp.EQ, exp.GTE, exp.LTE, exp.NullSafeEQ)) and cond.left == cond.right:
        return frozenset(_T), False  # id = id: every row (but NULLs) matches
    return frozenset(_R), False


def _where_trivial(node: exp.Expression, literals: bool) -> str:
    where = node.args.get("where")
    if not isinstance(where, exp.Where) or where.this is None:
        return ""
    values, uses_literals = _where_truth(where.this, literals)
    if _T not in values:
        return ""
    if literals or not uses_literals:
        return "always"
    return "literals"


def _columns(tree: exp.Expression) -> list[str]:
    """Columns referenced, as `table.column` where the table can be told (its alias resolved, or
    the statement's only table), `table.*` for stars, else the bare column name."""
    aliases: dict[str, str] = {}
    tables: list[str] = []
    for t in tree.find_all(exp.Table):
        name = _table_name(t)
        if name is None:
            continue
        if not _is_cte_reference(t):
            tables.append(name)
        aliases[_ident(t.args["alias"].this) if t.args.get("alias") is not None and t.args["alias"].this is not None else name.rsplit(".", 1)[-1]] = name
    only = tables[0] if len(set(tables)) == 1 else ""
    out = []
    for col in tree.find_all(exp.Column):
        name = "*" if isinstance(col.this, exp.Star) else (_ident(col.this) if isinstance(col.this, exp.Identifier) else col.name.lower())
        qualifier = _ident(col.args["table"]) if isinstance(col.args.get("table"), exp.Identifier) else ""
        table = aliases.get(qualifier, qualifier) if qualifier else only
        out.append(f"{table}.{name}" if table else name)
    for star in tree.find_all(exp.Star):
        if isinstance(star.parent, exp.Select):
            out.extend(f"{t}.*" for t in dict.fromkeys(tables)) if tables else out.append("*")
    return out


def _ast_facts(tree: exp.Expression, literals: bool = False) -> StatementFacts | None:
    """Facts from a parsed statement; None when the top node is not a statement we know.
    `literals`: the text kept its string literals (per-text evaluation of literal facts)."""
    top = _TOP_OPS.get(type(tree))
    if top is None:
        return None
    ops = [top]
    wheres: list[bool] = []
    functions: list[str] = []
    select_into = ""
    modifying_cte = False
    trivial: set[str] = set()
    for node in tree.walk():
        op = _NESTED_OPS.get(type(node))
        if op is not None:
            ops.append(op)
        if isinstance(node, exp.Func):
            functions.append(_function_name(node))
        elif isinstance(node, exp.CTE):
            if isinstance(node.this, exp.Expression) and node.this.find(*_WRITE_NODES) is not None:
                modifying_cte = True
        if isinstance(node, exp.Select):
            into = node.args.get("into")
            if isinstance(into, exp.Into) and isinstance(_target(into.this), exp.Table):
                if _table_name(_target(into.this)) is not None:  # type: ignore[arg-type]
                    ops.append("create")
                    select_into = "table"
        elif isinstance(node, exp.When):
            then = node.args.get("then")
            if isinstance(then, exp.Var) and then.name.upper() == "DELETE":
                ops.append("delete")
        if isinstance(node, (exp.Update, exp.Delete)) and not isinstance(node.parent, exp.When):
            wheres.append(node.args.get("where") is not None)
            trivial.add(_where_trivial(node, literals))

    tables = _classify_tables(tree)
    read: list[str] = []
    written: list[str] = []
    for table in tree.find_all(exp.Table, bfs=False):  # depth-first: roughly text order
        if id(table) in tables.excluded:
            continue
        name = _table_name(table)
        if name is None:
            continue
        if id(table) in tables.written:  # a write target is always a real table, never a CTE
            written.append(name)
        elif not _is_cte_reference(table):
            read.append(name)

    detail = ""
    if isinstance(tree, (exp.Create, exp.Drop, exp.Alter, exp.Comment)):
        detail = _kind(tree).lower()
    elif isinstance(tree, exp.TruncateTable):
        detail = "database" if tree.args.get("is_database") else "table"
    elif isinstance(tree, (exp.Grant, exp.Revoke)):
        detail = _kind(tree).lower() or "table"
    elif isinstance(tree, exp.Copy):
        detail = _copy_detail(tree)
    elif isinstance(tree, exp.Use) and tree.this is not None:
        detail = tree.this.name  # the database a MySQL USE switches to (qualifies later tables)
    has_limit: bool | None = None
    if top == "select" and not isinstance(tree, exp.Values):
        query = tree.this if isinstance(tree, exp.Subquery) and tree.args.get("limit") is None else tree
        has_limit = any(
            isinstance(q, exp.Expression) and (_bounding(q.args.get("limit")) or q.args.get("fetch") is not None)
            for q in (tree, query)
        )
    return StatementFacts(
        operation=top,
        operations=_dedupe(ops),
        tables_read=_dedupe(read),
        tables_written=_dedupe(written),
        has_where=all(wheres) if wheres else None,
        parse_status="ok",
        detail=detail,
        functions=_dedupe(f for f in functions if f),
        select_into=select_into,
        has_limit=has_limit,
        data_modifying_cte=modifying_cte,
        where_trivial="always" if "always" in trivial else ("literals" if "literals" in trivial else ""),
        columns=_dedupe(_columns(tree)),
    )


_WRITE_NODES: Final = (exp.Insert, exp.Update, exp.Delete, exp.Merge)


def _routine_facts(tree: exp.Create, facts: StatementFacts, dialect: str) -> StatementFacts:
    """CREATE FUNCTION / PROCEDURE: the routine is an object written into its schema (a rule on
    `vault.*` sees `CREATE FUNCTION vault.f`), and on MySQL the body's unqualified tables are
    the routine's database's (a routine runs with its own database as the current one)."""
    udf = tree.this
    if _kind(tree) not in ("FUNCTION", "PROCEDURE") or not isinstance(udf, exp.UserDefinedFunction):
        return facts
    routine = udf.this
    name = _table_name(routine) if isinstance(routine, exp.Table) else None
    if name is None:
        return facts
    read = facts.tables_read
    if dialect == "mysql" and "." in name:
        db = name.rsplit(".", 1)[0]
        read = tuple(dict.fromkeys(t if "." in t else f"{db}.{t}" for t in read))
    return msgspec.structs.replace(
        facts, tables_read=read, tables_written=_dedupe((*facts.tables_written, name)),
    )


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower() if not isinstance(node.this, exp.Expression) else node.this.name.lower()
    try:
        return node.sql_name().lower()
    except Exception:  # a Func subclass without a usable name: not a fact worth failing over
        return type(node).__name__.lower()


# ------------------------------------------------------------------------- one statement


_SQLGLOT_TOKEN = re.compile(r"<Token token_type: [^,]*, text: (.*?), line: \d+, col: \d+, .*?>")
_POSITION = re.compile(r"\.?\s*Line \d+, Col: \d+\.?\s*$")


def _error_text(err: BaseException) -> str:
    """First line of a sqlglot error, without positions (they refer to the canonical text)."""
    text = (str(err).strip().splitlines() or [""])[0]
    text = _POSITION.sub("", _SQLGLOT_TOKEN.sub(r"'\1'", text))
    return text or type(err).__name__


_DML_WORDS: Final = frozenset("SELECT INSERT UPDATE DELETE MERGE WITH VALUES TABLE REPLACE CREATE EXECUTE DECLARE".split())


def _lexical_overlay(tokens: Sequence[Token], facts: list[StatementFacts]) -> list[StatementFacts]:
    """Facts read from the keywords themselves (they also hold where sqlglot failed): what a
    RESET resets, INTO OUTFILE / DUMPFILE, LOAD DATA / XML, EXPLAIN ANALYZE, and for statements sqlglot
    did not parse, the functions called (a word followed by `(`)."""
    sig = significant(tokens)
    words = [t.text.upper() for t in sig if t.kind == "word"]
    into = ""
    for a, b in zip(words, words[1:]):
        if a == "INTO" and b in ("OUTFILE", "DUMPFILE"):
            into = b.lower()
            break
    load_data = len(words) > 1 and words[0] == "LOAD" and words[1] in ("DATA", "XML")
    analyze = False
    if words and words[0] == "EXPLAIN":
        for w in words[1:]:
            if w in _DML_WORDS:
                break
            if w in ("ANALYZE", "ANALYSE"):
                analyze = True
                break
    elif len(words) > 1 and words[0] in ("ANALYZE", "ANALYSE") and words[1] in _DML_WORDS:
        analyze = True  # MariaDB: ANALYZE <statement> runs it
    reset = " ".join(words[1:3]).lower() if words and words[0] == "RESET" else ""
    if reset and reset != "session authorization":
        reset = reset.split(" ")[0]
    lexical_functions: tuple[str, ...] | None = None
    keyword_detail: str | None = None
    out = []
    for f in facts:
        functions = f.functions
        if f.parse_status != "ok" and not functions:
            if lexical_functions is None:
                lexical_functions = _dedupe(
                    (t.text if t.kind == "word" else t.text.strip('"')).lower()
                    for t, n in zip(sig, sig[1:]) if t.kind in ("word", "qid") and n.text == "("
                )
            functions = lexical_functions
        guessed = f.keyword_detail
        if f.parse_status == "error" and not f.detail and not guessed:
            if keyword_detail is None:
                keyword_detail = _keyword_op(tokens)[1]
            guessed = keyword_detail
        out.append(
            msgspec.structs.replace(
                f,
                functions=functions,
                select_into=f.select_into or into,
                load_data=f.load_data or load_data,
                explain_analyze=f.explain_analyze or analyze,
                reset=f.reset or reset,
                keyword_detail=guessed,
            )
        )
    return out


def _statement(tokens: Sequence[Token], dialect: str, literals: bool = False) -> tuple[list[StatementFacts], str]:
    """Facts of one `;`-delimited piece (sqlglot may still find several) and an error text."""
    facts, error = _statement_facts(tokens, dialect, literals)
    return _lexical_overlay(tokens, facts), error


def _statement_facts(tokens: Sequence[Token], dialect: str, literals: bool = False) -> tuple[list[StatementFacts], str]:
    known = known_shape(tokens, dialect)
    if known is not None:
        op, detail = known
        return [StatementFacts(operation=op, operations=(op,), detail=detail)], ""
    unwrapped = unwrap(tokens, dialect)
    if unwrapped is not None:
        op, inner_tokens = unwrapped
        inner, error = _statement(inner_tokens, dialect, literals)
        facts = []
        for f in inner:
            facts.append(msgspec.structs.replace(f, operation=op, operations=_dedupe((op, *f.operations))))
        return facts, error
    text = canonical(tokens, dialect, literals)
    try:
        trees = [t for t in sqlglot.parse(text, read=dialect) if t is not None]
    except Exception as err:  # ParseError, TokenError, RecursionError, sqlglot bugs: fail closed
        return [_keyword_facts(tokens, "error")], _error_text(err)
    if not trees:  # sqlglot saw nothing; we did: do not let it through as "empty"
        return [_keyword_facts(tokens, "unparsed")], ""
    facts = []
    for tree in trees:
        try:
            f = None if isinstance(tree, exp.Command) else _ast_facts(tree, literals)
        except Exception as err:  # a surprise in the AST walk: fail closed
            return [_keyword_facts(tokens, "error")], f"analysis failed: {_error_text(err)}"
        if f is None:
            f = _keyword_facts(tokens, "unparsed")
        elif f.operation == "create" and isinstance(tree, exp.Create):
            f = _routine_facts(tree, f, dialect)
        elif f.operation == "set":
            words = [t.text.upper() for t in significant(tokens) if t.kind == "word"][:6]
            f = msgspec.structs.replace(f, detail=_set_detail(words))
        facts.append(f)
    return facts, ""


# --------------------------------------------------------------------------------- public

_RANK: Final[dict[str, int]] = {"ok": 0, "unparsed": 1, "error": 2}


def analyse(sql: str, dialect: str, fingerprint_: str | None = None, *, keep_literals: bool = False) -> Analysis:
    """Facts about every statement of `sql`. `fingerprint_` saves recomputing a known key.
    `keep_literals` passes string literals to sqlglot as written, so literal-dependent facts
    (`where_trivial`) are judged on this very text; such an Analysis must not be cached by
    fingerprint."""
    if dialect not in LEXICONS:
        raise ValueError(f"unknown SQL dialect {dialect!r}")
    fp = fingerprint(sql, dialect) if fingerprint_ is None else fingerprint_
    try:
        pieces = split_statements(tokenize(sql, dialect))
        if dialect == "mysql" and VERSIONED_COMMENT.search(sql):
            # Whether a versioned comment runs depends on the server's version: judge both
            # readings (the statements of each; any refusal refuses the request).
            seen = {statement_key(p) for p in pieces}
            pieces += [p for p in split_statements(tokenize(sql, dialect, versioned=False)) if statement_key(p) not in seen]
    except Unlexable:
        facts = _keyword_facts([], "error")
        return Analysis(
            fingerprint=fp,
            dialect=dialect,
            statements=(facts,),
            parse_status="error",
            error="unterminated quoted string, quoted identifier or comment",
        )
    statements: list[StatementFacts] = []
    first_error = ""
    executable = dialect == "mysql" and executable_comment(sql, dialect)
    for piece in pieces:
        facts, error = _statement(piece, dialect, keep_literals)
        statements.extend(facts)
        if error and not first_error:
            first_error = error
    status: ParseStatus = "ok"
    for s in statements:
        if _RANK[s.parse_status] > _RANK[status]:
            status = s.parse_status
    return Analysis(
        fingerprint=fp,
        dialect=dialect,
        statements=tuple(statements),
        parse_status=status,
        error=first_error,
        executable_comment=executable,
    )


def split_texts(sql: str, dialect: str) -> list[str]:
    """The text of each statement `analyse` finds in `sql`, in the same order, literals kept and
    comments dropped (what `policy.estimates` sends to EXPLAIN). A piece sqlglot reads as
    several statements is rendered back by sqlglot, one text per statement. MySQL versioned
    comments are read the way the newest server reads them (both readings are analysed, so the
    counts then differ and the caller has no estimate: fail closed)."""
    texts: list[str] = []
    for piece in split_statements(tokenize(sql, dialect)):
        text = canonical(piece, dialect, literals=True)
        if known_shape(piece, dialect) is not None or unwrap(piece, dialect) is not None:
            texts.append(text)
            continue
        try:
            trees = [t for t in sqlglot.parse(text, read=dialect) if t is not None]
        except Exception:
            texts.append(text)
            continue
        if len(trees) <= 1:
            texts.append(text)
        else:
            texts.extend(t.sql(dialect=dialect) for t in trees)
    return texts
