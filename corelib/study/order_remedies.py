"""The candidate-order remedies on the order check's queries (notebook 11; rules: *Order remedies* in
``analysis.RULES``).

Each attention re-ranker (ICR, QR-R, CoRe-R, NIAH-R, the layer window) is scored on the order check's queries
in ICR's order and shuffled (the order check's seed), plain and under each remedy of ``corelib.order_robust``:
permutation aggregation over K orders (mean score, mean reciprocal rank), the position prior, and the
permutation-invariant prompt (heads and layer window detected on NQ under that prompt). BM25 and the bi-encoder
read the same candidates and are the reference lines. The tables: ``order_remedies`` (per query), its means
(``order_remedy_means``), the claims (``comparisons_order_remedies``) and the invariant prompt's heads against the
committed ones (``order_remedy_heads``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import UsageError
from ..evaluate import per_query
from ..order_robust import Aggregate, aggregate_runs, permutation_orders, position_prior, prior_corrected_run
from ..prompts import ICR_ORDER, CandidateOrder
from ..scoring import record_run
from . import analysis
from .methods import INVARIANT_SOURCE
from .order_check import ICR_ORDER_NAME, committed_heads
from .tables.schema import family, write
from .tables.table1 import claim_families, compare, comparisons

if TYPE_CHECKING:
    from .core import Study

log = logging.getLogger(__name__)

NONE, PRIOR, INVARIANT = "none", "position prior", "invariant prompt"
REFERENCES = ("BM25", "Bi-encoder")  # read no prompt: the same in every order
METHODS = ("ICR", "QR-R", "CoRe-R", "NIAH-R", "Layer window")
ORDER_MARGIN = analysis.ORDER_MARGIN


@dataclass(frozen=True)
class Remedy:
    label: str
    forwards: int  # forwards per query (ICR: one calibrated forward)


def remedies(study: "Study") -> list[Remedy]:
    """The profile's remedies, in the tables' order: none, each K of permutation aggregation with each aggregate,
    the position prior, the invariant prompt."""
    out = [Remedy(NONE, 1)]
    for k in study.p.order_permutations:
        out += [Remedy(aggregated_label(k, how), k) for how in Aggregate]
    return out + [Remedy(PRIOR, 1), Remedy(INVARIANT, 1)]


def aggregated_label(k: int, how: Aggregate) -> str:
    return f"{k} orders, {how.value}"


def orders(study: "Study") -> dict[str, CandidateOrder]:
    """The two orders every remedy is tested in: ICR's, and the order check's shuffle."""
    return {ICR_ORDER_NAME: ICR_ORDER, study.shuffled_order.name: study.shuffled_order}


def remedy_models(study: "Study") -> list[str]:
    return list(study.p.order_models) if study.p.order_remedies else []


def method_heads(study: "Study", m: str, invariant: bool = False) -> dict[str, list | None]:
    """Each method's heads: the committed rankings' (QR-R, CoRe-R, NIAH-R) and the layer window on the NQ
    detection records; ``invariant``: QR-R, CoRe-R and the window detected under the invariant prompt (NIAH-R's
    come from needle trials, which read no candidate list, and stay)."""
    present = set(study.head_methods(m))
    heads = committed_heads(study, m, {"QR-R", "CoRe-R", *(["NIAH-R"] if "NIAH-R" in present else [])})
    if invariant:
        heads.update({"QR-R": study.heads(m, "qr", source=INVARIANT_SOURCE),
                      "CoRe-R": study.heads(m, "core", source=INVARIANT_SOURCE)})
    heads["Layer window"] = study.layer_window_heads(m, invariant=invariant)
    return {method: heads[method] for method in METHODS if method in heads}


def _runs(study: "Study", m: str, c: str, order: CandidateOrder, heads: dict, inv_heads: dict, priors: dict) -> dict:
    """(remedy, method) -> run of one collection's order-check queries with the candidates in ``order``."""
    base = study.order_records(m, c, order)
    out = {}
    for method, h in heads.items():
        out[NONE, method] = record_run(base, h)
        out[PRIOR, method] = prior_corrected_run(base, priors[method], h)
    for k in study.p.order_permutations:
        extra = [study.order_records(m, c, o) for o in permutation_orders(order, k, study.p.order_seed)[1:]]
        for method, h in heads.items():
            runs = [out[NONE, method], *(record_run(r, h) for r in extra)]
            for how in Aggregate:
                out[aggregated_label(k, how), method] = aggregate_runs(runs, how)
    invariant = study.invariant_records(m, c)
    for method, h in inv_heads.items():
        out[INVARIANT, method] = record_run(invariant, h)
    return out


def remedies_per_query(study: "Study") -> pd.DataFrame:
    """nDCG@10 of every order-check query per order, remedy and method (table ``order_remedies``), with BM25 and
    the bi-encoder on the same candidates (remedy 'none', the same in both orders)."""
    s = study
    if not remedy_models(s):
        raise UsageError(f"profile {s.p.name!r} runs no order remedies (order_models and order_remedies)")
    frames = []
    for m in remedy_models(s):
        heads, inv_heads = method_heads(s, m), method_heads(s, m, invariant=True)
        calibrated = s.detection(m, calibrate=True)
        priors = {method: position_prior(calibrated, h) for method, h in heads.items()}
        for c in s.p.collections:
            qrels, qids = s.collection(c).qrels, s.order_sample(m, c)
            bm25, bi = s.candidates(m, c).run(), s.bi_encoder_run(m, c)
            references = {("none", "BM25"): {q: bm25[q] for q in qids}, ("none", "Bi-encoder"): {q: bi[q] for q in qids}}
            for name, order in orders(s).items():
                for (remedy, method), run in {**references, **_runs(s, m, c, order, heads, inv_heads, priors)}.items():
                    got = per_query(run, qrels)
                    frames.append(pd.DataFrame({"model": m, "collection": c, "query_id": got.index.astype(str),
                                                "order": name, "remedy": remedy, "method": method, "ndcg@10": got.values}))
            log.info("%s %s: order remedies on %d queries", m, c, len(qids))
    return write(s, "order_remedies", pd.concat(frames, ignore_index=True))


def remedy_means(study: "Study", rpq: pd.DataFrame) -> pd.DataFrame:
    """Mean nDCG@10 (collections weighted equally) per model, order, remedy and method, with the forwards a query
    costs (table ``order_remedy_means``)."""
    forwards = {r.label: r.forwards for r in remedies(study)}
    rank = {label: i for i, label in enumerate(forwards)}
    rpq = rpq.iloc[rpq["remedy"].map(rank).argsort(kind="stable")]  # the remedies in the plan's order
    rows = []
    for (m, order, remedy, method), g in rpq.groupby(["model", "order", "remedy", "method"], sort=False):
        rows.append({"model": m, "order": order, "remedy": remedy, "method": method, "queries": len(g),
                     "ndcg@10": analysis.weighted_mean([x.to_numpy() for _, x in g.groupby("collection")["ndcg@10"]]),
                     "forwards per query": 0 if method in REFERENCES else forwards[remedy]})
    return write(study, "order_remedy_means", pd.DataFrame(rows))


def _label(method: str, remedy: str, order: str) -> str:
    return method if method in REFERENCES else f"{method} [{remedy}] ({order})"


def _as_per_query(rpq: pd.DataFrame) -> pd.DataFrame:
    """The remedies' rows in the per-query table's shape, each (method, remedy, order) a method of its own."""
    refs = rpq["method"].isin(REFERENCES)
    one = rpq[~refs | (rpq["order"] == ICR_ORDER_NAME)]
    return one.assign(method=[_label(m, r, o) for m, r, o in zip(one["method"], one["remedy"], one["order"])],
                      **{"first stage": "bm25", "k": 0, "head source": "nq"})


def robustness_rows(study: "Study", pq: pd.DataFrame, pairs, margin: float = ORDER_MARGIN) -> pd.DataFrame:
    """Equivalence (TOST at 0.05, 90% interval) of each pair's ICR-order and shuffled labels within ``margin``
    points, per model and pooled; ``p`` tests "outside the margin" (supported when it rejects), ``p inferior`` the
    side the estimate lies on against the margin, doubled for the choice of side (contradicted when it rejects)."""
    rows, results = [], []
    for a, b, claim in pairs:
        models = [m for m, g in pq.groupby("model", sort=False) if {a, b} <= set(g["method"])]
        family_results, family_rows = [], []
        for m in models + ([analysis.POOLED] if len(models) > 1 else []):
            pool = m == analysis.POOLED
            d = analysis.paired_differences(pq if pool else pq[pq["model"] == m], a, b, pool=pool)
            r = analysis.paired(d, level=1 - 2 * analysis.ALPHA)
            p_equivalent = max(analysis.one_sided_p(d, margin, greater=True), analysis.one_sided_p(d, -margin, greater=False))
            shift, greater = (-margin, True) if r.estimate >= 0 else (margin, False)
            p_outside = min(1.0, 2 * analysis.one_sided_p(d, shift, greater=greater))
            family_results.append(r)
            family_rows.append({"claim": claim, "model": m, "a": a, "b": b, "head source": "nq", "difference": r.estimate,
                                "ci low": r.ci_low, "ci high": r.ci_high, "p": p_equivalent, "p inferior": p_outside,
                                "detectable (80% power)": r.mde, "queries": r.queries, "collections": r.collections})
        cols = analysis.family_columns(family_results, [f["p"] for f in family_rows], interval_level=1 - 2 * analysis.ALPHA)
        rows += [{**f, **c} for f, c in zip(family_rows, cols)]
        results += family_results
    return pd.DataFrame(rows)


def remedy_claims(study: "Study", rpq: pd.DataFrame) -> pd.DataFrame:
    """The claims of the plan's *Order remedies*, each a family (models and pooled, Holm): per remedy and method,
    order-robust (ICR's order minus shuffled within the margin); shuffled, it beats BM25 and the bi-encoder; and
    per remedy and order, CoRe-R beats ICR and QR-R (table ``comparisons_order_remedies``)."""
    pq = _as_per_query(rpq)
    shuffled = study.shuffled_order.name
    labels = set(pq["method"])
    present = [(r.label, m) for r in remedies(study) for m in METHODS
               if _label(m, r.label, shuffled) in labels and _label(m, r.label, ICR_ORDER_NAME) in labels]
    robust = robustness_rows(study, pq, [(_label(m, r, ICR_ORDER_NAME), _label(m, r, shuffled),
                                          f"order-robust within {ORDER_MARGIN} point: {m} [{r}]") for r, m in present])
    beats = [(_label(m, r, shuffled), ref, "nq") for r, m in present for ref in REFERENCES]
    core = [(_label("CoRe-R", r.label, o), _label(b, r.label, o), "nq") for r in remedies(study) for o in orders(study)
            for b in ("ICR", "QR-R") if {_label("CoRe-R", r.label, o), _label(b, r.label, o)} <= labels]
    return comparisons(study, "order_remedies", [robust, compare(study, pq, beats), compare(study, pq, core)])


family("comparisons_order_remedies")(claim_families)


def invariant_heads(study: "Study") -> pd.DataFrame:
    """The invariant prompt's top-k CoRe and QR heads and layer window against those of ICR's prompt (the
    committed rankings; table ``order_remedy_heads``)."""
    rows = []
    for m in remedy_models(study):
        plain, inv = method_heads(study, m), method_heads(study, m, invariant=True)
        for method in ("QR-R", "CoRe-R", "Layer window"):
            shared = len(set(map(tuple, plain[method])) & set(map(tuple, inv[method])))
            layers = sorted({l for l, _ in inv[method]})
            rows.append({"model": m, "method": method, "heads": len(inv[method]), "shared with ICR's prompt": shared,
                         "layers (invariant prompt)": " ".join(map(str, layers)),
                         "layers (ICR's prompt)": " ".join(map(str, sorted({l for l, _ in plain[method]})))})
    return write(study, "order_remedy_heads", pd.DataFrame(rows))


def write_all(study: "Study") -> dict[str, pd.DataFrame]:
    """Every table of notebook 11: ``python -m corelib.study order-remedies --profile cpu``."""
    rpq = remedies_per_query(study)
    return {"order_remedies": rpq, "order_remedy_means": remedy_means(study, rpq),
            "comparisons_order_remedies": remedy_claims(study, rpq), "order_remedy_heads": invariant_heads(study)}


def shuffled_gap(means: pd.DataFrame) -> pd.DataFrame:
    """Each method and remedy's mean in both orders and the order's cost (ICR's order minus shuffled), per model."""
    wide = means.pivot_table(index=["model", "remedy", "method"], columns="order", values="ndcg@10", sort=False)
    return wide.assign(**{"order cost (points)": 100 * (wide[ICR_ORDER_NAME] - wide.drop(columns=ICR_ORDER_NAME).iloc[:, 0])})

