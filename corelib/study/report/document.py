"""REPORT.md and its appendix: the claims first, then each section with its figure and csv, provenance and the
analysis plan at the end; the exhaustive tables in REPORT_APPENDIX.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .. import analysis
from ..methods import TABLE1
from .formatting import anchor, anchor_tag, markdown_table
from .notes import attention_note_from, depth_note, dtype_notes, machine_note, precision_note, sample_notes
from .provenance import provenance_lines
from ..order_remedies import shuffled_gap
from .verdicts import at_a_glance, brief_result, claims_table, verdict_mark

if TYPE_CHECKING:
    from ..core import Study


# The report's sections: (title, table name, figures, main view or None, [appendix view]). Figures are file stems under
# the profile's figures folder ("{model}" is filled in per model, "{released}" per released model). A section with a
# main view is in REPORT.md with its figures and that compact table; every section's whole table is in the
# appendix (REPORT_APPENDIX.md). Tables not produced are listed there. First the views the sections use.


def _pooled_brief(df: pd.DataFrame) -> pd.DataFrame:
    """A comparisons table in brief: claim, model, difference [family interval], verdict."""
    return pd.DataFrame({"claim": df["claim"], "model": df["model"],
                         "difference [interval]": [brief_result(r) for _, r in df.iterrows()], "verdict": df["verdict"]})


def _order_main(df: pd.DataFrame) -> pd.DataFrame:
    """The order check's claims, one row per claim, a column per order and model (estimate and verdict mark)."""
    cells = df.assign(cell=[f"{d:+.2f} {verdict_mark(v)}" for d, v in zip(df["difference"], df["verdict"])],
                      order=df["claim"].str.split(": ").str[0], what=df["claim"].str.split(": ").str[-1])
    wide = cells.pivot_table(index="what", columns=["order", "model"], values="cell", aggfunc="first", sort=False)
    wide.columns = [f"{o}, {m}" for o, m in wide.columns]
    return wide.reset_index().rename(columns={"what": "claim"}).fillna("-")


def _remedies_main(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, remedy and method: nDCG@10 in each order, what the order costs, and the forwards a query takes."""
    forwards = df.groupby(["model", "remedy", "method"], sort=False)["forwards per query"].first()
    return shuffled_gap(df).assign(**{"forwards per query": forwards}).reset_index()


def _cost_main(df: pd.DataFrame) -> pd.DataFrame:
    """A practitioner's latency per query: the bi-encoder warm, the full forward, and CoRe-R's early exit."""
    keep = df["method"].str.startswith(("Bi-encoder (warm)", "ICR / CoRe-R", "CoRe-R, early exit"))
    cols = ["model", "method", "seconds per query", "ratio to bi-encoder (cold)", "nDCG@10 (mean over collections)"]
    return df.loc[keep, [c for c in cols if c in df]]


def _depth_main(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("model", "layers", "top layers", "in middle third", "distinct top layers", "of them in middle third",
                        "p more holm", "verdict", "largest share keeping the top layers") if c in df]
    return df[cols]


def _pruning_main(df: pd.DataFrame) -> pd.DataFrame:
    """CoRe-R's nDCG@10 by the fixed pruned shares, a row per model (the depth-chosen share is in the appendix)."""
    core = df[(df["method"] == "CoRe-R") & (df["level"] == "fixed")]
    return core.pivot_table(index="model", columns="pruned share", values="ndcg@10", aggfunc="first", sort=False) \
        .rename(columns=lambda x: f"{x:.0%} pruned").reset_index()


def _sweep_main(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and head order, the mean over collections of the sweep's points (the peak's head count as a median)."""
    g = df.groupby(["model", "order"], sort=False)
    out = g[["1 head", "8 heads", "peak ndcg@10", "ICR", "Layer window"]].mean()
    out.insert(3, "heads at peak (median)", g["heads at peak"].median().map(lambda x: f"{x:g}"))
    return out.reset_index()


def _scaling_main(df: pd.DataFrame) -> pd.DataFrame:
    keep = ("model", "parameters", "queries", "BM25", "ICR", "QR-R", "CoRe-R", "NIAH-R", "random 8 heads (median)",
            "CoRe-R - ICR", "CoRe-R - QR-R", "top CoRe heads: median relative depth")
    return df[[c for c in keep if c in df]]


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


def _same(df: pd.DataFrame) -> pd.DataFrame:
    return df


SECTIONS = [
    ("Table 1 analog: mean over collections per model", "table1_average", ("table1_rerank",), _same),
    ("Table 1 analog: nDCG@10 per collection (NQ heads)", "table1", ("table1_rerank",), None),
    ("Per-collection differences of the main claims", "forest", ("forest",), _forest_view),
    ("The main claims leaving out one collection at a time", "leave_one_out", ("forest",), None, _leave_one_out_view),
    ("Figure 1 analog: head-count sweep (mean over collections)", "sweep_peaks", ("fig1_head_count_sweep_{model}",),
     _sweep_main),
    ("Figure 2 analog: depth of the top CoRe heads", "depth", ("fig2_heatmap_{model}",), _depth_main),
    ("The paper's own models (from released scores): depth of the top CoRe heads", "released_depth",
     ("fig2_heatmap_released_{released}",), _depth_main),
    ("The paper's own models (from released scores): the top heads under pruning", "released_pruning", (), None),
    ("Figure 3 analog: layer pruning", "pruning", ("fig3_pruning",), _pruning_main),
    ("Figure 3 analog: measured cost of the pruned forward and of the early exit", "pruning_cost",
     ("fig3_pruning_cost",), None),
    ("Head-set controls: random 8-head sets", "controls", ("controls_{model}",), _same),
    ("Head-set controls: where each method falls", "control_positions", (), None),
    ("Candidate order: the claims shuffled and in ICR's order, same queries", "comparisons_order", (), _order_main),
    ("Candidate order: agreement with BM25 under each order", "order_agreement", (), None),
    ("Order remedies: each method plain and remedied, in ICR's order and shuffled", "order_remedy_means",
     ("order_remedies",), _remedies_main),
    ("Order remedies: the claims", "comparisons_order_remedies", (), None, _pooled_brief),
    ("Order remedies: heads under the invariant prompt", "order_remedy_heads", (), None),
    ("Scaling view: the methods and CoRe-R's differences by model size", "scaling", ("scaling",), _scaling_main),
    ("Cost a practitioner reads: latency per query against a bi-encoder", "practitioner_cost", (), _cost_main),
    ("Table 2 analog: mean over languages", "table2_average", ("table2_multilingual",), _same),
    ("Table 2 analog (MLDR; XQuAD-R stand-in offline)", "table2", ("table2_multilingual",), None),
    ("Agreement of each method with the first stage", "first_stage_agreement", (), None),
    ("Detection sources side by side (NQ vs in-domain, leave-one-collection-out)", "in_domain_sources", (), None),
    ("NIAH-R detection: needle trials per model", "niah_detection", (), None),
    ("Top-8 overlap of CoRe, QR and NIAH heads", "overlap", (), None),
    ("Precision check: records in bf16 against fp32 (the analysis plan's rule)", "precision", (), None),
    ("Precision check: Table 1's per-model verdicts under both dtypes", "precision_verdicts", (), None),
    ("Ablation: temperature", "ablation_temperature", (), None),
    ("Ablation: calibrated detection", "ablation_calibrated_detection", (), None),
    ("Ablation: negatives and positive position", "ablation_negatives_positions", (), None),
    ("Ablation: length bias", "ablation_length_bias", (), None),
    ("Every verdict", "verdicts", (), None, lambda df: df.drop(columns="brief")),
]
PLAN = "The analysis plan"
PROVENANCE = "Provenance and checks"
APPENDIX_FILE = "REPORT_APPENDIX.md"


def _figure_names(study: "Study", stems) -> list[str]:
    from ...heads import RELEASED_MODELS

    names = []
    for stem in stems:
        names += ([stem.format(model=m) for m in study.profile_models] if "{model}" in stem else
                  [stem.format(released=m.split("/")[-1]) for m in RELEASED_MODELS] if "{released}" in stem else [stem])
    return [n for n in names if (study.figures_dir / f"{n}.png").is_file()]


def write_report(study: "Study", path: Path, notes: str = "") -> Path:
    """Write ``report_text`` to ``path`` (REPORT.md) and ``appendix_text`` beside it (REPORT_APPENDIX.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_text(study, path, notes))
    (path.parent / APPENDIX_FILE).write_text(appendix_text(study, path.parent / APPENDIX_FILE))
    return path


def _relative(study: "Study", path: Path) -> tuple[str, str]:
    import os

    return (os.path.relpath(study.figures_dir.resolve(), path.parent.resolve()),
            os.path.relpath(study.tables_dir.resolve(), path.parent.resolve()))


def _present(study: "Study") -> list[tuple]:
    """The sections whose table this run wrote, each with its table read once."""
    out = []
    for title, name, figs, main, *appendix in SECTIONS:
        df = study.tables.read(name)
        if df is not None:
            out.append((title, name, figs, main, appendix[0] if appendix else _same, df))
    return out


LEGEND = ("Points of nDCG@10 (100 x the difference in nDCG@10). *Pooled*: every model's queries, a query counted "
          "once (a model with more queries weighs more); the verdicts use it. *Mean of models*: the unweighted mean of "
          "the models' estimates, [smallest, largest]. The interval is at the level Holm tests the row in its claim's "
          "family (95% before adjustment, 90% for a margin). *Primary*: one of the paper's five primary claims, whose "
          "pooled tests are adjusted together (Holm over 5, the family-wise error across them); every other verdict is "
          "*secondary*, adjusted within its own family only. Per model: the estimate and "
          "\u2713 supported, \u2717 contradicted, \u00b7 inconclusive. Verdict rules: [the analysis plan](#{plan}).")


def report_text(study: "Study", path: Path, notes: str = "") -> str:
    """REPORT.md's text, for a report at ``path`` (its links are relative to it): the claims table first, the contents,
    each main section with its figures and compact table (the whole table in the appendix file), then provenance and
    the analysis plan."""
    p, t = study.p, study.tables
    v = t.read("verdicts")
    rel_figures, rel_tables = _relative(study, path)
    models = study.profile_models  # a narrowed study's tables hold the other models' rows too
    text = [f"# Report: CoRe heads reproduction ({p.name} profile)", "",
            f"Models: {', '.join(models)}. Produced by `make reproduce PROFILE={p.name}`; every number below is read "
            f"from the tables in [`{rel_tables}/`]({rel_tables}/manifest.json); the exhaustive tables are in "
            f"[{APPENDIX_FILE}]({APPENDIX_FILE}). Sizes and the runs that computed each model's rows: "
            f"[{PROVENANCE}](#{anchor(PROVENANCE)}).", ""]
    if v is not None:
        ours = v[v["model"].isin(models) | v["model"].str.startswith("pooled") | v["claim"].str.endswith("released scores)")]
        text += [anchor_tag("The claims"), "## The claims", "", LEGEND.format(plan=anchor(PLAN)), "",
                 markdown_table(claims_table(ours, t.read("primary_claims"), models)), ""]
    present = _present(study)
    main = [s for s in present if s[3] is not None]
    text += ["## Contents", "", *[f"- [{title}](#{anchor(title)})" for title, *_ in main],
             f"- [{PROVENANCE}](#{anchor(PROVENANCE)})", f"- [{PLAN}](#{anchor(PLAN)})",
             f"- [{APPENDIX_FILE}]({APPENDIX_FILE}): every table in full, and every verdict", ""]
    if notes:
        text += [notes, ""]
    text += ["nDCG@10 via ranx, shown as a fraction (0-1); differences in points. QR-R is the CoRe paper's QR baseline "
             "(uncalibrated attention mass on the positive, same detection prompts as CoRe), not QRHead's own procedure.", ""]
    for title, name, figs, view, _, df in main:
        figures = _figure_names(study, figs)
        text += [anchor_tag(title), f"## {title}", "",
                 f"Table: [`{name}.csv`]({rel_tables}/{name}.csv); in full: [appendix]({APPENDIX_FILE}#{anchor(title)}).", ""]
        text += [f"![{n}]({rel_figures}/{n}.png)" for n in figures] + ([""] if figures else [])
        text += [markdown_table(_without_empty_methods(view(df))), ""]
    text += [anchor_tag(PROVENANCE), f"## {PROVENANCE}", "", f"Sizes: {p.summary(models)}.", "",
             *provenance_lines(t.read("provenance"))]
    depth = t.read("depth")
    text += [f"- **Attention window.** {n}" for m in models if (n := attention_note_from(depth, m, study))]
    text += [*filter(None, [depth_note(depth, t.read("released_depth")),
                            precision_note(t.read("precision"), t.read("precision_verdicts"), t.read("provenance")),
                            machine_note(t.read("machine_check"), t.read("machine_check_verdicts"), t.read("provenance"))]),
             *sample_notes(study), *dtype_notes(study), ""]
    text += [anchor_tag(PLAN), f"## {PLAN}", "", analysis.RULES, ""]
    return "\n".join(text)


def appendix_text(study: "Study", path: Path) -> str:
    """REPORT_APPENDIX.md: every section's whole table (and every verdict in words), with its csv and figures."""
    rel_figures, rel_tables = _relative(study, path)
    present = _present(study)
    glance = "Every claim at a glance"
    text = [f"# Report appendix: every table ({study.p.name} profile)", "",
            "The tables of [REPORT.md](REPORT.md) in full, in its order, then the rest; each links its csv and figures.", "",
            "## Contents", "", f"- [{glance}](#{anchor(glance)})",
            *[f"- [{title}](#{anchor(title)})" for title, *_ in present], ""]
    v = study.tables.read("verdicts")
    if v is not None:
        models = study.profile_models
        ours = v[v["model"].isin(models) | v["model"].str.startswith("pooled")]
        text += [anchor_tag(glance), f"## {glance}", "", "Each claim per model and pooled: points of nDCG@10 [the interval "
                 "at the family's Holm level] and the verdict (* an unadjusted 95% interval of a table written before the "
                 "adjusted ones existed; \u2020 one where the bootstrap interval and the sign-flip test part).", "",
                 markdown_table(at_a_glance(ours)), ""]
    for title, name, figs, _, view, df in present:
        links = ", ".join(f"[{n}]({rel_figures}/{n}.png)" for n in _figure_names(study, figs))
        text += [anchor_tag(title), f"## {title}", "", f"Table: [`{name}.csv`]({rel_tables}/{name}.csv)."
                 + (f" Figures: {links}." if links else ""), "", markdown_table(_without_empty_methods(view(df))), ""]
    have = {name for _, name, *_ in present}
    missing = [name for _, name, *_ in SECTIONS if name not in have]
    if missing:
        text += ["## Not produced in this run", "", ", ".join(f"`{m}`" for m in missing), ""]
    return "\n".join(text)


def _without_empty_methods(df: pd.DataFrame) -> pd.DataFrame:
    """A table without the method columns no row has (e.g. Dense in a profile that re-ranks BM25 candidates, the
    layer window in a table written before it existed): a column of dashes only says nothing."""
    return df.drop(columns=[c for c in df.columns if (c in TABLE1 or c.startswith(tuple(f"CoRe-R - {m}" for m in TABLE1)))
                            and df[c].isna().all()])
