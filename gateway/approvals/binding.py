"""The binding hash: what an approval is an approval *of*.

An approver approves one statement in one context. The hash covers everything that changes what
the statement does when it runs, so that a request approved for one of them cannot release
another:

- the statement text exactly as the client sent it (literals included; surrounding white space
  and a final semicolon aside) and the parameter values bound to it, with their formats and the
  types the client declared (the same bytes are another value under another type);
- the identity: subject, issuer, how it was verified, and the actor chain (an agent acting for
  alice is not alice, nor another agent);
- the target (name, protocol, environment), the upstream role the gateway runs it as;
- the names it resolves through: PostgreSQL's search_path (as the pipeline knew it), MySQL's
  current database.

The hash is SHA-256 over a msgspec-encoded array (length-prefixed by the encoding, so no two
contexts collide by concatenation), with a version tag so the recipe can change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from sqlward.policy.names import canonical_name

__all__ = ["binding_hash", "canonical_text"]

_VERSION = "sqlward-approval-binding-1"
# Only ASCII white space is trimmed: the servers read other spaces (NBSP, U+3000, ...) as part
# of an identifier, so "DELETE FROM junk<NBSP>" names another table.
_ASCII_SPACE = " \t\n\r\f\v"
_encode = msgspec.msgpack.Encoder().encode


def canonical_text(sql: str) -> str:
    """The text an approval binds: as sent, without surrounding ASCII white space and final ';'."""
    text = sql.strip(_ASCII_SPACE)
    while text.endswith(";"):
        text = text[:-1].rstrip(_ASCII_SPACE)
    return text


def binding_hash(
    *, sql: str, parameters: Sequence[bytes | None] = (), formats: Sequence[int] = (), types: Sequence[int] = (),
    subject: str, issuer: str, verified_by: str, actor: Sequence[str],
    target: str, protocol: str, environment: str, upstream_role: str, names: str,
) -> str:
    """Hex SHA-256 binding one statement to its context (module doc)."""
    payload = _encode([
        _VERSION, canonical_text(sql), list(parameters), list(formats), list(types),
        canonical_name(subject), issuer, verified_by, [canonical_name(a) for a in actor],
        target, protocol, environment, upstream_role, names,
    ])
    return hashlib.sha256(payload).hexdigest()
