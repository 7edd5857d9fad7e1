"""Attention-based re-ranking of candidate lists: ICR (all heads) or a head set (QR-R, CoRe-R)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from .data import Candidates, Collection, DetectionSample
from .heads import HeadSet
from .models import LoadedModel
from .prompts import Document, PromptError, document_text, prompt_order
from .scoring import QueryRecord, RecordStore, build_record, doc_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedDoc:
    doc_id: str
    score: float
    rank: int  # 1 = best


def _as_documents(docs, words: int | None) -> list[Document]:
    out = []
    for i, d in enumerate(docs):
        if isinstance(d, Document):
            out.append(d)
        elif isinstance(d, str):
            out.append(Document(str(i), document_text("", d, words)))
        elif isinstance(d, dict):
            if "text" not in d:
                raise PromptError(f"document {i} has no 'text' field: give dicts with id, title and text")
            out.append(Document(str(d.get("id", d.get("_id", i))), document_text(d.get("title"), d["text"], words)))
        else:
            raise PromptError(f"document {i} is a {type(d).__name__}: give strings or dicts with id/title/text")
    return out


def _record_fields(lm: LoadedModel, num_layers: int, calibrate: bool, words, rank1_last, doc_ids, query) -> dict:
    return {"layers": num_layers, "dtype": str(lm.dtype), "calibrate": calibrate, "words": words,
            "rank1_last": rank1_last, "doc_ids": list(doc_ids), "query": query}


class Reranker:
    """Re-rank documents by query-to-document attention.

    heads: "all" (ICR), a list of (layer, head) pairs, a HeadSet, or a head-set JSON file.
    With a head subset only the layers up to its deepest head are run (automatic early exit).
    """

    def __init__(
        self,
        lm: LoadedModel,
        heads: str | Sequence | HeadSet | os.PathLike = "all",
        *,
        calibrate: bool = True,
        top_k: int | None = None,
        words: int | None = 300,
        rank1_last: bool = True,
        store: RecordStore | None = None,
    ):
        self.lm = lm
        self.head_set = self._resolve_heads(heads)
        self.calibrate = calibrate
        self.top_k = top_k
        self.words = words
        self.rank1_last = rank1_last
        self.store = store
        self.num_layers = lm.num_layers if self.head_set is None else self.head_set.deepest_layer + 1

    def _resolve_heads(self, heads) -> HeadSet | None:
        lm = self.lm
        if isinstance(heads, str) and heads == "all":
            return None
        if isinstance(heads, (str, Path)):
            hs = HeadSet.load(heads)
        elif isinstance(heads, HeadSet):
            hs = heads
        else:
            hs = HeadSet(list(heads), lm.model_id)
        if not hs.heads:
            raise ValueError("the head set is empty: give at least one (layer, head) or heads='all'")
        hs.check(lm.model_id, lm.num_layers, lm.num_heads)
        return hs

    @property
    def heads(self) -> list[tuple[int, int]] | None:
        return None if self.head_set is None else self.head_set.heads

    def record(self, query: str, docs: Sequence[Document], query_id: str = "", group: str = "adhoc") -> QueryRecord:
        """The attention record of one query over docs given in first-stage order (cached if a store is set)."""
        docs = list(docs)[: self.top_k] if self.top_k else list(docs)
        ordered = prompt_order(docs, self.rank1_last)

        def compute():
            return build_record(self.lm, query, ordered, query_id=query_id, calibrate=self.calibrate,
                                num_layers=self.num_layers, words=self.words)

        if self.store is None:
            return compute()
        fields = _record_fields(self.lm, self.num_layers, self.calibrate, self.words, self.rank1_last,
                                [d.doc_id for d in ordered], query)
        fields["texts"] = RecordStore.key(texts=[d.text for d in ordered])
        if self.num_layers < self.lm.total_layers:  # an all-layer record already cached holds these layers exactly
            full = self.store.get(self.lm.model_id, group, {**fields, "layers": self.lm.total_layers})
            if full is not None:
                return full.first_layers(self.num_layers)
        return self.store.get_or_compute(self.lm.model_id, group, fields, compute)

    def rank(self, query: str, docs: Sequence) -> list[RankedDoc]:
        """Documents (strings, or dicts with id/title/text) sorted by attention score, best first."""
        record = self.record(query, _as_documents(docs, self.words))
        scores = doc_scores(record, self.heads)
        order = sorted(zip(record.doc_ids, scores.tolist()), key=lambda x: -x[1])
        return [RankedDoc(d, s, i) for i, (d, s) in enumerate(order, 1)]

    def records(self, collection: Collection, candidates: Candidates, query_ids: Iterable[str] | None = None) -> list[QueryRecord]:
        qids = list(query_ids) if query_ids is not None else list(candidates.ranking)
        out = []
        for q in tqdm(qids, desc=f"{self.lm.model_id} {collection.name}", leave=False):
            docs = [collection.document(d, self.words) for d in candidates.ranking[q]]
            if not docs:
                raise PromptError(f"query {q} of {collection.name} has no candidates in {candidates.source}")
            out.append(self.record(collection.queries[q], docs, query_id=q, group=collection.name))
        return out

    def rerank(self, collection: Collection, candidates: Candidates, query_ids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """A run (qid -> doc -> score) re-ranking each query's candidates."""
        run = {}
        for r in self.records(collection, candidates, query_ids):
            run[r.query_id] = {d: float(s) for d, s in zip(r.doc_ids, doc_scores(r, self.heads))}
        return run


def detection_records(
    lm: LoadedModel,
    samples: Sequence[DetectionSample],
    *,
    calibrate: bool = False,
    num_layers: int | None = None,
    store: RecordStore | None = None,
    group: str = "nq-open-detection",
) -> list[QueryRecord]:
    """Records of detection prompts (documents already in prompt order, positive marked)."""
    num_layers = num_layers or lm.num_layers
    out = []
    for s in tqdm(samples, desc=f"{lm.model_id} detection", leave=False):
        def compute(s=s):
            return build_record(lm, s.query, list(s.docs), query_id=s.query_id, calibrate=calibrate,
                                num_layers=num_layers, positive=s.positive)

        if store is None:
            out.append(compute())
            continue
        fields = _record_fields(lm, num_layers, calibrate, None, None, [d.doc_id for d in s.docs], s.query)
        fields.update(positive=s.positive, texts=RecordStore.key(texts=[d.text for d in s.docs]))
        out.append(store.get_or_compute(lm.model_id, group, fields, compute))
    return out
