"""The precision check of the analysis plan (``analysis.RULES``, *bf16 on the CPU*): a model's records computed in
another dtype, on the queries and detection prompts it already has in fp32, against its committed fp32 rows.

``precision_check(study, model, "bfloat16")`` recomputes the model's record-based methods (ICR, QR-R, CoRe-R and,
where the fp32 table has them, NIAH-R and the layer window; heads detected again in the new dtype) on the queries
of the committed per-query table, writes ``precision`` (per method: means, per-query agreement, criteria 1-2) and
``precision_verdicts`` (Table 1's per-model verdicts from both, criterion 3), and returns both. No committed table
or head ranking of the profile is changed: the new dtype's records are their own records (the dtype is part of the
key), and its heads live in memory only.

``machine_check(study, model, against)`` applies the same rule to a model's rows recomputed in the same dtype on
another machine, against the rows an earlier run committed (the tables at git revision ``against``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import MissingInput, UsageError
from .methods import NIAH_PROMPT
from .profiles import profile
from .tables.schema import family, mean_over_collections, read, whole_runs
from .tables.table1 import HEAD_SOURCES, compare, per_query, table1_pairs

if TYPE_CHECKING:
    from .core import Study

log = logging.getLogger(__name__)

# the rule's thresholds (analysis.RULES, fixed before any bf16 record of the study's models existed)
MEAN_TOLERANCE = 0.5  # points of nDCG@10: each checked method's mean over collections
QUERY_TOLERANCE = 0.05  # per-query nDCG@10 ...
QUERY_SHARE = 0.95  # ... within the tolerance for at least this share of the queries
# Table 1's methods whose NQ-head rows decide whether a model runs in another dtype (criteria 1 and 2 with criterion
# 3); every other row the tables report is judged on its own (corrected after the numbers existed: until then only
# these were judged)
CHECKED = ("ICR", "QR-R", "CoRe-R")
RECORD_METHODS = ("ICR", "QR-R", "CoRe-R", "NIAH-R", NIAH_PROMPT, "Layer window")  # what a record's dtype can change
KEYS = ["collection", "query_id", "method", "head source"]


def _committed(study: "Study", model: str) -> pd.DataFrame:
    if model not in study.p.models:
        raise UsageError(f"{model!r} is not a model of profile {study.p.name} (its models: {', '.join(study.p.models)})")
    pq = study.tables.read("per_query")
    if pq is None or model not in set(pq["model"]):
        raise MissingInput(f"the precision check compares with {model}'s committed fp32 rows, and "
                                f"{study.tables_dir / 'per_query.csv'} has none: run profile {study.p.name} in fp32 first")
    pq["query_id"] = pq["query_id"].astype(str)  # read back as numbers where the ids look like numbers
    if study.p.dtype_for(model):
        raise UsageError(f"profile {study.p.name} already computes {model} in {study.p.dtype_for(model)}: the check "
                         "compares another dtype with the fp32 rows, so run it on the profile without dtype_by_model")
    return pq


def recompute(study: "Study", model: str, dtype: str, committed: pd.DataFrame, data=None) -> pd.DataFrame:
    """The model's per-query rows of the record-based methods with records in ``dtype`` (same queries, same head
    sources as the ``committed`` per-query table)."""
    mine = committed[committed["model"] == model]
    sources = [s for s in HEAD_SOURCES if s in set(mine["head source"])]
    extra = {} if NIAH_PROMPT in set(mine["method"]) else {"niah_prompt_lengths": ()}  # what the fp32 rows lack
    other = study.__class__(profile(study.p, models=(model,), dtype_by_model=((model, dtype),), **extra),
                            data=data if data is not None else study.data, out=study.out, store=study.store)
    new = per_query(other, collections=list(dict.fromkeys(mine["collection"])), sources=sources, write=False)
    new = new[new["method"].isin(set(RECORD_METHODS) & set(mine["method"]))]
    asked, got = set(map(tuple, mine.loc[mine["method"].isin(RECORD_METHODS), KEYS].astype(str).values)), \
        set(map(tuple, new[KEYS].astype(str).values))
    if asked != got:
        raise UsageError(f"the {dtype} run of {model} scored other queries than its committed rows "
                         f"({len(asked - got)} missing, {len(got - asked)} extra): the profile's samples changed since "
                         "the fp32 run, so the check would not compare like with like")
    return new


def _agreement(reference: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """Criteria 1 and 2 per method and head source, the two sides' means named ``names``: means over collections,
    the share of queries within the tolerance and of identical ones, and the largest change."""
    key = lambda df: df.assign(**{"head source": df["head source"].fillna(""), "query_id": df["query_id"].astype(str)})  # noqa: E731
    both = key(reference).merge(key(other), on=KEYS, suffixes=(" reference", " other"))
    rows = []
    for (method, src), g in both.groupby(["method", "head source"], sort=False):
        a = mean_over_collections(g, "ndcg@10 reference")
        b = mean_over_collections(g, "ndcg@10 other")
        change = (g["ndcg@10 other"] - g["ndcg@10 reference"]).abs()
        within = float((change <= QUERY_TOLERANCE + 1e-12).mean())
        rows.append({"method": method, "head source": src, "queries": len(g), names[0]: a, names[1]: b,
                     "difference (points)": 100 * (b - a), f"queries within {QUERY_TOLERANCE}": within,
                     "queries identical": float((change <= 1e-12).mean()), "largest change": float(change.max())})
    return pd.DataFrame(rows)


def agreement(fp32: pd.DataFrame, other: pd.DataFrame, model: str, dtype: str) -> pd.DataFrame:
    """Criteria 1 and 2 per method and head source: means over collections and per-query agreement."""
    rows = _agreement(fp32, other, ("ndcg@10 fp32", "ndcg@10 (new dtype)"))
    return rows.drop(columns="queries identical").assign(model=model, dtype=dtype)


def _word(verdicts: pd.Series) -> pd.Series:
    """The three-way verdict alone (supported, contradicted or inconclusive), without its marks: a mark such as
    the share of zero differences of an uninformative row may move while the verdict stays."""
    return verdicts.astype(str).str.split().str[0]


def verdict_changes(study: "Study", committed: pd.DataFrame, new: pd.DataFrame, model: str, dtype: str) -> pd.DataFrame:
    """Criterion 3: Table 1's claims for every model, once from the committed table and once with the model's
    record-based rows in the new dtype (the other models' rows as committed, so each claim's Holm family is the
    same); the model's per-model verdicts side by side."""
    sources = [s for s in HEAD_SOURCES if s in set(committed["head source"])]
    pairs = table1_pairs(study, sources)
    mine = (committed["model"] == model) & committed["method"].isin(set(new["method"]))
    swapped = pd.concat([committed[~mine], new], ignore_index=True)
    before, after = compare(study, committed, pairs), compare(study, swapped, pairs)
    cols = ["claim", "head source", "model"]
    both = before.merge(after, on=cols, suffixes=(" fp32", " new"))
    both = both[both["model"] == model]
    return pd.DataFrame({"model": model, "dtype": dtype, "claim": both["claim"], "head source": both["head source"],
                         "difference fp32": both["difference fp32"], "difference (new dtype)": both["difference new"],
                         "verdict fp32": both["verdict fp32"], "verdict (new dtype)": both["verdict new"],
                         "unchanged": _word(both["verdict fp32"]) == _word(both["verdict new"])})


def _admits(r) -> bool:
    """Whether a row is one of those that decide whether the model runs in the check's dtype: Table 1's ICR, QR-R and
    CoRe-R with NQ heads (the rows every primary claim reads)."""
    nq = pd.isna(r["head source"]) or r["head source"] in ("", "all", "nq")
    return r["method"] in CHECKED and nq and r.get("table", "per_query") == "per_query"


def judge_rows(agree: pd.DataFrame) -> pd.DataFrame:
    """Criteria 1 and 2 on every row of a check's table."""
    return agree.assign(**{"checked": True,
                           "mean within 0.5 point": agree["difference (points)"].abs() <= MEAN_TOLERANCE,
                           f"{QUERY_SHARE:.0%} of queries within": agree[f"queries within {QUERY_TOLERANCE}"] >= QUERY_SHARE})


def passes(agree: pd.DataFrame, verdicts: pd.DataFrame) -> tuple[bool, str]:
    """Whether the model may run in the check's dtype, and what failed: criteria 1 and 2 on the rows that admit it
    (``_admits``) and criterion 3 on ``verdicts`` (the two sides' verdicts in its two ``verdict ...`` columns, the
    reference first). Every other row is judged on its own (``_judged``): it stays in that dtype only where it meets
    criteria 1 and 2 itself."""
    rows = agree[[bool(_admits(r)) for _, r in agree.iterrows()]]
    failed = [f"{r['method']} mean {r['difference (points)']:+.2f} points" for _, r in rows.iterrows()
              if abs(r["difference (points)"]) > MEAN_TOLERANCE]
    failed += [f"{r['method']} {r[f'queries within {QUERY_TOLERANCE}']:.0%} of queries within {QUERY_TOLERANCE}"
               for _, r in rows.iterrows() if r[f"queries within {QUERY_TOLERANCE}"] < QUERY_SHARE]
    if len(verdicts):
        before, after = [c for c in verdicts.columns if c.startswith("verdict ")]
        failed += [f"{r['claim']}: {r[before]} -> {r[after]}" for _, r in verdicts.iterrows() if not r["unchanged"]]
    if len(rows) != len(CHECKED):
        failed.append(f"checked {sorted(rows['method'])}, not all of {list(CHECKED)}")
    return not failed, "; ".join(failed)


def _judged(study: "Study", agree: pd.DataFrame, verdicts_table: str) -> pd.DataFrame:
    """The rule applied to a check's table from its numbers and its verdicts table (the table's family function, so
    that the judgement follows the rule as it stands): criteria 1 and 2 on every row ("checked", "mean within 0.5
    point", "95% of queries within"), and per model (and dtype) whether it may run in that dtype (``passes``)."""
    agree = judge_rows(agree)
    agree["failed"] = agree["failed"].astype(object)
    verdicts = read(study, verdicts_table)
    for (model, dtype), idx in agree.groupby(["model", "dtype"], sort=False).groups.items():
        v = (verdicts[(verdicts["model"] == model) & (verdicts["dtype"] == dtype)] if verdicts is not None
             else pd.DataFrame())
        ok, why = passes(agree.loc[idx], v)
        agree.loc[idx, "passes"] = ok
        agree.loc[idx, "failed"] = why
    return agree


@family("precision")
def precision_family(study: "Study", agree: pd.DataFrame) -> pd.DataFrame:
    return _judged(study, agree, "precision_verdicts")


@family("machine_check")
def machine_family(study: "Study", agree: pd.DataFrame) -> pd.DataFrame:
    return _judged(study, agree, "machine_check_verdicts")


def precision_check(study: "Study", model: str, dtype: str = "bfloat16", write: bool = True) -> dict[str, pd.DataFrame]:
    """Run the check for one model and write ``precision`` and ``precision_verdicts`` (other models' and dtypes'
    rows kept)."""
    committed = _committed(study, model)
    new = recompute(study, model, dtype, committed)
    fp32 = committed[(committed["model"] == model) & committed["method"].isin(set(new["method"]))]
    agree = agreement(fp32, new, model, dtype)
    verdicts = verdict_changes(study, committed, new, model, dtype)
    ok, why = passes(agree, verdicts)
    agree = judge_rows(agree).assign(passes=ok, failed=why)
    log.info("precision check of %s in %s: %s", model, dtype, "passes" if ok else f"fails ({why})")
    out = {"precision_verdicts": verdicts, "precision": agree}  # the verdicts first: the judgement reads them
    if write:
        for name, df in out.items():
            old = study.tables.read(name)
            if old is not None:
                df = pd.concat([old[(old["model"] != model) | (old["dtype"] != dtype)], df], ignore_index=True)
            out[name] = study.tables.write(name, df)
    return out


def _run(prov: pd.DataFrame, model: str, where: str) -> pd.Series:
    """The provenance row of the run that computed every row of ``model``."""
    runs = whole_runs(prov)
    runs = runs[runs["model"] == model]
    if runs.empty:
        raise UsageError(f"the provenance table {where} names no run that computed {model}'s rows")
    return runs.iloc[-1]


def _top_heads(df: pd.DataFrame, model: str) -> dict:
    """Each method's and head source's top heads as a set (what its re-ranker sums; their order within it is not)."""
    mine = df[df["model"] == model].fillna({"head source": ""})
    return {k: sorted(zip(g["layer"], g["head"])) for k, g in mine.groupby(["method", "head source"], sort=True)}


# the per-query tables a rerun recomputes (``order_per_query``: one row per order, which names the method's variant)
PER_QUERY_TABLES = ("per_query", "per_query_multilingual", "per_query_pruning", "per_query_peak", "order_per_query")


def _scores(df: pd.DataFrame | None, name: str, model: str) -> pd.DataFrame | None:
    if df is None or model not in set(df["model"]):
        return None
    mine = df[df["model"] == model]
    if name == "order_per_query":
        mine = mine.assign(method=mine["method"] + ", " + mine["order"], **{"head source": ""})
    return mine[KEYS + ["ndcg@10"]]


def _both(study: "Study", name: str, against: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """A table at ``against`` and now (None where it is not there)."""
    try:
        then = study.tables.read_at(name, against)
    except FileNotFoundError:
        then = None
    return then, study.tables.read(name)


def machine_check(study: "Study", model: str, against: str, write: bool = True) -> dict[str, pd.DataFrame]:
    """A model's committed rows, recomputed on another machine in the same dtype, against an earlier run's rows
    (the tables at git revision ``against``), under the precision check's rule (``passes``): criteria 1 and 2 on
    Table 1's per-query rows, criterion 3 on every claim's per-model verdict, since the rerun replaces them all.

    bf16 products accumulate in another order on another CPU (with or without AMX, say), so a rerun there need
    not give the same scores; this states how far they moved. Writes ``machine_check`` (per per-query table,
    method and head source: means, per-query agreement, the share of identical scores; whether each method's top
    heads are the same set) and ``machine_check_verdicts`` (the model's rows of every comparison table, as the
    two revisions hold them), other models' rows kept."""
    if model not in study.p.models:
        raise UsageError(f"{model!r} is not a model of profile {study.p.name} (its models: {', '.join(study.p.models)})")
    here = f"in {study.tables_dir}"
    ref_run = _run(study.tables.read_at("provenance", against), model, f"at {against}")
    prov = study.tables.read("provenance")
    if prov is None:
        raise MissingInput(f"no provenance table {here}: run `make reproduce PROFILE={study.p.name} MODEL={model}`")
    run = _run(prov, model, here)
    if ref_run["dtype"] != run["dtype"]:
        raise UsageError(f"{model}'s rows at {against} are {ref_run['dtype']} and these are {run['dtype']}: that is "
                         "a precision check (`python -m corelib.study precision-check`), not a rerun on another machine")
    if ref_run["commit"] == run["commit"] and ref_run["machine"] == run["machine"]:
        raise UsageError(f"{model}'s rows at {against} come from the same run as these ({run['commit']}, "
                         f"{run['machine']}): name the commit whose tables hold the earlier run")
    parts = []
    for name in PER_QUERY_TABLES:
        then, now = (_scores(df, name, model) for df in _both(study, name, against))
        if name == "per_query" and (then is None or now is None):
            raise UsageError(f"{model} has no rows in per_query.csv {'at ' + against if then is None else here}")
        if then is None or now is None:  # a table one of the runs did not write: nothing to compare
            continue
        asked, got = (set(map(tuple, df[KEYS].fillna("").astype(str).values)) for df in (then, now))
        if asked != got:
            raise UsageError(f"{model}'s rows of {name} {here} score other queries or methods than at {against} "
                             f"({len(asked - got)} missing, {len(got - asked)} extra): the two runs are not of the "
                             "same sample, so their scores cannot be compared query by query")
        parts.append(_agreement(then, now, ("ndcg@10 reference", "ndcg@10 (this run)")).assign(table=name))
    agree = pd.concat(parts, ignore_index=True)
    heads = _top_heads(study.tables.read_at("top_heads", against), model) == _top_heads(study.tables.read("top_heads"), model)
    verdicts = []
    for name in sorted(p.stem for p in study.tables_dir.glob("comparisons_*.csv")):
        then, now = _both(study, name, against)
        if then is None:
            continue
        a, b = (df[df["model"] == model].fillna({"head source": ""}) for df in (then, now))
        both = a.merge(b, on=["claim", "head source"], suffixes=(" before", " after"))
        verdicts.append(pd.DataFrame({
            "table": name, "claim": both["claim"], "head source": both["head source"],
            "difference reference": both["difference before"], "difference (this run)": both["difference after"],
            "verdict reference": both["verdict before"], "verdict (this run)": both["verdict after"],
            "unchanged": _word(both["verdict before"]) == _word(both["verdict after"])}))
    verdicts = pd.concat(verdicts, ignore_index=True).assign(model=model, dtype=run["dtype"])
    ok, why = passes(agree, verdicts)
    agree = agree.assign(model=model, dtype=run["dtype"], **{"reference commit": ref_run["commit"],
                         "reference machine": ref_run["machine"], "commit": run["commit"], "machine": run["machine"],
                         "top heads unchanged": heads, "passes": ok, "failed": why})
    agree = judge_rows(agree)
    log.info("%s rerun on %s against %s (%s): %s", model, run["machine"], against, ref_run["machine"],
             "passes" if ok else f"fails ({why})")
    out = {"machine_check_verdicts": verdicts, "machine_check": agree}  # the verdicts first: the judgement reads them
    if write:
        for name, df in out.items():
            old = study.tables.read(name)
            if old is not None:
                df = pd.concat([old[old["model"] != model], df], ignore_index=True)
            out[name] = study.tables.write(name, df)
    return out


__all__ = ["precision_check", "machine_check", "agreement", "verdict_changes", "passes", "judge_rows", "recompute"]
