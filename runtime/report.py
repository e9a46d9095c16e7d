"""How the runtime tells a person what it is doing, without deciding how that is shown.

The training loop and the evaluation talk to a :class:`Reporter`: one-line messages ("resuming
RUN at iteration 1000 of 30000") and the progress of a task (``train``, ``eval``) with optional
figures (loss, learning rate, speed). :class:`LineReporter`, the default, writes plain lines to
standard error; :data:`SILENT` shows nothing (the other processes of a ``torchrun`` job). The
command line passes its own, a rich progress bar (``specc.cli.render.RichReporter``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TextIO


class Progress(Protocol):
    """One task under way."""

    def update(self, done: int, **stats: float) -> None:
        """``done`` steps of the task's total are finished; ``stats`` are new figures to show
        (``loss``, ``lr``, ``speed`` in iterations per second, ...)."""


class Reporter(Protocol):
    """Where the runtime's messages and progress go."""

    def message(self, text: str) -> None:
        """A one-line note for the person running the job."""

    def progress(self, task: str, total: int | None, done: int = 0,
                 **stats: float) -> AbstractContextManager[Progress]:
        """A task of ``total`` steps (None: unknown), ``done`` of them already finished, ``stats``
        its first figures; the context ends with the task (or its failure)."""


class _NoProgress:
    def update(self, done: int, **stats: float) -> None:
        pass


class _Silent:
    """Shows nothing."""

    def message(self, text: str) -> None:
        pass

    @contextmanager
    def progress(self, task: str, total: int | None, done: int = 0,
                 **stats: float) -> Iterator[Progress]:
        yield _NoProgress()


#: A reporter that shows nothing.
SILENT: Reporter = _Silent()


class _LineProgress:
    def __init__(self, reporter: LineReporter, task: str, total: int | None) -> None:
        self.reporter, self.task, self.total = reporter, task, total

    def update(self, done: int, **stats: float) -> None:
        if not stats:  # a line per step would flood a log; figures come at the logging interval
            return
        of = f"/{self.total}" if self.total is not None else ""
        figures = "  ".join(_figure(k, v) for k, v in stats.items())
        self.reporter.message(f"{self.task} {done}{of}  {figures}")


def _figure(key: str, value: float) -> str:
    if key == "lr":
        return f"lr {value:.2e}"
    if key == "speed":
        return f"{value:.2f} it/s"
    return f"{key} {value:.4f}"


class LineReporter:
    """Plain lines on a stream (standard error by default): each message, and a task's figures
    whenever they change (``train 20/100  loss 0.8123  lr 9.10e-03  3.21 it/s``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def message(self, text: str) -> None:
        stream = self._stream or sys.stderr  # looked up late: sys.stderr may be replaced
        stream.write(text + "\n")
        stream.flush()

    @contextmanager
    def progress(self, task: str, total: int | None, done: int = 0,
                 **stats: float) -> Iterator[Progress]:
        yield _LineProgress(self, task, total)
