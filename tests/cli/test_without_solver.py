"""The agent, the update publisher and `kubectl ekko` run without OR-Tools, pandas and matplotlib
(the `solver` and `plot` extras); the operator and `ekko plan` say which extra they need.

Each command runs in a child Python whose path starts with stand-ins for those packages that
raise ImportError on import, as a missing package does, so the test sees every import the
command makes, however deep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("ortools", "pandas", "matplotlib", "highspy")


@pytest.fixture(scope="module")
def without_heavy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    shadow = tmp_path_factory.mktemp("shadow")
    for name in HEAVY:
        (shadow / name).mkdir()
        (shadow / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed (test stand-in)')\n"
        )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(REPO)])}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("-m", "ekko.cli.kubectl_ekko", "--help"),
        ("-m", "ekko.cli.kubectl_ekko", "version"),
        ("-m", "ekko.cli.main", "agent", "--help"),
        ("-m", "ekko.cli.main", "publish", "--help"),
        ("-m", "ekko.cli.main", "crds", "--help"),
    ],
    ids=["kubectl-ekko", "kubectl-ekko-version", "agent", "publish", "crds"],
)
def test_runs_without_the_solver_and_plot_packages(
    without_heavy: dict[str, str], args: tuple[str, ...]
) -> None:
    done = _run(without_heavy, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_the_stand_ins_do_block_the_heavy_packages(without_heavy: dict[str, str]) -> None:
    done = _run(without_heavy, "-c", "import ortools")
    assert done.returncode != 0 and "not installed (test stand-in)" in done.stderr


@pytest.mark.parametrize("command", ["operator", "plan"])
def test_the_solver_commands_name_the_extra_they_need(
    without_heavy: dict[str, str], command: str
) -> None:
    done = _run(without_heavy, "-m", "ekko.cli.main", command, "-f", "x.yaml")
    assert done.returncode == 2
    assert "pip install 'ekko[solver]'" in done.stderr and "Traceback" not in done.stderr
