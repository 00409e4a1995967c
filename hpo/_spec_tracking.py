"""The parts of ``tracking:`` past the stores: the registered model's name and aliases
(``registered_model``, ``alias``, ``promote``), webhook notifications (``notify``), MLflow's
machine-wide system metrics (``system_metrics``) and the per-trial log cap (``log_max_kb``).

Part of :mod:`hpo.spec`; :func:`check_registry` and :func:`check_notify` add ``(key path, rule)``
problems and raise nothing. No MLflow here: :mod:`hpo.tracking.registry` sets the aliases and
:mod:`hpo.notify` posts the events.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from hpo.metrics import METRICS

if TYPE_CHECKING:
    from hpo.spec import TrackingSpec

NOTIFY_EVENTS = ("finished", "failed", "interrupted", "new_best")
# MLflow's alias rule: letters, digits, _ and -, not "latest" and not v<digits> (those name versions)
_ALIAS = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_MODEL_NAME = 256


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PromoteSpec(_Part):
    """``tracking.promote`` — move an alias to the new model version only when it beats another alias's."""

    alias: str = "champion"  # the alias that moves to the new version when it wins
    if_better_than: str | None = None  # the alias of the version to beat; default: alias itself
    metric: str | None = None  # a test metric of the refit model; default: test_<the study's metric>
    direction: Literal["maximize", "minimize"] | None = None  # default: the metric's own (required when unknown)

    @property
    def rival(self) -> str:
        """The alias whose version the new one must beat."""
        return self.if_better_than or self.alias


class NotifySpec(_Part):
    """``tracking.notify`` — post a JSON document to a webhook on the study's events."""

    url_env: str  # the environment variable holding the URL (never the URL itself)
    on: list[Literal["finished", "failed", "interrupted", "new_best"]] = Field(
        default_factory=lambda: ["finished", "failed", "interrupted"])
    timeout: float = Field(5.0, gt=0, le=60)  # seconds each post may take before it is given up (a warning)


def _alias_problem(alias: str) -> str | None:
    if not _ALIAS.match(alias):
        return f"an alias is 1-255 letters, digits, _ or - (got {alias!r})"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        return f"{alias!r} is reserved by MLflow (latest and v<N> name versions); choose another alias"
    return None


def promote_metric(t: TrackingSpec, study_metric: str, study_direction: str) -> tuple[str, str | None]:
    """``(test metric, direction or None)`` that ``tracking.promote`` compares (None: unknown here): the
    direction given, else the study's for ``test_<its metric>``, else hpo's metric's own."""
    p = t.promote
    assert p is not None
    metric = p.metric or f"test_{study_metric}"
    base = metric[len("test_"):] if metric.startswith("test_") else None
    if p.direction or base is None:
        return metric, p.direction
    if base == study_metric:
        return metric, study_direction
    return metric, METRICS[base].direction if base in METRICS else None


def check_registry(t: TrackingSpec, *, task: str, metric: str, direction: str, objective: bool, evaluate: bool,
                   problems: list) -> None:
    """``registered_model``, ``alias`` and ``promote``: MLflow's name rules, a metric the refit model
    is tested on, a direction for it, and two aliases that do not collide."""
    if t.registered_model is not None:
        if not t.registered_model.strip():
            problems.append(("tracking.registered_model", "must not be empty; leave it out to use the study name"))
        elif len(t.registered_model) > MAX_MODEL_NAME or "/" in t.registered_model or ":" in t.registered_model:
            problems.append(("tracking.registered_model", f"must be at most {MAX_MODEL_NAME} characters without "
                             f"'/' or ':' (MLflow's models:/NAME/VERSION URIs) (got {t.registered_model!r})"))
    for key, alias in (("alias", t.alias), ("promote.alias", t.promote and t.promote.alias),
                       ("promote.if_better_than", t.promote and t.promote.if_better_than)):
        rule = _alias_problem(alias) if alias else None
        if rule:
            problems.append((f"tracking.{key}", rule))
    p = t.promote
    if p is None:
        return
    if t.alias is not None and t.alias == p.alias:
        problems.append(("tracking.promote.alias", f"is also tracking.alias ({t.alias!r}), which every new version "
                         "gets: promotion would never decide anything; use another alias (e.g. challenger)"))
    test_metric, direction = promote_metric(t, metric, direction)
    if objective and not evaluate:
        problems.append(("tracking.promote", "compares the refit model's test metrics, and a user objective has none "
                         "without objective.evaluate: add evaluate: 'module:function', or leave promote out"))
        return
    if not test_metric.startswith("test_"):
        problems.append(("tracking.promote.metric", f"compares a test metric of the refit model: test_<metric> "
                         f"(e.g. test_{metric}) (got {test_metric!r})"))
        return
    base = test_metric[len("test_"):]
    if not objective:
        fits = [m for m, i in METRICS.items() if i.task == task]
        if base not in fits:
            problems.append(("tracking.promote.metric", f"the refit model is tested on "
                             f"{', '.join('test_' + m for m in fits)} for a {task} task (got {test_metric!r})"))
            return
    if direction is None:
        problems.append(("tracking.promote.direction", f"is required: hpo does not know whether a higher or lower "
                         f"{test_metric} is better (maximize or minimize)"))
    elif base in METRICS and p.direction and p.direction != METRICS[base].direction:
        problems.append(("tracking.promote.direction", f"{base} is better when "
                         f"{'higher' if METRICS[base].direction == 'maximize' else 'lower'}: direction must be "
                         f"{METRICS[base].direction} (got {p.direction})"))


def check_notify(t: TrackingSpec, problems: list) -> None:
    """``notify.url_env`` names an environment variable (not a URL); ``on`` lists each event once."""
    n = t.notify
    if n is None:
        return
    if "://" in n.url_env or n.url_env.lower().startswith(("http", "www.")):
        problems.append(("tracking.notify.url_env", "names the environment variable that holds the webhook URL, "
                         "never the URL itself (a URL in the spec is stored on the parent run): e.g. url_env: "
                         "HPO_WEBHOOK_URL, then export HPO_WEBHOOK_URL=..."))
    elif not _ENV_NAME.match(n.url_env):
        problems.append(("tracking.notify.url_env", f"must be an environment variable name: letters, digits and _, "
                         f"not starting with a digit (got {n.url_env!r})"))
    if not n.on:
        problems.append(("tracking.notify.on", f"must list at least one event of {', '.join(NOTIFY_EVENTS)}; leave "
                         "notify out to post nothing"))
    elif len(set(n.on)) != len(n.on):
        problems.append(("tracking.notify.on", f"lists an event twice (got {n.on})"))
