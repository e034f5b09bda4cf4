"""Policy files: `[gateway] policy_files = ["policies/*.toml", "extra.yaml"]`.

How it works:

- `policy_paths(config)` expands the patterns in order, relative to the config file's directory.
  A glob's matches are sorted by name; a file named by several patterns is loaded once, at its
  first place. A pattern without glob characters must name an existing file; a glob may match
  nothing.
- Each file is read as TOML (`tomllib`, for ``.toml``) or YAML (`yaml.safe_load`, for ``.yaml``
  / ``.yml``) and may hold only `rules`, `masks`, `environments` and `guardrails`, with the same strict
  schemas as the main config (`convert_policy_tables` converts the `environments` and
  `guardrails` tables of both). Errors are `gateway.config_errors.ConfigError`s naming the policy
  file and the `$.path`. No ``${VAR}`` expansion happens in policy files. A guardrail table's id
  is checked first (an unknown id is the one error of its table, listing the catalogue), and an
  unknown key in it lists the keys that guardrail takes (`policy.vocabulary.guardrail_keys`).
- `load_policy(config)` merges: the main config's rules first, then each file's in order;
  environments and guardrails of later files replace earlier ones key by key. A rule id used
  twice (in the config or any file) is an error. The result is a `PolicyBundle`.
- `files_state(paths)` is what the server's watcher compares every 2 s: the matching files with
  their mtime and size (one glob and one stat per file).

The gatekeeper (`Gatekeeper.reload_policy`) turns a bundle into a new `policy.engine.Engine`.

Imports go one way: `gateway.config` imports this module (its `load_config` checks the policy
files at start-up and converts its own tables with `convert_policy_tables`); this module reads a
`gateway.config.Config` through the `PolicySource` protocol, the few fields it needs, and never
imports `gateway.config`.
"""

from __future__ import annotations

import difflib
import glob
import os
import tomllib
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from sqlward.gateway.config_errors import ConfigError, Problem, key_path, reword
from sqlward.policy.guardrails import GuardrailConfig, guardrail_problems
from sqlward.policy.rules import EnvironmentPolicy, Rule, rule_problems
from sqlward.policy.vocabulary import guardrail_ids, guardrail_keys, one_of
from sqlward.masking.model import MaskRule
from sqlward.masking.policy import rule_problems as mask_rule_problems

__all__ = ["PolicyBundle", "PolicySource", "convert_policy_tables", "files_state", "load_policy", "policy_paths"]

_MAGIC = frozenset("*?[")


class _PolicyFilesSetting(Protocol):
    """The `[gateway]` table, of which only the policy file patterns are read here."""

    @property
    def policy_files(self) -> tuple[str, ...]: ...


class PolicySource(Protocol):
    """What this module reads of a `gateway.config.Config`: where it was loaded from, its
    `[gateway] policy_files` patterns and its own policy tables."""

    @property
    def source(self) -> str: ...

    @property
    def base_dir(self) -> str: ...

    @property
    def gateway(self) -> _PolicyFilesSetting: ...

    @property
    def rules(self) -> tuple[Rule, ...]: ...

    @property
    def environments(self) -> Mapping[str, EnvironmentPolicy]: ...

    @property
    def guardrails(self) -> Mapping[str, GuardrailConfig]: ...

    @property
    def masks(self) -> tuple[MaskRule, ...]: ...


class PolicyBundle(msgspec.Struct, frozen=True):
    """Everything an Engine needs, merged from the main config and its policy files."""

    rules: tuple[Rule, ...]
    environments: dict[str, EnvironmentPolicy]
    guardrails: dict[str, GuardrailConfig]
    files: tuple[str, ...] = ()
    masks: tuple[MaskRule, ...] = ()


class _PolicyDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rules: tuple[Rule, ...] = ()
    masks: tuple[MaskRule, ...] = ()


def policy_paths(config: PolicySource) -> tuple[str, ...]:
    """The policy files in load order (absolute paths). Raises ConfigError for a plain path that
    does not exist."""
    base = config.base_dir
    file = config.source or "<config>"
    out: list[str] = []
    seen: set[str] = set()
    for i, pattern in enumerate(config.gateway.policy_files):
        full = os.path.expanduser(pattern)
        if not os.path.isabs(full):
            full = os.path.join(base, full)
        full = os.path.normpath(full)
        if _MAGIC & set(pattern):
            matches = sorted(p for p in glob.glob(full) if os.path.isfile(p))
        else:
            if not os.path.isfile(full):
                raise ConfigError.single(file, f"$.gateway.policy_files[{i}]", f"policy file {full} does not exist")
            matches = [full]
        for path in matches:
            if path not in seen:
                seen.add(path)
                out.append(path)
    return tuple(out)


def files_state(config: PolicySource) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every file the patterns match now; changes when a file is
    edited, added or removed. Never raises."""
    try:
        paths = policy_paths(config)
    except ConfigError:
        return (("<missing>", 0, 0),)
    state = []
    for path in paths:
        try:
            st = os.stat(path)
            state.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            state.append((path, -1, -1))
    return tuple(state)


def _read(path: str) -> dict[str, Any]:
    lower = path.lower()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError.single(path, "", f"cannot read policy file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError.single(path, "", "not a UTF-8 text file") from None
    if lower.endswith((".yaml", ".yml")):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError.single(path, where, f"YAML syntax error: {problem}") from None
        if raw is None:
            return {}
    elif lower.endswith(".toml"):
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError.single(path, "", f"TOML syntax error: {exc}") from None
    else:
        raise ConfigError.single(path, "", "unknown policy file type (expected .toml, .yaml or .yml)")
    if not isinstance(raw, dict):
        raise ConfigError.single(path, "$", "expected a mapping with rules, masks, environments and guardrails")
    return raw


def convert_policy_tables(
    envs_raw: Any, guards_raw: Any, problems: list[Problem]
) -> tuple[dict[str, EnvironmentPolicy], dict[str, GuardrailConfig]]:
    """Convert decoded `environments` and `guardrails` tables table by table (so errors name the
    environment or guardrail), appending problems. Used for the main config and each policy file."""
    environments: dict[str, EnvironmentPolicy] = {}
    if not isinstance(envs_raw, dict):
        problems.append(Problem("$.environments", f"Expected a table of environment names, got `{_toml_type(envs_raw)}`"))
    else:
        for name, table in envs_raw.items():
            if not isinstance(name, str):
                problems.append(_not_a_string_key("$.environments", name, "environment name"))
                continue
            prefix = key_path("$.environments", name)
            try:
                environments[name] = msgspec.convert(table, type=EnvironmentPolicy)
            except msgspec.ValidationError as exc:
                problems.append(reword(exc, EnvironmentPolicy, prefix))
    guardrails: dict[str, GuardrailConfig] = {}
    if not isinstance(guards_raw, dict):
        problems.append(Problem("$.guardrails", f"Expected a table of guardrail ids, got `{_toml_type(guards_raw)}`"))
    else:
        for gid, table in guards_raw.items():
            if not isinstance(gid, str):
                problems.append(_not_a_string_key("$.guardrails", gid, "guardrail id"))
                continue
            prefix = key_path("$.guardrails", gid)
            if gid not in guardrail_ids():  # the id first: its options mean nothing without it
                problems.append(Problem(prefix, f"unknown guardrail ({one_of(gid, guardrail_ids())})"))
                continue
            try:
                guardrail = msgspec.convert(table, type=GuardrailConfig)
            except msgspec.ValidationError as exc:
                problem = reword(exc, GuardrailConfig, prefix)
                field = problem.path[len(prefix) + 1 :] if problem.path.startswith(prefix + ".") else ""
                if problem.message.startswith("unknown field") and field:
                    # Name the keys this guardrail takes, not every guardrail's options.
                    problem = Problem(problem.path, f"unknown field ({one_of(field, guardrail_keys(gid))})")
                problems.append(problem)
                continue
            bad = guardrail_problems(gid, guardrail)
            problems.extend(Problem(_field_path(prefix, field), message) for field, message in bad)
            if not bad:
                guardrails[gid] = guardrail
    return environments, guardrails


def _not_a_string_key(path: str, key: Any, what: str) -> Problem:
    """A YAML key that is not a string (`on`, `no`, `1` unquoted), at `path[json of the key]`."""
    import json

    return Problem(
        f"{path}[{json.dumps(key, default=str)}]",
        f"expected the {what} as a string, got `{_toml_type(key)}`; quote it (YAML reads on, off, yes, no and numbers unquoted as other types)",
    )


def _field_path(prefix: str, field: str) -> str:
    """`prefix.field`, `prefix.key[3]` for a field naming an entry, `prefix` for ""."""
    if not field:
        return prefix
    key, bracket, rest = field.partition("[")
    path = prefix
    for part in key.split("."):  # "approval.hold_timeout": a key of a nested table
        path = key_path(path, part)
    return path + (bracket + rest if bracket else "")


def _toml_type(value: Any) -> str:
    return {list: "array", dict: "object", str: "str", int: "int", float: "float", bool: "bool"}.get(
        type(value), type(value).__name__
    )


def _load_file(
    path: str,
) -> tuple[tuple[Rule, ...], dict[str, EnvironmentPolicy], dict[str, GuardrailConfig], tuple[MaskRule, ...]]:
    raw = dict(_read(path))
    envs_raw = raw.pop("environments", {})
    guards_raw = raw.pop("guardrails", {})
    problems: list[Problem] = []
    try:
        doc = msgspec.convert(raw, type=_PolicyDoc)
    except msgspec.ValidationError as exc:
        problems.append(reword(exc, _PolicyDoc, "$"))
        doc = _PolicyDoc()
    environments, guardrails = convert_policy_tables(envs_raw, guards_raw, problems)
    for i, rule in enumerate(doc.rules):
        for key, message in rule_problems(rule):
            problems.append(Problem(f"$.rules[{i}].{key}", message))
    for i, mask in enumerate(doc.masks):
        for key, message in mask_rule_problems(mask):
            problems.append(Problem(f"$.masks[{i}].{key}", message))
    if problems:
        raise ConfigError(path, problems)
    return doc.rules, environments, guardrails, doc.masks


def name_typo(value: str, known: set[str], what: str) -> str | None:
    """Why `value` (a literal name, not a glob) looks like a misspelling of one of `known`: it
    names none of them but differs only in case, or is close to one. A name that is neither
    (a policy shared by gateways with other targets) is fine; None then."""
    if not known or not value or value in known or any(c in value for c in "*?["):
        return None
    same_case = [k for k in sorted(known) if k.casefold() == value.casefold()]
    close = same_case or difflib.get_close_matches(value, sorted(known), n=3, cutoff=0.75)
    if not close:
        return None
    return (
        f"{value!r} names no configured {what}, so this never matches; did you mean "
        f"{' or '.join(repr(c) for c in close)}? (configured: {', '.join(sorted(known))})"
    )


def _check_names(config: PolicySource, origin: list[tuple[str, str, Any]], environments: Mapping[str, Any]) -> None:
    """Rules, masks and guardrails whose `targets` / `environments` spell a configured name
    wrongly would silently never match: a ConfigError naming the file and the `$.path`."""
    targets = getattr(config, "targets", ())
    known = {
        "targets": ({t.name for t in targets}, "target"),
        "environments": ({t.environment for t in targets} | set(environments), "environment"),
    }
    problems: dict[str, list[Problem]] = {}
    for file, where, entry in origin:
        for key, (names, what) in known.items():
            for j, value in enumerate(getattr(entry, key, ()) or ()):
                message = name_typo(value, names, what)
                if message is not None:
                    problems.setdefault(file, []).append(Problem(f"{where}.{key}[{j}]", message))
    for file, found in problems.items():
        raise ConfigError(file, found)


def load_policy(config: PolicySource) -> PolicyBundle:
    """The merged policy of `config` and its policy files. Raises ConfigError (naming the policy
    file and the `$.path`) on the first file with a problem."""
    paths = policy_paths(config)
    rules = list(config.rules)
    environments = dict(config.environments)
    guardrails = dict(config.guardrails)
    first: dict[str, str] = {r.id: f"{config.source or '<config>'} at $.rules[{i}]" for i, r in enumerate(config.rules)}
    masks = list(config.masks)
    mask_first: dict[str, str] = {m.id: f"{config.source or '<config>'} at $.masks[{i}]" for i, m in enumerate(config.masks)}
    # Where each entry came from, for the check of target and environment names below.
    origin: list[tuple[str, str, Any]] = [(config.source or "<config>", f"$.rules[{i}]", r) for i, r in enumerate(config.rules)]
    origin += [(config.source or "<config>", f"$.masks[{i}]", m) for i, m in enumerate(config.masks)]
    origin += [(config.source or "<config>", f"$.guardrails.{g}", c) for g, c in config.guardrails.items()]
    for path in paths:
        file_rules, file_envs, file_guards, file_masks = _load_file(path)
        origin += [(path, f"$.rules[{i}]", r) for i, r in enumerate(file_rules)]
        origin += [(path, f"$.masks[{i}]", m) for i, m in enumerate(file_masks)]
        origin += [(path, f"$.guardrails.{g}", c) for g, c in file_guards.items()]
        dupes = []
        for i, rule in enumerate(file_rules):
            if rule.id in first:
                dupes.append(Problem(f"$.rules[{i}].id", f"duplicate rule id {rule.id!r} (first in {first[rule.id]})"))
            else:
                first[rule.id] = f"{path} at $.rules[{i}]"
        for i, mask in enumerate(file_masks):
            if mask.id in mask_first:
                dupes.append(Problem(f"$.masks[{i}].id", f"duplicate mask id {mask.id!r} (first in {mask_first[mask.id]})"))
            else:
                mask_first[mask.id] = f"{path} at $.masks[{i}]"
        if dupes:
            raise ConfigError(path, dupes)
        rules.extend(file_rules)
        masks.extend(file_masks)
        environments.update(file_envs)
        guardrails.update(file_guards)
    _check_names(config, origin, environments)
    return PolicyBundle(rules=tuple(rules), environments=environments, guardrails=guardrails, files=paths, masks=tuple(masks))
