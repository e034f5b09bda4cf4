"""docs/configuration-reference.md is what `gateway/config_reference.py` generates from the schema.

How it works: the committed page is compared with `config_reference.render()`; when they differ,
the failure names the command that regenerates the page and shows the first lines that differ.
The generator itself is checked on the real schema (every key of every table is on the page with
a description, a fallback description is only kept while its field has no comment in the source)
and on a small struct of the test's own (comments beside and above a field, `Meta` bounds and
descriptions, the error that names a key without a description).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import msgspec.inspect as mi
import pytest

from sqlward.gateway import config_reference
from sqlward.gateway.config import Config
from sqlward.gateway.config_reference import FALLBACK_DESCRIPTIONS, PAGE, REGENERATE, MissingDescriptions, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_committed_page_is_the_generators_output() -> None:
    expected = render()
    committed = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    if committed != expected:
        diff = "\n".join(list(difflib.unified_diff(
            committed.splitlines(), expected.splitlines(), "committed", "generated", lineterm="", n=1,
        ))[:40])
        pytest.fail(f"docs/configuration-reference.md differs from the schema; regenerate it with:\n\n    {REGENERATE}\n\n{diff}")


def test_the_check_flag_names_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "configuration-reference.md"
    stale.write_text("old\n", encoding="utf-8")
    assert config_reference.main(["--check", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert config_reference.main(["--write", str(stale)]) == 0
    assert config_reference.main(["--check", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == render()


def _schema_keys() -> set[tuple[str, str]]:
    """(TOML table path, key) of every scalar key of the schema."""
    out: set[tuple[str, str]] = set()

    def walk(struct: mi.StructType, path: str) -> None:
        for field in struct.fields:
            if f"{struct.cls.__name__}.{field.name}" in config_reference.INTERNAL:
                continue
            inner, how, _ = config_reference._struct(field.type)
            if inner is None:
                out.add((path, field.encode_name))
            else:
                sub = f"{path}.{field.encode_name}" if path else field.encode_name
                if how == "dict":
                    sub += "." + config_reference.KEY_PLACEHOLDERS.get(field.encode_name, "<name>")
                walk(inner, sub)

    walk(mi.type_info(Config), "")
    return out


def test_every_key_of_the_schema_is_on_the_page_with_a_description() -> None:
    text = render()
    listed: set[tuple[str, str]] = set()
    same_as: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        heading = re.match(r"^## `\[\[?([^\]]+)\]\]?`$", line)
        if heading:
            current = heading.group(1)
        same = re.match(r"^The same keys as \[`\[\[?([^\]]+)\]\]?`\]", line)
        if same:
            same_as[current] = same.group(1)
        row = re.match(r"^\| `([^`]+)` \| (.+?) \| (.+?) \| (.*) \|$", line)
        if row and current:
            assert row.group(4).strip(), f"no description: [{current}] {row.group(1)}"
            listed.add((current, row.group(1)))
    for section, first in same_as.items():
        listed |= {(section, key) for (s, key) in list(listed) if s == first}
    missing = _schema_keys() - listed
    assert not missing, sorted(missing)


def _guardrail_ids() -> tuple[str, ...]:
    from sqlward.policy.vocabulary import guardrail_ids

    return guardrail_ids()


def test_the_guardrail_section_lists_the_catalogue() -> None:
    text = render()
    section = text.split("## `[guardrails.<id>]`", 1)[1].split("\n## ", 1)[0]
    for gid in _guardrail_ids():
        assert f"| `{gid}` |" in section, gid
    assert "| `mass-write` | `max_rows`, `timeout`, `on_unknown` |" in section


def test_fallback_descriptions_are_only_kept_while_the_source_has_none() -> None:
    stale = config_reference.stale_fallbacks()
    assert not stale, (
        "these FALLBACK_DESCRIPTIONS entries (gateway/config_reference.py) are described in the source "
        "now (or name no field): delete them, then regenerate with " + REGENERATE + ":\n" + "\n".join(stale)
    )


def test_a_key_without_a_description_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "TargetConfig.dsn" in FALLBACK_DESCRIPTIONS  # a key whose declaration has no comment
    monkeypatch.delitem(FALLBACK_DESCRIPTIONS, "TargetConfig.dsn")
    with pytest.raises(MissingDescriptions) as excinfo:
        render()
    assert excinfo.value.missing == ("gateway/config.py: TargetConfig.dsn (`[[targets]]` dsn)",)
    assert "TargetConfig.dsn" in str(excinfo.value)


def test_the_cli_exits_2_on_a_key_without_a_description(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delitem(FALLBACK_DESCRIPTIONS, "TargetConfig.dsn")
    assert config_reference.main([]) == 2
    assert "TargetConfig.dsn" in capsys.readouterr().err


# -- the generator on a struct of its own ------------------------------------------------------


class _Inner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A nested table.

    Only the first paragraph is used."""

    path: str  # where it is


class _Sample(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Above, on two
    # lines.
    above: int = 3
    beside: Annotated[float, msgspec.Meta(gt=0, le=10)] = 1.5  # beside it
    # Context for the next one.
    both: tuple[str, ...] = ("a",)  # and its own
    meta: Annotated[int, msgspec.Meta(ge=1, description="From Meta.")] = 1

    undocumented: bool = False
    mode: Literal["x", "y"] = "x"  # a mode
    inner: _Inner | None = None
    many: tuple[_Inner, ...] = ()


def test_comments_beside_and_above_a_field_are_its_description() -> None:
    comments = config_reference._comments(_Sample)
    assert comments["above"] == "Above, on two lines."
    assert comments["beside"] == "Beside it."
    assert comments["both"] == "Context for the next one. And its own."
    assert "undocumented" not in comments and "meta" not in comments


def test_types_constraints_and_defaults() -> None:
    fields = {f.name: f for f in mi.type_info(_Sample).fields}
    assert config_reference._type(fields["beside"].type) == "number (> 0, ≤ 10)"
    assert config_reference._type(fields["both"].type) == "array of strings"
    assert config_reference._type(fields["mode"].type) == 'one of `"x"`, `"y"`'
    assert config_reference._default(fields["both"]) == '`["a"]`'
    assert config_reference._default(fields["inner"]) == "unset"
    assert config_reference._unwrap(fields["meta"].type)[1] == "From Meta."
    assert config_reference._struct(fields["inner"].type)[1:] == ("table", True)
    assert config_reference._struct(fields["many"].type)[1] == "array"
    assert config_reference._docstring(_Inner) == "A nested table."


def test_configuration_md_links_the_reference() -> None:
    assert "(configuration-reference.md)" in (DOCS / "configuration.md").read_text(encoding="utf-8")
