"""The report's notes on particular models and runs (attention windows, depth, precision and machine checks,
samples and dtypes) and the README's headline table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from .. import analysis
from ...errors import MissingInput
from ...architecture import global_attention_layers, model_config
from ..methods import NIAH_PROMPT
from ..tables.schema import later_commands, whole_runs

if TYPE_CHECKING:
    from ..core import Study

from ..precision import QUERY_TOLERANCE, judge_rows
from .formatting import markdown_table

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


def _row_name(r) -> str:
    table = f"{r['table']} " if "table" in r and r["table"] != "per_query" else ""
    source = r["head source"] if pd.notna(r["head source"]) and r["head source"] not in ("", "all") else ""
    return f"{table}{r['method']}" + (f" ({source} heads)" if source and source != "nq" else "")


def _rows_outcome(g: pd.DataFrame) -> str:
    """Which rows meet criteria 1 and 2 (they may stay in the check's dtype) and which do not."""
    judged = judge_rows(g)
    bad = g[~(judged["mean within 0.5 point"] & judged["95% of queries within"])]
    if bad.empty:
        return f"all {len(g)} method rows meet criteria 1-2"
    cells = ", ".join(f"{_row_name(r)} {r['difference (points)']:+.2f} points, {r[f'queries within {QUERY_TOLERANCE}']:.1%} "
                      f"within {QUERY_TOLERANCE}"
                      for _, r in bad.iterrows())
    return f"{len(g) - len(bad)} of {len(g)} method rows meet criteria 1-2; not: {cells}"


def precision_note(agree: pd.DataFrame | None, verdicts: pd.DataFrame | None,
                   provenance: pd.DataFrame | None = None) -> str | None:
    """The precision check's outcome per model and dtype under the rule as it stands (every method row), from its
    tables: which rows meet it, the verdicts, and, where the tables hold the model's rows in that dtype though the
    check fails, that those rows are outside the plan until an fp32 rerun."""
    if agree is None or agree.empty:
        return None
    runs = whole_runs(provenance).set_index("model")["dtype"] if provenance is not None else pd.Series(dtype=str)
    parts = []
    for (model, dtype), g in agree.groupby(["model", "dtype"], sort=False):
        v = verdicts[(verdicts["model"] == model) & (verdicts["dtype"] == dtype)] if verdicts is not None else verdicts
        same = (f"; {int(v['unchanged'].sum())} of {len(v)} of Table 1's verdicts unchanged" if v is not None and len(v) else "")
        ok = bool(g["passes"].iloc[0])
        held = runs.get(model) == dtype
        judged = judge_rows(g)
        missing = not (judged["mean within 0.5 point"] & judged["95% of queries within"]).all()
        outcome = (f"passes: its rows are {dtype}" + (", but those that miss criteria 1-2 are outside the plan until an "
                                                      "fp32 rerun" if missing else "") if ok else
                   f"fails: its rows in these tables are {dtype}, outside the plan until an fp32 rerun" if held else
                   "fails: the model stays in fp32")
        parts.append(f"{model} in {dtype} against fp32 on its {int(g['queries'].max())} committed queries, heads detected "
                     f"again: {_rows_outcome(g)}{same}; {outcome}")
    return ("- **Precision check** (criteria 1-2 over every method row, as corrected after the numbers existed): "
            + "; ".join(parts) + ".")


def machine_note(agree: pd.DataFrame | None, verdicts: pd.DataFrame | None,
                 provenance: pd.DataFrame | None = None) -> str | None:
    """A model's rerun on another machine against its earlier run (the precision check's rule, over every row of
    every per-query table), from its tables: which rows meet it, the heads, every verdict and, from
    ``provenance``, which of the two runs the tables hold."""
    if agree is None or agree.empty:
        return None
    parts = []
    for model, g in agree.groupby("model", sort=False):
        r0 = g.iloc[0]
        v = verdicts[verdicts["model"] == model] if verdicts is not None else None
        same = f"; {int(v['unchanged'].sum())} of {len(v)} verdicts unchanged" if v is not None and len(v) else ""
        identical = " (every score identical)" if (g["queries identical"] == 1).all() else ""
        heads = "the same top heads" if bool(r0["top heads unchanged"]) else "other top heads"
        ok = bool(r0["passes"])
        runs = whole_runs(provenance) if provenance is not None else pd.DataFrame(columns=["model", "commit"])
        runs = runs[runs["model"] == model]
        held = str(runs["commit"].iloc[-1]) if len(runs) else None
        held = {r0["commit"]: ": the tables hold the rerun's rows", r0["reference commit"]: ": the tables keep the "
                "earlier run's rows"}.get(held, "")
        parts.append(f"{model}'s {r0['dtype']} rows from {r0['machine']} at {r0['commit']} against its earlier run on "
                     f"{r0['reference machine']} at {r0['reference commit']}, {int(g['queries'].max())} queries: "
                     f"{_rows_outcome(g)}{identical}; {heads}{same}; {'passes' if ok else 'fails'}{held}")
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


def attention_note_from(depth: pd.DataFrame | None, model: str, study: "Study") -> str | None:
    """The attention-window note, from the depth table's global layers where it has them (no model file is
    read), else from the model's config."""
    if depth is not None and "global-attention layers" in depth:
        row = depth[depth["model"] == model]
        if len(row) and str(row.iloc[0]["global-attention layers"]) == "all":
            return None
    return attention_note(model, study.spec(model))
