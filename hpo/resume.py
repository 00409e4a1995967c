"""What a study remembers about itself so that ``--resume`` continues the same study.

Three records live in the Optuna study's user attributes (plain JSON, no torch, no MLflow):

- :data:`KEY_ATTR` — the parts of the spec that decide what a trial's value means (metric,
  direction, seed, data, model, folds, the search space), written when the study is created
  and compared on every resume: a mismatch is refused, naming each changed key.
- :data:`REFIT_ATTR` — written once the best trial was refit, tested and its model logged:
  how many trials were finished then, the best trial, the model URI and the test metrics.
  A resume with no new trials to run does not refit again.
- :data:`REPORT_ATTR` — the number of finished trials the report was drawn for.
"""

from __future__ import annotations

import json
from typing import Any

from hpo.errors import SpecError
from hpo.spec import Choice, Fixed, Param, Range, Spec

KEY_ATTR = "hpo.resume_key"
REFIT_ATTR = "hpo.refit"
REPORT_ATTR = "hpo.reported"
CODE_KEY = "model.code_hash"  # SHA-256 of the model factory's source file, for a factory model
METRIC_ATTR = "hpo.metric"  # written by every version of hpo, so older studies are checked on the metric
PARENT_RUN_ATTR = "mlflow.parent_run_id"  # the study's MLflow parent run
REQUEUED_ATTR = "hpo.requeued"  # numbers of the interrupted trials already re-queued


def _param(p: Param) -> str:
    when = "".join(f" when {k} in {json.dumps(list(v))}" for k, v in p.when)
    if isinstance(p, Range):
        kind = "int" if p.is_int else "float"
        extra = " log" if p.log else (f" step {p.step:g}" if p.step is not None else "")
        return f"{kind} range [{p.low:g}, {p.high:g}]{extra}{when}"
    if isinstance(p, Choice):
        return f"choices {json.dumps(list(p.choices))}{when}"
    assert isinstance(p, Fixed)
    return f"fixed {json.dumps(p.value)}{when}"


def resume_key(spec: Spec) -> dict[str, str]:
    """The spec's keys that must not change while a study goes on, as ``key path -> readable value``.

    Not in it on purpose: the budget (``n_trials``, ``timeout``), the sampler and pruner,
    concurrency and execution, tracking settings — changing those on resume is normal.
    """
    d = spec.data
    key = {
        "search.metric": spec.metric, "search.direction": spec.direction, "search.seed": str(spec.search.seed),
        "model": spec.model, "cv.folds": str(spec.cv.folds), "data.dataset": d.dataset,
        "data.path": str(d.path), "data.target": str(d.target), "data.task": spec.task,
        "data.test_size": f"{d.test_size:g}",
    }
    key.update({f"params.{p.name}": _param(p) for p in spec.space})
    if d.factory:  # only when set, so studies recorded before these keys existed still resume
        key["data.factory"] = d.factory
        key["data.args"] = json.dumps(d.args, sort_keys=True, default=str)
    if not d.standardize:
        key["data.standardize"] = "false"
    if spec.is_factory_model or spec.is_objective:  # the code decides what a trial's value means as its params do
        key[CODE_KEY] = _training_code(spec)[0]
    if spec.is_objective:
        key["objective.metric"] = spec.metric
    if spec.is_multi:  # what each of a trial's values is
        key["search.objectives"] = ", ".join(f"{o.metric} ({o.direction})" for o in spec.objectives)
    if spec.constraints:  # what each trial's feasibility was decided by
        key["search.constraints"] = "; ".join(c.key for c in spec.constraints)
    return key


def _training_code(spec: Spec) -> tuple[str, str]:
    """``(source hash, source file)`` of the spec's model factory or objective function (imported when the
    spec was loaded)."""
    from hpo.usercode import load_target, source_file, source_hash

    _key, target, group = spec.user_code()[0]
    fn = load_target(target, spec_path=spec.path, group=group)
    return source_hash(fn) or "no source file", str(source_file(fn) or target)


def check_resume(spec: Spec, user_attrs: dict[str, Any], direction: str | None) -> None:
    """Raise :class:`SpecError` (exit 2) when ``spec`` no longer describes the stored study.

    ``user_attrs`` are the Optuna study's user attributes and ``direction`` its stored
    direction (``"maximize"``/``"minimize"``). Studies made before the key was recorded are
    checked on their metric and direction only.
    """
    recorded: dict[str, str] | None = user_attrs.get(KEY_ATTR)
    if recorded is None:
        recorded = {}
        if METRIC_ATTR in user_attrs:
            recorded["search.metric"] = user_attrs[METRIC_ATTR]
        if direction:
            recorded["search.direction"] = direction
        now = {k: v for k, v in resume_key(spec).items() if k in recorded}
    else:
        now = resume_key(spec)
    problems = []
    for k in sorted(set(recorded) | set(now), key=lambda k: (k.startswith("params."), k)):
        old, new = recorded.get(k), now.get(k)
        if old == new:
            continue
        was = "not set" if old is None else repr(old)
        is_ = "nothing (removed)" if new is None else repr(new)
        if k == CODE_KEY and old is not None and new is not None:
            what = "objective function" if spec.is_objective else "model factory"
            problems.append((k, f"the {what}'s source file {_training_code(spec)[1]} changed since the study started "
                                f"(its hash was {old}, it is now {new}): trials run with the new code would not "
                                "compare with the ones before"))
            continue
        problems.append((k, f"changed since the study started: it was started with {was}, the spec now says {is_}"))
    if problems:
        problems.append(("", f"--resume continues the study {spec.name!r} only with the spec it was started with "
                             "(the budget, sampler, pruner, execution and tracking keys may change); undo "
                             "these changes, or give the changed spec another name: to start a new study"))
        raise SpecError(problems, spec.path)


def finished_record(user_attrs: dict[str, Any], finished: int) -> dict[str, Any] | None:
    """The refit record when the study was refit after exactly ``finished`` finished trials, else None."""
    rec = user_attrs.get(REFIT_ATTR)
    if isinstance(rec, dict) and rec.get("finished") == finished:
        return rec
    return None
