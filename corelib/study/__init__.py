"""The reproduction study, on top of the ``corelib`` library (which imports nothing from here).

``Study`` (core.py) is what the notebooks and ``python -m corelib.study`` share; ``profiles``
fixes the sizes, ``tables`` defines every table's columns once, ``analysis`` holds the rules the
verdicts follow, ``report`` and ``plots`` lay them out, ``bench`` measures costs.
"""

from .core import Study
from .methods import HEAD_SOURCES
from .profiles import PROFILES, Profile, kept_layers, profile

__all__ = ["HEAD_SOURCES", "PROFILES", "Profile", "Study", "kept_layers", "profile"]


def notebook_setup() -> None:
    """Quiet, reproducible notebook output: warnings and library progress bars off (record progress
    follows CORELIB_PROGRESS), pandas showing whole tables."""
    import logging
    import warnings

    import pandas as pd

    warnings.filterwarnings("ignore", message=".*unsafe cast.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    pd.set_option("display.max_rows", 200)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.width", 200)


__all__.append("notebook_setup")
