"""Executors run :class:`~hpo.trial.TrialSpec` records and hand back :class:`~hpo.trial.TrialResult` futures.

Every executor has the same small surface (see :class:`Executor`); the study only asks,
submits, waits and tells.
"""

from __future__ import annotations

from hpo.executors.base import Executor
from hpo.executors.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor"]
