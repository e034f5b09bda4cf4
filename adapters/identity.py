"""Identity helpers shared by the protocol adapters (no I/O).

* The session reason: a ticket or incident id a client states for its session, from the
  PostgreSQL startup `options` (`-c sqlward.reason=INC-123`), a `reason=...` word in
  `application_name`, a MySQL connection attribute `sqlward.reason`, or a leading SQL comment
  `/* sqlward:reason=INC-123 */` on any statement (which then holds for the rest of the session).
* The label that shows the identity upstream (PostgreSQL application_name, MySQL session
  variable): `sqlward:<subject>` plus ` via <actor>` for delegated identities.
* Token expiry and loopback checks.
"""

from __future__ import annotations

import ipaddress
import re
import time

from sqlward.policy.model import Identity

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


def expired(identity: Identity, now: float | None = None) -> bool:
    return identity.expires_at is not None and (time.time() if now is None else now) >= identity.expires_at


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- guards: the identity the gateway shows the database must not be rewritten by the client ----

_PG_PREFILTER = re.compile(r"sqlward|set_config|application_name", re.IGNORECASE)
_PG_SET = re.compile(r"\b(?:SET|RESET)\b[^;]*?\b(sqlward\s*\.|application_name\b)", re.IGNORECASE | re.DOTALL)
_PG_SET_CONFIG = re.compile(r"set_config\s*\(", re.IGNORECASE)
_PG_SET_CONFIG_LITERAL = re.compile(r"set_config\s*\(\s*'([A-Za-z0-9_.]*)'\s*,", re.IGNORECASE)
_PG_SET_CONFIG_APP = re.compile(
    r"set_config\s*\(\s*'application_name'\s*,\s*'([^']*)'\s*,", re.IGNORECASE
)
_MY_IDENTITY_WRITE = re.compile(
    r"@\s*`?sqlward_identity`?\s*:?=|\bINTO\b[^;]*@\s*`?sqlward_identity", re.IGNORECASE | re.DOTALL
)


def pg_identity_write(sql: str) -> bool:
    """True when a PostgreSQL statement would set `sqlward.*` or application_name in a way that
    could impersonate someone: SET / RESET of them (quotes removed first, so `"sqlward".x` is
    seen), and any set_config whose setting name is not a plain literal or names one of them.
    Setting application_name to a value without "sqlward" in the statement stays allowed."""
    if _PG_PREFILTER.search(sql) is None:
        return False
    plain = sql.replace('"', "")
    m = _PG_SET.search(plain)
    if m is not None and (m.group(1).lower().startswith("sqlward") or "sqlward" in plain.lower()):
        return True
    for call in _PG_SET_CONFIG.finditer(plain):
        literal = _PG_SET_CONFIG_LITERAL.match(plain, call.start())
        if literal is None:
            return True  # the setting's name is computed: cannot tell which one it is
        name = literal.group(1).lower()
        if name.startswith("sqlward."):
            return True
        if name == "application_name":
            value = _PG_SET_CONFIG_APP.match(plain, call.start())
            if value is None or "sqlward" in value.group(1).lower():
                return True  # a computed or impersonating application_name
    return False


def mysql_identity_write(sql: str) -> bool:
    """True when a MySQL statement assigns the @sqlward_identity session variable."""
    return "sqlward" in sql.lower() and _MY_IDENTITY_WRITE.search(sql) is not None
