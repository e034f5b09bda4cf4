"""Identity helpers shared by the protocol adapters (no I/O).

* The session reason: a ticket or incident id a client states for its session, from the
  PostgreSQL startup `options` (`-c sqlward.reason=INC-123`), a `reason=...` word in
  `application_name`, a MySQL connection attribute `sqlward.reason`, or a leading SQL comment
  `/* sqlward:reason=INC-123 */` on any statement (which then holds for the rest of the session).
* The label that shows the identity upstream (PostgreSQL application_name, MySQL session
  variable): `sqlward:<subject>` plus ` via <actor>` for delegated identities.
* Token expiry and loopback checks.
* The canonical form of a name (`canonical_name`, `name_problem`): the one way every name an
  identity can be known by is compared (static identities, token subjects and actors, the
  connection's user name, certificate names, `[[access]]` globs, the login throttle's keys).
  NFKC, case folded (full Unicode case folding), NFKC again, runs of white space made one
  space. Names holding characters that are invisible or change how text is shown (control and
  format characters, zero-width and other default-ignorable code points, unassigned and private
  use code points, line and paragraph separators) or starting or ending with white space name
  no one: `name_problem` says why, and such a name is refused wherever it comes from.
"""

from __future__ import annotations

import ipaddress
import re
import time
import unicodedata

from sqlward.adapters.text import hinted
from sqlward.policy.model import Identity
from sqlward.policy.names import MAX_NAME, canonical_name, name_problem, same_name  # noqa: F401 (re-exported)

_OPTION_REASON = re.compile(r"(?:^|\s)(?:-c\s*|--)sqlward\.reason=((?:\\.|\S)+)")
_APP_REASON = re.compile(r"(?:^|[\s;,])reason=([^\s;,]+)")
_SQL_REASON = re.compile(r"^\s*/\*\s*sqlward:reason=([^\s*]+)\s*\*/")
MAX_REASON = 200
PG_NAME_MAX = 63  # NAMEDATALEN - 1: longer application_name values are truncated by PostgreSQL


def reason_from_options(options: str) -> str:
    m = _OPTION_REASON.search(options or "")
    return m.group(1).replace("\\ ", " ")[:MAX_REASON] if m else ""


def reason_from_application_name(name: str) -> str:
    m = _APP_REASON.search(name or "")
    return m.group(1)[:MAX_REASON] if m else ""


def reason_from_sql(sql: str) -> str:
    """The reason stated by a leading `/* sqlward:reason=... */` comment, or ""."""
    if "sqlward:reason=" not in sql:
        return ""
    m = _SQL_REASON.match(sql)
    return m.group(1)[:MAX_REASON] if m else ""


def upstream_label(identity: Identity, limit: int = PG_NAME_MAX) -> str:
    label = f"sqlward:{identity.subject}"
    if identity.actor:
        label += f" via {identity.actor[0]}"
    return label[:limit]


def has_control(text: str) -> bool:
    """Whether a name holds a control character (C0, DEL, C1, line and paragraph separators):
    such a subject is refused at login, whatever vouches for it."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text)


def canonical_glob(pattern: str) -> str:
    """An `[[access]]` glob in the canonical form of the names it is matched against."""
    return canonical_name(pattern)


def pg_option_value(text: str) -> str:
    """`text` as one value inside PostgreSQL's startup `options`: the server splits options at
    ASCII whitespace and reads a backslash as "take the next character as is", so every
    whitespace character and backslash is escaped (a subject cannot start another `-c`)."""
    return "".join("\\" + c if c == "\\" or c in " \t\n\r\v\f" else c for c in text)


def sql_comment(identity: Identity) -> str:
    """A sqlcommenter-style comment naming the identity, prepended to forwarded statements when
    `[identity] sql_comment` is on (values URL-encoded, so the comment cannot be closed early)."""
    from urllib.parse import quote

    parts = [f"sqlward_identity='{quote(identity.subject, safe='@.')}'"]
    if identity.actor:
        parts.append(f"sqlward_actor='{quote(identity.actor[0], safe='@.')}'")
    return "/*" + ",".join(parts) + "*/ "


def expired(identity: Identity, now: float | None = None, leeway: float = 0.0) -> bool:
    """Whether the identity's token has expired, granting `leeway` seconds of clock skew as its
    login did (the issuer's `leeway_seconds`)."""
    return identity.expires_at is not None and (time.time() if now is None else now) >= identity.expires_at + leeway


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- guards: the identity the gateway shows the database must not be rewritten by the client ----

# Words one of which any identity write must contain (lower case); text outside ASCII is always
# read in full. Substring tests on the lowered text: a fraction of a regular expression's cost on
# the hot path (every statement).
_PG_HINTS = ("sqlward", "set_config", "application_name", "role", "authorization", "pg_settings", "execute", "\\", "u&")


def _pg_hinted(sql: str) -> bool:
    return hinted(sql, _PG_HINTS)
# Settings that say who the session is: the gateway's own and the role the upstream acts as.
_PG_WHO = frozenset({"role", "session_authorization"})


def _pg_set_target(stmt: list, k: int) -> tuple[str, list] | None:
    """At a `SET` token (position k): the setting's name (dotted, decoded, lower-case) and the
    value tokens, for SET [SESSION | LOCAL] name {= | TO} value and SET [SESSION | LOCAL] ROLE /
    SESSION AUTHORIZATION (ALTER ROLE / DATABASE ... SET and a function's SET clause too)."""
    from sqlward.adapters.postgres.reading import is_name

    j = k + 1
    if j < len(stmt) and is_name(stmt[j], "session", "local"):
        if is_name(stmt[j], "session") and j + 1 < len(stmt) and is_name(stmt[j + 1], "authorization"):
            return "session_authorization", stmt[j + 2 :]
        j += 1
    if j < len(stmt) and is_name(stmt[j], "session") and j + 1 < len(stmt) and is_name(stmt[j + 1], "authorization"):
        return "session_authorization", stmt[j + 2 :]
    parts = []
    while j < len(stmt) and stmt[j].kind in ("word", "ident"):
        parts.append(stmt[j].value.lower())
        j += 1
        if j < len(stmt) and stmt[j].kind == "op" and stmt[j].value == ".":
            j += 1
            continue
        break
    if not parts:
        return None
    name = ".".join(parts)
    if name == "role" and not (j < len(stmt) and (stmt[j].value == "=" or is_name(stmt[j], "to"))):
        return "role", stmt[j:]  # SET ROLE x
    if j < len(stmt) and (stmt[j].value == "=" or is_name(stmt[j], "to")):
        return name, stmt[j + 1 :]
    return name, stmt[j:]


def _shows_sqlward(text: str) -> bool:
    """Would `text` read as a sqlward label (any case, width, invisible characters)?"""
    return "sqlward" in canonical_name(text).replace(" ", "")


def _pg_statement_writes_identity(stmt: list, depth: int, in_body: bool) -> bool:
    from sqlward.adapters.postgres.reading import (
        MAX_DEPTH, WRITES, dynamic_sql, has_body, set_config_names, statements, tokens,
    )

    for name, value in set_config_names(stmt):
        if name is None:
            return True  # the setting's name is computed: cannot tell which one it is
        low = name.lower()
        if low.startswith("sqlward") or low in _PG_WHO:
            return True
        if low == "application_name" and (value is None or _shows_sqlward(value)):
            return True  # a computed or impersonating application_name
    for k, t in enumerate(stmt):
        if t.kind == "word" and t.value in ("set", "reset"):
            target = _pg_set_target(stmt, k)
            if target is None:
                continue
            name, value = target
            if name.startswith("sqlward"):
                return True
            if t.value == "reset":
                continue  # RESET ROLE / application_name: back to what the gateway set
            if name in _PG_WHO:
                return True
            if name == "application_name" and any(
                v.kind in ("word", "ident", "str") and _shows_sqlward(v.value) for v in value
            ):
                return True
    words = {t.value.lower() for t in stmt if t.kind in ("word", "ident")}
    if "pg_settings" in words and words & WRITES:
        return True  # UPDATE pg_settings: the name it sets may be computed
    body = in_body or has_body(stmt)
    if body and dynamic_sql(stmt):
        return True  # EXECUTE of a computed string in a DO block or function: cannot be read
    if body:
        # DO blocks and function bodies: any mention of the identity's settings, set_config or a
        # role switch, in any spelling, is refused (their dynamic SQL cannot be read).
        for t in stmt:
            if t.kind in ("word", "ident", "str"):
                low = canonical_name(t.value).replace(" ", "")
                if "sqlward" in low or "application_name" in low or "set_config" in low:
                    return True
                if t.kind != "str" and low in ("role", "authorization") and any(
                    u.kind == "word" and u.value == "set" for u in stmt
                ):
                    return True
    if depth < MAX_DEPTH:
        for t in stmt:
            if t.kind == "str" and len(t.value) > 3 and (body or _pg_hinted(t.value)):
                for inner in statements(tokens(t.value)):
                    if _pg_statement_writes_identity(inner, depth + 1, body):
                        return True
    return False


def pg_identity_write(sql: str) -> bool:
    """True when a PostgreSQL statement would change who the session appears to be: SET / RESET
    of `sqlward.*`, SET of application_name to a value reading "sqlward" (E'', U&'', $$ and
    identifier quoting decoded, any case), SET ROLE / SET SESSION AUTHORIZATION (RESET is fine),
    set_config of any of them or with a setting name that is not a literal, and DO blocks or
    function bodies mentioning sqlward, application_name, set_config or a role switch. Names
    and values are read from the server's tokens (`adapters.postgres.reading.tokens`), so no
    quoting or escape hides them; string literals are read as SQL too (dynamic SQL)."""
    if not _pg_hinted(sql):
        return False
    from sqlward.adapters.postgres.reading import statements, tokens

    return any(_pg_statement_writes_identity(stmt, 0, False) for stmt in statements(tokens(sql)))


_MY_IDENTITY_WRITE = re.compile(
    r"@\s*sqlward_identity\s*:?=|\bINTO\b[^;]*@\s*sqlward_identity", re.IGNORECASE | re.DOTALL
)
# A user variable: @name, @`name`, @'name', @"name" (MariaDB reads all four, names case-insensitive).
_MY_VARIABLE = re.compile(
    r"(?<!@)@(\s*)(`(?:[^`]|``)*`|'(?:[^'\\]|''|\\.)*'|\"(?:[^\"\\]|\"\"|\\.)*\")", re.DOTALL
)
_MY_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}


def _my_variable_names(quoted: str) -> set[str]:
    """The names a quoted MySQL variable name may read as (with and without backslash escapes:
    the sql_mode NO_BACKSLASH_ESCAPES decides), lower-cased."""
    q, body = quoted[0], quoted[1:-1]
    if q == "`":
        return {body.replace("``", "`").lower()}
    plain = body.replace(q * 2, q)
    escaped = re.sub(r"\\(.)", lambda m: _MY_ESCAPES.get(m.group(1), m.group(1)), body.replace(q * 2, q), flags=re.DOTALL)
    return {plain.lower(), escaped.lower()}


def mysql_identity_write(sql: str) -> bool:
    """True when a MySQL statement assigns the @sqlward_identity session variable, however its
    name is quoted (@sqlward_identity, @`...`, @'...', @"...", any case): SET @v = / := and
    SELECT ... INTO @v. Quoted names are rewritten to the bare name first."""
    if "sqlward" not in sql.lower() and "@" not in sql:
        return False

    def bare(m: re.Match[str]) -> str:
        names = _my_variable_names(m.group(2))
        if any(n.strip() == "sqlward_identity" for n in names):
            return "@sqlward_identity"
        return "@_"

    plain = _MY_VARIABLE.sub(bare, sql)
    return "sqlward" in plain.lower() and _MY_IDENTITY_WRITE.search(plain) is not None
