"""One error hierarchy, mapped by the CLI to a one-line message, a hint and an exit code.

Exit codes: 0 success, 1 a failure that is not the input's fault (including a full disk or a folder that cannot
be written: `ResourceError`), 2 bad recipe or input, 3 a sign-off gate failed, 4 no gate failed but one is
inconclusive (its interval straddles its limit: measure again with more requests).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# errno values that mean "the machine", not the input or edgekd, stopped a write.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


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


class ResourceError(EdgekdError):
    """The environment stopped edgekd: the disk is full or a folder is not writable. Nothing is wrong with the
    recipe; the hint names the folder to fix, after which the same command resumes."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages), else its type's name."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def resource_error(exc: BaseException, folder: str | Path, doing: str) -> ResourceError | None:
    """A `ResourceError` when `exc` (or an exception it was raised from) means a full disk or a folder that
    cannot be written; None for any other failure.

    Libraries do not always raise `OSError` for these (safetensors and torch.save wrap them in their own
    exceptions), so besides the errno the system's own wording of the error is recognised.

    Args:
        exc: The exception that stopped a write.
        folder: The folder the user should look at (it goes into the hint).
        doing: What edgekd was doing, e.g. "writing the distill stage".
    """
    code = _resource_errno(exc)
    if code in DISK_FULL:
        return ResourceError(
            f"no space left on the device while {doing}",
            hint=f"free disk space in {folder}, then run the same command again to resume",
        )
    if code in NOT_WRITABLE:
        reason = os.strerror(code)
        return ResourceError(
            f"{reason[0].lower()}{reason[1:]} while {doing}",
            hint=f"check the permissions of {folder} (or use --output-dir), then run the same command again",
        )
    return None


def _resource_errno(exc: BaseException) -> int | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL | NOT_WRITABLE:
            return current.errno
        text = str(current)
        for code in sorted(DISK_FULL | NOT_WRITABLE):
            if os.strerror(code) in text:
                return code
        current = current.__cause__ or current.__context__
    return None


class GateFailed(EdgekdError):
    """At least one sign-off gate failed; the report is written and says which."""

    exit_code = 3


class GateInconclusive(EdgekdError):
    """No sign-off gate failed, but at least one is inconclusive: the 95% interval of its value straddles its
    limit, so the same files could pass or fail on another run. The report is written; the hint names the
    number of batch-1 requests to measure again with. Not a `GateFailed`: nothing was shown to be wrong."""

    exit_code = 4
