"""Per-query attention records and the ICR document score computed from them.

A record keeps, for every head, the token scores of the document tokens (calibrated:
s(q) - s("N/A")) and the uncalibrated attention mass of each document. Every method (ICR, QR-R,
CoRe-R, a head-count sweep) is a function of records, so no forward pass is repeated.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from .attention import calibrated_head_token_scores, head_token_scores
from .models import LoadedModel, cache_root
from .prompts import CONTENT_FREE_QUERY, Document, Prompt, PromptError, build_prompt

PROMPT_VERSION = 1  # bump when the prompt or the record layout changes: old cache entries then miss


@dataclass
class QueryRecord:
    query_id: str
    doc_ids: list[str]  # prompt order
    bounds: torch.Tensor  # [N+1] offsets of each document's tokens on the token axis
    token_scores: torch.Tensor  # [L, H, T_doc]: s(q) - s(N/A) when calibrated, else s(q)
    doc_mass: torch.Tensor  # [L, H, N]: uncalibrated attention mass on each document (query prompt)
    doc_mass_na: torch.Tensor | None  # [L, H, N] for the "N/A" prompt (calibrated records only)
    calibrated: bool
    num_tokens: int  # tokens run for the query prompt
    positive: int | None = None  # prompt index of the positive (detection records)

    @property
    def num_layers(self) -> int:
        return self.token_scores.shape[0]

    @property
    def doc_lengths(self) -> torch.Tensor:
        return self.bounds[1:] - self.bounds[:-1]

    def first_layers(self, n: int) -> "QueryRecord":
        """The same record restricted to layers 0..n-1 (exactly what a run stopped after layer n-1 gives)."""
        cut = lambda t: None if t is None else t[:n]  # noqa: E731
        return replace(self, token_scores=cut(self.token_scores), doc_mass=cut(self.doc_mass), doc_mass_na=cut(self.doc_mass_na))


def _doc_token_index(prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
    idx = [torch.arange(s, e) for s, e in prompt.doc_spans]
    bounds = torch.tensor([0] + [e - s for s, e in prompt.doc_spans]).cumsum(0)
    return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long), bounds


def _segment_sum(x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Sum over each document's tokens on the last axis: [..., T] -> [..., N]."""
    csum = torch.nn.functional.pad(x.cumsum(-1), (1, 0))
    return csum[..., bounds[1:]] - csum[..., bounds[:-1]]


def check_context(lm: LoadedModel, prompt: Prompt, words: int | None, num_docs: int) -> None:
    if lm.max_positions is not None and prompt.full_length > lm.max_positions:
        raise PromptError(
            f"the prompt has {prompt.full_length} tokens but {lm.model_id} takes at most {lm.max_positions}: "
            f"lower words (now {words}) or top_k (now {num_docs})"
        )


def build_record(
    lm: LoadedModel,
    query: str,
    docs: Sequence[Document],
    *,
    query_id: str = "",
    calibrate: bool = True,
    num_layers: int | None = None,
    positive: int | None = None,
    words: int | None = None,
) -> QueryRecord:
    """Run the model on one prompt (docs in prompt order) and keep what scoring needs."""
    prompt = build_prompt(lm.tokenizer, query, docs, lm.prefix, lm.suffix)
    check_context(lm, prompt, words, len(docs))
    index, bounds = _doc_token_index(prompt)
    if calibrate:
        na = build_prompt(lm.tokenizer, CONTENT_FREE_QUERY, docs, lm.prefix, lm.suffix)
        if na.doc_spans != prompt.doc_spans:
            raise PromptError("the N/A prompt tokenises the documents differently; calibration needs a shared prefix")
        s_q, s_na = calibrated_head_token_scores(lm, prompt.input_ids, prompt.query_span, na.input_ids, na.query_span, num_layers)
        q_tok, na_tok = s_q[..., index], s_na[..., index]
        return QueryRecord(query_id, list(prompt.doc_ids), bounds, q_tok - na_tok, _segment_sum(q_tok, bounds),
                           _segment_sum(na_tok, bounds), True, len(prompt.input_ids), positive)
    s_q = head_token_scores(lm, prompt.input_ids, prompt.query_span, num_layers)
    q_tok = s_q[..., index]
    return QueryRecord(query_id, list(prompt.doc_ids), bounds, q_tok, _segment_sum(q_tok, bounds), None, False,
                       len(prompt.input_ids), positive)


# ----------------------------------------------------------------------------- scoring


def head_index(heads) -> torch.Tensor:
    """[K, 2] long tensor of (layer, head) pairs."""
    return torch.as_tensor([tuple(x) for x in heads], dtype=torch.long).reshape(-1, 2)


def filtered_doc_sum(c: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """ICR's document score: per document, sum of c_j over its tokens with c_j > mean - 2 std.

    c: [..., T] summed token scores; returns [..., N]. A document without tokens scores 0; a
    one-token or constant document keeps all its tokens (with std 0 the strict test would drop all).
    All documents at once: per-document mean and (unbiased, two-pass) std through segment sums.
    """
    bounds = torch.as_tensor(bounds, dtype=torch.long)
    lengths = bounds.diff()
    seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    c = c[..., int(bounds[0]) : int(bounds[-1])]

    def segment_sum(x):
        return torch.zeros(*x.shape[:-1], len(lengths), dtype=x.dtype).index_add_(-1, seg, x)

    mean = segment_sum(c) / lengths.clamp(min=1)
    var = segment_sum((c - mean[..., seg]) ** 2) / (lengths - 1).clamp(min=1)
    std = var.sqrt()[..., seg]
    keep = (c > mean[..., seg] - 2 * std) | (std == 0)  # a constant or one-token document keeps all
    return segment_sum(torch.where(keep, c, torch.zeros_like(c)))


def summed_token_scores(record: QueryRecord, heads=None) -> torch.Tensor:
    """c_j: token scores summed over a head set (all heads when None) -> [T_doc]."""
    if heads is None:
        return record.token_scores.sum((0, 1))
    h = head_index(heads)
    if h.numel() and int(h[:, 0].max()) >= record.num_layers:
        raise ValueError(f"head layer {int(h[:, 0].max())} is beyond the {record.num_layers} layers this record holds")
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


# ----------------------------------------------------------------------------- cache


class RecordStore:
    """Records on disk, one file each, keyed by everything that determines them; atomic writes."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else cache_root() / "records"

    @staticmethod
    def key(**fields) -> str:
        fields["prompt_version"] = PROMPT_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def path(self, model_id: str, group: str, key: str) -> Path:
        return self.root / model_id.replace("/", "__") / group.replace("/", "__") / f"{key}.pt"

    def get(self, model_id: str, group: str, fields: dict) -> QueryRecord | None:
        path = self.path(model_id, group, self.key(model_id=model_id, group=group, **fields))
        if path.is_file():
            try:
                return QueryRecord(**torch.load(path, weights_only=False))
            except Exception:  # a torn or stale file: it will be recomputed
                path.unlink(missing_ok=True)
        return None

    def get_or_compute(self, model_id: str, group: str, fields: dict, compute: Callable[[], QueryRecord]) -> QueryRecord:
        record = self.get(model_id, group, fields)
        if record is not None:
            return record
        path = self.path(model_id, group, self.key(model_id=model_id, group=group, **fields))
        record = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(record.__dict__, tmp)
        os.replace(tmp, path)
        return record
