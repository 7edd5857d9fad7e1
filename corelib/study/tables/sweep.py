"""The head-count sweep (Figure 1) and the peak-below-10-heads test."""

from __future__ import annotations

import numpy as np
import pandas as pd
from typing import TYPE_CHECKING

from ...evaluate import evaluate_run, ndcg_rows
from ...records import QueryRecord
from ...scoring import cumulative_doc_scores, record_run
from .. import analysis
from .schema import write
from .table1 import compare

if TYPE_CHECKING:
    from ..core import Study


def sweep_curve(records: list[QueryRecord], order, qrels) -> np.ndarray:
    """Mean nDCG@10 using the first k heads of ``order``, k = 1..K (one ranx kernel call)."""
    scored = [(r.query_id, r.doc_ids, cumulative_doc_scores(r, order).numpy()) for r in records]
    return ndcg_rows(scored, qrels)[1].mean(0)


def sweep(study: "Study", max_heads: int | None = None, temperature: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, peaks = [], []
    for m in study.p.models:
        orders = {o: study.head_scores(m, o, temperature).order()[:max_heads] for o in study.head_methods(m).values()}
        curves = {}
        for c in study.p.collections:
            recs, qrels = study.records(m, c), study.collection(c).qrels
            icr = evaluate_run(record_run(recs), qrels)["ndcg@10"]
            for o, order in orders.items():
                curve = sweep_curve(recs, order, qrels)
                curves[c, o] = (curve, icr)
                rows.append(pd.DataFrame({"model": m, "collection": c, "order": o, "heads": np.arange(1, len(curve) + 1),
                                          "ndcg@10": curve}))
        for o in orders:
            mean = np.mean([curves[c, o][0] for c in study.p.collections], axis=0)
            icr = float(np.mean([curves[c, o][1] for c in study.p.collections]))
            rows.append(pd.DataFrame({"model": m, "collection": "mean over collections", "order": o,
                                      "heads": np.arange(1, len(mean) + 1), "ndcg@10": mean}))
            for c, (curve, ic) in [(c, curves[c, o]) for c in study.p.collections] + [("mean over collections", (mean, icr))]:
                peaks.append({"model": m, "collection": c, "order": o, "peak ndcg@10": float(curve.max()),
                              "heads at peak": int(curve.argmax()) + 1, "1 head": float(curve[0]),
                              "8 heads": float(curve[7]) if len(curve) > 7 else float("nan"), "ICR": ic})
    return write(study, "sweep", pd.concat(rows)), write(study, "sweep_peaks", pd.DataFrame(peaks))


def peak_test(study: "Study", few: int = analysis.FEW_HEADS, temperature: float | None = None) -> pd.DataFrame:
    """'Peak below 10 heads' without choosing the peak on the data that tests it: on one half of
    the queries choose the best k < 10 and the best k >= 10 (CoRe order); compare the two on the other half."""
    frames = []
    for m in study.p.models:
        order = study.head_scores(m, "core", temperature).order()
        per_q = []
        for c in study.p.collections:
            recs, qrels = study.records(m, c), study.collection(c).qrels
            qids, mat = ndcg_rows([(r.query_id, r.doc_ids, cumulative_doc_scores(r, order).numpy()) for r in recs], qrels)
            per_q.append(pd.DataFrame(mat, index=qids).assign(collection=c).reset_index(names="query_id"))
        table = pd.concat(per_q, ignore_index=True)
        first, second = analysis.split_halves(table[["collection"]], study.p.seed)
        ks = [col for col in table.columns if isinstance(col, (int, np.integer))]
        curve = table.loc[first].groupby("collection")[ks].mean().mean()  # collection-weighted, first half
        k_few = int(curve[[x for x in ks if x < few]].idxmax()) + 1
        k_many = int(curve[[x for x in ks if x >= few]].idxmax()) + 1
        test = table.loc[second]
        frames.append(pd.DataFrame({"model": m, "collection": test["collection"], "query_id": test["query_id"],
                                    "head source": "nq", "k": 0, "first stage": study.p.first_stage,
                                    "method": f"CoRe-R, best k < {few} (k={k_few}, chosen on the other half)",
                                    "ndcg@10": test[k_few - 1].values}))
        frames.append(pd.DataFrame({"model": m, "collection": test["collection"], "query_id": test["query_id"],
                                    "head source": "nq", "k": 0, "first stage": study.p.first_stage,
                                    "method": f"CoRe-R, best k >= {few} (k={k_many}, chosen on the other half)",
                                    "ndcg@10": test[k_many - 1].values}))
    pq = pd.concat(frames, ignore_index=True)
    rows = []
    for m, g in pq.groupby("model", sort=False):
        few_m, many_m = list(dict.fromkeys(g["method"]))
        rows.append(compare(study, g.assign(method=g["method"].map({few_m: "few", many_m: "many"})), [("few", "many", "nq")])
                    .assign(a=few_m, b=many_m, claim=f"peak below {few} heads: best k < {few} beats best k >= {few}"))
    out = pd.concat(rows, ignore_index=True)
    out["p holm"] = analysis.holm(out["p"])
    out["verdict"] = [analysis.superiority_verdict(d, p) for d, p in zip(out["difference"], out["p holm"])]
    return out
