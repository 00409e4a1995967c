"""The parent run's lineage and settings: what a study was run with, so a run can be reproduced."""

from __future__ import annotations

import subprocess
from typing import Any

# the parent run's tag with the source hash of each kind of user code (the code that trains: hpo.code_hash)
_CODE_TAGS = {"model.factory": "hpo.code_hash", "objective.function": "hpo.code_hash",
              "objective.evaluate": "hpo.evaluate_code_hash", "data.factory": "hpo.data_code_hash"}


def lineage_tags(spec: Any) -> dict[str, str]:
    """The parent run's lineage tags: spec hash, seed, versions, the user's code hashes, the git commit."""
    import mlflow
    import optuna
    import torch

    import hpo
    from hpo.usercode import load_target, source_hash

    tags = {
        "hpo.spec_hash": spec.spec_hash,
        "hpo.seed": str(spec.search.seed),
        "hpo.version": hpo.__version__,
        "torch.version": torch.__version__,
        "optuna.version": optuna.__version__,
        "mlflow.version": mlflow.__version__,
    }
    for key, target, group in spec.user_code():  # the user's code is part of what the study measured
        tags[_CODE_TAGS[key]] = source_hash(load_target(target, spec_path=spec.path, group=group)) or "no source file"
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["hpo.git_commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except OSError:
        return None


def study_settings(spec: Any) -> dict[str, Any]:
    """The parent run's params: what the study was run with (``sampler.<option>`` for each
    ``search.sampler_options`` key the spec sets)."""
    return {
        "dataset": spec.data.label, "model": spec.model, "sampler": spec.search.sampler,
        "n_trials": spec.n_trials, "seed": spec.search.seed, "metric": spec.metric,
        "direction": spec.direction, "pruner": spec.search.pruner, "folds": spec.cv.folds,
        "test_size": spec.data.test_size, "executor": spec.execution.executor,
        "max_concurrent_trials": spec.execution.max_concurrent_trials,
        **{f"sampler.{k}": v for k, v in spec.search.sampler_options.items()},
    }
