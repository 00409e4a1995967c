"""Optuna's side of a study, built from the spec: sampler, pruner and storage.

No torch here: the Ray epoch-sink actor opens the study with these and should start fast.
"""

from __future__ import annotations

from hpo import space
from hpo.spec import Spec


def make_sampler(spec: Spec, concurrency: int):
    """The Optuna sampler of ``spec``: grid, random or TPE (constant liar when trials run concurrently).

    Seeded from ``search.seed``; a process that joins a study which already has trials (a resume,
    or a second process sharing the work) re-seeds from its first trial's number, so it draws new
    points instead of replaying the ones the stored trials already tried (:func:`_continuing`).
    """
    import optuna

    seed = spec.search.seed
    if spec.search.sampler == "grid":
        return _continuing(_grid_sampler_class())(space.grid(spec), seed=seed)
    if spec.search.sampler == "random":
        return _continuing(optuna.samplers.RandomSampler)(seed=seed)
    startup = min(10, max(4, spec.n_trials // 3))  # short studies still get a model-guided phase
    return _continuing(optuna.samplers.TPESampler)(seed=seed, n_startup_trials=startup,
                                                   constant_liar=concurrency > 1)


def derived_seed(seed: int, number: int) -> int:
    """A seed for the draws that start at trial ``number`` of a study seeded with ``seed``."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _continuing(cls):
    """``cls`` whose random state, at the first trial this process asks for, is re-seeded from that
    trial's number when the study already had trials. A fresh study keeps ``search.seed``'s draws.

    Optuna keeps a sampler's random state in ``_rng`` (and TPE's start-up sampler in
    ``_random_sampler``); if a later Optuna moves them, ``reseed_rng()`` still gives new draws.
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
            for i, sampler in enumerate((self, getattr(self, "_random_sampler", None))):
                rng = getattr(getattr(sampler, "_rng", None), "rng", None)
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
