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
from .table1 import claim_families, compare

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
        window = study.layer_window_heads(m, temperature)  # a reference point: all heads of the best layer window
        curves, windows = {}, {}
        for c in study.p.collections:
            recs, qrels = study.records(m, c), study.collection(c).qrels
            icr = evaluate_run(record_run(recs), qrels)["ndcg@10"]
            windows[c] = evaluate_run(record_run(recs, window), qrels)["ndcg@10"]
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
            windows["mean over collections"] = float(np.mean([windows[c] for c in study.p.collections]))
            for c, (curve, ic) in [(c, curves[c, o]) for c in study.p.collections] + [("mean over collections", (mean, icr))]:
                peaks.append({"model": m, "collection": c, "order": o, "peak ndcg@10": float(curve.max()),
                              "heads at peak": int(curve.argmax()) + 1, "1 head": float(curve[0]),
                              "8 heads": float(curve[7]) if len(curve) > 7 else float("nan"), "ICR": ic,
                              "Layer window": windows[c], "Layer window heads": len(window)})
    return write(study, "sweep", pd.concat(rows)), write(study, "sweep_peaks", pd.DataFrame(peaks))


def peak_test(study: "Study", few: int = analysis.FEW_HEADS, temperature: float | None = None) -> pd.DataFrame:
    """'Peak below 10 heads' without choosing the peak on the data that tests it, cross-fitted: the queries are
    split in two halves within each collection; on each half the best k < 10 and the best k >= 10 (CoRe order)
    are chosen and the two are compared on the other half, so every query tests the claim once."""
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
        halves = []
        for choose, test in ((first, second), (second, first)):
            curve = table.loc[choose].groupby("collection")[ks].mean().mean()  # collection-weighted, choosing half
            k_few = int(curve[[x for x in ks if x < few]].idxmax()) + 1
            k_many = int(curve[[x for x in ks if x >= few]].idxmax()) + 1
            rows = table.loc[test]
            for label, k in (("few", k_few), ("many", k_many)):
                halves.append(pd.DataFrame({"model": m, "collection": rows["collection"], "query_id": rows["query_id"],
                                            "head source": "nq", "k": k, "first stage": study.p.first_stage,
                                            "method": label, "ndcg@10": rows[k - 1].values}))
        frames.append(pd.concat(halves, ignore_index=True))
    return peak_comparisons(study, write(study, "per_query_peak", pd.concat(frames, ignore_index=True)), few)


def peak_comparisons(study: "Study", pq: pd.DataFrame, few: int = analysis.FEW_HEADS) -> pd.DataFrame:
    """The peak test's comparisons from its per-query table (``per_query_peak``: on each query the best k < ``few``
    and the best k >= ``few`` chosen on the other half, in the column ``k``): one family of every model and the
    pooled test (a query once), Holm within it (analysis.RULES, *Families*)."""
    claim = f"peak below {few} heads: best k < {few} beats best k >= {few}"
    rows = compare(study, pq.assign(k=0), [("few", "many", "nq")], table="comparisons_peak", claim=claim)
    ks = {(m, label): " / ".join(str(k) for k in dict.fromkeys(g["k"])) for (m, label), g in pq.groupby(["model", "method"])}
    rows["a"] = [f"CoRe-R, best k < {few} (" + (f"k={ks[m, 'few']}" if (m, "few") in ks else "each model's") +
                 ", each chosen on the other half)" for m in rows["model"]]
    rows["b"] = [f"CoRe-R, best k >= {few} (" + (f"k={ks[m, 'many']}" if (m, "many") in ks else "each model's") + ")"
                 for m in rows["model"]]
    return claim_families(study, rows)
