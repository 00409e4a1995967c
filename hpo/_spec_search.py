"""The rules of ``search:`` beyond one key: each sampler's ``sampler_options`` and the spaces it can
search, the configurations of ``enqueue`` checked against the space, and the stop rules of ``stop``.
Part of :mod:`hpo.spec`; each check adds ``(key path, rule)`` problems and raises nothing. No Optuna
here: :mod:`hpo.search` turns what these allow into Optuna's samplers.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpo._spec_space import Choice, Fixed, Param, Range, closest, key_path, same_value


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TPEOptions(_Options):
    """``sampler_options`` of ``tpe`` (Optuna's ``TPESampler``)."""

    n_startup_trials: int | None = Field(None, ge=0)  # default: a third of n_trials, from 4 to 10
    multivariate: bool | None = None  # Optuna's default: on for a single objective, off for several
    group: bool = False  # with multivariate: conditional parameters modelled per group
    n_ei_candidates: int = Field(24, ge=1)
    constant_liar: bool | None = None  # default: on when trials run concurrently


class GPOptions(_Options):
    """``sampler_options`` of ``gp`` (Optuna's ``GPSampler``, a Gaussian process; needs torch, as hpo does)."""

    n_startup_trials: int | None = Field(None, ge=0)  # default: a third of n_trials, from 4 to 10
    deterministic_objective: bool = False


class CmaEsOptions(_Options):
    """``sampler_options`` of ``cmaes`` (Optuna's ``CmaEsSampler``; the ``cmaes`` package)."""

    n_startup_trials: int = Field(1, ge=0)
    with_margin: bool = False  # CMA-ES with margin: keeps integer and stepped parameters from collapsing
    use_separable_cma: bool = False
    lr_adapt: bool = False
    popsize: int | None = Field(None, ge=2)
    consider_pruned_trials: bool = False


class QMCOptions(_Options):
    """``sampler_options`` of ``qmc`` (Optuna's ``QMCSampler``: a space-filling low-discrepancy sequence)."""

    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True  # hpo's default (Optuna's is false): search.seed then picks the sequence


class NSGA2Options(_Options):
    """``sampler_options`` of ``nsga2`` (Optuna's ``NSGAIISampler``, a genetic algorithm for several objectives)."""

    population_size: int = Field(50, ge=2)
    mutation_prob: float | None = Field(None, ge=0, le=1)
    crossover_prob: float = Field(0.9, ge=0, le=1)
    swapping_prob: float = Field(0.5, ge=0, le=1)


SAMPLER_OPTIONS: dict[str, type[_Options] | None] = {
    "grid": None, "random": None, "tpe": TPEOptions, "gp": GPOptions, "cmaes": CmaEsOptions, "qmc": QMCOptions,
    "nsga2": NSGA2Options,
}
_NO_OPTIONS = {
    "grid": "grid search tries every point of the grid in turn and takes no options",
    "random": "random sampling draws every parameter independently and takes no options",
}
_GONE = {  # keys of Optuna's signatures hpo does not offer, and why
    "restart_strategy": "Optuna 4.4 stopped restarting CMA-ES (restarts moved to OptunaHub); leave it out, or "
                        "raise popsize",
    "x0": "deprecated in Optuna 4.9; put a known-good configuration in search.enqueue instead",
    "sigma0": "deprecated in Optuna 4.9; leave it out",
    "prior_weight": "deprecated in Optuna 4.9; leave it out",
    "consider_endpoints": "deprecated in Optuna 4.9; leave it out",
    "seed": "the sampler is seeded from search.seed",
}


def sampler_options(sampler: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``raw`` (a spec's checked ``sampler_options``) sets for ``sampler``."""
    model = SAMPLER_OPTIONS.get(sampler)
    return model.model_validate(raw).model_dump(exclude_none=True) if model is not None else {}


def check_sampler(sampler: str, raw: Any, space: list[Param], problems: list) -> None:
    """``search.sampler_options`` against its sampler's options, and the space against what the sampler
    can search (CMA-ES: numeric, unconditional, at least two ranges)."""
    where = "search.sampler_options"
    model = SAMPLER_OPTIONS[sampler]
    if raw:
        if model is None:
            problems.append((where, f"{_NO_OPTIONS[sampler]}; remove search.sampler_options"))
        else:
            _check_options(sampler, model, raw, where, problems)
    if sampler == "cmaes":
        _check_cmaes_space(space, problems)


def _check_options(sampler: str, model: type[_Options], raw: dict[str, Any], where: str, problems: list) -> None:
    valid = list(model.model_fields)
    for key in raw:
        if key in _GONE:
            problems.append((f"{where}.{key}", _GONE[key]))
        elif key not in valid:
            problems.append((f"{where}.{key}", f"not an option of sampler {sampler}; its options: "
                             f"{', '.join(valid)}{closest(key, valid)}"))
    known = {k: v for k, v in raw.items() if k in valid}
    try:
        opts = model.model_validate(known)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"][0].lower() + err["msg"][1:]
            msg = msg.replace("input should be", "must be")
            problems.append((f"{where}.{err['loc'][0]}", f"{msg} (got {err.get('input')!r})"))
        return
    if isinstance(opts, TPEOptions) and opts.group and opts.multivariate is False:
        problems.append((f"{where}.group", "needs the multivariate TPE: remove multivariate: false (Optuna "
                         "groups parameters only in the multivariate TPE)"))
    if isinstance(opts, CmaEsOptions):
        if opts.with_margin and opts.use_separable_cma:
            problems.append((f"{where}.with_margin", "cannot be combined with use_separable_cma (Optuna has no "
                             "separable CMA-ES with margin); choose one"))
        if opts.lr_adapt and (opts.with_margin or opts.use_separable_cma):
            problems.append((f"{where}.lr_adapt", "cannot be combined with with_margin or use_separable_cma "
                             "(Optuna's rule); choose one"))


def _check_cmaes_space(space: list[Param], problems: list) -> None:
    for p in space:
        if isinstance(p, Choice):
            problems.append((key_path(p.name), "sampler cmaes searches numeric ranges only and this is a list of "
                             "choices; use sampler tpe or gp, or give a range {low:, high:} (with step for a grid "
                             "of values)"))
        elif p.when:
            problems.append((f"{key_path(p.name)}.when", "sampler cmaes cannot search conditional parameters; use "
                             "sampler tpe or gp"))
    ranges = [p for p in space if isinstance(p, Range)]
    if len(ranges) < 2 and not any(isinstance(p, Choice) for p in space):
        problems.append(("search.sampler", f"cmaes needs at least two searched ranges (this space has "
                         f"{len(ranges)}; Optuna would sample a single one at random); use sampler tpe or gp"))


# ------------------------------------------------------------------------- enqueue


def check_enqueue(enqueue: list[Any], sampler: str, space: list[Param], fixed: dict[str, Any],
                  n_trials: int | None, problems: list) -> None:
    """Each configuration of ``search.enqueue``: searched names only, values in their domains, a
    conditional parameter only where its condition holds (``fixed``: the values that do not vary)."""
    if not enqueue:
        return
    if sampler == "grid":
        problems.append(("search.enqueue", "grid search tries every point of the grid already; remove "
                         "search.enqueue, or use sampler tpe, gp or random"))
        return
    if n_trials is not None and len(enqueue) > n_trials:
        problems.append(("search.enqueue", f"lists {len(enqueue)} configurations but search.n_trials is {n_trials}: "
                         "raise n_trials or list fewer"))
    by_name = {p.name: p for p in space}
    varying = [p.name for p in space if not isinstance(p, Fixed)]
    for i, item in enumerate(enqueue):
        where = f"search.enqueue[{i}]"
        if not isinstance(item, dict) or not item:
            problems.append((where, f"must be a mapping of parameter -> value, e.g. {{{(varying or ['lr'])[0]}: ...}} "
                             f"(got {item!r})"))
            continue
        values = {**fixed, **item}
        for name, value in item.items():
            p = by_name.get(name)
            at = f"{where}.{name}"
            if p is None:
                problems.append((at, f"is not a parameter of params; searched: {', '.join(varying) or 'none'}"
                                 f"{closest(name, varying)}"))
            elif isinstance(p, Fixed):
                problems.append((at, f"is fixed at {p.value!r} in {key_path(name)}: only searched parameters can be "
                                 "enqueued"))
            else:
                rule = _domain_rule(p, value) or _inactive_rule(p, values, item)
                if rule:
                    problems.append((at, rule))


def _domain_rule(p: Range | Choice, value: Any) -> str | None:
    if isinstance(p, Choice):
        if not any(same_value(value, c) for c in p.choices):
            return f"{value!r} is not one of {key_path(p.name)}'s choices {list(p.choices)}"
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return f"must be a number in [{p.low}, {p.high}] (got {value!r})"
    if p.is_int and not float(value).is_integer():
        return f"{key_path(p.name)} takes integers (got {value!r})"
    if not p.low <= value <= p.high:
        return f"{value!r} is outside {key_path(p.name)}'s range [{p.low}, {p.high}]"
    if p.step is not None:
        k = (value - p.low) / p.step
        if abs(k - round(k)) > 1e-9:
            return f"{value!r} is not on {key_path(p.name)}'s grid (low {p.low}, step {p.step})"
    return None


def _inactive_rule(p: Param, values: dict[str, Any], item: dict[str, Any]) -> str | None:
    for parent, allowed in p.when:
        if parent not in values:
            return (f"is conditional on {parent} ({key_path(p.name)}.when): give {parent} too, one of "
                    f"{list(allowed)}")
        if not any(same_value(values[parent], a) for a in allowed):
            return (f"is inactive when {parent} is {values[parent]!r} (its when: {parent} in {list(allowed)}); "
                    f"remove it or change {parent}")
    return None


# ------------------------------------------------------------------------- stop rules


class StopSpec(_Options):
    """``search.stop`` — stop proposing trials early: the best value reached ``target``, or it has not
    improved by ``min_delta`` in ``plateau_trials`` finished trials (complete, pruned or failed)."""

    target: float | None = None
    plateau_trials: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0)


class WarmStartSpec(_Options):
    """``search.warm_start`` — enqueue the ``top_k`` best configurations of another study in this store."""

    study: str = Field(min_length=1)
    top_k: int = Field(10, ge=1)


def check_stop(stop: StopSpec | None, problems: list) -> None:
    """A stop section that gives a rule, and ``min_delta`` only beside ``plateau_trials``."""
    if stop is None:
        return
    if stop.target is None and stop.plateau_trials is None:
        problems.append(("search.stop", "gives no rule: set target (stop once the best value reaches it) and/or "
                         "plateau_trials (stop after that many trials without improvement)"))
    elif stop.target is not None and not math.isfinite(stop.target):
        problems.append(("search.stop.target", f"must be a finite number (got {stop.target!r})"))
    if "min_delta" in stop.model_fields_set and stop.plateau_trials is None:
        problems.append(("search.stop.min_delta", "only means something with plateau_trials: the smallest "
                         "improvement that resets the count; add plateau_trials or remove min_delta"))


def check_warm_start(ws: WarmStartSpec | None, name: str, sampler: str, problems: list) -> None:
    """Warm start names another study, and not with grid search (checked against the store when the study opens)."""
    if ws is None:
        return
    if ws.study == name:
        problems.append(("search.warm_start.study", "names this study itself; to continue it use hpo run SPEC "
                         "--resume, or name another study in the same store"))
    if sampler == "grid":
        problems.append(("search.warm_start", "grid search tries every point of the grid already; remove "
                         "search.warm_start, or use sampler tpe, gp or random"))
