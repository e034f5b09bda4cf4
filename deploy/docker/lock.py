"""Write deploy/docker/requirements.lock: exact pins of sqlward's runtime dependencies.

How it works: the requirements of pyproject.toml's [project.dependencies] are followed through
the *installed* distributions (importlib.metadata), with each requirement's environment marker
evaluated for the running interpreter and the extras asked for (psycopg[binary] brings
psycopg-binary), and every distribution reached is pinned to its installed version. So the lock
is what the development environment and CI run the tests with; run it from the interpreter the
image targets (CPython 3.11 on Linux x86_64), after `pip install -e '.[test]'`:

    python deploy/docker/lock.py > deploy/docker/requirements.lock

It refuses another interpreter, platform or architecture (the markers would be judged for the
wrong one), and a dependency that is not installed (run pip install first).
tests/deploy/test_image.py checks that every dependency of pyproject.toml is pinned in the lock
by a version its specifier admits, and that the lock installs with --no-deps into a clean
virtual environment where `pip check` finds nothing missing.
"""

from __future__ import annotations

import importlib.metadata as metadata
import platform
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
HEADER = """\
# Exact pins of sqlward's runtime dependencies ([project.dependencies] of pyproject.toml and
# everything they need), for CPython 3.11 on Linux x86_64 (the image's python:3.11-slim).
# Used by deploy/docker/Dockerfile: pip install --no-deps -r requirements.lock, then the
# project's own wheel with --no-deps, so the image holds exactly these versions.
#
# Generated from the installed environment (the versions the tests ran with), not by hand:
#     pip install -e '.[test]'
#     python deploy/docker/lock.py > deploy/docker/requirements.lock
# After changing [project.dependencies], upgrade (pip install -U ...) and regenerate; the
# tests in tests/deploy/test_image.py fail while a dependency is missing or pinned outside its
# specifier.
"""


def pins(dependencies: list[str]) -> dict[str, str]:
    """{canonical name: installed version} of the dependencies and their dependencies."""
    found: dict[str, str] = {}
    done: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[Requirement, tuple[str, ...]]] = [(Requirement(d), ()) for d in dependencies]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in parent_extras or ("",)):
            continue
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"lock.py: {req.name} is not installed (pip install -e '.[test]' first)") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"lock.py: installed {req.name} {dist.version} does not satisfy {req}")
        found[name] = dist.version
        todo.extend((Requirement(r), tuple(req.extras)) for r in dist.requires or ())
    return found


def main() -> int:
    where = (platform.python_implementation(), sys.version_info[:2], sys.platform, platform.machine())
    if where != ("CPython", (3, 11), "linux", "x86_64") and "--any-platform" not in sys.argv:
        print(f"lock.py: run me on CPython 3.11 / linux / x86_64 (this is {where}); --any-platform to insist", file=sys.stderr)
        return 2
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    sys.stdout.write(HEADER)
    for name, version in sorted(pins(project["dependencies"]).items()):
        sys.stdout.write(f"{name}=={version}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
