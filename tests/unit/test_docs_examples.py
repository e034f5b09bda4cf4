"""The examples of README.md and docs/*.md work as their pages say: every TOML block loads (or,
marked invalid, fails to load), every shell example that can run without a gateway runs and exits
and prints as shown.

How it works:

- The pages are README.md and every docs/*.md but `SKIPPED_PAGES` (pages other engineers are
  writing now; to be added). A fenced block is found with its language and the HTML comment on the
  line before its opening fence, its *marker*:

  ``<!-- invalid-config: TEXT -->``  a ```toml block that shows a mistake: it must fail to load,
                                     with TEXT in the error.
  ``<!-- file: NAME -->``            a ```toml block that is (part of) the file NAME the page's
                                     commands use (`sqlward check-config NAME`, `--config NAME`);
                                     blocks with the same NAME are joined in page order.
  ``<!-- demo-gateway -->``          a block run against a gateway on deploy/examples/dev.toml by
                                     tests/integration/test_docs_sessions.py (psql and mariadb
                                     sessions, `sqlward audit` on the trail they leave).
  ``<!-- not-run: REASON -->``       a block not run anywhere, and why (it needs Kubernetes, an
                                     identity provider, an approval flow through the admin API,
                                     minutes of benchmark, or it sets up the machine).

  `test_blocks_not_run_are_listed` keeps the not-run blocks to `NOT_RUN`, so adding one is a
  visible decision.
- TOML: a block with `[gateway]`, `[[listeners]]` and `[[targets]]` is a complete configuration
  and is loaded as it is; any other block is a fragment, appended to `BASE` (one listener, one
  target, one identity; the base's `[gateway]` gives way to a fragment's own). Both are loaded
  with `sqlward.gateway.config.load_config`, as `sqlward check-config` does: in a directory of
  the test's own, where absolute paths of the page (`/etc/sqlward/...`) are moved, every file a
  `*_file` key or a plain `policy_files` entry names is made (a real Ed25519 key for
  `signing_key_file`, a JWK set for `jwks_file`, text for the others), and with `DOC_ENV`: every
  `${VAR}` the block uses set to a value of 24 characters. The ```yaml policy files of policy.md
  load as policy files.
- Shell: a ```sh block is one command a line (``\\`` continues a line, ``#`` starts a comment); a
  ```console block has ``$ `` before each command and the command's output under it. The
  commands run here: `sqlward` (`check-config`, `policy test`, `audit verify | keygen`,
  `version`, `--version`) in-process through `sqlward.gateway.cli.main`; `python -c ...` in a subprocess;
  `export NAME=VALUE ...` (for the page's later commands), `. .venv/bin/activate` (sqlward is
  already importable here) and `echo $?` (the exit status the page states). They run in a
  directory of the test's own, with `deploy/` linked from the repository and the page's `file:`
  blocks written there. An output line of the page must equal the command's (trailing blanks
  ignored), where ``...`` stands for anything. A block of another command must carry a marker.
- docs/audit.md's and docs/observability.md's examples are run by tests/unit/test_docs_audit.py
  (and tests/integration/test_docs_audit_commands.py), docs/approvals.md's TOML and Python by
  tests/unit/test_docs_approvals.py: `COVERED_ELSEWHERE` leaves those blocks to them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sqlward.gateway import cli
from sqlward.gateway.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

# Pages being written by other engineers at the time of this test; their examples are to be
# checked here too once they land (remove them from this set).
SKIPPED_PAGES: frozenset[str] = frozenset()

# Blocks another test runs: (page, language) -> that test.
COVERED_ELSEWHERE: dict[tuple[str, str], str] = {
    ("docs/audit.md", "toml"): "tests/unit/test_docs_audit.py",
    ("docs/audit.md", "sh"): "tests/unit/test_docs_audit.py, tests/integration/test_docs_audit_commands.py",
    ("docs/observability.md", "toml"): "tests/unit/test_docs_audit.py",
    ("docs/approvals.md", "toml"): "tests/unit/test_docs_approvals.py",
}

BASE = """\
[gateway]
name = "docs"

[[listeners]]
name = "docs-base"
protocol = "postgres"
listen = "127.0.0.1:59999"

[[targets]]
name = "docs-base"
protocol = "postgres"
environment = "production"
dsn = "postgresql://sqlward@127.0.0.1:5432/docs"

[[identities]]
name = "docs-base"
secret = "docs-base-secret"
"""

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*(?P<kind>invalid-config|file|demo-gateway|not-run)\s*(?::\s*(?P<arg>.*?))?\s*-->\s*$")


class Block(msgspec.Struct, frozen=True):
    page: str  # relative to the repository: "docs/policy.md"
    line: int  # the line of the opening fence (1-based)
    lang: str
    body: str
    marker: str = ""  # invalid-config, file, demo-gateway, not-run, or ""
    arg: str = ""  # the marker's text after the colon

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    found = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    return [p for p in found if str(p.relative_to(REPO)) not in SKIPPED_PAGES]


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        marker = arg = ""
        if line >= 2:
            mm = _MARKER.search(lines[line - 2].strip())
            if mm:
                marker, arg = mm.group("kind"), (mm.group("arg") or "").strip()
        indent = len(m.group("indent"))
        body = "\n".join(l[indent:] for l in m.group("body").splitlines()) + "\n"
        out.append(Block(str(page.relative_to(REPO)), line, m.group("lang"), body, marker, arg))
    return out


def all_blocks(lang: str | None = None) -> list[Block]:
    return [b for p in pages() for b in blocks(p) if lang is None or b.lang == lang]


def covered_elsewhere(block: Block) -> str:
    return COVERED_ELSEWHERE.get((block.page, block.lang), "")


# -- TOML ----------------------------------------------------------------------------------------


def _is_complete(text: str) -> bool:
    return all(re.search(p, text, re.MULTILINE) for p in (r"^\[gateway\]", r"^\[\[listeners\]\]", r"^\[\[targets\]\]"))


def _pem_key() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    )


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node


def doc_env(text: str) -> dict[str, str]:
    """A value for every `${VAR}` of `text` (long enough for any secret), plus the environment of
    the process (for `${VAR:-default}`, unset stays unset)."""
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
    return {name: f"docs-example-{name.lower()}"[:24].ljust(24, "x") for name in names}


def materialize(text: str, directory: Path) -> Path:
    """`text` (a complete config, or a fragment appended to BASE) written as `directory`/sqlward.toml
    with the files it names made; the page's absolute paths moved under `directory`/root."""
    root = directory / "root"
    text = re.sub(r'"(/(?:etc|var|run|srv|opt|home|tmp)/[^"]*)"', lambda m: json.dumps(str(root) + m.group(1)), text)
    if not _is_complete(text):
        base = BASE
        if re.search(r"^\[gateway\]", text, re.MULTILINE):
            base = base.split("\n\n", 1)[1]  # the fragment's own [gateway] table
        text = base + "\n" + text
    directory.mkdir(parents=True, exist_ok=True)
    parsed = tomllib.loads(text)
    for key, value in _walk(parsed):
        if not isinstance(value, str) or not value or "${" in value:
            continue
        path = directory / value
        if key.endswith("_file"):
            path.parent.mkdir(parents=True, exist_ok=True)
            if key == "signing_key_file":
                path.write_bytes(_pem_key())
            elif key == "jwks_file":
                path.write_text('{"keys": []}\n', encoding="utf-8")
            else:
                path.write_text("docs-example-file-content-of-24+\n", encoding="utf-8")
        elif key in ("path", "file", "spool_dir"):
            (path if key == "spool_dir" else path.parent).mkdir(parents=True, exist_ok=True)
    for pattern in parsed.get("gateway", {}).get("policy_files", []):
        policy = directory / pattern
        if not set("*?[") & set(pattern) and not policy.exists():
            policy.parent.mkdir(parents=True, exist_ok=True)
            policy.write_text("", encoding="utf-8")
    for target in parsed.get("targets", []):
        for name in re.findall(r"ssl(?:rootcert|cert|key)=([^&]+)", str(target.get("dsn", ""))):
            if name != "system":
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                (directory / name).write_text("pem\n", encoding="utf-8")
    config = directory / "sqlward.toml"
    config.write_text(text, encoding="utf-8")
    return config


def load(text: str, directory: Path) -> Config:
    return load_config(materialize(text, directory), env={**os.environ, **doc_env(text)})


TOML = [b for b in all_blocks("toml") if not covered_elsewhere(b)]


def test_the_pages_are_found() -> None:
    names = {p.name for p in pages()}
    assert {"README.md", "quickstart.md", "configuration.md", "policy.md", "design.md"} <= names
    assert len(TOML) >= 15


@pytest.mark.parametrize("block", [b for b in TOML if b.marker != "invalid-config"], ids=lambda b: b.id)
def test_each_toml_example_loads(block: Block, tmp_path: Path) -> None:
    try:
        config = load(block.body, tmp_path)
    except ConfigError as exc:
        pytest.fail(f"{block.id}: the example does not load (mark a deliberate mistake <!-- invalid-config: TEXT -->):\n{exc}")
    # What the block sets is in force (nothing dropped on the way): its rules, targets, masks.
    parsed = tomllib.loads(block.body)
    assert {r["id"] for r in parsed.get("rules", [])} <= {r.id for r in config.rules}
    assert {t["name"] for t in parsed.get("targets", [])} <= {t.name for t in config.targets}
    assert {m["id"] for m in parsed.get("masks", [])} <= {m.id for m in config.masks}
    assert set(parsed.get("guardrails", {})) <= set(config.guardrails)


@pytest.mark.parametrize("block", [b for b in TOML if b.marker == "invalid-config"], ids=lambda b: b.id)
def test_each_invalid_toml_example_fails_to_load(block: Block, tmp_path: Path) -> None:
    assert block.arg, f"{block.id}: say what the error contains: <!-- invalid-config: TEXT -->"
    with pytest.raises((ConfigError, tomllib.TOMLDecodeError)) as excinfo:
        load(block.body, tmp_path)
    assert block.arg in str(excinfo.value), (block.arg, str(excinfo.value))


def test_policy_files_in_yaml_load(tmp_path: Path) -> None:
    [yaml_block] = [b for b in blocks(DOCS / "policy.md") if b.lang == "yaml"]
    (tmp_path / "policies.yaml").write_text(yaml_block.body, encoding="utf-8")
    from sqlward.gateway.policy_files import load_policy

    config = load('[gateway]\nname = "docs"\npolicy_files = ["policies.yaml"]\n', tmp_path)
    bundle = load_policy(config)
    assert [r.id for r in bundle.rules] == ["no-drop-prod"] and bundle.environments["production"].default_action == "deny"


# -- shell ---------------------------------------------------------------------------------------


class Command(msgspec.Struct, frozen=True):
    text: str  # the command as the page writes it (continuations joined)
    output: tuple[str, ...] = ()  # the lines under it (console blocks)


def commands(block: Block) -> list[Command]:
    """The commands of a ```sh or ```console block, with the output the page shows for each."""
    out: list[Command] = []
    lines = block.body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if block.lang == "console" and not line.startswith("$ "):
            if out:
                out[-1] = Command(out[-1].text, (*out[-1].output, line))
            i += 1
            continue
        text = line[2:] if block.lang == "console" else line
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        i += 1
        if block.lang == "sh":
            words = shlex.split(text, comments=True)
            if not words:
                continue
        out.append(Command(text.strip()))
    return out


def _sqlward_runs_here(argv: list[str]) -> bool:
    if argv[:1] in (["--version"], ["version"], ["check-config"]):
        return True
    return argv[:2] in (["policy", "test"], ["audit", "verify"], ["audit", "keygen"])


def runnable(cmd: Command) -> bool:
    words = shlex.split(cmd.text, comments=True)
    if not words:
        return True
    if words[0] == "sqlward":
        return _sqlward_runs_here(words[1:])
    if words[:2] == ["python", "-c"] or words[0] in ("export",) or words == [".", ".venv/bin/activate"]:
        return True
    return words == ["echo", "$?"]


SHELL = [
    b for b in all_blocks() if b.lang in ("sh", "console") and not covered_elsewhere(b)
]


def _pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.rstrip().split("...")))


def assert_output(expected: tuple[str, ...], got: str, where: str) -> None:
    lines = [l.rstrip() for l in got.rstrip("\n").splitlines()]
    want = [l.rstrip() for l in expected]
    while want and not want[-1]:
        want.pop()
    assert len(lines) == len(want), f"{where}: the page shows {len(want)} lines, the command printed {len(lines)}:\n{got}"
    for w, g in zip(want, lines):
        assert _pattern(w).fullmatch(g), f"{where}: the page shows\n  {w}\nthe command printed\n  {g}"


class Shell:
    """Runs a page's commands in `directory` (with `deploy/` of the repository and the page's
    `file:` blocks), keeping the page's exports and the last exit status."""

    def __init__(self, directory: Path, page: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = directory
        self.monkeypatch = monkeypatch
        self.status = 0
        for name in [n for n in os.environ if n.startswith("SQLWARD_")]:  # only what the page exports
            monkeypatch.delenv(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "deploy").symlink_to(REPO / "deploy")
        files: dict[str, str] = {}
        for b in blocks(REPO / page):
            if b.marker == "file":
                files[b.arg] = files.get(b.arg, "") + b.body
        for name, text in files.items():
            materialize(text, directory / ".files" / name)
            (directory / name).write_text((directory / ".files" / name / "sqlward.toml").read_text(encoding="utf-8"), encoding="utf-8")
            for made in (directory / ".files" / name).iterdir():  # the files it names, beside it
                if made.name != "sqlward.toml" and not (directory / made.name).exists():
                    (directory / made.name).symlink_to(made)
            for key, value in doc_env(text).items():
                monkeypatch.setenv(key, value)
        monkeypatch.chdir(directory)
        monkeypatch.setenv("PWD", str(directory))  # for "$PWD" in the page's exports

    def run(self, cmd: Command, capsys: pytest.CaptureFixture[str], where: str, *, status_shown: bool = False) -> None:
        """Run one command; without output on the page, it must exit 0 unless the page shows
        its status (`echo $?` next)."""
        words = shlex.split(cmd.text, comments=True)
        if not words or words == [".", ".venv/bin/activate"]:
            return
        if words[0] == "export":
            for word in words[1:]:
                name, _, value = word.partition("=")
                self.monkeypatch.setenv(name, os.path.expandvars(value))
            return
        if words == ["echo", "$?"]:
            assert cmd.output, f"{where}: echo $? without the status under it"
            assert self.status == int(cmd.output[0]), f"{where}: exit status {self.status}, the page says {cmd.output[0]}"
            return
        capsys.readouterr()
        if words[0] == "sqlward":
            try:
                self.status = cli.main(words[1:])
            except SystemExit as exc:  # --version
                self.status = int(exc.code or 0)
            out, err = capsys.readouterr()
            printed = out + err
        else:
            proc = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=60)
            self.status, printed = proc.returncode, proc.stdout + proc.stderr
        if cmd.output:
            assert_output(cmd.output, printed, where)
        elif not status_shown:
            assert self.status == 0, f"{where}: `{cmd.text}` exited {self.status}:\n{printed}"


def _shell_pages() -> list[str]:
    return sorted({b.page for b in SHELL if not b.marker})


@pytest.mark.parametrize("page", _shell_pages())
def test_shell_examples_run_as_shown(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    shell = Shell(tmp_path / "work", page, monkeypatch)
    for block in [b for b in SHELL if b.page == page and not b.marker]:
        cmds = commands(block)
        for i, cmd in enumerate(cmds):
            assert runnable(cmd), (
                f"{block.id}: `{cmd.text}` cannot run here; mark the block <!-- demo-gateway --> "
                "(tests/integration/test_docs_sessions.py runs it) or <!-- not-run: REASON -->"
            )
            shown = i + 1 < len(cmds) and cmds[i + 1].text == "echo $?"
            shell.run(cmd, capsys, block.id, status_shown=shown)


# -- the markers -----------------------------------------------------------------------------------

# The blocks not run anywhere, by page: the start of each one's first command, in page order. Why,
# each block says in its marker.
NOT_RUN: dict[str, tuple[str, ...]] = {
    "README.md": (
        "scripts/dev-up",  # sets up the machine, starts the demo (the sessions: demo-gateway)
        "scripts/test",  # the whole test suite
    ),
    "docs/approvals.md": (  # approval flows through a gateway's admin API
        'psql -h 127.0.0.1 -p 6432 -U bob -d app -c "DELE',
        'psql -h 127.0.0.1 -p 6432 -U bob -d app -c "TRUN',
        "mariadb -h 127.0.0.1 -P 3307 -u bob -p -t -vv sh",
        'mariadb -h 127.0.0.1 -P 3307 -u bob -p shop -e "',
        "export SQLWARD_ADMIN_URL=http://127.0.0.1:8443 S",
        "sqlward approvals approve ap-csvebg9v4zpw",
        "export SQLWARD_ADMIN_URL=https://sqlward.example",
        'curl -s -H "Authorization: Bearer $SQLWARD_TOKEN',
    ),
    "docs/deployment.md": (  # Docker, a cluster, or an install (tests/deploy checks the files they use)
        "docker build -f deploy/docker/Dockerfile -t regi",
        "docker run --read-only --tmpfs /tmp -v sqlward-d",
        "pip install -e '.[test]'",
        "NS=sqlward-production",
        "livenessProbe:",
        "sqlward audit verify postgresql://auditor@sqlwar",
        "kubectl -n sqlward-development logs deploy/otel-",
        "docker build -f deploy/docker/Dockerfile -t regi",
        "images:",
        "kubectl kustomize deploy/k8s/overlays/developmen",
        "kubectl -n sqlward-development logs deploy/order",
    ),
    "docs/identity.md": (  # TLS and an identity provider's tokens
        'PGPASSWORD=$TOKEN psql "host=gw.example.com port',
        "mariadb --host=gw.example.com --port=6603 --ssl ",
        'PGPASSWORD=$AGENT_TOKEN psql "host=gw.example.co',
    ),
    "docs/performance.md": (  # benchmark tools and minutes of benchmark
        "bench/setup && scripts/setup",
        "bench/setup",
        "SITE=$(python -c 'import os, sqlglot; print(os.p",
    ),
    "docs/operations.md": (
        'kill -HUP "$(pidof -s sqlward)"',  # signals a running gateway (test_operations.py does)
    ),
    "docs/quickstart.md": (
        "scripts/dev-up",  # as in README.md
        "scripts/dev-down",
    ),
}


def test_blocks_not_run_are_listed() -> None:
    found: dict[str, list[str]] = {}
    for b in all_blocks():
        if b.marker != "not-run":
            continue
        assert b.arg, f"{b.id}: say why it is not run: <!-- not-run: REASON -->"
        cmds = commands(b)
        found.setdefault(b.page, []).append(cmds[0].text if cmds else b.body.splitlines()[0])
    assert set(found) == set(NOT_RUN), set(found) ^ set(NOT_RUN)
    for page, firsts in found.items():
        listed = NOT_RUN[page]
        assert len(firsts) == len(listed) and all(f.startswith(l) for f, l in zip(firsts, listed)), (page, firsts)


def test_markers_are_known_and_in_place() -> None:
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), 1):
            if "<!--" in line and re.search(r"<!--\s*(invalid-config|file|demo-gateway|not-run)", line):
                assert _MARKER.search(line.strip()), f"{page.name}:{n}: malformed marker {line!r}"
        for b in blocks(page):
            if b.marker == "invalid-config" or b.marker == "file":
                assert b.lang == "toml", f"{b.id}: <!-- {b.marker} --> marks ```toml blocks"
            if b.marker == "demo-gateway":
                assert b.lang in ("sh", "console"), b.id


def test_pages_link_the_design_inside_the_repository() -> None:
    for page in pages():
        text = page.read_text(encoding="utf-8")
        assert "../shared/DESIGN.md" not in text and "shared/DESIGN" not in text, page.name
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in ("quickstart", "design", "configuration", "configuration-reference", "deployment", "operations",
                 "identity", "policy", "guardrails", "approvals", "masking", "audit", "observability",
                 "security", "architecture", "performance"):
        assert f"(docs/{name}.md)" in readme, name


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings (lower case, punctuation but - and _ dropped,
    spaces to -, a repeated one numbered), code blocks left out."""
    text = re.sub(r"^ *```.*?^ *```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_relative_links_point_at_files_and_headings() -> None:
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path = (page.parent / target).resolve() if target else page
            if str(path.relative_to(REPO)) in SKIPPED_PAGES:
                continue
            assert path.exists(), f"{page.relative_to(REPO)}: link to {target}, which does not exist"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{page.relative_to(REPO)}: link to {target}#{anchor}: no such heading"


# -- what the prose around the examples says -------------------------------------------------------


def _prose_prints(page: Path, after: str) -> str:
    """The `...` text of the first "prints `...`" after `after` on the page."""
    text = page.read_text(encoding="utf-8")
    m = re.search(r"prints `([^`]+)`", text[text.index(after):])
    assert m, (page.name, after)
    return " ".join(m.group(1).split())


def test_configuration_check_config_prints_what_the_page_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """"prints `sqlward.toml: ok (...)` for the example at the top of this page (kept in /srv/sqlward)"."""
    [example] = [b for b in blocks(DOCS / "configuration.md") if b.marker == "file" and b.arg == "sqlward.toml"]
    directory = tmp_path / "srv" / "sqlward"
    config = materialize(example.body, directory)
    for key, value in doc_env(example.body).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(directory)
    capsys.readouterr()
    assert cli.main(["check-config", config.name]) == 0
    expected = _prose_prints(DOCS / "configuration.md", "## Checking a file").replace("/srv/sqlward", str(directory))
    assert capsys.readouterr().out.strip() == expected


def test_quickstart_check_config_prints_what_the_page_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    shell = Shell(tmp_path / "work", "docs/quickstart.md", monkeypatch)
    [setup] = [b for b in blocks(DOCS / "quickstart.md") if b.lang == "sh" and "check-config" in b.body]
    for cmd in commands(setup):
        if not cmd.text.startswith("sqlward"):
            shell.run(cmd, capsys, setup.id)
    capsys.readouterr()
    assert cli.main(["check-config", "deploy/examples/dev.toml"]) == 0
    printed = capsys.readouterr().out.strip()
    assert _pattern(_prose_prints(DOCS / "quickstart.md", "`check-config` prints")).fullmatch(printed), printed


def test_policy_test_json_fields_are_the_ones_listed() -> None:
    """policy.md's "JSON fields:" paragraph names every key of the JSON the command prints."""
    text = (DOCS / "policy.md").read_text(encoding="utf-8")
    [sample] = [c for b in blocks(DOCS / "policy.md") if b.lang == "console" for c in commands(b) if "--json" in c.text]
    document = json.loads(sample.output[0])
    paragraph = text[text.index("JSON fields:"):].split("\n\n", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", paragraph))
    keys = set(document) | set(document["identity"]) | set(document["target"]) | {k for s in document["statements"] for k in s}
    assert keys <= listed, keys - listed


def _schema_tables() -> dict[str, set[str]]:
    """TOML table path -> its keys (sub-tables included by name), from the config schema."""
    import msgspec.inspect as mi

    from sqlward.gateway import config_reference as ref

    out: dict[str, set[str]] = {}

    def walk(struct: mi.StructType, path: str) -> None:
        keys = out.setdefault(path, set())
        for field in struct.fields:
            if f"{struct.cls.__name__}.{field.name}" in ref.INTERNAL:
                continue
            keys.add(field.encode_name)
            inner, how, _ = ref._struct(field.type)
            if inner is not None:
                sub = f"{path}.{field.encode_name}" if path else field.encode_name
                if how == "dict":
                    sub += "." + ref.KEY_PLACEHOLDERS.get(field.encode_name, "<name>")
                walk(inner, sub)

    walk(mi.type_info(Config), "")
    return out


@pytest.mark.parametrize("page", ["configuration.md", "policy.md", "masking.md"])
def test_key_tables_list_the_schemas_keys(page: str) -> None:
    """Each key table of these pages (under a heading naming a TOML table) names exactly the keys
    of that table."""
    tables = _schema_tables()
    text = (DOCS / page).read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,3} .+)$", text, flags=re.MULTILINE)
    other = {"### `tls = { ... }` of a listener": "listeners.tls", "### The approval table of review rules and guardrails": "rules.approval"}
    sections: dict[str, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2]):
        m = re.search(r"`\[\[?([^\]`]+)\]\]?`", heading)
        table = other.get(heading.strip()) or (m.group(1) if m else None)
        if table is not None and table in tables:
            sections[table] = body
    checked = set()
    for table, body in sections.items():
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        if not rows:
            continue
        documented = {k for line in rows for k in re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])}
        # A sub-table with a section of its own need not be a row of its parent's table too.
        expected = {k for k in tables[table] if f"{table}.{k}" not in sections or k in documented}
        assert documented == expected, (table, documented ^ expected)
        checked.add(table)
    assert checked, page
    if page == "configuration.md":
        assert {"gateway", "listeners", "targets", "audit", "audit.sinks", "rules", "masks", "webhooks"} <= checked, checked


def test_the_guardrail_catalogue_table_is_the_catalogue() -> None:
    """guardrails.md's catalogue: every guardrail, in the order they are checked, with its options."""
    from sqlward.policy.guardrails import CATALOGUE

    text = (DOCS / "guardrails.md").read_text(encoding="utf-8")
    table = text.split("## Catalogue", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[2:]]
    assert [r[0].strip("`") for r in rows] == list(CATALOGUE)
    for row in rows:
        options = re.findall(r"`([a-z_]+)` \(", row[2]) + re.findall(r"^`([a-z_]+)`$", row[2])
        assert tuple(options) == CATALOGUE[row[0].strip("`")].options, row
    assert "not in the catalogue yet" not in text
