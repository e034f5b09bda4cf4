"""The configuration reference, docs/configuration-reference.md, generated from the config schema.

Usage::

    python -m sqlward.gateway.config_reference > docs/configuration-reference.md
    python -m sqlward.gateway.config_reference --write [PATH]   # the same, into the page (or PATH)
    python -m sqlward.gateway.config_reference --check [PATH]   # exit 1 when the page is stale

How it works:

- The schema is the one `gateway.config.load_config` decodes a file into: `Config` and the frozen
  msgspec Structs it holds (some live in `policy/`, `masking/` and `adapters/base.py`). It is
  walked with `msgspec.inspect.type_info`. A field whose type is a Struct becomes a table
  (``[audit]``, ``[listeners.tls]``), a tuple of Structs an array of tables (``[[listeners]]``,
  ``[[audit.sinks]]``), a dict of Structs a table per name (``[environments.NAME]``,
  ``[guardrails.<id>]``); every other field is a key of its table. A Struct met a second time
  (the approval table of rules and of guardrails) is not repeated: its section points at the first.
- For each key: its TOML type (string, integer, number, boolean, array of ..., table of ...,
  one of the values of a `Literal`), its constraints (`msgspec.Meta` ge / gt / le / lt /
  min_length / max_length / pattern / multiple_of), its default (the field's default or
  default factory, written as TOML; "required" when there is none; "unset" for ``None``, which a
  TOML file cannot write: the key is left out) and its description.
- A description is, in order: a `msgspec.Meta(description=...)` on the field; the comments that
  sit beside the field (on the lines of its declaration) and directly above it (the block of
  comment-only lines that ends on the line before it), read from the class's own source with
  `inspect.getsource` and `tokenize` (for a subclass, the first class of the MRO that declares the
  field); then `FALLBACK_DESCRIPTIONS`; for a table, last, its struct's docstring (first paragraph).
  A key with none of these is an error (`MissingDescriptions`, naming the file, the class and the
  TOML key): a new key is documented where it is declared. The fallback mapping holds the keys
  whose source has no comment yet; `stale_fallbacks()` lists entries whose source now has one
  (tests/unit/test_config_reference.py fails on them), so each comment has one home.
- The `[guardrails.<id>]` section also lists the catalogue's ids and the options each takes
  (`policy.guardrails.CATALOGUE`, `policy.vocabulary.guardrail_keys`).

Cross-field rules (a DSN's scheme must match the protocol, one of two secret keys, readable files,
...) are checked by `load_config` and described in docs/configuration.md, the hand-written page
with prose and examples; this page is the exhaustive list. tests/unit/test_config_reference.py
fails when the committed page differs from `render()`.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from sqlward.gateway.config import Config

__all__ = [
    "FALLBACK_DESCRIPTIONS",
    "MissingDescriptions",
    "PAGE",
    "REGENERATE",
    "Key",
    "Section",
    "main",
    "render",
    "sections",
    "stale_fallbacks",
]

REGENERATE = "python -m sqlward.gateway.config_reference --write"
# The committed page, in the repository this module is part of (an editable install).
PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration-reference.md"

# Fields of the schema that are not keys of the file.
INTERNAL: frozenset[str] = frozenset({"Config.source"})  # set by load_config: the file's own path

# The name shown for the key of a table of tables (`[environments.NAME]`).
KEY_PLACEHOLDERS: dict[str, str] = {"environments": "NAME", "guardrails": "<id>"}

# Descriptions of the keys whose declaration carries no comment yet, by "Class.field". Each one
# belongs beside its field in the source (gateway/config.py, policy/rules.py, masking/model.py,
# ...); once it is there, delete it here (`stale_fallbacks()` names those that moved).
FALLBACK_DESCRIPTIONS: dict[str, str] = {
    # gateway/config.py: the tables of Config
    "Config.gateway": "This gateway instance: its name, its policy files and its limits before authentication.",
    "Config.listeners": "The sockets clients connect to with their usual driver, one wire protocol each.",
    "Config.targets": "The upstream databases. A client chooses one by the database name it connects to, so names are unique.",
    "Config.identities": "Static identities: people, services, agents and bots that log in with a secret (OIDC token users need no entry).",
    "Config.audit": "The audit trail: its chain, signing key, checkpoints, durability and sinks (docs/audit.md).",
    "Config.environments": "Per-environment defaults of the policy; NAME is a target's `environment` (an environment without a table takes the defaults).",
    "Config.rules": "Policy rules, tried in order; the first whose criteria all match decides (docs/policy.md).",
    "Config.guardrails": "Built-in guardrails switched on, checked before the rules (docs/guardrails.md).",
    "Config.oidc": "Identity providers whose JWT access tokens clients may present as their password, over TLS (docs/identity.md).",
    "Config.identity": "Session-level identity behaviour, the same for every listener.",
    "Config.access": "Which identities may reach which targets, checked at connection; without any rule every identity reaches every target, with one a connection no rule allows is refused.",
    "Config.masks": "Masking rules by column glob or content classifier (docs/masking.md); also allowed in policy files.",
    "Config.masking": "Settings of masking: the hash key, what happens on doubt, the schema catalogue's age.",
    "Config.login_throttle": "Failed logins slow down further attempts from the same source address and for the same user name.",
    "Config.admin": "The admin HTTP listener inside the gateway's process: the approvals API, health, metrics.",
    "Config.approvals": "Where approval requests are kept (docs/approvals.md).",
    "Config.webhooks": "Receivers of approval notifications: signed JSON, retried, off the statement's path.",
    "Config.telemetry": "OpenTelemetry traces and metrics over OTLP/HTTP (docs/observability.md).",
    # gateway/config.py: keys
    "GatewaySettings.max_unauthenticated_per_address": "Connections not yet authenticated from one client address; one more is refused at once.",
    "ListenerConfig.protocol": "Wire protocol spoken to clients: `postgres` or `mysql`.",
    "ListenerConfig.tls": "TLS for client connections; without it the listener speaks plaintext only.",
    "ListenerTLS.cert_file": "PEM certificate chain presented to clients. Must be readable.",
    "ListenerTLS.key_file": "PEM private key of the certificate. Must be readable.",
    "TargetConfig.name": "The database name clients use for this target. Unique.",
    "TargetConfig.protocol": "`postgres` or `mysql` (MySQL and MariaDB); only listeners of the same protocol reach it.",
    "TargetConfig.environment": "Environment name used by the policy (`development`, `staging`, `production`, anything).",
    "TargetConfig.dsn": "Upstream address: `postgresql://USER[:PASSWORD]@HOST[:PORT][/DATABASE][?PARAM=VALUE&...]` (`mysql://` / `mariadb://` for MySQL); parameters sslmode, sslrootcert, sslcert, sslkey, connect_timeout.",
    "TargetConfig.password": "Upstream password; use `${VAR}` rather than writing it in the file. At most one of password, password_file and a password in the DSN.",
    "TargetConfig.password_file": "File holding the upstream password (one trailing line break is ignored). Must be readable.",
    "TargetConfig.audit_parameters": "Parameter values of prepared statements' runs in the audit trail: `as_sent`, or `redacted` (each `\"?\"`).",
    "IdentityConfig.name": "The user name clients log in with: the identity's subject. Unique (in its canonical form).",
    "IdentityConfig.groups": "Groups the policy, `[[access]]` and approval rules match on.",
    "IdentityConfig.display_name": "Human name for audit records.",
    "IdentityConfig.secret_file": "File holding the login secret (one trailing line break is ignored). Must be readable. At most one of secret and secret_file.",
    "IdentityConfig.api_token": "A bot's API token (at least 16 characters), the bearer token it sends to the admin API; use `${VAR}`, or better api_token_file.",
    "IdentityConfig.api_token_file": "File holding a bot's API token (one trailing line break is ignored). Must be readable.",
    "AuditConfig.checkpoint_seconds": "A signed checkpoint this many seconds after the first record not yet signed (and at rotation and shutdown).",
    "AuditSinkConfig.kind": "What the sink is: `file` (JSON lines), `postgres` (a table shared by replicas), `stdout` or `otlp` (OTLP/HTTP logs). A key that does not belong to the kind is an error.",
    "AuditSinkConfig.rotate_bytes": "kind = \"file\": rotate when the file would grow past this size (0: never).",
    "AuditSinkConfig.rotate_seconds": "kind = \"file\": rotate when the file is this old (0: never).",
    "AuditSinkConfig.password_file": "kind = \"postgres\": a file holding the password. Must be readable.",
    "AuditSinkConfig.table": "kind = \"postgres\": the table (a lower-case SQL identifier), created when missing.",
    "AuditSinkConfig.headers": "kind = \"otlp\": HTTP headers of each request (an `Authorization`, a tenant id).",
    "AuditSinkConfig.ca_file": "kind = \"otlp\": CA bundle (PEM) for an `https` endpoint with a private CA. Must be readable.",
    "AuditSinkConfig.timeout_seconds": "kind = \"otlp\": seconds one request may take.",
    "IssuerConfig.jwks_url": "An `https://` URL of the issuer's JWK set (the `jwks_uri` of its discovery document). Exactly one of jwks_file and jwks_url.",
    "IssuerConfig.subject_claim": "Claim that names the person or service (`sub`, `email`, `preferred_username`, ...); the connection's user name must equal it (or the token's outermost actor).",
    "IssuerConfig.algorithms": "Signature algorithms accepted from this issuer: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA Ed25519 Ed448; `none` and HS256/HS384/HS512 are errors.",
    "IssuerConfig.leeway_seconds": "Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.",
    "IssuerConfig.jwks_refresh_seconds": "How long fetched keys are used before they are fetched again, in seconds.",
    "IdentityOptions.on_token_expiry": "When the token a session logged in with expires: `refuse` (every further statement is refused, saying the token expired) or `close` (the session is ended).",
    "AccessRule.action": "`allow` or `deny` the connection when every criterion matches.",
    "LoginThrottleConfig.enabled": "`false` turns throttling off.",
    "LoginThrottleConfig.base_delay_seconds": "The wait before the next attempt once failures_before_delay is reached; it doubles with each further failure.",
    "LoginThrottleConfig.max_delay_seconds": "The longest wait; an attempt that would have to wait longer is refused at once, saying when to try again.",
    "LoginThrottleConfig.ipv6_prefix": "IPv6 clients are keyed by their network of this prefix length.",
    "AdminConfig.tls": "HTTPS for the admin listener; without it the listener speaks plain HTTP.",
    "AdminTLS.cert_file": "Certificate chain (PEM) of the admin listener. Must be readable.",
    "AdminTLS.key_file": "Its private key (PEM). Must be readable.",
    "ApprovalsConfig.sweep_seconds": "Seconds between sweeps that expire stale requests.",
    "WebhookConfig.url": "`http://` or `https://` URL the notifications are POSTed to.",
    "WebhookConfig.secret_file": "File holding the HMAC key (surrounding white space ignored). Must be readable. One of secret and secret_file is required; a secret has at least 16 characters.",
    "WebhookConfig.timeout_seconds": "Seconds one delivery attempt may take.",
    "WebhookConfig.max_attempts": "Attempts in all for connection errors, timeouts, 5xx and 429 answers.",
    "WebhookConfig.backoff_seconds": "First wait between attempts, doubled each time (at most 300 s).",
    "TelemetryConfig.headers": "HTTP headers of every export (tenant ids, an authorization header).",
    "TelemetryConfig.service_name": "`service.name` of the resource; the gateway's `[gateway] name` is `service.instance.id`.",
    "TelemetryConfig.traces": "Make and export spans (a session span and a span per statement).",
    "TelemetryConfig.metrics": "Keep metrics, export them over OTLP and serve them on the admin listener's /metrics.",
    "TelemetryConfig.metrics_interval_seconds": "How often metrics are pushed over OTLP, in seconds.",
    "TelemetryConfig.timeout_seconds": "How long one export may take, retries included, in seconds.",
    # policy/rules.py
    "Rule.id": "Unique rule id, shown to the client and in the audit trail.",
    "Rule.action": "`allow`, `deny` or `review` (needs an approval).",
    "Rule.environments": "Target environments (exact names).",
    "Rule.targets": "Target names (exact).",
    "Rule.hours": "Time window `HH:MM-HH:MM` (24-hour clock, may wrap midnight) in `timezone`; empty: any time.",
    "Rule.timezone": "IANA time zone of `days` and `hours`.",
    # policy/guardrails.py
    "GuardrailConfig.action": "`deny` refuses the statement; `review` makes it an approval request (see `approval`).",
    # masking/model.py
    "MaskRule.id": "Unique mask id, named in refusals and in the audit's masked-value counts.",
    "MaskRule.function": "`redact`, `null`, `partial`, `email`, `hash` (keyed HMAC pseudonym; needs [masking] hash_key) or `truncate_date`.",
    "MaskRule.keep_last": "`partial`: characters (digits) kept at the end; unset: 4.",
    "MaskRule.truncate": "`truncate_date`: the part kept; unset: `month`.",
    "MaskRule.exempt_groups": "Groups that see clear values.",
    "MaskRule.targets": "Target names where the rule applies (empty: everywhere).",
    # masking/policy.py
    "MaskingSettings.hash_key_file": "The hash key in a file instead (relative to the config file). Must be readable.",
}


class MissingDescriptions(Exception):
    """Keys of the schema without a description: one line each, naming the file, the class, the
    field and its TOML place."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            "keys without a description (add a comment beside or above the field where it is declared, "
            "or an entry to FALLBACK_DESCRIPTIONS in gateway/config_reference.py):\n"
            + "\n".join(f"  {line}" for line in self.missing)
        )


class Key(msgspec.Struct, frozen=True):
    """One row of a section."""

    name: str
    type: str
    default: str
    description: str


class Section(msgspec.Struct, frozen=True):
    """One table (or array of tables) of the file."""

    header: str  # `[gateway]`, `[[listeners]]`, `[guardrails.<id>]`
    presence: str  # required / optional / at least one ...
    description: str
    keys: tuple[Key, ...] = ()
    same_as: str = ""  # the header of an earlier section with the same keys
    notes: tuple[str, ...] = ()  # extra paragraphs (the guardrail catalogue)


# -- descriptions from the source ------------------------------------------------------------


def _repo_relative(path: str) -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return path


@cache
def _comments(cls: type) -> dict[str, str]:
    """field name -> the comments beside and directly above its declaration in `cls`'s body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    # Comment text by line, and which lines hold nothing but a comment.
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    comment_only = {n for n in by_line if lines[n - 1].lstrip().startswith("#")}
    [node] = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    out: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        first, last = stmt.lineno, stmt.end_lineno or stmt.lineno
        beside = [by_line[n] for n in range(first, last + 1) if n in by_line and n not in comment_only]
        above: list[str] = []
        n = first - 1
        while n in comment_only:
            above.insert(0, by_line[n])
            n -= 1
        text = " ".join(_sentence(part) for part in (" ".join(above), " ".join(beside)) if part)
        if text:
            out[stmt.target.id] = text
    return out


def _declared_comment(cls: type, field: str) -> str:
    """The comment of `field` in the first class of `cls`'s MRO that declares it."""
    for klass in cls.__mro__:
        if field in getattr(klass, "__annotations__", {}):
            text = _comments(klass).get(field, "")
            if text:
                return text
    return ""


def _docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if not doc or cls.__doc__ is None or "__doc__" not in cls.__dict__:
        return ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _sentence(text: str) -> str:
    """`text` on one line, starting with a capital (unless it starts with a name: `kind = ...`,
    `hold: ...`, `max_rows`, `multi-statement`) and ending with a full stop."""
    text = " ".join(text.split())
    first = re.match(r"[a-z]+(?=$|[ ,;(])", text)
    if first and not text[first.end():].startswith(" ="):
        text = text[0].upper() + text[1:]
    if text and text[-1] not in ".!?":
        text += "."
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# -- types, constraints, defaults ------------------------------------------------------------


def _unwrap(t: mi.Type) -> tuple[mi.Type, str]:
    """(the type without its Metadata, the Meta description if any)."""
    description = ""
    while isinstance(t, mi.Metadata):
        description = str((t.extra_json_schema or {}).get("description", "")) or description
        t = t.type
    return t, description


def _constraints(t: mi.Type) -> list[str]:
    out: list[str] = []
    for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        value = getattr(t, attr, None)
        if value is not None:
            out.append(f"{word} {_number(value)}")
    multiple = getattr(t, "multiple_of", None)
    if multiple is not None:
        out.append(f"a multiple of {_number(multiple)}")
    low, high = getattr(t, "min_length", None), getattr(t, "max_length", None)
    unit = "characters" if isinstance(t, mi.StrType) else "items"
    if low is not None and high is not None:
        out.append(f"{low} to {high} {unit}")
    elif low is not None:
        out.append(f"at least {low} {unit[:-1] if low == 1 else unit}")
    elif high is not None:
        out.append(f"at most {high} {unit}")
    pattern = getattr(t, "pattern", None)
    if pattern:
        out.append(f"matching `{pattern}`")
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _type(t: mi.Type) -> str:
    """The TOML type of a key, with its constraints."""
    t, _ = _unwrap(t)
    if isinstance(t, mi.UnionType):
        parts = [p for p in t.types if not isinstance(p, mi.NoneType)]
        return " or ".join(_type(p) for p in parts)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f"`{_toml(v)}`" for v in t.values)
    base = {
        mi.StrType: "string",
        mi.IntType: "integer",
        mi.FloatType: "number",
        mi.BoolType: "boolean",
        mi.AnyType: "any value",
    }.get(type(t))
    if base is None and isinstance(t, (mi.VarTupleType, mi.ListType, mi.SetType, mi.FrozenSetType)):
        base = f"array of {_plural(_type(t.item_type))}"
    elif base is None and isinstance(t, mi.DictType):
        base = f"table of {_plural(_type(t.value_type))} by name"
    elif base is None and isinstance(t, mi.StructType):
        base = "table"
    if base is None:
        raise TypeError(f"no TOML type for {t!r}")
    constraints = _constraints(t)
    return f"{base} ({', '.join(constraints)})" if constraints else base


def _plural(type_text: str) -> str:
    for word in ("string", "integer", "number", "boolean", "table"):
        if type_text == word or type_text.startswith(word + " "):
            return word + "s" + type_text[len(word):]
    return type_text


def _toml(value: Any) -> str:
    """A value as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML text for {value!r}")


def _size(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f" ({value // size} {unit})"
    return ""


def _default(field: mi.Field) -> str:
    if field.required:
        return "required"
    value = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    if value is None:
        return "unset"
    text = f"`{_toml(value)}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 << 16:
        text += _size(value)
    return text


# -- the walk --------------------------------------------------------------------------------


def _struct(t: mi.Type) -> tuple[mi.StructType | None, str, bool]:
    """(the struct a field holds, how: "table" / "array" / "dict", whether it may be left out)."""
    t, _ = _unwrap(t)
    optional = False
    if isinstance(t, mi.UnionType):
        parts = [p for p in t.types if not isinstance(p, mi.NoneType)]
        optional = len(parts) < len(t.types)
        if len(parts) == 1:
            t, _ = _unwrap(parts[0])
    if isinstance(t, mi.StructType):
        return t, "table", optional
    if isinstance(t, (mi.VarTupleType, mi.ListType)):
        item, _ = _unwrap(t.item_type)
        if isinstance(item, mi.StructType):
            return item, "array", optional
    if isinstance(t, mi.DictType):
        value, _ = _unwrap(t.value_type)
        if isinstance(value, mi.StructType):
            return value, "dict", optional
    return None, "", optional


def _description(cls: type, field: mi.Field, *, table: mi.StructType | None = None) -> str:
    _, meta = _unwrap(field.type)
    return (
        meta
        or _declared_comment(cls, field.name)
        or FALLBACK_DESCRIPTIONS.get(f"{cls.__name__}.{field.name}", "")
        or (_docstring(table.cls) if table is not None else "")
    )


def _presence(field: mi.Field, how: str, optional: bool) -> str:
    t, _ = _unwrap(field.type)
    min_length = getattr(t, "min_length", None)
    if how == "array":
        if min_length:
            return "At least one." if min_length == 1 else f"At least {min_length}."
        return "Optional, any number."
    if how == "dict":
        return "Optional, one per name."
    return "Required." if field.required else "Optional."


def _walk(
    struct: mi.StructType, path: str, missing: list[str], seen: dict[type, str], out: list[Section],
    *, header: str, presence: str, description: str,
) -> None:
    cls = struct.cls
    keys: list[Key] = []
    subtables: list[tuple[mi.Field, mi.StructType, str, bool]] = []
    for field in struct.fields:
        if f"{cls.__name__}.{field.name}" in INTERNAL:
            continue
        inner, how, optional = _struct(field.type)
        if inner is not None:
            subtables.append((field, inner, how, optional))
            continue
        text = _description(cls, field)
        if not text:
            missing.append(f"{_repo_relative(inspect.getsourcefile(cls) or '?')}: {cls.__name__}.{field.name} ({header} {field.encode_name})")
        keys.append(Key(field.encode_name, _type(field.type), _default(field), _sentence(text)))
    if header:
        notes = _guardrail_notes() if path == "guardrails.<id>" else ()
        if cls in seen:
            out.append(Section(header, presence, description, same_as=seen[cls], notes=notes))
            return
        seen[cls] = header
        out.append(Section(header, presence, description, tuple(keys), notes=notes))
    for field, inner, how, optional in subtables:
        name = field.encode_name
        sub = f"{path}.{name}" if path else name
        if how == "dict":
            sub += "." + KEY_PLACEHOLDERS.get(name, "<name>")
        sub_header = f"`[[{sub}]]`" if how == "array" else f"`[{sub}]`"
        text = _description(cls, field, table=inner)
        if not text:
            missing.append(f"{_repo_relative(inspect.getsourcefile(cls) or '?')}: {cls.__name__}.{field.name} (table {sub_header})")
        _walk(inner, sub, missing, seen, out, header=sub_header, presence=_presence(field, how, optional),
              description=_sentence(text))


def _guardrail_notes() -> tuple[str, ...]:
    from sqlward.policy.guardrails import CATALOGUE, COMMON_KEYS

    rows = ["| `<id>` | options beside " + ", ".join(f"`{k}`" for k in COMMON_KEYS) + " |", "|---|---|"]
    for gid, guardrail in CATALOGUE.items():
        options = ", ".join(f"`{o}`" for o in guardrail.options) or "–"
        rows.append(f"| `{gid}` | {options} |")
    return (
        "`<id>` is a guardrail of the catalogue (`policy/guardrails.py`; what each refuses: "
        "[guardrails.md](guardrails.md)); an option only the guardrails that take it accept:",
        "\n".join(rows),
    )


def sections() -> list[Section]:
    """Every table of the file in schema order. Raises MissingDescriptions."""
    missing: list[str] = []
    out: list[Section] = []
    _walk(mi.type_info(Config), "", missing, {}, out, header="", presence="", description="")
    if missing:
        raise MissingDescriptions(missing)
    return out


def stale_fallbacks() -> list[str]:
    """FALLBACK_DESCRIPTIONS entries whose field has a description in the source by now, or that
    name no field of the schema."""
    fields: dict[str, tuple[type, mi.Field, mi.StructType | None]] = {}
    visited: set[type] = set()

    def collect(struct: mi.StructType) -> None:
        visited.add(struct.cls)
        for field in struct.fields:
            inner, _, _ = _struct(field.type)
            fields[f"{struct.cls.__name__}.{field.name}"] = (struct.cls, field, inner)
            if inner is not None and inner.cls not in visited:
                collect(inner)

    collect(mi.type_info(Config))
    stale = []
    for name in FALLBACK_DESCRIPTIONS:
        if name not in fields:
            stale.append(f"{name}: no such field")
            continue
        cls, field, inner = fields[name]
        _, meta = _unwrap(field.type)
        if meta or _declared_comment(cls, field.name):
            stale.append(f"{name}: described in {_repo_relative(inspect.getsourcefile(cls) or '?')} now")
    return stale


# -- the page --------------------------------------------------------------------------------


def _anchor(header: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", header.lower()).replace(" ", "-")


def _lines(all_sections: Sequence[Section]) -> Iterator[str]:
    yield f"<!-- Generated from the configuration schema by `{REGENERATE}`; do not edit by hand. -->"
    yield ""
    yield "# Configuration reference"
    yield ""
    yield (
        "Every table and key of sqlward's TOML configuration file, generated from the schema the gateway "
        "decodes it with (`sqlward.gateway.config.Config` and the structs it holds; "
        "`gateway/config_reference.py` writes this page). How the keys work together, with examples, is "
        "[configuration.md](configuration.md); a complete working file is `deploy/examples/dev.toml`; "
        "`sqlward check-config FILE` checks one."
    )
    yield ""
    yield (
        "Types are TOML's: a *number* is an integer or a decimal, an *array* is `[...]`, a *table* is a "
        "`[section]` or an inline `{ ... }`. *unset* means the key is left out (TOML has no null). A key "
        "that is not listed is an error, and so is a value outside its type or bounds; the rules that "
        "join several keys (a DSN's scheme and the target's protocol, one of two secret keys, files that "
        "must be readable) are checked when the file is loaded and described in "
        "[configuration.md](configuration.md). Every string value may use `${VAR}` "
        "([configuration.md](configuration.md#environment-variables-var))."
    )
    yield ""
    yield "## Tables"
    yield ""
    for section in all_sections:
        yield f"- [{section.header}](#{_anchor(section.header)}): {section.presence.rstrip('.').lower()}"
    for section in all_sections:
        yield ""
        yield f"## {section.header}"
        yield ""
        yield f"{section.presence} {section.description}".strip()
        for note in section.notes:
            yield ""
            yield note
        yield ""
        if section.same_as:
            yield f"The same keys as [{section.same_as}](#{_anchor(section.same_as)})."
            continue
        if not section.keys:
            yield "No keys of its own: its tables follow."
            continue
        yield "| key | type | default | description |"
        yield "|---|---|---|---|"
        for key in section.keys:
            yield f"| `{key.name}` | {_cell(key.type)} | {_cell(key.default)} | {_cell(key.description)} |"


def render() -> str:
    """The page. Raises MissingDescriptions."""
    return "\n".join(_lines(sections())) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sqlward.gateway.config_reference",
        description="Print (or write, or check) docs/configuration-reference.md, generated from the config schema.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", nargs="?", const=str(PAGE), metavar="PATH", help=f"write the page (default {PAGE})")
    mode.add_argument("--check", nargs="?", const=str(PAGE), metavar="PATH", help="exit 1 when the page differs from the schema")
    args = parser.parse_args(argv)
    try:
        text = render()
    except MissingDescriptions as exc:
        print(f"config_reference: {exc}", file=sys.stderr)
        return 2
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        return 0
    if args.check:
        try:
            current = Path(args.check).read_text(encoding="utf-8")
        except OSError as exc:
            print(f"config_reference: cannot read {args.check}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if current != text:
            print(f"config_reference: {args.check} differs from the schema; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
