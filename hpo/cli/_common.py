"""Options and look-ups shared by several commands."""

from __future__ import annotations

import argparse

from hpo.spec import DEFAULT_TRACKING_URI


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    """``--tracking-uri`` (default: the spec's, else sqlite:///mlruns/mlflow.db)."""
    p.add_argument("--tracking-uri", metavar="URI", default=None,
                   help=f"MLflow tracking store (default: the spec's tracking.uri, else {DEFAULT_TRACKING_URI})")


def open_study(name: str, tracking_uri: str | None):
    """Load the Optuna study ``name`` stored next to ``tracking_uri``; HpoError if there is none."""
    import optuna

    from hpo.errors import HpoError
    from hpo.tracking import optuna_storage_for, sqlite_path

    uri = tracking_uri or DEFAULT_TRACKING_URI
    storage = optuna_storage_for(uri)
    db = sqlite_path(storage)
    if db is not None and not db.exists():
        raise HpoError(f"no studies in {storage}: run one with `hpo run SPEC` or pass --tracking-uri")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HpoError(f"no study named {name!r} in {storage}{hint}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
