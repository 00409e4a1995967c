"""The registered model's aliases: ``tracking.alias`` on every new version, and ``tracking.promote``,
which moves an alias (``champion``) to the new version only when its test metric beats the version
another alias (by default the same one) points at.

MLflow's stages are deprecated in favour of aliases; ``models:/NAME@champion`` then loads the
version the last promotion chose. Every decision is recorded: tags on the parent run
(``hpo.promote``, ``hpo.registered_model``, set by the tracker) and on the new model version
(``hpo.promote.*``, here).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from hpo.metrics import is_better
from hpo.tracking.names import (
    VERSION_DECISION_TAG,
    VERSION_PREVIOUS_TAG,
    VERSION_PREVIOUS_VALUE_TAG,
    VERSION_VALUE_TAG,
    registered_uri,
)

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class Registered:
    """A registered version of the refit model and the aliases this study gave it."""

    name: str
    version: str
    aliases: tuple[str, ...] = ()
    decision: str | None = None  # tracking.promote: what it decided, in a sentence

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION``."""
        return registered_uri(self.name, self.version)

    def describe(self) -> str:
        """``models:/NAME/VERSION (@challenger, @champion)`` for the summary table."""
        tail = f" ({', '.join('@' + a for a in self.aliases)})" if self.aliases else ""
        return self.uri + tail


def _metric_of(client: Any, run_id: str, metric: str) -> float | None:
    value = client.get_run(run_id).data.metrics.get(metric)
    return None if value is None or not math.isfinite(value) else float(value)


def _version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        if getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def set_aliases(client: Any, *, name: str, version: str, test_metrics: dict[str, float],
                alias: str | None, promote: Any, metric: str | None, direction: str | None) -> Registered:
    """Give version ``version`` of registered model ``name`` its aliases and record the decision.

    ``alias`` is set unconditionally. With ``promote`` (a :class:`~hpo.spec.PromoteSpec`), its alias
    moves to the new version when there is no version under ``promote.rival``, or when the new test
    ``metric`` (from ``test_metrics``, keyed without ``test_``) beats that version's value of it in the
    ``direction`` — read from the run that registered it. A tie, a missing or non-finite value keeps
    the alias where it is, and the decision says why (the caller tags the parent run with it)."""
    aliases = []
    if alias:
        client.set_registered_model_alias(name, alias, version)
        aliases.append(alias)
    decision = None
    if promote is not None:
        assert metric is not None and direction is not None
        new = test_metrics.get(metric[len("test_"):])
        new = None if new is None or not math.isfinite(new) else float(new)
        rival = _version_by_alias(client, name, promote.rival)
        old = None if rival is None else _metric_of(client, rival.run_id, metric)
        if new is None:
            won, why = False, f"the new version has no finite {metric}"
        elif rival is None:
            won, why = True, f"no version held @{promote.rival}"
        elif rival.version == version:
            won, why = True, f"it already holds @{promote.rival}"
        elif old is None:
            won, why = False, f"version {rival.version} (@{promote.rival}) has no {metric} to compare with"
        else:
            won = is_better(new, old, direction)
            sign = (">" if new > old else "<" if new < old else "=")
            why = f"{metric} {new:.6g} {sign} {old:.6g} of version {rival.version} (@{promote.rival})"
        if won:
            client.set_registered_model_alias(name, promote.alias, version)
            aliases.append(promote.alias)
            decision = f"promoted: @{promote.alias} -> version {version} ({why})"
        else:
            decision = f"kept: @{promote.alias} not moved to version {version} ({why})"
        tags = {VERSION_DECISION_TAG: "promoted" if won else "kept"}
        if new is not None:
            tags[VERSION_VALUE_TAG] = repr(new)
        if rival is not None:
            tags[VERSION_PREVIOUS_TAG] = str(rival.version)
            if old is not None:
                tags[VERSION_PREVIOUS_VALUE_TAG] = repr(old)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        log.info("model %s: %s", name, decision)
    return Registered(name, version, tuple(aliases), decision)
