"""Study-level stop rules (``search.stop``): stop proposing trials once the best value reaches a
target, or once it has not improved by ``min_delta`` for ``plateau_trials`` finished trials. With
``search.constraints`` only feasible trials have a value here.

hpo's own, not Optuna's terminator (deprecated since Optuna 4.9). The rules see every finished
trial in the order it finished — complete, pruned and failed ones; interrupted trials re-run and
do not count — so a resumed study picks up where its count stood (:meth:`StopRules.replay`).
"""

from __future__ import annotations

from typing import Any

from hpo.metrics import is_better
from hpo.selection import first_value, is_feasible

TARGET, PLATEAU = "target", "plateau"


class StopRules:
    """The stop rules of ``stop`` (a :class:`~hpo._spec_search.StopSpec`, or None: never) for ``metric``."""

    def __init__(self, stop: Any, direction: str, metric: str) -> None:
        self.stop, self.direction, self.metric = stop, direction, metric
        self.best: float | None = None  # the best value so far
        self.ref: float | None = None  # the best value at the last improvement of at least min_delta
        self.since = 0  # finished trials since then
        self.finished = 0

    def observe(self, value: float | None) -> None:
        """One more finished trial; ``value`` is its CV value when it completed, else None."""
        self.finished += 1
        self.since += 1
        if value is None:
            return
        if is_better(value, self.best, self.direction):
            self.best = value
        delta = self.stop.min_delta if self.stop is not None else 0.0
        sign = 1.0 if self.direction == "maximize" else -1.0
        if self.ref is None or (sign * (value - self.ref) > 0 and sign * (value - self.ref) >= delta):
            self.ref, self.since = value, 0

    def replay(self, trials: list[Any]) -> None:
        """Observe a resumed study's stored trials (Optuna ``FrozenTrial``), in the order they finished."""
        from optuna.trial import TrialState

        from hpo.trial import INTERRUPTED_ATTR

        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR))]
        for t in sorted(done, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number)):
            self.observe(first_value(t) if t.state == TrialState.COMPLETE and is_feasible(t) else None)

    def reason(self) -> str | None:
        """``target`` or ``plateau`` when a rule says stop, else None."""
        s = self.stop
        if s is None:
            return None
        if s.target is not None and self.best is not None:
            if (self.best >= s.target) if self.direction == "maximize" else (self.best <= s.target):
                return TARGET
        if s.plateau_trials is not None and self.since >= s.plateau_trials:
            return PLATEAU
        return None

    def describe(self, reason: str) -> str:
        """The sentence of ``reason`` for the summary and the parent run's ``hpo.stop_reason`` tag."""
        s = self.stop
        if reason == TARGET:
            reached = "reached" if self.direction == "maximize" else "fell to"
            return (f"target: the best {self.metric} {self.best:.6g} {reached} search.stop.target {s.target:g} "
                    f"after {self.finished} finished trials")
        gain = f" by {s.min_delta:g}" if s.min_delta else ""
        return (f"plateau: the best {self.metric} ({self.best if self.best is None else format(self.best, '.6g')}) "
                f"has not improved{gain} in {self.since} finished trials (search.stop.plateau_trials = "
                f"{s.plateau_trials})")
