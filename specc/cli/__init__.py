"""The ``specc`` command line (typer). Exit codes: 0 ok, 1 differs (``--check``, ``diff``), 2 error.

A shell over plain libraries: the commands live in :mod:`specc.cli.compiler` and
:mod:`specc.cli.runtime`, what they print in :mod:`specc.cli.render`; the compiler (``specc.*``)
and the runtime (``runtime.*``) import neither typer nor rich.

Every problem with the user's input is a :class:`~specc.errors.SpeccError`; :func:`main` prints
its message (file:line:col, key, expected, found) and exits 2, never with a traceback. Under
torchrun, a message that every process stops on is printed once, by rank 0.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable
from typing import TextIO

import typer

from specc.cli import bench, compiler, runtime
from specc.cli.render import err, error_text, os_error_text
from specc.cli.zoo import zoo
from specc.errors import SpeccError, SpeccWarning

app = typer.Typer(
    name="specc",
    help="Compile DeepLabv3 / DeepLabv3+ model specs to PyTorch and TorchScript; train and "
         "compare them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for _name, _command in (
    ("validate", compiler.validate), ("build", compiler.build), ("info", compiler.info),
    ("schema", compiler.schema), ("import-weights", compiler.import_weights_command),
    ("diff", compiler.diff), ("graph", compiler.graph), ("zoo", zoo),
    ("train", runtime.train), ("eval", runtime.eval_), ("predict", runtime.predict),
    ("plot", runtime.plot), ("samples", runtime.samples),
    ("class-weights", runtime.class_weights), ("check-data", runtime.check_data),
    ("bench", bench.bench),
):
    app.command(_name)(_command)


def _warning_printer(shown_by: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints specc's own warnings as one ``warning:`` line and
    hands the others to ``shown_by``."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, SpeccWarning):
            err.print(f"warning: {message}", markup=False)
        else:
            shown_by(message, category, filename, lineno, file, line)

    return show


def _interrupted_in_typer(exc: SystemExit) -> bool:
    """Whether typer turned a Ctrl-C into this exit: it catches KeyboardInterrupt itself and
    exits 130 without a word (``Exit(130)`` raised from the interrupt). A command that said
    what it had done first (``specc train``) raises its Exit from None."""
    return exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None),
                                          KeyboardInterrupt)


def _stop_with(text: str) -> None:
    """Print the message the command stops on. A process of a torchrun job first compares it
    with the other processes' (:func:`runtime.distributed.stop_message`): one that every process
    stops on is printed by rank 0 alone, any other by each process that stops on it, after its
    rank. From then on it ignores SIGTERM, which torchrun sends the others as soon as one process
    ends: each still says why it stops, and exits with its own code (2), within moments."""
    if "WORLD_SIZE" in os.environ:  # torchrun started this process: maybe one of several
        from runtime.distributed import stop_message  # torch: not at start-up

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        text = stop_message(text)
    if text is not None:
        err.print(text, markup=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors print one message and exit 2.

    Besides a :class:`SpeccError`, an ``OSError`` that reaches this far (a full disk, a folder
    removed or made read-only while the command ran) and a ``MemoryError`` are the machine's
    answer to the user's input, not bugs: they print the path and the reason, exit 2. A
    :class:`~specc.errors.SpeccWarning` prints as one ``warning:`` line and the command goes on.
    """
    shown_by = warnings.showwarning
    warnings.showwarning = _warning_printer(shown_by)
    try:
        app(args=argv, prog_name="specc")
    except SpeccError as exc:
        _stop_with(error_text(exc))
        sys.exit(2)
    except OSError as exc:
        _stop_with(f"error: {os_error_text(exc)}")
        sys.exit(2)
    except MemoryError:
        _stop_with("error: out of memory (an input larger than this machine can hold?)")
        sys.exit(2)
    except KeyboardInterrupt:
        _stop_with("interrupted")
        sys.exit(130)
    except SystemExit as exc:
        if _interrupted_in_typer(exc):
            _stop_with("interrupted")
        raise
    finally:
        warnings.showwarning = shown_by
