"""The explorer's backend (notebooks/explorer.ipynb): what one setting of model, method, head count and
temperature gives, from cached records only. ``cache_report`` says what a profile has cached and what the
rest would cost (from file names and a few file headers; nothing is loaded); ``Explorer`` (memoised per
study) and ``explore`` compute nothing unless asked (``compute=True``), so opening the explorer on a fresh
clone never starts forwards."""

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
    cost = (f" (estimated from the cached records or the cost table: {t})" if (t := time_left(part))
            else " (no cached record or cost-table row to time them by yet)")
    return False, (f"{model} in profile {study.p.name}: {int(part['cached'].sum())} of {int(part['needed'].sum())} "
                   f"records cached, {missing} missing{cost}. Run `make warm PROFILE={study.p.name} MODEL={model}` "
                   "in a terminal (resumable), or press 'compute' to compute them in this kernel.")


class Explorer:
    """The explorer's results for one study, memoised: each model's BM25 and ICR per collection, and the
    head-count curve per model, method, temperature and collection, so that moving the heads slider or
    picking another collection scores only the k heads, and a curve over every head count (the costly part)
    is computed once per head order. QR's order ignores the temperature, so its curves are kept once."""

    def __init__(self, study: "Study"):
        self.study = study
        self._references: dict[tuple, tuple[float, float]] = {}
        self._curves: dict[tuple, np.ndarray] = {}

    def explore(self, model: str, method: str, k: int, temperature: float, collection: str | None = None,
                compute: bool = False):
        """nDCG@10 per collection of BM25, ICR and the method's top-k heads at a temperature, and the method's
        head-count curve on one collection (or the mean). With records missing it raises NotCached unless
        ``compute`` (no forward is ever started unasked). No table is written."""
        S = self.study
        if not compute:
            ready, message = cache_report(S, model, method)
            if not ready:
                raise NotCached(message)
        heads = S.heads(model, method, k, temperature)
        order_key = (model, method, None if method == "qr" else temperature)
        rows, curves = [], []
        for c in S.p.collections:
            recs, qrels = S.records(model, c), S.collection(c).qrels
            if (model, c) not in self._references:
                self._references[model, c] = (evaluate_run(S.candidates(model, c).run(), qrels)["ndcg@10"],
                                              evaluate_run(record_run(recs), qrels)["ndcg@10"])
            bm25, icr = self._references[model, c]
            rows.append({"collection": c, "BM25": bm25, "ICR": icr,
                         f"{method} top-{k}": evaluate_run(record_run(recs, heads), qrels)["ndcg@10"]})
            if collection in (None, c):
                if (*order_key, c) not in self._curves:
                    order = S.head_scores(model, method, temperature).order()
                    self._curves[(*order_key, c)] = sweep_curve(recs, order, qrels)
                curves.append(self._curves[(*order_key, c)])
        table = pd.DataFrame(rows).set_index("collection")
        table.loc["mean"] = table.mean()
        curve = np.mean(curves, axis=0)
        return table, pd.Series(curve, index=np.arange(1, len(curve) + 1), name="ndcg@10")


def explore(study: "Study", model: str, method: str, k: int, temperature: float, collection: str | None = None,
            compute: bool = False):
    """One setting of the explorer, computed afresh (``Explorer.explore``; the notebook keeps an ``Explorer``
    per profile, so that its updates reuse what does not change)."""
    return Explorer(study).explore(model, method, k, temperature, collection, compute)
