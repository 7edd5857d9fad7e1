"""Head-set controls: where each method's heads fall among random head sets."""

from __future__ import annotations

import itertools
import math
import random
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ...architecture import global_attention_heads
from ...evaluate import ndcg_rows
from ...scoring import filtered_doc_sum, head_index
from .. import analysis
from .schema import write

if TYPE_CHECKING:
    from ..core import Study


def set_scores(study: "Study", m: str, sets: list[list[tuple[int, int]]], chunk: int = 250) -> np.ndarray:
    """Mean over collections of mean nDCG@10 for each head set (scored on the cached records): [R]."""
    idx = torch.stack([head_index(s) for s in sets])  # [R, K, 2]
    per_collection = []
    for c in study.p.collections:
        qrels = study.collection(c).qrels
        scored = []
        for r in study.records(m, c):
            rows = []
            for lo in range(0, len(idx), chunk):
                part = idx[lo: lo + chunk]
                tok = r.token_scores[part[..., 0], part[..., 1]].sum(1)  # [R, T]
                rows.append(filtered_doc_sum(tok, r.bounds))
            scored.append((r.query_id, r.doc_ids, torch.cat(rows).numpy()))
        per_collection.append(ndcg_rows(scored, qrels)[1].mean(0))
    return np.mean(per_collection, axis=0)


def control_sets(study: "Study", m: str, n: int | None = None, k: int | None = None, seed: int = 0) -> dict[str, list]:
    """Random head sets: uniform, and layer-matched to the CoRe top-k (all distinct ones when fewer than n)."""
    n = n or study.p.control_sets
    k = k or study.p.num_heads
    spec = study.spec(m)
    L, H = spec.num_layers, spec.num_heads
    rng = random.Random(seed)
    every = [(l, h) for l in range(L) for h in range(H)]
    uniform = [rng.sample(every, k) for _ in range(n)]
    layers = sorted(l for l, _ in study.heads(m, "core", k))
    counts = pd.Series(layers).value_counts().sort_index()
    distinct = math.prod(math.comb(H, int(c)) for c in counts)
    if distinct <= n:
        per_layer = [list(itertools.combinations([(int(l), h) for h in range(H)], int(c))) for l, c in counts.items()]
        matched = [[h for part in combo for h in part] for combo in itertools.product(*per_layer)]
    else:
        matched = [[(int(l), h) for l, c in counts.items() for h in rng.sample(range(H), int(c))] for _ in range(n)]
    return {"random (uniform)": uniform, "random (layer-matched to CoRe)": matched}


def controls(study: "Study", methods: dict[str, dict[str, list]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Where ICR, QR-R, CoRe-R, NIAH-R and the layer window fall among random head sets; the best single heads
    on the evaluated queries (an in-sample reference, not a bound: a set of good single heads need not be the
    best set); gemma3's global-attention heads as a set. Each method's verdict is Holm-adjusted over the models
    (its family: one control, one method, every model)."""
    k = study.p.num_heads
    dist_rows, pos_rows, dists = [], [], {}
    for m in study.p.models:
        spec = study.spec(m)
        L, H = spec.num_layers, spec.num_heads
        singles = [[(l, h)] for l in range(L) for h in range(H)]
        single_scores = set_scores(study, m, singles)
        oracle = [singles[i][0] for i in np.argsort(-single_scores, kind="stable")[:k]]
        named = {"ICR": [(l, h) for l in range(L) for h in range(H)],
                 **{name: study.heads(m, key, k) for name, key in study.head_methods(m).items()},
                 IN_SAMPLE: oracle}
        first, last = study.layer_window(m)
        named[f"Layer window (layers {first}-{last})"] = study.layer_window_heads(m)
        named.update((methods or {}).get(m, {}))
        if globals_ := global_attention_heads(spec):  # None where every layer sees the whole prompt
            named[f"global-attention heads ({len(globals_)})"] = globals_
        method_scores = {name: float(set_scores(study, m, [heads])[0]) for name, heads in named.items()}
        for control, sets in control_sets(study, m).items():
            scores = set_scores(study, m, sets)
            dists[m, control] = scores
            dist_rows.append({"model": m, "control": control, "sets": len(sets), "median": float(np.median(scores)),
                              "p5": float(np.percentile(scores, 5)), "p95": float(np.percentile(scores, 95))})
            family = []
            for method, score in method_scores.items():
                pct, pb, pw = analysis.control_p(score, scores)
                family.append({"model": m, "control": control, "method": method, "ndcg@10": score, "percentile": pct,
                               "p better": pb, "p worse": pw})
            pos_rows += family
    positions = pd.DataFrame(pos_rows)
    for _, idx in positions.groupby(["control", "method"], sort=False).groups.items():  # a family: every model
        positions.loc[idx, "p better holm"] = analysis.holm(positions.loc[idx, "p better"])
        positions.loc[idx, "p worse holm"] = analysis.holm(positions.loc[idx, "p worse"])
    positions["verdict"] = [analysis.control_verdict(b, w, method == IN_SAMPLE) for b, w, method in
                            zip(positions["p better holm"], positions["p worse holm"], positions["method"])]
    return write(study, "controls", pd.DataFrame(dist_rows)), write(study, "control_positions", positions), dists


IN_SAMPLE = "best single heads (in-sample reference, not a bound)"
