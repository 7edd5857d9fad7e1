"""The errors a user can cause and fix (bad data, model, prompt or argument), and how commands report them."""

from __future__ import annotations

import sys
from typing import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError
    from .models import ModelLoadError
    from .prompts import PromptError
    from .storage import StorageError

    return (DataError, ModelLoadError, PromptError, StorageError, ValueError, FileNotFoundError)


def run_command(command: Callable[[], object]) -> int:
    """Run a command: 0 on success; a user's error is one line on stderr (no traceback) and exit status 2."""
    try:
        command()
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
