"""The whole MLflow layout of a study, asserted in one place: README "What MLflow records" as a contract.

:func:`assert_layout` reads a study back through an :class:`mlflow.MlflowClient` and its Optuna
storage, and checks every run, param, metric, tag, curve and artifact the study left against the
Optuna trials (the record of what was run) and the spec. The names are spelled out here on purpose,
not imported from ``hpo``: the layout must stay the same whatever the code behind it becomes.

Tests call it after ``hpo.run`` (with its :class:`hpo.StudyResult`) or after ``hpo run`` on the
command line (``result=None``: the expectations then come from the Optuna storage alone), and keep
their own assertions for what is particular to them, reading the :class:`Layout` it returns.
This module is not a test module, so pytest does not rewrite its asserts: every one says what differs.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# hpo.state -> the status its run ends with
RUN_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
SETTINGS = ("dataset", "model", "sampler", "n_trials", "seed", "metric", "direction", "pruner", "folds",
            "test_size", "executor", "max_concurrent_trials")
PARENT_ARTIFACTS = {"spec", "trials.csv", "checkpoint", "report", "pareto_front.csv", "logs"}  # the parent run's root
MAX_RUN_NAME = 250  # a child run's name is cut there


@dataclass
class Layout:
    """What :func:`assert_layout` read: the parent run, the child runs by trial number, the Optuna trials."""

    experiment_id: str
    parent: Any  # mlflow Run
    children: dict[int, Any]  # trial number -> mlflow Run
    trials: list[Any]  # optuna FrozenTrial, by number
    study: Any  # optuna Study

    def state(self, number: int) -> str:
        """The ``hpo.state`` tag of trial ``number``'s run."""
        return self.children[number].data.tags["hpo.state"]


def optuna_storage(spec: Any) -> str:
    """Where the README puts a study's Optuna storage: ``tracking.storage``, else ``optuna.db`` beside a
    sqlite ``mlflow.db``, else ``sqlite:///mlruns/optuna.db`` (relative to the working directory)."""
    if spec.tracking.storage:
        return spec.tracking.storage
    uri = spec.tracking.uri
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return "sqlite:///mlruns/optuna.db"


def assert_layout(client: Any, result: Any, spec: Any, *, status: str | None = None, resumed: bool = False,
                  storage: str | None = None) -> Layout:
    """Assert the whole MLflow layout of the study of ``spec`` (an :class:`hpo.spec.Spec` carrying the
    tracking URI it ran with) on ``client``'s store; returns what it read. ``client`` needs its
    ``registry_uri`` set to the same store: without it MLflow falls back to a process-wide registry
    URI that another test in the same worker may have left elsewhere.

    ``result``: the :class:`hpo.StudyResult` ``hpo.run`` returned, or ``None`` after a CLI run.
    ``status``: the parent run's expected status (default KILLED for an interrupted result, else
    FINISHED); only a FINISHED study is checked for its refit (best, test, model, report).
    ``resumed``: the parent run was re-used by ``--resume``, so what MLflow never overwrites may date
    from an earlier refit (``best_*`` params, the stored spec, earlier model versions).
    ``storage``: Optuna's storage URL when it is not where :func:`optuna_storage` says.
    Raises AssertionError naming the first thing that differs.
    """
    import optuna

    if status is None:
        status = "KILLED" if result is not None and result.interrupted else "FINISHED"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=spec.name, storage=storage or optuna_storage(spec))
    trials = sorted(study.get_trials(), key=lambda t: t.number)

    exp = client.get_experiment_by_name(spec.experiment)
    assert exp is not None and exp.lifecycle_stage == "active", f"no active experiment {spec.experiment!r}"
    runs = _all_runs(client, exp.experiment_id)
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study" and r.data.tags.get("hpo.study") == spec.name]
    assert len(parents) == 1, f"{len(parents)} parent runs of study {spec.name!r} (tags hpo.study, hpo.role=study)"
    parent = parents[0]
    pid = parent.info.run_id
    mine = [r for r in runs if r.data.tags.get("hpo.study") == spec.name or r.data.tags.get("mlflow.parentRunId") == pid]
    running = [r.info.run_name for r in mine if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    by_number: dict[int, Any] = {}
    for r in mine:
        if r.info.run_id == pid:
            continue
        tags = r.data.tags
        want = {"hpo.role": "trial", "mlflow.parentRunId": pid, "hpo.study": spec.name}
        _same({k: tags.get(k) for k in want}, want, f"tags of run {r.info.run_name!r}")
        n = int(tags["hpo.trial"])
        assert n not in by_number, f"two child runs of trial {n}"
        by_number[n] = r

    if result is not None:
        _same((result.parent_run_id, result.experiment_id), (pid, exp.experiment_id), "result's parent run, experiment")
        _same(result.interrupted, status == "KILLED", "result.interrupted")
    layout = Layout(exp.experiment_id, parent, by_number, trials, study)
    _assert_parent(client, layout, result, spec, status, resumed)
    _assert_children(client, layout, spec)
    return layout


def _same(got: Any, want: Any, what: str) -> None:
    assert got == want, f"{what}: got {got!r}, expected {want!r}"


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _files(client: Any, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run (empty folders do not count)."""
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _files(client, run_id, a.path) if a.is_dir else {a.path}
    return out


# ---------------------------------------------------------------------------------------------- Optuna's record


def _interrupted(t: Any) -> bool:
    return bool(t.user_attrs.get("hpo.interrupted"))


def _expected_state(t: Any) -> str:
    """The ``hpo.state`` a trial's run must carry, from its Optuna state."""
    import optuna

    states = optuna.trial.TrialState
    assert t.state in (states.COMPLETE, states.PRUNED, states.FAIL), f"trial {t.number} is {t.state.name} in Optuna"
    if t.state == states.FAIL:
        return "killed" if _interrupted(t) else "failed"
    return "complete" if t.state == states.COMPLETE else "pruned"


def _counts(trials: list[Any]) -> dict[str, int]:
    states = [_expected_state(t) for t in trials]
    return {k: states.count(k) for k in ("complete", "pruned", "failed")}


def _v(t: Any) -> float | None:
    """A trial's value (its first objective's, in a multi-objective study)."""
    return t.values[0] if t.values else None


def _complete(trials: list[Any]) -> list[Any]:
    return [t for t in trials if _expected_state(t) == "complete" and _v(t) is not None and math.isfinite(_v(t))]


def _feasible(trials: list[Any]) -> list[Any]:
    """Complete trials that meet search.constraints (all of them without constraints)."""
    return [t for t in _complete(trials) if t.user_attrs.get("hpo.feasible") is not False]


def _best(trials: list[Any], spec: Any) -> Any:
    """The best feasible trial on the first objective (the one the ``best`` tag follows); ties: lower number."""
    sign = -1.0 if spec.direction == "maximize" else 1.0
    return min(_feasible(trials), key=lambda t: (sign * _v(t), t.number))


def _top_k(trials: list[Any], spec: Any) -> set[int]:
    """The trials that keep ``checkpoint/trial.pt``: the ``keep_checkpoints`` best complete ones (ties: lower number)."""
    sign = -1.0 if spec.direction == "maximize" else 1.0
    ranked = sorted(_feasible(trials), key=lambda t: (sign * _v(t), t.number))
    return {t.number for t in ranked[: spec.tracking.keep_checkpoints]}


# ---------------------------------------------------------------------------------------------- the parent run


def _assert_parent(client: Any, layout: Layout, result: Any, spec: Any, status: str, resumed: bool) -> None:
    import mlflow
    import optuna
    import torch

    import hpo
    from hpo.redact import redact

    parent = layout.parent
    pid, data = parent.info.run_id, parent.data
    _same(parent.info.status, status, "parent run status")
    _same(parent.info.run_name, spec.name, "parent run name")
    if status == "FAILED":
        assert data.tags.get("hpo.reason"), "a FAILED study says why in hpo.reason"

    settings = {"dataset": spec.data.label, "model": spec.model, "sampler": spec.search.sampler,
                "n_trials": spec.n_trials, "seed": spec.search.seed, "metric": spec.metric,
                "direction": spec.direction, "pruner": spec.search.pruner, "folds": spec.cv.folds,
                "test_size": spec.data.test_size, "executor": spec.execution.executor,
                "max_concurrent_trials": spec.execution.max_concurrent_trials}
    _same({k: data.params.get(k) for k in SETTINGS}, {k: str(v) for k, v in settings.items()}, "settings params")
    options = {k: data.params[k] for k in data.params if k.startswith("sampler.")}
    _same(options, {f"sampler.{k}": str(v) for k, v in spec.search.sampler_options.items()}, "sampler.* params")
    extra = sorted(k for k in data.params if k not in SETTINGS and not k.startswith(("best_", "sampler.")))
    _same(extra, [], "other params on the parent run")
    lineage = {"hpo.spec_hash": spec.spec_hash, "hpo.seed": str(spec.search.seed), "hpo.version": hpo.__version__,
               "torch.version": torch.__version__, "optuna.version": optuna.__version__,
               "mlflow.version": mlflow.__version__}
    _same({k: data.tags.get(k) for k in lineage}, lineage, "lineage tags")
    _same("hpo.code_hash" in data.tags, spec.is_factory_model, "hpo.code_hash present (iff the model is a factory)")
    _same("hpo.data_code_hash" in data.tags, bool(spec.data.factory), "hpo.data_code_hash present (iff a data factory)")
    if "hpo.git_commit" in data.tags:
        _same(data.tags["hpo.git_commit"], data.tags.get("mlflow.source.git.commit"), "hpo.git_commit")

    files = _files(client, pid)
    roots = {f.split("/", 1)[0] for f in files}
    assert roots <= PARENT_ARTIFACTS, f"parent artifacts {sorted(files)}: only {sorted(PARENT_ARTIFACTS)} belong there"
    _same(sorted(f for f in files if f.startswith("logs/")), ["logs/study.log"] if spec.tracking.log_max_kb else [],
          "the driver's log on the parent run")
    if spec.source:
        stored = f"spec/{Path(spec.path or 'spec.yaml').name}"
        assert stored in files, f"{stored} missing from the parent run: {sorted(files)}"
        if not resumed:
            with tempfile.TemporaryDirectory(prefix="hpo-layout-") as tmp:
                text = Path(client.download_artifacts(pid, stored, tmp)).read_text()
            assert text == redact(spec.source), f"{stored} is not the spec the study ran"

    if status != "FINISHED":
        return  # stopped or failed before (or during) the refit: what is there is not all there
    assert data.tags.get("hpo.stop_reason", "").split(":")[0] in ("budget", "target", "plateau", "timeout",
                                                                  "failures"), "hpo.stop_reason on a finished study"
    assert "trials.csv" in files, f"trials.csv missing from a finished study: {sorted(files)}"
    _same("pareto_front.csv" in files, spec.is_multi, "pareto_front.csv (iff several objectives)")
    _same("hpo.select" in data.tags, spec.is_multi, "hpo.select (iff several objectives)")
    if not _complete(layout.trials):  # finished with nothing to refit: no best, no model
        _same(sorted(k for k in data.params if k.startswith("best_")), [], "best_* params with no complete trial")
        assert "checkpoint/best.pt" not in files and "hpo.model_uri" not in data.tags, "a refit with no complete trial"
        return
    _assert_refit(client, layout, result, spec, files, resumed)


def _assert_refit(client: Any, layout: Layout, result: Any, spec: Any, files: set[str], resumed: bool) -> None:
    """The best trial, refit and tested, its checkpoint, logged and registered model, the counts, the report."""
    from hpo.metrics import METRICS

    pid, data = layout.parent.info.run_id, layout.parent.data
    from hpo.selection import chosen

    best = chosen(layout.study, spec)[0]
    m = spec.metric
    task_metrics = [k for k, info in METRICS.items() if info.task == spec.task]
    counts = _counts(layout.trials)
    if result is not None:
        _same(result.counts, counts, "result.counts (Optuna's trials)")
        _same((result.best_number, result.best_params), (best.number, best.params), "result's best trial")
        _same(sorted(result.test_metrics), sorted(task_metrics), "result.test_metrics")

    metrics = {k: v for k, v in data.metrics.items() if not k.startswith(("importance_", "system/", "study/"))}
    want = {f"best_cv_{m}", "best_trial", "refit_epochs", *(f"test_{k}" for k in task_metrics),
            "n_complete", "n_pruned", "n_failed"}
    _same(sorted(metrics), sorted(want), "parent metrics")
    _same(metrics[f"best_cv_{m}"], pytest.approx(_v(best)), f"best_cv_{m}")
    _same((metrics["best_trial"], data.tags.get("hpo.best_trial")), (best.number, str(best.number)),
          "best_trial metric, hpo.best_trial tag")
    epochs = best.user_attrs.get("fold_best_epochs") or [best.params.get("epochs", 1)]
    _same(metrics["refit_epochs"], max(1, round(sum(epochs) / len(epochs))), "refit_epochs (mean best epoch)")
    for k in task_metrics:
        assert math.isfinite(metrics[f"test_{k}"]), f"test_{k} is {metrics[f'test_{k}']}"
        if result is not None:
            _same(metrics[f"test_{k}"], pytest.approx(result.test_metrics[k]), f"test_{k}")
    _same({k: metrics[f"n_{k}"] for k in counts}, counts, "n_complete / n_pruned / n_failed")

    want_best = {k: str(v) for k, v in best.params.items()}
    best_tags = {k[len("hpo.best."):]: v for k, v in data.tags.items() if k.startswith("hpo.best.")}
    best_params = {k[len("best_"):]: v for k, v in data.params.items() if k.startswith("best_")}
    if resumed:  # a later refit overwrites the tags but not the params (MLflow params are immutable)
        _same({k: best_tags.get(k) for k in want_best}, want_best, "hpo.best.* tags")
    else:
        _same(best_tags, want_best, "hpo.best.* tags")
        _same(best_params, want_best, "best_* params")

    _same(sorted(f for f in files if f.startswith("checkpoint/")), ["checkpoint/best.pt"], "parent checkpoint")
    model_uri = data.tags.get("hpo.model_uri")
    assert model_uri and model_uri.startswith("models:/"), f"hpo.model_uri is {model_uri!r}"
    if result is not None:
        _same(result.model_uri, model_uri, "result.model_uri")
    logged = client.get_logged_model(model_uri[len("models:/"):])
    _same((logged.source_run_id, logged.status.name), (pid, "READY"), "logged model's run, status")
    name = spec.registered_model
    versions = client.search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if v.run_id == pid and v.source == model_uri]
    assert mine, f"no version of registered model {name!r} from {model_uri}: {versions}"
    registered = data.tags.get("hpo.registered_model", "")
    assert registered.split(" ")[0] == f"models:/{name}/{mine[0].version}", f"hpo.registered_model is {registered!r}"
    if result is not None:
        _same(result.registered_model, registered, "result.registered_model")
    if spec.tracking.registered_model is None:  # a shared registered model holds other studies' versions too
        _same(sorted({v.run_id for v in versions}), [pid], "runs the registered versions come from")
    if not resumed:
        _same(len(mine), 1, "registered model versions of this study")

    reports = {f for f in files if f.startswith("report/")}
    importances = [k for k in data.metrics if k.startswith("importance_")]
    if spec.tracking.report:
        plot = "confusion_matrix" if spec.task == "classification" else "predicted_vs_true"
        for name in ("optimization_history", "intermediate_values", plot):
            assert {f"report/{name}.html", f"report/{name}.png"} <= reports, f"report/{name}.* missing: {sorted(reports)}"
        _same("report/importances.json" in reports, bool(importances), "report/importances.json (iff importance_*)")
    elif not resumed:
        _same((sorted(reports), importances), ([], []), "report files, importance_* with tracking.report false")


# ---------------------------------------------------------------------------------------------- the child runs


def _assert_children(client: Any, layout: Layout, spec: Any) -> None:
    from hpo import space

    run_trials = [t for t in layout.trials if t.user_attrs.get("mlflow.run_id")]
    for t in layout.trials:  # asked, then killed before its run was created: nothing to record
        assert t.user_attrs.get("mlflow.run_id") or _interrupted(t), f"trial {t.number} has no MLflow run"
    _same(sorted(layout.children), [t.number for t in run_trials], "trials with a child run")
    kept = _top_k(layout.trials, spec)
    for t in run_trials:
        run = layout.children[t.number]
        where = f"trial {t.number} ({run.info.run_name})"
        tags = run.data.tags
        attr = t.user_attrs["mlflow.run_id"]
        if not attr.startswith("pending-"):  # a placeholder: the run was created from the spool
            _same(attr, run.info.run_id, f"{where}: mlflow.run_id user attr")
        state = _expected_state(t)
        _same(tags.get("hpo.state"), state, f"{where}: hpo.state")
        _same(run.info.status, RUN_STATUS[state], f"{where}: status of a {state} trial")
        name = run.info.run_name
        assert name.startswith(f"trial-{t.number:03d}"), f"{where}: run name"
        if len(name) < MAX_RUN_NAME:
            assert all(f" {k}=" in name for k in t.params), f"{where}: run name without its sampled {list(t.params)}"
        want = {k: str(v)[:6000] for k, v in space.resolve(spec, t.params).items()}
        _same(run.data.params, want, f"{where}: params")
        if state in ("pruned", "failed"):
            assert tags.get("hpo.reason"), f"{where}: no hpo.reason on a {state} trial"
        elif state == "complete":
            assert "hpo.reason" not in tags, f"{where}: hpo.reason {tags['hpo.reason']!r} on a complete trial"
        _assert_trial_metrics(client, run, t, spec, state, int(want["epochs"]), where)
        files = _files(client, run.info.run_id)
        if state == "failed" and spec.tracking.log_max_kb:  # its log ends with why (the traceback)
            assert "logs/trial.log" in files, f"{where}: a failed trial without logs/trial.log"
        files.discard("logs/trial.log")  # what the trial printed or logged, when it did
        _same(files, {"checkpoint/trial.pt"} if t.number in kept else set(),
              f"{where}: artifacts (top {spec.tracking.keep_checkpoints} complete trials keep checkpoint/trial.pt)")

    tagged = [n for n, r in layout.children.items() if r.data.tags.get("best") == "true"]
    complete = _feasible(layout.trials)
    if not complete:
        _same(tagged, [], "trials tagged best with no feasible complete trial")
        return
    best = _best(layout.trials, spec)
    assert len(tagged) == 1, f"trials tagged best: {tagged}"
    # of equal values the first to finish has the tag
    by_number = {t.number: t for t in layout.trials}
    _same(_v(by_number[tagged[0]]), _v(best), f"value of trial {tagged[0]} (tagged best)")
    if sum(_v(t) == _v(best) for t in complete) == 1:
        _same(tagged, [best.number], "trial tagged best")
    if spec.is_multi:  # the pareto tag on exactly the feasible Pareto front, once the study refit
        from hpo.selection import front

        if layout.parent.info.status == "FINISHED":
            pareto = sorted(n for n, r in layout.children.items() if r.data.tags.get("pareto") == "true")
            _same(pareto, sorted(t.number for t in front(layout.study)), "trials tagged pareto")


def _assert_trial_metrics(client: Any, run: Any, t: Any, spec: Any, state: str, max_epochs: int, where: str) -> None:
    """Curves, CV results, duration and epochs of one trial's run against its Optuna record."""
    m, folds = spec.metric, spec.cv.folds
    metrics = run.data.metrics
    curves = [f"val_{m}", "train_loss", "val_loss", "sys/epoch_seconds", "sys/examples_per_second",
              *(f"fold{k}/{key}" for k in range(folds) for key in (f"val_{m}", "train_loss"))]
    ended = "duration_s" in t.user_attrs  # told by the study; a killed trial may have been closed without
    assert ended or state == "killed", f"{where}: a {state} trial the study never told"
    want: set[str] = set()
    if ended:
        want |= {"duration_s", "epochs_trained", "sys/cpu_seconds", "sys/peak_rss_mb"}
        want |= {k for k in metrics if k.startswith("sys/gpu_")}  # on CUDA (utilisation with NVML)
        assert metrics.get("sys/cpu_seconds", -1) >= 0 and metrics.get("sys/peak_rss_mb", 0) > 0, \
            f"{where}: sys/* totals {({k: v for k, v in metrics.items() if k.startswith('sys/')})}"
        _same(metrics.get("duration_s"), pytest.approx(t.user_attrs["duration_s"], abs=2e-3), f"{where}: duration_s")
    if "fold_values" in t.user_attrs:
        values, epochs = t.user_attrs["fold_values"], t.user_attrs["fold_best_epochs"]
        _same((len(values), len(epochs)), (folds, folds), f"{where}: folds with a best value")
        want |= {f"cv_{m}_mean", f"cv_{m}_std", *(f"fold{k}/best_{m}" for k in range(folds)),
                 *(f"fold{k}/best_epoch" for k in range(folds))}
        mean = _v(t) if state == "complete" else sum(values) / folds
        _same(metrics.get(f"cv_{m}_mean"), pytest.approx(mean), f"{where}: cv_{m}_mean")
        _same(metrics.get(f"cv_{m}_std"), pytest.approx(t.user_attrs["cv_std"]), f"{where}: cv_{m}_std")
        for k in range(folds):
            _same(metrics.get(f"fold{k}/best_{m}"), pytest.approx(values[k]), f"{where}: fold{k}/best_{m}")
            _same(metrics.get(f"fold{k}/best_epoch"), epochs[k], f"{where}: fold{k}/best_epoch")
    else:
        assert state != "complete", f"{where}: a complete trial without fold values"
    costs = t.user_attrs.get("hpo.costs", {})
    if state == "complete" and not spec.is_objective:  # hpo's cost metrics, on the run as metrics
        assert {"n_params", "train_seconds"} <= set(costs), f"{where}: cost metrics {sorted(costs)}"
        _same("inference_ms" in costs, "inference_ms" in spec.cost_metrics, f"{where}: inference_ms (iff asked)")
    want |= set(costs)
    for k, v in costs.items():
        _same(metrics.get(k), pytest.approx(v), f"{where}: {k}")
    reached = _curve_epochs(client, run.info.run_id, curves, where, once=run.data.tags.get("hpo.attempts", "1") == "1")
    if reached:
        want |= set(curves)
    _same(sorted(metrics), sorted(want), f"{where}: metrics")
    if ended:
        trained = int(metrics["epochs_trained"])
        assert trained <= max_epochs, f"{where}: epochs_trained {trained} > epochs {max_epochs}"
        # a failed trial may have stopped inside the epoch it reached (a NaN loss, say), which is not logged
        allowed = {trained, trained - 1} if state == "failed" else {trained}
        assert reached in allowed, f"{where}: curves reach epoch {reached}, epochs_trained is {trained}"


def _curve_epochs(client: Any, run_id: str, keys: list[str], where: str, once: bool) -> int:
    """The epochs every per-epoch curve of a run has, each checked to be exactly 1..N (each epoch once, unless
    a retried trial logged its first epochs again: ``once`` False); returns N."""
    found = set()
    for key in keys:
        steps = sorted(x.step for x in client.get_metric_history(run_id, key))
        n = len(set(steps))
        assert sorted(set(steps)) == list(range(1, n + 1)), f"{where}: {key} at steps {steps}, not 1..{n}"
        assert not once or len(steps) == n, f"{where}: {key} logs an epoch twice: {steps}"
        found.add(n)
    assert len(found) == 1, f"{where}: curves of different lengths {sorted(found)}"
    return found.pop()
