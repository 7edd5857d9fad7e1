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
from .schema import family, read, write

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


MATCHED = "random (layer-matched to CoRe)"
MATCHED_DISJOINT = "random (layer-matched, no CoRe head)"


def matched_sets(layer_counts: dict[int, int], heads_per_layer: int, n: int, rng: random.Random,
                 exclude=()) -> tuple[list[list[tuple[int, int]]], int]:
    """Head sets with ``layer_counts[l]`` heads in layer l, none of them in ``exclude``, and how many distinct
    ones exist: all of them when at most ``n``, else ``n`` drawn at random (with replacement among sets)."""
    excluded = set(map(tuple, exclude))
    pools = {l: [h for h in range(heads_per_layer) if (l, h) not in excluded] for l in layer_counts}
    distinct = math.prod(math.comb(len(pools[l]), c) for l, c in layer_counts.items())
    if distinct <= n:
        per_layer = [list(itertools.combinations([(l, h) for h in pools[l]], c)) for l, c in layer_counts.items()]
        return [[h for part in combo for h in part] for combo in itertools.product(*per_layer)], distinct
    return [[(l, h) for l, c in layer_counts.items() for h in sorted(rng.sample(pools[l], c))] for _ in range(n)], distinct


def control_sets(study: "Study", m: str, n: int | None = None, k: int | None = None, seed: int = 0) -> dict[str, list]:
    """Random head sets: uniform; matched to the layers of the CoRe top-k; and matched to them without any of
    CoRe's own heads (all distinct ones of a matched control when fewer than n exist; ``control_counts`` says
    how many)."""
    return {name: sets for name, (sets, _) in _control_sets(study, m, n, k, seed).items()}


def control_counts(study: "Study", m: str, n: int | None = None, k: int | None = None) -> dict[str, int]:
    """How many distinct sets each control of ``control_sets`` has to draw from."""
    return {name: distinct for name, (_, distinct) in _control_sets(study, m, n, k).items()}


def _control_sets(study: "Study", m: str, n: int | None = None, k: int | None = None, seed: int = 0):
    n = n or study.p.control_sets
    k = k or study.p.num_heads
    spec = study.spec(m)
    L, H = spec.num_layers, spec.num_heads
    rng = random.Random(seed)
    every = [(l, h) for l in range(L) for h in range(H)]
    uniform = [rng.sample(every, k) for _ in range(n)]
    core = study.heads(m, "core", k)
    counts = {int(l): int(c) for l, c in pd.Series(sorted(l for l, _ in core)).value_counts().sort_index().items()}
    return {"random (uniform)": (uniform, math.comb(L * H, k)),
            MATCHED: matched_sets(counts, H, n, rng),
            MATCHED_DISJOINT: matched_sets(counts, H, n, rng, exclude=core)}


def controls(study: "Study", methods: dict[str, dict[str, list]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Where ICR, QR-R, CoRe-R, NIAH-R and the layer window fall among random head sets; the best single heads
    on the evaluated queries (an in-sample reference, not a bound: a set of good single heads need not be the
    best set); gemma3's global-attention heads as a set. Each method's verdict is Holm-adjusted over the models
    (its family: one control, one method, every model)."""
    k = study.p.num_heads
    dist_rows, pos_rows, dists, set_rows = [], [], {}, []
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
        core = set(named["CoRe-R"])
        for control, (sets, distinct) in _control_sets(study, m).items():
            if not sets:  # e.g. every head of a layer is one of CoRe's: no set without them
                dist_rows.append({"model": m, "control": control, "sets": 0, "distinct sets": distinct})
                continue
            scores = set_scores(study, m, sets)
            dists[m, control] = scores
            set_rows.append(pd.DataFrame({"model": m, "control": control, "set": np.arange(len(scores)),
                                          "ndcg@10": scores}))
            dist_rows.append({"model": m, "control": control, "sets": len(sets), "distinct sets": distinct,
                              "mean CoRe heads shared": float(np.mean([len(core & set(x)) for x in sets])),
                              "smallest p": 1 / (1 + len(sets)), "median": float(np.median(scores)),
                              "p5": float(np.percentile(scores, 5)), "p95": float(np.percentile(scores, 95))})
            for method, score in method_scores.items():
                pct, pb, pw = analysis.control_p(score, scores)
                pos_rows.append({"model": m, "control": control, "method": method, "ndcg@10": score, "percentile": pct,
                                 "p better": pb, "p worse": pw, "sets": len(sets)})
    positions = pd.DataFrame(pos_rows).assign(**{"p better holm": np.nan, "p worse holm": np.nan, "monte carlo error": np.nan,
                                                 "verdict": ""})
    write(study, "control_set_scores", pd.concat(set_rows, ignore_index=True) if set_rows else pd.DataFrame())
    return write(study, "controls", pd.DataFrame(dist_rows)), write(study, "control_positions", positions), dists


@family("control_positions")
def control_families(study: "Study", positions: pd.DataFrame) -> pd.DataFrame:
    """Holm over the models within each (control, method) family, and the verdicts; a control's set count
    (which bounds its smallest p) is read from the ``controls`` table, written first. (Until the layer window's
    rows named their layers in the method, which made each model a family of its own, they were not adjusted
    over the models; corrected after those numbers existed, as the plan says.)"""
    counts = read(study, "controls")
    merged = positions.merge(counts[["model", "control", "sets", "distinct sets"]], on=["model", "control"], how="left") \
        if counts is not None else pd.DataFrame({"sets": np.nan, "distinct sets": np.nan}, index=positions.index)
    sets = merged["sets"]
    # every distinct set drawn (an enumeration): the empirical p is exact, with no Monte Carlo error
    exact = (merged["distinct sets"] <= merged["sets"]).to_numpy()
    # a family: every model's row of one control and method, the method named without its model's own details
    # ("Layer window (layers 18-18)", "global-attention heads (12)"), so that Holm runs over the models
    family_method = positions["method"].str.replace(r" \((layers \d+-\d+|\d+)\)$", "", regex=True)
    family_size = pd.Series(1, index=positions.index)
    for _, idx in positions.groupby([positions["control"], family_method], sort=False).groups.items():
        positions.loc[idx, "p better holm"] = analysis.holm(positions.loc[idx, "p better"])
        positions.loc[idx, "p worse holm"] = analysis.holm(positions.loc[idx, "p worse"])
        family_size[idx] = len(idx)
    n = sets.to_numpy(dtype=float)
    positions["monte carlo error"] = [0.0 if x else analysis.monte_carlo_error(b, w, bh, wh, k) for b, w, bh, wh, k, x in
                                      zip(positions["p better"], positions["p worse"], positions["p better holm"],
                                          positions["p worse holm"], n, exact)]
    positions["verdict"] = [analysis.control_verdict(b, w, method == IN_SAMPLE, None if np.isnan(k) else k, m, e)
                            for b, w, method, k, m, e in zip(positions["p better holm"], positions["p worse holm"],
                                                             positions["method"], n, family_size, positions["monte carlo error"])]
    return positions


IN_SAMPLE = "best single heads (in-sample reference, not a bound)"
