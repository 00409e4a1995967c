"""MLflow, as hpo records a study in it: one experiment per study, a parent run per study, a
nested child run per trial, the refit model logged and registered.

- :mod:`~hpo.tracking.names`: every tag, param and metric key and artifact folder hpo writes;
- :mod:`~hpo.tracking.tracker`: :class:`Tracker`, every write of a study (through the outbox,
  which waits out an outage) and the tracking health the study loop asks about;
- :mod:`~hpo.tracking.lineage`: the parent run's lineage tags and settings;
- :mod:`~hpo.tracking.models`: the refit model logged, registered and read back;
- :mod:`~hpo.tracking.stores`: Optuna's storage beside MLflow's, the server's health check, the
  epoch sink's own outbox.

A running trial's curves go out in batches through the epoch sink (:mod:`hpo.epochs`).
"""

from __future__ import annotations

import os

from hpo.redact import redact
from hpo.sqlite_store import sqlite_path, store_lock
from hpo.tracking.lineage import lineage_tags, study_settings
from hpo.tracking.names import BEST_TAG, CHECKPOINT_DIR, PACKED_TAG, PARENT_TAG, ROLE_TAG, STATUS, STUDY_TAG
from hpo.tracking.stores import check_reachable, curve_log, optuna_storage_for, optuna_storages_beside
from hpo.tracking.tracker import Tracker, trial_run_name

__all__ = [
    "BEST_TAG", "CHECKPOINT_DIR", "PACKED_TAG", "PARENT_TAG", "ROLE_TAG", "STATUS", "STUDY_TAG", "Tracker", "check_reachable",
    "curve_log", "lineage_tags", "optuna_storage_for", "optuna_storages_beside", "redact", "sqlite_path", "store_lock", "study_settings",
    "trial_run_name",
]

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
