"""The explorer's backend (notebooks/explorer.ipynb): what one setting of model, method, head count and
temperature gives, from cached records only (``cached_view`` says what is cached; nothing is computed unasked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..evaluate import evaluate_run
from ..scoring import record_run
from .tables.sweep import sweep_curve

if TYPE_CHECKING:
    from .core import Study


def explore(study: "Study", model: str, method: str, k: int, temperature: float, collection: str | None = None):
    """What the explorer shows: nDCG@10 per collection of BM25, ICR and the method's top-k heads at a
    temperature, and the method's head-count curve on one collection (or the mean). No table is written."""
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
