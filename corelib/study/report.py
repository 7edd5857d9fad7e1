"""Verdicts on the paper's claims from the study's tables, and the report (REPORT.md).

Every verdict comes from ``analysis`` (rules written down before the numbers); this module only
gathers the rows the tables already hold and lays them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import analysis
from ..errors import MissingInput
from .observations import OBSERVATIONS
from ..architecture import global_attention_layers, model_config
from ..models import dtype_name
from .methods import NIAH_PROMPT
from .tables import METHODS
from .tables.schema import later_commands, whole_runs

if TYPE_CHECKING:
    from .core import Study

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


def attention_note(name: str, model) -> str | None:
    """A sentence for the report where a model's layers do not all see the whole prompt (None otherwise)."""
    layers = global_attention_layers(model)
    if layers is None:
        return None
    window = getattr(model_config(model), "sliding_window", None)
    return (f"{name}: {model.num_layers - len(layers)} of its {model.num_layers} layers attend only to the last "
            f"{window} tokens (sliding window); only layers {layers} see the whole prompt, so from the query a head "
            f"of the other layers reaches only the documents within {window} tokens of it. ICR sums every layer's "
            "heads; the depth table counts the top CoRe heads in the global layers, and the head-set controls "
            "include the global-attention heads as a set.")


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


def _brief(r) -> str:
    """The short cell: the difference and the interval that goes with its verdict (the family-adjusted one);
    a table without it shows the unadjusted interval marked with *, and a family interval that parts from the
    verdict is marked with a dagger."""
    fam = _family_interval(r)
    if fam is None:
        return f"{r['difference']:+.2f} [{r['ci low']:+.2f}, {r['ci high']:+.2f}]*"
    return f"{r['difference']:+.2f} [{fam[0]:+.2f}, {fam[1]:+.2f}]" + ("\u2020" if _disagrees(r, fam) else "")


def _comparison_rows(cmp: pd.DataFrame) -> list[dict]:
    return [{"claim": r["claim"], "model": r["model"], "paper": _paper(r["claim"]), "ours": _fmt_comparison(r),
             "verdict": r["verdict"], "brief": _brief(r)} for _, r in cmp.iterrows()]


def _depth_rows(depth: pd.DataFrame, claim: str = "top heads in middle layers") -> list[dict]:
    where = "from released scores; Holm over the four models" if "source" in depth else "Holm over the models"
    return [{"claim": claim, "model": r["model"], "paper": PAPER["top heads in middle layers"],
             "ours": f"{r['in middle third']}/{r['top heads']} top CoRe heads in the middle third of depth (layers "
                     f"{r['top layers']}; median relative depth {r['median relative depth']:.2f}); binomial vs 1/3 "
                     f"({where}): p more {r['p more holm']:.3g}, fewer {r['p fewer holm']:.3g}",
             "verdict": r["verdict"], "brief": f"{r['in middle third']} of {r['top heads']} in the middle third"}
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


# Columns in points of nDCG@10 (the comparisons table's and every "A - B" column) print with 2 decimals, as
# the verdicts do; percentiles with 1; a column of whole numbers (counts, layers, sets) without decimals
# unless it holds scores (nDCG@10 of a method, of a control's quantile). Everything else: 4 decimals.
POINTS_COLUMNS = {"difference", "ci low", "ci high", "detectable (80% power)"}
SCORE_COLUMNS = {*METHODS, "median", "p5", "p95", "random 8 heads (median)"}


def column_format(name: str, values: pd.Series) -> str:
    """The format a float column of a report table prints with (see the rules above)."""
    if name in POINTS_COLUMNS or " - " in name:
        return ".2f"
    if name == "percentile":
        return ".1f"
    finite = values.dropna()
    whole = len(finite) and bool((finite == finite.round()).all())
    if whole and name not in SCORE_COLUMNS and "ndcg" not in name.lower():
        return ",.0f"
    return ".4f"


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    formats = {c: column_format(str(c), pd.to_numeric(df[c], errors="coerce")) for c in cols}
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [("-" if v != v else f"{v:,.0f}" if abs(v) >= 1e5 else format(v, formats[c])) if isinstance(v, float)
                 else str(v) for c, v in zip(cols, row)]  # NaN: no test; large counts such as parameters without decimals
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEADLINE = ("BM25", "Bi-encoder", "ICR", "QR-R", "CoRe-R", "NIAH-R", "Layer window")  # the README's columns


def headline(study: "Study") -> str:
    """The README's headline table (``python -m corelib.study headline``; a test checks that the README holds
    it): mean nDCG@10 over the profile's collections per model, in the profile's order, and method, with each
    model's evaluated queries (``table1_average``), and the dtype and commit of the run that computed them
    (``provenance``; the report names its command)."""
    avg = study.tables.read("table1_average")
    if avg is None:
        raise MissingInput(f"no table1_average in {study.tables_dir}: run notebook 03 of profile {study.p.name} first")
    rank = {m: i for i, m in enumerate(study.profile_models)}
    avg = avg.assign(order=avg["model"].map(rank)).sort_values("order", kind="stable")
    cols = [c for c in HEADLINE if avg[c].notna().any()]
    prov = study.tables.read("provenance")  # the dtype of the run that computed each model's rows
    run = (whole_runs(prov).set_index("model") if prov is not None
           else pd.DataFrame(columns=["dtype", "commit"]))
    later = later_commands(prov) if prov is not None else pd.DataFrame()
    if len(later):  # one note per later command, naming the models whose rows it recomputed
        later = later.groupby(["command", "commit", "methods"], sort=False)["model"].agg(", ".join).reset_index()
        later = later[[any(x in cols for x in r.split(", ")) for r in later["methods"]]]
    mark = {}  # a method recomputed alone by a later command: its column marked, the command named below the table
    for sign, (_, r) in zip("†‡§", later.iterrows()):
        for method in r["methods"].split(", "):
            mark[method] = mark.get(method, "") + sign
    df = pd.DataFrame({"model": avg["model"], "queries": avg["queries"].map(lambda n: f"{int(n):,}"),
                       "dtype": avg["model"].map(run["dtype"]).fillna("-"),
                       "commit": avg["model"].map(run["commit"]).fillna("-"),
                       **{c + mark.get(c, ""): avg[c].to_numpy() for c in cols}})
    notes = [f"{sign} {r['methods']} of {r['model']}: `{r['command']}` at commit {r['commit']}"
             for sign, (_, r) in zip("†‡§", later.iterrows())]
    return markdown_table(df) + "".join(f"\n\n{n}" for n in notes)


def _forest_view(df: pd.DataFrame) -> pd.DataFrame:
    """The pooled test's difference [95% CI] per claim and collection (every model's rows: the figure)."""
    pooled = df[df["model"] == analysis.POOLED] if (df["model"] == analysis.POOLED).any() else df
    cells = pooled.assign(cell=[f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi in
                                zip(pooled["difference"], pooled["ci low"], pooled["ci high"])])
    return cells.pivot_table(index=["claim", "model"], columns="collection", values="cell", aggfunc="first",
                             sort=False).reset_index()


def _leave_one_out_view(df: pd.DataFrame) -> pd.DataFrame:
    """Each claim's estimate per model with each collection left out (columns), none left out first."""
    wide = df.pivot_table(index=["claim", "model"], columns="left out", values="difference", aggfunc="first", sort=False)
    return wide.map(lambda x: f"{x:+.2f}").reset_index()  # points, as every difference prints


# The report's sections: (title, table name, figures, [view]). Figures are file stems under the profile's figures
# folder ("{model}" is filled in per model); a view lays a table out another way. Tables not produced are listed.
SECTIONS = [
    ("Verdicts", "verdicts", (), lambda df: df.drop(columns="brief")),
    ("Table 1 analog: nDCG@10 per collection (NQ heads)", "table1", ("table1_rerank",)),
    ("Table 1 analog: mean over collections per model", "table1_average", ("table1_rerank",)),
    ("Per-collection differences of the main claims (pooled; per model in the figure)", "forest", ("forest",),
     _forest_view),
    ("The main claims leaving out one collection at a time", "leave_one_out", ("forest",), _leave_one_out_view),
    ("Agreement of each method with the first stage", "first_stage_agreement", ()),
    ("Candidate order: the claims with shuffled candidates and in ICR's order, same queries", "comparisons_order", ()),
    ("Candidate order: agreement with BM25 under each order", "order_agreement", ()),
    ("Cost a practitioner reads: latency per query against a bi-encoder", "practitioner_cost", ()),
    ("Scaling view: the methods and CoRe-R's differences by model size", "scaling", ("scaling",)),
    ("Head-set controls: random 8-head sets", "controls", ("controls_{model}",)),
    ("Head-set controls: where each method falls", "control_positions", ("controls_{model}",)),
    ("Detection sources side by side (NQ vs in-domain, leave-one-collection-out)", "in_domain_sources", ()),
    ("NIAH-R detection: needle trials per model", "niah_detection", ()),
    ("Top-8 overlap of CoRe, QR and NIAH heads", "overlap", ()),
    ("Figure 1 analog: head-count sweep peaks", "sweep_peaks", ("fig1_head_count_sweep_{model}",)),
    ("Figure 2 analog: depth of the top CoRe heads", "depth", ("fig2_heatmap_{model}",)),
    ("The paper's own models (from released scores): depth of the top CoRe heads", "released_depth",
     ("fig2_heatmap_released_{released}",)),
    ("The paper's own models (from released scores): the top heads under pruning", "released_pruning", ()),
    ("Figure 3 analog: layer pruning", "pruning", ("fig3_pruning",)),
    ("Figure 3 analog: measured cost of the pruned forward and of the early exit", "pruning_cost", ("fig3_pruning_cost",)),
    ("Table 2 analog (MLDR; XQuAD-R stand-in offline)", "table2", ("table2_multilingual",)),
    ("Table 2 analog: mean over languages", "table2_average", ("table2_multilingual",)),
    ("Precision check: records in bf16 against fp32 (the analysis plan's rule)", "precision", ()),
    ("Precision check: Table 1's per-model verdicts under both dtypes", "precision_verdicts", ()),
    ("Ablation: temperature", "ablation_temperature", ()),
    ("Ablation: calibrated detection", "ablation_calibrated_detection", ()),
    ("Ablation: negatives and positive position", "ablation_negatives_positions", ()),
    ("Ablation: length bias", "ablation_length_bias", ()),
]
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


def depth_note(depth: pd.DataFrame | None, released: pd.DataFrame | None) -> str | None:
    """How far each model can be pruned before it loses a layer of its top CoRe heads (the pruning claim's
    dependence on depth), from the depth tables; None when neither has the column."""
    import ast

    parts = []
    for df, where in ((depth, ""), (released, " (released scores)")):
        if df is None:
            continue
        for _, r in df.iterrows():
            share = r["largest share keeping the top layers"]
            if pd.isna(share):  # a table written before the column: the same number from its top layers
                top = r["top layers"] if isinstance(r["top layers"], list) else ast.literal_eval(str(r["top layers"]))
                share = analysis.share_keeping_layers(top, int(r["layers"]))
            parts.append(f"{r['model']}{where} {share:.0%}")
    if not parts:
        return None
    return ("- **Pruning depends on depth**: the largest share of the last layers that keeps the layer of every top "
            "CoRe head is " + ", ".join(parts) + "; a fixed 50% keeps them all only where that share is at least 50%.")


def precision_note(agree: pd.DataFrame | None, verdicts: pd.DataFrame | None) -> str | None:
    """The precision check's outcome per model and dtype (the analysis plan's rule), from its tables."""
    if agree is None or agree.empty:
        return None
    parts = []
    for (model, dtype), g in agree.groupby(["model", "dtype"], sort=False):
        checked = g[g["checked"].astype(bool)]
        cells = ", ".join(f"{r['method']} {r['difference (points)']:+.2f} points ({r['queries within 0.05']:.0%} of queries "
                          f"within 0.05)" for _, r in checked.iterrows())
        v = verdicts[(verdicts["model"] == model) & (verdicts["dtype"] == dtype)] if verdicts is not None else verdicts
        same = (f"; {int(v['unchanged'].sum())} of {len(v)} of Table 1's verdicts unchanged" if v is not None and len(v) else "")
        ok = bool(g["passes"].iloc[0])
        why = "" if ok else f" ({g['failed'].iloc[0]}): the model stays in fp32"
        parts.append(f"{model} in {dtype} against fp32 on its {int(checked['queries'].max())} committed queries, heads "
                     f"detected again: {cells}{same}; {'passes' if ok else 'fails'}{why}")
    return "- **Precision check**: " + "; ".join(parts) + "."


def machine_note(agree: pd.DataFrame | None, verdicts: pd.DataFrame | None,
                 provenance: pd.DataFrame | None = None) -> str | None:
    """A model's rerun on another machine against its earlier run (the precision check's rule), from its tables:
    Table 1's checked methods, the largest move among the other per-query tables, the heads, every verdict and,
    from ``provenance``, which of the two runs the tables hold (the rerun's where it passed, else the earlier)."""
    if agree is None or agree.empty:
        return None
    parts = []
    for model, g in agree.groupby("model", sort=False):
        r0, checked = g.iloc[0], g[g["checked"].astype(bool)]
        cells = ", ".join(f"{r['method']} {r['difference (points)']:+.2f} points ({r['queries within 0.05']:.0%} of "
                          f"queries within 0.05, {r['queries identical']:.0%} identical)" for _, r in checked.iterrows())
        v = verdicts[verdicts["model"] == model] if verdicts is not None else None
        same = f"; {int(v['unchanged'].sum())} of {len(v)} verdicts unchanged" if v is not None and len(v) else ""
        rest = g[g["table"] != "per_query"]
        if len(rest) and (rest["queries identical"] == 1).all():
            cells += f"; every score of the other per-query tables ({', '.join(rest['table'].unique())}) identical"
        elif len(rest):  # the other per-query tables: the largest move of a mean
            far = rest.loc[rest["difference (points)"].abs().idxmax()]
            cells += (f"; the other per-query tables' means within {abs(far['difference (points)']):.2f} point "
                      f"({far['table']} {far['method']})")
        heads = "the same top heads" if bool(r0["top heads unchanged"]) else "other top heads"
        ok = bool(r0["passes"])
        runs = whole_runs(provenance) if provenance is not None else pd.DataFrame(columns=["model", "commit"])
        runs = runs[runs["model"] == model]
        held = str(runs["commit"].iloc[-1]) if len(runs) else None
        held = {r0["commit"]: ": the tables hold the rerun's rows", r0["reference commit"]: ": the tables keep the "
                "earlier run's rows"}.get(held, "")
        parts.append(f"{model}'s {r0['dtype']} rows from {r0['machine']} at {r0['commit']} against its earlier run on "
                     f"{r0['reference machine']} at {r0['reference commit']}, {int(checked['queries'].max())} queries: "
                     f"{cells}; {heads}{same}; {'passes' if ok else 'fails (' + str(r0['failed']) + ')'}{held}")
    return "- **Rerun on another machine**: " + "; ".join(parts) + "."


def sample_notes(study: "Study") -> list[str]:
    """Where a model's committed Table 1 rows hold another number of evaluated queries than the profile's
    sample gives (the tables predate a change of the profile), one line saying so and how to catch up."""
    t = study.tables
    avg, coll = t.read("table1_average"), t.read("collections")
    if avg is None or coll is None:
        return []
    judged = dict(zip(coll["collection"], coll["judged queries"]))
    if not set(study.p.collections) <= set(judged):
        return []
    notes, check = [], t.read("precision")
    for _, r in avg.iterrows():
        if r["model"] not in study.profile_models:
            continue
        want = study.p.expected_queries(r["model"], judged)
        # the committed rows are the fp32 side of the model's precision check where its ICR mean is that side's
        fp32 = check[(check["model"] == r["model"]) & (check["method"] == "ICR")] if check is not None else None
        fp32 = (" (in fp32: they are the fp32 side of its precision check)" if fp32 is not None and len(fp32)
                and abs(float(fp32["ndcg@10 fp32"].iloc[0]) - float(r["ICR"])) < 1e-9 else "")
        if int(r["queries"]) != want:
            notes.append(f"- **{r['model']}'s rows predate the profile's sample**: the tables hold {int(r['queries'])} "
                         f"evaluated queries of it{fp32}, the profile's sample has {want} ({study.p.sizes(r['model'])}); "
                         f"`make pending PROFILE={study.p.name} MODEL={r['model']}` lists the records left, then "
                         f"`make reproduce PROFILE={study.p.name} MODEL={r['model']}` rewrites them.")
    pq = t.read("per_query")
    if study.p.niah_needles and study.p.niah_prompt_lengths and pq is not None:
        have = set(pq.loc[pq["method"] == NIAH_PROMPT, "model"])
        lacking = [m for m in study.profile_models if m not in have and m in set(pq["model"])]
        if lacking:
            notes.append(f"- **{NIAH_PROMPT} is not in these tables for {', '.join(lacking)}**: the profile runs its "
                         f"needle trials at the prompts' length ({list(study.p.niah_prompt_lengths)} tokens), which "
                         f"these models' rows predate; `make reproduce PROFILE={study.p.name} MODEL=<model>` adds it.")
    return notes


def dtype_notes(study: "Study") -> list[str]:
    """Where the run that computed a model's committed rows used another dtype than the profile now computes it
    in (a model whose precision check passed after its rows were written), one line saying so."""
    prov = study.tables.read("provenance")
    if prov is None:
        return []
    runs = whole_runs(prov).set_index("model")["dtype"]
    notes = []
    for m in study.profile_models:
        want = study.p.dtype_for(m)  # None: the device's default, which the tables cannot be checked against
        if want and m in runs.index and runs[m] != want:
            notes.append(f"- **{m}'s rows are {runs[m]}, and the profile now computes it in {want}** (its precision "
                         f"check passed, `precision.csv`): `make reproduce PROFILE={study.p.name} MODEL={m}` rewrites "
                         f"them in {want}.")
    return notes


def reproduce_command(profile_name: str, models=None) -> str:
    """The command of a run of a profile, narrowed to ``models`` where given, as table ``provenance`` names it."""
    models = " ".join(models or [])
    narrowed = (f' MODEL="{models}"' if " " in models else f" MODEL={models}") if models else ""
    return f"make reproduce PROFILE={profile_name}{narrowed}"


def record_provenance(study: "Study") -> pd.DataFrame:
    """Which run computed each model's rows (table ``provenance``): the command, the commit, the date and the
    machine, for the study's models; a narrowed study keeps the other models' rows (the notebooks' last step)."""
    command = reproduce_command(study.p.name, study.p.models if study.other_models else None)
    rows = [{"model": m, "command": command, **run_stamp(),
             "dtype": dtype_name(study.spec(m).dtype),  # as loaded: the profile's, or the device's default
             "methods": ""}
            for m in study.p.models]
    return study.tables.write("provenance", pd.DataFrame(rows))


def run_stamp() -> dict[str, str]:
    """The commit (marked where the code has uncommitted changes), the date and the machine of a run."""
    import datetime
    import os
    import subprocess

    from .timing import machine_key

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
        # the code that computes (results being written are not a change of it)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/corelib", ":/notebooks",
                                ":/Makefile", ":/requirements*.txt", ":/pyproject.toml"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    key = machine_key()
    return {"commit": commit, "date": datetime.date.today().isoformat(),
            "machine": f"{key['device']}, {os.cpu_count()} cores ({key['cpu']})"}


def later_provenance(study: "Study", command: str, what: str, models=None) -> pd.DataFrame:
    """Add to table ``provenance`` a later command that recomputed ``what`` alone (some methods' rows, "BM25,
    Bi-encoder", or a table, "table practitioner_cost") for ``models`` (default: every model the table names),
    replacing an earlier row of the same ``what``; the runs that computed the rest stay."""
    old = study.tables.read("provenance")
    if old is None:
        raise MissingInput(f"no provenance table in {study.tables_dir}: run `make reproduce PROFILE={study.p.name}` first")
    whole = whole_runs(old)
    models = list(whole["model"]) if models is None else list(models)
    rows = pd.DataFrame([{"model": m, "command": command, **run_stamp(), "dtype": "-", "methods": what} for m in models])
    kept = later_commands(old)
    kept = kept[kept["methods"] != what]
    return study.tables.write("provenance", pd.concat([whole, kept, rows], ignore_index=True))


def provenance_lines(df: pd.DataFrame | None) -> list[str]:
    """The report's provenance: one line per run that computed some models' rows."""
    if df is None or df.empty:
        return []
    lines = []
    df = df.assign(methods=df["methods"].fillna(""))
    for (command, commit, date, methods), g in df.groupby(["command", "commit", "date", "methods"], sort=False):
        if methods:  # a later command that recomputed some methods' rows alone
            what = f"{methods} ({', '.join(g['model'])})" if methods.startswith("table ") else \
                f"{methods} rows of {', '.join(g['model'])}"
            lines.append(f"- {what}: `{command}` at commit {commit}, {date} ({'; '.join(dict.fromkeys(g['machine']))})")
            continue
        machines = "; ".join(dict.fromkeys(g["machine"] + ", " + g["dtype"]))
        folder = executed_folder(command)
        # a whole-profile run's notebooks show every model it ran, also those a later narrowed run recomputed
        later = [m for m in dict.fromkeys(df.loc[df["methods"] == "", "model"]) if m not in set(g["model"])]
        shown = f" (they also show the earlier rows of {', '.join(later)})" if folder == "./" and later else ""
        rest = " (every row but those recomputed below)" if (df["methods"] != "").any() else ""
        lines.append(f"- {', '.join(g['model'])}{rest}: `{command}` at commit {commit}, {date} ({machines}); its "
                     f"executed notebooks are in `{folder}` (Table 1's: [`03_table1_rerank.ipynb`]({folder}03_table1_rerank.ipynb))"
                     f"{shown}")
    return ["Which run computed each model's rows:", "", *lines, ""]


def executed_folder(command: str) -> str:
    """Where a ``make reproduce`` command wrote its executed notebooks, relative to the profile's REPORT.md (the
    Makefile's EXECUTED): the profile's folder, or ``models/<a+b>/`` for a run narrowed with MODEL=."""
    import shlex

    models = [w.split("=", 1)[1] for w in shlex.split(command) if w.startswith("MODEL=")]
    return f"models/{'+'.join(models[0].split())}/" if models else "./"


APPENDIX = "Appendix: the analysis plan"


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def anchor_tag(title: str) -> str:
    """An explicit anchor before a heading, under the forge's slug of its title: the forge and JupyterLab's Markdown
    preview (which names a heading by its own text, and an ``id`` as ``data-jupyter-id``) both scroll to it."""
    return f'<a id="{_anchor(title)}"></a>'


def _figure_links(study: "Study", stems, rel_prefix: str) -> list[str]:
    from ..heads import RELEASED_MODELS

    links = []
    for stem in stems:
        names = ([stem.format(model=m) for m in study.profile_models] if "{model}" in stem else
                 [stem.format(released=m.split("/")[-1]) for m in RELEASED_MODELS] if "{released}" in stem else [stem])
        links += [f"[{n}]({rel_prefix}/{n}.png)" for n in names if (study.figures_dir / f"{n}.png").is_file()]
    return links


def write_report(study: "Study", path: Path, notes: str = "") -> Path:
    """Write ``report_text`` to ``path`` (REPORT.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_text(study, path, notes))
    return path


def report_text(study: "Study", path: Path, notes: str = "") -> str:
    """REPORT.md's text, for a report at ``path`` (its links are relative to it): the answer first (a generated
    summary and the claims at a glance), a table of contents, then every table with the figures that show it, and
    the analysis plan as an appendix."""
    import os

    p = study.p
    t = study.tables
    v = t.read("verdicts")
    rel_figures = os.path.relpath(study.figures_dir.resolve(), path.parent.resolve())
    rel_tables = os.path.relpath(study.tables_dir.resolve(), path.parent.resolve())
    models = study.profile_models  # a narrowed study's tables hold the other models' rows too
    sizes = p.summary(models)
    text = [f"# Report: CoRe heads reproduction ({p.name} profile)", "",
            f"Produced by `make reproduce PROFILE={p.name}`; tables in `{rel_tables}/` and figures in `{rel_figures}/` "
            f"(each section links its own). Models: {', '.join(models)}. Sizes: {sizes}.", "",
            *provenance_lines(t.read("provenance"))]
    if v is not None:
        text += ["## Summary", "", "Points of nDCG@10 [interval] and the verdict under the analysis plan (appendix); "
                 "Holm within each claim's family, and each interval at the level Holm tests its row (95% before "
                 "adjustment; 90% for a margin), so that it agrees with the verdict (* marks an unadjusted 95% "
                 "interval of a table written before the adjusted ones existed; \u2020 one where the bootstrap interval "
                 "and the sign-flip test part); the pooled test counts a query once (the models' samples differ "
                 "in size, so a model with more queries weighs more in it).", "", *summary(v),
                 *filter(None, [depth_note(t.read("depth"), t.read("released_depth")),
                                precision_note(t.read("precision"), t.read("precision_verdicts")),
                                machine_note(t.read("machine_check"), t.read("machine_check_verdicts"),
                                             t.read("provenance"))]),
                 *sample_notes(study), *dtype_notes(study), ""]
        ours = v[v["model"].isin(models) | v["model"].str.startswith("pooled")]  # the paper's models: their section
        text += ["## Claims at a glance", "", markdown_table(at_a_glance(ours)), ""]
    tables = {name: t.read(name) for _, name, *_ in SECTIONS}  # each table read once
    present = [(title, name, figs, view) for title, name, figs, *view in SECTIONS if tables[name] is not None]
    text += ["## Contents", "", *[f"- [{title}](#{_anchor(title)})" for title, *_ in present],
             f"- [{APPENDIX}](#{_anchor(APPENDIX)})", ""]
    if notes:
        text += [notes, ""]
    text += ["Setup: nDCG@10 via ranx, shown as a fraction (0-1); differences (columns named \"A - B\", and every "
             "verdict) are in points, i.e. 100 x the difference in nDCG@10. QR-R is the CoRe paper's QR baseline "
             "(uncalibrated attention mass on the positive, same detection prompts as CoRe), not QRHead's own procedure.", ""]
    depth = t.read("depth")
    for m in models:
        if note := _attention_note_from(depth, m, study):
            text += [f"**Attention window.** {note}", ""]
    missing = [name for name, df in tables.items() if df is None]
    for title, name, figs, view in present:
        df = tables[name]
        text += [anchor_tag(title), f"## {title}", "", f"Table: [`{name}.csv`]({rel_tables}/{name}.csv)."
                 + (" Figures: " + ", ".join(links) + "." if (links := _figure_links(study, figs, rel_figures)) else ""),
                 "", markdown_table(_without_empty_methods(view[0](df) if view else df)), ""]
    if missing:
        text += ["## Not produced in this run", "", ", ".join(f"`{m}`" for m in dict.fromkeys(missing)), ""]
    text += [anchor_tag(APPENDIX), f"## {APPENDIX}", "", analysis.RULES, ""]
    return "\n".join(text)


def _without_empty_methods(df: pd.DataFrame) -> pd.DataFrame:
    """A table without the method columns no row has (e.g. Dense in a profile that re-ranks BM25 candidates, the
    layer window in a table written before it existed): a column of dashes only says nothing."""
    from .methods import TABLE1

    return df.drop(columns=[c for c in df.columns if (c in TABLE1 or c.startswith(tuple(f"CoRe-R - {m}" for m in TABLE1)))
                            and df[c].isna().all()])


def _attention_note_from(depth: pd.DataFrame | None, model: str, study: "Study") -> str | None:
    """The attention-window note, from the depth table's global layers where it has them (no model file is
    read), else from the model's config."""
    if depth is not None and "global-attention layers" in depth:
        row = depth[depth["model"] == model]
        if len(row) and str(row.iloc[0]["global-attention layers"]) == "all":
            return None
    return attention_note(model, study.spec(model))
