"""'Paper vs here' for the notebooks that set the study up or describe it without testing a claim: the data and
models (notebook 01), the head detection (02) and the ablations (09).

Each function reads one table and returns rows of the same shape as the verdict rows in ``report`` (claim, model,
paper, brief, verdict), with an empty verdict: these are settings and descriptive numbers, not tests, so they
carry no interval and no verdict. What the paper says is METHOD.md's (sections 1, 2 and 4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from .core import Study

PAPER_SETTING = {
    "collections": "15 BEIR collections and MLDR (de, en, es, fr, it, pt); granite-embedding top 40 candidates, "
                   "each cut to its first 300 words",
    "heads": "top 8 heads, under 1% of all heads (8 of Mistral-7B's 32 x 32 = 1,024: 0.8%)",
    "detection": "1,000 NQ training queries, 1 positive and 49 hard negatives at 5 positions (5,000 prompts); "
                 "t = 0.001 (Mistral-7B, Granite-3.2-8B) or 0.1 (Llama-3.1-8B, Phi-4)",
    "temperature": "t chosen per model: 0.001 for Mistral-7B and Granite-3.2-8B, 0.1 for Llama-3.1-8B and Phi-4",
    "calibration": "detection scores uncalibrated attention mass (re-ranking subtracts the content-free query's)",
    "negatives": "49 hard negatives, the positive at 5 positions",
    "length": "no length normalisation of a document's score",
}


def _row(claim: str, paper: str, model: str, brief: str) -> dict:
    return {"claim": claim, "model": model, "paper": paper, "brief": brief, "verdict": ""}


def _span(values: pd.Series, fmt: str = ".4f") -> str:
    lo, hi = values.min(), values.max()
    return format(lo, fmt) if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def collections(study: "Study", df: pd.DataFrame) -> list[dict]:
    p = study.p
    mono = df[df["collection"].isin(p.collections)]
    brief = (f"{len(mono)} collections ({', '.join(mono['collection'])}; {mono['documents'].min():,}-"
             f"{mono['documents'].max():,} documents)" + (f" and {', '.join(p.multilingual)}" if p.multilingual else "")
             + f"; {p.candidate_setting()}")
    return [_row("the collections and candidates", PAPER_SETTING["collections"], "", brief)]


def prompt_lengths(study: "Study", df: pd.DataFrame) -> list[dict]:
    k = study.p.num_heads
    rows = []
    for m, g in df.groupby("model", sort=False):
        layers, per_layer = int(g["layers"].iloc[0]), int(g["heads per layer"].iloc[0])
        heads = layers * per_layer
        rows.append(_row("how many heads the top k are", PAPER_SETTING["heads"], m,
                         f"top {k} of {layers} x {per_layer} = {heads:,} heads "
                         f"({k / heads:.1%}); prompts of {_span(g['mean tokens'], ',.0f')} tokens on average per collection"))
    return rows


def detection_temperature(study: "Study", df: pd.DataFrame) -> list[dict]:
    p = study.p
    rows = []
    for m, g in df.groupby("model", sort=False):
        others = g[g["temperature"] != p.temperature]
        shared = _span(others["top-k shared with the profile's t"], ".0f") if len(others) else ""
        stable = (f"at t = {', '.join(f'{t:g}' for t in others['temperature'])} the top {p.num_heads} shares "
                  f"{shared} of its {p.num_heads} heads with t = {p.temperature:g}" if len(others) else "")
        rows.append(_row("the detection set and temperature", PAPER_SETTING["detection"], m,
                         f"{p.detection_setting(m)}, {p.negatives} negatives, t = {p.temperature:g}"
                         + (f"; {stable}" if stable else "")))
    return rows


def ablation_temperature(study: "Study", df: pd.DataFrame) -> list[dict]:
    col = "CoRe-R nDCG@10"
    rows = []
    for m, g in df.groupby("model", sort=False):
        best = g.loc[g[col] == g[col].max(), "temperature"]
        rows.append(_row("the CoRe score's temperature", PAPER_SETTING["temperature"], m,
                         f"CoRe-R nDCG@10 {_span(g[col])} over t = {', '.join(f'{t:g}' for t in g['temperature'])} "
                         f"(highest at t = {', '.join(f'{t:g}' for t in best)})"))
    return rows


def ablation_calibrated_detection(study: "Study", df: pd.DataFrame) -> list[dict]:
    rows = []
    for m, g in df.groupby("model", sort=False):
        s = g.set_index(["method", "calibrated detection"])["nDCG@10"]
        moves = [f"{name} {100 * (s[(method, True)] - s[(method, False)]):+.2f} points"
                 for method, name in (("core", "CoRe-R"), ("qr", "QR-R"))
                 if (method, True) in s.index and (method, False) in s.index]
        rows.append(_row("calibrated detection", PAPER_SETTING["calibration"], m,
                         "detecting on calibrated mass moves " + ", ".join(moves)))
    return rows


def ablation_negatives_positions(study: "Study", df: pd.DataFrame) -> list[dict]:
    return [_row("negatives and positions in detection", PAPER_SETTING["negatives"], m,
                 "CoRe-R nDCG@10 with heads detected on " + "; ".join(f"{a}: {v:.4f}" for a, v in zip(g["ablation"], g["nDCG@10"])))
            for m, g in df.groupby("model", sort=False)]


def ablation_length_bias(study: "Study", df: pd.DataFrame) -> list[dict]:
    col = "spearman(score, length)"
    rows = []
    for m, g in df.groupby("model", sort=False):
        means = g.groupby("method", sort=False)[col].mean()
        rows.append(_row("preference for long documents", PAPER_SETTING["length"], m,
                         "mean within-query Spearman of score and length " + ", ".join(f"{k} {v:+.2f}" for k, v in means.items())))
    return rows


# a descriptive table -> its rows
OBSERVATIONS = {f.__name__: f for f in (collections, prompt_lengths, detection_temperature, ablation_temperature,
                                        ablation_calibrated_detection, ablation_negatives_positions, ablation_length_bias)}
