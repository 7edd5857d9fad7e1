"""Zero-shot remedies for the candidate-order effect of attention re-ranking.

ICR's prompt puts the first stage's rank-1 document nearest the query, and attention favours nearby text, so
part of an attention re-ranker's quality is the first stage's order read through position. Three remedies,
each usable with any head set:

- **Permutation aggregation** (after permutation self-consistency, Tang et al. 2023): score the candidates in
  K orders (``permutation_orders``: the given order and K - 1 seeded shuffles) and aggregate each document's
  score over them (``aggregate_runs``: its mean calibrated score, or its mean reciprocal rank). K forwards.
- **Position-prior calibration** (after the attention basin of AttnRank and CapCal): each prompt slot's mean
  document score for a head set, estimated on detection prompts whose negatives sit in a random order
  (``position_prior``, never on evaluated queries), is subtracted from the score of the document in that slot
  (``prior_corrected_scores``). One forward per query, as ICR.
- **A permutation-invariant prompt** (after InvariRank and BlockRank, zero-shot): ``prompts.build_invariant_prompt``
  and ``RecordRequest(invariant=True)``; any order gives the same scores by construction.
"""

from __future__ import annotations

import enum
from typing import Sequence

import torch

from .errors import UsageError
from .prompts import CandidateOrder
from .records import QueryRecord
from .scoring import doc_scores

Run = dict[str, dict[str, float]]


class Aggregate(enum.Enum):
    """How ``aggregate_runs`` combines a document's scores over orders."""

    MEAN_SCORE = "mean calibrated score"
    MEAN_RECIPROCAL_RANK = "mean reciprocal rank"

    @property
    def label(self) -> str:
        return "score" if self is Aggregate.MEAN_SCORE else "rank"


def permutation_orders(base: CandidateOrder, k: int, seed: int = 0) -> list[CandidateOrder]:
    """The K orders of permutation aggregation: ``base`` first, then shuffles seeded ``seed + 1 .. seed + K - 1``
    (the same extra orders whatever the base, so a base in ICR's order and a shuffled one share them)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"k={k!r}: permutation aggregation needs a whole number of orders, at least 1")
    extra = [CandidateOrder(shuffle_seed=seed + i) for i in range(1, k)]
    if base in extra:
        raise UsageError(f"the base order {base.name} is one of the extra orders (seeds {seed + 1}..{seed + k - 1}): "
                         "give a base seed outside them")
    return [base, *extra]


def aggregate_runs(runs: Sequence[Run], how: Aggregate = Aggregate.MEAN_SCORE) -> Run:
    """One run from runs of the same candidates in different orders: each document's mean score, or its mean
    reciprocal rank (rank 1 = the best score of that run; ties share the better rank)."""
    if not runs:
        raise UsageError("no runs to aggregate: give the runs of at least one order")
    if not isinstance(how, Aggregate):
        raise UsageError(f"how={how!r}: give an Aggregate (Aggregate.MEAN_SCORE or Aggregate.MEAN_RECIPROCAL_RANK)")
    out: Run = {}
    for qid, first in runs[0].items():
        per_order = []
        for i, run in enumerate(runs):
            scores = run.get(qid)
            if scores is None or set(scores) != set(first):
                raise UsageError(f"query {qid}: run {i} holds other candidates than run 0; the orders must permute "
                                 "the same candidates")
            if how is Aggregate.MEAN_RECIPROCAL_RANK:
                values = sorted(scores.values(), reverse=True)
                scores = {d: 1.0 / (1 + values.index(s)) for d, s in scores.items()}
            per_order.append(scores)
        out[qid] = {d: sum(s[d] for s in per_order) / len(per_order) for d in first}
    return out


def _slot_from_query(record: QueryRecord) -> torch.Tensor:
    """Each prompt slot's distance from the query: 0 for the document nearest it."""
    n = len(record.doc_ids)
    return torch.arange(n - 1, -1, -1)


def position_prior(records: Sequence[QueryRecord], heads=None) -> torch.Tensor:
    """The mean document score of each prompt slot for a head set (None: all heads), counted from the query
    (index 0: the slot nearest it), over the non-positive documents of calibrated detection records whose
    negatives sit in a random order: what a slot scores whatever it holds. [N] for N-document prompts."""
    if not records:
        raise UsageError("no records to estimate a position prior from: give calibrated detection records")
    n = max(len(r.doc_ids) for r in records)
    total, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for r in records:
        if not r.calibrated:
            raise UsageError("the position prior is estimated from calibrated records (the scores it corrects are "
                             "calibrated): compute the detection records with calibrate=True")
        if r.positive is None:
            raise UsageError(f"record {r.query_id} marks no positive: the prior is estimated on detection records")
        s = doc_scores(r, heads).double()
        slots = _slot_from_query(r)
        keep = torch.ones(len(s), dtype=torch.bool)
        keep[r.positive] = False
        keep &= torch.isfinite(s)
        total.index_add_(0, slots[keep], s[keep])
        count.index_add_(0, slots[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    if (count == 0).any():
        raise UsageError(f"slots {torch.nonzero(count == 0).flatten().tolist()} (from the query) hold no negative in "
                         "these records: estimate the prior on more detection records")
    return (total / count).float()


def prior_corrected_scores(record: QueryRecord, prior: torch.Tensor, heads=None) -> torch.Tensor:
    """The record's document scores (prompt order) less the prior of the slot each document sits in."""
    n = len(record.doc_ids)
    if n > len(prior):
        raise UsageError(f"the record has {n} documents, the prior {len(prior)} slots: estimate it on prompts with at "
                         "least as many documents")
    return doc_scores(record, heads) - prior[_slot_from_query(record)]


def prior_corrected_run(records: Sequence[QueryRecord], prior: torch.Tensor, heads=None) -> Run:
    """A run (qid -> doc -> score) with the position prior removed from every document's score."""
    return {r.query_id: {d: float(x) for d, x in zip(r.doc_ids, prior_corrected_scores(r, prior, heads))}
            for r in records}
