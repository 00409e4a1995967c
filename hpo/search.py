"""Optuna's side of a study, built from the spec: sampler, pruner and storage.

No torch here: the Ray epoch-sink actor opens the study with these and should start fast.
"""

from __future__ import annotations

from hpo import space
from hpo.spec import Spec


def make_sampler(spec: Spec, concurrency: int):
    """The Optuna sampler of ``spec``: grid, random or TPE (constant liar when trials run concurrently)."""
    import optuna

    seed = spec.search.seed
    if spec.search.sampler == "grid":
        return _AskTellGridSampler(space.grid(spec), seed=seed)
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(4, spec.n_trials // 3))  # short studies still get a model-guided phase
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=concurrency > 1)


def _grid_sampler_class():
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler for the ask/tell loop: the loop stops at the grid size itself.

        Optuna's ``after_trial`` calls ``study.stop()``, which only works inside ``optimize``.
        """

        def after_trial(self, study, trial, state, values) -> None:  # noqa: D102
            return None

    return AskTellGridSampler


def _AskTellGridSampler(search_space, seed):  # noqa: N802 - reads like the class it builds
    return _grid_sampler_class()(search_space, seed=seed)


def make_pruner(spec: Spec):
    """The Optuna pruner of ``spec`` (``NopPruner`` for ``none``)."""
    import optuna

    name = spec.search.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def open_storage(url: str):
    """Optuna's RDB storage at ``url``; a sqlite file in WAL mode, waiting for a busy lock instead of failing."""
    import optuna

    if url.startswith("sqlite:///"):
        from hpo.sqlite_store import use_wal

        use_wal(url)
        # a second process on the same file waits for the lock instead of failing at once
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)
