"""One namespace: the distribution installs `sqlward.*` and no generic top-level package.

- Every module of the project imports the project through `sqlward.` (an AST scan): a bare
  `import gateway` would load a second copy of a module beside `sqlward.gateway` when run from
  the repository root, and fail outside it.
- The wheel built from this tree holds only `sqlward/...` (and its dist-info), with the compiled
  row walk under `sqlward/adapters/postgres/` when a compiler is there.
- `pip install .` into a fresh virtual environment (its dependencies taken from this
  interpreter's site-packages, so no download is needed) gives an importable `sqlward.gateway`
  and a working `sqlward` command, from a directory outside the repository.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "adapters", "policy", "audit", "masking")


def _project_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.split()]


def test_no_module_imports_a_bare_top_level_name() -> None:
    offenders = []
    for path in _project_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in PACKAGES:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert offenders == [], "import through the sqlward namespace:\n" + "\n".join(offenders)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=600,
    )
    (found,) = out.glob("sqlward-*.whl")
    return found


def test_wheel_holds_only_the_sqlward_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"sqlward"}, tops
    for package in PACKAGES:
        assert f"sqlward/{package}/__init__.py" in names
    assert "sqlward/gateway/pipeline.py" in names or "sqlward/gateway/cli.py" in names
    if any(n.startswith("sqlward/adapters/postgres/_rowwalk") and n.endswith(".so") for n in names):
        return
    pytest.fail("the compiled row walk is missing from the wheel although this machine has a C compiler")


def test_pip_install_into_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # pip of this interpreter installs into the venv's site-packages (no download: --no-deps;
    # the dependencies come from the system site-packages the venv sees).
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    installed = sorted(p.name for p in Path(site).iterdir() if not p.name.endswith((".dist-info", "__pycache__")))
    for package in PACKAGES:
        assert package not in installed, installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    # From outside the repository: the venv's own site-packages comes before the system one
    # (whose editable install of this tree must not be the one that answers).
    probe = (
        "import sqlward.gateway, sqlward.gateway.cli, sqlward.adapters.postgres.session\n"
        "print(sqlward.gateway.__file__)\n"
        "import importlib.util\n"
        "print([m for m in %r if importlib.util.find_spec(m) is not None])\n"
    ) % (PACKAGES,)
    done = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith(site), first
    assert second == "[]", second
