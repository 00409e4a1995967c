"""Study reports: plots of a finished study, as interactive HTML and static PNG, on its parent run.

:func:`write_report` draws every plot into a temporary folder and uploads it as the
``report/`` artifacts of the study's MLflow parent run, and logs the parameter
importances as ``importance_<param>`` metrics there, so the runs table can sort and
compare studies by them. :func:`build_report` does the drawing alone (no MLflow).

Plots (each ``report/<name>.html`` and ``report/<name>.png``):

- ``optimization_history``: every trial's value and the best value so far;
- ``param_importances``: how much of the variance of the value each parameter explains;
- ``parallel_coordinate``: every complete trial as a line through its parameter values;
- ``slice_<param>``: the value against one parameter, one plot per parameter;
- ``intermediate_values``: the learning curves (the validation metric reported after
  every epoch) of all trials, pruned ones dashed and marked where they stopped;
- ``pareto_front`` (several objectives): every complete trial by its objectives, the front marked;
  the plots above show the first objective;
- ``confusion_matrix`` (classification) or ``predicted_vs_true`` (regression): the refit
  model on the held-out test split.

HTML files embed plotly.js (about 5 MB each) so they work offline and inside the MLflow
UI's artifact viewer; set ``HPO_REPORT_PLOTLYJS=cdn`` to load it from the plotly CDN
instead (files of a few kB that need internet access to render).

Plots that cannot be drawn (no complete trial, fewer than two for importances, no
varying parameter, no model) are skipped with a warning; nothing here raises because
of the shape of a study. The figure builders live in :mod:`hpo._report_figures`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo._report_figures import (
    IMPORTANCE_EVALUATOR,
    Skip,
    confusion_figures,
    curve_figures,
    importance_figures,
    param_importances,
    parcoords,
    regression_figures,
)
from hpo.resume import (
    METRIC_ATTR,  # study user attr with the metric's name (read by `hpo show` without MLflow)
)

log = logging.getLogger("hpo")

REPORT_DIR = "report"
IMPORTANCE_PREFIX = "importance_"
PNG_SIZE = (9.0, 5.5)  # inches at 100 dpi
PNG_DPI = 100


@dataclass
class Report:
    """What :func:`build_report` wrote: file names (relative to its folder), importances, skipped plots."""

    files: list[str] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # plot -> why
    seconds: float = 0.0


def write_report(study: Any, client: Any, parent_run_id: str, *, model: Any = None, dataset: Any = None,
                 metric: str, task: str, stop: Callable[[], None] | None = None) -> dict[str, float]:
    """Draw the study's report and attach it to its MLflow parent run; return the importances.

    ``study``: the :class:`optuna.Study`; ``client``: an :class:`mlflow.MlflowClient` on the
    study's tracking store; ``parent_run_id``: the study's parent run. ``model`` (the refit
    model: raw inputs -> logits / predictions) and ``dataset`` (an :class:`hpo.data.Dataset`)
    give the confusion matrix (``task == "classification"``) or the predicted-vs-true plot
    (``"regression"``) on the test split; without them that plot is skipped. ``metric`` is
    the study's metric (axis titles, the test score in the model plot).

    Writes ``report/<plot>.html`` and ``report/<plot>.png`` plus ``report/importances.json``
    as artifacts, logs ``importance_<param>`` metrics and the tag ``hpo.importance_evaluator``,
    and records the metric's name as the study's ``hpo.metric`` user attr (for ``hpo show``).
    Idempotent: a second call overwrites the same artifacts and re-logs the metrics.
    Returns ``{param: importance}`` (summing to 1), empty when importances cannot be computed.
    """
    from mlflow.entities import Metric, RunTag

    try:
        if study.user_attrs.get(METRIC_ATTR) != metric:
            study.set_user_attr(METRIC_ATTR, metric)
    except Exception as exc:  # a read-only storage costs `hpo show` an MLflow look-up, nothing more
        log.debug("report: cannot set %s on the study: %s", METRIC_ATTR, exc)
    with tempfile.TemporaryDirectory(prefix="hpo-report-") as tmp:
        report = build_report(study, Path(tmp), model=model, dataset=dataset, metric=metric, task=task, stop=stop)
        if stop is not None:
            stop()
        client.log_artifacts(parent_run_id, tmp, REPORT_DIR)
    if report.importances:
        ts = int(time.time() * 1000)
        client.log_batch(
            parent_run_id,
            metrics=[Metric(f"{IMPORTANCE_PREFIX}{_safe_name(k)}", float(v), ts, 0)
                     for k, v in report.importances.items()],
            tags=[RunTag("hpo.importance_evaluator", IMPORTANCE_EVALUATOR)],
        )
    log.info("report: %d files under %s/ of run %s in %.1fs", len(report.files), REPORT_DIR, parent_run_id,
             report.seconds)
    return report.importances


def build_report(study: Any, out_dir: Path, *, model: Any = None, dataset: Any = None, metric: str,
                 task: str, stop: Callable[[], None] | None = None) -> Report:
    """Draw every plot of :func:`write_report` into ``out_dir`` (created if missing); no MLflow.

    Returns a :class:`Report` naming the files written and the plots skipped (with why).
    ``stop`` is called before each plot; whatever it raises (a Ctrl-C the study noted) ends
    the report there.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    with _plotting() as (plt, ovm):
        from optuna.trial import TrialState

        html = _Html()
        whole = study
        study = _snapshot(study)  # several objectives: the plots below show the first
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value)]
        target = f"CV {metric}"
        params = _param_names(trials)

        def draw(name: str, make: Callable[[], tuple[Any, Any]]) -> None:
            if stop is not None:
                stop()
            t0 = time.perf_counter()
            try:
                fig_html, fig_png = make()
                _save(out_dir, name, fig_html, fig_png, plt, html, report)
                log.debug("report: %s in %.2fs", name, time.perf_counter() - t0)
            except Skip as why:
                report.skipped[name] = str(why)
            except Exception as exc:  # a plot must never cost the study its results
                report.skipped[name] = f"{type(exc).__name__}: {exc}"
                log.warning("report: could not draw %s: %s: %s", name, type(exc).__name__, exc)

        def need_complete(n: int = 1) -> None:
            if len(complete) < n:
                raise Skip(f"needs {n} complete trial{'s' if n > 1 else ''}, the study has {len(complete)}")

        def history():
            need_complete()
            import optuna.visualization as vis

            return (vis.plot_optimization_history(study, target_name=target),
                    ovm.plot_optimization_history(study, target_name=target))

        draw("optimization_history", history)

        try:
            report.importances = param_importances(study, complete)
        except Skip as why:
            report.skipped["param_importances"] = str(why)
        except Exception as exc:
            report.skipped["param_importances"] = f"{type(exc).__name__}: {exc}"
            log.warning("report: could not compute parameter importances: %s: %s", type(exc).__name__, exc)
        if report.importances:
            draw("param_importances", lambda: importance_figures(report.importances, target, plt))
            (out_dir / "importances.json").write_text(json.dumps(
                {"evaluator": IMPORTANCE_EVALUATOR, "target": target, "n_trials": len(complete),
                 "importances": report.importances}, indent=2))
            report.files.append("importances.json")

        def parallel():
            need_complete()
            if not params:
                raise Skip("the study has no sampled parameter")
            return parcoords(study, target), ovm.plot_parallel_coordinate(study, target_name=target)

        draw("parallel_coordinate", parallel)

        for p in params:
            def one_slice(p: str = p):
                need_complete()
                import optuna.visualization as vis

                if not any(p in t.params for t in complete):
                    raise Skip(f"no complete trial sampled {p}")
                return (vis.plot_slice(study, params=[p], target_name=target),
                        ovm.plot_slice(study, params=[p], target_name=target))

            draw(f"slice_{_safe_name(p)}", one_slice)

        draw("intermediate_values", lambda: curve_figures(study, trials, metric, plt))

        if len(whole.directions) > 1:
            def pareto():
                need_complete()
                import optuna.visualization as vis

                if len(whole.directions) > 3:
                    raise Skip(f"a Pareto plot draws 2 or 3 objectives, the study has {len(whole.directions)}")
                from hpo.selection import objective_names

                names = objective_names(whole)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # optuna's matplotlib backend is experimental
                    return (vis.plot_pareto_front(whole, target_names=names),
                            ovm.plot_pareto_front(whole, target_names=names))

            draw("pareto_front", pareto)

        model_plot = "confusion_matrix" if task == "classification" else "predicted_vs_true"
        if model is None or dataset is None:
            report.skipped[model_plot] = "no refit model" if model is None else "no dataset"
        elif task == "classification":
            draw(model_plot, lambda: confusion_figures(model, dataset, metric, plt))
        else:
            draw(model_plot, lambda: regression_figures(model, dataset, metric, plt))
    report.seconds = time.perf_counter() - started
    if report.skipped:
        by_reason: dict[str, list[str]] = {}
        for name, why in report.skipped.items():
            by_reason.setdefault(why, []).append(name)
        log.warning("report: skipped %s", "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items()))
    return report


# ---------------------------------------------------------------------- helpers


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _snapshot(study: Any) -> Any:
    """A read-only view of ``study`` whose ``get_trials`` returns one list fetched once, without copies.

    Optuna's plot functions call ``get_trials`` (a storage query and deep copies each time)
    again and again; on a sqlite study of 1000 trials that alone costs seconds.
    """
    import optuna
    from optuna.storages import InMemoryStorage
    from optuna.trial import TrialState

    frozen = study.get_trials(deepcopy=False)
    directions = list(study.directions)
    if len(directions) > 1:  # the first objective alone (its curves too): Optuna's single-objective plots draw it
        from hpo.epochs import first_objective

        frozen, directions = [first_objective(t) for t in frozen], directions[:1]
    storage = InMemoryStorage()
    storage.create_new_study(directions, study.study_name)
    sign = -1.0 if directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0

    class Snapshot(optuna.Study):
        def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:  # noqa: D102
            return list(frozen) if states is None else [t for t in frozen if t.state in states]

        @property
        def best_trial(self) -> Any:  # noqa: D102
            done = [t for t in frozen if t.state == TrialState.COMPLETE and t.value is not None]
            if not done:
                raise ValueError("no complete trial")
            return min(done, key=lambda t: (sign * t.value, t.number))

    return Snapshot(study.study_name, storage)


def _param_names(trials: list[Any]) -> list[str]:
    """Sampled parameters in first-seen order (conditional ones included)."""
    seen: dict[str, None] = {}
    for t in trials:
        for k in t.params:
            seen.setdefault(k, None)
    return list(seen)


@contextmanager
def _plotting() -> Iterator[tuple[Any, Any]]:
    """pyplot on the Agg backend (unless pyplot is already in use), optuna's style changes undone after."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        # no automatic layout engine: _save lays each figure out once itself
        with plt.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib plots
            yield plt, ovm
    finally:
        optuna.logging.set_verbosity(level)


_HTML_CONFIG = {"displaylogo": False}
_JS_PLACEHOLDER = "hpo-report-plotlyjs.js"  # a script src no real file has; see _Html.write


class _Html:
    """Writes plotly figures as HTML files, each embedding plotly.js unless ``HPO_REPORT_PLOTLYJS=cdn``.

    ``write_html(include_plotlyjs=True)`` reads plotly.js (~5 MB) from the package, decodes
    it, formats it into the page and encodes it again, for every file. Here the page comes
    from ``to_html`` with a placeholder script src, and the inline ``<script>`` with the
    bundle, read and encoded once per report, replaces it as bytes: the same file as
    plotly's own (still self-contained, so it renders offline and in the MLflow artifact
    viewer), at a fraction of the cost.
    """

    def __init__(self) -> None:
        self.cdn = os.environ.get("HPO_REPORT_PLOTLYJS", "inline").strip().lower() == "cdn"
        self._bundle: bytes | None = None

    def write(self, fig: Any, path: Path) -> None:
        """Write ``fig`` (a plotly figure) to ``path`` as a full HTML page."""
        if self.cdn:
            fig.write_html(path, include_plotlyjs="cdn", full_html=True, config=_HTML_CONFIG)
            return
        page = fig.to_html(include_plotlyjs=_JS_PLACEHOLDER, full_html=True, config=_HTML_CONFIG)
        head, tag, tail = page.partition(f'<script charset="utf-8" src="{_JS_PLACEHOLDER}"></script>')
        if not tag or _JS_PLACEHOLDER in tail:  # plotly's page template changed: let plotly embed it
            fig.write_html(path, include_plotlyjs=True, full_html=True, config=_HTML_CONFIG)
            return
        if self._bundle is None:
            from plotly.offline import get_plotlyjs

            self._bundle = f"<script>{get_plotlyjs()}</script>".encode()
        with open(path, "wb") as f:
            f.write(head.encode())
            f.write(self._bundle)
            f.write(tail.encode())


def _save(out_dir: Path, name: str, fig_html: Any, fig_png: Any, plt: Any, html: _Html, report: Report) -> None:
    """Write ``name.html`` (plotly) and ``name.png`` (matplotlib Axes/array of Axes/Figure); close the figure."""
    figure = _mpl_figure(fig_png)
    try:
        html.write(fig_html, out_dir / f"{name}.html")
        report.files.append(f"{name}.html")
        figure.set_size_inches(*PNG_SIZE)
        try:
            figure.tight_layout()  # one layout pass; cheaper than savefig(bbox_inches="tight")
        except Exception:  # some layouts (colorbars) refuse it; the PNG is still fine
            pass
        # tight_layout leaves a placeholder layout engine behind (and optuna's history plot a
        # tight one), and savefig runs a whole extra draw for any engine; the layout is done
        figure.set_layout_engine(None)
        # zlib level 1 instead of 6: the same pixels, encoded in about 70% of the time,
        # in files ~30% larger (tens of kB, next to the MBs of each HTML file)
        figure.savefig(out_dir / f"{name}.png", dpi=PNG_DPI, pil_kwargs={"compress_level": 1})
        report.files.append(f"{name}.png")
    finally:
        plt.close(figure)


def _mpl_figure(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        obj = obj.flat[0]
    return getattr(obj, "figure", obj)
