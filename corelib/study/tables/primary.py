"""The paper's primary claims, tested together: Holm over their pooled tests (the family-wise error across the
primary claims), beside each claim's own family verdict, and a model-level summary (the unweighted mean of the
models' differences and their range) beside the query-pooled estimate. Read from the comparisons tables; no
record is needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import analysis
from .schema import read, write

if TYPE_CHECKING:
    from ..core import Study


def primary_claims(study: "Study") -> pd.DataFrame | None:
    """One row per primary claim (``analysis.PRIMARY_CLAIMS``) that has a pooled test in the tables (or, in a
    one-model study, that model's test): the pooled
    estimate and interval as its family gives them, its p, the p Holm-adjusted over the primary claims, the
    verdict within its family and the verdict under the primary family; the mean of the models' differences, their
    smallest and largest, and how many models. None when no comparisons table is there yet."""
    rows = []
    for claim, table in analysis.PRIMARY_CLAIMS.items():
        df = read(study, table)
        if df is None:
            continue
        g = df[(df["claim"] == claim) & (df["head source"].isin(["nq", "all"]) | df["head source"].isna())]
        pooled = g[g["model"] == analysis.POOLED]
        models = g[g["model"] != analysis.POOLED]
        if pooled.empty and len(models) != 1:
            continue
        r = pooled.iloc[0] if len(pooled) else models.iloc[0]  # a one-model study: the model's test is the claim's
        lo, hi = (r["ci low (family)"], r["ci high (family)"]) if pd.notna(r["ci low (family)"]) else (r["ci low"], r["ci high"])
        rows.append({"claim": claim, "table": table, "difference": r["difference"], "ci low": lo, "ci high": hi,
                     "p": r["p"], "p inferior": r["p inferior"], "queries": r["queries"], "verdict (family)": r["verdict"],
                     "mean of models": models["difference"].mean() if len(models) else np.nan,
                     "models min": models["difference"].min() if len(models) else np.nan,
                     "models max": models["difference"].max() if len(models) else np.nan, "models": len(models)})
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df["p holm (primary)"] = analysis.holm(df["p"])
    margin = df["p inferior"].notna()
    # a margin claim is contradicted by its one-sided test of a loss beyond the margin: Holm over the same family
    # with that p in the margin claim's place
    df["p holm inferior (primary)"] = np.where(margin, analysis.holm(df["p inferior"].where(margin, df["p"])), np.nan)
    df["verdict (primary)"] = [
        analysis.margin_verdict(p, pi) if m else analysis.superiority_verdict(d, p)
        for p, pi, m, d in zip(df["p holm (primary)"], df["p holm inferior (primary)"], margin, df["difference"])]
    return write(study, "primary_claims", df)
