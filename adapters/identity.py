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

from policy.model import Identity

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
