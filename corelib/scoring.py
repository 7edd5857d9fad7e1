"""The ICR document score, from records and a head set (ICR: all heads; QR-R, CoRe-R: a few)."""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import UsageError
from .records import QueryRecord, segment_sum

# ----------------------------------------------------------------------------- scoring


def head_index(heads) -> torch.Tensor:
    """[K, 2] long tensor of (layer, head) pairs."""
    return torch.as_tensor([tuple(x) for x in heads], dtype=torch.long).reshape(-1, 2)


def filtered_doc_sum(c: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """ICR's document score: per document, sum of c_j over its tokens with c_j > mean - 2 std.

    c: [..., T] summed token scores; returns [..., N]. A document without tokens (an empty text) scores
    -inf, so it ranks last: calibrated scores can be negative, and 0 would put it above relevant documents.
    A one-token or constant document keeps all its tokens (with std 0 the strict test would drop all).
    All documents at once: per-document mean and (unbiased, two-pass) std through segment sums.
    """
    bounds = torch.as_tensor(bounds, dtype=torch.long)
    lengths = bounds.diff()
    seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    c = c[..., int(bounds[0]) : int(bounds[-1])]
    local = bounds - bounds[0]

    mean = segment_sum(c, local) / lengths.clamp(min=1)
    var = segment_sum((c - mean[..., seg]) ** 2, local) / (lengths - 1).clamp(min=1)
    std = var.sqrt()[..., seg]
    keep = (c > mean[..., seg] - 2 * std) | (std == 0)  # a constant or one-token document keeps all
    scores = segment_sum(torch.where(keep, c, torch.zeros_like(c)), local)
    return scores.masked_fill(lengths == 0, float("-inf"))


def summed_token_scores(record: QueryRecord, heads=None) -> torch.Tensor:
    """c_j: token scores summed over a head set (all heads when None) -> [T_doc]."""
    if heads is None:
        return record.token_scores.sum((0, 1))
    h = head_index(heads)
    if h.numel() and int(h[:, 0].max()) >= record.num_layers:
        raise UsageError(f"head layer {int(h[:, 0].max())} is beyond the {record.num_layers} layers this record holds")
    return record.token_scores[h[:, 0], h[:, 1]].sum(0)


def doc_scores(record: QueryRecord, heads=None) -> torch.Tensor:
    """Scores of the record's documents (prompt order) using ``heads`` (None = all heads = ICR)."""
    return filtered_doc_sum(summed_token_scores(record, heads), record.bounds)


def cumulative_doc_scores(record: QueryRecord, head_order) -> torch.Tensor:
    """Document scores using the first k heads of ``head_order``, for every k: [K, N]."""
    h = head_index(head_order)
    c = record.token_scores[h[:, 0], h[:, 1]].cumsum(0)
    return filtered_doc_sum(c, record.bounds)


def record_run(records: Sequence[QueryRecord], heads=None) -> dict[str, dict[str, float]]:
    """A run (qid -> doc -> score) from records and a head set."""
    run = {}
    for r in records:
        s = doc_scores(r, heads)
        run[r.query_id] = {d: float(x) for d, x in zip(r.doc_ids, s)}
    return run
