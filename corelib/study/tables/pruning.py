"""Layer pruning (Figure 3): nDCG@10 by pruned share and the non-inferiority test at 50%."""

from __future__ import annotations

import numpy as np
import pandas as pd
from typing import TYPE_CHECKING

from ...evaluate import per_query
from ...scoring import record_run
from .. import analysis
from ..profiles import kept_layers
from .schema import kept_p_values, write
from .table1 import claim_families

if TYPE_CHECKING:
    from ..core import Study


KEEPS_TOP = "keeps the top heads' layers"  # the ``level`` of the per-model share that keeps CoRe's top heads


def pruning_levels(study: "Study", m: str, k: int | None = None, temperature: float | None = None) -> list[tuple[float, int, str]]:
    """(pruned share, kept layers, level) of a model: the profile's fixed shares, and the largest share that
    keeps the layer of every unpruned CoRe top-k head (the paper's Mistral keeps most of its top heads at 50%;
    a shallower model loses them earlier, so a fixed share says less than this one)."""
    total = study.spec(m).num_layers
    deepest = max(l for l, _ in study.heads(m, "core", k, temperature))
    levels = [(share, kept_layers(total, share), "fixed") for share in study.p.prune_levels]
    return levels + [(1 - (deepest + 1) / total, deepest + 1, KEEPS_TOP)]


def pruning(study: "Study", k: int | None = None, temperature: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """nDCG@10 of CoRe-R, QR-R and NIAH-R with the heads re-selected among the kept layers, per pruned share
    (exact from all-layer records; ``pruning_levels``), and the per-query table of CoRe-R at 0% and 50% for the
    margin test (``per_query_pruning``, with the other models' committed rows in a narrowed study)."""
    k = k or study.p.num_heads
    rows, pq = [], []
    for m in study.p.models:
        for share, kept, level in pruning_levels(study, m, k, temperature):
            for method, key in study.head_methods(m).items():
                heads = study.heads(m, key, k, temperature, max_layers=kept)
                vals = []
                for c in study.p.collections:
                    pqs = per_query(record_run(study.records(m, c), heads), study.collection(c).qrels)
                    vals.append(pqs.mean())
                    if method == "CoRe-R" and level == "fixed" and share in (0.0, 0.5):
                        pq.append(pd.DataFrame({"model": m, "collection": c, "query_id": pqs.index.astype(str),
                                                "method": f"{share:.0%} pruned", "ndcg@10": pqs.values,
                                                "head source": "nq"}))
                rows.append({"model": m, "method": method, "pruned share": share, "kept layers": kept,
                             "ndcg@10": float(np.mean(vals)), "deepest head": max(l for l, _ in heads), "level": level})
    per_query_pruning = (write(study, "per_query_pruning", pd.concat(pq, ignore_index=True).assign(
        **{"first stage": study.p.first_stage, "k": k})) if pq else pd.DataFrame())
    return write(study, "pruning", pd.DataFrame(rows)), per_query_pruning


def pruning_margin(study: "Study", pq: pd.DataFrame, margin: float = analysis.PRUNING_MARGIN) -> pd.DataFrame:
    """Non-inferiority (TOST) of CoRe-R on the 50%-pruned model against the unpruned one."""
    rows, results = [], []
    models = list(dict.fromkeys(pq["model"]))
    for m in models + (["pooled (a query once)"] if len(models) > 1 else []):
        pool = m.startswith("pooled")
        d = analysis.paired_differences(pq if pool else pq[pq["model"] == m], "50% pruned", "0% pruned", pool=pool)
        r = analysis.paired(d, level=1 - 2 * analysis.ALPHA)  # TOST at 0.05 pairs with a 90% interval
        results.append(r)
        rows.append({"claim": f"50% pruning within {margin} point", "model": m, "a": "CoRe-R, 50% pruned",
                     "b": "CoRe-R, unpruned", "head source": "nq", "difference": r.estimate, "ci low": r.ci_low,
                     "ci high": r.ci_high, "p": analysis.one_sided_p(d, margin, greater=True),
                     "p inferior": analysis.one_sided_p(d, margin, greater=False),
                     "detectable (80% power)": r.mde, "queries": r.queries, "collections": r.collections,
                     "identical": r.identical})
    df = pd.DataFrame(rows)
    kept = kept_p_values(study, "comparisons_pruning", rows[0]["claim"], models) if rows else []
    family = pd.DataFrame(analysis.family_columns(results, list(df["p"]) + kept, interval_level=1 - 2 * analysis.ALPHA))
    return claim_families(study, pd.concat([df, family], axis=1).drop(columns=["identical"]))
