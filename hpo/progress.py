"""Live progress of a study in the terminal (rich): trials done/total, states, best so far, ETA."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

STATE_STYLE = {"complete": "green", "pruned": "yellow", "failed": "red", "killed": "magenta"}


class StudyProgress:
    """Receives ``start`` / ``trial_done`` / ``stop`` from the study runner and draws a bar."""

    def __init__(self, console: Console | None = None, per_trial_lines: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.per_trial_lines = per_trial_lines
        self.counts = {"complete": 0, "pruned": 0, "failed": 0, "killed": 0}
        self._progress: Progress | None = None

    def start(self, spec: Any, total: int, done: int) -> None:
        """Begin drawing for a study of ``total`` trials, ``done`` of them already finished."""
        self.metric = spec.metric
        what = f"objective {spec.model}" if getattr(spec, "is_objective", False) else spec.model
        from hpo.selection import describe_goal

        self.console.print(f"[bold]{spec.name}[/]: {what} on {spec.data.label}, {spec.search.sampler} "
                           f"sampler, {spec.cv.folds}-fold CV, {escape(describe_goal(spec))}")
        self._progress = Progress(
            TextColumn("[bold blue]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=total, completed=done)
        self._t0 = time.perf_counter()

    def trial_done(self, result: Any, best: float | None) -> None:
        """One trial finished."""
        self.counts[result.state] = self.counts.get(result.state, 0) + 1
        desc = " ".join(f"[{STATE_STYLE[k]}]{k[0]}:{v}[/]" for k, v in self.counts.items() if v)
        if best is not None:
            desc += f" best {self.metric}={best:.4f}"
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=desc)
            if self.per_trial_lines:
                value = "" if result.value is None else f"{self.metric}={result.value:.4f}"
                reason = f" ({result.reason})" if result.state != "complete" and result.reason else ""
                self._progress.console.print(
                    f"  trial {result.number:>3} [{STATE_STYLE.get(result.state, '')}]{result.state:<8}[/] "
                    f"{value:<18} {result.epochs_trained:>3} epochs {result.duration_s:6.1f}s{reason}",
                    highlight=False)

    def message(self, text: str) -> None:
        """Print a line above the bar."""
        self.console.print(f"[yellow]{text}[/]")

    def stop(self) -> None:
        """Stop drawing."""
        if self._progress is not None:
            self._progress.stop()


def summary_table(result: Any) -> Table:
    """The end-of-study summary: best trial, parameters, test metrics, counts, where to look."""
    t = Table(title=f"study {result.name}", show_header=False, title_style="bold")
    t.add_column(style="bold")
    t.add_column()
    if result.best_number is not None:
        t.add_row("best trial", f"#{result.best_number}")
        if getattr(result, "selected", None):
            t.add_row("selected by", escape(result.selected))
        t.add_row(f"best CV {result.metric}", f"{result.best_value:.4f}")
        for k, v in result.best_params.items():
            t.add_row(f"  {k}", f"{v:.4g}" if isinstance(v, float) else str(v))
    for k, v in result.test_metrics.items():
        t.add_row(f"test {k}", f"{v:.4f}")
    t.add_row("trials", ", ".join(f"{v} {k}" for k, v in result.counts.items()))
    if getattr(result, "stop_reason", None):
        t.add_row("stopped by", escape(result.stop_reason))
    t.add_row("wall time", f"{result.duration_s:.1f} s")
    t.add_row("MLflow parent run", result.parent_run_id)
    if getattr(result, "registered_model", None):
        t.add_row("model", escape(result.registered_model))
    elif result.model_uri:
        t.add_row("model", result.model_uri)
    return t
