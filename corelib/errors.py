"""The errors a user can cause and fix (bad data, model, prompt or argument), and how commands report them."""

from __future__ import annotations

import sys
import traceback
from typing import Callable


class CorelibError(Exception):
    """Every error a user can cause and fix (bad data, model, prompt, argument or storage): the base of the
    library's domain errors, which commands print as one line."""


class UsageError(CorelibError, ValueError):
    """An argument, setting or input that the user can fix; its message names the problem and the fix."""


class MissingInput(UsageError, FileNotFoundError):
    """A file or table the user has to make first (the message names the command that makes it)."""


class WrongType(UsageError, TypeError):
    """An argument of the wrong type (the message says which type to give)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors commands report as a user's mistake: the library's domain errors, and nothing else."""
    return (CorelibError,)


BUG_NOTE = ("this is a bug in corelib, not a mistake in your input: please report it with the traceback above and "
            "the command that raised it")


def run_command(command: Callable[[], object]) -> int:
    """Run a command: its own exit status where it returns one, else 0; a user's error (one of ``user_errors``, each naming the problem and the fix) is
    one line on stderr and exit status 2; Ctrl-C one line and 130; anything else is a bug: its traceback, a line
    saying so, and exit status 1."""
    try:
        status = command()
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from .progress import interrupted_note

        print(f"interrupted: {interrupted_note()}", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - printed whole, as a bug
        traceback.print_exc()
        print(f"error: {BUG_NOTE}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
