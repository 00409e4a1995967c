"""Shared fixtures: a temporary MLflow/Optuna store and spec files written on the fly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A sqlite tracking URI in a fresh temporary folder (Optuna's db lands beside it)."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write YAML text (dedented) to ``tmp_path/NAME.yaml`` and return the path."""

    def _write(text: str, name: str = "spec") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m hpo ARGS`` as a user would; returns the completed process."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def pytest_collection_modifyitems(config, items):
    """Everything in test_benchmarks.py is a ``benchmark`` test (in the default run; ``-m "not benchmark"`` skips them)."""
    for item in items:
        if item.path.name == "test_benchmarks.py":
            item.add_marker(pytest.mark.benchmark)


@pytest.fixture
def as_user(tmp_path):
    """Runs ``python -m hpo ARGS`` as a process that file permissions bind: as root, with ``setpriv`` dropping
    the capabilities that override them (skipped where that cannot be done)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, which ignores file permissions, and no setpriv to drop CAP_DAC_OVERRIDE")
        prefix = [setpriv, "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search", "--"]
        locked = tmp_path / "probe"
        locked.mkdir(mode=0o555)
        probe = subprocess.run([*prefix, "test", "-w", str(locked)], capture_output=True, text=True)
        locked.rmdir()
        if probe.returncode != 1:  # 0: still writable for it; other codes: setpriv itself failed
            pytest.skip(f"cannot drop root's power over file permissions here (setpriv: {probe.stderr[:200]!r})")

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        return subprocess.run([*prefix, sys.executable, "-m", "hpo", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=300, env=env)

    return run
