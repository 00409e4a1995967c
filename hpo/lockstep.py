"""How the folds of a user objective's trial meet after each epoch.

:class:`Lockstep`: the folds take turns (one runs at a time, as the built-in folds do) and an
epoch's fold-mean metric goes to the trial's epoch callback once every running fold has reported
it; :class:`FoldByFold`: one fold after another to its end (``search.pruner: wilcoxon``).
:mod:`hpo.objective` runs each fold on a thread of its own and hands it one of these.

Worker side: imports torch only inside a fold's turn (its RNG state), never Optuna, MLflow or Ray.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpo.trial import EpochCallback, Verdict


class Stopped(Exception):
    """Raised inside a fold's thread when another fold failed: the trial is over, this fold ends too."""


class Lockstep:
    """The epoch rendezvous of a trial's folds, which take turns as the built-in folds do.

    Fold 0 trains until its ``report``, then fold 1 until its own, and so on (one fold runs at a time);
    when the last running fold has reported, the round's per-fold and mean metrics go to ``on_epoch``
    and every fold's ``report`` returns its answer as its turn comes again. Each fold's turns run on
    its own torch RNG state (seeded with the fold's seed at its first turn), so a fold's random draws
    (initialisation, dropout, shuffling with the global generator) do not depend on the other folds.
    A fold that returns (or fails) drops out of later rounds. After a ``PRUNE`` or ``STOP`` every later
    report gets the same answer at once; after a failure every other fold stops at its next report.
    """

    def __init__(self, seeds: Sequence[int], metric: str, on_epoch: EpochCallback | None, device: str = "cpu") -> None:
        self.metric, self.on_epoch, self.device = metric, on_epoch, device
        self.cond = threading.Condition()
        self.running = list(range(len(seeds)))
        self.seeds = list(seeds)
        self.turn = 0
        self.round: dict[int, tuple[int, dict[str, float]]] = {}  # fold -> (epoch, metrics) of this round
        self.answer: Verdict | None = None  # the last round's answer
        self.rounds = 0
        self.final: Verdict | None = None  # a prune or stop: every fold's answer from now on
        self.failed = False
        self.last_epoch = 0
        self.states: dict[int, Any] = {}

    # -- RNG: each fold's own
    def _enter(self, fold: int) -> None:
        import torch

        if fold not in self.states:
            torch.manual_seed(self.seeds[fold])
        else:
            cpu, cuda = self.states[fold]
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda)

    def _leave(self, fold: int) -> None:
        import torch

        self.states[fold] = (torch.get_rng_state(),
                             torch.cuda.get_rng_state() if self.device == "cuda" else None)

    def _wait_turn(self, fold: int, rounds: int | None = None) -> None:
        while not self.failed and not (self.turn == fold and (rounds is None or self.rounds > rounds)):
            self.cond.wait()
        if self.failed:
            raise Stopped
        self._enter(fold)

    def begin(self, fold: int) -> None:
        """Wait for fold ``fold``'s first turn (called by its thread before the user's function)."""
        with self.cond:
            self._wait_turn(fold)

    def report(self, fold: int, epoch: int, metrics: dict[str, float]) -> Verdict:
        """Fold ``fold``'s metrics after ``epoch``; returns the round's answer when its turn comes again."""
        with self.cond:
            if self.failed:
                raise Stopped
            if self.final is not None:
                return self.final
            self.round[fold] = (epoch, dict(metrics))
            rounds = self.rounds
            self._leave(fold)
            self._pass(fold)
            self._wait_turn(fold, rounds)
            return self.final if self.final is not None else self.answer  # type: ignore[return-value]

    def done(self, fold: int, failed: bool = False) -> None:
        """Fold ``fold`` returned (or, with ``failed``, raised): it drops out; with ``failed`` the trial stops."""
        with self.cond:
            self.failed = self.failed or failed
            if fold in self.running:
                if not self.failed and self.turn == fold:
                    self._pass(fold, leaving=True)
                self.running.remove(fold)
                self.round.pop(fold, None)
            self.cond.notify_all()

    def _pass(self, fold: int, leaving: bool = False) -> None:
        """Hand the turn to the next running fold; after the last one, answer the round."""
        later = [f for f in self.running if f > fold]
        if later:
            self.turn = later[0]
        else:
            self._answer()
            rest = [f for f in self.running if not (leaving and f == fold)]
            self.turn = rest[0] if rest else -1
        self.cond.notify_all()

    def _answer(self) -> None:
        got, self.round = self.round, {}
        self.rounds += 1
        if not got or self.final is not None:
            return
        epoch = max(e for e, _m in got.values())
        metrics: dict[str, float] = {}
        for k in sorted(got):
            metrics.update({f"fold{k}/{name}": value for name, value in got[k][1].items()})
        for name in sorted({n for _e, m in got.values() for n in m}):
            metrics[name] = float(np.mean([m[name] for _e, m in got.values() if name in m]))
        self.answer = Verdict.GO if self.on_epoch is None else self.on_epoch(epoch, metrics)
        self.last_epoch = epoch
        if self.answer is not Verdict.GO:
            self.final = self.answer


class FoldByFold:
    """The folds of a trial one after another, each to its end (``search.pruner: wilcoxon``).

    A fold's ``report`` sends its own curves (``fold<k>/<name>``, step = epoch) and answers only ``STOP``
    (the study is stopping) or ``GO``: there is no fold mean per epoch. When a fold returns, its value
    goes to ``on_epoch`` at step = the fold's index, what Optuna's ``WilcoxonPruner`` compares between
    trials; a ``PRUNE`` answer skips the folds left.
    """

    def __init__(self, metric: str, on_epoch: EpochCallback | None) -> None:
        self.metric, self.on_epoch = metric, on_epoch
        self.final: Verdict | None = None
        self.last_epoch = 0

    def report(self, fold: int, epoch: int, metrics: dict[str, float]) -> Verdict:
        """Fold ``fold``'s curves after ``epoch``; see the class docstring."""
        if self.final is not None:
            return self.final
        self.last_epoch = max(self.last_epoch, epoch)
        got = Verdict.GO if self.on_epoch is None else self.on_epoch(epoch, {f"fold{fold}/{k}": v for k, v in metrics.items()})
        if got is Verdict.STOP:
            self.final = got
        return got

    def fold_done(self, fold: int, value: float) -> Verdict:
        """Fold ``fold`` returned ``value``: the pruner's answer on the trial so far."""
        got = Verdict.GO if self.on_epoch is None else self.on_epoch(fold, {self.metric: value})
        if got is not Verdict.GO:
            self.final = got
        return got
