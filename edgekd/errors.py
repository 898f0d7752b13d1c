"""One error hierarchy, mapped by the CLI to a one-line message, a hint and an exit code.

Exit codes: 0 success, 1 unexpected failure, 2 bad recipe or input, 3 a sign-off gate failed.
"""

from __future__ import annotations


class EdgekdError(Exception):
    """Base class for every error edgekd reports to a user.

    Args:
        message: What went wrong, in one line.
        hint: What to change so it works (optional).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class RecipeError(EdgekdError):
    """The recipe (YAML or overrides) is invalid. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, path: str, problems: list[str], hint: str | None = None) -> None:
        self.path = path
        self.problems = problems
        head = f"{path}: {len(problems)} problem(s) in recipe"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems), hint)


class DataError(EdgekdError):
    """The dataset cannot be used as the recipe describes it."""

    exit_code = 2


class InputError(EdgekdError):
    """A model folder, file or command-line argument is unusable."""

    exit_code = 2


class MissingDependencyError(EdgekdError):
    """An optional dependency is not installed; the hint names the extra to install."""

    exit_code = 2

    def __init__(self, module: str, extra: str = "train") -> None:
        super().__init__(
            f"this needs the Python package '{module}', which is not installed",
            hint=f"pip install 'edgekd[{extra}]'",
        )


class StageError(EdgekdError):
    """A pipeline stage failed for a reason that is not the user's input."""

    exit_code = 1


class ParityError(StageError):
    """The exported ONNX model's outputs differ from the PyTorch model's beyond tolerance."""


class RunLockedError(EdgekdError):
    """Another edgekd process holds the lock on this run folder."""

    exit_code = 2


class GateFailed(EdgekdError):
    """At least one sign-off gate failed; the report is written and says which."""

    exit_code = 3
