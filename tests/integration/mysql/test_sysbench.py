"""sysbench oltp_point_select through the gateway, with server-side prepared statements off and on.

The table is prepared (and cleaned up) straight on MariaDB; the run goes through the gateway as
alice on target `app`. Success means: exit status 0, no errors or reconnects, and queries > 0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Iterator

import pytest

from tests.integration.mysql.conftest import IT_DB
from tests.support.mariadb import SYSTEM_HOST, SYSTEM_PORT

pytestmark = pytest.mark.skipif(shutil.which("sysbench") is None, reason="sysbench not installed (apt-get install sysbench)")

COMMON = ["oltp_point_select", "--tables=1", "--table-size=1000", "--db-driver=mysql"]


def _sysbench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sysbench", *COMMON, *args], capture_output=True, text=True, timeout=timeout)


def _direct_args() -> list[str]:
    return [f"--mysql-host={SYSTEM_HOST}", f"--mysql-port={SYSTEM_PORT}", "--mysql-user=root", f"--mysql-db={IT_DB}"]


@pytest.fixture(scope="module")
def sbtest(mysql_it_database: str) -> Iterator[None]:
    _sysbench(*_direct_args(), "cleanup")
    res = _sysbench(*_direct_args(), "prepare")
    assert res.returncode == 0, res.stdout + res.stderr
    yield
    _sysbench(*_direct_args(), "cleanup")


def _parse(out: str) -> dict[str, float]:
    def num(label: str) -> float:
        m = re.search(rf"^\s*{label}:\s+([\d.]+)", out, re.M)
        assert m, f"no {label!r} in sysbench output:\n{out}"
        return float(m.group(1))

    return {
        "queries": num("queries"),
        "errors": float(re.search(r"ignored errors:\s+(\d+)", out).group(1)),  # type: ignore[union-attr]
        "reconnects": float(re.search(r"reconnects:\s+(\d+)", out).group(1)),  # type: ignore[union-attr]
    }


@pytest.mark.parametrize("ps_mode", ["disable", "auto"])
def test_sysbench_point_select(my_via, sbtest, ps_mode: str):
    k = my_via.kw()
    args = [f"--mysql-host={k['host']}", f"--mysql-port={k['port']}", f"--mysql-user={k['user']}",
            f"--mysql-db={k['database']}", "--threads=2", "--time=3", f"--db-ps-mode={ps_mode}"]
    if k["password"]:
        args.append(f"--mysql-password={k['password']}")
    res = _sysbench(*args, "run")
    assert res.returncode == 0, res.stdout + res.stderr
    stats = _parse(res.stdout)
    assert stats["queries"] > 0 and stats["errors"] == 0 and stats["reconnects"] == 0, stats
