"""User-facing errors: one line that says what is wrong and what to do, and a non-zero exit.

Anything raised as `TrimlabError` is a problem with the user's input (config, data, checkpoint, paths), so the
entry points print its message alone; other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class TrimlabError(Exception):
    """An error in the user's input; its message names the problem and the fix."""


class ConfigError(TrimlabError):
    """A config value that cannot work (caught before training starts)."""


class DataError(TrimlabError):
    """A dataset that is missing, corrupt or does not fit the config."""


class CheckpointError(TrimlabError):
    """A checkpoint that is missing, unreadable or does not match the model."""


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def fail(message: str, code: int = 1) -> None:
    """Print one line on stderr and exit non-zero."""
    print(f"trimlab: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class Interrupted(TrimlabError):
    """The run stopped on a signal; its summary says `interrupted` and the exit code is 128 + the signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def user_errors(*also: type[Exception], code: int = 1, describe: Callable[[Exception], str] = str) -> Iterator[None]:
    """What every entry point runs inside: a `TrimlabError` (and the `also` types) becomes one line on stderr and
    its exit code (an `Interrupted` run's 128 + signal, else `code`); anything else is a bug and keeps its
    traceback. HYDRA_FULL_ERROR=1 keeps the traceback of user errors too."""
    try:
        yield
    except (TrimlabError, *also) as err:
        if full_errors():
            raise
        fail(describe(err), code=getattr(err, "exit_code", code))
