"""Attention-based re-ranking of candidate lists: ICR (all heads) or a head set (QR-R, CoRe-R)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .data import Candidates, Collection, DetectionSample
from .checks import whole_number
from .errors import UsageError
from .heads import HeadSet, HeadSpec, resolve_heads
from .models import LoadedModel, ModelSpec, as_spec
from .prompts import DEFAULT_WORDS, ICR_ORDER, CandidateOrder, Document, PromptError, check_unicode, document_text
from .records import CacheStatus, QueryRecord, RecordRequest, RecordStore, get_records, record_status
from .scoring import doc_scores, record_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedDoc:
    """One ranked document: the document as given (``document.metadata`` holds a dict's other fields, or the whole
    text of a string), its attention score and its rank (1 = best)."""

    document: Document
    score: float
    rank: int

    @property
    def doc_id(self) -> str:
        return self.document.doc_id

    @property
    def text(self) -> str:
        """The text the model read (title and body, cut to the re-ranker's word budget)."""
        return self.document.text


@dataclass(frozen=True)
class RankedResults:
    """The documents of one query, best first: iterate, index (``results[0]``), look one up by id
    (``results.get("d7")``) or keep the best few (``results.top_k(3)``)."""

    query: str
    results: tuple[RankedDoc, ...]

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i):
        return self.results[i]

    def top_k(self, k: int) -> list[RankedDoc]:
        return list(self.results[: whole_number(k, "k")])

    def get(self, doc_id: str) -> RankedDoc:
        for r in self.results:
            if r.doc_id == doc_id:
                return r
        raise KeyError(f"no document {doc_id!r} among the {len(self.results)} ranked for this query")

    @property
    def doc_ids(self) -> list[str]:
        return [r.doc_id for r in self.results]

    @property
    def scores(self) -> dict[str, float]:
        return {r.doc_id: r.score for r in self.results}


def as_documents(docs, words: int | None) -> list[Document]:
    """Strings, dicts with id/title/text, or Documents -> Documents (texts cut to ``words`` words; what was given
    stays in each Document's ``metadata``)."""
    if isinstance(docs, (str, bytes, dict)):
        raise PromptError(f"docs is a single {type(docs).__name__}: give a list of documents, e.g. [text1, text2]")
    out = []
    for i, d in enumerate(docs):
        if isinstance(d, Document):
            out.append(d)
        elif isinstance(d, str):
            out.append(Document(str(i), document_text("", d, words), {"text": d}))
        elif isinstance(d, dict):
            if "text" not in d:
                raise PromptError(f"document {i} has no 'text' field: give dicts with id, title and text")
            title, text = d.get("title"), d["text"]
            if not isinstance(text, str):
                raise PromptError(f"document {i}: its text is {'None' if text is None else 'a ' + type(text).__name__}, "
                                  "not a string: give each document a text (an empty string for none)")
            if title is not None and not isinstance(title, str):
                raise PromptError(f"document {i}: its title is a {type(title).__name__}, not a string")
            out.append(Document(str(d.get("id", d.get("_id", i))), document_text(title, text, words), dict(d)))
        else:
            raise PromptError(f"document {i} is a {type(d).__name__}: give strings or dicts with id/title/text")
    return out


class Reranker:
    """Re-rank documents by query-to-document attention.

    model: a LoadedModel, or a ModelSpec (loaded only when a record is not in ``store``).
    heads: "all" (ICR), "core:K" / "qr:K" (a detected ranking's top K), "FILE.json[:K]", a list of
    (layer, head) pairs or a HeadSet. With a head subset only the layers up to its deepest head
    are run (automatic early exit). words: each document's body is cut to its first ``words`` words (default
    ``DEFAULT_WORDS``, the budget heads are detected with). top_k: the first-stage candidates a collection run
    reads per query; ``rank`` reads every document it is given.

    The order of ``docs`` matters: they are taken as a first-stage ranking, and ICR's prompt puts the first
    one nearest the query (``order=`` places them otherwise; ``CandidateOrder(shuffle_seed=s)`` at random).
    Attention favours nearby text, so a good first-stage order lifts the scores. ``invariant=True`` builds the
    permutation-invariant prompt instead (``prompts.build_invariant_prompt``: each document in its own block,
    all at the same positions), where the order of ``docs`` changes no score; use it with heads detected under
    the same prompt (``detection_records(..., invariant=True)``). ``corelib.order_robust`` holds the other
    remedies (aggregation over several orders, a position prior).
    """

    def __init__(
        self,
        model: LoadedModel | ModelSpec,
        heads: str | Sequence | HeadSet | HeadSpec | os.PathLike = "all",
        *,
        calibrate: bool = True,
        top_k: int | None = None,
        words: int | None = DEFAULT_WORDS,
        rank1_last: bool = True,
        order: CandidateOrder | None = None,
        invariant: bool = False,
        store: RecordStore | None = None,
        heads_dir: str | os.PathLike | None = None,
    ):
        top_k = whole_number(top_k, "top_k", allow_none=True)
        words = whole_number(words, "words", allow_none=True)
        self.model = model
        spec = as_spec(model)
        self.layers_available = spec.available_layers  # layers the model loads (a pruned model has fewer)
        self.total_heads = spec.num_heads
        self.head_set = self._resolve_heads(heads, heads_dir)
        self.calibrate = calibrate
        self.top_k = top_k
        self.words = words
        if order is not None and not isinstance(order, CandidateOrder):
            raise PromptError(f"order is a {type(order).__name__}: give a CandidateOrder, e.g. CandidateOrder(shuffle_seed=0)")
        if order is not None and not rank1_last:
            raise PromptError("give either order= or rank1_last=False, not both")
        self.order = order if order is not None else (ICR_ORDER if rank1_last else CandidateOrder(rank1_last=False))
        if not isinstance(invariant, bool):
            raise PromptError(f"invariant={invariant!r}: give True (the permutation-invariant prompt) or False")
        self.invariant = invariant
        self.store = store
        self.num_layers = self.layers_available if self.head_set is None else self.head_set.deepest_layer + 1

    def _resolve_heads(self, heads, heads_dir) -> HeadSet | None:
        m = self.model
        if heads is None:
            raise UsageError("heads=None: give 'all' (ICR), 'core:K', a head-set file or a list of (layer, head) pairs")
        if isinstance(heads, (str, HeadSpec)):
            hs = resolve_heads(heads, m.model_id, heads_dir, m.fingerprint)
        elif isinstance(heads, Path):
            hs = resolve_heads(str(heads), m.model_id, heads_dir, m.fingerprint)
        elif isinstance(heads, HeadSet):
            hs = heads
        elif isinstance(heads, Sequence) and not isinstance(heads, bytes):
            hs = HeadSet(list(heads), m.model_id)
        else:
            raise UsageError(f"heads is a {type(heads).__name__}: give 'all', 'core:K', a head-set file or a list of "
                             "(layer, head) pairs")
        if hs is None:
            return None
        if hs.ranking:
            raise UsageError(f"this head set ranks all {len(hs)} heads: pass hs.top(K) (or 'FILE:K'), not the whole ranking")
        if not hs.heads:
            raise UsageError("the head set is empty: give at least one (layer, head) or heads='all'")
        hs.check(m.model_id, self.layers_available, m.num_heads, m.fingerprint)
        return hs

    @property
    def heads(self) -> list[tuple[int, int]] | None:
        return None if self.head_set is None else self.head_set.heads

    def requests(self, query: str, docs: Sequence[Document], query_id: str = "", group: str = "adhoc",
                 limit: bool = True) -> RecordRequest:
        """The record request of a query and its documents in first-stage order (``limit``: the first ``top_k``)."""
        if not isinstance(query, str) or not query.strip():
            raise PromptError(f"query {query_id or ''} is empty: give a non-empty query text".replace("  ", " "))
        docs = list(docs)[: self.top_k] if self.top_k and limit else list(docs)
        check_unicode(query, f"query {query_id}" if query_id else "the query")  # before any model loads
        for d in docs:
            check_unicode(d.text, f"document {d.doc_id}")
        perm = self.order.permutation(str(query_id), len(docs))
        return RecordRequest(str(query_id), query, tuple(docs[r] for r in perm), group,
                             permutation=perm if self.order.shuffled and not self.invariant else None,
                             invariant=self.invariant)

    def _records(self, requests: Sequence[RecordRequest], progress: str | None = None) -> list[QueryRecord]:
        return get_records(self.model, requests, calibrate=self.calibrate, num_layers=self.num_layers,
                           words=self.words, store=self.store, progress=progress)

    def record(self, query: str, docs: Sequence[Document], query_id: str = "", group: str = "adhoc") -> QueryRecord:
        """The attention record of one query over docs given in first-stage order (cached if a store is set)."""
        return self._records([self.requests(query, docs, query_id, group)])[0]

    def rank(self, query: str, docs: Sequence, top_k: int | None = None) -> RankedResults:
        """Every document given (strings, dicts with id/title/text and any other fields, or Documents) in one
        prompt, ranked by attention score, best first; ``top_k``: keep only the best k in the results (all of them
        are still read). The order of ``docs`` is the first-stage order the prompt uses (see the class's note)."""
        if not isinstance(query, str):
            raise PromptError(f"the query is a {type(query).__name__}: give the query as a string")
        if docs is None:
            raise PromptError("docs is None: give a list of documents (strings, or dicts with id, title and text)")
        top_k = whole_number(top_k, "top_k", allow_none=True)
        documents = as_documents(docs, self.words)
        record = self._records([self.requests(query, documents, limit=False)])[0]
        by_id = {d.doc_id: d for d in documents}
        scores = doc_scores(record, self.heads)
        order = sorted(zip(record.doc_ids, scores.tolist()), key=lambda x: -x[1])
        ranked = tuple(RankedDoc(by_id[d], s, i) for i, (d, s) in enumerate(order, 1))
        return RankedResults(query, ranked[:top_k] if top_k else ranked)

    def rank_many(self, queries: Sequence[str], docs_lists: Sequence[Sequence], top_k: int | None = None) -> list[RankedResults]:
        """``rank`` for each query and its documents (one forward each; cached records are reused). A single
        document cannot be scored alone: attention re-ranking scores documents against one another in one prompt."""
        if isinstance(queries, str) or len(queries) != len(docs_lists):
            raise PromptError(f"rank_many takes a list of queries and a list of document lists of the same length "
                              f"(got {1 if isinstance(queries, str) else len(queries)} and {len(docs_lists)})")
        return [self.rank(q, docs, top_k) for q, docs in zip(queries, docs_lists)]

    def collection_requests(self, collection: Collection, candidates: Candidates,
                            query_ids: Iterable[str] | None = None) -> list[RecordRequest]:
        """One record request per query (default: every query of ``candidates``)."""
        qids = list(query_ids) if query_ids is not None else list(candidates.ranking)
        requests = []
        for q in qids:
            if not isinstance(collection.queries.get(q), str) or not collection.queries[q].strip():
                raise PromptError(f"query {q} of {collection.name} has no text: give it one, or leave it out")
            docs = [collection.document(d, self.words) for d in candidates.ranking[q]]
            if not docs:
                raise PromptError(f"query {q} of {collection.name} has no candidates in {candidates.source}")
            requests.append(self.requests(collection.queries[q], docs, query_id=q, group=collection.name))
        return requests

    def records(self, collection: Collection, candidates: Candidates, query_ids: Iterable[str] | None = None) -> list[QueryRecord]:
        requests = self.collection_requests(collection, candidates, query_ids)
        return self._records(requests, progress=f"{self.model.model_id} {collection.name}")

    def status(self, requests: Sequence[RecordRequest]) -> CacheStatus:
        """Which of the requests' records this re-ranker's store lacks (``records.record_status``)."""
        if self.store is None:
            raise UsageError("this re-ranker has no record store: pass store=RecordStore() to look up cached records")
        return record_status(self.model, requests, calibrate=self.calibrate, num_layers=self.num_layers, store=self.store)

    def rerank(self, collection: Collection, candidates: Candidates, query_ids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """A run (qid -> doc -> score) re-ranking each query's candidates."""
        return record_run(self.records(collection, candidates, query_ids), self.heads)


def detection_requests(samples: Sequence[DetectionSample], group: str = "nq-open-detection",
                       invariant: bool = False) -> list[RecordRequest]:
    """One request per detection prompt; ``invariant``: under the permutation-invariant prompt, where the prompts of
    one query that differ only in the positive's slot are one record."""
    return [RecordRequest(s.query_id, s.query, tuple(s.docs), group, s.positive, invariant=invariant) for s in samples]


def detection_records(
    model: LoadedModel | ModelSpec,
    samples: Sequence[DetectionSample],
    *,
    calibrate: bool = False,
    num_layers: int | None = None,
    store: RecordStore | None = None,
    group: str = "nq-open-detection",
    invariant: bool = False,
) -> list[QueryRecord]:
    """Records of detection prompts (documents already in prompt order, positive marked; ``invariant``: under the
    permutation-invariant prompt)."""
    return get_records(model, detection_requests(samples, group, invariant), calibrate=calibrate, num_layers=num_layers,
                       store=store, progress=f"{model.model_id} detection" + (" (invariant prompt)" if invariant else ""))
