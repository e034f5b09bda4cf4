"""Problems in the gateway's configuration and its policy files, and msgspec's validation errors
reworded into them.

How it works: a check appends `Problem(path, message)`s to a list (`path` is a `$.path` into the
file, "" for the file as a whole) and raises one `ConfigError(file, problems)` naming them all,
printed one per line as ``FILE: $.path: message``. `reword` turns a `msgspec.ValidationError`
("Expected `str`, got `int` - at `$.targets[0].port`") into such a Problem below a prefix, and
lists the fields of the Struct when a field is unknown and the values of the Literal type when a
value is not one of them ("Invalid enum value 'dney' (expected one of: deny, allow, review)"),
close matches first (`policy.vocabulary.one_of`): actions, default_action, guardrail action and
on_unknown, mask function / classifiers / truncate, and the Literal keys of gateway.config.
`key_path` writes a table key into a path (``$.environments.prod``, ``$.guardrails["a b"]``).

Shared by `gateway.config` (the main file) and `gateway.policy_files` (the files it names), and
imports neither of them, so the two import one way: config -> policy_files -> config_errors.
The reference for every key is docs/configuration.md.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Annotated, Any

import msgspec

from sqlward.policy.vocabulary import one_of

__all__ = ["ConfigError", "Problem", "key_path", "literal_values", "reword"]


# --------------------------------------------------------------------------------------------
# Errors


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong with a config file: where (`$.path`, "" for the file as a whole) and what."""

    path: str
    message: str


class ConfigError(Exception):
    """The configuration cannot be used. ``str(err)`` is ready to print, one problem per line:
    ``FILE: $.path: message``. Never contains a secret."""

    def __init__(self, file: str, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.file = file
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(
            "\n".join(f"{file}: {p.path}: {p.message}" if p.path else f"{file}: {p.message}" for p in self.problems)
        )

    @classmethod
    def single(cls, file: str, path: str, message: str) -> ConfigError:
        return cls(file, [Problem(path, message)])

    @property
    def path(self) -> str:
        """The `$.path` of the first problem."""
        return self.problems[0].path if self.problems else ""


# --------------------------------------------------------------------------------------------
# Paths and msgspec's errors

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def key_path(path: str, key: str) -> str:
    """`path.key`, or `path["key"]` when the key is not a plain name."""
    return f"{path}.{key}" if _KEY.fullmatch(key) else f"{path}[{json.dumps(key)}]"


_AT = re.compile(r"^(?P<msg>.*?) - at `(?P<path>\$[^`]*)`$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_ENUM = re.compile(r"^Invalid enum value '(?P<value>.*)'$", re.S)
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+|\.\.\.)\]")


def _type_at(root: type, path: str) -> Any:
    """The type found at a msgspec `$.path` below `root` (Annotated and `| None` stripped), or
    None when the path leaves the types."""
    tp: Any = root
    for m in _SEGMENT.finditer(path[1:]):
        tp = _strip(tp)
        if m.group(1) is not None:
            if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
                return None
            hints = typing.get_type_hints(tp, include_extras=True)
            if m.group(1) not in hints:
                return None
            tp = hints[m.group(1)]
        else:
            args = typing.get_args(tp)
            if not args:
                return None
            tp = args[-1] if typing.get_origin(tp) is dict else args[0]
    return _strip(tp)


def _struct_at(root: type, path: str) -> type | None:
    """The Struct type found at a msgspec `$.path` below `root`, when there is one."""
    tp = _type_at(root, path)
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def literal_values(root: type, path: str) -> tuple[str, ...]:
    """The values of the Literal type at `path` below `root` (empty when it is not one)."""
    tp = _type_at(root, path)
    if typing.get_origin(tp) is typing.Literal:
        return tuple(str(v) for v in typing.get_args(tp))
    return ()


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] → X; X | None → X."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def reword(exc: msgspec.ValidationError, root: type, prefix: str) -> Problem:
    """msgspec's "Expected `str`, got `int` - at `$.x`" for a value converted to `root`, as a
    Problem at `prefix` + that path; an unknown field lists the fields the Struct there takes."""
    text = str(exc)
    m = _AT.match(text)
    msg, path = (m.group("msg"), m.group("path")) if m else (text, "$")
    path = prefix + path[1:]
    if u := _UNKNOWN.match(msg):
        struct = _struct_at(root, m.group("path") if m else "$")
        expected = f" ({one_of(u.group('field'), struct.__struct_fields__)})" if struct else ""
        return Problem(key_path(path, u.group("field")), f"unknown field{expected}")
    if r := _MISSING.match(msg):
        return Problem(key_path(path, r.group("field")), "required field is missing")
    if e := _ENUM.match(msg):
        values = literal_values(root, m.group("path") if m else "$")
        if values:
            return Problem(path, f"{msg} ({one_of(e.group('value'), values)})")
    return Problem(path, msg)
