"""Table 1: the per-query table every comparison reads, the per-collection means, the paired comparisons
(analysis.RULES) and the in-domain head sources."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from typing import TYPE_CHECKING

from ...errors import UsageError
from ...evaluate import per_query as per_query_ndcg
from ...heads import in_domain_samples
from ...scoring import record_run
from .. import analysis
from ..methods import DETECTED, FIRST_STAGE_METHODS, NIAH_PROMPT, NIAH_PROMPT_SOURCE, NIAH_SOURCE, NIAH_SOURCES
from .schema import COLUMNS, METHODS, family, kept_p_values, mean_over_collections, write
from .schema import write as write_table  # per_query's `write` argument shadows the name

if TYPE_CHECKING:
    from ..core import Study

log = logging.getLogger(__name__)


def record_free_runs(study: "Study", m: str, collection: str) -> list[tuple[str, str, int, dict]]:
    """The runs of the methods that read no attention record: the scored first stages and the bi-encoder."""
    return [*((FIRST_STAGE_METHODS[stage], "", 0, study.candidates(m, collection, stage).run())
              for stage in study.p.scored_first_stages),
            ("Bi-encoder", "", 0, study.bi_encoder_run(m, collection))]


def record_free_methods(study: "Study") -> set[str]:
    return {FIRST_STAGE_METHODS[stage] for stage in study.p.scored_first_stages} | {"Bi-encoder"}


def method_runs(study: "Study", m: str, collection: str, k: int, temperature, sources) -> list[tuple[str, str, int, dict]]:
    recs = study.records(m, collection)
    spec = study.spec(m)
    out = record_free_runs(study, m, collection)
    out += [("ICR", "all", spec.num_layers * spec.num_heads, record_run(recs))]
    for src in sources:
        exclude = collection if src.startswith("in-domain") else None
        for method, key in DETECTED.items():
            heads = study.heads(m, key, k, temperature, src, exclude)
            out.append((method, src, k, record_run(recs, heads)))
    if "NIAH-R" in study.head_methods(m):
        out.append(("NIAH-R", NIAH_SOURCE, k, record_run(recs, study.heads(m, "niah", k))))
    if NIAH_PROMPT in study.head_methods(m):
        out.append((NIAH_PROMPT, NIAH_PROMPT_SOURCE, k, record_run(recs, study.heads(m, "niah-prompt", k))))
    if "nq" in sources:  # all heads of the best layer window on the NQ detection records
        window = study.layer_window_heads(m, temperature)
        out.append(("Layer window", "nq", len(window), record_run(recs, window)))
    return out


def per_query(study: "Study", collections=None, k: int | None = None, temperature: float | None = None,
              sources=("nq",), write: bool = True, name: str = "per_query") -> pd.DataFrame:
    """nDCG@10 of every query, method and head source (the long table all comparisons read)."""
    k = k or study.p.num_heads
    collections = list(study.p.collections if collections is None else collections)
    if not collections:  # an empty list is not "the profile's collections": profile cpu-dense has no multilingual sets
        raise UsageError(f"no collections to evaluate for {name!r} in profile {study.p.name}: pass None for the "
                         "profile's collections, or use a profile that has this kind of collection")
    rows = []
    for m in study.p.models:
        for c in collections:
            qrels = study.collection(c).qrels
            srcs = [s for s in sources if not (s.startswith("in-domain") and c in study.p.multilingual)]
            for method, src, kk, run in method_runs(study, m, c, k, temperature, srcs):
                pq = per_query_ndcg(run, qrels)
                rows.append(pd.DataFrame({"model": m, "first stage": study.p.first_stage, "collection": c,
                                          "query_id": pq.index.astype(str), "method": method, "head source": src,
                                          "k": kk, "ndcg@10": pq.values}))
    df = pd.concat(rows, ignore_index=True)
    return write_table(study, name, df) if write else df[list(COLUMNS["per_query"])]


def refresh_record_free(study: "Study") -> dict[str, pd.DataFrame]:
    """The committed per-query tables (``per_query``, ``per_query_multilingual``) with the rows of the methods that
    read no record (``record_free_methods``: the first stages and the bi-encoder) computed again for every model
    and query they hold, every other row kept as it is (``python -m corelib.study record-free``: no forward of
    an LLM). The first stages' rows must come back unchanged (the same queries and candidates), and every
    method's rows must cover the same queries as before; else nothing is written."""
    free, keys = record_free_methods(study), ["model", "collection", "query_id", "method", "source key"]
    out = {}
    for name in ("per_query", "per_query_multilingual"):
        old = study.tables.read(name)
        if old is None:
            continue
        old = old.assign(**{"source key": old["head source"].fillna("")})  # a read table's "" is NaN
        rows = []
        for (m, c), g in old.groupby(["model", "collection"], sort=False):
            qrels, qids = study.collection(c).qrels, set(g["query_id"])
            for method, src, kk, run in record_free_runs(study, m, c):
                pq = per_query_ndcg(run, qrels)
                rows.append(pd.DataFrame({"model": m, "collection": c, "query_id": pq.index.astype(str),
                                          "method": method, "source key": src, "new": pq.values}))
            got = set(rows[-1]["query_id"])
            if got != qids:
                raise UsageError(f"{name}: {m} {c} now samples {len(got)} queries, and its committed rows hold "
                                 f"{len(qids)}: the profile's sample changed since they were computed, so a refresh of "
                                 "some methods would mix two samples; re-run the model instead")
        new = pd.concat(rows, ignore_index=True)
        both = old.merge(new, on=keys, how="left", validate="one_to_one")  # the committed rows, in their order
        lost = both[both["method"].isin(free) & both["new"].isna()]
        extra = len(new) - int(both["new"].notna().sum())
        if len(lost) or extra:
            r = lost.iloc[0] if len(lost) else new.iloc[0]
            raise UsageError(f"{name}: {len(lost)} committed rows of {', '.join(sorted(free))} have no recomputed "
                             f"counterpart and {extra} recomputed rows no committed one (e.g. {r['method']} on "
                             f"{r['model']} {r['collection']} query {r['query_id']})")
        first = both["method"].isin(free - {"Bi-encoder"})
        moved = (both.loc[first, "ndcg@10"] - both.loc[first, "new"]).abs() > 1e-12
        if moved.any():
            r = both[first][moved.to_numpy()].iloc[0]
            raise UsageError(f"{name}: the first stage's nDCG@10 changed on {int(moved.sum())} queries (e.g. "
                             f"{r['method']} on {r['model']} {r['collection']} query {r['query_id']}): its candidates "
                             "are not those the committed rows re-ranked")
        refreshed = both["method"].isin(free)
        both.loc[refreshed, "ndcg@10"] = both.loc[refreshed, "new"]
        log.info("%s: %d rows of %s recomputed", name, int(refreshed.sum()), ", ".join(sorted(free)))
        out[name] = write_table(study, name, both.drop(columns=["new", "source key"]))
    return out


def nq_wide(pq: pd.DataFrame) -> pd.DataFrame:
    sel = pq[pq["head source"].fillna("").isin(["", "all", "nq", *NIAH_SOURCES])]
    wide = sel.pivot_table(index=["model", "collection", "query_id"], columns="method", values="ndcg@10")
    rank = {m: i for i, m in enumerate(dict.fromkeys(sel["model"]))}  # the models in the per-query table's order
    wide = wide.iloc[np.argsort(wide.index.get_level_values("model").map(rank).to_numpy(), kind="stable")]
    return wide.reindex(columns=list(METHODS))  # a method no model has (NIAH-R without retrieved needles): NaN


def table1(study: "Study", pq: pd.DataFrame, name: str = "table1") -> tuple[pd.DataFrame, pd.DataFrame]:
    """nDCG@10 per model and collection (NQ heads), and the per-model mean over collections."""
    wide = nq_wide(pq).reset_index()
    g = wide.groupby(["model", "collection"], sort=False)
    t = g[list(METHODS)].mean()
    t["queries"] = g.size()
    t["CoRe-R - ICR"] = 100 * (t["CoRe-R"] - t["ICR"])
    t["CoRe-R - QR-R"] = 100 * (t["CoRe-R"] - t["QR-R"])
    t["CoRe-R - NIAH-R"] = 100 * (t["CoRe-R"] - t["NIAH-R"])
    t["CoRe-R - Bi-encoder"] = 100 * (t["CoRe-R"] - t["Bi-encoder"])
    t["first stage"] = study.p.first_stage
    t = t.reset_index()
    if name == "table2":
        t["data"] = ["MLDR" if c.startswith("mldr/") else "XQuAD-R (stand-in for MLDR)" for c in t["collection"]]
    avg = t.groupby("model", sort=False)[list(METHODS)].mean()
    avg["collections"] = t.groupby("model", sort=False).size()
    avg["queries"] = t.groupby("model", sort=False)["queries"].sum()
    avg["first stage"] = study.p.first_stage
    return write(study, name, t), write(study, f"{name}_average", avg.reset_index())


def compare(study: "Study", pq: pd.DataFrame, pairs, claim_prefix: str = "", by_question: bool = False,
            table: str | None = None, claim: str | None = None) -> pd.DataFrame:
    """Paired comparisons of method pairs per model and pooled (a query once), with CI, p,
    Holm-adjusted p within each claim's family and a verdict (analysis.RULES). ``by_question``: the
    collections hold the same questions (XQuAD-R's languages), so each question is one unit of the test.
    ``table``: the comparison table the rows go to, whose committed rows of other models a narrowed study keeps
    (their p-values join the family that sets each new row's interval level); ``claim``: the claim's name
    (one pair only; default "<a> beats <b>")."""
    if claim is not None and len(pairs) != 1:
        raise UsageError(f"a claim name ({claim!r}) names one pair's claim, and {len(pairs)} pairs were given")
    rows = []
    for a, b, src in pairs:
        name = claim or f"{claim_prefix}{a} beats {b}" + (f" ({src} heads)" if src.startswith("in-domain") else "")
        sel = pq[pq["head source"].fillna("").isin({"", "all", src, *NIAH_SOURCES})]  # a read table's "" is NaN
        family, results = [], []
        # the models that have both methods (NIAH-R (prompt length) or the layer window may exist for some only):
        # a pooled row only where it pools more than one of them
        models = [m for m, g in sel.groupby("model", sort=False) if {a, b} <= set(g["method"])]
        for m in models + (["pooled (a query once)"] if len(models) > 1 else []):
            pool = m.startswith("pooled")
            part = sel if pool else sel[sel["model"] == m]
            if not {a, b} <= set(part["method"]):  # e.g. NIAH-R for a model that retrieved no needle
                continue
            d = analysis.paired_differences(part, a, b, pool=pool)
            if by_question:
                d = analysis.by_question(d)
            r = analysis.paired(d)
            results.append(r)
            family.append({"claim": name, "model": m, "a": a, "b": b, "head source": src, "difference": r.estimate,
                           "ci low": r.ci_low, "ci high": r.ci_high, "p": r.p, "detectable (80% power)": r.mde,
                           "queries": r.queries, "collections": r.collections, "identical": r.identical,
                           "zero share": float((d["diff"] == 0).mean())})
        adj = analysis.holm([f["p"] for f in family])
        kept = kept_p_values(study, table, name, models) if table else []
        for f, ph, fam in zip(family, adj, analysis.family_columns(results, [f["p"] for f in family] + kept)):
            f.update(fam)
            f["p holm"] = ph
            f["verdict"] = analysis.ceiling_note(analysis.superiority_verdict(f["difference"], ph, f.pop("identical")),
                                                 f.pop("zero share"))
        rows += family
    return pd.DataFrame(rows)


def table1_pairs(study: "Study", sources=("nq",)) -> list[tuple[str, str, str]]:
    """The Table 1 analog's comparisons (analysis.RULES), as (a, b, head source) for ``compare``:
    CoRe-R against ICR, QR-R, NIAH-R and the bi-encoder; ICR and CoRe-R against the first stage
    whose candidates they re-rank (the profile's); with a dense first stage, dense against BM25
    (each its own top k for the same queries); CoRe-R against ICR and QR-R with every other head source."""
    first = FIRST_STAGE_METHODS[study.p.first_stage]
    pairs = [("CoRe-R", "ICR", "nq"), ("CoRe-R", "QR-R", "nq"), ("CoRe-R", "NIAH-R", "nq"), ("CoRe-R", NIAH_PROMPT, "nq"),
             ("CoRe-R", "Layer window", "nq"),
             ("CoRe-R", "Bi-encoder", "nq"), ("ICR", first, "all"), ("CoRe-R", first, "nq")]
    if first != "BM25":
        pairs.append((first, "BM25", ""))
    # QR's score ignores the negatives, so the position-matched sample (which changes only the negatives) gives
    # QR-R the plain in-domain heads: CoRe-R against it there would not be a controlled comparison
    return pairs + [(a, b, src) for src in sources if src != "nq" for a, b in (("CoRe-R", "ICR"), ("CoRe-R", "QR-R"))
                    if not (b == "QR-R" and src.endswith("position-matched"))]


@family("comparisons_peak")
@family("comparisons_pruning")
def claim_families(study: "Study", df: pd.DataFrame) -> pd.DataFrame:
    """Holm within each claim over its rows (every model, and the pooled row where there is one), and the
    verdicts: a margin claim's (it has ``p inferior``, the one-sided test that can contradict it) or a
    superiority claim's. For the tables whose family is the whole claim and that carry no ceiling note."""
    df = _with_margin_columns(df.copy())
    identical = (df["difference"] == 0) & (df["ci low"] == 0) & (df["ci high"] == 0)
    for _, idx in df.groupby("claim", sort=False).groups.items():
        df.loc[idx, "p holm"] = analysis.holm(df.loc[idx, "p"])
        if df.loc[idx, "p inferior"].notna().any():
            df.loc[idx, "p holm inferior"] = analysis.holm(df.loc[idx, "p inferior"])
    margin = df["p inferior"].notna()
    df["verdict"] = [analysis.margin_verdict(p, pi, i) if m else analysis.superiority_verdict(d, p, i)
                     for p, pi, i, m, d in zip(df["p holm"], df["p holm inferior"], identical, margin, df["difference"])]
    return df


def comparisons(study: "Study", name: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Write comparison rows as the table ``comparisons_<name>`` (the report reads every one)."""
    return write(study, f"comparisons_{name}", _with_margin_columns(pd.concat(frames, ignore_index=True)))


# what only some claims fill (a margin claim's one-sided test, a family-wide interval): empty where a claim has none
SOMETIMES_EMPTY = ("p inferior", "p holm inferior", "ci low (family)", "ci high (family)", "detectable (80% power, family)")


def _with_margin_columns(df: pd.DataFrame) -> pd.DataFrame:
    for c in SOMETIMES_EMPTY:
        if c not in df:
            df[c] = np.nan
    return df


HEAD_SOURCES = ("nq", "in-domain", "in-domain, position-matched")  # per_query's head sources, in this order
MULTILINGUAL_PAIRS = (("CoRe-R", "ICR", "nq"), ("CoRe-R", "QR-R", "nq"))


def table1_comparisons(study: "Study", pq: pd.DataFrame) -> pd.DataFrame:
    """Table 1's claims (``table1_pairs`` for the head sources the per-query table holds), written as
    ``comparisons_table1``."""
    sources = [s for s in HEAD_SOURCES if s in set(pq["head source"])]
    return comparisons(study, "table1", [compare(study, pq, table1_pairs(study, sources))])


def table2_comparisons(study: "Study", pq: pd.DataFrame) -> pd.DataFrame:
    """The multilingual claims (a question once across XQuAD-R's languages), written as ``comparisons_table2``."""
    return comparisons(study, "table2", [compare(study, pq, MULTILINGUAL_PAIRS, claim_prefix="multilingual: ",
                                                 by_question=True)])


def in_domain_sources(study: "Study", pq: pd.DataFrame, k: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both detection sources side by side, and where the in-domain positives sit in the prompt."""
    k = k or study.p.num_heads
    rows = []
    for m in study.p.models:
        sub = pq[pq["model"] == m]
        for src in ("nq", "in-domain", "in-domain, position-matched"):
            if src == "nq":
                shared = len(set(study.heads(m, "core", k)) & set(study.heads(m, "qr", k)))
            else:
                shared = float(np.mean([len(set(study.heads(m, "core", k, None, src, c)) & set(study.heads(m, "qr", k, None, src, c)))
                                        for c in study.p.collections]))
            means = {meth: mean_over_collections(sub[(sub["method"] == meth) & (sub["head source"] == (src if meth in DETECTED else "all"))])
                     for meth in ("CoRe-R", "QR-R", "ICR")}
            if src.endswith("position-matched"):  # QR ignores the negatives: its heads are the in-domain row's
                shared, means["QR-R"] = float("nan"), float("nan")
            rows.append({"model": m, "head source": src, "CoRe and QR share": shared, **means,
                         "CoRe-R - QR-R": 100 * (means["CoRe-R"] - means["QR-R"]),
                         "CoRe-R - ICR": 100 * (means["CoRe-R"] - means["ICR"])})
    slots = []
    for m in study.p.models:
        for c in study.p.collections:
            _, _, pos = in_domain_samples(study.records(m, c), study.collection(c).qrels)
            for slot, n in pd.Series(pos).value_counts().sort_index().items():
                slots.append({"collection": c, "model": m, "slot": int(slot), "positives": int(n)})
    return write(study, "in_domain_sources", pd.DataFrame(rows)), write(study, "positive_slots", pd.DataFrame(slots))
