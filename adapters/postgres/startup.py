"""What a client's PostgreSQL StartupMessage may set on the upstream session, without I/O.

Spec: https://www.postgresql.org/docs/current/protocol-message-formats.html (StartupMessage),
libpq's `options` parameter; the server's own code: `pg_split_opts` (postinit.c) and
`process_postgres_switches` / `ParseLongOption` (postgres.c, guc.c).

The server reads two kinds of settings from a startup packet, and so does this module:

1. **`options`**, split into words at ASCII whitespace, a backslash taking the next character
   as is (`split_options`, = `pg_split_opts`), then read with getopt over the server's switch
   string `B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:` (`read_switches`): `-c name=value`,
   `-cname=value`, `--name=value`, `-c` with its value in the next word, single-letter switches
   combined (`-Fc`); in a setting's name `-` stands for `_`. A word that is no switch, or a
   switch without its value, or a setting without `=`, is a FATAL on the server.
2. **every other key/value** of the packet except `user`, `database`, `options`, `replication`
   and `_pq_.*` (names compared exactly, as the server does): a setting by that name, applied
   *after* the options, in packet order.

GUC names are case-insensitive (`ROLE` is `role`). `read_startup` applies both in the server's
order (options first, then the packet's keys; the last one of a name wins) and holds the result
to an explicit policy:

- **Forwarded** (the allow-list `FORWARDED`): session presentation and client-side timeouts, the
  settings drivers send at startup (libpq, psycopg, asyncpg, pgjdbc, node-postgres, npgsql):
  application_name, client_encoding, DateStyle, TimeZone, IntervalStyle, extra_float_digits,
  bytea_output, client_min_messages, search_path (the session probes the resulting path before
  the client is ready), statement_timeout, lock_timeout, idle_in_transaction_session_timeout,
  idle_session_timeout, default_transaction_isolation / _read_only / _deferrable, lc_monetary,
  lc_numeric, lc_time.
- **Taken by the gateway**: `sqlward.reason` (the stated session reason; not forwarded).
- **Refused** (`StartupRefused`, a FATAL naming the parameter): everything else. That includes
  `role` and `session_authorization` (they change who the upstream thinks we are), every other
  `sqlward.*` setting (the gateway's own, `sqlward.identity`), `standard_conforming_strings` and
  the other settings that change how SQL text is read (the gateway's analysis reads it as the
  default does), and every switch other than `-c` / `--` (`-B`, `-d`, `-e`, `-F`, `-S`, `-W`,
  ...). Malformed options (a word that is no switch, `-c` without a value or without `=`) are
  refused as the server would refuse them (`StartupSyntaxError`).

`upstream_params` re-emits what is forwarded in one canonical form: each setting as
`-c name=value` in `options` (lower-case name, the value escaped for the server's splitter by
`identity.pg_option_value`), then the gateway's own `-c sqlward.identity=<label>` last, and the
`application_name` the gateway shows. Nothing the client wrote reaches the server unparsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlward.adapters.identity import MAX_REASON, pg_option_value

__all__ = [
    "FORWARDED", "StartupRefused", "StartupSettings", "StartupSyntaxError", "read_startup", "read_switches",
    "split_options", "upstream_params",
]

# The settings a client may give at connection start (lower-case GUC names).
FORWARDED: frozenset[str] = frozenset({
    "application_name", "client_encoding", "datestyle", "timezone", "intervalstyle", "extra_float_digits",
    "bytea_output", "client_min_messages", "search_path", "statement_timeout", "lock_timeout",
    "idle_in_transaction_session_timeout", "idle_session_timeout", "default_transaction_isolation",
    "default_transaction_read_only", "default_transaction_deferrable", "lc_monetary", "lc_numeric", "lc_time",
})
REASON = "sqlward.reason"
# Startup keys the server reads itself (compared exactly, as the server compares them).
PROTOCOL_KEYS = ("user", "database", "options", "replication")

# The server's getopt string (process_postgres_switches): letters followed by ':' take a value.
_SWITCHES = "B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:"
_TAKES_VALUE = {c for i, c in enumerate(_SWITCHES) if c != ":" and _SWITCHES[i + 1 : i + 2] == ":"}
_KNOWN = {c for c in _SWITCHES if c != ":"}
# pg_split_opts uses isspace(): the ASCII whitespace characters.
_SPACE = frozenset(" \t\n\v\f\r")


def _lower(name: str) -> str:
    """ASCII lower case, as the server compares GUC names (guc_name_compare)."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class StartupRefused(Exception):
    """A startup setting the gateway does not forward; `name` is the parameter as written."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class StartupSyntaxError(Exception):
    """`options` the server itself would refuse (its FATAL: invalid command-line argument)."""


def split_options(text: str) -> list[str]:
    """The words of `options` as the server splits them (`pg_split_opts`)."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            break
        word: list[str] = []
        escape = False
        while i < n:
            c = text[i]
            if c in _SPACE and not escape:
                break
            if not escape and c == "\\":
                escape = True
            else:
                escape = False
                word.append(c)
            i += 1
        words.append("".join(word))
    return words


def _long_option(arg: str, switch: str) -> tuple[str, str]:
    """`ParseLongOption`: name and value split at the first '=', '-' in the name read as '_'."""
    name, eq, value = arg.partition("=")
    if not eq:
        raise StartupSyntaxError(f"{switch}{arg} requires a value")
    return name.replace("-", "_"), value


def read_switches(words: list[str]) -> list[tuple[str, str, str]]:
    """The settings the server's getopt reads from `words`, in order, as (switch, name, value);
    a switch other than -c / -- gives (switch, "", value). StartupSyntaxError where the server
    refuses the words."""
    out: list[tuple[str, str, str]] = []
    i, n = 0, len(words)
    while i < n:
        word = words[i]
        i += 1
        if word == "--":  # end of the switches: nothing may follow
            if i < n:
                raise StartupSyntaxError(f"invalid command-line argument for server process: {words[i]}")
            break
        if len(word) < 2 or word[0] != "-":
            raise StartupSyntaxError(f"invalid command-line argument for server process: {word}")
        j = 1
        while j < len(word):
            letter = word[j]
            j += 1
            if letter not in _KNOWN:
                raise StartupSyntaxError(f"invalid command-line argument for server process: {word}")
            if letter not in _TAKES_VALUE:
                out.append((f"-{letter}", "", ""))
                continue
            if j < len(word):
                arg = word[j:]
            elif i < n:
                arg = words[i]
                i += 1
            else:
                raise StartupSyntaxError(f"option requires an argument -- '{letter}'")
            if letter in "c-":
                switch = "--" if letter == "-" else "-c "
                name, value = _long_option(arg, switch)
                out.append((switch.strip(), name, value))
            else:
                out.append((f"-{letter}", "", arg))
            break
    return out


@dataclass
class StartupSettings:
    """What the client's startup packet sets, as the server would apply it (lower-case names,
    last one wins), once the policy accepted it."""

    settings: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def application_name(self) -> str:
        return self.settings.get("application_name", "")


def _judge(name: str, spelled: str) -> None:
    if name in FORWARDED or name == REASON:
        return
    raise StartupRefused(spelled, f"setting {spelled} at connection start is not allowed through sqlward")


def read_startup(params: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> StartupSettings:
    """Read a StartupMessage's settings as the server would and apply the policy (module doc).
    Raises StartupRefused (a setting or switch that is not forwarded) or StartupSyntaxError."""
    options = ""
    keyed: list[tuple[str, str]] = []
    for key, value in params:
        if key == "options":
            options = value  # the server keeps the last one
        elif key in PROTOCOL_KEYS or key.startswith("_pq_."):
            continue
        else:
            keyed.append((key, value))
    result = StartupSettings()
    for switch, name, value in read_switches(split_options(options)):
        if not name:
            raise StartupRefused(switch, f"the startup option {switch} is not allowed through sqlward")
        spelled = f"{switch} {name}" if switch == "-c" else f"{switch}{name}"
        _judge(_lower(name), spelled)
        _apply(result, _lower(name), value)
    for key, value in keyed:
        _judge(_lower(key), key)
        _apply(result, _lower(key), value)
    return result


def _apply(result: StartupSettings, name: str, value: str) -> None:
    if name == REASON:
        result.reason = value[:MAX_REASON]
    else:
        result.settings.pop(name, None)  # keep the order in which the server applies them
        result.settings[name] = value


def upstream_params(
    startup: StartupSettings, *, application_name: str | None, identity_label: str | None,
) -> list[tuple[str, str]]:
    """The startup parameters for the upstream (besides user and database): the forwarded
    settings in `options`, canonical and escaped, the gateway's `sqlward.identity` last;
    `application_name` as given (None: the client's own, if any); `identity_label` None: no
    `sqlward.identity`."""
    words = [
        f"-c {name}={pg_option_value(value)}" for name, value in startup.settings.items() if name != "application_name"
    ]
    if identity_label is not None:
        words.append(f"-c sqlward.identity={pg_option_value(identity_label)}")
    out: list[tuple[str, str]] = []
    if words:
        out.append(("options", " ".join(words)))
    if application_name is None:
        application_name = startup.settings.get("application_name")
    if application_name is not None:
        out.append(("application_name", application_name))
    return out
