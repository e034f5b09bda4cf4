"""PostgreSQL name resolution: the session's search_path at each statement, and the tables an
unqualified name may be.

PostgreSQL finds an unqualified table in the first schema of the session's effective search
list that holds it: `pg_temp` first (when the session has temporary objects and the path does not
name it), then `pg_catalog` (unless the path names it), then the path's schemas that exist, with
`"$user"` standing for the current role. A rule on `vault.*` only holds if the gateway resolves
`secrets` to `vault.secrets` whenever the server will, so the gateway follows the path.

How it works (pure, no I/O):

- `SearchPath` is what the gateway knows of one session's path when a statement runs: one or
  more candidate search lists (`paths`, each a tuple of schema names in search order, pg_catalog
  and pg_temp where the server places them), the lists the session may return to when a
  transaction or savepoint ends (`history`), and `unknown` (why) when a statement may have set
  it to anything. The adapter builds it from the server's own answer
  (`current_schemas(true)`, read at session start and again whenever it may have changed: see
  `adapters/postgres/relay.py`), so role and database defaults, startup `options` and `"$user"`
  are the server's.
- `trace(path, analysis, sql)` follows one request statement by statement: `SET [SESSION |
  LOCAL] search_path`, `SET search_path TO DEFAULT`, `RESET search_path`, `RESET ALL`,
  `DISCARD ALL` (exact: the next statement runs only if this one did), `set_config('search_path',
  '<literal>', <literal>)` anywhere in a statement (it may or may not run: the new list is added
  to the candidates), COMMIT / ROLLBACK / ROLLBACK TO / ABORT / END / PREPARE TRANSACTION (the
  path may return to any list of `history`), and statements that may set it to anything:
  `set_config` with a computed argument, CALL, DO, EXECUTE, SET ROLE / SESSION AUTHORIZATION, a
  function that is no built-in (user code may call set_config). It returns the path in effect
  at each statement and the path after the request (None: unchanged). Requests without any of
  these (a plain SELECT, INSERT, ...) cost one pass over the statements' facts.
- `resolve(analysis, per_statement, relations)` maps each unqualified table name of each
  statement to its candidates `schema.table`: for each candidate list, the first schema whose
  catalogue (`relations`) holds the name, or every schema of the list when the catalogue does
  not hold it or is not given. `pg_catalog` is a candidate only for `pg_*` names (where the
  system catalogs live) and `pg_temp` never (temporary objects are the session's own, created
  under the policy). With an unknown path, every schema the catalogue holds the name in is a
  candidate; without a catalogue nothing can be said (`Unresolvable`).

The engine replaces each unqualified name by its candidates, so its usual matching gives the
conservative reading: deny and review rules match when any candidate matches, allow rules only
when every candidate is covered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import msgspec
from sqlglot import exp

from sqlward.policy.model import Analysis, StatementFacts
from sqlward.policy.pg_builtins import PG_BUILTINS
from sqlward.policy.sqltext import Token, Unlexable, significant, split_statements, tokenize

__all__ = [
    "DEFAULT_PATH",
    "LOST",
    "Resolution",
    "SearchPath",
    "Unresolvable",
    "effective",
    "parse_path",
    "resolve",
    "trace",
    "unsure",
]

PathKey = tuple[str, ...]
# The names of one statement resolved: (name as written, its candidates), in first-seen order.
StatementNames = tuple[tuple[str, tuple[str, ...]], ...]
Resolution = tuple[StatementNames, ...]

DEFAULT_PATH: Final[PathKey] = ("pg_catalog", "public")
# In `SearchPath.history`: the session had a list sqlward never learned (it was unknown inside
# the transaction), so the end of the transaction may restore anything.
LOST: Final[PathKey] = ("?",)


class SearchPath(msgspec.Struct, frozen=True):
    """What the gateway knows of a PostgreSQL session's search_path (see the module doc)."""

    paths: tuple[PathKey, ...] = (DEFAULT_PATH,)
    # Lists the session had since it was last seen outside a transaction: where a COMMIT,
    # ROLLBACK or ROLLBACK TO SAVEPOINT may take it back.
    history: tuple[PathKey, ...] = ()
    # Non-empty: a statement may have set the path to anything (why).
    unknown: str = ""
    # current_user, for "$user" in a new path.
    user: str = ""
    # The session's value at start: what RESET and DISCARD ALL return to.
    reset: PathKey = DEFAULT_PATH
    # Schemas the path names that did not exist when the server was asked (other than the
    # role's own "$user"), and the whole list as named: one created since would win.
    absent: tuple[str, ...] = ()
    listed: PathKey = ()

    @property
    def certain(self) -> bool:
        return not self.unknown and len(self.paths) == 1

    def shown(self) -> list[list[str]] | str:
        """For the audit record: the candidate lists, or why the path is unknown."""
        return self.unknown or [list(p) for p in self.paths]


class Unresolvable(Exception):
    """The path is unknown and no catalogue tells where a name may be."""


# ----------------------------------------------------------------------------------- values

_IDENT = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^\s,"]+))\s*')


def parse_path(value: str) -> list[str] | None:
    """The schema names of a search_path value as the server reads it (`a, "B c", $user`):
    unquoted names folded to lower case, quoted ones kept; None when it is no such list (an
    empty element, a stray quote)."""
    out: list[str] = []
    if not value.strip():
        return []
    pos = 0
    while True:
        m = _IDENT.match(value, pos)
        if m is None:
            return None
        quoted, plain = m.group(1), m.group(2)
        if quoted is not None:
            out.append(quoted.replace('""', '"'))
        else:
            out.append(plain.lower())
        pos = m.end()
        if pos == len(value):
            return out
        if value[pos] != ",":
            return None
        pos += 1


def effective(schemas: Iterable[str], user: str) -> PathKey:
    """The search list the server uses for a path of `schemas`: "$user" replaced by the current
    role, pg_catalog first unless named (pg_temp is not resolved into; see the module doc)."""
    out: list[str] = []
    for s in schemas:
        if s == "$user":
            if not user:
                continue
            s = user
        if s.startswith("pg_temp_"):
            s = "pg_temp"
        if s not in out:
            out.append(s)
    if "pg_catalog" not in out:
        out.insert(0, "pg_catalog")
    return tuple(out)


def _union(*groups: Iterable[PathKey]) -> tuple[PathKey, ...]:
    return tuple(dict.fromkeys(p for g in groups for p in g))


# ----------------------------------------------------------------------------------- effects


def _sqlglot_names() -> frozenset[str]:
    names: set[str] = set()
    stack: list[type] = [exp.Func]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        try:
            names.update(n.lower() for n in cls.sql_names())  # type: ignore[attr-defined]
        except Exception:  # a class without names: nothing to learn
            pass
        names.add(cls.__name__.lower())
    return frozenset(names)


# Functions that cannot change the session's search_path. Not set_config (it is read for its
# arguments) and not the functions that run a query text (which may call set_config).
_RUNS_SQL: Final = frozenset({
    "set_config", "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema",
})
_PURE: Final = (PG_BUILTINS | _sqlglot_names()) - _RUNS_SQL - {"anonymous"}
# Names sqlglot reads as a function of its own (and may rename: nvl -> coalesce) that are no
# PostgreSQL built-in: a call of one runs a user function.
_NOT_PG: Final = frozenset(n for n in _sqlglot_names() if n.isidentifier()) - PG_BUILTINS - frozenset({
    # SQL syntax that looks like a call (no pg_proc entry behind it), and interval fields
    # (`INTERVAL '1' SECOND(3)`)
    "cast", "coalesce", "greatest", "least", "nullif", "grouping", "trim", "extract", "position", "overlay",
    "substring", "exists", "array", "row", "values", "xmlelement", "xmlforest", "xmlattributes", "xmlparse",
    "xmlpi", "xmlroot", "xmlserialize", "xmlconcat", "xmlexists", "xmltable", "treat", "normalize", "collation",
    "year", "month", "day", "hour", "minute", "second", "interval", "filter", "over", "within", "any", "some",
    "all", "in", "and", "or", "not", "columns", "json", "json_object", "json_array", "json_objectagg",
    "json_arrayagg", "json_value", "json_query", "json_exists", "json_table", "json_scalar", "json_serialize",
})
# Statements whose effect on the path is read from their text.
_SETTING_OPS: Final = frozenset({"set", "other", "reset", "discard", "unknown"})
_TX_END_OPS: Final = frozenset({"commit", "rollback"})
_OPAQUE_OPS: Final = {"call": "a CALL", "do": "a DO block", "execute": "an EXECUTE of a prepared statement"}
_CURSOR_WORDS: Final = frozenset({"FETCH", "MOVE"})


def _needs_text(st: StatementFacts) -> bool:
    """Whether a statement may change the path in a way only its text tells."""
    if st.operation in _SETTING_OPS:
        return True
    return any(f not in _PURE for f in st.functions)


def _writes_settings(st: StatementFacts) -> bool:
    """UPDATE pg_settings SET setting = ... runs set_config for each row it changes."""
    return any(t.lower().rsplit(".", 1)[-1].strip('"') == "pg_settings" for t in st.tables_written)


def _user_call(sig: Sequence[Token]) -> str:
    """The first call in a statement's text of what can only be a user function: a name sqlglot
    knows but PostgreSQL has no built-in for (`nvl(...)`), or a schema-qualified call outside
    pg_catalog (`public.lower(...)`); "" when there is none."""
    for i in range(len(sig) - 1):
        t = sig[i]
        if sig[i + 1].text != "(" or t.kind not in ("word", "qid"):
            continue
        name = t.text[1:-1].lower() if t.kind == "qid" else t.text.lower()
        qualified = i >= 2 and sig[i - 1].text == "."
        if qualified:
            schema = sig[i - 2].text
            schema = schema[1:-1] if sig[i - 2].kind == "qid" else schema.lower()
            if schema != "pg_catalog":
                return f"{schema}.{name}"
        elif name in _NOT_PG and (i == 0 or sig[i - 1].text.upper() not in _NOT_A_CALL_AFTER):
            return name
    return ""


# Words after which `name (` is a table, a type or a column list, not a call.
_NOT_A_CALL_AFTER: Final = frozenset({"INTO", "TABLE", "AS", "INDEX", "ON", "VIEW", "TYPE", "FUNCTION", "PROCEDURE"})


def _string(token: Token) -> str | None:
    """The value of a plain '...' or $$...$$ literal (None for E'', U&'' and the like)."""
    text = token.text
    if token.kind != "str":
        return None
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    m = re.fullmatch(r"(\$[^$]*\$)(.*)\1", text, re.DOTALL)
    if m:
        return m.group(2)
    return None


def _setting_name(sig: list[Token], i: int) -> str | None:
    """The setting name at sig[i], lower case (the server matches setting names without regard
    to case, quoted or not); None when it cannot be read (a U&"..." name, a dotted name is kept)."""
    t = sig[i]
    if t.kind == "word":
        if t.text.upper() == "U" and i + 1 < len(sig) and sig[i + 1].text == "&":
            return None
        return t.text.lower()
    if t.kind == "qid":
        return t.text[1:-1].replace('""', '"').lower()
    return None




def _set_value(sig: list[Token], path: SearchPath) -> tuple[str, PathKey | None] | None:
    """A SET / RESET / DISCARD statement's effect: ("set", list), ("reset", None), ("unknown",
    None), or None when it does not touch the path."""
    upper = [t.text.upper() for t in sig]
    if not upper:
        return None
    if upper[0] == "DISCARD":
        return ("reset", None) if upper[1:2] == ["ALL"] else None
    if upper[0] == "RESET":
        target = " ".join(upper[1:])
        if target in ("ROLE", "SESSION AUTHORIZATION"):
            return ("unknown", None)
        if target == "ALL":
            return ("reset", None)
        name = _setting_name(sig, 1) if len(sig) == 2 else ""
        if name is None:
            return ("unknown", None)
        return ("reset", None) if name == "search_path" else None
    if upper[0] != "SET":
        return None
    if "ROLE" in upper[1:3] or upper[1:3] == ["SESSION", "AUTHORIZATION"] or upper[2:4] == ["SESSION", "AUTHORIZATION"]:
        return ("unknown", None)  # "$user" follows the role
    i = 1
    if upper[i : i + 1] in (["SESSION"], ["LOCAL"]):
        i += 1
    if i >= len(sig):
        return None
    name = _setting_name(sig, i)
    if name is None:
        return ("unknown", None)  # a name sqlward cannot read (U&"...") may be search_path
    if name != "search_path":
        return None
    i += 1
    if i >= len(sig):
        return ("unknown", None)
    if upper[i] == "FROM":
        return None  # SET search_path FROM CURRENT: keeps the value in effect
    if upper[i] not in ("TO", "="):
        return ("unknown", None)
    values = sig[i + 1 :]
    if len(values) == 1 and values[0].kind == "word" and values[0].text.upper() == "DEFAULT":
        return ("reset", None)
    schemas: list[str] = []
    expect_name = True
    for t in values:
        if expect_name:
            if t.kind == "word":
                schemas.append(t.text.lower())
            elif t.kind == "qid":
                name = t.text[1:-1].replace('""', '"')
                schemas.append(name)
            elif t.kind == "str":
                # A string is one schema name, as written (the server quotes it).
                s = _string(t)
                if s is None:
                    return ("unknown", None)
                schemas.append(s)
            else:
                return ("unknown", None)
            expect_name = False
        elif t.kind == "op" and t.text == ",":
            expect_name = True
        else:
            return ("unknown", None)
    if expect_name and schemas:
        return ("unknown", None)
    return ("set", effective(schemas, path.user))


def _set_config_calls(sig: list[Token], path: SearchPath) -> tuple[list[PathKey], str]:
    """The lists `set_config('search_path', '<list>', ...)` calls of a statement may set, and why
    the path became unknown ("" when it did not)."""
    found: list[PathKey] = []
    for i, t in enumerate(sig):
        if not ((t.kind == "word" and t.text.lower() == "set_config") or (t.kind == "qid" and t.text.lower() == '"set_config"')):
            continue
        j = i + 1
        if j < len(sig) and sig[j].kind == "op" and sig[j].text == ".":
            continue  # a column or something named set_config.x
        if j >= len(sig) or sig[j].text != "(":
            continue
        args: list[list[Token]] = [[]]
        depth = 0
        k = j + 1
        while k < len(sig):
            tk = sig[k]
            if tk.text == "(":
                depth += 1
            elif tk.text == ")":
                if depth == 0:
                    break
                depth -= 1
            elif tk.text == "," and depth == 0:
                args.append([])
                k += 1
                continue
            args[-1].append(tk)
            k += 1
        if len(args) != 3 or any(len(a) != 1 for a in args[:2]):
            return found, "set_config with a computed argument"
        name = _string(args[0][0])
        if name is None:
            return found, "set_config with a computed argument"
        if name.strip().lower() != "search_path":
            continue
        value = _string(args[1][0])
        parsed = parse_path(value) if value is not None else None
        if parsed is None:
            return found, "set_config('search_path', ...) with a computed value"
        found.append(effective(parsed, path.user))
    return found, ""


# Statements without a function call in their facts that cannot move the path (their text is
# still read for calls sqlglot renamed or that name a schema, unless they hold no parenthesis).
_PLAIN: Final = frozenset({"select", "insert", "update", "delete", "show", "begin", "savepoint", "explain"})


def _step(path: SearchPath, st: StatementFacts, tokens: Sequence[Token] | None) -> SearchPath:
    """The path after one statement ran (see `trace`)."""
    op = st.operation
    if op in _OPAQUE_OPS:
        return msgspec.structs.replace(path, unknown=f"{_OPAQUE_OPS[op]} may change search_path")
    if _writes_settings(st):
        return msgspec.structs.replace(path, unknown="an UPDATE of pg_settings may change search_path")
    if op in _TX_END_OPS or op == "prepare":
        if LOST in path.history:
            return msgspec.structs.replace(path, unknown="the end of a transaction may restore a search_path sqlward never saw")
        if path.history:
            return msgspec.structs.replace(path, paths=_union(path.paths, path.history))
        return path
    if tokens is None:
        return path
    sig = significant(tokens)
    if sig and sig[0].text.upper() in _CURSOR_WORDS:
        # A cursor runs its query as it is fetched: a set_config in it runs now.
        return msgspec.structs.replace(path, unknown="a FETCH runs a cursor's query, which may change search_path")
    if op in _SETTING_OPS:
        effect = _set_value(sig, path)
        if effect is not None:
            kind, value = effect
            if kind == "unknown":
                return msgspec.structs.replace(path, unknown="search_path was set to a value sqlward cannot read")
            new = value if kind == "set" and value is not None else path.reset
            return msgspec.structs.replace(path, paths=(new,), history=_union(path.history, path.paths, (new,)))
    unknown_fns = [f for f in st.functions if f not in _PURE and f != "set_config"]
    if unknown_fns:
        return msgspec.structs.replace(path, unknown=f"function {unknown_fns[0]}() may change search_path")
    user_call = _user_call(sig)
    if user_call:
        return msgspec.structs.replace(path, unknown=f"function {user_call}() may change search_path")
    if op in ("create", "alter", "drop") and st.detail == "schema":
        # A schema the path names may appear or go: the server's list changes.
        return msgspec.structs.replace(path, unknown="a schema was created, renamed or dropped")
    if "set_config" in st.functions:
        found, why = _set_config_calls(sig, path)
        if why:
            return msgspec.structs.replace(path, unknown=why)
        if found:
            # It may not run (a WHERE, a CASE): the old list stays a candidate.
            return msgspec.structs.replace(
                path, paths=_union(path.paths, found), history=_union(path.history, path.paths, found),
            )
    if any(f in _RUNS_SQL and f != "set_config" for f in st.functions):
        return msgspec.structs.replace(path, unknown="a function running a query text may change search_path")
    return path


def trace(path: SearchPath, analysis: Analysis, sql: str) -> tuple[tuple[SearchPath, ...], SearchPath | None]:
    """The path in effect at each statement of a request, and after it (None: unchanged)."""
    statements = analysis.statements
    if not any(st.functions or st.operation not in _PLAIN or _writes_settings(st) for st in statements):
        return (path,) * len(statements), None
    pieces: list[list[Token]] | None
    try:
        pieces = split_statements(tokenize(sql, "postgres"))
    except Unlexable:
        pieces = None
    if pieces is not None and len(pieces) != len(statements):
        pieces = None
    per: list[SearchPath] = []
    current = path
    for i, st in enumerate(statements):
        per.append(current)
        if pieces is None and (st.operation in _SETTING_OPS or _needs_text(st)):
            current = msgspec.structs.replace(current, unknown="a statement sqlward could not read may change search_path")
            continue
        current = _step(current, st, pieces[i] if pieces is not None else None)
    return tuple(per), (current if current != path else None)


# ------------------------------------------------------------------------------- resolution

# relations(name) -> the "schema.table" entries of the catalogue with that bare name (lower case).
Relations = Callable[[str], Sequence[str]]


def needs_catalogue(per_statement: Sequence[SearchPath]) -> bool:
    """Whether resolving needs to know which schema holds which table: some candidate list has
    more than one schema a user table can be in, or the path is unknown."""
    for sp in per_statement:
        if sp.unknown:
            return True
        for p in sp.paths:
            if sum(1 for s in p if s not in ("pg_catalog", "pg_temp")) > 1:
                return True
    return False


# (name lower case, search list) -> the schema the server resolves it to now ("" none), or None
# when the server could not be asked.
Confirmed = Mapping[tuple[str, PathKey], "str | None"]


def unsure(
    analysis: Analysis, per_statement: Sequence[SearchPath], relations: Relations | None,
) -> list[tuple[str, PathKey]]:
    """The (name, list) pairs whose resolution rests on the catalogue saying an earlier schema of
    the list does not hold the name, and every name when the path names a schema that did not
    exist when the server was asked (`SearchPath.absent`): a table created there since would win.
    The pipeline asks the server about them (`resolve(..., confirmed=)`)."""
    out: list[tuple[str, PathKey]] = []
    for st, sp in zip(analysis.statements, per_statement):
        if sp.unknown:
            continue
        for name in (*st.tables_read, *st.tables_written):
            if "." in name:
                continue
            lower = name.lower()
            if sp.absent and sp.listed and (lower, sp.listed) not in out:
                out.append((lower, sp.listed))
            held = relations(lower) if relations is not None else ()
            if not held:
                continue
            for p in sp.paths:
                users = [s for s in p if s not in ("pg_catalog", "pg_temp")]
                if users and f"{users[0].lower()}.{lower}" not in held and (lower, p) not in out:
                    out.append((lower, p))
    return out


def _candidates(
    name: str, sp: SearchPath, relations: Relations | None, confirmed: Confirmed | None = None,
) -> tuple[str, ...]:
    lower = name.lower()
    system = lower.startswith("pg_")
    held = tuple(relations(lower)) if relations is not None else None
    out: list[str] = []
    if sp.absent and sp.listed and confirmed is not None and (lower, sp.listed) in confirmed:
        answer = confirmed[(lower, sp.listed)]
        if answer:
            out.append(f"{answer}.{name}")
        elif answer is None:  # the server could not be asked: the absent schemas may hold it
            out.extend(f"{s}.{name}" for s in sp.absent)
    if sp.unknown:
        if held is None:
            raise Unresolvable(sp.unknown)
        out.extend(held)
        if system:
            out.append(f"pg_catalog.{name}")
        if not out:  # no such table anywhere: every schema of the known lists
            for p in sp.paths:
                out.extend(f"{s}.{name}" for s in p if s not in ("pg_catalog", "pg_temp"))
        return tuple(dict.fromkeys(out))
    for p in sp.paths:
        schemas = [s for s in p if s != "pg_temp" and (s != "pg_catalog" or system)]
        if held is None:
            out.extend(f"{s}.{name}" for s in schemas)
            continue
        found = False
        if confirmed is not None and (lower, p) in confirmed:
            answer = confirmed[(lower, p)]
            if answer is None:  # the server could not be asked: every schema up to the catalogue's
                for s in schemas:
                    out.append(f"{s}.{name}")
                    if s != "pg_catalog" and f"{s.lower()}.{lower}" in held:
                        break
                continue
            if answer:
                out.append(f"{answer}.{name}")
        for s in schemas:
            if s == "pg_catalog":
                out.append(f"{s}.{name}")  # the catalogue does not list pg_catalog: may hold it
                continue
            if f"{s.lower()}.{lower}" in held:
                out.append(f"{s}.{name}")
                if s == s.lower():  # the catalogue folds names: only a lower-case name is sure
                    found = True
                    break
        if not found:
            out.extend(f"{s}.{name}" for s in schemas if s != "pg_catalog")
    # A list of system schemas only: the server finds no such table; the name stays as written.
    return tuple(dict.fromkeys(out)) or (name,)


def resolve(
    analysis: Analysis, per_statement: Sequence[SearchPath], relations: Relations | None,
    confirmed: Confirmed | None = None,
) -> Resolution:
    """The candidates of every unqualified table name, per statement (see the module doc);
    `confirmed` adds the server's own answers for the pairs of `unsure`. Raises Unresolvable
    when the path is unknown and there is no catalogue."""
    out: list[StatementNames] = []
    for st, sp in zip(analysis.statements, per_statement):
        names: dict[str, tuple[str, ...]] = {}
        for name in (*st.tables_read, *st.tables_written):
            if "." in name or name in names:
                continue
            names[name] = _candidates(name, sp, relations, confirmed)
        out.append(tuple(names.items()))
    return tuple(out)
