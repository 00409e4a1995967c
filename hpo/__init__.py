"""hpo: hyperparameter search and experiment tracking for PyTorch models.

Optuna proposes trials, k-fold cross-validation scores them, MLflow records them.

    >>> import hpo
    >>> result = hpo.run("search_spaces/digits_mlp.yaml")        # doctest: +SKIP
    >>> model = hpo.load_model(result.parent_run_id)               # doctest: +SKIP

Heavy libraries (torch, optuna, mlflow) load on first use, so ``hpo --help`` is instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_spec", "run", "load_model", "StudyResult", "Spec", "Fold", "Split",
           "TrialContext", "Verdict", "GO", "PRUNE", "STOP"]


def __getattr__(name: str) -> Any:
    if name in ("run", "StudyResult"):
        from hpo import study

        return getattr(study, name)
    if name in ("load_spec", "Spec"):
        from hpo import spec

        return getattr(spec, name)
    if name in ("Fold", "Split", "TrialContext"):  # a user objective's arguments (hpo.objective)
        from hpo import objective

        return getattr(objective, name)
    if name in ("Verdict", "GO", "PRUNE", "STOP"):  # what ctx.report answers
        from hpo.trial import Verdict

        return Verdict if name == "Verdict" else Verdict[name]
    if name == "load_model":
        from hpo.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
