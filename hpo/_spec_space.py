"""The search space of a spec: :class:`Fixed`, :class:`Range` and :class:`Choice` parameters, and the
rules that turn the YAML ``params:`` mapping into them (bounds, steps, choices, ``when`` conditions,
grid sizes). Part of :mod:`hpo.spec`, which re-exports the public names; no torch, no MLflow.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from hpo.params import ARCHITECTURE_PARAMS, MODELS, PARAMS, check_value

MAX_GRID_POINTS = 100_000  # a grid search tries every point: above this it would not finish, and Optuna's grid sampler holds them all


MODEL_PREFIX = "model."  # a model factory's own keywords live in the space as "model.<keyword>"


def key_path(name: str) -> str:
    """The spec key of parameter ``name``: ``params.lr``, or ``model.params.hidden`` for ``model.hidden``."""
    if name.startswith(MODEL_PREFIX):
        return f"model.params.{name[len(MODEL_PREFIX):]}"
    return f"params.{name}"


def _check(name: str, value: Any, model: str) -> str | None:
    """``check_value`` for a known parameter; a factory's keyword is checked against its annotation later."""
    return None if name.startswith(MODEL_PREFIX) else check_value(name, value, model)


def closest(word: str, options: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``word``, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class Fixed:
    """A parameter held at one value in every trial."""

    name: str
    value: Any
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True)
class Range:
    """A numeric range; both bounds inclusive (Optuna's convention, everywhere in hpo)."""

    name: str
    low: float
    high: float
    is_int: bool
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def size(self) -> int:
        """Number of grid points of a stepped (or integer) range, computed: a huge grid is never built."""
        if self.is_int:
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        span = (self.high - self.low) / (self.step if self.step is not None else 1)
        return int(math.floor(span + 1e-9)) + 1 if math.isfinite(span) else sys.maxsize

    def grid(self) -> list[Any]:
        """The grid points of a stepped (or integer) range. Raises ValueError above MAX_GRID_POINTS."""
        n = self.size
        if n > MAX_GRID_POINTS:
            raise ValueError(f"{self.name}: {n} grid points, more than MAX_GRID_POINTS={MAX_GRID_POINTS}")
        step = self.step if self.step is not None else 1
        return [self.low + i * step if self.is_int else round(self.low + i * step, 12) for i in range(n)]


@dataclass(frozen=True)
class Choice:
    """A categorical choice among listed values."""

    name: str
    choices: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()


Param = Fixed | Range | Choice


def _approx(n: int) -> str:
    """``12,345`` or ``about 10^24``: a grid size may have hundreds of digits."""
    return f"{n:,}" if n < 10**7 else f"about 10^{len(str(n)) - 1}"


def check_grid_size(space: list[Param], problems: list) -> None:
    """Refuse a grid above MAX_GRID_POINTS, naming the parameter with the most values (sizes are computed)."""
    sizes = {p.name: (len(p.choices) if isinstance(p, Choice) else p.size) for p in space
             if isinstance(p, Choice) or (isinstance(p, Range) and (p.is_int or p.step is not None))}
    total = math.prod(sizes.values())
    if total > MAX_GRID_POINTS:
        widest = max(sizes, key=sizes.__getitem__)
        problems.append(("params", f"the grid has {_approx(total)} points, more than the {MAX_GRID_POINTS:,} a grid "
                         f"search may try ({key_path(widest)} alone has {_approx(sizes[widest])}); use a coarser step, "
                         "list fewer values, or use sampler random or tpe"))


_RANGE_KEYS = ("low", "high", "log", "step", "when", "choices")


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def same_value(a: Any, b: Any) -> bool:
    """``a == b`` without Python's ``True == 1``: a condition on a bool matches only true/false."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _parse_when(name: str, when: Any, params: dict[str, Any], problems: list) -> tuple:
    where = f"{key_path(name)}.when"
    if not isinstance(when, dict) or not when:
        problems.append((where, f"must be a mapping of parameter -> value or list of values (got {when!r})"))
        return ()
    out = []
    for other, values in when.items():
        if other not in params:
            problems.append((f"{where}.{other}", f"names a parameter that is not in params; give {other!r} a list of choices first{closest(other, list(params))}"))
            continue
        if other == name:
            problems.append((f"{where}.{other}", "a parameter cannot depend on itself"))
            continue
        vals = tuple(values) if isinstance(values, list) else (values,)
        if not vals:
            problems.append((f"{where}.{other}", f"an empty list never matches; list at least one of {other}'s values"))
            continue
        target = params[other]
        if isinstance(target, dict) and isinstance(target.get("choices"), list):
            target = target["choices"]
        allowed = target if isinstance(target, list) else [target] if not isinstance(target, dict) else None
        if allowed is None:
            problems.append((f"{where}.{other}", f"{other} is a range; a condition must name a categorical parameter (a list)"))
            continue
        for v in vals:
            if not any(same_value(v, a) for a in allowed):
                bools = " (a condition on true/false matches only true or false)" if any(
                    isinstance(a, bool) for a in allowed) and not isinstance(v, bool) else ""
                problems.append((f"{where}.{other}", f"{v!r} is not one of {other}'s values {allowed}{bools}"))
        out.append((other, vals))
    return tuple(out)


def _parse_choices(name: str, value: Any, check: Any, where: str, problems: list) -> tuple[Any, ...] | None:
    if not isinstance(value, list):
        problems.append((where, f"must be a list of values (got {value!r})"))
        return None
    if not value:
        problems.append((where, "an empty list gives nothing to choose from; list at least one value"))
        return None
    bad_type = [v for v in value if isinstance(v, dict | list)]
    if bad_type:
        problems.append((where, f"choices must be plain values, not {type(bad_type[0]).__name__}s (got {bad_type[0]!r})"))
        return None
    # equality, not spelling: 1 and 1.0 (and true and 1) are one value to Optuna and to the model
    firsts: dict[Any, Any] = {}
    for v in value:
        if v in firsts:
            problems.append((where, f"choices must be distinct: {firsts[v]!r} and {v!r} are equal (got {value!r})"))
            return None
        firsts[v] = v
    errs = [e for e in (check(name, v) for v in value) if e]
    if errs:
        problems.append((where, errs[0]))
        return None
    return tuple(value)


_FREE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"


def parse_params(params: dict[str, Any], model: str, problems: list, free: bool = False) -> list[Param]:
    """The space of ``params`` (training parameters, and a factory's keywords named ``model.<keyword>``);
    each problem is added to ``problems`` as ``(key path, rule)``. With ``free`` (a user objective) every
    name is the user's own, its kind taken from its values, as a factory's keywords are."""
    def check(name: str, value: Any) -> str | None:
        return None if free else _check(name, value, model)

    space: list[Param] = []
    for name, value in params.items():
        where = key_path(name)
        own = free or name.startswith(MODEL_PREFIX)  # a factory's keyword: any name, its kind from its values
        if free and not (isinstance(name, str) and re.match(_FREE_NAME, name)):
            problems.append((f"params.{name}", "must be a parameter name of letters, digits and '_' (up to 100, "
                             "not starting with a digit): it is the key your function reads from params"))
            continue
        if not own and name not in PARAMS:
            problems.append((where, f"unknown parameter; known: {', '.join(PARAMS)}{closest(name, list(PARAMS))}"))
            continue
        if not own and name == "init" and model not in MODELS:
            problems.append((where, f"applies to the built-in models ({', '.join(MODELS)}) only: a model factory "
                             "initialises its own weights; remove this key, or give your factory an init keyword "
                             "and set it under model.params:"))
            continue
        if not own and name in ARCHITECTURE_PARAMS and model not in MODELS:
            problems.append((where, f"is an architecture parameter of the built-in models ({', '.join(MODELS)}); "
                             f"a model factory takes its own keywords: put the factory's keyword under "
                             f"model.params: instead"))
            continue
        if not free and name == "batch_norm" and model == "resnet" and value is not True:
            problems.append((where, "resnet always uses batch norm; remove this key"))
            continue
        if isinstance(value, dict):
            unknown = [k for k in value if k not in _RANGE_KEYS]
            if unknown:
                problems.append((f"{where}.{unknown[0]}", f"unknown key; a range takes {', '.join(_RANGE_KEYS)}{closest(unknown[0], _RANGE_KEYS)}"))
                continue
            when = _parse_when(name, value["when"], params, problems) if "when" in value else ()
            if "choices" in value:
                extra = [k for k in value if k not in ("choices", "when")]
                if extra:
                    problems.append((f"{where}.{extra[0]}", "a mapping with choices takes only choices and when"))
                    continue
                choice = _parse_choices(name, value["choices"], check, f"{where}.choices", problems)
                if choice is not None:
                    space.append(Choice(name, choice, when) if len(choice) > 1 else Fixed(name, choice[0], when))
                continue
            if set(value) == {"when"}:
                problems.append((where, "a conditional parameter needs low/high or a list of values"))
                continue
            if "low" not in value or "high" not in value:
                missing = "low" if "low" not in value else "high"
                problems.append((f"{where}.{missing}", "required key is missing: a range needs low and high"))
                continue
            low, high = value["low"], value["high"]
            ok = True
            for key, v in (("low", low), ("high", high)):
                if not _is_num(v):
                    problems.append((f"{where}.{key}", f"must be a number (got {v!r})"))
                    ok = False
            if not ok:
                continue
            kind = "int" if own else PARAMS[name].kind
            if kind not in ("int", "float"):
                problems.append((where, f"{name} is a {kind} parameter: give a value or a list of values, not a range"))
                continue
            bounds_int = isinstance(low, int) and isinstance(high, int) and not isinstance(value.get("step"), float)
            # the parameter's kind decides: a float parameter stays float with integer bounds ({low: 0, high: 1});
            # a factory's keyword goes by its bounds here, and by its annotation once the factory is imported
            is_int = bounds_int if own else kind == "int"
            if is_int and not bounds_int:
                problems.append((where, f"{name} takes integers: low and high must be integers (got {low!r}, {high!r})"))
                continue
            if not free and name == "depth" and model == "resnet":
                problems.append((where, "resnet depth must be 6n+2: give a list, e.g. [20, 32, 44, 56]"))
                continue
            log = value.get("log", False)
            step = value.get("step")
            if not isinstance(log, bool):
                problems.append((f"{where}.log", f"must be true or false (got {log!r})"))
                continue
            if low > high:
                problems.append((where, f"low <= high must hold (got low={low!r}, high={high!r})"))
                continue
            if log and low <= 0:
                problems.append((f"{where}.low", f"must be > 0 when log is true (got {low!r})"))
                continue
            if step is not None:
                if not _is_num(step) or not math.isfinite(step) or step <= 0:
                    problems.append((f"{where}.step", f"must be a positive number (got {step!r})"))
                    continue
                if log:
                    problems.append((f"{where}.step", "cannot be combined with log: true (Optuna's rule)"))
                    continue
                if low < high and step > high - low:
                    problems.append((f"{where}.step", f"is larger than the range ({step!r} > high - low = "
                                     f"{high - low!r}): only low would ever be tried; use a smaller step, or "
                                     "a single value"))
                    continue
            bad = [(k, check(name, v)) for k, v in (("low", low), ("high", high))]
            bad = [(k, b) for k, b in bad if b]
            if bad:
                problems.append((f"{where}.{bad[0][0]}", bad[0][1]))
                continue
            if low == high:
                space.append(Fixed(name, low, when))
            else:
                space.append(Range(name, low, high, is_int, log, step, when))
        elif isinstance(value, list):
            choice = _parse_choices(name, value, check, where, problems)
            if choice is not None:
                space.append(Choice(name, choice) if len(choice) > 1 else Fixed(name, choice[0]))
        else:
            err = check(name, value)
            if err:
                problems.append((where, err))
                continue
            space.append(Fixed(name, value))
    _check_cycles(space, problems)
    return space


def _check_cycles(space: list[Param], problems: list) -> None:
    """Refuse ``when`` conditions that depend on each other in a circle: no parent-first order exists."""
    deps = {p.name: [d for d, _ in p.when] for p in space}
    for start in deps:
        path, todo = [start], [(start, iter(deps[start]))]
        while todo:
            _, it = todo[-1]
            nxt = next(it, None)
            if nxt is None:
                todo.pop()
                path.pop()
            elif nxt == start:
                cycle = " -> ".join([*path, start])
                problems.append((f"{key_path(start)}.when", f"conditions form a cycle ({cycle}); a parameter cannot depend on itself, even through others"))
                return
            elif nxt in deps and nxt not in path:
                path.append(nxt)
                todo.append((nxt, iter(deps[nxt])))
