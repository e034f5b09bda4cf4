"""The container image, checked without a Docker engine: deploy/docker/Dockerfile parsed with
dockerfile-parse (two stages, a numeric non-root user, exec form only at run time, a health
check on the admin listener), the build context (.dockerignore), the image's example config
(check-config with its documented variables), and the dependency lock (every runtime dependency
pinned within its specifier; the lock and the project's wheel install with --no-deps into a
clean virtual environment that then runs check-config).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import IO

import pytest
from dockerfile_parse import DockerfileParser
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.support import DOCKER, ROOT, check_config, signing_key_pem

DOCKERFILE = DOCKER / "Dockerfile"
EXAMPLE = DOCKER / "sqlward.toml"
LOCK = DOCKER / "requirements.lock"
BUILD_REQUIREMENTS = DOCKER / "build-requirements.txt"

# The platform the image is built for (python:3.11-slim on x86_64), for evaluating markers.
IMAGE_PLATFORM = {
    "python_version": "3.11", "python_full_version": "3.11.9", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}


# --------------------------------------------------------------------------------------------
# The Dockerfile


def _stages() -> list[list[dict]]:
    """The Dockerfile's instructions (comments dropped), one list per stage (from its FROM)."""
    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    stages: list[list[dict]] = []
    for item in parser.structure:
        if item["instruction"] == "COMMENT":
            continue
        if item["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(item)
    return stages


def _args() -> dict[str, str]:
    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    out = {}
    for item in parser.structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG" and "=" in item["value"]:
            name, _, value = item["value"].partition("=")
            out[name.strip()] = value.strip()
    return out


def _one(stage: list[dict], instruction: str) -> dict:
    found = [i for i in stage if i["instruction"] == instruction]
    assert len(found) == 1, f"expected one {instruction} in the stage, found {len(found)}"
    return found[0]


def _exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on shell form."""
    try:
        argv = json.loads(value)
    except ValueError:
        pytest.fail(f"shell form where exec form is needed: {value!r}")
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), value
    return argv


def test_the_dockerfile_has_a_build_and_a_runtime_stage_on_python_311_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    args = _args()
    names = []
    for stage in stages:
        image, _, name = stage[0]["value"].partition(" AS ")
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
        assert image.startswith("python:3.11-slim"), image
        names.append(name.strip())
    assert names[0] == "build" and names[-1] == "runtime"
    # The runtime stage takes only the finished environment from the build stage.
    froms = {re.search(r"--from=(\S+)", i["value"]).group(1) for i in stages[-1] if i["instruction"] == "COPY" and "--from=" in i["value"]}
    assert froms == {"build"}


def test_the_build_stage_installs_the_lock_and_builds_the_compiled_wheel() -> None:
    build = _stages()[0]
    runs = " ".join(i["value"] for i in build if i["instruction"] == "RUN")
    copies = " ".join(i["value"] for i in build if i["instruction"] == "COPY")
    assert "deploy/docker/requirements.lock" in copies and "deploy/docker/build-requirements.txt" in copies
    assert re.search(r"install --no-deps --only-binary=:all:\s+-r deploy/docker/requirements.lock", runs)
    # The build backend is pinned and nothing else is fetched for the build.
    assert "pip install --no-deps --only-binary=:all: -r deploy/docker/build-requirements.txt" in runs
    assert "pip wheel --no-deps --no-build-isolation" in runs
    assert re.search(r"install --no-deps /tmp/wheels/sqlward-\*\.whl", runs)
    # The build fails unless the Cython extension compiled and sqlglotc is in use.
    assert "from sqlward.adapters.postgres import _rowwalk" in runs and "assert COMPILED" in runs
    assert "gcc" in runs  # python:3.11-slim has no compiler
    # Everything the wheel is built from is copied.
    for path in ("pyproject.toml", "README.md", "adapters/", "audit/", "gateway/", "masking/", "policy/"):
        assert path in copies, path


def test_the_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    runtime = _stages()[-1]
    user = _one(runtime, "USER")["value"].strip()
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user!r} is not numeric (runAsNonRoot needs a number)"
    uid, _, gid = user.partition(":")
    assert int(uid) != 0 and (not gid or int(gid) != 0)
    # The user exists in the copied /etc/passwd (libpq and others look it up).
    build_runs = " ".join(i["value"] for i in _stages()[0] if i["instruction"] == "RUN")
    assert f"--uid {uid}" in build_runs
    # USER comes before ENTRYPOINT / CMD / HEALTHCHECK.
    order = [i["instruction"] for i in runtime]
    assert order.index("USER") < min(order.index(x) for x in ("ENTRYPOINT", "CMD", "HEALTHCHECK"))


def test_the_runtime_stage_needs_no_shell() -> None:
    runtime = _stages()[-1]
    for name in ("ENTRYPOINT", "CMD"):
        _exec_form(_one(runtime, name)["value"])
    assert not [i for i in runtime if i["instruction"] == "SHELL"]
    # Any RUN in the runtime stage would be shell form unless it is a JSON array; there is none.
    for item in runtime:
        if item["instruction"] == "RUN":
            _exec_form(item["value"])
    entry = _exec_form(_one(runtime, "ENTRYPOINT")["value"])
    cmd = _exec_form(_one(runtime, "CMD")["value"])
    assert entry == ["python", "-m", "sqlward.gateway"]
    assert cmd == ["serve", "--config", "/etc/sqlward/sqlward.toml"]


def test_the_health_check_asks_the_admin_listener_in_exec_form() -> None:
    runtime = _stages()[-1]
    value = _one(runtime, "HEALTHCHECK")["value"]
    options, sep, command = value.partition("CMD ")
    assert sep, value
    assert "--interval=" in options and "--timeout=" in options
    argv = _exec_form(command.strip())
    assert argv[:4] == ["python", "-m", "sqlward.gateway", "healthcheck"]
    url = argv[argv.index("--url") + 1]
    config = tomllib.loads(EXAMPLE.read_text())
    port = config["admin"]["listen"].rpartition(":")[2]
    assert url == f"http://127.0.0.1:{port}/readyz"
    assert port in _one(runtime, "EXPOSE")["value"].split()


def test_the_runtime_stage_is_made_for_a_read_only_root_file_system() -> None:
    runtime = _stages()[-1]
    env = " ".join(i["value"] for i in runtime if i["instruction"] == "ENV")
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)
    assert re.search(r"\bPATH=/opt/sqlward/bin:", env)  # "python" is the environment's
    volumes = json.loads(_one(runtime, "VOLUME")["value"])
    assert volumes == ["/var/lib/sqlward"]
    # Bytecode is compiled at build time, so nothing is written beside the modules at run time.
    assert "compileall" in " ".join(i["value"] for i in _stages()[0] if i["instruction"] == "RUN")
    # Everything the example config makes the gateway write is on the volume.
    config = tomllib.loads(EXAMPLE.read_text())
    assert config["audit"]["file"].startswith("/var/lib/sqlward/")
    assert config["approvals"]["store"].startswith("/var/lib/sqlward/")
    assert "signing_key_file" not in config["audit"]  # made at first start next to the audit file


# --------------------------------------------------------------------------------------------
# The build context


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, as Docker reads them (filepath.Match with **)."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negated, re.compile(regex)))
    return out


def _in_context(path: str) -> bool:
    """Whether the build context holds `path`: the last pattern matching it or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in _dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            included = negated
    return included


def test_the_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sources: list[str] = []
    for stage in _stages():
        for item in stage:
            if item["instruction"] == "COPY" and "--from=" not in item["value"]:
                sources.extend(a for a in item["value"].split()[:-1] if not a.startswith("--"))
    assert sources
    for source in sources:
        source = source.rstrip("/")
        assert (ROOT / source).exists(), source
        files = [f for f in tracked if f == source or f.startswith(source + "/")] or [source]
        left_out = [f for f in files if not _in_context(f)]
        assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:5]}"
    for path in (".git/config", "tests/unit/test_config.py", "bench/pg_compare.py", "docs/deployment.md",
                 "deploy/examples/dev.toml", "deploy/k8s/base/sidecar/sqlward.toml", "scripts/setup",
                 "gateway/__pycache__/cli.cpython-311.pyc", "adapters/postgres/_rowwalk.c",
                 "adapters/postgres/_rowwalk.cpython-311-x86_64-linux-gnu.so", "sqlward.egg-info/PKG-INFO",
                 "audit.jsonl", "deploy/examples/audit-signing-key.pem", "gateway/approvals.sqlite3"):
        assert not _in_context(path), f"{path} would be sent to the Docker daemon"


# --------------------------------------------------------------------------------------------
# The example config


def _documented_variables() -> set[str]:
    header = EXAMPLE.read_text().split("\n[", 1)[0]
    return set(re.findall(r"^#\s{2,}(SQLWARD_[A-Z0-9_]+)\s", header, re.M))


def _example_env() -> dict[str, str]:
    return {
        "SQLWARD_GATEWAY_NAME": "gw-1",
        "SQLWARD_ENVIRONMENT": "production",
        "SQLWARD_UPSTREAM_DSN": "postgresql://app@db.example.com:5432/app?sslmode=require",
        "SQLWARD_UPSTREAM_PASSWORD": "upstream-password",
        "SQLWARD_APP_SECRET": "app-secret",
    }


def test_the_example_config_documents_each_variable_it_uses() -> None:
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", EXAMPLE.read_text().split("\n[", 1)[1]))
    assert used == _documented_variables() == set(_example_env())


def test_the_example_config_passes_check_config_with_its_variables() -> None:
    done = check_config(EXAMPLE, _example_env())
    assert done.returncode == 0, done.stderr
    assert "ok (1 listeners, 1 targets, 1 identities" in done.stdout
    missing = check_config(EXAMPLE, {})
    assert missing.returncode == 2
    assert {f"environment variable {name} is not set" in missing.stderr for name in _example_env()} == {True}


# --------------------------------------------------------------------------------------------
# The dependency lock


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert m, f"not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = m.group(2)
    return pins


def _runtime_requirements() -> list[Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if r.marker is None or r.marker.evaluate(IMAGE_PLATFORM)]


def test_the_lock_says_how_it_is_made() -> None:
    header = LOCK.read_text().split("\n\n", 1)[0]
    assert "python deploy/docker/lock.py > deploy/docker/requirements.lock" in LOCK.read_text()
    assert "3.11" in header and "x86_64" in header


def test_every_runtime_dependency_is_pinned_within_its_specifier() -> None:
    pins = _lock()
    for req in _runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"
        for extra in req.extras:  # psycopg[binary] brings psycopg-binary
            from importlib.metadata import requires

            for line in requires(req.name) or ():
                sub = Requirement(line)
                if sub.marker is not None and sub.marker.evaluate(IMAGE_PLATFORM | {"extra": extra}) and not sub.marker.evaluate(IMAGE_PLATFORM):
                    assert canonicalize_name(sub.name) in pins, f"{req.name}[{extra}] needs {sub.name}, not in the lock"
    # Build tools are not runtime dependencies.
    assert not {"setuptools", "cython", "pip", "wheel"} & set(pins)


def test_the_build_requirements_satisfy_the_build_system() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = dict(line.split("==") for line in BUILD_REQUIREMENTS.read_text().splitlines() if line and not line.startswith("#"))
    pins = {canonicalize_name(k): v for k, v in pins.items()}
    for req in map(Requirement, requires):
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), req


def _project_sources(dest: Path) -> Path:
    """A copy of what the Dockerfile copies into its build stage (the checkout is shared: the
    wheel is not built in it)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "_rowwalk.c", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("adapters", "audit", "gateway", "masking", "policy"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


class _Jobs:
    """Commands run as steps, timed, some at the same time; each one's output goes to a file
    (not a pipe: two at once never wait on a reader). `close` kills what is still running."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._running: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], IO[str], float]:
        log = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        self._running.append(proc)
        return proc, log, time.monotonic()

    def finish(self, step: str, job: tuple[subprocess.Popen[str], IO[str], float]) -> str:
        proc, log, began = job
        proc.wait(timeout=300)
        self.timings[step] = time.monotonic() - began
        log.seek(0)
        out = log.read()
        log.close()
        assert proc.returncode == 0, f"{step} failed:\n{out[-4000:]}"
        return out

    def run(self, step: str, argv: list[str]) -> str:
        return self.finish(step, self.start(argv))

    def close(self) -> None:
        for proc in self._running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_lock_and_the_wheel_install_into_a_clean_virtual_environment(tmp_path: Path) -> None:
    """As the Dockerfile does: the lock with --no-deps (wheels only) into a clean environment;
    the project's wheel built (with its Cython extension) without build isolation by the pinned
    backend of build-requirements.txt, in a build environment of its own, and installed with
    --no-deps; then nothing is missing (pip check), the extension and sqlglotc are in use, and
    the environment runs check-config on the example config. Needs PyPI (or pip's cache). The
    lock's install and the wheel's build are independent and run at the same time."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    venv, build = tmp_path / "venv", tmp_path / "build"
    python, build_python = str(venv / "bin" / "python"), str(build / "bin" / "python")
    (tmp_path / "src").mkdir()
    src = _project_sources(tmp_path / "src")
    jobs = _Jobs()
    try:
        jobs.run("venvs", [sys.executable, "-c", "import sys, venv; [venv.create(d, with_pip=False) for d in sys.argv[1:]]",
                           str(venv), str(build)])
        lock = jobs.start(pip + ["--python", python, "install", "--no-deps", "--only-binary=:all:", "-r", str(LOCK)])
        jobs.run("build backend", pip + ["--python", build_python, "install", "--no-deps", "--only-binary=:all:", "-r",
                                         str(BUILD_REQUIREMENTS)])
        jobs.run("wheel", pip + ["--python", build_python, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                                 str(tmp_path / "wheels"), str(src)])
        jobs.finish("lock (meanwhile)", lock)
        wheels = list((tmp_path / "wheels").glob("sqlward-*.whl"))
        assert len(wheels) == 1 and "-cp311-" in wheels[0].name, wheels  # a platform wheel: the extension is in it
        # The pinned build backend made it: setuptools names itself in WHEEL, Cython in the
        # extension's shared-type module name (_cython_3_3_2).
        pins = dict(line.split("==") for line in BUILD_REQUIREMENTS.read_text().splitlines() if "==" in line)
        with zipfile.ZipFile(wheels[0]) as whl:
            assert f"Generator: setuptools ({pins['setuptools']})" in whl.read("sqlward-0.1.0.dist-info/WHEEL").decode()
            [ext] = [n for n in whl.namelist() if re.fullmatch(r"sqlward/adapters/postgres/_rowwalk\..*\.so", n)]
            assert f"_cython_{pins['Cython'].replace('.', '_')}".encode() in whl.read(ext)
        jobs.run("project", pip + ["--python", python, "install", "--no-deps", str(wheels[0])])
        jobs.run("pip check", pip + ["--python", python, "check"])
        jobs.run("compiled", [python, "-c", "from sqlward.adapters.postgres import _rowwalk; "
                              "from sqlward.policy.sqlglot_build import COMPILED; assert COMPILED"])
        done = check_config(EXAMPLE, _example_env(), python=python)
        assert done.returncode == 0, done.stderr
        # Only the clean environment's packages were used.
        origin = jobs.run("origin", [python, "-c", "import sqlward.gateway, trio; print(sqlward.gateway.__file__); print(trio.__file__)"])
        assert all(line.startswith(str(venv)) for line in origin.split()), origin
    finally:
        jobs.close()
        print("clean venv install:", ", ".join(f"{k} {v:.1f} s" for k, v in jobs.timings.items()))
