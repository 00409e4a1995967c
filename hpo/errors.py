"""Exceptions that hpo turns into one clear message and exit code 2."""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every error hpo reports to the user without a traceback.

    The message must say what is wrong and, where it can, what to do next.
    """

    exit_code = 2


class SpecError(HpoError):
    """A study spec breaks a rule.

    Rendered as ``FILE: KEY.PATH: RULE (got VALUE)``, one line per problem.
    """

    def __init__(self, problems: list[tuple[str, str]], file: str | None = None) -> None:
        self.problems = list(problems)
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        prefix = f"{self.file}: " if self.file else ""
        return "\n".join(f"{prefix}{path}: {rule}" if path else f"{prefix}{rule}" for path, rule in self.problems)

    def with_file(self, file: str) -> SpecError:
        """Return the same problems attributed to ``file``."""
        return SpecError(self.problems, file)


class DataError(HpoError):
    """A dataset cannot be loaded: missing files, a bad CSV, a checksum mismatch."""


class TrackingError(HpoError):
    """The tracking store cannot be reached or used."""


class StudyExistsError(HpoError):
    """A study of that name already has trials in the storage."""


class RefitError(HpoError):
    """The search finished but the refit of the best trial, its model logging or the report failed.

    The trials are kept and the study's run ends FAILED; ``hpo run SPEC --resume`` refits again.
    Exit code 1: the input was fine, the run was not.
    """

    exit_code = 1


class NoFeasibleTrial(HpoError):
    """The search finished but no complete trial meets ``search.constraints``: nothing is refit.

    Exit code 1; the parent run ends FAILED with the reason. ``--resume --n-trials N`` runs more trials.
    """

    exit_code = 1
