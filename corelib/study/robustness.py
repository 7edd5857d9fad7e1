"""How much each main claim rests on one collection, and how closely each method follows the first stage.

From the per-query table alone (no record is read): each claim's difference and CI per collection (the
forest plot), the pooled estimate leaving out each collection in turn, and the per-query correlation of
each method's nDCG@10 with BM25's. Descriptive: the verdicts stay those of the claims' own tests
(``analysis.RULES``); these tables say where an estimate comes from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import analysis
from ..errors import MissingInput
from .methods import NIAH_SOURCES

if TYPE_CHECKING:
    from .core import Study

MAIN_CLAIMS = (("CoRe-R", "ICR"), ("CoRe-R", "QR-R"), ("CoRe-R", "NIAH-R"), ("CoRe-R", "BM25"), ("ICR", "BM25"))
POOLED = analysis.POOLED
ALL_COLLECTIONS = analysis.ALL_COLLECTIONS


def _nq(pq: pd.DataFrame) -> pd.DataFrame:
    """The per-query rows of the NQ heads (and of the methods that select no heads)."""
    return pq[pq["head source"].fillna("").isin(["", "all", "nq", *NIAH_SOURCES])]


def _differences(pq: pd.DataFrame, a: str, b: str):
    """(model or POOLED, per-query differences) for each model that has both methods, then pooled."""
    sel = _nq(pq)
    models = [m for m in dict.fromkeys(sel["model"]) if {a, b} <= set(sel[sel["model"] == m]["method"])]
    for m in models:
        part = sel[sel["model"] == m]
        yield m, analysis.paired_differences(part[part["method"].isin([a, b])], a, b)
    if len(models) > 1:
        part = sel[sel["model"].isin(models) & sel["method"].isin([a, b])]
        yield POOLED, analysis.paired_differences(part, a, b, pool=True)


def forest(study: "Study", pq: pd.DataFrame, claims=MAIN_CLAIMS) -> pd.DataFrame:
    """Each claim's paired difference and 95% CI per collection and over all (table ``forest``)."""
    rows = []
    for a, b in claims:
        for m, d in _differences(pq, a, b):
            for c, g in [(c, g) for c, g in d.groupby("collection", sort=False)] + [(ALL_COLLECTIONS, d)]:
                r = analysis.paired(g)
                rows.append({"claim": f"{a} beats {b}", "model": m, "collection": c, "difference": r.estimate,
                             "ci low": r.ci_low, "ci high": r.ci_high, "queries": r.queries})
    return study.tables.write("forest", pd.DataFrame(rows))


def leave_one_out(study: "Study", pq: pd.DataFrame, claims=MAIN_CLAIMS) -> pd.DataFrame:
    """Each claim's estimate (CI, p) with each collection left out in turn (table ``leave_one_out``)."""
    rows = []
    for a, b in claims:
        for m, d in _differences(pq, a, b):
            for c in [None, *dict.fromkeys(d["collection"])]:
                r = analysis.paired(d if c is None else d[d["collection"] != c])
                rows.append({"claim": f"{a} beats {b}", "model": m, "left out": c or "none", "difference": r.estimate,
                             "ci low": r.ci_low, "ci high": r.ci_high, "p": r.p, "queries": r.queries,
                             "collections": r.collections})
    return study.tables.write("leave_one_out", pd.DataFrame(rows))


def first_stage_agreement(study: "Study", pq: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlation of each method's per-query nDCG@10 with BM25's, per model over its queries
    (table ``first_stage_agreement``)."""
    rows = []
    for m, part in _nq(pq).groupby("model", sort=False):
        wide = part.pivot_table(index=["collection", "query_id"], columns="method", values="ndcg@10")
        for method in [x for x in wide.columns if x != "BM25" and wide[x].notna().any()]:
            both = wide[[method, "BM25"]].dropna()
            rows.append({"model": m, "method": method, "queries": len(both),
                         "correlation with BM25 (per-query ndcg@10)": float(np.corrcoef(both[method], both["BM25"])[0, 1])})
    return study.tables.write("first_stage_agreement", pd.DataFrame(rows))


def write_all(study: "Study") -> dict[str, pd.DataFrame]:
    """The three tables and the forest figure from the study's committed per-query table (``per_query``,
    written by notebook 03): ``python -m corelib.study robustness --profile cpu``."""
    from . import plots

    pq = study.tables.read("per_query")
    if pq is None:
        raise MissingInput(f"no per-query table in {study.tables_dir}: run notebook 03 of profile {study.p.name} "
                                "(`make reproduce`) first")
    out = {"forest": forest(study, pq), "leave_one_out": leave_one_out(study, pq),
           "first_stage_agreement": first_stage_agreement(study, pq)}
    p = study.p
    fig = plots.forest(out["forest"], f"Per-collection paired differences, profile {p.name} ({p.first_stage.upper()} "
                                      f"top {p.top_k}, NQ heads, top {p.num_heads}; 95% CIs)")
    plots.save(fig, study.figures_dir / "forest")
    return out
