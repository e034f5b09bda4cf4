"""Which build of sqlglot is in use: compiled by sqlglotc (mypyc) or pure Python.

Nothing has to be switched on. The `sqlglotc` distribution has no module of its own: its wheel
installs compiled extension modules *into the `sqlglot` package* (`sqlglot/parser.cpython-311-
x86_64-linux-gnu.so` next to `sqlglot/parser.py`, likewise the tokenizer core, the expressions,
the per-dialect parsers and generators, the optimizer rules, ...). Python's path finder tries
extension modules before source files in a directory, so a plain `import sqlglot` loads the
compiled modules whenever sqlglotc is installed and the `.py` files otherwise. sqlglotc is built
for exactly one sqlglot version (it requires `sqlglot==` that version; pyproject.toml pins both).

Without sqlglotc (a platform with no wheel, or it was left out), sqlglot runs as pure Python with
the same results, only slower. This module reports which build is loaded, for benchmarks, tests
and diagnostics; importing it never fails because of the build.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
from pathlib import PurePath
from types import ModuleType
from typing import Final

# The modules that carry the hot path of an analysis: the tokenizer core, the base parser, the
# dialects' parsers and the expression tree.
HOT_MODULES: Final = (
    "sqlglot.tokenizer_core",
    "sqlglot.parser",
    "sqlglot.parsers.postgres",
    "sqlglot.parsers.mysql",
    "sqlglot.expressions.core",
)


def is_extension_path(path: str | PurePath) -> bool:
    """True if `path` names a compiled extension module of this interpreter (`.so` / `.pyd`)."""
    return str(path).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def is_extension(module: ModuleType) -> bool:
    """True if `module` was loaded from a compiled extension, not from a `.py` file."""
    return is_extension_path(getattr(module, "__file__", None) or "")


def _hot_modules_compiled() -> bool:
    try:
        return all(is_extension(importlib.import_module(name)) for name in HOT_MODULES)
    except ImportError:  # an sqlglot without one of these modules is not a compiled build
        return False


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


SQLGLOT_VERSION: Final = _version("sqlglot")
SQLGLOTC_VERSION: Final = _version("sqlglotc")  # None when sqlglotc is not installed
COMPILED: Final[bool] = _hot_modules_compiled()
