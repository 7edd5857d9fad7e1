"""Detected heads: the top heads of each method, NIAH detection, overlaps, temperature, depth (Figure 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from typing import TYPE_CHECKING

from ...architecture import global_attention_layers
from .. import analysis
from ..methods import NIAH_PROMPT_SOURCE, NIAH_SOURCE
from .schema import family, write

if TYPE_CHECKING:
    from ..core import Study


def top_heads(study: "Study", k: int | None = None, temperature: float | None = None) -> pd.DataFrame:
    k = k or study.p.num_heads
    rows = []
    for m in study.p.models:
        for method in study.head_methods(m).values():
            t = study.head_scores(m, method, temperature).table().head(k)
            rows.append(t.assign(model=m, method=method, **{"head source": NIAH_SOURCE if method == "niah" else "nq"}))
    df = pd.concat(rows).rename(columns={"relative_depth": "relative depth"})
    return write(study, "top_heads", df)


def head_score_maps(study: "Study", temperature: float | None = None) -> pd.DataFrame:
    """Every head's score and rank for each method (table ``head_scores``, which Figure 2's maps are drawn
    from), with the layers that attend over the whole prompt marked (gemma3's 3 of 18; every layer elsewhere)."""
    rows = []
    for m in study.p.models:
        spec = study.spec(m)
        global_layers = global_attention_layers(spec)
        for method in study.head_methods(m).values():
            s = study.head_scores(m, method, temperature)
            t = s.table()
            rows.append(t.assign(model=m, method=method, temperature=s.provenance.get("temperature"),
                                 **{"head source": {"niah": NIAH_SOURCE, "niah-prompt": NIAH_PROMPT_SOURCE}.get(method, "nq"),
                                    "global-attention layer": True if global_layers is None else t["layer"].isin(global_layers)}))
    return write(study, "head_scores", pd.concat(rows, ignore_index=True).rename(columns={"relative_depth": "relative depth"}))


def niah_detection(study: "Study") -> pd.DataFrame:
    """NIAH-R's detection per model and grid (the profile's context lengths, and the prompts' length where the
    profile has that grid): how many trials retrieved the needle (and so count), how many heads ever copied, and
    the decoding time the trials took."""
    from ...niah import MIN_RECALL

    p, rows = study.p, []
    grids = [False] + ([True] if p.niah_prompt_lengths else [])  # and the grid at the prompts' length
    for m, long in ((m, long) for m in study.p.models for long in grids):
        trials = study.niah_trials(m, long)
        counted = [r for r in trials if r.counted()]
        rows.append({"model": m, "haystack": p.niah_haystack, "needles": p.niah_needles,
                     "context lengths": list(study.niah_lengths(long)), "depths": list(p.niah_depths), "trials": len(trials),
                     "counted": len(counted), "counted share": len(counted) / len(trials),
                     "mean recall": float(np.mean([r.recall for r in trials])),
                     "decode tokens (max)": max(r.steps for r in trials),
                     "heads above 0": int((torch.stack([r.hits for r in counted]).mean(0) > 0).sum()) if counted else 0,
                     "ties broken by": f"mean attention on the needle (counted: ROUGE-1 recall > {MIN_RECALL})",
                     "decode seconds": float(sum(r.seconds for r in trials))})
    return write(study, "niah_detection", pd.DataFrame(rows))


def overlap(study: "Study", k: int | None = None, temperature: float | None = None, sources=("nq",)) -> pd.DataFrame:
    """Top-k heads that CoRe, QR and NIAH share (NIAH: from its needle trials, whatever the source)."""
    k = k or study.p.num_heads
    rows = []
    for m in study.p.models:
        niah = set(study.heads(m, "niah", k)) if "NIAH-R" in study.head_methods(m) else None
        for src in sources:
            excl = [None] if src == "nq" else list(study.p.collections)
            sets = [(set(study.heads(m, "core", k, temperature, src, e)), set(study.heads(m, "qr", k, temperature, src, e)))
                    for e in excl]
            nan = float("nan")
            rows.append({"model": m, "head source": src if src == "nq" else f"{src} (mean over held-out collections)",
                         "k": k, "CoRe and QR share": float(np.mean([len(c & q) for c, q in sets])),
                         "CoRe and NIAH share": float(np.mean([len(c & niah) for c, _ in sets])) if niah else nan,
                         "QR and NIAH share": float(np.mean([len(q & niah) for _, q in sets])) if niah else nan})
    return write(study, "overlap", pd.DataFrame(rows))


def detection_temperature(study: "Study", k: int | None = None, temperatures=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)) -> pd.DataFrame:
    k = k or study.p.num_heads
    rows = []
    for m in study.p.models:
        ref = study.head_scores(m, "core")
        for t in temperatures:
            s = study.head_scores(m, "core", t)
            rho = pd.Series(s.scores.flatten().numpy()).corr(pd.Series(ref.scores.flatten().numpy()), method="spearman")
            rows.append({"model": m, "temperature": t,
                         "top-k shared with the profile's t": len(set(s.order()[:k]) & set(ref.order()[:k])),
                         "spearman vs the profile's t": round(rho, 3), "best head": s.order()[0]})
    return write(study, "detection_temperature", pd.DataFrame(rows))


def depth(study: "Study", k: int | None = None, temperature: float | None = None) -> pd.DataFrame:
    k = k or study.p.num_heads
    rows = []
    for m in study.p.models:
        top = study.head_scores(m, "core", temperature).table().head(k)
        spec = study.spec(m)
        global_layers = global_attention_layers(spec)
        rows.append({"model": m, "layers": spec.num_layers, "top heads": len(top),
                     "top layers": sorted(top["layer"].tolist()),
                     "in middle third": int(analysis.in_middle_third(top["layer"], spec.num_layers).sum()),
                     "median relative depth": float(top["relative_depth"].median()),
                     "global-attention layers": "all" if global_layers is None else str(global_layers),
                     "top heads in global layers": len(top) if global_layers is None else int(top["layer"].isin(global_layers).sum()),
                     "largest share keeping the top layers": analysis.share_keeping_layers(top["layer"], spec.num_layers)})
    return write(study, "depth", pd.DataFrame(rows).assign(**{c: np.nan for c in LAYER_TEST}, verdict=""))


# the middle-third test's columns, computed from "top layers" and "layers" (``middle_third_family``)
LAYER_TEST = ("distinct top layers", "of them in middle third", "p more", "p fewer", "p more holm", "p fewer holm")


@family("depth")
@family("released_depth")
def middle_third_family(study: "Study", df: pd.DataFrame) -> pd.DataFrame:
    """The middle-third test, a distinct layer as the unit, per model from its top layers; Holm over the models,
    and the verdicts."""
    import ast

    df = df.copy()
    tops = [t if isinstance(t, list) else ast.literal_eval(str(t)) for t in df["top layers"]]
    tests = [analysis.middle_third_test(t, int(n)) for t, n in zip(tops, df["layers"])]
    df["of them in middle third"], df["distinct top layers"] = [t[0] for t in tests], [t[1] for t in tests]
    df["p more"], df["p fewer"] = [t[2] for t in tests], [t[3] for t in tests]
    df["p more holm"], df["p fewer holm"] = analysis.holm(df["p more"]), analysis.holm(df["p fewer"])
    df["verdict"] = [analysis.middle_third_verdict(a, b) for a, b in zip(df["p more holm"], df["p fewer holm"])]
    return df


def ship_head_rankings(study: "Study") -> list:
    """The profile's committed rankings of the built-in models (``results/heads``), each head's score added from
    table ``head_scores`` in the ranking's order, written into the package's ``head_rankings`` folder. A ranking
    whose order differs from the table's is refused; a model without rows in the table ships its order alone."""
    from ...catalogue import BUILTIN_MODELS
    from ...errors import UsageError
    from ...heads import HeadSet, head_ranking_path, shipped_heads_dir
    from ..methods import NIAH_SOURCE

    table = study.tables.read("head_scores")
    written = []
    for m in study.p.models:
        if m not in BUILTIN_MODELS:
            continue
        spec = study.spec(m)
        for key in ("core", "qr", "niah"):
            path = head_ranking_path(study.heads_dir, spec.model_id, key, spec.fingerprint)
            if not path.is_file():
                continue
            ranking = HeadSet.load(path)
            rows = None if table is None else table[(table["model"] == m) & (table["method"] == key)
                                                    & table["head source"].isin(["nq", NIAH_SOURCE])]
            if rows is not None and key == "core":
                rows = rows[np.isclose(rows["temperature"], study.p.temperature)]
            if rows is not None and len(rows):
                rows = rows.sort_values("rank")
                order = list(zip(rows["layer"].astype(int), rows["head"].astype(int)))
                if order != ranking.heads:
                    raise UsageError(f"{path}: its order differs from table head_scores' for {m} {key}: "
                                     "regenerate both from the same run before shipping them")
                ranking.scores = rows["score"].astype(float).tolist()
            written.append(ranking.save(head_ranking_path(shipped_heads_dir(), spec.model_id, key, spec.fingerprint)))
    return written
