"""Metrics and significance through ranx (trec_eval conventions: linear-gain nDCG)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from ranx import Qrels, Run, compare, evaluate
from ranx.metrics import ndcg as ranx_ndcg

from .errors import UsageError

DEFAULT_METRICS = ("ndcg@10",)


def _restrict(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]):
    """Evaluate on the queries present in both (a run over a query sample scores that sample)."""
    common = sorted(set(run) & set(qrels))
    if not common:
        raise UsageError("the run and the qrels share no query id: check that they belong to the same collection")
    return {q: run[q] for q in common}, {q: qrels[q] for q in common}


def trec_order(docs: dict[str, float]) -> dict[str, float]:
    """Scores replaced by ranks in trec_eval's order (score desc, ties by doc id desc), so ranx
    ranks exactly as trec_eval and Anserini do (ranx alone breaks ties differently)."""
    if not docs:
        return {"__none__": 0.0}
    ordered = sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)
    return {d: float(len(ordered) - i) for i, (d, _) in enumerate(ordered)}


def to_ranx(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], name: str = "run"):
    run, qrels = _restrict(run, qrels)
    return Run({q: trec_order(docs) for q, docs in run.items()}, name=name), Qrels(qrels)


METRICS = ("ndcg", "map", "mrr", "recall", "precision", "hit_rate", "r-precision", "bpref", "f1")


def check_metrics(metrics) -> tuple[str, ...]:
    """Metric names as ranx takes them (``ndcg@10``, ``recall@100``, ``map``): a name ranx lacks or a cutoff that
    is not a whole number is refused naming the metric, before anything is evaluated."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    for m in metrics:
        name, at, cut = str(m).partition("@")
        if name not in METRICS or (at and not (cut.isascii() and cut.isdigit() and int(cut) >= 1)):
            raise UsageError(f"metric {m!r}: give one of {', '.join(METRICS)}, optionally with a cutoff in digits "
                             "(e.g. ndcg@10, recall@100)")
    return tuple(metrics)


def evaluate_run(run, qrels, metrics=DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the queries that the run and the qrels share."""
    metrics = check_metrics(metrics)
    r, q = to_ranx(run, qrels)
    out = evaluate(q, r, list(metrics), make_comparable=True)
    return {metrics[0]: float(out)} if isinstance(out, float) else {k: float(v) for k, v in out.items()}


def mean_ndcg_rows(scored, qrels, k: int = 10) -> np.ndarray:
    """Mean nDCG@k of R alternative scorings of the same candidates, in one ranx kernel call.

    ``scored`` holds ``(query_id, doc_ids, scores)`` with ``scores`` of shape [R, len(doc_ids)]:
    row r of every query forms run r. Returns the R means over the queries shared with ``qrels``,
    equal to ``evaluate_run`` of each run (trec_eval tie order) but without building R ranx Runs;
    head-count sweeps use it.
    """
    return ndcg_rows(scored, qrels, k)[1].mean(0)


def ndcg_rows(scored, qrels, k: int = 10) -> tuple[list[str], np.ndarray]:
    """Per-query nDCG@k of R alternative scorings (see ``mean_ndcg_rows``): the query ids shared
    with ``qrels`` and an array [queries, R]."""
    runs, judged, qids = [], [], []
    for qid, doc_ids, scores in scored:
        if qid not in qrels:
            continue
        qids.append(qid)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(doc_ids):
            raise UsageError(f"query {qid}: scores must be [rows, {len(doc_ids)}], got {list(scores.shape)}")
        ids = {d: i for i, d in enumerate(doc_ids)}
        for d in qrels[qid]:
            ids.setdefault(d, len(ids))
        # trec_eval order: score descending, ties by doc id descending
        name_rank = np.argsort(np.argsort(np.array(doc_ids, dtype=object)))
        order = np.lexsort((np.broadcast_to(name_rank, scores.shape), scores), axis=-1)[:, ::-1]
        run = np.stack([order.astype(np.float64), np.take_along_axis(scores, order, -1)], -1)
        runs.append(run)
        rel = sorted(((float(r), float(ids[d])) for d, r in qrels[qid].items()), reverse=True)
        judged.append(np.array([[i, r] for r, i in rel] or [[-1.0, 0.0]]))
    if not runs:
        raise UsageError("the scored queries and the qrels share no query id: check that they belong to the same collection")
    rows, n = runs[0].shape[0], max(r.shape[1] for r in runs)
    m = max(j.shape[0] for j in judged)
    run_arr = np.full((len(runs), rows, n, 2), [-1.0, -np.inf])
    qrel_arr = np.full((len(runs), m, 2), [-1.0, 0.0])
    for i, (run, j) in enumerate(zip(runs, judged)):
        run_arr[i, :, : run.shape[1]] = run
        qrel_arr[i, : len(j)] = j
    per_query = ranx_ndcg(np.repeat(qrel_arr, rows, 0), run_arr.reshape(-1, n, 2), k=k)
    return qids, per_query.reshape(len(runs), rows)


def per_query(run, qrels, metric: str = "ndcg@10") -> pd.Series:
    r, q = to_ranx(run, qrels)
    evaluate(q, r, metric, make_comparable=True)
    return pd.Series(r.scores[metric], name=metric).sort_index()


def significance(runs: dict[str, dict], qrels, metric: str = "ndcg@10", test: str = "student"):
    """Paired test (ranx ``compare``) of every run against every other on their shared queries."""
    common = set(qrels)
    for run in runs.values():
        common &= set(run)
    qrels_c = Qrels({q: qrels[q] for q in sorted(common)})
    ranx_runs = [Run({q: trec_order(run[q]) for q in sorted(common)}, name=name) for name, run in runs.items()]
    return compare(qrels_c, ranx_runs, metrics=[metric], stat_test=test, max_p=0.05, make_comparable=True)


def p_values(runs: dict[str, dict], qrels, against: str, metric: str = "ndcg@10", test: str = "student") -> dict[str, float]:
    """Paired-test p-value of run ``against`` versus each other run (ranx). Two runs with the same
    score on every query get p = 1 (ranx's t-test divides by their zero spread and returns NaN)."""
    report = significance(runs, qrels, metric, test)
    out = {}
    for name in runs:
        if name != against:
            p = float(report.comparisons[against, name][metric]["p_value"])
            if math.isnan(p) and per_query(runs[against], qrels, metric).equals(per_query(runs[name], qrels, metric)):
                p = 1.0
            out[name] = p
    return out
