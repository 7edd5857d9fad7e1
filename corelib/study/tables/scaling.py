"""The scaling view over the profile's models, read from the tables the notebooks wrote before."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import asdict, replace

import pandas as pd

from ...errors import UsageError
from ..analysis import SCALING_DEPTH
from .schema import read, write

if TYPE_CHECKING:
    from ..core import Study


def scaling(study: "Study") -> pd.DataFrame:
    """The scaling view: per model (by parameter count) the Table 1 means, the random-head median, the
    paired differences with their CIs, the depth of the top CoRe heads and the share of CoRe-R's
    nDCG@10 kept at 50% pruning; read from the tables the notebooks wrote before (NaN where absent)."""
    from ...models import dtype_name
    from ..profiles import MODEL_FACTS, ModelFacts

    avg, cmp_, ctl, depth, prune = (read(study, n) for n in ("table1_average", "comparisons_table1", "controls", "depth", "pruning"))
    if avg is None:
        raise UsageError("the scaling view reads table1_average: run notebook 03 (Table 1) first")
    committed = read(study, "scaling")
    # a narrowed study keeps the other models' committed rows (``write``): their sizes need their model files,
    # which a run of other models may not have installed (the 1.5B's wheels install on demand only)
    kept = set(study.other_models) & (set(committed["model"]) if committed is not None else set())
    rows = []
    for _, r in avg[~avg["model"].isin(kept)].iterrows():
        m = r["model"]
        facts = MODEL_FACTS.get(m, ModelFacts("", "", ""))  # a model outside the built-ins: its size only
        dtype = dtype_name(study.spec(m).dtype)
        facts = replace(facts, weights=f"{facts.weights}; forward in {dtype}" if facts.weights else f"forward in {dtype}")
        row = {"model": m, "parameters": float(study.parameter_count(m)), **asdict(facts), "queries": r["queries"],
               **{k: r[k] for k in ("BM25", "ICR", "QR-R", "CoRe-R", "NIAH-R")}}
        u = ctl[(ctl["model"] == m) & (ctl["control"] == "random (uniform)")] if ctl is not None else ()
        row["random 8 heads (median)"] = float(u["median"].iloc[0]) if len(u) else float("nan")
        for other in ("ICR", "QR-R"):
            c = cmp_[(cmp_["model"] == m) & (cmp_["a"] == "CoRe-R") & (cmp_["b"] == other) & (cmp_["head source"] == "nq")] \
                if cmp_ is not None else ()
            for col, src in (("", "difference"), (" ci low", "ci low"), (" ci high", "ci high")):
                row[f"CoRe-R - {other}{col}"] = float(c[src].iloc[0]) if len(c) else float("nan")
        d = depth[depth["model"] == m] if depth is not None else ()
        row[SCALING_DEPTH] = float(d["median relative depth"].iloc[0]) if len(d) else float("nan")
        pr = prune[(prune["model"] == m) & (prune["method"] == "CoRe-R") & (prune["level"].fillna("fixed") == "fixed")] \
            if prune is not None else None
        kept = pr.set_index("pruned share")["ndcg@10"] if pr is not None and len(pr) else {}
        row["CoRe-R kept at 50% pruning"] = float(kept[0.5] / kept[0.0]) if 0.5 in kept and 0.0 in kept else float("nan")
        rows.append(row)
    return write(study, "scaling", pd.DataFrame(rows).sort_values("parameters"))
