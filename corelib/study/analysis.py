"""The analysis plan: how every claim of the paper is tested and judged.

Written down before the numbers it judges existed; ``RULES`` is the prose the report
prints, and the functions below are the only code that computes verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UsageError

ALPHA = 0.05
POOLED = "pooled (a query once)"  # the label of a claim's pooled test (every model's queries, each counted once)
ALL_COLLECTIONS = "all (collections weighted equally)"  # a forest plot's overall row
PRUNING_MARGIN = 0.5  # points of nDCG@10: "50% pruning costs at most half a point"
ORDER_MARGIN = 0.5  # points of nDCG@10: a remedy makes a method order-robust when the order moves it less
CEILING_SHARE = 0.8  # a comparison where this share of the paired differences is exactly 0 says little
FEW_HEADS = 10  # "the best head count is below 10"
N_RESAMPLES = 10_000
SEED = 0

RULES = f"""\
**Analysis plan** (fixed in `corelib/study/analysis.py` before the numbers it judges were computed).

- *Claim families.* "CoRe-R beats ICR", "CoRe-R beats QR-R", "CoRe-R beats NIAH-R", "CoRe-R beats Bi-encoder",
  "ICR beats BM25" and "CoRe-R beats BM25" (NQ heads; CoRe and QR also with in-domain heads), each per model
  and pooled. With position-matched in-domain negatives only CoRe-R against ICR is tested: QR's score ignores
  the negatives, so that sample leaves QR-R's heads as they are and the comparison would not be controlled
  (dropped before the numbers of the corrected plan existed). With a dense first stage (profile `cpu-dense`; written before any of its numbers existed) the
  first-stage claims are against the stage whose candidates are re-ranked ("ICR beats Dense", "CoRe-R beats
  Dense"), and the first stages themselves are compared ("Dense beats BM25", each its own top k). NIAH-R
  (Wu et al.'s retrieval heads, from needle-in-a-haystack decoding) joined this plan before any NIAH number
  existed; a model whose needle trials retrieve no needle has no NIAH-R row and no NIAH test, and the NIAH
  detection table says so with its counts. "CoRe-R beats Layer window" (added before any layer-window number
  existed; after Selective-ICR): the layer window is all heads of the contiguous layers whose summed attention
  mass scores best by CoRe's own criterion (the mean softmax at the positive, the profile's temperature) on the
  same NQ detection records CoRe uses, never on evaluated queries; ties go to the narrower, then the shallower
  window.
- *The bi-encoder* reads each candidate as the LLMs do, the title and the body's first 100 words (the profile's
  `words`); tables written before this rule read title and text up to the encoder's 256 tokens (the cpu
  profile's per-query rows were recomputed with `record-free`, its practitioner latency with `practitioner-cost`).
- *Unit and average.* The unit is a test query. A model's score for a method is the mean nDCG@10
  over collections, each collection weighted equally (the mean over its evaluated queries).
  A difference is the same average of per-query paired differences (points of nDCG@10).
- *Pooling over models.* A query evaluated by several models counts once: its paired difference is
  first averaged over the models that evaluated it, then averaged as above.
- *Confidence interval.* 95% percentile interval of a paired bootstrap stratified by collection
  ({N_RESAMPLES:,} resamples of queries within each collection, seed {SEED}).
- *p-value.* Paired randomization (sign-flip) test of the collection-weighted mean difference,
  {N_RESAMPLES:,} flips, two-sided (ranx's Fisher randomization test on one collection); one-sided for margins.
- *Families and multiplicity.* A claim's family is its per-model tests plus the pooled test; p is
  Holm-adjusted within the family and reported beside the raw p. Per-collection p-values are descriptive.
  Each row's interval and detectable difference are also given at the level Holm tests it (alpha / (m - j + 1)
  for the j-th smallest of the family's m p-values, while the smaller ones are rejected), the interval that
  agrees with its verdict; the claims at a glance print that one (added before these adjusted intervals existed).
- *Primary and secondary claims* (added after the numbers existed). The paper's primary claims are five:
  CoRe-R beats ICR, CoRe-R beats QR-R and CoRe-R beats NIAH-R (Table 1, NQ heads), the head-count sweep peaks below
  {FEW_HEADS} heads (Figure 1) and 50% layer pruning costs at most {PRUNING_MARGIN} point (Figure 3). Their pooled
  tests form one more family, Holm over the five (a margin claim's contradiction tested with its one-sided p in its
  place), which bounds the family-wise error across the primary claims at {ALPHA}; the report gives that verdict
  beside each claim's own. Every other verdict (per model, other claims, controls, order, remedies) is secondary:
  Holm within its own family only, a description of where an effect shows, not a confirmed finding. Beside each
  pooled estimate (which weighs a model by its queries) the report gives the unweighted mean of the models'
  estimates and their range; the verdicts use the pooled test.
- *Verdicts, "A beats B".* supported: mean difference > 0 and Holm p < {ALPHA}; contradicted: < 0 and
  Holm p < {ALPHA}; inconclusive otherwise. Each row also states the smallest difference the test could
  detect at 80% power (2.80 standard errors). A comparison where at least {CEILING_SHARE:.0%} of the paired
  differences are exactly 0 is marked uninformative beside its verdict (a ceiling: both methods rank the same).
  The multilingual sets hold the same questions in each language, so there a question is one unit: its
  differences are averaged over the languages before the bootstrap and the sign flips (both added before these
  numbers existed).
- *Verdicts, "within a margin" (50% pruning costs at most {PRUNING_MARGIN} point).* Non-inferiority (TOST,
  one-sided at {ALPHA}): supported when the test of "loss >= {PRUNING_MARGIN}" rejects (Holm), contradicted
  when the test of "loss <= {PRUNING_MARGIN}" rejects (Holm), inconclusive otherwise; identical runs are reported
  as identical (supported). Its interval is the 90% one, which pairs with two one-sided tests at {ALPHA} (added
  before the 90% intervals existed).
- *Peak below {FEW_HEADS} heads.* Queries are split in two halves within each collection (seeded). On one half the
  best k < {FEW_HEADS} and the best k >= {FEW_HEADS} (CoRe order) are chosen and compared on the other half, and the
  other way round (cross-fitted: added before the cross-fitted numbers existed), so that every query tests the claim
  once, as "A beats B". The peak is never chosen on the queries that test it.
- *Top heads in the middle third of depth.* Binomial test of the count in the middle third against 1/3: supported
  when more (one-sided, Holm over the models), contradicted when fewer (one-sided, Holm). The unit is a distinct layer
  of the top-k heads (corrected after the numbers existed: the first test counted the heads, but heads of one layer
  are not independent draws of a depth, and 8 heads sat in 3-6 layers); the heads' count stays as a description.
- *Head-set controls.* For random head sets (uniform, and matched to the CoRe top-k's layers) the
  score of each set on the same queries gives a distribution; a method's percentile and empirical p,
  (1 + #sets scoring >= method) / (1 + #sets), say whether its heads beat heads drawn by chance
  (supported when p < {ALPHA}, contradicted when the mirrored p < {ALPHA}; Holm over the models, each control and
  method a family: added before these adjusted numbers existed). A matched control draws all of its distinct sets
  when there are at most as many as the profile draws, and the table says how many exist, how many of CoRe's heads a
  set shares on average and the smallest p it can give; a second layer-matched control draws only sets without
  any of CoRe's heads, and a control of fewer than {round(1 / ALPHA) - 1} sets, which cannot reach p < {ALPHA}, is marked
  uninformative (both added before these numbers existed). Corrected after the numbers existed: a control is
  uninformative when its smallest p cannot go below {ALPHA} after Holm over its family of models (m / (1 + sets)),
  and each row gives the Monte Carlo error of its deciding Holm p over redraws of the sets (sqrt(p (1 - p) / sets),
  scaled by Holm's factor; none where every distinct set was drawn); a verdict within two such errors of {ALPHA} is
  marked as one a redraw could flip. A method's family is its rows of every model, the
  layer window's whatever layers each model's covers (corrected after the numbers existed: its rows named their
  layers, so each model's was a family of its own, unadjusted). The queries are held fixed: this tests the head
  choice, not generalisation to new queries. The best single heads on the evaluated queries are an in-sample
  reference, never a method and not an upper bound (a set of individually good heads need not be the best set).
- *Candidate order* (added before any number with shuffled candidates existed). ICR's prompt puts the
  first stage's rank-1 document nearest the query, so heads that favour nearby text can reproduce the first
  stage's ranking. On a stratified part of each checked model's query sample (every query of a collection
  whose sample has at most 100 queries, a seeded 64 of each larger one) the same candidates are also
  placed in a random order per query (drawn from a fixed seed and the query id; the permutation is stored
  with the record) and re-ranked with the same heads. "CoRe-R beats ICR", "CoRe-R beats QR-R", "CoRe-R beats
  NIAH-R", "CoRe-R beats BM25" and "ICR beats BM25" are tested under each order on these queries with the
  rules above (a family per claim and order: the models plus pooled, Holm), and the order's own effect,
  "A in ICR's order beats A shuffled", per method in the same way. A claim is *robust to the order* when
  its verdict with shuffled candidates equals its verdict in ICR's order on the same queries, and *depends
  on the order* otherwise. Agreement with the first stage is descriptive: the Pearson correlation of a
  method's per-query nDCG@10 with BM25's, and the mean (collections weighted equally) of Kendall's tau
  between its ranking of the candidates and BM25's.
- *Order remedies* (added before any remedy's number existed). On the order check's queries, each attention
  re-ranker (ICR, QR-R, CoRe-R, NIAH-R, the layer window) is scored in ICR's order and shuffled (the order check's
  seed), plain and under three zero-shot remedies: (a) permutation aggregation over K orders (the given order and
  K - 1 shuffles seeded from the order seed + 1 on, the same extra orders for both), each document's calibrated
  score averaged, or its reciprocal rank averaged, for each K of the profile (`order_permutations`); (b) the
  position prior: each prompt slot's mean document score under the method's heads, counted from the query, over
  the non-positive documents of the calibrated NQ detection records (their negatives sit in a seeded random
  order; never an evaluated query), subtracted from the score of the document in that slot; (c) the
  permutation-invariant prompt: each document in its own block (header and itself only, every block at the same
  positions, no number in its marker), the query after the longest block attending to all of them, with QR and
  CoRe heads and the layer window detected again on the NQ detection set under that prompt (NIAH-R keeps the
  needle-trial heads). BM25 and the bi-encoder read the same candidates. Claims, each a family of the models
  plus pooled, Holm within it: "*method* [*remedy*] is order-robust": its ICR-order minus shuffled nDCG@10 lies
  within {ORDER_MARGIN} point (two one-sided tests at {ALPHA}, 90% interval): supported when both reject,
  contradicted when the one-sided test of the side the estimate lies on rejects "within the margin" (its p
  doubled for the choice of side), inconclusive otherwise; "*method* [*remedy*] (shuffled) beats BM25" and "...
  beats Bi-encoder"; "CoRe-R [*remedy*] beats ICR [*remedy*]" and "... QR-R [*remedy*]" in each order. The plain
  rows (remedy "none") are the baseline the remedies are read against; the order check's own claims stay as
  they are. Cost: forwards per query (K for aggregation, one otherwise) and the latency of one invariant-prompt
  forward beside one ICR forward, timed side by side (`make bench`). A model added to the remedies later
  (qwen2.5-coder-1.5b: its queries shuffled, the invariant prompt and K = 3) is reported as its own rows and
  never pooled into the order check's claims.
- *bf16 on the CPU* (added before any bf16 record of the study's models existed). A model's records may be
  computed in bf16 instead of fp32 only after a precision check on queries it already has in fp32 passes: the
  same queries and detection prompts run in bf16 (heads detected again in bf16), and (1) the mean over
  collections of each of ICR, QR-R and CoRe-R within 0.5 point of fp32, (2) per-query nDCG@10 within 0.05 of
  fp32 for at least 95% of the queries, for each method, and (3) every per-model verdict of Table 1's claims
  unchanged. Otherwise the model stays in fp32 and the report says why. Corrected after the numbers existed:
  criteria 1 and 2 are applied to every method row the tables report (each head source; for a rerun on another
  machine, every per-query table). ICR, QR-R and CoRe-R with NQ heads, with criterion 3, still decide whether the
  model runs in bf16; each other row stays in bf16 only where it meets criteria 1 and 2 itself, and the report names
  the rows that do not as outside the plan until an fp32 rerun. A model run in bf16 says so wherever its
  numbers appear (its sizes line names the dtype).
- *A rerun on another machine* (added after the first such rerun, before its rows replaced any). bf16 products
  accumulate in another order on another CPU, so a model's rows recomputed there in the same dtype may differ
  from its committed ones. They replace them where criteria 1-3 above hold between the two runs, criterion 3 over
  every claim's per-model verdict since the rerun replaces them all (``precision.machine_check``); otherwise the
  earlier run's rows stay. Either way the report states the comparison.
- *NIAH-R at the prompts' length* (added before any needle trial at that length existed). NIAH-R's heads were found
  at 1,000-2,000 tokens while the re-ranking prompts run to about 3,500. A second grid of the same needles and depths
  at the prompts' length (``niah_prompt_lengths``) gives the method NIAH-R (prompt length), tested as "CoRe-R beats
  NIAH-R (prompt length)" under the rule of every Table 1 comparison and placed among the random head sets like
  every method; NIAH-R from the shorter grid stays as it was, so both are reported.
- *Stratified samples* (added before the extended samples' numbers existed). A model may take every query of a
  collection with at most n judged queries and its seeded per-collection sample of each larger one
  (``whole_up_to_by_model``); its comparisons are computed as for any sample (collections weighted equally).
  qwen2.5-coder-1.5b's sample grew from 105 to 426 queries after its first numbers had been seen (and its heads were
  detected again, in bf16 on 100 x 2 prompts instead of fp32 on 50 x 2), so its verdicts are not those of a sample
  fixed in advance.
- *Scale* (the `cpu` profile's four models; added before the two Qwen models' cpu-profile numbers existed).
  Descriptive only: each model's estimates with its own CI and verdict, against its parameter count. No
  trend is tested: four models differ in family, tuning and quantisation as well as size, and their samples
  differ (the table's `queries`). A claim is said to change with size only where per-model verdicts differ
  in direction (supported for one model, contradicted for another); an inconclusive verdict beside a
  supported one is reported as such, not as a change.
"""


# ----------------------------------------------------------------------------- estimation


def _strata(diffs: pd.DataFrame) -> list[np.ndarray]:
    return [g["diff"].to_numpy(dtype=float) for _, g in diffs.groupby("collection", sort=True)]


def weighted_mean(strata: list[np.ndarray]) -> float:
    return float(np.mean([s.mean() for s in strata]))


@dataclass(frozen=True)
class Paired:
    """A paired comparison on the collection-weighted mean (points of nDCG@10)."""

    estimate: float
    ci_low: float
    ci_high: float
    p: float  # two-sided randomization p
    queries: int
    collections: int
    se: float
    identical: bool
    boot: np.ndarray | None = field(default=None, repr=False, compare=False)  # the bootstrap means

    @property
    def mde(self) -> float:
        """Smallest true difference detected with 80% power at two-sided alpha 0.05."""
        return self.detectable(ALPHA)

    def detectable(self, alpha: float) -> float:
        """Smallest true difference detected with 80% power by a two-sided test at ``alpha``."""
        return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(0.8)) * self.se)

    def interval(self, level: float) -> tuple[float, float]:
        """The bootstrap percentile interval at ``level`` (the same resamples as ``ci_low``/``ci_high``)."""
        if self.boot is None:
            return (0.0, 0.0) if self.identical else (float("nan"), float("nan"))
        tail = (1 - level) / 2
        lo, hi = np.percentile(self.boot, [100 * tail, 100 * (1 - tail)])
        return float(lo), float(hi)


def _flip_stats(strata: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """Collection-weighted means under random sign flips of every paired difference: [n]."""
    out = np.zeros(n)
    for s in strata:
        signs = rng.integers(0, 2, size=(n, len(s)), dtype=np.int8) * 2 - 1
        out += (signs * s).mean(axis=1)
    return out / len(strata)


def paired(diffs: pd.DataFrame, n: int = N_RESAMPLES, seed: int = SEED, level: float = 1 - ALPHA) -> Paired:
    """``diffs``: one row per query with ``collection`` and ``diff`` (points). Stratified bootstrap
    CI at ``level`` (default 95%) and two-sided sign-flip randomization p of the collection-weighted mean difference."""
    strata = _strata(diffs)
    if not strata:
        raise UsageError("no paired differences to test")
    est = weighted_mean(strata)
    k = len(strata)
    se = float(np.sqrt(sum(s.var(ddof=1) / len(s) if len(s) > 1 else 0.0 for s in strata)) / k)
    identical = all(np.all(s == 0) for s in strata)
    if identical:
        return Paired(0.0, 0.0, 0.0, 1.0, sum(map(len, strata)), k, 0.0, True)
    rng = np.random.default_rng(seed)
    boot = np.zeros(n)
    for s in strata:
        idx = rng.integers(0, len(s), size=(n, len(s)))
        boot += s[idx].mean(axis=1)
    boot /= k
    tail = (1 - level) / 2
    lo, hi = np.percentile(boot, [100 * tail, 100 * (1 - tail)])
    null = _flip_stats(strata, rng, n)
    p = float((1 + np.sum(np.abs(null) >= abs(est) - 1e-12)) / (n + 1))
    return Paired(est, float(lo), float(hi), p, sum(map(len, strata)), k, se, False, boot)


def one_sided_p(diffs: pd.DataFrame, shift: float, greater: bool, n: int = N_RESAMPLES, seed: int = SEED) -> float:
    """Randomization p of H0: mean difference <= -shift (``greater``) or >= -shift (not ``greater``),
    by sign flips of the differences moved by ``shift`` (TOST's two one-sided tests)."""
    strata = [s + shift for s in _strata(diffs)]
    est = weighted_mean(strata)
    if all(np.all(s == 0) for s in strata):
        return 1.0
    null = _flip_stats(strata, np.random.default_rng(seed), n)
    hits = np.sum(null >= est - 1e-12) if greater else np.sum(null <= est + 1e-12)
    return float((1 + hits) / (n + 1))


# The paper's primary claims (the plan's "Primary and secondary claims") -> the comparisons table of their pooled test
PRIMARY_CLAIMS = {
    "CoRe-R beats ICR": "comparisons_table1",
    "CoRe-R beats QR-R": "comparisons_table1",
    "CoRe-R beats NIAH-R": "comparisons_table1",
    f"peak below {FEW_HEADS} heads: best k < {FEW_HEADS} beats best k >= {FEW_HEADS}": "comparisons_peak",
    f"50% pruning within {PRUNING_MARGIN} point": "comparisons_pruning",
}


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, (m - i) * p[idx])
        out[idx] = min(1.0, running)
    return out


def holm_levels(pvalues, alpha: float = ALPHA) -> np.ndarray:
    """The significance level at which Holm's step-down procedure tests each hypothesis (same order as given;
    NaN for a NaN p): alpha / (m - j + 1) for the j-th smallest p while every smaller one is rejected, and for
    the others the level of the first one not rejected. Equal p-values are one step: each gets the level of the
    first of them, so that no level depends on the order the rows come in. An interval at 1 - that level excludes
    0 when Holm rejects (up to the bootstrap's and the sign-flip test's small disagreements)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(ok)
    level, j = alpha / max(m, 1), 0
    while j < m:
        tied = order[j:][p[order[j:]] == p[order[j]]]
        out[tied] = level
        j += len(tied)
        if p[tied[0]] < level:  # rejected (all of them): the next one is tested at the next step's level
            level = alpha / (m - j) if m - j > 0 else alpha
    return out


# ----------------------------------------------------------------------------- verdicts


def superiority_verdict(estimate: float, p_holm: float, identical: bool = False) -> str:
    if identical:
        return "inconclusive (identical)"
    if p_holm < ALPHA:
        return "supported" if estimate > 0 else "contradicted"
    return "inconclusive"


def family_columns(results: list[Paired], pvalues, interval_level: float = 1 - ALPHA) -> list[dict]:
    """Each comparison's interval and detectable difference at the level Holm tests it in its family
    (``holm_levels``): the interval that goes with the family's verdicts. ``interval_level``: the unadjusted
    level (0.90 for a margin's two one-sided tests, whose interval then narrows by the same factor)."""
    out = []
    for r, lvl in zip(results, holm_levels(pvalues)):
        adj = (1 - interval_level) * lvl / ALPHA  # the interval's share outside, scaled as Holm scales alpha
        lo, hi = r.interval(1 - adj)
        out.append({"ci low (family)": lo, "ci high (family)": hi, "detectable (80% power, family)": r.detectable(lvl)})
    return out


def margin_verdict(p_noninferior_holm: float, p_inferior_holm: float, identical: bool = False) -> str:
    if identical:
        return "supported (identical)"
    if p_noninferior_holm < ALPHA:
        return "supported"
    if p_inferior_holm < ALPHA:
        return "contradicted"
    return "inconclusive"


# ----------------------------------------------------------------------------- pooling


def paired_differences(per_query: pd.DataFrame, a: str, b: str, pool: bool = False) -> pd.DataFrame:
    """Per-query differences (points) of method ``a`` minus ``b`` from the long per-query table
    (model, collection, query_id, method, ndcg@10). ``pool``: one row per (collection, query),
    averaged over the models that evaluated it, so that no query counts twice."""
    keys = ["model", "collection", "query_id", "method"]
    repeated = per_query[per_query.duplicated(keys, keep=False)]
    if len(repeated):
        r = repeated.iloc[0]
        raise UsageError(f"the per-query table holds {len(repeated)} rows that share (model, collection, query, method), "
                         f"e.g. {r['method']} on {r['model']} {r['collection']} query {r['query_id']} (several head "
                         "sources or head counts?): select one of each before comparing, so that no score is averaged in")
    wide = per_query.pivot(index=keys[:3], columns="method", values="ndcg@10")
    if a not in wide or b not in wide:
        raise UsageError(f"the per-query table has no {a if a not in wide else b} rows")
    d = (100 * (wide[a] - wide[b])).dropna().rename("diff").reset_index()
    if pool:
        d = d.groupby(["collection", "query_id"], as_index=False)["diff"].mean()
    return d


def by_question(diffs: pd.DataFrame) -> pd.DataFrame:
    """Per-query differences of collections that hold the same questions (XQuAD-R's languages) -> one row per
    question, its differences averaged over the collections, in one stratum: a question is one unit."""
    d = diffs.groupby("query_id", as_index=False)["diff"].mean()
    return d.assign(collection="+".join(sorted(diffs["collection"].unique())))


def ceiling_note(verdict: str, zero_share: float) -> str:
    """The verdict, marked uninformative where most paired differences are exactly 0 (a ceiling)."""
    if zero_share >= CEILING_SHARE:
        return f"{verdict} (uninformative: {zero_share:.0%} of the paired differences are 0)"
    return verdict


def split_halves(queries: pd.DataFrame, seed: int = SEED) -> tuple[pd.Index, pd.Index]:
    """Two halves of the rows of ``queries`` (with a ``collection`` column), split within each collection."""
    rng = np.random.default_rng(seed)
    first = []
    for _, g in queries.groupby("collection", sort=True):
        idx = g.index.to_numpy()
        first.extend(rng.permutation(idx)[: len(idx) // 2].tolist())
    first_index = pd.Index(sorted(first))
    return first_index, queries.index.difference(first_index)


# the scaling table's column of the depth claim: the median relative depth of a model's top CoRe heads
SCALING_DEPTH = "top CoRe heads: median relative depth"


def in_middle_third(layers, num_layers: int) -> np.ndarray:
    """Whether each layer's relative depth, (layer + 0.5) / num_layers, lies in the middle third (1/3, 2/3]."""
    d = (np.asarray(layers, dtype=float) + 0.5) / num_layers
    return (d > 1 / 3) & (d <= 2 / 3)


def middle_third_test(top_layers, num_layers: int) -> tuple[int, int, float, float]:
    """(distinct top layers in the middle third, distinct top layers, p more than 1/3, p fewer than 1/3): a binomial
    test with the layer as the unit, since the top heads of one layer are not independent draws of a depth."""
    layers = sorted({int(l) for l in top_layers})
    inside = int(in_middle_third(layers, num_layers).sum())
    k = len(layers)
    return (inside, k, stats.binomtest(inside, k, 1 / 3, alternative="greater").pvalue,
            stats.binomtest(inside, k, 1 / 3, alternative="less").pvalue)


def share_keeping_layers(top_layers, layers: int) -> float:
    """The largest share of the last layers that can be pruned while every layer in ``top_layers`` is kept."""
    return 1 - (max(int(l) for l in top_layers) + 1) / layers


def middle_third_verdict(p_more_holm: float, p_fewer_holm: float) -> str:
    """The middle-third claim: supported when more of the top heads' distinct layers than 1/3 sit in the middle third
    (Holm), contradicted when fewer do (Holm), inconclusive otherwise."""
    if p_more_holm < ALPHA:
        return "supported"
    return "contradicted" if p_fewer_holm < ALPHA else "inconclusive"


def control_verdict(p_better_holm: float, p_worse_holm: float, reference: bool = False, sets: int | None = None,
                    family: int = 1, mc_error: float = 0.0) -> str:
    """A head choice against random sets: supported when it beats them (Holm over the models), contradicted when
    they beat it, inconclusive otherwise; an in-sample reference gets no verdict. A control whose smallest possible
    p, Holm-adjusted over its ``family`` of models (family / (1 + sets)), cannot go below ALPHA has its inconclusive
    verdict marked uninformative. A verdict whose deciding Holm p lies within two Monte Carlo errors of ALPHA is
    marked as one a redraw of the sets could flip."""
    if reference:
        return "in-sample reference (not a method)"
    near = (f" (a redraw of the sets could flip it: Monte Carlo error {mc_error:.3f})"
            if mc_error and min(abs(p_better_holm - ALPHA), abs(p_worse_holm - ALPHA)) < 2 * mc_error else "")
    if p_better_holm < ALPHA:
        return "supported" + near
    if p_worse_holm < ALPHA:
        return "contradicted" + near
    if sets is not None and family / (1 + sets) >= ALPHA:
        return (f"inconclusive (uninformative: {int(sets)} distinct sets, smallest p {1 / (1 + sets):.2f}, "
                f"{min(1.0, family / (1 + sets)):.2f} after Holm over {family} models)")
    return "inconclusive" + near


def monte_carlo_error(p_better: float, p_worse: float, p_better_holm: float, p_worse_holm: float, sets: float) -> float:
    """The standard error, over redraws of ``sets`` random sets, of the Holm-adjusted empirical p that lies nearer
    ALPHA: sqrt(p (1 - p) / sets) of the raw p, scaled by Holm's factor for that row (adjusted / raw)."""
    if not sets or np.isnan(sets):
        return float("nan")
    raw, adjusted = min(((p_better, p_better_holm), (p_worse, p_worse_holm)), key=lambda x: abs(x[1] - ALPHA))
    if not raw or np.isnan(raw):
        return float("nan")
    return float(np.sqrt(raw * (1 - raw) / sets) * (adjusted / raw))


def control_p(method_score: float, control_scores) -> tuple[float, float, float]:
    """(percentile of the method in the control distribution, empirical p of 'better than the
    controls', mirrored p of 'worse than the controls')."""
    c = np.asarray(control_scores, dtype=float)
    n = len(c)
    pct = 100 * float(np.mean(c < method_score) + 0.5 * np.mean(c == method_score))
    p_better = (1 + int(np.sum(c >= method_score))) / (n + 1)
    p_worse = (1 + int(np.sum(c <= method_score))) / (n + 1)
    return pct, p_better, p_worse
