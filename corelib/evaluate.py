"""Metrics and significance through ranx (trec_eval conventions: linear-gain nDCG)."""

from __future__ import annotations

import pandas as pd
from ranx import Qrels, Run, compare, evaluate

DEFAULT_METRICS = ("ndcg@10",)


def _restrict(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]):
    """Evaluate on the queries present in both (a run over a query sample scores that sample)."""
    common = sorted(set(run) & set(qrels))
    if not common:
        raise ValueError("the run and the qrels share no query id: check that they belong to the same collection")
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


def evaluate_run(run, qrels, metrics=DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the queries that the run and the qrels share."""
    r, q = to_ranx(run, qrels)
    out = evaluate(q, r, list(metrics), make_comparable=True)
    return {metrics[0]: float(out)} if isinstance(out, float) else {k: float(v) for k, v in out.items()}


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
    """Paired-test p-value of run ``against`` versus each other run (ranx)."""
    report = significance(runs, qrels, metric, test)
    return {name: float(report.comparisons[against, name][metric]["p_value"]) for name in runs if name != against}
