"""Verdicts on the paper's claims, gathered from the tables the study wrote (every verdict itself comes from
``analysis``, rules written before the numbers): the verdicts table, a notebook's closing findings, the summary and
the claims table the report opens with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import analysis
from ..observations import OBSERVATIONS
from ..tables.primary import primary_claims

if TYPE_CHECKING:
    from ..core import Study


# What the paper reports (METHOD.md section 4), Mistral-7B-Instruct-v0.2 unless noted.
PAPER = {
    "CoRe-R beats ICR": "CoRe-R beats ICR on the BEIR average, mostly by about 1 nDCG@10 point (Mistral, Llama, Granite)",
    "CoRe-R beats QR-R": "CoRe-R beats QR-R on average; top-8 QR heads do worse than ICR on Quora",
    "CoRe-R beats NIAH-R": "CoRe-R beats NIAH-R (Wu et al.'s retrieval heads) on the BEIR average (Table 1)",
    "ICR beats BM25": "(premise) attention re-ranking improves on the first stage",
    "CoRe-R beats Layer window": "(not in the paper; after Selective-ICR, arXiv 2602.22591) a few chosen heads beat all "
                                 "heads of the best window of layers",
    "ICR beats Dense": "(premise) attention re-ranking improves on the first stage (the paper re-ranks a dense "
                       "retriever's top 40)",
    "Dense beats BM25": "(setting, not a claim of the paper) the paper's kind of first stage against BM25",
    "CoRe-R beats Bi-encoder": "(not in the paper) the baseline a practitioner would try first: a small bi-encoder "
                               "(all-MiniLM-L6-v2) re-ranking the same candidates",
    "multilingual: CoRe-R beats ICR": "MLDR table (de, en, es, fr, it, pt): CoRe-R beats ICR on average",
    "multilingual: CoRe-R beats QR-R": "MLDR table (de, en, es, fr, it, pt): CoRe-R beats QR-R on average",
    "top heads in middle layers": "best CoRe heads in layers ~10-20 of 32 (Figure 2)",
    "50% pruning within 0.5 point": "BEIR average 50.9 -> 50.7 at 50% pruned (0/30/40/50/60/70%: 50.9, 50.9, 50.9, 50.7, "
                                    "48.9, 47.0); latency 1.01 -> 0.79 s/query, peak memory 25.4 -> 14.6 GB (Figure 3)",
    "peak below 10 heads": "DBPedia top-40: 1 head ~35.0, peak 38.0 at 9 heads, all 1,024 heads (ICR) ~36.0 (Figure 1)",
    "heads beat random heads": "(implicit) the contrastive choice of heads, not any small set, is what helps",
}



def _paper(claim: str) -> str:
    for key in sorted(PAPER, key=len, reverse=True):  # the most specific claim first ("multilingual: ...")
        if key in claim:
            return PAPER[key]
    return ""


def _family_interval(r) -> tuple[float, float] | None:
    """The interval at the level Holm tests the row in its family (None in tables written before it existed)."""
    lo, hi = r.get("ci low (family)"), r.get("ci high (family)")
    return (lo, hi) if pd.notna(lo) and pd.notna(hi) else None


def _disagrees(r, interval) -> bool:
    """The family interval excludes 0 on one side while the verdict says otherwise (the bootstrap interval and
    the sign-flip test are separate procedures, so they can part near the boundary)."""
    lo, hi = interval
    v = str(r["verdict"])
    if "within" in str(r["claim"]):  # a margin claim: its interval is read against the margin, not against 0
        return False
    return (lo > 0) != v.startswith("supported") or (hi < 0) != v.startswith("contradicted")


def _fmt_comparison(r) -> str:
    """A comparison row in words; a margin claim shows both one-sided tests, since either can decide it
    (tables written before the second was kept show the first only)."""
    level = "95%"
    if "within" in r["claim"]:
        level = "90%"  # the interval that pairs with the two one-sided tests
        tests = f"p (loss >= {analysis.PRUNING_MARGIN}) = {r['p']:.3g}, Holm p = {r['p holm']:.3g}"
        if pd.notna(r.get("p inferior")):
            tests += f"; p (loss <= {analysis.PRUNING_MARGIN}) = {r['p inferior']:.3g}, Holm p = {r['p holm inferior']:.3g}"
    else:
        tests = f"p = {r['p']:.3g}, Holm p = {r['p holm']:.3g}"
    fam = _family_interval(r)
    family = (f"; at the family's Holm level [{fam[0]:+.2f}, {fam[1]:+.2f}], detectable at 80% power "
              f"{r['detectable (80% power, family)']:.2f}" if fam else "")
    return (f"{r['difference']:+.2f} points [{r['ci low']:+.2f}, {r['ci high']:+.2f}] ({level} CI), {tests}, "
            f"{int(r['queries'])} queries in {int(r['collections'])} collections; "
            f"detectable at 80% power: {r['detectable (80% power)']:.2f}{family}")


def brief_result(r) -> str:
    """The short cell: the difference and the interval that goes with its verdict (the family-adjusted one);
    a table without it shows the unadjusted interval marked with *, and a family interval that parts from the
    verdict is marked with a dagger."""
    fam = _family_interval(r)
    if fam is None:
        return f"{r['difference']:+.2f} [{r['ci low']:+.2f}, {r['ci high']:+.2f}]*"
    return f"{r['difference']:+.2f} [{fam[0]:+.2f}, {fam[1]:+.2f}]" + ("\u2020" if _disagrees(r, fam) else "")


def _comparison_rows(cmp: pd.DataFrame) -> list[dict]:
    return [{"claim": r["claim"], "model": r["model"], "paper": _paper(r["claim"]), "ours": _fmt_comparison(r),
             "verdict": r["verdict"], "brief": brief_result(r), "estimate": r["difference"]} for _, r in cmp.iterrows()]


def _depth_rows(depth: pd.DataFrame, claim: str = "top heads in middle layers") -> list[dict]:
    where = "from released scores; Holm over the four models" if "source" in depth else "Holm over the models"
    return [{"claim": claim, "model": r["model"], "paper": PAPER["top heads in middle layers"],
             "ours": f"{r['of them in middle third']} of the {r['distinct top layers']} distinct layers of the top "
                     f"{r['top heads']} CoRe heads in the middle third of depth ({r['in middle third']} of the heads; "
                     f"layers {r['top layers']}; median relative depth {r['median relative depth']:.2f}); binomial vs "
                     f"1/3, a layer as the unit ({where}): p more {r['p more holm']:.3g}, fewer {r['p fewer holm']:.3g}",
             "verdict": r["verdict"],
             "brief": f"{r['of them in middle third']} of {r['distinct top layers']} top layers in the middle third"}
            for _, r in depth.iterrows()]


def _control_rows(controls: pd.DataFrame) -> list[dict]:
    adjusted = "p better holm" in controls and controls["p better holm"].notna().all()
    return [{"claim": f"{r['method']} heads beat random heads ({r['control']})", "model": r["model"],
             "paper": PAPER["heads beat random heads"],
             "ours": f"nDCG@10 {r['ndcg@10']:.4f}, percentile {r['percentile']:.1f} of the random sets; empirical p "
                     f"better {r['p better']:.3g}, worse {r['p worse']:.3g}"
                     + (f" (Holm over the models: {r['p better holm']:.3g}, {r['p worse holm']:.3g})" if adjusted else ""),
             "verdict": r["verdict"], "brief": f"percentile {r['percentile']:.1f}"}
            for _, r in controls[controls["method"].isin(["CoRe-R", "QR-R", "NIAH-R"])].iterrows()]


# a table -> the verdict rows it gives (every comparisons table gives comparison rows)
VERDICT_ROWS = {"depth": _depth_rows, "control_positions": _control_rows,
                "released_depth": lambda df: _depth_rows(df, "top heads in middle layers (paper's models, from released scores)")}


def _rows(study: "Study", name: str) -> list[dict]:
    df = study.tables.read(name)
    if df is None:
        return []
    if name in OBSERVATIONS:
        return OBSERVATIONS[name](study, df)
    return _comparison_rows(df) if name.startswith("comparisons_") else VERDICT_ROWS[name](df)


def verdicts(study: "Study") -> pd.DataFrame:
    """One row per claim and model (and pooled), from every comparisons table, the depth tests and the controls:
    the full result (``ours``) and a short one for the claims-at-a-glance matrix (``brief``)."""
    names = [p.stem for p in sorted(study.tables_dir.glob("comparisons_*.csv"))] + ["depth", "released_depth",
                                                                                    "control_positions"]
    rows = pd.DataFrame([row for name in names for row in _rows(study, name)], columns=study.tables.columns("verdicts"))
    # claim by claim (a narrowed run's tables hold each model's rows as one block), the profile's models in its
    # order, then the rows of no profile model (pooled, the released scores' models) as they came
    claim = rows["claim"].map({c: i for i, c in enumerate(dict.fromkeys(rows["claim"]))})
    rank = rows["model"].map({m: i for i, m in enumerate(study.profile_models)}).fillna(len(study.profile_models))
    rows = rows.iloc[np.lexsort((np.arange(len(rows)), rank.to_numpy(), claim.to_numpy()))].reset_index(drop=True)
    primary_claims(study)  # the primary claims' family, read by the report beside these verdicts
    return study.tables.write("verdicts", rows)


def findings(study: "Study", tables) -> str:
    """'Paper vs here' for the claims a notebook tested, from the tables it wrote (Markdown): a notebook ends
    with it, so its prose never states a number that its tables do not hold."""
    rows = pd.DataFrame([row for name in tables for row in _rows(study, name)])
    if rows.empty:
        return "No claim of this notebook was tested in this run (its tables are missing)."
    tested = bool(rows["verdict"].astype(bool).any())
    lines = ["**Paper vs here** (points of nDCG@10 [confidence interval] and the verdict under the analysis plan; "
             "generated from this run's tables)" if tested else
             "**Paper vs here** (this run's settings and descriptive numbers, generated from its tables; "
             "no claim is tested in this notebook)", ""]
    for claim, g in rows.groupby("claim", sort=False):
        paper = g["paper"].iloc[0]
        here = "; ".join(f"{r['model']} {r['brief']}".strip() + (f", {r['verdict']}" if r["verdict"] else "")
                         for _, r in g.iterrows())
        lines.append(f"- *{claim}*. Paper: {paper or '-'}. Here: {here}.")
    return "\n".join(lines)


def answer(study: "Study") -> str:
    """The report's summary as Markdown (notebook 10 ends with it): one generated sentence per main claim."""
    v = study.tables.read("verdicts")
    if v is None:
        return "No verdict yet: the notebooks that test the claims (03-08) write the tables this summary reads."
    return "\n".join(["**The answer** (as REPORT.md's summary; points of nDCG@10 [interval at the family's Holm "
                      "level] and the verdict)", "", *summary(v)])


def at_a_glance(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdicts as a matrix: a row per claim, a column per model (pooled last), each cell the short
    result and its verdict (points of nDCG@10 [95% CI] for a comparison); '-' where a claim was not tested."""
    models = list(dict.fromkeys(verdicts["model"]))
    models = [m for m in models if not m.startswith("pooled")] + [m for m in models if m.startswith("pooled")]
    cells = verdicts.assign(cell=verdicts["brief"] + ": " + verdicts["verdict"])
    matrix = cells.pivot_table(index="claim", columns="model", values="cell", aggfunc="first", sort=False)
    return matrix.reindex(index=list(dict.fromkeys(verdicts["claim"])), columns=models).fillna("-").reset_index()


SUMMARY_CLAIMS = ("CoRe-R beats ICR", "CoRe-R beats QR-R", "CoRe-R beats NIAH-R", "ICR beats BM25", "CoRe-R beats BM25",
                  "CoRe-R heads beat random heads (random (layer-matched to CoRe))", "top heads in middle layers",
                  "50% pruning within 0.5 point")


def summary(verdicts_table: pd.DataFrame) -> list[str]:
    """The report's opening: one generated sentence per main claim (pooled first where there is a pooled test,
    then each model's verdict), and the candidate-order and released-score results where they exist."""
    v = verdicts_table
    out = []
    for claim in SUMMARY_CLAIMS:
        rows = v[v["claim"] == claim]
        if rows.empty:
            continue
        pooled = rows[rows["model"].str.startswith("pooled")]
        per_model = rows[~rows["model"].str.startswith("pooled")]
        head = (f"pooled {pooled.iloc[0]['brief']}, {pooled.iloc[0]['verdict']}; " if len(pooled) else "")
        models = ", ".join(f"{r['model']} {r['brief']} {r['verdict']}" for _, r in per_model.iterrows())
        out.append(f"- **{claim}**: {head}per model: {models}.")
    order = v[v["claim"].str.contains(": ", regex=False) & v["claim"].str.startswith(("shuffled", "rank 1 last"))]
    for claim in ("CoRe-R beats ICR", "ICR beats BM25", "CoRe-R beats QR-R"):
        both = order[order["claim"].str.endswith(": " + claim)]
        if both.empty:
            continue
        cells = "; ".join(f"{r['claim'].split(': ')[0]}, {r['model']} {r['brief']} {r['verdict']}" for _, r in both.iterrows())
        out.append(f"- **Candidate order, {claim}** (order-check queries): {cells}.")
    rel = v[v["claim"].str.startswith("top heads in middle layers (paper's models")]
    if len(rel):
        out.append("- **The paper's own models** (from released scores): top heads in the middle third: "
                   + ", ".join(f"{r['model']} {r['brief']} ({r['verdict']})" for _, r in rel.iterrows()) + ".")
    return out


# The paper's number for the claims table, with the model and data that gave it (METHOD.md section 4)
PAPER_NUMBERS = {
    "CoRe-R beats ICR": "about +1 (Mistral-7B, Llama-3.1-8B, Granite-3.2-8B; BEIR, granite-embedding top-40)",
    "CoRe-R beats QR-R": "positive on average (same models and data)",
    "CoRe-R beats NIAH-R": "positive on average (same models and data)",
    "peak below 10 heads": "peak 38.0 at 9 heads, ~36.0 with all 1,024 (Mistral-7B, DBPedia top-40)",
    "50% pruning within 0.5 point": "-0.2: 50.9 -> 50.7 (Mistral-7B, BEIR average)",
    "top heads in middle layers": "layers ~10-20 of 32 (Mistral-7B)",
    "ICR beats BM25": "(premise, not measured against BM25)",
    "CoRe-R beats BM25": "(premise)",
    "CoRe-R heads beat random heads": "(implicit: the contrastive choice, not any small set, helps)",
    "multilingual: CoRe-R beats ICR": "positive on average (MLDR de, en, es, fr, it, pt; same models)",
}
MARK = {"supported": "\u2713", "contradicted": "\u2717", "inconclusive": "\u00b7"}  # the claims table's per-model cells
# The claims table's rows: the primary claims, then the secondary ones a reader asks about first (every other
# verdict is in the appendix); a claim absent from the tables is left out
CLAIMS_TABLE = (*analysis.PRIMARY_CLAIMS, "top heads in middle layers", "CoRe-R beats Layer window",
                "CoRe-R beats Bi-encoder", "ICR beats BM25", "CoRe-R beats BM25",
                "CoRe-R heads beat random heads (random (layer-matched to CoRe))",
                "multilingual: CoRe-R beats ICR", "shuffled (seed 0): CoRe-R beats ICR",
                "shuffled (seed 0): ICR beats BM25", "shuffled (seed 0): CoRe-R beats BM25",
                "order-robust within 0.5 point: CoRe-R [none]", "order-robust within 0.5 point: CoRe-R [position prior]",
                "order-robust within 0.5 point: CoRe-R [invariant prompt]",
                "CoRe-R [invariant prompt] (shuffled (seed 0)) beats BM25",
                "CoRe-R [invariant prompt] (shuffled (seed 0)) beats Bi-encoder",
                "CoRe-R [invariant prompt] (shuffled (seed 0)) beats ICR [invariant prompt] (shuffled (seed 0))",
                "top heads in middle layers (paper's models, from released scores)")


def verdict_mark(verdict: str) -> str:
    """The claims table's mark of a verdict (its first word), '' for none."""
    return MARK.get(str(verdict).split(" ")[0], "")


def claims_table(verdicts_table: pd.DataFrame, primary: pd.DataFrame | None, models: list[str]) -> pd.DataFrame:
    """The report's first table: per claim its tier (primary or secondary), the paper's number (model, data), the
    pooled result [interval] and verdict, the primary family's verdict, the mean of the models' estimates with
    their range, and each model's estimate with a mark for its verdict."""
    v = verdicts_table
    prim = primary.set_index("claim") if primary is not None else pd.DataFrame()
    rows = []
    for claim in CLAIMS_TABLE:
        g = v[v["claim"] == claim]
        if g.empty:
            continue
        pooled = g[g["model"].str.startswith("pooled")]
        if pooled.empty and len(g) == 1:  # one model's test (a one-model study, or a claim only one model has)
            pooled = g
        row = {"claim": claim, "tier": "primary" if claim in analysis.PRIMARY_CLAIMS else "secondary",
               "paper": next((n for k, n in PAPER_NUMBERS.items() if claim.startswith(k)), "(not in the paper)"),
               "here: pooled, or the only model": f"{pooled.iloc[0]['brief']} {pooled.iloc[0]['verdict']}" if len(pooled) else "-"}
        if claim in prim.index:
            p = prim.loc[claim]
            deciding = p["p holm inferior (primary)"] if str(p["verdict (primary)"]).startswith("contradicted") \
                and pd.notna(p["p holm inferior (primary)"]) else p["p holm (primary)"]
            row["primary family (Holm over 5)"] = f"{p['verdict (primary)']} (Holm p {deciding:.3g})"
            row["mean of models [min, max]"] = (f"{p['mean of models']:+.2f} [{p['models min']:+.2f}, {p['models max']:+.2f}]"
                                                if p["models"] > 1 else "-")
        else:
            row["primary family (Holm over 5)"] = "-"
            nums = g.loc[~g["model"].str.startswith("pooled"), "estimate"].dropna()
            row["mean of models [min, max]"] = (f"{nums.mean():+.2f} [{nums.min():+.2f}, {nums.max():+.2f}]"
                                                if len(nums) > 1 else "-")
        cells = {r["model"]: (f"{r['estimate']:+.2f}" if pd.notna(r["estimate"]) else r["brief"]) + " " + verdict_mark(r["verdict"])
                 for _, r in g.iterrows()}
        for m in models if not claim.endswith("released scores)") else []:
            row[m] = cells.get(m, "-")
        if claim.endswith("released scores)"):
            row["here: pooled, or the only model"] = "; ".join(f"{m.split('/')[-1]} {c}" for m, c in cells.items())
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.fillna("-")
