"""Optuna's side of a study: sampler, pruner and storage from the spec; the study opened (or
resumed) in its storage, interrupted trials re-queued, results told, trials counted.

No torch here: the Ray epoch-sink actor opens the study with these and should start fast.
"""

from __future__ import annotations

from typing import Any

from hpo import space
from hpo.resume import PARENT_RUN_ATTR, REQUEUED_ATTR
from hpo.spec import Spec
from hpo.trial import (
    COMPLETE,
    COSTS_ATTR,
    CV_STD_ATTR,
    DURATION_ATTR,
    FAILED,
    FOLD_EPOCHS_ATTR,
    FOLD_VALUES_ATTR,
    INTERRUPTED_ATTR,
    KILLED,
    PRUNED,
    REASON_ATTR,
    RESOURCES_ATTR,
    TrialResult,
)


def make_sampler(spec: Spec, concurrency: int):
    """The Optuna sampler of ``spec``: grid, random, TPE, GP, CMA-ES or QMC, with ``search.sampler_options``.

    Concurrent trials get different points: TPE's constant liar (on when trials run concurrently),
    GP's own treatment of running trials, CMA-ES's draws from its population, QMC's next points of
    the sequence. Seeded from ``search.seed``; a process that joins a study which already has trials
    (a resume, or a second process sharing the work) re-seeds from its first trial's number, so it
    draws new points instead of replaying the ones the stored trials already tried (:func:`_continuing`).
    """
    import warnings

    import optuna

    from hpo._spec_search import sampler_options

    seed, name = spec.search.seed, spec.search.sampler
    options = sampler_options(name, spec.search.sampler_options)
    if name == "grid":
        return _continuing(_grid_sampler_class())(space.grid(spec), seed=seed)
    if name == "random":
        return _continuing(optuna.samplers.RandomSampler)(seed=seed)
    startup = min(10, max(4, spec.n_trials // 3))  # short studies still get a model-guided phase
    with warnings.catch_warnings():  # multivariate, with_margin, ...: experimental in Optuna, offered by hpo
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "gp":
            options.setdefault("n_startup_trials", startup)
            return _continuing(optuna.samplers.GPSampler)(seed=seed, warn_independent_sampling=False, **options)
        if name == "cmaes":
            return _continuing(optuna.samplers.CmaEsSampler)(seed=seed, warn_independent_sampling=False, **options)
        if name == "nsga2":
            return _continuing(optuna.samplers.NSGAIISampler)(seed=seed, **options)
        if name == "qmc":  # its position in the sequence is kept in the study: nothing to re-seed
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False,
                                              warn_asynchronous_seeding=False, **options)
        options.setdefault("n_startup_trials", startup)
        if options.get("constant_liar") is None:
            options["constant_liar"] = concurrency > 1
        return _continuing(optuna.samplers.TPESampler)(seed=seed, **options)


def derived_seed(seed: int, number: int) -> int:
    """A seed for the draws that start at trial ``number`` of a study seeded with ``seed``."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _continuing(cls):
    """``cls`` whose random state, at the first trial this process asks for, is re-seeded from that
    trial's number when the study already had trials. A fresh study keeps ``search.seed``'s draws.

    Optuna keeps a sampler's random state in ``_rng`` (CMA-ES: ``_cma_rng``) and that of the sampler
    it starts with in ``_random_sampler`` (TPE) or ``_independent_sampler``; if a later Optuna moves
    them, ``reseed_rng()`` still gives new draws.
    """

    class Continuing(cls):
        def __init__(self, *args, seed: int | None = None, **kwargs) -> None:
            super().__init__(*args, seed=seed, **kwargs)
            self._hpo_seed, self._hpo_first = seed, True

        def before_trial(self, study, trial) -> None:  # noqa: D102
            if self._hpo_first:
                self._hpo_first = False
                if trial.number > 0 and self._hpo_seed is not None:
                    self._reseed(derived_seed(self._hpo_seed, trial.number))
            super().before_trial(study, trial)

        def _reseed(self, seed: int) -> None:
            inner = getattr(self, "_random_sampler", None) or getattr(self, "_independent_sampler", None)
            for i, sampler in enumerate((self, inner)):
                state = getattr(sampler, "_rng", None) or getattr(sampler, "_cma_rng", None)
                rng = getattr(state, "rng", None)
                if rng is not None:
                    rng.seed((seed + i) % 2**32)
                elif sampler is not None:
                    sampler.reseed_rng()

    Continuing.__name__ = Continuing.__qualname__ = f"Continuing{cls.__name__}"
    return Continuing


def _grid_sampler_class():
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler for the ask/tell loop: the loop stops at the grid size itself.

        Optuna's ``after_trial`` calls ``study.stop()``, which only works inside ``optimize``.
        """

        def after_trial(self, study, trial, state, values) -> None:  # noqa: D102
            return None

    return AskTellGridSampler


def make_pruner(spec: Spec):
    """The Optuna pruner of ``spec`` (``NopPruner`` for ``none``)."""
    return pruner(spec.search.pruner)


def pruner(name: str):
    """The Optuna pruner called ``name`` in a spec's ``search.pruner`` (``NopPruner`` for ``none``)."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "wilcoxon":  # compares a trial's fold values with the best trial's, fold by fold (a user objective)
        import warnings

        with warnings.catch_warnings():  # experimental since Optuna 3.6; the spec key is what users rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def open_storage(url: str):
    """Optuna's storage at ``url``: a journal file (:mod:`hpo.journal_store`), or the RDB storage; a sqlite
    file in WAL mode, waiting for a busy lock instead of failing."""
    import optuna

    from hpo.journal_store import journal_path, open_journal

    journal = journal_path(url)
    if journal is not None:
        return open_journal(journal)
    if url.startswith("sqlite:///"):
        from hpo.sqlite_store import use_wal

        use_wal(url)
        # a second process on the same file waits for the lock instead of failing at once
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


# ---------------------------------------------------------------------- the study in its storage



def open_study(spec: Spec, storage: Any, storage_url: str, *, resume: bool, concurrency: int):
    """Create the Optuna study of ``spec`` in ``storage``, or with ``resume`` load it (checked against the spec).

    Refuses (:class:`~hpo.errors.StudyExistsError`) a study that already has trials or a parent run
    unless ``resume``; records the resume key, the spec hash and the metric on the study."""
    import optuna

    from hpo.errors import StudyExistsError
    from hpo.redact import redact
    from hpo.resume import KEY_ATTR, METRIC_ATTR, check_resume, resume_key

    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    summary = existing.get(spec.name)
    if summary is not None and not resume and (summary.n_trials > 0 or PARENT_RUN_ATTR in summary.user_attrs):
        raise StudyExistsError(
            f"study {spec.name!r} already exists in {redact(storage_url)} ({summary.n_trials} trials). "
            f"Continue it with: hpo run {spec.path or 'SPEC'} --resume (add --n-trials N to raise the "
            "budget; two processes with --resume share the work), or give the spec another name"
        )
    if summary is not None:  # resuming: the spec must still describe this study
        single = len(summary.directions) == 1
        check_resume(spec, summary.user_attrs, summary.directions[0].name.lower() if single else None)
    study = optuna.create_study(storage=storage, study_name=spec.name, directions=[o.direction for o in spec.objectives],
                                sampler=make_sampler(spec, concurrency), pruner=make_pruner(spec), load_if_exists=True)
    if KEY_ATTR not in study.user_attrs:
        study.set_user_attr(KEY_ATTR, resume_key(spec))
    study.set_user_attr("hpo.spec_hash", spec.spec_hash)
    study.set_user_attr(METRIC_ATTR, spec.metric)
    names = [o.metric for o in spec.objectives]
    if study.metric_names != names:  # optuna-dashboard and Optuna's plots say the metrics' names
        import warnings

        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def requeue_interrupted(study: Any) -> list[Any]:
    """On resume: fail the trials a dead driver left RUNNING (as interrupted), and enqueue the
    parameters of every interrupted trial once; returns the trials re-queued now."""
    from optuna.trial import TrialState

    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    requeued = set(study.user_attrs.get(REQUEUED_ATTR, []))
    now = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get(INTERRUPTED_ATTR) and t.number not in requeued:
            study.enqueue_trial(t.params, skip_if_exists=False)
            requeued.add(t.number)
            now.append(t)
    study.set_user_attr(REQUEUED_ATTR, sorted(requeued))
    return now


def tell(study: Any, trial: Any, result: TrialResult, spec: Spec) -> None:
    """Tell Optuna how ``trial`` ended, with its result's attributes; a KILLED trial is an
    interrupted FAIL (re-queued on resume), not a final one. A complete trial is told every
    objective's value (the CV value, then its cost metrics) and, with ``search.constraints``,
    each constraint's value (``Trial.set_constraint``) and whether it is feasible."""
    from optuna.trial import TrialState

    from hpo.selection import FEASIBLE_ATTR, constraint_values, trial_values

    values = None
    if result.state == COMPLETE:
        values = trial_values(spec.objectives, result.value, result.costs)
        if values is None:
            missing = [o.metric for o in spec.objectives[1:] if o.metric not in result.costs]
            result.state, result.reason = FAILED, f"no value for objective {', '.join(missing) or spec.metric}"
    trial.set_user_attr(DURATION_ATTR, round(result.duration_s, 3))
    if result.costs:
        trial.set_user_attr(COSTS_ATTR, result.costs)
    if result.resources:  # for hpo show's memory columns
        trial.set_user_attr(RESOURCES_ATTR, {k[len("sys/"):]: round(v, 3) for k, v in result.resources.items()})
    if values is not None and spec.constraints:
        import warnings

        import optuna

        violations = constraint_values(spec.constraints, spec.metric, result.value, result.costs)
        with warnings.catch_warnings():  # Optuna 5's way of constraints (constraints_func is deprecated)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for key, v in violations.items():
                trial.set_constraint(key, v)
        result.feasible = all(v <= 0 for v in violations.values())
        trial.set_user_attr(FEASIBLE_ATTR, result.feasible)
    if result.fold_values:
        trial.set_user_attr(FOLD_VALUES_ATTR, result.fold_values)
        trial.set_user_attr(FOLD_EPOCHS_ATTR, result.fold_best_epochs)
        trial.set_user_attr(CV_STD_ATTR, result.std)
    if result.reason:
        trial.set_user_attr(REASON_ATTR, result.reason)
    if result.state == COMPLETE:
        study.tell(trial, values if spec.is_multi else values[0])
    elif result.state == PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        if result.state == KILLED:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)


def counts(study: Any) -> dict[str, int]:
    """Trials by how they ended: complete, pruned, failed (interrupted ones are not failures: they re-run)."""
    from optuna.trial import TrialState

    n = {"complete": 0, "pruned": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            n["complete"] += 1
        elif t.state == TrialState.PRUNED:
            n["pruned"] += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR):
            n["failed"] += 1
    return n


def finished_count(study: Any) -> int:
    """Trials that count against the budget: complete, pruned and failed (not interrupted) ones."""
    return sum(counts(study).values())
