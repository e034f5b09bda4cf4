"""The seams stay single and typed (issue 10):

- built-in rule ids are spelt only in policy/rule_ids.py: no other module of the project holds
  one of them as a string literal (docstrings and comments aside);
- the adapter seam (adapters/base.py, the shared session and listener code, each protocol's
  session and listener) and gateway/server.py / gateway/pipeline.py use no `Any`, `getattr` or
  `hasattr`;
- adapters never build a `Decision` (the pipeline decides) and never spell out an audit
  envelope (`time=`, `gateway=`, `connection_id=` keywords on an event).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sqlward.audit import events
from sqlward.policy import rule_ids

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "adapters", "policy", "audit", "masking")
EVENTS = {name for name, value in vars(events).items() if isinstance(value, type) and issubclass(value, events._Event)}
SEAM = [
    "adapters/base.py", "adapters/session_common.py", "adapters/listener_common.py",
    "adapters/postgres/session.py", "adapters/postgres/listener.py",
    "adapters/mysql/session.py", "adapters/mysql/listener.py",
    "gateway/server.py", "gateway/pipeline.py",
]


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_built_in_rule_ids_are_spelt_in_one_module() -> None:
    offenders = []
    for path in _modules():
        rel = path.relative_to(REPO).as_posix()
        if rel == "policy/rule_ids.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if node.value in rule_ids.ALL:
                    offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert offenders == [], "use sqlward.policy.rule_ids:\n" + "\n".join(offenders)


@pytest.mark.parametrize("rel", SEAM)
def test_no_untyped_seams(rel: str) -> None:
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("Any", "getattr", "hasattr"):
            found.append(f"{rel}:{node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr == "Any":
            found.append(f"{rel}:{node.lineno}: .Any")
    assert found == []


@pytest.mark.parametrize("rel", [p for p in SEAM if p.startswith("adapters/")])
def test_adapters_neither_decide_nor_stamp_envelopes(rel: str) -> None:
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name == "Decision":
                found.append(f"{rel}:{node.lineno}: Decision(...)")
            if name in EVENTS and {"time", "gateway", "connection_id"} & {k.arg for k in node.keywords if k.arg}:
                found.append(f"{rel}:{node.lineno}: {name}(time=/gateway=/connection_id=)")
    assert found == []
