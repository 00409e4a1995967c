"""Each trial's logs/trial.log (what it printed, logged and warned, ending with a failure's traceback) and the
driver's logs/study.log, read back from a real sqlite MLflow store; the user's code lives in tmp_path."""

from __future__ import annotations

import itertools
import logging
import os
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

import hpo
from hpo.trial_logs import TrialLog, capture

CODE = '''
import logging
import warnings

from torch import nn

log = logging.getLogger("usercode")


def fit_fold(params, fold, ctx):
    print(f"hello from fold {fold.index} with quality {params['quality']}")
    log.warning("fold %d logs a warning", fold.index)
    warnings.warn(f"a warning of fold {fold.index} at {params['quality']}", UserWarning)  # once per text and place
    if params["quality"] < 0.2:
        raise ValueError("this configuration cannot train")
    for epoch in (1, 2):
        ctx.report(epoch, {"score": params["quality"] + 0.01 * epoch})
    ctx.save(nn.Linear(4, 3))
    return {"score": params["quality"] + 0.02}
'''

_ids = itertools.count()


def _study(tmp_path: Path, concurrent: int, extra: str = "") -> Path:
    module = f"loud_{next(_ids)}_{os.getpid()}"  # a name no other test's module has in sys.modules
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / f"{module}.py").write_text(textwrap.dedent(CODE))
    (folder / "spec.yaml").write_text(textwrap.dedent(f"""
    name: loud
    data: {{dataset: iris}}
    objective: {{function: {module}:fit_fold, metric: score, direction: maximize}}
    search: {{sampler: grid, seed: 0}}
    cv: {{folds: 2}}
    execution: {{max_concurrent_trials: {concurrent}}}
    tracking: {{report: false{extra}}}
    params:
      quality: [0.9, 0.1, 0.5]
    """))
    return folder / "spec.yaml"


def _log(client: MlflowClient, run, tmp_path: Path) -> str | None:
    if not any(a.path == "logs" for a in client.list_artifacts(run.info.run_id)):
        return None
    return Path(client.download_artifacts(run.info.run_id, "logs/trial.log", str(tmp_path / run.info.run_id))).read_text()


@pytest.mark.parametrize("concurrent", [1, 2])
def test_each_trial_keeps_what_it_printed_logged_and_warned_and_a_failure_its_traceback(tmp_path, concurrent):
    spec = _study(tmp_path, concurrent)
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = hpo.run(spec, tracking_uri=store)
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([result.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        quality = run.data.params["quality"]
        text = _log(client, run, tmp_path)
        failed = run.data.tags["hpo.state"] == "failed"
        for k in (0,) if failed else (0, 1):  # its own folds' output, no other trial's (a failed fold 0 stops fold 1)
            assert f"hello from fold {k} with quality {quality}\n" in text
            assert f"WARNING usercode: fold {k} logs a warning" in text
            assert f"UserWarning: a warning of fold {k} at {quality}\n" in text
        others = {"0.9", "0.1", "0.5"} - {quality}
        assert not any(f"quality {q}" in text or f"at {q}" in text for q in others), text
        if run.data.tags["hpo.state"] == "failed":
            assert quality == "0.1"
            tail = text[text.rindex("trial failed in fold"):]
            assert tail.splitlines()[1] == "Traceback (most recent call last):"
            assert 'raise ValueError("this configuration cannot train")' in tail
            assert text.rstrip().endswith("ValueError: this configuration cannot train")
        else:
            assert run.data.tags["hpo.state"] == "complete" and "Traceback" not in text


def test_the_study_log_holds_the_drivers_warnings_and_no_trials_output(tmp_path):
    spec = _study(tmp_path, 1, extra=", notify: {url_env: HPO_UNSET_WEBHOOK_FOR_TESTS}")
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = hpo.run(spec, tracking_uri=store)
    client = MlflowClient(store)
    text = Path(client.download_artifacts(result.parent_run_id, "logs/study.log", str(tmp_path / "p"))).read_text()
    assert "WARNING hpo: tracking.notify: environment variable HPO_UNSET_WEBHOOK_FOR_TESTS is not set" in text
    # the trials' output is theirs (the refit, fold -1, runs on the driver and its output is the driver's)
    assert "hello from fold 0" not in text and "fold 0 logs a warning" not in text and "fold -1 logs" in text


def test_no_trial_logs_with_log_max_kb_0(tmp_path):
    spec = _study(tmp_path, 1, extra=", log_max_kb: 0")
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = hpo.run(spec, tracking_uri=store)
    client = MlflowClient(store)
    for run in client.search_runs([result.experiment_id]):
        assert not any(a.path == "logs" for a in client.list_artifacts(run.info.run_id))


def test_a_log_keeps_its_last_bytes_and_says_what_it_cut():
    log = TrialLog(100)
    for i in range(50):
        log.write(f"line {i:03d}\n")
    text = log.text()
    assert text.startswith("[... the first 351 characters are cut: the log keeps its last 100 ")
    assert text.endswith("line 049\n") and "line 039" in text and "line 038" not in text  # whole writes, at most 100
    with capture(1000) as captured:
        print("seen")
        logging.getLogger("somewhere").error("an error")
    print("not seen")
    assert captured.text() == "seen\n" + captured.text().split("seen\n", 1)[1]
    assert "ERROR somewhere: an error" in captured.text() and "not seen" not in captured.text()
