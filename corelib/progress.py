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
