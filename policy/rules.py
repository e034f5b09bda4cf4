"""Rule and per-environment policy model (the shapes config files decode into).

A `Rule` matches a request when every criterion it sets matches (an empty criterion matches
everything); rules are tried in order and the first match decides. See `policy.engine`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from policy.model import Action


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    action: Action
    # Criteria: empty = any.
    operations: tuple[str, ...] = ()  # statement operations, e.g. "drop", "delete", "select"
    tables: tuple[str, ...] = ()  # globs over tables read or written, e.g. "public.*", "users"
    environments: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()  # identity subjects (globs)
    groups: tuple[str, ...] = ()  # any of these groups
    actors: tuple[str, ...] = ()  # globs over the identity's actor chain (an agent acting for it)
    agents: bool | None = None  # True: only agents / delegated sessions; False: only people
    has_where: bool | None = None  # match only UPDATE/DELETE with (True) or without (False) WHERE
    message: str = ""  # sentence shown to the client; a default is derived from the rule


class EnvironmentPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # What happens to a statement no rule matched.
    default_action: Literal["allow", "deny"] = "allow"
    # Statements sqlglot cannot parse: None = allowed in development-like environments
    # ("development", "dev", "local", "test"), refused elsewhere.
    allow_unparsed: bool | None = None
