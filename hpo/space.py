"""Spec parameters -> Optuna suggestions, and the full parameter set of a trial.

One bounds convention everywhere: both ends inclusive, as in Optuna. Conditional
parameters (``when``) are only suggested when their condition holds; otherwise the
trial uses the parameter's default and the parameter is not part of the sampled set.
A model factory's keywords are parameters named ``model.<keyword>``; one that is not active is
left out, so the factory's own default applies.
"""

from __future__ import annotations

from typing import Any

from hpo.spec import Choice, Fixed, Param, Range, Spec


def _ordered(space: tuple[Param, ...]) -> list[Param]:
    """Parents before the parameters that depend on them."""
    done: set[str] = set()
    out: list[Param] = []
    pending = list(space)
    while pending:
        progressed = False
        for p in list(pending):
            if all(dep in done for dep, _ in p.when):
                out.append(p)
                done.add(p.name)
                pending.remove(p)
                progressed = True
        if not progressed:  # a cycle; spec validation names unknown parents, so keep order
            out.extend(pending)
            break
    return out


def _active(p: Param, values: dict[str, Any]) -> bool:
    return all(values.get(dep) in allowed for dep, allowed in p.when)


def _walk(spec: Spec, pick) -> tuple[dict[str, Any], dict[str, Any]]:
    """Go through the space parents-first; ``pick(param)`` gives a varying parameter's value."""
    values = spec.defaults()
    sampled: dict[str, Any] = {}
    for p in _ordered(spec.space):
        if not _active(p, values):
            continue
        if isinstance(p, Fixed):
            values[p.name] = p.value
        else:
            v = pick(p)
            if v is not None:
                sampled[p.name] = values[p.name] = v
    return values, sampled


def suggest(trial: Any, spec: Spec) -> dict[str, Any]:
    """Ask Optuna ``trial`` for every active varying parameter; returns name -> value.

    ``trial`` is an ``optuna.trial.Trial`` (not imported here, so records stay Optuna-free).
    """

    def pick(p: Param) -> Any:
        if isinstance(p, Range):
            if p.is_int:
                return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            return trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return trial.suggest_categorical(p.name, list(p.choices))

    return _walk(spec, pick)[1]


def resolve(spec: Spec, sampled: dict[str, Any]) -> dict[str, Any]:
    """Every parameter a trial trains with: defaults, then active fixed values, then ``sampled``."""
    return _walk(spec, lambda p: sampled.get(p.name))[0]


def grid(spec: Spec) -> dict[str, list[Any]]:
    """The search space of Optuna's ``GridSampler``: name -> list of values."""
    out: dict[str, list[Any]] = {}
    for p in spec.space:
        if isinstance(p, Choice):
            out[p.name] = list(p.choices)
        elif isinstance(p, Range):
            out[p.name] = p.grid()
    return out


def describe(spec: Spec) -> list[tuple[str, str, str]]:
    """Rows ``(name, kind, values)`` describing the resolved space, for ``hpo validate``."""
    rows = []
    given = {p.name for p in spec.space}
    for p in spec.space:
        cond = ""
        if p.when:
            cond = "  when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when)
        if isinstance(p, Range):
            kind = "int" if p.is_int else "float"
            extra = " log" if p.log else (f" step {p.step}" if p.step else "")
            rows.append((p.name, f"{kind} range{extra}", f"[{p.low}, {p.high}]{cond}"))
        elif isinstance(p, Choice):
            rows.append((p.name, "choice", f"{list(p.choices)}{cond}"))
        else:
            rows.append((p.name, "fixed", f"{p.value!r}{cond}"))
    for name, value in spec.fixed_params().items():
        if name not in given:
            rows.append((name, "default", repr(value)))
    return rows
