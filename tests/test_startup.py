"""Start-up imports only what the command needs, when it needs it (issue #20, part 1).

Each check is a fresh interpreter: ``hpo --help`` and ``hpo validate`` load none of the heavy libraries, and
``hpo run`` has not loaded the report's plotting libraries or Ray by its first trial's first epoch (they
come later, for the report, or for ``executor: ray`` only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "mlflow", "optuna", "sklearn", "pandas", "matplotlib", "plotly", "ray", "sqlalchemy")
LATER = ("matplotlib", "plotly", "ray", "selenium", "kaleido")

# the modules loaded at a command's end, or at ``hpo run``'s first epoch (then the process ends there)
PROBE = """\
import json, os, sys
import hpo.epochs

def loaded():
    return sorted({m.split(".")[0] for m in sys.modules})

def first(*args, **kwargs):
    print("LOADED " + json.dumps(loaded()), flush=True)
    os._exit(0)

hpo.epochs.EpochSink.epoch = first
from hpo.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED " + json.dumps(loaded()), flush=True)
"""

SPEC = """\
name: startup
data: {dataset: digits}
model: mlp
search: {sampler: random, n_trials: 1, seed: 0}
cv: {folds: 2}
params: {lr: 0.01, width: 16, epochs: 2}
"""


def _loaded(tmp_path, *args: str) -> set[str]:
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    return set(json.loads(line[len("LOADED "):]))


def test_help_and_validate_load_no_heavy_library(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert not _loaded(tmp_path, "--help") & set(HEAVY)
    # validate checks the spec (pydantic, yaml) without the ML stack
    assert not _loaded(tmp_path, "validate", "spec.yaml") & set(HEAVY)


@pytest.mark.slow
def test_run_reaches_its_first_epoch_without_the_report_or_ray(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    loaded = _loaded(tmp_path, "run", "spec.yaml")
    assert {"torch", "optuna", "mlflow"} <= loaded  # the probe did reach the first epoch of a tracked study
    assert not loaded & set(LATER), sorted(loaded & set(LATER))
