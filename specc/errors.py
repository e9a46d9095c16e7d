"""Error types that the command line turns into one clear message and exit code 2.

Every problem a user can cause (a bad spec, a missing file, a corrupt image, weights that do not
fit) is raised as a :class:`SpeccError`; anything else is a bug in specc and is allowed to show
its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class SpeccError(Exception):
    """A problem with the user's input. ``str(err)`` is the whole message shown to the user."""


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file and a 1-based line and column (0 when unknown)."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


class SpecError(SpeccError):
    """An invalid spec: says where (file:line:col), which key, what was expected and found."""

    def __init__(self, message: str, *, location: Location | None = None, path: str = "") -> None:
        self.location = location
        self.path = path
        self.detail = message
        prefix = f"{location}: " if location else ""
        key = f"{path}: " if path else ""
        super().__init__(f"{prefix}{key}{message}")


class SpecErrors(SpeccError):
    """Several spec errors found at once; shown one per line, in file order."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class DataError(SpeccError):
    """A data set on disk that cannot be used: names the file and what is wrong with it."""


class WeightsError(SpeccError):
    """Weights that do not fit a model: lists what is missing, unexpected or of the wrong shape."""


class SpeccWarning(UserWarning):
    """Something the user should know that does not stop the command (an int8 artifact run on a
    CPU whose int8 arithmetic it was not quantized for); the command line prints it as one
    ``warning:`` line."""


class TrainingError(SpeccError):
    """Training cannot go on (a non-finite loss, a checkpoint of another architecture, ...)."""
