"""Progress bars over long loops of forwards (tqdm)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(items: list, desc: str | None):
    """A progress bar over items (none for nothing to do; CORELIB_PROGRESS=off hides it). `make reproduce`
    shows bars live (papermill --log-output) and drops them from the stored notebooks."""
    if desc is None or os.environ.get("CORELIB_PROGRESS") == "off" or not items:
        return items
    return tqdm(items, desc=desc, leave=False)


class RecordTally:
    """How far the record loop of this process has come (what a stopped command can say it kept)."""

    needed = 0
    cached = 0  # held before the loop or computed and stored since

    @classmethod
    def start(cls, needed: int, cached: int) -> None:
        cls.needed, cls.cached = needed, cached

    @classmethod
    def stored(cls, n: int = 1) -> None:
        cls.cached += n


def interrupted_note() -> str:
    """What a command stopped by Ctrl-C kept: the records of its last loop that are cached, and how to resume."""
    if RecordTally.needed:
        return (f"{RecordTally.cached} of {RecordTally.needed} records cached; rerun the same command to resume "
                "(nothing cached is lost)")
    return "nothing was lost; rerun the same command to resume"
