"""The figure builders of :mod:`hpo.report`: each returns one plot as a plotly figure (HTML) and a
matplotlib one (PNG), or raises :class:`Skip` when the study cannot have it.

Parallel coordinates as one ``Parcoords`` trace, the parameter importances (computed and drawn),
the learning curves of every trial, and the refit model on the test split: a confusion matrix
(classification) or predicted against true values (regression). Choosing which plots a study
gets, saving and uploading them is :mod:`hpo.report`'s job; plotly, matplotlib, optuna and torch
are imported inside the builders, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

log = logging.getLogger("hpo")

IMPORTANCE_EVALUATOR = "mean_decrease_impurity"  # see param_importances for why not fANOVA
STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728"}
BEST_COLOR = "#2ca02c"


class Skip(Exception):
    """A plot that this study cannot have (not an error)."""


def parcoords(study: Any, target: str) -> Any:
    """Parallel coordinates as one plotly ``Parcoords`` trace (axes can be brushed to filter trials).

    Optuna 5's ``plot_parallel_coordinate`` draws one ``Scatter`` per trial, about 2 s for
    1000 trials; this reuses its axis preparation (log axes, categorical ticks, a ``None``
    tick for conditional parameters) and draws all trials at once. Falls back to Optuna's
    figure if that internal helper changes.
    """
    import optuna.visualization as vis

    try:
        import plotly.graph_objects as go
        from optuna.visualization._parallel_coordinate import _get_parallel_coordinate_info
        from optuna.visualization._utils import COLOR_SCALE

        info = _get_parallel_coordinate_info(study, None, None, target)
        dims = list(info.dims_objectives) + list(info.dims_params)
        if not info.dims_params or not dims[0].values:
            raise Skip("no complete trial with parameters")
        color = list(getattr(info, "color_values", ()) or dims[0].values)
        fig = go.Figure(go.Parcoords(
            dimensions=[{"label": d.label, "values": list(d.values), "range": list(d.range),
                         **({"tickvals": list(d.tickvals), "ticktext": list(d.ticktext)} if d.tickvals else {})}
                        for d in dims],
            line={"color": color, "colorscale": COLOR_SCALE, "reversescale": info.reverse_scale,
                  "showscale": True, "colorbar": {"title": {"text": info.colorbar_title}}},
            labelangle=-20,
        ))
        fig.update_layout(title=f"Parallel coordinates: {target} and the parameters of "
                                f"{len(dims[0].values)} complete trials (drag on an axis to filter)",
                          margin={"t": 130})
        return fig
    except Skip:
        raise
    except Exception as exc:
        log.debug("report: Parcoords fast path failed (%s); using optuna's plot", exc)
        return vis.plot_parallel_coordinate(study, target_name=target)


def param_importances(study: Any, complete: list[Any]) -> dict[str, float]:
    """Normalised importances of the parameters every complete trial sampled.

    Optuna's default fANOVA evaluator needs about 2 s at 100 trials and over a minute at
    1000 on two cores; the seeded mean-decrease-impurity evaluator (a random forest, like
    fANOVA) agrees closely with it and takes a fraction of a second at 1000, so a report
    stays cheap at any study size and importances stay comparable between studies.
    """
    import optuna
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator

    if len(complete) < 2:
        raise Skip(f"needs 2 complete trials, the study has {len(complete)}")
    values = {t.value for t in complete}
    if len(values) < 2:
        raise Skip("every complete trial has the same value")
    shared = set(complete[0].params)
    for t in complete[1:]:
        shared &= set(t.params)
    varying = [p for p in sorted(shared) if len({repr(t.params[p]) for t in complete}) > 1]
    if not varying:
        raise Skip("no parameter varies across the complete trials")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = optuna.importance.get_param_importances(
            study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=0), params=varying, normalize=True)
    out = {k: float(v) for k, v in raw.items() if math.isfinite(float(v))}
    total = sum(out.values())
    if not out or total <= 0:
        raise Skip("the importance evaluator found no variance to explain")
    return {k: v / total for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def importance_figures(importances: dict[str, float], target: str, plt: Any) -> tuple[Any, Any]:
    """The importances as horizontal bars, largest on top."""
    import plotly.graph_objects as go

    names = list(importances)[::-1]  # largest on top
    vals = [importances[n] for n in names]
    title = f"Parameter importances for {target} ({IMPORTANCE_EVALUATOR.replace('_', ' ')})"
    fig = go.Figure(go.Bar(x=vals, y=names, orientation="h", text=[f"{v:.2f}" for v in vals],
                           textposition="outside", marker_color=STATE_COLORS["COMPLETE"],
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="importance (sums to 1)", yaxis_title="parameter",
                      xaxis_range=[0, max(1.0, max(vals) * 1.15)])
    f, ax = plt.subplots()
    bars = ax.barh(names, vals, color=STATE_COLORS["COMPLETE"])
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], padding=3)
    ax.set_xlim(0, max(1.0, max(vals) * 1.15))
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(title)
    return fig, f


def curve_figures(study: Any, trials: list[Any], metric: str, plt: Any) -> tuple[Any, Any]:
    """Learning curves of every trial, one trace per state (None-separated), pruned ends marked."""
    import plotly.graph_objects as go
    from matplotlib.collections import LineCollection

    curves = [(t, sorted(t.intermediate_values.items())) for t in trials if t.intermediate_values]
    if not curves:
        raise Skip("no trial reported an intermediate value")
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    label = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    alpha = 0.8 if len(curves) <= 50 else 0.35
    fig = go.Figure()
    f, ax = plt.subplots()
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        group = [(t, c) for t, c in curves if t.state.name == state and t.number != best]
        if not group:
            continue
        xs: list[Any] = []
        ys: list[Any] = []
        hover: list[Any] = []
        for t, c in group:
            xs += [s for s, _ in c] + [None]
            ys += [v for _, v in c] + [None]
            hover += [f"trial {t.number}" for _ in c] + [None]
        dash = "dash" if state == "PRUNED" else ("dot" if state == "FAIL" else "solid")
        color = STATE_COLORS[state]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{label[state]} ({len(group)})",
                                 line={"color": color, "dash": dash, "width": 1}, marker={"size": 3},
                                 opacity=alpha, text=hover, connectgaps=False,
                                 hovertemplate="%{text}<br>epoch %{x}: %{y:.4f}<extra></extra>"))
        segs = [list(c) for _, c in group if len(c) > 1]
        ls = {"PRUNED": "--", "FAIL": ":"}.get(state, "-")
        ax.add_collection(LineCollection(segs, colors=color, linestyles=ls, linewidths=1, alpha=alpha,
                                         label=f"{label[state]} ({len(group)})"))
        singles = [c[0] for _, c in group if len(c) == 1]
        if singles:
            ax.scatter(*zip(*singles, strict=True), color=color, s=8, alpha=alpha)
        if state == "PRUNED":
            ends = [c[-1] for _, c in group]
            fig.add_trace(go.Scatter(x=[e[0] for e in ends], y=[e[1] for e in ends], mode="markers",
                                     name="pruned here", marker={"symbol": "x", "size": 9, "color": color},
                                     text=[f"trial {t.number} pruned" for t, _ in group],
                                     hovertemplate="%{text} after epoch %{x}<extra></extra>"))
            ax.scatter([e[0] for e in ends], [e[1] for e in ends], marker="x", color=color, s=40,
                       label="pruned here", zorder=3)
    best_curve = next((c for t, c in curves if t.number == best), None)
    if best_curve:
        fig.add_trace(go.Scatter(x=[s for s, _ in best_curve], y=[v for _, v in best_curve], mode="lines+markers",
                                 name=f"best (trial {best})", line={"color": BEST_COLOR, "width": 3},
                                 hovertemplate=f"trial {best} (best)<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>"))
        ax.plot([s for s, _ in best_curve], [v for _, v in best_curve], color=BEST_COLOR, linewidth=2.5,
                marker="o", markersize=3, label=f"best (trial {best})", zorder=4)
    title = f"Learning curves: validation {metric} (fold mean) per epoch"
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=f"val {metric}", legend_title="trials")
    fig.update_xaxes(tickformat="d", dtick=1 if max(len(c) for _, c in curves) <= 20 else None)
    ax.autoscale()
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {metric}")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig, f


def model_outputs(model: Any, x: Any, batch: int = 1024) -> Any:
    """Model outputs on ``x``, batched, on the model's device, as a float numpy array: ``x`` is an array, or
    a torch Dataset of ``(input, target)`` items (a user objective's data; the input may be a tuple)."""
    import numpy as np
    import torch

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            if not isinstance(x, np.ndarray):
                for items in torch.utils.data.DataLoader(x, batch_size=batch):
                    inputs = items[0] if isinstance(items, (tuple, list)) else items
                    inputs = torch.utils._pytree.tree_map(lambda t: t.to(device), inputs)  # a tensor or a tuple of them
                    outs.append(model(inputs).float().cpu().numpy())
            for i in range(0, len(x) if isinstance(x, np.ndarray) else 0, batch):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device)
                outs.append(model(xb).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0,))


def _test_score(metric: str, y: Any, output: Any, n_classes: int) -> str:
    from hpo.metrics import compute_metric

    try:
        return f"test {metric} {compute_metric(metric, y, output, n_classes):.4f}"
    except Exception:  # a metric that does not fit (e.g. one class in a tiny test split)
        return f"test {metric} n/a"


def confusion_figures(model: Any, dataset: Any, metric: str, plt: Any) -> tuple[Any, Any]:
    """The refit model's confusion matrix on the test split, with its test score in the title."""
    import numpy as np
    import plotly.graph_objects as go

    logits = model_outputs(model, dataset.x_test)
    if logits.ndim != 2 or len(logits) == 0:
        raise Skip(f"the model's outputs have shape {logits.shape}, expected (N, classes)")
    n = max(int(dataset.n_classes), logits.shape[1])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    y = np.asarray(dataset.y_test).astype(int)
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (y, pred), 1)
    names = list(dataset.class_names) if len(dataset.class_names) == n else [str(i) for i in range(n)]
    title = (f"Confusion matrix of the refit model on the test split ({len(y)} examples, "
             f"{_test_score(metric, y, probs, n)})")
    annotate = n <= 20
    fig = go.Figure(go.Heatmap(z=cm, x=names, y=names, colorscale="Blues", showscale=True,
                               text=cm if annotate else None, texttemplate="%{text}" if annotate else None,
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                      xaxis_type="category", yaxis_type="category")
    f, ax = plt.subplots()
    im = ax.imshow(cm, cmap="Blues")
    f.colorbar(im, ax=ax)
    if annotate:
        ticks = range(n)
        ax.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
        ax.set_yticks(ticks, names)
        hi = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > hi else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    ax.grid(False)
    return fig, f


def regression_figures(model: Any, dataset: Any, metric: str, plt: Any) -> tuple[Any, Any]:
    """The refit model's predictions against the true test targets, with its test score in the title."""
    import numpy as np
    import plotly.graph_objects as go

    pred = model_outputs(model, dataset.x_test).reshape(-1)
    y = np.asarray(dataset.y_test, dtype=np.float64).reshape(-1)
    if len(pred) != len(y) or len(y) == 0:
        raise Skip(f"{len(pred)} predictions for {len(y)} test targets")
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    title = (f"Predicted vs true, refit model on the test split ({len(y)} examples, "
             f"{_test_score(metric, y, pred, 0)})")
    fig = go.Figure([
        go.Scatter(x=y, y=pred, mode="markers", name="test examples", marker={"size": 6, "opacity": 0.7},
                   hovertemplate="true %{x:.4g}<br>predicted %{y:.4g}<extra></extra>"),
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = true",
                   line={"color": "grey", "dash": "dash"}),
    ])
    fig.update_layout(title=title, xaxis_title="true", yaxis_title="predicted")
    f, ax = plt.subplots()
    ax.scatter(y, pred, s=12, alpha=0.7, label="test examples")
    ax.plot([lo, hi], [lo, hi], "--", color="grey", label="predicted = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return fig, f
