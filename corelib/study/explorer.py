"""The explorer's backend (notebooks/explorer.ipynb): what one setting of model, method, head count and
temperature gives, from cached records only. ``cache_report`` says what a profile has cached and what the
rest would cost (from file names and a few file headers; nothing is loaded); ``explore`` computes nothing
unless asked (``compute=True``), so opening the explorer on a fresh clone never starts forwards."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..evaluate import evaluate_run
from ..scoring import record_run
from .tables.sweep import sweep_curve
from .warm import time_left

if TYPE_CHECKING:
    from .core import Study



class NotCached(LookupError):
    """The explorer was asked for a setting whose records are not cached (and not asked to compute them)."""


def cache_report(study: "Study", model: str, method: str = "core") -> tuple[bool, str]:
    """(everything cached?, a sentence saying what is cached, what is missing, the estimate and the command)."""
    table = study.pending([model], multilingual=False)
    steps = list(study.p.collections) + ["NQ detection"] + (["needle trials"] if method == "niah" else [])
    part = table[table["step"].isin(steps)]
    missing = int(part["missing"].sum())
    if not missing:
        return True, f"{model} in profile {study.p.name}: every record the explorer reads is cached."
    cost = f" ({t})" if (t := time_left(part)) else " (no cached record or cost-table row to time them by yet)"
    return False, (f"{model} in profile {study.p.name}: {int(part['cached'].sum())} of {int(part['needed'].sum())} "
                   f"records cached, {missing} missing{cost}. Run `make warm PROFILE={study.p.name} MODEL={model}` "
                   "in a terminal (resumable), or press 'compute' to compute them in this kernel.")


def explore(study: "Study", model: str, method: str, k: int, temperature: float, collection: str | None = None,
            compute: bool = False):
    """nDCG@10 per collection of BM25, ICR and the method's top-k heads at a temperature (QR ignores it), and
    the method's head-count curve on one collection (or the mean). With records missing it raises NotCached
    unless ``compute`` (no forward is ever started unasked). No table is written."""
    if not compute:
        ready, message = cache_report(study, model, method)
        if not ready:
            raise NotCached(message)
    heads = study.heads(model, method, k, temperature)
    order = study.head_scores(model, method, temperature).order()
    rows, curves = [], []
    for c in study.p.collections:
        recs, qrels = study.records(model, c), study.collection(c).qrels
        rows.append({"collection": c, "BM25": evaluate_run(study.candidates(model, c).run(), qrels)["ndcg@10"],
                     "ICR": evaluate_run(record_run(recs), qrels)["ndcg@10"],
                     f"{method} top-{k}": evaluate_run(record_run(recs, heads), qrels)["ndcg@10"]})
        if collection in (None, c):
            curves.append(sweep_curve(recs, order, qrels))
    table = pd.DataFrame(rows).set_index("collection")
    table.loc["mean"] = table.mean()
    return table, pd.Series(np.mean(curves, axis=0), index=np.arange(1, len(order) + 1), name="ndcg@10")
