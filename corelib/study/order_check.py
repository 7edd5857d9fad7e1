"""The candidate-order check: do the claims hold when the prompt's order carries no first-stage information?

ICR's prompt puts the first stage's rank-1 document nearest the query, so heads that favour nearby text
can reproduce the first stage's ranking. Here the same candidates of a stratified part of each query
sample (``Study.order_sample``) are re-ranked in a seeded random order per query (``Study.shuffled_records``),
with the same heads, beside the same queries in ICR's order (notebook 03's per-query table). The rules are in ``analysis.RULES``
(*Candidate order*); the three functions below are that section's tables.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import MissingInput, UsageError
from ..evaluate import per_query
from ..scoring import record_run
from . import analysis
from .methods import NIAH_SOURCE

if TYPE_CHECKING:
    from .core import Study

log = logging.getLogger(__name__)

ICR_ORDER_NAME = "rank 1 last"
ORDER_PAIRS = (("CoRe-R", "ICR"), ("CoRe-R", "QR-R"), ("CoRe-R", "NIAH-R"), ("CoRe-R", "BM25"), ("ICR", "BM25"))
ORDER_METHODS = ("ICR", "QR-R", "CoRe-R", "NIAH-R")  # methods read from the records (BM25: the first stage itself)


def _kendall(scores: dict[str, float], reference: dict[str, float]) -> float:
    docs = list(reference)
    tau = stats.kendalltau([scores[d] for d in docs], [reference[d] for d in docs]).statistic
    return float(tau)


def order_per_query(study: "Study", pq: pd.DataFrame) -> pd.DataFrame:
    """nDCG@10 of every order-check query under both orders for each method, with Kendall's tau of the
    method's ranking of the candidates against BM25's (the rows of table ``order_per_query``, which ``write_all`` writes).

    Shuffled order: from the shuffled records (computed on a cache miss). ICR's order: the nDCG@10 is the
    per-query table's (``pq``, notebook 03's, NQ heads), so the two orders' rows come from one definition of
    each method; its tau is computed from the ICR-order records where the cache holds all of a collection's
    (they are the records notebook 03 read), else left empty. No ICR-order forward is run here."""
    s = study
    if not s.p.order_models:
        raise UsageError(f"profile {s.p.name!r} has no candidate-order check (order_models is empty)")
    nq = pq[pq["head source"].fillna("").isin(["", "all", "nq", NIAH_SOURCE])].assign(query_id=lambda d: d["query_id"].astype(str))
    ks = set(nq.loc[nq["method"] == "CoRe-R", "k"])
    if ks != {s.p.num_heads}:
        raise UsageError(f"the per-query table's CoRe-R rows use k={sorted(ks)}, the order check the profile's "
                         f"k={s.p.num_heads}: write the per-query table with the profile's head count")
    rows = []
    for m in s.p.order_models:
        heads = {"ICR": None, "QR-R": s.heads(m, "qr"), "CoRe-R": s.heads(m, "core")}
        if "NIAH-R" in s.head_methods(m):
            heads["NIAH-R"] = s.heads(m, "niah")
        for c in s.p.collections:
            coll, cand = s.collection(c), s.candidates(m, c)
            qids = s.order_sample(m, c)
            bm25 = cand.run()
            shuffled = s.shuffled_records(m, c)
            runs = {"BM25": {q: bm25[q] for q in qids}, **{method: record_run(shuffled, h) for method, h in heads.items()}}
            for method, run in runs.items():
                got = per_query(run, coll.qrels)
                rows.append(pd.DataFrame({"model": m, "collection": c, "query_id": got.index.astype(str),
                                          "order": s.shuffled_order.name, "method": method, "ndcg@10": got.values,
                                          "kendall tau vs BM25": [_kendall(run[q], bm25[q]) for q in got.index.astype(str)]}))
            rr = s.reranker(m)
            requests = rr.collection_requests(coll, cand, qids)
            icr_runs = ({method: record_run(rr.records(coll, cand, qids), h) for method, h in heads.items()}
                        if not rr.status(requests).missing else {})
            mine = nq[(nq["model"] == m) & (nq["collection"] == c) & nq["query_id"].isin(qids)]
            for method in runs:
                part = mine[mine["method"] == method]
                if len(part) != len(qids):
                    raise UsageError(f"the per-query table has {len(part)} of the {len(qids)} order-check queries of {m} "
                                     f"{c} for {method}: run notebook 03 (Table 1) of profile {s.p.name} first")
                run = {q: bm25[q] for q in qids} if method == "BM25" else icr_runs.get(method)
                taus = [_kendall(run[q], bm25[q]) for q in part["query_id"]] if run else np.nan
                rows.append(pd.DataFrame({"model": m, "collection": c, "query_id": part["query_id"].values,
                                          "order": ICR_ORDER_NAME, "method": method, "ndcg@10": part["ndcg@10"].values,
                                          "kendall tau vs BM25": taus}))
    return pd.concat(rows, ignore_index=True)


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
    effect = [(f"{m} ({ICR_ORDER_NAME})", f"{m} ({shuffled})", "nq") for m in ORDER_METHODS
              if f"{m} ({shuffled})" in set(both["method"])]
    frames.append(t.compare(both, effect, claim_prefix="order effect: "))
    return t.comparisons("order", frames)


def order_agreement(study: "Study", opq: pd.DataFrame) -> pd.DataFrame:
    """Each method's agreement with the first stage under each order: Pearson correlation of its per-query
    nDCG@10 with BM25's over the sample's queries, and the mean Kendall tau against BM25's ranking
    (collections weighted equally). Descriptive (table ``order_agreement``)."""
    rows = []
    for (m, order), g in opq.groupby(["model", "order"], sort=False):
        wide = g.pivot(index=["collection", "query_id"], columns="method", values="ndcg@10")
        for method in [x for x in ORDER_METHODS if x in wide]:
            mg = g[g["method"] == method]
            rows.append({"model": m, "order": order, "method": method, "queries": len(mg),
                         "mean ndcg@10": analysis.weighted_mean([x.to_numpy() for _, x in mg.groupby("collection")["ndcg@10"]]),
                         "correlation with BM25 (per-query ndcg@10)": float(np.corrcoef(wide[method], wide["BM25"])[0, 1]),
                         "kendall tau vs BM25 (mean)": analysis.weighted_mean(
                             [x.to_numpy() for _, x in mg.groupby("collection")["kendall tau vs BM25"]])
                         if mg["kendall tau vs BM25"].notna().all() else float("nan")})
    return study.tables.write("order_agreement", pd.DataFrame(rows))


def committed_heads(study: "Study", m: str, methods) -> dict[str, list | None]:
    """The heads of each of ``methods`` (of ``ORDER_METHODS``) from the profile's committed head rankings
    (``results/heads``: the rankings the study's NQ detection records and needle trials gave), checked against the
    model's weights."""
    from ..heads import resolve_heads

    spec = study.spec(m)
    out: dict[str, list | None] = {"ICR": None}
    for method, key in (("QR-R", "qr"), ("CoRe-R", "core"), ("NIAH-R", "niah")):
        if method in methods:
            heads = resolve_heads(f"{key}:{study.p.num_heads}", spec.model_id, study.heads_dir, spec.fingerprint)
            heads.check(spec.model_id, spec.num_layers, spec.num_heads, spec.fingerprint)  # other weights: an error
            out[method] = heads.heads
    return out


def fill_icr_order_tau(study: "Study") -> dict[str, pd.DataFrame]:
    """The committed order check with the Kendall tau in ICR's order filled in for the study's models whose
    committed rows lack it (``order-check --fill-tau``): their ICR-order records of the order sample are
    computed where the cache lacks them (the shuffled records are not needed: every other value is kept as
    committed), with the heads of the committed rankings. The records must give back the committed nDCG@10 of
    every method on every query, so the tau and the nDCG come from the same records; else nothing is written."""
    opq = study.tables.read("order_per_query")
    if opq is None:
        raise MissingInput(f"no order_per_query table in {study.tables_dir}: run `order-check` first")
    opq = opq.assign(query_id=lambda d: d["query_id"].astype(str))
    icr_rows = (opq["order"] == ICR_ORDER_NAME) & opq["model"].isin(study.p.models)
    todo = [m for m in dict.fromkeys(opq.loc[icr_rows, "model"])
            if opq.loc[icr_rows & (opq["model"] == m), "kendall tau vs BM25"].isna().any()]
    if not todo:
        raise UsageError("every model's rows in ICR's order already hold their Kendall tau: nothing to fill")
    s = study
    for m in todo:
        heads = committed_heads(s, m, set(opq.loc[icr_rows & (opq["model"] == m), "method"]))
        for c in s.p.collections:
            coll, cand = s.collection(c), s.candidates(m, c)
            qids = s.order_sample(m, c)
            bm25 = cand.run()
            records = s.reranker(m).records(coll, cand, qids)
            for method in dict.fromkeys(opq.loc[icr_rows & (opq["model"] == m), "method"]):
                at = icr_rows & (opq["model"] == m) & (opq["collection"] == c) & (opq["method"] == method)
                if method == "BM25":
                    run = {q: bm25[q] for q in qids}
                else:
                    run = record_run(records, heads[method])
                    got = per_query(run, coll.qrels).rename(index=str)
                    committed = opq.loc[at].set_index("query_id")["ndcg@10"]
                    differ = (got.reindex(committed.index) - committed).abs() > 1e-9
                    if differ.any():
                        raise UsageError(f"{m} {c} {method}: the ICR-order records give another nDCG@10 than the "
                                         f"committed rows on {int(differ.sum())} of {len(committed)} queries (e.g. "
                                         f"{committed.index[differ.to_numpy()][0]}), so their tau would not belong to "
                                         "those rows: re-run the model's whole order check instead")
                opq.loc[at, "kendall tau vs BM25"] = [_kendall(run[q], bm25[q]) for q in opq.loc[at, "query_id"]]
            log.info("%s %s: Kendall tau in ICR's order on %d queries", m, c, len(qids))
    opq = study.tables.write("order_per_query", opq)
    return {"order_per_query": opq, "comparisons_order": order_claims(study, opq),
            "order_agreement": order_agreement(study, opq)}


def write_all(study: "Study") -> dict[str, pd.DataFrame]:
    """The three tables from the study's per-query table and its shuffled records:
    ``python -m corelib.study order-check --profile cpu``."""
    pq = study.tables.read("per_query")
    if pq is None:
        raise MissingInput(f"no per-query table in {study.tables_dir}: run notebook 03 of profile {study.p.name} "
                                "(`make reproduce`) first")
    opq = order_per_query(study, pq)
    # a run for some of the order-check models (``--model``: a narrowed study) replaces their rows, and ``write``
    # keeps the other models' rows in the profile's order (each model's rows depend on its own records only), so
    # the check can be completed one model at a time
    opq = study.tables.write("order_per_query", opq)
    return {"order_per_query": opq, "comparisons_order": order_claims(study, opq),
            "order_agreement": order_agreement(study, opq)}
