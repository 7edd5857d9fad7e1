"""The first stage: each query's top-k candidates, from BM25 (the collection's run file, else bm25s over its
corpus) or a dense retriever (``corelib.dense``). It sits above ``data`` and ``dense``, which both stay free
of it."""

from __future__ import annotations

import logging

from .data import Candidates, Collection, DataError, choose_run_file, read_trec_run
from .dense import Encoder, dense_candidates
from .errors import UsageError

log = logging.getLogger(__name__)


FIRST_STAGES = ("bm25", "dense")


def first_stage(collection: Collection, k: int, query_ids: list[str] | None = None, method: str = "bm25",
                encoder=None) -> Candidates:
    """Top-k candidates per query. ``bm25``: the collection's run file, else BM25 (bm25s) over its
    corpus. ``dense``: exact inner-product search with a sentence encoder (``corelib.dense``;
    default the built-in minilm-l6) over the whole corpus."""
    if k < 1:
        raise UsageError(f"k={k}: ask for at least one candidate per query")
    if method not in FIRST_STAGES:
        raise UsageError(f"first stage {method!r}: use one of {', '.join(FIRST_STAGES)}")
    qids = list(query_ids) if query_ids is not None else sorted(collection.qrels)
    if method == "dense":
        return dense_candidates(collection, k, qids, encoder if encoder is not None else Encoder())
    drop_self = collection.name == "arguana"  # BEIR: a candidate equal to the query is dropped
    run_file = choose_run_file(collection)
    ranking, scores = {}, {}
    if run_file is not None:
        run = read_trec_run(run_file)
        for q in qids:
            docs = [(d, s) for d, s in run.get(q, []) if not (drop_self and d == q)][:k]
            ranking[q], scores[q] = [d for d, _ in docs], [s for _, s in docs]
        source = f"run file {run_file.name}"
    elif collection.has_corpus:
        ranking, scores = _bm25s(collection, qids, k + int(drop_self), drop_self)
        source = "BM25 (bm25s) over the corpus"
    else:
        raise DataError(
            f"{collection.name} has neither a run file under runs/ nor a corpus.jsonl: "
            "add one of them to the data directory"
        )
    log.info("%s: first stage from %s, top-%d", collection.name, source, k)
    empty = [q for q in qids if not ranking.get(q)]
    if empty:
        # as trec_eval does, a query the first stage returns nothing for is left out (of every method alike)
        log.warning("%s: %d of %d queries have no first-stage candidates and are left out: %s",
                    collection.name, len(empty), len(qids), ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else ""))
    ranking = {q: d[:k] for q, d in ranking.items() if d}
    scores = {q: s[:k] for q, s in scores.items() if q in ranking}
    return Candidates(ranking, scores, source)


def _bm25s(collection: Collection, qids: list[str], k: int, drop_self: bool):
    import bm25s

    ids = list(collection.corpus)
    texts = [f"{t} {x}".strip() for t, x in (collection.corpus[i] for i in ids)]
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    try:
        retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    except ValueError as err:  # bm25s on a corpus of stopwords only: "max() arg is an empty sequence"
        raise DataError(f"{collection.name}: BM25 finds no word to index in its corpus ({len(ids)} documents; "
                        f"bm25s: {err}): give documents with text, or a run file under runs/") from None
    q_tokens = bm25s.tokenize([collection.queries[q] for q in qids], stopwords="en", show_progress=False)
    docs, scores = retriever.retrieve(q_tokens, k=min(k, len(ids)), show_progress=False)
    ranking, score_lists = {}, {}
    for row, q in enumerate(qids):
        pairs = [(ids[i], float(s)) for i, s in zip(docs[row], scores[row]) if not (drop_self and ids[i] == q)]
        ranking[q], score_lists[q] = [d for d, _ in pairs], [s for _, s in pairs]
    return ranking, score_lists
