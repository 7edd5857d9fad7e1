"""Verdicts on the paper's claims from the study's tables, and the report (REPORT.md).

Every verdict comes from ``analysis`` (rules written down before the numbers); this module only
gathers the rows the tables already hold and lays them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import analysis
from ..architecture import global_attention_layers, model_config
from .tables import METHODS

if TYPE_CHECKING:
    from .core import Study

# What the paper reports (METHOD.md section 4), Mistral-7B-Instruct-v0.2 unless noted.
PAPER = {
    "CoRe-R beats ICR": "CoRe-R beats ICR on the BEIR average, mostly by about 1 nDCG@10 point (Mistral, Llama, Granite)",
    "CoRe-R beats QR-R": "CoRe-R beats QR-R on average; top-8 QR heads do worse than ICR on Quora",
    "CoRe-R beats NIAH-R": "CoRe-R beats NIAH-R (Wu et al.'s retrieval heads) on the BEIR average (Table 1)",
    "ICR beats BM25": "(premise) attention re-ranking improves on the first stage",
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


def _fmt_comparison(r) -> str:
    """A comparison row in words; a margin claim shows both one-sided tests, since either can decide it
    (tables written before the second was kept show the first only)."""
    if "within" in r["claim"]:
        tests = f"p (loss >= {analysis.PRUNING_MARGIN}) = {r['p']:.3g}, Holm p = {r['p holm']:.3g}"
        if pd.notna(r.get("p inferior")):
            tests += f"; p (loss <= {analysis.PRUNING_MARGIN}) = {r['p inferior']:.3g}, Holm p = {r['p holm inferior']:.3g}"
    else:
        tests = f"p = {r['p']:.3g}, Holm p = {r['p holm']:.3g}"
    return (f"{r['difference']:+.2f} points [{r['ci low']:+.2f}, {r['ci high']:+.2f}], {tests}, "
            f"{int(r['queries'])} queries in {int(r['collections'])} collections; "
            f"detectable at 80% power: {r['detectable (80% power)']:.2f}")


def verdicts(study: "Study") -> pd.DataFrame:
    """One row per claim and model (and pooled), from every comparisons table, the depth test and the controls:
    the full result (``ours``) and a short one for the claims-at-a-glance matrix (``brief``)."""
    t = study.tables
    rows = []
    for path in sorted(study.tables_dir.glob("comparisons_*.csv")):
        cmp = t.read(path.stem)
        for _, r in cmp.iterrows():
            rows.append({"claim": r["claim"], "model": r["model"], "paper": _paper(r["claim"]),
                         "ours": _fmt_comparison(r), "verdict": r["verdict"],
                         "brief": f"{r['difference']:+.2f} [{r['ci low']:+.2f}, {r['ci high']:+.2f}]"})
    depth = t.read("depth")
    if depth is not None:
        for _, r in depth.iterrows():
            rows.append({"claim": "top heads in middle layers", "model": r["model"], "paper": PAPER["top heads in middle layers"],
                         "ours": f"{r['in middle third']}/{r['top heads']} top CoRe heads in the middle third of depth "
                                 f"(layers {r['top layers']}; median relative depth {r['median relative depth']:.2f}); "
                                 f"binomial vs 1/3: Holm p more {r['p more holm']:.3g}, fewer {r['p fewer holm']:.3g}",
                         "verdict": r["verdict"], "brief": f"{r['in middle third']} of {r['top heads']} in the middle third"})
    controls = t.read("control_positions")
    if controls is not None:
        for _, r in controls[controls["method"].isin(["CoRe-R", "QR-R", "NIAH-R"])].iterrows():
            rows.append({"claim": f"{r['method']} heads beat random heads ({r['control']})", "model": r["model"],
                         "paper": PAPER["heads beat random heads"],
                         "ours": f"nDCG@10 {r['ndcg@10']:.4f}, percentile {r['percentile']:.1f} of the random sets; "
                                 f"empirical p better {r['p better']:.3g}, worse {r['p worse']:.3g}",
                         "verdict": r["verdict"], "brief": f"percentile {r['percentile']:.1f}"})
    return t.write("verdicts", pd.DataFrame(rows, columns=t.columns("verdicts")))


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


# The report's sections: (title, table name[, view]). A view lays a table out another way (columns it drops
# or a reshaping). Tables not produced yet are listed as missing.
SECTIONS = [
    ("Claims at a glance (points of nDCG@10 [95% CI] or the test's statistic: verdict)", "verdicts", at_a_glance),
    ("Verdicts", "verdicts", lambda df: df.drop(columns="brief")),
    ("Table 1 analog: nDCG@10 per collection (NQ heads)", "table1"),
    ("Table 1 analog: mean over collections per model", "table1_average"),
    ("Cost a practitioner reads: latency per query against a bi-encoder", "practitioner_cost"),
    ("Scaling view: the methods and CoRe-R's differences by model size", "scaling"),
    ("Head-set controls: random 8-head sets", "controls"),
    ("Head-set controls: where each method falls", "control_positions"),
    ("Detection sources side by side (NQ vs in-domain, leave-one-collection-out)", "in_domain_sources"),
    ("NIAH-R detection: needle trials per model", "niah_detection"),
    ("Top-8 overlap of CoRe, QR and NIAH heads", "overlap"),
    ("Figure 1 analog: head-count sweep peaks", "sweep_peaks"),
    ("Figure 2 analog: depth of the top CoRe heads", "depth"),
    ("Figure 3 analog: layer pruning", "pruning"),
    ("Figure 3 analog: measured cost of the pruned forward and of the early exit", "pruning_cost"),
    ("Table 2 analog (MLDR; XQuAD-R stand-in offline)", "table2"),
    ("Table 2 analog: mean over languages", "table2_average"),
    ("Ablation: temperature", "ablation_temperature"),
    ("Ablation: calibrated detection", "ablation_calibrated_detection"),
    ("Ablation: negatives and positive position", "ablation_negatives_positions"),
    ("Ablation: length bias", "ablation_length_bias"),
]


def write_report(study: "Study", path: Path, notes: str = "") -> Path:
    p = study.p
    sizes = "; ".join(f"{m}: {p.sizes(m)}" for m in p.models)
    def shown(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(study.out.resolve().parent))
        except ValueError:
            return str(path)

    text = [f"# Report: CoRe heads reproduction ({p.name} profile)", "",
            f"Models: {', '.join(p.models)}. Collections: {', '.join(p.collections)}; multilingual: "
            f"{', '.join(p.multilingual) or 'none'}.", f"Sizes: {sizes}.", "",
            f"Produced by `make reproduce PROFILE={p.name}` (tables in `{shown(study.tables_dir)}`, figures in "
            f"`{shown(study.figures_dir)}`). nDCG@10 via ranx. QR-R is the CoRe paper's QR baseline (uncalibrated "
            "attention mass on the positive, same detection prompts as CoRe), not QRHead's own procedure. "
            "nDCG@10 is shown as a fraction (0-1); differences (columns named \"A - B\", and every verdict) are in "
            "points, i.e. 100 x the difference in nDCG@10.", ""]
    if notes:
        text += [notes, ""]
    for m in p.models:
        if note := attention_note(m, study.spec(m)):
            text += [f"**Attention window.** {note}", ""]
    text += [analysis.RULES, ""]
    missing = []
    for title, name, *view in SECTIONS:
        df = study.tables.read(name)
        if df is None:
            if name not in missing:
                missing.append(name)
            continue
        text += [f"## {title}", "", markdown_table(view[0](df) if view else df), ""]
    if missing:
        text += ["## Not produced in this run", "", ", ".join(f"`{m}`" for m in missing), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    return path
