"""The configurations a new study tries first: ``search.enqueue`` (checked against the space when
the spec is loaded) and ``search.warm_start`` (the best configurations of another study in the same
Optuna storage, checked against this study's space before anything is written).

They are enqueued once, when the study is created (Optuna's ``enqueue_trial``); a resume finds them
in the queue, or already run. Parameters a configuration leaves out are sampled as usual.
"""

from __future__ import annotations

from typing import Any

from hpo.spec import Choice, Range, Spec

ENQUEUED_ATTR = "hpo.enqueued"  # on the study: how many configurations were enqueued when it was created
SOURCE_ATTR = "hpo.source"  # on a trial: "enqueue" or "warm_start OTHER#N", where its parameters came from


def distributions(spec: Spec) -> dict[str, Any]:
    """Optuna's distribution of every searched parameter of ``spec`` (what ``suggest`` asks for)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in spec.space:
        if isinstance(p, Range) and p.is_int:
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        elif isinstance(p, Range):
            out[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)
        elif isinstance(p, Choice):
            out[p.name] = CategoricalDistribution(list(p.choices))
    return out


def _show(d: Any) -> str:
    from optuna.distributions import CategoricalDistribution

    if isinstance(d, CategoricalDistribution):
        return f"choices {list(d.choices)}"
    extra = " log" if d.log else (f" step {d.step}" if d.step not in (None, 1) else "")
    return f"[{d.low}, {d.high}]{extra}"


def warm_start_configs(spec: Spec, storage: Any) -> list[tuple[dict[str, Any], str]]:
    """The ``top_k`` best complete trials of ``search.warm_start.study`` as ``(params, source)``.

    Raises :class:`~hpo.errors.SpecError` (key ``search.warm_start.study``) when that study is not in
    ``storage``, has several objectives or no complete trial, or searched other names or domains."""
    import optuna
    from optuna.trial import TrialState

    from hpo.errors import SpecError

    ws = spec.search.warm_start
    if ws is None:
        return []
    key = "search.warm_start.study"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    if ws.study not in names:
        others = [n for n in names if n != spec.name]
        raise SpecError([(key, f"no study {ws.study!r} in this study's Optuna storage; studies there: "
                          f"{', '.join(others) or 'none'} (warm start reads the store of tracking.uri / "
                          "tracking.storage)")], spec.path)
    other = optuna.load_study(study_name=ws.study, storage=storage)
    if len(other.directions) > 1:
        raise SpecError([(key, f"study {ws.study!r} has {len(other.directions)} objectives; warm start ranks "
                          "the trials of a single-objective study")], spec.path)
    done = [t for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        raise SpecError([(key, f"study {ws.study!r} has no complete trial to start from; run it first or "
                          "remove search.warm_start")], spec.path)
    ours, theirs = distributions(spec), {}
    for t in done:
        theirs.update(t.distributions)
    diffs = [f"{n} is {_show(theirs[n])} there and {_show(ours[n])} here" for n in ours
             if n in theirs and theirs[n] != ours[n]]
    diffs += [f"{n} is not searched there" for n in ours if n not in theirs]
    diffs += [f"{n} is searched there, not here" for n in theirs if n not in ours]
    if diffs:
        raise SpecError([(key, f"study {ws.study!r} searched another space ({'; '.join(diffs)}); warm start "
                          "needs the same parameter names and domains: align params, or list the "
                          "configurations you want in search.enqueue")], spec.path)
    sign = -1.0 if other.direction.name == "MAXIMIZE" else 1.0
    best = sorted(done, key=lambda t: (sign * t.value, t.number))[: ws.top_k]
    return [(dict(t.params), f"warm_start {ws.study}#{t.number}") for t in best]


def enqueue_first(study: Any, spec: Spec, warm: list[tuple[dict[str, Any], str]]) -> int:
    """Enqueue ``search.enqueue`` then the ``warm`` configurations (duplicates once) on a study just
    created; returns how many. A study that has trials, or enqueued before, is left as it is."""
    if ENQUEUED_ATTR in study.user_attrs or study.get_trials(deepcopy=False):
        return 0
    seen: list[dict[str, Any]] = []
    for params, source in [(dict(c), "enqueue") for c in spec.search.enqueue] + warm:
        if params in seen:
            continue
        seen.append(params)
        study.enqueue_trial(params, user_attrs={SOURCE_ATTR: source}, skip_if_exists=False)
    study.set_user_attr(ENQUEUED_ATTR, len(seen))
    return len(seen)
