"""The candidate-order check: do the claims hold when the prompt's order carries no first-stage information?

ICR's prompt puts the first stage's rank-1 document nearest the query, so heads that favour nearby text
can reproduce the first stage's ranking. Here the same candidates of a stratified part of each query
sample (``Study.order_sample``) are re-ranked twice from records: in ICR's order and in a seeded random
order per query (``Study.shuffled_records``), with the same heads. The rules are in ``analysis.RULES``
(*Candidate order*); the three functions below are that section's tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from ..evaluate import per_query
from ..scoring import record_run
from . import analysis
from .methods import NIAH_SOURCE

if TYPE_CHECKING:
    from .core import Study

ICR_ORDER_NAME = "rank 1 last"
ORDER_PAIRS = (("CoRe-R", "ICR"), ("CoRe-R", "QR-R"), ("CoRe-R", "NIAH-R"), ("CoRe-R", "BM25"), ("ICR", "BM25"))
ORDER_METHODS = ("ICR", "QR-R", "CoRe-R", "NIAH-R")  # methods read from the records (BM25: the first stage itself)


def _kendall(scores: dict[str, float], reference: dict[str, float]) -> float:
    docs = list(reference)
    tau = stats.kendalltau([scores[d] for d in docs], [reference[d] for d in docs]).statistic
    return float(tau)


def order_per_query(study: "Study") -> pd.DataFrame:
    """nDCG@10 of every order-check query under both orders for each method, with Kendall's tau of the
    method's ranking of the candidates against BM25's (table ``order_per_query``)."""
    s = study
    if not s.p.order_models:
        raise ValueError(f"profile {s.p.name!r} has no candidate-order check (order_models is empty)")
    rows = []
    for m in s.p.order_models:
        heads = {"ICR": None, "QR-R": s.heads(m, "qr"), "CoRe-R": s.heads(m, "core")}
        if "NIAH-R" in s.head_methods(m):
            heads["NIAH-R"] = s.heads(m, "niah")
        for c in s.p.collections:
            coll, cand = s.collection(c), s.candidates(m, c)
            qids = s.order_sample(m, c)
            bm25 = cand.run()
            recs = {ICR_ORDER_NAME: s._reranker(m).records(coll, cand, qids), s.shuffled_order.name: s.shuffled_records(m, c)}
            bm25_run = {q: bm25[q] for q in qids}
            for order, records in recs.items():
                runs = {"BM25": bm25_run, **{method: record_run(records, h) for method, h in heads.items()}}
                for method, run in runs.items():
                    pq = per_query(run, coll.qrels)
                    taus = [_kendall(run[q], bm25[q]) for q in pq.index.astype(str)]
                    rows.append(pd.DataFrame({"model": m, "collection": c, "query_id": pq.index.astype(str), "order": order,
                                              "method": method, "ndcg@10": pq.values, "kendall tau vs BM25": taus}))
    return s.tables.write("order_per_query", pd.concat(rows, ignore_index=True))


def _as_per_query(opq: pd.DataFrame, order: str | None = None) -> pd.DataFrame:
    """The order check's rows in the per-query table's shape (one order, or every order with the method
    named with it: 'CoRe-R (shuffled (seed 0))')."""
    sel = opq if order is None else opq[opq["order"] == order]
    out = sel.assign(**{"first stage": "bm25", "k": 0,
                        "head source": np.where(sel["method"] == "NIAH-R", NIAH_SOURCE, "nq")})
    if order is None:
        out = out.assign(method=out["method"] + " (" + out["order"] + ")")
    return out


def order_claims(study: "Study", opq: pd.DataFrame) -> pd.DataFrame:
    """The claims under each order on the same queries, and the order's own effect per method
    ("A (rank 1 last) beats A (shuffled)"), as ``comparisons_order`` (analysis.RULES: *Candidate order*)."""
    t = study.tables
    frames = [t.compare(_as_per_query(opq, order), [(a, b, "nq") for a, b in ORDER_PAIRS], claim_prefix=f"{order}: ")
              for order in dict.fromkeys(opq["order"])]
    both = _as_per_query(opq)
    shuffled = next(o for o in dict.fromkeys(opq["order"]) if o != ICR_ORDER_NAME)
    effect = [(f"{m} ({ICR_ORDER_NAME})", f"{m} ({shuffled})", "nq") for m in ("BM25",) + ORDER_METHODS
              if m != "BM25" and f"{m} ({shuffled})" in set(both["method"])]
    frames.append(t.compare(both, effect, claim_prefix="order effect: "))
    return t.comparisons("order", frames)


def order_agreement(study: "Study", opq: pd.DataFrame) -> pd.DataFrame:
    """Each method's agreement with the first stage under each order: Pearson correlation of its per-query
    nDCG@10 with BM25's over the sample's queries, and the mean Kendall tau against BM25's ranking
    (collections weighted equally). Descriptive (table ``order_agreement``)."""
    rows = []
    for (m, order), g in opq.groupby(["model", "order"], sort=False):
        wide = g.pivot(index=["collection", "query_id"], columns="method", values="ndcg@10")
        for method in [x for x in ("BM25",) + ORDER_METHODS if x in wide and x != "BM25"]:
            mg = g[g["method"] == method]
            rows.append({"model": m, "order": order, "method": method, "queries": len(mg),
                         "mean ndcg@10": analysis.weighted_mean([x.to_numpy() for _, x in mg.groupby("collection")["ndcg@10"]]),
                         "correlation with BM25 (per-query ndcg@10)": float(np.corrcoef(wide[method], wide["BM25"])[0, 1]),
                         "kendall tau vs BM25 (mean)": analysis.weighted_mean(
                             [x.to_numpy() for _, x in mg.groupby("collection")["kendall tau vs BM25"]])})
    return study.tables.write("order_agreement", pd.DataFrame(rows))
